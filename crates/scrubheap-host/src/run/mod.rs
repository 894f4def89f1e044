//! `scrubheap run`: tenant churn on a real arena with real threads. Worker threads play
//! the workload's timeline (create each guest when it arrives, write its tag into every
//! page, destroy it when its lifetime ends); scrubber threads scrub in the background; a
//! sampler records memory composition over time. Everything is measured as it happens.

use crate::instrument::{PreemptRecorder, Sections};
use crate::pool::{Pool, PoolConfig, PoolError, SAMPLED_WORDS_PER_FRAME};
use crate::tenants::guest::{Guest, GuestOps, KernelBackend, KernelGuest};
use crate::tenants::hot_remove::{move_guest_part, WallDeadline};
use crate::tenants::pins::PinOps;
use crate::tenants::pod_guest::{self, PodGuestOps};
use parking_lot::Mutex;
use report::*;
use scrubheap::{DomId, Extent, HeapError, Mfn, Policy};
use scrubheap_workload::Workload;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

pub mod report;

/// Where guests get their memory.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The scrubheap pool under a policy.
    Heap(Policy),
    /// Fresh anonymous memory per guest, zeroed by the kernel at fault.
    Kernel,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Heap(p) => write!(f, "{p}"),
            Backend::Kernel => f.write_str("kernel"),
        }
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "kernel" {
            return Ok(Backend::Kernel);
        }
        s.parse::<Policy>()
            .map(Backend::Heap)
            .map_err(|_| format!("unknown policy '{s}': use one of sync, alloc, xen, xen-cap2m, scrubheap, kernel"))
    }
}

/// How a run is set up.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Arena bytes.
    pub memory_bytes: u64,
    /// Nodes (emulated on a one-node host).
    pub nodes: usize,
    /// Scrubber threads per node.
    pub scrubbers_per_node: usize,
    /// Where guests get memory.
    pub backend: Backend,
    /// Seed (recorded in the report; the workload was built with it).
    pub seed: u64,
    /// Who arrives when with how much for how long.
    pub workload: Workload,
    /// Threads that create and destroy guests.
    pub workers: usize,
    /// Verify mode: poison freed frames, check every word handed over.
    pub verify: bool,
    /// Try hugetlbfs for the arena.
    pub hugetlb: bool,
    /// Milliseconds between timeline samples.
    pub sample_ms: u64,
    /// Scrubbers at SCHED_IDLE.
    pub idle_priority: bool,
    /// Write every allocation, free and claim the workers make as an op log here.
    pub record: Option<PathBuf>,
    /// Zeroing kernel, or calibrate.
    pub kernel: Option<crate::Kernel>,
    /// A third of the guests, and every guest of at least an eighth of the host, reboot
    /// once midway through their life: torn down and built again at once, on memory still
    /// dirty from the teardown (the field's case: large guests rebooting on a full host).
    pub reboots: bool,
    /// A third of the guests that do not reboot balloon out a quarter of their memory a
    /// third of the way through their life and balloon it back in at two thirds.
    pub balloons: bool,
    /// The host has just booted: every frame holds the previous boot's bytes (poison) and
    /// is dirty, scrubbed by idle CPUs while the first guests are built (Xen's
    /// `bootscrub=idle`), instead of starting from memory known to be zero.
    pub boot_dirty: bool,
}

/// Why a run could not go on.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The pool could not be built.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// An I/O error (the op log).
    #[error("{0}")]
    Io(String),
}

/// What happens to a live guest at a scheduled time. A live guest has at most one event
/// pending (none when its next one would fall after the run); handling it schedules the
/// next.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Destroy,
    Reboot,
    BalloonOut,
    BalloonIn,
}

enum Job {
    Create(u64),
    Event(u64, Ev, Option<Live>),
}

enum Live {
    Heap(HeapGuest),
    Kernel(KernelGuest, u64),
    Pod(pod_guest::PodGuest),
}

