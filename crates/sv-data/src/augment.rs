//! Augmentation: the subnet validator's exact challenge levels 0–3, and training strategies
//! (baseline, geometric, adversarial, validator).
//!
//! Validator levels (SPEC §1), output 224×224 after a real JPEG round trip at quality 75:
//! - 0: centre-crop to a square on the short side, resize to 224.
//! - 1: rotate uniformly within ±20° (bilinear), RandomResizedCrop to 224 (scale 0.2–1, ratio 1).
//! - 2: level 1, then saturation, contrast and "JPEG" (down/up-scale), each at a random level 0–1.
//! - 3: level 1, then saturation, contrast, "JPEG", Gaussian noise and Gaussian blur, each at 0–2.
//!
//! Distortion strengths by level (0 = skip): saturation factor 0.4 / 0.3, contrast multiplier
//! 0.85 / 0.725, "JPEG" down-scale 2 / 3, Gaussian noise variance 0.001 / 0.002 in YCbCr, Gaussian
//! blur kernel 7 / 9 with σ = k/6.

use std::io::Cursor;

use anyhow::Result;
use image::imageops::FilterType;
use image::{DynamicImage, Rgb, RgbImage};
use imageproc::geometric_transformations::{Border, Interpolation, Projection, rotate_about_center, warp};
use rand::RngExt;
use rand::rngs::StdRng;

/// Side of validator challenges.
pub const CHALLENGE_SIZE: u32 = 224;
/// JPEG quality of validator challenges.
pub const CHALLENGE_QUALITY: u8 = 75;

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

fn normal(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

/// Centre crop to a square on the short side.
pub fn center_square(img: &RgbImage) -> RgbImage {
    let s = img.width().min(img.height());
    let (x, y) = ((img.width() - s) / 2, (img.height() - s) / 2);
    image::imageops::crop_imm(img, x, y, s, s).to_image()
}

/// Rotate about the centre by `degrees` (bilinear, black fill, same size).
pub fn rotate(img: &RgbImage, degrees: f32) -> RgbImage {
    rotate_about_center(img, degrees.to_radians(), Interpolation::Bilinear, Border::Constant(Rgb([0, 0, 0])))
}

/// torchvision's RandomResizedCrop with ratio 1: a square of area `scale·W·H` at a random place
/// (10 tries), else the centre square; resized to `size`.
pub fn random_resized_crop(img: &RgbImage, size: u32, scale: (f32, f32), rng: &mut StdRng) -> RgbImage {
    let (w, h) = (img.width() as f32, img.height() as f32);
    for _ in 0..10 {
        let side = (rng.random_range(scale.0..=scale.1) * w * h).sqrt().round() as u32;
        if side > 0 && side <= img.width() && side <= img.height() {
            let x = rng.random_range(0..=img.width() - side);
            let y = rng.random_range(0..=img.height() - side);
            return resize(&image::imageops::crop_imm(img, x, y, side, side).to_image(), size, size);
        }
    }
    resize(&center_square(img), size, size)
}

/// PIL `ImageEnhance.Color`: blend with the greyscale image by `factor` (0 = grey).
pub fn saturation(img: &RgbImage, factor: f32) -> RgbImage {
    let mut out = img.clone();
    for p in out.pixels_mut() {
        let [r, g, b] = p.0.map(|v| v as f32);
        let l = 0.299 * r + 0.587 * g + 0.114 * b;
        p.0 = [r, g, b].map(|v| (l + factor * (v - l)).round().clamp(0.0, 255.0) as u8);
    }
    out
}

/// PIL `ImageEnhance.Contrast`: blend with the mean grey level by `factor`.
pub fn contrast(img: &RgbImage, factor: f32) -> RgbImage {
    let n = (img.width() * img.height()).max(1) as f32;
    let mean = img.pixels().map(|p| 0.299 * p.0[0] as f32 + 0.587 * p.0[1] as f32 + 0.114 * p.0[2] as f32).sum::<f32>() / n;
    let mean = mean.round();
    let mut out = img.clone();
    for p in out.pixels_mut() {
        p.0 = p.0.map(|v| (mean + factor * (v as f32 - mean)).round().clamp(0.0, 255.0) as u8);
    }
    out
}

/// The validator's "JPEG" distortion: downscale by `factor` and upscale back.
pub fn down_up(img: &RgbImage, factor: f32) -> RgbImage {
    let (w, h) = img.dimensions();
    let small = resize(img, (w as f32 / factor).round() as u32, (h as f32 / factor).round() as u32);
    resize(&small, w, h)
}

/// Gaussian noise of `variance` added to Y, Cb and Cr (values in [0, 1], BT.601 full range).
pub fn ycbcr_noise(img: &RgbImage, variance: f32, rng: &mut StdRng) -> RgbImage {
    let sd = variance.sqrt();
    let mut out = img.clone();
    for p in out.pixels_mut() {
        let [r, g, b] = p.0.map(|v| v as f32 / 255.0);
        let y = 0.299 * r + 0.587 * g + 0.114 * b + sd * normal(rng);
        let cb = -0.168_736 * r - 0.331_264 * g + 0.5 * b + sd * normal(rng);
        let cr = 0.5 * r - 0.418_688 * g - 0.081_312 * b + sd * normal(rng);
        let rgb = [y + 1.402 * cr, y - 0.344_136 * cb - 0.714_136 * cr, y + 1.772 * cb];
        p.0 = rgb.map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8);
    }
    out
}

