//! Claims: memory reserved for a domain before it allocates, globally and per node,
//! installed as a set per domain.

use crate::types::DomId;
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

/// Where a claim reserves memory.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClaimTarget {
    /// Anywhere in the heap.
    Global,
    /// On one node.
    Node(usize),
}

/// One entry of a domain's claim set: reserve `frames` at `target`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Where.
    pub target: ClaimTarget,
    /// How many frames.
    pub frames: u64,
}

/// One domain's outstanding claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DomClaims {
    pub global: u64,
    pub nodes: Vec<u64>,
}

impl DomClaims {
    pub fn total(&self) -> u64 {
        self.global + self.nodes.iter().sum::<u64>()
    }
}

/// All outstanding claims, with per-node and global totals kept in step.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClaimBook {
    pub doms: BTreeMap<DomId, DomClaims>,
    pub node_total: Vec<u64>,
    pub global_total: u64,
}

impl ClaimBook {
    pub fn new(nodes: usize) -> Self {
        ClaimBook { doms: BTreeMap::new(), node_total: vec![0; nodes], global_total: 0 }
    }

    /// All outstanding claimed frames.
    pub fn outstanding(&self) -> u64 {
        self.global_total + self.node_total.iter().sum::<u64>()
    }

    /// `(node claim, global claim)` of `dom` usable on `node`.
    pub fn own(&self, dom: DomId, node: usize) -> (u64, u64) {
        self.doms.get(&dom).map_or((0, 0), |c| (c.nodes[node], c.global))
    }

    /// Frames on `node` that `dom` may not use because others claimed them:
    /// `(on the node, in the whole heap)`.
    pub fn claimed_by_others(&self, dom: DomId, node: usize) -> (u64, u64) {
        let (own_node, own_global) = self.own(dom, node);
        (self.node_total[node] - own_node, self.outstanding() - own_node - own_global)
    }

    /// Retires `frames` of `dom`'s claims for an allocation on `node`: node claim first,
    /// then global.
    pub fn retire(&mut self, dom: DomId, node: usize, frames: u64) {
        let Some(c) = self.doms.get_mut(&dom) else { return };
        let from_node = core::cmp::min(c.nodes[node], frames);
        c.nodes[node] -= from_node;
        self.node_total[node] -= from_node;
        let from_global = core::cmp::min(c.global, frames - from_node);
        c.global -= from_global;
        self.global_total -= from_global;
        if c.total() == 0 {
            self.doms.remove(&dom);
        }
    }

    /// Replaces `dom`'s claims by `set` (already validated).
    pub fn install(&mut self, dom: DomId, set: DomClaims) {
        self.cancel(dom);
        if set.total() == 0 {
            return;
        }
        for (t, v) in self.node_total.iter_mut().zip(&set.nodes) {
            *t += v;
        }
        self.global_total += set.global;
        self.doms.insert(dom, set);
    }

    /// Drops all of `dom`'s claims.
    pub fn cancel(&mut self, dom: DomId) {
        if let Some(old) = self.doms.remove(&dom) {
            for (t, v) in self.node_total.iter_mut().zip(&old.nodes) {
                *t -= v;
            }
            self.global_total -= old.global;
        }
    }
}
