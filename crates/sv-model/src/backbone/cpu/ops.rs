//! Element-wise kernels of the CPU forward (bias, residual, RoPE, LayerNorm, softmax, GELU/SiLU)
//! and the polynomial `exp`/`erf` they use, each compiled for AVX-512, AVX2+FMA and the build's
//! baseline and chosen at run time.

/// Element-wise kernels, each compiled three times (AVX-512, AVX2+FMA, the build's baseline)
/// and chosen at run time; the bodies are plain loops that LLVM vectorises.
macro_rules! simd_kernel {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$doc])*
        #[inline]
        pub(super) fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn v4($($arg: $ty),*) { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) { body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features the function is compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { v3($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

simd_kernel! {
    /// `row += bias`.
    fn add_bias(row: &mut [f32], bias: &[f32]) {
        for (r, b) in row.iter_mut().zip(bias) {
            *r += b;
        }
    }
}

simd_kernel! {
    /// `row = a + bias`.
    fn add_into(row: &mut [f32], a: &[f32], bias: &[f32]) {
        for ((r, a), b) in row.iter_mut().zip(a).zip(bias) {
            *r = a + b;
        }
    }
}

simd_kernel! {
    /// `x += ls ⊙ (a + bias)`.
    fn scaled_residual(x: &mut [f32], a: &[f32], bias: &[f32], ls: &[f32]) {
        for (((x, a), b), l) in x.iter_mut().zip(a).zip(bias).zip(ls) {
            *x += l * (a + b);
        }
    }
}

simd_kernel! {
    /// Rotate-half RoPE of one head with the signed tables of [`rope_host`]:
    /// `x·cos + swap_halves(x)·sin`.
    fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = x.len() / 2;
        let (lo, hi) = x.split_at_mut(half);
        let (c_lo, c_hi) = cos.split_at(half);
        let (s_lo, s_hi) = sin.split_at(half);
        for i in 0..half {
            let (a, b) = (lo[i], hi[i]);
            lo[i] = a * c_lo[i] + b * s_lo[i];
            hi[i] = b * c_hi[i] + a * s_hi[i];
        }
    }
}

simd_kernel! {
    /// `(x − mean) / sqrt(var + eps) · g + b` of one row (biased variance, as torch).
    fn layer_norm(x: &[f32], y: &mut [f32], g: &[f32], b: &[f32], eps: f32) {
        let n = x.len() as f32;
        let mean = sum8(x) / n;
        let mut acc = [0f32; 8];
        let chunks = x.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            for l in 0..8 {
                let v = c[l] - mean;
                acc[l] += v * v;
            }
        }
        let mut var: f32 = acc.iter().sum();
        for v in rest {
            var += (v - mean) * (v - mean);
        }
        let rstd = 1.0 / (var / n + eps).sqrt();
        for (((y, x), g), b) in y.iter_mut().zip(x).zip(g).zip(b) {
            *y = (x - mean) * rstd * g + b;
        }
    }
}

simd_kernel! {
    /// Softmax of one row, in place.
    fn softmax(row: &mut [f32]) {
        let mut mx = [f32::NEG_INFINITY; 8];
        let chunks = row.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            for l in 0..8 {
                mx[l] = if c[l] > mx[l] { c[l] } else { mx[l] };
            }
        }
        let mut max = mx.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
        for &v in rest {
            max = if v > max { v } else { max };
        }
        for v in row.iter_mut() {
            *v = exp(*v - max);
        }
        let inv = 1.0 / sum8(row);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

simd_kernel! {
    /// `row = act(row + bias)`: exact (erf) GELU, or SiLU.
    fn activation(row: &mut [f32], bias: &[f32], silu: bool) {
        if silu {
            for (v, b) in row.iter_mut().zip(bias) {
                let x = *v + b;
                *v = x / (1.0 + exp(-x));
            }
        } else {
            for (v, b) in row.iter_mut().zip(bias) {
                let x = *v + b;
                *v = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
            }
        }
    }
}

simd_kernel! {
    /// Gated MLP: `up = act(gate + gate_bias) · (up + up_bias)`, act SiLU (SwiGLU) or exact GELU.
    fn gated(up: &mut [f32], up_bias: &[f32], gate: &[f32], gate_bias: &[f32], silu: bool) {
        for (((u, ub), g), gb) in up.iter_mut().zip(up_bias).zip(gate).zip(gate_bias) {
            let x = g + gb;
            let a = if silu { x / (1.0 + exp(-x)) } else { 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)) };
            *u = a * (*u + ub);
        }
    }
}

