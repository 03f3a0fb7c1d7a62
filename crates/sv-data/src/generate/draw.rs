//! Drawing of street-scene parts in a simple one-point perspective.
//!
//! The road is a trapezoid from the bottom of the frame to a vanishing point on the horizon.
//! An object stands at depth `t` (0 = horizon, 1 = bottom edge) and lateral position `u`
//! (−1 and +1 are the road edges), and is scaled by `t`.

use image::{Rgb, RgbImage};
use imageproc::drawing::{
    draw_filled_circle_mut, draw_filled_ellipse_mut, draw_filled_rect_mut, draw_line_segment_mut, draw_polygon_mut,
};
use imageproc::point::Point;
use imageproc::rect::Rect;
use rand::RngExt;
use rand::rngs::StdRng;

use super::font;

/// Safety orange used on cones, barriers and work-zone signs.
pub const SAFETY_ORANGE: Rgb<u8> = Rgb([255, 102, 0]);
pub const WHITE: Rgb<u8> = Rgb([240, 240, 240]);
pub const BLACK: Rgb<u8> = Rgb([20, 20, 20]);

/// The frame's perspective.
#[derive(Debug, Clone, Copy)]
pub struct View {
    pub w: f32,
    pub h: f32,
    pub horizon: f32,
    pub vanish_x: f32,
    pub half_top: f32,
    pub half_bottom: f32,
}

impl View {
    pub fn y(&self, t: f32) -> f32 {
        self.horizon + t * (self.h - self.horizon)
    }
    pub fn half_width(&self, t: f32) -> f32 {
        self.half_top + t * (self.half_bottom - self.half_top)
    }
    pub fn x(&self, t: f32, u: f32) -> f32 {
        self.vanish_x + u * self.half_width(t)
    }
    /// Pixels per "metre-ish" unit at depth t; 1.0 ≈ a 240-pixel-high frame's foreground.
    pub fn scale(&self, t: f32) -> f32 {
        (1.5 * t * self.h / 240.0).max(0.05)
    }
}

fn pt(x: f32, y: f32) -> Point<i32> {
    Point::new(x.round() as i32, y.round() as i32)
}

/// A polygon, skipping degenerate ones (imageproc refuses first == last).
pub fn poly(img: &mut RgbImage, pts: &[(f32, f32)], color: Rgb<u8>) {
    let mut p: Vec<Point<i32>> = pts.iter().map(|&(x, y)| pt(x, y)).collect();
    p.dedup();
    while p.len() > 1 && p.first() == p.last() {
        p.pop();
    }
    if p.len() >= 3 {
        draw_polygon_mut(img, &p, color);
    }
}

pub fn rect(img: &mut RgbImage, x: f32, y: f32, w: f32, h: f32, color: Rgb<u8>) {
    let (w, h) = (w.round().max(1.0) as u32, h.round().max(1.0) as u32);
    draw_filled_rect_mut(img, Rect::at(x.round() as i32, y.round() as i32).of_size(w, h), color);
}

pub fn lerp(a: Rgb<u8>, b: Rgb<u8>, t: f32) -> Rgb<u8> {
    let t = t.clamp(0.0, 1.0);
    Rgb(std::array::from_fn(|i| (a.0[i] as f32 * (1.0 - t) + b.0[i] as f32 * t).round() as u8))
}

