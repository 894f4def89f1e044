//! A minimal KVM VMM: one VM, one vCPU, guest RAM from the pool (or fresh anonymous
//! memory for the `kernel` baseline), the [`payload`](crate::payload) run to its halt.

use crate::payload::{self, CODE, ENTRY_GPA, INIT_CODE, SCAN_START, TAG_GPA};
use crate::slots::{pool_slots, Slot};
use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use scrubheap::HeapError;
use scrubheap_host::guest::Guest;
use scrubheap_host::instrument::PreemptRecorder;
use scrubheap_host::pool::{Pool, PoolError};
use scrubheap_host::GuestOps;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Largest guest RAM the payload runs in: its identity map covers the low 4 GiB and the
/// VMM's own slot sits at [`PAGE_TABLES_GPA`] (3.75 GiB), above any guest's RAM.
pub const MAX_GUEST_BYTES: u64 = 3 << 30;
/// Smallest guest RAM: the code page and one page to scan.
pub const MIN_GUEST_BYTES: u64 = 2 * 4096;
/// Where KVM may put the three pages of its real-mode TSS (Intel without unrestricted
/// guest needs them; nothing here runs in real mode, but KVM wants it set before a vCPU
/// runs on such hosts). Above any guest's RAM.
const TSS_ADDR: usize = 0xfffb_d000;
/// Exits a guest may take before the VMM gives up on it: the payload takes eight.
const MAX_EXITS: usize = 64;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// `/dev/kvm` cannot be opened.
    #[error(
        "cannot open /dev/kvm ({0}): real guests need Linux with KVM enabled (a CPU with VT-x or AMD-V, \
         nested virtualisation inside a VM) and read-write access to /dev/kvm"
    )]
    NoKvm(io::Error),
    /// A KVM call failed.
    #[error("KVM {what} failed: {err}")]
    Kvm {
        /// The call.
        what: &'static str,
        /// What the kernel said.
        err: io::Error,
    },
    /// More memory slots than KVM allows one VM.
    #[error(
        "the guest needs {needed} KVM memory slots (one per run of host-contiguous extents) but this host \
         allows {limit} per VM (KVM_CAP_NR_MEMSLOTS); give the pool more memory so guests get larger extents"
    )]
    TooManySlots {
        /// Slots the guest's extents need after coalescing.
        needed: usize,
        /// The per-VM limit.
        limit: usize,
    },
    /// The guest found memory that was not zero: another tenant's bytes.
    #[error(
        "LEAK: guest with tag {tag:#x} found {nonzero_words} non-zero 8-byte word(s) in the first dirty page of the memory it was given; \
         the first is at gfn {gfn:#x} (guest-physical {gpa:#x}) and holds {value:#018x}"
    )]
    Leak {
        /// The guest's tag.
        tag: u64,
        /// Non-zero words it counted in the first page holding one (it stops there).
        nonzero_words: u64,
        /// Guest-physical address of the first.
        gpa: u64,
        /// Its guest frame number (4 KiB).
        gfn: u64,
        /// Its value.
        value: u64,
    },
    /// The guest did something the payload never does.
    #[error("the guest stopped unexpectedly: {0}")]
    Guest(String),
    /// A guest size the payload cannot run in.
    #[error("a guest of {0} bytes cannot run: use a multiple of 4 KiB from 8 KiB to 3 GiB")]
    BadSize(u64),
    /// Anonymous memory for the `kernel` baseline could not be mapped.
    #[error("cannot map {bytes} bytes of guest memory: {err}")]
    Map {
        /// Bytes asked for.
        bytes: u64,
        /// What the kernel said.
        err: io::Error,
    },
    /// The heap refused.
    #[error(transparent)]
    Heap(#[from] HeapError),
    /// The pool could not be built.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The populate-on-demand layer refused.
    #[error(transparent)]
    Pod(#[from] scrubheap_pod::PodError),
}

pub(crate) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |e| VmmError::Kvm { what, err: io::Error::from_raw_os_error(e.errno()) }
}

/// Guest RAM from the pool: the guest's extents, given back to the pool on drop.
pub struct PoolRam<'p> {
    pool: &'p Pool,
    rec: &'p PreemptRecorder,
    guest: Guest,
    slots: Vec<Slot>,
}

impl<'p> PoolRam<'p> {
    /// Takes over `guest` (made by [`GuestOps::create_guest`]); `rec` records the preemptible
    /// sections of freeing it.
    pub fn new(pool: &'p Pool, guest: Guest, rec: &'p PreemptRecorder) -> Self {
        let slots = pool_slots(pool.arena(), &guest.extents);
        PoolRam { pool, rec, guest, slots }
    }

    /// The guest's extents.
    pub fn guest(&self) -> &Guest {
        &self.guest
    }
}

impl Drop for PoolRam<'_> {
    fn drop(&mut self) {
        let g = Guest {
            dom: self.guest.dom,
            extents: std::mem::take(&mut self.guest.extents),
            pins: std::mem::take(&mut self.guest.pins),
        };
        self.pool.destroy_guest(g, self.rec);
    }
}

/// Guest RAM for the `kernel` baseline: a fresh private anonymous mapping, huge pages
/// advised, not populated (the kernel allocates and zeroes each page when the guest first
/// touches it), unmapped on drop.
pub struct AnonRam {
    ptr: NonNull<u8>,
    len: usize,
}

const HUGE_2M: usize = 2 << 20;

