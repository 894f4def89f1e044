//! Offline and online (memory hot-remove and hot-add), and broken frames.
//!
//! [`Heap::offline_start`] empties a range of frames through an [`OfflineJob`] the caller
//! advances in bounded steps, yielding between them: it scans the range, isolates the
//! free chunks (asking background scrubbers to hand theirs back), moves movable unpinned
//! allocations out through the owner's [`Migrator`] one batch-sized piece at a time, and
//! then takes the range out of service. Every step walks at most [`CHUNKS_PER_STEP`]
//! chunks or copies one piece; a chunk another operation holds makes the job yield, not
//! spin. It never loops unbounded: at the caller's [`Deadline`], on a frame that cannot
//! move (unmovable, long-term pinned, refused by its migrator), or when dropped, it rolls
//! back and says which frames and owners blocked it. The heap has no clock: the caller's
//! `Deadline` maps steps to wall time (a host) or simulated time (a simulator).

use crate::blocker::OfflineError;
use crate::blocker::{BlockReason, Blocker, OfflineStop};
use crate::chunk::State;
use crate::claims::ClaimError;
use crate::error::HeapError;
use crate::heap::{Extent, Heap, NodeGuard};
use crate::memory::FrameMemory;
use crate::node::FreeError;
use crate::node::NodeState;
use crate::pin::{Migrator, Move, MoveStep};
use crate::preempt::{batch_frames, NeverPreempt, Preempt};
use crate::reserve::RESERVE_OWNER;
use crate::types::RangeError;
use crate::types::{DomId, Mfn, Off, Zone};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::cell::Cell;

/// The most blockers an offline reports (the first ones in frame order).
pub const MAX_BLOCKERS: usize = 16;

/// Chunks an offline or online step walks at most under one hold of the node lock: the
/// named bound on metadata walked between two preemption points of these operations.
pub const CHUNKS_PER_STEP: usize = 64;

/// How many times an offline looks again at a chunk another operation holds (a scrub
/// being handed back, a move, a scrub ticket) before it counts it as a blocker, whatever
/// its deadline. A handback or a move takes at most one batch or one copy; this bound
/// only matters for a scrub ticket its owner does not advance.
pub const MAX_BUSY_POLLS: u64 = crate::ticket::MAX_WAIT_POLLS;

/// Chunks a rolled-back offline scans past its stopping point for owners to report.
const BLOCKER_SCAN: usize = 4096;

#[inline]
fn size(order: u8) -> u32 {
    1u32 << order
}

/// When a long operation must give up. Asked between bounded steps (a batch of chunks,
/// one move); the heap itself has no clock.
pub trait Deadline {
    /// Whether the deadline has passed.
    fn passed(&self) -> bool;
}

impl<F: Fn() -> bool> Deadline for F {
    fn passed(&self) -> bool {
        self()
    }
}

/// A deadline that never passes. An offline with it still ends: every step is bounded
/// and a chunk that stays busy becomes a blocker after [`MAX_BUSY_POLLS`] looks.
#[derive(Copy, Clone, Debug, Default)]
pub struct NoDeadline;

impl Deadline for NoDeadline {
    fn passed(&self) -> bool {
        false
    }
}

/// A deadline counted in steps: it passes at the `n+1`-th look.
#[derive(Debug)]
pub struct StepBudget {
    left: Cell<u64>,
}

impl StepBudget {
    /// A budget of `steps` looks.
    pub fn new(steps: u64) -> Self {
        StepBudget { left: Cell::new(steps) }
    }
}

impl Deadline for StepBudget {
    fn passed(&self) -> bool {
        match self.left.get() {
            0 => true,
            n => {
                self.left.set(n - 1);
                false
            }
        }
    }
}

/// What a completed offline did.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Offlined {
    /// Frames this offline took out of service (frames already offline or broken are not
    /// counted).
    pub frames: u64,
    /// Allocations moved out of the range.
    pub migrated_chunks: u64,
    /// Their frames.
    pub migrated_frames: u64,
    /// Background scrubs asked to hand a chunk back.
    pub aborted_scrubs: u64,
    /// Bounded steps taken (those of the isolation and the moves asked the deadline first).
    pub steps: u64,
}

/// What [`Heap::mark_broken`] did.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Broken {
    /// The frame was free (or offline) and is out of service now.
    Now,
    /// The frame is allocated; it leaves service when its owner frees it.
    WhenFreed,
    /// The frame was already broken (or already marked).
    Already,
}

/// Where an offline stands.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Looking for unmovable and pinned allocations: nothing taken yet.
    Scan,
    /// Isolating the free chunks of the range.
    Isolate,
    /// Moving the movable allocations out.
    Migrate,
    /// Turning the isolated chunks offline.
    Commit,
    /// Stopped: naming the allocations not reached, before the roll-back.
    Report,
    /// Stopped: giving the isolated chunks back.
    RollBack,
    /// Completed, refused or rolled back: nothing left to do.
    Done,
}

