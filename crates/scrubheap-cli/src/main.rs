//! The `scrubheap` command line.
#![forbid(unsafe_code)]

mod bench;
mod output;
mod plots;
mod replay;
mod report;
mod run;
mod sim;
mod sim_tables;
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
    #[command(
        after_help = "Examples:\n  scrubheap run --duration 12s --memory 2GiB\n  scrubheap run --compare scrubheap,xen --duration 2m"
    )]
    Run(run::Args),
    /// Replay an op log against a fresh heap and report what happened.
    #[command(
        after_help = "Example:\n  scrubheap replay --generate 10000 ops.log && scrubheap replay ops.log --json replay.json"
    )]
    Replay(replay::Args),
    /// Benchmarks.
    #[command(subcommand, after_help = "Example:\n  scrubheap bench noise --duration 5s --json noise.json")]
    Bench(bench::Cmd),
    /// Simulate a host of any size: policies side by side on a scenario (destroy-1tb,
    /// reboot-storm, boot-scrub, small, trace, hot-remove, pod-balloon, or a TOML file),
    /// deterministic for a seed.
    #[command(
        after_help = "Example:\n  scrubheap sim --scenario reboot-storm --policy scrubheap,xen --json storm.json"
    )]
    Sim(sim::Args),
    /// Boot real KVM guests on the pool: each finds its memory zero, fills it, dies.
    #[command(after_help = "Example:\n  scrubheap vmm --compare --guests 50 --memory 2GiB")]
    Vmm(vmm::Args),
}

fn main() -> ExitCode {
    // `scrubheap sim ... | head` ends quietly when `head` has read enough.
    scrubheap_host::process::restore_default_sigpipe();
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn run_takes_durations_with_units_and_refuses_bad_units_in_one_line() {
        for (arg, secs) in [("12s", 12.0), ("2m", 120.0), ("500ms", 0.5), ("25", 25.0)] {
            let Cmd::Run(a) = Cli::try_parse_from(["scrubheap", "run", "--duration", arg]).unwrap().cmd else {
                panic!("not a run")
            };
            assert_eq!(a.duration, secs, "{arg}");
        }
        let Err(e) = Cli::try_parse_from(["scrubheap", "run", "--duration", "12x"]) else { panic!("12x accepted") };
        let first = e.to_string().lines().next().unwrap_or_default().to_string();
        assert!(first.contains("unknown duration unit 'x' in '12x'"), "{e}");
        let noise = Cli::try_parse_from(["scrubheap", "bench", "noise", "--duration", "500ms"]).unwrap();
        let Cmd::Bench(bench::Cmd::Noise(n)) = noise.cmd else { panic!("not bench noise") };
        assert_eq!(n.seconds, 0.5);
    }

    #[test]
    fn every_subcommand_help_shows_an_example() {
        let mut cli = Cli::command();
        cli.build();
        for sub in cli.get_subcommands().filter(|s| s.get_name() != "help") {
            let help = sub.get_after_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(help.contains("scrubheap "), "`scrubheap {} --help` shows no example", sub.get_name());
            for inner in sub.get_subcommands().filter(|s| s.get_name() != "help") {
                let help = inner.get_after_help().map(|h| h.to_string()).unwrap_or_default();
                let name = format!("{} {}", sub.get_name(), inner.get_name());
                assert!(help.contains("scrubheap "), "`scrubheap {name} --help` shows no example");
            }
        }
    }
}
