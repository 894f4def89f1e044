//! Real guests on the scrubheap pool: a minimal KVM VMM whose guest RAM is the arena
//! extents the heap handed a guest, and adapters for Rust kernels and rust-vmm VMMs.
//!
//! - [`vm::Kvm::boot`] creates a VM and one vCPU, maps the guest's RAM (contiguous
//!   guest-physical from 0) with one KVM memory slot per run of host-contiguous extents
//!   ([`slots`]), and runs the [`payload`]: 64-bit code (see there why not 32-bit) that scans its RAM,
//!   reports how many 8-byte words were not zero, writes its tenant tag over all of it and
//!   halts. A non-zero word is a leak between tenants and an error.
//! - [`vm::DemandPager`] is the hook for populate-on-demand guests: a range with no slot
//!   exits to the VMM at the guest's first touch, which has the pager populate it, maps
//!   it as a new slot, completes the access and resumes the guest; [`pod::PodPager`]
//!   serves it from the heap's populate-on-demand layer.
//! - [`churn::run`] is `scrubheap vmm`: guests of mixed sizes (or of one size,
//!   [`churn::fixed_workload`]) booted, scanned, filled and destroyed on the pool, or on
//!   fresh anonymous memory (the `kernel` baseline). Pool RAM is pre-faulted into KVM
//!   before the guest runs where KVM has `KVM_PRE_FAULT_MEMORY` ([`vm::Prefault`]).
//! - [`balloon::run`] is `scrubheap vmm --balloon`: a guest gives the top of its RAM back
//!   over its port and asks for it again; the pool path shrinks its memory slots and frees
//!   the frames to the pool, the kernel paths `madvise` them away as virtio-balloon and
//!   virtio-mem VMMs do.
//! - Adapters, each behind a feature: `x86_64` ([`frames::HeapFrames`]: the `x86_64`
//!   crate's `FrameAllocator` and `FrameDeallocator` of 4 KiB, 2 MiB and 1 GiB frames over
//!   a heap), and `vm-memory` ([`guest_memory::pool_guest_memory`]: `vm-memory` guest
//!   memory over a guest's extents, in the guest-physical layout the VMM chooses, that
//!   owns the guest and gives its frames back to the pool when its last clone drops).
//!
//! Linux on x86_64 only: the VMM needs `/dev/kvm`.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod payload;
pub mod slots;

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod balloon;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod churn;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod pod;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod vm;

#[cfg(feature = "x86_64")]
pub mod frames;
#[cfg(all(feature = "vm-memory", unix))]
pub mod guest_memory;
