//! `scrubheap vmm`: real KVM guests on the pool (see `scrubheap_vmm::churn`).

use crate::run::{human, parse_backend, parse_size, PoolArgs};
use anyhow::{bail, Context};
use scrubheap_host::run::Backend;
use std::path::PathBuf;

/// Boot real KVM guests on the pool: each scans its RAM for another tenant's bytes,
/// fills it with its own, and is destroyed.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub pool: PoolArgs,
    /// Guests to boot (the first of `scrubheap run`'s churn for this memory and seed).
    #[arg(long, default_value_t = 200)]
    pub guests: usize,
    /// Workload seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Run several backends on the same guests, side by side. With no value:
    /// scrubheap,kernel.
    #[arg(long, num_args = 0..=1, default_missing_value = "scrubheap,kernel", value_delimiter = ',', value_parser = parse_backend)]
    pub compare: Option<Vec<Backend>>,
    /// The pool's verify mode: every word of each frame read back after its scrub and
    /// read again when handed to a guest (on the guest's critical path). By default a
    /// sample of each zeroed frame is read back by the scrub and nothing at handoff.
    #[arg(long)]
    pub verify: bool,
    /// Populate-on-demand guests: each boots at 3/4 of its maximum (the workload size
    /// rounded down to 8 MiB) and its balloon driver gives back the rest before it scans
    /// what it kept. Pool policies only.
    #[arg(long)]
    pub pod: bool,
    /// Every guest this size (e.g. 1GiB) instead of the default churn's mixed sizes: one
    /// arrives after another, as many alive as fit in 70% of the memory.
    #[arg(long, value_parser = parse_size)]
    pub guest_size: Option<u64>,
    /// Each guest checks and writes its RAM a page at a time, as a booting OS initialises
    /// its memory (every word of a page read and checked zero, then the page written),
    /// instead of the default read-only scan of all of it followed by the fill.
    #[arg(long)]
    pub guest_init: bool,
    /// Arrivals back to back, as fast as the machine goes. By default the host has the
    /// time the workload leaves between two arrivals (at most 1 s each) to scrub what
    /// departed guests left, as a host's idle CPUs would, and the report says how long
    /// that took.
    #[arg(long)]
    pub back_to_back: bool,
    /// Balloon one real guest instead of a churn: it gives back the top `--balloon-size`
    /// of its RAM (`--guest-size`, default 2 GiB) and asks for it again, `--rounds` times,
    /// under the pool and under the kernel's `MADV_DONTNEED` paths (4 KiB at a time as
    /// virtio-balloon, whole range as virtio-mem). The pool gets the guest plus twice its
    /// balloon unless `--memory` says otherwise: a clean reserve beside the frames just given back.
    #[arg(long)]
    pub balloon: bool,
    /// Bytes the balloon guest gives back and takes again each round.
    #[arg(long, value_parser = parse_size, default_value = "1GiB")]
    pub balloon_size: u64,
    /// Shrink-and-grow rounds of the balloon guest (figures are medians over them).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
}

