//! The discrete-event engine: CPUs are actors on a virtual nanosecond clock; each actor's
//! step is one call into the real heap, charged modelled time for the bytes the call
//! zeroed (per-core and shared per-node bandwidth, remote penalties), the heap locks it
//! took (queues: one lock for the Xen-like policies, one per node otherwise) and its
//! fixed costs. A step ends at a preemption point; its length is a non-preemptible
//! section, which the watchdog checks.
//!
//! The heap's state changes when the call is made; the modelled time of the call follows.
//! Between steps nothing is in flight inside the heap (the simulation is one thread), so
//! every check after an event sees a quiescent heap.

use crate::memory::{LockCounter, SimMemory};
use crate::preset::{GIB, MIB, PAGE};
use crate::report::{BytesScrubbed, Checks, EventCounts, P50Max, PolicyResult, PolicyRun, Sample};
use crate::scenario::{Action, ClaimMode, Scenario};
use scrubheap::{
    AllocRequest, AllocStart, Claim, ClaimTarget, DomId, Extent, Heap, HeapConfig, HeapError, Mfn, NodeSpec, Policy,
    ScrubTicket,
};
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};
use std::sync::Arc;

/// Options of one run.
#[derive(Default)]
pub struct RunOptions<'a> {
    /// Run the heap's full `check_invariants()` every this many heap calls (events that
    /// call into the heap; the others change no heap state). None: chosen from the heap's
    /// size: every call up to 2^10 frames, every frames/2^10 calls above, rounded up to a
    /// power of two.
    pub full_check_every: Option<u64>,
    /// Called now and then with the simulated time, seconds.
    pub progress: Option<&'a (dyn Fn(f64) + Sync)>,
    /// Charge every scrub batch as a segment of its own, with its own event and its own
    /// rate (the engine before batches were merged; kept to compare the two). By default,
    /// when the bandwidth shrank a call's batches below the heap's fixed batch, the
    /// batches of the call that zero the same node are one segment of at most one fixed
    /// batch, one rate and one event, their preemption points still placed batch by batch.
    pub segment_per_batch: bool,
}

/// Simulates `scenario` under `policy`. Single-threaded and deterministic.
pub fn run(scenario: &Scenario, policy: Policy, opts: &RunOptions) -> Result<PolicyRun, String> {
    scenario.validate()?;
    let host = &scenario.host;
    let fpn = host.frames_per_node();
    let cfg = HeapConfig {
        frame_size: host.frame_size,
        first: Mfn(0),
        nodes: (0..host.nodes)
            .map(|n| NodeSpec { frames: fpn, movable_from: None, has_cpus: host.has_cpus(n) })
            .collect(),
        distance: (0..host.nodes).map(|a| (0..host.nodes).map(|b| host.distance(a, b)).collect()).collect(),
        policy,
        scrub_batch: host.scrub_batch_frames(),
        initially_dirty: scenario.initially_dirty,
        cpus: 1,
    };
    let mem = SimMemory::new(Mfn(0), fpn * host.nodes as u64, scenario.initially_dirty);
    let mut heap = Heap::new(cfg, &mem).map_err(|e| e.to_string())?;
    let locks = Arc::new(LockCounter::new(host.nodes));
    heap.set_lock_observer(locks.clone());
    let heap = heap;
    let mut e = Engine::new(scenario, &heap, locks, opts);
    e.run();
    Ok(e.finish())
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// Scenario event `i` is due.
    Op(usize),
    /// CPU `c` reaches its next step (a preemption point).
    Step(usize),
    /// CPU `c` finished a phase of its step (a zeroing segment, or the fixed costs).
    Phase(usize),
    /// Take a timeline sample.
    Sample,
}

/// Bytes of zeroing charged as one segment (the rate is re-evaluated between segments).
const SEGMENT: u64 = 4 * MIB;
/// Batches an idle CPU zeroes per heap call (each followed by a preemption point).
const SCRUB_BATCHES: u64 = 16;
/// Extents an extent-granular teardown frees per step.
const EXTENTS_PER_STEP: usize = 64;
/// The time one scrub batch of the `scrubheap` policy is sized to take at the bandwidth
/// its writer is expected to get: half the 1 ms goal, leaving the other half for writers
/// that join during the batch and for lock waits.
const SECTION_TARGET_NS: u64 = 500_000;
/// How long a builder that yielded to wait for other CPUs (a remote ticket's helpers, a
/// scrubber's handback) sleeps before it looks again: a scheduler tick of 1 ms
/// (an assumption: Xen's credit2 ratelimit and Linux's tick are of that order).
const POLL_NS: u64 = 1_000_000;
/// Bytes a page-granular teardown frees per step (a preemption check every 2 MiB).
const PAGES_BYTES_PER_STEP: u64 = 2 * MIB;

#[derive(Copy, Clone, PartialEq, Eq)]
enum StepKind {
    Scrub,
    Toolstack,
}

struct CreateTask<'h> {
    guest: usize,
    dom: DomId,
    measure: bool,
    started: u64,
    claimed: bool,
    claim_done: bool,
    remaining: u64,
    /// Slots being filled with smaller extents after a larger one failed: (level, bytes left).
    fills: Vec<(usize, u64)>,
    ticket: Option<ScrubTicket<'h, &'h SimMemory>>,
}

struct DestroyTask {
    guest: usize,
    measure: bool,
    started: u64,
    then_create: bool,
    /// Frames of the first extent already freed (page-granular teardown).
    cursor: u64,
}

enum Task<'h> {
    Create(Box<CreateTask<'h>>),
    Destroy(DestroyTask),
}

struct Cpu<'h> {
    node: usize,
    builder: bool,
    task: Option<Task<'h>>,
    /// A Step or Phase event is queued for it.
    active: bool,
    kind: StepKind,
    step_start: u64,
    section_start: u64,
    /// Zeroing left in this step: (node, bytes, whether a preemption point follows it).
    zero: VecDeque<(usize, u64, bool)>,
    /// The zeroing segment in flight: (node, bytes).
    seg: Option<(usize, u64)>,
    /// The preemption points inside the segment in flight (ends of its batches), ns, in
    /// order; charged as section ends when the segment ends (or a sample is taken).
    points: VecDeque<u64>,
    /// Batches of this step (each followed by a preemption point) that zero the same node
    /// join one segment up to this many bytes (0: each is a segment of its own).
    merge_up_to: u64,
    /// Holds its node's single scrubber slot (Xen-like policies).
    slot: bool,
    /// Its task yielded to wait for other CPUs (a remote ticket's helpers): its next step
    /// comes this many ns after the current one ends, and the wait is no section.
    wait_ns: u64,
    /// Its queued Step event ends such a wait (counted as a poll).
    polling: bool,
}

