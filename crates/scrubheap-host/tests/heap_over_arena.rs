//! The heap driving real memory: whatever the kernel, scrubbing leaves every dirty byte
//! zero and no owner's bytes reach the next owner.

use scrubheap::{AllocRequest, DomId, FrameMemory, Heap, HeapConfig, Mfn, NeverPreempt};
use scrubheap_host::{Arena, ArenaConfig, Kernel};

const F: usize = 4096;

fn arena(base: u64, frames: u64, k: Kernel) -> Arena {
    Arena::new(ArenaConfig::new(Mfn(base), frames, F).with_kernel(k).with_prefault_threads(2)).expect("arena maps")
}

#[test]
fn scrubbing_an_initially_dirty_heap_zeroes_every_frame_with_each_kernel() {
    // An odd frame count: the heap's chunks are not all one size.
    let frames = 3 * 1024 + 77;
    for k in Kernel::available() {
        let a = arena(0, frames, k);
        a.fill(a.base(), frames, 0x0bad_f00d_0bad_f00d);
        let heap = Heap::new(HeapConfig::uniform(1, frames).with_initially_dirty(true), &a).unwrap();
        assert_eq!(heap.stats().free_dirty, frames);
        let mut total = 0;
        loop {
            let z = heap.scrub_step(0, 300, &NeverPreempt).unwrap();
            if z == 0 {
                break;
            }
            total += z;
        }
        assert_eq!(total, frames, "{k}");
        assert_eq!(heap.stats().free_dirty, 0, "{k}");
        assert_eq!(a.count_nonzero_words(a.base(), frames), 0, "{k} left dirty words");
        heap.check_invariants().unwrap();
    }
}

#[test]
fn two_threads_scrubbing_one_node_leave_it_all_zero() {
    let frames = 8192;
    let a = arena(0x10000, frames, Kernel::available()[0]);
    a.fill(a.base(), frames, u64::MAX);
    let mut cfg = HeapConfig::uniform(1, frames).with_initially_dirty(true);
    cfg.first = Mfn(0x10000);
    cfg.scrub_batch = 64;
    let heap = Heap::new(cfg, &a).unwrap();
    let done: u64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0;
                    while let z @ 1.. = heap.scrub_step(0, 512, &NeverPreempt).unwrap() {
                        n += z;
                    }
                    n
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(done, frames);
    assert!(a.is_zero(a.base(), frames));
    heap.check_invariants().unwrap();
}

#[test]
fn a_freed_owners_bytes_never_reach_the_next_owner() {
    let frames = 4096;
    let a = arena(0, frames, Kernel::available()[0]);
    let heap = Heap::new(HeapConfig::uniform(2, frames / 2), &a).unwrap();
    // Owner 1 takes memory, writes its tag, frees it; in verify mode the freer poisons.
    let e = heap.alloc(&AllocRequest::new(9, DomId(1)).exact(1)).unwrap();
    a.fill(e.mfn, e.frames(), 0x1111);
    heap.free(e.mfn, 9, DomId(1)).unwrap();
    a.poison(e.mfn, e.frames());
    // Owner 2 asks for all of node 1: it must get scrubbed memory, dirty or not (a dirty
    // 2 MiB chunk, more than one batch, is scrubbed through a ticket).
    let mut got = Vec::new();
    while let Ok(Some(x)) = heap.alloc_preemptible(&AllocRequest::new(9, DomId(2)).exact(1), &NeverPreempt) {
        got.push(x);
    }
    assert_eq!(got.iter().map(|x| x.frames()).sum::<u64>(), frames / 2);
    for x in &got {
        assert_eq!(a.count_nonzero_words(x.mfn, x.frames()), 0, "dom2 got non-zero frames at {}", x.mfn);
        assert_eq!(a.sample_nonzero(x.mfn, x.frames(), 8), 0);
        assert!(a.is_zero(x.mfn, x.frames()));
    }
    heap.check_invariants().unwrap();
}

#[test]
fn copy_through_the_trait() {
    let a = arena(0, 16, Kernel::WriteBytes);
    a.fill(Mfn(2), 1, 42);
    FrameMemory::copy(&a, Mfn(2), Mfn(9), 1);
    assert_eq!(a.count_nonzero_words(Mfn(9), 1), 512);
    assert!(FrameMemory::is_zero(&a, Mfn(10), 6));
}
