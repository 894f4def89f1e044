//! Populate-on-demand guests in `scrubheap run`: every [`POD_EVERY`]th guest boots with a
//! target below its maximum, touches all its memory (zeroing it, as Windows does at boot),
//! has its balloon driver give back `max - target` pages 4 KiB at a time, and writes its
//! tag into a working set of half its target. Every page a touch populates is leak-checked
//! before the guest writes it, whether it came from the PoD cache or from a reclaim.

use crate::instrument::PreemptRecorder;
use crate::pool::Pool;
use crate::tenants::guest::Created;
use scrubheap::{DomId, Extent};
use scrubheap_oplog::Op;
use scrubheap_pod::{NoSecondMapping, PodConfig, PodEntry, PodError, PodProgress};
use serde::Serialize;
use std::time::Instant;

/// Which guests are PoD guests: those whose workload index is 1 modulo this.
pub const POD_EVERY: u64 = 4;

/// A PoD guest's target as a share of its maximum, in quarters.
pub const TARGET_QUARTERS: u64 = 3;

/// Whether the guest at workload index `idx` boots populate-on-demand.
pub fn is_pod(idx: u64) -> bool {
    idx % POD_EVERY == 1
}

/// A live PoD guest.
#[derive(Debug)]
pub struct PodGuest {
    /// Its domain id.
    pub dom: DomId,
    /// Its p2m size in 4 KiB frames.
    pub max_pages: u64,
    /// Frames behind it.
    pub target: u64,
}

/// One line of an op log (the caller records it, or not).
pub type LogLine<'a> = &'a dyn Fn(Op);

/// What creating a PoD guest gives: the guest, how long its creation took, and the pages
/// its balloon gave back; or why it was refused.
pub type PodCreate = Result<(PodGuest, Created, u64), PodError>;

/// The PoD part of a run's report (keys may be added, never renamed).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct PodSummary {
    /// PoD guests created (reboots included).
    pub guests: u64,
    /// PoD guests refused (out of memory for their cache).
    pub refused: u64,
    /// First touches populated with 2 MiB pages.
    pub populated_2m: u64,
    /// First touches populated with 4 KiB pages.
    pub populated_4k: u64,
    /// Zeroed 2 MiB mappings reclaimed whole (balloon, eager reclaim, sweeps).
    pub superpages_reclaimed: u64,
    /// Zeroed 4 KiB pages reclaimed.
    pub zero_pages_reclaimed: u64,
    /// 2 MiB mappings shattered by the balloon.
    pub superpages_shattered: u64,
    /// Guests crashed out of PoD memory.
    pub crashes: u64,
    /// 4 KiB pages the balloon drivers gave back.
    pub pages_ballooned: u64,
}

