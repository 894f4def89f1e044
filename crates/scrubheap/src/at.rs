//! Allocating a given range: [`Heap::alloc_at`] takes exactly the naturally aligned range
//! asked for (as LLFree's `get` with a frame, or Linux's `alloc_contig_range`), if every
//! frame of it is free, and refuses otherwise with nothing changed.

use crate::chunk::State;
use crate::claims::ClaimBook;
use crate::error::{FrameUse, HeapError};
use crate::heap::{AllocRequest, Extent, Heap, NodeGuard, NodeTry};
use crate::memory::FrameMemory;
use crate::sync::MutexGuard;
use crate::ticket::{AllocStart, ScrubTicket};
use crate::types::RangeError;
use crate::types::{DomId, Mfn, Off, Zone};

#[inline]
fn size(order: u8) -> u32 {
    1u32 << order
}

impl<M: FrameMemory> Heap<M> {
    /// Allocates exactly the 2^order frames at `mfn` (naturally aligned, inside one node
    /// and one zone) to `owner`, if every frame of them is free, clean or dirty. Dirty
    /// frames are scrubbed before the owner gets them, as for [`Heap::alloc`]: in place
    /// when they fit in one batch; when they do not, it refuses with
    /// [`HeapError::NeedsScrubTicket`] rather than scrub more than one batch with no
    /// preemption point (use [`Heap::alloc_at_start`] or [`Heap::alloc_at_preemptible`]).
    /// The owner's claims are retired
    /// and others' claims respected, as for any allocation. A range in the Movable zone
    /// is allocated movable, one in the Normal zone unmovable.
    ///
    /// Refused, with nothing changed: [`HeapError::NotFree`] naming the first frame that
    /// is not free and what it is doing (a background scrubber holding it is asked to hand
    /// it back after its current batch: retry); [`crate::ClaimError::ClaimedByOthers`];
    /// [`crate::RangeError::CrossesZone`]; and the range errors of [`Heap::free`].
    ///
    /// ```
    /// use scrubheap::{DomId, Heap, HeapConfig, Mfn, NullMemory};
    /// let heap = Heap::new(HeapConfig::uniform(1, 1 << 12), NullMemory).unwrap();
    /// let ext = heap.alloc_at(Mfn(512), 9, DomId(1)).unwrap();
    /// assert_eq!((ext.mfn, ext.frames()), (Mfn(512), 512));
    /// assert!(heap.alloc_at(Mfn(1024), 10, DomId(2)).is_ok());
    /// assert!(heap.alloc_at(Mfn(0), 11, DomId(2)).is_err(), "frames 512.. are taken");
    /// heap.check_invariants().unwrap();
    /// ```
    pub fn alloc_at(&self, mfn: Mfn, order: u8, owner: DomId) -> Result<Extent, HeapError> {
        match self.alloc_at_start(mfn, order, owner)? {
            AllocStart::Ready(e) => Ok(e),
            AllocStart::Pending(t) => {
                // Dropping the ticket gives the frames (and claims) back.
                drop(t);
                let batch = self.config().scrub_batch;
                debug_assert!(1u64 << order > batch);
                Err(HeapError::NeedsScrubTicket { order, frames: 1 << order, batch })
            }
        }
    }

    /// [`Heap::alloc_at`], scrubbing through a ticket when the range holds more dirty
    /// frames than one batch and asking `preempt` between batches: `None` when it said to
    /// yield (the ticket is dropped; the frames it scrubbed stay clean in the heap).
    pub fn alloc_at_preemptible(
        &self,
        mfn: Mfn,
        order: u8,
        owner: DomId,
        preempt: &dyn crate::preempt::Preempt,
    ) -> Result<Option<Extent>, HeapError> {
        Self::drive(self.alloc_at_start(mfn, order, owner)?, preempt)
    }

