//! Zeroing kernels: the instructions that write zero over freed memory, detected at run
//! time and picked by a short calibration.
//!
//! | kernel        | instruction                         | needs                        |
//! |---------------|-------------------------------------|------------------------------|
//! | `rep-stosb`   | `rep stosb` (ERMS microcode)        | x86_64                       |
//! | `avx2-nt`     | 32-byte `vmovntdq` + one `sfence`   | x86_64 with AVX2             |
//! | `avx512-nt`   | 64-byte `vmovntdq` + one `sfence`   | x86_64 with AVX-512F         |
//! | `clzero`      | AMD `clzero` per line + one `sfence`| x86_64, CPUID 0x80000008 EBX[0] |
//! | `write-bytes` | `core::ptr::write_bytes` (memset)   | any target                   |
//!
//! Non-temporal kernels (and `clzero`, which is weakly ordered too) fence once per call: a
//! call is one batch, so the heap's "published clean" store that follows a batch is ordered
//! after every zero the batch wrote. Bytes before the first and after the last 64-byte
//! line boundary are written with ordinary stores, so any address and length work.
//!
//! ```
//! use scrubheap_host::Kernel;
//! let mut buf = vec![0xffu8; 10_000];
//! for k in Kernel::available() {
//!     buf.fill(0xff);
//!     k.zero(&mut buf[3..9_000]);
//!     assert!(buf[3..9_000].iter().all(|&b| b == 0));
//!     assert_eq!((buf[2], buf[9_000]), (0xff, 0xff));
//! }
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

/// Cache line size the non-temporal and `clzero` kernels work in.
const LINE: usize = 64;

/// A way of writing zero over memory.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kernel {
    /// `rep stosb`: microcoded string store, fast with ERMS/FSRM.
    RepStosb,
    /// AVX2 32-byte non-temporal stores (`_mm256_stream_si256`), one `sfence` per call.
    Avx2Nt,
    /// AVX-512 64-byte non-temporal stores (`_mm512_stream_si512`), one `sfence` per call.
    Avx512Nt,
    /// AMD `clzero`: zero one whole cache line per instruction, one `sfence` per call.
    Clzero,
    /// `core::ptr::write_bytes` (the C library's `memset`): the portable baseline.
    WriteBytes,
}

impl Kernel {
    /// Every kernel this crate knows, available here or not.
    pub const ALL: [Kernel; 5] =
        [Kernel::RepStosb, Kernel::Avx2Nt, Kernel::Avx512Nt, Kernel::Clzero, Kernel::WriteBytes];

