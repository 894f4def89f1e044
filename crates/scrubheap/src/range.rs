//! Operations on a range an owner holds, in bounded steps: [`RangeJob`].
//!
//! A range of an owner's frames is one chunk when it was allocated, but partial frees,
//! pins and moves split it: a 1 GiB range can be 262,144 chunks. [`Heap::free`],
//! [`Heap::free_sealed`], [`Heap::unpin`] and [`Heap::pin_in_place`] walk a range under
//! one hold of the node lock, so they refuse a range of more than [`CHUNKS_PER_STEP`]
//! chunks (`FreeError::TooManyChunks`, nothing changed). [`Heap::range_start`] does any of
//! them, and [`Heap::pin_start`] a long-term pin (with its move out of the Movable zone),
//! as a job the caller advances, yielding between steps:
//!
//! 1. *mark*: at most [`CHUNKS_PER_STEP`] chunks a step are validated (owner, state, pins,
//!    sealing) and marked busy with the mark a move uses, so nothing else frees, pins,
//!    moves, breaks or offlines them meanwhile (those refuse with `FreeError::Busy` or
//!    wait). The first chunk that fails ends the marking: the marks are taken off again
//!    in steps and the job ends with the error, the heap as it was (all or nothing);
//! 2. *move* (a pin with frames in the Movable zone only): one piece of at most one batch
//!    a step through the owner's [`Migrator`], as [`Heap::pin`] always moved;
//! 3. *commit*: at most [`CHUNKS_PER_STEP`] chunks a step freed, pinned or unpinned, each
//!    losing its mark. The commit is the point of no return: the range is half done
//!    between two steps, so a job there finishes even when cancelled or dropped.

use crate::chunk::State;
use crate::error::HeapError;
use crate::heap::{Extent, Heap, Source};
use crate::memory::FrameMemory;
use crate::node::FreeError;
use crate::node::NodeState;
use crate::offline::CHUNKS_PER_STEP;
use crate::pin::{Migrator, Move, MoveStep, NoMigration};
use crate::preempt::{batch_frames, NeverPreempt, Preempt};
use crate::types::{DomId, Mfn, Off, Zone};
use crate::work::Kind;
use alloc::vec::Vec;

#[inline]
fn size(order: u8) -> u32 {
    1u32 << order
}

/// What a [`RangeJob`] does to the range.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RangeOp {
    /// [`Heap::free`]: every frame the owner's, unpinned, not sealed.
    Free,
    /// [`Heap::free_sealed`]: every frame the owner's, unpinned, sealed.
    FreeSealed,
    /// [`Heap::pin`]: a long-term pin, moving the range out of the Movable zone first.
    Pin,
    /// [`Heap::pin_in_place`]: a pin where the frames are (a baseline).
    PinInPlace,
    /// [`Heap::unpin`]: every frame pinned.
    Unpin,
}

impl RangeOp {
    fn name(self) -> &'static str {
        match self {
            RangeOp::Free => "free",
            RangeOp::FreeSealed => "free_sealed",
            RangeOp::Pin => "pin",
            RangeOp::PinInPlace => "pin_in_place",
            RangeOp::Unpin => "unpin",
        }
    }

    fn sealed(self) -> bool {
        self == RangeOp::FreeSealed
    }

    fn frees(self) -> bool {
        matches!(self, RangeOp::Free | RangeOp::FreeSealed)
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    Mark,
    Move,
    Commit,
    Unmark,
    Done,
}

/// A long-term pin in progress: see [`Heap::pin_start`].
pub type PinJob<'h, M> = RangeJob<'h, M>;

