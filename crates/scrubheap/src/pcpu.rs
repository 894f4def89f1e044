//! The per-CPU fast path: [`Heap::get`] and [`Heap::put`] serve orders 0 and 9 from
//! small per-CPU reserves, so the node lock is taken once per block of frames, not once
//! per operation.
//!
//! # Blocks
//! A CPU's reserve is a *block*: a naturally aligned free chunk of `2^shift` chunks of the
//! fast order (64 frames for order 0, 16 order-9 chunks for order 9), taken off a node's
//! free lists under the node lock in one go (clean first; through the claims gate for
//! nobody, so others' claims are respected) and recorded in the node's metadata as one
//! allocated chunk of [`RESERVE_OWNER`]. The block itself (which chunks are free, which
//! hold old bytes, who holds each loaned chunk) lives here, behind its own lock; only the
//! CPU whose *current* block it is allocates from it, any CPU may put chunks back into it.
//!
//! - `get` locks its CPU's slot and its current block: a clean free chunk first (a dirty
//!   one is zeroed in place before it is returned, unless the request says `noscrub`).
//!   An exhausted block is detached; a new one is taken under the node lock.
//! - `put` finds the block from the frame number (a table per node and fast order,
//!   indexed by block), checks the owner, and marks the chunk free and dirty (its owner's
//!   bytes are in it). A detached block whose chunks are all back returns to the node.
//! - Anything else that touches a block's frames (an ordinary free of part of a chunk,
//!   pin, offline, `alloc_at`, `mark_broken`) first *settles* the block:
//!   loaned chunks become ordinary allocations of their owners, free chunks go back to the
//!   node's free lists (dirty ones marked dirty). [`Heap::drain`] settles every block of a
//!   CPU or of the heap; `claim_set` and an allocation that would otherwise run out of
//!   memory drain all of them first.
//!
//! A domain that may hold claims ([`Heap::may_hold_claims`]) always takes the ordinary
//! path, through the claims gate; so do movable and sealed requests and other orders.
//!
//! Lock order: CPU slot, then node, then block; nobody holds two blocks, and a put
//! releases its block before it takes the node lock to return the block.

use crate::chunk::{State, NONE};
use crate::error::{HeapError, InvariantViolation};
use crate::heap::{AllocRequest, Extent, Heap, NodeGuard, NodePref};
use crate::memory::FrameMemory;
use crate::node::{NodeState, Pick};
use crate::reserve::{all_chunks, block_order, kind_of, Block, CpuCell, CpuSlot, KINDS, MAX_SPARE};
use crate::types::{DomId, Mfn, Zone};
use alloc::boxed::Box;
use alloc::format;
use alloc::vec::Vec;
use core::sync::atomic::Ordering::Relaxed;

pub use crate::reserve::{FAST_ORDERS, RESERVE_OWNER};
pub use crate::types::MAX_CPUS;

impl<M: FrameMemory> Heap<M> {
    /// Number of CPUs the fast path has a reserve for ([`crate::HeapConfig::cpus`]).
    pub fn cpus(&self) -> usize {
        self.pcpu().cpus.len()
    }

    /// Bytes of metadata the fast path keeps (both counted in [`Heap::metadata_bytes`]):
    /// its block tables, fixed by the heap's size, and its live blocks (each one's free
    /// and dirty masks and the owner of each loaned chunk): `(tables, blocks)`. Divide by
    /// the frames for bytes per frame.
    pub fn reserve_metadata_bytes(&self) -> (u64, u64) {
        let (tables, blocks) = self.pcpu().bytes();
        debug_assert!(tables > 0 || self.config().total_frames() == 0);
        (tables, blocks)
    }

    fn cpu_cell(&self, cpu: usize) -> Result<&CpuCell, HeapError> {
        self.pcpu().cpus.get(cpu).ok_or(HeapError::NoSuchCpu { cpu, cpus: self.pcpu().cpus.len() })
    }

    /// The fast order's kind if `req` may take the fast path: orders 0 and 9, unmovable,
    /// unsealed, for an owner the claims gate says holds no claim.
    fn fast_kind(&self, req: &AllocRequest) -> Option<usize> {
        let k = kind_of(req.order)?;
        let plain = !req.movable && !req.sealed && req.owner != RESERVE_OWNER;
        (plain && !self.may_hold_claims(req.owner)).then_some(k)
    }

