//! The scheduler of `scrubheap run`: worker threads take the next due job (a guest's
//! arrival, or its pending event: reboot, balloon, destroy), carry it out on the pool or
//! the kernel baseline, count it, and schedule the guest's next event. The hot-remove
//! (`hot_remove.rs`) runs beside them on its own timer. No heap work happens under the
//! scheduler lock ([`SchedLock`]).

use super::config::{RunConfig, PINS_PER_GUEST};
use super::recorder::{log_allocs, log_destroy, log_line, HeapGuest, OpLog};
use crate::instrument::{NoHeapWork, PreemptRecorder, Sections};
use crate::pool::Pool;
use crate::tenants::guest::{GuestOps, KernelBackend, KernelGuest};
use crate::tenants::pins::PinOps;
use crate::tenants::pod_guest::{self, PodGuestOps};
use parking_lot::{Mutex, MutexGuard};
use scrubheap::ClaimError;
use scrubheap::{DomId, HeapError};
use scrubheap_oplog::Op;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// What happens to a live guest at a scheduled time. A live guest has at most one event
/// pending (none when its next one would fall after the run); handling it schedules the
/// next.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Ev {
    Destroy,
    Reboot,
    BalloonOut,
    BalloonIn,
}

pub(super) enum Job {
    Create(u64),
    Event(u64, Ev, Option<Live>),
}

pub(super) enum Live {
    Heap(HeapGuest),
    Kernel(KernelGuest, u64),
    Pod(pod_guest::PodGuest),
}

pub(super) struct Sched {
    pub(super) next_arrival: usize,
    /// (time ns, guest, event), earliest first.
    pub(super) events: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    pub(super) alive: HashMap<u64, Live>,
    /// Live guests the hot-remove has taken out of `alive` while it copies a part of
    /// them (outside this lock); their events wait until they are back.
    pub(super) moving: HashSet<u64>,
}

/// How long an event of a guest being moved waits before it is looked at again.
const MOVING_RETRY: Duration = Duration::from_micros(500);

/// The scheduler lock: the schedule and the live guests. Whoever holds it may do no heap
/// work (no allocation, free, pin, copy or scrub): its guard carries a [`NoHeapWork`],
/// so any such call under it panics, and every worker waiting for its next job waits
/// for bookkeeping only.
pub(super) struct SchedLock(Mutex<Sched>);

/// A hold of the [`SchedLock`].
pub(super) struct SchedGuard<'a> {
    guard: MutexGuard<'a, Sched>,
    _no_heap: NoHeapWork,
}

impl SchedLock {
    fn new() -> Self {
        SchedLock(Mutex::new(Sched {
            next_arrival: 0,
            events: BinaryHeap::new(),
            alive: HashMap::new(),
            moving: HashSet::new(),
        }))
    }

    /// Takes the lock; heap work panics on this thread until the guard is dropped.
    pub(super) fn lock(&self) -> SchedGuard<'_> {
        let guard = self.0.lock();
        SchedGuard { guard, _no_heap: NoHeapWork::new() }
    }
}

impl Deref for SchedGuard<'_> {
    type Target = Sched;
    fn deref(&self) -> &Sched {
        &self.guard
    }
}

impl DerefMut for SchedGuard<'_> {
    fn deref_mut(&mut self) -> &mut Sched {
        &mut self.guard
    }
}

#[derive(Default)]
pub(super) struct Tally {
    pub(super) create_ms: Vec<f64>,
    pub(super) destroy_ms: Vec<f64>,
    pub(super) rebooted: u64,
    pub(super) refused: u64,
    pub(super) highorder_failures: u64,
    pub(super) pins: u64,
    pub(super) pins_moved: u64,
    pub(super) balloon: BalloonTally,
    pub(super) pod_created: u64,
    pub(super) pod_refused: u64,
    pub(super) pod_ballooned: u64,
}

#[derive(Default)]
pub(super) struct BalloonTally {
    pub(super) out_ms: Vec<f64>,
    pub(super) in_ms: Vec<f64>,
    pub(super) bytes_out: u64,
    pub(super) bytes_in: u64,
    pub(super) short: u64,
}

/// What every worker shares: the run's configuration and backends, the schedule, the
/// tallies, and the counters the sampler reads.
pub(super) struct Shared<'a> {
    pub(super) cfg: &'a RunConfig,
    pub(super) pool: Option<&'a Pool>,
    pub(super) kernel: &'a KernelBackend,
    pub(super) oplog: Option<&'a OpLog>,
    pub(super) sched: SchedLock,
    pub(super) tally: Mutex<Tally>,
    pub(super) sections: Sections,
    /// Guests alive now.
    pub(super) alive: AtomicU64,
    /// Bytes the kernel baseline's guests hold.
    pub(super) kernel_used: AtomicU64,
    pub(super) t0: Instant,
    pub(super) duration_ns: u64,
}