/// An operation on a held range in progress, advanced in bounded steps: see
/// [`Heap::range_start`] and [`Heap::pin_start`] and the module documentation.
///
/// Dropping an unfinished job before its commit rolls it back at once (an unfinished
/// move is abandoned, the marks are taken off: the heap is as it was), and a job in its
/// commit finishes at once (the range is half done and metadata is all that is left);
/// either walks the rest of the range with no preemption point, so a caller that must
/// stay preemptible calls [`RangeJob::cancel`] and advances the job to its end instead.
pub struct RangeJob<'h, M: FrameMemory> {
    heap: &'h Heap<M>,
    op: RangeOp,
    mfn: Mfn,
    order: u8,
    owner: DomId,
    node: usize,
    off: Off,
    end: Off,
    phase: Phase,
    /// The head of the first chunk marked (before `off` if the range is inside a chunk).
    first: Off,
    /// The next frame the current phase looks at.
    pos: Off,
    /// Where the marked chunks end (marking stops at the first chunk it refuses).
    marked: Off,
    /// Marking saw a chunk in the Movable zone, every chunk movable, a pinned chunk.
    movable_zone: bool,
    movable: bool,
    pinned: Option<Off>,
    /// Where the frames are at the end (a pin's destination).
    to: Extent,
    moving: Option<Move>,
    /// Why a rolled-back job ends.
    error: Option<HeapError>,
    /// The `sync` policy's chunks freed by the current commit step, zeroed outside the lock.
    ids: Vec<(u64, Off, u8)>,
}

impl<M: FrameMemory> Drop for RangeJob<'_, M> {
    fn drop(&mut self) {
        if self.phase == Phase::Done {
            return;
        }
        if self.phase != Phase::Commit {
            self.cancel();
        }
        while self.phase != Phase::Done {
            let _ = self.step(&NoMigration, 1, &NeverPreempt);
        }
    }
}

