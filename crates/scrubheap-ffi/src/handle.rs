//! The opaque handles C holds, and the checks every entry point makes on them.

use crate::callbacks::CMemory;
use crate::status::{guard, Failure, Outcome, ScrubheapStatus};
use scrubheap::{Heap, ScrubTicket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A heap, as C sees it: only ever behind a pointer this library returned.
pub struct ScrubheapHeap {
    _opaque: [u8; 0],
}

/// A pending allocation (a scrub ticket), as C sees it.
pub struct ScrubheapTicket {
    _opaque: [u8; 0],
}

const HEAP_MAGIC: u64 = u64::from_le_bytes(*b"scrbheap");
const TICKET_MAGIC: u64 = u64::from_le_bytes(*b"scrbtckt");
/// Written over the magic when a handle is destroyed.
pub(crate) const DEAD_MAGIC: u64 = 0;

/// The heap and its health, shared by the heap handle and every live ticket.
pub(crate) struct Shared {
    pub heap: Heap<CMemory>,
    /// Set when a call panicked inside the heap: its state may be half-changed.
    pub poisoned: AtomicBool,
}

/// What a `ScrubheapHeap` pointer points to. `repr(C)` puts the magic first in every
/// handle, so a handle of the wrong kind is told by its first word.
#[repr(C)]
pub(crate) struct HeapBox {
    magic: u64,
    pub shared: Arc<Shared>,
}

type Ticket<'a> = ScrubTicket<'a, CMemory>;

self_cell::self_cell!(
    /// A ticket together with the heap it borrows, so the heap outlives it.
    pub(crate) struct TicketCell {
        owner: Arc<Shared>,
        #[covariant]
        dependent: Ticket,
    }
);

/// What a `ScrubheapTicket` pointer points to.
#[repr(C)]
pub(crate) struct TicketBox {
    magic: u64,
    /// The ticket returned its extent or failed: advancing it again is misuse.
    pub finished: bool,
    pub cell: TicketCell,
}

/// Sets the heap's poisoned flag if dropped while the thread panics.
pub(crate) struct PoisonOnPanic<'a>(pub &'a AtomicBool);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Release);
        }
    }
}

/// Refuses null and handles whose first word is not `magic`.
///
/// # Safety
/// `p` must be null or point to at least 8 readable bytes (any live handle of this
/// library does).
pub(crate) unsafe fn check_magic(p: *const u8, magic: u64, what: &str) -> Result<(), Failure> {
    if p.is_null() {
        return Err(Failure::new(ScrubheapStatus::SCRUBHEAP_E_NULL, format!("the {what} handle is null")));
    }
    // SAFETY: not null; the caller promises 8 readable bytes (read unaligned, so a
    // misaligned stray pointer is refused by its value rather than by its alignment).
    let found = unsafe { p.cast::<u64>().read_unaligned() };
    if found != magic {
        let m = format!("the pointer given as a {what} is not a live {what} handle (first word {found:#x})");
        return Err(Failure::new(ScrubheapStatus::SCRUBHEAP_E_BAD_HANDLE, m));
    }
    Ok(())
}

pub(crate) fn check_health(shared: &Shared) -> Result<(), Failure> {
    if shared.poisoned.load(Ordering::Acquire) {
        let m = "an earlier call on this heap panicked inside the library: destroy the heap";
        return Err(Failure::new(ScrubheapStatus::SCRUBHEAP_E_POISONED, m));
    }
    Ok(())
}

/// Runs `body` on the heap behind `h`, inside [`guard`]: null, a wrong handle and a
/// poisoned heap are refused; a panic in `body` poisons the heap.
///
/// # Safety
/// `h` must be null or a pointer this library returned (live, or the body is not run
/// only if its memory still holds a magic other than the heap's).
pub(crate) unsafe fn with_heap(h: *mut ScrubheapHeap, body: impl FnOnce(&Arc<Shared>) -> Outcome) -> ScrubheapStatus {
    guard(|| {
        // SAFETY: the caller's contract on `h`.
        unsafe { check_magic(h.cast(), HEAP_MAGIC, "heap")? };
        // SAFETY: the magic says `h` is a live HeapBox; callers share it only by `&`.
        let b = unsafe { &*h.cast::<HeapBox>() };
        check_health(&b.shared)?;
        let _poison = PoisonOnPanic(&b.shared.poisoned);
        body(&b.shared)
    })
}

