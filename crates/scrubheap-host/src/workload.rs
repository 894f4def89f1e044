//! Workloads for the host runtime: which guests arrive when, with how much memory, for how
//! long, scaled from the public traces of `../shared/traces` to one host.
//!
//! - [`Workload::default_churn`]: tenant churn with the memory sizes and lifetimes of Azure
//!   V1 (`azure_v1/decoded_v1_dev.csv`, or a table derived from it when the file is absent),
//!   keeping the host about 70% full.
//! - [`Workload::from_trace`]: replays any trace file of the folder, its format detected from
//!   its header ([`TraceFormat`]).
//!
//! # Scaling a trace to a host
//! As the traces' README asks: arrival order and lifetimes are kept, every memory size is
//! multiplied by one factor and every time by another, and both are reported
//! ([`Workload::memory_scale`], [`Workload::time_scale`]).
//! - Window: the trace's first `N` guests in arrival order (ties in file order), with
//!   `N = 10 x duration_s` (250 for 25 s), at most one per 16 MiB of host (so the 4 MiB
//!   minimum size of `N` guests is at most a quarter of the host), and at most the trace's.
//!   The window runs from the trace's start to the next arrival after its last guest (to
//!   the trace's end when no later guest arrives).
//! - Time: `duration_s / window length`: the window fills the run. Guests that outlive the
//!   run are simply alive at its end; guests alive at the trace's end live to it.
//! - Memory: the largest factor for which the peak of concurrent memory of the window's
//!   guests, after rounding, is at most 75% of the host (found by bisection): the 25%
//!   left is headroom for fragmentation and for the runtime's own timing slack.
//! - Every guest's memory is rounded up to a multiple of 4 KiB and to at least 4 MiB
//!   ([`MIN_GUEST_BYTES`]), so small guests are scaled by a little more than the factor.
//!
//! On a 4 GiB host over 25 s (seed 1), each file gives 250 guests peaking at 3 GiB:
//!
//! | file | memory scale | time scale | trace window | destroyed in the run |
//! |---|---|---|---|---|
//! | `azure_v1/decoded_v1_dev.csv` | 4.4e-3 | 0.125 | 200 s | 11 |
//! | `azure_v1/decoded_v1_test.csv` | 2.4e-3 | 0.054 | 464 s | 5 |
//! | `azure_packing2020_machine16_first5000.csv` | 4.4e-4 | 2.27 | 11 s | 0 |
//! | `azure_v1_filtered_vmtables_50.csv` | 6.9e-3 | 9.6e-6 | 30 days (all arrive at 0) | 142 |
//! | `alibaba_gpu2023_openb_pod_list_default.csv` | 2.1e-3 | 2.5e-6 | 117 days | 215 |
//!
//! The traces' lifetimes are long against their arrival rates, so a replay mostly fills
//! the host; the default churn is the workload that recycles memory all through the run.
//!
//! # Formats
//! - Azure V1 decoded: a VM arrives uniformly within its 300 s bin (`arrival_bin_end_s` is
//!   the bin's end) and lives uniformly within `[dur_bin_lo_s, dur_bin_hi_s]`, both drawn
//!   with the seed; a censored VM (still running at the trace end) lives to its bin's upper
//!   edge; bin `[0, 0]` (seen in one 300 s sample) is read as `[0, 300]`. VMs of one
//!   `batch_idx` in one bin share a tenant. Memory `mem_gb` is GiB.
//! - Azure Packing 2020: days; `memory` is a fraction of a type-16 machine, taken as
//!   562.5 GiB (the size that makes every fraction of the type table an Azure VM size:
//!   1/750 is 0.75 GiB, 0.11378 is 64 GiB); a row without it is looked up by `vmTypeId` in
//!   `azure_packing2020_vmtype_machine16.csv` beside the file. An empty `endtime` (alive at
//!   the end) lives to the latest time in the file.
//! - Azure V1 vmtable: seconds, `vmmemory` in GiB; the header repeated mid-file is skipped.
//! - Alibaba GPU 2023 pods: seconds, `memory_mib`; a pod holds memory from `scheduled_time`
//!   to `deletion_time`; pods never scheduled (Pending, no `scheduled_time`) are skipped.
//! - The type table and the node list are recognised and refused with the file to use.
//!
//! # The default churn
//! For a host of `H` bytes and a run of `D` seconds:
//! - Memory: one factor, `H / (4 x largest flavour)`, so the largest Azure V1 flavour
//!   (112 GiB) is a quarter of the host: on 4 GiB, 0.75 GiB VMs become ~7 MiB guests,
//!   1.75 GiB ~16 MiB, 14 GiB 128 MiB, 56 GiB 512 MiB and 112 GiB 1 GiB. Each size is then
//!   rounded up to 4 KiB and to at least 4 MiB.
//! - Arrivals: a Poisson stream at a base rate of 8 guests/s, thinned by
//!   the host's occupancy the way a cluster scheduler steers demand to hosts with room:
//!   the rate doubles for every 5 points of occupancy below 70% and halves for every
//!   5 points above (within 1/8x to 8x), and a guest that would take the host past 85%
//!   is placed elsewhere (left out).
//! - Time: one factor on lifetimes, chosen by Little's law so the base rate times the mean
//!   scaled lifetime times the mean guest size is 70% of `H`: on 4 GiB that is
//!   ~7.3e-4 run seconds per trace second (a 300 s VM lives 0.22 s, an hour 2.6 s, a day 63 s).
//! - The run starts in steady state: the stream is simulated from one longest lifetime
//!   before 0, and the guests still alive at 0 arrive at 0 with what remains of their lives.
//! - One large tenant: a guest of the largest flavour (a quarter of `H`, one 1 GiB extent
//!   on 4 GiB) is on the host from the start (it is created first) and lives for 60% of
//!   the run. It is built on whatever memory the host booted with and, as a guest of at
//!   least `H / 8`, reboots midway on its own dirty memory: the case that trips
//!   hypervisor watchdogs. The stream's occupancy counts it.
//!
//! On a 4 GiB host over 25 s (seeds 0 to 9) that is 250 to 360 guests, 60 to 100 of them at 0
//! and 170 to 280 destroyed within the run; the arena is 58-85% full, 68-74% on average; 60%
//! of the guests are 16 MiB, a few 7 MiB, a tenth 128 MiB and one to three 512 MiB or 1 GiB.
//! (`cargo test -p scrubheap-host --release --test workload summary -- --ignored --nocapture`
//! prints these figures.)
//!
//! ```
//! use scrubheap_host::workload::Workload;
//! let w = Workload::default_churn(4 << 30, 25.0, 1, None);
//! assert!(w.guests.windows(2).all(|g| g[0].arrival_s <= g[1].arrival_s));
//! assert!(w.peak_bytes() <= 4 << 30);
//! assert_eq!(w, Workload::default_churn(4 << 30, 25.0, 1, None));
//! println!("{w}");
//! ```

