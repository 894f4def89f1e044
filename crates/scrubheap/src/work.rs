//! Chunks being worked on outside the node lock. Each has one entry in its node's work
//! list, naming who works on it and how far they got; workers re-take the lock between
//! batches to publish progress and to see a stop request.

use crate::claims::Retired;
use crate::types::{DomId, Off};

/// Who is working on a chunk.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An idle CPU scrubbing a free chunk (state Scrubbing); `stop` asks it to hand the
    /// chunk back after its current batch (an allocator needs it).
    Background,
    /// A `sync`-policy free zeroing frames before they go back (state Scrubbing).
    SyncFree,
    /// A pending allocation for `owner` (state Pending): its owner and any idle helpers
    /// take batches from `cursor`; `stop` means the ticket was dropped, and whoever
    /// finishes the last batch in flight returns the chunk to the heap. `movable` and
    /// `sealed` are the flags the allocation gets when it is handed over; `claim` is what
    /// the allocation retired of the owner's claims, given back if the ticket is dropped.
    Ticket { owner: DomId, movable: bool, sealed: bool, claim: Retired },
}

#[derive(Clone, Debug)]
pub(crate) struct Work {
    pub id: u64,
    pub head: Off,
    pub order: u8,
    pub kind: Kind,
    /// Offset within the chunk up to which batches have been handed out.
    pub cursor: u32,
    /// Batches handed out and not yet done.
    pub inflight: u32,
    pub stop: bool,
}

impl Work {
    pub fn frames(&self) -> u64 {
        1 << self.order
    }
}
