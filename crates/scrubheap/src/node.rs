//! One node's frames: chunk metadata, buddy free lists (clean and dirty, per zone and
//! order), the dirty bitmap and the counters. Everything here is node-relative (frame
//! offsets from the node's first frame, [`Off`]) and runs under the node's lock.

use crate::chunk::{Records, Slot, State, BLOCK_ORDER, F_BROKEN, F_MIGRATING, F_MOVABLE, F_SEALED, NONE};
use crate::dirty::DirtyBitmap;
use crate::types::{DomId, Mfn, Off, Zone, MAX_ORDER, ORDERS};
use crate::work::{Kind, Work};
use alloc::string::String;
use alloc::vec::Vec;

/// What a chunk head says: a copy, changed only through [`NodeState`]'s methods.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub state: State,
    pub order: u8,
    /// The owner of an allocated or pending chunk (`DomId(0)` for any other state).
    pub owner: DomId,
    /// Long-term pins of an allocated chunk.
    pub pins: u32,
    /// Allocated: may be migrated by an offline.
    pub movable: bool,
    /// Allocated: freed only through `free_sealed`.
    pub sealed: bool,
    /// Allocated: being moved by a pin or an offline.
    pub migrating: bool,
    /// Allocated, order 0: leaves service when freed.
    pub broken: bool,
}

/// What the chunks of a range held by one owner look like ([`NodeState::held_by`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    /// Some frame lies in the Movable zone.
    pub movable_zone: bool,
    /// Every chunk is movable.
    pub movable: bool,
    /// A pinned chunk, if any.
    pub pinned: Option<Off>,
    /// An unpinned chunk, if any.
    pub unpinned: Option<Off>,
}

/// How to choose among free chunks that can satisfy an order.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Pick {
    /// Smallest order first (an exact fit before any split); at one order, clean before
    /// dirty unless `prefer_dirty` (for callers that do not need scrubbed memory).
    SmallestFirst { prefer_dirty: bool },
    /// Any clean chunk (smallest first) before any dirty one, as Xen does.
    CleanFirst,
    /// Clean chunks only.
    CleanOnly,
}

pub(crate) struct NodeState {
    /// Absolute frame number of offset 0.
    pub base: u64,
    pub frames: u32,
    /// First offset of the Movable zone (`frames` when there is none).
    pub movable_from: Off,
    /// Chunk records: a per-block directory and the tables of split blocks.
    recs: Records,
    pub dirty: DirtyBitmap,
    /// List heads: `[zone][dirty][order]`.
    heads: [[[u32; ORDERS]; 2]; 2],
    /// Bit `o` set when list `[zone][dirty][o]` is non-empty.
    nonempty: [[u32; 2]; 2],
    /// Free frames (clean or dirty), on the free lists.
    pub free: u64,
    /// Dirty bits set in free chunks.
    pub free_dirty: u64,
    pub allocated: u64,
    pub offline: u64,
    /// Of the free frames, those in chunks a background scrubber holds (counted in `free`,
    /// their dirty bits in `free_dirty`).
    pub scrubbing: u64,
    /// Chunks being worked on outside the lock: background scrubs, sync frees, tickets.
    pub work: Vec<Work>,
    pub next_work_id: u64,
    /// Frames scrubbed in place on this node, per owner.
    pub in_place_by_owner: alloc::collections::BTreeMap<crate::types::DomId, u64>,
}

// The non-empty masks hold one bit per order.
const _: () = assert!(ORDERS <= u32::BITS as usize);

#[inline]
fn size(order: u8) -> u32 {
    1u32 << order
}

impl NodeState {
    pub fn new(base: u64, frames: u32, movable_from: Off, dirty: bool) -> Self {
        assert!(frames >= 1 && movable_from.0 <= frames, "a node of {frames} frames, Movable from {movable_from:?}");
        assert!(frames < u32::MAX, "a node offset fits below Off::NONE");
        let mut n = NodeState {
            base,
            frames,
            movable_from,
            recs: Records::new(base, frames),
            dirty: DirtyBitmap::new(frames),
            heads: [[[NONE; ORDERS]; 2]; 2],
            nonempty: [[0; 2]; 2],
            free: 0,
            free_dirty: 0,
            allocated: 0,
            offline: 0,
            scrubbing: 0,
            work: Vec::new(),
            next_work_id: 1,
            in_place_by_owner: alloc::collections::BTreeMap::new(),
        };
        n.carve(Off(0), movable_from, dirty);
        n.carve(movable_from, n.end(), dirty);
        assert_eq!(n.free, frames as u64);
        assert_eq!(n.free_dirty, if dirty { frames as u64 } else { 0 });
        n
    }

