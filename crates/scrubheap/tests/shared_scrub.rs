//! Several scrubbers of a node on one large dirty chunk (issue 17): the second scrubber
//! joins the chunk the first one holds and takes batches from its cursor, instead of
//! finding nothing. The interleaving is forced, not left to timing: the first scrubber's
//! first batch blocks inside `FrameMemory::zero` (outside the node lock) until the test
//! lets it go.

use scrubheap::*;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

/// 1 GiB of 4 KiB frames (each frame 8 bytes in the test memory).
const GIB_FRAMES: u64 = 1 << 18;
const ORDER_1G: u8 = 18;

/// TestMemory whose first zeroing call parks until `release` is set.
struct Gated {
    inner: TestMemory,
    calls: AtomicU32,
    parked: AtomicBool,
    release: AtomicBool,
}

impl FrameMemory for Gated {
    fn zero(&self, first: Mfn, count: u64) {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            self.parked.store(true, Ordering::SeqCst);
            while !self.release.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
        }
        self.inner.zero(first, count)
    }
    fn is_zero(&self, first: Mfn, count: u64) -> bool {
        self.inner.is_zero(first, count)
    }
    fn copy(&self, src: Mfn, dst: Mfn, count: u64) {
        self.inner.copy(src, dst, count)
    }
}

/// A one-node heap holding one dirty 1 GiB chunk, and a scrubber parked in its first batch.
fn one_chunk_one_parked_scrubber() -> (Arc<Heap<Gated>>, std::thread::JoinHandle<u64>) {
    let mut c = HeapConfig::uniform(1, GIB_FRAMES).with_initially_dirty(true);
    c.scrub_batch = 256;
    let mem = Gated {
        inner: TestMemory::new(Mfn(0), GIB_FRAMES, 8),
        calls: 0.into(),
        parked: false.into(),
        release: false.into(),
    };
    let heap = Arc::new(Heap::new(c, mem).unwrap());
    assert_eq!(heap.stats().free_dirty, GIB_FRAMES);
    let h = heap.clone();
    let first = std::thread::spawn(move || h.scrub_step(0, u64::MAX, &NeverPreempt).unwrap());
    while !heap.memory().parked.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    heap.check_invariants().unwrap();
    (heap, first)
}

#[test]
fn two_scrubbers_both_make_progress_on_one_1gib_chunk() {
    let (heap, first) = one_chunk_one_parked_scrubber();
    // The first scrubber holds the whole chunk with one batch in flight; the second joins it.
    let second = heap.scrub_step(0, u64::MAX, &NeverPreempt).unwrap();
    heap.check_invariants().unwrap();
    assert_eq!(second, GIB_FRAMES - 256, "the second scrubber took every batch but the one in flight");
    heap.memory().release.store(true, Ordering::SeqCst);
    let first = first.join().unwrap();
    assert_eq!(first, 256, "the first scrubber finished its batch");
    heap.check_invariants().unwrap();
    let s = heap.stats();
    assert_eq!((s.free_dirty, s.free_clean), (0, GIB_FRAMES));
    assert_eq!(heap.memory().inner.zeroed_frames(), GIB_FRAMES, "no frame zeroed twice");
    let c = heap.chunk_at(Mfn(0)).unwrap();
    assert_eq!(c.extent.order, ORDER_1G, "the last scrubber to leave handed the chunk back whole");
}

#[test]
fn an_allocator_gets_a_shared_chunk_back_once_both_scrubbers_leave() {
    let (heap, first) = one_chunk_one_parked_scrubber();
    // The second scrubber does one batch and leaves while the first's is still in flight:
    // the chunk stays taken.
    assert_eq!(heap.scrub_step(0, 256, &NeverPreempt).unwrap(), 256);
    heap.check_invariants().unwrap();
    let AllocStart::Pending(mut t) = heap.alloc_start(&AllocRequest::new(ORDER_1G, DomId(1))).unwrap() else {
        panic!("the only chunk is being scrubbed: the allocation must wait for it")
    };
    assert_eq!(t.advance(&NeverPreempt).unwrap(), None, "still held by the first scrubber");
    heap.memory().release.store(true, Ordering::SeqCst);
    assert_eq!(first.join().unwrap(), 256, "asked to stop, the first scrubber left after its batch");
    let e = loop {
        if let Some(e) = t.advance(&NeverPreempt).unwrap() {
            break e;
        }
    };
    assert_eq!(e.frames(), GIB_FRAMES);
    assert!(heap.memory().is_zero(e.mfn, GIB_FRAMES));
    assert_eq!(heap.memory().inner.zeroed_frames(), GIB_FRAMES, "both scrubbers' progress was kept");
    assert_eq!(heap.stats().scrubbed.background, 512 * 4096);
    heap.check_invariants().unwrap();
}
