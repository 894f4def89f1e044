//! Claims: memory reserved for a domain before it allocates, globally and per node,
//! installed as a set per domain.

use crate::types::{DomId, Mfn};
use alloc::collections::BTreeMap;
use alloc::string::String;
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
    /// Which installation of the domain's claims this is: a ticket gives back what it
    /// retired only to the set it retired it from.
    pub epoch: u64,
    /// Frames of this set retired by scrub tickets not yet finished or dropped. The entry
    /// stays while any are out, even with nothing claimed, so a dropped ticket can
    /// restore its claim.
    pub in_tickets: u64,
}

impl DomClaims {
    /// A set with nothing claimed on any of `nodes` nodes (epoch 0 until installed).
    pub fn empty(nodes: usize) -> Self {
        DomClaims { global: 0, nodes: vec![0; nodes], epoch: 0, in_tickets: 0 }
    }

    pub fn total(&self) -> u64 {
        self.global + self.nodes.iter().sum::<u64>()
    }

    /// Whether the entry can go: nothing claimed and nothing out in tickets.
    fn spent(&self) -> bool {
        self.total() == 0 && self.in_tickets == 0
    }
}

/// What one allocation retired of its owner's claims on its node: the node part, the
/// global part, and the installation (epoch) they came from. A scrub ticket keeps it, so
/// that a ticket dropped unfinished restores exactly this ([`ClaimBook::restore`]).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Retired {
    pub node: u64,
    pub global: u64,
    pub epoch: u64,
}

impl Retired {
    /// Frames retired in all.
    pub fn frames(&self) -> u64 {
        self.node + self.global
    }
}

/// All outstanding claims, with per-node and global totals kept in step.
#[derive(Clone, Debug)]
pub(crate) struct ClaimBook {
    pub doms: BTreeMap<DomId, DomClaims>,
    pub node_total: Vec<u64>,
    pub global_total: u64,
    /// Frames retired by every unfinished scrub ticket, whatever became of the sets they
    /// were retired from: `check_invariants` matches it against the tickets.
    pub in_tickets: u64,
    /// The epoch the next installed set gets.
    next_epoch: u64,
    /// Per bit of [`ClaimBook::bit`], how many domains with an entry have that bit.
    holders: [u32; 64],
}

impl ClaimBook {
    pub fn new(nodes: usize) -> Self {
        ClaimBook {
            doms: BTreeMap::new(),
            node_total: vec![0; nodes],
            global_total: 0,
            in_tickets: 0,
            next_epoch: 1,
            holders: [0; 64],
        }
    }

    /// `dom`'s bit in the claimants mask.
    pub fn bit(dom: DomId) -> u64 {
        1 << (dom.0 % 64)
    }

    /// The claimants mask: the bits of every domain with an entry.
    pub fn claimants(&self) -> u64 {
        self.holders.iter().enumerate().filter(|(_, &h)| h > 0).fold(0, |m, (i, _)| m | 1 << i)
    }

