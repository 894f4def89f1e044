//! The adapters: `x86_64` frame allocation of every size over a heap, and `vm-memory`
//! guest memory over a pool guest's extents, read and written through `GuestMemory`.

use scrubheap::{DomId, Heap, HeapConfig, Mfn};
use scrubheap_host::instrument::PreemptRecorder;
use scrubheap_host::pool::{Pool, PoolConfig};
use scrubheap_host::GuestOps;
use scrubheap_host::{Arena, ArenaConfig, Kernel};
use scrubheap_vmm::frames::HeapFrames;
use scrubheap_vmm::guest_memory::guest_memory_mmap;
use scrubheap_vmm::slots::pool_slots;
use std::collections::HashSet;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion, Permissions, VolatileSlice};
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
    let large: Vec<PhysFrame<Size2MiB>> = (0..10).map(|_| fa.allocate_frame().unwrap()).collect();
    let huge: PhysFrame<Size1GiB> = fa.allocate_frame().unwrap();
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

#[test]
fn guest_memory_reads_and_writes_land_in_the_guests_frames() {
    let pool = Pool::new(PoolConfig { memory_bytes: 64 << 20, hugetlb: false, ..Default::default() }).unwrap();
    let rec = PreemptRecorder::new(200_000);
    // 2 MiB extents and 4 KiB ones: several regions.
    let bytes = (6 << 20) + 5 * 4096;
    let (guest, _) = pool.create_guest(DomId(9), bytes, &rec).unwrap();
    let slots = pool_slots(pool.arena(), &guest.extents);
    // SAFETY (of the test): `mem` is dropped before the guest is destroyed.
    let mem = unsafe { guest_memory_mmap(pool.arena(), &guest.extents) }.unwrap();
    assert_eq!(mem.num_regions(), slots.len());
    assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), bytes);
    assert_eq!(mem.last_addr(), GuestAddress(bytes - 1));
    assert!(GuestMemory::check_range(&mem, GuestAddress(0), bytes as usize, Permissions::ReadWrite));
    assert!(!GuestMemory::check_range(&mem, GuestAddress(0), bytes as usize + 1, Permissions::Read));
    // Everything reads zero (the pool scrubbed it), through `GuestMemory::get_slices`.
    let mut total = 0;
    for s in GuestMemory::get_slices(&mem, GuestAddress(0), bytes as usize, Permissions::Read).unwrap() {
        let s: VolatileSlice<'_, _> = s.unwrap();
        let mut buf = vec![0xffu8; s.len()];
        s.copy_to(&mut buf[..]);
        assert!(buf.iter().all(|&b| b == 0));
        total += s.len();
    }
    assert_eq!(total, bytes as usize);
    // Words at the start, across every region boundary and at the end.
    let mut addrs = vec![0, bytes - 8];
    addrs.extend(slots.iter().skip(1).map(|s| s.gpa - 4));
    for (i, &a) in addrs.iter().enumerate() {
        mem.write_obj(0xabc0_0000_u64 + i as u64, GuestAddress(a)).unwrap();
    }
    for (i, &a) in addrs.iter().enumerate() {
        assert_eq!(mem.read_obj::<u64>(GuestAddress(a)).unwrap(), 0xabc0_0000 + i as u64);
    }
    // A slice across the whole guest, then the words land in the arena's frames.
    let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8 + 1).collect();
    mem.write_slice(&data, GuestAddress(0)).unwrap();
    let mut back = vec![0u8; data.len()];
    mem.read_slice(&mut back, GuestAddress(0)).unwrap();
    assert_eq!(back, data);
    let frames: u64 = guest.extents.iter().map(|e| e.frames()).sum();
    let nonzero: u64 = guest.extents.iter().map(|e| pool.arena().count_nonzero_words(e.mfn, e.frames())).sum();
    assert_eq!(nonzero, frames * 512);
    assert!(mem.write_obj(1u64, GuestAddress(bytes)).is_err(), "past the end");
    drop(mem);
    pool.destroy_guest(guest, &rec);
    assert!(pool.wait_clean(std::time::Duration::from_secs(30)));
}
