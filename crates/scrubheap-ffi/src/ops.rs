//! Long-term pins, offline and online, broken frames.

use crate::callbacks::{CQuestion, ScrubheapDeadlineFn, ScrubheapMigrator, ScrubheapPreemptFn};
use crate::handle::{with_heap, with_heap_out, ScrubheapHeap};
use crate::status::ScrubheapStatus;
use crate::types::{
    ScrubheapExtent, ScrubheapOfflined, SCRUBHEAP_BROKEN_ALREADY, SCRUBHEAP_BROKEN_NOW, SCRUBHEAP_BROKEN_WHEN_FREED,
};
use scrubheap::{Broken, DomId, Mfn};
use std::ffi::c_void;

/// The migrator a null pointer stands for: one that refuses every move.
const NO_MIGRATOR: ScrubheapMigrator = ScrubheapMigrator { ctx: std::ptr::null_mut(), copy: None, switch_to: None };

/// Reads a migrator, null meaning none.
///
/// # Safety
/// `m` must be null or valid.
unsafe fn migrator(m: *const ScrubheapMigrator) -> ScrubheapMigrator {
    // SAFETY: the caller's contract: null or valid.
    unsafe { m.as_ref() }.copied().unwrap_or(NO_MIGRATOR)
}

/// Takes a long-term pin on `2^order` frames from `mfn` that `owner` holds; `*out` gets
/// where they are now. Frames in the Movable zone are first moved to Normal memory
/// through `migrator` (null, or a null function: every move is refused, and such a pin
/// with it, `SCRUBHEAP_E_MIGRATION_REFUSED`, nothing changed). A move copies in pieces of
/// at most one batch and asks `preempt(ctx)` between two (null: never); a pin cannot stop
/// halfway, so the answer does not end it early: reschedule inside the callback.
///
/// # Safety
/// `heap` must be null or a live handle; `migrator` and `out` null or valid; the
/// callbacks may be called with their contexts during this call.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_pin(
    heap: *mut ScrubheapHeap,
    mfn: u64,
    order: u8,
    owner: u32,
    migrator: *const ScrubheapMigrator,
    preempt: ScrubheapPreemptFn,
    ctx: *mut c_void,
    out: *mut ScrubheapExtent,
) -> ScrubheapStatus {
    // SAFETY: the caller's contract on `heap` and `out`.
    unsafe {
        with_heap_out(heap, out, "out", |s| {
            // SAFETY: the caller's contract on `migrator`.
            let m = self::migrator(migrator);
            let preempt = CQuestion { f: preempt, ctx };
            Ok(s.heap.pin(Mfn(mfn), order, DomId(owner), &m, &preempt)?.into())
        })
    }
}

/// Releases one long-term pin on `2^order` frames from `mfn`.
///
/// # Safety
/// `heap` must be null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_unpin(heap: *mut ScrubheapHeap, mfn: u64, order: u8, owner: u32) -> ScrubheapStatus {
    // SAFETY: the caller's contract on `heap`.
    unsafe {
        with_heap(heap, |s| {
            s.heap.unpin(Mfn(mfn), order, DomId(owner))?;
            Ok(ScrubheapStatus::SCRUBHEAP_OK)
        })
    }
}

/// Takes `count` frames from `first` (inside one node) out of service in bounded steps,
/// asking `deadline(ctx)` before each (null: no deadline) and `preempt(ctx)` after each
/// (null: never; the call does not stop early, so reschedule inside the callback), and
/// moving movable unpinned allocations out through `migrator` (null: none moves), in
/// pieces of at most one batch. Either completes (`*out` says
/// what it did) or rolls back: `SCRUBHEAP_E_OFFLINE_BLOCKED`, the last error naming the
/// blockers, every frame it took back in service as it was (allocations it already moved
/// stay moved: their owners were remapped).
///
/// # Safety
/// `heap` must be null or a live handle; `migrator` and `out` null or valid; the callbacks
/// may be called with their contexts during this call.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_offline(
    heap: *mut ScrubheapHeap,
    first: u64,
    count: u64,
    migrator: *const ScrubheapMigrator,
    deadline: ScrubheapDeadlineFn,
    preempt: ScrubheapPreemptFn,
    ctx: *mut c_void,
    out: *mut ScrubheapOfflined,
) -> ScrubheapStatus {
    // SAFETY: the caller's contract on `heap` and `out`.
    unsafe {
        with_heap_out(heap, out, "out", |s| {
            // SAFETY: the caller's contract on `migrator`.
            let m = self::migrator(migrator);
            let (deadline, preempt) = (CQuestion { f: deadline, ctx }, CQuestion { f: preempt, ctx });
            let done = s.heap.offline(Mfn(first), count, &m, &deadline, &preempt)?;
            Ok(done.into())
        })
    }
}

/// Returns `count` offline frames from `first` to service, dirty; `*onlined` gets the
/// frames put back (broken ones stay out). Works in steps of at most 64 chunks, asking
/// `preempt(ctx)` between two (null: never; the call does not stop early).
///
/// # Safety
/// `heap` must be null or a live handle; `onlined` null or valid; the callback may be
/// called with its context during this call.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_online(
    heap: *mut ScrubheapHeap,
    first: u64,
    count: u64,
    preempt: ScrubheapPreemptFn,
    ctx: *mut c_void,
    onlined: *mut u64,
) -> ScrubheapStatus {
    // SAFETY: the caller's contract on `heap` and `onlined`.
    unsafe {
        with_heap_out(heap, onlined, "onlined", |s| {
            Ok(s.heap.online(Mfn(first), count, &CQuestion { f: preempt, ctx })?)
        })
    }
}

/// Takes frame `mfn` out of service for good: now if free (`*when` =
/// `SCRUBHEAP_BROKEN_NOW`), when its owner frees it if allocated
/// (`SCRUBHEAP_BROKEN_WHEN_FREED`); `SCRUBHEAP_BROKEN_ALREADY` if it was marked before.
///
/// # Safety
/// `heap` must be null or a live handle; `when` null or valid.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_mark_broken(heap: *mut ScrubheapHeap, mfn: u64, when: *mut u32) -> ScrubheapStatus {
    // SAFETY: the caller's contract on `heap` and `when`.
    unsafe {
        with_heap_out(heap, when, "when", |s| {
            let w = match s.heap.mark_broken(Mfn(mfn))? {
                Broken::Now => SCRUBHEAP_BROKEN_NOW,
                Broken::WhenFreed => SCRUBHEAP_BROKEN_WHEN_FREED,
                Broken::Already => SCRUBHEAP_BROKEN_ALREADY,
            };
            Ok(w)
        })
    }
}
