//! Scrubbing outside the lock: background scrub steps, the owner's and helpers' batches
//! of scrub tickets, and the handbacks between them.
//!
//! The pattern everywhere: under the node lock, take a batch (mark the chunk as being
//! worked on, move a cursor); drop the lock; zero the batch; re-take the lock to clear
//! its dirty bits, publish progress and look for a stop request. No lock is held while a
//! frame is written, and no worker runs more than one batch between two looks at its
//! stop flag and its [`Preempt`].

use crate::chunk::State;
use crate::chunk::NONE;
use crate::heap::{Extent, Heap, NodeGuard, Source};
use crate::memory::FrameMemory;
use crate::policy::Policy;
use crate::preempt::Preempt;
use crate::types::{Off, Zone};
use crate::work::Kind;
use crate::HeapError;
use alloc::vec::Vec;

#[inline]
fn size(order: u8) -> u32 {
    1u32 << order
}

impl<M: FrameMemory> Heap<M> {
    /// What an idle CPU of `node` calls. It first helps pending allocations (scrub
    /// tickets) on the nodes it serves; then it brings every node it serves whose node
    /// claims exceed its clean memory up to that clean-memory target (its own node
    /// first, then the largest shortfall), scrubbing no node beyond its target while
    /// another is short; then it takes any dirty free chunks (largest first, its own
    /// node first). Chunks are scrubbed in batches outside the lock, asking `preempt`
    /// after each batch and handing a chunk back at once if an allocator needs it.
    /// Before it looks for dirty chunks it returns up to `CHUNKS_PER_STEP` blocks the
    /// per-CPU fast path parked (their chunks freed by `put`) of each node it serves to the
    /// free lists. Zeroes at most `budget` frames. Returns the frames zeroed; 0 means there was
    /// nothing to do (or the policy does no background scrubbing).
    pub fn scrub_step(&self, node: usize, budget: u64, preempt: &dyn Preempt) -> Result<u64, HeapError> {
        self.node(node)?;
        if !self.config().policy.background_scrub() {
            return Ok(0);
        }
        // Blocks the fast path parked after puts hold dirty frames: back to the free
        // lists, where the loops below find them (a bounded number per node and step).
        for &m in self.served(node) {
            self.return_parked(m);
        }
        let mut done = 0u64;
        if self.config().policy == Policy::Scrubheap {
            for &m in self.served(node) {
                let (z, stop) = self.help_tickets(m, budget - done, preempt);
                done += z;
                if stop {
                    return Ok(done);
                }
            }
        }
        for (m, short) in self.clean_targets(node) {
            let want = core::cmp::min(short, budget - done);
            let (z, stop) = self.scrub_chunks(m, want, preempt);
            done += z;
            if stop || done >= budget {
                return Ok(done);
            }
        }
        for &m in self.served(node) {
            let (z, stop) = self.scrub_chunks(m, budget - done, preempt);
            done += z;
            if stop || done >= budget {
                break;
            }
        }
        debug_assert!(done <= budget);
        Ok(done)
    }

    /// The nodes `node` serves whose node claims exceed their clean memory, with the
    /// shortfall (frames to scrub to reach the claims' clean-memory target): `node`
    /// itself first (its scrubbers are local to it), then the largest shortfall.
    fn clean_targets(&self, node: usize) -> Vec<(usize, u64)> {
        let mut v: Vec<(usize, u64)> = self
            .served(node)
            .iter()
            // Unclaimed nodes cost one load: scrub_step runs this on every call.
            .filter(|&&m| self.cell(m).claimed.load(core::sync::atomic::Ordering::Relaxed) > 0)
            .map(|&m| {
                let s = self.node_stats(m).expect("served nodes exist");
                (m, s.claimed.saturating_sub(s.free_clean).min(s.free_dirty))
            })
            .filter(|&(_, short)| short > 0)
            .collect();
        v.sort_by_key(|&(m, short)| (m != node, core::cmp::Reverse(short)));
        debug_assert!(v.iter().all(|&(m, _)| self.served(node).contains(&m)));
        v
    }

    /// Takes dirty free chunks of node `m` and scrubs them; when none is left free, joins
    /// a chunk another scrubber of the node is working on (several scrubbers share one
    /// large chunk, each taking a batch from its cursor). Returns (frames zeroed, whether
    /// `preempt` or a stop request ended it; the caller sees a spent budget by itself).
    fn scrub_chunks(&self, m: usize, budget: u64, preempt: &dyn Preempt) -> (u64, bool) {
        let batch = crate::preempt::batch_frames(self.config().scrub_batch, preempt);
        let mut done = 0u64;
        let mut st = self.lock_node(m);
        loop {
            if done >= budget {
                return (done, false);
            }
            let id = match Self::largest_dirty(&st) {
                Some((head, order)) => Self::take_for_scrub(&mut st, head, order),
                None => match Self::joinable(&st) {
                    Some(id) => id,
                    None => return (done, false),
                },
            };
            let (back, z, preempted) = self.scrub_batches(st, m, id, batch, budget - done, preempt);
            st = back;
            done += z;
            if preempted {
                return (done, true);
            }
        }
    }