/// What one bounded step of an offline asks of [`OfflineJob::advance`].
enum Step {
    /// The step made progress: a preemption point, then the next step.
    Continue,
    /// A chunk the offline needs is busy (a scrub being handed back, a move, a ticket):
    /// yield instead of spinning.
    Wait,
    /// The offline ended.
    Finished(Result<Offlined, HeapError>),
}

/// An offline in progress, advanced in bounded steps: see [`Heap::offline_start`].
///
/// Each call to [`OfflineJob::advance`] runs steps (each walking at most
/// [`CHUNKS_PER_STEP`] chunks under one hold of the node lock, or copying one piece of a
/// move, at most one batch of frames), asking its [`Preempt`] between two steps, until
/// the offline completes, is refused or rolls back, the `Preempt` says to yield, or a
/// chunk it needs is busy. Dropping an unfinished job rolls it back at once: an
/// unfinished move is abandoned (its owner keeps its frames) and every frame the job
/// isolated returns to the free lists as it was; that roll-back walks the isolated chunks
/// with no preemption point, so a caller that must stay preemptible calls
/// [`OfflineJob::cancel`] and advances the job to its end instead.
pub struct OfflineJob<'h, M: FrameMemory> {
    heap: &'h Heap<M>,
    first: Mfn,
    count: u64,
    node: usize,
    lo: Off,
    hi: Off,
    phase: Phase,
    /// The next frame (node-relative) the current phase looks at.
    pos: Off,
    /// Chunks this offline isolated: head to order.
    isolated: BTreeMap<Off, u8>,
    /// The chunks the commit or roll-back has yet to walk.
    pending: Vec<(Off, u8)>,
    done: Offlined,
    /// The chunk being waited for, and how many looks so far.
    busy: Option<(Off, u64)>,
    /// The move in progress: the head of the chunk it moves from, and the move.
    moving: Option<(Off, Move)>,
    /// Why the offline stopped, and the blockers named so far.
    stop: Option<OfflineStop>,
    blockers: Vec<Blocker>,
    /// Chunks looked at by the report.
    reported: usize,
}

impl<M: FrameMemory> Drop for OfflineJob<'_, M> {
    fn drop(&mut self) {
        match self.phase {
            Phase::Done => {}
            // The range is empty already: finishing the commit is metadata only.
            Phase::Commit => while !matches!(self.step_commit(&NeverPreempt), Step::Finished(_)) {},
            _ => {
                self.cancel();
                while !matches!(self.step_roll_back(), Step::Finished(_)) {}
            }
        }
    }
}

impl<'h, M: FrameMemory> OfflineJob<'h, M> {
    /// Runs bounded steps until the offline ends (`Some` with what it did, or the
    /// error that refused or rolled it back), or until it should yield (`None`:
    /// `preempt` asked to, or a chunk it needs is busy; call again later). `deadline`
    /// is asked before each step of the isolation and moves; when it has passed
    /// the offline rolls back. A job that has ended refuses with
    /// `OfflineError::OfflineFinished`.
    pub fn advance(
        &mut self,
        migrator: &dyn Migrator,
        deadline: &dyn Deadline,
        preempt: &dyn Preempt,
    ) -> Result<Option<Offlined>, HeapError> {
        if self.phase == Phase::Done {
            return Err(HeapError::Offline(OfflineError::OfflineFinished { first: self.first, count: self.count }));
        }
        let batch = batch_frames(self.heap.config().scrub_batch, preempt);
        loop {
            let working = matches!(self.phase, Phase::Isolate | Phase::Migrate);
            if working && deadline.passed() {
                self.stop_at(OfflineStop::Deadline);
            }
            self.done.steps += 1;
            let step = self.step(migrator, batch, preempt);
            match step {
                Step::Finished(r) => {
                    self.phase = Phase::Done;
                    debug_assert!(self.moving.is_none() && self.pending.is_empty());
                    return r.map(Some);
                }
                Step::Wait => {
                    preempt.check();
                    return Ok(None);
                }
                Step::Continue if preempt.check() => return Ok(None),
                Step::Continue => {}
            }
        }
    }

    /// Stops the offline: the next steps roll it back, and it ends with
    /// `OfflineError::OfflineBlocked` (stop: deadline passed). Does nothing to a job that
    /// has ended or is already rolling back.
    pub fn cancel(&mut self) {
        if matches!(self.phase, Phase::Scan | Phase::Isolate | Phase::Migrate) {
            self.stop_at(OfflineStop::Deadline);
        }
    }

    /// The range this job takes out of service: first frame and count.
    pub fn range(&self) -> (Mfn, u64) {
        (self.first, self.count)
    }

