//! The per-node dirty bitmap: one bit per frame, set while the frame may hold a previous
//! owner's bytes. Bits are only ever set inside free (or being-scrubbed, or isolated) chunks.

use crate::types::Off;
use alloc::vec::Vec;

/// A vector of `n` copies of `v`, every page written now: `vec![zero; n]` maps zero pages
/// lazily, so the first operation touching each page would take the fault (on a virtual
/// machine, tens of microseconds each) inside a timed, non-preemptible section.
pub(crate) fn touched<T: Clone>(n: usize, v: T) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    out.resize(n, v);
    out
}

/// Levels of summary above the frame bits: enough for the top level of any node
/// (2^32 frames) to be one word.
const MAX_LEVELS: usize = 6;

/// A bitmap over a node's frames, addressed by node-relative offset, with summaries:
/// level 0 holds one bit per frame; each level above holds one bit per word of the level
/// below, set while that word is non-zero. Finding the first set bit of a range reads
/// at most two words per level (whatever the range's length), and counting reads only
/// the words that hold set bits plus one summary word per 4,096 frames: scrubbing the
/// one dirty frame of a 1 GiB free chunk costs what it costs in a 4 KiB one.
#[derive(Clone, Debug)]
pub(crate) struct DirtyBitmap {
    /// `levels[0]` the frame bits, `levels[k + 1]` the summary of `levels[k]`; the last
    /// level is one word.
    levels: Vec<Vec<u64>>,
    /// Words read by the searches and counts, for the tests that prove their cost.
    #[cfg(test)]
    reads: core::cell::Cell<u64>,
}

/// Mask of bits `[from % 64, ..)` of a word.
#[inline]
fn lo_mask(from: usize) -> u64 {
    u64::MAX << (from % 64)
}

/// Mask of bits `[.., (last % 64)]` of a word (inclusive).
#[inline]
fn hi_mask(last: usize) -> u64 {
    u64::MAX >> (63 - last % 64)
}

impl DirtyBitmap {
    pub fn new(frames: u32) -> Self {
        let mut levels = alloc::vec![touched((frames as usize).div_ceil(64).max(1), 0u64)];
        while levels[levels.len() - 1].len() > 1 {
            let below = levels[levels.len() - 1].len();
            levels.push(touched(below.div_ceil(64), 0u64));
        }
        debug_assert!(levels.len() <= MAX_LEVELS, "a node has at most 2^32 frames");
        debug_assert_eq!(levels[levels.len() - 1].len(), 1);
        DirtyBitmap {
            levels,
            #[cfg(test)]
            reads: core::cell::Cell::new(0),
        }
    }

    /// Bytes the bitmap holds (its capacity), every level.
    pub fn bytes(&self) -> usize {
        self.levels.iter().map(|l| l.capacity() * 8).sum::<usize>() + self.levels.capacity() * 24
    }

    /// Words read by searches and counts since the bitmap was made (tests only).
    #[cfg(test)]
    pub fn reads(&self) -> u64 {
        self.reads.get()
    }

    #[inline]
    fn read(&self, level: usize, w: usize) -> u64 {
        #[cfg(test)]
        self.reads.set(self.reads.get() + 1);
        self.levels[level][w]
    }

    /// Recomputes the summary bits of words `[a, b]` of `level`, and upwards.
    fn refresh(&mut self, mut level: usize, mut a: usize, mut b: usize) {
        while level + 1 < self.levels.len() {
            for w in a..=b {
                let on = self.levels[level][w] != 0;
                let bit = 1u64 << (w % 64);
                let up = &mut self.levels[level + 1][w / 64];
                if on {
                    *up |= bit;
                } else {
                    *up &= !bit;
                }
            }
            (level, a, b) = (level + 1, a / 64, b / 64);
        }
    }

    /// Word range and edge masks of `[off, off+len)` (len > 0): first word, last word,
    /// mask of the first word, mask of the last word.
    #[inline]
    fn span(off: u32, len: u32) -> (usize, usize, u64, u64) {
        let (from, last) = (off as usize, (off + len - 1) as usize);
        (from / 64, last / 64, lo_mask(from), hi_mask(last))
    }

    /// Sets the bits of `[off, off+len)`.
    pub fn set_all(&mut self, Off(off): Off, len: u32) {
        if len == 0 {
            return;
        }
        let (w0, w1, lo, hi) = Self::span(off, len);
        let words = &mut self.levels[0];
        if w0 == w1 {
            words[w0] |= lo & hi;
        } else {
            words[w0] |= lo;
            words[w0 + 1..w1].fill(u64::MAX);
            words[w1] |= hi;
        }
        self.refresh(0, w0, w1);
        debug_assert!(self.levels[0][w0] != 0 && self.levels[0][w1] != 0);
    }

