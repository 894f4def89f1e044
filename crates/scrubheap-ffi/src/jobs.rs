//! Offline, online, long-term pins and operations on held ranges as jobs: started by
//! `scrubheap_offline_start`, `scrubheap_online_start`, `scrubheap_pin_start` or
//! `scrubheap_range_start`, advanced by `scrubheap_job_advance` in bounded steps (the
//! call returns `SCRUBHEAP_PENDING` whenever the preemption callback says to yield, so a
//! hypervisor returns to its scheduler between two steps), stopped by
//! `scrubheap_job_cancel` and freed by `scrubheap_job_drop`. A job keeps its heap alive:
//! the heap refuses to be destroyed until its jobs are dropped.

use crate::callbacks::{CQuestion, ScrubheapDeadlineFn, ScrubheapMigrator, ScrubheapPreemptFn};
use crate::handle::{
    check_health, check_magic, drop_borrower, need_out, put, with_heap, Borrower, PoisonOnPanic, ScrubheapHeap, Shared,
};
use crate::status::{guard, Failure, Outcome, ScrubheapStatus};
use crate::types::{ScrubheapExtent, ScrubheapOfflined};
use scrubheap::{DomId, Extent, HeapError, Mfn, OfflineJob, Offlined, OnlineJob, RangeJob, RangeOp};
use std::ffi::c_void;
use std::sync::Arc;

/// A job in progress (an offline, an online, a pin or another range operation), as C
/// sees it.
pub struct ScrubheapJob {
    _opaque: [u8; 0],
}

/// `scrubheap_range_start`: free the range (every frame the owner's, unpinned).
pub const SCRUBHEAP_RANGE_FREE: u32 = 0;
/// `scrubheap_range_start`: a long-term pin, moving the range out of the Movable zone
/// first (as `scrubheap_pin_start`).
pub const SCRUBHEAP_RANGE_PIN: u32 = 1;
/// `scrubheap_range_start`: a pin where the frames are (a baseline).
pub const SCRUBHEAP_RANGE_PIN_IN_PLACE: u32 = 2;
/// `scrubheap_range_start`: drop one pin from every frame.
pub const SCRUBHEAP_RANGE_UNPIN: u32 = 3;
/// `scrubheap_range_start`: free a sealed range (allocated with `SCRUBHEAP_ALLOC_SEALED`;
/// `scrubheap_free` refuses it with `SCRUBHEAP_E_SEALED`).
pub const SCRUBHEAP_RANGE_FREE_SEALED: u32 = 4;

/// What an ended job did; only the part of its kind is filled, the rest is zero.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubheapJobDone {
    /// An offline: what it did.
    pub offlined: ScrubheapOfflined,
    /// An online: the frames put back in service.
    pub onlined: u64,
    /// A pin or range operation: where the frames are now (a pin's destination).
    pub extent: ScrubheapExtent,
}

const JOB_MAGIC: u64 = u64::from_le_bytes(*b"scrbjob_");

/// One of the heap's jobs.
enum AnyJob<'a> {
    Offline(OfflineJob<'a, crate::callbacks::CMemory>),
    Online(OnlineJob<'a, crate::callbacks::CMemory>),
    Range(RangeJob<'a, crate::callbacks::CMemory>),
}

self_cell::self_cell!(
    /// A job together with the heap it borrows, so the heap outlives it.
    struct JobCell {
        owner: Arc<Shared>,
        #[not_covariant]
        dependent: AnyJob,
    }
);

/// What a `ScrubheapJob` pointer points to.
#[repr(C)]
struct JobBox {
    magic: u64,
    /// The job ended: advancing it again is misuse.
    finished: bool,
    cell: JobCell,
}

/// Starts a job with `start` on the heap behind `heap`, handing it out through `job`.
///
/// # Safety
/// `heap` must be null or a live handle; `job` null or valid.
unsafe fn start(
    heap: *mut ScrubheapHeap,
    job: *mut *mut ScrubheapJob,
    start: impl for<'a> FnOnce(&'a Shared) -> Result<AnyJob<'a>, HeapError>,
) -> ScrubheapStatus {
    // SAFETY: the caller's contract on `heap`.
    unsafe {
        with_heap(heap, |s| {
            need_out(job, "job")?;
            let cell = JobCell::try_new(Arc::clone(s), |s| start(s))?;
            let b = Box::new(JobBox { magic: JOB_MAGIC, finished: false, cell });
            put(job, Box::into_raw(b).cast());
            Ok(ScrubheapStatus::SCRUBHEAP_OK)
        })
    }
}

/// Starts taking `count` frames from `first` (inside one node) out of service as a job:
/// advance it with `scrubheap_job_advance` (its `*done` says what it did), then drop it.
/// Refused (`SCRUBHEAP_E_BAD_RANGE`, nothing changed) for an empty range or one that
/// leaves its node. See `scrubheap_offline` for what an offline does.
///
/// # Safety
/// `heap` must be null or a live handle; `job` null or valid.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_offline_start(
    heap: *mut ScrubheapHeap,
    first: u64,
    count: u64,
    job: *mut *mut ScrubheapJob,
) -> ScrubheapStatus {
    // SAFETY: passed on.
    unsafe { start(heap, job, |s| s.heap.offline_start(Mfn(first), count).map(AnyJob::Offline)) }
}

