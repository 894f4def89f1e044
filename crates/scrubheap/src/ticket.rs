//! Pending allocations: a scrub ticket is a continuation the caller advances in bounded
//! steps, yielding whenever its [`Preempt`] says so, until every frame is scrubbed.

use crate::error::HeapError;
use crate::heap::{AllocRequest, Extent, Heap, NodeTry};
use crate::memory::FrameMemory;
use crate::preempt::Preempt;

/// How many polls a ticket waits for a background scrubber to hand a chunk back before
/// it gives up with out-of-memory. A handback takes at most one batch; this bound only
/// matters if scrubbers are starved of CPU for a very long time.
pub const MAX_WAIT_POLLS: u64 = 1 << 24;

/// What [`Heap::alloc_start`] returns.
pub enum AllocStart<'h, M: FrameMemory> {
    /// The frames were clean (or need not be scrubbed): they are the owner's now.
    Ready(Extent),
    /// The frames are reserved but must be scrubbed (or a chunk handed back) first.
    Pending(ScrubTicket<'h, M>),
}

enum Stage {
    /// Waiting for a background scrubber to hand back a chunk; retries the allocation.
    Waiting {
        polls: u64,
    },
    /// Frames reserved on `node`; `id` is the node's work entry.
    Scrubbing {
        node: usize,
        id: u64,
        ext: Extent,
    },
    Done,
}

/// A pending allocation. Advance it with [`ScrubTicket::advance`] until it returns the
/// extent; the frames reach the owner only when every one is scrubbed. The ticket sits
/// on its node's urgent queue, so idle scrubbers of that node take batches of it too.
/// Dropping an unfinished ticket returns its frames to the heap.
///
/// ```
/// use scrubheap::{AllocRequest, AllocStart, DomId, Heap, HeapConfig, NullMemory};
/// let heap = Heap::new(HeapConfig::uniform(1, 1 << 12).with_initially_dirty(true), NullMemory).unwrap();
/// let ext = match heap.alloc_start(&AllocRequest::new(10, DomId(1))).unwrap() {
///     AllocStart::Ready(e) => e,
///     AllocStart::Pending(mut ticket) => {
///         let mut steps = 0;
///         // Yield after every batch (256 frames): a real caller would reschedule here.
///         loop {
///             steps += 1;
///             if let Some(e) = ticket.advance(&|| true).unwrap() {
///                 break e;
///             }
///         }
///     }
/// };
/// assert_eq!(ext.frames(), 1024);
/// ```
pub struct ScrubTicket<'h, M: FrameMemory> {
    heap: &'h Heap<M>,
    req: AllocRequest,
    stage: Stage,
}

impl<'h, M: FrameMemory> ScrubTicket<'h, M> {
    pub(crate) fn scrubbing(heap: &'h Heap<M>, req: AllocRequest, node: usize, id: u64, ext: Extent) -> Self {
        ScrubTicket { heap, req, stage: Stage::Scrubbing { node, id, ext } }
    }

    pub(crate) fn waiting(heap: &'h Heap<M>, req: AllocRequest) -> Self {
        ScrubTicket { heap, req, stage: Stage::Waiting { polls: 0 } }
    }

    /// The request this ticket serves.
    pub fn request(&self) -> &AllocRequest {
        &self.req
    }

    /// The frames reserved, once the ticket holds some.
    pub fn extent(&self) -> Option<Extent> {
        match self.stage {
            Stage::Scrubbing { ext, .. } => Some(ext),
            _ => None,
        }
    }

    /// Scrubs batches (of the heap's `scrub_batch` frames) until the frames are all clean,
    /// asking `preempt` after each batch. Returns the extent when it is the owner's, or
    /// `None` when the caller should yield and call again (preempted, or waiting for a
    /// helper's batch or a scrubber's handback, each bounded by one batch).
    ///
    /// Under the `xen` policies the whole chunk is scrubbed in one go, with no preemption
    /// point: the baseline that trips watchdogs.
    pub fn advance(&mut self, preempt: &dyn Preempt) -> Result<Option<Extent>, HeapError> {
        loop {
            match self.stage {
                Stage::Done => return Ok(None),
                Stage::Waiting { polls } => {
                    if polls >= MAX_WAIT_POLLS {
                        self.stage = Stage::Done;
                        return Err(HeapError::OutOfMemory {
                            order: self.req.order,
                            where_: alloc::format!("any node (gave up after {polls} polls for a scrubber's handback)"),
                            free: 0,
                            claimed: 0,
                        });
                    }
                    match self.heap.try_alloc(&self.req) {
                        Err(e) => {
                            self.stage = Stage::Done;
                            return Err(e);
                        }
                        Ok(NodeTry::Ready(e)) => {
                            self.stage = Stage::Done;
                            return Ok(Some(e));
                        }
                        Ok(NodeTry::Pending { node, id, ext }) => self.stage = Stage::Scrubbing { node, id, ext },
                        Ok(NodeTry::No { .. }) => {
                            self.stage = Stage::Waiting { polls: polls + 1 };
                            return Ok(None);
                        }
                    }
                }
                Stage::Scrubbing { node, id, .. } => {
                    let r = self.heap.advance_ticket(node, id, preempt);
                    if r.is_some() {
                        self.stage = Stage::Done;
                    }
                    return Ok(r);
                }
            }
        }
    }
}

impl<M: FrameMemory> Drop for ScrubTicket<'_, M> {
    fn drop(&mut self) {
        if let Stage::Scrubbing { node, id, .. } = self.stage {
            self.heap.abandon_ticket(node, id);
        }
    }
}
