//! scrubheap: a physical page allocator for hypervisors and kernels.
//!
//! The heap hands out naturally aligned power-of-two runs of frames ("chunks") from
//! per-node buddy free lists. Freeing never scrubs: freed frames are marked dirty in a
//! per-node bitmap and merge with their buddies whether clean or dirty. Scrubbing is done
//! by [`Heap::scrub_step`] (what an idle CPU calls) or in place, in bounded batches, when an
//! allocation can only be met from dirty memory. No frame reaches a new owner unscrubbed
//! unless the caller asked for unscrubbed memory.
//!
//! The crate is `#![no_std]` + `alloc` and contains no `unsafe`. It knows nothing of
//! threads, clocks or mappings: it sees frames ([`Mfn`]), a [`FrameMemory`] that zeroes,
//! checks and copies them, and (for long operations) a [`Preempt`] it asks whether to yield.
//!
//! ```
//! use scrubheap::{AllocRequest, DomId, Heap, HeapConfig, NullMemory};
//! let heap = Heap::new(HeapConfig::uniform(2, 1 << 12), NullMemory).unwrap();
//! let ext = heap.alloc(&AllocRequest::new(9, DomId(1))).unwrap();
//! assert_eq!(ext.frames(), 512);
//! heap.free(ext.mfn, 9, DomId(1)).unwrap();
//! // The freed frames are dirty until a scrubber visits them.
//! assert_eq!(heap.stats().free_dirty, 512);
//! heap.scrub_step(0, u64::MAX, &scrubheap::NeverPreempt).unwrap();
//! assert_eq!(heap.stats().free_dirty, 0);
//! heap.check_invariants().unwrap();
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

/// `kind()` for an error enum whose variants all have named fields: the variant's name, as
/// [`HeapError::kind`] returns it (the op log and the C status map key on it). The names
/// are written once, `stringify!` keeps each kind equal to its variant's name, and the
/// match is exhaustive, so a variant added to the enum and not to the list fails to build.
macro_rules! variant_kinds {
    ($ty:ident { $($v:ident),+ $(,)? }) => {
        impl $ty {
            /// The variant's name (`"InvalidOrder"`, `"NotAllocated"`, ...): what
            /// [`crate::HeapError::kind`] returns for it.
            pub fn kind(&self) -> &'static str {
                match self {
                    $($ty::$v { .. } => stringify!($v),)+
                }
            }
        }
    };
}

mod at;
mod blocker;
mod chunk;
mod claims;
mod config;
mod counting;
mod dirty;
mod error;
mod gate;
mod heap;
mod invariants;
mod memory;
mod node;
mod observe;
mod offline;
mod online;
mod pcpu;
mod pin;
mod policy;
mod preempt;
mod range;
mod reserve;
mod scrub;
mod stats;
mod sync;
#[cfg(any(test, feature = "testing"))]
mod testing;
mod ticket;
mod types;
mod work;

pub use blocker::{BlockReason, Blocker, OfflineError, OfflineStop};
pub use chunk::{
    node_metadata_bound, BLOCK_FRAMES, BLOCK_ORDER, DIRECTORY_ENTRY_BYTES, METADATA_BITS_PER_FRAME, TABLE_BYTES,
};
pub use claims::{Claim, ClaimError, ClaimTarget};
pub use config::{HeapConfig, NodeSpec};
pub use counting::{CountingMemory, CountingMigrator, CountingPreempt, SectionCounter};
pub use error::{FrameUse, HeapError, InvariantViolation};
pub use heap::{AllocRequest, ChunkInfo, ChunkState, Extent, Heap, NodePref};
pub use memory::{FrameMemory, NullMemory};
pub use node::{largest_order, FreeError};
pub use observe::LockObserver;
pub use offline::{
    Broken, Deadline, NoDeadline, OfflineJob, Offlined, StepBudget, CHUNKS_PER_STEP, MAX_BLOCKERS, MAX_BUSY_POLLS,
};
pub use online::OnlineJob;
pub use pcpu::{FAST_ORDERS, MAX_CPUS, RESERVE_OWNER};
pub use pin::{MetadataMigrator, Migrator, NoMigration};
pub use policy::{Policy, UnknownPolicy};
pub use preempt::{BatchLimit, NeverPreempt, Preempt};
pub use range::{PinJob, RangeJob, RangeOp};
pub use stats::{HeapStats, NodeStats, ScrubBytes, ZoneStats};
#[cfg(any(test, feature = "testing"))]
pub use testing::{one_error_of_each_kind, TestMemory, TestRng};
pub use ticket::{AllocStart, ScrubTicket, MAX_WAIT_POLLS};
pub use types::{DomId, Mfn, RangeError, Zone, MAX_ORDER};
