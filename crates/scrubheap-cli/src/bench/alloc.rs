//! `scrubheap bench alloc`.

use std::path::PathBuf;

/// Allocator throughput against buddy_system_allocator.
#[derive(clap::Args)]
pub struct Args {
    /// Where to write the JSON report.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Seed of the alloc/free sequence.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn main(_a: Args) -> anyhow::Result<()> {
    anyhow::bail!("bench alloc: not written yet")
}
