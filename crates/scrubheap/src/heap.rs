//! The heap: nodes behind their own locks, claims, scrub accounting, and the public
//! operations. Every operation validates its input before changing anything.

use crate::chunk::{Slot, State, F_MOVABLE, NONE};
use crate::claims::{Claim, ClaimBook, ClaimTarget, DomClaims};
use crate::config::HeapConfig;
use crate::error::HeapError;
use crate::memory::FrameMemory;
use crate::node::{NodeState, Pick};
use crate::policy::Policy;
use crate::stats::{HeapStats, NodeStats, ScrubBytes};
use crate::types::{DomId, Mfn, Zone, MAX_ORDER};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use spin::Mutex;

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
}

impl AllocRequest {
    /// 2^order scrubbed, unmovable frames for `owner` from any node.
    pub fn new(order: u8, owner: DomId) -> Self {
        AllocRequest { order, owner, node: NodePref::Any, movable: false, scrub: true }
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
    },
    /// Being scrubbed outside the lock.
    Scrubbing,
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

pub(crate) struct NodeCell {
    pub base: u64,
    pub frames: u64,
    pub state: Mutex<NodeState>,
    free: AtomicU64,
    free_dirty: AtomicU64,
    allocated: AtomicU64,
    offline: AtomicU64,
    scrubbing: AtomicU64,
}

impl NodeCell {
    /// Mirrors the counters for lock-free readers; called before the node lock drops.
    fn publish(&self, st: &NodeState) {
        self.free.store(st.free, Relaxed);
        self.free_dirty.store(st.free_dirty, Relaxed);
        self.allocated.store(st.allocated, Relaxed);
        self.offline.store(st.offline, Relaxed);
        self.scrubbing.store(st.scrubbing, Relaxed);
    }
}

#[derive(Default)]
pub(crate) struct Accounting {
    pub scrubbed: ScrubBytes,
    pub in_place_by_owner: BTreeMap<DomId, u64>,
}

/// The physical page heap. See the crate documentation.
pub struct Heap<M> {
    pub(crate) config: HeapConfig,
    pub(crate) first: u64,
    pub(crate) end: u64,
    pub(crate) nodes: Vec<NodeCell>,
    /// Per node: every node, nearest first (itself first).
    near: Vec<Vec<usize>>,
    /// Per node: the nodes its scrubbers serve (itself if it has CPUs, and CPU-less nodes
    /// for which it is the nearest node with CPUs).
    served: Vec<Vec<usize>>,
    pub(crate) claims: Mutex<ClaimBook>,
    pub(crate) acct: Mutex<Accounting>,
    mem: M,
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
            let st = NodeState::new(base, frames, mf, config.initially_dirty);
            let cell = NodeCell {
                base,
                frames: spec.frames,
                state: Mutex::new(NodeState::new(0, 1, 1, false)),
                free: AtomicU64::new(0),
                free_dirty: AtomicU64::new(0),
                allocated: AtomicU64::new(0),
                offline: AtomicU64::new(0),
                scrubbing: AtomicU64::new(0),
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
        Ok(Heap {
            first: config.first.0,
            end: base,
            nodes,
            near,
            served,
            claims: Mutex::new(ClaimBook::new(n)),
            acct: Mutex::new(Accounting::default()),
            config,
            mem,
        })
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

    fn node(&self, node: usize) -> Result<&NodeCell, HeapError> {
        self.nodes.get(node).ok_or(HeapError::NoSuchNode { node, nodes: self.nodes.len() })
    }

    /// The node holding `mfn`.
    pub fn node_of(&self, mfn: Mfn) -> Result<usize, HeapError> {
        if mfn.0 < self.first || mfn.0 >= self.end {
            return Err(HeapError::OutOfRange { mfn, first: Mfn(self.first), end: Mfn(self.end) });
        }
        Ok(self.nodes.partition_point(|c| c.base + c.frames <= mfn.0))
    }

    /// Validates `[mfn, 2^order)`: a known order, inside one node, naturally aligned.
    /// Returns the node and the node-relative offset.
    fn locate(&self, mfn: Mfn, order: u8) -> Result<(usize, u32), HeapError> {
        if order > MAX_ORDER {
            return Err(HeapError::InvalidOrder { order });
        }
        let n = self.node_of(mfn)?;
        if mfn.0 & ((1u64 << order) - 1) != 0 {
            return Err(HeapError::Unaligned { mfn, order, size: 1 << order });
        }
        let c = &self.nodes[n];
        if mfn.0 + (1u64 << order) > c.base + c.frames {
            if mfn.0 + (1u64 << order) > self.end {
                return Err(HeapError::OutOfRange {
                    mfn: Mfn(mfn.0 + (1 << order) - 1),
                    first: Mfn(self.first),
                    end: Mfn(self.end),
                });
            }
            return Err(HeapError::CrossesNode { mfn, order });
        }
        Ok((n, (mfn.0 - c.base) as u32))
    }

    fn pick_rule(&self, req: &AllocRequest) -> Pick {
        match self.config.policy {
            Policy::XenCap2m if req.scrub && req.order > 9 => Pick::CleanOnly,
            Policy::Xen | Policy::XenCap2m => Pick::CleanFirst,
            Policy::Sync | Policy::Alloc | Policy::Scrubheap => Pick::SmallestFirst { prefer_dirty: !req.scrub },
        }
    }

    /// Allocates 2^order frames. If the chunk found holds dirty frames and the request
    /// needs scrubbed memory, they are scrubbed in place before the frames are handed over.
    pub fn alloc(&self, req: &AllocRequest) -> Result<Extent, HeapError> {
        if req.order > MAX_ORDER {
            return Err(HeapError::InvalidOrder { order: req.order });
        }
        let (start, only) = match req.node {
            NodePref::Any => {
                let best = (0..self.nodes.len())
                    .max_by_key(|&n| (self.nodes[n].free.load(Relaxed), core::cmp::Reverse(n)))
                    .unwrap_or(0);
                (best, false)
            }
            NodePref::Prefer(n) => (self.node(n).map(|_| n)?, false),
            NodePref::Exact(n) => (self.node(n).map(|_| n)?, true),
        };
        let pick = self.pick_rule(req);
        let (mut free, mut claimed) = (0, 0);
        let candidates = if only { &self.near[start][..1] } else { &self.near[start][..] };
        for &n in candidates {
            match self.try_node(n, req, pick) {
                Ok(ext) => return Ok(ext),
                Err((f, c)) => {
                    free += f;
                    claimed += c;
                }
            }
        }
        let where_ = if only { format!("node {start}") } else { format!("any of the {} nodes", self.nodes.len()) };
        Err(HeapError::OutOfMemory { order: req.order, where_, free, claimed })
    }

    /// One node's attempt: `Err((free, claimed by others))` when it cannot serve.
    fn try_node(&self, n: usize, req: &AllocRequest, pick: Pick) -> Result<Extent, (u64, u64)> {
        let cell = &self.nodes[n];
        let want = size(req.order);
        let mut st = cell.state.lock();
        let mut book = self.claims.lock();
        let (others_node, others_all) = book.claimed_by_others(req.owner, n);
        let total_free: u64 =
            self.nodes.iter().enumerate().map(|(i, c)| if i == n { st.free } else { c.free.load(Relaxed) }).sum();
        if st.free < others_node + want as u64 || total_free < others_all + want as u64 {
            return Err((st.free, core::cmp::min(st.free, core::cmp::max(others_node, others_all))));
        }
        let zones: &[Zone] = if req.movable { &[Zone::Movable, Zone::Normal] } else { &[Zone::Normal] };
        let Some((head, got)) = zones.iter().find_map(|&z| st.pick(z, req.order, pick)) else {
            return Err((st.free, others_node));
        };
        st.split_free(head, got, req.order);
        let dirty = if st.meta[head as usize].first_dirty() == NONE { 0 } else { st.dirty.count(head, want) };
        st.free -= want as u64;
        st.free_dirty -= dirty as u64;
        st.allocated += want as u64;
        let mut scrubbed = 0u64;
        if dirty > 0 {
            if req.scrub {
                scrubbed = self.scrub_runs(&mut st, head, want, u64::MAX);
            } else {
                st.dirty.clear(head, want);
            }
        }
        let mut slot = Slot::head(State::Allocated, req.order);
        slot.a = req.owner.0;
        slot.set_flag(F_MOVABLE, req.movable);
        st.meta[head as usize] = slot;
        book.retire(req.owner, n, want as u64);
        cell.publish(&st);
        drop(book);
        drop(st);
        if scrubbed > 0 {
            let bytes = scrubbed * self.config.frame_size;
            let mut acct = self.acct.lock();
            acct.scrubbed.in_place += bytes;
            *acct.in_place_by_owner.entry(req.owner).or_default() += bytes;
        }
        Ok(Extent { mfn: Mfn(cell.base + head as u64), order: req.order, node: n })
    }

    /// Zeroes the dirty frames of `[off, off+len)` in batches, clearing their bits, until
    /// `budget` frames are zeroed; returns the frames zeroed.
    fn scrub_runs(&self, st: &mut NodeState, off: u32, len: u32, budget: u64) -> u64 {
        let batch = self.config.scrub_batch as u32;
        let mut done = 0u64;
        let mut from = 0;
        while done < budget {
            let max = core::cmp::min(batch as u64, budget - done) as u32;
            let Some((s, l)) = st.dirty.next_run(off, len, from, max) else { break };
            self.mem.zero(Mfn(st.base + (off + s) as u64), l as u64);
            st.dirty.clear(off + s, l);
            done += l as u64;
            from = s + l;
        }
        done
    }

    /// Frees `[mfn, 2^order)`, which `owner` must hold (all of it, unpinned): a whole
    /// allocation or any aligned part of one. The frames become dirty (scrubbed at once
    /// under the `sync` policy) and merge with their free buddies.
    pub fn free(&self, mfn: Mfn, order: u8, owner: DomId) -> Result<(), HeapError> {
        let (n, off) = self.locate(mfn, order)?;
        let cell = &self.nodes[n];
        let mut st = cell.state.lock();
        Self::check_held(&st, off, order, owner)?;
        let (h, o) = st.chunk_of(off);
        if o > order {
            st.split_held(h, o, off, order);
        }
        let sync = self.config.policy == Policy::Sync;
        let end = off + size(order);
        let mut pos = off;
        let mut zeroed = 0u64;
        while pos < end {
            let (h, o) = st.chunk_of(pos);
            debug_assert_eq!(h, pos);
            st.meta[h as usize] = Slot::default();
            st.allocated -= size(o) as u64;
            if sync {
                self.mem.zero(Mfn(st.base + h as u64), size(o) as u64);
                zeroed += size(o) as u64;
            }
            st.release(h, o, sync);
            pos += size(o);
        }
        cell.publish(&st);
        drop(st);
        if zeroed > 0 {
            self.acct.lock().scrubbed.sync += zeroed * self.config.frame_size;
        }
        Ok(())
    }

    /// Checks that `owner` holds every frame of `[off, 2^order)`, unpinned.
    fn check_held(st: &NodeState, off: u32, order: u8, owner: DomId) -> Result<(), HeapError> {
        let end = off + size(order);
        let mut pos = off;
        let abs = |o: u32| Mfn(st.base + o as u64);
        while pos < end {
            let (h, o) = st.chunk_of(pos);
            let s = st.meta[h as usize];
            let beyond = HeapError::OrderTooLarge { mfn: abs(off), order, owner, beyond: abs(pos) };
            if s.state() != State::Allocated {
                return Err(if pos == off { HeapError::NotAllocated { mfn: abs(off) } } else { beyond });
            }
            if s.a != owner.0 {
                return Err(if pos == off {
                    HeapError::WrongOwner { mfn: abs(off), owner, actual: DomId(s.a) }
                } else {
                    beyond
                });
            }
            if s.b > 0 {
                return Err(HeapError::Pinned { mfn: abs(h), owner });
            }
            pos = h + size(o);
        }
        Ok(())
    }

    /// What an idle CPU of `node` calls: scrub up to `budget` dirty frames of the nodes it
    /// serves (largest dirty chunks first). Returns the frames scrubbed; 0 means nothing
    /// was dirty (or the policy does no background scrubbing).
    pub fn scrub_step(&self, node: usize, budget: u64) -> Result<u64, HeapError> {
        self.node(node)?;
        if !self.config.policy.background_scrub() {
            return Ok(0);
        }
        let mut done = 0;
        for &m in &self.served[node] {
            let cell = &self.nodes[m];
            let mut st = cell.state.lock();
            while done < budget {
                let Some(head) = Self::largest_dirty(&st) else { break };
                st.unlink_free(head);
                let s = st.meta[head as usize];
                let (o, fd) = (s.order(), s.first_dirty());
                let len = size(o);
                let z = self.scrub_runs(&mut st, head, len, budget - done);
                st.free_dirty -= z;
                done += z;
                let nfd = st.dirty.first_set(head + fd, len - fd).map_or(NONE, |r| r + fd);
                st.insert_free(head, o, nfd);
            }
            cell.publish(&st);
        }
        if done > 0 {
            self.acct.lock().scrubbed.background += done * self.config.frame_size;
        }
        Ok(done)
    }

    fn largest_dirty(st: &NodeState) -> Option<u32> {
        [Zone::Normal, Zone::Movable]
            .into_iter()
            .filter_map(|z| {
                let m = st.nonempty_mask(z, true);
                (m != 0).then(|| (31 - m.leading_zeros(), z))
            })
            .max()
            .map(|(o, z)| st.list_head(z, true, o as u8))
    }

    /// Installs `dom`'s claim set, replacing any claims it had: all entries or none.
    /// Node entries reserve free memory on that node, the global entry anywhere.
    pub fn claim_set(&self, dom: DomId, set: &[Claim]) -> Result<(), HeapError> {
        let n = self.nodes.len();
        let mut new = DomClaims { global: 0, nodes: vec![0; n] };
        for c in set {
            match c.target {
                ClaimTarget::Global => new.global += c.frames,
                ClaimTarget::Node(i) => {
                    self.node(i)?;
                    new.nodes[i] += c.frames;
                }
            }
        }
        let mut book = self.claims.lock();
        let old = book.doms.get(&dom).cloned().unwrap_or(DomClaims { global: 0, nodes: vec![0; n] });
        let mut total_free = 0;
        for i in 0..n {
            let free = self.nodes[i].free.load(Relaxed);
            total_free += free;
            let available = free.saturating_sub(book.node_total[i] - old.nodes[i]);
            if new.nodes[i] > available {
                return Err(HeapError::ClaimExceedsFree {
                    requested: new.nodes[i],
                    where_: format!("node {i}"),
                    available,
                });
            }
        }
        let available = total_free.saturating_sub(book.outstanding() - old.total());
        if new.total() > available {
            return Err(HeapError::ClaimExceedsFree {
                requested: new.total(),
                where_: "the whole heap".into(),
                available,
            });
        }
        book.install(dom, new);
        Ok(())
    }

    /// Drops all of `dom`'s outstanding claims.
    pub fn claim_cancel(&self, dom: DomId) {
        self.claims.lock().cancel(dom);
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

    /// Frame counts of one node, read without taking its lock.
    pub fn node_stats(&self, node: usize) -> Result<NodeStats, HeapError> {
        let c = self.node(node)?;
        let free = c.free.load(Relaxed);
        let free_dirty = c.free_dirty.load(Relaxed);
        Ok(NodeStats {
            free_clean: free - free_dirty,
            free_dirty,
            allocated: c.allocated.load(Relaxed),
            offline: c.offline.load(Relaxed),
            scrubbing: c.scrubbing.load(Relaxed),
            claimed: self.claims.lock().node_total[node],
        })
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
        }
        s.claimed = self.claims.lock().outstanding();
        s.scrubbed = self.acct.lock().scrubbed;
        s
    }

    /// Bytes scrubbed in place for allocations by `owner`.
    pub fn in_place_bytes(&self, owner: DomId) -> u64 {
        self.acct.lock().in_place_by_owner.get(&owner).copied().unwrap_or(0)
    }

    /// The chunk containing `mfn`.
    pub fn chunk_at(&self, mfn: Mfn) -> Result<ChunkInfo, HeapError> {
        let n = self.node_of(mfn)?;
        let cell = &self.nodes[n];
        let st = cell.state.lock();
        let (h, o) = st.chunk_of((mfn.0 - cell.base) as u32);
        let s = st.meta[h as usize];
        let state = match s.state() {
            State::Free => ChunkState::Free { dirty_frames: st.dirty.count(h, size(o)) as u64 },
            State::Allocated => ChunkState::Allocated { owner: DomId(s.a), pins: s.b, movable: s.flags(F_MOVABLE) },
            State::Scrubbing => ChunkState::Scrubbing,
            State::Isolated => ChunkState::Isolated,
            State::Offline => ChunkState::Offline,
            State::Broken | State::None => ChunkState::Broken,
        };
        Ok(ChunkInfo {
            extent: Extent { mfn: Mfn(cell.base + h as u64), order: o, node: n },
            zone: st.zone_of(h),
            state,
        })
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
        let st = self.node(n)?.state.lock();
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
