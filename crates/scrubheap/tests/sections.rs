//! Every public operation of the heap, counted: a [`CountingMemory`] and a
//! [`CountingPreempt`] record the frames each one touches (zeroed, checked, copied, or
//! chunks walked in metadata) between two preemption points, and every test asserts that
//! no section holds more than one batch plus [`CHUNKS_PER_STEP`] (`Heap::section_bound`),
//! on operations large enough that a one-piece implementation would pass it many times
//! over (each test also asserts the total work, so a test cannot pass by doing nothing).

use scrubheap::*;
use scrubheap::{FreeError, OfflineError};
use std::sync::Arc;

/// Two nodes of 2^18 frames (1 GiB each at 4 KiB), the upper half of each Movable
/// unless a test wants whole GiBs.
const NODE: u64 = 1 << 18;

struct World {
    counter: Arc<SectionCounter>,
    heap: Heap<CountingMemory<TestMemory>>,
}

impl World {
    fn new(dirty: bool, movable: bool) -> Self {
        let counter = Arc::new(SectionCounter::default());
        let mut config = HeapConfig::uniform(2, NODE).with_initially_dirty(dirty);
        if movable {
            config = config.with_movable_from(NODE / 2);
        }
        let mem = CountingMemory::new(TestMemory::new(Mfn(0), 2 * NODE, 8), counter.clone());
        World { heap: Heap::new(config, mem).unwrap(), counter }
    }

    /// Runs `op` with a counting preempt (`yields`: what it answers) from a fresh count;
    /// closes the last section when `op` returns. Returns the result, the longest
    /// section and the total.
    fn counted<R>(&self, what: &str, yields: bool, op: impl FnOnce(&CountingPreempt) -> R) -> (R, u64, u64) {
        self.counter.reset();
        let preempt = CountingPreempt::new(self.counter.clone(), yields);
        let r = op(&preempt);
        self.counter.close();
        let (max, total) = (self.counter.max(), self.counter.total());
        println!("{what}: longest section {max} frames, {total} in all, bound {}", self.heap.section_bound());
        assert!(max <= self.heap.section_bound(), "{max} frames in one section, bound {}", self.heap.section_bound());
        self.heap.check_invariants().unwrap();
        (r, max, total)
    }

    fn bound(&self) -> u64 {
        self.heap.section_bound()
    }
}

/// Copies through the heap's (counting) memory, as an owner would copy its bytes.
struct Mover<'a>(&'a CountingMemory<TestMemory>);

impl Migrator for Mover<'_> {
    fn copy(&self, _owner: DomId, from: Extent, to: Extent, offset: u64, frames: u64) -> bool {
        self.0.copy(Mfn(from.mfn.0 + offset), Mfn(to.mfn.0 + offset), frames);
        true
    }
    fn switch(&self, _owner: DomId, _from: Extent, _to: Extent) -> bool {
        true
    }
}

#[test]
fn the_bound_is_one_batch_plus_the_metadata_constant() {
    let w = World::new(false, true);
    assert_eq!(w.bound(), 256 + CHUNKS_PER_STEP as u64);
}

