//! Reading the trace files of `../shared/traces`: format detection by header, then one
//! parser per format turning rows into guests in trace units (seconds, bytes).
//!
//! Columns are found by name in the header, so extra or reordered columns are fine. A line
//! equal to the header is skipped wherever it appears (`azure_v1_filtered_vmtables_50.csv`
//! repeats it mid-file), and so are blank lines. Any other line that cannot be read is an
//! error naming the file, the line (1-based, the header is line 1) and the column.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::bins::{bin_lifetime, SAMPLE_S};
use crate::error::WorkloadError;

/// The trace formats [`crate::Workload::from_trace`] reads, told apart by their header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TraceFormat {
    /// `azure_v1/decoded_v1_{dev,test}.csv`: Azure V1 VMs with flavour memory, arrival in a
    /// 300 s bin, lifetime in a bin (`arrival_bin_end_s,batch_idx,...,dur_bin_hi_s`).
    AzureV1Decoded,
    /// `azure_packing2020_machine16_first5000.csv`: times in days, memory as a fraction of a
    /// machine of type 16 (assumed 562.5 GiB), its VM type table beside it.
    AzurePacking2020,
    /// `azure_v1_filtered_vmtables_50.csv`: raw Azure V1 `vmtable` rows, seconds and GiB.
    AzureV1Vmtable,
    /// `alibaba_gpu2023_openb_pod_list_default.csv`: Kubernetes pods, seconds and MiB.
    AlibabaGpu2023,
}

impl TraceFormat {
    /// The format a header line names, if any.
    ///
    /// ```
    /// use scrubheap_workload::TraceFormat;
    /// let h = "vmId,vmTypeId,priority,starttime,endtime,core,memory,machineId";
    /// assert_eq!(TraceFormat::detect(h), Some(TraceFormat::AzurePacking2020));
    /// assert_eq!(TraceFormat::detect("vmTypeId,core,memory"), None); // a type table, not VMs
    /// ```
    pub fn detect(header: &str) -> Option<TraceFormat> {
        match detect(header) {
            Kind::Workload(f) => Some(f),
            _ => None,
        }
    }

    /// The dataset and its licence, for the [`crate::Workload::source`] line.
    pub fn citation(self) -> &'static str {
        match self {
            TraceFormat::AzureV1Decoded => {
                "Azure Public Dataset V1, CC BY 4.0; flavours and lifetime bins by huaweicloud/trace_generation_rnn"
            }
            TraceFormat::AzurePacking2020 => {
                "Azure Packing Trace 2020, CC BY 4.0; memory as a fraction of a type-16 machine, assumed 562.5 GiB"
            }
            TraceFormat::AzureV1Vmtable => "Azure Public Dataset V1 vmtable, CC BY 4.0",
            TraceFormat::AlibabaGpu2023 => {
                "Alibaba clusterdata GPU trace 2023 (Weng et al., ATC 2023), licence in alibaba_gpu2023_README.md"
            }
        }
    }
}

impl fmt::Display for TraceFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TraceFormat::AzureV1Decoded => "Azure V1 decoded",
            TraceFormat::AzurePacking2020 => "Azure Packing 2020",
            TraceFormat::AzureV1Vmtable => "Azure V1 vmtable",
            TraceFormat::AlibabaGpu2023 => "Alibaba GPU 2023",
        })
    }
}

/// Bytes per GiB: the Azure traces' `GB` sizes are binary (0.75 GB is 768 MiB).
pub(crate) const GIB: f64 = (1u64 << 30) as f64;
/// Bytes per MiB.
pub(crate) const MIB: f64 = (1u64 << 20) as f64;
/// Seconds per day (the packing trace's time unit).
const DAY_S: f64 = 86_400.0;
/// Memory of a machine of type 16 in the Azure Packing Trace 2020, the unit of its `memory`
/// column. The trace does not say it; 562.5 GiB is the size for which every fraction in
/// `azure_packing2020_vmtype_machine16.csv` is an Azure VM size (1/750 is 0.75 GiB, 7/2250 is
/// 1.75 GiB, 0.11378 is 64 GiB, 0.45511 is 256 GiB, ...).
pub(crate) const PACKING_MACHINE16_GIB: f64 = 562.5;
/// The packing trace's VM type table, looked for next to the VM file.
pub(crate) const PACKING_VMTYPE_FILE: &str = "azure_packing2020_vmtype_machine16.csv";

