//! `scrubheap sim --scenario hot-remove` end to end: the built binary compares pins left
//! in the Movable zone with migrated pins and writes the JSON report.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn hot_remove_on_the_tiny_host() {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("hot-remove-{}.json", std::process::id()));
    let run = Command::new(env!("CARGO_BIN_EXE_scrubheap"))
        .args(["sim", "--scenario", "hot-remove", "--preset", "tiny", "--json"])
        .arg(&out)
        .output()
        .expect("the scrubheap binary runs");
    let text = String::from_utf8_lossy(&run.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success());
    assert!(text.contains("| pins-in-place | false |") && text.contains("| scrubheap | true |"), "{text}");
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(j["command"], "sim");
    let j = &j["results"];
    assert_eq!(j["scenario"], "hot-remove");
    let r = j["results"].as_array().unwrap();
    assert_eq!(r[0]["policy"], "pins-in-place");
    assert_eq!(r[0]["completed"], false);
    assert!(r[0]["time_to_offline_s"].is_null());
    assert!(!r[0]["blockers"].as_array().unwrap().is_empty());
    assert_eq!(r[1]["completed"], true);
    assert!(r[1]["time_to_offline_s"].as_f64().unwrap() > 0.0);
    assert!(text.contains("longest move piece ms (MiB)") && text.contains("extents of 1 GiB"), "{text}");
    assert_eq!(r[1]["longest_move_bytes"].as_u64().unwrap() > 0, r[1]["max_nonpreemptible_ms"].as_f64().unwrap() > 0.0);
    assert!(r[1]["guest_extents"]["extents_2m"].as_u64().is_some());
    assert_eq!(r[0]["invariant_violations"], 0);
    assert_eq!(r[1]["invariant_violations"], 0);
    let bad = Command::new(env!("CARGO_BIN_EXE_scrubheap"))
        .args(["sim", "--scenario", "hot-remove", "--preset", "tiny", "--policy", "xen"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
