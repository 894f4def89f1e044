//! The `hot-remove` scenario (DESIGN 3.5): a host removes a range of Movable memory while
//! guests hold long-term pinned pages (DPDK hugepages, VFIO DMA buffers), two ways side
//! by side on the same guests and seed:
//!
//! - `pins-in-place`: pins stay where the pages are, in the Movable zone too (Linux before
//!   it migrated long-term pins out of ZONE_MOVABLE). The offline meets pinned pages and
//!   cannot finish; the toolstack retries it until its deadline, and the report names
//!   the blockers (frames and owners) of the last attempt.
//! - `scrubheap`: a pin first moves the pages to Normal memory ([`Heap::pin`]), so the
//!   offline only moves movable, unpinned memory and completes.
//!
//! The heap is the real one, metadata only. Modelled time: each heap step costs the
//! preset's `op_ns + lock_hold_ns`, each move copies its bytes at half a core's zeroing
//! bandwidth (a copy reads and writes every byte). The clock lives in the offline's
//! [`Deadline`] and the [`Migrator`]: the heap itself has none.

use crate::preset::{HostPreset, GIB, MIB};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use scrubheap::OfflineError;
use scrubheap::{
    AllocRequest, Blocker, Deadline, DomId, Extent, Heap, HeapConfig, HeapError, Mfn, Migrator, NeverPreempt, NodeSpec,
    NullMemory, OfflineStop,
};
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

/// The most frames the scenario simulates: larger hosts are simulated with larger frames.
const MAX_FRAMES: u64 = 1 << 26;

/// The scenario's parameters.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HotRemove {
    /// The host.
    pub host: HostPreset,
    /// Fraction of each node that is the Movable zone (its upper part).
    pub movable_fraction: f64,
    /// Fraction of host memory the guests hold.
    pub fill_fraction: f64,
    /// Memory of each guest, GiB.
    pub guest_gib: u64,
    /// Every this many guests of each node, one pins pages (a DPDK or VFIO guest).
    pub pin_every: usize,
    /// Memory each pinning guest pins, MiB, in 2 MiB pages chosen at random among its own.
    pub pinned_mib: u64,
    /// Memory removed: the top of node 0's Movable zone, MiB.
    pub remove_mib: u64,
    /// How long the toolstack lets the hot-remove run, seconds.
    pub deadline_s: f64,
    /// Pause between two attempts of an offline that was refused, seconds.
    pub retry_s: f64,
}

impl HotRemove {
    /// The built-in scenario on `host` (default: `epyc-2s-4t`), sized for it.
    pub fn builtin(host: Option<HostPreset>) -> HotRemove {
        let mut host = host.unwrap_or_else(HostPreset::epyc_2s_4t);
        while host.frames_per_node() * host.nodes as u64 > MAX_FRAMES {
            host.frame_size *= 2;
        }
        let node_gib = host.node_gib;
        HotRemove {
            movable_fraction: 0.5,
            fill_fraction: 0.75,
            guest_gib: (node_gib / 16).max(1),
            pin_every: 4,
            pinned_mib: ((node_gib / 512).max(1) * 1024).min(node_gib * 1024 / 64).max(2),
            remove_mib: node_gib * 1024 / 8,
            deadline_s: 60.0,
            retry_s: 0.1,
            host,
        }
    }

    fn frames(&self, bytes: u64) -> u64 {
        bytes / self.host.frame_size
    }
}

/// A chunk that blocked the hot-remove.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BlockerRow {
    /// First byte address.
    pub addr: String,
    /// Bytes.
    pub bytes: u64,
    /// Owner (guest domain id), if allocated.
    pub owner: Option<u32>,
    /// Why it blocked.
    pub reason: String,
}

impl BlockerRow {
    /// The row of `b`, on a host of `frame_size`-byte frames.
    fn of(b: &Blocker, frame_size: u64) -> Self {
        BlockerRow {
            addr: format!("{:#x}", b.first.0 * frame_size),
            bytes: b.frames * frame_size,
            owner: b.owner.map(|d| d.0),
            reason: b.reason.to_string(),
        }
    }
}

