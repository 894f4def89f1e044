//! The per-CPU fast path's state (see the `pcpu` module for the operations): the CPUs'
//! slots and counters, and per node the block maps, the block records and the parked
//! blocks. Kept apart from the operations so that the heap can hold it without importing
//! them.
//!
//! # Memory
//! Fixed, per node: one 4-byte map entry per region a block of a fast order may take (64
//! frames at order 0, 8,192 at order 9) and one 16-byte segment pointer per
//! [`SEG`] records: about 0.066 bytes a frame. On demand: the records themselves, a
//! segment of [`SEG`] 64-byte records at a time (kept at high water, so a refill never
//! allocates once the segments it needs exist), a 256-byte owner table for a block that
//! lends to more than one owner, and the lists of free and parked records.

use crate::sync::{AtomicU32, AtomicU64, Once, SpinMutex as Mutex};
use crate::types::DomId;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use crate::types::MAX_CPUS;

/// The owner a node's metadata names for a block held by the per-CPU fast path, and
/// [`crate::Heap::chunk_at`] names for a chunk free in a reserve. The fast path refuses requests
/// of this owner.
pub const RESERVE_OWNER: DomId = DomId(u32::MAX);

/// The orders the fast path serves, each with log2 of the chunks in one of its blocks.
pub const FAST_ORDERS: [(u8, u8); 2] = [(0, 6), (9, 4)];

pub(crate) const KINDS: usize = FAST_ORDERS.len();

/// Block records per segment, allocated together on first use.
pub(crate) const SEG: usize = 128;

/// No parked position (see [`Live::pos`]).
const NOT_PARKED: u32 = u32::MAX;

#[inline]
pub(crate) fn kind_of(order: u8) -> Option<usize> {
    FAST_ORDERS.iter().position(|&(o, _)| o == order)
}

#[inline]
pub(crate) fn block_order(k: usize) -> u8 {
    FAST_ORDERS[k].0 + FAST_ORDERS[k].1
}

/// Frames of the chunks of a block of kind `k` whose bits are set in `mask`.
#[inline]
pub(crate) fn dirty_frames(k: usize, mask: u64) -> u64 {
    (mask.count_ones() as u64) << FAST_ORDERS[k].0
}

#[inline]
pub(crate) fn all_chunks(k: usize) -> u64 {
    u64::MAX >> (64 - (1u32 << FAST_ORDERS[k].1))
}

const _: () = assert!(FAST_ORDERS[0].1 <= 6 && FAST_ORDERS[1].1 <= 6, "a block's chunks fit a u64 mask");
#[cfg(not(loom))]
const _: () = assert!(core::mem::size_of::<Cell>() == 64, "a block record is one cache line");
const _: () = assert!(
    core::mem::align_of::<CpuCell>() == 128 && core::mem::align_of::<CpuNode>() == 128,
    "no two CPUs' slots or counters share a pair of cache lines"
);

/// One block of the fast path, or a record waiting for one (`live` is `None`).
pub(crate) struct Block {
    /// Bit i: chunk i is free in the reserve.
    pub(crate) free: u64,
    /// Bit i: chunk i is free and holds old bytes.
    pub(crate) dirty: u64,
    /// Bit i: chunk i is free but out of `free` while its CPU's `scrub_reserve` zeroes
    /// it; a block with such chunks is not settled until they are back.
    pub(crate) scrubbing: u64,
    /// Owner of each loaned chunk once the block lends to two owners (`mixed`); kept,
    /// unused, when the record serves a later block with one owner.
    owners: Option<Box<[u32; 64]>>,
    /// The kind and region (absolute frame >> block order, minus the map's first) of the
    /// block this record holds, if any.
    pub(crate) live: Option<(u8, u32)>,
    /// Owner of every loaned chunk while `mixed` is false.
    owner: u32,
    /// The CPU allocating from it, if any (its slot names the record).
    pub(crate) cpu: Option<u16>,
    /// Whether the loans have more than one owner (then `owners` holds them).
    mixed: bool,
    /// Detached with every chunk free, waiting on its node's parked list for a refill.
    pub(crate) parked: bool,
}