#[test]
fn allocations_from_dirty_memory_scrub_one_batch_between_two_points() {
    let w = World::new(true, false);
    // A whole dirty GiB: alloc refuses (no preemption point of its own), touching nothing.
    let (r, max, _) = w
        .counted("alloc order 18, dirty (refused)", false, |_| w.heap.alloc(&AllocRequest::new(18, DomId(1)).exact(0)));
    assert!(matches!(r, Err(HeapError::NeedsScrubTicket { frames: 262144, .. })));
    assert_eq!(max, 0);
    // One batch or less is scrubbed in place.
    let (r, max, _) =
        w.counted("alloc order 8, dirty (in place)", false, |_| w.heap.alloc(&AllocRequest::new(8, DomId(1)).exact(1)));
    assert_eq!((r.unwrap().frames(), max), (256, 256));
    // The preemptible paths scrub the GiB a batch at a time.
    let (r, max, total) = w.counted("alloc_preemptible order 18, dirty", false, |p| {
        w.heap.alloc_preemptible(&AllocRequest::new(18, DomId(1)).exact(0), p)
    });
    assert_eq!((r.unwrap().unwrap().frames(), max, total), (1 << 18, 256, 1 << 18));
    let (_, max, total) = w.counted("ticket order 16, dirty, yielding", true, |p| {
        let AllocStart::Pending(mut t) = w.heap.alloc_start(&AllocRequest::new(16, DomId(2)).exact(1)).unwrap() else {
            panic!("dirty memory gives a ticket")
        };
        (0..).find_map(|_| t.advance(p).unwrap()).unwrap()
    });
    assert_eq!((max, total), (256, 1 << 16));
    let at = Mfn(NODE + (1 << 17));
    let (r, _, _) = w.counted("alloc_at order 16, dirty (refused)", false, |_| w.heap.alloc_at(at, 16, DomId(3)));
    assert!(matches!(r, Err(HeapError::NeedsScrubTicket { .. })));
    let (r, max, total) =
        w.counted("alloc_at_preemptible order 16, dirty", false, |p| w.heap.alloc_at_preemptible(at, 16, DomId(3), p));
    assert_eq!((r.unwrap().unwrap().mfn, max, total), (at, 256, 1 << 16));
}

#[test]
fn scrubbing_frees_claims_and_broken_frames_stay_within_the_bound() {
    let w = World::new(true, false);
    let (done, max, total) =
        w.counted("scrub_step of a dirty GiB node", false, |p| w.heap.scrub_step(0, u64::MAX, p).unwrap());
    assert_eq!((done, max, total), (NODE, 256, NODE));
    let sealed = w.heap.alloc(&AllocRequest::new(12, DomId(1)).exact(0).sealed()).unwrap();
    let e = w.heap.alloc(&AllocRequest::new(17, DomId(1)).exact(0)).unwrap();
    let (_, max, _) = w.counted("free order 17", false, |_| w.heap.free(e.mfn, 17, DomId(1)).unwrap());
    assert_eq!(max, 0, "a free never scrubs");
    let (_, max, _) =
        w.counted("free_sealed order 12", false, |_| w.heap.free_sealed(sealed.mfn, 12, DomId(1)).unwrap());
    assert_eq!(max, 0);
    let set = [Claim { target: ClaimTarget::Node(1), frames: 1 << 17 }];
    let (_, max, _) = w.counted("claim_set, claim_cancel, mark_broken", false, |_| {
        w.heap.claim_set(DomId(4), &set).unwrap();
        w.heap.claim_cancel(DomId(4));
        w.heap.mark_broken(Mfn(7)).unwrap()
    });
    assert_eq!(max, 0);
}

#[test]
fn a_pin_moves_a_gib_in_pieces_of_one_batch() {
    let w = World::new(false, true);
    let e = w.heap.alloc(&AllocRequest::new(17, DomId(1)).exact(0).movable()).unwrap();
    assert_eq!(w.heap.chunk_at(e.mfn).unwrap().zone, Zone::Movable);
    w.heap.memory().inner().write(DomId(1), e.mfn, e.frames());
    let mover = Mover(w.heap.memory());
    let (to, max, total) =
        w.counted("pin order 17 out of Movable", false, |p| w.heap.pin(e.mfn, 17, DomId(1), &mover, p).unwrap());
    assert_eq!((max, total), (256, (1 << 17) + 2), "copied a batch at a time (and one chunk marked, then freed)");
    assert_eq!(w.heap.chunk_at(to.mfn).unwrap().zone, Zone::Normal);
    assert_eq!(w.heap.memory().inner().foreign_frame(DomId(1), to.mfn, to.frames()), None);
    let (_, max, _) = w.counted("unpin, pin_in_place, unpin", false, |_| {
        w.heap.unpin(to.mfn, 17, DomId(1)).unwrap();
        w.heap.pin_in_place(to.mfn, 0, DomId(1)).unwrap();
        w.heap.unpin(to.mfn, 0, DomId(1)).unwrap()
    });
    assert_eq!(max, 0);
}

