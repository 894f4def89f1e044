//! Every Rust source file the newcomer's documents name (`README.md`,
//! `docs/architecture.md`) exists: a sentence naming a module that moved or went away is
//! a stale sentence, and this test names it.
//!
//! A name is any backquoted word ending in `.rs` (`crates/scrubheap/src/gate.rs`,
//! `scrubheap-host/src/run/scheduler.rs`, `run/hot_remove.rs`, `pool.rs`); it is found if
//! some file of the repository's `crates/` ends with it, at a path boundary.

use std::path::{Path, PathBuf};

/// The documents checked, relative to the repository root.
const DOCS: [&str; 2] = ["README.md", "docs/architecture.md"];
/// Bound on the files walked under `crates/`: a tree larger than this is a bug here.
const MAX_FILES: usize = 10_000;

/// Backquoted names ending in `.rs` in `text`.
fn named_sources(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (i, quoted) in text.split('`').enumerate() {
        // Odd pieces lie between two backquotes.
        let word = quoted.trim();
        if i % 2 == 1 && word.ends_with(".rs") && !word.contains(char::is_whitespace) {
            names.push(word.to_string());
        }
    }
    names
}

/// Every file under `dir`, as paths with `/` separators relative to `root`.
fn files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "target") {
                files(root, &p, out);
            }
        } else {
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/"));
        }
        assert!(out.len() <= MAX_FILES, "more than {MAX_FILES} files under {}", root.display());
    }
}

/// The names in `docs` (under `root`) that no file under `root/crates` ends with.
fn missing(root: &Path, docs: &[&str]) -> Vec<String> {
    let mut all = Vec::new();
    files(root, &root.join("crates"), &mut all);
    let mut out = Vec::new();
    for doc in docs {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for name in named_sources(&text) {
            let found = all.iter().any(|f| f == &name || f.ends_with(&format!("/{name}")));
            if !found {
                out.push(format!("{doc}: `{name}`"));
            }
        }
    }
    out
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn every_source_file_the_docs_name_exists() {
    let root = repo_root();
    let named: usize = DOCS.iter().map(|d| named_sources(&std::fs::read_to_string(root.join(d)).unwrap()).len()).sum();
    assert!(named >= 20, "only {named} source names found in {DOCS:?}: the parser is broken");
    let gone = missing(&root, &DOCS);
    assert!(gone.is_empty(), "the docs name files that do not exist:\n{}", gone.join("\n"));
}

#[test]
fn the_checker_names_a_file_that_does_not_exist() {
    let dir = std::env::temp_dir().join(format!("scrubheap-doc-paths-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("crates/k/src/run")).unwrap();
    std::fs::write(dir.join("crates/k/src/run/mod.rs"), "").unwrap();
    std::fs::write(dir.join("crates/k/src/pool.rs"), "").unwrap();
    let text = "`pool.rs` and `run/mod.rs` and `k/src/pool.rs` exist; `gone.rs` and `src/run.rs` do not; \
                `not code`, `ool.rs` is not a file either.";
    std::fs::write(dir.join("DOC.md"), text).unwrap();
    let gone = missing(&dir, &["DOC.md"]);
    assert_eq!(gone, ["DOC.md: `gone.rs`", "DOC.md: `src/run.rs`", "DOC.md: `ool.rs`"]);
    let _ = std::fs::remove_dir_all(&dir);
}
