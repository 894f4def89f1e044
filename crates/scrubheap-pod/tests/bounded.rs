//! Every public PoD operation is bounded between two preemption points, proved by
//! counting, not by timing: the heap's memory counts the frames it zeroes and zero-checks,
//! the heap's counters the frames allocated and freed, the PoD layer the p2m slots it
//! walks, and a `Preempt` that asks to yield at every check closes a section at each.
//! Each test also shows that the operation as a whole does more than one section's bound,
//! so a version of it with no preemption point inside (the layer before issue 14) fails.
//! A recording unmap hook checks that every page taken back from a mapping was unmapped
//! first, while the guest still held it.

use scrubheap::*;
use scrubheap_pod::*;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// [`TestMemory`] that counts the frames zeroed and zero-checked.
struct CountingMemory {
    inner: TestMemory,
    zeroed: AtomicU64,
    checked: AtomicU64,
}

impl FrameMemory for CountingMemory {
    fn zero(&self, first: Mfn, count: u64) {
        self.zeroed.fetch_add(count, Relaxed);
        self.inner.zero(first, count)
    }
    fn is_zero(&self, first: Mfn, count: u64) -> bool {
        self.checked.fetch_add(count, Relaxed);
        self.inner.is_zero(first, count)
    }
    fn copy(&self, src: Mfn, dst: Mfn, count: u64) {
        self.inner.copy(src, dst, count)
    }
    fn fill(&self, first: Mfn, count: u64, owner: DomId) {
        self.inner.fill(first, count, owner)
    }
}

type H = Heap<CountingMemory>;

fn heap(frames: u64, dirty: bool) -> H {
    let mem = CountingMemory { inner: TestMemory::new(Mfn(0), frames, 8), zeroed: 0.into(), checked: 0.into() };
    Heap::new(HeapConfig::uniform(1, frames).with_initially_dirty(dirty), mem).unwrap()
}

/// The work counted so far.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
struct Work {
    zeroed: u64,
    checked: u64,
    allocated: u64,
    freed: u64,
    walked: u64,
    /// Heap chunks walked in metadata (what the heap's jobs report to `Preempt::walked`).
    chunks: u64,
}

impl Work {
    fn max(self, o: Work) -> Work {
        Work {
            zeroed: self.zeroed.max(o.zeroed),
            checked: self.checked.max(o.checked),
            allocated: self.allocated.max(o.allocated),
            freed: self.freed.max(o.freed),
            walked: self.walked.max(o.walked),
            chunks: self.chunks.max(o.chunks),
        }
    }
    fn add(self, o: Work) -> Work {
        Work {
            zeroed: self.zeroed + o.zeroed,
            checked: self.checked + o.checked,
            allocated: self.allocated + o.allocated,
            freed: self.freed + o.freed,
            walked: self.walked + o.walked,
            chunks: self.chunks + o.chunks,
        }
    }
}

/// A `Preempt` that asks to yield at every check and measures the work of each section
/// (from the previous check, or the operation's start, to this check or its return).
struct Sections<'a> {
    heap: &'a H,
    pods: &'a Pods,
    last: Cell<(u64, u64, u64, u64)>,
    /// Heap chunks walked since the last section closed.
    chunks: Cell<u64>,
    /// The largest section, field by field.
    max: Cell<Work>,
    /// All sections together.
    all: Cell<Work>,
    checks: Cell<u64>,
}

