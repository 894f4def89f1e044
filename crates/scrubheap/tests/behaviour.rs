//! What the heap does, case by case (DESIGN 3.1 to 3.4, 3.7).

mod common;

use scrubheap::FreeError;
use scrubheap::*;

fn free_state(h: &Heap<impl FrameMemory>, m: u64) -> (u64, u8, u64) {
    let c = h.chunk_at(Mfn(m)).unwrap();
    match c.state {
        ChunkState::Free { dirty_frames } => (c.extent.mfn.0, c.extent.order, dirty_frames),
        s => panic!("frame {m} is {s:?}, not free"),
    }
}

#[test]
fn unaligned_node_bases_are_carved_into_aligned_chunks() {
    let h = Heap::new(HeapConfig::uniform(3, 1000), NullMemory).unwrap();
    h.check_invariants().unwrap();
    // Node 1 starts at 1000 = 8 * 125: its first chunk can only be of order 3.
    assert_eq!(h.chunk_at(Mfn(1000)).unwrap().extent.order, 3);
    assert_eq!(h.stats().free_clean, 3000);
}

#[test]
fn dirty_and_clean_buddies_merge() {
    let h = Heap::new(HeapConfig::uniform(1, 16), NullMemory).unwrap();
    let a = h.alloc(&AllocRequest::new(0, DomId(1))).unwrap();
    let b = h.alloc(&AllocRequest::new(0, DomId(1))).unwrap();
    assert_eq!(a.mfn.0 ^ 1, b.mfn.0);
    h.free(a.mfn, 0, DomId(1)).unwrap();
    h.check_invariants().unwrap();
    // The dirty frame merged with the clean rest of the node up to order 4, except for b.
    h.free(b.mfn, 0, DomId(1)).unwrap();
    assert_eq!(free_state(&h, 0), (0, 4, 2), "the whole node is one chunk with 2 dirty frames");
    h.check_invariants().unwrap();
}

#[test]
fn clean_exact_fit_comes_first_then_dirty_exact_fit_before_any_split() {
    let h = Heap::new(HeapConfig::uniform(1, 64), TestMemory::new(Mfn(0), 64, 64)).unwrap();
    // Make one dirty order-2 chunk with larger clean memory around it.
    let a = h.alloc(&AllocRequest::new(2, DomId(1))).unwrap();
    let keep = h.alloc(&AllocRequest::new(2, DomId(1))).unwrap();
    h.memory().write(DomId(1), a.mfn, 4);
    h.free(a.mfn, 2, DomId(1)).unwrap();
    assert_eq!(free_state(&h, a.mfn.0).2, 4);
    // Order 2: the dirty exact fit wins over splitting the clean order-3+ chunks.
    let before = h.stats();
    let b = h.alloc(&AllocRequest::new(2, DomId(2))).unwrap();
    assert_eq!(b.mfn, a.mfn, "took the dirty exact fit");
    assert!(h.memory().is_zero(b.mfn, 4));
    assert_eq!(h.memory().foreign_frame(DomId(2), b.mfn, 4), None);
    assert_eq!(h.stats().scrubbed.in_place, 4 * 4096);
    assert_eq!(h.in_place_bytes(DomId(2)), 4 * 4096);
    assert_eq!(h.stats().free_clean, before.free_clean, "no clean memory was split");
    h.free(b.mfn, 2, DomId(2)).unwrap();
    h.free(keep.mfn, 2, DomId(1)).unwrap();
    h.check_invariants().unwrap();
}

#[test]
fn xen_policy_splits_clean_memory_before_touching_a_dirty_exact_fit() {
    let h = Heap::new(HeapConfig::uniform(1, 64).with_policy(Policy::Xen), NullMemory).unwrap();
    let a = h.alloc(&AllocRequest::new(2, DomId(1))).unwrap();
    let _keep = h.alloc(&AllocRequest::new(2, DomId(1))).unwrap();
    h.free(a.mfn, 2, DomId(1)).unwrap();
    let b = h.alloc(&AllocRequest::new(2, DomId(2))).unwrap();
    assert_ne!(b.mfn, a.mfn, "xen prefers a clean chunk of any order");
    assert_eq!(h.stats().scrubbed.in_place, 0);
    h.check_invariants().unwrap();
}

