//! A C ABI for the scrubheap heap, for hypervisors, kernels and test harnesses written
//! in C. Build `libscrubheap_ffi.a` (or `.so`) with `cargo build --release -p
//! scrubheap-ffi` and link it with `-lpthread -ldl -lm`; the same build writes the header,
//! `target/release/include/scrubheap.h`, from this crate's sources with cbindgen
//! (`build.rs`), so it cannot fall behind the code.
//!
//! # The interface
//! - A heap is an opaque `ScrubheapHeap *` built by `scrubheap_heap_new` from a
//!   `ScrubheapConfig` (nodes, frame size, Movable zones, policy, whether memory starts
//!   dirty) and destroyed by `scrubheap_heap_destroy`.
//! - The memory behind the frames is the caller's: the heap calls the caller's `zero`,
//!   `is_zero` and `copy` functions (with the caller's `void *` context) for frames it
//!   owns at that moment, so a hypervisor plugs in its own mapping and zeroing.
//! - Allocation: `scrubheap_alloc` (scrubs dirty frames in one go) or
//!   `scrubheap_alloc_start`, which returns a scrub ticket when the frames are dirty; the
//!   caller advances it with `scrubheap_ticket_advance` in bounded steps, yielding
//!   whenever its preemption callback says so, and drops it with `scrubheap_ticket_drop`.
//! - Idle CPUs call `scrubheap_scrub_step`; claims, long-term pins (moving frames out of
//!   the Movable zone through a C migrator, or refusing without one), offline, online,
//!   broken frames, per-node statistics and the invariant check complete the set.
//! - Offline, online, pins and frees or unpins of ranges split into many chunks are also
//!   jobs (`scrubheap_offline_start`, `scrubheap_online_start`, `scrubheap_pin_start`,
//!   `scrubheap_range_start`): `scrubheap_job_advance` runs bounded steps and returns
//!   `SCRUBHEAP_PENDING` whenever the preemption callback says to yield;
//!   `scrubheap_job_cancel` and `scrubheap_job_drop` stop them. A job handle is used by one
//!   thread at a time, like a ticket, and keeps its heap from being destroyed.
//!   Populate-on-demand is not part of this interface.
//!
//! # Errors
//! Every function returns a `ScrubheapStatus`: `SCRUBHEAP_OK` (0), `SCRUBHEAP_PENDING`
//! (1), or a negative code after which the heap is as it was (an offline that rolls back
//! keeps the moves it made). `scrubheap_status_str(code)`
//! returns a static message for a code; `scrubheap_last_error` copies the detail of the
//! calling thread's last refusal (which frame, which owner, what to do). Null pointers,
//! handles of the wrong kind and misuse (double free, wrong owner, out-of-range frames,
//! advancing a finished ticket, destroying a heap with live tickets) return codes. No
//! panic crosses the boundary: each entry point catches one and returns
//! `SCRUBHEAP_E_PANIC`, and the heap then refuses every call but destroy
//! (`SCRUBHEAP_E_POISONED`), since its state may be half-changed.
//!
//! # Thread safety
//! - A heap handle may be used from any number of threads at once: the heap locks
//!   internally (per node). Its memory callbacks are then called from those threads,
//!   several at once for disjoint frame ranges, and must allow that.
//! - `scrubheap_heap_destroy` must not run concurrently with any other call on that heap
//!   or its tickets, and the handle must not be used after it returns `SCRUBHEAP_OK`.
//! - A ticket handle must be used by one thread at a time (any thread, one after another),
//!   and not after `scrubheap_ticket_drop`.
//! - The preemption, deadline and migrator callbacks passed to a call are only called
//!   during that call, on the calling thread, except that the migrator may run while other
//!   threads use the heap. No callback may call back into the same heap.
//! - Callbacks must return normally (no `longjmp` across the library, no C++ exception).
//! - A handle that is not null must come from this library. A handle of the wrong kind is
//!   refused by its first word; a destroyed handle's memory is freed, so using one is
//!   undefined behaviour even though it is often refused.
#![warn(missing_docs)]

mod api;
mod callbacks;
mod handle;
mod jobs;
mod ops;
mod status;
mod ticket;
mod types;

pub use api::*;
pub use callbacks::*;
pub use handle::{ScrubheapHeap, ScrubheapTicket};
pub use jobs::*;
pub use ops::*;
pub use status::{scrubheap_last_error, scrubheap_status_str, ScrubheapStatus};
pub use ticket::*;
pub use types::*;
