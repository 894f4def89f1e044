//! Small scenarios under every policy: checkers clean, deterministic, and the behaviour
//! each policy is known for. Assertions are on simulated behaviour, never wall time.

use scrubheap::Policy;
use scrubheap_sim::preset::HostPreset;
use scrubheap_sim::report::PolicyResult;
use scrubheap_sim::scenario::{self, Scenario};
use scrubheap_sim::{engine, simulate};

fn by_policy(rows: &[PolicyResult], p: Policy) -> &PolicyResult {
    rows.iter().find(|r| r.policy == p.name()).unwrap()
}

#[test]
fn every_policy_runs_clean_on_the_small_scenario() {
    let sc = Scenario::builtin("small", None, 3).unwrap();
    let (rep, runs) = simulate(&sc, &Policy::ALL, 3, &|_, _| {}).unwrap();
    assert_eq!(runs.len(), 5);
    for r in &rep.results {
        assert_eq!(r.invariant_violations, 0, "{}: {:?}", r.policy, r.messages);
        assert_eq!(r.create_failures, 0, "{}: {:?}", r.policy, r.messages);
        assert!(r.checks.handovers_checked > 0);
        assert!(r.checks.full_runs > 1);
        assert!(!r.truncated);
        assert_eq!(r.watchdog_trips, 0);
    }
    let sync = by_policy(&rep.results, Policy::Sync);
    assert!(sync.bytes_scrubbed.sync > 0 && sync.bytes_scrubbed.background == 0);
    let alloc = by_policy(&rep.results, Policy::Alloc);
    assert_eq!(alloc.bytes_scrubbed.background, 0);
    assert_eq!(alloc.time_to_clean_s, None, "nothing scrubs free memory under alloc");
    let sh = by_policy(&rep.results, Policy::Scrubheap);
    let xen = by_policy(&rep.results, Policy::Xen);
    assert!(sh.bytes_scrubbed.background > 0);
    assert!(sh.destroy_s.unwrap() < xen.destroy_s.unwrap(), "extent teardown beats page teardown");
    assert!(sh.max_nonpreemptible_ms < 1.0);
}

#[test]
fn same_seed_gives_the_same_json() {
    let sc = Scenario::builtin("small", None, 9).unwrap();
    let json = || {
        let (rep, _) = simulate(&sc, &[Policy::Xen, Policy::Scrubheap], 9, &|_, _| {}).unwrap();
        serde_json::to_string(&rep).unwrap()
    };
    assert_eq!(json(), json());
    let a = engine::run(&sc, Policy::Xen, &Default::default()).unwrap();
    let b = engine::run(&sc, Policy::Xen, &Default::default()).unwrap();
    assert_eq!(a.timeline, b.timeline);
}

#[test]
fn destroy_on_a_tiny_host_cleans_at_the_aggregate_bandwidth() {
    let sc = Scenario::builtin("destroy-1tb", Some(HostPreset::tiny()), 1).unwrap();
    let (rep, _) = simulate(&sc, &[Policy::Sync, Policy::Xen, Policy::Scrubheap], 1, &|_, _| {}).unwrap();
    let sh = by_policy(&rep.results, Policy::Scrubheap);
    let (tc, ideal) = (sh.time_to_clean_s.unwrap(), sh.ideal_clean_s.unwrap());
    assert!(tc >= ideal * 0.99 && tc <= ideal * 1.1, "{tc} vs {ideal}");
    let xen = by_policy(&rep.results, Policy::Xen);
    assert!(xen.time_to_clean_s.unwrap() > tc, "one scrubber per node is slower");
    let sync = by_policy(&rep.results, Policy::Sync);
    assert!(sync.destroy_s.unwrap() > xen.destroy_s.unwrap(), "sync scrubs while destroying");
    for r in &rep.results {
        assert_eq!(r.invariant_violations, 0, "{}: {:?}", r.policy, r.messages);
    }
}

