//! A generator of random, valid-ish op logs for `scrubheap replay --generate`.
//!
//! It replays each line as it writes it, so it knows which allocations exist and where
//! their pieces are: most lines are meant to succeed (allocations of orders 0 to 18, weighted
//! to small ones; whole and partial frees; scrubs; claims), a few are deliberate misuse
//! (double frees, wrong owners, unaligned or oversized frees, unknown and duplicate ids),
//! a few pin, unpin, offline, online and broken lines (some of which fail: pins left
//! pinned block frees and offlines), and a `check` line comes every `check_every`
//! operations. Every line is an [`Op`] written with its `Display`. Under memory pressure it
//! frees more than it allocates, so the heap stays busy but not full. The same
//! configuration and seed give the same file, byte for byte.

use crate::op::{Id, Op};
use crate::replay::{Allocation, Replayer};
use crate::report::{Outcome, ReplayReport};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use scrubheap::{AllocRequest, ClaimTarget, DomId, Mfn, NodePref, Policy, MAX_ORDER};
use std::io::Write;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenConfig {
    /// Operations (lines that are not comments), the `heap` line included.
    pub ops: u64,
    /// Seed of the ChaCha8 generator.
    pub seed: u64,
    /// Nodes of the heap.
    pub nodes: u64,
    /// Frames per node.
    pub frames_per_node: u64,
    /// Where each node's Movable zone begins, if it has one.
    pub movable_from: Option<u64>,
    /// A `check` line every this many operations (0: none but the end's).
    pub check_every: u64,
    /// The replay's frame limit.
    pub max_frames: u64,
}

/// Why [`generate`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// The replayer refuses the configured heap (too large, no nodes, ...).
    #[error("the heap `{heap}` is refused: {message}")]
    HeapRefused {
        /// The `heap` line.
        heap: String,
        /// Why.
        message: String,
    },
    /// Writing the log failed.
    #[error("writing the log: {0}")]
    Io(#[from] std::io::Error),
}

/// Relative weight of each order 0..=18 in allocations: mostly 4 KiB and 2 MiB pages,
/// now and then up to 1 GiB.
const ORDER_WEIGHTS: [u32; MAX_ORDER as usize + 1] =
    [300, 60, 60, 40, 40, 20, 20, 10, 10, 80, 5, 5, 5, 3, 3, 2, 2, 1, 1];

/// Domains the log allocates for.
const DOMS: u32 = 16;

/// An id the generator names (`a17`, `gone3`, ...): letters and digits, always valid.
fn id(name: String) -> Id {
    Id::new(name).expect("the generator's ids are letters and digits")
}

struct Gen<'a> {
    cfg: &'a GenConfig,
    rng: ChaCha8Rng,
    replayer: Replayer,
    /// Ids allocated that may still hold frames (pruned lazily).
    live: Vec<String>,
    next_id: u64,
    /// The last piece freed by mfn, to free again (a double free).
    last_freed: Option<(u64, u8, u32)>,
    /// The last range offlined, to online again.
    last_offline: Option<(u64, u64)>,
}

