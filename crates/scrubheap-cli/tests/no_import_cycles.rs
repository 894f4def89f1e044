//! No import cycle between the modules of any crate of the workspace.
//!
//! For every `crates/*/src`, this reads the crate root (`lib.rs`, else `main.rs`), follows its
//! `mod` declarations to every module file, and builds a graph whose nodes are the crate's
//! top-level modules (a module's submodules count as part of it) plus the crate root itself
//! for the items the root defines. A module depends on another when its code (not its
//! comments or strings) names it by a `crate::` path, a `super::` path that leaves the
//! top-level module, or, in the root file, a bare `m::` path; names the root re-exports
//! (`pub use m::{A, B}`) resolve to the module that defines them, and the root's own `mod` and
//! `pub use` lines are its table of contents, not dependencies. Any cycle fails the test,
//! naming the modules and the line behind each edge.
//!
//! Run alone: `cargo test --release -p scrubheap-cli --test no_import_cycles`.
//!
//! [`ALLOWED`] lists the few edges left out of the graph, each with the work that removes
//! it; an edge listed there that no longer exists is reported so the line can go.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The root's own items, as a node name.
const ROOT: &str = "(crate root)";
/// Bound on module files per crate and on `mod` nesting: a crate larger than this is a bug here.
const MAX_FILES: usize = 1000;
const MAX_DEPTH: usize = 8;

/// Edges (crate, from, to, why) left out of the graph while other work removes them. Each
/// breaks the cycles named with it; nothing else may form a cycle. Empty: no crate has a
/// module cycle; an entry put here must say which work removes it.
const ALLOWED: [(&str, &str, &str, &str); 0] = [];

/// A crate's module files: (top-level module or [`ROOT`], path, text without comments/strings).
struct Crate {
    files: Vec<(String, PathBuf, String)>,
    /// Top-level module names.
    modules: BTreeSet<String>,
    /// Name re-exported by the root -> the top-level module it comes from.
    reexports: BTreeMap<String, String>,
}

