//! A proptest state machine for zones, pins, offline, online and broken frames, against a
//! per-frame reference model: random sequences of allocations, frees, pins (migrating or
//! in place), unpins, offlines (with and without deadlines, with migrators that refuse),
//! onlines, broken frames and scrubs, misuse included. After every step:
//! `check_invariants()`, conservation, every frame's state against the model, and a
//! refused operation must leave the heap unchanged (an offline that rolled back may only
//! have moved allocations). No frame reaches a new owner holding another's bytes.

mod common;

use common::snapshot;
use proptest::prelude::*;
use scrubheap::*;
use scrubheap::{FreeError, OfflineError};
use std::cell::RefCell;
use std::sync::Arc;

const NODES: u64 = 2;
const FPN: u64 = 128;
const MF: u64 = 64;
const TOTAL: u64 = NODES * FPN;

#[derive(Clone, Debug)]
enum Op {
    Alloc { order: u8, dom: u32, movable: bool, node: u64 },
    Free { frame: u64, order: u8, dom: u32 },
    Pin { frame: u64, order: u8, dom: u32, in_place: bool, refuse: bool },
    Unpin { frame: u64, order: u8, dom: u32 },
    Offline { node: u64, start: u64, len: u64, steps: Option<u64>, refuse_after: Option<usize> },
    Online { node: u64, start: u64, len: u64 },
    Broken { frame: u64 },
    Scrub { node: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..=4, 1u32..=2, any::<bool>(), 0..NODES).prop_map(|(order, dom, movable, node)| Op::Alloc { order, dom, movable, node }),
        4 => (0..TOTAL, 0u8..=4, 1u32..=2).prop_map(|(frame, order, dom)| Op::Free { frame, order, dom }),
        4 => (0..TOTAL, 0u8..=3, 1u32..=2, prop::bool::weighted(0.2), prop::bool::weighted(0.1))
            .prop_map(|(frame, order, dom, in_place, refuse)| Op::Pin { frame, order, dom, in_place, refuse }),
        2 => (0..TOTAL, 0u8..=3, 1u32..=2).prop_map(|(frame, order, dom)| Op::Unpin { frame, order, dom }),
        2 => (0..NODES, 0..FPN, 1..=FPN, proptest::option::of(0u64..20), proptest::option::weighted(0.1, 0usize..3))
            .prop_map(|(node, start, len, steps, refuse_after)| Op::Offline { node, start, len, steps, refuse_after }),
        1 => (0..NODES, 0..FPN, 1..=FPN).prop_map(|(node, start, len)| Op::Online { node, start, len }),
        1 => (0..TOTAL).prop_map(|frame| Op::Broken { frame }),
        2 => (0usize..2).prop_map(|node| Op::Scrub { node }),
    ]
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum F {
    Free,
    Held { dom: u32, pins: u32, movable: bool, broken: bool },
    Offline,
    Broken,
}

struct Model {
    f: Vec<F>,
}

impl Model {
    fn zone(m: u64) -> Zone {
        if m % FPN >= MF {
            Zone::Movable
        } else {
            Zone::Normal
        }
    }
    fn range(m: u64, order: u8) -> std::ops::Range<usize> {
        let lo = (m & !((1 << order) - 1)) as usize;
        lo..lo + (1 << order)
    }
    fn held_by(&self, r: std::ops::Range<usize>, dom: u32) -> bool {
        self.f[r].iter().all(|x| matches!(x, F::Held { dom: d, .. } if *d == dom))
    }
    fn pins(&self, r: std::ops::Range<usize>) -> Vec<u32> {
        self.f[r].iter().map(|x| if let F::Held { pins, .. } = x { *pins } else { 0 }).collect()
    }
    /// A frame leaves its owner: free, or broken if it was marked.
    fn leave(&mut self, i: usize) {
        self.f[i] = match self.f[i] {
            F::Held { broken: true, .. } => F::Broken,
            _ => F::Free,
        };
    }
    /// The owner's contents of `from` moved to `to`.
    fn moved(&mut self, from: Extent, to: Extent) -> Result<(), TestCaseError> {
        for i in 0..from.frames() as usize {
            let (a, b) = (from.mfn.0 as usize + i, to.mfn.0 as usize + i);
            prop_assert_eq!(self.f[b], F::Free, "moved into frame {} that was not free", b);
            let F::Held { dom, pins, movable, .. } = self.f[a] else {
                return Err(TestCaseError::fail(format!("moved frame {a} that was not held")));
            };
            self.f[b] = F::Held { dom, pins, movable, broken: false };
            self.leave(a);
        }
        Ok(())
    }
    fn has_free_block(&self, order: u8, zones: &[Zone], nodes: std::ops::Range<u64>) -> bool {
        let size = 1u64 << order;
        nodes.into_iter().any(|n| {
            (n * FPN..(n + 1) * FPN).step_by(size as usize).any(|m| {
                zones.contains(&Model::zone(m)) && self.f[m as usize..(m + size) as usize].iter().all(|&x| x == F::Free)
            })
        })
    }
}

