//! The pool on real memory: guests created, run and destroyed across emulated nodes with
//! scrubber threads; nothing leaks between tenants and every frame comes back.

use scrubheap::{DomId, Policy};
use scrubheap_host::instrument::PreemptRecorder;
use scrubheap_host::pool::{Pool, PoolConfig};
use scrubheap_host::GuestOps;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

fn pool(policy: Policy, verify: bool) -> Pool {
    Pool::new(PoolConfig {
        memory_bytes: 64 << 20,
        nodes: 2,
        policy,
        verify,
        hugetlb: false,
        idle_priority: false,
        ..PoolConfig::default()
    })
    .unwrap()
}

fn churn(p: &Pool) {
    let rec = PreemptRecorder::new(0);
    for round in 0..4u32 {
        let mut guests = Vec::new();
        for g in 0..3u32 {
            let dom = DomId(round * 10 + g + 1);
            let (guest, c) = p.create_guest(dom, (4 + 3 * g as u64) << 20, &rec).unwrap();
            assert!(c.ms >= 0.0);
            p.run_guest(&guest);
            guests.push(guest);
        }
        for g in guests {
            p.destroy_guest(g, &rec);
        }
    }
}

#[test]
fn guests_churn_without_leaks_in_verify_mode() {
    for policy in [Policy::Scrubheap, Policy::Xen, Policy::Sync, Policy::Alloc] {
        let p = pool(policy, true);
        churn(&p);
        assert!(p.leaks.pages_checked.load(Relaxed) > 0);
        assert_eq!(p.leaks.nonzero_pages.load(Relaxed), 0, "{policy}: a tenant saw another's bytes");
        p.heap().check_invariants().unwrap();
        assert_eq!(p.heap().stats().allocated, 0);
        if policy.background_scrub() {
            assert!(p.wait_clean(Duration::from_secs(20)), "{policy}: scrubbers did not finish");
        }
        p.stop();
    }
}

#[test]
fn the_sampled_check_catches_a_skipped_scrub() {
    // A noscrub allocation of dirty memory is exactly what the leak check must see. The
    // `alloc` policy has no background scrubber, so the freed memory stays dirty.
    let p = pool(Policy::Alloc, false);
    let rec = PreemptRecorder::new(0);
    let (g, _) = p.create_guest(DomId(1), 8 << 20, &rec).unwrap();
    let node = g.extents[0].node;
    p.run_guest(&g);
    p.destroy_guest(g, &rec);
    let ext = p.heap().alloc(&scrubheap::AllocRequest::new(9, DomId(2)).exact(node).noscrub()).unwrap();
    p.leak_check(ext);
    assert!(p.leaks.nonzero_pages.load(Relaxed) > 0, "the check must find the previous tenant's tag");
}

#[test]
fn scrubbers_clean_freed_memory_in_the_background() {
    let p = pool(Policy::Scrubheap, false);
    let rec = PreemptRecorder::new(0);
    let (g, _) = p.create_guest(DomId(1), 32 << 20, &rec).unwrap();
    p.run_guest(&g);
    p.destroy_guest(g, &rec);
    assert!(p.wait_clean(Duration::from_secs(20)));
    let (frames, _) = p.scrub_progress();
    assert!(frames >= (32 << 20) / 4096, "the scrubber threads did the scrubbing ({frames} frames)");
    let stats = p.stop();
    assert_eq!(stats.len(), 2);
}

