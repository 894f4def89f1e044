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
    /// Share of each node's bandwidth the running guests' own memory traffic takes
    /// (0 to below 1); used when the `guest_traffic` mechanism is on.
    #[serde(default)]
    pub guest_traffic_share: f64,
    /// Heap-lock hold time per 4 KiB page of the page-granular work Xen does under its
    /// global heap lock when it allocates or frees an extent, ns; used when the
    /// `xen_locks` mechanism is on, by the policies with one global heap lock.
    #[serde(default)]
    pub lock_page_ns: u64,
    /// Bandwidth of the interconnect between sockets, shared by every cross-socket
    /// writer, GB/s; used when the `remote` mechanism is on.
    #[serde(default)]
    pub interconnect_gbps: f64,
    /// Nodes with memory and no CPUs (CXL-style memory-only nodes); the heap has the
    /// nearest node with CPUs scrub them.
    #[serde(default)]
    pub cpuless_nodes: Vec<usize>,
}

impl HostPreset {
    /// The built-in presets, by name.
    pub fn builtin(name: &str) -> Option<HostPreset> {
        match name {
            "xen-2017" => Some(Self::xen_2017()),
            "epyc-2s-4t" => Some(Self::epyc_2s_4t()),
            "xenserver-4s" => Some(Self::xenserver_4s()),
            "tiny" => Some(Self::tiny()),
            _ => None,
        }
    }

    /// Names of the built-in presets.
    pub const NAMES: [&'static str; 4] = ["xen-2017", "epyc-2s-4t", "xenserver-4s", "tiny"];

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
            ..Self::xen_costs()
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
            ..Self::xen_costs()
        }
    }

    /// A XenServer-class host of the 2026 watchdog reports: four sockets of Intel Xeon
    /// Platinum 8490H (Sapphire Rapids, 60 cores, 8 channels of DDR5-4800 each), one NUMA
    /// node per socket, 4 TiB, simulated with 4 KiB frames (2^30 of them: the heap's compact
    /// metadata makes that affordable, see `docs/sim-presets.md`). Every mechanism parameter is
    /// set; the scenario's switches say which the engine uses.
    pub fn xenserver_4s() -> HostPreset {
        HostPreset {
            name: "xenserver-4s".into(),
            description: "4x Xeon Platinum 8490H (4 nodes of 60 cores), 4 TiB DDR5-4800, UPI 2.0 full mesh".into(),
            frame_size: 4096,
            nodes: 4,
            sockets: 4,
            cpus_per_node: 60,
            node_gib: 1024,
            core_zero_gbps: 12.0,
            node_zero_gbps: 184.0,
            remote_penalty: 1.6,
            socket_penalty: 1.6,
            guest_traffic_share: 0.3,
            lock_page_ns: 5,
            interconnect_gbps: 192.0,
            ..Self::xen_costs()
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
            ..Self::xen_costs()
        }
    }

    /// What every built-in preset shares: Xen's per-operation costs (relinquish, lock hold,
    /// toolstack op), 1 MiB scrub batches, a 5 s watchdog, and no mechanism (no guest
    /// traffic, no page-granular lock work, no interconnect limit, every node with CPUs).
    /// Only those fields of the result are meant to be used (`..Self::xen_costs()`): each
    /// preset sets its own size, bandwidths and penalties, and a preset of the 2026
    /// reports its mechanisms.
    fn xen_costs() -> HostPreset {
        HostPreset {
            name: String::new(),
            description: String::new(),
            frame_size: PAGE,
            nodes: 1,
            sockets: 1,
            cpus_per_node: 1,
            node_gib: 1,
            core_zero_gbps: 1.0,
            node_zero_gbps: 1.0,
            remote_penalty: 1.0,
            socket_penalty: 1.0,
            relinquish_ns: 150,
            lock_hold_ns: 74,
            op_ns: 500,
            scrub_batch_bytes: MIB,
            watchdog_s: 5.0,
            guest_traffic_share: 0.0,
            lock_page_ns: 0,
            interconnect_gbps: 0.0,
            cpuless_nodes: Vec::new(),
        }
    }

    /// Whether node `n` has CPUs.
    pub fn has_cpus(&self, n: usize) -> bool {
        !self.cpuless_nodes.contains(&n)
    }

    /// The nodes with CPUs, in order.
    pub fn cpu_nodes(&self) -> Vec<usize> {
        (0..self.nodes).filter(|&n| self.has_cpus(n)).collect()
    }

    /// All CPUs of the host.
    pub fn cpus(&self) -> usize {
        self.cpu_nodes().len() * self.cpus_per_node
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
        per_node * 1e9 * self.cpu_nodes().len() as f64
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
        if !(0.0..1.0).contains(&self.guest_traffic_share) {
            return err(format!("guest_traffic_share {} must be at least 0 and below 1", self.guest_traffic_share));
        }
        if !(self.interconnect_gbps.is_finite() && self.interconnect_gbps >= 0.0) {
            return err(format!("interconnect_gbps {} must be 0 (no limit) or positive", self.interconnect_gbps));
        }
        if let Some(&n) = self.cpuless_nodes.iter().find(|&&n| n >= self.nodes) {
            return err(format!("cpuless_nodes names node {n} but the host has {} nodes", self.nodes));
        }
        if self.cpu_nodes().is_empty() {
            return err("cpuless_nodes leaves no node with CPUs".into());
        }
        if self.lock_page_ns > 1_000_000 {
            return err(format!("lock_page_ns {} is over 1 ms per page", self.lock_page_ns));
        }
        if self.scrub_batch_bytes < self.frame_size {
            return err(format!("scrub_batch_bytes must be at least one frame ({} bytes)", self.frame_size));
        }
        Ok(())
    }
}