    /// The kernel's name, as `bench scrub` prints it and [`FromStr`] parses it.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::RepStosb => "rep-stosb",
            Kernel::Avx2Nt => "avx2-nt",
            Kernel::Avx512Nt => "avx512-nt",
            Kernel::Clzero => "clzero",
            Kernel::WriteBytes => "write-bytes",
        }
    }

    /// Whether this CPU (and this build's target) can run the kernel.
    pub fn is_available(self) -> bool {
        match self {
            Kernel::WriteBytes => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::RepStosb => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Nt => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Nt => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Clzero => x86::has_clzero(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The kernels this CPU can run, in [`Kernel::ALL`] order.
    pub fn available() -> Vec<Kernel> {
        Kernel::ALL.into_iter().filter(|k| k.is_available()).collect()
    }

    /// Writes zero over `buf`.
    ///
    /// # Panics
    /// If the kernel is not available on this CPU (see [`Kernel::is_available`]).
    pub fn zero(self, buf: &mut [u8]) {
        self.assert_available();
        // SAFETY: `buf` is a live, exclusively borrowed region of `buf.len()` bytes and the
        // kernel was just checked to be available on this CPU.
        unsafe { self.zero_raw(buf.as_mut_ptr(), buf.len()) }
    }

    pub(crate) fn assert_available(self) {
        assert!(self.is_available(), "zeroing kernel {} is not available on this CPU", self.name());
    }

    /// Writes zero over `len` bytes at `p`.
    ///
    /// # Safety
    /// `[p, p + len)` must be valid for writes and not accessed by anyone else during the
    /// call, and the kernel must be available ([`Kernel::is_available`]).
    pub(crate) unsafe fn zero_raw(self, p: *mut u8, len: usize) {
        debug_assert!(self.is_available());
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: forwarded from this function's contract.
            Kernel::RepStosb => unsafe { x86::rep_stosb(p, len) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: forwarded; the caller guarantees AVX2 is available.
            Kernel::Avx2Nt => unsafe { x86::avx2_nt(p, len) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: forwarded; the caller guarantees AVX-512F is available.
            Kernel::Avx512Nt => unsafe { x86::avx512_nt(p, len) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: forwarded; the caller guarantees CLZERO is available.
            Kernel::Clzero => unsafe { x86::clzero(p, len) },
            // SAFETY: forwarded from this function's contract; no alignment is needed.
            Kernel::WriteBytes => unsafe { core::ptr::write_bytes(p, 0, len) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("kernel {} is x86_64-only", self.name()),
        }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A kernel name [`Kernel::from_str`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown zeroing kernel {0:?}: expected one of rep-stosb, avx2-nt, avx512-nt, clzero, write-bytes")]
pub struct UnknownKernel(pub String);

impl FromStr for Kernel {
    type Err = UnknownKernel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kernel::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| UnknownKernel(s.to_string()))
    }
}

/// Fills `len` bytes at `p` (8-byte aligned, `len` a multiple of 8) with `word` repeated, at
/// memory speed: non-temporal stores where the CPU has them. Ends with a store fence.
///
/// # Safety
/// `[p, p + len)` must be valid for writes and not accessed by anyone else during the call;
/// `p` must be 8-byte aligned and `len` a multiple of 8.
pub(crate) unsafe fn fill_words_raw(p: *mut u8, len: usize, word: u64) {
    debug_assert!((p as usize).is_multiple_of(8) && len.is_multiple_of(8));
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: forwarded from this function's contract; AVX-512F was just detected.
            return unsafe { x86::fill_avx512_nt(p, len, word) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: forwarded from this function's contract; AVX2 was just detected.
            return unsafe { x86::fill_avx2_nt(p, len, word) };
        }
    }
    // SAFETY: forwarded from this function's contract (aligned, in bounds, exclusive).
    unsafe { fill_words_portable(p, len, word) }
}

/// Plain-store fill of 8-byte words.
///
/// # Safety
/// As [`fill_words_raw`].
unsafe fn fill_words_portable(p: *mut u8, len: usize, word: u64) {
    let w = p.cast::<u64>();
    for i in 0..len / 8 {
        // SAFETY: `i * 8 + 8 <= len`, so the word is inside the caller's region, and `p` is
        // 8-byte aligned.
        unsafe { w.add(i).write(word) };
    }
}

/// What [`calibrate`] measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    /// The fastest kernel.
    pub best: Kernel,
    /// Each available kernel with its median throughput in GB/s (10^9 bytes per second),
    /// in [`Kernel::ALL`] order.
    pub gbps: Vec<(Kernel, f64)>,
    /// Bytes each round zeroed.
    pub bytes: usize,
    /// Bytes per kernel call (the last call of a round may be shorter).
    pub call_bytes: usize,
}

impl Calibration {
    /// The measured throughput of `k`, if it was measured.
    pub fn gbps_of(&self, k: Kernel) -> Option<f64> {
        self.gbps.iter().find(|(x, _)| *x == k).map(|&(_, g)| g)
    }
}

/// Zeroes `buf` (which should be prefaulted and larger than the last-level cache, for
/// example 64 MiB) with each available kernel, in calls of `call_bytes` (0: the whole
/// buffer in one call), `rounds` timed rounds each after one untimed warm-up, the kernels
/// interleaved round by round so drift in the machine's load spreads over all of them.
/// Returns the kernel with the best median throughput.
///
/// Measure at the size the kernel will be called with: the heap calls it once per scrub
/// batch (1 MiB by default). The ranking depends on it: `rep stosb` switches to
/// cache-bypassing stores only for very large calls, so it can lead for one call over a
/// whole arena and trail the non-temporal kernels by half at 1 MiB calls.
///
/// # Panics
/// If `buf` is empty or `rounds` is 0.
pub fn calibrate(buf: &mut [u8], call_bytes: usize, rounds: usize) -> Calibration {
    assert!(!buf.is_empty() && rounds > 0, "calibration needs a non-empty buffer and at least one round");
    let call = if call_bytes == 0 { buf.len() } else { call_bytes.min(buf.len()) };
    let kernels = Kernel::available();
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); kernels.len()];
    let run = |k: Kernel, buf: &mut [u8]| buf.chunks_mut(call).for_each(|c| k.zero(c));
    for &k in &kernels {
        run(k, buf);
    }
    for _ in 0..rounds {
        for (i, &k) in kernels.iter().enumerate() {
            let t = Instant::now();
            run(k, buf);
            times[i].push(t.elapsed().as_secs_f64());
        }
    }
    let gbps: Vec<(Kernel, f64)> =
        kernels.iter().zip(times).map(|(&k, t)| (k, buf.len() as f64 / median(t).max(1e-9) / 1e9)).collect();
    let best = gbps.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1)).map(|(k, _)| k).unwrap_or(Kernel::WriteBytes);
    Calibration { best, gbps, bytes: buf.len(), call_bytes: call }
}

