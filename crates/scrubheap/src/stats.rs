//! Counters a toolstack reads: frames per state per node, bytes scrubbed by source.

/// Frames of one node by state.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Free frames known to be zero.
    pub free_clean: u64,
    /// Free frames that still hold a previous owner's bytes.
    pub free_dirty: u64,
    /// Frames held by owners (including pending allocations and `sync` frees in progress).
    pub allocated: u64,
    /// Frames out of service (offline, broken, or isolated by an offline in progress).
    pub offline: u64,
    /// Of the free frames, those in chunks a background scrubber holds right now.
    pub scrubbing: u64,
    /// Free frames reserved by node claims.
    pub claimed: u64,
    /// Free frames in the per-CPU fast path's reserves (not in `free_*`, not allocated),
    /// parked blocks included (their frames are dirty until a `scrub_step` returns them
    /// to the free lists).
    pub reserved: u64,
}

impl NodeStats {
    /// All frames the node has.
    pub fn total(&self) -> u64 {
        self.free_clean + self.free_dirty + self.allocated + self.offline + self.reserved
    }
    /// Free frames, clean or dirty (including those being scrubbed).
    pub fn free(&self) -> u64 {
        self.free_clean + self.free_dirty
    }
}

/// Free frames of one zone of one node (see [`crate::Heap::zone_stats`]).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ZoneStats {
    /// Frames of free chunks on the zone's free lists that are known to be zero.
    pub free_clean: u64,
    /// Frames of free chunks on the zone's free lists that still hold old bytes.
    pub free_dirty: u64,
    /// Frames of free chunks of the zone a background scrubber holds right now.
    pub scrubbing: u64,
}

impl ZoneStats {
    /// All free frames of the zone, being scrubbed or not.
    pub fn free(&self) -> u64 {
        self.free_clean + self.free_dirty + self.scrubbing
    }
}

/// Bytes scrubbed, by who paid for it.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubBytes {
    /// By idle CPUs through `scrub_step`.
    pub background: u64,
    /// By allocations, in place, before handing frames over.
    pub in_place: u64,
    /// By frees, synchronously (the `sync` policy).
    pub sync: u64,
}

/// The whole heap: node stats summed, plus scrub accounting.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Free frames known to be zero.
    pub free_clean: u64,
    /// Free frames that still hold a previous owner's bytes.
    pub free_dirty: u64,
    /// Frames held by owners.
    pub allocated: u64,
    /// Frames out of service.
    pub offline: u64,
    /// Of the free frames, those being scrubbed right now.
    pub scrubbing: u64,
    /// Frames reserved by claims (node and global) not yet allocated.
    pub claimed: u64,
    /// Free frames in the per-CPU fast path's reserves (not in `free_*`, not allocated).
    pub reserved: u64,
    /// Bytes scrubbed by source.
    pub scrubbed: ScrubBytes,
}

impl HeapStats {
    /// All frames the heap has.
    pub fn total(&self) -> u64 {
        self.free_clean + self.free_dirty + self.allocated + self.offline + self.reserved
    }
}