#[test]
fn a_guest_balloons_out_and_in_without_leaking() {
    let p = pool(Policy::Scrubheap, true);
    let rec = PreemptRecorder::new(0);
    let heap = p.heap();
    let (mut g, _) = p.create_guest(DomId(7), 6 << 20, &rec).unwrap();
    p.run_guest(&g);
    let frames = |g: &scrubheap_host::guest::Guest| g.extents.iter().map(|e| e.frames()).sum::<u64>();
    assert_eq!(frames(&g), 1536);
    // An odd amount: the 2 MiB extents split into aligned parts down to single frames.
    let freed = p.balloon_out(&mut g, 701, &rec);
    assert_eq!(freed.iter().map(|&(_, o)| 1u64 << o).sum::<u64>(), 701);
    assert!(freed.iter().any(|&(_, o)| o == 0) && freed.iter().any(|&(_, o)| o >= 8));
    assert_eq!(frames(&g), 835);
    assert_eq!(heap.stats().allocated, 835);
    heap.check_invariants().unwrap();
    // What the guest still holds keeps its tag; what it gave back is no longer its own.
    // (Guest memory is movable since issue 6.)
    for e in &g.extents {
        assert_eq!(
            heap.chunk_at(e.mfn).unwrap().state,
            scrubheap::ChunkState::Allocated { owner: DomId(7), pins: 0, movable: true, sealed: false }
        );
    }
    // Another tenant may take the ballooned memory meanwhile: it finds it zero.
    let (other, _) = p.create_guest(DomId(8), 2 << 20, &rec).unwrap();
    let got = p.balloon_in(&mut g, 701, 0, &rec);
    assert_eq!(got.iter().map(|e| e.frames()).sum::<u64>(), 701);
    assert_eq!(frames(&g), 1536);
    heap.check_invariants().unwrap();
    // Never more than the guest had: balloon_out keeps at least one frame.
    let all = p.balloon_out(&mut g, u64::MAX, &rec);
    assert_eq!(all.iter().map(|&(_, o)| 1u64 << o).sum::<u64>(), 1535);
    assert_eq!(frames(&g), 1);
    p.destroy_guest(g, &rec);
    p.destroy_guest(other, &rec);
    assert_eq!(heap.stats().allocated, 0);
    assert!(p.leaks.pages_checked.load(Relaxed) >= 1536 + 512 + 701);
    assert_eq!(p.leaks.nonzero_pages.load(Relaxed), 0);
    heap.check_invariants().unwrap();
    p.stop();
}

#[test]
fn a_kernel_guest_balloons_out_and_in() {
    use scrubheap_host::guest::KernelBackend;
    let k = KernelBackend::default();
    let (mut g, _) = k.create_guest(DomId(3), 4 << 20).unwrap();
    k.run_guest(&mut g);
    assert_eq!(k.balloon_out(&mut g, 1 << 20), 1 << 20);
    let before = k.pages_checked.load(Relaxed);
    k.balloon_in(&mut g, 1 << 20);
    // The kernel gave zeroed pages back in: 256 more pages checked, none dirty.
    assert_eq!(k.pages_checked.load(Relaxed), before + 256);
    assert_eq!(k.nonzero_pages.load(Relaxed), 0);
    k.destroy_guest(g);
}

#[test]
fn a_host_booted_dirty_hands_out_only_scrubbed_memory() {
    // Every frame starts holding poison (the previous boot's bytes) and dirty: guests
    // built at once get scrubbed memory, and the scrubbers clean the rest.
    for policy in [Policy::Scrubheap, Policy::Xen] {
        let p = Pool::new(PoolConfig {
            memory_bytes: 64 << 20,
            nodes: 2,
            policy,
            hugetlb: false,
            idle_priority: false,
            initially_dirty: true,
            ..PoolConfig::default()
        })
        .unwrap();
        let rec = PreemptRecorder::new(0);
        let (g, _) = p.create_guest(DomId(1), 20 << 20, &rec).unwrap();
        assert_eq!(p.leaks.nonzero_pages.load(Relaxed), 0, "{policy}: the previous boot's bytes reached a guest");
        assert_eq!(p.arena().count_nonzero_words(g.extents[0].mfn, g.extents[0].frames()), 0);
        p.destroy_guest(g, &rec);
        assert!(p.wait_clean(Duration::from_secs(20)), "{policy}");
        assert_eq!(p.arena().count_nonzero_words(scrubheap::Mfn(0), 16384), 0, "{policy}: all of it scrubbed");
        p.heap().check_invariants().unwrap();
        p.stop();
    }
}
