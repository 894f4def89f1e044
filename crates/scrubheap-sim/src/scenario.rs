//! Scenarios: a host, guests, and timed events (create, destroy, reboot). Built-in ones
//! reproduce the field's cases; users write their own as TOML (format in
//! `docs/sim-scenarios.md`).

use crate::builtin::Builtin;
pub use crate::preset::Mechanisms;
use crate::preset::{HostPreset, GIB, MIB};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use std::collections::BTreeMap;

/// How a guest reserves memory before it is populated.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClaimMode {
    /// No claim.
    None,
    /// A node claim on the guest's node for all of its memory (allocations exact-node).
    Node,
    /// A global claim for all of its memory.
    Global,
}

/// One guest's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct GuestSpec {
    /// The group it was declared in.
    pub group: String,
    /// Memory, bytes (a multiple of the frame size).
    pub bytes: u64,
    /// Its home node, if pinned.
    pub node: Option<usize>,
    /// Its claim.
    pub claim: ClaimMode,
}

/// What happens to a guest.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Build it: claim, populate (1 GiB extents, then 2 MiB, then frames).
    Create,
    /// Tear it down and free its memory.
    Destroy,
    /// Destroy, then create again (a new domain) with the same shape.
    Reboot,
}

/// An event: `action` on `guest` at `at_ns` (or as soon after as the guest and a
/// toolstack CPU are free).
#[derive(Clone, Debug, PartialEq)]
pub struct TimedOp {
    /// When, ns of simulated time.
    pub at_ns: u64,
    /// Index into [`Scenario::guests`].
    pub guest: usize,
    /// What.
    pub action: Action,
    /// Whether its create/destroy times count in the results (setup events do not).
    pub measure: bool,
}

/// A runnable scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Its name.
    pub name: String,
    /// The host.
    pub host: HostPreset,
    /// CPUs that run toolstack operations (dom0 vCPUs), placed round-robin over nodes.
    pub builders: usize,
    /// Whether all memory starts dirty (boot).
    pub initially_dirty: bool,
    /// The guests.
    pub guests: Vec<GuestSpec>,
    /// The events, in time order.
    pub ops: Vec<TimedOp>,
    /// Simulated time limit, seconds.
    pub max_s: f64,
    /// Timeline sample interval, seconds of simulated time.
    pub sample_s: f64,
    /// Things the report should say about how the scenario was built (scaling factors...).
    pub notes: Vec<String>,
    /// The mechanisms switched on.
    pub mechanisms: Mechanisms,
}

impl Scenario {
    /// A built-in scenario that compares policies (see [`Builtin`]) on `preset` (or its
    /// default host), with `seed` for any random choices. `trace` needs
    /// [`crate::trace::azure_v1`] instead.
    pub fn builtin(name: &str, preset: Option<HostPreset>, seed: u64) -> Result<Scenario, String> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5ce7_a710);
        match name.parse::<Builtin>()? {
            Builtin::Destroy1tb => Ok(destroy_1tb(preset.unwrap_or_else(HostPreset::xen_2017))),
            Builtin::RebootStorm => Ok(reboot_storm(preset.unwrap_or_else(HostPreset::epyc_2s_4t), &mut rng)),
            Builtin::BootScrub => Ok(boot_scrub(preset.unwrap_or_else(HostPreset::epyc_2s_4t))),
            Builtin::Small => Ok(small(preset.unwrap_or_else(HostPreset::tiny), &mut rng)),
            Builtin::ClaimsReboot => Ok(claims_reboot(preset.unwrap_or_else(HostPreset::xenserver_4s), &mut rng)),
            Builtin::Trace => Err("the trace scenario is built from a trace file (scrubheap_sim::trace)".into()),
            b @ (Builtin::HotRemove | Builtin::PodBalloon) => {
                Err(format!("{b} does not compare policies: run it with Builtin::run_other"))
            }
        }
    }

    /// Checks that the scenario can run on its host.
    pub fn validate(&self) -> Result<(), String> {
        self.host.validate()?;
        if self.builders == 0 {
            return Err("a scenario needs at least one builder CPU".into());
        }
        let cpus = self.host.cpus();
        if self.builders > cpus {
            return Err(format!("{} builders but the host has {cpus} CPUs", self.builders));
        }
        for (i, g) in self.guests.iter().enumerate() {
            if g.bytes == 0 || g.bytes % self.host.frame_size != 0 {
                return Err(format!(
                    "guest {i} ({}): {} bytes is not a positive multiple of the {}-byte frame",
                    g.group, g.bytes, self.host.frame_size
                ));
            }
            if let Some(n) = g.node {
                if n >= self.host.nodes {
                    return Err(format!(
                        "guest {i} ({}): node {n} but the host has {} nodes",
                        g.group, self.host.nodes
                    ));
                }
            }
            if g.claim == ClaimMode::Node && g.node.is_none() {
                return Err(format!("guest {i} ({}): a node claim needs a node", g.group));
            }
        }
        if let Some(op) = self.ops.iter().find(|o| o.guest >= self.guests.len()) {
            return Err(format!("an event names guest {} of {}", op.guest, self.guests.len()));
        }
        if !(self.max_s > 0.0 && self.sample_s > 0.0) {
            return Err("max_s and sample_s must be positive".into());
        }
        Ok(())
    }
}

