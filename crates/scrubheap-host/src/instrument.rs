//! Measuring what a watchdog and a lock profiler would see: the gaps between consecutive
//! preemption points (in the thread's CPU time, so being descheduled by the host OS does
//! not count as work done without a preemption point; wall-clock gaps beside), and the
//! heap's node-lock hold times; and [`NoHeapWork`], which forbids heap work on a thread
//! while it holds a lock others wait on for scheduling only.

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use scrubheap::{LockObserver, Preempt};
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
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

/// Who an operation works for, as the report splits the longest sections.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Guest builders: allocations, scrub tickets, frees, balloons.
    Builder,
    /// Background scrubber threads.
    Scrubber,
    /// Long-term pins (moving a page out of the Movable zone first) and unpins.
    Pins,
    /// The hot-remove (offline, online).
    HotRemove,
    /// Populate-on-demand guests (create, touch, balloon, destroy).
    Pod,
}

impl Role {
    /// Every role, in report order.
    pub const ALL: [Role; 5] = [Role::Builder, Role::Scrubber, Role::Pins, Role::HotRemove, Role::Pod];

    /// The role of an operation, by the name it was entered with ([`PreemptRecorder::enter_op`]):
    /// `pod ...` is PoD, `pin` / `unpin` pins, `hot-remove ...` the hot-remove,
    /// `background scrub` a scrubber, anything else a builder's.
    pub fn of(op: &str) -> Role {
        if op.starts_with("pod ") {
            Role::Pod
        } else if op == "pin" || op == "unpin" {
            Role::Pins
        } else if op.starts_with("hot-remove") {
            Role::HotRemove
        } else if op == "background scrub" {
            Role::Scrubber
        } else {
            Role::Builder
        }
    }

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Role::Builder => "builders",
            Role::Scrubber => "scrubbers",
            Role::Pins => "pins",
            Role::HotRemove => "hot-remove",
            Role::Pod => "pod",
        }
    }
}

/// The sections of one operation: how many, and the longest in CPU and in wall time.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct OpSections {
    /// The operation's name, as entered.
    pub op: &'static str,
    /// Sections recorded.
    pub sections: u64,
    /// Longest, thread CPU ns.
    pub max_cpu_ns: u64,
    /// Longest, wall ns (includes time descheduled).
    pub max_wall_ns: u64,
}

/// Distinct operations a recorder keeps apart; any more are counted under the last.
const MAX_OPS: usize = 32;

/// Adds one section of `op` to `ops` (at most [`MAX_OPS`] entries).
fn note_op(ops: &mut Vec<OpSections>, op: &'static str, cpu_ns: u64, wall_ns: u64) {
    let i = match ops.iter().position(|o| o.op == op) {
        Some(i) => i,
        None if ops.len() < MAX_OPS => {
            ops.push(OpSections { op, sections: 0, max_cpu_ns: 0, max_wall_ns: 0 });
            ops.len() - 1
        }
        None => ops.len() - 1,
    };
    let o = &mut ops[i];
    o.sections += 1;
    o.max_cpu_ns = o.max_cpu_ns.max(cpu_ns);
    o.max_wall_ns = o.max_wall_ns.max(wall_ns);
    debug_assert!(ops.len() <= MAX_OPS);
}

thread_local! {
    /// Guards live on this thread that forbid heap work ([`NoHeapWork`]).
    static HEAP_FORBIDDEN: Cell<u32> = const { Cell::new(0) };
}

/// While one lives, the thread that made it must not enter the heap or move frames:
/// [`PreemptRecorder::enter`] and [`assert_heap_work_allowed`] panic. A lock that others
/// wait on for scheduling only (the run's scheduler lock) holds one beside its guard, so
/// no heap operation, copy or scrub ever runs under it. Not `Send`: it belongs to its
/// thread.
pub struct NoHeapWork(std::marker::PhantomData<*const ()>);

impl NoHeapWork {
    /// Forbids heap work on this thread until dropped.
    pub fn new() -> Self {
        HEAP_FORBIDDEN.with(|c| c.set(c.get() + 1));
        NoHeapWork(std::marker::PhantomData)
    }
}