    /// Allocates 2^order frames for `req.owner` on behalf of CPU `cpu` (`0..cpus()`), as
    /// [`Heap::alloc`] does, from the CPU's reserve when it can (orders 0 and 9, unmovable,
    /// unsealed, an owner without claims: see the module documentation); a dirty chunk is
    /// zeroed in place first unless the request says `noscrub`, and only if it is no larger
    /// than one `scrub_batch` (an order-9 chunk is 512 frames, twice the default batch of
    /// 256: with the default, a reserve holding only dirty order-9 chunks is passed over).
    /// Any other request, and any the reserve cannot serve, goes the ordinary way
    /// ([`Heap::alloc`], which refuses with `HeapError::NeedsScrubTicket` rather than zero
    /// more than a batch in place). Give the frames
    /// back with [`Heap::put`] (or [`Heap::free`]).
    ///
    /// ```
    /// use scrubheap::{AllocRequest, DomId, Heap, HeapConfig, NullMemory};
    /// let heap = Heap::new(HeapConfig::uniform(1, 1 << 14).with_cpus(2), NullMemory).unwrap();
    /// let e = heap.get(1, &AllocRequest::new(0, DomId(7))).unwrap();
    /// heap.put(1, e.mfn, 0, DomId(7)).unwrap();
    /// assert_eq!(heap.stats().reserved, 64, "one block of 64 frames stays in CPU 1's reserve");
    /// heap.drain(None).unwrap();
    /// assert_eq!(heap.stats().reserved, 0);
    /// heap.check_invariants().unwrap();
    /// ```
    pub fn get(&self, cpu: usize, req: &AllocRequest) -> Result<Extent, HeapError> {
        let cell = self.cpu_cell(cpu)?;
        let Some(k) = self.fast_kind(req) else { return self.alloc(req) };
        let want = match req.node {
            NodePref::Prefer(n) | NodePref::Exact(n) => {
                self.node(n)?;
                Some(n)
            }
            NodePref::Any => None,
        };
        let mut slot = cell.slot.lock();
        let mut n = want.unwrap_or(slot.any_node);
        for _ in 0..2 {
            if let Some(idx) = slot.current[n][k] {
                match self.take_from_block(cpu, &mut slot, n, k, idx, req) {
                    Take::Got(e) => return Ok(e),
                    // Zeroing a dirty chunk larger than a batch in place is not `get`'s to
                    // do: the ordinary path finds a clean one or refuses (a ticket's job).
                    Take::TooDirty => break,
                    Take::Gone => {}
                }
            }
            if want.is_none() && slot.current[n][k].is_none() {
                n = (0..self.node_count()).max_by_key(|&m| (self.available(m), core::cmp::Reverse(m))).unwrap_or(0);
                slot.any_node = n;
            }
            if slot.current[n][k].is_none() && !self.refill(cpu, &mut slot, n, k) {
                break;
            }
        }
        drop(slot);
        self.alloc(req)
    }

    /// Takes one chunk of `slot`'s current block `idx` of kind `k` on node `n`:
    /// [`Take::Gone`] (and the slot forgets the block) when the block is no longer this
    /// CPU's, [`Take::TooDirty`] (nothing changed) when a request that needs scrubbed
    /// memory would have to zero more than one `scrub_batch` in place.
    fn take_from_block(
        &self,
        cpu: usize,
        slot: &mut CpuSlot,
        n: usize,
        k: usize,
        idx: u32,
        req: &AllocRequest,
    ) -> Take {
        let nr = &self.pcpu().nodes[n];
        let mut g = nr.tables[k][idx as usize].lock();
        let Some(b) = g.as_mut().filter(|b| b.cpu == Some(cpu as u16)) else {
            slot.current[n][k] = None;
            return Take::Gone;
        };
        debug_assert!(b.free != 0, "a current block has a free chunk");
        let clean = b.free & !b.dirty;
        let dirty = b.free & b.dirty;
        if req.scrub && clean == 0 && (1u64 << FAST_ORDERS[k].0) > self.config().scrub_batch {
            return Take::TooDirty;
        }
        let pick = match (req.scrub, clean != 0, dirty != 0) {
            (true, true, _) => clean,
            (false, _, true) => dirty,
            _ => b.free,
        };
        let i = pick.trailing_zeros();
        let bit = 1u64 << i;
        let was_dirty = b.dirty & bit != 0;
        b.free &= !bit;
        b.dirty &= !bit;
        b.owners[i as usize] = req.owner.0;
        if b.free == 0 {
            b.cpu = None;
            slot.current[n][k] = None;
        }
        let order = FAST_ORDERS[k].0;
        let frames = 1u64 << order;
        let counters = &self.pcpu().cpus[cpu].nodes[n];
        counters.lent.store(counters.lent.load(Relaxed).wrapping_add(frames), Relaxed);
        drop(g);
        let mfn = Mfn(nr.region(k, idx) + ((i as u64) << order));
        if was_dirty && req.scrub {
            // The chunk is the owner's already (its bit is taken): zeroed outside any lock
            // but the CPU's own slot.
            self.memory().zero(mfn, frames);
            counters.in_place.store(counters.in_place.load(Relaxed) + frames, Relaxed);
            if slot.in_place_last.0 != req.owner {
                let (o, f) = core::mem::replace(&mut slot.in_place_last, (req.owner, 0));
                if f > 0 {
                    *slot.in_place_by_owner.entry(o).or_default() += f;
                }
            }
            slot.in_place_last.1 += frames;
        }
        debug_assert!(!(was_dirty && req.scrub) || frames <= self.config().scrub_batch);
        Take::Got(Extent { mfn, order, node: n })
    }

