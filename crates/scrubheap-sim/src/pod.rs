//! The `pod-balloon` scenario: populate-on-demand guests that touch and zero all their
//! memory at boot (as Windows does), then balloon down to their target in 4 KiB pages.
//! It runs twice on the same seed, once with 2 MiB reclaim on decrease reservation (a
//! zeroed superpage is reclaimed whole) and once with 4 KiB-only reclaim (the superpage is
//! shattered), and counts what each leaves: superpages kept, pages reclaimed, guests
//! crashed, and 2 MiB blocks the host can still allocate.
//!
//! It drives the real heap over [`SimMemory`] (one "holds only zeroes" bit per frame, so
//! zero checks see which pages hold data) and models no time: the comparison is in pages,
//! not seconds. Same preset and seed, same output.
//!
//! ```
//! use scrubheap_sim::{pod, preset::HostPreset};
//! let rep = pod::run(&HostPreset::tiny(), 1, &pod::PodBalloonParams { guests: 4, ..Default::default() }).unwrap();
//! let (sp, k4) = (&rep.results[0], &rep.results[1]);
//! assert!(sp.superpages_kept > k4.superpages_kept);
//! assert_eq!(sp.invariant_violations + k4.invariant_violations, 0);
//! ```

use crate::memory::SimMemory;
use crate::preset::HostPreset;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use scrubheap::{AllocRequest, DomId, Heap, HeapConfig, Mfn, NeverPreempt};
use scrubheap_pod::{NoSecondMapping, PodConfig, PodError, PodMapping, PodProgress, PodTouch, Pods};
use serde::Serialize;

/// What the scenario does (the defaults are what `scrubheap sim --scenario pod-balloon` runs).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PodBalloonParams {
    /// PoD guests.
    pub guests: usize,
    /// The share of the host's memory the guests' targets add up to.
    pub host_share: f64,
    /// Each guest's maximum as a multiple of its target.
    pub max_over_target: u64,
    /// The share of a guest's maximum it writes data into at boot (runs of 64 to 1024
    /// pages at random places: kernel, drivers, caches); the rest it zeroes.
    pub data_share: f64,
    /// After ballooning, each guest writes data into this share of its target more pages.
    pub work_share: f64,
    /// Guests (the last ones) that write data into more pages than their target: they
    /// must crash, alone.
    pub greedy_guests: usize,
}

impl Default for PodBalloonParams {
    fn default() -> Self {
        PodBalloonParams {
            guests: 16,
            host_share: 0.75,
            max_over_target: 2,
            data_share: 0.10,
            work_share: 0.25,
            greedy_guests: 1,
        }
    }
}

/// One reclaim mode's outcome.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PodBalloonResult {
    /// `2m-reclaim` or `4k-only`.
    pub mode: String,
    /// 2 MiB pages the guests still hold whole at the end (2 MiB mappings + cached superpages).
    pub superpages_kept: u64,
    /// Of those, 2 MiB mappings in the guests' p2ms.
    pub superpage_mappings: u64,
    /// 2 MiB mappings shattered by decrease reservations.
    pub superpages_shattered: u64,
    /// Zeroed 2 MiB mappings reclaimed whole (balloon, eager reclaim and sweeps).
    pub superpages_reclaimed: u64,
    /// Zeroed 4 KiB pages reclaimed.
    pub zero_pages_reclaimed: u64,
    /// Frames reclaimed by zero checks in all (512 per superpage).
    pub frames_reclaimed: u64,
    /// Guests crashed out of PoD memory.
    pub crashes: u64,
    /// 2 MiB blocks the host could allocate at the end (free memory in whole superpages).
    pub host_free_superpages: u64,
    /// Frames the guests hold at the end (populated + cache).
    pub guest_frames: u64,
    /// `check_invariants()` failures (heap and PoD): bugs.
    pub invariant_violations: u64,
}

/// The scenario's report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PodBalloonReport {
    /// `pod-balloon`.
    pub scenario: String,
    /// The host preset.
    pub preset: String,
    /// The seed.
    pub seed: u64,
    /// What the guests did.
    pub params: PodBalloonParams,
    /// Frames per guest: maximum and target.
    pub max_pages: u64,
    /// Frames behind each guest.
    pub target: u64,
    /// One result per mode: 2 MiB reclaim first, 4 KiB-only second.
    pub results: Vec<PodBalloonResult>,
    /// What a reader needs to know.
    pub notes: Vec<String>,
}

