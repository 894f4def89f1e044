//! Where a pool's nodes really sit: for each heap node, the host node its slice of the
//! arena is bound to as the kernel reports it (`get_mempolicy` on pages of the slice: the
//! policy's nodes, and the node each page is on), and the CPUs its scrubbers were pinned
//! to and ran on (`sched_getcpu` from each scrubber). Run reports carry it (`numa`), so
//! a multi-node run shows its binding instead of asserting it.

use crate::arena::NumaBinding;
use crate::pool::Pool;
use scrubheap::Mfn;
use serde::Serialize;

/// Pages of each slice asked where they are: first, middle and last.
const PROBES_PER_SLICE: u64 = 3;

/// Where one heap node's memory and scrubbers are.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct NodePlacement {
    /// The heap node.
    pub node: usize,
    /// The host node its slice was bound to (`mbind`), if it was.
    pub bound_to: Option<u32>,
    /// The kernel's memory policy of the slice (`get_mempolicy(MPOL_F_ADDR)` on its first
    /// page): `bind`, `default`, ... or `unknown` if the call failed.
    pub policy: String,
    /// The nodes of that policy.
    pub policy_nodes: Vec<u32>,
    /// The host node each probed page (first, middle, last) is on
    /// (`get_mempolicy(MPOL_F_NODE | MPOL_F_ADDR)`); empty if the call failed.
    pub page_nodes: Vec<u32>,
    /// CPUs its scrubbers were pinned to.
    pub scrubber_cpus_pinned: Vec<usize>,
    /// CPUs its scrubbers ran on (`sched_getcpu` after pinning and after each scrub step
    /// that did work).
    pub scrubber_cpus_seen: Vec<u32>,
    /// The CPUs of `bound_to` (sysfs), empty when not bound.
    pub host_node_cpus: Vec<u32>,
}

impl NodePlacement {
    /// Bound to its host node, every probed page on it, and every scrubber ran only on
    /// that node's CPUs.
    pub fn verified(&self) -> bool {
        let Some(n) = self.bound_to else { return false };
        self.policy == "bind"
            && self.policy_nodes == [n]
            && self.page_nodes.len() as u64 == PROBES_PER_SLICE
            && self.page_nodes.iter().all(|&p| p == n)
            && !self.scrubber_cpus_seen.is_empty()
            && self.scrubber_cpus_seen.iter().all(|c| self.host_node_cpus.contains(c))
    }

    /// One line, e.g. `n0 -> host node 0 (bind [0], pages on [0, 0, 0]), scrubbers on CPUs [0] of [0]: verified`.
    pub fn describe(&self) -> String {
        let host = self.bound_to.map_or("not bound".to_string(), |n| format!("host node {n}"));
        format!(
            "n{} -> {host} ({} {:?}, pages on {:?}), scrubbers pinned to {:?} ran on CPUs {:?} of {:?}: {}",
            self.node,
            self.policy,
            self.policy_nodes,
            self.page_nodes,
            self.scrubber_cpus_pinned,
            self.scrubber_cpus_seen,
            self.host_node_cpus,
            if self.verified() { "verified" } else { "NOT verified" }
        )
    }
}

/// Stops the pool's scrubbers and reports, per heap node, where its memory and its
/// scrubbers are (the memory is probed first, while the pool still holds the arena).
pub fn stop_and_place(pool: Pool) -> Vec<NodePlacement> {
    let nodes = pool.config().nodes;
    let arena = pool.arena();
    let bound = match arena.numa() {
        NumaBinding::Bound { nodes } => nodes.clone(),
        _ => Vec::new(),
    };
    let per_node = arena.frames() / nodes as u64;
    assert!(per_node > 0, "every node has frames");
    let mut placed: Vec<NodePlacement> = (0..nodes)
        .map(|node| {
            let first = arena.base().0 + node as u64 * per_node;
            let probes = [first, first + per_node / 2, first + per_node - 1];
            let (policy, policy_nodes) = page_policy(arena.host_ptr(Mfn(first), 1))
                .map_or(("unknown".to_string(), Vec::new()), |(m, n)| (m.to_string(), n));
            let page_nodes = probes.iter().map_while(|&f| page_node(arena.host_ptr(Mfn(f), 1))).collect();
            let bound_to = bound.get(node).copied();
            let host_node_cpus = bound_to.map_or(Vec::new(), crate::arena::sys::node_cpus);
            NodePlacement { node, bound_to, policy, policy_nodes, page_nodes, host_node_cpus, ..Default::default() }
        })
        .collect();
    for s in pool.stop() {
        let p = &mut placed[s.node];
        p.scrubber_cpus_pinned.extend(s.cpu);
        p.scrubber_cpus_seen.extend(s.cpus_seen.iter().copied());
    }
    for p in &mut placed {
        p.scrubber_cpus_pinned.sort_unstable();
        p.scrubber_cpus_pinned.dedup();
        p.scrubber_cpus_seen.sort_unstable();
        p.scrubber_cpus_seen.dedup();
    }
    debug_assert_eq!(placed.len(), nodes);
    placed
}

