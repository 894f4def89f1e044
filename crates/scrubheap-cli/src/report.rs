//! The report folder of `scrubheap run`: `summary.txt` (the table), `report.json` (the
//! `run` envelope, whose `results` are one run's object, or with `--compare`
//! `{"runs": [...]}` plus a `report-<policy>.json` per run), and SVG plots.

use anyhow::Context;
use scrubheap_host::report::RunReport;
use std::fmt::Write as _;
use std::path::Path;

/// One line after a run.
pub fn summary_line(r: &RunReport) -> String {
    format!(
        "  {}: {} created, {} destroyed, {} refused; create p50 {:.2} ms max {:.1} ms; destroy p50 {:.2} ms max {:.1} ms; \
         longest non-preemptible {:.0} us; leak check {} pages, {} non-zero",
        r.policy,
        r.domains_created,
        r.domains_destroyed,
        r.guests_refused,
        r.create_ms.p50,
        r.create_ms.max,
        r.destroy_ms.p50,
        r.destroy_ms.max,
        r.max_nonpreemptible_us,
        r.leak_check.pages_checked,
        r.leak_check.nonzero_pages
    )
}

/// A row of the table: its name and how to read it off a report.
type Row = (&'static str, fn(&RunReport) -> String);

/// `us` rounded, with the operation it was in if any: `634 (ticket step)`.
fn with_op(us: f64, op: &str) -> String {
    if op.is_empty() {
        format!("{us:.0}")
    } else {
        format!("{us:.0} ({op})")
    }
}

/// The table's rows on guests, latencies and preemption.
const GUEST_ROWS: [Row; 12] = [
    ("guests created / destroyed / rebooted", |r| {
        format!("{} / {} / {}", r.domains_created, r.domains_destroyed, r.domains_rebooted)
    }),
    ("guests refused (no room)", |r| r.guests_refused.to_string()),
    ("balloon out / in, GiB out / in", |r| {
        let g = |b: u64| b as f64 / (1u64 << 30) as f64;
        let b = &r.balloon;
        format!("{} / {}, {:.2} / {:.2}", b.out, b.r#in, g(b.bytes_out), g(b.bytes_in))
    }),
    ("create ms p50 / p99 / max", |r| {
        format!("{:.2} / {:.1} / {:.1}", r.create_ms.p50, r.create_ms.p99, r.create_ms.max)
    }),
    ("destroy ms p50 / p99 / max", |r| {
        format!("{:.2} / {:.1} / {:.1}", r.destroy_ms.p50, r.destroy_ms.p99, r.destroy_ms.max)
    }),
    ("longest non-preemptible us (cpu)", |r| format!("{:.0}", r.max_nonpreemptible_us)),
    ("  of which builders / scrubbers", |r| {
        let s = &r.sections_max_us;
        format!("{} / {:.0}", with_op(s.builders, &s.builders_op), s.scrubbers)
    }),
    ("  pins / hot-remove", |r| {
        let s = &r.sections_max_us;
        format!("{:.0} / {}", s.pins, with_op(s.hot_remove, &s.hot_remove_op))
    }),
    ("  PoD", |r| with_op(r.sections_max_us.pod, &r.sections_max_us.pod_op)),
    ("  same, wall clock us", |r| format!("{:.0}", r.max_nonpreemptible_wall_us)),
    ("lock hold us p50 / p99.99 / max", |r| {
        format!("{:.2} / {:.1} / {:.0}", r.lock_hold_us.p50, r.lock_hold_us.p9999, r.lock_hold_us.max)
    }),
    ("  max by scrubbers (prio) / others", |r| {
        let l = &r.lock_hold_us;
        let boost = if r.lock_boost { ", all boosted" } else { "" };
        format!("{:.0} ({}{boost}) / {:.0}", l.scrubbers_max, r.scrub_priority, l.others_max)
    }),
];

/// The table's rows on memory: scrubbing, leak checks, pins, hot-remove, PoD, NUMA.
const MEMORY_ROWS: [Row; 14] = [
    ("scrubbed GiB bg / in place / sync", |r| {
        let g = |b: u64| b as f64 / (1u64 << 30) as f64;
        format!(
            "{:.1} / {:.1} / {:.1}",
            g(r.bytes_scrubbed.background),
            g(r.bytes_scrubbed.in_place),
            g(r.bytes_scrubbed.sync)
        )
    }),
    ("kernel-zeroed GiB", |r| format!("{:.1}", r.bytes_scrubbed.kernel as f64 / (1u64 << 30) as f64)),
    ("scrub GB/s (raw zero GB/s)", |r| format!("{:.1} ({:.1})", r.scrub_gbps, r.raw_zero_gbps)),
    ("1G/2M allocations fallen back", |r| r.highorder_failures.to_string()),
    ("leak check pages / non-zero", |r| format!("{} / {}", r.leak_check.pages_checked, r.leak_check.nonzero_pages)),
    ("leak check mode", |r| r.leak_check.mode.clone()),
    ("pinned pages / moved to Normal", |r| format!("{} / {}", r.pins.pages, r.pins.moved_to_normal)),
    ("hot-remove MiB / ms / attempts", |r| match &r.hot_remove {
        Some(h) if h.completed => format!("{} / {:.1} / {}", h.bytes >> 20, h.time_to_offline_ms, h.attempts),
        Some(h) => format!("{} / not done / {}", h.bytes >> 20, h.attempts),
        None => "-".into(),
    }),
    ("  guest memory moved MiB / frames", |r| {
        r.hot_remove.as_ref().map_or("-".into(), |h| format!("{} / {}", h.migrated_bytes >> 20, h.migrated_frames))
    }),
    ("PoD guests / crashed / ballooned", |r| {
        format!("{} / {} / {}", r.pod.guests, r.pod.crashes, r.pod.pages_ballooned)
    }),
    ("PoD 2M rcl / 4K rcl / 2M shattered", |r| {
        format!("{} / {} / {}", r.pod.superpages_reclaimed, r.pod.zero_pages_reclaimed, r.pod.superpages_shattered)
    }),
    ("node slices on host nodes (verified)", numa_cell),
    ("invariant violations", |r| r.invariant_violations.to_string()),
    ("run seconds", |r| format!("{:.1}", r.duration_s)),
];

/// The side-by-side table.
pub fn table(rs: &[RunReport]) -> String {
    let mut t = String::new();
    let w = 38;
    let _ = write!(t, "{:w$}", "");
    for r in rs {
        let _ = write!(t, " | {:>24}", r.policy);
    }
    t.push('\n');
    for (name, f) in GUEST_ROWS.iter().chain(&MEMORY_ROWS) {
        let _ = write!(t, "{name:w$}");
        for r in rs {
            let _ = write!(t, " | {:>24}", f(r));
        }
        t.push('\n');
    }
    footer(&mut t, rs);
    t
}

/// The lines under the table: what the runs ran on, their notes, and where each node's
/// memory sits.
fn footer(t: &mut String, rs: &[RunReport]) {
    if let Some(r) = rs.first() {
        let _ = writeln!(
            t,
            "memory {} MiB over {} node(s); kernel {}; arena {}; seed {}; workload {} (memory x{:.3e}, time x{:.3e})",
            r.memory_bytes >> 20,
            r.nodes,
            r.kernel,
            r.backing,
            r.seed,
            r.workload.source,
            r.workload.memory_scale,
            r.workload.time_scale
        );
    }
    for r in rs {
        for n in &r.notes {
            let _ = writeln!(t, "{}: {n}", r.policy);
        }
        for p in r.numa.iter().filter(|p| p.bound_to.is_some()) {
            let _ = writeln!(t, "{}: numa {}", r.policy, p.describe());
        }
    }
}

/// The table's NUMA cell: `emulated`, or each node's host node and whether the kernel
/// and the scrubbers confirmed it (details in the lines under the table).
fn numa_cell(r: &RunReport) -> String {
    if r.numa.is_empty() {
        return "-".into();
    }
    if r.numa.iter().all(|p| p.bound_to.is_none()) {
        return "emulated".into();
    }
    let nodes: Vec<String> = r.numa.iter().map(|p| p.bound_to.map_or("-".into(), |n| n.to_string())).collect();
    let ok = r.numa.iter().all(|p| p.verified());
    format!("[{}] ({})", nodes.join(", "), if ok { "yes" } else { "NO" })
}

/// Writes the JSON report to `path`: the `run` envelope whose results are the one run's
/// report, or `{schema: 1, runs}` for several policies side by side.
pub fn write_json(path: &Path, settings: &serde_json::Value, rs: &[RunReport]) -> anyhow::Result<()> {
    if rs.len() == 1 {
        crate::output::write_json(path, "run", settings.clone(), &rs[0])
    } else {
        crate::output::write_json(path, "run", settings.clone(), &serde_json::json!({ "schema": 1, "runs": rs }))
    }
}

/// Writes the whole report folder.
pub fn write_folder(dir: &Path, settings: &serde_json::Value, rs: &[RunReport]) -> anyhow::Result<()> {
    std::fs::write(dir.join("summary.txt"), table(rs))
        .with_context(|| format!("cannot write into {}", dir.display()))?;
    write_json(&dir.join("report.json"), settings, rs)?;
    if rs.len() > 1 {
        for r in rs {
            write_json(&dir.join(format!("report-{}.json", r.policy)), settings, std::slice::from_ref(r))?;
        }
    }
    crate::plots::write(dir, rs)?;
    Ok(())
}
