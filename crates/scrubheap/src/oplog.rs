//! The op log (DESIGN section 6): a text format with one heap operation a line, its
//! parser, and a [`Replayer`] that runs a log against a fresh metadata-only heap and
//! counts what happened.
//!
//! The replayer never panics on any input. A line it cannot parse or execute is one
//! counted error (keyed by a kind: the [`HeapError`] variant name, or one of the names in
//! [`kind`]) and replay goes on. After every line it runs cheap checks (counters,
//! conservation, the frames the log holds against the frames the heap says are
//! allocated); at every `check` line, whenever a `heap` line ends the current heap, and at
//! the end, it runs the full [`Heap::check_invariants`]. Failed checks are counted as
//! invariant violations: they are heap (or replayer) bugs, never input errors.
//!
//! ```
//! use scrubheap_pod::oplog::Replayer;
//! let mut r = Replayer::new();
//! r.replay_str(
//!     "heap nodes=2 frames_per_node=4096\n\
//!      alloc id=a dom=1 order=9 node=0\n\
//!      free id=a offset=256 order=8   # give back the upper half\n\
//!      free id=a\n\
//!      free id=a                      # a is gone: UnknownId\n\
//!      scrub node=0 pages=4096\n\
//!      check\n",
//! );
//! let report = r.finish();
//! assert_eq!((report.ops, report.ok), (7, 6));
//! assert_eq!(report.errors["UnknownId"], 1);
//! assert_eq!(report.invariant_violations, 0);
//! assert_eq!(report.final_.free_clean, 8192);
//! ```
//!
//! The lines (numbers are decimal or `0x` hex; `#` starts a comment):
//!
//! ```text
//! heap nodes=N frames_per_node=F [movable_from=M] [policy=P]
//! alloc id=X dom=D order=K [node=N] [exact] [movable] [noscrub]
//! free id=X | free id=X offset=O order=K | free mfn=M order=K dom=D
//! scrub node=N pages=P
//! claim dom=D node=N pages=P | claim dom=D global pages=P | claim dom=D cancel
//! pin id=X offset=O order=K | unpin id=X offset=O order=K
//! offline mfn=M count=C [steps=S] | online mfn=M count=C | broken mfn=M
//! check
//! pod dom=D max_pages=N target=T [node=X]   # create a populate-on-demand guest
//! touch dom=D gfn=G [data]                  # guest access; `data` writes that 4 KiB page
//! balloon dom=D gfn=G order=K               # decrease reservation
//! pod_target dom=D target=T
//! destroy dom=D                             # its PoD pages go back to the heap
//! ```
//!
//! A pin or an offline that moves frames moves the log's allocation with them (the
//! replayer is the owner's [`scrubheap::Migrator`]: it moves metadata only), so later
//! `offset=` lines of that id name the frames where they are now. `steps=S` gives an
//! offline a deadline of S steps ([`scrubheap::StepBudget`]); without it, none.
//!
//! The replay heap runs on [`SparseMemory`], so `touch ... data` leaves pages that zero
//! checks see as used. A touch that crashes its guest (out of PoD memory) is one
//! `PodExhausted` error (PoD errors count as `Pod` + the [`crate::PodError`] variant). A
//! `free` or `pin` of frames a PoD guest holds is refused by the heap (`Sealed`): they
//! leave the guest through `balloon` or `destroy`.
//!
//! This module is compiled into `scrubheap-pod` (feature `oplog`), since it replays PoD
//! lines and the heap crate cannot depend on the PoD layer.

use crate::Pods;
use alloc::borrow::Cow;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use scrubheap::{
    AllocRequest, ChunkState, Claim, ClaimTarget, DomId, Extent, Heap, HeapConfig, HeapError, Mfn, Migrator,
    NeverPreempt, NoDeadline, NodePref, Policy, SparseMemory, StepBudget, Zone, MAX_ORDER,
};

/// The largest heap (in frames, all nodes together) a `heap` line may ask for unless the
/// replayer is told otherwise: 2^28 frames (1 TiB at 4 KiB), about 3 GiB of metadata.
pub const DEFAULT_MAX_FRAMES: u64 = 1 << 28;

/// The most nodes a `heap` line may ask for (the heap's own limit).
pub const MAX_NODES: u64 = 1024;

/// How many invariant-violation messages a report keeps (the count is always exact).
pub const MAX_VIOLATION_MESSAGES: usize = 16;

/// The most words a line may have after its verb (no valid line has more than 7); keeps a
/// hostile line from costing more than linear time.
const MAX_WORDS: usize = 16;

/// Error kinds of the replayer's own (the others are [`HeapError`] variant names).
pub mod kind {
    /// The line is not an op-log line.
    pub const PARSE: &str = "Parse";
    /// An operation before any (successful) `heap` line.
    pub const NO_HEAP: &str = "NoHeap";
    /// A `free id=X` for an id that holds nothing (never allocated, or all freed).
    pub const UNKNOWN_ID: &str = "UnknownId";
    /// An `alloc id=X` while X still holds frames.
    pub const DUPLICATE_ID: &str = "DuplicateId";
    /// A `heap` line beyond the replayer's memory guard (or `pod` lines whose p2m sizes
    /// together exceed it).
    pub const TOO_LARGE: &str = "TooLarge";
}

/// The kind under which a heap error is counted: its variant name (`OutOfMemory`, ...).
pub fn heap_error_kind(e: &HeapError) -> String {
    let dbg = format!("{e:?}");
    let end = dbg.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(dbg.len());
    dbg[..end].into()
}

/// A line that is not valid op-log syntax.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One parsed op-log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op<'a> {
    /// `heap nodes=N frames_per_node=F [movable_from=M] [policy=P]`: replace the heap.
    Heap {
        /// Number of nodes.
        nodes: u64,
        /// Frames of each node; node i owns `[i*F, (i+1)*F)`.
        frames_per_node: u64,
        /// Offset in each node where its Movable zone begins.
        movable_from: Option<u64>,
        /// The scrubbing policy.
        policy: Policy,
    },
    /// `alloc id=X dom=D order=K [node=N] [exact] [movable] [noscrub]`.
    Alloc {
        /// The name the log gives the allocation.
        id: &'a str,
        /// The request.
        req: AllocRequest,
    },
    /// `free id=X`: free all that remains of X.
    FreeId {
        /// The allocation.
        id: &'a str,
    },
    /// `free id=X offset=O order=K`: free the aligned part at offset O of X.
    FreePart {
        /// The allocation.
        id: &'a str,
        /// Frames from the allocation's first frame.
        offset: u64,
        /// Size of the part.
        order: u8,
    },
    /// `free mfn=M order=K dom=D`.
    FreeMfn {
        /// First frame.
        mfn: Mfn,
        /// Size.
        order: u8,
        /// Who frees.
        dom: DomId,
    },
    /// `scrub node=N pages=P`: what an idle CPU of node N does with a budget of P frames.
    Scrub {
        /// The scrubbing node.
        node: usize,
        /// Budget in frames.
        pages: u64,
    },
    /// `claim dom=D node=N pages=P` or `claim dom=D global pages=P`: set that one entry of
    /// D's claim set, keeping the others (0 pages drops the entry).
    Claim {
        /// The claiming domain.
        dom: DomId,
        /// Which entry.
        target: ClaimTarget,
        /// Its new size in frames.
        pages: u64,
    },
    /// `claim dom=D cancel`: drop all of D's claims.
    ClaimCancel {
        /// The domain.
        dom: DomId,
    },
    /// `check`: run the full invariant checker.
    Check,
    /// `pod dom=D max_pages=N target=T [node=X]`: create a populate-on-demand guest.
    Pod {
        /// The guest.
        dom: DomId,
        /// Size of its p2m.
        max_pages: u64,
        /// Frames behind it.
        target: u64,
        /// Preferred node.
        node: Option<usize>,
    },
    /// `touch dom=D gfn=G [data]`: the guest accesses a frame (and writes it, with `data`).
    Touch {
        /// The guest.
        dom: DomId,
        /// The guest frame.
        gfn: u64,
        /// Whether it writes non-zero bytes into the page.
        data: bool,
    },
    /// `balloon dom=D gfn=G order=K`: decrease reservation.
    Balloon {
        /// The guest.
        dom: DomId,
        /// First guest frame.
        gfn: u64,
        /// Size.
        order: u8,
    },
    /// `pod_target dom=D target=T`.
    PodTarget {
        /// The guest.
        dom: DomId,
        /// Its new target.
        target: u64,
    },
    /// `destroy dom=D`: destroy a PoD guest.
    Destroy {
        /// The guest.
        dom: DomId,
    },
    /// `pin id=X offset=O order=K` (`pin: true`) or `unpin ...` (`pin: false`).
    Pin {
        /// The allocation.
        id: &'a str,
        /// Frames from the allocation's first frame.
        offset: u64,
        /// Size of the part.
        order: u8,
        /// Pin, or unpin.
        pin: bool,
    },
    /// `offline mfn=M count=C [steps=S]`.
    Offline {
        /// First frame.
        mfn: Mfn,
        /// Frames.
        count: u64,
        /// A deadline in steps, if any.
        steps: Option<u64>,
    },
    /// `online mfn=M count=C`.
    Online {
        /// First frame.
        mfn: Mfn,
        /// Frames.
        count: u64,
    },
    /// `broken mfn=M`.
    Broken {
        /// The frame.
        mfn: Mfn,
    },
}

