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

impl Off {
    /// No offset: the end of a free list, or a list without a chunk.
    pub const NONE: Off = Off(u32::MAX);

    /// The machine frame of this offset in a node whose first frame is `base`: the one
    /// place a node offset becomes a frame number.
    #[inline]
    pub fn to_mfn(self, base: u64) -> Mfn {
        debug_assert!(self != Off::NONE, "no offset has a frame");
        Mfn(base + self.0 as u64)
    }

    /// The offset of `mfn` in a node whose first frame is `base` (`mfn` inside the node,
    /// so at most 2^32 frames after `base`).
    #[inline]
    pub fn of(mfn: Mfn, base: u64) -> Off {
        debug_assert!(mfn.0 >= base && mfn.0 - base < u32::MAX as u64, "{mfn} is not in the node at {base:#x}");
        Off((mfn.0 - base) as u32)
    }
}

/// The offset as a number of frames from the node's first (what invariant reports print).
impl fmt::Display for Off {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The offset `n` frames further on (`Off::NONE` is never moved).
impl core::ops::Add<u32> for Off {
    type Output = Off;
    #[inline]
    fn add(self, n: u32) -> Off {
        debug_assert!(self != Off::NONE && self.0.checked_add(n).is_some_and(|e| e < u32::MAX), "{self:?} + {n}");
        Off(self.0 + n)
    }
}

impl core::ops::AddAssign<u32> for Off {
    #[inline]
    fn add_assign(&mut self, n: u32) {
        *self = *self + n;
    }
}

/// Frames from an earlier offset up to this one (`a - b` with `b` at or before `a`).
impl core::ops::Sub<Off> for Off {
    type Output = u32;
    #[inline]
    fn sub(self, from: Off) -> u32 {
        debug_assert!(from <= self && self != Off::NONE, "{from:?} is after {self:?}");
        self.0 - from.0
    }
}

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

/// A request's frames, order, node or CPU do not describe a range this heap has: input
/// validation, refused before anything is looked at or changed. Fix the argument and call again.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
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
    /// A range of frames that is empty or spans more than one node.
    #[error("frames {first}+{count}: a range must hold at least one frame and lie inside one node")]
    BadRange {
        /// First frame.
        first: Mfn,
        /// Frames.
        count: u64,
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

variant_kinds!(RangeError {
    InvalidOrder,
    NoSuchNode,
    NoSuchCpu,
    OutOfRange,
    Unaligned,
    CrossesNode,
    BadRange,
    CrossesZone
});
