//! The plain C structs of the interface, and their checked conversions to the heap's types.

use crate::status::{Failure, ScrubheapStatus};
use scrubheap::{
    AllocRequest, Claim, ClaimTarget, DomId, Extent, HeapConfig, HeapStats, Mfn, NodePref, NodeSpec, NodeStats,
    Offlined, Policy,
};
use std::ffi::c_void;

/// Writes zero over `count` frames from frame `first`.
pub type ScrubheapZeroFn = Option<unsafe extern "C" fn(ctx: *mut c_void, first: u64, count: u64)>;
/// Whether `count` frames from frame `first` are all zero.
pub type ScrubheapIsZeroFn = Option<unsafe extern "C" fn(ctx: *mut c_void, first: u64, count: u64) -> bool>;
/// Copies `count` frames from frame `src` to frame `dst` (the ranges do not overlap).
pub type ScrubheapCopyFn = Option<unsafe extern "C" fn(ctx: *mut c_void, src: u64, dst: u64, count: u64)>;

/// The memory behind the heap's frames, which is the caller's: the heap calls these for
/// frames it owns exclusively at that moment (free frames being scrubbed, frames being
/// handed over), never for frames an owner holds. Every function must be set.
///
/// They may be called from any thread that calls into the heap, several at once for
/// disjoint frame ranges, for as long as the heap (or one of its tickets) lives. They must
/// return normally: no `longjmp` over the library's frames and no C++ exception.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct ScrubheapMemoryOps {
    /// Passed to every callback as is.
    pub ctx: *mut c_void,
    /// Writes zero over frames.
    pub zero: ScrubheapZeroFn,
    /// Whether frames are all zero.
    pub is_zero: ScrubheapIsZeroFn,
    /// Copies frames.
    pub copy: ScrubheapCopyFn,
}

/// `ScrubheapConfig::policy`: idle scrubbing, preemptible in-place scrubbing (the design).
pub const SCRUBHEAP_POLICY_SCRUBHEAP: u32 = 0;
/// `ScrubheapConfig::policy`: scrub on free, synchronously.
pub const SCRUBHEAP_POLICY_SYNC: u32 = 1;
/// `ScrubheapConfig::policy`: scrub on allocation only.
pub const SCRUBHEAP_POLICY_ALLOC: u32 = 2;
/// `ScrubheapConfig::policy`: as Xen 4.10 and later (whole-chunk in-place scrubs).
pub const SCRUBHEAP_POLICY_XEN: u32 = 3;
/// `ScrubheapConfig::policy`: as Xen with dirty allocations capped at 2 MiB.
pub const SCRUBHEAP_POLICY_XEN_CAP2M: u32 = 4;

/// `ScrubheapConfig::movable_from`: no Movable zone.
pub const SCRUBHEAP_NO_MOVABLE: u64 = u64::MAX;
/// `ScrubheapAllocRequest::node` and `ScrubheapClaim::node`: any node (a global claim).
pub const SCRUBHEAP_ANY_NODE: u32 = u32::MAX;
/// `ScrubheapAllocRequest::flags`: only the given node, no fallback to others.
pub const SCRUBHEAP_ALLOC_EXACT: u32 = 1;
/// `ScrubheapAllocRequest::flags`: movable memory (may be migrated; prefers the Movable zone).
pub const SCRUBHEAP_ALLOC_MOVABLE: u32 = 2;
/// `ScrubheapAllocRequest::flags`: hand the frames over unscrubbed (the caller overwrites them).
pub const SCRUBHEAP_ALLOC_NOSCRUB: u32 = 4;
/// `ScrubheapAllocRequest::flags`: sealed frames (a layer above the heap manages them):
/// `scrubheap_free`, pins and moves refuse them; only a `SCRUBHEAP_RANGE_FREE_SEALED` job
/// gives them back. Not with `SCRUBHEAP_ALLOC_MOVABLE`.
pub const SCRUBHEAP_ALLOC_SEALED: u32 = 8;