/// Refuses a guest count, memory size or guest size the churn cannot run.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn check(a: &Args, memory: u64) -> anyhow::Result<()> {
    if a.guests == 0 || a.guests > 100_000 {
        bail!("--guests {}: use 1 to 100000", a.guests);
    }
    if memory > 64 << 30 {
        bail!(
            "--memory {}: at most 64 GiB (guest RAM must stay below 4 GiB each, and the arena is prefaulted)",
            human(memory)
        );
    }
    if let Some(g) = a.guest_size {
        if g % 4096 != 0 || !(8192..=3 << 30).contains(&g) || g > memory {
            bail!("--guest-size {}: use a multiple of 4 KiB from 8 KiB to 3 GiB, at most --memory", human(g));
        }
    }
    Ok(())
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub fn main(a: Args) -> anyhow::Result<()> {
    use scrubheap_vmm::churn::{self, VmmReport};
    use scrubheap_vmm::vm::Kvm;

    let memory = a.pool.memory()?;
    check(&a, memory)?;
    if a.balloon {
        if a.guest_init || a.back_to_back {
            bail!("--balloon runs its own balloon guest: leave --guest-init and --back-to-back out");
        }
        if a.pod {
            bail!("--balloon runs one ordinary guest; leave --pod out (it has its own balloon at boot)");
        }
        return balloon(&a, memory_given(&a));
    }
    let backends = a.compare.clone().unwrap_or_else(|| vec![a.pool.policy]);
    if a.pod && backends.contains(&Backend::Kernel) {
        bail!("--pod boots populate-on-demand guests of the pool: leave the kernel baseline out of --compare");
    }
    let kvm = Kvm::open()?;
    let cfgs = churn_configs(&a, memory, &backends);
    println!(
        "{}: {} guests{} on {} of memory ({} node(s), {} scrubber(s) per node){}{}, KVM allows {} slots per VM{}",
        backends.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", "),
        a.guests,
        a.guest_size.map_or(String::new(), |g| format!(" of {}", human(g))),
        human(memory),
        a.pool.nodes,
        a.pool.scrubbers,
        if a.verify { ", --verify" } else { "" },
        if a.back_to_back { ", arrivals back to back" } else { ", scrubbing in the gaps between arrivals" },
        kvm.max_memslots(),
        if backends.len() > 1 { "; each guest under every backend in turn" } else { "" },
    );
    let display = Display::new(a.guests as u64);
    let reports: Vec<VmmReport> =
        churn::run_side_by_side(&cfgs, &kvm, &|p| display.show(p)).context("guests side by side")?;
    display.finish();
    for r in &reports {
        println!("{}", summary_line(r));
    }
    println!("\n{}", table(&reports));
    if let Some(j) = &a.json {
        let v = if reports.len() == 1 {
            serde_json::to_value(&reports[0])?
        } else {
            serde_json::json!({ "runs": reports, "compare": compare(&reports) })
        };
        crate::output::write_json(j, "vmm", serde_json::Value::Null, &v)?;
        println!("report: {}", j.display());
    }
    Ok(())
}

/// One churn configuration per backend, the rest as the arguments say.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn churn_configs(a: &Args, memory: u64, backends: &[Backend]) -> Vec<scrubheap_vmm::churn::VmmConfig> {
    use scrubheap_vmm::vm::GuestProgram;
    let program = if a.guest_init { GuestProgram::InitEachPage } else { GuestProgram::ScanThenFill };
    let cfgs: Vec<_> = backends
        .iter()
        .map(|&backend| scrubheap_vmm::churn::VmmConfig {
            memory_bytes: memory,
            nodes: a.pool.nodes,
            scrubbers_per_node: a.pool.scrubbers,
            backend,
            guests: a.guests,
            seed: a.seed,
            hugetlb: true,
            verify: a.verify,
            pod: a.pod,
            guest_bytes: a.guest_size,
            program,
            back_to_back: a.back_to_back,
        })
        .collect();
    debug_assert_eq!(cfgs.len(), backends.len());
    cfgs
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
/// `--memory` if given (the balloon run sizes its pool from the guest otherwise).
fn memory_given(a: &Args) -> Option<u64> {
    a.pool.memory.is_some().then(|| a.pool.memory().ok()).flatten()
}

