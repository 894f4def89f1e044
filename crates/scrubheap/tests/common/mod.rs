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
