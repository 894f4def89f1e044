//! Workloads: which guests arrive when, with how much memory, for how long, read from the
//! public traces of `../shared/traces`. This crate is the ONE reader of every trace format
//! and the one churn generator: the host runtime, the simulator (`scrubheap sim --scenario
//! trace`) and the VMM all take their guests from here, so a trace means the same thing to
//! each of them.
//!
//! - [`read_trace`]: a trace file in trace units (seconds, bytes), guests sorted by arrival;
//!   the simulator scales this itself (to a fill share of a modelled host).
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
//! # One set of rules for Azure V1 decoded files
//! The simulator and the host used to read `decoded_v1_*.csv` with different rules; these
//! are the ones every reader now follows, and why:
//! - **Columns by name**, from the header, never by position: the files are produced by a
//!   third-party decoder and a reordered or extra column must not silently shift every
//!   field. A missing required column is refused as an unknown format.
//! - **`censored` is `0` or `1`**; anything else is an error naming the line: the column is
//!   a flag, and a `2` or `yes` means the file is not what we think it is.
//! - **A censored VM lives to its duration bin's upper edge**, like the default churn's
//!   distribution: it was still running when the trace ended, so its true lifetime is
//!   unknown but at least its bin's; taking the upper edge keeps every lifetime finite, so
//!   every guest is destroyed and its memory reused (the old simulator rule kept censored
//!   VMs to the end of the run, which inflated the trace's peak with VMs that would have
//!   left).
//! - **Reversed bin edges (`dur_bin_hi_s < dur_bin_lo_s`) are an error** naming the line:
//!   no file of the dataset has one, and silently using the lower edge would hide a corrupt
//!   row.
//! - **The seed is the caller's `seed`, unchanged**: the same `--seed` places the same VM at
//!   the same instant in `run --trace` and in `sim --scenario trace`. (The simulator xored
//!   it with a constant to separate it from its other random streams; the trace scenario has
//!   no other stream.)
//! - A VM arrives uniformly within its 300 s bin (`arrival_bin_end_s` is the bin's end) and
//!   lives uniformly within `[dur_bin_lo_s, dur_bin_hi_s]`; bin `[0, 0]` (seen in one 300 s
//!   sample) is read as `[0, 300]`.
//!
//! # Formats
//! - Azure V1 decoded: the rules above; VMs of one
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
//! (`cargo test -p scrubheap-workload --release --test traces summary -- --ignored --nocapture`
//! prints these figures.)
//!
//! ```
//! use scrubheap_workload::Workload;
//! let w = Workload::default_churn(4 << 30, 25.0, 1, None);
//! assert!(w.guests.windows(2).all(|g| g[0].arrival_s <= g[1].arrival_s));
//! assert!(w.peak_bytes() <= 4 << 30);
//! assert_eq!(w, Workload::default_churn(4 << 30, 25.0, 1, None));
//! println!("{w}");
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod azure_v1;
mod bins;
mod churn;
mod error;
mod formats;
mod spec;
#[cfg(test)]
mod test_support;
mod workload;

pub use error::WorkloadError;
pub use formats::{read_trace, RawGuest, Trace, TraceFormat};
pub use spec::{peak_concurrent_bytes, GuestSpec, MIN_GUEST_BYTES, PAGE_BYTES};
pub use workload::{Workload, HOST_BYTES_PER_TRACE_GUEST, TRACE_GUESTS_PER_S, TRACE_PEAK_SHARE};