impl<M: FrameMemory> Heap<M> {
    /// Starts `op` on `[mfn, 2^order)`, which `owner` holds (a whole allocation or any
    /// aligned part of one, however many chunks partial frees and pins made of it): the
    /// returned [`RangeJob`] validates, marks and commits it in steps of at most
    /// [`CHUNKS_PER_STEP`] chunks. Checks the range's shape now; the frames are checked
    /// as the job reaches them, all before any changes. Fast-path reserve blocks holding
    /// frames of the range are settled first, as [`Heap::free`] does.
    ///
    /// ```
    /// use scrubheap::{AllocRequest, DomId, Heap, HeapConfig, NullMemory, RangeOp, NoMigration};
    /// let heap = Heap::new(HeapConfig::uniform(1, 1 << 12), NullMemory).unwrap();
    /// let e = heap.alloc(&AllocRequest::new(8, DomId(1))).unwrap();
    /// for i in 0..256 {
    ///     heap.pin_in_place(scrubheap::Mfn(e.mfn.0 + i), 0, DomId(1)).unwrap(); // 256 chunks
    /// }
    /// let mut job = heap.range_start(RangeOp::Unpin, e.mfn, 8, DomId(1)).unwrap();
    /// // Yield after every step: a real caller would reschedule between the calls.
    /// while job.advance(&NoMigration, &|| true).unwrap().is_none() {}
    /// heap.free(e.mfn, 8, DomId(1)).unwrap_err(); // 256 chunks: too many for one call
    /// heap.range_preemptible(RangeOp::Free, e.mfn, 8, DomId(1), &NoMigration, &|| false).unwrap();
    /// heap.check_invariants().unwrap();
    /// ```
    pub fn range_start(&self, op: RangeOp, mfn: Mfn, order: u8, owner: DomId) -> Result<RangeJob<'_, M>, HeapError> {
        let (node, off) = self.locate(mfn, order)?;
        self.settle(node, off, 1 << order);
        let end = off + size(order);
        debug_assert!(off < end);
        Ok(RangeJob {
            heap: self,
            op,
            mfn,
            order,
            owner,
            node,
            off,
            end,
            phase: Phase::Mark,
            first: off,
            pos: off,
            marked: off,
            movable_zone: false,
            movable: true,
            pinned: None,
            to: Extent { mfn, order, node },
            moving: None,
            error: None,
            ids: Vec::new(),
        })
    }

    /// Takes a long-term pin on `[mfn, 2^order)`, which `owner` must hold: a whole
    /// allocation or any aligned part of one. Parts already pinned are pinned once more.
    ///
    /// If any frame of the range is in the Movable zone, the whole range is first moved to
    /// a free chunk of Normal memory (the nearest node first) through `migrator`; the
    /// frames it leaves become free and dirty. Returns where the pinned frames are now.
    /// If no Normal memory is free or the migrator refuses, the pin is refused and
    /// nothing changes. The move copies in pieces of at most one batch and asks `preempt`
    /// between two pieces (see [`Migrator`]); the range is checked and marked, and
    /// committed, [`CHUNKS_PER_STEP`](crate::CHUNKS_PER_STEP) chunks at a time with a point
    /// between two steps. This form is one call: it cannot stop halfway, so a `true` from
    /// `preempt` does not end it early; the check is a point where a runtime may
    /// reschedule the thread (inside [`Preempt::check`]) and where it measures its
    /// sections. A caller that must return to its scheduler drives a [`PinJob`]
    /// ([`Heap::pin_start`]) itself.
    ///
    /// ```
    /// use scrubheap::{AllocRequest, DomId, Heap, HeapConfig, MetadataMigrator, NeverPreempt, NullMemory, Zone};
    /// let heap = Heap::new(HeapConfig::uniform(1, 1 << 12).with_movable_from(1 << 11), NullMemory).unwrap();
    /// let ext = heap.alloc(&AllocRequest::new(9, DomId(1)).movable()).unwrap();
    /// assert_eq!(heap.chunk_at(ext.mfn).unwrap().zone, Zone::Movable);
    /// // Pin one frame of it: it moves to Normal memory first.
    /// let pinned = heap.pin(ext.mfn, 0, DomId(1), &MetadataMigrator, &NeverPreempt).unwrap();
    /// assert_eq!(heap.chunk_at(pinned.mfn).unwrap().zone, Zone::Normal);
    /// heap.unpin(pinned.mfn, 0, DomId(1)).unwrap();
    /// heap.check_invariants().unwrap();
    /// ```
    pub fn pin(
        &self,
        mfn: Mfn,
        order: u8,
        owner: DomId,
        migrator: &dyn Migrator,
        preempt: &dyn Preempt,
    ) -> Result<Extent, HeapError> {
        self.range_preemptible(RangeOp::Pin, mfn, order, owner, migrator, preempt)
    }

    /// Starts a long-term pin of `[mfn, 2^order)` as a job: [`Heap::range_start`] with
    /// [`RangeOp::Pin`]. Its move out of the Movable zone (see [`Heap::pin`]) copies one
    /// piece of at most one batch a step; the job ends with where the pinned frames are.
    pub fn pin_start(&self, mfn: Mfn, order: u8, owner: DomId) -> Result<PinJob<'_, M>, HeapError> {
        self.range_start(RangeOp::Pin, mfn, order, owner)
    }

    /// [`Heap::range_start`] driven to its end in one call, asking `preempt` between two
    /// steps. The call cannot stop halfway, so a `true` from `preempt` does not end it
    /// early (a runtime may reschedule inside [`Preempt::check`]). Returns where the
    /// frames are (a pin's destination).
    pub fn range_preemptible(
        &self,
        op: RangeOp,
        mfn: Mfn,
        order: u8,
        owner: DomId,
        migrator: &dyn Migrator,
        preempt: &dyn Preempt,
    ) -> Result<Extent, HeapError> {
        let mut job = self.range_start(op, mfn, order, owner)?;
        loop {
            if let Some(done) = job.advance(migrator, preempt)? {
                return Ok(done);
            }
        }
    }

    /// Frees the whole held chunks of `[pos, end)` of a node (at most
    /// [`CHUNKS_PER_STEP`](crate::CHUNKS_PER_STEP) of them), validated by the caller:
    /// back to the free lists, or under the `sync` policy marked for zeroing outside the
    /// lock (`ids`). A frame marked broken leaves service. Returns where it stopped and
    /// the chunks walked.
    pub(crate) fn free_chunks(
        st: &mut NodeState,
        mut pos: Off,
        end: Off,
        sync: bool,
        ids: &mut Vec<(u64, Off, u8)>,
    ) -> (Off, u64) {
        let mut walked = 0u64;
        while walked < CHUNKS_PER_STEP as u64 && pos < end {
            let (h, o) = st.chunk_of(pos);
            debug_assert_eq!(h, pos, "the range is whole chunks");
            st.allocated -= size(o) as u64;
            if Self::retire_broken(st, h) {
                // A frame marked broken while allocated leaves service now.
            } else if sync {
                // Zeroed outside the lock; counted as allocated until it is back.
                st.allocated += size(o) as u64;
                st.set_state(h, State::Scrubbing, o);
                ids.push((st.add_work(h, o, Kind::SyncFree), h, o));
            } else {
                st.clear_head(h);
                st.release(h, o, false);
            }
            pos += size(o);
            walked += 1;
        }
        (pos, walked)
    }

    /// The `sync` policy's end of a free: zeroes the chunks [`Heap::free_chunks`] marked,
    /// with no lock held, then returns them to the free lists clean.
    pub(crate) fn finish_sync_free(&self, n: usize, ids: &[(u64, Off, u8)]) {
        if ids.is_empty() {
            return;
        }
        let cell = self.cell(n);
        for &(_, h, o) in ids {
            self.memory().zero(cell.mfn(h), size(o) as u64);
        }
        let mut st = self.lock_node(n);
        let mut frames = 0u64;
        for &(id, h, o) in ids {
            let i = st.work_index(id);
            st.work.swap_remove(i);
            st.allocated -= size(o) as u64;
            st.clear_head(h);
            st.release(h, o, true);
            frames += size(o) as u64;
        }
        drop(st);
        self.account(n, Source::Sync, frames);
    }

    /// Refuses (`FreeError::TooManyChunks`) a held range `[off, 2^order)` made of more
    /// than [`CHUNKS_PER_STEP`] chunks, looking at one more than that at most.
    pub(crate) fn check_fragments(st: &NodeState, off: Off, order: u8) -> Result<(), HeapError> {
        let end = off + size(order);
        let mut pos = st.chunk_of(off).0;
        for _ in 0..CHUNKS_PER_STEP {
            if pos >= end {
                return Ok(());
            }
            let (h, o) = st.chunk_of(pos);
            pos = h + size(o);
        }
        if pos >= end {
            return Ok(());
        }
        Err(HeapError::Free(FreeError::TooManyChunks { mfn: st.mfn(off), order, limit: CHUNKS_PER_STEP }))
    }
}