#[test]
fn xen_scrubs_a_whole_gib_in_place_without_a_preemption_point() {
    // Dirty at boot, one 1 GiB guest with a node claim: under xen the in-place scrub of
    // the 1 GiB extent is one section; under scrubheap one batch is.
    let text = include_str!("one-gib.toml");
    let sc = scenario::from_toml(text, 1).unwrap();
    let xen = engine::run(&sc, Policy::Xen, &Default::default()).unwrap().result;
    let sh = engine::run(&sc, Policy::Scrubheap, &Default::default()).unwrap().result;
    // 1 GiB at 0.5 GB/s is 2.1 s in one go; a 1 MiB batch shared by the node's CPUs is ms.
    assert!(xen.max_nonpreemptible_ms > 2000.0, "{}", xen.max_nonpreemptible_ms);
    assert!(sh.max_nonpreemptible_ms < 20.0, "{}", sh.max_nonpreemptible_ms);
    assert_eq!(xen.invariant_violations + sh.invariant_violations, 0);
    let with_watchdog = text.replace("node_zero_gbps = 0.5", "node_zero_gbps = 0.5\nwatchdog_s = 1.0");
    let sc = scenario::from_toml(&with_watchdog, 1).unwrap();
    assert_eq!(engine::run(&sc, Policy::Xen, &Default::default()).unwrap().result.watchdog_trips, 1);
    assert_eq!(engine::run(&sc, Policy::Scrubheap, &Default::default()).unwrap().result.watchdog_trips, 0);
}

#[test]
fn a_synthetic_azure_trace_replays_clean() {
    // A made-up file in the Azure V1 decoded format (no trace data is copied here).
    let dir = std::env::temp_dir().join(format!("scrubheap-sim-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("decoded.csv");
    let mut text =
        String::from("arrival_bin_end_s,batch_idx,vcpus,mem_gb,dur_bin,censored,dur_bin_lo_s,dur_bin_hi_s\n");
    for i in 0..40 {
        let censored = i % 7 == 0;
        text += &format!(
            "{},{},2,{},3,{},{},{}\n",
            300 * (1 + i / 10),
            i,
            [0.75, 3.5, 14.0][i % 3],
            censored as u8,
            600,
            1200
        );
    }
    std::fs::write(&path, text).unwrap();
    let opts = scrubheap_sim::trace::TraceOptions { vms: 30, fill: 0.8, time_compression: 100.0 };
    let sc = scrubheap_sim::trace::azure_v1(&path, HostPreset::tiny(), &opts, 4).unwrap();
    assert_eq!(sc.guests.len(), 30);
    assert!(sc.notes.iter().any(|n| n.contains("scaled by") && n.contains("compressed 100x")));
    // Built from what the one trace reader reads with the same seed: the same VMs in
    // arrival order, and every one destroyed, censored VMs included.
    let read = scrubheap_workload::read_trace(&path, 4).unwrap();
    let start = read.guests[0].arrival_s;
    for (g, vm) in read.guests.iter().take(30).enumerate() {
        let create = sc.ops.iter().find(|o| o.guest == g && o.action == scenario::Action::Create).unwrap();
        assert_eq!(create.at_ns, (((vm.arrival_s - start) / 100.0) * 1e9).round() as u64, "guest {g}");
        assert!(sc.ops.iter().any(|o| o.guest == g && o.action == scenario::Action::Destroy), "guest {g} is destroyed");
    }
    for p in [Policy::Xen, Policy::Scrubheap] {
        let r = engine::run(&sc, p, &Default::default()).unwrap().result;
        assert_eq!(r.invariant_violations, 0, "{}: {:?}", r.policy, r.messages);
        assert_eq!(r.create_failures, 0, "{}: {:?}", r.policy, r.messages);
    }
    assert!(scrubheap_sim::trace::azure_v1(&dir.join("missing.csv"), HostPreset::tiny(), &opts, 4).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_sweep_runs_every_value_and_policy() {
    let sc = Scenario::builtin("small", None, 2).unwrap();
    let sweep: scrubheap_sim::Sweep = "node_zero_gbps=4,16".parse().unwrap();
    let rows = scrubheap_sim::sweep(&sc, &sweep, &[Policy::Xen, Policy::Scrubheap], &|_, _| {}).unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.results.len() == 2 && r.results.iter().all(|x| x.invariant_violations == 0)));
    // More bandwidth, sooner clean.
    let clean = |i: usize| rows[i].results[1].time_to_clean_s.unwrap();
    assert!(clean(1) < clean(0));
    assert_eq!(scrubheap_sim::with_param(&sc, "builders", 3.0).unwrap().builders, 3);
    assert!(scrubheap_sim::with_param(&sc, "no_such", 1.0).is_err());
}
