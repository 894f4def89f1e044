//! Populate-on-demand guests under KVM: a [`DemandPager`] over the heap's PoD layer.
//!
//! The guest is created as a PoD domain of the heap (`Pods::create`: a p2m of PoD entries
//! and a cache of scrubbed 2 MiB and 4 KiB pages filled to its target). None of its RAM
//! has a KVM memory slot at boot; the guest's first access to a range exits to the VMM,
//! the pager calls `Pods::touch` for that guest frame (which maps a 2 MiB page where the
//! entry is 2 MiB and the cache has one, a 4 KiB page otherwise, or reclaims zeroed
//! pages when the cache is empty), and the VMM maps exactly that mapping as a new slot
//! and completes the access.
//!
//! A guest may boot below its maximum ([`PodPager::below`]): its target is what it keeps,
//! and its balloon driver gives back the rest at boot (the payload's balloon prologue),
//! each 2 MiB a `Pods::balloon`. Whenever the PoD layer takes back a page it had mapped
//! (a decrease reservation, a superpage reclaim, a zero sweep of an empty-cache touch) it
//! first calls its unmap hook, and the VMM removes every KVM slot over that page before
//! the frames go to the cache or the heap; a later access faults and `Pods::touch` maps
//! the page (or a new one) again.

use crate::slots::Slot;
use crate::vm::{DemandPager, VmmError};
use scrubheap::DomId;
use scrubheap_host::instrument::PreemptRecorder;
use scrubheap_host::pool::Pool;
use scrubheap_pod::{PodConfig, PodError, PodProgress, PodTouch};

/// A PoD guest of the pool, paged into KVM at first touch.
pub struct PodPager<'p> {
    pool: &'p Pool,
    rec: &'p PreemptRecorder,
    dom: DomId,
    pages: u64,
    keep: u64,
    /// First touches served, and how many came as 2 MiB.
    pub touches: u64,
    /// Of `touches`, mappings of 2 MiB.
    pub superpages: u64,
}

/// The VMM's unmap hook as the PoD layer calls it: guest frames to guest-physical bytes.
struct UnmapSlots<'a>(&'a mut dyn FnMut(u64, u64));

impl scrubheap_pod::Unmap for UnmapSlots<'_> {
    fn unmap(&mut self, _dom: DomId, gfn: u64, order: u8) {
        (self.0)(gfn * 4096, 4096 << order);
    }
}

impl<'p> PodPager<'p> {
    /// Creates PoD domain `dom` of `bytes` (a multiple of 2 MiB) on `node`, its cache
    /// filled to all of it (preemptibly, yielding whenever `rec` says so).
    pub fn new(
        pool: &'p Pool,
        dom: DomId,
        bytes: u64,
        node: usize,
        rec: &'p PreemptRecorder,
    ) -> Result<Self, VmmError> {
        Self::below(pool, dom, bytes, bytes, node, rec)
    }

    /// Creates PoD domain `dom` of `bytes` (a multiple of 2 MiB) on `node` with a target
    /// of `keep` bytes (a multiple of 2 MiB, at least 2 MiB, at most `bytes`): its cache is
    /// filled to `keep`, and the guest boots with its balloon driver giving back the other
    /// `bytes - keep` before it uses its memory.
    pub fn below(
        pool: &'p Pool,
        dom: DomId,
        bytes: u64,
        keep: u64,
        node: usize,
        rec: &'p PreemptRecorder,
    ) -> Result<Self, VmmError> {
        let whole = |b: u64| b > 0 && b.is_multiple_of(2 << 20);
        if !whole(bytes) {
            return Err(VmmError::BadSize(bytes));
        }
        if !whole(keep) || keep > bytes {
            return Err(VmmError::BadSize(keep));
        }
        let (pages, target) = (bytes / 4096, keep / 4096);
        let heap = pool.heap();
        let mut r = pool.pods().create(heap, dom, &PodConfig::new(pages, target).on(node), rec);
        while let Ok(PodProgress::Preempted) = r {
            std::thread::yield_now();
            r = pool.pods().set_target(heap, dom, target, rec);
        }
        r?;
        Ok(PodPager { pool, rec, dom, pages, keep, touches: 0, superpages: 0 })
    }
}

