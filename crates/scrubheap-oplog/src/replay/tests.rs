//! The replayer's tests: each line kind, errors by kind, moves, claims, hostile input.

use super::*;
use scrubheap::{Policy, Zone};

fn run(text: &str) -> ReplayReport {
    let mut r = Replayer::new();
    r.replay_str(text);
    r.finish()
}

/// Finishes `r` and asserts what every replay test asserts: no check failed.
pub(super) fn finish_clean(r: Replayer) -> ReplayReport {
    let rep = r.finish();
    assert_eq!(rep.invariant_violations, 0, "{:?}", rep.violations);
    rep
}

fn errs(rep: &ReplayReport) -> Vec<(&str, u64)> {
    rep.errors.iter().map(|(k, &v)| (k.as_str(), v)).collect()
}

/// One line on a replayer, returning the kind it failed with ("" for success).
fn kind_of(r: &mut Replayer, line: &str) -> String {
    match r.step(line) {
        Outcome::Ok => String::new(),
        Outcome::Skipped => "skipped".into(),
        Outcome::Failed { kind, .. } => kind,
    }
}

/// Runs `lines` on `r`, each of which must succeed and leave the invariants whole.
fn all_ok(r: &mut Replayer, lines: &[&str]) {
    for l in lines {
        assert_eq!(kind_of(r, l), "", "{l}");
        clean(r);
    }
}

fn clean(r: &Replayer) {
    assert_eq!(r.report().invariant_violations, 0, "{:?}", r.report().violations);
}

const HEAP: &str = "heap nodes=2 frames_per_node=4096";

#[test]
fn each_line_kind() {
    let mut r = Replayer::new();
    let lines = [
        "heap nodes=2 frames_per_node=4096 movable_from=2048 policy=xen",
        "alloc id=a dom=1 order=9",
        "alloc id=b dom=2 order=3 node=1 exact",
        "alloc id=c dom=3 order=0 node=1 movable",
        "alloc id=d dom=3 order=4 noscrub",
        "free id=a offset=0x100 order=8",
        "free id=a",
        "scrub node=0 pages=100",
        "claim dom=7 node=0 pages=64",
        "claim dom=7 global pages=64",
        "claim dom=7 cancel",
        "check",
    ];
    all_ok(&mut r, &lines);
    let heap = r.heap().unwrap();
    assert_eq!(heap.policy(), Policy::Xen);
    assert_eq!(r.allocation("b").unwrap().node, 1);
    let c = r.allocation("c").unwrap();
    assert_eq!(heap.chunk_at(c.first).unwrap().zone, Zone::Movable);
    let b = r.allocation("b").unwrap();
    assert_eq!(kind_of(&mut r, &format!("free mfn={:#x} order=3 dom=2", b.first.0)), "");
    assert!(r.allocation("b").is_none());
    let rep = r.finish();
    assert_eq!((rep.ops, rep.ok), (13, 13));
    assert_eq!(rep.final_.allocated, 1 + 16);
    assert_eq!(rep.final_.free_dirty, 512 + 8 - 100);
    assert_eq!(rep.final_.free_clean + rep.final_.free_dirty + rep.final_.allocated, 8192);
    assert_eq!(rep.invariant_violations, 0);
}