impl Default for NoHeapWork {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NoHeapWork {
    fn drop(&mut self) {
        HEAP_FORBIDDEN.with(|c| c.set(c.get() - 1));
    }
}

/// Asserts that the calling thread may do heap work now (`what` names it in the panic).
///
/// # Panics
/// If a [`NoHeapWork`] guard is live on this thread.
pub fn assert_heap_work_allowed(what: &str) {
    let n = HEAP_FORBIDDEN.with(Cell::get);
    assert!(n == 0, "{what} under a lock that forbids heap work (the run's scheduler lock)");
}

/// Gaps between preemption points, one recorder per thread.
///
/// Call [`PreemptRecorder::enter`] when the thread enters a heap operation and
/// [`PreemptRecorder::exit`] when it returns; the heap calls [`Preempt::check`] at each
/// preemption point in between. Every interval enter→check→…→check→exit is one
/// non-preemptible section, counted under the operation entered
/// ([`PreemptRecorder::enter_op`]).
pub struct PreemptRecorder {
    last_cpu: Cell<u64>,
    last_wall: Cell<Option<Instant>>,
    entered_cpu: Cell<u64>,
    /// Yield once this much CPU time has passed since `enter` (the quantum).
    quantum_ns: u64,
    cpu: RefCell<Histogram<u64>>,
    max_wall_ns: Cell<u64>,
    /// The operation the thread is in, and the sections of every operation so far.
    op: Cell<&'static str>,
    ops: RefCell<Vec<OpSections>>,
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
            ops: RefCell::new(Vec::new()),
        }
    }

    /// The thread enters the heap operation `op` (named in the longest-section report;
    /// its [`Role`] is [`Role::of`] the name).
    pub fn enter_op(&self, op: &'static str) {
        self.op.set(op);
        self.enter();
    }

    /// The thread enters a heap operation.
    ///
    /// # Panics
    /// Under a [`NoHeapWork`] guard.
    pub fn enter(&self) {
        assert_heap_work_allowed(self.op.get());
        let now = thread_cpu_ns();
        self.last_cpu.set(now);
        self.entered_cpu.set(now);
        self.last_wall.set(Some(Instant::now()));
    }

    fn mark(&self) -> u64 {
        let now = thread_cpu_ns();
        let gap = now.saturating_sub(self.last_cpu.get()).max(1);
        self.cpu.borrow_mut().saturating_record(gap);
        let wall = self.last_wall.get().map_or(0, |w| w.elapsed().as_nanos() as u64);
        self.max_wall_ns.set(self.max_wall_ns.get().max(wall));
        note_op(&mut self.ops.borrow_mut(), self.op.get(), gap, wall);
        self.last_cpu.set(now);
        self.last_wall.set(Some(Instant::now()));
        now
    }

    /// The operation returned (a thread boosted while it held a node lock goes back to
    /// its own priority: see [`crate::priority::boost_lock_holds`]).
    pub fn exit(&self) {
        self.mark();
        self.last_wall.set(None);
        crate::priority::unboost();
    }

    /// All sections recorded (CPU ns).
    pub fn histogram(&self) -> Histogram<u64> {
        self.cpu.borrow().clone()
    }

    /// The longest section so far (CPU µs) and the operation it was in.
    pub fn longest(&self) -> (f64, &'static str) {
        let ops = self.ops.borrow();
        let l = ops.iter().max_by_key(|o| o.max_cpu_ns).map_or((0, ""), |o| (o.max_cpu_ns, o.op));
        (l.0 as f64 / 1000.0, l.1)
    }

    /// The sections of every operation so far.
    pub fn ops(&self) -> Vec<OpSections> {
        self.ops.borrow().clone()
    }

    /// Adds this recorder's sections into `into` (for a run-wide figure).
    pub fn merge_into(&self, into: &Sections) {
        into.merge(&self.cpu.borrow(), self.max_wall_ns.get(), &self.ops.borrow());
    }
}

impl Preempt for PreemptRecorder {
    fn check(&self) -> bool {
        let now = self.mark();
        now.saturating_sub(self.entered_cpu.get()) >= self.quantum_ns
    }
}

/// Drives a heap job (an offline, online or pin) to its end: `advance` runs bounded steps
/// until the job ends or its `Preempt` (a [`PreemptRecorder`] whose quantum ran out) asks
/// to yield; between two calls the thread gives the CPU up. Every job the heap hands out
/// ends by itself (an offline at its deadline or its busy-poll limit), so this loop does.
pub(crate) fn drive<T, E>(mut advance: impl FnMut() -> Result<Option<T>, E>) -> Result<T, E> {
    loop {
        if let Some(done) = advance()? {
            return Ok(done);
        }
        std::thread::yield_now();
    }
}

/// Non-preemptible sections gathered from every thread of a run.
#[derive(Default)]
pub struct Sections {
    inner: Mutex<Option<(Histogram<u64>, u64)>>,
    ops: Mutex<Vec<OpSections>>,
}

impl Sections {
    fn merge(&self, h: &Histogram<u64>, max_wall_ns: u64, ops: &[OpSections]) {
        let mut g = self.inner.lock();
        let (all, wall) = g.get_or_insert_with(|| (histogram(), 0));
        all.add(h).expect("same bounds");
        *wall = (*wall).max(max_wall_ns);
        let mut mine = self.ops.lock();
        for o in ops {
            match mine.iter_mut().find(|m| m.op == o.op) {
                Some(m) => {
                    m.sections += o.sections;
                    m.max_cpu_ns = m.max_cpu_ns.max(o.max_cpu_ns);
                    m.max_wall_ns = m.max_wall_ns.max(o.max_wall_ns);
                }
                None => mine.push(*o),
            }
        }
    }