/// One guest as the trace gives it, in trace units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawGuest {
    /// Trace seconds.
    pub arrival_s: f64,
    /// Trace seconds; finite for every format (see the crate's rules).
    pub lifetime_s: f64,
    /// Trace bytes.
    pub bytes: f64,
    /// The trace's tenant, when it has one (dense from 0 in file order).
    pub tenant: Option<u64>,
}

/// A trace file read with the crate's rules, before any scaling.
#[derive(Debug, Clone)]
pub struct Trace {
    /// The format its header named.
    pub format: TraceFormat,
    /// Sorted by arrival, ties in file order.
    pub guests: Vec<RawGuest>,
    /// Trace time at which the trace begins.
    pub start_s: f64,
    /// Trace time at which the trace ends (guests alive then live to here).
    pub end_s: f64,
    /// Rows read but not turned into guests, and why.
    pub skipped: Option<(usize, &'static str)>,
}

/// Reads a trace file of any known format with the crate's one set of rules, guests sorted
/// by arrival (ties in file order). `seed` places Azure V1 decoded VMs within their arrival
/// and lifetime bins; the other formats have exact times and do not use it.
///
/// Errors name the file, and for a bad row the line and column, so the user can fix it.
pub fn read_trace(path: &Path, seed: u64) -> Result<Trace, WorkloadError> {
    let text = read(path)?;
    let mut trace = parse(path, &text, seed)?;
    drop(text);
    trace.guests.sort_by(|a, b| a.arrival_s.total_cmp(&b.arrival_s));
    debug_assert!(!trace.guests.is_empty(), "parse refuses a trace without guests");
    debug_assert!(trace.guests.iter().all(|g| g.lifetime_s.is_finite() && g.lifetime_s >= 0.0));
    Ok(trace)
}

/// Reads a whole trace file, mapping "no such file" to its own error.
pub(crate) fn read(path: &Path) -> Result<String, WorkloadError> {
    std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            WorkloadError::NotFound { path: path.to_path_buf() }
        } else {
            WorkloadError::Io { path: path.to_path_buf(), source }
        }
    })
}

/// What a header line says a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Workload(TraceFormat),
    /// A companion table: (what it is, which file to replay instead).
    NotAWorkload(&'static str, &'static str),
    Unknown,
}

fn header_columns(header: &str) -> Vec<&str> {
    header.trim_start_matches('\u{feff}').trim_end().split(',').map(str::trim).collect()
}

/// Identifies a header line.
pub(crate) fn detect(header: &str) -> Kind {
    let cols = header_columns(header);
    let has = |names: &[&str]| names.iter().all(|n| cols.contains(n));
    if has(&["arrival_bin_end_s", "mem_gb", "censored", "dur_bin_lo_s", "dur_bin_hi_s"]) {
        Kind::Workload(TraceFormat::AzureV1Decoded)
    } else if has(&["vmTypeId", "starttime", "endtime"]) {
        Kind::Workload(TraceFormat::AzurePacking2020)
    } else if has(&["vmcreated", "vmdeleted", "vmmemory"]) {
        Kind::Workload(TraceFormat::AzureV1Vmtable)
    } else if has(&["creation_time", "deletion_time", "memory_mib"]) {
        Kind::Workload(TraceFormat::AlibabaGpu2023)
    } else if has(&["vmTypeId", "memory"]) {
        Kind::NotAWorkload(
            "the Azure Packing 2020 VM type table",
            "azure_packing2020_machine16_first5000.csv, whose VMs it describes",
        )
    } else if has(&["sn", "memory_mib", "gpu"]) {
        Kind::NotAWorkload(
            "the Alibaba GPU 2023 node list (machines, not pods)",
            "alibaba_gpu2023_openb_pod_list_default.csv",
        )
    } else {
        Kind::Unknown
    }
}

/// A CSV file with a header, columns found by name.
struct Csv<'a> {
    path: &'a Path,
    text: &'a str,
    header: &'a str,
    cols: Vec<&'a str>,
}

