//! Test doubles, behind the `testing` feature: not for production use.

use crate::blocker::{BlockReason, Blocker, OfflineError, OfflineStop};
use crate::claims::ClaimError;
use crate::error::{FrameUse, HeapError};
use crate::memory::FrameMemory;
use crate::node::FreeError;
use crate::types::{DomId, Mfn, RangeError};
use alloc::vec;
use alloc::vec::Vec;
use spin::Mutex;

struct TestState {
    bytes: Vec<u8>,
    last_writer: Vec<Option<DomId>>,
    zeroed_frames: u64,
}

/// Real bytes for small heaps, for tests: remembers which owner last wrote each frame, so a
/// test can assert that no frame reaches a new owner holding another owner's bytes.
pub struct TestMemory {
    first: u64,
    frame_size: usize,
    state: Mutex<TestState>,
}

impl TestMemory {
    /// Memory for `frames` frames of `frame_size` bytes starting at frame `first`, all zero.
    pub fn new(first: Mfn, frames: u64, frame_size: usize) -> Self {
        TestMemory {
            first: first.0,
            frame_size,
            state: Mutex::new(TestState {
                bytes: vec![0; frames as usize * frame_size],
                last_writer: vec![None; frames as usize],
                zeroed_frames: 0,
            }),
        }
    }

    fn range(&self, first: Mfn, count: u64) -> (usize, usize) {
        let i = (first.0 - self.first) as usize;
        (i, i + count as usize)
    }

    /// The owner writes its tag (a non-zero byte pattern) over `count` frames at `first`.
    pub fn write(&self, owner: DomId, first: Mfn, count: u64) {
        let (lo, hi) = self.range(first, count);
        let tag = (owner.0 % 255) as u8 + 1;
        let mut st = self.state.lock();
        st.bytes[lo * self.frame_size..hi * self.frame_size].fill(tag);
        st.last_writer[lo..hi].fill(Some(owner));
    }

    /// The first frame in the range holding bytes another owner than `owner` wrote.
    pub fn foreign_frame(&self, owner: DomId, first: Mfn, count: u64) -> Option<(Mfn, DomId)> {
        let (lo, hi) = self.range(first, count);
        let st = self.state.lock();
        (lo..hi).find_map(|i| match st.last_writer[i] {
            Some(w)
                if w != owner && st.bytes[i * self.frame_size..(i + 1) * self.frame_size].iter().any(|&b| b != 0) =>
            {
                Some((Mfn(self.first + i as u64), w))
            }
            _ => None,
        })
    }

    /// How many frames have been zeroed through [`FrameMemory::zero`].
    pub fn zeroed_frames(&self) -> u64 {
        self.state.lock().zeroed_frames
    }
}

impl FrameMemory for TestMemory {
    fn zero(&self, first: Mfn, count: u64) {
        let (lo, hi) = self.range(first, count);
        let mut st = self.state.lock();
        st.bytes[lo * self.frame_size..hi * self.frame_size].fill(0);
        st.last_writer[lo..hi].fill(None);
        st.zeroed_frames += count;
    }
    fn is_zero(&self, first: Mfn, count: u64) -> bool {
        let (lo, hi) = self.range(first, count);
        let st = self.state.lock();
        st.bytes[lo * self.frame_size..hi * self.frame_size].iter().all(|&b| b == 0)
    }
    fn copy(&self, src: Mfn, dst: Mfn, count: u64) {
        let (s, _) = self.range(src, count);
        let (d, _) = self.range(dst, count);
        let fs = self.frame_size;
        let mut st = self.state.lock();
        st.bytes.copy_within(s * fs..(s + count as usize) * fs, d * fs);
        st.last_writer.copy_within(s..s + count as usize, d);
    }
    fn fill(&self, first: Mfn, count: u64, owner: DomId) {
        self.write(owner, first, count);
    }
}

/// A small deterministic generator (xorshift64) for tests: the same seed gives the same
/// numbers on every run and every machine, so a random walk fails the same way twice.
#[derive(Clone, Debug)]
pub struct TestRng(u64);

impl TestRng {
    /// A generator from `seed`, which must not be zero (xorshift stays at zero forever).
    pub fn new(seed: u64) -> Self {
        assert!(seed != 0, "a xorshift seed must not be zero");
        TestRng(seed)
    }

    /// The next number.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n`, which must not be zero.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0) has no answer");
        self.next() % n
    }
}

/// One error of every kind [`HeapError::kind`] names (32), each once, in the order the
/// variants were declared when `HeapError` was one flat enum: for tests that map every
/// kind (the C status codes, the op log's counts).
pub fn one_error_of_each_kind() -> Vec<HeapError> {
    let (m, d) = (Mfn(3), DomId(1));
    let blocker = Blocker { first: m, frames: 1, owner: Some(d), reason: BlockReason::Pinned };
    vec![
        HeapError::InvalidConfig("x (y)".into()),
        RangeError::InvalidOrder { order: 19 }.into(),
        RangeError::NoSuchNode { node: 2, nodes: 1 }.into(),
        RangeError::NoSuchCpu { cpu: 2, cpus: 1 }.into(),
        RangeError::OutOfRange { mfn: m, first: Mfn(8), end: Mfn(16) }.into(),
        RangeError::Unaligned { mfn: m, order: 1, size: 2 }.into(),
        RangeError::CrossesNode { mfn: m, order: 1 }.into(),
        HeapError::OutOfMemory { order: 0, where_: "node 0".into(), free: 0, claimed: 0 },
        FreeError::NotAllocated { mfn: m }.into(),
        FreeError::WrongOwner { mfn: m, owner: d, actual: DomId(2) }.into(),
        FreeError::OrderTooLarge { mfn: m, order: 1, owner: d, beyond: Mfn(4) }.into(),
        FreeError::Pinned { mfn: m, owner: d }.into(),
        ClaimError::ClaimExceedsFree { requested: 2, where_: "node 0".into(), available: 1 }.into(),
        FreeError::Busy { mfn: m, what: "being migrated" }.into(),
        FreeError::NotPinned { mfn: m, owner: d }.into(),
        FreeError::PinLimit { mfn: m }.into(),
        HeapError::MigrationRefused { mfn: m, order: 0, owner: d },
        OfflineError::OfflineBlocked { first: m, count: 1, stop: OfflineStop::Blocked, blockers: vec![blocker] }.into(),
        OfflineError::OfflineFinished { first: m, count: 1 }.into(),
        HeapError::NeedsScrubTicket { order: 9, frames: 512, batch: 64 },
        OfflineError::NotOffline { mfn: m, state: "free" }.into(),
        RangeError::BadRange { first: m, count: 0 }.into(),
        ClaimError::NeededByClaims { mfn: m, claimed: 2, free: 1 }.into(),
        FreeError::Sealed { mfn: m, owner: d }.into(),
        FreeError::NotSealed { mfn: m, owner: d }.into(),
        HeapError::SealedMovable,
        ClaimError::ClaimedByOthers { owner: d, frames: 2, where_: "node 0".into(), free: 3, claimed: 2 }.into(),
        HeapError::NotFree { mfn: m, order: 0, first: m, what: FrameUse::Offline },
        RangeError::CrossesZone { mfn: m, order: 1, movable_from: Mfn(4) }.into(),
        FreeError::TooManyChunks { mfn: m, order: 9, limit: 64 }.into(),
        HeapError::JobCancelled { job: "pin", first: m },
        HeapError::JobFinished { job: "pin", first: m },
    ]
}
