//! PNG charts for run folders (loss and metric curves, ROC, the comparison of experiments), drawn
//! with plotters on an in-memory bitmap and written with `image`. Axes get plotters' "nice" tick
//! values (steps of 1, 2 or 5 × 10^k), each chart a title, axis labels and a legend row under the
//! title, outside the data. Text is set in the Go Regular font embedded from `assets/` through
//! plotters' `ab_glyph` feature, so plots need no system fonts and no fontconfig (CI machines may
//! have none). plotters must not get its `ttf` feature anywhere in the build: with it, plotters
//! looks fonts up on the system instead of using the registered one.
//! (Over 500 lines: the two chart kinds and their tests on degenerate data.)

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use image::{ImageFormat, Rgb, RgbImage};
use plotters::backend::BitMapBackend;
use plotters::chart::ChartBuilder;
use plotters::coord::Shift;
use plotters::drawing::{DrawingArea, IntoDrawingArea};
use plotters::element::{Circle, PathElement, Rectangle};
use plotters::series::LineSeries;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{Color, FontStyle, IntoFont, RGBColor, TextStyle, WHITE, register_font};

/// One line of a chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: Rgb<u8>,
}

/// Colours for successive series.
pub const PALETTE: [Rgb<u8>; 6] = [
    Rgb([31, 119, 180]),
    Rgb([214, 39, 40]),
    Rgb([44, 160, 44]),
    Rgb([255, 127, 14]),
    Rgb([148, 103, 189]),
    Rgb([90, 90, 90]),
];

const W: u32 = 720;
const H: u32 = 440;
const INK: RGBColor = RGBColor(30, 30, 30);
const GRID: RGBColor = RGBColor(222, 222, 222);
const GRID_LIGHT: RGBColor = RGBColor(243, 243, 243);
const TITLE_SIZE: i32 = 20;
const TEXT_SIZE: i32 = 13;
const DESC_SIZE: i32 = 14;
/// plotters lays ab_glyph text out from a box of height size / 1.24 but puts the baseline at
/// size / 2 under its top, so text centred on a point sits about a fifth of its size too high:
/// y tick labels move down by this many pixels to line up with their ticks.
const Y_LABEL_NUDGE: i32 = 3;
/// Where the first legend row starts (under the title) and the pitch of legend rows.
const LEGEND_TOP: i32 = 38;
const LEGEND_ROW: i32 = 18;
const SWATCH_W: i32 = 22;

/// The family name plotters asks for by default; the embedded font is registered under it.
const FAMILY: &str = "sans-serif";
/// Go Regular (Bigelow & Holmes, BSD-style licence: assets/Go-Regular.LICENSE), 140 KB.
static FONT: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/Go-Regular.ttf"));

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Registers the embedded font, once per process, under every generic family name, so that no
/// text plotters draws falls back to a font lookup.
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        ["sans-serif", "serif", "monospace"]
            .into_iter()
            .all(|family| register_font(family, FontStyle::Normal, FONT).is_ok())
    });
    anyhow::ensure!(ok, "the embedded plot font (assets/Go-Regular.ttf) could not be parsed");
    Ok(())
}

fn rgb(c: Rgb<u8>) -> RGBColor {
    RGBColor(c.0[0], c.0[1], c.0[2])
}

fn text(size: i32, h: HPos, v: VPos) -> TextStyle<'static> {
    (FAMILY, size).into_font().color(&INK).pos(Pos::new(h, v))
}

