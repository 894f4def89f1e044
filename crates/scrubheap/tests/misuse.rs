//! One test per misuse case of DESIGN section 7: each returns a typed error and leaves the
//! heap exactly as it was.

#[macro_use]
mod common;

use common::{snapshot, two_nodes as heap};
use scrubheap::*;
use scrubheap::{ClaimError, FreeError, OfflineError, RangeError};

#[test]
fn double_free_is_refused() {
    let h = heap();
    let e = h.alloc(&AllocRequest::new(3, DomId(1))).unwrap();
    h.free(e.mfn, 3, DomId(1)).unwrap();
    let msg = refused!(h, h.free(e.mfn, 3, DomId(1)), HeapError::Free(FreeError::NotAllocated { .. }));
    assert!(msg.contains("double free"));
}

#[test]
fn free_with_a_larger_order_is_refused() {
    let h = heap();
    let e = h.alloc(&AllocRequest::new(3, DomId(1))).unwrap();
    let mut next = e.mfn;
    next.0 &= !0xf;
    refused!(
        h,
        h.free(next, 4, DomId(1)),
        HeapError::Free(FreeError::OrderTooLarge { .. }) | HeapError::Free(FreeError::NotAllocated { .. })
    );
    refused!(
        h,
        h.free(e.mfn, 4, DomId(1)),
        HeapError::Free(FreeError::OrderTooLarge { .. }) | HeapError::Range(RangeError::Unaligned { .. })
    );
}

#[test]
fn unaligned_frame_is_refused() {
    let h = heap();
    let e = h.alloc(&AllocRequest::new(3, DomId(1))).unwrap();
    refused!(h, h.free(Mfn(e.mfn.0 + 1), 3, DomId(1)), HeapError::Range(RangeError::Unaligned { .. }));
}

#[test]
fn out_of_range_frame_is_refused() {
    let h = heap();
    h.alloc(&AllocRequest::new(0, DomId(1))).unwrap();
    refused!(h, h.free(Mfn(2048), 0, DomId(1)), HeapError::Range(RangeError::OutOfRange { .. }));
    refused!(h, h.free(Mfn(u64::MAX), 0, DomId(1)), HeapError::Range(RangeError::OutOfRange { .. }));
    refused!(h, h.chunk_at(Mfn(4096)), HeapError::Range(RangeError::OutOfRange { .. }));
}

#[test]
fn range_across_nodes_is_refused() {
    let h = Heap::new(HeapConfig::uniform(2, 1000), NullMemory).unwrap();
    // Node 1 starts at frame 1000; [512, 1536) is aligned but crosses into it.
    refused!(h, h.free(Mfn(512), 9, DomId(1)), HeapError::Range(RangeError::CrossesNode { .. }));
}

#[test]
fn invalid_order_is_refused() {
    let h = heap();
    refused!(h, h.alloc(&AllocRequest::new(19, DomId(1))), HeapError::Range(RangeError::InvalidOrder { order: 19 }));
    refused!(h, h.free(Mfn(0), 200, DomId(1)), HeapError::Range(RangeError::InvalidOrder { .. }));
}

#[test]
fn unknown_node_is_refused() {
    let h = heap();
    refused!(
        h,
        h.alloc(&AllocRequest::new(0, DomId(1)).exact(2)),
        HeapError::Range(RangeError::NoSuchNode { node: 2, nodes: 2 })
    );
    refused!(h, h.alloc(&AllocRequest::new(0, DomId(1)).on(7)), HeapError::Range(RangeError::NoSuchNode { .. }));
    refused!(h, h.scrub_step(9, 10, &NeverPreempt), HeapError::Range(RangeError::NoSuchNode { .. }));
    refused!(
        h,
        h.claim_set(DomId(1), &[Claim { target: ClaimTarget::Node(5), frames: 1 }]),
        HeapError::Range(RangeError::NoSuchNode { .. })
    );
}

