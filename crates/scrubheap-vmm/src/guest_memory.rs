//! For rust-vmm based VMMs: `vm-memory` guest memory over a pool guest's extents
//! (feature `vm-memory`), laid out in guest-physical RAM ranges the VMM chooses
//! ([`GuestLayout`]: from 0, from another base, or around x86's PCI hole below 4 GiB).
//!
//! The memory owns the guest: every region holds a shared lease on it, and the lease's
//! last drop (of the memory, of every clone, of every region a device thread kept) gives
//! the guest's frames back to the pool, dirty, to be scrubbed there. Safe code cannot
//! reach frames that were freed or handed to someone else, and the VMM has no `unsafe`
//! promise to keep. (Whoever holds the pool can still free or move any owner's frames
//! by naming that owner's `DomId` to the heap: the owner id is the heap's capability.
//! A VMM that does so to a guest it leased breaks its own guest, but not memory
//! safety: the arena stays mapped while any region lives, and every access through a
//! region is volatile.)
//!
//! ```
//! use scrubheap::DomId;
//! use scrubheap_host::instrument::PreemptRecorder;
//! use scrubheap_host::pool::{Pool, PoolConfig};
//! use scrubheap_host::GuestOps;
//! use scrubheap_vmm::guest_memory::{pool_guest_memory, GuestLayout};
//! use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
//!
//! let pool = Pool::new(PoolConfig { memory_bytes: 16 << 20, hugetlb: false, ..Default::default() }).unwrap();
//! let rec = PreemptRecorder::new(200_000);
//! let (guest, _) = pool.create_guest(DomId(1), 8 << 20, &rec).unwrap();
//! // 6 MiB below a (small) hole at 6 MiB, the other 2 MiB from 4 GiB.
//! let layout = GuestLayout::x86_pci_hole(8 << 20, GuestAddress(6 << 20)).unwrap();
//! let mem = pool_guest_memory(&pool, guest, &layout).unwrap();
//! assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), 8 << 20);
//! mem.write_obj(0x1234_5678_u64, GuestAddress(1 << 32)).unwrap();
//! assert_eq!(mem.read_obj::<u64>(GuestAddress(1 << 32)).unwrap(), 0x1234_5678);
//! assert!(mem.read_obj::<u64>(GuestAddress(6 << 20)).is_err(), "the hole is not memory");
//! drop(mem); // the last reference: the guest's frames go back to the pool
//! assert_eq!(pool.heap().stats().allocated, 0);
//! ```

use crate::slots::{host_ranges, place};
use scrubheap_host::guest::Guest;
use scrubheap_host::instrument::PreemptRecorder;
use scrubheap_host::pool::{Pool, PoolHandle};
use scrubheap_host::GuestTeardown;
use std::fmt;
use std::sync::Arc;
use vm_memory::bitmap::BS;
use vm_memory::mmap::MmapRegionError;
use vm_memory::{
    GuestAddress, GuestMemoryError as VmError, GuestMemoryRegion, GuestMemoryRegionBytes, GuestRegionCollection,
    GuestRegionCollectionError, GuestRegionMmap, GuestUsize, MemoryRegionAddress, MmapRegion, VolatileSlice,
};

/// Guest-physical ranges are multiples of this (the smallest page a VMM maps).
pub const LAYOUT_ALIGN: u64 = 4096;

/// At most this many RAM ranges in a layout.
pub const MAX_LAYOUT_RANGES: usize = 64;

/// 4 GiB: where x86 RAM above the PCI hole resumes.
pub const FOUR_GIB: u64 = 1 << 32;

