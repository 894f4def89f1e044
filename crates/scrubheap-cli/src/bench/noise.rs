//! `scrubheap bench noise`: the machine's floor for any section that zeroes a batch. One
//! thread zeroes a prefaulted arena one batch (1 MiB by default) per call with the
//! calibrated kernel, no heap, no lock, nothing else, and records each call in thread CPU
//! time. On a quiet bare-metal host every call takes about the same; where the host
//! steals or stalls the vCPU without accounting it as steal time, single calls take
//! milliseconds, and so will some heap sections that zero a batch, whatever the heap does.

use anyhow::Context;
use hdrhistogram::Histogram;
use scrubheap::{FrameMemory, Mfn};
use scrubheap_host::{thread_cpu_time, Arena, ArenaConfig};
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Raw zeroing, one batch per call, timed per call.
#[derive(clap::Args)]
pub struct Args {
    /// Where to write the JSON report.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// How long to run: 10s, 500ms, 2m, or plain seconds.
    #[arg(long, visible_alias = "duration", default_value_t = 10.0, value_parser = crate::run::parse_duration)]
    pub seconds: f64,
    /// Arena size in MiB.
    #[arg(long, default_value_t = 1024)]
    pub mib: u64,
    /// Frames (4 KiB) per call: the heap's scrub batch.
    #[arg(long, default_value_t = 256)]
    pub batch: u64,
}

/// What the calls took, thread CPU time.
#[derive(Serialize, Debug)]
pub struct Noise {
    /// Zeroing kernel used.
    pub kernel: String,
    /// Bytes per call.
    pub call_bytes: u64,
    /// Calls made.
    pub calls: u64,
    /// Median call, µs.
    pub p50_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Longest call, µs.
    pub max_us: f64,
    /// Calls that took more than 1 ms.
    pub over_1ms: u64,
}

/// Runs the probe.
pub fn measure(a: &Args) -> anyhow::Result<Noise> {
    anyhow::ensure!(a.seconds.is_finite() && a.seconds > 0.0, "--seconds must be a positive number");
    anyhow::ensure!(a.batch > 0 && a.mib > 0, "--batch and --mib must be at least 1");
    let frames = a.mib * 256;
    anyhow::ensure!(a.batch <= frames, "--batch {} is larger than the arena ({frames} frames)", a.batch);
    let mut cfg = ArenaConfig::new(Mfn(0), frames, 4096);
    cfg.calibration_call_bytes = (a.batch * 4096) as usize;
    let arena = Arena::new(cfg).context("cannot build the arena")?;
    let mut h = Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds");
    let end = Instant::now() + Duration::from_secs_f64(a.seconds);
    while Instant::now() < end {
        let mut f = 0;
        while f + a.batch <= frames {
            let t = thread_cpu_time();
            arena.zero(Mfn(f), a.batch);
            h.saturating_record((thread_cpu_time() - t).as_nanos().max(1) as u64);
            f += a.batch;
        }
    }
    let over = h.iter_recorded().filter(|v| v.value_iterated_to() > 1_000_000).map(|v| v.count_at_value()).sum();
    Ok(Noise {
        kernel: arena.kernel().name().into(),
        call_bytes: a.batch * 4096,
        calls: h.len(),
        p50_us: h.value_at_quantile(0.5) as f64 / 1e3,
        p999_us: h.value_at_quantile(0.999) as f64 / 1e3,
        max_us: h.max() as f64 / 1e3,
        over_1ms: over,
    })
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let n = measure(&a)?;
    println!(
        "{} calls of {} KiB with {}: p50 {:.1} us, p99.9 {:.1} us, max {:.0} us, {} over 1 ms (thread CPU time)",
        n.calls,
        n.call_bytes >> 10,
        n.kernel,
        n.p50_us,
        n.p999_us,
        n.max_us,
        n.over_1ms
    );
    if let Some(p) = &a.json {
        let j = serde_json::json!({ "schema": 1, "bench": { "noise": n } });
        crate::output::write_json(p, "bench noise", serde_json::Value::Null, &j)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_times_every_call() {
        let a = Args { json: None, seconds: 0.05, mib: 8, batch: 256 };
        let n = measure(&a).unwrap();
        assert!(n.calls >= 8, "{n:?}");
        assert_eq!(n.call_bytes, 1 << 20);
        assert!(n.p50_us > 0.0 && n.max_us >= n.p50_us && n.over_1ms <= n.calls);
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(measure(&Args { json: None, seconds: 0.0, mib: 8, batch: 256 }).is_err());
        assert!(measure(&Args { json: None, seconds: 1.0, mib: 1, batch: 512 }).is_err());
    }
}
