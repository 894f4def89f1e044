//! Guests: create (claim, then populate with 1 GiB, 2 MiB, then 4 KiB extents), run
//! (write the tenant's tag into every page), destroy. Two backends: the scrubheap pool,
//! and the `kernel` baseline that does what VMMs do today (fresh anonymous memory,
//! zeroed by the kernel at fault, released with munmap).

pub use crate::arena::tag_of;
use crate::instrument::PreemptRecorder;
use crate::pool::{retry_busy, Pool, PoolHandle, SAMPLED_WORDS_PER_FRAME};
use crate::tenants::pins::unpin_all;
use scrubheap::{AllocRequest, Claim, ClaimTarget, DomId, Extent, HeapError, Mfn};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// The orders a guest is populated with, largest first: 1 GiB, 2 MiB, 4 KiB.
pub const POPULATE_ORDERS: [u8; 3] = [18, 9, 0];

/// A guest's memory in the pool.
#[derive(Debug)]
pub struct Guest {
    /// Its domain id.
    pub dom: DomId,
    /// Its extents.
    pub extents: Vec<Extent>,
    /// Pages it holds long-term pinned (each also inside one of its extents).
    pub pins: Vec<Extent>,
}

/// What creating a guest found.
#[derive(Debug, Default)]
pub struct Created {
    /// Milliseconds from the first claim to the last extent handed over.
    pub ms: f64,
    /// 1 GiB or 2 MiB allocations that failed and fell back to smaller extents.
    pub highorder_failures: u64,
}

/// A guest's life on the pool (create, run, balloon, destroy): the guest layer's
/// operations, kept out of [`Pool`]'s own impl so the pool knows nothing of guests.
pub trait GuestOps {
    /// Creates a guest of `bytes` (rounded up to 4 KiB): claims its memory on the node,
    /// of those with room for it, with the most clean memory (globally on the node with
    /// the most room if none has room for all of it), then populates it
    /// largest extents first, falling back to smaller ones where a large one cannot be
    /// had. Guest memory is movable (the hypervisor may move it and update the guest's
    /// frame list), so it comes from the Movable zone first. On failure every extent is
    /// returned and the claim cancelled.
    fn create_guest(&self, dom: DomId, bytes: u64, rec: &PreemptRecorder) -> Result<(Guest, Created), HeapError>;
    /// The guest runs: writes its tag into every page it owns, at memory speed.
    fn run_guest(&self, g: &Guest);
    /// Balloons out: the guest's balloon driver hands back `frames` frames (at most all
    /// but one of its frames) from the top of its memory, as the largest aligned parts of
    /// its extents (a 1 GiB extent losing 300 MiB becomes a 512 MiB, a 128 MiB, a 64 MiB
    /// ... extent; the heap splits the allocation and frees the parts). Freed memory is
    /// dirty, scrubbed in the background like any other. Extents holding a long-term
    /// pinned page (a device's DMA buffer) are kept. Returns what was freed, as
    /// `(mfn, order)` parts, in the order freed.
    fn balloon_out(&self, g: &mut Guest, frames: u64, rec: &PreemptRecorder) -> Vec<(Mfn, u8)>;
    /// Balloons in: the guest asks for `frames` frames back, populated like a creation
    /// (largest extents first, without a claim: another guest may have taken the memory
    /// meanwhile). Returns the extents added; fewer frames than asked when the host has
    /// no more.
    fn balloon_in(&self, g: &mut Guest, frames: u64, node: usize, rec: &PreemptRecorder) -> Vec<Extent>;
    /// Destroys a guest: its pins dropped, every extent back to the pool. Returns
    /// milliseconds taken.
    fn destroy_guest(&self, g: Guest, rec: &PreemptRecorder) -> f64;
}