/// Runs both modes.
pub fn run(host: &HostPreset, seed: u64, p: &PodBalloonParams) -> Result<PodBalloonReport, String> {
    host.validate()?;
    if host.frame_size != 4096 {
        return Err(format!(
            "pod-balloon needs 4 KiB frames (a superpage is 512 frames): preset {} has {} KiB frames; use tiny or xen-2017",
            host.name,
            host.frame_size / 1024
        ));
    }
    if p.guests == 0 || p.greedy_guests > p.guests || !(0.0..=1.0).contains(&p.host_share) {
        return Err("pod-balloon: need at least one guest, greedy guests among them, a host share in 0..1".into());
    }
    let frames = host.frames_per_node() * host.nodes as u64;
    let target = ((frames as f64 * p.host_share) as u64 / p.guests as u64) & !511;
    if target == 0 {
        return Err(format!("pod-balloon: {} guests do not fit in {} frames", p.guests, frames));
    }
    let max = target * p.max_over_target.max(1);
    let results = ["2m-reclaim", "4k-only"].iter().map(|m| run_mode(host, seed, p, max, target, m)).collect();
    Ok(PodBalloonReport {
        scenario: "pod-balloon".into(),
        preset: host.name.clone(),
        seed,
        params: p.clone(),
        max_pages: max,
        target,
        results,
        notes: vec![
            format!(
                "{} guests of {} MiB max, {} MiB target ({} over-committing); boot touches every page ({}% with data in runs), balloon gives back max - target in 4 KiB pages of free memory at random, then {}% of the target more is written",
                p.guests,
                max >> 8,
                target >> 8,
                p.greedy_guests,
                (p.data_share * 100.0) as u64,
                (p.work_share * 100.0) as u64
            ),
            "pages, not time: no bandwidth model; both modes run the same seed".into(),
        ],
    })
}

fn run_mode(host: &HostPreset, seed: u64, p: &PodBalloonParams, max: u64, target: u64, mode: &str) -> PodBalloonResult {
    let fpn = host.frames_per_node();
    let total = fpn * host.nodes as u64;
    let heap = Heap::new(HeapConfig::uniform(host.nodes, fpn), SimMemory::new(Mfn(0), total, false))
        .expect("a validated preset builds a heap");
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x90d_ba11);
    let pods = Pods::new();
    let mut out = PodBalloonResult { mode: mode.into(), ..Default::default() };
    let check = |heap: &Heap<SimMemory>, out: &mut PodBalloonResult| {
        heap.memory().drain_log();
        if heap.check_invariants().is_err() || pods.check_invariants(heap).is_err() {
            out.invariant_violations += 1;
        }
    };
    let doms: Vec<DomId> = (0..p.guests).map(|i| DomId(i as u32 + 1)).collect();
    // Data runs: the same for both modes, since the generator restarts from the seed.
    let data = data_runs(&mut rng, p, max);
    for (i, &dom) in doms.iter().enumerate() {
        let mut cfg = PodConfig::new(max, target).on(i % host.nodes);
        cfg.superpage_reclaim = mode == "2m-reclaim";
        pods.create(&heap, dom, &cfg, &NeverPreempt).expect("the guests' targets fit the host");
    }
    boot(&pods, &heap, &doms, &data, max);
    check(&heap, &mut out);
    balloon_out(&pods, &heap, &doms, &data, &mut rng, max - target);
    check(&heap, &mut out);
    work(&pods, &heap, &doms, &mut rng, (p.work_share * target as f64) as u64, max);
    check(&heap, &mut out);
    let t = pods.totals();
    out.superpage_mappings = t.superpage_mappings;
    out.superpages_kept = t.superpage_mappings + t.cache_superpages;
    out.superpages_shattered = t.counters.superpages_shattered;
    out.superpages_reclaimed = t.counters.superpages_reclaimed;
    out.zero_pages_reclaimed = t.counters.zero_pages_reclaimed;
    out.frames_reclaimed = t.counters.frames_reclaimed();
    out.crashes = t.counters.crashes;
    out.guest_frames = t.populated + t.cache;
    out.host_free_superpages = free_superpages(&heap);
    check(&heap, &mut out);
    out
}

/// Whether `dom` is alive (not crashed out of PoD memory).
fn alive(pods: &Pods, dom: DomId) -> bool {
    pods.stats(dom).is_ok_and(|s| s.crashed.is_none())
}

/// Boot: every guest touches its `max` pages in order (writing data where `data` says),
/// the guests interleaved a 2 MiB at a time.
fn boot(pods: &Pods, heap: &Heap<SimMemory>, doms: &[DomId], data: &[Vec<bool>], max: u64) {
    assert_eq!(doms.len(), data.len(), "one data map per guest");
    for base in (0..max).step_by(512) {
        for (i, &dom) in doms.iter().enumerate() {
            for g in base..base + 512 {
                if !alive(pods, dom) {
                    break;
                }
                let _ = touch(pods, heap, dom, g, data[i][g as usize]);
            }
        }
        heap.memory().drain_log();
    }
}

/// Balloon: each guest gives back `pages` of its free (zeroed) pages, 4 KiB at a time,
/// chosen at random.
fn balloon_out(
    pods: &Pods,
    heap: &Heap<SimMemory>,
    doms: &[DomId],
    data: &[Vec<bool>],
    rng: &mut ChaCha8Rng,
    pages: u64,
) {
    assert_eq!(doms.len(), data.len(), "one data map per guest");
    for (i, &dom) in doms.iter().enumerate() {
        let mut free: Vec<u64> = (0..data[i].len() as u64).filter(|&g| !data[i][g as usize]).collect();
        for k in (1..free.len()).rev() {
            free.swap(k, rng.random_range(0..=k));
        }
        for &g in free.iter().take(pages as usize) {
            if !alive(pods, dom) {
                break;
            }
            // The simulator's guests have no second mapping: nothing to unmap.
            let _ = pods.balloon(heap, dom, g, 0, &mut NoSecondMapping, &NeverPreempt);
        }
        heap.memory().drain_log();
    }
}

