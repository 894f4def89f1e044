//! Populate-on-demand guests (DESIGN section 3.6), a layer over the heap's ordinary
//! allocations, in the manner of Xen's `p2m-pod.c`.
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
//! page nor a zeroed one to reclaim crashes: every page it holds goes back to the heap,
//! and the touch reports [`HeapError::PodExhausted`]; the host and the other guests are
//! untouched.
//!
//! Counts, in frames: `populated` (RAM entries), `cache`, `entries` (outstanding PoD
//! entries). The guest holds exactly `populated + cache` frames of the heap. The cache
//! never exceeds what the guest may still use (`cache <= entries`) nor its target
//! (`populated + cache <= max(target, populated)`). When the balloon driver has finished
//! (given back `max_pages - target` frames), `entries = target - populated`: every PoD
//! entry has a cache page behind it and no touch needs a sweep ([`PodStats::balanced`]).
//! Before that, `entries` exceeds the cache by what the guest over-commits, which the
//! sweeps cover. [`Heap::check_invariants`] verifies all of this from scratch, and that
//! every frame the layer holds is allocated to its guest and every cached frame is zero.

mod p2m;

use crate::error::{HeapError, InvariantViolation};
use crate::heap::{AllocRequest, ChunkState, Heap};
use crate::memory::FrameMemory;
use crate::node::largest_order;
use crate::preempt::Preempt;
use crate::sync::Mutex;
use crate::types::{DomId, Mfn, MAX_ORDER};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;
use p2m::{P2m, Slot, E4, SP, SP_ORDER};

/// How many recent populations eager reclaim remembers (and zero-checks, newest first,
/// when the cache runs dry).
pub const POD_MRU: usize = 64;

/// Frames eager reclaim may zero-check per empty-cache touch.
pub const POD_EAGER_FRAMES: u64 = 2048;

/// Frames the emergency sweep may zero-check per empty-cache touch (a 2 MiB mapping
/// counts 512; 32 MiB read at 4 KiB frames): it stops earlier once it has reclaimed
/// something.
pub const POD_SWEEP_FRAMES: u64 = 8192;

/// 2 MiB slots of the p2m the emergency sweep may visit per empty-cache touch (visiting a
/// PoD or invalid slot reads no guest memory).
pub const POD_SWEEP_SLOTS: usize = 4096;

/// A PoD p2m may have at most this many entries per frame of the heap (a guest's maximum
/// may exceed the host's memory, but not absurdly: its p2m costs memory too).
pub const POD_MAX_PAGES_PER_FRAME: u64 = 64;

/// How to build a populate-on-demand guest (see [`Heap::pod_create`]).
///
/// ```
/// use scrubheap::{DomId, Heap, HeapConfig, NeverPreempt, PodConfig, PodProgress, TestMemory, Mfn};
/// let heap = Heap::new(HeapConfig::uniform(1, 4096), TestMemory::new(Mfn(0), 4096, 64)).unwrap();
/// // 8 MiB of guest-physical memory, 4 MiB behind it.
/// let cfg = PodConfig::new(2048, 1024);
/// assert_eq!(heap.pod_create(DomId(1), &cfg, &NeverPreempt).unwrap(), PodProgress::Done);
/// let m = heap.pod_touch(DomId(1), 3, true).unwrap(); // the guest writes gfn 3
/// assert_eq!((m.order, m.populated), (9, true)); // populated with a whole 2 MiB page
/// heap.pod_balloon(DomId(1), 1024, 10).unwrap(); // the balloon driver gives back 4 MiB
/// let s = heap.pod_stats(DomId(1)).unwrap();
/// assert_eq!((s.populated, s.cache, s.entries), (512, 512, 512));
/// assert!(s.balanced());
/// heap.check_invariants().unwrap();
/// heap.pod_destroy(DomId(1)).unwrap();
/// assert_eq!(heap.stats().allocated, 0);
/// ```
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
    /// The cache is at its target.
    Done,
    /// `Preempt` asked to yield: call [`Heap::pod_set_target`] again with the same
    /// target to go on (progress is kept).
    Preempted,
}

/// What backs a guest frame after [`Heap::pod_touch`]: the whole mapping it lies in.
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

/// What a guest frame is, as [`Heap::pod_lookup`] reports it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PodEntry {
    /// Ballooned out (a frame beyond the guest's maximum is `PodGfnOutOfRange`).
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
    fn add(&mut self, o: &PodCounters) {
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
    /// Its target (the last one [`Heap::pod_set_target`] completed).
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
    /// The gfn whose touch crashed it, if it crashed (it then holds nothing).
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
    /// Counters of every guest the heap has had, destroyed ones included.
    pub counters: PodCounters,
}

