//! [`WorkloadError`]: why a trace cannot be replayed, one variant per thing a user can fix.

use std::path::PathBuf;

/// Why a trace cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The file does not exist.
    #[error("trace file {} does not exist", path.display())]
    NotFound {
        /// The file asked for.
        path: PathBuf,
    },
    /// The file exists but cannot be read as text.
    #[error("cannot read trace file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The header is none of the known formats.
    #[error(
        "{}: unknown trace format (header `{header}`); expected the header of an Azure V1 decoded, \
         Azure Packing 2020, Azure V1 vmtable or Alibaba GPU 2023 pod file (see the traces README)",
        path.display()
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// Its first line (cut at 120 characters).
        header: String,
    },
    /// The file is a companion table of a trace, not a list of guests.
    #[error("{} is {what}, not a workload: replay {instead}", path.display())]
    NotAWorkload {
        /// The file.
        path: PathBuf,
        /// What it is.
        what: &'static str,
        /// The file to replay instead.
        instead: &'static str,
    },
    /// A data line cannot be read.
    #[error("{}:{line}: column `{column}`: {problem}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number (the header is line 1).
        line: usize,
        /// The column's name in the header.
        column: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Nothing to replay.
    #[error("{}: no guests in the trace: {why}", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The run duration is not a positive number of seconds.
    #[error("the run duration must be a positive number of seconds, not {0}")]
    BadDuration(f64),
    /// The host cannot hold even one guest at the trace's share of it.
    #[error(
        "a host of {0} bytes is too small to replay a trace: guests are at least 4 MiB and a trace is scaled to 75% of the host"
    )]
    HostTooSmall(u64),
}
