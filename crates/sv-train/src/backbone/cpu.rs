//! The DINOv3 forward pass written for the CPU: the same network as [`Dinov3`], in f32, with
//! the work laid out for a CPU instead of as one tensor op at a time.
//!
//! Burn's ndarray backend runs the forward as ~40 tensor ops a block, each allocating its output
//! and passing over memory again; a profile of ViT-S/16 spent a quarter of its time in GEMMs and
//! the rest in element-wise passes, page faults of fresh buffers, a scalar `erf`, strided copies
//! and two thread pools yielding to each other. Here:
//! - every linear layer is one `(B·T, K) × (K, N)` GEMM of the `gemm` crate (runtime-dispatched
//!   SIMD kernels) on rayon's pool, reading the checkpoint's `(out, in)` weights in place;
//! - bias, RoPE, activation, LayerScale and the residual are fused into one pass after their GEMM;
//! - attention runs per (image, head) on rayon: `q·kᵀ` GEMM, softmax in place, `·v` GEMM into the
//!   output's columns, reading q, k and v as strided views of the fused qkv buffer;
//! - LayerNorm, softmax, GELU (`erf`) and SiLU use polynomial `exp`/`erf` that vectorise, built
//!   for AVX2+FMA and AVX-512 with a portable fallback, chosen at run time;
//! - the activation buffers are allocated once a forward pass and reused by every block.
//!
//! Weights come from a loaded [`Dinov3`] by checkpoint name ([`Dinov3::named_tensors`]), so both
//! paths always hold the same numbers; `tests/parity.rs` holds both to transformers' output.

use std::cell::RefCell;
use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use gemm::Parallelism;
use rayon::prelude::*;

use super::dinov3::{Dinov3, Dinov3Config, rope_host};

/// A model's tensors by checkpoint name, taken out one by one.
struct Named(HashMap<String, Vec<f32>>);

impl Named {
    fn take(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        let v = self.0.remove(name).with_context(|| format!("backbone tensor {name} is missing"))?;
        if v.len() != len {
            bail!("backbone tensor {name} has {} values, expected {len}", v.len());
        }
        Ok(v)
    }

    /// A linear layer's weight `(out, in)` and its bias (zeros where the layer has none).
    fn linear(&mut self, name: &str, d_in: usize, d_out: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let w = self.take(&format!("{name}.weight"), d_in * d_out)?;
        let bias = format!("{name}.bias");
        let b = if self.0.contains_key(&bias) { self.take(&bias, d_out)? } else { vec![0.0; d_out] };
        Ok((w, b))
    }
}

/// One transformer block's weights, linear weights as `(out, in)` row-major.
struct CpuBlock {
    norm1: (Vec<f32>, Vec<f32>),
    /// q, k and v stacked: `(3D, D)`, bias `(3D)`.
    qkv: (Vec<f32>, Vec<f32>),
    o: (Vec<f32>, Vec<f32>),
    ls1: Vec<f32>,
    norm2: (Vec<f32>, Vec<f32>),
    gate: Option<(Vec<f32>, Vec<f32>)>,
    up: (Vec<f32>, Vec<f32>),
    down: (Vec<f32>, Vec<f32>),
    ls2: Vec<f32>,
}

/// The backbone's weights laid out for [`CpuDinov3::forward`].
pub struct CpuDinov3 {
    d: usize,
    heads: usize,
    inter: usize,
    patch: usize,
    channels: usize,
    eps: f32,
    silu: bool,
    rope_theta: f64,
    /// `(D, C·p·p)`: the convolution's weight as a linear layer.
    patch_w: Vec<f32>,
    patch_b: Vec<f32>,
    /// CLS then the registers, `(1 + R, D)`.
    prefix_tokens: Vec<f32>,
    layers: Vec<CpuBlock>,
    norm: (Vec<f32>, Vec<f32>),
}

/// Outputs of [`CpuDinov3::forward`] (those of [`super::Dinov3Output`], on the host).
pub struct CpuOutput {
    /// Tokens per image, `1 + R + N`.
    pub tokens: usize,
    /// `(B, tokens, D)` after the final norm.
    pub last_hidden_state: Vec<f32>,
    /// `(B, 2D)`: [CLS, mean of patch tokens].
    pub features: Vec<f32>,
}

