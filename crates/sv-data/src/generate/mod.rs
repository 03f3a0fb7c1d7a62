//! Offline procedural street scenes with and without roadwork.
//!
//! Positives hold work-zone elements (cones, striped barriers, "ROAD WORK"/"DETOUR" signs,
//! excavators, workers in vests). Negatives are plain streets, and a share of them are hard
//! negatives: an "END ROAD WORK" sign, parked equipment with no cones, or orange objects that
//! are not roadwork (an orange car, orange bins, an autumn tree). Every scene gets a weather
//! (clear, overcast, rain, fog), a time of day (day, dusk, night) and sometimes motion blur.
//! Image `i` of a run depends only on `(seed, i)`, so runs are reproducible and resumable.

mod draw;
mod effects;
pub mod font;

use std::io::Cursor;

use anyhow::Result;
use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};

pub use draw::SAFETY_ORANGE;
use draw::View;

use crate::sample::{Label, Sample, SceneMeta, Source};

/// Generator settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerateConfig {
    /// Number of images.
    pub count: usize,
    /// Seed; image `i` depends only on `(seed, i)`.
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    /// Share of roadwork positives.
    pub positive_fraction: f64,
    /// Share of negatives that are hard negatives.
    pub hard_negative_fraction: f64,
    /// JPEG quality of the stored images.
    pub jpeg_quality: u8,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self {
            count: 1000,
            seed: 0,
            width: 320,
            height: 240,
            positive_fraction: 0.5,
            hard_negative_fraction: 0.4,
            jpeg_quality: 90,
        }
    }
}

/// Weather variants.
pub const WEATHERS: [&str; 4] = ["clear", "overcast", "rain", "fog"];
/// Light variants.
pub const TIMES: [&str; 3] = ["day", "dusk", "night"];

/// One generated scene before encoding.
#[derive(Debug, Clone)]
pub struct Scene {
    pub image: RgbImage,
    pub label: Label,
    pub meta: SceneMeta,
    /// What was drawn, e.g. `["cones:5", "barrier", "sign:ROAD WORK"]`.
    pub elements: Vec<String>,
    /// Whether this is a hard negative.
    pub hard_negative: bool,
}

