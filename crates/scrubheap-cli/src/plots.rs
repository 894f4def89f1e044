//! SVG plots of a run's report, drawn from its timeline and latency samples:
//!
//! - `memory.svg`: used / dirty / clean memory of every node over time, stacked, for the
//!   first run (and `memory-<policy>.svg` for every run when several are compared);
//! - `latency.svg`: cumulative distributions of guest create and destroy latency, one
//!   curve per policy, on a log ms axis;
//! - `compare.svg` (several runs only): create and destroy p50 / max and the longest
//!   non-preemptible section, one bar per policy;
//! - `scrub.svg`: background scrub throughput and guests alive over time, one row per policy.
//!
//! [`sim`] draws the simulator's timelines. This module holds the one palette both use.
//!
//! Text is written as SVG `<text>` elements, so no font is needed to draw; sizes of text are
//! estimated, so labels are kept short.

use anyhow::{anyhow, Context};
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use scrubheap_host::report::{RunReport, Sample};
use std::path::{Path, PathBuf};

pub mod sim;

/// An SVG drawing area in pixels.
type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
/// What drawing on an SVG area returns.
type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

const GIB: f64 = (1u64 << 30) as f64;
const FONT: &str = "sans-serif";
/// Most points drawn per series; longer series are thinned to this many.
const MAX_POINTS: usize = 2000;
/// One colour per run, in report order, the same in every plot.
const POLICY_COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];
/// Memory held by guests.
const USED: RGBColor = RGBColor(70, 110, 170);
/// Free memory still to be scrubbed.
const DIRTY: RGBColor = RGBColor(222, 90, 70);
/// Free memory known to be zero.
const CLEAN: RGBColor = RGBColor(120, 190, 120);
/// Background scrub throughput.
const SCRUB: RGBColor = RGBColor(23, 150, 170);
/// Guests alive.
const GUESTS: RGBColor = RGBColor(60, 60, 60);
/// Notes such as "no samples".
const NOTE: RGBColor = RGBColor(120, 120, 120);

/// Writes the plots of `rs` into `dir` (which must exist); returns the files written, none
/// when `rs` is empty.
///
/// ```ignore
/// let files = plots::write(Path::new("report"), &reports)?;
/// ```
pub fn write(dir: &Path, rs: &[RunReport]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let Some(first) = rs.first() else {
        return Ok(files);
    };
    let mut out = |name: &str, size: (u32, u32), draw: &dyn Fn(&Area) -> DrawResult| -> anyhow::Result<()> {
        let path = dir.join(name);
        save(&path, size, draw)?;
        files.push(path);
        Ok(())
    };
    out("memory.svg", memory_size(first), &|a| memory(a, first))?;
    if rs.len() > 1 {
        let mut names: Vec<String> = Vec::new();
        for r in rs {
            let mut name = format!("memory-{}.svg", file_safe(&r.policy));
            if names.contains(&name) {
                name = format!("memory-{}-{}.svg", file_safe(&r.policy), names.len() + 1);
            }
            out(&name, memory_size(r), &|a| memory(a, r))?;
            names.push(name);
        }
    }
    out("latency.svg", (1300, 600), &|a| latency(a, rs))?;
    if rs.len() > 1 {
        out("compare.svg", (1300, 760), &|a| compare(a, rs))?;
    }
    out("scrub.svg", (1100, 100 + 250 * rs.len() as u32), &|a| scrub(a, rs))?;
    Ok(files)
}

/// Draws one SVG in memory with `draw` and writes it to `path`.
fn save(path: &Path, size: (u32, u32), draw: &dyn Fn(&Area) -> DrawResult) -> anyhow::Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE)
            .and_then(|()| draw(&root))
            .and_then(|()| root.present())
            .map_err(|e| anyhow!("cannot draw {}: {e}", path.display()))?;
    }
    std::fs::write(path, svg).with_context(|| format!("cannot write {}", path.display()))
}

/// `policy` with anything but letters, digits, `-` and `_` replaced, for a file name.
fn file_safe(policy: &str) -> String {
    let s: String =
        policy.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if s.is_empty() {
        "unnamed".to_owned()
    } else {
        s
    }
}