    /// Takes a new block of kind `k` from node `n` for `cpu` under the node lock, through
    /// the claims gate for nobody. False if the node has no free chunk of the block order
    /// in its Normal zone that others' claims leave.
    fn refill(&self, cpu: usize, slot: &mut CpuSlot, n: usize, k: usize) -> bool {
        let bo = block_order(k);
        let len = 1u32 << bo;
        let mut st = self.lock_node(n);
        let (room, _) = self.gate(None, n, st.available());
        if room.refusal(n, len as u64).is_some() {
            return false;
        }
        let picked = st
            .pick(Zone::Normal, bo, Pick::CleanOnly)
            .or_else(|| st.pick(Zone::Normal, bo, Pick::SmallestFirst { prefer_dirty: false }));
        let Some((head, got)) = picked else { return false };
        st.split_free(head, got, bo);
        let dirty = Self::take_dirt(&mut st, head, k);
        st.free -= len as u64;
        st.allocated += len as u64;
        st.forget_free(head);
        st.set_allocated(head, bo, RESERVE_OWNER, false, false);
        let nr = &self.pcpu().nodes[n];
        let idx = nr.index(k, st.base + head as u64);
        let mut live = nr.live.lock();
        let mut block = live
            .spare
            .pop()
            .unwrap_or_else(|| Box::new(Block { free: 0, dirty: 0, scrubbing: 0, cpu: None, owners: [0; 64] }));
        (block.free, block.dirty, block.scrubbing, block.cpu) = (all_chunks(k), dirty, 0, Some(cpu as u16));
        let fresh = live.set.insert((k, idx));
        drop(live);
        debug_assert!(fresh, "a block region taken while live");
        *nr.tables[k][idx as usize].lock() = Some(block);
        nr.frames.fetch_add(len as u64, Relaxed);
        slot.current[n][k] = Some(idx);
        debug_assert_eq!(st.head(head).order, bo);
        // The guard publishes the node's counters as it drops.
        true
    }

    /// Moves the dirty bits of the block at `head` (of kind `k`, off the free lists) from
    /// the node's bitmap to a per-chunk mask, and out of the node's dirty count.
    fn take_dirt(st: &mut NodeState, head: u32, k: usize) -> u64 {
        if st.first_dirty(head) == NONE {
            return 0;
        }
        let (o, shift) = FAST_ORDERS[k];
        let mut mask = 0u64;
        for i in 0..1u32 << shift {
            if st.dirty.count(head + (i << o), 1 << o) > 0 {
                mask |= 1 << i;
            }
        }
        let len = 1u32 << block_order(k);
        st.free_dirty -= st.dirty.count(head, len) as u64;
        st.dirty.clear_all(head, len);
        debug_assert!(mask != 0, "a dirty hint means a dirty chunk");
        mask
    }