#[test]
fn noscrub_requests_prefer_dirty_memory_and_leave_clean_memory_alone() {
    let h = Heap::new(HeapConfig::uniform(1, 64), NullMemory).unwrap();
    let a = h.alloc(&AllocRequest::new(3, DomId(1))).unwrap();
    h.free(a.mfn, 3, DomId(1)).unwrap();
    let dirty_before = h.stats().free_dirty;
    let b = h.alloc(&AllocRequest::new(0, DomId(2)).noscrub()).unwrap();
    assert!(a.mfn.0 <= b.mfn.0 && b.mfn.0 < a.mfn.0 + 8, "took a dirty frame");
    assert_eq!(h.stats().free_dirty, dirty_before - 1);
    assert_eq!(h.stats().scrubbed.in_place, 0);
    h.check_invariants().unwrap();
}

#[test]
fn in_place_scrub_covers_only_the_frames_handed_out() {
    let h = Heap::new(HeapConfig::uniform(1, 1 << 10).with_initially_dirty(true), NullMemory).unwrap();
    assert_eq!(h.stats().free_dirty, 1024);
    h.alloc(&AllocRequest::new(4, DomId(1))).unwrap();
    assert_eq!(h.stats().scrubbed.in_place, 16 * 4096);
    assert_eq!(h.stats().free_dirty, 1024 - 16);
    h.check_invariants().unwrap();
}

#[test]
fn nearest_node_fallback_follows_the_distance_table() {
    let mut c = HeapConfig::uniform(3, 256);
    c.distance = vec![vec![10, 40, 20], vec![40, 10, 20], vec![20, 20, 10]];
    let h = Heap::new(c, NullMemory).unwrap();
    h.alloc(&AllocRequest::new(8, DomId(1)).exact(0)).unwrap();
    let e = h.alloc(&AllocRequest::new(0, DomId(1)).on(0)).unwrap();
    assert_eq!(e.node, 2, "node 2 is nearer to node 0 than node 1 is");
    let err = h.alloc(&AllocRequest::new(0, DomId(1)).exact(0)).unwrap_err();
    assert!(matches!(err, HeapError::OutOfMemory { .. }), "exact never falls back");
    h.check_invariants().unwrap();
}

#[test]
fn any_node_starts_with_the_emptiest_node() {
    let h = Heap::new(HeapConfig::uniform(2, 256), NullMemory).unwrap();
    h.alloc(&AllocRequest::new(4, DomId(1)).exact(0)).unwrap();
    assert_eq!(h.alloc(&AllocRequest::new(0, DomId(1))).unwrap().node, 1);
}

#[test]
fn unmovable_requests_never_get_movable_memory_and_movable_ones_prefer_it() {
    let h = Heap::new(HeapConfig::uniform(1, 256).with_movable_from(128), NullMemory).unwrap();
    let m = h.alloc(&AllocRequest::new(0, DomId(1)).movable()).unwrap();
    assert_eq!(h.chunk_at(m.mfn).unwrap().zone, Zone::Movable);
    h.alloc(&AllocRequest::new(7, DomId(1))).unwrap();
    assert!(matches!(h.alloc(&AllocRequest::new(0, DomId(1))), Err(HeapError::OutOfMemory { .. })));
    assert_eq!(
        h.chunk_at(h.alloc(&AllocRequest::new(0, DomId(1)).movable()).unwrap().mfn).unwrap().zone,
        Zone::Movable
    );
    h.check_invariants().unwrap();
}

