//! The Azure V1 memory-size and lifetime distributions behind the default churn, and the
//! lifetime rule shared with the replay of `decoded_v1_*.csv`.
//!
//! The built-in table ([`Dist::builtin`]) is derived from `azure_v1/decoded_v1_dev.csv`
//! (Azure Public Dataset V1, Cortez et al., SOSP 2017, CC BY 4.0, as decoded by
//! huaweicloud/trace_generation_rnn): per-VM counts only, no rows of the trace. It was produced
//! by, from `../shared/traces/azure_v1`:
//!
//! ```text
//! # memory sizes: (mem_gb, VMs)
//! tail -n +2 decoded_v1_dev.csv | cut -d, -f4 | sort -g | uniq -c
//! # lifetime bins: (dur_bin_lo_s, dur_bin_hi_s, uncensored VMs, censored VMs)
//! tail -n +2 decoded_v1_dev.csv | awk -F, '{k=$5","$7","$8; if ($6==1) c[k]++; else u[k]++; s[k]=1}
//!     END {for (k in s) print k","u[k]+0","c[k]+0}' | sort -t, -k1,1n
//! ```
//!
//! and the same table is printed in Rust syntax by
//! `cargo test -p scrubheap-workload --lib azure_v1::tests::print_table -- --ignored --nocapture`;
//! the test `builtin_table_matches_the_trace` checks it against the file whenever the file is
//! present.

use std::path::Path;

use rand::Rng;

use crate::bins::{bin_lifetime, bin_mean, SAMPLE_S};
use crate::error::WorkloadError;
use crate::formats;

/// Memory of the Azure V1 flavours seen in `decoded_v1_dev.csv`: (MiB, VMs). The file's
/// `mem_gb` are GiB (Azure sizes are binary): 0.75 GB is 768 MiB.
const BUILTIN_MEM: [(u64, u64); 14] = [
    (768, 4108),
    (1792, 156437),
    (2048, 10),
    (3584, 48008),
    (4096, 22),
    (7168, 25700),
    (8192, 15),
    (14336, 23364),
    (16384, 8),
    (28672, 49),
    (32768, 1),
    (57344, 1427),
    (65536, 1),
    (114688, 9),
];

/// Lifetime bins of `decoded_v1_dev.csv`: (dur_bin_lo_s, dur_bin_hi_s, uncensored VMs,
/// censored VMs), in bin order (dur_bin 0 to 38).
const BUILTIN_LIFE: [(u64, u64, u64, u64); 39] = [
    (0, 0, 7029, 0),
    (300, 300, 22661, 112),
    (600, 600, 29862, 142),
    (900, 900, 28505, 254),
    (1200, 1200, 27448, 423),
    (1500, 1500, 21444, 122),
    (1800, 1800, 11749, 69),
    (2100, 2100, 7928, 61),
    (2400, 2400, 7320, 41),
    (2700, 2700, 6134, 25),
    (3000, 3000, 2869, 74),
    (3300, 3300, 2673, 90),
    (3600, 3600, 2590, 42),
    (3900, 7200, 19869, 848),
    (7500, 10800, 7856, 248),
    (11100, 14400, 5201, 318),
    (14700, 18000, 3439, 324),
    (18300, 21600, 3162, 345),
    (21900, 25200, 2960, 193),
    (25500, 28800, 2424, 359),
    (29100, 32400, 2259, 301),
    (32700, 36000, 1992, 237),
    (36300, 39600, 1822, 180),
    (39900, 43200, 2006, 199),
    (43500, 46800, 1908, 178),
    (47100, 50400, 1407, 336),
    (50700, 54000, 1363, 778),
    (54300, 57600, 1348, 371),
    (57900, 61200, 1247, 637),
    (61500, 64800, 495, 311),
    (65100, 68400, 714, 180),
    (68700, 72000, 455, 293),
    (72300, 75600, 442, 495),
    (75900, 79200, 323, 230),
    (79500, 82800, 432, 235),
    (83100, 86400, 398, 138),
    (86700, 172800, 2781, 3057),
    (173100, 259200, 315, 1603),
    (259500, 345600, 12, 468),
];

