//! The PoD layer's invariants, checked from scratch against the heap's public view.

use crate::guest::Guest;
use crate::p2m::{Slot, E4, SP, SP_ORDER};
use crate::PodViolation;
use alloc::format;
use alloc::vec::Vec;
use scrubheap::{ChunkState, FrameMemory, Heap, Mfn};

impl Guest {
    /// Every frame the guest holds, as aligned runs (first frame, order).
    pub(crate) fn pieces(&self) -> Vec<(u64, u8)> {
        let mut v: Vec<(u64, u8)> = Vec::new();
        for slot in &self.p2m.slots {
            match slot {
                Slot::Ram(m) => v.push((*m, SP_ORDER)),
                Slot::Split(e) => {
                    v.extend(e.iter().filter_map(|x| if let E4::Ram(m) = x { Some((*m, 0)) } else { None }))
                }
                Slot::Pod | Slot::Invalid => {}
            }
        }
        v.extend(self.cache2m.iter().map(|&m| (m, SP_ORDER)));
        v.extend(self.cache4k.iter().map(|&m| (m, 0)));
        v
    }

    /// Counts the p2m's RAM and PoD entries, checking each slot's shape: `(populated,
    /// entries)`.
    fn count_p2m(&self) -> Result<(u64, u64), PodViolation> {
        let d = self.dom;
        let bad = |m: alloc::string::String| Err(PodViolation(format!("{d}: {m}")));
        let (mut populated, mut entries) = (0u64, 0u64);
        for (s, slot) in self.p2m.slots.iter().enumerate() {
            match slot {
                Slot::Ram(m) if m % SP != 0 => return bad(format!("slot {s} maps unaligned superpage {m:#x}")),
                Slot::Ram(_) => populated += SP,
                Slot::Pod if (s as u64 + 1) * SP > self.max_pages => {
                    return bad(format!("slot {s} is a 2 MiB PoD entry beyond max_pages {}", self.max_pages))
                }
                Slot::Pod => entries += SP,
                Slot::Invalid => {}
                Slot::Split(e) => {
                    if e.len() as u64 != SP {
                        return bad(format!("split slot {s} has {} entries", e.len()));
                    }
                    for (i, x) in e.iter().enumerate() {
                        let beyond = s as u64 * SP + i as u64 >= self.max_pages;
                        match x {
                            E4::Ram(_) | E4::Pod if beyond => {
                                return bad(format!(
                                    "gfn {:#x} is beyond max_pages but valid",
                                    s as u64 * SP + i as u64
                                ))
                            }
                            E4::Ram(_) => populated += 1,
                            E4::Pod => entries += 1,
                            E4::Invalid => {}
                        }
                    }
                }
            }
        }
        Ok((populated, entries))
    }

    /// This guest's invariants; returns the frames it holds.
    pub(crate) fn check<M: FrameMemory>(&self, heap: &Heap<M>) -> Result<Vec<(u64, u8)>, PodViolation> {
        let d = self.dom;
        let bad = |m: alloc::string::String| Err(PodViolation(format!("{d}: {m}")));
        let (populated, entries) = self.count_p2m()?;
        // A destroyed guest's drain drops slots from the p2m's end, with their frames.
        let slots = self.p2m.slots.len() as u64;
        if slots > self.max_pages.div_ceil(SP) || (!self.gone && slots != self.max_pages.div_ceil(SP)) {
            return bad(format!("p2m has {} slots for {} pages", self.p2m.slots.len(), self.max_pages));
        }
        if (populated, entries) != (self.populated, self.entries) {
            return bad(format!(
                "counts populated {} entries {} but the p2m holds {populated} and {entries}",
                self.populated, self.entries
            ));
        }
        let sp = self.p2m.slots.iter().filter(|s| matches!(s, Slot::Ram(_))).count() as u64;
        if sp != self.superpage_mappings {
            return bad(format!("counts {} 2 MiB mappings but the p2m holds {sp}", self.superpage_mappings));
        }
        let cache = self.cache_frames();
        // A dying guest's cache is only frames to free (its drain drops entries first).
        if !self.gone && cache > self.cache_cap() {
            return bad(format!(
                "cache {cache} exceeds its cap: entries {}, populated {}, target {} (adjusting to {:?})",
                self.entries, self.populated, self.target, self.adjusting
            ));
        }
        let pieces = self.pieces();
        let held: u64 = pieces.iter().map(|&(_, o)| 1u64 << o).sum();
        if held != self.populated + cache {
            return bad(format!("holds {held} frames, not populated {} + cache {cache}", self.populated));
        }
        for &(m, o) in &pieces {
            // The heap may have split the allocation (a broken frame inside it, say): every
            // chunk over the piece must be a sealed allocation of the guest.
            let mut at = m;
            while at < m + (1u64 << o) {
                match heap.chunk_at(Mfn(at)) {
                    Ok(c) if matches!(c.state, ChunkState::Allocated { owner, sealed: true, .. } if owner == d) => {
                        at = c.extent.mfn.0 + c.extent.frames();
                    }
                    Ok(c) => return bad(format!("holds {m:#x} order {o}, but {at:#x} is {c:?}")),
                    Err(e) => return bad(format!("holds {m:#x}: {e}")),
                }
            }
        }
        for &m in &self.cache2m {
            if m % SP != 0 || !heap.memory().is_zero(Mfn(m), SP) {
                return bad(format!("cached superpage {m:#x} is unaligned or not zero"));
            }
        }
        for &m in &self.cache4k {
            if !heap.memory().is_zero(Mfn(m), 1) {
                return bad(format!("cached page {m:#x} is not zero"));
            }
        }
        Ok(pieces)
    }
}
