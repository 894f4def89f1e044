//! The heap: nodes behind their own locks, claims, scrub accounting, and the public
//! operations. Every operation validates its input before changing anything.

use crate::chunk::State;
use crate::claims::ClaimError;
use crate::claims::{Claim, ClaimBook, ClaimTarget, DomClaims, Retired};
use crate::config::HeapConfig;
use crate::error::HeapError;
use crate::memory::FrameMemory;
use crate::node::FreeError;
use crate::node::{NodeState, Pick};
use crate::observe::LockObserver;
use crate::policy::Policy;
use crate::stats::{HeapStats, NodeStats, ZoneStats};
use crate::sync::{AtomicU64, Mutex, MutexGuard, Padded};
use crate::types::RangeError;
use crate::types::{DomId, Mfn, Off, Zone, MAX_ORDER};
use crate::work::Kind;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};

/// Which node an allocation should come from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum NodePref {
    /// The node with the most free memory, then the nodes nearest to it.
    #[default]
    Any,
    /// This node, then the others by distance from it.
    Prefer(usize),
    /// This node only.
    Exact(usize),
}

/// An allocation request.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct AllocRequest {
    /// 2^order frames, naturally aligned.
    pub order: u8,
    /// Who will own the frames.
    pub owner: DomId,
    /// Where from.
    pub node: NodePref,
    /// Whether the allocation is movable (may come from, and prefers, the Movable zone).
    pub movable: bool,
    /// Whether the frames must be scrubbed before the owner gets them (almost always).
    pub scrub: bool,
    /// Whether the allocation is sealed (see [`AllocRequest::sealed`]).
    pub sealed: bool,
}

impl AllocRequest {
    /// 2^order scrubbed, unmovable frames for `owner` from any node.
    pub fn new(order: u8, owner: DomId) -> Self {
        AllocRequest { order, owner, node: NodePref::Any, movable: false, scrub: true, sealed: false }
    }
    /// Prefer `node`, falling back to the nearest others.
    pub fn on(mut self, node: usize) -> Self {
        self.node = NodePref::Prefer(node);
        self
    }
    /// Only `node`.
    pub fn exact(mut self, node: usize) -> Self {
        self.node = NodePref::Exact(node);
        self
    }
    /// Movable: may be migrated, prefers the Movable zone.
    pub fn movable(mut self) -> Self {
        self.movable = true;
        self
    }
    /// The caller will overwrite every frame itself: hand frames over without scrubbing.
    pub fn noscrub(mut self) -> Self {
        self.scrub = false;
        self
    }
    /// Sealed: a layer above the heap (a populate-on-demand cache, a balloon, a device
    /// driver's ring) keeps the frames for the owner and gives them back itself. The
    /// ordinary [`Heap::free`] and [`Heap::pin`] refuse every frame of a sealed
    /// allocation ([`crate::FreeError::Sealed`]); only [`Heap::free_sealed`] frees it (whole or
    /// any aligned part). A sealed allocation is never movable ([`HeapError::SealedMovable`]).
    pub fn sealed(mut self) -> Self {
        self.sealed = true;
        self
    }
}

/// A run of 2^order frames starting at `mfn`, on `node`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Extent {
    /// First frame.
    pub mfn: Mfn,
    /// Size as an order.
    pub order: u8,
    /// The node it is on.
    pub node: usize,
}

impl Extent {
    /// Number of frames.
    pub fn frames(&self) -> u64 {
        1 << self.order
    }

    /// The aligned parts of `self` that remain when `part` (an aligned part of it, of
    /// `part.order <= self.order`) is taken out: one buddy at each order from
    /// `self.order - 1` down to `part.order`, as the heap splits a chunk around a part.
    pub fn split_around(&self, part: Extent) -> Vec<Extent> {
        let (mut h, mut k) = (self.mfn.0, self.order);
        let mut rest = Vec::new();
        while k > part.order {
            k -= 1;
            let upper = h + (1 << k);
            if part.mfn.0 >= upper {
                rest.push(Extent { mfn: Mfn(h), order: k, node: self.node });
                h = upper;
            } else {
                rest.push(Extent { mfn: Mfn(upper), order: k, node: self.node });
            }
        }
        rest
    }
}

/// State of a chunk as [`Heap::chunk_at`] reports it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ChunkState {
    /// Free; `dirty_frames` of it still hold old bytes.
    Free {
        /// Dirty frames in the chunk.
        dirty_frames: u64,
    },
    /// Held by `owner`, long-term pinned `pins` times.
    Allocated {
        /// The owner.
        owner: DomId,
        /// Long-term pin count.
        pins: u32,
        /// Whether the allocation is movable.
        movable: bool,
        /// Whether the allocation is sealed (freed only by [`Heap::free_sealed`]).
        sealed: bool,
    },
    /// Being scrubbed outside the lock (by an idle CPU, or a `sync` free).
    Scrubbing,
    /// Reserved for `owner` by a pending allocation still being scrubbed.
    Pending {
        /// Who will get it.
        owner: DomId,
    },
    /// Isolated by an offline in progress.
    Isolated,
    /// Offline.
    Offline,
    /// Broken.
    Broken,
}