fn rng_for(seed: u64, index: u64) -> StdRng {
    // SplitMix64 of (seed, index): independent streams per image.
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

/// Draw scene `index` of a run.
pub fn scene(cfg: &GenerateConfig, index: u64) -> Scene {
    let mut rng = rng_for(cfg.seed, index);
    let (w, h) = (cfg.width as f32, cfg.height as f32);
    let positive = rng.random_bool(cfg.positive_fraction);
    let hard = !positive && rng.random_bool(cfg.hard_negative_fraction);
    let weather = *WEATHERS.choose(&mut rng).expect("non-empty");
    let time: &str =
        [("day", 0.6), ("dusk", 0.2), ("night", 0.2)].choose_weighted(&mut rng, |x| x.1).expect("weights").0;
    let motion_blur = rng.random_bool(0.15);

    let horizon = h * rng.random_range(0.36..0.48);
    let v = View {
        w,
        h,
        horizon,
        vanish_x: w * rng.random_range(0.4..0.6),
        half_top: w * rng.random_range(0.01..0.03),
        half_bottom: w * rng.random_range(0.42..0.6),
    };
    let sky = match (time, weather) {
        ("night", _) => (Rgb([10, 12, 30]), Rgb([30, 34, 60])),
        ("dusk", "clear") => (Rgb([70, 60, 130]), Rgb([220, 120, 150])),
        (_, "clear") => (Rgb([70, 130, 210]), Rgb([170, 200, 235])),
        _ => (Rgb([150, 155, 165]), Rgb([195, 198, 205])),
    };
    let ground = *[Rgb([95, 120, 70]), Rgb([150, 150, 145]), Rgb([120, 110, 95])].choose(&mut rng).unwrap();
    let road = *[Rgb([75, 75, 80]), Rgb([95, 95, 98]), Rgb([60, 62, 66])].choose(&mut rng).unwrap();
    let mut img = RgbImage::new(cfg.width, cfg.height);
    draw::street(&mut img, &v, sky, ground, road, rng.random_bool(0.4));
    let palette =
        [Rgb([150, 140, 130]), Rgb([120, 90, 80]), Rgb([200, 190, 170]), Rgb([110, 120, 135]), Rgb([170, 165, 160])];
    draw::buildings(&mut img, &v, &mut rng, &palette, false);

    // Objects: (depth, draw order key) so that far things are drawn first.
    let mut objects: Vec<(f32, Obj)> = Vec::new();
    let mut elements = Vec::new();
    for _ in 0..rng.random_range(1..4) {
        let side = if rng.random_bool(0.5) { -1.0 } else { 1.0 };
        objects.push((rng.random_range(0.15..0.9), Obj::Tree(side * rng.random_range(1.3..1.8), Rgb([50, 110, 45]))));
    }
    let car_colors =
        [Rgb([30, 60, 140]), Rgb([180, 30, 30]), Rgb([220, 220, 220]), Rgb([40, 40, 40]), Rgb([120, 120, 125])];
    for _ in 0..rng.random_range(0..3) {
        let u = *[-0.5f32, 0.5].choose(&mut rng).unwrap();
        objects.push((rng.random_range(0.1..0.7), Obj::Car(u, *car_colors.choose(&mut rng).unwrap())));
    }

    if positive {
        // At least two kinds of work-zone element.
        let mut kinds: Vec<&str> = Vec::new();
        while kinds.len() < 2 {
            kinds.clear();
            for (k, p) in [("cones", 0.8), ("barrier", 0.5), ("sign", 0.6), ("excavator", 0.3), ("workers", 0.4)] {
                if rng.random_bool(p) {
                    kinds.push(k);
                }
            }
        }
        let side = if rng.random_bool(0.5) { -1.0f32 } else { 1.0 };
        for k in kinds {
            match k {
                "cones" => {
                    let n = rng.random_range(3..9);
                    let (t0, t1) = (rng.random_range(0.3..0.6), rng.random_range(0.7..0.95));
                    let u = side * rng.random_range(0.2..0.8);
                    for i in 0..n {
                        let t = t0 + (t1 - t0) * i as f32 / (n - 1) as f32;
                        objects.push((t, Obj::Cone(u + side * 0.05 * i as f32)));
                    }
                    elements.push(format!("cones:{n}"));
                }
                "barrier" => {
                    for _ in 0..rng.random_range(1..3) {
                        objects.push((rng.random_range(0.4..0.9), Obj::Barrier(side * rng.random_range(0.3..0.9))));
                    }
                    elements.push("barrier".into());
                }
                "sign" => {
                    let text: &'static [&'static str] =
                        if rng.random_bool(0.7) { &["ROAD", "WORK"] } else { &["DETOUR"] };
                    objects
                        .push((rng.random_range(0.45..0.85), Obj::Diamond(side * rng.random_range(1.0..1.12), text)));
                    elements.push(format!("sign:{}", text.join(" ")));
                }
                "excavator" => {
                    objects.push((
                        rng.random_range(0.35..0.7),
                        Obj::Excavator(side * rng.random_range(0.6..1.2), side > 0.0),
                    ));
                    elements.push("excavator".into());
                }
                _ => {
                    let n = rng.random_range(1..4);
                    for _ in 0..n {
                        let vest = if rng.random_bool(0.6) { SAFETY_ORANGE } else { Rgb([200, 255, 40]) };
                        objects
                            .push((rng.random_range(0.4..0.9), Obj::Worker(side * rng.random_range(0.4..1.1), vest)));
                    }
                    elements.push(format!("workers:{n}"));
                }
            }
        }
    } else if hard {
        let side = if rng.random_bool(0.5) { -1.0f32 } else { 1.0 };
        match rng.random_range(0..3) {
            0 => {
                objects.push((
                    rng.random_range(0.45..0.85),
                    Obj::RectSign(side * rng.random_range(1.0..1.12), &["END", "ROAD WORK"]),
                ));
                elements.push("sign:END ROAD WORK".into());
            }
            1 => {
                objects
                    .push((rng.random_range(0.3..0.6), Obj::Excavator(side * rng.random_range(1.4..1.8), side > 0.0)));
                elements.push("parked-excavator".into());
            }
            _ => match rng.random_range(0..3) {
                0 => {
                    objects.push((rng.random_range(0.4..0.8), Obj::Car(side * 0.5, Rgb([245, 120, 20]))));
                    elements.push("orange-car".into());
                }
                1 => {
                    for _ in 0..rng.random_range(1..3) {
                        objects.push((rng.random_range(0.5..0.9), Obj::Bin(side * rng.random_range(1.1..1.4))));
                    }
                    elements.push("orange-bins".into());
                }
                _ => {
                    objects.push((
                        rng.random_range(0.4..0.8),
                        Obj::Tree(side * rng.random_range(1.2..1.5), Rgb([225, 120, 30])),
                    ));
                    elements.push("autumn-tree".into());
                }
            },
        }
    }
    let night = time == "night";
    objects.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (t, o) in &objects {
        o.draw(&mut img, &v, *t, night);
    }

    effects::light(&mut img, time);
    if night {
        for k in 0..rng.random_range(2..5) {
            let side = if k % 2 == 0 { -1.0 } else { 1.0 };
            draw::street_light(&mut img, &v, rng.random_range(0.3..0.95), side * 1.15);
        }
    }
    match weather {
        "rain" => effects::rain(&mut img, &mut rng),
        "fog" => effects::fog(&mut img, &v, rng.random_range(0.5..0.8)),
        _ => {}
    }
    if motion_blur {
        effects::motion_blur(&mut img, rng.random_range(2..6));
    }
    effects::sensor_noise(&mut img, &mut rng, 4);

    let what = if elements.is_empty() { "no roadwork".to_string() } else { elements.join(", ") };
    let description =
        format!("procedural street, {time}, {weather}{}; {what}", if motion_blur { ", motion blur" } else { "" });
    Scene {
        image: img,
        label: if positive { Label::Roadwork } else { Label::None },
        meta: SceneMeta {
            weather: Some(weather.to_string()),
            time_of_day: Some(time.to_string()),
            description: Some(description),
        },
        elements,
        hard_negative: hard,
    }
}

