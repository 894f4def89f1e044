//! Chunk records. Only the head frame of a chunk has a record ([`Slot`]); every other
//! frame reads as blank, so absorbing a buddy is clearing its head.
//!
//! Records live in a per-2 MiB-block directory ([`Records`], blocks of [`BLOCK_FRAMES`]
//! frames aligned in absolute frame numbers). A chunk of order [`BLOCK_ORDER`] or more
//! starts a block and keeps its record inline in that block's directory entry; a block
//! split into smaller chunks gets a dense table of one record per frame, made on demand
//! and freed as soon as the block holds no chunk smaller than a block (when it merges
//! back, or its last small chunk joins a larger one).
//!
//! Worst case, for a node of `F` frames of which `T` blocks hold a chunk smaller than a
//! block (`T <= ceil(F / 512) + 1`):
//!
//! ```text
//! bytes <= (ceil(F / 512) + 1) * DIRECTORY_ENTRY_BYTES     (24: inline record + table pointer)
//!        + ceil(F / 64) * 8 * (1 + 1/63)                    (dirty bitmap and its summaries)
//!        + (T + 1) * TABLE_BYTES                            (5,124: 10 bytes a frame + a count)
//! ```
//!
//! (the one more table is a blank spare kept from the last block that merged back), so
//! about 0.17 bytes a frame when no block is split, and at most about 10.2 when every
//! block is ([`node_metadata_bound`]). A split block's table is freed when the block
//! merges back, so the records follow the allocations in both directions. The dirty bits say which frames of a free chunk are dirty (its first dirty
//! frame is found through the bitmap's summaries, in a few word reads whatever the
//! order); a free record holds only a flag saying which list (clean or dirty) it is on.

use crate::types::{DomId, Off, MAX_ORDER};
use alloc::boxed::Box;
use alloc::vec::Vec;

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
    fn from_bits(b: u16) -> State {
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

/// Order of a directory block: a chunk of this order or more keeps its record inline.
pub const BLOCK_ORDER: u8 = 9;
/// Frames in a directory block (2 MiB of 4 KiB frames).
pub const BLOCK_FRAMES: u32 = 1 << BLOCK_ORDER;

const ORDER_MASK: u16 = 0x1f;
const STATE_SHIFT: u16 = 5;
const STATE_MASK: u16 = 0x7 << STATE_SHIFT;
/// Allocated: a sealed allocation (see [`crate::AllocRequest::sealed`]): the ordinary
/// free and pin refuse it; only [`crate::Heap::free_sealed`] gives it back. Never on a
/// movable allocation.
pub(crate) const F_SEALED: u16 = 1 << 8;
/// Allocated: the allocation is movable (may be migrated by offline).
pub(crate) const F_MOVABLE: u16 = 1 << 9;
/// Allocated: frames being migrated (a pin or an offline moves them); the owner may not
/// free or pin them until the move is done. On a destination chunk, its dirty bits stay
/// until the copy succeeds, so a refused move gives the frames back exactly as they were.
pub(crate) const F_MIGRATING: u16 = 1 << 10;
/// Allocated (order 0 only): the frame is broken and leaves service when it is freed.
pub(crate) const F_BROKEN: u16 = 1 << 11;
/// Free: the chunk has dirty frames and is on a dirty list (clean list when clear).
const F_DIRTY: u16 = 1 << 12;

/// One chunk's record: 10 bytes of content.
///
/// - free: `link` is the chunk's place on its free list (previous and next head, node
///   offsets), `info` its order, state and whether it is on the dirty list.
/// - allocated or pending: `owner`, `pins` (allocated only) and `info` order, state, flags.
/// - being scrubbed, isolated, offline, broken: `info` only.
/// - not a head: all zero.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Slot {
    /// Free: `[prev, next]`; owned: `[owner, pins]`.
    link: [u32; 2],
    info: u16,
}

impl Slot {
    /// A record for frames that start no chunk.
    pub const BLANK: Slot = Slot { link: [0, 0], info: 0 };