pub(crate) struct Guest {
    dom: DomId,
    max_pages: u64,
    target: u64,
    /// The target a preempted `pod_set_target` is working toward.
    adjusting: Option<u64>,
    node: Option<usize>,
    superpage_reclaim: bool,
    p2m: P2m,
    cache2m: Vec<u64>,
    cache4k: Vec<u64>,
    populated: u64,
    entries: u64,
    /// Recent populations, newest last: (first gfn, order).
    mru: VecDeque<(u64, u8)>,
    /// The slot the next sweep starts from (sweeps go down, wrapping).
    sweep_at: usize,
    /// Per slot: its 2 MiB mapping was zero-checked and held data. Sweeps pass such
    /// mappings by without reading them until they are populated again (a decrease
    /// reservation inside one still checks it).
    held_data: Vec<bool>,
    counters: PodCounters,
    crashed: Option<u64>,
    /// Destroyed: a thread that still holds the guest must not use it.
    gone: bool,
}

/// The PoD guests of a heap.
pub(crate) struct PodRegistry {
    guests: Mutex<BTreeMap<DomId, Arc<Mutex<Guest>>>>,
    /// Counters of destroyed guests.
    retired: Mutex<PodCounters>,
}

/// Frees a run of frames the guest holds; a failure is a bug in this layer, never the
/// caller's input ([`Heap::free`] and [`Heap::pin`] refuse frames this layer holds).
fn give_back<M: FrameMemory>(heap: &Heap<M>, dom: DomId, mfn: u64, order: u8) {
    let r = heap.free_held(Mfn(mfn), order, dom, true);
    debug_assert!(r.is_ok(), "PoD layer could not free {mfn:#x} order {order} of {dom}: {r:?}");
}

/// Frees single frames, grouped into the largest aligned runs they form inside one node.
fn give_back_frames<M: FrameMemory>(heap: &Heap<M>, dom: DomId, mut frames: Vec<u64>) {
    frames.sort_unstable();
    let mut i = 0;
    while i < frames.len() {
        let start = frames[i];
        let mut len = 1;
        while i + len < frames.len() && frames[i + len] == start + len as u64 {
            len += 1;
        }
        let (mut m, end) = (start, start + len as u64);
        while m < end {
            // Runs never cross a node's end.
            let node_end = heap.node_of(Mfn(m)).and_then(|n| heap.node_range(n)).map_or(m + 1, |(_, e)| e.0);
            let o = largest_order(m, end.min(node_end) - m);
            give_back(heap, dom, m, o);
            m += 1 << o;
        }
        i += len;
    }
}

impl Guest {
    fn cache_frames(&self) -> u64 {
        self.cache4k.len() as u64 + SP * self.cache2m.len() as u64
    }

    fn stats(&self) -> PodStats {
        PodStats {
            dom: self.dom,
            max_pages: self.max_pages,
            target: self.target,
            populated: self.populated,
            cache: self.cache_frames(),
            cache_superpages: self.cache2m.len() as u64,
            entries: self.entries,
            superpage_mappings: self.p2m.slots.iter().filter(|s| matches!(s, Slot::Ram(_))).count() as u64,
            counters: self.counters,
            crashed: self.crashed,
        }
    }

    fn check_gfn(&self, gfn: u64, order: u8) -> Result<(), HeapError> {
        if order > MAX_ORDER {
            return Err(HeapError::InvalidOrder { order });
        }
        if gfn % (1u64 << order) != 0 {
            return Err(HeapError::PodUnaligned { dom: self.dom, gfn, order });
        }
        if gfn.checked_add(1 << order).is_none_or(|end| end > self.max_pages) {
            return Err(HeapError::PodGfnOutOfRange { dom: self.dom, gfn, order, max_pages: self.max_pages });
        }
        if let Some(at) = self.crashed {
            return Err(HeapError::PodCrashed { dom: self.dom, gfn: at });
        }
        Ok(())
    }

    /// A 4 KiB page from the cache, breaking a cached superpage if no 4 KiB page is left.
    fn take_4k(&mut self) -> Option<u64> {
        if self.cache4k.is_empty() {
            let m = self.cache2m.pop()?;
            self.cache4k.extend((0..SP).rev().map(|i| m + i));
        }
        self.cache4k.pop()
    }

    fn remember(&mut self, gfn: u64, order: u8) {
        if self.mru.len() == POD_MRU {
            self.mru.pop_front();
        }
        self.mru.push_back((gfn, order));
    }

    /// Reclaims slot `s`'s 2 MiB mapping into the cache if it is all zero; returns
    /// whether it did.
    fn reclaim_superpage<M: FrameMemory>(&mut self, heap: &Heap<M>, s: usize) -> bool {
        let Slot::Ram(m) = self.p2m.slots[s] else { return false };
        if !heap.mem.is_zero(Mfn(m), SP) {
            self.held_data[s] = true;
            return false;
        }
        self.p2m.slots[s] = Slot::Pod;
        self.cache2m.push(m);
        self.populated -= SP;
        self.entries += SP;
        self.counters.superpages_reclaimed += 1;
        true
    }

