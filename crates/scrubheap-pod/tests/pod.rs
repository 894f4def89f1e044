//! Populate-on-demand guests: every path of DESIGN section 3.6 (cache fill, 2 MiB and
//! 4 KiB populate, eager reclaim, emergency sweep, superpage reclaim on decrease
//! reservation, crash, preemptible targets) and every refusal, with the full invariant
//! check after each operation.

#[path = "../../scrubheap/tests/common/mod.rs"]
mod common;

use common::snapshot;
use scrubheap::*;
use scrubheap::{ClaimError, FreeError, RangeError};
use scrubheap_pod::*;

const FRAMES: u64 = 8192;
const FS: usize = 64;

/// A heap and the PoD guests beside it; derefs to the heap.
struct World {
    heap: Heap<TestMemory>,
    pods: Pods,
}

impl World {
    fn new(heap: Heap<TestMemory>) -> World {
        World { heap, pods: Pods::new() }
    }
    /// A touch that never yields, of a guest with no second mapping.
    fn touch(&self, dom: DomId, gfn: u64, data: bool) -> Result<PodMapping, PodError> {
        let t = self.pods.touch(&self.heap, dom, gfn, data, &mut NoSecondMapping, &NeverPreempt)?;
        Ok(t.mapping().expect("NeverPreempt never yields"))
    }
    /// A decrease reservation that never yields, of a guest with no second mapping.
    fn balloon(&self, dom: DomId, gfn: u64, order: u8) -> Result<(), PodError> {
        let p = self.pods.balloon(&self.heap, dom, gfn, order, &mut NoSecondMapping, &NeverPreempt)?;
        assert_eq!(p, PodProgress::Done, "NeverPreempt never yields");
        Ok(())
    }
}

impl core::ops::Deref for World {
    type Target = Heap<TestMemory>;
    fn deref(&self) -> &Heap<TestMemory> {
        &self.heap
    }
}

/// A world over a heap of `cfg`, on test memory of `frames` frames from 0 that keeps
/// `bytes` of each.
fn world(cfg: HeapConfig, frames: u64, bytes: usize) -> World {
    World::new(Heap::new(cfg, TestMemory::new(Mfn(0), frames, bytes)).unwrap())
}

fn heap() -> World {
    world(HeapConfig::uniform(1, FRAMES), FRAMES, FS)
}

/// Both checkers, the heap's and the PoD layer's: called after every operation.
fn ok(h: &World) {
    h.heap.check_invariants().unwrap();
    h.pods.check_invariants(&h.heap).unwrap();
}

fn create(h: &World, dom: u32, cfg: PodConfig) {
    assert_eq!(h.pods.create(&h.heap, DomId(dom), &cfg, &NeverPreempt).unwrap(), PodProgress::Done);
    ok(h);
}

/// Destroys `dom` to the end (one drain step between two checks), checking the invariants
/// at every step.
fn destroy(h: &World, dom: u32) {
    while h.pods.destroy(&h.heap, DomId(dom), &|| true).unwrap() == PodProgress::Preempted {
        ok(h);
    }
    ok(h);
}

fn stats(h: &World, dom: u32) -> PodStats {
    h.pods.stats(DomId(dom)).unwrap()
}

#[test]
fn create_fills_the_cache_with_superpages_then_small_pages() {
    let h = heap();
    create(&h, 1, PodConfig::new(4096, 1100));
    let s = stats(&h, 1);
    assert_eq!((s.cache, s.cache_superpages, s.populated, s.entries), (1100, 2, 0, 4096));
    assert_eq!(h.stats().allocated, 1100);
    assert!(!s.balanced(), "entries exceed the cache until the balloon driver runs");
    for g in [0, 511, 4095] {
        assert_eq!(h.pods.lookup(DomId(1), g).unwrap(), PodEntry::Pod { order: 9 });
    }
}

#[test]
fn a_max_that_is_not_a_multiple_of_512_ends_in_invalid_entries() {
    let h = heap();
    create(&h, 1, PodConfig::new(600, 600));
    assert_eq!(h.pods.lookup(DomId(1), 599).unwrap(), PodEntry::Pod { order: 0 });
    let m = h.touch(DomId(1), 599, true).unwrap();
    assert_eq!(m.order, 0);
    ok(&h);
}

#[test]
fn touch_populates_2m_when_the_entry_and_the_cache_have_one() {
    let h = heap();
    create(&h, 1, PodConfig::new(4096, 1024));
    let m = h.touch(DomId(1), 515, true).unwrap();
    assert_eq!((m.gfn, m.order, m.populated), (512, 9, true));
    assert_eq!(m.mfn.0 % 512, 0);
    ok(&h);
    // The data went into the frame of gfn 515 only.
    assert!(!h.memory().is_zero(Mfn(m.mfn.0 + 3), 1));
    assert!(h.memory().is_zero(Mfn(m.mfn.0), 3));
    // A second touch anywhere in the superpage populates nothing.
    let again = h.touch(DomId(1), 1000, false).unwrap();
    assert_eq!((again.mfn, again.populated), (m.mfn, false));
    assert_eq!(h.pods.lookup(DomId(1), 515).unwrap(), PodEntry::Ram { mfn: Mfn(m.mfn.0 + 3), order: 9 });
    let s = stats(&h, 1);
    assert_eq!((s.populated, s.cache, s.entries, s.superpage_mappings), (512, 512, 3584, 1));
    assert_eq!(s.counters.populated_2m, 1);
}