    /// Fills `[lo, hi)` with the largest naturally aligned free chunks.
    fn carve(&mut self, lo: Off, hi: Off, dirty: bool) {
        assert!(lo <= hi && hi <= self.end());
        let mut pos = lo;
        while pos < hi {
            let order = self.largest_order_at(pos, hi - pos);
            let fd = if dirty {
                self.dirty.set(pos, size(order));
                self.free_dirty += size(order) as u64;
                0
            } else {
                NONE
            };
            self.free += size(order) as u64;
            self.insert_free(pos, order, fd);
            pos += size(order);
        }
        assert_eq!(pos, hi, "the chunks cover the range exactly");
    }

    /// Largest order whose chunk starts at `off` (aligned in absolute frames) and fits in `room`.
    pub fn largest_order_at(&self, off: Off, room: u32) -> u8 {
        debug_assert!(room >= 1 && off.0 as u64 + room as u64 <= self.frames as u64);
        let o = largest_order(self.mfn(off).0, room as u64);
        debug_assert!(self.aligned(off, o) && size(o) <= room);
        o
    }

    pub fn zone_of(&self, off: Off) -> Zone {
        debug_assert!(self.inside(off), "offset {off:?} beyond the node's {} frames", self.frames);
        debug_assert!(self.movable_from <= self.end());
        if off >= self.movable_from {
            Zone::Movable
        } else {
            Zone::Normal
        }
    }

    /// Whether `off` is aligned to `order` in absolute frame numbers.
    pub fn aligned(&self, off: Off, order: u8) -> bool {
        debug_assert!(order <= MAX_ORDER);
        debug_assert!(off <= self.end(), "offset {off:?} beyond the node's {} frames", self.frames);
        self.mfn(off).0 & ((1u64 << order) - 1) == 0
    }

    /// Whether `[off, 2^order)` is an aligned chunk inside the node.
    pub fn fits(&self, off: Off, order: u8) -> bool {
        debug_assert!(order <= MAX_ORDER);
        let fits = self.aligned(off, order) && off.0 as u64 + size(order) as u64 <= self.frames as u64;
        debug_assert!(!fits || self.inside(off), "a chunk that fits starts inside the node");
        fits
    }

    /// Offset of the buddy of the chunk at `off` of `order`, if inside the node.
    pub fn buddy(&self, off: Off, order: u8) -> Option<Off> {
        debug_assert!(order < MAX_ORDER && self.aligned(off, order));
        let b = self.mfn(off).0 ^ (1u64 << order);
        let b = b.checked_sub(self.base).filter(|&b| b < self.frames as u64).map(|b| Off(b as u32));
        debug_assert!(b.is_none_or(|b| self.aligned(b, order) && b.0.abs_diff(off.0) == size(order)));
        b
    }

    /// Bytes of metadata this node holds: the capacities of its chunk records (block
    /// directory and split blocks' tables), dirty bitmap (with its summaries) and work
    /// list, and the node state itself.
    pub fn metadata_bytes(&self) -> u64 {
        let work = self.work.capacity() * core::mem::size_of::<Work>();
        let bytes = self.recs.bytes() + self.dirty.bytes() + work + core::mem::size_of::<NodeState>();
        assert!(bytes >= self.frames as usize / 8, "at least the dirty bits");
        assert!(bytes >= self.recs.tables() as usize * crate::chunk::TABLE_BYTES);
        bytes as u64
    }

    /// The frame number of node offset `off` (at most the node's end).
    #[inline]
    pub fn mfn(&self, off: Off) -> Mfn {
        debug_assert!(off <= self.end(), "offset {off:?} beyond the node's {} frames", self.frames);
        let m = off.to_mfn(self.base);
        debug_assert!(m.0 >= self.base);
        m
    }

    /// The node offset of `mfn`, a frame of this node (or its end).
    #[inline]
    pub fn off(&self, mfn: Mfn) -> Off {
        debug_assert!(mfn.0 >= self.base, "{mfn} is before the node at {:#x}", self.base);
        let off = Off::of(mfn, self.base);
        debug_assert!(off <= self.end(), "{mfn} is beyond the node's {} frames", self.frames);
        off
    }

    /// One past the node's last offset.
    #[inline]
    pub fn end(&self) -> Off {
        debug_assert!(self.frames >= 1 && self.frames < u32::MAX, "a node of 1..2^32-1 frames");
        debug_assert!(self.movable_from.0 <= self.frames, "the Movable zone starts inside the node or at its end");
        Off(self.frames)
    }

    /// Whether `off` is a frame of the node.
    #[inline]
    pub fn inside(&self, off: Off) -> bool {
        debug_assert!(self.frames < u32::MAX, "Off::NONE is never inside");
        let inside = off.0 < self.frames;
        debug_assert!(inside || off >= self.end());
        inside
    }

    // ---- chunk heads: the only code that reads or changes them ----

