//! Zones, long-term pins, offline and online, broken frames (DESIGN section 3.5): every
//! path, rollback included; every test checks that each frame is accounted for.

mod common;

use common::snapshot;
use scrubheap::*;
use scrubheap::{ClaimError, FreeError, OfflineError, RangeError};
use std::cell::RefCell;

const NODE: u64 = 1024;
const MOVABLE_FROM: u64 = 512;

/// Two nodes of 1024 frames, the Movable zone from offset 512 of each, real bytes.
fn heap() -> Heap<TestMemory> {
    let cfg = HeapConfig::uniform(2, NODE).with_movable_from(MOVABLE_FROM);
    Heap::new(cfg, TestMemory::new(Mfn(0), 2 * NODE, 64)).unwrap()
}

fn check<M: FrameMemory>(h: &Heap<M>) {
    h.check_invariants().unwrap();
    assert_eq!(h.stats().total(), 2 * NODE, "every frame accounted for");
}

/// Runs `f`, expects an error matching `pat`, and checks nothing changed.
macro_rules! refused {
    ($h:expr, $f:expr, $pat:pat) => {{
        let before = snapshot(&$h, &[1, 2]);
        let r = $f;
        assert!(matches!(r, Err($pat)), "got {r:?}");
        assert!(!r.as_ref().unwrap_err().to_string().is_empty());
        assert_eq!(snapshot(&$h, &[1, 2]), before, "a refused operation changed the heap");
        check(&$h);
        r.unwrap_err()
    }};
}

/// A migrator that copies the bytes through the heap's memory and records every move, as
/// an owner's frame list would.
struct Recorder<'a> {
    mem: &'a TestMemory,
    moves: RefCell<Vec<(DomId, Extent, Extent)>>,
    refuse_after: Option<usize>,
}

impl<'a> Recorder<'a> {
    fn new(mem: &'a TestMemory) -> Self {
        Recorder { mem, moves: RefCell::new(Vec::new()), refuse_after: None }
    }
}

impl Migrator for Recorder<'_> {
    fn copy(&self, _owner: DomId, from: Extent, to: Extent, offset: u64, frames: u64) -> bool {
        if self.refuse_after.is_some_and(|n| self.moves.borrow().len() >= n) {
            return false;
        }
        assert_eq!(from.order, to.order);
        assert!(offset + frames <= from.frames(), "a piece lies inside the move");
        self.mem.copy(Mfn(from.mfn.0 + offset), Mfn(to.mfn.0 + offset), frames);
        true
    }
    fn switch(&self, owner: DomId, from: Extent, to: Extent) -> bool {
        self.moves.borrow_mut().push((owner, from, to));
        true
    }
}

fn zone(h: &Heap<TestMemory>, e: Extent) -> Zone {
    h.chunk_at(e.mfn).unwrap().zone
}

fn pins(h: &Heap<TestMemory>, m: Mfn) -> u32 {
    match h.chunk_at(m).unwrap().state {
        ChunkState::Allocated { pins, .. } => pins,
        s => panic!("{m} is {s:?}"),
    }
}

#[test]
fn unmovable_memory_comes_only_from_normal_and_movable_prefers_movable() {
    let h = heap();
    let m = h.alloc(&AllocRequest::new(4, DomId(1)).movable()).unwrap();
    assert_eq!(zone(&h, m), Zone::Movable);
    let mut unmovable = Vec::new();
    loop {
        match h.alloc(&AllocRequest::new(6, DomId(1))) {
            Ok(e) => {
                assert_eq!(zone(&h, e), Zone::Normal);
                unmovable.push(e);
            }
            Err(HeapError::OutOfMemory { .. }) => break,
            Err(e) => panic!("{e}"),
        }
        check(&h);
    }
    assert_eq!(unmovable.len() as u64, 2 * MOVABLE_FROM / 64, "all Normal memory and nothing more");
    // Movable memory is still free, but an unmovable request may not have it.
    assert!(h.stats().free_clean >= 2 * (NODE - MOVABLE_FROM) - 16);
    refused!(h, h.alloc(&AllocRequest::new(0, DomId(1))), HeapError::OutOfMemory { .. });
    // Movable requests fall back to Normal memory when the Movable zone is full.
    for e in unmovable.drain(..4) {
        h.free(e.mfn, e.order, DomId(1)).unwrap();
    }
    let mut movable_zone = 0;
    while let Ok(e) = h.alloc(&AllocRequest::new(4, DomId(2)).movable()) {
        if zone(&h, e) == Zone::Movable {
            movable_zone += 1;
        } else {
            assert_eq!(movable_zone, 2 * (NODE - MOVABLE_FROM) / 16 - 1, "Movable first, then Normal");
        }
    }
    check(&h);
}