/// One lifetime bin of the distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LifeBin {
    pub lo_s: u64,
    pub hi_s: u64,
    pub uncensored: u64,
    pub censored: u64,
}

/// Marginal distributions of VM memory and lifetime (sampled independently).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dist {
    /// (MiB, VMs), ascending MiB.
    pub mem: Vec<(u64, u64)>,
    /// Ascending `lo_s`.
    pub life: Vec<LifeBin>,
}

impl Dist {
    /// The table committed above.
    pub fn builtin() -> Dist {
        Dist {
            mem: BUILTIN_MEM.to_vec(),
            life: BUILTIN_LIFE
                .iter()
                .map(|&(lo_s, hi_s, uncensored, censored)| LifeBin { lo_s, hi_s, uncensored, censored })
                .collect(),
        }
    }

    /// Counts the memory sizes and lifetime bins of a `decoded_v1_*.csv` file.
    pub fn from_file(path: &Path) -> Result<Dist, WorkloadError> {
        let text = formats::read(path)?;
        let mut mem: Vec<(u64, u64)> = Vec::new();
        let mut life: Vec<LifeBin> = Vec::new();
        formats::for_each_decoded_row(path, &text, |row| {
            let mib = (row.mem_gb * 1024.0).round() as u64;
            match mem.binary_search_by_key(&mib, |&(m, _)| m) {
                Ok(i) => mem[i].1 += 1,
                Err(i) => mem.insert(i, (mib, 1)),
            }
            let (lo_s, hi_s) = (row.lo_s as u64, row.hi_s as u64);
            let i = match life.binary_search_by_key(&(lo_s, hi_s), |b| (b.lo_s, b.hi_s)) {
                Ok(i) => i,
                Err(i) => {
                    life.insert(i, LifeBin { lo_s, hi_s, uncensored: 0, censored: 0 });
                    i
                }
            };
            if row.censored {
                life[i].censored += 1;
            } else {
                life[i].uncensored += 1;
            }
        })?;
        if mem.is_empty() {
            return Err(WorkloadError::Empty { path: path.to_path_buf(), why: "no VM rows".into() });
        }
        Ok(Dist { mem, life })
    }

    /// Largest memory size, bytes.
    pub fn max_mem_bytes(&self) -> u64 {
        self.mem.iter().map(|&(m, _)| m << 20).max().unwrap_or(0)
    }

    /// Draws one memory size, in trace bytes.
    pub fn sample_mem<R: Rng>(&self, rng: &mut R) -> f64 {
        let total: u64 = self.mem.iter().map(|&(_, n)| n).sum();
        let mut u = rng.random_range(0..total.max(1));
        for &(mib, n) in &self.mem {
            if u < n {
                return (mib << 20) as f64;
            }
            u -= n;
        }
        self.max_mem_bytes() as f64
    }

    /// Draws one lifetime, in trace seconds (see [`bin_lifetime`]).
    pub fn sample_life<R: Rng>(&self, rng: &mut R) -> f64 {
        let total: u64 = self.life.iter().map(|b| b.uncensored + b.censored).sum();
        let mut u = rng.random_range(0..total.max(1));
        for b in &self.life {
            let (lo, hi) = (b.lo_s as f64, b.hi_s as f64);
            if u < b.uncensored {
                return bin_lifetime(lo, hi, false, rng);
            }
            u -= b.uncensored;
            if u < b.censored {
                return bin_lifetime(lo, hi, true, rng);
            }
            u -= b.censored;
        }
        SAMPLE_S
    }

    /// Mean lifetime, trace seconds.
    pub fn mean_life(&self) -> f64 {
        let mut sum = 0.0;
        let mut n = 0u64;
        for b in &self.life {
            let (lo, hi) = (b.lo_s as f64, b.hi_s as f64);
            sum += b.uncensored as f64 * bin_mean(lo, hi, false) + b.censored as f64 * bin_mean(lo, hi, true);
            n += b.uncensored + b.censored;
        }
        if n == 0 {
            SAMPLE_S
        } else {
            sum / n as f64
        }
    }

    /// Longest lifetime [`Dist::sample_life`] can return, trace seconds.
    pub fn max_life(&self) -> f64 {
        self.life.iter().map(|b| (b.hi_s as f64).max(SAMPLE_S)).fold(SAMPLE_S, f64::max)
    }

