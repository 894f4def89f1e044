//! The pool: a heap over a real arena, scrubber threads per node, and leak checks where
//! frames become clean.
//!
//! Where frames are checked for another owner's bytes (see [`Pool::leak_tallies`]):
//! - at scrub: every zeroing reads back what it zeroed (a scrubber thread's, an
//!   allocation's in-place scrub, a synchronous scrub at free; [`Arena::scrub_check`]);
//! - at boot: frames that start clean (the kernel zeroed them at prefault) are read once
//!   when the pool is built, as they never pass through a scrub the pool sees (a dirty
//!   boot's frames all do);
//! - at handoff: only in verify mode (every word of every frame given to a new owner,
//!   which also catches a frame written behind the pool's back after its scrub), and when
//!   a test calls [`Pool::leak_check`].
//!
//! A guest's own scan of every word it is given stays the end-to-end proof.

pub use crate::arena::{LeakCounters, LeakTally, SAMPLED_WORDS_PER_FRAME};
use crate::instrument::{LockTimer, PreemptRecorder, Sections};
use crate::priority::ScrubPriority;
use crate::{Arena, ArenaConfig, ArenaError, Kernel};
use parking_lot::{Condvar, Mutex};
use scrubheap::FreeError;
use scrubheap::{
    AllocRequest, AllocStart, Claim, ClaimTarget, DomId, Extent, Heap, HeapConfig, HeapError, Mfn, NodeSpec, Policy,
};
use scrubheap_pod::Pods;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a pool is built.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Arena bytes (rounded down to whole frames of every node).
    pub memory_bytes: u64,
    /// Nodes; on a one-node host they are emulated by splitting the arena.
    pub nodes: usize,
    /// Scrubber threads per node.
    pub scrubbers_per_node: usize,
    /// Scrubbing policy.
    pub policy: Policy,
    /// Verify mode: freed frames are poisoned, every zeroed frame is read back word by
    /// word, and so is every frame handed to a new owner. Otherwise a few words of every
    /// zeroed frame are read back and nothing is read at handoff.
    pub verify: bool,
    /// Try hugetlbfs pages for the arena.
    pub hugetlb: bool,
    /// Zeroing kernel, or calibrate.
    pub kernel: Option<Kernel>,
    /// How scrubber threads are scheduled (see [`ScrubPriority`]).
    pub scrub_priority: ScrubPriority,
    /// Yield from a long heap operation once it has run this long (CPU ns).
    pub quantum_ns: u64,
    /// Frames zeroed between preemption checks.
    pub scrub_batch: u64,
    /// Offset within each node where its Movable zone begins (fraction of the node).
    pub movable_fraction: Option<f64>,
    /// Start with every frame dirty, holding a non-zero pattern (memory a previous boot
    /// or tenant left).
    pub initially_dirty: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            memory_bytes: 1 << 30,
            nodes: 1,
            scrubbers_per_node: 1,
            policy: Policy::Scrubheap,
            verify: false,
            hugetlb: true,
            kernel: None,
            scrub_priority: ScrubPriority::default(),
            quantum_ns: 200_000,
            scrub_batch: 256,
            movable_fraction: None,
            initially_dirty: false,
        }
    }
}

