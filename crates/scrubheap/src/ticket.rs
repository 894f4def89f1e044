//! Pending allocations: a scrub ticket is a continuation the caller advances in bounded
//! steps, yielding whenever its [`Preempt`] says so, until every frame is scrubbed.

use crate::error::HeapError;
use crate::heap::{AllocRequest, Extent, Heap, NodePref, NodeTry};
use crate::memory::FrameMemory;
use crate::preempt::Preempt;
use crate::types::RangeError;
use crate::types::MAX_ORDER;

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
    /// Frames reserved on `node`; `id` is the node's work entry. `seen` is the ticket's
    /// cursor when a remote owner last looked (see [`ScrubTicket::advance_from`]).
    Scrubbing {
        node: usize,
        id: u64,
        ext: Extent,
        seen: Option<u32>,
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

/// The allocations that may need scrubbing first: they start here, where tickets are made,
/// so the heap's core does not depend on its continuations.
impl<M: FrameMemory> Heap<M> {
    /// Allocates 2^order frames and returns them scrubbed (unless the request says
    /// `noscrub`), scrubbing at most one batch in place: it never runs more than one
    /// batch without a preemption point, and it takes none.
    ///
    /// When the only chunk it can take is dirty and larger than one batch
    /// ([`HeapConfig::scrub_batch`](crate::HeapConfig::scrub_batch)), it refuses with
    /// [`HeapError::NeedsScrubTicket`] and changes nothing: such an allocation goes
    /// through [`Heap::alloc_start`] (a ticket the caller advances, yielding between
    /// batches) or [`Heap::alloc_preemptible`]. While a background scrubber hands back the
    /// only chunk that would do, it looks again (at most [`MAX_WAIT_POLLS`] times). The
    /// `xen` baseline policies keep Xen's behaviour: the whole chunk is scrubbed in place.
    pub fn alloc(&self, req: &AllocRequest) -> Result<Extent, HeapError> {
        for _ in 0..MAX_WAIT_POLLS {
            match self.alloc_start(req)? {
                AllocStart::Ready(e) => return Ok(e),
                AllocStart::Pending(t) => {
                    if let Some(ext) = t.extent() {
                        // Dropping the ticket gives the frames (and claims) back.
                        drop(t);
                        let batch = self.config().scrub_batch;
                        debug_assert!(ext.frames() > batch);
                        return Err(HeapError::NeedsScrubTicket { order: req.order, frames: ext.frames(), batch });
                    }
                }
            }
            crate::sync::relax();
        }
        Err(HeapError::OutOfMemory {
            order: req.order,
            where_: alloc::format!("any node (gave up after {MAX_WAIT_POLLS} polls for a scrubber's handback)"),
            free: 0,
            claimed: 0,
        })
    }

    /// [`Heap::alloc`], asking `preempt` between batches: `None` when it said to yield
    /// (the ticket is dropped; the frames it scrubbed stay clean in the heap).
    pub fn alloc_preemptible(
        &self,
        req: &AllocRequest,
        preempt: &dyn crate::preempt::Preempt,
    ) -> Result<Option<Extent>, HeapError> {
        Self::drive(self.alloc_start(req)?, preempt)
    }

    /// Advances a started allocation until it is done or `preempt` says to yield (then
    /// `None`, and the ticket is dropped).
    pub(crate) fn drive(
        start: AllocStart<'_, M>,
        preempt: &dyn crate::preempt::Preempt,
    ) -> Result<Option<Extent>, HeapError> {
        match start {
            AllocStart::Ready(e) => Ok(Some(e)),
            AllocStart::Pending(mut t) => loop {
                if let Some(e) = t.advance(preempt)? {
                    return Ok(Some(e));
                }
                if preempt.check() {
                    return Ok(None);
                }
                crate::sync::relax();
            },
        }
    }

    /// Starts an allocation. Under one node lock it picks a chunk (clean exact fit first;
    /// never splitting a larger chunk while an exact fit exists), splits it, and retires
    /// claims. A chunk with no dirty frame is returned [`AllocStart::Ready`]; otherwise
    /// the frames are reserved and a [`ScrubTicket`] is returned, which the caller
    /// advances in bounded steps (idle scrubbers of the node help). When only a chunk
    /// under a background scrub would do, that scrubber is asked to hand it back and the
    /// ticket waits for it.
    pub fn alloc_start(&self, req: &AllocRequest) -> Result<AllocStart<'_, M>, HeapError> {
        if req.order > MAX_ORDER {
            return Err(HeapError::Range(RangeError::InvalidOrder { order: req.order }));
        }
        if req.sealed && req.movable {
            return Err(HeapError::SealedMovable);
        }
        match req.node {
            NodePref::Prefer(n) | NodePref::Exact(n) => {
                self.node(n)?;
            }
            NodePref::Any => {}
        }
        // An allocation that would fail drains the per-CPU reserves and tries once more.
        let tried = match self.try_alloc(req) {
            Err(HeapError::OutOfMemory { .. }) if self.drain_reserves() > 0 => self.try_alloc(req),
            r => r,
        };
        match tried? {
            NodeTry::Ready(e) => Ok(AllocStart::Ready(e)),
            NodeTry::Pending { node, id, ext } => {
                Ok(AllocStart::Pending(ScrubTicket::scrubbing(self, *req, node, id, ext)))
            }
            NodeTry::No { .. } => Ok(AllocStart::Pending(ScrubTicket::waiting(self, *req))),
        }
    }
}