/// The axis range for data spanning `lo..hi`, widened by `frac` of the span on each side. A flat
/// range (one value) gets ±10% of the value, or ±1 around 0; anything non-finite gives 0..1.
fn axis_range(lo: f64, hi: f64, frac: f64) -> (f64, f64) {
    let (lo, hi) = (lo.min(hi), lo.max(hi));
    if !(lo.is_finite() && hi.is_finite() && (hi - lo).is_finite()) {
        return (0.0, 1.0);
    }
    let (span, scale) = (hi - lo, lo.abs().max(hi.abs()));
    let (a, b) = if span <= scale * 1e-9 {
        let d = if scale > 0.0 { scale * 0.1 } else { 1.0 };
        (lo - d, hi + d)
    } else {
        (lo - span * frac, hi + span * frac)
    };
    // Padding next to f64::MAX can overflow; plotters needs a finite, non-empty range.
    if a.is_finite() && b.is_finite() && a < b { (a, b) } else { (0.0, 1.0) }
}

/// A tick label with just enough decimals for the ticks of an axis spanning `span` (plotters'
/// steps are 1, 2 or 5 × 10^k with at most 11 ticks), without trailing zeros: 0.2, 15, 0.015;
/// axes spanning more than 10^7 get scientific notation (2.5e7).
fn tick_label(v: f64, span: f64) -> String {
    fn trim(s: &str) -> &str {
        if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { s }
    }
    // Zero, or a rounding error away from it (plotters' ticks are sums of float steps).
    if v == 0.0 || v.abs() < span.abs() * 1e-9 {
        return "0".to_string();
    }
    let magnitude = if span > 0.0 && span.is_finite() { span.log10().floor() as i32 } else { 0 };
    if magnitude > 6 {
        let s = format!("{v:.2e}");
        return match s.split_once('e') {
            Some((mantissa, exponent)) => format!("{}e{exponent}", trim(mantissa)),
            None => s,
        };
    }
    let decimals = (2 - magnitude.max(-20)).clamp(0, 12) as usize;
    let s = format!("{v:.decimals$}");
    let s = trim(&s);
    if s == "-0" { "0".to_string() } else { s.to_string() }
}

