//! Basic names: frames, owners, orders, zones.

use core::fmt;

/// Largest order a chunk may have: 2^18 frames, 1 GiB at 4 KiB frames.
pub const MAX_ORDER: u8 = 18;

/// Most CPUs a heap's fast path may serve ([`crate::HeapConfig::cpus`]).
pub const MAX_CPUS: usize = 256;

/// Number of distinct orders (0..=MAX_ORDER).
pub(crate) const ORDERS: usize = MAX_ORDER as usize + 1;

/// Bits of fixed heap metadata per frame, rounded up: the frame's head code (6 bits, ten
/// to a 64-bit word: 6.4 bits), its dirty bit, and the dirty bitmap's summaries (one bit
/// per 64 frames, and less above): 7.42 bits. Per-chunk records (one per allocation or
/// other chunk that is not free, one per free chunk) come on top; see
/// [`crate::Heap::metadata_bytes`].
pub const METADATA_BITS_PER_FRAME: usize = FIXED_BITS_X4096.div_ceil(4096);

/// Bits of a frame's head code (see `chunk.rs`).
pub(crate) const CODE_BITS: usize = 6;
/// Head codes packed in one 64-bit word.
pub(crate) const PER_WORD: usize = 64 / CODE_BITS;

/// Fixed metadata bits a frame, times 4,096: the head code (64 bits per ten frames), the
/// dirty bit, and the dirty bitmap's summaries (one bit per 64 frames, one per 4,096,
/// and at most one more for the levels above).
const FIXED_BITS_X4096: usize = 4096 * 64 / PER_WORD + 4096 + 64 + 1 + 1;

const _: () = assert!(METADATA_BITS_PER_FRAME <= 8, "fixed metadata must stay at or below one byte per frame");

/// A machine frame number: the index of a frame in physical memory.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mfn(pub u64);

impl fmt::Display for Mfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
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
