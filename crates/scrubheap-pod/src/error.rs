//! PoD's typed errors. Every refused operation leaves the heap and the guests unchanged,
//! except [`PodError::Exhausted`], which reports a guest's crash.

use scrubheap::{ClaimError, DomId, HeapError};

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
    /// A cache growth the Normal zones could cover, but not beside other domains' claims:
    /// each node gives at most what the claims gate leaves this guest there.
    #[error("{dom} needs {needed} more frames for its PoD cache; the Normal zones have {free} free but other domains' claims leave it only {reach}: cancel or shrink claims, or lower the target")]
    ClaimedNormal {
        /// The domain.
        dom: DomId,
        /// Frames the growth needs.
        needed: u64,
        /// Free frames of the Normal zones of every node.
        free: u64,
        /// Of those, what the claims gate leaves this domain, node by node.
        reach: u64,
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
    /// A stable name for the error, for counting errors by kind (the op log's
    /// `errors {Kind: count}` map): `Pod` + the variant's name (`"PodExhausted"`, ...), or
    /// the heap's [`HeapError::kind`] for [`PodError::Heap`]. It never changes for an
    /// existing variant.
    pub fn kind(&self) -> &'static str {
        match self {
            PodError::Heap(h) => h.kind(),
            PodError::UnknownDomain { .. } => "PodUnknownDomain",
            PodError::DomainExists { .. } => "PodDomainExists",
            PodError::BadMaxPages { .. } => "PodBadMaxPages",
            PodError::GfnOutOfRange { .. } => "PodGfnOutOfRange",
            PodError::Unaligned { .. } => "PodUnaligned",
            PodError::TargetTooLarge { .. } => "PodTargetTooLarge",
            PodError::OutOfMemory { .. } => "PodOutOfMemory",
            PodError::ClaimedNormal { .. } => "PodClaimedNormal",
            PodError::NotMapped { .. } => "PodNotMapped",
            PodError::Crashed { .. } => "PodCrashed",
            PodError::Exhausted { .. } => "PodExhausted",
        }
    }

    /// Whether the refusal is for lack of memory: the Normal zones' free frames, the
    /// heap's, or what other domains' claims leave. A toolstack counts these as refused
    /// guests; anything else is a caller's mistake or a bug.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(
            self,
            PodError::OutOfMemory { .. }
                | PodError::ClaimedNormal { .. }
                | PodError::Heap(HeapError::OutOfMemory { .. } | HeapError::Claim(ClaimError::ClaimedByOthers { .. }))
        )
    }
}

/// A broken invariant of the PoD layer, found by [`crate::Pods::check_invariants`]: a bug.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("PoD invariant violated: {0}")]
pub struct PodViolation(pub alloc::string::String);

#[cfg(test)]
mod tests {
    use super::PodError;
    use alloc::format;
    use scrubheap::{DomId, FreeError, HeapError, Mfn};

    /// The kind is `Pod` + the variant's name, as the `Debug` text starts with it; a heap
    /// error keeps the heap's kind.
    #[test]
    fn kinds_are_pod_and_the_variant_name() {
        let d = DomId(1);
        let all = [
            PodError::UnknownDomain { dom: d },
            PodError::DomainExists { dom: d },
            PodError::BadMaxPages { dom: d, max_pages: 0, limit: 4 },
            PodError::GfnOutOfRange { dom: d, gfn: 9, order: 0, max_pages: 4 },
            PodError::Unaligned { dom: d, gfn: 1, order: 1 },
            PodError::TargetTooLarge { dom: d, target: 9, max_pages: 4 },
            PodError::OutOfMemory { dom: d, needed: 9, free: 4 },
            PodError::NotMapped { dom: d, gfn: 1 },
            PodError::Crashed { dom: d, gfn: 1 },
            PodError::Exhausted { dom: d, gfn: 1 },
        ];
        for e in &all {
            let dbg = format!("{e:?}");
            let k = e.kind();
            assert!(k.starts_with("Pod"), "{k}");
            assert!(dbg.starts_with(&k[3..]), "{dbg} is not of kind {k}");
            assert!(dbg[k.len() - 3..].starts_with(' '), "{dbg}: kind {k}");
        }
        assert_eq!(PodError::Exhausted { dom: d, gfn: 1 }.kind(), "PodExhausted");
        let h = HeapError::Free(FreeError::NotAllocated { mfn: Mfn(3) });
        assert_eq!(PodError::Heap(h.clone()).kind(), h.kind());
    }
}
