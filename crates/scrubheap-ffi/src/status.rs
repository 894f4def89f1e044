//! Status codes, their messages, the per-thread last error, and the guard that keeps
//! panics from crossing the boundary.

use scrubheap::HeapError;
use scrubheap::{ClaimError, FreeError, OfflineError, RangeError};
use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What every function returns: 0 or 1 when it did its work, a negative code when it
/// refused (the heap as it was, but for the moves of an offline that rolled back). `scrubheap_status_str` names each code;
/// `scrubheap_last_error` gives the detail of the calling thread's last refusal.
#[repr(i32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)] // named as C sees them
pub enum ScrubheapStatus {
    /// Done.
    SCRUBHEAP_OK = 0,
    /// Not done yet: a scrub ticket was started, or advancing it must go on after the
    /// caller yields.
    SCRUBHEAP_PENDING = 1,
    /// A pointer argument was null.
    SCRUBHEAP_E_NULL = -1,
    /// A handle argument is not a live handle of that kind (a ticket given as a heap).
    SCRUBHEAP_E_BAD_HANDLE = -2,
    /// An argument has a value no call accepts (unknown flags or policy, too many claims).
    SCRUBHEAP_E_INVALID_ARG = -3,
    /// The library panicked: a bug. The heap is poisoned and refuses every call but destroy.
    SCRUBHEAP_E_PANIC = -4,
    /// An earlier call on this heap panicked; only `scrubheap_heap_destroy` works now.
    SCRUBHEAP_E_POISONED = -5,
    /// The ticket has finished (returned its extent or failed): drop it.
    SCRUBHEAP_E_TICKET_FINISHED = -6,
    /// The heap still has live scrub tickets: drop them before destroying the heap.
    SCRUBHEAP_E_TICKETS_LIVE = -7,
    /// The configuration cannot describe a heap.
    SCRUBHEAP_E_INVALID_CONFIG = -10,
    /// An order above the largest order (18).
    SCRUBHEAP_E_INVALID_ORDER = -11,
    /// A node the heap does not have.
    SCRUBHEAP_E_NO_SUCH_NODE = -12,
    /// A frame outside the heap.
    SCRUBHEAP_E_OUT_OF_RANGE = -13,
    /// A frame not aligned to its order.
    SCRUBHEAP_E_UNALIGNED = -14,
    /// A range crossing a node boundary.
    SCRUBHEAP_E_CROSSES_NODE = -15,
    /// No free chunk of that order where the request may look (after claims).
    SCRUBHEAP_E_OUT_OF_MEMORY = -16,
    /// The frame is not allocated: a double free?
    SCRUBHEAP_E_NOT_ALLOCATED = -17,
    /// The frame belongs to another owner.
    SCRUBHEAP_E_WRONG_OWNER = -18,
    /// The range goes beyond what the owner holds.
    SCRUBHEAP_E_ORDER_TOO_LARGE = -19,
    /// The range holds a long-term pinned frame.
    SCRUBHEAP_E_PINNED = -20,
    /// A claim for more than is free and unclaimed.
    SCRUBHEAP_E_CLAIM_EXCEEDS_FREE = -21,
    /// The frame is in the middle of another operation: retry.
    SCRUBHEAP_E_BUSY = -22,
    /// Unpinning a frame that is not pinned.
    SCRUBHEAP_E_NOT_PINNED = -23,
    /// A frame already holds the most pins a count can hold.
    SCRUBHEAP_E_PIN_LIMIT = -24,
    /// The migrator refused (or there is none): nothing was pinned or moved.
    SCRUBHEAP_E_MIGRATION_REFUSED = -25,
    /// An offline was rolled back; the last error names the blockers.
    SCRUBHEAP_E_OFFLINE_BLOCKED = -26,
    /// Onlining frames that are not offline.
    SCRUBHEAP_E_NOT_OFFLINE = -27,
    /// An empty range, or one spanning nodes.
    SCRUBHEAP_E_BAD_RANGE = -28,
    /// Claims need that free frame.
    SCRUBHEAP_E_NEEDED_BY_CLAIMS = -29,
    /// The invariant check failed: a bug in the heap.
    SCRUBHEAP_E_INVARIANT = -30,
    /// An ordinary free or pin of frames in a sealed allocation (one a layer above the
    /// heap holds and gives back itself).
    SCRUBHEAP_E_SEALED = -31,
    /// A sealed free of frames that are not sealed.
    SCRUBHEAP_E_NOT_SEALED = -32,
    /// A request both sealed and movable.
    SCRUBHEAP_E_SEALED_MOVABLE = -33,
    /// Other domains' claims need the free memory this allocation asked for.
    SCRUBHEAP_E_CLAIMED_BY_OTHERS = -34,
    /// A frame of the range asked for is not free (allocating a given range).
    SCRUBHEAP_E_NOT_FREE = -35,
    /// The range asked for has frames in both zones of its node.
    SCRUBHEAP_E_CROSSES_ZONE = -36,
    /// `scrubheap_alloc` would scrub a dirty chunk larger than one batch with no
    /// preemption point: allocate it through `scrubheap_alloc_start` (a ticket) instead.
    SCRUBHEAP_E_NEEDS_SCRUB_TICKET = -37,
    /// An offline that has ended was advanced again.
    SCRUBHEAP_E_OFFLINE_FINISHED = -38,
    /// A range held as more chunks than one call walks under the node lock: do it as a
    /// job (`scrubheap_range_start`).
    SCRUBHEAP_E_TOO_MANY_CHUNKS = -39,
    /// A job was cancelled before its point of no return and rolled back.
    SCRUBHEAP_E_JOB_CANCELLED = -40,
    /// A job that has ended was advanced again.
    SCRUBHEAP_E_JOB_FINISHED = -41,
}