#[test]
fn pin_in_normal_memory_stays_and_blocks_free_until_unpinned() {
    let h = heap();
    let e = h.alloc(&AllocRequest::new(4, DomId(1))).unwrap();
    let part = Mfn(e.mfn.0 + 4);
    let at = h.pin(part, 2, DomId(1), &NoMigration, &NeverPreempt).unwrap();
    assert_eq!(at, Extent { mfn: part, order: 2, node: e.node });
    assert_eq!(pins(&h, part), 1);
    assert_eq!(pins(&h, e.mfn), 0, "only the pinned part is pinned");
    // Pin a part of the pinned part again, and the whole allocation once.
    h.pin(Mfn(part.0 + 1), 0, DomId(1), &NoMigration, &NeverPreempt).unwrap();
    h.pin(e.mfn, 4, DomId(1), &NoMigration, &NeverPreempt).unwrap();
    assert_eq!(pins(&h, Mfn(part.0 + 1)), 3);
    assert_eq!(pins(&h, part), 2);
    assert_eq!(pins(&h, e.mfn), 1);
    let err = refused!(h, h.free(e.mfn, 4, DomId(1)), HeapError::Free(FreeError::Pinned { .. }));
    assert!(err.to_string().contains("unpin it first"));
    refused!(h, h.free(part, 0, DomId(1)), HeapError::Free(FreeError::Pinned { .. }));
    h.unpin(e.mfn, 4, DomId(1)).unwrap();
    // The unpinned rest may be freed; the still-pinned part may not.
    h.free(e.mfn, 2, DomId(1)).unwrap();
    refused!(h, h.free(part, 2, DomId(1)), HeapError::Free(FreeError::Pinned { .. }));
    refused!(h, h.unpin(e.mfn, 4, DomId(1)), HeapError::Free(FreeError::NotAllocated { .. }));
    refused!(h, h.unpin(Mfn(e.mfn.0 + 8), 3, DomId(1)), HeapError::Free(FreeError::NotPinned { .. }));
    h.unpin(part, 2, DomId(1)).unwrap();
    refused!(h, h.free(Mfn(part.0 + 1), 0, DomId(1)), HeapError::Free(FreeError::Pinned { .. }));
    h.unpin(Mfn(part.0 + 1), 0, DomId(1)).unwrap();
    refused!(h, h.unpin(part, 2, DomId(1)), HeapError::Free(FreeError::NotPinned { .. }));
    h.free(part, 2, DomId(1)).unwrap();
    h.free(Mfn(e.mfn.0 + 8), 3, DomId(1)).unwrap();
    assert_eq!(h.stats().allocated, 0);
    check(&h);
}

#[test]
fn pin_in_movable_memory_migrates_to_normal_first() {
    let h = heap();
    let mem = h.memory();
    let e = h.alloc(&AllocRequest::new(3, DomId(1)).movable()).unwrap();
    assert_eq!(zone(&h, e), Zone::Movable);
    mem.write(DomId(1), e.mfn, e.frames());
    let rec = Recorder::new(mem);
    let part = Mfn(e.mfn.0 + 2);
    let before = h.stats();
    let to = h.pin(part, 1, DomId(1), &rec, &NeverPreempt).unwrap();
    assert_eq!(to.order, 1);
    assert_eq!(zone(&h, to), Zone::Normal);
    assert_eq!(*rec.moves.borrow(), vec![(DomId(1), Extent { mfn: part, order: 1, node: e.node }, to)]);
    assert_eq!(pins(&h, to.mfn), 1);
    assert_eq!(mem.foreign_frame(DomId(1), to.mfn, 2), None, "the owner's bytes moved");
    assert!(!mem.is_zero(to.mfn, 2));
    // The frames it left are free and dirty; the rest of the allocation stays.
    assert_eq!(h.chunk_at(part).unwrap().state, ChunkState::Free { dirty_frames: 2 });
    assert_eq!(pins(&h, e.mfn), 0);
    let after = h.stats();
    assert_eq!(after.allocated, before.allocated);
    assert_eq!(after.free_dirty, before.free_dirty + 2);
    // The moved part is movable still, pinned, and not freeable until unpinned.
    assert!(matches!(h.chunk_at(to.mfn).unwrap().state, ChunkState::Allocated { movable: true, pins: 1, .. }));
    refused!(h, h.free(to.mfn, 1, DomId(1)), HeapError::Free(FreeError::Pinned { .. }));
    // The old place is no longer the owner's.
    refused!(h, h.pin(part, 1, DomId(1), &rec, &NeverPreempt), HeapError::Free(FreeError::NotAllocated { .. }));
    h.unpin(to.mfn, 1, DomId(1)).unwrap();
    h.free(to.mfn, 1, DomId(1)).unwrap();
    h.free(e.mfn, 1, DomId(1)).unwrap();
    h.free(Mfn(e.mfn.0 + 4), 2, DomId(1)).unwrap();
    assert_eq!(h.stats().allocated, 0);
    check(&h);
    // Scrubbed before reuse: nobody gets dom1's bytes.
    while h.scrub_step(0, u64::MAX, &NeverPreempt).unwrap() + h.scrub_step(1, u64::MAX, &NeverPreempt).unwrap() > 0 {}
    assert_eq!(h.stats().free_dirty, 0);
    check(&h);
}