#[derive(Default)]
struct GuestRt {
    dom: Option<DomId>,
    extents: Vec<Extent>,
    busy: bool,
}

/// Pieces of a populate, largest first: 1 GiB, 2 MiB, one frame.
fn levels(frame: u64) -> [u64; 3] {
    [GIB.max(frame), (2 * MIB).max(frame), frame]
}

/// The host's CPUs, node by node, every one idle: the last CPUs of each node are the
/// toolstack's `sc.builders` (round-robin over the nodes with CPUs), returned free.
fn lay_out_cpus<'h>(sc: &Scenario) -> (Vec<Cpu<'h>>, BTreeSet<usize>) {
    let h = &sc.host;
    let mut cpus = Vec::new();
    let mut node_cpus = vec![Vec::new(); h.nodes];
    for n in h.cpu_nodes() {
        for _ in 0..h.cpus_per_node {
            node_cpus[n].push(cpus.len());
            cpus.push(Cpu {
                node: n,
                builder: false,
                task: None,
                active: false,
                kind: StepKind::Scrub,
                step_start: 0,
                section_start: 0,
                zero: VecDeque::new(),
                seg: None,
                points: VecDeque::new(),
                merge_up_to: 0,
                slot: false,
                wait_ns: 0,
                polling: false,
            });
        }
    }
    // Toolstack CPUs: the last CPUs of each node, round-robin over the nodes with CPUs.
    let mut free_builders = BTreeSet::new();
    let cpu_nodes = h.cpu_nodes();
    for b in 0..sc.builders {
        let node = cpu_nodes[b % cpu_nodes.len()];
        let c = node_cpus[node][h.cpus_per_node - 1 - b / cpu_nodes.len()];
        cpus[c].builder = true;
        free_builders.insert(c);
    }
    debug_assert_eq!(free_builders.len(), sc.builders, "every builder is its own CPU");
    (cpus, free_builders)
}

struct Engine<'h, 'o> {
    sc: &'h Scenario,
    policy: Policy,
    heap: &'h Heap<&'h SimMemory>,
    mem: &'h SimMemory,
    lock_obs: Arc<LockCounter>,
    opts: &'o RunOptions<'o>,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    pending_events: u64,
    cpus: Vec<Cpu<'h>>,
    sleeping: Vec<Vec<usize>>,
    node_slot: Vec<Option<usize>>,
    locks: Vec<u64>,
    /// Extra hold of the global heap lock charged by the next step (Xen's page-granular
    /// work under the lock, `xen_locks` mechanism), ns.
    extra_hold: u64,
    writers: Vec<u32>,
    /// CPUs writing a node of another socket (they share the interconnect).
    cross_writers: u32,
    guests: Vec<GuestRt>,
    ready: VecDeque<(usize, u64)>,
    free_builders: BTreeSet<usize>,
    next_dom: u32,
    ledger: Vec<u64>,
    pending: Vec<u64>,
    frame: u64,
    fpn: u64,
    inflight_scrub: u64,
    // results
    events: u64,
    /// Step events: those that call into the heap.
    heap_calls: u64,
    by_kind: EventCounts,
    destroys: Vec<f64>,
    creates: Vec<f64>,
    max_section: u64,
    trips: u64,
    highorder_failures: u64,
    create_failures: u64,
    claim_failures: u64,
    dirty_handovers: u64,
    handovers: u64,
    violations: u64,
    messages: Vec<String>,
    lock_wait_max: u64,
    op_wait_max: u64,
    builder_remote_bytes: u64,
    t0: Option<u64>,
    dirtied_bytes: u64,
    clean_at: Option<u64>,
    was_dirty: bool,
    full_every: u64,
    full_runs: u64,
    truncated: bool,
    timeline: Vec<Sample>,
    sample_idle: u64,
    sample_tool: u64,
    sample_section: u64,
}

impl<'h, 'o> Engine<'h, 'o> {
    /// The engine of `sc` on `heap` (whose policy and memory it runs), its first events
    /// queued.
    fn new(
        sc: &'h Scenario,
        heap: &'h Heap<&'h SimMemory>,
        lock_obs: Arc<LockCounter>,
        opts: &'o RunOptions<'o>,
    ) -> Self {
        let h = &sc.host;
        let policy = heap.policy();
        let (cpus, free_builders) = lay_out_cpus(sc);
        let fpn = h.frames_per_node();
        // Full checks cost O(frames): after every heap call on small heaps, sampled so that
        // they cost about as much as 2^10 frames per heap call on large ones.
        let full_every = opts.full_check_every.unwrap_or((fpn * h.nodes as u64).div_ceil(1 << 10).next_power_of_two());
        let global_lock = matches!(policy, Policy::Sync | Policy::Xen | Policy::XenCap2m);
        let mut e = Engine {
            sc,
            policy,
            heap,
            mem: heap.memory(),
            lock_obs,
            opts,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            pending_events: 0,
            sleeping: vec![Vec::new(); h.nodes],
            node_slot: vec![None; h.nodes],
            locks: vec![0; if global_lock { 1 } else { h.nodes }],
            extra_hold: 0,
            writers: vec![0; h.nodes],
            cross_writers: 0,
            guests: (0..sc.guests.len()).map(|_| GuestRt::default()).collect(),
            ready: VecDeque::new(),
            free_builders,
            next_dom: 1,
            ledger: vec![0; h.nodes],
            pending: vec![0; h.nodes],
            frame: h.frame_size,
            fpn,
            inflight_scrub: 0,
            events: 0,
            heap_calls: 0,
            by_kind: EventCounts::default(),
            destroys: Vec::new(),
            creates: Vec::new(),
            max_section: 0,
            trips: 0,
            highorder_failures: 0,
            create_failures: 0,
            claim_failures: 0,
            dirty_handovers: 0,
            handovers: 0,
            violations: 0,
            messages: Vec::new(),
            lock_wait_max: 0,
            op_wait_max: 0,
            builder_remote_bytes: 0,
            t0: sc.initially_dirty.then_some(0),
            dirtied_bytes: if sc.initially_dirty { h.total_bytes() } else { 0 },
            clean_at: None,
            was_dirty: sc.initially_dirty,
            full_every: full_every.max(1),
            full_runs: 0,
            truncated: false,
            timeline: Vec::new(),
            sample_idle: 0,
            sample_tool: 0,
            sample_section: 0,
            cpus,
        };
        e.queue_first_events();
        e
    }

