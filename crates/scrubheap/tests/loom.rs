//! loom models of the heap's handoffs (run with `RUSTFLAGS="--cfg loom"`): every
//! interleaving of the scrub/abort handoff, of helpers and the owner on one ticket, of a
//! free merging beside a scrub in progress, of a dropped ticket giving its claim back, and
//! of the claims gate's unlocked path against a claim being set or retired, and of the
//! per-CPU fast path (gets and puts against a drain; a put parking a block against a
//! refill and a scrubber).
//! Each checks invariants, conservation and that every frame handed over is zero.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use scrubheap::*;

fn heap(frames: u64, dirty: bool) -> Arc<Heap<TestMemory>> {
    let mut c = HeapConfig::uniform(1, frames).with_initially_dirty(dirty);
    c.scrub_batch = 1;
    Arc::new(Heap::new(c, TestMemory::new(Mfn(0), frames, 8)).unwrap())
}

fn settle(h: &Heap<TestMemory>, frames: u64) {
    h.check_invariants().unwrap();
    assert_eq!(h.stats().total(), frames);
}

#[test]
fn scrubber_hands_a_chunk_back_to_an_allocator() {
    loom::model(|| {
        let h = heap(4, true);
        let s = h.clone();
        let scrubber = thread::spawn(move || s.scrub_step(0, u64::MAX, &NeverPreempt).unwrap());
        // Four dirty frames are more than one batch: the allocation goes through a ticket.
        let e = h.alloc_preemptible(&AllocRequest::new(2, DomId(1)), &NeverPreempt).unwrap().unwrap();
        assert!(h.memory().is_zero(e.mfn, 4), "frames handed over unscrubbed");
        scrubber.join().unwrap();
        settle(&h, 4);
        assert_eq!(h.stats().allocated, 4);
        assert_eq!(h.memory().zeroed_frames(), 4, "progress is kept across the handback: no frame zeroed twice");
    });
}

#[test]
fn two_helpers_and_the_owner_share_one_ticket() {
    loom::model(|| {
        let h = heap(4, true);
        let AllocStart::Pending(mut t) = h.alloc_start(&AllocRequest::new(2, DomId(1))).unwrap() else {
            panic!("dirty memory gives a ticket")
        };
        let helpers: Vec<_> = (0..2)
            .map(|_| {
                let s = h.clone();
                thread::spawn(move || s.scrub_step(0, u64::MAX, &NeverPreempt).unwrap())
            })
            .collect();
        let e = loop {
            if let Some(e) = t.advance(&NeverPreempt).unwrap() {
                break e;
            }
            thread::yield_now();
        };
        for j in helpers {
            j.join().unwrap();
        }
        assert!(h.memory().is_zero(e.mfn, 4));
        assert_eq!(h.memory().zeroed_frames(), 4, "each frame zeroed exactly once");
        settle(&h, 4);
    });
}

#[test]
fn a_dropped_ticket_returns_its_frames_after_the_helpers_batch() {
    loom::model(|| {
        let h = heap(2, true);
        let AllocStart::Pending(t) = h.alloc_start(&AllocRequest::new(1, DomId(1))).unwrap() else {
            panic!("dirty memory gives a ticket")
        };
        let s = h.clone();
        let helper = thread::spawn(move || s.scrub_step(0, u64::MAX, &NeverPreempt).unwrap());
        drop(t);
        helper.join().unwrap();
        settle(&h, 2);
        assert_eq!(h.stats().allocated, 0);
    });
}

#[test]
fn a_dropped_ticket_restores_its_claim_whoever_finishes_the_last_batch() {
    loom::model(|| {
        let h = heap(2, true);
        let claim = [Claim { target: ClaimTarget::Node(0), frames: 2 }];
        h.claim_set(DomId(1), &claim).unwrap();
        let AllocStart::Pending(t) = h.alloc_start(&AllocRequest::new(1, DomId(1))).unwrap() else {
            panic!("dirty memory gives a ticket")
        };
        assert_eq!(h.claims_of(DomId(1)), vec![], "the ticket retired the whole claim");
        let s = h.clone();
        let helper = thread::spawn(move || s.scrub_step(0, u64::MAX, &NeverPreempt).unwrap());
        drop(t);
        helper.join().unwrap();
        settle(&h, 2);
        assert_eq!(h.claims_of(DomId(1)), claim.to_vec(), "the dropped ticket gave its claim back");
        assert_eq!(h.stats().allocated, 0);
    });
}