/// One way of pinning, on the scenario.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HotRemoveResult {
    /// `pins-in-place` or `scrubheap`.
    pub policy: String,
    /// Whether the range went offline.
    pub completed: bool,
    /// From the start of the hot-remove until the range was offline, seconds; null if it
    /// never was.
    pub time_to_offline_s: Option<f64>,
    /// When the hot-remove stopped (completed, or gave up at its deadline), seconds.
    pub stopped_s: f64,
    /// Offline attempts.
    pub attempts: u64,
    /// Bytes removed from service.
    pub offline_bytes: u64,
    /// Bytes the hot-remove moved out of the range.
    pub migrated_bytes: u64,
    /// Guests that pinned pages, and the bytes they pinned.
    pub pinning_guests: usize,
    /// Bytes pinned.
    pub pinned_bytes: u64,
    /// Of them, bytes left in the Movable zone.
    pub pinned_in_movable_bytes: u64,
    /// Bytes pins moved to Normal memory first, and the modelled time it took, seconds.
    pub pin_migrated_bytes: u64,
    /// Modelled time the pins took (moves included), seconds.
    pub pin_s: f64,
    /// Bytes pinned inside the removed range when the hot-remove began.
    pub pinned_in_range_bytes: u64,
    /// Guests holding those pins.
    pub pinned_in_range_owners: Vec<u32>,
    /// What blocked the last attempt (the heap names at most 16, in frame order).
    pub blockers: Vec<BlockerRow>,
    /// Checker failures (conservation, ledger, `check_invariants`, range state).
    pub invariant_violations: u64,
    /// The checker failures, if any.
    pub messages: Vec<String>,
    /// Schema-1 `sim` key: no guest is destroyed here (null).
    pub destroy_s: Option<f64>,
    /// Schema-1 `sim` key: nothing is scrubbed here (null).
    pub time_to_clean_s: Option<f64>,
    /// Schema-1 `sim` key: guests are built before the measured part (null).
    pub create_s: Option<crate::report::P50Max>,
    /// The longest piece of a move (a move copies one batch at a time, with a preemption
    /// point between two pieces), ms of modelled time.
    pub max_nonpreemptible_ms: f64,
    /// Bytes of that longest piece (a 1 GiB extent in the range moves in many pieces).
    pub longest_move_bytes: u64,
    /// Pieces longer than the host's watchdog timeout.
    pub watchdog_trips: u64,
    /// The extents the guests were built with.
    pub guest_extents: GuestExtents,
    /// Schema-1 `sim` key: no allocation here falls back to a smaller one (0).
    pub highorder_failures: u64,
}

/// The report of `scrubheap sim --scenario hot-remove`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HotRemoveReport {
    /// Report schema version.
    pub schema: u32,
    /// `hot-remove`.
    pub scenario: String,
    /// Host preset name.
    pub preset: String,
    /// Seed.
    pub seed: u64,
    /// One row per way of pinning.
    pub results: Vec<HotRemoveResult>,
    /// Simulated frame size, bytes.
    pub frame_size: u64,
    /// Host memory, bytes.
    pub memory_bytes: u64,
    /// Nodes.
    pub nodes: usize,
    /// The scenario's parameters (the host's included).
    pub params: HotRemove,
    /// How the scenario was built.
    pub notes: Vec<String>,
}

/// The modelled clock, charged by the offline's steps and by every copy.
struct Clock {
    now_ns: Cell<f64>,
    deadline_ns: Cell<f64>,
    step_ns: f64,
    copy_bps: f64,
}

impl Clock {
    /// A clock at 0 with no deadline, charging `h`'s cost of an offline step and copying
    /// at half a core's zeroing bandwidth.
    fn new(h: &HostPreset) -> Self {
        Clock {
            now_ns: Cell::new(0.0),
            deadline_ns: Cell::new(f64::INFINITY),
            step_ns: (h.op_ns + h.lock_hold_ns) as f64,
            copy_bps: h.core_zero_gbps * 1e9 / 2.0,
        }
    }
}

impl Deadline for Clock {
    fn passed(&self) -> bool {
        self.now_ns.set(self.now_ns.get() + self.step_ns);
        self.now_ns.get() >= self.deadline_ns.get()
    }
}

/// The guests' side of a move: charges the copy and keeps each guest's extents.
struct Guests<'a> {
    clock: &'a Clock,
    frame_size: u64,
    /// Frames held: first frame to (order, guest).
    held: RefCell<BTreeMap<u64, (u8, u32)>>,
    moved_bytes: Cell<u64>,
    /// The longest piece of a move (one batch at most), ns and bytes, and pieces longer
    /// than the watchdog.
    longest_ns: Cell<f64>,
    longest_bytes: Cell<u64>,
    trips: Cell<u64>,
    watchdog_ns: f64,
}

