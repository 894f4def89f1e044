//! The simulated memory behind the heap: it writes nothing. It logs every range the heap
//! asks it to zero (so the engine can charge modelled time to the actor whose call made
//! it) and keeps one bit per frame, "holds only zeroes", for the leak checker.

use scrubheap::{FrameMemory, LockObserver, Mfn};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Metadata-only memory: zeroing costs modelled time (charged by the engine) and writes
/// nothing. One bit per frame records whether the frame holds only zeroes.
pub struct SimMemory {
    first: u64,
    frames: u64,
    /// Bit set: the frame holds only zeroes.
    zero: RefCell<Vec<u64>>,
    /// Ranges zeroed since the engine last drained the log.
    log: RefCell<Vec<(Mfn, u64)>>,
}

impl SimMemory {
    /// `frames` frames from `first`, all zero or (if `dirty`) all holding old bytes.
    pub fn new(first: Mfn, frames: u64, dirty: bool) -> Self {
        let words = frames.div_ceil(64) as usize;
        let fill = if dirty { 0 } else { u64::MAX };
        SimMemory { first: first.0, frames, zero: RefCell::new(vec![fill; words]), log: RefCell::new(Vec::new()) }
    }

    /// Takes the ranges zeroed since the last call, in call order.
    pub fn drain_log(&self) -> Vec<(Mfn, u64)> {
        std::mem::take(&mut *self.log.borrow_mut())
    }

    /// An owner wrote its data over the range: its frames no longer hold only zeroes.
    pub fn write(&self, first: Mfn, count: u64) {
        self.set_range(first, count, false);
    }

    /// Frames in the range that do not hold only zeroes.
    pub fn nonzero_frames(&self, first: Mfn, count: u64) -> u64 {
        let z = self.zero.borrow();
        let (lo, hi) = self.bounds(first, count);
        let mut n = 0;
        let mut i = lo;
        while i < hi {
            let w = i / 64;
            let b = i % 64;
            let take = (64 - b).min(hi - i);
            let mask = if take == 64 { u64::MAX } else { ((1u64 << take) - 1) << b };
            n += (!z[w as usize] & mask).count_ones() as u64;
            i += take;
        }
        n
    }

    fn bounds(&self, first: Mfn, count: u64) -> (u64, u64) {
        let lo = first.0 - self.first;
        assert!(lo + count <= self.frames, "range {first}+{count} outside the simulated memory");
        (lo, lo + count)
    }

    fn set_range(&self, first: Mfn, count: u64, zero: bool) {
        let mut z = self.zero.borrow_mut();
        let (lo, hi) = self.bounds(first, count);
        let mut i = lo;
        while i < hi {
            let w = (i / 64) as usize;
            let b = i % 64;
            let take = (64 - b).min(hi - i);
            let mask = if take == 64 { u64::MAX } else { ((1u64 << take) - 1) << b };
            if zero {
                z[w] |= mask;
            } else {
                z[w] &= !mask;
            }
            i += take;
        }
    }
}

impl FrameMemory for SimMemory {
    fn zero(&self, first: Mfn, count: u64) {
        self.set_range(first, count, true);
        self.log.borrow_mut().push((first, count));
    }
    fn is_zero(&self, first: Mfn, count: u64) -> bool {
        self.nonzero_frames(first, count) == 0
    }
    fn copy(&self, src: Mfn, dst: Mfn, count: u64) {
        for i in 0..count {
            let z = self.nonzero_frames(Mfn(src.0 + i), 1) == 0;
            self.set_range(Mfn(dst.0 + i), 1, z);
        }
    }
    fn fill(&self, first: Mfn, count: u64, _owner: scrubheap::DomId) {
        self.write(first, count);
    }
}

/// Counts node-lock acquisitions per node, so the engine can queue them on its lock model.
pub struct LockCounter {
    counts: Vec<AtomicU64>,
}

impl LockCounter {
    /// Counters for `nodes` nodes.
    pub fn new(nodes: usize) -> Self {
        LockCounter { counts: (0..nodes).map(|_| AtomicU64::new(0)).collect() }
    }

    /// Takes the acquisitions per node since the last call.
    pub fn drain(&self) -> Vec<u64> {
        self.counts.iter().map(|c| c.swap(0, Relaxed)).collect()
    }
}

impl LockObserver for LockCounter {
    fn acquired(&self, node: usize) {
        self.counts[node].fetch_add(1, Relaxed);
    }
    fn released(&self, _node: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_write_and_count() {
        let m = SimMemory::new(Mfn(100), 300, true);
        assert_eq!(m.nonzero_frames(Mfn(100), 300), 300);
        m.zero(Mfn(110), 130);
        assert_eq!(m.nonzero_frames(Mfn(100), 300), 170);
        assert!(m.is_zero(Mfn(110), 130));
        assert!(!m.is_zero(Mfn(109), 2));
        m.write(Mfn(200), 5);
        assert_eq!(m.nonzero_frames(Mfn(110), 130), 5);
        assert_eq!(m.drain_log(), vec![(Mfn(110), 130)]);
        assert!(m.drain_log().is_empty());
    }
}
