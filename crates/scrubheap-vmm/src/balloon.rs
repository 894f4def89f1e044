//! Ballooning real KVM guests: `scrubheap vmm --balloon`.
//!
//! A guest ([`BALLOON_CODE`]) fills its RAM with its tag, then each round tells the VMM
//! over its port that it gives back the top of its RAM, and at once asks for it again;
//! it writes once to each page it got back, checks that every word of them is zero, and
//! fills them with its tag again. What the VMM does with the range is the backend:
//!
//! - [`BalloonBackend::Pool`]: shrink removes the range from the guest's KVM memory slots
//!   (deletes the slots inside it, re-creates the one it cuts shorter) and gives the
//!   frames behind it back to the pool, dirty, to be scrubbed there; grow allocates
//!   scrubbed frames (largest first), adds slots for them and pre-faults them where KVM
//!   can. The guest's first write then finds memory already there.
//! - [`BalloonBackend::KernelPage`]: what a VMM does today for virtio-balloon:
//!   `MADV_DONTNEED` on each 4 KiB page as the device receives it (one call per page;
//!   a real device also takes a guest exit per 256 pages, which this leaves out); grow
//!   is a notification only, and the guest's first write to each page faults the kernel
//!   into allocating and zeroing it.
//! - [`BalloonBackend::KernelRange`]: as virtio-mem unplugs: one `MADV_DONTNEED` over the
//!   whole range; grow by refault as above.
//!
//! The guest-visible pause of a shrink or grow is how long the vCPU is stopped at the
//! request, from the exit to the re-entry; grow's cost to the guest also has its first
//! write to each page ([`BalloonRound::touch_ms`]), where the kernel path does its work.

use crate::payload::{balloon_ports as port, BALLOON_CODE, ENTRY_GPA, SCAN_START, TAG_GPA};
use crate::slots::{guest_order, host_ranges, place, Slot};
use crate::vm::{kvm_err, ms_since, set_long_mode, set_slot, AnonRam, Kvm, PageTables, Prefault, VmmError};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use scrubheap::{AllocRequest, DomId, Extent, HeapError, Mfn};
use scrubheap_host::guest::POPULATE_ORDERS;
use scrubheap_host::instrument::PreemptRecorder;
use scrubheap_host::pool::{retry_busy, Pool};
use scrubheap_host::report::Millis;
use scrubheap_host::GuestOps;
use serde::Serialize;
use std::time::Instant;

/// Most rounds a run may ask for.
pub const MAX_ROUNDS: u32 = 100;
/// Exits a balloon guest takes per round (its ports), plus slack.
const EXITS_PER_ROUND: usize = 16;

/// What the VMM does with the memory a guest gives back and asks for again.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BalloonBackend {
    /// Slots shrunk, frames back to the pool; grow from the pool's scrubbed frames.
    Pool,
    /// `MADV_DONTNEED` 4 KiB at a time (virtio-balloon); grow by refault.
    KernelPage,
    /// `MADV_DONTNEED` on the whole range (virtio-mem); grow by refault.
    KernelRange,
}

impl std::fmt::Display for BalloonBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BalloonBackend::Pool => "scrubheap",
            BalloonBackend::KernelPage => "kernel-4k",
            BalloonBackend::KernelRange => "kernel-range",
        })
    }
}

/// One guest's ballooning.
#[derive(Clone, Debug)]
pub struct BalloonConfig {
    /// Guest RAM bytes.
    pub guest_bytes: u64,
    /// Bytes it gives back and asks for again each round (from the top of its RAM).
    pub balloon_bytes: u64,
    /// Shrink-and-grow rounds.
    pub rounds: u32,
}

impl BalloonConfig {
    /// Checks sizes and rounds.
    pub fn validate(&self) -> Result<(), VmmError> {
        let g = self.guest_bytes;
        if !(crate::vm::MIN_GUEST_BYTES..=crate::vm::MAX_GUEST_BYTES).contains(&g) || !g.is_multiple_of(4096) {
            return Err(VmmError::BadSize(g));
        }
        let b = self.balloon_bytes;
        if b == 0 || !b.is_multiple_of(4096) || b > g - SCAN_START {
            return Err(VmmError::Guest(format!(
                "a balloon of {b} bytes does not fit a guest of {g}: use a non-zero multiple of 4 KiB, \
                 at most the guest's RAM but its first page"
            )));
        }
        if self.rounds == 0 || self.rounds > MAX_ROUNDS {
            return Err(VmmError::Guest(format!("{} rounds: use 1 to {MAX_ROUNDS}", self.rounds)));
        }
        Ok(())
    }
}

