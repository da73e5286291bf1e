//! The 12×16 micro-kernel with AVX-512: one 512-bit register per row, so the 32 registers
//! hold two of the AVX2 kernel's 6-row tiles at once and each panel row is loaded once for
//! twelve operand rows, whose values the multiply-adds broadcast straight from memory.
//! Panels of at most 8 columns (α = 0.35's 8-, 24- and 40-channel layers end in one) run on
//! 256-bit registers instead, which halves their work on a CPU that splits 512-bit
//! operations in two (Zen 4). The epilogue's masked stores replace the AVX2 kernel's stack
//! tile for a narrow last panel.
//!
//! Two panels side by side run as one 12×32 tile ([`wide_tile`]): 24 accumulators, each
//! operand value broadcast once for two multiply-adds. A CPU with two full-width 512-bit FMA
//! units (Zen 5) finishes the 12×16 tile's twelve multiply-adds in 6 cycles but must load
//! thirteen values for them, and the loads, not the arithmetic, set its pace.

use std::arch::x86_64::*;

use super::{Segments, Tile, MR};

/// One tile of up to `2 · MR` rows with its epilogue, on one register width.
macro_rules! tile {
    ($segments:expr, $second:expr, $run:expr, $rows:expr, $panel:expr, $bias:expr,
     $residual:expr, $out:expr, $ldo:expr, $mask:expr, $lo:expr, $hi:expr,
     $zero:ident, $set1:ident, $load:ident, $store:ident, $fmadd:ident, $add:ident,
     $min:ident, $max:ident) => {{
        // The accumulators start from the bias: one add fewer per row in the epilogue,
        // which weighs most in the shallow products (α = 0.35's 8-deep expansions).
        let bias = $load($mask, $bias);
        let mut c = [bias; 2 * MR];
        let mut b = $panel;
        for s in 0..$segments.count() {
            let [a0, a1, a2, a3, a4, a5] = $segments.rows(s);
            let [a6, a7, a8, a9, a10, a11] = $second.rows(s);
            for p in 0..$run {
                let w = $load($mask, b);
                b = b.add(super::NR);
                c[0] = $fmadd($set1(*a0.add(p)), w, c[0]);
                c[1] = $fmadd($set1(*a1.add(p)), w, c[1]);
                c[2] = $fmadd($set1(*a2.add(p)), w, c[2]);
                c[3] = $fmadd($set1(*a3.add(p)), w, c[3]);
                c[4] = $fmadd($set1(*a4.add(p)), w, c[4]);
                c[5] = $fmadd($set1(*a5.add(p)), w, c[5]);
                c[6] = $fmadd($set1(*a6.add(p)), w, c[6]);
                c[7] = $fmadd($set1(*a7.add(p)), w, c[7]);
                c[8] = $fmadd($set1(*a8.add(p)), w, c[8]);
                c[9] = $fmadd($set1(*a9.add(p)), w, c[9]);
                c[10] = $fmadd($set1(*a10.add(p)), w, c[10]);
                c[11] = $fmadd($set1(*a11.add(p)), w, c[11]);
            }
        }
        let (low, high) = ($set1($lo), $set1($hi));
        for (r, &acc) in c.iter().enumerate().take($rows) {
            let mut v = acc;
            if let Some(res) = $residual {
                v = $add(v, $load($mask, res.add(r * $ldo)));
            }
            $store($out.add(r * $ldo), $mask, $min($max(v, low), high));
        }
    }};
}

/// One `rows × cols` (at most 12 × 16) tile of the product, with its epilogue: rows 0–5
/// read `segments`, rows 6–11 `second` (the next 6-row tile's; its missing rows repeat its
/// last, computed and never stored).
///
/// # Safety
/// AVX-512 F and VL are available; every pointer of `segments` and `second` points at `run`
/// values (segment after segment along `k`, as many segments in both); `panel` at
/// `segments.count() · run × NR` values and `bias` at `NR`; `out` (and `residual`) at
/// `rows` rows of `cols` writable (readable) values, `ldo` apart.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub(super) unsafe fn tile<S: Segments>(segments: S, second: S, tile: Tile) {
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
    if cols > 8 {
        let mask = ((1u32 << cols) - 1) as __mmask16;
        tile!(
            segments,
            second,
            run,
            rows,
            panel,
            bias,
            residual,
            out,
            ldo,
            mask,
            lo,
            hi,
            _mm512_setzero_ps,
            _mm512_set1_ps,
            _mm512_maskz_loadu_ps,
            _mm512_mask_storeu_ps,
            _mm512_fmadd_ps,
            _mm512_add_ps,
            _mm512_min_ps,
            _mm512_max_ps
        )
    } else {
        let mask = ((1u32 << cols) - 1) as __mmask8;
        tile!(
            segments,
            second,
            run,
            rows,
            panel,
            bias,
            residual,
            out,
            ldo,
            mask,
            lo,
            hi,
            _mm256_setzero_ps,
            _mm256_set1_ps,
            _mm256_maskz_loadu_ps,
            _mm256_mask_storeu_ps,
            _mm256_fmadd_ps,
            _mm256_add_ps,
            _mm256_min_ps,
            _mm256_max_ps
        )
    }
}

