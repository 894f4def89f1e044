//! The heap's metadata, measured: `Heap::metadata_bytes` against what a counting
//! allocator sees, for a fresh heap, one fully allocated in single frames, one
//! fragmented (every other frame free) and one freed again, each against its target
//! (fresh nodes at most 0.93 B/frame, allocated and fragmented at most main's 12.38,
//! freed within 10% of fresh) and the formula of `node_metadata_bound`. Prints the figures:
//! `cargo test --release -p scrubheap --test metadata -- --nocapture`.

use scrubheap::{
    node_metadata_bound, AllocRequest, DomId, Heap, HeapConfig, Mfn, NullMemory, BLOCK_FRAMES, METADATA_BITS_PER_FRAME,
    TABLE_BYTES,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds
// GlobalAlloc's contract; the counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        // SAFETY: the caller's layout is passed through as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        // SAFETY: `ptr` was allocated by `System` with this layout (alloc above).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn live() -> isize {
    LIVE.load(Relaxed)
}

/// One scenario's figures: bytes the allocator holds for the heap, and what the heap says.
fn check(what: &str, frames: u64, measured: isize, heap: &Heap<NullMemory>) {
    let reported = heap.metadata_bytes() as f64;
    let measured = measured as f64;
    println!(
        "{what:<34} measured {:>6.3} B/frame ({:>11.0} B), metadata_bytes {:>6.3} B/frame ({:+.1}%)",
        measured / frames as f64,
        measured,
        reported / frames as f64,
        (reported / measured - 1.0) * 100.0
    );
    assert!((reported - measured).abs() <= 0.35 * measured, "{what}: reported {reported} vs measured {measured}");
}

/// Main's metadata (12-byte slot a frame, dirty bits, the fast path's tables) in bytes a
/// frame, measured with this test on main: the most a fully allocated or fragmented heap
/// may hold.
const MAIN_BYTES_PER_FRAME: f64 = 12.38;

#[test]
fn metadata_follows_the_allocations_and_is_given_back() {
    // 4 GiB of 4 KiB frames in release; 1 GiB in a debug build, where it is slow (not
    // less: a node keeps one spare 5 KiB record table, 2% of a 1 GiB node's fresh metadata).
    let frames: u64 = if cfg!(debug_assertions) { 1 << 18 } else { 1 << 20 };
    let f = frames as f64;
    let owner = DomId(1);
    let before = live();
    let heap = Heap::new(HeapConfig::uniform(1, frames), NullMemory).unwrap();
    let fresh = live() - before;
    check("fresh", frames, fresh, &heap);
    // The per-CPU fast path's block tables (one entry per block region of each fast
    // order) are fixed too, but they are the fast path's, not the node's frame metadata.
    let (tables, blocks) = heap.reserve_metadata_bytes();
    assert_eq!(blocks, 0, "no block is live before the first get");
    // A 4-byte map entry per block region of each fast order, a segment pointer per 128
    // records: at most 0.07 bytes a frame (issue 13's share for the fast path).
    assert!(tables as f64 <= 0.07 * f, "fast-path tables: {tables} bytes");
    let own = (fresh - tables as isize) as f64 / f;
    println!("of which the fast path's block tables {:.3} B/frame, the nodes' own {own:.3} B/frame", tables as f64 / f);
    assert!(own <= 0.93, "the nodes' fixed metadata of a fresh heap: {own} B/frame");
    assert!(own * f <= node_metadata_bound(frames, 0) as f64 + 4096.0, "fresh: {own} B/frame over the formula");
    println!(
        "fixed metadata: at most {METADATA_BITS_PER_FRAME} bits a frame by formula, {TABLE_BYTES} bytes a split block"
    );

    for _ in 0..frames {
        heap.alloc(&AllocRequest::new(0, owner)).unwrap();
    }
    let full = live() - before;
    check("fully allocated in single frames", frames, full, &heap);
    let split = frames / BLOCK_FRAMES as u64;
    let bound = node_metadata_bound(frames, split) as f64 + tables as f64 + 4096.0;
    assert!(full as f64 <= bound, "fully allocated: {full} bytes over the formula's {bound}");
    assert!(full as f64 / f <= MAIN_BYTES_PER_FRAME, "fully allocated: {} B/frame", full as f64 / f);

    for m in (0..frames).step_by(2) {
        heap.free(Mfn(m), 0, owner).unwrap();
    }
    let fragmented = live() - before;
    check("fragmented (every other frame free)", frames, fragmented, &heap);
    assert!(fragmented as f64 / f <= MAIN_BYTES_PER_FRAME, "fragmented: {} B/frame", fragmented as f64 / f);
    heap.check_invariants().unwrap();

    for m in (1..frames).step_by(2) {
        heap.free(Mfn(m), 0, owner).unwrap();
    }
    let s = heap.stats();
    assert_eq!((s.free_clean + s.free_dirty, s.allocated), (frames, 0));
    let freed = live() - before;
    check("all freed again", frames, freed, &heap);
    assert!(freed as f64 <= 1.1 * fresh as f64, "all freed: {freed} bytes against {fresh} fresh");

    // The fast path's records are allocated as blocks go live, and reported as allocated.
    let mut got = Vec::with_capacity(frames as usize / 4);
    let list = (got.capacity() * core::mem::size_of::<Mfn>()) as isize;
    got.extend((0..frames / 4).map(|_| heap.get(0, &AllocRequest::new(0, owner)).unwrap().mfn));
    let (_, records) = heap.reserve_metadata_bytes();
    assert!(records >= (frames / 4 / 64) * 64, "a 64-byte record per live block: {records} bytes");
    check("a quarter lent through the fast path", frames, live() - before - list, &heap);
    println!("of which fast-path records {:.3} B/frame", records as f64 / frames as f64);
    for m in got {
        heap.put(0, m, 0, owner).unwrap();
    }
    heap.drain(None).unwrap();
    check("all put back and drained", frames, live() - before, &heap);
    heap.check_invariants().unwrap();
}
