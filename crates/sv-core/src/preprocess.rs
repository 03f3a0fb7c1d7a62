//! The one preprocessing function shared by training, evaluation, calibration and serving.
//!
//! `decode → RGB → centre square crop → resize to size×size (bilinear with antialias: a triangle
//! filter whose support widens with the downscale factor, as PIL and torchvision's
//! `antialias=True` do) → scale to [0,1] → normalise with mean/std`, output CHW `f32`.
//!
//! The centre crop (`crop = "center"`, the default) keeps training consistent with serving: the
//! validator's challenges are square crops of the photo (level 0 a centre square, levels 1–3
//! random squares), so a non-square training image is cropped the same way instead of being
//! squashed. Serving receives 224×224 squares, where the crop changes nothing. With
//! `crop = "none"` this is exactly `DINOv3ViTImageProcessor` (rescale, resize to 224×224,
//! ImageNet normalisation); the test against its output on a real photo lives in sv-train.

use std::io::Cursor;

use anyhow::{Context, Result, bail};
use image::imageops::FilterType;
use image::{DynamicImage, ImageReader, Limits, Rgb32FImage};

/// ImageNet mean (RGB).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviation (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Largest side accepted by [`decode`]; larger inputs are refused before allocation.
pub const MAX_DECODE_SIDE: u32 = 8192;

/// Preprocessing parameters. Stored in run folders and export bundles, so that inference uses
/// exactly what training used.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessConfig {
    /// Output side in pixels (the backbone's input size, 224 for DINOv3 at patch 16).
    #[serde(default = "default_size")]
    pub size: u32,
    /// Per-channel mean subtracted after scaling to [0,1].
    #[serde(default = "default_mean")]
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by after subtracting the mean.
    #[serde(default = "default_std")]
    pub std: [f32; 3],
    /// Crop before resizing: `center` (a square on the short side, as the validator's level 0)
    /// or `none` (squash the whole image to a square).
    #[serde(default)]
    pub crop: Crop,
}

/// The crop [`preprocess_image`] applies before resizing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Crop {
    /// A centred square on the short side (offset `round((H − h)/2)`, ties to even, like PIL).
    #[default]
    Center,
    /// No crop: the whole image is resized to a square.
    None,
}

fn default_size() -> u32 {
    224
}
fn default_mean() -> [f32; 3] {
    IMAGENET_MEAN
}
fn default_std() -> [f32; 3] {
    IMAGENET_STD
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self { size: default_size(), mean: IMAGENET_MEAN, std: IMAGENET_STD, crop: Crop::Center }
    }
}

impl PreprocessConfig {
    /// A stable key naming this preprocessing, used to key cached features.
    pub fn key(&self) -> String {
        let f = |v: &[f32; 3]| v.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(",");
        let base = format!("resize{}-bilinear-aa|mean={}|std={}", self.size, f(&self.mean), f(&self.std));
        match self.crop {
            Crop::None => base,
            Crop::Center => format!("center-square|{base}"),
        }
    }

    /// Number of floats [`preprocess_image`] returns.
    pub fn len(&self) -> usize {
        3 * (self.size as usize) * (self.size as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }
}

/// Decode encoded image bytes (JPEG, PNG, WebP), refusing images larger than
/// [`MAX_DECODE_SIDE`] on a side. The error says why the bytes are not an image.
pub fn decode(bytes: &[u8]) -> Result<DynamicImage> {
    if bytes.is_empty() {
        bail!("empty image data");
    }
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().context("cannot read image header")?;
    if reader.format().is_none() {
        bail!("unknown image format (not JPEG, PNG or WebP)");
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DECODE_SIDE);
    limits.max_image_height = Some(MAX_DECODE_SIDE);
    reader.limits(limits);
    let img = reader.decode().context("cannot decode image")?;
    if img.width() == 0 || img.height() == 0 {
        bail!("image has zero width or height");
    }
    Ok(img)
}

/// Resize an image to `size×size` in linear float RGB (values in [0,1]), bilinear with antialias.
pub fn resize_rgb32f(img: &DynamicImage, size: u32) -> Rgb32FImage {
    let rgb = img.to_rgb32f();
    if rgb.width() == size && rgb.height() == size {
        return rgb;
    }
    image::imageops::resize(&rgb, size, size, FilterType::Triangle)
}

/// The centred square on the short side of a `w`×`h` image as `(x, y, side)`, with PIL's
/// `CenterCrop` offsets `int(round((W - side) / 2))` (Python's round: ties to even). The one
/// definition behind training's centre crop and the validator's level-0 crop.
pub fn center_square_box(w: u32, h: u32) -> (u32, u32, u32) {
    let s = w.min(h);
    let off = |d: u32| (d as f64 / 2.0).round_ties_even() as u32;
    (off(w - s), off(h - s), s)
}

/// The centred square on the short side of `img` ([`center_square_box`]).
pub fn center_square(img: &DynamicImage) -> DynamicImage {
    if img.width() == img.height() {
        return img.clone();
    }
    let (x, y, s) = center_square_box(img.width(), img.height());
    img.crop_imm(x, y, s, s)
}

/// Preprocess a decoded image into a normalised CHW tensor of `3·size·size` floats.
pub fn preprocess_image(img: &DynamicImage, cfg: &PreprocessConfig) -> Vec<f32> {
    let resized = match cfg.crop {
        Crop::Center if img.width() != img.height() => resize_rgb32f(&center_square(img), cfg.size),
        _ => resize_rgb32f(img, cfg.size),
    };
    let plane = (cfg.size * cfg.size) as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in resized.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (px.0[c] - cfg.mean[c]) / cfg.std[c];
        }
    }
    out
}

