//! The pool on real memory: guests created, run and destroyed across emulated nodes with
//! scrubber threads; nothing leaks between tenants and every frame comes back.

use scrubheap::{DomId, Policy};
use scrubheap_host::instrument::PreemptRecorder;
use scrubheap_host::pool::{Pool, PoolConfig};
use scrubheap_host::GuestOps;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

fn pool(policy: Policy, verify: bool) -> Pool {
    pool_of(policy, verify, 2)
}

/// 64 MiB over `nodes`. With one node a guest built after another's departure gets the
/// frames it left (with two, it goes to the other node's clean memory).
fn pool_of(policy: Policy, verify: bool, nodes: usize) -> Pool {
    Pool::new(PoolConfig {
        memory_bytes: 64 << 20,
        nodes,
        policy,
        verify,
        hugetlb: false,
        scrub_priority: scrubheap_host::ScrubPriority::Normal,
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
            scrub_priority: scrubheap_host::ScrubPriority::Normal,
            initially_dirty: true,
            ..PoolConfig::default()
        })
        .unwrap();
        let rec = PreemptRecorder::new(0);
        let (g, _) = p.create_guest(DomId(1), 20 << 20, &rec).unwrap();
        assert_eq!(p.leaks.nonzero_pages.load(Relaxed), 0, "{policy}: the previous boot's bytes reached a guest");
        assert_eq!(p.arena().count_nonzero_words(g.extents[0].mfn, g.extents[0].frames()), 0);
        // A dirty boot's frames all pass through a scrub, whose read-back counts them; none
        // is counted as clean from boot.
        let scrub = p.arena().scrub_check();
        assert!(scrub.pages_checked.load(Relaxed) >= (20 << 20) / 4096, "{policy}");
        assert_eq!(scrub.nonzero_pages.load(Relaxed), 0, "{policy}");
        assert_eq!(p.boot_check.pages_checked.load(Relaxed), 0, "{policy}");
        p.destroy_guest(g, &rec);
        assert!(p.wait_clean(Duration::from_secs(20)), "{policy}");
        assert_eq!(p.arena().count_nonzero_words(scrubheap::Mfn(0), 16384), 0, "{policy}: all of it scrubbed");
        p.heap().check_invariants().unwrap();
        p.stop();
    }
}

const FRAMES: u64 = (64 << 20) / 4096;

/// Creates an 8 MiB guest, fills it with its tag, destroys it and waits for the scrubbers.
fn dirty_then_scrub(p: &Pool) -> u64 {
    let rec = PreemptRecorder::new(0);
    let (g, _) = p.create_guest(DomId(1), 8 << 20, &rec).unwrap();
    p.run_guest(&g);
    let frames = g.extents.iter().map(|e| e.frames()).sum();
    p.destroy_guest(g, &rec);
    assert!(p.wait_clean(Duration::from_secs(20)), "the scrubbers did not finish");
    frames
}

#[test]
fn a_clean_boot_is_read_once_and_the_handoff_only_under_verify() {
    for verify in [false, true] {
        let p = pool(Policy::Scrubheap, verify);
        let words = if verify { 512 } else { 16 };
        let [boot, scrub, handoff] = p.leak_tallies();
        assert_eq!((boot.pages_checked, boot.words_checked, boot.nonzero_pages), (FRAMES, FRAMES * words, 0));
        assert_eq!((scrub.pages_checked, handoff.pages_checked), (0, 0), "nothing zeroed or handed over yet");
        let frames = dirty_then_scrub(&p);
        let [_, scrub, handoff] = p.leak_tallies();
        assert_eq!(scrub.words_per_page as u64, words);
        assert!(scrub.pages_checked >= frames && scrub.nonzero_pages == 0, "{scrub:?}");
        let expected = if verify { frames } else { 0 };
        assert_eq!(handoff.pages_checked, expected, "the handoff reads frames only under verify");
        p.stop();
    }
}

#[test]
fn a_frame_poisoned_while_dirty_is_zero_after_its_scrub() {
    // The `alloc` policy has no scrubber thread: freed frames stay dirty, untouched, until
    // an allocation scrubs them in place (so the poisoning below races with nothing). One
    // node, so the second guest is built on the first one's frames.
    let p = pool_of(Policy::Alloc, false, 1);
    let rec = PreemptRecorder::new(0);
    let (g, _) = p.create_guest(DomId(1), 8 << 20, &rec).unwrap();
    let old = g.extents.clone();
    p.destroy_guest(g, &rec);
    // Written behind the pool's back while free and dirty: the scrub zeroes it anyway.
    for e in &old {
        p.arena().poison(e.mfn, e.frames());
    }
    let (g, _) = p.create_guest(DomId(2), 8 << 20, &rec).unwrap();
    let frames: u64 = g.extents.iter().map(|e| e.frames()).sum();
    let reused = g
        .extents
        .iter()
        .filter(|e| old.iter().any(|o| o.mfn.0 < e.mfn.0 + e.frames() && e.mfn.0 < o.mfn.0 + o.frames()));
    assert!(reused.count() > 0, "the second guest reuses the poisoned frames");
    let scrub = p.arena().scrub_check();
    assert!(scrub.pages_checked.load(Relaxed) >= frames, "its frames were read back after their scrub");
    assert_eq!(scrub.nonzero_pages.load(Relaxed), 0);
    for e in &g.extents {
        assert_eq!(p.arena().count_nonzero_words(e.mfn, e.frames()), 0, "every poisoned word was zeroed");
    }
    p.destroy_guest(g, &rec);
    p.stop();
}

