//! The DINOv3 forward pass written for the CPU: the same network as [`Dinov3`], in f32, with
//! the work laid out for a CPU instead of as one tensor op at a time.
//!
//! Burn's ndarray backend runs the forward as ~40 tensor ops a block, each allocating its output
//! and passing over memory again; a profile of ViT-S/16 spent a quarter of its time in GEMMs and
//! the rest in element-wise passes, page faults of fresh buffers, a scalar `erf`, strided copies
//! and two thread pools yielding to each other. Here:
//! - every linear layer is one `(B·T, K) × (K, N)` GEMM of the `gemm` crate (runtime-dispatched
//!   SIMD kernels) cut into tiles that run as rayon tasks ([`linear`]), each tile followed by its
//!   epilogue (bias, RoPE, activation, LayerScale + residual + the next LayerNorm) while in cache:
//!   a block is five parallel regions (qkv, attention, o, up, down);
//! - attention runs per (image, head) on rayon ([`attention`]): `q·kᵀ` GEMM, softmax in place,
//!   `·v` GEMM into the output's columns, reading q, k and v as strided views of the fused qkv
//!   buffer;
//! - LayerNorm, softmax, GELU (`erf`) and SiLU use polynomial `exp`/`erf` that vectorise, built
//!   for AVX2+FMA and AVX-512 with a portable fallback, chosen at run time ([`ops`]);
//! - the activation buffers are allocated once a forward pass and reused by every block.
//!
//! Weights come from a loaded [`Dinov3`] by checkpoint name ([`Dinov3::named_tensors`]), so both
//! paths always hold the same numbers; `tests/parity.rs` holds both to transformers' output.
//! (Just over 500 lines, with the tiling tests beside the forward they check.)

mod attention;
mod linear;
mod ops;

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use rayon::prelude::*;

use super::dinov3::{Dinov3, Dinov3Config, rope_host};
use super::settings::{CpuForwardConfig, CpuLayerNorm};
use attention::attention;
use linear::{Linear, SharedRows, Threading, Tiles, linear, par_rows};
use ops::{activation, add_bias, add_into, gated, layer_norm, rope, scaled_residual};

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
    fn weight_bias(&mut self, name: &str, d_in: usize, d_out: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let w = self.take(&format!("{name}.weight"), d_in * d_out)?;
        let bias = format!("{name}.bias");
        let b = if self.0.contains_key(&bias) { self.take(&bias, d_out)? } else { vec![0.0; d_out] };
        Ok((w, b))
    }

    fn linear(&mut self, name: &str, d_in: usize, d_out: usize) -> Result<Linear> {
        let (w, b) = self.weight_bias(name, d_in, d_out)?;
        Ok(Linear::from_out_in(&w, b, d_in, d_out))
    }
}

