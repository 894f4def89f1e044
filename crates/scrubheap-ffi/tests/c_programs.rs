//! Builds the C programs of `tests/c/` with the system C compiler against the static
//! library and runs them: a hypervisor's use of the heap, and misuse of every kind.
//! Skips (with a message) when there is no `cc`; `.ci/run` installs one.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The static library cargo built for this test run, beside the test binary.
fn static_lib() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps folder");
    let candidates =
        [deps.join("libscrubheap_ffi.a"), deps.parent().expect("profile folder").join("libscrubheap_ffi.a")];
    let found = candidates.iter().find(|p| p.exists());
    found
        .unwrap_or_else(|| {
            panic!("libscrubheap_ffi.a not found in {candidates:?}: build with `cargo build -p scrubheap-ffi`")
        })
        .clone()
}

fn have_cc() -> bool {
    Command::new("cc").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Compiles `tests/c/<name>.c` and runs it; returns its standard output.
fn build_and_run(name: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("c-{name}-{}", std::process::id()));
    let cc = Command::new("cc")
        .args(["-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(env!("OUT_DIR")) // the header build.rs wrote
        .arg(dir.join(format!("tests/c/{name}.c")))
        .arg(static_lib())
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .output()
        .expect("cc runs");
    assert!(cc.status.success(), "cc failed on {name}.c:\n{}", String::from_utf8_lossy(&cc.stderr));
    let run = Command::new(&exe).output().expect("the C program runs");
    let (out, err) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    let _ = std::fs::remove_file(&exe);
    assert!(run.status.success(), "{name} failed ({}):\n{out}\n{err}", run.status);
    out.into_owned()
}

/// [`build_and_run`] when there is a C compiler, echoing the program's output; `None`
/// (the caller skips, with a message) when there is none.
fn run_if_cc(name: &str) -> Option<String> {
    if !have_cc() {
        eprintln!("SKIPPED: no C compiler (`cc`) on this machine; install one (apt-get install gcc) to run tests/c");
        return None;
    }
    let out = build_and_run(name);
    eprintln!("{out}");
    Some(out)
}

#[test]
fn hypervisor_program_builds_guests_on_dirty_memory_and_finds_every_frame_zero() {
    let Some(out) = run_if_cc("hypervisor") else { return };
    assert!(out.contains("every frame handed over was zero and the counters added up"), "{out}");
}

#[test]
fn misuse_program_gets_the_expected_code_for_every_refusal() {
    let Some(out) = run_if_cc("misuse") else { return };
    let refusals = out.lines().filter(|l| l.starts_with("refused as expected")).count();
    assert!(refusals >= 40, "only {refusals} refusals checked:\n{out}");
}
