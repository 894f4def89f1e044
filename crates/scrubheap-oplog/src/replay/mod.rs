//! The [`Replayer`]: runs op-log lines against a fresh metadata-only heap, keeping the
//! log's allocations by id (`held`), checking the heap after every line (`checks`), and
//! counting what happened into a [`ReplayReport`]. Every populate-on-demand call is in
//! `pod`.

use crate::op::Op;
use crate::parse::parse_line;
use crate::report::{FinalCounts, Outcome, ReplayReport, MAX_VIOLATION_MESSAGES};
use crate::{kind, SparseMemory, DEFAULT_MAX_FRAMES, MAX_NODES};
use held::{Held, RecordMoves};
use scrubheap::ClaimError;
use scrubheap::{
    Claim, ClaimTarget, CountingMemory, CountingMigrator, CountingPreempt, DomId, Heap, HeapConfig, HeapError, Mfn,
    NoDeadline, Policy, RangeOp, SectionCounter, StepBudget,
};
use scrubheap_pod::Pods;
use std::collections::BTreeMap;
use std::sync::Arc;

mod checks;
mod held;
mod pod;
#[cfg(test)]
mod tests;

pub use held::Allocation;

/// Why a line failed.
struct Fail {
    kind: &'static str,
    message: String,
}

impl From<HeapError> for Fail {
    fn from(e: HeapError) -> Self {
        Fail { kind: e.kind(), message: e.to_string() }
    }
}

fn fail<T>(kind: &'static str, message: String) -> Result<T, Fail> {
    Err(Fail { kind, message })
}

/// The replayer's heap: metadata only, over [`SparseMemory`], every frame it zeroes,
/// checks or copies counted into the replayer's [`SectionCounter`].
pub type ReplayHeap = Heap<CountingMemory<SparseMemory>>;

/// Runs op-log lines against a [`Heap`] over [`SparseMemory`], keeping the log's allocations
/// by id, counting results and checking the heap after every line. Every operation runs
/// with a counting [`scrubheap::Preempt`] and memory, so the report says the most frames
/// one line touched between two preemption points (`max_section_frames`) and which line.
pub struct Replayer {
    max_frames: u64,
    heap: Option<ReplayHeap>,
    /// Counts the current line's work between its preemption points.
    counter: Arc<SectionCounter>,
    /// The PoD guests of the current heap.
    pods: Pods,
    total_frames: u64,
    /// Live ids to their serial numbers.
    names: BTreeMap<String, u64>,
    /// Allocations with frames left, by serial number.
    held: BTreeMap<u64, Held>,
    /// Every held piece: first frame to (order, serial). Pieces never overlap.
    pieces: BTreeMap<u64, (u8, u64)>,
    held_frames: u64,
    /// Parts of allocations that pins or offlines moved: (serial, offset in the
    /// allocation, 64 - order: inner parts sort after the parts holding them) to (first
    /// frame now, order).
    moved: BTreeMap<(u64, u64, u8), (u64, u8)>,
    next_serial: u64,
    line_no: u64,
    report: ReplayReport,
}

impl Default for Replayer {
    fn default() -> Self {
        Self::new()
    }
}

impl Replayer {
    /// A replayer with no heap yet and the [`DEFAULT_MAX_FRAMES`] guard.
    pub fn new() -> Self {
        Self::with_max_frames(DEFAULT_MAX_FRAMES)
    }

    /// A replayer whose `heap` lines may ask for at most `max_frames` frames in all.
    pub fn with_max_frames(max_frames: u64) -> Self {
        Replayer {
            max_frames,
            heap: None,
            counter: Arc::new(SectionCounter::default()),
            pods: Pods::new(),
            total_frames: 0,
            names: BTreeMap::new(),
            held: BTreeMap::new(),
            pieces: BTreeMap::new(),
            held_frames: 0,
            moved: BTreeMap::new(),
            next_serial: 0,
            line_no: 0,
            report: ReplayReport::default(),
        }
    }

