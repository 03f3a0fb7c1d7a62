//! Linear layers of the CPU forward. A layer's GEMM is cut into tiles of its output, each tile one
//! single-threaded `gemm` call run as a rayon task and followed at once by the layer's epilogue
//! (bias, RoPE, activation, residual, the next LayerNorm) on rows still in cache: one parallel
//! region a layer, where the `gemm` crate's own threading makes several (packing and compute per
//! depth block, with the weights packed on the calling thread) and the epilogue another.
//! `gemm = "library"` (`[backbone.forward.cpu]`) runs the same layers with the `gemm` crate's threading instead (for
//! comparison).

use std::marker::PhantomData;
use std::ops::Range;

use gemm::Parallelism;
use rayon::prelude::*;

/// A linear layer: its weight transposed to `(in, out)` row-major, so that a tile's columns are
/// contiguous in every row of the weight (the `gemm` crate then reads small tiles without
/// packing them), and its bias.
pub(super) struct Linear {
    pub wt: Vec<f32>,
    pub b: Vec<f32>,
    pub d_in: usize,
    pub d_out: usize,
}

impl Linear {
    /// From a checkpoint's `(out, in)` weight and its bias.
    pub fn from_out_in(w: &[f32], b: Vec<f32>, d_in: usize, d_out: usize) -> Self {
        assert_eq!(w.len(), d_in * d_out);
        let mut wt = vec![0f32; w.len()];
        for (o, row) in w.chunks_exact(d_in).enumerate() {
            for (i, v) in row.iter().enumerate() {
                wt[i * d_out + o] = *v;
            }
        }
        Self { wt, b, d_in, d_out }
    }
}

/// Who runs a layer's GEMM: our tiles (the default) or the `gemm` crate's threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Threading {
    Tiles,
    Library,
}

impl Threading {
    /// The threading a CPU forward config names (`gemm = "library"`: the `gemm` crate's).
    pub fn of(settings: &crate::backbone::settings::CpuForwardConfig) -> Self {
        match settings.gemm {
            crate::backbone::settings::CpuGemm::Library => Self::Library,
            crate::backbone::settings::CpuGemm::Tiles => Self::Tiles,
        }
    }
}

/// The tile size of a tiled GEMM's output `(m, n)`: `rows × cols`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Tiles {
    pub rows: usize,
    pub cols: usize,
}

/// Register block of the `gemm` crate's kernels along the tokens (its `NR`): tile heights are
/// multiples of it.
const NR: usize = 6;
/// Tiles of at most this many rows read the weight in place; taller ones have `gemm` pack their
/// columns of it first (its single-thread packing threshold, 8·NR).
const UNPACKED_ROWS: usize = 8 * NR;
/// Cost of packing one weight value, in multiply-adds (a copy against 32 FMA lanes a cycle).
const PACK_COST: usize = 32;
/// Fixed cost of one task (a rayon job and a `gemm` call's setup), in multiply-adds.
const TASK_COST: usize = 100_000;
/// Cost of a task's first read of one weight value (from memory or L3), in multiply-adds.
const STREAM_COST: usize = 64;
/// Cost of reading an unpacked weight value again (every `NR` rows of a tile read its weight).
const REREAD_COST: usize = 2;
/// Cost of a task's first read of one input value (mostly in L3: the previous layer wrote it).
const INPUT_COST: usize = 8;
/// Cost of a separate row-wise pass (LayerNorm: two reads and a write) per value.
const ROW_PASS_COST: usize = 16;
/// How many times cheaper the model must find narrow tiles plus a LayerNorm pass before it gives
/// up whole-row tiles. Interleaved A/B on the Xeon (benchmarks/RESULTS.md): whole rows won by
/// 10–14% where the model saw 1.3× (2 threads) and tied at 3× (ViT-S, 16 threads); narrow tiles
/// won by 9% at 4× (ViT-B batch 1, 16 threads).
const SPLIT_MARGIN: usize = 4;

/// Modelled time of one `rows × cols` task of depth `k`, in multiply-adds: the multiply-adds
/// (rounded up to the kernels' blocks), the weight's traffic (first read, then packing or
/// re-reads), the input's first read, and a fixed cost. (Counting multiply-adds and packing only
/// chose many short tiles that each read the weight again: 2× slower on the Xeon at batch 1.)
fn task_cost(rows: usize, cols: usize, k: usize) -> usize {
    let fma = rows.next_multiple_of(NR) * cols.next_multiple_of(16) * k;
    let weight = STREAM_COST + if rows > UNPACKED_ROWS { PACK_COST } else { REREAD_COST * (rows.div_ceil(NR) - 1) };
    fma + weight * cols * k + INPUT_COST * rows * k + TASK_COST
}