#[derive(Debug, Clone, Copy)]
enum Obj {
    Tree(f32, Rgb<u8>),
    Car(f32, Rgb<u8>),
    Cone(f32),
    Barrier(f32),
    Diamond(f32, &'static [&'static str]),
    RectSign(f32, &'static [&'static str]),
    Excavator(f32, bool),
    Worker(f32, Rgb<u8>),
    Bin(f32),
}

impl Obj {
    fn draw(&self, img: &mut RgbImage, v: &View, t: f32, night: bool) {
        match *self {
            Obj::Tree(u, c) => draw::tree(img, v, t, u, c),
            Obj::Car(u, c) => draw::car(img, v, t, u, c, night),
            Obj::Cone(u) => draw::cone(img, v, t, u),
            Obj::Barrier(u) => draw::barrier(img, v, t, u),
            Obj::Diamond(u, text) => draw::diamond_sign(img, v, t, u, text),
            Obj::RectSign(u, text) => draw::rect_sign(img, v, t, u, text, SAFETY_ORANGE),
            Obj::Excavator(u, left) => draw::excavator(img, v, t, u, left),
            Obj::Worker(u, vest) => draw::worker(img, v, t, u, vest),
            Obj::Bin(u) => draw::bin(img, v, t, u),
        }
    }
}

/// Encode an RGB image as JPEG.
pub fn encode_jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(Cursor::new(&mut buf), quality);
    img.write_with_encoder(enc)?;
    Ok(buf)
}