/// Sum with eight independent lanes (so that it vectorises).
#[inline(always)]
fn sum8(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// `eˣ` to about 2 ulp: `2ⁿ·eʳ` with n = round(x/ln 2) (Cody–Waite reduction) and a degree-6
/// polynomial for eʳ on |r| ≤ ln2/2; x is clamped to [−87.3, 88.7], so the low end gives the
/// smallest normal float (no denormals) and x above ~88.4 gives +inf.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
    let x = x.clamp(-87.3, 88.7);
    let nf = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - nf * 0.693_359_4 - nf * -2.121_944_4e-4;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((nf as i32 + 127) as u32) << 23)
}

/// erf to about 5·10⁻⁷ absolute in f32 (1.5·10⁻⁷ of Abramowitz & Stegun 7.1.26, the formula of PyTorch's vectorised
/// CPU `erf`).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let ax = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * ax);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-ax * ax);
    y.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_match_std_and_libm() {
        let mut worst_exp = 0f64;
        let mut worst_erf = 0f64;
        for i in -40_000..=40_000 {
            let x = i as f32 * 0.002; // [−80, 80]
            let e = exp(x) as f64;
            let want = (x as f64).exp();
            worst_exp = worst_exp.max(((e - want) / want).abs());
            let x = i as f32 * 0.0002; // [−8, 8]
            worst_erf = worst_erf.max((erf(x) as f64 - libm::erf(x as f64)).abs());
        }
        assert!(worst_exp < 5e-7, "exp relative error {worst_exp:e}");
        assert!(worst_erf < 1e-6, "erf absolute error {worst_erf:e}"); // 1.5e-7 of the formula + f32 rounding
        assert_eq!(exp(-1e30), exp(-87.3));
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn kernels_match_their_formulas_on_odd_lengths() {
        let x: Vec<f32> = (0..37).map(|i| ((i * 7919) % 101) as f32 / 13.0 - 3.5).collect();
        let mut s = x.clone();
        softmax(&mut s);
        let max = x.iter().cloned().fold(f32::MIN, f32::max);
        let z: f64 = x.iter().map(|v| ((v - max) as f64).exp()).sum();
        for (got, v) in s.iter().zip(&x) {
            let want = ((v - max) as f64).exp() / z;
            assert!((*got as f64 - want).abs() < 1e-6, "softmax {got} vs {want}");
        }
        let g: Vec<f32> = (0..37).map(|i| 0.5 + i as f32 / 37.0).collect();
        let b: Vec<f32> = (0..37).map(|i| i as f32 / 100.0).collect();
        let mut y = vec![0f32; 37];
        layer_norm(&x, &mut y, &g, &b, 1e-5);
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / 37.0;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 37.0;
        for i in 0..37 {
            let want = (x[i] as f64 - mean) / (var + 1e-5).sqrt() * g[i] as f64 + b[i] as f64;
            assert!((y[i] as f64 - want).abs() < 1e-5, "layer norm {} vs {want}", y[i]);
        }
        let mut a = x.clone();
        activation(&mut a, &b, false);
        for i in 0..37 {
            let v = (x[i] + b[i]) as f64;
            let want = 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2));
            assert!((a[i] as f64 - want).abs() < 2e-6, "gelu {} vs {want}", a[i]);
        }
    }
}
