//! `scrubheap bench scrub`: background scrub throughput against raw zeroing of the same
//! arena by the best kernel (DESIGN sections 6 and 8).
//!
//! One arena is mapped and prefaulted, then:
//!
//! 1. every available zeroing kernel zeroes the whole arena (dirtied first) two ways: in
//!    one call (`kernels`) and in calls of one heap scrub batch (`kernels_batched`), the
//!    kernels interleaved round by round. The fastest in one call is the *raw* kernel;
//!    the fastest in batch-sized calls (or `--kernel`) is the one the heap scrubs with,
//!    because batch-sized calls are what the heap makes;
//! 2. `reps` times, rotating which goes first, each after dirtying the whole arena:
//!    *raw*, the raw kernel zeroing the arena in one call; *batched*, the scrub kernel
//!    zeroing it in batch-sized calls with no heap; *background*, a heap built over the
//!    arena with every frame dirty and one thread calling `heap.scrub_step(0, budget)`
//!    until it returns 0 (the heap's batches, locking and bookkeeping included);
//!    *background2*, the same heap and two threads calling `scrub_step(0, budget)` at
//!    once, each until it returns 0; *background2_nodes*, a heap of two nodes of half the
//!    arena each and one thread per node calling `scrub_step(node, budget)` until it
//!    returns 0, the way the host runtime runs its scrubbers. Every heap run is followed
//!    by an untimed check that every frame was scrubbed and every byte is zero.
//!
//! Two threads on one node share its chunks: an initially dirty node is one free chunk
//! per power of two (a 1 GiB node is a single order-18 chunk), and a scrubber that finds
//! no free dirty chunk joins the one another scrubber of the node holds, taking batches
//! from its cursor. `background2_thread_frames` records, per run, what each thread
//! zeroed; `background2_nodes` measures scrubbers on separate nodes for comparison. Every
//! heap run sizes its batches as the host's scrubbers do ([`BatchSizer`]: half a
//! millisecond of CPU time at the bandwidth the thread measured, at most the heap's batch).
//!
//! Dirtying and building the heap are never timed. Each run is timed by the wall clock
//! (the figures) and by thread CPU time (`*_cpu_gbps`, which leave out time a thread
//! spent descheduled on a shared machine). The two-thread runs start both threads at
//! once from a barrier right after the dirtying; their wall time runs from the first
//! thread's start to the last thread's end, and their CPU time is the busier thread's
//! (the wall time they would have taken had neither been descheduled). Medians are
//! quoted; GB/s is 10^9 bytes per second; `ratio = background_gbps / raw_gbps`, which
//! splits into `batched_gbps / raw_gbps` (what calling the kernel a batch at a time
//! costs) times `heap_efficiency = background_gbps / batched_gbps` (what the heap adds
//! per batch); `ratio2` and `ratio2_nodes` are the two-thread figures over `raw_gbps`.

use anyhow::{bail, ensure, Context};
use scrubheap::{FrameMemory, Heap, HeapConfig, Mfn, NeverPreempt};
use scrubheap_host::{median, thread_cpu_time, Arena, ArenaConfig, BatchSizer, Kernel};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Barrier;
use std::time::Instant;

/// Bytes per frame of the benchmark's arena and heap.
const FRAME: u64 = 4096;

/// Background scrub throughput against raw zeroing of the same arena.
#[derive(clap::Args)]
pub struct Args {
    /// Where to write the JSON report.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Arena size: bytes, or with a unit (KiB, MiB, GiB; K, M, G mean the same).
    #[arg(long, default_value = "1GiB", value_parser = crate::run::parse_size)]
    pub memory: u64,
    /// Timed repetitions of each measurement; medians are reported.
    #[arg(long, default_value_t = 9)]
    pub reps: usize,
    /// Frames each `scrub_step` call may zero (16384 = 64 MiB, the step the host
    /// runtime's scrubber threads use).
    #[arg(long, default_value_t = 16384)]
    pub budget: u64,
    /// Frames the heap zeroes per batch (`HeapConfig::scrub_batch`); default the heap's.
    #[arg(long)]
    pub batch: Option<u64>,
    /// Scrub with this zeroing kernel instead of the fastest measured at batch size.
    #[arg(long)]
    pub kernel: Option<Kernel>,
    /// Do not try hugetlbfs pages (anonymous memory with THP advised only).
    #[arg(long)]
    pub no_hugetlb: bool,
    /// Advise against transparent huge pages (to measure what they are worth).
    #[arg(long)]
    pub no_thp: bool,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Arena bytes (a multiple of 4096).
    pub memory: u64,
    /// Timed repetitions.
    pub reps: usize,
    /// Frames per `scrub_step` call.
    pub budget: u64,
    /// Heap scrub batch in frames (`None`: the heap's default).
    pub batch: Option<u64>,
    /// Forced kernel.
    pub kernel: Option<Kernel>,
    /// Whether to try hugetlbfs.
    pub hugetlb: bool,
    /// Whether to advise THP.
    pub thp: bool,
}

