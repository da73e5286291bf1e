//! The depthwise kernel with explicit AVX-512 for 3×3 and 5×5 windows, stride 1 or 2: the
//! order of the AVX2 kernel (four output columns, eight at stride 1, through every channel
//! block, the block's taps loaded once per group, each input vector used for every column
//! whose window covers it), 16 channels per register, and masked tails in the register that
//! fits them.
//!
//! The tails matter at α = 0.35, whose layers have 8–56 channels (16, 24, 40, 48, 56 at
//! 128 px): a block of at most 8 channels runs on a masked 256-bit register, more on a
//! masked 512-bit one. Zen 4 executes a 512-bit operation as two 256-bit halves, so a
//! half-empty 512-bit register would cost as much as a full one.
//!
//! Before 2026-12-07 this kernel ran one output column at a time along the whole row, block
//! by block; on a Zen 4 that made the default `Kernels::Avx512` 1.1–1.35× slower than
//! `--kernels avx2` on MobileNet V2.

use super::{Depthwise, TapRows, GROUP};
use std::arch::x86_64::*;

/// Output columns computed together at stride 1. Eight columns' accumulators fit the 32
/// registers beside a window row's taps and inputs, and each tap loaded serves twice the
/// multiply-adds of [`GROUP`]'s four. On a Zen 4 (2026-12-08) that made MobileNet V2's
/// stride-1 depthwise layers 5–20 % faster alone (one core, 3×3, 16–384 channels) and
/// lowered the depthwise layers' share of the time from 23.4 % to 21.5 % at 0.35/128 and
/// from 12.9 % to 12.4 % at 1.0/224 (`perf`, one core). At
/// stride 2 eight columns (17 input vectors per window row) ran 3× slower: four stay there.
const STRIDE_ONE_GROUP: usize = 8;

super::explicit_row!("avx512f,avx512vl,avx2,fma", stride_one: STRIDE_ONE_GROUP);

/// One channel block of `N` output columns, on one vector width: the same loop for the
/// 512-bit and the 256-bit registers, with their masked load, store and arithmetic.
macro_rules! block {
    ($layer:expr, $rows:expr, $out:expr, $ox:expr, $block:expr, $mask:expr, $zero:ident,
     $set1:ident, $load:ident, $store:ident, $fmadd:ident, $min:ident, $max:ident) => {{
        let Depthwise {
            input,
            w,
            c,
            pad: (_, pad_x),
            weights,
            bias,
            ..
        } = *$layer;
        let (block, mask) = ($block, $mask);
        let TapRows {
            input: top,
            first,
            end,
        } = $rows;
        // The whole window's rows as constants: a loop the compiler writes out.
        let (first, end) = if FULL { (0, KH) } else { (first, end) };
        let origin = input.as_ptr().add((top * w + $ox * S - pad_x) * c + block);
        let taps = weights.as_ptr().add(block);
        let (zero, six) = ($zero(), $set1(6.0));
        let b = $load(mask, bias.as_ptr().add(block));
        let mut acc = [b; N];
        for ky in first..end {
            let line = origin.add((ky - first) * w * c);
            let taps = taps.add(ky * KW * c);
            // Input column j of the group's window serves output o with tap j − o·S.
            for j in 0..(N - 1) * S + KW {
                let x = $load(mask, line.add(j * c));
                for (o, acc) in acc.iter_mut().enumerate() {
                    if let Some(kx) = j.checked_sub(o * S).filter(|&kx| kx < KW) {
                        *acc = $fmadd(x, $load(mask, taps.add(kx * c)), *acc);
                    }
                }
            }
        }
        for (o, mut v) in acc.into_iter().enumerate() {
            if RELU6 {
                v = $min($max(v, zero), six);
            }
            $store($out.add(($ox + o) * c + block), mask, v);
        }
    }};
}

/// `N` output columns from `ox`, every channel: blocks of 16 channels, then a tail of up to
/// 15 on the narrowest register that holds it.
///
/// # Safety
/// As [`columns`], for columns `ox..ox + N`.
#[inline(always)]
unsafe fn group<
    const KH: usize,
    const KW: usize,
    const S: usize,
    const RELU6: bool,
    const N: usize,
    const FULL: bool,
