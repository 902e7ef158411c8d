//! Plots as PNG files: `metrics.png` of a run (losses smoothed over their raw curves, learning
//! rates, mIoU per evaluated model, the graph's logged `metric/*` scalars, all against
//! iterations) and the results figure of `flowseg bench methods` (grouped bars with error bars).
//! Drawn with plotters' bitmap backend into memory, encoded by the `image` crate and written
//! through a temporary file and a rename. Text goes through ab_glyph with the Go font embedded
//! (`src/plot/Go-Regular.ttf`, BSD licence beside it): no system fonts, no C libraries.
//!
//! Not here: when a run redraws its plot (run.rs calls [`refresh_run_plot`]); the ledger and the
//! statistics behind the results figure (bench.rs).

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

/// The embedded font (the Go font, Regular; BSD-3-Clause, see src/plot/LICENSE-Go-font.txt).
const FONT: &[u8] = include_bytes!("plot/Go-Regular.ttf");
/// The family every text style names; registered once per process.
const FAMILY: &str = "sans-serif";

/// Line colours, in order (matplotlib's tab10).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn fail(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Registers the embedded font under [`FAMILY`] (once; later calls return the first outcome).
fn font_ready() -> Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
                .map_err(|_| "the embedded font does not load".to_owned())
        })
        .clone()
}

/// Text of `size` pixels. Even sizes only: plotters' ab_glyph path places each glyph at
/// `size / 2 + top` truncated to a pixel, so an odd size sets glyphs up to a pixel apart.
fn text(size: u32) -> TextStyle<'static> {
    debug_assert!(size.is_multiple_of(2), "odd text size {size}");
    (FAMILY, size).into_font().color(&BLACK)
}

/// Redraws `dir/metrics.png` from `dir/metrics.jsonl`. Never fails the caller: a problem
/// (including a panic inside the drawing library) becomes a warning on `err`.
pub(crate) fn refresh_run_plot(dir: &Path, err: &mut dyn Write) {
    let drawn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write_run_plot(dir)))
        .unwrap_or_else(|_| Err("the drawing code panicked".to_owned()));
    if let Err(e) = drawn {
        let _ = writeln!(
            err,
            "warning: cannot draw {}: {e} (the run goes on)",
            dir.join("metrics.png").display()
        );
    }
}

/// Draws `dir/metrics.png` from `dir/metrics.jsonl`, replacing it atomically.
pub(crate) fn write_run_plot(dir: &Path) -> Result<(), String> {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let curves = RunCurves::parse(&text);
    let title = run_title(dir);
    let png = run_plot_png(&curves, &title)?;
    write_atomic(&dir.join("metrics.png"), &png)
        .map_err(|e| format!("cannot write {}: {e}", dir.join("metrics.png").display()))
}

