//! [`Workload`]: a default churn or a replayed trace, scaled to one host (the rules are in
//! the crate documentation).

use std::fmt;
use std::path::Path;

use crate::azure_v1;
use crate::churn;
use crate::error::WorkloadError;
use crate::formats::{self, RawGuest, TraceFormat};
use crate::spec::{events, guest_bytes, peak, GuestSpec, MIN_GUEST_BYTES};

/// Share of the host a replayed trace's peak concurrent memory is scaled to.
pub const TRACE_PEAK_SHARE: f64 = 0.75;
/// Guests a replayed trace's window holds per second of run.
pub const TRACE_GUESTS_PER_S: f64 = 10.0;
/// A replayed trace's window holds at most one guest per this many bytes of host.
pub const HOST_BYTES_PER_TRACE_GUEST: u64 = 16 << 20;

/// A workload scaled to a host.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Sorted by `arrival_s`.
    pub guests: Vec<GuestSpec>,
    /// Host bytes per trace byte (before the rounding of each guest).
    pub memory_scale: f64,
    /// Run seconds per trace second.
    pub time_scale: f64,
    /// Where it comes from, with the licence and what part of the trace is used.
    pub source: String,
    /// Run seconds over which the guests arrive.
    pub duration_s: f64,
}

/// Guests in a replay's window for this host and run.
fn window_guests(host_bytes: u64, duration_s: f64) -> usize {
    let by_time = (TRACE_GUESTS_PER_S * duration_s).round().max(1.0);
    let by_host = (host_bytes / HOST_BYTES_PER_TRACE_GUEST).max(1) as f64;
    by_time.min(by_host) as usize
}