#[test]
fn a_pin_is_refused_and_nothing_changes_when_it_cannot_migrate() {
    let h = heap();
    let e = h.alloc(&AllocRequest::new(5, DomId(1)).movable()).unwrap();
    let err = refused!(h, h.pin(e.mfn, 5, DomId(1), &NoMigration, &NeverPreempt), HeapError::MigrationRefused { .. });
    assert!(err.to_string().contains("nothing was pinned"));
    // Fill Normal memory (dirty parts included), then a pin has nowhere to go.
    let mut fill = Vec::new();
    while let Ok(x) = h.alloc(&AllocRequest::new(3, DomId(2))) {
        fill.push(x);
    }
    for x in fill.iter().filter(|x| (x.mfn.0 / 8) % 2 == 0) {
        h.free(x.mfn, 3, DomId(2)).unwrap();
    }
    refused!(h, h.pin(e.mfn, 5, DomId(1), &MetadataMigrator, &NeverPreempt), HeapError::OutOfMemory { .. });
    // The migrator sees a consistent heap while it runs, and a refusal after it has
    // seen the destination gives the destination back exactly (dirty frames included).
    let seen = RefCell::new(None);
    let refuse = |_: DomId, _: Extent, to: Extent| {
        h.check_invariants().unwrap();
        *seen.borrow_mut() = Some(to);
        false
    };
    refused!(h, h.pin(e.mfn, 3, DomId(1), &refuse, &NeverPreempt), HeapError::MigrationRefused { .. });
    let to = seen.borrow().unwrap();
    assert!(matches!(h.chunk_at(to.mfn).unwrap().state, ChunkState::Free { dirty_frames: 8 }));
    check(&h);
}

#[test]
fn pin_and_unpin_misuse_is_refused() {
    let h = heap();
    let e = h.alloc(&AllocRequest::new(3, DomId(1))).unwrap();
    refused!(
        h,
        h.pin(e.mfn, 3, DomId(2), &MetadataMigrator, &NeverPreempt),
        HeapError::Free(FreeError::WrongOwner { .. })
    );
    refused!(
        h,
        h.pin(e.mfn, 4, DomId(1), &MetadataMigrator, &NeverPreempt),
        HeapError::Free(FreeError::OrderTooLarge { .. }) | HeapError::Range(RangeError::Unaligned { .. })
    );
    refused!(
        h,
        h.pin(Mfn(e.mfn.0 + 1), 1, DomId(1), &MetadataMigrator, &NeverPreempt),
        HeapError::Range(RangeError::Unaligned { .. })
    );
    refused!(
        h,
        h.pin(Mfn(2 * NODE), 0, DomId(1), &MetadataMigrator, &NeverPreempt),
        HeapError::Range(RangeError::OutOfRange { .. })
    );
    refused!(
        h,
        h.pin(e.mfn, 19, DomId(1), &MetadataMigrator, &NeverPreempt),
        HeapError::Range(RangeError::InvalidOrder { .. })
    );
    refused!(h, h.unpin(e.mfn, 3, DomId(1)), HeapError::Free(FreeError::NotPinned { .. }));
    refused!(h, h.unpin(e.mfn, 3, DomId(2)), HeapError::Free(FreeError::WrongOwner { .. }));
    let free = Mfn(e.mfn.0 + 64);
    refused!(
        h,
        h.pin(free, 0, DomId(1), &MetadataMigrator, &NeverPreempt),
        HeapError::Free(FreeError::NotAllocated { .. })
    );
    refused!(h, h.pin_in_place(free, 0, DomId(1)), HeapError::Free(FreeError::NotAllocated { .. }));
    check(&h);
}