>(
    layer: &Depthwise,
    rows: TapRows,
    out: *mut f32,
    ox: usize,
) {
    let c = layer.c;
    let full = c / 16 * 16;
    // The 512-bit registers' operations, for the block of 16 channels from `block`.
    macro_rules! zmm {
        ($block:expr, $mask:expr) => {
            block!(
                layer,
                rows,
                out,
                ox,
                $block,
                $mask,
                _mm512_setzero_ps,
                _mm512_set1_ps,
                _mm512_maskz_loadu_ps,
                _mm512_mask_storeu_ps,
                _mm512_fmadd_ps,
                _mm512_min_ps,
                _mm512_max_ps
            )
        };
    }
    for block in (0..full).step_by(16) {
        zmm!(block, 0xFFFF);
    }
    let lanes = c - full;
    if lanes > 8 {
        zmm!(full, ((1u32 << lanes) - 1) as __mmask16);
    } else if lanes > 0 {
        block!(
            layer,
            rows,
            out,
            ox,
            full,
            ((1u32 << lanes) - 1) as __mmask8,
            _mm256_setzero_ps,
            _mm256_set1_ps,
            _mm256_maskz_loadu_ps,
            _mm256_mask_storeu_ps,
            _mm256_fmadd_ps,
            _mm256_min_ps,
            _mm256_max_ps
        );
    }
}

/// One border output column's channels `block..block + B · 16` (the last register masked
/// by `mask`), from the taps inside the image: `B` registers accumulate side by side, so
/// that the chain of multiply-adds of one register does not wait on its own latency.
macro_rules! edge {
    ($layer:expr, $taps_inside:expr, $out:expr, $block:expr, $mask:expr, $b:literal,
     $width:literal, $zero:ident, $set1:ident, $load:ident, $store:ident, $fmadd:ident,
     $min:ident, $max:ident) => {{
        let Depthwise {
            w,
            c,
            bias,
            relu6,
            kernel: (_, kw),
            ..
        } = *$layer;
        let inside = $taps_inside;
        let (block, mask) = ($block, $mask);
        let (first, taps) = $layer.edge_starts(inside, block);
        let (ky, kx, _) = inside;
        // Full registers before the last, which takes the mask.
        let lane_mask = |r: usize| if r + 1 == $b { mask } else { !0 };
        let mut acc: [_; $b] =
            std::array::from_fn(|r| $load(lane_mask(r), bias.as_ptr().add(block + r * $width)));
        for dy in 0..ky.len() {
            for dx in 0..kx.len() {
                let x = first.add((dy * w + dx) * c);
                let t = taps.add((dy * kw + dx) * c);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let m = lane_mask(r);
                    *acc = $fmadd(
                        $load(m, x.add(r * $width)),
                        $load(m, t.add(r * $width)),
                        *acc,
                    );
                }
            }
        }
        let (zero, six) = ($zero(), $set1(6.0));
        for (r, mut v) in acc.into_iter().enumerate() {
            if relu6 {
                v = $min($max(v, zero), six);
            }
            $store($out.add(block + r * $width), lane_mask(r), v);
        }
    }};
}

/// Output columns `columns` of row `oy` (at `out`) whose window leaves the image, every
/// channel, from the taps inside it: any window shape and stride. Four registers of 16
/// channels at a time, then one, then a tail of up to 15 on the narrowest register that
/// holds it.
///
/// # Safety
/// The CPU has AVX-512 F and VL; `layer`'s input holds its `h × w × c` values, its weights
/// `kh · kw · c` and its bias `c`, and `out` the row's `columns.end · c` values.
#[inline(always)]
unsafe fn edges(layer: &Depthwise, oy: usize, out: *mut f32, columns: std::ops::Range<usize>) {
    let c = layer.c;
    let full = c / 16 * 16;
    for ox in columns {
        let inside = layer.taps_inside(oy, ox);
        let out = out.add(ox * c);
        // The 512-bit registers' operations, for `B` registers from `block`.
        macro_rules! zmm {
            ($block:expr, $mask:expr, $b:literal) => {
                edge!(
                    layer,
                    &inside,
                    out,
                    $block,
                    $mask,
                    $b,
                    16,
                    _mm512_setzero_ps,
                    _mm512_set1_ps,
                    _mm512_maskz_loadu_ps,
                    _mm512_mask_storeu_ps,
                    _mm512_fmadd_ps,
                    _mm512_min_ps,
                    _mm512_max_ps
                )
            };
        }
        let mut block = 0;
        while block + 64 <= full {
            zmm!(block, 0xFFFF, 4);
            block += 64;
        }
        while block < full {
            zmm!(block, 0xFFFF, 1);
            block += 16;
        }
        let lanes = c - full;
        if lanes > 8 {
            zmm!(full, ((1u32 << lanes) - 1) as __mmask16, 1);
        } else if lanes > 0 {
            edge!(
                layer,
                &inside,
                out,
                full,
                ((1u32 << lanes) - 1) as __mmask8,
                1,
                8,
                _mm256_setzero_ps,
                _mm256_set1_ps,
                _mm256_maskz_loadu_ps,
                _mm256_mask_storeu_ps,
                _mm256_fmadd_ps,
                _mm256_min_ps,
                _mm256_max_ps
            );
        }
    }
}