/// The median of `v` (the mean of the middle two for an even count).
///
/// # Panics
/// If `v` is empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty(), "median of nothing");
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Splits `[p, p + len)` into an unaligned head, a body of whole 64-byte lines starting
/// 64-byte aligned, and an unaligned tail: returns `(head_len, body_len)`.
fn split_lines(p: *mut u8, len: usize) -> (usize, usize) {
    let head = (p as usize).wrapping_neg() % LINE;
    if head >= len {
        return (len, 0);
    }
    let body = (len - head) / LINE * LINE;
    (head, body)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{split_lines, LINE};
    use core::arch::asm;
    use core::arch::x86_64::{
        __cpuid, _mm256_set1_epi64x, _mm256_setzero_si256, _mm256_stream_si256, _mm512_set1_epi64,
        _mm512_setzero_si512, _mm512_stream_si512, _mm_sfence,
    };
    use std::sync::OnceLock;

    /// CLZERO support: CPUID leaf 0x80000008, EBX bit 0 (AMD).
    pub(super) fn has_clzero() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            // Leaf 0x80000000 reports the highest extended leaf; read 0x80000008 only if
            // that covers it.
            let max_ext = __cpuid(0x8000_0000).eax;
            max_ext >= 0x8000_0008 && __cpuid(0x8000_0008).ebx & 1 == 1
        })
    }

    /// # Safety
    /// `[p, p + len)` valid for writes and exclusively ours for the call.
    pub(super) unsafe fn rep_stosb(p: *mut u8, len: usize) {
        // SAFETY: `rep stosb` writes exactly `rcx` bytes of `al` forward from `rdi` (the
        // direction flag is clear on entry to an asm! block by the Rust ABI), all inside the
        // caller's region. It touches no stack and no flags.
        unsafe {
            asm!("rep stosb", inout("rcx") len => _, inout("rdi") p => _, in("al") 0u8,
                 options(nostack, preserves_flags));
        }
    }

    /// # Safety
    /// `[p, p + len)` valid for writes and exclusively ours for the call; AVX2 available.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn avx2_nt(p: *mut u8, len: usize) {
        let (head, body) = split_lines(p, len);
        // SAFETY: the head is the first `head <= len` bytes of the caller's region.
        unsafe { core::ptr::write_bytes(p, 0, head) };
        let z = _mm256_setzero_si256();
        let mut q = p.wrapping_add(head);
        let end = q.wrapping_add(body);
        while q < end {
            // SAFETY: `q` is 64-byte aligned (split_lines) and `[q, q + 64)` lies inside the
            // body, so both 32-byte aligned stores are in the caller's region.
            unsafe {
                _mm256_stream_si256(q.cast(), z);
                _mm256_stream_si256(q.add(32).cast(), z);
            }
            q = q.wrapping_add(LINE);
        }
        // One fence per call: the non-temporal stores above are ordered before any later store.
        _mm_sfence();
        // SAFETY: the tail is the bytes after head + body, inside the caller's region.
        unsafe { core::ptr::write_bytes(end, 0, len - head - body) };
    }

    /// # Safety
    /// `[p, p + len)` valid for writes and exclusively ours for the call; AVX-512F available.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512_nt(p: *mut u8, len: usize) {
        let (head, body) = split_lines(p, len);
        // SAFETY: the head is the first `head <= len` bytes of the caller's region.
        unsafe { core::ptr::write_bytes(p, 0, head) };
        let z = _mm512_setzero_si512();
        let mut q = p.wrapping_add(head);
        let end = q.wrapping_add(body);
        while q < end {
            // SAFETY: `q` is 64-byte aligned and `[q, q + 64)` lies inside the body.
            unsafe { _mm512_stream_si512(q.cast(), z) };
            q = q.wrapping_add(LINE);
        }
        _mm_sfence();
        // SAFETY: the tail is the bytes after head + body, inside the caller's region.
        unsafe { core::ptr::write_bytes(end, 0, len - head - body) };
    }

    /// # Safety
    /// `[p, p + len)` valid for writes and exclusively ours for the call; CLZERO available.
    pub(super) unsafe fn clzero(p: *mut u8, len: usize) {
        let (head, body) = split_lines(p, len);
        // SAFETY: the head is the first `head <= len` bytes of the caller's region.
        unsafe { core::ptr::write_bytes(p, 0, head) };
        let start = p.wrapping_add(head);
        let end = start.wrapping_add(body);
        if body > 0 {
            // SAFETY: `clzero` zeroes the whole 64-byte line containing `rax`; `rax` walks
            // the 64-byte aligned lines of the body, each entirely inside the caller's
            // region, and stops at `end`. The loop clobbers flags (declared by not using
            // preserves_flags) and touches no stack. CLZERO is weakly ordered, hence the
            // `sfence` after the loop, once per call.
            unsafe {
                asm!(
                    "2:",
                    "clzero",
                    "add rax, 64",
                    "cmp rax, {end}",
                    "jb 2b",
                    "sfence",
                    end = in(reg) end,
                    inout("rax") start => _,
                    options(nostack),
                );
            }
        }
        // SAFETY: the tail is the bytes after head + body, inside the caller's region.
        unsafe { core::ptr::write_bytes(end, 0, len - head - body) };
    }

    /// # Safety
    /// `[p, p + len)` valid for writes and exclusively ours; `p` 8-aligned, `len % 8 == 0`;
    /// AVX-512F available.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fill_avx512_nt(p: *mut u8, len: usize, word: u64) {
        let (head, body) = split_lines(p, len);
        // SAFETY: head and tail are multiples of 8 bytes (p and len are 8-aligned, lines are
        // 64), 8-aligned, inside the caller's region.
        unsafe { super::fill_words_portable(p, head, word) };
        let v = _mm512_set1_epi64(word as i64);
        let mut q = p.wrapping_add(head);
        let end = q.wrapping_add(body);
        while q < end {
            // SAFETY: `q` is 64-byte aligned and `[q, q + 64)` lies inside the body.
            unsafe { _mm512_stream_si512(q.cast(), v) };
            q = q.wrapping_add(LINE);
        }
        _mm_sfence();
        // SAFETY: as for the head.
        unsafe { super::fill_words_portable(end, len - head - body, word) };
    }

    /// # Safety
    /// `[p, p + len)` valid for writes and exclusively ours; `p` 8-aligned, `len % 8 == 0`;
    /// AVX2 available.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn fill_avx2_nt(p: *mut u8, len: usize, word: u64) {
        let (head, body) = split_lines(p, len);
        // SAFETY: as in fill_avx512_nt.
        unsafe { super::fill_words_portable(p, head, word) };
        let v = _mm256_set1_epi64x(word as i64);
        let mut q = p.wrapping_add(head);
        let end = q.wrapping_add(body);
        while q < end {
            // SAFETY: `q` is 64-byte aligned and `[q, q + 64)` lies inside the body.
            unsafe {
                _mm256_stream_si256(q.cast(), v);
                _mm256_stream_si256(q.add(32).cast(), v);
            }
            q = q.wrapping_add(LINE);
        }
        _mm_sfence();
        // SAFETY: as for the head.
        unsafe { super::fill_words_portable(end, len - head - body, word) };
    }
}