#[test]
fn touch_splinters_to_4k_when_the_cache_has_no_superpage() {
    let h = heap();
    create(&h, 1, PodConfig::new(2048, 100));
    let m = h.touch(DomId(1), 700, false).unwrap();
    assert_eq!((m.gfn, m.order), (700, 0));
    assert_eq!(h.pods.lookup(DomId(1), 701).unwrap(), PodEntry::Pod { order: 0 });
    assert_eq!(h.pods.lookup(DomId(1), 0).unwrap(), PodEntry::Pod { order: 9 });
    let s = stats(&h, 1);
    assert_eq!((s.populated, s.cache, s.entries, s.counters.populated_4k), (1, 99, 2047, 1));
    ok(&h);
}

#[test]
fn a_split_entry_breaks_a_cached_superpage_into_4k_pages() {
    let h = heap();
    create(&h, 1, PodConfig::new(2048, 1024));
    // Ballooning one PoD page splits slot 0's PoD entry.
    h.balloon(DomId(1), 0, 0).unwrap();
    ok(&h);
    let m = h.touch(DomId(1), 1, true).unwrap();
    assert_eq!(m.order, 0);
    let s = stats(&h, 1);
    assert_eq!((s.cache, s.cache_superpages, s.populated), (1023, 1, 1));
    ok(&h);
}

#[test]
fn eager_reclaim_takes_back_recently_populated_zero_pages() {
    let h = heap();
    create(&h, 1, PodConfig::new(2048, 64));
    for g in 0..64 {
        h.touch(DomId(1), g, g % 2 == 0).unwrap();
    }
    assert_eq!(stats(&h, 1).cache, 0);
    // The cache is empty: the most recent zero page (gfn 63) is reclaimed and reused.
    let m = h.touch(DomId(1), 1500, true).unwrap();
    assert!(m.populated);
    let s = stats(&h, 1);
    assert_eq!(s.counters.zero_pages_reclaimed, 1);
    assert_eq!(h.pods.lookup(DomId(1), 63).unwrap(), PodEntry::Pod { order: 0 });
    // Pages with data are never reclaimed.
    for g in (0..64).step_by(2) {
        assert!(matches!(h.pods.lookup(DomId(1), g).unwrap(), PodEntry::Ram { .. }));
    }
    ok(&h);
}

#[test]
fn eager_reclaim_takes_back_a_zeroed_superpage_whole() {
    let h = heap();
    create(&h, 1, PodConfig::new(2048, 512));
    h.touch(DomId(1), 0, false).unwrap();
    let m = h.touch(DomId(1), 600, true).unwrap();
    assert_eq!(m.order, 9, "the superpage of slot 0 came back whole and went to slot 1");
    let s = stats(&h, 1);
    assert_eq!(s.counters.superpages_reclaimed, 1);
    assert_eq!(h.pods.lookup(DomId(1), 0).unwrap(), PodEntry::Pod { order: 9 });
    ok(&h);
}

#[test]
fn the_emergency_sweep_finds_zero_pages_older_than_the_recent_list() {
    let h = heap();
    create(&h, 1, PodConfig::new(2048, 200));
    for g in 0..100 {
        h.touch(DomId(1), g, false).unwrap();
    }
    // The recent-population list now holds only pages with data.
    for g in 100..200 {
        h.touch(DomId(1), g, true).unwrap();
    }
    assert_eq!(stats(&h, 1).cache, 0);
    h.touch(DomId(1), 1000, true).unwrap();
    let s = stats(&h, 1);
    assert_eq!(s.counters.zero_pages_reclaimed, 100, "the sweep reclaims every zero page of the slot it visits");
    assert_eq!(s.cache, 99);
    assert_eq!(h.pods.lookup(DomId(1), 5).unwrap(), PodEntry::Pod { order: 0 });
    assert!(matches!(h.pods.lookup(DomId(1), 150).unwrap(), PodEntry::Ram { order: 0, .. }));
    ok(&h);
}