    /// Marks free chunk `head` (of `order`) as being scrubbed and opens its work entry with its cursor
    /// at the start: the first batch's search of the dirty bitmap (its summaries) finds
    /// the first dirty frame, under the same hold of the lock, so nobody sees the cursor
    /// before it moves. The chunk stays counted as free, its dirty bits in free_dirty; it
    /// is only off the lists. Nothing here is proportional to the chunk's size.
    fn take_for_scrub(st: &mut NodeGuard<'_>, head: Off, order: u8) -> u64 {
        debug_assert!(st.first_dirty(head) != NONE, "only chunks with dirty frames are taken");
        debug_assert_eq!(st.head(head).order, order);
        st.unlink_free(head);
        st.scrubbing += size(order) as u64;
        // The record goes from free to being scrubbed in one write: blanking it first
        // would drop a split block's table and make it again at once.
        st.restate_free(head, State::Scrubbing);
        let id = st.add_work(head, order, Kind::Background);
        debug_assert_eq!(st.work[st.work.len() - 1].cursor, 0);
        id
    }

    /// A background scrub of node `st` another scrubber may join: not asked to stop, with
    /// dirty frames past its cursor. The largest such chunk.
    fn joinable(st: &crate::node::NodeState) -> Option<u64> {
        st.work
            .iter()
            .filter(|w| w.kind == Kind::Background && !w.stop)
            .filter(|w| st.dirty.first_set(w.head + w.cursor, size(w.order) - w.cursor).is_some())
            .max_by_key(|w| (w.order, core::cmp::Reverse(w.id)))
            .map(|w| w.id)
    }

