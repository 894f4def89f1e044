//! Guest-physical layout and KVM memory slots.
//!
//! A guest's RAM is contiguous guest-physical memory from 0. Its extents are laid out
//! largest first (1 GiB, then 2 MiB, then 4 KiB), each size in host-address order: every
//! extent then starts at a guest-physical address aligned to its own size, so the host's
//! huge pages can back KVM's huge second-level mappings, and neighbours in the arena land
//! next to each other. One slot covers each run of extents whose host addresses are also
//! consecutive ([`coalesce`]).

use scrubheap::Extent;
use scrubheap_host::Arena;

/// One KVM memory slot: guest-physical `[gpa, gpa + bytes)` is host `[host, host + bytes)`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// First guest-physical byte.
    pub gpa: u64,
    /// Host address of that byte.
    pub host: usize,
    /// Length in bytes (a multiple of 4 KiB).
    pub bytes: u64,
}

/// The extents in guest-physical order: larger orders first, each order by frame number.
pub fn guest_order(extents: &[Extent]) -> Vec<Extent> {
    let mut v = extents.to_vec();
    v.sort_by_key(|e| (std::cmp::Reverse(e.order), e.mfn));
    v
}

/// Lays host ranges `(address, bytes)` out one after another from guest-physical 0 and
/// merges each range into the slot before it when its host address follows on.
///
/// ```
/// use scrubheap_vmm::slots::{coalesce, Slot};
/// let s = coalesce([(0x10_0000, 0x1000), (0x10_1000, 0x2000), (0x40_0000, 0x1000)]);
/// assert_eq!(s, [Slot { gpa: 0, host: 0x10_0000, bytes: 0x3000 }, Slot { gpa: 0x3000, host: 0x40_0000, bytes: 0x1000 }]);
/// ```
pub fn coalesce(ranges: impl IntoIterator<Item = (usize, u64)>) -> Vec<Slot> {
    let ranges: Vec<(usize, u64)> = ranges.into_iter().collect();
    let total = ranges.iter().map(|r| r.1).sum();
    place(&[(0, total)], ranges)
}

/// Lays host ranges `(address, bytes)` out one after another into the guest-physical
/// RAM ranges `ram` (`(base, bytes)`, sorted and disjoint, together exactly as long as
/// the host ranges): a host range that reaches the end of a RAM range goes on at the
/// start of the next one. A piece merges into the slot before it when both its
/// guest-physical and its host address follow on.
///
/// ```
/// use scrubheap_vmm::slots::{place, Slot};
/// // 12 KiB of RAM below a hole at 0x3000, the rest from 0x10_0000.
/// let s = place(&[(0, 0x3000), (0x10_0000, 0x2000)], [(0x40_0000, 0x4000), (0x80_0000, 0x1000)]);
/// assert_eq!(
///     s,
///     [
///         Slot { gpa: 0, host: 0x40_0000, bytes: 0x3000 },
///         Slot { gpa: 0x10_0000, host: 0x40_3000, bytes: 0x1000 },
///         Slot { gpa: 0x10_1000, host: 0x80_0000, bytes: 0x1000 },
///     ]
/// );
/// ```
pub fn place(ram: &[(u64, u64)], ranges: impl IntoIterator<Item = (usize, u64)>) -> Vec<Slot> {
    let mut slots: Vec<Slot> = Vec::new();
    let mut ram = ram.iter().copied();
    let (mut gpa, mut room) = (0, 0);
    for (mut host, mut bytes) in ranges {
        while bytes > 0 {
            while room == 0 {
                (gpa, room) = ram.next().expect("the RAM ranges hold every host range");
            }
            let n = bytes.min(room);
            match slots.last_mut() {
                Some(s) if s.gpa + s.bytes == gpa && s.host as u64 + s.bytes == host as u64 => s.bytes += n,
                _ => slots.push(Slot { gpa, host, bytes: n }),
            }
            (gpa, room, bytes) = (gpa + n, room - n, bytes - n);
            host += n as usize;
        }
    }
    assert!(room == 0 && ram.all(|r| r.1 == 0), "the RAM ranges are as long as the host ranges");
    slots
}

/// The host ranges `(address, bytes)` of a guest's extents in `arena`, in [`guest_order`].
pub fn host_ranges(arena: &Arena, extents: &[Extent]) -> Vec<(usize, u64)> {
    let fs = arena.frame_size() as u64;
    guest_order(extents).iter().map(|e| (arena.host_ptr(e.mfn, e.frames()) as usize, e.frames() * fs)).collect()
}

/// The slots of a guest whose extents are in `arena` (in [`guest_order`], from
/// guest-physical 0).
pub fn pool_slots(arena: &Arena, extents: &[Extent]) -> Vec<Slot> {
    coalesce(host_ranges(arena, extents))
}

#[cfg(test)]
mod tests {
    use super::*;
    use scrubheap::Mfn;

    fn ext(mfn: u64, order: u8) -> Extent {
        Extent { mfn: Mfn(mfn), order, node: 0 }
    }

    #[test]
    fn largest_first_then_by_frame() {
        let v = guest_order(&[ext(7, 0), ext(512, 9), ext(3, 0), ext(0, 9), ext(1 << 18, 18)]);
        assert_eq!(v, [ext(1 << 18, 18), ext(0, 9), ext(512, 9), ext(3, 0), ext(7, 0)]);
    }

    #[test]
    fn neighbours_merge_and_gaps_split() {
        let s = coalesce([(0x20_0000, 0x20_0000), (0x40_0000, 0x20_0000), (0x1000, 0x1000), (0x3000, 0x1000)]);
        assert_eq!(
            s,
            [
                Slot { gpa: 0, host: 0x20_0000, bytes: 0x40_0000 },
                Slot { gpa: 0x40_0000, host: 0x1000, bytes: 0x1000 },
                Slot { gpa: 0x40_1000, host: 0x3000, bytes: 0x1000 },
            ]
        );
        assert!(coalesce([]).is_empty());
    }
}