#[test]
fn out_of_pod_memory_crashes_that_guest_only() {
    let h = heap();
    create(&h, 1, PodConfig::new(2048, 32));
    create(&h, 2, PodConfig::new(1024, 1024));
    let other = h.touch(DomId(2), 7, true).unwrap();
    let before = stats(&h, 2);
    for g in 0..32 {
        h.touch(DomId(1), g, true).unwrap();
    }
    let e = h.touch(DomId(1), 32, true).unwrap_err();
    assert_eq!(e, PodError::Exhausted { dom: DomId(1), gfn: 32 });
    assert!(e.to_string().contains("crashed"));
    ok(&h);
    // The touch freed nothing (it is a vCPU's fault path): the guest keeps its pages,
    // crashed, until destroy drains them; the other guest is as it was.
    assert_eq!(h.stats().allocated, 1024 + 32);
    assert_eq!(stats(&h, 2), before);
    assert_eq!(h.memory().foreign_frame(DomId(2), Mfn(other.mfn.0 + 7), 1), None);
    assert!(!h.memory().is_zero(Mfn(other.mfn.0 + 7), 1));
    let s = stats(&h, 1);
    assert_eq!((s.crashed, s.populated, s.cache, s.counters.crashes), (Some(32), 32, 0, 1));
    // Later operations say it crashed; destroy drains it and keeps the count.
    assert_eq!(h.touch(DomId(1), 0, false), Err(PodError::Crashed { dom: DomId(1), gfn: 32 }));
    assert!(matches!(h.balloon(DomId(1), 0, 0), Err(PodError::Crashed { .. })));
    assert!(matches!(h.pods.set_target(&h.heap, DomId(1), 0, &NeverPreempt), Err(PodError::Crashed { .. })));
    destroy(&h, 1);
    // Its memory is back in the heap (dirty).
    assert_eq!(h.stats().allocated, 1024);
    assert_eq!(h.stats().free_dirty, 32);
    assert_eq!(h.pods.totals().counters.crashes, 1);
    assert_eq!(h.pods.domains(), vec![DomId(2)]);
    ok(&h);
}

/// The scene of the reclaim tests: guest 1 under `cfg`, its gfn `gfn` touched (`data`:
/// written to), then gfn 17 (inside the same first superpage) ballooned out. Returns the
/// heap, the touch's mapping and the guest's stats after the balloon.
fn balloon_17_after_a_touch(cfg: PodConfig, gfn: u64, data: bool) -> (World, PodMapping, PodStats) {
    assert!(gfn < 512 && gfn != 17, "the touch is in the first superpage, not at gfn 17");
    let h = heap();
    create(&h, 1, cfg);
    let m = h.touch(DomId(1), gfn, data).unwrap();
    h.balloon(DomId(1), 17, 0).unwrap();
    let s = stats(&h, 1);
    (h, m, s)
}

#[test]
fn balloon_inside_a_zeroed_superpage_reclaims_it_whole() {
    let (h, _, s) = balloon_17_after_a_touch(PodConfig::new(2048, 1024), 0, false);
    assert_eq!(s.counters.superpages_reclaimed, 1);
    assert_eq!(s.counters.superpages_shattered, 0);
    assert_eq!((s.populated, s.cache, s.cache_superpages, s.entries), (0, 1024, 2, 2047));
    assert_eq!(h.pods.lookup(DomId(1), 17).unwrap(), PodEntry::Invalid);
    assert_eq!(h.pods.lookup(DomId(1), 16).unwrap(), PodEntry::Pod { order: 0 });
    assert_eq!(h.touch(DomId(1), 17, false), Err(PodError::NotMapped { dom: DomId(1), gfn: 17 }));
    ok(&h);
}

#[test]
fn balloon_with_4k_only_reclaim_shatters_the_superpage() {
    let (h, m, s) = balloon_17_after_a_touch(PodConfig::new(2048, 1024).no_superpage_reclaim(), 0, false);
    assert_eq!((s.counters.superpages_reclaimed, s.counters.superpages_shattered), (0, 1));
    // The zero page went to the (short) cache; its neighbours stay mapped at 4 KiB.
    assert_eq!(s.counters.zero_pages_reclaimed, 1);
    assert_eq!((s.populated, s.cache, s.superpage_mappings), (511, 513, 0));
    assert_eq!(h.pods.lookup(DomId(1), 16).unwrap(), PodEntry::Ram { mfn: Mfn(m.mfn.0 + 16), order: 0 });
    ok(&h);
}

#[test]
fn a_superpage_with_data_is_shattered_even_with_superpage_reclaim() {
    let (h, _, s) = balloon_17_after_a_touch(PodConfig::new(2048, 1024), 3, true);
    assert_eq!((s.counters.superpages_reclaimed, s.counters.superpages_shattered), (0, 1));
    assert!(matches!(h.pods.lookup(DomId(1), 3).unwrap(), PodEntry::Ram { order: 0, .. }));
    ok(&h);
}

#[test]
fn ballooning_to_the_target_balances_the_guest_and_frees_the_excess() {
    let h = heap();
    create(&h, 1, PodConfig::new(4096, 2048));
    for g in (0..1024).step_by(64) {
        h.touch(DomId(1), g, true).unwrap();
    }
    let s = stats(&h, 1);
    assert_eq!((s.populated, s.cache, s.entries), (1024, 1024, 3072));
    // The balloon driver gives back max - target frames: every entry is backed.
    h.balloon(DomId(1), 2048, 11).unwrap();
    let s = stats(&h, 1);
    assert_eq!((s.populated, s.cache, s.entries), (1024, 1024, 1024));
    assert!(s.balanced());
    ok(&h);
    // A 2 MiB mapping with data goes back to the heap whole; the cache stays.
    h.balloon(DomId(1), 0, 9).unwrap();
    assert_eq!(h.stats().free_dirty, 512);
    // Once no entry is left, the cache has nothing to back and goes back too.
    h.balloon(DomId(1), 1024, 10).unwrap();
    let s = stats(&h, 1);
    assert_eq!((s.populated, s.entries, s.cache), (512, 0, 0));
    assert_eq!(h.stats().allocated, 512);
    ok(&h);
}