mod azure_v1;
mod churn;
mod formats;

use std::fmt;
use std::path::{Path, PathBuf};

/// The smallest guest: sizes are rounded up to this.
pub const MIN_GUEST_BYTES: u64 = 4 << 20;
/// Guest sizes are multiples of this.
pub const PAGE_BYTES: u64 = 4 << 10;
/// Share of the host a replayed trace's peak concurrent memory is scaled to.
pub const TRACE_PEAK_SHARE: f64 = 0.75;
/// Guests a replayed trace's window holds per second of run.
pub const TRACE_GUESTS_PER_S: f64 = 10.0;
/// A replayed trace's window holds at most one guest per this many bytes of host.
pub const HOST_BYTES_PER_TRACE_GUEST: u64 = 16 << 20;

/// One guest of a workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuestSpec {
    /// Its index in [`Workload::guests`].
    pub id: u64,
    /// Run seconds from the start of the run.
    pub arrival_s: f64,
    /// Run seconds it lives; it may outlive the run.
    pub lifetime_s: f64,
    /// Memory, a multiple of 4 KiB and at least 4 MiB.
    pub memory_bytes: u64,
    /// Its tenant: guests the trace says came from one tenant share one (Azure V1 decoded
    /// batches, packing `tenantId`); otherwise each guest is its own tenant (`tenant == id`).
    pub tenant: u64,
}

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