#[test]
fn any_aligned_part_of_an_allocation_can_be_freed() {
    let h = Heap::new(HeapConfig::uniform(1, 512), NullMemory).unwrap();
    let e = h.alloc(&AllocRequest::new(9, DomId(1))).unwrap();
    h.free(Mfn(e.mfn.0 + 256), 6, DomId(1)).unwrap();
    h.free(Mfn(e.mfn.0 + 3), 0, DomId(1)).unwrap();
    h.check_invariants().unwrap();
    assert_eq!(h.stats().allocated, 512 - 64 - 1);
    assert!(matches!(h.free(e.mfn, 9, DomId(1)), Err(HeapError::Free(FreeError::OrderTooLarge { .. }))));
    // The rest, piece by piece: a range covering several remaining pieces frees them all.
    h.free(Mfn(e.mfn.0 + 256), 8, DomId(1)).unwrap_err();
    h.free(Mfn(e.mfn.0 + 384), 7, DomId(1)).unwrap();
    h.free(Mfn(e.mfn.0 + 320), 6, DomId(1)).unwrap();
    h.free(Mfn(e.mfn.0 + 4), 2, DomId(1)).unwrap();
    h.free(Mfn(e.mfn.0), 1, DomId(1)).unwrap();
    h.free(Mfn(e.mfn.0 + 2), 0, DomId(1)).unwrap();
    h.free(Mfn(e.mfn.0 + 8), 3, DomId(1)).unwrap();
    for o in 4..8 {
        h.free(Mfn(e.mfn.0 + (1 << o)), o, DomId(1)).unwrap();
    }
    assert_eq!(h.stats().allocated, 0);
    assert_eq!(free_state(&h, 0), (0, 9, 512));
    h.check_invariants().unwrap();
}

#[test]
fn a_range_covering_several_pieces_of_one_owner_frees_them_together() {
    let h = Heap::new(HeapConfig::uniform(1, 64), NullMemory).unwrap();
    let e = h.alloc(&AllocRequest::new(3, DomId(1))).unwrap();
    h.free(Mfn(e.mfn.0 + 1), 0, DomId(1)).unwrap();
    // [0, 8) now holds pieces 0, 2-3, 4-7 of dom1 and a free frame 1.
    assert!(matches!(h.free(e.mfn, 3, DomId(1)), Err(HeapError::Free(FreeError::OrderTooLarge { .. }))));
    h.free(Mfn(e.mfn.0 + 4), 2, DomId(1)).unwrap();
    h.free(Mfn(e.mfn.0 + 2), 1, DomId(1)).unwrap();
    h.free(e.mfn, 0, DomId(1)).unwrap();
    assert_eq!(h.stats().allocated, 0);
    h.check_invariants().unwrap();
}

#[test]
fn scrub_step_respects_its_budget_and_keeps_progress() {
    let h =
        Heap::new(HeapConfig::uniform(1, 1024).with_initially_dirty(true), TestMemory::new(Mfn(0), 1024, 64)).unwrap();
    assert_eq!(h.scrub_step(0, 100, &NeverPreempt).unwrap(), 100);
    assert_eq!(h.stats().free_dirty, 924);
    h.check_invariants().unwrap();
    let mut total = 100;
    loop {
        let n = h.scrub_step(0, 300, &NeverPreempt).unwrap();
        if n == 0 {
            break;
        }
        assert!(n <= 300);
        total += n;
        h.check_invariants().unwrap();
    }
    assert_eq!(total, 1024);
    assert_eq!(h.memory().zeroed_frames(), 1024, "every frame zeroed exactly once");
    assert_eq!(h.stats().scrubbed.background, 1024 * 4096);
    assert_eq!(h.stats().free_dirty, 0);
}

#[test]
fn cpu_less_nodes_are_scrubbed_by_the_nearest_node_with_cpus() {
    let mut c = HeapConfig::uniform(3, 64).with_initially_dirty(true);
    c.nodes[1].has_cpus = false;
    c.distance = vec![vec![10, 30, 20], vec![30, 10, 20], vec![20, 20, 10]];
    let h = Heap::new(c, NullMemory).unwrap();
    assert_eq!(h.served_by(2).unwrap(), &[2, 1]);
    assert_eq!(h.served_by(1).unwrap(), &[] as &[usize]);
    assert_eq!(h.scrub_step(2, u64::MAX, &NeverPreempt).unwrap(), 128);
    assert_eq!(h.node_stats(1).unwrap().free_dirty, 0);
    assert_eq!(h.node_stats(0).unwrap().free_dirty, 64);
}