    /// The operation the longest section was in ("" if none was recorded).
    pub fn longest_op(&self) -> &'static str {
        self.ops.lock().iter().max_by_key(|o| o.max_cpu_ns).map_or("", |o| o.op)
    }

    /// Every operation's sections, longest first.
    pub fn by_op(&self) -> Vec<OpSections> {
        let mut v = self.ops.lock().clone();
        v.sort_by_key(|o| (std::cmp::Reverse(o.max_cpu_ns), o.op));
        v
    }

    /// The longest section of the operations of `role` (CPU ns) and its operation;
    /// `(0, "")` if none was recorded.
    pub fn longest_of(&self, role: Role) -> (u64, &'static str) {
        let ops = self.ops.lock();
        ops.iter()
            .filter(|o| Role::of(o.op) == role)
            .max_by_key(|o| o.max_cpu_ns)
            .map_or((0, ""), |o| (o.max_cpu_ns, o.op))
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
    /// The longest hold by a background scrubber thread, and by any other, ns.
    scrubber_max_ns: AtomicU64,
    others_max_ns: AtomicU64,
}

impl LockTimer {
    /// A new timer, to be given to [`scrubheap::Heap::set_lock_observer`].
    pub fn new() -> Arc<Self> {
        Arc::new(LockTimer {
            hist: Mutex::new(histogram()),
            scrubber_max_ns: AtomicU64::new(0),
            others_max_ns: AtomicU64::new(0),
        })
    }

    /// (p50, p99, p99.9, p99.99, max) in µs, and the number of holds.
    pub fn quantiles_us(&self) -> ([f64; 5], u64) {
        let h = self.hist.lock();
        let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
        ([q(0.5), q(0.99), q(0.999), q(0.9999), h.max() as f64 / 1000.0], h.len())
    }

    /// The longest hold by a background scrubber thread (one that set its
    /// [`ScrubPriority`](crate::ScrubPriority)), µs: where a priority inversion shows.
    pub fn scrubber_max_us(&self) -> f64 {
        self.scrubber_max_ns.load(Relaxed) as f64 / 1000.0
    }

    /// The longest hold by any other thread (builders, pins, hot-remove, PoD), µs.
    pub fn others_max_us(&self) -> f64 {
        self.others_max_ns.load(Relaxed) as f64 / 1000.0
    }

    /// Forgets everything recorded so far.
    pub fn reset(&self) {
        self.hist.lock().reset();
        self.scrubber_max_ns.store(0, Relaxed);
        self.others_max_ns.store(0, Relaxed);
    }
}

impl LockObserver for LockTimer {
    /// Also tells [`crate::priority`], which counts the locks a thread holds and boosts
    /// a scrubber that asked for it (inside the hold: its system call counts).
    fn acquired(&self, _node: usize) {
        LOCK_TAKEN.with(|c| c.set(Some(Instant::now())));
        crate::priority::lock_taken();
    }
    fn released(&self, _node: usize) {
        crate::priority::lock_released();
        if let Some(t) = LOCK_TAKEN.with(|c| c.take()) {
            let ns = (t.elapsed().as_nanos() as u64).max(1);
            self.hist.lock().saturating_record(ns);
            let max = if crate::priority::is_scrubber() { &self.scrubber_max_ns } else { &self.others_max_ns };
            max.fetch_max(ns, Relaxed);
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
    fn sections_are_kept_apart_by_operation_and_role() {
        let r = PreemptRecorder::new(u64::MAX);
        for op in ["alloc", "pin", "alloc", "hot-remove offline", "pod touch", "background scrub"] {
            r.enter_op(op);
            r.check();
            r.exit();
        }
        let ops = r.ops();
        assert_eq!(ops.iter().find(|o| o.op == "alloc").unwrap().sections, 4, "two calls, two sections each");
        assert_eq!(ops.len(), 5);
        let all = Sections::default();
        r.merge_into(&all);
        r.merge_into(&all);
        assert_eq!(all.by_op().iter().find(|o| o.op == "pin").unwrap().sections, 4, "merged twice");
        for role in Role::ALL {
            let (ns, op) = all.longest_of(role);
            assert!(ns > 0 && Role::of(op) == role, "{role:?}: {op}");
        }
    }

    #[test]
    fn heap_work_under_a_no_heap_work_guard_panics() {
        let r = std::thread::spawn(|| {
            let _g = NoHeapWork::new();
            assert_heap_work_allowed("a copy");
        })
        .join();
        assert!(r.is_err(), "the assertion fires under the guard");
        drop(NoHeapWork::new());
        assert_heap_work_allowed("work after the guard is gone");
        let rec = PreemptRecorder::new(u64::MAX);
        rec.enter_op("alloc");
        rec.exit();
        let r = std::thread::spawn(|| {
            let _g = NoHeapWork::new();
            PreemptRecorder::new(u64::MAX).enter_op("alloc");
        })
        .join();
        let e = r.unwrap_err();
        let msg = e.downcast_ref::<String>().unwrap();
        assert!(msg.contains("alloc under a lock that forbids heap work"), "{msg}");
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