/// A pool guest, with what the op log needs to name its frees: every allocation it made
/// (`id`, first frame, order, frames still held), the frames ballooned out, and the pages
/// it pinned (`id`, offset).
struct HeapGuest {
    g: Guest,
    allocs: Vec<(String, Mfn, u8, u64)>,
    ballooned: u64,
    pinned: Vec<(String, u64)>,
    /// Parts moved by a pin or the hot-remove: (where they are now, order, where they
    /// were allocated), so the op log can name them by allocation and offset wherever
    /// they went (the replayer follows moves by itself).
    moved: Vec<(Mfn, u8, Mfn)>,
}

impl HeapGuest {
    /// The op-log line freeing `[mfn, 2^order)`, a part of one of this guest's allocations:
    /// by id and offset while the part is where it was allocated, by frame once a pin or
    /// the hot-remove has moved it.
    fn free_line(&mut self, mfn: Mfn, order: u8) -> String {
        let mut mfn = mfn;
        for _ in 0..self.moved.len() {
            match self.moved.iter().rev().find(|m| m.0 .0 <= mfn.0 && mfn.0 < m.0 .0 + (1u64 << m.1)) {
                Some(m) => mfn = Mfn(m.2 .0 + (mfn.0 - m.0 .0)),
                None => break,
            }
        }
        // Newest first: an older allocation's range may hold frames this guest gave back
        // and got again in a newer one.
        match self.allocs.iter_mut().rev().find(|a| a.1 .0 <= mfn.0 && mfn.0 < a.1 .0 + (1u64 << a.2)) {
            Some(a) => {
                a.3 -= 1 << order;
                format!("free id={} offset={} order={order}", a.0, mfn.0 - a.1 .0)
            }
            None => format!("free mfn={mfn} order={order} dom={}", self.g.dom.0),
        }
    }
}

/// The upper quarter of every node is its Movable zone: guest memory (movable) fills it
/// first, unmovable memory never does, and the hot-remove takes its upper half on node 0.
pub const MOVABLE_FRACTION: f64 = 0.25;

/// Pages each guest pins long-term, as a device doing DMA into them would.
pub const PINS_PER_GUEST: usize = 4;

/// When the hot-remove happens and when the range comes back, as fractions of the run.
const HOT_REMOVE_AT: f64 = 0.4;
const HOT_ADD_AT: f64 = 0.6;
/// How long one offline attempt may run, and how long the hot-remove keeps retrying.
const OFFLINE_DEADLINE: Duration = Duration::from_secs(2);
const HOT_REMOVE_BUDGET: Duration = Duration::from_secs(5);

struct Sched {
    next_arrival: usize,
    /// (time ns, guest, event), earliest first.
    events: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    alive: HashMap<u64, Live>,
}

#[derive(Default)]
struct Tally {
    create_ms: Vec<f64>,
    destroy_ms: Vec<f64>,
    rebooted: u64,
    refused: u64,
    highorder_failures: u64,
    pins: u64,
    pins_moved: u64,
    balloon: BalloonTally,
    pod_created: u64,
    pod_refused: u64,
    pod_ballooned: u64,
}

#[derive(Default)]
struct BalloonTally {
    out_ms: Vec<f64>,
    in_ms: Vec<f64>,
    bytes_out: u64,
    bytes_in: u64,
    short: u64,
}

struct OpLog(Mutex<std::io::BufWriter<std::fs::File>>);

impl OpLog {
    fn line(&self, s: &str) {
        let _ = writeln!(self.0.lock(), "{s}");
    }
}

