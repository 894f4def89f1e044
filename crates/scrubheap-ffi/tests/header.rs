//! The header the build wrote (`build.rs`, with cbindgen) declares the whole interface.

use std::path::Path;

/// The header of this build, as `build.rs` wrote it.
fn header() -> String {
    let path = Path::new(env!("OUT_DIR")).join("scrubheap.h");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}: build.rs writes it", path.display()))
}

#[test]
fn header_declares_every_exported_function() {
    let header = header();
    let src = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("src")).unwrap();
    let mut exported = 0;
    for f in src {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        for name in text.split("extern \"C\" fn ").skip(1).filter_map(|t| t.split('(').next()) {
            if name.starts_with("scrubheap_") {
                assert!(header.contains(&format!("{name}(")), "{name} is missing from the header");
                exported += 1;
            }
        }
    }
    assert!(exported >= 20, "only {exported} exported functions found");
}

#[test]
fn header_names_every_status_code_and_struct() {
    let header = header();
    assert!(header.starts_with("/*\n * scrubheap: the C interface"), "cbindgen.toml's preamble is missing");
    assert!(header.contains("#ifndef SCRUBHEAP_H"), "no include guard");
    let status = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/status.rs")).unwrap();
    let codes: Vec<&str> = status
        .lines()
        .filter_map(|l| l.trim().strip_prefix("SCRUBHEAP_").and_then(|rest| rest.split(" = ").next()))
        .collect();
    assert!(codes.len() >= 38, "only {} status codes found in status.rs", codes.len());
    for code in codes {
        assert!(header.contains(&format!("SCRUBHEAP_{code} = ")), "SCRUBHEAP_{code} is missing from the header");
    }
    for ty in ["ScrubheapConfig", "ScrubheapStats", "ScrubheapNodeStats", "ScrubheapExtent", "ScrubheapOfflined"] {
        assert!(header.contains(&format!("typedef struct {ty} {{")), "struct {ty} is missing from the header");
    }
}

#[test]
fn the_header_beside_the_library_is_this_builds() {
    // OUT_DIR is <target>/<profile>/build/scrubheap-ffi-<hash>/out.
    let beside = Path::new(env!("OUT_DIR")).ancestors().nth(3).unwrap().join("include/scrubheap.h");
    let copy = std::fs::read_to_string(&beside).unwrap_or_else(|e| panic!("{}: {e}", beside.display()));
    assert_eq!(copy, header(), "{} differs from the build's header", beside.display());
}
