//! The populate-on-demand lines of the op log: `pod`, `touch`, `balloon`, `pod_target`,
//! `destroy`, the PoD frames the checks count, and the PoD part of the report.
//!
//! Every call the op log makes to the PoD API is in this module (its tests included),
//! so moving PoD out of the heap re-points this one file.

use super::ReplayHeap;
use super::{fail, Fail, Replayer};
use crate::{kind, Op};
use scrubheap_pod::{NoSecondMapping, PodConfig, PodError, PodProgress, PodTouch, Pods, POD_MAX_PAGES_PER_FRAME};

/// Frames the PoD guests hold (allocated, but by no id of the log).
pub(super) fn pod_frames(pods: &Pods) -> u64 {
    pods.frames()
}

/// The PoD layer's own invariants over `heap` (a broken one is a bug, never an input error).
pub(super) fn pod_invariants(pods: &Pods, heap: &ReplayHeap) -> Result<(), String> {
    pods.check_invariants(heap).map_err(|e| e.to_string())
}

/// A PoD error counts as `Pod` + its variant (`PodExhausted`, ...), a heap error under it
/// as the heap's kind.
impl From<PodError> for Fail {
    fn from(e: PodError) -> Self {
        Fail { kind: e.kind(), message: e.to_string() }
    }
}

impl Replayer {
    /// Runs one PoD line.
    pub(super) fn pod_op(&mut self, op: Op) -> Result<(), Fail> {
        let heap = self.heap_or_fail()?;
        match op {
            Op::Pod { dom, max_pages, target, node } => {
                // Every p2m costs memory: all of them together stay within the heap's own
                // per-guest limit, so a hostile log cannot make the replayer allocate much.
                let pods = &self.pods;
                let live: u64 = pods.domains().iter().filter_map(|&d| pods.stats(d).ok()).map(|s| s.max_pages).sum();
                let limit = self.total_frames.saturating_mul(POD_MAX_PAGES_PER_FRAME);
                if live.saturating_add(max_pages) > limit {
                    return fail(
                        kind::TOO_LARGE,
                        format!("PoD guests of {live} + {max_pages} pages exceed the replay limit of {limit}"),
                    );
                }
                let cfg = PodConfig { node, ..PodConfig::new(max_pages, target) };
                let p = self.pods.create(heap, dom, &cfg, &self.preempt(false))?;
                if p != PodProgress::Done {
                    self.violation(format!("pod_create of {dom} never asked to yield but returned {p:?}"));
                }
            }
            Op::Touch { dom, gfn, data } => {
                // The log's guests have no second mapping; an empty-cache reclaim is driven
                // in its bounded steps to the end, as a vCPU re-executing its access does.
                let m = loop {
                    match self.pods.touch(heap, dom, gfn, data, &mut NoSecondMapping, &|| true)? {
                        PodTouch::Mapped(m) => break m,
                        PodTouch::Preempted => {}
                    }
                };
                if m.gfn > gfn || gfn - m.gfn >= 1u64 << m.order {
                    self.violation(format!("touch of gfn {gfn:#x} returned a mapping {m:?} that does not hold it"));
                }
            }
            Op::Balloon { dom, gfn, order } => {
                // One bounded slot step per call, driven to the end.
                while self.pods.balloon(heap, dom, gfn, order, &mut NoSecondMapping, &|| true)?
                    == PodProgress::Preempted
                {}
            }
            Op::PodTarget { dom, target } => {
                let p = self.pods.set_target(heap, dom, target, &self.preempt(false))?;
                if p != PodProgress::Done {
                    self.violation(format!("pod_set_target of {dom} never asked to yield but returned {p:?}"));
                }
            }
            Op::Destroy { dom } => {
                // Driven to completion with a preempt that asks at every drain step.
                while self.pods.destroy(heap, dom, &self.preempt(true))? == PodProgress::Preempted {}
            }
            _ => {}
        }
        Ok(())
    }

    /// Adds the heap's PoD state to the report as the heap ends.
    pub(super) fn pod_end(&mut self) {
        let t = self.pods.totals();
        let p = &mut self.report.pod;
        p.populated = t.populated;
        p.cache = t.cache;
        p.entries = t.entries;
        p.superpages_reclaimed += t.counters.superpages_reclaimed;
        p.zero_pages_reclaimed += t.counters.zero_pages_reclaimed;
        p.superpages_shattered += t.counters.superpages_shattered;
        p.crashes += t.counters.crashes;
    }
}