/// The words of one line after its verb: `key=value` pairs and bare flags, each of which
/// must be used exactly once.
struct Args<'a> {
    toks: Vec<(&'a str, Option<&'a str>)>,
    used: Vec<bool>,
}

fn perr<T>(msg: String) -> Result<T, ParseError> {
    Err(ParseError(msg))
}

/// A decimal or `0x` hexadecimal `u64`, digits only.
fn number(key: &str, s: &str) -> Result<u64, ParseError> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => (h, 16),
        None => (s, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return perr(format!("{key}={s}: not a decimal or 0x hexadecimal number"));
    }
    u64::from_str_radix(digits, radix).or_else(|_| perr(format!("{key}={s}: does not fit in 64 bits")))
}

impl<'a> Args<'a> {
    fn new<I: Iterator<Item = &'a str>>(words: I) -> Result<Self, ParseError> {
        let mut toks: Vec<(&str, Option<&str>)> = Vec::new();
        for w in words {
            if toks.len() == MAX_WORDS {
                return perr(format!("more than {MAX_WORDS} words after the operation"));
            }
            let t = match w.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (w, None),
            };
            if toks.iter().any(|&(k, _)| k == t.0) {
                return perr(format!("`{}` is given twice", t.0));
            }
            toks.push(t);
        }
        let used = alloc::vec![false; toks.len()];
        Ok(Args { toks, used })
    }

    fn value(&mut self, key: &str) -> Option<&'a str> {
        let i = self.toks.iter().position(|&(k, v)| k == key && v.is_some())?;
        self.used[i] = true;
        self.toks[i].1
    }

    fn flag(&mut self, name: &str) -> bool {
        match self.toks.iter().position(|&(k, v)| k == name && v.is_none()) {
            Some(i) => {
                self.used[i] = true;
                true
            }
            None => false,
        }
    }

    fn num(&mut self, key: &str) -> Result<Option<u64>, ParseError> {
        self.value(key).map(|v| number(key, v)).transpose()
    }

    fn req_num(&mut self, key: &str) -> Result<u64, ParseError> {
        self.num(key)?.map_or_else(|| perr(format!("missing {key}=")), Ok)
    }

    fn order(&mut self) -> Result<u8, ParseError> {
        let o = self.req_num("order")?;
        u8::try_from(o).or_else(|_| perr(format!("order={o}: orders are small numbers (0 to 18)")))
    }

    fn dom(&mut self) -> Result<DomId, ParseError> {
        let d = self.req_num("dom")?;
        u32::try_from(d).map(DomId).or_else(|_| perr(format!("dom={d}: domain ids are 32-bit")))
    }

    fn node(&mut self) -> Result<Option<usize>, ParseError> {
        match self.num("node")? {
            None => Ok(None),
            Some(n) => usize::try_from(n).map(Some).or_else(|_| perr(format!("node={n}: too large"))),
        }
    }

    fn id(&mut self) -> Result<&'a str, ParseError> {
        match self.value("id") {
            Some("") => perr("id= is empty".into()),
            Some(id) => Ok(id),
            None => perr("missing id=".into()),
        }
    }

    /// Fails on any word not used.
    fn finish(self) -> Result<(), ParseError> {
        match self.toks.iter().zip(&self.used).find(|(_, &u)| !u) {
            None => Ok(()),
            Some(((k, Some(v)), _)) => perr(format!("unexpected `{k}={v}`")),
            Some(((k, None), _)) => perr(format!("unexpected `{k}`")),
        }
    }
}

/// Parses one line: `Ok(None)` for a blank or comment-only line.
///
/// ```
/// use scrubheap_pod::oplog::{parse_line, Op};
/// assert_eq!(parse_line("  # just a comment").unwrap(), None);
/// assert!(matches!(parse_line("free id=a1 offset=0x200 order=9"),
///     Ok(Some(Op::FreePart { id: "a1", offset: 512, order: 9 }))));
/// assert!(parse_line("free id=a1 order=9").is_err());
/// ```
pub fn parse_line(line: &str) -> Result<Option<Op<'_>>, ParseError> {
    let text = line.split('#').next().unwrap_or("");
    let mut words = text.split_whitespace();
    let Some(verb) = words.next() else { return Ok(None) };
    let mut a = Args::new(words)?;
    let op = match verb {
        "heap" => {
            let nodes = a.req_num("nodes")?;
            let frames_per_node = a.req_num("frames_per_node")?;
            let movable_from = a.num("movable_from")?;
            let policy = match a.value("policy") {
                None => Policy::default(),
                Some(p) => p.parse().or_else(|e| perr(format!("{e}")))?,
            };
            Op::Heap { nodes, frames_per_node, movable_from, policy }
        }
        "alloc" => {
            let id = a.id()?;
            let mut req = AllocRequest::new(a.order()?, a.dom()?);
            let exact = a.flag("exact");
            req.node = match (a.node()?, exact) {
                (Some(n), true) => NodePref::Exact(n),
                (Some(n), false) => NodePref::Prefer(n),
                (None, false) => NodePref::Any,
                (None, true) => return perr("`exact` needs node=".into()),
            };
            req.movable = a.flag("movable");
            req.scrub = !a.flag("noscrub");
            Op::Alloc { id, req }
        }
        "free" => {
            if a.toks.iter().any(|&(k, _)| k == "mfn") {
                let mfn = Mfn(a.req_num("mfn")?);
                Op::FreeMfn { mfn, order: a.order()?, dom: a.dom()? }
            } else {
                let id = a.id()?;
                match a.num("offset")? {
                    Some(offset) => Op::FreePart { id, offset, order: a.order()? },
                    None => Op::FreeId { id },
                }
            }
        }
        "scrub" => {
            let node = a.node()?.map_or_else(|| perr("missing node=".into()), Ok)?;
            Op::Scrub { node, pages: a.req_num("pages")? }
        }
        "claim" => {
            let dom = a.dom()?;
            if a.flag("cancel") {
                Op::ClaimCancel { dom }
            } else {
                let target = match (a.node()?, a.flag("global")) {
                    (Some(n), false) => ClaimTarget::Node(n),
                    (None, true) => ClaimTarget::Global,
                    (Some(_), true) => return perr("a claim is either node=N or global, not both".into()),
                    (None, false) => return perr("a claim needs node=N, global or cancel".into()),
                };
                Op::Claim { dom, target, pages: a.req_num("pages")? }
            }
        }
        "check" => Op::Check,
        "pod" => {
            let dom = a.dom()?;
            Op::Pod { dom, max_pages: a.req_num("max_pages")?, target: a.req_num("target")?, node: a.node()? }
        }
        "touch" => Op::Touch { dom: a.dom()?, gfn: a.req_num("gfn")?, data: a.flag("data") },
        "balloon" => {
            let dom = a.dom()?;
            Op::Balloon { dom, gfn: a.req_num("gfn")?, order: a.order()? }
        }
        "pod_target" => Op::PodTarget { dom: a.dom()?, target: a.req_num("target")? },
        "destroy" => Op::Destroy { dom: a.dom()? },
        "pin" | "unpin" => {
            let id = a.id()?;
            let offset = a.req_num("offset")?;
            Op::Pin { id, offset, order: a.order()?, pin: verb == "pin" }
        }
        "offline" => Op::Offline { mfn: Mfn(a.req_num("mfn")?), count: a.req_num("count")?, steps: a.num("steps")? },
        "online" => Op::Online { mfn: Mfn(a.req_num("mfn")?), count: a.req_num("count")? },
        "broken" => Op::Broken { mfn: Mfn(a.req_num("mfn")?) },
        other => return perr(format!("unknown operation `{other}`")),
    };
    a.finish()?;
    Ok(Some(op))
}