impl<'a> Sections<'a> {
    fn new(heap: &'a H, pods: &'a Pods) -> Self {
        let s = Sections {
            heap,
            pods,
            last: Cell::default(),
            chunks: Cell::default(),
            max: Cell::default(),
            all: Cell::default(),
            checks: Cell::default(),
        };
        s.begin();
        s
    }
    fn now(&self) -> (u64, u64, u64, u64) {
        let m = self.heap.memory();
        (m.zeroed.load(Relaxed), m.checked.load(Relaxed), self.heap.stats().allocated, self.pods.walked_slots())
    }
    /// Starts a section here (work done outside an operation, by the test's own checks,
    /// is not counted).
    fn begin(&self) {
        self.last.set(self.now());
        self.chunks.set(0);
    }
    /// Closes the section that ends here.
    fn close(&self) {
        let ((z0, c0, a0, w0), (z1, c1, a1, w1)) = (self.last.get(), self.now());
        let w = Work {
            zeroed: z1 - z0,
            checked: c1 - c0,
            allocated: a1.saturating_sub(a0),
            freed: a0.saturating_sub(a1),
            walked: w1 - w0,
            chunks: self.chunks.replace(0),
        };
        self.max.set(self.max.get().max(w));
        self.all.set(self.all.get().add(w));
        self.last.set((z1, c1, a1, w1));
    }
    /// Asserts the bound on every section so far: one batch of frames checked, freed or
    /// allocated, the heap's scrub batch zeroed, the named constant of slots walked.
    fn assert_bounded(&self, what: &str) {
        let m = self.max.get();
        let batch = self.heap.config().scrub_batch;
        assert!(m.checked <= POD_BATCH_FRAMES, "{what}: {m:?} checked more than one batch in a section");
        assert!(m.freed <= POD_BATCH_FRAMES, "{what}: {m:?} freed more than one batch in a section");
        assert!(m.allocated <= POD_BATCH_FRAMES, "{what}: {m:?} allocated more than one batch in a section");
        assert!(m.zeroed <= batch, "{what}: {m:?} zeroed more than the heap's scrub batch {batch} in a section");
        assert!(m.walked <= POD_STEP_SLOTS, "{what}: {m:?} walked more than {POD_STEP_SLOTS} slots in a section");
        let c = CHUNKS_PER_STEP as u64;
        assert!(m.chunks <= c, "{what}: {m:?} walked more than {c} heap chunks in a section");
    }
}

impl Preempt for Sections<'_> {
    fn check(&self) -> bool {
        self.close();
        self.checks.set(self.checks.get() + 1);
        true
    }
    fn walked(&self, chunks: u64) {
        self.chunks.set(self.chunks.get() + chunks);
    }
}

/// An unmap hook that records every call and checks, at the call, that the guest still
/// holds the frames behind the range (`maps`: what the test last saw mapped).
struct Recorder<'a> {
    heap: &'a H,
    maps: &'a RefCell<BTreeMap<(DomId, u64), Mfn>>,
    calls: Vec<(DomId, u64, u8)>,
}

impl Unmap for Recorder<'_> {
    fn unmap(&mut self, dom: DomId, gfn: u64, order: u8) {
        for (&(_, g), &mfn) in self.maps.borrow().range((dom, gfn)..(dom, gfn + (1 << order))) {
            let c = self.heap.chunk_at(mfn).unwrap();
            assert!(
                matches!(c.state, ChunkState::Allocated { owner, sealed: true, .. } if owner == dom),
                "unmap of {dom} gfn {g:#x} came after its frame {mfn:?} left the guest: {c:?}"
            );
        }
        self.calls.push((dom, gfn, order));
    }
}

fn ok(heap: &H, pods: &Pods) {
    heap.check_invariants().unwrap();
    pods.check_invariants(heap).unwrap();
}

/// Touches `gfn` until it is mapped (each call one or more sections), as a vCPU does.
fn touch(s: &Sections<'_>, dom: DomId, gfn: u64, data: bool, unmap: &mut dyn Unmap) -> Result<PodMapping, PodError> {
    loop {
        s.begin();
        let t = s.pods.touch(s.heap, dom, gfn, data, unmap, s);
        s.close();
        match t? {
            PodTouch::Mapped(m) => return Ok(m),
            PodTouch::Preempted => {}
        }
    }
}

/// Calls a resumable operation until it is done, each call a section or more.
fn drive(s: &Sections<'_>, mut call: impl FnMut() -> Result<PodProgress, PodError>) -> Result<(), PodError> {
    loop {
        s.begin();
        let p = call();
        s.close();
        if p? == PodProgress::Done {
            return Ok(());
        }
    }
}