fn movable_range(node: u64) -> (Mfn, u64) {
    (Mfn(node * NODE + MOVABLE_FROM), NODE - MOVABLE_FROM)
}

/// Every frame of `[first, first+count)` is offline (or broken).
fn all_offline(h: &Heap<TestMemory>, first: Mfn, count: u64) -> bool {
    (first.0..first.0 + count)
        .all(|m| matches!(h.chunk_at(Mfn(m)).unwrap().state, ChunkState::Offline | ChunkState::Broken))
}

#[test]
fn offline_of_free_memory_completes_and_online_returns_it_dirty() {
    let h = heap();
    let (first, count) = movable_range(1);
    let done = h.offline(first, count, &NoMigration, &NoDeadline, &NeverPreempt).unwrap();
    assert_eq!(done.frames, count);
    assert_eq!(done.migrated_chunks, 0);
    assert_eq!(h.stats().offline, count);
    assert!(all_offline(&h, first, count));
    check(&h);
    // Offline frames are never allocated.
    let mut got = Vec::new();
    while let Ok(e) = h.alloc(&AllocRequest::new(0, DomId(1)).movable()) {
        assert!(e.mfn.0 < first.0 || e.mfn.0 >= first.0 + count, "offline frame {} allocated", e.mfn);
        got.push(e);
    }
    assert_eq!(got.len() as u64, 2 * NODE - count);
    for e in got {
        h.free(e.mfn, 0, DomId(1)).unwrap();
    }
    // Online only frames that are offline.
    refused!(h, h.online(Mfn(first.0 - 1), 2, &NeverPreempt), HeapError::Offline(OfflineError::NotOffline { .. }));
    refused!(h, h.online(first, 0, &NeverPreempt), HeapError::Range(RangeError::BadRange { .. }));
    refused!(
        h,
        h.online(Mfn(first.0 + count - 1), 2, &NeverPreempt),
        HeapError::Range(RangeError::BadRange { .. }) | HeapError::Offline(OfflineError::NotOffline { .. })
    );
    // Online part of it, then the rest (offline chunks split at the edges).
    assert_eq!(h.online(Mfn(first.0 + 3), 5, &NeverPreempt).unwrap(), 5);
    assert_eq!(h.stats().offline, count - 5);
    check(&h);
    refused!(h, h.online(first, count, &NeverPreempt), HeapError::Offline(OfflineError::NotOffline { .. }));
    assert_eq!(h.online(first, 3, &NeverPreempt).unwrap(), 3);
    assert_eq!(h.online(Mfn(first.0 + 8), count - 8, &NeverPreempt).unwrap(), count - 8);
    let s = h.stats();
    assert_eq!(s.offline, 0);
    assert_eq!(s.free_dirty, 2 * NODE, "onlined frames come back dirty");
    check(&h);
}

#[test]
fn offline_migrates_movable_allocations_out_and_keeps_their_bytes() {
    let h = heap();
    let mem = h.memory();
    let (first, count) = movable_range(0);
    let mut held = Vec::new();
    while let Ok(e) = h.alloc(&AllocRequest::new(4, DomId(1)).movable().exact(0)) {
        if zone(&h, e) == Zone::Normal {
            h.free(e.mfn, 4, DomId(1)).unwrap();
            break;
        }
        mem.write(DomId(1), e.mfn, 16);
        held.push(e);
    }
    // Free every other one, dirty, and pin (in Normal memory) an unmovable allocation
    // outside the range: it does not matter.
    for e in held.iter().skip(1).step_by(2) {
        h.free(e.mfn, 4, DomId(1)).unwrap();
    }
    let u = h.alloc(&AllocRequest::new(0, DomId(2)).exact(0)).unwrap();
    h.pin(u.mfn, 0, DomId(2), &NoMigration, &NeverPreempt).unwrap();
    let rec = Recorder::new(mem);
    let done = h.offline(first, count, &rec, &NoDeadline, &NeverPreempt).unwrap();
    let moved = rec.moves.borrow().clone();
    assert_eq!(moved.len(), held.len().div_ceil(2));
    assert_eq!(done.migrated_chunks, moved.len() as u64);
    assert_eq!(done.migrated_frames, 16 * moved.len() as u64);
    assert_eq!(done.frames, count);
    for (owner, from, to) in &moved {
        assert_eq!(*owner, DomId(1));
        assert!(from.mfn.0 >= first.0 && from.mfn.0 < first.0 + count);
        assert!(to.mfn.0 < first.0 || to.mfn.0 >= first.0 + count, "moved into the range");
        assert_eq!(mem.foreign_frame(DomId(1), to.mfn, 16), None);
        assert!(matches!(
            h.chunk_at(to.mfn).unwrap().state,
            ChunkState::Allocated { owner: DomId(1), movable: true, pins: 0, sealed: false }
        ));
    }
    assert!(all_offline(&h, first, count));
    assert_eq!(h.stats().allocated, 16 * moved.len() as u64 + 1);
    check(&h);
}