#[cfg(test)]
mod tests {
    use crate::replay::tests::finish_clean;
    use crate::{parse_line, Op, ReplayReport, Replayer};
    use scrubheap::DomId;

    /// A replayer of up to 2^16 frames that has replayed `log`.
    fn replayed(log: &str) -> Replayer {
        let mut r = Replayer::with_max_frames(1 << 16);
        r.replay_str(log);
        r
    }

    /// Asserts that each kind of error happened exactly so many times.
    fn assert_errors(rep: &ReplayReport, expected: &[(&str, u64)]) {
        for &(kind, n) in expected {
            assert_eq!(rep.errors.get(kind), Some(&n), "{kind}: {:?}", rep.errors);
        }
    }

    #[test]
    fn every_pod_line_parses() {
        assert_eq!(
            parse_line("pod dom=3 max_pages=0x1000 target=512 node=1").unwrap(),
            Some(Op::Pod { dom: DomId(3), max_pages: 4096, target: 512, node: Some(1) })
        );
        assert_eq!(
            parse_line("touch dom=3 gfn=7 data").unwrap(),
            Some(Op::Touch { dom: DomId(3), gfn: 7, data: true })
        );
        assert_eq!(parse_line("touch dom=3 gfn=7").unwrap(), Some(Op::Touch { dom: DomId(3), gfn: 7, data: false }));
        assert_eq!(
            parse_line("balloon dom=3 gfn=512 order=9").unwrap(),
            Some(Op::Balloon { dom: DomId(3), gfn: 512, order: 9 })
        );
        assert_eq!(parse_line("pod_target dom=3 target=0").unwrap(), Some(Op::PodTarget { dom: DomId(3), target: 0 }));
        assert_eq!(parse_line("destroy dom=3").unwrap(), Some(Op::Destroy { dom: DomId(3) }));
        for bad in [
            "pod dom=3 max_pages=10",
            "pod dom=3 target=10",
            "touch dom=3",
            "touch gfn=1",
            "touch dom=1 gfn=1 data=1",
            "balloon dom=1 gfn=0",
            "balloon dom=1 gfn=0 order=300",
            "pod_target dom=1",
            "destroy",
            "destroy dom=1 now",
        ] {
            assert!(parse_line(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn a_pod_log_replays_with_its_counts() {
        let r = replayed(
            "heap nodes=1 frames_per_node=8192\n\
             pod dom=1 max_pages=4096 target=1024\n\
             touch dom=1 gfn=0              # 2 MiB populate, zero\n\
             touch dom=1 gfn=600 data       # 2 MiB populate, used\n\
             balloon dom=1 gfn=5 order=0    # zeroed superpage reclaimed whole\n\
             balloon dom=1 gfn=601 order=0  # superpage with data shattered\n\
             balloon dom=1 gfn=2048 order=11\n\
             touch dom=1 gfn=5              # ballooned out: PodNotMapped\n\
             touch dom=1 gfn=9999           # PodGfnOutOfRange\n\
             balloon dom=1 gfn=3 order=1    # PodUnaligned\n\
             pod_target dom=1 target=5000   # PodTargetTooLarge\n\
             pod dom=1 max_pages=16 target=0 # PodDomainExists\n\
             pod_target dom=1 target=700\n\
             check\n\
             pod dom=2 max_pages=1024 target=4\n\
             touch dom=2 gfn=0 data\n\
             touch dom=2 gfn=1 data\n\
             touch dom=2 gfn=2 data\n\
             touch dom=2 gfn=3 data\n\
             touch dom=2 gfn=4 data         # out of PoD memory: dom 2 crashes\n\
             touch dom=2 gfn=0              # PodCrashed\n\
             destroy dom=2\n\
             destroy dom=2                  # PodUnknownDomain\n\
             pod dom=4 max_pages=0x100000000 target=0 # beyond the replay limit\n\
             check\n",
        );
        assert_eq!(r.report().invariant_violations, 0, "{:?}", r.report().violations);
        let holds = r.pods().stats(DomId(1)).unwrap();
        let rep = finish_clean(r);
        let kinds = ["PodNotMapped", "PodGfnOutOfRange", "PodUnaligned", "PodTargetTooLarge", "PodDomainExists"];
        let more = ["PodExhausted", "PodCrashed", "PodUnknownDomain", "TooLarge"];
        assert_errors(&rep, &kinds.iter().chain(&more).map(|&k| (k, 1)).collect::<Vec<_>>());
        assert_eq!(rep.ops, 25);
        assert_eq!(rep.ok, 16);
        let p = rep.pod;
        assert_eq!((p.superpages_reclaimed, p.superpages_shattered, p.crashes), (1, 1, 1));
        assert_eq!((p.populated, p.cache, p.entries), (holds.populated, holds.cache, holds.entries));
        assert_eq!(rep.final_.allocated, holds.populated + holds.cache);
    }

    #[test]
    fn frees_and_pins_of_pod_pages_are_refused_by_the_heap() {
        let mut r = replayed(
            "heap nodes=1 frames_per_node=4096\n\
             alloc id=a dom=1 order=0\n\
             pod dom=1 max_pages=1024 target=512\n\
             touch dom=1 gfn=0 data\n",
        );
        let m = r.pods().lookup(DomId(1), 0).unwrap();
        let scrubheap_pod::PodEntry::Ram { mfn, .. } = m else { panic!("{m:?}") };
        let a = r.allocation("a").unwrap().first;
        r.step(&format!("free mfn={:#x} order=0 dom=1", mfn.0));
        r.step(&format!("free id=a offset={} order=0", mfn.0.wrapping_sub(a.0)));
        r.step("free id=a");
        r.step("check");
        let rep = finish_clean(r);
        assert_errors(&rep, &[("Sealed", 2)]);
        assert_eq!(rep.final_.allocated, 512);
    }

    #[test]
    fn a_crash_frees_contiguous_pages_that_straddle_two_nodes() {
        // Found by the fuzzer: node 1 starts at the odd frame 9403, the 2-frame cache
        // ends up as frames 9402 and 9403, and a crash must not free them as one order-1
        // run across the node boundary.
        let r = replayed(
            "heap nodes=2 frames_per_node=9403\n\
             pod dom=2 max_pages=1024 target=2\n\
             touch dom=2 gfn=0 data\n\
             touch dom=2 gfn=1 data\n\
             touch dom=2 gfn=2 data\n\
             destroy dom=2\n\
             check\n",
        );
        let rep = finish_clean(r);
        assert_errors(&rep, &[("PodExhausted", 1)]);
        assert_eq!(rep.final_.allocated, 0);
    }

    #[test]
    fn a_heap_split_of_a_pod_superpage_keeps_the_checks_clean() {
        // Found by the fuzzer (the input, garbled lines and all): the heap splits the
        // allocation behind a guest's 2 MiB page (a broken frame, an offline around it);
        // the PoD layer still holds all of it, in several chunks.
        let mut r = Replayer::with_max_frames(1 << 16);
        r.replay_bytes(include_bytes!("../../../../fuzz/seeds/replay/pod-broken-frame.log"));
        finish_clean(r);
    }

    #[test]
    fn random_pod_logs_never_break_the_heap() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let nums = ["0", "1", "3", "511", "512", "513", "1024", "4095", "0xffffffffffffffff", "0x100000000"];
        for round in 0..40 {
            let mut log = String::from("heap nodes=2 frames_per_node=2048\n");
            for _ in 0..400 {
                let d = 1 + next(3);
                let n = nums[next(nums.len() as u64) as usize];
                let g = if next(4) == 0 { n.into() } else { format!("{}", next(2048)) };
                let line = match next(12) {
                    0 => format!("pod dom={d} max_pages={} target={}", 512 + next(2048), next(1500)),
                    1 => format!("pod_target dom={d} target={}", next(2100)),
                    2 => format!("destroy dom={d}"),
                    3 | 4 => format!("balloon dom={d} gfn={g} order={}", [0, 0, 1, 9, 10, 19][next(6) as usize]),
                    5 => format!("alloc id=x{} dom={d} order={}", next(8), next(10)),
                    6 => format!("free mfn={} order=0 dom={d}", next(4096)),
                    7 => format!("scrub node={} pages=512", next(2)),
                    8 => "check".into(),
                    _ => format!("touch dom={d} gfn={g}{}", if next(2) == 0 { " data" } else { "" }),
                };
                log.push_str(&line);
                log.push('\n');
            }
            let rep = replayed(&log).finish();
            assert_eq!(rep.invariant_violations, 0, "round {round}: {:?}\n{log}", rep.violations);
            assert_eq!(rep.ok + rep.errors.values().sum::<u64>(), rep.ops);
        }
    }
}
