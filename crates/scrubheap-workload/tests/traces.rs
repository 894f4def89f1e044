//! Workloads from the public traces: every file of `../shared/traces` replays, scaled as the
//! traces README asks; bad files get errors that say what to fix. Tests that need the traces
//! folder print a message and pass when it is absent (`SCRUBHEAP_TRACES` points elsewhere).

use std::path::{Path, PathBuf};

use scrubheap_workload::{TraceFormat, Workload, WorkloadError, MIN_GUEST_BYTES, PAGE_BYTES};

const HOST: u64 = 4 << 30;

// The unit tests' helper, shared rather than copied.
#[path = "../src/test_support.rs"]
mod test_support;
use test_support::traces_dir;

/// A file in a fresh temporary folder of this process.
fn temp_file(test: &str, name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("scrubheap-workload-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn check_shape(w: &Workload) {
    assert!(w.guests.windows(2).all(|g| g[0].arrival_s <= g[1].arrival_s), "sorted by arrival");
    for (i, g) in w.guests.iter().enumerate() {
        assert_eq!(g.id, i as u64);
        assert!(g.memory_bytes >= MIN_GUEST_BYTES && g.memory_bytes % PAGE_BYTES == 0, "{g:?}");
        assert!(g.arrival_s >= 0.0 && g.arrival_s <= w.duration_s && g.lifetime_s >= 0.0, "{g:?}");
    }
    assert!(w.memory_scale > 0.0 && w.time_scale > 0.0);
}

/// The five workload files of the traces README, with their formats and guest counts.
const FILES: [(&str, TraceFormat, usize); 5] = [
    ("azure_v1/decoded_v1_dev.csv", TraceFormat::AzureV1Decoded, 259_159),
    ("azure_v1/decoded_v1_test.csv", TraceFormat::AzureV1Decoded, 410_276),
    ("azure_packing2020_machine16_first5000.csv", TraceFormat::AzurePacking2020, 5_000),
    ("azure_v1_filtered_vmtables_50.csv", TraceFormat::AzureV1Vmtable, 656),
    // 897 of the 8,152 pods were never scheduled and are skipped.
    ("alibaba_gpu2023_openb_pod_list_default.csv", TraceFormat::AlibabaGpu2023, 7_255),
];

#[test]
fn every_trace_file_replays_scaled_to_the_host() {
    let Some(dir) = traces_dir() else { return };
    for (file, format, total) in FILES {
        let path = dir.join(file);
        let header = std::fs::read_to_string(&path).unwrap().lines().next().unwrap().to_string();
        assert_eq!(TraceFormat::detect(&header), Some(format), "{file}");
        let w = Workload::from_trace(&path, HOST, 25.0, 1).unwrap_or_else(|e| panic!("{e}"));
        println!("{file}: {w}");
        check_shape(&w);
        assert_eq!(w.guests.len(), 250, "{file}: a window of 10 guests per run second");
        assert!(w.source.contains(&format!("first 250 of {total} guests")), "{}", w.source);
        assert!(w.source.contains(format.citation()), "{}", w.source);
        assert!(w.source.contains(Path::new(file).file_name().unwrap().to_str().unwrap()));
        let peak = w.peak_bytes() as f64 / HOST as f64;
        assert!((0.70..=0.75).contains(&peak), "{file}: peak {peak} of the host");
        assert!(w.guests[0].arrival_s < 1.0, "the window starts at the trace start");
        assert!(w.guests.last().unwrap().arrival_s < w.duration_s);
    }
}

#[test]
fn replays_are_determined_by_the_seed() {
    let Some(dir) = traces_dir() else { return };
    let dev = dir.join("azure_v1/decoded_v1_dev.csv");
    let a = Workload::from_trace(&dev, HOST, 25.0, 5).unwrap();
    assert_eq!(a, Workload::from_trace(&dev, HOST, 25.0, 5).unwrap());
    assert_ne!(a.guests, Workload::from_trace(&dev, HOST, 25.0, 6).unwrap().guests);
    // Exact times: the seed changes nothing.
    let pods = dir.join("alibaba_gpu2023_openb_pod_list_default.csv");
    assert_eq!(
        Workload::from_trace(&pods, HOST, 25.0, 1).unwrap(),
        Workload::from_trace(&pods, HOST, 25.0, 2).unwrap()
    );
}

#[test]
fn scaling_fits_the_window_to_the_run_and_the_peak_to_three_quarters_of_the_host() {
    // Three VMs over 1000 s of trace, at most two at once: 4 + 8 GiB.
    let h = ",vmid,vmcreated,vmdeleted,maxcpu,avgcpu,p95maxcpu,vmcorecount,vmmemory";
    let text = format!("{h}\n0,a,0,600,1,1,1,1,4\n1,b,300,1000,1,1,1,1,8\n2,c,700,900,1,1,1,1,2\n");
    let path = temp_file("scaling", "vm.csv", &text);
    let w = Workload::from_trace(&path, HOST, 20.0, 0).unwrap();
    check_shape(&w);
    // Fewer guests than the window holds: the window is the whole trace, 0 to 1000 s.
    assert_eq!(w.time_scale, 20.0 / 1000.0);
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    let arrivals: Vec<f64> = w.guests.iter().map(|g| g.arrival_s).collect();
    assert!(close(arrivals[0], 0.0) && close(arrivals[1], 6.0) && close(arrivals[2], 14.0), "{arrivals:?}");
    assert!(close(w.guests[1].lifetime_s, 14.0));
    // 12 GiB peak to 3 GiB: one quarter (page rounding is exact here).
    assert!((w.memory_scale - 0.25).abs() < 1e-9, "{}", w.memory_scale);
    assert_eq!(w.peak_bytes(), 3 << 30);
    assert_eq!(w.guests[2].memory_bytes, 512 << 20);
    assert_eq!(w.guests.iter().map(|g| g.tenant).collect::<Vec<_>>(), [0, 1, 2]);

    // A window of 2 guests (0.2 s at 10 guests/s) ends at the third arrival, 700 s.
    let w = Workload::from_trace(&path, HOST, 0.2, 0).unwrap();
    assert_eq!(w.guests.len(), 2);
    assert_eq!(w.time_scale, 0.2 / 700.0);

    // Tiny guests are rounded up to 4 MiB, and the peak stays under 75% of the host.
    let small = format!("{h}\n0,a,0,600,1,1,1,1,0.001\n1,b,0,600,1,1,1,1,100\n");
    let w = Workload::from_trace(&temp_file("scaling", "small.csv", &small), 1 << 30, 25.0, 0).unwrap();
    assert_eq!(w.guests[0].memory_bytes, MIN_GUEST_BYTES);
    assert!(w.peak_bytes() <= 3 << 28 && w.peak_bytes() > (3 << 28) - 2 * PAGE_BYTES, "{}", w.peak_bytes());
}

#[test]
fn packing_rows_without_memory_use_the_vm_type_table_beside_them() {
    let vms = "vmId,tenantId,vmTypeId,priority,starttime,endtime\n1,t1,7,0,0.0,1.0\n2,t2,8,0,0.5,\n3,t1,7,0,0.5,0.75\n";
    let path = temp_file("packing", "vms.csv", vms);
    let e = Workload::from_trace(&path, HOST, 10.0, 0).unwrap_err();
    assert!(matches!(e, WorkloadError::Malformed { line: 2, ref column, .. } if column == "vmTypeId"), "{e}");
    assert!(e.to_string().contains("azure_packing2020_vmtype_machine16.csv"), "{e}");
    temp_file("packing", "azure_packing2020_vmtype_machine16.csv", "vmTypeId,core,memory\n7,0.1,0.01\n8,0.1,0.02\n");
    let w = Workload::from_trace(&path, HOST, 10.0, 0).unwrap();
    // 0.02 of a machine is twice 0.01; tenants come from tenantId.
    assert!(w.guests[1].memory_bytes.abs_diff(2 * w.guests[0].memory_bytes) <= 2 * PAGE_BYTES);
    assert_eq!(w.guests.iter().map(|g| g.tenant).collect::<Vec<_>>(), [0, 1, 0]);
    // Alive at the end: lives to the last time in the file (1 day), 0.5 day after arriving.
    assert!((w.guests[1].lifetime_s - 5.0).abs() < 1e-9, "{}", w.guests[1].lifetime_s);
}

#[test]
fn companion_tables_are_not_workloads() {
    let Some(dir) = traces_dir() else { return };
    for (file, instead) in [
        ("azure_packing2020_vmtype_machine16.csv", "azure_packing2020_machine16_first5000.csv"),
        ("alibaba_gpu2023_openb_node_list_all_node.csv", "alibaba_gpu2023_openb_pod_list_default.csv"),
    ] {
        let e = Workload::from_trace(&dir.join(file), HOST, 25.0, 1).unwrap_err();
        assert!(matches!(e, WorkloadError::NotAWorkload { .. }), "{e}");
        assert!(e.to_string().contains(instead), "{e}");
    }
    let e = Workload::from_trace(&dir.join("README.md"), HOST, 25.0, 1).unwrap_err();
    assert!(matches!(e, WorkloadError::UnknownFormat { .. }), "{e}");
}

#[test]
fn errors_say_what_to_fix() {
    let missing = Path::new("/nonexistent/scrubheap/trace.csv");
    let e = Workload::from_trace(missing, HOST, 25.0, 1).unwrap_err();
    assert!(matches!(e, WorkloadError::NotFound { .. }));
    assert!(e.to_string().contains("/nonexistent/scrubheap/trace.csv"), "{e}");

    let h = "arrival_bin_end_s,batch_idx,vcpus,mem_gb,dur_bin,censored,dur_bin_lo_s,dur_bin_hi_s";
    let bad = temp_file("errors", "bad.csv", &format!("{h}\n300,0,1,0.75,1,0,300,300\n300,0,1,lots,1,0,300,300\n"));
    let e = Workload::from_trace(&bad, HOST, 25.0, 1).unwrap_err();
    assert!(matches!(e, WorkloadError::Malformed { line: 3, ref column, .. } if column == "mem_gb"), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("bad.csv:3: column `mem_gb`") && msg.contains("`lots`"), "{msg}");

    let short = temp_file("errors", "short.csv", &format!("{h}\n300,0,1,0.75\n"));
    let e = Workload::from_trace(&short, HOST, 25.0, 1).unwrap_err();
    assert!(matches!(e, WorkloadError::Malformed { line: 2, .. }), "{e}");
    assert!(e.to_string().contains("missing"), "{e}");

    let censored = temp_file("errors", "censored.csv", &format!("{h}\n300,0,1,0.75,1,maybe,300,300\n"));
    let e = Workload::from_trace(&censored, HOST, 25.0, 1).unwrap_err();
    assert!(matches!(e, WorkloadError::Malformed { ref column, .. } if column == "censored"), "{e}");

    let backwards = "vmId,vmTypeId,priority,starttime,endtime,core,memory,machineId\n1,0,0,2.0,1.0,0.1,0.1,16\n";
    let e = Workload::from_trace(&temp_file("errors", "backwards.csv", backwards), HOST, 25.0, 1).unwrap_err();
    assert!(matches!(e, WorkloadError::Malformed { line: 2, ref column, .. } if column == "endtime"), "{e}");

    let unknown = temp_file("errors", "unknown.csv", "time,size\n1,2\n");
    let e = Workload::from_trace(&unknown, HOST, 25.0, 1).unwrap_err();
    assert!(matches!(e, WorkloadError::UnknownFormat { ref header, .. } if header == "time,size"), "{e}");

    let empty = temp_file("errors", "empty.csv", &format!("{h}\n"));
    let e = Workload::from_trace(&empty, HOST, 25.0, 1).unwrap_err();
    assert!(matches!(e, WorkloadError::Empty { .. }), "{e}");
    let e = Workload::from_trace(&temp_file("errors", "nothing.csv", ""), HOST, 25.0, 1).unwrap_err();
    assert!(matches!(e, WorkloadError::Empty { .. }), "{e}");

    let ok = temp_file("errors", "ok.csv", &format!("{h}\n300,0,1,0.75,1,0,300,300\n"));
    assert!(matches!(Workload::from_trace(&ok, HOST, 0.0, 1), Err(WorkloadError::BadDuration(_))));
    assert!(matches!(Workload::from_trace(&ok, HOST, f64::INFINITY, 1), Err(WorkloadError::BadDuration(_))));
    assert!(matches!(Workload::from_trace(&ok, 4 << 20, 25.0, 1), Err(WorkloadError::HostTooSmall(_))));
    assert_eq!(Workload::from_trace(&ok, 8 << 20, 25.0, 1).unwrap().guests.len(), 1);
}

/// Prints what the default churn and each trace give on a 4 GiB host over 25 s: the
/// figures quoted in the documentation.
/// `cargo test -p scrubheap-workload --release --test traces summary -- --ignored --nocapture`
#[test]
#[ignore = "prints a summary; run with --ignored --nocapture"]
fn summary() {
    let dir = traces_dir();
    for seed in 0..10 {
        let w = Workload::default_churn(HOST, 25.0, seed, dir.as_deref());
        let occ: Vec<f64> = (0..=250)
            .map(|k| {
                let t = k as f64 / 10.0;
                let alive = w.guests.iter().filter(|g| g.arrival_s <= t && t < g.arrival_s + g.lifetime_s);
                alive.map(|g| g.memory_bytes).sum::<u64>() as f64 / HOST as f64
            })
            .collect();
        let at0 = w.guests.iter().filter(|g| g.arrival_s == 0.0).count();
        let ended = w.guests.iter().filter(|g| g.arrival_s + g.lifetime_s < w.duration_s).count();
        let mib = |lo: u64, hi: u64| {
            w.guests.iter().filter(|g| g.memory_bytes >= lo << 20 && g.memory_bytes < hi << 20).count()
        };
        println!(
            "seed {seed}: {} guests ({at0} at 0, {ended} destroyed in the run), occupancy min {:.2} mean {:.2} max {:.2}, \
             sizes <16 MiB {} / 16-127 {} / 128-255 {} / >=256 {}",
            w.guests.len(),
            occ.iter().cloned().fold(1.0, f64::min),
            occ.iter().sum::<f64>() / occ.len() as f64,
            occ.iter().cloned().fold(0.0, f64::max),
            mib(0, 16),
            mib(16, 128),
            mib(128, 256),
            mib(256, u64::MAX >> 20),
        );
    }
    println!("{}", Workload::default_churn(HOST, 25.0, 0, dir.as_deref()));
    let Some(dir) = dir else { return };
    for (file, _, _) in FILES {
        let w = Workload::from_trace(&dir.join(file), HOST, 25.0, 1).unwrap();
        let ended = w.guests.iter().filter(|g| g.arrival_s + g.lifetime_s < w.duration_s).count();
        println!("{w}; {ended} destroyed in the run");
    }
}

/// Every format with end times refuses a guest that leaves before it arrives, naming the
/// end column and the line.
#[test]
fn an_end_before_the_start_is_refused_in_every_format() {
    for (name, text, column) in [
        ("packing.csv", "vmId,vmTypeId,starttime,endtime,memory\n1,0,2.0,1.0,0.1\n", "endtime"),
        ("vmtable.csv", "vmid,vmcreated,vmdeleted,vmmemory\nx,600,300,2\n", "vmdeleted"),
        (
            "alibaba.csv",
            "name,creation_time,scheduled_time,deletion_time,memory_mib\np,100,500,400,64\n",
            "deletion_time",
        ),
    ] {
        let e = scrubheap_workload::read_trace(&temp_file("ends", name, text), 1).unwrap_err();
        assert!(matches!(e, WorkloadError::Malformed { column: ref c, line: 2, .. } if c == column), "{name}: {e}");
        assert!(e.to_string().contains("ends ("), "{name}: {e}");
    }
}

/// The rules every reader of Azure V1 decoded files follows (crate docs): columns by name,
/// `censored` 0 or 1 only, censored VMs living to their bin's upper edge, reversed bins
/// refused, the seed used as given.
#[test]
fn decoded_rules_are_one_set() {
    let h = "arrival_bin_end_s,batch_idx,vcpus,mem_gb,dur_bin,censored,dur_bin_lo_s,dur_bin_hi_s";
    // Reordered and extra columns: found by name.
    let reordered = "extra,censored,dur_bin_hi_s,dur_bin_lo_s,mem_gb,arrival_bin_end_s\nx,1,7200,3900,0.75,600\nx,0,7200,3900,1.75,600\n";
    let t = scrubheap_workload::read_trace(&temp_file("rules", "reordered.csv", reordered), 5).unwrap();
    let censored = t.guests.iter().find(|g| g.bytes == 0.75 * (1u64 << 30) as f64).unwrap();
    assert_eq!(censored.lifetime_s, 7200.0, "a censored VM lives to its bin's upper edge");
    assert!(t.guests.iter().all(|g| (300.0..600.0).contains(&g.arrival_s) && g.lifetime_s.is_finite()));
    // `censored` other than 0 or 1, and a reversed bin: errors naming the column.
    for (name, row, column) in
        [("two.csv", "300,0,1,0.75,1,2,300,300", "censored"), ("rev.csv", "300,0,1,0.75,1,0,600,300", "dur_bin_hi_s")]
    {
        let e = scrubheap_workload::read_trace(&temp_file("rules", name, &format!("{h}\n{row}\n")), 1).unwrap_err();
        assert!(matches!(e, WorkloadError::Malformed { column: ref c, line: 2, .. } if c == column), "{name}: {e}");
    }
    // The seed as given: the same seed places every VM at the same instant, another does not.
    let file =
        temp_file("rules", "seeded.csv", &format!("{h}\n300,0,1,0.75,13,0,3900,7200\n600,0,1,1.75,13,0,3900,7200\n"));
    let (a, b) = (scrubheap_workload::read_trace(&file, 9).unwrap(), scrubheap_workload::read_trace(&file, 9).unwrap());
    assert_eq!(a.guests, b.guests);
    assert_ne!(a.guests, scrubheap_workload::read_trace(&file, 10).unwrap().guests);
}
