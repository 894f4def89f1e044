//! `scrubheap bench ...`: each benchmark in its own module, all writing JSON under the
//! schema-1 `bench` keys of DESIGN section 6.

pub mod alloc;
pub mod latency;
pub mod noise;
pub mod patterns;
pub mod scrub;

/// Benchmarks.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// LLFree's patterns on scrubheap's per-CPU fast path, LLFree and buddy_system_allocator;
    /// and throughput against buddy_system_allocator on one seeded churn sequence.
    #[command(
        after_help = "Example:\n  scrubheap bench alloc --json alloc.json\n  scrubheap bench alloc --suite patterns --reps 5"
    )]
    Alloc(alloc::Args),
    /// Background scrub throughput against raw zeroing of the same arena, per kernel.
    #[command(after_help = "Example:\n  scrubheap bench scrub --memory 512MiB --json scrub.json")]
    Scrub(scrub::Args),
    /// Longest non-preemptible section while populating 1 GiB from dirty memory, per policy.
    #[command(after_help = "Example:\n  scrubheap bench latency --reps 3 --json latency.json")]
    Latency(latency::Args),
    /// Raw zeroing one batch per call, timed per call: the machine's floor for sections.
    #[command(after_help = "Example:\n  scrubheap bench noise --duration 5s --json noise.json")]
    Noise(noise::Args),
}

pub fn main(c: Cmd) -> anyhow::Result<()> {
    match c {
        Cmd::Alloc(a) => alloc::main(a),
        Cmd::Scrub(a) => scrub::main(a),
        Cmd::Latency(a) => latency::main(a),
        Cmd::Noise(a) => noise::main(a),
    }
}