/// The schema-1 `bench.scrub` figures, plus what they were measured with.
#[derive(Clone, Debug, Serialize)]
pub struct ScrubResult {
    /// Median GB/s of the fastest kernel zeroing the whole arena in one call.
    pub raw_gbps: f64,
    /// Median GB/s of one thread scrubbing the same bytes through `Heap::scrub_step`.
    pub background_gbps: f64,
    /// `background_gbps / raw_gbps`.
    pub ratio: f64,
    /// Scrubbing threads.
    pub threads: u32,
    /// The kernel the heap scrubbed with.
    pub kernel: String,
    /// Median GB/s of each available kernel zeroing the whole arena in one call.
    pub kernels: BTreeMap<String, f64>,
    /// The kernel of the raw runs (the fastest in `kernels`).
    pub raw_kernel: String,
    /// Median GB/s of each available kernel zeroing the arena in batch-sized calls.
    pub kernels_batched: BTreeMap<String, f64>,
    /// Median GB/s of the scrub kernel zeroing the arena in batch-sized calls, no heap.
    pub batched_gbps: f64,
    /// `background_gbps / batched_gbps`: the share of batch-sized zeroing the heap keeps.
    pub heap_efficiency: f64,
    /// Median over repetitions of that repetition's background / raw (adjacent runs share
    /// the machine's momentary load).
    pub ratio_paired: f64,
    /// `raw_gbps` by thread CPU time.
    pub raw_cpu_gbps: f64,
    /// `batched_gbps` by thread CPU time.
    pub batched_cpu_gbps: f64,
    /// `background_gbps` by thread CPU time.
    pub background_cpu_gbps: f64,
    /// `background_cpu_gbps / raw_cpu_gbps`.
    pub ratio_cpu: f64,
    /// Median GB/s of two threads scrubbing the same bytes through `scrub_step` on the
    /// one node at once (see the module doc for why this is about one thread's worth).
    pub background2_gbps: f64,
    /// `background2_gbps / raw_gbps`.
    pub ratio2: f64,
    /// Median GB/s of a heap of two nodes of half the arena each, one thread per node
    /// calling `scrub_step(node, ..)`.
    pub background2_nodes_gbps: f64,
    /// `background2_nodes_gbps / raw_gbps`.
    pub ratio2_nodes: f64,
    /// Scrubbing threads of the `background2*` figures.
    pub background2_threads: u32,
    /// `background2_gbps` by thread CPU time (the busier thread's).
    pub background2_cpu_gbps: f64,
    /// `background2_nodes_gbps` by thread CPU time (the busier thread's).
    pub background2_nodes_cpu_gbps: f64,
    /// `background2_cpu_gbps / raw_cpu_gbps`.
    pub ratio2_cpu: f64,
    /// `background2_nodes_cpu_gbps / raw_cpu_gbps`.
    pub ratio2_nodes_cpu: f64,
    /// Arena bytes.
    pub memory_bytes: u64,
    /// Timed repetitions per figure.
    pub reps: usize,
    /// Frames per `scrub_step` call.
    pub budget_frames: u64,
    /// Frames per heap scrub batch (one `FrameMemory::zero` call, one fence).
    pub batch_frames: u64,
    /// `scrub_step` calls per background run (the last, returning 0, included).
    pub scrub_steps: u64,
    /// Every raw run's GB/s, in run order.
    pub raw_runs_gbps: Vec<f64>,
    /// Every batched run's GB/s, in run order.
    pub batched_runs_gbps: Vec<f64>,
    /// Every background run's GB/s, in run order.
    pub background_runs_gbps: Vec<f64>,
    /// Every two-thread one-node run's GB/s, in run order.
    pub background2_runs_gbps: Vec<f64>,
    /// Every two-node run's GB/s, in run order.
    pub background2_nodes_runs_gbps: Vec<f64>,
    /// Frames each of the two threads zeroed in every two-thread one-node run, in run
    /// order.
    pub background2_thread_frames: Vec<Vec<u64>>,
    /// What backs the arena.
    pub backing: String,
    /// The arena in one line (backing, huge pages, prefault).
    pub arena: String,
    /// Bytes of the arena in huge pages after the runs, where known.
    pub huge_bytes: Option<u64>,
    /// Seconds the prefault took.
    pub prefault_s: f64,
}