/// The chunk containing a frame.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    /// The chunk's frames.
    pub extent: Extent,
    /// Its zone.
    pub zone: Zone,
    /// Its state.
    pub state: ChunkState,
}

/// `repr(C)` with the lock on lines of its own: `base` and `frames`, read by every
/// fast-path put, share no line with the lock another CPU's refill takes, nor with the
/// counters its guard publishes as it drops.
#[repr(C)]
pub(crate) struct NodeCell {
    pub base: u64,
    pub frames: u64,
    state: Padded<Mutex<NodeState>>,
    free: AtomicU64,
    free_dirty: AtomicU64,
    allocated: AtomicU64,
    offline: AtomicU64,
    scrubbing: AtomicU64,
    /// Outstanding node claims on this node (mirrors the claim book; stored with Release
    /// before the node's free count, see the gate module).
    pub(crate) claimed: AtomicU64,
    /// Bytes scrubbed on this node: background, in place, sync.
    scrubbed: [AtomicU64; 3],
}

const _: () = assert!(
    core::mem::offset_of!(NodeCell, state) >= 128 && core::mem::offset_of!(NodeCell, free) >= 256,
    "a node's base and frames share no pair of cache lines with its lock or its published counters"
);

/// Who paid for a scrub, indexing [`NodeCell::scrubbed`].
#[derive(Copy, Clone)]
pub(crate) enum Source {
    Background = 0,
    InPlace = 1,
    Sync = 2,
}

impl NodeCell {
    /// The frame number of node offset `off`.
    #[inline]
    pub(crate) fn mfn(&self, off: Off) -> Mfn {
        debug_assert!(off.0 as u64 <= self.frames, "offset {off:?} beyond the node's {} frames", self.frames);
        off.to_mfn(self.base)
    }

    /// Mirrors the counters for lock-free readers; called before the node lock drops.
    pub(crate) fn publish(&self, st: &NodeState) {
        // Release: a claim given back before these frames is visible to whoever sees them.
        self.free.store(st.free, Release);
        self.free_dirty.store(st.free_dirty, Relaxed);
        self.allocated.store(st.allocated, Relaxed);
        self.offline.store(st.offline, Relaxed);
        self.scrubbing.store(st.scrubbing, Relaxed);
    }
}

/// The physical page heap. See the crate documentation.
pub struct Heap<M> {
    config: HeapConfig,
    first: u64,
    end: u64,
    nodes: Vec<NodeCell>,
    /// Per node: every node, nearest first (itself first).
    near: Vec<Vec<usize>>,
    /// Per node: the nodes its scrubbers serve (itself if it has CPUs, and CPU-less nodes
    /// for which it is the nearest node with CPUs).
    served: Vec<Vec<usize>>,
    claims: Mutex<ClaimBook>,
    /// All outstanding claims (mirrors the claim book, for lock-free readers).
    claimed_total: AtomicU64,
    /// Bit `d % 64` set while some domain `d` has a claim entry (mirrors the claim book):
    /// a clear bit tells the gate a domain holds no claims without the claims lock.
    claimants: AtomicU64,
    observer: Option<Arc<dyn LockObserver>>,
    /// The per-CPU fast path's reserves (see the pcpu module).
    pcpu: crate::reserve::Pcpu,
    mem: M,
}

/// A node's state under its lock. When it drops, before the lock is released, it
/// publishes the node's counters (if the state was borrowed mutably) and tells the
/// observer: no caller publishes by hand.
pub(crate) struct NodeGuard<'a> {
    guard: MutexGuard<'a, NodeState>,
    node: usize,
    cell: &'a NodeCell,
    /// The state was borrowed mutably: its counters may have changed.
    changed: bool,
    observer: Option<&'a dyn LockObserver>,
}

impl Deref for NodeGuard<'_> {
    type Target = NodeState;
    fn deref(&self) -> &NodeState {
        &self.guard
    }
}

impl DerefMut for NodeGuard<'_> {
    fn deref_mut(&mut self) -> &mut NodeState {
        self.changed = true;
        &mut self.guard
    }
}

impl Drop for NodeGuard<'_> {
    fn drop(&mut self) {
        if self.changed {
            self.cell.publish(&self.guard);
        }
        if let Some(o) = self.observer {
            o.released(self.node);
        }
    }
}

