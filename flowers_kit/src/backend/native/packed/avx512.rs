//! The 12×16 micro-kernel with AVX-512: one 512-bit register per row, so the 32 registers
//! hold two of the AVX2 kernel's 6-row tiles at once and each panel row is loaded once for
//! twelve operand rows, whose values the multiply-adds broadcast straight from memory.
//! Panels of at most 8 columns (α = 0.35's 8-, 24- and 40-channel layers end in one) run on
//! 256-bit registers instead, which halves their work on a CPU that splits 512-bit
//! operations in two (Zen 4). The epilogue's masked stores replace the AVX2 kernel's stack
//! tile for a narrow last panel.

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