/// `<graph name> / <run folder>` from `runs/<name>/<stamp>`.
fn run_title(dir: &Path) -> String {
    let name = |p: Option<&Path>| {
        p.and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let (parent, own) = (name(dir.parent()), name(Some(dir)));
    if parent.is_empty() {
        own
    } else {
        format!("{parent} / {own}")
    }
}

/// The series of a run's metrics.jsonl, by key suffix; x is the iteration (training lines) or
/// the number of iterations done (evaluations).
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct RunCurves {
    /// `loss/<node.port>`.
    pub(crate) losses: BTreeMap<String, Vec<(f64, f64)>>,
    /// `lr/<model>`.
    pub(crate) lrs: BTreeMap<String, Vec<(f64, f64)>>,
    /// `metric/<name>`, null (no value that step) left out.
    pub(crate) metrics: BTreeMap<String, Vec<(f64, f64)>>,
    /// `eval/<model>/miou`, in percent.
    pub(crate) miou: BTreeMap<String, Vec<(f64, f64)>>,
}

impl RunCurves {
    /// Reads every line that parses; a torn last line (a run being written) is skipped.
    pub(crate) fn parse(text: &str) -> RunCurves {
        let mut c = RunCurves::default();
        for line in text.lines() {
            let Ok(serde_json::Value::Object(v)) = serde_json::from_str(line) else {
                continue;
            };
            let Some(it) = v.get("iteration").and_then(serde_json::Value::as_f64) else {
                continue;
            };
            for (key, val) in &v {
                let Some(y) = val.as_f64().filter(|y| y.is_finite()) else {
                    continue;
                };
                let (map, x, y, name) = if let Some(n) = key.strip_prefix("loss/") {
                    (&mut c.losses, it, y, n)
                } else if let Some(n) = key.strip_prefix("lr/") {
                    (&mut c.lrs, it, y, n)
                } else if let Some(n) = key.strip_prefix("metric/") {
                    (&mut c.metrics, it, y, n)
                } else if let Some(n) = key
                    .strip_prefix("eval/")
                    .and_then(|r| r.strip_suffix("/miou"))
                {
                    (&mut c.miou, it + 1.0, 100.0 * y, n)
                } else {
                    continue;
                };
                map.entry(name.to_owned()).or_default().push((x, y));
            }
        }
        c
    }
}

/// Centred moving average over `2·half + 1` points (fewer at the ends).
pub(crate) fn moving_average(ys: &[f64], half: usize) -> Vec<f64> {
    let mut prefix = Vec::with_capacity(ys.len() + 1);
    prefix.push(0.0);
    for y in ys {
        prefix.push(prefix[prefix.len() - 1] + y);
    }
    (0..ys.len())
        .map(|i| {
            let lo = i.saturating_sub(half);
            let hi = (i + half + 1).min(ys.len());
            (prefix[hi] - prefix[lo]) / (hi - lo) as f64
        })
        .collect()
}

/// The smoothing half-window for `n` points: about 1/50 of the run each side.
fn half_window(n: usize) -> usize {
    (n / 50).clamp(1, 250)
}

/// A curve of a panel.
struct Line {
    /// Legend entry (`None`: not in the legend).
    label: Option<String>,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    /// Drawn faint and thin (a raw curve under its smoothed one).
    faint: bool,
    /// Circles at the points.
    markers: bool,
}

/// One chart of the figure.
struct Panel {
    title: String,
    y_desc: String,
    y: (f64, f64),
    /// Tick labels in scientific notation (learning rates).
    sci: bool,
    lines: Vec<Line>,
}

fn finite_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// The value below which a share `q` of `values` lies.
fn quantile(values: &[f64], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let k = ((v.len() - 1) as f64 * q).round() as usize;
    Some(v[k.min(v.len() - 1)])
}

/// Raw (faint) and smoothed curves of each series; y from 0 (or the lowest value) to the 99th
/// percentile of the raw values, so one spike does not flatten the rest.
fn smoothed_panel(title: &str, y_desc: &str, series: &BTreeMap<String, Vec<(f64, f64)>>) -> Panel {
    let mut lines = Vec::new();
    let mut raw_all = Vec::new();
    let mut smooth_max = f64::NEG_INFINITY;
    for (i, (name, pts)) in series.iter().enumerate() {
        let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
        let smooth = moving_average(&ys, half_window(ys.len()));
        smooth_max = smooth.iter().copied().fold(smooth_max, f64::max);
        raw_all.extend_from_slice(&ys);
        lines.push(Line {
            label: None,
            points: pts.clone(),
            color: color(i),
            faint: true,
            markers: false,
        });
        lines.push(Line {
            label: Some(name.clone()),
            points: pts.iter().map(|p| p.0).zip(smooth).collect(),
            color: color(i),
            faint: false,
            markers: false,
        });
    }
    let (lo, hi) = finite_range(raw_all.iter().copied()).unwrap_or((0.0, 1.0));
    let lo = lo.min(0.0);
    let top = quantile(&raw_all, 0.99).unwrap_or(hi).max(smooth_max);
    Panel {
        title: title.to_owned(),
        y_desc: y_desc.to_owned(),
        y: (lo, padded_top(lo, top)),
        sci: false,
        lines,
    }
}

fn padded_top(lo: f64, hi: f64) -> f64 {
    if hi > lo {
        hi + 0.05 * (hi - lo)
    } else {
        lo + 1.0
    }
}

/// The panels of a run's figure: losses, learning rates, mIoU, then the logged metrics (those
/// within [0, 1] share one panel; any other gets its own).
fn run_panels(c: &RunCurves) -> Vec<Panel> {
    let mut panels = Vec::new();
    if !c.losses.is_empty() {
        panels.push(smoothed_panel(
            "losses (smoothed; raw faint)",
            "loss",
            &c.losses,
        ));
    }
    if !c.lrs.is_empty() {
        let hi = finite_range(c.lrs.values().flatten().map(|p| p.1)).map_or(1.0, |r| r.1);
        panels.push(Panel {
            title: "learning rate".into(),
            y_desc: "lr".into(),
            y: (0.0, padded_top(0.0, hi)),
            sci: true,
            lines: c
                .lrs
                .iter()
                .enumerate()
                .map(|(i, (name, pts))| Line {
                    label: Some(name.clone()),
                    points: pts.clone(),
                    color: color(i),
                    faint: false,
                    markers: false,
                })
                .collect(),
        });
    }
    if !c.miou.is_empty() {
        let hi = finite_range(c.miou.values().flatten().map(|p| p.1)).map_or(10.0, |r| r.1);
        let top = ((hi + 5.0) / 10.0).ceil().clamp(1.0, 10.0) * 10.0;
        panels.push(Panel {
            title: "held-out mIoU".into(),
            y_desc: "mIoU (%)".into(),
            y: (0.0, top),
            sci: false,
            lines: c
                .miou
                .iter()
                .enumerate()
                .map(|(i, (name, pts))| Line {
                    label: Some(name.clone()),
                    points: pts.clone(),
                    color: color(i),
                    faint: false,
                    markers: true,
                })
                .collect(),
        });
    }
    let unit = |pts: &Vec<(f64, f64)>| pts.iter().all(|p| (0.0..=1.0).contains(&p.1));
    let (shared, own): (BTreeMap<_, _>, BTreeMap<_, _>) = c
        .metrics
        .iter()
        .filter(|(_, pts)| !pts.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .partition(|(_, pts)| unit(pts));
    if !shared.is_empty() {
        let mut p = smoothed_panel("metrics (smoothed; raw faint)", "value", &shared);
        p.y = (0.0, 1.0);
        panels.push(p);
    }
    for (name, pts) in own {
        let one = BTreeMap::from([(name.clone(), pts)]);
        panels.push(smoothed_panel(&format!("metric {name}"), "value", &one));
    }
    panels
}

/// The PNG of a run's curves.
pub(crate) fn run_plot_png(c: &RunCurves, title: &str) -> Result<Vec<u8>, String> {
    font_ready()?;
    let panels = run_panels(c);
    let cols = if panels.len() > 1 { 2 } else { 1 };
    let rows = panels.len().div_ceil(cols).max(1);
    let (w, h) = (640 * cols as u32, 40 + 340 * rows as u32);
    let x_max = [&c.losses, &c.lrs, &c.metrics, &c.miou]
        .iter()
        .flat_map(|m| m.values().flatten().map(|p| p.0))
        .fold(1.0f64, f64::max);
    render(w, h, |root| {
        root.fill(&WHITE).map_err(fail)?;
        let (top, body) = root.split_vertically(40);
        top.draw(&Text::new(
            title.to_owned(),
            (w as i32 / 2, 12),
            text(20).pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(fail)?;
        if panels.is_empty() {
            body.draw(&Text::new(
                "no metrics yet".to_owned(),
                (w as i32 / 2, 100),
                text(16).pos(Pos::new(HPos::Center, VPos::Top)),
            ))
            .map_err(fail)?;
            return Ok(());
        }
        for (area, panel) in body.split_evenly((rows, cols)).iter().zip(&panels) {
            draw_panel(area, panel, x_max)?;
        }
        Ok(())
    })
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    p: &Panel,
    x_max: f64,
) -> Result<(), String> {
    let (lo, hi) = p.y;
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, text(16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(if p.sci { 64 } else { 52 })
        .build_cartesian_2d(0.0..x_max, lo..hi)
        .map_err(fail)?;
    let sci = |v: &f64| {
        if *v == 0.0 {
            "0".to_owned()
        } else {
            format!("{v:.1e}")
        }
    };
    let plain = |v: &f64| {
        let span = hi - lo;
        if span >= 20.0 {
            format!("{v:.0}")
        } else if span >= 2.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.2}")
        }
    };
    let iters = |v: &f64| format!("{v:.0}");
    chart
        .configure_mesh()
        .x_desc("iteration")
        .y_desc(p.y_desc.as_str())
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&iters)
        .y_label_formatter(if p.sci { &sci } else { &plain })
        .label_style(text(12))
        .axis_desc_style(text(14))
        .light_line_style(RGBColor(236, 236, 236))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(fail)?;
    let clamp = |pts: &[(f64, f64)]| -> Vec<(f64, f64)> {
        pts.iter().map(|&(x, y)| (x, y.clamp(lo, hi))).collect()
    };
    let mut labelled = false;
    for l in &p.lines {
        let pts = clamp(&l.points);
        let style = if l.faint {
            l.color.mix(0.25).stroke_width(1)
        } else {
            l.color.stroke_width(2)
        };
        let drawn = chart
            .draw_series(LineSeries::new(pts.clone(), style))
            .map_err(fail)?;
        if let Some(label) = &l.label {
            labelled = true;
            let c = l.color;
            drawn.label(label.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
            });
        }
        if l.markers {
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, l.color.filled())))
                .map_err(fail)?;
        }
    }
    if labelled {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(text(12))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(190, 190, 190))
            .draw()
            .map_err(fail)?;
    }
    Ok(())
}