/// One transformer block's weights.
struct CpuBlock {
    norm1: (Vec<f32>, Vec<f32>),
    /// q, k and v stacked: `D → 3D`.
    qkv: Linear,
    o: Linear,
    ls1: Vec<f32>,
    norm2: (Vec<f32>, Vec<f32>),
    gate: Option<Linear>,
    up: Linear,
    down: Linear,
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
    /// The convolution as a linear layer `C·p·p → D` on im2col rows.
    patch_embed: Linear,
    /// CLS then the registers, `(1 + R, D)`.
    prefix_tokens: Vec<f32>,
    layers: Vec<CpuBlock>,
    norm: (Vec<f32>, Vec<f32>),
    /// GEMM threading and residual-norm planning (`[backbone.forward.cpu]`).
    settings: CpuForwardConfig,
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
            let (qw, qb) = w.weight_bias(&format!("{pre}.attention.q_proj"), d, d)?;
            let (kw, kb) = w.weight_bias(&format!("{pre}.attention.k_proj"), d, d)?;
            let (vw, vb) = w.weight_bias(&format!("{pre}.attention.v_proj"), d, d)?;
            let o = w.linear(&format!("{pre}.attention.o_proj"), d, d)?;
            let gate = if cfg.gated() { Some(w.linear(&format!("{pre}.mlp.gate_proj"), d, inter)?) } else { None };
            let up = w.linear(&format!("{pre}.mlp.up_proj"), d, inter)?;
            let down = w.linear(&format!("{pre}.mlp.down_proj"), inter, d)?;
            layers.push(CpuBlock {
                norm1: (w.take(&format!("{pre}.norm1.weight"), d)?, w.take(&format!("{pre}.norm1.bias"), d)?),
                qkv: Linear::from_out_in(&[qw, kw, vw].concat(), [qb, kb, vb].concat(), d, 3 * d),
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
            settings: CpuForwardConfig::default(),
            d,
            heads: cfg.num_attention_heads,
            inter,
            patch: p,
            channels: c,
            eps: cfg.layer_norm_eps as f32,
            silu: cfg.hidden_act == super::dinov3::Activation::Silu,
            rope_theta: cfg.rope_theta,
            patch_embed: Linear::from_out_in(
                &w.take("embeddings.patch_embeddings.weight", d * c * p * p)?,
                w.take("embeddings.patch_embeddings.bias", d)?,
                c * p * p,
                d,
            ),
            prefix_tokens,
            layers,
            norm: (w.take("norm.weight", d)?, w.take("norm.bias", d)?),
        })
    }

    /// The CPU layout where this build's backend is the CPU one (ndarray) and the model is f32:
    /// where the Burn forward would run on the same cores, slower. Inference only: none on an
    /// autodiff backend (no gradients flow through it).
    pub fn for_backend<B: Backend>(
        cfg: &Dinov3Config,
        model: &Dinov3<B>,
        settings: &CpuForwardConfig,
    ) -> Result<Option<Self>> {
        if crate::backend_name() != "ndarray"
            || model.devices().first().is_some_and(B::ad_enabled)
            || model.dtype() != DType::F32
        {
            return Ok(None);
        }
        Self::new(cfg, model).map(|m| Some(m.with_settings(*settings)))
    }

    /// This forward with other switches.
    pub fn with_settings(mut self, settings: CpuForwardConfig) -> Self {
        self.settings = settings;
        self
    }

    /// The switches this forward runs with.
    pub fn settings(&self) -> &CpuForwardConfig {
        &self.settings
    }

    fn prefix(&self) -> usize {
        self.prefix_tokens.len() / self.d
    }

    /// Forward pass on normalised pixels `(n, C, h, w)`, row-major; h and w are cropped down to
    /// multiples of the patch size, as the strided convolution does.
    pub fn forward(&self, pixels: &[f32], n: usize, h: usize, w: usize) -> Result<CpuOutput> {
        self.forward_with(pixels, n, h, w, Threading::of(&self.settings))
    }

    fn forward_with(&self, pixels: &[f32], n: usize, h: usize, w: usize, threading: Threading) -> Result<CpuOutput> {
        let (c, p, d) = (self.channels, self.patch, self.d);
        if pixels.len() != n * c * h * w {
            bail!("pixel batch has {} values, expected {n}×{c}×{h}×{w} = {}", pixels.len(), n * c * h * w);
        }
        let (gh, gw) = (h / p, w / p);
        if gh == 0 || gw == 0 {
            bail!("images of {h}×{w} px are smaller than one {p}×{p} patch");
        }
        let mut profile = super::profile::Laps::start();
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
        let threads = rayon::current_num_threads();
        let mut x = vec![0f32; m * d];
        x.par_chunks_mut(t * d).for_each(|img| img[..prefix * d].copy_from_slice(&self.prefix_tokens));
        let mut emb = vec![0f32; n * np * d];
        let p_embed = Tiles::plan(n * np, kp, d, 16, false, threads);
        {
            let xs = SharedRows::new(&mut x, d);
            linear(threading, p_embed, n * np, &cols, &self.patch_embed, &mut emb, None, |r, cs, seg, _| {
                // Patch r/np, r%np goes to its image's token prefix + r%np.
                let row = (r / np) * t + prefix + r % np;
                // SAFETY: rows map one to one, so this task alone writes these columns of `row`.
                add_into(unsafe { xs.seg(row, cs.clone()) }, seg, &self.patch_embed.b[cs]);
            });
        }
        drop((cols, emb));

        let mut y = vec![0f32; m * d];
        let mut qkv = vec![0f32; m * 3 * d];
        let mut attn = vec![0f32; m * d];
        let mut a = vec![0f32; m * d];
        let mut hid = vec![0f32; m * self.inter];
        let mut gate =
            if self.layers.iter().any(|l| l.gate.is_some()) { vec![0f32; m * self.inter] } else { Vec::new() };
        let (eps, i) = (self.eps, self.inter);
        // Tiles of the qkv output hold whole heads (RoPE rotates within a head). o and down end
        // with the residual and the next LayerNorm: inside the epilogue when their tiles are whole
        // rows, else (wide layers, where whole-row tiles would each read all of the weight) in a
        // pass of its own; the cost model picks.
        let (p_qkv, p_up) =
            (Tiles::plan(m, d, 3 * d, head_align(hd), false, threads), Tiles::plan(m, d, i, 64, false, threads));
        let whole = self.settings.layer_norm == CpuLayerNorm::Fused;
        let (p_o, p_down) =
            (Tiles::plan_residual(m, d, d, threads, whole), Tiles::plan_residual(m, i, d, threads, whole));
        let layers = [("embed", n * np, kp, d, p_embed), ("qkv", m, d, 3 * d, p_qkv), ("o", m, d, d, p_o)];
        for (layer, rows, k, n, tiles) in layers.into_iter().chain([("up", m, d, i, p_up), ("down", m, i, d, p_down)]) {
            profile.plan(layer, || {
                format!("({rows}, {k}) × ({k}, {n}) on {threads} threads: {tiles:?}, {} tasks", tiles.tasks(rows, n))
            });
        }
        profile.lap("embed");

        let first_norm = self.layers.first().map_or(&self.norm, |l| &l.norm1);
        par_rows(&mut y, d, |r, yr| layer_norm(&x[r * d..][..d], yr, &first_norm.0, &first_norm.1, eps));
        profile.lap("norm");
        for (li, blk) in self.layers.iter().enumerate() {
            let next_norm = self.layers.get(li + 1).map_or(&self.norm, |l| &l.norm1);
            // Attention: qkv GEMM + bias + RoPE, attention per (image, head), o GEMM + LayerScale +
            // residual, LN₂ (y = norm2(x)).
            linear(threading, p_qkv, m, &y, &blk.qkv, &mut qkv, None, |r, cols, seg, _| {
                add_bias(seg, &blk.qkv.b[cols.clone()]);
                let tok = r % t;
                if tok >= prefix {
                    let (cs, sn) = (&cos[tok * hd..][..hd], &sin[tok * hd..][..hd]);
                    // Tiles start on a head; q and k are the first 2D columns.
                    debug_assert!(cols.start % hd == 0, "qkv tile starts inside a head");
                    for c in (cols.start..cols.end.min(2 * d)).step_by(hd) {
                        rope(&mut seg[c - cols.start..][..hd], cs, sn);
                    }
                }
            });
            profile.lap("qkv");
            attention(&qkv, &mut attn, n, t, d, self.heads);
            profile.lap("attention");
            self.residual_norm(threading, p_o, m, &attn, (&blk.o, &blk.ls1[..]), &blk.norm2, &mut a, &mut x, &mut y);
            profile.lap("o");

            // MLP: up (and gate) GEMM + activation, down GEMM + LayerScale + residual, the next
            // block's LN₁ (or the final norm).
            match &blk.gate {
                Some(g) => {
                    linear(threading, p_up, m, &y, &blk.up, &mut hid, Some((g, &mut gate)), |_, cols, up, gt| {
                        gated(up, &blk.up.b[cols.clone()], gt, &g.b[cols], self.silu)
                    })
                }
                None => linear(threading, p_up, m, &y, &blk.up, &mut hid, None, |_, cols, seg, _| {
                    activation(seg, &blk.up.b[cols], self.silu)
                }),
            }
            profile.lap("up");
            self.residual_norm(
                threading,
                p_down,
                m,
                &hid,
                (&blk.down, &blk.ls2[..]),
                next_norm,
                &mut a,
                &mut x,
                &mut y,
            );
            profile.lap("down");
        }
        // y = norm(x) now (the last block's epilogue, or the LayerNorm above without blocks).
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
        profile.lap("features");
        Ok(CpuOutput { tokens: t, last_hidden_state: y, features })
    }
}