/// Gaussian blur with a `k`-tap kernel and σ = k/6.
pub fn gaussian_blur(img: &RgbImage, k: usize) -> RgbImage {
    let sigma = k as f32 / 6.0;
    let c = (k / 2) as f32;
    let mut kernel: Vec<f32> = (0..k).map(|i| (-((i as f32 - c).powi(2)) / (2.0 * sigma * sigma)).exp()).collect();
    let s: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|v| *v /= s);
    imageproc::filter::separable_filter_equal(img, &kernel)
}

/// Encode as JPEG at `quality` and decode again.
pub fn jpeg_round_trip(img: &RgbImage, quality: u8) -> Result<(RgbImage, Vec<u8>)> {
    let bytes = crate::generate::encode_jpeg(img, quality)?;
    let decoded = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)?.to_rgb8();
    Ok((decoded, bytes))
}

/// Which distortions one challenge received (0 = skipped), for reports and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Distortions {
    pub saturation: u8,
    pub contrast: u8,
    pub jpeg: u8,
    pub noise: u8,
    pub blur: u8,
}

/// Apply validator level `level` (0–3) with the given distortion levels, before the final JPEG.
pub fn validator_transform(img: &RgbImage, level: u8, d: Distortions, rng: &mut StdRng) -> RgbImage {
    if level == 0 {
        return resize(&center_square(img), CHALLENGE_SIZE, CHALLENGE_SIZE);
    }
    let rotated = rotate(img, rng.random_range(-20.0..=20.0));
    let mut out = random_resized_crop(&rotated, CHALLENGE_SIZE, (0.2, 1.0), rng);
    let pick = |l: u8, a: f32, b: f32| if l == 1 { a } else { b };
    if d.saturation > 0 {
        out = saturation(&out, pick(d.saturation, 0.4, 0.3));
    }
    if d.contrast > 0 {
        out = contrast(&out, pick(d.contrast, 0.85, 0.725));
    }
    if d.jpeg > 0 {
        out = down_up(&out, pick(d.jpeg, 2.0, 3.0));
    }
    if d.noise > 0 {
        out = ycbcr_noise(&out, pick(d.noise, 0.001, 0.002), rng);
    }
    if d.blur > 0 {
        out = gaussian_blur(&out, if d.blur == 1 { 7 } else { 9 });
    }
    out
}

/// Draw the distortion levels of a challenge at `level`.
pub fn draw_distortions(level: u8, rng: &mut StdRng) -> Distortions {
    match level {
        2 => Distortions {
            saturation: rng.random_range(0..=1),
            contrast: rng.random_range(0..=1),
            jpeg: rng.random_range(0..=1),
            ..Default::default()
        },
        3 => Distortions {
            saturation: rng.random_range(0..=2),
            contrast: rng.random_range(0..=2),
            jpeg: rng.random_range(0..=2),
            noise: rng.random_range(0..=2),
            blur: rng.random_range(0..=2),
        },
        _ => Distortions::default(),
    }
}

/// A full validator challenge at `level`: transform, then JPEG at quality 75. Returns the JPEG
/// bytes (what a miner receives) and the distortions drawn.
pub fn validator_challenge(img: &RgbImage, level: u8, rng: &mut StdRng) -> Result<(Vec<u8>, Distortions)> {
    let d = draw_distortions(level, rng);
    let t = validator_transform(img, level, d, rng);
    let (_, bytes) = jpeg_round_trip(&t, CHALLENGE_QUALITY)?;
    Ok((bytes, d))
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
            out = contrast(&out, rng.random_range(0.8..1.2));
            saturation(&out, rng.random_range(0.8..1.2))
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
            let (bytes, _) = validator_challenge(img, level, rng)?;
            image::load_from_memory(&bytes)?.to_rgb8()
        }
    })
}

/// Decode encoded bytes to RGB.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage> {
    Ok(crate::preprocess::decode(bytes)?.to_rgb8())
}

