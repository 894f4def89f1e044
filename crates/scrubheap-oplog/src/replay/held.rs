//! The log's allocations: which frames each id holds, split by partial frees and
//! followed through the moves of pins and offlines.

use super::{fail, Fail, ReplayHeap, Replayer};
use crate::kind;
use scrubheap::FreeError;
use scrubheap::{AllocRequest, DomId, Extent, HeapError, Mfn, Migrator, NoMigration, RangeOp, MAX_ORDER};

/// One allocation of the log and what is left of it.
#[derive(Clone, Debug)]
pub(super) struct Held {
    /// Its id.
    pub(super) name: String,
    /// Its owner.
    pub(super) owner: DomId,
    /// Its first frame when allocated.
    pub(super) first: u64,
    /// Its order when allocated.
    pub(super) order: u8,
    /// The node it came from.
    pub(super) node: usize,
    /// Frames still held.
    pub(super) frames: u64,
}

/// An allocation the log still holds (part of), as [`Replayer::allocation`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// Its owner.
    pub owner: DomId,
    /// Its first frame (offsets in `free id=X offset=O` count from here).
    pub first: Mfn,
    /// Its order when allocated.
    pub order: u8,
    /// The node it came from.
    pub node: usize,
    /// The aligned pieces still held, in frame order.
    pub remaining: Vec<(Mfn, u8)>,
}

/// The replayer's [`Migrator`]: every move succeeds; each is recorded so the log's
/// allocations follow their frames.
#[derive(Default)]
pub(super) struct RecordMoves(core::cell::RefCell<Vec<(DomId, Extent, Extent)>>);

impl Migrator for RecordMoves {
    fn copy(&self, _owner: DomId, _from: Extent, _to: Extent, _offset: u64, _frames: u64) -> bool {
        true
    }
    fn switch(&self, owner: DomId, from: Extent, to: Extent) -> bool {
        self.0.borrow_mut().push((owner, from, to));
        true
    }
}

impl Replayer {
    /// `alloc id=X ...`: the allocation, checked, and held under `id`.
    pub(super) fn alloc(&mut self, id: &str, req: &AllocRequest) -> Result<(), Fail> {
        let heap = self.heap_or_fail()?;
        if self.names.contains_key(id) {
            return fail(kind::DUPLICATE_ID, format!("id {id} still holds frames: free it before reusing the id"));
        }
        // As a runtime allocates: through a scrub ticket when the chunk is dirty and
        // larger than a batch, with a preemption point between batches.
        let ext = heap.alloc_preemptible(req, &self.preempt(false))?.expect("a preempt that never yields");
        let size = 1u64 << core::cmp::min(req.order, MAX_ORDER);
        let Some(end) = ext.mfn.0.checked_add(size).filter(|_| ext.order == req.order && req.order <= MAX_ORDER) else {
            self.violation(format!("alloc of order {} returned {ext:?}", req.order));
            return Ok(());
        };
        self.check_alloc(req, ext, end);
        self.hold(id, req.owner, ext);
        Ok(())
    }

    /// `alloc-at id=X mfn=M order=K dom=D`: exactly that range, checked, held under `id`.
    pub(super) fn alloc_at(&mut self, id: &str, mfn: Mfn, order: u8, dom: DomId) -> Result<(), Fail> {
        let heap = self.heap_or_fail()?;
        if self.names.contains_key(id) {
            return fail(kind::DUPLICATE_ID, format!("id {id} still holds frames: free it before reusing the id"));
        }
        let ext =
            heap.alloc_at_preemptible(mfn, order, dom, &self.preempt(false))?.expect("a preempt that never yields");
        if ext.mfn != mfn || ext.order != order {
            self.violation(format!("alloc-at {mfn} order {order} returned {ext:?}"));
            return Ok(());
        }
        let mut req = AllocRequest::new(order, dom).exact(ext.node);
        req.movable = true; // the zone is the range's: any zone is right
        self.check_alloc(&req, ext, ext.mfn.0 + (1u64 << order));
        self.hold(id, dom, ext);
        Ok(())
    }

