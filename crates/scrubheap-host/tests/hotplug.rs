//! Pins and hot-remove on real memory: pinned pages and offlined ranges move the guest's
//! bytes and its extent list, and nothing leaks to the next tenant.

use scrubheap::{DomId, Extent, MetadataMigrator, NeverPreempt, NoDeadline, Zone};
use scrubheap_host::hot_remove::{copy_piece, move_part, PieceMigrator};
use scrubheap_host::instrument::PreemptRecorder;
use scrubheap_host::pool::{Pool, PoolConfig};
use scrubheap_host::{GuestOps, PinOps};
use std::cell::RefCell;
use std::sync::atomic::Ordering::Relaxed;

#[test]
fn pins_and_an_offline_move_guest_bytes_and_leak_nothing() {
    let p = Pool::new(PoolConfig {
        memory_bytes: 64 << 20,
        nodes: 2,
        verify: true,
        hugetlb: false,
        scrub_priority: scrubheap_host::ScrubPriority::Normal,
        movable_fraction: Some(0.5),
        ..PoolConfig::default()
    })
    .unwrap();
    let heap = p.heap();
    let rec = PreemptRecorder::new(0);
    let (mut g, _) = p.create_guest(DomId(1), 8 << 20, &rec).unwrap();
    p.run_guest(&g);
    let frames: u64 = g.extents.iter().map(Extent::frames).sum();
    assert!(g.extents.iter().all(|e| heap.chunk_at(e.mfn).unwrap().zone == Zone::Movable), "movable guest memory");
    let words = |e: &Extent| p.arena().count_nonzero_words(e.mfn, e.frames());
    let full = |e: &Extent| e.frames() * 512;
    let pinned = p.pin_guest_pages(&mut g, 4, 7, &rec);
    let moved = pinned.iter().filter(|q| q.moved()).count();
    assert_eq!(pinned.len(), 4.min(g.extents.len()));
    assert_eq!(moved, pinned.len(), "every pinned page was in the Movable zone");
    for pin in &g.pins {
        assert_eq!(heap.chunk_at(pin.mfn).unwrap().zone, Zone::Normal);
        assert_eq!(words(pin), full(pin), "the pinned page's bytes moved with it");
    }
    assert_eq!(g.extents.iter().map(Extent::frames).sum::<u64>(), frames);
    // Offline the guest's node's Movable zone: its memory moves, its extents follow.
    let node = g.extents[0].node;
    let (a, b) = heap.node_range(node).unwrap();
    let first = scrubheap::Mfn(a.0 + (b.0 - a.0) / 2);
    let count = b.0 - first.0;
    let extents = RefCell::new(std::mem::take(&mut g.extents));
    let mig = PieceMigrator {
        copy: |_: DomId, from: Extent, to: Extent, offset: u64, frames: u64| {
            copy_piece(&p, from, to, offset, frames);
            true
        },
        switch: |_: DomId, from: Extent, to: Extent| move_part(&mut extents.borrow_mut(), from, to),
    };
    let done = heap.offline(first, count, &mig, &NoDeadline, &NeverPreempt).unwrap();
    assert!(done.migrated_chunks > 0);
    g.extents = extents.into_inner();
    assert_eq!(g.extents.iter().map(Extent::frames).sum::<u64>(), frames);
    for e in &g.extents {
        assert!(e.mfn.0 + e.frames() <= first.0 || e.mfn.0 >= first.0 + count, "{e:?} is still in the range");
        assert_eq!(words(e), full(e), "the guest's bytes moved with its frames");
    }
    heap.check_invariants().unwrap();
    // Pinned pages block nothing here (they are in Normal memory), but an offline of the
    // Normal zone meets them and is refused without a change.
    let pinned_at = g.pins[0];
    assert!(heap.offline(pinned_at.mfn, 1, &MetadataMigrator, &NoDeadline, &NeverPreempt).is_err());
    assert_eq!(heap.online(first, count, &NeverPreempt).unwrap(), count);
    p.destroy_guest(g, &rec);
    assert_eq!(heap.stats().allocated, 0);
    // The next tenant gets scrubbed memory only (verify mode checks every word).
    let (g2, _) = p.create_guest(DomId(2), 24 << 20, &rec).unwrap();
    p.destroy_guest(g2, &rec);
    assert_eq!(p.leaks.nonzero_pages.load(Relaxed), 0);
    heap.check_invariants().unwrap();
    p.stop();
}
