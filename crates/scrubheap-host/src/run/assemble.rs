//! Report assembly: what a run measured, put together as a [`RunReport`] once every worker
//! has stopped: the tallies, the timeline, the hot-remove, then what the pool (or the
//! kernel baseline) measured itself.

use super::config::RunConfig;
use super::report::*;
use super::scheduler::Tally;
use crate::instrument::{Role, Sections};
use crate::pool::{LeakTally, Pool, SAMPLED_WORDS_PER_FRAME};
use crate::tenants::guest::KernelBackend;
use crate::tenants::pod_guest::PodGuestOps;
use std::sync::atomic::Ordering::Relaxed;

/// What the run left behind when its threads stopped.
pub(super) struct Ended {
    pub(super) run_s: f64,
    /// Whether all memory was clean within 60 s of the end, and how long it took.
    pub(super) clean: Option<f64>,
    pub(super) timeline: Vec<Sample>,
    pub(super) hot_remove: Option<HotRemoveReport>,
    pub(super) tally: Tally,
    pub(super) sections: Sections,
}

/// The run's report. Takes the pool to drop it (stopping its scrubbers) before reading
/// the lock and section statistics they add to.
pub(super) fn assemble(cfg: &RunConfig, pool: Option<Pool>, kernel: &KernelBackend, end: Ended) -> RunReport {
    let t = end.tally;
    let t_pod = (t.pod_created, t.pod_refused, t.pod_ballooned);
    let mut r = RunReport {
        schema: 1,
        policy: cfg.backend.to_string(),
        memory_bytes: cfg.memory_bytes,
        nodes: cfg.nodes,
        seed: cfg.seed,
        duration_s: end.run_s,
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
        timeline: end.timeline,
        workload: WorkloadInfo {
            source: cfg.workload.source.clone(),
            memory_scale: cfg.workload.memory_scale,
            time_scale: cfg.workload.time_scale,
            guests: cfg.workload.guests.len() as u64,
        },
        pins: PinReport { pages: t.pins, moved_to_normal: t.pins_moved },
        hot_remove: end.hot_remove,
        ..RunReport::default()
    };
    notes(&mut r, end.clean, pool.is_some());
    match pool {
        Some(pool) => pool_part(&mut r, cfg, pool, &end.sections, t_pod),
        None => kernel_part(&mut r, kernel),
    }
    r
}

/// The notes on the hot-remove and on how long memory took to be clean.
fn notes(r: &mut RunReport, clean: Option<f64>, pool: bool) {
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
    match clean {
        None => r.notes.push("memory was still dirty 60 s after the run ended".into()),
        Some(s) if pool => r.notes.push(format!("all memory clean {s:.3} s after the run ended")),
        Some(_) => {}
    }
}

/// What the pool measured: backing, leaks, scrubbing, invariants, PoD, locks, sections.
fn pool_part(r: &mut RunReport, cfg: &RunConfig, pool: Pool, sections: &Sections, t_pod: (u64, u64, u64)) {
    // The heap's invariants, then the PoD layer's beside it.
    let heap_violations = (pool.heap().check_invariants().map_err(|e| e.to_string()))
        .and_then(|()| pool.pods().check_invariants(pool.heap()).map_err(|e| e.to_string()))
        .err();
    let s = pool.heap().stats();
    let (frames, busy) = pool.scrub_progress();
    let locks = pool.locks.clone();
    let pool_sections = pool.sections.clone();
    let leaks = pool.leak_tallies();
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
    if s.reserved != 0 {
        // The host's pool does not use the per-CPU fast path: a reserve left here is news.
        let parked = s.parked_dirty;
        r.notes.push(format!("{} frames left in per-CPU reserves ({parked} dirty in parked blocks)", s.reserved));
    }
    if s.allocated != 0 {
        r.invariant_violations += 1;
        r.notes.push(format!("{} frames still allocated after every guest was destroyed", s.allocated));
    }
    r.numa = crate::numa::stop_and_place(pool);
    let ([p50, p99, p999, p9999, max], holds) = locks.quantiles_us();
    let (scrubbers_max, others_max) = (locks.scrubber_max_us(), locks.others_max_us());
    r.lock_hold_us = LockHoldMicros { p50, p99, p999, p9999, max, holds, scrubbers_max, others_max };
    r.scrub_priority = cfg.scrub_priority.to_string();
    r.lock_boost = cfg.lock_boost;
    let refused = crate::priority::fifo_refused();
    if refused > 0 {
        r.notes.push(format!(
            "the host refused SCHED_FIFO {refused} time(s) (no CAP_SYS_NICE or RLIMIT_RTPRIO): those lock holders were raised to normal priority only"
        ));
    }
    let (a, b, _) = pool_sections.summary();
    let (c, d, _) = sections.summary();
    r.max_nonpreemptible_us = a.max(c);
    r.sections_max_us = sections_by(sections, &pool_sections, c, a);
    r.max_nonpreemptible_wall_us = b.max(d);
}

