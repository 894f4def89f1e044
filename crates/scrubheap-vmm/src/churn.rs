//! `scrubheap vmm`: real guest churn on the pool.
//!
//! The guests are the first `guests` of `scrubheap run`'s default churn for the same
//! memory and seed (Azure V1 sizes and lifetimes, the host kept about 70% full), played
//! in event order as fast as the machine goes: at each arrival a guest is allocated,
//! booted under KVM, scans its RAM, fills it with its tag and halts, and stays alive
//! (VM and memory held) until its departure, when it is destroyed. Guests still alive
//! after the last arrival are destroyed at the end. So several guests are alive at once
//! (tens, at the default size), and later guests boot on memory earlier ones dirtied.
//!
//! With [`VmmConfig::guest_bytes`] the guests are all of one size instead
//! ([`fixed_workload`]), for figures at a given guest size (1 GiB in `docs/results.md`).
//!
//! Under the `kernel` baseline each guest's RAM is a fresh anonymous mapping instead,
//! which the kernel populates and zeroes as the guest first touches it, and `munmap`s at
//! destroy.

use crate::vm::{
    ms_since, AnonRam, BootStats, GuestProgram, Kvm, PoolRam, Prefault, Ram, SetupTimes, Tenant, TscFrequency,
    VmmError, MAX_GUEST_BYTES, MIN_GUEST_BYTES,
};
use scrubheap::ClaimError;
use scrubheap::{DomId, HeapError};
use scrubheap_host::guest::tag_of;
use scrubheap_host::instrument::PreemptRecorder;
use scrubheap_host::pool::{LeakTally, Pool, PoolConfig};
use scrubheap_host::report::Millis;
use scrubheap_host::run::Backend;
use scrubheap_host::GuestOps;
use scrubheap_workload::{GuestSpec, Workload};
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How a `scrubheap vmm` run is set up.
#[derive(Clone, Debug)]
pub struct VmmConfig {
    /// Arena bytes (and the host size the workload is scaled to).
    pub memory_bytes: u64,
    /// Nodes (emulated on a one-node host).
    pub nodes: usize,
    /// Scrubber threads per node.
    pub scrubbers_per_node: usize,
    /// Pool policy, or the `kernel` baseline.
    pub backend: Backend,
    /// Guests to boot.
    pub guests: usize,
    /// Workload seed.
    pub seed: u64,
    /// Try hugetlbfs for the arena.
    pub hugetlb: bool,
    /// The pool's verify mode: every word of every frame read back after its scrub and
    /// read again at handoff, on the guest's critical path (otherwise a sample is read
    /// back after each scrub and nothing at handoff).
    pub verify: bool,
    /// Populate-on-demand guests booted at 3/4 of their maximum, whose balloon drivers
    /// give back the rest ([`crate::pod::pod_ram`]); pool backends only (the `kernel`
    /// baseline ignores it).
    pub pod: bool,
    /// Every guest of this size instead of the default churn's (see [`fixed_workload`]).
    pub guest_bytes: Option<u64>,
    /// What each guest does with its RAM: the read-only scan then the fill (the default),
    /// or the booting-OS pass that writes each page right after checking it.
    pub program: GuestProgram,
    /// Arrivals back to back, as fast as the machine goes. Otherwise (the default) the
    /// host has the time the workload leaves between two arrivals (at most
    /// [`MAX_GAP_MS`]) to scrub, as a host's idle CPUs would: the VMM's thread scrubs dirty
    /// pool memory until none is left or that time is spent ([`VmmReport::gap_scrub`]).
    pub back_to_back: bool,
}

/// Most wall time the host spends scrubbing in one gap between arrivals, in ms.
pub const MAX_GAP_MS: f64 = 1000.0;
/// Frames one `scrub_step` of the gap's scrubbing may zero (16 MiB) before the VMM looks
/// at the clock again.
const GAP_STEP_FRAMES: u64 = 4096;
/// Most `scrub_step` calls in one gap (each zeroes at most [`GAP_STEP_FRAMES`] or waits
/// 100 us for a scrubber thread): a limit on the loop whatever the clock says.
const MAX_GAP_STEPS: u32 = 100_000;

/// Most of the memory a fixed-size churn keeps alive, in percent (as the default churn).
pub const FIXED_FILL_PERCENT: u64 = 70;

