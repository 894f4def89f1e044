//! `scrubheap sim --scenario pod-balloon`: populate-on-demand guests balloon down in
//! 4 KiB pages, with 2 MiB reclaim on decrease reservation and with 4 KiB-only reclaim.

use crate::sim::Args;
use anyhow::{bail, Context};
use scrubheap_sim::pod::{self, PodBalloonParams, PodBalloonReport};
use scrubheap_sim::preset::HostPreset;

pub fn main(a: &Args) -> anyhow::Result<()> {
    if a.sweep.is_some() || a.report.is_some() {
        bail!("pod-balloon counts pages, not time: it takes neither --sweep nor --report");
    }
    let host = match &a.preset {
        None => HostPreset::tiny(),
        Some(p) => HostPreset::builtin(p)
            .with_context(|| format!("unknown preset '{p}': use one of {}", HostPreset::NAMES.join(", ")))?,
    };
    eprintln!(
        "sim pod-balloon on {} ({} nodes, {} GiB, {} KiB frames), seed {}",
        host.name,
        host.nodes,
        host.total_bytes() >> 30,
        host.frame_size / 1024,
        a.seed
    );
    let rep = pod::run(&host, a.seed, &PodBalloonParams::default()).map_err(anyhow::Error::msg)?;
    print_table(&rep);
    if let Some(out) = &a.json {
        crate::output::write_json(out, "sim", serde_json::Value::Null, &rep)?;
    }
    let bad: u64 = rep.results.iter().map(|r| r.invariant_violations).sum();
    if bad > 0 {
        bail!("{bad} invariant check failures in the pod-balloon run: a bug");
    }
    Ok(())
}

fn print_table(rep: &PodBalloonReport) {
    println!("scenario {} on {} (seed {})", rep.scenario, rep.preset, rep.seed);
    for n in &rep.notes {
        println!("  {n}");
    }
    println!("| reclaim on decrease reservation | superpages_kept | superpage_mappings | superpages_shattered | superpages_reclaimed | zero_pages_reclaimed | frames_reclaimed | crashes | host_free_superpages | invariant_violations |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rep.results {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.mode,
            r.superpages_kept,
            r.superpage_mappings,
            r.superpages_shattered,
            r.superpages_reclaimed,
            r.zero_pages_reclaimed,
            r.frames_reclaimed,
            r.crashes,
            r.host_free_superpages,
            r.invariant_violations
        );
    }
}