/// A claim being set and an allocation by a domain without claims (the gate's unlocked
/// path) on `nodes` nodes of `frames` each: never both succeed when together they need
/// more than the heap has.
fn claim_against_an_unclaimed_allocation(nodes: usize, frames: u64, target: ClaimTarget) {
    loom::model(move || {
        let h = Arc::new(Heap::new(HeapConfig::uniform(nodes, frames), NullMemory).unwrap());
        let s = h.clone();
        let claimer = thread::spawn(move || s.claim_set(DomId(2), &[Claim { target, frames: 3 }]).is_ok());
        let got = h.alloc(&AllocRequest::new(1, DomId(1)).exact(0)).is_ok();
        let claimed = claimer.join().unwrap();
        assert!(!(got && claimed), "an allocation ate into a claim set at the same time");
        assert!(got || claimed, "one of them fits alone");
        h.check_invariants().unwrap();
    });
}

#[test]
fn a_node_claim_set_during_an_unclaimed_allocation_is_never_eaten_into() {
    // Node 0 alone is short: the whole heap has room.
    claim_against_an_unclaimed_allocation(2, 4, ClaimTarget::Node(0));
}

#[test]
fn a_global_claim_set_during_an_unclaimed_allocation_is_never_eaten_into() {
    claim_against_an_unclaimed_allocation(2, 2, ClaimTarget::Global);
}

#[test]
fn a_claimant_and_a_domain_without_claims_racing_leave_the_claim_whole() {
    loom::model(|| {
        let h = Arc::new(Heap::new(HeapConfig::uniform(1, 4), NullMemory).unwrap());
        h.claim_set(DomId(1), &[Claim { target: ClaimTarget::Node(0), frames: 2 }]).unwrap();
        let s = h.clone();
        let claimant = thread::spawn(move || s.alloc(&AllocRequest::new(1, DomId(1))).is_ok());
        let mut others = 0;
        while others < 3 && h.alloc(&AllocRequest::new(0, DomId(2))).is_ok() {
            others += 1;
        }
        assert!(claimant.join().unwrap(), "the claimant got its claimed frames");
        assert_eq!(others, 2, "the other domain got exactly the unclaimed frames");
        assert_eq!(h.claims_of(DomId(1)), vec![]);
        h.check_invariants().unwrap();
    });
}

#[test]
fn a_free_beside_a_scrub_in_progress_still_merges() {
    loom::model(|| {
        let h = heap(4, false);
        let a = h.alloc(&AllocRequest::new(1, DomId(1))).unwrap();
        let b = h.alloc(&AllocRequest::new(1, DomId(1))).unwrap();
        h.free(a.mfn, 1, DomId(1)).unwrap();
        let s = h.clone();
        let scrubber = thread::spawn(move || s.scrub_step(0, u64::MAX, &NeverPreempt).unwrap());
        h.free(b.mfn, 1, DomId(1)).unwrap();
        scrubber.join().unwrap();
        settle(&h, 4);
        let c = h.chunk_at(Mfn(0)).unwrap();
        assert_eq!(c.extent.order, 2, "the buddies merged once the scrub handed its chunk back");
        assert!(matches!(c.state, ChunkState::Free { .. }));
    });
}

#[test]
fn two_scrubbers_share_one_chunk_and_hand_it_to_an_allocator() {
    loom::model(|| {
        let h = heap(4, true);
        let scrubbers: Vec<_> = (0..2)
            .map(|_| {
                let s = h.clone();
                thread::spawn(move || s.scrub_step(0, u64::MAX, &NeverPreempt).unwrap())
            })
            .collect();
        // Four dirty frames are more than one batch: through a ticket, never asked to yield.
        let e = h.alloc_preemptible(&AllocRequest::new(2, DomId(1)), &NeverPreempt).unwrap().unwrap();
        assert!(h.memory().is_zero(e.mfn, 4), "frames handed over unscrubbed");
        for j in scrubbers {
            j.join().unwrap();
        }
        settle(&h, 4);
        assert_eq!(h.stats().allocated, 4);
        let s = h.stats().scrubbed;
        assert_eq!(s.background + s.in_place, 4 * 4096, "scrubbers (alone, sharing or helping) and the owner");
        assert_eq!(h.memory().zeroed_frames(), 4, "each frame zeroed once, by a scrubber or in place");
    });
}

