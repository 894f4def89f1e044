//! Long-term pins on real memory: a guest pins a few pages as a device doing DMA would; a
//! page in the Movable zone is first moved to Normal memory by the host's [`Migrator`],
//! which copies the frames in the arena and updates the guest's extent list.

use crate::arena::Arena;
use crate::instrument::{drive, PreemptRecorder};
use crate::pool::{retry_busy, Pool};
use crate::tenants::guest::Guest;
use crate::tenants::hot_remove::{copy_piece, move_part};
use scrubheap::{DomId, Extent, Heap, HeapError, Mfn, Migrator};
use std::cell::RefCell;

/// A page a guest pinned: which of its extents and where in it, and where the page is
/// now (moved to Normal memory if it was in the Movable zone).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PinnedPage {
    /// Index of the extent (as it was before the pins) the page was in.
    pub extent: usize,
    /// Frame offset in that extent.
    pub offset: u64,
    /// The page where it was.
    pub was: Mfn,
    /// The page where it is, pinned.
    pub at: Extent,
}

impl PinnedPage {
    /// Whether the pin moved the page.
    pub fn moved(&self) -> bool {
        self.at.mfn != self.was
    }
}

/// Copies a guest's frames in the arena and updates its extents, for a guest the caller
/// holds (a pin while it is being built).
struct OwnGuest<'a> {
    pool: &'a Pool,
    extents: RefCell<&'a mut Vec<Extent>>,
}

impl Migrator for OwnGuest<'_> {
    fn copy(&self, _owner: DomId, from: Extent, to: Extent, offset: u64, frames: u64) -> bool {
        copy_piece(self.pool, from, to, offset, frames);
        true
    }
    fn switch(&self, _owner: DomId, from: Extent, to: Extent) -> bool {
        move_part(&mut self.extents.borrow_mut(), from, to)
    }
}

/// A guest's long-term pins, on the pool: the pins layer's operations, kept out of
/// [`Pool`]'s own impl so the pool knows nothing of guests.
pub trait PinOps {
    /// The guest pins `count` single pages, as a device that does DMA into them would
    /// (DPDK, VFIO), one in each of its first `count` extents at an offset drawn from
    /// `seed`. A page in the Movable zone is moved to Normal memory first (its bytes
    /// copied, the guest's extents updated). Returns each page pinned. Each pin is one
    /// section of `rec` (operation `pin`; a move copies one page).
    fn pin_guest_pages(&self, g: &mut Guest, count: usize, seed: u64, rec: &PreemptRecorder) -> Vec<PinnedPage>;
    /// Drops every pin the guest holds (a device detached before teardown); each unpin
    /// is one section of `rec` (operation `unpin`).
    fn unpin_guest(&self, g: &mut Guest, rec: &PreemptRecorder);
}

impl PinOps for Pool {
    fn pin_guest_pages(&self, g: &mut Guest, count: usize, seed: u64, rec: &PreemptRecorder) -> Vec<PinnedPage> {
        let mut pinned = Vec::new();
        let originals: Vec<Extent> = g.extents.iter().take(count).copied().collect();
        for (j, e) in originals.into_iter().enumerate() {
            let off = splitmix(seed ^ (g.dom.0 as u64) << 20 ^ j as u64) % e.frames();
            let page = Mfn(e.mfn.0 + off);
            let dom = g.dom;
            let before = self.heap().chunk_at(page).map(|c| c.zone);
            let mig = OwnGuest { pool: self, extents: RefCell::new(&mut g.extents) };
            let pinned_at = retry_busy(|| {
                rec.enter_op("pin");
                let r = self.heap().pin_start(page, 0, dom).and_then(|mut job| drive(|| job.advance(&mig, rec)));
                rec.exit();
                r
            });
            match pinned_at {
                Ok(at) => {
                    debug_assert!(at.mfn == page || before == Ok(scrubheap::Zone::Movable));
                    g.pins.push(at);
                    pinned.push(PinnedPage { extent: j, offset: off, was: page, at });
                }
                // No Normal memory free to move the page to: the device goes without.
                Err(HeapError::OutOfMemory { .. }) => {}
                Err(e) => panic!("pinning a page the guest holds failed: {e}"),
            }
        }
        pinned
    }

    fn unpin_guest(&self, g: &mut Guest, rec: &PreemptRecorder) {
        unpin_all(self.heap(), g, rec);
    }
}

/// Drops every pin `g` holds on `heap` (a [`Pool`]'s or a
/// [`PoolHandle`](crate::pool::PoolHandle)'s, which tears a guest down after its pool).
pub(crate) fn unpin_all(heap: &Heap<Arena>, g: &mut Guest, rec: &PreemptRecorder) {
    for p in g.pins.drain(..) {
        retry_busy(|| {
            rec.enter_op("unpin");
            let r = heap.unpin(p.mfn, p.order, g.dom);
            rec.exit();
            r
        })
        .expect("a guest unpins what it pinned");
    }
    debug_assert!(g.pins.is_empty());
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
