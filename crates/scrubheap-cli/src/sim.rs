//! `scrubheap sim`: run a scenario on a simulated host under one policy or all of them,
//! print the comparison table, write the JSON report and SVG timelines.

use anyhow::{bail, Context};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use scrubheap::Policy;
use scrubheap_sim::builtin::{Kind, OtherReport};
use scrubheap_sim::preset::HostPreset;
use scrubheap_sim::report::{PolicyResult, SimReport};
use scrubheap_sim::scenario::{self, Scenario};
use scrubheap_sim::{trace, Builtin, Sweep};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Simulate a host of any size (DESIGN section 5): policies side by side on one scenario.
#[derive(clap::Args)]
pub struct Args {
    /// A built-in scenario (destroy-1tb, reboot-storm, boot-scrub, claims-reboot, hot-remove, trace, small,
    /// pod-balloon) or a TOML scenario file (format: docs/sim-scenarios.md). hot-remove always
    /// compares pins left in the Movable zone with scrubheap's migrated pins; pod-balloon
    /// compares PoD reclaim modes, not policies, and counts pages, not time.
    #[arg(long, value_name = "NAME|FILE")]
    pub scenario: String,
    /// Run on this host instead of the scenario's own: a built-in preset (xen-2017,
    /// epyc-2s-4t, xenserver-4s, tiny). Built-in scenarios size their guests for the host they run on.
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// A policy (sync, alloc, xen, xen-cap2m, scrubheap), a comma-separated list, or `all`.
    #[arg(long, default_value = "all", value_name = "P|all")]
    pub policy: String,
    /// Seed of every random choice in the scenario.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where to write the JSON report.
    #[arg(long, value_name = "OUT")]
    pub json: Option<PathBuf>,
    /// Folder for the SVG timelines.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Run a parameter range in parallel: NAME=START:END:STEP or NAME=V1,V2,... where NAME
    /// is a host parameter (node_zero_gbps, cpus_per_node, ...) or `builders`.
    #[arg(long, value_name = "PARAM=RANGE")]
    pub sweep: Option<String>,
    /// The trace file of the `trace` scenario (Azure V1 decoded CSV).
    #[arg(long, value_name = "FILE", default_value = "../shared/traces/azure_v1/decoded_v1_dev.csv")]
    pub trace: PathBuf,
    /// VMs to take from the trace, in file order.
    #[arg(long, default_value_t = 10_000)]
    pub trace_vms: usize,
    /// Trace seconds per simulated second.
    #[arg(long, default_value_t = 60.0)]
    pub trace_compression: f64,
    /// Mechanisms of the 2026 watchdog reports to switch on (docs/sim-presets.md): `none`,
    /// `all`, or a comma-separated list of guest-traffic, xen-locks, remote. Without it a
    /// TOML scenario keeps its own `[mechanisms]`, claims-reboot has all and the other
    /// built-in scenarios none.
    #[arg(long, value_name = "LIST")]
    pub mechanisms: Option<String>,
    /// Simulations run at once (each one is single-threaded); default: the CPU count.
    #[arg(long)]
    pub jobs: Option<usize>,
}

fn parse_policies(s: &str) -> anyhow::Result<Vec<Policy>> {
    if s == "all" {
        return Ok(Policy::ALL.to_vec());
    }
    s.split(',').map(|p| p.trim().parse::<Policy>().map_err(anyhow::Error::from)).collect()
}

fn load(a: &Args) -> anyhow::Result<Scenario> {
    let preset = preset(a)?;
    let path = Path::new(&a.scenario);
    if a.scenario.ends_with(".toml") || path.is_file() {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read scenario {}", path.display()))?;
        let mut sc = scenario::from_toml(&text, a.seed)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("in scenario file {}", path.display()))?;
        if let Some(p) = preset {
            sc.host = p;
            sc.validate().map_err(anyhow::Error::msg)?;
        }
        return Ok(sc);
    }
    if a.scenario == Builtin::Trace.name() {
        let host = preset.unwrap_or_else(HostPreset::epyc_2s_4t);
        let opts =
            trace::TraceOptions { vms: a.trace_vms, time_compression: a.trace_compression, ..Default::default() };
        if a.trace_compression.is_nan() || a.trace_compression <= 0.0 {
            bail!("--trace-compression must be positive");
        }
        return trace::azure_v1(&a.trace, host, &opts, a.seed)
            .map_err(anyhow::Error::msg)
            .context("cannot build the trace scenario (give the file with --trace)");
    }
    Scenario::builtin(&a.scenario, preset, a.seed).map_err(anyhow::Error::msg)
}