    pub fn head(state: State, order: u8) -> Slot {
        debug_assert!(order <= MAX_ORDER && state != State::None);
        Slot { link: [0, 0], info: (order as u16) | ((state as u16) << STATE_SHIFT) }
    }
    /// A free head off any list, on the dirty side when `dirty`.
    pub fn free(order: u8, dirty: bool) -> Slot {
        let mut s = Slot::head(State::Free, order);
        s.link = [NONE, NONE];
        s.set_flag(F_DIRTY, dirty);
        s
    }
    /// The head of a chunk allocated (or pending) to `owner`, unpinned.
    pub fn owned(state: State, order: u8, owner: DomId) -> Slot {
        debug_assert!(matches!(state, State::Allocated | State::Pending));
        let mut s = Slot::head(state, order);
        s.link[0] = owner.0;
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
        debug_assert!(order <= MAX_ORDER);
        self.info = (self.info & !ORDER_MASK) | order as u16;
    }
    pub fn flags(&self, f: u16) -> bool {
        self.info & f != 0
    }
    pub fn set_flag(&mut self, f: u16, on: bool) {
        if on {
            self.info |= f;
        } else {
            self.info &= !f;
        }
    }
    /// Owner of an allocated or pending chunk.
    pub fn owner(&self) -> DomId {
        debug_assert!(matches!(self.state(), State::Allocated | State::Pending));
        DomId(self.link[0])
    }
    /// Long-term pins of an allocated chunk.
    pub fn pins(&self) -> u32 {
        debug_assert_eq!(self.state(), State::Allocated);
        self.link[1]
    }
    pub fn set_pins(&mut self, pins: u32) {
        debug_assert_eq!(self.state(), State::Allocated);
        self.link[1] = pins;
    }
    /// Whether a free chunk is on the dirty list.
    pub fn listed_dirty(&self) -> bool {
        debug_assert_eq!(self.state(), State::Free);
        self.flags(F_DIRTY)
    }
    /// Previous head on a free chunk's list ([`NONE`] at the front).
    pub fn prev(&self) -> u32 {
        debug_assert_eq!(self.state(), State::Free);
        self.link[0]
    }
    /// Next head on a free chunk's list ([`NONE`] at the end).
    pub fn next(&self) -> u32 {
        debug_assert_eq!(self.state(), State::Free);
        self.link[1]
    }
    pub fn set_prev(&mut self, prev: u32) {
        debug_assert_eq!(self.state(), State::Free);
        self.link[0] = prev;
    }
    pub fn set_next(&mut self, next: u32) {
        debug_assert_eq!(self.state(), State::Free);
        self.link[1] = next;
    }
}

// The order field holds every order, and state, order and flags do not overlap.
const _: () = assert!(MAX_ORDER as u16 <= ORDER_MASK);
const _: () = assert!(ORDER_MASK & STATE_MASK == 0);
const _: () = assert!((State::Pending as u16) << STATE_SHIFT & !STATE_MASK == 0);
const _: () = assert!((F_SEALED | F_MOVABLE | F_MIGRATING | F_BROKEN | F_DIRTY) & (ORDER_MASK | STATE_MASK) == 0);
// A block is a chunk order, and chunks of every order up to MAX_ORDER are whole blocks
// or lie inside one (the two cases the directory keeps apart).
const _: () = assert!(BLOCK_ORDER <= MAX_ORDER);
// Offsets inside a block fit the table's index, and the head count its u16.
const _: () = assert!(BLOCK_FRAMES <= u16::MAX as u32);

/// The records of one block split into chunks smaller than a block: one per frame, blank
/// where no chunk starts. 10 bytes a frame (8 in `link`, 2 in `info`).
struct Table {
    link: [[u32; 2]; BLOCK_FRAMES as usize],
    info: [u16; BLOCK_FRAMES as usize],
    /// Frames of the block that start a chunk.
    heads: u16,
}