/// The JSON report: `{"scrub": {...}}`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The figures.
    pub scrub: ScrubResult,
}

/// Every byte of the arena non-zero (a different word each time, so nothing is skipped
/// because memory already holds the value).
fn dirty(arena: &Arena, round: u64) {
    arena.fill(arena.base(), arena.frames(), 0x0101_0101_0101_0101u64.wrapping_mul(round % 255 + 1));
}

fn gbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs.max(1e-9) / 1e9
}

/// Wall-clock and thread CPU seconds of one timed run.
#[derive(Copy, Clone, Debug)]
struct Took {
    wall: f64,
    cpu: f64,
}

/// Times `f` by the wall clock and by the thread's CPU time.
fn timed<T>(f: impl FnOnce() -> T) -> (Took, T) {
    let (w, c) = (Instant::now(), thread_cpu_time());
    let out = f();
    let cpu = thread_cpu_time().saturating_sub(c).as_secs_f64();
    (Took { wall: w.elapsed().as_secs_f64(), cpu }, out)
}

/// Zeroes the whole arena with `k` in calls of `call` frames, the way the heap calls
/// [`FrameMemory::zero`].
fn time_zero(arena: &Arena, k: Kernel, call: u64) -> Took {
    arena.set_kernel(k);
    let (base, end) = (arena.base().0, arena.end().0);
    timed(|| {
        let mut f = base;
        while f < end {
            let n = call.min(end - f);
            arena.zero(Mfn(f), n);
            f += n;
        }
    })
    .0
}

/// Scrubs the whole arena through `heap` (built over it with every frame dirty, the
/// arena dirtied after building it) with one thread; returns the time taken and the
/// `scrub_step` calls. Checks every frame was scrubbed and is zero.
fn time_background(arena: &Arena, heap: &Heap<&Arena>, budget: u64) -> anyhow::Result<(Took, u64)> {
    let (took, res) = timed(|| -> anyhow::Result<(u64, u64)> {
        let (mut frames, mut calls) = (0, 0);
        let sizer = BatchSizer::new(FRAME, heap.config().scrub_batch);
        loop {
            calls += 1;
            match sized_step(heap, 0, budget, &sizer)? {
                0 => return Ok((frames, calls)),
                z => frames += z,
            }
        }
    });
    let (frames, calls) = res?;
    ensure!(frames == arena.frames(), "scrub_step zeroed {frames} frames of {}", arena.frames());
    ensure!(heap.stats().free_dirty == 0, "frames still dirty after scrubbing: {:?}", heap.stats());
    ensure!(
        arena.is_zero(arena.base(), arena.frames()),
        "the heap reported all clean but the arena holds non-zero bytes"
    );
    Ok((took, calls))
}

/// One `scrub_step` call as the host's scrubbers make it: batches sized by the bandwidth
/// the thread measured on its previous calls.
fn sized_step(heap: &Heap<&Arena>, node: usize, budget: u64, sizer: &BatchSizer) -> anyhow::Result<u64> {
    let cpu0 = thread_cpu_time();
    let z = heap.scrub_step(node, budget, &sizer.preempt(&NeverPreempt))?;
    sizer.observe(z, thread_cpu_time().saturating_sub(cpu0).as_nanos() as u64);
    Ok(z)
}

/// One scrubber thread's part of a run.
struct Share {
    start: Instant,
    end: Instant,
    cpu: f64,
    frames: u64,
}