    /// The scenario's operations at their times, every CPU idle and looking for dirty
    /// memory, and the first sample.
    fn queue_first_events(&mut self) {
        assert!(self.queue.is_empty() && self.now == 0, "the first events go into an empty queue");
        for (i, op) in self.sc.ops.iter().enumerate() {
            self.push(op.at_ns, Ev::Op(i));
        }
        for c in 0..self.cpus.len() {
            self.sleeping[self.cpus[c].node].push(c);
        }
        for n in 0..self.sc.host.nodes {
            self.wake_node(n);
        }
        self.push(0, Ev::Sample);
    }

    fn push(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        if ev != Ev::Sample {
            self.pending_events += 1;
        }
        self.queue.push(Reverse((t, self.seq, ev)));
    }

    fn run(&mut self) {
        let max = (self.sc.max_s * 1e9) as u64;
        let mut last_progress = 0u64;
        while let Some(Reverse((t, _, ev))) = self.queue.pop() {
            if t > max {
                self.truncated = true;
                self.now = max;
                for c in 0..self.cpus.len() {
                    self.charge_points(c, max, true);
                }
                break;
            }
            self.now = t;
            if ev != Ev::Sample {
                self.pending_events -= 1;
            }
            self.count(ev);
            match ev {
                Ev::Op(i) => {
                    self.ready.push_back((i, t));
                    self.dispatch();
                }
                Ev::Step(c) => {
                    self.cpus[c].active = false;
                    self.step(c);
                }
                Ev::Phase(c) => self.phase_done(c),
                Ev::Sample => {
                    self.sample();
                    if self.pending_events > 0 {
                        let dt = (self.sc.sample_s * 1e9) as u64;
                        self.push(t + dt.max(1), Ev::Sample);
                    }
                }
            }
            self.events += 1;
            self.check_cheap();
            if matches!(ev, Ev::Step(_)) {
                self.heap_calls += 1;
                if self.heap_calls % self.full_every == 0 {
                    self.check_full();
                }
            }
            if let Some(p) = self.opts.progress {
                if self.events - last_progress >= 1 << 16 {
                    last_progress = self.events;
                    p(self.now as f64 / 1e9);
                }
            }
        }
    }

    /// Counts event `ev` by kind, before it is handled.
    fn count(&mut self, ev: Ev) {
        let k = &mut self.by_kind;
        match ev {
            Ev::Op(_) => k.op += 1,
            Ev::Step(c) if std::mem::take(&mut self.cpus[c].polling) => k.poll += 1,
            Ev::Step(c) if self.cpus[c].task.is_some() => k.toolstack_call += 1,
            Ev::Step(_) => k.scrub_call += 1,
            Ev::Phase(c) if self.cpus[c].seg.is_some() => k.segment += 1,
            Ev::Phase(_) => k.step_end += 1,
            Ev::Sample => k.sample += 1,
        }
    }

    // ---- scheduling ----

    fn dispatch(&mut self) {
        let mut i = 0;
        while i < self.ready.len() && !self.free_builders.is_empty() {
            let (op, due) = self.ready[i];
            let spec = &self.sc.ops[op];
            let g = spec.guest;
            if self.guests[g].busy {
                i += 1;
                continue;
            }
            self.ready.remove(i);
            let alive = self.guests[g].dom.is_some();
            let action = spec.action;
            let want_alive = matches!(action, Action::Destroy | Action::Reboot);
            if want_alive != alive {
                continue; // destroy of a guest that failed to build, or create of a live one
            }
            // Under the `remote` mechanism a builder is whichever toolstack CPU is free
            // (dom0's vCPUs are not placed by the guest's claimed node).
            let home = self.sc.guests[g].node.filter(|_| !self.sc.mechanisms.remote);
            let b = home
                .and_then(|n| self.free_builders.iter().copied().find(|&c| self.cpus[c].node == n))
                .or_else(|| self.free_builders.iter().copied().next())
                .expect("a free builder");
            self.free_builders.remove(&b);
            self.op_wait_max = self.op_wait_max.max(self.now - due);
            self.guests[g].busy = true;
            let measure = spec.measure;
            let task = match action {
                Action::Create => self.new_create(g, measure),
                Action::Destroy | Action::Reboot => {
                    if measure && self.t0.is_none() {
                        self.t0 = Some(self.now);
                    }
                    Task::Destroy(DestroyTask {
                        guest: g,
                        measure,
                        started: self.now,
                        then_create: action == Action::Reboot,
                        cursor: 0,
                    })
                }
            };
            self.cpus[b].task = Some(task);
            self.kick(b);
        }
    }

