//! The per-CPU fast path (`Heap::get`, `Heap::put`, `Heap::drain`): reserves refilled and
//! drained in blocks, counted in the stats and the invariants, drained on demand, never
//! handing a dirty frame to a request that needs scrubbed memory.

use scrubheap::*;
use scrubheap::{FreeError, OfflineError, RangeError};

/// A heap whose batch holds a whole order-9 chunk (2 MiB), so `get` may zero one in place.
fn heap(frames: u64, cpus: usize) -> Heap<TestMemory> {
    let mut c = HeapConfig::uniform(1, frames).with_cpus(cpus);
    c.scrub_batch = 512;
    Heap::new(c, TestMemory::new(Mfn(0), frames, 8)).unwrap()
}

#[test]
fn get_zeroes_no_more_than_a_batch_in_place() {
    // The default batch (256 frames) is half an order-9 chunk: a dirty heap's order-9 get
    // is refused (a scrub ticket's job), nothing changed; an order-0 get zeroes in place.
    let c = HeapConfig::uniform(1, 1 << 12).with_cpus(1).with_initially_dirty(true);
    let h = Heap::new(c, TestMemory::new(Mfn(0), 1 << 12, 8)).unwrap();
    let before = h.stats();
    let r = h.get(0, &req(9, 1));
    assert!(matches!(r, Err(HeapError::NeedsScrubTicket { order: 9, .. })), "{r:?}");
    assert_eq!(h.stats().allocated, before.allocated);
    assert_eq!(h.stats().total(), before.total());
    assert_eq!(h.stats().free_clean, before.free_clean);
    let e = h.get(0, &req(0, 1)).unwrap();
    assert!(h.memory().is_zero(e.mfn, 1));
    h.put(0, e.mfn, 0, DomId(1)).unwrap();
    h.drain(None).unwrap();
    h.check_invariants().unwrap();
}

fn req(order: u8, dom: u32) -> AllocRequest {
    AllocRequest::new(order, DomId(dom))
}

/// Invariants hold and every frame is counted once.
fn settled<M: FrameMemory>(h: &Heap<M>, frames: u64) {
    h.check_invariants().unwrap();
    assert_eq!(h.stats().total(), frames);
}

#[test]
fn a_block_serves_64_gets_then_a_new_one_is_taken() {
    let h = heap(1 << 12, 1);
    let got: Vec<Extent> = (0..64).map(|_| h.get(0, &req(0, 1)).unwrap()).collect();
    let s = h.stats();
    assert_eq!((s.allocated, s.reserved), (64, 0), "one block, all of it lent");
    let block = got[0].mfn.0 & !63;
    assert!(got.iter().all(|e| e.mfn.0 & !63 == block), "the 64 frames come from one block");
    let e = h.get(0, &req(0, 1)).unwrap();
    assert_ne!(e.mfn.0 & !63, block, "an exhausted block is replaced by a new one");
    assert_eq!(h.stats().reserved, 63 + 64, "a CPU whose block ran out takes a spare beside the new one");
    settled(&h, 1 << 12);
    for x in got.iter().chain([&e]) {
        h.put(0, x.mfn, 0, DomId(1)).unwrap();
    }
    let s = h.stats();
    assert_eq!(
        (s.allocated, s.reserved, s.free_dirty),
        (0, 192, 0),
        "the detached block is parked, the current one and the spare stay"
    );
    settled(&h, 1 << 12);
    // A background scrubber returns the parked block to the free lists, then scrubs it.
    assert_eq!(h.scrub_step(0, 0, &NeverPreempt).unwrap(), 0, "no budget: nothing zeroed");
    let s = h.stats();
    assert_eq!((s.allocated, s.reserved), (0, 128), "the parked block went back whole, the current one stays");
    assert_eq!(s.free_dirty, 64, "the returned block's frames are dirty");
    settled(&h, 1 << 12);
    assert_eq!(h.drain(None).unwrap(), 128, "the current block and the spare");
    assert_eq!(h.stats().reserved, 0);
    settled(&h, 1 << 12);
}

