//! scrubheap-sim: a deterministic discrete-event simulator that drives the real
//! [`scrubheap`] heap at terabyte scale (DESIGN section 5).
//!
//! CPUs are actors on a virtual nanosecond clock. Each step an actor takes is one call
//! into the heap; the heap's [`scrubheap::FrameMemory`] here writes nothing and logs what
//! it was asked to zero, and the engine charges that, the heap locks the call took and
//! its fixed costs as modelled time to the actor that made the call. Checkers run beside
//! the heap after every event. The same scenario, policy and seed give byte-identical
//! JSON: no wall-clock figure enters a report.
//!
//! ```
//! use scrubheap::Policy;
//! use scrubheap_sim::{engine, scenario::Scenario};
//! let sc = Scenario::builtin("small", None, 1).unwrap();
//! let run = engine::run(&sc, Policy::Scrubheap, &Default::default()).unwrap();
//! assert_eq!(run.result.invariant_violations, 0);
//! assert_eq!(run.result.watchdog_trips, 0);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod builtin;
pub mod engine;
pub mod hotremove;
pub mod memory;
pub mod pod;
pub mod preset;
pub mod report;
pub mod scenario;
pub mod trace;

pub use builtin::Builtin;
use rayon::prelude::*;
use report::{PolicyRun, SimReport, SweepRow};
use scenario::Scenario;
use scrubheap::Policy;

/// Runs `scenario` under each policy (in parallel, one simulation per thread) and puts
/// the results in policy order. `progress(policy, simulated seconds)` is called now and
/// then from the worker threads.
pub fn simulate(
    scenario: &Scenario,
    policies: &[Policy],
    seed: u64,
    progress: &(dyn Fn(Policy, f64) + Sync),
) -> Result<(SimReport, Vec<PolicyRun>), String> {
    scenario.validate()?;
    let runs: Vec<Result<PolicyRun, String>> = policies
        .par_iter()
        .map(|&p| {
            let cb = |t: f64| progress(p, t);
            let opts = engine::RunOptions { progress: Some(&cb), ..Default::default() };
            engine::run(scenario, p, &opts)
        })
        .collect();
    let runs = runs.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok((report(scenario, seed, &runs), runs))
}

/// The report of `runs` of `scenario`.
pub fn report(scenario: &Scenario, seed: u64, runs: &[PolicyRun]) -> SimReport {
    let h = &scenario.host;
    let mut notes = scenario.notes.clone();
    if h.frame_size != 4096 {
        notes.push(format!(
            "simulated with {} KiB frames (4 KiB metadata for this host would not fit in memory): the smallest extent is one such frame; xen-cap2m's cap stays 2 MiB",
            h.frame_size / 1024,
        ));
    }
    SimReport {
        schema: 1,
        scenario: scenario.name.clone(),
        preset: h.name.clone(),
        seed,
        results: runs.iter().map(|r| r.result.clone()).collect(),
        frame_size: h.frame_size,
        memory_bytes: h.total_bytes(),
        nodes: h.nodes,
        cpus: h.cpus(),
        mechanisms: scenario.mechanisms,
        host: h.clone(),
        notes,
        sweep: Vec::new(),
    }
}

/// A parameter range: `name=a:b:step` or `name=v1,v2,...`. `name` is a host parameter
/// (see [`preset::HostPreset`]) or `builders`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sweep {
    /// The parameter.
    pub param: String,
    /// Its values.
    pub values: Vec<f64>,
}

impl std::str::FromStr for Sweep {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (param, range) =
            s.split_once('=').ok_or_else(|| format!("sweep '{s}': write NAME=START:END:STEP or NAME=V1,V2,..."))?;
        let num = |x: &str| x.trim().parse::<f64>().map_err(|_| format!("sweep '{s}': '{x}' is not a number"));
        let values = if range.contains(':') {
            let p: Vec<&str> = range.split(':').collect();
            if p.len() != 3 {
                return Err(format!("sweep '{s}': a range is START:END:STEP"));
            }
            let (a, b, st) = (num(p[0])?, num(p[1])?, num(p[2])?);
            if st.is_nan() || st <= 0.0 || b < a || (b - a) / st > 1000.0 {
                return Err(format!("sweep '{s}': need START <= END and 1 to 1000 steps of a positive STEP"));
            }
            let n = ((b - a) / st + 1e-9).floor() as usize;
            (0..=n).map(|i| a + st * i as f64).collect()
        } else {
            range.split(',').map(num).collect::<Result<Vec<_>, _>>()?
        };
        if values.is_empty() {
            return Err(format!("sweep '{s}': no values"));
        }
        Ok(Sweep { param: param.trim().to_string(), values })
    }
}

/// `scenario` with `param` set to `value`.
pub fn with_param(scenario: &Scenario, param: &str, value: f64) -> Result<Scenario, String> {
    let mut s = scenario.clone();
    if param == "builders" {
        s.builders = value as usize;
    } else {
        let mut t = toml::Table::new();
        let v = if matches!(
            param,
            "core_zero_gbps"
                | "node_zero_gbps"
                | "remote_penalty"
                | "socket_penalty"
                | "watchdog_s"
                | "guest_traffic_share"
                | "interconnect_gbps"
        ) {
            toml::Value::Float(value)
        } else {
            toml::Value::Integer(value as i64)
        };
        t.insert(param.to_string(), v);
        s.host = scenario::apply_overrides(&s.host, &t)?;
    }
    s.validate()?;
    Ok(s)
}

/// Runs every value of `sweep` under every policy, in parallel (each simulation on one
/// thread), and returns the rows in value order.
pub fn sweep(
    scenario: &Scenario,
    sweep: &Sweep,
    policies: &[Policy],
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Vec<SweepRow>, String> {
    let scenarios =
        sweep.values.iter().map(|&v| with_param(scenario, &sweep.param, v)).collect::<Result<Vec<_>, _>>()?;
    let jobs: Vec<(usize, Policy)> = (0..scenarios.len()).flat_map(|i| policies.iter().map(move |&p| (i, p))).collect();
    let total = jobs.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Result<report::PolicyResult, String>> = jobs
        .par_iter()
        .map(|&(i, p)| {
            let r = engine::run(&scenarios[i], p, &Default::default()).map(|r| r.result);
            progress(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1, total);
            r
        })
        .collect();
    let mut rows: Vec<SweepRow> =
        sweep.values.iter().map(|&v| SweepRow { param: sweep.param.clone(), value: v, results: Vec::new() }).collect();
    for (&(i, _), r) in jobs.iter().zip(results) {
        rows[i].results.push(r?);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_parses() {
        let s: Sweep = "builders=1:3:1".parse().unwrap();
        assert_eq!(s.values, vec![1.0, 2.0, 3.0]);
        let s: Sweep = "node_zero_gbps=5,10".parse().unwrap();
        assert_eq!(s.param, "node_zero_gbps");
        assert!("x".parse::<Sweep>().is_err());
        assert!("x=3:1:1".parse::<Sweep>().is_err());
    }
}