    fn new_create(&mut self, g: usize, measure: bool) -> Task<'h> {
        let dom = DomId(self.next_dom);
        self.next_dom += 1;
        Task::Create(Box::new(CreateTask {
            guest: g,
            dom,
            measure,
            started: self.now,
            claimed: false,
            claim_done: self.sc.guests[g].claim == ClaimMode::None,
            remaining: self.sc.guests[g].bytes,
            fills: Vec::new(),
            ticket: None,
        }))
    }

    /// Makes CPU `c` take its next step now, unless it is in the middle of one.
    fn kick(&mut self, c: usize) {
        if self.cpus[c].active {
            return;
        }
        let n = self.cpus[c].node;
        if let Some(p) = self.sleeping[n].iter().position(|&x| x == c) {
            self.sleeping[n].swap_remove(p);
        }
        self.cpus[c].active = true;
        self.push(self.now, Ev::Step(c));
    }

    /// Dirty memory or a scrub ticket appeared on node `n`: wake idle CPUs to scrub it.
    fn wake_node(&mut self, n: usize) {
        if !self.policy.background_scrub() {
            return;
        }
        let servers: Vec<usize> = (0..self.sc.host.nodes)
            .filter(|&s| self.heap.served_by(s).map(|v| v.contains(&n)).unwrap_or(false))
            .collect();
        for s in servers {
            if self.policy.whole_chunk_in_place() {
                // Xen: one CPU per node scrubs at a time (node_scrubbing).
                if self.node_slot[s].is_none() {
                    if let Some(c) = self.sleeping[s].pop() {
                        self.node_slot[s] = Some(c);
                        self.cpus[c].slot = true;
                        self.kick(c);
                    }
                }
            } else {
                let all = std::mem::take(&mut self.sleeping[s]);
                for c in all {
                    self.cpus[c].active = true;
                    self.push(self.now, Ev::Step(c));
                }
            }
        }
    }

    fn sleep(&mut self, c: usize) {
        let n = self.cpus[c].node;
        if self.cpus[c].slot {
            self.cpus[c].slot = false;
            self.node_slot[n] = None;
        }
        self.sleeping[n].push(c);
    }

    // ---- steps ----

    fn step(&mut self, c: usize) {
        if self.cpus[c].task.is_some() {
            if self.cpus[c].slot {
                // A toolstack task preempts this CPU's scrubbing: hand the slot on.
                let n = self.cpus[c].node;
                self.cpus[c].slot = false;
                self.node_slot[n] = None;
                self.wake_node(n);
            }
            self.toolstack_step(c);
        } else {
            self.scrub_step(c);
        }
    }

    fn scrub_step(&mut self, c: usize) {
        let n = self.cpus[c].node;
        if !self.policy.background_scrub() {
            self.sleep(c);
            return;
        }
        if self.policy.whole_chunk_in_place() && self.node_slot[n] != Some(c) {
            if self.node_slot[n].is_none() {
                self.node_slot[n] = Some(c);
                self.cpus[c].slot = true;
            } else {
                self.sleep(c);
                return;
            }
        }
        // Up to SCRUB_BATCHES batches per call: the heap asks `Preempt` after each one (a
        // preemption point, charged as the end of a section); nothing asks to yield. A
        // toolstack CPU takes one batch per call, so that a task it is given waits for one
        // batch at most, as it would on a host whose `Preempt` yields to pending work.
        let batch = self.sc.host.scrub_batch_frames();
        let batches = if self.cpus[c].builder { 1 } else { SCRUB_BATCHES };
        // The engine charges a call's lock acquisitions before its zeroing: a call of
        // SCRUB_BATCHES batches of the size the heap will use keeps that charge small.
        let limit = self.batch_limit(c, n, false);
        let done = self.heap.scrub_step(n, batch.min(limit.frames) * batches, &limit).unwrap_or(0);
        let zero = self.drain_zero();
        let acq = self.lock_obs.drain();
        if done == 0 {
            self.sleep(c);
            return;
        }
        // Batches the bandwidth shrank are charged together up to one fixed batch: the rate
        // is re-evaluated as often, in bytes, as for a call of full batches, which are
        // charged one by one as before.
        let shrunk = limit.frames < batch && !self.opts.segment_per_batch;
        let merge_up_to = if shrunk { batch * self.frame } else { 0 };
        self.begin_split(c, StepKind::Scrub, &acq, 0, zero, Some(merge_up_to));
    }

    fn drain_zero(&self) -> Vec<(usize, u64)> {
        self.mem.drain_log().into_iter().map(|(m, count)| ((m.0 / self.fpn) as usize, count * self.frame)).collect()
    }

    /// Charges a step that ends at a preemption point: see [`Engine::begin_split`].
    fn begin(&mut self, c: usize, kind: StepKind, acq: &[u64], cpu_ns: u64, zero: Vec<(usize, u64)>) {
        self.begin_split(c, kind, acq, cpu_ns, zero, None)
    }

    /// Charges a step: locks (queued), fixed CPU time, then zeroing segments. With
    /// Whether a zeroing step's bytes count as scrubbing in flight: background scrubs,
    /// and every zeroing under a policy that scrubs on free. Adding and subtracting them
    /// must agree, so both ask here.
    fn counts_as_scrub(policy: Policy, kind: StepKind) -> bool {
        kind == StepKind::Scrub || policy.scrubs_on_free()
    }

    /// `split`, every zeroing call of the step is followed by a preemption point, and the
    /// calls that zero the same node one after another share a segment up to the bytes
    /// it holds (see [`Engine::next_segment`]).
    fn begin_split(
        &mut self,
        c: usize,
        kind: StepKind,
        acq: &[u64],
        cpu_ns: u64,
        zero: Vec<(usize, u64)>,
        split: Option<u64>,
    ) {
        let hold = self.sc.host.lock_hold_ns;
        let mut t = self.now;
        let mut extra = std::mem::take(&mut self.extra_hold);
        for (n, &k) in acq.iter().enumerate() {
            if k == 0 {
                continue;
            }
            let l = if self.locks.len() == 1 { 0 } else { n };
            let start = t.max(self.locks[l]);
            self.lock_wait_max = self.lock_wait_max.max(start - t);
            t = start + k * hold + std::mem::take(&mut extra);
            self.locks[l] = t;
        }
        t += cpu_ns;
        let cpu = &mut self.cpus[c];
        cpu.kind = kind;
        cpu.step_start = self.now;
        cpu.section_start = self.now;
        cpu.active = true;
        cpu.zero.clear();
        cpu.merge_up_to = split.unwrap_or(0);
        for (n, b) in zero {
            match cpu.zero.back_mut() {
                Some((m, x, false)) if *m == n && split.is_none() => *x += b,
                _ => cpu.zero.push_back((n, b, split.is_some())),
            }
        }
        let bytes: u64 = cpu.zero.iter().map(|z| z.1).sum();
        if Self::counts_as_scrub(self.policy, kind) {
            self.inflight_scrub += bytes;
        }
        cpu.seg = None;
        self.next_segment(c, t);
    }

    /// Starts the next zeroing segment of CPU `c` at `t`, or ends its step. A segment
    /// runs at one rate, evaluated as it starts. The whole batches that follow a batch on
    /// the same node join its segment up to the step's `merge_up_to` bytes; each still
    /// ends at its own preemption point, `ceil(bytes / rate)` ns after the previous one,
    /// as if it were a segment of its own at that rate.
    fn next_segment(&mut self, c: usize, t: u64) {
        let cpu_node = self.cpus[c].node;
        let Some((n, left, point)) = self.cpus[c].zero.pop_front() else {
            self.push(t, Ev::Phase(c));
            return;
        };
        let b = left.min(SEGMENT);
        if left > b {
            self.cpus[c].zero.push_front((n, left - b, point));
        }
        self.writers[n] += 1;
        let cross = self.crosses_interconnect(cpu_node, n);
        self.cross_writers += cross as u32;
        let rate = self.zero_rate(cpu_node, n, cross);
        let cpu = &mut self.cpus[c];
        debug_assert!(cpu.points.is_empty(), "a segment's points are charged before the next starts");
        let mut end = t + zero_ns(b, rate);
        let mut bytes = b;
        if point && left == b {
            cpu.points.push_back(end);
            while let Some(&(m, x, true)) = cpu.zero.front() {
                if m != n || bytes + x > cpu.merge_up_to {
                    break;
                }
                cpu.zero.pop_front();
                bytes += x;
                end += zero_ns(x, rate);
                cpu.points.push_back(end);
            }
        }
        cpu.seg = Some((n, bytes));
        self.push(end, Ev::Phase(c));
    }

    /// Charges the preemption points of CPU `c`'s segment in flight up to `upto` as
    /// section ends (all of them up to and including `upto` if `inclusive`).
    fn charge_points(&mut self, c: usize, upto: u64, inclusive: bool) {
        while let Some(&p) = self.cpus[c].points.front() {
            if p > upto || (p == upto && !inclusive) {
                break;
            }
            self.cpus[c].points.pop_front();
            self.end_section_at(c, p);
        }
    }

    /// Whether a CPU of node `cpu` writing node `mem` uses the shared interconnect (a
    /// cross-socket write under the `remote` mechanism with a limited interconnect).
    fn crosses_interconnect(&self, cpu: usize, mem: usize) -> bool {
        let h = &self.sc.host;
        self.sc.mechanisms.remote && h.interconnect_gbps > 0.0 && h.socket_of(cpu) != h.socket_of(mem)
    }

    /// GB/s (bytes per ns) of one writer on node `cpu` zeroing node `mem`, with the
    /// writer counts already including it: its core, its share of the node (less the
    /// guests' own traffic) and, across sockets, its share of the interconnect.
    fn zero_rate(&self, cpu: usize, mem: usize, cross: bool) -> f64 {
        self.rate_with(cpu, mem, self.writers[mem], cross.then_some(self.cross_writers))
    }

    /// [`Engine::zero_rate`] with `writers` on `mem` and `cross` writers on the
    /// interconnect (None: the write does not cross it).
    fn rate_with(&self, cpu: usize, mem: usize, writers: u32, cross: Option<u32>) -> f64 {
        let h = &self.sc.host;
        let guests = if self.sc.mechanisms.guest_traffic { 1.0 - h.guest_traffic_share } else { 1.0 };
        let mut rate = (h.core_zero_gbps / h.penalty(cpu, mem)).min(h.node_zero_gbps * guests / writers.max(1) as f64);
        if let Some(x) = cross {
            rate = rate.min(h.interconnect_gbps / x.max(1) as f64);
        }
        assert!(rate > 0.0 && rate.is_finite(), "zeroing rate {rate}");
        rate
    }

    /// What scrubheap's CPU `c` tells the heap before zeroing node `mem`: batches sized
    /// so that one takes [`SECTION_TARGET_NS`] at the bandwidth a writer would get if
    /// every awake CPU of the node wrote it too. The other policies keep the heap's fixed batch.
    fn batch_limit(&self, c: usize, mem: usize, yield_after_batch: bool) -> scrubheap::BatchLimit {
        let fixed = scrubheap::BatchLimit { frames: self.sc.host.scrub_batch_frames(), yield_after_batch };
        if self.policy != Policy::Scrubheap {
            return fixed;
        }
        let cpu = self.cpus[c].node;
        let cross = self.crosses_interconnect(cpu, mem).then_some(self.cross_writers + 1);
        // Writers that may join during the batch: every CPU of the node that is awake
        // (a host knows how many of a node's scrubbers are running).
        let awake = if self.sc.host.has_cpus(mem) { self.sc.host.cpus_per_node - self.sleeping[mem].len() } else { 0 };
        let writers = (self.writers[mem] + 1).max(awake as u32);
        let rate = self.rate_with(cpu, mem, writers, cross);
        let frames = (rate * SECTION_TARGET_NS as f64 / self.frame as f64) as u64;
        scrubheap::BatchLimit { frames: frames.clamp(1, fixed.frames), yield_after_batch }
    }

    fn phase_done(&mut self, c: usize) {
        if let Some((n, b)) = self.cpus[c].seg.take() {
            self.writers[n] -= 1;
            if self.crosses_interconnect(self.cpus[c].node, n) {
                self.cross_writers -= 1;
            }
            self.charge_points(c, self.now, true);
            debug_assert!(self.cpus[c].points.is_empty(), "no point lies beyond its segment's end");
            let kind = self.cpus[c].kind;
            if kind == StepKind::Scrub {
                self.sample_idle += b;
            } else {
                self.sample_tool += b;
            }
            if Self::counts_as_scrub(self.policy, kind) {
                self.inflight_scrub -= b;
            }
            if !self.cpus[c].zero.is_empty() {
                self.next_segment(c, self.now);
                return;
            }
        }
        // The step is over: a preemption point.
        if self.now > self.cpus[c].section_start || self.now == self.cpus[c].step_start {
            self.end_section(c);
        }
        self.cpus[c].active = false;
        let wait = std::mem::take(&mut self.cpus[c].wait_ns);
        if wait > 0 {
            self.cpus[c].active = true;
            self.cpus[c].polling = true;
            self.push(self.now + wait, Ev::Step(c));
            return;
        }
        self.kick(c);
    }

    /// CPU `c` reached a preemption point now: the stretch since the last one is a section.
    fn end_section(&mut self, c: usize) {
        self.end_section_at(c, self.now)
    }

    /// CPU `c` reached a preemption point at `at` (not before its previous one).
    fn end_section_at(&mut self, c: usize, at: u64) {
        assert!(at >= self.cpus[c].section_start, "preemption points in time order");
        let section = at - self.cpus[c].section_start;
        self.cpus[c].section_start = at;
        self.max_section = self.max_section.max(section);
        self.sample_section = self.sample_section.max(section);
        if section as f64 > self.sc.host.watchdog_s * 1e9 {
            self.trips += 1;
        }
    }

    fn toolstack_step(&mut self, c: usize) {
        match self.cpus[c].task.take() {
            Some(Task::Create(t)) => self.create_step(c, t),
            Some(Task::Destroy(t)) => self.destroy_step(c, t),
            None => unreachable!("toolstack step without a task"),
        }
    }

    fn finish_task(&mut self, c: usize, g: usize) {
        self.guests[g].busy = false;
        self.free_builders.insert(c);
        self.cpus[c].active = false;
        self.dispatch();
        if self.cpus[c].task.is_none() {
            // Back to idle: it may scrub.
            self.cpus[c].active = true;
            self.push(self.now, Ev::Step(c));
        }
    }

    /// One step of a create: install the claim, advance a scrub ticket, allocate the next
    /// extent, or finish, whichever comes next for task `t` on builder `c`.
    fn create_step(&mut self, c: usize, mut t: Box<CreateTask<'h>>) {
        if !t.claim_done {
            self.create_claim(c, t);
        } else if let Some(ticket) = t.ticket.take() {
            self.create_advance(c, t, ticket);
        } else if t.remaining == 0 {
            self.create_done(c, &t);
        } else {
            self.create_alloc(c, t);
        }
    }

    /// A create's first step: its claim, on its node or the whole host.
    fn create_claim(&mut self, c: usize, mut t: Box<CreateTask<'h>>) {
        assert!(!t.claim_done, "a create claims once");
        let host = &self.sc.host;
        let spec = &self.sc.guests[t.guest];
        t.claim_done = true;
        let target = match (spec.claim, spec.node) {
            (ClaimMode::Node, Some(n)) => ClaimTarget::Node(n),
            _ => ClaimTarget::Global,
        };
        match self.heap.claim_set(t.dom, &[Claim { target, frames: spec.bytes / host.frame_size }]) {
            Ok(()) => t.claimed = true,
            Err(_) => self.claim_failures += 1,
        }
        if let (true, ClaimTarget::Node(n)) = (t.claimed, target) {
            // A node claim sets a clean-memory target: the node's scrubbers start on it.
            self.wake_node(n);
        }
        let acq = self.lock_obs.drain();
        self.cpus[c].task = Some(Task::Create(t));
        self.begin(c, StepKind::Toolstack, &acq, host.op_ns, Vec::new());
    }

    /// A create's step on a dirty extent: one batch of its scrub ticket.
    fn create_advance(&mut self, c: usize, mut t: Box<CreateTask<'h>>, mut ticket: ScrubTicket<'h, &'h SimMemory>) {
        assert!(t.ticket.is_none(), "the ticket was taken out of the task");
        let ext = ticket.extent();
        let limit = self.batch_limit(c, ext.map_or(self.cpus[c].node, |e| e.node), true);
        // scrubheap's builders say where they run: a remote one leaves its batches to
        // the frames' node (the other policies' tickets have no helpers to wait for).
        let r = ticket.advance_from(self.cpus[c].node, &limit);
        let zero = self.drain_zero();
        if matches!(r, Ok(None)) && zero.is_empty() {
            self.cpus[c].wait_ns = POLL_NS;
        }
        self.count_remote(c, &zero);
        let acq = self.lock_obs.drain();
        match r {
            Ok(Some(e)) => {
                drop(ticket);
                self.pending[e.node] -= 1 << e.order;
                self.handover(&mut t, e);
            }
            Ok(None) => t.ticket = Some(ticket),
            Err(err) => {
                drop(ticket);
                if let Some(e) = ext {
                    self.pending[e.node] -= 1 << e.order;
                }
                self.note(format!("ticket of {} failed: {err}", t.dom));
            }
        }
        self.cpus[c].task = Some(Task::Create(t));
        self.begin(c, StepKind::Toolstack, &acq, 0, zero);
    }

    /// A create with all its memory: the claim goes, the guest is live, the builder free.
    fn create_done(&mut self, c: usize, t: &CreateTask<'h>) {
        assert!(t.remaining == 0 && t.ticket.is_none(), "a create is done when all its memory is handed over");
        if t.claimed {
            self.heap.claim_cancel(t.dom);
        }
        let g = t.guest;
        if t.measure {
            self.creates.push((self.now - t.started) as f64 / 1e9);
        }
        self.guests[g].dom = Some(t.dom);
        self.lock_obs.drain();
        self.finish_task(c, g);
    }

    /// A create's step that allocates its next extent: the largest level that fits what
    /// is left (or the level a failed larger one fell back to), on its node if it has one.
    fn create_alloc(&mut self, c: usize, mut t: Box<CreateTask<'h>>) {
        assert!(t.remaining > 0 && t.ticket.is_none(), "an allocation step has memory left to get");
        let host = &self.sc.host;
        let spec = &self.sc.guests[t.guest];
        let lv = levels(host.frame_size);
        let level = match t.fills.last() {
            Some(&(l, _)) => l,
            None => lv.iter().position(|&s| s <= t.remaining).unwrap_or(2),
        };
        let size = lv[level];
        let order = (size / host.frame_size).trailing_zeros() as u8;
        let mut req = AllocRequest::new(order, t.dom);
        req = match (spec.node, spec.claim, t.claimed) {
            (Some(n), ClaimMode::Node, true) => req.exact(n),
            (Some(n), _, _) => req.on(n),
            (None, _, _) => req,
        };
        let r = self.heap.alloc_start(&req);
        let zero = self.drain_zero();
        self.count_remote(c, &zero);
        let acq = self.lock_obs.drain();
        match &r {
            Ok(AllocStart::Ready(e)) => self.page_work_under_lock(e.frames()),
            Ok(AllocStart::Pending(ticket)) => self.page_work_under_lock(ticket.extent().map_or(0, |e| e.frames())),
            Err(_) => {}
        }
        match r {
            Ok(AllocStart::Ready(e)) => self.handover(&mut t, e),
            Ok(AllocStart::Pending(ticket)) => {
                if let Some(e) = ticket.extent() {
                    self.pending[e.node] += 1 << e.order;
                    self.wake_node(e.node);
                }
                t.ticket = Some(ticket);
            }
            Err(HeapError::OutOfMemory { .. }) if level < 2 && size > host.frame_size => {
                self.highorder_failures += 1;
                t.fills.push((level + 1, size.min(t.remaining)));
            }
            Err(err) => return self.create_failed(c, &t, err),
        }
        self.cpus[c].task = Some(Task::Create(t));
        self.begin(c, StepKind::Toolstack, &acq, host.op_ns, zero);
    }

    /// A create that cannot get its memory: what it got goes back, and so does its claim.
    fn create_failed(&mut self, c: usize, t: &CreateTask<'h>, err: HeapError) {
        self.create_failures += 1;
        self.note(format!("create of guest {} ({}) failed: {err}", t.guest, t.dom));
        self.release_guest(t.guest, t.dom);
        if t.claimed {
            self.heap.claim_cancel(t.dom);
        }
        self.lock_obs.drain();
        let g = t.guest;
        self.guests[g].dom = None;
        // The failed call's small cost is not charged; the builder is free at once.
        self.finish_task(c, g);
    }

    /// Counts what builder `c` zeroed on another socket's memory.
    fn count_remote(&mut self, c: usize, zero: &[(usize, u64)]) {
        let h = &self.sc.host;
        let socket = h.socket_of(self.cpus[c].node);
        self.builder_remote_bytes += zero.iter().filter(|z| h.socket_of(z.0) != socket).map(|z| z.1).sum::<u64>();
    }

    /// Xen's allocator and free path touch every 4 KiB page of an extent under the global
    /// heap lock: with the `xen_locks` mechanism, `frames` frames of that work are added
    /// to the hold of the next step's global-lock acquisition.
    fn page_work_under_lock(&mut self, frames: u64) {
        if self.sc.mechanisms.xen_locks && self.locks.len() == 1 {
            self.extra_hold += frames * self.frame / PAGE * self.sc.host.lock_page_ns;
        }
    }

    /// Frees whatever a failed create got (no time charged: it is rare and small).
    fn release_guest(&mut self, g: usize, dom: DomId) {
        let exts = std::mem::take(&mut self.guests[g].extents);
        for e in exts {
            self.ledger[e.node] -= 1 << e.order;
            if let Err(err) = self.heap.free(e.mfn, e.order, dom) {
                self.note(format!("free after a failed create: {err}"));
            }
            self.wake_node(e.node);
        }
        self.mem.drain_log();
    }

    fn handover(&mut self, t: &mut CreateTask<'h>, e: Extent) {
        let frames = e.frames();
        let bytes = frames * self.frame;
        self.handovers += 1;
        let dirty = self.mem.nonzero_frames(e.mfn, frames);
        if dirty > 0 {
            self.dirty_handovers += 1;
            self.note(format!("{} got {dirty} frames not seen zeroed at {} (order {})", t.dom, e.mfn, e.order));
        }
        // The new owner writes its data over all of it.
        self.mem.write(e.mfn, frames);
        self.ledger[e.node] += frames;
        self.guests[t.guest].extents.push(e);
        t.remaining -= bytes;
        for f in t.fills.iter_mut() {
            f.1 -= bytes;
        }
        while t.fills.last().is_some_and(|f| f.1 == 0) {
            t.fills.pop();
        }
    }

    /// One step of a destroy: free the next piece of the guest's memory, or finish (and
    /// start the guest again if it reboots).
    fn destroy_step(&mut self, c: usize, mut t: DestroyTask) {
        let g = t.guest;
        let dom = self.guests[g].dom.expect("destroying a live guest");
        if self.guests[g].extents.is_empty() {
            self.destroy_done(c, t);
            return;
        }
        let mut acq = vec![0u64; self.sc.host.nodes];
        let (cpu_ns, mut dirtied) = if self.policy != Policy::Scrubheap {
            self.free_pages(&mut t, dom, &mut acq)
        } else {
            self.free_extents(g, dom, &mut acq)
        };
        let zero = self.drain_zero();
        dirtied.sort_unstable();
        dirtied.dedup();
        for n in dirtied {
            self.wake_node(n);
        }
        self.cpus[c].task = Some(Task::Destroy(t));
        self.begin(c, StepKind::Toolstack, &acq, cpu_ns, zero);
    }

    /// A destroy with nothing left to free: the guest is gone, or created again.
    fn destroy_done(&mut self, c: usize, t: DestroyTask) {
        let g = t.guest;
        assert!(self.guests[g].extents.is_empty(), "a destroy is done when the guest holds nothing");
        if t.measure {
            self.destroys.push((self.now - t.started) as f64 / 1e9);
        }
        self.guests[g].dom = None;
        if t.then_create {
            let task = self.new_create(g, t.measure);
            self.cpus[c].task = Some(task);
            self.kick(c);
            return;
        }
        self.finish_task(c, g);
    }

    /// The baselines' teardown step: Xen's relinquish_memory and Linux drop a reference per
    /// 4 KiB page and free page by page under the heap lock; driven here 2 MiB at a time,
    /// from the guest's last extent, `t.cursor` frames into it. Adds the pages each node's
    /// lock was taken for to `acq`; returns the CPU time and the nodes given dirty memory.
    fn free_pages(&mut self, t: &mut DestroyTask, dom: DomId, acq: &mut [u64]) -> (u64, Vec<usize>) {
        let host = &self.sc.host;
        let g = t.guest;
        let mut cpu_ns = 0;
        let mut dirtied = Vec::new();
        let mut budget = PAGES_BYTES_PER_STEP;
        while budget > 0 {
            let Some(&e) = self.guests[g].extents.last() else { break };
            let frames = e.frames();
            let piece_frames = (budget / self.frame).max(1);
            let left = frames - t.cursor;
            let take = prev_pow2(piece_frames.min(left).min(largest_aligned(e.mfn.0 + t.cursor)));
            let order = take.trailing_zeros() as u8;
            let mfn = Mfn(e.mfn.0 + t.cursor);
            if let Err(err) = self.heap.free(mfn, order, dom) {
                self.note(format!("free of {mfn} order {order} by {dom} failed: {err}"));
            }
            let pages = take * self.frame / PAGE;
            cpu_ns += pages * host.relinquish_ns;
            self.page_work_under_lock(take);
            acq[e.node] += pages;
            self.ledger[e.node] -= take;
            dirtied.push(e.node);
            t.cursor += take;
            budget = budget.saturating_sub(take * self.frame);
            if t.cursor == frames {
                self.guests[g].extents.pop();
                t.cursor = 0;
            }
        }
        self.lock_obs.drain();
        (cpu_ns, dirtied)
    }

    /// scrubheap's teardown step: whole extents, [`EXTENTS_PER_STEP`] at most, each freed
    /// in one call. Adds the lock acquisitions observed to `acq`; returns the CPU time and
    /// the nodes given dirty memory.
    fn free_extents(&mut self, g: usize, dom: DomId, acq: &mut [u64]) -> (u64, Vec<usize>) {
        let mut cpu_ns = 0;
        let mut dirtied = Vec::new();
        for _ in 0..EXTENTS_PER_STEP {
            let Some(e) = self.guests[g].extents.pop() else { break };
            if let Err(err) = self.heap.free(e.mfn, e.order, dom) {
                self.note(format!("free of {} order {} by {dom} failed: {err}", e.mfn, e.order));
            }
            cpu_ns += self.sc.host.relinquish_ns;
            self.ledger[e.node] -= e.frames();
            dirtied.push(e.node);
        }
        let obs = self.lock_obs.drain();
        for (a, o) in acq.iter_mut().zip(obs) {
            *a += o;
        }
        (cpu_ns, dirtied)
    }

    // ---- checks and samples ----

    fn note(&mut self, m: String) {
        if self.messages.len() < 20 {
            self.messages.push(format!("t={:.6}s: {m}", self.now as f64 / 1e9));
        }
    }

    fn violation(&mut self, m: String) {
        self.violations += 1;
        self.note(m);
    }

    fn check_cheap(&mut self) {
        let mut dirty = self.inflight_scrub > 0;
        let mut claimed_sum = 0;
        let mut avail_sum = 0;
        for n in 0..self.sc.host.nodes {
            let s = self.heap.node_stats(n).expect("node exists");
            if s.total() != self.fpn {
                self.violation(format!("node {n}: {} frames accounted, {} exist", s.total(), self.fpn));
            }
            if s.allocated != self.ledger[n] + self.pending[n] {
                self.violation(format!(
                    "node {n}: heap says {} allocated, owners hold {} and tickets {}",
                    s.allocated, self.ledger[n], self.pending[n]
                ));
            }
            if s.scrubbing != 0 {
                self.violation(format!("node {n}: {} frames being scrubbed between calls", s.scrubbing));
            }
            if s.claimed > s.free() + s.scrubbing {
                self.violation(format!("node {n}: {} frames claimed but only {} free", s.claimed, s.free()));
            }
            claimed_sum += s.claimed;
            avail_sum += s.free() + s.scrubbing;
            dirty |= s.free_dirty > 0;
        }
        let total_claimed = self.heap.stats().claimed;
        if total_claimed > avail_sum || claimed_sum > total_claimed {
            self.violation(format!("claims: {total_claimed} outstanding ({claimed_sum} on nodes), {avail_sum} free"));
        }
        if dirty != self.was_dirty {
            self.was_dirty = dirty;
            self.clean_at = if dirty { None } else { Some(self.now) };
        }
    }

    fn check_full(&mut self) {
        self.full_runs += 1;
        if let Err(v) = self.heap.check_invariants() {
            self.violation(v.to_string());
        }
    }

    fn sample(&mut self) {
        // Sections that ended inside a segment still in flight belong to this sample.
        for c in 0..self.cpus.len() {
            self.charge_points(c, self.now, false);
        }
        let nodes = (0..self.sc.host.nodes)
            .map(|n| {
                let s = self.heap.node_stats(n).expect("node exists");
                [s.free_clean * self.frame, s.free_dirty * self.frame, (s.allocated + s.scrubbing) * self.frame]
            })
            .collect();
        self.timeline.push(Sample {
            t_s: self.now as f64 / 1e9,
            nodes,
            zeroed_idle: std::mem::take(&mut self.sample_idle),
            zeroed_toolstack: std::mem::take(&mut self.sample_tool),
            max_section_ns: std::mem::take(&mut self.sample_section),
        });
    }

    fn finish(mut self) -> PolicyRun {
        self.check_full();
        self.sample();
        // Dirty bytes the scenario made after t0: what the measured destroys freed.
        let freed: u64 = self
            .sc
            .ops
            .iter()
            .filter(|o| o.measure && matches!(o.action, Action::Destroy | Action::Reboot))
            .map(|o| self.sc.guests[o.guest].bytes)
            .sum();
        let dirty_bytes = self.dirtied_bytes + freed;
        let h = &self.sc.host;
        let ideal = (dirty_bytes > 0 && self.policy.background_scrub())
            .then(|| dirty_bytes as f64 / h.aggregate_scrub_bps(h.cpus_per_node));
        let tt_clean = match (self.t0, self.clean_at, self.was_dirty) {
            (Some(t0), Some(c), false) if c >= t0 => Some((c - t0) as f64 / 1e9),
            (Some(_), None, false) => Some(0.0),
            _ => None,
        };
        let s = self.heap.stats();
        let result = PolicyResult {
            policy: self.policy.name().to_string(),
            destroy_s: P50Max::of(&self.destroys).map(|p| p.max),
            time_to_clean_s: tt_clean,
            create_s: P50Max::of(&self.creates),
            max_nonpreemptible_ms: self.max_section as f64 / 1e6,
            watchdog_trips: self.trips,
            highorder_failures: self.highorder_failures,
            invariant_violations: self.violations + self.dirty_handovers,
            destroy_p50_s: P50Max::of(&self.destroys).map(|p| p.p50),
            ideal_clean_s: ideal,
            dirty_handovers: self.dirty_handovers,
            create_failures: self.create_failures,
            claim_failures: self.claim_failures,
            bytes_scrubbed: BytesScrubbed {
                background: s.scrubbed.background,
                in_place: s.scrubbed.in_place,
                sync: s.scrubbed.sync,
            },
            lock_wait_max_us: self.lock_wait_max as f64 / 1e3,
            op_wait_max_s: self.op_wait_max as f64 / 1e9,
            builder_remote_bytes: self.builder_remote_bytes,
            end_s: self.now as f64 / 1e9,
            truncated: self.truncated,
            checks: Checks {
                cheap_every_event: true,
                handovers_checked: self.handovers,
                full_every_events: self.full_every,
                heap_calls: self.heap_calls,
                full_runs: self.full_runs,
                events: self.events,
                events_by_kind: self.by_kind,
            },
            messages: self.messages,
        };
        PolicyRun { result, timeline: self.timeline }
    }
}

/// Modelled time to zero `bytes` at `rate` bytes per ns (at least 1 ns).
fn zero_ns(bytes: u64, rate: f64) -> u64 {
    ((bytes as f64 / rate).ceil() as u64).max(1)
}

fn prev_pow2(x: u64) -> u64 {
    1 << (63 - x.leading_zeros())
}

/// Largest power of two dividing `mfn` (the largest order a range starting there may have).
fn largest_aligned(mfn: u64) -> u64 {
    if mfn == 0 {
        1 << 62
    } else {
        1 << mfn.trailing_zeros()
    }
}
