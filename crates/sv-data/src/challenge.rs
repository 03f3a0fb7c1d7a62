//! The subnet validator's challenge pipeline, operation by operation (SPEC §1). (Over 500
//! lines: one file mirrors the validator's one transform file, operation for operation, with
//! the pixel-parity tests beside them.)
//!
//! The validator (`natix/utils/image_transforms.py`, commit 28a1755) augments every challenge at a
//! level drawn uniformly from 0–3 with torchvision, OpenCV and PIL, and sends it as a PIL JPEG. Each
//! function here reproduces one of those operations with the same arithmetic, so that a simulated
//! challenge is the image a miner would really receive:
//! - level 0: PIL centre crop (`round((H-h)/2)`, ties to even) and PIL's 8-bit antialiased
//!   bilinear resize to 224 ([`pil_center_square`], [`pil_resize_bilinear`]);
//! - levels 1–3: torchvision `rotate` on the float tensor with **nearest** sampling and zero fill
//!   ([`rotate_nearest`]), `RandomResizedCrop` (scale 0.2–1, ratio 1, 10 tries, centre fallback;
//!   [`rrc_params`]) resized by torch's antialiased bilinear in `f32` ([`resized_crop_aa`]), and
//!   conversion to 8 bits by truncation; no flips (they are dead code in the validator);
//! - distortions, in this order, each on 8-bit BGR with truncation back to 8 bits: saturation in
//!   OpenCV's float YCrCb with studio-swing scaling ([`saturation`]), contrast as a plain multiplier
//!   ([`contrast`]), "JPEG" as `cv2.resize` down by integer division and back up ([`down_up`]),
//!   Gaussian noise in scaled YCbCr ([`gaussian_noise`]), OpenCV's bit-exact Gaussian blur with
//!   reflect-101 borders ([`gaussian_blur`]);
//! - the final JPEG: quality 75, 4:2:0, IJG tables, baseline ([`encode_jpeg`]), as PIL's defaults.
//!
//! `tests/validator_parity.rs` compares every operation against the validator's own code run on
//! real photos (`tests/fixtures/validator/make_validator_fixtures.py`).

use anyhow::{Context, Result, bail};
use image::{Rgb, RgbImage};
use rand::RngExt;
use rand::rngs::StdRng;

/// Side of validator challenges.
pub const CHALLENGE_SIZE: u32 = 224;
/// JPEG quality of validator challenges (PIL's default).
pub const CHALLENGE_QUALITY: u8 = 75;

/// Which distortions one challenge received, each at its level (0 = skipped).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Distortions {
    pub saturation: u8,
    pub contrast: u8,
    pub jpeg: u8,
    pub noise: u8,
    pub blur: u8,
}

impl Distortions {
    /// Draw the distortion levels of a challenge at `level` (2: three at 0–1; 3: five at 0–2).
    pub fn draw(level: u8, rng: &mut StdRng) -> Self {
        match level {
            2 => Self {
                saturation: rng.random_range(0..=1),
                contrast: rng.random_range(0..=1),
                jpeg: rng.random_range(0..=1),
                ..Default::default()
            },
            3 => Self {
                saturation: rng.random_range(0..=2),
                contrast: rng.random_range(0..=2),
                jpeg: rng.random_range(0..=2),
                noise: rng.random_range(0..=2),
                blur: rng.random_range(0..=2),
            },
            _ => Self::default(),
        }
    }
}

/// Every random choice of one challenge: enough to make it again.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChallengeParams {
    /// Augmentation level 0–3.
    pub level: u8,
    /// Rotation in degrees, counter-clockwise (levels 1–3).
    pub angle: f64,
    /// Crop box `[top, left, height, width]` in the rotated image (levels 1–3).
    pub crop: [u32; 4],
    pub distortions: Distortions,
    /// Seed of the Gaussian noise draw (used when `distortions.noise > 0`).
    pub noise_seed: u64,
}

impl ChallengeParams {
    /// Draw a challenge at `level` for an image of `width × height`, as the validator does: angle
    /// uniform in ±20° (float32, as `torch.empty(1).uniform_`), crop by [`rrc_params`], then the
    /// distortion levels.
    pub fn draw(level: u8, width: u32, height: u32, rng: &mut StdRng) -> Self {
        if level == 0 {
            return Self { level, angle: 0.0, crop: [0, 0, 0, 0], distortions: Distortions::default(), noise_seed: 0 };
        }
        let angle = rng.random_range(-20.0f32..=20.0) as f64;
        let crop = rrc_params(width, height, (0.2, 1.0), rng);
        let distortions = Distortions::draw(level, rng);
        Self { level, angle, crop, distortions, noise_seed: rng.random() }
    }
}

