//! `scrubheap run`: tenant churn on a real arena with real threads. Worker threads play
//! the workload's timeline (create each guest when it arrives, write its tag into every
//! page, destroy it when its lifetime ends); scrubber threads scrub in the background; a
//! sampler records memory composition over time. Everything is measured as it happens.

use crate::guest::{Guest, KernelBackend, KernelGuest};
use crate::instrument::{PreemptRecorder, Sections};
use crate::pool::{Pool, PoolConfig, PoolError, SAMPLED_WORDS_PER_FRAME};
use crate::report::*;
use crate::workload::Workload;
use parking_lot::Mutex;
use scrubheap::{DomId, HeapError, Policy};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

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

enum Job {
    Create(u64),
    Destroy(u64, Option<Live>),
    Reboot(u64, Option<Live>),
}

enum Live {
    Heap(Guest),
    Kernel(KernelGuest),
    Pod(crate::pod_guest::PodGuest),
}

struct Sched {
    next_arrival: usize,
    /// (time ns, guest, reboot?): destroy or reboot events, earliest first.
    destroys: BinaryHeap<Reverse<(u64, u64, bool)>>,
    alive: HashMap<u64, Live>,
}

#[derive(Default)]
struct Tally {
    create_ms: Vec<f64>,
    destroy_ms: Vec<f64>,
    created: u64,
    destroyed: u64,
    rebooted: u64,
    refused: u64,
    highorder_failures: u64,
    pod_created: u64,
    pod_refused: u64,
    pod_ballooned: u64,
}

struct OpLog(Mutex<std::io::BufWriter<std::fs::File>>);

impl OpLog {
    fn line(&self, s: &str) {
        let _ = writeln!(self.0.lock(), "{s}");
    }
}

fn millis(v: &[f64]) -> Millis {
    if v.is_empty() {
        return Millis::default();
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let q = |p: f64| s[((s.len() - 1) as f64 * p).round() as usize];
    Millis { p50: q(0.5), p99: q(0.99), max: s[s.len() - 1] }
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
                log.line(&format!("heap nodes={} frames_per_node={per} policy={}", cfg.nodes, cfg.backend));
            }
            Some(log)
        }
        None => None,
    };
    let sched = Mutex::new(Sched { next_arrival: 0, destroys: BinaryHeap::new(), alive: HashMap::new() });
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
                                    Some(id) => Some(Job::Destroy(id, sc.alive.remove(&id))),
                                    None => break,
                                }
                            } else {
                                let arrival = guests.get(sc.next_arrival).map(|g| (g.arrival_s * 1e9) as u64);
                                let destroy = sc.destroys.peek().map(|r| r.0 .0);
                                let next = match (arrival, destroy) {
                                    (Some(a), Some(d)) => Some(a.min(d)),
                                    (a, d) => a.or(d),
                                };
                                match next {
                                    Some(t) if t <= now => {
                                        if destroy == Some(t) {
                                            let Reverse((_, id, reboot)) = sc.destroys.pop().expect("peeked");
                                            let live = sc.alive.remove(&id);
                                            Some(if reboot { Job::Reboot(id, live) } else { Job::Destroy(id, live) })
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
                            Job::Destroy(idx, live) => (idx, live, false, false),
                            Job::Reboot(idx, live) => (idx, live, true, false),
                        };
                        if let Some(live) = live {
                            let ms = match live {
                                Live::Heap(g) => {
                                    if let Some(log) = &oplog {
                                        for i in 0..g.extents.len() {
                                            log.line(&format!("free id=d{}e{i}", g.dom.0));
                                        }
                                    }
                                    pool.as_ref().expect("heap guests need a pool").destroy_guest(g, &rec)
                                }
                                Live::Kernel(g) => {
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
                            t.destroyed += 1;
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
                            Some(p) if crate::pod_guest::is_pod(idx) => {
                                create_pod_guest(p, dom, spec.memory_bytes, &rec, oplog.as_ref(), &tally)
                            }
                            Some(p) => create_heap_guest(p, dom, spec.memory_bytes, &rec, oplog.as_ref(), &tally),
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
                            if reboots && (start + end) / 2 < duration_ns {
                                sc.destroys.push(Reverse((((start + end) / 2).max(now), idx, true)));
                            } else if end < duration_ns {
                                sc.destroys.push(Reverse((end.max(now), idx, false)));
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
    let mut r = RunReport {
        schema: 1,
        policy: cfg.backend.to_string(),
        memory_bytes: cfg.memory_bytes,
        nodes: cfg.nodes,
        seed: cfg.seed,
        duration_s: run_s,
        domains_created: t.created,
        domains_destroyed: t.destroyed,
        domains_rebooted: t.rebooted,
        create_ms: millis(&t.create_ms),
        destroy_ms: millis(&t.destroy_ms),
        highorder_failures: t.highorder_failures,
        guests_refused: t.refused,
        create_samples_ms: t.create_ms,
        destroy_samples_ms: t.destroy_ms,
        timeline: timeline.into_inner(),
        workload: WorkloadInfo {
            source: cfg.workload.source.clone(),
            memory_scale: cfg.workload.memory_scale,
            time_scale: cfg.workload.time_scale,
            guests: guests.len() as u64,
        },
        ..RunReport::default()
    };
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
            r.backing = arena.backing().to_string();
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
            r.pod = pool.pod_summary(t.pod_created, t.pod_refused, t.pod_ballooned);
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
    rec: &PreemptRecorder,
    log: Option<&OpLog>,
    tally: &Mutex<Tally>,
) -> Option<Live> {
    match p.create_guest(dom, bytes, rec) {
        Ok((g, c)) => {
            p.run_guest(&g);
            if let Some(log) = log {
                for (i, e) in g.extents.iter().enumerate() {
                    log.line(&format!("alloc id=d{}e{i} dom={} order={} node={}", dom.0, dom.0, e.order, e.node));
                }
            }
            let mut t = tally.lock();
            t.create_ms.push(c.ms);
            t.created += 1;
            t.highorder_failures += c.highorder_failures;
            Some(Live::Heap(g))
        }
        Err(HeapError::OutOfMemory { .. } | HeapError::ClaimExceedsFree { .. }) => {
            tally.lock().refused += 1;
            None
        }
        Err(e) => panic!("guest creation failed in a way the workload cannot cause: {e}"),
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
            t.created += 1;
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
            t.created += 1;
            Some(Live::Kernel(g))
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