impl Tiles {
    /// Tasks of an `(m, n)` output.
    pub fn tasks(&self, m: usize, n: usize) -> usize {
        m.div_ceil(self.rows.max(1)) * n.div_ceil(self.cols.max(1))
    }

    /// Tiles for `(m, k) · (k, n)` on `threads` threads. Widths are multiples of `align` (whole
    /// heads for RoPE; 16, the kernels' row block, otherwise), or all of `n` where `full_rows` (an
    /// epilogue that needs whole rows, such as a LayerNorm). Picks the tiling with the least
    /// modelled time: rounds of `threads` tasks of [`task_cost`] each.
    pub fn plan(m: usize, k: usize, n: usize, align: usize, full_rows: bool, threads: usize) -> Self {
        Self::plan_cost(m, k, n, align, full_rows, threads).0
    }

    /// Tiles for a layer whose epilogue ends with a row-wise pass (residual + LayerNorm): whole
    /// rows, the pass then fused into the epilogue, unless narrower tiles plus a pass of their own
    /// cost [`SPLIT_MARGIN`] times less (wide layers on many threads, where every whole-row task
    /// reads all of the weight).
    /// `whole_rows` (`layer_norm = "fused"`) always takes whole rows.
    pub fn plan_residual(m: usize, k: usize, n: usize, threads: usize, whole_rows: bool) -> Self {
        let (rows, fused) = Self::plan_cost(m, k, n, 16, true, threads);
        if whole_rows {
            return rows;
        }
        let (tiles, cost) = Self::plan_cost(m, k, n, 16, false, threads);
        let pass = (m * n).div_ceil(threads.max(1)) * ROW_PASS_COST + TASK_COST;
        if tiles.cols < n && SPLIT_MARGIN * (cost + pass) < fused { tiles } else { rows }
    }

    fn plan_cost(m: usize, k: usize, n: usize, align: usize, full_rows: bool, threads: usize) -> (Self, usize) {
        let threads = threads.max(1);
        let (m, n, align) = (m.max(1), n.max(1), align.max(1));
        let widths: Vec<usize> =
            if full_rows { vec![n] } else { (1..=n.div_ceil(align)).map(|u| (u * align).min(n)).collect() };
        let mut best = (usize::MAX, Tiles { rows: m, cols: n });
        for cols in widths {
            let col_tiles = n.div_ceil(cols);
            let mut last = 0;
            for split in 1..=m.div_ceil(NR).min(8 * threads) {
                let rows = m.div_ceil(split).next_multiple_of(NR).min(m);
                if rows == last {
                    continue;
                }
                last = rows;
                let tasks = m.div_ceil(rows) * col_tiles;
                let cost = tasks.div_ceil(threads) * task_cost(rows, cols, k);
                if cost < best.0 {
                    best = (cost, Tiles { rows, cols });
                }
            }
        }
        (best.1, best.0)
    }
}

/// A row-major `(rows, width)` buffer that the tasks of one tiled GEMM write, each only inside
/// its own tile.
pub(super) struct SharedRows<'a> {
    ptr: *mut f32,
    len: usize,
    width: usize,
    _buf: PhantomData<&'a mut [f32]>,
}

// SAFETY: tasks take disjoint segments (the contract of `seg`).
unsafe impl Send for SharedRows<'_> {}
unsafe impl Sync for SharedRows<'_> {}

impl<'a> SharedRows<'a> {
    pub fn new(buf: &'a mut [f32], width: usize) -> Self {
        Self { ptr: buf.as_mut_ptr(), len: buf.len(), width, _buf: PhantomData }
    }

    /// Columns `cols` of row `r`.
    ///
    /// # Safety
    /// No other live slice of this buffer may overlap it: a task takes segments of the rows and
    /// columns of its own tile only.
    pub unsafe fn seg(&self, r: usize, cols: Range<usize>) -> &mut [f32] {
        // SAFETY: `tile_ptr` checks the bounds; exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.tile_ptr(r..r + 1, cols.clone()), cols.len()) }
    }

    /// Where the tile of rows `rows` and columns `cols` starts (row stride `width`), checked to lie
    /// inside the buffer, for a `gemm` call to write.
    ///
    /// # Safety
    /// Nothing else may touch the tile while it is written through the pointer.
    pub unsafe fn tile_ptr(&self, rows: Range<usize>, cols: Range<usize>) -> *mut f32 {
        assert!(
            cols.start <= cols.end
                && cols.end <= self.width
                && rows.start <= rows.end
                && rows.end * self.width <= self.len
        );
        // SAFETY: in bounds (checked).
        unsafe { self.ptr.add(rows.start * self.width + cols.start) }
    }
}