/// Truncating float → 8-bit conversion, as numpy's `astype(np.uint8)` and torch's `.byte()` do on
/// x86 (towards zero, then the low 8 bits).
#[inline]
fn trunc_u8(v: f32) -> u8 {
    v as i32 as u8
}

/// PIL `CenterCrop(min(size))`: a square on the short side at offset `int(round((H-h)/2))`
/// (Python's round: ties to even).
pub fn pil_center_square(img: &RgbImage) -> RgbImage {
    let (x, y, s) = sv_core::preprocess::center_square_box(img.width(), img.height());
    image::imageops::crop_imm(img, x, y, s, s).to_image()
}

/// PIL's `precompute_coeffs` for the bilinear filter: per output, the first input index and the
/// normalised weights.
fn pil_coeffs(in_size: u32, out_size: u32) -> Vec<(usize, Vec<f64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear support 1.0 × filterscale
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
            let mut k: Vec<f64> = (0..xmax.max(0))
                .map(|x| {
                    let v = ((x + xmin) as f64 - center + 0.5) * ss;
                    let v = v.abs();
                    if v < 1.0 { 1.0 - v } else { 0.0 }
                })
                .collect();
            let ww: f64 = k.iter().sum();
            if ww != 0.0 {
                k.iter_mut().for_each(|w| *w /= ww);
            }
            (xmin as usize, k)
        })
        .collect()
}

const PIL_PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's `normalize_coeffs_8bpc`.
fn pil_fixed(coeffs: Vec<(usize, Vec<f64>)>) -> Vec<(usize, Vec<i32>)> {
    let one = (1u32 << PIL_PRECISION_BITS) as f64;
    coeffs
        .into_iter()
        .map(|(x, k)| {
            let k = k.iter().map(|&w| if w < 0.0 { (-0.5 + w * one) as i32 } else { (0.5 + w * one) as i32 }).collect();
            (x, k)
        })
        .collect()
}

#[inline]
fn pil_clip8(v: i32) -> u8 {
    if v >= (1 << PIL_PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PIL_PRECISION_BITS) as u8
    }
}

/// PIL `Image.resize((w, h), BILINEAR)` on an 8-bit RGB image: antialiased triangle filter, 22-bit
/// fixed-point weights, horizontal pass first with an 8-bit intermediate, exactly as `Resample.c`.
pub fn pil_resize_bilinear(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (iw, ih) = img.dimensions();
    let horiz = pil_fixed(pil_coeffs(iw, w));
    let vert = pil_fixed(pil_coeffs(ih, h));
    // Rows the vertical pass reads.
    let y_first = vert.first().map(|v| v.0).unwrap_or(0);
    let y_last = vert.last().map(|v| v.0 + v.1.len()).unwrap_or(0);
    let tmp = if w != iw {
        let mut t = RgbImage::new(w, (y_last - y_first) as u32);
        for y in 0..(y_last - y_first) as u32 {
            for (xx, (xmin, k)) in horiz.iter().enumerate() {
                let mut ss = [1i32 << (PIL_PRECISION_BITS - 1); 3];
                for (x, &kx) in k.iter().enumerate() {
                    let p = img.get_pixel((xmin + x) as u32, y + y_first as u32).0;
                    for c in 0..3 {
                        ss[c] += p[c] as i32 * kx;
                    }
                }
                t.put_pixel(xx as u32, y, Rgb(ss.map(pil_clip8)));
            }
        }
        t
    } else {
        image::imageops::crop_imm(img, 0, y_first as u32, iw, (y_last - y_first) as u32).to_image()
    };
    if h == ih {
        return tmp;
    }
    let mut out = RgbImage::new(w, h);
    for (yy, (ymin, k)) in vert.iter().enumerate() {
        let ymin = ymin - y_first;
        for x in 0..w {
            let mut ss = [1i32 << (PIL_PRECISION_BITS - 1); 3];
            for (y, &ky) in k.iter().enumerate() {
                let p = tmp.get_pixel(x, (ymin + y) as u32).0;
                for c in 0..3 {
                    ss[c] += p[c] as i32 * ky;
                }
            }
            out.put_pixel(x, yy as u32, Rgb(ss.map(pil_clip8)));
        }
    }
    out
}