impl CpuDinov3 {
    /// The CPU layout of a loaded f32 backbone.
    pub fn new<B: Backend>(cfg: &Dinov3Config, model: &Dinov3<B>) -> Result<Self> {
        cfg.validate()?;
        let mut w = Named(model.named_tensors().into_iter().map(|t| (t.name, t.values)).collect());
        let d = cfg.hidden_size;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let inter = cfg.intermediate_size;
        for i in 0..cfg.num_hidden_layers {
            let pre = format!("layer.{i}");
            let (qw, qb) = w.linear(&format!("{pre}.attention.q_proj"), d, d)?;
            let (kw, kb) = w.linear(&format!("{pre}.attention.k_proj"), d, d)?;
            let (vw, vb) = w.linear(&format!("{pre}.attention.v_proj"), d, d)?;
            let o = w.linear(&format!("{pre}.attention.o_proj"), d, d)?;
            let gate = if cfg.gated() { Some(w.linear(&format!("{pre}.mlp.gate_proj"), d, inter)?) } else { None };
            let up = w.linear(&format!("{pre}.mlp.up_proj"), d, inter)?;
            let down = w.linear(&format!("{pre}.mlp.down_proj"), inter, d)?;
            layers.push(CpuBlock {
                norm1: (w.take(&format!("{pre}.norm1.weight"), d)?, w.take(&format!("{pre}.norm1.bias"), d)?),
                qkv: ([qw, kw, vw].concat(), [qb, kb, vb].concat()),
                o,
                ls1: w.take(&format!("{pre}.layer_scale1.lambda1"), d)?,
                norm2: (w.take(&format!("{pre}.norm2.weight"), d)?, w.take(&format!("{pre}.norm2.bias"), d)?),
                gate,
                up,
                down,
                ls2: w.take(&format!("{pre}.layer_scale2.lambda1"), d)?,
            });
        }
        let (c, p) = (cfg.num_channels, cfg.patch_size);
        let mut prefix_tokens = w.take("embeddings.cls_token", d)?;
        if cfg.num_register_tokens > 0 {
            prefix_tokens.extend(w.take("embeddings.register_tokens", cfg.num_register_tokens * d)?);
        }
        Ok(Self {
            d,
            heads: cfg.num_attention_heads,
            inter,
            patch: p,
            channels: c,
            eps: cfg.layer_norm_eps as f32,
            silu: cfg.hidden_act != "gelu",
            rope_theta: cfg.rope_theta,
            patch_w: w.take("embeddings.patch_embeddings.weight", d * c * p * p)?,
            patch_b: w.take("embeddings.patch_embeddings.bias", d)?,
            prefix_tokens,
            layers,
            norm: (w.take("norm.weight", d)?, w.take("norm.bias", d)?),
        })
    }

    /// The CPU layout where this build's backend is the CPU one (ndarray) and the model is f32:
    /// where the Burn forward would run on the same cores, slower. Inference only: none on an
    /// autodiff backend (no gradients flow through it). `SV_CPU_KERNELS=0` turns it off
    /// (everything then runs through Burn).
    pub fn for_backend<B: Backend>(cfg: &Dinov3Config, model: &Dinov3<B>) -> Result<Option<Self>> {
        let off = std::env::var("SV_CPU_KERNELS").is_ok_and(|v| v == "0");
        if off || crate::backend_name() != "ndarray" || model.devices().first().is_some_and(B::ad_enabled) || model.dtype() != DType::F32 {
            return Ok(None);
        }
        Self::new(cfg, model).map(Some)
    }

    fn prefix(&self) -> usize {
        self.prefix_tokens.len() / self.d
    }

