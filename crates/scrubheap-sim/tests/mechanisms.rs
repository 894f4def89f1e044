//! The mechanisms of the 2026 watchdog reports (guest traffic, Xen's lock structure,
//! remote scrubbing) and `claims-reboot` on a small host: each switch changes simulated
//! behaviour the way it models, runs stay deterministic, checkers stay clean.

use scrubheap::Policy;
use scrubheap_sim::preset::HostPreset;
use scrubheap_sim::report::PolicyResult;
use scrubheap_sim::scenario::{Mechanisms, Scenario};
use scrubheap_sim::simulate;

/// The xenserver-4s preset shrunk to run in a test: 4 sockets of 8 GiB and 4 CPUs, so
/// that claims-reboot has 1 GiB guests.
fn small_xenserver() -> HostPreset {
    HostPreset { node_gib: 8, cpus_per_node: 4, ..HostPreset::xenserver_4s() }
}

fn claims_reboot(m: Mechanisms) -> Scenario {
    let mut sc = Scenario::builtin("claims-reboot", Some(small_xenserver()), 5).unwrap();
    sc.mechanisms = m;
    sc
}

/// `claims_reboot` with the 16 KiB frames the preset had before: on this 8 GiB-a-node copy
/// with 4 KiB frames the rebuilt guests find their node's memory already clean
/// (`scrubheap`'s builders scrub 0 bytes in place, 2.1 GB with 16 KiB frames; `xen`'s
/// longest section is the same with and without the narrow interconnect), so the tests of
/// in-place scrubbing across sockets need these.
fn claims_reboot_16k(m: Mechanisms) -> Scenario {
    let mut sc = claims_reboot(m);
    sc.host.frame_size = 16384;
    sc.validate().unwrap();
    sc
}

fn run(sc: &Scenario, p: Policy) -> PolicyResult {
    let (rep, _) = simulate(sc, &[p], 5, &|_, _| {}).unwrap();
    let r = rep.results.into_iter().next().unwrap();
    assert_eq!(r.invariant_violations, 0, "{}: {:?}", r.policy, r.messages);
    assert_eq!(r.create_failures, 0, "{}: {:?}", r.policy, r.messages);
    assert!(!r.truncated);
    r
}

#[test]
fn claims_reboot_is_deterministic_and_reports_its_switches() {
    let sc = claims_reboot(Mechanisms::ALL);
    let json = || {
        // Every policy, as the goal command `--policy all` runs them.
        let (rep, _) = simulate(&sc, &Policy::ALL, 5, &|_, _| {}).unwrap();
        serde_json::to_value(&rep).unwrap()
    };
    let a = json();
    assert_eq!(a, json());
    assert_eq!(a["mechanisms"]["xen_locks"], true);
    assert_eq!(a["mechanisms"]["guest_traffic"], true);
    for r in a["results"].as_array().unwrap() {
        assert!(r["watchdog_trips"].is_u64());
        assert!(r["max_nonpreemptible_ms"].is_f64());
        assert_eq!(r["invariant_violations"], 0);
    }
}

#[test]
fn guest_traffic_slows_every_scrub() {
    // tiny: 4 CPUs x 4 GB/s against 8 GB/s a node, so scrubbing is node-bound.
    let host = HostPreset { guest_traffic_share: 0.3, ..HostPreset::tiny() };
    let off = Scenario::builtin("destroy-1tb", Some(host), 1).unwrap();
    let mut on = off.clone();
    on.mechanisms.guest_traffic = true;
    let (off, on) = (run(&off, Policy::Scrubheap), run(&on, Policy::Scrubheap));
    let ratio = on.time_to_clean_s.unwrap() / off.time_to_clean_s.unwrap();
    // 30% of the bandwidth to the guests: 1/0.7 as long to clean.
    assert!((ratio - 1.0 / 0.7).abs() < 0.05, "{ratio}");
}