/// What a worker does next.
enum Next {
    Job(Job),
    /// Nothing due yet: sleep this long (at most 2 ms) and look again.
    Wait(Duration),
    /// The run is over and every guest destroyed.
    Done,
}

impl<'a> Shared<'a> {
    /// The shared state of a run starting now.
    pub(super) fn new(
        cfg: &'a RunConfig,
        pool: Option<&'a Pool>,
        kernel: &'a KernelBackend,
        oplog: Option<&'a OpLog>,
    ) -> Shared<'a> {
        assert!(cfg.workload.duration_s.is_finite() && cfg.workload.duration_s >= 0.0, "a run has a length");
        Shared {
            cfg,
            pool,
            kernel,
            oplog,
            sched: SchedLock::new(),
            tally: Mutex::new(Tally::default()),
            sections: Sections::default(),
            alive: AtomicU64::new(0),
            kernel_used: AtomicU64::new(0),
            t0: Instant::now(),
            duration_ns: (cfg.workload.duration_s * 1e9) as u64,
        }
    }

    fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    /// The next job due, taken off the schedule: past the run's end, every guest still
    /// alive is destroyed, one job each.
    fn next_job(&self) -> Next {
        let now = self.now_ns();
        let mut sc = self.sched.lock();
        if now >= self.duration_ns {
            return match sc.alive.keys().next().copied() {
                Some(id) => Next::Job(Job::Event(id, Ev::Destroy, sc.alive.remove(&id))),
                None if !sc.moving.is_empty() => Next::Wait(MOVING_RETRY),
                None => Next::Done,
            };
        }
        let arrival = self.cfg.workload.guests.get(sc.next_arrival).map(|g| (g.arrival_s * 1e9) as u64);
        let destroy = sc.events.peek().map(|r| r.0 .0);
        let next = match (arrival, destroy) {
            (Some(a), Some(d)) => Some(a.min(d)),
            (a, d) => a.or(d),
        };
        match next {
            Some(t) if t <= now => {
                if destroy == Some(t) {
                    let Reverse((_, id, ev)) = sc.events.pop().expect("peeked");
                    if sc.moving.contains(&id) {
                        // The hot-remove is copying a part of this guest: its event waits.
                        sc.events.push(Reverse((now + MOVING_RETRY.as_nanos() as u64, id, ev)));
                        return Next::Wait(MOVING_RETRY);
                    }
                    Next::Job(Job::Event(id, ev, sc.alive.remove(&id)))
                } else {
                    sc.next_arrival += 1;
                    Next::Job(Job::Create(sc.next_arrival as u64 - 1))
                }
            }
            Some(t) => Next::Wait(Duration::from_nanos((t - now).min(2_000_000))),
            None => Next::Wait(Duration::from_millis(2)),
        }
    }

    /// One worker thread: runs jobs until the run is over and every guest destroyed.
    pub(super) fn work(&self) {
        if self.cfg.lock_boost {
            crate::priority::boost_lock_holds();
        }
        let rec = PreemptRecorder::new(self.pool.map_or(200_000, |p| p.config().quantum_ns));
        loop {
            let job = match self.next_job() {
                Next::Done => break,
                Next::Wait(d) => {
                    std::thread::sleep(d);
                    continue;
                }
                Next::Job(j) => j,
            };
            match job {
                Job::Create(idx) => self.create(idx, false, &rec),
                Job::Event(idx, ev @ (Ev::BalloonOut | Ev::BalloonIn), Some(live)) => {
                    self.balloon_event(idx, ev, live, &rec)
                }
                Job::Event(idx, ev, Some(live)) => {
                    self.destroy(live, ev == Ev::Reboot, &rec);
                    // A rebooting guest is built again at once, on memory that is still
                    // dirty from its own teardown.
                    if ev == Ev::Reboot {
                        self.create(idx, true, &rec);
                    }
                }
                Job::Event(_, _, None) => {}
            }
        }
        rec.merge_into(&self.sections);
    }

    /// A guest balloons out or in, and its next event is scheduled.
    fn balloon_event(&self, idx: u64, ev: Ev, mut live: Live, rec: &PreemptRecorder) {
        let spec = &self.cfg.workload.guests[idx as usize];
        balloon(self.pool, self.kernel, &mut live, ev, rec, self.oplog, &self.tally);
        let (next, ev) = match ev {
            Ev::BalloonOut => (spec.arrival_s + spec.lifetime_s * 2.0 / 3.0, Ev::BalloonIn),
            _ => (spec.arrival_s + spec.lifetime_s, Ev::Destroy),
        };
        let mut sc = self.sched.lock();
        sc.alive.insert(idx, live);
        let next = (next * 1e9) as u64;
        if next < self.duration_ns {
            sc.events.push(Reverse((next.max(self.now_ns()), idx, ev)));
        }
    }

    /// Destroys a live guest (for good, or to reboot it) and counts it.
    fn destroy(&self, live: Live, reboot: bool, rec: &PreemptRecorder) {
        let ms = match live {
            Live::Heap(mut hg) => {
                if let Some(log) = self.oplog {
                    log_destroy(&mut hg, log);
                }
                self.pool.expect("heap guests need a pool").destroy_guest(hg.g, rec)
            }
            Live::Kernel(g, _) => {
                self.kernel_used.fetch_sub(g_len(&g), Relaxed);
                self.kernel.destroy_guest(g)
            }
            Live::Pod(g) => {
                self.pool.expect("PoD guests need a pool").destroy_pod_guest(g, rec, &|op| log_line(self.oplog, &op))
            }
        };
        self.alive.fetch_sub(1, Relaxed);
        let mut t = self.tally.lock();
        t.destroy_ms.push(ms);
        t.rebooted += reboot as u64;
    }

    /// Creates the guest at workload index `idx` (a new one, or a reboot) and schedules
    /// its first event.
    fn create(&self, idx: u64, reboot: bool, rec: &PreemptRecorder) {
        let cfg = self.cfg;
        let spec = &cfg.workload.guests[idx as usize];
        let dom = DomId(idx as u32 + 1);
        let made = match self.pool {
            Some(p) if pod_guest::is_pod(idx) => {
                create_pod_guest(p, dom, spec.memory_bytes, rec, self.oplog, &self.tally)
            }
            Some(p) => create_heap_guest(p, dom, spec.memory_bytes, cfg.seed, rec, self.oplog, &self.tally),
            None => create_kernel_guest(self.kernel, cfg, &self.kernel_used, dom, spec.memory_bytes, &self.tally),
        };
        if let Some(live) = made {
            self.alive.fetch_add(1, Relaxed);
            self.schedule_first(idx, live, reboot);
        }
    }

    /// A new guest's first event: a reboot midway (a third of the guests, and every
    /// large one, once), else a balloon at a third of its life (a third of the others),
    /// else its destruction; none if it falls after the run.
    fn schedule_first(&self, idx: u64, live: Live, reboot: bool) {
        let cfg = self.cfg;
        let spec = &cfg.workload.guests[idx as usize];
        let now = self.now_ns();
        let start = (spec.arrival_s * 1e9) as u64;
        let end = ((spec.arrival_s + spec.lifetime_s) * 1e9) as u64;
        let mut sc = self.sched.lock();
        sc.alive.insert(idx, live);
        let large = spec.memory_bytes >= cfg.memory_bytes / 8;
        let reboots = cfg.reboots && !reboot && (idx.is_multiple_of(3) || large);
        // PoD guests balloon down at boot, in 4 KiB pages (pod_guest.rs).
        let balloons =
            cfg.balloons && !reboot && !reboots && idx % 3 == 1 && !(self.pool.is_some() && pod_guest::is_pod(idx));
        let third = start + (end - start) / 3;
        if reboots && (start + end) / 2 < self.duration_ns {
            sc.events.push(Reverse((((start + end) / 2).max(now), idx, Ev::Reboot)));
        } else if balloons && third < self.duration_ns {
            sc.events.push(Reverse((third.max(now), idx, Ev::BalloonOut)));
        } else if end < self.duration_ns {
            sc.events.push(Reverse((end.max(now), idx, Ev::Destroy)));
        }
    }
}