/// `scrubheap_mark_broken`: the frame was free and is out of service now.
pub const SCRUBHEAP_BROKEN_NOW: u32 = 0;
/// `scrubheap_mark_broken`: the frame is allocated; it leaves service when freed.
pub const SCRUBHEAP_BROKEN_WHEN_FREED: u32 = 1;
/// `scrubheap_mark_broken`: the frame was already marked broken.
pub const SCRUBHEAP_BROKEN_ALREADY: u32 = 2;

/// The most nodes a heap may have.
pub const SCRUBHEAP_MAX_NODES: u32 = 1024;
/// The most entries one claim set may have.
pub const SCRUBHEAP_MAX_CLAIMS: usize = 4096;

/// How to build a heap. Node `i` owns the `node_frames[i]` frames after node `i - 1`'s;
/// node 0 starts at `first_frame`.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct ScrubheapConfig {
    /// Bytes per frame: a power of two of at least 4096; 0 means 4096.
    pub frame_size: u64,
    /// The heap's first frame number.
    pub first_frame: u64,
    /// Number of nodes, 1 to `SCRUBHEAP_MAX_NODES`.
    pub node_count: u32,
    /// `node_count` frame counts, one per node.
    pub node_frames: *const u64,
    /// Offset in every node where its Movable zone begins, or `SCRUBHEAP_NO_MOVABLE`.
    pub movable_from: u64,
    /// One of the `SCRUBHEAP_POLICY_*` values.
    pub policy: u32,
    /// Frames zeroed between two preemption checks; 0 means 256.
    pub scrub_batch: u64,
    /// Whether every frame starts dirty (memory a previous boot left): the heap never
    /// hands any of it over before zeroing it.
    pub initially_dirty: bool,
    /// The memory behind the frames.
    pub memory: ScrubheapMemoryOps,
}

/// A run of `2^order` frames from `mfn`, on `node`.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubheapExtent {
    /// First frame.
    pub mfn: u64,
    /// Node of the frames.
    pub node: u32,
    /// `2^order` frames.
    pub order: u8,
}

impl From<Extent> for ScrubheapExtent {
    fn from(e: Extent) -> Self {
        ScrubheapExtent { mfn: e.mfn.0, node: e.node as u32, order: e.order }
    }
}

/// An allocation request.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct ScrubheapAllocRequest {
    /// `2^order` frames, naturally aligned; 0 to 18.
    pub order: u8,
    /// Who will own them.
    pub owner: u32,
    /// Preferred node, or `SCRUBHEAP_ANY_NODE` for the node with the most free memory.
    pub node: u32,
    /// `SCRUBHEAP_ALLOC_*` bits.
    pub flags: u32,
}

impl ScrubheapAllocRequest {
    pub(crate) fn to_request(self) -> Result<AllocRequest, Failure> {
        let known = SCRUBHEAP_ALLOC_EXACT | SCRUBHEAP_ALLOC_MOVABLE | SCRUBHEAP_ALLOC_NOSCRUB | SCRUBHEAP_ALLOC_SEALED;
        let bad = |m: String| Err(Failure::new(ScrubheapStatus::SCRUBHEAP_E_INVALID_ARG, m));
        if self.flags & !known != 0 {
            return bad(format!("unknown allocation flags {:#x}: use SCRUBHEAP_ALLOC_* bits", self.flags & !known));
        }
        let exact = self.flags & SCRUBHEAP_ALLOC_EXACT != 0;
        let mut req = AllocRequest::new(self.order, DomId(self.owner));
        req.node = match (self.node, exact) {
            (SCRUBHEAP_ANY_NODE, true) => {
                return bad("SCRUBHEAP_ALLOC_EXACT needs a node, not SCRUBHEAP_ANY_NODE".into())
            }
            (SCRUBHEAP_ANY_NODE, false) => NodePref::Any,
            (n, true) => NodePref::Exact(n as usize),
            (n, false) => NodePref::Prefer(n as usize),
        };
        req.movable = self.flags & SCRUBHEAP_ALLOC_MOVABLE != 0;
        req.scrub = self.flags & SCRUBHEAP_ALLOC_NOSCRUB == 0;
        req.sealed = self.flags & SCRUBHEAP_ALLOC_SEALED != 0;
        Ok(req)
    }
}