impl<'h, M: FrameMemory> RangeJob<'h, M> {
    /// Runs bounded steps until the job ends (`Some` with where the frames are: a pin's
    /// destination, else the range; or the error that refused it, the heap as it was),
    /// or until `preempt` asks to yield (`None`: call again later). `migrator` moves a
    /// pin's frames out of the Movable zone; other operations never call it. A job that
    /// has ended refuses with `HeapError::JobFinished`.
    pub fn advance(&mut self, migrator: &dyn Migrator, preempt: &dyn Preempt) -> Result<Option<Extent>, HeapError> {
        if self.phase == Phase::Done {
            return Err(HeapError::JobFinished { job: self.op.name(), first: self.mfn });
        }
        let batch = batch_frames(self.heap.config().scrub_batch, preempt);
        loop {
            if let Some(r) = self.step(migrator, batch, preempt) {
                debug_assert!(self.phase == Phase::Done && self.moving.is_none());
                return r.map(Some);
            }
            if preempt.check() {
                return Ok(None);
            }
        }
    }

    /// Stops a job that has not reached its commit: the next steps take the marks off
    /// and it ends with `HeapError::JobCancelled`, the heap as it was (a move in progress
    /// is abandoned; its owner keeps its frames). A job in its commit is past its point
    /// of no return and finishes; an ended job is left as it is.
    pub fn cancel(&mut self) {
        if matches!(self.phase, Phase::Mark | Phase::Move) {
            self.roll_back(HeapError::JobCancelled { job: self.op.name(), first: self.mfn });
        }
    }

    /// The range: first frame and order.
    pub fn range(&self) -> (Mfn, u8) {
        (self.mfn, self.order)
    }

    /// Whether the job has passed its point of no return (it will finish).
    pub fn committed(&self) -> bool {
        matches!(self.phase, Phase::Commit | Phase::Done) && self.error.is_none()
    }