/// Scrubs the whole arena through `heap` (built over it with every frame dirty) with one
/// thread per entry of `nodes`, thread `i` calling `scrub_step(nodes[i], budget)` until it
/// returns 0. The threads wait at a barrier while `prepare` (the dirtying) runs and start
/// together when it returns. Returns the time taken (wall: first start to last end; CPU:
/// the busier thread's) and the frames each thread zeroed. Checks every frame was
/// scrubbed and is zero.
fn time_scrubbers(
    arena: &Arena,
    heap: &Heap<&Arena>,
    budget: u64,
    nodes: &[usize],
    prepare: impl FnOnce(),
) -> anyhow::Result<(Took, Vec<u64>)> {
    let go = Barrier::new(nodes.len() + 1);
    let shares = std::thread::scope(|s| {
        let threads: Vec<_> = nodes
            .iter()
            .map(|&node| {
                let go = &go;
                s.spawn(move || -> anyhow::Result<Share> {
                    go.wait();
                    let (start, c) = (Instant::now(), thread_cpu_time());
                    let mut frames = 0;
                    let sizer = BatchSizer::new(FRAME, heap.config().scrub_batch);
                    loop {
                        match sized_step(heap, node, budget, &sizer)? {
                            0 => break,
                            z => frames += z,
                        }
                    }
                    let cpu = thread_cpu_time().saturating_sub(c).as_secs_f64();
                    Ok(Share { start, end: Instant::now(), cpu, frames })
                })
            })
            .collect();
        prepare();
        go.wait();
        threads.into_iter().map(|t| t.join().expect("a scrubber thread panicked")).collect::<anyhow::Result<Vec<_>>>()
    })?;
    let start = shares.iter().map(|s| s.start).min().context("no scrubber threads")?;
    let end = shares.iter().map(|s| s.end).max().context("no scrubber threads")?;
    let cpu = shares.iter().map(|s| s.cpu).fold(0.0, f64::max);
    let frames: Vec<u64> = shares.iter().map(|s| s.frames).collect();
    let total: u64 = frames.iter().sum();
    ensure!(total == arena.frames(), "scrub_step zeroed {total} frames of {} ({frames:?} by thread)", arena.frames());
    ensure!(heap.stats().free_dirty == 0, "frames still dirty after scrubbing: {:?}", heap.stats());
    ensure!(
        arena.is_zero(arena.base(), arena.frames()),
        "the heap reported all clean but the arena holds non-zero bytes"
    );
    Ok((Took { wall: end.duration_since(start).as_secs_f64(), cpu }, frames))
}

/// The one-node heap over the whole arena, and the same frames as two nodes of half the
/// arena each (one scrubber per node), both checked before the long part.
fn heap_configs(c: &Config, frames: u64) -> anyhow::Result<(HeapConfig, HeapConfig)> {
    let mut hc = HeapConfig::uniform(1, frames).with_initially_dirty(true);
    if let Some(b) = c.batch {
        hc.scrub_batch = b;
    }
    let mut hc2 = HeapConfig::uniform(2, frames / 2).with_initially_dirty(true);
    hc2.nodes[1].frames = frames - frames / 2;
    hc2.scrub_batch = hc.scrub_batch;
    drop(Heap::new(hc.clone(), scrubheap::NullMemory).context("heap configuration")?);
    drop(Heap::new(hc2.clone(), scrubheap::NullMemory).context("two-node heap configuration")?);
    Ok((hc, hc2))
}

/// Every kernel's median GB/s over the whole arena, in one call and in batch-sized calls.
struct KernelRanks {
    whole: Vec<(Kernel, f64)>,
    batched: Vec<(Kernel, f64)>,
}

impl KernelRanks {
    /// Times every kernel over the whole arena, in one call and in calls of `batch` frames,
    /// interleaved; `round` counts the dirtyings.
    fn measure(c: &Config, arena: &Arena, batch: u64, round: &mut u64) -> KernelRanks {
        let kernels = Kernel::available();
        let mut whole: Vec<Vec<f64>> = vec![Vec::new(); kernels.len()];
        let mut batched: Vec<Vec<f64>> = vec![Vec::new(); kernels.len()];
        for _ in 0..c.reps {
            for (i, &k) in kernels.iter().enumerate() {
                for (times, call) in [(&mut whole, arena.frames()), (&mut batched, batch)] {
                    *round += 1;
                    dirty(arena, *round);
                    times[i].push(time_zero(arena, k, call).wall);
                }
            }
        }
        let medians = |t: Vec<Vec<f64>>| -> Vec<(Kernel, f64)> {
            kernels.iter().zip(t).map(|(&k, t)| (k, gbps(c.memory, median(t)))).collect()
        };
        KernelRanks { whole: medians(whole), batched: medians(batched) }
    }