impl<'h, M: FrameMemory> ScrubTicket<'h, M> {
    pub(crate) fn scrubbing(heap: &'h Heap<M>, req: AllocRequest, node: usize, id: u64, ext: Extent) -> Self {
        ScrubTicket { heap, req, stage: Stage::Scrubbing { node, id, ext, seen: None } }
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
        self.advance_inner(None, preempt)
    }

    /// [`ScrubTicket::advance`] for an owner running on a CPU of node `cpu`. When the
    /// frames lie on another node and that node has scrubbers of its own (under the
    /// `scrubheap` policy, whose idle scrubbers help tickets), the owner leaves the
    /// batches to them instead of zeroing across the interconnect: it returns `None`
    /// without zeroing while they make progress. It is "the only CPU that can" when
    /// no node but its own serves the frames' node (a node without CPUs that `cpu`'s node
    /// scrubs), or when none of the helpers' batches was in flight or started since
    /// its previous call (they are all busy elsewhere): then it zeroes one batch itself
    /// and returns. The first call after the frames are reserved only looks, giving the
    /// helpers one poll to start. How often to call again is the caller's business (a
    /// scheduler tick, say).
    ///
    /// Errors: [`crate::RangeError::NoSuchNode`] if `cpu` is not a node of the heap (the ticket
    /// is unchanged).
    pub fn advance_from(&mut self, cpu: usize, preempt: &dyn Preempt) -> Result<Option<Extent>, HeapError> {
        self.heap.served_by(cpu)?;
        self.advance_inner(Some(cpu), preempt)
    }

    fn advance_inner(&mut self, cpu: Option<usize>, preempt: &dyn Preempt) -> Result<Option<Extent>, HeapError> {
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
                        Ok(NodeTry::Pending { node, id, ext }) => {
                            self.stage = Stage::Scrubbing { node, id, ext, seen: None }
                        }
                        Ok(NodeTry::No { .. }) => {
                            self.stage = Stage::Waiting { polls: polls + 1 };
                            return Ok(None);
                        }
                    }
                }
                Stage::Scrubbing { node, id, ext, seen } => {
                    let remote = cpu.is_some_and(|c| self.heap.helped_elsewhere(node, c));
                    if !remote {
                        let r = self.heap.advance_ticket(node, id, preempt);
                        if r.is_some() {
                            self.stage = Stage::Done;
                        }
                        return Ok(r);
                    }
                    let (wait, cursor) = self.heap.helpers_progress(node, id, seen);
                    self.stage = Stage::Scrubbing { node, id, ext, seen: Some(cursor) };
                    if wait {
                        return Ok(None);
                    }
                    let r = self.heap.advance_ticket(node, id, &OneBatch(preempt));
                    match r {
                        Some(_) => self.stage = Stage::Done,
                        None => {
                            // Its own batch is not the helpers' progress.
                            let (_, after) = self.heap.helpers_progress(node, id, None);
                            self.stage = Stage::Scrubbing { node, id, ext, seen: Some(after) };
                        }
                    }
                    return Ok(r);
                }
            }
        }
    }
}

/// Asks to yield after every batch, with the caller's batch limit: a remote owner zeroes
/// one batch at a time and looks again for helpers in between.
struct OneBatch<'a>(&'a dyn Preempt);

impl Preempt for OneBatch<'_> {
    fn check(&self) -> bool {
        true
    }
    fn batch_limit(&self) -> Option<u64> {
        self.0.batch_limit()
    }
}

impl<M: FrameMemory> Drop for ScrubTicket<'_, M> {
    fn drop(&mut self) {
        if let Stage::Scrubbing { node, id, .. } = self.stage {
            self.heap.abandon_ticket(node, id);
        }
    }
}