/// Why a layout was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// No ranges.
    #[error("a guest memory layout needs at least one RAM range")]
    Empty,
    /// Too many ranges.
    #[error("{count} RAM ranges: a layout holds at most {MAX_LAYOUT_RANGES}")]
    TooManyRanges {
        /// Ranges given.
        count: usize,
    },
    /// A range of no bytes.
    #[error("RAM range {index} at {base:#x} is empty: leave it out")]
    EmptyRange {
        /// Its position.
        index: usize,
        /// Its base.
        base: u64,
    },
    /// A range not on 4 KiB boundaries.
    #[error("RAM range {index} at {base:#x} of {bytes:#x} bytes: base and length must be multiples of 4 KiB")]
    Unaligned {
        /// Its position.
        index: usize,
        /// Its base.
        base: u64,
        /// Its length.
        bytes: u64,
    },
    /// A range past the end of the 64-bit guest-physical space.
    #[error("RAM range {index} at {base:#x} of {bytes:#x} bytes runs past the end of guest-physical memory")]
    Overflow {
        /// Its position.
        index: usize,
        /// Its base.
        base: u64,
        /// Its length.
        bytes: u64,
    },
    /// A range starting before the one before it ends.
    #[error("RAM range {index} starts at {base:#x}, before range {} ends at {prev_end:#x}: sort the ranges by address, without overlap", index - 1)]
    Unsorted {
        /// Its position.
        index: usize,
        /// Its base.
        base: u64,
        /// End (exclusive) of the range before it.
        prev_end: u64,
    },
    /// The hole of an x86 layout does not end at 4 GiB.
    #[error("an x86 PCI hole starting at {start:#x} must start above 0, at most at 4 GiB, on a 4 KiB boundary")]
    BadHole {
        /// Where the hole was asked to start.
        start: u64,
    },
    /// The layout does not hold exactly the guest's memory.
    #[error(
        "the layout holds {layout} bytes but the guest has {guest}: make the RAM ranges add up to the guest's memory"
    )]
    SizeMismatch {
        /// Bytes of the layout.
        layout: u64,
        /// Bytes of the guest.
        guest: u64,
    },
}

/// Where a guest's RAM sits in guest-physical memory: ranges `(base, bytes)` sorted by
/// address, disjoint, on 4 KiB boundaries. The guest's extents fill them in order,
/// largest extents first (so 1 GiB and 2 MiB extents stay aligned where the ranges
/// are).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestLayout {
    ranges: Vec<(GuestAddress, u64)>,
}

impl GuestLayout {
    /// A layout of the given RAM ranges, validated.
    ///
    /// ```
    /// use scrubheap_vmm::guest_memory::{GuestLayout, LayoutError};
    /// use vm_memory::GuestAddress;
    /// let l = GuestLayout::new(&[(GuestAddress(0), 0x10_0000), (GuestAddress(0x20_0000), 0x1000)]).unwrap();
    /// assert_eq!(l.bytes(), 0x10_1000);
    /// let e = GuestLayout::new(&[(GuestAddress(0x2000), 0x1000), (GuestAddress(0), 0x1000)]);
    /// assert_eq!(e, Err(LayoutError::Unsorted { index: 1, base: 0, prev_end: 0x3000 }));
    /// ```
    pub fn new(ranges: &[(GuestAddress, u64)]) -> Result<GuestLayout, LayoutError> {
        if ranges.is_empty() {
            return Err(LayoutError::Empty);
        }
        if ranges.len() > MAX_LAYOUT_RANGES {
            return Err(LayoutError::TooManyRanges { count: ranges.len() });
        }
        let mut prev_end = 0;
        for (index, &(GuestAddress(base), bytes)) in ranges.iter().enumerate() {
            if bytes == 0 {
                return Err(LayoutError::EmptyRange { index, base });
            }
            if !base.is_multiple_of(LAYOUT_ALIGN) || !bytes.is_multiple_of(LAYOUT_ALIGN) {
                return Err(LayoutError::Unaligned { index, base, bytes });
            }
            let Some(end) = base.checked_add(bytes) else {
                return Err(LayoutError::Overflow { index, base, bytes });
            };
            if index > 0 && base < prev_end {
                return Err(LayoutError::Unsorted { index, base, prev_end });
            }
            prev_end = end;
        }
        let layout = GuestLayout { ranges: ranges.to_vec() };
        debug_assert!(layout.bytes() >= LAYOUT_ALIGN * ranges.len() as u64);
        Ok(layout)
    }