/// Tries to take the pieces an allocation wants from one node.
pub(crate) enum NodeTry {
    Ready(Extent),
    Pending {
        node: usize,
        id: u64,
        ext: Extent,
    },
    /// Could not serve: free frames seen, of which claimed by others, and whether a
    /// background scrub of a big enough chunk was asked to hand it back.
    No {
        free: u64,
        claimed: u64,
        aborted: bool,
    },
}

#[inline]
fn size(order: u8) -> u32 {
    1u32 << order
}

impl<M: FrameMemory> Heap<M> {
    /// Builds a heap over the configured nodes, every frame free (clean, or dirty if the
    /// configuration says so).
    pub fn new(config: HeapConfig, mem: M) -> Result<Self, HeapError> {
        config.validate()?;
        let n = config.nodes.len();
        let mut nodes = Vec::with_capacity(n);
        let mut base = config.first.0;
        for spec in &config.nodes {
            let frames = spec.frames as u32;
            let mf = spec.movable_from.map_or(frames, |m| m as u32);
            let st = NodeState::new(base, frames, Off(mf), config.initially_dirty);
            let cell = NodeCell {
                base,
                frames: spec.frames,
                state: Padded(Mutex::new(NodeState::new(0, 1, Off(1), false))),
                free: AtomicU64::new(0),
                free_dirty: AtomicU64::new(0),
                allocated: AtomicU64::new(0),
                offline: AtomicU64::new(0),
                scrubbing: AtomicU64::new(0),
                claimed: AtomicU64::new(0),
                scrubbed: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            };
            cell.publish(&st);
            *cell.state.lock() = st;
            nodes.push(cell);
            base += spec.frames;
        }
        let near: Vec<Vec<usize>> = (0..n)
            .map(|a| {
                let mut v: Vec<usize> = (0..n).collect();
                v.sort_by_key(|&b| (config.distance(a, b), b != a, b));
                v
            })
            .collect();
        let mut served: Vec<Vec<usize>> =
            (0..n).map(|m| if config.nodes[m].has_cpus { vec![m] } else { Vec::new() }).collect();
        for m in (0..n).filter(|&m| !config.nodes[m].has_cpus) {
            if let Some(&s) = near[m].iter().find(|&&s| config.nodes[s].has_cpus) {
                served[s].push(m);
            }
        }
        let ranges: Vec<(u64, u64)> = nodes.iter().map(|c| (c.base, c.frames)).collect();
        Ok(Heap {
            pcpu: crate::reserve::Pcpu::new(&ranges, config.cpus),
            first: config.first.0,
            end: base,
            nodes,
            near,
            served,
            claims: Mutex::new(ClaimBook::new(n)),
            claimed_total: AtomicU64::new(0),
            claimants: AtomicU64::new(0),
            observer: None,
            config,
            mem,
        })
    }

    /// Has `observer` told of every node lock taken and released (for lock-hold timing).
    pub fn set_lock_observer(&mut self, observer: Arc<dyn LockObserver>) {
        self.observer = Some(observer);
    }