    /// Holds `ext` for `owner` under the log's name `id`.
    fn hold(&mut self, id: &str, owner: DomId, ext: Extent) {
        let size = 1u64 << ext.order;
        let serial = self.next_serial;
        self.next_serial += 1;
        let held = Held { name: id.into(), owner, first: ext.mfn.0, order: ext.order, node: ext.node, frames: size };
        self.names.insert(id.into(), serial);
        self.held.insert(serial, held);
        self.pieces.insert(ext.mfn.0, (ext.order, serial));
        self.held_frames += size;
    }

    /// The owner of id `id`, and the frame where its offset `offset` is now.
    fn locate(&self, id: &str, offset: u64) -> Result<(DomId, Mfn), Fail> {
        let Some(&serial) = self.names.get(id) else {
            return fail(kind::UNKNOWN_ID, format!("id {id} holds nothing"));
        };
        let h = &self.held[&serial];
        Ok((h.owner, Mfn(self.frame_of(serial, h.first, offset))))
    }

    /// `free id=X offset=O order=K`: the part at offset O, wherever moves took it.
    pub(super) fn free_part(&mut self, id: &str, offset: u64, order: u8) -> Result<(), Fail> {
        let heap = self.heap_or_fail()?;
        let (owner, mfn) = self.locate(id, offset)?;
        self.range(heap, RangeOp::Free, mfn, order, owner)?;
        self.forget(mfn.0, order, owner);
        Ok(())
    }

    /// `pin` or `unpin id=X offset=O order=K`; a pin's moves move the log's pieces.
    pub(super) fn pin(&mut self, id: &str, offset: u64, order: u8, pin: bool) -> Result<(), Fail> {
        let heap = self.heap_or_fail()?;
        let (owner, mfn) = self.locate(id, offset)?;
        if !pin {
            return Ok(self.range(heap, RangeOp::Unpin, mfn, order, owner).map(|_| ())?);
        }
        let moves = RecordMoves::default();
        let counted = scrubheap::CountingMigrator::new(&moves, self.counter.clone());
        let r = heap.pin(mfn, order, owner, &counted, &self.preempt(true));
        drop(counted);
        self.apply_moves(moves);
        r.map(|_| ()).map_err(Fail::from)
    }

    /// Frees or unpins a held range as a job (however many chunks it is held as),
    /// counting its sections.
    pub(super) fn range(
        &self,
        heap: &ReplayHeap,
        op: RangeOp,
        mfn: Mfn,
        order: u8,
        owner: DomId,
    ) -> Result<Extent, HeapError> {
        heap.range_preemptible(op, mfn, order, owner, &NoMigration, &self.preempt(true))
    }