    /// `bytes` of RAM in one range from `base`.
    pub fn contiguous(base: GuestAddress, bytes: u64) -> Result<GuestLayout, LayoutError> {
        GuestLayout::new(&[(base, bytes)])
    }

    /// x86 with a hole for PCI devices from `hole_start` up to 4 GiB: RAM from 0 up to
    /// the hole, the rest of `bytes` from 4 GiB.
    ///
    /// ```
    /// use scrubheap_vmm::guest_memory::GuestLayout;
    /// use vm_memory::GuestAddress;
    /// let l = GuestLayout::x86_pci_hole(4 << 30, GuestAddress(3 << 30)).unwrap();
    /// assert_eq!(l.ranges(), [(GuestAddress(0), 3 << 30), (GuestAddress(4 << 30), 1 << 30)]);
    /// ```
    pub fn x86_pci_hole(bytes: u64, hole_start: GuestAddress) -> Result<GuestLayout, LayoutError> {
        let start = hole_start.0;
        if start == 0 || start > FOUR_GIB || !start.is_multiple_of(LAYOUT_ALIGN) {
            return Err(LayoutError::BadHole { start });
        }
        let below = bytes.min(start);
        let mut ranges = vec![(GuestAddress(0), below)];
        if bytes > below {
            ranges.push((GuestAddress(FOUR_GIB), bytes - below));
        }
        GuestLayout::new(&ranges)
    }

    /// The RAM ranges `(base, bytes)`, by address.
    pub fn ranges(&self) -> &[(GuestAddress, u64)] {
        &self.ranges
    }

    /// Bytes of RAM in all ranges.
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.1).sum()
    }
}

/// Why guest memory could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GuestMemoryError {
    /// The layout does not fit the guest.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The guest has no memory.
    #[error("the guest has no extents")]
    Empty,
    /// `vm-memory` refused a region.
    #[error("a guest memory region was refused: {0}")]
    Region(#[from] MmapRegionError),
    /// `vm-memory` refused the regions together.
    #[error("the guest's regions do not form guest memory: {0}")]
    Collection(#[from] GuestRegionCollectionError),
}

/// Guest memory was refused; the guest comes back unchanged, still allocated.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Refused {
    /// Why.
    pub error: GuestMemoryError,
    /// The guest, to use otherwise or destroy.
    pub guest: Guest,
}

/// A guest held on behalf of every region over its memory; dropped with the last one.
struct Lease {
    pool: PoolHandle,
    guest: Option<Guest>,
    quantum_ns: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(g) = self.guest.take() {
            let rec = PreemptRecorder::new(self.quantum_ns);
            self.pool.destroy_guest(g, &rec);
        }
    }
}

/// One region of a pool guest's memory: a `vm-memory` mmap region over frames of the
/// pool's arena, and a share of the lease that keeps those frames allocated to the
/// guest and the arena mapped.
pub struct PoolRegion {
    region: GuestRegionMmap,
    lease: Arc<Lease>,
}

impl fmt::Debug for PoolRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dom = self.lease.guest.as_ref().map(|g| g.dom);
        f.debug_struct("PoolRegion")
            .field("dom", &dom)
            .field("start", &self.region.start_addr())
            .field("len", &self.region.len())
            .finish()
    }
}

impl GuestMemoryRegion for PoolRegion {
    type B = ();

    fn len(&self) -> GuestUsize {
        self.region.len()
    }

    fn start_addr(&self) -> GuestAddress {
        self.region.start_addr()
    }