impl Block {
    const EMPTY: Block = Block {
        free: 0,
        dirty: 0,
        scrubbing: 0,
        owners: None,
        live: None,
        owner: 0,
        cpu: None,
        mixed: false,
        parked: false,
    };

    /// Chunks lent out.
    #[inline]
    pub(crate) fn loaned(&self, k: usize) -> u64 {
        all_chunks(k) & !(self.free | self.scrubbing)
    }

    /// The owner of loaned chunk `i`.
    #[inline]
    pub(crate) fn owner_of(&self, i: usize) -> u32 {
        match (&self.owners, self.mixed) {
            (Some(o), true) => o[i],
            _ => self.owner,
        }
    }

    /// Records `owner` for chunk `i`, just taken out of `free` for a loan (so not in
    /// `loaned` before). Returns whether a 256-byte owner table was allocated.
    #[inline]
    pub(crate) fn lend(&mut self, k: usize, i: usize, owner: u32) -> bool {
        let others = self.loaned(k) & !(1u64 << i);
        if self.mixed {
            self.owners.as_mut().expect("a mixed block has its owner table")[i] = owner;
            return false;
        }
        if others == 0 || self.owner == owner {
            self.owner = owner;
            return false;
        }
        let fresh = self.owners.is_none();
        let table = self.owners.get_or_insert_with(|| Box::new([0; 64]));
        let mut bits = others;
        while bits != 0 {
            table[bits.trailing_zeros() as usize] = self.owner;
            bits &= bits - 1;
        }
        table[i] = owner;
        self.mixed = true;
        debug_assert_eq!(self.owner_of(i), owner);
        fresh
    }

    /// Starts a new block in this record: every chunk free, `dirty` those with old bytes.
    pub(crate) fn start(&mut self, k: usize, idx: u32, dirty: u64, cpu: Option<u16>) {
        debug_assert!(self.live.is_none() && !self.parked && self.scrubbing == 0);
        (self.free, self.dirty, self.live, self.cpu, self.mixed) =
            (all_chunks(k), dirty, Some((k as u8, idx)), cpu, false);
        debug_assert_eq!(self.dirty & !self.free, 0);
    }
}

/// A record and its lock, on a cache line of its own.
#[repr(align(64))]
pub(crate) struct Cell(Mutex<Block>);

impl Cell {
    #[inline]
    pub(crate) fn lock(&self) -> crate::sync::SpinGuard<'_, Block> {
        self.0.lock()
    }
}

type Segment = Once<Box<[Cell; SEG]>>;

/// A node's free and parked records, changed under its lock (after the node lock, before
/// a record's).
pub(crate) struct Live {
    /// Records never used yet start here.
    pub(crate) high: u32,
    /// Records used before and free now.
    pub(crate) free: Vec<u32>,
    /// Per fast order, parked records (detached blocks whose chunks are all free),
    /// reused by refills before the free lists are.
    pub(crate) parked: [Vec<u32>; KINDS],
    /// Per record below `high`, its place in its `parked` list, or [`NOT_PARKED`].
    pub(crate) pos: Vec<u32>,
    /// Frames in parked blocks.
    pub(crate) parked_frames: u64,
}

impl Live {
    /// Puts record `s` (of kind `k`) on the parked list.
    pub(crate) fn park(&mut self, s: u32, k: usize, frames: u64) {
        debug_assert_eq!(self.pos[s as usize], NOT_PARKED);
        self.pos[s as usize] = self.parked[k].len() as u32;
        self.parked[k].push(s);
        self.parked_frames += frames;
        debug_assert_eq!(self.parked[k][self.pos[s as usize] as usize], s);
    }

    /// Takes record `s` (of kind `k`) off the parked list, if it is there.
    pub(crate) fn unpark(&mut self, s: u32, k: usize, frames: u64) -> bool {
        let p = self.pos[s as usize];
        if p == NOT_PARKED {
            return false;
        }
        let list = &mut self.parked[k];
        debug_assert_eq!(list[p as usize], s);
        list.swap_remove(p as usize);
        if let Some(&moved) = list.get(p as usize) {
            self.pos[moved as usize] = p;
        }
        self.pos[s as usize] = NOT_PARKED;
        self.parked_frames -= frames;
        true
    }