/// `v`, or 0 when it is not finite.
fn finite(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

/// Every `k`-th item and the last, so that at most about [`MAX_POINTS`] are left.
fn thin<T>(xs: &[T]) -> Vec<&T> {
    let step = xs.len().div_ceil(MAX_POINTS).max(1);
    let mut out: Vec<&T> = xs.iter().step_by(step).collect();
    if !xs.is_empty() && (xs.len() - 1) % step != 0 {
        out.extend(xs.last());
    }
    out
}

/// A number with about three significant digits and no trailing zeros: `1234`, `12.3`,
/// `0.05`.
fn num(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return "0".to_owned();
    }
    let decimals = (2 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// An axis label: [`num`], with `k` and `M` for thousands and millions.
fn short(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{}M", num(v / 1e6))
    } else if v.abs() >= 1e4 {
        format!("{}k", num(v / 1e3))
    } else {
        num(v)
    }
}

/// Bytes as GiB or MiB.
fn human(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{} GiB", num(b as f64 / GIB))
    } else {
        format!("{} MiB", num(b as f64 / (1u64 << 20) as f64))
    }
}

/// The decade at or below `v` (> 0).
fn decade_floor(v: f64) -> f64 {
    10f64.powf(v.log10().floor())
}

/// The decade at or above `v` (> 0).
fn decade_ceil(v: f64) -> f64 {
    10f64.powf(v.log10().ceil())
}

/// Labelled points for a log axis over `lo..hi`: 1, 2, 5 times each decade when the
/// range spans few decades, every decade otherwise.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let decades = (hi / lo).log10().ceil().max(1.0) as i32;
    let mults: &[f64] = if decades <= 3 { &[1.0, 2.0, 5.0] } else { &[1.0] };
    let stride = (decades / 8 + 1).max(1);
    let first = lo.log10().floor() as i32;
    let mut ticks = Vec::new();
    for d in (first..=first + decades).step_by(stride as usize) {
        for m in mults {
            let v = m * 10f64.powi(d);
            if v >= lo * 0.999 && v <= hi * 1.001 {
                ticks.push(v);
            }
        }
    }
    ticks
}

/// A legend swatch: a filled box or a line.
#[derive(Clone, Copy)]
enum Swatch {
    /// A filled box, for areas and bars.
    Fill(RGBColor),
    /// A short thick line, for lines.
    Line(RGBColor),
}

/// Draws a row of legend entries centred in `area`.
fn legend_row(area: &Area, items: &[(String, Swatch)]) -> DrawResult {
    let (w, h) = area.dim_in_pixel();
    let style = TextStyle::from((FONT, 16)).color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center));
    // About 7 px a character at this size; the SVG viewer lays the text out itself.
    let width = |t: &str| 22 + 7 * t.chars().count() as i32 + 26;
    let total: i32 = items.iter().map(|(t, _)| width(t)).sum();
    let mut x = ((w as i32 - total) / 2).max(8);
    let y = h as i32 / 2;
    for (text, swatch) in items {
        match *swatch {
            Swatch::Fill(c) => area.draw(&Rectangle::new([(x, y - 7), (x + 16, y + 7)], c.filled()))?,
            Swatch::Line(c) => area.draw(&PathElement::new([(x, y), (x + 16, y)], c.stroke_width(3)))?,
        }
        area.draw(&Text::new(text.clone(), (x + 22, y), style.clone()))?;
        x += width(text);
    }
    Ok(())
}

/// Writes `text` in grey in the middle of `area`.
fn note(area: &Area, text: &str) -> DrawResult {
    let (w, h) = area.dim_in_pixel();
    let style = TextStyle::from((FONT, 18)).color(&NOTE).pos(Pos::new(HPos::Center, VPos::Center));
    area.draw(&Text::new(text.to_owned(), (w as i32 / 2, h as i32 / 2), style))
}

/// Nodes in `r`'s timeline (at least one, for an empty panel).
fn node_count(r: &RunReport) -> usize {
    r.timeline.iter().map(|s| s.nodes.len()).max().unwrap_or(0).max(1)
}