#[test]
fn set_target_grows_and_shrinks_the_cache() {
    let h = heap();
    create(&h, 1, PodConfig::new(4096, 100));
    assert_eq!(h.pods.set_target(&h.heap, DomId(1), 1700, &NeverPreempt).unwrap(), PodProgress::Done);
    let s = stats(&h, 1);
    assert_eq!((s.target, s.cache), (1700, 1700));
    ok(&h);
    h.touch(DomId(1), 0, true).unwrap();
    assert_eq!(h.pods.set_target(&h.heap, DomId(1), 600, &NeverPreempt).unwrap(), PodProgress::Done);
    let s = stats(&h, 1);
    assert_eq!((s.target, s.populated, s.cache), (600, 512, 88));
    // Below populated: the cache empties, populated pages stay.
    h.pods.set_target(&h.heap, DomId(1), 10, &NeverPreempt).unwrap();
    let s = stats(&h, 1);
    assert_eq!((s.target, s.populated, s.cache), (10, 512, 0));
    assert_eq!(h.stats().allocated, 512);
    ok(&h);
}

#[test]
fn set_target_is_preemptible_and_keeps_its_progress() {
    let h = world(HeapConfig::uniform(1, FRAMES).with_initially_dirty(true), FRAMES, FS);
    let yield_always = || true;
    let mut calls = 0;
    let mut r = h.pods.create(&h.heap, DomId(1), &PodConfig::new(4096, 2000), &yield_always).unwrap();
    let mut cache = stats(&h, 1).cache;
    while r == PodProgress::Preempted {
        calls += 1;
        assert!(calls < 1000, "no progress");
        ok(&h);
        r = h.pods.set_target(&h.heap, DomId(1), 2000, &yield_always).unwrap();
        let now = stats(&h, 1).cache;
        assert!(now >= cache, "a preempted step lost progress");
        cache = now;
    }
    assert!(calls >= 4, "filling 2000 dirty frames with one scrub batch a step needs several calls");
    let s = stats(&h, 1);
    assert_eq!((s.target, s.cache), (2000, 2000));
    ok(&h);
    // Shrinking: one release of at most a superpage between checks.
    let mut calls = 0;
    while h.pods.set_target(&h.heap, DomId(1), 0, &yield_always).unwrap() == PodProgress::Preempted {
        calls += 1;
        ok(&h);
    }
    assert!(calls >= 3);
    assert_eq!(stats(&h, 1).cache, 0);
    ok(&h);
}

#[test]
fn pages_reach_the_guest_zero_and_never_leak_another_guests_bytes() {
    let h = heap();
    create(&h, 1, PodConfig::new(2048, 2048));
    for g in 0..2048 {
        h.touch(DomId(1), g, true).unwrap();
    }
    destroy(&h, 1);
    ok(&h);
    assert!(h.stats().free_dirty >= 2048);
    create(&h, 2, PodConfig::new(8192, 8192));
    for g in (0..8192).step_by(7) {
        let m = h.touch(DomId(2), g, false).unwrap();
        let mfn = Mfn(m.mfn.0 + (g - m.gfn));
        assert!(h.memory().is_zero(mfn, 1), "gfn {g} populated with a non-zero frame");
        assert_eq!(h.memory().foreign_frame(DomId(2), mfn, 1), None);
    }
    ok(&h);
}

#[test]
fn destroy_returns_every_frame_and_keeps_the_counters() {
    let h = heap();
    create(&h, 1, PodConfig::new(2048, 1024));
    h.touch(DomId(1), 0, false).unwrap();
    h.touch(DomId(1), 1, false).unwrap();
    h.balloon(DomId(1), 4, 0).unwrap();
    destroy(&h, 1);
    assert_eq!(h.stats().allocated, 0);
    assert_eq!(h.pods.totals().counters.superpages_reclaimed, 1);
    assert_eq!(h.pods.totals().guests, 0);
    assert_eq!(h.pods.stats(DomId(1)), Err(PodError::UnknownDomain { dom: DomId(1) }));
    ok(&h);
}

/// Everything observable: the heap's chunks, counters and claims, and the guest's counts
/// and every p2m entry.
fn state(h: &World, dom: u32) -> (common::Snapshot, Option<PodStats>, Vec<Option<PodEntry>>) {
    let s = h.pods.stats(DomId(dom)).ok();
    let entries = (0..s.map_or(0, |s| s.max_pages)).map(|g| h.pods.lookup(DomId(dom), g).ok()).collect();
    (snapshot(&h.heap, &[dom]), s, entries)
}