/// Encode RGB as PNG (lossless; used where a second JPEG would distort a measurement).
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    DynamicImage::ImageRgb8(img.clone()).write_to(&mut Cursor::new(&mut buf), image::ImageFormat::Png)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn scene(i: u64) -> RgbImage {
        crate::generate::scene(&crate::generate::GenerateConfig { seed: 21, ..Default::default() }, i).image
    }

    fn lapvar(img: &RgbImage) -> f64 {
        crate::difficulty::laplacian_variance(&image::imageops::grayscale(img))
    }

    #[test]
    fn level0_is_a_centre_crop_and_resize() {
        // 400×300 with red side bands that a centre square crop removes entirely.
        let img = RgbImage::from_fn(400, 300, |x, y| {
            if !(50..350).contains(&x) { Rgb([255, 0, 0]) } else { Rgb([(x % 200) as u8, (y % 250) as u8, 90]) }
        });
        for seed in 0..5 {
            let mut rng = StdRng::seed_from_u64(seed);
            let out = validator_transform(&img, 0, draw_distortions(0, &mut rng), &mut rng);
            assert_eq!(out.dimensions(), (224, 224));
            let expected = resize(&image::imageops::crop_imm(&img, 50, 0, 300, 300).to_image(), 224, 224);
            assert_eq!(out, expected, "level 0 must not depend on the random draw");
            assert!(out.pixels().all(|p| p.0 != [255, 0, 0]), "cropped bands leaked into level 0");
        }
    }

    #[test]
    fn blur_lowers_laplacian_variance() {
        for i in 0..6 {
            let img = scene(i);
            let v0 = lapvar(&img);
            let v7 = lapvar(&gaussian_blur(&img, 7));
            let v9 = lapvar(&gaussian_blur(&img, 9));
            assert!(v7 < v0 && v9 < v7, "scene {i}: {v0} -> {v7} -> {v9}");
            assert!(lapvar(&down_up(&img, 3.0)) < v0);
        }
    }

    #[test]
    fn saturation_zero_is_grey_and_one_is_identity() {
        for i in 0..4 {
            let img = scene(i);
            let grey = saturation(&img, 0.0);
            assert!(grey.pixels().all(|p| p.0[0].abs_diff(p.0[1]) <= 1 && p.0[1].abs_diff(p.0[2]) <= 1));
            assert_eq!(saturation(&img, 1.0), img);
            assert_eq!(contrast(&img, 1.0), img);
            let flat = contrast(&img, 0.0);
            let first = flat.get_pixel(0, 0).0;
            assert!(flat.pixels().all(|p| p.0 == first), "contrast 0 gives one flat grey");
        }
    }

    #[test]
    fn distortion_levels_stay_in_their_ranges() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut seen3 = std::collections::HashSet::new();
        for _ in 0..300 {
            let d2 = draw_distortions(2, &mut rng);
            assert!(d2.saturation <= 1 && d2.contrast <= 1 && d2.jpeg <= 1 && d2.noise == 0 && d2.blur == 0);
            let d3 = draw_distortions(3, &mut rng);
            assert!([d3.saturation, d3.contrast, d3.jpeg, d3.noise, d3.blur].iter().all(|&l| l <= 2));
            seen3.insert(d3.blur);
            assert_eq!(draw_distortions(1, &mut rng), Distortions::default());
        }
        assert_eq!(seen3.len(), 3, "level 3 draws every blur level");
    }

    #[test]
    fn challenges_are_224_jpegs_and_noise_changes_pixels() {
        let img = scene(1);
        for level in 0..=3 {
            let mut rng = StdRng::seed_from_u64(level as u64);
            let (bytes, _) = validator_challenge(&img, level, &mut rng).unwrap();
            assert_eq!(image::guess_format(&bytes).unwrap(), image::ImageFormat::Jpeg);
            let dec = image::load_from_memory(&bytes).unwrap();
            assert_eq!((dec.width(), dec.height()), (224, 224));
        }
        let mut rng = StdRng::seed_from_u64(0);
        let small = resize(&img, 64, 48);
        let noisy = ycbcr_noise(&small, 0.002, &mut rng);
        let diff: f64 = small.pixels().zip(noisy.pixels()).map(|(a, b)| a.0[0].abs_diff(b.0[0]) as f64).sum::<f64>()
            / (64.0 * 48.0);
        assert!(diff > 2.0 && diff < 30.0, "mean change {diff}");
        for s in [Strategy::None, Strategy::Baseline, Strategy::Geometric, Strategy::Adversarial] {
            let out = augment(&small, s, &mut rng).unwrap();
            assert_eq!(out.dimensions(), (64, 48), "{s:?} keeps the size");
        }
    }
}
