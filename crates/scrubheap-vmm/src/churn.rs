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
    AnonRam, BootStats, Kvm, PoolRam, Prefault, Ram, SetupTimes, Tenant, TscFrequency, VmmError, MAX_GUEST_BYTES,
    MIN_GUEST_BYTES,
};
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
use std::time::Instant;

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
}

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
    let specs = churn_specs(cfg)?;
    let pool = churn_pool(cfg)?;
    let rec = PreemptRecorder::new(pool.as_ref().map_or(200_000, |p| p.config().quantum_ns));
    let events = schedule(&specs);
    let last_arrival = specs.last().map_or(0.0, |g| g.arrival_s);

    let t_run = Instant::now();
    let mut alive: HashMap<usize, Tenant<'_>> = HashMap::new();
    let mut boots: Vec<BootStats> = Vec::new();
    let mut alloc_ms = Vec::new();
    let mut destroy_ms = Vec::new();
    let mut p = VmmProgress { total: specs.len() as u64, ..Default::default() };
    let mut r = VmmReport::default();
    let destroy = |t: Tenant<'_>, p: &mut VmmProgress, destroy_ms: &mut Vec<f64>| {
        p.alive -= 1;
        p.alive_bytes -= t.stats.bytes;
        destroy_ms.push(t.destroy());
    };
    // Departures after the last arrival wait for the end, in departure order.
    for &(t, departs, i) in &events {
        let g = &specs[i];
        if departs {
            if t <= last_arrival {
                if let Some(tenant) = alive.remove(&i) {
                    destroy(tenant, &mut p, &mut destroy_ms);
                    progress(&p);
                }
            }
            continue;
        }
        let dom = DomId(i as u32 + 1);
        let t0 = Instant::now();
        let Some(ram) = guest_ram(pool.as_ref(), cfg.pod, dom, g.memory_bytes, &rec)? else {
            r.guests_refused += 1;
            continue;
        };
        let memory_ms = t0.elapsed().as_secs_f64() * 1e3;
        alloc_ms.push(memory_ms);
        let mut tenant = kvm.boot(ram, tag_of(dom), t0)?;
        let s = &mut tenant.stats.setup;
        let steps = s.prepare_ms + s.vm_ms + s.memslots_ms + s.vcpu_ms + s.prefault_ms + s.entry_ms;
        s.other_ms = (tenant.stats.create_ms - memory_ms - steps).max(0.0);
        p.booted += 1;
        p.alive += 1;
        p.alive_bytes += tenant.stats.bytes;
        p.words_checked += tenant.stats.words_checked;
        r.max_alive = r.max_alive.max(p.alive);
        boots.push(tenant.stats.clone());
        alive.insert(i, tenant);
        progress(&p);
    }
    for &(_, departs, i) in &events {
        if departs {
            if let Some(tenant) = alive.remove(&i) {
                destroy(tenant, &mut p, &mut destroy_ms);
                progress(&p);
            }
        }
    }
    r.duration_s = t_run.elapsed().as_secs_f64();

    summarize(&mut r, cfg, kvm, pool.as_ref(), &boots, (&alloc_ms, &destroy_ms));
    Ok(r)
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
            Err(HeapError::OutOfMemory { .. } | HeapError::ClaimExceedsFree { .. }) => Ok(None),
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