/// The stretches of finite points of `points`, y clamped into `y0..=y1`: a NaN or infinite point
/// ends a stretch, so the line breaks there.
fn finite_runs(points: &[(f64, f64)], (y0, y1): (f64, f64)) -> Vec<Vec<(f64, f64)>> {
    let (mut runs, mut run) = (vec![], vec![]);
    for &(x, y) in points {
        if x.is_finite() && y.is_finite() {
            run.push((x, y.clamp(y0, y1)));
        } else if !run.is_empty() {
            runs.push(std::mem::take(&mut run));
        }
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

/// How a legend entry shows its colour.
#[derive(Clone, Copy)]
enum Swatch {
    Line,
    Block,
}

/// Draws the title and, under it, the legend: entries centred in rows, wrapped to the width.
/// Returns the height taken, where the chart below starts.
fn draw_header(root: &Area<'_>, title: &str, entries: &[(&str, RGBColor)], swatch: Swatch) -> Result<i32> {
    root.draw_text(title, &text(TITLE_SIZE, HPos::Center, VPos::Top), (W as i32 / 2, 10))?;
    let style = text(TEXT_SIZE, HPos::Left, VPos::Top);
    let (max_w, gap) = (W as i32 - 40, 18);
    let mut rows: Vec<Vec<(usize, i32)>> = vec![];
    let mut row_w = 0;
    for (i, (name, _)) in entries.iter().enumerate() {
        let w = SWATCH_W + 6 + root.estimate_text_size(name, &style)?.0 as i32;
        if rows.is_empty() || row_w + gap + w > max_w {
            rows.push(vec![]);
            row_w = -gap;
        }
        row_w += gap + w;
        if let Some(row) = rows.last_mut() {
            row.push((i, w));
        }
    }
    for (r, row) in rows.iter().enumerate() {
        let total = row.iter().map(|&(_, w)| w).sum::<i32>() + gap * (row.len() as i32 - 1);
        let y = LEGEND_TOP + r as i32 * LEGEND_ROW;
        // The visual middle of TEXT_SIZE text drawn from `y` (see Y_LABEL_NUDGE).
        let cy = y + TEXT_SIZE / 4;
        let mut x = (W as i32 - total) / 2;
        for &(i, w) in row {
            let (name, color) = &entries[i];
            match swatch {
                Swatch::Line => {
                    root.draw(&PathElement::new(vec![(x, cy), (x + SWATCH_W, cy)], color.stroke_width(3)))?
                }
                Swatch::Block => {
                    root.draw(&Rectangle::new([(x + 5, cy - 6), (x + SWATCH_W - 5, cy + 6)], color.filled()))?
                }
            }
            root.draw_text(name, &style, (x + SWATCH_W + 6, y))?;
            x += w + gap;
        }
    }
    Ok(LEGEND_TOP + rows.len() as i32 * LEGEND_ROW)
}

/// Axis ranges of a line chart and the most ticks the x axis may get.
struct Frame {
    x: (f64, f64),
    y: (f64, f64),
    x_ticks: usize,
}

fn draw_line_chart(
    root: &Area<'_>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    frame: &Frame,
) -> Result<()> {
    root.fill(&WHITE)?;
    let entries: Vec<(&str, RGBColor)> = series.iter().map(|s| (s.name.as_str(), rgb(s.color))).collect();
    let top = draw_header(root, title, &entries, Swatch::Line)?;
    let (_, body) = root.split_vertically(top);
    let ((x0, x1), (y0, y1)) = (frame.x, frame.y);
    let mut chart = ChartBuilder::on(&body)
        .margin_top(6)
        .margin_left(10)
        .margin_right(24)
        .margin_bottom(8)
        .x_label_area_size(46)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    let x_fmt = |v: &f64| tick_label(*v, x1 - x0);
    let y_fmt = |v: &f64| tick_label(*v, y1 - y0);
    chart
        .configure_mesh()
        .x_labels(frame.x_ticks)
        .y_labels(11)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(text(TEXT_SIZE, HPos::Center, VPos::Center))
        .axis_desc_style(text(DESC_SIZE, HPos::Center, VPos::Center))
        .bold_line_style(GRID)
        .light_line_style(GRID_LIGHT)
        .max_light_lines(4)
        .axis_style(INK)
        .set_all_tick_mark_size(4)
        .y_label_offset(Y_LABEL_NUDGE)
        .draw()?;
    for s in series {
        let color = rgb(s.color);
        for run in finite_runs(&s.points, (y0, y1)) {
            if run.len() > 1 {
                chart.draw_series(LineSeries::new(run, color.stroke_width(2)))?;
            } else {
                // A lone point (a one-point series, or one between NaNs) has no line: mark it.
                chart.draw_series(run.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
            }
        }
    }
    root.present()?;
    Ok(())
}

/// Draw a line chart to `path` (PNG). `y_range` fixes the y axis (points outside it are clamped
/// to its edges); otherwise it fits the data. NaN or infinite points are skipped, breaking the line.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    y_range: Option<(f64, f64)>,
) -> Result<()> {
    ensure_font()?;
    let (mut xs, mut ys): (Option<(f64, f64)>, Option<(f64, f64)>) = (None, None);
    let mut x_integer = true;
    for &(x, y) in series.iter().flat_map(|s| &s.points).filter(|p| p.0.is_finite() && p.1.is_finite()) {
        xs = Some(xs.map_or((x, x), |(lo, hi)| (lo.min(x), hi.max(x))));
        ys = Some(ys.map_or((y, y), |(lo, hi)| (lo.min(y), hi.max(y))));
        x_integer &= x.fract() == 0.0;
    }
    let x = xs.map_or((0.0, 1.0), |(lo, hi)| axis_range(lo, hi, 0.0));
    let y = match y_range {
        Some((lo, hi)) => axis_range(lo, hi, 0.0),
        None => ys.map_or((0.0, 1.0), |(lo, hi)| axis_range(lo, hi, 0.05)),
    };
    // Whole-number x (epochs): at most one tick per unit, so that no tick reads 2.5 epochs.
    let x_ticks = if x_integer && xs.is_some() { ((x.1 - x.0).floor() + 1.0).clamp(2.0, 11.0) as usize } else { 11 };
    let mut buf = vec![255u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        draw_line_chart(&root, title, x_label, y_label, series, &Frame { x, y, x_ticks })
            .with_context(|| format!("cannot draw plot {}", path.display()))?;
    }
    save_png(path, buf)
}

/// `name` in the largest text size from TEXT_SIZE down to 9 that fits in `max_w` pixels, cut
/// short with an ellipsis where even size 9 does not fit.
fn fit_label(root: &Area<'_>, name: &str, max_w: i32) -> Result<(String, TextStyle<'static>)> {
    for size in (9..=TEXT_SIZE).rev() {
        let style = text(size, HPos::Center, VPos::Top);
        if root.estimate_text_size(name, &style)?.0 as i32 <= max_w {
            return Ok((name.to_string(), style));
        }
    }
    let style = text(9, HPos::Center, VPos::Top);
    let mut chars: Vec<char> = name.chars().collect();
    while chars.pop().is_some() {
        let cut = format!("{}…", chars.iter().collect::<String>());
        if root.estimate_text_size(&cut, &style)?.0 as i32 <= max_w {
            return Ok((cut, style));
        }
    }
    Ok((String::new(), style))
}

fn draw_bar_chart(
    root: &Area<'_>,
    title: &str,
    groups: &[String],
    series: &[(String, Vec<f64>)],
    (y0, y1): (f64, f64),
) -> Result<()> {
    root.fill(&WHITE)?;
    let colors: Vec<RGBColor> = (0..series.len()).map(|s| rgb(PALETTE[s % PALETTE.len()])).collect();
    let entries: Vec<(&str, RGBColor)> = series.iter().zip(&colors).map(|((name, _), &c)| (name.as_str(), c)).collect();
    let top = draw_header(root, title, &entries, Swatch::Block)?;
    let (_, body) = root.split_vertically(top);
    // Group g spans x in g..g + 1; its bars share the middle 80%.
    let mut chart = ChartBuilder::on(&body)
        .margin_top(6)
        .margin_left(10)
        .margin_right(24)
        .margin_bottom(8)
        .x_label_area_size(34)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..groups.len().max(1) as f64, y0..y1)?;
    let y_fmt = |v: &f64| tick_label(*v, y1 - y0);
    // No x ticks: the group names below are the x labels.
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(11)
        .y_label_formatter(&y_fmt)
        .label_style(text(TEXT_SIZE, HPos::Center, VPos::Center))
        .bold_line_style(GRID)
        .light_line_style(GRID_LIGHT)
        .max_light_lines(4)
        .axis_style(INK)
        .set_all_tick_mark_size(4)
        .y_label_offset(Y_LABEL_NUDGE)
        .draw()?;
    // Bars rise from 0 (or the bottom of the range when it lies above 0), clamped to the range,
    // and are drawn in pixels so that each keeps at least one pixel of height and a pixel of gap.
    let base = 0f64.max(y0).min(y1);
    let slot = 0.8 / series.len().max(1) as f64;
    for g in 0..groups.len() {
        for (s, (_, values)) in series.iter().enumerate() {
            let v = values.get(g).copied().unwrap_or(f64::NAN);
            if !v.is_finite() {
                continue;
            }
            let left = g as f64 + 0.1 + s as f64 * slot;
            let (xa, y_base) = chart.backend_coord(&(left, base));
            let (xb, y_top) = chart.backend_coord(&(left + slot, v.clamp(y0, y1)));
            let xb = (xb - 1).max(xa + 1);
            let (ya, yb) = (y_base.min(y_top), y_base.max(y_top) + 1);
            root.draw(&Rectangle::new([(xa, ya), (xb, yb)], colors[s].filled()))?;
        }
    }
    let (left_px, bottom_px) = chart.backend_coord(&(0.0, y0));
    let group_px = chart.backend_coord(&(1.0, y0)).0 - left_px;
    for (g, name) in groups.iter().enumerate() {
        let (label, style) = fit_label(root, name, group_px - 6)?;
        let cx = chart.backend_coord(&(g as f64 + 0.5, y0)).0;
        root.draw_text(&label, &style, (cx, bottom_px + 8))?;
    }
    root.present()?;
    Ok(())
}

/// Grouped bar chart: one group per label in `groups`, one bar per series in each group.
pub fn bar_chart(
    path: &Path,
    title: &str,
    groups: &[String],
    series: &[(String, Vec<f64>)],
    y_range: (f64, f64),
) -> Result<()> {
    ensure_font()?;
    let y = axis_range(y_range.0, y_range.1, 0.0);
    let mut buf = vec![255u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        draw_bar_chart(&root, title, groups, series, y)
            .with_context(|| format!("cannot draw plot {}", path.display()))?;
    }
    save_png(path, buf)
}

fn save_png(path: &Path, buf: Vec<u8>) -> Result<()> {
    let img = RgbImage::from_raw(W, H, buf)
        .with_context(|| format!("plot buffer of the wrong size for {}", path.display()))?;
    img.save_with_format(path, ImageFormat::Png).with_context(|| format!("cannot write plot {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(path: &Path) -> RgbImage {
        let img = image::open(path).unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display())).to_rgb8();
        assert_eq!(img.dimensions(), (W, H), "{}", path.display());
        img
    }

    fn near(p: &Rgb<u8>, c: Rgb<u8>) -> bool {
        p.0.iter().zip(c.0).all(|(&a, b)| a.abs_diff(b) <= 12)
    }

    fn dark(p: &Rgb<u8>) -> bool {
        p.0.iter().all(|&c| c < 100)
    }

    /// Dark pixels in the title band (rows 0..32, above the legend and the axes): rendered text.
    fn title_ink(img: &RgbImage) -> usize {
        (0..32).flat_map(|y| (0..W).map(move |x| (x, y))).filter(|&(x, y)| dark(img.get_pixel(x, y))).count()
    }

    fn count(img: &RgbImage, c: Rgb<u8>) -> usize {
        img.pixels().filter(|p| near(p, c)).count()
    }

    #[test]
    fn line_chart_has_text_axes_and_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let series = [
            Series {
                name: "TRAIN".into(),
                points: (0..20).map(|e| (e as f64, 1.0 / (1.0 + e as f64))).collect(),
                color: PALETTE[0],
            },
            Series {
                name: "VAL".into(),
                points: vec![
                    (0.0, 0.9),
                    (1.0, 0.7),
                    (2.0, f64::NAN),
                    (3.0, 0.5),
                    (4.0, 0.45),
                    (5.0, f64::INFINITY),
                    (6.0, 0.4),
                ],
                color: PALETTE[1],
            },
        ];
        line_chart(&path, "Loss", "epoch", "BCE", &series, None).unwrap();
        let img = load(&path);
        assert!(title_ink(&img) > 30, "no title text drawn (font not registered?)");
        // Axes, tick labels, axis labels and legend text.
        assert!(img.pixels().filter(|p| dark(p)).count() > 800);
        assert!(count(&img, PALETTE[0]) > 300, "TRAIN line missing");
        assert!(count(&img, PALETTE[1]) > 120, "VAL line and its lone point missing");
        assert!(img.pixels().filter(|p| p.0 == [255, 255, 255]).count() > (W * H / 2) as usize, "background not white");
    }

    #[test]
    fn degenerate_line_charts_still_write_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let one = |points: Vec<(f64, f64)>| vec![Series { name: "A".into(), points, color: PALETTE[2] }];
        let cases: Vec<(&str, Vec<Series>, Option<(f64, f64)>)> = vec![
            ("no-series", vec![], None),
            ("no-points", one(vec![]), None),
            ("all-nan", one(vec![(0.0, f64::NAN), (1.0, f64::NAN)]), Some((-0.1, 1.0))),
            ("constant", one(vec![(0.0, 0.5), (1.0, 0.5), (2.0, 0.5)]), None),
            ("zeros", one(vec![(0.0, 0.0), (0.0, 0.0)]), None),
            ("one-point", one(vec![(3.0, 0.25)]), None),
            ("flat-range", one(vec![(0.0, 0.2), (1.0, 3.0)]), Some((1.0, 1.0))),
            ("nan-range", one(vec![(0.0, 0.2), (1.0, 0.3)]), Some((f64::NAN, f64::NAN))),
            ("large", one(vec![(0.0, -2e9), (1.0, 3e9)]), None),
        ];
        for (name, series, range) in cases {
            let path = dir.path().join(format!("{name}.png"));
            line_chart(&path, name, "X", "Y", &series, range).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            let img = load(&path);
            assert!(title_ink(&img) > 10, "{name}: no title text");
        }
    }

    #[test]
    fn bar_chart_has_bars_labels_and_legend() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("comparison.png");
        let groups = vec![
            "baseline".to_string(),
            "hardneg".into(),
            "a-rather-long-experiment-name-that-cannot-fit-its-group".into(),
        ];
        let series = vec![
            ("ACCURACY".to_string(), vec![0.9, 0.92, 0.5]),
            ("MCC".to_string(), vec![0.8, f64::NAN, -0.2]),
            // Shorter than `groups`: the missing values are skipped like NaN.
            ("REWARD".to_string(), vec![0.7]),
        ];
        bar_chart(&path, "Test metrics", &groups, &series, (0.0, 1.0)).unwrap();
        let img = load(&path);
        assert!(title_ink(&img) > 30, "no title text drawn");
        assert!(img.pixels().filter(|p| dark(p)).count() > 500);
        assert!(count(&img, PALETTE[0]) > 3000, "ACCURACY bars missing");
        assert!(count(&img, PALETTE[1]) > 1000, "MCC bar missing");
        assert!(count(&img, PALETTE[2]) > 1000, "REWARD bar missing");

        let empty = dir.path().join("empty.png");
        bar_chart(&empty, "Empty", &[], &[], (0.0, 1.0)).unwrap();
        load(&empty);
        let flat = dir.path().join("flat.png");
        bar_chart(&flat, "Flat", &groups, &series, (0.5, 0.5)).unwrap();
        load(&flat);
    }

    #[test]
    fn ticks_and_ranges() {
        assert_eq!(tick_label(0.2, 1.1), "0.2");
        assert_eq!(tick_label(0.1 + 0.2, 1.0), "0.3");
        assert_eq!(tick_label(15.0, 30.0), "15");
        assert_eq!(tick_label(-0.0, 1.0), "0");
        assert_eq!(tick_label(250000.0, 1e6), "250000");
        assert_eq!(tick_label(0.015, 0.05), "0.015");
        assert_eq!(tick_label(2.5e7, 1e8), "2.5e7");
        assert_eq!(tick_label(-3e9, 6e9), "-3e9");
        assert_eq!(axis_range(0.0, 0.0, 0.05), (-1.0, 1.0));
        assert_eq!(axis_range(2.0, 1.0, 0.0), (1.0, 2.0));
        assert_eq!(axis_range(f64::NAN, f64::NAN, 0.0), (0.0, 1.0));
        assert_eq!(axis_range(0.0, 10.0, 0.1), (-1.0, 11.0));
        let runs = finite_runs(&[(0.0, 1.0), (1.0, f64::NAN), (2.0, 5.0), (3.0, -5.0)], (0.0, 2.0));
        assert_eq!(runs, vec![vec![(0.0, 1.0)], vec![(2.0, 2.0), (3.0, 0.0)]]);
    }
}
