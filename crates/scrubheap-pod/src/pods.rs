//! The registry of PoD guests beside a heap, and the operations a toolstack and a VMM
//! call on them.

use crate::guest::Guest;
use crate::p2m::{Slot, E4, SP, SP_ORDER};
use crate::{
    PodConfig, PodCounters, PodEntry, PodError, PodMapping, PodProgress, PodStats, PodTotals, PodTouch, PodViolation,
    Unmap, POD_MAX_PAGES_PER_FRAME,
};
#[cfg(doc)]
use crate::{POD_BATCH_FRAMES, POD_DRAIN_FRAMES, POD_DRAIN_SLOTS, POD_STEP_SLOTS};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use scrubheap::{DomId, FrameMemory, Heap, Mfn, Preempt};
// A sleeping lock on hosts (see the `parking_lot` feature), a spin lock in no_std.
#[cfg(feature = "parking_lot")]
use parking_lot::Mutex;
#[cfg(not(feature = "parking_lot"))]
use spin::Mutex;

/// The populate-on-demand guests of one heap. It holds no reference to the heap: every
/// operation takes it, and must always be given the same heap (the one whose sealed
/// allocations the guests hold). Guests are independent: each has its own lock, taken
/// outside the registry's, so one guest's cache fill does not hold up the others.
#[derive(Default)]
pub struct Pods {
    guests: Mutex<BTreeMap<DomId, Arc<Mutex<Guest>>>>,
    /// Destroyed guests whose frames are still draining back to the heap.
    dying: Mutex<BTreeMap<DomId, Arc<Mutex<Guest>>>>,
    /// Counters of destroyed guests.
    retired: Mutex<PodCounters>,
    /// p2m slots walked so far by drains, sweeps and decrease reservations.
    walked_slots: AtomicU64,
}

/// The heap's size in frames (what the p2m size limit scales with).
fn heap_frames<M: FrameMemory>(heap: &Heap<M>) -> u64 {
    (0..heap.node_count()).filter_map(|n| heap.node_range(n).ok()).map(|(a, b)| b.0 - a.0).sum()
}

impl Pods {
    /// No guests.
    pub fn new() -> Self {
        Pods::default()
    }

    fn guest(&self, dom: DomId) -> Result<Arc<Mutex<Guest>>, PodError> {
        self.guests.lock().get(&dom).cloned().ok_or(PodError::UnknownDomain { dom })
    }

    /// Runs `f` on `dom`'s guest under its lock, refusing an unknown or destroyed `dom`.
    fn with_live<R>(&self, dom: DomId, f: impl FnOnce(&mut Guest) -> Result<R, PodError>) -> Result<R, PodError> {
        let g = self.guest(dom)?;
        let mut g = g.lock();
        if g.gone {
            return Err(PodError::UnknownDomain { dom });
        }
        f(&mut g)
    }

    fn all(&self) -> Vec<Arc<Mutex<Guest>>> {
        self.guests.lock().values().cloned().collect()
    }

    /// Live guests and dying ones (destroyed, still draining) together.
    fn all_with_dying(&self) -> Vec<Arc<Mutex<Guest>>> {
        let mut v = self.all();
        v.extend(self.dying.lock().values().cloned());
        v
    }