/// Scene `index` as a stored sample (JPEG, source = procedural).
pub fn sample(cfg: &GenerateConfig, index: u64) -> Result<Sample> {
    let s = scene(cfg, index);
    let bytes = encode_jpeg(&s.image, cfg.jpeg_quality)?;
    let mut sample = Sample::from_encoded(
        bytes,
        s.label,
        Source::Procedural,
        s.meta,
        Some(format!("procedural:seed={}#{}", cfg.seed, index)),
    )?;
    sample.label_source = Some(crate::sample::LabelSource::Generator);
    if s.hard_negative
        && let Some(d) = sample.meta.description.as_mut()
    {
        d.push_str(" (hard negative)");
    }
    Ok(sample)
}

/// All samples of a run, lazily, in index order, with a progress bar. Scenes are drawn and
/// encoded in parallel (rayon), a chunk of a few per thread at a time, so memory stays bounded
/// whatever `count` is; image `i` is the same as [`sample`]`(cfg, i)`.
pub fn samples(cfg: &GenerateConfig) -> impl Iterator<Item = Result<Sample>> + Send + 'static {
    use rayon::prelude::*;
    let cfg = cfg.clone();
    let pb = sv_core::progress::bar(cfg.count as u64, "generate");
    let chunk = (rayon::current_num_threads() as u64 * 4).max(8);
    let count = cfg.count as u64;
    (0..count).step_by(chunk as usize).flat_map(move |start| {
        let end = (start + chunk).min(count);
        let out: Vec<Result<Sample>> = (start..end).into_par_iter().map(|i| sample(&cfg, i)).collect();
        pb.inc(end - start);
        out
    })
}

/// Share of pixels that look like safety orange (hue 10–40°, saturated, not dark).
pub fn orange_share(img: &RgbImage) -> f64 {
    let n = img.pixels().filter(|p| is_safety_orange(p.0)).count();
    n as f64 / (img.width() as f64 * img.height() as f64)
}

/// Whether an RGB colour reads as safety orange.
pub fn is_safety_orange([r, g, b]: [u8; 3]) -> bool {
    let (r, g, b) = (r as f32 / 255.0, g as f32 / 255.0, b as f32 / 255.0);
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    if max < 0.25 || max - min < 0.5 * max || max != r {
        return false;
    }
    let hue = 60.0 * (g - b) / (max - min);
    (10.0..=40.0).contains(&hue)
}

/// Rain streaks and darkening over any image (used by adversarial augmentation).
pub fn weather_rain(img: &RgbImage, rng: &mut StdRng) -> RgbImage {
    let mut out = img.clone();
    effects::rain(&mut out, rng);
    out
}

/// Horizontal motion blur of radius `r` over any image (used by adversarial augmentation).
pub fn weather_motion_blur(img: &RgbImage, r: u32) -> RgbImage {
    let mut out = img.clone();
    effects::motion_blur(&mut out, r);
    out
}

/// Fog of `density` over any image, strongest at mid-height (used by adversarial augmentation).
pub fn weather_fog(img: &RgbImage, density: f32) -> RgbImage {
    let (w, h) = (img.width() as f32, img.height() as f32);
    let v = View { w, h, horizon: 0.45 * h, vanish_x: 0.5 * w, half_top: 0.02 * w, half_bottom: 0.5 * w };
    let mut out = img.clone();
    effects::fog(&mut out, &v, density);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parallel_stream_is_every_scene_once_in_index_order() {
        // 37 is not a multiple of any chunk size, so the last chunk is a partial one.
        let cfg = GenerateConfig { count: 37, seed: 5, width: 48, height: 36, ..Default::default() };
        let streamed: Vec<Sample> = samples(&cfg).collect::<Result<_>>().unwrap();
        assert_eq!(streamed.len(), 37);
        for (i, s) in streamed.iter().enumerate() {
            let one = sample(&cfg, i as u64).unwrap();
            assert_eq!((&s.id, &s.image, s.label), (&one.id, &one.image, one.label), "image {i}");
        }
    }
}