/// Why a pool could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The arena could not be mapped.
    #[error(transparent)]
    Arena(#[from] ArenaError),
    /// The heap refused the configuration.
    #[error(transparent)]
    Heap(#[from] HeapError),
    /// Nonsense sizes.
    #[error("{0}")]
    Config(String),
}

struct Bell {
    generation: Mutex<u64>,
    cv: Condvar,
}

struct Shared {
    stop: AtomicBool,
    bells: Vec<Bell>,
    /// Which node's scrubbers look after each node.
    scrubbed_by: Vec<usize>,
    scrub_ns: AtomicU64,
    scrub_frames: AtomicU64,
}

/// What a scrubber thread did.
#[derive(Clone, Debug, Default)]
pub struct ScrubberStats {
    /// Node it served.
    pub node: usize,
    /// CPU it was pinned to, if pinning worked.
    pub cpu: Option<usize>,
    /// Frames it zeroed.
    pub frames: u64,
    /// Wall time spent inside `scrub_step` calls that did work.
    pub busy: Duration,
    /// Times it parked for lack of work.
    pub parks: u64,
    /// CPUs it ran on (`sched_getcpu` after pinning and after each step that did work).
    pub cpus_seen: Vec<u32>,
}

/// A shared handle on a pool's heap (and so its arena) that may outlive the [`Pool`]:
/// it frees frames and wakes the scrubbers that look after them (once the pool is
/// dropped its scrubbers are stopped, and frames freed through a handle stay dirty).
/// Cloning it is cheap; the arena stays mapped while any handle lives.
#[derive(Clone)]
pub struct PoolHandle {
    heap: Arc<Heap<Arena>>,
    shared: Arc<Shared>,
    verify: bool,
}

/// A heap over a real arena with scrubber threads.
pub struct Pool {
    pub(crate) core: PoolHandle,
    /// The populate-on-demand guests beside the heap.
    pods: Pods,
    scrubbers: Vec<JoinHandle<ScrubberStats>>,
    /// Node-lock hold times.
    pub locks: Arc<LockTimer>,
    /// Non-preemptible sections of every thread that used the pool.
    pub sections: Arc<Sections>,
    /// Leak-check counters at handoff (verify mode, or [`Pool::leak_check`]).
    pub leaks: LeakCounters,
    /// Leak-check counters of the frames clean from the start, read when the pool is built.
    pub boot_check: LeakCounters,
    cfg: PoolConfig,
}

impl Pool {
    /// Maps and prefaults the arena, builds the heap and starts the scrubbers.
    pub fn new(cfg: PoolConfig) -> Result<Pool, PoolError> {
        if cfg.nodes == 0 || cfg.nodes > 64 {
            return Err(PoolError::Config(format!("{} nodes: use 1 to 64", cfg.nodes)));
        }
        let fs = 4096u64;
        let per_node = cfg.memory_bytes / fs / cfg.nodes as u64;
        if per_node < 512 {
            return Err(PoolError::Config(format!(
                "{} bytes over {} nodes leaves {} frames per node: give each node at least 2 MiB",
                cfg.memory_bytes, cfg.nodes, per_node
            )));
        }
        let (arena, boot_check) = Self::map_arena(&cfg, per_node)?;
        let mut heap = Heap::new(Self::heap_config(&cfg, per_node), arena)?;
        let locks = LockTimer::new();
        heap.set_lock_observer(locks.clone());
        let heap = Arc::new(heap);
        let mut scrubbed_by = vec![0; cfg.nodes];
        for s in 0..cfg.nodes {
            for &m in heap.served_by(s)? {
                scrubbed_by[m] = s;
            }
        }
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            bells: (0..cfg.nodes).map(|_| Bell { generation: Mutex::new(0), cv: Condvar::new() }).collect(),
            scrubbed_by,
            scrub_ns: AtomicU64::new(0),
            scrub_frames: AtomicU64::new(0),
        });
        let sections = Arc::new(Sections::default());
        let scrubbers = Self::start_scrubbers(&cfg, &heap, &shared, &sections)?;
        let core = PoolHandle { heap, shared, verify: cfg.verify };
        let leaks = LeakCounters::default();
        Ok(Pool { core, pods: Pods::new(), scrubbers, locks, sections, leaks, boot_check, cfg })
    }

    /// [`Pool::new`]'s arena of `per_node` 4 KiB frames a node: mapped, prefaulted, its
    /// scrubs' read-back set, and either poisoned (`initially_dirty`) or read once, which
    /// the returned counters record.
    fn map_arena(cfg: &PoolConfig, per_node: u64) -> Result<(Arena, LeakCounters), PoolError> {
        let fs = 4096u64;
        let frames = per_node * cfg.nodes as u64;
        let mut ac =
            ArenaConfig::new(Mfn(0), frames, fs as usize).with_hugetlb(cfg.hugetlb).with_numa_slices(cfg.nodes);
        ac.calibration_call_bytes = (cfg.scrub_batch * fs) as usize;
        if let Some(k) = cfg.kernel {
            ac = ac.with_kernel(k);
        }
        let arena = Arena::new(ac)?;
        let words = if cfg.verify { fs as usize / 8 } else { SAMPLED_WORDS_PER_FRAME };
        arena.set_scrub_readback_words(words);
        let boot_check = LeakCounters::default();
        if cfg.initially_dirty {
            arena.fill(Mfn(0), frames, crate::POISON);
        } else {
            // Clean from the start: these frames reach guests without a scrub the pool
            // sees, so they are read here once (the scrubs read back all the others).
            boot_check.check(&arena, Mfn(0), frames, words);
        }
        Ok((arena, boot_check))
    }

    /// [`Pool::new`]'s heap configuration: `cfg`'s nodes of `per_node` frames, policy and
    /// batch, the top `movable_fraction` of each node in the Movable zone.
    fn heap_config(cfg: &PoolConfig, per_node: u64) -> HeapConfig {
        let mut hc =
            HeapConfig::uniform(cfg.nodes, per_node).with_policy(cfg.policy).with_initially_dirty(cfg.initially_dirty);
        hc.scrub_batch = cfg.scrub_batch;
        if let Some(f) = cfg.movable_fraction {
            let from = ((per_node as f64 * (1.0 - f)) as u64).min(per_node);
            hc.nodes = vec![NodeSpec { frames: per_node, movable_from: Some(from), has_cpus: true }; cfg.nodes];
        }
        hc
    }

    /// [`Pool::new`]'s scrubber threads, `scrubbers_per_node` a node, each pinned to a CPU.
    fn start_scrubbers(
        cfg: &PoolConfig,
        heap: &Arc<Heap<Arena>>,
        shared: &Arc<Shared>,
        sections: &Arc<Sections>,
    ) -> Result<Vec<JoinHandle<ScrubberStats>>, PoolError> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let bound = match heap.memory().numa() {
            crate::arena::NumaBinding::Bound { nodes } => {
                Some(nodes.iter().map(|&n| crate::arena::sys::node_cpus(n)).collect::<Vec<_>>())
            }
            _ => None,
        };
        let mut scrubbers = Vec::new();
        for node in 0..cfg.nodes {
            for i in 0..cfg.scrubbers_per_node {
                let (heap, shared, sections) = (heap.clone(), shared.clone(), sections.clone());
                // Emulated nodes: distinct CPUs round robin. Bound nodes: the CPUs of
                // the host node the slice lives on.
                let cpu = match bound.as_ref().map(|b| &b[node]).filter(|c| !c.is_empty()) {
                    Some(c) => c[i % c.len()] as usize,
                    None => (node * cfg.scrubbers_per_node + i) % cpus,
                };
                let (prio, quantum) = (cfg.scrub_priority, cfg.quantum_ns);
                let h = std::thread::Builder::new()
                    .name(format!("scrub-n{node}-{i}"))
                    .spawn(move || scrubber(node, cpu, prio, quantum, &heap, &shared, &sections))
                    .map_err(|e| PoolError::Config(format!("cannot start a scrubber thread: {e}")))?;
                scrubbers.push(h);
            }
        }
        assert_eq!(scrubbers.len(), cfg.nodes * cfg.scrubbers_per_node, "every scrubber started");
        Ok(scrubbers)
    }

    /// The heap.
    pub fn heap(&self) -> &Heap<Arena> {
        &self.core.heap
    }

    /// The populate-on-demand guests beside the heap.
    pub fn pods(&self) -> &Pods {
        &self.pods
    }

    /// The arena.
    pub fn arena(&self) -> &Arena {
        self.core.heap.memory()
    }

    /// A handle on the heap that keeps it (and the arena's mapping) alive after the pool
    /// is dropped: what a guest's memory holds so that its frames outlive every user.
    pub fn handle(&self) -> PoolHandle {
        self.core.clone()
    }

    /// The configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    /// Wakes the scrubbers that look after `node`.
    pub fn ring(&self, node: usize) {
        self.core.ring(node);
    }

    /// Allocates and hands over 2^order frames, staying preemptible: a pending allocation
    /// is advanced a batch at a time, yielding the CPU whenever `rec` says so, while the
    /// node's scrubbers are woken to help. In verify mode the frames are leak-checked
    /// before return (otherwise their check was the read-back of their scrub).
    pub fn alloc(&self, req: &AllocRequest, rec: &PreemptRecorder) -> Result<Extent, HeapError> {
        rec.enter_op("alloc");
        let start = self.core.heap.alloc_start(req);
        rec.exit();
        let ext = match start? {
            AllocStart::Ready(e) => e,
            AllocStart::Pending(mut t) => {
                if let Some(e) = t.extent() {
                    self.ring(e.node);
                }
                loop {
                    rec.enter_op("ticket step");
                    let r = t.advance(rec);
                    rec.exit();
                    match r? {
                        Some(e) => break e,
                        None => std::thread::yield_now(),
                    }
                }
            }
        };
        if req.scrub {
            self.handoff_check(ext);
        }
        Ok(ext)
    }

    /// The check at handoff: in verify mode, [`Pool::leak_check`]; otherwise nothing (the
    /// frames were read back when they were zeroed, or at boot).
    pub fn handoff_check(&self, ext: Extent) {
        if self.cfg.verify {
            self.leak_check(ext);
        }
    }

    /// Checks that frames handed to a new owner hold no word of anyone's (every word in
    /// verify mode, a sample otherwise); counts what it finds in [`Pool::leaks`].
    pub fn leak_check(&self, ext: Extent) {
        self.leaks.check(self.arena(), ext.mfn, ext.frames(), self.check_words());
    }

    /// Words of each frame the checks read: every word in verify mode, else a sample.
    pub fn check_words(&self) -> usize {
        if self.cfg.verify {
            self.arena().frame_size() / 8
        } else {
            SAMPLED_WORDS_PER_FRAME
        }
    }

    /// Every place's leak check so far: `boot`, `scrub`, `handoff` (see the module
    /// documentation).
    pub fn leak_tallies(&self) -> [LeakTally; 3] {
        let w = self.check_words();
        [
            self.boot_check.tally("boot", w),
            self.arena().scrub_check().tally("scrub", self.arena().scrub_readback_words()),
            self.leaks.tally("handoff", w),
        ]
    }

    /// Frees `[mfn, 2^order)` of `owner` (poisoned first in verify mode) and wakes the
    /// scrubbers.
    pub fn free(&self, mfn: Mfn, order: u8, owner: DomId, rec: &PreemptRecorder) -> Result<(), HeapError> {
        self.core.free(mfn, order, owner, rec)
    }

    /// Installs a claim set and wakes the scrubbers of the claimed nodes (they scrub
    /// ahead of the guest's build).
    pub fn claim(&self, dom: DomId, set: &[Claim]) -> Result<(), HeapError> {
        self.core.heap.claim_set(dom, set)?;
        for c in set {
            if let ClaimTarget::Node(n) = c.target {
                self.ring(n);
            }
        }
        Ok(())
    }

    /// Frames the scrubbers zeroed so far and the wall time they spent doing it.
    pub fn scrub_progress(&self) -> (u64, Duration) {
        (self.core.shared.scrub_frames.load(Relaxed), Duration::from_nanos(self.core.shared.scrub_ns.load(Relaxed)))
    }

    /// Stops the scrubbers and returns what each did.
    pub fn stop(mut self) -> Vec<ScrubberStats> {
        self.stop_scrubbers()
    }

    fn stop_scrubbers(&mut self) -> Vec<ScrubberStats> {
        self.core.shared.stop.store(true, Relaxed);
        for b in &self.core.shared.bells {
            *b.generation.lock() += 1;
            b.cv.notify_all();
        }
        self.scrubbers.drain(..).map(|h| h.join().expect("a scrubber thread panicked")).collect()
    }

    /// Waits until no node has dirty memory left, on its free lists or in parked reserve
    /// blocks (or `timeout` passes); true if clean.
    pub fn wait_clean(&self, timeout: Duration) -> bool {
        let t = Instant::now();
        loop {
            let s = self.core.heap.stats();
            if s.awaiting_scrub() == 0 && s.scrubbing == 0 {
                return true;
            }
            if t.elapsed() > timeout || !self.cfg.policy.background_scrub() {
                return false;
            }
            for n in 0..self.cfg.nodes {
                self.ring(n);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl PoolHandle {
    /// The heap.
    pub fn heap(&self) -> &Heap<Arena> {
        &self.heap
    }

    /// Wakes the scrubbers that look after `node` (no-op for a node the pool does not have).
    pub fn ring(&self, node: usize) {
        let Some(&s) = self.shared.scrubbed_by.get(node) else { return };
        let bell = &self.shared.bells[s];
        *bell.generation.lock() += 1;
        bell.cv.notify_all();
    }

    /// Frees `[mfn, 2^order)` of `owner` (poisoned first in verify mode) and wakes the
    /// scrubbers.
    pub fn free(&self, mfn: Mfn, order: u8, owner: DomId, rec: &PreemptRecorder) -> Result<(), HeapError> {
        if self.verify {
            if let Ok(scrubheap::ChunkInfo { state: scrubheap::ChunkState::Allocated { owner: o, .. }, .. }) =
                self.heap.chunk_at(mfn)
            {
                if o == owner {
                    self.arena().poison(mfn, 1 << order);
                }
            }
        }
        rec.enter_op("free");
        let r = self.heap.free(mfn, order, owner);
        rec.exit();
        r?;
        self.ring(self.heap.node_of(mfn)?);
        Ok(())
    }

    /// The arena.
    pub fn arena(&self) -> &Arena {
        self.heap.memory()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if !self.scrubbers.is_empty() {
            self.stop_scrubbers();
        }
    }
}

/// How many times a free or unpin is retried while the heap says its frames are being
/// moved (a move takes one copy of at most one extent).
const BUSY_RETRIES: u32 = 1 << 20;

/// Retries `f` while it fails with `FreeError::Busy`, yielding between tries.
pub fn retry_busy<T>(mut f: impl FnMut() -> Result<T, HeapError>) -> Result<T, HeapError> {
    let mut tries = 0;
    loop {
        match f() {
            Err(HeapError::Free(FreeError::Busy { .. })) if tries < BUSY_RETRIES => {
                tries += 1;
                std::thread::yield_now();
            }
            r => return r,
        }
    }
}

/// Pins the calling thread to `cpu`; false if the host refused.
fn pin_to(cpu: usize) -> bool {
    // SAFETY: cpu_set_t is plain data, zero-initialised and then set through the libc
    // helpers; pid 0 names the calling thread; the call only reads the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Records the CPU the calling thread is on into `seen` (a short, sorted list).
fn note_cpu(seen: &mut Vec<u32>) {
    const MAX_CPUS_NOTED: usize = 1024;
    if let Some(c) = current_cpu() {
        if let Err(i) = seen.binary_search(&c) {
            if seen.len() < MAX_CPUS_NOTED {
                seen.insert(i, c);
            }
        }
    }
}

/// The CPU the calling thread runs on.
fn current_cpu() -> Option<u32> {
    // SAFETY: sched_getcpu takes no arguments and only reports the calling thread's CPU.
    let c = unsafe { libc::sched_getcpu() };
    (c >= 0).then_some(c as u32)
}

/// Frames one `scrub_step` call may zero before the scrubber looks at its stop flag.
const STEP_BUDGET: u64 = 1 << 14;

fn scrubber(
    node: usize,
    cpu: usize,
    prio: ScrubPriority,
    quantum_ns: u64,
    heap: &Heap<Arena>,
    shared: &Shared,
    sections: &Sections,
) -> ScrubberStats {
    prio.apply();
    let pinned = pin_to(cpu);
    let rec = PreemptRecorder::new(quantum_ns);
    let sizer = crate::BatchSizer::new(heap.config().frame_size, heap.config().scrub_batch);
    let mut st = ScrubberStats { node, cpu: pinned.then_some(cpu), ..Default::default() };
    note_cpu(&mut st.cpus_seen);
    let bell = &shared.bells[node];
    while !shared.stop.load(Relaxed) {
        let seen = *bell.generation.lock();
        let t = Instant::now();
        rec.enter_op("background scrub");
        let cpu0 = crate::thread_cpu_time();
        let z = heap.scrub_step(node, STEP_BUDGET, &sizer.preempt(&rec)).expect("scrubber node exists");
        sizer.observe(z, crate::thread_cpu_time().saturating_sub(cpu0).as_nanos() as u64);
        rec.exit();
        crate::priority::unboost();
        if z > 0 {
            let busy = t.elapsed();
            st.frames += z;
            st.busy += busy;
            note_cpu(&mut st.cpus_seen);
            shared.scrub_frames.fetch_add(z, Relaxed);
            shared.scrub_ns.fetch_add(busy.as_nanos() as u64, Relaxed);
            continue;
        }
        let mut g = bell.generation.lock();
        if *g == seen && !shared.stop.load(Relaxed) {
            st.parks += 1;
            bell.cv.wait_for(&mut g, Duration::from_millis(50));
        }
    }
    rec.merge_into(sections);
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_thread_notes_its_one_cpu_once() {
        let seen = std::thread::spawn(|| {
            let cpu = current_cpu().expect("sched_getcpu answers");
            assert!(pin_to(cpu as usize), "a thread may pin itself to the CPU it is on");
            let mut seen = Vec::new();
            note_cpu(&mut seen);
            note_cpu(&mut seen);
            (cpu, seen)
        })
        .join()
        .expect("the probe thread finishes");
        assert_eq!(seen.1, [seen.0], "one CPU noted once");
    }
}
