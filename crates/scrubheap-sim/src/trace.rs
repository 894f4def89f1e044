//! The `trace` scenario: VM arrivals and lifetimes from the Azure Public Dataset V1 (as
//! decoded by huaweicloud/trace_generation_rnn), replayed onto a host. Following the
//! traces folder's README: arrival order and lifetimes are kept, every memory size is
//! scaled by one factor (host bytes x fill / trace peak bytes) and time is compressed by
//! one factor; both are stated in the report's notes. The trace is read, never copied.

use crate::preset::{HostPreset, GIB};
use crate::scenario::{Action, ClaimMode, GuestSpec, Scenario, TimedOp};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::{BufRead, BufReader};
use std::path::Path;

/// How to replay a trace.
#[derive(Clone, Debug)]
pub struct TraceOptions {
    /// At most this many VMs, in file order.
    pub vms: usize,
    /// Fraction of host memory the trace's peak should fill after scaling.
    pub fill: f64,
    /// Trace seconds per simulated second.
    pub time_compression: f64,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions { vms: 10_000, fill: 0.9, time_compression: 60.0 }
    }
}

struct Vm {
    arrive: f64,
    leave: Option<f64>,
    gib: f64,
}

/// Builds the `trace` scenario from an Azure V1 decoded CSV
/// (`arrival_bin_end_s,batch_idx,vcpus,mem_gb,dur_bin,censored,dur_bin_lo_s,dur_bin_hi_s`).
pub fn azure_v1(path: &Path, host: HostPreset, opts: &TraceOptions, seed: u64) -> Result<Scenario, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7ace);
    let mut vms = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if i == 0 {
            if !line.starts_with("arrival_bin_end_s,") {
                return Err(format!("{}: not an Azure V1 decoded trace (header {line:?})", path.display()));
            }
            continue;
        }
        if vms.len() >= opts.vms {
            break;
        }
        let c: Vec<&str> = line.split(',').collect();
        let num = |k: usize| -> Result<f64, String> {
            c.get(k)
                .and_then(|s| s.trim().parse::<f64>().ok())
                .ok_or_else(|| format!("{}:{}: bad field {k} in {line:?}", path.display(), i + 1))
        };
        let bin_end = num(0)?;
        let gib = num(3)?;
        let censored = num(5)? != 0.0;
        let (lo, hi) = (num(6)?, num(7)?);
        // Arrival is known to its 300 s bin, lifetime to its bin: draw inside both.
        let arrive = bin_end - rng.random_range(0.0..300.0);
        let life = if hi > lo { rng.random_range(lo..=hi) } else { lo };
        vms.push(Vm { arrive, leave: (!censored).then_some(arrive + life.max(1.0)), gib });
    }
    if vms.is_empty() {
        return Err(format!("{}: no VMs", path.display()));
    }
    let start = vms.iter().map(|v| v.arrive).fold(f64::INFINITY, f64::min);
    // Peak concurrent memory of the trace.
    let mut edges: Vec<(f64, f64)> = Vec::new();
    for v in &vms {
        edges.push((v.arrive, v.gib));
        if let Some(l) = v.leave {
            edges.push((l, -v.gib));
        }
    }
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let (mut cur, mut peak) = (0.0f64, 0.0f64);
    for (_, d) in &edges {
        cur += d;
        peak = peak.max(cur);
    }
    let scale = opts.fill * host.total_bytes() as f64 / (peak * GIB as f64);
    let frame = host.frame_size;
    let mut guests = Vec::new();
    let mut ops = Vec::new();
    let mut last = 0u64;
    for (g, v) in vms.iter().enumerate() {
        let bytes = ((v.gib * GIB as f64 * scale) as u64 / frame).max(1) * frame;
        guests.push(GuestSpec { group: "trace".into(), bytes, node: None, claim: ClaimMode::Global });
        let at = |t: f64| (((t - start) / opts.time_compression) * 1e9).round() as u64;
        ops.push(TimedOp { at_ns: at(v.arrive), guest: g, action: Action::Create, measure: true });
        if let Some(l) = v.leave {
            ops.push(TimedOp { at_ns: at(l), guest: g, action: Action::Destroy, measure: true });
            last = last.max(at(l));
        }
        last = last.max(at(v.arrive));
    }
    ops.sort_by_key(|o| (o.at_ns, o.guest, o.action == Action::Create));
    let builders = host.nodes * 2;
    let span = last as f64 / 1e9;
    let s = Scenario {
        name: "trace".into(),
        host,
        builders,
        initially_dirty: false,
        guests,
        ops,
        max_s: span + 3600.0,
        sample_s: (span / 400.0).max(0.01),
        mechanisms: Default::default(),
        notes: vec![
            format!("trace: {} (Azure Public Dataset V1, CC BY 4.0; Cortez et al., SOSP 2017)", path.display()),
            format!(
                "{} VMs; trace peak {peak:.1} GiB scaled by {scale:.5} to fill {:.0}% of the host; time compressed {}x ({span:.0} s simulated)",
                vms.len(),
                opts.fill * 100.0,
                opts.time_compression
            ),
            "arrivals drawn uniformly inside their 300 s bin, lifetimes inside their duration bin (seeded); censored VMs live to the end".into(),
        ],
    };
    s.validate()?;
    Ok(s)
}
