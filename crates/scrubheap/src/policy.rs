//! Scrubbing policies: the same heap run the way other systems run theirs, so comparisons
//! are side by side on the same work.

use core::fmt;
use core::str::FromStr;

/// How and when freed memory is scrubbed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// Scrub on free, synchronously (Xen before 4.10, Linux `init_on_free`).
    Sync,
    /// Scrub on allocation only, nothing in the background (Linux `init_on_alloc`).
    Alloc,
    /// Idle scrubbing, and an allocation that meets dirty memory scrubs every frame it
    /// hands out in place in one go, with no preemption point (Xen 4.10 and later: a
    /// 1 GiB extent is 262,144 pages without a break). Prefers a larger clean chunk to an
    /// exact dirty fit, as Xen does.
    Xen,
    /// As `Xen`, but dirty allocations are capped at 2 MiB (order 9 with 4 KiB frames,
    /// order 7 with 16 KiB ones): larger requests take clean memory or fail, so the caller
    /// falls back to smaller extents.
    XenCap2m,
    /// The scrubheap design: idle scrubbing, preemptible in-place scrubbing of only the
    /// frames handed out, exact fits first.
    #[default]
    Scrubheap,
}

impl Policy {
    /// All policies, in a stable order.
    pub const ALL: [Policy; 5] = [Policy::Sync, Policy::Alloc, Policy::Xen, Policy::XenCap2m, Policy::Scrubheap];

    /// The policy's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Sync => "sync",
            Policy::Alloc => "alloc",
            Policy::Xen => "xen",
            Policy::XenCap2m => "xen-cap2m",
            Policy::Scrubheap => "scrubheap",
        }
    }

    /// Whether a free scrubs the frames before they are free (the `sync` policy).
    pub fn scrubs_on_free(self) -> bool {
        self == Policy::Sync
    }

    /// Whether idle CPUs scrub free memory under this policy.
    pub fn background_scrub(self) -> bool {
        matches!(self, Policy::Xen | Policy::XenCap2m | Policy::Scrubheap)
    }

    /// Whether an in-place scrub of the frames handed out runs in one go, with no
    /// preemption point (the xen policies), rather than a batch at a time.
    pub fn whole_chunk_in_place(self) -> bool {
        matches!(self, Policy::Xen | Policy::XenCap2m)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name was not one of the policies.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy '{0}': use one of sync, alloc, xen, xen-cap2m, scrubheap")]
pub struct UnknownPolicy(pub alloc::string::String);

impl FromStr for Policy {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| UnknownPolicy(s.into()))
    }
}