/// One shrink and grow, as the guest saw it.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct BalloonRound {
    /// The vCPU stopped at its shrink request, ms.
    pub shrink_pause_ms: f64,
    /// Of the shrink pause: taking the range out of the guest (deleting or shortening
    /// its KVM memory slots; the kernel paths' `madvise` calls), ms.
    pub shrink_unmap_ms: f64,
    /// Of the shrink pause: the frames back to the pool, ms (0 for the kernel paths).
    pub shrink_free_ms: f64,
    /// The vCPU stopped at its grow request, ms.
    pub grow_pause_ms: f64,
    /// Its first write to each 4 KiB page it got back (guest TSC), ms.
    pub touch_ms: f64,
    /// Its read of every word it got back (guest TSC), ms.
    pub check_ms: f64,
    /// Non-zero words it found (a leak is an error, so 0 in a report).
    pub nonzero_words: u64,
    /// Guest frames the VMM held for it while shrunk (pool: frames still allocated to it).
    pub frames_while_shrunk: u64,
    /// KVM memory slots of its RAM while shrunk, and after the grow.
    pub slots_shrunk_grown: (usize, usize),
}

/// A balloon run of one backend: each figure the median over rounds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct BalloonReport {
    /// `scrubheap`, `kernel-4k` or `kernel-range`.
    pub backend: String,
    /// Guest RAM bytes.
    pub guest_bytes: u64,
    /// Bytes given back and taken again per round.
    pub balloon_bytes: u64,
    /// Shrink GiB per second of pause.
    pub shrink_gib_s: f64,
    /// Shrink pause, ms.
    pub shrink_pause_ms: f64,
    /// Grow GiB per second of pause plus first touch (the memory usable again).
    pub grow_gib_s: f64,
    /// Grow pause, ms.
    pub grow_pause_ms: f64,
    /// Grow pause plus the guest's first write to each page, ms.
    pub grow_ready_ms: f64,
    /// GB per second of the guest's check of every word it got back.
    pub check_gb_s: f64,
    /// Words the guest checked over all rounds.
    pub words_checked: u64,
    /// Of those, non-zero: must be 0.
    pub nonzero_words: u64,
    /// How grown pool memory was mapped into KVM (`None` for the kernel paths).
    pub prefault: Option<Prefault>,
    /// `madvise` calls the kernel paths made.
    pub madvise_calls: u64,
    /// Bytes the pool scrubbed on an allocation's path (not in the background) during the run.
    pub bytes_scrubbed_in_place: u64,
    /// Every round.
    pub rounds: Vec<BalloonRound>,
}

/// A balloon guest's RAM.
enum Memory<'p> {
    Pool(PoolMem<'p>),
    Anon { ram: AnonRam, per_page: bool, madvise_calls: u64 },
}

/// Pool RAM by guest-physical address: `(gpa, extent)`, sorted.
struct PoolMem<'p> {
    pool: &'p Pool,
    rec: &'p PreemptRecorder,
    dom: DomId,
    extents: Vec<(u64, Extent)>,
}

impl Drop for PoolMem<'_> {
    fn drop(&mut self) {
        for (_, e) in self.extents.drain(..) {
            retry_busy(|| self.pool.free(e.mfn, e.order, self.dom, self.rec))
                .expect("a guest frees exactly what it holds");
        }
    }
}

