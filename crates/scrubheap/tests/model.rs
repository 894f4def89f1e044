//! A proptest state machine: random operation sequences, misuse included, run against the
//! heap and a per-frame reference model. After every step: `check_invariants()`,
//! conservation, model agreement; a refused operation must leave the heap unchanged; no
//! frame may reach a new owner holding another owner's bytes. Failures shrink to the
//! smallest sequence. The per-CPU fast path takes part: gets and puts on two CPUs and
//! drains, between every other operation (a refused operation may drain the reserves, so
//! "unchanged" compares owners, pins and free memory with the reserves counted as free).

mod common;

use common::snapshot;
use proptest::prelude::*;
use scrubheap::*;
use scrubheap::{FreeError, RangeError};
use std::collections::BTreeMap;
use std::sync::Arc;

const DOMS: [u32; 3] = [1, 2, 3];

#[derive(Clone, Debug)]
enum Op {
    Alloc { order: u8, dom: u32, node: Option<(usize, bool)>, movable: bool, scrub: bool },
    FreeLive { idx: usize, shrink: u8, sel: u64 },
    FreeRaw { mfn: u64, order: u8, dom: u32 },
    Scrub { node: usize, budget: u64 },
    Claim { dom: u32, node: Option<usize>, frames: u64 },
    Cancel { dom: u32 },
    TicketStart { order: u8, dom: u32 },
    TicketAdvance { idx: usize, yield_every: bool },
    TicketDrop { idx: usize },
    Get { cpu: usize, order: u8, dom: u32, scrub: bool },
    Put { idx: usize, cpu: usize },
    Drain { cpu: Option<usize> },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (prop_oneof![8 => 0u8..=8, 1 => Just(19u8)], 1u32..=3, proptest::option::of((0usize..4, any::<bool>())), any::<bool>(), prop::bool::weighted(0.8))
            .prop_map(|(order, dom, node, movable, scrub)| Op::Alloc { order, dom, node, movable, scrub }),
        5 => (any::<usize>(), 0u8..4, any::<u64>()).prop_map(|(idx, shrink, sel)| Op::FreeLive { idx, shrink, sel }),
        1 => (0u64..700, 0u8..10, 1u32..=3).prop_map(|(mfn, order, dom)| Op::FreeRaw { mfn, order, dom }),
        2 => (0usize..4, 0u64..300).prop_map(|(node, budget)| Op::Scrub { node, budget }),
        1 => (1u32..=3, proptest::option::of(0usize..4), 0u64..300).prop_map(|(dom, node, frames)| Op::Claim { dom, node, frames }),
        1 => (1u32..=3).prop_map(|dom| Op::Cancel { dom }),
        2 => (0u8..=8, 1u32..=3).prop_map(|(order, dom)| Op::TicketStart { order, dom }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(idx, yield_every)| Op::TicketAdvance { idx, yield_every }),
        1 => any::<usize>().prop_map(|idx| Op::TicketDrop { idx }),
        5 => (0usize..3, prop_oneof![6 => Just(0u8), 1 => Just(9u8), 1 => 1u8..4], 1u32..=3, prop::bool::weighted(0.8))
            .prop_map(|(cpu, order, dom, scrub)| Op::Get { cpu, order, dom, scrub }),
        4 => (any::<usize>(), 0usize..3).prop_map(|(idx, cpu)| Op::Put { idx, cpu }),
        1 => proptest::option::of(0usize..3).prop_map(|cpu| Op::Drain { cpu }),
    ]
}

fn config(policy: Policy, dirty: bool) -> HeapConfig {
    let mut c = HeapConfig::uniform(3, 1);
    c.nodes = vec![
        NodeSpec { frames: 300, movable_from: Some(200), has_cpus: true },
        NodeSpec { frames: 256, movable_from: None, has_cpus: true },
        NodeSpec { frames: 100, movable_from: Some(50), has_cpus: false },
    ];
    c.policy = policy;
    c.initially_dirty = dirty;
    // Small batches, so that allocations of orders 4 to 8 go through scrub tickets
    // (an allocation of at most one batch is scrubbed in one go without one).
    c.scrub_batch = 8;
    // Two CPUs with fast-path reserves (CPU 2 in the ops is out of range: refused).
    c.cpus = 2;
    c
}

