//! The `scrubheap` command line.
#![forbid(unsafe_code)]

mod bench;
mod oplog_gen;
mod output;
mod plots;
mod replay;
mod report;
mod run;
mod sim;
mod sim_hotremove;
mod sim_pod;
mod vmm;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// scrubheap: a physical page allocator with deferred, preemptible scrubbing.
#[derive(Parser)]
#[command(name = "scrubheap", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run tenant churn on a real arena with scrubber threads (the main job).
    Run(run::Args),
    /// Replay an op log against a fresh heap and report what happened.
    Replay(replay::Args),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::Cmd),
    /// Simulate a host of any size: policies side by side on a scenario (destroy-1tb,
    /// reboot-storm, boot-scrub, small, trace, hot-remove, pod-balloon, or a TOML file),
    /// deterministic for a seed.
    Sim(sim::Args),
    /// Boot real KVM guests on the pool: each finds its memory zero, fills it, dies.
    Vmm(vmm::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Run(a) => run::main(a),
        Cmd::Replay(a) => replay::main(a),
        Cmd::Bench(c) => bench::main(c),
        Cmd::Sim(a) => sim::main(a),
        Cmd::Vmm(a) => vmm::main(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scrubheap: {e:#}");
            ExitCode::FAILURE
        }
    }
}
