//! `scrubheap run`: the main job. Tenant churn on a real arena with scrubber threads, a
//! live display, and a report folder.

use crate::report;
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use scrubheap_host::report::Sample;
use scrubheap_host::run::{run, Backend, RunConfig, RunProgress};
use scrubheap_workload::Workload;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The pool a run stands on: shared by `run` and `vmm`.
#[derive(clap::Args)]
pub struct PoolArgs {
    /// Arena size, e.g. 4GiB, 512MiB, 1G, or bytes (guests are scaled to it: the largest
    /// is a quarter). Default: 4 GiB or a quarter of the machine's memory, whichever is
    /// smaller.
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<u64>,
    /// NUMA nodes; on a one-node host they are emulated by splitting the arena.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Scrubber threads per node.
    #[arg(long, default_value_t = 1)]
    pub scrubbers: usize,
    /// sync, alloc, xen, xen-cap2m, scrubheap, or kernel (fresh memory zeroed at fault).
    #[arg(long, default_value = "scrubheap", value_parser = parse_backend)]
    pub policy: Backend,
}

impl PoolArgs {
    /// Checks the flags; returns the arena size in bytes.
    pub fn memory(&self) -> anyhow::Result<u64> {
        let memory = self.memory.unwrap_or_else(default_memory);
        if self.nodes == 0 || self.nodes > 64 {
            bail!("--nodes {}: use 1 to 64", self.nodes);
        }
        if self.scrubbers == 0 || self.scrubbers > 64 {
            bail!("--scrubbers {}: use 1 to 64 per node", self.scrubbers);
        }
        if memory < (4 << 20) * self.nodes as u64 {
            bail!("--memory {memory}: give each of the {} nodes at least 4 MiB", self.nodes);
        }
        Ok(memory)
    }
}

/// Run tenant churn on a real arena.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub pool: PoolArgs,
    /// How long the workload lasts: 12s, 2m, 500ms, 1h, or plain seconds.
    #[arg(long, default_value_t = 25.0, value_parser = parse_duration)]
    pub duration: f64,
    /// Workload seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Replay this trace (any file of ../shared/traces in a format its README lists)
    /// instead of the default Azure V1 churn.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Write every allocation, free and claim as an op log (see `scrubheap replay`).
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Write report.json here as well.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The report folder (summary, report.json, SVG plots).
    #[arg(long, default_value = "report")]
    pub report: PathBuf,
    /// Run several policies on the same workload and seed, side by side. With no value:
    /// scrubheap, xen, sync, kernel.
    #[arg(long, num_args = 0..=1, default_missing_value = "scrubheap,xen,sync,kernel", value_delimiter = ',', value_parser = parse_backend)]
    pub compare: Option<Vec<Backend>>,
    /// Check every word of every page the pool zeroes and of every page it hands over (and
    /// poison freed pages); by default a sample of each zeroed page is read back and nothing
    /// at handoff. The kernel baseline is always sampled.
    #[arg(long)]
    pub verify: bool,
    /// Threads creating and destroying guests.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// How scrubber threads are scheduled: idle (SCHED_IDLE), nice19 (the lowest normal
    /// priority), boost (SCHED_IDLE, raised to SCHED_FIFO 1 while holding a heap node
    /// lock; the default) or normal.
    #[arg(long, default_value_t = scrubheap_host::ScrubPriority::default())]
    pub scrub_priority: scrubheap_host::ScrubPriority,
    /// Do not raise the guest builders and the hot-remove while they hold a heap node
    /// lock (by default they run at SCHED_FIFO 1 from taking one until they leave the
    /// heap or next work on frames, as `--scrub-priority boost` does scrubbers).
    #[arg(long)]
    pub no_lock_boost: bool,
    /// Run scrubbers at normal priority (the same as `--scrub-priority normal`).
    #[arg(long, conflicts_with = "scrub_priority")]
    pub no_idle: bool,
    /// Zeroing kernel (rep-stosb, avx2-nt, avx512-nt, clzero, write-bytes); default:
    /// the fastest in a calibration at start.
    #[arg(long)]
    pub kernel: Option<scrubheap_host::Kernel>,
    /// No reboots (by default a third of the guests, and every guest of at least an
    /// eighth of the host, reboot once midway through life).
    #[arg(long)]
    pub no_reboots: bool,
    /// No ballooning (by default a third of the guests that do not reboot give a quarter
    /// of their memory back a third of the way through life and take it again at two
    /// thirds).
    #[arg(long)]
    pub no_balloons: bool,
    /// Start from memory known to be zero. By default the host has just booted: all
    /// memory holds the previous boot's bytes and idle CPUs scrub it while the first
    /// guests are built (Xen's bootscrub=idle).
    #[arg(long)]
    pub clean_boot: bool,
}