/// Median and 99th percentile, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Quantiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// What the host's idle time between arrivals did for the pool (zero with
/// [`VmmConfig::back_to_back`] and for the `kernel` baseline, which zeroes at fault and
/// has nothing to do ahead).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct GapScrub {
    /// Bytes the VMM's thread scrubbed in the gaps (counted in `bytes_scrubbed`'s
    /// background share too).
    pub bytes: u64,
    /// Wall ms it spent scrubbing or waiting for the scrubber threads in the gaps: the
    /// host's cost of having clean memory ready, paid off every guest's critical path.
    pub ms: f64,
    /// Wall ms the workload's gaps allowed (each at most [`MAX_GAP_MS`]), summed.
    pub budget_ms: f64,
    /// Arrivals that found dirty memory left when their gap was spent.
    pub arrivals_dirty: u64,
}

/// Memory slots per guest.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Memslots {
    /// Median.
    pub p50: u64,
    /// Most.
    pub max: u64,
    /// The per-VM limit KVM reported (`KVM_CAP_NR_MEMSLOTS`).
    pub limit: u64,
}

/// What the guests found: every word of every page they were given but their code page.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct GuestLeakCheck {
    /// 8-byte words the guests scanned.
    pub words_checked: u64,
    /// Of those, non-zero. Must be 0 (a run stops at the first).
    pub nonzero_words: u64,
}

/// The pool's own checks, beside the guests': the read-back after every scrub, the frames
/// clean from boot, and (with `verify`) every frame at handoff.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct HostLeakCheck {
    /// Frames checked, summed over the places.
    pub pages_checked: u64,
    /// Of those, holding a non-zero word read.
    pub nonzero_pages: u64,
    /// Each place's counts: `boot`, `scrub`, `handoff` (empty for `kernel`).
    pub places: Vec<LeakTally>,
}

/// Report of one `scrubheap vmm` run (JSON keys may be added, never renamed).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct VmmReport {
    /// Policy, or `kernel`.
    pub policy: String,
    /// The pool ran in verify mode (every word checked, at scrub and at handoff).
    pub verify: bool,
    /// Arena bytes.
    pub memory_bytes: u64,
    /// Nodes.
    pub nodes: usize,
    /// Scrubber threads per node.
    pub scrubbers: usize,
    /// Workload seed.
    pub seed: u64,
    /// Guests booted, scanned, filled and destroyed.
    pub guests: u64,
    /// Guests the pool had no room for (skipped).
    pub guests_refused: u64,
    /// Most guests alive at once.
    pub max_alive: u64,
    /// Bytes of guest RAM booted, summed over guests.
    pub guest_bytes: u64,
    /// Largest guest, bytes.
    pub largest_guest_bytes: u64,
    /// The guests' own scans.
    pub leak_check: GuestLeakCheck,
    /// The pool's checks by place (zero for `kernel`).
    pub host_leak_check: HostLeakCheck,
    /// Pool allocation (or mmap) to the guest's first instruction.
    pub create_ms: Millis,
    /// Of `create_ms`, the memory: the pool's claim and allocation (with `verify`, also the
    /// handoff check of every word), or the `kernel` baseline's `mmap`.
    pub alloc_ms: Quantiles,
    /// Pool allocation (or mmap) to the guest's done report: create, scan, fill and exits.
    pub ready_ms: Millis,
    /// Guest-measured (TSC) time to scan its RAM.
    pub scan_ms: Quantiles,
    /// Guest bytes scanned per second of guest-measured scan time, over all guests (GB/s).
    pub scan_gbps: f64,
    /// Guest-measured (TSC) time to write its tag over its RAM (for the `kernel` baseline
    /// this is where most page faults land: the first write to each page).
    pub fill_ms: Quantiles,
    /// First instruction to last report (scan, fill and the exits between), VMM wall clock.
    pub run_ms: Quantiles,
    /// VM teardown plus giving the memory back.
    pub destroy_ms: Millis,
    /// KVM memory slots per guest.
    pub memslots: Memslots,
    /// How guest TSC deltas were converted.
    pub tsc: Option<TscFrequency>,
    /// Every guest's size when the churn was of one size (`--guest-size`), else 0.
    pub fixed_guest_bytes: u64,
    /// The create path after the memory, step by step: each step's median over guests.
    pub setup_ms_p50: SetupTimes,
    /// How pool RAM was mapped into KVM before each guest ran (`None` for `kernel`,
    /// whose memory is not populated before the guest touches it).
    pub prefault: Option<Prefault>,
    /// Guest RAM bytes mapped before the guests ran, summed over guests.
    pub prefaulted_bytes: u64,
    /// Bytes scrubbed by the pool: background, in place (by allocations), sync (by frees).
    pub bytes_scrubbed: [u64; 3],
    /// Wall seconds of the whole run (pool set-up excluded).
    pub duration_s: f64,
    /// With `pod`: the PoD guests' balloons, slots removed and populations.
    pub pod: Option<crate::pod::PodVmmReport>,
    /// What the guests ran ([`VmmConfig::program`]).
    pub program: GuestProgram,
    /// The host's scrubbing in the gaps between arrivals.
    pub gap_scrub: GapScrub,
}