/// What a refused operation must leave as it was: every chunk held by an owner (the
/// reserves' own chunks left out), allocated, free (the reserves' free frames counted as
/// free, as a refused allocation or claim may drain them) and offline frames, claims.
type Held = (Vec<ChunkInfo>, [u64; 4], Vec<(u32, Vec<Claim>)>);

fn held(s: &common::Snapshot) -> Held {
    let chunks = s
        .chunks
        .iter()
        .filter(|c| match c.state {
            ChunkState::Free { .. } => false,
            ChunkState::Allocated { owner, .. } => owner != RESERVE_OWNER,
            _ => true,
        })
        .copied()
        .collect();
    let st = &s.stats;
    (chunks, [st.allocated, st.free_clean + st.free_dirty + st.reserved, st.offline, st.claimed], s.claims.clone())
}

/// What a ticket retired of its owner's claims: (node part, global part, claims epoch).
type Retired = (u64, u64, u64);

struct Model {
    owner: Vec<Option<u32>>,
    /// Frames reserved by a pending ticket: owned, but not yet the owner's to free.
    reserved: Vec<bool>,
    /// (base, frames, movable_from) per node.
    nodes: Vec<(u64, u64, u64)>,
    live: Vec<(u32, Extent)>,
    claims: BTreeMap<u32, (u64, Vec<u64>)>,
    /// Per domain, how many times its claims were set or cancelled: a dropped ticket
    /// restores what it retired only to the set it retired it from.
    epoch: BTreeMap<u32, u64>,
}

impl Model {
    fn new(c: &HeapConfig) -> Self {
        let mut base = 0;
        let nodes = c
            .nodes
            .iter()
            .map(|n| {
                let r = (base, n.frames, base + n.movable_from.unwrap_or(n.frames));
                base += n.frames;
                r
            })
            .collect();
        Model {
            owner: vec![None; base as usize],
            reserved: vec![false; base as usize],
            nodes,
            live: Vec::new(),
            claims: BTreeMap::new(),
            epoch: BTreeMap::new(),
        }
    }

    fn held_by(&self, dom: u32, mfn: u64, order: u8) -> bool {
        let end = mfn + (1 << order);
        end <= self.owner.len() as u64
            && (mfn..end).all(|f| self.owner[f as usize] == Some(dom) && !self.reserved[f as usize])
    }

    /// Whether a fully free aligned block of 2^order frames exists on `node` in a zone the
    /// request may use.
    fn has_free_block(&self, node: usize, order: u8, movable: bool) -> bool {
        let (base, frames, mf) = self.nodes[node];
        let size = 1u64 << order;
        let zones: Vec<(u64, u64)> = if movable { vec![(base, mf), (mf, base + frames)] } else { vec![(base, mf)] };
        zones.iter().any(|&(lo, hi)| {
            let mut m = lo.div_ceil(size) * size;
            while m + size <= hi {
                if (m..m + size).all(|f| self.owner[f as usize].is_none()) {
                    return true;
                }
                m += size;
            }
            false
        })
    }

    /// Retires `frames` of `dom`'s claims on `node`; returns (node part, global part, epoch).
    fn retire(&mut self, dom: u32, node: usize, frames: u64) -> Retired {
        let epoch = self.epoch.get(&dom).copied().unwrap_or(0);
        let Some((g, nodes)) = self.claims.get_mut(&dom) else { return (0, 0, epoch) };
        let a = nodes[node].min(frames);
        nodes[node] -= a;
        let b = (*g).min(frames - a);
        *g -= b;
        if *g == 0 && nodes.iter().all(|&x| x == 0) {
            self.claims.remove(&dom);
        }
        (a, b, epoch)
    }