impl AnonRam {
    /// Maps `bytes` (a non-zero multiple of 4 KiB), 2 MiB aligned.
    pub fn new(bytes: u64) -> Result<AnonRam, VmmError> {
        if bytes == 0 || !bytes.is_multiple_of(4096) {
            return Err(VmmError::BadSize(bytes));
        }
        let len = usize::try_from(bytes).map_err(|_| VmmError::BadSize(bytes))?;
        let over = len + HUGE_2M;
        let p = scrubheap_host::map_anonymous(over, libc::MAP_NORESERVE)
            .map_err(|err| VmmError::Map { bytes, err })?
            .as_ptr()
            .cast::<libc::c_void>();
        let addr = p as usize;
        let start = addr.next_multiple_of(HUGE_2M);
        let (head, tail) = (start - addr, over - (start - addr) - len);
        // SAFETY: the head `[addr, start)` and the tail `[start + len, addr + over)` are
        // page-aligned parts of the mapping just made, which nobody else knows of.
        unsafe {
            if head > 0 {
                libc::munmap(p, head);
            }
            if tail > 0 {
                libc::munmap((start + len) as *mut libc::c_void, tail);
            }
            // Advice only: the kernel may back the range with transparent huge pages, as a
            // tuned VMM asks; contents are unchanged (all zero).
            libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
        let ptr = NonNull::new(start as *mut u8).expect("a mapping is not at address 0");
        Ok(AnonRam { ptr, len })
    }
}

impl AnonRam {
    /// Its host address and length in bytes.
    pub(crate) fn host_range(&self) -> (usize, usize) {
        (self.ptr.as_ptr() as usize, self.len)
    }

    /// The mapping as bytes, for the VMM's own tables.
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `words_mut`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The mapping as words, for the VMM's own tables.
    fn words_mut(&mut self) -> &mut [u64] {
        // SAFETY: the mapping is `len` bytes, page aligned, read-write, zero-initialised by
        // the kernel, and owned by `self`, which the borrow keeps alive and exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast::<u64>(), self.len / 8) }
    }
}

impl Drop for AnonRam {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping `new` kept; the VM that used it is gone (a `Tenant`
        // drops its VM before its RAM) and nothing else refers to it.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// SAFETY: the mapping is owned by this value alone and only touched through it.
unsafe impl Send for AnonRam {}

/// Guest RAM populated on demand: the hook a populate-on-demand guest plugs into.
///
/// Guest-physical ranges the pager has not populated have no memory slot; the guest's
/// first access to one exits to the VMM (KVM reports it as MMIO), which asks the pager
/// for the range, maps it as a new slot, completes the access on the new memory and
/// resumes the guest. For the PoD layer (issue 7) `populate` is `Pods::touch(heap, dom, gpa >>
/// 12, write)` and the slot its mapping's frames.
///
/// # Safety
/// Every slot `populate` (or `populate_unmapping`) returns must cover `gpa`, lie within
/// `[0, bytes())`, not overlap a slot still mapped, be page aligned, and be host memory the
/// pager owns for this guest alone, readable and writable, until the pager is dropped (a
/// `Tenant` drops its VM first) or, for a pager that takes pages back, until it has
/// called `unmap` over the slot's range (the VMM has then removed the slot) and only then
/// lets the memory go.
pub unsafe trait DemandPager {
    /// RAM bytes (guest-physical `[0, bytes)`).
    fn bytes(&self) -> u64;
    /// The guest touched `gpa` (writing if `write`), which no slot maps yet: populate the
    /// range around it and say where it is.
    fn populate(&mut self, gpa: u64, write: bool) -> Result<Slot, VmmError>;

    /// Bytes the guest keeps: below [`DemandPager::bytes`] for a guest that boots below its
    /// maximum and has its balloon driver give back the rest (the VMM then starts it at the
    /// payload's balloon prologue). By default all of them.
    fn keep_bytes(&self) -> u64 {
        self.bytes()
    }

    /// [`DemandPager::populate`] for a pager that may take back pages it populated earlier
    /// (a PoD reclaim of zeroed pages): before any such page goes, it calls
    /// `unmap(gpa, bytes)`, and the VMM removes every slot overlapping that range first.
    /// By default, for pagers that never take a page back, `populate`.
    fn populate_unmapping(&mut self, gpa: u64, write: bool, unmap: &mut dyn FnMut(u64, u64)) -> Result<Slot, VmmError> {
        let _ = unmap;
        self.populate(gpa, write)
    }

    /// The guest's balloon driver gives back `[gpa, gpa + bytes)`: the pager calls
    /// `unmap(gpa, bytes)` before each range it had populated goes. By default refused.
    fn balloon(&mut self, gpa: u64, bytes: u64, unmap: &mut dyn FnMut(u64, u64)) -> Result<(), VmmError> {
        let _ = unmap;
        Err(VmmError::Guest(format!("gave back {bytes} bytes at {gpa:#x}, but its RAM has no balloon")))
    }
}

/// The KVM memory slots of one VM: ids handed out in order and reused once a slot is
/// removed (a PoD guest's reclaimed pages lose their slots).
struct KvmSlots<'v> {
    vm: &'v VmFd,
    limit: usize,
    next: u32,
    free: Vec<u32>,
    /// Live slots by first guest-physical byte: (id, bytes).
    live: std::collections::BTreeMap<u64, (u32, u64)>,
    /// Slots removed so far.
    removed: u64,
}

impl<'v> KvmSlots<'v> {
    fn new(vm: &'v VmFd, limit: usize) -> Self {
        KvmSlots { vm, limit, next: 0, free: Vec::new(), live: Default::default(), removed: 0 }
    }

    /// Maps `s` as a new slot.
    fn add(&mut self, s: &Slot) -> Result<(), VmmError> {
        let id = match self.free.pop() {
            Some(id) => id,
            None if (self.next as usize) < self.limit => self.next,
            None => return Err(VmmError::TooManySlots { needed: self.live.len() + 1, limit: self.limit }),
        };
        // SAFETY: the slot's host range is page aligned (arena frames, our own mapping, or
        // a pager's, which its trait's contract makes so) and belongs to the guest's `Ram`
        // or the VMM's tables, which the returned `Tenant` keeps until after it has dropped
        // this VM, or until the slot is removed (`remove_overlapping`); on an error return
        // the VM drops before both.
        unsafe { set_slot(self.vm, id, s) }?;
        if id == self.next {
            self.next += 1;
        }
        self.live.insert(s.gpa, (id, s.bytes));
        Ok(())
    }

