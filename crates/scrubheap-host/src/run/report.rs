//! What a run reports: the schema-1 `run` keys of DESIGN section 6 (keys may be added,
//! never renamed), plus the timeline and latency samples the plots are drawn from.

use serde::Serialize;

/// Three quantiles and the maximum of a latency, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Millis {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Millis {
    /// Median (nearest rank), 99th percentile and maximum of `v`; all 0 if `v` is empty.
    pub fn of(v: &[f64]) -> Millis {
        if v.is_empty() {
            return Millis::default();
        }
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let q = |p: f64| s[((s.len() - 1) as f64 * p).round() as usize];
        Millis { p50: q(0.5), p99: q(0.99), max: s[s.len() - 1] }
    }
}

/// Lock hold times, in microseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LockHoldMicros {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// 99.99th percentile.
    pub p9999: f64,
    /// Longest.
    pub max: f64,
    /// Holds recorded.
    pub holds: u64,
    /// The longest hold by a background scrubber thread (a priority inversion shows
    /// here: a scrubber descheduled while it holds the lock).
    pub scrubbers_max: f64,
    /// The longest hold by any other thread (builders, pins, hot-remove, PoD).
    pub others_max: f64,
}

/// Bytes scrubbed by who paid for it.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct BytesScrubbed {
    /// By idle CPUs (scrubber threads).
    pub background: u64,
    /// In place, by allocations.
    pub in_place: u64,
    /// By frees, synchronously (`sync` policy).
    pub sync: u64,
    /// Zeroed by the kernel at page fault (`kernel` baseline only).
    pub kernel: u64,
}

/// Pages handed to a new owner and checked for another owner's bytes.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LeakCheck {
    /// Pages checked (whole pages in verify mode, sampled words otherwise).
    pub pages_checked: u64,
    /// Of those, pages holding a non-zero word: a leak between tenants. Must be 0.
    pub nonzero_pages: u64,
    /// 8-byte words read by the checks.
    pub words_checked: u64,
    /// "full" (every word) or "sampled" (16 words of each 4 KiB page, one per 256 bytes),
    /// and where the pool checked: at boot, after every scrub, at handoff (verify only).
    pub mode: String,
    /// The pool's counts by place (`boot`, `scrub`, `handoff`); empty for the kernel.
    pub places: Vec<crate::pool::LeakTally>,
}

/// One sample of the memory composition of one node.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct NodeSample {
    /// Free frames known to be zero, in bytes.
    pub clean: u64,
    /// Free frames still dirty (including those a scrubber holds), in bytes.
    pub dirty: u64,
    /// Frames held by guests, in bytes.
    pub used: u64,
}

/// The memory composition of every node at one moment.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Sample {
    /// Seconds since the run started.
    pub t: f64,
    /// Guests alive.
    pub guests: u64,
    /// Per node.
    pub nodes: Vec<NodeSample>,
    /// Background scrub throughput over the last interval, GB/s.
    pub scrub_gbps: f64,
}

/// Balloon operations of the guests that ballooned.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Balloon {
    /// Balloon-outs (a guest gave a quarter of its memory back).
    pub out: u64,
    /// Balloon-ins (a guest asked for it again).
    pub r#in: u64,
    /// Bytes given back.
    pub bytes_out: u64,
    /// Bytes got again.
    pub bytes_in: u64,
    /// Balloon-ins that got less than asked (the host had no more).
    pub in_short: u64,
    /// Time to balloon out.
    pub out_ms: Millis,
    /// Time to balloon in (allocation, leak check and the guest's first write).
    pub in_ms: Millis,
}

/// Longest non-preemptible section by who ran it, CPU time, µs.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct SectionsBy {
    /// Worker threads (guest builders, their pins and their PoD guests).
    pub workers: f64,
    /// Background scrubber threads.
    pub scrubbers: f64,
    /// The operation the workers' longest section was in (alloc, ticket step, free, pin,
    /// pod touch, ...).
    pub workers_op: String,
    /// Guest builders' allocations, scrub tickets, frees and balloons.
    pub builders: f64,
    /// The operation of the builders' longest section.
    pub builders_op: String,
    /// Long-term pins and unpins (a pin in the Movable zone moves its page first).
    pub pins: f64,
    /// The hot-remove's offline and online.
    pub hot_remove: f64,
    /// The operation of the hot-remove's longest section.
    pub hot_remove_op: String,
    /// Populate-on-demand guests (create, touch, balloon, destroy).
    pub pod: f64,
    /// The operation of the PoD guests' longest section.
    pub pod_op: String,
    /// Every operation: its sections, longest first.
    pub by_op: Vec<OpSectionsReport>,
}

/// The sections of one operation in a run.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct OpSectionsReport {
    /// The operation (`alloc`, `ticket step`, `free`, `pin`, `unpin`, `background scrub`,
    /// `hot-remove offline`, `pod touch`, ...).
    pub op: String,
    /// Who runs it: builders, scrubbers, pins, hot-remove or pod.
    pub role: String,
    /// Sections recorded.
    pub sections: u64,
    /// Longest, thread CPU µs.
    pub max_us: f64,
    /// Longest, wall µs (includes time the thread was descheduled).
    pub max_wall_us: f64,
}

