//! LLFree's benchmark patterns (`bulk`, `repeat`, `rand`, as its `eval/src/bin/bench.rs`
//! defines them) on scrubheap's per-CPU fast path, on LLFree and on
//! buddy_system_allocator, with identical call sequences.
//!
//! Every run works on `2^frames_log2` frames (metadata only) and sizes its work for
//! [`MAX_THREADS`] threads, so 1 and 2 threads do the same work per thread:
//! `allocs = frames / MAX_THREADS / 2 / 2^order` allocations per thread, repeated
//! `rounds = min(2^order, MAX_ROUNDS)` times.
//!
//! - `bulk`: each thread gets `allocs` frames, then (after a barrier) puts them back in
//!   reverse order; ns per get and per put.
//! - `repeat`: each thread first holds `allocs` frames (untimed), then gets one and puts
//!   it back, `allocs * rounds` times; ns per pair.
//! - `rand`: each thread gets `allocs` frames; all threads' frames are shuffled together
//!   (untimed, the same splitmix64 shuffle in every subject), and each thread puts back
//!   its share of the shuffled frames: most were got by another thread.
//!
//! Subjects: LLFree (`bench/llfree-peer`, a process per run: it needs `../shared`),
//! scrubheap *clean* and *dirty* (`Heap<NullMemory>` with one fast-path CPU per thread,
//! requests that need scrubbed memory), and `buddy_system_allocator` behind a mutex.
//! Every subject is called every [`MAINTAIN_EVERY`] operations inside the timed loops
//! (clean scrubheap zeroes its CPU's reserve then: `scrub_reserve`, its time counted;
//! the others do nothing) and between timed phases (clean scrubheap runs `scrub_reserve`
//! of every CPU, then `scrub_step` until it has nothing left to do, which also returns
//! the blocks puts parked to the free lists, untimed: the idle scrubbers keeping up; the
//! others do nothing). Dirty scrubheap starts with every frame dirty and never scrubs in
//! the background, so each get zeroes in place what it hands out (`NullMemory`: the
//! bookkeeping only), and its parked blocks serve its refills.

use anyhow::{bail, ensure, Context};
use buddy_system_allocator::FrameAllocator;
use scrubheap::{AllocRequest, DomId, Heap, HeapConfig, Mfn, NeverPreempt, NullMemory, FAST_ORDERS};
use scrubheap_host::median;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Barrier, Mutex};
use std::time::Instant;

/// Work is sized for this many threads; runs use 1 to this many.
pub const MAX_THREADS: usize = 2;
/// Rounds of a pattern: LLFree's `2^order`, at most this many.
pub const MAX_ROUNDS: usize = 4096;
/// Subjects are called to do their upkeep every this many operations of a thread.
pub const MAINTAIN_EVERY: usize = 64;
/// The patterns.
pub const PATTERNS: [&str; 3] = ["bulk", "repeat", "rand"];
/// The owner of every allocation.
const OWNER: DomId = DomId(1);
/// The seed of the `rand` shuffle, as LLFree's.
const SHUFFLE_SEED: u64 = 42;

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// log2 of the frames every allocator manages.
    pub frames_log2: u8,
    /// Interleaved repetitions; medians are reported.
    pub reps: usize,
    /// Orders to run (LLFree runs only those up to its tree order, 0 and 9 here).
    pub orders: Vec<u8>,
    /// Thread counts, each 1 to [`MAX_THREADS`].
    pub threads: Vec<usize>,
    /// The LLFree peer program, if it is to run.
    pub peer: Option<PathBuf>,
}

/// Nanoseconds per operation: get and put (bulk, rand) and per get+put pair.
#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize)]
pub struct Times {
    /// Per get, `None` for `repeat` (pairs only).
    pub get_ns: Option<f64>,
    /// Per put, `None` for `repeat`.
    pub put_ns: Option<f64>,
    /// Per get+put pair.
    pub pair_ns: f64,
}

/// One subject's figures in one case.
#[derive(Clone, Debug, Serialize)]
pub struct SubjectResult {
    /// `llfree`, `scrubheap_clean`, `scrubheap_dirty`, `buddy`.
    pub subject: String,
    /// Medians over the repetitions.
    pub median: Times,
    /// Median time relative to LLFree's (get, put, pair), when LLFree ran this case.
    pub ratio_to_llfree: Option<Times>,
    /// Every repetition, in run order.
    pub runs: Vec<Times>,
}