#[test]
fn heap_errors_by_variant_name() {
    let mut r = Replayer::new();
    kind_of(&mut r, HEAP);
    assert_eq!(kind_of(&mut r, "alloc id=a dom=1 order=12 node=0 exact"), "");
    assert_eq!(kind_of(&mut r, "alloc id=b dom=1 order=12 node=0 exact"), "OutOfMemory");
    assert_eq!(kind_of(&mut r, "alloc id=b dom=1 order=19"), "InvalidOrder");
    assert_eq!(kind_of(&mut r, "alloc id=b dom=1 order=0 node=2"), "NoSuchNode");
    assert_eq!(kind_of(&mut r, "scrub node=9 pages=1"), "NoSuchNode");
    assert_eq!(kind_of(&mut r, "free mfn=0 order=0 dom=2"), "WrongOwner");
    assert_eq!(kind_of(&mut r, "free mfn=4096 order=0 dom=1"), "NotAllocated");
    assert_eq!(kind_of(&mut r, "free mfn=8192 order=0 dom=1"), "OutOfRange");
    assert_eq!(kind_of(&mut r, "free mfn=1 order=1 dom=1"), "Unaligned");
    assert_eq!(kind_of(&mut r, "free mfn=0 order=13 dom=1"), "CrossesNode");
    assert_eq!(kind_of(&mut r, "free id=a offset=0 order=13"), "CrossesNode");
    assert_eq!(kind_of(&mut r, "free id=a offset=0x1000000 order=0"), "OutOfRange");
    assert_eq!(kind_of(&mut r, "free id=a offset=0xffffffffffffffff order=0"), "OutOfRange");
    assert_eq!(kind_of(&mut r, "alloc id=c dom=1 order=0 node=1"), "");
    assert_eq!(kind_of(&mut r, "free mfn=4096 order=1 dom=1"), "OrderTooLarge");
    assert_eq!(kind_of(&mut r, "claim dom=2 node=1 pages=5000"), "ClaimExceedsFree");
    assert_eq!(kind_of(&mut r, "claim dom=2 global pages=5000"), "ClaimExceedsFree");
    assert_eq!(kind_of(&mut r, "heap nodes=0 frames_per_node=64"), "InvalidConfig");
    assert_eq!(kind_of(&mut r, "heap nodes=1 frames_per_node=64 movable_from=65"), "InvalidConfig");
    let rep = finish_clean(r);
    assert_eq!(rep.ops, 20);
    assert_eq!(rep.errors["InvalidConfig"], 2);
}

#[test]
fn replayer_errors() {
    let mut r = Replayer::with_max_frames(1 << 16);
    assert_eq!(kind_of(&mut r, "alloc id=a dom=1 order=0"), "NoHeap");
    assert_eq!(kind_of(&mut r, "check"), "NoHeap");
    assert_eq!(kind_of(&mut r, "heap nodes=2 frames_per_node=32769"), "TooLarge");
    assert_eq!(kind_of(&mut r, "heap nodes=2000 frames_per_node=1"), "TooLarge");
    assert_eq!(kind_of(&mut r, "heap nodes=0x100000000 frames_per_node=0x100000000"), "TooLarge");
    assert_eq!(kind_of(&mut r, "heap nodes=2 frames_per_node=32768"), "");
    assert_eq!(kind_of(&mut r, "alloc id=a dom=1 order=0"), "");
    assert_eq!(kind_of(&mut r, "alloc id=a dom=1 order=0"), "DuplicateId");
    assert_eq!(kind_of(&mut r, "free id=b"), "UnknownId");
    assert_eq!(kind_of(&mut r, "free id=b offset=0 order=0"), "UnknownId");
    assert_eq!(kind_of(&mut r, "alloc"), "Parse");
    assert_eq!(kind_of(&mut r, "# comment"), "skipped");
    assert_eq!(kind_of(&mut r, "free id=a"), "");
    assert_eq!(kind_of(&mut r, "free id=a"), "UnknownId");
    assert_eq!(kind_of(&mut r, "alloc id=a dom=1 order=0"), "", "a freed id may be used again");
    let rep = finish_clean(r);
    assert_eq!(rep.ops, 14);
    assert_eq!(rep.ok, 4);
    assert!(!rep.errors.contains_key("Unsupported"), "every verb is replayed");
    assert_eq!(rep.errors["TooLarge"], 3);
    assert_eq!(rep.errors["UnknownId"], 3);
    assert_eq!(rep.final_.allocated, 1);
}