impl PoolMem<'_> {
    /// Lays `extents` out from `base` in guest order; returns their slots.
    fn add(&mut self, base: u64, extents: &[Extent]) -> Vec<Slot> {
        let bytes: u64 = extents.iter().map(|e| e.frames() * 4096).sum();
        let mut gpa = base;
        for e in guest_order(extents) {
            self.extents.push((gpa, e));
            gpa += e.frames() * 4096;
        }
        self.extents.sort_by_key(|x| x.0);
        let slots = place(&[(base, bytes)], host_ranges(self.pool.arena(), extents));
        debug_assert_eq!(slots.iter().map(|s| s.bytes).sum::<u64>(), bytes);
        slots
    }

    /// Gives every frame at or above guest-physical `base` back to the pool (dirty).
    fn release_from(&mut self, base: u64) -> Result<(), VmmError> {
        let (mut keep, mut free) = (Vec::new(), Vec::new());
        for (gpa, e) in std::mem::take(&mut self.extents) {
            split_at(gpa, e, base, &mut keep, &mut free);
        }
        self.extents = keep;
        for (mfn, order) in free {
            retry_busy(|| self.pool.free(mfn, order, self.dom, self.rec))?;
        }
        assert!(self.extents.iter().all(|(g, e)| g + e.frames() * 4096 <= base));
        Ok(())
    }

    /// Allocates `bytes` of scrubbed frames for the guest, largest first, preferring the
    /// node with the most clean free frames (the frames the guest just gave back may
    /// still wait for their scrub).
    fn alloc(&mut self, bytes: u64) -> Result<Vec<Extent>, VmmError> {
        let heap = self.pool.heap();
        let clean = |n: usize| heap.node_stats(n).map_or(0, |s| s.free_clean);
        let node = (0..heap.node_count()).max_by_key(|&n| (clean(n), std::cmp::Reverse(n))).unwrap_or(0);
        let mut left = bytes / 4096;
        let mut got = Vec::new();
        for order in POPULATE_ORDERS {
            while left >= 1 << order {
                match self.pool.alloc(&AllocRequest::new(order, self.dom).on(node).movable(), self.rec) {
                    Ok(e) => {
                        left -= e.frames();
                        got.push(e);
                    }
                    Err(HeapError::OutOfMemory { .. }) if order > 0 => break,
                    Err(err) => {
                        for e in got {
                            retry_busy(|| self.pool.free(e.mfn, e.order, self.dom, self.rec))?;
                        }
                        return Err(err.into());
                    }
                }
            }
        }
        assert_eq!(left, 0, "4 KiB frames are the last fallback");
        Ok(got)
    }
}

/// Splits extent `e` at guest-physical `gpa` around `base`: aligned parts below `base`
/// to `keep` (with their addresses), the rest to `free`.
fn split_at(gpa: u64, e: Extent, base: u64, keep: &mut Vec<(u64, Extent)>, free: &mut Vec<(Mfn, u8)>) {
    let bytes = e.frames() * 4096;
    if gpa + bytes <= base {
        keep.push((gpa, e));
    } else if gpa >= base {
        free.push((e.mfn, e.order));
    } else {
        let half = 1u64 << (e.order - 1);
        split_at(gpa, Extent { order: e.order - 1, ..e }, base, keep, free);
        let hi = Extent { mfn: Mfn(e.mfn.0 + half), order: e.order - 1, ..e };
        split_at(gpa + half * 4096, hi, base, keep, free);
    }
}

/// A running balloon guest. Fields drop in order: the vCPU and VM before the memory.
struct BalloonVm<'k, 'p> {
    vcpu: VcpuFd,
    vm: VmFd,
    mem: Memory<'p>,
    _tables: PageTables,
    kvm: &'k Kvm,
    /// RAM slots `(id, slot)`; id 0 is the VMM's page tables.
    slots: Vec<(u32, Slot)>,
    free_ids: Vec<u32>,
    next_id: u32,
    tag: u64,
}

impl<'k, 'p> BalloonVm<'k, 'p> {
    /// Loads [`BALLOON_CODE`] and the tag, creates the VM and vCPU and maps `slots`.
    fn new(kvm: &'k Kvm, mem: Memory<'p>, slots: Vec<Slot>, cfg: &BalloonConfig, tag: u64) -> Result<Self, VmmError> {
        let first = slots.iter().find(|s| s.gpa == 0).ok_or_else(|| VmmError::Guest("no RAM at 0".into()))?;
        assert!(first.bytes >= SCAN_START, "page 0 is one slot's");
        let host = first.host as *mut u8;
        // SAFETY: page 0 of the guest's RAM is `first.host..+4096`, memory `mem` owns and
        // keeps mapped; no VM runs on it yet. Code and tag fit in it (payload tests).
        unsafe {
            std::ptr::copy_nonoverlapping(BALLOON_CODE.as_ptr(), host.add(ENTRY_GPA as usize), BALLOON_CODE.len());
            std::ptr::copy_nonoverlapping(tag.to_le_bytes().as_ptr(), host.add(TAG_GPA as usize), 8);
        }
        let tables = PageTables::new()?;
        let vm = kvm.new_vm()?;
        // SAFETY: the VMM's own tables, which the returned value keeps until after the VM.
        unsafe { set_slot(&vm, 0, &tables.slot()) }?;
        let vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        set_long_mode(&vcpu, cfg.guest_bytes, ENTRY_GPA)?;
        let mut regs = vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
        (regs.r8, regs.r9) = (cfg.balloon_bytes, u64::from(cfg.rounds));
        vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
        let mut b =
            BalloonVm { vcpu, vm, mem, _tables: tables, kvm, slots: Vec::new(), free_ids: Vec::new(), next_id: 1, tag };
        b.map(&slots)?;
        Ok(b)
    }