    /// Reclaims the 4 KiB mapping of `gfn` into the cache if it is zero.
    fn reclaim_4k<M: FrameMemory>(&mut self, heap: &Heap<M>, gfn: u64) -> bool {
        let s = (gfn / SP) as usize;
        let Slot::Split(e) = &mut self.p2m.slots[s] else { return false };
        let i = (gfn % SP) as usize;
        let E4::Ram(m) = e[i] else { return false };
        if !heap.mem.is_zero(Mfn(m), 1) {
            return false;
        }
        e[i] = E4::Pod;
        self.p2m.slots[s].normalize();
        self.cache4k.push(m);
        self.populated -= 1;
        self.entries += 1;
        self.counters.zero_pages_reclaimed += 1;
        true
    }

    /// The cache is empty: reclaim zeroed pages, recently populated ones first, then a
    /// bounded sweep of the p2m downward from where the last sweep stopped.
    fn reclaim<M: FrameMemory>(&mut self, heap: &Heap<M>) {
        let mut budget = POD_EAGER_FRAMES;
        while self.cache_frames() == 0 && budget > 0 {
            let Some((gfn, order)) = self.mru.pop_back() else { break };
            if order == SP_ORDER {
                budget = budget.saturating_sub(SP);
                self.reclaim_superpage(heap, (gfn / SP) as usize);
            } else {
                budget -= 1;
                self.reclaim_4k(heap, gfn);
            }
        }
        let n = self.p2m.slots.len();
        let mut budget = POD_SWEEP_FRAMES;
        let mut visited = 0;
        while self.cache_frames() == 0 && budget > 0 && visited < n.min(POD_SWEEP_SLOTS) {
            let s = self.sweep_at % n;
            self.sweep_at = if s == 0 { n - 1 } else { s - 1 };
            visited += 1;
            match &self.p2m.slots[s] {
                Slot::Ram(_) if self.held_data[s] => {}
                Slot::Ram(_) => {
                    budget = budget.saturating_sub(SP);
                    self.reclaim_superpage(heap, s);
                }
                Slot::Split(e) => {
                    let ram: Vec<u64> = (0..SP).filter(|&i| matches!(e[i as usize], E4::Ram(_))).collect();
                    budget = budget.saturating_sub(ram.len() as u64);
                    for i in ram {
                        self.reclaim_4k(heap, s as u64 * SP + i);
                    }
                }
                Slot::Pod | Slot::Invalid => {}
            }
        }
    }

    /// Out of PoD memory: every page goes back to the heap, the p2m is dropped.
    fn crash<M: FrameMemory>(&mut self, heap: &Heap<M>, gfn: u64) -> HeapError {
        self.release_all(heap);
        self.crashed = Some(gfn);
        self.counters.crashes += 1;
        HeapError::PodExhausted { dom: self.dom, gfn }
    }

    /// Frees every page the guest holds and empties its p2m.
    fn release_all<M: FrameMemory>(&mut self, heap: &Heap<M>) {
        let mut small = core::mem::take(&mut self.cache4k);
        for slot in core::mem::take(&mut self.p2m.slots) {
            match slot {
                Slot::Ram(m) => give_back(heap, self.dom, m, SP_ORDER),
                Slot::Split(e) => {
                    small.extend(e.iter().filter_map(|x| if let E4::Ram(m) = x { Some(*m) } else { None }))
                }
                Slot::Pod | Slot::Invalid => {}
            }
        }
        for m in core::mem::take(&mut self.cache2m) {
            give_back(heap, self.dom, m, SP_ORDER);
        }
        give_back_frames(heap, self.dom, small);
        self.populated = 0;
        self.entries = 0;
        self.mru.clear();
        self.held_data = Vec::new();
        self.adjusting = None;
    }

    /// Gives `n` cache frames back to the heap: 4 KiB pages first, whole superpages while
    /// `n` allows, and only then breaks a superpage.
    fn release_cache<M: FrameMemory>(&mut self, heap: &Heap<M>, mut n: u64) {
        let mut small = Vec::new();
        while n > 0 {
            if n >= SP && self.cache4k.len() as u64 <= n - SP {
                if let Some(m) = self.cache2m.pop() {
                    give_back(heap, self.dom, m, SP_ORDER);
                    n -= SP;
                    continue;
                }
            }
            match self.take_4k() {
                Some(m) => {
                    small.push(m);
                    n -= 1;
                }
                None => break,
            }
        }
        give_back_frames(heap, self.dom, small);
    }

    /// The most the cache may hold: no more than the PoD entries it can back, nor than
    /// the target leaves beside the populated pages.
    fn cache_cap(&self) -> u64 {
        let bound = self.target.max(self.adjusting.unwrap_or(0));
        self.entries.min(bound.saturating_sub(self.populated))
    }

    /// Gives back to the heap what the cache holds beyond [`Guest::cache_cap`] (pages a
    /// reclaim or a decrease reservation took in while the guest is at or above its
    /// target, or that no entry can use any more).
    fn trim<M: FrameMemory>(&mut self, heap: &Heap<M>) {
        let (cache, cap) = (self.cache_frames(), self.cache_cap());
        if cache > cap {
            self.release_cache(heap, cache - cap);
        }
    }