#[test]
fn a_parked_block_serves_the_next_refill_and_drains() {
    let h = heap(1 << 12, 2);
    let got: Vec<Extent> = (0..65).map(|_| h.get(0, &req(0, 1)).unwrap()).collect();
    let first = got[0].mfn.0 & !63;
    for x in &got[..64] {
        h.put(1, x.mfn, 0, DomId(1)).unwrap();
    }
    assert_eq!(h.stats().reserved, 191, "the first block is parked: 64 free, 63 of the current one, the spare");
    settled(&h, 1 << 12);
    // CPU 1 takes dirty memory as it is: its first refill takes the parked block.
    let e = h.get(1, &req(0, 2).noscrub()).unwrap();
    assert_eq!(e.mfn.0 & !63, first, "the parked block is reused");
    assert_eq!(
        h.chunk_at(e.mfn).unwrap().state,
        ChunkState::Allocated { owner: DomId(2), pins: 0, movable: false, sealed: false }
    );
    // A put of a frame the owner does not hold is refused, the heap unchanged.
    let before = h.stats();
    assert!(matches!(h.put(0, e.mfn, 0, DomId(1)), Err(HeapError::Free(FreeError::WrongOwner { .. }))));
    assert!(matches!(h.put(0, Mfn(e.mfn.0 + 1), 0, DomId(2)), Err(HeapError::Free(FreeError::NotAllocated { .. }))));
    assert_eq!(h.stats(), before);
    h.put(1, e.mfn, 0, DomId(2)).unwrap();
    h.put(0, got[64].mfn, 0, DomId(1)).unwrap();
    settled(&h, 1 << 12);
    assert_eq!(h.drain(None).unwrap(), 192);
    assert_eq!(h.stats().reserved, 0);
    settled(&h, 1 << 12);
}

/// The stats of a heap of `frames` frames, after checking the invariants and that every
/// frame is counted once and `parked_dirty` is a part of `reserved`.
fn conserved<M: FrameMemory>(h: &Heap<M>, frames: u64) -> HeapStats {
    settled(h, frames);
    let s = h.stats();
    assert!(s.parked_dirty <= s.reserved, "{s:?}");
    let by_node = (0..h.node_count()).map(|n| h.node_stats(n).unwrap()).fold((0, 0), |a, n| {
        assert!(n.parked_dirty <= n.reserved && n.total() <= frames, "{n:?}");
        (a.0 + n.parked_dirty, a.1 + n.total())
    });
    assert_eq!(by_node, (s.parked_dirty, frames), "the nodes sum to the heap");
    s
}

#[test]
fn a_parked_blocks_dirty_frames_are_counted_until_a_scrubber_cleans_them() {
    let frames = 1 << 12;
    let h = heap(frames, 1);
    let got: Vec<Extent> = (0..65).map(|_| h.get(0, &req(0, 1)).unwrap()).collect();
    assert_eq!(conserved(&h, frames).parked_dirty, 0, "nothing parked yet");
    // 40 frames back: the first block is detached but still lends 24, so not parked.
    for x in &got[..40] {
        h.put(0, x.mfn, 0, DomId(1)).unwrap();
    }
    let s = conserved(&h, frames);
    assert_eq!((s.reserved, s.parked_dirty, s.free_dirty), (63 + 64 + 40, 0, 0));
    for x in &got[40..64] {
        h.put(0, x.mfn, 0, DomId(1)).unwrap();
    }
    let s = conserved(&h, frames);
    assert_eq!((s.reserved, s.parked_dirty, s.free_dirty), (191, 64, 0), "the parked block's 64 frames are dirty");
    assert_eq!(s.awaiting_scrub(), 64, "waiting for a scrubber, though not on the free lists");
    // A zero-budget step returns the parked block: its dirt moves to the free lists.
    assert_eq!(h.scrub_step(0, 0, &NeverPreempt).unwrap(), 0);
    let s = conserved(&h, frames);
    assert_eq!((s.reserved, s.parked_dirty, s.free_dirty), (127, 0, 64));
    assert_eq!(s.awaiting_scrub(), 64);
    // Scrubbing cleans it.
    while h.scrub_step(0, 16, &NeverPreempt).unwrap() > 0 {
        let s = conserved(&h, frames);
        assert_eq!(s.parked_dirty, 0);
    }
    let s = conserved(&h, frames);
    assert_eq!((s.reserved, s.parked_dirty, s.free_dirty, s.awaiting_scrub()), (127, 0, 0, 0));
    assert!(h.memory().is_zero(got[0].mfn, 64), "the returned block was zeroed");
    h.put(0, got[64].mfn, 0, DomId(1)).unwrap();
    h.drain(None).unwrap();
    assert_eq!(conserved(&h, frames).reserved, 0);
}