    /// Adds RAM slots (pre-faulting pool memory where KVM can).
    fn map(&mut self, slots: &[Slot]) -> Result<(), VmmError> {
        for s in slots {
            let id = match self.free_ids.pop() {
                Some(id) => id,
                None => {
                    self.next_id += 1;
                    self.next_id - 1
                }
            };
            if id as usize >= self.kvm.max_memslots() {
                return Err(VmmError::TooManySlots { needed: id as usize + 1, limit: self.kvm.max_memslots() });
            }
            // SAFETY: every slot is memory of `self.mem` (the pool frames it holds for this
            // guest, or its anonymous mapping), which outlives the VM (field order) and
            // which shrink takes away only after deleting the slot.
            unsafe { set_slot(&self.vm, id, s) }?;
            self.slots.push((id, *s));
        }
        if matches!(self.mem, Memory::Pool(_)) {
            self.kvm.pre_fault_slots(&self.vcpu, slots);
        }
        Ok(())
    }

    /// Deletes the slots at or above `base`, re-creating shorter the one that crosses it.
    fn cut_slots(&mut self, base: u64) -> Result<(), VmmError> {
        let mut kept = Vec::with_capacity(self.slots.len());
        for (id, s) in std::mem::take(&mut self.slots) {
            if s.gpa + s.bytes <= base {
                kept.push((id, s));
                continue;
            }
            // SAFETY: deleting a slot maps nothing.
            unsafe { set_slot(&self.vm, id, &Slot { bytes: 0, ..s }) }?;
            if s.gpa < base {
                let shorter = Slot { bytes: base - s.gpa, ..s };
                // SAFETY: a prefix of a slot that was mapped, the same memory of `self.mem`.
                unsafe { set_slot(&self.vm, id, &shorter) }?;
                kept.push((id, shorter));
            } else {
                self.free_ids.push(id);
            }
        }
        self.slots = kept;
        Ok(())
    }

    /// The guest gives back `[base, end)`. Returns the milliseconds spent taking it out
    /// of the guest (slots, or `madvise`) and giving frames back to the pool.
    fn shrink(&mut self, base: u64, end: u64) -> Result<(f64, f64), VmmError> {
        let t = Instant::now();
        match &mut self.mem {
            Memory::Pool(_) => {
                self.cut_slots(base)?;
                let unmap_ms = ms_since(t);
                let Memory::Pool(p) = &mut self.mem else { unreachable!() };
                let t = Instant::now();
                p.release_from(base)?;
                Ok((unmap_ms, ms_since(t)))
            }
            Memory::Anon { ram, per_page, madvise_calls } => {
                let (host, len) = ram.host_range();
                assert!(end as usize <= len);
                let step = if *per_page { 4096 } else { (end - base) as usize };
                for off in (base as usize..end as usize).step_by(step) {
                    // SAFETY: `[host + off, + step)` is inside the anonymous mapping `ram`
                    // owns; the guest gave it back and is stopped; dropping its pages only
                    // makes them read as zero again.
                    let r = unsafe { libc::madvise((host + off) as *mut libc::c_void, step, libc::MADV_DONTNEED) };
                    if r != 0 {
                        let err = std::io::Error::last_os_error();
                        return Err(VmmError::Map { bytes: step as u64, err });
                    }
                    *madvise_calls += 1;
                }
                Ok((ms_since(t), 0.0))
            }
        }
    }

