//! Typed errors. Every failed operation leaves the heap exactly as it was.

use crate::types::{DomId, Mfn, MAX_ORDER};
use alloc::string::String;

/// Why a heap operation was refused. The heap is unchanged after any of these.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeapError {
    /// The configuration cannot describe a heap.
    #[error("invalid heap configuration: {0}")]
    InvalidConfig(String),
    /// An order above [`MAX_ORDER`].
    #[error("order {order} is above the largest order {max} (2^{max} frames)", max = MAX_ORDER)]
    InvalidOrder {
        /// The order asked for.
        order: u8,
    },
    /// A node index the heap does not have.
    #[error("node {node} does not exist (the heap has {nodes} nodes, numbered from 0)")]
    NoSuchNode {
        /// The node asked for.
        node: usize,
        /// How many nodes the heap has.
        nodes: usize,
    },
    /// A frame outside every node's range.
    #[error("frame {mfn} is outside the heap (frames {first}..{end})")]
    OutOfRange {
        /// The frame given.
        mfn: Mfn,
        /// The heap's first frame.
        first: Mfn,
        /// One past the heap's last frame.
        end: Mfn,
    },
    /// A range whose first frame is not a multiple of its size.
    #[error("frame {mfn} is not aligned to order {order}: use a frame that is a multiple of {size}")]
    Unaligned {
        /// The frame given.
        mfn: Mfn,
        /// The order given.
        order: u8,
        /// 2^order.
        size: u64,
    },
    /// A range that crosses from one node into another.
    #[error("frames {mfn}+2^{order} cross a node boundary")]
    CrossesNode {
        /// The frame given.
        mfn: Mfn,
        /// The order given.
        order: u8,
    },
    /// No node the request may use has a free chunk of that order (after claims).
    #[error("out of memory: no free chunk of order {order} on {where_} (free frames: {free}, of which claimed by others: {claimed})")]
    OutOfMemory {
        /// The order asked for.
        order: u8,
        /// Which nodes were searched.
        where_: String,
        /// Free frames on those nodes.
        free: u64,
        /// Of those, frames claimed by other domains.
        claimed: u64,
    },
    /// Freeing (or pinning) a frame that is not allocated: a double free.
    #[error("frame {mfn} is not allocated (already free, offline or broken): double free?")]
    NotAllocated {
        /// The frame.
        mfn: Mfn,
    },
    /// The frame is held by another owner.
    #[error("frame {mfn} belongs to {actual}, not {owner}")]
    WrongOwner {
        /// The frame.
        mfn: Mfn,
        /// Who asked.
        owner: DomId,
        /// Who holds it.
        actual: DomId,
    },
    /// The range goes beyond what the owner holds there.
    #[error("order {order} at {mfn} covers frame {beyond}, which {owner} does not hold: free with the order that was allocated")]
    OrderTooLarge {
        /// The frame given.
        mfn: Mfn,
        /// The order given.
        order: u8,
        /// The owner.
        owner: DomId,
        /// The first frame of the range the owner does not hold.
        beyond: Mfn,
    },
    /// The range holds a long-term pinned frame.
    #[error("frame {mfn} is long-term pinned by {owner}: unpin it first")]
    Pinned {
        /// The pinned frame.
        mfn: Mfn,
        /// Its owner.
        owner: DomId,
    },
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
}

/// A broken invariant found by [`crate::Heap::check_invariants`]: a bug in the heap.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("heap invariant violated: {0}")]
pub struct InvariantViolation(pub String);
