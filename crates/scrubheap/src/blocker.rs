//! What stops an offline, and the chunks that block one: the facts an offline's refusal
//! carries ([`crate::OfflineError::OfflineBlocked`]), kept apart from the offline itself so
//! that errors depend on them and not on the operation.

use crate::types::{DomId, Mfn};
use core::fmt;

/// Why an offline stopped without completing.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum OfflineStop {
    /// A frame that cannot move (see the blockers).
    Blocked,
    /// The caller's deadline passed.
    Deadline,
}

impl fmt::Display for OfflineStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OfflineStop::Blocked => "blocked",
            OfflineStop::Deadline => "deadline passed",
        })
    }
}

/// Why a chunk blocked an offline.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BlockReason {
    /// An unmovable allocation.
    Unmovable,
    /// A long-term pinned allocation.
    Pinned,
    /// The owner's migrator refused to move it.
    MigrationRefused,
    /// No free memory outside the range to move it to.
    NoMemory,
    /// Busy with another operation for longer than [`MAX_BUSY_POLLS`](crate::MAX_BUSY_POLLS) looks (a scrub
    /// ticket, a move, another offline).
    Busy,
    /// Taking the free frames would leave less free memory than is claimed.
    Claimed,
    /// An allocation the offline had not reached when its deadline passed.
    NotReached,
}

impl fmt::Display for BlockReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlockReason::Unmovable => "unmovable",
            BlockReason::Pinned => "long-term pinned",
            BlockReason::MigrationRefused => "migration refused",
            BlockReason::NoMemory => "no memory to move it to",
            BlockReason::Busy => "busy",
            BlockReason::Claimed => "needed by claims",
            BlockReason::NotReached => "not reached",
        })
    }
}

/// A chunk that kept an offline from completing.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Blocker {
    /// Its first frame.
    pub first: Mfn,
    /// Its frames.
    pub frames: u64,
    /// Its owner, if allocated.
    pub owner: Option<DomId>,
    /// Why it blocked.
    pub reason: BlockReason,
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}", self.first, self.frames)?;
        if let Some(o) = self.owner {
            write!(f, " of {o}")?;
        }
        write!(f, " ({})", self.reason)
    }
}

/// Taking frames out of service or back into it did not happen: an offline blocked (with its
/// [`Blocker`]s) or already ended, or an online of frames that are not offline. The heap is
/// as it was (an offline that rolled back has put every frame it took back).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OfflineError {
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
    /// Onlining frames that are not offline.
    #[error("frame {mfn} is not offline (it is {state}): online only frames an offline removed")]
    NotOffline {
        /// The frame.
        mfn: Mfn,
        /// What it is.
        state: &'static str,
    },
}

variant_kinds!(OfflineError { OfflineBlocked, OfflineFinished, NotOffline });
