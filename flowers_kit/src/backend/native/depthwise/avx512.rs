//! The depthwise kernel with explicit AVX-512 for 3×3 and 5×5 windows, stride 1 or 2: the
//! order of the AVX2 kernel (four output columns through every channel block, the block's
//! taps loaded once per group, each input vector used for every column whose window covers
//! it), 16 channels per register, and masked tails in the register that fits them.
//!
//! The tails matter at α = 0.35, whose layers have 8–56 channels (16, 24, 40, 48, 56 at
//! 128 px): a block of at most 8 channels runs on a masked 256-bit register, more on a
//! masked 512-bit one. Zen 4 executes a 512-bit operation as two 256-bit halves, so a
//! half-empty 512-bit register would cost as much as a full one.
//!
//! Before 2026-12-07 this kernel ran one output column at a time along the whole row, block
//! by block; on a Zen 4 that made the default `Kernels::Avx512` 1.1–1.35× slower than
//! `--kernels avx2` on MobileNet V2.

use super::{Depthwise, GROUP};
use std::arch::x86_64::*;

super::explicit_row!("avx512f,avx512vl,avx2,fma");

/// One channel block of `N` output columns, on one vector width: the same loop for the
/// 512-bit and the 256-bit registers, with their masked load, store and arithmetic.
macro_rules! block {
    ($layer:expr, $top:expr, $out:expr, $ox:expr, $block:expr, $mask:expr, $zero:ident,
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
        let origin = input.as_ptr().add(($top * w + $ox * S - pad_x) * c + block);
        let taps = weights.as_ptr().add(block);
        let (zero, six) = ($zero(), $set1(6.0));
        let b = $load(mask, bias.as_ptr().add(block));
        let mut acc = [b; N];
        for ky in 0..KH {
            let line = origin.add(ky * w * c);
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
>(
    layer: &Depthwise,
    top: usize,
    out: *mut f32,
    ox: usize,
) {
    let c = layer.c;
    let full = c / 16 * 16;
    for block in (0..full).step_by(16) {
        block!(
            layer,
            top,
            out,
            ox,
            block,
            0xFFFF,
            _mm512_setzero_ps,
            _mm512_set1_ps,
            _mm512_maskz_loadu_ps,
            _mm512_mask_storeu_ps,
            _mm512_fmadd_ps,
            _mm512_min_ps,
            _mm512_max_ps
        );
    }
    let lanes = c - full;
    if lanes > 8 {
        block!(
            layer,
            top,
            out,
            ox,
            full,
            ((1u32 << lanes) - 1) as __mmask16,
            _mm512_setzero_ps,
            _mm512_set1_ps,
            _mm512_maskz_loadu_ps,
            _mm512_mask_storeu_ps,
            _mm512_fmadd_ps,
            _mm512_min_ps,
            _mm512_max_ps
        );
    } else if lanes > 0 {
        block!(
            layer,
            top,
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