    /// Populates the PoD entry of `gfn` (which must be one).
    fn populate<M: FrameMemory>(&mut self, heap: &Heap<M>, gfn: u64) -> Result<PodMapping, HeapError> {
        if self.cache_frames() == 0 {
            self.reclaim(heap);
        }
        if self.cache_frames() == 0 {
            return Err(self.crash(heap, gfn));
        }
        let s = (gfn / SP) as usize;
        if self.p2m.slots[s] == Slot::Pod {
            if let Some(m) = self.cache2m.pop() {
                self.p2m.slots[s] = Slot::Ram(m);
                self.held_data[s] = false;
                self.populated += SP;
                self.entries -= SP;
                self.counters.populated_2m += 1;
                self.remember(s as u64 * SP, SP_ORDER);
                return Ok(PodMapping { gfn: s as u64 * SP, mfn: Mfn(m), order: SP_ORDER, populated: true });
            }
            self.p2m.slots[s] = Slot::split_of(E4::Pod, SP);
        }
        let Some(m) = self.take_4k() else { return Err(self.crash(heap, gfn)) };
        let Slot::Split(e) = &mut self.p2m.slots[s] else {
            debug_assert!(false, "populating a gfn that is not a PoD entry");
            self.cache4k.push(m);
            return Err(HeapError::PodNotMapped { dom: self.dom, gfn });
        };
        e[(gfn % SP) as usize] = E4::Ram(m);
        self.populated += 1;
        self.entries -= 1;
        self.counters.populated_4k += 1;
        self.remember(gfn, 0);
        Ok(PodMapping { gfn, mfn: Mfn(m), order: 0, populated: true })
    }

    /// Decrease reservation of the 4 KiB entries `lo..hi` of split slot `s`. A RAM page is
    /// kept for the cache if it is zero and the cache is short, freed otherwise.
    fn balloon_4k<M: FrameMemory>(&mut self, heap: &Heap<M>, s: usize, lo: u64, hi: u64, freed: &mut Vec<u64>) {
        for i in lo..hi {
            let Slot::Split(e) = &mut self.p2m.slots[s] else { return };
            match e[i as usize] {
                E4::Invalid => {}
                E4::Pod => {
                    e[i as usize] = E4::Invalid;
                    self.entries -= 1;
                }
                E4::Ram(m) => {
                    e[i as usize] = E4::Invalid;
                    self.populated -= 1;
                    if self.cache_frames() < self.entries && heap.mem.is_zero(Mfn(m), 1) {
                        self.cache4k.push(m);
                        self.counters.zero_pages_reclaimed += 1;
                    } else {
                        freed.push(m);
                    }
                }
            }
        }
        self.p2m.slots[s].normalize();
    }

    fn balloon<M: FrameMemory>(&mut self, heap: &Heap<M>, gfn: u64, order: u8) {
        let end = gfn + (1u64 << order);
        let mut freed = Vec::new();
        let mut s = (gfn / SP) as usize;
        while (s as u64) * SP < end {
            let base = s as u64 * SP;
            let lo = gfn.max(base) - base;
            let hi = end.min(base + SP) - base;
            let whole = lo == 0 && hi == SP;
            match self.p2m.slots[s] {
                Slot::Invalid => {}
                Slot::Pod if whole => {
                    self.p2m.slots[s] = Slot::Invalid;
                    self.entries -= SP;
                }
                Slot::Pod => {
                    self.p2m.slots[s] = Slot::split_of(E4::Pod, SP);
                    self.balloon_4k(heap, s, lo, hi, &mut freed);
                }
                Slot::Ram(m) if whole => {
                    self.p2m.slots[s] = Slot::Invalid;
                    self.populated -= SP;
                    if self.cache_frames() + SP <= self.entries && heap.mem.is_zero(Mfn(m), SP) {
                        self.cache2m.push(m);
                        self.counters.superpages_reclaimed += 1;
                    } else {
                        give_back(heap, self.dom, m, SP_ORDER);
                    }
                }
                Slot::Ram(m) => {
                    if !(self.superpage_reclaim && self.reclaim_superpage(heap, s)) {
                        self.p2m.slots[s] = Slot::Split((0..SP).map(|i| E4::Ram(m + i)).collect());
                        self.counters.superpages_shattered += 1;
                    } else {
                        self.p2m.slots[s] = Slot::split_of(E4::Pod, SP);
                    }
                    self.balloon_4k(heap, s, lo, hi, &mut freed);
                }
                Slot::Split(_) => self.balloon_4k(heap, s, lo, hi, &mut freed),
            }
            s += 1;
        }
        give_back_frames(heap, self.dom, freed);
        self.trim(heap);
        self.mru.retain(|&(g, o)| g + (1u64 << o) <= gfn || g >= end);
    }