macro_rules! refused {
    ($h:expr, $f:expr, $pat:pat) => {{
        let before = state(&$h, 1);
        let r = $f;
        assert!(matches!(r, Err($pat)), "got {r:?}");
        assert!(!r.unwrap_err().to_string().is_empty());
        assert_eq!(state(&$h, 1), before, "a refused operation changed the heap or the guest");
        ok(&$h);
    }};
}

#[test]
fn misuse_is_refused_and_changes_nothing() {
    let h = heap();
    let never = &NeverPreempt;
    refused!(h, h.touch(DomId(1), 0, false), PodError::UnknownDomain { .. });
    refused!(h, h.balloon(DomId(1), 0, 0), PodError::UnknownDomain { .. });
    refused!(h, h.pods.set_target(&h.heap, DomId(1), 0, never), PodError::UnknownDomain { .. });
    refused!(h, h.pods.destroy(&h.heap, DomId(1), &NeverPreempt), PodError::UnknownDomain { .. });
    refused!(h, h.pods.create(&h.heap, DomId(1), &PodConfig::new(0, 0), never), PodError::BadMaxPages { .. });
    refused!(
        h,
        h.pods.create(&h.heap, DomId(1), &PodConfig::new(FRAMES * POD_MAX_PAGES_PER_FRAME + 1, 0), never),
        PodError::BadMaxPages { .. }
    );
    refused!(h, h.pods.create(&h.heap, DomId(1), &PodConfig::new(100, 101), never), PodError::TargetTooLarge { .. });
    refused!(
        h,
        h.pods.create(&h.heap, DomId(1), &PodConfig::new(100, 10).on(3), never),
        PodError::Heap(HeapError::Range(RangeError::NoSuchNode { .. }))
    );
    refused!(
        h,
        h.pods.create(&h.heap, DomId(1), &PodConfig::new(FRAMES * 2, FRAMES + 1), never),
        PodError::OutOfMemory { .. }
    );
    // Claims by others count against the cache.
    h.claim_set(DomId(9), &[Claim { target: ClaimTarget::Global, frames: FRAMES - 10 }]).unwrap();
    refused!(
        h,
        h.pods.create(&h.heap, DomId(1), &PodConfig::new(100, 11), never),
        PodError::Heap(HeapError::Claim(ClaimError::ClaimedByOthers { .. }))
    );
    h.claim_cancel(DomId(9));

    create(&h, 1, PodConfig::new(2048, 1024));
    h.touch(DomId(1), 0, true).unwrap();
    h.balloon(DomId(1), 600, 0).unwrap();
    ok(&h);
    refused!(h, h.pods.create(&h.heap, DomId(1), &PodConfig::new(100, 10), never), PodError::DomainExists { .. });
    refused!(h, h.touch(DomId(1), 2048, false), PodError::GfnOutOfRange { .. });
    refused!(h, h.touch(DomId(1), u64::MAX, true), PodError::GfnOutOfRange { .. });
    refused!(h, h.touch(DomId(1), 600, true), PodError::NotMapped { .. });
    refused!(h, h.balloon(DomId(1), 1, 1), PodError::Unaligned { .. });
    refused!(h, h.balloon(DomId(1), 1536, 10), PodError::Unaligned { .. });
    refused!(h, h.balloon(DomId(1), 2048, 0), PodError::GfnOutOfRange { .. });
    refused!(h, h.balloon(DomId(1), 0, 12), PodError::GfnOutOfRange { .. });
    refused!(h, h.balloon(DomId(1), 0, 19), PodError::Heap(HeapError::Range(RangeError::InvalidOrder { .. })));
    refused!(h, h.balloon(DomId(1), u64::MAX, 0), PodError::GfnOutOfRange { .. });
    refused!(h, h.pods.set_target(&h.heap, DomId(1), 2049, never), PodError::TargetTooLarge { .. });
    let free = h.stats().free_clean + h.stats().free_dirty;
    h.claim_set(DomId(9), &[Claim { target: ClaimTarget::Global, frames: free - 100 }]).unwrap();
    refused!(
        h,
        h.pods.set_target(&h.heap, DomId(1), 2048, never),
        PodError::Heap(HeapError::Claim(ClaimError::ClaimedByOthers { .. }))
    );
    h.claim_cancel(DomId(9));
    refused!(h, h.pods.lookup(DomId(1), 4096), PodError::GfnOutOfRange { .. });
}

