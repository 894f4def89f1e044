//! Populate-on-demand guests (DESIGN section 3.6), a layer over the public API of the
//! [`scrubheap`] heap, in the manner of Xen's `p2m-pod.c`.
//!
//! A PoD guest has a p2m of `max_pages` entries, each RAM (backed by a machine frame),
//! PoD (backed on first touch) or invalid (ballooned out), at 2 MiB or 4 KiB; and a
//! cache of scrubbed 2 MiB and 4 KiB pages, allocated from the heap under the guest's
//! [`DomId`], that the guest's `target` sizes. A first touch of a PoD entry takes a page
//! from the cache: 2 MiB when the entry is 2 MiB and the cache has one, 4 KiB (splintering
//! the entry, or a cached superpage) otherwise. When the cache is empty, the layer
//! reclaims pages the guest has zeroed: first the recently populated ones (eager
//! reclaim), then a bounded sweep of the p2m. When the balloon driver hands back 4 KiB of
//! a 2 MiB mapping, the whole superpage is zero-checked and, if zero, reclaimed into the
//! cache whole instead of being shattered. A guest whose touch finds neither a cached
//! page nor a zeroed one to reclaim crashes: the touch marks it crashed, frees nothing
//! (it runs in a vCPU's fault path) and reports [`PodError::Exhausted`]; the host and the
//! other guests are untouched. [`Pods::destroy`], of a crashed guest or a live one, kills
//! it at once and gives its pages back in bounded, resumable steps.
//!
//! Every operation is bounded and resumable. Between two calls of the caller's
//! [`Preempt`](scrubheap::Preempt) an operation zero-checks at most [`POD_BATCH_FRAMES`]
//! frames, frees at most as many, walks at most [`POD_STEP_SLOTS`] p2m slots, and zeroes
//! only through the heap's own preemptible allocation (at most its `scrub_batch`):
//! [`Pods::destroy`] drains, [`Pods::balloon`] works one 2 MiB slot a step,
//! [`Pods::touch`]'s empty-cache reclaim works in steps and returns
//! [`PodTouch::Preempted`] to be touched again, [`Pods::set_target`] and [`Pods::create`]
//! allocate or release at most a superpage a step. [`Pods::stats`], [`Pods::lookup`],
//! [`Pods::totals`] and [`Pods::frames`] read kept counts. [`Pods::check_invariants`] is
//! the one exception, a from-scratch check for tests.
//!
//! Before the layer takes back a page it had handed out as a mapping (a sweep, a
//! superpage reclaim, a decrease reservation) it calls the caller's [`Unmap`] hook, so a
//! VMM that mapped the page into a VM removes that mapping before the frames go.
//!
//! Counts, in frames: `populated` (RAM entries), `cache`, `entries` (outstanding PoD
//! entries). The guest holds exactly `populated + cache` frames of the heap. The cache
//! never exceeds what the guest may still use (`cache <= entries`) nor its target
//! (`populated + cache <= max(target, populated)`). When the balloon driver has finished
//! (given back `max_pages - target` frames), `entries = target - populated`: every PoD
//! entry has a cache page behind it and no touch needs a sweep ([`PodStats::balanced`]).
//! Before that, `entries` exceeds the cache by what the guest over-commits, which the
//! sweeps cover. [`Pods::check_invariants`] verifies all of this from scratch, and that
//! every frame the layer holds is a sealed allocation of its guest and every cached frame
//! is zero.
//!
//! The layer uses only the heap's public API: it allocates its pages *sealed*
//! ([`AllocRequest::sealed`]), so the heap refuses to free or pin them through the
//! ordinary calls and only this layer gives them back ([`Heap::free_sealed`]); it sizes
//! cache growths with [`Heap::node_stats`] (or [`Heap::zone_stats`] where a node has a
//! Movable zone) and the claims gate [`Heap::claims_admit`];
//! it zero-checks and fills guest pages through [`Heap::memory`]. Its state lives in a
//! [`Pods`] value beside the heap, whose operations take the heap as an argument.
//!
//! ```
//! use scrubheap::{DomId, Heap, HeapConfig, Mfn, NeverPreempt, TestMemory};
//! use scrubheap_pod::{NoSecondMapping, PodConfig, PodProgress, Pods};
//! let heap = Heap::new(HeapConfig::uniform(1, 4096), TestMemory::new(Mfn(0), 4096, 64)).unwrap();
//! let pods = Pods::new();
//! // 8 MiB of guest-physical memory, 4 MiB behind it.
//! let cfg = PodConfig::new(2048, 1024);
//! assert_eq!(pods.create(&heap, DomId(1), &cfg, &NeverPreempt).unwrap(), PodProgress::Done);
//! // The guest writes gfn 3 (no VMM maps its pages: no second mapping to remove).
//! let t = pods.touch(&heap, DomId(1), 3, true, &mut NoSecondMapping, &NeverPreempt).unwrap();
//! let m = t.mapping().unwrap();
//! assert_eq!((m.order, m.populated), (9, true)); // populated with a whole 2 MiB page
//! // The balloon driver gives back 4 MiB.
//! let p = pods.balloon(&heap, DomId(1), 1024, 10, &mut NoSecondMapping, &NeverPreempt).unwrap();
//! assert_eq!(p, PodProgress::Done);
//! let s = pods.stats(DomId(1)).unwrap();
//! assert_eq!((s.populated, s.cache, s.entries), (512, 512, 512));
//! assert!(s.balanced());
//! pods.check_invariants(&heap).unwrap();
//! heap.check_invariants().unwrap();
//! while pods.destroy(&heap, DomId(1), &NeverPreempt).unwrap() == PodProgress::Preempted {}
//! assert_eq!(heap.stats().allocated, 0);
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