struct Rec<'a> {
    mem: &'a CountingMemory<TestMemory>,
    moves: RefCell<Vec<(DomId, Extent, Extent)>>,
    refuse_after: Option<usize>,
}

impl Migrator for Rec<'_> {
    fn copy(&self, _owner: DomId, from: Extent, to: Extent, offset: u64, frames: u64) -> bool {
        if self.refuse_after.is_some_and(|n| self.moves.borrow().len() >= n) {
            return false;
        }
        self.mem.copy(Mfn(from.mfn.0 + offset), Mfn(to.mfn.0 + offset), frames);
        true
    }
    fn switch(&self, owner: DomId, from: Extent, to: Extent) -> bool {
        self.moves.borrow_mut().push((owner, from, to));
        true
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut cfg = HeapConfig::uniform(NODES as usize, FPN).with_movable_from(MF);
    // Small batches: moves copy, and scrubs zero, several pieces with a point between.
    cfg.scrub_batch = 4;
    let counter = Arc::new(SectionCounter::default());
    let heap = Heap::new(cfg, CountingMemory::new(TestMemory::new(Mfn(0), TOTAL, 64), counter.clone())).unwrap();
    let never = CountingPreempt::new(counter.clone(), false);
    // The range jobs' preempt: it yields after every step, so each is resumed many times.
    let yields = CountingPreempt::new(counter.clone(), true);
    let mem = heap.memory();
    let mut m = Model { f: vec![F::Free; TOTAL as usize] };
    for (step, op) in ops.iter().enumerate() {
        let before = snapshot(&heap, &[1, 2]);
        let rec = |refuse_after| Rec { mem, moves: RefCell::new(Vec::new()), refuse_after };
        let refused = match *op {
            Op::Alloc { order, dom, movable, node } => {
                let mut req = AllocRequest::new(order, DomId(dom)).on(node as usize);
                req.movable = movable;
                match heap.alloc_preemptible(&req, &never).map(|e| e.expect("never yields")) {
                    Ok(e) => {
                        if !movable {
                            prop_assert_eq!(
                                Model::zone(e.mfn.0),
                                Zone::Normal,
                                "unmovable memory from the Movable zone"
                            );
                        }
                        prop_assert!(mem.inner().is_zero(e.mfn, e.frames()), "unscrubbed frames handed over");
                        for i in Model::range(e.mfn.0, order) {
                            prop_assert_eq!(m.f[i], F::Free, "frame {} handed out while not free", i);
                            m.f[i] = F::Held { dom, pins: 0, movable, broken: false };
                        }
                        mem.inner().write(DomId(dom), e.mfn, e.frames());
                        false
                    }
                    Err(e) => {
                        let zones: &[Zone] = if movable { &[Zone::Movable, Zone::Normal] } else { &[Zone::Normal] };
                        prop_assert!(!m.has_free_block(order, zones, 0..NODES), "false {}", e);
                        true
                    }
                }
            }
            Op::Free { frame, order, dom } => {
                let r = Model::range(frame, order);
                let ok = m.held_by(r.clone(), dom) && m.pins(r.clone()).iter().all(|&p| p == 0);
                let mfn = Mfn(r.start as u64);
                let res = or_job(frame % 2 == 1, &heap, (RangeOp::Free, mfn, order, DomId(dom)), &yields, || {
                    heap.free(mfn, order, DomId(dom))
                });
                prop_assert_eq!(res.is_ok(), ok, "free {:?}: {:?}", r, res);
                if ok {
                    r.for_each(|i| m.leave(i));
                }
                !ok
            }
            Op::Pin { frame, order, dom, in_place, refuse } => {
                let r = Model::range(frame, order);
                let mfn = Mfn(r.start as u64);
                let held = m.held_by(r.clone(), dom);
                let in_movable = r.clone().any(|i| Model::zone(i as u64) == Zone::Movable);
                let pinned = m.pins(r.clone()).iter().any(|&p| p > 0);
                let rc = rec(refuse.then_some(0));
                let res = if in_place {
                    let plain = || heap.pin_in_place(mfn, order, DomId(dom)).map(|_| ());
                    or_job(frame % 2 == 1, &heap, (RangeOp::PinInPlace, mfn, order, DomId(dom)), &yields, plain)
                        .map(|_| Extent { mfn, order, node: 0 })
                } else {
                    heap.pin(mfn, order, DomId(dom), &rc, &never)
                };
                let moves = rc.moves.into_inner();
                if !held || (!in_place && in_movable && (pinned || refuse)) {
                    prop_assert!(res.is_err(), "pin {:?} should fail: {:?}", r, res);
                    true
                } else if !in_place && in_movable {
                    match res {
                        Ok(to) => {
                            prop_assert_eq!(moves.len(), 1);
                            prop_assert_eq!(Model::zone(to.mfn.0), Zone::Normal);
                            m.moved(moves[0].1, to)?;
                            for i in Model::range(to.mfn.0, order) {
                                if let F::Held { pins, .. } = &mut m.f[i] {
                                    *pins += 1;
                                }
                            }
                            prop_assert_eq!(mem.inner().foreign_frame(DomId(dom), to.mfn, to.frames()), None);
                            false
                        }
                        Err(e) => {
                            prop_assert!(matches!(e, HeapError::OutOfMemory { .. }), "{}", e);
                            prop_assert!(!m.has_free_block(order, &[Zone::Normal], 0..NODES));
                            true
                        }
                    }
                } else {
                    prop_assert!(res.is_ok(), "pin {:?}: {:?}", r, res);
                    for i in r {
                        if let F::Held { pins, .. } = &mut m.f[i] {
                            *pins += 1;
                        }
                    }
                    false
                }
            }
            Op::Unpin { frame, order, dom } => {
                let r = Model::range(frame, order);
                let ok = m.held_by(r.clone(), dom) && m.pins(r.clone()).iter().all(|&p| p > 0);
                let mfn = Mfn(r.start as u64);
                let res = or_job(frame % 2 == 1, &heap, (RangeOp::Unpin, mfn, order, DomId(dom)), &yields, || {
                    heap.unpin(mfn, order, DomId(dom))
                });
                prop_assert_eq!(res.is_ok(), ok, "unpin {:?}: {:?}", r, res);
                if ok {
                    for i in r {
                        if let F::Held { pins, .. } = &mut m.f[i] {
                            *pins -= 1;
                        }
                    }
                }
                !ok
            }
            Op::Offline { node, start, len, steps, refuse_after } => {
                let first = node * FPN + start;
                let count = len.min(FPN - start);
                let r = first as usize..(first + count) as usize;
                let blocked =
                    m.f[r.clone()].iter().any(|x| matches!(x, F::Held { pins, movable, .. } if *pins > 0 || !*movable));
                let rc = rec(refuse_after);
                let res = match steps {
                    Some(s) => heap.offline(Mfn(first), count, &rc, &StepBudget::new(s), &never),
                    None => heap.offline(Mfn(first), count, &rc, &NoDeadline, &never),
                };
                for (_, from, to) in rc.moves.into_inner() {
                    prop_assert!(
                        from.mfn.0 >= first && from.mfn.0 < first + count,
                        "moved {:?} from outside the range",
                        from
                    );
                    m.moved(from, to)?;
                }
                match res {
                    Ok(done) => {
                        prop_assert!(!blocked);
                        let newly = m.f[r.clone()].iter().filter(|&&x| x == F::Free).count() as u64;
                        prop_assert_eq!(done.frames, newly);
                        for i in r {
                            prop_assert!(
                                matches!(m.f[i], F::Free | F::Offline | F::Broken),
                                "frame {} is {:?}",
                                i,
                                m.f[i]
                            );
                            if m.f[i] == F::Free {
                                m.f[i] = F::Offline;
                            }
                        }
                        false
                    }
                    Err(HeapError::Offline(OfflineError::OfflineBlocked { stop, blockers, .. })) => {
                        prop_assert!(blocked || steps.is_some() || refuse_after.is_some() || !blockers.is_empty());
                        prop_assert!(blockers.len() <= MAX_BLOCKERS);
                        if blocked && stop == OfflineStop::Blocked {
                            prop_assert!(!blockers.is_empty());
                        }
                        // A rollback may have moved allocations; nothing else changed.
                        true
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("offline: {e}"))),
                }
            }
            Op::Online { node, start, len } => {
                let first = node * FPN + start;
                let count = len.min(FPN - start);
                let r = first as usize..(first + count) as usize;
                let ok = m.f[r.clone()].iter().all(|x| matches!(x, F::Offline | F::Broken));
                let res = heap.online(Mfn(first), count, &never);
                prop_assert_eq!(res.is_ok(), ok, "online {:?}: {:?}", r, res);
                if ok {
                    let n = m.f[r.clone()].iter().filter(|&&x| x == F::Offline).count() as u64;
                    prop_assert_eq!(res.unwrap(), n);
                    for i in r {
                        if m.f[i] == F::Offline {
                            m.f[i] = F::Free;
                        }
                    }
                }
                !ok
            }
            Op::Broken { frame } => {
                let i = frame as usize;
                let want = match m.f[i] {
                    F::Free | F::Offline => Broken::Now,
                    F::Broken | F::Held { broken: true, .. } => Broken::Already,
                    F::Held { .. } => Broken::WhenFreed,
                };
                prop_assert_eq!(heap.mark_broken(Mfn(frame)), Ok(want));
                m.f[i] = match m.f[i] {
                    F::Held { dom, pins, movable, .. } => F::Held { dom, pins, movable, broken: true },
                    _ => F::Broken,
                };
                false
            }
            Op::Scrub { node } => {
                heap.scrub_step(node, u64::MAX, &never).unwrap();
                false
            }
        };
        // The operation returned: its last section ends here; none may pass the bound.
        counter.close();
        prop_assert!(
            counter.max() <= heap.section_bound(),
            "step {}: {:?} touched {} frames between two preemption points, bound {}",
            step,
            op,
            counter.max(),
            heap.section_bound()
        );
        counter.reset();
        let moved_on_error = matches!(op, Op::Offline { .. });
        if refused && !moved_on_error {
            prop_assert_eq!(snapshot(&heap, &[1, 2]), before, "step {}: refused {:?} changed the heap", step, op);
        }
        heap.check_invariants().map_err(|e| TestCaseError::fail(format!("step {step} {op:?}: {e}")))?;
        let s = heap.stats();
        prop_assert_eq!(s.total(), TOTAL, "conservation");
        for (i, &x) in m.f.iter().enumerate() {
            let c = heap.chunk_at(Mfn(i as u64)).unwrap();
            let agree = match (x, c.state) {
                (F::Free, ChunkState::Free { .. })
                | (F::Offline, ChunkState::Offline)
                | (F::Broken, ChunkState::Broken) => true,
                (
                    F::Held { dom, pins, movable, .. },
                    ChunkState::Allocated { owner, pins: p, movable: mv, sealed: false },
                ) => owner == DomId(dom) && p == pins && mv == movable,
                _ => false,
            };
            prop_assert!(
                agree,
                "step {} {:?}: frame {} is {:?} in the model, {:?} in the heap",
                step,
                op,
                i,
                x,
                c.state
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn zones_pins_and_offline_match_the_model(ops in prop::collection::vec(op(), 1..120)) {
        run(&ops)?;
    }
}

/// A range operation as a job (`as_job`: every other op of the model), or in one call; a
/// one-call form refused for the range's many chunks (`TooManyChunks`, nothing changed)
/// is done again as a job. Either way its sections are counted like every other.
fn or_job<M: FrameMemory>(
    as_job: bool,
    heap: &Heap<M>,
    (op, mfn, order, dom): (RangeOp, Mfn, u8, DomId),
    yields: &dyn Preempt,
    plain: impl FnOnce() -> Result<(), HeapError>,
) -> Result<(), HeapError> {
    let job = || heap.range_preemptible(op, mfn, order, dom, &NoMigration, yields).map(|_| ());
    if as_job {
        return job();
    }
    match plain() {
        Err(HeapError::Free(FreeError::TooManyChunks { .. })) => job(),
        r => r,
    }
}