/// Balloons `[gfn, gfn + 2^order)` out to the end.
fn balloon(s: &Sections<'_>, dom: DomId, gfn: u64, order: u8, unmap: &mut dyn Unmap) -> Result<(), PodError> {
    drive(s, || s.pods.balloon(s.heap, dom, gfn, order, unmap, s))
}

fn set_target(s: &Sections<'_>, dom: DomId, target: u64) -> Result<(), PodError> {
    drive(s, || s.pods.set_target(s.heap, dom, target, s))
}

fn destroy(s: &Sections<'_>, dom: DomId) -> Result<(), PodError> {
    drive(s, || s.pods.destroy(s.heap, dom, s))
}

/// The guests of the big tests: 2^19 guest frames (2 GiB) on a heap of 32768 frames.
const BIG: u64 = 32768;
const MAX: u64 = 1 << 19;

fn create(h: &H, pods: &Pods, dom: DomId, target: u64) {
    assert_eq!(pods.create(h, dom, &PodConfig::new(MAX, target), &NeverPreempt).unwrap(), PodProgress::Done);
}

#[test]
fn a_balloon_of_order_18_checks_and_frees_at_most_one_batch_a_section() {
    let (h, pods) = (heap(BIG, false), Pods::new());
    let dom = DomId(1);
    create(&h, &pods, dom, 24 * 1024);
    let s = Sections::new(&h, &pods);
    let maps: RefCell<BTreeMap<(DomId, u64), Mfn>> = RefCell::default();
    let mut rec = Recorder { heap: &h, maps: &maps, calls: Vec::new() };
    // 40 superpages in the first 1 GiB, every other one holding data.
    for k in 0..40u64 {
        let m = touch(&s, dom, k * 512 * 12, k % 2 == 0, &mut NoSecondMapping).unwrap();
        assert_eq!(m.order, 9);
        maps.borrow_mut().insert((dom, m.gfn), m.mfn);
    }
    ok(&h, &pods);
    s.max.set(Work::default());
    s.all.set(Work::default());
    balloon(&s, dom, 0, 18, &mut rec).unwrap();
    let (max, all) = (s.max.get(), s.all.get());
    println!("balloon order 18: longest section {max:?}; in all {all:?}");
    s.assert_bounded("balloon order 18");
    // The whole balloon checked and freed far more than a batch: in one section it would fail.
    assert!(all.checked > POD_BATCH_FRAMES && all.freed > POD_BATCH_FRAMES, "{all:?}");
    // 40 mappings taken back, each unmapped first (checked in the hook), once.
    assert_eq!(rec.calls.len(), 40);
    assert!(rec.calls.iter().all(|&(d, g, o)| d == dom && o == 9 && g % (512 * 12) == 0));
    let st = pods.stats(dom).unwrap();
    assert_eq!((st.populated, st.superpage_mappings), (0, 0), "{st:?}");
    ok(&h, &pods);
    destroy(&s, dom).unwrap();
    s.assert_bounded("destroy");
    assert_eq!(h.stats().allocated, 0);
}

#[test]
fn a_balloon_inside_a_superpage_with_data_shatters_it_in_a_section_of_its_own() {
    let (h, pods) = (heap(8192, false), Pods::new());
    let dom = DomId(1);
    // A target of half: the cache is short of the entries, so ballooned zero pages are
    // checked for it.
    assert_eq!(pods.create(&h, dom, &PodConfig::new(4096, 2048), &NeverPreempt).unwrap(), PodProgress::Done);
    let s = Sections::new(&h, &pods);
    let maps: RefCell<BTreeMap<(DomId, u64), Mfn>> = RefCell::default();
    let m = touch(&s, dom, 5, true, &mut NoSecondMapping).unwrap();
    maps.borrow_mut().insert((dom, 5), Mfn(m.mfn.0 + 5));
    let mut rec = Recorder { heap: &h, maps: &maps, calls: Vec::new() };
    s.max.set(Work::default());
    // 256 pages of it: the superpage is checked (512), shattered, then the 256 pages
    // checked one by one (256): two sections, never 768 frames in one.
    balloon(&s, dom, 256, 8, &mut rec).unwrap();
    s.assert_bounded("balloon inside a superpage with data");
    assert_eq!(s.all.get().checked, 512 + 256);
    assert_eq!(pods.stats(dom).unwrap().counters.superpages_shattered, 1);
    // The 2 MiB mapping went first (before the check), then each 4 KiB page.
    assert_eq!(rec.calls[0], (dom, 0, 9));
    assert_eq!(rec.calls.len(), 1 + 256);
    ok(&h, &pods);
}

