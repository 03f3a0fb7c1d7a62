//! Difficulty score in [0, 1] of a sample:
//!
//! `0.5·uncertainty + 0.3·blur + 0.2·edge_density`, where `uncertainty = 1 − |2p − 1|` for a
//! reference model's probability `p`, `blur = 1 − min(var(Laplacian(grey)) / 500, 1)`, and
//! `edge_density` is the share of Canny (50/150) edge pixels.

use image::{GrayImage, RgbImage};

/// The parts of a difficulty score.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Difficulty {
    pub uncertainty: f64,
    pub blur: f64,
    pub edge_density: f64,
    pub score: f64,
}

/// Variance of the 3×3 Laplacian of a grey image.
pub fn laplacian_variance(grey: &GrayImage) -> f64 {
    let lap = imageproc::filter::laplacian_filter(grey);
    let n = (lap.width() * lap.height()).max(1) as f64;
    let mean = lap.pixels().map(|p| p.0[0] as f64).sum::<f64>() / n;
    lap.pixels().map(|p| (p.0[0] as f64 - mean).powi(2)).sum::<f64>() / n
}

/// Share of pixels Canny (thresholds 50 and 150) marks as edges.
pub fn edge_density(grey: &GrayImage) -> f64 {
    let edges = imageproc::edges::canny(grey, 50.0, 150.0);
    let n = (edges.width() * edges.height()).max(1) as f64;
    edges.pixels().filter(|p| p.0[0] > 0).count() as f64 / n
}

/// Difficulty of an image given a reference model's P(roadwork) `p`.
pub fn difficulty(img: &RgbImage, p: f32) -> Difficulty {
    let grey = image::imageops::grayscale(img);
    let uncertainty = 1.0 - (2.0 * p as f64 - 1.0).abs();
    let blur = 1.0 - (laplacian_variance(&grey) / 500.0).min(1.0);
    let edge_density = edge_density(&grey);
    Difficulty { uncertainty, blur, edge_density, score: 0.5 * uncertainty + 0.3 * blur + 0.2 * edge_density }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blurred_copy_is_harder_and_the_formula_holds() {
        let cfg = crate::generate::GenerateConfig { seed: 4, ..Default::default() };
        for i in 0..4 {
            let sharp = crate::generate::scene(&cfg, i).image;
            let blurred = crate::augment::gaussian_blur(&sharp, 9);
            let (a, b) = (difficulty(&sharp, 0.9), difficulty(&blurred, 0.9));
            assert!(b.blur > a.blur, "scene {i}: blur term {} vs {}", a.blur, b.blur);
            assert!(b.edge_density < a.edge_density, "scene {i}: blur removes edges");
            for d in [a, b] {
                assert!((d.uncertainty - 0.2).abs() < 1e-6);
                let expect = 0.5 * d.uncertainty + 0.3 * d.blur + 0.2 * d.edge_density;
                assert!((d.score - expect).abs() < 1e-12 && (0.0..=1.0).contains(&d.score));
            }
        }
        let flat = RgbImage::from_pixel(64, 64, image::Rgb([90, 90, 90]));
        let d = difficulty(&flat, 0.5);
        assert_eq!((d.uncertainty, d.blur, d.edge_density), (1.0, 1.0, 0.0));
        assert!((d.score - 0.8).abs() < 1e-12);
    }
}
