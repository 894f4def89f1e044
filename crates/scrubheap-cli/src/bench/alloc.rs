//! `scrubheap bench alloc`: allocator throughput against `buddy_system_allocator` on the
//! same seeded alloc/free sequence (DESIGN sections 6 and 8).
//!
//! For each of orders 0, 9 and 18 one sequence is built before anything is timed: a set
//! of long-lived allocations held near a target occupancy (each churn step allocates one
//! more or frees a random one), plus short-lived allocations freed 1 to 32 steps after
//! they were made, all of that order. It ends with everything freed, so it can be run
//! again on the same allocator. The identical sequence then runs on
//!
//! - scrubheap (`Heap<NullMemory>`, requests needing scrubbed memory, no background
//!   scrubber: every free frame is dirty, each allocation scrubs what it hands out);
//! - scrubheap with a scrubber (`scrub_step` every [`SCRUB_EVERY`] operations, its time
//!   included);
//! - `buddy_system_allocator::FrameAllocator<32>` over the same frame range;
//!
//! after an untimed warm-up of each (every metadata page touched, the sequence run once),
//! interleaved over several repetitions; the medians are reported. A separate untimed
//! pass on fresh allocators checks every frame handed out (in range, aligned, no overlap
//! among live allocations) and the heap's invariants.

use anyhow::{bail, ensure, Context};
use buddy_system_allocator::FrameAllocator;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use scrubheap::{AllocRequest, DomId, Heap, HeapConfig, Mfn, NeverPreempt, NullMemory};
use scrubheap_host::median;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Allocator throughput against buddy_system_allocator.
#[derive(clap::Args)]
pub struct Args {
    /// Where to write the JSON report.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Seed of the alloc/free sequence.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Churn steps of the order 0 and order 9 sequences (order 18 gets a 32nd, at least
    /// 1,000); ramp-up and teardown operations come on top.
    #[arg(long, default_value_t = 1_000_000)]
    pub steps: u64,
    /// Timed repetitions of each allocator, interleaved; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// What to run: LLFree's patterns (`patterns`), the churn sequence against
    /// buddy_system_allocator (`churn`), or both (`all`).
    #[arg(long, default_value = "all", value_parser = ["all", "patterns", "churn"])]
    pub suite: String,
    /// The LLFree peer program (`bench/llfree-peer`); by default it is built with cargo
    /// when LLFree's sources are at `../shared/peers/llfree`, and skipped otherwise.
    #[arg(long)]
    pub peer_bin: Option<PathBuf>,
    /// log2 of the frames of the patterns' allocators (20: 4 GiB of 4 KiB frames).
    #[arg(long, default_value_t = 20)]
    pub frames_log2: u8,
    /// Orders of the patterns (LLFree runs 0 and 9 only).
    #[arg(long, value_delimiter = ',', default_value = "0,9,18")]
    pub orders: Vec<u8>,
    /// Thread counts of the patterns.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
}

/// The orders benchmarked; each has its own sequence.
pub const ORDERS: [u8; 3] = [0, 9, 18];
/// The scrubber variant calls `scrub_step` after every this many operations.
pub const SCRUB_EVERY: u64 = 64;
/// Frames in the heap (and in the peer): 2^24 4 KiB frames, 64 GiB, metadata only.
pub const HEAP_FRAMES_LOG2: u8 = 24;
/// At most this many long-lived allocations are held at once.
const LONG_LIVE_CAP: u64 = 1 << 16;
/// Short-lived allocations are freed 1 to this many steps after they were made.
const SHORT_LIFE_MAX: u64 = 32;
/// The owner of every allocation.
const OWNER: DomId = DomId(1);
/// The peer: enough orders for 2^18-frame blocks (it carves the range into 2^24 blocks).
type Peer = FrameAllocator<32>;
const PEER_NAME: &str = "buddy_system_allocator 0.11 FrameAllocator<32> (unlocked)";
const NOTE: &str = "scrubheap runs honestly: every request needs scrubbed memory (the default), free marks \
frames dirty, and scrubheap_mops has no background scrubber, so after warm-up every free frame is dirty and \
each allocation scrubs in place the frames it hands out; NullMemory makes the zeroing itself free, so these \
figures measure allocator and scrub bookkeeping, not memory bandwidth. scrubheap_scrubbed_mops also calls \
scrub_step(node 0, SCRUB_EVERY << order frames) every SCRUB_EVERY operations, its time included, which keeps \
memory clean. The peer takes no lock; scrubheap takes its node and claims spin locks on every operation.";

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Seed of the sequences.
    pub seed: u64,
    /// Churn steps of the order 0 and 9 sequences.
    pub steps: u64,
    /// Timed repetitions.
    pub reps: usize,
    /// log2 of the heap's frames.
    pub heap_frames_log2: u8,
}

