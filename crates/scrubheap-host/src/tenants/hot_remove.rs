//! Memory hot-remove on real memory: moving a part of a guest's memory (bytes copied in the
//! arena, the guest's extent list updated), and a wall-clock [`Deadline`] for offlining a
//! range of the Movable zone. Pins use the same move ([`crate::tenants::pins`]).

use crate::pool::Pool;
use scrubheap::{Deadline, DomId, Extent, FrameMemory, Mfn, Migrator};
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

/// One piece of a migration on real memory: copies the `frames` frames at frame `offset`
/// of `from` to the same offset of `to` in the arena (the heap asks for at most one batch
/// at a time, with a preemption point between two pieces).
///
/// # Panics
/// Under a [`NoHeapWork`](crate::instrument::NoHeapWork) guard: a copy is heap work and
/// never runs under the run's scheduler lock.
pub fn copy_piece(pool: &Pool, from: Extent, to: Extent, offset: u64, frames: u64) {
    assert!(offset + frames <= from.frames() && from.order == to.order, "a piece lies inside its move");
    crate::instrument::assert_heap_work_allowed("copying guest memory");
    pool.arena().copy(Mfn(from.mfn.0 + offset), Mfn(to.mfn.0 + offset), frames);
}

/// A [`Migrator`] made of two functions: `copy(owner, from, to, offset, frames)` copies
/// one piece ([`copy_piece`] on real memory), `switch(owner, from, to)` points the
/// owner's extents at `to` once every piece is copied ([`move_part`]). See [`Migrator`]
/// for when the heap calls each and why the switch comes last.
pub struct PieceMigrator<C, S> {
    /// Copies one piece; false refuses the move.
    pub copy: C,
    /// Switches the owner's mapping; false refuses the move.
    pub switch: S,
}

impl<C, S> Migrator for PieceMigrator<C, S>
where
    C: Fn(DomId, Extent, Extent, u64, u64) -> bool,
    S: Fn(DomId, Extent, Extent) -> bool,
{
    fn copy(&self, owner: DomId, from: Extent, to: Extent, offset: u64, frames: u64) -> bool {
        (self.copy)(owner, from, to, offset, frames)
    }
    fn switch(&self, owner: DomId, from: Extent, to: Extent) -> bool {
        (self.switch)(owner, from, to)
    }
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