/// `scrubheap vmm --balloon`: one guest per backend, side by side.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn balloon(a: &Args, memory: Option<u64>) -> anyhow::Result<()> {
    use scrubheap_host::pool::{Pool, PoolConfig};
    use scrubheap_vmm::balloon::{self, BalloonBackend, BalloonConfig};
    use scrubheap_vmm::vm::Kvm;

    let cfg =
        BalloonConfig { guest_bytes: a.guest_size.unwrap_or(2 << 30), balloon_bytes: a.balloon_size, rounds: a.rounds };
    cfg.validate()?;
    let need = (cfg.guest_bytes + cfg.balloon_bytes).next_multiple_of(2 << 20);
    let memory = memory.unwrap_or(need + cfg.balloon_bytes.next_multiple_of(2 << 20));
    if memory < need {
        bail!("--memory {}: the pool must hold the guest and its balloon ({})", human(memory), human(need));
    }
    let kvm = Kvm::open()?;
    println!(
        "balloon: a guest of {} gives back {} and takes it again, {} round(s), per backend; pool of {}",
        human(cfg.guest_bytes),
        human(cfg.balloon_bytes),
        cfg.rounds,
        human(memory)
    );
    let pool = Pool::new(PoolConfig {
        memory_bytes: memory,
        nodes: a.pool.nodes,
        scrubbers_per_node: a.pool.scrubbers,
        hugetlb: true,
        verify: a.verify,
        ..PoolConfig::default()
    })?;
    let mut reports = Vec::new();
    for backend in [BalloonBackend::Pool, BalloonBackend::KernelPage, BalloonBackend::KernelRange] {
        let r =
            balloon::run(&kvm, &cfg, backend, Some(&pool)).with_context(|| format!("balloon guest under {backend}"))?;
        println!(
            "  {backend}: shrink {:.2} GiB/s ({:.2} ms pause), grow {:.2} GiB/s ({:.2} ms pause + {:.2} ms first touch), \
             {} non-zero words of {}",
            r.shrink_gib_s, r.shrink_pause_ms, r.grow_gib_s, r.grow_pause_ms, r.grow_ready_ms - r.grow_pause_ms,
            r.nonzero_words, r.words_checked
        );
        reports.push(r);
    }
    println!("\n{}", balloon_table(&reports));
    if let Some(j) = &a.json {
        crate::output::write_json(j, "vmm-balloon", serde_json::Value::Null, &serde_json::json!({ "runs": reports }))?;
        println!("report: {}", j.display());
    }
    Ok(())
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn balloon_table(rs: &[scrubheap_vmm::balloon::BalloonReport]) -> String {
    use scrubheap_vmm::balloon::BalloonReport;
    use std::fmt::Write as _;
    let rows: [Row<BalloonReport>; 9] = [
        ("shrink GiB/s (p50 over rounds)", |r| format!("{:.2}", r.shrink_gib_s)),
        ("  pause ms p50", |r| format!("{:.2}", r.shrink_pause_ms)),
        ("  of which unmap / free ms p50", |r| {
            let p50 = |f: fn(&scrubheap_vmm::balloon::BalloonRound) -> f64| {
                scrubheap_host::report::Millis::of(&r.rounds.iter().map(f).collect::<Vec<f64>>()).p50
            };
            format!("{:.2} / {:.2}", p50(|x| x.shrink_unmap_ms), p50(|x| x.shrink_free_ms))
        }),
        ("grow GiB/s (pause + first touch)", |r| format!("{:.2}", r.grow_gib_s)),
        ("  pause ms / first touch ms p50", |r| {
            format!("{:.2} / {:.2}", r.grow_pause_ms, r.grow_ready_ms - r.grow_pause_ms)
        }),
        ("guest check of every word, GB/s", |r| format!("{:.1}", r.check_gb_s)),
        ("non-zero words / words checked", |r| format!("{} / {}", r.nonzero_words, r.words_checked)),
        ("madvise calls / scrubbed in place", |r| {
            format!("{} / {}", r.madvise_calls, human(r.bytes_scrubbed_in_place))
        }),
        ("grown memory mapped (pre-faulted?)", |r| r.prefault.map_or("refault".into(), |p| p.to_string())),
    ];
    let mut t = grid(rs, |r| &r.backend, &rows);
    let base = rs.iter().find(|r| r.backend == "kernel-4k");
    for r in rs.iter().filter(|r| r.backend != "kernel-4k") {
        if let Some(b) = base {
            let _ = write!(
                t,
                "\n{} against kernel-4k (its GiB/s over kernel-4k's): shrink {:.1}x, grow {:.1}x",
                r.backend,
                r.shrink_gib_s / b.shrink_gib_s,
                r.grow_gib_s / b.grow_gib_s
            );
        }
    }
    t
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
pub fn main(_: Args) -> anyhow::Result<()> {
    bail!("scrubheap vmm runs KVM guests: it needs Linux on x86_64")
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn summary_line(r: &scrubheap_vmm::churn::VmmReport) -> String {
    format!(
        "  {}: {} guests ({} at most alive, {} refused), {} GiB scanned: {} non-zero words of {}; \
         create p50 {:.2} ms, scan p50 {:.2} ms, fill p50 {:.2} ms, destroy p50 {:.2} ms; slots p50 {} max {}; {:.1} s",
        r.policy,
        r.guests,
        r.max_alive,
        r.guests_refused,
        r.guest_bytes >> 30,
        r.leak_check.nonzero_words,
        r.leak_check.words_checked,
        r.create_ms.p50,
        r.scan_ms.p50,
        r.fill_ms.p50,
        r.destroy_ms.p50,
        r.memslots.p50,
        r.memslots.max,
        r.duration_s
    )
}

/// Each backend against the `kernel` baseline (or the last backend when no `kernel` ran):
/// the baseline's median over this one's, so above 1 means this one is faster.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn compare(rs: &[scrubheap_vmm::churn::VmmReport]) -> serde_json::Value {
    let base = rs.iter().find(|r| r.policy == "kernel").unwrap_or(&rs[rs.len() - 1]);
    let ratio = |b: f64, x: f64| if x > 0.0 { b / x } else { 0.0 };
    let vs: Vec<_> = rs
        .iter()
        .filter(|r| r.policy != base.policy)
        .map(|r| {
            serde_json::json!({
                "policy": r.policy,
                "create_p50_speedup": ratio(base.create_ms.p50, r.create_ms.p50),
                "create_p99_speedup": ratio(base.create_ms.p99, r.create_ms.p99),
                "ready_p50_speedup": ratio(base.ready_ms.p50, r.ready_ms.p50),
                "scan_p50_speedup": ratio(base.scan_ms.p50, r.scan_ms.p50),
                "fill_p50_speedup": ratio(base.fill_ms.p50, r.fill_ms.p50),
                "destroy_p50_speedup": ratio(base.destroy_ms.p50, r.destroy_ms.p50),
            })
        })
        .collect();
    serde_json::json!({ "baseline": base.policy, "against": vs })
}

/// The rows of [`table`]: a name and how to write one policy's value.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
const VMM_ROWS: [Row<scrubheap_vmm::churn::VmmReport>; 20] = [
    ("guests booted / most alive at once", |r| format!("{} / {}", r.guests, r.max_alive)),
    ("guest RAM scanned, GiB", |r| format!("{:.1}", r.guest_bytes as f64 / (1u64 << 30) as f64)),
    ("non-zero words / words checked", |r| format!("{} / {}", r.leak_check.nonzero_words, r.leak_check.words_checked)),
    ("host check pages boot / scrub / handoff", |r| {
        let t = &r.host_leak_check;
        let n = |p: &str| t.places.iter().find(|x| x.place == p).map_or(0, |x| x.pages_checked);
        if t.places.is_empty() {
            return "-".into();
        }
        format!("{} / {} / {}: {} bad", n("boot"), n("scrub"), n("handoff"), t.nonzero_pages)
    }),
    ("create ms p50 / p99 / max", |r| {
        format!("{:.2} / {:.1} / {:.1}", r.create_ms.p50, r.create_ms.p99, r.create_ms.max)
    }),
    ("  of which memory ms p50 / p99", |r| format!("{:.2} / {:.1}", r.alloc_ms.p50, r.alloc_ms.p99)),
    ("  prepare / VM / slots ms p50", |r| {
        let s = &r.setup_ms_p50;
        format!("{:.2} / {:.2} / {:.2}", s.prepare_ms, s.vm_ms, s.memslots_ms)
    }),
    ("  vCPU / prefault / entry / other ms p50", |r| {
        let s = &r.setup_ms_p50;
        format!("{:.2} / {:.2} / {:.2} / {:.2}", s.vcpu_ms, s.prefault_ms, s.entry_ms, s.other_ms)
    }),
    ("guest RAM mapped before it ran", |r| match r.prefault {
        Some(p) if r.prefaulted_bytes > 0 => format!("{} ({p})", human(r.prefaulted_bytes)),
        Some(p) => format!("none ({p})"),
        None => "none (not populated)".into(),
    }),
    ("ready ms p50 / p99 / max", |r| format!("{:.2} / {:.1} / {:.1}", r.ready_ms.p50, r.ready_ms.p99, r.ready_ms.max)),
    ("guest program", |r| r.program.to_string()),
    ("scan ms p50 / p99 (guest TSC)", |r| format!("{:.2} / {:.1}", r.scan_ms.p50, r.scan_ms.p99)),
    ("scan GB/s (all guests)", |r| format!("{:.1}", r.scan_gbps)),
    ("fill ms p50 / p99 (guest TSC)", |r| format!("{:.2} / {:.1}", r.fill_ms.p50, r.fill_ms.p99)),
    ("destroy ms p50 / p99 / max", |r| {
        format!("{:.2} / {:.1} / {:.1}", r.destroy_ms.p50, r.destroy_ms.p99, r.destroy_ms.max)
    }),
    ("PoD: below max / GiB ballooned / slots removed", |r| match &r.pod {
        Some(p) => format!(
            "{} / {:.2} / {}",
            p.guests_below_max,
            p.ballooned_bytes as f64 / (1u64 << 30) as f64,
            p.slots_removed
        ),
        None => "-".into(),
    }),
    ("gap scrub GiB / ms / budget ms / dirty", |r| {
        let g = &r.gap_scrub;
        format!("{:.2} / {:.0} / {:.0} / {}", g.bytes as f64 / (1u64 << 30) as f64, g.ms, g.budget_ms, g.arrivals_dirty)
    }),
    ("GiB scrubbed background / in place", |r| {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        format!("{:.2} / {:.2}", gib(r.bytes_scrubbed[0]), gib(r.bytes_scrubbed[1]))
    }),
    ("memory slots p50 / max (limit)", |r| format!("{} / {} ({})", r.memslots.p50, r.memslots.max, r.memslots.limit)),
    ("run seconds", |r| format!("{:.1}", r.duration_s)),
];

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn table(rs: &[scrubheap_vmm::churn::VmmReport]) -> String {
    let mut t = grid(rs, |r| &r.policy, &VMM_ROWS);
    if rs.len() > 1 {
        speedups(&mut t, rs);
    }
    t
}

/// One line per policy against the first (the baseline): its speedups of the medians.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn speedups(t: &mut String, rs: &[scrubheap_vmm::churn::VmmReport]) {
    use std::fmt::Write as _;
    let c = compare(rs);
    for v in c["against"].as_array().into_iter().flatten() {
        let _ = write!(
            t,
            "\n{} against {} (baseline time / this time): create p50 {:.2}x, scan p50 {:.2}x, fill p50 {:.2}x, \
             ready p50 {:.2}x, destroy p50 {:.2}x",
            v["policy"].as_str().unwrap_or(""),
            c["baseline"].as_str().unwrap_or(""),
            v["create_p50_speedup"].as_f64().unwrap_or(0.0),
            v["scan_p50_speedup"].as_f64().unwrap_or(0.0),
            v["fill_p50_speedup"].as_f64().unwrap_or(0.0),
            v["ready_p50_speedup"].as_f64().unwrap_or(0.0),
            v["destroy_p50_speedup"].as_f64().unwrap_or(0.0),
        );
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
/// A table row: its name, and its cell for a report.
type Row<T> = (&'static str, fn(&T) -> String);

/// Named rows of figures, a column per report headed by `head`.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn grid<T>(rs: &[T], head: fn(&T) -> &str, rows: &[Row<T>]) -> String {
    use std::fmt::Write as _;
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let mut t = format!("{:w$}", "");
    for r in rs {
        let _ = write!(t, "  {:>22}", head(r));
    }
    for (name, f) in rows {
        let _ = write!(t, "\n{name:w$}");
        for r in rs {
            let _ = write!(t, "  {:>22}", f(r));
        }
    }
    t
}

/// A progress bar on a terminal, a line a second otherwise.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
struct Display {
    bar: Option<indicatif::ProgressBar>,
    last: std::cell::Cell<Option<std::time::Instant>>,
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
impl Display {
    fn new(total: u64) -> Display {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} guests {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            b
        });
        Display { bar, last: std::cell::Cell::new(None) }
    }

    fn show(&self, p: &scrubheap_vmm::churn::VmmProgress) {
        let msg = format!(
            "| {} alive ({}) | {:.1} GiB scanned, all zero",
            p.alive,
            human(p.alive_bytes),
            (p.words_checked * 8) as f64 / (1u64 << 30) as f64
        );
        match &self.bar {
            Some(b) => {
                b.set_position(p.booted);
                b.set_message(msg);
            }
            None => {
                let now = std::time::Instant::now();
                if self.last.get().is_none_or(|t| now - t >= std::time::Duration::from_secs(1)) {
                    self.last.set(Some(now));
                    println!("  {}/{} guests {msg}", p.booted, p.total);
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
