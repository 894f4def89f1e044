//! For Rust kernels: the `x86_64` crate's [`FrameAllocator`] of 4 KiB, 2 MiB and 1 GiB
//! frames and [`FrameDeallocator`] over a heap (feature `x86_64`).
//!
//! A frame's physical address is its frame number times 4 KiB, so the heap must use
//! 4 KiB frames and number them by physical address (as a kernel that hands it its RAM
//! map does). Frames come scrubbed: a kernel never sees a previous owner's bytes. The
//! `FrameAllocator` impls never scrub more than one batch (the heap's `scrub_batch`, 1 MiB
//! by default) in place, since they have no way to yield: when the only 2 MiB or 1 GiB
//! frame that would do is dirty and larger than a batch, they return `None`
//! ([`HeapFrames::try_allocate`] says why: `HeapError::NeedsScrubTicket`). A kernel that
//! wants such a frame calls [`HeapFrames::try_allocate_preemptible`], which scrubs it a
//! batch at a time and asks its `Preempt` between batches. This module uses only `core`
//! and the heap's public API, so it can move to a `no_std` kernel as is.
//!
//! ```
//! use scrubheap::{DomId, Heap, HeapConfig, Mfn, TestMemory};
//! use scrubheap_vmm::frames::HeapFrames;
//! use x86_64::structures::paging::{FrameAllocator, FrameDeallocator, Size1GiB, Size2MiB, Size4KiB};
//!
//! // 2 GiB of 4 KiB frames (metadata only: `TestMemory` stands in for RAM).
//! let heap = Heap::new(HeapConfig::uniform(1, 1 << 19), TestMemory::new(Mfn(0), 1 << 19, 4096)).unwrap();
//! let mut frames = HeapFrames::new(&heap, DomId(0));
//! let small: x86_64::structures::paging::PhysFrame<Size4KiB> = frames.allocate_frame().unwrap();
//! let large = FrameAllocator::<Size2MiB>::allocate_frame(&mut frames).unwrap();
//! let huge = FrameAllocator::<Size1GiB>::allocate_frame(&mut frames).unwrap();
//! assert!(huge.start_address().is_aligned(1u64 << 30));
//! // SAFETY (of the example): each frame came from `frames` and is no longer used.
//! unsafe {
//!     frames.deallocate_frame(small);
//!     frames.deallocate_frame(large);
//!     frames.deallocate_frame(huge);
//! }
//! assert_eq!(heap.stats().allocated, 0);
//! ```

use scrubheap::{AllocRequest, DomId, FrameMemory, Heap, HeapError, Mfn, Preempt};
use x86_64::structures::paging::{FrameAllocator, FrameDeallocator, PageSize, PhysFrame, Size1GiB, Size2MiB, Size4KiB};
use x86_64::PhysAddr;

/// Frames of a heap for one owner, optionally from one node.
pub struct HeapFrames<'h, M: FrameMemory> {
    heap: &'h Heap<M>,
    owner: DomId,
    node: Option<usize>,
}

impl<'h, M: FrameMemory> HeapFrames<'h, M> {
    /// Allocates for `owner` from any node.
    ///
    /// # Panics
    /// If the heap's frames are not 4 KiB.
    pub fn new(heap: &'h Heap<M>, owner: DomId) -> Self {
        assert_eq!(heap.config().frame_size, Size4KiB::SIZE, "x86_64 frames are 4 KiB: the heap's must be too");
        HeapFrames { heap, owner, node: None }
    }

    /// Prefer `node` (falling back to the nearest others).
    pub fn on(mut self, node: usize) -> Self {
        self.node = Some(node);
        self
    }

    fn request<S: PageSize>(&self) -> AllocRequest {
        let order = (S::SIZE / Size4KiB::SIZE).trailing_zeros() as u8;
        let req = AllocRequest::new(order, self.owner);
        self.node.map_or(req, |n| req.on(n))
    }

    fn frame<S: PageSize>(mfn: Mfn) -> PhysFrame<S> {
        let addr = PhysAddr::new(mfn.0 * Size4KiB::SIZE);
        PhysFrame::from_start_address(addr).expect("the heap's extents are naturally aligned")
    }

    /// A frame of size `S`, scrubbed, scrubbing at most one batch in place
    /// ([`Heap::alloc`]); the heap's error when it has none, or
    /// `HeapError::NeedsScrubTicket` when the only frame that would do is dirty and
    /// larger than one batch (then use [`HeapFrames::try_allocate_preemptible`]).
    pub fn try_allocate<S: PageSize>(&mut self) -> Result<PhysFrame<S>, HeapError> {
        let e = self.heap.alloc(&self.request::<S>())?;
        Ok(Self::frame(e.mfn))
    }

    /// A frame of size `S`, scrubbed one batch at a time, asking `preempt` between two
    /// batches ([`Heap::alloc_preemptible`]): `Ok(None)` when it said to yield (the frames
    /// scrubbed so far stay clean in the heap; call again after yielding).
    pub fn try_allocate_preemptible<S: PageSize>(
        &mut self,
        preempt: &dyn Preempt,
    ) -> Result<Option<PhysFrame<S>>, HeapError> {
        let e = self.heap.alloc_preemptible(&self.request::<S>(), preempt)?;
        Ok(e.map(|e| Self::frame(e.mfn)))
    }

    /// Gives a frame back; the heap's error (and no change) if this owner does not hold it
    /// at that size.
    pub fn try_deallocate<S: PageSize>(&mut self, frame: PhysFrame<S>) -> Result<(), HeapError> {
        let order = (S::SIZE / Size4KiB::SIZE).trailing_zeros() as u8;
        self.heap.free(Mfn(frame.start_address().as_u64() / Size4KiB::SIZE), order, self.owner)
    }
}

macro_rules! frame_allocator {
    ($size:ty) => {
        // SAFETY: the heap hands each extent to exactly one owner until it is freed (its
        // partition invariant), so every frame returned is unused and returned once.
        unsafe impl<M: FrameMemory> FrameAllocator<$size> for HeapFrames<'_, M> {
            /// `None` when the heap has no frame of this size, or when the only one is
            /// dirty and larger than one scrub batch: it is never scrubbed here without a
            /// preemption point (see [`HeapFrames::try_allocate_preemptible`]).
            fn allocate_frame(&mut self) -> Option<PhysFrame<$size>> {
                self.try_allocate().ok()
            }
        }

        impl<M: FrameMemory> FrameDeallocator<$size> for HeapFrames<'_, M> {
            /// # Panics
            /// If this owner does not hold `frame` at this size (the heap is unchanged).
            unsafe fn deallocate_frame(&mut self, frame: PhysFrame<$size>) {
                if let Err(e) = self.try_deallocate(frame) {
                    panic!("deallocate_frame({frame:?}): {e}");
                }
            }
        }
    };
}

frame_allocator!(Size4KiB);
frame_allocator!(Size2MiB);
frame_allocator!(Size1GiB);
