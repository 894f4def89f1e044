//! Host presets: the hardware a simulation runs on. Every parameter of a built-in preset
//! has its source (or says it is an assumption) in `docs/sim-presets.md`. One parameter
//! set per preset, the same for every policy.

use serde::{Deserialize, Serialize};

/// Bytes in a GiB.
pub const GIB: u64 = 1 << 30;
/// Bytes in a MiB.
pub const MIB: u64 = 1 << 20;
/// The page size whose per-page costs the presets give (a 4 KiB x86 page), whatever the
/// simulated frame size.
pub const PAGE: u64 = 4096;

/// A host: topology, bandwidths and the per-operation costs of the modelled hypervisor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostPreset {
    /// Preset name (`xen-2017`, `epyc-2s-4t`, or a user's own).
    pub name: String,
    /// One line on what host this is.
    pub description: String,
    /// Bytes per simulated frame (4096 unless 4 KiB metadata would not fit in memory).
    pub frame_size: u64,
    /// NUMA nodes.
    pub nodes: usize,
    /// Sockets; nodes are split evenly across them, in order.
    pub sockets: usize,
    /// CPUs (cores) per node.
    pub cpus_per_node: usize,
    /// Memory per node, GiB.
    pub node_gib: u64,
    /// Zeroing bandwidth of one core writing its own node's memory, GB/s (1e9 bytes).
    pub core_zero_gbps: f64,
    /// Zeroing bandwidth of one node's memory, shared by every CPU writing it, GB/s.
    pub node_zero_gbps: f64,
    /// Divisor of a core's bandwidth when it writes another node of its socket.
    pub remote_penalty: f64,
    /// Divisor of a core's bandwidth when it writes a node of another socket.
    pub socket_penalty: f64,
    /// CPU time to relinquish one teardown entry (a 4 KiB page for page-granular
    /// teardown, an extent for extent-granular), outside the heap lock, ns.
    pub relinquish_ns: u64,
    /// Heap-lock hold time of one acquisition, ns (a free or allocation's list work).
    pub lock_hold_ns: u64,
    /// Fixed CPU cost of one heap call from a toolstack (hypercall entry, p2m update), ns.
    pub op_ns: u64,
    /// Bytes zeroed between two preemption checks by scrubbers and preemptible tickets.
    pub scrub_batch_bytes: u64,
    /// Watchdog timeout on one non-preemptible section, seconds.
    pub watchdog_s: f64,
}

impl HostPreset {
    /// The built-in presets, by name.
    pub fn builtin(name: &str) -> Option<HostPreset> {
        match name {
            "xen-2017" => Some(Self::xen_2017()),
            "epyc-2s-4t" => Some(Self::epyc_2s_4t()),
            "tiny" => Some(Self::tiny()),
            _ => None,
        }
    }