/// Sky gradient, ground, road surface, edges and lane dashes.
pub fn street(
    img: &mut RgbImage,
    v: &View,
    sky: (Rgb<u8>, Rgb<u8>),
    ground: Rgb<u8>,
    road: Rgb<u8>,
    yellow_center: bool,
) {
    let (w, h) = img.dimensions();
    let hz = v.horizon as u32;
    for y in 0..h {
        let c = if y < hz { lerp(sky.0, sky.1, y as f32 / v.horizon.max(1.0)) } else { ground };
        for x in 0..w {
            img.put_pixel(x, y, c);
        }
    }
    poly(
        img,
        &[(v.x(0.0, -1.0), v.horizon), (v.x(0.0, 1.0), v.horizon), (v.x(1.0, 1.0), v.h), (v.x(1.0, -1.0), v.h)],
        road,
    );
    // Edge lines.
    for u in [-0.95f32, 0.95] {
        draw_line_segment_mut(img, (v.x(0.0, u), v.horizon), (v.x(1.0, u), v.h), Rgb([210, 210, 210]));
    }
    // Dashed centre line, dash lengths shrinking with depth.
    let line = if yellow_center { Rgb([230, 200, 40]) } else { Rgb([235, 235, 235]) };
    let mut t = 0.02f32;
    while t < 1.0 {
        let t2 = (t + 0.06 * (0.3 + t)).min(1.0);
        let (w0, w1) = (0.02 * v.half_width(t), 0.02 * v.half_width(t2));
        poly(
            img,
            &[
                (v.x(t, 0.0) - w0, v.y(t)),
                (v.x(t, 0.0) + w0, v.y(t)),
                (v.x(t2, 0.0) + w1, v.y(t2)),
                (v.x(t2, 0.0) - w1, v.y(t2)),
            ],
            line,
        );
        t = t2 + 0.05 * (0.3 + t);
    }
}

/// A row of buildings along the horizon on both sides.
pub fn buildings(img: &mut RgbImage, v: &View, rng: &mut StdRng, palette: &[Rgb<u8>], lit_windows: bool) {
    for side in [-1.0f32, 1.0] {
        let mut x = if side < 0.0 { 0.0 } else { v.x(0.0, 1.2) };
        let end = if side < 0.0 { v.x(0.0, -1.2) } else { v.w };
        while x < end {
            let bw = rng.random_range(0.06..0.16) * v.w;
            let bh = rng.random_range(0.15..0.6) * v.horizon;
            let color = palette[rng.random_range(0..palette.len())];
            let top = v.horizon - bh + 2.0;
            rect(img, x, top, bw.min(end - x + 1.0), bh, color);
            let win = if lit_windows { Rgb([240, 220, 140]) } else { lerp(color, Rgb([60, 80, 110]), 0.6) };
            let mut wy = top + 4.0;
            while wy + 4.0 < v.horizon - 2.0 {
                let mut wx = x + 3.0;
                while wx + 4.0 < (x + bw).min(end) - 2.0 {
                    if !lit_windows || rng.random_bool(0.4) {
                        rect(img, wx, wy, 3.0, 3.0, win);
                    }
                    wx += 7.0;
                }
                wy += 8.0;
            }
            x += bw + rng.random_range(0.0..0.02) * v.w;
        }
    }
}

pub fn tree(img: &mut RgbImage, v: &View, t: f32, u: f32, canopy: Rgb<u8>) {
    let s = v.scale(t);
    let (x, y) = (v.x(t, u), v.y(t));
    rect(img, x - 2.0 * s, y - 30.0 * s, 4.0 * s, 30.0 * s, Rgb([88, 72, 60]));
    draw_filled_circle_mut(img, (x as i32, (y - 38.0 * s) as i32), (14.0 * s).max(1.0) as i32, canopy);
}

pub fn car(img: &mut RgbImage, v: &View, t: f32, u: f32, body: Rgb<u8>, headlights: bool) {
    let s = v.scale(t);
    let (x, y) = (v.x(t, u), v.y(t));
    let (w, h) = (44.0 * s, 20.0 * s);
    rect(img, x - w / 2.0, y - h, w, h * 0.7, body);
    poly(
        img,
        &[
            (x - w * 0.32, y - h * 0.7),
            (x + w * 0.32, y - h * 0.7),
            (x + w * 0.22, y - h * 1.15),
            (x - w * 0.22, y - h * 1.15),
        ],
        lerp(body, BLACK, 0.25),
    );
    rect(img, x - w * 0.25, y - h * 1.08, w * 0.5, h * 0.32, Rgb([70, 90, 110]));
    for dx in [-0.32f32, 0.32] {
        draw_filled_circle_mut(img, ((x + dx * w) as i32, (y - h * 0.3) as i32), (4.5 * s).max(1.0) as i32, BLACK);
    }
    let lamp = if headlights { Rgb([255, 250, 220]) } else { Rgb([200, 40, 30]) };
    for dx in [-0.42f32, 0.36] {
        rect(img, x + dx * w, y - h * 0.6, 3.0 * s, 2.5 * s, lamp);
    }
}