/// The largest memory factor for which the window's peak of concurrent memory, after each
/// guest's rounding ([`guest_bytes`]), is at most `target` bytes (found by bisection).
fn memory_factor(guests: &[RawGuest], target: f64) -> f64 {
    let ev = events(guests.iter().map(|g| (g.arrival_s, g.lifetime_s)));
    let sizes = |m: f64| -> Vec<u64> { guests.iter().map(|g| guest_bytes(g.bytes * m)).collect() };
    let raw_peak = {
        let raw: Vec<u64> = guests.iter().map(|g| g.bytes.ceil() as u64).collect();
        peak(&ev, &raw)
    };
    // Rounding only adds bytes, so the factor is at most target / raw peak; bisect below it.
    let mut hi = if raw_peak > 0 { target / raw_peak as f64 } else { 0.0 };
    let mut lo = 0.0;
    if hi > 0.0 && peak(&ev, &sizes(hi)) as f64 > target {
        for _ in 0..64 {
            let mid = (lo + hi) / 2.0;
            if peak(&ev, &sizes(mid)) as f64 <= target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
    } else {
        lo = hi;
    }
    lo
}

impl Workload {
    /// The default churn: sizes and lifetimes drawn from the Azure V1 distributions.
    ///
    /// The distributions are read from `traces_dir/azure_v1/decoded_v1_dev.csv` when that file
    /// can be read and come from a table derived from it otherwise (the two are the same; a
    /// test checks it), so the workload depends only on the arguments. How sizes, arrivals and
    /// lifetimes are chosen is in the module documentation (`# The default churn`): the host ends up about
    /// 70% full (about 60-80%, never past 85%) from the first second, with 250 to 360 guests
    /// on 4 GiB over 25 s. A `duration_s` that is not a positive number, or a host smaller than one
    /// 4 MiB guest, gives a workload with no guests.
    pub fn default_churn(host_bytes: u64, duration_s: f64, seed: u64, traces_dir: Option<&Path>) -> Workload {
        let (dist, from_file) = azure_v1::load(traces_dir);
        let origin = if from_file { "" } else { "built-in table derived from " };
        let source = format!(
            "default churn: memory sizes and lifetimes of {origin}{} ({})",
            azure_v1::DEV_FILE,
            TraceFormat::AzureV1Decoded.citation()
        );
        let (memory_scale, time_scale) = churn::factors(&dist, host_bytes);
        let valid = duration_s.is_finite() && duration_s > 0.0 && host_bytes >= MIN_GUEST_BYTES;
        if !valid {
            return Workload { guests: Vec::new(), memory_scale, time_scale, source, duration_s };
        }
        let (guests, memory_scale, time_scale) = churn::generate(&dist, host_bytes, duration_s, seed);
        Workload { guests, memory_scale, time_scale, source, duration_s }
    }

    /// Replays a trace file (format detected from its header), scaled to the host.
    ///
    /// `seed` places Azure V1 decoded VMs within their 300 s arrival bins and lifetime bins;
    /// the other formats have exact times and do not use it. How the trace is windowed and
    /// scaled is in the module documentation.
    pub fn from_trace(path: &Path, host_bytes: u64, duration_s: f64, seed: u64) -> Result<Workload, WorkloadError> {
        if !(duration_s.is_finite() && duration_s > 0.0) {
            return Err(WorkloadError::BadDuration(duration_s));
        }
        let target = TRACE_PEAK_SHARE * host_bytes as f64;
        if target < MIN_GUEST_BYTES as f64 {
            return Err(WorkloadError::HostTooSmall(host_bytes));
        }
        let mut trace = formats::read_trace(path, seed)?;
        let total = trace.guests.len();
        let n = window_guests(host_bytes, duration_s).min(total);
        let last = trace.guests[n - 1].arrival_s;
        let window_end = trace.guests[n..].iter().map(|g| g.arrival_s).find(|&a| a > last).unwrap_or(trace.end_s);
        trace.guests.truncate(n);
        let start = trace.start_s;
        let mut span = window_end - start;
        if span.is_nan() || span <= 0.0 {
            // Everything arrives at one instant and ends there: let the longest life fill the run.
            span = trace.guests.iter().map(|g| g.lifetime_s).fold(0.0, f64::max);
        }
        let time_scale = if span > 0.0 { duration_s / span } else { 1.0 };

        let memory_scale = memory_factor(&trace.guests, target);
        let bytes: Vec<u64> = trace.guests.iter().map(|g| guest_bytes(g.bytes * memory_scale)).collect();

        let mut tenants: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
        let guests = trace
            .guests
            .iter()
            .zip(bytes)
            .enumerate()
            .map(|(i, (g, memory_bytes))| {
                let id = i as u64;
                let tenant = match g.tenant {
                    Some(t) => {
                        let next = tenants.len() as u64;
                        *tenants.entry(t).or_insert(next)
                    }
                    None => id,
                };
                GuestSpec {
                    id,
                    arrival_s: ((g.arrival_s - start) * time_scale).max(0.0),
                    lifetime_s: g.lifetime_s * time_scale,
                    memory_bytes,
                    tenant,
                }
            })
            .collect();

        let name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let shown = match (trace.format, path.parent().and_then(|p| p.file_name())) {
            (TraceFormat::AzureV1Decoded, Some(dir)) => format!("{}/{name}", dir.to_string_lossy()),
            _ => name,
        };
        let skipped = match trace.skipped {
            Some((k, why)) if k > 0 => format!("; {k} rows skipped ({why})"),
            _ => String::new(),
        };
        let source = format!(
            "{shown} ({}); first {n} of {total} guests, trace time {start:.0} s to {window_end:.0} s{skipped}",
            trace.format.citation()
        );
        Ok(Workload { guests, memory_scale, time_scale, source, duration_s })
    }

    /// Peak of the sum of memory_bytes of guests alive at once (after scaling).
    ///
    /// A guest is alive over `[arrival_s, arrival_s + lifetime_s]`; one arriving when
    /// another leaves counts with it.
    pub fn peak_bytes(&self) -> u64 {
        let ev = events(self.guests.iter().map(|g| (g.arrival_s, g.lifetime_s)));
        let bytes: Vec<u64> = self.guests.iter().map(|g| g.memory_bytes).collect();
        peak(&ev, &bytes)
    }
}

impl fmt::Display for Workload {
    /// One line: guests, scale factors, peak and source.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: f64 = (1u64 << 20) as f64;
        write!(
            f,
            "{} guests over {:.1} s, memory scale {:.3e} (1 trace GiB -> {:.1} MiB), time scale {:.3e} \
             (1 trace hour -> {:.3} s), peak {:.0} MiB; from {}",
            self.guests.len(),
            self.duration_s,
            self.memory_scale,
            self.memory_scale * 1024.0,
            self.time_scale,
            self.time_scale * 3600.0,
            self.peak_bytes() as f64 / MIB,
            self.source
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::PAGE_BYTES;
    use crate::test_support::traces_dir;

    #[test]
    fn guest_sizes_are_rounded_up_to_pages_and_the_minimum() {
        assert_eq!(guest_bytes(0.0), MIN_GUEST_BYTES);
        assert_eq!(guest_bytes(f64::NAN), MIN_GUEST_BYTES);
        assert_eq!(guest_bytes(-5.0), MIN_GUEST_BYTES);
        assert_eq!(guest_bytes(4.0 * 1048576.0 + 1.0), (4 << 20) + 4096);
        assert_eq!(guest_bytes((64u64 << 20) as f64), 64 << 20);
    }

    #[test]
    fn peak_counts_guests_that_meet() {
        let g =
            |id, arrival_s, lifetime_s, memory_bytes| GuestSpec { id, arrival_s, lifetime_s, memory_bytes, tenant: id };
        let w = Workload {
            guests: vec![g(0, 0.0, 1.0, 10), g(1, 1.0, 1.0, 20), g(2, 3.0, 1.0, 5)],
            memory_scale: 1.0,
            time_scale: 1.0,
            source: String::new(),
            duration_s: 4.0,
        };
        assert_eq!(w.peak_bytes(), 30);
        assert_eq!(Workload { guests: vec![], ..w }.peak_bytes(), 0);
    }

    #[test]
    fn window_is_ten_guests_a_second_and_one_per_16_mib() {
        assert_eq!(window_guests(4 << 30, 25.0), 250);
        assert_eq!(window_guests(1 << 30, 25.0), 64);
        assert_eq!(window_guests(1 << 20, 0.01), 1);
    }

    #[test]
    fn default_churn_without_traces_fills_the_host_with_a_mix() {
        let host: u64 = 4 << 30;
        let mut big = 0;
        for seed in 0..6 {
            let w = Workload::default_churn(host, 25.0, seed, None);
            assert!(w.source.contains("built-in table derived from azure_v1/decoded_v1_dev.csv"), "{}", w.source);
            assert!((100..=450).contains(&w.guests.len()), "seed {seed}: {} guests", w.guests.len());
            check_sorted_and_sized(&w);
            assert!(w.peak_bytes() as f64 <= churn::CAP * host as f64, "seed {seed}");
            // The large tenant: first, a quarter of the host (one 1 GiB extent here),
            // there from the start for 60% of the run.
            let g0 = &w.guests[0];
            assert_eq!((g0.memory_bytes, g0.arrival_s, g0.lifetime_s), (host / 4, 0.0, 15.0), "seed {seed}");
            // Occupancy sampled every 0.1 s over the run.
            let occ: Vec<f64> = (0..=250)
                .map(|k| {
                    let t = k as f64 / 10.0;
                    let b: u64 = w
                        .guests
                        .iter()
                        .filter(|g| g.arrival_s <= t && t < g.arrival_s + g.lifetime_s)
                        .map(|g| g.memory_bytes)
                        .sum();
                    b as f64 / host as f64
                })
                .collect();
            let mean = occ.iter().sum::<f64>() / occ.len() as f64;
            assert!((0.6..=0.8).contains(&mean), "seed {seed}: mean occupancy {mean}");
            assert!(occ.iter().all(|&o| o > 0.45), "seed {seed}: {occ:?}");
            let small = w.guests.iter().filter(|g| g.memory_bytes <= 16 << 20).count();
            assert!(small * 2 > w.guests.len(), "seed {seed}: most guests are small");
            assert!(w.guests.iter().any(|g| g.memory_bytes >= 128 << 20), "seed {seed}");
            big += w.guests.iter().filter(|g| g.memory_bytes >= 256 << 20).count();
            assert!(w.guests.iter().any(|g| g.arrival_s == 0.0) && w.guests.iter().any(|g| g.arrival_s > 20.0));
            assert!(w.guests.iter().filter(|g| g.arrival_s + g.lifetime_s < 25.0).count() > 100, "churn");
        }
        assert!(big > 0, "some guests of 256 MiB to 1 GiB");
    }

    #[test]
    fn default_churn_is_determined_by_its_seed() {
        let a = Workload::default_churn(1 << 30, 10.0, 42, None);
        assert_eq!(a, Workload::default_churn(1 << 30, 10.0, 42, None));
        assert_ne!(a.guests, Workload::default_churn(1 << 30, 10.0, 43, None).guests);
        let missing = Path::new("/nonexistent/traces");
        assert_eq!(a, Workload::default_churn(1 << 30, 10.0, 42, Some(missing)));
    }

    #[test]
    fn default_churn_from_the_trace_equals_the_built_in_one() {
        let Some(dir) = traces_dir() else { return };
        let from_file = Workload::default_churn(4 << 30, 25.0, 9, Some(&dir));
        let built_in = Workload::default_churn(4 << 30, 25.0, 9, None);
        assert_eq!(from_file.guests, built_in.guests);
        assert!(!from_file.source.contains("built-in"));
    }

    #[test]
    fn default_churn_degenerate_arguments_give_no_guests() {
        assert!(Workload::default_churn(4 << 30, 0.0, 1, None).guests.is_empty());
        assert!(Workload::default_churn(4 << 30, f64::NAN, 1, None).guests.is_empty());
        assert!(Workload::default_churn(1 << 20, 10.0, 1, None).guests.is_empty());
        let tiny = Workload::default_churn(64 << 20, 10.0, 1, None);
        assert!(!tiny.guests.is_empty());
        assert!(tiny.peak_bytes() <= 64 << 20);
    }

    pub(crate) fn check_sorted_and_sized(w: &Workload) {
        assert!(w.guests.windows(2).all(|g| g[0].arrival_s <= g[1].arrival_s), "sorted by arrival");
        for (i, g) in w.guests.iter().enumerate() {
            assert_eq!(g.id, i as u64);
            assert!(g.memory_bytes >= MIN_GUEST_BYTES && g.memory_bytes % PAGE_BYTES == 0, "{g:?}");
            assert!(g.arrival_s >= 0.0 && g.arrival_s <= w.duration_s && g.lifetime_s >= 0.0, "{g:?}");
        }
    }
}
