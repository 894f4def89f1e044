//! Memory hot-remove on real memory: moving a part of a guest's memory (bytes copied in the
//! arena, the guest's extent list updated), and a wall-clock [`Deadline`] for offlining a
//! range of the Movable zone. Pins use the same move ([`crate::tenants::pins`]).

use crate::pool::Pool;
use scrubheap::{Deadline, Extent, FrameMemory};
use std::time::Instant;

/// A wall-clock deadline for a long heap operation.
#[derive(Copy, Clone, Debug)]
pub struct WallDeadline(pub Instant);

impl Deadline for WallDeadline {
    fn passed(&self) -> bool {
        Instant::now() >= self.0
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
///
/// # Panics
/// Under a [`NoHeapWork`](crate::instrument::NoHeapWork) guard: a copy is heap work and
/// never runs under the run's scheduler lock.
pub fn move_guest_part(pool: &Pool, extents: &mut Vec<Extent>, from: Extent, to: Extent) -> bool {
    crate::instrument::assert_heap_work_allowed("copying guest memory");
    pool.arena().copy(from.mfn, to.mfn, from.frames());
    move_part(extents, from, to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use scrubheap::Mfn;

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