/// torchvision `F.rotate(tensor, angle)` with its default nearest sampling: the inverse rotation
/// of each output pixel centre, `grid_sample(mode="nearest", padding_mode="zeros",
/// align_corners=False)` (round half to even), black outside, same size. Counter-clockwise for a
/// positive angle.
pub fn rotate_nearest(img: &RgbImage, degrees: f64) -> RgbImage {
    let (w, h) = img.dimensions();
    let rot = (-degrees).to_radians();
    // `_get_inverse_affine_matrix(center=[0,0], -angle, ...)` in f64, then a float32 tensor.
    let m = [rot.cos() as f32, rot.sin() as f32, -(rot.sin() as f32), rot.cos() as f32];
    let (hw, hh) = (0.5 * w as f32, 0.5 * h as f32);
    let r = [m[0] / hw, m[1] / hw, m[2] / hh, m[3] / hh];
    let mut out = RgbImage::new(w, h);
    for i in 0..h {
        let y = i as f32 - hh + 0.5;
        for j in 0..w {
            let x = j as f32 - hw + 0.5;
            let gx = x * r[0] + y * r[1];
            let gy = x * r[2] + y * r[3];
            let ix = (((gx + 1.0) * w as f32 - 1.0) / 2.0).round_ties_even();
            let iy = (((gy + 1.0) * h as f32 - 1.0) / 2.0).round_ties_even();
            if ix >= 0.0 && iy >= 0.0 && ix < w as f32 && iy < h as f32 {
                out.put_pixel(j, i, *img.get_pixel(ix as u32, iy as u32));
            }
        }
    }
    out
}

/// torchvision `RandomResizedCrop.get_params` with ratio 1: up to 10 tries of a square of area
/// `s·W·H` (s uniform in `scale`, side `round(√area)`, ties to even) placed uniformly, else the
/// centre square (offsets by integer division). Returns `[top, left, height, width]`.
pub fn rrc_params(width: u32, height: u32, scale: (f32, f32), rng: &mut StdRng) -> [u32; 4] {
    let area = (width as f64) * (height as f64);
    for _ in 0..10 {
        let target = area * rng.random_range(scale.0..=scale.1) as f64;
        let side = target.sqrt().round_ties_even() as u32;
        if side > 0 && side <= width && side <= height {
            let i = rng.random_range(0..=height - side);
            let j = rng.random_range(0..=width - side);
            return [i, j, side, side];
        }
    }
    let s = width.min(height);
    [(height - s) / 2, (width - s) / 2, s, s]
}

/// torch's antialiased bilinear weights (`_compute_indices_min_size_weights_aa`) in float32.
fn torch_aa_coeffs(in_size: u32, out_size: u32) -> Vec<(usize, Vec<f32>)> {
    let scale = in_size as f32 / out_size as f32;
    let support = if scale >= 1.0 { scale } else { 1.0 };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..out_size)
        .map(|i| {
            let center = scale * (i as f32 + 0.5);
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xsize = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
            let mut k: Vec<f32> = (0..xsize.max(0))
                .map(|j| {
                    let x = (((j + xmin) as f32 - center) as f64 + 0.5) * invscale as f64;
                    let x = (x as f32).abs();
                    if x < 1.0 { 1.0 - x } else { 0.0 }
                })
                .collect();
            let total: f32 = k.iter().fold(0.0, |a, &b| a + b);
            if total != 0.0 {
                k.iter_mut().for_each(|w| *w /= total);
            }
            (xmin as usize, k)
        })
        .collect()
}

/// torchvision `F.resized_crop(tensor, top, left, h, w, size, BILINEAR, antialias=True)` on the
/// image as floats in [0,1] (horizontal pass first, float32), then `ToPILImage`'s
/// `mul(255).byte()`: truncation to 8 bits. `crop` is `[top, left, height, width]`.
pub fn resized_crop_aa(img: &RgbImage, crop: [u32; 4], size: u32) -> RgbImage {
    let [top, left, ch, cw] = crop;
    let horiz = torch_aa_coeffs(cw, size);
    let vert = torch_aa_coeffs(ch, size);
    let sz = size as usize;
    // Horizontal: ch rows × size columns × 3.
    let mut tmp = vec![0f32; ch as usize * sz * 3];
    for y in 0..ch as usize {
        for (xx, (xmin, k)) in horiz.iter().enumerate() {
            for c in 0..3 {
                let px = |x: usize| img.get_pixel(left + (xmin + x) as u32, top + y as u32).0[c] as f32 / 255.0;
                let mut acc = px(0) * k[0];
                for (x, &kx) in k.iter().enumerate().skip(1) {
                    acc += px(x) * kx;
                }
                tmp[(y * sz + xx) * 3 + c] = acc;
            }
        }
    }
    let mut out = RgbImage::new(size, size);
    for (yy, (ymin, k)) in vert.iter().enumerate() {
        for x in 0..sz {
            let mut p = [0u8; 3];
            for (c, v) in p.iter_mut().enumerate() {
                let at = |y: usize| tmp[((ymin + y) * sz + x) * 3 + c];
                let mut acc = at(0) * k[0];
                for (y, &ky) in k.iter().enumerate().skip(1) {
                    acc += at(y) * ky;
                }
                *v = trunc_u8(acc * 255.0);
            }
            out.put_pixel(x as u32, yy as u32, Rgb(p));
        }
    }
    out
}

