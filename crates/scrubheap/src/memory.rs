//! What the heap needs of the memory behind the frames: zero, check, copy.

use crate::types::{DomId, Mfn};

/// The memory behind the heap's frames. The heap calls it only for frames it owns
/// exclusively at that moment (free frames being scrubbed, or frames being handed over),
/// never for frames an owner holds.
pub trait FrameMemory {
    /// Writes zero over `count` frames starting at `first`.
    fn zero(&self, first: Mfn, count: u64);
    /// Whether `count` frames starting at `first` are all zero.
    fn is_zero(&self, first: Mfn, count: u64) -> bool;
    /// Copies `count` frames from `src` to `dst` (ranges do not overlap).
    fn copy(&self, src: Mfn, dst: Mfn, count: u64);
    /// `owner` writes non-zero bytes (its tag) over `count` frames at `first`: a guest's
    /// data, which the zero checks of a layer above must tell from zeroed pages. The heap
    /// calls it only for frames `owner` holds. Memory that keeps no bytes does nothing.
    fn fill(&self, first: Mfn, count: u64, owner: DomId) {
        let _ = (first, count, owner);
    }
}

/// Memory that is not there: zeroing and copying cost nothing, every frame reads as zero.
/// For metadata-only heaps (replay, benchmarks of the allocator itself).
#[derive(Copy, Clone, Debug, Default)]
pub struct NullMemory;

impl FrameMemory for NullMemory {
    fn zero(&self, _first: Mfn, _count: u64) {}
    fn is_zero(&self, _first: Mfn, _count: u64) -> bool {
        true
    }
    fn copy(&self, _src: Mfn, _dst: Mfn, _count: u64) {}
}

impl<M: FrameMemory + ?Sized> FrameMemory for &M {
    fn zero(&self, first: Mfn, count: u64) {
        (**self).zero(first, count)
    }
    fn is_zero(&self, first: Mfn, count: u64) -> bool {
        (**self).is_zero(first, count)
    }
    fn copy(&self, src: Mfn, dst: Mfn, count: u64) {
        (**self).copy(src, dst, count)
    }
    fn fill(&self, first: Mfn, count: u64, owner: DomId) {
        (**self).fill(first, count, owner)
    }
}