/// Progress after each guest event.
#[derive(Clone, Debug, Default)]
pub struct VmmProgress {
    /// Guests booted so far.
    pub booted: u64,
    /// Guests to boot.
    pub total: u64,
    /// Alive now.
    pub alive: u64,
    /// Guest bytes alive now.
    pub alive_bytes: u64,
    /// Words the guests scanned so far.
    pub words_checked: u64,
}

/// The first `n` guests of the default churn for `memory_bytes` and `seed` (a longer
/// stretch of the churn is generated until it holds `n`).
pub fn workload(memory_bytes: u64, n: usize, seed: u64) -> Vec<GuestSpec> {
    let mut duration = (n as f64 / 8.0).max(1.0);
    for _ in 0..16 {
        let w = Workload::default_churn(memory_bytes, duration, seed, None);
        if w.guests.len() >= n || w.guests.is_empty() {
            return w.guests.into_iter().take(n).collect();
        }
        duration *= 1.5;
    }
    Workload::default_churn(memory_bytes, duration, seed, None).guests.into_iter().take(n).collect()
}

/// `n` guests of `guest_bytes` each, one arriving per second, each living as long as
/// keeps as many alive as fit in [`FIXED_FILL_PERCENT`] of `memory_bytes` (at least one):
/// a guest departs as the one that many places after it arrives, so each boots on memory
/// an earlier one dirtied.
pub fn fixed_workload(memory_bytes: u64, guest_bytes: u64, n: usize) -> Vec<GuestSpec> {
    assert!(guest_bytes > 0, "a guest has memory");
    let alive = (memory_bytes * FIXED_FILL_PERCENT / 100 / guest_bytes).max(1);
    let specs: Vec<GuestSpec> = (0..n as u64)
        .map(|id| GuestSpec {
            id,
            arrival_s: id as f64,
            lifetime_s: alive as f64,
            memory_bytes: guest_bytes,
            tenant: id,
        })
        .collect();
    debug_assert!(specs.iter().all(|g| g.memory_bytes == guest_bytes));
    specs
}

/// Runs the churn. Fails at the first leak a guest reports, or any KVM error.
pub fn run(cfg: &VmmConfig, kvm: &Kvm, progress: &dyn Fn(&VmmProgress)) -> Result<VmmReport, VmmError> {
    let mut r = run_side_by_side(std::slice::from_ref(cfg), kvm, progress)?;
    let one = r.pop().expect("one report per configuration");
    debug_assert!(r.is_empty());
    Ok(one)
}

/// Runs the same churn under every configuration of `cfgs` (backends, verify or guest
/// program may differ; the workload must not), interleaved: each event of the workload is
/// played under every configuration in turn before the next, so a change in the machine's
/// load during the run falls on all of them alike. `progress` follows the first. Fails at
/// the first leak a guest reports, or any KVM error.
pub fn run_side_by_side(
    cfgs: &[VmmConfig],
    kvm: &Kvm,
    progress: &dyn Fn(&VmmProgress),
) -> Result<Vec<VmmReport>, VmmError> {
    let first = cfgs.first().ok_or_else(|| VmmError::Guest("no configuration to run".into()))?;
    let same = |c: &VmmConfig| {
        (c.memory_bytes, c.guests, c.seed, c.guest_bytes)
            == (first.memory_bytes, first.guests, first.seed, first.guest_bytes)
    };
    if !cfgs.iter().all(same) {
        return Err(VmmError::Guest("side by side runs need the same memory, guests, seed and guest size".into()));
    }
    let specs = churn_specs(first)?;
    let pools = cfgs.iter().map(churn_pool).collect::<Result<Vec<_>, _>>()?;
    let recs: Vec<PreemptRecorder> =
        pools.iter().map(|p| PreemptRecorder::new(p.as_ref().map_or(200_000, |p| p.config().quantum_ns))).collect();
    let mut sides: Vec<Side<'_>> = cfgs
        .iter()
        .zip(&pools)
        .zip(&recs)
        .map(|((cfg, pool), rec)| Side::new(cfg, pool.as_ref(), rec, &specs))
        .collect();
    let events = schedule(&specs);
    let last_arrival = specs.last().map_or(0.0, |g| g.arrival_s);
    // Departures after the last arrival wait for the end, in departure order.
    for &(t, departs, i) in &events {
        for (k, side) in sides.iter_mut().enumerate() {
            let t_step = Instant::now();
            match departs {
                true if t <= last_arrival => side.depart(i),
                true => {}
                false => side.arrive(kvm, i, &specs[i])?,
            }
            side.busy_s += t_step.elapsed().as_secs_f64();
            if k == 0 {
                progress(&side.p);
            }
        }
    }
    let mut reports = Vec::with_capacity(sides.len());
    for (k, mut side) in sides.into_iter().enumerate() {
        let t_end = Instant::now();
        for &(_, departs, i) in &events {
            if departs {
                side.depart(i);
                if k == 0 {
                    progress(&side.p);
                }
            }
        }
        side.r.duration_s = side.busy_s + t_end.elapsed().as_secs_f64();
        summarize(&mut side.r, side.cfg, kvm, side.pool, &side.boots, (&side.alloc_ms, &side.destroy_ms));
        reports.push(side.r);
    }
    debug_assert_eq!(reports.len(), cfgs.len());
    Ok(reports)
}