/// The trace formats [`Workload::from_trace`] reads, told apart by their header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TraceFormat {
    /// `azure_v1/decoded_v1_{dev,test}.csv`: Azure V1 VMs with flavour memory, arrival in a
    /// 300 s bin, lifetime in a bin (`arrival_bin_end_s,batch_idx,...,dur_bin_hi_s`).
    AzureV1Decoded,
    /// `azure_packing2020_machine16_first5000.csv`: times in days, memory as a fraction of a
    /// machine of type 16 (assumed 562.5 GiB), its VM type table beside it.
    AzurePacking2020,
    /// `azure_v1_filtered_vmtables_50.csv`: raw Azure V1 `vmtable` rows, seconds and GiB.
    AzureV1Vmtable,
    /// `alibaba_gpu2023_openb_pod_list_default.csv`: Kubernetes pods, seconds and MiB.
    AlibabaGpu2023,
}

impl TraceFormat {
    /// The format a header line names, if any.
    ///
    /// ```
    /// use scrubheap_host::workload::TraceFormat;
    /// let h = "vmId,vmTypeId,priority,starttime,endtime,core,memory,machineId";
    /// assert_eq!(TraceFormat::detect(h), Some(TraceFormat::AzurePacking2020));
    /// assert_eq!(TraceFormat::detect("vmTypeId,core,memory"), None); // a type table, not VMs
    /// ```
    pub fn detect(header: &str) -> Option<TraceFormat> {
        match formats::detect(header) {
            formats::Kind::Workload(f) => Some(f),
            _ => None,
        }
    }

    /// The dataset and its licence, for the [`Workload::source`] line.
    pub fn citation(self) -> &'static str {
        match self {
            TraceFormat::AzureV1Decoded => {
                "Azure Public Dataset V1, CC BY 4.0; flavours and lifetime bins by huaweicloud/trace_generation_rnn"
            }
            TraceFormat::AzurePacking2020 => {
                "Azure Packing Trace 2020, CC BY 4.0; memory as a fraction of a type-16 machine, assumed 562.5 GiB"
            }
            TraceFormat::AzureV1Vmtable => "Azure Public Dataset V1 vmtable, CC BY 4.0",
            TraceFormat::AlibabaGpu2023 => {
                "Alibaba clusterdata GPU trace 2023 (Weng et al., ATC 2023), licence in alibaba_gpu2023_README.md"
            }
        }
    }
}

impl fmt::Display for TraceFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TraceFormat::AzureV1Decoded => "Azure V1 decoded",
            TraceFormat::AzurePacking2020 => "Azure Packing 2020",
            TraceFormat::AzureV1Vmtable => "Azure V1 vmtable",
            TraceFormat::AlibabaGpu2023 => "Alibaba GPU 2023",
        })
    }
}