    /// What the job has done so far (frames are counted when it completes).
    pub fn progress(&self) -> Offlined {
        self.done
    }

    fn step(&mut self, migrator: &dyn Migrator, batch: u64, preempt: &dyn Preempt) -> Step {
        match self.phase {
            Phase::Scan => self.step_scan(preempt),
            Phase::Isolate | Phase::Migrate if self.moving.is_some() => self.step_move(migrator, batch),
            Phase::Isolate | Phase::Migrate => self.step_range(preempt),
            Phase::Commit => self.step_commit(preempt),
            Phase::Report => self.step_report(preempt),
            Phase::RollBack => self.step_roll_back(),
            Phase::Done => unreachable!("advance refuses a finished job"),
        }
    }

    /// Stops the work phases: abandons a move in progress and turns to the report.
    fn stop_at(&mut self, stop: OfflineStop) {
        debug_assert!(matches!(self.phase, Phase::Scan | Phase::Isolate | Phase::Migrate));
        if let Some((h, mv)) = self.moving.take() {
            self.heap.abandon_move(&mv);
            self.heap.unmark_migrating(self.node, h);
            self.blockers.push(Blocker {
                first: mv.from.mfn,
                frames: mv.from.frames(),
                owner: Some(mv.owner),
                reason: BlockReason::NotReached,
            });
        } else if let Some((h, _)) = self.busy.take() {
            self.blockers.extend(self.heap.blocker_at(self.node, h, BlockReason::Busy));
        }
        self.stop = Some(stop);
        self.phase = if stop == OfflineStop::Deadline { Phase::Report } else { Phase::RollBack };
        self.reported = 0;
        self.pending = self.isolated.iter().map(|(&h, &o)| (h, o)).collect();
    }

    /// Up to [`CHUNKS_PER_STEP`] chunks of the first scan: unmovable and pinned
    /// allocations refuse the offline before anything is taken.
    fn step_scan(&mut self, preempt: &dyn Preempt) -> Step {
        let (pos, walked) = self.heap.scan_blockers(self.node, self.pos, self.hi, false, &mut self.blockers);
        preempt.walked(walked);
        self.pos = pos;
        if self.blockers.len() >= MAX_BLOCKERS || self.pos >= self.hi {
            if !self.blockers.is_empty() {
                self.blockers.truncate(MAX_BLOCKERS);
                let blockers = core::mem::take(&mut self.blockers);
                return Step::Finished(Err(self.refusal(OfflineStop::Blocked, blockers).into()));
            }
            self.phase = Phase::Isolate;
            self.pos = self.lo;
        }
        Step::Continue
    }

    /// Up to [`CHUNKS_PER_STEP`] chunks of the report of a stopped offline: the
    /// allocations it had not reached.
    fn step_report(&mut self, preempt: &dyn Preempt) -> Step {
        let full = self.blockers.len() >= MAX_BLOCKERS || self.reported >= BLOCKER_SCAN;
        if !full && self.pos < self.hi {
            let (pos, walked) = self.heap.scan_blockers(self.node, self.pos, self.hi, true, &mut self.blockers);
            preempt.walked(walked);
            self.pos = pos;
            self.reported += walked as usize;
            return Step::Continue;
        }
        self.blockers.truncate(MAX_BLOCKERS);
        self.phase = Phase::RollBack;
        Step::Continue
    }

    /// Up to [`CHUNKS_PER_STEP`] isolated chunks given back; the last step ends the
    /// offline with its refusal.
    fn step_roll_back(&mut self) -> Step {
        let take = core::cmp::min(CHUNKS_PER_STEP, self.pending.len());
        let batch: Vec<(Off, u8)> = self.pending.drain(..take).collect();
        self.heap.roll_back(self.node, &batch);
        if !self.pending.is_empty() {
            return Step::Continue;
        }
        self.isolated.clear();
        self.phase = Phase::Done;
        let stop = self.stop.unwrap_or(OfflineStop::Deadline);
        let blockers = core::mem::take(&mut self.blockers);
        Step::Finished(Err(self.refusal(stop, blockers).into()))
    }

    /// Up to [`CHUNKS_PER_STEP`] isolated chunks turned offline; the last step completes.
    fn step_commit(&mut self, preempt: &dyn Preempt) -> Step {
        let take = core::cmp::min(CHUNKS_PER_STEP, self.pending.len());
        let batch: Vec<(Off, u8)> = self.pending.drain(..take).collect();
        self.heap.commit(self.node, &batch);
        preempt.walked(take as u64);
        if !self.pending.is_empty() {
            return Step::Continue;
        }
        self.done.frames = self.isolated.values().map(|&o| size(o) as u64).sum();
        self.isolated.clear();
        Step::Finished(Ok(self.done))
    }

