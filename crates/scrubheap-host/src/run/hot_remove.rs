//! The run's hot-remove: at [`HOT_REMOVE_AT`] of the run, takes offline the half of a
//! node's Movable zone that holds the most guest memory (so every run moves some), moving
//! that memory out; at [`HOT_ADD_AT`] (or when the run ends) puts the range back online,
//! dirty. It runs on its own thread beside the workers and records its sections
//! (operations `hot-remove offline` and `hot-remove online`) like every other thread that
//! enters the heap.
//!
//! A guest whose part moves is taken out of the schedule at the move's first piece (under
//! the scheduler lock, bookkeeping only), copied piece by piece (at most one batch each,
//! with a preemption point between two, so a 1 GiB move is many short sections) and
//! remapped at the heap's switch with no lock held, and put back; a worker due to handle
//! it meanwhile waits. A move the heap abandons (deadline, roll-back) puts the guest back
//! unchanged when the attempt ends. A guest a worker holds at that moment
//! (being built, ballooned or torn down) refuses the move, and the attempt is rolled back
//! and retried.

use super::config::{RunConfig, MOVABLE_FRACTION};
use super::recorder::{HeapGuest, OpLog};
use super::report::HotRemoveReport;
use super::scheduler::{Live, SchedLock};
use crate::instrument::{drive, PreemptRecorder, Sections};
use crate::pool::Pool;
use crate::tenants::hot_remove::{copy_piece, move_part, WallDeadline};
use parking_lot::Mutex;
use scrubheap::OfflineError;
use scrubheap::{DomId, Extent, HeapError, Mfn, Migrator, Offlined};
use scrubheap_oplog::Op;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// When the hot-remove happens and when the range comes back, as fractions of the run.
pub(super) const HOT_REMOVE_AT: f64 = 0.4;
pub(super) const HOT_ADD_AT: f64 = 0.6;
/// How long one offline attempt may run, and how long the hot-remove keeps retrying.
pub(super) const OFFLINE_DEADLINE: Duration = Duration::from_secs(2);
pub(super) const HOT_REMOVE_BUDGET: Duration = Duration::from_secs(5);
/// Refused attempts whose first blocker the report keeps.
const BLOCKERS_KEPT: usize = 8;

/// What the hot-remove thread works with.
pub(super) struct HotRemove<'a> {
    pub(super) pool: &'a Pool,
    pub(super) cfg: &'a RunConfig,
    pub(super) t0: Instant,
    /// False once the workers are done.
    pub(super) running: &'a AtomicBool,
    pub(super) sched: &'a SchedLock,
    pub(super) log: Option<&'a OpLog>,
    /// Where its sections go when it is done.
    pub(super) sections: &'a Sections,
}

