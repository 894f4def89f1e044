//! One PoD guest: its p2m, its cache, and the operations on them. Every page it holds
//! is a sealed allocation of its domain, given back with [`Heap::free_sealed`].

use crate::p2m::{P2m, Slot, E4, SP, SP_ORDER};
use crate::{
    PodConfig, PodCounters, PodError, PodMapping, PodProgress, PodStats, POD_DRAIN_FRAMES, POD_DRAIN_SLOTS,
    POD_EAGER_FRAMES, POD_MRU, POD_SWEEP_FRAMES, POD_SWEEP_SLOTS,
};
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use scrubheap::{largest_order, AllocRequest, DomId, FrameMemory, Heap, HeapError, Mfn, Preempt, Zone, MAX_ORDER};

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
    pub(crate) counters: PodCounters,
    pub(crate) crashed: Option<u64>,
    /// Destroyed: a thread that still holds the guest must not use it.
    pub(crate) gone: bool,
}

/// Frees a run of frames the guest holds; a failure is a bug in this layer, never the
/// caller's input ([`Heap::free`] and [`Heap::pin`] refuse frames this layer holds: they
/// are sealed).
fn give_back<M: FrameMemory>(heap: &Heap<M>, dom: DomId, mfn: u64, order: u8) {
    let r = heap.free_sealed(Mfn(mfn), order, dom);
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
            superpage_mappings: self.p2m.slots.iter().filter(|s| matches!(s, Slot::Ram(_))).count() as u64,
            counters: self.counters,
            crashed: self.crashed,
        }
    }

    pub(crate) fn check_gfn(&self, gfn: u64, order: u8) -> Result<(), PodError> {
        if order > MAX_ORDER {
            return Err(PodError::Heap(HeapError::InvalidOrder { order }));
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

    /// Reclaims slot `s`'s 2 MiB mapping into the cache if it is all zero; returns
    /// whether it did.
    fn reclaim_superpage<M: FrameMemory>(&mut self, heap: &Heap<M>, s: usize) -> bool {
        let Slot::Ram(m) = self.p2m.slots[s] else { return false };
        if !heap.memory().is_zero(Mfn(m), SP) {
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
        if !heap.memory().is_zero(Mfn(m), 1) {
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

    /// Out of PoD memory: the guest is marked crashed and frees nothing here (this runs in
    /// a vCPU's fault path); its frames drain through [`crate::Pods::destroy`].
    fn crash(&mut self, gfn: u64) -> PodError {
        debug_assert!(self.crashed.is_none(), "a crashed guest is never touched again");
        self.crashed = Some(gfn);
        self.counters.crashes += 1;
        self.mru.clear();
        self.adjusting = None;
        PodError::Exhausted { dom: self.dom, gfn }
    }

    /// Frees every page the guest holds and empties its p2m, in one go (bounded steps with
    /// no preemption point: only for a guest whose create failed, which holds no more than
    /// the part of its cache that was filled).
    pub(crate) fn release_all<M: FrameMemory>(&mut self, heap: &Heap<M>) {
        while !self.drain_step(heap).done {}
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
            let step = self.drain_step(heap);
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
    fn drain_step<M: FrameMemory>(&mut self, heap: &Heap<M>) -> DrainStep {
        let mut frames = 0u64;
        while frames + SP <= POD_DRAIN_FRAMES {
            let Some(m) = self.cache2m.pop() else { break };
            give_back(heap, self.dom, m, SP_ORDER);
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
                    give_back(heap, self.dom, m, SP_ORDER);
                    self.populated -= SP;
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
        give_back_frames(heap, self.dom, small);
        self.held_data.truncate(self.p2m.slots.len());
        debug_assert!(frames <= POD_DRAIN_FRAMES && slots <= POD_DRAIN_SLOTS, "a drain step stays bounded");
        DrainStep { slots, done: self.p2m.slots.is_empty() && self.cache_frames() == 0 }
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
    pub(crate) fn cache_cap(&self) -> u64 {
        let bound = self.target.max(self.adjusting.unwrap_or(0));
        self.entries.min(bound.saturating_sub(self.populated))
    }

    /// Gives back to the heap what the cache holds beyond [`Guest::cache_cap`] (pages a
    /// reclaim or a decrease reservation took in while the guest is at or above its
    /// target, or that no entry can use any more).
    pub(crate) fn trim<M: FrameMemory>(&mut self, heap: &Heap<M>) {
        let (cache, cap) = (self.cache_frames(), self.cache_cap());
        if cache > cap {
            self.release_cache(heap, cache - cap);
        }
    }

    /// Populates the PoD entry of `gfn` (which must be one).
    pub(crate) fn populate<M: FrameMemory>(&mut self, heap: &Heap<M>, gfn: u64) -> Result<PodMapping, PodError> {
        if self.cache_frames() == 0 {
            self.reclaim(heap);
        }
        if self.cache_frames() == 0 {
            return Err(self.crash(gfn));
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
                    if self.cache_frames() < self.entries && heap.memory().is_zero(Mfn(m), 1) {
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

    pub(crate) fn balloon<M: FrameMemory>(&mut self, heap: &Heap<M>, gfn: u64, order: u8) {
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
                    if self.cache_frames() + SP <= self.entries && heap.memory().is_zero(Mfn(m), SP) {
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

    /// Refuses a cache growth of `need` frames that the heap cannot give: more than the
    /// free frames of the Normal zones (PoD pages are unmovable), or more than the Normal
    /// frames the claims gate leaves this guest, added up over every node the growth may
    /// come from (the preferred node and those the heap falls back to: all of them).
    fn admit<M: FrameMemory>(&self, heap: &Heap<M>, need: u64) -> Result<(), PodError> {
        let (mut free, mut reach) = (0u64, 0u64);
        for n in 0..heap.node_count() {
            let normal = heap.zone_stats(n, Zone::Normal)?.free();
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
        if want > have {
            // Refuse up front what the heap cannot give, so a refusal changes nothing.
            self.admit(heap, want - have)?;
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
                return Ok(PodProgress::Done);
            }
            if preempt.check() {
                return Ok(PodProgress::Preempted);
            }
        }
    }
}
