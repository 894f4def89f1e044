//! The small scenario under every policy: checkers clean, deterministic, and the
//! behaviours each policy is known for.

use scrubheap::Policy;
use scrubheap_sim::scenario::Scenario;
use scrubheap_sim::{engine, simulate};

#[test]
fn every_policy_runs_clean() {
    let sc = Scenario::builtin("small", None, 3).unwrap();
    let (rep, runs) = simulate(&sc, &Policy::ALL, 3, &|_, _| {}).unwrap();
    for r in &rep.results {
        println!("{}", serde_json::to_string(r).unwrap());
        assert_eq!(r.invariant_violations, 0, "{}: {:?}", r.policy, r.messages);
        assert_eq!(r.create_failures, 0, "{}: {:?}", r.policy, r.messages);
        assert!(r.checks.handovers_checked > 0);
        assert_eq!(r.checks.full_every_events, 1);
        assert!(!r.truncated);
    }
    assert_eq!(runs.len(), 5);
}

#[test]
fn same_seed_same_json() {
    let sc = Scenario::builtin("small", None, 9).unwrap();
    let a = engine::run(&sc, Policy::Xen, &Default::default()).unwrap();
    let b = engine::run(&sc, Policy::Xen, &Default::default()).unwrap();
    assert_eq!(serde_json::to_string(&a.result).unwrap(), serde_json::to_string(&b.result).unwrap());
    assert_eq!(a.timeline, b.timeline);
}