impl Migrator for Guests<'_> {
    /// One piece of a move (at most one batch): charges its copy time, the longest stretch
    /// a move runs without a preemption point.
    fn copy(&self, _owner: DomId, _from: Extent, _to: Extent, _offset: u64, frames: u64) -> bool {
        let bytes = frames * self.frame_size;
        let c = self.clock;
        let ns = bytes as f64 / c.copy_bps * 1e9;
        c.now_ns.set(c.now_ns.get() + ns);
        if ns > self.longest_ns.get() {
            self.longest_ns.set(ns);
            self.longest_bytes.set(bytes);
        }
        self.trips.set(self.trips.get() + (ns > self.watchdog_ns) as u64);
        self.moved_bytes.set(self.moved_bytes.get() + bytes);
        true
    }

    /// The move is copied: the guest's frame list points at `to`.
    fn switch(&self, owner: DomId, from: Extent, to: Extent) -> bool {
        let mut held = self.held.borrow_mut();
        // Split the guest's extent around the part that moves, as its frame list would.
        let (&m, &(o, g)) = held.range(..=from.mfn.0).next_back().expect("a guest holds what moves");
        debug_assert_eq!(g, owner.0);
        held.remove(&m);
        for r in (Extent { mfn: Mfn(m), order: o, node: from.node }).split_around(from) {
            held.insert(r.mfn.0, (r.order, g));
        }
        held.insert(to.mfn.0, (to.order, g));
        true
    }
}

/// What the guests were built with: extents of 1 GiB and of 2 MiB.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GuestExtents {
    /// 1 GiB extents.
    pub extents_1g: u64,
    /// 2 MiB extents (where no 1 GiB one could be had, or for the rest of a guest).
    pub extents_2m: u64,
}

/// Builds `n` guests of `frames` each, as the host does: 1 GiB extents first, 2 MiB ones
/// where no 1 GiB extent is free (on guest `i`'s node `i % nodes`, Movable zone first).
/// Returns each guest's 2 MiB pages (what its pins choose among) and the extent counts.
fn build_guests(
    heap: &Heap<NullMemory>,
    g: &Guests<'_>,
    n: usize,
    frames: u64,
    nodes: usize,
    order2m: u8,
) -> Result<(Vec<Vec<u64>>, GuestExtents), String> {
    let order1g = (GIB / g.frame_size).max(1).trailing_zeros() as u8;
    let mut built = GuestExtents::default();
    let mut pages: Vec<Vec<u64>> = Vec::with_capacity(n);
    for i in 0..n {
        let dom = i as u32 + 1;
        let mut mine = Vec::with_capacity((frames >> order2m) as usize);
        let mut left = frames;
        for order in [order1g, order2m] {
            let req = AllocRequest::new(order, DomId(dom)).movable().on(i % nodes);
            while left >= 1 << order {
                let e = match heap.alloc(&req) {
                    Ok(e) => e,
                    Err(HeapError::OutOfMemory { .. }) if order == order1g => break,
                    Err(e) => return Err(format!("building guest {dom}: {e}")),
                };
                g.held.borrow_mut().insert(e.mfn.0, (e.order, dom));
                mine.extend((0..e.frames() >> order2m).map(|k| e.mfn.0 + (k << order2m)));
                left -= e.frames();
                *(if order == order1g { &mut built.extents_1g } else { &mut built.extents_2m }) += 1;
            }
        }
        pages.push(mine);
    }
    debug_assert!(pages.iter().all(|p| p.len() as u64 == frames >> order2m));
    Ok((pages, built))
}

/// Runs the scenario both ways.
pub fn run(sc: &HotRemove, seed: u64) -> Result<HotRemoveReport, String> {
    sc.host.validate()?;
    let results = vec![run_one(sc, seed, false)?, run_one(sc, seed, true)?];
    let h = &sc.host;
    let mut notes = vec![
        format!(
            "{} GiB guests fill {:.0}% of the host with movable 1 GiB extents, 2 MiB ones where no 1 GiB extent is free (Movable zone first: the upper {:.0}% of each node); every {}th guest of each node pins {} MiB in 2 MiB pages chosen at random among its own; then the host removes the top {} MiB of node 0's Movable zone",
            sc.guest_gib,
            sc.fill_fraction * 100.0,
            sc.movable_fraction * 100.0,
            sc.pin_every,
            sc.pinned_mib,
            sc.remove_mib
        ),
        format!(
            "modelled time: {} ns per heap step, moves copy at {:.1} GB/s (half a core's zeroing bandwidth: a copy reads and writes); a refused offline is retried every {} s until the {} s deadline",
            h.op_ns + h.lock_hold_ns,
            h.core_zero_gbps / 2.0,
            sc.retry_s,
            sc.deadline_s
        ),
    ];
    if h.frame_size != 4096 {
        notes.push(format!(
            "simulated with {} KiB frames (the metadata of 4 KiB frames for this host would not fit in memory)",
            h.frame_size / 1024
        ));
    }
    Ok(HotRemoveReport {
        schema: 1,
        scenario: "hot-remove".into(),
        preset: h.name.clone(),
        seed,
        results,
        frame_size: h.frame_size,
        memory_bytes: h.total_bytes(),
        nodes: h.nodes,
        params: sc.clone(),
        notes,
    })
}