/// A bar of the results figure: the mean and the standard deviation over seeds (mIoU, %).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Bar {
    pub(crate) mean: f64,
    pub(crate) std: f64,
}

/// Grouped bars: one group per method, one bar per dataset (`values[method][dataset]`, `None`
/// where nothing ran).
#[derive(Debug, Clone)]
pub(crate) struct Bars {
    pub(crate) title: String,
    pub(crate) y_desc: String,
    pub(crate) methods: Vec<String>,
    pub(crate) datasets: Vec<String>,
    pub(crate) values: Vec<Vec<Option<Bar>>>,
}

/// The PNG of grouped bars with error bars (± std) and the mean written above each.
pub(crate) fn bars_png(b: &Bars) -> Result<Vec<u8>, String> {
    font_ready()?;
    let n = b.methods.len().max(1);
    let k = b.datasets.len().max(1);
    let (w, h) = ((120 + 120 * n as u32).max(720), 520);
    let top = b
        .values
        .iter()
        .flatten()
        .flatten()
        .map(|v| v.mean + v.std)
        .fold(0.0f64, f64::max);
    let y_hi = ((top + 5.0) / 10.0).ceil().clamp(1.0, 10.0) * 10.0;
    render(w, h, |root| {
        root.fill(&WHITE).map_err(fail)?;
        let mut chart = ChartBuilder::on(root)
            .caption(&b.title, text(18))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..n as f64, 0.0..y_hi)
            .map_err(fail)?;
        let y_fmt = |v: &f64| format!("{v:.0}");
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_labels(10)
            .y_label_formatter(&y_fmt)
            .y_desc(b.y_desc.as_str())
            .label_style(text(14))
            .axis_desc_style(text(14))
            .light_line_style(RGBColor(240, 240, 240))
            .bold_line_style(RGBColor(220, 220, 220))
            .draw()
            .map_err(fail)?;
        // Each group spans 80 % of its slot; bars split it evenly.
        let width = 0.8 / k as f64;
        let left = |m: usize, d: usize| m as f64 + 0.1 + d as f64 * width;
        for (d, name) in b.datasets.iter().enumerate() {
            let c = color(d);
            let rects: Vec<Rectangle<(f64, f64)>> = b
                .values
                .iter()
                .enumerate()
                .filter_map(|(m, row)| {
                    let v = row.get(d).copied().flatten()?;
                    let x0 = left(m, d) + 0.08 * width;
                    let x1 = left(m, d) + 0.92 * width;
                    Some(Rectangle::new(
                        [(x0, 0.0), (x1, v.mean.max(0.0))],
                        c.filled(),
                    ))
                })
                .collect();
            chart
                .draw_series(rects)
                .map_err(fail)?
                .label(name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], c.filled()));
        }
        // Error bars and values.
        for (m, row) in b.values.iter().enumerate() {
            for (d, v) in row.iter().enumerate() {
                let Some(v) = v else { continue };
                let x = left(m, d) + 0.5 * width;
                let cap = 0.15 * width;
                let (y0, y1) = ((v.mean - v.std).max(0.0), (v.mean + v.std).min(y_hi));
                if v.std > 0.0 {
                    for seg in [
                        vec![(x, y0), (x, y1)],
                        vec![(x - cap, y0), (x + cap, y0)],
                        vec![(x - cap, y1), (x + cap, y1)],
                    ] {
                        chart
                            .draw_series(std::iter::once(PathElement::new(
                                seg,
                                BLACK.stroke_width(1),
                            )))
                            .map_err(fail)?;
                    }
                }
                let at = chart.backend_coord(&(x, y1));
                root.draw(&Text::new(
                    format!("{:.1}", v.mean),
                    (at.0, at.1 - 4),
                    text(14).pos(Pos::new(HPos::Center, VPos::Bottom)),
                ))
                .map_err(fail)?;
            }
        }
        // Method names under their groups.
        for (m, name) in b.methods.iter().enumerate() {
            let at = chart.backend_coord(&(m as f64 + 0.5, 0.0));
            root.draw(&Text::new(
                name.clone(),
                (at.0, at.1 + 10),
                text(14).pos(Pos::new(HPos::Center, VPos::Top)),
            ))
            .map_err(fail)?;
        }
        if !b.datasets.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font(text(14))
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(190, 190, 190))
                .draw()
                .map_err(fail)?;
        }
        if b.methods.is_empty() {
            root.draw(&Text::new(
                "no runs yet".to_owned(),
                (w as i32 / 2, h as i32 / 2),
                text(18).pos(Pos::new(HPos::Center, VPos::Center)),
            ))
            .map_err(fail)?;
        }
        Ok(())
    })
}

