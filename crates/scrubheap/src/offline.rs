//! Offline and online (memory hot-remove and hot-add), and broken frames.
//!
//! [`Heap::offline`] empties a range of frames in bounded steps: it isolates the free
//! chunks (asking background scrubbers to hand theirs back), moves movable unpinned
//! allocations out through the owner's [`Migrator`], and then takes the range out of
//! service. It never loops unbounded: at the caller's [`Deadline`], or on a frame that
//! cannot move (unmovable, long-term pinned, refused by its migrator), it rolls back and
//! says which frames and owners blocked it. The heap has no clock: the caller's
//! `Deadline` maps steps to wall time (a host) or simulated time (a simulator).

use crate::blocker::{BlockReason, Blocker, OfflineStop};
use crate::chunk::State;
use crate::error::HeapError;
use crate::heap::{Extent, Heap};
use crate::memory::FrameMemory;
use crate::node::NodeState;
use crate::pin::Migrator;
use crate::types::{DomId, Mfn, Zone};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::cell::Cell;

/// The most blockers an offline reports (the first ones in frame order).
pub const MAX_BLOCKERS: usize = 16;

/// Chunks an offline looks at under one hold of the node lock.
const CHUNKS_PER_STEP: usize = 64;

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
    /// Bounded steps taken (each asked the deadline first).
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

/// An offline in progress.
struct Job {
    node: usize,
    lo: u32,
    hi: u32,
    /// Chunks this offline isolated: head to order.
    isolated: BTreeMap<u32, u8>,
    done: Offlined,
    /// The chunk being waited for, and how many looks so far.
    busy: Option<(u32, u64)>,
}

enum Step {
    Continue,
    Stop(OfflineStop, Vec<Blocker>),
}

impl<M: FrameMemory> Heap<M> {
    /// Validates `count` frames from `first` inside one node: the node and offsets.
    fn locate_range(&self, first: Mfn, count: u64) -> Result<(usize, u32, u32), HeapError> {
        let n = self.node_of(first)?;
        let (base, end) = (self.cell(n).base, self.cell(n).base + self.cell(n).frames);
        match first.0.checked_add(count) {
            Some(e) if count > 0 && e <= end => Ok((n, (first.0 - base) as u32, (e - base) as u32)),
            _ => Err(HeapError::BadRange { first, count }),
        }
    }

    /// Takes `count` frames from `first` (inside one node, any alignment) out of service,
    /// moving movable unpinned allocations out of the way through `migrator`.
    ///
    /// In bounded steps, asking `deadline` before each: isolates the free chunks of the
    /// range (asking background scrubbers to hand theirs back), then moves each movable
    /// allocation of the range (or the part of it inside the range) to free memory
    /// elsewhere, movable memory first, and finally marks the range offline. Frames
    /// already offline or broken stay so.
    ///
    /// If the range holds an unmovable or pinned allocation, the offline is refused with
    /// `HeapError::OfflineBlocked` naming them, and nothing changes. If the deadline
    /// passes, or a frame cannot be moved (its migrator refuses, no memory is free, it
    /// stays busy), the offline rolls back: every frame it isolated returns to the free
    /// lists as it was (clean or dirty), and the error names the blockers. Allocations it
    /// had already moved stay where they moved: their owners were remapped, and moving
    /// back would cost another copy and could itself fail.
    ///
    /// ```
    /// use scrubheap::{AllocRequest, DomId, Heap, HeapConfig, MetadataMigrator, Mfn, NoDeadline, NullMemory};
    /// let heap = Heap::new(HeapConfig::uniform(1, 1 << 12).with_movable_from(1 << 11), NullMemory).unwrap();
    /// let a = heap.alloc(&AllocRequest::new(4, DomId(1)).movable()).unwrap();
    /// let done = heap.offline(Mfn(1 << 11), 1 << 11, &MetadataMigrator, &NoDeadline).unwrap();
    /// assert_eq!(done.migrated_chunks, 1);
    /// assert_eq!(heap.stats().offline, 1 << 11);
    /// heap.online(Mfn(1 << 11), 1 << 11).unwrap();
    /// assert_eq!(heap.stats().offline, 0);
    /// heap.check_invariants().unwrap();
    /// # let _ = a;
    /// ```
    pub fn offline(
        &self,
        first: Mfn,
        count: u64,
        migrator: &dyn Migrator,
        deadline: &dyn Deadline,
    ) -> Result<Offlined, HeapError> {
        let (node, lo, hi) = self.locate_range(first, count)?;
        let blocked = |stop, blockers| HeapError::OfflineBlocked { first, count, stop, blockers };
        let unmovable = self.scan_blockers(node, lo, hi, false);
        if !unmovable.is_empty() {
            return Err(blocked(OfflineStop::Blocked, unmovable));
        }
        let mut job = Job { node, lo, hi, isolated: BTreeMap::new(), done: Offlined::default(), busy: None };
        for migrate in [false, true] {
            let mut pos = lo;
            while pos < hi {
                if deadline.passed() {
                    let mut blockers: Vec<Blocker> = Vec::new();
                    if let Some((h, _)) = job.busy {
                        blockers.extend(self.blocker_at(node, h, BlockReason::Busy));
                    }
                    blockers.extend(self.scan_blockers(node, pos, hi, true));
                    blockers.truncate(MAX_BLOCKERS);
                    self.roll_back(&job);
                    return Err(blocked(OfflineStop::Deadline, blockers));
                }
                job.done.steps += 1;
                match self.offline_step(&mut job, &mut pos, migrate, migrator) {
                    Step::Continue => {}
                    Step::Stop(stop, blockers) => {
                        self.roll_back(&job);
                        return Err(blocked(stop, blockers));
                    }
                }
            }
        }
        self.commit(&job);
        job.done.frames = job.isolated.values().map(|&o| size(o) as u64).sum();
        Ok(job.done)
    }