    /// [`Heap::alloc_at`], returning a [`ScrubTicket`] when the range holds more dirty
    /// frames than one batch: the frames are reserved for `owner` at once, and the
    /// caller advances the ticket (dropping it gives the frames, and the claim it
    /// retired, back).
    pub fn alloc_at_start(&self, mfn: Mfn, order: u8, owner: DomId) -> Result<AllocStart<'_, M>, HeapError> {
        let (n, off) = self.locate(mfn, order)?;
        self.settle(n, off, 1 << order);
        let st = self.lock_node(n);
        let movable_from = st.movable_from;
        let end = off + size(order);
        if (off < movable_from) != (end <= movable_from) {
            let movable_from = st.mfn(movable_from);
            return Err(HeapError::Range(RangeError::CrossesZone { mfn, order, movable_from }));
        }
        let mut req = AllocRequest::new(order, owner).exact(n);
        req.movable = st.zone_of(off) == Zone::Movable;
        let (st, book) = self.carve(st, n, off, &req)?;
        match self.take_chunk(st, n, off, &req, book) {
            NodeTry::Ready(e) => Ok(AllocStart::Ready(e)),
            NodeTry::Pending { node, id, ext } => {
                Ok(AllocStart::Pending(ScrubTicket::scrubbing(self, req, node, id, ext)))
            }
            NodeTry::No { .. } => unreachable!("take_chunk always hands the chunk over"),
        }
    }

    /// Checks that every frame of `[off, 2^req.order)` of node `n` is free and that the
    /// claims gate admits it for `req.owner`, then makes it one free chunk off the free
    /// lists (the rest of any larger chunk goes back on them). Nothing changes on refusal.
    /// Returns the node guard and the claims lock if the owner's claims are to be retired.
    fn carve<'a>(
        &'a self,
        mut st: NodeGuard<'a>,
        n: usize,
        off: Off,
        req: &AllocRequest,
    ) -> Result<(NodeGuard<'a>, Option<MutexGuard<'a, ClaimBook>>), HeapError> {
        let end = off + size(req.order);
        let (h, o) = st.chunk_of(off);
        let whole = o >= req.order;
        let mut pos = if whole { h } else { off };
        while pos < end {
            let (h, o) = st.chunk_of(pos);
            if st.state(h) != State::Free {
                return Err(self.not_free(&mut st, off, req.order, h));
            }
            pos = h + size(o);
        }
        let want = size(req.order) as u64;
        let (room, book) = self.gate(Some(req.owner), n, st.free);
        room.admit(req.owner, n, want)?;
        if whole {
            st.unlink_free(h);
            let inside = Self::split_free_around(&mut st, h, o, off, end);
            debug_assert_eq!(inside, alloc::vec![(off, req.order)]);
        } else {
            let mut pos = off;
            while pos < end {
                let (h, o) = st.chunk_of(pos);
                st.unlink_free(h);
                st.forget_free(h);
                pos = h + size(o);
            }
        }
        st.make_unlisted_free(off, req.order);
        debug_assert_eq!(st.chunk_of(off), (off, req.order));
        Ok((st, book))
    }

    /// The refusal for the range `[off, 2^order)` whose chunk at `h` is not free; a
    /// background scrubber holding it is asked to hand it back.
    fn not_free(&self, st: &mut NodeGuard<'_>, off: Off, order: u8, h: Off) -> HeapError {
        let state = st.state(h);
        let what = match state {
            State::Allocated => FrameUse::Allocated,
            State::Pending => FrameUse::Pending,
            State::Scrubbing => {
                st.stop_background(h);
                FrameUse::Scrubbing
            }
            State::Isolated => FrameUse::Isolated,
            State::Offline => FrameUse::Offline,
            State::Broken | State::None | State::Free => FrameUse::Broken,
        };
        debug_assert!(state != State::Free, "only a chunk that is not free is reported");
        HeapError::NotFree { mfn: st.mfn(off), order, first: st.mfn(h.max(off)), what }
    }
}
