//! Sealed allocations, zone counts and the claims gate: the general capabilities a layer
//! above the heap builds on. Every refusal leaves the heap
//! exactly as it was, and the invariants hold after every operation.

#[macro_use]
mod common;

use common::{snapshot, two_nodes as heap};
use scrubheap::NeverPreempt;
use scrubheap::*;
use scrubheap::{ClaimError, FreeError, RangeError};

fn sealed_at<M: FrameMemory>(h: &Heap<M>, mfn: Mfn) -> bool {
    matches!(h.chunk_at(mfn).unwrap().state, ChunkState::Allocated { sealed: true, .. })
}

#[test]
fn free_and_pin_refuse_a_sealed_allocation_and_change_nothing() {
    let h = heap();
    let e = h.alloc(&AllocRequest::new(4, DomId(1)).sealed()).unwrap();
    assert!(sealed_at(&h, e.mfn));
    h.check_invariants().unwrap();
    let part = Mfn(e.mfn.0 + 4);
    refused!(h, h.free(e.mfn, 4, DomId(1)), HeapError::Free(FreeError::Sealed { owner: DomId(1), .. }));
    refused!(h, h.free(part, 2, DomId(1)), HeapError::Free(FreeError::Sealed { .. }));
    refused!(h, h.pin(e.mfn, 4, DomId(1), &MetadataMigrator, &NeverPreempt), HeapError::Free(FreeError::Sealed { .. }));
    refused!(h, h.pin_in_place(part, 0, DomId(1)), HeapError::Free(FreeError::Sealed { .. }));
    refused!(h, h.unpin(e.mfn, 4, DomId(1)), HeapError::Free(FreeError::Sealed { .. }));
    // Someone else's sealed frames: the owner is checked first.
    refused!(h, h.free_sealed(e.mfn, 4, DomId(2)), HeapError::Free(FreeError::WrongOwner { .. }));
    assert_eq!(h.stats().allocated, 16);
}

#[test]
fn free_sealed_refuses_ordinary_frames_and_mixed_ranges() {
    let h = heap();
    let plain = h.alloc(&AllocRequest::new(3, DomId(1)).exact(0)).unwrap();
    refused!(h, h.free_sealed(plain.mfn, 3, DomId(1)), HeapError::Free(FreeError::NotSealed { owner: DomId(1), .. }));
    // An order-3 sealed allocation next to an order-3 ordinary one: a range over both is
    // refused whole, whichever comes first.
    let sealed = h.alloc(&AllocRequest::new(3, DomId(1)).exact(0).sealed()).unwrap();
    assert_eq!(plain.mfn.0 ^ sealed.mfn.0, 8, "buddies: {plain:?} {sealed:?}");
    let both = Mfn(plain.mfn.0.min(sealed.mfn.0));
    refused!(h, h.free_sealed(both, 4, DomId(1)), HeapError::Free(FreeError::NotSealed { .. }));
    refused!(h, h.free(both, 4, DomId(1)), HeapError::Free(FreeError::Sealed { .. }));
    h.free(plain.mfn, 3, DomId(1)).unwrap();
    h.free_sealed(sealed.mfn, 3, DomId(1)).unwrap();
    h.check_invariants().unwrap();
    assert_eq!(h.stats().allocated, 0);
}

#[test]
fn free_sealed_gives_back_a_whole_allocation_or_any_aligned_part() {
    let h = heap();
    let e = h.alloc(&AllocRequest::new(5, DomId(1)).sealed()).unwrap();
    // An aligned part first: the rest stays sealed, split around it.
    h.free_sealed(Mfn(e.mfn.0 + 8), 3, DomId(1)).unwrap();
    h.check_invariants().unwrap();
    assert_eq!(h.stats().allocated, 24);
    assert!(sealed_at(&h, e.mfn) && sealed_at(&h, Mfn(e.mfn.0 + 16)));
    refused!(h, h.free(e.mfn, 3, DomId(1)), HeapError::Free(FreeError::Sealed { .. }));
    refused!(
        h,
        h.free_sealed(e.mfn, 5, DomId(1)),
        HeapError::Free(FreeError::OrderTooLarge { .. }) | HeapError::Free(FreeError::NotAllocated { .. })
    );
    h.free_sealed(e.mfn, 3, DomId(1)).unwrap();
    h.free_sealed(Mfn(e.mfn.0 + 16), 4, DomId(1)).unwrap();
    h.check_invariants().unwrap();
    assert_eq!((h.stats().allocated, h.stats().free_dirty), (0, 32));
    // The frames are ordinary free memory again: a plain allocation may take them.
    let again = h.alloc(&AllocRequest::new(5, DomId(2)).exact(e.node)).unwrap();
    h.free(again.mfn, 5, DomId(2)).unwrap();
    h.check_invariants().unwrap();
}

#[test]
fn a_sealed_request_cannot_be_movable() {
    let h = heap();
    refused!(h, h.alloc(&AllocRequest::new(0, DomId(1)).sealed().movable()), HeapError::SealedMovable);
}

