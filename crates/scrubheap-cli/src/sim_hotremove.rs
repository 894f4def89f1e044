//! The table of `scrubheap sim --scenario hot-remove`: pins left in the Movable zone
//! against pins migrated out first, on the same guests.

use scrubheap_sim::hotremove::HotRemoveReport;

fn gib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1u64 << 30) as f64)
}

pub fn print_table(rep: &HotRemoveReport) {
    println!("scenario {} on {} (seed {})", rep.scenario, rep.preset, rep.seed);
    for n in &rep.notes {
        println!("  {n}");
    }
    println!("| policy | completed | time_to_offline_s | stopped_s | attempts | migrated GiB | longest move piece ms (MiB) | pinned GiB (in Movable) | pin moves GiB / s | blockers | invariant_violations |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rep.results {
        println!(
            "| {} | {} | {} | {:.3} | {} | {} | {:.2} ({}) | {} ({}) | {} / {:.3} | {} | {} |",
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
        );
    }
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
