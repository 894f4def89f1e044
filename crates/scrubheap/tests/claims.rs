//! Claims are never lost: a scrub ticket dropped unfinished gives back the claim it
//! retired, exactly as it was retired (node claim and global claim), unless the domain
//! installed or cancelled its claims meanwhile.

#[macro_use]
mod common;

use common::snapshot;
use scrubheap::*;
use scrubheap::{ClaimError, OfflineError};

/// One node of 4096 dirty frames: every allocation above one batch (256) gets a ticket.
fn dirty_heap() -> Heap<NullMemory> {
    Heap::new(HeapConfig::uniform(1, 4096).with_initially_dirty(true), NullMemory).unwrap()
}

fn ticket(h: &Heap<NullMemory>, order: u8, dom: u32) -> ScrubTicket<'_, NullMemory> {
    match h.alloc_start(&AllocRequest::new(order, DomId(dom))).unwrap() {
        AllocStart::Pending(t) => t,
        AllocStart::Ready(_) => panic!("dirty memory above one batch gives a ticket"),
    }
}

const NODE: ClaimTarget = ClaimTarget::Node(0);

#[test]
fn a_dropped_ticket_restores_the_node_claim_it_retired() {
    let h = dirty_heap();
    h.claim_set(DomId(1), &[Claim { target: NODE, frames: 2048 }]).unwrap();
    let before = snapshot(&h, &[1, 2]);
    let t = ticket(&h, 10, 1);
    assert_eq!(h.claims_of(DomId(1)), vec![Claim { target: NODE, frames: 1024 }]);
    h.check_invariants().unwrap();
    drop(t);
    h.check_invariants().unwrap();
    assert_eq!(h.claims_of(DomId(1)), vec![Claim { target: NODE, frames: 2048 }]);
    assert_eq!(h.stats().claimed, 2048);
    assert_eq!(snapshot(&h, &[1, 2]).claims, before.claims);
}

#[test]
fn a_dropped_ticket_restores_node_and_global_claims_as_they_were_retired() {
    let h = dirty_heap();
    let set = [Claim { target: ClaimTarget::Global, frames: 2000 }, Claim { target: NODE, frames: 100 }];
    h.claim_set(DomId(1), &set).unwrap();
    let t = ticket(&h, 10, 1);
    // Node claim first (100), then 924 of the global claim.
    assert_eq!(h.claims_of(DomId(1)), vec![Claim { target: ClaimTarget::Global, frames: 1076 }]);
    drop(t);
    h.check_invariants().unwrap();
    assert_eq!(h.claims_of(DomId(1)), set.to_vec());
}

#[test]
fn a_ticket_that_used_up_the_whole_claim_restores_it() {
    let h = dirty_heap();
    h.claim_set(DomId(1), &[Claim { target: NODE, frames: 1024 }]).unwrap();
    let t = ticket(&h, 10, 1);
    assert_eq!(h.claims_of(DomId(1)), vec![]);
    h.check_invariants().unwrap();
    drop(t);
    h.check_invariants().unwrap();
    assert_eq!(h.claims_of(DomId(1)), vec![Claim { target: NODE, frames: 1024 }]);
}

#[test]
fn a_preempted_allocation_keeps_the_claim() {
    let h = dirty_heap();
    h.claim_set(DomId(1), &[Claim { target: NODE, frames: 1024 }]).unwrap();
    // Yield after the first batch: the ticket is dropped.
    let got = h.alloc_preemptible(&AllocRequest::new(10, DomId(1)), &|| true).unwrap();
    assert_eq!(got, None);
    h.check_invariants().unwrap();
    assert_eq!(h.claims_of(DomId(1)), vec![Claim { target: NODE, frames: 1024 }]);
    assert_eq!(h.stats().allocated, 0);
}

#[test]
fn a_finished_ticket_keeps_its_claim_retired() {
    let h = dirty_heap();
    h.claim_set(DomId(1), &[Claim { target: NODE, frames: 2048 }]).unwrap();
    let mut t = ticket(&h, 10, 1);
    let e = loop {
        if let Some(e) = t.advance(&NeverPreempt).unwrap() {
            break e;
        }
    };
    drop(t);
    h.check_invariants().unwrap();
    assert_eq!(h.claims_of(DomId(1)), vec![Claim { target: NODE, frames: 1024 }]);
    h.free(e.mfn, e.order, DomId(1)).unwrap();
    assert_eq!(h.claims_of(DomId(1)), vec![Claim { target: NODE, frames: 1024 }]);
    h.check_invariants().unwrap();
}