/// The figures of one order.
#[derive(Clone, Debug, Serialize)]
pub struct OrderResult {
    /// Median Mops/s of scrubheap (no background scrubber).
    pub scrubheap_mops: f64,
    /// Median Mops/s of buddy_system_allocator.
    pub peer_mops: f64,
    /// `scrubheap_mops / peer_mops`.
    pub ratio: f64,
    /// Median Mops/s of scrubheap with `scrub_step` every `scrub_every` operations.
    pub scrubheap_scrubbed_mops: f64,
    /// `scrubheap_scrubbed_mops / peer_mops`.
    pub ratio_scrubbed: f64,
    /// Operations (allocs + frees) in one run of the sequence.
    pub ops: u64,
    /// Long-lived allocations held in the churn phase.
    pub live_target: u64,
    /// Every repetition's Mops/s, in run order.
    pub scrubheap_runs: Vec<f64>,
    /// Every repetition's Mops/s, in run order.
    pub peer_runs: Vec<f64>,
    /// Every repetition's Mops/s, in run order.
    pub scrubheap_scrubbed_runs: Vec<f64>,
}

/// The JSON report: schema-1 `bench.alloc` plus what it was run with.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `order0`, `order9`, `order18`.
    pub alloc: BTreeMap<String, OrderResult>,
    /// Seed of the sequences.
    pub seed: u64,
    /// Timed repetitions (medians over these).
    pub reps: usize,
    /// Frames both allocators manage.
    pub heap_frames: u64,
    /// The peer allocator.
    pub peer: String,
    /// `scrub_step` period of the scrubber variant, in operations.
    pub scrub_every_ops: u64,
    /// How scrubheap was run.
    pub note: String,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Op {
    /// Allocate and store the first frame in this slot.
    Alloc(u32),
    /// Free what this slot holds.
    Free(u32),
}

/// One order's operations, built before anything is timed.
struct Sequence {
    order: u8,
    ops: Vec<Op>,
    slots: usize,
    live_target: u64,
}

#[derive(Default)]
struct SlotPool {
    free: Vec<u32>,
    next: u32,
}

impl SlotPool {
    fn take(&mut self) -> u32 {
        self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        })
    }
}

/// The sequence's next step: 0 a short-lived allocation, 1 a long-lived one, 2 free a
/// random long-lived allocation, 3 free the short-lived allocation due first (only when
/// at the cap with no long-lived one). `held` is (long-lived, all live) allocations,
/// `limits` (the long-lived target, the cap on live ones); during the ramp every
/// allocation that is not short-lived is long-lived.
fn next_action(rng: &mut ChaCha8Rng, ramp: bool, held: (u64, u64), limits: (u64, u64)) -> u8 {
    let ((long, live), (live_target, max_live)) = (held, limits);
    let mut action = if rng.random_bool(0.5) {
        0
    } else if ramp || rng.random_bool(if long < live_target { 0.6 } else { 0.4 }) {
        1
    } else {
        2
    };
    if action < 2 && live >= max_live {
        action = 2;
    }
    if action == 2 && long == 0 {
        action = if live >= max_live { 3 } else { 0 };
    }
    action
}

