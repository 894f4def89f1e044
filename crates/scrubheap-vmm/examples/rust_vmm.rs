//! What a rust-vmm VMM does with a pool guest, without `unsafe`: lays its RAM out around
//! an x86 PCI hole, loads a "kernel" and boot parameters, hands clones of the memory to a
//! device thread that DMAs into guest buffers (some across regions, some above 4 GiB),
//! and tears the VM down while the device is still busy: the guest's frames go back to
//! the pool only when the device drops its clone.
//!
//!     cargo run --release -p scrubheap-vmm --example rust_vmm

use scrubheap::DomId;
use scrubheap_host::instrument::PreemptRecorder;
use scrubheap_host::pool::{Pool, PoolConfig};
use scrubheap_host::GuestOps;
use scrubheap_vmm::guest_memory::{pool_guest_memory, GuestLayout, PoolGuestMemory, FOUR_GIB};
use std::sync::mpsc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

const MIB: u64 = 1 << 20;

/// A block device: each request is "read `len` bytes of sector data into guest memory at
/// `gpa`"; it answers with the request's checksum as the guest would read it back.
fn block_device(mem: PoolGuestMemory, requests: mpsc::Receiver<(u64, usize)>, done: mpsc::Sender<u64>) {
    for (gpa, len) in requests {
        let data: Vec<u8> = (0..len).map(|i| (gpa as usize + i) as u8 | 1).collect();
        mem.write_slice(&data, GuestAddress(gpa)).expect("the driver gave a buffer in RAM");
        let mut back = vec![0u8; len];
        mem.read_slice(&mut back, GuestAddress(gpa)).expect("the same buffer reads back");
        done.send(back.iter().map(|&b| b as u64).sum()).expect("the VMM listens");
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = Pool::new(PoolConfig { memory_bytes: 256 * MIB, hugetlb: false, ..Default::default() })?;
    let rec = PreemptRecorder::new(200_000);
    // Other tenants came and half of them went: the pool's free memory is in pieces.
    let mut others = Vec::new();
    for d in 0..32 {
        others.push(pool.create_guest(DomId(100 + d), 2 * MIB, &rec)?.0);
    }
    let (gone, others): (Vec<_>, Vec<_>) = others.into_iter().partition(|g| g.dom.0 % 2 == 1);
    for g in gone {
        pool.destroy_guest(g, &rec);
    }
    assert!(pool.wait_clean(std::time::Duration::from_secs(30)), "the scrubbers caught up");
    let bytes = 128 * MIB;
    let (guest, _) = pool.create_guest(DomId(1), bytes, &rec)?;
    let frames: u64 = guest.extents.iter().map(|e| e.frames()).sum();
    // A scaled-down PCI hole: RAM below 96 MiB, the rest from 4 GiB (a real guest would
    // put the hole at 3 GiB; `GuestLayout::new` takes any ranges).
    let layout = GuestLayout::x86_pci_hole(bytes, GuestAddress(96 * MIB))?;
    let mem = pool_guest_memory(&pool, guest, &layout)?;
    println!("guest RAM: {frames} frames in {} regions; the layout's RAM ranges:", mem.num_regions());
    for &(base, len) in layout.ranges() {
        println!("  e820 RAM {:#012x}..{:#012x}", base.0, base.0 + len);
    }
    // "Kernel" at 1 MiB, a boot parameter block at 0x7000 naming the RAM ranges.
    mem.write_slice(&[0x90u8; 64 << 10], GuestAddress(MIB))?;
    for (i, &(base, len)) in layout.ranges().iter().enumerate() {
        mem.write_obj(base.0, GuestAddress(0x7000 + 16 * i as u64))?;
        mem.write_obj(len, GuestAddress(0x7008 + 16 * i as u64))?;
    }
    let (req_tx, req_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let device_mem = mem.clone();
    let device = std::thread::spawn(move || block_device(device_mem, req_rx, done_tx));
    // Buffers straddling the first region boundaries, and one above the hole.
    let regions: Vec<(u64, u64)> = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
    let inner = regions.windows(2).filter(|w| w[0].0 + w[0].1 == w[1].0).map(|w| w[1].0 - 2048);
    let mut buffers: Vec<u64> = inner.collect();
    buffers.push(FOUR_GIB + 4 * MIB);
    for &gpa in &buffers {
        req_tx.send((gpa, 4096))?;
        let sum = done_rx.recv()?;
        let guest_view: u64 =
            (0..4096).map(|i| mem.read_obj::<u8>(GuestAddress(gpa + i)).map(u64::from)).sum::<Result<_, _>>()?;
        assert_eq!(sum, guest_view, "the guest sees what the device wrote");
    }
    println!(
        "device wrote {} buffers of 4 KiB ({} across region boundaries, one above 4 GiB)",
        buffers.len(),
        buffers.len() - 1
    );
    // The VMM tears the VM down; the device still holds its clone and one request is queued.
    drop(mem);
    req_tx.send((2 * MIB, 4096))?;
    let s = pool.heap().stats();
    println!("VM torn down, device busy: allocated {} frames (the guest's and the other tenants')", s.allocated);
    assert_eq!(s.allocated, frames + 16 * 2 * MIB / 4096);
    drop(req_tx);
    device.join().expect("the device thread finished");
    assert_eq!(done_rx.iter().count(), 1);
    let s = pool.heap().stats();
    println!("device gone: allocated {} frames (the other tenants' only)", s.allocated);
    assert_eq!(s.allocated, 16 * 2 * MIB / 4096);
    for g in others {
        pool.destroy_guest(g, &rec);
    }
    assert_eq!(pool.heap().stats().allocated, 0);
    Ok(())
}