/// The metadata-only heap of `sc`: every node's top `movable_fraction` in the Movable
/// zone. Returns it and the first Movable frame of each node.
fn movable_heap(sc: &HotRemove) -> Result<(Heap<NullMemory>, u64), String> {
    let h = &sc.host;
    let fpn = h.frames_per_node();
    let movable_from = fpn - ((fpn as f64 * sc.movable_fraction) as u64);
    assert!(movable_from <= fpn, "the Movable zone lies inside the node");
    let mut cfg = HeapConfig::uniform(h.nodes, fpn);
    cfg.frame_size = h.frame_size;
    cfg.nodes = vec![NodeSpec { frames: fpn, movable_from: Some(movable_from), has_cpus: true }; h.nodes];
    cfg.scrub_batch = h.scrub_batch_frames();
    let heap = Heap::new(cfg, NullMemory).map_err(|e| e.to_string())?;
    Ok((heap, movable_from))
}

fn run_one(sc: &HotRemove, seed: u64, migrate_pins: bool) -> Result<HotRemoveResult, String> {
    let h = &sc.host;
    let fpn = h.frames_per_node();
    let (heap, movable_from) = movable_heap(sc)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x407_2e70);
    let order2m = (2 * MIB / h.frame_size).max(1).trailing_zeros() as u8;
    let clock = Clock::new(h);
    let guests_n = ((h.total_bytes() as f64 * sc.fill_fraction) / (sc.guest_gib * GIB) as f64) as usize;
    let per_guest = sc.frames(sc.guest_gib * GIB) >> order2m;
    let g = Guests {
        clock: &clock,
        frame_size: h.frame_size,
        held: RefCell::new(BTreeMap::new()),
        moved_bytes: Cell::new(0),
        longest_ns: Cell::new(0.0),
        longest_bytes: Cell::new(0),
        trips: Cell::new(0),
        watchdog_ns: h.watchdog_s * 1e9,
    };
    let mut messages = Vec::new();
    let (mut extents, built) = build_guests(&heap, &g, guests_n, sc.frames(sc.guest_gib * GIB), h.nodes, order2m)?;
    let pin_pages = (sc.pinned_mib * MIB / (h.frame_size << order2m)).min(per_guest) as usize;
    let pin_bytes = h.frame_size << order2m;
    let Pins { guests: pinning, bytes: pinned_bytes, in_movable: pinned_in_movable, at: pinned_at } =
        pin_guests(&heap, &g, &mut extents, &mut rng, (sc.pin_every, pin_pages, order2m), migrate_pins)?;
    let pin_s = clock.now_ns.get() / 1e9;
    let pin_migrated_bytes = g.moved_bytes.replace(0);
    // The hot-remove.
    let remove = sc.frames(sc.remove_mib * MIB).min(fpn - movable_from);
    let first = Mfn(fpn - remove);
    clock.now_ns.set(0.0);
    clock.deadline_ns.set(sc.deadline_s * 1e9);
    let in_range: Vec<(u64, u32)> =
        pinned_at.into_iter().filter(|&(m, _)| m >= first.0 && m < first.0 + remove).collect();
    let mut pinned_in_range_owners: Vec<u32> = in_range.iter().map(|&(_, d)| d).collect();
    pinned_in_range_owners.sort_unstable();
    pinned_in_range_owners.dedup();
    let Offlined { attempts, completed, frames: done_frames, blockers } =
        offline_until_deadline(&heap, &g, (first, remove), sc.retry_s)?;
    let stopped_ns = clock.now_ns.get().min(clock.deadline_ns.get());
    messages.extend(check(&heap, &g, fpn * h.nodes as u64, completed, remove));
    let bpf = h.frame_size;
    Ok(HotRemoveResult {
        policy: if migrate_pins { "scrubheap" } else { "pins-in-place" }.into(),
        completed,
        time_to_offline_s: completed.then_some(stopped_ns / 1e9),
        stopped_s: stopped_ns / 1e9,
        attempts,
        offline_bytes: done_frames * bpf,
        migrated_bytes: g.moved_bytes.get(),
        pinning_guests: pinning,
        pinned_bytes,
        pinned_in_movable_bytes: pinned_in_movable,
        pin_migrated_bytes,
        pin_s,
        pinned_in_range_bytes: in_range.len() as u64 * pin_bytes,
        pinned_in_range_owners,
        blockers: blockers.iter().map(|b| BlockerRow::of(b, bpf)).collect(),
        invariant_violations: messages.len() as u64,
        messages,
        destroy_s: None,
        time_to_clean_s: None,
        create_s: None,
        max_nonpreemptible_ms: g.longest_ns.get() / 1e6,
        longest_move_bytes: g.longest_bytes.get(),
        watchdog_trips: g.trips.get(),
        guest_extents: built,
        highorder_failures: 0,
    })
}