pub(crate) fn parse_backend(s: &str) -> Result<Backend, String> {
    s.parse()
}

/// Splits `12.5 MiB` into its number and its unit, lowercased (empty when there is none).
fn number_and_unit(s: &str) -> Option<(f64, String)> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    Some((num.parse().ok()?, unit.trim().to_ascii_lowercase()))
}

/// Parses `4GiB`, `512MiB`, `1G`, `64k`, or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (n, unit) =
        number_and_unit(s).ok_or_else(|| format!("'{s}' is not a size: use e.g. 4GiB, 512MiB or 1073741824"))?;
    let mult: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => return Err(format!("unknown size unit '{u}' in '{s}': use B, KiB, MiB, GiB or TiB")),
    };
    let bytes = n * mult as f64;
    if !(bytes >= 1.0 && bytes < 2f64.powi(62)) {
        return Err(format!("size '{s}' must be positive and below 4 EiB"));
    }
    Ok(bytes as u64)
}

/// Parses a duration into seconds: a number with a unit (`500ms`, `12s`, `2m`, `1h`) or
/// plain seconds (`12`, `0.5`). At most a day; the one-line error names the units.
pub fn parse_duration(s: &str) -> Result<f64, String> {
    let not = || format!("'{s}' is not a duration: use e.g. 12s, 2m, 500ms or 12 (seconds)");
    let (n, unit) = number_and_unit(s).ok_or_else(not)?;
    let secs_per_unit = match unit.as_str() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "m" | "min" | "mins" => 60.0,
        "h" => 3600.0,
        u => return Err(format!("unknown duration unit '{u}' in '{s}': use ms, s, m or h (e.g. 12s, 2m, 500ms)")),
    };
    let secs = n * secs_per_unit;
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!("duration '{s}' must be above 0 and at most a day (24h)"));
    }
    Ok(secs)
}

/// The default arena: 4 GiB or a quarter of the machine's memory, whichever is smaller.
fn default_memory() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<u64>().ok()))
        .map_or(4 << 30, |kib| kib * 1024);
    (4u64 << 30).min(total / 4)
}

