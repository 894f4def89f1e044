//! The arena: one anonymous private mapping that holds every frame the heap manages, frame
//! `base + i` at byte offset `i * frame_size`.
//!
//! Division of duties: the heap guarantees that the frames it passes to [`FrameMemory`] are
//! its own at that moment (free frames being scrubbed, or frames being handed over), and the
//! runtime guarantees the same for the frames it passes to [`Arena::fill`], [`Arena::poison`]
//! and the leak checks (an owner's own frames, or frames just freed). The arena guarantees
//! memory safety: every method checks its frame range against the mapping and panics on a
//! range outside it, so no call can touch memory that is not the arena's.
//!
//! Concurrent calls on *overlapping* ranges are outside that contract. The bytes are plain
//! data with no validity invariant, so the effect is unspecified contents (what two CPUs
//! racing on a page get); the heap and the runtime never make such calls.
//!
//! ```
//! use scrubheap::{DomId, FrameMemory, Mfn};
//! use scrubheap_host::{Arena, ArenaConfig, Kernel};
//! let arena = Arena::new(ArenaConfig::new(Mfn(0x100), 16, 4096).with_kernel(Kernel::WriteBytes)).unwrap();
//! arena.fill(Mfn(0x104), 2, 0xfeed);
//! assert_eq!(arena.count_nonzero_words(Mfn(0x100), 16), 2 * 4096 / 8);
//! arena.zero(Mfn(0x104), 2);
//! assert!(arena.is_zero(Mfn(0x100), 16));
//! ```

use crate::zero::{self, Calibration, Kernel};
use scrubheap::{DomId, FrameMemory, Mfn};
use std::fmt;
use std::io;
use std::ptr::NonNull;
#[cfg(feature = "testing")]
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering, Ordering::Relaxed};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const HUGE_2M: usize = 2 * MIB;
const HUGE_1G: usize = 1 << 30;
/// The smallest page the prefault fallback touches (one write per 4 KiB page).
const SMALL_PAGE: usize = 4096;

/// The word [`Arena::poison`] writes: every byte non-zero, recognisable in a dump.
pub const POISON: u64 = 0x5C5C_DEAD_BEEF_5C5C;

/// Everything needed to build an [`Arena`].
#[derive(Clone, Debug, PartialEq)]
pub struct ArenaConfig {
    /// The first frame's number: frame `base + i` is at offset `i * frame_size`.
    pub base: Mfn,
    /// Number of frames.
    pub frames: u64,
    /// Bytes per frame: a power of two of at least 4096.
    pub frame_size: usize,
    /// Whether to try hugetlbfs pages (1 GiB, then 2 MiB) before falling back to ordinary
    /// anonymous memory with transparent huge pages advised. Only pages the host's pools
    /// hold can be used; an empty pool falls back cleanly.
    pub hugetlb: bool,
    /// Threads that prefault the mapping; 0 means one per available CPU.
    pub prefault_threads: usize,
    /// The zeroing kernel; `None` runs [`zero::calibrate`] over the start of the arena at
    /// construction and uses the fastest.
    pub kernel: Option<Kernel>,
    /// Bytes the construction-time calibration zeroes per round (at most the arena).
    pub calibration_bytes: usize,
    /// Bytes per kernel call in the calibration: the heap's scrub batch in bytes, the
    /// size [`FrameMemory::zero`] will be called with (see [`zero::calibrate`]).
    pub calibration_call_bytes: usize,
    /// Whether to advise transparent huge pages (`MADV_HUGEPAGE`) for anonymous memory;
    /// `false` advises against them (`MADV_NOHUGEPAGE`), for measuring what THP is worth.
    pub thp: bool,
    /// Slices the arena is split into, one per heap node, each `frames / numa_slices`
    /// frames. On a host with several NUMA nodes, slice `i` is bound (`mbind`, before
    /// prefaulting) to the host's `i`-th online node, modulo their number; on a one-node
    /// host the slices are emulated nodes and nothing is bound.
    pub numa_slices: usize,
}

impl ArenaConfig {
    /// `frames` frames of `frame_size` bytes from frame `base`: hugetlbfs if the host has a
    /// pool, prefaulted on every CPU, kernel picked by calibration over 64 MiB.
    pub fn new(base: Mfn, frames: u64, frame_size: usize) -> Self {
        ArenaConfig {
            base,
            frames,
            frame_size,
            hugetlb: true,
            prefault_threads: 0,
            kernel: None,
            calibration_bytes: 64 * MIB,
            calibration_call_bytes: MIB,
            thp: true,
            numa_slices: 1,
        }
    }

    /// Builder: split into `n` node slices, bound to host nodes where the host has them.
    pub fn with_numa_slices(mut self, n: usize) -> Self {
        self.numa_slices = n;
        self
    }

    /// Builder: use this zeroing kernel instead of calibrating.
    pub fn with_kernel(mut self, k: Kernel) -> Self {
        self.kernel = Some(k);
        self
    }

    /// Builder: whether to try hugetlbfs pages.
    pub fn with_hugetlb(mut self, on: bool) -> Self {
        self.hugetlb = on;
        self
    }

    /// Builder: whether to advise transparent huge pages.
    pub fn with_thp(mut self, on: bool) -> Self {
        self.thp = on;
        self
    }

    /// Builder: prefault with this many threads (0: one per CPU).
    pub fn with_prefault_threads(mut self, n: usize) -> Self {
        self.prefault_threads = n;
        self
    }
}

/// What memory backs the arena.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Backing {
    /// hugetlbfs 1 GiB pages.
    Hugetlb1G,
    /// hugetlbfs 2 MiB pages.
    Hugetlb2M,
    /// Ordinary anonymous memory, 2 MiB aligned; `thp_advised` says whether the kernel
    /// accepted `MADV_HUGEPAGE` (see [`Arena::huge_bytes`] for what it actually got).
    Anonymous {
        /// Whether `madvise(MADV_HUGEPAGE)` succeeded.
        thp_advised: bool,
    },
}