#[test]
fn offline_over_unmovable_or_pinned_memory_is_refused_and_names_the_blockers() {
    let h = heap();
    let u = h.alloc(&AllocRequest::new(2, DomId(2)).exact(0)).unwrap();
    let err = refused!(
        h,
        h.offline(Mfn(0), MOVABLE_FROM, &MetadataMigrator, &NoDeadline, &NeverPreempt),
        HeapError::Offline(OfflineError::OfflineBlocked { .. })
    );
    let HeapError::Offline(OfflineError::OfflineBlocked { stop, blockers, .. }) = &err else { unreachable!() };
    assert_eq!(*stop, OfflineStop::Blocked);
    assert_eq!(
        blockers[..],
        [Blocker { first: u.mfn, frames: 4, owner: Some(DomId(2)), reason: BlockReason::Unmovable }]
    );
    assert!(err.to_string().contains("dom2"), "{err}");
    // A pin taken in place (the baseline) in the Movable zone blocks the offline of it.
    let m = h.alloc(&AllocRequest::new(3, DomId(1)).movable().exact(1)).unwrap();
    h.pin_in_place(Mfn(m.mfn.0 + 4), 2, DomId(1)).unwrap();
    let (first, count) = movable_range(1);
    let err = refused!(
        h,
        h.offline(first, count, &MetadataMigrator, &NoDeadline, &NeverPreempt),
        HeapError::Offline(OfflineError::OfflineBlocked { .. })
    );
    let HeapError::Offline(OfflineError::OfflineBlocked { blockers, .. }) = &err else { unreachable!() };
    assert_eq!(blockers.len(), 1);
    assert_eq!(blockers[0].reason, BlockReason::Pinned);
    assert_eq!(blockers[0].first, Mfn(m.mfn.0 + 4));
    // With the pin migrated first (scrubheap's pin), the offline completes.
    h.unpin(Mfn(m.mfn.0 + 4), 2, DomId(1)).unwrap();
    let to = h.pin(Mfn(m.mfn.0 + 4), 2, DomId(1), &MetadataMigrator, &NeverPreempt).unwrap();
    assert_eq!(zone(&h, to), Zone::Normal);
    h.offline(first, count, &MetadataMigrator, &NoDeadline, &NeverPreempt).unwrap();
    assert!(all_offline(&h, first, count));
    check(&h);
    // Bad ranges.
    refused!(
        h,
        h.offline(Mfn(NODE - 1), 2, &NoMigration, &NoDeadline, &NeverPreempt),
        HeapError::Range(RangeError::BadRange { .. })
    );
    refused!(
        h,
        h.offline(Mfn(0), 0, &NoMigration, &NoDeadline, &NeverPreempt),
        HeapError::Range(RangeError::BadRange { .. })
    );
    refused!(
        h,
        h.offline(Mfn(2 * NODE), 1, &NoMigration, &NoDeadline, &NeverPreempt),
        HeapError::Range(RangeError::OutOfRange { .. })
    );
    refused!(
        h,
        h.offline(Mfn(5), u64::MAX, &NoMigration, &NoDeadline, &NeverPreempt),
        HeapError::Range(RangeError::BadRange { .. })
    );
}