/// Two CPUs get and put on the per-CPU fast path (CPU 1 puts back a frame CPU 0 got, into
/// CPU 0's block) while a third thread drains every reserve: a frame a CPU holds is its
/// owner's (never handed out twice), none is lost, the reserves' counts agree with the blocks, a loan settled by the drain
/// is freed the ordinary way.
#[test]
fn two_cpus_get_and_put_while_a_drain_races() {
    loom::model(|| {
        let c = HeapConfig::uniform(1, 128).with_cpus(2);
        let h = Arc::new(Heap::new(c, NullMemory).unwrap());
        let first = h.get(0, &AllocRequest::new(0, DomId(1))).unwrap();
        let workers: Vec<_> = (0..2usize)
            .map(|cpu| {
                let s = h.clone();
                thread::spawn(move || {
                    let me = DomId(2 + cpu as u32);
                    let e = s.get(cpu, &AllocRequest::new(0, me)).unwrap();
                    let held = s.chunk_at(e.mfn).unwrap().state;
                    assert!(
                        matches!(held, ChunkState::Allocated { owner, .. } if owner == me),
                        "a frame this CPU holds shows {held:?}: handed out twice?"
                    );
                    if cpu == 1 {
                        s.put(1, first.mfn, 0, DomId(1)).unwrap();
                    }
                    s.put(cpu, e.mfn, 0, me).unwrap();
                })
            })
            .collect();
        h.drain(None).unwrap();
        for w in workers {
            w.join().unwrap();
        }
        h.check_invariants().unwrap();
        h.drain(None).unwrap();
        let s = h.stats();
        assert_eq!((s.allocated, s.reserved, s.total()), (0, 0, 128));
        h.check_invariants().unwrap();
    });
}

/// A put frees the last loaned chunk of a detached block (which parks it) while another
/// CPU refills (taking a parked block if there is one, else a chunk of the node) and a
/// scrubber returns parked blocks to the free lists: the block ends up in exactly one
/// place, nothing is lost, and the counts agree with the records.
#[test]
fn a_put_parks_a_block_while_a_refill_and_a_scrubber_race_for_it() {
    // The set-up (64 gets and 63 puts, one thread) makes a long path before the race.
    let mut model = loom::model::Builder::new();
    model.max_branches = 20_000;
    model.check(|| {
        let c = HeapConfig::uniform(1, 128).with_cpus(2);
        let h = Arc::new(Heap::new(c, NullMemory).unwrap());
        let got: Vec<Extent> = (0..64).map(|_| h.get(0, &AllocRequest::new(0, DomId(1))).unwrap()).collect();
        for e in &got[1..] {
            h.put(0, e.mfn, 0, DomId(1)).unwrap();
        }
        let last = got[0].mfn;
        let s = h.clone();
        let putter = thread::spawn(move || s.put(0, last, 0, DomId(1)).unwrap());
        let s = h.clone();
        let getter = thread::spawn(move || {
            let e = s.get(1, &AllocRequest::new(0, DomId(2)).noscrub()).unwrap();
            let held = s.chunk_at(e.mfn).unwrap().state;
            assert!(matches!(held, ChunkState::Allocated { owner: DomId(2), .. }), "{held:?}");
            e
        });
        h.scrub_step(0, 0, &NeverPreempt).unwrap();
        putter.join().unwrap();
        let e = getter.join().unwrap();
        h.check_invariants().unwrap();
        // Whichever won, the first block's 64 dirty frames are counted once: parked, back
        // on the free lists, or the getter's current block (then neither).
        let st = h.stats();
        assert!(st.parked_dirty == 0 || st.parked_dirty == 64, "{st:?}");
        assert!(st.parked_dirty <= st.reserved && st.total() == 128, "{st:?}");
        h.put(1, e.mfn, 0, DomId(2)).unwrap();
        h.drain(None).unwrap();
        let st = h.stats();
        assert_eq!((st.allocated, st.reserved, st.parked_dirty, st.total()), (0, 0, 0, 128));
        h.check_invariants().unwrap();
    });
}