impl GuestOps for Pool {
    fn create_guest(&self, dom: DomId, bytes: u64, rec: &PreemptRecorder) -> Result<(Guest, Created), HeapError> {
        let t = Instant::now();
        let frames = bytes.div_ceil(4096);
        let heap = self.heap();
        let node = build_node(heap, frames);
        let room = heap.node_stats(node).map(|s| room_of(&s))?;
        let target = if room >= frames { ClaimTarget::Node(node) } else { ClaimTarget::Global };
        self.claim(dom, &[Claim { target, frames }])?;
        let mut g = Guest { dom, extents: Vec::new(), pins: Vec::new() };
        let mut c = Created::default();
        let mut left = frames;
        for order in POPULATE_ORDERS {
            while left >= 1 << order {
                match self.alloc(&AllocRequest::new(order, dom).on(node).movable(), rec) {
                    Ok(e) => {
                        left -= e.frames();
                        g.extents.push(e);
                    }
                    Err(HeapError::OutOfMemory { .. }) if order > 0 => {
                        c.highorder_failures += 1;
                        break;
                    }
                    Err(e) => {
                        heap.claim_cancel(dom);
                        self.destroy_guest(g, rec);
                        return Err(e);
                    }
                }
            }
        }
        heap.claim_cancel(dom);
        c.ms = t.elapsed().as_secs_f64() * 1e3;
        Ok((g, c))
    }

    fn run_guest(&self, g: &Guest) {
        for e in &g.extents {
            self.arena().fill(e.mfn, e.frames(), tag_of(g.dom));
        }
    }

    fn balloon_out(&self, g: &mut Guest, frames: u64, rec: &PreemptRecorder) -> Vec<(Mfn, u8)> {
        let total: u64 = g.extents.iter().map(Extent::frames).sum();
        let mut need = frames.min(total.saturating_sub(1));
        let mut freed = Vec::new();
        let mut pinned = Vec::new();
        while need > 0 {
            let Some(e) = g.extents.pop() else { break };
            if g.pins.iter().any(|p| p.mfn.0 < e.mfn.0 + e.frames() && e.mfn.0 < p.mfn.0 + p.frames()) {
                pinned.push(e);
                continue;
            }
            let mut kept = Vec::new();
            release(e, &mut need, &mut kept, &mut freed);
            g.extents.extend(kept);
        }
        g.extents.extend(pinned);
        for &(mfn, order) in &freed {
            retry_busy(|| self.free(mfn, order, g.dom, rec))
                .expect("a guest frees an aligned part of what it was given");
        }
        freed
    }

    fn balloon_in(&self, g: &mut Guest, frames: u64, node: usize, rec: &PreemptRecorder) -> Vec<Extent> {
        let mut left = frames;
        let mut got = Vec::new();
        for order in POPULATE_ORDERS {
            while left >= 1 << order {
                match self.alloc(&AllocRequest::new(order, g.dom).on(node).movable(), rec) {
                    Ok(e) => {
                        left -= e.frames();
                        got.push(e);
                    }
                    Err(_) => break,
                }
            }
        }
        for e in &got {
            self.arena().fill(e.mfn, e.frames(), tag_of(g.dom));
        }
        g.extents.extend(got.iter().copied());
        got
    }

    fn destroy_guest(&self, g: Guest, rec: &PreemptRecorder) -> f64 {
        GuestTeardown::destroy_guest(&self.core, g, rec)
    }
}

/// Free frames of a node nobody else has claimed.
fn room_of(s: &scrubheap::NodeStats) -> u64 {
    (s.free() + s.scrubbing).saturating_sub(s.claimed)
}

/// The node a guest of `frames` is built on: of the nodes with room for all of it, the one
/// with the most clean memory (so its extents need no scrub in place: free memory a
/// departed guest just left is dirty until the scrubbers reach it); if none has room,
/// the one with the most room (the claim is then global). Ties go to the lower node.
fn build_node(heap: &scrubheap::Heap<crate::Arena>, frames: u64) -> usize {
    let node = (0..heap.node_count())
        .max_by_key(|&n| {
            let s = heap.node_stats(n).unwrap_or_default();
            let room = room_of(&s);
            let fits = room >= frames;
            (fits, if fits { s.free_clean.min(room) } else { 0 }, room, std::cmp::Reverse(n))
        })
        .unwrap_or(0);
    debug_assert!(node < heap.node_count().max(1));
    node
}