impl CpuDinov3 {
    /// `x += ls ⊙ (input · W + b)`, then `y = LayerNorm(x)`: in the GEMM's epilogue when its
    /// tiles are whole rows, else in a pass of its own. `a` is the GEMM's scratch output.
    #[allow(clippy::too_many_arguments)]
    fn residual_norm(
        &self,
        threading: Threading,
        tiles: Tiles,
        m: usize,
        input: &[f32],
        (layer, ls): (&Linear, &[f32]),
        (g, b): &(Vec<f32>, Vec<f32>),
        a: &mut [f32],
        x: &mut [f32],
        y: &mut [f32],
    ) {
        let (d, eps) = (self.d, self.eps);
        let whole_rows = tiles.cols >= d || threading == Threading::Library;
        {
            let (xs, ys) = (SharedRows::new(x, d), SharedRows::new(y, d));
            linear(threading, tiles, m, input, layer, a, None, |r, cols, seg, _| {
                // SAFETY: row r, columns `cols` belong to this task's tile.
                let xr = unsafe { xs.seg(r, cols.clone()) };
                scaled_residual(xr, seg, &layer.b[cols.clone()], &ls[cols.clone()]);
                if whole_rows {
                    // SAFETY: as above (the tile is the whole row); y is not the GEMM's input.
                    layer_norm(xr, unsafe { ys.seg(r, 0..d) }, g, b, eps);
                }
            });
        }
        if !whole_rows {
            par_rows(y, d, |r, yr| layer_norm(&x[r * d..][..d], yr, g, b, eps));
        }
    }
}