#[test]
fn an_empty_cache_touch_reclaims_at_most_one_batch_a_section_and_goes_on_where_it_stopped() {
    let (h, pods) = (heap(BIG, false), Pods::new());
    let dom = DomId(1);
    create(&h, &pods, dom, 16 * 512);
    let s = Sections::new(&h, &pods);
    let maps: RefCell<BTreeMap<(DomId, u64), Mfn>> = RefCell::default();
    // The first slots (swept last) zero; the next 12 hold data, the newest of them
    // in the recent list (eager reclaim checks them first and finds nothing).
    for k in 0..16u64 {
        let m = touch(&s, dom, k * 512, k >= 4, &mut NoSecondMapping).unwrap();
        maps.borrow_mut().insert((dom, m.gfn), m.mfn);
    }
    assert_eq!(pods.stats(dom).unwrap().cache, 0);
    ok(&h, &pods);
    s.max.set(Work::default());
    s.all.set(Work::default());
    let mut rec = Recorder { heap: &h, maps: &maps, calls: Vec::new() };
    let checks = s.checks.get();
    let m = touch(&s, dom, 100 * 512, true, &mut rec).unwrap();
    let (max, all) = (s.max.get(), s.all.get());
    println!("empty-cache touch: longest section {max:?}; in all {all:?}");
    s.assert_bounded("empty-cache touch");
    // Eager reclaim checked 4 superpages with data, the sweep the other 8 and then a zero
    // one: 13 superpages in all, one a section.
    assert_eq!(all.checked, 13 * 512, "{all:?}");
    assert!(s.checks.get() - checks >= 12, "it yielded between the checks");
    assert_eq!((m.order, pods.stats(dom).unwrap().counters.superpages_reclaimed), (9, 1));
    // Every superpage checked was unmapped first; the zero one came back as the new mapping.
    assert_eq!(rec.calls.len(), 13);
    ok(&h, &pods);
}

#[test]
fn a_crash_out_of_pod_memory_is_reached_one_batch_a_section_and_frees_nothing() {
    let (h, pods) = (heap(BIG, false), Pods::new());
    let dom = DomId(1);
    create(&h, &pods, dom, 24 * 512);
    let s = Sections::new(&h, &pods);
    for k in 0..24u64 {
        touch(&s, dom, k * 512, true, &mut NoSecondMapping).unwrap();
    }
    s.max.set(Work::default());
    s.all.set(Work::default());
    let e = touch(&s, dom, 30 * 512, true, &mut NoSecondMapping).unwrap_err();
    assert_eq!(e, PodError::Exhausted { dom, gfn: 30 * 512 });
    let all = s.all.get();
    println!("crashing touch: longest section {:?}; in all {all:?}", s.max.get());
    s.assert_bounded("crashing touch");
    // Eager reclaim's budget (4 superpages), then the sweep's (16 more): 20 checked once.
    assert_eq!(all.checked, (POD_EAGER_FRAMES + POD_SWEEP_FRAMES), "{all:?}");
    assert_eq!(all.freed, 0, "a crash frees nothing in the touch");
    ok(&h, &pods);
    destroy(&s, dom).unwrap();
    s.assert_bounded("destroy of a crashed guest");
    assert_eq!(h.stats().allocated, 0);
}