#[test]
fn sync_policy_scrubs_on_free() {
    let h = Heap::new(HeapConfig::uniform(1, 64).with_policy(Policy::Sync), TestMemory::new(Mfn(0), 64, 64)).unwrap();
    let e = h.alloc(&AllocRequest::new(3, DomId(1))).unwrap();
    h.memory().write(DomId(1), e.mfn, 8);
    h.free(e.mfn, 3, DomId(1)).unwrap();
    assert_eq!(h.stats().free_dirty, 0);
    assert_eq!(h.stats().scrubbed.sync, 8 * 4096);
    assert!(h.memory().is_zero(e.mfn, 8));
    h.check_invariants().unwrap();
}

#[test]
fn alloc_policy_never_scrubs_in_the_background() {
    let h = Heap::new(HeapConfig::uniform(1, 64).with_policy(Policy::Alloc).with_initially_dirty(true), NullMemory)
        .unwrap();
    assert_eq!(h.scrub_step(0, u64::MAX, &NeverPreempt).unwrap(), 0);
    h.alloc(&AllocRequest::new(3, DomId(1))).unwrap();
    assert_eq!(h.stats().scrubbed.in_place, 8 * 4096);
}

#[test]
fn xen_cap2m_refuses_large_dirty_allocations_but_not_clean_ones() {
    let h =
        Heap::new(HeapConfig::uniform(1, 4096).with_policy(Policy::XenCap2m).with_initially_dirty(true), NullMemory)
            .unwrap();
    assert!(matches!(h.alloc(&AllocRequest::new(10, DomId(1))), Err(HeapError::OutOfMemory { .. })));
    h.alloc(&AllocRequest::new(9, DomId(1))).unwrap();
    h.scrub_step(0, u64::MAX, &NeverPreempt).unwrap();
    h.alloc(&AllocRequest::new(10, DomId(1))).unwrap();
    h.check_invariants().unwrap();
    // The cap is 2 MiB whatever the frame size: order 7 with 16 KiB frames.
    let mut c = HeapConfig::uniform(1, 4096).with_policy(Policy::XenCap2m).with_initially_dirty(true);
    c.frame_size = 16384;
    let h = Heap::new(c, NullMemory).unwrap();
    assert!(matches!(h.alloc(&AllocRequest::new(8, DomId(1))), Err(HeapError::OutOfMemory { .. })));
    h.alloc(&AllocRequest::new(7, DomId(1))).unwrap();
    h.check_invariants().unwrap();
}

