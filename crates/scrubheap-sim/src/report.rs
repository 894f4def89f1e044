//! What a simulation reports: the schema-1 `sim` keys of DESIGN section 6 (keys may be
//! added, never renamed), and the timeline the plots are drawn from. Nothing here holds a
//! wall-clock figure, so the same inputs give byte-identical JSON.

use serde::Serialize;

/// Median and maximum of a set of durations, seconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct P50Max {
    /// Median.
    pub p50: f64,
    /// Maximum.
    pub max: f64,
}

impl P50Max {
    /// Of `v` (seconds); `None` when empty.
    pub fn of(v: &[f64]) -> Option<P50Max> {
        if v.is_empty() {
            return None;
        }
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        Some(P50Max { p50: s[(s.len() - 1) / 2], max: s[s.len() - 1] })
    }
}

/// Bytes zeroed, by who paid (the heap's own accounting).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BytesScrubbed {
    /// By idle CPUs.
    pub background: u64,
    /// By allocations, in place (their owner or helpers).
    pub in_place: u64,
    /// By frees, synchronously.
    pub sync: u64,
}

/// How the checkers ran.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Checks {
    /// Conservation, ledger and claims checks: after every event.
    pub cheap_every_event: bool,
    /// Every-handover leak check (each extent against the frames the memory model saw
    /// zeroed or knew clean): always on.
    pub handovers_checked: u64,
    /// The heap's full `check_invariants()` (O(frames)) ran every this many heap calls
    /// (the events that call into the heap: `heap_calls`; the others change no heap state).
    pub full_every_events: u64,
    /// Events that called into the heap.
    pub heap_calls: u64,
    /// How many times it ran (including once at the end).
    pub full_runs: u64,
    /// Events processed.
    pub events: u64,
    /// The same events by kind (where a simulation spends its run time).
    pub events_by_kind: EventCounts,
}

/// Events a simulation processed, by kind. Their sum is [`Checks::events`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EventCounts {
    /// A scenario operation came due (create, destroy, reboot).
    pub op: u64,
    /// An idle CPU's heap call (`scrub_step`), including those that found nothing.
    pub scrub_call: u64,
    /// A toolstack CPU's heap call (claim, allocation, ticket advance, free), except
    /// those counted as `poll`.
    pub toolstack_call: u64,
    /// A builder that had yielded to wait for a ticket's helpers woke and looked again.
    pub poll: u64,
    /// A zeroing segment ended (its rate is re-evaluated at the next one).
    pub segment: u64,
    /// A step's modelled time ended (the preemption point after a call).
    pub step_end: u64,
    /// A timeline sample.
    pub sample: u64,
}

/// One policy's results on one scenario.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PolicyResult {
    /// The policy.
    pub policy: String,
    /// Longest measured destroy (all its memory back in the heap), seconds.
    pub destroy_s: Option<f64>,
    /// From the first measured destroy (or boot) until no free memory was dirty, seconds;
    /// null if memory was still dirty when the run ended.
    pub time_to_clean_s: Option<f64>,
    /// Measured creates (claim and populate), seconds.
    pub create_s: Option<P50Max>,
    /// Longest stretch any CPU ran between two preemption points, ms.
    pub max_nonpreemptible_ms: f64,
    /// Sections longer than the watchdog timeout.
    pub watchdog_trips: u64,
    /// Allocations of 1 GiB or 2 MiB extents that failed, so the guest fell back to smaller.
    pub highorder_failures: u64,
    /// Checker failures (conservation, ledger, claims, dirty handovers, `check_invariants`).
    pub invariant_violations: u64,
    /// Median measured destroy, seconds.
    pub destroy_p50_s: Option<f64>,
    /// Dirty bytes over the aggregate scrub bandwidth of every CPU, seconds (the bound
    /// `time_to_clean_s` is compared with).
    pub ideal_clean_s: Option<f64>,
    /// Extents handed to an owner with frames the memory model had not seen zeroed.
    pub dirty_handovers: u64,
    /// Creates that could not get their memory.
    pub create_failures: u64,
    /// Claims refused (the guest was built without one).
    pub claim_failures: u64,
    /// Bytes zeroed by source.
    pub bytes_scrubbed: BytesScrubbed,
    /// Longest wait for a heap lock, microseconds.
    pub lock_wait_max_us: f64,
    /// Longest wait of an event for a free toolstack CPU, seconds.
    pub op_wait_max_s: f64,
    /// Bytes toolstack CPUs zeroed in place on another socket's memory (a builder
    /// scrubbing its claimed chunk across the interconnect).
    pub builder_remote_bytes: u64,
    /// Simulated time at the end, seconds.
    pub end_s: f64,
    /// Whether the run hit the scenario's time limit.
    pub truncated: bool,
    /// The checkers and their rates.
    pub checks: Checks,
    /// The first few checker failures and failed operations, with their times.
    pub messages: Vec<String>,
}

/// One timeline sample.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// Simulated time, seconds.
    pub t_s: f64,
    /// Per node: free clean, free dirty, allocated (and being scrubbed), bytes.
    pub nodes: Vec<[u64; 3]>,
    /// Bytes zeroed since the previous sample by idle CPUs.
    pub zeroed_idle: u64,
    /// Bytes zeroed since the previous sample by toolstack CPUs (in place or on free).
    pub zeroed_toolstack: u64,
    /// Longest section that ended since the previous sample, ns.
    pub max_section_ns: u64,
}

/// One policy's run: results and timeline.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PolicyRun {
    /// The results row.
    pub result: PolicyResult,
    /// The timeline.
    #[serde(skip)]
    pub timeline: Vec<Sample>,
}

/// The report of `scrubheap sim`: schema-1 keys first.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimReport {
    /// Report schema version.
    pub schema: u32,
    /// Scenario name (or file stem).
    pub scenario: String,
    /// Host preset name.
    pub preset: String,
    /// Seed.
    pub seed: u64,
    /// One row per policy.
    pub results: Vec<PolicyResult>,
    /// Simulated frame size, bytes (4096 unless the host's metadata would not fit).
    pub frame_size: u64,
    /// Host memory, bytes.
    pub memory_bytes: u64,
    /// Nodes.
    pub nodes: usize,
    /// CPUs.
    pub cpus: usize,
    /// The host's parameters.
    pub host: crate::preset::HostPreset,
    /// The mechanisms of the 2026 watchdog reports switched on for this run.
    pub mechanisms: crate::preset::Mechanisms,
    /// How the scenario was built (scaling factors, frame size notes...).
    pub notes: Vec<String>,
    /// Sweep rows, when `--sweep` was given.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sweep: Vec<SweepRow>,
}

/// One point of a parameter sweep.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SweepRow {
    /// The parameter.
    pub param: String,
    /// Its value.
    pub value: f64,
    /// One row per policy.
    pub results: Vec<PolicyResult>,
}
