//! scrubheap on real memory.
//!
//! - [`Arena`]: one anonymous mapping of frames (hugetlbfs pages when the host has a pool,
//!   transparent huge pages advised otherwise), prefaulted in parallel, implementing the
//!   heap's [`scrubheap::FrameMemory`] plus what the runtime needs for owners and leak
//!   checks (fill, poison, non-zero counts).
//! - [`Kernel`]: the zeroing kernels (`rep stosb`, AVX2 and AVX-512 non-temporal stores,
//!   AMD `clzero`, portable `write_bytes`), detected at run time, and [`calibrate`] to
//!   pick the fastest.
//! - [`thread_cpu_time`]: the calling thread's CPU time.
//!
//! In layers, each using only those before it: `arena` (with the zeroing kernels) ->
//! [`pool`] -> [`numa`] (where a pool's nodes really sit) and [`tenants`] (guests, PoD
//! guests, pins, hot-remove) -> [`run`].
//!
//! This crate's `unsafe` (the mapping, the zeroing kernels, the clock, thread affinity,
//! the kernel's memory-policy queries, the kernel baseline's guests and the `SIGPIPE`
//! disposition) is in `arena`, `zero`, `clock`, `pool`, `priority`, `numa`, `process` and
//! `tenants::guest`; each block says why it holds.
//! The VMM crate has its own (KVM).
//!
//! ```
//! use scrubheap::{Heap, HeapConfig, Mfn, NeverPreempt};
//! use scrubheap_host::{Arena, ArenaConfig};
//! let arena = Arena::new(ArenaConfig::new(Mfn(0), 1024, 4096)).unwrap();
//! arena.fill(Mfn(0), 1024, 0xdead);
//! let heap = Heap::new(HeapConfig::uniform(1, 1024).with_initially_dirty(true), &arena).unwrap();
//! while heap.scrub_step(0, 256, &NeverPreempt).unwrap() > 0 {}
//! assert_eq!(arena.count_nonzero_words(Mfn(0), 1024), 0);
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod arena;
mod clock;
pub mod instrument;
pub mod numa;
pub mod pool;
pub mod priority;
pub mod process;
pub mod run;
pub mod tenants;
mod zero;

pub use arena::sys::mmap_anon as map_anonymous;
pub use arena::{tag_of, Arena, ArenaConfig, ArenaError, Backing, NumaBinding, Prefault, POISON};
pub use clock::thread_cpu_time;
pub use priority::ScrubPriority;
pub use run::report;
pub use tenants::{guest, hot_remove, pins, pod_guest, GuestOps, GuestTeardown, PinOps, PodGuestOps};
pub use zero::{calibrate, median, BatchSizer, Calibration, Kernel, SizedPreempt, UnknownKernel, BATCH_TARGET_NS};
