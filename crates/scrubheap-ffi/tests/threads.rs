//! The thread-safety contract, exercised through the C ABI: builders on several threads
//! allocate through tickets and free while a scrubber thread runs scrub steps on the same
//! heap handle. No frame reaches an owner holding another owner's tag, and at the end
//! every frame is free and clean and the invariants hold.

use scrubheap_ffi::*;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

const NODE_FRAMES: u64 = 1024;
const FRAMES: u64 = 2 * NODE_FRAMES;
const BUILDERS: u32 = 3;
const ROUNDS: u32 = 400;
const KEEP: usize = 8;

/// One word per frame stands for its bytes: 0 is a zeroed frame, anything else an owner's tag.
struct Words(Vec<AtomicU64>);

fn words<'a>(ctx: *mut c_void) -> &'a Words {
    // SAFETY: every heap in this file is built with a context pointing at a Words that
    // outlives it.
    unsafe { &*ctx.cast::<Words>() }
}

unsafe extern "C" fn zero(ctx: *mut c_void, first: u64, count: u64) {
    words(ctx).0[first as usize..(first + count) as usize].iter().for_each(|w| w.store(0, Relaxed));
}
unsafe extern "C" fn is_zero(ctx: *mut c_void, first: u64, count: u64) -> bool {
    words(ctx).0[first as usize..(first + count) as usize].iter().all(|w| w.load(Relaxed) == 0)
}
unsafe extern "C" fn copy(ctx: *mut c_void, src: u64, dst: u64, count: u64) {
    let w = &words(ctx).0;
    for i in 0..count as usize {
        w[dst as usize + i].store(w[src as usize + i].load(Relaxed), Relaxed);
    }
}
unsafe extern "C" fn yield_now(_: *mut c_void) -> bool {
    true
}

/// The heap handle shared by the threads.
#[derive(Copy, Clone)]
struct Shared(*mut ScrubheapHeap);
// SAFETY: the crate's documented contract: a heap handle may be used from any number of
// threads at once; it is destroyed only after every thread has been joined.
unsafe impl Send for Shared {}
// SAFETY: as for Send.
unsafe impl Sync for Shared {}

fn ok(s: ScrubheapStatus, what: &str) {
    let mut buf = [0u8; 256];
    // SAFETY: buf has 256 writable bytes.
    let n = unsafe { scrubheap_last_error(buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(s, ScrubheapStatus::SCRUBHEAP_OK, "{what}: {}", String::from_utf8_lossy(&buf[..n.min(255)]));
}

/// One builder: allocate through tickets, check the frames are zero, tag them, free the oldest.
fn builder(h: Shared, mem: &Words, owner: u32) {
    let mut held: Vec<ScrubheapExtent> = Vec::new();
    for round in 0..ROUNDS {
        let req = ScrubheapAllocRequest { order: (round % 6) as u8, owner, node: round % 2, flags: 0 };
        let (mut e, mut t) = (ScrubheapExtent::default(), std::ptr::null_mut());
        // SAFETY: a live heap (the contract above), valid pointers; the ticket stays on
        // this thread and is dropped here.
        unsafe {
            let mut s = scrubheap_alloc_start(h.0, &req, &mut e, &mut t);
            if s == ScrubheapStatus::SCRUBHEAP_PENDING {
                while {
                    s = scrubheap_ticket_advance(t, Some(yield_now), std::ptr::null_mut(), &mut e);
                    s == ScrubheapStatus::SCRUBHEAP_PENDING
                } {}
                ok(scrubheap_ticket_drop(t), "drop");
            }
            ok(s, "alloc");
        }
        let range = e.mfn as usize..(e.mfn + (1 << e.order)) as usize;
        for w in &mem.0[range.clone()] {
            assert_eq!(w.load(Relaxed), 0, "owner {owner} got frame {:#x} holding a tag", e.mfn);
            w.store(owner as u64, Relaxed);
        }
        held.push(e);
        if held.len() > KEEP {
            let old = held.remove(0);
            // SAFETY: a live heap.
            ok(unsafe { scrubheap_free(h.0, old.mfn, old.order, owner) }, "free");
        }
    }
    for e in held {
        // SAFETY: a live heap.
        ok(unsafe { scrubheap_free(h.0, e.mfn, e.order, owner) }, "free");
    }
}

fn scrub_all(h: Shared) -> u64 {
    let mut total = 0;
    for node in [0, 1, 0, 1] {
        let mut z = 0;
        // SAFETY: a live heap; no preemption callback.
        ok(unsafe { scrubheap_scrub_step(h.0, node, 64, None, std::ptr::null_mut(), &mut z) }, "scrub");
        assert!(z <= 64);
        total += z;
    }
    total
}

#[test]
fn builders_and_a_scrubber_share_one_heap_handle() {
    let mem = Words((0..FRAMES).map(|_| AtomicU64::new(0xdead)).collect());
    let frames = [NODE_FRAMES, NODE_FRAMES];
    let config = ScrubheapConfig {
        frame_size: 4096,
        first_frame: 0,
        node_count: 2,
        node_frames: frames.as_ptr(),
        movable_from: SCRUBHEAP_NO_MOVABLE,
        policy: SCRUBHEAP_POLICY_SCRUBHEAP,
        scrub_batch: 8,
        initially_dirty: true,
        memory: ScrubheapMemoryOps {
            ctx: (&mem as *const Words).cast_mut().cast(),
            zero: Some(zero),
            is_zero: Some(is_zero),
            copy: Some(copy),
        },
    };
    let mut raw = std::ptr::null_mut();
    // SAFETY: a valid config whose frames and memory outlive the heap.
    ok(unsafe { scrubheap_heap_new(&config, &mut raw) }, "new");
    let h = Shared(raw);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Relaxed) {
                scrub_all(h);
            }
        });
        let builders: Vec<_> = (1..=BUILDERS)
            .map(|o| {
                s.spawn({
                    let mem = &mem;
                    move || builder(h, mem, o)
                })
            })
            .collect();
        builders.into_iter().for_each(|b| b.join().expect("builder"));
        done.store(true, Relaxed);
    });
    while scrub_all(h) > 0 {}
    let mut st = ScrubheapStats::default();
    // SAFETY: a live heap, used by this thread alone now; destroyed once.
    unsafe {
        ok(scrubheap_stats(h.0, &mut st), "stats");
        assert_eq!((st.free_clean, st.free_dirty, st.allocated), (FRAMES, 0, 0), "{st:?}");
        assert!(st.scrubbed_background > 0 && st.scrubbed_in_place > 0, "{st:?}");
        ok(scrubheap_check_invariants(h.0), "invariants");
        ok(scrubheap_heap_destroy(h.0), "destroy");
    }
    assert!(mem.0.iter().all(|w| w.load(Relaxed) == 0), "a frame left unzeroed");
}