    /// Up to [`CHUNKS_PER_STEP`] chunks from `pos` under one hold of the node lock, or one
    /// move (which drops the lock while the migrator copies).
    fn offline_step(&self, job: &mut Job, pos: &mut u32, migrate: bool, migrator: &dyn Migrator) -> Step {
        let n = job.node;
        let cell = self.cell(n);
        let mut st = self.lock_node(n);
        for _ in 0..CHUNKS_PER_STEP {
            if *pos >= job.hi {
                break;
            }
            let (h, o) = st.chunk_of(*pos);
            let s = st.head(h);
            let end = h + size(o);
            let abs = |x: u32| cell.mfn(x);
            let blocker = |reason, owner: Option<DomId>| {
                let b = Blocker { first: abs(h), frames: size(o) as u64, owner, reason };
                Step::Stop(OfflineStop::Blocked, alloc::vec![b])
            };
            let mut wait = false;
            match s.state {
                State::Free => {
                    let inside = (core::cmp::min(end, job.hi) - core::cmp::max(h, job.lo)) as u64;
                    if self.claims_admit_locked(None, n, st.free, inside).is_err() {
                        return blocker(BlockReason::Claimed, None);
                    }
                    st.unlink_free(h);
                    for (ph, po) in Self::split_free_around(&mut st, h, o, job.lo, job.hi) {
                        let len = size(po);
                        st.free -= len as u64;
                        st.free_dirty -= st.dirty.count(ph, len) as u64;
                        st.offline += len as u64;
                        st.set_state(ph, State::Isolated, po);
                        job.isolated.insert(ph, po);
                    }
                    *pos = end;
                }
                State::Isolated if job.isolated.contains_key(&h) => *pos = end,
                State::Isolated => wait = true,
                State::Offline | State::Broken => *pos = end,
                State::Scrubbing => {
                    if st.stop_background(h) {
                        job.done.aborted_scrubs += 1;
                    }
                    if migrate {
                        wait = true;
                    } else {
                        *pos = end;
                    }
                }
                State::Pending if migrate => wait = true,
                State::Allocated if migrate && s.migrating => wait = true,
                State::Allocated if migrate && s.pins > 0 => return blocker(BlockReason::Pinned, Some(s.owner)),
                State::Allocated if migrate && !s.movable => return blocker(BlockReason::Unmovable, Some(s.owner)),
                State::Allocated if migrate => {
                    // The largest aligned piece of the chunk from `pos` inside the range.
                    let k = core::cmp::min(o, st.largest_order_at(*pos, job.hi - *pos));
                    let owner = s.owner;
                    st.set_migrating(h, true);
                    drop(st);
                    let from = Extent { mfn: abs(*pos), order: k, node: n };
                    let moved = self.move_out(owner, from, true, &[Zone::Movable, Zone::Normal], migrator);
                    match moved {
                        Ok(to) => {
                            self.finish_destination(to, true, 0);
                            let mut st = self.lock_node(n);
                            for (ph, po) in Self::vacate(&mut st, *pos, k, true) {
                                job.isolated.insert(ph, po);
                            }
                            job.done.migrated_chunks += 1;
                            job.done.migrated_frames += size(k) as u64;
                            *pos += size(k);
                            job.busy = None;
                            return Step::Continue;
                        }
                        Err(e) => {
                            let mut st = self.lock_node(n);
                            st.set_migrating(h, false);
                            drop(st);
                            let reason = match e {
                                HeapError::OutOfMemory { .. } => BlockReason::NoMemory,
                                _ => BlockReason::MigrationRefused,
                            };
                            let b = Blocker { first: from.mfn, frames: from.frames(), owner: Some(owner), reason };
                            return Step::Stop(OfflineStop::Blocked, alloc::vec![b]);
                        }
                    }
                }
                State::Pending | State::Allocated => *pos = end,
                State::None => unreachable!("chunk_of returns heads"),
            }
            if wait {
                let polls = match job.busy {
                    Some((bh, p)) if bh == h => p + 1,
                    _ => 1,
                };
                job.busy = Some((h, polls));
                if polls > MAX_BUSY_POLLS {
                    return blocker(
                        BlockReason::Busy,
                        matches!(s.state, State::Allocated | State::Pending).then_some(s.owner),
                    );
                }
                drop(st);
                crate::sync::relax();
                return Step::Continue;
            }
            job.busy = None;
        }
        Step::Continue
    }

