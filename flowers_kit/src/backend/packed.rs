//! Convolutions as matrix products on weights packed once, with AVX2 and FMA.
//!
//! Every non-depthwise convolution is `out[m, n] = a[m, k] · w[k, n]`, where `a` is the input
//! itself (1×1, stride 1) or its im2col patches. A general gemm re-packs `w` on every call and
//! needs separate passes for the bias, the activation and a residual addend. Here `w` is
//! packed when the network is built, into panels of [`NR`] columns (`[k][NR]`, zero-padded),
//! and a 6×16 micro-kernel keeps its tile in 12 registers over the whole `k`, reading `a`'s
//! rows in place, then adds the bias (and the residual), clamps, and stores each value once.
//!
//! Cache blocking: rows go in chunks whose `a` fits in L1/L2, each chunk meets every panel
//! (`k · 64` bytes, L2-resident); with `parallel`, the row chunks are shared among threads.

use rayon::prelude::*;

use crate::models::graph::Activation;

/// Columns per panel: two AVX2 registers.
pub(crate) const NR: usize = 16;
/// Rows per micro-kernel tile.
const MR: usize = 6;
/// Bytes of `a` one row chunk aims to keep in cache.
const CHUNK_BYTES: usize = 256 * 1024;

/// A `[k, n]` weight matrix and its bias, in micro-kernel order.
#[derive(Debug, Clone)]
pub(crate) struct PackedWeights {
    k: usize,
    n: usize,
    /// `[n / NR rounded up][k][NR]`, the last panel's missing columns zero.
    panels: Vec<f32>,
    /// `[panels · NR]`, zero-padded.
    bias: Vec<f32>,
}

impl PackedWeights {
    /// Packs row-major `weights` (`[k, n]`) and `bias` (`[n]`); `None` when the lengths do
    /// not match the shape.
    pub(crate) fn new(weights: &[f32], bias: &[f32], k: usize, n: usize) -> Option<PackedWeights> {
        if k == 0 || n == 0 || Some(weights.len()) != k.checked_mul(n) || bias.len() != n {
            return None;
        }
        let panels = n.div_ceil(NR);
        let mut packed = vec![0f32; panels * k * NR];
        for (p, panel) in packed.chunks_exact_mut(k * NR).enumerate() {
            let first = p * NR;
            let width = (n - first).min(NR);
            for (row, dst) in weights.chunks_exact(n).zip(panel.chunks_exact_mut(NR)) {
                dst[..width].copy_from_slice(&row[first..first + width]);
            }
        }
        let mut padded = vec![0f32; panels * NR];
        padded[..n].copy_from_slice(bias);
        Some(PackedWeights {
            k,
            n,
            panels: packed,
            bias: padded,
        })
    }

    /// The inner dimension.
    pub(crate) fn k(&self) -> usize {
        self.k
    }
}

/// What happens to each product before it is stored.
#[derive(Clone, Copy)]
pub(crate) struct Epilogue<'a> {
    /// Added to every row: a residual addend `[m, n]`.
    pub(crate) residual: Option<&'a [f32]>,
    /// The result is clamped to `[lo, hi]` (ReLU: 0, ∞; ReLU6: 0, 6; none: −∞, ∞).
    pub(crate) lo: f32,
    pub(crate) hi: f32,
    /// Any other activation, applied to each chunk of rows while it is in L2.
    pub(crate) then: Activation,
}

