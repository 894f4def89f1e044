//! The per-node dirty bitmap: one bit per frame, set while the frame may hold a previous
//! owner's bytes. Bits are only ever set inside free (or being-scrubbed, or isolated) chunks.

use alloc::vec;
use alloc::vec::Vec;

/// A bitmap over a node's frames, addressed by node-relative offset.
#[derive(Clone, Debug)]
pub(crate) struct DirtyBitmap {
    words: Vec<u64>,
}

#[inline]
fn mask(lo: u32, hi: u32) -> u64 {
    // Bits [lo, hi) of one word, 0 <= lo < hi <= 64.
    let m = if hi == 64 { u64::MAX } else { (1u64 << hi) - 1 };
    m & !((1u64 << lo) - 1)
}

impl DirtyBitmap {
    pub fn new(frames: u32) -> Self {
        DirtyBitmap { words: vec![0; (frames as usize).div_ceil(64)] }
    }

    /// Calls `f(word_index, mask)` for each word piece of `[off, off+len)`.
    #[inline]
    fn pieces(off: u32, len: u32, mut f: impl FnMut(usize, u64) -> bool) {
        let mut pos = off;
        let end = off + len;
        while pos < end {
            let w = pos / 64;
            let lo = pos % 64;
            let hi = core::cmp::min(64, lo + (end - pos));
            if !f(w as usize, mask(lo, hi)) {
                return;
            }
            pos += hi - lo;
        }
    }

    /// Sets the bits of `[off, off+len)`; returns how many were newly set.
    pub fn set(&mut self, off: u32, len: u32) -> u32 {
        let mut n = 0;
        let words = &mut self.words;
        Self::pieces(off, len, |w, m| {
            n += (!words[w] & m).count_ones();
            words[w] |= m;
            true
        });
        n
    }

    /// Clears the bits of `[off, off+len)`; returns how many were set.
    pub fn clear(&mut self, off: u32, len: u32) -> u32 {
        let mut n = 0;
        let words = &mut self.words;
        Self::pieces(off, len, |w, m| {
            n += (words[w] & m).count_ones();
            words[w] &= !m;
            true
        });
        n
    }

    /// Number of set bits in `[off, off+len)`.
    pub fn count(&self, off: u32, len: u32) -> u32 {
        let mut n = 0;
        Self::pieces(off, len, |w, m| {
            n += (self.words[w] & m).count_ones();
            true
        });
        n
    }

    /// Offset (relative to `off`) of the first set bit in `[off, off+len)`.
    pub fn first_set(&self, off: u32, len: u32) -> Option<u32> {
        let mut found = None;
        Self::pieces(off, len, |w, m| {
            let v = self.words[w] & m;
            if v != 0 {
                found = Some(w as u32 * 64 + v.trailing_zeros() - off);
                false
            } else {
                true
            }
        });
        found
    }

    /// The first run of set bits in `[off, off+len)` starting at or after `from` (relative),
    /// at most `max` long: `(start, len)` relative to `off`.
    pub fn next_run(&self, off: u32, len: u32, from: u32, max: u32) -> Option<(u32, u32)> {
        let start = self.first_set(off + from, len - from)? + from;
        let mut run = 0;
        let limit = core::cmp::min(max, len - start);
        Self::pieces(off + start, limit, |w, m| {
            let v = self.words[w] & m;
            if v == m {
                run += m.count_ones();
                true
            } else {
                // Set bits from the low end of the piece up to the first clear one.
                let lo = m.trailing_zeros();
                run += (!(v >> lo)).trailing_zeros();
                false
            }
        });
        Some((start, run))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_count_and_runs() {
        let mut b = DirtyBitmap::new(300);
        assert_eq!(b.set(10, 100), 100);
        assert_eq!(b.set(50, 100), 40);
        assert_eq!(b.count(0, 300), 140);
        assert_eq!(b.first_set(0, 300), Some(10));
        assert_eq!(b.first_set(200, 100), None);
        assert_eq!(b.next_run(0, 300, 0, 1000), Some((10, 140)));
        assert_eq!(b.next_run(0, 300, 0, 7), Some((10, 7)));
        assert_eq!(b.clear(60, 10), 10);
        assert_eq!(b.next_run(0, 300, 0, 1000), Some((10, 50)));
        assert_eq!(b.next_run(0, 300, 60, 1000), Some((70, 80)));
        assert_eq!(b.next_run(64, 100, 0, 1000), Some((6, 80)));
        assert_eq!(b.first_set(64, 100), Some(6));
    }
}
