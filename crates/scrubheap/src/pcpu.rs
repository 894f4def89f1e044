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
//! hold old bytes, who holds each loaned chunk: one owner for the block, or a table once
//! it lends to two) lives here, in a one-cache-line record behind its own lock; only the
//! CPU whose *current* block it is allocates from it, any CPU may put chunks back into it.
//! A node's map (4 bytes per block region of each fast order) names the record of each
//! live block; records come in segments allocated on first use (see `reserve.rs`).
//!
//! - `get` locks its CPU's slot and its current block: a clean free chunk first (a dirty
//!   one is zeroed in place before it is returned, unless the request says `noscrub`).
//!   An exhausted block is detached; a new one is the CPU's spare, a parked block or a
//!   chunk of the node (see `refill`). A CPU whose order-0 block ran out takes a second
//!   clean block in the same hold of the node lock, its *spare* (current in all but name:
//!   reserved, never lent until it becomes current, settled like any live block).
//! - `put` finds the block through the map, checks the owner, and marks the chunk free
//!   and dirty (its owner's bytes are in it), under the block's lock only. A detached block
//!   whose chunks are all back is *parked*: it stays a reserve block, on its node's parked
//!   list, for the next refill, so a put never merges a block into the free lists itself.
//!   Background scrubbers return parked blocks to the free lists at the start of each
//!   `scrub_step` (a bounded number per node), where they scrub them as any dirty free
//!   chunk. Parking needs a policy with background scrubbing and stops at half a node's
//!   frames; otherwise the put returns the block to the free lists at once.
//! - Anything else that touches a block's frames (an ordinary free of part of a chunk,
//!   pin, offline, `alloc_at`, `mark_broken`) first *settles* the block:
//!   loaned chunks become ordinary allocations of their owners, free chunks go back to the
//!   node's free lists (dirty ones marked dirty). [`Heap::drain`] settles every block of a
//!   CPU, or every block of the heap (parked ones too); `claim_set` and an allocation that
//!   would otherwise run out of memory drain all of them first.
//!
//! A domain that may hold claims ([`Heap::may_hold_claims`]) always takes the ordinary
//! path, through the claims gate; so do movable and sealed requests and other orders.
//!
//! Lock order: CPU slot, then node, then the node's record lists (`live`), then a block;
//! nobody holds two blocks. A put that empties a detached block parks it holding the
//! block's lock only if `live` is free at that moment (a try, which never waits, so it
//! cannot deadlock); otherwise it releases the block first and takes them in order.