    /// Whether record `s` is on a parked list.
    pub(crate) fn is_parked(&self, s: u32) -> bool {
        self.pos.get(s as usize).is_some_and(|&p| p != NOT_PARKED)
    }
}

pub(crate) struct NodeReserve {
    /// Per fast order: entry `i` names the record (+1; 0: none) of the live block of
    /// region `first[k] + i` (absolute frame number >> block order). A hint, checked
    /// against the record's `live` under the record's lock.
    pub(crate) map: [Vec<AtomicU32>; KINDS],
    pub(crate) first: [u64; KINDS],
    /// The records, [`SEG`] to a segment, each segment allocated on first use.
    segs: Vec<Segment>,
    /// Free and parked records; changed under the node lock.
    pub(crate) live: Mutex<Live>,
    /// Frames in live blocks (free or loaned); changed under the node lock.
    pub(crate) frames: AtomicU64,
    /// Frames of loans that became ordinary allocations when their block was settled
    /// (wrapping; see [`Pcpu::reserved`]).
    pub(crate) settled: AtomicU64,
    /// Owner tables allocated (each stays with its record).
    pub(crate) owner_tables: AtomicU64,
    /// Frames of the dirty chunks of parked blocks (a parked block's masks hold still
    /// until it is unparked); changed with `live`, under its lock, read without it.
    pub(crate) parked_dirty: AtomicU64,
    /// At most this many frames parked (half the node's).
    pub(crate) park_limit: u64,
}

/// Per CPU and node counters, each on its own pair of cache lines (an adjacent-line
/// prefetcher fetches lines in pairs: another CPU's counters on the pair's other line
/// would be pulled away on every get).
#[repr(align(128))]
pub(crate) struct CpuNode {
    /// Frames lent through this CPU's gets (written under its slot lock: a plain store).
    pub(crate) lent: AtomicU64,
    /// Frames put back through this CPU (any thread may put for any CPU: an atomic add).
    pub(crate) returned: AtomicU64,
    /// Frames this CPU's gets zeroed in place.
    pub(crate) in_place: AtomicU64,
}

pub(crate) struct CpuSlot {
    /// Per node and fast order: the record of the block this CPU allocates from.
    pub(crate) current: Vec<[Option<u32>; KINDS]>,
    /// Per node and fast order: a whole, clean block this CPU took beside its current one
    /// (only order 0, only once a block of its ran out: a CPU in a run of gets), the next
    /// current block, so a run of gets takes the node lock once per two blocks. It is a
    /// live block of this CPU like the current one (reserved, settled by drain and settle).
    pub(crate) spare: Vec<[Option<u32>; KINDS]>,
    /// Per node and fast order: whether this CPU's last current block ran out (it is in a
    /// run of gets, and its next refill takes a spare too).
    pub(crate) ran_out: Vec<[bool; KINDS]>,
    /// The node the last `NodePref::Any` request was served from.
    pub(crate) any_node: usize,
    /// Frames zeroed in place by this CPU's gets, per owner; the latest owner's count is
    /// kept beside until another owner's get (a map update per get costs too much).
    pub(crate) in_place_by_owner: BTreeMap<DomId, u64>,
    pub(crate) in_place_last: (DomId, u64),
}

/// Aligned to two cache lines (a line and the one an adjacent-line prefetcher pairs with
/// it): a CPU's slot is written on every get, and must share no line with another CPU's.
#[repr(align(128))]
pub(crate) struct CpuCell {
    pub(crate) slot: Mutex<CpuSlot>,
    pub(crate) nodes: Vec<CpuNode>,
}

/// The reserves of every CPU and the block maps and records of every node.
pub(crate) struct Pcpu {
    pub(crate) cpus: Vec<CpuCell>,
    pub(crate) nodes: Vec<NodeReserve>,
}