    /// Gives back 2^order frames at `mfn` that `owner` holds, on behalf of CPU `cpu`:
    /// into the reserve block they came from if they are a whole fast-path chunk (marked
    /// dirty: the owner's bytes are in them), the ordinary way ([`Heap::free`]) otherwise.
    /// Refused, nothing changed, as `free` refuses: not allocated, wrong owner, and so on.
    pub fn put(&self, cpu: usize, mfn: Mfn, order: u8, owner: DomId) -> Result<(), HeapError> {
        self.cpu_cell(cpu)?;
        let (n, off) = self.locate(mfn, order)?;
        match self.put_reserved(cpu, n, off, order, owner, false) {
            Some(r) => r,
            None => self.free_located(n, off, order, owner, false),
        }
    }

    /// The fast path's part of a free: `Some` if `[off, 2^order)` of node `n` is a whole
    /// loaned chunk of a block (then done, or refused); `None` if no block holds the
    /// frames, having settled any block they were in, for the ordinary path to go on.
    pub(crate) fn put_reserved(
        &self,
        cpu: usize,
        n: usize,
        off: u32,
        order: u8,
        owner: DomId,
        sealed: bool,
    ) -> Option<Result<(), HeapError>> {
        let nr = &self.pcpu().nodes[n];
        if nr.frames.load(Relaxed) == 0 {
            return None;
        }
        let abs = self.cell(n).base + off as u64;
        let whole = kind_of(order).filter(|_| !sealed).and_then(|k| {
            let idx = nr.index(k, abs);
            let g = nr.tables[k][idx as usize].lock();
            g.is_some().then_some((k, idx, g))
        });
        let Some((k, idx, mut g)) = whole else {
            // Not a whole chunk of a live block of its order: the ordinary path, once any
            // block the frames are in is settled.
            if self.blocks_touch(n, abs, abs + (1 << order)) {
                self.settle(n, off, 1 << order);
            }
            return None;
        };
        let b = g.as_mut().expect("checked live under this lock");
        let i = ((abs - nr.region(k, idx)) >> order) as usize;
        let bit = 1u64 << i;
        if b.free & bit != 0 {
            return Some(Err(HeapError::NotAllocated { mfn: Mfn(abs) }));
        }
        if b.owners[i] != owner.0 {
            return Some(Err(HeapError::WrongOwner { mfn: Mfn(abs), owner, actual: DomId(b.owners[i]) }));
        }
        b.free |= bit;
        b.dirty |= bit;
        let idle = b.cpu.is_none() && b.free == all_chunks(k);
        let counters = &self.pcpu().cpus[cpu].nodes[n];
        counters.returned.fetch_add(1 << order, Relaxed);
        drop(g);
        if idle {
            let mut st = self.lock_node(n);
            self.dissolve(&mut st, n, k, idx, true);
        }
        Some(Ok(()))
    }

    /// Whether a live block of node `n` holds a frame of `[lo, hi)` (absolute): the table
    /// entries for a range within a block's size, the live list for a larger one.
    fn blocks_touch(&self, n: usize, lo: u64, hi: u64) -> bool {
        let nr = &self.pcpu().nodes[n];
        (0..KINDS).any(|k| {
            if hi - lo <= 1 << block_order(k) {
                (nr.index(k, lo)..=nr.index(k, hi - 1)).any(|i| nr.tables[k][i as usize].lock().is_some())
            } else {
                nr.live.lock().set.iter().any(|&(kk, idx)| {
                    let r = nr.region(kk, idx);
                    kk == k && r < hi && lo < r + (1u64 << block_order(k))
                })
            }
        })
    }

    /// Settles every block of node `n` that holds a frame of `[off, off + len)`: its loans
    /// become ordinary allocations, its free chunks go back to the free lists. Returns
    /// the frames that went back.
    pub(crate) fn settle(&self, n: usize, off: u32, len: u64) -> u64 {
        let nr = &self.pcpu().nodes[n];
        if nr.frames.load(Relaxed) == 0 {
            return 0;
        }
        let lo = self.cell(n).base + off as u64;
        let hi = lo + len;
        let mut st = self.lock_node(n);
        let hit: Vec<(usize, u32)> = nr
            .live
            .lock()
            .set
            .iter()
            .copied()
            .filter(|&(k, idx)| {
                let r = nr.region(k, idx);
                r < hi && lo < r + (1u64 << block_order(k))
            })
            .collect();
        hit.into_iter().map(|(k, idx)| self.dissolve(&mut st, n, k, idx, false)).sum()
    }