/// OpenCV `cvtColor(BGR2YCrCb)` on float input (delta 0.5), then the validator's `bgr2ycbcr`
/// studio-swing scaling. Returns (Y, Cb, Cr).
#[inline]
fn bgr2ycbcr([r, g, b]: [f32; 3]) -> [f32; 3] {
    let y = b * 0.114 + g * 0.587 + r * 0.299;
    let cr = (r - y) * 0.713 + 0.5;
    let cb = (b - y) * 0.564 + 0.5;
    [(y * 219.0 + 16.0) / 255.0, (cb * 224.0 + 16.0) / 255.0, (cr * 224.0 + 16.0) / 255.0]
}

/// The validator's `ycbcr2bgr`: undo the scaling, then OpenCV `cvtColor(YCrCb2BGR)` on floats.
/// Returns RGB floats (not yet clipped).
#[inline]
fn ycbcr2rgb([y, cb, cr]: [f32; 3]) -> [f32; 3] {
    let y = (y * 255.0 - 16.0) / 219.0;
    let cb = (cb * 255.0 - 16.0) / 224.0;
    let cr = (cr * 255.0 - 16.0) / 224.0;
    let b = y + (cb - 0.5) * 1.773;
    let g = y + (cb - 0.5) * -0.344 + (cr - 0.5) * -0.714;
    let r = y + (cr - 0.5) * 1.403;
    [r, g, b]
}

/// The validator's colour saturation (`color_saturation`): chroma of the scaled YCbCr pulled to
/// 0.5 by `factor`, back to RGB, truncated (no clip).
pub fn saturation(img: &RgbImage, factor: f32) -> RgbImage {
    let mut out = img.clone();
    for p in out.pixels_mut() {
        let [y, cb, cr] = bgr2ycbcr(p.0.map(|v| v as f32));
        let rgb = ycbcr2rgb([y, 0.5 + (cb - 0.5) * factor, 0.5 + (cr - 0.5) * factor]);
        p.0 = rgb.map(trunc_u8);
    }
    out
}

/// The validator's contrast (`color_contrast`): a plain multiplier in float32, truncated. It
/// darkens; black stays black.
pub fn contrast(img: &RgbImage, factor: f32) -> RgbImage {
    let mut out = img.clone();
    for p in out.pixels_mut() {
        p.0 = p.0.map(|v| trunc_u8(v as f32 * factor));
    }
    out
}

/// OpenCV `resize(INTER_LINEAR)` on 8-bit RGB: a 2× reduction in both axes is INTER_AREA's 2×2
/// rounded mean; otherwise half-pixel bilinear with 11-bit fixed-point weights, borders clamped,
/// and the x86 SIMD vertical pass's rounding (`((S0>>4)·b0 >> 16) + ((S1>>4)·b1 >> 16) + 2 >> 2`).
pub fn cv_resize_linear(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (iw, ih) = img.dimensions();
    if iw == 2 * w && ih == 2 * h {
        return RgbImage::from_fn(w, h, |x, y| {
            let q = |dx, dy| img.get_pixel(2 * x + dx, 2 * y + dy).0;
            let (a, b, c, d) = (q(0, 0), q(1, 0), q(0, 1), q(1, 1));
            Rgb(std::array::from_fn(|k| ((a[k] as u32 + b[k] as u32 + c[k] as u32 + d[k] as u32 + 2) >> 2) as u8))
        });
    }
    // (source index, weight of that index ×2048, weight of the next ×2048), per output. Columns
    // past a border take the border pixel with weight 1 (`fx = 0`); rows keep their fractional
    // weights and read the clamped row twice, which the vertical pass's rounding can tell apart.
    let table = |in_size: u32, out_size: u32, reset: bool| -> Vec<(i64, i32, i32)> {
        let scale = in_size as f64 / out_size as f64;
        (0..out_size)
            .map(|d| {
                let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
                let mut s = f.floor() as i64;
                let mut f = f - s as f32;
                if reset && s < 0 {
                    f = 0.0;
                    s = 0;
                }
                if reset && s >= in_size as i64 - 1 {
                    f = 0.0;
                    s = in_size as i64 - 1;
                }
                let a0 = ((1.0 - f) * 2048.0).round_ties_even() as i32;
                (s, a0, 2048 - a0)
            })
            .collect()
    };
    let clamp = |i: i64, n: u32| i.clamp(0, n as i64 - 1) as u32;
    let xt = table(iw, w, true);
    let yt = table(ih, h, false);
    // Horizontal pass into i32 rows (scaled by 2048).
    let hrow = |y: u32| -> Vec<i32> {
        let mut row = vec![0i32; (w * 3) as usize];
        for (x, &(sx, a0, a1)) in xt.iter().enumerate() {
            let p0 = img.get_pixel(clamp(sx, iw), y).0;
            let p1 = img.get_pixel(clamp(sx + 1, iw), y).0;
            for c in 0..3 {
                row[x * 3 + c] = p0[c] as i32 * a0 + p1[c] as i32 * a1;
            }
        }
        row
    };
    let mut out = RgbImage::new(w, h);
    for (y, &(sy, b0, b1)) in yt.iter().enumerate() {
        let r0 = hrow(clamp(sy, ih));
        let r1 = hrow(clamp(sy + 1, ih));
        for x in 0..w as usize {
            let mut p = [0u8; 3];
            for c in 0..3 {
                let s0 = ((r0[x * 3 + c] >> 4) * b0) >> 16;
                let s1 = ((r1[x * 3 + c] >> 4) * b1) >> 16;
                p[c] = ((s0 + s1 + 2) >> 2).clamp(0, 255) as u8;
            }
            out.put_pixel(x as u32, y as u32, Rgb(p));
        }
    }
    out
}

