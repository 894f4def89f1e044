//! The committed header is what cbindgen makes of the code today.

use std::path::Path;

const REGENERATE: &str = "SCRUBHEAP_BLESS=1 cargo test --release -p scrubheap-ffi --test header";

fn generate() -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml parses");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen understands the crate");
    let mut out = Vec::new();
    bindings.write(&mut out);
    out
}

#[test]
fn committed_header_matches_the_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/scrubheap.h");
    let fresh = generate();
    assert!(fresh.len() > 1000, "cbindgen produced a near-empty header");
    if std::env::var_os("SCRUBHEAP_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("header written");
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "{} is out of date with the code (or missing): regenerate it with `{REGENERATE}` and commit it",
        path.display()
    );
}

#[test]
fn header_declares_every_exported_function() {
    let header = String::from_utf8(generate()).unwrap();
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