#[test]
fn an_offline_rolls_back_at_its_deadline_leaving_the_heap_as_it_was() {
    let h = heap();
    // Fragment the range: free chunks clean and dirty, straddling both ends.
    let mut xs = Vec::new();
    while let Ok(e) = h.alloc(&AllocRequest::new(0, DomId(1)).movable().exact(0)) {
        xs.push(e);
    }
    for e in &xs {
        if e.mfn.0 % 3 != 0 {
            h.free(e.mfn, 0, DomId(1)).unwrap();
        }
    }
    h.scrub_step(0, 100, &NeverPreempt).unwrap();
    let before = snapshot(&h, &[1, 2]);
    for steps in [0, 1, 2, 5, 6] {
        let r = h.offline(Mfn(100), 700, &MetadataMigrator, &StepBudget::new(steps), &NeverPreempt);
        assert!(
            matches!(r, Err(HeapError::Offline(OfflineError::OfflineBlocked { stop: OfflineStop::Deadline, .. }))),
            "{r:?}"
        );
        assert_eq!(snapshot(&h, &[1, 2]), before, "rollback after {steps} steps");
        check(&h);
    }
    // With allocations to move: the deadline passes after some moved; every frame the
    // offline took comes back, the moved allocations stay moved, and the ones not reached
    // are reported with their owners.
    let mut held = Vec::new();
    let allocated = h.stats().allocated;
    for _ in 0..20 {
        held.push(h.alloc(&AllocRequest::new(4, DomId(1)).movable().exact(1)).unwrap());
    }
    let (first, count) = movable_range(1);
    let rec = Recorder::new(h.memory());
    let free_before = h.stats().free_clean + h.stats().free_dirty;
    let r = h.offline(first, count, &rec, &StepBudget::new(10), &NeverPreempt);
    let Err(HeapError::Offline(OfflineError::OfflineBlocked { stop: OfflineStop::Deadline, blockers, .. })) = r else {
        panic!("{r:?}")
    };
    let moved = rec.moves.borrow().len();
    assert!(moved > 0 && moved < 20, "{moved} moved");
    assert!(!blockers.is_empty() && blockers.len() <= MAX_BLOCKERS);
    assert!(blockers.iter().all(|b| b.reason == BlockReason::NotReached && b.owner == Some(DomId(1))));
    let s = h.stats();
    assert_eq!(s.offline, 0);
    assert_eq!(s.allocated, allocated + 16 * 20);
    assert_eq!(s.free_clean + s.free_dirty, free_before);
    check(&h);
}

#[test]
fn an_offline_rolls_back_when_a_move_is_refused() {
    let h = heap();
    let (first, count) = movable_range(0);
    let a = h.alloc(&AllocRequest::new(5, DomId(1)).movable().exact(0)).unwrap();
    let b = h.alloc(&AllocRequest::new(5, DomId(2)).movable().exact(0)).unwrap();
    let mut rec = Recorder::new(h.memory());
    rec.refuse_after = Some(1);
    let r = h.offline(first, count, &rec, &NoDeadline, &NeverPreempt);
    let Err(HeapError::Offline(OfflineError::OfflineBlocked { stop: OfflineStop::Blocked, blockers, .. })) = r else {
        panic!("{r:?}")
    };
    assert_eq!(blockers.len(), 1);
    assert_eq!(blockers[0].reason, BlockReason::MigrationRefused);
    assert_eq!(blockers[0].frames, 32);
    let (moved_owner, from, to) = rec.moves.borrow()[0];
    let stayed = if from == a { b } else { a };
    assert_eq!(blockers[0].first, stayed.mfn);
    assert!(matches!(h.chunk_at(to.mfn).unwrap().state, ChunkState::Allocated { owner, .. } if owner == moved_owner));
    assert!(matches!(h.chunk_at(stayed.mfn).unwrap().state, ChunkState::Allocated { pins: 0, .. }));
    assert_eq!(h.chunk_at(from.mfn).unwrap().state, ChunkState::Free { dirty_frames: 32 });
    assert_eq!(h.stats().offline, 0);
    assert_eq!(h.stats().allocated, 64);
    check(&h);
    // No memory left to move into: fill everything else, then the offline rolls back.
    let mut fill = Vec::new();
    while let Ok(e) = h.alloc(&AllocRequest::new(0, DomId(3)).movable()) {
        if e.mfn.0 >= first.0 && e.mfn.0 < first.0 + count {
            continue;
        }
        fill.push(e);
    }
    for e in fill.iter().take(8) {
        h.free(e.mfn, 0, DomId(3)).unwrap();
    }
    let r = h.offline(first, count, &MetadataMigrator, &NoDeadline, &NeverPreempt);
    assert!(matches!(r, Err(HeapError::Offline(OfflineError::OfflineBlocked { .. }))), "{r:?}");
    assert_eq!(h.stats().offline, 0);
    check(&h);
}

