//! Training augmentation strategies (baseline, geometric, adversarial, validator).
//!
//! `Validator` draws a fresh challenge exactly as the subnet's validator makes one (see
//! [`crate::challenge`], which holds every operation of the validator's levels 0–3) and returns the
//! decoded 224×224 JPEG. The other strategies are ordinary training augmentations; their colour
//! jitter blends towards grey like PIL's `ImageEnhance`, unlike the validator's distortions.

use std::io::Cursor;

use anyhow::Result;
use image::imageops::FilterType;
use image::{DynamicImage, Rgb, RgbImage};
use imageproc::geometric_transformations::{Border, Interpolation, Projection, rotate_about_center, warp};
use rand::RngExt;
use rand::rngs::StdRng;

pub use crate::challenge::{CHALLENGE_QUALITY, CHALLENGE_SIZE};

/// Training augmentation strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// No augmentation.
    None,
    /// Horizontal flip, random resized crop, colour jitter.
    Baseline,
    /// Rotation ±15°, perspective, affine.
    Geometric,
    /// Gaussian or motion blur, real JPEG compression, rain or fog.
    Adversarial,
    /// The validator's challenge levels 0–3, drawn uniformly.
    Validator,
}

fn resize(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    image::imageops::resize(img, w.max(1), h.max(1), FilterType::Triangle)
}

/// Rotate about the centre by `degrees` (bilinear, black fill, same size).
pub fn rotate(img: &RgbImage, degrees: f32) -> RgbImage {
    rotate_about_center(img, degrees.to_radians(), Interpolation::Bilinear, Border::Constant(Rgb([0, 0, 0])))
}

/// PIL `ImageEnhance.Color`: blend with the greyscale image by `factor` (0 = grey).
pub fn jitter_saturation(img: &RgbImage, factor: f32) -> RgbImage {
    let mut out = img.clone();
    for p in out.pixels_mut() {
        let [r, g, b] = p.0.map(|v| v as f32);
        let l = 0.299 * r + 0.587 * g + 0.114 * b;
        p.0 = [r, g, b].map(|v| (l + factor * (v - l)).round().clamp(0.0, 255.0) as u8);
    }
    out
}

/// PIL `ImageEnhance.Contrast`: blend with the mean grey level by `factor`.
pub fn jitter_contrast(img: &RgbImage, factor: f32) -> RgbImage {
    let n = (img.width() * img.height()).max(1) as f32;
    let mean =
        img.pixels().map(|p| 0.299 * p.0[0] as f32 + 0.587 * p.0[1] as f32 + 0.114 * p.0[2] as f32).sum::<f32>() / n;
    let mean = mean.round();
    let mut out = img.clone();
    for p in out.pixels_mut() {
        p.0 = p.0.map(|v| (mean + factor * (v as f32 - mean)).round().clamp(0.0, 255.0) as u8);
    }
    out
}

/// Gaussian blur with a `k`-tap kernel and σ = k/6 (OpenCV's, reflect-101 borders).
pub fn gaussian_blur(img: &RgbImage, k: usize) -> RgbImage {
    crate::challenge::gaussian_blur(img, k)
}

/// Encode as JPEG at `quality` and decode again.
pub fn jpeg_round_trip(img: &RgbImage, quality: u8) -> Result<(RgbImage, Vec<u8>)> {
    let bytes = crate::generate::encode_jpeg(img, quality)?;
    let decoded = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)?.to_rgb8();
    Ok((decoded, bytes))
}