impl NodeReserve {
    pub(crate) fn new(base: u64, frames: u64) -> Self {
        debug_assert!(frames > 0);
        let mut first = [0; KINDS];
        let map: [Vec<AtomicU32>; KINDS] = core::array::from_fn(|k| {
            let bo = block_order(k);
            first[k] = base >> bo;
            let last = (base + frames - 1) >> bo;
            (first[k]..=last).map(|_| AtomicU32::new(0)).collect()
        });
        // Blocks of different orders never overlap, so there are never more live blocks
        // than map entries.
        let records = map.iter().map(Vec::len).sum::<usize>();
        let segs = (0..records.div_ceil(SEG)).map(|_| Segment::new()).collect();
        let live =
            Live { high: 0, free: Vec::new(), parked: [Vec::new(), Vec::new()], pos: Vec::new(), parked_frames: 0 };
        NodeReserve {
            map,
            first,
            segs,
            live: Mutex::new(live),
            frames: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            owner_tables: AtomicU64::new(0),
            parked_dirty: AtomicU64::new(0),
            park_limit: frames / 2,
        }
    }

    /// Index of the region of kind `k` holding absolute frame `abs`.
    #[inline]
    pub(crate) fn index(&self, k: usize, abs: u64) -> u32 {
        ((abs >> block_order(k)) - self.first[k]) as u32
    }

    /// Absolute first frame of region `idx` of kind `k`.
    #[inline]
    pub(crate) fn region(&self, k: usize, idx: u32) -> u64 {
        (self.first[k] + idx as u64) << block_order(k)
    }

    /// The record the map names for region `idx` of kind `k`, if any.
    #[inline]
    pub(crate) fn mapped(&self, k: usize, idx: u32) -> Option<u32> {
        self.map[k][idx as usize].load(Acquire).checked_sub(1)
    }

    /// Names record `s` (or none) for region `idx` of kind `k`.
    #[inline]
    pub(crate) fn set_map(&self, k: usize, idx: u32, s: Option<u32>) {
        self.map[k][idx as usize].store(s.map_or(0, |s| s + 1), Release);
    }

    /// Parks record `s` (of kind `k`, whose block's dirty mask is `dirty`) on `live`, this
    /// node's list (whose lock the caller holds), counting its dirty frames.
    pub(crate) fn park(&self, live: &mut Live, s: u32, k: usize, dirty: u64) {
        let before = self.parked_dirty.load(Relaxed);
        live.park(s, k, 1 << block_order(k));
        self.parked_dirty.store(before + dirty_frames(k, dirty), Relaxed);
        debug_assert!(self.parked_dirty.load(Relaxed) <= live.parked_frames);
    }

    /// Takes record `s` (of kind `k`, dirty mask `dirty`) off `live`'s parked list if it
    /// is there, and its dirty frames out of the count; whether it was parked.
    pub(crate) fn unpark(&self, live: &mut Live, s: u32, k: usize, dirty: u64) -> bool {
        if !live.unpark(s, k, 1 << block_order(k)) {
            return false;
        }
        let before = self.parked_dirty.load(Relaxed);
        debug_assert!(before >= dirty_frames(k, dirty), "a parked block's dirt was counted when it was parked");
        self.parked_dirty.store(before - dirty_frames(k, dirty), Relaxed);
        true
    }

    /// Record `s`, which must be below `live.high` (its segment exists).
    #[inline]
    pub(crate) fn cell(&self, s: u32) -> &Cell {
        let seg = self.segs[s as usize / SEG].get().expect("a record below the high mark has its segment");
        &seg[s as usize % SEG]
    }

    /// A record for a new block: a free one, or the next never used (allocating its
    /// segment first if need be). Called under the node lock, so segments are only ever
    /// built by one thread at a time.
    pub(crate) fn take_record(&self, live: &mut Live) -> u32 {
        if let Some(s) = live.free.pop() {
            return s;
        }
        let s = live.high;
        assert!((s as usize) < self.segs.len() * SEG, "more live blocks than map entries");
        self.segs[s as usize / SEG].call_once(|| {
            // Built on the heap: a segment is too large for a small stack.
            let cells: Box<[Cell]> = (0..SEG).map(|_| Cell(Mutex::new(Block::EMPTY))).collect();
            cells.try_into().unwrap_or_else(|_| unreachable!("SEG cells were made"))
        });
        live.high += 1;
        live.pos.push(NOT_PARKED);
        debug_assert_eq!(live.pos.len(), live.high as usize);
        s
    }

