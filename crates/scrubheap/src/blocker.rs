//! What stops an offline, and the chunks that block one: the facts an offline's refusal
//! carries ([`crate::HeapError::OfflineBlocked`]), kept apart from the offline itself so
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