fn ns(s: f64) -> u64 {
    (s * 1e9).round() as u64
}

fn destroy_1tb(host: HostPreset) -> Scenario {
    let bytes = (1024 * GIB).min(host.total_bytes() / host.frame_size * host.frame_size);
    let guests = vec![GuestSpec { group: "big".into(), bytes, node: None, claim: ClaimMode::None }];
    Scenario {
        name: "destroy-1tb".into(),
        host,
        builders: 1,
        initially_dirty: false,
        guests,
        ops: vec![
            TimedOp { at_ns: 0, guest: 0, action: Action::Create, measure: false },
            TimedOp { at_ns: ns(1.0), guest: 0, action: Action::Destroy, measure: true },
        ],
        max_s: 7200.0,
        sample_s: 1.0,
        notes: vec!["one 1 TiB guest (1 GiB extents, spread over the nodes) is built, then destroyed at t=1 s by one toolstack CPU".into()],
        mechanisms: Mechanisms::default(),
    }
}

/// Guests filling 7/8 of every node, 7 per node, each pinned to its node.
fn fill_nodes(host: &HostPreset, claim: ClaimMode) -> Vec<GuestSpec> {
    let gib = (host.node_gib / 8).max(1);
    let mut v = Vec::new();
    for i in 0..7 {
        for n in 0..host.nodes {
            let _ = i;
            v.push(GuestSpec { group: "tenants".into(), bytes: gib * GIB, node: Some(n), claim });
        }
    }
    v
}

/// `fill_nodes` guests under node claims, built at t=0 (not measured); the first
/// `wave` of them reboot within one second from t=10 s (measured). fill_nodes numbers
/// guests round-robin over the nodes, so a wave of half of them is half of every node's.
fn fill_then_reboot(host: &HostPreset, rng: &mut ChaCha8Rng, wave: usize) -> (Vec<GuestSpec>, Vec<TimedOp>) {
    let guests = fill_nodes(host, ClaimMode::Node);
    assert!(wave <= guests.len());
    let mut ops: Vec<TimedOp> =
        (0..guests.len()).map(|g| TimedOp { at_ns: 0, guest: g, action: Action::Create, measure: false }).collect();
    let at = ns(10.0);
    for g in 0..wave {
        let jitter = rng.random_range(0..ns(1.0));
        ops.push(TimedOp { at_ns: at + jitter, guest: g, action: Action::Reboot, measure: true });
    }
    ops.sort_by_key(|o| (o.at_ns, o.guest));
    (guests, ops)
}

/// A scenario over `fill_nodes` guests, run for an hour at most and sampled every 0.25 s:
/// memory clean at the start and no mechanism (a caller overrides either with `..`).
fn filled_nodes(
    name: &str,
    host: HostPreset,
    builders: usize,
    (guests, ops): (Vec<GuestSpec>, Vec<TimedOp>),
    note: String,
) -> Scenario {
    assert!(builders > 0 && !guests.is_empty());
    assert!(ops.windows(2).all(|w| w[0].at_ns <= w[1].at_ns), "events in time order");
    Scenario {
        name: name.into(),
        host,
        builders,
        initially_dirty: false,
        guests,
        ops,
        max_s: 3600.0,
        sample_s: 0.25,
        notes: vec![note],
        mechanisms: Mechanisms::default(),
    }
}

