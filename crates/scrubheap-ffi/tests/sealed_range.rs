//! `SCRUBHEAP_RANGE_FREE_SEALED` through the C ABI: a sealed allocation split into more
//! chunks than one call walks is refused by the ordinary free and given back by a range
//! job in steps; the constant is refused for frames that are not sealed, and an unknown
//! operation is refused, the heap unchanged each time.

use scrubheap_ffi::*;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const FRAMES: u64 = 1 << 12;

unsafe extern "C" fn zero(_: *mut c_void, _: u64, _: u64) {}
unsafe extern "C" fn is_zero(_: *mut c_void, _: u64, _: u64) -> bool {
    true
}
unsafe extern "C" fn copy(_: *mut c_void, _: u64, _: u64, _: u64) {}
/// Counts its calls (through `ctx`, an `AtomicU64`) and always asks to yield.
unsafe extern "C" fn count_and_yield(ctx: *mut c_void) -> bool {
    // SAFETY: every call in this file passes a live AtomicU64 as ctx.
    unsafe { &*ctx.cast::<AtomicU64>() }.fetch_add(1, Relaxed);
    true
}

fn last_error() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf has 256 writable bytes.
    let n = unsafe { scrubheap_last_error(buf.as_mut_ptr().cast(), buf.len()) };
    String::from_utf8_lossy(&buf[..n.min(255)]).into_owned()
}

fn ok(s: ScrubheapStatus, what: &str) {
    assert_eq!(s, ScrubheapStatus::SCRUBHEAP_OK, "{what}: {}", last_error());
}

fn new_heap() -> *mut ScrubheapHeap {
    let frames = [FRAMES];
    let config = ScrubheapConfig {
        frame_size: 4096,
        first_frame: 0,
        node_count: 1,
        node_frames: frames.as_ptr(),
        movable_from: SCRUBHEAP_NO_MOVABLE,
        policy: SCRUBHEAP_POLICY_SCRUBHEAP,
        scrub_batch: 0,
        initially_dirty: false,
        memory: ScrubheapMemoryOps {
            ctx: std::ptr::null_mut(),
            zero: Some(zero),
            is_zero: Some(is_zero),
            copy: Some(copy),
        },
    };
    let mut raw = std::ptr::null_mut();
    // SAFETY: a valid config; the callbacks need no context.
    ok(unsafe { scrubheap_heap_new(&config, &mut raw) }, "new");
    raw
}

fn stats(h: *mut ScrubheapHeap) -> ScrubheapStats {
    let mut st = ScrubheapStats::default();
    // SAFETY: a live heap, a valid out pointer.
    ok(unsafe { scrubheap_stats(h, &mut st) }, "stats");
    st
}

/// Starts `op` on `[mfn, 2^order)` of `owner` and advances it to its end, yielding after
/// every step; returns its status and the preemption points it asked.
fn run_job(h: *mut ScrubheapHeap, op: u32, mfn: u64, order: u8, owner: u32) -> (ScrubheapStatus, u64) {
    let points = AtomicU64::new(0);
    let mut job = std::ptr::null_mut();
    // SAFETY: a live heap; the job is used by this thread alone and dropped here; the
    // preemption callback's context outlives the calls.
    unsafe {
        let s = scrubheap_range_start(h, op, mfn, order, owner, &mut job);
        if s != ScrubheapStatus::SCRUBHEAP_OK {
            return (s, 0);
        }
        let ctx = (&points as *const AtomicU64).cast_mut().cast();
        let mut done = ScrubheapJobDone::default();
        let s = loop {
            let s = scrubheap_job_advance(job, std::ptr::null(), None, Some(count_and_yield), ctx, &mut done);
            if s != ScrubheapStatus::SCRUBHEAP_PENDING {
                break s;
            }
        };
        ok(scrubheap_job_drop(job), "drop");
        (s, points.load(Relaxed))
    }
}

#[test]
fn a_sealed_range_of_many_chunks_goes_back_through_a_free_sealed_job() {
    let h = new_heap();
    // 256 sealed frames, one allocation each: 256 chunks, more than one call walks.
    let req = ScrubheapAllocRequest { order: 0, owner: 7, node: 0, flags: SCRUBHEAP_ALLOC_SEALED };
    let mut got = Vec::new();
    for _ in 0..256 {
        let mut e = ScrubheapExtent::default();
        // SAFETY: a live heap, valid pointers.
        ok(unsafe { scrubheap_alloc(h, &req, &mut e) }, "alloc");
        got.push(e.mfn);
    }
    got.sort_unstable();
    let first = got[0];
    assert!(first % 256 == 0 && got.iter().enumerate().all(|(i, &m)| m == first + i as u64), "one aligned run");
    let before = stats(h);
    assert_eq!(before.allocated, 256);
    // SAFETY: a live heap.
    let (whole, one) = unsafe { (scrubheap_free(h, first, 8, 7), scrubheap_free(h, first, 0, 7)) };
    assert_eq!(whole, ScrubheapStatus::SCRUBHEAP_E_TOO_MANY_CHUNKS);
    assert_eq!(one, ScrubheapStatus::SCRUBHEAP_E_SEALED, "{}", last_error());
    // The constant names the sealed free; on unsealed frames it is refused.
    let mut plain = ScrubheapExtent::default();
    let preq = ScrubheapAllocRequest { flags: 0, owner: 8, ..req };
    // SAFETY: a live heap, valid pointers.
    ok(unsafe { scrubheap_alloc(h, &preq, &mut plain) }, "alloc");
    let (s, _) = run_job(h, SCRUBHEAP_RANGE_FREE_SEALED, plain.mfn, 0, 8);
    assert_eq!(s, ScrubheapStatus::SCRUBHEAP_E_NOT_SEALED, "{}", last_error());
    let (s, _) = run_job(h, SCRUBHEAP_RANGE_FREE_SEALED + 1, first, 8, 7);
    assert_eq!(s, ScrubheapStatus::SCRUBHEAP_E_INVALID_ARG, "{}", last_error());
    assert_eq!(stats(h).allocated, 257, "refusals change nothing");
    // The job: 256 chunks marked, then freed, 64 a step, a preemption point between two.
    let (s, points) = run_job(h, SCRUBHEAP_RANGE_FREE_SEALED, first, 8, 7);
    ok(s, "free_sealed job");
    assert!(points >= 2 * 256 / 64 - 1, "{points} preemption points for 8 steps of 64 chunks");
    assert_eq!(stats(h).allocated, 1);
    // SAFETY: a live heap, destroyed once, no job left.
    unsafe {
        ok(scrubheap_free(h, plain.mfn, 0, 8), "free");
        ok(scrubheap_check_invariants(h), "invariants");
        ok(scrubheap_heap_destroy(h), "destroy");
    }
}
