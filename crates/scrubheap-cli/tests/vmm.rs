//! `scrubheap vmm` end to end: real KVM guests, skipped (with a message) where
//! `/dev/kvm` cannot be opened.

use std::path::PathBuf;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scrubheap"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("the scrubheap binary runs");
    eprintln!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

fn have_kvm() -> bool {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIPPED: cannot open /dev/kvm: {e}");
            false
        }
    }
}

#[test]
fn compare_boots_every_guest_on_both_backends_and_writes_json() {
    if !have_kvm() {
        return;
    }
    let json = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("vmm-{}.json", std::process::id()));
    let out = run(bin()
        .args(["vmm", "--memory", "256MiB", "--guests", "40", "--seed", "2", "--compare", "--json"])
        .arg(&json));
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(j["command"], "vmm");
    let j = &j["results"];
    let runs = j["runs"].as_array().unwrap();
    assert_eq!(runs.iter().map(|r| r["policy"].as_str().unwrap()).collect::<Vec<_>>(), ["scrubheap", "kernel"]);
    for r in runs {
        assert_eq!(r["guests"].as_u64().unwrap() + r["guests_refused"].as_u64().unwrap(), 40, "{r}");
        assert_eq!(r["leak_check"]["nonzero_words"], 0);
        assert!(r["leak_check"]["words_checked"].as_u64().unwrap() > 0);
        assert_eq!(r["program"], "scan_then_fill");
        let gap_ms = r["gap_scrub"]["budget_ms"].as_f64().unwrap();
        assert_eq!(gap_ms > 0.0, r["policy"] != "kernel", "only the pool scrubs in the gaps: {r}");
        for (k, q) in [("create_ms", "max"), ("scan_ms", "p99"), ("destroy_ms", "max"), ("memslots", "max")] {
            assert!(r[k][q].as_f64().unwrap() > 0.0, "{k}.{q} in {r}");
        }
    }
    assert_eq!(j["compare"]["baseline"], "kernel");
    assert!(j["compare"]["against"][0]["create_p50_speedup"].as_f64().unwrap() > 0.0);
    let _ = std::fs::remove_file(json);
}

#[test]
fn pod_guests_boot_below_their_maximum_balloon_down_and_find_zero() {
    if !have_kvm() {
        return;
    }
    let json = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("vmm-pod-{}.json", std::process::id()));
    let out =
        run(bin().args(["vmm", "--pod", "--memory", "256MiB", "--guests", "16", "--seed", "4", "--json"]).arg(&json));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("PoD: below max"));
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let r = &j["results"];
    let booted = r["guests"].as_u64().unwrap();
    assert!(booted > 0, "{r}");
    assert_eq!(booted + r["guests_refused"].as_u64().unwrap(), 16, "{r}");
    assert_eq!(r["leak_check"]["nonzero_words"], 0);
    let pod = &r["pod"];
    assert_eq!(pod["guests_below_max"].as_u64().unwrap(), booted, "{pod}");
    assert_eq!(pod["ballooned_bytes"].as_u64().unwrap() * 4, pod["max_bytes"].as_u64().unwrap(), "{pod}");
    assert!(pod["slots_removed"].as_u64().unwrap() > 0, "{pod}");
    assert_eq!(pod["crashes"], 0);
    let _ = std::fs::remove_file(json);
}

#[test]
fn bad_input_fails_with_one_clear_line() {
    for (args, says) in [
        (&["vmm", "--guests", "0"][..], "--guests 0"),
        (&["vmm", "--nodes", "0"][..], "--nodes 0"),
        (&["vmm", "--memory", "1MiB"][..], "at least 4 MiB"),
        (&["vmm", "--policy", "nope"][..], "unknown policy"),
        (&["vmm", "--pod", "--compare"][..], "leave the kernel baseline out"),
        (&["vmm", "--balloon", "--guest-init"][..], "leave --guest-init"),
    ] {
        let out = run(bin().args(args));
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