/// How long one zeroing batch of a scrubber should take, CPU time: half the 1 ms goal
/// for a non-preemptible section, the other half left for lock waits and for other
/// writers that join during the batch (the simulator sizes its batches the same way).
pub const BATCH_TARGET_NS: u64 = 500_000;

/// Sizes a scrubber's zeroing batches by the bandwidth it measured: each batch should
/// take [`BATCH_TARGET_NS`] of CPU time at the rate the thread's last `scrub_step` calls
/// got (shared with the other writers of its node, whatever they are). Starts at the
/// heap's fixed batch; at most that, at least one frame.
#[derive(Debug)]
pub struct BatchSizer {
    frame_bytes: u64,
    max_frames: u64,
    /// Smoothed bytes per CPU ns; None until the first measurement.
    rate: std::cell::Cell<Option<f64>>,
}

/// Calls shorter than this many frames are not measured (timer noise).
const MIN_MEASURED_FRAMES: u64 = 16;

impl BatchSizer {
    /// A sizer for frames of `frame_bytes` and batches of at most `max_frames` (the
    /// heap's `scrub_batch`).
    pub fn new(frame_bytes: u64, max_frames: u64) -> Self {
        assert!(frame_bytes > 0 && max_frames > 0, "frames and batches are not empty");
        BatchSizer { frame_bytes, max_frames, rate: std::cell::Cell::new(None) }
    }

