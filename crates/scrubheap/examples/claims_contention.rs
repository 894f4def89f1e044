//! Alloc+free pairs of order 0 by domains without claims while another domain holds
//! claims on both nodes: one thread, or two (each on its own node). Prints the wall time
//! per pair in ns. The claims gate's cost on the allocation path, side by side with an
//! older checkout (see docs/results.md):
//! `cargo run --release -p scrubheap --example claims_contention -- THREADS`.

use scrubheap::*;
use std::sync::Arc;
use std::time::Instant;

const PAIRS: u64 = 1_000_000;

fn run(threads: usize) -> f64 {
    let h = Arc::new(Heap::new(HeapConfig::uniform(2, 1 << 16), NullMemory).unwrap());
    let claims =
        [Claim { target: ClaimTarget::Node(0), frames: 16 }, Claim { target: ClaimTarget::Node(1), frames: 16 }];
    h.claim_set(DomId(99), &claims).unwrap();
    let t0 = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let h = h.clone();
            std::thread::spawn(move || {
                let dom = DomId(t as u32 + 1);
                let req = AllocRequest::new(0, dom).exact(t).noscrub();
                for _ in 0..PAIRS {
                    let e = h.alloc(&req).unwrap();
                    h.free(e.mfn, 0, dom).unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let ns = t0.elapsed().as_nanos() as f64 / PAIRS as f64;
    h.check_invariants().unwrap();
    ns
}

fn main() {
    let threads: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    assert!((1..=2).contains(&threads), "1 or 2 threads (the heap has two nodes)");
    println!("{:.1}", run(threads));
}