impl fmt::Display for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backing::Hugetlb1G => f.write_str("hugetlbfs 1 GiB pages"),
            Backing::Hugetlb2M => f.write_str("hugetlbfs 2 MiB pages"),
            Backing::Anonymous { thp_advised: true } => f.write_str("anonymous, THP advised"),
            Backing::Anonymous { thp_advised: false } => f.write_str("anonymous, THP not advised"),
        }
    }
}

/// How the arena was prefaulted.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Prefault {
    /// `madvise(MADV_POPULATE_WRITE)` (Linux 5.14 and later).
    PopulateWrite,
    /// One write per 4 KiB page (kernels without `MADV_POPULATE_WRITE`).
    Touch,
}

/// Why an arena could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ArenaError {
    /// The configuration cannot describe an arena.
    #[error("invalid arena configuration: {0}")]
    InvalidConfig(String),
    /// `mmap` refused the mapping.
    #[error("could not map {bytes} bytes for the arena: {source}")]
    Map {
        /// Bytes asked for.
        bytes: usize,
        /// The system's answer.
        source: io::Error,
    },
    /// Populating the mapping failed (out of memory, or a huge page pool ran dry).
    #[error("could not prefault the arena: {0}")]
    Prefault(io::Error),
    /// The configured zeroing kernel does not run on this CPU.
    #[error("zeroing kernel {0} is not available on this CPU (available: {avail})", avail = available_names())]
    KernelUnavailable(Kernel),
}

/// Words sampled per frame in the (default) sampled leak check.
pub const SAMPLED_WORDS_PER_FRAME: usize = 16;

/// Counters of one place's leak check.
#[derive(Debug, Default)]
pub struct LeakCounters {
    /// Frames checked.
    pub pages_checked: AtomicU64,
    /// Frames that held a non-zero word.
    pub nonzero_pages: AtomicU64,
    /// Words read.
    pub words_checked: AtomicU64,
}

impl LeakCounters {
    /// Reads `words` words of each of `count` frames from `first` (every word if `words`
    /// is at least a frame's) and counts the frames and those holding a non-zero word;
    /// returns that number of non-zero frames.
    ///
    /// # Panics
    /// If any of those frames is outside the arena.
    pub fn check(&self, arena: &Arena, first: Mfn, count: u64, words: usize) -> u64 {
        let words = words.min(arena.frame_size() / 8);
        let mut bad = arena.sample_nonzero(first, count, words);
        if bad > 0 {
            bad = (0..count).filter(|&i| arena.sample_nonzero(Mfn(first.0 + i), 1, words) > 0).count() as u64;
        }
        assert!(bad <= count);
        self.pages_checked.fetch_add(count, Relaxed);
        self.words_checked.fetch_add(count * words as u64, Relaxed);
        self.nonzero_pages.fetch_add(bad, Relaxed);
        bad
    }

    /// The counts so far, named after the place that made them.
    pub fn tally(&self, place: &str, words_per_page: usize) -> LeakTally {
        LeakTally {
            place: place.to_string(),
            pages_checked: self.pages_checked.load(Relaxed),
            nonzero_pages: self.nonzero_pages.load(Relaxed),
            words_checked: self.words_checked.load(Relaxed),
            words_per_page,
        }
    }
}

/// What one place's leak check found (a snapshot of [`LeakCounters`]).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct LeakTally {
    /// `boot` (frames clean from the prefault, read once), `scrub` (read back after each
    /// zeroing) or `handoff` (read when given to a new owner: verify mode only).
    pub place: String,
    /// Frames checked.
    pub pages_checked: u64,
    /// Of those, frames holding a non-zero word. Must be 0.
    pub nonzero_pages: u64,
    /// 8-byte words read.
    pub words_checked: u64,
    /// Words read of each frame (512 for every word of a 4 KiB frame).
    pub words_per_page: usize,
}

fn available_names() -> String {
    Kernel::available().iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
}

/// A mapping of frames, prefaulted, with a zeroing kernel. See the module documentation
/// for who guarantees what.
pub struct Arena {
    ptr: NonNull<u8>,
    len: usize,
    base: u64,
    frames: u64,
    frame_size: usize,
    backing: Backing,
    kernel: AtomicU8,
    calibration: Option<Calibration>,
    prefault: Duration,
    prefault_method: Prefault,
    prefault_threads: usize,
    numa: NumaBinding,
    /// What the read-back after every zeroing found (the leak check where frames become
    /// clean).
    scrub_check: LeakCounters,
    /// Words of each zeroed frame read back: [`SAMPLED_WORDS_PER_FRAME`], or every word.
    readback_words: AtomicUsize,
    /// Test hook (feature `testing`): zeroing does nothing, so the read-back must catch it.
    #[cfg(feature = "testing")]
    skip_zeroing: AtomicBool,
}

/// How the arena's node slices relate to the host's NUMA nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NumaBinding {
    /// The host has one NUMA node (or tells nothing): slices are emulated nodes.
    Emulated,
    /// Slice `i` is bound to host node `nodes[i]`.
    Bound {
        /// Host node of each slice.
        nodes: Vec<u32>,
    },
    /// The host has several nodes but `mbind` refused (the memory is still usable, placed
    /// by the kernel's default policy).
    Failed(String),
}

impl fmt::Display for NumaBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NumaBinding::Emulated => f.write_str("nodes emulated on a one-node host"),
            NumaBinding::Bound { nodes } => write!(f, "node slices bound to host nodes {nodes:?}"),
            NumaBinding::Failed(e) => write!(f, "mbind failed ({e}); node slices not bound"),
        }
    }
}