    /// The fastest kernel of `v`.
    fn fastest(v: &[(Kernel, f64)]) -> Kernel {
        v.iter().max_by(|a, b| a.1.total_cmp(&b.1)).map_or(Kernel::WriteBytes, |x| x.0)
    }
}

/// The timed runs of part 2, each in run order.
#[derive(Default)]
struct Runs {
    raw: Vec<Took>,
    batched: Vec<Took>,
    background: Vec<Took>,
    background2: Vec<Took>,
    background2_nodes: Vec<Took>,
    background2_frames: Vec<Vec<u64>>,
    /// `scrub_step` calls of the last one-thread background run.
    calls: u64,
    /// Frames per heap scrub batch.
    batch: u64,
}

impl Runs {
    /// Raw (`raw_kernel`, one call), batched (`scrub_kernel`) and the three background
    /// runs, interleaved, rotating which goes first. Every timed run starts right after
    /// the arena is dirtied: the heap (and the threads) are set up before that, so none
    /// of the runs gets extra time for the writes to drain.
    fn measure(
        c: &Config,
        arena: &Arena,
        hcs: &(HeapConfig, HeapConfig),
        kernels: (Kernel, Kernel),
        round: &mut u64,
    ) -> anyhow::Result<Runs> {
        let ((hc, hc2), (raw_kernel, scrub_kernel)) = (hcs, kernels);
        let mut r = Runs { batch: hc.scrub_batch, ..Runs::default() };
        // The heap over the arena, zeroing with the scrub kernel.
        let heap_over = |hc: &HeapConfig| {
            arena.set_kernel(scrub_kernel);
            Heap::new(hc.clone(), arena).context("building the heap over the arena")
        };
        for rep in 0..c.reps {
            for which in 0..5 {
                *round += 1;
                let round = *round;
                match (which + rep) % 5 {
                    0 => {
                        dirty(arena, round);
                        r.raw.push(time_zero(arena, raw_kernel, arena.frames()));
                    }
                    1 => {
                        dirty(arena, round);
                        r.batched.push(time_zero(arena, scrub_kernel, r.batch));
                    }
                    2 => {
                        let heap = heap_over(hc)?;
                        dirty(arena, round);
                        let (t, n) = time_background(arena, &heap, c.budget)?;
                        r.background.push(t);
                        r.calls = n;
                    }
                    3 => {
                        let heap = heap_over(hc)?;
                        let (t, f) = time_scrubbers(arena, &heap, c.budget, &[0, 0], || dirty(arena, round))?;
                        r.background2.push(t);
                        r.background2_frames.push(f);
                    }
                    _ => {
                        let heap = heap_over(hc2).context("the two-node heap")?;
                        let t = time_scrubbers(arena, &heap, c.budget, &[0, 1], || dirty(arena, round))?.0;
                        r.background2_nodes.push(t);
                    }
                }
            }
        }
        Ok(r)
    }
}

/// Checks the configuration and returns the arena's frames.
fn check_config(c: &Config) -> anyhow::Result<u64> {
    ensure!(c.reps > 0, "--reps must be at least 1");
    ensure!(c.budget > 0, "--budget must be at least 1 frame");
    ensure!(
        c.memory >= FRAME && c.memory % FRAME == 0,
        "--memory {} must be a positive multiple of {FRAME} bytes",
        c.memory
    );
    let frames = c.memory / FRAME;
    ensure!(frames >= 2, "--memory {} must be at least two frames (the two-node heap needs one each)", c.memory);
    ensure!(frames < u32::MAX as u64, "--memory {} is more than one heap node can hold", c.memory);
    if let Some(k) = c.kernel {
        ensure!(k.is_available(), "kernel {k} is not available on this CPU");
    }
    Ok(frames)
}