    /// Records that a call zeroed `frames` frames in `cpu_ns` of the thread's CPU time.
    pub fn observe(&self, frames: u64, cpu_ns: u64) {
        if frames < MIN_MEASURED_FRAMES || cpu_ns == 0 {
            return;
        }
        let now = (frames * self.frame_bytes) as f64 / cpu_ns as f64;
        // A quarter of the weight to the newest call: follows a change in a few calls.
        let r = self.rate.get().map_or(now, |old| 0.75 * old + 0.25 * now);
        debug_assert!(r > 0.0 && r.is_finite());
        self.rate.set(Some(r));
    }

    /// Frames the next batch should zero.
    pub fn frames(&self) -> u64 {
        let f =
            self.rate.get().map_or(self.max_frames, |r| (r * BATCH_TARGET_NS as f64 / self.frame_bytes as f64) as u64);
        let f = f.clamp(1, self.max_frames);
        debug_assert!(f >= 1 && f <= self.max_frames);
        f
    }

    /// `inner` with this sizer's batch limit: what the scrubber hands `scrub_step`.
    pub fn preempt<'a>(&self, inner: &'a dyn scrubheap::Preempt) -> SizedPreempt<'a> {
        SizedPreempt { inner, frames: self.frames() }
    }
}

/// A [`scrubheap::Preempt`] that asks `inner` at every preemption point and limits each
/// batch to `frames` (see [`BatchSizer`]).
pub struct SizedPreempt<'a> {
    inner: &'a dyn scrubheap::Preempt,
    frames: u64,
}

impl scrubheap::Preempt for SizedPreempt<'_> {
    fn check(&self) -> bool {
        self.inner.check()
    }
    fn batch_limit(&self) -> Option<u64> {
        Some(self.frames)
    }
}

#[cfg(test)]
mod tests {
    use super::BatchSizer;