    /// Settles the reserve block whose head is `h` on node `n` (whose lock `st` is), which
    /// an offline's walk met: a block refilled into a CPU's reserve after the offline
    /// started would otherwise look like an unmovable allocation. `None` if no live block
    /// starts at `h`; `Some(false)` if it is still there (its CPU is zeroing part of it:
    /// look again later); `Some(true)` once settled.
    pub(crate) fn settle_block_at(&self, st: &mut NodeGuard<'_>, n: usize, h: u32) -> Option<bool> {
        let head = st.head(h);
        let k = (0..KINDS).find(|&k| block_order(k) == head.order)?;
        let (nr, abs) = (&self.pcpu().nodes[n], st.base + h as u64);
        let idx = nr.index(k, abs);
        if head.owner != RESERVE_OWNER || nr.region(k, idx) != abs || nr.tables[k][idx as usize].lock().is_none() {
            return None;
        }
        self.dissolve(st, n, k, idx, false);
        let gone = st.state(h) != State::Allocated || st.head(h).owner != RESERVE_OWNER;
        debug_assert!(gone || st.head(h).order == block_order(k));
        Some(gone)
    }

    /// The chunk of a live block holding `mfn` (on node `n`), for [`Heap::chunk_at`]: a
    /// loaned chunk as its owner's allocation, a free one as the reserve's.
    pub(crate) fn reserve_chunk_at(&self, n: usize, mfn: Mfn) -> Option<crate::heap::ChunkInfo> {
        let nr = &self.pcpu().nodes[n];
        if nr.frames.load(Relaxed) == 0 {
            return None;
        }
        (0..KINDS).find_map(|k| {
            let idx = nr.index(k, mfn.0);
            let g = nr.tables[k][idx as usize].lock();
            let b = g.as_ref()?;
            let o = FAST_ORDERS[k].0;
            let i = ((mfn.0 - nr.region(k, idx)) >> o) as usize;
            let owner = if b.free & (1 << i) != 0 { RESERVE_OWNER } else { DomId(b.owners[i]) };
            let state = crate::heap::ChunkState::Allocated { owner, pins: 0, movable: false, sealed: false };
            let extent = Extent { mfn: Mfn(mfn.0 >> o << o), order: o, node: n };
            Some(crate::heap::ChunkInfo { extent, zone: Zone::Normal, state })
        })
    }

    /// Returns the frames of CPU `cpu`'s reserve (`None`: of every CPU, and every block
    /// still lent out) to the nodes' free lists: loaned chunks of a settled block become
    /// ordinary allocations of their owners. Returns the frames that went back. A block
    /// whose CPU is inside [`Heap::scrub_reserve`] zeroing some of its chunks right now is
    /// left as it is (for at most that call).
    pub fn drain(&self, cpu: Option<usize>) -> Result<u64, HeapError> {
        let Some(cpu) = cpu else {
            return Ok((0..self.node_count()).map(|n| self.settle(n, 0, self.cell(n).frames)).sum());
        };
        let cell = self.cpu_cell(cpu)?;
        let mut slot = cell.slot.lock();
        let mut freed = 0;
        for n in 0..self.node_count() {
            for k in 0..KINDS {
                if let Some(idx) = slot.current[n][k].take() {
                    let r = self.pcpu().nodes[n].region(k, idx);
                    freed += self.settle(n, (r - self.cell(n).base) as u32, 1);
                }
            }
        }
        Ok(freed)
    }

    /// Drains every reserve if any holds free frames (an allocation about to fail, a claim
    /// being set); returns the frames that went back.
    pub(crate) fn drain_reserves(&self) -> u64 {
        if self.pcpu().nodes.iter().all(|nr| nr.frames.load(Relaxed) == 0) {
            return 0;
        }
        self.drain(None).expect("draining every CPU names no CPU")
    }