    /// One bounded step; `Some` when the job ends.
    fn step(
        &mut self,
        migrator: &dyn Migrator,
        batch: u64,
        preempt: &dyn Preempt,
    ) -> Option<Result<Extent, HeapError>> {
        match self.phase {
            Phase::Mark => self.step_mark(preempt),
            Phase::Move => self.step_move(migrator, batch),
            Phase::Commit => return self.step_commit(preempt),
            Phase::Unmark => return self.step_unmark(preempt),
            Phase::Done => unreachable!("advance refuses an ended job"),
        }
        None
    }

    /// Turns to taking the marks off, to end with `error`.
    fn roll_back(&mut self, error: HeapError) {
        if let Some(mv) = self.moving.take() {
            self.heap.abandon_move(&mv);
        }
        self.error = Some(error);
        self.phase = Phase::Unmark;
        self.pos = self.first;
    }

    /// Validates and marks up to [`CHUNKS_PER_STEP`] chunks; the last step turns to the
    /// move or the commit.
    fn step_mark(&mut self, preempt: &dyn Preempt) {
        let heap = self.heap;
        let mut st = heap.lock_node(self.node);
        let mut walked = 0u64;
        let mut refused = None;
        while walked < CHUNKS_PER_STEP as u64 && self.pos < self.end {
            let (h, o) = st.chunk_of(self.pos);
            if let Err(e) = self.look(&st, h, o) {
                refused = Some(e);
                break;
            }
            if self.pos == self.off {
                self.first = h;
            }
            st.set_migrating(h, true);
            self.pos = h + size(o);
            self.marked = self.pos;
            walked += 1;
        }
        drop(st);
        preempt.walked(walked);
        if let Some(e) = refused {
            return self.roll_back(e.into());
        }
        if self.pos < self.end {
            return;
        }
        if self.op == RangeOp::Pin && self.movable_zone {
            if let Some(h) = self.pinned {
                // Only a pin taken in place (the baseline) leaves pins in the Movable zone.
                let mfn = self.heap.cell(self.node).mfn(h);
                return self.roll_back(HeapError::Free(FreeError::Pinned { mfn, owner: self.owner }));
            }
            let from = Extent { mfn: self.mfn, order: self.order, node: self.node };
            match self.heap.begin_move(self.owner, from, self.movable, &[Zone::Normal]) {
                Ok(mv) => {
                    self.moving = Some(mv);
                    self.phase = Phase::Move;
                }
                Err(e) => self.roll_back(e),
            }
            return;
        }
        self.phase = Phase::Commit;
        self.pos = self.first;
    }

    /// Checks one chunk of the range for the job's operation, as [`Heap::free`],
    /// [`Heap::pin`] and the others check the whole range.
    fn look(&mut self, st: &NodeState, h: Off, o: u8) -> Result<(), FreeError> {
        let s = st.head(h);
        let (owner, off) = (self.owner, self.off);
        let first = self.pos == off;
        match s.state {
            State::Allocated if s.owner == owner => {}
            State::Allocated if first => {
                return Err(FreeError::WrongOwner { mfn: st.mfn(off), owner, actual: s.owner })
            }
            State::Pending if first && s.owner == owner => {
                return Err(FreeError::Busy { mfn: st.mfn(off), what: "still being scrubbed for its owner" })
            }
            _ if first => return Err(FreeError::NotAllocated { mfn: st.mfn(off) }),
            _ => {
                let beyond = st.mfn(self.pos);
                return Err(FreeError::OrderTooLarge { mfn: st.mfn(off), order: self.order, owner, beyond });
            }
        }
        let mfn = st.mfn(h.max(off));
        if s.migrating {
            return Err(FreeError::Busy { mfn, what: "being migrated" });
        }
        if s.sealed != self.op.sealed() {
            return Err(if s.sealed { FreeError::Sealed { mfn, owner } } else { FreeError::NotSealed { mfn, owner } });
        }
        match self.op {
            RangeOp::Free | RangeOp::FreeSealed if s.pins > 0 => Err(FreeError::Pinned { mfn, owner }),
            RangeOp::Unpin if s.pins == 0 => Err(FreeError::NotPinned { mfn, owner }),
            RangeOp::Pin | RangeOp::PinInPlace if s.pins == u32::MAX => Err(FreeError::PinLimit { mfn }),
            _ => {
                self.movable_zone |= st.zone_of(h) == Zone::Movable;
                self.movable &= s.movable;
                if s.pins > 0 && self.pinned.is_none() {
                    self.pinned = Some(h);
                }
                debug_assert!(h + size(o) > self.pos);
                Ok(())
            }
        }
    }