#[test]
fn partial_frees_split_what_remains() {
    let mut r = Replayer::new();
    kind_of(&mut r, HEAP);
    assert_eq!(kind_of(&mut r, "alloc id=a dom=1 order=4 node=0"), "");
    let first = r.allocation("a").unwrap().first;
    assert_eq!(kind_of(&mut r, "free id=a offset=5 order=0"), "");
    let a = r.allocation("a").unwrap();
    let rel: Vec<(u64, u8)> = a.remaining.iter().map(|&(m, o)| (m.0 - first.0, o)).collect();
    assert_eq!(rel, [(0, 2), (4, 0), (6, 1), (8, 3)]);
    assert_eq!(kind_of(&mut r, "free id=a offset=5 order=0"), "NotAllocated");
    assert_eq!(kind_of(&mut r, "free id=a offset=4 order=1"), "OrderTooLarge");
    assert_eq!(kind_of(&mut r, "free id=a offset=3 order=1"), "Unaligned");
    assert_eq!(kind_of(&mut r, "free id=a offset=8 order=3"), "");
    assert_eq!(r.heap().unwrap().stats().allocated, 7);
    assert_eq!(kind_of(&mut r, "free id=a"), "");
    assert!(r.allocation("a").is_none());
    assert_eq!(r.heap().unwrap().stats().allocated, 0);
    clean(&r);
    let rep = finish_clean(r);
    assert_eq!(rep.final_.free_dirty, 16);
}

#[test]
fn frees_that_span_ids_of_one_owner() {
    let mut r = Replayer::new();
    kind_of(&mut r, "heap nodes=1 frames_per_node=64");
    assert_eq!(kind_of(&mut r, "alloc id=a dom=1 order=0"), "");
    assert_eq!(kind_of(&mut r, "alloc id=b dom=1 order=0"), "");
    let (a, b) = (r.allocation("a").unwrap().first.0, r.allocation("b").unwrap().first.0);
    assert_eq!(a ^ b, 1, "buddies");
    // The heap lets an owner free any aligned range it holds, across allocations.
    assert_eq!(kind_of(&mut r, &format!("free mfn={} order=1 dom=1", a.min(b))), "");
    assert!(r.allocation("a").is_none() && r.allocation("b").is_none());
    // A freed part that was allocated again to another id is that id's now.
    assert_eq!(kind_of(&mut r, "alloc id=c dom=2 order=3"), "");
    assert_eq!(kind_of(&mut r, "free id=c offset=2 order=1"), "");
    assert_eq!(kind_of(&mut r, "alloc id=d dom=2 order=1"), "");
    let d = r.allocation("d").unwrap().first;
    assert_eq!(d.0, r.allocation("c").unwrap().first.0 + 2);
    assert_eq!(kind_of(&mut r, "free id=c offset=0 order=2"), "", "frees c's first half and all of d");
    assert!(r.allocation("d").is_none());
    assert_eq!(r.allocation("c").unwrap().remaining.len(), 1);
    let rep = finish_clean(r);
    assert_eq!(rep.final_.allocated, 4);
}

