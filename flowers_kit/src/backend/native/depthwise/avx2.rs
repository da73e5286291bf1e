//! The depthwise kernel with explicit AVX2 + FMA for 3×3 and 5×5 windows, stride 1 or 2.
//!
//! Depthwise layers do 7 % of MobileNet V2's multiply-adds but, written as one channel
//! block at a time along a whole row, took a quarter of its time: the rows they read do
//! not fit Zen 3's 32 KB L1, so every block re-read them from L2. Here a group of four
//! output columns runs through all channel blocks (reading each pixel's channels in
//! order), with the block's taps in registers and each input vector loaded once and
//! used for every output column whose window covers it.

use super::{Depthwise, GROUP};
use std::arch::x86_64::*;

super::explicit_row!("avx2,fma");

/// `N` output columns from `ox`, every channel block.
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
    row: *mut f32,
    ox: usize,
) {
    let Depthwise {
        input,
        w,
        c,
        pad: (_, pad_x),
        weights,
        bias,
        ..
    } = *layer;
    let origin = input.as_ptr().add((top * w + ox * S - pad_x) * c);
    let out = row.add(ox * c);
    let (zero, six) = (_mm256_setzero_ps(), _mm256_set1_ps(6.0));
    let mut block = 0;
    while block < c {
        let lanes = (c - block).min(8);
        let mask = _mm256_cmpgt_epi32(
            _mm256_set1_epi32(lanes as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        let full = lanes == 8;
        let load = |p: *const f32| {
            if full {
                _mm256_loadu_ps(p)
            } else {
                _mm256_maskload_ps(p, mask)
            }
        };
        let b = load(bias.as_ptr().add(block));
        let mut acc = [b; N];
        for ky in 0..KH {
            let line = origin.add(ky * w * c + block);
            let taps = weights.as_ptr().add(ky * KW * c + block);
            // Input column j of the group's window serves output o with tap j − o·S.
            for j in 0..(N - 1) * S + KW {
                let x = load(line.add(j * c));
                for (o, acc) in acc.iter_mut().enumerate() {
                    if let Some(kx) = j.checked_sub(o * S).filter(|&kx| kx < KW) {
                        *acc = _mm256_fmadd_ps(x, load(taps.add(kx * c)), *acc);
                    }
                }
            }
        }
        for (o, mut v) in acc.into_iter().enumerate() {
            if RELU6 {
                v = _mm256_min_ps(_mm256_max_ps(v, zero), six);
            }
            let p = out.add(o * c + block);
            if full {
                _mm256_storeu_ps(p, v);
            } else {
                _mm256_maskstore_ps(p, mask, v);
            }
        }
        block += 8;
    }
}