use ScrubheapStatus as S;

/// Every status, for the message table and its tests.
pub(crate) const ALL: [ScrubheapStatus; 41] = [
    S::SCRUBHEAP_OK,
    S::SCRUBHEAP_PENDING,
    S::SCRUBHEAP_E_NULL,
    S::SCRUBHEAP_E_BAD_HANDLE,
    S::SCRUBHEAP_E_INVALID_ARG,
    S::SCRUBHEAP_E_PANIC,
    S::SCRUBHEAP_E_POISONED,
    S::SCRUBHEAP_E_TICKET_FINISHED,
    S::SCRUBHEAP_E_TICKETS_LIVE,
    S::SCRUBHEAP_E_INVALID_CONFIG,
    S::SCRUBHEAP_E_INVALID_ORDER,
    S::SCRUBHEAP_E_NO_SUCH_NODE,
    S::SCRUBHEAP_E_OUT_OF_RANGE,
    S::SCRUBHEAP_E_UNALIGNED,
    S::SCRUBHEAP_E_CROSSES_NODE,
    S::SCRUBHEAP_E_OUT_OF_MEMORY,
    S::SCRUBHEAP_E_NOT_ALLOCATED,
    S::SCRUBHEAP_E_WRONG_OWNER,
    S::SCRUBHEAP_E_ORDER_TOO_LARGE,
    S::SCRUBHEAP_E_PINNED,
    S::SCRUBHEAP_E_CLAIM_EXCEEDS_FREE,
    S::SCRUBHEAP_E_BUSY,
    S::SCRUBHEAP_E_NOT_PINNED,
    S::SCRUBHEAP_E_PIN_LIMIT,
    S::SCRUBHEAP_E_MIGRATION_REFUSED,
    S::SCRUBHEAP_E_OFFLINE_BLOCKED,
    S::SCRUBHEAP_E_NOT_OFFLINE,
    S::SCRUBHEAP_E_BAD_RANGE,
    S::SCRUBHEAP_E_NEEDED_BY_CLAIMS,
    S::SCRUBHEAP_E_INVARIANT,
    S::SCRUBHEAP_E_SEALED,
    S::SCRUBHEAP_E_NOT_SEALED,
    S::SCRUBHEAP_E_SEALED_MOVABLE,
    S::SCRUBHEAP_E_CLAIMED_BY_OTHERS,
    S::SCRUBHEAP_E_NOT_FREE,
    S::SCRUBHEAP_E_CROSSES_ZONE,
    S::SCRUBHEAP_E_NEEDS_SCRUB_TICKET,
    S::SCRUBHEAP_E_OFFLINE_FINISHED,
    S::SCRUBHEAP_E_TOO_MANY_CHUNKS,
    S::SCRUBHEAP_E_JOB_CANCELLED,
    S::SCRUBHEAP_E_JOB_FINISHED,
];