/// Decode encoded bytes to 8-bit RGB (the same decoder and limits as [`decode`]).
pub fn decode_rgb(bytes: &[u8]) -> Result<image::RgbImage> {
    Ok(decode(bytes)?.to_rgb8())
}

/// Decode and preprocess encoded bytes: the function training and serving both call.
pub fn preprocess_bytes(bytes: &[u8], cfg: &PreprocessConfig) -> Result<Vec<f32>> {
    Ok(preprocess_image(&decode(bytes)?, cfg))
}

/// [`preprocess_bytes`] of a batch, the images in parallel (rayon): the `N·3·size·size` floats of
/// an `(N, 3, size, size)` tensor, in input order. An image that does not decode is an error
/// naming its position in the batch.
pub fn preprocess_batch(images: &[&[u8]], cfg: &PreprocessConfig) -> Result<Vec<f32>> {
    use rayon::prelude::*;
    let plane = cfg.len();
    if plane == 0 {
        bail!("preprocessing size is 0");
    }
    let mut out = vec![0f32; images.len() * plane];
    out.par_chunks_mut(plane).zip(images.par_iter()).enumerate().try_for_each(|(i, (dst, bytes))| {
        dst.copy_from_slice(&preprocess_bytes(bytes, cfg).with_context(|| format!("image {i} of the batch"))?);
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    fn png(img: &RgbImage) -> Vec<u8> {
        let mut buf = Vec::new();
        DynamicImage::ImageRgb8(img.clone()).write_to(&mut Cursor::new(&mut buf), image::ImageFormat::Png).unwrap();
        buf
    }

    #[test]
    fn constant_image_normalises_to_known_values() {
        let img = RgbImage::from_pixel(300, 200, Rgb([255, 0, 128]));
        let cfg = PreprocessConfig { size: 32, ..Default::default() };
        let out = preprocess_bytes(&png(&img), &cfg).unwrap();
        assert_eq!(out.len(), cfg.len());
        let plane = 32 * 32;
        let expect = [
            (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0],
            (0.0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1],
            (128.0 / 255.0 - IMAGENET_MEAN[2]) / IMAGENET_STD[2],
        ];
        for c in 0..3 {
            for v in &out[c * plane..(c + 1) * plane] {
                assert!((v - expect[c]).abs() < 1e-4, "channel {c}: {v} vs {}", expect[c]);
            }
        }
    }

    #[test]
    fn left_right_halves_stay_apart_after_resize() {
        let mut img = RgbImage::new(400, 400);
        for (x, _, p) in img.enumerate_pixels_mut() {
            *p = if x < 200 { Rgb([0, 0, 0]) } else { Rgb([255, 255, 255]) };
        }
        let cfg = PreprocessConfig { size: 20, ..Default::default() };
        let out = preprocess_bytes(&png(&img), &cfg).unwrap();
        // Red channel, row 10: far left dark, far right bright.
        let row = &out[10 * 20..11 * 20];
        assert!(row[0] < -2.0 && row[19] > 2.0);
    }

    #[test]
    fn centre_crop_drops_the_side_bands_and_none_keeps_them() {
        // 300×200 with red bands 50 px wide left and right: the centre square is all blue.
        let img =
            RgbImage::from_fn(
                300,
                200,
                |x, _| if !(50..250).contains(&x) { Rgb([255, 0, 0]) } else { Rgb([0, 0, 255]) },
            );
        let cfg = PreprocessConfig { size: 32, ..Default::default() };
        let out = preprocess_bytes(&png(&img), &cfg).unwrap();
        let red = (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0];
        assert!(out[..32 * 32].iter().all(|v| *v < red - 1.0), "no red left after the centre crop");
        let squash = preprocess_bytes(&png(&img), &PreprocessConfig { crop: Crop::None, ..cfg.clone() }).unwrap();
        assert!((squash[0] - red).abs() < 1e-3, "without a crop the left band stays");
        assert_ne!(cfg.key(), PreprocessConfig { crop: Crop::None, ..cfg.clone() }.key());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let err = preprocess_bytes(b"definitely not an image", &PreprocessConfig::default()).unwrap_err();
        assert!(format!("{err:#}").contains("unknown image format"), "{err:#}");
        assert!(decode(&[]).is_err());
        let mut truncated = png(&RgbImage::from_pixel(64, 64, Rgb([1, 2, 3])));
        truncated.truncate(truncated.len() / 2);
        assert!(decode(&truncated).is_err());
    }

    #[test]
    fn a_batch_is_its_images_in_order_and_a_bad_one_is_named() {
        let imgs: Vec<Vec<u8>> = (0..5u8)
            .map(|k| png(&RgbImage::from_fn(40 + k as u32 * 7, 30, |x, y| Rgb([k * 40, (x * 3) as u8, (y * 5) as u8]))))
            .collect();
        let refs: Vec<&[u8]> = imgs.iter().map(Vec::as_slice).collect();
        let cfg = PreprocessConfig { size: 16, ..Default::default() };
        let batch = preprocess_batch(&refs, &cfg).unwrap();
        let one_by_one: Vec<f32> = refs.iter().flat_map(|b| preprocess_bytes(b, &cfg).unwrap()).collect();
        assert_eq!(batch, one_by_one);
        let mut bad = refs.clone();
        bad[3] = b"not an image";
        let err = preprocess_batch(&bad, &cfg).unwrap_err();
        assert!(format!("{err:#}").contains("image 3 of the batch"), "{err:#}");
    }
}