/// Progress: a spinner per policy on a terminal, a plain line every few seconds otherwise.
struct Progress {
    bars: Vec<(Policy, ProgressBar)>,
    plain: Mutex<Instant>,
    tty: bool,
}

impl Progress {
    fn new(policies: &[Policy], label: &str) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let multi = MultiProgress::new();
        let style = ProgressStyle::with_template("{spinner} {prefix:>10} {msg} [{elapsed}]").expect("valid template");
        let bars = policies
            .iter()
            .map(|&p| {
                let b = multi.add(ProgressBar::new_spinner().with_style(style.clone()).with_prefix(p.name()));
                b.set_message(format!("{label}: starting"));
                if tty {
                    b.enable_steady_tick(Duration::from_millis(200));
                } else {
                    b.set_draw_target(indicatif::ProgressDrawTarget::hidden());
                }
                (p, b)
            })
            .collect();
        Progress { bars, plain: Mutex::new(Instant::now()), tty }
    }

    fn update(&self, p: Policy, t: f64) {
        if self.tty {
            if let Some((_, b)) = self.bars.iter().find(|(q, _)| *q == p) {
                b.set_message(format!("simulated {t:.1} s"));
            }
        } else {
            let mut last = self.plain.lock().expect("progress lock");
            if last.elapsed() >= Duration::from_secs(5) {
                *last = Instant::now();
                eprintln!("sim: {} at simulated {t:.1} s", p.name());
            }
        }
    }

    fn finish(&self) {
        for (_, b) in &self.bars {
            b.finish_and_clear();
        }
    }
}

fn preset(a: &Args) -> anyhow::Result<Option<HostPreset>> {
    a.preset
        .as_deref()
        .map(|p| {
            HostPreset::builtin(p)
                .with_context(|| format!("unknown preset '{p}': use one of {}", HostPreset::NAMES.join(", ")))
        })
        .transpose()
}

/// A built-in scenario that compares something other than policies (hot-remove,
/// pod-balloon): no sweep, timeline, policy list or mechanisms.
fn main_other(a: &Args, b: Builtin) -> anyhow::Result<()> {
    if a.sweep.is_some() || a.report.is_some() || a.mechanisms.is_some() {
        bail!("the {b} scenario has no timeline and no mechanisms: it takes no --sweep, --report or --mechanisms");
    }
    if a.policy != "all" {
        bail!("the {b} scenario does not compare policies: leave out --policy");
    }
    let host = preset(a)?;
    let started = Instant::now();
    eprintln!("sim {b} (seed {})", a.seed);
    let (bad, rep) = match b.run_other(host, a.seed).map_err(anyhow::Error::msg)? {
        OtherReport::HotRemove(r) => {
            crate::sim_tables::hot_remove(&r);
            (r.results.iter().map(|r| r.invariant_violations).sum::<u64>(), serde_json::to_value(&*r)?)
        }
        OtherReport::PodBalloon(r) => {
            crate::sim_tables::pod_balloon(&r);
            (r.results.iter().map(|r| r.invariant_violations).sum::<u64>(), serde_json::to_value(&r)?)
        }
    };
    if let Some(out) = &a.json {
        crate::output::write_json(out, "sim", serde_json::Value::Null, &rep)?;
    }
    eprintln!("wall time {:.1} s (not in the JSON)", started.elapsed().as_secs_f64());
    if bad > 0 {
        bail!("{bad} checker failures in the {b} run: see the messages in the report");
    }
    Ok(())
}

