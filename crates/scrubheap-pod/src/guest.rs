//! One PoD guest: its p2m, its cache, and the operations on them. Every page it holds
//! is a sealed allocation of its domain, given back with [`Heap::free_sealed`].

use crate::p2m::{P2m, Slot, E4, SP, SP_ORDER};
use crate::{
    PodConfig, PodCounters, PodError, PodMapping, PodProgress, PodStats, Unmap, POD_BATCH_FRAMES, POD_DRAIN_FRAMES,
    POD_DRAIN_SLOTS, POD_EAGER_FRAMES, POD_MRU, POD_STEP_SLOTS, POD_SWEEP_FRAMES, POD_SWEEP_SLOTS,
};
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use scrubheap::RangeError;
use scrubheap::{
    largest_order, AllocRequest, DomId, FrameMemory, Heap, HeapError, Mfn, NoMigration, Preempt, RangeOp, Zone,
    MAX_ORDER,
};

/// An empty-cache reclaim in progress: what is left of its budgets. Kept across touches
/// that yielded, so the reclaim goes on where it stopped; dropped when it ends (a page
/// found, or the guest crashed) and when a touch finds the cache filled otherwise.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Reclaim {
    /// Frames eager reclaim may still zero-check.
    eager: u64,
    /// Frames the sweep may still zero-check.
    sweep: u64,
    /// Slots the sweep may still visit.
    slots: usize,
}

/// What one bounded reclaim step did.
struct ReclaimStep {
    /// p2m slots it walked.
    slots: u64,
    /// Whether budget is left to go on (the cache still empty).
    more: bool,
}

/// What a decrease reservation did to one slot.
#[derive(Copy, Clone, PartialEq, Eq)]
enum SlotStep {
    /// Nothing of the range was left in it (a call resumed after a preemption).
    Nothing,
    /// The range is out of it.
    Done,
    /// Its 2 MiB mapping held data and was shattered: the range is next, as 4 KiB entries.
    Shattered,
}

/// What one drain step did.
struct DrainStep {
    /// p2m slots it walked (and dropped).
    slots: u64,
    /// Whether the guest now holds nothing.
    done: bool,
}

pub(crate) struct Guest {
    pub(crate) dom: DomId,
    pub(crate) max_pages: u64,
    pub(crate) target: u64,
    /// The target a preempted `set_target` is working toward.
    pub(crate) adjusting: Option<u64>,
    pub(crate) node: Option<usize>,
    pub(crate) superpage_reclaim: bool,
    pub(crate) p2m: P2m,
    pub(crate) cache2m: Vec<u64>,
    pub(crate) cache4k: Vec<u64>,
    pub(crate) populated: u64,
    pub(crate) entries: u64,
    /// Recent populations, newest last: (first gfn, order).
    pub(crate) mru: VecDeque<(u64, u8)>,
    /// The slot the next sweep starts from (sweeps go down, wrapping).
    pub(crate) sweep_at: usize,
    /// Per slot: its 2 MiB mapping was zero-checked and held data. Sweeps pass such
    /// mappings by without reading them until they are populated again (a decrease
    /// reservation inside one still checks it).
    pub(crate) held_data: Vec<bool>,
    /// 2 MiB mappings in the p2m (kept, so [`Guest::stats`] walks nothing).
    pub(crate) superpage_mappings: u64,
    /// An empty-cache reclaim that yielded.
    pub(crate) reclaiming: Option<Reclaim>,
    /// A decrease reservation that yielded: its range and the slot it goes on from (the
    /// slots before are done: all their entries in the range are invalid, which no touch
    /// changes).
    pub(crate) ballooning: Option<(u64, u8, usize)>,
    /// The target whose growth [`Guest::admit`] let through (a resumed growth is not
    /// admitted again).
    pub(crate) admitted: Option<u64>,
    pub(crate) counters: PodCounters,
    pub(crate) crashed: Option<u64>,
    /// Destroyed: a thread that still holds the guest must not use it.
    pub(crate) gone: bool,
}

