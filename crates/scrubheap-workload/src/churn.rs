//! The default tenant churn: guests with Azure V1 memory sizes and lifetimes arriving at
//! one host that a cluster scheduler keeps about 70% full, plus one guest of the largest
//! size that is there from the start and lives for 60% of the run.
//!
//! How it is built is documented on the parent module (`# The default churn`).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::azure_v1::Dist;
use crate::spec::{guest_bytes, GuestSpec};

/// Guests per second the scheduler sends when the host is at [`TARGET`].
pub(crate) const BASE_RATE: f64 = 8.0;
/// Occupancy the scheduler aims at.
pub(crate) const TARGET: f64 = 0.70;
/// Occupancy no arrival may take the host past.
pub(crate) const CAP: f64 = 0.85;
/// Occupancy change that doubles or halves the arrival rate.
const RATE_STEP: f64 = 0.05;
/// Bound on the rate multiplier, both ways.
const RATE_MAX: f64 = 8.0;
/// Bound on the guests of one workload.
pub(crate) const MAX_GUESTS: usize = 1_000_000;

/// A departure in the occupancy simulation: (end time, bytes), ordered by time.
#[derive(PartialEq)]
struct Departure(f64, u64);
impl Eq for Departure {}
impl PartialOrd for Departure {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Departure {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// The churn's scale factors for a host: (memory scale, time scale).
pub(crate) fn factors(dist: &Dist, host_bytes: u64) -> (f64, f64) {
    let memory_scale = host_bytes as f64 / (4.0 * dist.max_mem_bytes().max(1) as f64);
    let mean_bytes = dist.mean_mem_by(|b| guest_bytes(b * memory_scale));
    let mean_life_run_s = TARGET * host_bytes as f64 / (BASE_RATE * mean_bytes);
    (memory_scale, mean_life_run_s / dist.mean_life())
}

/// Generates the guests of a run of `duration_s` (positive, finite) on `host_bytes`.
pub(crate) fn generate(dist: &Dist, host_bytes: u64, duration_s: f64, seed: u64) -> (Vec<GuestSpec>, f64, f64) {
    let (memory_scale, time_scale) = factors(dist, host_bytes);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let host = host_bytes as f64;
    let max_rate = BASE_RATE * RATE_MAX;
    let mut t = -dist.max_life() * time_scale;
    let mut alive: BinaryHeap<Reverse<Departure>> = BinaryHeap::new();
    let mut occupied: u64 = 0;
    let mut guests = Vec::new();
    // One guest of the trace's largest size (a quarter of the host, so it takes a 1 GiB
    // extent on a 4 GiB host) is on the host from the start and lives for 60% of the run:
    // it is built first, on whatever memory the host booted with, and reboots midway on
    // its own dirty memory, the case that trips hypervisor watchdogs.
    let large_bytes = guest_bytes(dist.max_mem_bytes() as f64 * memory_scale);
    let large_life = 0.6 * duration_s;
    occupied += large_bytes;
    alive.push(Reverse(Departure(large_life, large_bytes)));
    while guests.len() < MAX_GUESTS {
        t += -(1.0 - rng.random::<f64>()).ln() / max_rate;
        if t >= duration_s {
            break;
        }
        while alive.peek().is_some_and(|d| d.0 .0 <= t) {
            occupied -= alive.pop().map_or(0, |d| d.0 .1);
        }
        let fill = occupied as f64 / host;
        let rate = 2f64.powf((TARGET - fill) / RATE_STEP).clamp(1.0 / RATE_MAX, RATE_MAX);
        if rng.random::<f64>() * RATE_MAX >= rate {
            continue;
        }
        let bytes = guest_bytes(dist.sample_mem(&mut rng) * memory_scale);
        let life = dist.sample_life(&mut rng) * time_scale;
        if (occupied + bytes) as f64 > CAP * host {
            continue;
        }
        occupied += bytes;
        alive.push(Reverse(Departure(t + life, bytes)));
        let end = t + life;
        if end > 0.0 {
            let arrival_s = t.max(0.0);
            let id = guests.len() as u64;
            guests.push(GuestSpec { id, arrival_s, lifetime_s: end - arrival_s, memory_bytes: bytes, tenant: id });
        }
    }
    guests.insert(0, GuestSpec { id: 0, arrival_s: 0.0, lifetime_s: large_life, memory_bytes: large_bytes, tenant: 0 });
    for (i, g) in guests.iter_mut().enumerate() {
        (g.id, g.tenant) = (i as u64, i as u64);
    }
    (guests, memory_scale, time_scale)
}
