//! The 6×16 micro-kernel with AVX2 + FMA: two 256-bit registers per row, 12 accumulators.

use std::arch::x86_64::*;

use super::{Segments, Tile, MR, NR};

/// One `rows × cols` (≤ 6 × 16) tile of the product, with its epilogue.
///
/// # Safety
/// AVX2 and FMA are available; every pointer of `segments` points at `run` values (the
/// tile's six operand rows, segment after segment along `k`); `panel` at
/// `segments.count() · run × NR` values and `bias` at `NR`; `out` (and `residual`) at
/// `rows` rows of `cols` writable (readable) values, `ldo` apart.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile<S: Segments>(segments: S, tile: Tile) {
    let Tile {
        run,
        rows,
        panel,
        bias,
        residual,
        out,
        ldo,
        cols,
        lo,
        hi,
    } = tile;
    // The accumulators start from the bias (see the AVX-512 kernel).
    let (bias0, bias1) = (_mm256_loadu_ps(bias), _mm256_loadu_ps(bias.add(8)));
    let mut c: [__m256; 2 * MR] = std::array::from_fn(|i| [bias0, bias1][i % 2]);
    let mut b = panel;
    for s in 0..segments.count() {
        let [a0, a1, a2, a3, a4, a5] = segments.rows(s);
        for p in 0..run {
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
    }
    let (low, high) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    for r in 0..rows {
        let mut v0 = c[2 * r];
        let mut v1 = c[2 * r + 1];
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