    /// The facts of the chunk head at `h`, or `None` if `h` starts no chunk.
    pub fn head_at(&self, h: Off) -> Option<Head> {
        debug_assert!(self.inside(h), "offset {h:?} beyond the node's {} frames", self.frames);
        let s = self.recs.get(h);
        if !s.is_head() {
            return None;
        }
        debug_assert!(s.order() <= MAX_ORDER && self.aligned(h, s.order()), "a head at {h:?} of order {}", s.order());
        let owned = matches!(s.state(), State::Allocated | State::Pending);
        let allocated = s.state() == State::Allocated;
        Some(Head {
            state: s.state(),
            order: s.order(),
            owner: if owned { s.owner() } else { DomId(0) },
            pins: if allocated { s.pins() } else { 0 },
            movable: allocated && s.flags(F_MOVABLE),
            sealed: allocated && s.flags(F_SEALED),
            migrating: allocated && s.flags(F_MIGRATING),
            broken: allocated && s.flags(F_BROKEN),
        })
    }

    /// The facts of the chunk head at `h`, which must be a head.
    pub fn head(&self, h: Off) -> Head {
        let head = self.head_at(h);
        debug_assert!(head.is_some(), "frame {h:?} starts no chunk");
        let head = head.expect("partition invariant: a chunk head");
        debug_assert!(head.order <= MAX_ORDER && h.0 as u64 + size(head.order) as u64 <= self.frames as u64);
        head
    }

    /// The state of the chunk head at `h`.
    #[inline]
    pub fn state(&self, h: Off) -> State {
        debug_assert!(self.inside(h), "offset {h:?} beyond the node's {} frames", self.frames);
        let s = self.recs.get(h);
        debug_assert!(s.is_head() || s == Slot::BLANK, "a record at {h:?} is a head or blank");
        s.state()
    }

    /// Whether frame `off` carries no metadata at all (inside a chunk, not its head).
    pub fn is_blank(&self, off: Off) -> bool {
        debug_assert!(self.inside(off), "offset {off:?} beyond the node's {} frames", self.frames);
        let blank = self.recs.get(off) == Slot::BLANK;
        debug_assert!(blank || self.recs.get(off).is_head());
        blank
    }

    /// Makes `h` the head of a chunk of `order` allocated to `owner`, unpinned.
    pub fn set_allocated(&mut self, h: Off, order: u8, owner: DomId, movable: bool, sealed: bool) {
        debug_assert!(!(movable && sealed), "a sealed allocation is never movable");
        debug_assert!(self.fits(h, order));
        let mut slot = Slot::owned(State::Allocated, order, owner);
        slot.set_flag(F_MOVABLE, movable);
        slot.set_flag(F_SEALED, sealed);
        self.recs.set(h, slot);
        debug_assert_eq!(self.head(h).owner, owner);
    }

    /// Makes `h` the head of a chunk of `order` reserved for `owner` by a scrub ticket.
    pub fn set_pending(&mut self, h: Off, order: u8, owner: DomId) {
        debug_assert!(self.fits(h, order));
        self.recs.set(h, Slot::owned(State::Pending, order, owner));
        debug_assert_eq!(self.head(h).state, State::Pending);
    }

    /// Makes `h` the head of a chunk of `order` in a state without owner or flags
    /// (being scrubbed, isolated, offline, broken).
    pub fn set_state(&mut self, h: Off, state: State, order: u8) {
        debug_assert!(matches!(state, State::Scrubbing | State::Isolated | State::Offline | State::Broken));
        debug_assert!(self.fits(h, order));
        self.recs.set(h, Slot::head(state, order));
        debug_assert_eq!(self.state(h), state);
    }

    /// Gives the free chunk head at `h`, already off its list, `state` (one without owner
    /// or flags, as [`NodeState::set_state`]), keeping its order: one write in place.
    pub fn restate_free(&mut self, h: Off, state: State) {
        debug_assert!(matches!(state, State::Scrubbing | State::Isolated | State::Offline | State::Broken));
        debug_assert_eq!(self.state(h), State::Free);
        self.recs.update(h, |s| *s = Slot::head(state, s.order()));
        debug_assert_eq!(self.state(h), state);
    }

    /// Forgets the head at `h` (its frames are about to join another chunk or the free
    /// lists through [`NodeState::release`] or [`NodeState::put_back`]).
    pub fn clear_head(&mut self, h: Off) {
        debug_assert!(self.state(h) != State::Free, "a free head leaves through unlink_free");
        self.recs.set(h, Slot::BLANK);
        debug_assert!(self.is_blank(h));
    }

    /// Marks (or unmarks) the allocated chunk at `h` as being migrated.
    pub fn set_migrating(&mut self, h: Off, on: bool) {
        debug_assert_eq!(self.state(h), State::Allocated);
        self.recs.update(h, |s| s.set_flag(F_MIGRATING, on));
        debug_assert_eq!(self.head(h).migrating, on);
    }

    /// Marks the allocated single frame at `h` to leave service when freed.
    pub fn set_broken_when_freed(&mut self, h: Off) {
        debug_assert_eq!(self.state(h), State::Allocated);
        debug_assert_eq!(self.recs.get(h).order(), 0, "only a single frame is marked broken");
        self.recs.update(h, |s| s.set_flag(F_BROKEN, true));
        debug_assert!(self.head(h).broken);
    }

