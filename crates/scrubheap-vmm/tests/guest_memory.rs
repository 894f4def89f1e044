//! The `vm-memory` adapter as a VMM uses it, through `vm-memory`'s own API only: guest
//! memory in a layout with a hole, reads and writes across regions and the hole, clones
//! on device threads, and the guest's frames going back to the pool (dirty) only when the
//! last clone is dropped.

use scrubheap::DomId;
use scrubheap_host::guest::Guest;
use scrubheap_host::instrument::PreemptRecorder;
use scrubheap_host::pool::{Pool, PoolConfig};
use scrubheap_host::GuestOps;
use scrubheap_vmm::guest_memory::{
    pool_guest_memory, GuestLayout, GuestMemoryError, LayoutError, PoolGuestMemory, FOUR_GIB,
};
use std::sync::{mpsc, Arc, Barrier};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion, Permissions, VolatileMemory};

/// A pool without scrubber threads, so freed frames stay dirty where a test can see them.
fn pool(mib: u64) -> Pool {
    let cfg = PoolConfig { memory_bytes: mib << 20, hugetlb: false, scrubbers_per_node: 0, ..Default::default() };
    Pool::new(cfg).unwrap()
}

/// A guest of `bytes` (2 MiB extents, then 4 KiB ones).
fn guest(pool: &Pool, dom: u32, bytes: u64) -> Guest {
    pool.create_guest(DomId(dom), bytes, &PreemptRecorder::new(200_000)).unwrap().0
}

/// The memory of a new guest of `bytes`, guest-physical from 0.
fn from_zero(pool: &Pool, dom: u32, bytes: u64) -> PoolGuestMemory {
    pool_guest_memory(pool, guest(pool, dom, bytes), &GuestLayout::contiguous(GuestAddress(0), bytes).unwrap()).unwrap()
}

#[test]
fn a_guest_with_a_hole_below_4_gib_reads_and_writes_around_it() {
    let pool = pool(64);
    let bytes = (6 << 20) + 5 * 4096;
    let g = guest(&pool, 9, bytes);
    let extents = g.extents.clone();
    let hole = 3 << 20; // a small "PCI hole" from 3 MiB up to 4 GiB
    let layout = GuestLayout::x86_pci_hole(bytes, GuestAddress(hole)).unwrap();
    let mem = pool_guest_memory(&pool, g, &layout).unwrap();
    assert!(mem.num_regions() >= 2);
    assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), bytes);
    assert_eq!(mem.last_addr(), GuestAddress(FOUR_GIB + bytes - hole - 1));
    // RAM is where the layout says and nowhere else.
    assert!(GuestMemory::check_range(&mem, GuestAddress(0), hole as usize, Permissions::ReadWrite));
    assert!(GuestMemory::check_range(&mem, GuestAddress(FOUR_GIB), (bytes - hole) as usize, Permissions::ReadWrite));
    assert!(!GuestMemory::check_range(&mem, GuestAddress(hole - 8), 16, Permissions::Read), "the hole is not RAM");
    assert!(mem.find_region(GuestAddress(hole)).is_none());
    assert!(mem.read_obj::<u64>(GuestAddress(FOUR_GIB - 8)).is_err());
    assert!(mem.write_slice(&[1u8; 16], GuestAddress(hole - 8)).is_err(), "a write cannot span the hole");
    // The pool handed over zeroed frames.
    for s in GuestMemory::get_slices(&mem, GuestAddress(FOUR_GIB), (bytes - hole) as usize, Permissions::Read).unwrap()
    {
        let s = s.unwrap();
        let mut buf = vec![0xffu8; s.len()];
        s.copy_to(&mut buf[..]);
        assert!(buf.iter().all(|&b| b == 0));
    }
    // Words across every region boundary inside a RAM range.
    let inner: Vec<u64> = mem.iter().skip(1).map(|r| r.start_addr().0).filter(|&a| a != FOUR_GIB).collect();
    for (i, &a) in inner.iter().enumerate() {
        mem.write_obj(0xabc0_0000_u64 + i as u64, GuestAddress(a - 4)).unwrap();
        assert_eq!(mem.read_obj::<u64>(GuestAddress(a - 4)).unwrap(), 0xabc0_0000 + i as u64);
    }
    // Every byte of both ranges, written and read back in one slice each; then the
    // guest's frames hold it, every word.
    for &(base, len) in layout.ranges() {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
        mem.write_slice(&data, base).unwrap();
        let mut back = vec![0u8; data.len()];
        mem.read_slice(&mut back, base).unwrap();
        assert_eq!(back, data);
    }
    let nonzero: u64 = extents.iter().map(|e| pool.arena().count_nonzero_words(e.mfn, e.frames())).sum();
    assert_eq!(nonzero, bytes / 8);
    // And they go back to the pool dirty when the memory goes.
    drop(mem);
    let s = pool.heap().stats();
    assert_eq!((s.allocated, s.free_dirty), (0, bytes / 4096));
    pool.heap().check_invariants().unwrap();
}