/// One data line of a [`Csv`].
struct Row<'r, 'a> {
    csv: &'r Csv<'a>,
    line: usize,
    fields: &'r [&'a str],
}

impl<'a> Csv<'a> {
    fn new(path: &'a Path, text: &'a str) -> Result<Csv<'a>, WorkloadError> {
        let header = text.lines().next().map(|l| l.trim_start_matches('\u{feff}').trim_end()).unwrap_or("");
        if header.trim().is_empty() {
            return Err(WorkloadError::Empty { path: path.to_path_buf(), why: "the file is empty".into() });
        }
        Ok(Csv { path, text, header, cols: header_columns(header) })
    }

    fn col(&self, name: &str) -> Option<usize> {
        self.cols.iter().position(|c| *c == name)
    }

    /// The index of a column [`detect`] required.
    fn need(&self, name: &str) -> usize {
        self.col(name).unwrap_or_else(|| unreachable!("detect() requires column {name}"))
    }

    /// Calls `f` on every data line.
    fn rows(&self, mut f: impl FnMut(&Row<'_, 'a>) -> Result<(), WorkloadError>) -> Result<usize, WorkloadError> {
        let mut fields: Vec<&'a str> = Vec::with_capacity(self.cols.len());
        let mut n = 0;
        for (i, line) in self.text.lines().enumerate().skip(1) {
            let line = line.trim_end();
            if line.trim().is_empty() || line == self.header {
                continue;
            }
            fields.clear();
            fields.extend(line.split(','));
            f(&Row { csv: self, line: i + 1, fields: &fields })?;
            n += 1;
        }
        Ok(n)
    }
}

impl<'a> Row<'_, 'a> {
    fn error(&self, col: usize, problem: String) -> WorkloadError {
        let name = self.csv.cols.get(col).copied().unwrap_or("?");
        let column = if name.is_empty() { format!("#{}", col + 1) } else { name.to_string() };
        WorkloadError::Malformed { path: self.csv.path.to_path_buf(), line: self.line, column, problem }
    }

    fn str(&self, col: usize) -> Result<&'a str, WorkloadError> {
        match self.fields.get(col) {
            Some(s) => Ok(s.trim()),
            None => Err(self.error(
                col,
                format!("missing: the line has {} fields, the header {}", self.fields.len(), self.csv.cols.len()),
            )),
        }
    }

    /// A finite number, or `None` when the field is empty.
    fn opt_num(&self, col: usize) -> Result<Option<f64>, WorkloadError> {
        let s = self.str(col)?;
        if s.is_empty() {
            return Ok(None);
        }
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Some(v)),
            _ => Err(self.error(col, format!("expected a number, found `{s}`"))),
        }
    }

    /// Refuses an end time `end` (read from `col`; `None`: alive at the trace's end)
    /// before its row's start `start` (the time at which the guest `starts`, in the
    /// message): every format's one rule that a guest cannot leave before it arrives.
    fn end_not_before(&self, col: usize, end: Option<f64>, start: f64, starts: &str) -> Result<(), WorkloadError> {
        match end {
            Some(e) if e < start => Err(self.error(col, format!("ends ({e}) before it {starts} ({start})"))),
            _ => Ok(()),
        }
    }

    fn num(&self, col: usize) -> Result<f64, WorkloadError> {
        self.opt_num(col)?.ok_or_else(|| self.error(col, "expected a number, found nothing".into()))
    }

    fn non_negative(&self, col: usize) -> Result<f64, WorkloadError> {
        let v = self.num(col)?;
        if v < 0.0 {
            return Err(self.error(col, format!("expected a size of at least 0, found {v}")));
        }
        Ok(v)
    }
}

