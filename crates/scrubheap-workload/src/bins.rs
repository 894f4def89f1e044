//! The rules for one row of an Azure V1 decoded file, used both by the replay of
//! `decoded_v1_*.csv` and by the default churn's distributions: where in its 300 s bin a VM
//! arrives and how long it lives given its duration bin and `censored` flag.

use rand::Rng;

/// Seconds between the samples of Azure V1's `vmtable`: lifetimes are known to this resolution.
pub(crate) const SAMPLE_S: f64 = 300.0;

/// A VM's lifetime from its Azure V1 duration bin: uniform in `[lo, hi]` when it ended
/// within the trace, the bin's upper edge `hi` when it was still running at the trace end
/// (censored). A bin `[0, 0]` means the VM was seen in one 300 s sample only, so it lived
/// less than one sample: its range is widened to `[0, 300]` rather than giving it no life.
pub(crate) fn bin_lifetime<R: Rng>(lo: f64, hi: f64, censored: bool, rng: &mut R) -> f64 {
    let hi = if hi <= 0.0 { SAMPLE_S } else { hi };
    if censored || hi <= lo {
        hi
    } else {
        lo + (hi - lo) * rng.random::<f64>()
    }
}

/// The mean of [`bin_lifetime`] over one bin.
pub(crate) fn bin_mean(lo: f64, hi: f64, censored: bool) -> f64 {
    let hi = if hi <= 0.0 { SAMPLE_S } else { hi };
    if censored || hi <= lo {
        hi
    } else {
        (lo + hi) / 2.0
    }
}