fn build_sequence(order: u8, heap_frames: u64, steps: u64, seed: u64) -> Sequence {
    let blocks = heap_frames >> order;
    let live_target = (blocks * 3 / 8).clamp(1, LONG_LIVE_CAP);
    let max_live = (blocks * 3 / 4).max(2);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ ((order as u64) << 56) ^ 0x5eed_a110c);
    let mut slots = SlotPool::default();
    let mut long: Vec<u32> = Vec::new();
    let mut short: BinaryHeap<Reverse<(u64, u32)>> = BinaryHeap::new();
    let mut ops = Vec::with_capacity((steps + 4 * live_target) as usize);
    let mut t = 0u64;
    let mut churned = 0u64;
    let mut ramp = true;
    while churned < steps {
        t += 1;
        if let Some(&Reverse((due, s))) = short.peek() {
            if due <= t {
                short.pop();
                ops.push(Op::Free(s));
                slots.free.push(s);
                continue;
            }
        }
        if ramp && long.len() as u64 >= live_target {
            ramp = false;
        }
        if !ramp {
            churned += 1;
        }
        let live = (long.len() + short.len()) as u64;
        let action = next_action(&mut rng, ramp, (long.len() as u64, live), (live_target, max_live));
        match action {
            0 | 1 => {
                let s = slots.take();
                ops.push(Op::Alloc(s));
                if action == 0 {
                    short.push(Reverse((t + rng.random_range(1..=SHORT_LIFE_MAX), s)));
                } else {
                    long.push(s);
                }
            }
            2 => {
                let s = long.swap_remove(rng.random_range(0..long.len()));
                ops.push(Op::Free(s));
                slots.free.push(s);
            }
            _ => {
                let Reverse((_, s)) =
                    short.pop().expect("at the cap with no long-lived allocation: some are short-lived");
                ops.push(Op::Free(s));
                slots.free.push(s);
            }
        }
    }
    while let Some(Reverse((_, s))) = short.pop() {
        ops.push(Op::Free(s));
    }
    while !long.is_empty() {
        let s = long.swap_remove(rng.random_range(0..long.len()));
        ops.push(Op::Free(s));
    }
    Sequence { order, ops, slots: slots.next as usize, live_target }
}

/// An allocator under test, at one order.
trait Subject {
    /// First frame of a new allocation, or `None`.
    fn alloc(&mut self) -> Option<u64>;
    /// Frees what `alloc` returned; false if the allocator refused.
    fn free(&mut self, mfn: u64) -> bool;
}

struct Scrubheap {
    heap: Heap<NullMemory>,
    req: AllocRequest,
    /// `Some(budget)`: call `scrub_step(0, budget)` every [`SCRUB_EVERY`] operations.
    scrub: Option<u64>,
    since_scrub: u64,
}

impl Scrubheap {
    fn new(first: u64, frames: u64, order: u8, scrub: bool) -> anyhow::Result<Self> {
        let mut config = HeapConfig::uniform(1, frames);
        config.first = Mfn(first);
        let heap = Heap::new(config, NullMemory).context("building the heap")?;
        Ok(Scrubheap {
            heap,
            req: AllocRequest::new(order, OWNER),
            scrub: scrub.then_some(SCRUB_EVERY << order),
            since_scrub: 0,
        })
    }

    #[inline(always)]
    fn tick(&mut self) {
        if let Some(budget) = self.scrub {
            self.since_scrub += 1;
            if self.since_scrub == SCRUB_EVERY {
                self.since_scrub = 0;
                let _ = self.heap.scrub_step(0, budget, &NeverPreempt);
            }
        }
    }
}

impl Subject for Scrubheap {
    #[inline(always)]
    fn alloc(&mut self) -> Option<u64> {
        let r = self.heap.alloc_preemptible(&self.req, &NeverPreempt).ok().flatten().map(|e| e.mfn.0);
        self.tick();
        r
    }
    #[inline(always)]
    fn free(&mut self, mfn: u64) -> bool {
        let r = self.heap.free(Mfn(mfn), self.req.order, OWNER).is_ok();
        self.tick();
        r
    }
}

struct Buddy {
    alloc: Peer,
    frames: usize,
}

impl Buddy {
    fn new(first: u64, frames: u64, order: u8) -> Self {
        let mut alloc = Peer::new();
        alloc.add_frame(first as usize, (first + frames) as usize);
        Buddy { alloc, frames: 1 << order }
    }
}

impl Subject for Buddy {
    #[inline(always)]
    fn alloc(&mut self) -> Option<u64> {
        self.alloc.alloc(self.frames).map(|f| f as u64)
    }
    #[inline(always)]
    fn free(&mut self, mfn: u64) -> bool {
        self.alloc.dealloc(mfn as usize, self.frames);
        true
    }
}