    /// Mean of `size(trace bytes)` over the memory distribution.
    pub fn mean_mem_by(&self, size: impl Fn(f64) -> u64) -> f64 {
        let n: u64 = self.mem.iter().map(|&(_, n)| n).sum();
        let sum: f64 = self.mem.iter().map(|&(mib, c)| size((mib << 20) as f64) as f64 * c as f64).sum();
        sum / n.max(1) as f64
    }

    /// The table in the syntax of the constants above.
    #[cfg(test)]
    fn to_rust(&self) -> String {
        let mut s = format!("const BUILTIN_MEM: [(u64, u64); {}] = [\n", self.mem.len());
        for (m, n) in &self.mem {
            s += &format!("    ({m}, {n}),\n");
        }
        s += &format!("];\nconst BUILTIN_LIFE: [(u64, u64, u64, u64); {}] = [\n", self.life.len());
        for b in &self.life {
            s += &format!("    ({}, {}, {}, {}),\n", b.lo_s, b.hi_s, b.uncensored, b.censored);
        }
        s + "];\n"
    }
}

/// The memory and lifetime distributions, from the trace file when it can be read and the
/// built-in table otherwise; the `bool` says whether the file was used.
pub(crate) fn load(traces_dir: Option<&Path>) -> (Dist, bool) {
    if let Some(dir) = traces_dir {
        let path = dir.join(DEV_FILE);
        if path.is_file() {
            if let Ok(d) = Dist::from_file(&path) {
                return (d, true);
            }
        }
    }
    (Dist::builtin(), false)
}

/// Where the default churn's distributions come from, relative to the traces folder.
pub(crate) const DEV_FILE: &str = "azure_v1/decoded_v1_dev.csv";

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn builtin_table_matches_the_trace() {
        let Some(dir) = crate::test_support::traces_dir() else { return };
        let d = Dist::from_file(&dir.join(DEV_FILE)).unwrap();
        assert_eq!(d, Dist::builtin(), "the built-in table is stale; the trace gives:\n{}", d.to_rust());
    }

    #[test]
    #[ignore = "prints the built-in table from the trace; run with --ignored --nocapture"]
    fn print_table() {
        let dir = crate::test_support::traces_dir().expect("the traces folder");
        print!("{}", Dist::from_file(&dir.join(DEV_FILE)).unwrap().to_rust());
    }

    #[test]
    fn builtin_table_has_the_trace_totals() {
        let d = Dist::builtin();
        let vms: u64 = d.mem.iter().map(|&(_, n)| n).sum();
        let lives: u64 = d.life.iter().map(|b| b.uncensored + b.censored).sum();
        assert_eq!(vms, 259_159);
        assert_eq!(lives, vms);
        assert!(d.mem.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(d.life.windows(2).all(|w| w[0].lo_s < w[1].lo_s));
        assert_eq!(d.max_mem_bytes(), 112 << 30);
    }

    #[test]
    fn bin_lifetimes_stay_in_their_bin() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..1000 {
            let l = bin_lifetime(3900.0, 7200.0, false, &mut rng);
            assert!((3900.0..=7200.0).contains(&l));
            let z = bin_lifetime(0.0, 0.0, false, &mut rng);
            assert!((0.0..=SAMPLE_S).contains(&z));
        }
        assert_eq!(bin_lifetime(3900.0, 7200.0, true, &mut rng), 7200.0);
        assert_eq!(bin_lifetime(600.0, 600.0, false, &mut rng), 600.0);
    }

    #[test]
    fn samples_follow_the_table() {
        let d = Dist::builtin();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let n = 20_000;
        let small = (0..n).filter(|_| d.sample_mem(&mut rng) == (1792u64 << 20) as f64).count();
        // 156437 / 259159 = 0.604 of the VMs are 1.75 GiB.
        assert!((0.58..0.63).contains(&(small as f64 / n as f64)), "{small}");
        let mean = (0..n).map(|_| d.sample_life(&mut rng)).sum::<f64>() / n as f64;
        assert!((mean / d.mean_life() - 1.0).abs() < 0.1, "{mean} vs {}", d.mean_life());
    }
}
