//! Populate-on-demand guests on real memory: they boot with a target below their maximum,
//! zero and write real pages, balloon down in 4 KiB pages and are destroyed; every page a
//! touch hands over is zero (whole-page check in verify mode) and every frame comes back.

use scrubheap::{DomId, Policy};
use scrubheap_host::instrument::PreemptRecorder;
use scrubheap_host::pool::{Pool, PoolConfig};
use scrubheap_host::{GuestOps, PodGuestOps};
use std::sync::atomic::Ordering::Relaxed;

fn pool() -> Pool {
    Pool::new(PoolConfig {
        memory_bytes: 64 << 20,
        nodes: 2,
        policy: Policy::Scrubheap,
        verify: true,
        hugetlb: false,
        scrub_priority: scrubheap_host::ScrubPriority::Normal,
        ..PoolConfig::default()
    })
    .unwrap()
}

#[test]
fn pod_guests_boot_balloon_write_and_leave_nothing_behind() {
    let p = pool();
    let rec = PreemptRecorder::new(0);
    let lines = std::sync::Mutex::new(Vec::new());
    let log = |op: scrubheap_oplog::Op| lines.lock().unwrap().push(op.to_string());
    for round in 0..3u32 {
        // A plain guest's data first, so PoD pages are handed over from dirty memory.
        let (plain, _) = p.create_guest(DomId(100 + round), 8 << 20, &rec).unwrap();
        p.run_guest(&plain);
        p.destroy_guest(plain, &rec);
        let mut guests = Vec::new();
        for g in 0..2u32 {
            let dom = DomId(round * 10 + g + 1);
            let (guest, c, ballooned) = p.create_pod_guest(dom, (6 + 4 * g as u64) << 20, &rec, &log).unwrap();
            assert!(c.ms >= 0.0);
            assert_eq!(ballooned, guest.max_pages - guest.target, "the balloon gives back max - target");
            let s = p.pods().stats(dom).unwrap();
            assert_eq!(s.crashed, None);
            assert!(s.populated + s.cache <= guest.target);
            assert!(s.cache <= s.entries);
            // The guest's tag is in the pages it wrote.
            assert!(s.populated > 0);
            p.heap().check_invariants().unwrap();
            p.pods().check_invariants(p.heap()).unwrap();
            guests.push(guest);
        }
        for g in guests {
            p.destroy_pod_guest(g, &rec, &log);
        }
    }
    assert!(p.leaks.pages_checked.load(Relaxed) > 0);
    assert_eq!(p.leaks.nonzero_pages.load(Relaxed), 0, "a PoD guest was handed another tenant's bytes");
    p.heap().check_invariants().unwrap();
    p.pods().check_invariants(p.heap()).unwrap();
    assert_eq!(p.heap().stats().allocated, 0);
    let sum = p.pod_summary(6, 0, 0);
    assert!(sum.populated_2m + sum.populated_4k > 0 && sum.superpages_reclaimed > 0, "{sum:?}");
    assert_eq!(sum.crashes, 0);
    // The op-log lines the run would record.
    let text = lines.into_inner().unwrap().join("\n");
    for l in ["pod dom=1 max_pages=1536 target=1152", "touch dom=1 gfn=0", "balloon dom=1 ", "destroy dom=1"] {
        assert!(text.contains(l), "no `{l}` line");
    }
    p.stop();
}