/// Reads a trace file of any known format. `seed` places Azure V1 decoded VMs within their
/// arrival and lifetime bins.
pub(crate) fn parse(path: &Path, text: &str, seed: u64) -> Result<Trace, WorkloadError> {
    let csv = Csv::new(path, text)?;
    let trace = match detect(csv.header) {
        Kind::Workload(TraceFormat::AzureV1Decoded) => decoded(&csv, seed)?,
        Kind::Workload(TraceFormat::AzurePacking2020) => packing(&csv)?,
        Kind::Workload(TraceFormat::AzureV1Vmtable) => vmtable(&csv)?,
        Kind::Workload(TraceFormat::AlibabaGpu2023) => alibaba(&csv)?,
        Kind::NotAWorkload(what, instead) => {
            return Err(WorkloadError::NotAWorkload { path: path.to_path_buf(), what, instead })
        }
        Kind::Unknown => {
            let mut header = csv.header.to_string();
            if header.len() > 120 {
                let cut = (0..=120).rev().find(|&i| header.is_char_boundary(i)).unwrap_or(0);
                header.truncate(cut);
                header.push_str("...");
            }
            return Err(WorkloadError::UnknownFormat { path: path.to_path_buf(), header });
        }
    };
    if trace.guests.is_empty() {
        let why = match trace.skipped {
            Some((n, why)) if n > 0 => format!("all {n} rows skipped: {why}"),
            _ => "the file has a header and no data rows".into(),
        };
        return Err(WorkloadError::Empty { path: path.to_path_buf(), why });
    }
    Ok(trace)
}

/// One row of an Azure V1 decoded file.
pub(crate) struct DecodedRow {
    pub bin_end_s: f64,
    pub batch_idx: Option<u64>,
    pub mem_gb: f64,
    pub censored: bool,
    pub lo_s: f64,
    pub hi_s: f64,
}

/// Calls `f` on every row of an Azure V1 decoded file (errors if it is another format).
pub(crate) fn for_each_decoded_row(
    path: &Path,
    text: &str,
    mut f: impl FnMut(&DecodedRow),
) -> Result<usize, WorkloadError> {
    let csv = Csv::new(path, text)?;
    if detect(csv.header) != Kind::Workload(TraceFormat::AzureV1Decoded) {
        let header = csv.header.chars().take(120).collect();
        return Err(WorkloadError::UnknownFormat { path: path.to_path_buf(), header });
    }
    decoded_rows(&csv, |r| {
        f(r);
        Ok(())
    })
}

fn decoded_rows(
    csv: &Csv<'_>,
    mut f: impl FnMut(&DecodedRow) -> Result<(), WorkloadError>,
) -> Result<usize, WorkloadError> {
    let (c_end, c_mem, c_cens) = (csv.need("arrival_bin_end_s"), csv.need("mem_gb"), csv.need("censored"));
    let (c_lo, c_hi, c_batch) = (csv.need("dur_bin_lo_s"), csv.need("dur_bin_hi_s"), csv.col("batch_idx"));
    csv.rows(|row| {
        let censored = match row.str(c_cens)? {
            "0" => false,
            "1" => true,
            s => return Err(row.error(c_cens, format!("expected 0 or 1, found `{s}`"))),
        };
        let batch_idx = match c_batch {
            Some(c) => {
                let s = row.str(c)?;
                Some(s.parse::<u64>().map_err(|_| row.error(c, format!("expected a batch number, found `{s}`")))?)
            }
            None => None,
        };
        let (lo_s, hi_s) = (row.non_negative(c_lo)?, row.non_negative(c_hi)?);
        if hi_s < lo_s {
            return Err(row.error(c_hi, format!("bin upper edge {hi_s} is below its lower edge {lo_s}")));
        }
        f(&DecodedRow { bin_end_s: row.num(c_end)?, batch_idx, mem_gb: row.non_negative(c_mem)?, censored, lo_s, hi_s })
    })
}

/// Azure V1 decoded: arrival uniform in `[end - 300, end)` of its bin, lifetime from its
/// duration bin ([`bin_lifetime`]), tenant = (bin, batch). The trace ends 300 s after the
/// last bin's end: the censoring time of the file (2,100,000 s for dev, 2,591,400 s for test).
fn decoded(csv: &Csv<'_>, seed: u64) -> Result<Trace, WorkloadError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut guests = Vec::new();
    let mut tenants: HashMap<(u64, u64), u64> = HashMap::new();
    let (mut first, mut last) = (f64::INFINITY, f64::NEG_INFINITY);
    decoded_rows(csv, |r| {
        first = first.min(r.bin_end_s);
        last = last.max(r.bin_end_s);
        let arrival_s = r.bin_end_s - SAMPLE_S * (1.0 - rand::Rng::random::<f64>(&mut rng));
        let lifetime_s = bin_lifetime(r.lo_s, r.hi_s, r.censored, &mut rng);
        let tenant = r.batch_idx.map(|b| {
            let next = tenants.len() as u64;
            *tenants.entry((r.bin_end_s.to_bits(), b)).or_insert(next)
        });
        guests.push(RawGuest { arrival_s, lifetime_s, bytes: r.mem_gb * GIB, tenant });
        Ok(())
    })?;
    Ok(Trace {
        format: TraceFormat::AzureV1Decoded,
        guests,
        start_s: first - SAMPLE_S,
        end_s: last + SAMPLE_S,
        skipped: None,
    })
}