    /// Splits the free chunk `(h, o)`, taken off its list, into the aligned pieces inside
    /// `[lo, hi)`, which it returns (still counted free; their heads are the caller's), and
    /// those outside, which go back on the free lists.
    pub(crate) fn split_free_around(st: &mut NodeState, h: u32, o: u8, lo: u32, hi: u32) -> Vec<(u32, u8)> {
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

    /// Unmovable and pinned allocations in `[lo, hi)` of `node` (with `all`, every
    /// allocation, as not reached), at most [`MAX_BLOCKERS`], scanning in bounded steps.
    fn scan_blockers(&self, node: usize, lo: u32, hi: u32, all: bool) -> Vec<Blocker> {
        let mut out = Vec::new();
        let mut pos = lo;
        let mut scanned = 0;
        while pos < hi && out.len() < MAX_BLOCKERS && (!all || scanned < BLOCKER_SCAN) {
            let st = self.lock_node(node);
            for _ in 0..CHUNKS_PER_STEP {
                if pos >= hi || out.len() >= MAX_BLOCKERS {
                    break;
                }
                let (h, o) = st.chunk_of(pos);
                let s = st.head(h);
                let reason = match s.state {
                    State::Allocated if s.pins > 0 => Some(BlockReason::Pinned),
                    State::Allocated if !s.movable => Some(BlockReason::Unmovable),
                    State::Allocated | State::Pending if all => Some(BlockReason::NotReached),
                    _ => None,
                };
                if let Some(reason) = reason {
                    let owner = Some(s.owner);
                    out.push(Blocker { first: st.mfn(h), frames: size(o) as u64, owner, reason });
                }
                pos = h + size(o);
                scanned += 1;
            }
        }
        out
    }

    fn blocker_at(&self, node: usize, h: u32, reason: BlockReason) -> Option<Blocker> {
        let st = self.lock_node(node);
        let (h, o) = st.chunk_of(h);
        let s = st.head(h);
        let owner = matches!(s.state, State::Allocated | State::Pending).then_some(s.owner);
        Some(Blocker { first: st.mfn(h), frames: size(o) as u64, owner, reason })
    }

    /// Returns every chunk the offline isolated to the free lists, with its dirty bits.
    fn roll_back(&self, job: &Job) {
        let chunks: Vec<(u32, u8)> = job.isolated.iter().map(|(&h, &o)| (h, o)).collect();
        for batch in chunks.chunks(CHUNKS_PER_STEP) {
            let mut st = self.lock_node(job.node);
            for &(h, o) in batch {
                debug_assert_eq!(st.state(h), State::Isolated);
                st.clear_head(h);
                st.offline -= size(o) as u64;
                st.put_back(h, o);
            }
        }
    }

    /// Turns every chunk the offline isolated into an offline chunk; their old bytes are
    /// forgotten (an online returns them dirty).
    fn commit(&self, job: &Job) {
        let chunks: Vec<(u32, u8)> = job.isolated.iter().map(|(&h, &o)| (h, o)).collect();
        for batch in chunks.chunks(CHUNKS_PER_STEP) {
            let mut st = self.lock_node(job.node);
            for &(h, o) in batch {
                st.dirty.clear_all(h, size(o));
                st.set_state(h, State::Offline, o);
            }
        }
    }

    /// Returns `count` offline frames from `first` (inside one node) to service, dirty:
    /// whatever the hardware holds is treated as a previous owner's bytes. Broken frames
    /// in the range stay out of service. Every frame of the range must be offline or
    /// broken; otherwise nothing changes. Works in steps of a bounded number of chunks (64)
    /// under the node lock. Returns the frames put back in service (frames another online
    /// put back meanwhile are not counted).
    pub fn online(&self, first: Mfn, count: u64) -> Result<u64, HeapError> {
        let (n, lo, hi) = self.locate_range(first, count)?;
        let cell = self.cell(n);
        let mut pos = lo;
        while pos < hi {
            let st = self.lock_node(n);
            for _ in 0..CHUNKS_PER_STEP {
                if pos >= hi {
                    break;
                }
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
                    return Err(HeapError::NotOffline { mfn: cell.mfn(pos), state });
                }
                pos = h + size(o);
            }
        }
        let mut pos = lo;
        let mut back = 0u64;
        let mut edges_split = false;
        while pos < hi {
            let mut st = self.lock_node(n);
            if !edges_split {
                // Split offline chunks that straddle either end of the range.
                for edge in [lo, hi] {
                    while edge < st.frames {
                        let (h, o) = st.chunk_of(edge);
                        if h == edge || st.state(h) != State::Offline {
                            break;
                        }
                        st.split_held(h, o, edge, o - 1);
                    }
                }
                edges_split = true;
            }
            for _ in 0..CHUNKS_PER_STEP {
                if pos >= hi {
                    break;
                }
                let (h, o) = st.chunk_of(pos);
                pos = h + size(o);
                if st.state(h) == State::Offline {
                    st.clear_head(h);
                    st.offline -= size(o) as u64;
                    st.release(h, o, false);
                    back += size(o) as u64;
                }
            }
        }
        Ok(back)
    }

    /// Takes the frame `mfn` out of service for good: now if it is free or offline, when
    /// its owner frees it if it is allocated. A broken frame is never allocated again and
    /// stays out of service through [`Heap::online`].
    ///
    /// Refused (`HeapError::Busy`, nothing changed) while the frame is being scrubbed (the
    /// scrubber is asked to hand it back: retry), moved, handed to a pending allocation or
    /// isolated by an offline; refused (`HeapError::NeededByClaims`) when the frame is
    /// free but claims need every free frame.
    pub fn mark_broken(&self, mfn: Mfn) -> Result<Broken, HeapError> {
        let n = self.node_of(mfn)?;
        let cell = self.cell(n);
        let off = (mfn.0 - cell.base) as u32;
        let mut st = self.lock_node(n);
        let (h, o) = st.chunk_of(off);
        let s = st.head(h);
        let busy = |what| Err(HeapError::Busy { mfn, what });
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
                    return Err(HeapError::NeededByClaims { mfn, claimed: self.claimed_total(), free: st.free });
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