    /// Removes `dom`'s entry (counts are the caller's).
    fn remove(&mut self, dom: DomId) -> Option<DomClaims> {
        let old = self.doms.remove(&dom)?;
        let h = &mut self.holders[(dom.0 % 64) as usize];
        debug_assert!(*h > 0, "an entry counted in its bit");
        *h -= 1;
        Some(old)
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
    /// `(on the node, in the whole heap)`. With no `dom` (frames taken for nobody's
    /// claims: an offline, a move's destination) every claim counts.
    pub fn claimed_by_others(&self, dom: Option<DomId>, node: usize) -> (u64, u64) {
        let (own_node, own_global) = dom.map_or((0, 0), |d| self.own(d, node));
        (self.node_total[node] - own_node, self.outstanding() - own_node - own_global)
    }

    /// Retires `frames` of `dom`'s claims for an allocation on `node`: node claim first,
    /// then global. `ticket`: the allocation is a scrub ticket that may yet be dropped,
    /// so the retired part is counted as out in tickets until [`ClaimBook::restore`] or
    /// [`ClaimBook::settle`]. Returns what was retired.
    pub fn retire(&mut self, dom: DomId, node: usize, frames: u64, ticket: bool) -> Retired {
        let Some(c) = self.doms.get_mut(&dom) else { return Retired::default() };
        let from_node = core::cmp::min(c.nodes[node], frames);
        c.nodes[node] -= from_node;
        self.node_total[node] -= from_node;
        let from_global = core::cmp::min(c.global, frames - from_node);
        c.global -= from_global;
        self.global_total -= from_global;
        let r = Retired { node: from_node, global: from_global, epoch: c.epoch };
        if ticket {
            c.in_tickets += r.frames();
            self.in_tickets += r.frames();
        }
        if c.spent() {
            self.remove(dom);
        }
        debug_assert!(r.frames() <= frames, "an allocation retires at most its own size");
        r
    }

    /// A ticket of `dom` on `node` was dropped unfinished: what it retired comes back,
    /// node claim and global claim as they were, if the set it came from is still
    /// installed (a set installed or cancelled since replaced it: nothing comes back).
    pub fn restore(&mut self, dom: DomId, node: usize, r: Retired) {
        if let Some(c) = self.out_of_tickets(dom, r) {
            c.nodes[node] += r.node;
            c.global += r.global;
            self.node_total[node] += r.node;
            self.global_total += r.global;
        }
    }

    /// A ticket of `dom` finished: what it retired stays retired.
    pub fn settle(&mut self, dom: DomId, r: Retired) {
        if self.out_of_tickets(dom, r).is_some_and(|c| c.spent()) {
            self.remove(dom);
        }
    }

    /// Takes `r` out of the frames in tickets; returns `dom`'s entry if `r` came from it.
    fn out_of_tickets(&mut self, dom: DomId, r: Retired) -> Option<&mut DomClaims> {
        debug_assert!(self.in_tickets >= r.frames(), "a ticket gives back no more than was counted out");
        self.in_tickets -= r.frames();
        let c = self.doms.get_mut(&dom).filter(|c| c.epoch == r.epoch)?;
        debug_assert!(c.in_tickets >= r.frames());
        c.in_tickets -= r.frames();
        Some(c)
    }

    /// Replaces `dom`'s claims by `set` (already validated).
    pub fn install(&mut self, dom: DomId, mut set: DomClaims) {
        self.cancel(dom);
        if set.total() == 0 {
            return;
        }
        set.epoch = self.next_epoch;
        set.in_tickets = 0;
        self.next_epoch += 1;
        self.holders[(dom.0 % 64) as usize] += 1;
        for (t, v) in self.node_total.iter_mut().zip(&set.nodes) {
            *t += v;
        }
        self.global_total += set.global;
        self.doms.insert(dom, set);
    }

    /// Drops all of `dom`'s claims.
    pub fn cancel(&mut self, dom: DomId) {
        if let Some(old) = self.remove(dom) {
            for (t, v) in self.node_total.iter_mut().zip(&old.nodes) {
                *t -= v;
            }
            self.global_total -= old.global;
        }
    }
}

/// Claims refused a request: a claim larger than the free unclaimed memory, or frames that
/// other domains' claims need (the claims gate, [`crate::Heap::claims_admit`]). Nothing was
/// changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// A claim for more memory than is free and unclaimed.
    #[error("claim of {requested} frames on {where_} exceeds the {available} free frames not claimed by others")]
    ClaimExceedsFree {
        /// Frames asked for.
        requested: u64,
        /// Where: "node N" or "the whole heap".
        where_: String,
        /// Free frames not claimed by other domains.
        available: u64,
    },
    /// The claims gate refused an allocation: other domains' claims need the free memory.
    #[error(
        "{frames} frames for {owner} on {where_}: {free} frames are free but {claimed} of them are claimed by other domains; cancel or shrink claims, or free memory"
    )]
    ClaimedByOthers {
        /// The domain asking.
        owner: DomId,
        /// Frames asked for.
        frames: u64,
        /// Where ("node N" or "the whole heap").
        where_: String,
        /// Free frames there.
        free: u64,
        /// Frames there claimed by other domains.
        claimed: u64,
    },
    /// Taking a free frame out of service would leave less free memory than is claimed.
    #[error(
        "frame {mfn} is free but claims need it ({claimed} frames claimed, {free} free): shrink or cancel claims first"
    )]
    NeededByClaims {
        /// The frame.
        mfn: Mfn,
        /// All outstanding claims, node and global (the refusal may come from this node's
        /// claims or from the total).
        claimed: u64,
        /// Free frames on its node.
        free: u64,
    },
}

variant_kinds!(ClaimError { ClaimExceedsFree, ClaimedByOthers, NeededByClaims });