/// Tearing a guest down, which needs only a [`PoolHandle`]: what a guest's memory holds
/// so that its frames can go back to the heap after the [`Pool`] itself is gone.
pub trait GuestTeardown {
    /// Destroys a guest: its pins dropped, every extent back to the heap, dirty, and
    /// the scrubbers woken. Returns milliseconds taken.
    fn destroy_guest(&self, g: Guest, rec: &PreemptRecorder) -> f64;
}

impl GuestTeardown for PoolHandle {
    fn destroy_guest(&self, mut g: Guest, rec: &PreemptRecorder) -> f64 {
        let t = Instant::now();
        unpin_all(self.heap(), &mut g, rec);
        for e in g.extents {
            retry_busy(|| self.free(e.mfn, e.order, g.dom, rec)).expect("a guest frees exactly what it was given");
        }
        t.elapsed().as_secs_f64() * 1e3
    }
}

/// Releases up to `*need` frames from the top of `e`: the largest aligned parts go to
/// `freed`, what stays with the guest to `kept`.
fn release(e: Extent, need: &mut u64, kept: &mut Vec<Extent>, freed: &mut Vec<(Mfn, u8)>) {
    if *need == 0 {
        kept.push(e);
    } else if *need >= e.frames() {
        *need -= e.frames();
        freed.push((e.mfn, e.order));
    } else {
        let half = 1u64 << (e.order - 1);
        let lo = Extent { order: e.order - 1, ..e };
        let hi = Extent { mfn: Mfn(e.mfn.0 + half), order: e.order - 1, ..e };
        release(hi, need, kept, freed);
        release(lo, need, kept, freed);
    }
}

/// The `kernel` baseline: each guest gets fresh anonymous memory, prefaulted with
/// `MADV_POPULATE_WRITE` (the kernel zeroes every page at fault), and gives it back
/// with `munmap`. Its pages are leak-checked at each handoff as the pool's are when not
/// in verify mode (16 words of each page), at fixed offsets and without `--verify`.
#[derive(Default)]
pub struct KernelBackend {
    /// Pages checked.
    pub pages_checked: AtomicU64,
    /// Pages holding a non-zero sampled word.
    pub nonzero_pages: AtomicU64,
    /// Words read.
    pub words_checked: AtomicU64,
    /// Bytes the kernel zeroed at fault.
    pub bytes_zeroed: AtomicU64,
}

/// A guest of the kernel baseline: its own mapping.
#[derive(Debug)]
pub struct KernelGuest {
    ptr: *mut u8,
    len: usize,
    dom: DomId,
}

// SAFETY: the mapping is owned by this guest alone and only touched through its methods.
unsafe impl Send for KernelGuest {}

