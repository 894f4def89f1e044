//! `scrubheap sim --scenario hot-remove`: pins left in the Movable zone against pins
//! migrated out first, on the same guests; prints the table, writes the JSON report.

use crate::sim::Args;
use anyhow::{bail, Context};
use scrubheap_sim::hotremove::{self, HotRemove, HotRemoveReport};
use scrubheap_sim::preset::HostPreset;
use std::time::Instant;

pub fn main(a: &Args) -> anyhow::Result<()> {
    if a.sweep.is_some() || a.report.is_some() {
        bail!("the hot-remove scenario takes no --sweep or --report (it has no timeline)");
    }
    if a.policy != "all" {
        bail!("the hot-remove scenario always runs both ways (pins-in-place and scrubheap): leave out --policy");
    }
    let host = match &a.preset {
        None => None,
        Some(p) => Some(
            HostPreset::builtin(p)
                .with_context(|| format!("unknown preset '{p}': use one of {}", HostPreset::NAMES.join(", ")))?,
        ),
    };
    let sc = HotRemove::builtin(host);
    let started = Instant::now();
    eprintln!(
        "sim hot-remove on {} ({} nodes, {} GiB, {} KiB frames), pins-in-place and scrubheap",
        sc.host.name,
        sc.host.nodes,
        sc.host.total_bytes() >> 30,
        sc.host.frame_size / 1024
    );
    let rep = hotremove::run(&sc, a.seed).map_err(anyhow::Error::msg)?;
    print_table(&rep);
    if let Some(out) = &a.json {
        crate::output::write_json(out, "sim", serde_json::Value::Null, &rep)?;
    }
    eprintln!("wall time {:.1} s (not in the JSON)", started.elapsed().as_secs_f64());
    let bad: u64 = rep.results.iter().map(|r| r.invariant_violations).sum();
    if bad > 0 {
        bail!("{bad} checker failures: see the messages in the report");
    }
    Ok(())
}

fn gib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1u64 << 30) as f64)
}

fn print_table(rep: &HotRemoveReport) {
    println!("scenario {} on {} (seed {})", rep.scenario, rep.preset, rep.seed);
    for n in &rep.notes {
        println!("  {n}");
    }
    println!("| policy | completed | time_to_offline_s | stopped_s | attempts | migrated GiB | pinned GiB (in Movable) | pin moves GiB / s | blockers | invariant_violations |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rep.results {
        println!(
            "| {} | {} | {} | {:.3} | {} | {} | {} ({}) | {} / {:.3} | {} | {} |",
            r.policy,
            r.completed,
            r.time_to_offline_s.map_or("-".into(), |t| format!("{t:.3}")),
            r.stopped_s,
            r.attempts,
            gib(r.migrated_bytes),
            gib(r.pinned_bytes),
            gib(r.pinned_in_movable_bytes),
            gib(r.pin_migrated_bytes),
            r.pin_s,
            r.blockers.len(),
            r.invariant_violations
        );
    }
    for r in rep.results.iter().filter(|r| !r.blockers.is_empty()) {
        println!(
            "blockers of {} (last attempt, first {}): {} GiB pinned in the range by {:?}",
            r.policy,
            r.blockers.len(),
            gib(r.pinned_in_range_bytes),
            r.pinned_in_range_owners.iter().map(|d| format!("dom{d}")).collect::<Vec<_>>()
        );
        for b in &r.blockers {
            let owner = b.owner.map_or("-".into(), |d| format!("dom{d}"));
            println!("  {} +{} MiB  {owner}  {}", b.addr, b.bytes >> 20, b.reason);
        }
    }
}