/// `--sweep`: every value of the swept parameter under every policy, with a progress bar.
fn run_sweep(sc: &Scenario, s: &str, policies: &[Policy], seed: u64) -> anyhow::Result<SimReport> {
    let sweep: Sweep = s.parse().map_err(anyhow::Error::msg)?;
    let tty = std::io::stderr().is_terminal();
    let bar = ProgressBar::new((sweep.values.len() * policies.len()) as u64);
    if !tty {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let rows = scrubheap_sim::sweep(sc, &sweep, policies, &|done, total| {
        bar.set_position(done as u64);
        if !tty {
            eprintln!("sweep: {done}/{total} simulations done");
        }
    })
    .map_err(anyhow::Error::msg)?;
    bar.finish_and_clear();
    let mut rep = scrubheap_sim::report(sc, seed, &[]);
    rep.sweep = rows;
    print_sweep(&rep);
    Ok(rep)
}

/// The scenario under every policy, the table printed and, with `report`, the timelines
/// drawn there.
fn run_policies(sc: &Scenario, policies: &[Policy], seed: u64, report: Option<&Path>) -> anyhow::Result<SimReport> {
    let progress = Progress::new(policies, &sc.name);
    let (rep, runs) =
        scrubheap_sim::simulate(sc, policies, seed, &|p, t| progress.update(p, t)).map_err(anyhow::Error::msg)?;
    progress.finish();
    print_table(&rep);
    if let Some(dir) = report {
        let files =
            crate::plots::sim::write_all(dir, &sc.name, &runs, sc.host.watchdog_s).map_err(anyhow::Error::msg)?;
        eprintln!("wrote {} SVG timelines to {}", files.len(), dir.display());
    }
    Ok(rep)
}

pub fn main(a: Args) -> anyhow::Result<()> {
    if let Ok(b) = a.scenario.parse::<Builtin>() {
        if b.kind() != Kind::Policies {
            return main_other(&a, b);
        }
    }
    let policies = parse_policies(&a.policy)?;
    let mut sc = load(&a)?;
    if let Some(m) = &a.mechanisms {
        sc.mechanisms = scenario::Mechanisms::parse(m).map_err(anyhow::Error::msg)?;
    }
    if let Some(j) = a.jobs {
        rayon::ThreadPoolBuilder::new()
            .num_threads(j.max(1))
            .build_global()
            .context("cannot set the number of simulation threads")?;
    }
    let started = Instant::now();
    let frames = sc.host.frames_per_node() * sc.host.nodes as u64;
    eprintln!(
        "sim {} on {} ({} nodes, {} CPUs, {} GiB, {} KiB frames: {frames} frames), mechanisms: {}, policies: {}",
        sc.name,
        sc.host.name,
        sc.host.nodes,
        sc.host.cpus(),
        sc.host.total_bytes() >> 30,
        sc.host.frame_size / 1024,
        sc.mechanisms.label(),
        policies.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
    );
    let report = match &a.sweep {
        Some(s) => run_sweep(&sc, s, &policies, a.seed)?,
        None => run_policies(&sc, &policies, a.seed, a.report.as_deref())?,
    };
    if let Some(out) = &a.json {
        crate::output::write_json(out, "sim", serde_json::Value::Null, &report)?;
    }
    eprintln!("wall time {:.1} s (not in the JSON)", started.elapsed().as_secs_f64());
    let bad: u64 =
        report.results.iter().chain(report.sweep.iter().flat_map(|r| &r.results)).map(|r| r.invariant_violations).sum();
    if bad > 0 {
        bail!("{bad} checker failures: see the messages in the report");
    }
    Ok(())
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.3}"))
}

fn row(r: &PolicyResult) -> String {
    let c = r.create_s.as_ref().map_or("-".into(), |c| format!("{:.3}/{:.3}", c.p50, c.max));
    format!(
        "| {} | {} | {} | {} | {c} | {:.3} | {} | {} | {} |",
        r.policy,
        opt(r.destroy_s),
        opt(r.time_to_clean_s),
        opt(r.ideal_clean_s),
        r.max_nonpreemptible_ms,
        r.watchdog_trips,
        r.highorder_failures,
        r.invariant_violations
    )
}

const HEADER: &str = "| policy | destroy_s | time_to_clean_s | ideal_clean_s | create_s p50/max | max_nonpreemptible_ms | watchdog_trips | highorder_failures | invariant_violations |\n|---|---|---|---|---|---|---|---|---|";

fn print_table(rep: &SimReport) {
    println!("scenario {} on {} (seed {}, mechanisms {})", rep.scenario, rep.preset, rep.seed, rep.mechanisms.label());
    for n in &rep.notes {
        println!("  {n}");
    }
    println!("{HEADER}");
    for r in &rep.results {
        println!("{}", row(r));
    }
    if let Some(r) = rep.results.first() {
        println!(
            "checks: conservation, ledger and claims after every event; every handover against the memory model ({} extents for {}); check_invariants() every {} heap calls ({} runs)",
            r.checks.handovers_checked, r.policy, r.checks.full_every_events, r.checks.full_runs
        );
    }
}

fn print_sweep(rep: &SimReport) {
    println!("scenario {} on {} (seed {}), sweep", rep.scenario, rep.preset, rep.seed);
    for n in &rep.notes {
        println!("  {n}");
    }
    let nl = HEADER.find('\n').unwrap_or(0);
    println!("| {} |{}", rep.sweep.first().map_or("", |r| r.param.as_str()), &HEADER[1..nl]);
    println!("|---{}", &HEADER[nl + 1..]);
    for s in &rep.sweep {
        for r in &s.results {
            println!("| {} |{}", s.value, &row(r)[1..]);
        }
    }
}
