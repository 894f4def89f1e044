//! The simulator's built-in scenarios as one enum: the CLI parses a name into a
//! [`Builtin`] and asks it what kind of run it is, instead of matching strings itself.

use crate::hotremove::{HotRemove, HotRemoveReport};
use crate::pod::{PodBalloonParams, PodBalloonReport};
use crate::preset::HostPreset;
use std::fmt;
use std::str::FromStr;

/// A built-in scenario.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Builtin {
    /// One 1 TiB guest built and destroyed (policies compared).
    Destroy1tb,
    /// Every guest of a full host reboots within a second (policies compared).
    RebootStorm,
    /// All memory dirty at boot while guests are built (policies compared).
    BootScrub,
    /// The 2026 watchdog reports: a wave of reboots under node claims (policies compared).
    ClaimsReboot,
    /// A small host, for tests and quick looks (policies compared).
    Small,
    /// Guests from an Azure trace file (policies compared).
    Trace,
    /// Pins in the Movable zone against migrated pins (its own two ways, no policies).
    HotRemove,
    /// Populate-on-demand balloon reclaim modes (pages counted, no policies, no time).
    PodBalloon,
}

/// What a built-in scenario compares, and so how it is run.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Timed events on the engine, one run per policy ([`crate::simulate`]).
    Policies,
    /// [`crate::hotremove::run`].
    HotRemove,
    /// [`crate::pod::run`].
    PodBalloon,
}

/// The report of a built-in scenario that does not compare policies.
#[derive(Clone, Debug)]
pub enum OtherReport {
    /// Of `hot-remove`.
    HotRemove(Box<HotRemoveReport>),
    /// Of `pod-balloon`.
    PodBalloon(PodBalloonReport),
}

impl Builtin {
    /// Every built-in scenario, in the order the CLI lists them.
    pub const ALL: [Builtin; 8] = [
        Builtin::Destroy1tb,
        Builtin::RebootStorm,
        Builtin::BootScrub,
        Builtin::ClaimsReboot,
        Builtin::HotRemove,
        Builtin::Trace,
        Builtin::Small,
        Builtin::PodBalloon,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Destroy1tb => "destroy-1tb",
            Builtin::RebootStorm => "reboot-storm",
            Builtin::BootScrub => "boot-scrub",
            Builtin::ClaimsReboot => "claims-reboot",
            Builtin::Small => "small",
            Builtin::Trace => "trace",
            Builtin::HotRemove => "hot-remove",
            Builtin::PodBalloon => "pod-balloon",
        }
    }

    /// What it compares.
    pub fn kind(self) -> Kind {
        match self {
            Builtin::HotRemove => Kind::HotRemove,
            Builtin::PodBalloon => Kind::PodBalloon,
            _ => Kind::Policies,
        }
    }

    /// Every name, comma-separated (for messages).
    pub fn names() -> String {
        Builtin::ALL.iter().map(|b| b.name()).collect::<Vec<_>>().join(", ")
    }

    /// Runs a scenario of a kind other than [`Kind::Policies`] on `host` (or its own
    /// default host) with `seed`.
    pub fn run_other(self, host: Option<HostPreset>, seed: u64) -> Result<OtherReport, String> {
        match self.kind() {
            Kind::HotRemove => {
                crate::hotremove::run(&HotRemove::builtin(host), seed).map(|r| OtherReport::HotRemove(Box::new(r)))
            }
            Kind::PodBalloon => {
                let host = host.unwrap_or_else(HostPreset::tiny);
                crate::pod::run(&host, seed, &PodBalloonParams::default()).map(OtherReport::PodBalloon)
            }
            Kind::Policies => Err(format!("{self} compares policies: run it with scrubheap_sim::simulate")),
        }
    }
}

impl fmt::Display for Builtin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Builtin {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Builtin::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| format!("unknown scenario '{s}': use one of {}, or a TOML file", Builtin::names()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for b in Builtin::ALL {
            assert_eq!(b.name().parse::<Builtin>(), Ok(b));
        }
        assert!("nope".parse::<Builtin>().unwrap_err().contains("claims-reboot"));
        assert_eq!(Builtin::HotRemove.kind(), Kind::HotRemove);
        assert!(Builtin::Small.run_other(None, 1).is_err());
    }
}