/// `out (m, n) = x (m, k) · W`, and `out2 = x · W2` where a second layer is given (a gated MLP's
/// gate), then `epi(r, cols, out_seg, out2_seg)` on every row segment of every finished tile
/// (`out2_seg` is empty without a second layer). With [`Threading::Library`] the GEMMs run on the
/// `gemm` crate's threads and the epilogue afterwards on whole rows.
#[allow(clippy::too_many_arguments)]
pub(super) fn linear(
    threading: Threading,
    tiles: Tiles,
    m: usize,
    x: &[f32],
    layer: &Linear,
    out: &mut [f32],
    second: Option<(&Linear, &mut [f32])>,
    epi: impl Fn(usize, Range<usize>, &mut [f32], &mut [f32]) + Sync,
) {
    let (k, n) = (layer.d_in, layer.d_out);
    assert!(x.len() >= m * k && out.len() >= m * n);
    let (w2, out2) = match second {
        Some((l, o)) => {
            assert!(l.d_in == k && l.d_out == n && o.len() >= m * n);
            (Some(&l.wt[..]), o)
        }
        None => (None, &mut [][..]),
    };
    if threading == Threading::Library {
        gemm_rows(m, k, n, x, &layer.wt, out, Parallelism::Rayon(0));
        if let Some(w2) = w2 {
            gemm_rows(m, k, n, x, w2, out2, Parallelism::Rayon(0));
        }
        let out2 = SharedRows::new(out2, n);
        par_rows(&mut out[..m * n], n, |r, row| {
            // SAFETY: each task takes its own rows of out2.
            let row2 = if w2.is_some() { unsafe { out2.seg(r, 0..n) } } else { &mut [][..] };
            epi(r, 0..n, row, row2);
        });
        return;
    }
    let (rows, cols) = (tiles.rows.clamp(1, m.max(1)), tiles.cols.clamp(1, n.max(1)));
    let (row_tiles, col_tiles) = (m.div_ceil(rows), n.div_ceil(cols));
    let dst = SharedRows::new(out, n);
    let dst2 = SharedRows::new(out2, n);
    (0..row_tiles * col_tiles).into_par_iter().for_each(|task| {
        // Column-major task order: neighbouring tasks share a tile of the weight.
        let (ri, ci) = (task % row_tiles, task / row_tiles);
        let (r0, c0) = (ri * rows, ci * cols);
        let (r1, c1) = ((r0 + rows).min(m), (c0 + cols).min(n));
        // SAFETY (both calls): the tile (r0..r1, c0..c1) belongs to this task alone.
        unsafe { tile_gemm(&dst, r0..r1, c0..c1, k, x, &layer.wt) };
        if let Some(w2) = w2 {
            unsafe { tile_gemm(&dst2, r0..r1, c0..c1, k, x, w2) };
        }
        for r in r0..r1 {
            // SAFETY: rows and columns of this task's tile.
            let (seg, seg2) =
                unsafe { (dst.seg(r, c0..c1), if w2.is_some() { dst2.seg(r, c0..c1) } else { &mut [][..] }) };
            epi(r, c0..c1, seg, seg2);
        }
    });
}

/// One tile of `dst = x · wt` on the calling thread.
///
/// # Safety
/// The tile's part of `dst` must be this caller's alone.
unsafe fn tile_gemm(dst: &SharedRows, rows: Range<usize>, cols: Range<usize>, k: usize, x: &[f32], wt: &[f32]) {
    assert!(rows.end * dst.width <= dst.len);
    // SAFETY: `dst` holds the tile's rows (checked); the tile is exclusive by the caller's contract.
    unsafe { gemm_tile(dst.ptr, dst.width, rows, cols, k, x, wt, Parallelism::None) }
}

/// `out = x · wt` for all `m` rows, on `par`.
fn gemm_rows(m: usize, k: usize, n: usize, x: &[f32], wt: &[f32], out: &mut [f32], par: Parallelism) {
    assert!(out.len() >= m * n);
    // SAFETY: `out` holds the m × n output (checked) and is borrowed mutably.
    unsafe { gemm_tile(out.as_mut_ptr(), n, 0..m, 0..n, k, x, wt, par) }
}