    /// Settles block `idx` of kind `k` on node `n` (whose lock `st` is): every free chunk
    /// back to the free lists (dirty ones marked dirty in the node's bitmap), every loaned
    /// one an ordinary allocation of its owner. With `only_idle`, only if the block is
    /// detached and all free. Returns the frames that went back.
    fn dissolve(&self, st: &mut NodeGuard<'_>, n: usize, k: usize, idx: u32, only_idle: bool) -> u64 {
        let nr = &self.pcpu().nodes[n];
        let mut g = nr.tables[k][idx as usize].lock();
        if only_idle && !g.as_ref().is_some_and(|b| b.cpu.is_none() && b.free == all_chunks(k)) {
            return 0;
        }
        if g.as_ref().is_some_and(|b| b.scrubbing != 0) {
            // Its CPU is zeroing some of its free chunks outside the lock: left for now.
            return 0;
        }
        let Some(b) = g.take() else { return 0 };
        drop(g);
        let head = (nr.region(k, idx) - st.base) as u32;
        let h = st.head(head);
        debug_assert!(h.state == State::Allocated && h.order == block_order(k) && h.owner == RESERVE_OWNER);
        let (loaned, freed) = if b.free == all_chunks(k) {
            Self::return_whole(st, head, k, b.dirty)
        } else {
            Self::return_parts(st, head, k, &b)
        };
        let mut live = nr.live.lock();
        let was = live.set.remove(&(k, idx));
        if live.spare.len() < MAX_SPARE {
            live.spare.push(b);
        }
        drop(live);
        debug_assert!(was, "a live block is on the live list");
        nr.frames.fetch_sub(1 << block_order(k), Relaxed);
        nr.settled.fetch_add(loaned, Relaxed);
        debug_assert_eq!(freed + loaned, 1 << block_order(k));
        freed
    }

    /// A block whose chunks are all free goes back as one chunk (one merge, not one per
    /// chunk), its dirty chunks marked in the node's bitmap: `(0 loaned, frames freed)`.
    fn return_whole(st: &mut NodeState, head: u32, k: usize, dirty: u64) -> (u64, u64) {
        let (o, _) = FAST_ORDERS[k];
        let len = 1u32 << block_order(k);
        if dirty == all_chunks(k) {
            st.dirty.set_all(head, len);
        } else {
            let mut bits = dirty;
            while bits != 0 {
                st.dirty.set_all(head + (bits.trailing_zeros() << o), 1 << o);
                bits &= bits - 1;
            }
        }
        debug_assert_eq!(st.dirty.count(head, len), dirty.count_ones() << o, "each dirty chunk marked whole");
        st.clear_head(head);
        st.allocated -= len as u64;
        st.put_back(head, block_order(k));
        (0, len as u64)
    }

    /// A block with loans: each loaned chunk becomes its owner's allocation, each free one
    /// goes back to the free lists: `(frames loaned, frames freed)`.
    fn return_parts(st: &mut NodeState, head: u32, k: usize, b: &Block) -> (u64, u64) {
        let (o, shift) = FAST_ORDERS[k];
        let mut loaned = 0u64;
        // The block's head goes; each loan gets its own head and record.
        st.clear_head(head);
        for i in (0..1u32 << shift).filter(|i| b.free & (1 << i) == 0) {
            st.set_allocated(head + (i << o), o, DomId(b.owners[i as usize]), false, false);
            loaned += 1 << o;
        }
        let mut freed = 0u64;
        for i in (0..1u32 << shift).filter(|i| b.free & (1 << i) != 0) {
            let h = head + (i << o);
            if b.dirty & (1 << i) != 0 {
                st.dirty.set_all(h, 1 << o);
            }
            st.allocated -= 1 << o;
            st.put_back(h, o);
            freed += 1 << o;
        }
        debug_assert!(loaned > 0, "a block with no loan goes back whole");
        (loaned, freed)
    }

    /// Zeroes the dirty free chunks of CPU `cpu`'s current blocks, at most `budget`
    /// frames (what an idle CPU does for its own reserve, as [`Heap::scrub_step`] does for
    /// the free lists): counted as background scrubbing. Returns the frames zeroed.
    pub fn scrub_reserve(&self, cpu: usize, budget: u64) -> Result<u64, HeapError> {
        let cell = self.cpu_cell(cpu)?;
        let slot = cell.slot.lock();
        let mut done = 0u64;
        for n in 0..self.node_count() {
            for k in 0..KINDS {
                let Some(idx) = slot.current[n][k] else { continue };
                done += self.scrub_block(cpu, n, k, idx, budget - done);
            }
        }
        Ok(done)
    }