#[test]
fn claims_replaced_while_a_ticket_runs_are_not_restored_into_the_new_set() {
    let h = dirty_heap();
    h.claim_set(DomId(1), &[Claim { target: NODE, frames: 2048 }]).unwrap();
    let t = ticket(&h, 10, 1);
    h.claim_set(DomId(1), &[Claim { target: NODE, frames: 10 }]).unwrap();
    h.check_invariants().unwrap();
    drop(t);
    h.check_invariants().unwrap();
    assert_eq!(h.claims_of(DomId(1)), vec![Claim { target: NODE, frames: 10 }]);

    let t = ticket(&h, 10, 1);
    h.claim_cancel(DomId(1));
    drop(t);
    h.check_invariants().unwrap();
    assert_eq!(h.claims_of(DomId(1)), vec![]);
    assert_eq!(h.stats().claimed, 0);
}

#[test]
fn a_ticket_of_a_domain_without_claims_restores_nothing() {
    let h = dirty_heap();
    h.claim_set(DomId(2), &[Claim { target: NODE, frames: 1000 }]).unwrap();
    let t = ticket(&h, 10, 1);
    drop(t);
    h.check_invariants().unwrap();
    assert_eq!(h.claims_of(DomId(1)), vec![]);
    assert_eq!(h.claims_of(DomId(2)), vec![Claim { target: NODE, frames: 1000 }]);
}

// One claims gate: offline, pins and marking a frame broken ask the heap's one rule, in
// which every claim counts (those frames are taken for nobody's claims).

/// One node of 1024 clean frames, the Movable zone from 512.
fn zoned_heap() -> Heap<NullMemory> {
    Heap::new(HeapConfig::uniform(1, 1024).with_movable_from(512), NullMemory).unwrap()
}

#[test]
fn a_pin_does_not_move_frames_into_others_claims() {
    let h = zoned_heap();
    let e = h.alloc(&AllocRequest::new(0, DomId(1)).movable()).unwrap();
    assert_eq!(h.chunk_at(e.mfn).unwrap().zone, Zone::Movable);
    h.claim_set(DomId(2), &[Claim { target: NODE, frames: 1023 }]).unwrap();
    refused!(h, h.pin(e.mfn, 0, DomId(1), &MetadataMigrator, &NeverPreempt), HeapError::OutOfMemory { .. });
    h.claim_set(DomId(2), &[Claim { target: ClaimTarget::Global, frames: 1023 }]).unwrap();
    refused!(h, h.pin(e.mfn, 0, DomId(1), &MetadataMigrator, &NeverPreempt), HeapError::OutOfMemory { .. });
    h.claim_set(DomId(2), &[Claim { target: NODE, frames: 1022 }]).unwrap();
    let to = h.pin(e.mfn, 0, DomId(1), &MetadataMigrator, &NeverPreempt).unwrap();
    assert_eq!(h.chunk_at(to.mfn).unwrap().zone, Zone::Normal);
    h.check_invariants().unwrap();
}

#[test]
fn a_pin_does_not_move_frames_into_the_owners_own_claims_either() {
    // A move does not retire claims: the destination is taken for nobody's claims.
    let h = zoned_heap();
    let e = h.alloc(&AllocRequest::new(0, DomId(1)).movable()).unwrap();
    h.claim_set(DomId(1), &[Claim { target: NODE, frames: 1023 }]).unwrap();
    refused!(h, h.pin(e.mfn, 0, DomId(1), &MetadataMigrator, &NeverPreempt), HeapError::OutOfMemory { .. });
    assert_eq!(h.claims_of(DomId(1)), vec![Claim { target: NODE, frames: 1023 }]);
}

#[test]
fn offline_is_blocked_by_a_global_claim_as_by_a_node_claim() {
    let h = zoned_heap();
    for target in [NODE, ClaimTarget::Global] {
        h.claim_set(DomId(1), &[Claim { target, frames: 600 }]).unwrap();
        refused!(
            h,
            h.offline(Mfn(512), 512, &NoMigration, &NoDeadline, &NeverPreempt),
            HeapError::Offline(OfflineError::OfflineBlocked { .. })
        );
        let Err(HeapError::Offline(OfflineError::OfflineBlocked { blockers, .. })) =
            h.offline(Mfn(512), 512, &NoMigration, &NoDeadline, &NeverPreempt)
        else {
            unreachable!()
        };
        assert_eq!(blockers[0].reason, BlockReason::Claimed);
    }
    h.claim_set(DomId(1), &[Claim { target: ClaimTarget::Global, frames: 512 }]).unwrap();
    h.offline(Mfn(512), 512, &NoMigration, &NoDeadline, &NeverPreempt).unwrap();
    h.check_invariants().unwrap();
}

#[test]
fn a_free_frame_is_not_marked_broken_while_a_node_claim_needs_it() {
    let h = zoned_heap();
    h.claim_set(DomId(1), &[Claim { target: NODE, frames: 1024 }]).unwrap();
    refused!(h, h.mark_broken(Mfn(3)), HeapError::Claim(ClaimError::NeededByClaims { claimed: 1024, free: 1024, .. }));
    h.claim_set(DomId(1), &[Claim { target: NODE, frames: 1023 }]).unwrap();
    assert_eq!(h.mark_broken(Mfn(3)).unwrap(), Broken::Now);
    h.check_invariants().unwrap();
}
