//! Chunk metadata. Each frame has a 6-bit head code (ten to a word), non-zero only at a
//! chunk head, saying whether the chunk is free and its order; absorbing a buddy is
//! clearing its head code. What only some chunks need lives in per-chunk records kept by
//! [`crate::node::NodeState`]: an [`Owned`] record per chunk that is not free (state,
//! owner, pins, flags), and an entry in one free set per zone, dirtiness and order per
//! free chunk.

use crate::dirty::touched;
use crate::types::{DomId, CODE_BITS, MAX_ORDER, PER_WORD};
use alloc::vec::Vec;

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

const CODE_MASK: u64 = (1 << CODE_BITS) - 1;

// Every head code (none, free of each order, held of each order) fits its bits.
const _: () = assert!(2 * (MAX_ORDER as usize + 1) < 1 << CODE_BITS);

/// A frame's head code: 0 for a frame that starts no chunk; `1 + order` for the head of
/// a free chunk; `1 + ORDERS + order` for the head of any other chunk, whose state is in
/// its [`Owned`] record.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HeadByte(u8);

impl HeadByte {
    const HELD: u8 = 1 + MAX_ORDER + 1;

    /// The head of a free chunk of `order`.
    pub fn free(order: u8) -> HeadByte {
        debug_assert!(order <= MAX_ORDER);
        HeadByte(1 + order)
    }
    /// The head of a chunk of `order` in any state but free (the state is in its record).
    pub fn held(order: u8) -> HeadByte {
        debug_assert!(order <= MAX_ORDER);
        HeadByte(Self::HELD + order)
    }
    pub fn is_head(self) -> bool {
        self.0 != 0
    }
    pub fn is_free(self) -> bool {
        self.0 != 0 && self.0 < Self::HELD
    }
    pub fn order(self) -> u8 {
        debug_assert!(self.is_head());
        if self.0 >= Self::HELD {
            self.0 - Self::HELD
        } else {
            self.0 - 1
        }
    }
}

/// Every frame's head code, ten to a word: 6.4 bits a frame.
#[derive(Clone, Debug)]
pub(crate) struct PackedHeads {
    words: Vec<u64>,
}

impl PackedHeads {
    /// `frames` codes, all 0.
    pub fn new(frames: u32) -> Self {
        PackedHeads { words: touched((frames as usize).div_ceil(PER_WORD), 0) }
    }
    #[inline]
    pub fn get(&self, i: u32) -> HeadByte {
        let i = i as usize;
        HeadByte(((self.words[i / PER_WORD] >> ((i % PER_WORD) * CODE_BITS)) & CODE_MASK) as u8)
    }
    #[inline]
    pub fn set(&mut self, i: u32, v: HeadByte) {
        let i = i as usize;
        let shift = (i % PER_WORD) * CODE_BITS;
        let w = &mut self.words[i / PER_WORD];
        *w = (*w & !(CODE_MASK << shift)) | ((v.0 as u64) << shift);
        debug_assert_eq!(self.get(i as u32), v);
    }
    /// Bytes held (the capacity).
    pub fn bytes(&self) -> usize {
        self.words.capacity() * 8
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

/// The record of a chunk that is not free (allocated, pending, being scrubbed, isolated,
/// offline, broken), keyed by its head.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Owned {
    /// Its state (never [`State::Free`] or [`State::None`]).
    pub state: State,
    /// Who holds it (or will, for a pending chunk); `DomId(0)` in other states.
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