#[test]
fn offline_respects_claims() {
    let h = heap();
    let (first, count) = movable_range(1);
    h.claim_set(DomId(1), &[Claim { target: ClaimTarget::Node(1), frames: NODE - 100 }]).unwrap();
    let err = refused!(
        h,
        h.offline(first, count, &NoMigration, &NoDeadline, &NeverPreempt),
        HeapError::Offline(OfflineError::OfflineBlocked { .. })
    );
    let HeapError::Offline(OfflineError::OfflineBlocked { blockers, .. }) = err else { unreachable!() };
    assert_eq!(blockers[0].reason, BlockReason::Claimed);
    h.claim_cancel(DomId(1));
    h.offline(first, count, &NoMigration, &NoDeadline, &NeverPreempt).unwrap();
    check(&h);
}

#[test]
fn broken_frames_leave_service_now_if_free_and_when_freed_if_allocated() {
    let h = heap();
    // Free: out of service now; the chunk around it stays free.
    assert_eq!(h.mark_broken(Mfn(77)).unwrap(), Broken::Now);
    assert_eq!(h.mark_broken(Mfn(77)).unwrap(), Broken::Already);
    assert_eq!(h.chunk_at(Mfn(77)).unwrap().state, ChunkState::Broken);
    assert_eq!(h.stats().offline, 1);
    check(&h);
    // Allocated: when freed.
    let e = h.alloc(&AllocRequest::new(3, DomId(1)).exact(1)).unwrap();
    let bad = Mfn(e.mfn.0 + 5);
    assert_eq!(h.mark_broken(bad).unwrap(), Broken::WhenFreed);
    assert_eq!(h.mark_broken(bad).unwrap(), Broken::Already);
    assert_eq!(h.stats().offline, 1);
    check(&h);
    h.free(e.mfn, 3, DomId(1)).unwrap();
    assert_eq!(h.chunk_at(bad).unwrap().state, ChunkState::Broken);
    assert_eq!(h.stats().offline, 2);
    assert_eq!(h.stats().allocated, 0);
    check(&h);
    // A broken frame is never allocated again.
    let mut n = 0;
    while let Ok(x) = h.alloc(&AllocRequest::new(0, DomId(1)).movable()) {
        assert!(x.mfn != bad && x.mfn != Mfn(77));
        n += 1;
    }
    assert_eq!(n, 2 * NODE - 2);
    check(&h);
}

#[test]
fn broken_frames_and_offline_ranges() {
    let h = heap();
    let (first, count) = movable_range(0);
    // Broken inside an offline range: the offline completes; online leaves it broken.
    assert_eq!(h.mark_broken(Mfn(first.0 + 10)).unwrap(), Broken::Now);
    h.offline(first, count, &NoMigration, &NoDeadline, &NeverPreempt).unwrap();
    assert_eq!(h.stats().offline, count);
    assert_eq!(h.mark_broken(Mfn(first.0 + 20)).unwrap(), Broken::Now, "an offline frame may break too");
    assert_eq!(h.online(first, count, &NeverPreempt).unwrap(), count - 2);
    assert_eq!(h.stats().offline, 2);
    check(&h);
    // A pending-broken frame moved out by an offline or a pin leaves service.
    let e = h.alloc(&AllocRequest::new(2, DomId(1)).movable().exact(1)).unwrap();
    assert_eq!(zone(&h, e), Zone::Movable);
    h.mark_broken(Mfn(e.mfn.0 + 1)).unwrap();
    let to = h.pin(e.mfn, 2, DomId(1), &MetadataMigrator, &NeverPreempt).unwrap();
    assert_eq!(h.chunk_at(Mfn(e.mfn.0 + 1)).unwrap().state, ChunkState::Broken);
    assert_eq!(h.stats().offline, 3);
    h.unpin(to.mfn, 2, DomId(1)).unwrap();
    let f = h.alloc(&AllocRequest::new(1, DomId(1)).movable().exact(1)).unwrap();
    h.mark_broken(f.mfn).unwrap();
    let (first1, count1) = movable_range(1);
    let done = h.offline(first1, count1, &MetadataMigrator, &NoDeadline, &NeverPreempt).unwrap();
    assert_eq!(done.migrated_frames, 2, "both frames of f moved (the broken one in its own chunk)");
    assert_eq!(h.chunk_at(f.mfn).unwrap().state, ChunkState::Broken);
    assert_eq!(h.stats().offline, 2 + count1);
    refused!(h, h.mark_broken(Mfn(2 * NODE)), HeapError::Range(RangeError::OutOfRange { .. }));
    // Claims that need every free frame keep a free frame from being marked.
    h.free(to.mfn, 2, DomId(1)).unwrap();
    let free = h.stats().free_clean + h.stats().free_dirty;
    h.claim_set(DomId(2), &[Claim { target: ClaimTarget::Global, frames: free }]).unwrap();
    let free_frame =
        (0..NODE).map(Mfn).find(|&m| matches!(h.chunk_at(m).unwrap().state, ChunkState::Free { .. })).unwrap();
    refused!(h, h.mark_broken(free_frame), HeapError::Claim(ClaimError::NeededByClaims { .. }));
    check(&h);
}