/// One pattern at one order on some threads.
#[derive(Clone, Debug, Serialize)]
pub struct Case {
    /// `bulk`, `repeat`, `rand`.
    pub pattern: String,
    /// The order of every allocation.
    pub order: u8,
    /// Threads running the pattern at once.
    pub threads: usize,
    /// Allocations per thread per round.
    pub allocs: usize,
    /// Rounds.
    pub rounds: usize,
    /// The subjects' figures.
    pub subjects: Vec<SubjectResult>,
}

/// Metadata of each allocator, bytes per frame.
#[derive(Clone, Debug, Serialize)]
pub struct Metadata {
    /// scrubheap by formula (a bound), no block split: block directory, dirty bitmap and
    /// its summaries, a spare record table (`scrubheap::node_metadata_bound(frames, 0)`),
    /// plus the fast path's tables.
    pub scrubheap_formula: f64,
    /// scrubheap by formula at worst, every 2 MiB block split into smaller chunks (a
    /// record table each): `node_metadata_bound(frames, frames / 512)` plus the tables.
    pub scrubheap_formula_worst: f64,
    /// scrubheap as its own accounting reports it at the end of a bulk get phase of
    /// order 0 on one thread (split blocks' tables and live fast-path blocks included).
    pub scrubheap_measured_peak: f64,
    /// scrubheap as its own accounting reports it after building (fixed part).
    pub scrubheap_measured: f64,
    /// scrubheap's live fast-path block records, at the end of a bulk get phase of
    /// order 0 on one thread (their largest use), per frame.
    pub scrubheap_blocks_peak: f64,
    /// LLFree's `metadata_size` (local + trees + lower) per frame, if it ran.
    pub llfree: Option<f64>,
}

/// The patterns' report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Frames every allocator manages.
    pub frames: u64,
    /// Repetitions per case.
    pub reps: usize,
    /// Every case.
    pub cases: Vec<Case>,
    /// Metadata per frame.
    pub metadata: Metadata,
    /// Why LLFree did not run, if it did not.
    pub llfree_skipped: Option<String>,
}

/// One allocator under the patterns.
trait Subject: Sync {
    /// A frame of 2^order for thread `t`, `None` if the allocator has none.
    fn get(&self, t: usize, order: u8) -> Option<u64>;
    /// Gives `frame` back from thread `t`; false if refused.
    fn put(&self, t: usize, frame: u64, order: u8) -> bool;
    /// Upkeep inside timed loops, every [`MAINTAIN_EVERY`] operations of thread `t`.
    fn maintain(&self, _t: usize, _order: u8) {}
    /// Upkeep between timed phases (untimed).
    fn idle(&self) {}
    /// Frames held by owners now (for the end-of-run check).
    fn allocated(&self) -> u64;
}

struct Scrub {
    heap: Heap<NullMemory>,
    clean: bool,
}

impl Scrub {
    fn new(frames: u64, clean: bool) -> anyhow::Result<Self> {
        let mut c = HeapConfig::uniform(1, frames).with_cpus(MAX_THREADS).with_initially_dirty(!clean);
        c.first = Mfn(frames);
        // A batch of 2 MiB, so a dirty order-9 get may zero its chunk in place (with the
        // default 1 MiB batch it is refused: a scrub ticket's job).
        c.scrub_batch = 512;
        Ok(Scrub { heap: Heap::new(c, NullMemory).context("building the heap")?, clean })
    }
}