/// Runs the benchmark: 1. every kernel over the whole arena, in one call and in
/// batch-sized calls, interleaved; 2. raw, batched and the three background runs,
/// interleaved.
pub fn bench(c: &Config) -> anyhow::Result<ScrubResult> {
    let frames = check_config(c)?;
    let hcs = heap_configs(c, frames)?;
    let acfg = ArenaConfig::new(Mfn(0), frames, FRAME as usize)
        .with_hugetlb(c.hugetlb)
        .with_thp(c.thp)
        .with_kernel(Kernel::WriteBytes);
    let arena = Arena::new(acfg).context("mapping the arena")?;
    let mut round = 0;
    let ranks = KernelRanks::measure(c, &arena, hcs.0.scrub_batch, &mut round);
    let raw_kernel = KernelRanks::fastest(&ranks.whole);
    let scrub_kernel = c.kernel.unwrap_or_else(|| KernelRanks::fastest(&ranks.batched));
    let runs = Runs::measure(c, &arena, &hcs, (raw_kernel, scrub_kernel), &mut round)?;
    debug_assert_eq!(runs.raw.len(), c.reps, "one raw run a repetition");
    Ok(result(c, &arena, &ranks, (raw_kernel, scrub_kernel), runs))
}

/// The report of the runs: medians, ratios and every run.
fn result(c: &Config, arena: &Arena, ranks: &KernelRanks, kernels: (Kernel, Kernel), r: Runs) -> ScrubResult {
    let (raw_kernel, scrub_kernel) = kernels;
    let wall = |v: &[Took]| v.iter().map(|t| gbps(c.memory, t.wall)).collect::<Vec<f64>>();
    let cpu = |v: &[Took]| median(v.iter().map(|t| gbps(c.memory, t.cpu)).collect());
    let (raw_runs, bat_runs, bg_runs) = (wall(&r.raw), wall(&r.batched), wall(&r.background));
    let (bg2_runs, bg2n_runs) = (wall(&r.background2), wall(&r.background2_nodes));
    let raw_gbps = median(raw_runs.clone());
    let batched_gbps = median(bat_runs.clone());
    let background_gbps = median(bg_runs.clone());
    let background2_gbps = median(bg2_runs.clone());
    let background2_nodes_gbps = median(bg2n_runs.clone());
    let (raw_cpu_gbps, batched_cpu_gbps) = (cpu(&r.raw), cpu(&r.batched));
    let background_cpu_gbps = cpu(&r.background);
    let (background2_cpu_gbps, background2_nodes_cpu_gbps) = (cpu(&r.background2), cpu(&r.background2_nodes));
    let ratio_paired = median(bg_runs.iter().zip(&raw_runs).map(|(b, r)| b / r).collect());
    let names = |v: &[(Kernel, f64)]| v.iter().map(|&(k, g)| (k.name().to_string(), g)).collect();
    ScrubResult {
        raw_gbps,
        background_gbps,
        ratio: background_gbps / raw_gbps,
        threads: 1,
        kernel: scrub_kernel.name().to_string(),
        kernels: names(&ranks.whole),
        raw_kernel: raw_kernel.name().to_string(),
        kernels_batched: names(&ranks.batched),
        batched_gbps,
        heap_efficiency: background_gbps / batched_gbps,
        ratio_paired,
        raw_cpu_gbps,
        batched_cpu_gbps,
        background_cpu_gbps,
        ratio_cpu: background_cpu_gbps / raw_cpu_gbps,
        background2_gbps,
        ratio2: background2_gbps / raw_gbps,
        background2_nodes_gbps,
        ratio2_nodes: background2_nodes_gbps / raw_gbps,
        background2_threads: 2,
        background2_cpu_gbps,
        background2_nodes_cpu_gbps,
        ratio2_cpu: background2_cpu_gbps / raw_cpu_gbps,
        ratio2_nodes_cpu: background2_nodes_cpu_gbps / raw_cpu_gbps,
        memory_bytes: c.memory,
        reps: c.reps,
        budget_frames: c.budget,
        batch_frames: r.batch,
        scrub_steps: r.calls,
        raw_runs_gbps: raw_runs,
        batched_runs_gbps: bat_runs,
        background_runs_gbps: bg_runs,
        background2_runs_gbps: bg2_runs,
        background2_nodes_runs_gbps: bg2n_runs,
        background2_thread_frames: r.background2_frames,
        backing: arena.backing().to_string(),
        arena: arena.describe(),
        huge_bytes: arena.huge_bytes(),
        prefault_s: arena.prefault_seconds(),
    }
}