#[test]
fn claim_lines_set_one_entry_and_keep_the_others() {
    let mut r = Replayer::new();
    kind_of(&mut r, HEAP);
    let claims = |r: &Replayer, d: u32| r.heap().unwrap().claims_of(DomId(d));
    let node = |n, frames| Claim { target: ClaimTarget::Node(n), frames };
    let global = |frames| Claim { target: ClaimTarget::Global, frames };
    assert_eq!(kind_of(&mut r, "claim dom=1 node=0 pages=100"), "");
    assert_eq!(kind_of(&mut r, "claim dom=1 node=1 pages=200"), "");
    assert_eq!(kind_of(&mut r, "claim dom=1 global pages=300"), "");
    assert_eq!(claims(&r, 1), [global(300), node(0, 100), node(1, 200)]);
    assert_eq!(kind_of(&mut r, "claim dom=1 node=0 pages=50"), "");
    assert_eq!(claims(&r, 1), [global(300), node(0, 50), node(1, 200)]);
    assert_eq!(kind_of(&mut r, "claim dom=1 node=1 pages=0"), "");
    assert_eq!(claims(&r, 1), [global(300), node(0, 50)]);
    // A refused entry leaves the whole set as it was.
    assert_eq!(kind_of(&mut r, "claim dom=1 node=1 pages=5000"), "ClaimExceedsFree");
    assert_eq!(kind_of(&mut r, "claim dom=1 node=5 pages=1"), "NoSuchNode");
    assert_eq!(claims(&r, 1), [global(300), node(0, 50)]);
    // Totals that overflow are refused, not summed.
    assert_eq!(kind_of(&mut r, "claim dom=1 global pages=0xffffffffffffffff"), "ClaimExceedsFree");
    assert_eq!(claims(&r, 1), [global(300), node(0, 50)]);
    // Others may not eat into the claim; the claimant's allocations retire it.
    assert_eq!(kind_of(&mut r, "claim dom=2 node=0 pages=4090"), "ClaimExceedsFree");
    assert_eq!(kind_of(&mut r, "alloc id=a dom=1 order=5 node=0 exact"), "");
    assert_eq!(claims(&r, 1), [global(300), node(0, 18)]);
    assert_eq!(kind_of(&mut r, "claim dom=1 cancel"), "");
    assert!(claims(&r, 1).is_empty());
    assert_eq!(kind_of(&mut r, "claim dom=9 cancel"), "");
    finish_clean(r);
}

#[test]
fn a_heap_line_ends_the_heap_and_its_ids() {
    let rep = run("heap nodes=1 frames_per_node=64\nalloc id=a dom=1 order=0\n\
         heap nodes=1 frames_per_node=128\nfree id=a\nalloc id=a dom=1 order=0\n");
    assert_eq!(errs(&rep), [("UnknownId", 1)]);
    assert_eq!(rep.final_, FinalCounts { free_clean: 127, free_dirty: 0, allocated: 1, offline: 0 });
    let rep = run("heap nodes=1 frames_per_node=64\nheap nodes=1 frames_per_node=0\ncheck\n");
    assert_eq!(errs(&rep), [("InvalidConfig", 1), ("NoHeap", 1)]);
    assert_eq!(rep.final_, FinalCounts::default());
}

#[test]
fn crlf_and_every_policy() {
    for p in Policy::ALL {
        let text = format!(
            "heap nodes=2 frames_per_node=1024 policy={p}\r\nalloc id=a dom=1 order=10\r\nfree id=a\r\n\
             alloc id=b dom=2 order=9\r\nscrub node=1 pages=1024\r\nscrub node=0 pages=1024\r\ncheck\r\n"
        );
        let rep = run(&text);
        assert_eq!((rep.ops, rep.ok), (7, 7), "{p}: {:?}", rep.errors);
        assert_eq!(rep.invariant_violations, 0, "{p}: {:?}", rep.violations);
        assert_eq!(rep.final_.allocated, 512);
    }
}

#[test]
fn garbage_bytes_never_panic() {
    // A small deterministic generator (xorshift) of hostile inputs: raw bytes, and
    // op-log words with hostile numbers.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let words = [
        "heap",
        "alloc",
        "free",
        "scrub",
        "claim",
        "check",
        "pin",
        "id=a",
        "id=b",
        "dom=1",
        "dom=2",
        "order=0",
        "order=9",
        "order=18",
        "order=255",
        "node=0",
        "node=1",
        "node=99",
        "exact",
        "movable",
        "noscrub",
        "offset=0",
        "offset=0xffffffffffffffff",
        "mfn=0",
        "mfn=0x3ff",
        "pages=1",
        "pages=0xffffffffffffffff",
        "global",
        "cancel",
        "nodes=2",
        "nodes=1024",
        "frames_per_node=512",
        "frames_per_node=0xffffffff",
        "movable_from=256",
        "policy=xen",
        "policy=sync",
        "#",
        "\n",
        "\n",
        "\n",
        "=",
        "\u{fffd}",
    ];
    for round in 0..200 {
        let mut bytes = Vec::new();
        if round % 2 == 0 {
            bytes.extend((0..512).map(|_| next() as u8));
        } else {
            for _ in 0..300 {
                bytes.extend_from_slice(words[(next() % words.len() as u64) as usize].as_bytes());
                bytes.push(b' ');
            }
        }
        let mut r = Replayer::with_max_frames(1 << 16);
        r.replay_bytes(&bytes);
        let rep = finish_clean(r);
        assert_eq!(rep.ok + rep.errors.values().sum::<u64>(), rep.ops);
    }
}

