//! Long-term pins, and migration of allocated frames through the owner's [`Migrator`].
//!
//! A long-term pin (a device doing DMA into a guest page, DPDK, VFIO) makes frames
//! unmovable for as long as it lasts, so a pin must never stay in the Movable zone: that
//! is what made memory hot-remove loop forever. [`Heap::pin`] first migrates any part in
//! the Movable zone to Normal memory, and if the frames cannot be moved, refuses the pin
//! and changes nothing. A pinned frame cannot be freed (`HeapError::Pinned`) until it is
//! unpinned as many times as it was pinned.

use crate::chunk::State;
use crate::error::HeapError;
use crate::heap::{Extent, Heap};
use crate::memory::FrameMemory;
use crate::node::{NodeState, Pick};
use crate::types::{DomId, Mfn, Zone};
use alloc::vec::Vec;

#[inline]
fn size(order: u8) -> u32 {
    1u32 << order
}

/// Moves an owner's frames on the heap's behalf: copies the bytes and points the owner's
/// frame list (a guest's p2m, a process's page table) at the new frames.
///
/// The heap calls it with no lock held, for a pin that must leave the Movable zone or an
/// offline that must empty a range. The owner must not free or pin `from` meanwhile (the
/// heap refuses such calls with `HeapError::Busy` while the move is in progress).
///
/// ```
/// use scrubheap::{DomId, Extent, Migrator};
/// // A metadata-only owner (a simulator, a replayer): nothing to copy or remap.
/// let m = |_owner: DomId, _from: Extent, _to: Extent| true;
/// assert!(m.migrate(DomId(1), Extent { mfn: scrubheap::Mfn(0), order: 0, node: 0 },
///                   Extent { mfn: scrubheap::Mfn(1), order: 0, node: 0 }));
/// ```
pub trait Migrator {
    /// Copies the `2^order` frames of `from` to `to` (same order; `to` is the owner's
    /// only once this returns true) and remaps the owner. Returns false to refuse, in
    /// which case it must not have written anything to `to`: the heap then gives `to`
    /// back exactly as it was, and the pin or offline that asked is not done.
    fn migrate(&self, owner: DomId, from: Extent, to: Extent) -> bool;
}

impl<F: Fn(DomId, Extent, Extent) -> bool> Migrator for F {
    fn migrate(&self, owner: DomId, from: Extent, to: Extent) -> bool {
        self(owner, from, to)
    }
}

/// A [`Migrator`] for metadata-only heaps (replay, simulation): every move succeeds and
/// nothing is copied.
#[derive(Copy, Clone, Debug, Default)]
pub struct MetadataMigrator;

impl Migrator for MetadataMigrator {
    fn migrate(&self, _owner: DomId, _from: Extent, _to: Extent) -> bool {
        true
    }
}

/// A [`Migrator`] that refuses every move: pins in the Movable zone are refused and
/// offlines of ranges holding allocations roll back.
#[derive(Copy, Clone, Debug, Default)]
pub struct NoMigration;

impl Migrator for NoMigration {
    fn migrate(&self, _owner: DomId, _from: Extent, _to: Extent) -> bool {
        false
    }
}

impl<M: FrameMemory> Heap<M> {
    /// Takes a long-term pin on `[mfn, 2^order)`, which `owner` must hold: a whole
    /// allocation or any aligned part of one. Parts already pinned are pinned once more.
    ///
    /// If any frame of the range is in the Movable zone, the whole range is first moved to
    /// a free chunk of Normal memory (the nearest node first) through `migrator`; the
    /// frames it leaves become free and dirty. Returns where the pinned frames are now.
    /// If no Normal memory is free or the migrator refuses, the pin is refused and
    /// nothing changes.
    ///
    /// ```
    /// use scrubheap::{AllocRequest, DomId, Heap, HeapConfig, MetadataMigrator, NullMemory, Zone};
    /// let heap = Heap::new(HeapConfig::uniform(1, 1 << 12).with_movable_from(1 << 11), NullMemory).unwrap();
    /// let ext = heap.alloc(&AllocRequest::new(9, DomId(1)).movable()).unwrap();
    /// assert_eq!(heap.chunk_at(ext.mfn).unwrap().zone, Zone::Movable);
    /// // Pin one frame of it: it moves to Normal memory first.
    /// let pinned = heap.pin(ext.mfn, 0, DomId(1), &MetadataMigrator).unwrap();
    /// assert_eq!(heap.chunk_at(pinned.mfn).unwrap().zone, Zone::Normal);
    /// heap.unpin(pinned.mfn, 0, DomId(1)).unwrap();
    /// heap.check_invariants().unwrap();
    /// ```
    pub fn pin(&self, mfn: Mfn, order: u8, owner: DomId, migrator: &dyn Migrator) -> Result<Extent, HeapError> {
        let (n, off) = self.locate(mfn, order)?;
        let mut st = self.lock_node(n);
        let held = st.held_by(off, order, owner, false)?;
        if !held.movable_zone {
            Self::pin_chunks(&mut st, off, order)?;
            return Ok(Extent { mfn, order, node: n });
        }
        if let Some(h) = held.pinned {
            // Only a pin taken in place (the baseline) leaves pins in the Movable zone.
            return Err(HeapError::Pinned { mfn: st.mfn(h), owner });
        }
        Self::set_migrating(&mut st, off, order, true);
        drop(st);
        let from = Extent { mfn, order, node: n };
        match self.move_out(owner, from, held.movable, &[Zone::Normal], migrator) {
            Ok(to) => {
                self.finish_destination(to, true, 1);
                let mut st = self.lock_node(n);
                Self::vacate(&mut st, off, order, false);
                Ok(to)
            }
            Err(e) => {
                let mut st = self.lock_node(n);
                Self::set_migrating(&mut st, off, order, false);
                Err(e)
            }
        }
    }