use crate::chunk::{State, NONE};
use crate::error::{HeapError, InvariantViolation};
use crate::heap::{AllocRequest, Extent, Heap, NodeGuard, NodePref};
use crate::memory::FrameMemory;
use crate::node::FreeError;
use crate::node::{NodeState, Pick};
use crate::offline::CHUNKS_PER_STEP;
use crate::reserve::{all_chunks, block_order, dirty_frames, kind_of, Block, CpuCell, CpuSlot, KINDS};
use crate::types::RangeError;
use crate::types::{DomId, Mfn, Off, Zone};
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

    fn cpu_cell(&self, cpu: usize) -> Result<&CpuCell, RangeError> {
        // Not `ok_or`: the error would be built, and dropped, on every get and put.
        match self.pcpu().cpus.get(cpu) {
            Some(c) => Ok(c),
            None => Err(RangeError::NoSuchCpu { cpu, cpus: self.pcpu().cpus.len() }),
        }
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
            if let Some(s) = slot.current[n][k] {
                match self.take_from_block(cpu, &mut slot, n, k, s, req) {
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
            if slot.current[n][k].is_none() && !self.refill(cpu, &mut slot, n, k, req.scrub) {
                break;
            }
        }
        drop(slot);
        self.alloc(req)
    }

    /// Takes one chunk of `slot`'s current block (record `s`) of kind `k` on node `n`:
    /// [`Take::Gone`] (and the slot forgets the block) when the block is no longer this
    /// CPU's, [`Take::TooDirty`] (nothing changed) when a request that needs scrubbed
    /// memory would have to zero more than one `scrub_batch` in place.
    fn take_from_block(&self, cpu: usize, slot: &mut CpuSlot, n: usize, k: usize, s: u32, req: &AllocRequest) -> Take {
        let nr = &self.pcpu().nodes[n];
        let mut b = nr.cell(s).lock();
        let Some((_, idx)) = b.live.filter(|&(kk, _)| kk as usize == k && b.cpu == Some(cpu as u16)) else {
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
        if b.lend(k, i as usize, req.owner.0) {
            nr.owner_tables.fetch_add(1, Relaxed);
        }
        if b.free == 0 {
            b.cpu = None;
            slot.current[n][k] = None;
            slot.ran_out[n][k] = true;
        }
        let order = FAST_ORDERS[k].0;
        let frames = 1u64 << order;
        let counters = &self.pcpu().cpus[cpu].nodes[n];
        counters.lent.store(counters.lent.load(Relaxed).wrapping_add(frames), Relaxed);
        drop(b);
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

    /// Gives CPU `cpu` a block of kind `k` on node `n`: its spare if it has one, else a
    /// parked one first when the request takes dirty memory as it is (`scrub` false),
    /// else a clean chunk of the block order off the node's free lists (through the
    /// claims gate for nobody), then a parked block, then a dirty chunk. A CPU whose last
    /// order-0 block ran out takes a second clean block as its spare in the same hold of
    /// the node lock. False if there is none.
    fn refill(&self, cpu: usize, slot: &mut CpuSlot, n: usize, k: usize, scrub: bool) -> bool {
        if let Some(s) = slot.spare[n][k].take() {
            if self.spare_ready(cpu, n, k, s) {
                slot.current[n][k] = Some(s);
                return true;
            }
        }
        let run = core::mem::take(&mut slot.ran_out[n][k]);
        if !scrub {
            if let Some(s) = self.unpark(cpu, n, k) {
                slot.current[n][k] = Some(s);
                return true;
            }
        }
        let bo = block_order(k);
        let len = 1u64 << bo;
        let mut st = self.lock_node(n);
        let (room, _) = self.gate(None, n, st.available());
        let open = room.refusal(n, len).is_none();
        let mut picked = open.then(|| st.pick(Zone::Normal, bo, Pick::CleanOnly)).flatten();
        if picked.is_none() {
            // A parked block's frames left the node when it was first taken, through the
            // gate then: reusing it changes nothing others' claims count on.
            if let Some(s) = self.unpark(cpu, n, k) {
                slot.current[n][k] = Some(s);
                return true;
            }
            picked = open.then(|| st.pick(Zone::Normal, bo, Pick::SmallestFirst { prefer_dirty: false })).flatten();
        }
        let Some((head, got)) = picked else { return false };
        slot.current[n][k] = Some(self.make_block(&mut st, cpu, n, k, head, got));
        if run && FAST_ORDERS[k].0 == 0 && room.refusal(n, 2 * len).is_none() {
            if let Some((head, got)) = st.pick(Zone::Normal, bo, Pick::CleanOnly) {
                slot.spare[n][k] = Some(self.make_block(&mut st, cpu, n, k, head, got));
            }
        }
        debug_assert!(slot.spare[n][k].is_none() || slot.spare[n][k] != slot.current[n][k]);
        // The guard publishes the node's counters as it drops.
        true
    }

    /// Makes the free chunk at `head` (order `got`, just picked off node `n`'s free
    /// lists, whose lock `st` is) into a live block of kind `k` of CPU `cpu`, split to the
    /// block order first: its record.
    fn make_block(&self, st: &mut NodeGuard<'_>, cpu: usize, n: usize, k: usize, head: Off, got: u8) -> u32 {
        let bo = block_order(k);
        let len = 1u64 << bo;
        st.split_free(head, got, bo);
        let dirty = Self::take_dirt(st, head, k);
        st.free -= len;
        st.allocated += len;
        st.forget_free(head);
        st.set_allocated(head, bo, RESERVE_OWNER, false, false);
        let nr = &self.pcpu().nodes[n];
        let idx = nr.index(k, st.mfn(head).0);
        debug_assert!(nr.mapped(k, idx).is_none(), "a block region taken while live");
        let s = nr.take_record(&mut nr.live.lock());
        nr.cell(s).lock().start(k, idx, dirty, Some(cpu as u16));
        nr.set_map(k, idx, Some(s));
        nr.frames.fetch_add(len, Relaxed);
        debug_assert_eq!(st.head(head).order, bo);
        s
    }

    /// Whether record `s` of node `n` still holds a whole, unlent block of kind `k` of CPU
    /// `cpu` (a spare: a settle or a drain may have returned it meanwhile).
    fn spare_ready(&self, cpu: usize, n: usize, k: usize, s: u32) -> bool {
        let b = self.pcpu().nodes[n].cell(s).lock();
        let ready = b.live.is_some_and(|(kk, _)| kk as usize == k) && b.cpu == Some(cpu as u16);
        debug_assert!(!ready || b.free & !b.dirty == all_chunks(k), "a spare is taken clean and never lends");
        ready && b.free == all_chunks(k)
    }

    /// Takes a parked block of kind `k` off node `n`'s list for CPU `cpu`: its record.
    fn unpark(&self, cpu: usize, n: usize, k: usize) -> Option<u32> {
        let nr = &self.pcpu().nodes[n];
        let mut live = nr.live.lock();
        let s = *live.parked[k].last()?;
        let mut b = nr.cell(s).lock();
        let was = nr.unpark(&mut live, s, k, b.dirty);
        debug_assert!(was && b.cpu.is_none() && b.free == all_chunks(k), "a parked block is detached and free");
        b.cpu = Some(cpu as u16);
        Some(s)
    }

    /// Moves the dirty bits of the block at `head` (of kind `k`, off the free lists) from
    /// the node's bitmap to a per-chunk mask, and out of the node's dirty count.
    fn take_dirt(st: &mut NodeState, head: Off, k: usize) -> u64 {
        if st.first_dirty(head) == NONE {
            return 0;
        }
        let (o, shift) = FAST_ORDERS[k];
        let (mut mask, mut total) = (0u64, 0u64);
        if o == 0 {
            // A chunk per frame: the block's dirty bits are the mask.
            mask = st.dirty.bits(head, 1 << shift);
            total = mask.count_ones() as u64;
        } else {
            for i in 0..1u32 << shift {
                let c = st.dirty.count(head + (i << o), 1 << o);
                if c > 0 {
                    mask |= 1 << i;
                    total += c as u64;
                }
            }
        }
        let len = 1u32 << block_order(k);
        st.free_dirty -= total;
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
    #[inline]
    pub(crate) fn put_reserved(
        &self,
        cpu: usize,
        n: usize,
        off: Off,
        order: u8,
        owner: DomId,
        sealed: bool,
    ) -> Option<Result<(), HeapError>> {
        let nr = &self.pcpu().nodes[n];
        if nr.frames.load(Relaxed) == 0 {
            return None;
        }
        let abs = self.cell(n).mfn(off).0;
        let whole = kind_of(order).filter(|_| !sealed).and_then(|k| {
            let idx = nr.index(k, abs);
            let s = nr.mapped(k, idx)?;
            let b = nr.cell(s).lock();
            (b.live == Some((k as u8, idx))).then_some((k, idx, s, b))
        });
        let Some((k, idx, s, mut b)) = whole else {
            // Not a whole chunk of a live block of its order: the ordinary path, once any
            // block the frames are in is settled.
            if self.blocks_touch(n, abs, abs + (1 << order)) {
                self.settle(n, off, 1 << order);
            }
            return None;
        };
        let i = ((abs - nr.region(k, idx)) >> order) as usize;
        let bit = 1u64 << i;
        if (b.free | b.scrubbing) & bit != 0 {
            return Some(Err(HeapError::Free(FreeError::NotAllocated { mfn: Mfn(abs) })));
        }
        if b.owner_of(i) != owner.0 {
            return Some(Err(HeapError::Free(FreeError::WrongOwner {
                mfn: Mfn(abs),
                owner,
                actual: DomId(b.owner_of(i)),
            })));
        }
        b.free |= bit;
        b.dirty |= bit;
        let idle = b.cpu.is_none() && b.free == all_chunks(k);
        let counters = &self.pcpu().cpus[cpu].nodes[n];
        counters.returned.fetch_add(1 << order, Relaxed);
        if idle && self.policy().background_scrub() {
            // Parked at once if the parked list's lock is free: one block lock, not two.
            // Taken while the block's is held, against the lock order, so only tried.
            if let Some(mut live) = nr.live.try_lock() {
                if live.parked_frames + (1 << block_order(k)) <= nr.park_limit {
                    debug_assert!(!live.is_parked(s), "a parked block has no loan to put back");
                    nr.park(&mut live, s, k, b.dirty);
                    debug_assert!(live.is_parked(s));
                    return Some(Ok(()));
                }
            }
        }
        drop(b);
        if idle {
            self.retire_idle(n, k, idx, s);
        }
        Some(Ok(()))
    }

    /// A detached block whose chunks are all free again (record `s`, region `idx` of kind
    /// `k` on node `n`): parked for the next refill when the policy has background
    /// scrubbers (they return parked blocks to the free lists, `scrub_step`) and the
    /// node's parked frames stay within half its frames; else back to the free lists now.
    fn retire_idle(&self, n: usize, k: usize, idx: u32, s: u32) {
        let nr = &self.pcpu().nodes[n];
        let len = 1u64 << block_order(k);
        if self.policy().background_scrub() {
            let mut live = nr.live.lock();
            if live.parked_frames + len <= nr.park_limit {
                let b = nr.cell(s).lock();
                let idle = b.live == Some((k as u8, idx)) && b.cpu.is_none() && b.free == all_chunks(k);
                if idle && !live.is_parked(s) {
                    nr.park(&mut live, s, k, b.dirty);
                }
                // Otherwise another CPU changed it meanwhile (settled, or parked it).
                return;
            }
        }
        let mut st = self.lock_node(n);
        self.dissolve(&mut st, n, s, Want::Idle(k, idx));
    }

    /// Whether a live block of node `n` holds a frame of `[lo, hi)` (absolute).
    fn blocks_touch(&self, n: usize, lo: u64, hi: u64) -> bool {
        let nr = &self.pcpu().nodes[n];
        (0..KINDS).any(|k| (nr.index(k, lo)..=nr.index(k, hi - 1)).any(|i| nr.mapped(k, i).is_some()))
    }

    /// Settles every block of node `n` that holds a frame of `[off, off + len)`: its loans
    /// become ordinary allocations, its free chunks go back to the free lists. Returns
    /// the frames that went back.
    pub(crate) fn settle(&self, n: usize, off: Off, len: u64) -> u64 {
        let nr = &self.pcpu().nodes[n];
        if nr.frames.load(Relaxed) == 0 {
            return 0;
        }
        let lo = self.cell(n).mfn(off).0;
        let hi = lo + len;
        let mut st = self.lock_node(n);
        let mut freed = 0;
        for k in 0..KINDS {
            // Under the node lock no block is made or settled, so the map holds still.
            for i in nr.index(k, lo)..=nr.index(k, hi - 1) {
                if let Some(s) = nr.mapped(k, i) {
                    freed += self.dissolve(&mut st, n, s, Want::Region(k, i));
                }
            }
        }
        freed
    }

    /// Returns up to [`CHUNKS_PER_STEP`] parked blocks of node `n` to its free lists (what
    /// a background scrubber does before it looks for dirty chunks there, so the frames
    /// puts left dirty are its to scrub). Returns the frames that went back.
    pub(crate) fn return_parked(&self, n: usize) -> u64 {
        let nr = &self.pcpu().nodes[n];
        if nr.frames.load(Relaxed) == 0 || nr.live.lock().parked_frames == 0 {
            return 0;
        }
        let mut st = self.lock_node(n);
        let mut freed = 0;
        for _ in 0..CHUNKS_PER_STEP {
            let next = nr.live.lock().parked.iter().find_map(|l| l.last().copied());
            let Some(s) = next else { break };
            freed += self.dissolve(&mut st, n, s, Want::Parked);
        }
        freed
    }

    /// Settles the reserve block whose head is `h` on node `n` (whose lock `st` is), which
    /// an offline's walk met: a block refilled into a CPU's reserve after the offline
    /// started would otherwise look like an unmovable allocation. `None` if no live block
    /// starts at `h`; `Some(false)` if it is still there (its CPU is zeroing part of it:
    /// look again later); `Some(true)` once settled.
    pub(crate) fn settle_block_at(&self, st: &mut NodeGuard<'_>, n: usize, h: Off) -> Option<bool> {
        let head = st.head(h);
        let k = (0..KINDS).find(|&k| block_order(k) == head.order)?;
        let (nr, abs) = (&self.pcpu().nodes[n], st.mfn(h).0);
        let idx = nr.index(k, abs);
        if head.owner != RESERVE_OWNER || nr.region(k, idx) != abs {
            return None;
        }
        let s = nr.mapped(k, idx)?;
        self.dissolve(st, n, s, Want::Region(k, idx));
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
            let b = nr.cell(nr.mapped(k, idx)?).lock();
            if b.live != Some((k as u8, idx)) {
                return None;
            }
            let o = FAST_ORDERS[k].0;
            let i = ((mfn.0 - nr.region(k, idx)) >> o) as usize;
            let owner = if b.loaned(k) & (1 << i) == 0 { RESERVE_OWNER } else { DomId(b.owner_of(i)) };
            let state = crate::heap::ChunkState::Allocated { owner, pins: 0, movable: false, sealed: false };
            let extent = Extent { mfn: Mfn(mfn.0 >> o << o), order: o, node: n };
            Some(crate::heap::ChunkInfo { extent, zone: Zone::Normal, state })
        })
    }

    /// Returns the frames of CPU `cpu`'s reserve (`None`: of every CPU, every parked
    /// block and every block still lent out) to the nodes' free lists: loaned chunks of a
    /// settled block become ordinary allocations of their owners. Returns the frames that
    /// went back. A block whose CPU is inside [`Heap::scrub_reserve`] zeroing some of its
    /// chunks right now is left as it is (for at most that call).
    pub fn drain(&self, cpu: Option<usize>) -> Result<u64, HeapError> {
        let Some(cpu) = cpu else {
            return Ok((0..self.node_count()).map(|n| self.settle(n, Off(0), self.cell(n).frames)).sum());
        };
        let cell = self.cpu_cell(cpu)?;
        let mut slot = cell.slot.lock();
        let mut freed = 0;
        for n in 0..self.node_count() {
            for k in 0..KINDS {
                slot.ran_out[n][k] = false;
                for s in [slot.current[n][k].take(), slot.spare[n][k].take()].into_iter().flatten() {
                    let mut st = self.lock_node(n);
                    freed += self.dissolve(&mut st, n, s, Want::Current(cpu, k));
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

    /// Settles the block in record `s` of node `n` (whose lock `st` is), if it is still
    /// the one `want` names: every free chunk back to the free lists (dirty ones marked
    /// dirty in the node's bitmap), every loaned one an ordinary allocation of its owner.
    /// Returns the frames that went back.
    fn dissolve(&self, st: &mut NodeGuard<'_>, n: usize, s: u32, want: Want) -> u64 {
        let nr = &self.pcpu().nodes[n];
        let mut live = nr.live.lock();
        let mut b = nr.cell(s).lock();
        let Some((k, idx)) = b.live.map(|(k, i)| (k as usize, i)) else { return 0 };
        let len = 1u64 << block_order(k);
        let wanted = match want {
            Want::Region(wk, wi) => (wk, wi) == (k, idx),
            Want::Idle(wk, wi) => {
                (wk, wi) == (k, idx) && b.cpu.is_none() && b.free == all_chunks(k) && !live.is_parked(s)
            }
            Want::Parked => live.is_parked(s),
            Want::Current(cpu, wk) => wk == k && b.cpu == Some(cpu as u16),
        };
        // A block whose CPU is zeroing some of its free chunks outside the lock is left.
        if !wanted || b.scrubbing != 0 {
            return 0;
        }
        nr.unpark(&mut live, s, k, b.dirty);
        let head = st.off(Mfn(nr.region(k, idx)));
        let h = st.head(head);
        debug_assert!(h.state == State::Allocated && h.order == block_order(k) && h.owner == RESERVE_OWNER);
        let (loaned, freed) = if b.free == all_chunks(k) {
            Self::return_whole(st, head, k, b.dirty)
        } else {
            Self::return_parts(st, head, k, &b)
        };
        (b.live, b.cpu, b.free, b.dirty) = (None, None, 0, 0);
        nr.set_map(k, idx, None);
        live.free.push(s);
        drop(b);
        drop(live);
        nr.frames.fetch_sub(len, Relaxed);
        nr.settled.fetch_add(loaned, Relaxed);
        debug_assert_eq!(freed + loaned, len);
        freed
    }

    /// A block whose chunks are all free goes back as one chunk (one merge, not one per
    /// chunk), its dirty chunks marked in the node's bitmap: `(0 loaned, frames freed)`.
    fn return_whole(st: &mut NodeState, head: Off, k: usize, dirty: u64) -> (u64, u64) {
        let (o, _) = FAST_ORDERS[k];
        let len = 1u32 << block_order(k);
        st.clear_head(head);
        st.allocated -= len as u64;
        if dirty == all_chunks(k) {
            // All dirty (the common case: every chunk lent and put back): one release,
            // which knows the dirty count without counting it.
            st.release(head, block_order(k), false);
            return (0, len as u64);
        }
        let mut bits = dirty;
        while bits != 0 {
            st.dirty.set_all(head + (bits.trailing_zeros() << o), 1 << o);
            bits &= bits - 1;
        }
        debug_assert_eq!(st.dirty.count(head, len), dirty.count_ones() << o, "each dirty chunk marked whole");
        st.put_back(head, block_order(k));
        (0, len as u64)
    }

    /// A block with loans: each loaned chunk becomes its owner's allocation, each free one
    /// goes back to the free lists: `(frames loaned, frames freed)`.
    fn return_parts(st: &mut NodeState, head: Off, k: usize, b: &Block) -> (u64, u64) {
        let (o, shift) = FAST_ORDERS[k];
        let mut loaned = 0u64;
        // The block's head goes; each loan gets its own head and record.
        st.clear_head(head);
        for i in (0..1u32 << shift).filter(|i| b.free & (1 << i) == 0) {
            st.set_allocated(head + (i << o), o, DomId(b.owner_of(i as usize)), false, false);
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
                let Some(s) = slot.current[n][k] else { continue };
                done += self.scrub_block(cpu, n, k, s, budget - done);
            }
        }
        Ok(done)
    }

    /// Zeroes up to `budget` frames of dirty free chunks of a CPU's current block; the
    /// chunks are taken out of the free mask meanwhile, so no get hands them out.
    fn scrub_block(&self, cpu: usize, n: usize, k: usize, s: u32, budget: u64) -> u64 {
        let nr = &self.pcpu().nodes[n];
        let (o, _) = FAST_ORDERS[k];
        let fit = (budget >> o).min(64) as u32;
        let mut b = nr.cell(s).lock();
        let Some((_, idx)) = b.live.filter(|&(kk, _)| kk as usize == k && b.cpu == Some(cpu as u16)) else {
            return 0;
        };
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
        drop(b);
        let base = nr.region(k, idx);
        let mut bits = take;
        while bits != 0 {
            let i = bits.trailing_zeros() as u64;
            self.memory().zero(Mfn(base + (i << o)), 1 << o);
            bits &= bits - 1;
        }
        let mut b = nr.cell(s).lock();
        debug_assert!(b.live == Some((k as u8, idx)), "a block with chunks out for scrubbing is never settled");
        b.free |= take;
        b.dirty &= !take;
        b.scrubbing &= !take;
        drop(b);
        let frames = (take.count_ones() as u64) << o;
        self.account(n, crate::heap::Source::Background, frames);
        frames
    }

    /// The fast path's invariants on node `n` (whose lock the caller holds): the maps and
    /// the records agree, every live block is a reserve-owned allocated chunk of its block
    /// order, dirty chunks are free, parked blocks are detached and free, and the reserved
    /// and parked-dirty counts match the blocks.
    pub(crate) fn check_reserves(&self, n: usize, st: &NodeState) -> Result<(), InvariantViolation> {
        let nr = &self.pcpu().nodes[n];
        let fail = |m: alloc::string::String| Err(InvariantViolation(format!("node {n}: reserve: {m}")));
        let live = nr.live.lock();
        let (mut frames, mut free, mut parked, mut parked_dirty) = (0u64, 0u64, 0u64, 0u64);
        let mut blocks = Vec::new();
        for s in 0..live.high {
            let b = nr.cell(s).lock();
            let Some((k8, idx)) = b.live else {
                if live.is_parked(s) {
                    return fail(format!("record {s} is parked but holds no block"));
                }
                continue;
            };
            let k = k8 as usize;
            blocks.push((k, idx, s));
            if nr.mapped(k, idx) != Some(s) {
                return fail(format!("record {s} holds block {k}/{idx}, which the map does not name"));
            }
            let head = st.off(Mfn(nr.region(k, idx)));
            let Some(h) = st.head_at(head) else { return fail(format!("block at {head} starts no chunk")) };
            if h.state != State::Allocated || h.order != block_order(k) || h.owner != RESERVE_OWNER {
                return fail(format!("block at {head} is {:?} order {} of {}", h.state, h.order, h.owner));
            }
            let idle = b.free | b.scrubbing;
            if b.dirty & !idle != 0 || idle & !all_chunks(k) != 0 || b.free & b.scrubbing != 0 {
                let (d, f, sc) = (b.dirty, b.free, b.scrubbing);
                return fail(format!("block at {head}: dirty {d:#x}, free {f:#x}, scrubbing {sc:#x}"));
            }
            let loaned = b.loaned(k);
            if (0..64).any(|i| loaned & (1 << i) != 0 && b.owner_of(i) == RESERVE_OWNER.0) {
                return fail(format!("block at {head} lends a chunk to the reserve itself"));
            }
            if live.is_parked(s) {
                if b.cpu.is_some() || b.free != all_chunks(k) {
                    return fail(format!("parked block at {head} is current or has loans"));
                }
                parked += 1 << block_order(k);
                parked_dirty += dirty_frames(k, b.dirty);
            }
            frames += 1 << block_order(k);
            free += (idle.count_ones() as u64) << FAST_ORDERS[k].0;
        }
        let mapped: usize = nr.map.iter().map(|m| m.iter().filter(|e| e.load(Relaxed) != 0).count()).sum();
        if mapped != blocks.len() || parked != live.parked_frames {
            let (b, p) = (blocks.len(), live.parked_frames);
            return fail(format!("{mapped} map entries for {b} blocks; {parked} frames parked, counted {p}"));
        }
        if parked_dirty != nr.parked_dirty.load(Relaxed) || parked_dirty > free {
            let c = nr.parked_dirty.load(Relaxed);
            return fail(format!("{parked_dirty} dirty frames in parked blocks ({free} free in blocks), counted {c}"));
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

/// Which block [`Heap::dissolve`] is to settle, checked under the record's lock: the
/// record may have moved on since it was named.
#[derive(Clone, Copy)]
enum Want {
    /// The block of region `.1` of kind `.0`, whatever its state (settling a range).
    Region(usize, u32),
    /// That block, only if it is detached, all free and not parked (a put's last chunk).
    Idle(usize, u32),
    /// Whatever block the record holds, only if it is parked.
    Parked,
    /// The block of kind `.1` if it is CPU `.0`'s current one.
    Current(usize, usize),
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
