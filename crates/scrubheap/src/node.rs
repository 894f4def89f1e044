//! One node's frames: chunk metadata, buddy free lists (clean and dirty, per zone and
//! order), the dirty bitmap and the counters. Everything here is node-relative (frame
//! offsets from the node's first frame, `u32`) and runs under the node's lock.

use crate::chunk::{HeadByte, Owned, PackedHeads, State, F_BROKEN, F_MIGRATING, F_MOVABLE, F_SEALED, NONE};
use crate::dirty::DirtyBitmap;
use crate::error::HeapError;
use crate::types::{DomId, Mfn, Zone, MAX_ORDER, ORDERS};
use crate::work::{Kind, Work};
use alloc::string::String;
use alloc::vec::Vec;
use core::hash::BuildHasherDefault;

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
    pub pinned: Option<u32>,
    /// An unpinned chunk, if any.
    pub unpinned: Option<u32>,
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
    pub movable_from: u32,
    /// A head code a frame: free or not and order at chunk heads, 0 elsewhere.
    heads: PackedHeads,
    /// The record of every chunk that is not free, by head.
    owned: Records<Owned>,
    pub dirty: DirtyBitmap,
    /// Free chunks by head: `[zone][dirty][order]` (dirty: holding a dirty frame), the
    /// most recently listed last.
    lists: [[[Vec<u32>; ORDERS]; 2]; 2],
    /// Each listed free chunk's place in its list, with [`LISTED_DIRTY`] if on a dirty list.
    listed: Records<u32>,
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
    pub fn new(base: u64, frames: u32, movable_from: u32, dirty: bool) -> Self {
        let mut n = NodeState {
            base,
            frames,
            movable_from,
            heads: PackedHeads::new(frames),
            owned: Records::default(),
            listed: Records::default(),
            dirty: DirtyBitmap::new(frames),
            lists: Default::default(),
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
        n.carve(0, movable_from, dirty);
        n.carve(movable_from, frames, dirty);
        n
    }

    /// Fills `[lo, hi)` with the largest naturally aligned free chunks.
    fn carve(&mut self, lo: u32, hi: u32, dirty: bool) {
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
    }

    /// Largest order whose chunk starts at `off` (aligned in absolute frames) and fits in `room`.
    pub fn largest_order_at(&self, off: u32, room: u32) -> u8 {
        largest_order(self.base + off as u64, room as u64)
    }

    pub fn zone_of(&self, off: u32) -> Zone {
        if off >= self.movable_from {
            Zone::Movable
        } else {
            Zone::Normal
        }
    }

    /// Whether `off` is aligned to `order` in absolute frame numbers.
    pub fn aligned(&self, off: u32, order: u8) -> bool {
        (self.base + off as u64) & ((1u64 << order) - 1) == 0
    }

    /// Offset of the buddy of the chunk at `off` of `order`, if inside the node.
    pub fn buddy(&self, off: u32, order: u8) -> Option<u32> {
        let b = (self.base + off as u64) ^ (1u64 << order);
        b.checked_sub(self.base).filter(|&b| b < self.frames as u64).map(|b| b as u32)
    }

    /// Bytes of metadata this node holds: the capacities of its head codes, dirty bitmap
    /// (with its summaries), free lists, record tables and work list, the node state
    /// itself, and for the per-owner scrub counts (an ordered map, whose nodes the
    /// standard library does not expose) their entries times [`btree_entry_bytes`].
    pub fn metadata_bytes(&self) -> u64 {
        let fixed = self.heads.bytes() + self.dirty.bytes() + core::mem::size_of::<NodeState>();
        let work = self.work.capacity() * core::mem::size_of::<Work>();
        let lists: usize = self.lists.iter().flatten().flatten().map(|l| l.capacity() * 4).sum();
        let free = lists + table_bytes(self.listed.capacity(), 8);
        let owned = table_bytes(self.owned.capacity(), core::mem::size_of::<(u32, Owned)>());
        let owners = self.in_place_by_owner.len() * btree_entry_bytes(4, 8);
        let bytes = fixed + work + free + owned + owners;
        debug_assert!(bytes >= self.frames as usize * 6 / 8, "at least the head codes");
        bytes as u64
    }

    /// The frame number of node offset `off`.
    #[inline]
    pub fn mfn(&self, off: u32) -> Mfn {
        Mfn(self.base + off as u64)
    }

    // ---- chunk heads: the only code that reads or changes them ----

    /// The facts of the chunk head at `h`, or `None` if `h` starts no chunk.
    pub fn head_at(&self, h: u32) -> Option<Head> {
        let b = self.heads.get(h);
        if !b.is_head() {
            return None;
        }
        let rec = if b.is_free() {
            Owned { state: State::Free, owner: DomId(0), pins: 0, flags: 0 }
        } else {
            *self.owned.get(&h).expect("a chunk that is not free has its record")
        };
        Some(Head {
            state: rec.state,
            order: b.order(),
            owner: rec.owner,
            pins: rec.pins,
            movable: rec.flag(F_MOVABLE),
            sealed: rec.flag(F_SEALED),
            migrating: rec.flag(F_MIGRATING),
            broken: rec.flag(F_BROKEN),
        })
    }

    /// The facts of the chunk head at `h`, which must be a head.
    pub fn head(&self, h: u32) -> Head {
        let head = self.head_at(h);
        debug_assert!(head.is_some(), "frame {h} starts no chunk");
        head.expect("partition invariant: a chunk head")
    }

    /// The state of the chunk head at `h`.
    #[inline]
    pub fn state(&self, h: u32) -> State {
        let b = self.heads.get(h);
        match (b.is_head(), b.is_free()) {
            (false, _) => State::None,
            (true, true) => State::Free,
            (true, false) => self.owned.get(&h).expect("a chunk that is not free has its record").state,
        }
    }

    /// Whether frame `off` carries no metadata at all (inside a chunk, not its head).
    pub fn is_blank(&self, off: u32) -> bool {
        !self.heads.get(off).is_head()
    }

    /// Makes `h` the head of a chunk of `order` allocated to `owner`, unpinned.
    pub fn set_allocated(&mut self, h: u32, order: u8, owner: DomId, movable: bool, sealed: bool) {
        debug_assert!(!(movable && sealed), "a sealed allocation is never movable");
        debug_assert!(self.aligned(h, order) && h + size(order) <= self.frames);
        let mut rec = Owned { state: State::Allocated, owner, pins: 0, flags: 0 };
        rec.set_flag(F_MOVABLE, movable);
        rec.set_flag(F_SEALED, sealed);
        self.heads.set(h, HeadByte::held(order));
        self.owned.insert(h, rec);
        debug_assert_eq!(self.head(h).owner, owner);
    }

    /// Makes `h` the head of a chunk of `order` reserved for `owner` by a scrub ticket.
    pub fn set_pending(&mut self, h: u32, order: u8, owner: DomId) {
        debug_assert!(self.aligned(h, order) && h + size(order) <= self.frames);
        self.heads.set(h, HeadByte::held(order));
        self.owned.insert(h, Owned { state: State::Pending, owner, pins: 0, flags: 0 });
        debug_assert_eq!(self.head(h).state, State::Pending);
    }

    /// Makes `h` the head of a chunk of `order` in a state without owner or flags
    /// (being scrubbed, isolated, offline, broken).
    pub fn set_state(&mut self, h: u32, state: State, order: u8) {
        debug_assert!(matches!(state, State::Scrubbing | State::Isolated | State::Offline | State::Broken));
        debug_assert!(self.aligned(h, order) && h + size(order) <= self.frames);
        debug_assert!(self.state(h) != State::Free, "a free head leaves through unlink_free and forget_free");
        self.heads.set(h, HeadByte::held(order));
        self.owned.insert(h, Owned { state, owner: DomId(0), pins: 0, flags: 0 });
    }

    /// Forgets the head at `h` (its frames are about to join another chunk or the free
    /// lists through [`NodeState::release`] or [`NodeState::put_back`]).
    pub fn clear_head(&mut self, h: u32) {
        debug_assert!(self.state(h) != State::Free, "a free head leaves through unlink_free");
        self.heads.set(h, HeadByte::default());
        self.owned.remove(&h);
        debug_assert!(self.is_blank(h));
    }

    fn owned_mut(&mut self, h: u32) -> &mut Owned {
        debug_assert_eq!(self.state(h), State::Allocated);
        self.owned.get_mut(&h).expect("an allocated chunk has its record")
    }

    /// Marks (or unmarks) the allocated chunk at `h` as being migrated.
    pub fn set_migrating(&mut self, h: u32, on: bool) {
        self.owned_mut(h).set_flag(F_MIGRATING, on);
        debug_assert_eq!(self.head(h).migrating, on);
    }

    /// Marks the allocated single frame at `h` to leave service when freed.
    pub fn set_broken_when_freed(&mut self, h: u32) {
        debug_assert_eq!(self.heads.get(h).order(), 0, "only a single frame is marked broken");
        self.owned_mut(h).set_flag(F_BROKEN, true);
    }

    /// Sets the long-term pin count of the allocated chunk at `h`.
    pub fn set_pins(&mut self, h: u32, pins: u32) {
        let rec = self.owned_mut(h);
        debug_assert!(pins == 0 || !rec.flag(F_SEALED), "a sealed allocation is never pinned");
        rec.pins = pins;
    }

    /// Asks a background scrubber holding the chunk at `h` to hand it back after its
    /// current batch. Returns whether it had not been asked before.
    pub fn stop_background(&mut self, h: u32) -> bool {
        debug_assert_eq!(self.state(h), State::Scrubbing);
        match self.work.iter_mut().find(|w| w.head == h && w.kind == Kind::Background) {
            Some(w) if !w.stop => {
                w.stop = true;
                true
            }
            _ => false,
        }
    }

    /// Exact offset (from `h`) of the first dirty frame of the free chunk at `h`, or
    /// [`NONE`] if it is clean.
    pub fn first_dirty(&self, h: u32) -> u32 {
        debug_assert_eq!(self.state(h), State::Free);
        self.first_dirty_in(h, self.heads.get(h).order())
    }

    /// Whether `owner` holds every frame of `[off, 2^order)`, each chunk sealed exactly
    /// when `sealed` and none being migrated: the one answer for free, pin and unpin.
    /// Describes the range; the caller decides what pins it accepts.
    pub fn held_by(&self, off: u32, order: u8, owner: DomId, sealed: bool) -> Result<Held, HeapError> {
        debug_assert!(self.aligned(off, order) && off + size(order) <= self.frames);
        let end = off + size(order);
        let mut held = Held { movable_zone: false, movable: true, pinned: None, unpinned: None };
        let mut pos = off;
        while pos < end {
            let (h, o) = self.chunk_of(pos);
            let s = self.head(h);
            let first = pos == off;
            let beyond = HeapError::OrderTooLarge { mfn: self.mfn(off), order, owner, beyond: self.mfn(pos) };
            match s.state {
                State::Allocated if s.owner == owner => {}
                State::Allocated if first => {
                    return Err(HeapError::WrongOwner { mfn: self.mfn(off), owner, actual: s.owner })
                }
                State::Pending if first && s.owner == owner => {
                    return Err(HeapError::Busy { mfn: self.mfn(off), what: "still being scrubbed for its owner" })
                }
                _ if first => return Err(HeapError::NotAllocated { mfn: self.mfn(off) }),
                _ => return Err(beyond),
            }
            if s.migrating {
                return Err(HeapError::Busy { mfn: self.mfn(h), what: "being migrated" });
            }
            if s.sealed != sealed {
                let mfn = self.mfn(h.max(off));
                return Err(if sealed {
                    HeapError::NotSealed { mfn, owner }
                } else {
                    HeapError::Sealed { mfn, owner }
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

    /// The free chunks on list `[zone][dirty][order]`, most recently listed last.
    pub fn free_list(&self, zone: Zone, dirty: bool, order: u8) -> impl Iterator<Item = u32> + '_ {
        self.lists[zone as usize][dirty as usize][order as usize].iter().copied()
    }

    /// Checks the free lists and the records against the chunk heads: each listed chunk
    /// is free, of the list's zone, order and dirtiness, and the non-empty masks agree;
    /// each record belongs to an allocated or pending head. Returns how many chunks are
    /// listed.
    pub fn check_lists(&self) -> Result<u64, String> {
        let mut listed = 0u64;
        for z in [Zone::Normal, Zone::Movable] {
            for d in [false, true] {
                let mask = self.nonempty_mask(z, d);
                for o in 0..=MAX_ORDER {
                    let list = &self.lists[z as usize][d as usize][o as usize];
                    if list.is_empty() == (mask & (1 << o) != 0) {
                        return Err(alloc::format!("nonempty mask of {z}/{d}/{o} disagrees with the list"));
                    }
                    for (i, &cur) in list.iter().enumerate() {
                        let place = i as u32 | if d { LISTED_DIRTY } else { 0 };
                        if self.listed.get(&cur) != Some(&place) {
                            return Err(alloc::format!("chunk at {cur} is listed at {i} but recorded elsewhere"));
                        }
                        let b = self.heads.get(cur);
                        let fd = self.first_dirty_in(cur, o);
                        if b != HeadByte::free(o) || self.zone_of(cur) != z || (fd != NONE) != d {
                            return Err(alloc::format!(
                                "chunk at {cur} is on list {z}/dirty={d}/order {o} but has head {b:?} fd {fd:#x}",
                            ));
                        }
                    }
                    listed += list.len() as u64;
                }
            }
        }
        let stray = self.owned.iter().find(|(&h, r)| {
            let b = self.heads.get(h);
            !b.is_head() || b.is_free() || matches!(r.state, State::Free | State::None)
        });
        if let Some((&h, r)) = stray {
            return Err(alloc::format!("a record {r:?} at {h} whose head is {:?}", self.heads.get(h)));
        }
        if self.listed.len() as u64 != listed {
            return Err(alloc::format!("{} list places recorded for {listed} listed chunks", self.listed.len()));
        }
        Ok(listed)
    }

    // ---- free lists ----

    fn list_push(&mut self, off: u32) {
        let o = self.heads.get(off).order() as usize;
        let d = self.dirty.first_set(off, size(o as u8)).is_some() as usize;
        let z = self.zone_of(off) as usize;
        let list = &mut self.lists[z][d][o];
        let place = list.len() as u32 | if d == 1 { LISTED_DIRTY } else { 0 };
        list.push(off);
        let old = self.listed.insert(off, place);
        debug_assert!(old.is_none(), "a chunk is listed once");
        self.nonempty[z][d] |= 1 << o;
    }

    fn list_remove(&mut self, off: u32) {
        let place = self.listed.remove(&off).expect("a listed chunk has its place");
        let (d, i) = ((place & LISTED_DIRTY != 0) as usize, (place & !LISTED_DIRTY) as usize);
        let (z, o) = (self.zone_of(off) as usize, self.heads.get(off).order() as usize);
        let list = &mut self.lists[z][d][o];
        debug_assert_eq!(list[i], off);
        list.swap_remove(i);
        if let Some(&moved) = list.get(i) {
            self.listed.insert(moved, i as u32 | (place & LISTED_DIRTY));
        }
        if list.is_empty() {
            self.nonempty[z][d] &= !(1 << o);
        }
    }

    /// Writes a free head at `off` and puts it on its list (counters are the caller's).
    /// `first_dirty` is the exact offset of its first dirty frame (or [`NONE`]).
    pub fn insert_free(&mut self, off: u32, order: u8, first_dirty: u32) {
        debug_assert!(self.aligned(off, order) && off + size(order) <= self.frames);
        self.heads.set(off, HeadByte::free(order));
        self.list_push(off);
        debug_assert_eq!(first_dirty, self.first_dirty_in(off, order), "an exact first-dirty offset");
    }

    /// Takes a free chunk off its list; its head stays (state Free) for the caller to reuse.
    pub fn unlink_free(&mut self, off: u32) {
        debug_assert_eq!(self.state(off), State::Free);
        self.list_remove(off);
        debug_assert!(!self.listed.contains_key(&off), "off its list");
    }

    /// Forgets the head of the free chunk at `h`, already off its list (its frames are
    /// about to be part of another chunk the caller makes).
    pub fn forget_free(&mut self, h: u32) {
        debug_assert_eq!(self.state(h), State::Free);
        self.heads.set(h, HeadByte::default());
        debug_assert!(self.is_blank(h));
    }

    /// Makes `[off, 2^order)`, whose frames carry no head, one free chunk off the free
    /// lists (counted free by the caller), with its exact first-dirty hint.
    pub fn make_unlisted_free(&mut self, off: u32, order: u8) {
        debug_assert!(self.aligned(off, order) && off + size(order) <= self.frames);
        debug_assert!(self.is_blank(off), "the caller cleared the range's heads");
        self.heads.set(off, HeadByte::free(order));
    }

    /// Lists the free piece `[off, 2^order)` (cut from a larger free chunk, its frames
    /// carrying no head) with its exact first-dirty hint; counters are the caller's.
    pub fn list_free_piece(&mut self, off: u32, order: u8) {
        debug_assert!(self.aligned(off, order) && off + size(order) <= self.frames);
        let fd = self.first_dirty_in(off, order);
        self.insert_free(off, order, fd);
        debug_assert_eq!(self.state(off), State::Free);
    }

    /// Head of list `[zone][dirty][order]`, for the invariant checker and scrubbers.
    pub fn list_head(&self, zone: Zone, dirty: bool, order: u8) -> u32 {
        self.lists[zone as usize][dirty as usize][order as usize].last().copied().unwrap_or(NONE)
    }

    pub fn nonempty_mask(&self, zone: Zone, dirty: bool) -> u32 {
        self.nonempty[zone as usize][dirty as usize]
    }

    /// Chooses a free chunk of at least `order` in `zone` and takes it off its list:
    /// `(head, its order)`.
    pub fn pick(&mut self, zone: Zone, order: u8, how: Pick) -> Option<(u32, u8)> {
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
        let head = *self.lists[z][d as usize][j as usize].last().expect("a non-empty list has a last chunk");
        self.list_remove(head);
        debug_assert!(self.heads.get(head) == HeadByte::free(j as u8) && j as u8 >= order, "a free chunk big enough");
        Some((head, j as u8))
    }

    /// Exact first dirty offset within `[off, off + 2^order)`.
    pub fn first_dirty_in(&self, off: u32, order: u8) -> u32 {
        self.dirty.first_set(off, size(order)).unwrap_or(NONE)
    }

    /// Splits the free chunk at `head` (off its list) from `from` down to `to`, putting
    /// the upper halves back on the free lists; the lower part stays unlisted.
    pub fn split_free(&mut self, head: u32, from: u8, to: u8) {
        debug_assert_eq!(self.heads.get(head), HeadByte::free(from));
        let mut o = from;
        while o > to {
            o -= 1;
            let upper = head + size(o);
            self.heads.set(upper, HeadByte::free(o));
            self.list_push(upper);
        }
        self.heads.set(head, HeadByte::free(to));
        debug_assert_eq!(self.chunk_of(head), (head, to));
    }

    /// Splits an allocated (or otherwise held) chunk at `head` of `from` so that the
    /// chunk of order `to` containing `target` becomes a head; every piece keeps the
    /// head's state, owner, pins and flags.
    pub fn split_held(&mut self, head: u32, from: u8, target: u32, to: u8) {
        debug_assert!(!self.heads.get(head).is_free() && to <= from);
        let rec = *self.owned.get(&head).expect("a held chunk has its record");
        let mut h = head;
        let mut o = from;
        while o > to {
            o -= 1;
            let upper = h + size(o);
            self.heads.set(h, HeadByte::held(o));
            self.heads.set(upper, HeadByte::held(o));
            self.owned.insert(upper, rec);
            if target >= upper {
                h = upper;
            }
        }
        debug_assert_eq!(self.chunk_of(target).1, to);
    }

    /// The head and order of the chunk containing `off`.
    pub fn chunk_of(&self, off: u32) -> (u32, u8) {
        for o in 0..=MAX_ORDER {
            let abs = (self.base + off as u64) & !((1u64 << o) - 1);
            let Some(h) = abs.checked_sub(self.base) else { break };
            let b = self.heads.get(h as u32);
            if b.is_head() && b.order() >= o {
                return (h as u32, b.order());
            }
        }
        unreachable!("partition invariant: frame {off} of node at {:#x} is in no chunk", self.base)
    }

    /// Returns the chunk `[off, 2^order)`, whose head the caller has cleared of any other
    /// state, to the free lists: all dirty unless `clean`, merged with free buddies.
    /// Updates the free counters (not the counter of the state it left).
    pub fn release(&mut self, off: u32, order: u8, clean: bool) {
        debug_assert!(self.is_blank(off) && self.aligned(off, order), "a cleared, aligned head");
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
    }

    /// Returns a chunk taken off the free lists (its head state is the caller's to
    /// forget, and so is the counter it was in) with whatever dirty bits it still has.
    pub fn put_back(&mut self, off: u32, order: u8) {
        debug_assert!(self.is_blank(off) && self.aligned(off, order), "a cleared, aligned head");
        let n = size(order);
        let fd = self.first_dirty_in(off, order);
        if fd != NONE {
            self.free_dirty += self.dirty.count(off + fd, n - fd) as u64;
        }
        self.free += n as u64;
        self.merge_insert(off, order, fd);
    }

    /// Free frames, including those being scrubbed: what allocations (and claims) may
    /// count on, since a scrub in progress can be aborted.
    pub fn available(&self) -> u64 {
        self.free
    }

    /// Index of work entry `id`.
    pub fn work_index(&self, id: u64) -> usize {
        self.work.iter().position(|w| w.id == id).expect("a work entry outlives its worker")
    }

    /// Adds a work entry for the chunk at `head`; returns its id.
    pub fn add_work(&mut self, head: u32, order: u8, kind: crate::work::Kind) -> u64 {
        let id = self.next_work_id;
        self.next_work_id += 1;
        self.work.push(Work { id, head, order, kind, cursor: 0, inflight: 0, stop: false });
        id
    }

    /// Inserts a free chunk, first merging it with free buddies (clean or dirty).
    pub fn merge_insert(&mut self, mut off: u32, mut order: u8, mut fd: u32) {
        debug_assert!(self.is_blank(off) && off + size(order) <= self.frames, "a cleared head inside the node");
        let zone = self.zone_of(off);
        while order < MAX_ORDER {
            let Some(b) = self.buddy(off, order) else { break };
            if self.heads.get(b) != HeadByte::free(order) || self.zone_of(b) != zone {
                break;
            }
            let bfd = self.first_dirty_in(b, order);
            self.list_remove(b);
            let (lo, lfd, hfd) = if b < off { (b, bfd, fd) } else { (off, fd, bfd) };
            let hi = lo + size(order);
            fd = if lfd != NONE {
                lfd
            } else if hfd != NONE {
                hfd + size(order)
            } else {
                NONE
            };
            self.heads.set(hi, HeadByte::default());
            off = lo;
            order += 1;
        }
        self.insert_free(off, order, fd);
        debug_assert_eq!(self.chunk_of(off), (off, order), "the merged chunk is one free chunk");
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

/// Bytes one entry of a standard ordered map (or set) of `key`- and `value`-byte entries
/// holds, estimated: a leaf node holds up to 11 entries plus a parent link and two
/// counters, nodes stay about two-thirds full, and internal nodes (12 child links each)
/// add about one node per eight leaves. `tests/metadata.rs` checks the estimate against
/// a counting allocator.
pub(crate) const fn btree_entry_bytes(key: usize, value: usize) -> usize {
    let leaf = (8 + 4 + 11 * (key + value)).div_ceil(8) * 8;
    let internal = leaf + 12 * 8;
    (leaf + internal / 8) * 3 / (2 * 11)
}

/// Marks a list place ([`NodeState::listed`]) as one on a dirty list.
const LISTED_DIRTY: u32 = 1 << 31;

/// A record table keyed by head offset.
type Records<V> = hashbrown::HashMap<u32, V, BuildHasherDefault<OffsetHasher>>;

/// Hashes a node offset: a multiply by an odd constant, folded so that the low bits (the
/// table's bucket) depend on every bit of the offset, aligned heads included.
#[derive(Copy, Clone, Debug, Default)]
pub(crate) struct OffsetHasher(u64);

impl core::hash::Hasher for OffsetHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u32(b as u32 ^ (self.0 as u32).rotate_left(8));
        }
    }
    fn write_u32(&mut self, n: u32) {
        let h = (n as u64 ^ self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = h ^ (h >> 29);
    }
}

/// Bytes a record table of `capacity` holds for entries of `entry` bytes: its buckets (a
/// power of two, at most 7/8 full), one control byte each and one group of control bytes.
fn table_bytes(capacity: usize, entry: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets =
        if capacity < 8 { (capacity + 1).next_power_of_two() } else { (capacity * 8 / 7).next_power_of_two() };
    buckets * (entry + 1) + 16
}