/// Words of the node mask `get_mempolicy` fills (1024 nodes).
const MASK_WORDS: usize = 16;

/// The memory policy of the page at `addr`: its mode's name and its nodes.
fn page_policy(addr: *mut u8) -> Option<(&'static str, Vec<u32>)> {
    const MPOL_F_ADDR: libc::c_ulong = 2;
    let mut mode: libc::c_int = -1;
    let mut mask = [0u64; MASK_WORDS];
    // SAFETY: `mode` and `mask` are live locals the kernel writes (an int, and a node mask
    // of exactly the bit count passed); `addr` is only looked up in this process's
    // mappings, never dereferenced here.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut mode as *mut libc::c_int,
            mask.as_mut_ptr(),
            (MASK_WORDS * 64) as libc::c_ulong,
            addr,
            MPOL_F_ADDR,
        )
    };
    if r != 0 {
        return None;
    }
    let name = match mode {
        0 => "default",
        1 => "preferred",
        2 => "bind",
        3 => "interleave",
        4 => "local",
        _ => "other",
    };
    let nodes = (0..MASK_WORDS as u32 * 64).filter(|&n| mask[(n / 64) as usize] & (1 << (n % 64)) != 0).collect();
    Some((name, nodes))
}

/// The host node the (faulted-in) page at `addr` is on.
fn page_node(addr: *mut u8) -> Option<u32> {
    const MPOL_F_NODE: libc::c_ulong = 1;
    const MPOL_F_ADDR: libc::c_ulong = 2;
    let mut node: libc::c_int = -1;
    // SAFETY: `node` is a live local the kernel writes; no mask is passed (null, 0 bits);
    // `addr` is only looked up in this process's page tables, never dereferenced here.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut node as *mut libc::c_int,
            std::ptr::null_mut::<u64>(),
            0 as libc::c_ulong,
            addr,
            MPOL_F_NODE | MPOL_F_ADDR,
        )
    };
    (r == 0 && node >= 0).then_some(node as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_answers_for_a_page_of_this_process() {
        let mut page = vec![1u8; 1 << 16];
        let addr = page.as_mut_ptr();
        let (mode, _) = page_policy(addr).expect("get_mempolicy answers for a mapped page");
        assert_ne!(mode, "other");
        assert!(page_node(addr).is_some());
    }

    #[test]
    fn a_placement_is_verified_only_with_all_the_evidence() {
        let good = NodePlacement {
            node: 1,
            bound_to: Some(1),
            policy: "bind".into(),
            policy_nodes: vec![1],
            page_nodes: vec![1, 1, 1],
            scrubber_cpus_pinned: vec![1],
            scrubber_cpus_seen: vec![1],
            host_node_cpus: vec![1],
        };
        assert!(good.verified());
        assert!(good.describe().ends_with(": verified"));
        let wrong_page = NodePlacement { page_nodes: vec![1, 0, 1], ..good.clone() };
        let wrong_cpu = NodePlacement { scrubber_cpus_seen: vec![0, 1], ..good.clone() };
        let never_ran = NodePlacement { scrubber_cpus_seen: vec![], ..good.clone() };
        let unbound = NodePlacement { bound_to: None, ..good.clone() };
        let default = NodePlacement { policy: "default".into(), ..good.clone() };
        for p in [wrong_page, wrong_cpu, never_ran, unbound, default] {
            assert!(!p.verified(), "{p:?}");
        }
    }
}
