//! Long-term pins, and migration of allocated frames through the owner's [`Migrator`].
//!
//! A long-term pin (a device doing DMA into a guest page, DPDK, VFIO) makes frames
//! unmovable for as long as it lasts, so a pin must never stay in the Movable zone: that
//! is what made memory hot-remove loop forever. [`Heap::pin`] first migrates any part in
//! the Movable zone to Normal memory, and if the frames cannot be moved, refuses the pin
//! and changes nothing. A pinned frame cannot be freed (`FreeError::Pinned`) until it is
//! unpinned as many times as it was pinned.

use crate::chunk::State;
use crate::error::HeapError;
use crate::heap::{Extent, Heap};
use crate::memory::FrameMemory;
use crate::node::FreeError;
use crate::node::{NodeState, Pick};
use crate::types::{DomId, Mfn, Off, Zone};
use alloc::vec::Vec;

#[inline]
fn size(order: u8) -> u32 {
    1u32 << order
}

/// Moves an owner's frames on the heap's behalf, in pieces: [`Migrator::copy`] copies the
/// bytes one piece at a time, then [`Migrator::switch`] points the owner's frame list (a
/// guest's p2m, a process's page table) at the new frames, once.
///
/// The heap calls it with no lock held, for a pin that must leave the Movable zone or an
/// offline that must empty a range. Each piece is at most one scrub batch of frames
/// ([`HeapConfig::scrub_batch`](crate::HeapConfig::scrub_batch), or less if the caller's
/// [`Preempt`](crate::Preempt) asks for smaller batches), and the heap asks its `Preempt` between two
/// pieces, so a 1 GiB move is never one stretch without a preemption point.
///
/// **When the owner's mapping switches, and why then.** The owner keeps using `from`
/// until every piece has been copied; only then does the heap call `switch`, and only
/// after `switch` returns true is `to` the owner's and `from` the heap's. Switching once,
/// at the end, is what keeps a move all-or-nothing: if a piece is refused (or the move is
/// abandoned, an offline rolled back), the owner never saw `to` and nothing of its
/// mapping changed. The owner must keep `from` unwritten from the first piece to the
/// switch (a VMM write-protects it or pauses the vCPUs that map it), or re-copy what it
/// wrote before it returns true from `switch`. The owner must not free or pin `from`
/// meanwhile (the heap refuses such calls with `FreeError::Busy` while the move is in
/// progress).
///
/// A closure `Fn(DomId, Extent, Extent) -> bool` is a migrator with nothing to copy (a
/// metadata-only owner: a simulator, a replayer): every piece succeeds and the closure
/// is the switch.
///
/// ```
/// use scrubheap::{DomId, Extent, Migrator, Mfn};
/// let from = Extent { mfn: Mfn(0), order: 9, node: 0 };
/// let to = Extent { mfn: Mfn(512), order: 9, node: 0 };
/// // A metadata-only owner: nothing to copy, the switch always succeeds.
/// let m = |_owner: DomId, _from: Extent, _to: Extent| true;
/// assert!(m.copy(DomId(1), from, to, 0, 256));
/// assert!(m.switch(DomId(1), from, to));
/// ```
pub trait Migrator {
    /// Copies the `frames` frames at frame `offset` of `from` to the same offset of `to`
    /// (same order). The heap calls it for consecutive pieces from offset 0 to the end,
    /// each at most one batch. Returns false to refuse: the move is abandoned and `to` goes
    /// back to the heap as dirty memory (it may hold the owner's bytes).
    fn copy(&self, owner: DomId, from: Extent, to: Extent, offset: u64, frames: u64) -> bool;

    /// Points the owner's mapping at `to` instead of `from`, after every piece has been
    /// copied; called once a move. Returns false to refuse (nothing of the owner's
    /// mapping may have changed then): the move is abandoned as for [`Migrator::copy`].
    fn switch(&self, owner: DomId, from: Extent, to: Extent) -> bool;
}

impl<F: Fn(DomId, Extent, Extent) -> bool> Migrator for F {
    fn copy(&self, _owner: DomId, _from: Extent, _to: Extent, _offset: u64, _frames: u64) -> bool {
        true
    }
    fn switch(&self, owner: DomId, from: Extent, to: Extent) -> bool {
        self(owner, from, to)
    }
}

/// A [`Migrator`] for metadata-only heaps (replay, simulation): every move succeeds and
/// nothing is copied.
#[derive(Copy, Clone, Debug, Default)]
pub struct MetadataMigrator;

impl Migrator for MetadataMigrator {
    fn copy(&self, _owner: DomId, _from: Extent, _to: Extent, _offset: u64, _frames: u64) -> bool {
        true
    }
    fn switch(&self, _owner: DomId, _from: Extent, _to: Extent) -> bool {
        true
    }
}

/// A [`Migrator`] that refuses every move: pins in the Movable zone are refused and
/// offlines of ranges holding allocations roll back.
#[derive(Copy, Clone, Debug, Default)]
pub struct NoMigration;