/// Refuses a duration, worker count or report folder the run cannot use.
fn check(a: &Args) -> anyhow::Result<()> {
    if !(a.duration.is_finite() && a.duration > 0.0 && a.duration <= 86_400.0) {
        bail!("--duration {}: use a number of seconds above 0 (at most a day)", a.duration);
    }
    if a.workers == 0 || a.workers > 256 {
        bail!("--workers {}: use 1 to 256", a.workers);
    }
    std::fs::create_dir_all(&a.report)
        .with_context(|| format!("cannot create the report folder {}", a.report.display()))?;
    let probe = a.report.join(".write-test");
    std::fs::write(&probe, b"").with_context(|| format!("the report folder {} is not writable", a.report.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// One backend's run as the arguments ask for it; with `several` backends its op log
/// (if any) is named after the backend.
fn run_config(a: &Args, memory: u64, backend: Backend, workload: &Workload, several: bool) -> RunConfig {
    RunConfig {
        memory_bytes: memory,
        nodes: if backend == Backend::Kernel { 1 } else { a.pool.nodes },
        scrubbers_per_node: a.pool.scrubbers,
        backend,
        seed: a.seed,
        workload: workload.clone(),
        workers: a.workers,
        verify: a.verify,
        hugetlb: true,
        sample_ms: 100,
        lock_boost: !a.no_lock_boost,
        scrub_priority: if a.no_idle { scrubheap_host::ScrubPriority::Normal } else { a.scrub_priority },
        reboots: !a.no_reboots,
        balloons: !a.no_balloons,
        boot_dirty: !a.clean_boot,
        kernel: a.kernel,
        record: a.record.as_ref().map(|p| if several { with_suffix(p, &backend.to_string()) } else { p.clone() }),
    }
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let memory = a.pool.memory()?;
    check(&a)?;

    let workload = match &a.trace {
        Some(p) => Workload::from_trace(p, memory, a.duration, a.seed)?,
        None => Workload::default_churn(memory, a.duration, a.seed, None),
    };
    if workload.guests.is_empty() {
        bail!("the workload has no guests for {memory} bytes over {} s", a.duration);
    }
    println!("workload: {workload}");
    let backends = a.compare.clone().unwrap_or_else(|| vec![a.pool.policy]);
    let mut reports = Vec::new();
    for (i, &backend) in backends.iter().enumerate() {
        let cfg = run_config(&a, memory, backend, &workload, backends.len() > 1);
        println!(
            "[{}/{}] {backend}: {} of memory, {} node(s), {} scrubber(s) per node, {} guests over {} s",
            i + 1,
            backends.len(),
            human(memory),
            cfg.nodes,
            cfg.scrubbers_per_node,
            workload.guests.len(),
            a.duration
        );
        let display = Display::new(a.duration);
        let r = run(&cfg, &|s, p| display.show(s, p)).with_context(|| format!("run under {backend} failed"))?;
        display.finish();
        println!("{}", report::summary_line(&r));
        reports.push(r);
    }
    let settings = settings(&a, memory, &backends, &workload);
    report::write_folder(&a.report, &settings, &reports)?;
    if let Some(j) = &a.json {
        report::write_json(j, &settings, &reports)?;
    }
    println!("\n{}", report::table(&reports));
    println!("report: {}/ (summary.txt, report.json, *.svg)", a.report.display());
    let leaks: u64 = reports.iter().map(|r| r.leak_check.nonzero_pages).sum();
    let violations: u64 = reports.iter().map(|r| r.invariant_violations).sum();
    if leaks > 0 || violations > 0 {
        bail!("{leaks} leaked page(s) and {violations} invariant violation(s): see the report");
    }
    Ok(())
}

fn with_suffix(p: &Path, s: &str) -> PathBuf {
    let mut name = p.file_stem().unwrap_or_default().to_os_string();
    name.push(format!("-{s}"));
    if let Some(e) = p.extension() {
        name.push(".");
        name.push(e);
    }
    p.with_file_name(name)
}

/// Bytes as GiB/MiB.
pub fn human(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

/// A progress bar on a terminal, a line a second otherwise.
struct Display {
    bar: Option<ProgressBar>,
    last_line: std::sync::Mutex<f64>,
}

impl Display {
    fn new(duration: f64) -> Display {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new((duration * 10.0) as u64);
            b.set_style(
                ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Display { bar, last_line: std::sync::Mutex::new(-1.0) }
    }

    fn show(&self, s: &Sample, p: &RunProgress) {
        let nodes: Vec<String> = s
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("n{i} {}/{}/{}", short(n.clean), short(n.dirty), short(n.used)))
            .collect();
        let msg = format!(
            "{} guests alive | clean/dirty/used {} | scrub {:.1} GB/s",
            s.guests,
            nodes.join("  "),
            s.scrub_gbps
        );
        match &self.bar {
            Some(b) => {
                b.set_position(((s.t * 10.0) as u64).min((p.duration_s * 10.0) as u64));
                b.set_message(msg);
            }
            None => {
                let mut last = self.last_line.lock().expect("display lock");
                if s.t - *last >= 1.0 {
                    *last = s.t;
                    println!("  {:5.1}s {msg}", s.t);
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn short(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1}G", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{}M", b >> 20)
    }
}

/// The settings `run` resolved from its arguments, for the JSON envelope's `configuration`.
fn settings(a: &Args, memory: u64, backends: &[Backend], workload: &Workload) -> serde_json::Value {
    serde_json::json!({
        "memory_bytes": memory,
        "nodes": a.pool.nodes,
        "scrubbers_per_node": a.pool.scrubbers,
        "policies": backends.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
        "duration_s": a.duration,
        "seed": a.seed,
        "workload": workload.source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_refuse_nonsense() {
        // The one size parser of the command line (`run`, `vmm`, `bench scrub --memory`).
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        for bad in ["", "0", "-1G", "lots", "4XB", "99999999999T", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("1PB").unwrap_err().contains("unit"));
    }

    #[test]
    fn durations_take_units_or_plain_seconds() {
        assert_eq!(parse_duration("12s"), Ok(12.0));
        assert_eq!(parse_duration("2m"), Ok(120.0));
        assert_eq!(parse_duration("500ms"), Ok(0.5));
        assert_eq!(parse_duration("1h"), Ok(3600.0));
        assert_eq!(parse_duration("12"), Ok(12.0));
        assert_eq!(parse_duration("2.5"), Ok(2.5));
        assert_eq!(parse_duration(" 3 min "), Ok(180.0));
        for bad in ["12x", "2 days", "s", "", "-1s", "0", "0ms", "25h", "1.2.3s"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(!e.contains('\n') && !e.is_empty(), "{bad}: {e}");
        }
        assert!(parse_duration("12x").unwrap_err().contains("unknown duration unit 'x'"));
    }
}