mod check;
mod error;
mod guest;
mod p2m;
mod pods;

pub use error::{PodError, PodViolation};
pub use pods::Pods;

use p2m::SP;
#[cfg(doc)]
use scrubheap::{AllocRequest, Heap};
use scrubheap::{DomId, Mfn};

/// How many recent populations eager reclaim remembers (and zero-checks, newest first,
/// when the cache runs dry).
pub const POD_MRU: usize = 64;

/// Frames eager reclaim may zero-check per empty-cache touch (over as many calls as it
/// takes: at most [`POD_BATCH_FRAMES`] between two preemption points).
pub const POD_EAGER_FRAMES: u64 = 2048;

/// Frames the emergency sweep may zero-check per empty-cache touch (a 2 MiB mapping
/// counts 512; 32 MiB read at 4 KiB frames, at most [`POD_BATCH_FRAMES`] between two
/// preemption points): it stops earlier once it has reclaimed something.
pub const POD_SWEEP_FRAMES: u64 = 8192;

/// 2 MiB slots of the p2m the emergency sweep may visit per empty-cache touch (visiting a
/// PoD or invalid slot reads no guest memory; at most [`POD_STEP_SLOTS`] between two
/// preemption points).
pub const POD_SWEEP_SLOTS: usize = 4096;

/// One batch: the most frames any PoD operation zero-checks, and the most it frees,
/// between two preemption points (one 2 MiB mapping, or 512 pages of 4 KiB). Zeroing is
/// the heap's: a cache growth's allocation scrubs at most the heap's `scrub_batch` frames
/// between two preemption points.
pub const POD_BATCH_FRAMES: u64 = 512;

/// The most p2m slots (2 MiB of guest frames each; a split slot's 512 entries read as
/// one) any PoD operation walks between two preemption points: the named constant for
/// metadata walks beside [`POD_BATCH_FRAMES`].
pub const POD_STEP_SLOTS: u64 = 1024;

/// Frames a destroy's drain frees between two preemption points, at most: one 2 MiB
/// mapping (512 frames in one free of the heap, never split for this), or 512 frames of
/// 4 KiB (each its own free unless neighbours form a run).
pub const POD_DRAIN_FRAMES: u64 = POD_BATCH_FRAMES;

/// p2m slots (2 MiB of guest frames each) a destroy's drain walks between two preemption
/// points, at most (a split slot's 512 entries are read as one slot).
pub const POD_DRAIN_SLOTS: u64 = POD_STEP_SLOTS;

/// A PoD p2m may have at most this many entries per frame of the heap (a guest's maximum
/// may exceed the host's memory, but not absurdly: its p2m costs memory too).
pub const POD_MAX_PAGES_PER_FRAME: u64 = 64;

