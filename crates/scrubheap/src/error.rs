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
    /// A CPU index the heap has no reserve for (see [`crate::HeapConfig::cpus`]).
    #[error("CPU {cpu} does not exist (the heap serves {cpus} CPUs, numbered from 0; raise HeapConfig::cpus)")]
    NoSuchCpu {
        /// The CPU asked for.
        cpu: usize,
        /// How many CPUs the heap serves.
        cpus: usize,
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
    /// The frame is in the middle of another operation (being scrubbed, migrated,
    /// allocated through a scrub ticket, or isolated by an offline).
    #[error("frame {mfn} is {what} right now: retry when that is done")]
    Busy {
        /// The frame.
        mfn: Mfn,
        /// What is happening to it.
        what: &'static str,
    },
    /// Unpinning a range that holds an unpinned frame.
    #[error("frame {mfn} of {owner} is not long-term pinned: unpin only what was pinned")]
    NotPinned {
        /// The unpinned frame.
        mfn: Mfn,
        /// Its owner.
        owner: DomId,
    },
    /// A chunk already holds the most pins a count can hold.
    #[error("frame {mfn} already holds {max} pins: unpin some first", max = u32::MAX)]
    PinLimit {
        /// The frame.
        mfn: Mfn,
    },
    /// The owner's [`crate::Migrator`] refused to move the frames, so the pin (or the
    /// offline) that needed them moved was not done.
    #[error("the migrator of {owner} refused to move frames {mfn}+2^{order}: nothing was pinned or moved")]
    MigrationRefused {
        /// First frame of the range that would have moved.
        mfn: Mfn,
        /// Its order.
        order: u8,
        /// The owner.
        owner: DomId,
    },
    /// An offline stopped and was rolled back: every frame it took is back as it was.
    #[error("offline of {count} frames at {first} rolled back ({stop}): {} blocker(s){}",
        blockers.len(), blockers.first().map_or(alloc::string::String::new(), |b| alloc::format!(", first {b}")))]
    OfflineBlocked {
        /// First frame of the range.
        first: Mfn,
        /// Frames in the range.
        count: u64,
        /// Why it stopped.
        stop: crate::blocker::OfflineStop,
        /// What blocked it (at most [`crate::MAX_BLOCKERS`]).
        blockers: alloc::vec::Vec<crate::blocker::Blocker>,
    },
    /// An offline job that has ended was advanced again.
    #[error("the offline of {count} frames at {first} has ended: start a new one with Heap::offline_start")]
    OfflineFinished {
        /// First frame of the range.
        first: Mfn,
        /// Frames in the range.
        count: u64,
    },
    /// A one-call operation on a held range (free, `free_sealed`, unpin, `pin_in_place`)
    /// whose range is made of more chunks than one step walks under the node lock.
    #[error("frames {mfn}+2^{order} are held as more than {limit} chunks (after partial frees or pins): one call would walk them all under the node lock; use Heap::range_start (a job advanced in bounded steps) or Heap::range_preemptible")]
    TooManyChunks {
        /// The first frame of the range.
        mfn: Mfn,
        /// The order of the range.
        order: u8,
        /// The most chunks one call walks ([`crate::CHUNKS_PER_STEP`]).
        limit: usize,
    },
    /// A job was cancelled (or dropped) before its point of no return: rolled back.
    #[error("the {job} job at {first} was cancelled and rolled back: nothing changed")]
    JobCancelled {
        /// Which job (`"pin"`, `"free"`, `"online"`, ...).
        job: &'static str,
        /// Its first frame.
        first: Mfn,
    },
    /// A job that has ended was advanced again.
    #[error("the {job} job at {first} has ended: start a new one")]
    JobFinished {
        /// Which job.
        job: &'static str,
        /// Its first frame.
        first: Mfn,
    },
    /// [`Heap::alloc`](crate::Heap::alloc) would have to scrub more than one batch in place.
    #[error("allocating order {order} means scrubbing a dirty chunk of {frames} frames, more than one batch ({batch}) with no preemption point: use Heap::alloc_start or Heap::alloc_preemptible, which scrub it through a ticket")]
    NeedsScrubTicket {
        /// The order asked for.
        order: u8,
        /// Frames of the dirty chunk that would have been taken.
        frames: u64,
        /// The heap's scrub batch.
        batch: u64,
    },
    /// Onlining frames that are not offline.
    #[error("frame {mfn} is not offline (it is {state}): online only frames an offline removed")]
    NotOffline {
        /// The frame.
        mfn: Mfn,
        /// What it is.
        state: &'static str,
    },
    /// A range of frames that is empty or spans more than one node.
    #[error("frames {first}+{count}: a range must hold at least one frame and lie inside one node")]
    BadRange {
        /// First frame.
        first: Mfn,
        /// Frames.
        count: u64,
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
    /// An ordinary free or pin of frames in a sealed allocation.
    #[error(
        "frame {mfn} is in a sealed allocation of {owner}: only the layer that sealed it gives it back (free_sealed); it cannot be freed or pinned directly"
    )]
    Sealed {
        /// The first sealed frame met.
        mfn: Mfn,
        /// The owner named.
        owner: DomId,
    },
    /// A [`crate::Heap::free_sealed`] of frames that are not sealed.
    #[error("frame {mfn} of {owner} is not in a sealed allocation: free it with free, not free_sealed")]
    NotSealed {
        /// The first frame met that is not sealed.
        mfn: Mfn,
        /// The owner named.
        owner: DomId,
    },
    /// A request for an allocation both sealed and movable.
    #[error("a sealed allocation cannot be movable: drop .movable() or .sealed() from the request")]
    SealedMovable,
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
    /// [`crate::Heap::alloc_at`] of a range holding a frame that is not free.
    #[error(
        "cannot allocate the order-{order} range at {mfn}: frame {first} is {what}; allocate a range whose every frame is free (chunk_at shows a frame's state)"
    )]
    NotFree {
        /// The range's first frame.
        mfn: Mfn,
        /// The range's order.
        order: u8,
        /// The first frame of the range that is not free.
        first: Mfn,
        /// What that frame is doing.
        what: FrameUse,
    },
    /// [`crate::Heap::alloc_at`] of a range with frames in both zones of its node.
    #[error(
        "the order-{order} range at {mfn} has frames in both zones (the Movable zone starts at {movable_from}): an allocation lies in one zone"
    )]
    CrossesZone {
        /// The range's first frame.
        mfn: Mfn,
        /// The range's order.
        order: u8,
        /// The first frame of the node's Movable zone.
        movable_from: Mfn,
    },
}