/// The frames `dom` holds, found through the heap's metadata.
fn held_by(h: &H, dom: DomId) -> Vec<u64> {
    let held =
        |m: u64| matches!(h.chunk_at(Mfn(m)).unwrap().state, ChunkState::Allocated { owner, .. } if owner == dom);
    (0..BIG).filter(|&m| held(m)).collect()
}

#[test]
fn a_run_held_as_more_chunks_than_one_call_walks_goes_back_in_counted_job_steps() {
    let (h, pods) = (heap(BIG, false), Pods::new());
    let dom = DomId(1);
    // A cache below a superpage is grown one 4 KiB page at a time: 256 sealed chunks,
    // one aligned run, which the drain gives back as one order-8 run.
    create(&h, &pods, dom, 256);
    let frames = held_by(&h, dom);
    let first = frames[0];
    assert!(first % 256 == 0 && frames == (first..first + 256).collect::<Vec<_>>(), "{frames:?}");
    // One call would walk 256 chunks under the node lock: refused, nothing changed (the
    // PoD layer halved such a run until each half fit, with no preemption point).
    let before = h.stats();
    let r = h.free_sealed(Mfn(first), 8, dom);
    assert!(matches!(r, Err(HeapError::Free(FreeError::TooManyChunks { limit: CHUNKS_PER_STEP, .. }))), "{r:?}");
    assert_eq!(h.stats(), before);
    let s = Sections::new(&h, &pods);
    destroy(&s, dom).unwrap();
    let (max, all) = (s.max.get(), s.all.get());
    println!("destroy of a guest with 256 cached 4 KiB pages: longest section {max:?}; in all {all:?}");
    s.assert_bounded("destroy");
    // Every chunk walked twice (marked, then freed), each walk counted, in sections of at
    // most CHUNKS_PER_STEP chunks.
    assert!(all.chunks >= 2 * 256, "{all:?}");
    assert_eq!((all.freed, h.stats().allocated), (256, 0));
    ok(&h, &pods);
}

#[test]
fn growth_and_shrink_of_the_cache_move_at_most_a_superpage_and_a_scrub_batch_a_section() {
    // Dirty memory: every growth scrubs what it allocates, in the heap's batches.
    let (h, pods) = (heap(BIG, true), Pods::new());
    let dom = DomId(1);
    let s = Sections::new(&h, &pods);
    let p = pods.create(&h, dom, &PodConfig::new(MAX, 0), &s).unwrap();
    s.close();
    assert_eq!(p, PodProgress::Done);
    set_target(&s, dom, 20 * 1024 + 7).unwrap();
    let all = s.all.get();
    println!("growth: longest section {:?}; in all {all:?}", s.max.get());
    s.assert_bounded("growth");
    assert!(all.zeroed > h.config().scrub_batch && all.allocated > POD_BATCH_FRAMES, "{all:?}");
    assert_eq!(pods.stats(dom).unwrap().cache, 20 * 1024 + 7);
    ok(&h, &pods);
    s.all.set(Work::default());
    set_target(&s, dom, 3).unwrap();
    s.assert_bounded("shrink");
    assert!(s.all.get().freed > POD_BATCH_FRAMES);
    ok(&h, &pods);
}

