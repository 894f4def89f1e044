//! `check_invariants`: the partition, the free lists, the counters, the dirty bitmap and
//! the claims, verified from scratch. Tests call it after every operation.

use crate::chunk::{State, NONE};
use crate::claims::ClaimBook;
use crate::error::InvariantViolation;
use crate::heap::Heap;
use crate::memory::FrameMemory;
use crate::node::{Head, NodeState};
use crate::types::{DomId, Off, Zone, MAX_ORDER};
use crate::work::Kind;
use alloc::format;
use alloc::string::String;

fn fail<T>(msg: String) -> Result<T, InvariantViolation> {
    Err(InvariantViolation(msg))
}

#[derive(Default)]
struct Tally {
    free: u64,
    free_dirty: u64,
    allocated: u64,
    offline: u64,
    scrubbing: u64,
    free_chunks: u64,
    worked: u64,
}

fn check_node(n: usize, st: &NodeState) -> Result<Tally, InvariantViolation> {
    let mut t = Tally::default();
    let mut pos = Off(0);
    while pos < st.end() {
        let Some(s) = st.head_at(pos) else {
            return fail(format!("node {n}: frame offset {pos} starts no chunk"));
        };
        let o = s.order;
        let len = 1u32 << o;
        if o > MAX_ORDER || !st.fits(pos, o) {
            return fail(format!("node {n}: chunk at {pos} of order {o} is misaligned or overruns the node"));
        }
        if st.zone_of(pos) != st.zone_of(pos + (len - 1)) {
            return fail(format!("node {n}: chunk at {pos} of order {o} spans two zones"));
        }
        if let Some(i) = (1..len).map(|i| pos + i).find(|&i| !st.is_blank(i)) {
            return fail(format!("node {n}: frame {i} inside the chunk at {pos} carries metadata"));
        }
        let bits = st.dirty.count(pos, len) as u64;
        match s.state {
            State::Free => {
                check_free_chunk(n, st, pos, o)?;
                t.free += len as u64;
                t.free_dirty += bits;
                t.free_chunks += 1;
            }
            other => {
                check_held_head(n, st, pos, s)?;
                let worked = matches!(other, State::Scrubbing | State::Pending);
                let moving_to = other == State::Allocated && s.migrating;
                if bits != 0 && !worked && other != State::Isolated && !moving_to {
                    return fail(format!("node {n}: {other:?} chunk at {pos} has {bits} dirty bits"));
                }
                t.worked += worked as u64;
                check_work_entry(n, st, pos, s, worked)?;
                let background = st.work.iter().any(|w| w.head == pos && w.kind == Kind::Background);
                match other {
                    State::Allocated | State::Pending => t.allocated += len as u64,
                    State::Scrubbing if background => {
                        t.free += len as u64;
                        t.free_dirty += bits;
                        t.scrubbing += len as u64;
                    }
                    State::Scrubbing if bits != 0 => {
                        return fail(format!("node {n}: a sync free's chunk at {pos} has {bits} dirty bits"))
                    }
                    State::Scrubbing => t.allocated += len as u64,
                    _ => t.offline += len as u64,
                }
            }
        }
        pos += len;
    }
    let listed = st.check_lists(t.free_chunks).map_err(|e| InvariantViolation(format!("node {n}: {e}")))?;
    if st.work.len() as u64 != t.worked {
        return fail(format!("node {n}: {} work entries for {} chunks being worked on", st.work.len(), t.worked));
    }
    if listed != t.free_chunks {
        return fail(format!("node {n}: {} free chunks but {listed} on the lists", t.free_chunks));
    }
    let counted = (st.free, st.free_dirty, st.allocated, st.offline, st.scrubbing);
    let walked = (t.free, t.free_dirty, t.allocated, t.offline, t.scrubbing);
    if counted != walked {
        return fail(format!(
            "node {n}: counters (free, dirty, allocated, offline, scrubbing) = {counted:?}, walk = {walked:?}"
        ));
    }
    Ok(t)
}