#[test]
fn an_allocation_scrubbed_through_a_ticket_is_sealed_when_handed_over() {
    let h =
        Heap::new(HeapConfig::uniform(1, 4096).with_initially_dirty(true), TestMemory::new(Mfn(0), 4096, 64)).unwrap();
    let req = AllocRequest::new(10, DomId(1)).sealed();
    let mut t = match h.alloc_start(&req).unwrap() {
        AllocStart::Pending(t) => t,
        AllocStart::Ready(e) => panic!("1024 dirty frames came back at once: {e:?}"),
    };
    let e = loop {
        if let Some(e) = t.advance(&|| true).unwrap() {
            break e;
        }
        h.check_invariants().unwrap();
    };
    drop(t);
    assert!(sealed_at(&h, e.mfn));
    assert!(h.memory().is_zero(e.mfn, 1024));
    refused!(h, h.free(e.mfn, 10, DomId(1)), HeapError::Free(FreeError::Sealed { .. }));
    h.free_sealed(e.mfn, 10, DomId(1)).unwrap();
    h.check_invariants().unwrap();
}

#[test]
fn zone_stats_count_every_free_frame_once() {
    let h = Heap::new(HeapConfig::uniform(2, 1024).with_movable_from(300), NullMemory).unwrap();
    let a = h.alloc(&AllocRequest::new(4, DomId(1)).exact(0)).unwrap();
    let b = h.alloc(&AllocRequest::new(6, DomId(1)).exact(0).movable()).unwrap();
    h.alloc(&AllocRequest::new(0, DomId(1)).exact(1)).unwrap();
    h.free(a.mfn, 4, DomId(1)).unwrap();
    h.free(b.mfn, 6, DomId(1)).unwrap();
    for n in 0..2 {
        let (normal, movable) = (h.zone_stats(n, Zone::Normal).unwrap(), h.zone_stats(n, Zone::Movable).unwrap());
        let s = h.node_stats(n).unwrap();
        assert_eq!(normal.free() + movable.free(), s.free(), "node {n}");
        assert_eq!(normal.free_dirty + movable.free_dirty, s.free_dirty, "node {n}");
        assert_eq!(normal.scrubbing + movable.scrubbing, 0);
    }
    let normal0 = h.zone_stats(0, Zone::Normal).unwrap();
    assert_eq!((normal0.free(), normal0.free_dirty), (300, 16));
    assert_eq!(h.zone_stats(0, Zone::Movable).unwrap().free_dirty, 64);
    assert_eq!(h.zone_stats(1, Zone::Normal).unwrap().free(), 299);
    assert!(matches!(h.zone_stats(2, Zone::Normal), Err(HeapError::Range(RangeError::NoSuchNode { .. }))));
    // A node without a Movable zone has all its free frames in Normal.
    let plain = heap();
    assert_eq!(plain.zone_stats(1, Zone::Normal).unwrap().free(), 1024);
    assert_eq!(plain.zone_stats(1, Zone::Movable).unwrap(), ZoneStats::default());
}

#[test]
fn the_claims_gate_answers_as_the_allocation_path_does() {
    let h = heap();
    assert_eq!(h.claims_admit(DomId(1), 0, 1024), Ok(()), "no claims: only claims are asked about");
    h.claim_set(DomId(2), &[Claim { target: ClaimTarget::Node(0), frames: 1000 }]).unwrap();
    // Dom 2's own claim is its own; dom 1 may take only what the claim leaves on node 0.
    assert_eq!(h.claims_admit(DomId(2), 0, 1024), Ok(()));
    assert_eq!(h.claims_admit(DomId(1), 0, 24), Ok(()));
    let e = h.claims_admit(DomId(1), 0, 32).unwrap_err();
    assert!(matches!(e, HeapError::Claim(ClaimError::ClaimedByOthers { free: 1024, claimed: 1000, .. })), "{e:?}");
    assert!(e.to_string().contains("node 0"), "{e}");
    refused!(h, h.alloc(&AllocRequest::new(5, DomId(1)).exact(0)), HeapError::OutOfMemory { .. });
    h.alloc(&AllocRequest::new(4, DomId(1)).exact(0)).unwrap();
    // A global claim: the whole heap is the limit.
    h.claim_set(DomId(3), &[Claim { target: ClaimTarget::Global, frames: 1000 }]).unwrap();
    // 2032 frames free, 2000 claimed by others: 32 more for dom 1, not 33.
    assert_eq!(h.claims_admit(DomId(1), 1, 32), Ok(()));
    let e = h.claims_admit(DomId(1), 1, 33).unwrap_err();
    assert!(matches!(e, HeapError::Claim(ClaimError::ClaimedByOthers { free: 2032, claimed: 2000, .. })), "{e:?}");
    assert!(e.to_string().contains("the whole heap"), "{e}");
    refused!(h, h.alloc(&AllocRequest::new(6, DomId(1)).exact(1)), HeapError::OutOfMemory { .. });
    assert_eq!(h.claims_admit(DomId(1), 1, 16), Ok(()));
    h.alloc(&AllocRequest::new(4, DomId(1)).exact(1)).unwrap();
    assert!(matches!(h.claims_admit(DomId(1), 2, 1), Err(HeapError::Range(RangeError::NoSuchNode { .. }))));
    h.check_invariants().unwrap();
}