/// The longest sections by role and by operation: `run` are the run's own threads
/// (workers and the hot-remove), `pool` the scrubbers; `run_max` and `pool_max` their
/// longest (µs).
fn sections_by(run: &Sections, pool: &Sections, run_max: f64, pool_max: f64) -> SectionsBy {
    let us = |ns: u64| ns as f64 / 1000.0;
    let of = |role| {
        let (a, op) = run.longest_of(role);
        let (b, op2) = pool.longest_of(role);
        if a >= b {
            (us(a), op.to_string())
        } else {
            (us(b), op2.to_string())
        }
    };
    let worker_roles = [Role::Builder, Role::Pins, Role::Pod];
    let (workers, workers_op) =
        worker_roles.into_iter().map(of).fold((0.0, String::new()), |a, b| if b.0 > a.0 { b } else { a });
    let ((builders, builders_op), (pins, _), (hot_remove, hot_remove_op), (pod, pod_op)) =
        (of(Role::Builder), of(Role::Pins), of(Role::HotRemove), of(Role::Pod));
    let mut by_op: Vec<OpSectionsReport> = [run.by_op(), pool.by_op()]
        .concat()
        .into_iter()
        .map(|o| OpSectionsReport {
            op: o.op.into(),
            role: Role::of(o.op).name().into(),
            sections: o.sections,
            max_us: us(o.max_cpu_ns),
            max_wall_us: us(o.max_wall_ns),
        })
        .collect();
    by_op.sort_by(|a, b| b.max_us.total_cmp(&a.max_us));
    debug_assert!(workers <= run_max.max(pool_max) + 1e-9);
    SectionsBy {
        workers,
        scrubbers: pool_max.max(of(Role::Scrubber).0),
        workers_op,
        builders,
        builders_op,
        pins,
        hot_remove,
        hot_remove_op,
        pod,
        pod_op,
        by_op,
    }
}

/// What the kernel baseline measured: its leak check and the bytes it zeroed.
fn kernel_part(r: &mut RunReport, kernel: &KernelBackend) {
    r.kernel = "kernel page-fault zeroing".into();
    r.backing = "anonymous memory per guest".into();
    r.leak_check = LeakCheck {
        pages_checked: kernel.pages_checked.load(Relaxed),
        nonzero_pages: kernel.nonzero_pages.load(Relaxed),
        words_checked: kernel.words_checked.load(Relaxed),
        mode: "sampled".into(),
        places: Vec::new(),
    };
    r.bytes_scrubbed.kernel = kernel.bytes_zeroed.load(Relaxed);
    r.notes.push(
        "kernel baseline: no heap, so no preemption points or heap locks to measure (0 means not measured); \
         the kernel zeroes every page at fault"
            .into(),
    );
}

impl RunReport {
    /// The pool's leak checks, summed over the places that made them (boot, scrub,
    /// handoff), with each place kept beside the sum.
    fn verify_mode(&mut self, verify: bool, places: [LeakTally; 3]) {
        let sum = |f: fn(&LeakTally) -> u64| places.iter().map(f).sum::<u64>();
        let mode = if verify {
            "full, at boot, after every scrub and at handoff".to_string()
        } else {
            format!("sampled ({SAMPLED_WORDS_PER_FRAME} words per page) at boot and after every scrub; none at handoff")
        };
        self.leak_check = LeakCheck {
            pages_checked: sum(|t| t.pages_checked),
            nonzero_pages: sum(|t| t.nonzero_pages),
            words_checked: sum(|t| t.words_checked),
            mode,
            places: places.to_vec(),
        };
    }
}