/// How to build a populate-on-demand guest (see [`Pods::create`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PodConfig {
    /// Guest frames (the p2m's size): every one starts as a PoD entry.
    pub max_pages: u64,
    /// Frames of real memory behind the guest (populated + cache), at most `max_pages`.
    pub target: u64,
    /// The node to prefer for its pages (`None`: the heap picks).
    pub node: Option<usize>,
    /// Whether a decrease reservation inside a zeroed 2 MiB mapping reclaims the whole
    /// superpage (`true`, the default) or shatters it and reclaims 4 KiB only.
    pub superpage_reclaim: bool,
}

impl PodConfig {
    /// `max_pages` PoD entries, `target` frames behind them, any node, superpage reclaim.
    pub fn new(max_pages: u64, target: u64) -> Self {
        PodConfig { max_pages, target, node: None, superpage_reclaim: true }
    }
    /// Prefer `node` for the guest's pages.
    pub fn on(mut self, node: usize) -> Self {
        self.node = Some(node);
        self
    }
    /// Reclaim 4 KiB only on decrease reservation (the baseline the superpage check beats).
    pub fn no_superpage_reclaim(mut self) -> Self {
        self.superpage_reclaim = false;
        self
    }
}

/// Whether a preemptible PoD operation finished.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PodProgress {
    /// The cache is at its target ([`Pods::create`], [`Pods::set_target`]), the whole
    /// range is given back ([`Pods::balloon`]), or every frame of the destroyed guest is
    /// back in the heap ([`Pods::destroy`]).
    Done,
    /// `Preempt` asked to yield: call [`Pods::set_target`] again with the same target,
    /// [`Pods::balloon`] again with the same range, or [`Pods::destroy`] again, to go on
    /// (progress is kept).
    Preempted,
}

/// What a [`Pods::touch`] did.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PodTouch {
    /// The gfn is backed: map this.
    Mapped(PodMapping),
    /// The cache was empty and the reclaim of zeroed pages asked to yield before it found
    /// one: nothing is mapped yet. Touch again (the vCPU re-executes its access after the
    /// caller yields); the reclaim goes on where it stopped.
    Preempted,
}

impl PodTouch {
    /// The mapping, if the touch got that far.
    pub fn mapping(self) -> Option<PodMapping> {
        match self {
            PodTouch::Mapped(m) => Some(m),
            PodTouch::Preempted => None,
        }
    }
}

/// The hook the PoD layer calls *before* it takes back a page it had handed out as a
/// mapping (a zero sweep or eager reclaim, a superpage reclaim, a decrease reservation),
/// so that a VMM which mapped the page a second time (a KVM memory slot) removes that
/// mapping first and the guest can no longer reach the frames when they go to the cache
/// or the heap.
///
/// `unmap(dom, gfn, order)` asks that no second mapping of `dom` overlapping guest frames
/// `[gfn, gfn + 2^order)` survive the call. Removing more (a whole slot that overlaps) is
/// fine: a later access faults and [`Pods::touch`] returns the page's mapping again. The
/// call cannot fail: a VMM that cannot remove a mapping must stop the guest's vCPUs for
/// good before it returns. The page may stay with the guest after all (a zero check that
/// finds data): the hook is called before the check, never after, so there is no window
/// in which the guest writes a page being reclaimed. [`Pods::destroy`] calls no hook: the
/// guest must no longer run (a VMM drops its VM first).
pub trait Unmap {
    /// Removes every second mapping of `dom` that overlaps `[gfn, gfn + 2^order)`.
    fn unmap(&mut self, dom: DomId, gfn: u64, order: u8);
}

/// For callers whose guests have no second mapping (the host runtime's simulated guests,
/// the simulator, the op log): nothing to remove.
#[derive(Copy, Clone, Debug, Default)]
pub struct NoSecondMapping;

impl Unmap for NoSecondMapping {
    fn unmap(&mut self, _dom: DomId, _gfn: u64, _order: u8) {}
}

impl<F: FnMut(DomId, u64, u8)> Unmap for F {
    fn unmap(&mut self, dom: DomId, gfn: u64, order: u8) {
        self(dom, gfn, order)
    }
}