/// Fills `[first, first + count)` of the Movable zone with one movable allocation of
/// `big` frames and many order-0 allocations beside free holes: many chunks to walk.
fn fragment(w: &World, node: usize, big: u8) -> u64 {
    let e = w.heap.alloc(&AllocRequest::new(big, DomId(1)).exact(node).movable()).unwrap();
    let mut small = Vec::new();
    for _ in 0..4096 {
        small.push(w.heap.alloc(&AllocRequest::new(0, DomId(2)).exact(node).movable()).unwrap());
    }
    for s in small.iter().step_by(2) {
        w.heap.free(s.mfn, 0, DomId(2)).unwrap();
    }
    e.frames() + 2048
}

#[test]
fn an_offline_walks_and_copies_at_most_the_bound_between_two_points() {
    let w = World::new(false, true);
    let moved = fragment(&w, 0, 16);
    let (first, count) = (Mfn(NODE / 2), NODE / 2);
    let mover = Mover(w.heap.memory());
    let (done, max, total) = w.counted("offline of 2^17 frames, 4096+ chunks, 2^16+2048 moved", true, |p| {
        let mut job = w.heap.offline_start(first, count).unwrap();
        (0..).find_map(|_| job.advance(&mover, &NoDeadline, p).unwrap()).unwrap()
    });
    assert_eq!((done.frames, done.migrated_frames), (count, moved));
    assert!(max <= w.bound() && total > moved + 4096, "{max} {total}: the scan walked every chunk too");
    // Online: thousands of offline chunks, CHUNKS_PER_STEP at a time.
    let (back, max, total) = w.counted("online of the same range", false, |p| w.heap.online(first, count, p).unwrap());
    assert_eq!(back, count);
    assert!(max <= CHUNKS_PER_STEP as u64 && total >= CHUNKS_PER_STEP as u64, "{max} {total}");
}

#[test]
fn a_rolled_back_or_dropped_offline_stays_within_the_bound() {
    let w = World::new(false, true);
    fragment(&w, 1, 16);
    let (first, count) = (Mfn(NODE + NODE / 2), NODE / 2);
    let before = w.heap.stats();
    let mover = Mover(w.heap.memory());
    // A deadline passing in the middle of the moves: the report and roll-back in steps.
    let (r, _, _) = w.counted("offline stopped by its deadline, rolled back", true, |p| {
        let mut job = w.heap.offline_start(first, count).unwrap();
        let deadline = StepBudget::new(200);
        loop {
            match job.advance(&mover, &deadline, p) {
                Ok(None) => continue,
                other => break other,
            }
        }
    });
    assert!(
        matches!(r, Err(HeapError::Offline(OfflineError::OfflineBlocked { stop: OfflineStop::Deadline, .. }))),
        "{r:?}"
    );
    assert_eq!(w.heap.stats().offline, 0, "rolled back");
    assert_eq!(w.heap.stats().allocated, before.allocated);
    // A job dropped half-way (its roll-back has no Preempt: it walks in steps of
    // CHUNKS_PER_STEP under the lock and counts nothing) leaves the heap as it was.
    let (_, max, _) = w.counted("offline advanced 100 steps, then dropped", true, |p| {
        let mut job = w.heap.offline_start(first, count).unwrap();
        for _ in 0..100 {
            assert!(job.advance(&mover, &NoDeadline, p).unwrap().is_none());
        }
    });
    assert!(max <= w.bound());
    assert_eq!(w.heap.stats().offline, 0);
    // A finished job refuses to go on.
    let mut job = w.heap.offline_start(Mfn(NODE), 1).unwrap();
    assert!((0..).find_map(|_| job.advance(&mover, &NoDeadline, &NeverPreempt).unwrap()).is_some());
    assert!(matches!(
        job.advance(&mover, &NoDeadline, &NeverPreempt),
        Err(HeapError::Offline(OfflineError::OfflineFinished { .. }))
    ));
}