const NO_FRAME: u64 = u64::MAX;

/// Runs the sequence once; the time of the operations only. Fails if an operation failed.
#[inline(never)]
fn run<S: Subject>(s: &mut S, seq: &Sequence, table: &mut [u64]) -> anyhow::Result<Duration> {
    let mut failures = 0u64;
    let start = Instant::now();
    for &op in &seq.ops {
        match op {
            Op::Alloc(i) => {
                table[i as usize] = match s.alloc() {
                    Some(f) => f,
                    None => {
                        failures += 1;
                        NO_FRAME
                    }
                }
            }
            Op::Free(i) => {
                let f = table[i as usize];
                if f != NO_FRAME && !s.free(f) {
                    failures += 1;
                }
            }
        }
    }
    let took = start.elapsed();
    std::hint::black_box(&*table);
    ensure!(failures == 0, "{failures} operations failed at order {}", seq.order);
    Ok(took)
}

/// The untimed check: every allocation inside `[lo, hi)`, aligned, overlapping no live one;
/// `check` (the heap's invariants) a few times along the way and at the end.
fn verify<S: Subject>(
    s: &mut S,
    seq: &Sequence,
    lo: u64,
    hi: u64,
    name: &str,
    mut check: impl FnMut(&S) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let len = 1u64 << seq.order;
    let mut table = vec![NO_FRAME; seq.slots];
    let mut live: BTreeMap<u64, u64> = BTreeMap::new();
    let every = (seq.ops.len() / 4).max(1);
    for (k, &op) in seq.ops.iter().enumerate() {
        match op {
            Op::Alloc(i) => {
                let f = s.alloc().with_context(|| format!("{name}: allocation {k} of order {} failed", seq.order))?;
                ensure!(f >= lo && f + len <= hi, "{name}: frames {f:#x}+{len} are outside [{lo:#x}, {hi:#x})");
                ensure!(f % len == 0, "{name}: frame {f:#x} is not aligned to order {}", seq.order);
                if let Some((&a, &b)) = live.range(..f + len).next_back() {
                    ensure!(b <= f, "{name}: frames {f:#x}+{len} overlap live [{a:#x}, {b:#x})");
                }
                live.insert(f, f + len);
                table[i as usize] = f;
            }
            Op::Free(i) => {
                let f = table[i as usize];
                ensure!(live.remove(&f).is_some(), "{name}: slot {i} holds no live allocation");
                ensure!(s.free(f), "{name}: free of {f:#x} order {} refused", seq.order);
            }
        }
        if (k + 1) % every == 0 {
            check(s)?;
        }
    }
    ensure!(live.is_empty(), "{name}: {} allocations left live", live.len());
    check(s)
}

fn check_heap(h: &Scrubheap) -> anyhow::Result<()> {
    h.heap.check_invariants()?;
    Ok(())
}

/// Touches every metadata page: fills the allocator with order-8 blocks (every 2 MiB
/// block of scrubheap split, its record table made, then given back), then frees them all.
fn touch<S: Subject>(s: &mut S) -> anyhow::Result<()> {
    let mut got = Vec::new();
    while let Some(f) = s.alloc() {
        got.push(f);
    }
    ensure!(!got.is_empty(), "warm-up: nothing could be allocated");
    for f in got {
        ensure!(s.free(f), "warm-up: free of {f:#x} refused");
    }
    Ok(())
}

fn mops(ops: usize, d: Duration) -> f64 {
    ops as f64 / d.as_secs_f64().max(1e-9) / 1e6
}

