//! Online (memory hot-add, or the return of an offlined range) as a job: [`OnlineJob`].

use crate::error::HeapError;
use crate::heap::Heap;
use crate::memory::FrameMemory;
use crate::preempt::{NeverPreempt, Preempt};
use crate::types::{Mfn, Off};

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Checking that every frame of the range is offline or broken: nothing changed yet.
    Check,
    /// Returning the range to service: past the point of no return.
    PutBack,
    Done,
}

/// An online in progress, advanced in bounded steps: see [`Heap::online_start`].
///
/// Each call to [`OnlineJob::advance`] runs steps of at most
/// [`CHUNKS_PER_STEP`](crate::CHUNKS_PER_STEP) chunks under one hold of the node lock,
/// asking its [`Preempt`] between two steps: first a check of the whole range (nothing
/// changes), then the return to service. Dropping (or cancelling) a job still checking
/// changes nothing. A job returning the range to service is past its point of no return:
/// rolling back would mean taking frames out of service again that may be allocated by
/// then (an offline, which can fail), so cancel leaves it be and a drop finishes it at
/// once, metadata only, with no preemption point; a caller that must stay preemptible
/// advances it to its end.
pub struct OnlineJob<'h, M: FrameMemory> {
    heap: &'h Heap<M>,
    first: Mfn,
    node: usize,
    lo: Off,
    hi: Off,
    phase: Phase,
    pos: Off,
    back: u64,
    cancelled: bool,
}

impl<M: FrameMemory> Drop for OnlineJob<'_, M> {
    fn drop(&mut self) {
        if self.phase == Phase::PutBack {
            while self.step(&NeverPreempt).is_none() {}
        }
    }
}

impl<M: FrameMemory> Heap<M> {
    /// Starts returning `count` offline frames from `first` (inside one node) to service,
    /// dirty: whatever the hardware holds is treated as a previous owner's bytes. Broken
    /// frames in the range stay out of service. Every frame of the range must be offline
    /// or broken; otherwise the job ends with `OfflineError::NotOffline` and nothing changes.
    /// Checks the range's bounds now (`RangeError::BadRange`); the returned [`OnlineJob`]
    /// does the rest in bounded steps.
    ///
    /// ```
    /// use scrubheap::{Heap, HeapConfig, Mfn, NoDeadline, NoMigration, NullMemory};
    /// let heap = Heap::new(HeapConfig::uniform(1, 1 << 12), NullMemory).unwrap();
    /// heap.offline(Mfn(0), 1 << 11, &NoMigration, &NoDeadline, &|| false).unwrap();
    /// let mut job = heap.online_start(Mfn(0), 1 << 11).unwrap();
    /// // Yield after every step: a real caller would reschedule between the calls.
    /// let back = loop {
    ///     if let Some(back) = job.advance(&|| true).unwrap() {
    ///         break back;
    ///     }
    /// };
    /// assert_eq!((back, heap.stats().offline), (1 << 11, 0));
    /// ```
    pub fn online_start(&self, first: Mfn, count: u64) -> Result<OnlineJob<'_, M>, HeapError> {
        let (node, lo, hi) = self.locate_range(first, count)?;
        debug_assert!(lo < hi);
        Ok(OnlineJob { heap: self, first, node, lo, hi, phase: Phase::Check, pos: lo, back: 0, cancelled: false })
    }

    /// [`Heap::online_start`] driven to its end in one call, asking `preempt` between two
    /// steps. The call cannot stop halfway (the range would be half in service), so a
    /// `true` from `preempt` does not end it early. Returns the frames put back in
    /// service (frames another online put back meanwhile are not counted).
    pub fn online(&self, first: Mfn, count: u64, preempt: &dyn Preempt) -> Result<u64, HeapError> {
        let mut job = self.online_start(first, count)?;
        loop {
            if let Some(back) = job.advance(preempt)? {
                return Ok(back);
            }
        }
    }
}

impl<M: FrameMemory> OnlineJob<'_, M> {
    /// Runs bounded steps until the online ends (`Some` with the frames put back in
    /// service, or the error that refused it, nothing changed), or until `preempt` asks
    /// to yield (`None`: call again later). A job that has ended refuses with
    /// `HeapError::JobFinished`.
    pub fn advance(&mut self, preempt: &dyn Preempt) -> Result<Option<u64>, HeapError> {
        if self.phase == Phase::Done {
            return Err(HeapError::JobFinished { job: "online", first: self.first });
        }
        loop {
            if let Some(r) = self.step(preempt) {
                debug_assert_eq!(self.phase, Phase::Done);
                return r.map(Some);
            }
            if preempt.check() {
                return Ok(None);
            }
        }
    }

    /// Stops a job still checking the range: it ends with `HeapError::JobCancelled`,
    /// nothing changed. A job returning the range to service finishes (see
    /// [`OnlineJob`]).
    pub fn cancel(&mut self) {
        if self.phase == Phase::Check {
            self.cancelled = true;
        }
    }

    /// Whether the job has passed its point of no return (it will finish).
    pub fn committed(&self) -> bool {
        self.phase == Phase::PutBack || (self.phase == Phase::Done && !self.cancelled)
    }

    /// One bounded step; `Some` when the job ends.
    fn step(&mut self, preempt: &dyn Preempt) -> Option<Result<u64, HeapError>> {
        let (heap, n) = (self.heap, self.node);
        match self.phase {
            Phase::Check if self.cancelled => {
                self.phase = Phase::Done;
                Some(Err(HeapError::JobCancelled { job: "online", first: self.first }))
            }
            Phase::Check => match heap.online_check(n, self.pos, self.hi) {
                Err(e) => {
                    self.phase = Phase::Done;
                    Some(Err(e.into()))
                }
                Ok((next, walked)) => {
                    debug_assert!(next > self.pos);
                    preempt.walked(walked);
                    self.pos = next;
                    if self.pos >= self.hi {
                        heap.online_split_edges(n, self.lo, self.hi);
                        (self.phase, self.pos) = (Phase::PutBack, self.lo);
                    }
                    None
                }
            },
            Phase::PutBack => {
                let (next, frames, walked) = heap.online_put_back(n, self.pos, self.hi);
                preempt.walked(walked);
                (self.pos, self.back) = (next, self.back + frames);
                if self.pos < self.hi {
                    return None;
                }
                self.phase = Phase::Done;
                Some(Ok(self.back))
            }
            Phase::Done => unreachable!("advance refuses an ended job"),
        }
    }
}