impl Subject for Scrub {
    #[inline]
    fn get(&self, t: usize, order: u8) -> Option<u64> {
        let req = AllocRequest::new(order, OWNER).exact(0);
        match self.heap.get(t, &req) {
            Ok(e) => Some(e.mfn.0),
            // More dirty frames than one batch (order 18, or order 9 past the batch): what
            // an owner that may wait does, a ticket advanced batch by batch.
            Err(scrubheap::HeapError::NeedsScrubTicket { .. }) => {
                self.heap.alloc_preemptible(&req, &NeverPreempt).ok().flatten().map(|e| e.mfn.0)
            }
            Err(_) => None,
        }
    }
    #[inline]
    fn put(&self, t: usize, frame: u64, order: u8) -> bool {
        self.heap.put(t, Mfn(frame), order, OWNER).is_ok()
    }
    #[inline]
    fn maintain(&self, t: usize, order: u8) {
        if self.clean {
            let _ = self.heap.scrub_reserve(t, (MAINTAIN_EVERY as u64) << order);
        }
    }
    fn idle(&self) {
        if self.clean {
            for t in 0..MAX_THREADS {
                let _ = self.heap.scrub_reserve(t, u64::MAX);
            }
            // Each step also returns a bounded number of the blocks puts parked to the
            // free lists; steps until nothing is left to scrub (at most one per block).
            let most = self.heap.stats().total() >> FAST_ORDERS[0].1;
            for _ in 0..=most {
                if self.heap.scrub_step(0, u64::MAX, &NeverPreempt).unwrap_or(0) == 0 {
                    break;
                }
            }
        }
    }
    fn allocated(&self) -> u64 {
        self.heap.stats().allocated
    }
}

struct Buddy {
    alloc: Mutex<FrameAllocator<32>>,
    held: std::sync::atomic::AtomicU64,
}

impl Buddy {
    fn new(frames: u64) -> Self {
        let mut a = FrameAllocator::<32>::new();
        a.add_frame(frames as usize, 2 * frames as usize);
        Buddy { alloc: Mutex::new(a), held: 0.into() }
    }
}

impl Subject for Buddy {
    #[inline]
    fn get(&self, _t: usize, order: u8) -> Option<u64> {
        let f = self.alloc.lock().ok()?.alloc(1 << order)? as u64;
        self.held.fetch_add(1 << order, std::sync::atomic::Ordering::Relaxed);
        Some(f)
    }
    #[inline]
    fn put(&self, _t: usize, frame: u64, order: u8) -> bool {
        let Ok(mut a) = self.alloc.lock() else { return false };
        a.dealloc(frame as usize, 1 << order);
        self.held.fetch_sub(1 << order, std::sync::atomic::Ordering::Relaxed);
        true
    }
    fn allocated(&self) -> u64 {
        self.held.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// splitmix64, the generator of the `rand` shuffle (the peer uses the same).
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fisher-Yates with [`next`], seeded.
pub fn shuffle(v: &mut [u64], seed: u64) {
    let mut s = seed;
    for i in (1..v.len()).rev() {
        let j = (next(&mut s) % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// Per-thread sums of one run: get ns, put ns, timed gets, timed puts, failures.
#[derive(Default, Clone, Copy)]
struct Sums {
    get: u128,
    put: u128,
    gets: u64,
    puts: u64,
    failed: u64,
}

impl Sums {
    fn add(&mut self, o: Sums) {
        self.get += o.get;
        self.put += o.put;
        self.gets += o.gets;
        self.puts += o.puts;
        self.failed += o.failed;
    }
}

/// Gets `pages.len()` frames into `pages`, timed; upkeep every [`MAINTAIN_EVERY`].
#[inline(never)]
fn get_all<S: Subject>(s: &S, t: usize, order: u8, pages: &mut [u64], sums: &mut Sums) {
    let timer = Instant::now();
    for (i, p) in pages.iter_mut().enumerate() {
        *p = s.get(t, order).unwrap_or_else(|| {
            sums.failed += 1;
            u64::MAX
        });
        if i % MAINTAIN_EVERY == MAINTAIN_EVERY - 1 {
            s.maintain(t, order);
        }
    }
    sums.get += timer.elapsed().as_nanos();
    sums.gets += pages.len() as u64;
}

/// Puts back every frame of `pages` (last first if `lifo`, as a stack pops), timed.
#[inline(never)]
fn put_all<S: Subject>(s: &S, t: usize, order: u8, pages: &[u64], lifo: bool, sums: &mut Sums) {
    let timer = Instant::now();
    let n = pages.len();
    for i in 0..n {
        let p = pages[if lifo { n - 1 - i } else { i }];
        if p != u64::MAX && !s.put(t, p, order) {
            sums.failed += 1;
        }
        if i % MAINTAIN_EVERY == MAINTAIN_EVERY - 1 {
            s.maintain(t, order);
        }
    }
    sums.put += timer.elapsed().as_nanos();
    sums.puts += pages.len() as u64;
}

/// Runs `body(t, barrier)` on `threads` threads and `coordinator(barrier)` on this one,
/// all meeting at one barrier of `threads + 1`; returns the threads' sums added up.
fn with_threads(
    threads: usize,
    body: impl Fn(usize, &Barrier) -> Sums + Sync,
    coordinator: impl FnOnce(&Barrier),
) -> Sums {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, body) = (&barrier, &body);
                sc.spawn(move || body(t, barrier))
            })
            .collect();
        coordinator(&barrier);
        join(hs)
    })
}