impl ScrubheapStatus {
    /// The static message of this code.
    pub(crate) fn message(self) -> &'static CStr {
        match self {
            S::SCRUBHEAP_OK => c"ok",
            S::SCRUBHEAP_PENDING => c"pending: yield, then advance the ticket again",
            S::SCRUBHEAP_E_NULL => c"a pointer argument is null",
            S::SCRUBHEAP_E_BAD_HANDLE => c"a handle argument is not a live handle of the expected kind",
            S::SCRUBHEAP_E_INVALID_ARG => c"an argument has a value no call accepts",
            S::SCRUBHEAP_E_PANIC => c"internal error (a panic, caught): the heap is poisoned; destroy it",
            S::SCRUBHEAP_E_POISONED => c"an earlier call on this heap failed internally: only destroy works now",
            S::SCRUBHEAP_E_TICKET_FINISHED => c"the ticket has finished: drop it",
            S::SCRUBHEAP_E_TICKETS_LIVE => c"the heap still has live scrub tickets: drop them first",
            S::SCRUBHEAP_E_INVALID_CONFIG => c"invalid heap configuration",
            S::SCRUBHEAP_E_INVALID_ORDER => c"order above the largest order (18)",
            S::SCRUBHEAP_E_NO_SUCH_NODE => c"no such node",
            S::SCRUBHEAP_E_OUT_OF_RANGE => c"frame outside the heap",
            S::SCRUBHEAP_E_UNALIGNED => c"frame not aligned to its order",
            S::SCRUBHEAP_E_CROSSES_NODE => c"range crosses a node boundary",
            S::SCRUBHEAP_E_OUT_OF_MEMORY => c"out of memory",
            S::SCRUBHEAP_E_NOT_ALLOCATED => c"frame not allocated (double free?)",
            S::SCRUBHEAP_E_WRONG_OWNER => c"frame belongs to another owner",
            S::SCRUBHEAP_E_ORDER_TOO_LARGE => c"range goes beyond what the owner holds",
            S::SCRUBHEAP_E_PINNED => c"frame is long-term pinned: unpin it first",
            S::SCRUBHEAP_E_CLAIM_EXCEEDS_FREE => c"claim exceeds free unclaimed memory",
            S::SCRUBHEAP_E_BUSY => c"frame busy with another operation: retry",
            S::SCRUBHEAP_E_NOT_PINNED => c"frame is not pinned",
            S::SCRUBHEAP_E_PIN_LIMIT => c"pin count limit reached",
            S::SCRUBHEAP_E_MIGRATION_REFUSED => c"migration refused: nothing was pinned or moved",
            S::SCRUBHEAP_E_OFFLINE_BLOCKED => c"offline rolled back: see the last error for the blockers",
            S::SCRUBHEAP_E_NOT_OFFLINE => c"frame is not offline",
            S::SCRUBHEAP_E_BAD_RANGE => c"empty range, or one spanning nodes",
            S::SCRUBHEAP_E_NEEDED_BY_CLAIMS => c"claims need that frame",
            S::SCRUBHEAP_E_INVARIANT => c"heap invariant violated (a bug)",
            S::SCRUBHEAP_E_SEALED => c"frames of a sealed allocation: only the layer that sealed them frees them",
            S::SCRUBHEAP_E_NOT_SEALED => c"frames are not in a sealed allocation: free them with the ordinary free",
            S::SCRUBHEAP_E_SEALED_MOVABLE => c"a sealed allocation cannot be movable",
            S::SCRUBHEAP_E_CLAIMED_BY_OTHERS => c"other domains' claims need that free memory",
            S::SCRUBHEAP_E_NOT_FREE => c"a frame of that range is not free",
            S::SCRUBHEAP_E_CROSSES_ZONE => c"range has frames in both zones of its node",
            S::SCRUBHEAP_E_NEEDS_SCRUB_TICKET => {
                c"the only chunk is dirty and larger than one batch: allocate it with scrubheap_alloc_start"
            }
            S::SCRUBHEAP_E_OFFLINE_FINISHED => c"that offline has ended: start a new one",
            S::SCRUBHEAP_E_TOO_MANY_CHUNKS => {
                c"that range is held as too many chunks for one call: do it as a job with scrubheap_range_start"
            }
            S::SCRUBHEAP_E_JOB_CANCELLED => c"the job was cancelled and rolled back: nothing changed",
            S::SCRUBHEAP_E_JOB_FINISHED => c"that job has ended: start a new one",
        }
    }
}

