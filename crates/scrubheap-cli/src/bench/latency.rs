//! `scrubheap bench latency`: what a watchdog sees. Under each policy in one run: a
//! guest's 1 GiB is populated from fully dirty memory (claimed on its node, 1 GiB extent
//! first, falling back to 2 MiB and 4 KiB where the policy refuses) while another thread
//! churns small allocations on the same node. Reported per policy: the longest gap
//! between two preemption points in any heap operation (thread CPU time, wall beside),
//! the small allocations' latency p99.9, and the longest node-lock hold.
//!
//! The pool runs no background scrubber here, so every dirty frame is scrubbed by the
//! allocation that hands it out: the allocator's own worst case. Callers yield at a
//! preemption point once they have run the pool's quantum (200 µs of CPU) since they
//! last yielded, as a kernel yields only when a reschedule is due.

use anyhow::Context;
use hdrhistogram::Histogram;
use scrubheap::{AllocRequest, DomId, Policy};
use scrubheap_host::instrument::PreemptRecorder;
use scrubheap_host::pool::{Pool, PoolConfig};
use scrubheap_host::GuestOps;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Instant;

/// Latency of a 1 GiB populate from dirty memory, per policy.
#[derive(clap::Args)]
pub struct Args {
    /// Where to write the JSON report.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Policies to compare (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "scrubheap,xen,xen-cap2m,alloc")]
    pub policies: Vec<Policy>,
    /// 1 GiB populates per policy; the worst is reported.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Frames zeroed between preemption points (the heap's scrub batch).
    #[arg(long, default_value_t = 256)]
    pub batch: u64,
}

/// One policy's figures.
#[derive(Serialize, Default, Clone)]
pub struct Figures {
    /// Longest gap between preemption points, thread CPU time, µs.
    pub max_nonpreemptible_us: f64,
    /// The same, wall clock, µs.
    pub max_nonpreemptible_wall_us: f64,
    /// 99.9th percentile of all sections, thread CPU time, µs.
    pub section_p999_us: f64,
    /// Sections recorded.
    pub sections: u64,
    /// The churning thread's small-allocation latency p99.9 (wall), µs.
    pub alloc_p999_us: f64,
    /// Its largest, µs.
    pub alloc_max_us: f64,
    /// Longest node-lock hold, µs.
    pub lock_hold_max_us: f64,
    /// Slowest 1 GiB populate, ms.
    pub populate_max_ms: f64,
    /// Extents the 1 GiB came in (the last populate).
    pub extents: usize,
    /// Small allocations made meanwhile.
    pub small_allocs: u64,
}

const GIB_FRAMES: u64 = 1 << 18;

/// The churning thread: small allocations of orders 0 to 2 for domain 2, at most 33
/// held, until `stop`; returns their latencies (ns) and how many it made.
fn churn(pool: &Pool, stop: &AtomicBool) -> (Histogram<u64>, u64) {
    let rec = PreemptRecorder::new(pool.config().quantum_ns);
    let mut h = Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3).expect("bounds");
    let mut live = Vec::new();
    let mut n = 0u64;
    let mut i = 0u32;
    while !stop.load(Relaxed) {
        i = i.wrapping_add(1);
        let t = Instant::now();
        if let Ok(e) = pool.alloc(&AllocRequest::new((i % 3) as u8, DomId(2)), &rec) {
            h.saturating_record(t.elapsed().as_nanos().max(1) as u64);
            n += 1;
            live.push(e);
        }
        if live.len() > 32 {
            let e = live.swap_remove(0);
            pool.free(e.mfn, e.order, DomId(2), &rec).expect("churn frees what it holds");
        }
    }
    for e in live {
        pool.free(e.mfn, e.order, DomId(2), &rec).expect("churn frees what it holds");
    }
    rec.merge_into(&pool.sections);
    (h, n)
}