/// One configuration's churn in progress: its guests alive and its figures so far.
struct Side<'p> {
    cfg: &'p VmmConfig,
    pool: Option<&'p Pool>,
    rec: &'p PreemptRecorder,
    alive: HashMap<usize, Tenant<'p>>,
    boots: Vec<BootStats>,
    alloc_ms: Vec<f64>,
    destroy_ms: Vec<f64>,
    p: VmmProgress,
    r: VmmReport,
    last_arrival_s: f64,
    /// Wall seconds spent in this side's own steps.
    busy_s: f64,
}

impl<'p> Side<'p> {
    fn new(cfg: &'p VmmConfig, pool: Option<&'p Pool>, rec: &'p PreemptRecorder, specs: &[GuestSpec]) -> Self {
        Side {
            cfg,
            pool,
            rec,
            alive: HashMap::new(),
            boots: Vec::new(),
            alloc_ms: Vec::new(),
            destroy_ms: Vec::new(),
            p: VmmProgress { total: specs.len() as u64, ..Default::default() },
            r: VmmReport::default(),
            last_arrival_s: specs.first().map_or(0.0, |g| g.arrival_s),
            busy_s: 0.0,
        }
    }

    /// Guest `i` departs, if it is alive.
    fn depart(&mut self, i: usize) {
        if let Some(t) = self.alive.remove(&i) {
            self.p.alive -= 1;
            self.p.alive_bytes -= t.stats.bytes;
            self.destroy_ms.push(t.destroy());
        }
    }

    /// Guest `i` (`g`) arrives: the gap before it is scrubbed in (unless back to back),
    /// its memory is allocated, and it boots and runs to its last report.
    fn arrive(&mut self, kvm: &Kvm, i: usize, g: &GuestSpec) -> Result<(), VmmError> {
        if let Some(pool) = self.pool.filter(|_| !self.cfg.back_to_back) {
            let gap_ms = ((g.arrival_s - self.last_arrival_s) * 1e3).clamp(0.0, MAX_GAP_MS);
            scrub_in_gap(pool, gap_ms, self.rec, &mut self.r.gap_scrub);
        }
        self.last_arrival_s = g.arrival_s;
        let dom = DomId(i as u32 + 1);
        let t0 = Instant::now();
        let Some(ram) = guest_ram(self.pool, self.cfg.pod, dom, g.memory_bytes, self.rec)? else {
            self.r.guests_refused += 1;
            return Ok(());
        };
        let memory_ms = ms_since(t0);
        self.alloc_ms.push(memory_ms);
        let mut tenant = kvm.boot_program(ram, tag_of(dom), t0, self.cfg.program)?;
        let s = &mut tenant.stats.setup;
        let steps = s.prepare_ms + s.vm_ms + s.memslots_ms + s.vcpu_ms + s.prefault_ms + s.entry_ms;
        s.other_ms = (tenant.stats.create_ms - memory_ms - steps).max(0.0);
        let p = &mut self.p;
        p.booted += 1;
        p.alive += 1;
        p.alive_bytes += tenant.stats.bytes;
        p.words_checked += tenant.stats.words_checked;
        self.r.max_alive = self.r.max_alive.max(p.alive);
        self.boots.push(tenant.stats.clone());
        self.alive.insert(i, tenant);
        Ok(())
    }
}

