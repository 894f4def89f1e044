//! The `trace` scenario: VM arrivals and lifetimes from the Azure Public Dataset V1 (as
//! decoded by huaweicloud/trace_generation_rnn), replayed onto a host. Following the
//! traces folder's README: arrival order and lifetimes are kept, every memory size is
//! scaled by one factor (host bytes x fill / trace peak bytes) and time is compressed by
//! one factor; both are stated in the report's notes. The trace is read, never copied, by
//! `scrubheap-workload`, the one reader the host and the VMM use too (its crate docs give
//! the rules for columns, `censored`, bin edges and the seed).

use crate::preset::{HostPreset, GIB};
use crate::scenario::{Action, ClaimMode, GuestSpec, Scenario, TimedOp};
use scrubheap_workload::{peak_concurrent_bytes, read_trace};
use std::path::Path;

/// How to replay a trace.
#[derive(Clone, Debug)]
pub struct TraceOptions {
    /// At most this many VMs, the first in arrival order.
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

/// Builds the `trace` scenario from any trace file `scrubheap_workload` reads (the Azure V1
/// decoded CSV by default), read with that crate's rules and `seed`: columns by name,
/// `censored` 0 or 1, censored VMs living to their bin's upper edge, reversed bins refused.
pub fn azure_v1(path: &Path, host: HostPreset, opts: &TraceOptions, seed: u64) -> Result<Scenario, String> {
    if opts.vms == 0
        || !(opts.fill > 0.0 && opts.fill <= 1.0)
        || opts.time_compression.is_nan()
        || opts.time_compression <= 0.0
    {
        return Err(format!("trace options out of range: {opts:?} (vms >= 1, 0 < fill <= 1, compression > 0)"));
    }
    let trace = read_trace(path, seed).map_err(|e| e.to_string())?;
    let vms = &trace.guests[..opts.vms.min(trace.guests.len())];
    let start = vms[0].arrival_s;
    let spans: Vec<(f64, f64, u64)> = vms.iter().map(|v| (v.arrival_s, v.lifetime_s, v.bytes.ceil() as u64)).collect();
    let peak = peak_concurrent_bytes(&spans) as f64 / GIB as f64;
    if peak <= 0.0 {
        return Err(format!("{}: the first {} VMs hold no memory", path.display(), vms.len()));
    }
    let scale = opts.fill * host.total_bytes() as f64 / (peak * GIB as f64);
    let frame = host.frame_size;
    let mut guests = Vec::new();
    let mut ops = Vec::new();
    let mut last = 0u64;
    for (g, v) in vms.iter().enumerate() {
        let bytes = ((v.bytes * scale) as u64 / frame).max(1) * frame;
        guests.push(GuestSpec { group: "trace".into(), bytes, node: None, claim: ClaimMode::Global });
        let at = |t: f64| (((t - start) / opts.time_compression) * 1e9).round() as u64;
        let leave = at(v.arrival_s + v.lifetime_s.max(1.0));
        ops.push(TimedOp { at_ns: at(v.arrival_s), guest: g, action: Action::Create, measure: true });
        ops.push(TimedOp { at_ns: leave, guest: g, action: Action::Destroy, measure: true });
        last = last.max(leave);
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
            format!("trace: {} ({})", path.display(), trace.format.citation()),
            format!(
                "{} VMs; trace peak {peak:.1} GiB scaled by {scale:.5} to fill {:.0}% of the host; time compressed {}x ({span:.0} s simulated)",
                vms.len(),
                opts.fill * 100.0,
                opts.time_compression
            ),
            "read by scrubheap-workload: arrivals drawn uniformly inside their 300 s bin, lifetimes inside their duration bin (seeded); censored VMs live to their bin's upper edge".into(),
        ],
    };
    s.validate()?;
    Ok(s)
}