    /// Forward pass on normalised pixels `(n, C, h, w)`, row-major; h and w are cropped down to
    /// multiples of the patch size, as the strided convolution does.
    pub fn forward(&self, pixels: &[f32], n: usize, h: usize, w: usize) -> Result<CpuOutput> {
        let (c, p, d) = (self.channels, self.patch, self.d);
        if pixels.len() != n * c * h * w {
            bail!("pixel batch has {} values, expected {n}×{c}×{h}×{w} = {}", pixels.len(), n * c * h * w);
        }
        let (gh, gw) = (h / p, w / p);
        if gh == 0 || gw == 0 {
            bail!("images of {h}×{w} px are smaller than one {p}×{p} patch");
        }
        let prefix = self.prefix();
        let np = gh * gw;
        let t = prefix + np;
        if n == 0 {
            return Ok(CpuOutput { tokens: t, last_hidden_state: Vec::new(), features: Vec::new() });
        }
        let m = n * t;
        let hd = d / self.heads;
        let (cos, sin) = rope_host(gh, gw, prefix, hd, self.rope_theta);

        // Patch embedding: im2col, one GEMM, then [CLS; registers; patches] per image.
        let kp = c * p * p;
        let mut cols = vec![0f32; n * np * kp];
        cols.par_chunks_mut(kp).enumerate().for_each(|(row, out)| {
            let (b, q) = (row / np, row % np);
            let (py, px) = (q / gw, q % gw);
            for ch in 0..c {
                for ky in 0..p {
                    let src = ((b * c + ch) * h + py * p + ky) * w + px * p;
                    out[(ch * p + ky) * p..][..p].copy_from_slice(&pixels[src..src + p]);
                }
            }
        });
        let mut emb = vec![0f32; n * np * d];
        matmul_wt(n * np, kp, d, &cols, &self.patch_w, &mut emb);
        drop(cols);
        let mut x = vec![0f32; m * d];
        x.par_chunks_mut(t * d).zip(emb.par_chunks(np * d)).for_each(|(img, e)| {
            img[..prefix * d].copy_from_slice(&self.prefix_tokens);
            for (row, er) in img[prefix * d..].chunks_exact_mut(d).zip(e.chunks_exact(d)) {
                add_into(row, er, &self.patch_b);
            }
        });
        drop(emb);

        let mut y = vec![0f32; m * d];
        let mut qkv = vec![0f32; m * 3 * d];
        let mut attn = vec![0f32; m * d];
        let mut a = vec![0f32; m * d];
        let mut hid = vec![0f32; m * self.inter];
        let mut gate = if self.layers.iter().any(|l| l.gate.is_some()) { vec![0f32; m * self.inter] } else { Vec::new() };
        let eps = self.eps;
        let layer_norm_rows = |x: &[f32], y: &mut [f32], (g, b): &(Vec<f32>, Vec<f32>)| {
            par_rows(y, d, |r, yr| layer_norm(&x[r * d..][..d], yr, g, b, eps));
        };
        // `x += ls ⊙ (a + bias)`.
        let residual = |x: &mut [f32], a: &[f32], bias: &[f32], ls: &[f32]| {
            par_rows(x, d, |r, xr| scaled_residual(xr, &a[r * d..][..d], bias, ls));
        };
        for blk in &self.layers {
            // Attention: LN₁, fused qkv GEMM, bias + RoPE, attention per (image, head), o_proj.
            layer_norm_rows(&x, &mut y, &blk.norm1);
            matmul_wt(m, d, 3 * d, &y, &blk.qkv.0, &mut qkv);
            par_rows(&mut qkv, 3 * d, |r, row| {
                add_bias(row, &blk.qkv.1);
                let tok = r % t;
                if tok >= prefix {
                    let (cs, sn) = (&cos[tok * hd..][..hd], &sin[tok * hd..][..hd]);
                    for head in row[..2 * d].chunks_exact_mut(hd) {
                        rope(head, cs, sn);
                    }
                }
            });
            attention(&qkv, &mut attn, n, t, d, self.heads);
            matmul_wt(m, d, d, &attn, &blk.o.0, &mut a);
            residual(&mut x, &a, &blk.o.1, &blk.ls1);

            // MLP: LN₂, up (and gate) GEMM, activation, down GEMM.
            layer_norm_rows(&x, &mut y, &blk.norm2);
            let i = self.inter;
            matmul_wt(m, d, i, &y, &blk.up.0, &mut hid);
            match &blk.gate {
                Some((gw_, gb)) => {
                    matmul_wt(m, d, i, &y, gw_, &mut gate);
                    par_rows(&mut hid, i, |r, hr| gated(hr, &blk.up.1, &gate[r * i..][..i], gb, self.silu));
                }
                None => par_rows(&mut hid, i, |_, hr| activation(hr, &blk.up.1, self.silu)),
            }
            matmul_wt(m, i, d, &hid, &blk.down.0, &mut a);
            residual(&mut x, &a, &blk.down.1, &blk.ls2);
        }
        layer_norm_rows(&x, &mut y, &self.norm);
        let mut features = vec![0f32; n * 2 * d];
        for (img, f) in y.chunks_exact(t * d).zip(features.chunks_exact_mut(2 * d)) {
            f[..d].copy_from_slice(&img[..d]);
            let mean = &mut f[d..];
            for row in img[prefix * d..].chunks_exact(d) {
                for (s, v) in mean.iter_mut().zip(row) {
                    *s += v;
                }
            }
            let inv = 1.0 / np as f32;
            mean.iter_mut().for_each(|s| *s *= inv);
        }
        Ok(CpuOutput { tokens: t, last_hidden_state: y, features })
    }
}

/// `f(r, row)` for every `width`-wide row `r` of `buf`, in parallel chunks of rows (about four
/// chunks a thread).
fn par_rows(buf: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = (buf.len() / width).div_ceil(4 * rayon::current_num_threads()).max(1);
    buf.par_chunks_mut(rows * width).enumerate().for_each(|(ci, chunk)| {
        for (j, row) in chunk.chunks_exact_mut(width).enumerate() {
            f(ci * rows + j, row);
        }
    });
}