impl HotRemove<'_> {
    /// The hot-remove and hot-add; None if the run ended before it was due.
    pub(super) fn run(&self) -> Option<HotRemoveReport> {
        if !self.sleep_until(HOT_REMOVE_AT) {
            return None;
        }
        if self.cfg.lock_boost {
            crate::priority::boost_lock_holds();
        }
        let rec = PreemptRecorder::new(self.pool.config().quantum_ns);
        let (first, count, guest_frames) = self.choose_range()?;
        let mut rep = HotRemoveReport {
            first_mfn: format!("{first}"),
            bytes: count * 4096,
            at_s: self.t0.elapsed().as_secs_f64(),
            guest_frames_in_range: guest_frames,
            ..HotRemoveReport::default()
        };
        self.offline(first, count, &mut rep, &rec);
        if rep.completed {
            if let Some(log) = self.log {
                log.line(&Op::Offline { mfn: first, count, steps: None });
            }
            self.sleep_until(HOT_ADD_AT);
            rec.enter_op("hot-remove online");
            let back = self.pool.heap().online_start(first, count).and_then(|mut job| drive(|| job.advance(&rec)));
            rec.exit();
            back.expect("the range this hot-remove took offline comes back");
            self.pool.ring(self.pool.heap().node_of(first).unwrap_or(0));
            if let Some(log) = self.log {
                log.line(&Op::Online { mfn: first, count });
            }
        }
        rep.online_at_s = self.t0.elapsed().as_secs_f64();
        rec.merge_into(self.sections);
        Some(rep)
    }

    /// Sleeps until `fraction` of the run; false if the run ended first.
    fn sleep_until(&self, fraction: f64) -> bool {
        let at = Duration::from_secs_f64(self.cfg.workload.duration_s * fraction);
        while self.t0.elapsed() < at {
            if !self.running.load(Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// The half of a node's Movable zone holding the most frames of live guests (the
    /// lowest such range on a tie): `(first, count, guest frames in it)`.
    fn choose_range(&self) -> Option<(Mfn, u64, u64)> {
        let heap = self.pool.heap();
        let mut ranges = Vec::new();
        for n in 0..heap.node_count() {
            let (a, b) = heap.node_range(n).ok()?;
            let count = ((b.0 - a.0) as f64 * MOVABLE_FRACTION / 2.0) as u64;
            let movable = heap.config().nodes[n].movable_from.map_or(b.0 - 2 * count, |m| a.0 + m);
            ranges.push((Mfn(movable), count));
            ranges.push((Mfn(b.0 - count), count));
        }
        let sc = self.sched.lock();
        let held = |first: Mfn, count: u64| -> u64 {
            let overlap = |e: &Extent| {
                let lo = e.mfn.0.max(first.0);
                (e.mfn.0 + e.frames()).min(first.0 + count).saturating_sub(lo)
            };
            let guests = sc.alive.values().filter_map(|l| match l {
                Live::Heap(hg) => Some(hg),
                _ => None,
            });
            guests.flat_map(|hg| hg.g.extents.iter()).map(overlap).sum()
        };
        let scored = ranges.into_iter().filter(|&(_, c)| c > 0).map(|(f, c)| (f, c, held(f, c)));
        scored.fold(None, |best: Option<(Mfn, u64, u64)>, r| match best {
            Some(b) if b.2 >= r.2 => Some(b),
            _ => Some(r),
        })
    }

    /// Offline attempts until one completes, a blocker other than a busy guest stops it,
    /// or [`HOT_REMOVE_BUDGET`] passes.
    fn offline(&self, first: Mfn, count: u64, rep: &mut HotRemoveReport, rec: &PreemptRecorder) {
        let start = Instant::now();
        while start.elapsed() < HOT_REMOVE_BUDGET {
            rep.attempts += 1;
            match self.offline_attempt(first, count, rec) {
                Ok(done) => {
                    rep.completed = true;
                    rep.time_to_offline_ms = start.elapsed().as_secs_f64() * 1e3;
                    rep.migrated_frames = done.migrated_frames;
                    rep.migrated_bytes = done.migrated_frames * 4096;
                    rep.migrated_extents = done.migrated_chunks;
                    rep.aborted_scrubs = done.aborted_scrubs;
                    return;
                }
                Err(HeapError::Offline(OfflineError::OfflineBlocked { blockers, stop, .. })) => {
                    if rep.blockers.len() < BLOCKERS_KEPT {
                        let first = blockers.first().map_or("none named".into(), |b| b.to_string());
                        rep.blockers.push(format!("{stop}: {first}"));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    rep.blockers.push(e.to_string());
                    return;
                }
            }
        }
    }

    /// One offline attempt, moving guest memory through a [`GuestMover`]; `rec` is its
    /// `Preempt`, so every step of the offline (a bounded metadata walk, or one piece of
    /// a move) is a section of its own. The offline is a job: when `rec` says the
    /// thread's quantum is used up, the job returns and the thread yields before it
    /// resumes it.
    fn offline_attempt(&self, first: Mfn, count: u64, rec: &PreemptRecorder) -> Result<Offlined, HeapError> {
        let mover = GuestMover { run: self, out: Mutex::new(None) };
        let deadline = WallDeadline(Instant::now() + OFFLINE_DEADLINE);
        rec.enter_op("hot-remove offline");
        let r = self
            .pool
            .heap()
            .offline_start(first, count)
            .and_then(|mut job| drive(|| job.advance(&mover, &deadline, rec)));
        rec.exit();
        mover.put_back();
        r
    }

    /// Takes guest `id` out of the schedule for a move of `from`, if it is alive, no
    /// worker holds it, and one of its extents holds all of `from`.
    fn check_out(&self, id: u64, from: Extent) -> Option<HeapGuest> {
        let mut sc = self.sched.lock();
        let Some(Live::Heap(hg)) = sc.alive.get(&id) else { return None };
        let holds = |e: &Extent| e.mfn.0 <= from.mfn.0 && from.mfn.0 + from.frames() <= e.mfn.0 + e.frames();
        if !hg.g.extents.iter().any(holds) {
            return None;
        }
        let Some(Live::Heap(hg)) = sc.alive.remove(&id) else { unreachable!("looked up just above") };
        sc.moving.insert(id);
        Some(hg)
    }

    /// Puts guest `id`, checked out for a move, back into the schedule.
    fn check_in(&self, id: u64, hg: HeapGuest) {
        let mut sc = self.sched.lock();
        let was_out = sc.moving.remove(&id);
        assert!(was_out, "a guest checked out for a move is marked moving");
        let before = sc.alive.insert(id, Live::Heap(hg));
        assert!(before.is_none(), "a guest checked out for a move is not also in the schedule");
    }
}

/// The hot-remove's [`Migrator`]: the guest whose part moves is checked out of the
/// schedule at the first piece of the move, copied piece by piece with no lock held,
/// remapped at the switch and checked back in.
struct GuestMover<'r, 'a> {
    run: &'r HotRemove<'a>,
    /// The guest checked out for the move in progress: its id, the part moving, the guest.
    out: Mutex<Option<(u64, Extent, HeapGuest)>>,
}

impl GuestMover<'_, '_> {
    /// Puts back a guest whose move the heap abandoned (its extents unchanged).
    fn put_back(&self) {
        if let Some((id, _, hg)) = self.out.lock().take() {
            self.run.check_in(id, hg);
        }
    }
}

impl Migrator for GuestMover<'_, '_> {
    fn copy(&self, owner: DomId, from: Extent, to: Extent, offset: u64, frames: u64) -> bool {
        let Some(id) = (owner.0 as u64).checked_sub(1) else { return false };
        let mut out = self.out.lock();
        if !matches!(&*out, Some((i, f, _)) if *i == id && *f == from) {
            // A new move: an abandoned one's guest goes back first.
            if let Some((i, _, hg)) = out.take() {
                self.run.check_in(i, hg);
            }
            let Some(hg) = self.run.check_out(id, from) else { return false };
            *out = Some((id, from, hg));
        }
        drop(out);
        copy_piece(self.run.pool, from, to, offset, frames);
        true
    }

    fn switch(&self, owner: DomId, from: Extent, to: Extent) -> bool {
        let Some((id, f, mut hg)) = self.out.lock().take() else { return false };
        assert!(id + 1 == owner.0 as u64 && f == from, "the switch ends the move its pieces copied");
        let done = move_part(&mut hg.g.extents, from, to);
        if done {
            hg.moved.push((to.mfn, to.order, from.mfn));
        }
        self.run.check_in(id, hg);
        done
    }
}