// SAFETY: the arena owns its mapping outright (nothing else holds the pointer), and every
// access to the mapped bytes goes through methods that take `&self` and work on raw bytes
// with no validity invariant; the mapping stays valid until `drop`. Moving it to another
// thread moves that ownership.
unsafe impl Send for Arena {}
// SAFETY: shared use from several threads touches disjoint frame ranges by contract (the
// heap and runtime pass only frames they own exclusively); bounds are checked on every
// call, and the remaining shared state (`kernel`) is atomic.
unsafe impl Sync for Arena {}

impl fmt::Debug for Arena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arena")
            .field("base", &Mfn(self.base))
            .field("frames", &self.frames)
            .field("frame_size", &self.frame_size)
            .field("backing", &self.backing)
            .field("kernel", &self.kernel())
            .finish()
    }
}

impl Arena {
    /// Maps, advises and prefaults the arena, then picks its zeroing kernel.
    pub fn new(cfg: ArenaConfig) -> Result<Arena, ArenaError> {
        let bad = |m: String| Err(ArenaError::InvalidConfig(m));
        if !cfg.frame_size.is_power_of_two() || cfg.frame_size < 4096 {
            return bad(format!("frame size {} must be a power of two of at least 4096", cfg.frame_size));
        }
        if cfg.frames == 0 {
            return bad("an arena needs at least one frame".into());
        }
        let Some(len) = usize::try_from(cfg.frames).ok().and_then(|f| f.checked_mul(cfg.frame_size)) else {
            return bad(format!("{} frames of {} bytes do not fit in the address space", cfg.frames, cfg.frame_size));
        };
        if cfg.base.0.checked_add(cfg.frames).is_none() {
            return bad("frame numbers overflow 64 bits".into());
        }
        if let Some(k) = cfg.kernel {
            if !k.is_available() {
                return Err(ArenaError::KernelUnavailable(k));
            }
        }
        let (ptr, backing) = sys::map(len, cfg.hugetlb, cfg.thp)?;
        // From here on `arena` owns the mapping and unmaps it if anything below fails.
        let mut arena = Arena {
            ptr,
            len,
            base: cfg.base.0,
            frames: cfg.frames,
            frame_size: cfg.frame_size,
            backing,
            kernel: AtomicU8::new(kernel_index(Kernel::WriteBytes)),
            calibration: None,
            prefault: Duration::ZERO,
            prefault_method: Prefault::PopulateWrite,
            prefault_threads: 0,
            numa: NumaBinding::Emulated,
            scrub_check: LeakCounters::default(),
            readback_words: AtomicUsize::new(SAMPLED_WORDS_PER_FRAME),
            #[cfg(feature = "testing")]
            skip_zeroing: AtomicBool::new(false),
        };
        arena.bind_numa(cfg.numa_slices);
        let threads = match cfg.prefault_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let step = match backing {
            Backing::Hugetlb1G => HUGE_1G,
            _ => HUGE_2M,
        };
        let t = Instant::now();
        arena.prefault_method = sys::prefault(ptr, len, step, threads).map_err(ArenaError::Prefault)?;
        arena.prefault = t.elapsed();
        arena.prefault_threads = threads;
        let kernel = arena.pick_kernel(&cfg);
        arena.kernel.store(kernel_index(kernel), Ordering::Relaxed);
        Ok(arena)
    }

    /// With more than one host NUMA node and `slices > 1`: binds the arena's slices to
    /// the host's nodes round robin (`mbind`), and records how that went.
    fn bind_numa(&mut self, slices: usize) {
        let host_nodes = sys::host_numa_nodes();
        if host_nodes.len() > 1 && slices > 1 {
            let slice = self.len / slices / self.frame_size * self.frame_size;
            let nodes: Vec<u32> = (0..slices).map(|i| host_nodes[i % host_nodes.len()]).collect();
            let bound = nodes.iter().enumerate().try_for_each(|(i, &n)| {
                let end = if i + 1 == nodes.len() { self.len } else { (i + 1) * slice };
                sys::mbind(self.ptr, i * slice, end - i * slice, n)
            });
            self.numa = match bound {
                Ok(()) => NumaBinding::Bound { nodes },
                Err(e) => NumaBinding::Failed(e.to_string()),
            };
        }
    }