fn bench_order(cfg: &Config, order: u8) -> anyhow::Result<OrderResult> {
    let frames = 1u64 << cfg.heap_frames_log2;
    // Start the range at a multiple of its size: buddy_system_allocator carves frame 0 as
    // a 32-frame block, so a range from 0 would not hold the same blocks in both.
    let (lo, hi) = (frames, 2 * frames);
    let steps = if order >= 18 { (cfg.steps / 32).max(cfg.steps.min(1000)) } else { cfg.steps };
    let seq = build_sequence(order, frames, steps, cfg.seed);

    // The correctness pass, on fresh allocators.
    let mut sh = Scrubheap::new(lo, frames, order, false)?;
    verify(&mut sh, &seq, lo, hi, "scrubheap", check_heap)?;
    let s = sh.heap.stats();
    ensure!(s.allocated == 0 && s.free_clean + s.free_dirty == frames, "scrubheap: frames not all free at the end");
    drop(sh);
    verify(&mut Buddy::new(lo, frames, order), &seq, lo, hi, "buddy_system_allocator", |_| Ok(()))?;

    // Warm-up: every metadata page touched, then the sequence once, untimed.
    let mut a = Scrubheap::new(lo, frames, order, false)?;
    let mut b = Buddy::new(lo, frames, order);
    let mut c = Scrubheap::new(lo, frames, order, true)?;
    for h in [&mut a, &mut c] {
        let keep = std::mem::replace(&mut h.req, AllocRequest::new(8, OWNER));
        let scrub = h.scrub.take();
        touch(h)?;
        h.req = keep;
        h.scrub = scrub;
    }
    // The peer frees by size, so touch it with an order-8 view of itself.
    let mut b8 = Buddy { alloc: std::mem::replace(&mut b.alloc, Peer::new()), frames: 256 };
    touch(&mut b8)?;
    b.alloc = b8.alloc;
    // Without a scrubber the heap is now dirty throughout: its steady state. The scrubber
    // variant starts clean.
    c.heap.scrub_step(0, u64::MAX, &NeverPreempt)?;
    let mut table = vec![NO_FRAME; seq.slots];
    run(&mut a, &seq, &mut table)?;
    run(&mut b, &seq, &mut table)?;
    run(&mut c, &seq, &mut table)?;

    let n = seq.ops.len();
    let (mut ra, mut rb, mut rc) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..cfg.reps {
        ra.push(mops(n, run(&mut a, &seq, &mut table)?));
        rb.push(mops(n, run(&mut b, &seq, &mut table)?));
        rc.push(mops(n, run(&mut c, &seq, &mut table)?));
    }
    for (h, name) in [(&a, "scrubheap"), (&c, "scrubheap with scrubber")] {
        h.heap.check_invariants().with_context(|| format!("{name} after the timed runs"))?;
        ensure!(h.heap.stats().allocated == 0, "{name}: frames left allocated after the timed runs");
    }
    let (ma, mb, mc) = (median(ra.clone()), median(rb.clone()), median(rc.clone()));
    Ok(OrderResult {
        scrubheap_mops: ma,
        peer_mops: mb,
        ratio: ma / mb,
        scrubheap_scrubbed_mops: mc,
        ratio_scrubbed: mc / mb,
        ops: n as u64,
        live_target: seq.live_target,
        scrubheap_runs: ra,
        peer_runs: rb,
        scrubheap_scrubbed_runs: rc,
    })
}

/// Runs the benchmark at every order of [`ORDERS`].
pub fn bench(cfg: &Config) -> anyhow::Result<Report> {
    ensure!(cfg.reps >= 1, "--reps must be at least 1");
    ensure!(cfg.steps >= 1, "--steps must be at least 1");
    ensure!(
        (20..=31).contains(&cfg.heap_frames_log2),
        "the heap needs 2^20 to 2^31 frames, not 2^{}",
        cfg.heap_frames_log2
    );
    let mut alloc = BTreeMap::new();
    for order in ORDERS {
        alloc.insert(format!("order{order}"), bench_order(cfg, order)?);
    }
    Ok(Report {
        alloc,
        seed: cfg.seed,
        reps: cfg.reps,
        heap_frames: 1 << cfg.heap_frames_log2,
        peer: PEER_NAME.into(),
        scrub_every_ops: SCRUB_EVERY,
        note: NOTE.replace("SCRUB_EVERY", &SCRUB_EVERY.to_string()),
    })
}

