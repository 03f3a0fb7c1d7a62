//! PNG line charts for run folders (loss and metric curves, ROC), drawn with `imageproc` and
//! sv-data's bitmap font, so plots need no system fonts.

use std::path::Path;

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};
use imageproc::drawing::{draw_filled_rect_mut, draw_line_segment_mut};
use imageproc::rect::Rect;
use sv_data::generate::font::{draw_text, text_width};

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
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const INK: Rgb<u8> = Rgb([30, 30, 30]);

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.round() && v.abs() >= 1.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Draw a line chart to `path` (PNG). `y_range` fixes the y axis; otherwise it fits the data.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    y_range: Option<(f64, f64)>,
) -> Result<()> {
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let pts = series.iter().flat_map(|s| s.points.iter()).filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if let Some((a, b)) = y_range {
        (y0, y1) = (a, b);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-12 {
        y1 = y0 + 1.0;
    }
    let (pw, ph) = (W as f64 - LEFT - RIGHT, H as f64 - TOP - BOTTOM);
    let sx = |x: f64| (LEFT + (x - x0) / (x1 - x0) * pw) as f32;
    let sy = |y: f64| (TOP + ph - (y - y0) / (y1 - y0) * ph) as f32;
    // Grid and ticks.
    for k in 0..=5 {
        let f = k as f64 / 5.0;
        let (gx, gy) = (x0 + f * (x1 - x0), y0 + f * (y1 - y0));
        draw_line_segment_mut(&mut img, (sx(gx), TOP as f32), (sx(gx), (TOP + ph) as f32), Rgb([230, 230, 230]));
        draw_line_segment_mut(&mut img, (LEFT as f32, sy(gy)), ((LEFT + pw) as f32, sy(gy)), Rgb([230, 230, 230]));
        let xl = fmt_tick(gx);
        draw_text(&mut img, sx(gx) as i32 - text_width(&xl, 1) as i32 / 2, (TOP + ph + 6.0) as i32, 1, &xl, INK);
        let yl = fmt_tick(gy);
        draw_text(&mut img, LEFT as i32 - 6 - text_width(&yl, 1) as i32, sy(gy) as i32 - 3, 1, &yl, INK);
    }
    draw_line_segment_mut(&mut img, (LEFT as f32, TOP as f32), (LEFT as f32, (TOP + ph) as f32), INK);
    draw_line_segment_mut(&mut img, (LEFT as f32, (TOP + ph) as f32), ((LEFT + pw) as f32, (TOP + ph) as f32), INK);
    // Series, two pixels thick, clipped to the plot area.
    for s in series {
        let clip = |y: f64| y.clamp(y0, y1);
        for w in s.points.windows(2) {
            let (a, b) = (w[0], w[1]);
            if !(a.1.is_finite() && b.1.is_finite()) {
                continue;
            }
            for off in [0.0f32, 1.0] {
                draw_line_segment_mut(&mut img, (sx(a.0), sy(clip(a.1)) + off), (sx(b.0), sy(clip(b.1)) + off), s.color);
            }
        }
        if s.points.len() == 1 {
            let (x, y) = s.points[0];
            draw_filled_rect_mut(&mut img, Rect::at(sx(x) as i32 - 2, sy(clip(y)) as i32 - 2).of_size(5, 5), s.color);
        }
    }
    // Title, axis labels, legend.
    draw_text(&mut img, (W as i32 - text_width(title, 2) as i32) / 2, 10, 2, title, INK);
    draw_text(&mut img, (LEFT + pw / 2.0) as i32 - text_width(x_label, 1) as i32 / 2, H as i32 - 18, 1, x_label, INK);
    draw_text(&mut img, 6, (TOP - 14.0) as i32, 1, y_label, INK);
    let mut ly = TOP as i32 + 8;
    for s in series {
        let lx = (LEFT + pw) as i32 - 14 - text_width(&s.name, 1) as i32;
        draw_filled_rect_mut(&mut img, Rect::at(lx - 16, ly).of_size(10, 7), s.color);
        draw_text(&mut img, lx, ly, 1, &s.name, INK);
        ly += 12;
    }
    img.save(path).with_context(|| format!("cannot write plot {}", path.display()))
}

/// Grouped bar chart: one group per label in `groups`, one bar per series in each group.
pub fn bar_chart(path: &Path, title: &str, groups: &[String], series: &[(String, Vec<f64>)], y_range: (f64, f64)) -> Result<()> {
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let (pw, ph) = (W as f64 - LEFT - RIGHT, H as f64 - TOP - BOTTOM);
    let (y0, y1) = y_range;
    let sy = |y: f64| TOP + ph - ((y.clamp(y0, y1) - y0) / (y1 - y0)) * ph;
    for k in 0..=5 {
        let v = y0 + k as f64 / 5.0 * (y1 - y0);
        draw_line_segment_mut(&mut img, (LEFT as f32, sy(v) as f32), ((LEFT + pw) as f32, sy(v) as f32), Rgb([230, 230, 230]));
        let l = fmt_tick(v);
        draw_text(&mut img, LEFT as i32 - 6 - text_width(&l, 1) as i32, sy(v) as i32 - 3, 1, &l, INK);
    }
    let gw = pw / groups.len().max(1) as f64;
    let bw = (gw * 0.8 / series.len().max(1) as f64).max(1.0);
    for (g, name) in groups.iter().enumerate() {
        let gx = LEFT + g as f64 * gw + gw * 0.1;
        for (s, (_, vals)) in series.iter().enumerate() {
            let v = vals.get(g).copied().unwrap_or(f64::NAN);
            if !v.is_finite() {
                continue;
            }
            let (top, base) = (sy(v.max(y0)), sy(0.0f64.max(y0)));
            let (a, b) = (top.min(base), top.max(base));
            draw_filled_rect_mut(
                &mut img,
                Rect::at((gx + s as f64 * bw) as i32, a as i32).of_size((bw - 2.0).max(1.0) as u32, ((b - a) as u32).max(1)),
                PALETTE[s % PALETTE.len()],
            );
        }
        let label = name.to_uppercase();
        draw_text(&mut img, (gx + gw * 0.4) as i32 - text_width(&label, 1) as i32 / 2, (TOP + ph + 8.0) as i32, 1, &label, INK);
    }
    draw_line_segment_mut(&mut img, (LEFT as f32, (TOP + ph) as f32), ((LEFT + pw) as f32, (TOP + ph) as f32), INK);
    draw_text(&mut img, (W as i32 - text_width(title, 2) as i32) / 2, 10, 2, title, INK);
    let mut ly = TOP as i32 + 4;
    for (s, (name, _)) in series.iter().enumerate() {
        let lx = (LEFT + pw) as i32 - 14 - text_width(name, 1) as i32;
        draw_filled_rect_mut(&mut img, Rect::at(lx - 16, ly).of_size(10, 7), PALETTE[s % PALETTE.len()]);
        draw_text(&mut img, lx, ly, 1, name, INK);
        ly += 12;
    }
    img.save(path).with_context(|| format!("cannot write plot {}", path.display()))
}