#[test]
fn a_refill_and_a_drain_take_a_parked_blocks_dirt_out_of_the_count() {
    let frames = 1 << 12;
    let h = heap(frames, 2);
    let got: Vec<Extent> = (0..65).map(|_| h.get(0, &req(0, 1)).unwrap()).collect();
    for x in &got[..64] {
        h.put(0, x.mfn, 0, DomId(1)).unwrap();
    }
    assert_eq!(conserved(&h, frames).parked_dirty, 64);
    // CPU 1 takes the parked block as its current one: no longer parked.
    let e = h.get(1, &req(0, 2).noscrub()).unwrap();
    let s = conserved(&h, frames);
    assert_eq!((s.reserved, s.parked_dirty), (63 + 64 + 63, 0), "a current block's dirt is not parked dirt");
    h.put(1, e.mfn, 0, DomId(2)).unwrap();
    h.drain(Some(1)).unwrap();
    // Park it again, then drain everything: the count goes with the block.
    let again: Vec<Extent> = (0..64).map(|_| h.get(0, &req(0, 3)).unwrap()).collect();
    for x in &again {
        h.put(0, x.mfn, 0, DomId(3)).unwrap();
    }
    h.put(0, got[64].mfn, 0, DomId(1)).unwrap();
    assert!(conserved(&h, frames).parked_dirty > 0, "a detached block of put frames is parked");
    h.drain(None).unwrap();
    let s = conserved(&h, frames);
    assert_eq!((s.reserved, s.parked_dirty), (0, 0));
}

#[test]
fn without_background_scrubbers_an_idle_block_goes_back_at_once() {
    let mut c = HeapConfig::uniform(1, 1 << 12).with_cpus(1);
    c.policy = Policy::Alloc;
    let h = Heap::new(c, TestMemory::new(Mfn(0), 1 << 12, 8)).unwrap();
    let got: Vec<Extent> = (0..65).map(|_| h.get(0, &req(0, 1)).unwrap()).collect();
    for x in &got {
        h.put(0, x.mfn, 0, DomId(1)).unwrap();
    }
    let s = h.stats();
    assert_eq!((s.reserved, s.free_dirty), (128, 64), "nothing parked: no scrubber would return it");
    settled(&h, 1 << 12);
}

#[test]
fn order_9_and_other_orders() {
    let h = heap(1 << 14, 2);
    let a = h.get(1, &req(9, 2)).unwrap();
    assert_eq!(a.order, 9);
    assert_eq!(h.stats().reserved, 15 << 9, "an order-9 block holds 16 chunks");
    let b = h.get(1, &req(3, 2)).unwrap();
    assert_eq!(
        h.chunk_at(b.mfn).unwrap().state,
        ChunkState::Allocated { owner: DomId(2), pins: 0, movable: false, sealed: false }
    );
    h.put(1, b.mfn, 3, DomId(2)).unwrap();
    h.put(0, a.mfn, 9, DomId(2)).unwrap();
    settled(&h, 1 << 14);
}