    /// The guest asks for `[base, end)` again.
    fn grow(&mut self, base: u64, end: u64) -> Result<(), VmmError> {
        let slots = match &mut self.mem {
            Memory::Pool(p) => {
                let got = p.alloc(end - base)?;
                p.add(base, &got)
            }
            // Nothing to do: the slot still covers the range; the guest's first write to
            // each page has the kernel allocate and zero it.
            Memory::Anon { .. } => return Ok(()),
        };
        self.map(&slots)
    }

    /// Frames the guest holds in the pool (its RAM bytes / 4 KiB for anonymous memory,
    /// which counts what is mapped, not what is populated).
    fn frames(&self) -> u64 {
        match &self.mem {
            Memory::Pool(p) => p.extents.iter().map(|(_, e)| e.frames()).sum(),
            Memory::Anon { .. } => self.slots.iter().map(|(_, s)| s.bytes / 4096).sum(),
        }
    }
}

impl BalloonVm<'_, '_> {
    /// The 8-byte word at guest-physical `gpa`, if a slot maps it (the guest is stopped).
    fn read_u64(&self, gpa: u64) -> Option<u64> {
        let (_, s) =
            self.slots.iter().find(|(_, s)| gpa >= s.gpa && gpa + 8 <= s.gpa + s.bytes && gpa.is_multiple_of(8))?;
        // SAFETY: 8 aligned bytes inside a mapped slot of memory `self.mem` holds; the
        // guest is stopped at an exit, so nothing writes them meanwhile.
        Some(unsafe { ((s.host + (gpa - s.gpa) as usize) as *const u64).read_volatile() })
    }

    /// Runs the guest to its last report, doing what it asks.
    fn run(&mut self, cfg: &BalloonConfig) -> Result<Vec<BalloonRound>, VmmError> {
        let khz = self.kvm.tsc().khz;
        let (end, mut base, mut lo) = (cfg.guest_bytes, 0u64, 0u64);
        let mut rounds = Vec::with_capacity(cfg.rounds as usize);
        let mut cur = BalloonRound::default();
        let max_exits = 8 + EXITS_PER_ROUND * cfg.rounds as usize;
        for _ in 0..max_exits {
            let (p, v) = match self.vcpu.run() {
                Ok(VcpuExit::IoOut(p, data)) => (p, data.iter().rev().fold(0u64, |a, &b| a << 8 | b as u64)),
                Ok(other) => return Err(VmmError::Guest(format!("balloon guest: {other:?}"))),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => return Err(kvm_err("KVM_RUN")(e)),
            };
            let t = Instant::now();
            let asked = |pages: u64| {
                if base + pages * 4096 != end || pages * 4096 != cfg.balloon_bytes {
                    return Err(VmmError::Guest(format!("asked for {pages} pages from {base:#x}, not its balloon")));
                }
                Ok(())
            };
            match p {
                port::STARTED => {}
                port::BASE_GFN => base = v << 12,
                port::SHRINK_PAGES => {
                    asked(v)?;
                    (cur.shrink_unmap_ms, cur.shrink_free_ms) = self.shrink(base, end)?;
                    cur.shrink_pause_ms = ms_since(t);
                    (cur.frames_while_shrunk, cur.slots_shrunk_grown.0) = (self.frames(), self.slots.len());
                }
                port::GROW_PAGES => {
                    asked(v)?;
                    self.grow(base, end)?;
                    cur.grow_pause_ms = ms_since(t);
                    cur.slots_shrunk_grown.1 = self.slots.len();
                }
                port::TOUCH_TSC_LO | port::CHECK_TSC_LO => lo = v,
                port::TOUCH_TSC_HI => cur.touch_ms = (v << 32 | lo) as f64 / khz,
                port::CHECK_TSC_HI => cur.check_ms = (v << 32 | lo) as f64 / khz,
                port::NONZERO => cur.nonzero_words = v,
                port::FIRST_NONZERO if cur.nonzero_words > 0 => {
                    let value = self.read_u64(v).unwrap_or(0);
                    let (tag, nonzero_words) = (self.tag, cur.nonzero_words);
                    return Err(VmmError::Leak { tag, nonzero_words, gpa: v, gfn: v >> 12, value });
                }
                port::FIRST_NONZERO => rounds.push(std::mem::take(&mut cur)),
                port::DONE if v == self.tag & 0xffff_ffff && rounds.len() == cfg.rounds as usize => return Ok(rounds),
                p => return Err(VmmError::Guest(format!("balloon guest wrote {v:#x} to port {p:#x} out of turn"))),
            }
        }
        Err(VmmError::Guest(format!("balloon guest still running after {max_exits} exits")))
    }
}