/// The mechanisms of the 2026 watchdog reports the engine can switch on, each with its
/// parameters in the host preset (sources in `docs/sim-presets.md`). All off, the engine
/// models what it did before they existed.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mechanisms {
    /// The running guests' own memory traffic takes `guest_traffic_share` of every
    /// node's bandwidth from every zeroing.
    pub guest_traffic: bool,
    /// Xen's global heap lock does `lock_page_ns` of work per 4 KiB page of every extent
    /// it allocates or frees (policies with one global heap lock only).
    pub xen_locks: bool,
    /// Builders take the next free toolstack CPU whatever node the guest claimed, and
    /// every cross-socket writer shares `interconnect_gbps`.
    pub remote: bool,
}

impl Mechanisms {
    /// Every mechanism on.
    pub const ALL: Mechanisms = Mechanisms { guest_traffic: true, xen_locks: true, remote: true };
    /// The names `parse` accepts, in table order.
    pub const NAMES: [&'static str; 3] = ["guest-traffic", "xen-locks", "remote"];

    /// Parses `none`, `all` or a comma-separated list of [`Mechanisms::NAMES`].
    pub fn parse(s: &str) -> Result<Mechanisms, String> {
        let mut m = Mechanisms::default();
        for w in s.split(',').map(str::trim) {
            match w {
                "none" => {}
                "all" => m = Mechanisms::ALL,
                "guest-traffic" => m.guest_traffic = true,
                "xen-locks" => m.xen_locks = true,
                "remote" => m.remote = true,
                _ => {
                    return Err(format!(
                        "unknown mechanism '{w}': use none, all or a list of {}",
                        Mechanisms::NAMES.join(", ")
                    ))
                }
            }
        }
        Ok(m)
    }

    /// The switched-on names joined by `+`, or `none`.
    pub fn label(&self) -> String {
        let on = [self.guest_traffic, self.xen_locks, self.remote];
        let v: Vec<&str> = Mechanisms::NAMES.iter().zip(on).filter(|(_, b)| *b).map(|(n, _)| *n).collect();
        if v.is_empty() {
            "none".into()
        } else {
            v.join("+")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xenserver_4s_derives_from_its_sources() {
        let p = HostPreset::xenserver_4s();
        // 8 channels x DDR5-4800 x 8 bytes = 307.2 GB/s a socket; 60% of it for writes.
        assert!((p.node_zero_gbps - 0.6 * 8.0 * 4.8 * 8.0).abs() < 1.0);
        // 6 UPI links of a 4-socket mesh, 16 GT/s x 20.8 GB/s per 10.4 GT/s, one way.
        assert!((p.interconnect_gbps - 6.0 * 16.0 * 20.8 / 10.4).abs() < 1.0);
        assert!(p.total_bytes() < 5_000_000_000_000 && p.total_bytes() >= 4 << 40);
    }

    #[test]
    fn cpuless_nodes_validate() {
        let mut p = HostPreset::tiny();
        p.cpuless_nodes = vec![1];
        p.validate().unwrap();
        assert_eq!(p.cpus(), 4);
        p.cpuless_nodes = vec![0, 1];
        assert!(p.validate().unwrap_err().contains("no node with CPUs"));
        p.cpuless_nodes = vec![2];
        assert!(p.validate().unwrap_err().contains("node 2"));
    }

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
