//! Softmax attention of the CPU forward, on strided views of the fused qkv buffer.

use std::cell::RefCell;

use gemm::Parallelism;
use rayon::prelude::*;

use super::linear::SharedRows;
use super::ops::softmax;

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Softmax attention of every (image, head) on the fused `qkv (n·t, 3D)` buffer into
/// `out (n·t, D)`, head `h` in columns `h·hd..(h+1)·hd`. A task is a block of query rows of one
/// (image, head): one per (image, head) when those fill the threads (large batches), else the
/// queries are cut into blocks of at least 16 rows (batch 1 on many cores).
pub(super) fn attention(qkv: &[f32], out: &mut [f32], n: usize, t: usize, d: usize, heads: usize) {
    let hd = d / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let blocks = (4 * rayon::current_num_threads()).div_ceil(n * heads).clamp(1, t.div_ceil(16));
    let rows = t.div_ceil(blocks);
    let dst = SharedRows::new(out, d);
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
                    dst.tile_ptr(b * t + r0..b * t + r0 + qr, h * hd..(h + 1) * hd),
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