#[test]
fn a_put_on_another_cpu_and_an_ordinary_free_both_work() {
    let h = heap(1 << 12, 2);
    let a = h.get(0, &req(0, 1)).unwrap();
    let b = h.get(0, &req(0, 1)).unwrap();
    let held = ChunkState::Allocated { owner: DomId(1), pins: 0, movable: false, sealed: false };
    assert_eq!(h.chunk_at(a.mfn).unwrap().state, held, "chunk_at reads a loan without settling");
    let spare = Mfn((a.mfn.0 & !63) + 63);
    let reserve = ChunkState::Allocated { owner: RESERVE_OWNER, pins: 0, movable: false, sealed: false };
    assert_eq!(h.chunk_at(spare).unwrap().state, reserve);
    assert_eq!(h.stats().reserved, 62);
    h.put(1, a.mfn, 0, DomId(1)).unwrap();
    h.free(b.mfn, 0, DomId(1)).unwrap();
    assert_eq!(h.stats().allocated, 0);
    assert_eq!(h.stats().reserved, 64);
    settled(&h, 1 << 12);
}

#[test]
fn misuse_is_refused_and_changes_nothing() {
    let h = heap(1 << 12, 2);
    let a = h.get(0, &req(0, 1)).unwrap();
    let before = h.stats();
    assert!(matches!(h.put(0, a.mfn, 0, DomId(2)), Err(HeapError::Free(FreeError::WrongOwner { .. }))));
    assert!(matches!(h.put(2, a.mfn, 0, DomId(1)), Err(HeapError::Range(RangeError::NoSuchCpu { cpu: 2, cpus: 2 }))));
    assert!(matches!(h.get(5, &req(0, 1)), Err(HeapError::Range(RangeError::NoSuchCpu { .. }))));
    assert!(matches!(h.put(0, Mfn(1 << 20), 0, DomId(1)), Err(HeapError::Range(RangeError::OutOfRange { .. }))));
    let free_one = Mfn(a.mfn.0 ^ 1);
    assert!(matches!(h.put(0, free_one, 0, DomId(1)), Err(HeapError::Free(FreeError::NotAllocated { .. }))));
    assert_eq!(h.stats(), before);
    h.check_invariants().unwrap();
    h.put(0, a.mfn, 0, DomId(1)).unwrap();
    assert!(matches!(h.put(0, a.mfn, 0, DomId(1)), Err(HeapError::Free(FreeError::NotAllocated { .. }))), "double put");
    assert!(Heap::new(HeapConfig::uniform(1, 64).with_cpus(0), NullMemory).is_err());
    assert!(Heap::new(HeapConfig::uniform(1, 64).with_cpus(MAX_CPUS + 1), NullMemory).is_err());
    settled(&h, 1 << 12);
}

#[test]
fn no_frame_reaches_a_new_owner_unscrubbed() {
    let h = heap(1 << 12, 1);
    let mut held = Vec::new();
    for _ in 0..64 {
        let e = h.get(0, &req(0, 1)).unwrap();
        h.memory().write(DomId(1), e.mfn, 1);
        held.push(e);
    }
    for e in &held {
        h.put(0, e.mfn, 0, DomId(1)).unwrap();
    }
    // The block went back to the node dirty; a new block, and frames given back into it.
    for round in 0..3 {
        let e = h.get(0, &req(0, 2 + round)).unwrap();
        assert_eq!(h.memory().foreign_frame(DomId(2 + round), e.mfn, 1), None, "round {round}");
        h.memory().write(DomId(2 + round), e.mfn, 1);
        h.put(0, e.mfn, 0, DomId(2 + round)).unwrap();
    }
    // A noscrub request may get a dirty frame; a scrubbing one never.
    let dirty = h.get(0, &req(0, 9).noscrub()).unwrap();
    h.put(0, dirty.mfn, 0, DomId(9)).unwrap();
    for _ in 0..64 {
        let e = h.get(0, &req(0, 7)).unwrap();
        assert_eq!(h.memory().foreign_frame(DomId(7), e.mfn, 1), None);
    }
    assert!(h.stats().scrubbed.in_place > 0);
    assert!(h.in_place_bytes(DomId(7)) > 0);
    settled(&h, 1 << 12);
}

