//! The depthwise kernel with explicit AVX2 + FMA for 3×3 and 5×5 windows, stride 1 or 2.
//!
//! Depthwise layers do 7 % of MobileNet V2's multiply-adds but, written as one channel
//! block at a time along a whole row, took a quarter of its time: the rows they read do
//! not fit Zen 3's 32 KB L1, so every block re-read them from L2. Here a group of four
//! output columns runs through all channel blocks (reading each pixel's channels in
//! order), with the block's taps in registers and each input vector loaded once and
//! used for every output column whose window covers it.

use super::{Depthwise, TapRows, GROUP};
use std::arch::x86_64::*;

super::explicit_row!("avx2,fma", stride_one: GROUP);

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
    const FULL: bool,
>(
    layer: &Depthwise,
    TapRows {
        input: top,
        first,
        end,
    }: TapRows,
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
    // The whole window's rows as constants: a loop the compiler writes out.
    let (first, end) = if FULL { (0, KH) } else { (first, end) };
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
        for ky in first..end {
            let line = origin.add((ky - first) * w * c + block);
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

/// One border output column's channels `block..block + B · 8`, from the taps inside the
/// image: `B` registers accumulate side by side, so that the chain of multiply-adds of one
/// register does not wait on its own latency; `lanes` (1–8) of the last register are read
/// and written.
///
/// # Safety
/// As [`edges`], for these channels.
#[inline(always)]
unsafe fn edge<const B: usize>(
    layer: &Depthwise,
    inside: &(std::ops::Range<usize>, std::ops::Range<usize>, usize),
    out: *mut f32,
    block: usize,
    lanes: usize,
) {
    let Depthwise {
        w,
        c,
        bias,
        relu6,
        kernel: (_, kw),
        ..
    } = *layer;
    let (ky, kx, _) = inside;
    let mask = _mm256_cmpgt_epi32(
        _mm256_set1_epi32(lanes as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    );
    // Full registers before the last, and the last too where it is full.
    let load = |r: usize, p: *const f32| {
        if r + 1 < B || lanes == 8 {
            _mm256_loadu_ps(p)
        } else {
            _mm256_maskload_ps(p, mask)
        }
    };
    let (first, taps) = layer.edge_starts(inside, block);
    let mut acc: [__m256; B] = std::array::from_fn(|r| load(r, bias.as_ptr().add(block + r * 8)));
    for dy in 0..ky.len() {
        for dx in 0..kx.len() {
            let x = first.add((dy * w + dx) * c);
            let t = taps.add((dy * kw + dx) * c);
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(load(r, x.add(r * 8)), load(r, t.add(r * 8)), *acc);
            }
        }
    }
    let (zero, six) = (_mm256_setzero_ps(), _mm256_set1_ps(6.0));
    for (r, mut v) in acc.into_iter().enumerate() {
        if relu6 {
            v = _mm256_min_ps(_mm256_max_ps(v, zero), six);
        }
        let p = out.add(block + r * 8);
        if r + 1 < B || lanes == 8 {
            _mm256_storeu_ps(p, v);
        } else {
            _mm256_maskstore_ps(p, mask, v);
        }
    }
}

/// Output columns `columns` of row `oy` (at `out`) whose window leaves the image, every
/// channel, from the taps inside it: any window shape and stride. Four registers of 8
/// channels at a time, then one, the last masked.
///
/// # Safety
/// The CPU has AVX2 and FMA; `layer`'s input holds its `h × w × c` values, its weights
/// `kh · kw · c` and its bias `c`, and `out` the row's `columns.end · c` values.
#[inline(always)]
unsafe fn edges(layer: &Depthwise, oy: usize, out: *mut f32, columns: std::ops::Range<usize>) {
    let c = layer.c;
    for ox in columns {
        let inside = layer.taps_inside(oy, ox);
        let out = out.add(ox * c);
        let mut block = 0;
        while block + 32 <= c {
            edge::<4>(layer, &inside, out, block, 8);
            block += 32;
        }
        while block < c {
            edge::<1>(layer, &inside, out, block, (c - block).min(8));
            block += 8;
        }
    }
}