/// Splits `owner`'s `[e.mfn, 2^e.order)` into single frames (a pin and an unpin of each:
/// allocated chunks do not merge back): `2^order` chunks held by one owner.
fn shatter(w: &World, e: Extent, owner: DomId) {
    for i in 0..e.frames() {
        w.heap.pin_in_place(Mfn(e.mfn.0 + i), 0, owner).unwrap();
        w.heap.unpin(Mfn(e.mfn.0 + i), 0, owner).unwrap();
    }
}

/// Drives `op` on the range as a job, yielding after every step; returns where the
/// frames are.
fn run_range(w: &World, op: RangeOp, e: Extent, owner: DomId, m: &dyn Migrator, p: &CountingPreempt) -> Extent {
    let mut job = w.heap.range_start(op, e.mfn, e.order, owner).unwrap();
    (0..).find_map(|_| job.advance(m, p).unwrap()).unwrap()
}

#[test]
fn a_range_of_many_chunks_is_refused_in_one_call_and_done_in_counted_steps() {
    let w = World::new(false, true);
    let e = w.heap.alloc(&AllocRequest::new(12, DomId(1)).exact(0)).unwrap();
    shatter(&w, e, DomId(1));
    let before = w.heap.stats();
    // The one-call forms would walk 4096 chunks under the node lock: refused, unchanged.
    let (r, max, _) = w.counted("free, pin_in_place, unpin of 4096 chunks (refused)", false, |_| {
        [
            w.heap.free(e.mfn, 12, DomId(1)),
            w.heap.free_sealed(e.mfn, 12, DomId(1)),
            w.heap.pin_in_place(e.mfn, 12, DomId(1)).map(|_| ()),
            w.heap.unpin(e.mfn, 12, DomId(1)),
        ]
    });
    assert!(
        r.iter().all(|r| matches!(r, Err(HeapError::Free(FreeError::TooManyChunks { limit: CHUNKS_PER_STEP, .. })))),
        "{r:?}"
    );
    assert_eq!((max, w.heap.stats()), (0, before));
    // As jobs: at most CHUNKS_PER_STEP chunks between two points, every chunk walked.
    for op in [RangeOp::PinInPlace, RangeOp::Unpin, RangeOp::Free] {
        let (to, max, total) = w.counted(&format!("{op:?} job over 4096 chunks"), true, |p| {
            run_range(&w, op, e, DomId(1), &NoMigration, p)
        });
        assert_eq!(to, e);
        assert!(max <= CHUNKS_PER_STEP as u64 && total >= 2 * 4096, "{op:?}: {max} {total}: marked, then committed");
    }
    assert_eq!(w.heap.stats().allocated, before.allocated - 4096);
}

#[test]
fn a_sealed_range_of_many_chunks_is_freed_by_a_free_sealed_job_in_counted_steps() {
    // What a layer above the heap (PoD) gives back: sealed 4 KiB pages allocated one by
    // one, one aligned run of 4096 chunks.
    let w = World::new(false, false);
    let req = AllocRequest::new(0, DomId(2)).exact(0).sealed();
    let mut got: Vec<u64> = (0..4096).map(|_| w.heap.alloc(&req).unwrap().mfn.0).collect();
    got.sort_unstable();
    let first = got[0];
    assert!(first % 4096 == 0 && got == (first..first + 4096).collect::<Vec<_>>(), "one aligned run");
    let before = w.heap.stats();
    let r = w.heap.free_sealed(Mfn(first), 12, DomId(2));
    assert!(matches!(r, Err(HeapError::Free(FreeError::TooManyChunks { limit: CHUNKS_PER_STEP, .. }))), "{r:?}");
    assert_eq!(w.heap.stats(), before);
    let e = Extent { mfn: Mfn(first), order: 12, node: 0 };
    let (to, max, total) = w.counted("FreeSealed job over 4096 chunks", true, |p| {
        run_range(&w, RangeOp::FreeSealed, e, DomId(2), &NoMigration, p)
    });
    assert_eq!(to, e);
    assert!(max <= CHUNKS_PER_STEP as u64 && total >= 2 * 4096, "{max} {total}: marked, then committed");
    assert_eq!(w.heap.stats().allocated, before.allocated - 4096);
}