    /// Moves the cache toward `target` in bounded steps (one allocation or one release of
    /// at most a superpage each), asking `preempt` after each.
    fn adjust<M: FrameMemory>(
        &mut self,
        heap: &Heap<M>,
        target: u64,
        preempt: &dyn Preempt,
    ) -> Result<PodProgress, HeapError> {
        let want = target.saturating_sub(self.populated).min(self.entries);
        let have = self.cache_frames();
        if want > have {
            // Refuse up front what the heap cannot give, so a refusal changes nothing.
            let s = heap.stats();
            let own: u64 = heap.claims_of(self.dom).iter().map(|c| c.frames).sum();
            let free: u64 = (0..heap.node_count()).map(|n| heap.normal_free(n)).sum();
            let claimed = s.claimed.saturating_sub(own);
            if want - have > free.saturating_sub(claimed) {
                return Err(HeapError::OutOfMemory {
                    order: 0,
                    where_: format!(
                        "the Normal zones ({} needs {} more frames for its PoD cache)",
                        self.dom,
                        want - have
                    ),
                    free,
                    claimed,
                });
            }
        }
        // The bound on the cache while adjusting: the largest target worked toward since
        // the last adjustment finished (a preempted growth may have cached up to it).
        self.adjusting = Some(self.adjusting.map_or(target, |a| a.max(target)));
        loop {
            let have = self.cache_frames();
            if have > want {
                let n = (have - want).min(SP);
                self.release_cache(heap, n);
            } else if have < want {
                let order = if want - have >= SP { SP_ORDER } else { 0 };
                let mut req = AllocRequest::new(order, self.dom);
                if let Some(n) = self.node {
                    req = req.on(n);
                }
                let got = match heap.alloc_preemptible(&req, preempt) {
                    Err(_) if order > 0 => heap.alloc_preemptible(&AllocRequest { order: 0, ..req }, preempt)?,
                    r => r?,
                };
                if let Some(e) = got {
                    heap.mark_pod(e);
                }
                match got {
                    Some(e) if e.order == SP_ORDER => self.cache2m.push(e.mfn.0),
                    Some(e) => self.cache4k.push(e.mfn.0),
                    // Preempted inside a scrub: the ticket is dropped, its scrubbed frames stay clean.
                    None => return Ok(PodProgress::Preempted),
                }
            } else {
                self.target = target;
                self.adjusting = None;
                return Ok(PodProgress::Done);
            }
            if preempt.check() {
                return Ok(PodProgress::Preempted);
            }
        }
    }

    /// Every frame the guest holds, as aligned runs (first frame, order).
    fn pieces(&self) -> Vec<(u64, u8)> {
        let mut v: Vec<(u64, u8)> = Vec::new();
        for slot in &self.p2m.slots {
            match slot {
                Slot::Ram(m) => v.push((*m, SP_ORDER)),
                Slot::Split(e) => {
                    v.extend(e.iter().filter_map(|x| if let E4::Ram(m) = x { Some((*m, 0)) } else { None }))
                }
                Slot::Pod | Slot::Invalid => {}
            }
        }
        v.extend(self.cache2m.iter().map(|&m| (m, SP_ORDER)));
        v.extend(self.cache4k.iter().map(|&m| (m, 0)));
        v
    }

