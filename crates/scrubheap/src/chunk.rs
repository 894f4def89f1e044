//! Per-frame metadata slots. Only the head frame of a chunk carries metadata; every other
//! slot is all-zero, so absorbing a buddy is clearing its head.

/// State of a chunk, stored at its head.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum State {
    /// Not a chunk head.
    None = 0,
    /// Free, on a clean or dirty free list.
    Free = 1,
    /// Held by an owner.
    Allocated = 2,
    /// Taken off the free lists by a scrubber that is zeroing it outside the lock.
    Scrubbing = 3,
    /// Taken off the free lists by an offline in progress.
    Isolated = 4,
    /// Removed from service by an offline.
    Offline = 5,
    /// Removed from service because the frame is broken.
    Broken = 6,
    /// Reserved for an owner by a pending allocation whose frames are still being
    /// scrubbed (a scrub ticket); handed over when every frame is clean.
    Pending = 7,
}

impl State {
    fn from_bits(b: u32) -> State {
        match b {
            1 => State::Free,
            2 => State::Allocated,
            3 => State::Scrubbing,
            4 => State::Isolated,
            5 => State::Offline,
            6 => State::Broken,
            7 => State::Pending,
            _ => State::None,
        }
    }
}

/// No link / no dirty frame.
pub(crate) const NONE: u32 = u32::MAX;

const ORDER_MASK: u32 = 0x1f;
const STATE_SHIFT: u32 = 5;
const STATE_MASK: u32 = 0x7 << STATE_SHIFT;
/// Allocated: a sealed allocation (see [`crate::AllocRequest::sealed`]): the ordinary
/// free and pin refuse it; only [`crate::Heap::free_sealed`] gives it back. Never on a
/// movable allocation.
pub(crate) const F_SEALED: u32 = 1 << 8;
/// Allocated: the allocation is movable (may be migrated by offline).
pub(crate) const F_MOVABLE: u32 = 1 << 9;
/// Allocated: frames being migrated (a pin or an offline moves them); the owner may not
/// free or pin them until the move is done. On a destination chunk, its dirty bits stay
/// until the copy succeeds, so a refused move gives the frames back exactly as they were.
pub(crate) const F_MIGRATING: u32 = 1 << 30;
/// Allocated (order 0 only): the frame is broken and leaves service when it is freed.
pub(crate) const F_BROKEN: u32 = 1 << 31;
const FD_SHIFT: u32 = 10;
const FD_MASK: u32 = 0xf_ffff << FD_SHIFT;

/// One frame's metadata: 12 bytes.
///
/// - free: `a`/`b` are the free-list links (prev/next, node-relative frame offsets), and
///   `info` holds order, state and `first_dirty` (offset of the first dirty frame, exact).
/// - allocated: `a` is the owner, `b` the long-term pin count, `info` order, state, flags.
/// - not a head: all zero.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Slot {
    pub a: u32,
    pub b: u32,
    info: u32,
}

impl Slot {
    pub fn head(state: State, order: u8) -> Slot {
        Slot { a: 0, b: 0, info: (order as u32) | ((state as u32) << STATE_SHIFT) }
    }
    pub fn free(order: u8, first_dirty: u32) -> Slot {
        let mut s = Slot::head(State::Free, order);
        s.a = NONE;
        s.b = NONE;
        s.set_first_dirty(first_dirty);
        s
    }
    pub fn state(&self) -> State {
        State::from_bits((self.info & STATE_MASK) >> STATE_SHIFT)
    }
    pub fn is_head(&self) -> bool {
        self.state() != State::None
    }
    pub fn order(&self) -> u8 {
        (self.info & ORDER_MASK) as u8
    }
    pub fn set_order(&mut self, order: u8) {
        self.info = (self.info & !ORDER_MASK) | order as u32;
    }
    pub fn flags(&self, f: u32) -> bool {
        self.info & f != 0
    }
    pub fn set_flag(&mut self, f: u32, on: bool) {
        if on {
            self.info |= f;
        } else {
            self.info &= !f;
        }
    }
    /// Offset of the first dirty frame of a free chunk, or [`NONE`] if it is clean.
    pub fn first_dirty(&self) -> u32 {
        let v = (self.info & FD_MASK) >> FD_SHIFT;
        if v == 0 {
            NONE
        } else {
            v - 1
        }
    }
    pub fn set_first_dirty(&mut self, fd: u32) {
        let v = if fd == NONE { 0 } else { fd + 1 };
        debug_assert!(v <= 0xf_ffff);
        self.info = (self.info & !FD_MASK) | (v << FD_SHIFT);
    }
}

const _: () = assert!(core::mem::size_of::<Slot>() == 12);
// The order field holds every order, and `first_dirty + 1` every offset inside a chunk.
const _: () = assert!(crate::types::MAX_ORDER as u32 <= ORDER_MASK);
const _: () = assert!(1u32 << crate::types::MAX_ORDER < FD_MASK >> FD_SHIFT);
// Flags, state and first-dirty fields do not overlap.
const _: () = assert!(ORDER_MASK & STATE_MASK == 0 && (ORDER_MASK | STATE_MASK) & FD_MASK == 0);
const _: () = assert!((F_SEALED | F_MOVABLE | F_MIGRATING | F_BROKEN) & (ORDER_MASK | STATE_MASK | FD_MASK) == 0);

/// Bits of heap metadata per frame: one chunk slot plus one bit of the dirty bitmap (its
/// summary levels, one bit per 64 frames and less above, are not counted here).
/// A const assertion holds it at or below 16 bytes, so 1 TiB of 4 KiB frames needs at most 4 GiB.
pub const METADATA_BITS_PER_FRAME: usize = core::mem::size_of::<Slot>() * 8 + 1;

const _: () = assert!(METADATA_BITS_PER_FRAME <= 16 * 8, "metadata must stay at or below 16 bytes per frame");