    /// The zeroing kernel `cfg` asks for, or else the fastest one on the arena's first
    /// `calibration_bytes`, keeping the calibration. Runs while the arena is being built.
    fn pick_kernel(&mut self, cfg: &ArenaConfig) -> Kernel {
        match cfg.kernel {
            Some(k) => k,
            None => {
                let n = cfg.calibration_bytes.clamp(SMALL_PAGE, self.len);
                // SAFETY: `[ptr, ptr + n)` is inside the mapping (`n <= len`), mapped
                // read-write and initialised (anonymous memory reads as zero), and nobody
                // else can reach it: only `Arena::new` calls this, on the arena it is still
                // building, which no other thread has seen (and `&mut self` is exclusive).
                let buf = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), n) };
                let c = zero::calibrate(buf, cfg.calibration_call_bytes, 3);
                let best = c.best;
                self.calibration = Some(c);
                best
            }
        }
    }

    /// The first frame.
    pub fn base(&self) -> Mfn {
        Mfn(self.base)
    }

    /// One past the last frame.
    pub fn end(&self) -> Mfn {
        Mfn(self.base + self.frames)
    }

    /// Number of frames.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Bytes per frame.
    pub fn frame_size(&self) -> usize {
        self.frame_size
    }

    /// Bytes in the arena (`frames * frame_size`).
    pub fn len_bytes(&self) -> usize {
        self.len
    }

    /// What memory backs the arena.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// Bytes of the arena the kernel currently backs with huge pages: all of it for
    /// hugetlbfs, the `AnonHugePages` of the arena's mappings in `/proc/self/smaps`
    /// otherwise (capped at the arena's size; `None` where that file cannot be read).
    pub fn huge_bytes(&self) -> Option<u64> {
        match self.backing {
            Backing::Hugetlb1G | Backing::Hugetlb2M => Some(self.len as u64),
            Backing::Anonymous { .. } => sys::anon_huge_bytes(self.ptr.as_ptr() as usize, self.len),
        }
    }

    /// The zeroing kernel [`FrameMemory::zero`] uses.
    pub fn kernel(&self) -> Kernel {
        Kernel::ALL[self.kernel.load(Ordering::Relaxed) as usize]
    }

    /// Switches the zeroing kernel (for benchmarks comparing them).
    ///
    /// # Panics
    /// If the kernel is not available on this CPU.
    pub fn set_kernel(&self, k: Kernel) {
        k.assert_available();
        self.kernel.store(kernel_index(k), Ordering::Relaxed);
    }

    /// What the construction-time calibration measured (`None` if the kernel was given).
    pub fn calibration(&self) -> Option<&Calibration> {
        self.calibration.as_ref()
    }

    /// Seconds the prefault took.
    pub fn prefault_seconds(&self) -> f64 {
        self.prefault.as_secs_f64()
    }

    /// How the arena was prefaulted.
    pub fn prefault_method(&self) -> Prefault {
        self.prefault_method
    }

    /// Threads that prefaulted the arena.
    pub fn prefault_threads(&self) -> usize {
        self.prefault_threads
    }

    /// How the node slices sit on the host's NUMA nodes.
    pub fn numa(&self) -> &NumaBinding {
        &self.numa
    }

    /// One line saying what the arena got, for reports.
    pub fn describe(&self) -> String {
        let huge = match (self.backing, self.huge_bytes()) {
            (Backing::Anonymous { .. }, Some(h)) => format!(", {} of {} MiB in huge pages", h >> 20, self.len >> 20),
            _ => String::new(),
        };
        format!(
            "{} frames of {} B ({} MiB), {}{huge}, {}, prefaulted in {:.3} s by {} on {} threads, kernel {}",
            self.frames,
            self.frame_size,
            self.len >> 20,
            self.backing,
            self.numa,
            self.prefault_seconds(),
            match self.prefault_method {
                Prefault::PopulateWrite => "MADV_POPULATE_WRITE",
                Prefault::Touch => "touching each page",
            },
            self.prefault_threads,
            self.kernel()
        )
    }

    /// The host address of frame `first`, for handing `count` frames from it to something
    /// that maps guest memory (a KVM memory slot, a `vm-memory` region). Getting the
    /// pointer is safe; writing through it is the caller's business: by the arena's
    /// contract only the frames' owner may touch them, and only while the arena lives.
    ///
    /// # Panics
    /// If any of those frames is outside the arena.
    pub fn host_ptr(&self, first: Mfn, count: u64) -> *mut u8 {
        let (off, _) = self.span(first, count);
        self.ptr.as_ptr().wrapping_add(off)
    }

    /// Byte offset and length of `count` frames from `first`.
    ///
    /// # Panics
    /// If any of those frames is outside the arena.
    fn span(&self, first: Mfn, count: u64) -> (usize, usize) {
        let end = self.base + self.frames;
        let inside = first.0 >= self.base && first.0 <= end && count <= end - first.0;
        assert!(
            inside,
            "frames [{first}, {first} + {count}) are outside the arena's frames [{}, {})",
            Mfn(self.base),
            Mfn(end)
        );
        // Both fit in usize: they are at most `self.len`, which was computed in usize.
        ((first.0 - self.base) as usize * self.frame_size, count as usize * self.frame_size)
    }

    /// The bytes of `count` frames from `first`, as 8-byte words, for reading.
    ///
    /// # Panics
    /// If any of those frames is outside the arena.
    fn words(&self, first: Mfn, count: u64) -> &[u64] {
        let (off, len) = self.span(first, count);
        // SAFETY: `[off, off + len)` is inside the mapping (checked by `span`), which lives
        // as long as `self`; it is 8-byte aligned (the mapping is page aligned and frames are
        // at least 4096 bytes) and always initialised (mapped memory reads as bytes, and any
        // bit pattern is a valid u64). By the arena's contract the caller owns these frames,
        // so no one writes them while the returned borrow lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off).cast::<u64>(), len / 8) }
    }

    /// An owner writes `tag` into every 8-byte word of `count` frames from `first`, at
    /// memory speed (non-temporal stores where the CPU has them). A tag of 0 writes zeros.
    ///
    /// # Panics
    /// If any of those frames is outside the arena.
    pub fn fill(&self, first: Mfn, count: u64, tag: u64) {
        let (off, len) = self.span(first, count);
        // SAFETY: the range is inside the mapping (checked by `span`), 8-byte aligned with a
        // length that is a multiple of 8 (whole frames of at least 4096 bytes), and the
        // caller owns the frames (arena contract), so no one else touches them meanwhile.
        unsafe { zero::fill_words_raw(self.ptr.as_ptr().add(off), len, tag) }
    }

    /// Writes [`POISON`] over `count` frames from `first` (verify mode: freed frames hold
    /// a pattern no zeroing can be mistaken for, so a skipped scrub shows up as a leak).
    ///
    /// # Panics
    /// If any of those frames is outside the arena.
    pub fn poison(&self, first: Mfn, count: u64) {
        self.fill(first, count, POISON);
    }

    /// How many 8-byte words of `count` frames from `first` are non-zero (whole-page leak
    /// check).
    ///
    /// # Panics
    /// If any of those frames is outside the arena.
    pub fn count_nonzero_words(&self, first: Mfn, count: u64) -> u64 {
        self.words(first, count).iter().map(|&w| (w != 0) as u64).sum()
    }

    /// The leak check where frames become clean: every [`FrameMemory::zero`] (a scrubber
    /// thread's, an allocation's in-place scrub, a synchronous scrub at free) reads back
    /// [`Arena::scrub_readback_words`] words of each frame it zeroed and counts here.
    pub fn scrub_check(&self) -> &LeakCounters {
        &self.scrub_check
    }

    /// Words of each frame read back after zeroing.
    pub fn scrub_readback_words(&self) -> usize {
        self.readback_words.load(Ordering::Relaxed)
    }

    /// Sets the words of each frame read back after zeroing (at least 1; at or above the
    /// words in a frame, every word).
    ///
    /// # Panics
    /// If `words` is 0: the read-back is what proves a scrub, it cannot be turned off.
    pub fn set_scrub_readback_words(&self, words: usize) {
        assert!(words > 0, "the read-back after zeroing reads at least one word a frame");
        self.readback_words.store(words.min(self.frame_size / 8), Ordering::Relaxed);
    }

    /// Test hook (feature `testing`, never in a production build): with `skip` set,
    /// [`FrameMemory::zero`] leaves the bytes as they are (a broken zeroing kernel) but
    /// still reads them back, so the read-back must report them.
    #[cfg(feature = "testing")]
    pub fn sabotage_zeroing(&self, skip: bool) {
        self.skip_zeroing.store(skip, Ordering::Relaxed);
    }

    /// A sampled leak check: reads `words_per_frame` 8-byte words of each of `count` frames
    /// from `first`, spread evenly over the frame at an offset that varies with the frame
    /// number, and returns how many were non-zero. With `words_per_frame` at or above the
    /// words in a frame it reads them all (as [`Arena::count_nonzero_words`]).
    ///
    /// # Panics
    /// If any of those frames is outside the arena.
    pub fn sample_nonzero(&self, first: Mfn, count: u64, words_per_frame: usize) -> u64 {
        let per_frame = self.frame_size / 8;
        let k = words_per_frame.min(per_frame);
        if k == 0 {
            // Still check the range, so a bad range panics whatever the sample size.
            self.span(first, count);
            return 0;
        }
        let stride = per_frame / k;
        let words = self.words(first, count);
        let mut nonzero = 0;
        for (i, frame) in words.chunks_exact(per_frame).enumerate() {
            let start = (mix(first.0 + i as u64) % stride as u64) as usize;
            nonzero += (0..k).map(|j| (frame[start + j * stride] != 0) as u64).sum::<u64>();
        }
        nonzero
    }
}