/// A run's report (`report.json`).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RunReport {
    /// Schema version of this report.
    pub schema: u32,
    /// `sync`, `alloc`, `xen`, `xen-cap2m`, `scrubheap` or `kernel`.
    pub policy: String,
    /// Arena bytes.
    pub memory_bytes: u64,
    /// Nodes (emulated by splitting the arena on a one-node host).
    pub nodes: usize,
    /// Scrubber threads in all.
    pub scrubbers: usize,
    /// Workload seed.
    pub seed: u64,
    /// Wall-clock seconds the run took.
    pub duration_s: f64,
    /// Guests created.
    pub domains_created: u64,
    /// Guests destroyed (a reboot counts as one destroy and one create).
    pub domains_destroyed: u64,
    /// Guests rebooted (destroyed and built again at once).
    pub domains_rebooted: u64,
    /// Bytes scrubbed by source.
    pub bytes_scrubbed: BytesScrubbed,
    /// Leak check over every handoff.
    pub leak_check: LeakCheck,
    /// Guest create latency: pool allocation of all its memory to ready.
    pub create_ms: Millis,
    /// Guest destroy latency: all its memory back in the pool.
    pub destroy_ms: Millis,
    /// Longest gap between two preemption points in any heap operation, in thread CPU
    /// time (what a watchdog cares about).
    pub max_nonpreemptible_us: f64,
    /// The same gap in wall-clock time (includes being descheduled by the host OS).
    pub max_nonpreemptible_wall_us: f64,
    /// The longest sections by who ran them (builders, scrubbers, pins, hot-remove, PoD)
    /// and by operation, in CPU time.
    pub sections_max_us: SectionsBy,
    /// Heap node-lock hold times (wall clock).
    pub lock_hold_us: LockHoldMicros,
    /// How the scrubber threads were scheduled (idle, nice19, boost, normal).
    pub scrub_priority: String,
    /// Whether the run's own threads were raised while holding a node lock too.
    pub lock_boost: bool,
    /// Background scrub throughput while scrubbing, GB/s.
    pub scrub_gbps: f64,
    /// The best zeroing kernel on this arena, GB/s (calibration).
    pub raw_zero_gbps: f64,
    /// Allocations of 1 GiB or 2 MiB that failed and fell back to smaller extents.
    pub highorder_failures: u64,
    /// Heap invariant violations found by the full check after the run, and frames still
    /// allocated once every guest is gone. Must be 0.
    pub invariant_violations: u64,
    /// Where the workload came from, with its memory and time scale factors.
    pub workload: WorkloadInfo,
    /// Zeroing kernel used.
    pub kernel: String,
    /// Arena backing (hugetlbfs, THP, plain) and how its node slices sit on host NUMA nodes.
    pub backing: String,
    /// Memory composition over time.
    pub timeline: Vec<Sample>,
    /// Every guest create latency, ms (for the distribution plot).
    pub create_samples_ms: Vec<f64>,
    /// Every guest destroy latency, ms.
    pub destroy_samples_ms: Vec<f64>,
    /// Guests that could not be created (out of memory), skipped.
    pub guests_refused: u64,
    /// Guests ballooning out and in.
    pub balloon: Balloon,
    /// What a reader should know about the run (time to clean, why a figure is 0).
    pub notes: Vec<String>,
    /// Populate-on-demand guests (a share of the guests boot with target below maximum).
    pub pod: crate::tenants::pod_guest::PodSummary,
    /// Pages guests pinned long-term, as a device would.
    pub pins: PinReport,
    /// The hot-remove of a Movable range during the run (heap policies only).
    pub hot_remove: Option<HotRemoveReport>,
    /// Per heap node: the host node its slice is bound to as the kernel reports it, and
    /// the CPUs its scrubbers were pinned to and ran on (heap policies only).
    pub numa: Vec<crate::numa::NodePlacement>,
}

/// Long-term pins the guests took.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct PinReport {
    /// Pages pinned (4 KiB each).
    pub pages: u64,
    /// Of those, pages that were in the Movable zone and moved to Normal memory first.
    pub moved_to_normal: u64,
}

/// One hot-remove (offline) of a range of the Movable zone, and its hot-add (online).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct HotRemoveReport {
    /// First frame of the range (hex).
    pub first_mfn: String,
    /// Bytes removed.
    pub bytes: u64,
    /// Seconds into the run when it began.
    pub at_s: f64,
    /// Whether the range went offline.
    pub completed: bool,
    /// Offline attempts (a refused attempt is rolled back and retried).
    pub attempts: u64,
    /// Wall time from the first attempt until the range was offline, ms.
    pub time_to_offline_ms: f64,
    /// Frames of live guests in the range when it was chosen (the half of a node's
    /// Movable zone holding the most).
    pub guest_frames_in_range: u64,
    /// Guest memory moved out of the range by the attempt that completed, frames.
    pub migrated_frames: u64,
    /// The same in bytes.
    pub migrated_bytes: u64,
    /// Extents (or parts of extents) it moved.
    pub migrated_extents: u64,
    /// Background scrubs asked to hand a chunk back.
    pub aborted_scrubs: u64,
    /// Why earlier attempts were refused (first blocker of each, up to 8).
    pub blockers: Vec<String>,
    /// Seconds into the run when the range came back (online, dirty).
    pub online_at_s: f64,
}

/// Where a workload came from.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct WorkloadInfo {
    /// Source description.
    pub source: String,
    /// Host bytes per trace byte.
    pub memory_scale: f64,
    /// Run seconds per trace second.
    pub time_scale: f64,
    /// Guests in the workload.
    pub guests: u64,
}