    /// Removes every slot overlapping guest-physical `[gpa, gpa + bytes)` from the VM and
    /// from `ram`, before the pager lets the memory go.
    fn remove_overlapping(&mut self, gpa: u64, bytes: u64, ram: &mut Vec<Slot>) -> Result<(), VmmError> {
        let hit: Vec<(u64, u32)> = self
            .live
            .range(..gpa + bytes)
            .filter(|(&at, &(_, len))| at + len > gpa)
            .map(|(&at, &(id, _))| (at, id))
            .collect();
        for (at, id) in hit {
            let region = kvm_userspace_memory_region {
                slot: id,
                guest_phys_addr: at,
                memory_size: 0,
                userspace_addr: 0,
                flags: 0,
            };
            // SAFETY: a memory size of 0 deletes slot `id`: KVM stops mapping its host
            // memory into the guest; nothing is mapped anew.
            unsafe { self.vm.set_user_memory_region(region) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION (delete)"))?;
            self.live.remove(&at);
            self.free.push(id);
            self.removed += 1;
            ram.retain(|s| s.gpa != at);
        }
        debug_assert!(self.live.range(..gpa + bytes).all(|(&at, &(_, len))| at + len <= gpa), "none left");
        Ok(())
    }
}

/// RAM of a [`DemandPager`], and the slots populated so far.
pub struct DemandRam<'p> {
    pager: Box<dyn DemandPager + 'p>,
    slots: Vec<Slot>,
}

impl<'p> DemandRam<'p> {
    /// Nothing populated yet.
    pub fn new(pager: Box<dyn DemandPager + 'p>) -> Self {
        DemandRam { pager, slots: Vec::new() }
    }
}

/// A guest's RAM, owned: while it lives, every slot's host memory belongs to this guest.
pub enum Ram<'p> {
    /// Extents of the scrubheap pool.
    Pool(PoolRam<'p>),
    /// The `kernel` baseline's fresh anonymous memory.
    Anonymous(AnonRam),
    /// Populated on first touch.
    Demand(DemandRam<'p>),
}

impl Ram<'_> {
    /// The KVM memory slots that map it, guest-physical from 0.
    pub fn slots(&self) -> Vec<Slot> {
        match self {
            Ram::Pool(p) => p.slots.clone(),
            Ram::Anonymous(a) => vec![Slot { gpa: 0, host: a.ptr.as_ptr() as usize, bytes: a.len as u64 }],
            Ram::Demand(d) => d.slots.clone(),
        }
    }

    /// Bytes of RAM.
    pub fn bytes(&self) -> u64 {
        match self {
            Ram::Pool(p) => p.slots.iter().map(|s| s.bytes).sum(),
            Ram::Anonymous(a) => a.len as u64,
            Ram::Demand(d) => d.pager.bytes(),
        }
    }

    /// The host address of guest-physical `[gpa, gpa + len)`, if one slot holds all of it.
    fn host(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        let end = gpa.checked_add(len)?;
        let slots = self.slots();
        let s = slots.iter().find(|s| gpa >= s.gpa && end <= s.gpa + s.bytes)?;
        Some((s.host + (gpa - s.gpa) as usize) as *mut u8)
    }

    /// For RAM populated on demand: populates the range holding `gpa` unless a slot maps
    /// it already, and returns the new slot. `Ok(None)`: mapped already.
    fn populate(&mut self, gpa: u64, write: bool, kvm: &mut KvmSlots<'_>) -> Result<Option<Slot>, VmmError> {
        let bytes = self.bytes();
        if self.host(gpa, 1).is_some() {
            return Ok(None);
        }
        let Ram::Demand(d) = self else {
            return Err(VmmError::Guest(format!("touched guest-physical {gpa:#x}, outside its {bytes} bytes of RAM")));
        };
        if gpa >= bytes {
            return Err(VmmError::Guest(format!("touched guest-physical {gpa:#x}, outside its {bytes} bytes of RAM")));
        }
        let DemandRam { pager, slots } = d;
        let mut failed = None;
        let mut unmap = |at: u64, len: u64| {
            if let Err(e) = kvm.remove_overlapping(at, len, slots) {
                failed.get_or_insert(e);
            }
        };
        let s = pager.populate_unmapping(gpa, write, &mut unmap);
        // A slot that could not be removed: the guest never runs again (the VM is torn
        // down on this error, before the memory goes anywhere else).
        if let Some(e) = failed {
            return Err(e);
        }
        let s = s?;
        let fits = s.gpa <= gpa && gpa < s.gpa + s.bytes && s.gpa + s.bytes <= bytes;
        let aligned = s.gpa % 4096 == 0 && s.bytes % 4096 == 0 && s.host % 4096 == 0 && s.bytes > 0;
        let overlaps = slots.iter().any(|o| o.gpa < s.gpa + s.bytes && s.gpa < o.gpa + o.bytes);
        if !fits || !aligned || overlaps {
            return Err(VmmError::Guest(format!("the pager returned {s:?} for guest-physical {gpa:#x}")));
        }
        slots.push(s);
        Ok(Some(s))
    }

    /// The guest's balloon driver gives back the [`payload::BALLOON_CHUNK`] at `gpa`: the
    /// pager takes it back, the VMM removing its slots first. Returns the bytes given back.
    fn balloon(&mut self, gpa: u64, kvm: &mut KvmSlots<'_>) -> Result<u64, VmmError> {
        let bytes = payload::BALLOON_CHUNK;
        let Ram::Demand(DemandRam { pager, slots }) = self else {
            return Err(VmmError::Guest(format!("gave back {bytes} bytes at {gpa:#x}, but its RAM has no balloon")));
        };
        if !gpa.is_multiple_of(bytes) || gpa.saturating_add(bytes) > pager.bytes() {
            return Err(VmmError::Guest(format!("gave back {bytes} bytes at {gpa:#x}, outside its RAM or unaligned")));
        }
        let mut failed = None;
        let mut unmap = |at: u64, len: u64| {
            if let Err(e) = kvm.remove_overlapping(at, len, slots) {
                failed.get_or_insert(e);
            }
        };
        let r = pager.balloon(gpa, bytes, &mut unmap);
        failed.map_or(r, Err)?;
        Ok(bytes)
    }

    /// Bytes the guest keeps (see [`DemandPager::keep_bytes`]).
    fn keep_bytes(&self) -> u64 {
        match self {
            Ram::Demand(d) => d.pager.keep_bytes(),
            _ => self.bytes(),
        }
    }

    /// Reads the 8-byte word at guest-physical `gpa` (8-byte aligned; `None` outside the
    /// RAM). For a guest that is not running: between exits or halted.
    pub fn read_u64(&self, gpa: u64) -> Option<u64> {
        if !gpa.is_multiple_of(8) {
            return None;
        }
        let p = self.host(gpa, 8)?;
        // SAFETY: `p` is 8 bytes inside one slot (checked by `host`), 8-byte aligned (slots
        // start on pages, `gpa` is aligned), in memory this `Ram` owns and keeps mapped
        // while borrowed; the guest is stopped, so nothing writes it meanwhile.
        Some(unsafe { p.cast::<u64>().read_volatile() })
    }

    /// Writes `bytes` at guest-physical `gpa` (panics outside one slot). Before the guest
    /// runs.
    fn write(&mut self, gpa: u64, bytes: &[u8]) {
        let p = self.host(gpa, bytes.len() as u64).expect("the payload's page is inside the guest's first slot");
        // SAFETY: the range is inside one slot (checked by `host`), in memory this `Ram`
        // owns exclusively (`&mut self`) and keeps mapped; the guest has not started.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) }
    }
}

/// What one guest's boot found and cost.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BootStats {
    /// RAM bytes.
    pub bytes: u64,
    /// KVM memory slots it used.
    pub memslots: usize,
    /// Milliseconds from the caller's start (pool allocation) to the guest's first
    /// instruction.
    pub create_ms: f64,
    /// The scan's TSC delta, as the guest measured it.
    pub scan_cycles: u64,
    /// `scan_cycles` in milliseconds.
    pub scan_ms: f64,
    /// The fill's TSC delta, as the guest measured it.
    pub fill_cycles: u64,
    /// `fill_cycles` in milliseconds.
    pub fill_ms: f64,
    /// Milliseconds (VMM wall clock) from the first instruction to the last report: scan,
    /// fill and the exits between.
    pub run_ms: f64,
    /// 8-byte words the guest scanned.
    pub words_checked: u64,
    /// Of those, non-zero (always 0 for a guest that booted: a leak is an error).
    pub nonzero_words: u64,
    /// Ranges populated on the guest's first touch ([`Ram::Demand`] only); each added a
    /// memory slot (counted in `memslots`).
    pub demand_faults: u64,
    /// Bytes the guest's balloon driver gave back at boot ([`Ram::Demand`] below its
    /// maximum only): it then scanned and filled only what it kept.
    pub ballooned_bytes: u64,
    /// Memory slots the VMM removed before the pager took their memory back (the PoD
    /// layer's unmap hook).
    pub slots_removed: u64,
    /// Where `create_ms` went after the memory was allocated (the profile of the create path).
    pub setup: SetupTimes,
    /// Bytes mapped into KVM's second-stage tables before the guest's first instruction
    /// (pool RAM, where the host's KVM has `KVM_PRE_FAULT_MEMORY`).
    pub prefaulted_bytes: u64,
}

/// The create path after the memory, step by step, in milliseconds (VMM wall clock).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct SetupTimes {
    /// Memory slots computed, payload written, the VMM's page tables built.
    pub prepare_ms: f64,
    /// `KVM_CREATE_VM` and its TSS address.
    pub vm_ms: f64,
    /// `KVM_SET_USER_MEMORY_REGION` of every slot.
    pub memslots_ms: f64,
    /// `KVM_CREATE_VCPU` and its registers.
    pub vcpu_ms: f64,
    /// `KVM_PRE_FAULT_MEMORY` over the guest's RAM (0 where not used).
    pub prefault_ms: f64,
    /// First `KVM_RUN` to the guest's first report.
    pub entry_ms: f64,
    /// Of the guest's create, what no step above and not the memory holds (filled in by
    /// the churn, which times the memory: the time between steps, and the VMM's own
    /// slot layout of the pool's extents).
    pub other_ms: f64,
}