/// Twelve rows of one operand register broadcast into two panels' accumulators.
macro_rules! wide_rows {
    ($c0:ident, $c1:ident, $w0:ident, $w1:ident, $p:ident, $($r:literal: $a:ident),*) => {
        $(
            let x = _mm512_set1_ps(*$a.add($p));
            $c0[$r] = _mm512_fmadd_ps(x, $w0, $c0[$r]);
            $c1[$r] = _mm512_fmadd_ps(x, $w1, $c1[$r]);
        )*
    };
}

/// One `rows × (16 + cols)` (at most 12 × 32, or 6 × 32 where not `TWELVE`) tile of the
/// product: `tile`'s full panel and the next one (`next`: its panel, its bias, and its
/// `cols` ≤ 16 columns), the second's columns stored after the first's, with the epilogue
/// on both. Rows as [`tile`]'s; with `TWELVE` false only `segments`' six are read (a lone
/// last tile of at most 6 rows, which 256-bit registers would run at half the rate).
///
/// # Safety
/// As [`tile`]'s, where `tile.cols` is 16 (and `tile.rows` ≤ 6 where not `TWELVE`), and
/// `next`'s panel and bias point at `segments.count() · run × NR` and `NR` values; `out`
/// (and `residual`) hold `16 + cols` columns from theirs.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub(super) unsafe fn wide_tile<S: Segments, const TWELVE: bool>(
    segments: S,
    second: S,
    tile: Tile,
    (next_panel, next_bias, cols): (*const f32, *const f32, usize),
) {
    let Tile {
        run,
        rows,
        panel,
        bias,
        residual,
        out,
        ldo,
        lo,
        hi,
        ..
    } = tile;
    let mask = ((1u32 << cols) - 1) as __mmask16;
    // The accumulators start from the bias, as the narrow tile's.
    let mut c0 = [_mm512_loadu_ps(bias); 2 * MR];
    let mut c1 = [_mm512_maskz_loadu_ps(mask, next_bias); 2 * MR];
    let (mut b0, mut b1) = (panel, next_panel);
    for s in 0..segments.count() {
        let [a0, a1, a2, a3, a4, a5] = segments.rows(s);
        // Read only with `TWELVE`.
        let [a6, a7, a8, a9, a10, a11] = if TWELVE {
            second.rows(s)
        } else {
            [a0, a1, a2, a3, a4, a5]
        };
        for p in 0..run {
            let w0 = _mm512_loadu_ps(b0);
            let w1 = _mm512_maskz_loadu_ps(mask, b1);
            b0 = b0.add(super::NR);
            b1 = b1.add(super::NR);
            wide_rows!(c0, c1, w0, w1, p, 0: a0, 1: a1, 2: a2, 3: a3, 4: a4, 5: a5);
            if TWELVE {
                wide_rows!(c0, c1, w0, w1, p, 6: a6, 7: a7, 8: a8, 9: a9, 10: a10, 11: a11);
            }
        }
    }
    let (low, high) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    let rows = rows.min(if TWELVE { 2 * MR } else { MR });
    for (r, (&v0, &v1)) in c0.iter().zip(&c1).enumerate().take(rows) {
        let (mut v0, mut v1) = (v0, v1);
        if let Some(res) = residual {
            let res = res.add(r * ldo);
            v0 = _mm512_add_ps(v0, _mm512_loadu_ps(res));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(mask, res.add(super::NR)));
        }
        let row = out.add(r * ldo);
        _mm512_storeu_ps(row, _mm512_min_ps(_mm512_max_ps(v0, low), high));
        _mm512_mask_storeu_ps(
            row.add(super::NR),
            mask,
            _mm512_min_ps(_mm512_max_ps(v1, low), high),
        );
    }
}