    fn bitmap(&self) -> BS<'_, ()> {
        self.region.bitmap()
    }

    fn get_host_address(&self, addr: MemoryRegionAddress) -> Result<*mut u8, VmError> {
        self.region.get_host_address(addr)
    }

    fn get_slice(&self, offset: MemoryRegionAddress, count: usize) -> Result<VolatileSlice<'_, BS<'_, ()>>, VmError> {
        self.region.get_slice(offset, count)
    }

    #[cfg(target_os = "linux")]
    fn is_hugetlbfs(&self) -> Option<bool> {
        self.region.is_hugetlbfs()
    }
}

impl GuestMemoryRegionBytes for PoolRegion {}

/// A pool guest's memory, as `vm-memory`'s `GuestMemory` and `Bytes`; clone it freely
/// (device threads, vhost backends): the guest is destroyed when the last clone and the
/// last region taken from it are dropped.
pub type PoolGuestMemory = GuestRegionCollection<PoolRegion>;

/// Builds `guest`'s memory in `layout` (whose bytes must be the guest's) and hands the
/// guest to it: its frames go back to `pool` when the last clone of the memory, and of
/// any of its regions, is dropped. On refusal the guest comes back in [`Refused`].
pub fn pool_guest_memory(pool: &Pool, guest: Guest, layout: &GuestLayout) -> Result<PoolGuestMemory, Refused> {
    let regions = match mmap_regions(pool, &guest, layout) {
        Ok(r) => r,
        Err(error) => return Err(Refused { error, guest }),
    };
    let lease = Arc::new(Lease { pool: pool.handle(), guest: Some(guest), quantum_ns: pool.config().quantum_ns });
    let n = regions.len();
    let shared = regions.into_iter().map(|region| PoolRegion { region, lease: lease.clone() });
    match PoolGuestMemory::from_regions(shared.collect()) {
        Ok(mem) => {
            assert_eq!(Arc::strong_count(&lease), n + 1, "every region holds the lease");
            Ok(mem)
        }
        Err(e) => {
            let mut lease = Arc::into_inner(lease).expect("the refused regions were dropped");
            let guest = lease.guest.take().expect("the lease holds the guest until dropped");
            Err(Refused { error: e.into(), guest })
        }
    }
}

/// The raw (non-owning) mmap regions over `guest`'s frames, placed in `layout`.
fn mmap_regions(pool: &Pool, guest: &Guest, layout: &GuestLayout) -> Result<Vec<GuestRegionMmap>, GuestMemoryError> {
    if guest.extents.is_empty() {
        return Err(GuestMemoryError::Empty);
    }
    let arena = pool.arena();
    let ranges = host_ranges(arena, &guest.extents);
    let guest_bytes: u64 = ranges.iter().map(|r| r.1).sum();
    if layout.bytes() != guest_bytes {
        return Err(LayoutError::SizeMismatch { layout: layout.bytes(), guest: guest_bytes }.into());
    }
    let ram: Vec<(u64, u64)> = layout.ranges().iter().map(|&(b, n)| (b.0, n)).collect();
    let slots = place(&ram, ranges);
    let mut regions = Vec::with_capacity(slots.len());
    for s in slots {
        // SAFETY: `[host, host + bytes)` is page-aligned frames of the arena's read-write
        // private anonymous mapping (`Arena::host_ptr`, which `host_ranges` calls, asserts
        // they are inside it), allocated to `guest`. The caller wraps every region with a
        // share of a lease that owns both the guest (its frames stay allocated to it, and
        // only the lease's drop frees them) and a `PoolHandle` (an `Arc` of the heap that
        // owns the arena, so the mapping outlives the region). A raw region never unmaps;
        // every access through it is volatile, as the arena's own accesses are.
        let region = unsafe {
            MmapRegion::build_raw(
                s.host as *mut u8,
                s.bytes as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            )
        }?;
        let gr = GuestRegionMmap::new(region, GuestAddress(s.gpa));
        regions.push(gr.expect("a validated layout ends inside the 64-bit guest-physical space"));
    }
    debug_assert_eq!(regions.iter().map(|r| r.len()).sum::<u64>(), guest_bytes);
    Ok(regions)
}