/// Draws into a white RGB canvas of `w`×`h` and encodes it as PNG.
fn render(
    w: u32,
    h: u32,
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), String>,
) -> Result<Vec<u8>, String> {
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw(&root)?;
        root.present().map_err(fail)?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).ok_or("the canvas has the wrong size")?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(fail)?;
    Ok(png)
}

/// [`flowseg_engine::fsutil::write_atomic`] as an `io::Result` (the plots' callers report I/O).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    Ok(flowseg_engine::fsutil::write_atomic(path, bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_is_centred_and_shrinks_at_the_ends() {
        let m = moving_average(&[0.0, 3.0, 6.0, 9.0], 1);
        assert_eq!(m, vec![1.5, 3.0, 6.0, 7.5]);
        assert_eq!(moving_average(&[], 3), Vec::<f64>::new());
    }

    #[test]
    fn curves_read_losses_rates_metrics_and_evaluations() {
        let text = "{\"iteration\":0,\"time_s\":0.1,\"loss/sup.loss\":2.0,\"lr/student\":0.002,\"metric/acc\":null}\n\
                    {\"iteration\":1,\"time_s\":0.2,\"loss/sup.loss\":1.5,\"lr/student\":0.001,\"metric/acc\":0.5}\n\
                    {\"iteration\":1,\"eval/student/miou\":0.25,\"eval/student/iou\":[0.5,0.0]}\n\
                    {\"iteration\":2,\"loss/sup";
        let c = RunCurves::parse(text);
        assert_eq!(c.losses["sup.loss"], vec![(0.0, 2.0), (1.0, 1.5)]);
        assert_eq!(c.lrs["student"].len(), 2);
        assert_eq!(c.metrics["acc"], vec![(1.0, 0.5)]);
        assert_eq!(c.miou["student"], vec![(2.0, 25.0)]);
    }

    #[test]
    fn figures_are_pngs_even_when_empty() {
        let sig = b"\x89PNG\r\n\x1a\n";
        let empty = run_plot_png(&RunCurves::default(), "x").unwrap();
        assert!(empty.starts_with(sig));
        let mut c = RunCurves::default();
        c.losses.insert(
            "a.loss".into(),
            (0..100)
                .map(|i| (i as f64, 1.0 / (1.0 + i as f64)))
                .collect(),
        );
        c.metrics.insert("big".into(), vec![(0.0, 3.0), (1.0, 5.0)]);
        assert!(run_plot_png(&c, "t").unwrap().starts_with(sig));
        let b = Bars {
            title: "t".into(),
            y_desc: "mIoU (%)".into(),
            methods: vec!["supervised".into(), "fixmatch".into()],
            datasets: vec!["synthetic".into()],
            values: vec![
                vec![Some(Bar {
                    mean: 18.0,
                    std: 1.0,
                })],
                vec![None],
            ],
        };
        assert!(bars_png(&b).unwrap().starts_with(sig));
    }
}
