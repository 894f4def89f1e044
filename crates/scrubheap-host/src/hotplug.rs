//! Long-term pins and memory hot-remove on real memory: the host's [`Migrator`] copies a
//! guest's frames in the arena and updates the guest's extent list (its frame list);
//! guests pin a few pages as a device doing DMA would; a hot-remove offlines a range of
//! the Movable zone under a wall-clock [`Deadline`].

use crate::guest::Guest;
use crate::pool::{Pool, PoolHandle};
use scrubheap::{Deadline, DomId, Extent, FrameMemory, HeapError, Mfn, Migrator};
use std::cell::RefCell;
use std::time::Instant;

/// A wall-clock deadline for a long heap operation.
#[derive(Copy, Clone, Debug)]
pub struct WallDeadline(pub Instant);

impl Deadline for WallDeadline {
    fn passed(&self) -> bool {
        Instant::now() >= self.0
    }
}

/// How many times a free or unpin is retried while the heap says its frames are being
/// moved (a move takes one copy of at most one extent).
const BUSY_RETRIES: u32 = 1 << 20;

/// Retries `f` while it fails with `HeapError::Busy`, yielding between tries.
pub fn retry_busy<T>(mut f: impl FnMut() -> Result<T, HeapError>) -> Result<T, HeapError> {
    let mut tries = 0;
    loop {
        match f() {
            Err(HeapError::Busy { .. }) if tries < BUSY_RETRIES => {
                tries += 1;
                std::thread::yield_now();
            }
            r => return r,
        }
    }
}

/// Replaces the part `from` of one of `extents` by `to`: the extent holding `from` is
/// split into its buddies around it, as the guest's frame list is when a part moves.
/// Returns false if no extent holds `from`.
pub fn move_part(extents: &mut Vec<Extent>, from: Extent, to: Extent) -> bool {
    let Some(i) = extents.iter().position(|e| e.mfn.0 <= from.mfn.0 && from.mfn.0 < e.mfn.0 + e.frames()) else {
        return false;
    };
    let e = extents.swap_remove(i);
    if e.order < from.order {
        extents.push(e);
        return false;
    }
    extents.extend(e.split_around(from));
    extents.push(to);
    true
}

/// What a migration does on real memory: copies the bytes of `from` to `to` in the arena
/// and replaces `from` by `to` in the guest's extents ([`move_part`]). False, after the
/// copy, if no extent holds `from`.
pub fn move_guest_part(pool: &Pool, extents: &mut Vec<Extent>, from: Extent, to: Extent) -> bool {
    pool.arena().copy(from.mfn, to.mfn, from.frames());
    move_part(extents, from, to)
}

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
    fn migrate(&self, _owner: DomId, from: Extent, to: Extent) -> bool {
        move_guest_part(self.pool, &mut self.extents.borrow_mut(), from, to)
    }
}

impl Pool {
    /// The guest pins `count` single pages, as a device that does DMA into them would
    /// (DPDK, VFIO), one in each of its first `count` extents at an offset drawn from
    /// `seed`. A page in the Movable zone is moved to Normal memory first (its bytes
    /// copied, the guest's extents updated). Returns each page pinned.
    pub fn pin_guest_pages(&self, g: &mut Guest, count: usize, seed: u64) -> Vec<PinnedPage> {
        let mut pinned = Vec::new();
        let originals: Vec<Extent> = g.extents.iter().take(count).copied().collect();
        for (j, e) in originals.into_iter().enumerate() {
            let off = splitmix(seed ^ (g.dom.0 as u64) << 20 ^ j as u64) % e.frames();
            let page = Mfn(e.mfn.0 + off);
            let dom = g.dom;
            let before = self.heap().chunk_at(page).map(|c| c.zone);
            let mig = OwnGuest { pool: self, extents: RefCell::new(&mut g.extents) };
            match retry_busy(|| self.heap().pin(page, 0, dom, &mig)) {
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

    /// Drops every pin the guest holds (a device detached before teardown).
    pub fn unpin_guest(&self, g: &mut Guest) {
        self.core.unpin_guest(g);
    }
}

impl PoolHandle {
    /// Drops every pin the guest holds (a device detached before teardown).
    pub fn unpin_guest(&self, g: &mut Guest) {
        for p in g.pins.drain(..) {
            retry_busy(|| self.heap().unpin(p.mfn, p.order, g.dom)).expect("a guest unpins what it pinned");
        }
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn move_part_splits_around_the_moved_part() {
        let e = Extent { mfn: Mfn(512), order: 9, node: 0 };
        let mut v = vec![e];
        let to = Extent { mfn: Mfn(7), order: 0, node: 1 };
        assert!(move_part(&mut v, Extent { mfn: Mfn(515), order: 0, node: 0 }, to));
        assert_eq!(v.iter().map(|e| e.frames()).sum::<u64>(), 512);
        assert!(v.contains(&to));
        assert!(!v.iter().any(|x| x.mfn == Mfn(515)));
        assert!(!move_part(&mut v, Extent { mfn: Mfn(9999), order: 0, node: 0 }, to));
    }
}