fn reboot_storm(host: HostPreset, rng: &mut ChaCha8Rng) -> Scenario {
    // Every guest reboots within the same second: each node's memory is freed dirty and
    // claimed again at once by the guests that lived there.
    let (guests, ops) = fill_then_reboot(&host, rng, host.nodes * 7);
    let builders = host.nodes * 2;
    let note = format!(
        "{} guests (7 per node, 1/8 of a node each, node claims) are built, then all reboot within 1 s from t=10 s; {builders} toolstack CPUs (2 per node)",
        guests.len()
    );
    filled_nodes("reboot-storm", host, builders, (guests, ops), note)
}

/// VMs fill every node under node claims; a wave of them reboots in parallel, each rebuilt
/// on its own claimed node while its old memory (and its neighbours') is still dirty.
fn claims_reboot(host: HostPreset, rng: &mut ChaCha8Rng) -> Scenario {
    let wave = (host.nodes * 7).div_ceil(2);
    let (guests, ops) = fill_then_reboot(&host, rng, wave);
    let builders = CLAIMS_REBOOT_BUILDERS.min(host.cpus());
    let note = format!(
        "{} guests (7 per node, 1/8 of a node each, node claims) are built; {wave} of them (half of every node's) reboot within 1 s from t=10 s, each rebuilt under a node claim on its own node; {builders} toolstack CPUs",
        guests.len()
    );
    Scenario {
        // The scenario of the 2026 reports: every mechanism they name is on unless the
        // caller switches it off.
        mechanisms: Mechanisms::ALL,
        ..filled_nodes("claims-reboot", host, builders, (guests, ops), note)
    }
}

/// Toolstack CPUs of `claims-reboot`: dom0's vCPUs (see `docs/sim-presets.md`).
pub const CLAIMS_REBOOT_BUILDERS: usize = 16;

fn boot_scrub(host: HostPreset) -> Scenario {
    let guests = fill_nodes(&host, ClaimMode::Node);
    let ops =
        (0..guests.len()).map(|g| TimedOp { at_ns: 0, guest: g, action: Action::Create, measure: true }).collect();
    let builders = host.nodes * 2;
    let note = format!(
        "all memory dirty at boot; {} guests (7 per node, node claims) are built from t=0 by {builders} toolstack CPUs",
        guests.len()
    );
    Scenario { initially_dirty: true, ..filled_nodes("boot-scrub", host, builders, (guests, ops), note) }
}

fn small(host: HostPreset, rng: &mut ChaCha8Rng) -> Scenario {
    let mut guests = Vec::new();
    let node_bytes = host.node_gib * GIB;
    for n in 0..host.nodes {
        for size in [node_bytes / 4, node_bytes / 8, 6 * MIB] {
            guests.push(GuestSpec { group: "g".into(), bytes: size, node: Some(n), claim: ClaimMode::Node });
        }
    }
    let mut ops = Vec::new();
    for g in 0..guests.len() {
        ops.push(TimedOp { at_ns: 0, guest: g, action: Action::Create, measure: true });
        let t = ns(0.05) + rng.random_range(0..ns(0.05));
        ops.push(TimedOp { at_ns: t, guest: g, action: Action::Reboot, measure: true });
        ops.push(TimedOp { at_ns: t + ns(0.2), guest: g, action: Action::Destroy, measure: true });
    }
    ops.sort_by_key(|o| (o.at_ns, o.guest));
    Scenario {
        name: "small".into(),
        host,
        builders: 2,
        initially_dirty: true,
        guests,
        ops,
        max_s: 60.0,
        sample_s: 0.005,
        notes: vec!["small host, dirty at boot: guests built, rebooted and destroyed (tests)".into()],
        mechanisms: Mechanisms::default(),
    }
}