/// A cheap 64-bit mix (splitmix64's finaliser), to vary sampled offsets between frames.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn kernel_index(k: Kernel) -> u8 {
    Kernel::ALL.iter().position(|&x| x == k).expect("every kernel is in Kernel::ALL") as u8
}

impl FrameMemory for Arena {
    /// Zeroes the frames with the arena's kernel (one call, one fence), then reads back a
    /// sample of each (every word if so set) into [`Arena::scrub_check`].
    fn zero(&self, first: Mfn, count: u64) {
        crate::priority::outside_node_locks("zeroing frames");
        let (off, len) = self.span(first, count);
        #[cfg(feature = "testing")]
        let skip = self.skip_zeroing.load(Ordering::Relaxed);
        #[cfg(not(feature = "testing"))]
        let skip = false;
        if !skip {
            // SAFETY: the range is inside the mapping (checked by `span`), and the heap
            // passes only frames it owns exclusively, so no one else touches them during the
            // call. The kernel was checked available when it was set.
            unsafe { self.kernel().zero_raw(self.ptr.as_ptr().add(off), len) }
        }
        self.scrub_check.check(self, first, count, self.scrub_readback_words());
    }

    fn is_zero(&self, first: Mfn, count: u64) -> bool {
        crate::priority::outside_node_locks("checking frames are zero");
        self.words(first, count).chunks(512).all(|c| c.iter().fold(0, |a, &w| a | w) == 0)
    }

    /// # Panics
    /// If either range is outside the arena, or the ranges overlap.
    fn copy(&self, src: Mfn, dst: Mfn, count: u64) {
        crate::priority::outside_node_locks("copying frames");
        let (s, len) = self.span(src, count);
        let (d, _) = self.span(dst, count);
        assert!(s + len <= d || d + len <= s, "copy of {count} frames from {src} to {dst}: the ranges overlap");
        // SAFETY: both ranges are inside the mapping (checked by `span`) and disjoint
        // (checked just above); the heap owns both sets of frames while it copies.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(s), self.ptr.as_ptr().add(d), len) }
    }

    /// The owner writes its tag ([`tag_of`]) into every word of the frames.
    fn fill(&self, first: Mfn, count: u64, owner: scrubheap::DomId) {
        Arena::fill(self, first, count, tag_of(owner));
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        sys::unmap(self.ptr, self.len);
    }
}

/// The system calls: mapping, advice, prefaulting, unmapping, smaps.
pub(crate) mod sys {
    use super::{ArenaError, Backing, Prefault, HUGE_1G, HUGE_2M, SMALL_PAGE};
    use std::io;
    use std::ptr::NonNull;

    /// `mmap` of `len` bytes with `flags` (read-write, private, anonymous, plus `extra`):
    /// the one place the host and the VMM make an anonymous mapping (see
    /// [`crate::map_anonymous`]). Unmapping it is the caller's.
    pub fn mmap_anon(len: usize, extra: libc::c_int) -> io::Result<NonNull<u8>> {
        // SAFETY: an anonymous mapping with a null hint creates new memory and touches no
        // existing mapping; the result is checked against MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned a null mapping"))
    }