    /// Sets the long-term pin count of the allocated chunk at `h`.
    pub fn set_pins(&mut self, h: Off, pins: u32) {
        debug_assert_eq!(self.state(h), State::Allocated);
        debug_assert!(pins == 0 || !self.recs.get(h).flags(F_SEALED), "a sealed allocation is never pinned");
        self.recs.update(h, |s| s.set_pins(pins));
        debug_assert_eq!(self.head(h).pins, pins);
    }

    /// Asks a background scrubber holding the chunk at `h` to hand it back after its
    /// current batch. Returns whether it had not been asked before.
    pub fn stop_background(&mut self, h: Off) -> bool {
        debug_assert_eq!(self.state(h), State::Scrubbing);
        let asked = match self.work.iter_mut().find(|w| w.head == h && w.kind == Kind::Background) {
            Some(w) if !w.stop => {
                w.stop = true;
                true
            }
            _ => false,
        };
        debug_assert!(!asked || self.work.iter().any(|w| w.head == h && w.stop));
        asked
    }

    /// Exact offset (from `h`) of the first dirty frame of the free chunk at `h`, or
    /// [`NONE`] if it is clean: its record says whether it is dirty, the bitmap's
    /// summaries where (a few word reads whatever the order).
    pub fn first_dirty(&self, h: Off) -> u32 {
        let s = self.recs.get(h);
        debug_assert_eq!(s.state(), State::Free);
        if !s.listed_dirty() {
            debug_assert_eq!(self.first_dirty_in(h, s.order()), NONE, "a clean record over dirty bits");
            return NONE;
        }
        let fd = self.first_dirty_in(h, s.order());
        debug_assert_ne!(fd, NONE, "a dirty record over clean bits");
        fd
    }

    /// Whether `owner` holds every frame of `[off, 2^order)`, each chunk sealed exactly
    /// when `sealed` and none being migrated: the one answer for free, pin and unpin.
    /// Describes the range; the caller decides what pins it accepts.
    pub fn held_by(&self, off: Off, order: u8, owner: DomId, sealed: bool) -> Result<Held, FreeError> {
        debug_assert!(self.fits(off, order));
        let end = off + size(order);
        let mut held = Held { movable_zone: false, movable: true, pinned: None, unpinned: None };
        let mut pos = off;
        while pos < end {
            let (h, o) = self.chunk_of(pos);
            let s = self.head(h);
            let first = pos == off;
            let beyond = FreeError::OrderTooLarge { mfn: self.mfn(off), order, owner, beyond: self.mfn(pos) };
            match s.state {
                State::Allocated if s.owner == owner => {}
                State::Allocated if first => {
                    return Err(FreeError::WrongOwner { mfn: self.mfn(off), owner, actual: s.owner })
                }
                State::Pending if first && s.owner == owner => {
                    return Err(FreeError::Busy { mfn: self.mfn(off), what: "still being scrubbed for its owner" })
                }
                _ if first => return Err(FreeError::NotAllocated { mfn: self.mfn(off) }),
                _ => return Err(beyond),
            }
            if s.migrating {
                return Err(FreeError::Busy { mfn: self.mfn(h), what: "being migrated" });
            }
            if s.sealed != sealed {
                let mfn = self.mfn(h.max(off));
                return Err(if sealed {
                    FreeError::NotSealed { mfn, owner }
                } else {
                    FreeError::Sealed { mfn, owner }
                });
            }
            held.movable_zone |= self.zone_of(h) == Zone::Movable;
            held.movable &= s.movable;
            if s.pins > 0 {
                held.pinned.get_or_insert(h);
            } else {
                held.unpinned.get_or_insert(h);
            }
            pos = h + size(o);
        }
        debug_assert!(held.pinned.is_some() || held.unpinned.is_some(), "a range holds at least one chunk");
        Ok(held)
    }