impl From<&HeapError> for ScrubheapStatus {
    fn from(e: &HeapError) -> Self {
        match e {
            HeapError::InvalidConfig(_) => S::SCRUBHEAP_E_INVALID_CONFIG,
            HeapError::Range(RangeError::InvalidOrder { .. }) => S::SCRUBHEAP_E_INVALID_ORDER,
            HeapError::Range(RangeError::NoSuchNode { .. }) => S::SCRUBHEAP_E_NO_SUCH_NODE,
            // The C ABI has no per-CPU fast path yet, so no call of it names a CPU; the
            // nearest code until it has one.
            HeapError::Range(RangeError::NoSuchCpu { .. }) => S::SCRUBHEAP_E_NO_SUCH_NODE,
            HeapError::Range(RangeError::OutOfRange { .. }) => S::SCRUBHEAP_E_OUT_OF_RANGE,
            HeapError::Range(RangeError::Unaligned { .. }) => S::SCRUBHEAP_E_UNALIGNED,
            HeapError::Range(RangeError::CrossesNode { .. }) => S::SCRUBHEAP_E_CROSSES_NODE,
            HeapError::OutOfMemory { .. } => S::SCRUBHEAP_E_OUT_OF_MEMORY,
            HeapError::Free(FreeError::NotAllocated { .. }) => S::SCRUBHEAP_E_NOT_ALLOCATED,
            HeapError::Free(FreeError::WrongOwner { .. }) => S::SCRUBHEAP_E_WRONG_OWNER,
            HeapError::Free(FreeError::OrderTooLarge { .. }) => S::SCRUBHEAP_E_ORDER_TOO_LARGE,
            HeapError::Free(FreeError::Pinned { .. }) => S::SCRUBHEAP_E_PINNED,
            HeapError::Claim(ClaimError::ClaimExceedsFree { .. }) => S::SCRUBHEAP_E_CLAIM_EXCEEDS_FREE,
            HeapError::Free(FreeError::Busy { .. }) => S::SCRUBHEAP_E_BUSY,
            HeapError::Free(FreeError::NotPinned { .. }) => S::SCRUBHEAP_E_NOT_PINNED,
            HeapError::Free(FreeError::PinLimit { .. }) => S::SCRUBHEAP_E_PIN_LIMIT,
            HeapError::MigrationRefused { .. } => S::SCRUBHEAP_E_MIGRATION_REFUSED,
            HeapError::Offline(OfflineError::OfflineBlocked { .. }) => S::SCRUBHEAP_E_OFFLINE_BLOCKED,
            HeapError::Offline(OfflineError::NotOffline { .. }) => S::SCRUBHEAP_E_NOT_OFFLINE,
            HeapError::Range(RangeError::BadRange { .. }) => S::SCRUBHEAP_E_BAD_RANGE,
            HeapError::Claim(ClaimError::NeededByClaims { .. }) => S::SCRUBHEAP_E_NEEDED_BY_CLAIMS,
            HeapError::Free(FreeError::Sealed { .. }) => S::SCRUBHEAP_E_SEALED,
            HeapError::Free(FreeError::NotSealed { .. }) => S::SCRUBHEAP_E_NOT_SEALED,
            HeapError::SealedMovable => S::SCRUBHEAP_E_SEALED_MOVABLE,
            HeapError::Claim(ClaimError::ClaimedByOthers { .. }) => S::SCRUBHEAP_E_CLAIMED_BY_OTHERS,
            HeapError::NotFree { .. } => S::SCRUBHEAP_E_NOT_FREE,
            HeapError::Range(RangeError::CrossesZone { .. }) => S::SCRUBHEAP_E_CROSSES_ZONE,
            HeapError::NeedsScrubTicket { .. } => S::SCRUBHEAP_E_NEEDS_SCRUB_TICKET,
            HeapError::Offline(OfflineError::OfflineFinished { .. }) => S::SCRUBHEAP_E_OFFLINE_FINISHED,
            HeapError::Free(FreeError::TooManyChunks { .. }) => S::SCRUBHEAP_E_TOO_MANY_CHUNKS,
            HeapError::JobCancelled { .. } => S::SCRUBHEAP_E_JOB_CANCELLED,
            HeapError::JobFinished { .. } => S::SCRUBHEAP_E_JOB_FINISHED,
        }
    }
}

/// A refused call: its code and the detail the caller can read with
/// `scrubheap_last_error`.
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: ScrubheapStatus,
    pub message: String,
}

impl Failure {
    pub(crate) fn new(status: ScrubheapStatus, message: impl Into<String>) -> Self {
        assert!((status as i32) < 0, "a failure carries an error code");
        Failure { status, message: message.into() }
    }
}

impl From<HeapError> for Failure {
    fn from(e: HeapError) -> Self {
        Failure::new(ScrubheapStatus::from(&e), e.to_string())
    }
}

/// What the body of an exported function returns.
pub(crate) type Outcome = Result<ScrubheapStatus, Failure>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', " ")).expect("NUL bytes were replaced");
    LAST_ERROR.with(|l| *l.borrow_mut() = c);
}