/// As [`with_heap`], for a call with one out-parameter: refuses a null `out` (named
/// `name` in the error) before `body` runs, and writes what `body` returns through it.
///
/// # Safety
/// `h` as for [`with_heap`]; `out` null, or aligned and writable for a `T`.
pub(crate) unsafe fn with_heap_out<T>(
    h: *mut ScrubheapHeap,
    out: *mut T,
    name: &str,
    body: impl FnOnce(&Arc<Shared>) -> Result<T, Failure>,
) -> ScrubheapStatus {
    // SAFETY: the caller's contract on `h`.
    unsafe {
        with_heap(h, |s| {
            need_out(out, name)?;
            let v = body(s)?;
            // SAFETY: not null (checked above); the caller's contract on `out`.
            put(out, v);
            Ok(ScrubheapStatus::SCRUBHEAP_OK)
        })
    }
}

/// As [`with_heap`], for a ticket handle (used by one thread at a time).
///
/// # Safety
/// `t` must be null or a pointer this library returned, used by no other thread meanwhile.
pub(crate) unsafe fn with_ticket(
    t: *mut ScrubheapTicket,
    body: impl FnOnce(&mut TicketBox) -> Outcome,
) -> ScrubheapStatus {
    guard(|| {
        // SAFETY: the caller's contract on `t`.
        unsafe { check_magic(t.cast(), TICKET_MAGIC, "ticket")? };
        // SAFETY: the magic says `t` is a live TicketBox, and the thread-safety contract
        // gives this call the only access to it.
        let b = unsafe { &mut *t.cast::<TicketBox>() };
        let shared = Arc::clone(b.cell.borrow_owner());
        check_health(&shared)?;
        let _poison = PoisonOnPanic(&shared.poisoned);
        body(b)
    })
}

/// A new heap handle.
pub(crate) fn new_heap(shared: Shared) -> *mut ScrubheapHeap {
    Box::into_raw(Box::new(HeapBox { magic: HEAP_MAGIC, shared: Arc::new(shared) })).cast()
}

/// A new ticket handle.
pub(crate) fn new_ticket(cell: TicketCell) -> *mut ScrubheapTicket {
    Box::into_raw(Box::new(TicketBox { magic: TICKET_MAGIC, finished: false, cell })).cast()
}

/// Frees a heap handle unless tickets still borrow its heap.
///
/// # Safety
/// As [`with_heap`]; and no other thread may use the handle during or after this call.
pub(crate) unsafe fn destroy_heap(h: *mut ScrubheapHeap) -> ScrubheapStatus {
    guard(|| {
        // SAFETY: the caller's contract on `h`.
        unsafe { check_magic(h.cast(), HEAP_MAGIC, "heap")? };
        let b = h.cast::<HeapBox>();
        // SAFETY: a live HeapBox (the magic), which this call alone uses (the contract).
        let tickets = Arc::strong_count(unsafe { &(*b).shared }) - 1;
        if tickets > 0 {
            let m =
                format!("the heap still has {tickets} live scrub ticket(s) or job(s): drop them before destroying it");
            return Err(Failure::new(ScrubheapStatus::SCRUBHEAP_E_TICKETS_LIVE, m));
        }
        // SAFETY: `b` came from Box::into_raw in new_heap and is freed only here; the
        // magic is cleared first so a stale copy of the pointer is more likely refused.
        unsafe {
            (*b).magic = DEAD_MAGIC;
            drop(Box::from_raw(b));
        }
        Ok(ScrubheapStatus::SCRUBHEAP_OK)
    })
}

/// A boxed handle that borrows the heap through a `self_cell` (a ticket or a job), so
/// that one function frees every kind. Its box is `repr(C)` with the magic first.
pub(crate) trait Borrower {
    /// The first word of a live handle of this kind.
    const MAGIC: u64;
    /// The kind's name in error messages.
    const WHAT: &'static str;
    /// The heap this handle borrows.
    fn owner(&self) -> &Arc<Shared>;
}

impl Borrower for TicketBox {
    const MAGIC: u64 = TICKET_MAGIC;
    const WHAT: &'static str = "ticket";
    fn owner(&self) -> &Arc<Shared> {
        self.cell.borrow_owner()
    }
}

