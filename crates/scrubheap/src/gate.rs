//! The claims gate: the one rule that admits or refuses frames leaving a node's free
//! memory for an owner (an allocation, `alloc_at`, a pin's destination, an offline's
//! isolation, a frame marked broken) given the claims of other domains.
//!
//! # No global lock for domains without claims
//!
//! The gate runs under the lock of the node the frames leave. A domain that holds claims
//! takes the claims lock, because its allocation retires them. Any other caller (a domain
//! without claims, or frames taken for nobody's claims) reads the claimed totals from
//! their atomic mirrors and takes no global lock. That it holds no claims is read from
//! the `claimants` mask (a bit per `DomId` modulo 64, set while any domain of that bit has
//! a claim entry): a bit goes from clear to set only when a set is installed, and
//! [`Heap::claim_set`] holds every node lock, so not while the caller holds one. A stale
//! set bit (another domain of the same bit, or an entry being dropped) only sends the
//! caller down the locked path.
//!
//! Why the unlocked gate still never admits frames that others' claims need:
//! - **On the node** the check is exact. Under the node's lock, the node's claimed total
//!   grows only by `claim_set` (every node lock: excluded) or by a ticket of this node
//!   giving its claim back (this node's lock: excluded); it shrinks by retiring and
//!   cancelling, which only makes the value read conservative.
//! - **A claim given back** by a dropped ticket on another node comes with the very frames
//!   it was retired for: free and claimed grow by the same amount, so no room shrinks.
//!   The ticket publishes the claim before the frames (Release), and the gate reads the
//!   free counts before the claims (Acquire): a gate that sees the frames sees the claim.
//! - **The whole-heap check** reads the other nodes' free counts as published, as the
//!   locked gate always did: allocations that run at the same moment on different nodes
//!   each see the others' frames as still free until they publish (before their node
//!   lock drops). That race remains, as before this gate: two such allocations may
//!   together take up to the smaller one's size from *global* claims (never from node
//!   claims), for as long as both are in flight. Closing it needs a heap-wide counter
//!   every allocation updates, the contention per-node locks exist to avoid.

use crate::claims::ClaimBook;
use crate::claims::ClaimError;
use crate::heap::Heap;
use crate::memory::FrameMemory;
use crate::sync::MutexGuard;
use crate::types::DomId;
use crate::HeapError;
use alloc::format;
use alloc::string::String;
use core::sync::atomic::Ordering::Acquire;

/// What other domains' claims leave for one owner: on a node and in the whole heap, with
/// the figures a refusal reports.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Room {
    /// Frames the owner may take from the node.
    pub node: u64,
    /// Frames the owner may take from the whole heap.
    pub heap: u64,
    /// The node's free frames.
    pub avail: u64,
    /// The heap's free frames.
    pub total: u64,
    /// Frames of the node claimed by others.
    pub others_node: u64,
    /// Frames claimed by others anywhere.
    pub others_all: u64,
}

impl Room {
    fn new(avail: u64, total: u64, others_node: u64, others_all: u64) -> Room {
        debug_assert!(total >= avail, "the heap's free frames include the node's");
        let node = avail.saturating_sub(others_node);
        let heap = total.saturating_sub(others_all);
        Room { node, heap, avail, total, others_node, others_all }
    }

    /// Whether `frames` fit; if not: where, free, claimed.
    pub fn refusal(&self, node: usize, frames: u64) -> Option<(String, u64, u64)> {
        if frames > self.node {
            return Some((format!("node {node}"), self.avail, self.others_node));
        }
        if frames > self.heap {
            return Some(("the whole heap".into(), self.total, self.others_all));
        }
        None
    }

    /// [`Room::refusal`] as the claims gate's refusal of `frames` for `owner`.
    pub fn admit(&self, owner: DomId, node: usize, frames: u64) -> Result<(), ClaimError> {
        match self.refusal(node, frames) {
            None => Ok(()),
            Some((where_, free, claimed)) => Err(ClaimError::ClaimedByOthers { owner, frames, where_, free, claimed }),
        }
    }
}

