//! The op-log recorder of `scrubheap run --record`: one line per heap operation, in the
//! order the heap saw them, naming frees by allocation and offset so `scrubheap replay`
//! can check them. Every function here is a unit the scheduler calls; none decides what
//! happens to a guest.

use super::config::{RunConfig, RunError, MOVABLE_FRACTION};
use crate::pool::Pool;
use crate::tenants::guest::Guest;
use parking_lot::Mutex;
use scrubheap::Mfn;
use std::io::Write;

/// A pool guest, with what the op log needs to name its frees: every allocation it made
/// (`id`, first frame, order, frames still held), the frames ballooned out, and the pages
/// it pinned (`id`, offset).
pub(super) struct HeapGuest {
    pub(super) g: Guest,
    pub(super) allocs: Vec<(String, Mfn, u8, u64)>,
    pub(super) ballooned: u64,
    pub(super) pinned: Vec<(String, u64)>,
    /// Parts moved by a pin or the hot-remove: (where they are now, order, where they
    /// were allocated), so the op log can name them by allocation and offset wherever
    /// they went (the replayer follows moves by itself).
    pub(super) moved: Vec<(Mfn, u8, Mfn)>,
}

impl HeapGuest {
    /// The op-log line freeing `[mfn, 2^order)`, a part of one of this guest's allocations:
    /// by id and offset while the part is where it was allocated, by frame once a pin or
    /// the hot-remove has moved it.
    pub(super) fn free_line(&mut self, mfn: Mfn, order: u8) -> String {
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
                format!("free id={} offset={} order={order}", a.0, mfn.0 - a.1 .0)
            }
            None => format!("free mfn={mfn} order={order} dom={}", self.g.dom.0),
        }
    }
}

pub(super) struct OpLog(Mutex<std::io::BufWriter<std::fs::File>>);

impl OpLog {
    pub(super) fn line(&self, s: &str) {
        let _ = writeln!(self.0.lock(), "{s}");
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
            log.line(&format!("# recorded by scrubheap run, policy {}, seed {}", cfg.backend, cfg.seed));
            let mf = (per as f64 * (1.0 - MOVABLE_FRACTION)) as u64;
            log.line(&format!(
                "heap nodes={} frames_per_node={per} movable_from={mf} policy={}",
                cfg.nodes, cfg.backend
            ));
        }
        Ok(Some(log))
    }

    /// Ends the log with a full check of the heap, and flushes it.
    pub(super) fn finish(&self) {
        self.line("check");
        let _ = self.0.lock().flush();
    }
}

/// Logs an `alloc` line for each of the guest's extents from `from` on, naming them
/// `d<dom><kind><n>`.
pub(super) fn log_allocs(hg: &mut HeapGuest, from: usize, kind: &str, log: &OpLog) {
    let dom = hg.g.dom.0;
    for e in &hg.g.extents[from..] {
        let id = format!("d{dom}{kind}{}", hg.allocs.len());
        log.line(&format!("alloc id={id} dom={dom} order={} node={} movable", e.order, e.node));
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
        log.line(&format!("unpin id={id} offset={off} order=0"));
    }
    for a in hg.allocs.iter().filter(|a| a.3 > 0) {
        log.line(&format!("free id={}", a.0));
    }
    hg.allocs.clear();
}

pub(super) fn log_line(log: Option<&OpLog>, l: &str) {
    if let Some(log) = log {
        log.line(l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scrubheap::{DomId, Extent};

    fn guest() -> HeapGuest {
        let g = Guest { dom: DomId(1), extents: Vec::new(), pins: Vec::new() };
        HeapGuest {
            g,
            allocs: vec![("d1e0".into(), Mfn(0), 9, 512)],
            ballooned: 0,
            pinned: Vec::new(),
            moved: Vec::new(),
        }
    }

    #[test]
    fn frees_are_named_by_allocation_and_offset_even_after_a_move() {
        let mut hg = guest();
        assert_eq!(hg.free_line(Mfn(8), 3), "free id=d1e0 offset=8 order=3");
        // Frames [32, 48) moved to [4096, 4112) by the hot-remove: a free of part of the
        // new place names the part of the allocation it came from.
        hg.moved.push((Mfn(4096), 4, Mfn(32)));
        assert_eq!(hg.free_line(Mfn(4100), 2), "free id=d1e0 offset=36 order=2");
        // Moved twice: followed back to where it was allocated.
        hg.moved.push((Mfn(8192), 2, Mfn(4104)));
        assert_eq!(hg.free_line(Mfn(8192), 2), "free id=d1e0 offset=40 order=2");
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
        assert_eq!(hg.free_line(Mfn(4096), 0), "free id=d1b1 offset=0 order=0");
        // Frames of the old allocation's range that came back in a newer one.
        hg.allocs.push(("d1b2".into(), Mfn(0), 3, 8));
        assert_eq!(hg.free_line(Mfn(0), 3), "free id=d1b2 offset=0 order=3");
    }

    fn tempfile() -> std::fs::File {
        let p = std::env::temp_dir().join(format!("scrubheap-oplog-test-{}", std::process::id()));
        std::fs::File::create(p).unwrap()
    }
}