/// A guest that ran to the end of its payload and still holds its VM and its memory.
pub struct Tenant<'p> {
    // Fields drop in order: the vCPU and VM go before the memory they map.
    vcpu: VcpuFd,
    vm: VmFd,
    ram: Ram<'p>,
    _tables: PageTables,
    tag: u64,
    /// What the boot found.
    pub stats: BootStats,
}

impl<'p> Tenant<'p> {
    /// Its RAM (the tag is in every scanned word after the run).
    pub fn ram(&self) -> &Ram<'p> {
        &self.ram
    }

    /// Its tag.
    pub fn tag(&self) -> u64 {
        self.tag
    }

    /// Tears the VM down, then gives the memory back (to the pool, or `munmap`). Returns
    /// milliseconds taken.
    pub fn destroy(self) -> f64 {
        let t = Instant::now();
        let Tenant { vcpu, vm, ram, _tables, .. } = self;
        drop(vcpu);
        drop(vm);
        drop(ram);
        drop(_tables);
        t.elapsed().as_secs_f64() * 1e3
    }
}

/// The KVM system handle, what it allows, and the TSC frequency guests measure with.
pub struct Kvm {
    kvm: kvm_ioctls::Kvm,
    max_memslots: usize,
    host_tsc_khz: f64,
    guest_tsc_khz: OnceLock<Option<u32>>,
    /// `KVM_PRE_FAULT_MEMORY` is offered and has not failed yet.
    pre_fault: AtomicBool,
}

/// What the guest does with its RAM, a full zero check either way (see [`payload`]).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestProgram {
    /// [`payload::CODE`]: reads every word of its RAM (stopping at the first non-zero
    /// one), then writes its tag over all of it (the default, and the proof figure: its
    /// scan only reads).
    #[default]
    ScanThenFill,
    /// [`payload::INIT_CODE`]: a page at a time, checks every word zero and then writes
    /// the page, as a booting OS initialises its memory.
    InitEachPage,
}

