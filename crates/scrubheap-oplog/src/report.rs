//! What a replay reports: counts of operations and errors by kind, invariant
//! violations, the heap's frames at the end, and the populate-on-demand counters. All of
//! it derives `Serialize`; the CLI writes it as JSON unchanged.

use serde::Serialize;
use std::collections::BTreeMap;

/// How many invariant-violation messages a report keeps (the count is always exact).
pub const MAX_VIOLATION_MESSAGES: usize = 16;

/// Frame counts of the heap at the end of a replay.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FinalCounts {
    /// Free frames known to be zero.
    pub free_clean: u64,
    /// Free frames still holding old bytes.
    pub free_dirty: u64,
    /// Frames held by owners.
    pub allocated: u64,
    /// Frames out of service.
    pub offline: u64,
}

/// What a replay did. As JSON (`scrubheap replay --json`), in this order: `ops`, `ok`,
/// `errors {Kind: count}`, `invariant_violations`, `final {free_clean, free_dirty,
/// allocated, offline}`, `pod {populated, cache, entries, superpages_reclaimed,
/// zero_pages_reclaimed, superpages_shattered, crashes}`, the [`SectionReport`] keys
/// (`max_section_frames`, `max_section_op`, `section_bound`, `pod_...`, `baseline_...`),
/// `violations [...]`. Keys may be added, never renamed (DESIGN section 6).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Operations: every line that is not blank or a comment.
    pub ops: u64,
    /// Operations that succeeded (`ops` = `ok` + all errors).
    pub ok: u64,
    /// Failed operations by kind.
    pub errors: BTreeMap<String, u64>,
    /// Failed checks: heap or replayer bugs, never input errors.
    pub invariant_violations: u64,
    /// The heap's frames at the end (all zero when no heap is left).
    #[serde(rename = "final")]
    pub final_: FinalCounts,
    /// Populate-on-demand: frames of the guests left at the end, and events of every
    /// heap of the log.
    pub pod: PodReport,
    /// The most work one line did between two preemption points, and which line.
    #[serde(flatten)]
    pub sections: SectionReport,
    /// The first [`MAX_VIOLATION_MESSAGES`] violations, each with its line number.
    pub violations: Vec<String>,
}

/// The longest sections of a replay, counted in frames touched (zeroed, checked, copied,
/// or chunks walked in metadata) between two preemption points, each with the line that
/// did it (`line N: <op>`, empty when no line touched a frame). `check` and `heap` lines
/// (which run the full check of the heap they end) are diagnostics and not counted. Written flat into the report's JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SectionReport {
    /// Heap lines on heaps whose policy keeps the bound (`scrubheap`, `alloc`).
    pub max_section_frames: u64,
    /// The line that did it.
    pub max_section_op: String,
    /// The bound of the heap it ran on ([`scrubheap::Heap::section_bound`]: one batch plus
    /// the metadata walk constant); 0 if no line touched a frame.
    pub section_bound: u64,
    /// Populate-on-demand lines (`pod`, `touch`, `balloon`, `pod-target`, `destroy`).
    pub pod_max_section_frames: u64,
    /// The line that did it.
    pub pod_max_section_op: String,
    /// Any line on a heap of a baseline policy (`xen`, `xen-cap2m`: whole chunks scrubbed
    /// in place; `sync`: frees scrubbed whole), which do not keep the bound.
    pub baseline_max_section_frames: u64,
    /// The line that did it.
    pub baseline_max_section_op: String,
}

/// The populate-on-demand part of a [`ReplayReport`].
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PodReport {
    /// RAM entries of the PoD guests left at the end (frames).
    pub populated: u64,
    /// Their cache pages (frames).
    pub cache: u64,
    /// Their outstanding PoD entries (frames).
    pub entries: u64,
    /// Zeroed 2 MiB mappings reclaimed whole.
    pub superpages_reclaimed: u64,
    /// Zeroed 4 KiB pages reclaimed.
    pub zero_pages_reclaimed: u64,
    /// 2 MiB mappings shattered by decrease reservations.
    pub superpages_shattered: u64,
    /// Guests crashed out of PoD memory.
    pub crashes: u64,
}

/// What one line did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// A blank or comment line: not an operation.
    Skipped,
    /// The operation succeeded.
    Ok,
    /// The operation failed and was counted under `kind`.
    Failed {
        /// The kind it is counted under.
        kind: String,
        /// What went wrong, for a person.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keys_are_the_documented_ones_in_order() {
        let mut rep = ReplayReport { ops: 3, ok: 2, ..ReplayReport::default() };
        rep.errors.insert("UnknownId".into(), 1);
        let v = serde_json::to_value(&rep).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        let want = [
            "ops",
            "ok",
            "errors",
            "invariant_violations",
            "final",
            "pod",
            "max_section_frames",
            "max_section_op",
            "section_bound",
            "pod_max_section_frames",
            "pod_max_section_op",
            "baseline_max_section_frames",
            "baseline_max_section_op",
            "violations",
        ];
        let mut sorted = want;
        sorted.sort_unstable();
        assert_eq!(keys, sorted);
        let text = serde_json::to_string(&rep).unwrap();
        let at: Vec<usize> = want.iter().map(|k| text.find(&format!("\"{k}\":")).unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "written in the documented order: {text}");
        assert_eq!(v["errors"]["UnknownId"], 1);
        assert_eq!(v["final"].as_object().unwrap().len(), 4);
        assert_eq!(v["pod"].as_object().unwrap().len(), 7);
    }
}