/// The validator's "JPEG" distortion (`jpeg_compression`): `cv2.resize` down to
/// `(w // factor, h // factor)` and back up, INTER_LINEAR both ways, no antialias.
pub fn down_up(img: &RgbImage, factor: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let small = cv_resize_linear(img, (w / factor).max(1), (h / factor).max(1));
    cv_resize_linear(&small, w, h)
}

/// The validator's Gaussian noise (`gaussian_noise_color`): `√variance · N(0,1)` added to each of
/// Y, Cb, Cr of the scaled YCbCr divided by 255, times 255, back to RGB, clipped and truncated.
/// The range scaling makes the effective std about 297·√variance grey levels on Y and 290·√variance
/// on Cb/Cr. `normal` yields the standard normals in numpy's order (row, column, Y/Cb/Cr).
pub fn gaussian_noise(img: &RgbImage, variance: f64, normal: &mut dyn FnMut() -> f64) -> RgbImage {
    let sd = variance.sqrt();
    let mut out = img.clone();
    for p in out.pixels_mut() {
        let ycc = bgr2ycbcr(p.0.map(|v| v as f32)).map(|v| v / 255.0);
        let noisy = ycc.map(|v| ((v as f64 + sd * normal()) * 255.0) as f32);
        let rgb = ycbcr2rgb(noisy);
        p.0 = rgb.map(|v| trunc_u8(v.clamp(0.0, 255.0)));
    }
    out
}

/// OpenCV's bit-exact Gaussian kernel for 8-bit images (`getGaussianKernelBitExact` then
/// `getGaussianKernelFixedPoint_ED` with 8 fraction bits): weights summing to 256.
fn cv_gaussian_kernel_fixed(k: usize, sigma: f64) -> Vec<u32> {
    let scale2x = -0.125 / (sigma * sigma);
    let n2 = (k - 1) / 2;
    let values: Vec<f64> = (0..n2)
        .map(|i| {
            let x = 2 * i as i64 + 1 - k as i64;
            ((x * x) as f64 * scale2x).exp()
        })
        .collect();
    let sum = values.iter().sum::<f64>() * 2.0 + 1.0;
    let mul1 = 1.0 / sum;
    let mut out = vec![0u32; k];
    let mut err = 0.0f64;
    let mut total = 0u32;
    for i in 0..n2 {
        let adj = values[i] * mul1 * 256.0 + err;
        let v = adj.round() as i64;
        err = adj - v as f64;
        out[i] = v as u32;
        out[k - 1 - i] = v as u32;
        total += 2 * v as u32;
    }
    out[n2] = 256 - total;
    out
}

/// OpenCV's border index for BORDER_REFLECT_101 (`gfedcb|abcdefgh|gfedcba`).
#[inline]
fn reflect101(i: i64, n: i64) -> usize {
    if n == 1 {
        return 0;
    }
    let mut i = i;
    while i < 0 || i >= n {
        i = if i < 0 { -i } else { 2 * n - 2 - i };
    }
    i as usize
}

