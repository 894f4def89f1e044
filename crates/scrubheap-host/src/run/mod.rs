//! `scrubheap run`: tenant churn on a real arena with real threads. Worker threads play
//! the workload's timeline (create each guest when it arrives, write its tag into every
//! page, destroy it when its lifetime ends); scrubber threads scrub in the background; a
//! sampler records memory composition over time. Everything is measured as it happens.
//!
//! In layers, each a file: [`config`] (how a run is set up), the scheduler (workers taking
//! due jobs and carrying them out on the tenants layer), the hot-remove beside them, the
//! recorder (the op log), and report assembly; [`report`] holds the report's types. `run` below only wires them up.

use crate::pool::{Pool, PoolConfig};
use crate::tenants::guest::KernelBackend;
use assemble::{assemble, Ended};
use hot_remove::HotRemove;
use parking_lot::Mutex;
use recorder::OpLog;
use report::{NodeSample, RunReport, Sample};
use scheduler::Shared;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

mod assemble;
pub mod config;
mod hot_remove;
mod recorder;
pub mod report;
mod scheduler;

pub use config::{Backend, RunConfig, RunError, MOVABLE_FRACTION, PINS_PER_GUEST};

/// Runs the workload; `on_sample` sees every timeline sample as it is taken (for a live
/// display).
pub fn run(cfg: &RunConfig, on_sample: &(dyn Fn(&Sample, &RunProgress) + Sync)) -> Result<RunReport, RunError> {
    let pool = open_pool(cfg)?;
    let kernel = KernelBackend::default();
    let oplog = OpLog::create(cfg, pool.as_ref())?;
    let shared = Shared::new(cfg, pool.as_ref(), &kernel, oplog.as_ref());
    let sampling = AtomicBool::new(true);
    let timeline = Mutex::new(Vec::new());
    let hot_remove = Mutex::new(None);
    std::thread::scope(|s| {
        s.spawn(|| sampler(&shared, &sampling, &timeline, on_sample));
        if let Some(p) = &pool {
            let hr = HotRemove {
                pool: p,
                cfg,
                t0: shared.t0,
                running: &sampling,
                sched: &shared.sched,
                log: oplog.as_ref(),
                sections: &shared.sections,
            };
            let slot = &hot_remove;
            s.spawn(move || *slot.lock() = hr.run());
        }
        let workers: Vec<_> = (0..cfg.workers.max(1)).map(|_| s.spawn(|| shared.work())).collect();
        for w in workers {
            if let Err(e) = w.join() {
                sampling.store(false, Relaxed);
                std::panic::resume_unwind(e);
            }
        }
        sampling.store(false, Relaxed);
    });
    let run_s = shared.t0.elapsed().as_secs_f64();
    let Shared { tally, sections, .. } = shared;
    let clean_t = Instant::now();
    let clean = pool.as_ref().is_none_or(|p| p.wait_clean(Duration::from_secs(60)));
    let clean = clean.then(|| clean_t.elapsed().as_secs_f64());
    if let Some(log) = &oplog {
        log.finish();
    }
    let (timeline, hot_remove, tally) = (timeline.into_inner(), hot_remove.into_inner(), tally.into_inner());
    Ok(assemble(cfg, pool, &kernel, Ended { run_s, clean, timeline, hot_remove, tally, sections }))
}

/// The pool of a heap run (none for the kernel baseline).
fn open_pool(cfg: &RunConfig) -> Result<Option<Pool>, RunError> {
    let Some(base) = cfg.backend.pool_config(cfg.memory_bytes, cfg.nodes, cfg.scrubbers_per_node) else {
        return Ok(None);
    };
    Ok(Some(Pool::new(PoolConfig {
        verify: cfg.verify,
        hugetlb: cfg.hugetlb,
        scrub_priority: cfg.scrub_priority,
        kernel: cfg.kernel,
        movable_fraction: Some(MOVABLE_FRACTION),
        initially_dirty: cfg.boot_dirty,
        ..base
    })?))
}

/// The sampler thread: one timeline sample every `cfg.sample_ms` (at least 10 ms) until
/// the workers are done.
fn sampler(
    sh: &Shared<'_>,
    sampling: &AtomicBool,
    timeline: &Mutex<Vec<Sample>>,
    on_sample: &(dyn Fn(&Sample, &RunProgress) + Sync),
) {
    let progress =
        RunProgress { guests_total: sh.cfg.workload.guests.len() as u64, duration_s: sh.cfg.workload.duration_s };
    let mut last = (0u64, Instant::now());
    while sampling.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(sh.cfg.sample_ms.max(10)));
        let sample = sample(sh, &mut last);
        on_sample(&sample, &progress);
        timeline.lock().push(sample);
    }
}

/// What the live display needs besides the sample.
pub struct RunProgress {
    /// Guests in the workload.
    pub guests_total: u64,
    /// Planned run length.
    pub duration_s: f64,
}

/// One timeline sample: guests alive and, per node, clean / dirty / used memory and the
/// scrub rate since the last sample (`last`: frames scrubbed then, and when).
fn sample(sh: &Shared<'_>, last: &mut (u64, Instant)) -> Sample {
    let (pool, cfg, t0, alive, kernel_used) = (sh.pool, sh.cfg, sh.t0, &sh.alive, &sh.kernel_used);
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