#[test]
fn claims_reserve_memory_and_are_retired_node_first_then_global() {
    let h = Heap::new(HeapConfig::uniform(2, 256), NullMemory).unwrap();
    let set = [Claim { target: ClaimTarget::Node(0), frames: 200 }, Claim { target: ClaimTarget::Global, frames: 100 }];
    h.claim_set(DomId(1), &set).unwrap();
    assert_eq!(h.stats().claimed, 300);
    assert_eq!(h.node_stats(0).unwrap().claimed, 200);
    // Others may use node 0's 56 unclaimed frames, and the heap's 212 unclaimed ones.
    assert!(h.alloc(&AllocRequest::new(6, DomId(2)).exact(0)).is_err());
    h.alloc(&AllocRequest::new(5, DomId(2)).exact(0)).unwrap();
    h.alloc(&AllocRequest::new(7, DomId(2)).exact(1)).unwrap();
    let err = h.alloc(&AllocRequest::new(6, DomId(2)).exact(1)).unwrap_err();
    assert!(matches!(err, HeapError::OutOfMemory { claimed, .. } if claimed > 0), "{err}");
    h.check_invariants().unwrap();
    // The claimant retires its node claim first, then its global claim.
    h.alloc(&AllocRequest::new(7, DomId(1)).exact(0)).unwrap();
    assert_eq!(
        h.claims_of(DomId(1)),
        vec![Claim { target: ClaimTarget::Global, frames: 100 }, Claim { target: ClaimTarget::Node(0), frames: 72 }]
    );
    h.alloc(&AllocRequest::new(6, DomId(1)).exact(1)).unwrap();
    assert_eq!(
        h.claims_of(DomId(1)),
        vec![Claim { target: ClaimTarget::Global, frames: 36 }, Claim { target: ClaimTarget::Node(0), frames: 72 }]
    );
    h.check_invariants().unwrap();
    // Reinstalling replaces the set; cancelling frees it all.
    h.claim_set(DomId(1), &[Claim { target: ClaimTarget::Node(1), frames: 10 }]).unwrap();
    assert_eq!(h.claims_of(DomId(1)), vec![Claim { target: ClaimTarget::Node(1), frames: 10 }]);
    h.claim_cancel(DomId(1));
    assert_eq!(h.stats().claimed, 0);
    h.check_invariants().unwrap();
}

#[test]
fn claimed_nodes_are_scrubbed_first_toward_their_clean_target() {
    let mut c = HeapConfig::uniform(3, 64).with_initially_dirty(true);
    c.nodes[1].has_cpus = false;
    c.nodes[2].has_cpus = false;
    let h = Heap::new(c, NullMemory).unwrap();
    assert_eq!(h.served_by(0).unwrap(), &[0, 1, 2]);
    h.claim_set(DomId(7), &[Claim { target: ClaimTarget::Node(2), frames: 40 }]).unwrap();
    assert_eq!(h.node_stats(2).unwrap().claimed, 40);
    // The first 40 frames scrubbed are node 2's: its claim's clean-memory target. Then
    // the scrubber's own node.
    assert_eq!(h.scrub_step(0, 64, &NeverPreempt).unwrap(), 64);
    assert_eq!(h.node_stats(2).unwrap().free_clean, 40);
    assert_eq!(h.node_stats(0).unwrap().free_dirty, 40);
    assert_eq!(h.node_stats(1).unwrap().free_dirty, 64);
    h.check_invariants().unwrap();
}

#[test]
fn every_claimed_node_reaches_its_clean_target_before_any_goes_beyond_it() {
    let mut c = HeapConfig::uniform(3, 64).with_initially_dirty(true);
    c.nodes[1].has_cpus = false;
    c.nodes[2].has_cpus = false;
    let h = Heap::new(c, NullMemory).unwrap();
    h.claim_set(DomId(7), &[Claim { target: ClaimTarget::Node(1), frames: 10 }]).unwrap();
    h.claim_set(DomId(8), &[Claim { target: ClaimTarget::Node(2), frames: 20 }]).unwrap();
    h.claim_set(DomId(9), &[Claim { target: ClaimTarget::Node(0), frames: 5 }]).unwrap();
    // Own node's target (5), then the largest shortfall (node 2: 20), then node 1 (10).
    assert_eq!(h.scrub_step(0, 5, &NeverPreempt).unwrap(), 5);
    assert_eq!(h.node_stats(0).unwrap().free_clean, 5);
    assert_eq!(h.scrub_step(0, 25, &NeverPreempt).unwrap(), 25);
    let clean = |n| h.node_stats(n).unwrap().free_clean;
    assert_eq!((clean(0), clean(1), clean(2)), (5, 5, 20));
    assert_eq!(h.scrub_step(0, 5, &NeverPreempt).unwrap(), 5);
    assert_eq!((clean(0), clean(1), clean(2)), (5, 10, 20), "targets met; nothing beyond them yet");
    // Targets met: the scrubber's own node first.
    assert_eq!(h.scrub_step(0, 8, &NeverPreempt).unwrap(), 8);
    assert_eq!((clean(0), clean(1), clean(2)), (13, 10, 20));
    h.check_invariants().unwrap();
}