/// What backs a guest frame after [`Pods::touch`]: the whole mapping it lies in.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PodMapping {
    /// First guest frame of the mapping (aligned to `order`).
    pub gfn: u64,
    /// First machine frame of the mapping.
    pub mfn: Mfn,
    /// 9 for a 2 MiB mapping, 0 for 4 KiB.
    pub order: u8,
    /// Whether this touch populated it (false: it was already RAM).
    pub populated: bool,
}

/// What a guest frame is, as [`Pods::lookup`] reports it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PodEntry {
    /// Ballooned out (a frame beyond the guest's maximum is [`PodError::GfnOutOfRange`]).
    Invalid,
    /// Populated on first touch; `order` 9 for a 2 MiB PoD entry.
    Pod {
        /// The entry's order.
        order: u8,
    },
    /// Backed by `mfn` (the frame of this gfn) within a mapping of `order`.
    Ram {
        /// The machine frame behind the gfn.
        mfn: Mfn,
        /// The order of the mapping it lies in.
        order: u8,
    },
}

/// Event counters of PoD guests.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct PodCounters {
    /// 2 MiB mappings reclaimed whole into the cache because they were all zero (on
    /// decrease reservation, or by eager reclaim and sweeps).
    pub superpages_reclaimed: u64,
    /// 4 KiB pages reclaimed into the cache because they were zero.
    pub zero_pages_reclaimed: u64,
    /// 2 MiB mappings split into 4 KiB mappings by a decrease reservation.
    pub superpages_shattered: u64,
    /// First touches populated with a 2 MiB page.
    pub populated_2m: u64,
    /// First touches populated with a 4 KiB page.
    pub populated_4k: u64,
    /// Guests crashed out of PoD memory.
    pub crashes: u64,
}

impl PodCounters {
    /// Adds `o`'s counts to these (totals over guests, or over runs).
    pub fn add(&mut self, o: &PodCounters) {
        self.superpages_reclaimed += o.superpages_reclaimed;
        self.zero_pages_reclaimed += o.zero_pages_reclaimed;
        self.superpages_shattered += o.superpages_shattered;
        self.populated_2m += o.populated_2m;
        self.populated_4k += o.populated_4k;
        self.crashes += o.crashes;
    }

    /// Frames reclaimed by zero checks: 512 per superpage, 1 per 4 KiB page.
    pub fn frames_reclaimed(&self) -> u64 {
        self.superpages_reclaimed * SP + self.zero_pages_reclaimed
    }
}

/// One PoD guest's state (frames unless said otherwise).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct PodStats {
    /// The guest.
    pub dom: DomId,
    /// Size of its p2m.
    pub max_pages: u64,
    /// Its target (the last one [`Pods::set_target`] completed).
    pub target: u64,
    /// RAM entries.
    pub populated: u64,
    /// Pages in the cache.
    pub cache: u64,
    /// Of the cache, whole 2 MiB pages.
    pub cache_superpages: u64,
    /// Outstanding PoD entries.
    pub entries: u64,
    /// 2 MiB mappings in the p2m.
    pub superpage_mappings: u64,
    /// What has happened to it.
    pub counters: PodCounters,
    /// The gfn whose touch crashed it, if it crashed (it keeps its pages until
    /// [`Pods::destroy`] drains them).
    pub crashed: Option<u64>,
}

impl PodStats {
    /// Whether every outstanding PoD entry has a cache page behind it and the guest is at
    /// its target: `entries = target - populated = cache`. The state a balloon driver
    /// drives the guest to; from there on no touch needs a sweep.
    pub fn balanced(&self) -> bool {
        self.entries == self.cache && self.populated + self.cache == self.target
    }
}

/// All PoD guests of a heap together.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct PodTotals {
    /// Live guests (crashed ones included until destroyed).
    pub guests: u64,
    /// RAM entries of all guests.
    pub populated: u64,
    /// Cache pages of all guests.
    pub cache: u64,
    /// Of the cache, whole 2 MiB pages.
    pub cache_superpages: u64,
    /// Outstanding PoD entries of all guests.
    pub entries: u64,
    /// 2 MiB mappings of all guests.
    pub superpage_mappings: u64,
    /// Frames of destroyed guests still draining back to the heap ([`Pods::destroy`]
    /// returned [`PodProgress::Preempted`]); not in `populated` or `cache`.
    pub dying: u64,
    /// Counters of every guest the heap has had, destroyed ones included.
    pub counters: PodCounters,
}