fn g_len(g: &KernelGuest) -> u64 {
    g.len() as u64
}

fn create_heap_guest(
    p: &Pool,
    dom: DomId,
    bytes: u64,
    seed: u64,
    rec: &PreemptRecorder,
    log: Option<&OpLog>,
    tally: &Mutex<Tally>,
) -> Option<Live> {
    match p.create_guest(dom, bytes, rec) {
        Ok((g, c)) => {
            p.run_guest(&g);
            let mut hg = HeapGuest { g, allocs: Vec::new(), ballooned: 0, pinned: Vec::new(), moved: Vec::new() };
            if let Some(log) = log {
                log_allocs(&mut hg, 0, "e", log);
            }
            let pinned = p.pin_guest_pages(&mut hg.g, PINS_PER_GUEST, seed, rec);
            let moved = pinned.iter().filter(|q| q.moved()).count() as u64;
            hg.moved.extend(pinned.iter().filter(|q| q.moved()).map(|q| (q.at.mfn, q.at.order, q.was)));
            if let Some(log) = log {
                for q in &pinned {
                    let id = hg.allocs[q.extent].0.clone();
                    log.line(&Op::Pin { id: id.clone(), offset: q.offset, order: 0, pin: true });
                    hg.pinned.push((id, q.offset));
                }
            }
            let mut t = tally.lock();
            t.create_ms.push(c.ms);
            t.highorder_failures += c.highorder_failures;
            t.pins += pinned.len() as u64;
            t.pins_moved += moved;
            Some(Live::Heap(hg))
        }
        Err(HeapError::OutOfMemory { .. } | HeapError::Claim(ClaimError::ClaimExceedsFree { .. })) => {
            tally.lock().refused += 1;
            None
        }
        Err(e) => panic!("guest creation failed in a way the workload cannot cause: {e}"),
    }
}

