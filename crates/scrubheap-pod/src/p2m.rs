//! A populate-on-demand guest's physical-to-machine map, kept compact: one slot per
//! 2 MiB of guest frames, split into 512 entries of 4 KiB only where the guest's memory
//! is mixed. A large, sparse guest costs 16 bytes per 2 MiB until it splinters.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

/// Frames in a superpage (2 MiB at 4 KiB frames): the order of a p2m slot.
pub(crate) const SP_ORDER: u8 = 9;
/// 2^[`SP_ORDER`].
pub(crate) const SP: u64 = 1 << SP_ORDER;

/// One 4 KiB entry of a split slot.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum E4 {
    /// Not backed and not populatable (ballooned out, or beyond the guest's maximum).
    Invalid,
    /// Populated from the cache on first touch.
    Pod,
    /// Backed by this machine frame.
    Ram(u64),
}

/// One 2 MiB slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// 512 invalid entries.
    Invalid,
    /// One 2 MiB PoD entry.
    Pod,
    /// One 2 MiB mapping of the aligned machine frames starting here.
    Ram(u64),
    /// 512 entries of 4 KiB.
    Split(Box<[E4]>),
}

impl Slot {
    /// A split slot whose entries all are `e`, except those at or beyond `valid`, which
    /// are invalid.
    pub(crate) fn split_of(e: E4, valid: u64) -> Slot {
        let mut v = vec![e; SP as usize];
        for x in v.iter_mut().skip(valid as usize) {
            *x = E4::Invalid;
        }
        Slot::Split(v.into_boxed_slice())
    }

    /// The slot in its most compact form: a split slot whose entries are all invalid, or
    /// all PoD, becomes one 2 MiB entry again (so a later touch may populate 2 MiB).
    pub(crate) fn normalize(&mut self) {
        if let Slot::Split(e) = self {
            if e.iter().all(|&x| x == E4::Invalid) {
                *self = Slot::Invalid;
            } else if e.iter().all(|&x| x == E4::Pod) {
                *self = Slot::Pod;
            }
        }
    }
}

/// The map itself.
pub(crate) struct P2m {
    pub slots: Vec<Slot>,
}

impl P2m {
    /// `max_pages` PoD entries (the last slot split if `max_pages` is not a multiple of 512).
    pub(crate) fn new(max_pages: u64) -> P2m {
        let full = max_pages / SP;
        let rest = max_pages % SP;
        let mut slots: Vec<Slot> = Vec::with_capacity(full as usize + 1);
        slots.resize(full as usize, Slot::Pod);
        if rest > 0 {
            slots.push(Slot::split_of(E4::Pod, rest));
        }
        P2m { slots }
    }

    /// What backs `gfn` (which must be inside the map).
    pub(crate) fn get(&self, gfn: u64) -> E4 {
        match &self.slots[(gfn / SP) as usize] {
            Slot::Invalid => E4::Invalid,
            Slot::Pod => E4::Pod,
            Slot::Ram(m) => E4::Ram(m + gfn % SP),
            Slot::Split(e) => e[(gfn % SP) as usize],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_last_slot_is_split_with_invalid_tail() {
        let p = P2m::new(2 * SP + 3);
        assert_eq!(p.slots.len(), 3);
        assert_eq!(p.get(2 * SP + 2), E4::Pod);
        assert_eq!(p.get(2 * SP + 3), E4::Invalid);
        assert_eq!(p.get(SP + 7), E4::Pod);
    }

    #[test]
    fn normalize_merges_uniform_split_slots_only() {
        let mut s = Slot::split_of(E4::Pod, SP);
        s.normalize();
        assert_eq!(s, Slot::Pod);
        let mut s = Slot::split_of(E4::Pod, 5);
        s.normalize();
        assert!(matches!(s, Slot::Split(_)));
        let mut s = Slot::split_of(E4::Invalid, SP);
        s.normalize();
        assert_eq!(s, Slot::Invalid);
        let mut s = Slot::split_of(E4::Ram(0), SP);
        s.normalize();
        assert!(matches!(s, Slot::Split(_)));
    }
}