impl GuestProgram {
    /// The code loaded at [`ENTRY_GPA`].
    pub fn code(self) -> &'static [u8] {
        match self {
            GuestProgram::ScanThenFill => &CODE,
            GuestProgram::InitEachPage => &INIT_CODE,
        }
    }
}

impl std::fmt::Display for GuestProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GuestProgram::ScanThenFill => "scan, then fill",
            GuestProgram::InitEachPage => "check and write each page",
        })
    }
}

/// How pool RAM is mapped into KVM before a guest's first access.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Prefault {
    /// `KVM_PRE_FAULT_MEMORY` on the vCPU over every slot of pool RAM: the guest's
    /// second-stage mappings exist before it runs (pool memory is populated and zero, so
    /// nothing is allocated or zeroed for it).
    KvmPreFaultMemory,
    /// This host's KVM does not offer it (`KVM_CAP_PRE_FAULT_MEMORY` is 0: kernels before
    /// 6.10, or KVMs without two-dimensional paging such as PVM's shadow paging), or it
    /// failed once: KVM maps each range at the guest's first touch.
    AtFirstTouch,
}

impl std::fmt::Display for Prefault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Prefault::KvmPreFaultMemory => "KVM_PRE_FAULT_MEMORY",
            Prefault::AtFirstTouch => "at first touch",
        })
    }
}

/// `KVM_PRE_FAULT_MEMORY`: `_IOWR(KVMIO, 0xd5, struct kvm_pre_fault_memory)` (Linux 6.10).
const KVM_PRE_FAULT_MEMORY: libc::c_ulong = (3 << 30) | (64 << 16) | (0xae << 8) | 0xd5;
/// `KVM_CAP_PRE_FAULT_MEMORY`.
const CAP_PRE_FAULT_MEMORY: libc::c_ulong = 236;
/// Calls of `KVM_PRE_FAULT_MEMORY` per slot before giving up (it returns early when a
/// signal is pending or it needs rescheduling, and is called again from where it stopped).
const MAX_PREFAULT_CALLS: usize = 1 << 16;

/// Maps `[gpa, gpa + bytes)` into the vCPU's second-stage tables with
/// `KVM_PRE_FAULT_MEMORY`, calling again where a call stopped early.
fn pre_fault(vcpu: &VcpuFd, gpa: u64, bytes: u64) -> io::Result<()> {
    assert!(gpa.is_multiple_of(4096) && bytes.is_multiple_of(4096));
    let mut r = kvm_bindings::kvm_pre_fault_memory { gpa, size: bytes, ..Default::default() };
    for _ in 0..MAX_PREFAULT_CALLS {
        if r.size == 0 {
            return Ok(());
        }
        // SAFETY: `r` is a `kvm_pre_fault_memory` the kernel reads and updates in place
        // (64 bytes, the size the request number encodes); the fd is a live vCPU.
        let ret = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_PRE_FAULT_MEMORY, &mut r) };
        if ret < 0 {
            let e = io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) {
                return Err(e);
            }
        }
    }
    Err(io::Error::other(format!(
        "KVM_PRE_FAULT_MEMORY still had {} bytes left after {MAX_PREFAULT_CALLS} calls",
        r.size
    )))
}

/// Where the TSC frequency used for guest times comes from.
#[derive(Copy, Clone, Debug, PartialEq, serde::Serialize)]
pub struct TscFrequency {
    /// kHz used to convert the guests' TSC deltas.
    pub khz: f64,
    /// `KVM_GET_TSC_KHZ` of a vCPU (the guest TSC's rate, as KVM set it), if KVM answered.
    pub kvm_khz: Option<u32>,
    /// The host TSC against `CLOCK_MONOTONIC` over 20 ms at start (a cross-check).
    pub host_calibrated_khz: f64,
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; every x86_64 CPU has it.
    #[allow(unused_unsafe)]
    unsafe {
        std::arch::x86_64::_rdtsc()
    }
}

fn calibrate_host_tsc_khz() -> f64 {
    let (t, c) = (Instant::now(), rdtsc());
    while t.elapsed() < Duration::from_millis(20) {
        std::hint::spin_loop();
    }
    let (dt, dc) = (t.elapsed(), rdtsc().wrapping_sub(c));
    dc as f64 / dt.as_secs_f64() / 1e3
}

impl Kvm {
    /// Opens `/dev/kvm`, reads the memory-slot limit, calibrates the host TSC.
    pub fn open() -> Result<Kvm, VmmError> {
        let no_kvm = |e: kvm_ioctls::Error| VmmError::NoKvm(io::Error::from_raw_os_error(e.errno()));
        let kvm = kvm_ioctls::Kvm::new().map_err(no_kvm)?;
        // The file opens, but is it KVM? (KVM_GET_API_VERSION is 12 on every KVM.)
        let version = kvm.get_api_version();
        if version != kvm_bindings::KVM_API_VERSION as i32 {
            let why = if version < 0 { io::Error::last_os_error().to_string() } else { "not KVM's 12".into() };
            return Err(VmmError::NoKvm(io::Error::other(format!("KVM_GET_API_VERSION gave {version}: {why}"))));
        }
        let max_memslots = kvm.get_nr_memslots();
        let pre_fault = AtomicBool::new(kvm.check_extension_raw(CAP_PRE_FAULT_MEMORY) > 0);
        let host_tsc_khz = calibrate_host_tsc_khz();
        Ok(Kvm { kvm, max_memslots, host_tsc_khz, guest_tsc_khz: OnceLock::new(), pre_fault })
    }

    /// How pool RAM is mapped into KVM before a guest runs.
    pub fn prefault(&self) -> Prefault {
        if self.pre_fault.load(Relaxed) {
            Prefault::KvmPreFaultMemory
        } else {
            Prefault::AtFirstTouch
        }
    }

    /// Pre-faults `slots` of pool RAM for `vcpu` if this KVM can; returns the bytes mapped.
    /// A failure turns pre-faulting off for this `Kvm` (the guest then maps at first touch).
    pub(crate) fn pre_fault_slots(&self, vcpu: &VcpuFd, slots: &[Slot]) -> u64 {
        let mut done = 0;
        for s in slots {
            if self.prefault() != Prefault::KvmPreFaultMemory {
                break;
            }
            match pre_fault(vcpu, s.gpa, s.bytes) {
                Ok(()) => done += s.bytes,
                Err(_) => self.pre_fault.store(false, Relaxed),
            }
        }
        done
    }