/// Runs `body` with panics caught: a panic becomes [`ScrubheapStatus::SCRUBHEAP_E_PANIC`]; a
/// refusal records its message as the thread's last error. Every exported function
/// goes through here.
pub(crate) fn guard(body: impl FnOnce() -> Outcome) -> ScrubheapStatus {
    let out = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        Err(Failure::new(S::SCRUBHEAP_E_PANIC, format!("internal error (caught panic): {what}")))
    });
    match out {
        Ok(s) => {
            debug_assert!(s as i32 >= 0);
            s
        }
        Err(f) => {
            set_last_error(&f.message);
            f.status
        }
    }
}

/// The static message of a status code (never null; "unknown status code" for a code
/// this library does not return). The string lives as long as the program.
#[no_mangle]
pub extern "C" fn scrubheap_status_str(code: i32) -> *const c_char {
    let found = ALL.iter().find(|s| **s as i32 == code);
    found.map_or(c"unknown status code", |s| s.message()).as_ptr()
}

/// Copies the calling thread's last error message (set by the last call that returned a
/// negative code on this thread) into `buf`, NUL-terminated and cut to `len - 1` bytes.
/// Returns the message's full length without the NUL, like `snprintf`; `buf` may be null
/// when `len` is 0, to ask the length. The message is empty before any refusal.
///
/// # Safety
/// `buf` must be null or point to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_last_error(buf: *mut c_char, len: usize) -> usize {
    let copy = || {
        LAST_ERROR.with(|l| {
            let msg = l.borrow();
            let bytes = msg.as_bytes();
            if !buf.is_null() && len > 0 {
                let n = bytes.len().min(len - 1);
                // SAFETY: the caller gives `len` writable bytes at `buf`; we write n + 1 <= len
                // of them, from a Rust string that cannot overlap the caller's buffer.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), n);
                    *buf.add(n) = 0;
                }
            }
            bytes.len()
        })
    };
    catch_unwind(copy).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_own_message_and_round_trips() {
        let mut seen = std::collections::HashSet::new();
        for s in ALL {
            // SAFETY: scrubheap_status_str returns a static NUL-terminated string.
            let m = unsafe { CStr::from_ptr(scrubheap_status_str(s as i32)) };
            assert_eq!(m, s.message());
            assert!(seen.insert(m.to_owned()), "{s:?} shares its message");
        }
        // SAFETY: as above.
        let unknown = unsafe { CStr::from_ptr(scrubheap_status_str(12345)) };
        assert_eq!(unknown, c"unknown status code");
    }

    /// Every kind of heap error has a status of its own, but `NoSuchCpu`, which shares
    /// `SCRUBHEAP_E_NO_SUCH_NODE` until the C ABI names CPUs; and the status carries the
    /// error's own message.
    #[test]
    fn every_error_kind_maps_to_its_own_status() {
        let mut by_status = std::collections::BTreeMap::new();
        for e in scrubheap::one_error_of_each_kind() {
            let status = ScrubheapStatus::from(&e);
            assert!(ALL.contains(&status) && status as i32 <= -10, "{e:?} maps to {status:?}");
            let f = Failure::from(e.clone());
            assert_eq!((f.status, f.message.as_str()), (status, e.to_string().as_str()));
            by_status.entry(status as i32).or_insert_with(Vec::new).push(e.kind());
        }
        for (status, kinds) in by_status {
            let shared = status == S::SCRUBHEAP_E_NO_SUCH_NODE as i32 && kinds == ["NoSuchNode", "NoSuchCpu"];
            assert!(kinds.len() == 1 || shared, "status {status} is shared by {kinds:?}");
        }
    }

    #[test]
    fn a_panic_becomes_a_code_and_a_message() {
        let s = guard(|| panic!("boom"));
        assert_eq!(s, S::SCRUBHEAP_E_PANIC);
        let mut buf = [0 as c_char; 64];
        // SAFETY: buf has 64 writable bytes.
        let n = unsafe { scrubheap_last_error(buf.as_mut_ptr(), buf.len()) };
        // SAFETY: scrubheap_last_error NUL-terminated buf.
        let m = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap();
        assert!(m.contains("boom"), "{m}");
        assert_eq!(n, m.len());
        // A short buffer gets a cut, terminated copy and the full length.
        let mut small = [0x7f as c_char; 5];
        // SAFETY: small has 5 writable bytes.
        let n2 = unsafe { scrubheap_last_error(small.as_mut_ptr(), small.len()) };
        assert_eq!(n2, n);
        assert_eq!(small[4], 0);
    }
}