/// Columns and rows of a grid of `n` panels.
fn grid(n: usize) -> (usize, usize) {
    let cols = if n <= 4 { n } else { n.isqrt().max(4).min(n) };
    (cols, n.div_ceil(cols))
}

/// Size of `r`'s memory plot.
fn memory_size(r: &RunReport) -> (u32, u32) {
    let (cols, rows) = grid(node_count(r));
    ((520 * cols as u32).max(1000), 100 + 340 * rows as u32)
}

/// Bytes of node `n` in sample `s` at or below band `k` (0 used, 1 dirty, 2 clean), in GiB.
fn stacked(s: &Sample, n: usize, k: usize) -> f64 {
    s.nodes.get(n).map_or(0.0, |x| {
        let parts = [x.used, x.dirty, x.clean];
        parts[..=k].iter().map(|&b| b as f64).sum::<f64>() / GIB
    })
}

/// One panel per node: used, dirty and clean memory stacked over time.
fn memory(root: &Area, r: &RunReport) -> DrawResult {
    let nodes = node_count(r);
    let title = format!(
        "{}: memory of each node over time ({} in {} node{})",
        r.policy,
        human(r.memory_bytes),
        nodes,
        if nodes == 1 { "" } else { "s" }
    );
    let root = root.titled(&title, (FONT, 26))?;
    let (legend, body) = root.split_vertically(36);
    let bands = [("used by guests", USED), ("free, dirty (to scrub)", DIRTY), ("free, clean (zeroed)", CLEAN)];
    legend_row(&legend, &bands.map(|(t, c)| (t.to_owned(), Swatch::Fill(c))))?;
    let tl: Vec<&Sample> = thin(&r.timeline).into_iter().filter(|s| s.t.is_finite()).collect();
    let t_max = tl.iter().map(|s| s.t).fold(1e-3, f64::max);
    let y_max = tl.iter().flat_map(|s| (0..s.nodes.len()).map(|n| stacked(s, n, 2))).fold(1e-3, f64::max);
    let (cols, rows) = grid(nodes);
    for (n, panel) in body.split_evenly((rows, cols)).iter().enumerate().take(nodes) {
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("node {n}"), (FONT, 20))
            .margin(10)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max * 1.04)?;
        for (k, (_, color)) in bands.iter().enumerate() {
            let upper = tl.iter().map(|s| (s.t, stacked(s, n, k)));
            let lower = tl.iter().rev().map(|s| (s.t, if k == 0 { 0.0 } else { stacked(s, n, k - 1) }));
            chart.draw_series(std::iter::once(Polygon::new(upper.chain(lower).collect::<Vec<_>>(), color.filled())))?;
        }
        // The grid goes over the bands, so that levels can be read off them.
        chart
            .configure_mesh()
            .x_desc("time since start, s")
            .y_desc("GiB")
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 16))
            .y_label_formatter(&|v| num(*v))
            .x_label_formatter(&|v| num(*v))
            .bold_line_style(WHITE.mix(0.5))
            .light_line_style(TRANSPARENT)
            .draw()?;
        if tl.is_empty() {
            note(panel, "no samples")?;
        }
    }
    Ok(())
}

/// Two panels, create and destroy: the cumulative distribution of each run's samples.
fn latency(root: &Area, rs: &[RunReport]) -> DrawResult {
    let root = root.titled("guest create and destroy latency: share of guests done within a time", (FONT, 26))?;
    let (left, right) = root.split_horizontally(root.dim_in_pixel().0 / 2);
    cdf_panel(
        &left,
        "create: claim, populate all memory, ready",
        rs,
        |r| &r.create_samples_ms,
        |r| (r.create_ms.p50, r.create_ms.max),
    )?;
    cdf_panel(
        &right,
        "destroy: all memory back in the pool",
        rs,
        |r| &r.destroy_samples_ms,
        |r| (r.destroy_ms.p50, r.destroy_ms.max),
    )
}