    /// Memory slots one VM may have (`KVM_CAP_NR_MEMSLOTS`).
    pub fn max_memslots(&self) -> usize {
        self.max_memslots
    }

    /// The TSC frequency guest times are converted with: KVM's answer for the guest's TSC
    /// once a vCPU has asked, the host's calibration otherwise.
    pub fn tsc(&self) -> TscFrequency {
        let kvm_khz = self.guest_tsc_khz.get().copied().flatten();
        TscFrequency {
            khz: kvm_khz.map_or(self.host_tsc_khz, f64::from),
            kvm_khz,
            host_calibrated_khz: self.host_tsc_khz,
        }
    }

    /// Boots a guest on `ram` with tenant `tag` (non-zero) and runs it until it is done: it
    /// scans every word of its RAM but the code page, reports, writes `tag` over it all,
    /// and reports again. `t0` is when the caller started making the guest (its pool allocation).
    ///
    /// A non-zero word in the scan is [`VmmError::Leak`]. On any error the VM is torn down
    /// and the RAM given back.
    pub fn boot<'p>(&self, ram: Ram<'p>, tag: u64, t0: Instant) -> Result<Tenant<'p>, VmmError> {
        self.boot_program(ram, tag, t0, GuestProgram::ScanThenFill)
    }

    /// [`Kvm::boot`] running `program` (the read-only scan then the fill, or the
    /// booting-OS pass that writes each page right after checking it).
    pub fn boot_program<'p>(
        &self,
        mut ram: Ram<'p>,
        tag: u64,
        t0: Instant,
        program: GuestProgram,
    ) -> Result<Tenant<'p>, VmmError> {
        assert_ne!(tag, 0, "a tenant's tag is never zero");
        let t_prepare = Instant::now();
        let (bytes, keep, slots) = self.boot_shape(&ram)?;
        let balloon = keep < bytes;

        // Made before the VM, so it is dropped after it on an error return.
        let tables = PageTables::new()?;
        let mut setup = SetupTimes { prepare_ms: ms_since(t_prepare), ..Default::default() };
        let t = Instant::now();
        let vm = self.new_vm()?;
        setup.vm_ms = ms_since(t);
        let t = Instant::now();
        let mut kvm_slots = KvmSlots::new(&vm, self.max_memslots);
        for s in slots.iter().chain([&tables.slot()]) {
            kvm_slots.add(s)?;
        }
        // The code's page, populated on demand like any other (after the VM exists, so a
        // pager that takes pages back can have their slots removed).
        if let Some(s) = ram.populate(ENTRY_GPA, true, &mut kvm_slots)? {
            kvm_slots.add(&s)?;
        }
        ram.write(ENTRY_GPA, program.code());
        ram.write(TAG_GPA, &tag.to_le_bytes());
        if balloon {
            ram.write(payload::BALLOON_ENTRY, &payload::BALLOON_PROLOGUE);
            ram.write(payload::KEEP_GPA, &keep.to_le_bytes());
        }
        setup.memslots_ms = ms_since(t);
        let t = Instant::now();
        let mut vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        self.guest_tsc_khz.get_or_init(|| vcpu.get_tsc_khz().ok().filter(|&k| k > 0));
        set_long_mode(&vcpu, bytes, if balloon { payload::BALLOON_ENTRY } else { ENTRY_GPA })?;
        setup.vcpu_ms = ms_since(t);
        let t = Instant::now();
        // Pool memory is populated and zero: map it before the guest touches it.
        let prefaulted_bytes = if matches!(ram, Ram::Pool(_)) { self.pre_fault_slots(&vcpu, &slots) } else { 0 };
        setup.prefault_ms = ms_since(t);

        let words_checked = (keep - SCAN_START) / 8;
        let st = BootStats { bytes, memslots: slots.len(), words_checked, prefaulted_bytes, ..Default::default() };
        let mut run = BootRun { st, setup, started: None, t0, t_entry: Instant::now(), tsc: (0, 0), tag, balloon };
        // A demand guest exits once per range it populates (at most one per page; once
        // more per page a reclaim took away), and twice per chunk its balloon gives back.
        let max_exits = MAX_EXITS + if matches!(ram, Ram::Demand(_)) { (bytes / 2048) as usize } else { 0 };
        for _ in 0..max_exits {
            let exit = match vcpu.run() {
                Ok(VcpuExit::MmioRead(gpa, data)) => {
                    run.st.demand_faults += mmio(&mut ram, &mut kvm_slots, gpa, Mmio::Read(data))?;
                    continue;
                }
                Ok(VcpuExit::MmioWrite(gpa, data)) => {
                    run.st.demand_faults += mmio(&mut ram, &mut kvm_slots, gpa, Mmio::Write(data))?;
                    continue;
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    Some((port, data.iter().rev().fold(0u64, |a, &b| a << 8 | b as u64)))
                }
                Ok(VcpuExit::Hlt) => None,
                Ok(other) => {
                    let what = format!("{other:?}");
                    return Err(VmmError::Guest(format!("{what} at {}", where_is(&vcpu))));
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => return Err(kvm_err("KVM_RUN")(e)),
            };
            let Some((port, v)) = exit else {
                return Err(VmmError::Guest(format!("halted before it was done, at {}", where_is(&vcpu))));
            };
            if self.on_port(port, v, &mut run, &mut ram, &mut kvm_slots)? {
                // Done: the guest is not resumed (its `hlt` is for a VMM that would).
                run.st.memslots = ram.slots().len();
                run.st.slots_removed = kvm_slots.removed;
                return Ok(Tenant { vcpu, vm, ram, _tables: tables, tag, stats: run.st });
            }
        }
        Err(VmmError::Guest(format!("still running after {max_exits} exits, at {}", where_is(&vcpu))))
    }
}

