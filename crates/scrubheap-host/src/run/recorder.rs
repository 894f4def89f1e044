//! The op-log recorder of `scrubheap run --record`: one line per heap operation, in the
//! order the heap saw them, naming frees by allocation and offset so `scrubheap replay`
//! can check them. Every function here is a unit the scheduler calls; none decides what
//! happens to a guest.

use super::config::{RunConfig, RunError, MOVABLE_FRACTION};
use crate::pool::Pool;
use crate::tenants::guest::Guest;
use parking_lot::Mutex;
use scrubheap::{AllocRequest, Mfn, NodePref};
use scrubheap_oplog::{Id, Op};
use std::io::Write;

/// A pool guest, with what the op log needs to name its frees: every allocation it made
/// (`id`, first frame, order, frames still held), the frames ballooned out, and the pages
/// it pinned (`id`, offset).
pub(super) struct HeapGuest {
    pub(super) g: Guest,
    pub(super) allocs: Vec<(Id, Mfn, u8, u64)>,
    pub(super) ballooned: u64,
    pub(super) pinned: Vec<(Id, u64)>,
    /// Parts moved by a pin or the hot-remove: (where they are now, order, where they
    /// were allocated), so the op log can name them by allocation and offset wherever
    /// they went (the replayer follows moves by itself).
    pub(super) moved: Vec<(Mfn, u8, Mfn)>,
}

impl HeapGuest {
    /// The op freeing `[mfn, 2^order)`, a part of one of this guest's allocations: by id
    /// and offset while the part is where it was allocated, by frame once a pin or the
    /// hot-remove has moved it (the replayer follows moves by itself).
    pub(super) fn free_op(&mut self, mfn: Mfn, order: u8) -> Op {
        let mut mfn = mfn;
        for _ in 0..self.moved.len() {
            match self.moved.iter().rev().find(|m| m.0 .0 <= mfn.0 && mfn.0 < m.0 .0 + (1u64 << m.1)) {
                Some(m) => mfn = Mfn(m.2 .0 + (mfn.0 - m.0 .0)),
                None => break,
            }
        }
        // Newest first: an older allocation's range may hold frames this guest gave back
        // and got again in a newer one.
        match self.allocs.iter_mut().rev().find(|a| a.1 .0 <= mfn.0 && mfn.0 < a.1 .0 + (1u64 << a.2)) {
            Some(a) => {
                a.3 -= 1 << order;
                Op::FreePart { id: a.0.clone(), offset: mfn.0 - a.1 .0, order }
            }
            None => Op::FreeMfn { mfn, order, dom: self.g.dom },
        }
    }
}

pub(super) struct OpLog(Mutex<std::io::BufWriter<std::fs::File>>);

impl OpLog {
    /// Writes `op` as one line.
    pub(super) fn line(&self, op: &Op) {
        let _ = writeln!(self.0.lock(), "{op}");
    }

    /// Opens the op log `cfg.record` names, if any, and writes its header (the heap's
    /// shape, for the replayer).
    pub(super) fn create(cfg: &RunConfig, pool: Option<&Pool>) -> Result<Option<OpLog>, RunError> {
        let Some(p) = &cfg.record else { return Ok(None) };
        let f =
            std::fs::File::create(p).map_err(|e| RunError::Io(format!("cannot write op log {}: {e}", p.display())))?;
        let log = OpLog(Mutex::new(std::io::BufWriter::new(f)));
        if let Some(pool) = pool {
            let per = pool.heap().node_range(0).map(|(a, b)| b.0 - a.0).unwrap_or(0);
            let _ = writeln!(log.0.lock(), "# recorded by scrubheap run, policy {}, seed {}", cfg.backend, cfg.seed);
            let mf = (per as f64 * (1.0 - MOVABLE_FRACTION)) as u64;
            let policy = pool.heap().policy();
            log.line(&Op::Heap { nodes: cfg.nodes as u64, frames_per_node: per, movable_from: Some(mf), policy });
        }
        Ok(Some(log))
    }

    /// Ends the log with a full check of the heap, and flushes it.
    pub(super) fn finish(&self) {
        self.line(&Op::Check);
        let _ = self.0.lock().flush();
    }
}