    /// Zeroes up to `budget` frames of dirty free chunks of a CPU's current block; the
    /// chunks are taken out of the free mask meanwhile, so no get hands them out.
    fn scrub_block(&self, cpu: usize, n: usize, k: usize, idx: u32, budget: u64) -> u64 {
        let nr = &self.pcpu().nodes[n];
        let (o, _) = FAST_ORDERS[k];
        let fit = (budget >> o).min(64) as u32;
        let mut g = nr.tables[k][idx as usize].lock();
        let Some(b) = g.as_mut().filter(|b| b.cpu == Some(cpu as u16)) else { return 0 };
        let mut take = b.free & b.dirty;
        while take.count_ones() > fit {
            take &= take - 1;
        }
        if take == 0 {
            return 0;
        }
        // The block stays current while its chunks are out: only this CPU gets from it,
        // and it holds its slot until they are back.
        b.free &= !take;
        b.scrubbing |= take;
        drop(g);
        let base = nr.region(k, idx);
        let mut bits = take;
        while bits != 0 {
            let i = bits.trailing_zeros() as u64;
            self.memory().zero(Mfn(base + (i << o)), 1 << o);
            bits &= bits - 1;
        }
        let mut g = nr.tables[k][idx as usize].lock();
        let b = g.as_mut().expect("a block with chunks out for scrubbing is never settled");
        b.free |= take;
        b.dirty &= !take;
        b.scrubbing &= !take;
        drop(g);
        let frames = (take.count_ones() as u64) << o;
        self.account(n, crate::heap::Source::Background, frames);
        frames
    }

    /// The fast path's invariants on node `n` (whose lock the caller holds): the live list
    /// and the tables agree, every live block is a reserve-owned allocated chunk of its
    /// block order, dirty chunks are free, and the reserved count matches the blocks.
    pub(crate) fn check_reserves(&self, n: usize, st: &NodeState) -> Result<(), InvariantViolation> {
        let nr = &self.pcpu().nodes[n];
        let fail = |m: alloc::string::String| Err(InvariantViolation(format!("node {n}: reserve: {m}")));
        let live: Vec<(usize, u32)> = nr.live.lock().set.iter().copied().collect();
        let guards: Vec<_> = live.iter().map(|&(k, idx)| nr.tables[k][idx as usize].lock()).collect();
        let (mut frames, mut free) = (0u64, 0u64);
        for (&(k, idx), g) in live.iter().zip(&guards) {
            let Some(b) = g.as_ref() else { return fail(format!("live block {k}/{idx} has no entry")) };
            let head = (nr.region(k, idx) - st.base) as u32;
            let Some(h) = st.head_at(head) else { return fail(format!("block at {head} starts no chunk")) };
            if h.state != State::Allocated || h.order != block_order(k) || h.owner != RESERVE_OWNER {
                return fail(format!("block at {head} is {:?} order {} of {}", h.state, h.order, h.owner));
            }
            let idle = b.free | b.scrubbing;
            if b.dirty & !idle != 0 || idle & !all_chunks(k) != 0 || b.free & b.scrubbing != 0 {
                let (d, f, s) = (b.dirty, b.free, b.scrubbing);
                return fail(format!("block at {head}: dirty {d:#x}, free {f:#x}, scrubbing {s:#x}"));
            }
            let loaned = all_chunks(k) & !idle;
            if (0..64).any(|i| loaned & (1 << i) != 0 && b.owners[i] == RESERVE_OWNER.0) {
                return fail(format!("block at {head} lends a chunk to the reserve itself"));
            }
            frames += 1 << block_order(k);
            free += (idle.count_ones() as u64) << FAST_ORDERS[k].0;
        }
        let listed = &live;
        for (k, table) in nr.tables.iter().enumerate() {
            for (i, e) in table.iter().enumerate() {
                if listed.binary_search(&(k, i as u32)).is_err() && e.lock().is_some() {
                    return fail(format!("block {k}/{i} is live but not on the live list"));
                }
            }
        }
        if frames != nr.frames.load(Relaxed) || free != self.pcpu().reserved(n) {
            return fail(format!(
                "counters say {} frames in blocks, {} free; the blocks hold {frames}, {free} free",
                nr.frames.load(Relaxed),
                self.pcpu().reserved(n)
            ));
        }
        Ok(())
    }
}

/// What [`Heap::take_from_block`] found.
enum Take {
    /// A chunk for the request.
    Got(Extent),
    /// The block is no longer the CPU's.
    Gone,
    /// Only dirty chunks larger than a batch: the request needs a scrub ticket.
    TooDirty,
}