fn bulk<S: Subject>(s: &S, order: u8, threads: usize, allocs: usize, rounds: usize) -> Sums {
    let body = |t, barrier: &Barrier| {
        let mut sums = Sums::default();
        let mut pages = vec![0u64; allocs];
        for _ in 0..rounds {
            barrier.wait();
            get_all(s, t, order, &mut pages, &mut sums);
            barrier.wait();
            barrier.wait();
            put_all(s, t, order, &pages, true, &mut sums);
            barrier.wait();
        }
        sums
    };
    with_threads(threads, body, |barrier| {
        for _ in 0..rounds {
            barrier.wait();
            barrier.wait();
            s.idle();
            barrier.wait();
            barrier.wait();
            s.idle();
        }
    })
}

fn repeat<S: Subject>(s: &S, order: u8, threads: usize, allocs: usize, rounds: usize) -> Sums {
    let body = |t, barrier: &Barrier| {
        let mut sums = Sums::default();
        let mut held = vec![0u64; allocs];
        let mut ignore = Sums::default();
        get_all(s, t, order, &mut held, &mut ignore);
        sums.failed += ignore.failed;
        barrier.wait();
        barrier.wait();
        let timer = Instant::now();
        for i in 0..allocs * rounds {
            match s.get(t, order) {
                Some(p) => {
                    if !s.put(t, std::hint::black_box(p), order) {
                        sums.failed += 1;
                    }
                }
                None => sums.failed += 1,
            }
            if i % MAINTAIN_EVERY == MAINTAIN_EVERY - 1 {
                s.maintain(t, order);
            }
        }
        sums.put += timer.elapsed().as_nanos();
        sums.puts += (allocs * rounds) as u64;
        barrier.wait();
        put_all(s, t, order, &held, false, &mut ignore);
        sums.failed += ignore.failed;
        sums
    };
    with_threads(threads, body, |barrier| {
        barrier.wait();
        s.idle();
        barrier.wait();
        barrier.wait();
    })
}