fn print_table(r: &Report) {
    println!(
        "bench alloc: seed {}, {} frames (metadata only), median of {} interleaved reps, Mops/s = (allocs + frees) / s",
        r.seed, r.heap_frames, r.reps
    );
    println!(
        "{:<7} {:>9} {:>11} {:>10} {:>16} {:>10} {:>7} {:>16}",
        "order", "ops", "live_target", "scrubheap", "scrubheap+scrub", "buddy", "ratio", "ratio(+scrub)"
    );
    for order in ORDERS {
        let o = &r.alloc[&format!("order{order}")];
        println!(
            "{:<7} {:>9} {:>11} {:>10.3} {:>16.3} {:>10.3} {:>7.3} {:>16.3}",
            order,
            o.ops,
            o.live_target,
            o.scrubheap_mops,
            o.scrubheap_scrubbed_mops,
            o.peer_mops,
            o.ratio,
            o.ratio_scrubbed
        );
    }
    for order in ORDERS {
        let o = &r.alloc[&format!("order{order}")];
        let f = |v: &[f64]| v.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(" ");
        println!(
            "order {order} runs: scrubheap [{}]  +scrub [{}]  buddy [{}]",
            f(&o.scrubheap_runs),
            f(&o.scrubheap_scrubbed_runs),
            f(&o.peer_runs)
        );
    }
    println!("peer: {}", r.peer);
    println!("note: {}", r.note);
}

/// `scrubheap bench alloc`.
pub fn main(a: Args) -> anyhow::Result<()> {
    if a.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let mut out = serde_json::Map::new();
    if a.suite != "churn" {
        let (peer, skipped) = match super::patterns::find_peer(a.peer_bin.clone()) {
            Ok(p) => (Some(p), None),
            Err(why) => (None, Some(why)),
        };
        let pc = super::patterns::Config {
            frames_log2: a.frames_log2,
            reps: a.reps,
            orders: a.orders.clone(),
            threads: a.threads.clone(),
            peer,
        };
        let r = super::patterns::bench(&pc, skipped)?;
        super::patterns::print(&r);
        out.insert("patterns".into(), serde_json::to_value(&r)?);
    }
    if a.suite != "patterns" {
        let cfg = Config { seed: a.seed, steps: a.steps, reps: a.reps, heap_frames_log2: HEAP_FRAMES_LOG2 };
        let report = bench(&cfg)?;
        print_table(&report);
        for (k, v) in serde_json::to_value(&report)?.as_object().context("a report is an object")? {
            out.insert(k.clone(), v.clone());
        }
    }
    if let Some(path) = &a.json {
        let settings = serde_json::json!({
            "seed": a.seed, "steps": a.steps, "reps": a.reps, "suite": a.suite,
            "frames_log2": a.frames_log2, "orders": a.orders, "threads": a.threads,
        });
        crate::output::write_json(path, "bench alloc", settings, &out)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_is_deterministic_and_balanced() {
        let a = build_sequence(9, 1 << 20, 2000, 7);
        let b = build_sequence(9, 1 << 20, 2000, 7);
        assert_eq!(a.ops, b.ops);
        let allocs = a.ops.iter().filter(|o| matches!(o, Op::Alloc(_))).count();
        assert_eq!(allocs * 2, a.ops.len(), "every allocation is freed");
        assert_ne!(a.ops, build_sequence(9, 1 << 20, 2000, 8).ops);
        // Never more live than the heap holds (3/4 of its blocks), even with 4 blocks.
        let s = build_sequence(18, 1 << 20, 3000, 7);
        let mut live = 0i64;
        for op in &s.ops {
            live += if matches!(op, Op::Alloc(_)) { 1 } else { -1 };
            assert!((0..=3).contains(&live), "{live} live order-18 allocations in a 4-block heap");
        }
    }

    #[test]
    fn tiny_run_has_the_schema_1_shape() {
        let cfg = Config { seed: 3, steps: 600, reps: 2, heap_frames_log2: 20 };
        let report = bench(&cfg).unwrap();
        let v = serde_json::to_value(&report).unwrap();
        for order in ["order0", "order9", "order18"] {
            let o = &v["alloc"][order];
            for key in ["scrubheap_mops", "peer_mops", "ratio", "scrubheap_scrubbed_mops", "ratio_scrubbed"] {
                let x = o[key].as_f64().unwrap_or_else(|| panic!("{order}.{key} missing"));
                assert!(x.is_finite() && x > 0.0, "{order}.{key} = {x}");
            }
            assert_eq!(o["scrubheap_runs"].as_array().unwrap().len(), 2);
            assert!(o["ops"].as_u64().unwrap() > 0);
        }
        assert_eq!(v["seed"], 3);
        assert!(v["note"].as_str().unwrap().contains("NullMemory"));
    }
}