impl Table {
    /// A blank table, made on the heap (out of line: a 5 KiB temporary on the stack of
    /// every caller of [`Records::set`] would cost each call a stack probe).
    #[cold]
    #[inline(never)]
    fn new() -> Box<Table> {
        Box::new(Table { link: [[0; 2]; BLOCK_FRAMES as usize], info: [0; BLOCK_FRAMES as usize], heads: 0 })
    }
    #[inline]
    fn get(&self, i: usize) -> Slot {
        Slot { link: self.link[i], info: self.info[i] }
    }
    /// Writes the record of frame `i`; keeps the count of heads.
    #[inline]
    fn set(&mut self, i: usize, s: Slot) {
        let was = self.info[i] & STATE_MASK != 0;
        self.link[i] = s.link;
        self.info[i] = s.info;
        match (was, s.is_head()) {
            (false, true) => self.heads += 1,
            (true, false) => self.heads -= 1,
            _ => {}
        }
        debug_assert!(self.heads as u32 <= BLOCK_FRAMES);
    }
}

/// One block's directory entry: the inline record of the chunk of order
/// [`BLOCK_ORDER`] or more starting at the block (blank inside a larger chunk), or the
/// table of a split block (then the inline record is blank).
#[derive(Default)]
struct Block {
    head: Slot,
    table: Option<Box<Table>>,
}

/// Bytes of a directory entry.
pub const DIRECTORY_ENTRY_BYTES: usize = core::mem::size_of::<Block>();
/// Bytes of a split block's table.
pub const TABLE_BYTES: usize = core::mem::size_of::<Table>();

/// Bits of fixed heap metadata per frame, rounded up: one dirty bit and a share of the
/// block directory (its summaries, one bit per 64 frames and less above, are not counted
/// here). A split block adds [`TABLE_BYTES`] for its 512 frames while it is split. A
/// const assertion holds the fixed part at or below one byte a frame.
pub const METADATA_BITS_PER_FRAME: usize = 1 + (DIRECTORY_ENTRY_BYTES * 8).div_ceil(BLOCK_FRAMES as usize);

const _: () = assert!(METADATA_BITS_PER_FRAME <= 8, "fixed metadata must stay at or below 1 byte per frame");

/// The worst case of one node's chunk records and dirty bitmap, in bytes, for `frames`
/// frames of which `split_blocks` blocks are split into chunks smaller than a block (at
/// most `frames / 512 + 2`), a spare table included: the formula of this module's documentation. The node's own
/// small fixed parts (its list heads and counters, its work list) are not counted.
///
/// ```
/// use scrubheap::{node_metadata_bound, BLOCK_FRAMES};
/// let frames = 1u64 << 20;
/// // Fresh: under 0.2 bytes a frame; every block split: under 10.3.
/// assert!(node_metadata_bound(frames, 0) < frames / 5);
/// assert!(node_metadata_bound(frames, frames / BLOCK_FRAMES as u64) < frames * 103 / 10);
/// ```
pub fn node_metadata_bound(frames: u64, split_blocks: u64) -> u64 {
    let blocks = frames.div_ceil(BLOCK_FRAMES as u64) + 1;
    debug_assert!(split_blocks <= blocks, "{split_blocks} split of {blocks} blocks");
    let words = frames.div_ceil(64).max(1);
    // Each summary level holds a 64th of the one below, and at least one word.
    let summaries = words / 63 + 6;
    // The bitmap's list of levels: at most 8 vector headers of 24 bytes.
    let levels = 8 * 24;
    // Tables of the split blocks and one blank spare.
    let tables = (split_blocks + 1) * TABLE_BYTES as u64;
    let bytes = blocks * DIRECTORY_ENTRY_BYTES as u64 + (words + summaries) * 8 + levels + tables;
    debug_assert!(bytes >= frames / 8);
    bytes
}
// A fully split block costs less than the 12-byte slot a frame of the earlier layout did.
const _: () = assert!(TABLE_BYTES <= 11 * BLOCK_FRAMES as usize);

/// Every chunk record of one node, by node offset: the block directory and the tables of
/// split blocks. The only store of chunk heads; [`crate::node::NodeState`] reads and
/// changes it.
pub(crate) struct Records {
    /// `base % BLOCK_FRAMES`: node offset `off` is frame `lead + off` of the first block.
    lead: u32,
    blocks: Vec<Block>,
    /// Tables live now.
    tables: u32,
    /// One blank table kept from the last block that merged back, so a block split and
    /// merged again and again (one frame taken from a large chunk and given back) does
    /// not allocate each time.
    spare: Option<Box<Table>>,
}