/// Why a trace cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The file does not exist.
    #[error("trace file {} does not exist", path.display())]
    NotFound {
        /// The file asked for.
        path: PathBuf,
    },
    /// The file exists but cannot be read as text.
    #[error("cannot read trace file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The header is none of the known formats.
    #[error(
        "{}: unknown trace format (header `{header}`); expected the header of an Azure V1 decoded, \
         Azure Packing 2020, Azure V1 vmtable or Alibaba GPU 2023 pod file (see the traces README)",
        path.display()
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// Its first line (cut at 120 characters).
        header: String,
    },
    /// The file is a companion table of a trace, not a list of guests.
    #[error("{} is {what}, not a workload: replay {instead}", path.display())]
    NotAWorkload {
        /// The file.
        path: PathBuf,
        /// What it is.
        what: &'static str,
        /// The file to replay instead.
        instead: &'static str,
    },
    /// A data line cannot be read.
    #[error("{}:{line}: column `{column}`: {problem}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number (the header is line 1).
        line: usize,
        /// The column's name in the header.
        column: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Nothing to replay.
    #[error("{}: no guests in the trace: {why}", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The run duration is not a positive number of seconds.
    #[error("the run duration must be a positive number of seconds, not {0}")]
    BadDuration(f64),
    /// The host cannot hold even one guest at the trace's share of it.
    #[error(
        "a host of {0} bytes is too small to replay a trace: guests are at least 4 MiB and a trace is scaled to 75% of the host"
    )]
    HostTooSmall(u64),
}

/// A guest's size on the host from its scaled size: up to 4 KiB, at least 4 MiB.
pub(crate) fn guest_bytes(scaled: f64) -> u64 {
    let pages = (scaled / PAGE_BYTES as f64).ceil();
    // `as` saturates: a NaN or negative size becomes 0 pages, then the minimum.
    (pages as u64).saturating_mul(PAGE_BYTES).max(MIN_GUEST_BYTES)
}

/// Peak of concurrent memory: arrivals before departures at equal times, so guests that
/// meet are counted together (the runtime may create before it destroys).
fn peak(events: &[(f64, bool, usize)], bytes: &[u64]) -> u64 {
    let (mut now, mut max) = (0u64, 0u64);
    for &(_, arrive, i) in events {
        if arrive {
            now = now.saturating_add(bytes[i]);
            max = max.max(now);
        } else {
            // Saturating: a guest built with a negative lifetime leaves before it arrives.
            now = now.saturating_sub(bytes[i]);
        }
    }
    max
}

/// Arrival and departure events of guests (arrival, lifetime), ordered for [`peak`].
fn events(spans: impl Iterator<Item = (f64, f64)>) -> Vec<(f64, bool, usize)> {
    let mut ev: Vec<(f64, bool, usize)> = Vec::new();
    for (i, (a, l)) in spans.enumerate() {
        ev.push((a, true, i));
        ev.push((a + l, false, i));
    }
    ev.sort_by(|x, y| x.0.total_cmp(&y.0).then(y.1.cmp(&x.1)));
    ev
}

/// Guests in a replay's window for this host and run.
fn window_guests(host_bytes: u64, duration_s: f64) -> usize {
    let by_time = (TRACE_GUESTS_PER_S * duration_s).round().max(1.0);
    let by_host = (host_bytes / HOST_BYTES_PER_TRACE_GUEST).max(1) as f64;
    by_time.min(by_host) as usize
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
        let text = formats::read(path)?;
        let mut trace = formats::parse(path, &text, seed)?;
        drop(text);
        let total = trace.guests.len();
        trace.guests.sort_by(|a, b| a.arrival_s.total_cmp(&b.arrival_s));
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

        let ev = events(trace.guests.iter().map(|g| (g.arrival_s, g.lifetime_s)));
        let sizes = |m: f64| -> Vec<u64> { trace.guests.iter().map(|g| guest_bytes(g.bytes * m)).collect() };
        let raw_peak = {
            let raw: Vec<u64> = trace.guests.iter().map(|g| g.bytes.ceil() as u64).collect();
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
        let memory_scale = lo;
        let bytes = sizes(memory_scale);

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
pub(crate) mod tests {
    use super::*;

    /// The traces folder (`SCRUBHEAP_TRACES`, else `../shared/traces` beside the repository),
    /// or `None` with a message when it is absent.
    pub(crate) fn traces_dir() -> Option<PathBuf> {
        let dir = std::env::var_os("SCRUBHEAP_TRACES")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/traces"));
        if dir.join("README.md").is_file() {
            Some(dir)
        } else {
            println!("skipped: no traces folder at {}", dir.display());
            None
        }
    }

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
