//! Time of one `scrub_step` that scrubs the single freed frame of a free chunk, per chunk
//! order: the cost of dirty tracking should follow the work (one frame), not the chunk.
//!
//! `cargo run --release -p scrubheap --example scrub_one [reps]`: for each order, a node of
//! exactly one chunk of that order; each iteration allocates one frame, frees it (the chunk
//! merges back whole, one frame dirty) and times only the `scrub_step`. Prints the median
//! over `reps` (default 7) runs of 20,000 iterations, interleaved across orders.

use scrubheap::{AllocRequest, DomId, Heap, HeapConfig, NeverPreempt, NullMemory};
use std::time::Instant;

const ITERS: u32 = 20_000;

fn run(heap: &Heap<NullMemory>) -> f64 {
    let mut total = 0u128;
    for _ in 0..ITERS {
        let e = heap.alloc(&AllocRequest::new(0, DomId(1))).expect("the node is free");
        heap.free(e.mfn, 0, DomId(1)).expect("just allocated");
        let t = Instant::now();
        let n = heap.scrub_step(0, u64::MAX, &NeverPreempt).expect("node 0 exists");
        total += t.elapsed().as_nanos();
        assert_eq!(n, 1, "one dirty frame");
    }
    total as f64 / ITERS as f64
}

fn main() {
    let reps: usize = std::env::args().nth(1).map_or(7, |s| s.parse().expect("reps: a number"));
    let orders = [0u8, 9, 15, 18];
    let heaps: Vec<_> =
        orders.iter().map(|&o| Heap::new(HeapConfig::uniform(1, 1 << o), NullMemory).expect("a valid heap")).collect();
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); orders.len()];
    for _ in 0..reps {
        for (i, h) in heaps.iter().enumerate() {
            ns[i].push(run(h));
        }
    }
    println!("scrub_step of one freed frame in a free chunk: ns per step, median of {reps} runs of {ITERS}");
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = median(&mut ns[0].clone());
    for (i, &o) in orders.iter().enumerate() {
        let m = median(&mut ns[i]);
        println!("order {o:>2}: {m:>8.1} ns  ({:.2}x order 0)", m / base);
    }
}
