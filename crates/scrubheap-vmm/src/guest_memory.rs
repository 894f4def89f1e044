//! For rust-vmm based VMMs: a `vm-memory` [`GuestMemoryMmap`] over a guest's extents in
//! the pool's arena (feature `vm-memory`), one region per KVM slot (guest-physical from 0,
//! host-contiguous extents merged, as [`crate::slots`] lays them out).
//!
//! ```
//! use scrubheap::DomId;
//! use scrubheap_host::instrument::PreemptRecorder;
//! use scrubheap_host::pool::{Pool, PoolConfig};
//! use scrubheap_host::GuestOps;
//! use scrubheap_vmm::guest_memory::guest_memory_mmap;
//! use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
//!
//! let pool = Pool::new(PoolConfig { memory_bytes: 16 << 20, hugetlb: false, ..Default::default() }).unwrap();
//! let rec = PreemptRecorder::new(200_000);
//! let (guest, _) = pool.create_guest(DomId(1), 8 << 20, &rec).unwrap();
//! // SAFETY (of the example): `mem` is dropped before the guest is destroyed.
//! let mem = unsafe { guest_memory_mmap(pool.arena(), &guest.extents) }.unwrap();
//! assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), 8 << 20);
//! mem.write_obj(0x1234_5678_u64, GuestAddress(0x10_0000)).unwrap();
//! assert_eq!(mem.read_obj::<u64>(GuestAddress(0x10_0000)).unwrap(), 0x1234_5678);
//! drop(mem);
//! pool.destroy_guest(guest, &rec);
//! ```

use crate::slots::pool_slots;
use scrubheap::Extent;
use scrubheap_host::Arena;
use vm_memory::mmap::MmapRegionError;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionCollectionError, GuestRegionMmap, MmapRegion};

/// Why the memory could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GuestMemoryError {
    /// A region was refused.
    #[error("a guest memory region was refused: {0}")]
    Region(#[from] MmapRegionError),
    /// The regions do not form guest memory.
    #[error("the guest's regions do not form guest memory: {0}")]
    Collection(#[from] GuestRegionCollectionError),
    /// The guest has no memory.
    #[error("the guest has no extents")]
    Empty,
}

/// Guest memory over `extents` (all in `arena`): guest-physical from 0, in the order and
/// with the regions a KVM guest of this VMM gets.
///
/// # Safety
/// The extents must be allocated to one guest, and stay allocated (and `arena` alive)
/// until the returned memory and every clone of it or of its regions are dropped; while
/// they live, only this memory (and a VM it is given to) may touch the extents' bytes.
pub unsafe fn guest_memory_mmap(arena: &Arena, extents: &[Extent]) -> Result<GuestMemoryMmap, GuestMemoryError> {
    let slots = pool_slots(arena, extents);
    if slots.is_empty() {
        return Err(GuestMemoryError::Empty);
    }
    let mut regions = Vec::with_capacity(slots.len());
    for s in slots {
        // SAFETY: `[host, host + bytes)` is frames of the arena's read-write private
        // anonymous mapping (`Arena::host_ptr`, which `pool_slots` calls, asserts they are inside it), page aligned; the
        // caller keeps them allocated to this guest and the arena mapped while the region
        // lives. A raw region does not unmap on drop.
        let region = unsafe {
            MmapRegion::build_raw(
                s.host as *mut u8,
                s.bytes as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            )
        }?;
        regions.push(GuestRegionMmap::new(region, GuestAddress(s.gpa)).expect("guest-physical addresses fit in u64"));
    }
    Ok(GuestMemoryMmap::from_regions(regions)?)
}