    /// The free chunks on list `[zone][dirty][order]`, most recently listed first.
    pub fn free_list(&self, zone: Zone, dirty: bool, order: u8) -> impl Iterator<Item = Off> + '_ {
        debug_assert!(order <= MAX_ORDER);
        let mut at = self.list_head(zone, dirty, order);
        core::iter::from_fn(move || {
            let cur = at;
            (cur != Off::NONE).then(|| {
                debug_assert_eq!(self.recs.get(cur).order(), order, "a chunk on the order-{order} list");
                at = Off(self.recs.get(cur).next());
                cur
            })
        })
    }

    /// Checks the free lists against the chunk heads: each listed chunk is free, of the
    /// list's zone, order and dirtiness, with a sound back link, and the non-empty masks
    /// agree. Returns how many chunks are listed (at most `free_chunks`, else a cycle).
    pub fn check_lists(&self, free_chunks: u64) -> Result<u64, String> {
        assert!(free_chunks <= self.frames as u64, "at most one free chunk a frame");
        let mut listed = 0u64;
        for z in [Zone::Normal, Zone::Movable] {
            for d in [false, true] {
                let mask = self.nonempty_mask(z, d);
                for o in 0..=MAX_ORDER {
                    let mut cur = self.list_head(z, d, o);
                    if (cur != Off::NONE) != (mask & (1 << o) != 0) {
                        return Err(alloc::format!("nonempty mask of {z}/{d}/{o} disagrees with the list"));
                    }
                    let mut prev = NONE;
                    while cur != Off::NONE {
                        if !self.inside(cur) {
                            return Err(alloc::format!(
                                "list {z}/dirty={d}/order {o} links to {cur:?}, outside the node"
                            ));
                        }
                        let s = self.recs.get(cur);
                        if s.state() != State::Free || s.order() != o || self.zone_of(cur) != z || s.listed_dirty() != d
                        {
                            return Err(alloc::format!(
                                "chunk at {} is on list {z}/dirty={d}/order {o} but is {:?} order {}",
                                cur.0,
                                s.state(),
                                s.order(),
                            ));
                        }
                        if (self.first_dirty_in(cur, o) != NONE) != d {
                            return Err(alloc::format!(
                                "chunk at {} on the dirty={d} list disagrees with its bits",
                                cur.0
                            ));
                        }
                        if s.prev() != prev {
                            return Err(alloc::format!("chunk at {} has a broken back link", cur.0));
                        }
                        listed += 1;
                        if listed > free_chunks {
                            return Err("free lists hold more entries than free chunks (a cycle?)".into());
                        }
                        prev = cur.0;
                        cur = Off(s.next());
                    }
                }
            }
        }
        self.recs.check()?;
        assert!(listed <= free_chunks, "the walk stops at a cycle");
        Ok(listed)
    }

    // ---- free lists ----

    fn list_of(&self, off: Off) -> (usize, usize, usize) {
        debug_assert!(self.inside(off), "offset {off:?} beyond the node's {} frames", self.frames);
        let s = self.recs.get(off);
        debug_assert!(s.state() == State::Free && s.order() <= MAX_ORDER, "only a free head is listed");
        (self.zone_of(off) as usize, s.listed_dirty() as usize, s.order() as usize)
    }

    /// Writes free record `slot` (off any list) at `off` and pushes it on the front of its
    /// list: one write of the record, its links in it (a scrub step's hot path).
    fn list_push(&mut self, off: Off, mut slot: Slot) {
        let (z, d, o) = (self.zone_of(off) as usize, slot.listed_dirty() as usize, slot.order() as usize);
        debug_assert!(self.fits(off, o as u8), "a listed chunk at {off:?} of order {o}");
        let old = self.heads[z][d][o];
        slot.set_prev(NONE);
        slot.set_next(old);
        self.recs.set(off, slot);
        if old != NONE {
            self.recs.update(Off(old), |s| s.set_prev(off.0));
        }
        self.heads[z][d][o] = off.0;
        self.nonempty[z][d] |= 1 << o;
        debug_assert_eq!(self.list_of(off), (z, d, o));
        debug_assert_eq!(self.list_head(self.zone_of(off), d == 1, o as u8), off);
    }

    fn list_remove(&mut self, off: Off) {
        // One read of the record: its list and its links.
        let s = self.recs.get(off);
        let (z, d, o) = (self.zone_of(off) as usize, s.listed_dirty() as usize, s.order() as usize);
        debug_assert_eq!(self.list_of(off), (z, d, o));
        let (prev, next) = (s.prev(), s.next());
        if prev == NONE {
            debug_assert_eq!(self.heads[z][d][o], off.0, "a chunk without a predecessor heads its list");
            self.heads[z][d][o] = next;
            if next == NONE {
                self.nonempty[z][d] &= !(1 << o);
            }
        } else {
            self.recs.update(Off(prev), |s| s.set_next(next));
        }
        if next != NONE {
            self.recs.update(Off(next), |s| s.set_prev(prev));
        }
        debug_assert!(self.heads[z][d][o] != off.0, "{off:?} left its list");
    }

    /// Writes a free head at `off` and puts it on its list (counters are the caller's);
    /// `first_dirty` says which list: the clean one for [`NONE`], else the dirty one.
    pub fn insert_free(&mut self, off: Off, order: u8, first_dirty: u32) {
        debug_assert!(self.fits(off, order));
        debug_assert_eq!(first_dirty == NONE, self.first_dirty_in(off, order) == NONE, "the list matches the bits");
        self.list_push(off, Slot::free(order, first_dirty != NONE));
        debug_assert_eq!(self.state(off), State::Free);
    }

    /// Takes a free chunk off its list; its head stays (state Free) for the caller to reuse.
    pub fn unlink_free(&mut self, off: Off) {
        debug_assert_eq!(self.state(off), State::Free);
        self.list_remove(off);
        debug_assert_eq!(self.state(off), State::Free);
    }

    /// Forgets the head of the free chunk at `h`, already off its list (its frames are
    /// about to be part of another chunk the caller makes).
    pub fn forget_free(&mut self, h: Off) {
        debug_assert_eq!(self.state(h), State::Free);
        self.recs.set(h, Slot::BLANK);
        debug_assert!(self.is_blank(h));
    }

    /// Makes `[off, 2^order)`, whose frames carry no head, one free chunk off the free
    /// lists (counted free by the caller), its record saying whether it is dirty.
    pub fn make_unlisted_free(&mut self, off: Off, order: u8) {
        debug_assert!(self.fits(off, order));
        debug_assert!(self.is_blank(off), "the caller cleared the range's heads");
        let fd = self.first_dirty_in(off, order);
        self.recs.set(off, Slot::free(order, fd != NONE));
        debug_assert_eq!(self.state(off), State::Free);
    }

    /// Lists the free piece `[off, 2^order)` (cut from a larger free chunk, its frames
    /// carrying no head) on the list its dirty bits say; counters are the caller's.
    pub fn list_free_piece(&mut self, off: Off, order: u8) {
        debug_assert!(self.fits(off, order));
        let fd = self.first_dirty_in(off, order);
        self.insert_free(off, order, fd);
        debug_assert_eq!(self.state(off), State::Free);
    }

    /// Head of list `[zone][dirty][order]`, for the invariant checker and scrubbers.
    pub fn list_head(&self, zone: Zone, dirty: bool, order: u8) -> Off {
        debug_assert!(order <= MAX_ORDER);
        let h = Off(self.heads[zone as usize][dirty as usize][order as usize]);
        debug_assert!(h == Off::NONE || self.recs.get(h).order() == order);
        h
    }

    /// Bit `o` set when list `[zone][dirty][o]` is non-empty.
    pub fn nonempty_mask(&self, zone: Zone, dirty: bool) -> u32 {
        let m = self.nonempty[zone as usize][dirty as usize];
        debug_assert!(m >> ORDERS == 0, "a bit per order only");
        debug_assert!(m == 0 || self.free > 0, "a listed chunk is free");
        m
    }

    /// Chooses a free chunk of at least `order` in `zone` and takes it off its list:
    /// `(head, its order)`.
    pub fn pick(&mut self, zone: Zone, order: u8, how: Pick) -> Option<(Off, u8)> {
        debug_assert!(order <= MAX_ORDER);
        let z = zone as usize;
        let at_least = !0u32 << order;
        let clean = self.nonempty[z][0] & at_least;
        let dirty = self.nonempty[z][1] & at_least;
        let (j, d) = match how {
            Pick::SmallestFirst { prefer_dirty } => {
                let any = clean | dirty;
                if any == 0 {
                    return None;
                }
                let j = any.trailing_zeros();
                let has_clean = clean & (1 << j) != 0;
                let has_dirty = dirty & (1 << j) != 0;
                (j, has_dirty && (prefer_dirty || !has_clean))
            }
            Pick::CleanFirst if clean != 0 => (clean.trailing_zeros(), false),
            Pick::CleanFirst if dirty != 0 => (dirty.trailing_zeros(), true),
            Pick::CleanFirst => return None,
            Pick::CleanOnly if clean != 0 => (clean.trailing_zeros(), false),
            Pick::CleanOnly => return None,
        };
        let head = Off(self.heads[z][d as usize][j as usize]);
        debug_assert_ne!(head, Off::NONE);
        self.list_remove(head);
        debug_assert!(j as u8 >= order && self.recs.get(head).order() == j as u8);
        debug_assert!(how != Pick::CleanOnly || !self.recs.get(head).listed_dirty());
        Some((head, j as u8))
    }

    /// Exact first dirty offset within `[off, off + 2^order)`.
    pub fn first_dirty_in(&self, off: Off, order: u8) -> u32 {
        debug_assert!(order <= MAX_ORDER && off.0 as u64 + size(order) as u64 <= self.frames as u64);
        let fd = self.dirty.first_set(off, size(order)).unwrap_or(NONE);
        debug_assert!(fd == NONE || fd < size(order));
        fd
    }

    /// Splits the free chunk at `head` (off its list) from `from` down to `to`, putting
    /// the upper halves back on the free lists; the lower part stays unlisted.
    pub fn split_free(&mut self, head: Off, from: u8, to: u8) {
        let mut o = from;
        // First dirty offset of the part still being split, [head, 2^o).
        debug_assert!(to <= from && self.recs.get(head).order() == from);
        let mut fd = self.first_dirty(head);
        while o > to {
            o -= 1;
            let upper = head + size(o);
            let ufd = if fd == NONE {
                NONE
            } else if fd >= size(o) {
                fd - size(o)
            } else {
                self.first_dirty_in(upper, o)
            };
            self.insert_free(upper, o, ufd);
            if fd != NONE && fd >= size(o) {
                fd = NONE;
            }
        }
        self.recs.set(head, Slot::free(to, fd != NONE));
        debug_assert_eq!(self.first_dirty(head), fd);
    }

    /// Splits an allocated (or otherwise held) chunk at `head` of `from` so that the
    /// chunk of order `to` containing `target` becomes a head; every piece keeps the
    /// head's state, owner, pins and flags.
    pub fn split_held(&mut self, head: Off, from: u8, target: Off, to: u8) {
        let proto = self.recs.get(head);
        debug_assert!(proto.is_head() && proto.state() != State::Free && proto.order() == from);
        debug_assert!(to <= from && target >= head && target < head + size(from));
        let mut h = head;
        let mut o = from;
        while o > to {
            o -= 1;
            let upper = h + size(o);
            let mut lo = proto;
            lo.set_order(o);
            self.recs.set(h, lo);
            self.recs.set(upper, lo);
            if target >= upper {
                h = upper;
            }
        }
        debug_assert_eq!(self.chunk_of(target), (h, to));
    }

    /// The head and order of the chunk containing `off`.
    /// In a split block only its own table is read; otherwise only block-aligned heads.
    pub fn chunk_of(&self, off: Off) -> (Off, u8) {
        debug_assert!(self.inside(off), "offset {off:?} beyond the node's {} frames", self.frames);
        let from = if self.recs.split(off) { 0 } else { BLOCK_ORDER };
        for o in from..=MAX_ORDER {
            let abs = self.mfn(off).0 & !((1u64 << o) - 1);
            let Some(h) = abs.checked_sub(self.base) else { break };
            let h = Off(h as u32);
            let s = self.recs.get(h);
            if s.is_head() && s.order() >= o {
                debug_assert!(off < h + size(s.order()), "{off:?} is inside the chunk at {h:?}");
                return (h, s.order());
            }
        }
        unreachable!("partition invariant: frame {off:?} of node at {:#x} is in no chunk", self.base)
    }

    /// Returns the chunk `[off, 2^order)`, whose head the caller has cleared of any other
    /// state, to the free lists: all dirty unless `clean`, merged with free buddies.
    /// Updates the free counters (not the counter of the state it left).
    pub fn release(&mut self, off: Off, order: u8, clean: bool) {
        debug_assert!(self.fits(off, order));
        let n = size(order);
        let fd = if clean {
            debug_assert_eq!(self.dirty.count(off, n), 0);
            NONE
        } else {
            debug_assert_eq!(self.dirty.count(off, n), 0, "held frames carry no dirty bits");
            self.dirty.set_all(off, n);
            self.free_dirty += n as u64;
            0
        };
        self.free += n as u64;
        self.merge_insert(off, order, fd);
        debug_assert_eq!(self.dirty.count(off, n), if clean { 0 } else { n });
    }

    /// Returns a chunk taken off the free lists (its head state is the caller's to
    /// forget, and so is the counter it was in) with whatever dirty bits it still has.
    pub fn put_back(&mut self, off: Off, order: u8) {
        debug_assert!(self.fits(off, order));
        let n = size(order);
        let fd = self.first_dirty_in(off, order);
        if fd != NONE {
            self.free_dirty += self.dirty.count(off + fd, n - fd) as u64;
        }
        self.free += n as u64;
        self.merge_insert(off, order, fd);
        debug_assert!(self.free <= self.frames as u64 && self.free_dirty <= self.free);
    }

    /// Free frames, including those being scrubbed: what allocations (and claims) may
    /// count on, since a scrub in progress can be aborted.
    pub fn available(&self) -> u64 {
        debug_assert!(self.free <= self.frames as u64);
        debug_assert!(self.free_dirty <= self.free && self.scrubbing <= self.free, "parts of the free frames");
        self.free
    }

    /// Index of work entry `id`.
    pub fn work_index(&self, id: u64) -> usize {
        assert!(id < self.next_work_id, "work entry {id} was never made");
        let i = self.work.iter().position(|w| w.id == id).expect("a work entry outlives its worker");
        debug_assert_eq!(self.work[i].id, id);
        i
    }

    /// Adds a work entry for the chunk at `head`; returns its id.
    pub fn add_work(&mut self, head: Off, order: u8, kind: crate::work::Kind) -> u64 {
        debug_assert!(self.fits(head, order));
        let id = self.next_work_id;
        self.next_work_id += 1;
        self.work.push(Work { id, head, order, kind, cursor: 0, inflight: 0, stop: false });
        debug_assert!(self.work.iter().filter(|w| w.head == head).count() == 1, "one work entry a chunk");
        id
    }

    /// Inserts a free chunk, first merging it with free buddies (clean or dirty). Its
    /// head may still hold the record it had while out of the free lists (being scrubbed,
    /// say): it is overwritten, or blanked if a lower buddy absorbs it.
    pub fn merge_insert(&mut self, mut off: Off, mut order: u8, fd: u32) {
        debug_assert!(self.fits(off, order));
        debug_assert!(self.is_blank(off) || (self.state(off) != State::Free && self.recs.get(off).order() == order));
        let zone = self.zone_of(off);
        let mut dirty = fd != NONE;
        while order < MAX_ORDER {
            let Some(b) = self.buddy(off, order) else { break };
            let bs = self.recs.get(b);
            if bs.state() != State::Free || bs.order() != order || self.zone_of(b) != zone {
                break;
            }
            dirty |= bs.listed_dirty();
            self.list_remove(b);
            let lo = b.min(off);
            self.recs.set(lo + size(order), Slot::BLANK);
            off = lo;
            order += 1;
        }
        self.insert_free(off, order, if dirty { 0 } else { NONE });
        debug_assert_eq!(self.chunk_of(off), (off, order));
    }
}