impl<'a> Epilogue<'a> {
    /// `activation` as a clamp where it is one (ReLU, ReLU6), else applied chunk by chunk.
    pub(crate) fn new(activation: Activation, residual: Option<&'a [f32]>) -> Epilogue<'a> {
        let (lo, hi, then) = match activation {
            Activation::Relu => (0.0, f32::INFINITY, Activation::Linear),
            Activation::Relu6 => (0.0, 6.0, Activation::Linear),
            other => (f32::NEG_INFINITY, f32::INFINITY, other),
        };
        Epilogue {
            residual,
            lo,
            hi,
            then,
        }
    }
}

/// Whether this CPU can run [`product`].
pub(crate) fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[m, n] = clamp(a[m, k] · w + bias (+ residual))`.
///
/// # Panics
/// When the slices do not hold `m × k`, `m × n` (and `m × n` for the residual) values, or
/// the CPU lacks AVX2/FMA: the micro-kernel's unchecked loads rely on both.
pub(crate) fn product(
    out: &mut [f32],
    a: &[f32],
    m: usize,
    w: &PackedWeights,
    epilogue: Epilogue,
    parallel: bool,
) {
    let (k, n) = (w.k, w.n);
    assert!(
        supported()
            && Some(a.len()) == m.checked_mul(k)
            && Some(out.len()) == m.checked_mul(n)
            && epilogue.residual.is_none_or(|r| r.len() == out.len())
            && w.panels.len() == n.div_ceil(NR) * k * NR
            && w.bias.len() == n.div_ceil(NR) * NR,
        "packed product: slices do not match the shapes"
    );
    if m == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    let parallel = parallel && threads > 1 && m * k * n >= super::native::MIN_PARALLEL_MACS;
    let mut chunk = (CHUNK_BYTES / (4 * (k + n))).max(MR) / MR * MR;
    if parallel {
        // Enough chunks for every thread, each still a whole number of tiles.
        chunk = chunk.min(m.div_ceil(threads).div_ceil(MR) * MR);
    }
    let run = |(index, out): (usize, &mut [f32])| {
        let first = index * chunk;
        let rows = out.len() / n;
        let a = &a[first * k..(first + rows) * k];
        let residual = epilogue.residual.map(|r| &r[first * n..(first + rows) * n]);
        chunk_product(out, a, rows, w, residual, epilogue.lo, epilogue.hi);
        super::native::activate(out, epilogue.then);
    };
    if parallel {
        out.par_chunks_mut(chunk * n).enumerate().for_each(run);
    } else {
        out.chunks_mut(chunk * n).enumerate().for_each(run);
    }
}

/// One chunk of rows against every panel.
fn chunk_product(
    out: &mut [f32],
    a: &[f32],
    rows: usize,
    w: &PackedWeights,
    residual: Option<&[f32]>,
    lo: f32,
    hi: f32,
) {
    let (k, n) = (w.k, w.n);
    for (p, (panel, bias)) in w
        .panels
        .chunks_exact(k * NR)
        .zip(w.bias.chunks_exact(NR))
        .enumerate()
    {
        let first_col = p * NR;
        let cols = (n - first_col).min(NR);
        for first_row in (0..rows).step_by(MR) {
            let tile_rows = (rows - first_row).min(MR);
            // SAFETY: `product` asserted AVX2/FMA and the lengths: `a` holds rows × k values,
            // `out` (and `residual`) rows × n, the panel k × NR and the bias NR. The tile
            // reads rows first_row..first_row + tile_rows < rows of `a` (k values each),
            // the panel's k × NR values, and writes (reads) `cols` ≤ n − first_col values of
            // those rows of `out` (`residual`) from column first_col.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                avx2::tile(
                    a.as_ptr().add(first_row * k),
                    k,
                    tile_rows,
                    panel.as_ptr(),
                    bias.as_ptr(),
                    residual.map(|r| r.as_ptr().add(first_row * n + first_col)),
                    out.as_mut_ptr().add(first_row * n + first_col),
                    n,
                    cols,
                    lo,
                    hi,
                );
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// One `rows × cols` (≤ 6 × 16) tile of the product, with its epilogue.
    ///
    /// # Safety
    /// AVX2 and FMA are available; `a` points at `rows` rows of `k` values `lda` apart; `panel`
    /// at `k × NR` values and `bias` at `NR`; `out` (and `residual`) at `rows` rows of `cols`
    /// writable (readable) values, `ldo` apart.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile(
        a: *const f32,
        k: usize,
        rows: usize,
        panel: *const f32,
        bias: *const f32,
        residual: Option<*const f32>,
        out: *mut f32,
        ldo: usize,
        cols: usize,
        lo: f32,
        hi: f32,
    ) {
        // Missing rows repeat the last one: computed, never stored.
        let row = |r: usize| a.add(r.min(rows - 1) * k);
        let (a0, a1, a2, a3, a4, a5) = (row(0), row(1), row(2), row(3), row(4), row(5));
        let mut c = [_mm256_setzero_ps(); 2 * MR];
        let mut b = panel;
        for p in 0..k {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            b = b.add(NR);
            let x = _mm256_broadcast_ss(&*a0.add(p));
            c[0] = _mm256_fmadd_ps(x, b0, c[0]);
            c[1] = _mm256_fmadd_ps(x, b1, c[1]);
            let x = _mm256_broadcast_ss(&*a1.add(p));
            c[2] = _mm256_fmadd_ps(x, b0, c[2]);
            c[3] = _mm256_fmadd_ps(x, b1, c[3]);
            let x = _mm256_broadcast_ss(&*a2.add(p));
            c[4] = _mm256_fmadd_ps(x, b0, c[4]);
            c[5] = _mm256_fmadd_ps(x, b1, c[5]);
            let x = _mm256_broadcast_ss(&*a3.add(p));
            c[6] = _mm256_fmadd_ps(x, b0, c[6]);
            c[7] = _mm256_fmadd_ps(x, b1, c[7]);
            let x = _mm256_broadcast_ss(&*a4.add(p));
            c[8] = _mm256_fmadd_ps(x, b0, c[8]);
            c[9] = _mm256_fmadd_ps(x, b1, c[9]);
            let x = _mm256_broadcast_ss(&*a5.add(p));
            c[10] = _mm256_fmadd_ps(x, b0, c[10]);
            c[11] = _mm256_fmadd_ps(x, b1, c[11]);
        }
        let (bias0, bias1) = (_mm256_loadu_ps(bias), _mm256_loadu_ps(bias.add(8)));
        let (low, high) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
        for r in 0..rows {
            let mut v0 = _mm256_add_ps(c[2 * r], bias0);
            let mut v1 = _mm256_add_ps(c[2 * r + 1], bias1);
            let dst = out.add(r * ldo);
            if cols == NR {
                if let Some(res) = residual {
                    let res = res.add(r * ldo);
                    v0 = _mm256_add_ps(v0, _mm256_loadu_ps(res));
                    v1 = _mm256_add_ps(v1, _mm256_loadu_ps(res.add(8)));
                }
                v0 = _mm256_min_ps(_mm256_max_ps(v0, low), high);
                v1 = _mm256_min_ps(_mm256_max_ps(v1, low), high);
                _mm256_storeu_ps(dst, v0);
                _mm256_storeu_ps(dst.add(8), v1);
            } else {
                // A narrow last panel goes through a stack tile: no access past `cols`.
                let mut tmp = [0f32; NR];
                if let Some(res) = residual {
                    std::ptr::copy_nonoverlapping(res.add(r * ldo), tmp.as_mut_ptr(), cols);
                }
                let t = tmp.as_mut_ptr();
                v0 = _mm256_add_ps(v0, _mm256_loadu_ps(t));
                v1 = _mm256_add_ps(v1, _mm256_loadu_ps(t.add(8)));
                v0 = _mm256_min_ps(_mm256_max_ps(v0, low), high);
                v1 = _mm256_min_ps(_mm256_max_ps(v1, low), high);
                _mm256_storeu_ps(t, v0);
                _mm256_storeu_ps(t.add(8), v1);
                std::ptr::copy_nonoverlapping(t, dst, cols);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packed product against a plain triple loop, for shapes with partial tiles and
    /// panels, a residual, each clamp, and both threading modes.
    #[test]
    fn matches_the_plain_product() {
        if !supported() {
            return;
        }
        let mut seed = 1u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        for &(m, k, n) in &[
            (1, 1, 1),
            (7, 3, 17),
            (49, 96, 24),
            (200, 27, 40),
            (13, 5, 8),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let w: Vec<f32> = (0..k * n).map(|_| next()).collect();
            let bias: Vec<f32> = (0..n).map(|_| next()).collect();
            let residual: Vec<f32> = (0..m * n).map(|_| next()).collect();
            let packed = PackedWeights::new(&w, &bias, k, n).unwrap();
            for (res, lo, hi) in [
                (None, f32::NEG_INFINITY, f32::INFINITY),
                (Some(&residual[..]), 0.0, 0.1),
            ] {
                for parallel in [false, true] {
                    let mut out = vec![f32::NAN; m * n];
                    let epilogue = Epilogue {
                        residual: res,
                        lo,
                        hi,
                        then: Activation::Linear,
                    };
                    product(&mut out, &a, m, &packed, epilogue, parallel);
                    for i in 0..m {
                        for j in 0..n {
                            let mut want = bias[j] + res.map_or(0.0, |r| r[i * n + j]);
                            for p in 0..k {
                                want += a[i * k + p] * w[p * n + j];
                            }
                            let want = want.max(lo).min(hi);
                            let got = out[i * n + j];
                            assert!((got - want).abs() < 1e-5, "{m}×{k}×{n} [{i},{j}]");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn refuses_mismatched_weights() {
        assert!(PackedWeights::new(&[0.0; 5], &[0.0; 2], 3, 2).is_none());
        assert!(PackedWeights::new(&[0.0; 6], &[0.0; 3], 3, 2).is_none());
        assert!(PackedWeights::new(&[], &[], 0, 0).is_none());
    }
}