pub fn cone(img: &mut RgbImage, v: &View, t: f32, u: f32) {
    let s = v.scale(t);
    let (x, y) = (v.x(t, u), v.y(t));
    let h = 22.0 * s;
    rect(img, x - 7.0 * s, y - 2.0 * s, 14.0 * s, 2.5 * s, BLACK);
    poly(
        img,
        &[(x - 5.5 * s, y - 2.0 * s), (x + 5.5 * s, y - 2.0 * s), (x + 1.0 * s, y - h), (x - 1.0 * s, y - h)],
        SAFETY_ORANGE,
    );
    for (a, b) in [(0.35f32, 0.47f32), (0.6, 0.7)] {
        let (w0, w1) = (5.5 * s * (1.0 - a) + s * a, 5.5 * s * (1.0 - b) + s * b);
        poly(img, &[(x - w0, y - h * a), (x + w0, y - h * a), (x + w1, y - h * b), (x - w1, y - h * b)], WHITE);
    }
}

pub fn barrier(img: &mut RgbImage, v: &View, t: f32, u: f32) {
    let s = v.scale(t);
    let (x, y) = (v.x(t, u), v.y(t));
    let (w, h) = (50.0 * s, 24.0 * s);
    for dx in [-0.4f32, 0.4] {
        rect(img, x + dx * w - 1.5 * s, y - h, 3.0 * s, h, Rgb([120, 120, 120]));
    }
    for row in [0.95f32, 0.6] {
        let by = y - h * row;
        let stripes = 6;
        for k in 0..stripes {
            let c = if k % 2 == 0 { SAFETY_ORANGE } else { WHITE };
            rect(img, x - w / 2.0 + k as f32 * w / stripes as f32, by, w / stripes as f32 + 1.0, h * 0.2, c);
        }
    }
}

/// A diamond work-zone sign ("ROAD WORK", "DETOUR") on a pole.
pub fn diamond_sign(img: &mut RgbImage, v: &View, t: f32, u: f32, lines: &[&str]) {
    let s = v.scale(t);
    let (x, y) = (v.x(t, u), v.y(t));
    let r = 22.0 * s;
    let cy = y - 40.0 * s - r;
    rect(img, x - 1.5 * s, cy, 3.0 * s, y - cy, Rgb([140, 140, 140]));
    poly(img, &[(x, cy - r - 2.0), (x + r + 2.0, cy), (x, cy + r + 2.0), (x - r - 2.0, cy)], BLACK);
    poly(img, &[(x, cy - r), (x + r, cy), (x, cy + r), (x - r, cy)], SAFETY_ORANGE);
    text_block(img, x, cy, r * 1.1, lines);
}

/// A rectangular sign, e.g. "END ROAD WORK", with a given face colour.
pub fn rect_sign(img: &mut RgbImage, v: &View, t: f32, u: f32, lines: &[&str], face: Rgb<u8>) {
    let s = v.scale(t);
    let (x, y) = (v.x(t, u), v.y(t));
    let (w, h) = (56.0 * s, 14.0 * s * lines.len() as f32 + 6.0 * s);
    let top = y - 36.0 * s - h;
    rect(img, x - 1.5 * s, top, 3.0 * s, y - top, Rgb([140, 140, 140]));
    rect(img, x - w / 2.0 - 1.0, top - 1.0, w + 2.0, h + 2.0, BLACK);
    rect(img, x - w / 2.0, top, w, h, face);
    text_block(img, x, top + h / 2.0, w * 0.9, lines);
}

/// Centred lines of text fitting in `max_w`.
fn text_block(img: &mut RgbImage, cx: f32, cy: f32, max_w: f32, lines: &[&str]) {
    let longest = lines.iter().map(|l| font::text_width(l, 1)).max().unwrap_or(1).max(1);
    let scale = ((max_w / longest as f32).floor() as u32).max(1);
    let line_h = 9 * scale as i32;
    let total = line_h * lines.len() as i32 - 2 * scale as i32;
    for (i, l) in lines.iter().enumerate() {
        let tw = font::text_width(l, scale) as i32;
        font::draw_text(img, cx as i32 - tw / 2, cy as i32 - total / 2 + i as i32 * line_h, scale, l, BLACK);
    }
}