/// One entry of a domain's claim set: reserve `frames` on `node`, or anywhere with
/// `SCRUBHEAP_ANY_NODE`.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct ScrubheapClaim {
    /// A node, or `SCRUBHEAP_ANY_NODE` for a global claim.
    pub node: u32,
    /// Frames to reserve.
    pub frames: u64,
}

impl From<ScrubheapClaim> for Claim {
    fn from(c: ScrubheapClaim) -> Self {
        let target = match c.node {
            SCRUBHEAP_ANY_NODE => ClaimTarget::Global,
            n => ClaimTarget::Node(n as usize),
        };
        Claim { target, frames: c.frames }
    }
}

/// Frames of one node by state. `free_clean + free_dirty + allocated + offline + reserved`
/// is every frame of the node (read while the heap is busy, counters may be a moment apart).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubheapNodeStats {
    /// Free frames known to be zero.
    pub free_clean: u64,
    /// Free frames still holding a previous owner's bytes.
    pub free_dirty: u64,
    /// Frames held by owners (including pending allocations).
    pub allocated: u64,
    /// Frames out of service (offline, broken, isolated).
    pub offline: u64,
    /// Of the free frames, those a background scrubber holds right now.
    pub scrubbing: u64,
    /// Free frames reserved by node claims.
    pub claimed: u64,
    /// Free frames in the per-CPU fast path's reserves (0 unless Rust code on the same
    /// heap uses `get`/`put`; the C interface has no fast path).
    pub reserved: u64,
    /// Of `reserved`, the frames of parked reserve blocks that still hold old bytes:
    /// dirty memory a `scrubheap_scrub_step` returns to the free lists and scrubs.
    pub parked_dirty: u64,
}

impl From<NodeStats> for ScrubheapNodeStats {
    fn from(s: NodeStats) -> Self {
        let NodeStats { free_clean, free_dirty, allocated, offline, scrubbing, claimed, reserved, parked_dirty } = s;
        ScrubheapNodeStats { free_clean, free_dirty, allocated, offline, scrubbing, claimed, reserved, parked_dirty }
    }
}

/// The whole heap: node counters summed, and bytes scrubbed by who paid.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubheapStats {
    /// Free frames known to be zero.
    pub free_clean: u64,
    /// Free frames still holding a previous owner's bytes.
    pub free_dirty: u64,
    /// Frames held by owners.
    pub allocated: u64,
    /// Frames out of service.
    pub offline: u64,
    /// Of the free frames, those being scrubbed right now.
    pub scrubbing: u64,
    /// Frames reserved by claims (node and global) not yet allocated.
    pub claimed: u64,
    /// Bytes scrubbed by idle CPUs (`scrubheap_scrub_step`).
    pub scrubbed_background: u64,
    /// Bytes scrubbed by allocations before handing frames over.
    pub scrubbed_in_place: u64,
    /// Bytes scrubbed by frees (the sync policy).
    pub scrubbed_sync: u64,
    /// Free frames in the per-CPU fast path's reserves (see [`ScrubheapNodeStats`]).
    pub reserved: u64,
    /// Of `reserved`, dirty frames of parked reserve blocks (see [`ScrubheapNodeStats`]).
    pub parked_dirty: u64,
}

impl From<HeapStats> for ScrubheapStats {
    fn from(s: HeapStats) -> Self {
        ScrubheapStats {
            free_clean: s.free_clean,
            free_dirty: s.free_dirty,
            allocated: s.allocated,
            offline: s.offline,
            scrubbing: s.scrubbing,
            claimed: s.claimed,
            scrubbed_background: s.scrubbed.background,
            scrubbed_in_place: s.scrubbed.in_place,
            scrubbed_sync: s.scrubbed.sync,
            reserved: s.reserved,
            parked_dirty: s.parked_dirty,
        }
    }
}