impl Records {
    /// Blank records for `frames` frames starting at absolute frame `base`.
    pub fn new(base: u64, frames: u32) -> Records {
        let lead = (base % BLOCK_FRAMES as u64) as u32;
        let n = (lead as usize + frames as usize).div_ceil(BLOCK_FRAMES as usize);
        let mut blocks = Vec::with_capacity(n);
        blocks.resize_with(n, Block::default);
        debug_assert_eq!(blocks.capacity(), n);
        Records { lead, blocks, tables: 0, spare: None }
    }

    /// Block index and frame within the block of node offset `off`.
    #[inline]
    fn locate(&self, Off(off): Off) -> (usize, usize) {
        let at = self.lead as usize + off as usize;
        (at >> BLOCK_ORDER, at & (BLOCK_FRAMES as usize - 1))
    }

    /// The record of frame `off` (blank unless a chunk starts there).
    #[inline]
    pub fn get(&self, off: Off) -> Slot {
        let (b, i) = self.locate(off);
        let blk = &self.blocks[b];
        match &blk.table {
            Some(t) => t.get(i),
            None if i == 0 => blk.head,
            None => Slot::BLANK,
        }
    }

    /// Whether the block holding `off` is split (has a table): a chunk starting in it is
    /// smaller than a block. Otherwise `off` lies in a chunk of a block or more.
    #[inline]
    pub fn split(&self, off: Off) -> bool {
        self.blocks[self.locate(off).0].table.is_some()
    }

    /// Writes the record of frame `off`: a table is made when a chunk smaller than a
    /// block starts in an unsplit block, and dropped when its block no longer holds one.
    #[inline]
    pub fn set(&mut self, off: Off, s: Slot) {
        let (b, i) = self.locate(off);
        let small = s.is_head() && s.order() < BLOCK_ORDER;
        debug_assert!(!s.is_head() || small || i == 0, "a chunk of a block or more starts a block");
        let blk = &mut self.blocks[b];
        match &mut blk.table {
            Some(t) => {
                t.set(i, s);
                if t.heads <= 1 {
                    self.merge_table(b);
                }
            }
            None if small => self.split_block(b, i, s),
            None if i == 0 => blk.head = s,
            None => debug_assert!(!s.is_head()),
        }
        debug_assert_eq!(self.get(off), s);
    }

    /// Gives block `b` a table (the spare if there is one) holding its inline record and
    /// `s` at frame `i`.
    #[inline(never)]
    fn split_block(&mut self, b: usize, i: usize, s: Slot) {
        let blk = &mut self.blocks[b];
        debug_assert!(blk.table.is_none() && s.is_head());
        let mut t = self.spare.take().unwrap_or_else(Table::new);
        debug_assert_eq!(t.heads, 0, "a spare table is blank");
        t.set(0, blk.head);
        t.set(i, s);
        blk.head = Slot::BLANK;
        blk.table = Some(t);
        self.tables += 1;
    }

    /// Drops block `b`'s table (keeping it as the spare if there is none) when the block
    /// holds no chunk smaller than a block: no head, or only a large one at its start,
    /// which moves inline.
    #[inline(never)]
    fn merge_table(&mut self, b: usize) {
        let blk = &mut self.blocks[b];
        let Some(t) = &mut blk.table else { return };
        let first = t.get(0);
        let only_large = t.heads == 1 && first.is_head() && first.order() >= BLOCK_ORDER;
        if t.heads != 0 && !only_large {
            return;
        }
        // Every other record of the table is blank: clearing the first blanks it.
        t.set(0, Slot::BLANK);
        debug_assert_eq!(t.heads, 0);
        blk.head = first;
        let t = blk.table.take();
        if self.spare.is_none() {
            self.spare = t;
        }
        self.tables -= 1;
    }

