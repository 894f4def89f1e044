//! Helpers shared by the heap's integration tests.
#![allow(dead_code)]

use scrubheap::{ChunkInfo, Claim, DomId, FrameMemory, Heap, HeapStats, Mfn};

/// Everything observable about a heap: every chunk, the counters, every domain's claims.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub chunks: Vec<ChunkInfo>,
    pub stats: HeapStats,
    pub claims: Vec<(u32, Vec<Claim>)>,
}

pub fn snapshot<M: FrameMemory>(h: &Heap<M>, doms: &[u32]) -> Snapshot {
    let mut chunks = Vec::new();
    let first = h.node_range(0).unwrap().0;
    let end = h.node_range(h.node_count() - 1).unwrap().1;
    let mut m = first.0;
    while m < end.0 {
        let c = h.chunk_at(Mfn(m)).unwrap();
        m = c.extent.mfn.0 + c.extent.frames();
        chunks.push(c);
    }
    Snapshot { chunks, stats: h.stats(), claims: doms.iter().map(|&d| (d, h.claims_of(DomId(d)))).collect() }
}

/// Two nodes of 1024 frames over `NullMemory`: the heap of the misuse tests.
pub fn two_nodes() -> scrubheap::Heap<scrubheap::NullMemory> {
    scrubheap::Heap::new(scrubheap::HeapConfig::uniform(2, 1024), scrubheap::NullMemory).unwrap()
}

/// Runs `$f`, expects an error matching `$pat`, and checks that nothing changed (every
/// chunk, the counters, the claims of domains 1 and 2) and that the invariants hold.
/// Returns the error's message. (Used by the files that declare `#[macro_use] mod common`.)
#[allow(unused_macros)]
macro_rules! refused {
    ($h:expr, $f:expr, $pat:pat) => {{
        let before = snapshot(&$h, &[1, 2]);
        let r = $f;
        assert!(matches!(r, Err($pat)), "got {r:?}");
        let msg = r.unwrap_err().to_string();
        assert!(!msg.is_empty());
        assert_eq!(snapshot(&$h, &[1, 2]), before, "a refused operation changed the heap");
        $h.check_invariants().unwrap();
        msg
    }};
}