    /// Clears the bits of `[off, off+len)`.
    pub fn clear_all(&mut self, Off(off): Off, len: u32) {
        if len == 0 {
            return;
        }
        let (w0, w1, lo, hi) = Self::span(off, len);
        let words = &mut self.levels[0];
        if w0 == w1 {
            words[w0] &= !(lo & hi);
        } else {
            words[w0] &= !lo;
            words[w0 + 1..w1].fill(0);
            words[w1] &= !hi;
        }
        self.refresh(0, w0, w1);
        debug_assert_eq!(self.levels[0][w0] & lo & if w0 == w1 { hi } else { u64::MAX }, 0);
    }

    /// Sets the bits of `[off, off+len)`; returns how many were newly set.
    pub fn set(&mut self, Off(off): Off, len: u32) -> u32 {
        let before = self.count(Off(off), len);
        self.set_all(Off(off), len);
        len - before
    }

    /// Clears the bits of `[off, off+len)`; returns how many were set.
    #[cfg(test)]
    pub fn clear(&mut self, Off(off): Off, len: u32) -> u32 {
        let before = self.count(Off(off), len);
        self.clear_all(Off(off), len);
        before
    }

    /// The bits of `[off, off+len)` (`len` at most 64) as one word, bit `i` for frame
    /// `off + i`: at most two words read, whatever the alignment of `off`.
    pub fn bits(&self, Off(off): Off, len: u32) -> u64 {
        debug_assert!((1..=64).contains(&len), "at most a word of bits, not {len}");
        let (w, shift) = ((off / 64) as usize, off % 64);
        let mut v = self.read(0, w) >> shift;
        if shift + len > 64 {
            v |= self.read(0, w + 1) << (64 - shift);
        }
        let v = v & (u64::MAX >> (64 - len));
        debug_assert_eq!(v.count_ones(), self.count(Off(off), len));
        v
    }

    /// Number of set bits in `[off, off+len)`: reads the words holding set bits and one
    /// summary word per 64 words of the range.
    pub fn count(&self, Off(off): Off, len: u32) -> u32 {
        if len == 0 {
            return 0;
        }
        let (w0, w1, lo, hi) = Self::span(off, len);
        if w0 == w1 {
            return (self.read(0, w0) & lo & hi).count_ones();
        }
        let mut n = (self.read(0, w0) & lo).count_ones() + (self.read(0, w1) & hi).count_ones();
        // The words strictly between, found through their summary bits.
        let (a, b) = (w0 + 1, w1);
        let mut s = a;
        while s < b {
            let sw = s / 64;
            let end = core::cmp::min(b, (sw + 1) * 64);
            let mut bits = self.read(1, sw) & lo_mask(s) & hi_mask(end - 1);
            while bits != 0 {
                let w = sw * 64 + bits.trailing_zeros() as usize;
                n += self.read(0, w).count_ones();
                bits &= bits - 1;
            }
            s = end;
        }
        n
    }

    /// Index of the first set bit of `level` in `[from, to)`, reading at most two words
    /// per level at and above `level`.
    fn find(&self, level: usize, from: usize, to: usize) -> Option<usize> {
        if from >= to {
            return None;
        }
        let (w0, w1) = (from / 64, (to - 1) / 64);
        let first = self.read(level, w0) & lo_mask(from) & if w0 == w1 { hi_mask(to - 1) } else { u64::MAX };
        if first != 0 {
            return Some(w0 * 64 + first.trailing_zeros() as usize);
        }
        if w0 == w1 {
            return None;
        }
        // The first non-zero word strictly between, from the level above (which exists:
        // the top level is one word, and this range spans two).
        if let Some(w) = self.find(level + 1, w0 + 1, w1) {
            return Some(w * 64 + self.read(level, w).trailing_zeros() as usize);
        }
        let last = self.read(level, w1) & hi_mask(to - 1);
        (last != 0).then(|| w1 * 64 + last.trailing_zeros() as usize)
    }

    /// Offset (relative to `off`) of the first set bit in `[off, off+len)`.
    pub fn first_set(&self, Off(off): Off, len: u32) -> Option<u32> {
        let at = self.find(0, off as usize, off as usize + len as usize)?;
        debug_assert!(at >= off as usize && at < off as usize + len as usize);
        Some(at as u32 - off)
    }

    /// Offset (relative to `off`) of the first clear bit in `[off, off+len)`: linear in
    /// the run of set bits it skips (callers bound `len` by a batch, or scrub what it skips).
    fn first_clear(&self, off: u32, len: u32) -> Option<u32> {
        if len == 0 {
            return None;
        }
        let (w0, w1, lo, hi) = Self::span(off, len);
        let at = |w: usize, v: u64| Some(w as u32 * 64 + v.trailing_zeros() - off);
        let first = !self.read(0, w0) & lo & if w0 == w1 { hi } else { u64::MAX };
        if first != 0 {
            return at(w0, first);
        }
        if w0 == w1 {
            return None;
        }
        for w in w0 + 1..w1 {
            let v = self.read(0, w);
            if v != u64::MAX {
                return at(w, !v);
            }
        }
        let last = !self.read(0, w1) & hi;
        (last != 0).then(|| at(w1, last)).flatten()
    }

