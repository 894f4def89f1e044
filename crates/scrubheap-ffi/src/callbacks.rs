//! The caller's callbacks: the memory behind the frames (zero, check, copy: its C struct,
//! part of the configuration, is in `types`), the preemption question, the migrator and the
//! deadline. Each is a C function pointer and the `void *` context it is called with.

use crate::types::{ScrubheapExtent, ScrubheapMemoryOps};
use scrubheap::{Deadline, DomId, Extent, FrameMemory, Mfn, Migrator, Preempt};
use std::ffi::c_void;

/// Asked between bounded steps: return true to make the operation stop there (it keeps
/// its progress) so the caller can yield.
pub type ScrubheapPreemptFn = Option<unsafe extern "C" fn(ctx: *mut c_void) -> bool>;
/// Asked between the bounded steps of an offline: return true once the deadline passed.
pub type ScrubheapDeadlineFn = Option<unsafe extern "C" fn(ctx: *mut c_void) -> bool>;
/// Copies one piece of a move: the `frames` frames at frame `offset` of `from` to the
/// same offset of `to` (at most one scrub batch; pieces come in order, from offset 0).
/// The owner keeps using `from` meanwhile. Return false to refuse the move.
pub type ScrubheapPieceCopyFn = Option<
    unsafe extern "C" fn(
        ctx: *mut c_void,
        owner: u32,
        from: ScrubheapExtent,
        to: ScrubheapExtent,
        offset: u64,
        frames: u64,
    ) -> bool,
>;
/// Ends a move once every piece is copied: point the owner's frame list at `to`. Called
/// once a move; return false to refuse (having changed nothing of the owner's mapping).
pub type ScrubheapSwitchFn =
    Option<unsafe extern "C" fn(ctx: *mut c_void, owner: u32, from: ScrubheapExtent, to: ScrubheapExtent) -> bool>;

/// A caller's [`ScrubheapMemoryOps`] with every function checked present.
pub(crate) struct CMemory {
    ctx: *mut c_void,
    zero: unsafe extern "C" fn(*mut c_void, u64, u64),
    is_zero: unsafe extern "C" fn(*mut c_void, u64, u64) -> bool,
    copy: unsafe extern "C" fn(*mut c_void, u64, u64, u64),
}

impl CMemory {
    /// `None` if a function is missing.
    pub(crate) fn new(ops: &ScrubheapMemoryOps) -> Option<CMemory> {
        Some(CMemory { ctx: ops.ctx, zero: ops.zero?, is_zero: ops.is_zero?, copy: ops.copy? })
    }
}

// SAFETY: scrubheap_heap_new's contract requires the memory callbacks and their context
// to be callable from any thread that calls into the heap, several at once for disjoint
// frames: exactly what sharing a CMemory between threads does.
unsafe impl Send for CMemory {}
// SAFETY: as for Send.
unsafe impl Sync for CMemory {}

impl FrameMemory for CMemory {
    fn zero(&self, first: Mfn, count: u64) {
        // SAFETY: the caller of scrubheap_heap_new promised the function and its context
        // stay valid while the heap lives and may be called for any frames of the heap.
        unsafe { (self.zero)(self.ctx, first.0, count) }
    }
    fn is_zero(&self, first: Mfn, count: u64) -> bool {
        // SAFETY: as for `zero`.
        unsafe { (self.is_zero)(self.ctx, first.0, count) }
    }
    fn copy(&self, src: Mfn, dst: Mfn, count: u64) {
        // SAFETY: as for `zero`.
        unsafe { (self.copy)(self.ctx, src.0, dst.0, count) }
    }
}

/// A caller's yes/no question with its context: a preemption check ([`ScrubheapPreemptFn`],
/// no function: never yield) or a deadline ([`ScrubheapDeadlineFn`], no function: no
/// deadline, every offline step is bounded). Both have the same C signature, so one type
/// serves both traits.
pub(crate) struct CQuestion {
    pub f: Option<unsafe extern "C" fn(ctx: *mut c_void) -> bool>,
    pub ctx: *mut c_void,
}

impl CQuestion {
    /// The caller's answer; false when there is no function.
    fn ask(&self) -> bool {
        // SAFETY: the caller passed the function and context to this very call, which
        // promises they are valid until it returns; the heap asks only during the call.
        self.f.is_some_and(|f| unsafe { f(self.ctx) })
    }
}

impl Preempt for CQuestion {
    fn check(&self) -> bool {
        self.ask()
    }
}

impl Deadline for CQuestion {
    fn passed(&self) -> bool {
        self.ask()
    }
}

/// An owner's migrator: a move copies in pieces of at most one batch (`copy`, with a
/// preemption point between two pieces), then switches the owner's mapping once
/// (`switch_to`). With either function null every move is refused: a pin in the Movable
/// zone is refused and an offline over allocations rolls back.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct ScrubheapMigrator {
    /// Passed to `copy` and `switch_to` as is.
    pub ctx: *mut c_void,
    /// Copies one piece; null refuses every move.
    pub copy: ScrubheapPieceCopyFn,
    /// Points the owner at the new frames; null refuses every move.
    pub switch_to: ScrubheapSwitchFn,
}

impl Migrator for ScrubheapMigrator {
    fn copy(&self, owner: DomId, from: Extent, to: Extent, offset: u64, frames: u64) -> bool {
        let (from, to) = (ScrubheapExtent::from(from), ScrubheapExtent::from(to));
        // SAFETY: as for CQuestion: valid for the duration of the call that passed it.
        self.switch_to.is_some() && self.copy.is_some_and(|f| unsafe { f(self.ctx, owner.0, from, to, offset, frames) })
    }
    fn switch(&self, owner: DomId, from: Extent, to: Extent) -> bool {
        let (from, to) = (ScrubheapExtent::from(from), ScrubheapExtent::from(to));
        // SAFETY: as for CQuestion: valid for the duration of the call that passed it.
        self.switch_to.is_some_and(|f| unsafe { f(self.ctx, owner.0, from, to) })
    }
}