#[test]
fn a_layout_from_another_base_and_with_several_ranges() {
    let pool = pool(32);
    let bytes = 4 << 20;
    let base = GuestAddress(0x8000_0000);
    let mem = pool_guest_memory(&pool, guest(&pool, 1, bytes), &GuestLayout::contiguous(base, bytes).unwrap()).unwrap();
    assert_eq!(mem.iter().next().unwrap().start_addr(), base);
    assert!(mem.read_obj::<u8>(GuestAddress(0)).is_err());
    mem.write_obj(7u32, GuestAddress(base.0 + bytes - 4)).unwrap();
    assert_eq!(mem.read_obj::<u32>(GuestAddress(base.0 + bytes - 4)).unwrap(), 7);
    drop(mem);
    // Three ranges of 1 MiB + 1 MiB + 2 MiB: a 2 MiB extent goes across two of them.
    let ranges =
        [(GuestAddress(0), 1 << 20), (GuestAddress(0x10_0000_0000), 1 << 20), (GuestAddress(1 << 40), 2 << 20)];
    let layout = GuestLayout::new(&ranges).unwrap();
    let mem = pool_guest_memory(&pool, guest(&pool, 2, bytes), &layout).unwrap();
    let starts: Vec<u64> = mem.iter().map(|r| r.start_addr().0).collect();
    assert!(ranges.iter().all(|r| starts.contains(&r.0 .0)), "each range starts a region: {starts:x?}");
    for &(b, n) in &ranges {
        mem.write_obj(0x55u8, GuestAddress(b.0 + n - 1)).unwrap();
        assert!(mem.read_obj::<u8>(GuestAddress(b.0 + n)).is_err());
    }
    drop(mem);
    assert_eq!(pool.heap().stats().allocated, 0);
}

#[test]
fn clones_on_device_threads_keep_the_guest_until_the_last_one_drops() {
    let pool = pool(32);
    let bytes = 8 << 20;
    let mem = from_zero(&pool, 3, bytes);
    let frames = bytes / 4096;
    let devices = 3;
    let start = Arc::new(Barrier::new(devices + 1));
    let (done_tx, done_rx) = mpsc::channel();
    let mut threads = Vec::new();
    for d in 0..devices {
        let (mem, start, done_tx) = (mem.clone(), start.clone(), done_tx.clone());
        threads.push(std::thread::spawn(move || {
            start.wait(); // the VMM has dropped its own reference by now
            let at = GuestAddress((d as u64 + 1) << 20);
            let buf: Vec<u8> = (0..64 << 10).map(|i| (i as u8) ^ d as u8).collect();
            mem.write_slice(&buf, at).unwrap();
            let mut back = vec![0u8; buf.len()];
            mem.read_slice(&mut back, at).unwrap();
            assert_eq!(back, buf);
            done_tx.send(d).unwrap();
            mem // dropped when joined
        }));
    }
    drop(mem);
    start.wait();
    for _ in 0..devices {
        done_rx.recv().unwrap();
    }
    // Every device finished with the memory but still holds its clone: still allocated.
    assert_eq!(pool.heap().stats().allocated, frames);
    let mut held: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let last = held.pop().unwrap();
    drop(held);
    assert_eq!(pool.heap().stats().allocated, frames, "one clone left");
    assert_eq!(last.read_obj::<u8>(GuestAddress((devices as u64) << 20)).unwrap(), (devices - 1) as u8);
    drop(last);
    let s = pool.heap().stats();
    assert_eq!((s.allocated, s.free_dirty), (0, frames));
}

