//! The table of `scrubheap sim --scenario pod-balloon`: populate-on-demand guests balloon
//! down in 4 KiB pages, with 2 MiB reclaim on decrease reservation and with 4 KiB-only
//! reclaim.

use scrubheap_sim::pod::PodBalloonReport;

pub fn print_table(rep: &PodBalloonReport) {
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