    /// Changes the record of frame `off` in place (never whether it is a head or its order).
    #[inline]
    pub fn update(&mut self, off: Off, f: impl FnOnce(&mut Slot)) {
        let (b, i) = self.locate(off);
        let blk = &mut self.blocks[b];
        match &mut blk.table {
            Some(t) => {
                let mut s = t.get(i);
                let (head, order) = (s.is_head(), s.order());
                f(&mut s);
                debug_assert!(s.is_head() == head && s.order() == order);
                t.link[i] = s.link;
                t.info[i] = s.info;
            }
            None => {
                debug_assert_eq!(i, 0, "only a block's first frame has an inline record");
                f(&mut blk.head);
            }
        }
    }

    /// Split blocks (those with a table) now.
    pub fn tables(&self) -> u32 {
        self.tables
    }

    /// Bytes held: the directory's capacity and every table.
    pub fn bytes(&self) -> usize {
        let tables = self.tables as usize + self.spare.is_some() as usize;
        let bytes = self.blocks.capacity() * DIRECTORY_ENTRY_BYTES + tables * TABLE_BYTES;
        debug_assert!(self.tables as usize <= self.blocks.len());
        bytes
    }

    /// Checks that every table holds a chunk smaller than a block and agrees with the
    /// count of tables.
    pub fn check(&self) -> Result<(), alloc::string::String> {
        let mut tables = 0;
        for (b, blk) in self.blocks.iter().enumerate() {
            let Some(t) = &blk.table else { continue };
            tables += 1;
            let heads = (0..BLOCK_FRAMES as usize).filter(|&i| t.get(i).is_head()).count();
            let small = (0..BLOCK_FRAMES as usize).any(|i| t.get(i).is_head() && t.get(i).order() < BLOCK_ORDER);
            if heads != t.heads as usize || !small || blk.head != Slot::BLANK {
                return Err(alloc::format!("block {b}'s table counts {} heads, holds {heads}, small {small}", t.heads));
            }
        }
        if tables != self.tables {
            return Err(alloc::format!("{tables} tables live, {} counted", self.tables));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_lives_exactly_while_its_block_holds_a_small_chunk() {
        let mut r = Records::new(0, 2 * BLOCK_FRAMES);
        r.set(Off(0), Slot::free(10, false));
        assert_eq!((r.tables(), r.get(Off(0)).order()), (0, 10));
        // Split the order-10 chunk down to order 8 at 0: a table for block 0 only.
        r.set(Off(BLOCK_FRAMES), Slot::free(9, false));
        r.set(Off(256), Slot::free(8, true));
        assert_eq!(r.tables(), 1);
        assert_eq!(r.get(Off(0)).order(), 10, "the head being split moves into the table");
        r.set(Off(0), Slot::free(8, false));
        assert!(r.split(Off(0)) && !r.split(Off(BLOCK_FRAMES)));
        r.check().unwrap();
        // Merge back: clear the buddy, then write the order-9 head.
        r.set(Off(256), Slot::BLANK);
        assert_eq!(r.tables(), 1, "the block still holds its order-8 chunk");
        r.set(Off(0), Slot::free(9, false));
        assert_eq!((r.tables(), r.get(Off(0)).order(), r.get(Off(256))), (0, 9, Slot::BLANK));
        r.check().unwrap();
        assert_eq!(r.bytes(), 2 * DIRECTORY_ENTRY_BYTES + TABLE_BYTES, "one spare table kept");
        // Splitting again reuses the spare: still one table's bytes.
        r.set(Off(256), Slot::free(8, false));
        r.set(Off(0), Slot::free(8, false));
        assert_eq!((r.tables(), r.bytes()), (1, 2 * DIRECTORY_ENTRY_BYTES + TABLE_BYTES));
        r.check().unwrap();
    }

    #[test]
    fn records_name_what_they_hold() {
        let mut s = Slot::owned(State::Allocated, 3, DomId(7));
        s.set_pins(2);
        assert_eq!((s.owner(), s.pins(), s.order(), s.state()), (DomId(7), 2, 3, State::Allocated));
        let mut f = Slot::free(0, true);
        f.set_next(5);
        assert_eq!((f.prev(), f.next(), f.listed_dirty()), (NONE, 5, true));
        assert!(!Slot::BLANK.is_head());
    }
}
