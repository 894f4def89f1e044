//! Counters a toolstack reads: frames per state per node, bytes scrubbed by source.

/// Defines a struct of frame counters by state, the same for one node and for the whole
/// heap, with the extra fields given, and its `total`: the one place that says which
/// states partition the frames.
macro_rules! frame_counters {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$m])*
        #[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            /// Free frames known to be zero.
            pub free_clean: u64,
            /// Free frames that still hold a previous owner's bytes.
            pub free_dirty: u64,
            /// Frames held by owners (including pending allocations and `sync` frees in
            /// progress).
            pub allocated: u64,
            /// Frames out of service (offline, broken, or isolated by an offline in
            /// progress).
            pub offline: u64,
            /// Of the free frames, those in chunks a background scrubber holds right now.
            pub scrubbing: u64,
            /// Free frames reserved by claims: by the node's claims in [`NodeStats`], by
            /// every claim (node and global) not yet allocated in [`HeapStats`].
            pub claimed: u64,
            /// Free frames in the per-CPU fast path's reserves (not in `free_*`, not
            /// allocated), parked blocks included (their frames are dirty until a
            /// `scrub_step` returns them to the free lists).
            pub reserved: u64,
            /// Of the `reserved` frames, those in parked blocks that still hold old bytes:
            /// memory waiting for a background scrubber, whose `scrub_step` returns parked
            /// blocks to the free lists (where they count as `free_dirty` until scrubbed).
            /// Dirty chunks of blocks a CPU allocates from are not counted here.
            pub parked_dirty: u64,
            $($(#[$fm])* pub $field: $ty,)*
        }

        impl $name {
            /// All frames counted: free (clean or dirty), allocated, offline and reserved
            /// (`scrubbing`, `claimed` and `parked_dirty` count some of these again).
            pub fn total(&self) -> u64 {
                self.free_clean + self.free_dirty + self.allocated + self.offline + self.reserved
            }

            /// Frames waiting for a background scrubber: dirty on the free lists, or
            /// dirty in parked reserve blocks.
            pub fn awaiting_scrub(&self) -> u64 {
                self.free_dirty + self.parked_dirty
            }
        }
    };
}

frame_counters! {
    /// Frames of one node by state.
    NodeStats {}
}

impl NodeStats {
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

frame_counters! {
    /// The whole heap: node stats summed, plus scrub accounting.
    HeapStats {
        /// Bytes scrubbed by source.
        scrubbed: ScrubBytes,
    }
}