/// A free chunk's first-dirty hint matches the bitmap, and its buddy (in the same zone)
/// is not a free chunk of the same order: free buddies always merge.
fn check_free_chunk(n: usize, st: &NodeState, pos: Off, o: u8) -> Result<(), InvariantViolation> {
    let len = 1u32 << o;
    let fd = st.first_dirty(pos);
    let exact = st.dirty.first_set(pos, len).unwrap_or(NONE);
    if fd != exact {
        return fail(format!("node {n}: free chunk at {pos} says first dirty {fd:#x}, bitmap says {exact:#x}"));
    }
    if o < MAX_ORDER {
        if let Some(b) = st.buddy(pos, o) {
            let bs = st.head_at(b);
            let free_buddy = bs.is_some_and(|bs| bs.state == State::Free && bs.order == o);
            if free_buddy && st.zone_of(b) == st.zone_of(pos) {
                return fail(format!(
                    "node {n}: free chunks at {pos} and {b} of order {o} are buddies but did not merge"
                ));
            }
        }
    }
    Ok(())
}

/// A held chunk being worked on (`worked`: scrubbing, or pending a ticket) has exactly one
/// work entry, of its kind, order and owner, and a background one has a batch in flight;
/// any other held chunk has none.
fn check_work_entry(n: usize, st: &NodeState, pos: Off, s: Head, worked: bool) -> Result<(), InvariantViolation> {
    let (other, o, len) = (s.state, s.order, 1u32 << s.order);
    let entries = st.work.iter().filter(|w| w.head == pos).count();
    if entries != worked as usize {
        return fail(format!("node {n}: {other:?} chunk at {pos} has {entries} work entries"));
    }
    if let Some(w) = st.work.iter().find(|w| w.head == pos) {
        let kind_ok = match w.kind {
            Kind::Ticket { owner, .. } => other == State::Pending && s.owner == owner,
            Kind::Background | Kind::SyncFree => other == State::Scrubbing,
        };
        // A background scrub exists only while a scrubber has a batch of it
        // in flight: the last one to leave hands the chunk back.
        let busy = w.kind != Kind::Background || w.inflight > 0;
        if !kind_ok || !busy || w.order != o || w.cursor > len {
            return fail(format!("node {n}: work entry {w:?} does not match its {other:?} chunk at {pos}"));
        }
    }
    Ok(())
}

/// Heads that are not free: pins only on allocations, the broken-when-freed and moving
/// flags only on allocations (the former on single frames), unmovable memory only in
/// the Normal zone, nothing at all on isolated, offline and broken heads (broken ones
/// single frames).
fn check_held_head(n: usize, st: &NodeState, pos: Off, s: Head) -> Result<(), InvariantViolation> {
    let state = s.state;
    let flags = s.broken || s.migrating || s.sealed;
    match state {
        State::Allocated => {
            if s.broken && s.order != 0 {
                return fail(format!("node {n}: allocated chunk at {pos} of order {} is marked broken", s.order));
            }
            if s.sealed && (s.movable || s.pins != 0 || s.migrating) {
                return fail(format!("node {n}: sealed allocation at {pos} is movable, pinned or moving {s:?}"));
            }
            if !s.movable && st.zone_of(pos) == Zone::Movable {
                return fail(format!("node {n}: unmovable allocation at {pos} is in the Movable zone"));
            }
        }
        State::Isolated | State::Offline | State::Broken => {
            if s.owner != DomId(0) || s.pins != 0 || flags || s.movable {
                return fail(format!("node {n}: {state:?} chunk at {pos} carries owner, pins or flags {s:?}"));
            }
            if state == State::Broken && s.order != 0 {
                return fail(format!("node {n}: broken chunk at {pos} has order {}", s.order));
            }
        }
        _ => {
            if s.pins != 0 || flags {
                return fail(format!("node {n}: {state:?} chunk at {pos} carries pins or flags {s:?}"));
            }
        }
    }
    if let Some(w) = st.work.iter().find(|w| w.head == pos) {
        if matches!(w.kind, Kind::Ticket { movable: false, .. }) && st.zone_of(pos) == Zone::Movable {
            return fail(format!("node {n}: an unmovable pending allocation at {pos} is in the Movable zone"));
        }
    }
    Ok(())
}

