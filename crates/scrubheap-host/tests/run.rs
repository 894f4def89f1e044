//! A short `scrubheap run` on a small arena: the hot-remove moves guest memory, and every
//! kind of thread that enters the heap (builders, scrubbers, pins, hot-remove, PoD)
//! records its sections under its operations.

use scrubheap::Policy;
use scrubheap_host::run::{run, Backend, RunConfig};
use scrubheap_host::ScrubPriority;
use scrubheap_workload::Workload;

fn small_run(seed: u64, scrub_priority: ScrubPriority) -> RunConfig {
    let memory = 256 << 20;
    RunConfig {
        memory_bytes: memory,
        nodes: 2,
        scrubbers_per_node: 1,
        backend: Backend::Heap(Policy::Scrubheap),
        seed,
        workload: Workload::default_churn(memory, 3.0, seed, None),
        workers: 2,
        verify: false,
        hugetlb: false,
        sample_ms: 100,
        scrub_priority,
        lock_boost: scrub_priority == ScrubPriority::Boost,
        record: None,
        kernel: None,
        reboots: true,
        balloons: true,
        boot_dirty: true,
    }
}

#[test]
fn the_hot_remove_moves_guest_memory_and_every_role_is_recorded() {
    for (seed, prio) in [(1, ScrubPriority::Idle), (2, ScrubPriority::default())] {
        let r = run(&small_run(seed, prio), &|_, _| {}).expect("the run completes");
        assert_eq!(r.invariant_violations, 0, "{:?}", r.notes);
        assert_eq!(r.leak_check.nonzero_pages, 0);
        assert_eq!(r.scrub_priority, prio.name());
        assert_eq!(r.lock_boost, prio == ScrubPriority::Boost);
        let h = r.hot_remove.as_ref().expect("the hot-remove ran");
        assert!(h.completed, "{h:?}");
        assert!(h.guest_frames_in_range > 0, "the range chosen holds guest memory: {h:?}");
        assert!(h.migrated_frames > 0, "guest memory moved: {h:?}");
        assert_eq!(h.migrated_bytes, h.migrated_frames * 4096);
        let s = &r.sections_max_us;
        let ops: Vec<&str> = s.by_op.iter().map(|o| o.op.as_str()).collect();
        for op in ["alloc", "free", "pin", "unpin", "background scrub", "hot-remove offline", "hot-remove online"] {
            assert!(ops.contains(&op), "{op} missing from {ops:?}");
        }
        for role in ["builders", "scrubbers", "pins", "hot-remove", "pod"] {
            assert!(s.by_op.iter().any(|o| o.role == role && o.sections > 0), "{role} recorded: {ops:?}");
        }
        assert!(s.builders > 0.0 && s.pins > 0.0 && s.hot_remove > 0.0 && s.pod > 0.0 && s.scrubbers > 0.0);
        assert_eq!(s.hot_remove_op.split(' ').next(), Some("hot-remove"));
        let longest = s.by_op.iter().map(|o| o.max_us).fold(0.0, f64::max);
        // The run-wide figure comes from a histogram of 3 significant figures.
        let m = r.max_nonpreemptible_us;
        assert!((longest - m).abs() <= m * 0.002 + 0.01, "the longest section is an operation's: {longest} vs {m}");
        assert!(r.lock_hold_us.holds > 0 && r.lock_hold_us.p9999 <= r.lock_hold_us.max);
    }
}