/// A scenario file as written in TOML (see `docs/sim-scenarios.md`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileScenario {
    name: String,
    host: toml::Table,
    #[serde(default)]
    run: FileRun,
    #[serde(default)]
    guests: Vec<FileGuests>,
    #[serde(default)]
    events: Vec<FileEvent>,
    #[serde(default)]
    mechanisms: Mechanisms,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRun {
    #[serde(default = "default_builders")]
    builders: usize,
    #[serde(default)]
    initially_dirty: bool,
    #[serde(default = "default_max_s")]
    max_s: f64,
    #[serde(default = "default_sample_s")]
    sample_s: f64,
}

impl Default for FileRun {
    fn default() -> Self {
        FileRun {
            builders: default_builders(),
            initially_dirty: false,
            max_s: default_max_s(),
            sample_s: default_sample_s(),
        }
    }
}

fn default_builders() -> usize {
    1
}
fn default_max_s() -> f64 {
    3600.0
}
fn default_sample_s() -> f64 {
    1.0
}
fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FileNode {
    Index(usize),
    Word(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGuests {
    name: String,
    #[serde(default = "one")]
    count: usize,
    gib: Option<f64>,
    mib: Option<f64>,
    node: Option<FileNode>,
    #[serde(default = "claim_none")]
    claim: ClaimMode,
}

fn one() -> usize {
    1
}
fn claim_none() -> ClaimMode {
    ClaimMode::None
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEvent {
    at_s: f64,
    action: Action,
    guests: String,
    #[serde(default = "default_true")]
    measure: bool,
    #[serde(default)]
    stagger_s: f64,
}

/// Parses a TOML scenario. `seed` drives `stagger_s` spreads.
pub fn from_toml(text: &str, seed: u64) -> Result<Scenario, String> {
    let f: FileScenario = toml::from_str(text).map_err(|e| format!("scenario file: {e}"))?;
    let host = file_host(&f.host)?;
    let (guests, groups) = file_guests(&f.guests, &host)?;
    let ops = file_events(&f.events, guests.len(), &groups, seed)?;
    let s = Scenario {
        name: f.name,
        host,
        builders: f.run.builders,
        initially_dirty: f.run.initially_dirty,
        guests,
        ops,
        max_s: f.run.max_s,
        sample_s: f.run.sample_s,
        notes: Vec::new(),
        mechanisms: f.mechanisms,
    };
    s.validate()?;
    Ok(s)
}

/// A scenario file's `[host]`: its `preset` (`tiny` when it names none) with the other
/// fields as overrides.
fn file_host(table: &toml::Table) -> Result<HostPreset, String> {
    let mut host_table = table.clone();
    let base = match host_table.remove("preset") {
        Some(toml::Value::String(p)) => HostPreset::builtin(&p)
            .ok_or_else(|| format!("[host] preset '{p}' is unknown: use one of {}", HostPreset::NAMES.join(", ")))?,
        Some(v) => return Err(format!("[host] preset must be a name, not {v}")),
        None => HostPreset::tiny(),
    };
    apply_overrides(&base, &host_table)
}

/// Each group of guests' name with the indices of its guests.
type Groups = BTreeMap<String, Vec<usize>>;

/// A scenario file's `[[guests]]` groups on `host`: every guest (sizes rounded down to
/// whole frames), and each group's name with the indices of its guests.
fn file_guests(groups_in: &[FileGuests], host: &HostPreset) -> Result<(Vec<GuestSpec>, Groups), String> {
    let mut guests = Vec::new();
    let mut groups = Groups::new();
    for g in groups_in {
        let bytes = match (g.gib, g.mib) {
            (Some(x), None) => (x * GIB as f64) as u64,
            (None, Some(x)) => (x * MIB as f64) as u64,
            _ => return Err(format!("guests '{}': give exactly one of gib or mib", g.name)),
        };
        let bytes = bytes / host.frame_size * host.frame_size;
        if groups.contains_key(&g.name) || g.name == "all" {
            return Err(format!("guests '{}': the name is used twice (or is the reserved word 'all')", g.name));
        }
        for i in 0..g.count {
            let node = match &g.node {
                None => None,
                Some(FileNode::Index(n)) => Some(*n),
                Some(FileNode::Word(w)) if w == "spread" => Some(i % host.nodes),
                Some(FileNode::Word(w)) if w == "any" => None,
                Some(FileNode::Word(w)) => {
                    return Err(format!(
                        "guests '{}': node must be a number, \"spread\" or \"any\", not \"{w}\"",
                        g.name
                    ))
                }
            };
            groups.entry(g.name.clone()).or_default().push(guests.len());
            guests.push(GuestSpec { group: g.name.clone(), bytes, node, claim: g.claim });
        }
    }
    Ok((guests, groups))
}

/// A scenario file's `[[events]]`: one operation per guest of the group an event names
/// (`all`: each of the `guests`), spread by a random jitter below its `stagger_s`, in time
/// order (ties by guest).
fn file_events(events: &[FileEvent], guests: usize, groups: &Groups, seed: u64) -> Result<Vec<TimedOp>, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xf11e);
    let mut ops = Vec::new();
    for e in events {
        let members: Vec<usize> = if e.guests == "all" {
            (0..guests).collect()
        } else {
            groups
                .get(&e.guests)
                .cloned()
                .ok_or_else(|| format!("event at {} s names unknown guests '{}'", e.at_s, e.guests))?
        };
        if !(e.at_s >= 0.0 && e.stagger_s >= 0.0) {
            return Err(format!("event at {} s: times must not be negative", e.at_s));
        }
        for g in members {
            let jitter = if e.stagger_s > 0.0 { rng.random_range(0..ns(e.stagger_s).max(1)) } else { 0 };
            ops.push(TimedOp { at_ns: ns(e.at_s) + jitter, guest: g, action: e.action, measure: e.measure });
        }
    }
    ops.sort_by_key(|o| (o.at_ns, o.guest));
    Ok(ops)
}

/// `base` with the fields of `table` replaced (unknown fields are an error).
pub fn apply_overrides(base: &HostPreset, table: &toml::Table) -> Result<HostPreset, String> {
    let mut v = serde_json::to_value(base).map_err(|e| e.to_string())?;
    let obj = v.as_object_mut().expect("a preset serializes to an object");
    for (k, val) in table {
        if !obj.contains_key(k) {
            return Err(format!(
                "[host] has no parameter '{k}' (known: {})",
                obj.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        let j = serde_json::to_value(val).map_err(|e| e.to_string())?;
        let j = match (&obj[k], j) {
            (serde_json::Value::Number(n), serde_json::Value::Number(m)) if n.is_f64() => {
                serde_json::Value::from(m.as_f64().unwrap_or_default())
            }
            (_, j) => j,
        };
        obj.insert(k.clone(), j);
    }
    let p: HostPreset = serde_json::from_value(v).map_err(|e| format!("[host]: {e}"))?;
    p.validate()?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_validate() {
        for n in ["destroy-1tb", "reboot-storm", "boot-scrub", "claims-reboot", "small"] {
            Scenario::builtin(n, None, 1).unwrap().validate().unwrap();
        }
        assert!(Scenario::builtin("nope", None, 1).is_err());
    }

    #[test]
    fn toml_round_trip() {
        let text = r#"
name = "mine"
[host]
preset = "tiny"
cpus_per_node = 2
node_zero_gbps = 5
[run]
builders = 2
[[guests]]
name = "web"
count = 3
mib = 64
node = "spread"
claim = "node"
[[events]]
at_s = 0
action = "create"
guests = "web"
[[events]]
at_s = 1
action = "reboot"
guests = "all"
stagger_s = 0.5
"#;
        let s = from_toml(text, 7).unwrap();
        assert_eq!(s.host.cpus_per_node, 2);
        assert_eq!(s.host.node_zero_gbps, 5.0);
        assert_eq!(s.guests.len(), 3);
        assert_eq!(s.guests[2].node, Some(0));
        assert_eq!(s.ops.len(), 6);
        assert_eq!(s, from_toml(text, 7).unwrap());
        assert!(from_toml("name = \"x\"\n[host]\nbogus = 1\n", 1).unwrap_err().contains("bogus"));
    }
}