/// Frees a run of frames the guest holds; a failure is a bug in this layer, never the
/// caller's input ([`Heap::free`] and [`Heap::pin`] refuse frames this layer holds: they
/// are sealed). The run goes back through a [`scrubheap::RangeJob`] driven to its end
/// ([`Heap::range_preemptible`]): however many chunks the heap holds it as, at most
/// [`scrubheap::CHUNKS_PER_STEP`] are walked between two preemption points, each step
/// reports its walk to `preempt`, and `preempt` is asked between two steps and once
/// after the last, so the next run's first step starts a section of its own (a runtime
/// may reschedule there; the call does not stop early, as the guest's step is not
/// resumable halfway through a run).
fn give_back<M: FrameMemory>(heap: &Heap<M>, dom: DomId, mfn: u64, order: u8, preempt: &dyn Preempt) {
    let r = heap.range_preemptible(RangeOp::FreeSealed, Mfn(mfn), order, dom, &NoMigration, preempt);
    debug_assert!(r.is_ok(), "PoD layer could not free {mfn:#x} order {order} of {dom}: {r:?}");
    // Not an early return: the point only ends the section (what it answers is moot here).
    let _ = preempt.check();
}

/// What one step of a decrease reservation works with: the heap (to zero-check pages),
/// the caller's unmapper and preemption points, and the 4 KiB frames to give back once
/// the step is over.
struct Decrease<'a, M: FrameMemory> {
    heap: &'a Heap<M>,
    unmap: &'a mut dyn Unmap,
    preempt: &'a dyn Preempt,
    freed: Vec<u64>,
}

/// Frees single frames, grouped into the largest aligned runs they form inside one node.
fn give_back_frames<M: FrameMemory>(heap: &Heap<M>, dom: DomId, mut frames: Vec<u64>, preempt: &dyn Preempt) {
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
            give_back(heap, dom, m, o, preempt);
            m += 1 << o;
        }
        i += len;
    }
}

impl Guest {
    /// A guest of `cfg.max_pages` PoD entries and an empty cache (its target still 0).
    pub(crate) fn new(dom: DomId, cfg: &PodConfig) -> Guest {
        let p2m = P2m::new(cfg.max_pages);
        let sweep_at = p2m.slots.len().saturating_sub(1);
        Guest {
            dom,
            max_pages: cfg.max_pages,
            target: 0,
            adjusting: None,
            node: cfg.node,
            superpage_reclaim: cfg.superpage_reclaim,
            p2m,
            cache2m: Vec::new(),
            cache4k: Vec::new(),
            populated: 0,
            entries: cfg.max_pages,
            mru: VecDeque::new(),
            sweep_at,
            held_data: alloc::vec![false; cfg.max_pages.div_ceil(SP) as usize],
            superpage_mappings: 0,
            reclaiming: None,
            ballooning: None,
            admitted: None,
            counters: PodCounters::default(),
            crashed: None,
            gone: false,
        }
    }

    pub(crate) fn cache_frames(&self) -> u64 {
        self.cache4k.len() as u64 + SP * self.cache2m.len() as u64
    }

    pub(crate) fn stats(&self) -> PodStats {
        PodStats {
            dom: self.dom,
            max_pages: self.max_pages,
            target: self.target,
            populated: self.populated,
            cache: self.cache_frames(),
            cache_superpages: self.cache2m.len() as u64,
            entries: self.entries,
            superpage_mappings: self.superpage_mappings,
            counters: self.counters,
            crashed: self.crashed,
        }
    }