#[test]
fn wrong_owner_is_refused() {
    let h = heap();
    let e = h.alloc(&AllocRequest::new(2, DomId(1))).unwrap();
    let msg = refused!(h, h.free(e.mfn, 2, DomId(2)), HeapError::Free(FreeError::WrongOwner { .. }));
    assert!(msg.contains("dom1") && msg.contains("dom2"));
}

#[test]
fn free_over_someone_elses_frames_is_refused() {
    let h = heap();
    let a = h.alloc(&AllocRequest::new(0, DomId(1)).exact(0)).unwrap();
    let b = h.alloc(&AllocRequest::new(0, DomId(2)).exact(0)).unwrap();
    assert_eq!(a.mfn.0 ^ 1, b.mfn.0, "order-0 allocations from a fresh node are buddies");
    let lo = Mfn(a.mfn.0.min(b.mfn.0));
    refused!(
        h,
        h.free(lo, 1, DomId(1)),
        HeapError::Free(FreeError::OrderTooLarge { .. }) | HeapError::Free(FreeError::WrongOwner { .. })
    );
}

#[test]
fn out_of_memory_is_refused() {
    let h = heap();
    for _ in 0..2 {
        h.alloc(&AllocRequest::new(10, DomId(1))).unwrap();
    }
    let msg = refused!(h, h.alloc(&AllocRequest::new(0, DomId(1))), HeapError::OutOfMemory { .. });
    assert!(msg.contains("out of memory"));
}

#[test]
fn claim_beyond_free_memory_is_refused() {
    let h = heap();
    h.alloc(&AllocRequest::new(9, DomId(2)).exact(0)).unwrap();
    let node = Claim { target: ClaimTarget::Node(0), frames: 513 };
    refused!(h, h.claim_set(DomId(1), &[node]), HeapError::Claim(ClaimError::ClaimExceedsFree { .. }));
    let global = Claim { target: ClaimTarget::Global, frames: 1537 };
    refused!(h, h.claim_set(DomId(1), &[global]), HeapError::Claim(ClaimError::ClaimExceedsFree { .. }));
    // A set is all or nothing: a good entry with a bad one installs neither.
    let ok = Claim { target: ClaimTarget::Node(1), frames: 10 };
    refused!(h, h.claim_set(DomId(1), &[ok, node]), HeapError::Claim(ClaimError::ClaimExceedsFree { .. }));
}

#[test]
fn claim_over_others_claims_is_refused() {
    let h = heap();
    h.claim_set(DomId(2), &[Claim { target: ClaimTarget::Node(0), frames: 1000 }]).unwrap();
    refused!(
        h,
        h.claim_set(DomId(1), &[Claim { target: ClaimTarget::Node(0), frames: 100 }]),
        HeapError::Claim(ClaimError::ClaimExceedsFree { available: 24, .. })
    );
}

#[test]
fn invalid_configurations_are_refused() {
    let bad = |c: HeapConfig| Heap::new(c, NullMemory).err().unwrap();
    assert!(matches!(bad(HeapConfig::uniform(0, 10)), HeapError::InvalidConfig(_)));
    assert!(matches!(bad(HeapConfig::uniform(1, 0)), HeapError::InvalidConfig(_)));
    let mut c = HeapConfig::uniform(1, 10);
    c.frame_size = 3000;
    assert!(matches!(bad(c), HeapError::InvalidConfig(_)));
    assert!(matches!(bad(HeapConfig::uniform(1, 10).with_movable_from(11)), HeapError::InvalidConfig(_)));
    let mut c = HeapConfig::uniform(2, 10);
    c.distance = vec![vec![10]];
    assert!(matches!(bad(c), HeapError::InvalidConfig(_)));
}