#[test]
fn scrub_reserve_cleans_a_cpus_block() {
    let h = heap(1 << 12, 1);
    let a = h.get(0, &req(0, 1)).unwrap();
    h.memory().write(DomId(1), a.mfn, 1);
    h.put(0, a.mfn, 0, DomId(1)).unwrap();
    let zeroed = h.memory().zeroed_frames();
    assert_eq!(h.scrub_reserve(0, 64).unwrap(), 1);
    assert_eq!(h.memory().zeroed_frames(), zeroed + 1);
    assert_eq!(h.scrub_reserve(0, 64).unwrap(), 0, "nothing dirty is left");
    assert_eq!(h.stats().scrubbed.background, 4096, "one frame of the configured 4 KiB");
    settled(&h, 1 << 12);
}

#[test]
fn drain_makes_loans_ordinary_allocations() {
    let h = heap(1 << 12, 2);
    let a = h.get(0, &req(0, 3)).unwrap();
    let b = h.get(1, &req(0, 4)).unwrap();
    assert_eq!(h.drain(Some(0)).unwrap(), 63);
    assert_eq!(h.stats().reserved, 63, "CPU 1's block is still there");
    assert_eq!(h.drain(None).unwrap(), 63);
    let s = h.stats();
    assert_eq!((s.reserved, s.allocated), (0, 2));
    assert_eq!(
        h.chunk_at(a.mfn).unwrap().state,
        ChunkState::Allocated { owner: DomId(3), pins: 0, movable: false, sealed: false }
    );
    // Now an ordinary allocation: pin and free work on it, put too (the ordinary way).
    h.pin(b.mfn, 0, DomId(4), &NoMigration, &NeverPreempt).unwrap();
    h.unpin(b.mfn, 0, DomId(4)).unwrap();
    h.put(1, b.mfn, 0, DomId(4)).unwrap();
    h.free(a.mfn, 0, DomId(3)).unwrap();
    settled(&h, 1 << 12);
}

#[test]
fn low_memory_drains_the_reserves_first() {
    let h = heap(128, 2);
    let a = h.get(0, &req(0, 1)).unwrap();
    let b = h.get(1, &req(0, 1)).unwrap();
    assert_eq!(h.stats().reserved, 126);
    // Order 5 fits only once the reserves' free frames are back.
    let big = h.alloc(&req(5, 2)).unwrap();
    assert_eq!(h.stats().reserved, 0);
    h.free(big.mfn, 5, DomId(2)).unwrap();
    h.put(0, a.mfn, 0, DomId(1)).unwrap();
    h.put(1, b.mfn, 0, DomId(1)).unwrap();
    settled(&h, 128);
}

#[test]
fn claims_drain_the_reserves_and_claimants_take_the_gate() {
    let h = heap(1 << 12, 1);
    let a = h.get(0, &req(0, 1)).unwrap();
    h.claim_set(DomId(2), &[Claim { target: ClaimTarget::Node(0), frames: (1 << 12) - 1 }]).unwrap();
    assert_eq!(h.stats().reserved, 0, "claim_set drains the reserves");
    // Domain 1 holds no claim: the claimed memory is refused to it, on the fast path too.
    assert!(h.get(0, &req(0, 1)).is_err());
    // Domain 2's get goes through the gate and retires its claim.
    let b = h.get(0, &req(0, 2)).unwrap();
    assert_eq!(h.claims_of(DomId(2))[0].frames, (1 << 12) - 2);
    h.free(b.mfn, 0, DomId(2)).unwrap();
    h.put(0, a.mfn, 0, DomId(1)).unwrap();
    settled(&h, 1 << 12);
}

