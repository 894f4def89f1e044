//! Measuring what a watchdog and a lock profiler would see: the gaps between consecutive
//! preemption points (in the thread's CPU time, so being descheduled by the host OS does
//! not count as work done without a preemption point; wall-clock gaps beside), and the
//! heap's node-lock hold times.

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use scrubheap::{LockObserver, Preempt};
use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Instant;

/// Nanoseconds of CPU time this thread has used.
fn thread_cpu_ns() -> u64 {
    crate::thread_cpu_time().as_nanos() as u64
}

fn histogram() -> Histogram<u64> {
    // 1 ns to 100 s, 3 significant figures.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// Gaps between preemption points, one recorder per thread.
///
/// Call [`PreemptRecorder::enter`] when the thread enters a heap operation and
/// [`PreemptRecorder::exit`] when it returns; the heap calls [`Preempt::check`] at each
/// preemption point in between. Every interval enter→check→…→check→exit is one
/// non-preemptible section.
pub struct PreemptRecorder {
    last_cpu: Cell<u64>,
    last_wall: Cell<Option<Instant>>,
    entered_cpu: Cell<u64>,
    /// Yield once this much CPU time has passed since `enter` (the quantum).
    quantum_ns: u64,
    cpu: RefCell<Histogram<u64>>,
    max_wall_ns: Cell<u64>,
    /// The operation the thread is in, and the longest section so far with its operation.
    op: Cell<&'static str>,
    longest: Cell<(u64, &'static str)>,
}

impl PreemptRecorder {
    /// A recorder that asks the operation to yield once `quantum_ns` of CPU time has
    /// passed since it entered (0: at every preemption point).
    pub fn new(quantum_ns: u64) -> Self {
        PreemptRecorder {
            last_cpu: Cell::new(0),
            last_wall: Cell::new(None),
            entered_cpu: Cell::new(0),
            quantum_ns,
            cpu: RefCell::new(histogram()),
            max_wall_ns: Cell::new(0),
            op: Cell::new("heap operation"),
            longest: Cell::new((0, "")),
        }
    }

    /// The thread enters the heap operation `op` (named in the longest-section report).
    pub fn enter_op(&self, op: &'static str) {
        self.op.set(op);
        self.enter();
    }

    /// The thread enters a heap operation.
    pub fn enter(&self) {
        let now = thread_cpu_ns();
        self.last_cpu.set(now);
        self.entered_cpu.set(now);
        self.last_wall.set(Some(Instant::now()));
    }

    fn mark(&self) -> u64 {
        let now = thread_cpu_ns();
        let gap = now.saturating_sub(self.last_cpu.get()).max(1);
        self.cpu.borrow_mut().saturating_record(gap);
        if gap > self.longest.get().0 {
            self.longest.set((gap, self.op.get()));
        }
        self.last_cpu.set(now);
        if let Some(w) = self.last_wall.get() {
            self.max_wall_ns.set(self.max_wall_ns.get().max(w.elapsed().as_nanos() as u64));
        }
        self.last_wall.set(Some(Instant::now()));
        now
    }

    /// The operation returned.
    pub fn exit(&self) {
        self.mark();
        self.last_wall.set(None);
    }

    /// All sections recorded (CPU ns).
    pub fn histogram(&self) -> Histogram<u64> {
        self.cpu.borrow().clone()
    }

    /// The longest section so far (CPU µs) and the operation it was in.
    pub fn longest(&self) -> (f64, &'static str) {
        let (ns, op) = self.longest.get();
        (ns as f64 / 1000.0, op)
    }

    /// Adds this recorder's sections into `into` (for a run-wide figure).
    pub fn merge_into(&self, into: &Sections) {
        into.merge(&self.cpu.borrow(), self.max_wall_ns.get(), self.longest.get());
    }
}

impl Preempt for PreemptRecorder {
    fn check(&self) -> bool {
        let now = self.mark();
        now.saturating_sub(self.entered_cpu.get()) >= self.quantum_ns
    }
}

/// Non-preemptible sections gathered from every thread of a run.
#[derive(Default)]
pub struct Sections {
    inner: Mutex<Option<(Histogram<u64>, u64)>>,
    longest: Mutex<(u64, &'static str)>,
}

impl Sections {
    fn merge(&self, h: &Histogram<u64>, max_wall_ns: u64, longest: (u64, &'static str)) {
        let mut g = self.inner.lock();
        let (all, wall) = g.get_or_insert_with(|| (histogram(), 0));
        all.add(h).expect("same bounds");
        *wall = (*wall).max(max_wall_ns);
        let mut l = self.longest.lock();
        if longest.0 > l.0 {
            *l = longest;
        }
    }

    /// The operation the longest section was in ("" if none was recorded).
    pub fn longest_op(&self) -> &'static str {
        self.longest.lock().1
    }

    /// The CPU-time quantile `q` (0..=1) of all sections, µs.
    pub fn quantile_us(&self, q: f64) -> f64 {
        self.inner.lock().as_ref().map_or(0.0, |(h, _)| h.value_at_quantile(q) as f64 / 1000.0)
    }

    /// (longest CPU µs, longest wall µs, sections recorded).
    pub fn summary(&self) -> (f64, f64, u64) {
        match &*self.inner.lock() {
            Some((h, w)) => (h.max() as f64 / 1000.0, *w as f64 / 1000.0, h.len()),
            None => (0.0, 0.0, 0),
        }
    }
}

thread_local! {
    static LOCK_TAKEN: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Times every node-lock hold of a heap (wall clock, from acquire to release).
pub struct LockTimer {
    hist: Mutex<Histogram<u64>>,
}

impl LockTimer {
    /// A new timer, to be given to [`scrubheap::Heap::set_lock_observer`].
    pub fn new() -> Arc<Self> {
        Arc::new(LockTimer { hist: Mutex::new(histogram()) })
    }

    /// (p50, p99, p99.9, max) in µs, and the number of holds.
    pub fn quantiles_us(&self) -> ([f64; 4], u64) {
        let h = self.hist.lock();
        let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
        ([q(0.5), q(0.99), q(0.999), h.max() as f64 / 1000.0], h.len())
    }

    /// Forgets everything recorded so far.
    pub fn reset(&self) {
        self.hist.lock().reset();
    }
}

impl LockObserver for LockTimer {
    fn acquired(&self, _node: usize) {
        LOCK_TAKEN.with(|c| c.set(Some(Instant::now())));
    }
    fn released(&self, _node: usize) {
        if let Some(t) = LOCK_TAKEN.with(|c| c.take()) {
            let ns = (t.elapsed().as_nanos() as u64).max(1);
            self.hist.lock().saturating_record(ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_the_gaps_between_points() {
        let r = PreemptRecorder::new(u64::MAX);
        r.enter();
        assert!(!r.check());
        r.check();
        r.exit();
        assert_eq!(r.histogram().len(), 3, "enter→check, check→check, check→exit");
        let all = Sections::default();
        r.merge_into(&all);
        assert_eq!(all.summary().2, 3);
        assert_eq!(all.longest_op(), "heap operation");
    }

    #[test]
    fn the_longest_section_is_named_by_its_operation() {
        let r = PreemptRecorder::new(u64::MAX);
        r.enter_op("quick");
        r.exit();
        r.enter_op("slow");
        let t = std::time::Instant::now();
        while t.elapsed().as_millis() < 5 {
            std::hint::spin_loop();
        }
        r.exit();
        r.enter_op("quick again");
        r.exit();
        assert_eq!(r.longest().1, "slow");
        let all = Sections::default();
        r.merge_into(&all);
        assert_eq!(all.longest_op(), "slow");
    }

    #[test]
    fn a_zero_quantum_yields_at_every_point() {
        let r = PreemptRecorder::new(0);
        r.enter();
        assert!(r.check());
    }

    #[test]
    fn lock_holds_are_recorded_per_acquire_release_pair() {
        let t = LockTimer::new();
        t.acquired(0);
        t.released(0);
        t.released(0);
        assert_eq!(t.quantiles_us().1, 1, "a release without an acquire is not a hold");
    }
}