#[test]
fn random_operations_on_three_guests_keep_every_invariant() {
    let mut seen = PodCounters::default();
    for seed in 1..6u64 {
        let h = heap();
        // Deterministic, so the random walk is the same on every run.
        let mut rng = TestRng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut crashes = 0;
        for step in 0..1500 {
            let dom = 1 + rng.below(3) as u32;
            let max = 1024 + 512 * (dom as u64);
            let r = match rng.below(20) {
                0 => h
                    .pods
                    .create(
                        &h.heap,
                        DomId(dom),
                        &PodConfig { superpage_reclaim: dom != 2, ..PodConfig::new(max, max / 2) },
                        &NeverPreempt,
                    )
                    .map(|_| ()),
                1 => h.pods.destroy(&h.heap, DomId(dom), &|| rng_bit(step)).map(|_| ()),
                2 => h.pods.set_target(&h.heap, DomId(dom), rng.below(max + 1), &|| rng_bit(step)).map(|_| ()),
                3..=5 => {
                    let order = [0u8, 0, 0, 3, 9][rng.below(5) as usize];
                    let g = rng.below(max) & !((1u64 << order) - 1);
                    h.balloon(DomId(dom), g, order)
                }
                6 => h.scrub_step(0, 256, &NeverPreempt).map(|_| ()).map_err(PodError::from),
                _ => h.touch(DomId(dom), rng.below(max), rng.below(3) == 0).map(|_| ()),
            };
            if let Err(PodError::Exhausted { .. }) = r {
                crashes += 1;
            }
            if let Err(e) = h.check_invariants() {
                panic!("seed {seed} step {step}: {e} (last result {r:?})");
            }
            if let Err(e) = h.pods.check_invariants(&h.heap) {
                panic!("seed {seed} step {step}: {e} (last result {r:?})");
            }
            let t = h.pods.totals();
            assert_eq!(h.stats().allocated, t.populated + t.cache + t.dying, "seed {seed} step {step}");
        }
        let c = h.pods.totals().counters;
        assert_eq!(c.crashes, crashes);
        seen.add(&c);
    }
    // The walk reached every path it is meant to check.
    for (what, n) in [
        ("2 MiB populations", seen.populated_2m),
        ("4 KiB populations", seen.populated_4k),
        ("superpage reclaims", seen.superpages_reclaimed),
        ("4 KiB reclaims", seen.zero_pages_reclaimed),
        ("shattered superpages", seen.superpages_shattered),
        ("crashes", seen.crashes),
    ] {
        assert!(n > 0, "the random walk never saw {what}: {seen:?}");
    }
}

fn rng_bit(step: usize) -> bool {
    step % 3 == 0
}

#[test]
fn the_sweep_passes_by_superpages_it_found_holding_data() {
    // 24 superpages behind a 48-superpage guest; slots 0, 1 and 16..24 are zeroed, 2..16
    // hold data. Touching slots 24..32 with data recycles the zeroed 16..24 through eager
    // reclaim, which finds each new slot holding data. Slot 32's touch then needs a sweep
    // that must pass 8 + 14 data-holding mappings to reach slot 1: more than its 16
    // superpage checks, unless it skips those already found holding data.
    let frames = 16384;
    let h = world(HeapConfig::uniform(1, frames), frames, FS);
    create(&h, 1, PodConfig::new(48 * 512, 24 * 512));
    let data_slot = |s: u64| (2..16).contains(&s) || (24..48).contains(&s);
    let touch_slot = |s: u64| -> Result<PodMapping, PodError> {
        let first = h.touch(DomId(1), s * 512, data_slot(s))?;
        for g in s * 512 + 1..(s + 1) * 512 {
            h.touch(DomId(1), g, false)?;
        }
        Ok(first)
    };
    for s in 0..24 {
        touch_slot(s).unwrap();
    }
    assert_eq!(stats(&h, 1).cache, 0);
    for s in 24..34 {
        let m = touch_slot(s).unwrap_or_else(|e| panic!("slot {s}: {e}"));
        assert_eq!(m.order, 9, "slot {s} got a whole superpage back from a zeroed one");
        ok(&h);
    }
    assert_eq!(stats(&h, 1).counters.superpages_reclaimed, 10);
    // Nothing zeroed is left: the next touch crashes the guest.
    assert!(matches!(touch_slot(34), Err(PodError::Exhausted { .. })));
    ok(&h);
}

#[test]
fn a_cache_only_the_movable_zone_could_hold_is_refused_up_front() {
    // PoD pages are unmovable: with Normal zones of 307 frames a node, a target of 1092
    // frames cannot be met though 8192 frames are free, and the refusal must come before
    // any allocation (found by the fuzzer: the pages taken and given back were left dirty).
    let frames = 8192;
    let h = world(HeapConfig::uniform(2, frames / 2).with_movable_from(307), frames, FS);
    h.alloc(&AllocRequest::new(4, DomId(3)).noscrub()).unwrap();
    let before = snapshot(&h.heap, &[1]);
    let r = h.pods.create(&h.heap, DomId(1), &PodConfig::new(4096, 1092).on(0), &NeverPreempt);
    assert!(matches!(r, Err(PodError::OutOfMemory { .. })), "{r:?}");
    assert_eq!(snapshot(&h.heap, &[1]), before);
    assert_eq!(h.pods.stats(DomId(1)), Err(PodError::UnknownDomain { dom: DomId(1) }));
    // What the Normal zones can hold is granted.
    create(&h, 1, PodConfig::new(4096, 500));
    assert_eq!(stats(&h, 1).cache, 500);
}

