//! The heap's exported functions: lifecycle, allocation, scrubbing, claims, statistics,
//! the invariant check.

use crate::callbacks::{CMemory, CQuestion, ScrubheapPreemptFn};
use crate::handle::{destroy_heap, need_out, new_heap, put, with_heap, with_heap_out, ScrubheapHeap, Shared};
use crate::status::{guard, Failure, ScrubheapStatus};
use crate::types::{
    ScrubheapAllocRequest, ScrubheapClaim, ScrubheapConfig, ScrubheapExtent, ScrubheapNodeStats, ScrubheapStats,
    SCRUBHEAP_MAX_CLAIMS,
};
use scrubheap::{Claim, DomId, Heap, Mfn};
use std::ffi::c_void;
use std::sync::atomic::AtomicBool;

/// Builds a heap from `config` and stores its handle in `*out`. Every frame starts free:
/// clean, or dirty with `initially_dirty`.
///
/// # Safety
/// `config` and `out` must be null or valid; `config.node_frames` must point to
/// `config.node_count` values; the memory callbacks and their context must stay valid,
/// and callable from any thread that calls into the heap, until the heap is destroyed.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_heap_new(
    config: *const ScrubheapConfig,
    out: *mut *mut ScrubheapHeap,
) -> ScrubheapStatus {
    guard(|| {
        need_out(out, "out")?;
        if config.is_null() {
            return Err(Failure::new(ScrubheapStatus::SCRUBHEAP_E_NULL, "config is null"));
        }
        // SAFETY: not null, and the caller promises a valid config.
        let c = unsafe { &*config };
        let Some(mem) = CMemory::new(&c.memory) else {
            return Err(Failure::new(
                ScrubheapStatus::SCRUBHEAP_E_NULL,
                "config.memory needs zero, is_zero and copy functions",
            ));
        };
        // SAFETY: the caller promises node_frames holds node_count values.
        let heap = Heap::new(unsafe { c.heap_config()? }, mem)?;
        let h = new_heap(Shared { heap, poisoned: AtomicBool::new(false) });
        // SAFETY: `out` checked above; the caller promises it is writable.
        unsafe { put(out, h) };
        Ok(ScrubheapStatus::SCRUBHEAP_OK)
    })
}

/// Destroys a heap. Refused with `SCRUBHEAP_E_TICKETS_LIVE` while tickets of it live.
/// Frames still allocated are simply forgotten (the memory is the caller's).
///
/// # Safety
/// `heap` must be null or a live handle that no other thread uses during or after the call.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_heap_destroy(heap: *mut ScrubheapHeap) -> ScrubheapStatus {
    // SAFETY: the caller's contract, passed on.
    unsafe { destroy_heap(heap) }
}

/// Allocates `2^req.order` frames and stores them in `*out`, scrubbing at most one batch
/// of dirty frames in place (it has no preemption point): when the only chunk that would
/// do is dirty and larger than one batch it refuses with
/// `SCRUBHEAP_E_NEEDS_SCRUB_TICKET`, nothing changed; such an allocation goes through
/// `scrubheap_alloc_start` and a ticket.
///
/// # Safety
/// `heap` must be null or a live handle; `req` and `out` null or valid.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_alloc(
    heap: *mut ScrubheapHeap,
    req: *const ScrubheapAllocRequest,
    out: *mut ScrubheapExtent,
) -> ScrubheapStatus {
    // SAFETY: the caller's contract on `heap` and `out`.
    unsafe {
        with_heap_out(heap, out, "out", |s| {
            // SAFETY: the caller's contract on `req`.
            let r = read_request(req)?;
            let e = s.heap.alloc(&r)?;
            Ok(e.into())
        })
    }
}

/// Reads and checks an allocation request.
///
/// # Safety
/// `req` must be null or valid.
pub(crate) unsafe fn read_request(req: *const ScrubheapAllocRequest) -> Result<scrubheap::AllocRequest, Failure> {
    if req.is_null() {
        return Err(Failure::new(ScrubheapStatus::SCRUBHEAP_E_NULL, "req is null"));
    }
    // SAFETY: not null; the caller promises a valid request.
    unsafe { *req }.to_request()
}

/// Frees `2^order` frames from `mfn` that `owner` holds (a whole allocation or an aligned
/// part of one). The frames become dirty; nothing is scrubbed here.
///
/// # Safety
/// `heap` must be null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_free(heap: *mut ScrubheapHeap, mfn: u64, order: u8, owner: u32) -> ScrubheapStatus {
    // SAFETY: the caller's contract on `heap`.
    unsafe {
        with_heap(heap, |s| {
            s.heap.free(Mfn(mfn), order, DomId(owner))?;
            Ok(ScrubheapStatus::SCRUBHEAP_OK)
        })
    }
}