    /// Maps `len` bytes (a multiple of 4096): hugetlbfs pages if asked and the host has
    /// them, else anonymous memory aligned to 2 MiB with THP advised (or, if `thp` is
    /// false, advised against).
    pub(super) fn map(len: usize, hugetlb: bool, thp: bool) -> Result<(NonNull<u8>, Backing), ArenaError> {
        #[cfg(target_os = "linux")]
        if hugetlb {
            let tries =
                [(HUGE_1G, libc::MAP_HUGE_1GB, Backing::Hugetlb1G), (HUGE_2M, libc::MAP_HUGE_2MB, Backing::Hugetlb2M)];
            for (size, flag, backing) in tries {
                // Without MAP_NORESERVE the kernel reserves every huge page now, so a pool
                // too small fails here (ENOMEM) instead of with SIGBUS later.
                if len.is_multiple_of(size) {
                    if let Ok(p) = mmap_anon(len, libc::MAP_HUGETLB | flag) {
                        return Ok((p, backing));
                    }
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = hugetlb;
        // Over-map by 2 MiB and trim, so the arena starts on a huge page boundary and THP
        // can back all of it.
        let over = len + HUGE_2M;
        let raw = mmap_anon(over, 0).map_err(|source| ArenaError::Map { bytes: len, source })?;
        let addr = raw.as_ptr() as usize;
        let start = addr.next_multiple_of(HUGE_2M);
        let head = start - addr;
        let tail = over - head - len;
        if head > 0 {
            unmap(raw, head);
        }
        if tail > 0 {
            // SAFETY: `start + len` is inside the over-sized mapping (head + len + tail = over).
            unmap(unsafe { NonNull::new_unchecked(raw.as_ptr().add(head + len)) }, tail);
        }
        // SAFETY: `start` is `raw` plus `head`, inside the mapping, hence non-null.
        let ptr = unsafe { NonNull::new_unchecked(raw.as_ptr().add(head)) };
        #[cfg(target_os = "linux")]
        let thp_advised = {
            let advice = if thp { libc::MADV_HUGEPAGE } else { libc::MADV_NOHUGEPAGE };
            // SAFETY: madvise only changes the kernel's paging policy for `[ptr, ptr + len)`,
            // which is our own mapping; it never changes the contents.
            let r = unsafe { libc::madvise(ptr.as_ptr().cast(), len, advice) };
            thp && r == 0
        };
        #[cfg(not(target_os = "linux"))]
        let thp_advised = {
            let _ = thp;
            false
        };
        Ok((ptr, Backing::Anonymous { thp_advised }))
    }

    pub(super) fn unmap(ptr: NonNull<u8>, len: usize) {
        // SAFETY: callers pass a page-aligned range of a mapping this module created and that
        // nothing will use afterwards (the arena is being dropped, or the range was trimmed
        // off before anyone saw it).
        let r = unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
        debug_assert_eq!(r, 0, "munmap failed: {}", io::Error::last_os_error());
    }

    /// The CPUs of host node `node`, from sysfs (empty if it says nothing).
    pub(crate) fn node_cpus(node: u32) -> Vec<u32> {
        std::fs::read_to_string(format!("/sys/devices/system/node/node{node}/cpulist"))
            .map_or_else(|_| Vec::new(), |s| if s.trim().is_empty() { Vec::new() } else { parse_node_list(&s) })
    }

    /// The host's online NUMA nodes, from sysfs (`[0]` if it says nothing).
    pub(super) fn host_numa_nodes() -> Vec<u32> {
        std::fs::read_to_string("/sys/devices/system/node/online").map_or_else(|_| vec![0], |s| parse_node_list(&s))
    }

    /// Parses a sysfs node list such as `0-3,6`.
    pub(super) fn parse_node_list(s: &str) -> Vec<u32> {
        let mut v = Vec::new();
        for part in s.trim().split(',').filter(|p| !p.is_empty()) {
            let mut ends = part.splitn(2, '-').map(|x| x.trim().parse::<u32>());
            match (ends.next(), ends.next()) {
                (Some(Ok(a)), None) => v.push(a),
                (Some(Ok(a)), Some(Ok(b))) if a <= b && b < 1024 => v.extend(a..=b),
                _ => return vec![0],
            }
        }
        if v.is_empty() {
            vec![0]
        } else {
            v
        }
    }

    /// Binds `[ptr + off, ptr + off + len)` to host node `node` (MPOL_BIND). Called
    /// before the range is faulted in, so no page has to move.
    pub(super) fn mbind(ptr: NonNull<u8>, off: usize, len: usize, node: u32) -> io::Result<()> {
        const MPOL_BIND: libc::c_long = 2;
        let mut mask = [0u64; 16];
        mask[(node / 64) as usize] |= 1 << (node % 64);
        // SAFETY: the range is inside a mapping this module created (off + len <= its
        // length, page aligned by the caller's frame-size slices); mbind only changes the
        // memory policy of that range and reads `mask`, which outlives the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mbind,
                ptr.as_ptr().add(off),
                len,
                MPOL_BIND,
                mask.as_ptr(),
                (mask.len() * 64) as libc::c_ulong,
                0 as libc::c_uint,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Populates `[ptr, ptr + len)` (a fresh mapping) with `threads` threads, each taking a
    /// slice aligned to `step` (the page size THP or hugetlbfs will use).
    pub(super) fn prefault(ptr: NonNull<u8>, len: usize, step: usize, threads: usize) -> io::Result<Prefault> {
        let steps = len.div_ceil(step);
        let threads = threads.clamp(1, steps);
        let per = steps.div_ceil(threads) * step;
        let addr = ptr.as_ptr() as usize;
        let results: Vec<io::Result<Prefault>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|t| t * per)
                .filter(|&lo| lo < len)
                .map(|lo| {
                    let n = per.min(len - lo);
                    s.spawn(move || populate(addr + lo, n))
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("prefault thread panicked")).collect()
        });
        let mut method = Prefault::PopulateWrite;
        for r in results {
            if r? == Prefault::Touch {
                method = Prefault::Touch;
            }
        }
        Ok(method)
    }

    /// Populates `[addr, addr + len)` of the arena's fresh mapping.
    fn populate(addr: usize, len: usize) -> io::Result<Prefault> {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: `[addr, addr + len)` is part of the arena's own read-write mapping;
            // MADV_POPULATE_WRITE faults pages in as if written, without changing contents.
            let r = unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE) };
            if r == 0 {
                return Ok(Prefault::PopulateWrite);
            }
            let e = io::Error::last_os_error();
            // EINVAL: a kernel older than 5.14, which does not know the advice.
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
        }
        for off in (0..len).step_by(SMALL_PAGE) {
            // SAFETY: the byte is inside the arena's mapping, which is fresh (all zero) and
            // not yet shared with anyone: writing zero faults the page in without changing
            // what it holds.
            unsafe { ((addr + off) as *mut u8).write_volatile(0) };
        }
        Ok(Prefault::Touch)
    }

    /// Sum of `AnonHugePages` over the mappings in `/proc/self/smaps` that overlap
    /// `[addr, addr + len)`, capped at `len` (a neighbouring mapping merged with ours would
    /// otherwise count).
    pub(super) fn anon_huge_bytes(addr: usize, len: usize) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let (lo, hi) = (addr as u64, (addr + len) as u64);
        let mut inside = false;
        let mut total = 0u64;
        for line in smaps.lines() {
            let first = line.split_ascii_whitespace().next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-') {
                if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                    inside = a < hi && b > lo;
                    continue;
                }
            }
            if let (true, Some(rest)) = (inside, line.strip_prefix("AnonHugePages:")) {
                let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
                total += kb * 1024;
            }
        }
        Some(total.min(len as u64))
    }
}