#[test]
fn xen_locks_lengthen_xen_sections_and_leave_scrubheap_alone() {
    let m = Mechanisms { xen_locks: true, ..Default::default() };
    let mut slow = claims_reboot(m);
    // 1 us of lock work a page: a 1 GiB extent holds the lock for 0.26 s.
    slow.host.lock_page_ns = 1000;
    let mut base = slow.clone();
    base.mechanisms = Mechanisms::default();
    let (x0, x1) = (run(&base, Policy::Xen), run(&slow, Policy::Xen));
    assert!(x1.max_nonpreemptible_ms > x0.max_nonpreemptible_ms + 200.0, "{x0:?} {x1:?}");
    assert!(x1.lock_wait_max_us > x0.lock_wait_max_us);
    let (s0, s1) = (run(&base, Policy::Scrubheap), run(&slow, Policy::Scrubheap));
    assert_eq!(s0.max_nonpreemptible_ms, s1.max_nonpreemptible_ms, "scrubheap has no per-page work under a lock");
}

#[test]
fn remote_builders_share_a_narrow_interconnect() {
    let m = Mechanisms { remote: true, ..Default::default() };
    let mut narrow = claims_reboot_16k(m);
    narrow.host.interconnect_gbps = 0.5;
    let local = run(&claims_reboot_16k(Mechanisms::default()), Policy::Xen);
    let remote = run(&narrow, Policy::Xen);
    // In-place scrubs of 1 GiB extents now cross sockets at a share of 0.5 GB/s.
    assert!(remote.max_nonpreemptible_ms > 2.0 * local.max_nonpreemptible_ms, "{local:?} {remote:?}");
}

#[test]
fn a_memory_only_node_is_scrubbed_by_its_neighbour() {
    let mut host = HostPreset::tiny();
    host.cpuless_nodes = vec![1];
    let mut sc = Scenario::builtin("destroy-1tb", Some(host), 1).unwrap();
    sc.validate().unwrap();
    sc.max_s = 600.0;
    for p in [Policy::Xen, Policy::Scrubheap] {
        let r = run(&sc, p);
        assert!(r.time_to_clean_s.is_some(), "{p:?}: node 1's memory was never scrubbed");
        assert!(r.bytes_scrubbed.background > 0);
    }
}

#[test]
fn scrubheap_batches_follow_a_starved_bandwidth() {
    // 25 CPUs of a node share 0.5 GB/s: a fixed 1 MiB batch would take 52 ms.
    let host = HostPreset { cpus_per_node: 25, node_zero_gbps: 0.5, ..HostPreset::tiny() };
    let sc = Scenario::builtin("destroy-1tb", Some(host), 1).unwrap();
    let sh = run(&sc, Policy::Scrubheap);
    assert!(sh.max_nonpreemptible_ms <= 1.0, "{sh:?}");
    // Without giving up throughput: clean within 10% of the node bandwidth's ideal.
    let (tc, ideal) = (sh.time_to_clean_s.unwrap(), sh.ideal_clean_s.unwrap());
    assert!(tc <= ideal * 1.1, "{tc} vs {ideal}");
    // The baselines keep the heap's fixed batch.
    let xen = run(&sc, Policy::Xen);
    assert!(xen.max_nonpreemptible_ms > 1.0, "{xen:?}");
}

#[test]
fn scrubheap_remote_builders_leave_their_batches_to_the_frames_node() {
    // Builders on any node (the `remote` switch) with a narrow interconnect: scrubheap's
    // builders wait for the claimed node's scrubbers instead of writing across it. (With
    // `ScrubTicket::advance` instead of `advance_from` they zeroed 291 MB across it here.)
    let mut sc = claims_reboot_16k(Mechanisms { remote: true, ..Default::default() });
    sc.host.interconnect_gbps = 0.5;
    let sh = run(&sc, Policy::Scrubheap);
    assert!(sh.bytes_scrubbed.in_place > 1 << 30, "the builds had dirty memory to scrub in place: {sh:?}");
    assert_eq!(sh.builder_remote_bytes, 0, "{sh:?}");
    assert!(sh.max_nonpreemptible_ms <= 1.0, "{sh:?}");
}