/// The points of a step CDF of `samples` (clamped up to `floor`), in percent, thinned.
fn cdf_points(samples: &[f64], floor: f64) -> Vec<(f64, f64)> {
    let mut v: Vec<f64> = samples.iter().filter(|x| x.is_finite()).map(|x| x.max(floor)).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let step = n.div_ceil(MAX_POINTS).max(1);
    let mut pts = Vec::new();
    let mut below = 0.0;
    for (i, &x) in v.iter().enumerate().filter(|(i, _)| (i + 1) % step == 0 || i + 1 == n) {
        let share = (i + 1) as f64 / n as f64 * 100.0;
        pts.push((x, below));
        pts.push((x, share));
        below = share;
    }
    pts
}

/// One CDF panel over the samples `get` picks from each run; `figures` gives the run's
/// p50 and max for the legend.
fn cdf_panel(
    area: &Area,
    caption: &str,
    rs: &[RunReport],
    get: fn(&RunReport) -> &Vec<f64>,
    figures: fn(&RunReport) -> (f64, f64),
) -> DrawResult {
    let all = rs.iter().flat_map(|r| get(r).iter().copied()).filter(|x| x.is_finite() && *x > 0.0);
    let (min, max) = all.fold((f64::INFINITY, 0.0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let (lo, hi) = if max > 0.0 { (decade_floor(min), decade_ceil(max * 1.01)) } else { (0.01, 10.0) };
    let hi = hi.max(lo * 10.0);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 20))
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((lo..hi).log_scale().with_key_points(log_ticks(lo, hi)), 0.0..100.0)?;
    chart
        .configure_mesh()
        .x_desc("latency, ms (log scale)")
        .y_desc("guests done within, %")
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .x_label_formatter(&|v| num(*v))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .y_max_light_lines(1)
        .draw()?;
    chart.draw_series(LineSeries::new([(lo, 99.0), (hi, 99.0)], NOTE.mix(0.6)))?;
    chart.draw_series(std::iter::once(Text::new(
        "99 % ",
        (hi, 99.0),
        TextStyle::from((FONT, 14)).color(&NOTE).pos(Pos::new(HPos::Right, VPos::Top)),
    )))?;
    for (i, r) in rs.iter().enumerate() {
        let c = POLICY_COLORS[i % POLICY_COLORS.len()];
        let samples = get(r);
        let (p50, pmax) = figures(r);
        let label = if samples.is_empty() {
            format!("{}: no samples", r.policy)
        } else {
            format!("{}: {} guests, p50 {} ms, max {} ms", r.policy, samples.len(), num(p50), num(pmax))
        };
        chart
            .draw_series(LineSeries::new(cdf_points(samples, lo), c.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.9))
        .border_style(NOTE)
        .draw()?;
    if max <= 0.0 {
        note(area, "no latency samples above 0 ms")?;
    }
    Ok(())
}

/// A figure of a run compared across runs: caption, axis unit, value.
type Figure = (&'static str, &'static str, fn(&RunReport) -> f64);

/// Small multiples: one bar chart per figure, one bar per run.
fn compare(root: &Area, rs: &[RunReport]) -> DrawResult {
    let root = root.titled("policies side by side on the same workload and seed (lower is better)", (FONT, 26))?;
    let figures: [Figure; 6] = [
        ("create p50", "ms", |r| r.create_ms.p50),
        ("create max", "ms", |r| r.create_ms.max),
        ("longest non-preemptible (CPU time)", "µs", |r| r.max_nonpreemptible_us),
        ("destroy p50", "ms", |r| r.destroy_ms.p50),
        ("destroy max", "ms", |r| r.destroy_ms.max),
        ("longest non-preemptible (wall clock)", "µs", |r| r.max_nonpreemptible_wall_us),
    ];
    for (panel, (caption, unit, f)) in root.split_evenly((2, 3)).iter().zip(figures) {
        let vals: Vec<f64> = rs.iter().map(|r| finite(f(r)).max(0.0)).collect();
        bar_panel(panel, caption, unit, rs, &vals)?;
    }
    Ok(())
}

/// One bar per run of `vals`, on a log axis when the values span more than a decade.
fn bar_panel(area: &Area, caption: &str, unit: &str, rs: &[RunReport], vals: &[f64]) -> DrawResult {
    let max = vals.iter().copied().fold(0.0, f64::max);
    let min_pos = vals.iter().copied().filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
    let log = max > 0.0 && max / min_pos >= 20.0;
    // Bar i is centred on x = i, where the mesh puts its labels.
    let x = -0.5..vals.len() as f64 - 0.5;
    let mut builder = ChartBuilder::on(area);
    builder.caption(caption, (FONT, 19)).margin(12).x_label_area_size(40).y_label_area_size(64);
    if log {
        // Half a decade at least below the shortest bar, so that it shows.
        let (lo, hi) = (decade_floor(min_pos / 2.0), decade_ceil(max * 4.0));
        let y = (lo..hi).log_scale().with_key_points(log_ticks(lo, hi));
        let mut chart = builder.build_cartesian_2d(x, y)?;
        let desc = format!("{unit} (log scale)");
        bar_mesh(&mut chart, &desc, rs)?;
        bars(&mut chart, rs, vals, lo)
    } else {
        let mut chart = builder.build_cartesian_2d(x, 0.0..(max * 1.2).max(1e-3))?;
        bar_mesh(&mut chart, unit, rs)?;
        bars(&mut chart, rs, vals, 0.0)
    }
}

/// The axes of a bar panel: run names under the bars.
fn bar_mesh<Y>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, Y>>,
    y_desc: &str,
    rs: &[RunReport],
) -> DrawResult
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let name = |v: &f64| {
        let i = v.round();
        match rs.get(i.max(0.0) as usize) {
            Some(r) if (v - i).abs() < 1e-6 => r.policy.clone(),
            _ => String::new(),
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(rs.len())
        .light_line_style(TRANSPARENT)
        .y_desc(y_desc)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .x_label_formatter(&name)
        .y_label_formatter(&|v| short(*v))
        .draw()
}

/// The bars, from `base` up, each with its value written above it.
fn bars<Y>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, Y>>,
    rs: &[RunReport],
    vals: &[f64],
    base: f64,
) -> DrawResult
where
    Y: Ranged<ValueType = f64>,
{
    let label = TextStyle::from((FONT, 15)).color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom));
    for (i, &v) in vals.iter().enumerate().take(rs.len()) {
        let c = POLICY_COLORS[i % POLICY_COLORS.len()];
        let x = i as f64;
        let top = v.max(base);
        chart.draw_series(std::iter::once(Rectangle::new([(x - 0.3, base), (x + 0.3, top)], c.filled())))?;
        chart.draw_series(std::iter::once(EmptyElement::at((x, top)) + Text::new(num(v), (0, -4), label.clone())))?;
    }
    Ok(())
}

