//! Chunk metadata. Each frame has one byte, non-zero only at a chunk head, holding the
//! chunk's state and order; absorbing a buddy is clearing its head byte. What only some
//! chunks need lives in per-chunk records kept by [`crate::node::NodeState`]: an
//! [`Owned`] record per allocated or pending chunk (owner, pins, flags), and an entry in
//! one free set per zone, dirtiness and order per free chunk.

use crate::types::{DomId, MAX_ORDER};

/// State of a chunk, stored at its head.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum State {
    /// Not a chunk head.
    None = 0,
    /// Free, in a clean or dirty free set.
    Free = 1,
    /// Held by an owner.
    Allocated = 2,
    /// Taken out of the free sets by a scrubber that is zeroing it outside the lock.
    Scrubbing = 3,
    /// Taken out of the free sets by an offline in progress.
    Isolated = 4,
    /// Removed from service by an offline.
    Offline = 5,
    /// Removed from service because the frame is broken.
    Broken = 6,
    /// Reserved for an owner by a pending allocation whose frames are still being
    /// scrubbed (a scrub ticket); handed over when every frame is clean.
    Pending = 7,
}

/// No link / no dirty frame.
pub(crate) const NONE: u32 = u32::MAX;

const ORDER_BITS: u32 = 5;
const ORDER_MASK: u8 = (1 << ORDER_BITS) - 1;

// Every order fits the order bits, every state the bits above them: one byte a frame.
const _: () = assert!(MAX_ORDER as u32 <= ORDER_MASK as u32);
const _: () = assert!((State::Pending as u32) < 1 << (8 - ORDER_BITS));

/// A frame's byte: `state << 5 | order` at a head, 0 elsewhere.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HeadByte(u8);

impl HeadByte {
    /// The byte of a head of `state` (not [`State::None`]) and `order`.
    pub fn new(state: State, order: u8) -> HeadByte {
        debug_assert!(state != State::None && order <= MAX_ORDER);
        HeadByte(((state as u8) << ORDER_BITS) | order)
    }
    pub fn state(self) -> State {
        match self.0 >> ORDER_BITS {
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
    pub fn is_head(self) -> bool {
        self.0 != 0
    }
    pub fn order(self) -> u8 {
        self.0 & ORDER_MASK
    }
}

/// Allocated: a sealed allocation (see [`crate::AllocRequest::sealed`]): the ordinary
/// free and pin refuse it; only [`crate::Heap::free_sealed`] gives it back. Never on a
/// movable allocation.
pub(crate) const F_SEALED: u8 = 1 << 0;
/// Allocated: the allocation is movable (may be migrated by offline).
pub(crate) const F_MOVABLE: u8 = 1 << 1;
/// Allocated: frames being migrated (a pin or an offline moves them); the owner may not
/// free or pin them until the move is done. On a destination chunk, its dirty bits stay
/// until the copy succeeds, so a refused move gives the frames back exactly as they were.
pub(crate) const F_MIGRATING: u8 = 1 << 2;
/// Allocated (order 0 only): the frame is broken and leaves service when it is freed.
pub(crate) const F_BROKEN: u8 = 1 << 3;

/// The record of an allocated or pending chunk, keyed by its head.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Owned {
    /// Who holds it (or will, for a pending chunk).
    pub owner: DomId,
    /// Long-term pins (allocated chunks only).
    pub pins: u32,
    /// `F_*` flags (allocated chunks only).
    pub flags: u8,
}

impl Owned {
    pub fn flag(&self, f: u8) -> bool {
        self.flags & f != 0
    }
    pub fn set_flag(&mut self, f: u8, on: bool) {
        if on {
            self.flags |= f;
        } else {
            self.flags &= !f;
        }
    }
}

/// Bits of a frame's head metadata.
pub(crate) const HEAD_BITS: usize = core::mem::size_of::<HeadByte>() * 8;