    /// Creates a populate-on-demand guest: a p2m of `cfg.max_pages` PoD entries and a
    /// cache of scrubbed pages (2 MiB while it can, then 4 KiB) filled to `cfg.target`.
    /// Filling is preemptible: on [`PodProgress::Preempted`] the guest exists and the
    /// caller goes on with [`Pods::set_target`]`(heap, dom, cfg.target, ..)`.
    ///
    /// Refused, with nothing changed: a `dom` that is already a PoD guest, a zero or
    /// oversized `max_pages` (at most [`POD_MAX_PAGES_PER_FRAME`] per heap frame), a
    /// target above `max_pages`, an unknown node, or a target the heap's free memory (not
    /// claimed by others) cannot cover.
    pub fn create<M: FrameMemory>(
        &self,
        heap: &Heap<M>,
        dom: DomId,
        cfg: &PodConfig,
        preempt: &dyn Preempt,
    ) -> Result<PodProgress, PodError> {
        if let Some(n) = cfg.node {
            heap.node_range(n)?;
        }
        let limit = heap_frames(heap).saturating_mul(POD_MAX_PAGES_PER_FRAME);
        if cfg.max_pages == 0 || cfg.max_pages > limit {
            return Err(PodError::BadMaxPages { dom, max_pages: cfg.max_pages, limit });
        }
        if cfg.target > cfg.max_pages {
            return Err(PodError::TargetTooLarge { dom, target: cfg.target, max_pages: cfg.max_pages });
        }
        let g = Arc::new(Mutex::new(Guest::new(dom, cfg)));
        // Registered first (the guest lock held while its cache fills, outside the registry
        // lock), so a second create of `dom` is refused and other guests are not held up.
        let mut guard = g.lock();
        {
            let mut guests = self.guests.lock();
            if guests.contains_key(&dom) || self.dying.lock().contains_key(&dom) {
                return Err(PodError::DomainExists { dom });
            }
            guests.insert(dom, g.clone());
        }
        let r = guard.adjust(heap, cfg.target, preempt);
        if r.is_err() {
            guard.release_all(heap, preempt);
            guard.gone = true;
            self.guests.lock().remove(&dom);
        }
        debug_assert!(r.is_err() || guard.populated == 0, "a new guest has populated nothing");
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
    pub fn set_target<M: FrameMemory>(
        &self,
        heap: &Heap<M>,
        dom: DomId,
        target: u64,
        preempt: &dyn Preempt,
    ) -> Result<PodProgress, PodError> {
        self.with_live(dom, |g| {
            if let Some(at) = g.crashed {
                return Err(PodError::Crashed { dom, gfn: at });
            }
            if target > g.max_pages {
                return Err(PodError::TargetTooLarge { dom, target, max_pages: g.max_pages });
            }
            g.adjust(heap, target, preempt)
        })
    }

    /// The guest touches `gfn` (and, with `data`, writes its tag into that 4 KiB page
    /// through [`FrameMemory::fill`]): a PoD entry is populated from the cache, 2 MiB when
    /// the entry is 2 MiB and the cache holds a superpage, 4 KiB otherwise. This is what a
    /// VMM calls on a guest's first-access exit; it maps the returned [`PodMapping`].
    ///
    /// An empty cache is refilled by reclaiming pages the guest has zeroed (recently
    /// populated ones, then a sweep of the p2m), in steps of at most [`POD_BATCH_FRAMES`]
    /// frames zero-checked and [`POD_STEP_SLOTS`] slots walked, asking `preempt` between
    /// two: [`PodTouch::Preempted`] means touch again to go on. Before it takes back a
    /// page the guest had mapped it calls `unmap` (see [`Unmap`]).
    ///
    /// Refused, with nothing changed: an unknown or crashed `dom`, `gfn` beyond its
    /// `max_pages`, a ballooned-out (invalid) `gfn`. When the reclaim's budget is spent
    /// and nothing was found the guest crashes: the touch frees nothing (it runs in a
    /// vCPU's fault path) and reports [`PodError::Exhausted`]; later operations on it
    /// report [`PodError::Crashed`] until [`Pods::destroy`] drains it.
    pub fn touch<M: FrameMemory>(
        &self,
        heap: &Heap<M>,
        dom: DomId,
        gfn: u64,
        data: bool,
        unmap: &mut dyn Unmap,
        preempt: &dyn Preempt,
    ) -> Result<PodTouch, PodError> {
        self.with_live(dom, |g| {
            g.check_gfn(gfn, 0)?;
            let s = (gfn / SP) as usize;
            let map = match (&g.p2m.slots[s], g.p2m.get(gfn)) {
                (_, E4::Invalid) => return Err(PodError::NotMapped { dom, gfn }),
                (Slot::Ram(m), _) => PodMapping { gfn: s as u64 * SP, mfn: Mfn(*m), order: SP_ORDER, populated: false },
                (_, E4::Ram(m)) => PodMapping { gfn, mfn: Mfn(m), order: 0, populated: false },
                (_, E4::Pod) => {
                    let Some(m) = g.populate(heap, gfn, unmap, preempt, &self.walked_slots)? else {
                        return Ok(PodTouch::Preempted);
                    };
                    g.trim(heap, preempt);
                    m
                }
            };
            debug_assert!(map.gfn <= gfn && gfn - map.gfn < 1u64 << map.order, "the mapping holds the gfn");
            if data {
                heap.memory().fill(Mfn(map.mfn.0 + (gfn - map.gfn)), 1, dom);
            }
            Ok(PodTouch::Mapped(map))
        })
    }

    /// Decrease reservation: the guest's balloon driver gives back `[gfn, gfn + 2^order)`.
    /// PoD entries become invalid; RAM pages go back to the heap (or, when zero and the
    /// cache is short, into the cache). Inside a 2 MiB mapping the whole superpage is
    /// zero-checked first and, if zero, reclaimed into the cache whole (unless the guest
    /// was built with [`PodConfig::no_superpage_reclaim`]); otherwise the mapping is
    /// shattered into 4 KiB mappings. A cache left larger than the remaining PoD entries
    /// gives the excess back to the heap, 4 KiB pages first. Before it takes back a page
    /// the guest had mapped it calls `unmap` (see [`Unmap`]).
    ///
    /// Bounded and resumable: it works one 2 MiB slot a step, each zero-checking at most
    /// [`POD_BATCH_FRAMES`] frames and freeing at most as many, and asks `preempt` between
    /// two; on [`PodProgress::Preempted`] call it again with the same range to go on (a
    /// call walks at most 2^order / 512 + 1 slots, within [`POD_STEP_SLOTS`]).
    ///
    /// Refused, with nothing changed: an unknown or crashed `dom`, an order above
    /// [`scrubheap::MAX_ORDER`], a `gfn` not aligned to the order, a range beyond `max_pages`.
    pub fn balloon<M: FrameMemory>(
        &self,
        heap: &Heap<M>,
        dom: DomId,
        gfn: u64,
        order: u8,
        unmap: &mut dyn Unmap,
        preempt: &dyn Preempt,
    ) -> Result<PodProgress, PodError> {
        self.with_live(dom, |g| {
            g.check_gfn(gfn, order)?;
            Ok(g.balloon(heap, (gfn, order), unmap, preempt, &self.walked_slots))
        })
    }

    /// Destroys `dom`'s PoD state, crashed or not: the guest is dead at once (every later
    /// touch, balloon or target of it is refused as [`PodError::UnknownDomain`], and a
    /// create of `dom` as [`PodError::DomainExists`] until the drain is done), and every
    /// page it holds goes back to the heap (dirty, to be scrubbed as usual) in bounded
    /// steps: at most [`POD_DRAIN_FRAMES`] frames freed and [`POD_DRAIN_SLOTS`] p2m slots
    /// walked between two calls of `preempt`. On [`PodProgress::Preempted`] call it again
    /// to go on; until it returns [`PodProgress::Done`] the guest's frames count as dying
    /// ([`PodTotals::dying`], [`Pods::frames`], [`Pods::check_invariants`]). Its counters
    /// stay in [`Pods::totals`].
    ///
    /// Refused, with nothing changed: a `dom` that is neither a PoD guest nor dying.
    pub fn destroy<M: FrameMemory>(
        &self,
        heap: &Heap<M>,
        dom: DomId,
        preempt: &dyn Preempt,
    ) -> Result<PodProgress, PodError> {
        let g = {
            // Moved from the live guests to the dying ones under the registry lock, so a
            // create of `dom` sees one or the other. (A guest's lock is never taken under it.)
            let mut guests = self.guests.lock();
            let mut dying = self.dying.lock();
            match dying.get(&dom) {
                Some(g) => g.clone(),
                None => {
                    let g = guests.remove(&dom).ok_or(PodError::UnknownDomain { dom })?;
                    dying.insert(dom, g.clone());
                    g
                }
            }
        };
        let mut guard = g.lock();
        // Dead from here on: a thread that still holds the guest sees `gone`.
        guard.gone = true;
        let p = guard.drain(heap, preempt, &self.walked_slots);
        if p == PodProgress::Done {
            let mut dying = self.dying.lock();
            // Only this guest: a racing destroy may have retired it, and `dom` died anew.
            if dying.get(&dom).is_some_and(|d| Arc::ptr_eq(d, &g)) {
                dying.remove(&dom);
                self.retired.lock().add(&guard.counters);
            }
        }
        debug_assert!(p == PodProgress::Preempted || guard.populated + guard.cache_frames() == 0, "drained");
        Ok(p)
    }

    /// p2m slots that destroy drains, empty-cache sweeps and decrease reservations have
    /// walked so far, over every guest (for a caller that counts the work between two
    /// preemption points: at most [`POD_STEP_SLOTS`]; a plain counter, no lock).
    pub fn walked_slots(&self) -> u64 {
        self.walked_slots.load(Ordering::Relaxed)
    }

    /// [`Pods::walked_slots`] under its name before sweeps and balloons counted too (kept
    /// for callers written against it).
    pub fn drained_slots(&self) -> u64 {
        self.walked_slots()
    }

    /// One PoD guest's counts.
    pub fn stats(&self, dom: DomId) -> Result<PodStats, PodError> {
        let g = self.guest(dom)?;
        let g = g.lock();
        Ok(g.stats())
    }

    /// What backs `gfn` of `dom`.
    pub fn lookup(&self, dom: DomId, gfn: u64) -> Result<PodEntry, PodError> {
        let g = self.guest(dom)?;
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

    /// The PoD guests, in domain order.
    pub fn domains(&self) -> Vec<DomId> {
        self.guests.lock().keys().copied().collect()
    }

    /// All PoD guests together; counters include destroyed guests.
    pub fn totals(&self) -> PodTotals {
        let mut t = PodTotals { counters: *self.retired.lock(), ..PodTotals::default() };
        // Cloned out first: a guest's lock is never taken under a registry lock.
        let dying: Vec<_> = self.dying.lock().values().cloned().collect();
        for g in dying {
            let g = g.lock();
            t.dying += g.populated + g.cache_frames();
            t.counters.add(&g.counters);
        }
        for g in self.all() {
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

    /// Frames all PoD guests hold (populated + cache), dying ones (destroyed, still
    /// draining) included.
    pub fn frames(&self) -> u64 {
        self.all_with_dying().iter().map(|g| g.lock()).map(|g| g.populated + g.cache_frames()).sum()
    }

    /// Verifies every PoD invariant from scratch against `heap`: each guest's own (p2m
    /// counts, cache bounds, every held frame a sealed allocation of the guest, every
    /// cached frame zero), dying guests' included, and no frame held twice. O(held frames + p2m size); for tests
    /// and `check` lines, beside [`Heap::check_invariants`].
    pub fn check_invariants<M: FrameMemory>(&self, heap: &Heap<M>) -> Result<(), PodViolation> {
        let mut all = Vec::new();
        for g in self.all_with_dying() {
            all.extend(g.lock().check(heap)?);
        }
        all.sort_unstable();
        for w in all.windows(2) {
            if w[0].0 + (1u64 << w[0].1) > w[1].0 {
                return Err(PodViolation(format!(
                    "frame {:#x} order {} overlaps {:#x} order {}",
                    w[0].0, w[0].1, w[1].0, w[1].1
                )));
            }
        }
        Ok(())
    }
}
