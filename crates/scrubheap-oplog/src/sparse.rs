//! Metadata-only memory that remembers which frames hold data: what the replayer runs
//! on, so PoD zero checks can tell a guest's data from zeroed pages without keeping any
//! bytes. It lives here, with its one user, not in the heap crate.

use scrubheap::{DomId, FrameMemory, Mfn};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

/// Memory that keeps no bytes, only the set of frames that are not zero (as disjoint
/// ranges): [`FrameMemory::fill`] adds to it, [`FrameMemory::zero`] removes from it,
/// [`FrameMemory::is_zero`] asks it. Every frame starts zero. Costs O(log n) per call in
/// the number of non-zero ranges.
///
/// ```
/// use scrubheap::{DomId, FrameMemory, Mfn};
/// use scrubheap_oplog::SparseMemory;
/// let m = SparseMemory::new();
/// m.fill(Mfn(10), 4, DomId(1));
/// assert!(!m.is_zero(Mfn(0), 11) && m.is_zero(Mfn(0), 10));
/// m.zero(Mfn(11), 2);
/// assert_eq!(m.nonzero_frames(), 2);
/// ```
pub struct SparseMemory {
    /// Start to end (exclusive) of each non-zero range; ranges neither overlap nor touch.
    ranges: Mutex<BTreeMap<u64, u64>>,
}

impl Default for SparseMemory {
    fn default() -> Self {
        SparseMemory { ranges: Mutex::new(BTreeMap::new()) }
    }
}

impl SparseMemory {
    /// The set of non-zero ranges. Every update leaves it whole before it can panic, so a
    /// poisoned lock still holds a valid set.
    fn ranges(&self) -> MutexGuard<'_, BTreeMap<u64, u64>> {
        self.ranges.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Memory in which every frame is zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many frames are not zero.
    pub fn nonzero_frames(&self) -> u64 {
        self.ranges().iter().map(|(s, e)| e - s).sum()
    }
}

/// Removes `[lo, hi)` from the set.
fn clear(r: &mut BTreeMap<u64, u64>, lo: u64, hi: u64) {
    let hits: Vec<(u64, u64)> = r.range(..hi).rev().take_while(|(_, &e)| e > lo).map(|(&s, &e)| (s, e)).collect();
    for (s, e) in hits {
        r.remove(&s);
        if s < lo {
            r.insert(s, lo);
        }
        if e > hi {
            r.insert(hi, e);
        }
    }
}

/// Adds `[lo, hi)` to the set, merging with the ranges it overlaps or touches.
fn set(r: &mut BTreeMap<u64, u64>, mut lo: u64, mut hi: u64) {
    let hits: Vec<(u64, u64)> = r.range(..=hi).rev().take_while(|(_, &e)| e >= lo).map(|(&s, &e)| (s, e)).collect();
    for (s, e) in hits {
        r.remove(&s);
        lo = lo.min(s);
        hi = hi.max(e);
    }
    r.insert(lo, hi);
}

fn bounds(first: Mfn, count: u64) -> (u64, u64) {
    (first.0, first.0.saturating_add(count))
}

impl FrameMemory for SparseMemory {
    fn zero(&self, first: Mfn, count: u64) {
        let (lo, hi) = bounds(first, count);
        if lo < hi {
            clear(&mut self.ranges(), lo, hi);
        }
    }
    fn is_zero(&self, first: Mfn, count: u64) -> bool {
        let (lo, hi) = bounds(first, count);
        lo >= hi || self.ranges().range(..hi).next_back().is_none_or(|(_, &e)| e <= lo)
    }
    fn copy(&self, src: Mfn, dst: Mfn, count: u64) {
        let (lo, hi) = bounds(src, count);
        let mut r = self.ranges();
        let parts: Vec<(u64, u64)> =
            r.range(..hi).rev().take_while(|(_, &e)| e > lo).map(|(&s, &e)| (s.max(lo) - lo, e.min(hi) - lo)).collect();
        let (dlo, dhi) = bounds(dst, count);
        if dlo < dhi {
            clear(&mut r, dlo, dhi);
        }
        for (s, e) in parts {
            set(&mut r, dst.0 + s, dst.0 + e);
        }
    }
    fn fill(&self, first: Mfn, count: u64, _owner: DomId) {
        let (lo, hi) = bounds(first, count);
        if lo < hi {
            set(&mut self.ranges(), lo, hi);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_split_and_copy() {
        let m = SparseMemory::new();
        m.fill(Mfn(0), 4, DomId(1));
        m.fill(Mfn(4), 4, DomId(1));
        m.fill(Mfn(20), 1, DomId(1));
        assert_eq!(m.ranges().len(), 2);
        m.zero(Mfn(2), 3);
        assert!(m.is_zero(Mfn(2), 3) && !m.is_zero(Mfn(1), 1) && !m.is_zero(Mfn(5), 1));
        assert_eq!(m.nonzero_frames(), 6);
        m.copy(Mfn(0), Mfn(100), 8);
        assert!(!m.is_zero(Mfn(100), 2) && m.is_zero(Mfn(102), 3) && !m.is_zero(Mfn(105), 3));
        assert_eq!(m.nonzero_frames(), 11);
        m.zero(Mfn(0), u64::MAX);
        assert_eq!(m.nonzero_frames(), 0);
    }
}