#[test]
fn a_frame_poisoned_after_its_scrub_is_caught_at_handoff_under_verify() {
    let p = pool(Policy::Scrubheap, true);
    dirty_then_scrub(&p);
    assert_eq!(p.arena().scrub_check().nonzero_pages.load(Relaxed), 0, "the scrubs left zeros");
    // Now every frame is free and clean, verified by its scrub; write behind the pool's back.
    p.arena().poison(scrubheap::Mfn(0), FRAMES);
    let rec = PreemptRecorder::new(0);
    let (g, _) = p.create_guest(DomId(2), 4 << 20, &rec).unwrap();
    assert_eq!(p.leaks.nonzero_pages.load(Relaxed), 1024, "the handoff check reads every frame it gives");
    assert_eq!(p.arena().scrub_check().nonzero_pages.load(Relaxed), 0, "no scrub ran: the frames were clean");
    p.destroy_guest(g, &rec);
    p.stop();
}

#[test]
fn a_sabotaged_scrub_is_caught_by_its_read_back() {
    // Background (scrubber threads) and in place (an allocation's ticket, `alloc` policy).
    // One node, so the `alloc` policy's second guest scrubs the first one's frames.
    for policy in [Policy::Scrubheap, Policy::Alloc] {
        let p = pool_of(policy, false, 1);
        p.arena().sabotage_zeroing(true);
        let rec = PreemptRecorder::new(0);
        let (g, _) = p.create_guest(DomId(1), 8 << 20, &rec).unwrap();
        p.run_guest(&g);
        p.destroy_guest(g, &rec);
        if policy.background_scrub() {
            assert!(p.wait_clean(Duration::from_secs(20)), "{policy}");
        } else {
            let (g, _) = p.create_guest(DomId(2), 8 << 20, &rec).unwrap();
            p.destroy_guest(g, &rec);
        }
        let scrub = p.arena().scrub_check();
        assert!(scrub.nonzero_pages.load(Relaxed) > 0, "{policy}: a scrub that zeroed nothing passed its read-back");
        assert_eq!(p.leaks.pages_checked.load(Relaxed), 0, "{policy}: caught without a handoff check");
        p.stop();
    }
}

#[test]
fn a_guest_is_built_on_the_node_with_clean_memory_for_it_not_on_the_one_with_most_room() {
    // No scrubber threads: what a departed guest leaves stays dirty.
    let p = Pool::new(PoolConfig {
        memory_bytes: 16 << 20,
        nodes: 2,
        scrubbers_per_node: 0,
        hugetlb: false,
        ..PoolConfig::default()
    })
    .unwrap();
    let rec = PreemptRecorder::new(0);
    let (a, _) = p.create_guest(DomId(1), 8 << 20, &rec).unwrap();
    let (b, _) = p.create_guest(DomId(2), 4 << 20, &rec).unwrap();
    let node_of = |g: &scrubheap_host::guest::Guest| {
        let nodes: std::collections::BTreeSet<usize> = g.extents.iter().map(|e| e.node).collect();
        assert_eq!(nodes.len(), 1, "{g:?}");
        nodes.into_iter().next().unwrap()
    };
    let (na, nb) = (node_of(&a), node_of(&b));
    assert_ne!(na, nb, "the second guest goes where there is room");
    p.run_guest(&a);
    p.destroy_guest(a, &rec);
    // A's node now has the most free memory (8 MiB, all dirty); B's has 4 MiB clean.
    assert_eq!(p.heap().node_stats(na).unwrap().free_dirty, 2048);
    let (c, _) = p.create_guest(DomId(3), 4 << 20, &rec).unwrap();
    assert_eq!(node_of(&c), nb, "built where clean memory waits for it");
    assert_eq!(p.heap().stats().scrubbed.in_place, 0, "nothing scrubbed in place");
    // B's node is full now: the only node with room is built on, dirty as it is.
    let (d, _) = p.create_guest(DomId(4), 6 << 20, &rec).unwrap();
    assert_eq!(node_of(&d), na);
    assert!(p.heap().stats().scrubbed.in_place > 0);
    for g in [b, c, d] {
        p.destroy_guest(g, &rec);
    }
    assert_eq!(p.heap().stats().allocated, 0);
    p.heap().check_invariants().unwrap();
}