/// Frame counts of the heap at the end of a replay.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FinalCounts {
    /// Free frames known to be zero.
    pub free_clean: u64,
    /// Free frames still holding old bytes.
    pub free_dirty: u64,
    /// Frames held by owners.
    pub allocated: u64,
    /// Frames out of service.
    pub offline: u64,
}

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Operations: every line that is not blank or a comment.
    pub ops: u64,
    /// Operations that succeeded (`ops` = `ok` + all errors).
    pub ok: u64,
    /// Failed operations by kind.
    pub errors: BTreeMap<String, u64>,
    /// Failed checks: heap or replayer bugs, never input errors.
    pub invariant_violations: u64,
    /// The first [`MAX_VIOLATION_MESSAGES`] violations, each with its line number.
    pub violations: Vec<String>,
    /// The heap's frames at the end (all zero when no heap is left).
    pub final_: FinalCounts,
    /// Populate-on-demand: frames of the guests left at the end, and events of every
    /// heap of the log.
    pub pod: PodReport,
}

/// The populate-on-demand part of a [`ReplayReport`].
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct PodReport {
    /// RAM entries of the PoD guests left at the end (frames).
    pub populated: u64,
    /// Their cache pages (frames).
    pub cache: u64,
    /// Their outstanding PoD entries (frames).
    pub entries: u64,
    /// Zeroed 2 MiB mappings reclaimed whole.
    pub superpages_reclaimed: u64,
    /// Zeroed 4 KiB pages reclaimed.
    pub zero_pages_reclaimed: u64,
    /// 2 MiB mappings shattered by decrease reservations.
    pub superpages_shattered: u64,
    /// Guests crashed out of PoD memory.
    pub crashes: u64,
}

/// What one line did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A blank or comment line: not an operation.
    Skipped,
    /// The operation succeeded.
    Ok,
    /// The operation failed and was counted under `kind`.
    Failed {
        /// The kind it is counted under.
        kind: String,
        /// What went wrong, for a person.
        message: String,
    },
}

/// Why a line failed.
struct Fail {
    kind: Cow<'static, str>,
    message: String,
}

impl From<HeapError> for Fail {
    fn from(e: HeapError) -> Self {
        Fail { kind: Cow::Owned(heap_error_kind(&e)), message: e.to_string() }
    }
}

fn fail<T>(kind: &'static str, message: String) -> Result<T, Fail> {
    Err(Fail { kind: Cow::Borrowed(kind), message })
}

/// One allocation of the log and what is left of it.
#[derive(Clone, Debug)]
struct Held {
    name: String,
    owner: DomId,
    first: u64,
    order: u8,
    node: usize,
    /// Frames still held.
    frames: u64,
}

/// An allocation the log still holds (part of), as [`Replayer::allocation`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// Its owner.
    pub owner: DomId,
    /// Its first frame (offsets in `free id=X offset=O` count from here).
    pub first: Mfn,
    /// Its order when allocated.
    pub order: u8,
    /// The node it came from.
    pub node: usize,
    /// The aligned pieces still held, in frame order.
    pub remaining: Vec<(Mfn, u8)>,
}

/// The replayer's [`Migrator`]: every move succeeds; each is recorded so the log's
/// allocations follow their frames.
#[derive(Default)]
struct RecordMoves(core::cell::RefCell<Vec<(DomId, Extent, Extent)>>);

impl Migrator for RecordMoves {
    fn migrate(&self, owner: DomId, from: Extent, to: Extent) -> bool {
        self.0.borrow_mut().push((owner, from, to));
        true
    }
}

/// Runs op-log lines against a [`Heap`] over [`SparseMemory`], keeping the log's allocations
/// by id, counting results and checking the heap after every line.
pub struct Replayer {
    max_frames: u64,
    heap: Option<Heap<SparseMemory>>,
    /// The PoD guests of the current heap.
    pods: Pods,
    total_frames: u64,
    /// Live ids to their serial numbers.
    names: BTreeMap<String, u64>,
    /// Allocations with frames left, by serial number.
    held: BTreeMap<u64, Held>,
    /// Every held piece: first frame to (order, serial). Pieces never overlap.
    pieces: BTreeMap<u64, (u8, u64)>,
    held_frames: u64,
    /// Parts of allocations that pins or offlines moved: (serial, offset in the
    /// allocation, 64 - order: inner parts sort after the parts holding them) to (first
    /// frame now, order).
    moved: BTreeMap<(u64, u64, u8), (u64, u8)>,
    next_serial: u64,
    line_no: u64,
    report: ReplayReport,
}

impl Default for Replayer {
    fn default() -> Self {
        Self::new()
    }
}

impl Replayer {
    /// A replayer with no heap yet and the [`DEFAULT_MAX_FRAMES`] guard.
    pub fn new() -> Self {
        Self::with_max_frames(DEFAULT_MAX_FRAMES)
    }

    /// A replayer whose `heap` lines may ask for at most `max_frames` frames in all.
    pub fn with_max_frames(max_frames: u64) -> Self {
        Replayer {
            max_frames,
            heap: None,
            pods: Pods::new(),
            total_frames: 0,
            names: BTreeMap::new(),
            held: BTreeMap::new(),
            pieces: BTreeMap::new(),
            held_frames: 0,
            moved: BTreeMap::new(),
            next_serial: 0,
            line_no: 0,
            report: ReplayReport::default(),
        }
    }

    /// The current heap, if a `heap` line built one.
    pub fn heap(&self) -> Option<&Heap<SparseMemory>> {
        self.heap.as_ref()
    }

    /// The PoD guests of the current heap.
    pub fn pods(&self) -> &Pods {
        &self.pods
    }