    pub(crate) fn check_gfn(&self, gfn: u64, order: u8) -> Result<(), PodError> {
        if order > MAX_ORDER {
            return Err(PodError::Heap(HeapError::Range(RangeError::InvalidOrder { order })));
        }
        if gfn % (1u64 << order) != 0 {
            return Err(PodError::Unaligned { dom: self.dom, gfn, order });
        }
        if gfn.checked_add(1 << order).is_none_or(|end| end > self.max_pages) {
            return Err(PodError::GfnOutOfRange { dom: self.dom, gfn, order, max_pages: self.max_pages });
        }
        if let Some(at) = self.crashed {
            return Err(PodError::Crashed { dom: self.dom, gfn: at });
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

    /// Reclaims slot `s`'s 2 MiB mapping into the cache if it is all zero (the second
    /// mapping removed first); returns whether it did.
    fn reclaim_superpage<M: FrameMemory>(&mut self, heap: &Heap<M>, s: usize, unmap: &mut dyn Unmap) -> bool {
        let Slot::Ram(m) = self.p2m.slots[s] else { return false };
        unmap.unmap(self.dom, s as u64 * SP, SP_ORDER);
        if !heap.memory().is_zero(Mfn(m), SP) {
            self.held_data[s] = true;
            return false;
        }
        self.p2m.slots[s] = Slot::Pod;
        self.superpage_mappings -= 1;
        self.cache2m.push(m);
        self.populated -= SP;
        self.entries += SP;
        self.counters.superpages_reclaimed += 1;
        true
    }

    /// Reclaims the 4 KiB mapping of `gfn` into the cache if it is zero (the second
    /// mapping removed first).
    fn reclaim_4k<M: FrameMemory>(&mut self, heap: &Heap<M>, gfn: u64, unmap: &mut dyn Unmap) -> bool {
        let s = (gfn / SP) as usize;
        let Slot::Split(e) = &self.p2m.slots[s] else { return false };
        let i = (gfn % SP) as usize;
        let E4::Ram(m) = e[i] else { return false };
        unmap.unmap(self.dom, gfn, 0);
        if !heap.memory().is_zero(Mfn(m), 1) {
            return false;
        }
        let Slot::Split(e) = &mut self.p2m.slots[s] else { return false };
        e[i] = E4::Pod;
        self.p2m.slots[s].normalize();
        self.cache4k.push(m);
        self.populated -= 1;
        self.entries += 1;
        self.counters.zero_pages_reclaimed += 1;
        true
    }

    /// Frames a sweep zero-checks in slot `s` (0: it reads nothing there).
    fn sweep_cost(&self, s: usize) -> u64 {
        match &self.p2m.slots[s] {
            Slot::Ram(_) if self.held_data[s] => 0,
            Slot::Ram(_) => SP,
            Slot::Split(e) => e.iter().filter(|x| matches!(x, E4::Ram(_))).count() as u64,
            Slot::Pod | Slot::Invalid => 0,
        }
    }

    /// Sweeps slot `s`: reclaims its zero mappings.
    fn sweep_slot<M: FrameMemory>(&mut self, heap: &Heap<M>, s: usize, unmap: &mut dyn Unmap) {
        match &self.p2m.slots[s] {
            Slot::Ram(_) if self.held_data[s] => {}
            Slot::Ram(_) => {
                self.reclaim_superpage(heap, s, unmap);
            }
            Slot::Split(e) => {
                let ram: Vec<u64> = (0..SP).filter(|&i| matches!(e[i as usize], E4::Ram(_))).collect();
                for i in ram {
                    self.reclaim_4k(heap, s as u64 * SP + i, unmap);
                }
            }
            Slot::Pod | Slot::Invalid => {}
        }
    }

    /// One bounded step of the empty-cache reclaim: recently populated pages first, then
    /// the sweep of the p2m downward from where the last one stopped. It zero-checks at
    /// most [`POD_BATCH_FRAMES`] frames and walks at most [`POD_STEP_SLOTS`] slots.
    fn reclaim_step<M: FrameMemory>(&mut self, heap: &Heap<M>, unmap: &mut dyn Unmap) -> ReclaimStep {
        let n = self.p2m.slots.len();
        let fresh = Reclaim { eager: POD_EAGER_FRAMES, sweep: POD_SWEEP_FRAMES, slots: n.min(POD_SWEEP_SLOTS) };
        let mut r = self.reclaiming.take().unwrap_or(fresh);
        let (mut checked, mut walked) = (0u64, 0u64);
        while self.cache_frames() == 0 && r.eager > 0 {
            let Some(&(gfn, order)) = self.mru.back() else {
                r.eager = 0;
                break;
            };
            let cost = 1u64 << order;
            if checked > 0 && checked + cost > POD_BATCH_FRAMES {
                break;
            }
            self.mru.pop_back();
            r.eager = r.eager.saturating_sub(cost);
            checked += cost;
            if order == SP_ORDER {
                self.reclaim_superpage(heap, (gfn / SP) as usize, unmap);
            } else {
                self.reclaim_4k(heap, gfn, unmap);
            }
        }
        while self.cache_frames() == 0 && r.eager == 0 && r.sweep > 0 && r.slots > 0 && walked < POD_STEP_SLOTS {
            let s = self.sweep_at % n;
            let cost = self.sweep_cost(s);
            if checked > 0 && checked + cost > POD_BATCH_FRAMES {
                break;
            }
            self.sweep_at = if s == 0 { n - 1 } else { s - 1 };
            (r.slots, r.sweep) = (r.slots - 1, r.sweep.saturating_sub(cost));
            (walked, checked) = (walked + 1, checked + cost);
            self.sweep_slot(heap, s, unmap);
        }
        debug_assert!(checked <= POD_BATCH_FRAMES && walked <= POD_STEP_SLOTS, "a reclaim step stays bounded");
        let more = self.cache_frames() == 0 && (r.eager > 0 || (r.sweep > 0 && r.slots > 0));
        if more {
            self.reclaiming = Some(r);
        }
        ReclaimStep { slots: walked, more }
    }

    /// Out of PoD memory: the guest is marked crashed and frees nothing here (this runs in
    /// a vCPU's fault path); its frames drain through [`crate::Pods::destroy`].
    fn crash(&mut self, gfn: u64) -> PodError {
        debug_assert!(self.crashed.is_none(), "a crashed guest is never touched again");
        self.crashed = Some(gfn);
        self.counters.crashes += 1;
        self.mru.clear();
        self.reclaiming = None;
        self.adjusting = None;
        self.admitted = None;
        PodError::Exhausted { dom: self.dom, gfn }
    }

    /// Frees every page the guest holds and empties its p2m, in one go (bounded steps with
    /// no preemption point: only for a guest whose create failed, which holds no more than
    /// the part of its cache that was filled).
    pub(crate) fn release_all<M: FrameMemory>(&mut self, heap: &Heap<M>, preempt: &dyn Preempt) {
        while !self.drain_step(heap, preempt).done {}
        debug_assert_eq!(self.populated + self.cache_frames() + self.entries, 0, "released everything");
    }

    /// Frees what a dead guest holds, one bounded step at a time, asking `preempt` between
    /// two steps; [`PodProgress::Preempted`] means call again. Adds the slots it walks to
    /// `walked`.
    pub(crate) fn drain<M: FrameMemory>(
        &mut self,
        heap: &Heap<M>,
        preempt: &dyn Preempt,
        walked: &AtomicU64,
    ) -> PodProgress {
        debug_assert!(self.gone, "only a destroyed guest drains");
        loop {
            let step = self.drain_step(heap, preempt);
            walked.fetch_add(step.slots, Ordering::Relaxed);
            if step.done {
                debug_assert_eq!(self.populated + self.cache_frames(), 0, "a drained guest holds nothing");
                return PodProgress::Done;
            }
            if preempt.check() {
                return PodProgress::Preempted;
            }
        }
    }

    /// One step of a drain: the cache first, then the p2m from its end, freeing at most
    /// [`POD_DRAIN_FRAMES`] frames and walking at most [`POD_DRAIN_SLOTS`] slots. Counts
    /// stay exact (a slot is dropped with its frames), so the invariants hold between steps.
    fn drain_step<M: FrameMemory>(&mut self, heap: &Heap<M>, preempt: &dyn Preempt) -> DrainStep {
        let mut frames = 0u64;
        while frames + SP <= POD_DRAIN_FRAMES {
            let Some(m) = self.cache2m.pop() else { break };
            give_back(heap, self.dom, m, SP_ORDER, preempt);
            frames += SP;
        }
        let mut small = Vec::new();
        while frames < POD_DRAIN_FRAMES {
            let Some(m) = self.cache4k.pop() else { break };
            small.push(m);
            frames += 1;
        }
        let mut slots = 0u64;
        while slots < POD_DRAIN_SLOTS {
            let cost = match self.p2m.slots.last() {
                None => break,
                Some(Slot::Ram(_)) => SP,
                Some(Slot::Split(e)) => e.iter().filter(|x| matches!(x, E4::Ram(_))).count() as u64,
                Some(Slot::Pod | Slot::Invalid) => 0,
            };
            if frames + cost > POD_DRAIN_FRAMES {
                break;
            }
            slots += 1;
            frames += cost;
            match self.p2m.slots.pop() {
                Some(Slot::Ram(m)) => {
                    give_back(heap, self.dom, m, SP_ORDER, preempt);
                    self.populated -= SP;
                    self.superpage_mappings -= 1;
                }
                Some(Slot::Split(e)) => {
                    for x in e.iter() {
                        match x {
                            E4::Ram(m) => {
                                small.push(*m);
                                self.populated -= 1;
                            }
                            E4::Pod => self.entries -= 1,
                            E4::Invalid => {}
                        }
                    }
                }
                Some(Slot::Pod) => self.entries -= SP,
                Some(Slot::Invalid) | None => {}
            }
        }
        give_back_frames(heap, self.dom, small, preempt);
        self.held_data.truncate(self.p2m.slots.len());
        debug_assert!(frames <= POD_DRAIN_FRAMES && slots <= POD_DRAIN_SLOTS, "a drain step stays bounded");
        DrainStep { slots, done: self.p2m.slots.is_empty() && self.cache_frames() == 0 }
    }

    /// Gives `n` cache frames back to the heap: 4 KiB pages first, whole superpages while
    /// `n` allows, and only then breaks a superpage.
    fn release_cache<M: FrameMemory>(&mut self, heap: &Heap<M>, mut n: u64, preempt: &dyn Preempt) {
        let mut small = Vec::new();
        while n > 0 {
            if n >= SP && self.cache4k.len() as u64 <= n - SP {
                if let Some(m) = self.cache2m.pop() {
                    give_back(heap, self.dom, m, SP_ORDER, preempt);
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
        give_back_frames(heap, self.dom, small, preempt);
    }

    /// The most the cache may hold: no more than the PoD entries it can back, nor than
    /// the target leaves beside the populated pages.
    pub(crate) fn cache_cap(&self) -> u64 {
        let bound = self.target.max(self.adjusting.unwrap_or(0));
        self.entries.min(bound.saturating_sub(self.populated))
    }

    /// Gives back to the heap what the cache holds beyond [`Guest::cache_cap`] (pages a
    /// reclaim or a decrease reservation took in while the guest is at or above its
    /// target, or that no entry can use any more).
    pub(crate) fn trim<M: FrameMemory>(&mut self, heap: &Heap<M>, preempt: &dyn Preempt) {
        let (cache, cap) = (self.cache_frames(), self.cache_cap());
        if cache > cap {
            self.release_cache(heap, cache - cap, preempt);
        }
    }

    /// Populates the PoD entry of `gfn` (which must be one). An empty cache is refilled
    /// by reclaim steps, `preempt` asked between two; `Ok(None)`: it asked to yield before
    /// a page was found (the reclaim goes on at the next touch). Adds the slots the
    /// reclaim walks to `walked`.
    pub(crate) fn populate<M: FrameMemory>(
        &mut self,
        heap: &Heap<M>,
        gfn: u64,
        unmap: &mut dyn Unmap,
        preempt: &dyn Preempt,
        walked: &AtomicU64,
    ) -> Result<Option<PodMapping>, PodError> {
        if self.cache_frames() > 0 {
            // Filled otherwise since a reclaim yielded: the next one starts afresh.
            self.reclaiming = None;
        }
        while self.cache_frames() == 0 {
            let step = self.reclaim_step(heap, unmap);
            walked.fetch_add(step.slots, Ordering::Relaxed);
            if self.cache_frames() > 0 {
                break;
            }
            if !step.more {
                return Err(self.crash(gfn));
            }
            if preempt.check() {
                return Ok(None);
            }
        }
        debug_assert!(self.reclaiming.is_none(), "a reclaim that found a page is over");
        let s = (gfn / SP) as usize;
        if self.p2m.slots[s] == Slot::Pod {
            if let Some(m) = self.cache2m.pop() {
                self.p2m.slots[s] = Slot::Ram(m);
                self.superpage_mappings += 1;
                self.held_data[s] = false;
                self.populated += SP;
                self.entries -= SP;
                self.counters.populated_2m += 1;
                self.remember(s as u64 * SP, SP_ORDER);
                return Ok(Some(PodMapping { gfn: s as u64 * SP, mfn: Mfn(m), order: SP_ORDER, populated: true }));
            }
            self.p2m.slots[s] = Slot::split_of(E4::Pod, SP);
        }
        let Some(m) = self.take_4k() else { return Err(self.crash(gfn)) };
        let Slot::Split(e) = &mut self.p2m.slots[s] else {
            debug_assert!(false, "populating a gfn that is not a PoD entry");
            self.cache4k.push(m);
            return Err(PodError::NotMapped { dom: self.dom, gfn });
        };
        e[(gfn % SP) as usize] = E4::Ram(m);
        self.populated += 1;
        self.entries -= 1;
        self.counters.populated_4k += 1;
        self.remember(gfn, 0);
        Ok(Some(PodMapping { gfn, mfn: Mfn(m), order: 0, populated: true }))
    }

    /// Decrease reservation of the 4 KiB entries `lo..hi` of split slot `s`. A RAM page is
    /// unmapped, then kept for the cache if it is zero and the cache is short, freed
    /// otherwise. Returns whether anything of the range was left.
    fn balloon_4k<M: FrameMemory>(&mut self, d: &mut Decrease<'_, M>, s: usize, (lo, hi): (u64, u64)) -> bool {
        let mut any = false;
        for i in lo..hi {
            let Slot::Split(e) = &mut self.p2m.slots[s] else { return any };
            match e[i as usize] {
                E4::Invalid => {}
                E4::Pod => {
                    e[i as usize] = E4::Invalid;
                    self.entries -= 1;
                    any = true;
                }
                E4::Ram(m) => {
                    e[i as usize] = E4::Invalid;
                    self.populated -= 1;
                    any = true;
                    d.unmap.unmap(self.dom, s as u64 * SP + i, 0);
                    if self.cache_frames() < self.entries && d.heap.memory().is_zero(Mfn(m), 1) {
                        self.cache4k.push(m);
                        self.counters.zero_pages_reclaimed += 1;
                    } else {
                        d.freed.push(m);
                    }
                }
            }
        }
        self.p2m.slots[s].normalize();
        any
    }

    /// Decrease reservation of guest frames `lo..hi` of slot `s`: zero-checks at most one
    /// superpage or 512 pages, frees at most 512 frames. A 2 MiB mapping only partly in
    /// the range that holds data is shattered and the range left for the next step.
    fn balloon_slot<M: FrameMemory>(&mut self, d: &mut Decrease<'_, M>, s: usize, (lo, hi): (u64, u64)) -> SlotStep {
        let heap = d.heap;
        let whole = lo == 0 && hi == SP;
        let base = s as u64 * SP;
        match self.p2m.slots[s] {
            Slot::Invalid => return SlotStep::Nothing,
            Slot::Pod if whole => {
                self.p2m.slots[s] = Slot::Invalid;
                self.entries -= SP;
            }
            Slot::Pod => {
                self.p2m.slots[s] = Slot::split_of(E4::Pod, SP);
                self.balloon_4k(d, s, (lo, hi));
            }
            Slot::Ram(m) if whole => {
                d.unmap.unmap(self.dom, base, SP_ORDER);
                self.p2m.slots[s] = Slot::Invalid;
                self.superpage_mappings -= 1;
                self.populated -= SP;
                if self.cache_frames() + SP <= self.entries && heap.memory().is_zero(Mfn(m), SP) {
                    self.cache2m.push(m);
                    self.counters.superpages_reclaimed += 1;
                } else {
                    give_back(heap, self.dom, m, SP_ORDER, d.preempt);
                }
            }
            Slot::Ram(m) => {
                if self.superpage_reclaim && self.reclaim_superpage(heap, s, d.unmap) {
                    self.p2m.slots[s] = Slot::split_of(E4::Pod, SP);
                    self.balloon_4k(d, s, (lo, hi));
                    return SlotStep::Done;
                }
                if !self.superpage_reclaim {
                    d.unmap.unmap(self.dom, base, SP_ORDER);
                }
                self.p2m.slots[s] = Slot::Split((0..SP).map(|i| E4::Ram(m + i)).collect());
                self.superpage_mappings -= 1;
                self.counters.superpages_shattered += 1;
                return SlotStep::Shattered;
            }
            Slot::Split(_) => {
                if !self.balloon_4k(d, s, (lo, hi)) {
                    return SlotStep::Nothing;
                }
            }
        }
        SlotStep::Done
    }

    /// Decrease reservation of `[gfn, gfn + 2^order)`, one slot a step, asking `preempt`
    /// after each step that changed something (a step zero-checks and frees at most one
    /// batch: see [`Guest::balloon_slot`]; the cache's excess is trimmed in the same
    /// step). Resumable by calling again with the same range: it goes on from the slot it
    /// stopped at (after another range's call, from the start: the slots already done
    /// are invalid and cost only their walk). Adds the slots walked to `walked`.
    pub(crate) fn balloon<M: FrameMemory>(
        &mut self,
        heap: &Heap<M>,
        (gfn, order): (u64, u8),
        unmap: &mut dyn Unmap,
        preempt: &dyn Preempt,
        walked: &AtomicU64,
    ) -> PodProgress {
        let end = gfn + (1u64 << order);
        self.mru.retain(|&(g, o)| g + (1u64 << o) <= gfn || g >= end);
        let mut s = match self.ballooning.take() {
            Some((g, o, at)) if (g, o) == (gfn, order) => at,
            _ => (gfn / SP) as usize,
        };
        while (s as u64) * SP < end {
            let base = s as u64 * SP;
            let range = (gfn.max(base) - base, end.min(base + SP) - base);
            walked.fetch_add(1, Ordering::Relaxed);
            let mut d = Decrease { heap, unmap: &mut *unmap, preempt, freed: Vec::new() };
            let step = self.balloon_slot(&mut d, s, range);
            give_back_frames(heap, self.dom, d.freed, preempt);
            self.trim(heap, preempt);
            if step != SlotStep::Shattered {
                s += 1;
            }
            let more = (s as u64) * SP < end;
            if step != SlotStep::Nothing && more && preempt.check() {
                self.ballooning = Some((gfn, order, s));
                return PodProgress::Preempted;
            }
        }
        PodProgress::Done
    }

    /// Refuses a cache growth of `need` frames that the heap cannot give: more than the
    /// free frames of the Normal zones (PoD pages are unmovable), or more than the Normal
    /// frames the claims gate leaves this guest, added up over every node the growth may
    /// come from (the preferred node and those the heap falls back to: all of them).
    ///
    /// A node without a Movable zone has all its free frames in Normal: its lock-free
    /// per-node counters answer in O(1). Only a node with a Movable zone is counted from
    /// its free lists ([`Heap::zone_stats`], under its lock), and [`Guest::adjust`] asks
    /// once per new target, not on every resumed step of a growth.
    fn admit<M: FrameMemory>(&self, heap: &Heap<M>, need: u64) -> Result<(), PodError> {
        let (mut free, mut reach) = (0u64, 0u64);
        for n in 0..heap.node_count() {
            let movable = heap.config().nodes.get(n).is_some_and(|spec| spec.movable_from.is_some());
            let normal = if movable {
                heap.zone_stats(n, Zone::Normal)?.free()
            } else {
                let st = heap.node_stats(n)?;
                st.free_clean + st.free_dirty
            };
            free += normal;
            reach += normal.min(heap.claims_room(self.dom, n)?);
        }
        debug_assert!(reach <= free, "claims only take away");
        if need > free {
            return Err(PodError::OutOfMemory { dom: self.dom, needed: need, free });
        }
        if need > reach {
            // The gate's own refusal names where others' claims bind.
            let first = self.node.unwrap_or(0);
            heap.claims_admit(self.dom, first, need)?;
            return Err(PodError::ClaimedNormal { dom: self.dom, needed: need, free, reach });
        }
        Ok(())
    }

    /// Moves the cache toward `target` in bounded steps (one allocation or one release of
    /// at most a superpage each), asking `preempt` after each.
    pub(crate) fn adjust<M: FrameMemory>(
        &mut self,
        heap: &Heap<M>,
        target: u64,
        preempt: &dyn Preempt,
    ) -> Result<PodProgress, PodError> {
        let want = target.saturating_sub(self.populated).min(self.entries);
        let have = self.cache_frames();
        if want > have && self.admitted != Some(target) {
            // Refuse up front what the heap cannot give, so a refusal changes nothing; a
            // resumed growth toward the same target was admitted already.
            self.admit(heap, want - have)?;
            self.admitted = Some(target);
        }
        // The bound on the cache while adjusting: the largest target worked toward since
        // the last adjustment finished (a preempted growth may have cached up to it).
        self.adjusting = Some(self.adjusting.map_or(target, |a| a.max(target)));
        loop {
            let have = self.cache_frames();
            if have > want {
                let n = (have - want).min(SP);
                self.release_cache(heap, n, preempt);
            } else if have < want {
                let order = if want - have >= SP { SP_ORDER } else { 0 };
                // Sealed: only this layer gives the pages back (free_sealed).
                let mut req = AllocRequest::new(order, self.dom).sealed();
                if let Some(n) = self.node {
                    req = req.on(n);
                }
                let got = match heap.alloc_preemptible(&req, preempt) {
                    Err(_) if order > 0 => heap.alloc_preemptible(&AllocRequest { order: 0, ..req }, preempt)?,
                    r => r?,
                };
                match got {
                    Some(e) if e.order == SP_ORDER => self.cache2m.push(e.mfn.0),
                    Some(e) => self.cache4k.push(e.mfn.0),
                    // Preempted inside a scrub: the ticket is dropped, its scrubbed frames stay clean.
                    None => return Ok(PodProgress::Preempted),
                }
            } else {
                self.target = target;
                self.adjusting = None;
                self.admitted = None;
                return Ok(PodProgress::Done);
            }
            if preempt.check() {
                return Ok(PodProgress::Preempted);
            }
        }
    }
}
