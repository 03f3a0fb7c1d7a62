//! The INT8 codec of stored weights: symmetric per-row INT8 (`s_j = max_i |W_ji| / 127`,
//! `q = clamp(round(W / s), ±127)`), and the symmetric fake quantisation of activations. The
//! bundle reader ([`crate::backbone::weights`]) decodes with it; the calibration and export of
//! sv-train encode with it.

/// Per-row symmetric INT8 of a `(rows, cols)` matrix: the values and one scale per row.
pub fn quantize_rows(w: &[f32], rows: usize) -> (Vec<i8>, Vec<f32>) {
    let cols = w.len() / rows.max(1);
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(rows);
    for row in w.chunks_exact(cols.max(1)) {
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
        q.extend(row.iter().map(|v| (v / s).round_ties_even().clamp(-127.0, 127.0) as i8));
        scales.push(s);
    }
    (q, scales)
}

/// Inverse of [`quantize_rows`].
pub fn dequantize_rows(q: &[i8], scales: &[f32]) -> Vec<f32> {
    let cols = q.len() / scales.len().max(1);
    q.chunks_exact(cols.max(1)).zip(scales).flat_map(|(row, s)| row.iter().map(move |v| *v as f32 * s)).collect()
}

/// Symmetric signed 8-bit fake quantisation with range `amax`: `clamp(round(x·127/amax), ±127)·amax/127`
/// (round half to even, as `torch.round`).
pub fn fake_quant(x: f32, amax: f32) -> f32 {
    if amax <= 0.0 {
        return 0.0;
    }
    let scale = 127.0 / amax;
    (x * scale).round_ties_even().clamp(-127.0, 127.0) / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_row_quantisation_round_trips_within_half_a_step() {
        let w: Vec<f32> = (0..64).map(|i| ((i * 37 % 64) as f32 - 32.0) / (1.0 + (i / 16) as f32 * 10.0)).collect();
        let (q, s) = quantize_rows(&w, 4);
        assert_eq!(s.len(), 4);
        let back = dequantize_rows(&q, &s);
        for (row, (a, b)) in w.chunks(16).zip(back.chunks(16)).enumerate() {
            let amax = a.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() <= amax / 127.0 / 2.0 + 1e-6), "row {row}");
            // The largest magnitude maps to ±127 exactly.
            assert!(q[row * 16..(row + 1) * 16].iter().any(|v| v.abs() == 127));
        }
    }
}
