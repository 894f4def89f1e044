//! Runs one of LLFree's benchmark patterns (bulk, repeat, rand; see `scrubheap bench
//! alloc`) on LLFree over a metadata-only range of frames and prints one JSON line:
//! `{"get_ns":..,"put_ns":..,"pair_ns":..,"meta_bytes":..,"frames":..}`.
//!
//! Usage: `llfree-peer PATTERN ORDER THREADS FRAMES_LOG2 MAX_THREADS`.
//! The call sequence is the one `scrubheap bench alloc` runs on scrubheap and
//! buddy_system_allocator: see `crates/scrubheap-cli/src/bench/alloc.rs` (`patterns`).

use llfree::{Alloc, Classing, FrameId, Init, LLFree, MetaData, Request};
use std::hint::black_box;
use std::sync::Barrier;
use std::time::Instant;

/// Rounds of a pattern: LLFree's `1 << order`, at most this many.
const MAX_ROUNDS: usize = 4096;

/// splitmix64: the shuffle generator both sides use (same seed, same permutation).
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn shuffle(v: &mut [usize], seed: u64) {
    let mut s = seed;
    for i in (1..v.len()).rev() {
        let j = (next(&mut s) % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

struct Peer<'a> {
    alloc: LLFree<'a>,
    request: Box<dyn Fn(usize, usize) -> Request + Send + Sync>,
}

impl Peer<'_> {
    fn get(&self, core: usize, order: usize) -> usize {
        self.alloc.get(None, (self.request)(order, core)).expect("llfree get").0 .0
    }
    fn put(&self, core: usize, frame: usize, order: usize) {
        self.alloc.put(FrameId(frame), (self.request)(order, core)).expect("llfree put");
    }
}

#[derive(Default, Clone, Copy)]
struct Times {
    get: f64,
    put: f64,
    pair: f64,
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    assert!(a.len() == 5, "usage: llfree-peer PATTERN ORDER THREADS FRAMES_LOG2 MAX_THREADS");
    let pattern = a[0].as_str();
    let order: usize = a[1].parse().expect("ORDER");
    let threads: usize = a[2].parse().expect("THREADS");
    let frames = 1usize << a[3].parse::<u32>().expect("FRAMES_LOG2");
    let max_threads: usize = a[4].parse().expect("MAX_THREADS");
    assert!((1..=max_threads).contains(&threads), "THREADS must be 1 to MAX_THREADS");
    let (classing, request) = Classing::simple(max_threads);
    let m = LLFree::metadata_size(&classing, frames);
    let meta_bytes = m.local + m.trees + m.lower;
    let alloc = LLFree::new(frames, Init::FreeAll, &classing, MetaData::alloc(&m)).expect("llfree init");
    let peer = Peer { alloc, request: Box::new(request) };
    let allocs = frames / max_threads / 2 / (1 << order);
    assert!(allocs >= 1, "the range holds no allocation of order {order} per thread");
    let rounds = (1usize << order).min(MAX_ROUNDS);
    let t = match pattern {
        "bulk" => bulk(&peer, order, threads, allocs, rounds),
        "repeat" => repeat(&peer, order, threads, allocs, rounds),
        "rand" => rand(&peer, order, threads, allocs, rounds),
        p => panic!("unknown pattern {p}: bulk, repeat or rand"),
    };
    let num = |x: f64| if x.is_finite() { format!("{x:.3}") } else { "null".into() };
    println!(
        "{{\"get_ns\":{},\"put_ns\":{},\"pair_ns\":{},\"meta_bytes\":{meta_bytes},\"frames\":{frames}}}",
        num(t.get),
        num(t.put),
        num(t.pair)
    );
}

fn average(v: Vec<Times>) -> Times {
    let n = v.len() as f64;
    let mut t = Times::default();
    for x in &v {
        t.get += x.get / n;
        t.put += x.put / n;
        t.pair += x.pair / n;
    }
    t
}

/// Runs `f(thread, barrier)` on `threads` threads sharing one barrier; the average of
/// their times.
fn on_threads(threads: usize, f: impl Fn(usize, &Barrier) -> Times + Sync) -> Times {
    let barrier = Barrier::new(threads);
    let v = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, f) = (&barrier, &f);
                s.spawn(move || f(t, barrier))
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    average(v)
}

fn bulk(p: &Peer, order: usize, threads: usize, allocs: usize, rounds: usize) -> Times {
    on_threads(threads, |t, barrier| {
        let (mut get, mut put) = (0u128, 0u128);
        let mut pages = Vec::with_capacity(allocs);
        for _ in 0..rounds {
            barrier.wait();
            let timer = Instant::now();
            for _ in 0..allocs {
                pages.push(p.get(t, order));
            }
            get += timer.elapsed().as_nanos();
            barrier.wait();
            let timer = Instant::now();
            while let Some(f) = pages.pop() {
                p.put(t, f, order);
            }
            put += timer.elapsed().as_nanos();
        }
        let ops = (allocs * rounds) as f64;
        Times { get: get as f64 / ops, put: put as f64 / ops, pair: (get + put) as f64 / ops }
    })
}

fn repeat(p: &Peer, order: usize, threads: usize, allocs: usize, rounds: usize) -> Times {
    on_threads(threads, |t, barrier| {
        let held: Vec<usize> = (0..allocs).map(|_| p.get(t, order)).collect();
        barrier.wait();
        let timer = Instant::now();
        for _ in 0..rounds {
            for _ in 0..allocs {
                let f = black_box(p.get(t, order));
                p.put(t, f, order);
            }
        }
        let ns = timer.elapsed().as_nanos() as f64 / (allocs * rounds) as f64;
        barrier.wait();
        for f in held {
            p.put(t, f, order);
        }
        Times { get: f64::NAN, put: f64::NAN, pair: ns }
    })
}

fn rand(p: &Peer, order: usize, threads: usize, allocs: usize, rounds: usize) -> Times {
    let barrier = Barrier::new(threads);
    let mut all = vec![0usize; allocs * threads];
    let (mut get, mut put) = (vec![0u128; threads], vec![0u128; threads]);
    for round in 0..rounds {
        std::thread::scope(|s| {
            for ((t, pages), g) in all.chunks_mut(allocs).enumerate().zip(get.iter_mut()) {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let timer = Instant::now();
                    for f in pages.iter_mut() {
                        *f = p.get(t, order);
                    }
                    *g += timer.elapsed().as_nanos();
                });
            }
        });
        shuffle(&mut all, 42 + round as u64);
        std::thread::scope(|s| {
            for ((t, pages), q) in all.chunks(allocs).enumerate().zip(put.iter_mut()) {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let timer = Instant::now();
                    for &f in pages {
                        p.put(t, f, order);
                    }
                    *q += timer.elapsed().as_nanos();
                });
            }
        });
    }
    let ops = (allocs * rounds) as f64;
    let v = (0..threads)
        .map(|t| Times { get: get[t] as f64 / ops, put: put[t] as f64 / ops, pair: (get[t] + put[t]) as f64 / ops })
        .collect();
    average(v)
}
