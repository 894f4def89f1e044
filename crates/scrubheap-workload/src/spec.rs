//! One guest of a workload ([`GuestSpec`]), the rounding of its size, and the peak of
//! concurrent memory: the bottom layer every other module of the crate builds on.

/// The smallest guest: sizes are rounded up to this.
pub const MIN_GUEST_BYTES: u64 = 4 << 20;
/// Guest sizes are multiples of this.
pub const PAGE_BYTES: u64 = 4 << 10;

/// One guest of a workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuestSpec {
    /// Its index in [`crate::Workload::guests`].
    pub id: u64,
    /// Run seconds from the start of the run.
    pub arrival_s: f64,
    /// Run seconds it lives; it may outlive the run.
    pub lifetime_s: f64,
    /// Memory, a multiple of 4 KiB and at least 4 MiB.
    pub memory_bytes: u64,
    /// Its tenant: guests the trace says came from one tenant share one (Azure V1 decoded
    /// batches, packing `tenantId`); otherwise each guest is its own tenant (`tenant == id`).
    pub tenant: u64,
}

/// A guest's size on the host from its scaled size: up to 4 KiB, at least 4 MiB.
pub(crate) fn guest_bytes(scaled: f64) -> u64 {
    let pages = (scaled / PAGE_BYTES as f64).ceil();
    // `as` saturates: a NaN or negative size becomes 0 pages, then the minimum.
    (pages as u64).saturating_mul(PAGE_BYTES).max(MIN_GUEST_BYTES)
}

/// Peak of concurrent memory: arrivals before departures at equal times, so guests that
/// meet are counted together (the runtime may create before it destroys).
pub(crate) fn peak(events: &[(f64, bool, usize)], bytes: &[u64]) -> u64 {
    let (mut now, mut max) = (0u64, 0u64);
    for &(_, arrive, i) in events {
        if arrive {
            now = now.saturating_add(bytes[i]);
            max = max.max(now);
        } else {
            // Saturating: a guest built with a negative lifetime leaves before it arrives.
            now = now.saturating_sub(bytes[i]);
        }
    }
    max
}

/// Arrival and departure events of guests (arrival, lifetime), ordered for [`peak`].
pub(crate) fn events(spans: impl Iterator<Item = (f64, f64)>) -> Vec<(f64, bool, usize)> {
    let mut ev: Vec<(f64, bool, usize)> = Vec::new();
    for (i, (a, l)) in spans.enumerate() {
        ev.push((a, true, i));
        ev.push((a + l, false, i));
    }
    ev.sort_by(|x, y| x.0.total_cmp(&y.0).then(y.1.cmp(&x.1)));
    ev
}

/// Peak of concurrent memory of guests given as (arrival, lifetime, bytes), in any one unit
/// of time: a guest is alive over `[arrival, arrival + lifetime]` and guests that meet (one
/// arrives when another leaves) count together.
///
/// ```
/// let spans = [(0.0, 1.0, 10), (1.0, 1.0, 20), (3.0, 1.0, 5)];
/// assert_eq!(scrubheap_workload::peak_concurrent_bytes(&spans), 30);
/// ```
pub fn peak_concurrent_bytes(guests: &[(f64, f64, u64)]) -> u64 {
    let ev = events(guests.iter().map(|g| (g.0, g.1)));
    let bytes: Vec<u64> = guests.iter().map(|g| g.2).collect();
    peak(&ev, &bytes)
}