impl Migrator for NoMigration {
    fn copy(&self, _owner: DomId, _from: Extent, _to: Extent, _offset: u64, _frames: u64) -> bool {
        false
    }
    fn switch(&self, _owner: DomId, _from: Extent, _to: Extent) -> bool {
        false
    }
}

/// A move in progress: `done` frames of `from` copied to `to` so far.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Move {
    pub owner: DomId,
    pub from: Extent,
    pub to: Extent,
    pub done: u64,
}

/// Where a move stands after one piece.
pub(crate) enum MoveStep {
    /// More pieces to copy.
    Copied,
    /// Every piece copied and the owner switched: `to` is the owner's.
    Switched,
    /// The migrator refused a piece or the switch: `to` has been given back.
    Refused,
}

impl<M: FrameMemory> Heap<M> {
    /// Takes a long-term pin where the frames are, even in the Movable zone: what kernels
    /// did before they migrated pinned pages out of movable memory (Linux before 5.7).
    /// Only for baselines that show why [`Heap::pin`] moves them: an offline of a range
    /// holding such a pin can never complete. A range held as more than
    /// [`CHUNKS_PER_STEP`](crate::CHUNKS_PER_STEP) chunks is refused
    /// (`FreeError::TooManyChunks`, nothing changed): use [`Heap::range_start`].
    pub fn pin_in_place(&self, mfn: Mfn, order: u8, owner: DomId) -> Result<Extent, HeapError> {
        let (n, off) = self.locate(mfn, order)?;
        self.settle(n, off, 1 << order);
        let mut st = self.lock_node(n);
        Self::check_fragments(&st, off, order)?;
        st.held_by(off, order, owner, false)?;
        Self::pin_chunks(&mut st, off, order)?;
        Ok(Extent { mfn, order, node: n })
    }

    /// Drops one long-term pin from every frame of `[mfn, 2^order)`, which `owner` must
    /// hold, every frame pinned. A range held as more than
    /// [`CHUNKS_PER_STEP`](crate::CHUNKS_PER_STEP) chunks is refused
    /// (`FreeError::TooManyChunks`, nothing changed): use [`Heap::range_start`].
    pub fn unpin(&self, mfn: Mfn, order: u8, owner: DomId) -> Result<(), HeapError> {
        let (n, off) = self.locate(mfn, order)?;
        self.settle(n, off, 1 << order);
        let mut st = self.lock_node(n);
        Self::check_fragments(&st, off, order)?;
        let held = st.held_by(off, order, owner, false)?;
        if let Some(h) = held.unpinned {
            return Err(HeapError::Free(FreeError::NotPinned { mfn: st.mfn(h), owner }));
        }
        Self::split_to(&mut st, off, order);
        let end = off + size(order);
        let mut pos = off;
        while pos < end {
            let (h, o) = st.chunk_of(pos);
            let pins = st.head(h).pins;
            st.set_pins(h, pins - 1);
            pos = h + size(o);
        }
        Ok(())
    }

    /// Splits a held chunk larger than `[off, 2^order)` so that the range is whole chunks.
    pub(crate) fn split_to(st: &mut NodeState, off: Off, order: u8) {
        let (h, o) = st.chunk_of(off);
        if o > order {
            st.split_held(h, o, off, order);
        }
    }

    /// Adds a pin to every chunk of a held range (all or none).
    fn pin_chunks(st: &mut NodeState, off: Off, order: u8) -> Result<(), HeapError> {
        let end = off + size(order);
        let mut pos = off;
        while pos < end {
            let (h, o) = st.chunk_of(pos);
            if st.head(h).pins == u32::MAX {
                return Err(HeapError::Free(FreeError::PinLimit { mfn: st.mfn(h) }));
            }
            pos = h + size(o);
        }
        Self::split_to(st, off, order);
        let mut pos = off;
        while pos < end {
            let (h, o) = st.chunk_of(pos);
            let pins = st.head(h).pins;
            st.set_pins(h, pins + 1);
            pos = h + size(o);
        }
        Ok(())
    }

    /// The frames of `[off, 2^order)`, whose owner's contents have moved away, leave the
    /// owner: free and dirty (or, with `isolate`, held by an offline, dirty), a frame
    /// marked broken out of service. Chunks around the range that were marked migrating
    /// with it are unmarked.
    pub(crate) fn vacate(st: &mut NodeState, off: Off, order: u8, isolate: bool) -> Vec<(Off, u8)> {
        let end = off + size(order);
        let (h0, o0) = st.chunk_of(off);
        let outer_end = core::cmp::max(end, h0 + size(o0));
        Self::split_to(st, off, order);
        let mut isolated = Vec::new();
        let mut pos = h0;
        while pos < outer_end {
            let (h, o) = st.chunk_of(pos);
            pos = h + size(o);
            if h < off || h >= end {
                st.set_migrating(h, false);
                continue;
            }
            st.allocated -= size(o) as u64;
            if Self::retire_broken(st, h) {
                continue;
            }
            if isolate {
                st.set_state(h, State::Isolated, o);
                st.dirty.set_all(h, size(o));
                st.offline += size(o) as u64;
                isolated.push((h, o));
            } else {
                st.clear_head(h);
                st.release(h, o, false);
            }
        }
        isolated
    }