/// What a frame that is not free is doing, as [`HeapError::NotFree`] reports it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FrameUse {
    /// Allocated to a domain.
    Allocated,
    /// Reserved for a pending allocation (a scrub ticket) while it is scrubbed.
    Pending,
    /// Being scrubbed outside the lock (a background scrubber, asked to hand it back,
    /// or a `sync` free): retry shortly.
    Scrubbing,
    /// Isolated by an offline in progress.
    Isolated,
    /// Offline.
    Offline,
    /// Broken: never allocated again.
    Broken,
}

impl core::fmt::Display for FrameUse {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            FrameUse::Allocated => "allocated",
            FrameUse::Pending => "reserved for a pending allocation still being scrubbed",
            FrameUse::Scrubbing => "being scrubbed (retry once the scrubber hands it back)",
            FrameUse::Isolated => "isolated by an offline in progress",
            FrameUse::Offline => "offline",
            FrameUse::Broken => "broken",
        })
    }
}

impl HeapError {
    /// A stable name for the variant (`"OutOfMemory"`, ...), for counting errors by kind
    /// (the op log's `errors {Kind: count}` map). It is the variant's name and never
    /// changes for an existing variant.
    pub fn kind(&self) -> &'static str {
        match self {
            HeapError::InvalidConfig(..) => "InvalidConfig",
            HeapError::InvalidOrder { .. } => "InvalidOrder",
            HeapError::NoSuchNode { .. } => "NoSuchNode",
            HeapError::NoSuchCpu { .. } => "NoSuchCpu",
            HeapError::OutOfRange { .. } => "OutOfRange",
            HeapError::Unaligned { .. } => "Unaligned",
            HeapError::CrossesNode { .. } => "CrossesNode",
            HeapError::OutOfMemory { .. } => "OutOfMemory",
            HeapError::NotAllocated { .. } => "NotAllocated",
            HeapError::WrongOwner { .. } => "WrongOwner",
            HeapError::OrderTooLarge { .. } => "OrderTooLarge",
            HeapError::Pinned { .. } => "Pinned",
            HeapError::ClaimExceedsFree { .. } => "ClaimExceedsFree",
            HeapError::Busy { .. } => "Busy",
            HeapError::NotPinned { .. } => "NotPinned",
            HeapError::PinLimit { .. } => "PinLimit",
            HeapError::MigrationRefused { .. } => "MigrationRefused",
            HeapError::OfflineBlocked { .. } => "OfflineBlocked",
            HeapError::OfflineFinished { .. } => "OfflineFinished",
            HeapError::NeedsScrubTicket { .. } => "NeedsScrubTicket",
            HeapError::NotOffline { .. } => "NotOffline",
            HeapError::BadRange { .. } => "BadRange",
            HeapError::NeededByClaims { .. } => "NeededByClaims",
            HeapError::Sealed { .. } => "Sealed",
            HeapError::NotSealed { .. } => "NotSealed",
            HeapError::SealedMovable => "SealedMovable",
            HeapError::ClaimedByOthers { .. } => "ClaimedByOthers",
            HeapError::NotFree { .. } => "NotFree",
            HeapError::CrossesZone { .. } => "CrossesZone",
            HeapError::TooManyChunks { .. } => "TooManyChunks",
            HeapError::JobCancelled { .. } => "JobCancelled",
            HeapError::JobFinished { .. } => "JobFinished",
        }
    }
}