#[test]
fn a_refused_or_cancelled_range_job_leaves_the_heap_as_it_was() {
    let w = World::new(false, true);
    let e = w.heap.alloc(&AllocRequest::new(12, DomId(1)).exact(0)).unwrap();
    shatter(&w, e, DomId(1));
    // One frame near the end pinned: a free job marks 4000 chunks, then refuses.
    w.heap.pin_in_place(Mfn(e.mfn.0 + 4000), 0, DomId(1)).unwrap();
    let before: Vec<ChunkInfo> = (0..4096).map(|i| w.heap.chunk_at(Mfn(e.mfn.0 + i)).unwrap()).collect();
    let stats = w.heap.stats();
    let (r, _, total) = w.counted("free job refused at frame 4000", true, |p| {
        let mut job = w.heap.range_start(RangeOp::Free, e.mfn, 12, DomId(1)).unwrap();
        loop {
            match job.advance(&NoMigration, p) {
                Ok(None) => continue,
                other => break other,
            }
        }
    });
    assert!(matches!(r, Err(HeapError::Free(FreeError::Pinned { mfn, .. })) if mfn.0 == e.mfn.0 + 4000), "{r:?}");
    assert!(total >= 2 * 4000, "marked and unmarked in steps: {total}");
    let after: Vec<ChunkInfo> = (0..4096).map(|i| w.heap.chunk_at(Mfn(e.mfn.0 + i)).unwrap()).collect();
    assert_eq!((after, w.heap.stats()), (before.clone(), stats));
    // Cancelled halfway through its marking, and dropped halfway: the same.
    let (r, _, _) = w.counted("pin_in_place job cancelled", true, |p| {
        let mut job = w.heap.range_start(RangeOp::PinInPlace, e.mfn, 12, DomId(1)).unwrap();
        for _ in 0..10 {
            assert!(job.advance(&NoMigration, p).unwrap().is_none());
        }
        job.cancel();
        (0..).find_map(|_| job.advance(&NoMigration, p).transpose()).unwrap()
    });
    assert!(matches!(r, Err(HeapError::JobCancelled { job: "pin_in_place", .. })), "{r:?}");
    {
        let mut job = w.heap.range_start(RangeOp::PinInPlace, e.mfn, 12, DomId(1)).unwrap();
        assert!(job.advance(&NoMigration, &|| true).unwrap().is_none());
        // While marked, the range's frames are busy for everyone else.
        assert!(matches!(w.heap.free(e.mfn, 0, DomId(1)), Err(HeapError::Free(FreeError::Busy { .. }))));
    }
    let after: Vec<ChunkInfo> = (0..4096).map(|i| w.heap.chunk_at(Mfn(e.mfn.0 + i)).unwrap()).collect();
    assert_eq!((after, w.heap.stats()), (before, stats));
    w.heap.check_invariants().unwrap();
}

#[test]
fn a_pin_job_of_many_chunks_moves_and_frees_in_counted_steps() {
    let w = World::new(false, true);
    let e = w.heap.alloc(&AllocRequest::new(12, DomId(1)).exact(0).movable()).unwrap();
    assert_eq!(w.heap.chunk_at(e.mfn).unwrap().zone, Zone::Movable);
    shatter(&w, e, DomId(1));
    w.heap.memory().inner().write(DomId(1), e.mfn, e.frames());
    let mover = Mover(w.heap.memory());
    let (to, max, total) = w.counted("pin job of 4096 chunks out of Movable", true, |p| {
        let mut job = w.heap.pin_start(e.mfn, 12, DomId(1)).unwrap();
        (0..).find_map(|_| job.advance(&mover, p).unwrap()).unwrap()
    });
    assert!(max <= w.bound() && total >= 4096 + 2 * 4096, "{max} {total}: copied, marked, freed");
    assert_eq!(w.heap.chunk_at(to.mfn).unwrap().zone, Zone::Normal);
    assert_eq!(w.heap.memory().inner().foreign_frame(DomId(1), to.mfn, to.frames()), None);
    assert!(matches!(w.heap.chunk_at(e.mfn).unwrap().state, ChunkState::Free { .. }));
    // A finished job refuses to go on.
    let mut job = w.heap.range_start(RangeOp::Unpin, to.mfn, 12, DomId(1)).unwrap();
    assert!((0..).find_map(|_| job.advance(&NoMigration, &NeverPreempt).unwrap()).is_some());
    assert!(matches!(job.advance(&NoMigration, &NeverPreempt), Err(HeapError::JobFinished { .. })));
}