    /// A dropped ticket gives back what it retired, if `dom`'s claims were not set since.
    fn restore(&mut self, dom: u32, node: usize, (a, b, epoch): Retired) {
        if a + b == 0 || self.epoch.get(&dom).copied().unwrap_or(0) != epoch {
            return;
        }
        let e = self.claims.entry(dom).or_insert((0, vec![0; 3]));
        e.1[node] += a;
        e.0 += b;
    }

    fn claims_of(&self, dom: u32) -> Vec<Claim> {
        let Some((g, nodes)) = self.claims.get(&dom) else { return vec![] };
        let mut v = vec![];
        if *g > 0 {
            v.push(Claim { target: ClaimTarget::Global, frames: *g });
        }
        for (i, &f) in nodes.iter().enumerate().filter(|(_, &f)| f > 0) {
            v.push(Claim { target: ClaimTarget::Node(i), frames: f });
        }
        v
    }
}

/// Splits `e` around the aligned part `p`, returning the pieces of `e` outside `p`.
fn remainder(e: Extent, p: (u64, u8)) -> Vec<Extent> {
    let mut out = vec![];
    let mut cur = e;
    while cur.order > p.1 {
        let half = cur.order - 1;
        let lo = Extent { mfn: cur.mfn, order: half, node: cur.node };
        let hi = Extent { mfn: Mfn(cur.mfn.0 + (1 << half)), order: half, node: cur.node };
        if p.0 >= hi.mfn.0 {
            out.push(lo);
            cur = hi;
        } else {
            out.push(hi);
            cur = lo;
        }
    }
    out
}