#[test]
fn a_ticket_in_the_range_is_waited_for_until_the_deadline_then_reported() {
    let cfg = HeapConfig::uniform(1, NODE).with_movable_from(MOVABLE_FROM).with_initially_dirty(true);
    let h = Heap::new(cfg, NullMemory).unwrap();
    let start = h.alloc_start(&AllocRequest::new(9, DomId(1)).movable()).unwrap();
    let AllocStart::Pending(ticket) = start else { panic!("a dirty 2 MiB needs a ticket") };
    let ext = ticket.extent().unwrap();
    assert_eq!(ext.mfn, Mfn(MOVABLE_FROM));
    assert!(matches!(h.mark_broken(ext.mfn), Err(HeapError::Free(FreeError::Busy { .. }))));
    let r = h.offline(ext.mfn, 512, &MetadataMigrator, &StepBudget::new(1000), &NeverPreempt);
    let Err(HeapError::Offline(OfflineError::OfflineBlocked { stop: OfflineStop::Deadline, blockers, .. })) = r else {
        panic!("{r:?}")
    };
    assert_eq!(blockers[0].reason, BlockReason::Busy);
    assert_eq!(blockers[0].owner, Some(DomId(1)));
    assert_eq!(h.stats().offline, 0);
    h.check_invariants().unwrap();
    drop(ticket);
    h.offline(ext.mfn, 512, &MetadataMigrator, &NoDeadline, &NeverPreempt).unwrap();
    h.check_invariants().unwrap();
}

#[test]
fn offline_asks_a_background_scrubber_to_hand_its_chunk_back() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    /// Memory whose zeroing waits until told to go, so a scrub is in progress for sure.
    struct Gate(AtomicBool, AtomicBool);
    impl FrameMemory for &Gate {
        fn zero(&self, _: Mfn, _: u64) {
            self.0.store(true, Ordering::SeqCst);
            while !self.1.load(Ordering::SeqCst) {
                std::hint::spin_loop();
            }
        }
        fn is_zero(&self, _: Mfn, _: u64) -> bool {
            true
        }
        fn copy(&self, _: Mfn, _: Mfn, _: u64) {}
    }
    let gate: &'static Gate = Box::leak(Box::new(Gate(AtomicBool::new(false), AtomicBool::new(false))));
    let cfg = HeapConfig::uniform(1, NODE).with_movable_from(MOVABLE_FROM).with_initially_dirty(true);
    let h = Arc::new(Heap::new(cfg, gate).unwrap());
    let s = Arc::clone(&h);
    let scrubber = std::thread::spawn(move || s.scrub_step(0, u64::MAX, &NeverPreempt).unwrap());
    while !gate.0.load(Ordering::SeqCst) {
        std::hint::spin_loop();
    }
    let o = Arc::clone(&h);
    // The scrubber finishes its batch only once the offline has asked for the chunk: its
    // first step (every chunk of the range) asks; the gate opens at its second look at
    // the deadline.
    let looks = std::sync::atomic::AtomicU64::new(0);
    let deadline = move || {
        if looks.fetch_add(1, Ordering::SeqCst) >= 1 {
            gate.1.store(true, Ordering::SeqCst);
        }
        false
    };
    let offline = std::thread::spawn(move || o.offline(Mfn(0), NODE, &NoMigration, &deadline, &NeverPreempt));
    let done = offline.join().unwrap().unwrap();
    scrubber.join().unwrap();
    assert!(done.aborted_scrubs >= 1, "{done:?}");
    assert_eq!(h.stats().offline, NODE);
    h.check_invariants().unwrap();
}