/// Runs the workload; `on_sample` sees every timeline sample as it is taken (for a live
/// display).
pub fn run(cfg: &RunConfig, on_sample: &(dyn Fn(&Sample, &RunProgress) + Sync)) -> Result<RunReport, RunError> {
    let pool = match cfg.backend {
        Backend::Heap(policy) => Some(Pool::new(PoolConfig {
            memory_bytes: cfg.memory_bytes,
            nodes: cfg.nodes,
            scrubbers_per_node: cfg.scrubbers_per_node,
            policy,
            verify: cfg.verify,
            hugetlb: cfg.hugetlb,
            idle_priority: cfg.idle_priority,
            kernel: cfg.kernel,
            movable_fraction: Some(MOVABLE_FRACTION),
            initially_dirty: cfg.boot_dirty,
            ..PoolConfig::default()
        })?),
        Backend::Kernel => None,
    };
    let kernel = KernelBackend::default();
    let oplog = match &cfg.record {
        Some(p) => {
            let f = std::fs::File::create(p)
                .map_err(|e| RunError::Io(format!("cannot write op log {}: {e}", p.display())))?;
            let log = OpLog(Mutex::new(std::io::BufWriter::new(f)));
            if let Some(pool) = &pool {
                let per = pool.heap().node_range(0).map(|(a, b)| b.0 - a.0).unwrap_or(0);
                log.line(&format!("# recorded by scrubheap run, policy {}, seed {}", cfg.backend, cfg.seed));
                let mf = (per as f64 * (1.0 - MOVABLE_FRACTION)) as u64;
                log.line(&format!(
                    "heap nodes={} frames_per_node={per} movable_from={mf} policy={}",
                    cfg.nodes, cfg.backend
                ));
            }
            Some(log)
        }
        None => None,
    };
    let sched = Mutex::new(Sched { next_arrival: 0, events: BinaryHeap::new(), alive: HashMap::new() });
    let tally = Mutex::new(Tally::default());
    let sections = Sections::default();
    let alive = AtomicU64::new(0);
    let kernel_used = AtomicU64::new(0);
    let sampling = AtomicBool::new(true);
    let timeline = Mutex::new(Vec::new());
    let duration_ns = (cfg.workload.duration_s * 1e9) as u64;
    let t0 = Instant::now();
    let guests = &cfg.workload.guests;
    let progress = RunProgress { guests_total: guests.len() as u64, duration_s: cfg.workload.duration_s };
    let hot_remove = Mutex::new(None);

    std::thread::scope(|s| {
        s.spawn(|| {
            let mut last = (0u64, Instant::now());
            while sampling.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(cfg.sample_ms.max(10)));
                let sample = sample(pool.as_ref(), cfg, t0, &alive, &kernel_used, &mut last);
                on_sample(&sample, &progress);
                timeline.lock().push(sample);
            }
        });
        if let Some(p) = &pool {
            s.spawn(|| {
                let r = hot_remove_and_add(p, cfg, t0, &sampling, &sched, oplog.as_ref());
                *hot_remove.lock() = r;
            });
        }
        let workers: Vec<_> = (0..cfg.workers.max(1))
            .map(|_| {
                s.spawn(|| {
                    let rec = PreemptRecorder::new(pool.as_ref().map_or(200_000, |p| p.config().quantum_ns));
                    loop {
                        let now = t0.elapsed().as_nanos() as u64;
                        let job = {
                            let mut sc = sched.lock();
                            if now >= duration_ns {
                                let id = sc.alive.keys().next().copied();
                                match id {
                                    Some(id) => Some(Job::Event(id, Ev::Destroy, sc.alive.remove(&id))),
                                    None => break,
                                }
                            } else {
                                let arrival = guests.get(sc.next_arrival).map(|g| (g.arrival_s * 1e9) as u64);
                                let destroy = sc.events.peek().map(|r| r.0 .0);
                                let next = match (arrival, destroy) {
                                    (Some(a), Some(d)) => Some(a.min(d)),
                                    (a, d) => a.or(d),
                                };
                                match next {
                                    Some(t) if t <= now => {
                                        if destroy == Some(t) {
                                            let Reverse((_, id, ev)) = sc.events.pop().expect("peeked");
                                            Some(Job::Event(id, ev, sc.alive.remove(&id)))
                                        } else {
                                            sc.next_arrival += 1;
                                            Some(Job::Create(sc.next_arrival as u64 - 1))
                                        }
                                    }
                                    Some(t) => {
                                        drop(sc);
                                        std::thread::sleep(Duration::from_nanos((t - now).min(2_000_000)));
                                        None
                                    }
                                    None => {
                                        drop(sc);
                                        std::thread::sleep(Duration::from_millis(2));
                                        None
                                    }
                                }
                            }
                        };
                        let Some(job) = job else { continue };
                        let (idx, live, reboot, create) = match job {
                            Job::Create(idx) => (idx, None, false, true),
                            Job::Event(idx, ev @ (Ev::BalloonOut | Ev::BalloonIn), Some(mut live)) => {
                                let spec = &guests[idx as usize];
                                balloon(pool.as_ref(), &kernel, &mut live, ev, &rec, oplog.as_ref(), &tally);
                                let (next, ev) = match ev {
                                    Ev::BalloonOut => (spec.arrival_s + spec.lifetime_s * 2.0 / 3.0, Ev::BalloonIn),
                                    _ => (spec.arrival_s + spec.lifetime_s, Ev::Destroy),
                                };
                                let mut sc = sched.lock();
                                sc.alive.insert(idx, live);
                                let next = (next * 1e9) as u64;
                                if next < duration_ns {
                                    sc.events.push(Reverse((next.max(t0.elapsed().as_nanos() as u64), idx, ev)));
                                }
                                continue;
                            }
                            Job::Event(idx, ev, live) => (idx, live, ev == Ev::Reboot, false),
                        };
                        if let Some(live) = live {
                            let ms = match live {
                                Live::Heap(mut hg) => {
                                    if let Some(log) = &oplog {
                                        for (id, off) in &hg.pinned {
                                            log.line(&format!("unpin id={id} offset={off} order=0"));
                                        }
                                        for a in hg.allocs.iter().filter(|a| a.3 > 0) {
                                            log.line(&format!("free id={}", a.0));
                                        }
                                        hg.allocs.clear();
                                    }
                                    pool.as_ref().expect("heap guests need a pool").destroy_guest(hg.g, &rec)
                                }
                                Live::Kernel(g, _) => {
                                    kernel_used.fetch_sub(g_len(&g), Relaxed);
                                    kernel.destroy_guest(g)
                                }
                                Live::Pod(g) => {
                                    pool.as_ref()
                                        .expect("PoD guests need a pool")
                                        .destroy_pod_guest(g, &rec, &|l| log_line(oplog.as_ref(), &l))
                                }
                            };
                            alive.fetch_sub(1, Relaxed);
                            let mut t = tally.lock();
                            t.destroy_ms.push(ms);
                            t.rebooted += reboot as u64;
                            if !reboot {
                                continue;
                            }
                        } else if !create {
                            continue;
                        }
                        // A new guest, or a rebooting one built again at once on memory
                        // that is still dirty from its own teardown.
                        let spec = &guests[idx as usize];
                        let dom = DomId(idx as u32 + 1);
                        let made = match &pool {
                            Some(p) if pod_guest::is_pod(idx) => {
                                create_pod_guest(p, dom, spec.memory_bytes, &rec, oplog.as_ref(), &tally)
                            }
                            Some(p) => {
                                create_heap_guest(p, dom, spec.memory_bytes, cfg.seed, &rec, oplog.as_ref(), &tally)
                            }
                            None => create_kernel_guest(&kernel, cfg, &kernel_used, dom, spec.memory_bytes, &tally),
                        };
                        if let Some(live) = made {
                            alive.fetch_add(1, Relaxed);
                            let now = t0.elapsed().as_nanos() as u64;
                            let start = (spec.arrival_s * 1e9) as u64;
                            let end = ((spec.arrival_s + spec.lifetime_s) * 1e9) as u64;
                            let mut sc = sched.lock();
                            sc.alive.insert(idx, live);
                            let large = spec.memory_bytes >= cfg.memory_bytes / 8;
                            let reboots = cfg.reboots && !reboot && (idx % 3 == 0 || large);
                            // PoD guests balloon down at boot, in 4 KiB pages (pod_guest.rs).
                            let balloons = cfg.balloons
                                && !reboot
                                && !reboots
                                && idx % 3 == 1
                                && !(pool.is_some() && pod_guest::is_pod(idx));
                            let third = start + (end - start) / 3;
                            if reboots && (start + end) / 2 < duration_ns {
                                sc.events.push(Reverse((((start + end) / 2).max(now), idx, Ev::Reboot)));
                            } else if balloons && third < duration_ns {
                                sc.events.push(Reverse((third.max(now), idx, Ev::BalloonOut)));
                            } else if end < duration_ns {
                                sc.events.push(Reverse((end.max(now), idx, Ev::Destroy)));
                            }
                        }
                    }
                    rec.merge_into(&sections);
                })
            })
            .collect();
        for w in workers {
            if let Err(e) = w.join() {
                sampling.store(false, Relaxed);
                std::panic::resume_unwind(e);
            }
        }
        sampling.store(false, Relaxed);
    });
    let run_s = t0.elapsed().as_secs_f64();
    let clean_t = Instant::now();
    let clean = pool.as_ref().is_none_or(|p| p.wait_clean(Duration::from_secs(60)));
    let time_to_clean_s = clean_t.elapsed().as_secs_f64();
    if let Some(log) = &oplog {
        log.line("check");
        let _ = log.0.lock().flush();
    }
    let t = tally.into_inner();
    let t_pod = (t.pod_created, t.pod_refused, t.pod_ballooned);
    let mut r = RunReport {
        schema: 1,
        policy: cfg.backend.to_string(),
        memory_bytes: cfg.memory_bytes,
        nodes: cfg.nodes,
        seed: cfg.seed,
        duration_s: run_s,
        domains_created: t.create_ms.len() as u64,
        domains_destroyed: t.destroy_ms.len() as u64,
        domains_rebooted: t.rebooted,
        create_ms: Millis::of(&t.create_ms),
        destroy_ms: Millis::of(&t.destroy_ms),
        highorder_failures: t.highorder_failures,
        guests_refused: t.refused,
        balloon: Balloon {
            out: t.balloon.out_ms.len() as u64,
            r#in: t.balloon.in_ms.len() as u64,
            bytes_out: t.balloon.bytes_out,
            bytes_in: t.balloon.bytes_in,
            in_short: t.balloon.short,
            out_ms: Millis::of(&t.balloon.out_ms),
            in_ms: Millis::of(&t.balloon.in_ms),
        },
        create_samples_ms: t.create_ms,
        destroy_samples_ms: t.destroy_ms,
        timeline: timeline.into_inner(),
        workload: WorkloadInfo {
            source: cfg.workload.source.clone(),
            memory_scale: cfg.workload.memory_scale,
            time_scale: cfg.workload.time_scale,
            guests: guests.len() as u64,
        },
        pins: PinReport { pages: t.pins, moved_to_normal: t.pins_moved },
        hot_remove: hot_remove.into_inner(),
        ..RunReport::default()
    };
    if let Some(h) = &r.hot_remove {
        r.notes.push(format!(
            "hot-remove of {} MiB at {} ({:.1} s): {}, {} attempt(s), {:.1} ms, {} MiB of guest memory moved; back online at {:.1} s",
            h.bytes >> 20,
            h.first_mfn,
            h.at_s,
            if h.completed { "offline" } else { "NOT offline" },
            h.attempts,
            h.time_to_offline_ms,
            h.migrated_bytes >> 20,
            h.online_at_s
        ));
    }
    if !clean {
        r.notes.push("memory was still dirty 60 s after the run ended".into());
    } else if pool.is_some() {
        r.notes.push(format!("all memory clean {time_to_clean_s:.3} s after the run ended"));
    }
    match pool {
        Some(pool) => {
            let heap_violations = pool.heap().check_invariants().err();
            let s = pool.heap().stats();
            let (frames, busy) = pool.scrub_progress();
            let locks = pool.locks.clone();
            let pool_sections = pool.sections.clone();
            let leaks = (
                pool.leaks.pages_checked.load(Relaxed),
                pool.leaks.nonzero_pages.load(Relaxed),
                pool.leaks.words_checked.load(Relaxed),
            );
            let arena = pool.arena();
            r.kernel = arena.kernel().name().into();
            r.backing = format!("{}, {}", arena.backing(), arena.numa());
            r.raw_zero_gbps = arena.calibration().map_or(0.0, |c| c.gbps_of(c.best).unwrap_or(0.0));
            r.scrubbers = cfg.nodes * cfg.scrubbers_per_node;
            r.verify_mode(cfg.verify, leaks);
            r.bytes_scrubbed = BytesScrubbed {
                background: s.scrubbed.background,
                in_place: s.scrubbed.in_place,
                sync: s.scrubbed.sync,
                kernel: 0,
            };
            r.scrub_gbps = if busy.is_zero() { 0.0 } else { frames as f64 * 4096.0 / busy.as_secs_f64() / 1e9 };
            if let Some(v) = heap_violations {
                r.invariant_violations = 1;
                r.notes.push(format!("invariant violation: {v}"));
            }
            r.pod = pool.pod_summary(t_pod.0, t_pod.1, t_pod.2);
            if s.allocated != 0 {
                r.invariant_violations += 1;
                r.notes.push(format!("{} frames still allocated after every guest was destroyed", s.allocated));
            }
            drop(pool);
            let ([p50, p99, p999, max], _) = locks.quantiles_us();
            r.lock_hold_us = LockHoldMicros { p50, p99, p999, max };
            let (a, b, _) = pool_sections.summary();
            let (c, d, _) = sections.summary();
            r.max_nonpreemptible_us = a.max(c);
            r.sections_max_us = SectionsBy { workers: c, scrubbers: a, workers_op: sections.longest_op().into() };
            r.max_nonpreemptible_wall_us = b.max(d);
        }
        None => {
            r.kernel = "kernel page-fault zeroing".into();
            r.backing = "anonymous memory per guest".into();
            r.leak_check = LeakCheck {
                pages_checked: kernel.pages_checked.load(Relaxed),
                nonzero_pages: kernel.nonzero_pages.load(Relaxed),
                words_checked: kernel.words_checked.load(Relaxed),
                mode: "sampled".into(),
            };
            r.bytes_scrubbed.kernel = kernel.bytes_zeroed.load(Relaxed);
            r.notes.push(
                "kernel baseline: no heap, so no preemption points or heap locks to measure (0 means not measured); \
                 the kernel zeroes every page at fault"
                    .into(),
            );
        }
    }
    Ok(r)
}