fn run(policy: Policy, dirty: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    let cfg = config(policy, dirty);
    let total = cfg.total_frames();
    let counter = Arc::new(SectionCounter::default());
    let heap =
        Heap::new(cfg.clone(), CountingMemory::new(TestMemory::new(Mfn(0), total, 64), counter.clone())).unwrap();
    let never = CountingPreempt::new(counter.clone(), false);
    let always = CountingPreempt::new(counter.clone(), true);
    // The baselines scrub whole chunks in place (xen) or on free (sync): no bound there.
    let bounded = !policy.whole_chunk_in_place() && !policy.scrubs_on_free();
    let mut m = Model::new(&cfg);
    let mut tickets: Vec<(u32, ScrubTicket<'_, CountingMemory<TestMemory>>, Retired)> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        let before = snapshot(&heap, &DOMS);
        let refused = match op.clone() {
            Op::Alloc { order, dom, node, movable, scrub } => {
                let mut req = AllocRequest::new(order, DomId(dom));
                req.movable = movable;
                req.scrub = scrub;
                if let Some((n, exact)) = node {
                    req = if exact { req.exact(n) } else { req.on(n) };
                }
                match heap.alloc(&req) {
                    Ok(e) => {
                        prop_assert!(order <= MAX_ORDER && node.is_none_or(|(n, _)| n < 3));
                        prop_assert_eq!(e.order, order);
                        prop_assert_eq!(e.mfn.0 % (1 << order), 0);
                        if let Some((n, true)) = node {
                            prop_assert_eq!(e.node, n);
                        }
                        let (base, frames, mf) = m.nodes[e.node];
                        prop_assert!(e.mfn.0 >= base && e.mfn.0 + e.frames() <= base + frames);
                        if !movable {
                            prop_assert!(e.mfn.0 + e.frames() <= mf, "unmovable request got Movable memory");
                        }
                        for f in e.mfn.0..e.mfn.0 + e.frames() {
                            prop_assert_eq!(m.owner[f as usize], None, "frame {} handed out twice", f);
                            m.owner[f as usize] = Some(dom);
                        }
                        if scrub {
                            prop_assert!(
                                heap.memory().inner().is_zero(e.mfn, e.frames()),
                                "unscrubbed frames handed over"
                            );
                        }
                        heap.memory().inner().write(DomId(dom), e.mfn, e.frames());
                        m.retire(dom, e.node, e.frames());
                        m.live.push((dom, e));
                        false
                    }
                    Err(HeapError::OutOfMemory { .. }) => {
                        if m.claims.is_empty() {
                            let nodes: Vec<usize> = match node {
                                Some((n, true)) => vec![n],
                                _ => (0..3).collect(),
                            };
                            let capped = policy == Policy::XenCap2m && scrub && order > 9;
                            for n in nodes {
                                prop_assert!(
                                    capped || !m.has_free_block(n, order, movable),
                                    "false out-of-memory: node {} has a free aligned block of order {}",
                                    n,
                                    order
                                );
                            }
                        }
                        true
                    }
                    Err(HeapError::NeedsScrubTicket { frames, batch, .. }) => {
                        prop_assert!(!policy.whole_chunk_in_place() && scrub && frames > batch && frames == 1 << order);
                        true
                    }
                    Err(e) => {
                        prop_assert!(order > MAX_ORDER || node.is_some_and(|(n, _)| n >= 3), "unexpected {}", e);
                        true
                    }
                }
            }
            Op::FreeLive { idx, shrink, sel } => {
                if m.live.is_empty() {
                    continue;
                }
                let i = idx % m.live.len();
                let (dom, e) = m.live[i];
                let d = shrink.min(e.order);
                let po = e.order - d;
                let pm = e.mfn.0 + ((sel % (1 << d)) << po);
                free_or_job(&heap, Mfn(pm), po, DomId(dom), &never)
                    .map_err(|e| TestCaseError::fail(format!("free of a held part: {e}")))?;
                for f in pm..pm + (1 << po) {
                    m.owner[f as usize] = None;
                }
                m.live.swap_remove(i);
                for r in remainder(e, (pm, po)) {
                    m.live.push((dom, r));
                }
                false
            }
            Op::FreeRaw { mfn, order, dom } => {
                let valid = mfn % (1 << order) == 0
                    && mfn + (1 << order) <= total
                    && m.nodes.iter().any(|&(b, f, _)| mfn >= b && mfn + (1 << order) <= b + f)
                    && m.held_by(dom, mfn, order);
                let r = free_or_job(&heap, Mfn(mfn), order, DomId(dom), &never);
                prop_assert_eq!(r.is_ok(), valid, "free {} order {} dom {}: {:?}", mfn, order, dom, r);
                if valid {
                    for f in mfn..mfn + (1 << order) {
                        m.owner[f as usize] = None;
                    }
                    let mut next = vec![];
                    for (d, e) in m.live.drain(..) {
                        let inside = e.mfn.0 >= mfn && e.mfn.0 + e.frames() <= mfn + (1 << order);
                        let contains = e.mfn.0 <= mfn && mfn + (1 << order) <= e.mfn.0 + e.frames();
                        if inside {
                        } else if contains {
                            next.extend(remainder(e, (mfn, order)).into_iter().map(|r| (d, r)));
                        } else {
                            next.push((d, e));
                        }
                    }
                    m.live = next;
                }
                !valid
            }
            Op::Scrub { node, budget } => match heap.scrub_step(node, budget, &never) {
                Ok(n) => {
                    prop_assert!(node < 3 && n <= budget);
                    false
                }
                Err(_) => {
                    prop_assert!(node >= 3);
                    true
                }
            },
            Op::Claim { dom, node, frames } => {
                let mut set = m.claims_of(dom);
                let target = node.map_or(ClaimTarget::Global, ClaimTarget::Node);
                set.retain(|c| c.target != target);
                set.push(Claim { target, frames });
                match heap.claim_set(DomId(dom), &set) {
                    Ok(()) => {
                        *m.epoch.entry(dom).or_default() += 1;
                        let e = m.claims.entry(dom).or_insert((0, vec![0; 3]));
                        match target {
                            ClaimTarget::Global => e.0 = frames,
                            ClaimTarget::Node(n) => e.1[n] = frames,
                        }
                        if e.0 == 0 && e.1.iter().all(|&x| x == 0) {
                            m.claims.remove(&dom);
                        }
                        false
                    }
                    Err(_) => true,
                }
            }
            Op::Cancel { dom } => {
                heap.claim_cancel(DomId(dom));
                *m.epoch.entry(dom).or_default() += 1;
                m.claims.remove(&dom);
                false
            }
            Op::TicketStart { order, dom } => match heap.alloc_start(&AllocRequest::new(order, DomId(dom))) {
                Ok(start) => {
                    let e = match &start {
                        AllocStart::Ready(e) => *e,
                        AllocStart::Pending(t) => t.extent().expect("sequential: no handback to wait for"),
                    };
                    for f in e.mfn.0..e.mfn.0 + e.frames() {
                        prop_assert_eq!(m.owner[f as usize], None, "frame {} reserved twice", f);
                        m.owner[f as usize] = Some(dom);
                    }
                    let retired = m.retire(dom, e.node, e.frames());
                    match start {
                        AllocStart::Ready(e) => {
                            prop_assert!(heap.memory().inner().is_zero(e.mfn, e.frames()));
                            heap.memory().inner().write(DomId(dom), e.mfn, e.frames());
                            m.live.push((dom, e));
                        }
                        AllocStart::Pending(t) => {
                            m.reserved[e.mfn.0 as usize..(e.mfn.0 + e.frames()) as usize].fill(true);
                            let held = matches!(heap.chunk_at(e.mfn).unwrap().state, ChunkState::Pending { owner } if owner == DomId(dom));
                            prop_assert!(held, "reserved frames must be Pending");
                            tickets.push((dom, t, retired));
                        }
                    }
                    false
                }
                Err(HeapError::OutOfMemory { .. }) => true,
                Err(e) => return Err(TestCaseError::fail(format!("ticket start: {e}"))),
            },
            Op::TicketAdvance { idx, yield_every } => {
                if tickets.is_empty() {
                    continue;
                }
                let i = idx % tickets.len();
                let r = if yield_every { tickets[i].1.advance(&always) } else { tickets[i].1.advance(&never) };
                match r.map_err(|e| TestCaseError::fail(format!("advance: {e}")))? {
                    Some(e) => {
                        let (dom, _, _) = tickets.swap_remove(i);
                        m.reserved[e.mfn.0 as usize..(e.mfn.0 + e.frames()) as usize].fill(false);
                        prop_assert!(
                            heap.memory().inner().is_zero(e.mfn, e.frames()),
                            "ticket handed over dirty frames"
                        );
                        prop_assert_eq!(heap.memory().inner().foreign_frame(DomId(dom), e.mfn, e.frames()), None);
                        heap.memory().inner().write(DomId(dom), e.mfn, e.frames());
                        m.live.push((dom, e));
                    }
                    None => prop_assert!(yield_every, "a sequential ticket finishes when never preempted"),
                }
                false
            }
            Op::TicketDrop { idx } => {
                if tickets.is_empty() {
                    continue;
                }
                let (dom, t, retired) = tickets.swap_remove(idx % tickets.len());
                let e = t.extent().unwrap();
                drop(t);
                m.restore(dom, e.node, retired);
                for f in e.mfn.0..e.mfn.0 + e.frames() {
                    m.owner[f as usize] = None;
                    m.reserved[f as usize] = false;
                }
                false
            }
            Op::Get { cpu, order, dom, scrub } => {
                let mut req = AllocRequest::new(order, DomId(dom));
                req.scrub = scrub;
                match heap.get(cpu, &req) {
                    Ok(e) => {
                        prop_assert!(cpu < 2, "CPU {} is out of range", cpu);
                        prop_assert_eq!((e.order, e.mfn.0 % (1 << order)), (order, 0));
                        let (_, _, mf) = m.nodes[e.node];
                        prop_assert!(e.mfn.0 + e.frames() <= mf, "an unmovable get got Movable memory");
                        for f in e.mfn.0..e.mfn.0 + e.frames() {
                            prop_assert_eq!(m.owner[f as usize], None, "frame {} handed out twice", f);
                            m.owner[f as usize] = Some(dom);
                        }
                        if scrub {
                            prop_assert!(heap.memory().is_zero(e.mfn, e.frames()), "get handed over unscrubbed frames");
                        }
                        heap.memory().inner().write(DomId(dom), e.mfn, e.frames());
                        m.retire(dom, e.node, e.frames());
                        m.live.push((dom, e));
                        false
                    }
                    Err(HeapError::Range(RangeError::NoSuchCpu { .. })) => {
                        prop_assert!(cpu >= 2);
                        true
                    }
                    Err(HeapError::OutOfMemory { .. }) => true,
                    Err(e) => return Err(TestCaseError::fail(format!("get: {e}"))),
                }
            }
            Op::Put { idx, cpu } => {
                if m.live.is_empty() {
                    continue;
                }
                let i = idx % m.live.len();
                let (dom, e) = m.live[i];
                match heap.put(cpu, e.mfn, e.order, DomId(dom)) {
                    Ok(()) => {
                        prop_assert!(cpu < 2);
                        for f in e.mfn.0..e.mfn.0 + e.frames() {
                            m.owner[f as usize] = None;
                        }
                        m.live.swap_remove(i);
                        false
                    }
                    Err(HeapError::Range(RangeError::NoSuchCpu { .. })) if cpu >= 2 => true,
                    Err(e) => return Err(TestCaseError::fail(format!("put of a held extent: {e}"))),
                }
            }
            Op::Drain { cpu } => {
                let r = heap.drain(cpu);
                prop_assert_eq!(r.is_ok(), cpu.is_none_or(|c| c < 2));
                if cpu.is_none() {
                    let s = heap.stats();
                    prop_assert_eq!((s.reserved, s.parked_dirty), (0, 0), "a drain of every CPU leaves no reserve");
                }
                r.is_err()
            }
        };
        // The operation returned: its last section ends here.
        let last = counter.close();
        if bounded {
            prop_assert!(
                counter.max() <= heap.section_bound(),
                "step {}: {:?} touched {} frames between two preemption points (last section {}), bound {}",
                step,
                op,
                counter.max(),
                last,
                heap.section_bound()
            );
        }
        if refused {
            let after = snapshot(&heap, &DOMS);
            prop_assert_eq!(held(&after), held(&before), "step {}: refused {:?} changed the heap", step, op);
        }
        heap.check_invariants().map_err(|e| TestCaseError::fail(format!("step {step} {op:?}: {e}")))?;
        let s = heap.stats();
        prop_assert_eq!(s.total(), total, "conservation");
        prop_assert!(s.parked_dirty <= s.reserved, "parked dirt is part of the reserve: {:?}", s);
        prop_assert_eq!(s.allocated, m.owner.iter().filter(|o| o.is_some()).count() as u64);
        for d in DOMS {
            prop_assert_eq!(heap.claims_of(DomId(d)), m.claims_of(d), "claims of dom{}", d);
        }
    }
    for (dom, e) in &m.live {
        let c = heap.chunk_at(e.mfn).unwrap();
        let held = matches!(c.state, ChunkState::Allocated { owner, .. } if owner == DomId(*dom));
        prop_assert!(held, "{:?} should be held by dom{}", e, dom);
    }
    Ok(())
}

fn policy() -> impl Strategy<Value = Policy> {
    prop::sample::select(Policy::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn heap_matches_the_model(policy in policy(), dirty in any::<bool>(), ops in prop::collection::vec(op(), 1..150)) {
        run(policy, dirty, &ops)?;
    }
}

/// [`Heap::free`], or for a range held as more chunks than one call walks
/// (`TooManyChunks`, nothing changed) the same free as a job, its sections counted.
fn free_or_job<M: FrameMemory>(
    heap: &Heap<M>,
    mfn: Mfn,
    order: u8,
    dom: DomId,
    p: &dyn Preempt,
) -> Result<(), HeapError> {
    match heap.free(mfn, order, dom) {
        Err(HeapError::Free(FreeError::TooManyChunks { .. })) => {
            heap.range_preemptible(RangeOp::Free, mfn, order, dom, &NoMigration, p).map(|_| ())
        }
        r => r,
    }
}