/// Frees a borrowing handle `b` (a ticket or a job): what it borrows is dropped with the
/// heap's poison flag armed, since dropping an unfinished ticket or job changes the heap.
///
/// # Safety
/// `b` must be null or point to at least 8 readable bytes; if its first word is
/// `B::MAGIC`, it must be a live `B` from `Box::into_raw` that no thread uses during or
/// after the call.
pub(crate) unsafe fn drop_borrower<B: Borrower>(b: *mut B) -> ScrubheapStatus {
    guard(|| {
        // SAFETY: the caller's contract on `b`.
        unsafe { check_magic(b.cast(), B::MAGIC, B::WHAT)? };
        // SAFETY: the magic says `b` is a live `B` from Box::into_raw (the caller's
        // contract), freed only here; `repr(C)` puts the magic in its first word, which
        // is cleared first so a stale copy of the pointer is more likely refused.
        let owned = unsafe {
            b.cast::<u64>().write(DEAD_MAGIC);
            Box::from_raw(b)
        };
        let shared = Arc::clone(owned.owner());
        let _poison = PoisonOnPanic(&shared.poisoned);
        drop(owned);
        Ok(ScrubheapStatus::SCRUBHEAP_OK)
    })
}

/// Frees a ticket handle; an unfinished ticket gives its frames back to the heap.
///
/// # Safety
/// As [`with_ticket`]; and no thread may use the handle after this call.
pub(crate) unsafe fn drop_ticket(t: *mut ScrubheapTicket) -> ScrubheapStatus {
    // SAFETY: the caller's contract on `t`, which is [`drop_borrower`]'s.
    unsafe { drop_borrower(t.cast::<TicketBox>()) }
}

/// Checks that an out-pointer is not null, before any work is done.
pub(crate) fn need_out<T>(p: *mut T, name: &str) -> Result<(), Failure> {
    if p.is_null() {
        return Err(Failure::new(ScrubheapStatus::SCRUBHEAP_E_NULL, format!("{name} is null")));
    }
    Ok(())
}

/// Writes `v` through an out-pointer already checked by [`need_out`].
///
/// # Safety
/// `p` must be non-null, aligned and writable for a `T`.
pub(crate) unsafe fn put<T>(p: *mut T, v: T) {
    debug_assert!(!p.is_null());
    // SAFETY: the caller's contract.
    unsafe { p.write(v) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{scrubheap_heap_destroy, scrubheap_heap_new, scrubheap_stats, ScrubheapConfig, ScrubheapMemoryOps};
    use std::ffi::c_void;

    unsafe extern "C" fn zero(_: *mut c_void, _: u64, _: u64) {}
    unsafe extern "C" fn is_zero(_: *mut c_void, _: u64, _: u64) -> bool {
        true
    }
    unsafe extern "C" fn copy(_: *mut c_void, _: u64, _: u64, _: u64) {}

    #[test]
    fn a_panic_inside_a_call_poisons_the_heap_until_destroy() {
        let frames = [1024u64];
        let config = ScrubheapConfig {
            frame_size: 0,
            first_frame: 0,
            node_count: 1,
            node_frames: frames.as_ptr(),
            movable_from: crate::SCRUBHEAP_NO_MOVABLE,
            policy: crate::SCRUBHEAP_POLICY_SCRUBHEAP,
            scrub_batch: 0,
            initially_dirty: false,
            memory: ScrubheapMemoryOps {
                ctx: std::ptr::null_mut(),
                zero: Some(zero),
                is_zero: Some(is_zero),
                copy: Some(copy),
            },
        };
        let mut h = std::ptr::null_mut();
        let mut stats = crate::ScrubheapStats::default();
        // SAFETY: a valid config (frames outlives the heap) and out-pointers; the heap is
        // used by this thread only and destroyed once at the end.
        unsafe {
            assert_eq!(scrubheap_heap_new(&config, &mut h), ScrubheapStatus::SCRUBHEAP_OK);
            assert_eq!(scrubheap_stats(h, &mut stats), ScrubheapStatus::SCRUBHEAP_OK);
            assert_eq!(stats.free_clean, 1024);
            let s = with_heap(h, |_| panic!("a bug inside the heap"));
            assert_eq!(s, ScrubheapStatus::SCRUBHEAP_E_PANIC);
            assert_eq!(scrubheap_stats(h, &mut stats), ScrubheapStatus::SCRUBHEAP_E_POISONED);
            assert_eq!(scrubheap_heap_destroy(h), ScrubheapStatus::SCRUBHEAP_OK);
        }
    }
}