    pub(super) fn free_id(&mut self, id: &str) -> Result<(), Fail> {
        let heap = self.heap_or_fail()?;
        let Some(&serial) = self.names.get(id) else {
            return fail(kind::UNKNOWN_ID, format!("id {id} holds nothing"));
        };
        let owner = self.held[&serial].owner;
        let mine = self.pieces_of(serial);
        let results: Vec<(u64, u8, Result<(), HeapError>)> = mine
            .into_iter()
            .map(|(m, o)| (m, o, self.range(heap, RangeOp::Free, Mfn(m), o, owner).map(|_| ())))
            .collect();
        let mut first_err = None;
        for (m, o, res) in results {
            match res {
                Ok(()) => self.forget(m, o, owner),
                Err(e @ HeapError::Free(FreeError::Pinned { .. })) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    self.violation(format!("the heap refused to free {} order {o}, which id {id} holds: {e}", Mfn(m)));
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Forgets the frames `[lo, lo + 2^order)` the heap just freed for `owner`, splitting
    /// held pieces as needed; every frame must have been held by `owner`.
    pub(super) fn forget(&mut self, lo: u64, order: u8, owner: DomId) {
        let size = 1u64 << order;
        let hi = lo + size;
        let hits: Vec<(u64, u8, u64)> = self
            .pieces
            .range(..hi)
            .rev()
            .take_while(|(&m, &(o, _))| m + (1u64 << o) > lo)
            .map(|(&m, &(o, s))| (m, o, s))
            .collect();
        let mut covered = 0u64;
        let mut bad = Vec::new();
        for (m, o, serial) in hits {
            self.pieces.remove(&m);
            let gone = if o <= order {
                1u64 << o
            } else {
                // The freed range lies inside this piece: keep the buddies around it.
                let (mut h, mut k) = (m, o);
                while k > order {
                    k -= 1;
                    let upper = h + (1u64 << k);
                    if lo >= upper {
                        self.pieces.insert(h, (k, serial));
                        h = upper;
                    } else {
                        self.pieces.insert(upper, (k, serial));
                    }
                }
                size
            };
            // Saturating: only a heap that handed the same frames out twice could make the
            // log hold less than it frees, and that is reported, not a reason to panic.
            covered += gone;
            self.held_frames = self.held_frames.saturating_sub(gone);
            let Some(h) = self.held.get_mut(&serial) else { continue };
            if h.owner != owner {
                bad.push(format!("the heap freed {} for {owner}, but id {} of {} held it", Mfn(m), h.name, h.owner));
            }
            h.frames = h.frames.saturating_sub(gone);
            if h.frames == 0 {
                let name = core::mem::take(&mut h.name);
                self.held.remove(&serial);
                self.names.remove(&name);
            }
        }
        if covered != size {
            bad.push(format!("the heap freed {size} frames at {} but the log held only {covered} of them", Mfn(lo)));
        }
        for b in bad {
            self.violation(b);
        }
    }

    /// The frame where offset `offset` of allocation `serial` (first frame `first`) is
    /// now, following the moves of pins and offlines.
    pub(super) fn frame_of(&self, serial: u64, first: u64, offset: u64) -> u64 {
        let inner = self
            .moved
            .range((serial, 0, 0)..=(serial, offset, u8::MAX))
            .rev()
            .find(|(&(_, p, _), &(_, k))| offset - p < 1u64 << k)
            .map(|(&(_, p, _), &(m, _))| m + (offset - p));
        inner.unwrap_or_else(|| first.saturating_add(offset))
    }

    /// Every piece allocation `serial` still holds, wherever moves took it, in frame order.
    pub(super) fn pieces_of(&self, serial: u64) -> Vec<(u64, u8)> {
        let Some(h) = self.held.get(&serial) else { return Vec::new() };
        let mut ranges = vec![(h.first, h.first + (1u64 << h.order))];
        for (_, &(m, k)) in self.moved.range((serial, 0, 0)..(serial + 1, 0, 0)) {
            ranges.push((m, m + (1u64 << k)));
        }
        let mut out: Vec<(u64, u8)> = ranges
            .into_iter()
            .flat_map(|(lo, hi)| self.pieces.range(lo..hi))
            .filter(|(_, &(_, s))| s == serial)
            .map(|(&m, &(o, _))| (m, o))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Moves the log's pieces the way the heap moved frames (the replayer's Migrator).
    pub(super) fn apply_moves(&mut self, moves: RecordMoves) {
        for (owner, from, to) in moves.0.into_inner() {
            let Some((&m, &(o, serial))) = self.pieces.range(..=from.mfn.0).next_back() else {
                self.violation(format!("the heap moved {} that the log does not hold", from.mfn));
                continue;
            };
            if m + (1u64 << o) < from.mfn.0 + from.frames() {
                self.violation(format!("the heap moved {}+{} beyond a piece the log holds", from.mfn, from.frames()));
                continue;
            }
            let first = self.held.get(&serial).map_or(0, |h| h.first);
            let logical = self
                .moved
                .range((serial, 0, 0)..(serial + 1, 0, 0))
                .rev()
                .find(|(_, &(n, k))| from.mfn.0 >= n && from.mfn.0 - n < 1u64 << k)
                .map_or(from.mfn.0.wrapping_sub(first), |(&(_, p, _), &(n, _))| p + (from.mfn.0 - n));
            self.pieces.insert(to.mfn.0, (to.order, serial));
            self.held_frames += to.frames();
            if let Some(h) = self.held.get_mut(&serial) {
                h.frames += to.frames();
            }
            self.forget(from.mfn.0, from.order, owner);
            self.moved.insert((serial, logical, 64 - to.order), (to.mfn.0, to.order));
        }
    }
}
