//! The checks the replayer runs after every line: counters against the heap's size and
//! against the frames the log holds, and what an allocation returned.

use super::{Fail, Replayer};
use scrubheap::{AllocRequest, ChunkState, Extent, Mfn, NodePref, Zone};

impl Replayer {
    /// Counters against the heap's size and against the frames the log holds.
    pub(super) fn cheap_checks(&mut self) {
        let Some(heap) = &self.heap else { return };
        let s = heap.stats();
        let mut bad = Vec::new();
        let at_rest = s.free_clean as u128 + s.free_dirty as u128 + s.allocated as u128 + s.offline as u128;
        if at_rest + s.scrubbing as u128 != self.total_frames as u128 {
            bad.push(format!("stats account for {} frames of {}", at_rest + s.scrubbing as u128, self.total_frames));
        }
        if s.scrubbing != 0 || at_rest != self.total_frames as u128 {
            bad.push(format!(
                "free_clean {} + free_dirty {} + allocated {} + offline {} != {} frames (scrubbing {})",
                s.free_clean, s.free_dirty, s.allocated, s.offline, self.total_frames, s.scrubbing
            ));
        }
        let pod = super::pod::pod_frames(&self.pods);
        if s.allocated != self.held_frames + pod {
            bad.push(format!(
                "the heap says {} frames are allocated, the log holds {} and PoD guests {pod}",
                s.allocated, self.held_frames
            ));
        }
        if s.claimed as u128 > s.free_clean as u128 + s.free_dirty as u128 {
            bad.push(format!("{} frames claimed but only {} free", s.claimed, s.free_clean + s.free_dirty));
        }
        for b in bad {
            self.violation(b);
        }
    }

    /// What an allocation returned (`ext`, ending before frame `end`): aligned, inside its
    /// node (the asked-for one if `exact`), owned as the heap says, in the right zone,
    /// and overlapping nothing the log holds.
    pub(super) fn check_alloc(&mut self, req: &AllocRequest, ext: Extent, end: u64) {
        let Some(heap) = &self.heap else { return };
        let size = end - ext.mfn.0;
        let mut bad = Vec::new();
        if ext.mfn.0 % size != 0 {
            bad.push(format!("alloc of order {} returned {ext:?}", req.order));
        }
        if heap.node_of(ext.mfn) != Ok(ext.node) || heap.node_of(Mfn(end - 1)) != Ok(ext.node) {
            bad.push(format!("alloc returned {ext:?}, which is not inside node {}", ext.node));
        }
        if let NodePref::Exact(n) = req.node {
            if ext.node != n {
                bad.push(format!("alloc exact on node {n} returned {ext:?}"));
            }
        }
        match heap.chunk_at(ext.mfn) {
            Ok(c) => {
                let owned = matches!(c.state, ChunkState::Allocated { owner, .. } if owner == req.owner);
                if c.extent != ext || !owned {
                    bad.push(format!("alloc returned {ext:?} but the heap says {c:?}"));
                }
                if !req.movable && c.zone != Zone::Normal {
                    bad.push(format!("an unmovable alloc got {ext:?} in the {} zone", c.zone));
                }
            }
            Err(e) => bad.push(format!("alloc returned {ext:?}, whose chunk cannot be read: {e}")),
        }
        if let Some((&m, &(o, s))) = self.pieces.range(..end).next_back() {
            if m + (1u64 << o) > ext.mfn.0 {
                let other = self.held.get(&s).map_or("?", |h| h.name.as_str());
                bad.push(format!("alloc returned {ext:?}, which overlaps {} held by id {other}", Mfn(m)));
            }
        }
        for b in bad {
            self.violation(b);
        }
    }

    /// `scrub node=N pages=P`, checking that the frames it says it scrubbed left the
    /// dirty count.
    pub(super) fn scrub(&mut self, node: usize, pages: u64) -> Result<(), Fail> {
        let heap = self.heap_or_fail()?;
        let before = heap.stats();
        let done = heap.scrub_step(node, pages, &self.preempt(false))?;
        let after = heap.stats();
        if done > pages || before.free_dirty.checked_sub(after.free_dirty) != Some(done) {
            let msg = format!(
                "scrub_step({node}, {pages}) said {done} frames scrubbed; dirty frames went {} -> {}",
                before.free_dirty, after.free_dirty
            );
            self.violation(msg);
        }
        Ok(())
    }
}
