//! `scrubheap bench ...`: each benchmark in its own module, all writing JSON under the
//! schema-1 `bench` keys of DESIGN section 6.

pub mod alloc;

/// Benchmarks.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Allocator throughput against buddy_system_allocator on one seeded sequence.
    Alloc(alloc::Args),
}

pub fn main(c: Cmd) -> anyhow::Result<()> {
    match c {
        Cmd::Alloc(a) => alloc::main(a),
    }
}