#[test]
fn a_cache_others_claims_keep_out_of_the_normal_zones_is_refused_up_front() {
    // Found by the fuzzer: node 0's Normal zone is free but claimed by others, node 1's
    // Normal zone alone is too small. Each node admitted the growth on its own (its free
    // frames, Movable included, exceed the claims), so 403 frames were taken and given
    // back dirty before the cache ran out. What the claims leave, node by node, is
    // counted now before anything is allocated.
    let frames = 8192;
    let h = world(HeapConfig::uniform(2, frames / 2).with_movable_from(307), frames, FS);
    h.claim_set(DomId(7), &[Claim { target: ClaimTarget::Node(0), frames: 4000 }]).unwrap();
    let room: u64 = (0..2).map(|n| h.claims_room(DomId(1), n).unwrap()).sum();
    assert_eq!(room, 96 + 4096, "node 0 leaves 96 frames to others, node 1 all of its own");
    let before = snapshot(&h.heap, &[1, 7]);
    let r = h.pods.create(&h.heap, DomId(1), &PodConfig::new(4096, 500).on(0), &NeverPreempt);
    assert!(r.as_ref().is_err_and(PodError::is_out_of_memory), "{r:?}");
    assert_eq!(snapshot(&h.heap, &[1, 7]), before, "a refused create changes nothing");
    ok(&h);
    // What the claims and the Normal zones leave together is granted: 96 + 307 frames.
    create(&h, 1, PodConfig::new(4096, 403));
    assert_eq!(stats(&h, 1).cache, 403);
}

#[test]
fn frames_the_pod_layer_holds_cannot_be_freed_or_pinned_behind_its_back() {
    let h = heap();
    create(&h, 1, PodConfig::new(1024, 1024));
    // A populated page and a cached one: both are the PoD layer's alone.
    let m = h.touch(DomId(1), 3, false).unwrap();
    let populated = Mfn(m.mfn.0 + (3 - m.gfn));
    let before = snapshot(&h.heap, &[1]);
    for (mfn, order) in [(populated, 0), (m.mfn, m.order)] {
        let e = h.free(mfn, order, DomId(1)).unwrap_err();
        assert!(matches!(e, HeapError::Free(FreeError::Sealed { owner: DomId(1), .. })), "{e}");
        let e = h.pin(mfn, order, DomId(1), &MetadataMigrator, &NeverPreempt).unwrap_err();
        assert!(matches!(e, HeapError::Free(FreeError::Sealed { .. })), "{e}");
        assert!(matches!(h.pin_in_place(mfn, order, DomId(1)), Err(HeapError::Free(FreeError::Sealed { .. }))));
    }
    assert_eq!(snapshot(&h.heap, &[1]), before, "a refused free or pin changes nothing");
    ok(&h);
    // The layer itself still gives everything back.
    destroy(&h, 1);
    assert_eq!(h.stats().allocated, 0);
    ok(&h);
}

#[test]
fn a_guests_own_claim_is_its_own_and_others_claims_refuse_it_through_the_claims_gate() {
    let h = heap();
    let never = &NeverPreempt;
    h.claim_set(DomId(1), &[Claim { target: ClaimTarget::Global, frames: FRAMES - 100 }]).unwrap();
    // Dom 2 may have only the 100 frames dom 1 left unclaimed: the heap's own gate says so.
    let before = state(&h, 2);
    let r = h.pods.create(&h.heap, DomId(2), &PodConfig::new(1024, 101), never);
    assert!(matches!(r, Err(PodError::Heap(HeapError::Claim(ClaimError::ClaimedByOthers { .. })))), "{r:?}");
    assert!(r.unwrap_err().is_out_of_memory());
    assert_eq!(state(&h, 2), before);
    // Dom 1 fills its cache from its own claim, which its allocations retire.
    create(&h, 1, PodConfig::new(4096, 4096));
    assert_eq!(h.claims_of(DomId(1)), vec![Claim { target: ClaimTarget::Global, frames: FRAMES - 100 - 4096 }]);
    create(&h, 2, PodConfig::new(1024, 100));
    destroy(&h, 1);
    destroy(&h, 2);
    ok(&h);
}

/// A `Preempt` that counts, at every check, the frames the heap got back and the p2m slots
/// destroy drains walked since the previous check (or since it was made), and keeps the
/// largest of each: the work of the longest section, measured by counting.
struct CountingPreempt<'a> {
    h: &'a World,
    last: core::cell::Cell<(u64, u64)>,
    max: core::cell::Cell<(u64, u64)>,
}

impl<'a> CountingPreempt<'a> {
    fn new(h: &'a World) -> Self {
        let c = CountingPreempt { h, last: Default::default(), max: Default::default() };
        c.last.set(c.now());
        c
    }
    /// (frames allocated, slots drained) now.
    fn now(&self) -> (u64, u64) {
        (self.h.heap.stats().allocated, self.h.pods.walked_slots())
    }
    /// Closes the section that ends here (a check, or the operation's return).
    fn section(&self) {
        let ((a0, s0), (a1, s1)) = (self.last.get(), self.now());
        assert!(a1 <= a0, "a drain only frees");
        let (f, s) = self.max.get();
        self.max.set((f.max(a0 - a1), s.max(s1 - s0)));
        self.last.set((a1, s1));
    }
}