    /// If the allocated chunk at `h` (whose frames the caller has already taken off
    /// `allocated`) holds a frame marked broken, it goes out of service. Returns whether
    /// it did.
    pub(crate) fn retire_broken(st: &mut NodeState, h: Off) -> bool {
        let s = st.head(h);
        if s.state != State::Allocated || !s.broken {
            return false;
        }
        debug_assert_eq!(s.order, 0);
        st.set_state(h, State::Broken, 0);
        st.offline += 1;
        true
    }

    /// Starts moving `owner`'s frames `from` (marked migrating): takes a destination chunk
    /// in `zones`, the nearest node first. Nothing is copied yet.
    pub(crate) fn begin_move(
        &self,
        owner: DomId,
        from: Extent,
        movable: bool,
        zones: &[Zone],
    ) -> Result<Move, HeapError> {
        let Some(to) = self.take_destination(from.node, from.order, owner, movable, zones) else {
            let free = self.stats().free_clean + self.stats().free_dirty;
            let where_ = if zones == [Zone::Normal] {
                "the Normal zone of any node (a pin moves its frames out of the Movable zone first)"
            } else {
                "any node (to move an allocation out of a range being offlined)"
            };
            return Err(HeapError::OutOfMemory { order: from.order, where_: where_.into(), free, claimed: 0 });
        };
        Ok(Move { owner, from, to, done: 0 })
    }

    /// Copies the next piece of `mv` (at most `batch` frames) through `migrator`, and once
    /// the last piece is copied switches the owner's mapping. On a refusal the destination
    /// goes back to the heap (dirty if any piece reached it).
    pub(crate) fn move_piece(&self, mv: &mut Move, migrator: &dyn Migrator, batch: u64) -> MoveStep {
        let frames = mv.from.frames();
        debug_assert!(batch >= 1 && mv.done < frames, "a move has a piece left to copy");
        let n = core::cmp::min(batch, frames - mv.done);
        if !migrator.copy(mv.owner, mv.from, mv.to, mv.done, n) {
            self.abandon_move(mv);
            return MoveStep::Refused;
        }
        mv.done += n;
        if mv.done < frames {
            return MoveStep::Copied;
        }
        if !migrator.switch(mv.owner, mv.from, mv.to) {
            self.abandon_move(mv);
            return MoveStep::Refused;
        }
        debug_assert_eq!(mv.done, frames);
        MoveStep::Switched
    }

    /// Gives an unfinished move's destination back to the heap: dirty if any piece was
    /// copied into it (it holds the owner's bytes), as it was otherwise.
    pub(crate) fn abandon_move(&self, mv: &Move) {
        self.finish_destination(mv.to, false, 0, mv.done > 0);
    }

    /// Takes a free chunk of `order` in `zones` for a move, nearest `node` first, leaving
    /// claimed memory alone. It is allocated to `owner`, marked migrating, and keeps its
    /// dirty bits until the move succeeds.
    fn take_destination(&self, node: usize, order: u8, owner: DomId, movable: bool, zones: &[Zone]) -> Option<Extent> {
        let want = size(order) as u64;
        for &n in self.nearest(node) {
            let mut st = self.lock_node(n);
            if self.claims_admit_locked(None, n, st.free, want).is_err() {
                continue;
            }
            let pick = Pick::SmallestFirst { prefer_dirty: true };
            let Some((head, got)) = zones.iter().find_map(|&z| st.pick(z, order, pick)) else { continue };
            st.split_free(head, got, order);
            let dirty = st.dirty.count(head, size(order)) as u64;
            st.free -= want;
            st.free_dirty -= dirty;
            st.allocated += want;
            st.set_allocated(head, order, owner, movable, false);
            st.set_migrating(head, true);
            return Some(Extent { mfn: st.mfn(head), order, node: n });
        }
        None
    }

    /// Ends a move into `to`: on success the frames are the owner's (their old dirty
    /// bits are dropped: the migrator overwrote every frame), with `pins` pins; on
    /// failure they go back to the free lists as they were, or all dirty if `written`.
    pub(crate) fn finish_destination(&self, to: Extent, ok: bool, pins: u32, written: bool) {
        let cell = self.cell(to.node);
        let head = Off::of(to.mfn, cell.base);
        let mut st = self.lock_node(to.node);
        if ok {
            st.dirty.clear_all(head, size(to.order));
            st.set_migrating(head, false);
            st.set_pins(head, pins);
        } else {
            if written {
                st.dirty.set_all(head, size(to.order));
            }
            st.clear_head(head);
            st.allocated -= to.frames();
            st.put_back(head, to.order);
        }
    }
}