/// A small generator for the balloon's choice of pages (seeded by the domain id, so a run
/// is repeatable).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// A populate-on-demand guest's life on the pool: the PoD guest layer's operations, kept
/// out of [`Pool`]'s own impl so the pool knows nothing of guests.
pub trait PodGuestOps {
    /// Creates a PoD guest of `bytes` maximum (at least 2 MiB) with a target of three
    /// quarters of it on the node with the most free memory, filling its cache preemptibly,
    /// then boots it (touch and zero everything), balloons it down to its target in 4 KiB
    /// pages, and has it write its tag into half its target. `log` sees the op-log lines.
    fn create_pod_guest(&self, dom: DomId, bytes: u64, rec: &PreemptRecorder, log: LogLine<'_>) -> PodCreate;
    /// Boot, balloon, work (see [`PodGuestOps::create_pod_guest`]). Returns pages ballooned.
    fn run_pod_guest(&self, g: &PodGuest, rec: &PreemptRecorder, log: LogLine<'_>) -> u64;
    /// Destroys a PoD guest (crashed or not): its pages go back to the heap, dirty.
    /// Returns milliseconds taken.
    fn destroy_pod_guest(&self, g: PodGuest, rec: &PreemptRecorder, log: LogLine<'_>) -> f64;
    /// The PoD counters of every guest the run has had.
    fn pod_summary(&self, guests: u64, refused: u64, pages_ballooned: u64) -> PodSummary;
}

impl PodGuestOps for Pool {
    fn create_pod_guest(&self, dom: DomId, bytes: u64, rec: &PreemptRecorder, log: LogLine<'_>) -> PodCreate {
        let t = Instant::now();
        let heap = self.heap();
        let max_pages = bytes.div_ceil(4096).max(512);
        let target = max_pages * TARGET_QUARTERS / 4;
        let node = (0..heap.node_count())
            .max_by_key(|&n| (heap.node_stats(n).map_or(0, |s| s.free()), std::cmp::Reverse(n)))
            .unwrap_or(0);
        rec.enter_op("pod create");
        let mut r = self.pods().create(heap, dom, &PodConfig::new(max_pages, target).on(node), rec);
        rec.exit();
        while let Ok(PodProgress::Preempted) = r {
            std::thread::yield_now();
            rec.enter_op("pod set_target");
            r = self.pods().set_target(heap, dom, target, rec);
            rec.exit();
        }
        if let Err(e) = r {
            // A refused create leaves nothing; a failure after it existed drains it.
            let _ = self.drain_pod_guest(dom, rec);
            return Err(e);
        }
        for n in 0..heap.node_count() {
            self.ring(n);
        }
        log(Op::Pod { dom, max_pages, target, node: Some(node) });
        let g = PodGuest { dom, max_pages, target };
        let c = Created { ms: t.elapsed().as_secs_f64() * 1e3, highorder_failures: 0 };
        let ballooned = self.run_pod_guest(&g, rec, log);
        Ok((g, c, ballooned))
    }

    fn run_pod_guest(&self, g: &PodGuest, rec: &PreemptRecorder, log: LogLine<'_>) -> u64 {
        for gfn in 0..g.max_pages {
            if !self.pod_touch(g, gfn, false, rec, log) {
                return 0;
            }
        }
        let mut rng = Rng((0x9e37_79b9_7f4a_7c15 ^ ((g.dom.0 as u64) << 17)) | 1);
        let mut ballooned = 0;
        let mut tries = 0;
        while ballooned < g.max_pages - g.target && tries < 4 * g.max_pages {
            tries += 1;
            let gfn = rng.below(g.max_pages);
            if self.pods().lookup(g.dom, gfn) == Ok(PodEntry::Invalid) {
                continue;
            }
            // 4 KiB: one step, done in one call. (These guests have no second mapping:
            // nothing to unmap before a page goes.)
            rec.enter_op("pod balloon");
            let r = self.pods().balloon(self.heap(), g.dom, gfn, 0, &mut NoSecondMapping, rec);
            rec.exit();
            if r != Ok(PodProgress::Done) {
                return ballooned;
            }
            log(Op::Balloon { dom: g.dom, gfn, order: 0 });
            ballooned += 1;
        }
        for n in 0..self.heap().node_count() {
            self.ring(n);
        }
        for _ in 0..g.target / 2 {
            // The guest uses memory it still has (not what its balloon gave back).
            let gfn = rng.below(g.max_pages);
            if self.pods().lookup(g.dom, gfn) == Ok(PodEntry::Invalid) {
                continue;
            }
            if !self.pod_touch(g, gfn, true, rec, log) {
                break;
            }
        }
        ballooned
    }

    fn destroy_pod_guest(&self, g: PodGuest, rec: &PreemptRecorder, log: LogLine<'_>) -> f64 {
        let t = Instant::now();
        self.drain_pod_guest(g.dom, rec).expect("a live PoD guest can be destroyed");
        log(Op::Destroy { dom: g.dom });
        for n in 0..self.heap().node_count() {
            self.ring(n);
        }
        t.elapsed().as_secs_f64() * 1e3
    }

    fn pod_summary(&self, guests: u64, refused: u64, pages_ballooned: u64) -> PodSummary {
        let c = self.pods().totals().counters;
        PodSummary {
            guests,
            refused,
            populated_2m: c.populated_2m,
            populated_4k: c.populated_4k,
            superpages_reclaimed: c.superpages_reclaimed,
            zero_pages_reclaimed: c.zero_pages_reclaimed,
            superpages_shattered: c.superpages_shattered,
            crashes: c.crashes,
            pages_ballooned,
        }
    }
}

/// Steps of [`PodGuestOps`] that are not part of its interface.
trait PodTouch {
    /// One touch: populates if needed (leak-checking what the guest is handed), and with
    /// `data` writes the guest's tag into the page. A crash ends the guest's run.
    fn pod_touch(&self, g: &PodGuest, gfn: u64, data: bool, rec: &PreemptRecorder, log: LogLine<'_>) -> bool;
    /// Destroys `dom` (crashed or not) to the end: each bounded drain step is one
    /// recorded section, with a yield between two.
    fn drain_pod_guest(&self, dom: DomId, rec: &PreemptRecorder) -> Result<(), PodError>;
}

impl PodTouch for Pool {
    fn pod_touch(&self, g: &PodGuest, gfn: u64, data: bool, rec: &PreemptRecorder, log: LogLine<'_>) -> bool {
        // An empty-cache reclaim runs in bounded steps: each is one recorded section, with
        // a yield between two, as the vCPU re-executes its access. No second mapping here.
        let r = loop {
            rec.enter_op("pod touch");
            let r = self.pods().touch(self.heap(), g.dom, gfn, false, &mut NoSecondMapping, rec);
            rec.exit();
            match r {
                Ok(scrubheap_pod::PodTouch::Preempted) => std::thread::yield_now(),
                Ok(scrubheap_pod::PodTouch::Mapped(m)) => break Ok(m),
                Err(e) => break Err(e),
            }
        };
        log(Op::Touch { dom: g.dom, gfn, data });
        match r {
            Ok(m) => {
                if m.populated {
                    let node = self.heap().node_of(m.mfn).unwrap_or(0);
                    self.handoff_check(Extent { mfn: m.mfn, order: m.order, node });
                }
                if data {
                    let mfn = scrubheap::Mfn(m.mfn.0 + (gfn - m.gfn));
                    scrubheap::FrameMemory::fill(self.arena(), mfn, 1, g.dom);
                }
                true
            }
            Err(PodError::NotMapped { .. }) => true,
            Err(_) => false,
        }
    }

    fn drain_pod_guest(&self, dom: DomId, rec: &PreemptRecorder) -> Result<(), PodError> {
        loop {
            rec.enter_op("pod destroy");
            let r = self.pods().destroy(self.heap(), dom, rec);
            rec.exit();
            match r? {
                PodProgress::Done => return Ok(()),
                PodProgress::Preempted => std::thread::yield_now(),
            }
        }
    }
}
