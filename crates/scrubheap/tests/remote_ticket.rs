//! A ticket's owner on another node than its frames (issue 17): it leaves the batches to
//! the frames' node's scrubbers while they make progress, and zeroes across the
//! interconnect itself only when it is the only CPU that can.

use scrubheap::RangeError;
use scrubheap::*;

const FRAMES: u64 = 1 << 12;
const BATCH: u64 = 64;

/// Two nodes, every frame dirty; a 1024-frame allocation on node 1 pending.
fn heap(node1_has_cpus: bool) -> Heap<TestMemory> {
    let mut c = HeapConfig::uniform(2, FRAMES).with_initially_dirty(true);
    c.scrub_batch = BATCH;
    c.nodes[1].has_cpus = node1_has_cpus;
    Heap::new(c, TestMemory::new(Mfn(0), 2 * FRAMES, 8)).unwrap()
}

fn start(h: &Heap<TestMemory>) -> ScrubTicket<'_, TestMemory> {
    match h.alloc_start(&AllocRequest::new(10, DomId(1)).exact(1)).unwrap() {
        AllocStart::Pending(t) => t,
        AllocStart::Ready(_) => panic!("dirty memory gives a ticket"),
    }
}

#[test]
fn a_remote_owner_leaves_its_batches_to_the_nodes_scrubbers() {
    let h = heap(true);
    let mut t = start(&h);
    let helper = || h.scrub_step(1, BATCH, &NeverPreempt).unwrap();
    // First look: nothing zeroed by the owner, the helpers get a chance.
    assert_eq!(t.advance_from(0, &NeverPreempt).unwrap(), None);
    let mut helped = 0;
    let e = loop {
        // One helper batch between two polls of the owner: it keeps waiting.
        helped += helper();
        h.check_invariants().unwrap();
        if let Some(e) = t.advance_from(0, &NeverPreempt).unwrap() {
            break e;
        }
        assert!(helped <= 1024, "the helpers were done and the owner still waits");
    };
    assert_eq!(helped, 1024, "node 1's scrubber zeroed every frame of the ticket");
    assert_eq!(h.in_place_bytes(DomId(1)), 0, "the remote owner zeroed nothing itself");
    assert!(h.memory().is_zero(e.mfn, 1024));
    h.check_invariants().unwrap();
}

#[test]
fn a_remote_owner_scrubs_itself_when_no_helper_comes() {
    let h = heap(true);
    let mut t = start(&h);
    let mut polls = 0;
    let e = loop {
        polls += 1;
        if let Some(e) = t.advance_from(0, &NeverPreempt).unwrap() {
            break e;
        }
        h.check_invariants().unwrap();
        assert!(polls <= 1 + 1024 / BATCH + 1, "one look, then a batch a call");
    };
    // One look, then a batch a call; the last call finds nothing left and finishes.
    assert_eq!(polls, 1 + 1024 / BATCH + 1);
    assert_eq!(h.in_place_bytes(DomId(1)), 1024 * 4096, "the owner was the only CPU that could");
    assert!(h.memory().is_zero(e.mfn, 1024));
    h.check_invariants().unwrap();
}

#[test]
fn an_owner_whose_node_scrubs_the_frames_node_does_it_itself() {
    // Node 1 has no CPUs: node 0's scrubbers serve it, so its owner is as near as they are.
    let h = heap(false);
    assert_eq!(h.served_by(0).unwrap(), &[0, 1]);
    let mut t = start(&h);
    let e = t.advance_from(0, &NeverPreempt).unwrap().expect("scrubbed in one call");
    assert_eq!(h.in_place_bytes(DomId(1)), 1024 * 4096);
    assert!(h.memory().is_zero(e.mfn, 1024));
    h.check_invariants().unwrap();
}

#[test]
fn a_local_owner_and_other_policies_scrub_as_before() {
    let h = heap(true);
    let mut t = start(&h);
    assert!(t.advance_from(1, &NeverPreempt).unwrap().is_some(), "local: no waiting");
    let mut c = HeapConfig::uniform(2, FRAMES).with_initially_dirty(true).with_policy(Policy::Alloc);
    c.scrub_batch = BATCH;
    let h = Heap::new(c, TestMemory::new(Mfn(0), 2 * FRAMES, 8)).unwrap();
    let mut t = start(&h);
    assert!(t.advance_from(0, &NeverPreempt).unwrap().is_some(), "no helpers under `alloc`: no waiting");
}

#[test]
fn advance_from_an_unknown_node_is_refused_and_changes_nothing() {
    let h = heap(true);
    let mut t = start(&h);
    let before = h.stats();
    assert!(matches!(
        t.advance_from(7, &NeverPreempt),
        Err(HeapError::Range(RangeError::NoSuchNode { node: 7, nodes: 2 }))
    ));
    assert_eq!(h.stats(), before);
    assert!(t.advance_from(1, &NeverPreempt).unwrap().is_some());
    h.check_invariants().unwrap();
}