    /// This guest's invariants; returns the frames it holds.
    fn check<M: FrameMemory>(&self, heap: &Heap<M>) -> Result<Vec<(u64, u8)>, InvariantViolation> {
        let d = self.dom;
        let bad = |m: alloc::string::String| Err(InvariantViolation(format!("PoD {d}: {m}")));
        let (mut populated, mut entries) = (0u64, 0u64);
        for (s, slot) in self.p2m.slots.iter().enumerate() {
            match slot {
                Slot::Ram(m) if m % SP != 0 => return bad(format!("slot {s} maps unaligned superpage {m:#x}")),
                Slot::Ram(_) => populated += SP,
                Slot::Pod if (s as u64 + 1) * SP > self.max_pages => {
                    return bad(format!("slot {s} is a 2 MiB PoD entry beyond max_pages {}", self.max_pages))
                }
                Slot::Pod => entries += SP,
                Slot::Invalid => {}
                Slot::Split(e) => {
                    if e.len() as u64 != SP {
                        return bad(format!("split slot {s} has {} entries", e.len()));
                    }
                    for (i, x) in e.iter().enumerate() {
                        let beyond = s as u64 * SP + i as u64 >= self.max_pages;
                        match x {
                            E4::Ram(_) | E4::Pod if beyond => {
                                return bad(format!(
                                    "gfn {:#x} is beyond max_pages but valid",
                                    s as u64 * SP + i as u64
                                ))
                            }
                            E4::Ram(_) => populated += 1,
                            E4::Pod => entries += 1,
                            E4::Invalid => {}
                        }
                    }
                }
            }
        }
        if self.crashed.is_none() && self.p2m.slots.len() as u64 != self.max_pages.div_ceil(SP) {
            return bad(format!("p2m has {} slots for {} pages", self.p2m.slots.len(), self.max_pages));
        }
        if (populated, entries) != (self.populated, self.entries) {
            return bad(format!(
                "counts populated {} entries {} but the p2m holds {populated} and {entries}",
                self.populated, self.entries
            ));
        }
        let cache = self.cache_frames();
        if cache > self.cache_cap() {
            return bad(format!(
                "cache {cache} exceeds its cap: entries {}, populated {}, target {} (adjusting to {:?})",
                self.entries, self.populated, self.target, self.adjusting
            ));
        }
        if self.crashed.is_some() && (populated + cache + entries > 0 || !self.p2m.slots.is_empty()) {
            return bad("crashed but still holds pages or entries".into());
        }
        let pieces = self.pieces();
        let held: u64 = pieces.iter().map(|&(_, o)| 1u64 << o).sum();
        if held != self.populated + cache {
            return bad(format!("holds {held} frames, not populated {} + cache {cache}", self.populated));
        }
        for &(m, o) in &pieces {
            // The heap may have split the allocation (a broken frame inside it, say): every
            // chunk over the piece must be the guest's.
            let mut at = m;
            while at < m + (1u64 << o) {
                match heap.chunk_at(Mfn(at)) {
                    Ok(c) if matches!(c.state, ChunkState::Allocated { owner, .. } if owner == d) => {
                        at = c.extent.mfn.0 + c.extent.frames();
                    }
                    Ok(c) => return bad(format!("holds {m:#x} order {o}, but {at:#x} is {c:?}")),
                    Err(e) => return bad(format!("holds {m:#x}: {e}")),
                }
            }
        }
        for &m in &self.cache2m {
            if m % SP != 0 || !heap.mem.is_zero(Mfn(m), SP) {
                return bad(format!("cached superpage {m:#x} is unaligned or not zero"));
            }
        }
        for &m in &self.cache4k {
            if !heap.mem.is_zero(Mfn(m), 1) {
                return bad(format!("cached page {m:#x} is not zero"));
            }
        }
        Ok(pieces)
    }
}

impl PodRegistry {
    pub(crate) fn new() -> Self {
        PodRegistry { guests: Mutex::new(BTreeMap::new()), retired: Mutex::new(PodCounters::default()) }
    }

    fn get(&self, dom: DomId) -> Result<Arc<Mutex<Guest>>, HeapError> {
        self.guests.lock().get(&dom).cloned().ok_or(HeapError::PodUnknownDomain { dom })
    }
}

impl<M: FrameMemory> Heap<M> {
    /// Free frames of node `n` an unmovable allocation (a PoD cache page) may get: the
    /// whole of its free memory, or, when it has a Movable zone, the free chunks of its
    /// Normal zone (on the free lists or being scrubbed in the background).
    fn normal_free(&self, n: usize) -> u64 {
        use crate::types::Zone;
        let st = self.lock_node(n);
        if st.movable_from >= st.frames {
            return st.free;
        }
        let mut free = 0u64;
        for dirty in [false, true] {
            let mask = st.nonempty_mask(Zone::Normal, dirty);
            for o in (0..=MAX_ORDER).filter(|&o| mask & (1 << o) != 0) {
                let mut at = st.list_head(Zone::Normal, dirty, o);
                while at != crate::chunk::NONE {
                    free += 1u64 << o;
                    at = st.meta[at as usize].b;
                }
            }
        }
        let scrubbing =
            st.work.iter().filter(|w| w.kind == crate::work::Kind::Background && st.zone_of(w.head) == Zone::Normal);
        free + scrubbing.map(|w| w.frames()).sum::<u64>()
    }

    fn pod_guest(&self, dom: DomId) -> Result<Arc<Mutex<Guest>>, HeapError> {
        self.pod.get(dom)
    }