/// Starts returning `count` offline frames from `first` to service, dirty, as a job.
///
/// # Safety
/// `heap` must be null or a live handle; `job` null or valid.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_online_start(
    heap: *mut ScrubheapHeap,
    first: u64,
    count: u64,
    job: *mut *mut ScrubheapJob,
) -> ScrubheapStatus {
    // SAFETY: passed on.
    unsafe { start(heap, job, |s| s.heap.online_start(Mfn(first), count).map(AnyJob::Online)) }
}

/// Starts a long-term pin of `2^order` frames from `mfn` that `owner` holds, as a job
/// (see `scrubheap_pin`); its `*done` extent says where the pinned frames are.
///
/// # Safety
/// `heap` must be null or a live handle; `job` null or valid.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_pin_start(
    heap: *mut ScrubheapHeap,
    mfn: u64,
    order: u8,
    owner: u32,
    job: *mut *mut ScrubheapJob,
) -> ScrubheapStatus {
    // SAFETY: passed on.
    unsafe { start(heap, job, |s| s.heap.pin_start(Mfn(mfn), order, DomId(owner)).map(AnyJob::Range)) }
}

/// Starts `op` (`SCRUBHEAP_RANGE_*`) on `2^order` frames from `mfn` that `owner` holds,
/// however many chunks partial frees and pins split them into: the job checks and marks
/// them, then frees (sealed or not), pins or unpins them, at most 64 chunks a step. A refusal found on
/// the way leaves the heap as it was. `scrubheap_free` and `scrubheap_unpin` refuse such
/// a range above 64 chunks with `SCRUBHEAP_E_TOO_MANY_CHUNKS`.
///
/// # Safety
/// `heap` must be null or a live handle; `job` null or valid.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_range_start(
    heap: *mut ScrubheapHeap,
    op: u32,
    mfn: u64,
    order: u8,
    owner: u32,
    job: *mut *mut ScrubheapJob,
) -> ScrubheapStatus {
    let op = match op {
        SCRUBHEAP_RANGE_FREE => RangeOp::Free,
        SCRUBHEAP_RANGE_PIN => RangeOp::Pin,
        SCRUBHEAP_RANGE_PIN_IN_PLACE => RangeOp::PinInPlace,
        SCRUBHEAP_RANGE_UNPIN => RangeOp::Unpin,
        SCRUBHEAP_RANGE_FREE_SEALED => RangeOp::FreeSealed,
        _ => return guard(|| Err(Failure::new(ScrubheapStatus::SCRUBHEAP_E_INVALID_ARG, bad_op(op)))),
    };
    // SAFETY: passed on.
    unsafe { start(heap, job, |s| s.heap.range_start(op, Mfn(mfn), order, DomId(owner)).map(AnyJob::Range)) }
}

fn bad_op(op: u32) -> String {
    format!("range operation {op} is none of SCRUBHEAP_RANGE_FREE, _PIN, _PIN_IN_PLACE, _UNPIN, _FREE_SEALED (0..=4)")
}

/// Runs `body` on the job behind `j`, inside the library's guard.
///
/// # Safety
/// `j` must be null or a pointer this library returned, used by no other thread meanwhile.
unsafe fn with_job(j: *mut ScrubheapJob, body: impl FnOnce(&mut JobBox) -> Outcome) -> ScrubheapStatus {
    guard(|| {
        // SAFETY: the caller's contract on `j`.
        unsafe { check_magic(j.cast(), JOB_MAGIC, "job")? };
        // SAFETY: the magic says `j` is a live JobBox; the contract gives this call the
        // only access to it.
        let b = unsafe { &mut *j.cast::<JobBox>() };
        let shared = Arc::clone(b.cell.borrow_owner());
        check_health(&shared)?;
        let _poison = PoisonOnPanic(&shared.poisoned);
        body(b)
    })
}

