//! `scrubheap bench ...`.

use std::path::PathBuf;

/// Benchmarks.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Allocator throughput against buddy_system_allocator on one seeded sequence.
    Alloc {
        /// Where to write the JSON report.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Seed of the alloc/free sequence.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

pub fn main(c: Cmd) -> anyhow::Result<()> {
    match c {
        Cmd::Alloc { .. } => anyhow::bail!("bench alloc: not written yet"),
    }
}