    /// Creates a populate-on-demand guest: a p2m of `cfg.max_pages` PoD entries and a
    /// cache of scrubbed pages (2 MiB while it can, then 4 KiB) filled to `cfg.target`.
    /// Filling is preemptible: on [`PodProgress::Preempted`] the guest exists and the
    /// caller goes on with [`Heap::pod_set_target`]`(dom, cfg.target, ..)`.
    ///
    /// Refused, with nothing changed: a `dom` that is already a PoD guest, a zero or
    /// oversized `max_pages` (at most [`POD_MAX_PAGES_PER_FRAME`] per heap frame), a
    /// target above `max_pages`, an unknown node, or a target the heap's free memory (not
    /// claimed by others) cannot cover.
    pub fn pod_create(&self, dom: DomId, cfg: &PodConfig, preempt: &dyn Preempt) -> Result<PodProgress, HeapError> {
        if let Some(n) = cfg.node {
            self.node(n)?;
        }
        let limit = (self.end - self.first).saturating_mul(POD_MAX_PAGES_PER_FRAME);
        if cfg.max_pages == 0 || cfg.max_pages > limit {
            return Err(HeapError::InvalidConfig(format!(
                "PoD guest {dom}: max_pages {} must be between 1 and {limit} ({POD_MAX_PAGES_PER_FRAME} per heap frame)",
                cfg.max_pages
            )));
        }
        if cfg.target > cfg.max_pages {
            return Err(HeapError::PodTargetTooLarge { dom, target: cfg.target, max_pages: cfg.max_pages });
        }
        let mut g = Guest {
            dom,
            max_pages: cfg.max_pages,
            target: 0,
            adjusting: None,
            node: cfg.node,
            superpage_reclaim: cfg.superpage_reclaim,
            p2m: P2m::new(cfg.max_pages),
            cache2m: Vec::new(),
            cache4k: Vec::new(),
            populated: 0,
            entries: cfg.max_pages,
            mru: VecDeque::new(),
            sweep_at: 0,
            held_data: alloc::vec![false; cfg.max_pages.div_ceil(SP) as usize],
            counters: PodCounters::default(),
            crashed: None,
            gone: false,
        };
        g.sweep_at = g.p2m.slots.len().saturating_sub(1);
        let g = Arc::new(Mutex::new(g));
        // Registered first (the guest lock held while its cache fills, outside the registry
        // lock), so a second create of `dom` is refused and other guests are not held up.
        let mut guard = g.lock();
        {
            let mut guests = self.pod.guests.lock();
            if guests.contains_key(&dom) {
                return Err(HeapError::PodDomainExists { dom });
            }
            guests.insert(dom, g.clone());
        }
        let r = guard.adjust(self, cfg.target, preempt);
        if r.is_err() {
            guard.release_all(self);
            guard.gone = true;
            self.pod.guests.lock().remove(&dom);
        }
        r
    }

    /// Sets `dom`'s target: grows the cache (allocating scrubbed pages) or shrinks it
    /// (freeing pages) until `populated + cache = target`, never beyond what its PoD entries
    /// can use. Preemptible: asks `preempt` after each allocation or release (and between
    /// scrub batches of an allocation) and returns [`PodProgress::Preempted`] to be called
    /// again. A target below `populated` empties the cache; populated pages stay until the
    /// balloon driver gives them back.
    ///
    /// Refused, with nothing changed: an unknown or crashed `dom`, a target above its
    /// `max_pages`, or a growth the heap's free memory cannot cover.
    pub fn pod_set_target(&self, dom: DomId, target: u64, preempt: &dyn Preempt) -> Result<PodProgress, HeapError> {
        let g = self.pod_guest(dom)?;
        let mut g = g.lock();
        if g.gone {
            return Err(HeapError::PodUnknownDomain { dom });
        }
        if let Some(at) = g.crashed {
            return Err(HeapError::PodCrashed { dom, gfn: at });
        }
        if target > g.max_pages {
            return Err(HeapError::PodTargetTooLarge { dom, target, max_pages: g.max_pages });
        }
        g.adjust(self, target, preempt)
    }

    /// The guest touches `gfn` (and, with `data`, writes its tag into that 4 KiB page
    /// through [`FrameMemory::fill`]): a PoD entry is populated from the cache, 2 MiB when
    /// the entry is 2 MiB and the cache holds a superpage, 4 KiB otherwise; an empty cache
    /// is refilled by reclaiming zeroed pages. This is what a VMM calls on a guest's
    /// first-access exit; it maps the returned [`PodMapping`].
    ///
    /// Refused, with nothing changed: an unknown or crashed `dom`, `gfn` beyond its
    /// `max_pages`, a ballooned-out (invalid) `gfn`. When nothing can be reclaimed the
    /// guest crashes: every page it holds returns to the heap and the result is
    /// [`HeapError::PodExhausted`] (later operations on it report [`HeapError::PodCrashed`]
    /// until [`Heap::pod_destroy`]).
    pub fn pod_touch(&self, dom: DomId, gfn: u64, data: bool) -> Result<PodMapping, HeapError> {
        let g = self.pod_guest(dom)?;
        let mut g = g.lock();
        if g.gone {
            return Err(HeapError::PodUnknownDomain { dom });
        }
        g.check_gfn(gfn, 0)?;
        let s = (gfn / SP) as usize;
        let map = match (&g.p2m.slots[s], g.p2m.get(gfn)) {
            (_, E4::Invalid) => return Err(HeapError::PodNotMapped { dom, gfn }),
            (Slot::Ram(m), _) => PodMapping { gfn: s as u64 * SP, mfn: Mfn(*m), order: SP_ORDER, populated: false },
            (_, E4::Ram(m)) => PodMapping { gfn, mfn: Mfn(m), order: 0, populated: false },
            (_, E4::Pod) => {
                let m = g.populate(self, gfn)?;
                g.trim(self);
                m
            }
        };
        if data {
            self.mem.fill(Mfn(map.mfn.0 + (gfn - map.gfn)), 1, dom);
        }
        Ok(map)
    }

