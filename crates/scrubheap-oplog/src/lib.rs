//! The op log (DESIGN section 6): a text format with one heap operation a line, the
//! [`Op`] type whose `Display` writes it, its parser, and a [`Replayer`] that runs a log against a fresh metadata-only heap and
//! counts what happened.
//!
//! The replayer never panics on any input. A line it cannot parse or execute is one
//! counted error (keyed by a kind: [`scrubheap::HeapError::kind`], or one of the names in
//! [`kind`]) and replay goes on. After every line it runs cheap checks (counters,
//! conservation, the frames the log holds against the frames the heap says are
//! allocated); at every `check` line, whenever a `heap` line ends the current heap, and at
//! the end, it runs the full [`scrubheap::Heap::check_invariants`]. Failed checks are counted as
//! invariant violations: they are heap (or replayer) bugs, never input errors.
//!
//! ```
//! use scrubheap_oplog::Replayer;
//! let mut r = Replayer::new();
//! r.replay_str(
//!     "heap nodes=2 frames_per_node=4096\n\
//!      alloc id=a dom=1 order=9 node=0\n\
//!      free id=a offset=256 order=8   # give back the upper half\n\
//!      free id=a\n\
//!      free id=a                      # a is gone: UnknownId\n\
//!      scrub node=0 pages=4096\n\
//!      check\n",
//! );
//! let report = r.finish();
//! assert_eq!((report.ops, report.ok), (7, 6));
//! assert_eq!(report.errors["UnknownId"], 1);
//! assert_eq!(report.invariant_violations, 0);
//! assert_eq!(report.final_.free_clean, 8192);
//! ```
//!
//! The lines (numbers are decimal or `0x` hex; `#` starts a comment):
//!
//! ```text
//! heap nodes=N frames_per_node=F [movable_from=M] [policy=P]
//! alloc id=X dom=D order=K [node=N] [exact] [movable] [noscrub]
//! alloc-at id=X mfn=M order=K dom=D         # exactly that aligned range, if all free
//! free id=X | free id=X offset=O order=K | free mfn=M order=K dom=D
//! scrub node=N pages=P
//! claim dom=D node=N pages=P | claim dom=D global pages=P | claim dom=D cancel
//! pin id=X offset=O order=K | unpin id=X offset=O order=K
//! offline mfn=M count=C [steps=S] | online mfn=M count=C | broken mfn=M
//! check
//! pod dom=D max_pages=N target=T [node=X]   # create a populate-on-demand guest
//! touch dom=D gfn=G [data]                  # guest access; `data` writes that 4 KiB page
//! balloon dom=D gfn=G order=K               # decrease reservation
//! pod_target dom=D target=T
//! destroy dom=D                             # its PoD pages go back to the heap
//! ```
//!
//! A pin or an offline that moves frames moves the log's allocation with them (the
//! replayer is the owner's [`scrubheap::Migrator`]: it moves metadata only), so later
//! `offset=` lines of that id name the frames where they are now. `steps=S` gives an
//! offline a deadline of S steps ([`scrubheap::StepBudget`]); without it, none.
//!
//! The replay heap runs on [`SparseMemory`], so `touch ... data` leaves pages that zero
//! checks see as used. A touch that crashes its guest (out of PoD memory) is one
//! `PodExhausted` error (PoD errors count as `Pod` + the variant of
//! [`scrubheap_pod::PodError`], see [`scrubheap_pod::PodError::kind`]). The PoD guests
//! are a [`scrubheap_pod::Pods`] beside the heap ([`Replayer::pods`]). A `free` or `pin`
//! of frames a PoD guest holds is refused by the heap (`Sealed`: the PoD layer allocates
//! its pages sealed): they leave the guest through `balloon` or `destroy`.
//!
//! Modules: [`Op`] (`op`), [`parse_line`] (`parse`), the [`Replayer`] and its checks
//! (`replay`; every populate-on-demand call is in `replay/pod.rs`), the [`ReplayReport`]
//! (`report`, `Serialize`), and [`generate`], the random-log generator of `scrubheap
//! replay --generate` (`gen`).
#![forbid(unsafe_code)]

mod gen;
mod op;
mod parse;
mod replay;
mod report;
mod sparse;

pub use gen::{generate, GenConfig, GenError};
pub use op::{Id, Op, ParseError, MAX_ID_BYTES};
pub use parse::parse_line;
pub use replay::{Allocation, ReplayHeap, Replayer};
pub use report::{FinalCounts, Outcome, PodReport, ReplayReport, SectionReport, MAX_VIOLATION_MESSAGES};
pub use sparse::SparseMemory;

/// The largest heap (in frames, all nodes together) a `heap` line may ask for unless the
/// replayer is told otherwise: 2^28 frames (1 TiB at 4 KiB), about 3 GiB of metadata.
pub const DEFAULT_MAX_FRAMES: u64 = 1 << 28;

/// The most nodes a `heap` line may ask for (the heap's own limit).
pub const MAX_NODES: u64 = 1024;

/// Error kinds of the replayer's own (the others are [`scrubheap::HeapError::kind`] names).
pub mod kind {
    /// The line is not an op-log line.
    pub const PARSE: &str = "Parse";
    /// An operation before any (successful) `heap` line.
    pub const NO_HEAP: &str = "NoHeap";
    /// A `free id=X` for an id that holds nothing (never allocated, or all freed).
    pub const UNKNOWN_ID: &str = "UnknownId";
    /// An `alloc id=X` while X still holds frames.
    pub const DUPLICATE_ID: &str = "DuplicateId";
    /// A `heap` line beyond the replayer's memory guard (or `pod` lines whose p2m sizes
    /// together exceed it).
    pub const TOO_LARGE: &str = "TooLarge";
}