#[test]
fn an_online_job_yields_between_steps_and_a_cancel_changes_nothing() {
    let w = World::new(false, true);
    fragment(&w, 0, 16);
    let (first, count) = (Mfn(NODE / 2), NODE / 2);
    let mover = Mover(w.heap.memory());
    w.heap.offline(first, count, &mover, &NoDeadline, &NeverPreempt).unwrap();
    let offline = w.heap.stats();
    // Cancelled while it checks: nothing changed.
    let (r, _, _) = w.counted("online job cancelled while checking", true, |p| {
        let mut job = w.heap.online_start(first, count).unwrap();
        assert!(job.advance(p).unwrap().is_none());
        job.cancel();
        job.advance(p)
    });
    assert!(matches!(r, Err(HeapError::JobCancelled { job: "online", .. })), "{r:?}");
    assert_eq!(w.heap.stats(), offline);
    // Yielding after every step: thousands of chunks, CHUNKS_PER_STEP at a time.
    let (back, max, total) = w.counted("online job, yielding", true, |p| {
        let mut job = w.heap.online_start(first, count).unwrap();
        let mut calls = 0;
        let back = (0..).find_map(|_| {
            calls += 1;
            job.advance(p).unwrap()
        });
        assert!(calls > 2 * 4096 / CHUNKS_PER_STEP, "{calls} calls: it returned between steps");
        assert!(matches!(job.advance(p), Err(HeapError::JobFinished { .. })));
        back.unwrap()
    });
    assert_eq!(back, count);
    assert!(max <= CHUNKS_PER_STEP as u64 && total >= 2 * 4096, "{max} {total}");
    // Dropped once past its check: it finishes (nothing of the range stays offline).
    w.heap.offline(first, count, &mover, &NoDeadline, &NeverPreempt).unwrap();
    {
        let mut job = w.heap.online_start(first, count).unwrap();
        while !job.committed() {
            assert!(job.advance(&|| true).unwrap().is_none());
        }
    }
    assert_eq!(w.heap.stats().offline, 0);
    w.heap.check_invariants().unwrap();
}

#[test]
fn a_pin_job_cancelled_in_its_move_leaves_the_owner_where_it_was() {
    let w = World::new(false, true);
    let e = w.heap.alloc(&AllocRequest::new(16, DomId(1)).exact(0).movable()).unwrap();
    let before = (w.heap.stats(), w.heap.chunk_at(e.mfn).unwrap());
    let mover = Mover(w.heap.memory());
    let (r, max, total) = w.counted("pin job cancelled after 10 pieces", true, |p| {
        let mut job = w.heap.pin_start(e.mfn, 16, DomId(1)).unwrap();
        for _ in 0..12 {
            assert!(job.advance(&mover, p).unwrap().is_none());
        }
        job.cancel();
        (0..).find_map(|_| job.advance(&mover, p).transpose()).unwrap()
    });
    assert!(matches!(r, Err(HeapError::JobCancelled { job: "pin", .. })), "{r:?}");
    assert!(max <= w.bound() && total >= 10 * 256, "{max} {total}");
    let after = (w.heap.stats(), w.heap.chunk_at(e.mfn).unwrap());
    assert_eq!((after.0.allocated, after.1), (before.0.allocated, before.1));
    // Dropped in its move: the same.
    {
        let mut job = w.heap.pin_start(e.mfn, 16, DomId(1)).unwrap();
        for _ in 0..5 {
            assert!(job.advance(&mover, &|| true).unwrap().is_none());
        }
    }
    assert_eq!(w.heap.chunk_at(e.mfn).unwrap(), before.1);
    w.heap.check_invariants().unwrap();
}
