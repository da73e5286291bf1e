//! The depthwise kernel with explicit AVX2 + FMA for 3×3 and 5×5 windows, stride 1 or 2.
//!
//! Depthwise layers do 7 % of MobileNet V2's multiply-adds but, written as one channel
//! block at a time along a whole row, took a quarter of its time: the rows they read do
//! not fit Zen 3's 32 KB L1, so every block re-read them from L2. Here a group of four
//! output columns runs through all channel blocks (reading each pixel's channels in
//! order), with the block's taps in registers and each input vector loaded once and
//! used for every output column whose window covers it.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{Depthwise, GROUP};

#[target_feature(enable = "avx2,fma")]
pub(super) fn row(layer: &Depthwise, oy: usize, row: &mut [f32]) {
    let Some((top, interior)) = layer.explicit_interior(oy, row) else {
        return;
    };
    macro_rules! run {
        ($kh:literal, $kw:literal, $s:literal, $relu6:literal) => {
            // SAFETY: AVX2 and FMA were checked by the caller; every address formed is at
            // most the ones `explicit_interior` asserted (columns, rows and channels only
            // grow towards them).
            unsafe { columns::<$kh, $kw, $s, $relu6>(layer, top, row, interior.clone()) }
        };
    }
    super::known_window!(layer, run, layer.checked(oy, row, interior))
}

/// Output columns `columns` (all inside the image) of one row, every channel.
///
/// # Safety
/// AVX2 and FMA are available, the window is `KH × KW` with stride `S`, and `row`
/// checked that every value this reads and writes is inside its slice.
#[inline(always)]
unsafe fn columns<const KH: usize, const KW: usize, const S: usize, const RELU6: bool>(
    layer: &Depthwise,
    top: usize,
    row: &mut [f32],
    columns: Range<usize>,
) {
    let out = row.as_mut_ptr();
    super::in_groups(
        columns,
        |ox| group::<KH, KW, S, RELU6, GROUP>(layer, top, out, ox),
        |ox| group::<KH, KW, S, RELU6, 1>(layer, top, out, ox),
    );
}

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