/// The validator's Gaussian blur: `cv2.GaussianBlur(img, (k, k), k/6)` on 8 bits, OpenCV's
/// fixed-point path (kernel ×256, horizontal sums kept exact, vertical rounded `>> 16`), borders
/// reflect-101.
pub fn gaussian_blur(img: &RgbImage, k: usize) -> RgbImage {
    let kern = cv_gaussian_kernel_fixed(k, k as f64 / 6.0);
    let (w, h) = img.dimensions();
    let r = (k / 2) as i64;
    let mut tmp = vec![0u32; (w * h * 3) as usize];
    for y in 0..h {
        for x in 0..w as i64 {
            for c in 0..3 {
                let mut acc = 0u32;
                for (t, &kv) in kern.iter().enumerate() {
                    let sx = reflect101(x + t as i64 - r, w as i64);
                    acc += img.get_pixel(sx as u32, y).0[c] as u32 * kv;
                }
                tmp[((y * w) as usize + x as usize) * 3 + c] = acc;
            }
        }
    }
    let mut out = RgbImage::new(w, h);
    for y in 0..h as i64 {
        for x in 0..w as usize {
            let mut p = [0u8; 3];
            for (c, v) in p.iter_mut().enumerate() {
                let mut acc = 0u64;
                for (t, &kv) in kern.iter().enumerate() {
                    let sy = reflect101(y + t as i64 - r, h as i64);
                    acc += tmp[(sy * w as usize + x) * 3 + c] as u64 * kv as u64;
                }
                *v = ((acc + (1 << 15)) >> 16).min(255) as u8;
            }
            out.put_pixel(x as u32, y as u32, Rgb(p));
        }
    }
    out
}

/// Standard normals from a seeded generator (Box–Muller), for [`gaussian_noise`].
pub fn normals(rng: &mut StdRng) -> impl FnMut() -> f64 + '_ {
    move || {
        let u1: f64 = rng.random_range(f64::EPSILON..1.0);
        let u2: f64 = rng.random();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Apply the distortions of `d` in the validator's order (saturation, contrast, JPEG, noise, blur).
pub fn distort(img: &RgbImage, d: Distortions, normal: &mut dyn FnMut() -> f64) -> RgbImage {
    let pick = |l: u8, table: &[f32; 2]| table[(l - 1) as usize];
    let mut out = img.clone();
    if d.saturation > 0 {
        out = saturation(&out, pick(d.saturation, &[0.4, 0.3]));
    }
    if d.contrast > 0 {
        out = contrast(&out, pick(d.contrast, &[0.85, 0.725]));
    }
    if d.jpeg > 0 {
        out = down_up(&out, [2, 3][(d.jpeg - 1) as usize]);
    }
    if d.noise > 0 {
        out = gaussian_noise(&out, [0.001, 0.002][(d.noise - 1) as usize], normal);
    }
    if d.blur > 0 {
        out = gaussian_blur(&out, [7, 9][(d.blur - 1) as usize]);
    }
    out
}

/// The 224×224 image of a challenge before its JPEG encoding.
pub fn transform(img: &RgbImage, p: &ChallengeParams) -> RgbImage {
    if p.level == 0 {
        return pil_resize_bilinear(&pil_center_square(img), CHALLENGE_SIZE, CHALLENGE_SIZE);
    }
    let rotated = rotate_nearest(img, p.angle);
    let cropped = resized_crop_aa(&rotated, p.crop, CHALLENGE_SIZE);
    let mut rng = <StdRng as rand::SeedableRng>::seed_from_u64(p.noise_seed);
    distort(&cropped, p.distortions, &mut normals(&mut rng))
}

/// Encode as PIL's `image.save(buf, format="JPEG")` does by default: quality 75 with the IJG
/// tables, 4:2:0 chroma subsampling (2×2 box average, as libjpeg), baseline, standard Huffman
/// tables.
pub fn encode_jpeg(img: &RgbImage) -> Result<Vec<u8>> {
    use jpeg_encoder::{ChromaSubsamplingMethod, ColorType, Encoder, SamplingFactor};
    let mut buf = Vec::new();
    let mut enc = Encoder::new(&mut buf, CHALLENGE_QUALITY);
    enc.set_sampling_factor(SamplingFactor::F_2_2);
    enc.set_chroma_subsampling_method(ChromaSubsamplingMethod::Average);
    let (w, h) = img.dimensions();
    let (w, h) =
        (u16::try_from(w).context("image too wide for JPEG")?, u16::try_from(h).context("image too tall for JPEG")?);
    enc.encode(img.as_raw(), w, h, ColorType::Rgb).context("JPEG encoding failed")?;
    Ok(buf)
}

/// A full challenge from an already decoded image: the JPEG bytes a miner receives.
pub fn make(img: &RgbImage, p: &ChallengeParams) -> Result<Vec<u8>> {
    encode_jpeg(&transform(img, p))
}

/// A fresh challenge at `level` with every random choice drawn from `rng`: the JPEG bytes and the
/// parameters that made it.
pub fn challenge(img: &RgbImage, level: u8, rng: &mut StdRng) -> Result<(Vec<u8>, ChallengeParams)> {
    if level > 3 {
        bail!("challenge level {level} is not one of 0, 1, 2, 3");
    }
    let p = ChallengeParams::draw(level, img.width(), img.height(), rng);
    Ok((make(img, &p)?, p))
}

/// Write `count` challenges of each `(name, encoded image)` into `out`: `<name>-<k>-L<level>.jpg`
/// and one JSON line per challenge in `challenges.jsonl` (file, image, parameters). `level` fixes
/// the level; `None` draws it uniformly as the validator does. Returns the number written.
pub fn write_challenges(
    images: &[(String, Vec<u8>)],
    level: Option<u8>,
    count: usize,
    seed: u64,
    out: &std::path::Path,
) -> Result<usize> {
    use std::io::Write;
    if let Some(l) = level.filter(|l| *l > 3) {
        bail!("challenge level {l} is not one of 0, 1, 2, 3");
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let log_path = out.join("challenges.jsonl");
    let mut log = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot write {}", log_path.display()))?,
    );
    let mut rng = <StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let mut n = 0;
    for (name, bytes) in images {
        let img =
            sv_core::preprocess::decode_rgb(bytes).with_context(|| format!("image {name:?} cannot be decoded"))?;
        let safe: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
        for k in 0..count {
            let l = level.unwrap_or_else(|| rng.random_range(0..=3));
            let p = ChallengeParams::draw(l, img.width(), img.height(), &mut rng);
            let jpeg = make(&img, &p)?;
            let file = format!("{safe}-{k}-L{l}.jpg");
            std::fs::write(out.join(&file), &jpeg).with_context(|| format!("cannot write {file}"))?;
            writeln!(log, "{}", serde_json::json!({ "file": file, "image": name, "params": p }))?;
            n += 1;
        }
    }
    log.flush()?;
    Ok(n)
}

/// What a JPEG's header says: frame type, components with sampling factors and table ids, and
/// the quantisation tables (zig-zag order, as stored).
#[derive(Debug, Clone, PartialEq)]
pub struct JpegHeader {
    /// The SOF marker (0xC0 baseline, 0xC2 progressive, ...).
    pub sof: u8,
    pub width: u16,
    pub height: u16,
    /// (component id, horizontal sampling, vertical sampling, quantisation table id).
    pub components: Vec<(u8, u8, u8, u8)>,
    /// Quantisation tables by id.
    pub qtables: Vec<(u8, Vec<u16>)>,
}

impl JpegHeader {
    /// "4:2:0", "4:2:2", "4:4:4" or "other", from the luma and chroma sampling factors.
    pub fn subsampling(&self) -> &'static str {
        match self.components.as_slice() {
            [(_, 2, 2, _), (_, 1, 1, _), (_, 1, 1, _)] => "4:2:0",
            [(_, 2, 1, _), (_, 1, 1, _), (_, 1, 1, _)] => "4:2:2",
            [(_, 1, 1, _), (_, 1, 1, _), (_, 1, 1, _)] => "4:4:4",
            _ => "other",
        }
    }
}