/// Boots a balloon guest on `backend` (the pool backend on `pool`, which must be given
/// and hold the guest plus its balloon), runs its rounds and reports. A non-zero word
/// the guest finds in memory it got back is [`VmmError::Leak`].
pub fn run(
    kvm: &Kvm,
    cfg: &BalloonConfig,
    backend: BalloonBackend,
    pool: Option<&Pool>,
) -> Result<BalloonReport, VmmError> {
    cfg.validate()?;
    let dom = DomId(1);
    let tag = scrubheap_host::guest::tag_of(dom);
    let rec = PreemptRecorder::new(pool.map_or(200_000, |p| p.config().quantum_ns));
    let in_place = || pool.map_or(0, |p| p.heap().stats().scrubbed.in_place);
    let (mem, slots) = match (backend, pool) {
        (BalloonBackend::Pool, Some(pool)) => {
            let (mut g, _) = pool.create_guest(dom, cfg.guest_bytes, &rec)?;
            let mut p = PoolMem { pool, rec: &rec, dom, extents: Vec::new() };
            let slots = p.add(0, &std::mem::take(&mut g.extents));
            (Memory::Pool(p), slots)
        }
        (BalloonBackend::Pool, None) => return Err(VmmError::Guest("the pool backend needs a pool".into())),
        (_, _) => {
            let ram = AnonRam::new(cfg.guest_bytes)?;
            let (host, len) = ram.host_range();
            let per_page = backend == BalloonBackend::KernelPage;
            (Memory::Anon { ram, per_page, madvise_calls: 0 }, vec![Slot { gpa: 0, host, bytes: len as u64 }])
        }
    };
    let scrubbed_before = in_place();
    let mut vm = BalloonVm::new(kvm, mem, slots, cfg, tag)?;
    let rounds = vm.run(cfg)?;
    let madvise_calls = match &vm.mem {
        Memory::Anon { madvise_calls, .. } => *madvise_calls,
        Memory::Pool(_) => 0,
    };
    drop(vm);
    Ok(report(cfg, backend, rounds, madvise_calls, in_place() - scrubbed_before, pool.map(|_| kvm.prefault())))
}

/// Medians over the rounds.
fn report(
    cfg: &BalloonConfig,
    backend: BalloonBackend,
    rounds: Vec<BalloonRound>,
    madvise_calls: u64,
    bytes_scrubbed_in_place: u64,
    prefault: Option<Prefault>,
) -> BalloonReport {
    let p50 = |f: fn(&BalloonRound) -> f64| Millis::of(&rounds.iter().map(f).collect::<Vec<f64>>()).p50;
    let gib = cfg.balloon_bytes as f64 / (1u64 << 30) as f64;
    let per_s = |ms: f64| if ms > 0.0 { gib / (ms / 1e3) } else { f64::INFINITY };
    let (shrink, grow, ready) =
        (p50(|r| r.shrink_pause_ms), p50(|r| r.grow_pause_ms), p50(|r| r.grow_pause_ms + r.touch_ms));
    let check = p50(|r| r.check_ms);
    BalloonReport {
        backend: backend.to_string(),
        guest_bytes: cfg.guest_bytes,
        balloon_bytes: cfg.balloon_bytes,
        shrink_gib_s: per_s(shrink),
        shrink_pause_ms: shrink,
        grow_gib_s: per_s(ready),
        grow_pause_ms: grow,
        grow_ready_ms: ready,
        check_gb_s: if check > 0.0 { cfg.balloon_bytes as f64 / 1e9 / (check / 1e3) } else { 0.0 },
        words_checked: cfg.balloon_bytes / 8 * rounds.len() as u64,
        nonzero_words: rounds.iter().map(|r| r.nonzero_words).sum(),
        prefault: if backend == BalloonBackend::Pool { prefault } else { None },
        madvise_calls,
        bytes_scrubbed_in_place,
        rounds,
    }
}