#[test]
fn pins_offlines_and_broken_frames_replay() {
    let mut r = Replayer::new();
    let lines = [
        ("heap nodes=2 frames_per_node=4096 movable_from=2048", ""),
        ("alloc id=m dom=1 order=4 node=0 movable", ""),
        ("alloc id=u dom=2 order=2 node=0", ""),
        ("pin id=u offset=0 order=1", ""),
        ("free id=u offset=0 order=1", "Pinned"),
        ("unpin id=u offset=2 order=1", "NotPinned"),
        ("pin id=m offset=4 order=2", ""),
        ("free id=m offset=4 order=2", "Pinned"),
        ("unpin id=m offset=4 order=2", ""),
        ("free id=m offset=4 order=0", ""),
        ("offline mfn=0 count=2048", "OfflineBlocked"),
        ("offline mfn=2048 count=2048 steps=0", "OfflineBlocked"),
        ("offline mfn=2048 count=2048", ""),
        ("online mfn=2048 count=1024", ""),
        ("online mfn=0 count=1", "NotOffline"),
        ("broken mfn=0x10", ""),
        ("broken mfn=0x1000000", "OutOfRange"),
        ("check", ""),
        ("free id=m", ""),
        ("free id=u", "Pinned"),
        ("unpin id=u offset=0 order=1", ""),
        ("free id=u", ""),
    ];
    for (l, want) in lines {
        assert_eq!(kind_of(&mut r, l), want, "{l}");
        clean(&r);
    }
    let rep = finish_clean(r);
    assert_eq!(rep.final_.offline, 1024 + 1);
    assert_eq!(rep.final_.allocated, 0);
    for bad in ["pin id=a order=0", "offline mfn=0", "online count=3", "broken", "broken mfn=1 dom=2"] {
        assert!(parse_line(bad).is_err(), "{bad} parsed");
    }
}

#[test]
fn alloc_at_takes_exactly_its_range_or_fails_with_its_kind() {
    let mut r = Replayer::new();
    assert_eq!(kind_of(&mut r, "heap nodes=2 frames_per_node=4096 movable_from=2048"), "");
    assert_eq!(kind_of(&mut r, "alloc-at id=x mfn=0x1200 order=9 dom=1"), "");
    let x = r.allocation("x").unwrap();
    assert_eq!((x.first, x.node), (scrubheap::Mfn(0x1200), 1));
    assert_eq!(kind_of(&mut r, "alloc-at id=y mfn=0x1000 order=11 dom=2"), "NotFree");
    assert_eq!(kind_of(&mut r, "alloc-at id=y mfn=0x1300 order=9 dom=2"), "Unaligned");
    assert_eq!(kind_of(&mut r, "alloc-at id=y mfn=0x0 order=12 dom=2"), "CrossesZone");
    assert_eq!(kind_of(&mut r, "alloc-at id=x mfn=0x0 order=0 dom=2"), kind::DUPLICATE_ID);
    assert_eq!(kind_of(&mut r, "free id=x offset=0x100 order=8"), "");
    assert_eq!(kind_of(&mut r, "alloc-at id=y mfn=0x1300 order=8 dom=2"), "");
    assert_eq!(kind_of(&mut r, "check"), "");
    clean(&r);
}