impl Kvm {
    /// Checks a guest's RAM before [`Kvm::boot`]: its size, its balloon's (what it keeps,
    /// in whole chunks), and its slots (one more is the VMM's page tables'). Returns the
    /// RAM's bytes, the bytes the guest keeps, and its slots.
    fn boot_shape(&self, ram: &Ram<'_>) -> Result<(u64, u64, Vec<Slot>), VmmError> {
        let bytes = ram.bytes();
        if !(MIN_GUEST_BYTES..=MAX_GUEST_BYTES).contains(&bytes) || !bytes.is_multiple_of(4096) {
            return Err(VmmError::BadSize(bytes));
        }
        let keep = ram.keep_bytes();
        let chunk = payload::BALLOON_CHUNK;
        if keep < bytes && (keep < chunk || !bytes.is_multiple_of(chunk) || !keep.is_multiple_of(chunk)) {
            return Err(VmmError::BadSize(keep));
        }
        let slots = ram.slots();
        if slots.len() + 1 > self.max_memslots {
            return Err(VmmError::TooManySlots { needed: slots.len() + 1, limit: self.max_memslots });
        }
        debug_assert!(keep <= bytes, "a guest keeps at most its RAM");
        Ok((bytes, keep, slots))
    }

    /// Handles the guest's write of `v` to `port` during [`Kvm::boot`]: records its times
    /// and counts, gives back what its balloon names, refuses a leak or a wrong tag.
    /// Returns whether the guest is done.
    fn on_port(
        &self,
        port: u16,
        v: u64,
        run: &mut BootRun,
        ram: &mut Ram<'_>,
        kvm_slots: &mut KvmSlots<'_>,
    ) -> Result<bool, VmmError> {
        let st = &mut run.st;
        match port {
            payload::PORT_BALLOON if run.balloon => st.ballooned_bytes += ram.balloon(v, kvm_slots)?,
            payload::PORT_STARTED => {
                st.create_ms = run.t0.elapsed().as_secs_f64() * 1e3;
                run.setup.entry_ms = ms_since(run.t_entry);
                st.setup = run.setup.clone();
                run.started = Some(Instant::now());
            }
            payload::PORT_SCAN_TSC_LO => run.tsc.0 = v,
            payload::PORT_SCAN_TSC_HI => run.tsc.1 = v,
            payload::PORT_NONZERO => st.nonzero_words = v,
            payload::PORT_FIRST_NONZERO => {
                let first = v;
                st.scan_cycles = run.tsc.1 << 32 | run.tsc.0;
                st.scan_ms = st.scan_cycles as f64 / self.tsc().khz;
                if st.nonzero_words > 0 {
                    // The guest waits at its OUT: the word is still there to read.
                    let value = ram.read_u64(first).unwrap_or(0);
                    return Err(VmmError::Leak {
                        tag: run.tag,
                        nonzero_words: st.nonzero_words,
                        gpa: first,
                        gfn: first >> 12,
                        value,
                    });
                }
            }
            payload::PORT_FILL_TSC_LO => run.tsc.0 = v,
            payload::PORT_FILL_TSC_HI => {
                st.fill_cycles = v << 32 | run.tsc.0;
                st.fill_ms = st.fill_cycles as f64 / self.tsc().khz;
            }
            payload::PORT_DONE => {
                if v != run.tag & 0xffff_ffff {
                    return Err(VmmError::Guest(format!("reported tag {v:#x} after its fill, not {:#x}", run.tag)));
                }
                st.run_ms = run.started.map_or(0.0, |s| s.elapsed().as_secs_f64() * 1e3);
                return Ok(true);
            }
            p => return Err(VmmError::Guest(format!("wrote {v:#x} to port {p:#x}, which it never uses"))),
        }
        Ok(false)
    }

    /// A new VM with its TSS address set.
    pub(crate) fn new_vm(&self) -> Result<VmFd, VmmError> {
        let vm = self.kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        vm.set_tss_address(TSS_ADDR).map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        Ok(vm)
    }
}

/// Milliseconds since `t`.
pub(crate) fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Sets KVM memory slot `id` of `vm` to `s` (`s.bytes == 0` deletes it).
///
/// # Safety
/// Unless `s.bytes` is 0, `[s.host, s.host + s.bytes)` must be page aligned, readable and
/// writable host memory that stays mapped, and is this guest's alone, until the slot is
/// deleted or `vm` is dropped.
pub(crate) unsafe fn set_slot(vm: &VmFd, id: u32, s: &Slot) -> Result<(), VmmError> {
    assert!(s.gpa.is_multiple_of(4096) && s.bytes.is_multiple_of(4096), "slots are whole pages");
    let region = kvm_userspace_memory_region {
        slot: id,
        guest_phys_addr: s.gpa,
        memory_size: s.bytes,
        userspace_addr: s.host as u64,
        flags: 0,
    };
    // SAFETY: the caller's contract.
    unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))
}

/// The vCPU's instruction pointer and registers, for error messages.
fn where_is(vcpu: &VcpuFd) -> String {
    match vcpu.get_regs() {
        Ok(r) => format!("rip {:#x} (eax {:#x} ecx {:#x} esi {:#x} edi {:#x})", r.rip, r.rax, r.rcx, r.rsi, r.rdi),
        Err(e) => format!("an unknown place (KVM_GET_REGS: {e})"),
    }
}

/// Guest-physical address of the VMM's own slot (page tables and TSS), above any
/// guest's RAM.
pub const PAGE_TABLES_GPA: u64 = 0xf000_0000;
/// The VMM slot: PML4, PDPT and four page directories of 2 MiB pages identity mapping the
/// low 4 GiB, then a page holding the TSS.
const PAGE_TABLES_BYTES: usize = 7 * 4096;
/// The TSS: its guest-physical address, its I/O bitmap's offset in it, and its limit.
const TSS_GPA: u64 = PAGE_TABLES_GPA + 6 * 4096;
const IO_BITMAP: usize = 0x68;
/// Page-table entry bits the VMM sets beside present, writable and user.
const ACCESSED: u64 = 0x20;
const DIRTY: u64 = 0x40;
const HUGE: u64 = 0x80;
/// The bitmap covers ports 0 to 0x5ff (one bit each); ports past the limit are denied.
const TSS_LIMIT: u32 = (IO_BITMAP + 0x600 / 8) as u32 - 1;