impl<M: FrameMemory> Heap<M> {
    /// The claims gate: whether the claims of other domains leave `frames` more frames
    /// for `owner` on `node` (`owner`'s own node and global claims count as its own).
    /// The allocation path asks the same question ([`Heap::alloc_start`], under the node
    /// lock); this read takes only the claims lock, so the answer is a snapshot that
    /// concurrent operations may change. It says nothing of whether `frames` are free in
    /// one piece: an admitted allocation can still run out of memory.
    ///
    /// Refused with [`crate::ClaimError::ClaimedByOthers`] (naming the node or the whole heap),
    /// or [`crate::RangeError::NoSuchNode`].
    pub fn claims_admit(&self, owner: DomId, node: usize, frames: u64) -> Result<(), HeapError> {
        self.node(node)?;
        if self.claimed_total() == 0 {
            return Ok(());
        }
        let book = self.claim_book();
        let room = self.room(&book, Some(owner), node, self.available(node));
        Ok(room.admit(owner, node, frames)?)
    }

    /// The most frames the claims gate admits for `owner` on `node` now: what the claims
    /// of other domains leave of the node's free frames and of the whole heap's. A
    /// snapshot, as [`Heap::claims_admit`]; a layer that fills from several nodes (a guest's
    /// cache) adds it up node by node to know what it can reach before it allocates.
    pub fn claims_room(&self, owner: DomId, node: usize) -> Result<u64, HeapError> {
        self.node(node)?;
        let book = self.claim_book();
        let room = self.room(&book, Some(owner), node, self.available(node));
        Ok(room.node.min(room.heap))
    }

    /// The gate for a caller that holds `node`'s lock and read its free frames `avail`
    /// under it: the room others' claims leave `owner` (`None`: frames taken for nobody's
    /// claims, every claim counts), and the claims lock when `owner` holds claims (its
    /// allocation retires them under it). See the module documentation for why the
    /// unlocked answer is safe.
    pub(crate) fn gate(
        &self,
        owner: Option<DomId>,
        node: usize,
        avail: u64,
    ) -> (Room, Option<MutexGuard<'_, ClaimBook>>) {
        debug_assert!(node < self.node_count());
        let open = Room { node: u64::MAX, heap: u64::MAX, avail, total: avail, others_node: 0, others_all: 0 };
        if self.claimed_total() == 0 {
            return (open, None);
        }
        if owner.is_some_and(|d| self.may_hold_claims(d)) {
            let book = self.claim_book();
            let room = self.room(&book, owner, node, avail);
            return (room, Some(book));
        }
        // Free counts first, then the claims (see the module documentation).
        let total = self.free_total(node, avail);
        let others_node = self.cell(node).claimed.load(Acquire);
        let others_all = self.claimed_total();
        (Room::new(avail, total, others_node, others_all), None)
    }

    /// [`Heap::gate`] for callers that retire nothing: `Err((where, free, claimed))` on
    /// refusal.
    pub(crate) fn claims_admit_locked(
        &self,
        owner: Option<DomId>,
        node: usize,
        avail: u64,
        frames: u64,
    ) -> Result<(), (String, u64, u64)> {
        let (room, _book) = self.gate(owner, node, avail);
        room.refusal(node, frames).map_or(Ok(()), Err)
    }

    /// What the claims of domains other than `owner` leave on `node` (whose free frames
    /// `avail` the caller read) and in the whole heap, from the claim book.
    fn room(&self, book: &ClaimBook, owner: Option<DomId>, node: usize, avail: u64) -> Room {
        debug_assert!(node < self.node_count());
        let total = self.free_total(node, avail);
        let (others_node, others_all) = book.claimed_by_others(owner, node);
        Room::new(avail, total, others_node, others_all)
    }

    /// The heap's free frames: `avail` for `node`, the published counts of the others.
    fn free_total(&self, node: usize, avail: u64) -> u64 {
        (0..self.node_count()).map(|i| if i == node { avail } else { self.available(i) }).sum()
    }
}