    /// The ids that still hold frames, in name order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.names.keys().map(String::as_str)
    }

    /// What allocation `id` still holds, if anything.
    pub fn allocation(&self, id: &str) -> Option<Allocation> {
        let serial = *self.names.get(id)?;
        let h = self.held.get(&serial)?;
        let remaining = self.pieces_of(serial).into_iter().map(|(m, o)| (Mfn(m), o)).collect();
        Some(Allocation { owner: h.owner, first: Mfn(h.first), order: h.order, node: h.node, remaining })
    }

    /// The counts so far (without the final full check that [`Replayer::finish`] runs).
    pub fn report(&self) -> &ReplayReport {
        &self.report
    }

    /// Replays every line of `text` (`\n` or `\r\n` line ends).
    pub fn replay_str(&mut self, text: &str) {
        for line in text.split('\n') {
            self.step(line);
        }
    }

    /// Replays `bytes`, read as UTF-8 with invalid sequences replaced.
    pub fn replay_bytes(&mut self, bytes: &[u8]) {
        self.replay_str(&String::from_utf8_lossy(bytes));
    }

    /// Runs the full invariant check on the heap left, and returns the report.
    pub fn finish(mut self) -> ReplayReport {
        self.end_heap();
        self.report
    }

    /// Parses and runs one line, then checks the heap.
    pub fn step(&mut self, line: &str) -> Outcome {
        self.line_no += 1;
        let op = match parse_line(line) {
            Ok(None) => return Outcome::Skipped,
            Ok(Some(op)) => op,
            Err(e) => return self.count(Err(Fail { kind: Cow::Borrowed(kind::PARSE), message: e.0 })),
        };
        let before = self.heap.as_ref().map(Heap::stats);
        // A touch that crashes its guest gives the guest's pages back: an error that changes the heap.
        let may_change_on_error =
            matches!(op, Op::Heap { .. } | Op::FreeId { .. } | Op::Offline { .. } | Op::Touch { .. });
        let res = self.exec(op);
        if let (Err(_), Some(before), Some(heap)) = (&res, before, &self.heap) {
            let after = heap.stats();
            if !may_change_on_error && after != before {
                self.violation(format!("a refused operation changed the heap: {before:?} -> {after:?}"));
            }
        }
        self.cheap_checks();
        self.count(res)
    }

    fn count(&mut self, res: Result<(), Fail>) -> Outcome {
        self.report.ops += 1;
        match res {
            Ok(()) => {
                self.report.ok += 1;
                Outcome::Ok
            }
            Err(f) => {
                *self.report.errors.entry(f.kind.to_string()).or_default() += 1;
                Outcome::Failed { kind: f.kind.into_owned(), message: f.message }
            }
        }
    }

    fn violation(&mut self, msg: String) {
        self.report.invariant_violations += 1;
        if self.report.violations.len() < MAX_VIOLATION_MESSAGES {
            self.report.violations.push(format!("line {}: {msg}", self.line_no));
        }
    }

    /// Counters against the heap's size and against the frames the log holds.
    fn cheap_checks(&mut self) {
        let Some(heap) = &self.heap else { return };
        let s = heap.stats();
        let mut bad = Vec::new();
        let at_rest = s.free_clean as u128 + s.free_dirty as u128 + s.allocated as u128 + s.offline as u128;
        if at_rest + s.scrubbing as u128 != self.total_frames as u128 {
            bad.push(format!("stats account for {} frames of {}", at_rest + s.scrubbing as u128, self.total_frames));
        }
        if s.scrubbing != 0 || at_rest != self.total_frames as u128 {
            bad.push(format!(
                "free_clean {} + free_dirty {} + allocated {} + offline {} != {} frames (scrubbing {})",
                s.free_clean, s.free_dirty, s.allocated, s.offline, self.total_frames, s.scrubbing
            ));
        }
        let pod = self.pods.frames();
        if s.allocated != self.held_frames + pod {
            bad.push(format!(
                "the heap says {} frames are allocated, the log holds {} and PoD guests {pod}",
                s.allocated, self.held_frames
            ));
        }
        if s.claimed as u128 > s.free_clean as u128 + s.free_dirty as u128 {
            bad.push(format!("{} frames claimed but only {} free", s.claimed, s.free_clean + s.free_dirty));
        }
        for b in bad {
            self.violation(b);
        }
    }

    /// Full check of the current heap, then drops it and every id.
    fn end_heap(&mut self) {
        if let Some(heap) = self.heap.take() {
            self.pod_end();
            let s = heap.stats();
            self.report.final_ = FinalCounts {
                free_clean: s.free_clean,
                free_dirty: s.free_dirty,
                allocated: s.allocated,
                offline: s.offline,
            };
            if let Err(e) = heap.check_invariants() {
                self.violation(format!("{e}"));
            }
            if let Err(e) = self.pods.check_invariants(&heap) {
                self.violation(format!("{e}"));
            }
        } else {
            self.report.final_ = FinalCounts::default();
            (self.report.pod.populated, self.report.pod.cache, self.report.pod.entries) = (0, 0, 0);
        }
        self.total_frames = 0;
        self.names.clear();
        self.held.clear();
        self.pieces.clear();
        self.moved.clear();
        self.held_frames = 0;
        self.pods = Pods::new();
    }

    fn heap_or_fail(&self) -> Result<&Heap<SparseMemory>, Fail> {
        match &self.heap {
            Some(h) => Ok(h),
            None => fail(kind::NO_HEAP, "no heap: the log needs a `heap` line first".into()),
        }
    }

    fn exec(&mut self, op: Op<'_>) -> Result<(), Fail> {
        match op {
            Op::Heap { nodes, frames_per_node, movable_from, policy } => {
                self.new_heap(nodes, frames_per_node, movable_from, policy)
            }
            Op::Alloc { id, req } => self.alloc(id, &req),
            Op::FreeId { id } => self.free_id(id),
            Op::FreePart { id, offset, order } => {
                let heap = self.heap_or_fail()?;
                let Some(h) = self.names.get(id).and_then(|s| self.held.get(s)) else {
                    return fail(kind::UNKNOWN_ID, format!("id {id} holds nothing"));
                };
                let (owner, mfn) = (h.owner, Mfn(self.frame_of(self.names[id], h.first, offset)));
                heap.free(mfn, order, owner)?;
                self.forget(mfn.0, order, owner);
                Ok(())
            }
            Op::FreeMfn { mfn, order, dom } => {
                let heap = self.heap_or_fail()?;
                heap.free(mfn, order, dom)?;
                self.forget(mfn.0, order, dom);
                Ok(())
            }
            Op::Scrub { node, pages } => {
                let heap = self.heap_or_fail()?;
                let before = heap.stats();
                let done = heap.scrub_step(node, pages, &NeverPreempt)?;
                let after = heap.stats();
                if done > pages || before.free_dirty.checked_sub(after.free_dirty) != Some(done) {
                    let msg = format!(
                        "scrub_step({node}, {pages}) said {done} frames scrubbed; dirty frames went {} -> {}",
                        before.free_dirty, after.free_dirty
                    );
                    self.violation(msg);
                }
                Ok(())
            }
            Op::Claim { dom, target, pages } => self.claim(dom, target, pages),
            Op::ClaimCancel { dom } => {
                let heap = self.heap_or_fail()?;
                heap.claim_cancel(dom);
                if !heap.claims_of(dom).is_empty() {
                    self.violation(format!("{dom} still has claims after claim_cancel"));
                }
                Ok(())
            }
            Op::Check => {
                let heap = self.heap_or_fail()?;
                let r = heap.check_invariants().map_err(|e| format!("{e}"));
                let r = r.and_then(|()| self.pods.check_invariants(heap).map_err(|e| format!("{e}")));
                if let Err(e) = r {
                    self.violation(e);
                }
                Ok(())
            }
            Op::Pod { .. } | Op::Touch { .. } | Op::Balloon { .. } | Op::PodTarget { .. } | Op::Destroy { .. } => {
                self.pod_op(op)
            }
            Op::Pin { id, offset, order, pin } => {
                let heap = self.heap_or_fail()?;
                let Some(&serial) = self.names.get(id) else {
                    return fail(kind::UNKNOWN_ID, format!("id {id} holds nothing"));
                };
                let h = &self.held[&serial];
                let (owner, mfn) = (h.owner, Mfn(self.frame_of(serial, h.first, offset)));
                if !pin {
                    return Ok(heap.unpin(mfn, order, owner)?);
                }
                let moves = RecordMoves::default();
                let r = heap.pin(mfn, order, owner, &moves);
                self.apply_moves(moves);
                r.map(|_| ()).map_err(Fail::from)
            }
            Op::Offline { mfn, count, steps } => {
                let heap = self.heap_or_fail()?;
                let moves = RecordMoves::default();
                let r = match steps {
                    Some(s) => heap.offline(mfn, count, &moves, &StepBudget::new(s)),
                    None => heap.offline(mfn, count, &moves, &NoDeadline),
                };
                self.apply_moves(moves);
                r.map(|_| ()).map_err(Fail::from)
            }
            Op::Online { mfn, count } => Ok(self.heap_or_fail()?.online(mfn, count).map(|_| ())?),
            Op::Broken { mfn } => Ok(self.heap_or_fail()?.mark_broken(mfn).map(|_| ())?),
        }
    }

    fn new_heap(&mut self, nodes: u64, fpn: u64, movable_from: Option<u64>, policy: Policy) -> Result<(), Fail> {
        self.end_heap();
        if nodes > MAX_NODES {
            return fail(kind::TOO_LARGE, format!("{nodes} nodes: the replayer allows at most {MAX_NODES}"));
        }
        match nodes.checked_mul(fpn) {
            Some(total) if total <= self.max_frames => {}
            _ => {
                return fail(
                    kind::TOO_LARGE,
                    format!("{nodes} x {fpn} frames is more than the replay limit of {} frames", self.max_frames),
                )
            }
        }
        let mut config = HeapConfig::uniform(nodes as usize, fpn).with_policy(policy);
        if let Some(m) = movable_from {
            config = config.with_movable_from(m);
        }
        self.heap = Some(Heap::new(config, SparseMemory::new())?);
        self.pods = Pods::new();
        self.total_frames = nodes * fpn;
        Ok(())
    }

    fn alloc(&mut self, id: &str, req: &AllocRequest) -> Result<(), Fail> {
        let heap = self.heap_or_fail()?;
        if self.names.contains_key(id) {
            return fail(kind::DUPLICATE_ID, format!("id {id} still holds frames: free it before reusing the id"));
        }
        let ext = heap.alloc(req)?;
        let size = 1u64 << core::cmp::min(req.order, MAX_ORDER);
        let Some(end) = ext.mfn.0.checked_add(size).filter(|_| ext.order == req.order && req.order <= MAX_ORDER) else {
            self.violation(format!("alloc of order {} returned {ext:?}", req.order));
            return Ok(());
        };
        let mut bad = Vec::new();
        if ext.mfn.0 % size != 0 {
            bad.push(format!("alloc of order {} returned {ext:?}", req.order));
        }
        if heap.node_of(ext.mfn) != Ok(ext.node) || heap.node_of(Mfn(end - 1)) != Ok(ext.node) {
            bad.push(format!("alloc returned {ext:?}, which is not inside node {}", ext.node));
        }
        if let NodePref::Exact(n) = req.node {
            if ext.node != n {
                bad.push(format!("alloc exact on node {n} returned {ext:?}"));
            }
        }
        match heap.chunk_at(ext.mfn) {
            Ok(c) => {
                let owned = matches!(c.state, ChunkState::Allocated { owner, .. } if owner == req.owner);
                if c.extent != ext || !owned {
                    bad.push(format!("alloc returned {ext:?} but the heap says {c:?}"));
                }
                if !req.movable && c.zone != Zone::Normal {
                    bad.push(format!("an unmovable alloc got {ext:?} in the {} zone", c.zone));
                }
            }
            Err(e) => bad.push(format!("alloc returned {ext:?}, whose chunk cannot be read: {e}")),
        }
        if let Some((&m, &(o, s))) = self.pieces.range(..end).next_back() {
            if m + (1u64 << o) > ext.mfn.0 {
                let other = self.held.get(&s).map_or("?", |h| h.name.as_str());
                bad.push(format!("alloc returned {ext:?}, which overlaps {} held by id {other}", Mfn(m)));
            }
        }
        for b in bad {
            self.violation(b);
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        let held = Held {
            name: id.into(),
            owner: req.owner,
            first: ext.mfn.0,
            order: ext.order,
            node: ext.node,
            frames: size,
        };
        self.names.insert(id.into(), serial);
        self.held.insert(serial, held);
        self.pieces.insert(ext.mfn.0, (ext.order, serial));
        self.held_frames += size;
        Ok(())
    }

    fn free_id(&mut self, id: &str) -> Result<(), Fail> {
        let heap = self.heap_or_fail()?;
        let Some(&serial) = self.names.get(id) else {
            return fail(kind::UNKNOWN_ID, format!("id {id} holds nothing"));
        };
        let owner = self.held[&serial].owner;
        let mine = self.pieces_of(serial);
        let results: Vec<(u64, u8, Result<(), HeapError>)> =
            mine.into_iter().map(|(m, o)| (m, o, heap.free(Mfn(m), o, owner))).collect();
        let mut first_err = None;
        for (m, o, res) in results {
            match res {
                Ok(()) => self.forget(m, o, owner),
                Err(e @ HeapError::Pinned { .. }) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    self.violation(format!("the heap refused to free {} order {o}, which id {id} holds: {e}", Mfn(m)));
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Forgets the frames `[lo, lo + 2^order)` the heap just freed for `owner`, splitting
    /// held pieces as needed; every frame must have been held by `owner`.
    fn forget(&mut self, lo: u64, order: u8, owner: DomId) {
        let size = 1u64 << order;
        let hi = lo + size;
        let hits: Vec<(u64, u8, u64)> = self
            .pieces
            .range(..hi)
            .rev()
            .take_while(|(&m, &(o, _))| m + (1u64 << o) > lo)
            .map(|(&m, &(o, s))| (m, o, s))
            .collect();
        let mut covered = 0u64;
        let mut bad = Vec::new();
        for (m, o, serial) in hits {
            self.pieces.remove(&m);
            let gone = if o <= order {
                1u64 << o
            } else {
                // The freed range lies inside this piece: keep the buddies around it.
                let (mut h, mut k) = (m, o);
                while k > order {
                    k -= 1;
                    let upper = h + (1u64 << k);
                    if lo >= upper {
                        self.pieces.insert(h, (k, serial));
                        h = upper;
                    } else {
                        self.pieces.insert(upper, (k, serial));
                    }
                }
                size
            };
            // Saturating: only a heap that handed the same frames out twice could make the
            // log hold less than it frees, and that is reported, not a reason to panic.
            covered += gone;
            self.held_frames = self.held_frames.saturating_sub(gone);
            let Some(h) = self.held.get_mut(&serial) else { continue };
            if h.owner != owner {
                bad.push(format!("the heap freed {} for {owner}, but id {} of {} held it", Mfn(m), h.name, h.owner));
            }
            h.frames = h.frames.saturating_sub(gone);
            if h.frames == 0 {
                let name = core::mem::take(&mut h.name);
                self.held.remove(&serial);
                self.names.remove(&name);
            }
        }
        if covered != size {
            bad.push(format!("the heap freed {size} frames at {} but the log held only {covered} of them", Mfn(lo)));
        }
        for b in bad {
            self.violation(b);
        }
    }

    /// The frame where offset `offset` of allocation `serial` (first frame `first`) is
    /// now, following the moves of pins and offlines.
    fn frame_of(&self, serial: u64, first: u64, offset: u64) -> u64 {
        let inner = self
            .moved
            .range((serial, 0, 0)..=(serial, offset, u8::MAX))
            .rev()
            .find(|(&(_, p, _), &(_, k))| offset - p < 1u64 << k)
            .map(|(&(_, p, _), &(m, _))| m + (offset - p));
        inner.unwrap_or_else(|| first.saturating_add(offset))
    }

    /// Every piece allocation `serial` still holds, wherever moves took it, in frame order.
    fn pieces_of(&self, serial: u64) -> Vec<(u64, u8)> {
        let Some(h) = self.held.get(&serial) else { return Vec::new() };
        let mut ranges = alloc::vec![(h.first, h.first + (1u64 << h.order))];
        for (_, &(m, k)) in self.moved.range((serial, 0, 0)..(serial + 1, 0, 0)) {
            ranges.push((m, m + (1u64 << k)));
        }
        let mut out: Vec<(u64, u8)> = ranges
            .into_iter()
            .flat_map(|(lo, hi)| self.pieces.range(lo..hi))
            .filter(|(_, &(_, s))| s == serial)
            .map(|(&m, &(o, _))| (m, o))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Moves the log's pieces the way the heap moved frames (the replayer's Migrator).
    fn apply_moves(&mut self, moves: RecordMoves) {
        for (owner, from, to) in moves.0.into_inner() {
            let Some((&m, &(o, serial))) = self.pieces.range(..=from.mfn.0).next_back() else {
                self.violation(format!("the heap moved {} that the log does not hold", from.mfn));
                continue;
            };
            if m + (1u64 << o) < from.mfn.0 + from.frames() {
                self.violation(format!("the heap moved {}+{} beyond a piece the log holds", from.mfn, from.frames()));
                continue;
            }
            let first = self.held.get(&serial).map_or(0, |h| h.first);
            let logical = self
                .moved
                .range((serial, 0, 0)..(serial + 1, 0, 0))
                .rev()
                .find(|(_, &(n, k))| from.mfn.0 >= n && from.mfn.0 - n < 1u64 << k)
                .map_or(from.mfn.0.wrapping_sub(first), |(&(_, p, _), &(n, _))| p + (from.mfn.0 - n));
            self.pieces.insert(to.mfn.0, (to.order, serial));
            self.held_frames += to.frames();
            if let Some(h) = self.held.get_mut(&serial) {
                h.frames += to.frames();
            }
            self.forget(from.mfn.0, from.order, owner);
            self.moved.insert((serial, logical, 64 - to.order), (to.mfn.0, to.order));
        }
    }

    fn claim(&mut self, dom: DomId, target: ClaimTarget, pages: u64) -> Result<(), Fail> {
        let heap = self.heap_or_fail()?;
        let mut set = heap.claims_of(dom);
        set.retain(|c| c.target != target);
        if pages > 0 {
            set.push(Claim { target, frames: pages });
        }
        // A set whose total does not fit in 64 bits can never be met; the heap sums it
        // unchecked, so refuse it here as the heap would.
        if set.iter().try_fold(0u64, |t, c| t.checked_add(c.frames)).is_none() {
            let s = heap.stats();
            let free = s.free_clean + s.free_dirty;
            let own = set.iter().filter(|c| c.target != target).fold(0u64, |t, c| t.saturating_add(c.frames));
            let available = free.saturating_sub(s.claimed.saturating_sub(own));
            return Err(HeapError::ClaimExceedsFree {
                requested: u64::MAX,
                where_: "the whole heap".into(),
                available,
            }
            .into());
        }
        heap.claim_set(dom, &set)?;
        let now = heap.claims_of(dom);
        let entry = now.iter().find(|c| c.target == target).map_or(0, |c| c.frames);
        if entry != pages {
            self.violation(format!("claim_set gave {dom} {entry} frames at {target:?}, not {pages}"));
        }
        Ok(())
    }
}

#[path = "oplog/pod.rs"]
mod pod;

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> ReplayReport {
        let mut r = Replayer::new();
        r.replay_str(text);
        r.finish()
    }

    fn errs(rep: &ReplayReport) -> Vec<(&str, u64)> {
        rep.errors.iter().map(|(k, &v)| (k.as_str(), v)).collect()
    }

    /// One line on a replayer, returning the kind it failed with ("" for success).
    fn kind_of(r: &mut Replayer, line: &str) -> String {
        match r.step(line) {
            Outcome::Ok => String::new(),
            Outcome::Skipped => "skipped".into(),
            Outcome::Failed { kind, .. } => kind,
        }
    }

    fn clean(r: &Replayer) {
        assert_eq!(r.report().invariant_violations, 0, "{:?}", r.report().violations);
    }

    const HEAP: &str = "heap nodes=2 frames_per_node=4096";

    #[test]
    fn numbers_and_comments() {
        assert_eq!(parse_line(""), Ok(None));
        assert_eq!(parse_line("   \t "), Ok(None));
        assert_eq!(parse_line("# alloc id=a dom=1 order=0"), Ok(None));
        assert_eq!(parse_line("scrub node=0x1 pages=0X10 # trailing"), Ok(Some(Op::Scrub { node: 1, pages: 16 })));
        assert_eq!(parse_line("scrub node=1 pages=18446744073709551615").map(|_| ()), Ok(()));
        for bad in [
            "scrub node=1 pages=18446744073709551616",
            "scrub node=-1 pages=1",
            "scrub node=+1 pages=1",
            "scrub node=0x pages=1",
            "scrub node= pages=1",
            "scrub node=1 pages=1 pages=2",
            "scrub node=1",
            "scrub node=1 pages=1 extra",
            "scrub node=1 pages=1 what=3",
            "alloc id=a dom=1 order=256",
            "alloc id=a dom=4294967296 order=0",
            "alloc id= dom=1 order=0",
            "alloc id=a dom=1 order=0 exact",
            "free id=a offset=1",
            "free id=a order=1",
            "free mfn=1 order=0",
            "claim dom=1 pages=3",
            "claim dom=1 node=0 global pages=3",
            "claim dom=1 cancel pages=3",
            "check now",
            "heap nodes=1",
            "heap nodes=1 frames_per_node=64 policy=linux",
            "frobnicate",
        ] {
            assert!(parse_line(bad).is_err(), "{bad} parsed");
        }
        let long: String = core::iter::once("check".into()).chain((0..100_000).map(|i| format!(" k{i}=1"))).collect();
        assert!(parse_line(&long).is_err(), "a line of many words is refused, and quickly");
    }

    #[test]
    fn each_line_kind() {
        let mut r = Replayer::new();
        let lines = [
            "heap nodes=2 frames_per_node=4096 movable_from=2048 policy=xen",
            "alloc id=a dom=1 order=9",
            "alloc id=b dom=2 order=3 node=1 exact",
            "alloc id=c dom=3 order=0 node=1 movable",
            "alloc id=d dom=3 order=4 noscrub",
            "free id=a offset=0x100 order=8",
            "free id=a",
            "scrub node=0 pages=100",
            "claim dom=7 node=0 pages=64",
            "claim dom=7 global pages=64",
            "claim dom=7 cancel",
            "check",
        ];
        for l in lines {
            assert_eq!(kind_of(&mut r, l), "", "{l}");
            clean(&r);
        }
        let heap = r.heap().unwrap();
        assert_eq!(heap.policy(), Policy::Xen);
        assert_eq!(r.allocation("b").unwrap().node, 1);
        let c = r.allocation("c").unwrap();
        assert_eq!(heap.chunk_at(c.first).unwrap().zone, Zone::Movable);
        let b = r.allocation("b").unwrap();
        assert_eq!(kind_of(&mut r, &format!("free mfn={:#x} order=3 dom=2", b.first.0)), "");
        assert!(r.allocation("b").is_none());
        let rep = r.finish();
        assert_eq!((rep.ops, rep.ok), (13, 13));
        assert_eq!(rep.final_.allocated, 1 + 16);
        assert_eq!(rep.final_.free_dirty, 512 + 8 - 100);
        assert_eq!(rep.final_.free_clean + rep.final_.free_dirty + rep.final_.allocated, 8192);
        assert_eq!(rep.invariant_violations, 0);
    }

    #[test]
    fn heap_errors_by_variant_name() {
        let mut r = Replayer::new();
        kind_of(&mut r, HEAP);
        assert_eq!(kind_of(&mut r, "alloc id=a dom=1 order=12 node=0 exact"), "");
        assert_eq!(kind_of(&mut r, "alloc id=b dom=1 order=12 node=0 exact"), "OutOfMemory");
        assert_eq!(kind_of(&mut r, "alloc id=b dom=1 order=19"), "InvalidOrder");
        assert_eq!(kind_of(&mut r, "alloc id=b dom=1 order=0 node=2"), "NoSuchNode");
        assert_eq!(kind_of(&mut r, "scrub node=9 pages=1"), "NoSuchNode");
        assert_eq!(kind_of(&mut r, "free mfn=0 order=0 dom=2"), "WrongOwner");
        assert_eq!(kind_of(&mut r, "free mfn=4096 order=0 dom=1"), "NotAllocated");
        assert_eq!(kind_of(&mut r, "free mfn=8192 order=0 dom=1"), "OutOfRange");
        assert_eq!(kind_of(&mut r, "free mfn=1 order=1 dom=1"), "Unaligned");
        assert_eq!(kind_of(&mut r, "free mfn=0 order=13 dom=1"), "CrossesNode");
        assert_eq!(kind_of(&mut r, "free id=a offset=0 order=13"), "CrossesNode");
        assert_eq!(kind_of(&mut r, "free id=a offset=0x1000000 order=0"), "OutOfRange");
        assert_eq!(kind_of(&mut r, "free id=a offset=0xffffffffffffffff order=0"), "OutOfRange");
        assert_eq!(kind_of(&mut r, "alloc id=c dom=1 order=0 node=1"), "");
        assert_eq!(kind_of(&mut r, "free mfn=4096 order=1 dom=1"), "OrderTooLarge");
        assert_eq!(kind_of(&mut r, "claim dom=2 node=1 pages=5000"), "ClaimExceedsFree");
        assert_eq!(kind_of(&mut r, "claim dom=2 global pages=5000"), "ClaimExceedsFree");
        assert_eq!(kind_of(&mut r, "heap nodes=0 frames_per_node=64"), "InvalidConfig");
        assert_eq!(kind_of(&mut r, "heap nodes=1 frames_per_node=64 movable_from=65"), "InvalidConfig");
        let rep = r.finish();
        assert_eq!(rep.invariant_violations, 0, "{:?}", rep.violations);
        assert_eq!(rep.ops, 20);
        assert_eq!(rep.errors["InvalidConfig"], 2);
    }

    #[test]
    fn replayer_errors() {
        let mut r = Replayer::with_max_frames(1 << 16);
        assert_eq!(kind_of(&mut r, "alloc id=a dom=1 order=0"), "NoHeap");
        assert_eq!(kind_of(&mut r, "check"), "NoHeap");
        assert_eq!(kind_of(&mut r, "heap nodes=2 frames_per_node=32769"), "TooLarge");
        assert_eq!(kind_of(&mut r, "heap nodes=2000 frames_per_node=1"), "TooLarge");
        assert_eq!(kind_of(&mut r, "heap nodes=0x100000000 frames_per_node=0x100000000"), "TooLarge");
        assert_eq!(kind_of(&mut r, "heap nodes=2 frames_per_node=32768"), "");
        assert_eq!(kind_of(&mut r, "alloc id=a dom=1 order=0"), "");
        assert_eq!(kind_of(&mut r, "alloc id=a dom=1 order=0"), "DuplicateId");
        assert_eq!(kind_of(&mut r, "free id=b"), "UnknownId");
        assert_eq!(kind_of(&mut r, "free id=b offset=0 order=0"), "UnknownId");
        assert_eq!(kind_of(&mut r, "alloc"), "Parse");
        assert_eq!(kind_of(&mut r, "# comment"), "skipped");
        assert_eq!(kind_of(&mut r, "free id=a"), "");
        assert_eq!(kind_of(&mut r, "free id=a"), "UnknownId");
        assert_eq!(kind_of(&mut r, "alloc id=a dom=1 order=0"), "", "a freed id may be used again");
        let rep = r.finish();
        assert_eq!(rep.ops, 14);
        assert_eq!(rep.ok, 4);
        assert!(!rep.errors.contains_key("Unsupported"), "every verb is replayed");
        assert_eq!(rep.errors["TooLarge"], 3);
        assert_eq!(rep.errors["UnknownId"], 3);
        assert_eq!(rep.invariant_violations, 0, "{:?}", rep.violations);
        assert_eq!(rep.final_.allocated, 1);
    }

    #[test]
    fn partial_frees_split_what_remains() {
        let mut r = Replayer::new();
        kind_of(&mut r, HEAP);
        assert_eq!(kind_of(&mut r, "alloc id=a dom=1 order=4 node=0"), "");
        let first = r.allocation("a").unwrap().first;
        assert_eq!(kind_of(&mut r, "free id=a offset=5 order=0"), "");
        let a = r.allocation("a").unwrap();
        let rel: Vec<(u64, u8)> = a.remaining.iter().map(|&(m, o)| (m.0 - first.0, o)).collect();
        assert_eq!(rel, [(0, 2), (4, 0), (6, 1), (8, 3)]);
        assert_eq!(kind_of(&mut r, "free id=a offset=5 order=0"), "NotAllocated");
        assert_eq!(kind_of(&mut r, "free id=a offset=4 order=1"), "OrderTooLarge");
        assert_eq!(kind_of(&mut r, "free id=a offset=3 order=1"), "Unaligned");
        assert_eq!(kind_of(&mut r, "free id=a offset=8 order=3"), "");
        assert_eq!(r.heap().unwrap().stats().allocated, 7);
        assert_eq!(kind_of(&mut r, "free id=a"), "");
        assert!(r.allocation("a").is_none());
        assert_eq!(r.heap().unwrap().stats().allocated, 0);
        clean(&r);
        let rep = r.finish();
        assert_eq!(rep.invariant_violations, 0, "{:?}", rep.violations);
        assert_eq!(rep.final_.free_dirty, 16);
    }

    #[test]
    fn frees_that_span_ids_of_one_owner() {
        let mut r = Replayer::new();
        kind_of(&mut r, "heap nodes=1 frames_per_node=64");
        assert_eq!(kind_of(&mut r, "alloc id=a dom=1 order=0"), "");
        assert_eq!(kind_of(&mut r, "alloc id=b dom=1 order=0"), "");
        let (a, b) = (r.allocation("a").unwrap().first.0, r.allocation("b").unwrap().first.0);
        assert_eq!(a ^ b, 1, "buddies");
        // The heap lets an owner free any aligned range it holds, across allocations.
        assert_eq!(kind_of(&mut r, &format!("free mfn={} order=1 dom=1", a.min(b))), "");
        assert!(r.allocation("a").is_none() && r.allocation("b").is_none());
        // A freed part that was allocated again to another id is that id's now.
        assert_eq!(kind_of(&mut r, "alloc id=c dom=2 order=3"), "");
        assert_eq!(kind_of(&mut r, "free id=c offset=2 order=1"), "");
        assert_eq!(kind_of(&mut r, "alloc id=d dom=2 order=1"), "");
        let d = r.allocation("d").unwrap().first;
        assert_eq!(d.0, r.allocation("c").unwrap().first.0 + 2);
        assert_eq!(kind_of(&mut r, "free id=c offset=0 order=2"), "", "frees c's first half and all of d");
        assert!(r.allocation("d").is_none());
        assert_eq!(r.allocation("c").unwrap().remaining.len(), 1);
        let rep = r.finish();
        assert_eq!(rep.invariant_violations, 0, "{:?}", rep.violations);
        assert_eq!(rep.final_.allocated, 4);
    }

    #[test]
    fn claim_lines_set_one_entry_and_keep_the_others() {
        let mut r = Replayer::new();
        kind_of(&mut r, HEAP);
        let claims = |r: &Replayer, d: u32| r.heap().unwrap().claims_of(DomId(d));
        let node = |n, frames| Claim { target: ClaimTarget::Node(n), frames };
        let global = |frames| Claim { target: ClaimTarget::Global, frames };
        assert_eq!(kind_of(&mut r, "claim dom=1 node=0 pages=100"), "");
        assert_eq!(kind_of(&mut r, "claim dom=1 node=1 pages=200"), "");
        assert_eq!(kind_of(&mut r, "claim dom=1 global pages=300"), "");
        assert_eq!(claims(&r, 1), [global(300), node(0, 100), node(1, 200)]);
        assert_eq!(kind_of(&mut r, "claim dom=1 node=0 pages=50"), "");
        assert_eq!(claims(&r, 1), [global(300), node(0, 50), node(1, 200)]);
        assert_eq!(kind_of(&mut r, "claim dom=1 node=1 pages=0"), "");
        assert_eq!(claims(&r, 1), [global(300), node(0, 50)]);
        // A refused entry leaves the whole set as it was.
        assert_eq!(kind_of(&mut r, "claim dom=1 node=1 pages=5000"), "ClaimExceedsFree");
        assert_eq!(kind_of(&mut r, "claim dom=1 node=5 pages=1"), "NoSuchNode");
        assert_eq!(claims(&r, 1), [global(300), node(0, 50)]);
        // Totals that overflow are refused, not summed.
        assert_eq!(kind_of(&mut r, "claim dom=1 global pages=0xffffffffffffffff"), "ClaimExceedsFree");
        assert_eq!(claims(&r, 1), [global(300), node(0, 50)]);
        // Others may not eat into the claim; the claimant's allocations retire it.
        assert_eq!(kind_of(&mut r, "claim dom=2 node=0 pages=4090"), "ClaimExceedsFree");
        assert_eq!(kind_of(&mut r, "alloc id=a dom=1 order=5 node=0 exact"), "");
        assert_eq!(claims(&r, 1), [global(300), node(0, 18)]);
        assert_eq!(kind_of(&mut r, "claim dom=1 cancel"), "");
        assert!(claims(&r, 1).is_empty());
        assert_eq!(kind_of(&mut r, "claim dom=9 cancel"), "");
        let rep = r.finish();
        assert_eq!(rep.invariant_violations, 0, "{:?}", rep.violations);
    }

    #[test]
    fn a_heap_line_ends_the_heap_and_its_ids() {
        let rep = run("heap nodes=1 frames_per_node=64\nalloc id=a dom=1 order=0\n\
             heap nodes=1 frames_per_node=128\nfree id=a\nalloc id=a dom=1 order=0\n");
        assert_eq!(errs(&rep), [("UnknownId", 1)]);
        assert_eq!(rep.final_, FinalCounts { free_clean: 127, free_dirty: 0, allocated: 1, offline: 0 });
        let rep = run("heap nodes=1 frames_per_node=64\nheap nodes=1 frames_per_node=0\ncheck\n");
        assert_eq!(errs(&rep), [("InvalidConfig", 1), ("NoHeap", 1)]);
        assert_eq!(rep.final_, FinalCounts::default());
    }

    #[test]
    fn crlf_and_every_policy() {
        for p in Policy::ALL {
            let text = alloc::format!(
                "heap nodes=2 frames_per_node=1024 policy={p}\r\nalloc id=a dom=1 order=10\r\nfree id=a\r\n\
                 alloc id=b dom=2 order=9\r\nscrub node=1 pages=1024\r\nscrub node=0 pages=1024\r\ncheck\r\n"
            );
            let rep = run(&text);
            assert_eq!((rep.ops, rep.ok), (7, 7), "{p}: {:?}", rep.errors);
            assert_eq!(rep.invariant_violations, 0, "{p}: {:?}", rep.violations);
            assert_eq!(rep.final_.allocated, 512);
        }
    }

    #[test]
    fn garbage_bytes_never_panic() {
        // A small deterministic generator (xorshift) of hostile inputs: raw bytes, and
        // op-log words with hostile numbers.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let words = [
            "heap",
            "alloc",
            "free",
            "scrub",
            "claim",
            "check",
            "pin",
            "id=a",
            "id=b",
            "dom=1",
            "dom=2",
            "order=0",
            "order=9",
            "order=18",
            "order=255",
            "node=0",
            "node=1",
            "node=99",
            "exact",
            "movable",
            "noscrub",
            "offset=0",
            "offset=0xffffffffffffffff",
            "mfn=0",
            "mfn=0x3ff",
            "pages=1",
            "pages=0xffffffffffffffff",
            "global",
            "cancel",
            "nodes=2",
            "nodes=1024",
            "frames_per_node=512",
            "frames_per_node=0xffffffff",
            "movable_from=256",
            "policy=xen",
            "policy=sync",
            "#",
            "\n",
            "\n",
            "\n",
            "=",
            "\u{fffd}",
        ];
        for round in 0..200 {
            let mut bytes = Vec::new();
            if round % 2 == 0 {
                bytes.extend((0..512).map(|_| next() as u8));
            } else {
                for _ in 0..300 {
                    bytes.extend_from_slice(words[(next() % words.len() as u64) as usize].as_bytes());
                    bytes.push(b' ');
                }
            }
            let mut r = Replayer::with_max_frames(1 << 16);
            r.replay_bytes(&bytes);
            let rep = r.finish();
            assert_eq!(rep.ok + rep.errors.values().sum::<u64>(), rep.ops);
            assert_eq!(rep.invariant_violations, 0, "{:?}", rep.violations);
        }
    }

    #[test]
    fn pins_offlines_and_broken_frames_replay() {
        let mut r = Replayer::new();
        let lines = [
            ("heap nodes=2 frames_per_node=4096 movable_from=2048", ""),
            ("alloc id=m dom=1 order=4 node=0 movable", ""),
            ("alloc id=u dom=2 order=2 node=0", ""),
            ("pin id=u offset=0 order=1", ""),
            ("free id=u offset=0 order=1", "Pinned"),
            ("unpin id=u offset=2 order=1", "NotPinned"),
            ("pin id=m offset=4 order=2", ""),
            ("free id=m offset=4 order=2", "Pinned"),
            ("unpin id=m offset=4 order=2", ""),
            ("free id=m offset=4 order=0", ""),
            ("offline mfn=0 count=2048", "OfflineBlocked"),
            ("offline mfn=2048 count=2048 steps=0", "OfflineBlocked"),
            ("offline mfn=2048 count=2048", ""),
            ("online mfn=2048 count=1024", ""),
            ("online mfn=0 count=1", "NotOffline"),
            ("broken mfn=0x10", ""),
            ("broken mfn=0x1000000", "OutOfRange"),
            ("check", ""),
            ("free id=m", ""),
            ("free id=u", "Pinned"),
            ("unpin id=u offset=0 order=1", ""),
            ("free id=u", ""),
        ];
        for (l, want) in lines {
            assert_eq!(kind_of(&mut r, l), want, "{l}");
            clean(&r);
        }
        let rep = r.finish();
        assert_eq!(rep.final_.offline, 1024 + 1);
        assert_eq!(rep.final_.allocated, 0);
        assert_eq!(rep.invariant_violations, 0, "{:?}", rep.violations);
        for bad in ["pin id=a order=0", "offline mfn=0", "online count=3", "broken", "broken mfn=1 dom=2"] {
            assert!(parse_line(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn kinds_are_variant_names() {
        assert_eq!(heap_error_kind(&HeapError::InvalidConfig("x (y)".into())), "InvalidConfig");
        assert_eq!(heap_error_kind(&HeapError::NotAllocated { mfn: Mfn(3) }), "NotAllocated");
    }
}