impl Gen<'_> {
    fn heap_op(&self) -> Op {
        let c = self.cfg;
        Op::Heap {
            nodes: c.nodes,
            frames_per_node: c.frames_per_node,
            movable_from: c.movable_from,
            policy: Policy::default(),
        }
    }

    fn order(&mut self) -> u8 {
        let total: u32 = ORDER_WEIGHTS.iter().sum();
        let mut x = self.rng.random_range(0..total);
        for (o, &w) in ORDER_WEIGHTS.iter().enumerate() {
            if x < w {
                return o as u8;
            }
            x -= w;
        }
        0
    }

    fn dom(&mut self) -> u32 {
        self.rng.random_range(1..=DOMS)
    }

    fn node(&mut self) -> u64 {
        self.rng.random_range(0..self.cfg.nodes)
    }

    /// A random live allocation, and its id.
    fn pick(&mut self) -> Option<(String, Allocation)> {
        for _ in 0..8 {
            if self.live.is_empty() {
                return None;
            }
            let i = self.rng.random_range(0..self.live.len());
            match self.replayer.allocation(&self.live[i]) {
                Some(a) => return Some((self.live[i].clone(), a)),
                None => {
                    self.live.swap_remove(i);
                }
            }
        }
        None
    }

    /// A random live allocation and one of its pieces `(first frame, order)`.
    fn pick_piece(&mut self) -> Option<(String, Allocation, u64, u8)> {
        let (id, a) = self.pick()?;
        let (m, o) = a.remaining[self.rng.random_range(0..a.remaining.len())];
        Some((id, a, m.0, o))
    }

    fn alloc(&mut self) -> Op {
        let name = format!("a{}", self.next_id);
        self.next_id += 1;
        let (dom, order) = (self.dom(), self.order());
        let mut req = AllocRequest::new(order, DomId(dom));
        if self.rng.random_bool(0.5) {
            let node = self.node() as usize;
            req.node = if self.rng.random_bool(0.2) { NodePref::Exact(node) } else { NodePref::Prefer(node) };
        }
        req.movable = self.cfg.movable_from.is_some() && self.rng.random_bool(0.2);
        req.scrub = !self.rng.random_bool(0.05);
        self.live.push(name.clone());
        Op::Alloc { id: id(name), req }
    }

    fn free_whole(&mut self) -> Option<Op> {
        let (name, _) = self.pick()?;
        Some(Op::FreeId { id: id(name) })
    }

    /// An aligned part of a piece of a live allocation, as `id=X offset=O order=K` (the
    /// offset counts from where the allocation was; pieces a pin or an offline moved are
    /// named by frame instead: `None`), or the frame and order.
    fn part(&mut self) -> Option<(String, Option<u64>, u64, u8, u32)> {
        let (id, a, m, o) = self.pick_piece()?;
        let k = self.rng.random_range(0..=o);
        let j = self.rng.random_range(0..1u64 << (o - k));
        let at = m + (j << k);
        let inside = at >= a.first.0 && at < a.first.0 + (1u64 << a.order);
        Some((id, inside.then(|| at - a.first.0), at, k, a.owner.0))
    }

    fn free_part(&mut self) -> Option<Op> {
        let (name, offset, at, order, dom) = self.part()?;
        Some(match offset {
            Some(offset) => Op::FreePart { id: id(name), offset, order },
            None => Op::FreeMfn { mfn: Mfn(at), order, dom: DomId(dom) },
        })
    }

    /// A pin, unpin, offline, online or broken line.
    fn zones(&mut self) -> Option<Op> {
        let fpn = self.cfg.frames_per_node;
        let node_base = self.node() * fpn;
        Some(match self.rng.random_range(0..10) {
            0..=3 => {
                let (name, offset, _, order, _) = self.part()?;
                let pin = self.rng.random_bool(0.5);
                Op::Pin { id: id(name), offset: offset?, order, pin }
            }
            4..=5 => {
                let from = self.cfg.movable_from.unwrap_or(0).min(fpn - 1);
                let first = node_base + self.rng.random_range(from..fpn);
                let count = self.rng.random_range(1..=(node_base + fpn - first).min(4096));
                self.last_offline = Some((first, count));
                // Drawn as an i32, as the text generator did, so a seed gives the same log as before.
                let steps =
                    self.rng.random_bool(0.3).then(|| u64::from(self.rng.random_range(0..200i32).unsigned_abs()));
                Op::Offline { mfn: Mfn(first), count, steps }
            }
            6..=7 => {
                let (first, count) = self.last_offline.take()?;
                Op::Online { mfn: Mfn(first), count }
            }
            _ => Op::Broken { mfn: Mfn(node_base + self.rng.random_range(0..fpn)) },
        })
    }

    fn free_mfn(&mut self) -> Option<Op> {
        let (_, a, m, o) = self.pick_piece()?;
        self.last_freed = Some((m, o, a.owner.0));
        Some(Op::FreeMfn { mfn: Mfn(m), order: o, dom: a.owner })
    }

    fn scrub(&mut self) -> Op {
        let pages = [64, 256, 4096, 65_536, 262_144][self.rng.random_range(0..5)];
        Op::Scrub { node: self.node() as usize, pages }
    }

    fn claim(&mut self) -> Op {
        let dom = DomId(self.dom());
        let stats = self.replayer.heap().map(|h| h.stats()).unwrap_or_default();
        let free = stats.free_clean + stats.free_dirty;
        match self.rng.random_range(0..10) {
            0..=3 => {
                let pages = self.rng.random_range(0..=free / (8 * self.cfg.nodes));
                Op::Claim { dom, target: ClaimTarget::Node(self.node() as usize), pages }
            }
            4..=5 => Op::Claim { dom, target: ClaimTarget::Global, pages: self.rng.random_range(0..=free / 16) },
            _ => Op::ClaimCancel { dom },
        }
    }

    /// An operation that should fail, of one of several kinds.
    fn misuse(&mut self) -> Op {
        let fallback = Op::FreeId { id: id(format!("gone{}", self.rng.random_range(0..1000))) };
        let free = |m: u64, order: u8, d: u32| Op::FreeMfn { mfn: Mfn(m), order, dom: DomId(d) };
        let bad_alloc = |next: u64, order: u8, node: NodePref| {
            let req = AllocRequest { node, ..AllocRequest::new(order, DomId(1)) };
            Op::Alloc { id: id(format!("bad{next}")), req }
        };
        let op = match self.rng.random_range(0..8) {
            0 => self.last_freed.map(|(m, o, d)| free(m, o, d)),
            1 => self.pick_piece().map(|(_, a, m, o)| free(m, o, a.owner.0 + DOMS)),
            2 => self.pick_piece().filter(|p| p.3 > 0).map(|(_, _, m, o)| free(m + 1, o, 1)),
            3 => self.pick().map(|(name, a)| Op::FreePart { id: id(name), offset: 0, order: a.order + 1 }),
            4 => self.pick().map(|(name, _)| Op::Alloc { id: id(name), req: AllocRequest::new(0, DomId(1)) }),
            5 => Some(bad_alloc(self.next_id, 0, NodePref::Exact(self.cfg.nodes as usize))),
            6 => Some(bad_alloc(self.next_id, MAX_ORDER + 1, NodePref::Any)),
            _ => Some(free(self.cfg.nodes * self.cfg.frames_per_node, 0, 1)),
        };
        op.unwrap_or(fallback)
    }

    fn op(&mut self, n: u64) -> Op {
        if self.cfg.check_every > 0 && n % self.cfg.check_every == 0 {
            return Op::Check;
        }
        let s = self.replayer.heap().map(|h| h.stats()).unwrap_or_default();
        let used = s.allocated as f64 / s.total().max(1) as f64;
        let (alloc, whole) = if used > 0.85 { (15, 40) } else { (40, 18) };
        let roll = self.rng.random_range(0..100);
        let op = if roll < alloc {
            Some(self.alloc())
        } else if roll < alloc + whole {
            self.free_whole()
        } else if roll < alloc + whole + 10 {
            self.free_part()
        } else if roll < alloc + whole + 14 {
            self.free_mfn()
        } else if roll < alloc + whole + 26 {
            Some(self.scrub())
        } else if roll < alloc + whole + 31 {
            Some(self.claim())
        } else if roll < alloc + whole + 37 {
            Some(self.misuse())
        } else if roll < alloc + whole + 41 {
            self.zones()
        } else {
            Some(self.alloc())
        };
        op.unwrap_or_else(|| self.alloc())
    }
}