/// Fills in lifetimes of guests alive at the trace end (`None`) and finds the trace window.
fn close(format: TraceFormat, rows: Vec<(f64, Option<f64>, f64, Option<u64>)>, latest: f64) -> Trace {
    let start_s = rows.iter().map(|r| r.0).fold(f64::INFINITY, f64::min);
    let end_s = rows.iter().map(|r| r.1.unwrap_or(r.0)).fold(latest, f64::max);
    let guests = rows
        .into_iter()
        .map(|(arrival_s, end, bytes, tenant)| RawGuest {
            arrival_s,
            lifetime_s: end.unwrap_or(end_s) - arrival_s,
            bytes,
            tenant,
        })
        .collect();
    Trace { format, guests, start_s, end_s, skipped: None }
}

/// Azure Packing 2020: days to seconds, `memory` as a fraction of a type-16 machine
/// ([`PACKING_MACHINE16_GIB`]); an empty `memory` (or no such column) is looked up by
/// `vmTypeId` in the VM type table next to the file. An empty `endtime` means alive at
/// the trace end, which is the latest start or end time in the file.
fn packing(csv: &Csv<'_>) -> Result<Trace, WorkloadError> {
    let (c_start, c_end, c_type) = (csv.need("starttime"), csv.need("endtime"), csv.need("vmTypeId"));
    let (c_mem, c_tenant) = (csv.col("memory"), csv.col("tenantId"));
    let mut types: Option<HashMap<u64, f64>> = None;
    let mut tenants: HashMap<&str, u64> = HashMap::new();
    let mut rows = Vec::new();
    csv.rows(|row| {
        let start = row.num(c_start)?;
        let end = row.opt_num(c_end)?;
        row.end_not_before(c_end, end, start, "starts")?;
        let mem = match c_mem {
            Some(c) => row.opt_num(c)?,
            None => None,
        };
        let frac = match mem {
            Some(m) if m >= 0.0 => m,
            Some(m) => return Err(row.error(c_mem.unwrap_or(0), format!("expected a size of at least 0, found {m}"))),
            None => {
                let ty = row.str(c_type)?;
                let id =
                    ty.parse::<u64>().map_err(|_| row.error(c_type, format!("expected a type id, found `{ty}`")))?;
                if types.is_none() {
                    types = Some(vmtypes(csv.path, row, c_type)?);
                }
                match types.as_ref().and_then(|t| t.get(&id)) {
                    Some(&m) => m,
                    None => {
                        return Err(row.error(
                            c_type,
                            format!("no memory in this row and type {id} is not in {PACKING_VMTYPE_FILE}"),
                        ))
                    }
                }
            }
        };
        let tenant = match c_tenant {
            Some(c) => {
                let t = row.str(c)?;
                let next = tenants.len() as u64;
                Some(*tenants.entry(t).or_insert(next))
            }
            None => None,
        };
        rows.push((start * DAY_S, end.map(|e| e * DAY_S), frac * PACKING_MACHINE16_GIB * GIB, tenant));
        Ok(())
    })?;
    Ok(close(TraceFormat::AzurePacking2020, rows, f64::NEG_INFINITY))
}

