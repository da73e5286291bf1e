//! The depthwise kernel with explicit AVX-512: 16 channels per register, the taps of a
//! channel block kept in registers along a row, no bounds checks inside the image.

use std::arch::x86_64::*;

use super::Depthwise;

/// Most taps kept in registers (a 5×5 kernel).
pub(super) const MAX_TAPS: usize = 25;

#[target_feature(enable = "avx512f")]
pub(super) fn row(layer: &Depthwise, oy: usize, row: &mut [f32]) {
    let Depthwise {
        input,
        w,
        c,
        stride,
        kernel: (kh, kw),
        pad: (_, pad_x),
        weights,
        bias,
        relu6,
        ..
    } = *layer;
    let Some((top, interior)) = layer.interior(oy, row, kh * kw <= MAX_TAPS) else {
        return;
    };
    let taps_count = kh * kw;
    for block in (0..c).step_by(16) {
        let lanes = (c - block).min(16);
        let mask: __mmask16 = if lanes == 16 {
            0xFFFF
        } else {
            (1u16 << lanes) - 1
        };
        // SAFETY: each masked load or store touches `lanes` floats from index `at`, with
        // at + lanes ≤ the slice's length, because `Depthwise::run` asserted
        // weights = kh·kw·c, bias = c, input = h·w·c and row = wo·c floats (shapes that
        // `Network::new` validated), `block + lanes ≤ c`, and `interior` holds only the
        // columns whose window lies inside the image (`rows_inside` the same for rows).
        // `slice[at..]` additionally panics if `at` itself were past the end.
        unsafe {
            let load = |slice: &[f32], at: usize| _mm512_maskz_loadu_ps(mask, slice[at..].as_ptr());
            let mut taps = [_mm512_setzero_ps(); MAX_TAPS];
            for (t, tap) in taps.iter_mut().enumerate().take(taps_count) {
                *tap = load(weights, t * c + block);
            }
            let b = load(bias, block);
            let (zero, six) = (_mm512_setzero_ps(), _mm512_set1_ps(6.0));
            for ox in interior.clone() {
                let left = ox * stride - pad_x;
                let mut acc = b;
                for ky in 0..kh {
                    let base = ((top + ky) * w + left) * c + block;
                    for kx in 0..kw {
                        acc = _mm512_fmadd_ps(load(input, base + kx * c), taps[ky * kw + kx], acc);
                    }
                }
                if relu6 {
                    acc = _mm512_min_ps(_mm512_max_ps(acc, zero), six);
                }
                _mm512_mask_storeu_ps(row[ox * c + block..].as_mut_ptr(), mask, acc);
            }
        }
    }
}
