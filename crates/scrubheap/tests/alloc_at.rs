//! `Heap::alloc_at`: exactly the range asked for, if every frame of it is free (clean or
//! dirty, dirty frames scrubbed before handover); refused with the first frame that is
//! not free, and nothing changed, otherwise.

#[macro_use]
mod common;

use common::snapshot;
use scrubheap::*;
use scrubheap::{ClaimError, RangeError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;

const FRAMES: u64 = 4096;

/// One node of 4096 frames of real bytes, the Movable zone from 2048.
fn heap() -> Heap<TestMemory> {
    let cfg = HeapConfig::uniform(1, FRAMES).with_movable_from(2048);
    Heap::new(cfg, TestMemory::new(Mfn(0), FRAMES, 8)).unwrap()
}

/// Leaves `[mfn, 2^order)` free and dirty with domain 9's bytes.
fn dirty(h: &Heap<TestMemory>, mfn: Mfn, order: u8) {
    let e = h.alloc_at(mfn, order, DomId(9)).unwrap();
    h.memory().write(DomId(9), e.mfn, e.frames());
    h.free(e.mfn, order, DomId(9)).unwrap();
    assert!(matches!(h.chunk_at(mfn).unwrap().state, ChunkState::Free { dirty_frames } if dirty_frames > 0));
}

fn assert_owned(h: &Heap<TestMemory>, e: Extent, mfn: Mfn, order: u8, owner: u32) {
    assert_eq!((e.mfn, e.order, e.node), (mfn, order, 0));
    let c = h.chunk_at(mfn).unwrap();
    assert_eq!(c.extent, e);
    assert!(matches!(c.state, ChunkState::Allocated { owner: o, pins: 0, .. } if o == DomId(owner)), "{c:?}");
    assert!(h.memory().is_zero(e.mfn, e.frames()), "frames handed over unscrubbed");
    h.check_invariants().unwrap();
}

#[test]
fn a_clean_range_inside_a_larger_free_chunk_is_taken_and_the_rest_stays_free() {
    let h = heap();
    let e = h.alloc_at(Mfn(96), 5, DomId(1)).unwrap();
    assert_owned(&h, e, Mfn(96), 5, 1);
    let s = h.stats();
    assert_eq!((s.allocated, s.free_clean, s.free_dirty), (32, FRAMES - 32, 0));
    // Every other frame is free: the neighbours on both sides can be taken too.
    assert_owned(&h, h.alloc_at(Mfn(64), 5, DomId(2)).unwrap(), Mfn(64), 5, 2);
    assert_owned(&h, h.alloc_at(Mfn(128), 7, DomId(2)).unwrap(), Mfn(128), 7, 2);
    assert_owned(&h, h.alloc_at(Mfn(0), 6, DomId(2)).unwrap(), Mfn(0), 6, 2);
    h.free(e.mfn, 5, DomId(1)).unwrap();
    assert_owned(&h, h.alloc_at(Mfn(96), 5, DomId(1)).unwrap(), Mfn(96), 5, 1);
}

#[test]
fn a_range_in_the_movable_zone_is_allocated_movable() {
    let h = heap();
    let e = h.alloc_at(Mfn(2048), 10, DomId(1)).unwrap();
    assert!(matches!(h.chunk_at(e.mfn).unwrap().state, ChunkState::Allocated { movable: true, .. }));
    let e = h.alloc_at(Mfn(1024), 10, DomId(1)).unwrap();
    assert!(matches!(h.chunk_at(e.mfn).unwrap().state, ChunkState::Allocated { movable: false, .. }));
    h.check_invariants().unwrap();
}

#[test]
fn a_dirty_range_of_one_batch_is_scrubbed_in_place() {
    let h = heap();
    dirty(&h, Mfn(256), 8);
    let before = h.stats().scrubbed.in_place;
    let e = h.alloc_at(Mfn(256), 8, DomId(1)).unwrap();
    assert_owned(&h, e, Mfn(256), 8, 1);
    assert_eq!(h.memory().foreign_frame(DomId(1), e.mfn, e.frames()), None);
    assert_eq!(h.stats().scrubbed.in_place - before, 256 * 4096, "256 frames of 4 KiB scrubbed in place");
    assert_eq!(h.stats().free_dirty, 0);
}

#[test]
fn a_dirty_range_above_one_batch_goes_through_a_ticket() {
    let h = heap();
    dirty(&h, Mfn(1024), 10);
    let AllocStart::Pending(t) = h.alloc_at_start(Mfn(1024), 10, DomId(1)).unwrap() else {
        panic!("1024 dirty frames are more than one batch")
    };
    assert_eq!(h.chunk_at(Mfn(1024)).unwrap().state, ChunkState::Pending { owner: DomId(1) });
    h.check_invariants().unwrap();
    // Dropped: the frames go back as they were (dirty), so the range can be asked again.
    drop(t);
    assert!(matches!(h.chunk_at(Mfn(1024)).unwrap().state, ChunkState::Free { dirty_frames: 1024 }));
    // alloc_at will not scrub more than one batch with no preemption point.
    refused!(h, h.alloc_at(Mfn(1024), 10, DomId(1)), HeapError::NeedsScrubTicket { frames: 1024, batch: 256, .. });
    let e = h.alloc_at_preemptible(Mfn(1024), 10, DomId(1), &NeverPreempt).unwrap().unwrap();
    assert_owned(&h, e, Mfn(1024), 10, 1);
    assert_eq!(h.memory().foreign_frame(DomId(1), e.mfn, e.frames()), None);
}

#[test]
fn a_range_with_an_allocated_frame_is_refused_naming_it() {
    let h = heap();
    h.alloc_at(Mfn(37), 0, DomId(2)).unwrap();
    let msg = refused!(
        h,
        h.alloc_at(Mfn(32), 3, DomId(1)),
        HeapError::NotFree { first: Mfn(37), what: FrameUse::Allocated, .. }
    );
    assert!(msg.contains("frame 0x25") || msg.contains("37"), "{msg}");
    // A range inside the allocation names its own first frame.
    refused!(h, h.alloc_at(Mfn(37), 0, DomId(1)), HeapError::NotFree { first: Mfn(37), .. });
}

#[test]
fn a_range_with_an_offline_or_broken_frame_is_refused() {
    let h = heap();
    h.offline(Mfn(520), 4, &NoMigration, &NoDeadline, &NeverPreempt).unwrap();
    refused!(h, h.alloc_at(Mfn(512), 4, DomId(1)), HeapError::NotFree { first: Mfn(520), what: FrameUse::Offline, .. });
    assert_eq!(h.mark_broken(Mfn(700)).unwrap(), Broken::Now);
    refused!(h, h.alloc_at(Mfn(512), 8, DomId(1)), HeapError::NotFree { first: Mfn(520), what: FrameUse::Offline, .. });
    refused!(h, h.alloc_at(Mfn(640), 7, DomId(1)), HeapError::NotFree { first: Mfn(700), what: FrameUse::Broken, .. });
}

#[test]
fn a_range_reserved_by_a_ticket_is_refused() {
    let h = heap();
    dirty(&h, Mfn(1024), 10);
    let t = h.alloc_at_start(Mfn(1024), 10, DomId(1)).unwrap();
    assert!(matches!(t, AllocStart::Pending(_)));
    refused!(
        h,
        h.alloc_at(Mfn(1536), 0, DomId(2)),
        HeapError::NotFree { first: Mfn(1536), what: FrameUse::Pending, .. }
    );
    refused!(h, h.alloc_at(Mfn(0), 11, DomId(2)), HeapError::NotFree { first: Mfn(1024), what: FrameUse::Pending, .. });
}

/// Memory whose first `zero` waits at a barrier twice: a test runs between the two waits
/// while a scrubber holds a chunk outside the lock.
struct Held {
    armed: AtomicBool,
    at: Barrier,
}

impl FrameMemory for Held {
    fn zero(&self, _: Mfn, _: u64) {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.at.wait();
            self.at.wait();
        }
    }
    fn is_zero(&self, _: Mfn, _: u64) -> bool {
        true
    }
    fn copy(&self, _: Mfn, _: Mfn, _: u64) {}
}