/// A guest balloons out a quarter of its memory, or back in what it gave.
fn balloon(
    pool: Option<&Pool>,
    kernel: &KernelBackend,
    live: &mut Live,
    ev: Ev,
    rec: &PreemptRecorder,
    log: Option<&OpLog>,
    tally: &Mutex<Tally>,
) {
    let t = Instant::now();
    let (out, bytes) = match live {
        Live::Pod(_) => return,
        Live::Heap(hg) => {
            let p = pool.expect("heap guests need a pool");
            if ev == Ev::BalloonOut {
                let frames: u64 = hg.g.extents.iter().map(|e| e.frames()).sum();
                let freed = p.balloon_out(&mut hg.g, frames / 4, rec);
                if let Some(log) = log {
                    for &(mfn, order) in &freed {
                        let op = hg.free_op(mfn, order);
                        log.line(&op);
                    }
                }
                hg.ballooned = freed.iter().map(|&(_, o)| 1u64 << o).sum();
                (true, hg.ballooned * 4096)
            } else {
                let node = hg.g.extents.first().map_or(0, |e| e.node);
                let from = hg.g.extents.len();
                let got: u64 = p.balloon_in(&mut hg.g, hg.ballooned, node, rec).iter().map(|e| e.frames()).sum();
                if let Some(log) = log {
                    log_allocs(hg, from, "b", log);
                }
                if got < hg.ballooned {
                    tally.lock().balloon.short += 1;
                }
                hg.ballooned = 0;
                (false, got * 4096)
            }
        }
        Live::Kernel(g, ballooned) => {
            if ev == Ev::BalloonOut {
                *ballooned = kernel.balloon_out(g, g_len(g) / 4);
                (true, *ballooned)
            } else {
                kernel.balloon_in(g, *ballooned);
                let b = std::mem::take(ballooned);
                (false, b)
            }
        }
    };
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let mut t = tally.lock();
    if out {
        t.balloon.out_ms.push(ms);
        t.balloon.bytes_out += bytes;
    } else {
        t.balloon.in_ms.push(ms);
        t.balloon.bytes_in += bytes;
    }
}

fn create_pod_guest(
    p: &Pool,
    dom: DomId,
    bytes: u64,
    rec: &PreemptRecorder,
    log: Option<&OpLog>,
    tally: &Mutex<Tally>,
) -> Option<Live> {
    match p.create_pod_guest(dom, bytes, rec, &|op| log_line(log, &op)) {
        Ok((g, c, ballooned)) => {
            let mut t = tally.lock();
            t.create_ms.push(c.ms);
            t.pod_created += 1;
            t.pod_ballooned += ballooned;
            Some(Live::Pod(g))
        }
        Err(e) if e.is_out_of_memory() => {
            let mut t = tally.lock();
            t.refused += 1;
            t.pod_refused += 1;
            None
        }
        Err(e) => panic!("PoD guest creation failed in a way the workload cannot cause: {e}"),
    }
}

fn create_kernel_guest(
    k: &KernelBackend,
    cfg: &RunConfig,
    used: &AtomicU64,
    dom: DomId,
    bytes: u64,
    tally: &Mutex<Tally>,
) -> Option<Live> {
    let len = bytes.div_ceil(4096) * 4096;
    if used.fetch_add(len, Relaxed) + len > cfg.memory_bytes {
        used.fetch_sub(len, Relaxed);
        tally.lock().refused += 1;
        return None;
    }
    match k.create_guest(dom, bytes) {
        Ok((mut g, ms)) => {
            k.run_guest(&mut g);
            let mut t = tally.lock();
            t.create_ms.push(ms);
            Some(Live::Kernel(g, 0))
        }
        Err(_) => {
            used.fetch_sub(len, Relaxed);
            tally.lock().refused += 1;
            None
        }
    }
}
