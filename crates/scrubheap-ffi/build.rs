//! Writes the C header from this crate's sources with cbindgen at every build, so it can
//! never fall behind the code: into `OUT_DIR` (which the crate's tests read), and beside
//! the library, as `target/<profile>/include/scrubheap.h`, for C programs to include.

use std::path::{Path, PathBuf};

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml parses");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen understands the crate");
    let mut header = Vec::new();
    bindings.write(&mut header);
    assert!(header.len() > 1000, "cbindgen produced a near-empty header");
    write_if_changed(&out.join("scrubheap.h"), &header);
    // OUT_DIR is <target>/<profile>/build/scrubheap-ffi-<hash>/out: the library lands
    // in <target>/<profile>, and the header goes in its `include` folder.
    if let Some(profile_dir) = out.ancestors().nth(3) {
        write_if_changed(&profile_dir.join("include/scrubheap.h"), &header);
    }
}

/// Writes `bytes` to `path` unless it already holds them (a C build that depends on the
/// header's time then rebuilds only when the interface changed).
fn write_if_changed(path: &Path, bytes: &[u8]) {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return;
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    }
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