/// The packing trace's VM type table (`vmTypeId,core,memory`), next to `trace`.
fn vmtypes(trace: &Path, row: &Row<'_, '_>, c_type: usize) -> Result<HashMap<u64, f64>, WorkloadError> {
    let path: PathBuf = trace.parent().unwrap_or(Path::new(".")).join(PACKING_VMTYPE_FILE);
    if !path.is_file() {
        return Err(row.error(
            c_type,
            format!("no memory in this row, and the VM type table {} to look it up in is missing", path.display()),
        ));
    }
    let text = read(&path)?;
    let csv = Csv::new(&path, &text)?;
    let (Some(c_id), Some(c_mem)) = (csv.col("vmTypeId"), csv.col("memory")) else {
        return Err(WorkloadError::UnknownFormat {
            path: path.clone(),
            header: csv.header.chars().take(120).collect(),
        });
    };
    let mut map = HashMap::new();
    csv.rows(|r| {
        let id = r.str(c_id)?;
        let id = id.parse::<u64>().map_err(|_| r.error(c_id, format!("expected a type id, found `{id}`")))?;
        map.insert(id, r.non_negative(c_mem)?);
        Ok(())
    })?;
    Ok(map)
}

/// Raw Azure V1 `vmtable` rows: seconds, `vmmemory` in GiB; VMs alive at the end of the
/// 30 days carry the last sample time as `vmdeleted`.
fn vmtable(csv: &Csv<'_>) -> Result<Trace, WorkloadError> {
    let (c_created, c_deleted, c_mem) = (csv.need("vmcreated"), csv.need("vmdeleted"), csv.need("vmmemory"));
    let mut rows = Vec::new();
    csv.rows(|row| {
        let created = row.num(c_created)?;
        let deleted = row.opt_num(c_deleted)?;
        row.end_not_before(c_deleted, deleted, created, "is created")?;
        rows.push((created, deleted, row.non_negative(c_mem)? * GIB, None));
        Ok(())
    })?;
    Ok(close(TraceFormat::AzureV1Vmtable, rows, f64::NEG_INFINITY))
}