/// The host's idle time before an arrival, `gap_ms` of wall time at most: the calling
/// thread scrubs dirty pool memory (as an idle CPU calls `scrub_step`), or waits for the
/// scrubber threads that hold it, until no node has dirty memory or the time is spent.
fn scrub_in_gap(pool: &Pool, gap_ms: f64, rec: &PreemptRecorder, tally: &mut GapScrub) {
    assert!((0.0..=MAX_GAP_MS).contains(&gap_ms), "a gap is bounded");
    let heap = pool.heap();
    let (t, budget) = (Instant::now(), Duration::from_secs_f64(gap_ms / 1e3));
    // Dirty, or held by a scrubber thread (which an allocation would take back part done).
    let dirty = |n: usize| heap.node_stats(n).map_or(0, |s| s.free_dirty + s.scrubbing);
    let before = tally.bytes;
    let mut left_dirty = false;
    for _ in 0..MAX_GAP_STEPS {
        let Some(node) = (0..heap.node_count()).max_by_key(|&n| dirty(n)).filter(|&n| dirty(n) > 0) else {
            left_dirty = false;
            break;
        };
        left_dirty = true;
        if t.elapsed() >= budget {
            break;
        }
        rec.enter_op("gap scrub");
        let z = heap.scrub_step(node, GAP_STEP_FRAMES, rec);
        rec.exit();
        match z {
            Ok(0) | Err(_) => std::thread::sleep(Duration::from_micros(100)),
            Ok(z) => tally.bytes += z * heap.config().frame_size,
        }
    }
    tally.ms += ms_since(t);
    tally.budget_ms += gap_ms;
    tally.arrivals_dirty += left_dirty as u64;
    debug_assert!(tally.bytes >= before);
}

/// The guests of the churn: all of [`VmmConfig::guest_bytes`] if set (refused unless a
/// whole number of pages between the VMM's limits and within the memory), else the
/// default churn's.
fn churn_specs(cfg: &VmmConfig) -> Result<Vec<GuestSpec>, VmmError> {
    Ok(match cfg.guest_bytes {
        Some(b)
            if !(MIN_GUEST_BYTES..=MAX_GUEST_BYTES).contains(&b) || !b.is_multiple_of(4096) || b > cfg.memory_bytes =>
        {
            return Err(VmmError::BadSize(b));
        }
        Some(b) => fixed_workload(cfg.memory_bytes, b, cfg.guests),
        None => workload(cfg.memory_bytes, cfg.guests, cfg.seed),
    })
}

/// The pool the guests' memory comes from (`None` under the kernel baseline).
fn churn_pool(cfg: &VmmConfig) -> Result<Option<Pool>, VmmError> {
    let Some(base) = cfg.backend.pool_config(cfg.memory_bytes, cfg.nodes, cfg.scrubbers_per_node) else {
        return Ok(None);
    };
    Ok(Some(Pool::new(PoolConfig { hugetlb: cfg.hugetlb, verify: cfg.verify, ..base })?))
}

/// The churn's events: (time, departure first at equal times, guest index), in order.
fn schedule(specs: &[GuestSpec]) -> Vec<(f64, bool, usize)> {
    let mut events: Vec<(f64, bool, usize)> = Vec::with_capacity(2 * specs.len());
    for (i, g) in specs.iter().enumerate() {
        events.push((g.arrival_s, false, i));
        events.push((g.arrival_s + g.lifetime_s, true, i));
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    debug_assert_eq!(events.len(), 2 * specs.len());
    events
}

/// A guest's RAM of `bytes`: a PoD guest's or a pool guest's (`None`: the heap refused
/// it for want of memory), or under the kernel baseline a fresh anonymous mapping.
fn guest_ram<'p>(
    pool: Option<&'p Pool>,
    pod: bool,
    dom: DomId,
    bytes: u64,
    rec: &'p PreemptRecorder,
) -> Result<Option<Ram<'p>>, VmmError> {
    match pool {
        Some(pool) if pod => crate::pod::pod_ram(pool, dom, bytes, rec),
        Some(pool) => match pool.create_guest(dom, bytes, rec) {
            Ok((guest, _)) => Ok(Some(Ram::Pool(PoolRam::new(pool, guest, rec)))),
            Err(HeapError::OutOfMemory { .. } | HeapError::Claim(ClaimError::ClaimExceedsFree { .. })) => Ok(None),
            Err(e) => Err(e.into()),
        },
        None => Ok(Some(Ram::Anonymous(AnonRam::new(bytes)?))),
    }
}