    /// The current heap, if a `heap` line built one.
    pub fn heap(&self) -> Option<&ReplayHeap> {
        self.heap.as_ref()
    }

    /// The PoD guests of the current heap.
    pub fn pods(&self) -> &Pods {
        &self.pods
    }

    /// The ids that still hold frames, in name order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.names.keys().map(String::as_str)
    }

    /// What allocation `id` still holds, if anything.
    pub fn allocation(&self, id: &str) -> Option<Allocation> {
        let serial = *self.names.get(id)?;
        let h = self.held.get(&serial)?;
        let remaining = self.pieces_of(serial).into_iter().map(|(m, o)| (Mfn(m), o)).collect();
        Some(Allocation { owner: h.owner, first: Mfn(h.first), order: h.order, node: h.node, remaining })
    }

    /// The counts so far (without the final full check that [`Replayer::finish`] runs).
    pub fn report(&self) -> &ReplayReport {
        &self.report
    }

    /// Replays every line of `text` (`\n` or `\r\n` line ends).
    pub fn replay_str(&mut self, text: &str) {
        for line in text.split('\n') {
            self.step(line);
        }
    }

    /// Replays `bytes`, read as UTF-8 with invalid sequences replaced.
    pub fn replay_bytes(&mut self, bytes: &[u8]) {
        self.replay_str(&String::from_utf8_lossy(bytes));
    }

    /// Runs the full invariant check on the heap left, and returns the report.
    pub fn finish(mut self) -> ReplayReport {
        self.end_heap();
        self.report
    }

    /// Parses and runs one line, then checks the heap.
    pub fn step(&mut self, line: &str) -> Outcome {
        self.line_no += 1;
        match parse_line(line) {
            Ok(None) => Outcome::Skipped,
            Ok(Some(op)) => self.run(op),
            Err(e) => self.count(Err(Fail { kind: kind::PARSE, message: e.0 })),
        }
    }

    /// Runs one operation as if it were the next line, then checks the heap (what
    /// [`Replayer::step`] does with a line that parses to `op`).
    pub fn apply(&mut self, op: Op) -> Outcome {
        self.line_no += 1;
        self.run(op)
    }

    fn run(&mut self, op: Op) -> Outcome {
        let before = self.heap.as_ref().map(Heap::stats);
        // A touch that crashes its guest gives the guest's pages back: an error that changes the heap.
        let may_change_on_error =
            matches!(op, Op::Heap { .. } | Op::FreeId { .. } | Op::Offline { .. } | Op::Touch { .. });
        let pod = matches!(
            op,
            Op::Pod { .. } | Op::Touch { .. } | Op::Balloon { .. } | Op::PodTarget { .. } | Op::Destroy { .. }
        );
        // A `check` line is a diagnostic (O(frames), zero checks of PoD pages), and so is
        // what a `heap` line does (the full check of the heap it ends): not sections.
        let diagnostic = matches!(op, Op::Check | Op::Heap { .. });
        let what = op.to_string();
        self.counter.reset();
        let res = self.exec(op);
        // The line returned: its last section ends here.
        self.counter.close();
        if !diagnostic {
            self.note_section(&what, pod);
        }
        if let (Err(_), Some(before), Some(heap)) = (&res, before, &self.heap) {
            let after = heap.stats();
            if !may_change_on_error && after != before {
                self.violation(format!("a refused operation changed the heap: {before:?} -> {after:?}"));
            }
        }
        self.cheap_checks();
        self.count(res)
    }

    /// Keeps the line's longest section if it is the longest so far, by kind of heap:
    /// populate-on-demand lines apart, and heaps of the baseline policies (`xen`, `sync`)
    /// apart, since they do not keep the bound.
    fn note_section(&mut self, what: &str, pod: bool) {
        let frames = self.counter.max();
        let Some(heap) = &self.heap else { return };
        let p = heap.policy();
        let baseline = p.whole_chunk_in_place() || p.scrubs_on_free();
        let s = &mut self.report.sections;
        let (max, op) = match (pod, baseline) {
            (_, true) => (&mut s.baseline_max_section_frames, &mut s.baseline_max_section_op),
            (true, false) => (&mut s.pod_max_section_frames, &mut s.pod_max_section_op),
            (false, false) => (&mut s.max_section_frames, &mut s.max_section_op),
        };
        if frames > *max {
            *max = frames;
            *op = format!("line {}: {what}", self.line_no);
            if !pod && !baseline {
                s.section_bound = heap.section_bound();
            }
        }
    }

    /// A counting preempt for the current line: `yields` is what it answers.
    pub(super) fn preempt(&self, yields: bool) -> CountingPreempt {
        CountingPreempt::new(self.counter.clone(), yields)
    }

    fn count(&mut self, res: Result<(), Fail>) -> Outcome {
        self.report.ops += 1;
        match res {
            Ok(()) => {
                self.report.ok += 1;
                Outcome::Ok
            }
            Err(f) => {
                *self.report.errors.entry(f.kind.to_string()).or_default() += 1;
                Outcome::Failed { kind: f.kind.to_string(), message: f.message }
            }
        }
    }

    fn violation(&mut self, msg: String) {
        self.report.invariant_violations += 1;
        if self.report.violations.len() < MAX_VIOLATION_MESSAGES {
            self.report.violations.push(format!("line {}: {msg}", self.line_no));
        }
    }

    /// Full check of the current heap, then drops it and every id.
    fn end_heap(&mut self) {
        if let Some(heap) = self.heap.take() {
            self.pod_end();
            let s = heap.stats();
            self.report.final_ = FinalCounts {
                free_clean: s.free_clean,
                free_dirty: s.free_dirty,
                allocated: s.allocated,
                offline: s.offline,
            };
            if let Err(e) = heap.check_invariants() {
                self.violation(format!("{e}"));
            }
            if let Err(e) = pod::pod_invariants(&self.pods, &heap) {
                self.violation(e);
            }
        } else {
            self.report.final_ = FinalCounts::default();
            (self.report.pod.populated, self.report.pod.cache, self.report.pod.entries) = (0, 0, 0);
        }
        self.total_frames = 0;
        self.names.clear();
        self.held.clear();
        self.pieces.clear();
        self.moved.clear();
        self.held_frames = 0;
        self.pods = Pods::new();
    }

    fn heap_or_fail(&self) -> Result<&ReplayHeap, Fail> {
        match &self.heap {
            Some(h) => Ok(h),
            None => fail(kind::NO_HEAP, "no heap: the log needs a `heap` line first".into()),
        }
    }

    fn exec(&mut self, op: Op) -> Result<(), Fail> {
        match op {
            Op::Heap { nodes, frames_per_node, movable_from, policy } => {
                self.new_heap(nodes, frames_per_node, movable_from, policy)
            }
            Op::Alloc { id, req } => self.alloc(id.as_str(), &req),
            Op::AllocAt { id, mfn, order, dom } => self.alloc_at(id.as_str(), mfn, order, dom),
            Op::FreeId { id } => self.free_id(id.as_str()),
            Op::FreePart { id, offset, order } => self.free_part(id.as_str(), offset, order),
            Op::FreeMfn { mfn, order, dom } => {
                let heap = self.heap_or_fail()?;
                self.range(heap, RangeOp::Free, mfn, order, dom)?;
                self.forget(mfn.0, order, dom);
                Ok(())
            }
            Op::Scrub { node, pages } => self.scrub(node, pages),
            Op::Claim { dom, target, pages } => self.claim(dom, target, pages),
            Op::ClaimCancel { dom } => {
                let heap = self.heap_or_fail()?;
                heap.claim_cancel(dom);
                if !heap.claims_of(dom).is_empty() {
                    self.violation(format!("{dom} still has claims after claim_cancel"));
                }
                Ok(())
            }
            Op::Check => {
                let heap = self.heap_or_fail()?;
                let r = heap.check_invariants().map_err(|e| format!("{e}"));
                if let Err(e) = r.and_then(|()| pod::pod_invariants(&self.pods, heap)) {
                    self.violation(e);
                }
                Ok(())
            }
            Op::Pod { .. } | Op::Touch { .. } | Op::Balloon { .. } | Op::PodTarget { .. } | Op::Destroy { .. } => {
                self.pod_op(op)
            }
            Op::Pin { id, offset, order, pin } => self.pin(id.as_str(), offset, order, pin),
            Op::Offline { mfn, count, steps } => {
                let heap = self.heap_or_fail()?;
                let moves = RecordMoves::default();
                let (counted, preempt) = (CountingMigrator::new(&moves, self.counter.clone()), self.preempt(true));
                let r = match steps {
                    Some(s) => heap.offline(mfn, count, &counted, &StepBudget::new(s), &preempt),
                    None => heap.offline(mfn, count, &counted, &NoDeadline, &preempt),
                };
                drop(counted);
                self.apply_moves(moves);
                r.map(|_| ()).map_err(Fail::from)
            }
            Op::Online { mfn, count } => {
                Ok(self.heap_or_fail()?.online(mfn, count, &self.preempt(true)).map(|_| ())?)
            }
            Op::Broken { mfn } => Ok(self.heap_or_fail()?.mark_broken(mfn).map(|_| ())?),
        }
    }

    fn new_heap(&mut self, nodes: u64, fpn: u64, movable_from: Option<u64>, policy: Policy) -> Result<(), Fail> {
        self.end_heap();
        if nodes > MAX_NODES {
            return fail(kind::TOO_LARGE, format!("{nodes} nodes: the replayer allows at most {MAX_NODES}"));
        }
        match nodes.checked_mul(fpn) {
            Some(total) if total <= self.max_frames => {}
            _ => {
                return fail(
                    kind::TOO_LARGE,
                    format!("{nodes} x {fpn} frames is more than the replay limit of {} frames", self.max_frames),
                )
            }
        }
        let mut config = HeapConfig::uniform(nodes as usize, fpn).with_policy(policy);
        if let Some(m) = movable_from {
            config = config.with_movable_from(m);
        }
        self.heap = Some(Heap::new(config, CountingMemory::new(SparseMemory::new(), self.counter.clone()))?);
        self.pods = Pods::new();
        self.total_frames = nodes * fpn;
        Ok(())
    }

    fn claim(&mut self, dom: DomId, target: ClaimTarget, pages: u64) -> Result<(), Fail> {
        let heap = self.heap_or_fail()?;
        let mut set = heap.claims_of(dom);
        set.retain(|c| c.target != target);
        if pages > 0 {
            set.push(Claim { target, frames: pages });
        }
        // A set whose total does not fit in 64 bits can never be met; the heap sums it
        // unchecked, so refuse it here as the heap would.
        if set.iter().try_fold(0u64, |t, c| t.checked_add(c.frames)).is_none() {
            let s = heap.stats();
            let free = s.free_clean + s.free_dirty;
            let own = set.iter().filter(|c| c.target != target).fold(0u64, |t, c| t.saturating_add(c.frames));
            let available = free.saturating_sub(s.claimed.saturating_sub(own));
            return Err(HeapError::Claim(ClaimError::ClaimExceedsFree {
                requested: u64::MAX,
                where_: "the whole heap".into(),
                available,
            })
            .into());
        }
        heap.claim_set(dom, &set)?;
        let now = heap.claims_of(dom);
        let entry = now.iter().find(|c| c.target == target).map_or(0, |c| c.frames);
        if entry != pages {
            self.violation(format!("claim_set gave {dom} {entry} frames at {target:?}, not {pages}"));
        }
        Ok(())
    }
}
