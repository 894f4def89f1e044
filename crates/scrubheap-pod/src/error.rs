//! PoD's typed errors. Every refused operation leaves the heap and the guests unchanged,
//! except [`PodError::Exhausted`], which reports a guest's crash.

use scrubheap::{DomId, HeapError};

/// Why a populate-on-demand operation was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PodError {
    /// The heap refused (an unknown node, an order above the heap's largest, out of
    /// memory, claims of other domains, ...).
    #[error(transparent)]
    Heap(#[from] HeapError),
    /// An operation on a domain that is not a PoD guest.
    #[error("{dom} is not a populate-on-demand guest: create it with Pods::create (a `pod` line) first")]
    UnknownDomain {
        /// The domain.
        dom: DomId,
    },
    /// Creating a PoD guest that already exists.
    #[error("{dom} is already a populate-on-demand guest: destroy it first or use another domain id")]
    DomainExists {
        /// The domain.
        dom: DomId,
    },
    /// A p2m size of zero, or beyond [`crate::POD_MAX_PAGES_PER_FRAME`] per heap frame.
    #[error("PoD guest {dom}: max_pages {max_pages} must be between 1 and {limit} ({per} per heap frame)", per = crate::POD_MAX_PAGES_PER_FRAME)]
    BadMaxPages {
        /// The domain.
        dom: DomId,
        /// The size asked for.
        max_pages: u64,
        /// The largest the heap allows.
        limit: u64,
    },
    /// A guest frame range beyond the guest's p2m.
    #[error(
        "gfn {gfn:#x} order {order} of {dom} is beyond its max_pages {max_pages}: guest frames are 0..{max_pages}"
    )]
    GfnOutOfRange {
        /// The domain.
        dom: DomId,
        /// First guest frame given.
        gfn: u64,
        /// Order given.
        order: u8,
        /// Size of the guest's p2m.
        max_pages: u64,
    },
    /// A guest frame range whose first frame is not a multiple of its size.
    #[error("gfn {gfn:#x} of {dom} is not aligned to order {order}: use a gfn that is a multiple of 2^{order}")]
    Unaligned {
        /// The domain.
        dom: DomId,
        /// First guest frame given.
        gfn: u64,
        /// Order given.
        order: u8,
    },
    /// A PoD target above the guest's maximum.
    #[error(
        "target {target} of {dom} is above its max_pages {max_pages}: a guest cannot have more memory than its p2m"
    )]
    TargetTooLarge {
        /// The domain.
        dom: DomId,
        /// Target given.
        target: u64,
        /// Size of the guest's p2m.
        max_pages: u64,
    },
    /// A cache growth the free memory of the heap's Normal zones cannot cover (PoD pages
    /// are unmovable, so the Movable zones do not count).
    #[error("{dom} needs {needed} more frames for its PoD cache but the Normal zones have only {free} free: free memory or lower the target")]
    OutOfMemory {
        /// The domain.
        dom: DomId,
        /// Frames the growth needs.
        needed: u64,
        /// Free frames of the Normal zones of every node.
        free: u64,
    },
    /// A touch of a guest frame that was ballooned out.
    #[error("gfn {gfn:#x} of {dom} is not mapped (ballooned out): the guest gave it back")]
    NotMapped {
        /// The domain.
        dom: DomId,
        /// The guest frame.
        gfn: u64,
    },
    /// An operation on a PoD guest that has crashed.
    #[error("{dom} crashed out of populate-on-demand memory (touching gfn {gfn:#x}): destroy it")]
    Crashed {
        /// The domain.
        dom: DomId,
        /// The guest frame whose touch crashed it.
        gfn: u64,
    },
    /// A touch found no page in the guest's cache and no zeroed page to reclaim: the guest
    /// has crashed and its memory is back in the heap.
    #[error("{dom} is out of populate-on-demand memory touching gfn {gfn:#x}: it has crashed and its pages are back in the heap (its balloon driver must give back max_pages - target pages, or raise its target)")]
    Exhausted {
        /// The domain.
        dom: DomId,
        /// The guest frame whose touch found nothing.
        gfn: u64,
    },
}

impl PodError {
    /// Whether the refusal is for lack of memory: the Normal zones' free frames, the
    /// heap's, or what other domains' claims leave. A toolstack counts these as refused
    /// guests; anything else is a caller's mistake or a bug.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(
            self,
            PodError::OutOfMemory { .. }
                | PodError::Heap(HeapError::OutOfMemory { .. } | HeapError::ClaimedByOthers { .. })
        )
    }
}

/// A broken invariant of the PoD layer, found by [`crate::Pods::check_invariants`]: a bug.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("PoD invariant violated: {0}")]
pub struct PodViolation(pub alloc::string::String);