/// What the guests pinned before the hot-remove.
struct Pins {
    /// Guests that pinned pages.
    guests: usize,
    /// Bytes pinned, and of them those left in the Movable zone.
    bytes: u64,
    in_movable: u64,
    /// Every pin: (first frame, owner).
    at: Vec<(u64, u32)>,
}

/// Pins `pages` random pages of 2^`order` frames of every `every`-th guest of each node
/// (guest i is on node i % nodes, `extents[i]` its pages), so that every node has guests
/// that pin and guests that do not: moving them out of Movable memory first if
/// `migrate`, in place otherwise. Each pin costs one step of the clock.
fn pin_guests(
    heap: &Heap<NullMemory>,
    g: &Guests<'_>,
    extents: &mut [Vec<u64>],
    rng: &mut ChaCha8Rng,
    (every, pages, order): (usize, usize, u8),
    migrate: bool,
) -> Result<Pins, String> {
    let nodes = heap.node_count();
    let pin_bytes = g.frame_size << order;
    let mut out = Pins { guests: 0, bytes: 0, in_movable: 0, at: Vec::new() };
    for (i, mine) in extents.iter_mut().enumerate().filter(|(i, _)| (i / nodes) % every.max(1) == 0) {
        let dom = DomId(i as u32 + 1);
        out.guests += 1;
        mine.shuffle(rng);
        for &m in mine.iter().take(pages) {
            g.clock.now_ns.set(g.clock.now_ns.get() + g.clock.step_ns);
            let at = if migrate {
                heap.pin(Mfn(m), order, dom, g, &NeverPreempt)
            } else {
                heap.pin_in_place(Mfn(m), order, dom)
            }
            .map_err(|e| format!("pin of {} by {dom}: {e}", Mfn(m)))?;
            out.bytes += pin_bytes;
            out.at.push((at.mfn.0, dom.0));
            if heap.chunk_at(at.mfn).map_err(|e| e.to_string())?.zone == scrubheap::Zone::Movable {
                out.in_movable += pin_bytes;
            }
        }
    }
    debug_assert!(out.in_movable <= out.bytes, "pins in Movable are some of the pins");
    Ok(out)
}

/// How the hot-remove of one range ended.
struct Offlined {
    /// Calls of `Heap::offline`.
    attempts: u64,
    /// Whether the range went offline whole.
    completed: bool,
    /// Frames it took offline.
    frames: u64,
    /// What blocked the last attempt (empty when it completed).
    blockers: Vec<Blocker>,
}

/// Offlines `count` frames from `first`, again every `retry_s` of simulated time, until
/// it completes or the clock passes its deadline.
fn offline_until_deadline(
    heap: &Heap<NullMemory>,
    g: &Guests<'_>,
    (first, count): (Mfn, u64),
    retry_s: f64,
) -> Result<Offlined, String> {
    let clock = g.clock;
    let mut out = Offlined { attempts: 0, completed: false, frames: 0, blockers: Vec::new() };
    while clock.now_ns.get() < clock.deadline_ns.get() {
        out.attempts += 1;
        match heap.offline(first, count, g, clock, &NeverPreempt) {
            Ok(d) => {
                out.completed = true;
                out.frames = d.frames;
                out.blockers.clear();
                break;
            }
            Err(HeapError::Offline(OfflineError::OfflineBlocked { stop, blockers: b, .. })) => {
                out.blockers = b;
                if stop == OfflineStop::Deadline {
                    break;
                }
                clock.now_ns.set(clock.now_ns.get() + retry_s * 1e9);
            }
            Err(e) => return Err(format!("offline: {e}")),
        }
    }
    debug_assert!(!out.completed || out.blockers.is_empty(), "a completed offline has no blockers");
    Ok(out)
}

