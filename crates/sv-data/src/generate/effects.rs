//! Light and weather applied to a drawn scene.

use image::{Rgb, RgbImage};
use imageproc::drawing::draw_line_segment_mut;
use rand::RngExt;
use rand::rngs::StdRng;

use super::draw::View;

/// Darken and tint for the time of day (`day` leaves the image alone).
pub fn light(img: &mut RgbImage, time: &str) {
    let gain = match time {
        "dusk" => [0.74, 0.68, 0.72],
        "night" => [0.32, 0.32, 0.40],
        _ => return,
    };
    for p in img.pixels_mut() {
        for c in 0..3 {
            p.0[c] = (p.0[c] as f32 * gain[c]).round() as u8;
        }
    }
}

/// Rain: a darker, lower-contrast frame with light streaks.
pub fn rain(img: &mut RgbImage, rng: &mut StdRng) {
    for p in img.pixels_mut() {
        for c in 0..3 {
            p.0[c] = (p.0[c] as f32 * 0.8 + 18.0).min(255.0) as u8;
        }
    }
    let (w, h) = (img.width() as f32, img.height() as f32);
    let slant = rng.random_range(-0.25..0.25);
    for _ in 0..(w * h / 400.0) as usize {
        let x = rng.random_range(0.0..w);
        let y = rng.random_range(0.0..h);
        let len = rng.random_range(6.0..14.0);
        draw_line_segment_mut(img, (x, y), (x + slant * len, y + len), Rgb([200, 205, 215]));
    }
}

/// Fog: blend toward a haze colour, strongest at the horizon.
pub fn fog(img: &mut RgbImage, v: &View, density: f32) {
    let haze = [200.0f32, 202.0, 206.0];
    let (w, h) = img.dimensions();
    for y in 0..h {
        let d = (y as f32 - v.horizon).abs() / (v.h - v.horizon).max(1.0);
        let a = density * (1.0 - 0.6 * d.min(1.0));
        for x in 0..w {
            let p = img.get_pixel_mut(x, y);
            for c in 0..3 {
                p.0[c] = (p.0[c] as f32 * (1.0 - a) + haze[c] * a).round() as u8;
            }
        }
    }
}

/// Horizontal box blur of radius `r` (camera pan).
pub fn motion_blur(img: &mut RgbImage, r: u32) {
    let (w, h) = img.dimensions();
    let src = img.clone();
    let r = r as i64;
    for y in 0..h {
        for x in 0..w {
            let mut acc = [0u32; 3];
            let mut n = 0;
            for dx in -r..=r {
                let xx = (x as i64 + dx).clamp(0, w as i64 - 1) as u32;
                let p = src.get_pixel(xx, y);
                for c in 0..3 {
                    acc[c] += p.0[c] as u32;
                }
                n += 1;
            }
            img.put_pixel(x, y, Rgb(acc.map(|a| (a / n) as u8)));
        }
    }
}

/// Uniform per-pixel noise of ±`amp` levels.
pub fn sensor_noise(img: &mut RgbImage, rng: &mut StdRng, amp: i16) {
    for p in img.pixels_mut() {
        let d: i16 = rng.random_range(-amp..=amp);
        for c in 0..3 {
            p.0[c] = (p.0[c] as i16 + d).clamp(0, 255) as u8;
        }
    }
}
