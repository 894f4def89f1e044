//! Basic names: frames, owners, orders, zones.

use core::fmt;

/// Largest order a chunk may have: 2^18 frames, 1 GiB at 4 KiB frames.
pub const MAX_ORDER: u8 = 18;

/// Most CPUs a heap's fast path may serve ([`crate::HeapConfig::cpus`]).
pub const MAX_CPUS: usize = 256;

/// Number of distinct orders (0..=MAX_ORDER).
pub(crate) const ORDERS: usize = MAX_ORDER as usize + 1;

/// A machine frame number: the index of a frame in physical memory.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mfn(pub u64);

impl fmt::Display for Mfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A frame's offset inside its node (from the node's first frame): what a node's records,
/// lists and bitmap are indexed by. [`crate::node::NodeState::mfn`] turns one into a
/// machine frame number; a node holds at most 2^32 frames.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct Off(pub u32);

/// The owner of an allocation: a domain (guest), or any other user of frames.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DomId(pub u32);

impl fmt::Display for DomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dom{}", self.0)
    }
}

/// The zone a frame belongs to within its node.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Zone {
    /// Memory that may hold unmovable allocations.
    Normal = 0,
    /// Memory that only holds movable allocations, so it can be offlined.
    Movable = 1,
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Zone::Normal => "Normal",
            Zone::Movable => "Movable",
        })
    }
}