/// The table: each kernel's GB/s, then every run (`print_runs`) and the ratios
/// (`print_ratios`).
fn print_table(r: &ScrubResult) {
    println!("bench scrub: median of {} interleaved reps, GB/s = 10^9 B/s by the wall clock", r.reps);
    println!("arena: {}", r.arena);
    println!("{:<18} {:>10} {:>14}", "kernel", "one call", format!("{} KiB calls", (r.batch_frames * FRAME) >> 10));
    for (k, g) in &r.kernels {
        let b = r.kernels_batched.get(k).copied().unwrap_or(f64::NAN);
        let mut mark = String::new();
        if *k == r.raw_kernel {
            mark += "  <- raw";
        }
        if *k == r.kernel {
            mark += "  <- scrub";
        }
        println!("{k:<18} {g:>10.2} {b:>14.2}{mark}");
    }
    print_runs(r);
    print_ratios(r);
}

/// The table's lines of the raw, batched and background runs: medians and every run.
fn print_runs(r: &ScrubResult) {
    let runs = |v: &[f64]| v.iter().map(|g| format!("{g:.2}")).collect::<Vec<_>>().join(" ");
    let mib = |frames: u64| (frames * FRAME) >> 20;
    let frames = r.memory_bytes / FRAME;
    println!("{:<18} {:>10.2}   runs: {}   ({}, one call)", "raw", r.raw_gbps, runs(&r.raw_runs_gbps), r.raw_kernel);
    println!(
        "{:<18} {:>10.2}   runs: {}   ({}, {}-frame calls, no heap)",
        "batched",
        r.batched_gbps,
        runs(&r.batched_runs_gbps),
        r.kernel,
        r.batch_frames
    );
    println!(
        "{:<18} {:>10.2}   runs: {}   ({}, 1 thread, scrub_step budget {} frames, batch {} frames, {} calls)",
        "background",
        r.background_gbps,
        runs(&r.background_runs_gbps),
        r.kernel,
        r.budget_frames,
        r.batch_frames,
        r.scrub_steps
    );
    let split = r
        .background2_thread_frames
        .iter()
        .map(|f| f.iter().map(|&n| format!("{}", mib(n))).collect::<Vec<_>>().join("/"))
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "{:<18} {:>10.2}   runs: {}   ({} threads on 1 node; MiB by thread per run: {})",
        "background2",
        r.background2_gbps,
        runs(&r.background2_runs_gbps),
        r.background2_threads,
        split
    );
    println!(
        "{:<18} {:>10.2}   runs: {}   (2 nodes of {}/{} MiB, 1 thread each)",
        "background2_nodes",
        r.background2_nodes_gbps,
        runs(&r.background2_nodes_runs_gbps),
        mib(frames / 2),
        mib(frames - frames / 2)
    );
}

/// The table's ratios: background against raw and batched, two threads against one.
fn print_ratios(r: &ScrubResult) {
    println!(
        "{:<18} {:>10.3}   (background / raw; paired per rep {:.3}; by thread CPU time {:.3} = {:.2} / {:.2})",
        "ratio", r.ratio, r.ratio_paired, r.ratio_cpu, r.background_cpu_gbps, r.raw_cpu_gbps
    );
    println!(
        "{:<18} {:>10.3}   (batched / raw: calling the kernel a batch at a time)",
        "",
        r.batched_gbps / r.raw_gbps
    );
    println!("{:<18} {:>10.3}   (background / batched: the heap's share)", "", r.heap_efficiency);
    println!(
        "{:<18} {:>10.3}   (background2 / raw; by the busier thread's CPU time {:.3} = {:.2} / {:.2})",
        "ratio2", r.ratio2, r.ratio2_cpu, r.background2_cpu_gbps, r.raw_cpu_gbps
    );
    println!(
        "{:<18} {:>10.3}   (background2_nodes / raw; by the busier thread's CPU time {:.3} = {:.2} / {:.2})",
        "ratio2_nodes", r.ratio2_nodes, r.ratio2_nodes_cpu, r.background2_nodes_cpu_gbps, r.raw_cpu_gbps
    );
}