// SAFETY: every slot is the host memory of the mapping `Pods::touch` just gave this guest
// for the frame holding `gpa`: it covers `gpa`, is aligned to its own size (4 KiB or
// 2 MiB, the guest frame number being aligned to its order), and lies inside the guest's
// `pages` (`Pods::touch` refuses frames beyond them). It does not overlap a live slot:
// the VMM asks only for frames no slot maps, and before the PoD layer takes back a page
// (so that it could be handed out again) it calls the unmap hook, which removes every
// slot over it first. The frames are allocated to this guest in the heap until they are
// taken back (their slots gone by then) or `Pods::destroy` in drop, after the VM is gone.
unsafe impl DemandPager for PodPager<'_> {
    fn bytes(&self) -> u64 {
        self.pages * 4096
    }

    fn keep_bytes(&self) -> u64 {
        self.keep
    }

    fn populate(&mut self, gpa: u64, write: bool) -> Result<Slot, VmmError> {
        // Only reached by a caller with no slots to remove: a reclaim that takes a mapped
        // page back would break its mapping, so it is refused.
        let mut no_slots = |at: u64, len: u64| {
            panic!("the PoD layer took back guest-physical {at:#x} (+{len:#x}) but the caller maps no slots")
        };
        self.populate_unmapping(gpa, write, &mut no_slots)
    }

    fn populate_unmapping(
        &mut self,
        gpa: u64,
        _write: bool,
        unmap: &mut dyn FnMut(u64, u64),
    ) -> Result<Slot, VmmError> {
        let (pods, heap) = (self.pool.pods(), self.pool.heap());
        let mut hook = UnmapSlots(unmap);
        // An empty-cache reclaim runs in bounded steps: the vCPU waits, yielding between
        // two, as if it re-executed its access.
        let m = loop {
            self.rec.enter_op("pod touch");
            let t = pods.touch(heap, self.dom, gpa / 4096, false, &mut hook, self.rec);
            self.rec.exit();
            match t? {
                PodTouch::Mapped(m) => break m,
                PodTouch::Preempted => std::thread::yield_now(),
            }
        };
        let frames = 1u64 << m.order;
        self.touches += 1;
        self.superpages += (m.order > 0) as u64;
        Ok(Slot { gpa: m.gfn * 4096, host: self.pool.arena().host_ptr(m.mfn, frames) as usize, bytes: frames * 4096 })
    }

    fn balloon(&mut self, gpa: u64, bytes: u64, unmap: &mut dyn FnMut(u64, u64)) -> Result<(), VmmError> {
        if !bytes.is_power_of_two() || bytes < 4096 || !gpa.is_multiple_of(bytes) {
            return Err(VmmError::Guest(format!("gave back {bytes} bytes at {gpa:#x}: not an aligned power of two")));
        }
        let order = (bytes / 4096).trailing_zeros() as u8;
        let (pods, heap) = (self.pool.pods(), self.pool.heap());
        let mut hook = UnmapSlots(unmap);
        loop {
            self.rec.enter_op("pod balloon");
            let p = pods.balloon(heap, self.dom, gpa / 4096, order, &mut hook, self.rec);
            self.rec.exit();
            match p? {
                PodProgress::Done => return Ok(()),
                PodProgress::Preempted => std::thread::yield_now(),
            }
        }
    }
}

impl Drop for PodPager<'_> {
    fn drop(&mut self) {
        // The VM is gone: drain in bounded steps, yielding between two.
        loop {
            match self.pool.pods().destroy(self.pool.heap(), self.dom, &|| true) {
                Ok(PodProgress::Preempted) => std::thread::yield_now(),
                Ok(PodProgress::Done) | Err(PodError::UnknownDomain { .. }) => break,
                Err(e) => panic!("a PoD guest's memory could not go back to the heap: {e}"),
            }
        }
    }
}

