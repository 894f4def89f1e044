//! The per-CPU fast path's state (see the `pcpu` module for the operations): the CPUs'
//! slots and counters, and per node the block tables, the live set and spare records.
//! Kept apart from the operations so that the heap can hold it without importing them.

use crate::sync::{AtomicU64, SpinMutex as Mutex};
use crate::types::DomId;
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::sync::atomic::Ordering::Relaxed;

use crate::types::MAX_CPUS;

/// The owner a node's metadata names for a block held by the per-CPU fast path, and
/// [`crate::Heap::chunk_at`] names for a chunk free in a reserve. The fast path refuses requests
/// of this owner.
pub const RESERVE_OWNER: DomId = DomId(u32::MAX);

/// The orders the fast path serves, each with log2 of the chunks in one of its blocks.
pub const FAST_ORDERS: [(u8, u8); 2] = [(0, 6), (9, 4)];

pub(crate) const KINDS: usize = FAST_ORDERS.len();

#[inline]
pub(crate) fn kind_of(order: u8) -> Option<usize> {
    FAST_ORDERS.iter().position(|&(o, _)| o == order)
}

#[inline]
pub(crate) fn block_order(k: usize) -> u8 {
    FAST_ORDERS[k].0 + FAST_ORDERS[k].1
}

#[inline]
pub(crate) fn all_chunks(k: usize) -> u64 {
    u64::MAX >> (64 - (1u32 << FAST_ORDERS[k].1))
}

const _: () = assert!(FAST_ORDERS[0].1 <= 6 && FAST_ORDERS[1].1 <= 6, "a block's chunks fit a u64 mask");

/// One block of the fast path.
#[repr(align(64))]
pub(crate) struct Block {
    /// Bit i: chunk i is free in the reserve.
    pub(crate) free: u64,
    /// Bit i: chunk i is free and holds old bytes.
    pub(crate) dirty: u64,
    /// Bit i: chunk i is free but out of `free` while its CPU's `scrub_reserve` zeroes
    /// it; a block with such chunks is not settled until they are back.
    pub(crate) scrubbing: u64,
    /// The CPU allocating from it, if any (its slot names it).
    pub(crate) cpu: Option<u16>,
    /// Owner of each loaned chunk.
    pub(crate) owners: [u32; 64],
}

pub(crate) type Entry = Mutex<Option<Box<Block>>>;

/// Most spare block records a node keeps for its next refills.
pub(crate) const MAX_SPARE: usize = 16;

pub(crate) struct Live {
    /// Live blocks as (kind, index).
    pub(crate) set: BTreeSet<(usize, u32)>,
    /// Records of returned blocks, reused by refills (at most [`MAX_SPARE`]). Boxed: a
    /// record moves between here and a table entry without copying its 320 bytes.
    #[allow(clippy::vec_box)]
    pub(crate) spare: Vec<Box<Block>>,
}

pub(crate) struct NodeReserve {
    /// Per fast order: entry `i` holds the block of region `first[k] + i` (absolute frame
    /// number >> block order), if one is live.
    pub(crate) tables: [Vec<Entry>; KINDS],
    pub(crate) first: [u64; KINDS],
    /// Live blocks, and spare block records; changed under the node lock.
    pub(crate) live: Mutex<Live>,
    /// Frames in live blocks (free or loaned); changed under the node lock.
    pub(crate) frames: AtomicU64,
    /// Frames of loans that became ordinary allocations when their block was settled
    /// (wrapping; see [`Pcpu::reserved`]).
    pub(crate) settled: AtomicU64,
}

/// Per CPU and node counters, each on its own cache line.
#[repr(align(64))]
pub(crate) struct CpuNode {
    /// Frames lent through this CPU's gets (written under its slot lock: a plain store).
    pub(crate) lent: AtomicU64,
    /// Frames put back through this CPU (any thread may put for any CPU: an atomic add).
    pub(crate) returned: AtomicU64,
    /// Frames this CPU's gets zeroed in place.
    pub(crate) in_place: AtomicU64,
}

pub(crate) struct CpuSlot {
    /// Per node and fast order: the index of the block this CPU allocates from.
    pub(crate) current: Vec<[Option<u32>; KINDS]>,
    /// The node the last `NodePref::Any` request was served from.
    pub(crate) any_node: usize,
    /// Frames zeroed in place by this CPU's gets, per owner; the latest owner's count is
    /// kept beside until another owner's get (a map update per get costs too much).
    pub(crate) in_place_by_owner: BTreeMap<DomId, u64>,
    pub(crate) in_place_last: (DomId, u64),
}

pub(crate) struct CpuCell {
    pub(crate) slot: Mutex<CpuSlot>,
    pub(crate) nodes: Vec<CpuNode>,
}

/// The reserves of every CPU and the block tables of every node.
pub(crate) struct Pcpu {
    pub(crate) cpus: Vec<CpuCell>,
    pub(crate) nodes: Vec<NodeReserve>,
}

impl NodeReserve {
    pub(crate) fn new(base: u64, frames: u64) -> Self {
        let mut first = [0; KINDS];
        let tables = core::array::from_fn(|k| {
            let bo = block_order(k);
            first[k] = base >> bo;
            let last = (base + frames - 1) >> bo;
            (first[k]..=last).map(|_| Mutex::new(None)).collect()
        });
        NodeReserve {
            tables,
            first,
            live: Mutex::new(Live { set: BTreeSet::new(), spare: Vec::new() }),
            frames: AtomicU64::new(0),
            settled: AtomicU64::new(0),
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
}

impl Pcpu {
    pub fn new(nodes: &[(u64, u64)], cpus: usize) -> Self {
        debug_assert!((1..=MAX_CPUS).contains(&cpus));
        let cpus = (0..cpus)
            .map(|_| CpuCell {
                slot: Mutex::new(CpuSlot {
                    current: alloc::vec![[None; KINDS]; nodes.len()],
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

    /// Bytes of fixed metadata the fast path keeps (its block tables), and bytes of the
    /// live blocks' records now.
    pub fn bytes(&self) -> (u64, u64) {
        let per = core::mem::size_of::<Entry>() as u64;
        let fixed = self.nodes.iter().map(|nr| nr.tables.iter().map(|t| t.len() as u64 * per).sum::<u64>()).sum();
        let blocks: u64 = self.nodes.iter().map(|nr| nr.live.lock().set.len() as u64).sum();
        (fixed, blocks * core::mem::size_of::<Block>() as u64)
    }
}