    /// One piece of the move in progress (at most `batch` frames); the last piece
    /// switches the owner and the moved frames join the isolated ones.
    fn step_move(&mut self, migrator: &dyn Migrator, batch: u64) -> Step {
        let (h, mut mv) = self.moving.take().expect("a move is in progress");
        match self.heap.move_piece(&mut mv, migrator, batch) {
            MoveStep::Copied => {
                self.moving = Some((h, mv));
                Step::Continue
            }
            MoveStep::Switched => {
                self.heap.finish_destination(mv.to, true, 0, true);
                let from = mv.from;
                let off = Off::of(from.mfn, self.heap.cell(self.node).base);
                for (ph, po) in self.heap.vacate_isolated(self.node, off, from.order) {
                    self.isolated.insert(ph, po);
                }
                self.done.migrated_chunks += 1;
                self.done.migrated_frames += from.frames();
                self.pos = off + size(from.order);
                Step::Continue
            }
            MoveStep::Refused => {
                self.heap.unmark_migrating(self.node, h);
                let b = Blocker {
                    first: mv.from.mfn,
                    frames: mv.from.frames(),
                    owner: Some(mv.owner),
                    reason: BlockReason::MigrationRefused,
                };
                self.blockers.push(b);
                self.stop_at(OfflineStop::Blocked);
                Step::Continue
            }
        }
    }

    fn refusal(&self, stop: OfflineStop, blockers: Vec<Blocker>) -> OfflineError {
        OfflineError::OfflineBlocked { first: self.first, count: self.count, stop, blockers }
    }

    /// Up to [`CHUNKS_PER_STEP`] chunks of the isolation or migration pass.
    fn step_range(&mut self, preempt: &dyn Preempt) -> Step {
        let migrate = self.phase == Phase::Migrate;
        let heap = self.heap;
        let (out, walked) = heap.offline_chunks(self, migrate);
        preempt.walked(walked);
        match out {
            Chunks::More | Chunks::Again => Step::Continue,
            Chunks::End if migrate => {
                self.phase = Phase::Commit;
                self.pending = self.isolated.iter().map(|(&h, &o)| (h, o)).collect();
                Step::Continue
            }
            Chunks::End => {
                self.phase = Phase::Migrate;
                self.pos = self.lo;
                Step::Continue
            }
            Chunks::Move(h, from) => {
                match self.heap.begin_move(DomId(from.1), from.0, true, &[Zone::Movable, Zone::Normal]) {
                    Ok(mv) => {
                        self.moving = Some((h, mv));
                        Step::Continue
                    }
                    Err(e) => {
                        self.heap.unmark_migrating(self.node, h);
                        let reason = match e {
                            HeapError::OutOfMemory { .. } => BlockReason::NoMemory,
                            _ => BlockReason::MigrationRefused,
                        };
                        let b =
                            Blocker { first: from.0.mfn, frames: from.0.frames(), owner: Some(DomId(from.1)), reason };
                        self.blockers.push(b);
                        self.stop_at(OfflineStop::Blocked);
                        Step::Continue
                    }
                }
            }
            Chunks::Wait => Step::Wait,
            Chunks::Blocked(b) => {
                self.blockers.push(b);
                self.stop_at(OfflineStop::Blocked);
                Step::Continue
            }
        }
    }
}

/// What one walk of the isolation or migration pass found.
enum Chunks {
    /// Walked its chunks; more of the range is left.
    More,
    /// Reached the end of the range.
    End,
    /// A movable allocation to move: the head of its chunk, the part to move and its owner.
    Move(Off, (Extent, u32)),
    /// A chunk it needs is busy: look again later.
    Wait,
    /// A chunk that blocks the offline.
    Blocked(Blocker),
    /// The chunk changed (a reserve block settled): look at the same frame again.
    Again,
}

impl<M: FrameMemory> Heap<M> {
    /// Validates `count` frames from `first` inside one node: the node and offsets.
    pub(crate) fn locate_range(&self, first: Mfn, count: u64) -> Result<(usize, Off, Off), RangeError> {
        let n = self.frame_node(first)?;
        let (base, end) = (self.cell(n).base, self.cell(n).base + self.cell(n).frames);
        match first.0.checked_add(count) {
            Some(e) if count > 0 && e <= end => Ok((n, Off::of(first, base), Off::of(Mfn(e), base))),
            _ => Err(RangeError::BadRange { first, count }),
        }
    }