impl<M: FrameMemory> Heap<M> {
    /// Verifies every invariant of the heap from scratch: the partition of frames into
    /// aligned chunks, metadata only at heads, free lists and their masks, exact
    /// `first_dirty` hints, dirty bits only in free chunks, counters (and their lock-free
    /// mirrors) against a full walk, and claims against free memory. Layers above the heap
    /// check their own state with their own checkers.
    ///
    /// Takes every lock in turn; O(frames). Meant for tests and `check` lines.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let mut total_free = 0u64;
        let mut node_avail = alloc::vec::Vec::new();
        // Every node lock, in order, then the claims lock (as claim_set takes them): the
        // tickets' retired claims and the claim book are compared at one moment.
        let mut guards = alloc::vec::Vec::new();
        for (n, cell) in self.cells().iter().enumerate() {
            let st = self.lock_node_unobserved(n);
            if st.base != cell.base || st.frames as u64 != cell.frames {
                return fail(format!("node {n}: range disagrees with its cell"));
            }
            let t = check_node(n, &st)?;
            self.check_reserves(n, &st)?;
            let mirror = self.node_counters(n);
            if mirror != [st.free, st.free_dirty, st.allocated, st.offline, st.scrubbing] {
                return fail(format!("node {n}: published counters {mirror:?} are stale"));
            }
            let sum = t.free + t.allocated + t.offline;
            if sum != cell.frames {
                return fail(format!("node {n}: {sum} frames accounted of {}", cell.frames));
            }
            total_free += t.free;
            node_avail.push(t.free);
            guards.push(st);
        }
        let book = self.claim_book();
        check_tickets_claims(&book, &guards)?;
        let mut node_total = alloc::vec![0u64; self.node_count()];
        let mut global = 0u64;
        for (d, c) in &book.doms {
            if c.total() == 0 && c.in_tickets == 0 {
                return fail(format!("{d} has an empty claim entry"));
            }
            global += c.global;
            for (t, v) in node_total.iter_mut().zip(&c.nodes) {
                *t += v;
            }
        }
        if node_total != book.node_total || global != book.global_total {
            return fail(format!(
                "claim totals {:?}/{} disagree with the entries {node_total:?}/{global}",
                book.node_total, book.global_total
            ));
        }
        let mask = book.doms.keys().fold(0, |m, &d| m | ClaimBook::bit(d));
        if mask != book.claimants() || mask != self.claimants() {
            return fail(format!(
                "claimants mask {:#x} (published {:#x}) disagrees with the entries {mask:#x}",
                book.claimants(),
                self.claimants()
            ));
        }
        for (n, &t) in book.node_total.iter().enumerate() {
            if self.node_stats(n).map(|s| s.claimed) != Ok(t) {
                return fail(format!("node {n}: published claim total is stale"));
            }
        }
        for (n, (&claimed, &free)) in book.node_total.iter().zip(&node_avail).enumerate() {
            if claimed > free {
                return fail(format!("node {n}: {claimed} frames claimed but only {free} free or being scrubbed"));
            }
        }
        if book.outstanding() > total_free {
            return fail(format!("{} frames claimed but only {total_free} free", book.outstanding()));
        }
        drop(book);
        drop(guards);
        Ok(())
    }
}

/// The claims retired by unfinished scrub tickets agree with the claim book: in all, and
/// per domain for the tickets whose set is still installed. A ticket that gave back its
/// frames without its claim (or twice) breaks one of the two.
fn check_tickets_claims(
    book: &ClaimBook,
    nodes: &[impl core::ops::Deref<Target = NodeState>],
) -> Result<(), InvariantViolation> {
    let mut all = 0u64;
    let mut by_dom = alloc::collections::BTreeMap::<DomId, u64>::new();
    for (n, st) in nodes.iter().enumerate() {
        for w in &st.work {
            let Kind::Ticket { owner, claim, .. } = w.kind else { continue };
            if claim.frames() > w.frames() {
                return fail(format!(
                    "node {n}: a ticket of {} frames retired {} of claims",
                    w.frames(),
                    claim.frames()
                ));
            }
            all += claim.frames();
            if book.doms.get(&owner).is_some_and(|c| c.epoch == claim.epoch) {
                *by_dom.entry(owner).or_default() += claim.frames();
            }
        }
    }
    if all != book.in_tickets {
        return fail(format!("tickets hold {all} frames of retired claims, the claim book counts {}", book.in_tickets));
    }
    for (d, c) in &book.doms {
        let held = by_dom.get(d).copied().unwrap_or(0);
        if held != c.in_tickets {
            return fail(format!(
                "{d}: its tickets hold {held} frames of retired claims, its entry counts {}",
                c.in_tickets
            ));
        }
    }
    Ok(())
}