    /// Takes a long-term pin where the frames are, even in the Movable zone: what kernels
    /// did before they migrated pinned pages out of movable memory (Linux before 5.7).
    /// Only for baselines that show why [`Heap::pin`] moves them: an offline of a range
    /// holding such a pin can never complete.
    pub fn pin_in_place(&self, mfn: Mfn, order: u8, owner: DomId) -> Result<Extent, HeapError> {
        let (n, off) = self.locate(mfn, order)?;
        let mut st = self.lock_node(n);
        st.held_by(off, order, owner, false)?;
        Self::pin_chunks(&mut st, off, order)?;
        Ok(Extent { mfn, order, node: n })
    }

    /// Drops one long-term pin from every frame of `[mfn, 2^order)`, which `owner` must
    /// hold, every frame pinned.
    pub fn unpin(&self, mfn: Mfn, order: u8, owner: DomId) -> Result<(), HeapError> {
        let (n, off) = self.locate(mfn, order)?;
        let mut st = self.lock_node(n);
        let held = st.held_by(off, order, owner, false)?;
        if let Some(h) = held.unpinned {
            return Err(HeapError::NotPinned { mfn: st.mfn(h), owner });
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
    pub(crate) fn split_to(st: &mut NodeState, off: u32, order: u8) {
        let (h, o) = st.chunk_of(off);
        if o > order {
            st.split_held(h, o, off, order);
        }
    }

    /// Adds a pin to every chunk of a held range (all or none).
    fn pin_chunks(st: &mut NodeState, off: u32, order: u8) -> Result<(), HeapError> {
        let end = off + size(order);
        let mut pos = off;
        while pos < end {
            let (h, o) = st.chunk_of(pos);
            if st.head(h).pins == u32::MAX {
                return Err(HeapError::PinLimit { mfn: st.mfn(h) });
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

    /// Marks (or unmarks) every chunk holding a frame of `[off, 2^order)` as being
    /// migrated. A chunk larger than the range is marked whole (its other frames wait
    /// for the move too) and split only once the move is done.
    fn set_migrating(st: &mut NodeState, off: u32, order: u8, on: bool) {
        let end = off + size(order);
        let mut pos = st.chunk_of(off).0;
        while pos < end {
            let (h, o) = st.chunk_of(pos);
            st.set_migrating(h, on);
            pos = h + size(o);
        }
    }

    /// The frames of `[off, 2^order)`, whose owner's contents have moved away, leave the
    /// owner: free and dirty (or, with `isolate`, held by an offline, dirty), a frame
    /// marked broken out of service. Chunks around the range that were marked migrating
    /// with it are unmarked.
    pub(crate) fn vacate(st: &mut NodeState, off: u32, order: u8, isolate: bool) -> Vec<(u32, u8)> {
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
    pub(crate) fn retire_broken(st: &mut NodeState, h: u32) -> bool {
        let s = st.head(h);
        if s.state != State::Allocated || !s.broken {
            return false;
        }
        debug_assert_eq!(s.order, 0);
        st.set_state(h, State::Broken, 0);
        st.offline += 1;
        true
    }

    /// Moves `owner`'s frames `from` (marked migrating) to a new chunk in `zones`, the
    /// nearest node first, through `migrator`. Returns the destination, still marked
    /// migrating (see [`Heap::finish_destination`]); on failure nothing is left taken.
    pub(crate) fn move_out(
        &self,
        owner: DomId,
        from: Extent,
        movable: bool,
        zones: &[Zone],
        migrator: &dyn Migrator,
    ) -> Result<Extent, HeapError> {
        let Some(to) = self.take_destination(from.node, from.order, owner, movable, zones) else {
            let free = self.stats().free_clean + self.stats().free_dirty;
            let where_ = if zones == [Zone::Normal] {
                "the Normal zone of any node (a pin moves its frames out of the Movable zone first)"
            } else {
                "any node (to move an allocation out of a range being offlined)"
            };
            return Err(HeapError::OutOfMemory { order: from.order, where_: where_.into(), free, claimed: 0 });
        };
        if migrator.migrate(owner, from, to) {
            Ok(to)
        } else {
            self.finish_destination(to, false, 0);
            Err(HeapError::MigrationRefused { mfn: from.mfn, order: from.order, owner })
        }
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
    /// failure they go back to the free lists exactly as they were.
    pub(crate) fn finish_destination(&self, to: Extent, ok: bool, pins: u32) {
        let cell = self.cell(to.node);
        let head = (to.mfn.0 - cell.base) as u32;
        let mut st = self.lock_node(to.node);
        if ok {
            st.dirty.clear_all(head, size(to.order));
            st.set_migrating(head, false);
            st.set_pins(head, pins);
        } else {
            st.clear_head(head);
            st.allocated -= to.frames();
            st.put_back(head, to.order);
        }
    }
}
