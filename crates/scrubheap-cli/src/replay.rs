//! `scrubheap replay FILE [--json OUT]`: replay an op log against a fresh heap and report
//! what happened; `scrubheap replay --generate N FILE`: write a random op log instead.

use anyhow::{bail, Context};
use scrubheap_oplog::{GenConfig, ReplayReport, Replayer, SectionReport, DEFAULT_MAX_FRAMES};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Replay an op log (DESIGN section 6), or generate one.
#[derive(clap::Args)]
pub struct Args {
    /// The op log to replay (with --generate: the file to write).
    pub file: PathBuf,
    /// Where to write the JSON report.
    #[arg(long, value_name = "OUT", conflicts_with = "generate")]
    pub json: Option<PathBuf>,
    /// Largest heap, in frames over all nodes, that a `heap` line may ask for.
    #[arg(long, value_name = "FRAMES", default_value_t = DEFAULT_MAX_FRAMES)]
    pub max_frames: u64,
    /// Write a random op log of N operations to FILE instead of replaying.
    #[arg(long, value_name = "N")]
    pub generate: Option<u64>,
    /// Seed of the generated log.
    #[arg(long, default_value_t = 1, requires = "generate")]
    pub seed: u64,
    /// Nodes of the generated log's heap.
    #[arg(long, default_value_t = 3, requires = "generate")]
    pub nodes: u64,
    /// Frames per node of the generated log's heap (262144 = 1 GiB of 4 KiB frames).
    #[arg(long, default_value_t = 262_144, requires = "generate")]
    pub frames_per_node: u64,
    /// Offset in each node where a Movable zone begins (none by default).
    #[arg(long, requires = "generate")]
    pub movable_from: Option<u64>,
    /// Put a `check` line every this many operations of the generated log.
    #[arg(long, default_value_t = 2000, requires = "generate")]
    pub check_every: u64,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    if let Some(ops) = a.generate {
        return generate(&a, ops);
    }
    let bytes = std::fs::read(&a.file).with_context(|| format!("cannot read op log {}", a.file.display()))?;
    let started = Instant::now();
    let mut replayer = Replayer::with_max_frames(a.max_frames);
    replayer.replay_bytes(&bytes);
    let rep = replayer.finish();
    let secs = started.elapsed().as_secs_f64();
    print_summary(&a.file, &rep, secs);
    if let Some(out) = &a.json {
        write_json(out, &rep).with_context(|| format!("cannot write JSON report {}", out.display()))?;
    }
    if rep.invariant_violations > 0 {
        bail!(
            "replay of {}: {} invariant violations, the first: {}",
            a.file.display(),
            rep.invariant_violations,
            rep.violations.first().map_or("?", String::as_str)
        );
    }
    Ok(())
}

fn print_summary(file: &Path, rep: &ReplayReport, secs: f64) {
    let failed: u64 = rep.errors.values().sum();
    let kinds: Vec<String> = rep.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let kinds = if kinds.is_empty() { String::new() } else { format!(" ({})", kinds.join(", ")) };
    println!("replay {}: {} ops in {secs:.2} s: {} ok, {failed} failed{kinds}", file.display(), rep.ops, rep.ok);
    let f = &rep.final_;
    println!(
        "final frames: free_clean {}, free_dirty {}, allocated {}, offline {}",
        f.free_clean, f.free_dirty, f.allocated, f.offline
    );
    let p = &rep.pod;
    if *p != Default::default() {
        println!(
            "pod: populated {}, cache {}, entries {}; superpages reclaimed {}, zero pages reclaimed {}, superpages shattered {}, crashes {}",
            p.populated, p.cache, p.entries, p.superpages_reclaimed, p.zero_pages_reclaimed, p.superpages_shattered, p.crashes
        );
    }
    print_sections(&rep.sections);
    println!("invariant violations: {}", rep.invariant_violations);
    for v in &rep.violations {
        eprintln!("  {v}");
    }
}

/// The longest sections, in frames touched between two preemption points, by kind of line.
fn print_sections(s: &SectionReport) {
    let op = |o: &str| if o.is_empty() { "none".to_string() } else { o.to_string() };
    println!(
        "longest section, frames: heap {} (bound {}; {}), pod {} ({}), baseline policies {} ({})",
        s.max_section_frames,
        s.section_bound,
        op(&s.max_section_op),
        s.pod_max_section_frames,
        op(&s.pod_max_section_op),
        s.baseline_max_section_frames,
        op(&s.baseline_max_section_op)
    );
}

/// The report as JSON: the `replay` envelope, whose results are [`ReplayReport`] as it
/// serialises (its documentation lists the keys).
fn write_json(out: &Path, rep: &ReplayReport) -> anyhow::Result<()> {
    crate::output::write_json(out, "replay", serde_json::Value::Null, rep)
}

fn generate(a: &Args, ops: u64) -> anyhow::Result<()> {
    let frames = a.nodes.saturating_mul(a.frames_per_node);
    if frames > a.max_frames {
        bail!(
            "--nodes {} x --frames-per-node {} is more than --max-frames {}: the replay would refuse the heap",
            a.nodes,
            a.frames_per_node,
            a.max_frames
        );
    }
    let cfg = GenConfig {
        ops,
        seed: a.seed,
        nodes: a.nodes,
        frames_per_node: a.frames_per_node,
        movable_from: a.movable_from,
        check_every: a.check_every,
        max_frames: a.max_frames,
    };
    let started = Instant::now();
    let file = File::create(&a.file).with_context(|| format!("cannot create {}", a.file.display()))?;
    let mut w = BufWriter::new(file);
    let rep = scrubheap_oplog::generate(&cfg, &mut w)
        .map_err(anyhow::Error::from)
        .and_then(|rep| Ok(w.flush().map(|()| rep)?))
        .with_context(|| format!("generating {}", a.file.display()))?;
    let failed: u64 = rep.errors.values().sum();
    println!(
        "wrote {} ops to {} in {:.2} s ({} succeed and {failed} fail when replayed)",
        rep.ops,
        a.file.display(),
        started.elapsed().as_secs_f64(),
        rep.ok
    );
    if rep.invariant_violations > 0 {
        bail!(
            "the heap broke while generating: {} invariant violations, the first: {}",
            rep.invariant_violations,
            rep.violations.first().map_or("?", String::as_str)
        );
    }
    Ok(())
}