/// Runs `f(thread, part, sums)` on one thread per part, all starting at `barrier`;
/// returns each thread's sums.
fn per_thread<T: Send>(parts: Vec<T>, barrier: &Barrier, f: impl Fn(usize, T, &mut Sums) + Sync) -> Vec<Sums> {
    std::thread::scope(|sc| {
        let f = &f;
        let hs: Vec<_> = parts
            .into_iter()
            .enumerate()
            .map(|(t, part)| {
                sc.spawn(move || {
                    let mut sums = Sums::default();
                    barrier.wait();
                    f(t, part, &mut sums);
                    sums
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("a bench thread panicked")).collect()
    })
}

fn rand<S: Subject>(s: &S, order: u8, threads: usize, allocs: usize, rounds: usize) -> Sums {
    let mut all = vec![0u64; allocs * threads];
    let mut total = Sums::default();
    for round in 0..rounds {
        s.idle();
        let barrier = Barrier::new(threads);
        let got = per_thread(all.chunks_mut(allocs).collect(), &barrier, |t, pages: &mut [u64], sums| {
            get_all(s, t, order, pages, sums)
        });
        shuffle(&mut all, SHUFFLE_SEED + round as u64);
        let put = per_thread(all.chunks(allocs).collect(), &barrier, |t, pages: &[u64], sums| {
            put_all(s, t, order, pages, false, sums)
        });
        got.into_iter().chain(put).for_each(|x| total.add(x));
    }
    total
}

fn join(hs: Vec<std::thread::ScopedJoinHandle<'_, Sums>>) -> Sums {
    let mut total = Sums::default();
    for h in hs {
        total.add(h.join().expect("a bench thread panicked"));
    }
    total
}

/// Runs `pattern` once on `s`: ns per get, put and pair, averaged over the threads' ops.
fn run_on<S: Subject>(s: &S, pattern: &str, order: u8, threads: usize, frames: u64) -> anyhow::Result<Times> {
    let (allocs, rounds) = sizes(frames, order);
    let sums = match pattern {
        "bulk" => bulk(s, order, threads, allocs, rounds),
        "repeat" => repeat(s, order, threads, allocs, rounds),
        "rand" => rand(s, order, threads, allocs, rounds),
        p => bail!("unknown pattern {p}"),
    };
    ensure!(sums.failed == 0, "{} operations failed ({pattern}, order {order}, {threads} threads)", sums.failed);
    ensure!(s.allocated() == 0, "{} frames left allocated after {pattern}", s.allocated());
    Ok(if pattern == "repeat" {
        Times { get_ns: None, put_ns: None, pair_ns: sums.put as f64 / sums.puts as f64 }
    } else {
        let (g, p) = (sums.get as f64 / sums.gets as f64, sums.put as f64 / sums.puts as f64);
        Times { get_ns: Some(g), put_ns: Some(p), pair_ns: g + p }
    })
}

/// Allocations per thread per round, and rounds.
pub fn sizes(frames: u64, order: u8) -> (usize, usize) {
    let allocs = (frames as usize / MAX_THREADS / 2) >> order;
    (allocs.max(1), (1usize << order).min(MAX_ROUNDS))
}

/// Runs the LLFree peer once.
fn run_peer(bin: &Path, pattern: &str, order: u8, threads: usize, frames_log2: u8) -> anyhow::Result<(Times, u64)> {
    let out = Command::new(bin)
        .args([pattern, &order.to_string(), &threads.to_string(), &frames_log2.to_string(), &MAX_THREADS.to_string()])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    ensure!(out.status.success(), "{} failed: {}", bin.display(), String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("reading the peer's JSON")?;
    let t: Times = serde_json::from_value(v.clone()).context("the peer's times")?;
    Ok((t, v["meta_bytes"].as_u64().unwrap_or(0)))
}

const SUBJECTS: [&str; 4] = ["llfree", "scrubheap_clean", "scrubheap_dirty", "buddy"];

/// One repetition of one case on subject `name`; `None` if it does not run there.
fn once(
    cfg: &Config,
    name: &str,
    pattern: &str,
    order: u8,
    threads: usize,
    meta: &mut u64,
) -> anyhow::Result<Option<Times>> {
    let frames = 1u64 << cfg.frames_log2;
    Ok(match name {
        "llfree" => match &cfg.peer {
            Some(bin) if order <= 9 => {
                let (t, m) = run_peer(bin, pattern, order, threads, cfg.frames_log2)?;
                *meta = m;
                Some(t)
            }
            _ => None,
        },
        "scrubheap_clean" => Some(run_on(&Scrub::new(frames, true)?, pattern, order, threads, frames)?),
        "scrubheap_dirty" => Some(run_on(&Scrub::new(frames, false)?, pattern, order, threads, frames)?),
        _ => Some(run_on(&Buddy::new(frames), pattern, order, threads, frames)?),
    })
}

fn ratio(a: &Times, b: &Times) -> Times {
    let r = |x: Option<f64>, y: Option<f64>| Some(x? / y?);
    Times { get_ns: r(a.get_ns, b.get_ns), put_ns: r(a.put_ns, b.put_ns), pair_ns: a.pair_ns / b.pair_ns }
}

fn median_times(runs: &[Times]) -> Times {
    let m = |f: &dyn Fn(&Times) -> Option<f64>| {
        let v: Vec<f64> = runs.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median(v))
    };
    Times { get_ns: m(&|t| t.get_ns), put_ns: m(&|t| t.put_ns), pair_ns: m(&|t| Some(t.pair_ns)).unwrap_or(f64::NAN) }
}

fn case(cfg: &Config, pattern: &str, order: u8, threads: usize, meta: &mut u64) -> anyhow::Result<Case> {
    let mut runs: Vec<Vec<Times>> = vec![Vec::new(); SUBJECTS.len()];
    for _ in 0..cfg.reps {
        for (i, name) in SUBJECTS.iter().enumerate() {
            if let Some(t) = once(cfg, name, pattern, order, threads, meta)? {
                runs[i].push(t);
            }
        }
    }
    let medians: Vec<Option<Times>> = runs.iter().map(|r| (!r.is_empty()).then(|| median_times(r))).collect();
    let subjects = SUBJECTS
        .iter()
        .zip(runs)
        .zip(&medians)
        .filter_map(|((name, runs), m)| {
            let median = (*m)?;
            let ratio_to_llfree = medians[0].map(|l| ratio(&median, &l));
            Some(SubjectResult { subject: name.to_string(), median, ratio_to_llfree, runs })
        })
        .collect();
    let (allocs, rounds) = sizes(1 << cfg.frames_log2, order);
    Ok(Case { pattern: pattern.into(), order, threads, allocs, rounds, subjects })
}

/// scrubheap's metadata per frame, all in bytes a frame.
struct Measured {
    /// By formula, fresh and at worst (every block split), the fast path's tables included.
    formula: (f64, f64),
    /// Its own accounting of a fresh heap (everything it holds).
    fresh: f64,
    /// Its own accounting after the get phase of one thread's order-0 bulk, and the fast
    /// path's live block records then (their largest).
    peak: (f64, f64),
}

/// Measures [`Measured`] on a heap of `frames`.
fn scrubheap_metadata(frames: u64) -> anyhow::Result<Measured> {
    let f = frames as f64;
    // Per block region of each fast order: a 4-byte map entry, and a 16-byte pointer per
    // segment of 128 records (the heap's `reserve.rs`).
    let tables: f64 =
        scrubheap::FAST_ORDERS.iter().map(|&(o, s)| (4.0 + 16.0 / 128.0) / (1u64 << (o + s)) as f64).sum();
    let bound = |split: u64| scrubheap::node_metadata_bound(frames, split) as f64 / f + tables;
    let s = Scrub::new(frames, true)?;
    let fresh = s.heap.metadata_bytes() as f64 / f;
    let (allocs, _) = sizes(frames, 0);
    let got: Vec<u64> = (0..allocs).filter_map(|_| s.get(0, 0)).collect();
    let peak = s.heap.metadata_bytes() as f64 / f;
    let blocks = s.heap.reserve_metadata_bytes().1 as f64 / f;
    for g in got {
        s.put(0, g, 0);
    }
    let worst = bound(frames / scrubheap::BLOCK_FRAMES as u64);
    Ok(Measured { formula: (bound(0), worst), fresh, peak: (peak, blocks) })
}

/// Runs every pattern at every order and thread count of `cfg`.
pub fn bench(cfg: &Config, llfree_skipped: Option<String>) -> anyhow::Result<Report> {
    ensure!(cfg.reps >= 1, "--reps must be at least 1");
    ensure!((16..=26).contains(&cfg.frames_log2), "--frames-log2 must be 16 to 26, not {}", cfg.frames_log2);
    ensure!(cfg.threads.iter().all(|t| (1..=MAX_THREADS).contains(t)), "threads must be 1 to {MAX_THREADS}");
    let frames = 1u64 << cfg.frames_log2;
    let mut meta = 0u64;
    let mut cases = Vec::new();
    for &threads in &cfg.threads {
        for &order in &cfg.orders {
            for pattern in PATTERNS {
                cases.push(case(cfg, pattern, order, threads, &mut meta)?);
            }
        }
    }
    let m = scrubheap_metadata(frames)?;
    let metadata = Metadata {
        scrubheap_formula: m.formula.0,
        scrubheap_formula_worst: m.formula.1,
        scrubheap_measured: m.fresh,
        scrubheap_measured_peak: m.peak.0,
        scrubheap_blocks_peak: m.peak.1,
        llfree: (meta > 0).then(|| meta as f64 / frames as f64),
    };
    Ok(Report { frames, reps: cfg.reps, cases, metadata, llfree_skipped })
}

/// Finds or builds the LLFree peer: `explicit` if given; else, when the LLFree sources
/// are beside the project (`../shared/peers/llfree/core`), builds `bench/llfree-peer`
/// with cargo. `Err(reason)` when LLFree cannot run.
pub fn find_peer(explicit: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if p.is_file() { Ok(p) } else { Err(format!("--peer-bin {} is not a file", p.display())) };
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let src = root.join("../shared/peers/llfree/core/Cargo.toml");
    if !src.is_file() {
        return Err(format!("{} is absent (LLFree is not beside this clone): LLFree skipped", src.display()));
    }
    let manifest = root.join("bench/llfree-peer/Cargo.toml");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .status()
        .map_err(|e| format!("cannot run cargo to build the LLFree peer: {e}"))?;
    if !status.success() {
        return Err(format!("building {} failed: LLFree skipped", manifest.display()));
    }
    Ok(root.join("bench/llfree-peer/target/release/llfree-peer"))
}

fn fmt(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.1}"))
}

fn fmt_ratio(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.2}x"))
}

/// Prints one line per case and subject.
pub fn print(r: &Report) {
    println!(
        "LLFree's patterns: {} frames (metadata only), median of {} interleaved reps; ns per get / put / pair, ratio = time / LLFree's time",
        r.frames, r.reps
    );
    if let Some(why) = &r.llfree_skipped {
        println!("LLFree: {why}");
    }
    println!(
        "{:<7} {:>5} {:>3} {:<16} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "pattern", "order", "thr", "subject", "get", "put", "pair", "get/LL", "put/LL", "pair/LL"
    );
    for c in &r.cases {
        for s in &c.subjects {
            let rt = s.ratio_to_llfree;
            println!(
                "{:<7} {:>5} {:>3} {:<16} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
                c.pattern,
                c.order,
                c.threads,
                s.subject,
                fmt(s.median.get_ns),
                fmt(s.median.put_ns),
                fmt(Some(s.median.pair_ns)),
                fmt_ratio(rt.and_then(|t| t.get_ns)),
                fmt_ratio(rt.and_then(|t| t.put_ns)),
                fmt_ratio(rt.map(|t| t.pair_ns)),
            );
        }
    }
    let m = &r.metadata;
    println!(
        "metadata bytes/frame: scrubheap by formula (F frames, T of the F/512 2 MiB blocks split: (F/512 + 1) * {} B directory + F/8 B dirty bits and summaries + T * {} B tables + a fast-path map entry of 4.125 bytes per 64 and per 8192 frames) {:.3} with T = 0, {:.3} with every block split; measured {:.3} on a fresh heap, {:.3} at an order-0 bulk's peak (of which {:.3} live fast-path block records); LLFree {}",
        scrubheap::DIRECTORY_ENTRY_BYTES,
        scrubheap::TABLE_BYTES,
        m.scrubheap_formula,
        m.scrubheap_formula_worst,
        m.scrubheap_measured,
        m.scrubheap_measured_peak,
        m.scrubheap_blocks_peak,
        m.llfree.map_or("not run".into(), |v| format!("{v:.3}"))
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let mut a: Vec<u64> = (0..100).collect();
        let mut b = a.clone();
        shuffle(&mut a, 42);
        shuffle(&mut b, 42);
        assert_eq!(a, b);
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        a.sort();
        assert_eq!(a, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn tiny_run_without_llfree_reports_every_case() {
        let cfg = Config { frames_log2: 16, reps: 1, orders: vec![0, 9], threads: vec![1, 2], peer: None };
        let r = bench(&cfg, Some("not beside".into())).unwrap();
        assert_eq!(r.cases.len(), 2 * 2 * 3);
        for c in &r.cases {
            let names: Vec<&str> = c.subjects.iter().map(|s| s.subject.as_str()).collect();
            assert_eq!(names, ["scrubheap_clean", "scrubheap_dirty", "buddy"]);
            assert!(c.subjects.iter().all(|s| s.median.pair_ns > 0.0 && s.ratio_to_llfree.is_none()));
        }
        // The formula is a bound (a spare record table included): the fresh heap is under it.
        assert!(r.metadata.scrubheap_measured <= r.metadata.scrubheap_formula + 0.01);
        assert!(r.metadata.scrubheap_blocks_peak > 0.0);
        assert!(r.metadata.scrubheap_measured_peak > r.metadata.scrubheap_measured);
        assert!(r.metadata.scrubheap_measured_peak <= r.metadata.scrubheap_formula_worst + 0.05);
    }
}