pub fn excavator(img: &mut RgbImage, v: &View, t: f32, u: f32, facing_left: bool) {
    let s = v.scale(t);
    let (x, y) = (v.x(t, u), v.y(t));
    let f = if facing_left { -1.0 } else { 1.0 };
    let yellow = Rgb([235, 185, 20]);
    rect(img, x - 30.0 * s, y - 10.0 * s, 60.0 * s, 10.0 * s, Rgb([40, 40, 40]));
    rect(img, x - 26.0 * s, y - 26.0 * s, 52.0 * s, 16.0 * s, yellow);
    rect(img, x - f * 20.0 * s - 9.0 * s, y - 44.0 * s, 18.0 * s, 18.0 * s, yellow);
    rect(img, x - f * 20.0 * s - 6.0 * s, y - 41.0 * s, 12.0 * s, 9.0 * s, Rgb([80, 110, 130]));
    let (ax, ay) = (x + f * 10.0 * s, y - 24.0 * s);
    let (ex, ey) = (x + f * 42.0 * s, y - 52.0 * s);
    let (bx, by) = (x + f * 58.0 * s, y - 14.0 * s);
    draw_thick(img, (ax, ay), (ex, ey), 4.0 * s, yellow);
    draw_thick(img, (ex, ey), (bx, by), 3.0 * s, yellow);
    poly(img, &[(bx - 6.0 * s, by), (bx + 6.0 * s, by), (bx + f * 4.0 * s, by + 8.0 * s)], Rgb([60, 60, 60]));
}

fn draw_thick(img: &mut RgbImage, a: (f32, f32), b: (f32, f32), width: f32, color: Rgb<u8>) {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len = (dx * dx + dy * dy).sqrt().max(1e-3);
    let (nx, ny) = (-dy / len * width / 2.0, dx / len * width / 2.0);
    poly(img, &[(a.0 + nx, a.1 + ny), (b.0 + nx, b.1 + ny), (b.0 - nx, b.1 - ny), (a.0 - nx, a.1 - ny)], color);
}

/// A worker in a high-visibility vest and helmet.
pub fn worker(img: &mut RgbImage, v: &View, t: f32, u: f32, vest: Rgb<u8>) {
    let s = v.scale(t);
    let (x, y) = (v.x(t, u), v.y(t));
    rect(img, x - 4.0 * s, y - 16.0 * s, 3.0 * s, 16.0 * s, Rgb([40, 50, 80]));
    rect(img, x + 1.0 * s, y - 16.0 * s, 3.0 * s, 16.0 * s, Rgb([40, 50, 80]));
    rect(img, x - 5.5 * s, y - 32.0 * s, 11.0 * s, 17.0 * s, vest);
    rect(img, x - 5.5 * s, y - 25.0 * s, 11.0 * s, 2.0 * s, Rgb([220, 220, 220]));
    draw_filled_circle_mut(img, (x as i32, (y - 36.0 * s) as i32), (3.5 * s).max(1.0) as i32, Rgb([200, 160, 130]));
    draw_filled_ellipse_mut(
        img,
        (x as i32, (y - 39.0 * s) as i32),
        (4.5 * s).max(1.0) as i32,
        (2.0 * s).max(1.0) as i32,
        Rgb([250, 250, 250]),
    );
}

/// An orange street bin (a hard-negative orange object).
pub fn bin(img: &mut RgbImage, v: &View, t: f32, u: f32) {
    let s = v.scale(t);
    let (x, y) = (v.x(t, u), v.y(t));
    rect(img, x - 6.0 * s, y - 18.0 * s, 12.0 * s, 18.0 * s, Rgb([250, 110, 10]));
    rect(img, x - 7.0 * s, y - 20.0 * s, 14.0 * s, 3.0 * s, Rgb([60, 60, 60]));
}

/// A streetlight glow for night scenes.
pub fn street_light(img: &mut RgbImage, v: &View, t: f32, u: f32) {
    let s = v.scale(t);
    let (x, y) = (v.x(t, u), v.y(t));
    rect(img, x - 1.0 * s, y - 70.0 * s, 2.0 * s, 70.0 * s, Rgb([70, 70, 70]));
    draw_filled_circle_mut(img, (x as i32, (y - 70.0 * s) as i32), (5.0 * s).max(1.0) as i32, Rgb([255, 240, 190]));
}