/// What an idle CPU of `node` calls: helps pending tickets, then scrubs dirty free
/// frames in batches outside the lock, asking `preempt(ctx)` after each batch (null:
/// never stop early), zeroing at most `budget` frames. `*zeroed` gets the frames zeroed.
///
/// # Safety
/// `heap` must be null or a live handle; `zeroed` null or valid; `preempt` null or a
/// function that may be called with `ctx` during this call.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_scrub_step(
    heap: *mut ScrubheapHeap,
    node: u32,
    budget: u64,
    preempt: ScrubheapPreemptFn,
    ctx: *mut c_void,
    zeroed: *mut u64,
) -> ScrubheapStatus {
    // SAFETY: the caller's contract on `heap` and `zeroed`.
    unsafe {
        with_heap_out(heap, zeroed, "zeroed", |s| {
            let n = s.heap.scrub_step(node as usize, budget, &CQuestion { f: preempt, ctx })?;
            assert!(n <= budget, "a scrub step zeroes at most its budget");
            Ok(n)
        })
    }
}

/// Installs `owner`'s claim set (`count` entries), replacing its claims: all or none.
/// `count` 0 with `claims` null cancels them, as `scrubheap_claim_cancel` does.
///
/// # Safety
/// `heap` must be null or a live handle; `claims` must point to `count` entries.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_claim_set(
    heap: *mut ScrubheapHeap,
    owner: u32,
    claims: *const ScrubheapClaim,
    count: usize,
) -> ScrubheapStatus {
    // SAFETY: the caller's contract on `heap`.
    unsafe {
        with_heap(heap, |s| {
            if count > SCRUBHEAP_MAX_CLAIMS {
                let m = format!("{count} claims: a claim set has at most {SCRUBHEAP_MAX_CLAIMS} entries");
                return Err(Failure::new(ScrubheapStatus::SCRUBHEAP_E_INVALID_ARG, m));
            }
            let set: Vec<Claim> = match (claims.is_null(), count) {
                (_, 0) => Vec::new(),
                (true, _) => return Err(Failure::new(ScrubheapStatus::SCRUBHEAP_E_NULL, "claims is null")),
                // SAFETY: not null; the caller promises `count` entries.
                (false, n) => std::slice::from_raw_parts(claims, n).iter().map(|&c| c.into()).collect(),
            };
            s.heap.claim_set(DomId(owner), &set)?;
            Ok(ScrubheapStatus::SCRUBHEAP_OK)
        })
    }
}

/// Drops all of `owner`'s outstanding claims.
///
/// # Safety
/// `heap` must be null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_claim_cancel(heap: *mut ScrubheapHeap, owner: u32) -> ScrubheapStatus {
    // SAFETY: the caller's contract on `heap`.
    unsafe {
        with_heap(heap, |s| {
            s.heap.claim_cancel(DomId(owner));
            Ok(ScrubheapStatus::SCRUBHEAP_OK)
        })
    }
}

/// Stores the number of nodes in `*count`.
///
/// # Safety
/// `heap` must be null or a live handle; `count` null or valid.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_node_count(heap: *mut ScrubheapHeap, count: *mut u32) -> ScrubheapStatus {
    // SAFETY: the caller's contract on `heap` and `count`.
    unsafe { with_heap_out(heap, count, "count", |s| Ok(s.heap.node_count() as u32)) }
}

/// Stores the frame counters of `node` in `*out` (read without locks).
///
/// # Safety
/// `heap` must be null or a live handle; `out` null or valid.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_node_stats(
    heap: *mut ScrubheapHeap,
    node: u32,
    out: *mut ScrubheapNodeStats,
) -> ScrubheapStatus {
    // SAFETY: the caller's contract on `heap` and `out`.
    unsafe { with_heap_out(heap, out, "out", |s| Ok(s.heap.node_stats(node as usize)?.into())) }
}

/// Stores the whole heap's counters and bytes scrubbed by source in `*out`.
///
/// # Safety
/// `heap` must be null or a live handle; `out` null or valid.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_stats(heap: *mut ScrubheapHeap, out: *mut ScrubheapStats) -> ScrubheapStatus {
    // SAFETY: the caller's contract on `heap` and `out`.
    unsafe { with_heap_out(heap, out, "out", |s| Ok(s.heap.stats().into())) }
}

/// Verifies every invariant of the heap from scratch (O(frames), takes every lock in
/// turn): `SCRUBHEAP_E_INVARIANT` with the violation as the last error if one fails.
///
/// # Safety
/// `heap` must be null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_check_invariants(heap: *mut ScrubheapHeap) -> ScrubheapStatus {
    // SAFETY: the caller's contract on `heap`.
    unsafe {
        with_heap(heap, |s| {
            s.heap
                .check_invariants()
                .map_err(|v| Failure::new(ScrubheapStatus::SCRUBHEAP_E_INVARIANT, v.to_string()))?;
            Ok(ScrubheapStatus::SCRUBHEAP_OK)
        })
    }
}