    /// Names of the built-in presets.
    pub const NAMES: [&'static str; 3] = ["xen-2017", "epyc-2s-4t", "tiny"];

    /// The 1 TB-guest host of the 2017 "Memory scrubbing from idle loop" work, modelled as
    /// an 8-socket Xeon E7 v2 class host (see `docs/sim-presets.md`).
    pub fn xen_2017() -> HostPreset {
        HostPreset {
            name: "xen-2017".into(),
            description: "8-socket Xeon E7 v2 class host, 1088 GiB (a 1 TiB guest plus 64 GiB for Xen and dom0)".into(),
            frame_size: 4096,
            nodes: 8,
            sockets: 8,
            cpus_per_node: 15,
            node_gib: 136,
            core_zero_gbps: 3.4,
            node_zero_gbps: 3.3,
            remote_penalty: 2.0,
            socket_penalty: 2.0,
            relinquish_ns: 150,
            lock_hold_ns: 74,
            op_ns: 500,
            scrub_batch_bytes: MIB,
            watchdog_s: 5.0,
        }
    }

    /// A current two-socket host with 8 NUMA nodes and 4 TiB: 2x AMD EPYC 9654 (96 cores,
    /// 12 channels of DDR5-4800 each) in NPS4 mode. Simulated with 16 KiB frames.
    pub fn epyc_2s_4t() -> HostPreset {
        HostPreset {
            name: "epyc-2s-4t".into(),
            description: "2x AMD EPYC 9654 (NPS4: 8 nodes of 24 cores), 4 TiB DDR5-4800".into(),
            frame_size: 16384,
            nodes: 8,
            sockets: 2,
            cpus_per_node: 24,
            node_gib: 512,
            core_zero_gbps: 12.0,
            node_zero_gbps: 70.0,
            remote_penalty: 1.2,
            socket_penalty: 1.6,
            relinquish_ns: 150,
            lock_hold_ns: 74,
            op_ns: 500,
            scrub_batch_bytes: MIB,
            watchdog_s: 5.0,
        }
    }

    /// A small host for tests and quick looks: 2 nodes of 1 GiB, 4 CPUs each.
    pub fn tiny() -> HostPreset {
        HostPreset {
            name: "tiny".into(),
            description: "2 nodes of 1 GiB, 4 CPUs each (tests)".into(),
            frame_size: 4096,
            nodes: 2,
            sockets: 1,
            cpus_per_node: 4,
            node_gib: 1,
            core_zero_gbps: 4.0,
            node_zero_gbps: 8.0,
            remote_penalty: 1.5,
            socket_penalty: 2.0,
            relinquish_ns: 150,
            lock_hold_ns: 74,
            op_ns: 500,
            scrub_batch_bytes: MIB,
            watchdog_s: 5.0,
        }
    }

    /// Frames per node.
    pub fn frames_per_node(&self) -> u64 {
        self.node_gib * GIB / self.frame_size
    }

    /// All memory, bytes.
    pub fn total_bytes(&self) -> u64 {
        self.node_gib * GIB * self.nodes as u64
    }

    /// Frames zeroed between preemption checks.
    pub fn scrub_batch_frames(&self) -> u64 {
        (self.scrub_batch_bytes / self.frame_size).max(1)
    }

    /// The socket of `node`.
    pub fn socket_of(&self, node: usize) -> usize {
        node / (self.nodes / self.sockets).max(1)
    }

    /// Divisor of a core's bandwidth when a CPU of node `cpu` writes node `mem`.
    pub fn penalty(&self, cpu: usize, mem: usize) -> f64 {
        if cpu == mem {
            1.0
        } else if self.socket_of(cpu) == self.socket_of(mem) {
            self.remote_penalty
        } else {
            self.socket_penalty
        }
    }

    /// ACPI-SLIT-style distance used for the heap's nearest-node order (10 = local).
    pub fn distance(&self, a: usize, b: usize) -> u32 {
        (self.penalty(a, b) * 10.0).round() as u32
    }

    /// Aggregate background scrub bandwidth when every CPU of every node zeroes its own
    /// node, bytes/s: the sum over nodes of min(node bandwidth, CPUs x core bandwidth).
    pub fn aggregate_scrub_bps(&self, cpus_per_node: usize) -> f64 {
        let per_node = (self.core_zero_gbps * cpus_per_node as f64).min(self.node_zero_gbps);
        per_node * 1e9 * self.nodes as f64
    }

    /// Checks that the preset describes a host the simulator can run.
    pub fn validate(&self) -> Result<(), String> {
        let err = |m: String| Err(format!("preset '{}': {m}", self.name));
        if !self.frame_size.is_power_of_two() || self.frame_size < PAGE {
            return err(format!("frame_size {} must be a power of two of at least 4096", self.frame_size));
        }
        if self.nodes == 0 || self.sockets == 0 || self.nodes % self.sockets != 0 {
            return err(format!("{} nodes cannot be split evenly over {} sockets", self.nodes, self.sockets));
        }
        if self.cpus_per_node == 0 || self.node_gib == 0 {
            return err("cpus_per_node and node_gib must be at least 1".into());
        }
        let frames = self.frames_per_node();
        if frames >= u32::MAX as u64 {
            return err(format!("{frames} frames per node is too many: use a larger frame_size"));
        }
        for (what, v) in [
            ("core_zero_gbps", self.core_zero_gbps),
            ("node_zero_gbps", self.node_zero_gbps),
            ("remote_penalty", self.remote_penalty),
            ("socket_penalty", self.socket_penalty),
            ("watchdog_s", self.watchdog_s),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return err(format!("{what} must be a positive number, not {v}"));
            }
        }
        if self.remote_penalty < 1.0 || self.socket_penalty < 1.0 {
            return err("remote penalties are divisors of bandwidth and must be at least 1".into());
        }
        if self.scrub_batch_bytes < self.frame_size {
            return err(format!("scrub_batch_bytes must be at least one frame ({} bytes)", self.frame_size));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_validate() {
        for n in HostPreset::NAMES {
            HostPreset::builtin(n).unwrap().validate().unwrap();
        }
        assert!(HostPreset::builtin("nope").is_none());
    }

    #[test]
    fn xen_2017_reproduces_its_boot_scrub_sources() {
        // One CPU zeroing all 8 sockets: 1/8 local, 7/8 remote (Crossley's 1.83 GB/s).
        let p = HostPreset::xen_2017();
        let local = p.core_zero_gbps.min(p.node_zero_gbps);
        let remote = p.core_zero_gbps / p.socket_penalty;
        let avg = 1.0 / (0.125 / local + 0.875 / remote);
        assert!((avg - 1.83).abs() < 0.05, "{avg}");
        // Every core of every socket: 8 x node bandwidth (1.5 TiB in 63 s = 26 GB/s).
        let all = p.aggregate_scrub_bps(p.cpus_per_node) / 1e9;
        assert!((all - 26.2).abs() < 1.0, "{all}");
    }
}
