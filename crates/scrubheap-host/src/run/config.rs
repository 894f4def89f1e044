//! How a run is set up ([`RunConfig`], [`Backend`]), why it can stop ([`RunError`]), and
//! the fixed shape of every run (Movable share, pins per guest).

use crate::pool::{PoolConfig, PoolError};
use scrubheap::Policy;
use scrubheap_workload::Workload;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where guests get their memory.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The scrubheap pool under a policy.
    Heap(Policy),
    /// Fresh anonymous memory per guest, zeroed by the kernel at fault.
    Kernel,
}

impl Backend {
    /// The pool a churn of `memory_bytes` over `nodes` nodes with `scrubbers_per_node`
    /// scrubber threads each runs on under this backend (`None`: the kernel baseline has
    /// no pool). The other fields are [`PoolConfig::default`]'s, for the caller to set.
    pub fn pool_config(self, memory_bytes: u64, nodes: usize, scrubbers_per_node: usize) -> Option<PoolConfig> {
        let Backend::Heap(policy) = self else { return None };
        Some(PoolConfig { memory_bytes, nodes, scrubbers_per_node, policy, ..PoolConfig::default() })
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Heap(p) => write!(f, "{p}"),
            Backend::Kernel => f.write_str("kernel"),
        }
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "kernel" {
            return Ok(Backend::Kernel);
        }
        s.parse::<Policy>()
            .map(Backend::Heap)
            .map_err(|_| format!("unknown policy '{s}': use one of sync, alloc, xen, xen-cap2m, scrubheap, kernel"))
    }
}

/// How a run is set up.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Arena bytes.
    pub memory_bytes: u64,
    /// Nodes (emulated on a one-node host).
    pub nodes: usize,
    /// Scrubber threads per node.
    pub scrubbers_per_node: usize,
    /// Where guests get memory.
    pub backend: Backend,
    /// Seed (recorded in the report; the workload was built with it).
    pub seed: u64,
    /// Who arrives when with how much for how long.
    pub workload: Workload,
    /// Threads that create and destroy guests.
    pub workers: usize,
    /// Verify mode: poison freed frames, check every word handed over.
    pub verify: bool,
    /// Try hugetlbfs for the arena.
    pub hugetlb: bool,
    /// Milliseconds between timeline samples.
    pub sample_ms: u64,
    /// How scrubber threads are scheduled.
    pub scrub_priority: crate::ScrubPriority,
    /// The run's own threads (guest builders, the hot-remove) are raised while they hold
    /// a node lock, as `boost` scrubbers are ([`crate::priority::boost_lock_holds`]).
    pub lock_boost: bool,
    /// Write every allocation, free and claim the workers make as an op log here.
    pub record: Option<PathBuf>,
    /// Zeroing kernel, or calibrate.
    pub kernel: Option<crate::Kernel>,
    /// A third of the guests, and every guest of at least an eighth of the host, reboot
    /// once midway through their life: torn down and built again at once, on memory still
    /// dirty from the teardown (the field's case: large guests rebooting on a full host).
    pub reboots: bool,
    /// A third of the guests that do not reboot balloon out a quarter of their memory a
    /// third of the way through their life and balloon it back in at two thirds.
    pub balloons: bool,
    /// The host has just booted: every frame holds the previous boot's bytes (poison) and
    /// is dirty, scrubbed by idle CPUs while the first guests are built (Xen's
    /// `bootscrub=idle`), instead of starting from memory known to be zero.
    pub boot_dirty: bool,
}

/// Why a run could not go on.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The pool could not be built.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// An I/O error (the op log).
    #[error("{0}")]
    Io(String),
}

/// The upper quarter of every node is its Movable zone: guest memory (movable) fills it
/// first, unmovable memory never does, and the hot-remove takes its upper half on node 0.
pub const MOVABLE_FRACTION: f64 = 0.25;

/// Pages each guest pins long-term, as a device doing DMA into them would.
pub const PINS_PER_GUEST: usize = 4;
