//! Scrubbing outside the lock: background scrub steps, the owner's and helpers' batches
//! of scrub tickets, and the handbacks between them.
//!
//! The pattern everywhere: under the node lock, take a batch (mark the chunk as being
//! worked on, move a cursor); drop the lock; zero the batch; re-take the lock to clear
//! its dirty bits, publish progress and look for a stop request. No lock is held while a
//! frame is written, and no worker runs more than one batch between two looks at its
//! stop flag and its [`Preempt`].

use crate::chunk::State;
use crate::heap::{Extent, Heap, NodeGuard, Source};
use crate::memory::FrameMemory;
use crate::policy::Policy;
use crate::preempt::Preempt;
use crate::types::Zone;
use crate::work::Kind;
use crate::HeapError;
use alloc::vec::Vec;

#[inline]
fn size(order: u8) -> u32 {
    1u32 << order
}

impl<M: FrameMemory> Heap<M> {
    /// What an idle CPU of `node` calls. It first helps pending allocations (scrub
    /// tickets) on the nodes it serves, then takes dirty free chunks (largest first, nodes
    /// whose claims want more clean memory first) and scrubs them in batches outside the
    /// lock, asking `preempt` after each batch and handing a chunk back at once if an
    /// allocator needs it. Zeroes at most `budget` frames. Returns the frames zeroed;
    /// 0 means there was nothing to do (or the policy does no background scrubbing).
    pub fn scrub_step(&self, node: usize, budget: u64, preempt: &dyn Preempt) -> Result<u64, HeapError> {
        self.node(node)?;
        if !self.config().policy.background_scrub() {
            return Ok(0);
        }
        let mut done = 0u64;
        for m in self.scrub_order(node) {
            if self.config().policy == Policy::Scrubheap {
                let (z, stop) = self.help_tickets(m, budget - done, preempt);
                done += z;
                if stop {
                    break;
                }
            }
            let (z, stop) = self.scrub_chunks(m, budget - done, preempt);
            done += z;
            if stop {
                break;
            }
        }
        Ok(done)
    }

    /// The nodes `node` serves, those whose claims exceed their clean memory first.
    fn scrub_order(&self, node: usize) -> Vec<usize> {
        let mut v = self.served(node).to_vec();
        if v.len() > 1 {
            let deficit = |m: usize| {
                let s = self.node_stats(m).expect("served nodes exist");
                s.claimed.saturating_sub(s.free_clean)
            };
            v.sort_by_key(|&m| core::cmp::Reverse(deficit(m)));
        }
        v
    }

    /// Takes dirty free chunks of node `m` and scrubs them. Returns (frames zeroed,
    /// whether the budget or `preempt` stopped it).
    fn scrub_chunks(&self, m: usize, budget: u64, preempt: &dyn Preempt) -> (u64, bool) {
        let batch = crate::preempt::batch_frames(self.config().scrub_batch, preempt);
        let mut done = 0u64;
        let mut st = self.lock_node(m);
        loop {
            if done >= budget {
                return (done, true);
            }
            let Some(head) = Self::largest_dirty(&st) else {
                return (done, false);
            };
            st.unlink_free(head);
            let (order, fd) = (st.head(head).order, st.first_dirty(head));
            // The chunk stays counted as free, its dirty bits in free_dirty; it is only off
            // the lists. Nothing here is proportional to the chunk's size.
            st.scrubbing += size(order) as u64;
            st.forget_free(head);
            st.set_state(head, State::Scrubbing, order);
            let id = st.add_work(head, order, Kind::Background);
            let i = st.work.len() - 1;
            st.work[i].cursor = fd;
            loop {
                let i = st.work_index(id);
                let (cursor, stop) = (st.work[i].cursor, st.work[i].stop);
                let max = core::cmp::min(batch, budget - done) as u32;
                let run = if stop || max == 0 { None } else { st.dirty.next_run(head, size(order), cursor, max) };
                let Some((s, l)) = run else {
                    Self::hand_back(&mut st, id);
                    break;
                };
                st.work[i].cursor = s + l;
                // The guard mirrors free_dirty (changed by the last batch) as it drops.
                drop(st);
                self.memory().zero(self.cell(m).mfn(head + s), l as u64);
                done += l as u64;
                st = self.lock_node(m);
                st.dirty.clear_all(head + s, l);
                st.free_dirty -= l as u64;
                self.account(m, Source::Background, l as u64);
                if preempt.check() {
                    Self::hand_back(&mut st, id);
                    return (done, true);
                }
            }
        }
    }

    /// Returns a background scrubber's chunk to the free lists, merged, with whatever
    /// dirty frames it still has (none before its cursor: those batches are done).
    fn hand_back(st: &mut NodeGuard<'_>, id: u64) {
        let i = st.work_index(id);
        let w = st.work.swap_remove(i);
        st.scrubbing -= w.frames();
        st.clear_head(w.head);
        let len = size(w.order);
        let fd = st.dirty.first_set(w.head + w.cursor, len - w.cursor).map_or(crate::chunk::NONE, |r| r + w.cursor);
        st.merge_insert(w.head, w.order, fd);
    }

    pub(crate) fn largest_dirty(st: &crate::node::NodeState) -> Option<u32> {
        [Zone::Normal, Zone::Movable]
            .into_iter()
            .filter_map(|z| {
                let m = st.nonempty_mask(z, true);
                (m != 0).then(|| (31 - m.leading_zeros(), z))
            })
            .max()
            .map(|(o, z)| st.list_head(z, true, o as u8))
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
            let found = st.work.iter().enumerate().find_map(|(i, w)| {
                if !matches!(w.kind, Kind::Ticket { .. }) || w.stop {
                    return None;
                }
                st.dirty.next_run(w.head, size(w.order), w.cursor, max).map(|r| (i, r))
            });
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
                    st = self.lock_node(node);
                    st.dirty.clear_all(w.head + s, l);
                    let i = st.work_index(id);
                    st.work[i].inflight -= 1;
                    if !whole && preempt.check() {
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
