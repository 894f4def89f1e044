//! Arbitrary bytes into the op-log replayer: it must never panic, every line must be
//! counted exactly once, the heap must never break (an invariant violation is a bug,
//! whatever the input), and no heap line may touch more than one batch plus the metadata
//! walk constant between two preemption points (`max_section_frames <= section_bound`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use scrubheap_oplog::Replayer;

/// Small heaps keep each input fast (at most 2^16 frames, under 1 MiB of metadata).
const MAX_FRAMES: u64 = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let mut replayer = Replayer::with_max_frames(MAX_FRAMES);
    replayer.replay_bytes(data);
    let rep = replayer.finish();
    assert_eq!(rep.ok + rep.errors.values().sum::<u64>(), rep.ops, "every op counted once");
    assert_eq!(rep.invariant_violations, 0, "the heap broke: {:?}", rep.violations);
    let s = &rep.sections;
    assert!(
        s.max_section_frames <= s.section_bound,
        "{} frames between two preemption points (bound {}): {}",
        s.max_section_frames,
        s.section_bound,
        s.max_section_op
    );
});