/// Largest order (at most [`MAX_ORDER`]) whose chunk starts at absolute frame `abs`
/// (aligned to it) and fits in `room` frames (at least 1): the heap's rule for cutting a
/// run of frames into aligned chunks, for layers that free runs piece by piece.
///
/// ```
/// assert_eq!(scrubheap::largest_order(512, 1000), 9);
/// assert_eq!(scrubheap::largest_order(513, 1000), 0);
/// ```
pub fn largest_order(abs: u64, room: u64) -> u8 {
    debug_assert!(room >= 1, "a run holds at least one frame");
    let align = if abs == 0 { MAX_ORDER as u32 } else { abs.trailing_zeros() };
    let fit = 63 - room.leading_zeros();
    core::cmp::min(core::cmp::min(align, fit), MAX_ORDER as u32) as u8
}

/// A range is not held the way the operation needs (free, `free_sealed`, pin, unpin, breaking
/// a frame): "is this range held by this owner" and what its holding allows, with one answer
/// for every caller (`NodeState::held_by`). Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FreeError {
    /// Freeing (or pinning) a frame that is not allocated: a double free.
    #[error("frame {mfn} is not allocated (already free, offline or broken): double free?")]
    NotAllocated {
        /// The frame.
        mfn: Mfn,
    },
    /// The frame is held by another owner.
    #[error("frame {mfn} belongs to {actual}, not {owner}")]
    WrongOwner {
        /// The frame.
        mfn: Mfn,
        /// Who asked.
        owner: DomId,
        /// Who holds it.
        actual: DomId,
    },
    /// The range goes beyond what the owner holds there.
    #[error("order {order} at {mfn} covers frame {beyond}, which {owner} does not hold: free with the order that was allocated")]
    OrderTooLarge {
        /// The frame given.
        mfn: Mfn,
        /// The order given.
        order: u8,
        /// The owner.
        owner: DomId,
        /// The first frame of the range the owner does not hold.
        beyond: Mfn,
    },
    /// The range holds a long-term pinned frame.
    #[error("frame {mfn} is long-term pinned by {owner}: unpin it first")]
    Pinned {
        /// The pinned frame.
        mfn: Mfn,
        /// Its owner.
        owner: DomId,
    },
    /// The frame is in the middle of another operation (being scrubbed, migrated,
    /// allocated through a scrub ticket, or isolated by an offline).
    #[error("frame {mfn} is {what} right now: retry when that is done")]
    Busy {
        /// The frame.
        mfn: Mfn,
        /// What is happening to it.
        what: &'static str,
    },
    /// Unpinning a range that holds an unpinned frame.
    #[error("frame {mfn} of {owner} is not long-term pinned: unpin only what was pinned")]
    NotPinned {
        /// The unpinned frame.
        mfn: Mfn,
        /// Its owner.
        owner: DomId,
    },
    /// A chunk already holds the most pins a count can hold.
    #[error("frame {mfn} already holds {max} pins: unpin some first", max = u32::MAX)]
    PinLimit {
        /// The frame.
        mfn: Mfn,
    },
    /// An ordinary free or pin of frames in a sealed allocation.
    #[error(
        "frame {mfn} is in a sealed allocation of {owner}: only the layer that sealed it gives it back (free_sealed); it cannot be freed or pinned directly"
    )]
    Sealed {
        /// The first sealed frame met.
        mfn: Mfn,
        /// The owner named.
        owner: DomId,
    },
    /// A [`crate::Heap::free_sealed`] of frames that are not sealed.
    #[error("frame {mfn} of {owner} is not in a sealed allocation: free it with free, not free_sealed")]
    NotSealed {
        /// The first frame met that is not sealed.
        mfn: Mfn,
        /// The owner named.
        owner: DomId,
    },
    /// A one-call operation on a held range (free, `free_sealed`, unpin, `pin_in_place`)
    /// whose range is made of more chunks than one step walks under the node lock.
    #[error("frames {mfn}+2^{order} are held as more than {limit} chunks (after partial frees or pins): one call would walk them all under the node lock; use Heap::range_start (a job advanced in bounded steps) or Heap::range_preemptible")]
    TooManyChunks {
        /// The first frame of the range.
        mfn: Mfn,
        /// The order of the range.
        order: u8,
        /// The most chunks one call walks ([`crate::CHUNKS_PER_STEP`]).
        limit: usize,
    },
}

variant_kinds!(FreeError {
    NotAllocated,
    WrongOwner,
    OrderTooLarge,
    Pinned,
    Busy,
    NotPinned,
    PinLimit,
    Sealed,
    NotSealed,
    TooManyChunks
});
