//! `scrubheap replay` end to end: the built binary generates and replays op logs.

use std::path::PathBuf;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scrubheap"))
}

fn tmp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("replay-{}-{name}", std::process::id()))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("the scrubheap binary runs");
    eprintln!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

/// The `results` of a JSON report's envelope, after checking the envelope.
fn json(path: &PathBuf) -> serde_json::Value {
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("JSON report written")).expect("valid JSON");
    assert_eq!((j["schema"].as_u64(), j["command"].as_str()), (Some(2), Some("replay")), "{j}");
    assert!(j["configuration"]["args"].is_array(), "{j}");
    j["results"].clone()
}

#[test]
fn generated_200k_ops_on_3_nodes_of_1_gib_replay_clean() {
    let (log, out) = (tmp("200k.log"), tmp("200k.json"));
    let gen = run(bin().args(["replay", "--generate", "200000", "--seed", "42", "--nodes", "3"]).args([
        "--frames-per-node".as_ref(),
        "262144".as_ref(),
        log.as_os_str(),
    ]));
    assert!(gen.status.success());
    let rep = run(bin().arg("replay").arg(&log).arg("--json").arg(&out));
    assert!(rep.status.success());
    let j = json(&out);
    assert_eq!(j["invariant_violations"], 0, "{j}");
    assert_eq!(j["ops"], 200_000);
    let errors: u64 = j["errors"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(j["ok"].as_u64().unwrap() + errors, 200_000);
    let f = &j["final"];
    let total: u64 = ["free_clean", "free_dirty", "allocated", "offline"].iter().map(|k| f[k].as_u64().unwrap()).sum();
    assert_eq!(total, 3 * 262_144);
    assert!(f["allocated"].as_u64().unwrap() > 0, "the log leaves memory allocated: {j}");
    for kind in ["OutOfMemory", "NotAllocated", "WrongOwner"] {
        assert!(j["errors"][kind].as_u64().unwrap_or(0) > 0, "no {kind} in {j}");
    }
    let _ = std::fs::remove_file(log);
    let _ = std::fs::remove_file(out);
}

#[test]
fn random_bytes_replay_without_panic() {
    let (log, out) = (tmp("random.log"), tmp("random.json"));
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let bytes: Vec<u8> = (0..256 * 1024)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Now and then a line end, so there are many lines.
            if i % 97 == 0 {
                b'\n'
            } else {
                (x >> 24) as u8
            }
        })
        .collect();
    std::fs::write(&log, &bytes).unwrap();
    let rep = run(bin().arg("replay").arg(&log).arg("--json").arg(&out));
    assert!(rep.status.success());
    let j = json(&out);
    assert_eq!(j["invariant_violations"], 0);
    assert!(j["ops"].as_u64().unwrap() > 2000, "{j}");
    let _ = std::fs::remove_file(log);
    let _ = std::fs::remove_file(out);
}

#[test]
fn a_missing_file_fails_with_one_clear_line() {
    let rep = run(bin().arg("replay").arg(tmp("no-such.log")));
    assert!(!rep.status.success());
    let err = String::from_utf8_lossy(&rep.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cannot read op log"), "{err}");
}

#[test]
fn an_unwritable_json_report_fails() {
    let log = tmp("small.log");
    std::fs::write(&log, "heap nodes=1 frames_per_node=64\nalloc id=a dom=1 order=3\ncheck\n").unwrap();
    let rep = run(bin().arg("replay").arg(&log).arg("--json").arg(tmp("no-such-dir").join("out.json")));
    assert!(!rep.status.success());
    assert!(String::from_utf8_lossy(&rep.stderr).contains("cannot write JSON report"));
    let _ = std::fs::remove_file(log);
}

#[test]
fn a_recorded_run_replays_without_a_single_error() {
    // Creates, reboots, balloons, pins (some moved to Normal memory) and the hot-remove
    // moving guest memory: every line the run wrote must replay, frees of moved parts
    // included.
    let (log, out, report) = (tmp("run.log"), tmp("run.json"), tmp("run-report"));
    let r = run(bin()
        .args(["run", "--duration", "6", "--memory", "512MiB", "--seed", "3", "--record"])
        .arg(&log)
        .arg("--report")
        .arg(&report));
    assert!(r.status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    for kind in ["alloc ", "free ", "pin ", "offset=", "offline ", "online "] {
        assert!(text.contains(kind), "the run recorded no '{kind}' line");
    }
    let rep = run(bin().arg("replay").arg(&log).arg("--json").arg(&out));
    assert!(rep.status.success());
    let j = json(&out);
    assert_eq!(j["invariant_violations"], 0, "{j}");
    assert_eq!(j["errors"].as_object().map_or(0, |e| e.len()), 0, "{j}");
    assert_eq!(j["ok"], j["ops"]);
    assert_eq!(j["final"]["allocated"], 0, "{j}");
}

#[test]
fn a_pod_log_reports_its_pod_counts() {
    let (log, out) = (tmp("pod.log"), tmp("pod.json"));
    std::fs::write(&log, include_str!("../../../fuzz/seeds/replay/pod.log")).unwrap();
    let rep = run(bin().arg("replay").arg(&log).arg("--json").arg(&out));
    assert!(rep.status.success());
    let j = json(&out);
    assert_eq!(j["invariant_violations"], 0, "{j}");
    // dom 2 has 2 frames and writes a third page: it crashes (one error on that line), and
    // its next touch is refused.
    assert_eq!((j["errors"]["PodExhausted"].as_u64(), j["errors"]["PodCrashed"].as_u64()), (Some(1), Some(1)), "{j}");
    assert_eq!(j["ok"].as_u64().unwrap() + 2, j["ops"].as_u64().unwrap(), "{j}");
    let p = &j["pod"];
    assert_eq!((p["superpages_reclaimed"].as_u64(), p["superpages_shattered"].as_u64()), (Some(1), Some(1)), "{j}");
    assert_eq!(p["crashes"], 1);
    let held = p["populated"].as_u64().unwrap() + p["cache"].as_u64().unwrap();
    assert_eq!(held, j["final"]["allocated"].as_u64().unwrap(), "{j}");
    assert!(p["entries"].as_u64().unwrap() > 0);
    let _ = std::fs::remove_file(log);
    let _ = std::fs::remove_file(out);
}