/// Logs an `alloc` line for each of the guest's extents from `from` on, naming them
/// `d<dom><kind><n>`.
pub(super) fn log_allocs(hg: &mut HeapGuest, from: usize, kind: &str, log: &OpLog) {
    let dom = hg.g.dom.0;
    for e in &hg.g.extents[from..] {
        let id = Id::new(format!("d{dom}{kind}{}", hg.allocs.len())).expect("d, digits and a letter make an id");
        let req =
            AllocRequest { node: NodePref::Prefer(e.node), movable: true, ..AllocRequest::new(e.order, hg.g.dom) };
        log.line(&Op::Alloc { id: id.clone(), req });
        hg.allocs.push((id, e.mfn, e.order, e.frames()));
        // Frames moved here once and given back since are this allocation's now.
        let (lo, hi) = (e.mfn.0, e.mfn.0 + e.frames());
        hg.moved.retain(|m| m.0 .0 + (1u64 << m.1) <= lo || hi <= m.0 .0);
    }
}

/// Logs a pool guest's teardown: its unpins, then a free of every allocation it still
/// holds frames of.
pub(super) fn log_destroy(hg: &mut HeapGuest, log: &OpLog) {
    for (id, off) in &hg.pinned {
        log.line(&Op::Pin { id: id.clone(), offset: *off, order: 0, pin: false });
    }
    for a in hg.allocs.iter().filter(|a| a.3 > 0) {
        log.line(&Op::FreeId { id: a.0.clone() });
    }
    hg.allocs.clear();
}

/// Writes `op` to the op log, if the run keeps one.
pub(super) fn log_line(log: Option<&OpLog>, op: &Op) {
    if let Some(log) = log {
        log.line(op);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scrubheap::{DomId, Extent};

    fn id(name: &str) -> Id {
        Id::new(name).unwrap()
    }

    /// The line an op writes.
    fn text(op: Op) -> String {
        op.to_string()
    }

    fn guest() -> HeapGuest {
        let g = Guest { dom: DomId(1), extents: Vec::new(), pins: Vec::new() };
        HeapGuest { g, allocs: vec![(id("d1e0"), Mfn(0), 9, 512)], ballooned: 0, pinned: Vec::new(), moved: Vec::new() }
    }

    #[test]
    fn frees_are_named_by_allocation_and_offset_even_after_a_move() {
        let mut hg = guest();
        assert_eq!(text(hg.free_op(Mfn(8), 3)), "free id=d1e0 offset=8 order=3");
        // Frames [32, 48) moved to [4096, 4112) by the hot-remove: a free of part of the
        // new place names the part of the allocation it came from.
        hg.moved.push((Mfn(4096), 4, Mfn(32)));
        assert_eq!(text(hg.free_op(Mfn(4100), 2)), "free id=d1e0 offset=36 order=2");
        // Moved twice: followed back to where it was allocated.
        hg.moved.push((Mfn(8192), 2, Mfn(4104)));
        assert_eq!(text(hg.free_op(Mfn(8192), 2)), "free id=d1e0 offset=40 order=2");
    }

    #[test]
    fn frames_got_again_belong_to_the_newest_allocation() {
        let mut hg = guest();
        hg.moved.push((Mfn(4096), 4, Mfn(32)));
        // The guest gave [4096, 4112) back and a balloon-in allocation got [4096, 4608).
        hg.g.extents.push(Extent { mfn: Mfn(4096), order: 9, node: 0 });
        let log = OpLog(Mutex::new(std::io::BufWriter::new(tempfile())));
        log_allocs(&mut hg, 0, "b", &log);
        assert!(hg.moved.is_empty());
        assert_eq!(text(hg.free_op(Mfn(4096), 0)), "free id=d1b1 offset=0 order=0");
        // Frames of the old allocation's range that came back in a newer one.
        hg.allocs.push((id("d1b2"), Mfn(0), 3, 8));
        assert_eq!(text(hg.free_op(Mfn(0), 3)), "free id=d1b2 offset=0 order=3");
    }

    fn tempfile() -> std::fs::File {
        let p = std::env::temp_dir().join(format!("scrubheap-oplog-test-{}", std::process::id()));
        std::fs::File::create(p).unwrap()
    }
}