#[test]
fn offline_and_alloc_at_settle_the_blocks_they_touch() {
    let h = heap(1 << 12, 1);
    let a = h.get(0, &req(0, 1)).unwrap();
    let block = Mfn(a.mfn.0 & !63);
    // alloc_at of a reserved (free) frame of the block succeeds after the block settles.
    let other = Mfn(block.0 + if a.mfn.0 == block.0 { 1 } else { 0 });
    h.alloc_at(other, 0, DomId(5)).unwrap();
    assert_eq!(h.stats().reserved, 0);
    h.free(other, 0, DomId(5)).unwrap();
    h.put(0, a.mfn, 0, DomId(1)).unwrap();
    let b = h.get(0, &req(0, 1)).unwrap();
    h.put(0, b.mfn, 0, DomId(1)).unwrap();
    let r = h.offline(Mfn(b.mfn.0 & !63), 64, &NoMigration, &NoDeadline, &NeverPreempt).unwrap();
    assert_eq!(h.stats().offline, 64);
    assert_eq!(h.stats().reserved, 0);
    let _ = r;
    settled(&h, 1 << 12);
}

/// A reserve block refilled from a range after its offline started (before its scan,
/// or between its scan and its isolation) is settled by the offline's walk, not taken
/// for an unmovable allocation; a chunk still lent out of it is its owner's.
#[test]
fn an_offline_settles_a_block_refilled_from_its_range_after_it_started() {
    let (first, count) = (Mfn(1 << 11), 1 << 11);
    for scanned_first in [false, true] {
        let h = heap(1 << 12, 2);
        // Only the range is free: a refill can take its block from nowhere else.
        h.alloc_at(Mfn(0), 11, DomId(9)).unwrap();
        let mut job = h.offline_start(first, count).unwrap();
        if scanned_first {
            // One step (the scan of the one free chunk), then yield.
            assert!(job.advance(&NoMigration, &NoDeadline, &|| true).unwrap().is_none());
        }
        let e = h.get(1, &req(0, 7)).unwrap();
        assert!(e.mfn >= first, "the refill came from the range");
        h.put(1, e.mfn, 0, DomId(7)).unwrap();
        assert_eq!(h.stats().reserved, 64);
        let done = (0..).find_map(|_| job.advance(&NoMigration, &NoDeadline, &|| true).unwrap()).unwrap();
        assert_eq!((done.frames, h.stats().offline, h.stats().reserved), (count, count, 0), "{scanned_first}");
        h.check_invariants().unwrap();
        // A CPU that tries again finds nothing free to refill from.
        assert!(h.get(1, &req(0, 7)).is_err());
        h.online(first, count, &NeverPreempt).unwrap();
        // A loan still out becomes its owner's unmovable allocation: it blocks the offline.
        let e = h.get(1, &req(0, 7)).unwrap();
        h.drain(None).unwrap();
        let mut job = h.offline_start(first, count).unwrap();
        let _keep = h.get(0, &req(0, 8)).unwrap();
        drop(job.advance(&NoMigration, &NoDeadline, &NeverPreempt).unwrap_err());
        let r = h.offline(first, count, &NoMigration, &NoDeadline, &NeverPreempt);
        let Err(HeapError::Offline(OfflineError::OfflineBlocked { blockers, .. })) = r else { panic!("{r:?}") };
        assert!(blockers.iter().any(|b| b.owner == Some(DomId(7)) && b.first == e.mfn), "{blockers:?}");
        settled(&h, 1 << 12);
    }
}