    /// One piece of a pin's move; the last one switches the owner to the destination,
    /// which keeps one pin, and the commit frees the frames left behind.
    fn step_move(&mut self, migrator: &dyn Migrator, batch: u64) {
        let mut mv = self.moving.take().expect("a move is in progress");
        match self.heap.move_piece(&mut mv, migrator, batch) {
            MoveStep::Copied => self.moving = Some(mv),
            MoveStep::Switched => {
                self.heap.finish_destination(mv.to, true, 1, true);
                self.to = mv.to;
                self.phase = Phase::Commit;
                self.pos = self.first;
            }
            MoveStep::Refused => {
                // `move_piece` gave the destination back already.
                let e = HeapError::MigrationRefused { mfn: self.mfn, order: self.order, owner: self.owner };
                self.error = Some(e);
                self.phase = Phase::Unmark;
                self.pos = self.first;
            }
        }
    }

    /// Commits up to [`CHUNKS_PER_STEP`] marked chunks; the last step ends the job.
    fn step_commit(&mut self, preempt: &dyn Preempt) -> Option<Result<Extent, HeapError>> {
        let heap = self.heap;
        let mut st = heap.lock_node(self.node);
        if st.chunk_of(self.off).1 > self.order {
            // The range is inside one larger chunk, marked whole: split it out, unmarked
            // around it.
            st.set_migrating(self.first, false);
            Heap::<M>::split_to(&mut st, self.off, self.order);
            st.set_migrating(self.off, true);
            self.first = self.off;
            self.pos = self.off;
        }
        let frees = self.op.frees() || self.moving_done();
        let (pos, walked) = if frees {
            let sync = self.op.frees() && heap.config().policy.scrubs_on_free();
            Heap::<M>::free_chunks(&mut st, self.pos, self.end, sync, &mut self.ids)
        } else {
            self.repin(&mut st)
        };
        self.pos = pos;
        drop(st);
        heap.finish_sync_free(self.node, &self.ids);
        self.ids.clear();
        preempt.walked(walked);
        if self.pos < self.end {
            return None;
        }
        self.phase = Phase::Done;
        Some(Ok(self.to))
    }

    /// Whether the frames of the range have moved away (a pin out of the Movable zone).
    fn moving_done(&self) -> bool {
        self.op == RangeOp::Pin && self.to.mfn != self.mfn
    }

    /// Adds (or for an unpin takes) one pin to up to [`CHUNKS_PER_STEP`] marked chunks,
    /// unmarking them. Returns where it stopped and the chunks walked.
    fn repin(&self, st: &mut NodeState) -> (Off, u64) {
        let (mut pos, mut walked) = (self.pos, 0u64);
        while walked < CHUNKS_PER_STEP as u64 && pos < self.end {
            let (h, o) = st.chunk_of(pos);
            debug_assert!(h == pos && st.head(h).migrating);
            st.set_migrating(h, false);
            let pins = st.head(h).pins;
            st.set_pins(h, if self.op == RangeOp::Unpin { pins - 1 } else { pins + 1 });
            pos = h + size(o);
            walked += 1;
        }
        (pos, walked)
    }

    /// Takes the marks off up to [`CHUNKS_PER_STEP`] chunks; the last step ends the job
    /// with its error.
    fn step_unmark(&mut self, preempt: &dyn Preempt) -> Option<Result<Extent, HeapError>> {
        let heap = self.heap;
        let mut st = heap.lock_node(self.node);
        let mut walked = 0u64;
        let marked_end = self.marked;
        while walked < CHUNKS_PER_STEP as u64 && self.pos < marked_end {
            let (h, o) = st.chunk_of(self.pos);
            st.set_migrating(h, false);
            self.pos = h + size(o);
            walked += 1;
        }
        drop(st);
        preempt.walked(walked);
        if self.pos < marked_end {
            return None;
        }
        self.phase = Phase::Done;
        Some(Err(self.error.take().expect("a rolled-back job has its error")))
    }
}
