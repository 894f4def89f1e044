//! Heap configuration: frame size, nodes, zones, distances, policy.

use crate::error::HeapError;
use crate::policy::Policy;
use crate::types::{Mfn, MAX_ORDER};
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

/// One NUMA node: a contiguous range of frames, the next after the previous node's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    /// Number of frames the node owns.
    pub frames: u64,
    /// Offset (from the node's first frame) where the Movable zone begins; `None` for no
    /// Movable zone.
    pub movable_from: Option<u64>,
    /// Whether the node has CPUs of its own to scrub with; a CPU-less node is scrubbed by
    /// the nearest node's scrubbers.
    pub has_cpus: bool,
}

/// Everything needed to build a [`crate::Heap`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeapConfig {
    /// Bytes per frame: 4096, 16384 or 65536 (or any power of two from 4096 up, for
    /// simulations of hosts too large for 4 KiB metadata).
    pub frame_size: u64,
    /// The heap's first frame; node 0 starts here.
    pub first: Mfn,
    /// The nodes, in frame order.
    pub nodes: Vec<NodeSpec>,
    /// `distance[a][b]`: relative cost of node `a` using node `b`'s memory (ACPI SLIT
    /// style, 10 = local). Empty means 10 local and 20 remote.
    pub distance: Vec<Vec<u32>>,
    /// The scrubbing policy.
    pub policy: Policy,
    /// Frames zeroed between two preemption checks (default 256: 1 MiB at 4 KiB).
    pub scrub_batch: u64,
    /// Whether every frame starts dirty (memory the firmware or a previous boot left).
    pub initially_dirty: bool,
    /// CPUs with a fast-path reserve ([`crate::Heap::get`], [`crate::Heap::put`]): 1 to
    /// [`crate::MAX_CPUS`], default 1. Callers name their CPU as `0..cpus`.
    pub cpus: usize,
}

impl HeapConfig {
    /// `nodes` nodes of `frames_per_node` 4 KiB frames each, no Movable zone, clean, the
    /// `scrubheap` policy.
    pub fn uniform(nodes: usize, frames_per_node: u64) -> Self {
        HeapConfig {
            frame_size: 4096,
            first: Mfn(0),
            nodes: vec![NodeSpec { frames: frames_per_node, movable_from: None, has_cpus: true }; nodes],
            distance: Vec::new(),
            policy: Policy::Scrubheap,
            scrub_batch: 256,
            initially_dirty: false,
            cpus: 1,
        }
    }

    /// Builder: the policy.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Builder: a Movable zone from `offset` in every node.
    pub fn with_movable_from(mut self, offset: u64) -> Self {
        for n in &mut self.nodes {
            n.movable_from = Some(offset);
        }
        self
    }

    /// Builder: all memory starts dirty.
    pub fn with_initially_dirty(mut self, dirty: bool) -> Self {
        self.initially_dirty = dirty;
        self
    }

    /// Builder: fast-path reserves for `cpus` CPUs.
    pub fn with_cpus(mut self, cpus: usize) -> Self {
        self.cpus = cpus;
        self
    }

    /// Distance from node `a` to node `b`.
    pub fn distance(&self, a: usize, b: usize) -> u32 {
        if self.distance.is_empty() {
            if a == b {
                10
            } else {
                20
            }
        } else {
            self.distance[a][b]
        }
    }

    /// Total frames over all nodes.
    pub fn total_frames(&self) -> u64 {
        self.nodes.iter().map(|n| n.frames).sum()
    }

    pub(crate) fn validate(&self) -> Result<(), HeapError> {
        let bad = |m: alloc::string::String| Err(HeapError::InvalidConfig(m));
        if !self.frame_size.is_power_of_two() || self.frame_size < 4096 {
            return bad(format!("frame size {} must be a power of two of at least 4096", self.frame_size));
        }
        if self.nodes.is_empty() || self.nodes.len() > 1024 {
            return bad(format!("{} nodes: a heap needs 1 to 1024 nodes", self.nodes.len()));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if n.frames == 0 || n.frames >= u32::MAX as u64 {
                return bad(format!("node {i} has {} frames: each node needs 1 to {} frames", n.frames, u32::MAX - 1));
            }
            if let Some(m) = n.movable_from {
                if m > n.frames {
                    return bad(format!("node {i}: movable_from {m} is beyond its {} frames", n.frames));
                }
            }
        }
        if !self.nodes.iter().any(|n| n.has_cpus) {
            return bad("no node has CPUs: at least one node must, or nothing would ever scrub".into());
        }
        if self.first.0.checked_add(self.total_frames()).is_none() {
            return bad("frame numbers overflow 64 bits".into());
        }
        if !self.distance.is_empty() {
            let n = self.nodes.len();
            if self.distance.len() != n || self.distance.iter().any(|r| r.len() != n) {
                return bad(format!("the distance table must be {n} x {n}"));
            }
        }
        if self.cpus == 0 || self.cpus > crate::types::MAX_CPUS {
            return bad(format!("{} CPUs: the fast path serves 1 to {} CPUs", self.cpus, crate::types::MAX_CPUS));
        }
        if self.scrub_batch == 0 || self.scrub_batch > 1 << MAX_ORDER {
            return bad(format!("scrub batch {} must be 1 to {} frames", self.scrub_batch, 1u64 << MAX_ORDER));
        }
        Ok(())
    }
}