/// Work: each guest writes data into `want` more of its (still mapped) `max` pages, chosen
/// at random, giving up after `8 * max` tries.
fn work(pods: &Pods, heap: &Heap<SimMemory>, doms: &[DomId], rng: &mut ChaCha8Rng, want: u64, max: u64) {
    for &dom in doms {
        let mut done = 0;
        let mut tries = 0;
        while done < want && tries < 8 * max && alive(pods, dom) {
            tries += 1;
            match touch(pods, heap, dom, rng.random_range(0..max), true) {
                Ok(_) => done += 1,
                Err(PodError::NotMapped { .. }) => {}
                Err(_) => break,
            }
        }
        heap.memory().drain_log();
    }
}

/// Which of each guest's `max` pages hold data: random runs of 64 to 1024 pages up to
/// `p.data_share` of them, every page for the last `p.greedy_guests` guests.
fn data_runs(rng: &mut ChaCha8Rng, p: &PodBalloonParams, max: u64) -> Vec<Vec<bool>> {
    let mut data: Vec<Vec<bool>> = Vec::with_capacity(p.guests);
    for i in 0..p.guests {
        let greedy = i >= p.guests - p.greedy_guests;
        let mut d = vec![greedy; max as usize];
        let share = if greedy { 0.0 } else { p.data_share };
        let mut written = 0u64;
        while (written as f64) < share * max as f64 {
            let len = rng.random_range(64..=1024u64);
            let at = rng.random_range(0..max);
            for g in at..(at + len).min(max) {
                written += !d[g as usize] as u64;
                d[g as usize] = true;
            }
        }
        data.push(d);
    }
    debug_assert_eq!(data.len(), p.guests);
    data
}

/// What the host can still hand out in 2 MiB blocks: scrubs everything, then allocates
/// 2 MiB blocks until the heap refuses, and gives them back.
fn free_superpages(heap: &Heap<SimMemory>) -> u64 {
    while heap.scrub_step(0, u64::MAX, &NeverPreempt).unwrap_or(0) > 0 {}
    let probe = DomId(u32::MAX);
    let mut got = Vec::new();
    while let Ok(e) = heap.alloc(&AllocRequest::new(9, probe)) {
        got.push(e);
    }
    let n = got.len() as u64;
    for e in got {
        let _ = heap.free(e.mfn, 9, probe);
    }
    n
}

/// A guest's touch (its empty-cache reclaim driven to the end in bounded steps, as a vCPU
/// that re-executes its access does; no second mapping to unmap); one that crashes the
/// guest (which frees nothing in the touch) is followed by its destroy, driven to the end
/// in bounded drain steps, as a toolstack that sees the crash does.
fn touch(pods: &Pods, heap: &Heap<SimMemory>, dom: DomId, gfn: u64, data: bool) -> Result<PodMapping, PodError> {
    let r = loop {
        match pods.touch(heap, dom, gfn, data, &mut NoSecondMapping, &|| true) {
            Ok(PodTouch::Mapped(m)) => break Ok(m),
            Ok(PodTouch::Preempted) => {}
            Err(e) => break Err(e),
        }
    };
    if let Err(PodError::Exhausted { .. }) = r {
        while pods.destroy(heap, dom, &|| true).expect("a crashed guest can be destroyed") == PodProgress::Preempted {}
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superpage_reclaim_keeps_more_superpages_and_both_modes_check_clean() {
        let p = PodBalloonParams { guests: 4, ..Default::default() };
        let rep = run(&HostPreset::tiny(), 7, &p).unwrap();
        let (sp, k4) = (&rep.results[0], &rep.results[1]);
        assert_eq!((sp.invariant_violations, k4.invariant_violations), (0, 0));
        assert!(sp.superpages_reclaimed > k4.superpages_reclaimed, "{sp:?} vs {k4:?}");
        assert!(k4.superpages_shattered > sp.superpages_shattered, "{sp:?} vs {k4:?}");
        assert!(sp.superpages_kept > k4.superpages_kept, "{sp:?} vs {k4:?}");
        // The greedy guest crashes in both modes; the others never do.
        assert_eq!((sp.crashes, k4.crashes), (1, 1));
        assert_eq!(run(&HostPreset::tiny(), 7, &p).unwrap(), rep, "same seed, same report");
    }

    #[test]
    fn presets_without_4k_frames_are_refused() {
        assert!(run(&HostPreset::epyc_2s_4t(), 1, &PodBalloonParams::default()).unwrap_err().contains("4 KiB"));
    }
}
