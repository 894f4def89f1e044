//! The tables of `scrubheap sim` for the scenarios that do not compare policies:
//! `hot-remove` (pins left in the Movable zone against pins migrated out first, on the
//! same guests) and `pod-balloon` (populate-on-demand guests balloon down in 4 KiB pages,
//! with 2 MiB reclaim on decrease reservation and with 4 KiB-only reclaim).

use scrubheap_sim::hotremove::HotRemoveReport;
use scrubheap_sim::pod::PodBalloonReport;

fn gib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1u64 << 30) as f64)
}

/// The columns of the `hot-remove` table.
const HOT_REMOVE_COLUMNS: &str = "policy | completed | time_to_offline_s | stopped_s | attempts | migrated GiB | longest move piece ms (MiB) | pinned GiB (in Movable) | pin moves GiB / s | blockers | invariant_violations";

/// The columns of the `pod-balloon` table.
const POD_BALLOON_COLUMNS: &str = "reclaim on decrease reservation | superpages_kept | superpage_mappings | superpages_shattered | superpages_reclaimed | zero_pages_reclaimed | frames_reclaimed | crashes | host_free_superpages | invariant_violations";

/// A scenario's table: what ran, its notes, the head (a Markdown row of `columns`,
/// separated by ` | `, and its rule), then a row of `cells` (separated the same way) per
/// result.
fn table<T>(run: (&str, &str, u64), notes: &[String], columns: &str, results: &[T], cells: impl Fn(&T) -> String) {
    let (scenario, preset, seed) = run;
    println!("scenario {scenario} on {preset} (seed {seed})");
    for n in notes {
        println!("  {n}");
    }
    println!("| {columns} |");
    println!("|{}", "---|".repeat(columns.split(" | ").count()));
    for r in results {
        println!("| {} |", cells(r));
    }
}

/// `hot-remove`'s table, then how the guests were built and what blocked each policy.
pub fn hot_remove(rep: &HotRemoveReport) {
    table((&rep.scenario, &rep.preset, rep.seed), &rep.notes, HOT_REMOVE_COLUMNS, &rep.results, |r| {
        format!(
            "{} | {} | {} | {:.3} | {} | {} | {:.2} ({}) | {} ({}) | {} / {:.3} | {} | {}",
            r.policy,
            r.completed,
            r.time_to_offline_s.map_or("-".into(), |t| format!("{t:.3}")),
            r.stopped_s,
            r.attempts,
            gib(r.migrated_bytes),
            r.max_nonpreemptible_ms,
            r.longest_move_bytes >> 20,
            gib(r.pinned_bytes),
            gib(r.pinned_in_movable_bytes),
            gib(r.pin_migrated_bytes),
            r.pin_s,
            r.blockers.len(),
            r.invariant_violations
        )
    });
    if let Some(r) = rep.results.first() {
        let e = r.guest_extents;
        println!(
            "guests built with {} extents of 1 GiB and {} of 2 MiB; a move copies one batch-sized piece at a time, with a preemption point between two pieces",
            e.extents_1g, e.extents_2m
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

/// `pod-balloon`'s table: one row per reclaim mode.
pub fn pod_balloon(rep: &PodBalloonReport) {
    table((&rep.scenario, &rep.preset, rep.seed), &rep.notes, POD_BALLOON_COLUMNS, &rep.results, |r| {
        format!(
            "{} | {} | {} | {} | {} | {} | {} | {} | {} | {}",
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
        )
    });
}