#[test]
fn two_threads_get_put_and_scrub_their_reserves_while_a_third_drains() {
    let h = std::sync::Arc::new(heap(1 << 12, 2));
    let workers: Vec<_> = (0..2)
        .map(|cpu| {
            let h = h.clone();
            std::thread::spawn(move || {
                for i in 0..2000u32 {
                    let order = if i % 7 == 0 { 9 } else { 0 };
                    let e = h.get(cpu, &req(order, 1 + cpu as u32)).unwrap();
                    h.put(1 - cpu, e.mfn, order, DomId(1 + cpu as u32)).unwrap();
                    if i % 16 == 0 {
                        // The idle scrub of its own reserve, racing the drains.
                        h.scrub_reserve(cpu, 64).unwrap();
                    }
                }
            })
        })
        .collect();
    for _ in 0..50 {
        h.drain(None).unwrap();
        h.check_invariants().unwrap();
    }
    for w in workers {
        w.join().unwrap();
    }
    settled(&h, 1 << 12);
    assert_eq!(h.stats().allocated, 0);
}

/// A CPU whose order-0 block runs out takes a spare block beside the next one: the spare
/// is reserved, serves the refill after, and is returned by a drain of its CPU; a spare a
/// settle returned meanwhile (an `alloc_at` of one of its frames) is never served.
#[test]
fn a_spare_block_serves_the_next_refill_and_drains_and_settles() {
    let frames = 1 << 12;
    let h = heap(frames, 2);
    let mut got: Vec<Extent> = (0..65).map(|_| h.get(0, &req(0, 1)).unwrap()).collect();
    assert_eq!(conserved(&h, frames).reserved, 63 + 64, "the current block's 63 and the spare's 64");
    got.extend((0..64).map(|_| h.get(0, &req(0, 1)).unwrap()));
    let blocks: Vec<u64> = got.iter().map(|e| e.mfn.0 & !63).collect();
    assert_ne!(blocks[64], blocks[128], "the 129th get comes from the spare, a new block");
    assert_eq!(conserved(&h, frames).reserved, 63, "the spare became the current block; no new spare yet");
    // The next block runs out too: a spare again, which a drain of CPU 1 leaves alone.
    got.extend((0..64).map(|_| h.get(0, &req(0, 1)).unwrap()));
    assert_eq!(conserved(&h, frames).reserved, 63 + 64);
    assert_eq!(h.drain(Some(1)).unwrap(), 0, "CPU 1 holds nothing");
    assert_eq!(h.drain(Some(0)).unwrap(), 63 + 64, "a drain returns the current block and the spare");
    assert_eq!(conserved(&h, frames).reserved, 0);
    // A spare settled by an alloc_at is forgotten: the next refill takes a block anew.
    got.extend((0..128).map(|_| h.get(0, &req(0, 1)).unwrap()));
    assert_eq!(conserved(&h, frames).reserved, 64, "a whole spare beside a used-up current block");
    let lent: Vec<u64> = got.iter().map(|e| e.mfn.0).collect();
    let reserve = ChunkState::Allocated { owner: RESERVE_OWNER, pins: 0, movable: false, sealed: false };
    let spare = (0..frames).find(|m| h.chunk_at(Mfn(*m)).is_ok_and(|c| c.state == reserve));
    let spare = spare.expect("the spare's frames are the reserve's");
    h.alloc_at(Mfn(spare), 0, DomId(5)).unwrap();
    assert_eq!(conserved(&h, frames).reserved, 0, "the alloc_at settled the spare");
    let e = h.get(0, &req(0, 1)).unwrap();
    assert!(!lent.contains(&e.mfn.0) && e.mfn.0 != spare, "a free frame, not the settled spare's");
    h.free(Mfn(spare), 0, DomId(5)).unwrap();
    for x in got.iter().chain([&e]) {
        h.put(0, x.mfn, 0, DomId(1)).unwrap();
    }
    h.drain(None).unwrap();
    assert_eq!(conserved(&h, frames).reserved, 0);
}
