//! The CLI's one JSON writer. Every command that takes `--json` writes one envelope:
//!
//! ```text
//! { "schema": 2, "command": "run", "configuration": { "args": [...], ... }, "results": { ... } }
//! ```
//!
//! - `schema`: the envelope's version ([`ENVELOPE_SCHEMA`]).
//! - `command`: the subcommand (`run`, `replay`, `sim`, `vmm`, `bench alloc`, ...).
//! - `configuration`: the command line as given (`args`, enough to run it again) and the
//!   settings the command resolved from it (defaults filled in), where it has any.
//! - `results`: the command's report, with every key it had before the envelope (DESIGN 6:
//!   keys may be added, never renamed), including its own `schema` where it had one.

use anyhow::Context;
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::Path;

/// Version of the envelope: 2 since reports moved under `results` (schema-1 reports were
/// the bare `results`).
pub const ENVELOPE_SCHEMA: u32 = 2;

/// Bound on the length of a command name.
const MAX_COMMAND: usize = 64;

#[derive(Serialize)]
struct Envelope<'a, R: Serialize + ?Sized> {
    schema: u32,
    command: &'a str,
    configuration: Value,
    results: &'a R,
}

/// Writes the envelope of `command` to `path`: `settings` (an object, or `Value::Null`)
/// joins the command line under `configuration`, `results` goes under `results`.
pub fn write_json<R: Serialize + ?Sized>(
    path: &Path,
    command: &str,
    settings: Value,
    results: &R,
) -> anyhow::Result<()> {
    assert!(!command.is_empty() && command.len() <= MAX_COMMAND, "a command name, not {command:?}");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let envelope = Envelope { schema: ENVELOPE_SCHEMA, command, configuration: configuration(args, settings), results };
    let text = serde_json::to_string_pretty(&envelope)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write JSON report {}", path.display()))
}

/// `{ "args": [...], ...settings }`; settings that are not an object go under `settings`.
fn configuration(args: Vec<String>, settings: Value) -> Value {
    let mut c = Map::new();
    c.insert("args".into(), args.into());
    match settings {
        Value::Object(m) => c.extend(m),
        Value::Null => {}
        other => {
            c.insert("settings".into(), other);
        }
    }
    debug_assert!(c.contains_key("args"));
    Value::Object(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_envelope_wraps_the_report_unchanged() {
        let path = std::env::temp_dir().join(format!("scrubheap-envelope-{}.json", std::process::id()));
        let report = json!({ "schema": 1, "policy": "scrubheap", "results": [1, 2] });
        write_json(&path, "sim", json!({ "seed": 3 }), &report).unwrap();
        let j: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(j["schema"], ENVELOPE_SCHEMA);
        assert_eq!(j["command"], "sim");
        assert_eq!(j["results"], report);
        assert_eq!(j["configuration"]["seed"], 3);
        assert!(j["configuration"]["args"].is_array());
        assert_eq!(j.as_object().unwrap().len(), 4);
    }

    #[test]
    fn settings_that_are_not_an_object_are_kept_apart() {
        let c = configuration(vec!["run".into()], json!(7));
        assert_eq!(c, json!({ "args": ["run"], "settings": 7 }));
        assert_eq!(configuration(vec![], Value::Null), json!({ "args": [] }));
    }

    #[test]
    fn an_unwritable_path_is_an_error_naming_it() {
        let e = write_json(Path::new("/nonexistent-dir/x.json"), "run", Value::Null, &1).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent-dir/x.json"), "{e:#}");
    }
}
