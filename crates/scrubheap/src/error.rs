//! Typed errors. Every failed operation leaves the heap exactly as it was.

use crate::blocker::OfflineError;
use crate::claims::ClaimError;
use crate::node::FreeError;
use crate::types::{DomId, Mfn, RangeError};
use alloc::string::String;

/// Why a heap operation was refused. The heap is unchanged after any of these.
///
/// The refusals of each concern are an enum of their own ([`RangeError`], [`FreeError`],
/// [`ClaimError`], [`OfflineError`]), built by the code of that concern and wrapped here
/// (`?` converts); what belongs to no one concern is a variant of its own. Match the
/// concern first: `HeapError::Free(FreeError::NotAllocated { .. })`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeapError {
    /// Input validation: the frames, order, node or CPU asked for (see [`RangeError`]).
    #[error(transparent)]
    Range(#[from] RangeError),
    /// The range is not held the way the operation needs (see [`FreeError`]).
    #[error(transparent)]
    Free(#[from] FreeError),
    /// Claims refused it (see [`ClaimError`]).
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// An offline or online did not happen (see [`OfflineError`]).
    #[error(transparent)]
    Offline(#[from] OfflineError),
    /// The configuration cannot describe a heap.
    #[error("invalid heap configuration: {0}")]
    InvalidConfig(String),
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
    /// A request for an allocation both sealed and movable.
    #[error("a sealed allocation cannot be movable: drop .movable() or .sealed() from the request")]
    SealedMovable,
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
            HeapError::Range(e) => e.kind(),
            HeapError::Free(e) => e.kind(),
            HeapError::Claim(e) => e.kind(),
            HeapError::Offline(e) => e.kind(),
            HeapError::InvalidConfig(..) => "InvalidConfig",
            HeapError::OutOfMemory { .. } => "OutOfMemory",
            HeapError::NeedsScrubTicket { .. } => "NeedsScrubTicket",
            HeapError::SealedMovable => "SealedMovable",
            HeapError::MigrationRefused { .. } => "MigrationRefused",
            HeapError::JobCancelled { .. } => "JobCancelled",
            HeapError::JobFinished { .. } => "JobFinished",
            HeapError::NotFree { .. } => "NotFree",
        }
    }
}

/// A broken invariant found by [`crate::Heap::check_invariants`]: a bug in the heap.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("heap invariant violated: {0}")]
pub struct InvariantViolation(pub String);