    /// The first run of set bits in `[off, off+len)` starting at or after `from` (relative),
    /// at most `max` long: `(start, len)` relative to `off`.
    pub fn next_run(&self, Off(off): Off, len: u32, from: u32, max: u32) -> Option<(u32, u32)> {
        if from >= len || max == 0 {
            return None;
        }
        let start = self.first_set(Off(off + from), len - from)? + from;
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
        for n in [1u32, 63, 700, 9000] {
            model_walk(n);
        }
    }

    #[test]
    fn finding_the_one_set_bit_reads_a_few_words_per_level_whatever_the_range() {
        let n = 1u32 << 18;
        let mut b = DirtyBitmap::new(n);
        assert_eq!(b.levels.len(), 3, "2^18 bits: 4,096 words, a summary of 64, a top word");
        b.set_all(Off(n - 1), 1);
        let before = b.reads();
        assert_eq!(b.first_set(Off(0), n), Some(n - 1));
        assert_eq!(b.count(Off(0), n), 1);
        let reads = b.reads() - before;
        // find: at most two words per level; count: two edge words, 64 summary words, one
        // non-zero word. A linear scan would read 4,096 words twice.
        assert!(reads <= 2 * 3 + 2 + 64 + 1, "read {reads} words");
        b.clear_all(Off(n - 1), 1);
        let before = b.reads();
        assert_eq!(b.first_set(Off(1), n - 1), None);
        assert!(b.reads() - before <= 6, "read {} words", b.reads() - before);
        assert!(b.levels.iter().all(|l| l.iter().all(|&w| w == 0)), "summaries cleared with the bits");
    }

    #[test]
    fn bits_reads_a_word_of_bits_at_any_offset() {
        let mut b = DirtyBitmap::new(300);
        for (off, len) in [(0u32, 1u32), (3, 2), (63, 2), (100, 7), (190, 1)] {
            b.set_all(Off(off), len);
        }
        let model = |off: u32, len: u32| {
            let set = |f: u32| {
                [(0u32, 1u32), (3, 2), (63, 2), (100, 7), (190, 1)].iter().any(|&(o, l)| (o..o + l).contains(&f))
            };
            (0..len).filter(|&i| set(off + i)).fold(0u64, |m, i| m | 1 << i)
        };
        for off in [0u32, 1, 3, 60, 63, 64, 99, 128, 190, 236] {
            for len in [1u32, 2, 17, 63, 64] {
                assert_eq!(b.bits(Off(off), len), model(off, len), "bits({off}, {len})");
            }
        }
        assert_eq!(b.bits(Off(62), 3), 0b110, "a range across two words");
    }

    fn model_walk(n: u32) {
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
                    assert_eq!(b.set(Off(off), len), newly);
                    m[off as usize..(off + len) as usize].fill(true);
                }
                1 => {
                    let was = (off..off + len).filter(|&i| m[i as usize]).count() as u32;
                    assert_eq!(b.clear(Off(off), len), was);
                    m[off as usize..(off + len) as usize].fill(false);
                }
                _ => {}
            }
            let model_first = (off..off + len).find(|&i| m[i as usize]).map(|i| i - off);
            assert_eq!(b.first_set(Off(off), len), model_first);
            assert_eq!(b.count(Off(off), len), (off..off + len).filter(|&i| m[i as usize]).count() as u32);
            let from = rnd(len + 1);
            let max = rnd(80) + 1;
            let model_run = (from..len).find(|&i| m[(off + i) as usize]).map(|s| {
                let r = (s..len).take(max as usize).take_while(|&i| m[(off + i) as usize]).count() as u32;
                (s, r)
            });
            assert_eq!(b.next_run(Off(off), len, from, max), model_run, "off {off} len {len} from {from} max {max}");
        }
        for l in 0..b.levels.len() - 1 {
            for (w, &v) in b.levels[l].iter().enumerate() {
                let bit = b.levels[l + 1][w / 64] >> (w % 64) & 1;
                assert_eq!(bit == 1, v != 0, "summary of level {l} word {w}");
            }
        }
    }

    #[test]
    fn set_clear_count_and_runs() {
        let mut b = DirtyBitmap::new(300);
        assert_eq!(b.set(Off(10), 100), 100);
        assert_eq!(b.set(Off(50), 100), 40);
        assert_eq!(b.count(Off(0), 300), 140);
        assert_eq!(b.first_set(Off(0), 300), Some(10));
        assert_eq!(b.first_set(Off(200), 100), None);
        assert_eq!(b.next_run(Off(0), 300, 0, 1000), Some((10, 140)));
        assert_eq!(b.next_run(Off(0), 300, 0, 7), Some((10, 7)));
        assert_eq!(b.clear(Off(60), 10), 10);
        assert_eq!(b.next_run(Off(0), 300, 0, 1000), Some((10, 50)));
        assert_eq!(b.next_run(Off(0), 300, 60, 1000), Some((70, 80)));
        assert_eq!(b.next_run(Off(64), 100, 0, 1000), Some((6, 80)));
        assert_eq!(b.first_set(Off(64), 100), Some(6));
    }
}