    /// Scrubs batches of background work `id` (taken or joined) until it has no dirty
    /// frame past its cursor, is asked to stop, the budget runs out or `preempt` says
    /// so; then leaves it (the last scrubber to leave hands the chunk back). Returns
    /// (frames zeroed, whether the budget or `preempt` stopped it). Called and returns
    /// with the node lock held.
    fn scrub_batches<'a>(
        &'a self,
        mut st: NodeGuard<'a>,
        m: usize,
        id: u64,
        batch: u64,
        budget: u64,
        preempt: &dyn Preempt,
    ) -> (NodeGuard<'a>, u64, bool) {
        let mut done = 0u64;
        loop {
            let i = st.work_index(id);
            let w = &st.work[i];
            let (head, order, cursor, stop) = (w.head, w.order, w.cursor, w.stop);
            let max = core::cmp::min(batch, budget - done) as u32;
            let run = if stop || max == 0 { None } else { st.dirty.next_run(head, size(order), cursor, max) };
            let Some((s, l)) = run else {
                Self::leave_background(&mut st, id);
                // Asked to stop: yield to the allocator that wants the chunk rather than
                // take it again before it could.
                return (st, done, stop);
            };
            st.work[i].cursor = s + l;
            st.work[i].inflight += 1;
            // The guard publishes what this batch changed for lock-free readers as it drops.
            drop(st);
            self.memory().zero(self.cell(m).mfn(head + s), l as u64);
            done += l as u64;
            // The preemption point, with no lock held (a caller may reschedule inside it)
            // and this batch still in flight (so the chunk stays out while it yields).
            let yield_now = preempt.check();
            st = self.lock_node(m);
            st.dirty.clear_all(head + s, l);
            st.free_dirty -= l as u64;
            let i = st.work_index(id);
            st.work[i].inflight -= 1;
            self.account(m, Source::Background, l as u64);
            if yield_now {
                Self::leave_background(&mut st, id);
                return (st, done, true);
            }
        }
    }

    /// A scrubber leaves background work `id` between batches. The last one to leave
    /// (no batch of another scrubber in flight) returns the chunk to the free lists,
    /// merged, with whatever dirty frames it still has (none before its cursor: those
    /// batches are done or in flight, and a batch in flight means its scrubber has not
    /// left yet).
    fn leave_background(st: &mut NodeGuard<'_>, id: u64) {
        let i = st.work_index(id);
        if st.work[i].inflight > 0 {
            return;
        }
        let w = st.work.swap_remove(i);
        st.scrubbing -= w.frames();
        let len = size(w.order);
        let fd = st.dirty.first_set(w.head + w.cursor, len - w.cursor).map_or(NONE, |r| r + w.cursor);
        debug_assert!(fd == NONE || fd >= w.cursor, "no dirty frame is left behind the cursor");
        // Over the scrubbing head, not a blanked one (see `take_for_scrub`).
        st.merge_insert(w.head, w.order, fd);
    }

    /// The head of a free chunk of the largest order on a dirty list of node `st`, and
    /// that order.
    pub(crate) fn largest_dirty(st: &crate::node::NodeState) -> Option<(Off, u8)> {
        [Zone::Normal, Zone::Movable]
            .into_iter()
            .filter_map(|z| {
                let m = st.nonempty_mask(z, true);
                (m != 0).then(|| (31 - m.leading_zeros(), z))
            })
            .max()
            .map(|(o, z)| (st.list_head(z, true, o as u8), o as u8))
    }

    /// Helps scrub tickets of node `m`, a batch at a time. Returns (frames zeroed,
    /// whether the budget or `preempt` stopped it).
    fn help_tickets(&self, m: usize, budget: u64, preempt: &dyn Preempt) -> (u64, bool) {
        let batch = crate::preempt::batch_frames(self.config().scrub_batch, preempt) as u32;
        let mut done = 0u64;
        loop {
            if done >= budget {
                return (done, true);
            }
            let max = core::cmp::min(batch as u64, budget - done) as u32;
            let mut st = self.lock_node(m);
            // The ticket furthest from done first: helpers spread over the node's
            // tickets, and those whose owners leave the batches to them (remote owners,
            // see `ScrubTicket::advance_from`) are not left behind.
            let found = st
                .work
                .iter()
                .enumerate()
                .filter(|(_, w)| matches!(w.kind, Kind::Ticket { .. }) && !w.stop)
                .filter_map(|(i, w)| st.dirty.next_run(w.head, size(w.order), w.cursor, max).map(|r| (i, r)))
                .max_by_key(|&(i, _)| (size(st.work[i].order) - st.work[i].cursor, core::cmp::Reverse(i)));
            let Some((i, (s, l))) = found else { return (done, false) };
            let (id, head) = (st.work[i].id, st.work[i].head);
            st.work[i].cursor = s + l;
            st.work[i].inflight += 1;
            drop(st);
            self.memory().zero(self.cell(m).mfn(head + s), l as u64);
            done += l as u64;
            let mut st = self.lock_node(m);
            st.dirty.clear_all(head + s, l);
            self.account(m, Source::InPlace, l as u64);
            self.finish_batch(&mut st, m, id);
            drop(st);
            if preempt.check() {
                return (done, true);
            }
        }
    }

    /// A batch of ticket `id` is done: if the ticket was dropped meanwhile and this was
    /// the last batch in flight, its frames go back to the heap.
    fn finish_batch(&self, st: &mut NodeGuard<'_>, node: usize, id: u64) {
        let i = st.work_index(id);
        st.work[i].inflight -= 1;
        if st.work[i].stop && st.work[i].inflight == 0 {
            self.release_ticket(st, node, i);
        }
    }

    /// Returns a dropped ticket's frames to the heap and the claim it retired to its
    /// owner (under the node lock, then the claims lock: the frames and the claim come
    /// back together, so no allocation sees one without the other).
    fn release_ticket(&self, st: &mut NodeGuard<'_>, node: usize, i: usize) {
        let w = st.work.swap_remove(i);
        debug_assert!(w.stop && w.inflight == 0, "a ticket is released once dropped and idle");
        st.allocated -= w.frames();
        st.clear_head(w.head);
        st.put_back(w.head, w.order);
        if let Kind::Ticket { owner, claim, .. } = w.kind {
            debug_assert!(claim.frames() <= w.frames());
            if claim.frames() > 0 {
                let mut book = self.claim_book();
                book.restore(owner, node, claim);
                self.publish_claims(&book);
            }
        }
    }

    /// The owner's side of a ticket: batches until done, preempted, or waiting on helpers.
    pub(crate) fn advance_ticket(&self, node: usize, id: u64, preempt: &dyn Preempt) -> Option<Extent> {
        let whole = self.config().policy.whole_chunk_in_place();
        let cell = self.cell(node);
        let mut zeroed = 0u64;
        let mut st = self.lock_node(node);
        let Kind::Ticket { owner, movable, sealed, claim } = st.work[st.work_index(id)].kind else {
            unreachable!("ticket work of another kind")
        };
        let result = loop {
            let i = st.work_index(id);
            let w = st.work[i].clone();
            let batch = if whole {
                size(w.order)
            } else {
                crate::preempt::batch_frames(self.config().scrub_batch, preempt) as u32
            };
            match st.dirty.next_run(w.head, size(w.order), w.cursor, batch) {
                Some((s, l)) => {
                    st.work[i].cursor = s + l;
                    st.work[i].inflight += 1;
                    drop(st);
                    self.memory().zero(cell.mfn(w.head + s), l as u64);
                    zeroed += l as u64;
                    // The preemption point, with no lock held and the batch in flight.
                    let yield_now = !whole && preempt.check();
                    st = self.lock_node(node);
                    st.dirty.clear_all(w.head + s, l);
                    let i = st.work_index(id);
                    st.work[i].inflight -= 1;
                    if yield_now {
                        break None;
                    }
                }
                None if w.inflight > 0 => break None,
                None => {
                    st.work.swap_remove(i);
                    if claim.frames() > 0 {
                        // Handed over: what the ticket retired stays retired.
                        let mut book = self.claim_book();
                        book.settle(owner, claim);
                        self.publish_claims(&book);
                    }
                    st.set_allocated(w.head, w.order, owner, movable, sealed);
                    break Some(Extent { mfn: cell.mfn(w.head), order: w.order, node });
                }
            }
        };
        if zeroed > 0 {
            *st.in_place_by_owner.entry(owner).or_default() += zeroed;
        }
        drop(st);
        self.account(node, Source::InPlace, zeroed);
        result
    }

    /// Whether frames of `node` have scrubbers other than an owner on a CPU of node
    /// `cpu`: the policy's idle scrubbers help tickets, and a node other than `cpu`'s
    /// serves `node`. (If `cpu`'s own node serves it, its scrubbers write just as
    /// remotely as the owner would: the owner may as well do it.)
    pub(crate) fn helped_elsewhere(&self, node: usize, cpu: usize) -> bool {
        debug_assert!(node < self.node_count() && cpu < self.node_count());
        node != cpu
            && self.config().policy == Policy::Scrubheap
            && (0..self.node_count()).any(|s| s != cpu && self.served(s).contains(&node))
    }

    /// What a remote owner sees of ticket `id`: (whether to wait for the helpers, the
    /// ticket's cursor). It waits when a helper's batch is in flight or the cursor moved
    /// since `seen` (the cursor at its previous look; None: its first look), unless no
    /// dirty frame is left past the cursor (then the owner finishes the ticket, or waits
    /// for the last batch in flight, in [`Heap::advance_ticket`]).
    pub(crate) fn helpers_progress(&self, node: usize, id: u64, seen: Option<u32>) -> (bool, u32) {
        let st = self.lock_node(node);
        let w = &st.work[st.work_index(id)];
        debug_assert!(matches!(w.kind, Kind::Ticket { .. }), "helpers only take tickets");
        let left = st.dirty.first_set(w.head + w.cursor, size(w.order) - w.cursor).is_some();
        let busy = w.inflight > 0 || seen.is_none_or(|c| c != w.cursor);
        (left && busy, w.cursor)
    }

    /// A ticket was dropped unfinished: its frames go back now, or when the last helper
    /// batch in flight is done.
    pub(crate) fn abandon_ticket(&self, node: usize, id: u64) {
        let mut st = self.lock_node(node);
        let i = st.work_index(id);
        st.work[i].stop = true;
        if st.work[i].inflight == 0 {
            self.release_ticket(&mut st, node, i);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{AllocRequest, DomId, Heap, HeapConfig, NeverPreempt, NullMemory};

    /// Words of the dirty bitmap read by one `scrub_step` that scrubs the one freed frame
    /// of a free chunk of `order` (a node of exactly that chunk).
    fn words_read_scrubbing_one_frame(order: u8) -> u64 {
        let heap = Heap::new(HeapConfig::uniform(1, 1 << order), NullMemory).unwrap();
        let e = heap.alloc(&AllocRequest::new(0, DomId(1))).unwrap();
        heap.free(e.mfn, 0, DomId(1)).unwrap();
        let c = heap.chunk_at(e.mfn).unwrap();
        assert_eq!((c.extent.order, c.state), (order, crate::ChunkState::Free { dirty_frames: 1 }));
        let before = heap.lock_node(0).dirty.reads();
        assert_eq!(heap.scrub_step(0, u64::MAX, &NeverPreempt).unwrap(), 1);
        let reads = heap.lock_node(0).dirty.reads() - before;
        assert_eq!(heap.stats().free_dirty, 0);
        heap.check_invariants().unwrap();
        reads
    }

    #[test]
    fn scrubbing_one_freed_frame_costs_the_same_in_a_4k_and_a_1g_free_chunk() {
        let reads: alloc::vec::Vec<u64> = [0u8, 9, 18].iter().map(|&o| words_read_scrubbing_one_frame(o)).collect();
        // A scan to the chunk's end read 4,096 words per pass at order 18. With the
        // summaries, each search (the next run, the hand-back's first dirty frame, the
        // free list the merged chunk joins) reads at most two words per level: one level
        // at order 0, two at order 9, three at order 18, and a handful of searches.
        let levels = [1, 2, 3];
        assert!(reads.iter().zip(levels).all(|(&r, l)| r <= 8 * l), "orders 0, 9, 18: {reads:?} words");
    }
}