#[test]
fn claim_sizes_that_overflow_are_refused() {
    let h = heap();
    h.claim_set(DomId(1), &[Claim { target: ClaimTarget::Node(0), frames: 10 }]).unwrap();
    let set =
        [Claim { target: ClaimTarget::Node(0), frames: 1 }, Claim { target: ClaimTarget::Global, frames: u64::MAX }];
    refused!(h, h.claim_set(DomId(1), &set), HeapError::Claim(ClaimError::ClaimExceedsFree { .. }));
    let twice =
        [Claim { target: ClaimTarget::Global, frames: u64::MAX }, Claim { target: ClaimTarget::Global, frames: 2 }];
    refused!(h, h.claim_set(DomId(1), &twice), HeapError::Claim(ClaimError::ClaimExceedsFree { .. }));
    assert_eq!(h.claims_of(DomId(1)), vec![Claim { target: ClaimTarget::Node(0), frames: 10 }]);
}

#[test]
fn free_pin_and_unpin_agree_on_a_chunk_still_being_scrubbed_for_its_owner() {
    // One answer for every caller (NodeState::held_by): the owner's frames are reserved
    // but not yet its own, so each operation is refused as busy, nothing changed.
    let h = Heap::new(HeapConfig::uniform(1, 4096).with_initially_dirty(true), NullMemory).unwrap();
    let AllocStart::Pending(ticket) = h.alloc_start(&AllocRequest::new(10, DomId(1))).unwrap() else {
        panic!("1024 dirty frames need a ticket");
    };
    let e = ticket.extent().unwrap();
    refused!(h, h.free(e.mfn, 10, DomId(1)), HeapError::Free(FreeError::Busy { .. }));
    refused!(h, h.pin(e.mfn, 10, DomId(1), &MetadataMigrator, &NeverPreempt), HeapError::Free(FreeError::Busy { .. }));
    refused!(h, h.unpin(e.mfn, 10, DomId(1)), HeapError::Free(FreeError::Busy { .. }));
    refused!(h, h.free(e.mfn, 10, DomId(2)), HeapError::Free(FreeError::NotAllocated { .. }));
    drop(ticket);
    h.check_invariants().unwrap();
}

/// One misuse of each concern: the refusal is that concern's error inside `HeapError`,
/// with the concern's own kind and message, and the heap is as it was.
#[test]
fn each_concern_refuses_with_its_own_error_and_changes_nothing() {
    let h = heap();
    let e = h.alloc(&AllocRequest::new(3, DomId(1))).unwrap();
    let r = refused!(h, h.free(Mfn(e.mfn.0 + 1), 3, DomId(1)), HeapError::Range(RangeError::Unaligned { .. }));
    let inner = RangeError::Unaligned { mfn: Mfn(e.mfn.0 + 1), order: 3, size: 8 };
    assert_eq!((r, inner.kind()), (inner.to_string(), "Unaligned"));
    let r = refused!(h, h.free(e.mfn, 3, DomId(2)), HeapError::Free(FreeError::WrongOwner { .. }));
    let inner = FreeError::WrongOwner { mfn: e.mfn, owner: DomId(2), actual: DomId(1) };
    assert_eq!((r, inner.kind()), (inner.to_string(), "WrongOwner"));
    let too_much = [Claim { target: ClaimTarget::Global, frames: 1 << 20 }];
    let r = h.claim_set(DomId(2), &too_much).unwrap_err();
    assert!(matches!(&r, HeapError::Claim(ClaimError::ClaimExceedsFree { requested: 1048576, .. })), "{r:?}");
    assert_eq!(r.kind(), "ClaimExceedsFree");
    refused!(h, h.claim_set(DomId(2), &too_much), HeapError::Claim(_));
    let r = refused!(h, h.online(e.mfn, 8, &NeverPreempt), HeapError::Offline(OfflineError::NotOffline { .. }));
    assert!(r.contains("is not offline"), "{r}");
    h.free(e.mfn, 3, DomId(1)).unwrap();
    h.check_invariants().unwrap();
}