/// Alibaba GPU 2023 pods: a pod holds its `memory_mib` from `scheduled_time` (when it was
/// placed on a node; `creation_time` if the file has no such column) to `deletion_time`
/// (the snapshot time for pods still running). Pods never scheduled (empty
/// `scheduled_time`, phase Pending) never held memory and are skipped.
fn alibaba(csv: &Csv<'_>) -> Result<Trace, WorkloadError> {
    let (c_created, c_deleted, c_mem) = (csv.need("creation_time"), csv.need("deletion_time"), csv.need("memory_mib"));
    let c_sched = csv.col("scheduled_time");
    let mut rows = Vec::new();
    let mut latest = f64::NEG_INFINITY;
    let mut unscheduled = 0;
    csv.rows(|row| {
        let created = row.num(c_created)?;
        let deleted = row.opt_num(c_deleted)?;
        let mem = row.non_negative(c_mem)? * MIB;
        let placed = match c_sched {
            Some(c) => row.opt_num(c)?,
            None => Some(created),
        };
        latest = latest.max(created).max(deleted.unwrap_or(created));
        let Some(placed) = placed else {
            unscheduled += 1;
            return Ok(());
        };
        latest = latest.max(placed);
        row.end_not_before(c_deleted, deleted, placed, "is scheduled")?;
        rows.push((placed, deleted, mem, None));
        Ok(())
    })?;
    let mut t = close(TraceFormat::AlibabaGpu2023, rows, latest);
    t.skipped = Some((unscheduled, "pods never scheduled (empty scheduled_time) held no memory"));
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_recognised() {
        use TraceFormat::*;
        let w = |f| Kind::Workload(f);
        assert_eq!(
            detect("arrival_bin_end_s,batch_idx,vcpus,mem_gb,dur_bin,censored,dur_bin_lo_s,dur_bin_hi_s"),
            w(AzureV1Decoded)
        );
        assert_eq!(detect("vmId,vmTypeId,priority,starttime,endtime,core,memory,machineId\r"), w(AzurePacking2020));
        assert_eq!(detect("vmId,tenantId,vmTypeId,priority,starttime,endtime"), w(AzurePacking2020));
        assert_eq!(detect(",vmid,vmcreated,vmdeleted,maxcpu,avgcpu,p95maxcpu,vmcorecount,vmmemory"), w(AzureV1Vmtable));
        assert_eq!(
            detect("\u{feff}name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time"),
            w(AlibabaGpu2023)
        );
        assert!(matches!(detect("vmTypeId,core,memory"), Kind::NotAWorkload(..)));
        assert!(matches!(detect("sn,cpu_milli,memory_mib,gpu,model"), Kind::NotAWorkload(..)));
        assert_eq!(detect("a,b,c"), Kind::Unknown);
        assert_eq!(detect(""), Kind::Unknown);
    }

    #[test]
    fn packing_alive_at_end_lives_to_the_last_time_in_the_file() {
        let text = "vmId,vmTypeId,priority,starttime,endtime,core,memory,machineId\n\
                    1,0,0,0.5,1.0,0.1,0.1,16\n\
                    2,0,0,1.0,,0.1,0.2,16\n\
                    3,0,0,1.5,3.0,0.1,0.1,16\n";
        let t = parse(Path::new("p.csv"), text, 0).unwrap();
        assert_eq!(t.start_s, 0.5 * DAY_S);
        assert_eq!(t.end_s, 3.0 * DAY_S);
        assert_eq!(t.guests[1].lifetime_s, 2.0 * DAY_S);
        assert_eq!(t.guests[1].bytes, 0.2 * PACKING_MACHINE16_GIB * GIB);
    }

    #[test]
    fn a_repeated_header_and_blank_lines_are_skipped() {
        let h = ",vmid,vmcreated,vmdeleted,maxcpu,avgcpu,p95maxcpu,vmcorecount,vmmemory";
        let text = format!("{h}\n1,a,0,600,1,1,1,1,1.75\n\n{h}\r\n2,b,300,900,1,1,1,1,0.75\r\n");
        let t = parse(Path::new("v.csv"), &text, 0).unwrap();
        assert_eq!(t.guests.len(), 2);
        assert_eq!(t.guests[1].arrival_s, 300.0);
        assert_eq!(t.guests[1].lifetime_s, 600.0);
        assert_eq!(t.guests[1].bytes, 0.75 * GIB);
    }

    #[test]
    fn unscheduled_pods_are_skipped() {
        let text = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n\
                    p0,1,1024,1,1000,,LS,Running,0,100,10\n\
                    p1,1,1024,1,1000,,BE,Pending,20,50,\n";
        let t = parse(Path::new("a.csv"), text, 0).unwrap();
        assert_eq!(t.guests, vec![RawGuest { arrival_s: 10.0, lifetime_s: 90.0, bytes: 1024.0 * MIB, tenant: None }]);
        assert_eq!(t.skipped.map(|s| s.0), Some(1));
        let only_pending = "name,memory_mib,creation_time,deletion_time,scheduled_time\np1,1,20,50,\n";
        let e = parse(Path::new("a.csv"), only_pending, 0).unwrap_err();
        assert!(matches!(e, WorkloadError::Empty { .. }), "{e}");
    }

    #[test]
    fn decoded_rows_stay_in_their_bins_and_batches_are_tenants() {
        let text = "arrival_bin_end_s,batch_idx,vcpus,mem_gb,dur_bin,censored,dur_bin_lo_s,dur_bin_hi_s\n\
                    600,0,1,0.75,13,0,3900,7200\n\
                    600,0,1,0.75,13,1,3900,7200\n\
                    600,1,1,1.75,0,0,0,0\n\
                    900,0,1,1.75,1,0,300,300\n";
        let t = parse(Path::new("d.csv"), text, 3).unwrap();
        assert_eq!((t.start_s, t.end_s), (300.0, 1200.0));
        let g = &t.guests;
        assert!(g[..3].iter().all(|g| (300.0..600.0).contains(&g.arrival_s)));
        assert!((600.0..900.0).contains(&g[3].arrival_s));
        assert!((3900.0..=7200.0).contains(&g[0].lifetime_s));
        assert_eq!(g[1].lifetime_s, 7200.0);
        assert!((0.0..=300.0).contains(&g[2].lifetime_s));
        assert_eq!(g[3].lifetime_s, 300.0);
        let tenants: Vec<_> = g.iter().map(|g| g.tenant.unwrap()).collect();
        assert_eq!(tenants, [0, 0, 1, 2]);
    }
}