#[test]
fn a_region_taken_out_of_the_memory_keeps_the_guest_alone() {
    let pool = pool(32);
    let bytes = 2 << 20;
    let mem = from_zero(&pool, 4, bytes);
    assert_eq!(mem.num_regions(), 1);
    let (rest, region) = mem.remove_region(GuestAddress(0), bytes).unwrap();
    assert_eq!(rest.num_regions(), 0);
    drop((mem, rest));
    assert_eq!(pool.heap().stats().allocated, bytes / 4096);
    let s = region.as_volatile_slice().unwrap();
    s.get_ref::<u64>(8).unwrap().store(0x1122);
    assert_eq!(s.get_ref::<u64>(8).unwrap().load(), 0x1122);
    drop(region);
    assert_eq!(pool.heap().stats().allocated, 0);
}

#[test]
fn the_pool_can_go_first() {
    let pool = pool(32);
    let bytes = 2 << 20;
    let mem = from_zero(&pool, 5, bytes);
    let heap_left = pool.handle();
    drop(pool);
    mem.write_obj(42u64, GuestAddress(bytes - 8)).unwrap();
    assert_eq!(mem.read_obj::<u64>(GuestAddress(bytes - 8)).unwrap(), 42);
    drop(mem);
    assert_eq!(heap_left.heap().stats().allocated, 0);
}

#[test]
fn bad_layouts_are_refused_with_the_reason_and_the_guest_comes_back() {
    let a = GuestAddress;
    assert_eq!(GuestLayout::new(&[]), Err(LayoutError::Empty));
    assert_eq!(GuestLayout::new(&[(a(0), 0)]), Err(LayoutError::EmptyRange { index: 0, base: 0 }));
    assert_eq!(
        GuestLayout::new(&[(a(0x800), 0x1000)]),
        Err(LayoutError::Unaligned { index: 0, base: 0x800, bytes: 0x1000 })
    );
    assert_eq!(GuestLayout::new(&[(a(0), 0x1800)]), Err(LayoutError::Unaligned { index: 0, base: 0, bytes: 0x1800 }));
    let top = u64::MAX - 0xfff;
    assert_eq!(
        GuestLayout::new(&[(a(top), 0x2000)]),
        Err(LayoutError::Overflow { index: 0, base: top, bytes: 0x2000 })
    );
    let overlap = [(a(0), 0x2000), (a(0x1000), 0x1000)];
    assert_eq!(GuestLayout::new(&overlap), Err(LayoutError::Unsorted { index: 1, base: 0x1000, prev_end: 0x2000 }));
    let many: Vec<_> = (0..65).map(|i| (a(i << 20), 0x1000)).collect();
    assert_eq!(GuestLayout::new(&many), Err(LayoutError::TooManyRanges { count: 65 }));
    for start in [0, FOUR_GIB + 0x1000, 0x1800] {
        assert_eq!(GuestLayout::x86_pci_hole(1 << 20, a(start)), Err(LayoutError::BadHole { start }));
    }
    assert!(GuestLayout::new(&[(a(0), 0x1000), (a(0x1000), 0x1000)]).is_ok(), "ranges may touch");
    // A layout of the wrong size: refused, the guest handed back as it was.
    let pool = pool(16);
    let g = guest(&pool, 6, 1 << 20);
    let before = g.extents.clone();
    let r = pool_guest_memory(&pool, g, &GuestLayout::contiguous(a(0), 2 << 20).unwrap()).unwrap_err();
    assert!(
        matches!(r.error, GuestMemoryError::Layout(LayoutError::SizeMismatch { layout, guest }) if layout == 2 << 20 && guest == 1 << 20)
    );
    assert!(r.to_string().contains("add up to the guest's memory"), "{r}");
    assert_eq!(r.guest.extents, before);
    assert_eq!(pool.heap().stats().allocated, 256);
    pool.destroy_guest(r.guest, &PreemptRecorder::new(200_000));
    assert_eq!(pool.heap().stats().allocated, 0);
}