impl Preempt for CountingPreempt<'_> {
    fn check(&self) -> bool {
        self.section();
        true
    }
}

/// Drives `dom`'s destroy to the end with a counting preempt, one section a call; returns
/// the most frames freed and slots walked by one section, and the totals.
fn counted_destroy(h: &World, dom: u32) -> ((u64, u64), (u64, u64)) {
    let p = CountingPreempt::new(h);
    let start = p.now();
    loop {
        let r = h.pods.destroy(&h.heap, DomId(dom), &p).unwrap();
        p.section();
        h.pods.check_invariants(&h.heap).unwrap();
        if r == PodProgress::Done {
            break;
        }
        // Dead at once: every later call on it is refused.
        assert!(matches!(h.touch(DomId(dom), 0, false), Err(PodError::UnknownDomain { .. })));
        assert!(matches!(
            h.pods.create(&h.heap, DomId(dom), &PodConfig::new(512, 0), &NeverPreempt),
            Err(PodError::DomainExists { .. })
        ));
        assert_eq!(h.heap.stats().allocated, h.pods.totals().dying);
    }
    let end = p.now();
    let (max, all) = (p.max.get(), (start.0 - end.0, end.1 - start.1));
    println!(
        "{dom:?}: longest section freed {} frames, walked {} slots; {} frames, {} slots in all",
        max.0, max.1, all.0, all.1
    );
    (max, all)
}

/// A heap big enough for a guest whose one-shot destroy would pass both bounds.
fn big() -> World {
    const BIG: u64 = 32768;
    world(HeapConfig::uniform(1, BIG), BIG, 8)
}

#[test]
fn destroy_frees_and_walks_at_most_the_named_bounds_between_two_preemption_points() {
    let h = big();
    // 4096 slots of p2m, 12000 frames behind them: mixed 2 MiB and 4 KiB mappings and cache.
    let max = 4096 * 512;
    create(&h, 1, PodConfig::new(max, 12000));
    for g in (0..max).step_by(512 * 499) {
        h.touch(DomId(1), g, true).unwrap();
    }
    // Ballooning 4 KiB out of a superpage that holds data shatters it into 4 KiB mappings.
    h.balloon(DomId(1), 7, 0).unwrap();
    ok(&h);
    let s = stats(&h, 1);
    assert!(s.superpage_mappings > 0 && s.counters.superpages_shattered == 1 && s.cache > 0, "{s:?}");
    let held = h.heap.stats().allocated;
    let ((frames, slots), (all_frames, all_slots)) = counted_destroy(&h, 1);
    // The one-shot destroy freed and walked all of it in one section: it would fail below.
    assert_eq!(all_frames, held);
    assert_eq!(all_slots, 4096);
    assert!(all_frames > POD_DRAIN_FRAMES && all_slots > POD_DRAIN_SLOTS);
    assert!(frames <= POD_DRAIN_FRAMES, "{frames} frames freed in one section");
    assert!(slots <= POD_DRAIN_SLOTS, "{slots} slots walked in one section");
    assert_eq!((h.heap.stats().allocated, h.pods.totals().dying, h.pods.frames()), (0, 0, 0));
    ok(&h);
}

#[test]
fn a_crash_frees_nothing_in_the_touch_and_its_drain_is_bounded() {
    let h = big();
    let max = 4096 * 512;
    create(&h, 1, PodConfig::new(max, 8 * 512 + 2000));
    // Every page touched holds data: nothing to reclaim, so the guest crashes.
    let mut crashed = None;
    for g in (0..max).step_by(512) {
        match h.touch(DomId(1), g, true) {
            Ok(_) => {}
            Err(e) => {
                crashed = Some((g, e));
                break;
            }
        }
    }
    let (g, e) = crashed.expect("the guest ran out of PoD memory");
    assert_eq!(e, PodError::Exhausted { dom: DomId(1), gfn: g });
    ok(&h);
    // The touch freed nothing: the crashed guest still holds its frames, counted.
    let held = 8 * 512 + 2000;
    assert_eq!((h.heap.stats().allocated, h.pods.frames()), (held, held));
    assert_eq!(stats(&h, 1).crashed, Some(g));
    let ((frames, slots), (all_frames, all_slots)) = counted_destroy(&h, 1);
    assert_eq!((all_frames, all_slots), (held, 4096));
    assert!(all_frames > POD_DRAIN_FRAMES && all_slots > POD_DRAIN_SLOTS);
    assert!(frames <= POD_DRAIN_FRAMES, "{frames} frames freed in one section");
    assert!(slots <= POD_DRAIN_SLOTS, "{slots} slots walked in one section");
    assert_eq!(h.pods.totals().counters.crashes, 1);
    assert_eq!(h.heap.stats().allocated, 0);
}
