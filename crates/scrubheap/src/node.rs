//! One node's frames: chunk metadata, buddy free lists (clean and dirty, per zone and
//! order), the dirty bitmap and the counters. Everything here is node-relative (frame
//! offsets from the node's first frame, `u32`) and runs under the node's lock.

use crate::chunk::{Slot, State, NONE};
use crate::dirty::{touched, DirtyBitmap};
use crate::types::{Zone, MAX_ORDER, ORDERS};
use crate::work::Work;
use alloc::vec::Vec;

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
    pub meta: Vec<Slot>,
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
            meta: touched(frames as usize, Slot::default()),
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

    // ---- free lists ----

    fn list_of(&self, off: u32) -> (usize, usize, usize) {
        let s = &self.meta[off as usize];
        (self.zone_of(off) as usize, (s.first_dirty() != NONE) as usize, s.order() as usize)
    }

    fn list_push(&mut self, off: u32) {
        let (z, d, o) = self.list_of(off);
        let old = self.heads[z][d][o];
        {
            let s = &mut self.meta[off as usize];
            s.a = NONE;
            s.b = old;
        }
        if old != NONE {
            self.meta[old as usize].a = off;
        }
        self.heads[z][d][o] = off;
        self.nonempty[z][d] |= 1 << o;
    }

    fn list_remove(&mut self, off: u32) {
        let (z, d, o) = self.list_of(off);
        let Slot { a: prev, b: next, .. } = self.meta[off as usize];
        if prev == NONE {
            self.heads[z][d][o] = next;
            if next == NONE {
                self.nonempty[z][d] &= !(1 << o);
            }
        } else {
            self.meta[prev as usize].b = next;
        }
        if next != NONE {
            self.meta[next as usize].a = prev;
        }
    }

    /// Writes a free head at `off` and puts it on its list (counters are the caller's).
    pub fn insert_free(&mut self, off: u32, order: u8, first_dirty: u32) {
        self.meta[off as usize] = Slot::free(order, first_dirty);
        self.list_push(off);
    }

    /// Takes a free chunk off its list; its head stays (state Free) for the caller to reuse.
    pub fn unlink_free(&mut self, off: u32) {
        debug_assert_eq!(self.meta[off as usize].state(), State::Free);
        self.list_remove(off);
    }

    /// Head of list `[zone][dirty][order]`, for the invariant checker and scrubbers.
    pub fn list_head(&self, zone: Zone, dirty: bool, order: u8) -> u32 {
        self.heads[zone as usize][dirty as usize][order as usize]
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
        let head = self.heads[z][d as usize][j as usize];
        debug_assert_ne!(head, NONE);
        self.list_remove(head);
        Some((head, j as u8))
    }

    /// Exact first dirty offset within `[off, off + 2^order)`.
    pub fn first_dirty_in(&self, off: u32, order: u8) -> u32 {
        self.dirty.first_set(off, size(order)).unwrap_or(NONE)
    }

    /// Splits the free chunk at `head` (off its list) from `from` down to `to`, putting
    /// the upper halves back on the free lists; the lower part stays unlisted.
    pub fn split_free(&mut self, head: u32, from: u8, to: u8) {
        let mut o = from;
        // First dirty offset of the part still being split, [head, 2^o).
        let mut fd = self.meta[head as usize].first_dirty();
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
        self.meta[head as usize] = Slot::free(to, fd);
    }

    /// Splits an allocated (or otherwise held) chunk at `head` of `from` so that the
    /// chunk of order `to` containing `target` becomes a head; every piece keeps the
    /// head's state, owner, pins and flags.
    pub fn split_held(&mut self, head: u32, from: u8, target: u32, to: u8) {
        let proto = self.meta[head as usize];
        let mut h = head;
        let mut o = from;
        while o > to {
            o -= 1;
            let upper = h + size(o);
            let mut lo = proto;
            lo.set_order(o);
            self.meta[h as usize] = lo;
            self.meta[upper as usize] = lo;
            if target >= upper {
                h = upper;
            }
        }
    }

    /// The head and order of the chunk containing `off`.
    pub fn chunk_of(&self, off: u32) -> (u32, u8) {
        for o in 0..=MAX_ORDER {
            let abs = (self.base + off as u64) & !((1u64 << o) - 1);
            let Some(h) = abs.checked_sub(self.base) else { break };
            let s = &self.meta[h as usize];
            if s.is_head() && s.order() >= o {
                return (h as u32, s.order());
            }
        }
        unreachable!("partition invariant: frame {off} of node at {:#x} is in no chunk", self.base)
    }

    /// Returns the chunk `[off, 2^order)`, whose head the caller has cleared of any other
    /// state, to the free lists: all dirty unless `clean`, merged with free buddies.
    /// Updates the free counters (not the counter of the state it left).
    pub fn release(&mut self, off: u32, order: u8, clean: bool) {
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
        let zone = self.zone_of(off);
        while order < MAX_ORDER {
            let Some(b) = self.buddy(off, order) else { break };
            let bs = self.meta[b as usize];
            if bs.state() != State::Free || bs.order() != order || self.zone_of(b) != zone {
                break;
            }
            self.list_remove(b);
            let bfd = bs.first_dirty();
            let (lo, lfd, hfd) = if b < off { (b, bfd, fd) } else { (off, fd, bfd) };
            let hi = lo + size(order);
            fd = if lfd != NONE {
                lfd
            } else if hfd != NONE {
                hfd + size(order)
            } else {
                NONE
            };
            self.meta[hi as usize] = Slot::default();
            off = lo;
            order += 1;
        }
        self.insert_free(off, order, fd);
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