/// Fills `r` from the run's configuration, every boot's figures and the allocation and
/// destroy times (ms), once every guest is gone.
fn summarize(
    r: &mut VmmReport,
    cfg: &VmmConfig,
    kvm: &Kvm,
    pool: Option<&Pool>,
    boots: &[BootStats],
    (alloc_ms, destroy_ms): (&[f64], &[f64]),
) {
    r.policy = cfg.backend.to_string();
    r.verify = cfg.verify && pool.is_some();
    (r.memory_bytes, r.nodes, r.scrubbers, r.seed) = (cfg.memory_bytes, cfg.nodes, cfg.scrubbers_per_node, cfg.seed);
    if pool.is_none() {
        (r.nodes, r.scrubbers) = (1, 0);
    }
    r.guests = boots.len() as u64;
    r.guest_bytes = boots.iter().map(|b| b.bytes).sum();
    r.largest_guest_bytes = boots.iter().map(|b| b.bytes).max().unwrap_or(0);
    r.leak_check = GuestLeakCheck {
        words_checked: boots.iter().map(|b| b.words_checked).sum(),
        nonzero_words: boots.iter().map(|b| b.nonzero_words).sum(),
    };
    let v = |f: fn(&BootStats) -> f64| boots.iter().map(f).collect::<Vec<f64>>();
    let (create, scan, run_ms) = (v(|b| b.create_ms), v(|b| b.scan_ms), v(|b| b.run_ms));
    let (fill, ready) = (v(|b| b.fill_ms), v(|b| b.create_ms + b.run_ms));
    let two = |m: Millis| Quantiles { p50: m.p50, p99: m.p99 };
    r.ready_ms = Millis::of(&ready);
    r.alloc_ms = two(Millis::of(alloc_ms));
    r.fill_ms = two(Millis::of(&fill));
    r.create_ms = Millis::of(&create);
    r.scan_ms = two(Millis::of(&scan));
    r.run_ms = two(Millis::of(&run_ms));
    r.destroy_ms = Millis::of(destroy_ms);
    let scan_s: f64 = boots.iter().map(|b| b.scan_ms).sum::<f64>() / 1e3;
    if scan_s > 0.0 {
        r.scan_gbps = (r.leak_check.words_checked * 8) as f64 / scan_s / 1e9;
    }
    let mut slots: Vec<u64> = boots.iter().map(|b| b.memslots as u64).collect();
    slots.sort_unstable();
    r.memslots = Memslots {
        p50: slots.get(slots.len().saturating_sub(1) / 2).copied().unwrap_or(0),
        max: slots.last().copied().unwrap_or(0),
        limit: kvm.max_memslots() as u64,
    };
    r.tsc = Some(kvm.tsc());
    r.fixed_guest_bytes = cfg.guest_bytes.unwrap_or(0);
    r.program = cfg.program;
    r.setup_ms_p50 = setup_p50(boots);
    r.prefault = pool.map(|_| kvm.prefault());
    r.prefaulted_bytes = boots.iter().map(|b| b.prefaulted_bytes).sum();
    if let Some(pool) = pool {
        let places = pool.leak_tallies().to_vec();
        r.host_leak_check = HostLeakCheck {
            pages_checked: places.iter().map(|t| t.pages_checked).sum(),
            nonzero_pages: places.iter().map(|t| t.nonzero_pages).sum(),
            places,
        };
        let s = pool.heap().stats().scrubbed;
        r.bytes_scrubbed = [s.background, s.in_place, s.sync];
        r.pod = cfg.pod.then(|| crate::pod::pod_report(boots, pool));
    }
}

/// Each setup step's median over `boots`.
fn setup_p50(boots: &[BootStats]) -> SetupTimes {
    let p50 = |f: fn(&SetupTimes) -> f64| Millis::of(&boots.iter().map(|b| f(&b.setup)).collect::<Vec<f64>>()).p50;
    SetupTimes {
        prepare_ms: p50(|s| s.prepare_ms),
        vm_ms: p50(|s| s.vm_ms),
        memslots_ms: p50(|s| s.memslots_ms),
        vcpu_ms: p50(|s| s.vcpu_ms),
        prefault_ms: p50(|s| s.prefault_ms),
        entry_ms: p50(|s| s.entry_ms),
        other_ms: p50(|s| s.other_ms),
    }
}