/// Width multiple of the qkv tiles: whole heads (RoPE rotates within a head) and whole 16-float
/// blocks of the GEMM kernels, `lcm(hd, 16)`.
fn head_align(hd: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    hd * 16 / gcd(hd, 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vit-tiny of random weights (a gated MLP with GELU where `gated`) and its CPU layout.
    fn tiny(seed: u64, layer_scale: f32, gated: bool) -> (Dinov3<burn_ndarray::NdArray<f32>>, CpuDinov3) {
        let mut cfg = Dinov3Config::preset(crate::backbone::Preset::VitTiny);
        if gated {
            cfg.use_gated_mlp = Some(true);
        }
        let src = super::super::weights::RandomSource { seed, std: 0.3, layer_scale };
        let model = Dinov3::load(&cfg, &src, &Default::default()).unwrap();
        let cpu = CpuDinov3::new(&cfg, &model).unwrap();
        (model, cpu)
    }

    #[test]
    fn gated_gelu_and_empty_batches_follow_the_burn_forward() {
        use burn::tensor::{Tensor, TensorData};
        let (model, cpu) = tiny(2, 1.0, true); // a gated MLP whose hidden_act stays "gelu"
        let device = Default::default();
        let (n, s) = (2, 48);
        let x: Vec<f32> = (0..n * 3 * s * s).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
        let fast = cpu.forward(&x, n, s, s).unwrap().features;
        let burn =
            super::super::host(model.forward(Tensor::from_data(TensorData::new(x, [n, 3, s, s]), &device)).features);
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
    fn residual_and_layer_norm_agree_in_the_epilogue_and_in_a_pass_of_their_own() {
        let (_, cpu) = tiny(5, 0.5, false);
        let (m, d, blk) = (13, cpu.d, &cpu.layers[0]);
        let input: Vec<f32> = (0..m * d).map(|i| ((i * 7919) % 97) as f32 / 48.0 - 1.0).collect();
        let x0: Vec<f32> = (0..m * d).map(|i| ((i * 104_729) % 89) as f32 / 44.0 - 1.0).collect();
        // Reference in f64: x += ls ⊙ (input · Wᵀ + b); y = LayerNorm₂(x).
        let (mut want_x, mut want_y) = (vec![0f64; m * d], vec![0f64; m * d]);
        for r in 0..m {
            for c in 0..d {
                let dot: f64 = (0..d).map(|k| input[r * d + k] as f64 * blk.o.wt[k * d + c] as f64).sum();
                want_x[r * d + c] = x0[r * d + c] as f64 + blk.ls1[c] as f64 * (dot + blk.o.b[c] as f64);
            }
            let row = &want_x[r * d..][..d];
            let mean = row.iter().sum::<f64>() / d as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
            for c in 0..d {
                want_y[r * d + c] =
                    (row[c] - mean) / (var + cpu.eps as f64).sqrt() * blk.norm2.0[c] as f64 + blk.norm2.1[c] as f64;
            }
        }
        // Whole-row tiles (LayerNorm in the epilogue), narrow tiles (a pass of its own), the library.
        for (threading, tiles) in [
            (Threading::Tiles, Tiles { rows: 6, cols: d }),
            (Threading::Tiles, Tiles { rows: 5, cols: 64 }),
            (Threading::Library, Tiles { rows: m, cols: d }),
        ] {
            let (mut a, mut x, mut y) = (vec![0f32; m * d], x0.clone(), vec![f32::NAN; m * d]);
            cpu.residual_norm(threading, tiles, m, &input, (&blk.o, &blk.ls1[..]), &blk.norm2, &mut a, &mut x, &mut y);
            for i in 0..m * d {
                assert!(
                    (x[i] as f64 - want_x[i]).abs() < 1e-4,
                    "{threading:?} {tiles:?} x[{i}]: {} vs {}",
                    x[i],
                    want_x[i]
                );
                assert!(
                    (y[i] as f64 - want_y[i]).abs() < 1e-3,
                    "{threading:?} {tiles:?} y[{i}]: {} vs {}",
                    y[i],
                    want_y[i]
                );
            }
        }
    }

    #[test]
    fn every_tiling_and_threading_gives_the_burn_forward() {
        use burn::tensor::{Tensor, TensorData};
        let (model, cpu) = tiny(3, 1.0, false);
        let device = Default::default();
        let (n, s) = (2, 64);
        let x: Vec<f32> = (0..n * 3 * s * s).map(|i| ((i * 53) % 127) as f32 / 63.0 - 1.0).collect();
        let out = model.forward(Tensor::from_data(TensorData::new(x.clone(), [n, 3, s, s]), &device));
        let (want_f, want_h) = (super::super::host(out.features), super::super::host(out.last_hidden_state));
        // On 16 threads the qkv tiles are narrower than a row, so RoPE runs on tiles that start
        // mid-row (at a head); on 1 thread every layer is one tile; 3 is in between.
        let (d, m) = (cpu.d, n * (cpu.prefix() + (s / cpu.patch).pow(2)));
        let hd = d / cpu.heads;
        assert!(Tiles::plan(m, d, 3 * d, head_align(hd), false, 16).cols < 3 * d);
        for threads in [1, 3, 16] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for threading in [Threading::Tiles, Threading::Library] {
                let got = pool.install(|| cpu.forward_with(&x, n, s, s, threading)).unwrap();
                for (name, got, want) in
                    [("features", &got.features, &want_f), ("last_hidden_state", &got.last_hidden_state, &want_h)]
                {
                    assert_eq!(got.len(), want.len(), "{name}");
                    let err = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    let scale = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
                    assert!(
                        err <= 1e-4 * scale.max(1.0),
                        "{threads} threads, {threading:?}: {name} differs by {err} (scale {scale})"
                    );
                }
            }
        }
    }
}