/// Granule of a PoD guest's maximum under `scrubheap vmm --pod`: 8 MiB, so that 3/4 of
/// it is whole 2 MiB pages.
const POD_GRANULE: u64 = 8 << 20;

/// The maximum and the kept bytes (its target, 3/4 of the maximum) of the PoD guest that
/// stands for a workload guest of `bytes`: the maximum is `bytes` rounded down to 8 MiB
/// (at least 8 MiB, at most [`crate::vm::MAX_GUEST_BYTES`]).
pub fn pod_sizes(bytes: u64) -> (u64, u64) {
    let max = (bytes / POD_GRANULE * POD_GRANULE).clamp(POD_GRANULE, crate::vm::MAX_GUEST_BYTES);
    let keep = max / 4 * 3;
    debug_assert!(keep.is_multiple_of(2 << 20) && keep < max, "whole superpages, below the maximum");
    (max, keep)
}

/// RAM of a PoD guest `dom` for a workload guest of `bytes` (see [`pod_sizes`]), booted
/// below its maximum, on node `dom % nodes`. `Ok(None)`: the pool has no room for its
/// target now (the caller counts it refused).
pub fn pod_ram<'p>(
    pool: &'p Pool,
    dom: DomId,
    bytes: u64,
    rec: &'p PreemptRecorder,
) -> Result<Option<crate::vm::Ram<'p>>, VmmError> {
    let (max, keep) = pod_sizes(bytes);
    let node = dom.0 as usize % pool.heap().node_count();
    match PodPager::below(pool, dom, max, keep, node, rec) {
        Ok(p) => Ok(Some(crate::vm::Ram::Demand(crate::vm::DemandRam::new(Box::new(p))))),
        Err(VmmError::Pod(e)) if e.is_out_of_memory() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The PoD part of a `scrubheap vmm --pod` report.
#[derive(Clone, Debug, Default, serde::Serialize, PartialEq)]
pub struct PodVmmReport {
    /// Guests booted below their maximum (each at 3/4 of it).
    pub guests_below_max: u64,
    /// Their maximums, summed (bytes).
    pub max_bytes: u64,
    /// What their balloon drivers gave back at boot, summed (bytes): a quarter of
    /// `max_bytes`; every guest scanned and filled the rest.
    pub ballooned_bytes: u64,
    /// KVM memory slots the VMM removed because the PoD layer's unmap hook asked, before
    /// the page behind each went back to the cache or the heap.
    pub slots_removed: u64,
    /// 2 MiB and 4 KiB populations from the PoD caches.
    pub populated_2m: u64,
    /// See `populated_2m`.
    pub populated_4k: u64,
    /// Superpages taken back whole because they were zero (the balloon of a touched 2 MiB).
    pub superpages_reclaimed: u64,
    /// Guests crashed out of PoD memory (0 in a run that completes).
    pub crashes: u64,
}

/// The PoD figures of the guests `boots` booted on `pool`.
pub fn pod_report(boots: &[crate::vm::BootStats], pool: &Pool) -> PodVmmReport {
    let c = pool.pods().totals().counters;
    let below: Vec<_> = boots.iter().filter(|b| b.ballooned_bytes > 0).collect();
    PodVmmReport {
        guests_below_max: below.len() as u64,
        max_bytes: below.iter().map(|b| b.bytes).sum(),
        ballooned_bytes: below.iter().map(|b| b.ballooned_bytes).sum(),
        slots_removed: boots.iter().map(|b| b.slots_removed).sum(),
        populated_2m: c.populated_2m,
        populated_4k: c.populated_4k,
        superpages_reclaimed: c.superpages_reclaimed,
        crashes: c.crashes,
    }
}