/// What a completed offline did.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubheapOfflined {
    /// Frames taken out of service by this offline.
    pub frames: u64,
    /// Allocations moved out of the range.
    pub migrated_chunks: u64,
    /// Their frames.
    pub migrated_frames: u64,
    /// Background scrubs asked to hand a chunk back.
    pub aborted_scrubs: u64,
    /// Bounded steps taken (those of the isolation and the moves asked the deadline first).
    pub steps: u64,
}

impl From<Offlined> for ScrubheapOfflined {
    fn from(o: Offlined) -> Self {
        let Offlined { frames, migrated_chunks, migrated_frames, aborted_scrubs, steps } = o;
        ScrubheapOfflined { frames, migrated_chunks, migrated_frames, aborted_scrubs, steps }
    }
}

fn policy(code: u32) -> Result<Policy, Failure> {
    Ok(match code {
        SCRUBHEAP_POLICY_SCRUBHEAP => Policy::Scrubheap,
        SCRUBHEAP_POLICY_SYNC => Policy::Sync,
        SCRUBHEAP_POLICY_ALLOC => Policy::Alloc,
        SCRUBHEAP_POLICY_XEN => Policy::Xen,
        SCRUBHEAP_POLICY_XEN_CAP2M => Policy::XenCap2m,
        p => {
            let m = format!("policy {p}: use one of the SCRUBHEAP_POLICY_* values (0 to 4)");
            return Err(Failure::new(ScrubheapStatus::SCRUBHEAP_E_INVALID_ARG, m));
        }
    })
}

impl ScrubheapConfig {
    /// The heap's configuration, `node_frames` read as `node_count` entries; the heap
    /// itself validates the rest.
    ///
    /// # Safety
    /// `node_frames` must point to `node_count` readable `u64`s when not null.
    pub(crate) unsafe fn heap_config(&self) -> Result<HeapConfig, Failure> {
        if self.node_count == 0 || self.node_count > SCRUBHEAP_MAX_NODES {
            let m = format!("node_count {}: a heap has 1 to {SCRUBHEAP_MAX_NODES} nodes", self.node_count);
            return Err(Failure::new(ScrubheapStatus::SCRUBHEAP_E_INVALID_CONFIG, m));
        }
        if self.node_frames.is_null() {
            return Err(Failure::new(ScrubheapStatus::SCRUBHEAP_E_NULL, "config.node_frames is null"));
        }
        // SAFETY: not null, and the caller promises node_count readable u64s there.
        let frames = unsafe { std::slice::from_raw_parts(self.node_frames, self.node_count as usize) };
        let movable_from = (self.movable_from != SCRUBHEAP_NO_MOVABLE).then_some(self.movable_from);
        let mut config = HeapConfig::uniform(frames.len(), 1).with_policy(policy(self.policy)?);
        config.nodes = frames.iter().map(|&frames| NodeSpec { frames, movable_from, has_cpus: true }).collect();
        config.frame_size = if self.frame_size == 0 { 4096 } else { self.frame_size };
        config.first = Mfn(self.first_frame);
        if self.scrub_batch != 0 {
            config.scrub_batch = self.scrub_batch;
        }
        config.initially_dirty = self.initially_dirty;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scrubheap::{Heap, NullMemory};

    #[test]
    fn the_c_stats_carry_the_reserve_and_its_parked_dirt() {
        let heap = Heap::new(HeapConfig::uniform(1, 1 << 12).with_cpus(1), NullMemory).unwrap();
        let got: Vec<_> = (0..65).map(|_| heap.get(0, &AllocRequest::new(0, DomId(1))).unwrap()).collect();
        for e in &got[..64] {
            heap.put(0, e.mfn, 0, DomId(1)).unwrap();
        }
        let (s, n) = (ScrubheapStats::from(heap.stats()), ScrubheapNodeStats::from(heap.node_stats(0).unwrap()));
        // Parked: the first block's 64; reserved: those, the current block's 63, the spare's 64.
        assert_eq!((s.reserved, s.parked_dirty), (191, 64), "{s:?}");
        assert_eq!((n.reserved, n.parked_dirty), (191, 64), "{n:?}");
        assert_eq!(n.free_clean + n.free_dirty + n.allocated + n.offline + n.reserved, 1 << 12);
    }
}