/// Runs bounded steps of the job, asking `preempt(ctx)` after each (null: never yield)
/// and, for an offline, `deadline(ctx)` before each step of its isolation and moves
/// (null: none). `migrator` moves frames for an offline or a pin (null: every move is
/// refused); other jobs never call it. Returns `SCRUBHEAP_OK` when the job has ended
/// (`*done` says what it did), `SCRUBHEAP_PENDING` when the caller should yield and call
/// again, or the error the job ended with (the heap as it was, but for an offline's
/// moves). An ended job refuses with `SCRUBHEAP_E_JOB_FINISHED`: drop it.
///
/// # Safety
/// `job` must be null or a live job no other thread uses meanwhile; `migrator` and `done`
/// null or valid; the callbacks may be called with `ctx` during this call.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_job_advance(
    job: *mut ScrubheapJob,
    migrator: *const ScrubheapMigrator,
    deadline: ScrubheapDeadlineFn,
    preempt: ScrubheapPreemptFn,
    ctx: *mut c_void,
    done: *mut ScrubheapJobDone,
) -> ScrubheapStatus {
    // SAFETY: the caller's contract on `job`.
    unsafe {
        with_job(job, |b| {
            need_out(done, "done")?;
            if b.finished {
                return Err(Failure::new(ScrubheapStatus::SCRUBHEAP_E_JOB_FINISHED, "this job has ended: drop it"));
            }
            // SAFETY: the caller's contract on `migrator`.
            let m = m_or_none(migrator);
            let (deadline, preempt) = (CQuestion { f: deadline, ctx }, CQuestion { f: preempt, ctx });
            let r = b.cell.with_dependent_mut(|_, j| advance(j, &m, &deadline, &preempt));
            b.finished = !matches!(r, Ok(None));
            match r? {
                Some(d) => {
                    put(done, d);
                    Ok(ScrubheapStatus::SCRUBHEAP_OK)
                }
                None => Ok(ScrubheapStatus::SCRUBHEAP_PENDING),
            }
        })
    }
}

/// The migrator behind `m`, or one refusing every move for null.
///
/// # Safety
/// `m` must be null or valid.
unsafe fn m_or_none(m: *const ScrubheapMigrator) -> ScrubheapMigrator {
    // SAFETY: the caller's contract: null or valid.
    unsafe { m.as_ref() }.copied().unwrap_or(ScrubheapMigrator {
        ctx: std::ptr::null_mut(),
        copy: None,
        switch_to: None,
    })
}

fn advance(
    j: &mut AnyJob<'_>,
    m: &ScrubheapMigrator,
    deadline: &CQuestion,
    preempt: &CQuestion,
) -> Result<Option<ScrubheapJobDone>, HeapError> {
    let d = ScrubheapJobDone::default();
    Ok(match j {
        AnyJob::Offline(o) => {
            o.advance(m, deadline, preempt)?.map(|x: Offlined| ScrubheapJobDone { offlined: x.into(), ..d })
        }
        AnyJob::Online(o) => o.advance(preempt)?.map(|n| ScrubheapJobDone { onlined: n, ..d }),
        AnyJob::Range(r) => r.advance(m, preempt)?.map(|e: Extent| ScrubheapJobDone { extent: e.into(), ..d }),
    })
}

/// Stops a job: an offline rolls back over its next steps (ending with
/// `SCRUBHEAP_E_OFFLINE_BLOCKED`), a pin, range operation or online that has not reached
/// its point of no return ends with `SCRUBHEAP_E_JOB_CANCELLED`, the heap as it was; one
/// past it finishes. Advance the job to its end afterwards (or drop it).
///
/// # Safety
/// `job` must be null or a live job no other thread uses meanwhile.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_job_cancel(job: *mut ScrubheapJob) -> ScrubheapStatus {
    // SAFETY: the caller's contract on `job`.
    unsafe {
        with_job(job, |b| {
            b.cell.with_dependent_mut(|_, j| match j {
                AnyJob::Offline(o) => o.cancel(),
                AnyJob::Online(o) => o.cancel(),
                AnyJob::Range(r) => r.cancel(),
            });
            Ok(ScrubheapStatus::SCRUBHEAP_OK)
        })
    }
}

/// Drops a job. An unfinished one ends at once with no preemption point: an offline, a
/// pin or range operation before its commit rolls back, one past it (and an online
/// returning frames) finishes. To stay preemptible, cancel and advance it to its end
/// first.
///
/// # Safety
/// `job` must be null or a live job that no thread uses during or after the call.
#[no_mangle]
pub unsafe extern "C" fn scrubheap_job_drop(job: *mut ScrubheapJob) -> ScrubheapStatus {
    // SAFETY: the caller's contract on `job`, which is [`drop_borrower`]'s.
    unsafe { drop_borrower(job.cast::<JobBox>()) }
}

impl Borrower for JobBox {
    const MAGIC: u64 = JOB_MAGIC;
    const WHAT: &'static str = "job";
    fn owner(&self) -> &Arc<Shared> {
        self.cell.borrow_owner()
    }
}