    /// Starts taking `count` frames from `first` (inside one node, any alignment) out of
    /// service; the returned [`OfflineJob`] does the work in bounded steps.
    ///
    /// The job first scans the range: an unmovable or pinned allocation refuses the
    /// offline (`OfflineError::OfflineBlocked`, stop: blocked, naming them) and nothing
    /// changes. Then it isolates the free chunks of the range (asking background
    /// scrubbers to hand theirs back), moves each movable allocation of the range (or the
    /// part of it inside the range) to free memory elsewhere, movable memory first,
    /// through the owner's [`Migrator`] in pieces of at most one batch, and finally marks
    /// the range offline. Frames already offline or broken stay so.
    ///
    /// If the deadline passes, the job is cancelled or dropped, or a frame cannot be
    /// moved (its migrator refuses, no memory is free, it stays busy for
    /// [`MAX_BUSY_POLLS`] looks), the offline rolls back: every frame it isolated returns
    /// to the free lists as it was (clean or dirty), and the error names the blockers.
    /// Allocations it had already moved stay where they moved: their owners were
    /// remapped, and moving back would cost another copy and could itself fail. A move
    /// cut short leaves its owner where it was.
    ///
    /// ```
    /// use scrubheap::{AllocRequest, DomId, Heap, HeapConfig, MetadataMigrator, Mfn, NoDeadline, NullMemory};
    /// let heap = Heap::new(HeapConfig::uniform(1, 1 << 12).with_movable_from(1 << 11), NullMemory).unwrap();
    /// let a = heap.alloc(&AllocRequest::new(4, DomId(1)).movable()).unwrap();
    /// let mut job = heap.offline_start(Mfn(1 << 11), 1 << 11).unwrap();
    /// // Yield after every step: a real caller would reschedule between the calls.
    /// let done = loop {
    ///     if let Some(done) = job.advance(&MetadataMigrator, &NoDeadline, &|| true).unwrap() {
    ///         break done;
    ///     }
    /// };
    /// assert_eq!(done.migrated_chunks, 1);
    /// assert_eq!(heap.stats().offline, 1 << 11);
    /// heap.online(Mfn(1 << 11), 1 << 11, &|| true).unwrap();
    /// assert_eq!(heap.stats().offline, 0);
    /// heap.check_invariants().unwrap();
    /// # let _ = a;
    /// ```
    pub fn offline_start(&self, first: Mfn, count: u64) -> Result<OfflineJob<'_, M>, HeapError> {
        let (node, lo, hi) = self.locate_range(first, count)?;
        debug_assert!(lo < hi);
        // Reserve blocks of the per-CPU fast path in the range go back to ordinary state
        // first; a block refilled from the range later is settled where the walk meets it.
        self.settle(node, lo, (hi - lo) as u64);
        Ok(OfflineJob {
            heap: self,
            first,
            count,
            node,
            lo,
            hi,
            phase: Phase::Scan,
            pos: lo,
            isolated: BTreeMap::new(),
            pending: Vec::new(),
            done: Offlined::default(),
            busy: None,
            moving: None,
            stop: None,
            blockers: Vec::new(),
            reported: 0,
        })
    }

    /// [`Heap::offline_start`] driven to its end in one call: the same bounded steps,
    /// asking `preempt` between two of them. The call cannot stop halfway, so a `true`
    /// from `preempt` does not end it early (a runtime may reschedule inside
    /// [`Preempt::check`]); a chunk the offline waits for makes it relax and look again,
    /// at most [`MAX_BUSY_POLLS`] times. A caller that must return to its scheduler
    /// drives the job itself.
    pub fn offline(
        &self,
        first: Mfn,
        count: u64,
        migrator: &dyn Migrator,
        deadline: &dyn Deadline,
        preempt: &dyn Preempt,
    ) -> Result<Offlined, HeapError> {
        let mut job = self.offline_start(first, count)?;
        loop {
            if let Some(done) = job.advance(migrator, deadline, preempt)? {
                return Ok(done);
            }
            crate::sync::relax();
        }
    }

    /// Up to [`CHUNKS_PER_STEP`] chunks from the job's position under one hold of the
    /// node lock, stopping at a chunk to move, a busy chunk or a blocker. Returns what
    /// it found and the chunks it walked.
    fn offline_chunks(&self, job: &mut OfflineJob<'_, M>, migrate: bool) -> (Chunks, u64) {
        let n = job.node;
        let cell = self.cell(n);
        let mut st = self.lock_node(n);
        let abs = |x: Off| cell.mfn(x);
        for walked in 1..=CHUNKS_PER_STEP as u64 {
            if job.pos >= job.hi {
                cell.publish(&st);
                return (Chunks::End, walked - 1);
            }
            let (h, o) = st.chunk_of(job.pos);
            let s = st.head(h);
            let end = h + size(o);
            let blocker = |reason, owner: Option<DomId>| {
                Chunks::Blocked(Blocker { first: abs(h), frames: size(o) as u64, owner, reason })
            };
            let found = match self.settle_met_block(&mut st, n, h) {
                Some(c) => Some(c),
                None => self.offline_look(&mut st, job, (h, o), migrate),
            };
            match found {
                None => {
                    job.pos = end;
                    job.busy = None;
                }
                Some(Chunks::Again) => job.busy = None,
                Some(Chunks::Wait) => {
                    let polls = match job.busy {
                        Some((bh, p)) if bh == h => p + 1,
                        _ => 1,
                    };
                    job.busy = Some((h, polls));
                    cell.publish(&st);
                    if polls > MAX_BUSY_POLLS {
                        let owner = matches!(s.state, State::Allocated | State::Pending).then_some(s.owner);
                        return (blocker(BlockReason::Busy, owner), walked);
                    }
                    return (Chunks::Wait, walked);
                }
                Some(other) => {
                    job.busy = None;
                    cell.publish(&st);
                    return (other, walked);
                }
            }
        }
        cell.publish(&st);
        (Chunks::More, CHUNKS_PER_STEP as u64)
    }

    /// What the isolation (`migrate` false) or migration pass does with the chunk `(h, o)`
    /// at the job's position: `None` to go past it (isolating it if free), or what stops
    /// the walk there (a move to start, a wait, a blocker).
    fn offline_look(
        &self,
        st: &mut NodeState,
        job: &mut OfflineJob<'_, M>,
        (h, o): (Off, u8),
        migrate: bool,
    ) -> Option<Chunks> {
        let s = st.head(h);
        let (node, base) = (job.node, self.cell(job.node).base);
        let abs = |x: Off| x.to_mfn(base);
        let blocker = |reason, owner: DomId| {
            let b = Blocker { first: abs(h), frames: size(o) as u64, owner: Some(owner), reason };
            Some(Chunks::Blocked(b))
        };
        match s.state {
            State::Free if self.isolate_free(st, job, h, o) => None,
            State::Free => {
                let b = Blocker { first: abs(h), frames: size(o) as u64, owner: None, reason: BlockReason::Claimed };
                Some(Chunks::Blocked(b))
            }
            State::Isolated if job.isolated.contains_key(&h) => None,
            State::Isolated => Some(Chunks::Wait),
            State::Offline | State::Broken => None,
            State::Scrubbing => {
                if st.stop_background(h) {
                    job.done.aborted_scrubs += 1;
                }
                migrate.then_some(Chunks::Wait)
            }
            State::Pending if migrate => Some(Chunks::Wait),
            State::Allocated if migrate && s.migrating => Some(Chunks::Wait),
            State::Allocated if migrate && s.pins > 0 => blocker(BlockReason::Pinned, s.owner),
            State::Allocated if migrate && !s.movable => blocker(BlockReason::Unmovable, s.owner),
            State::Allocated if migrate => {
                // The largest aligned piece of the chunk from `pos` inside the range.
                let k = core::cmp::min(o, st.largest_order_at(job.pos, job.hi - job.pos));
                st.set_migrating(h, true);
                let from = Extent { mfn: abs(job.pos), order: k, node };
                Some(Chunks::Move(h, (from, s.owner.0)))
            }
            State::Pending | State::Allocated => None,
            State::None => unreachable!("chunk_of returns heads"),
        }
    }

    /// A reserve block of the per-CPU fast path at `h` (refilled into a CPU's reserve
    /// after the offline started): settled, so the walk looks at its chunks again
    /// (`Again`), or waited for while its CPU zeroes part of it (`Wait`). `None` if `h`
    /// is no reserve block.
    fn settle_met_block(&self, st: &mut NodeGuard<'_>, n: usize, h: Off) -> Option<Chunks> {
        let s = st.head(h);
        if s.state != State::Allocated || s.owner != RESERVE_OWNER {
            return None;
        }
        let gone = self.settle_block_at(st, n, h)?;
        Some(if gone { Chunks::Again } else { Chunks::Wait })
    }

    /// Isolates the free chunk `(h, o)` for `job`: its pieces inside the range leave the
    /// free lists. Returns false (nothing changed) if claims need the frames.
    fn isolate_free(&self, st: &mut NodeState, job: &mut OfflineJob<'_, M>, h: Off, o: u8) -> bool {
        let end = h + size(o);
        let inside = (core::cmp::min(end, job.hi) - core::cmp::max(h, job.lo)) as u64;
        if self.claims_admit_locked(None, job.node, st.free, inside).is_err() {
            return false;
        }
        st.unlink_free(h);
        for (ph, po) in Self::split_free_around(st, h, o, job.lo, job.hi) {
            let len = size(po);
            st.free -= len as u64;
            st.free_dirty -= st.dirty.count(ph, len) as u64;
            st.offline += len as u64;
            st.set_state(ph, State::Isolated, po);
            job.isolated.insert(ph, po);
        }
        true
    }

    /// Clears the migrating mark of the chunk at `h` of `node` (a move that did not happen).
    fn unmark_migrating(&self, node: usize, h: Off) {
        let mut st = self.lock_node(node);
        st.set_migrating(h, false);
        self.cell(node).publish(&st);
    }

    /// The frames `[off, 2^order)` of `node`, moved away, become isolated (dirty).
    fn vacate_isolated(&self, node: usize, off: Off, order: u8) -> Vec<(Off, u8)> {
        let mut st = self.lock_node(node);
        let out = Self::vacate(&mut st, off, order, true);
        self.cell(node).publish(&st);
        out
    }

    /// Splits the free chunk `(h, o)`, taken off its list, into the aligned pieces inside
    /// `[lo, hi)`, which it returns (still counted free; their heads are the caller's), and
    /// those outside, which go back on the free lists.
    pub(crate) fn split_free_around(st: &mut NodeState, h: Off, o: u8, lo: Off, hi: Off) -> Vec<(Off, u8)> {
        let mut inside = Vec::new();
        let mut stack = alloc::vec![(h, o)];
        st.forget_free(h);
        while let Some((ph, po)) = stack.pop() {
            let pe = ph + size(po);
            if ph >= lo && pe <= hi {
                inside.push((ph, po));
            } else if pe <= lo || ph >= hi {
                st.list_free_piece(ph, po);
            } else {
                stack.push((ph + size(po - 1), po - 1));
                stack.push((ph, po - 1));
            }
        }
        inside
    }

    /// Unmovable and pinned allocations in `[pos, hi)` of `node` (with `all`, every
    /// allocation, as not reached), added to `out` up to [`MAX_BLOCKERS`], looking at
    /// [`CHUNKS_PER_STEP`] chunks at most under one hold of the node lock. Returns where
    /// it stopped and the chunks it walked.
    fn scan_blockers(&self, node: usize, mut pos: Off, hi: Off, all: bool, out: &mut Vec<Blocker>) -> (Off, u64) {
        let base = self.cell(node).base;
        let mut st = self.lock_node(node);
        let mut walked = 0;
        while walked < CHUNKS_PER_STEP as u64 && pos < hi && out.len() < MAX_BLOCKERS {
            let (h, o) = st.chunk_of(pos);
            let s = st.head(h);
            walked += 1;
            if !all && matches!(self.settle_met_block(&mut st, node, h), Some(Chunks::Again)) {
                continue;
            }
            let reason = match s.state {
                // A reserve block its CPU is zeroing now: the isolation waits for it.
                State::Allocated if s.owner == RESERVE_OWNER && !all => None,
                State::Allocated if s.pins > 0 => Some(BlockReason::Pinned),
                State::Allocated if !s.movable => Some(BlockReason::Unmovable),
                State::Allocated | State::Pending if all => Some(BlockReason::NotReached),
                _ => None,
            };
            if let Some(reason) = reason {
                let owner = Some(s.owner);
                out.push(Blocker { first: h.to_mfn(base), frames: size(o) as u64, owner, reason });
            }
            pos = h + size(o);
        }
        debug_assert!(walked <= CHUNKS_PER_STEP as u64);
        (pos, walked)
    }

    fn blocker_at(&self, node: usize, h: Off, reason: BlockReason) -> Option<Blocker> {
        let st = self.lock_node(node);
        let (h, o) = st.chunk_of(h);
        let s = st.head(h);
        let owner = matches!(s.state, State::Allocated | State::Pending).then_some(s.owner);
        Some(Blocker { first: st.mfn(h), frames: size(o) as u64, owner, reason })
    }

    /// Returns isolated chunks of `node` (at most [`CHUNKS_PER_STEP`]) to the free lists,
    /// with their dirty bits, under one hold of the node lock.
    fn roll_back(&self, node: usize, chunks: &[(Off, u8)]) {
        debug_assert!(chunks.len() <= CHUNKS_PER_STEP);
        let mut st = self.lock_node(node);
        for &(h, o) in chunks {
            debug_assert_eq!(st.state(h), State::Isolated);
            st.clear_head(h);
            st.offline -= size(o) as u64;
            st.put_back(h, o);
        }
        self.cell(node).publish(&st);
    }

    /// Turns isolated chunks of `node` (at most [`CHUNKS_PER_STEP`]) into offline chunks;
    /// their old bytes are forgotten (an online returns them dirty).
    fn commit(&self, node: usize, chunks: &[(Off, u8)]) {
        debug_assert!(chunks.len() <= CHUNKS_PER_STEP);
        let mut st = self.lock_node(node);
        for &(h, o) in chunks {
            debug_assert_eq!(st.state(h), State::Isolated);
            st.dirty.clear_all(h, size(o));
            st.set_state(h, State::Offline, o);
        }
        self.cell(node).publish(&st);
    }

    /// Checks up to [`CHUNKS_PER_STEP`] chunks of an online from `pos`: each must be
    /// offline or broken. Returns where it stopped and the chunks walked.
    pub(crate) fn online_check(&self, n: usize, mut pos: Off, hi: Off) -> Result<(Off, u64), OfflineError> {
        let st = self.lock_node(n);
        let mut walked = 0;
        while walked < CHUNKS_PER_STEP as u64 && pos < hi {
            let (h, o) = st.chunk_of(pos);
            let state = match st.state(h) {
                State::Offline | State::Broken => None,
                State::Free => Some("free"),
                State::Allocated | State::Pending => Some("allocated"),
                State::Scrubbing => Some("being scrubbed"),
                State::Isolated => Some("being offlined"),
                State::None => unreachable!("chunk_of returns heads"),
            };
            if let Some(state) = state {
                return Err(OfflineError::NotOffline { mfn: self.cell(n).mfn(pos), state });
            }
            pos = h + size(o);
            walked += 1;
        }
        Ok((pos, walked))
    }

    /// Splits offline chunks that straddle either end of `[lo, hi)` (O(MAX_ORDER) each).
    pub(crate) fn online_split_edges(&self, n: usize, lo: Off, hi: Off) {
        let mut st = self.lock_node(n);
        for edge in [lo, hi] {
            while edge < st.end() {
                let (h, o) = st.chunk_of(edge);
                if h == edge || st.state(h) != State::Offline {
                    break;
                }
                st.split_held(h, o, edge, o - 1);
            }
        }
        self.cell(n).publish(&st);
    }

    /// Returns up to [`CHUNKS_PER_STEP`] offline chunks from `pos` to service. Returns
    /// where it stopped, the frames put back and the chunks walked.
    pub(crate) fn online_put_back(&self, n: usize, mut pos: Off, hi: Off) -> (Off, u64, u64) {
        let mut st = self.lock_node(n);
        let (mut back, mut walked) = (0u64, 0u64);
        while walked < CHUNKS_PER_STEP as u64 && pos < hi {
            let (h, o) = st.chunk_of(pos);
            pos = h + size(o);
            walked += 1;
            if st.state(h) == State::Offline {
                st.clear_head(h);
                st.offline -= size(o) as u64;
                st.release(h, o, false);
                back += size(o) as u64;
            }
        }
        self.cell(n).publish(&st);
        (pos, back, walked)
    }

    /// Takes the frame `mfn` out of service for good: now if it is free or offline, when
    /// its owner frees it if it is allocated. A broken frame is never allocated again and
    /// stays out of service through [`Heap::online`].
    ///
    /// Refused (`FreeError::Busy`, nothing changed) while the frame is being scrubbed (the
    /// scrubber is asked to hand it back: retry), moved, handed to a pending allocation or
    /// isolated by an offline; refused (`ClaimError::NeededByClaims`) when the frame is
    /// free but claims need every free frame.
    pub fn mark_broken(&self, mfn: Mfn) -> Result<Broken, HeapError> {
        let n = self.node_of(mfn)?;
        let cell = self.cell(n);
        let off = Off::of(mfn, cell.base);
        self.settle(n, off, 1);
        let mut st = self.lock_node(n);
        let (h, o) = st.chunk_of(off);
        let s = st.head(h);
        let busy = |what| Err(HeapError::Free(FreeError::Busy { mfn, what }));
        let r = match s.state {
            State::Broken => Broken::Already,
            State::Offline => {
                if o > 0 {
                    st.split_held(h, o, off, 0);
                }
                st.set_state(off, State::Broken, 0);
                Broken::Now
            }
            State::Free => {
                if self.claims_admit_locked(None, n, st.free, 1).is_err() {
                    return Err(HeapError::Claim(ClaimError::NeededByClaims {
                        mfn,
                        claimed: self.claimed_total(),
                        free: st.free,
                    }));
                }
                st.unlink_free(h);
                let pieces = Self::split_free_around(&mut st, h, o, off, off + 1);
                debug_assert_eq!(pieces, alloc::vec![(off, 0)]);
                st.free -= 1;
                st.free_dirty -= st.dirty.count(off, 1) as u64;
                st.dirty.clear_all(off, 1);
                st.offline += 1;
                st.set_state(off, State::Broken, 0);
                Broken::Now
            }
            State::Allocated if s.migrating => return busy("being migrated"),
            State::Allocated if s.broken => Broken::Already,
            State::Allocated => {
                if o > 0 {
                    st.split_held(h, o, off, 0);
                }
                st.set_broken_when_freed(off);
                Broken::WhenFreed
            }
            State::Scrubbing => {
                st.stop_background(h);
                return busy("being scrubbed");
            }
            State::Pending => return busy("being scrubbed for a pending allocation"),
            State::Isolated => return busy("being offlined"),
            State::None => unreachable!("chunk_of returns heads"),
        };
        Ok(r)
    }
}