/// The tag a tenant writes into every word of its pages (never zero): what the leak check
/// looks for in another tenant's memory.
pub fn tag_of(dom: DomId) -> u64 {
    0x7a6_0000_0000_0000 | (dom.0 as u64) << 8 | 0xa5
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: usize = 4096;

    fn arena(frames: u64) -> Arena {
        Arena::new(ArenaConfig::new(Mfn(1000), frames, F).with_kernel(Kernel::WriteBytes).with_prefault_threads(2))
            .expect("a small arena maps")
    }

    #[test]
    fn a_fresh_arena_is_zero_and_aligned() {
        let a = arena(64);
        assert!(a.is_zero(a.base(), 64));
        assert_eq!(a.count_nonzero_words(a.base(), 64), 0);
        assert_eq!(a.ptr.as_ptr() as usize % HUGE_2M, 0);
        assert_eq!((a.base(), a.end(), a.len_bytes()), (Mfn(1000), Mfn(1064), 64 * F));
        assert!(a.prefault_seconds() >= 0.0);
        assert_eq!(a.prefault_threads(), 2);
    }

    #[test]
    fn zero_with_each_kernel_clears_exactly_its_frames() {
        let a = arena(37);
        for k in Kernel::available() {
            a.set_kernel(k);
            a.fill(a.base(), 37, 0x1111_2222_3333_4444);
            a.zero(Mfn(1003), 29);
            assert!(a.is_zero(Mfn(1003), 29), "{k}");
            assert_eq!(a.count_nonzero_words(Mfn(1000), 3), 3 * 512, "{k} wrote before its range");
            assert_eq!(a.count_nonzero_words(Mfn(1032), 5), 5 * 512, "{k} wrote after its range");
            assert!(!a.is_zero(Mfn(1002), 2));
        }
    }

    #[test]
    fn fill_poison_and_counts() {
        let a = arena(16);
        a.fill(Mfn(1002), 3, 7);
        assert_eq!(a.count_nonzero_words(a.base(), 16), 3 * 512);
        assert_eq!(a.words(Mfn(1002), 3).iter().filter(|&&w| w == 7).count(), 3 * 512);
        a.poison(Mfn(1010), 1);
        assert!(a.words(Mfn(1010), 1).iter().all(|&w| w == POISON));
        assert!(POISON.to_ne_bytes().iter().all(|&b| b != 0));
        assert_eq!(a.count_nonzero_words(a.base(), 16), 4 * 512);
        a.fill(Mfn(1002), 3, 0);
        assert_eq!(a.count_nonzero_words(a.base(), 16), 512);
        assert!(!a.is_zero(a.base(), 16));
        assert!(a.is_zero(a.base(), 10));
    }

    #[test]
    fn sampling_counts_the_sampled_words() {
        let a = arena(8);
        a.fill(Mfn(1001), 2, 9);
        assert_eq!(a.sample_nonzero(a.base(), 8, 4), 2 * 4);
        assert_eq!(a.sample_nonzero(a.base(), 8, 0), 0);
        assert_eq!(a.sample_nonzero(a.base(), 8, 10_000), a.count_nonzero_words(a.base(), 8));
        // One dirty word per frame is found by a full sample, and by no sample that misses it.
        a.zero(a.base(), 8);
        a.plant(Mfn(1005), 100, 1);
        assert_eq!(a.sample_nonzero(a.base(), 8, 512), 1);
        let hits: u64 = (1..=512).map(|k| a.sample_nonzero(Mfn(1005), 1, k)).sum();
        assert!(hits > 0 && hits < 512);
    }

    #[test]
    fn copy_moves_bytes_between_frames() {
        let a = arena(8);
        a.fill(Mfn(1000), 2, 0xabcd);
        a.copy(Mfn(1000), Mfn(1005), 2);
        assert!(a.words(Mfn(1005), 2).iter().all(|&w| w == 0xabcd));
        assert!(a.is_zero(Mfn(1002), 3));
        assert!(a.is_zero(Mfn(1007), 1));
    }

    #[test]
    #[should_panic(expected = "outside the arena")]
    fn zero_past_the_end_panics() {
        arena(8).zero(Mfn(1007), 2);
    }

    #[test]
    #[should_panic(expected = "outside the arena")]
    fn zero_before_the_base_panics() {
        arena(8).zero(Mfn(999), 1);
    }

    #[test]
    #[should_panic(expected = "outside the arena")]
    fn huge_counts_do_not_wrap() {
        arena(8).is_zero(Mfn(1001), u64::MAX);
    }

    #[test]
    #[should_panic(expected = "outside the arena")]
    fn fill_out_of_range_panics() {
        arena(8).fill(Mfn(1008), 1, 1);
    }

    #[test]
    #[should_panic(expected = "outside the arena")]
    fn copy_to_out_of_range_panics() {
        arena(8).copy(Mfn(1000), Mfn(1007), 2);
    }

    #[test]
    #[should_panic(expected = "overlap")]
    fn overlapping_copy_panics() {
        arena(8).copy(Mfn(1000), Mfn(1001), 2);
    }

    #[test]
    #[should_panic(expected = "outside the arena")]
    fn sampling_out_of_range_panics_whatever_the_sample() {
        arena(8).sample_nonzero(Mfn(1009), 1, 0);
    }

    #[test]
    fn empty_ranges_at_the_edges_are_fine() {
        let a = arena(4);
        a.zero(a.end(), 0);
        a.zero(a.base(), 0);
        assert!(a.is_zero(a.end(), 0));
    }

    #[test]
    fn bad_configurations_are_refused() {
        for cfg in
            [ArenaConfig::new(Mfn(0), 0, F), ArenaConfig::new(Mfn(0), 4, 3000), ArenaConfig::new(Mfn(u64::MAX), 4, F)]
        {
            assert!(matches!(Arena::new(cfg), Err(ArenaError::InvalidConfig(_))));
        }
    }

    #[test]
    fn calibrating_picks_an_available_kernel_and_leaves_memory_zero() {
        let mut cfg = ArenaConfig::new(Mfn(0), 1024, F).with_hugetlb(false);
        cfg.calibration_bytes = 1 << 20;
        cfg.calibration_call_bytes = 64 << 10;
        let a = Arena::new(cfg).unwrap();
        let c = a.calibration().expect("no kernel given, so it calibrated");
        assert_eq!(a.kernel(), c.best);
        assert_eq!((c.bytes, c.call_bytes), (1 << 20, 64 << 10));
        assert!(a.is_zero(a.base(), 1024));
        assert!(a.describe().contains(c.best.name()));
    }

    #[test]
    fn thp_can_be_advised_against() {
        let a = Arena::new(
            ArenaConfig::new(Mfn(0), 512, F).with_hugetlb(false).with_thp(false).with_kernel(Kernel::WriteBytes),
        )
        .unwrap();
        assert_eq!(a.backing(), Backing::Anonymous { thp_advised: false });
        assert_eq!(a.huge_bytes().unwrap_or(0), 0);
        a.fill(a.base(), 512, 1);
        a.zero(a.base(), 512);
        assert!(a.is_zero(a.base(), 512));
    }

    #[test]
    fn sysfs_node_lists_parse() {
        assert_eq!(sys::parse_node_list("0\n"), vec![0]);
        assert_eq!(sys::parse_node_list("0-3,6"), vec![0, 1, 2, 3, 6]);
        assert_eq!(sys::parse_node_list("garbage"), vec![0]);
        assert_eq!(sys::parse_node_list(""), vec![0]);
    }

    #[test]
    fn slices_bind_to_host_nodes_or_are_emulated() {
        let a = Arena::new(ArenaConfig::new(Mfn(0), 1024, 4096).with_hugetlb(false).with_numa_slices(2)).unwrap();
        if sys::host_numa_nodes().len() > 1 {
            // A multi-node host: every slice bound to a node, or a reason given.
            assert!(
                matches!(a.numa(), NumaBinding::Bound { nodes } if nodes.len() == 2)
                    || matches!(a.numa(), NumaBinding::Failed(_))
            );
        } else {
            eprintln!("one NUMA node here: the binding path is exercised only on a multi-node host");
            assert_eq!(a.numa(), &NumaBinding::Emulated);
        }
        assert!(a.describe().contains("node"));
        // The system call itself works here too: binding a fresh range to node 0, which
        // every host has, is accepted.
        let (ptr, _) = sys::map(4 << 20, false, true).unwrap();
        sys::mbind(ptr, 0, 4 << 20, 0).unwrap();
        sys::unmap(ptr, 4 << 20);
    }

    #[test]
    fn the_arena_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Arena>();
    }

    #[test]
    fn threads_zero_disjoint_frames_concurrently() {
        let a = arena(64);
        a.fill(a.base(), 64, 3);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let a = &a;
                s.spawn(move || a.zero(Mfn(1000 + t * 16), 16));
            }
        });
        assert!(a.is_zero(a.base(), 64));
    }

    impl Arena {
        /// Writes one word of one frame, for tests that plant a single leak.
        fn plant(&self, f: Mfn, word: usize, value: u64) {
            let (off, len) = self.span(f, 1);
            assert!(word < len / 8);
            // SAFETY: the word is inside the frame (checked above), which is inside the
            // mapping (span); the test owns the arena alone.
            unsafe { self.ptr.as_ptr().add(off).cast::<u64>().add(word).write(value) }
        }
    }

    #[test]
    fn hugetlb_is_used_when_there_is_a_pool_and_falls_back_when_not() {
        let a = Arena::new(ArenaConfig::new(Mfn(0), 512, F).with_kernel(Kernel::WriteBytes)).unwrap();
        assert!(matches!(a.backing(), Backing::Hugetlb2M | Backing::Anonymous { .. }), "{:?}", a.backing());
        a.fill(Mfn(0), 512, 5);
        assert_eq!(a.count_nonzero_words(Mfn(0), 512), 512 * 512);
        a.zero(Mfn(0), 512);
        assert!(a.is_zero(Mfn(0), 512));
        let h = a.huge_bytes();
        assert!(h.is_none_or(|h| h <= a.len_bytes() as u64));
    }
}
