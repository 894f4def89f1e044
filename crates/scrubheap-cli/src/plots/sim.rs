//! The simulator's SVG timelines (`scrubheap sim --report DIR`): memory composition per
//! node, scrub throughput, longest sections; in the palette of [`super`].

use super::{CLEAN, DIRTY, FONT, GIB, POLICY_COLORS as COLORS, USED};
use plotters::prelude::*;
use scrubheap_sim::report::{PolicyRun, Sample};
use std::path::{Path, PathBuf};

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn end_time(runs: &[PolicyRun]) -> f64 {
    runs.iter().flat_map(|r| r.timeline.last()).map(|s| s.t_s).fold(1e-9, f64::max)
}

/// Writes the SVGs for `runs` of `scenario` into `dir`; returns the files written.
pub fn write_all(dir: &Path, scenario: &str, runs: &[PolicyRun], watchdog_s: f64) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for r in runs {
        let f = dir.join(format!("{scenario}-{}-memory.svg", r.result.policy));
        memory(&f, &format!("{scenario}, {}: memory per node", r.result.policy), &r.timeline)?;
        files.push(f);
    }
    let f = dir.join(format!("{scenario}-scrub-throughput.svg"));
    throughput(&f, scenario, runs)?;
    files.push(f);
    let f = dir.join(format!("{scenario}-sections.svg"));
    sections(&f, scenario, runs, watchdog_s)?;
    files.push(f);
    Ok(files)
}

fn memory(path: &Path, title: &str, tl: &[Sample]) -> Result<(), String> {
    let nodes = tl.first().map_or(1, |s| s.nodes.len());
    let cols = nodes.min(4);
    let rows = nodes.div_ceil(cols);
    let root = SVGBackend::new(path, (320 * cols as u32, 60 + 240 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, (FONT, 20)).map_err(err)?;
    let panels = root.split_evenly((rows, cols));
    let t_max = tl.last().map_or(1.0, |s| s.t_s).max(1e-9);
    let y_max = tl.iter().flat_map(|s| s.nodes.iter().map(|n| (n[0] + n[1] + n[2]) as f64 / GIB)).fold(1e-9, f64::max);
    let names = ["free clean", "free dirty", "allocated"];
    let colors = [CLEAN, DIRTY, USED];
    for (n, panel) in panels.iter().enumerate().take(nodes) {
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("node {n}"), (FONT, 14))
            .margin(6)
            .x_label_area_size(28)
            .y_label_area_size(44)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max * 1.05)
            .map_err(err)?;
        chart.configure_mesh().x_desc("s").y_desc("GiB").light_line_style(WHITE).draw().map_err(err)?;
        for k in 0..3 {
            let s = chart
                .draw_series(LineSeries::new(tl.iter().map(|s| (s.t_s, s.nodes[n][k] as f64 / GIB)), colors[k]))
                .map_err(err)?;
            if n == 0 {
                s.label(names[k]).legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], colors[k]));
            }
        }
        if n == 0 {
            chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err)?;
        }
    }
    root.present().map_err(err)
}

fn throughput(path: &Path, scenario: &str, runs: &[PolicyRun]) -> Result<(), String> {
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let series: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|r| {
            let mut prev = 0.0;
            r.timeline
                .iter()
                .map(|s| {
                    let dt = (s.t_s - prev).max(1e-9);
                    prev = s.t_s;
                    (s.t_s, (s.zeroed_idle + s.zeroed_toolstack) as f64 / dt / 1e9)
                })
                .collect()
        })
        .collect();
    let y_max = series.iter().flatten().map(|p| p.1).fold(1e-9, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{scenario}: bytes zeroed per second (idle and toolstack CPUs)"), (FONT, 18))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..end_time(runs), 0.0..y_max * 1.05)
        .map_err(err)?;
    chart.configure_mesh().x_desc("simulated time, s").y_desc("GB/s").draw().map_err(err)?;
    for (i, (r, s)) in runs.iter().zip(&series).enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(s.iter().copied(), c))
            .map_err(err)?
            .label(r.result.policy.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], c));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err)?;
    root.present().map_err(err)
}

fn sections(path: &Path, scenario: &str, runs: &[PolicyRun], watchdog_s: f64) -> Result<(), String> {
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let floor = 1e-3;
    let y_max = runs
        .iter()
        .flat_map(|r| r.timeline.iter().map(|s| s.max_section_ns as f64 / 1e6))
        .fold(watchdog_s * 1e3, f64::max)
        * 2.0;
    let t_max = end_time(runs);
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{scenario}: longest non-preemptible section per sample"), (FONT, 18))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..t_max, (floor..y_max).log_scale())
        .map_err(err)?;
    chart.configure_mesh().x_desc("simulated time, s").y_desc("ms (log)").draw().map_err(err)?;
    for (i, r) in runs.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let pts = r.timeline.iter().map(|s| (s.t_s, (s.max_section_ns as f64 / 1e6).max(floor)));
        chart
            .draw_series(LineSeries::new(pts, c))
            .map_err(err)?
            .label(r.result.policy.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], c));
    }
    let w = watchdog_s * 1e3;
    chart
        .draw_series(LineSeries::new([(0.0, w), (t_max, w)], BLACK.stroke_width(2)))
        .map_err(err)?
        .label(format!("watchdog {watchdog_s} s"))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], BLACK));
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err)?;
    root.present().map_err(err)
}