/// Random operations on three guests, each driven to its end one section at a time: every
/// section stays within the bounds, and every page that leaves a mapping was unmapped
/// first.
#[test]
fn random_operations_stay_within_the_bounds_and_unmap_before_taking_back() {
    let (h, pods) = (heap(16384, true), Pods::new());
    let s = Sections::new(&h, &pods);
    let maps: RefCell<BTreeMap<(DomId, u64), Mfn>> = RefCell::default();
    let mut rng = TestRng::new(0x5eed);
    let max = 8192u64;
    for d in 1..=3 {
        assert_eq!(pods.create(&h, DomId(d), &PodConfig::new(max, 3000), &NeverPreempt).unwrap(), PodProgress::Done);
    }
    for step in 0..3000 {
        let dom = DomId(1 + rng.below(3) as u32);
        let mut rec = Recorder { heap: &h, maps: &maps, calls: Vec::new() };
        let before: Vec<(u64, Mfn)> = maps.borrow().range((dom, 0)..(dom, max)).map(|(&(_, g), &m)| (g, m)).collect();
        let op = rng.below(16);
        let r = match op {
            0..=8 => touch(&s, dom, rng.below(max), rng.below(2) == 0, &mut rec).map(|m| {
                for i in 0..1u64 << m.order {
                    maps.borrow_mut().insert((dom, m.gfn + i), Mfn(m.mfn.0 + i));
                }
            }),
            9..=12 => {
                let order = [0, 0, 3, 9, 10, 12][rng.below(6) as usize];
                balloon(&s, dom, rng.below(max >> order) << order, order, &mut rec)
            }
            13 | 14 => set_target(&s, dom, rng.below(max / 2)),
            _ => {
                // A guest whose create failed is unknown: nothing to destroy.
                let _ = destroy(&s, dom);
                maps.borrow_mut().retain(|&(d, _), _| d != dom);
                let cfg = PodConfig::new(max, rng.below(4000));
                pods.create(&h, dom, &cfg, &NeverPreempt).map(|_| ())
            }
        };
        s.assert_bounded(&format!("step {step}: {r:?}"));
        ok(&h, &pods);
        // A page that left its mapping was unmapped first (the hook checked it was still
        // the guest's then).
        // (A destroy takes no hook: the guest is dead, its mappings gone with its VM.)
        for (g, m) in before.into_iter().filter(|_| op < 15) {
            let still = matches!(pods.lookup(dom, g), Ok(PodEntry::Ram { mfn, .. }) if mfn == m);
            if !still && pods.stats(dom).is_ok_and(|s| s.crashed.is_none()) {
                let unmapped = rec.calls.iter().any(|&(d, at, o)| d == dom && at <= g && g < at + (1 << o));
                assert!(unmapped, "step {step} (op {op}, {r:?}): {dom} gfn {g:#x} left {m:?} without an unmap");
                maps.borrow_mut().remove(&(dom, g));
            }
        }
        if let Err(PodError::Exhausted { .. }) = r {
            destroy(&s, dom).unwrap();
            maps.borrow_mut().retain(|&(d, _), _| d != dom);
            // Refused when the others hold too much: the next create of it tries again.
            let _ = pods.create(&h, dom, &PodConfig::new(max, 2000), &NeverPreempt);
        }
    }
    let (max_w, all) = (s.max.get(), s.all.get());
    println!("random: longest section {max_w:?}; in all {all:?}");
    let t = pods.totals();
    assert!(t.counters.superpages_reclaimed > 0 && t.counters.zero_pages_reclaimed > 0, "{t:?}");
    assert!(t.counters.superpages_shattered > 0, "{t:?}");
}

/// What a growth's admission reads instead of walking the free lists: on a node without
/// a Movable zone, the node's lock-free free counts are its Normal zone's free frames.
#[test]
fn a_node_without_a_movable_zone_has_its_normal_free_frames_in_its_node_counts() {
    let h = heap(8192, true);
    let same = || {
        let (z, n) = (h.zone_stats(0, Zone::Normal).unwrap(), h.node_stats(0).unwrap());
        assert_eq!(z.free(), n.free_clean + n.free_dirty, "{z:?} against {n:?}");
    };
    let mut held = Vec::new();
    for (i, order) in [9u8, 0, 3, 9, 1, 0, 10].into_iter().enumerate() {
        let dom = DomId(1 + i as u32 % 2);
        held.push((h.alloc(&AllocRequest::new(order, dom).noscrub()).unwrap(), dom));
    }
    for (e, dom) in held.drain(..).step_by(2) {
        h.free(e.mfn, e.order, dom).unwrap();
    }
    same();
    // After a background scrub that stopped after its first batch, and one that ran on.
    let first = BatchLimit { frames: 64, yield_after_batch: true };
    assert!(h.scrub_step(0, 4096, &first).unwrap() > 0);
    same();
    assert!(h.scrub_step(0, 4096, &NeverPreempt).unwrap() > 0);
    same();
}