/// One augmented copy of `img` under `strategy` (same size as the input, except `Validator`,
/// which returns the 224×224 decoded challenge).
pub fn augment(img: &RgbImage, strategy: Strategy, rng: &mut StdRng) -> Result<RgbImage> {
    let (w, h) = img.dimensions();
    Ok(match strategy {
        Strategy::None => img.clone(),
        Strategy::Baseline => {
            let mut out = if rng.random_bool(0.5) { image::imageops::flip_horizontal(img) } else { img.clone() };
            // Random resized crop (scale 0.5–1, aspect 3/4–4/3) back to the input size.
            let area = rng.random_range(0.5..=1.0) * (w * h) as f32;
            let ratio = rng.random_range((0.75f32).ln()..=(4.0f32 / 3.0).ln()).exp();
            let cw = ((area * ratio).sqrt() as u32).clamp(1, w);
            let ch = ((area / ratio).sqrt() as u32).clamp(1, h);
            let (x, y) = (rng.random_range(0..=w - cw), rng.random_range(0..=h - ch));
            out = resize(&image::imageops::crop_imm(&out, x, y, cw, ch).to_image(), w, h);
            let b = rng.random_range(0.8..1.2);
            for p in out.pixels_mut() {
                p.0 = p.0.map(|v| (v as f32 * b).round().clamp(0.0, 255.0) as u8);
            }
            out = jitter_contrast(&out, rng.random_range(0.8..1.2));
            jitter_saturation(&out, rng.random_range(0.8..1.2))
        }
        Strategy::Geometric => {
            let rotated = rotate(img, rng.random_range(-15.0..=15.0));
            let (wf, hf) = (w as f32, h as f32);
            let j = |rng: &mut StdRng, s: f32| rng.random_range(-s..=s);
            let m = 0.08;
            let from = [(0.0, 0.0), (wf, 0.0), (wf, hf), (0.0, hf)];
            let to = [
                (j(rng, m * wf), j(rng, m * hf)),
                (wf + j(rng, m * wf), j(rng, m * hf)),
                (wf + j(rng, m * wf), hf + j(rng, m * hf)),
                (j(rng, m * wf), hf + j(rng, m * hf)),
            ];
            let persp = Projection::from_control_points(from, to).unwrap_or_else(|| Projection::scale(1.0, 1.0));
            let s = rng.random_range(0.9..1.1);
            let affine = Projection::translate(wf / 2.0 + j(rng, 0.1 * wf), hf / 2.0 + j(rng, 0.1 * hf))
                * Projection::scale(s, s)
                * Projection::translate(-wf / 2.0, -hf / 2.0);
            warp(&rotated, affine * persp, Interpolation::Bilinear, Border::Constant(Rgb([0, 0, 0])))
        }
        Strategy::Adversarial => {
            let mut out = match rng.random_range(0..3) {
                0 => gaussian_blur(img, *[3usize, 5, 7].get(rng.random_range(0..3)).unwrap()),
                1 => crate::generate::weather_motion_blur(img, rng.random_range(2..6)),
                _ => img.clone(),
            };
            if rng.random_bool(0.5) {
                out = match rng.random_range(0..2) {
                    0 => crate::generate::weather_rain(&out, rng),
                    _ => crate::generate::weather_fog(&out, rng.random_range(0.3..0.6)),
                };
            }
            jpeg_round_trip(&out, rng.random_range(30..=90))?.0
        }
        Strategy::Validator => {
            let level = rng.random_range(0..=3);
            let (bytes, _) = crate::challenge::challenge(img, level, rng)?;
            image::load_from_memory(&bytes)?.to_rgb8()
        }
    })
}

pub use sv_core::preprocess::decode_rgb;

/// Encode RGB as PNG (lossless; used where a second JPEG would distort a measurement).
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    DynamicImage::ImageRgb8(img.clone()).write_to(&mut Cursor::new(&mut buf), image::ImageFormat::Png)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::challenge::{Distortions, down_up};
    use rand::SeedableRng;

    fn scene(i: u64) -> RgbImage {
        crate::generate::scene(&crate::generate::GenerateConfig { seed: 21, ..Default::default() }, i).image
    }

    fn lapvar(img: &RgbImage) -> f64 {
        crate::difficulty::laplacian_variance(&image::imageops::grayscale(img))
    }

    #[test]
    fn blur_lowers_laplacian_variance() {
        for i in 0..6 {
            let img = scene(i);
            let v0 = lapvar(&img);
            let v7 = lapvar(&gaussian_blur(&img, 7));
            let v9 = lapvar(&gaussian_blur(&img, 9));
            assert!(v7 < v0 && v9 < v7, "scene {i}: {v0} -> {v7} -> {v9}");
            assert!(lapvar(&down_up(&img, 3)) < v0);
        }
    }

    #[test]
    fn jitter_saturation_zero_is_grey_and_one_is_identity() {
        for i in 0..4 {
            let img = scene(i);
            let grey = jitter_saturation(&img, 0.0);
            assert!(grey.pixels().all(|p| p.0[0].abs_diff(p.0[1]) <= 1 && p.0[1].abs_diff(p.0[2]) <= 1));
            assert_eq!(jitter_saturation(&img, 1.0), img);
            assert_eq!(jitter_contrast(&img, 1.0), img);
            let flat = jitter_contrast(&img, 0.0);
            let first = flat.get_pixel(0, 0).0;
            assert!(flat.pixels().all(|p| p.0 == first), "contrast 0 gives one flat grey");
        }
    }

    #[test]
    fn distortion_levels_stay_in_their_ranges() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut seen3 = std::collections::HashSet::new();
        for _ in 0..300 {
            let d2 = Distortions::draw(2, &mut rng);
            assert!(d2.saturation <= 1 && d2.contrast <= 1 && d2.jpeg <= 1 && d2.noise == 0 && d2.blur == 0);
            let d3 = Distortions::draw(3, &mut rng);
            assert!([d3.saturation, d3.contrast, d3.jpeg, d3.noise, d3.blur].iter().all(|&l| l <= 2));
            seen3.insert(d3.blur);
            assert_eq!(Distortions::draw(1, &mut rng), Distortions::default());
        }
        assert_eq!(seen3.len(), 3, "level 3 draws every blur level");
    }

    #[test]
    fn strategies_keep_the_size_and_validator_gives_224() {
        let mut rng = StdRng::seed_from_u64(0);
        let small = resize(&scene(1), 64, 48);
        for s in [Strategy::None, Strategy::Baseline, Strategy::Geometric, Strategy::Adversarial] {
            let out = augment(&small, s, &mut rng).unwrap();
            assert_eq!(out.dimensions(), (64, 48), "{s:?} keeps the size");
        }
        let out = augment(&small, Strategy::Validator, &mut rng).unwrap();
        assert_eq!(out.dimensions(), (224, 224));
    }
}