#[test]
fn an_extent_splits_into_buddies_around_a_part() {
    let e = Extent { mfn: Mfn(1024), order: 4, node: 0 };
    let part = Extent { mfn: Mfn(1024 + 5), order: 0, node: 0 };
    let rest = e.split_around(part);
    let got: Vec<(u64, u8)> = rest.iter().map(|r| (r.mfn.0, r.order)).collect();
    assert_eq!(got, [(1024 + 8, 3), (1024, 2), (1024 + 6, 1), (1024 + 4, 0)]);
    // With the part, the pieces cover the extent exactly once.
    let mut frames: Vec<u64> = rest.iter().chain([&part]).flat_map(|r| r.mfn.0..r.mfn.0 + r.frames()).collect();
    frames.sort_unstable();
    assert_eq!(frames, (1024..1024 + 16).collect::<Vec<_>>());
    assert!(e.split_around(e).is_empty(), "the whole extent leaves nothing");
}

#[test]
fn preemption_points_are_asked_with_no_node_lock_held() {
    // A `Preempt` may reschedule, or look at the heap (here `zone_stats`, which takes the
    // node lock): every preemption point of a scrubbing path must be outside the node
    // lock, or this test deadlocks on the heap's spin lock.
    let h =
        Heap::new(HeapConfig::uniform(1, 4096).with_initially_dirty(true), TestMemory::new(Mfn(0), 4096, 8)).unwrap();
    let asked = core::cell::Cell::new(0u32);
    let looks = || {
        asked.set(asked.get() + 1);
        h.zone_stats(0, Zone::Normal).unwrap();
        false
    };
    // An owner's ticket over 1024 dirty frames: four batches, a point after each.
    let e = h.alloc_preemptible(&AllocRequest::new(10, DomId(1)), &looks).unwrap().unwrap();
    assert!(h.memory().is_zero(e.mfn, 1024));
    let after_ticket = asked.get();
    assert!(after_ticket >= 3, "a point between batches: {after_ticket}");
    // A background scrubber over the rest: a point after each batch.
    assert!(h.scrub_step(0, u64::MAX, &looks).unwrap() > 0);
    assert!(asked.get() > after_ticket);
    h.check_invariants().unwrap();

    // Offline with a move, online, and a pin that moves out of the Movable zone.
    let c = HeapConfig::uniform(1, 1 << 12).with_movable_from(1 << 11);
    let h = Heap::new(c, TestMemory::new(Mfn(0), 1 << 12, 8)).unwrap();
    let asked = core::cell::Cell::new(0u32);
    let looks = || {
        asked.set(asked.get() + 1);
        h.zone_stats(0, Zone::Normal).unwrap();
        false
    };
    let a = h.alloc(&AllocRequest::new(4, DomId(1)).movable()).unwrap();
    assert!(a.mfn.0 >= 1 << 11, "a movable allocation is in the Movable zone");
    let done = h.offline(Mfn(1 << 11), 1 << 11, &MetadataMigrator, &NoDeadline, &looks).unwrap();
    assert_eq!(done.migrated_chunks, 1);
    let after_offline = asked.get();
    assert!(after_offline > 0);
    h.online(Mfn(1 << 11), 1 << 11, &looks).unwrap();
    assert!(asked.get() > after_offline);
    // The range came back online dirty: 512 frames take a ticket.
    let b = h.alloc_preemptible(&AllocRequest::new(9, DomId(2)).movable(), &looks).unwrap().unwrap();
    let before_pin = asked.get();
    let at = h.pin(b.mfn, 9, DomId(2), &MetadataMigrator, &looks).unwrap();
    assert_eq!(h.chunk_at(at.mfn).unwrap().zone, Zone::Normal);
    assert!(asked.get() > before_pin, "a 512-frame move asks between its pieces");
    h.check_invariants().unwrap();
}