/// The median time between two samples of the runs' timelines, in ms.
fn sample_interval_ms(rs: &[RunReport]) -> Option<f64> {
    let mut dts: Vec<f64> = rs
        .iter()
        .flat_map(|r| r.timeline.windows(2).map(|w| (w[1].t - w[0].t) * 1e3))
        .filter(|dt| dt.is_finite() && *dt > 0.0)
        .collect();
    dts.sort_by(f64::total_cmp);
    dts.get(dts.len() / 2).copied()
}

/// One row per run: background scrub GB/s (left axis) and guests alive (right axis).
fn scrub(root: &Area, rs: &[RunReport]) -> DrawResult {
    let root = root.titled("background scrubbing and guests alive over time", (FONT, 26))?;
    let (legend, body) = root.split_vertically(36);
    let scrub_label = match sample_interval_ms(rs) {
        Some(ms) => format!("background scrub, GB/s, mean over each {} ms sample (left axis)", num(ms)),
        None => "background scrub, GB/s (left axis)".to_owned(),
    };
    legend_row(
        &legend,
        &[(scrub_label, Swatch::Fill(SCRUB)), ("guests alive (right axis)".to_owned(), Swatch::Line(GUESTS))],
    )?;
    let t_max = rs.iter().flat_map(|r| r.timeline.iter().map(|s| finite(s.t))).fold(1e-3, f64::max);
    let g_max = rs.iter().flat_map(|r| r.timeline.iter().map(|s| finite(s.scrub_gbps))).fold(0.0, f64::max);
    let n_max = rs.iter().flat_map(|r| r.timeline.iter().map(|s| s.guests)).max().unwrap_or(0);
    let rows = body.split_evenly((rs.len().max(1), 1));
    for (r, row) in rs.iter().zip(&rows) {
        let caption = format!(
            "{}: {} GB/s while scrubbing, {} scrubbed in the background",
            r.policy,
            num(finite(r.scrub_gbps)),
            human(r.bytes_scrubbed.background)
        );
        let mut chart = ChartBuilder::on(row)
            .caption(caption, (FONT, 19))
            .margin(10)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .right_y_label_area_size(64)
            .build_cartesian_2d(0.0..t_max, 0.0..(g_max * 1.1).max(1e-3))?
            .set_secondary_coord(0.0..t_max, 0.0..(n_max as f64 * 1.1).max(1.0));
        chart
            .configure_mesh()
            .x_desc("time since start, s")
            .y_desc("GB/s")
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 16))
            .x_label_formatter(&|v| num(*v))
            .y_label_formatter(&|v| num(*v))
            .y_labels(6)
            .light_line_style(TRANSPARENT)
            .draw()?;
        chart
            .configure_secondary_axes()
            .y_desc("guests")
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 16))
            .y_label_formatter(&|v| if v.fract() == 0.0 { format!("{v:.0}") } else { String::new() })
            .draw()?;
        let tl: Vec<&Sample> = thin(&r.timeline).into_iter().filter(|s| s.t.is_finite()).collect();
        if tl.is_empty() {
            note(row, "no samples")?;
            continue;
        }
        let line = tl.iter().map(|s| (s.t, finite(s.scrub_gbps).max(0.0)));
        let mut area: Vec<(f64, f64)> = line.clone().collect();
        area.extend([(tl[tl.len() - 1].t, 0.0), (tl[0].t, 0.0)]);
        chart.draw_series(std::iter::once(Polygon::new(area, SCRUB.mix(0.35).filled())))?;
        chart.draw_series(LineSeries::new(line, SCRUB.stroke_width(1)))?;
        chart.draw_secondary_series(LineSeries::new(
            tl.iter().map(|s| (s.t, s.guests as f64)),
            GUESTS.stroke_width(2),
        ))?;
        if tl.iter().all(|s| finite(s.scrub_gbps) <= 0.0) {
            note(row, "no background scrubbing in this run")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use scrubheap_host::report::{BytesScrubbed, Millis, NodeSample};

    /// A unique empty folder under the system temp folder.
    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("scrubheap-plots-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A run of `policy` over two nodes with a 60-sample timeline and some latencies,
    /// zeros among them; `k` varies the figures between runs.
    fn synthetic(policy: &str, k: f64) -> RunReport {
        let node = 512u64 << 20;
        let timeline = (0..60)
            .map(|i| {
                let used = node / 60 * i;
                let dirty = (node - used) / (2 + i % 3);
                Sample {
                    t: i as f64 * 0.1,
                    guests: i / 3,
                    nodes: vec![NodeSample { clean: node - used - dirty, dirty, used }; 2],
                    scrub_gbps: if k > 2.0 { 0.0 } else { (i % 7) as f64 * k },
                }
            })
            .collect();
        let create: Vec<f64> = (0..200).map(|i| if i == 0 { 0.0 } else { i as f64 * 0.01 * k }).collect();
        RunReport {
            schema: 1,
            policy: policy.to_owned(),
            memory_bytes: 2 * node,
            nodes: 2,
            create_ms: Millis { p50: 1.0 * k, p99: 1.98 * k, max: 2.0 * k },
            destroy_ms: Millis { p50: 0.1 * k, p99: 5.0 * k, max: 9.0 * k * k },
            max_nonpreemptible_us: 10.0 * 10f64.powf(k),
            max_nonpreemptible_wall_us: 0.0,
            scrub_gbps: 3.0 * k,
            bytes_scrubbed: BytesScrubbed { background: 3 << 30, ..Default::default() },
            timeline,
            destroy_samples_ms: create.iter().map(|x| x * x).collect(),
            create_samples_ms: create,
            ..Default::default()
        }
    }

    /// Checks that `dir` holds exactly `names`, each an SVG naming every one of `policies`.
    fn check(dir: &Path, files: &[PathBuf], expected: &[(&str, Vec<&str>)]) {
        let got: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        let want: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
        assert_eq!(got, want);
        for (name, policies) in expected {
            let path = dir.join(name);
            let svg = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(svg.starts_with("<svg"), "{name} is not an SVG");
            assert!(svg.len() > 1000, "{name} is nearly empty");
            for p in policies {
                assert!(svg.contains(p), "{name} does not name {p}");
            }
        }
    }

    #[test]
    fn one_run_writes_memory_latency_and_scrub() {
        let dir = temp_dir("one");
        let files = write(&dir, &[synthetic("scrubheap", 1.0)]).unwrap();
        let p = vec!["scrubheap"];
        check(&dir, &files, &[("memory.svg", p.clone()), ("latency.svg", p.clone()), ("scrub.svg", p)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn three_runs_add_a_memory_plot_each_and_a_comparison() {
        let dir = temp_dir("three");
        let rs = [synthetic("scrubheap", 1.0), synthetic("xen", 2.0), synthetic("kernel", 3.0)];
        let files = write(&dir, &rs).unwrap();
        let all = vec!["scrubheap", "xen", "kernel"];
        check(
            &dir,
            &files,
            &[
                ("memory.svg", vec!["scrubheap"]),
                ("memory-scrubheap.svg", vec!["scrubheap"]),
                ("memory-xen.svg", vec!["xen"]),
                ("memory-kernel.svg", vec!["kernel"]),
                ("latency.svg", all.clone()),
                ("compare.svg", all.clone()),
                ("scrub.svg", all),
            ],
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn empty_reports_and_odd_values_draw_without_error() {
        let dir = temp_dir("empty");
        assert!(write(&dir, &[]).unwrap().is_empty());
        let empty = RunReport { policy: "idle".to_owned(), ..Default::default() };
        let files = write(&dir, std::slice::from_ref(&empty)).unwrap();
        assert_eq!(files.len(), 3);
        let mut odd = synthetic("odd", 1.0);
        odd.create_samples_ms = vec![0.0, f64::NAN, f64::INFINITY, -1.0];
        odd.destroy_samples_ms = vec![5.0];
        odd.create_ms.max = f64::NAN;
        odd.timeline.truncate(1);
        odd.timeline[0].scrub_gbps = f64::INFINITY;
        let files = write(&dir, &[empty.clone(), odd, empty]).unwrap();
        assert_eq!(files.len(), 7);
        for f in files {
            assert!(std::fs::read_to_string(&f).unwrap().starts_with("<svg"));
        }
        assert!(dir.join("memory-idle-3.svg").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_folder_is_an_error_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("scrubheap-plots-{}-missing/nowhere", std::process::id()));
        let e = write(&dir, &[synthetic("scrubheap", 1.0)]).unwrap_err();
        assert!(format!("{e:#}").contains("memory.svg"), "{e:#}");
    }

    #[test]
    fn numbers_and_ticks_read_well() {
        assert_eq!(num(1234.4), "1234");
        assert_eq!(num(12.34), "12.3");
        assert_eq!(num(0.05), "0.05");
        assert_eq!(num(2.0), "2");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(f64::NAN), "0");
        assert_eq!(short(200_000.0), "200k");
        assert_eq!(short(1e6), "1M");
        assert_eq!(short(5000.0), "5000");
        assert_eq!(log_ticks(0.1, 10.0), vec![0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]);
        assert_eq!(log_ticks(1.0, 1e6).len(), 7);
        assert_eq!(thin(&[1, 2, 3]).len(), 3);
        let long: Vec<usize> = (0..10_001).collect();
        let t = thin(&long);
        assert!(t.len() <= MAX_POINTS + 1 && *t[t.len() - 1] == 10_000);
    }
}
