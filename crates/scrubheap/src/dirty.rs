//! The per-node dirty bitmap: one bit per frame, set while the frame may hold a previous
//! owner's bytes. Bits are only ever set inside free (or being-scrubbed, or isolated) chunks.

use alloc::vec::Vec;

/// A vector of `n` copies of `v`, every page written now: `vec![zero; n]` maps zero pages
/// lazily, so the first operation touching each page would take the fault (on a virtual
/// machine, tens of microseconds each) inside a timed, non-preemptible section.
pub(crate) fn touched<T: Clone>(n: usize, v: T) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    out.resize(n, v);
    out
}

/// A bitmap over a node's frames, addressed by node-relative offset.
#[derive(Clone, Debug)]
pub(crate) struct DirtyBitmap {
    words: Vec<u64>,
}

impl DirtyBitmap {
    pub fn new(frames: u32) -> Self {
        DirtyBitmap { words: touched((frames as usize).div_ceil(64), 0) }
    }

    /// Word range and edge masks of `[off, off+len)` (len > 0): first word, last word,
    /// mask of the first word, mask of the last word.
    #[inline]
    fn span(off: u32, len: u32) -> (usize, usize, u64, u64) {
        let end = off + len;
        let (w0, w1) = ((off / 64) as usize, ((end - 1) / 64) as usize);
        let lo = u64::MAX << (off % 64);
        let hi = u64::MAX >> (63 - (end - 1) % 64);
        (w0, w1, lo, hi)
    }

    /// Sets the bits of `[off, off+len)`.
    pub fn set_all(&mut self, off: u32, len: u32) {
        if len == 0 {
            return;
        }
        let (w0, w1, lo, hi) = Self::span(off, len);
        if w0 == w1 {
            self.words[w0] |= lo & hi;
        } else {
            self.words[w0] |= lo;
            self.words[w0 + 1..w1].fill(u64::MAX);
            self.words[w1] |= hi;
        }
    }

    /// Clears the bits of `[off, off+len)`.
    pub fn clear_all(&mut self, off: u32, len: u32) {
        if len == 0 {
            return;
        }
        let (w0, w1, lo, hi) = Self::span(off, len);
        if w0 == w1 {
            self.words[w0] &= !(lo & hi);
        } else {
            self.words[w0] &= !lo;
            self.words[w0 + 1..w1].fill(0);
            self.words[w1] &= !hi;
        }
    }

    /// Sets the bits of `[off, off+len)`; returns how many were newly set.
    pub fn set(&mut self, off: u32, len: u32) -> u32 {
        let before = self.count(off, len);
        self.set_all(off, len);
        len - before
    }

    /// Clears the bits of `[off, off+len)`; returns how many were set.
    #[cfg(test)]
    pub fn clear(&mut self, off: u32, len: u32) -> u32 {
        let before = self.count(off, len);
        self.clear_all(off, len);
        before
    }

    /// Number of set bits in `[off, off+len)`.
    pub fn count(&self, off: u32, len: u32) -> u32 {
        if len == 0 {
            return 0;
        }
        let (w0, w1, lo, hi) = Self::span(off, len);
        if w0 == w1 {
            return (self.words[w0] & lo & hi).count_ones();
        }
        let mid: u32 = self.words[w0 + 1..w1].iter().map(|w| w.count_ones()).sum();
        (self.words[w0] & lo).count_ones() + mid + (self.words[w1] & hi).count_ones()
    }

    /// Offset (relative to `off`) of the first set bit in `[off, off+len)`.
    pub fn first_set(&self, off: u32, len: u32) -> Option<u32> {
        if len == 0 {
            return None;
        }
        let (w0, w1, lo, hi) = Self::span(off, len);
        let at = |w: usize, v: u64| Some(w as u32 * 64 + v.trailing_zeros() - off);
        let first = self.words[w0] & lo & if w0 == w1 { hi } else { u64::MAX };
        if first != 0 {
            return at(w0, first);
        }
        if w0 == w1 {
            return None;
        }
        if let Some(i) = self.words[w0 + 1..w1].iter().position(|&w| w != 0) {
            return at(w0 + 1 + i, self.words[w0 + 1 + i]);
        }
        let last = self.words[w1] & hi;
        (last != 0).then(|| at(w1, last)).flatten()
    }

    /// Offset (relative to `off`) of the first clear bit in `[off, off+len)`.
    fn first_clear(&self, off: u32, len: u32) -> Option<u32> {
        if len == 0 {
            return None;
        }
        let (w0, w1, lo, hi) = Self::span(off, len);
        let at = |w: usize, v: u64| Some(w as u32 * 64 + v.trailing_zeros() - off);
        let first = !self.words[w0] & lo & if w0 == w1 { hi } else { u64::MAX };
        if first != 0 {
            return at(w0, first);
        }
        if w0 == w1 {
            return None;
        }
        if let Some(i) = self.words[w0 + 1..w1].iter().position(|&w| w != u64::MAX) {
            return at(w0 + 1 + i, !self.words[w0 + 1 + i]);
        }
        let last = !self.words[w1] & hi;
        (last != 0).then(|| at(w1, last)).flatten()
    }

    /// The first run of set bits in `[off, off+len)` starting at or after `from` (relative),
    /// at most `max` long: `(start, len)` relative to `off`.
    pub fn next_run(&self, off: u32, len: u32, from: u32, max: u32) -> Option<(u32, u32)> {
        if from >= len || max == 0 {
            return None;
        }
        let start = self.first_set(off + from, len - from)? + from;
        let limit = core::cmp::min(max, len - start);
        let run = self.first_clear(off + start, limit).unwrap_or(limit);
        Some((start, run))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_operations_agree_with_a_bit_by_bit_model() {
        let n = 700u32;
        let mut b = DirtyBitmap::new(n);
        let mut m = alloc::vec![false; n as usize];
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut rnd = |k: u32| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % k as u64) as u32
        };
        for _ in 0..3000 {
            let off = rnd(n);
            let len = rnd(n - off + 1);
            match rnd(4) {
                0 => {
                    let newly = (off..off + len).filter(|&i| !m[i as usize]).count() as u32;
                    assert_eq!(b.set(off, len), newly);
                    m[off as usize..(off + len) as usize].fill(true);
                }
                1 => {
                    let was = (off..off + len).filter(|&i| m[i as usize]).count() as u32;
                    assert_eq!(b.clear(off, len), was);
                    m[off as usize..(off + len) as usize].fill(false);
                }
                _ => {}
            }
            let model_first = (off..off + len).find(|&i| m[i as usize]).map(|i| i - off);
            assert_eq!(b.first_set(off, len), model_first);
            assert_eq!(b.count(off, len), (off..off + len).filter(|&i| m[i as usize]).count() as u32);
            let from = rnd(len + 1);
            let max = rnd(80) + 1;
            let model_run = (from..len).find(|&i| m[(off + i) as usize]).map(|s| {
                let r = (s..len).take(max as usize).take_while(|&i| m[(off + i) as usize]).count() as u32;
                (s, r)
            });
            assert_eq!(b.next_run(off, len, from, max), model_run, "off {off} len {len} from {from} max {max}");
        }
    }

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