/// The checkers after a hot-remove of `removed` frames: the heap's invariants, every one
/// of `frames` accounted, the guests' ledger against the heap's allocated frames, and the
/// offline count against `completed`. Returns what failed.
fn check(heap: &Heap<NullMemory>, g: &Guests<'_>, frames: u64, completed: bool, removed: u64) -> Vec<String> {
    let mut messages = Vec::new();
    if let Err(e) = heap.check_invariants() {
        messages.push(e.to_string());
    }
    let s = heap.stats();
    if s.total() != frames {
        messages.push(format!("{} frames accounted of {frames}", s.total()));
    }
    let ledger: u64 = g.held.borrow().values().map(|&(o, _)| 1u64 << o).sum();
    if ledger != s.allocated {
        messages.push(format!("the guests hold {ledger} frames, the heap says {} are allocated", s.allocated));
    }
    if completed != (s.offline == removed) {
        messages.push(format!("completed {completed} but {} frames are offline of {removed}", s.offline));
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_in_place_stop_at_the_deadline_and_migrated_pins_let_the_offline_complete() {
        let mut sc = HotRemove::builtin(Some(HostPreset::tiny()));
        sc.deadline_s = 2.0;
        sc.pinned_mib = 128;
        let rep = run(&sc, 1).unwrap();
        let [base, ours] = &rep.results[..] else { panic!() };
        assert_eq!(base.policy, "pins-in-place");
        assert!(!base.completed && base.time_to_offline_s.is_none());
        assert!(base.pinned_in_movable_bytes > 0);
        assert!(!base.blockers.is_empty() && base.blockers.iter().all(|b| b.reason == "long-term pinned"));
        assert!(base.blockers.iter().all(|b| b.owner.is_some()));
        assert!(base.attempts > 1);
        assert!(base.pinned_in_range_bytes > 0 && !base.pinned_in_range_owners.is_empty());
        assert_eq!(ours.pinned_in_range_bytes, 0);
        assert_eq!(base.stopped_s, 2.0);
        assert!(ours.completed, "{ours:?}");
        assert_eq!(ours.pinned_in_movable_bytes, 0);
        assert_eq!(ours.pin_migrated_bytes, base.pinned_in_movable_bytes);
        assert_eq!(ours.offline_bytes, sc.remove_mib * MIB);
        assert!(ours.migrated_bytes > 0 && ours.time_to_offline_s.unwrap() > 0.0);
        assert!(ours.max_nonpreemptible_ms > 0.0 && ours.watchdog_trips == 0);
        assert_eq!(base.invariant_violations + ours.invariant_violations, 0, "{:?} {:?}", base.messages, ours.messages);
        // Deterministic.
        assert_eq!(run(&sc, 1).unwrap(), rep);
    }

    #[test]
    fn guests_hold_1g_extents_and_a_1g_move_copies_in_pieces() {
        let mut host = HostPreset::tiny();
        host.node_gib = 8;
        let mut sc = HotRemove::builtin(Some(host));
        sc.guest_gib = 2;
        sc.remove_mib = 3072;
        let rep = run(&sc, 3).unwrap();
        let ours = &rep.results[1];
        assert!(ours.completed, "{ours:?}");
        assert!(ours.guest_extents.extents_1g > 0, "{:?}", ours.guest_extents);
        assert!(ours.migrated_bytes >= GIB, "a 1 GiB extent in the range moved: {ours:?}");
        assert!(ours.longest_move_bytes > 0 && ours.longest_move_bytes < GIB / 64, "moved in pieces: {ours:?}");
        let copy_ms = ours.longest_move_bytes as f64 / (sc.host.core_zero_gbps * 1e9 / 2.0) * 1e3;
        assert!((ours.max_nonpreemptible_ms - copy_ms).abs() < 1e-6, "{} vs {copy_ms}", ours.max_nonpreemptible_ms);
        assert_eq!(ours.invariant_violations, 0, "{:?}", ours.messages);
    }
}
