//! `scrubheap replay FILE --json OUT`.

use std::path::PathBuf;

/// Replay an op log.
#[derive(clap::Args)]
pub struct Args {
    /// The op log to replay.
    pub file: PathBuf,
    /// Where to write the JSON report.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn main(_a: Args) -> anyhow::Result<()> {
    anyhow::bail!("replay: not written yet")
}