/// A broken invariant found by [`crate::Heap::check_invariants`]: a bug in the heap.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("heap invariant violated: {0}")]
pub struct InvariantViolation(pub String);

#[cfg(test)]
mod tests {
    use super::HeapError;
    use crate::types::{DomId, Mfn};
    use alloc::format;

    /// The kind is the variant's name, as the `Debug` text starts with it.
    fn same_as_debug(e: &HeapError) {
        let dbg = format!("{e:?}");
        assert!(dbg.starts_with(e.kind()), "{dbg} is not of kind {}", e.kind());
        let rest = &dbg[e.kind().len()..];
        assert!(rest.is_empty() || rest.starts_with([' ', '(']), "{dbg}: kind {}", e.kind());
    }

    #[test]
    fn kinds_are_variant_names() {
        assert_eq!(HeapError::InvalidConfig("x (y)".into()).kind(), "InvalidConfig");
        assert_eq!(HeapError::NotAllocated { mfn: Mfn(3) }.kind(), "NotAllocated");
        assert_eq!(HeapError::Sealed { mfn: Mfn(3), owner: DomId(1) }.kind(), "Sealed");
        for e in [
            HeapError::InvalidConfig("x".into()),
            HeapError::NotAllocated { mfn: Mfn(3) },
            HeapError::Sealed { mfn: Mfn(3), owner: DomId(1) },
            HeapError::NotSealed { mfn: Mfn(3), owner: DomId(1) },
            HeapError::SealedMovable,
            HeapError::ClaimedByOthers { owner: DomId(1), frames: 2, where_: "node 0".into(), free: 3, claimed: 2 },
        ] {
            same_as_debug(&e);
        }
    }
}