#[test]
fn a_range_being_scrubbed_is_refused_then_taken_once_the_scrubber_lets_go() {
    let mem = Held { armed: AtomicBool::new(true), at: Barrier::new(2) };
    let h = Heap::new(HeapConfig::uniform(1, 1024).with_initially_dirty(true), mem).unwrap();
    std::thread::scope(|s| {
        let scrubber = s.spawn(|| h.scrub_step(0, u64::MAX, &NeverPreempt).unwrap());
        h.memory().at.wait();
        assert_eq!(h.chunk_at(Mfn(8)).unwrap().state, ChunkState::Scrubbing);
        refused!(
            h,
            h.alloc_at(Mfn(8), 3, DomId(1)),
            HeapError::NotFree { first: Mfn(8), what: FrameUse::Scrubbing, .. }
        );
        h.memory().at.wait();
        scrubber.join().unwrap();
    });
    // Once the scrubber has let go of it, the range can be taken.
    let e = h.alloc_at(Mfn(8), 3, DomId(1)).unwrap();
    assert_eq!(e.mfn, Mfn(8));
    h.check_invariants().unwrap();
}

#[test]
fn claims_apply() {
    let h = heap();
    h.claim_set(DomId(2), &[Claim { target: ClaimTarget::Node(0), frames: FRAMES - 8 }]).unwrap();
    refused!(h, h.alloc_at(Mfn(0), 4, DomId(1)), HeapError::Claim(ClaimError::ClaimedByOthers { free: FRAMES, .. }));
    h.alloc_at(Mfn(0), 3, DomId(1)).unwrap();
    // The claimant's own allocation retires its claim.
    h.alloc_at(Mfn(16), 4, DomId(2)).unwrap();
    assert_eq!(h.claims_of(DomId(2)), vec![Claim { target: ClaimTarget::Node(0), frames: FRAMES - 24 }]);
    h.check_invariants().unwrap();
}

#[test]
fn bad_ranges_are_refused() {
    let h = heap();
    refused!(h, h.alloc_at(Mfn(2047), 1, DomId(1)), HeapError::Range(RangeError::Unaligned { .. }));
    refused!(h, h.alloc_at(Mfn(1024), 12, DomId(1)), HeapError::Range(RangeError::Unaligned { .. }));
    refused!(
        h,
        h.alloc_at(Mfn(0), 12, DomId(1)),
        HeapError::Range(RangeError::CrossesZone { movable_from: Mfn(2048), .. })
    );
    refused!(h, h.alloc_at(Mfn(FRAMES), 0, DomId(1)), HeapError::Range(RangeError::OutOfRange { .. }));
    refused!(h, h.alloc_at(Mfn(0), MAX_ORDER + 1, DomId(1)), HeapError::Range(RangeError::InvalidOrder { .. }));
}