    /// Bytes of fixed metadata (the maps and the segment pointers), and of records and
    /// lists allocated now (capacities).
    pub(crate) fn bytes(&self) -> (u64, u64) {
        let fixed = self.map.iter().map(|m| m.capacity() * core::mem::size_of::<AtomicU32>()).sum::<usize>()
            + self.segs.capacity() * core::mem::size_of::<Segment>();
        let segs = self.segs.iter().filter(|s| s.get().is_some()).count() * core::mem::size_of::<[Cell; SEG]>();
        let tables = self.owner_tables.load(Relaxed) as usize * core::mem::size_of::<[u32; 64]>();
        let live = self.live.lock();
        let lists =
            (live.free.capacity() + live.pos.capacity() + live.parked.iter().map(Vec::capacity).sum::<usize>()) * 4;
        (fixed as u64, (segs + tables + lists) as u64)
    }
}

impl Pcpu {
    pub fn new(nodes: &[(u64, u64)], cpus: usize) -> Self {
        debug_assert!((1..=MAX_CPUS).contains(&cpus));
        let cpus = (0..cpus)
            .map(|_| CpuCell {
                slot: Mutex::new(CpuSlot {
                    current: alloc::vec![[None; KINDS]; nodes.len()],
                    spare: alloc::vec![[None; KINDS]; nodes.len()],
                    ran_out: alloc::vec![[false; KINDS]; nodes.len()],
                    any_node: 0,
                    in_place_by_owner: BTreeMap::new(),
                    in_place_last: (RESERVE_OWNER, 0),
                }),
                nodes: nodes
                    .iter()
                    .map(|_| CpuNode {
                        lent: AtomicU64::new(0),
                        returned: AtomicU64::new(0),
                        in_place: AtomicU64::new(0),
                    })
                    .collect(),
            })
            .collect();
        Pcpu { cpus, nodes: nodes.iter().map(|&(b, f)| NodeReserve::new(b, f)).collect() }
    }

    /// Free frames in node `n`'s reserves, from counters (exact at rest, a moment's
    /// approximation while CPUs get and put).
    pub fn reserved(&self, n: usize) -> u64 {
        let nr = &self.nodes[n];
        let frames = nr.frames.load(Relaxed);
        let loaned = self.cpus.iter().fold(0u64, |a, c| {
            let c = &c.nodes[n];
            a.wrapping_add(c.lent.load(Relaxed)).wrapping_sub(c.returned.load(Relaxed))
        });
        let loaned = loaned.wrapping_sub(nr.settled.load(Relaxed));
        frames.saturating_sub(if loaned > frames { frames } else { loaned })
    }

    /// Of node `n`'s reserved frames, those in parked blocks that hold old bytes (a
    /// background `scrub_step` returns parked blocks to the free lists, where they count
    /// as `free_dirty` until scrubbed).
    pub fn parked_dirty(&self, n: usize) -> u64 {
        self.nodes[n].parked_dirty.load(Relaxed)
    }

    /// Frames zeroed in place by the fast path on node `n`.
    pub fn in_place(&self, n: usize) -> u64 {
        self.cpus.iter().map(|c| c.nodes[n].in_place.load(Relaxed)).sum()
    }

    /// Frames zeroed in place by the fast path for `owner`.
    pub fn in_place_of(&self, owner: DomId) -> u64 {
        let of = |s: &CpuSlot| {
            let last = if s.in_place_last.0 == owner { s.in_place_last.1 } else { 0 };
            s.in_place_by_owner.get(&owner).copied().unwrap_or(0) + last
        };
        self.cpus.iter().map(|c| of(&c.slot.lock())).sum()
    }

    /// Bytes of fixed metadata the fast path keeps (its maps and segment pointers), and
    /// bytes of what it has allocated since (records, owner tables, lists).
    pub fn bytes(&self) -> (u64, u64) {
        self.nodes.iter().map(NodeReserve::bytes).fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    }
}