impl RunReport {
    fn verify_mode(&mut self, verify: bool, (pages, bad, words): (u64, u64, u64)) {
        let mode =
            if verify { "full".to_string() } else { format!("sampled ({SAMPLED_WORDS_PER_FRAME} words per page)") };
        self.leak_check = LeakCheck { pages_checked: pages, nonzero_pages: bad, words_checked: words, mode };
    }
}

/// What the live display needs besides the sample.
pub struct RunProgress {
    /// Guests in the workload.
    pub guests_total: u64,
    /// Planned run length.
    pub duration_s: f64,
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
            let pinned = p.pin_guest_pages(&mut hg.g, PINS_PER_GUEST, seed);
            let moved = pinned.iter().filter(|q| q.moved()).count() as u64;
            hg.moved.extend(pinned.iter().filter(|q| q.moved()).map(|q| (q.at.mfn, q.at.order, q.was)));
            if let Some(log) = log {
                for q in &pinned {
                    let id = hg.allocs[q.extent].0.clone();
                    log.line(&format!("pin id={id} offset={} order=0", q.offset));
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
        Err(HeapError::OutOfMemory { .. } | HeapError::ClaimExceedsFree { .. }) => {
            tally.lock().refused += 1;
            None
        }
        Err(e) => panic!("guest creation failed in a way the workload cannot cause: {e}"),
    }
}

/// Logs an `alloc` line for each of the guest's extents from `from` on, naming them
/// `d<dom><kind><n>`.
fn log_allocs(hg: &mut HeapGuest, from: usize, kind: &str, log: &OpLog) {
    let dom = hg.g.dom.0;
    for e in &hg.g.extents[from..] {
        let id = format!("d{dom}{kind}{}", hg.allocs.len());
        log.line(&format!("alloc id={id} dom={dom} order={} node={} movable", e.order, e.node));
        hg.allocs.push((id, e.mfn, e.order, e.frames()));
        // Frames moved here once and given back since are this allocation's now.
        let (lo, hi) = (e.mfn.0, e.mfn.0 + e.frames());
        hg.moved.retain(|m| m.0 .0 + (1u64 << m.1) <= lo || hi <= m.0 .0);
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
                        let line = hg.free_line(mfn, order);
                        log.line(&line);
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

fn log_line(log: Option<&OpLog>, l: &str) {
    if let Some(log) = log {
        log.line(l);
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
    match p.create_pod_guest(dom, bytes, rec, &|l| log_line(log, &l)) {
        Ok((g, c, ballooned)) => {
            let mut t = tally.lock();
            t.create_ms.push(c.ms);
            t.pod_created += 1;
            t.pod_ballooned += ballooned;
            Some(Live::Pod(g))
        }
        Err(HeapError::OutOfMemory { .. }) => {
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

fn sample(
    pool: Option<&Pool>,
    cfg: &RunConfig,
    t0: Instant,
    alive: &AtomicU64,
    kernel_used: &AtomicU64,
    last: &mut (u64, Instant),
) -> Sample {
    let t = t0.elapsed().as_secs_f64();
    let guests = alive.load(Relaxed);
    match pool {
        Some(p) => {
            let h = p.heap();
            let nodes = (0..h.node_count())
                .map(|n| {
                    let s = h.node_stats(n).expect("node exists");
                    NodeSample { clean: s.free_clean * 4096, dirty: s.free_dirty * 4096, used: s.allocated * 4096 }
                })
                .collect();
            let (frames, _) = p.scrub_progress();
            let dt = last.1.elapsed().as_secs_f64().max(1e-6);
            let gbps = (frames - last.0) as f64 * 4096.0 / dt / 1e9;
            *last = (frames, Instant::now());
            Sample { t, guests, nodes, scrub_gbps: gbps }
        }
        None => {
            let used = kernel_used.load(Relaxed);
            let n = NodeSample { clean: cfg.memory_bytes.saturating_sub(used), dirty: 0, used };
            Sample { t, guests, nodes: vec![n], scrub_gbps: 0.0 }
        }
    }
}

/// The hot-remove: at [`HOT_REMOVE_AT`] of the run, offlines the upper half of node 0's
/// Movable zone, moving guest memory out (the guests' frame lists are updated under the
/// scheduler lock; a guest being built or torn down at that moment refuses, and the
/// attempt is rolled back and retried); at [`HOT_ADD_AT`] (or when the run ends) puts
/// the range back online, dirty.
fn hot_remove_and_add(
    p: &Pool,
    cfg: &RunConfig,
    t0: Instant,
    running: &AtomicBool,
    sched: &Mutex<Sched>,
    log: Option<&OpLog>,
) -> Option<HotRemoveReport> {
    let heap = p.heap();
    let (a, b) = heap.node_range(0).ok()?;
    let count = ((b.0 - a.0) as f64 * MOVABLE_FRACTION / 2.0) as u64;
    let first = Mfn(b.0 - count);
    let at = Duration::from_secs_f64(cfg.workload.duration_s * HOT_REMOVE_AT);
    while t0.elapsed() < at {
        if !running.load(Relaxed) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let migrator = |owner: DomId, from: Extent, to: Extent| -> bool {
        let mut sc = sched.lock();
        let Some(Live::Heap(hg)) = sc.alive.get_mut(&(owner.0 as u64 - 1)) else { return false };
        if !hg.g.extents.iter().any(|e| e.mfn.0 <= from.mfn.0 && from.mfn.0 + from.frames() <= e.mfn.0 + e.frames()) {
            return false;
        }
        let done = move_guest_part(p, &mut hg.g.extents, from, to);
        if done {
            hg.moved.push((to.mfn, to.order, from.mfn));
        }
        done
    };
    let mut rep = HotRemoveReport {
        first_mfn: format!("{first}"),
        bytes: count * 4096,
        at_s: t0.elapsed().as_secs_f64(),
        ..HotRemoveReport::default()
    };
    let start = Instant::now();
    while start.elapsed() < HOT_REMOVE_BUDGET {
        rep.attempts += 1;
        match heap.offline(first, count, &migrator, &WallDeadline(Instant::now() + OFFLINE_DEADLINE)) {
            Ok(done) => {
                rep.completed = true;
                rep.time_to_offline_ms = start.elapsed().as_secs_f64() * 1e3;
                rep.migrated_bytes = done.migrated_frames * 4096;
                rep.migrated_extents = done.migrated_chunks;
                rep.aborted_scrubs = done.aborted_scrubs;
                break;
            }
            Err(HeapError::OfflineBlocked { blockers, stop, .. }) => {
                if rep.blockers.len() < 8 {
                    let first = blockers.first().map_or("none named".into(), |b| b.to_string());
                    rep.blockers.push(format!("{stop}: {first}"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                rep.blockers.push(e.to_string());
                break;
            }
        }
    }
    if rep.completed {
        if let Some(log) = log {
            log.line(&format!("offline mfn={first} count={count}"));
        }
        let back = Duration::from_secs_f64(cfg.workload.duration_s * HOT_ADD_AT);
        while t0.elapsed() < back && running.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
        heap.online(first, count).expect("the range this hot-remove took offline comes back");
        p.ring(0);
        if let Some(log) = log {
            log.line(&format!("online mfn={first} count={count}"));
        }
    }
    rep.online_at_s = t0.elapsed().as_secs_f64();
    Some(rep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use scrubheap::Extent;

    fn guest() -> HeapGuest {
        let g = Guest { dom: DomId(1), extents: Vec::new(), pins: Vec::new() };
        HeapGuest {
            g,
            allocs: vec![("d1e0".into(), Mfn(0), 9, 512)],
            ballooned: 0,
            pinned: Vec::new(),
            moved: Vec::new(),
        }
    }

    #[test]
    fn frees_are_named_by_allocation_and_offset_even_after_a_move() {
        let mut hg = guest();
        assert_eq!(hg.free_line(Mfn(8), 3), "free id=d1e0 offset=8 order=3");
        // Frames [32, 48) moved to [4096, 4112) by the hot-remove: a free of part of the
        // new place names the part of the allocation it came from.
        hg.moved.push((Mfn(4096), 4, Mfn(32)));
        assert_eq!(hg.free_line(Mfn(4100), 2), "free id=d1e0 offset=36 order=2");
        // Moved twice: followed back to where it was allocated.
        hg.moved.push((Mfn(8192), 2, Mfn(4104)));
        assert_eq!(hg.free_line(Mfn(8192), 2), "free id=d1e0 offset=40 order=2");
    }

    #[test]
    fn frames_got_again_belong_to_the_newest_allocation() {
        let mut hg = guest();
        hg.moved.push((Mfn(4096), 4, Mfn(32)));
        // The guest gave [4096, 4112) back and a balloon-in allocation got [4096, 4608).
        hg.g.extents.push(Extent { mfn: Mfn(4096), order: 9, node: 0 });
        let log = OpLog(Mutex::new(std::io::BufWriter::new(tempfile())));
        log_allocs(&mut hg, 0, "b", &log);
        assert!(hg.moved.is_empty());
        assert_eq!(hg.free_line(Mfn(4096), 0), "free id=d1b1 offset=0 order=0");
        // Frames of the old allocation's range that came back in a newer one.
        hg.allocs.push(("d1b2".into(), Mfn(0), 3, 8));
        assert_eq!(hg.free_line(Mfn(0), 3), "free id=d1b2 offset=0 order=3");
    }

    fn tempfile() -> std::fs::File {
        let p = std::env::temp_dir().join(format!("scrubheap-oplog-test-{}", std::process::id()));
        std::fs::File::create(p).unwrap()
    }
}