/// Writes `cfg.ops` operations to `out` (after one comment line naming the settings) and
/// returns what replaying them does. The same configuration gives the same bytes.
pub fn generate(cfg: &GenConfig, out: &mut dyn Write) -> Result<ReplayReport, GenError> {
    let mut g = Gen {
        cfg,
        rng: ChaCha8Rng::seed_from_u64(cfg.seed),
        replayer: Replayer::with_max_frames(cfg.max_frames),
        live: Vec::new(),
        next_id: 0,
        last_freed: None,
        last_offline: None,
    };
    let comment = format!(
        "# scrubheap replay --generate {} --seed {} --nodes {} --frames-per-node {}{} --check-every {}",
        cfg.ops,
        cfg.seed,
        cfg.nodes,
        cfg.frames_per_node,
        cfg.movable_from.map_or(String::new(), |m| format!(" --movable-from {m}")),
        cfg.check_every
    );
    writeln!(out, "{comment}")?;
    // Stepped too, so that line numbers in the report match the log's.
    g.replayer.step(&comment);
    if cfg.ops == 0 {
        return Ok(g.replayer.finish());
    }
    let heap = g.heap_op();
    if let Outcome::Failed { message, .. } = g.replayer.apply(heap.clone()) {
        return Err(GenError::HeapRefused { heap: heap.to_string(), message });
    }
    writeln!(out, "{heap}")?;
    for n in 1..cfg.ops {
        let op = g.op(n);
        writeln!(out, "{op}")?;
        g.replayer.apply(op);
    }
    Ok(g.replayer.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ops: u64, seed: u64) -> GenConfig {
        GenConfig {
            ops,
            seed,
            nodes: 2,
            frames_per_node: 1 << 14,
            movable_from: Some(3 << 12),
            check_every: 500,
            max_frames: 1 << 20,
        }
    }

    #[test]
    fn same_seed_same_log_and_it_replays_as_generated() {
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        let rep = generate(&cfg(3000, 7), &mut a).unwrap();
        generate(&cfg(3000, 7), &mut b).unwrap();
        generate(&cfg(3000, 8), &mut c).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(rep.ops, 3000);
        assert_eq!(rep.invariant_violations, 0, "{:?}", rep.violations);
        let mut r = Replayer::new();
        r.replay_bytes(&a);
        assert_eq!(r.finish(), rep);
        let text = String::from_utf8(a).unwrap();
        for verb in
            ["alloc", "free id", "free mfn", "scrub", "claim", "check", "pin", "unpin", "offline", "online", "broken"]
        {
            assert!(text.lines().any(|l| l.starts_with(verb)), "no {verb} line");
        }
        assert!(rep.ok > rep.ops / 2, "{rep:?}");
        // Scrubs of 4096 pages ran: the longest section is one batch, within the bound.
        let s = &rep.sections;
        assert!(s.max_section_frames > 0 && s.max_section_frames <= s.section_bound, "{s:?}");
        for kind in ["NotAllocated", "WrongOwner", "Unaligned", "DuplicateId", "NoSuchNode", "InvalidOrder"] {
            assert!(rep.errors.contains_key(kind), "no {kind} in {:?}", rep.errors);
        }
    }

    #[test]
    fn a_heap_the_replay_refuses_is_an_error() {
        let mut c = cfg(10, 1);
        c.frames_per_node = 0;
        assert!(generate(&c, &mut Vec::new()).is_err());
    }
}