/// `out (m, n) = a (m, k) · wᵀ`, `w` being `(n, k)` row-major (a checkpoint's `(out, in)`).
fn matmul_wt(m: usize, k: usize, n: usize, a: &[f32], w: &[f32], out: &mut [f32]) {
    assert!(a.len() >= m * k && w.len() >= n * k && out.len() >= m * n);
    // SAFETY: the three buffers hold the extents given (checked above); `out` is borrowed mutably.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::Rayon(0),
        )
    }
}

/// A pointer handed to rayon tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Softmax attention of every (image, head) on the fused `qkv (n·t, 3D)` buffer into
/// `out (n·t, D)`, head `h` in columns `h·hd..(h+1)·hd`. A task is a block of query rows of one
/// (image, head): one per (image, head) when those fill the threads (large batches), else the
/// queries are cut into blocks of at least 16 rows (batch 1 on many cores).
fn attention(qkv: &[f32], out: &mut [f32], n: usize, t: usize, d: usize, heads: usize) {
    let hd = d / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let blocks = (4 * rayon::current_num_threads()).div_ceil(n * heads).clamp(1, t.div_ceil(16));
    let rows = t.div_ceil(blocks);
    let dst = SharedMut(out.as_mut_ptr());
    (0..n * heads * blocks).into_par_iter().for_each(|task| {
        let (b, h, blk) = (task / (heads * blocks), task / blocks % heads, task % blocks);
        let r0 = blk * rows;
        if r0 >= t {
            return;
        }
        let qr = rows.min(t - r0);
        let base = b * t * 3 * d + h * hd;
        let (q, k, v) = (&qkv[base + r0 * 3 * d..], &qkv[base + d..], &qkv[base + 2 * d..]);
        SCORES.with(|s| {
            let mut s = s.borrow_mut();
            s.resize(qr * t, 0.0);
            let dst = dst;
            // SAFETY: q (qr, hd), k and v (t, hd) are strided views inside `qkv` (row stride 3D,
            // the last row ending within the buffer); the scores are qr×t; the output block (qr
            // rows of stride D from row b·t + r0, column h·hd) belongs to this task alone.
            unsafe {
                gemm::gemm(
                    qr,
                    t,
                    hd,
                    s.as_mut_ptr(),
                    1,
                    t as isize,
                    false,
                    q.as_ptr(),
                    1,
                    3 * d as isize,
                    k.as_ptr(),
                    3 * d as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
                for row in s.chunks_exact_mut(t) {
                    softmax(row);
                }
                gemm::gemm(
                    qr,
                    hd,
                    t,
                    dst.0.add((b * t + r0) * d + h * hd),
                    1,
                    d as isize,
                    false,
                    s.as_ptr(),
                    1,
                    t as isize,
                    v.as_ptr(),
                    1,
                    3 * d as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            // Keep at most 16 MiB of scores a thread after a large image.
            if s.capacity() > 1 << 22 {
                s.clear();
                s.shrink_to(1 << 22);
            }
        });
    });
}

/// Element-wise kernels, each compiled three times (AVX-512, AVX2+FMA, the build's baseline)
/// and chosen at run time; the bodies are plain loops that LLVM vectorises.
macro_rules! simd_kernel {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$doc])*
        #[inline]
        fn $name($($arg: $ty),*) {
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
    fn gated_gelu_and_empty_batches_follow_the_burn_forward() {
        use burn::tensor::{Tensor, TensorData};
        let mut cfg = Dinov3Config::preset("vit-tiny").unwrap();
        cfg.use_gated_mlp = Some(true); // a gated MLP whose hidden_act stays "gelu"
        let src = super::super::weights::RandomSource { seed: 2, std: 0.3, layer_scale: 1.0 };
        let device = Default::default();
        let model = Dinov3::<burn_ndarray::NdArray<f32>>::load(&cfg, &src, &device).unwrap();
        let cpu = CpuDinov3::new(&cfg, &model).unwrap();
        let (n, s) = (2, 48);
        let x: Vec<f32> = (0..n * 3 * s * s).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
        let fast = cpu.forward(&x, n, s, s).unwrap().features;
        let burn = super::super::host(model.forward(Tensor::from_data(TensorData::new(x, [n, 3, s, s]), &device)).features);
        let err = fast.iter().zip(&burn).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let scale = burn.iter().map(|v| v.abs()).fold(0f32, f32::max);
        assert_eq!(fast.len(), burn.len());
        assert!(err <= 1e-4 * scale.max(1.0), "max difference {err} (scale {scale})");
        let empty = cpu.forward(&[], 0, s, s).unwrap();
        assert!(empty.features.is_empty() && empty.last_hidden_state.is_empty());
        let err = cpu.forward(&[0.0; 10], 1, s, s).err().unwrap().to_string();
        assert!(err.contains("10 values") && err.contains("1×3×48×48"), "{err}");
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