impl KernelGuest {
    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: guests have memory).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl KernelBackend {
    /// Maps and prefaults `bytes` (rounded up to 4 KiB) for guest `dom`; leak-checks them.
    pub fn create_guest(&self, dom: DomId, bytes: u64) -> std::io::Result<(KernelGuest, f64)> {
        let t = Instant::now();
        let len = (bytes.div_ceil(4096) * 4096) as usize;
        let ptr = crate::map_anonymous(len, libc::MAP_NORESERVE)?.as_ptr();
        let p = ptr.cast::<libc::c_void>();
        let g = KernelGuest { ptr, len, dom };
        // SAFETY: [p, p+len) is the mapping just made.
        let rc = unsafe { libc::madvise(p, len, libc::MADV_POPULATE_WRITE) };
        if rc != 0 {
            // Kernels before 5.14 lack MADV_POPULATE_WRITE: touch every page instead.
            for off in (0..len).step_by(4096) {
                // SAFETY: off < len, inside the mapping this guest owns.
                unsafe { g.ptr.add(off).write_volatile(0) };
            }
        }
        let ms = t.elapsed().as_secs_f64() * 1e3;
        self.bytes_zeroed.fetch_add(len as u64, Relaxed);
        self.leak_check(&g);
        Ok((g, ms))
    }

    fn words(g: &KernelGuest) -> &[u64] {
        // SAFETY: the mapping is len bytes, page aligned, readable, and owned by `g`,
        // which the borrow keeps alive.
        unsafe { std::slice::from_raw_parts(g.ptr.cast::<u64>(), g.len / 8) }
    }

    fn leak_check(&self, g: &KernelGuest) {
        self.leak_check_words(Self::words(g));
    }

    fn leak_check_words(&self, w: &[u64]) {
        let mut bad = 0;
        for page in w.chunks_exact(512) {
            let stride = 512 / SAMPLED_WORDS_PER_FRAME;
            bad += (0..SAMPLED_WORDS_PER_FRAME).any(|i| page[i * stride] != 0) as u64;
        }
        let pages = (w.len() / 512) as u64;
        self.pages_checked.fetch_add(pages, Relaxed);
        self.words_checked.fetch_add(pages * SAMPLED_WORDS_PER_FRAME as u64, Relaxed);
        self.nonzero_pages.fetch_add(bad, Relaxed);
    }

    /// The guest writes its tag into every page.
    pub fn run_guest(&self, g: &mut KernelGuest) {
        let tag = tag_of(g.dom);
        // SAFETY: as in `words`, and `g` is borrowed mutably so nobody else reads it.
        let w = unsafe { std::slice::from_raw_parts_mut(g.ptr.cast::<u64>(), g.len / 8) };
        w.fill(tag);
    }

    /// Balloons out the top `bytes` (rounded down to 4 KiB) of the guest's memory as a
    /// VMM does for a virtio balloon: `MADV_DONTNEED`, so the kernel takes the pages
    /// back. Returns the bytes released.
    pub fn balloon_out(&self, g: &mut KernelGuest, bytes: u64) -> u64 {
        let b = (bytes as usize / 4096 * 4096).min(g.len - 4096);
        // SAFETY: [len - b, len) lies inside the mapping `g` owns, borrowed mutably.
        let rc = unsafe { libc::madvise(g.ptr.add(g.len - b).cast(), b, libc::MADV_DONTNEED) };
        if rc == 0 {
            b as u64
        } else {
            0
        }
    }

    /// Balloons the top `bytes` back in: faulted in again (the kernel zeroes them),
    /// leak-checked and written with the guest's tag.
    pub fn balloon_in(&self, g: &mut KernelGuest, bytes: u64) {
        let b = (bytes as usize).min(g.len);
        if b == 0 {
            return;
        }
        // SAFETY: [len - b, len) lies inside the mapping `g` owns, borrowed mutably.
        let region = unsafe { g.ptr.add(g.len - b) };
        // SAFETY: as above; populating a range of our own mapping.
        let rc = unsafe { libc::madvise(region.cast(), b, libc::MADV_POPULATE_WRITE) };
        if rc != 0 {
            for off in (0..b).step_by(4096) {
                // SAFETY: off < b, inside the region above.
                unsafe { region.add(off).write_volatile(0) };
            }
        }
        self.bytes_zeroed.fetch_add(b as u64, Relaxed);
        // SAFETY: the region is b bytes of the mapping, page aligned, and `g` is borrowed
        // mutably so nothing else touches it.
        let w = unsafe { std::slice::from_raw_parts_mut(region.cast::<u64>(), b / 8) };
        self.leak_check_words(w);
        w.fill(tag_of(g.dom));
    }

    /// Unmaps the guest's memory. Returns milliseconds taken.
    pub fn destroy_guest(&self, g: KernelGuest) -> f64 {
        let t = Instant::now();
        drop(g);
        t.elapsed().as_secs_f64() * 1e3
    }
}

impl Drop for KernelGuest {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this guest made; nothing else refers to it.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