/// `reps` 1 GiB guests populated, run and destroyed one after another; records the
/// slowest populate and the last one's extents in `f`.
fn populate(pool: &Pool, policy: Policy, reps: usize, f: &mut Figures) -> anyhow::Result<()> {
    // Yield at a preemption point once the quantum is spent, as a kernel yields only
    // when a reschedule is due (yielding at every point costs a timeslice each time
    // on a loaded machine).
    let rec = PreemptRecorder::new(pool.config().quantum_ns);
    let mut result = Ok(());
    for r in 0..reps {
        let t = Instant::now();
        match pool.create_guest(DomId(100 + r as u32), GIB_FRAMES * 4096, &rec) {
            Ok((g, _)) => {
                f.populate_max_ms = f.populate_max_ms.max(t.elapsed().as_secs_f64() * 1e3);
                f.extents = g.extents.len();
                pool.run_guest(&g);
                pool.destroy_guest(g, &rec);
            }
            Err(e) => {
                result = Err(anyhow::anyhow!("{policy}: populating 1 GiB failed: {e}"));
                break;
            }
        }
    }
    rec.merge_into(&pool.sections);
    result
}

fn measure(policy: Policy, reps: usize, batch: u64) -> anyhow::Result<Figures> {
    let pool = Pool::new(PoolConfig {
        memory_bytes: 2 << 30,
        nodes: 1,
        scrubbers_per_node: 0,
        policy,
        initially_dirty: true,
        scrub_priority: scrubheap_host::ScrubPriority::Normal,
        scrub_batch: batch,
        ..PoolConfig::default()
    })
    .context("building the pool")?;
    // The arena's first touches are over (prefault); take the lock figures from here.
    pool.locks.reset();
    let stop = AtomicBool::new(false);
    let mut f = Figures::default();
    let (churn_hist, small) = std::thread::scope(|s| {
        let churner = s.spawn(|| churn(&pool, &stop));
        let result = populate(&pool, policy, reps, &mut f);
        stop.store(true, Relaxed);
        let out = churner.join().expect("churn thread");
        result.map(|()| out)
    })?;
    let (cpu, wall, n) = pool.sections.summary();
    f.section_p999_us = pool.sections.quantile_us(0.999);
    f.sections = n;
    f.max_nonpreemptible_us = cpu;
    f.max_nonpreemptible_wall_us = wall;
    f.alloc_p999_us = churn_hist.value_at_quantile(0.999) as f64 / 1000.0;
    f.alloc_max_us = churn_hist.max() as f64 / 1000.0;
    f.lock_hold_max_us = pool.locks.quantiles_us().0[4];
    f.small_allocs = small;
    anyhow::ensure!(
        pool.leak_tallies().iter().all(|t| t.nonzero_pages == 0),
        "{policy}: a page read at boot, after its scrub or at handoff held old bytes"
    );
    pool.heap().check_invariants().map_err(|e| anyhow::anyhow!("{policy}: {e}"))?;
    Ok(f)
}

pub fn main(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(a.reps > 0, "--reps must be at least 1");
    let mut all = BTreeMap::new();
    println!(
        "bench latency: populate 1 GiB from fully dirty memory ({} times) while a thread churns 4-16 KiB allocations; \
         no background scrubber; batch {} frames",
        a.reps, a.batch
    );
    println!(
        "{:<10} {:>14} {:>10} {:>16} {:>14} {:>14} {:>14} {:>13} {:>8}",
        "policy",
        "max section us",
        "(wall us)",
        "section p99.9 us",
        "small p99.9 us",
        "small max us",
        "lock hold us",
        "populate ms",
        "extents"
    );
    for &p in &a.policies {
        let f = measure(p, a.reps, a.batch)?;
        println!(
            "{:<10} {:>14.0} {:>10.0} {:>16.1} {:>14.1} {:>14.0} {:>14.1} {:>13.1} {:>8}",
            p.name(),
            f.max_nonpreemptible_us,
            f.max_nonpreemptible_wall_us,
            f.section_p999_us,
            f.alloc_p999_us,
            f.alloc_max_us,
            f.lock_hold_max_us,
            f.populate_max_ms,
            f.extents
        );
        all.insert(p.name().to_string(), f);
    }
    let head = all.get("scrubheap").cloned().unwrap_or_default();
    let json = serde_json::json!({
        "latency": {
            "max_nonpreemptible_us": head.max_nonpreemptible_us,
            "alloc_p999_us": head.alloc_p999_us,
            "lock_hold_max_us": head.lock_hold_max_us,
            "batch_frames": a.batch,
            "policies": all,
        }
    });
    if let Some(p) = &a.json {
        crate::output::write_json(p, "bench latency", serde_json::Value::Null, &json)?;
        println!("wrote {}", p.display());
    }
    Ok(())
}
