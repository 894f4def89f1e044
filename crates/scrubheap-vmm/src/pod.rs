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
//! Not done: the heap's PoD reclaim (zero sweeps, balloon) changes mappings without
//! telling the VMM, so a guest whose target is below its maximum would need a hook to
//! remove the slot of a reclaimed page before its frames go elsewhere. Until then the
//! pager only runs guests whose target is their maximum, the only kind [`PodPager::new`]
//! creates.

use crate::slots::Slot;
use crate::vm::{DemandPager, VmmError};
use scrubheap::DomId;
use scrubheap_host::instrument::PreemptRecorder;
use scrubheap_host::pool::Pool;
use scrubheap_pod::{PodConfig, PodError, PodProgress};

/// A PoD guest of the pool, paged into KVM at first touch.
pub struct PodPager<'p> {
    pool: &'p Pool,
    dom: DomId,
    pages: u64,
    /// First touches served, and how many came as 2 MiB.
    pub touches: u64,
    /// Of `touches`, mappings of 2 MiB.
    pub superpages: u64,
}

impl<'p> PodPager<'p> {
    /// Creates PoD domain `dom` of `bytes` (a multiple of 2 MiB) on `node`, its cache
    /// filled to all of it (preemptibly, yielding whenever `rec` says so).
    pub fn new(pool: &'p Pool, dom: DomId, bytes: u64, node: usize, rec: &PreemptRecorder) -> Result<Self, VmmError> {
        if bytes == 0 || !bytes.is_multiple_of(2 << 20) {
            return Err(VmmError::BadSize(bytes));
        }
        let pages = bytes / 4096;
        let heap = pool.heap();
        let mut r = pool.pods().create(heap, dom, &PodConfig::new(pages, pages).on(node), rec);
        while let Ok(PodProgress::Preempted) = r {
            std::thread::yield_now();
            r = pool.pods().set_target(heap, dom, pages, rec);
        }
        r?;
        Ok(PodPager { pool, dom, pages, touches: 0, superpages: 0 })
    }
}

// SAFETY: every slot is the host memory of the mapping `Pods::touch` just gave this guest
// for the frame holding `gpa`: it covers `gpa`, is aligned to its own size (4 KiB or
// 2 MiB, the guest frame number being aligned to its order), lies inside the guest's
// `pages` (`Pods::touch` refuses frames beyond them), and is never returned twice (the VMM
// asks only for frames no slot maps, and a PoD entry populated once stays RAM because
// the target is the maximum, so nothing is reclaimed). The frames are allocated to this
// guest in the heap until `Pods::destroy` in drop, which runs after the VM is gone.
unsafe impl DemandPager for PodPager<'_> {
    fn bytes(&self) -> u64 {
        self.pages * 4096
    }

    fn populate(&mut self, gpa: u64, _write: bool) -> Result<Slot, VmmError> {
        let m = self.pool.pods().touch(self.pool.heap(), self.dom, gpa / 4096, false)?;
        let frames = 1u64 << m.order;
        self.touches += 1;
        self.superpages += (m.order > 0) as u64;
        Ok(Slot { gpa: m.gfn * 4096, host: self.pool.arena().host_ptr(m.mfn, frames) as usize, bytes: frames * 4096 })
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