/// `scrubheap bench scrub`.
pub fn main(a: Args) -> anyhow::Result<()> {
    if a.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let cfg = Config {
        memory: a.memory,
        reps: a.reps,
        budget: a.budget,
        batch: a.batch,
        kernel: a.kernel,
        hugetlb: !a.no_hugetlb,
        thp: !a.no_thp,
    };
    let scrub = bench(&cfg)?;
    print_table(&scrub);
    if let Some(path) = &a.json {
        crate::output::write_json(path, "bench scrub", serde_json::Value::Null, &Report { scrub })?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_run_reports_every_figure() {
        let c =
            Config { memory: 8 << 20, reps: 1, budget: 300, batch: Some(64), kernel: None, hugetlb: false, thp: true };
        let r = bench(&c).unwrap();
        assert_eq!(r.kernels.len(), Kernel::available().len());
        assert_eq!(r.kernels_batched.len(), Kernel::available().len());
        assert!(r.kernels.contains_key(&r.kernel) && r.kernels.contains_key(&r.raw_kernel));
        assert_eq!((r.raw_runs_gbps.len(), r.batched_runs_gbps.len(), r.background_runs_gbps.len()), (1, 1, 1));
        assert_eq!((r.background2_runs_gbps.len(), r.background2_nodes_runs_gbps.len()), (1, 1));
        assert!(r.raw_gbps > 0.0 && r.background_gbps > 0.0 && r.ratio > 0.0);
        assert!(r.background2_gbps > 0.0 && r.background2_nodes_gbps > 0.0 && r.ratio2 > 0.0 && r.ratio2_nodes > 0.0);
        assert_eq!((r.threads, r.background2_threads), (1, 2));
        assert_eq!(r.background2_thread_frames.len(), 1);
        assert_eq!(r.background2_thread_frames[0].iter().sum::<u64>(), 2048);
        // 2048 frames in steps of at most 300, plus the call that returns 0.
        assert_eq!(r.scrub_steps, 2048u64.div_ceil(300) + 1);
        let v = serde_json::to_value(Report { scrub: r }).unwrap();
        for k in [
            "raw_gbps",
            "background_gbps",
            "ratio",
            "threads",
            "kernel",
            "kernels",
            "background2_gbps",
            "background2_nodes_gbps",
            "ratio2",
            "ratio2_nodes",
            "background2_threads",
        ] {
            assert!(v["scrub"].get(k).is_some(), "missing scrub.{k}");
        }
    }

    #[test]
    fn one_scrubber_per_node_scrubs_its_own_node() {
        let frames = 1024;
        let arena = Arena::new(ArenaConfig::new(Mfn(0), frames, FRAME as usize).with_hugetlb(false)).unwrap();
        let mut hc = HeapConfig::uniform(2, 512).with_initially_dirty(true);
        hc.scrub_batch = 64;
        let heap = Heap::new(hc, &arena).unwrap();
        let (t, by_thread) = time_scrubbers(&arena, &heap, 100, &[0, 1], || dirty(&arena, 7)).unwrap();
        assert_eq!(by_thread, vec![512, 512]);
        assert!(t.wall > 0.0);
        // Two threads on one node zero every frame between them, however they split it.
        let heap = Heap::new(HeapConfig::uniform(1, frames).with_initially_dirty(true), &arena).unwrap();
        let (_, by_thread) = time_scrubbers(&arena, &heap, 100, &[0, 0], || dirty(&arena, 8)).unwrap();
        assert_eq!(by_thread.iter().sum::<u64>(), frames);
    }

    #[test]
    fn bad_input_is_refused() {
        let ok = Config { memory: 1 << 20, reps: 1, budget: 1, batch: None, kernel: None, hugetlb: false, thp: true };
        assert!(bench(&Config { memory: 1000, ..ok.clone() }).is_err());
        assert!(bench(&Config { memory: 4096, ..ok.clone() }).is_err());
        assert!(bench(&Config { reps: 0, ..ok.clone() }).is_err());
        assert!(bench(&Config { budget: 0, ..ok.clone() }).is_err());
        assert!(bench(&Config { batch: Some(0), ..ok }).is_err());
    }
}