/// The identity map and TSS the payload runs under, in memory of the VMM's own (not the
/// guest's RAM).
///
/// The TSS is there for its I/O permission bitmap: where KVM emulates a privilege-3
/// `OUT` (PVM does), it checks the bitmap, which without a TSS of ours would be read from
/// wherever the reset TR points: guest RAM, which the guest fills with its tag. The bitmap
/// allows ports `0x500..=0x5ff` (the payload's) and denies the rest.
pub(crate) struct PageTables(AnonRam);

impl PageTables {
    pub(crate) fn new() -> Result<PageTables, VmmError> {
        let mut m = AnonRam::new(PAGE_TABLES_BYTES as u64)?;
        let bytes = m.bytes_mut();
        let tss = &mut bytes[(TSS_GPA - PAGE_TABLES_GPA) as usize..];
        tss[0x66..0x68].copy_from_slice(&(IO_BITMAP as u16).to_le_bytes());
        tss[IO_BITMAP..IO_BITMAP + 0x500 / 8].fill(0xff);
        let t = m.words_mut();
        let (pml4, pdpt, pd) = (0, 512, 1024);
        // Present, writable, user, and already accessed: a shadow-paging KVM (PVM) sets the
        // accessed bit of each entry on the guest's first walk through it otherwise.
        let user_rw = 0x7 | ACCESSED;
        t[pml4] = (PAGE_TABLES_GPA + 0x1000) | user_rw;
        for i in 0..4 {
            t[pdpt + i] = (PAGE_TABLES_GPA + 0x2000 + 0x1000 * i as u64) | user_rw;
        }
        // 2 MiB pages, already dirty: with the dirty bit clear a shadow-paging KVM maps a
        // page read-only at the guest's first read, to set the bit at its first write,
        // two shadow faults per 2 MiB instead of one (as a guest kernel's direct map is
        // dirty from boot).
        for i in 0..2048 {
            t[pd + i] = ((i as u64) << 21) | user_rw | DIRTY | HUGE;
        }
        Ok(PageTables(m))
    }

    pub(crate) fn slot(&self) -> Slot {
        Slot { gpa: PAGE_TABLES_GPA, host: self.0.ptr.as_ptr() as usize, bytes: self.0.len as u64 }
    }
}

/// 64-bit mode with the identity map and flat segments, at privilege 3 with IOPL 3 (so its
/// `OUT`s are allowed; see the payload for why not privilege 0 or 32-bit mode), caches on,
/// interrupts off, at `entry` (the payload's, or its balloon prologue's) with `RDI` = RAM
/// bytes.
pub(crate) fn set_long_mode(vcpu: &VcpuFd, bytes: u64, entry: u64) -> Result<(), VmmError> {
    let mut s = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x33,
        type_: 0xb, // execute/read, accessed
        present: 1,
        dpl: 3,
        db: 0, // must be 0 in 64-bit mode
        s: 1,
        l: 1, // 64-bit mode
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    let data = kvm_segment { selector: 0x2b, type_: 0x3, db: 1, l: 0, ..code }; // read/write, accessed
    (s.cs, s.ds, s.es, s.fs, s.gs, s.ss) = (code, data, data, data, data, data);
    // PE, ET, WP, PG; not CD or NW (the reset value's), which would disable the caches.
    s.cr0 = 0x8001_0011;
    s.cr3 = PAGE_TABLES_GPA;
    s.cr4 = 0x20; // PAE
    s.efer = 0x500; // LME, LMA
    s.tr = kvm_segment {
        base: TSS_GPA,
        limit: TSS_LIMIT,
        selector: 0x40,
        type_: 0xb, // 64-bit TSS, busy
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    vcpu.set_sregs(&s).map_err(kvm_err("KVM_SET_SREGS"))?;
    let regs = kvm_bindings::kvm_regs { rip: entry, rflags: 0x3002, rdi: bytes, ..Default::default() };
    vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))
}

/// A guest's MMIO access to RAM not mapped into it yet: a read to fill or a write to copy.
enum Mmio<'d> {
    Read(&'d mut [u8]),
    Write(&'d [u8]),
}

/// Serves an MMIO exit at `gpa`: populates the range behind it (adding its slot) if the
/// RAM pages on demand, then copies the access through the host mapping. Returns the
/// demand faults it served (0 or 1). An access across two slots is refused.
fn mmio(ram: &mut Ram<'_>, kvm_slots: &mut KvmSlots<'_>, gpa: u64, access: Mmio<'_>) -> Result<u64, VmmError> {
    let write = matches!(access, Mmio::Write(_));
    let mut faults = 0;
    if let Some(s) = ram.populate(gpa, write, kvm_slots)? {
        kvm_slots.add(&s)?;
        faults += 1;
    }
    match access {
        Mmio::Read(data) => {
            let len = data.len() as u64;
            let p = ram.host(gpa, len).ok_or_else(|| VmmError::Guest(format!("read across slots at {gpa:#x}")))?;
            // SAFETY: `len` bytes at `p` are inside one slot of `ram` (checked by `host`),
            // which the guest, stopped at this exit, does not touch.
            unsafe { std::ptr::copy_nonoverlapping(p, data.as_mut_ptr(), data.len()) };
        }
        Mmio::Write(data) => {
            if ram.host(gpa, data.len() as u64).is_none() {
                return Err(VmmError::Guest(format!("write across slots at {gpa:#x}")));
            }
            ram.write(gpa, data);
        }
    }
    Ok(faults)
}

/// What [`Kvm::boot`] has learnt of a running guest so far, and what it runs with.
struct BootRun {
    st: BootStats,
    setup: SetupTimes,
    /// When the guest's first instruction ran.
    started: Option<Instant>,
    /// When the caller began making the guest, and when the vCPU first entered it.
    t0: Instant,
    t_entry: Instant,
    /// Low and high halves of the last TSC delta reported.
    tsc: (u64, u64),
    tag: u64,
    balloon: bool,
}
