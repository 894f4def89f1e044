//! Guests: create (claim, then populate with 1 GiB, 2 MiB, then 4 KiB extents), run
//! (write the tenant's tag into every page), destroy. Two backends: the scrubheap pool,
//! and the `kernel` baseline that does what VMMs do today (fresh anonymous memory,
//! zeroed by the kernel at fault, released with munmap).

use crate::instrument::PreemptRecorder;
use crate::pool::{Pool, SAMPLED_WORDS_PER_FRAME};
use scrubheap::{AllocRequest, Claim, ClaimTarget, DomId, Extent, HeapError};
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

/// The tag a tenant writes into its pages (never zero).
pub fn tag_of(dom: DomId) -> u64 {
    0x7a6_0000_0000_0000 | (dom.0 as u64) << 8 | 0xa5
}

impl Pool {
    /// Creates a guest of `bytes` (rounded up to 4 KiB): claims its memory on the node
    /// with the most free memory (globally if no node has room), then populates it
    /// largest extents first, falling back to smaller ones where a large one cannot be
    /// had. Guest memory is movable (the hypervisor may move it and update the guest's
    /// frame list), so it comes from the Movable zone first. On failure every extent is
    /// returned and the claim cancelled.
    pub fn create_guest(&self, dom: DomId, bytes: u64, rec: &PreemptRecorder) -> Result<(Guest, Created), HeapError> {
        let t = Instant::now();
        let frames = bytes.div_ceil(4096);
        let heap = self.heap();
        let node = (0..heap.node_count())
            .max_by_key(|&n| {
                let room = heap.node_stats(n).map_or(0, |s| (s.free() + s.scrubbing).saturating_sub(s.claimed));
                (room, std::cmp::Reverse(n))
            })
            .unwrap_or(0);
        let room = heap.node_stats(node).map(|s| (s.free() + s.scrubbing).saturating_sub(s.claimed))?;
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

    /// The guest runs: writes its tag into every page it owns, at memory speed.
    pub fn run_guest(&self, g: &Guest) {
        for e in &g.extents {
            self.arena().fill(e.mfn, e.frames(), tag_of(g.dom));
        }
    }

    /// Destroys a guest: its pins dropped, every extent back to the pool. Returns
    /// milliseconds taken.
    pub fn destroy_guest(&self, mut g: Guest, rec: &PreemptRecorder) -> f64 {
        let t = Instant::now();
        self.unpin_guest(&mut g);
        for e in g.extents {
            crate::hotplug::retry_busy(|| self.free(e.mfn, e.order, g.dom, rec))
                .expect("a guest frees exactly what it was given");
        }
        t.elapsed().as_secs_f64() * 1e3
    }
}

/// The `kernel` baseline: each guest gets fresh anonymous memory, prefaulted with
/// `MADV_POPULATE_WRITE` (the kernel zeroes every page at fault), and gives it back
/// with `munmap`. The same leak check runs on it.
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
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let g = KernelGuest { ptr: p.cast(), len, dom };
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
        let w = Self::words(g);
        let mut bad = 0;
        for page in w.chunks_exact(512) {
            let stride = 512 / SAMPLED_WORDS_PER_FRAME;
            bad += (0..SAMPLED_WORDS_PER_FRAME).any(|i| page[i * stride] != 0) as u64;
        }
        let pages = (g.len / 4096) as u64;
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