    #[test]
    fn batches_follow_the_measured_bandwidth() {
        let b = BatchSizer::new(4096, 256);
        assert_eq!(b.frames(), 256, "the heap's batch until something is measured");
        b.observe(8, 1_000_000);
        assert_eq!(b.frames(), 256, "calls of a few frames are not measured");
        // 0.5 GB/s: 4096 frames in 33.5 ms of CPU time; 0.5 ms is 61 frames.
        b.observe(4096, 33_554_432);
        assert_eq!(b.frames(), 61);
        // 10 GB/s again: a quarter of the weight per call, capped at the heap's batch.
        for _ in 0..16 {
            b.observe(4096, 1_677_722);
        }
        assert_eq!(b.frames(), 256);
        let p = b.preempt(&scrubheap::NeverPreempt);
        assert_eq!(scrubheap::Preempt::batch_limit(&p), Some(256));
        assert!(!scrubheap::Preempt::check(&p));
    }

    use super::*;

    const KIB: usize = 1024;

    /// Zeroes `[off, off + len)` of a 0xA5-filled buffer with guard bytes both sides and
    /// checks exactly those bytes changed.
    fn check(k: Kernel, off: usize, len: usize) {
        let guard = 256;
        let mut buf = vec![0xA5u8; off + len + guard];
        k.zero(&mut buf[off..off + len]);
        let first_bad = buf[off..off + len].iter().position(|&b| b != 0);
        assert_eq!(first_bad, None, "{k}: byte {first_bad:?} of [{off}, +{len}) not zeroed");
        assert!(buf[..off].iter().all(|&b| b == 0xA5), "{k}: wrote before offset {off} (len {len})");
        assert!(buf[off + len..].iter().all(|&b| b == 0xA5), "{k}: wrote past [{off}, +{len})");
    }

    #[test]
    fn each_kernel_zeroes_exactly_the_requested_bytes() {
        let sizes = [4 * KIB, 64 * KIB, 2048 * KIB, 3 * 4 * KIB, 17 * 4 * KIB, 511 * 4 * KIB];
        for k in Kernel::available() {
            for &len in &sizes {
                for off in [0, 8, 64, 4096] {
                    check(k, off, len);
                }
            }
        }
    }

    #[test]
    fn each_kernel_handles_unaligned_and_tiny_ranges() {
        for k in Kernel::available() {
            for len in [0, 1, 7, 63, 64, 65, 127, 129, 1000] {
                for off in [0, 1, 31, 33, 63] {
                    check(k, off, len);
                }
            }
        }
    }

    #[test]
    fn fill_writes_the_word_and_nothing_else() {
        let word = 0x0123_4567_89ab_cdef_u64;
        for (off, len) in [(0, 4096), (8, 64), (16, 8), (0, 0), (24, 65536 + 40)] {
            let mut buf = vec![0u64; (off + len) / 8 + 32];
            let p = buf.as_mut_ptr().cast::<u8>();
            // SAFETY: `[p + off, + len)` is inside `buf`, which is 8-aligned and exclusively ours.
            unsafe { fill_words_raw(p.add(off), len, word) };
            for (i, &w) in buf.iter().enumerate() {
                let inside = i * 8 >= off && i * 8 < off + len;
                assert_eq!(w, if inside { word } else { 0 }, "word {i} for fill [{off}, +{len})");
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for k in Kernel::ALL {
            assert_eq!(k.name().parse::<Kernel>(), Ok(k));
        }
        assert!("stosq".parse::<Kernel>().unwrap_err().to_string().contains("rep-stosb"));
    }

    #[test]
    fn calibration_measures_each_available_kernel_and_picks_one_of_them() {
        let mut buf = vec![1u8; 256 * KIB + 100];
        let c = calibrate(&mut buf, 64 * KIB, 2);
        assert_eq!(c.call_bytes, 64 * KIB);
        let measured: Vec<Kernel> = c.gbps.iter().map(|&(k, _)| k).collect();
        assert_eq!(measured, Kernel::available());
        assert!(c.gbps.iter().all(|&(_, g)| g.is_finite() && g > 0.0));
        assert!(measured.contains(&c.best));
        assert_eq!(c.gbps_of(c.best), c.gbps.iter().map(|&(_, g)| g).max_by(f64::total_cmp));
        assert!(buf.iter().all(|&b| b == 0));
        buf.fill(1);
        assert_eq!(calibrate(&mut buf, 0, 1).call_bytes, buf.len());
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