/// Every heap line of a log that moves, scrubs and offlines whole GiBs stays within one
/// batch plus the metadata constant between two preemption points, and the report names
/// the line of the longest section.
#[test]
fn gib_moves_scrubs_and_offlines_replay_in_bounded_sections() {
    let mut r = Replayer::new();
    let lines = [
        "heap nodes=2 frames_per_node=524288 movable_from=262144",
        // 1 GiB, movable, in node 0's Movable zone; freed dirty, then taken again: a ticket.
        "alloc id=g dom=1 order=18 node=0 exact movable",
        "free id=g",
        "alloc id=g dom=1 order=18 node=0 exact movable",
        // Hot-remove node 0's Movable zone: the GiB moves out in pieces.
        "offline mfn=0x40000 count=0x40000",
        "online mfn=0x40000 count=0x40000",
        "scrub node=0 pages=262144",
        // A pin of the whole GiB, now in node 1's Movable zone: it moves to Normal memory.
        "pin id=g offset=0 order=18",
        "unpin id=g offset=0 order=18",
        "free id=g",
        "check",
    ];
    all_ok(&mut r, &lines);
    let rep = finish_clean(r);
    let s = &rep.sections;
    assert_eq!(s.section_bound, 256 + scrubheap::CHUNKS_PER_STEP as u64);
    assert!(s.max_section_frames > 0 && s.max_section_frames <= s.section_bound, "{s:?}");
    assert!(s.max_section_op.starts_with("line "), "{s:?}");
    assert_eq!((s.pod_max_section_frames, s.baseline_max_section_frames), (0, 0));
}

/// An allocation shattered into 4096 chunks (a pin and an unpin of each frame) is pinned,
/// unpinned and freed whole: the replayer runs them as range jobs, 64 chunks a section.
#[test]
fn ranges_of_many_chunks_replay_in_bounded_sections() {
    let mut text =
        String::from("heap nodes=1 frames_per_node=16384 movable_from=8192\nalloc id=a dom=1 order=12 node=0 exact\n");
    for i in 0..4096 {
        text += &format!("pin id=a offset={i} order=0\nunpin id=a offset={i} order=0\n");
    }
    text += "pin id=a offset=0 order=12\nunpin id=a offset=0 order=12\nfree id=a\ncheck\n";
    let rep = {
        let mut r = Replayer::new();
        r.replay_str(&text);
        finish_clean(r)
    };
    assert_eq!((rep.ops, rep.ok, rep.final_.allocated), (8198, 8198, 0), "{:?}", rep.errors);
    let s = &rep.sections;
    assert_eq!(s.max_section_frames, scrubheap::CHUNKS_PER_STEP as u64, "{s:?}");
}

/// Under the `xen` baseline the same GiB is scrubbed in place in one piece, and the report
/// keeps it apart from the bounded figure.
#[test]
fn the_xen_baseline_is_reported_apart() {
    let mut r = Replayer::new();
    all_ok(
        &mut r,
        &[
            "heap nodes=1 frames_per_node=262144 policy=xen",
            "alloc id=g dom=1 order=18",
            "free id=g",
            "alloc id=g dom=1 order=18",
        ],
    );
    let rep = finish_clean(r);
    assert_eq!(rep.sections.baseline_max_section_frames, 1 << 18);
    assert_eq!(rep.sections.max_section_frames, 0);
}

/// The zero checks of PoD pages by a `check` line, or by a `heap` line ending the heap
/// before it, are diagnostics, not sections.
#[test]
fn check_and_heap_lines_are_not_sections() {
    let mut r = Replayer::new();
    all_ok(
        &mut r,
        &[
            "heap nodes=2 frames_per_node=4096 movable_from=307",
            "pod dom=1 max_pages=4096 target=500 node=0",
            "touch dom=1 gfn=0 data",
            "check",
            "heap nodes=1 frames_per_node=4096",
        ],
    );
    let rep = finish_clean(r);
    for op in [&rep.sections.pod_max_section_op, &rep.sections.max_section_op] {
        assert!(!op.contains("check") && !op.contains("heap"), "{:?}", rep.sections);
    }
}
