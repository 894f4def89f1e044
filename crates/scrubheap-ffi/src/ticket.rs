//! Scrub tickets: an allocation that meets dirty memory, advanced by the caller in bounded
//! steps, yielding whenever its preemption callback says so.

use crate::api::read_request;
use crate::callbacks::{CQuestion, ScrubheapPreemptFn};
use crate::handle::{
    drop_ticket, need_out, new_ticket, put, with_heap, with_ticket, ScrubheapHeap, ScrubheapTicket, TicketCell,
};
use crate::status::{Failure, ScrubheapStatus};
use crate::types::{ScrubheapAllocRequest, ScrubheapExtent};
use scrubheap::{AllocStart, Extent, HeapError};
use std::ffi::c_void;
use std::sync::Arc;

/// Why a ticket was not made.
enum NoTicket {
    Ready(Extent),
    Refused(HeapError),
}

/// Starts an allocation. Returns `SCRUBHEAP_OK` with the frames in `*ready` (and
/// `*ticket` set to null) when they were clean; `SCRUBHEAP_PENDING` with a ticket in
/// `*ticket` when frames must be scrubbed first: advance it with
/// `scrubheap_ticket_advance` until it returns `SCRUBHEAP_OK`, then drop it. The
/// ticket keeps the heap alive; the heap refuses to be destroyed until it is dropped.
///
/// # Safety
/// `heap` must be null or a live handle; `req`, `ready` and `ticket` null or valid.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_alloc_start(
    heap: *mut ScrubheapHeap,
    req: *const ScrubheapAllocRequest,
    ready: *mut ScrubheapExtent,
    ticket: *mut *mut ScrubheapTicket,
) -> ScrubheapStatus {
    // SAFETY: the caller's contract on `heap`.
    unsafe {
        with_heap(heap, |s| {
            need_out(ready, "ready")?;
            need_out(ticket, "ticket")?;
            // SAFETY: the caller's contract on `req`.
            let r = read_request(req)?;
            let started = TicketCell::try_new(Arc::clone(s), |s| match s.heap.alloc_start(&r) {
                Ok(AllocStart::Pending(t)) => Ok(t),
                Ok(AllocStart::Ready(e)) => Err(NoTicket::Ready(e)),
                Err(e) => Err(NoTicket::Refused(e)),
            });
            match started {
                Ok(cell) => {
                    put(ticket, new_ticket(cell));
                    Ok(ScrubheapStatus::SCRUBHEAP_PENDING)
                }
                Err(NoTicket::Ready(e)) => {
                    put(ready, e.into());
                    put(ticket, std::ptr::null_mut());
                    Ok(ScrubheapStatus::SCRUBHEAP_OK)
                }
                Err(NoTicket::Refused(e)) => Err(e.into()),
            }
        })
    }
}

/// Scrubs batches of the ticket's frames, asking `preempt(ctx)` after each (null: never
/// stop early). Returns `SCRUBHEAP_OK` with the frames in `*out` when they are all clean
/// and the owner's; `SCRUBHEAP_PENDING` when the caller should yield and call again
/// (preempted, or waiting a bounded time for a helper or a scrubber's handback); an error
/// if the allocation failed. After `SCRUBHEAP_OK` or an error the ticket is finished:
/// advancing it again is refused with `SCRUBHEAP_E_TICKET_FINISHED`; drop it.
///
/// # Safety
/// `ticket` must be null or a live ticket no other thread uses meanwhile; `out` null or
/// valid; `preempt` null or a function that may be called with `ctx` during this call.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_ticket_advance(
    ticket: *mut ScrubheapTicket,
    preempt: ScrubheapPreemptFn,
    ctx: *mut c_void,
    out: *mut ScrubheapExtent,
) -> ScrubheapStatus {
    // SAFETY: the caller's contract on `ticket`.
    unsafe {
        with_ticket(ticket, |b| {
            need_out(out, "out")?;
            if b.finished {
                let m = "this ticket has already returned its extent or failed: drop it";
                return Err(Failure::new(ScrubheapStatus::SCRUBHEAP_E_TICKET_FINISHED, m));
            }
            let p = CQuestion { f: preempt, ctx };
            let r = b.cell.with_dependent_mut(|_, t| t.advance(&p));
            b.finished = !matches!(r, Ok(None));
            match r? {
                Some(e) => {
                    put(out, e.into());
                    Ok(ScrubheapStatus::SCRUBHEAP_OK)
                }
                None => Ok(ScrubheapStatus::SCRUBHEAP_PENDING),
            }
        })
    }
}

/// Drops a ticket. An unfinished ticket gives its reserved frames back to the heap (the
/// ones already scrubbed stay clean); a finished one just goes away.
///
/// # Safety
/// `ticket` must be null or a live ticket that no thread uses during or after the call.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_ticket_drop(ticket: *mut ScrubheapTicket) -> ScrubheapStatus {
    // SAFETY: the caller's contract, passed on.
    unsafe { drop_ticket(ticket) }
}