    /// Decrease reservation: the guest's balloon driver gives back `[gfn, gfn + 2^order)`.
    /// PoD entries become invalid; RAM pages go back to the heap (or, when zero and the
    /// cache is short, into the cache). Inside a 2 MiB mapping the whole superpage is
    /// zero-checked first and, if zero, reclaimed into the cache whole (unless the guest
    /// was built with [`PodConfig::no_superpage_reclaim`]); otherwise the mapping is
    /// shattered into 4 KiB mappings. A cache left larger than the remaining PoD entries
    /// gives the excess back to the heap, 4 KiB pages first.
    ///
    /// Refused, with nothing changed: an unknown or crashed `dom`, an order above
    /// [`MAX_ORDER`], a `gfn` not aligned to the order, a range beyond `max_pages`.
    pub fn pod_balloon(&self, dom: DomId, gfn: u64, order: u8) -> Result<(), HeapError> {
        let g = self.pod_guest(dom)?;
        let mut g = g.lock();
        if g.gone {
            return Err(HeapError::PodUnknownDomain { dom });
        }
        g.check_gfn(gfn, order)?;
        g.balloon(self, gfn, order);
        Ok(())
    }

    /// Destroys `dom`'s PoD state: every page it holds goes back to the heap (dirty, to be
    /// scrubbed as usual). Its counters stay in [`Heap::pod_totals`].
    pub fn pod_destroy(&self, dom: DomId) -> Result<(), HeapError> {
        let g = self.pod.guests.lock().remove(&dom).ok_or(HeapError::PodUnknownDomain { dom })?;
        let mut g = g.lock();
        g.release_all(self);
        g.gone = true;
        self.pod.retired.lock().add(&g.counters);
        Ok(())
    }

    /// One PoD guest's counts.
    pub fn pod_stats(&self, dom: DomId) -> Result<PodStats, HeapError> {
        let g = self.pod_guest(dom)?;
        let g = g.lock();
        Ok(g.stats())
    }

    /// What backs `gfn` of `dom`.
    pub fn pod_lookup(&self, dom: DomId, gfn: u64) -> Result<PodEntry, HeapError> {
        let g = self.pod_guest(dom)?;
        let g = g.lock();
        g.check_gfn(gfn, 0)?;
        let s = (gfn / SP) as usize;
        Ok(match (&g.p2m.slots[s], g.p2m.get(gfn)) {
            (_, E4::Invalid) => PodEntry::Invalid,
            (Slot::Pod, _) => PodEntry::Pod { order: SP_ORDER },
            (_, E4::Pod) => PodEntry::Pod { order: 0 },
            (Slot::Ram(_), E4::Ram(m)) => PodEntry::Ram { mfn: Mfn(m), order: SP_ORDER },
            (_, E4::Ram(m)) => PodEntry::Ram { mfn: Mfn(m), order: 0 },
        })
    }

    /// The PoD guests of this heap, in domain order.
    pub fn pod_domains(&self) -> Vec<DomId> {
        self.pod.guests.lock().keys().copied().collect()
    }

    /// All PoD guests together; counters include destroyed guests.
    pub fn pod_totals(&self) -> PodTotals {
        let guests: Vec<Arc<Mutex<Guest>>> = self.pod.guests.lock().values().cloned().collect();
        let mut t = PodTotals { counters: *self.pod.retired.lock(), ..PodTotals::default() };
        for g in guests {
            let s = g.lock().stats();
            t.guests += 1;
            t.populated += s.populated;
            t.cache += s.cache;
            t.cache_superpages += s.cache_superpages;
            t.entries += s.entries;
            t.superpage_mappings += s.superpage_mappings;
            t.counters.add(&s.counters);
        }
        t
    }

    /// Frames all PoD guests hold (populated + cache).
    pub fn pod_frames(&self) -> u64 {
        let guests: Vec<Arc<Mutex<Guest>>> = self.pod.guests.lock().values().cloned().collect();
        guests.iter().map(|g| g.lock()).map(|g| g.populated + g.cache_frames()).sum()
    }

    /// PoD invariants for [`Heap::check_invariants`]: each guest's own, and no frame held
    /// twice.
    pub(crate) fn check_pod(&self) -> Result<(), InvariantViolation> {
        let guests: Vec<Arc<Mutex<Guest>>> = self.pod.guests.lock().values().cloned().collect();
        let mut all = Vec::new();
        for g in guests {
            all.extend(g.lock().check(self)?);
        }
        all.sort_unstable();
        for w in all.windows(2) {
            if w[0].0 + (1u64 << w[0].1) > w[1].0 {
                return Err(InvariantViolation(format!(
                    "PoD: frame {:#x} order {} overlaps {:#x} order {}",
                    w[0].0, w[0].1, w[1].0, w[1].1
                )));
            }
        }
        Ok(())
    }
}