/// `dst[rows, cols] = x[rows] · wt[.., cols]`: `dst` row-major of width `n`, `x` `(.., k)` and
/// `wt` `(k, n)` row-major.
///
/// # Safety
/// `dst` must hold `rows.end × n` values, and nothing else may touch the tile meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_tile(
    dst: *mut f32,
    n: usize,
    rows: Range<usize>,
    cols: Range<usize>,
    k: usize,
    x: &[f32],
    wt: &[f32],
    par: Parallelism,
) {
    assert!(rows.end * k <= x.len() && k * n <= wt.len() && cols.end <= n && cols.start <= cols.end);
    // SAFETY: x and wt hold what is read (checked above); dst by the caller's contract.
    unsafe {
        gemm::gemm(
            rows.len(),
            cols.len(),
            k,
            dst.add(rows.start * n + cols.start),
            1,
            n as isize,
            false,
            x.as_ptr().add(rows.start * k),
            1,
            k as isize,
            wt.as_ptr().add(cols.start),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// `f(r, row)` for every `width`-wide row `r` of `buf`, in parallel chunks of rows (about four
/// chunks a thread).
pub(super) fn par_rows(buf: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = (buf.len() / width).div_ceil(4 * rayon::current_num_threads()).max(1);
    buf.par_chunks_mut(rows * width).enumerate().for_each(|(ci, chunk)| {
        for (j, row) in chunk.chunks_exact_mut(width).enumerate() {
            f(ci * rows + j, row);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f64 reference of `x · wᵀ` for `w (n, k)`.
    fn reference(m: usize, k: usize, n: usize, x: &[f32], w: &[f32]) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k).map(|i| x[r * k + i] as f64 * w[c * k + i] as f64).sum();
            }
        }
        out
    }

    #[test]
    fn tiled_and_library_gemms_match_a_reference_with_their_epilogues() {
        // Odd sizes: partial tiles in both directions, widths not multiples of the alignment.
        let (m, k, n) = (53, 37, 80);
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 211) as f32 / 105.0 - 1.0).collect();
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 104_729) % 173) as f32 / 86.0 - 1.0).collect();
        let w2: Vec<f32> = w.iter().rev().copied().collect();
        let layer = Linear::from_out_in(&w, (0..n).map(|c| c as f32).collect(), k, n);
        let gate = Linear::from_out_in(&w2, vec![0.0; n], k, n);
        let (want, want2) = (reference(m, k, n, &x, &w), reference(m, k, n, &x, &w2));
        let plans = [
            Tiles { rows: 6, cols: 16 },
            Tiles { rows: 12, cols: 48 },
            Tiles { rows: m, cols: n },
            Tiles::plan(m, k, n, 16, false, 4),
            Tiles::plan(m, k, n, 16, true, 3),
        ];
        for (threading, tiles) in plans.iter().map(|t| (Threading::Tiles, *t)).chain([(Threading::Library, plans[0])]) {
            let (mut out, mut out2) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
            // Epilogue: out += bias; out2 *= 2 (a second buffer written through its segment).
            linear(threading, tiles, m, &x, &layer, &mut out, Some((&gate, &mut out2)), |r, cols, seg, seg2| {
                assert_eq!((seg.len(), seg2.len()), (cols.len(), cols.len()), "row {r}");
                for (v, b) in seg.iter_mut().zip(&layer.b[cols]) {
                    *v += b;
                }
                seg2.iter_mut().for_each(|v| *v *= 2.0);
            });
            for i in 0..m * n {
                let (want, want2) = (want[i] + (i % n) as f64, 2.0 * want2[i]);
                assert!((out[i] as f64 - want).abs() < 1e-4, "{threading:?} {tiles:?} [{i}]: {} vs {want}", out[i]);
                assert!((out2[i] as f64 - want2).abs() < 1e-4, "{threading:?} {tiles:?} [{i}]: {} vs {want2}", out2[i]);
            }
        }
    }

    #[test]
    fn plans_fill_the_threads_and_respect_alignment() {
        for &(m, k, n, align, full, threads) in &[
            (201, 384, 1152, 64, false, 16),
            (201, 384, 384, 16, true, 16),
            (3216, 384, 1536, 64, false, 2),
            (1, 8, 8, 4, false, 8),
        ] {
            let t = Tiles::plan(m, k, n, align, full, threads);
            assert!(t.rows >= 1 && t.rows <= m && t.cols >= 1 && t.cols <= n, "{t:?}");
            if full {
                assert_eq!(t.cols, n);
            } else {
                assert!(t.cols % align == 0 || t.cols == n, "{t:?} not aligned to {align}");
            }
            // Most threads get work whenever the rows allow it.
            let tasks = m.div_ceil(t.rows) * n.div_ceil(t.cols);
            assert!(4 * tasks >= 3 * threads.min(m.div_ceil(NR)), "{t:?}: {tasks} tasks for {threads} threads");
        }
    }
}