/// Parse the markers of a JPEG up to its first scan.
pub fn jpeg_header(bytes: &[u8]) -> Result<JpegHeader> {
    if bytes.len() < 4 || bytes[0] != 0xFF || bytes[1] != 0xD8 {
        bail!("not a JPEG (no SOI marker)");
    }
    let mut at = 2;
    let mut header = JpegHeader { sof: 0, width: 0, height: 0, components: vec![], qtables: vec![] };
    while at + 4 <= bytes.len() {
        if bytes[at] != 0xFF {
            bail!("JPEG marker expected at byte {at}");
        }
        let marker = bytes[at + 1];
        let len = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
        let seg = bytes.get(at + 4..at + 2 + len).with_context(|| format!("JPEG segment 0x{marker:02X} truncated"))?;
        match marker {
            0xDB => {
                let mut s = seg;
                while !s.is_empty() {
                    let (pq, id) = (s[0] >> 4, s[0] & 15);
                    let n = if pq == 0 { 64 } else { 128 };
                    let t = s.get(1..1 + n).context("DQT table truncated")?;
                    let table = if pq == 0 {
                        t.iter().map(|&v| v as u16).collect()
                    } else {
                        t.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect()
                    };
                    header.qtables.push((id, table));
                    s = &s[1 + n..];
                }
            }
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                header.sof = marker;
                header.height = u16::from_be_bytes([seg[1], seg[2]]);
                header.width = u16::from_be_bytes([seg[3], seg[4]]);
                let n = seg[5] as usize;
                for c in 0..n {
                    let b = seg.get(6 + 3 * c..9 + 3 * c).context("SOF truncated")?;
                    header.components.push((b[0], b[1] >> 4, b[1] & 15, b[2]));
                }
            }
            0xDA => return Ok(header),
            _ => {}
        }
        at += 2 + len;
    }
    bail!("JPEG ended before its first scan")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn pil_center_square_rounds_offsets_to_even() {
        // Height difference 141: offset round(70.5) = 70 (ties to even), not 71.
        let img = RgbImage::from_fn(100, 241, |_, y| Rgb([y as u8, 0, 0]));
        let sq = pil_center_square(&img);
        assert_eq!(sq.dimensions(), (100, 100));
        assert_eq!(sq.get_pixel(0, 0).0[0], 70);
        // 143: round(71.5) = 72.
        let img = RgbImage::from_fn(100, 243, |_, y| Rgb([y as u8, 0, 0]));
        assert_eq!(pil_center_square(&img).get_pixel(0, 0).0[0], 72);
    }

    #[test]
    fn contrast_is_a_multiplier_that_keeps_black() {
        let img = RgbImage::from_fn(16, 16, |x, y| Rgb([(x * 16) as u8, (y * 16) as u8, 0]));
        let out = contrast(&img, 0.85);
        for (a, b) in img.pixels().zip(out.pixels()) {
            for c in 0..3 {
                assert_eq!(b.0[c], (a.0[c] as f32 * 0.85) as u8);
            }
        }
        assert_eq!(out.get_pixel(0, 0).0, [0, 0, 0], "black stays black");
        // 20 · 0.85 in float32 is 17.0000005: 17 (in float64 it would truncate to 16).
        assert_eq!(contrast(&RgbImage::from_pixel(1, 1, Rgb([20, 20, 20])), 0.85).get_pixel(0, 0).0, [17; 3]);
    }

    #[test]
    fn blur_kernels_sum_to_256_and_are_symmetric() {
        for k in [7usize, 9] {
            let kern = cv_gaussian_kernel_fixed(k, k as f64 / 6.0);
            assert_eq!(kern.iter().sum::<u32>(), 256);
            assert!((0..k).all(|i| kern[i] == kern[k - 1 - i]));
            assert!(kern[k / 2] > kern[0]);
        }
        // A flat image stays flat under blur (reflect-101 borders).
        let flat = RgbImage::from_pixel(20, 10, Rgb([200, 100, 7]));
        assert_eq!(gaussian_blur(&flat, 9), flat);
    }

    #[test]
    fn noise_has_the_validators_effective_scale() {
        let img = RgbImage::from_pixel(128, 128, Rgb([128, 128, 128]));
        let mut rng = StdRng::seed_from_u64(7);
        for (var, expect) in [(0.001f64, 9.4f64), (0.002, 13.3)] {
            let out = gaussian_noise(&img, var, &mut normals(&mut rng));
            // Luma of the difference: std of Y noise ≈ 297·√var.
            let ys: Vec<f64> =
                out.pixels().map(|p| 0.299 * p.0[0] as f64 + 0.587 * p.0[1] as f64 + 0.114 * p.0[2] as f64).collect();
            let mean = ys.iter().sum::<f64>() / ys.len() as f64;
            let sd = (ys.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / ys.len() as f64).sqrt();
            assert!((sd - expect).abs() < 0.8, "variance {var}: luma std {sd}, expected ≈ {expect}");
        }
    }

    #[test]
    fn challenges_are_224_baseline_420_jpegs() {
        let img = RgbImage::from_fn(320, 240, |x, y| Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8]));
        for level in 0..=3u8 {
            let mut rng = StdRng::seed_from_u64(level as u64);
            let (bytes, p) = challenge(&img, level, &mut rng).unwrap();
            assert_eq!(p.level, level);
            let hdr = jpeg_header(&bytes).unwrap();
            assert_eq!((hdr.sof, hdr.width, hdr.height), (0xC0, 224, 224));
            assert_eq!(hdr.subsampling(), "4:2:0");
            // IJG luma table at quality 75: DC 8 (16·50/100).
            assert_eq!(hdr.qtables[0].1[0], 8);
            // The same parameters make the same bytes.
            assert_eq!(make(&img, &p).unwrap(), bytes);
        }
        assert!(challenge(&img, 4, &mut StdRng::seed_from_u64(0)).is_err());
    }

    #[test]
    fn rrc_falls_back_to_the_centre_square() {
        // A 1000×10 strip: no square of area ≥ 0.2·W·H fits, so every try fails.
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(rrc_params(1000, 10, (0.2, 1.0), &mut rng), [0, 495, 10, 10]);
        for _ in 0..100 {
            let [i, j, h, w] = rrc_params(400, 300, (0.2, 1.0), &mut rng);
            assert_eq!(h, w);
            assert!(i + h <= 300 && j + w <= 400 && h as f64 >= (0.2f64 * 400.0 * 300.0).sqrt() - 1.0);
        }
    }
}
