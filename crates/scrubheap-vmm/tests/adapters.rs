//! The `x86_64` adapter: frame allocation of every size over a heap (the `vm-memory`
//! adapter is tested in `guest_memory.rs`).

use scrubheap::{DomId, Heap, HeapConfig, HeapError, Mfn};
use scrubheap_host::{Arena, ArenaConfig, Kernel};
use scrubheap_vmm::frames::HeapFrames;
use std::collections::HashSet;
use x86_64::structures::paging::{FrameAllocator, FrameDeallocator, PageSize, PhysFrame, Size1GiB, Size2MiB, Size4KiB};

/// 2 GiB of 4 KiB frames over a real arena, dirty at the start (every frame holds a
/// pattern the heap must scrub before handing it out).
fn heap() -> Heap<Arena> {
    let frames = 1u64 << 19;
    let arena =
        Arena::new(ArenaConfig::new(Mfn(0), frames, 4096).with_hugetlb(false).with_kernel(Kernel::WriteBytes)).unwrap();
    arena.fill(Mfn(0), frames, 0x5555);
    Heap::new(HeapConfig::uniform(2, frames / 2).with_initially_dirty(true), arena).unwrap()
}

fn frame_range<S: PageSize>(f: PhysFrame<S>) -> (u64, u64) {
    (f.start_address().as_u64() / 4096, S::SIZE / 4096)
}

#[test]
fn frames_of_every_size_come_scrubbed_aligned_and_distinct_and_go_back() {
    let heap = heap();
    let mut fa = HeapFrames::new(&heap, DomId(3)).on(1);
    let small: Vec<PhysFrame<Size4KiB>> = (0..100).map(|_| fa.allocate_frame().unwrap()).collect();
    // Every larger frame is dirty and larger than one batch: the FrameAllocator impls,
    // which cannot yield, refuse it rather than scrub it with no preemption point...
    assert!(FrameAllocator::<Size2MiB>::allocate_frame(&mut fa).is_none());
    assert!(matches!(fa.try_allocate::<Size1GiB>(), Err(HeapError::NeedsScrubTicket { frames: 262144, .. })));
    assert_eq!(heap.stats().allocated, 100, "a refusal changes nothing");
    // ...and the preemptible path scrubs it a batch at a time.
    let never = || false;
    let preemptible = |fa: &mut HeapFrames<'_, Arena>| fa.try_allocate_preemptible(&never).unwrap().unwrap();
    let large: Vec<PhysFrame<Size2MiB>> = (0..10).map(|_| preemptible(&mut fa)).collect();
    let huge: PhysFrame<Size1GiB> = fa.try_allocate_preemptible(&never).unwrap().unwrap();
    let mut ranges: Vec<(u64, u64)> = small.iter().map(|&f| frame_range(f)).collect();
    ranges.extend(large.iter().map(|&f| frame_range(f)));
    ranges.push(frame_range(huge));
    let mut seen = HashSet::new();
    for &(first, n) in &ranges {
        assert_eq!(first % n, 0, "naturally aligned");
        assert!(heap.memory().is_zero_range(first, n), "scrubbed before handoff");
        for f in first..first + n {
            assert!(seen.insert(f), "frame {f} handed out twice");
        }
    }
    let held = 100 + 10 * 512 + (1 << 18);
    assert_eq!(heap.stats().allocated, held);
    // A second 1 GiB frame does not fit on the node with the first (each node is 1 GiB),
    // so it comes from the other one, or not at all.
    let other = FrameAllocator::<Size1GiB>::allocate_frame(&mut fa);
    assert!(other.is_some_and(|f| f != huge) || other.is_none());
    if let Some(f) = other {
        fa.try_deallocate(f).unwrap();
    }
    // Freeing at the wrong size is refused and changes nothing.
    assert!(fa.try_deallocate(PhysFrame::<Size2MiB>::containing_address(small[0].start_address())).is_err());
    assert!(HeapFrames::new(&heap, DomId(4)).try_deallocate(small[0]).is_err());
    assert_eq!(heap.stats().allocated, held);
    // SAFETY (of the test): every frame came from `fa` and nothing uses it.
    unsafe {
        for f in small {
            fa.deallocate_frame(f);
        }
        for f in large {
            fa.deallocate_frame(f);
        }
        fa.deallocate_frame(huge);
    }
    assert_eq!(heap.stats().allocated, 0);
    heap.check_invariants().unwrap();
}

trait ZeroRange {
    fn is_zero_range(&self, first: u64, n: u64) -> bool;
}

impl ZeroRange for Arena {
    fn is_zero_range(&self, first: u64, n: u64) -> bool {
        self.count_nonzero_words(Mfn(first), n) == 0
    }
}