    pub(crate) fn lock_node(&self, node: usize) -> NodeGuard<'_> {
        let guard = self.nodes[node].state.lock();
        let observer = self.observer.as_deref();
        if let Some(o) = observer {
            o.acquired(node);
        }
        NodeGuard { guard, node, cell: &self.nodes[node], changed: false, observer }
    }

    /// The claim book, under its lock.
    pub(crate) fn claim_book(&self) -> MutexGuard<'_, ClaimBook> {
        self.claims.lock()
    }

    /// Every node, nearest to `node` first (itself first).
    pub(crate) fn nearest(&self, node: usize) -> &[usize] {
        &self.near[node]
    }

    /// The nodes `node`'s scrubbers serve.
    pub(crate) fn served(&self, node: usize) -> &[usize] {
        &self.served[node]
    }

    /// The cells of every node.
    pub(crate) fn cells(&self) -> &[NodeCell] {
        &self.nodes
    }

    /// The node's lock without telling the observer: for the invariant checker, whose
    /// O(frames) walk is not an allocator operation and must not count as a lock hold.
    pub(crate) fn lock_node_unobserved(&self, node: usize) -> MutexGuard<'_, NodeState> {
        self.nodes[node].state.lock()
    }

    pub(crate) fn cell(&self, node: usize) -> &NodeCell {
        &self.nodes[node]
    }

    /// The per-CPU fast path's reserves.
    pub(crate) fn pcpu(&self) -> &crate::reserve::Pcpu {
        &self.pcpu
    }

    /// Bytes of memory the heap's metadata holds now: every node's per-frame metadata,
    /// dirty bitmap and work list (their capacities, not their lengths), and the heap's
    /// own tables. Takes each node lock in turn.
    ///
    /// ```
    /// use scrubheap::{Heap, HeapConfig, NullMemory};
    /// let heap = Heap::new(HeapConfig::uniform(1, 1 << 16), NullMemory).unwrap();
    /// let per_frame = heap.metadata_bytes() as f64 / (1 << 16) as f64;
    /// assert!(per_frame > 0.125, "at least the dirty bit");
    /// ```
    pub fn metadata_bytes(&self) -> u64 {
        let nodes: u64 = (0..self.nodes.len()).map(|n| self.lock_node_unobserved(n).metadata_bytes()).sum();
        let tables = self.nodes.capacity() * core::mem::size_of::<NodeCell>()
            + self.near.iter().chain(&self.served).map(|v| v.capacity() * 8 + 24).sum::<usize>();
        let (reserve_tables, reserve_blocks) = self.pcpu.bytes();
        nodes + tables as u64 + reserve_tables + reserve_blocks + core::mem::size_of::<Self>() as u64
    }

    /// The configuration the heap was built with.
    pub fn config(&self) -> &HeapConfig {
        &self.config
    }

    /// The policy.
    pub fn policy(&self) -> Policy {
        self.config.policy
    }

    /// The memory behind the frames.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The frames `[first, end)` of `node`.
    pub fn node_range(&self, node: usize) -> Result<(Mfn, Mfn), HeapError> {
        let c = self.node(node)?;
        Ok((Mfn(c.base), Mfn(c.base + c.frames)))
    }

    /// The nodes whose memory `node`'s scrubbers look after (itself, and the CPU-less
    /// nodes it is nearest to).
    pub fn served_by(&self, node: usize) -> Result<&[usize], HeapError> {
        self.node(node)?;
        Ok(&self.served[node])
    }

    pub(crate) fn node(&self, node: usize) -> Result<&NodeCell, RangeError> {
        // Not `ok_or`: the error would be built, and dropped, on every call.
        match self.nodes.get(node) {
            Some(c) => Ok(c),
            None => Err(RangeError::NoSuchNode { node, nodes: self.nodes.len() }),
        }
    }

    /// The node holding `mfn`.
    pub fn node_of(&self, mfn: Mfn) -> Result<usize, HeapError> {
        Ok(self.frame_node(mfn)?)
    }

    /// [`Heap::node_of`], refused as a range error.
    #[inline]
    pub(crate) fn frame_node(&self, mfn: Mfn) -> Result<usize, RangeError> {
        if mfn.0 < self.first || mfn.0 >= self.end {
            return Err(RangeError::OutOfRange { mfn, first: Mfn(self.first), end: Mfn(self.end) });
        }
        Ok(self.nodes.partition_point(|c| c.base + c.frames <= mfn.0))
    }

    /// Validates `[mfn, 2^order)`: a known order, inside one node, naturally aligned.
    /// Returns the node and the node-relative offset.
    #[inline]
    pub(crate) fn locate(&self, mfn: Mfn, order: u8) -> Result<(usize, Off), RangeError> {
        if order > MAX_ORDER {
            return Err(RangeError::InvalidOrder { order });
        }
        let n = self.frame_node(mfn)?;
        if mfn.0 & ((1u64 << order) - 1) != 0 {
            return Err(RangeError::Unaligned { mfn, order, size: 1 << order });
        }
        let c = &self.nodes[n];
        if mfn.0 + (1u64 << order) > c.base + c.frames {
            if mfn.0 + (1u64 << order) > self.end {
                return Err(RangeError::OutOfRange {
                    mfn: Mfn(mfn.0 + (1 << order) - 1),
                    first: Mfn(self.first),
                    end: Mfn(self.end),
                });
            }
            return Err(RangeError::CrossesNode { mfn, order });
        }
        Ok((n, Off::of(mfn, c.base)))
    }

    fn pick_rule(&self, req: &AllocRequest) -> Pick {
        match self.config.policy {
            Policy::XenCap2m if req.scrub && (self.config().frame_size << req.order) > 2 << 20 => Pick::CleanOnly,
            Policy::Xen | Policy::XenCap2m => Pick::CleanFirst,
            Policy::Sync | Policy::Alloc | Policy::Scrubheap => Pick::SmallestFirst { prefer_dirty: !req.scrub },
        }
    }

    /// One pass over the candidate nodes. `Ok(No)` only when a background scrub was asked
    /// to hand back a chunk (worth waiting for); out of memory otherwise.
    pub(crate) fn try_alloc(&self, req: &AllocRequest) -> Result<NodeTry, HeapError> {
        let (start, only) = match req.node {
            NodePref::Any => {
                let best =
                    (0..self.nodes.len()).max_by_key(|&n| (self.available(n), core::cmp::Reverse(n))).unwrap_or(0);
                (best, false)
            }
            NodePref::Prefer(n) => (n, false),
            NodePref::Exact(n) => (n, true),
        };
        let pick = self.pick_rule(req);
        let (mut free, mut claimed, mut aborted) = (0, 0, false);
        let candidates = if only { &self.near[start][..1] } else { &self.near[start][..] };
        for &n in candidates {
            match self.try_node(n, req, pick) {
                NodeTry::No { free: f, claimed: c, aborted: a } => {
                    free += f;
                    claimed += c;
                    aborted |= a;
                }
                got => return Ok(got),
            }
        }
        if aborted {
            return Ok(NodeTry::No { free, claimed, aborted });
        }
        let where_ = if only { format!("node {start}") } else { format!("any of the {} nodes", self.nodes.len()) };
        Err(HeapError::OutOfMemory { order: req.order, where_, free, claimed })
    }

    fn try_node(&self, n: usize, req: &AllocRequest, pick: Pick) -> NodeTry {
        let want = size(req.order);
        let mut st = self.lock_node(n);
        // The claims lock only if the owner holds claims (see the gate module).
        let avail = st.available();
        let (room, book) = self.gate(Some(req.owner), n, avail);
        if room.refusal(n, want as u64).is_some() {
            let claimed = core::cmp::min(avail, core::cmp::max(room.others_node, room.others_all));
            return NodeTry::No { free: st.free, claimed, aborted: false };
        }
        let zones: &[Zone] = if req.movable { &[Zone::Movable, Zone::Normal] } else { &[Zone::Normal] };
        let Some((head, got)) = zones.iter().find_map(|&z| st.pick(z, req.order, pick)) else {
            let aborted = Self::abort_background(&mut st, zones, req.order);
            return NodeTry::No { free: st.free, claimed: room.others_node, aborted };
        };
        st.split_free(head, got, req.order);
        self.take_chunk(st, n, head, req, book)
    }

    /// Hands the free chunk at `head` of node `n` (of `req.order`, off the free lists,
    /// its head a Free record (`NodeState::first_dirty` exact), admitted by the claims gate
    /// under the `book` the caller holds, if any claim exists) to `req.owner`: counters,
    /// claims retired, then clean frames at once, dirty ones scrubbed in place within
    /// one batch, or a scrub ticket for more. The one tail of every allocation.
    pub(crate) fn take_chunk(
        &self,
        mut st: NodeGuard<'_>,
        n: usize,
        head: Off,
        req: &AllocRequest,
        mut book: Option<MutexGuard<'_, ClaimBook>>,
    ) -> NodeTry {
        let cell = &self.nodes[n];
        let want = size(req.order);
        debug_assert!(st.state(head) == State::Free && st.head(head).order == req.order);
        debug_assert!(st.aligned(head, req.order) && st.free >= want as u64);
        let fd = st.first_dirty(head);
        let dirty = if fd == crate::chunk::NONE { 0 } else { st.dirty.count(head + fd, want - fd) };
        st.free -= want as u64;
        st.free_dirty -= dirty as u64;
        st.allocated += want as u64;
        let in_one_go = want as u64 <= self.config().scrub_batch || self.config.policy.whole_chunk_in_place();
        let ticket = dirty > 0 && req.scrub && !in_one_go;
        let mut claim = Retired::default();
        if let Some(b) = book.as_mut() {
            claim = b.retire(req.owner, n, want as u64, ticket);
            self.publish_claims(b);
        }
        drop(book);
        let ext = Extent { mfn: st.mfn(head), order: req.order, node: n };
        if ticket {
            st.set_pending(head, req.order, req.owner);
            let id = st.add_work(
                head,
                req.order,
                Kind::Ticket { owner: req.owner, movable: req.movable, sealed: req.sealed, claim },
            );
            return NodeTry::Pending { node: n, id, ext };
        }
        if dirty > 0 {
            st.dirty.clear_all(head + fd, want - fd);
        }
        st.set_allocated(head, req.order, req.owner, req.movable, req.sealed);
        let zero = if dirty > 0 && req.scrub { (want - fd) as u64 } else { 0 };
        if zero > 0 {
            *st.in_place_by_owner.entry(req.owner).or_default() += zero;
        }
        drop(st);
        if zero > 0 {
            // At most one batch (or, under the xen policies, the whole chunk with no
            // preemption point, as Xen does). The frames are the owner's only once this
            // returns, so no one else can touch them meanwhile.
            self.mem.zero(cell.mfn(head + fd), zero);
            self.account(n, Source::InPlace, zero);
        }
        NodeTry::Ready(ext)
    }

    /// Asks a background scrubber holding a chunk of at least `order` in `zones` to hand
    /// it back after its current batch. Returns whether one was found.
    fn abort_background(st: &mut NodeState, zones: &[Zone], order: u8) -> bool {
        let mut found = false;
        for i in 0..st.work.len() {
            let w = &st.work[i];
            if w.kind == Kind::Background && w.order >= order && zones.contains(&st.zone_of(w.head)) {
                st.work[i].stop = true;
                found = true;
                break;
            }
        }
        found
    }

    /// Frees `[mfn, 2^order)`, which `owner` must hold (all of it, unpinned): a whole
    /// allocation or any aligned part of one. The frames become dirty and merge with
    /// their free buddies in O(MAX_ORDER) under the node lock. Under the `sync` policy
    /// they are zeroed first, outside the lock.
    /// Frames of a sealed allocation are refused ([`crate::FreeError::Sealed`]). A range held as
    /// more than [`CHUNKS_PER_STEP`](crate::CHUNKS_PER_STEP) chunks (after partial frees
    /// or pins) is refused ([`crate::FreeError::TooManyChunks`], nothing changed): one call would
    /// walk them all under the node lock; [`Heap::range_start`] frees it in bounded steps.
    pub fn free(&self, mfn: Mfn, order: u8, owner: DomId) -> Result<(), HeapError> {
        self.free_held(mfn, order, owner, false)
    }

    /// [`Heap::free`] for sealed allocations (see [`AllocRequest::sealed`]): every frame
    /// of `[mfn, 2^order)` must be `owner`'s, unpinned and sealed (else
    /// [`crate::FreeError::NotSealed`], nothing changed). The layer that sealed the frames calls
    /// this; a range may be a whole sealed allocation or any aligned part of one, and may
    /// span several sealed allocations of the owner. Refused like [`Heap::free`] above
    /// [`CHUNKS_PER_STEP`](crate::CHUNKS_PER_STEP) chunks.
    pub fn free_sealed(&self, mfn: Mfn, order: u8, owner: DomId) -> Result<(), HeapError> {
        self.free_held(mfn, order, owner, true)
    }

    /// Frees a held range: ordinary frames (`sealed` false) or sealed ones (true).
    fn free_held(&self, mfn: Mfn, order: u8, owner: DomId, sealed: bool) -> Result<(), HeapError> {
        let (n, off) = self.locate(mfn, order)?;
        match self.put_reserved(0, n, off, order, owner, sealed) {
            Some(r) => r,
            None => self.free_located(n, off, order, owner, sealed),
        }
    }

    /// [`Heap::free_held`] of `[off, 2^order)` of node `n`, which no fast-path block holds.
    pub(crate) fn free_located(
        &self,
        n: usize,
        off: Off,
        order: u8,
        owner: DomId,
        sealed: bool,
    ) -> Result<(), HeapError> {
        let mut st = self.lock_node(n);
        let sync = self.config.policy.scrubs_on_free();
        if let (false, Some(s)) = (sync, st.head_at(off)) {
            let plain = !s.migrating && !s.broken && s.sealed == sealed && s.pins == 0;
            if plain && s.state == State::Allocated && s.order == order && s.owner == owner {
                // The common case: exactly one whole allocated chunk.
                st.clear_head(off);
                st.allocated -= size(order) as u64;
                st.release(off, order, false);
                return Ok(());
            }
        }
        Self::check_fragments(&st, off, order)?;
        let held = st.held_by(off, order, owner, sealed)?;
        if let Some(h) = held.pinned {
            return Err(HeapError::Free(FreeError::Pinned { mfn: st.mfn(h), owner }));
        }
        Self::split_to(&mut st, off, order);
        let end = off + size(order);
        let mut ids = Vec::new();
        let (pos, _) = Self::free_chunks(&mut st, off, end, sync, &mut ids);
        debug_assert_eq!(pos, end, "a range of at most CHUNKS_PER_STEP chunks is freed in one step");
        drop(st);
        self.finish_sync_free(n, &ids);
        Ok(())
    }

    /// Installs `dom`'s claim set, replacing any claims it had: all entries or none.
    /// Node entries reserve free memory on that node, the global entry anywhere.
    pub fn claim_set(&self, dom: DomId, set: &[Claim]) -> Result<(), HeapError> {
        let n = self.nodes.len();
        let mut new = DomClaims::empty(n);
        let too_big = |requested: u64| {
            HeapError::Claim(ClaimError::ClaimExceedsFree {
                requested,
                where_: "the whole heap (the claim sizes overflow)".into(),
                available: 0,
            })
        };
        let mut total = 0u64;
        for c in set {
            let slot = match c.target {
                ClaimTarget::Global => &mut new.global,
                ClaimTarget::Node(i) => {
                    self.node(i)?;
                    &mut new.nodes[i]
                }
            };
            *slot = slot.checked_add(c.frames).ok_or(too_big(c.frames))?;
            total = total.checked_add(c.frames).ok_or(too_big(c.frames))?;
        }
        // Every node lock, in order, then the claims lock: no allocation is between its
        // availability check and its update while claims change (the claims gate relies
        // on it, see gate.rs).
        // The reserves' free frames go back first, so the claim sees them as free.
        self.drain_reserves();
        let guards: Vec<_> = (0..n).map(|i| self.lock_node(i)).collect();
        let mut book = self.claims.lock();
        let old = book.doms.get(&dom).cloned().unwrap_or(DomClaims::empty(n));
        let mut total_free = 0;
        for (i, g) in guards.iter().enumerate() {
            let free = g.available();
            total_free += free;
            let available = free.saturating_sub(book.node_total[i] - old.nodes[i]);
            if new.nodes[i] > available {
                return Err(HeapError::Claim(ClaimError::ClaimExceedsFree {
                    requested: new.nodes[i],
                    where_: format!("node {i}"),
                    available,
                }));
            }
        }
        let available = total_free.saturating_sub(book.outstanding() - old.total());
        if new.total() > available {
            return Err(HeapError::Claim(ClaimError::ClaimExceedsFree {
                requested: new.total(),
                where_: "the whole heap".into(),
                available,
            }));
        }
        book.install(dom, new);
        self.publish_claims(&book);
        drop(book);
        drop(guards);
        Ok(())
    }

    /// Drops all of `dom`'s outstanding claims.
    pub fn claim_cancel(&self, dom: DomId) {
        let mut book = self.claims.lock();
        book.cancel(dom);
        self.publish_claims(&book);
    }

    /// `dom`'s outstanding claims (global first, then nodes in order; zero entries left out).
    pub fn claims_of(&self, dom: DomId) -> Vec<Claim> {
        let book = self.claims.lock();
        let Some(c) = book.doms.get(&dom) else { return Vec::new() };
        let mut v = Vec::new();
        if c.global > 0 {
            v.push(Claim { target: ClaimTarget::Global, frames: c.global });
        }
        for (i, &f) in c.nodes.iter().enumerate().filter(|(_, &f)| f > 0) {
            v.push(Claim { target: ClaimTarget::Node(i), frames: f });
        }
        v
    }

    /// Frame counts of one node, read without taking any lock (each counter is exact at
    /// some moment; together they may be a moment apart while the heap is busy).
    pub fn node_stats(&self, node: usize) -> Result<NodeStats, HeapError> {
        let c = self.node(node)?;
        let free = c.free.load(Relaxed);
        let free_dirty = c.free_dirty.load(Relaxed);
        // Blocks of the fast path are allocated chunks to the node; their free part is
        // the reserve.
        let reserved = self.pcpu.reserved(node);
        Ok(NodeStats {
            free_clean: free - free_dirty,
            free_dirty,
            reserved,
            parked_dirty: self.pcpu.parked_dirty(node),
            allocated: c.allocated.load(Relaxed).saturating_sub(reserved),
            offline: c.offline.load(Relaxed),
            scrubbing: c.scrubbing.load(Relaxed),
            claimed: c.claimed.load(Relaxed),
        })
    }

    /// Free frames of `zone` on `node`, clean, dirty and being scrubbed in the background,
    /// counted from its free lists under the node lock (O(free chunks of the zone)). A
    /// node without a Movable zone has all its free frames in Normal.
    pub fn zone_stats(&self, node: usize, zone: Zone) -> Result<ZoneStats, HeapError> {
        self.node(node)?;
        let st = self.lock_node(node);
        let mut z = ZoneStats::default();
        for listed_dirty in [false, true] {
            let mask = st.nonempty_mask(zone, listed_dirty);
            for o in (0..=MAX_ORDER).filter(|&o| mask & (1 << o) != 0) {
                for at in st.free_list(zone, listed_dirty, o) {
                    let dirty = if listed_dirty { st.dirty.count(at, size(o)) as u64 } else { 0 };
                    z.free_dirty += dirty;
                    z.free_clean += (1u64 << o) - dirty;
                }
            }
        }
        let scrubbing = st.work.iter().filter(|w| w.kind == Kind::Background && st.zone_of(w.head) == zone);
        z.scrubbing = scrubbing.map(|w| w.frames()).sum();
        debug_assert!(z.free() <= st.free, "a zone has no more free frames than its node");
        Ok(z)
    }

    /// Frame counts of the whole heap, and bytes scrubbed by source.
    pub fn stats(&self) -> HeapStats {
        let mut s = HeapStats::default();
        for n in 0..self.nodes.len() {
            let ns = self.node_stats(n).expect("node exists");
            s.free_clean += ns.free_clean;
            s.free_dirty += ns.free_dirty;
            s.allocated += ns.allocated;
            s.offline += ns.offline;
            s.scrubbing += ns.scrubbing;
            s.reserved += ns.reserved;
            s.parked_dirty += ns.parked_dirty;
        }
        s.claimed = self.claimed_total();
        for (n, c) in self.nodes.iter().enumerate() {
            s.scrubbed.in_place += self.pcpu.in_place(n) * self.config().frame_size;
            s.scrubbed.background += c.scrubbed[Source::Background as usize].load(Relaxed);
            s.scrubbed.in_place += c.scrubbed[Source::InPlace as usize].load(Relaxed);
            s.scrubbed.sync += c.scrubbed[Source::Sync as usize].load(Relaxed);
        }
        s
    }

    /// Bytes scrubbed in place for allocations by `owner`.
    pub fn in_place_bytes(&self, owner: DomId) -> u64 {
        (0..self.nodes.len())
            .map(|n| self.lock_node(n).in_place_by_owner.get(&owner).copied().unwrap_or(0))
            .sum::<u64>()
            .saturating_add(self.pcpu.in_place_of(owner))
            * self.config().frame_size
    }

    /// The chunk containing `mfn`.
    /// A frame the per-CPU fast path lent out shows as its owner's allocated chunk; a
    /// frame free in a reserve, as a chunk of the fast order allocated to
    /// [`crate::RESERVE_OWNER`].
    pub fn chunk_at(&self, mfn: Mfn) -> Result<ChunkInfo, HeapError> {
        let n = self.node_of(mfn)?;
        if let Some(info) = self.reserve_chunk_at(n, mfn) {
            return Ok(info);
        }
        let st = self.lock_node(n);
        let (h, o) = st.chunk_of(st.off(mfn));
        let s = st.head(h);
        let state = match s.state {
            State::Free => ChunkState::Free { dirty_frames: st.dirty.count(h, size(o)) as u64 },
            State::Allocated => {
                ChunkState::Allocated { owner: s.owner, pins: s.pins, movable: s.movable, sealed: s.sealed }
            }
            State::Scrubbing => ChunkState::Scrubbing,
            State::Pending => ChunkState::Pending { owner: s.owner },
            State::Isolated => ChunkState::Isolated,
            State::Offline => ChunkState::Offline,
            State::Broken | State::None => ChunkState::Broken,
        };
        Ok(ChunkInfo { extent: Extent { mfn: st.mfn(h), order: o, node: n }, zone: st.zone_of(h), state })
    }

    /// Counts `frames` scrubbed on `node` for `source`.
    pub(crate) fn account(&self, node: usize, source: Source, frames: u64) {
        if frames > 0 {
            self.nodes[node].scrubbed[source as usize].fetch_add(frames * self.config().frame_size, Relaxed);
        }
    }

    /// Mirrors the claim totals for lock-free readers; called under the claims lock.
    /// Release: published before any frames a given-back claim brings (see the gate).
    pub(crate) fn publish_claims(&self, book: &ClaimBook) {
        for (c, &t) in self.nodes.iter().zip(&book.node_total) {
            c.claimed.store(t, Release);
        }
        self.claimed_total.store(book.outstanding(), Release);
        self.claimants.store(book.claimants(), Release);
    }

    /// All outstanding claims, node and global, from their lock-free mirror.
    pub(crate) fn claimed_total(&self) -> u64 {
        self.claimed_total.load(Acquire)
    }

    /// The published claimants mask (for the invariant checker).
    pub(crate) fn claimants(&self) -> u64 {
        self.claimants.load(Acquire)
    }

    /// Whether `dom` may hold claims: false means it holds none (its bit is clear).
    pub(crate) fn may_hold_claims(&self, dom: DomId) -> bool {
        self.claimants.load(Acquire) & ClaimBook::bit(dom) != 0
    }

    /// Free frames of node `n` (including those being scrubbed), read without its lock.
    pub(crate) fn available(&self, n: usize) -> u64 {
        self.nodes[n].free.load(Acquire)
    }

    pub(crate) fn node_counters(&self, n: usize) -> [u64; 5] {
        let c = &self.nodes[n];
        [
            c.free.load(Relaxed),
            c.free_dirty.load(Relaxed),
            c.allocated.load(Relaxed),
            c.offline.load(Relaxed),
            c.scrubbing.load(Relaxed),
        ]
    }

    /// A short description of `n`'s free lists, for error messages and debugging.
    pub fn describe_node(&self, n: usize) -> Result<String, HeapError> {
        self.node(n)?;
        let st = self.lock_node(n);
        let mut s = String::new();
        for z in [Zone::Normal, Zone::Movable] {
            for d in [false, true] {
                let m = st.nonempty_mask(z, d);
                if m != 0 {
                    s += &format!("{z}/{}: orders {m:#b}; ", if d { "dirty" } else { "clean" });
                }
            }
        }
        Ok(s)
    }
}