/// Blanks comments, string and char literals (keeping line breaks, so line numbers hold).
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if c[i] == '"'
            || (c[i] == 'r' && (next == Some('"') || next == Some('#'))) && !ident(c.get(i.wrapping_sub(1)))
        {
            // A raw string r#"..."# or a plain string with escapes.
            let raw = c[i] == 'r';
            let mut hashes = 0;
            out.push(' ');
            i += 1;
            while raw && c.get(i) == Some(&'#') {
                hashes += 1;
                out.push(' ');
                i += 1;
            }
            if raw && c.get(i) != Some(&'"') {
                continue; // `r#ident`, not a string
            }
            out.push(' ');
            i += 1;
            while i < c.len() {
                if !raw && c[i] == '\\' {
                    out.push(' ');
                    out.push(blank(*c.get(i + 1).unwrap_or(&' ')));
                    i += 2;
                } else if c[i] == '"' && (0..hashes).all(|k| c.get(i + 1 + k) == Some(&'#')) {
                    (0..=hashes).for_each(|_| out.push(' '));
                    i += 1 + hashes;
                    break;
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if c[i] == '\'' && (c.get(i + 2) == Some(&'\'') || next == Some('\\')) {
            // A char literal ('x' or '\n', '\u{..}'); a lifetime has no closing quote.
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '\'' {
                out.push(' ');
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            out.push(' ');
            i += 1;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn ident(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// `mod name;` declarations of a file (not inline `mod name { .. }` blocks).
fn mod_decls(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for stmt in code.split(';') {
        let tail = stmt.rsplit(['{', '}']).next().unwrap_or("");
        let words: Vec<&str> = tail.split_whitespace().collect();
        if let [.., "mod", name] = words.as_slice() {
            out.push(name.to_string());
        }
    }
    out
}

/// Reads a crate's module tree from its root file.
fn read_crate(src: &Path) -> Option<Crate> {
    let root = ["lib.rs", "main.rs"].iter().map(|f| src.join(f)).find(|p| p.is_file())?;
    let mut files = Vec::new();
    // (file, directory of its children, top-level module, depth)
    let mut todo = vec![(root.clone(), src.to_path_buf(), ROOT.to_string(), 0usize)];
    while let Some((file, dir, top, depth)) = todo.pop() {
        assert!(files.len() < MAX_FILES && depth < MAX_DEPTH, "module tree too large at {}", file.display());
        let code = code_only(&std::fs::read_to_string(&file).unwrap());
        for m in mod_decls(&code) {
            let found = [dir.join(format!("{m}.rs")), dir.join(&m).join("mod.rs")].into_iter().find(|p| p.is_file());
            let Some(child) = found else { continue }; // a `mod` inside a macro or cfg'd out
            let top = if top == ROOT { m.clone() } else { top.clone() };
            todo.push((child, dir.join(&m), top, depth + 1));
        }
        files.push((top, file, code));
    }
    let modules: BTreeSet<String> = files.iter().map(|f| f.0.clone()).filter(|m| m != ROOT).collect();
    let root_code = &files.iter().find(|f| f.0 == ROOT).unwrap().2;
    let mut reexports = BTreeMap::new();
    for stmt in root_code.split(';') {
        let s = stmt.trim();
        let Some(rest) = s.strip_prefix("pub use ").or_else(|| s.split_once("pub use ").map(|x| x.1)) else { continue };
        let rest = rest.trim().trim_start_matches("self::").trim_start_matches("crate::");
        let Some((m, names)) = rest.split_once("::") else { continue };
        if modules.contains(m) {
            for n in names.split(|c: char| "{},".contains(c) || c.is_whitespace()).filter(|n| !n.is_empty()) {
                let n = n.rsplit("::").next().unwrap();
                reexports.insert(n.to_string(), m.to_string());
            }
        }
    }
    Some(Crate { files, modules, reexports })
}

/// The first path segments after `prefix` at byte `at` of `code` (one, or several in braces).
fn first_segments(code: &str, at: usize) -> Vec<String> {
    let rest = code[at..].trim_start();
    if let Some(group) = rest.strip_prefix('{') {
        let mut depth = 1;
        let mut seg = String::new();
        let mut out = Vec::new();
        let mut fresh = true;
        for ch in group.chars() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 1 => fresh = true,
                c if depth == 1 && fresh && (c.is_alphanumeric() || c == '_') => seg.push(c),
                _ if depth == 1 && fresh && !seg.is_empty() => {
                    out.push(std::mem::take(&mut seg));
                    fresh = false;
                }
                _ => {}
            }
            if depth == 0 {
                break;
            }
        }
        if !seg.is_empty() {
            out.push(seg);
        }
        out
    } else {
        vec![rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()]
    }
}

/// Edges (from, to) -> first place they were seen.
fn edges(k: &Crate) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    let resolve = |name: &str| -> String {
        if k.modules.contains(name) {
            name.to_string()
        } else {
            k.reexports.get(name).cloned().unwrap_or_else(|| ROOT.to_string())
        }
    };
    for (top, file, code) in &k.files {
        let nested = file.file_name().is_some_and(|f| f != "lib.rs" && f != "main.rs") && {
            let src_dir = k.files.iter().find(|f| f.0 == ROOT).unwrap().1.parent().unwrap().to_path_buf();
            file.parent() != Some(src_dir.as_path())
        };
        let mut offset = 0;
        for (n, line) in code.split_inclusive('\n').enumerate() {
            let mut prefixes: Vec<(usize, usize)> = Vec::new();
            for pat in ["crate::", "super::"] {
                for (i, _) in line.match_indices(pat) {
                    if ident(line[..i].chars().last().as_ref()) {
                        continue;
                    }
                    if pat == "super::" && nested && !line[i + pat.len()..].starts_with("super::") {
                        continue; // stays inside this top-level module
                    }
                    let skip = if pat == "super::" && nested { 2 * pat.len() } else { pat.len() };
                    prefixes.push((i, skip));
                }
            }
            if top == ROOT {
                let t = line.trim_start();
                if !(t.starts_with("mod ")
                    || t.contains(" mod ")
                    || t.starts_with("pub use")
                    || t.starts_with("pub(crate) use"))
                {
                    for m in &k.modules {
                        for (i, _) in line.match_indices(&format!("{m}::")) {
                            if !ident(line[..i].chars().last().as_ref()) && !line[..i].ends_with("::") {
                                prefixes.push((i, 0));
                            }
                        }
                    }
                }
            }
            for (i, skip) in prefixes {
                for seg in first_segments(code, offset + i + skip) {
                    let to = resolve(&seg);
                    if seg.is_empty() || to == *top || seg == "self" {
                        continue;
                    }
                    out.entry((top.clone(), to)).or_insert_with(|| format!("{}:{}", file.display(), n + 1));
                }
            }
            offset += line.len();
        }
    }
    out
}

/// Every cycle found by a depth-first search (one per back edge), as node lists.
fn cycles(edges: &BTreeMap<(String, String), String>) -> Vec<Vec<String>> {
    let mut adj: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        adj.entry(a).or_default().push(b);
        adj.entry(b).or_default();
    }
    let mut state: BTreeMap<&str, u8> = adj.keys().map(|k| (*k, 0)).collect();
    let mut found = Vec::new();
    fn dfs<'a>(
        n: &'a str,
        adj: &BTreeMap<&'a str, Vec<&'a str>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
        found: &mut Vec<Vec<String>>,
    ) {
        state.insert(n, 1);
        stack.push(n);
        for &m in &adj[n] {
            match state[m] {
                0 => dfs(m, adj, state, stack, found),
                1 => {
                    let at = stack.iter().position(|x| *x == m).unwrap();
                    found.push(stack[at..].iter().map(|s| s.to_string()).collect());
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n, 2);
    }
    let keys: Vec<&str> = adj.keys().copied().collect();
    for k in keys {
        if state[k] == 0 {
            dfs(k, &adj, &mut state, &mut Vec::new(), &mut found);
        }
    }
    found
}

/// One line per cycle: `a -> b -> a (a->b at file:line, ...)`.
fn describe(name: &str, edges: &BTreeMap<(String, String), String>, cycle: &[String]) -> String {
    let mut ring = cycle.to_vec();
    ring.push(cycle[0].clone());
    let why: Vec<String> =
        ring.windows(2).map(|w| format!("{}->{} at {}", w[0], w[1], edges[&(w[0].clone(), w[1].clone())])).collect();
    format!("{name}: {} ({})", ring.join(" -> "), why.join(", "))
}

/// Cycles of every crate under `crates`, described.
fn check(crates: &Path) -> (usize, Vec<String>) {
    let mut problems = Vec::new();
    let mut checked = 0;
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(crates).unwrap().map(|e| e.unwrap().path()).collect();
    dirs.sort();
    for dir in dirs {
        let Some(k) = read_crate(&dir.join("src")) else { continue };
        checked += 1;
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut e = edges(&k);
        for (c, from, to, why) in ALLOWED.iter().filter(|a| a.0 == name) {
            if e.remove(&(from.to_string(), to.to_string())).is_none() {
                println!("{c}: allowed edge {from} -> {to} no longer exists; remove it from ALLOWED ({why})");
            }
        }
        problems.extend(cycles(&e).iter().map(|c| describe(&name, &e, c)));
    }
    (checked, problems)
}

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (checked, problems) = check(&crates);
    assert!(checked >= 6, "only {checked} crates found under {}", crates.display());
    assert!(problems.is_empty(), "import cycles:\n{}", problems.join("\n"));
}

/// A made-up crate in a fresh temporary folder: (file, text) pairs under `src/`.
fn made_up(test: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("scrubheap-cycles-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (f, text) in files {
        let p = dir.join("k").join("src").join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir
}

#[test]
fn the_checker_names_cycles_through_paths_reexports_and_super() {
    let dir = made_up(
        "cycle",
        &[
            ("lib.rs", "mod a;\nmod b;\nmod c;\npub use c::Thing;\n"),
            ("a.rs", "use crate::b::f;\n// crate::c::nothing in a comment\nconst S: &str = \"crate::c::x\";\n"),
            ("b.rs", "mod inner;\npub fn f() {}\n"),
            ("b/inner.rs", "fn g() { super::super::Thing::new(); super::f(); }\n"),
            ("c.rs", "pub struct Thing;\nfn h() { crate::a::x() }\n"),
        ],
    );
    let (checked, problems) = check(&dir);
    assert_eq!(checked, 1);
    assert_eq!(problems.len(), 1, "{problems:?}");
    let p = &problems[0];
    assert!(p.contains("a -> b -> c -> a"), "{p}");
    assert!(p.contains("b->c at") && p.contains("inner.rs:1"), "{p}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_checker_accepts_layers_and_a_facade_root() {
    let dir = made_up(
        "layers",
        &[
            ("lib.rs", "mod a;\nmod b;\npub use a::{A, B as C};\npub use b::run;\n"),
            ("a.rs", "pub struct A; pub struct B;\n"),
            ("b.rs", "use crate::{A, C};\nuse super::a;\npub fn run() { let c = '\"'; }\n"),
        ],
    );
    let (_, problems) = check(&dir);
    assert!(problems.is_empty(), "{problems:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
