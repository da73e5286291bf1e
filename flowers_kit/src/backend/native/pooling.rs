//! Pooling: windows (max, average over valid taps) and the global average.

use crate::models::graph::Shape;

/// Max or average pooling; padded taps are skipped (the average divides by valid taps).
#[allow(clippy::too_many_arguments)]
pub(super) fn pool2d(
    input: &[f32],
    [h, w, c]: Shape,
    out: &mut [f32],
    [ho, wo, _]: Shape,
    (kh, kw): (usize, usize),
    stride: usize,
    pad: [usize; 4],
    max: bool,
) {
    pool_rows(
        input,
        [h, w, c],
        out,
        0,
        [ho, wo, c],
        (kh, kw),
        stride,
        pad,
        max,
    );
}

/// [`pool2d`]'s output rows from `first` on, as many as `out` holds.
#[allow(clippy::too_many_arguments)]
pub(super) fn pool_rows(
    input: &[f32],
    [h, w, c]: Shape,
    out: &mut [f32],
    first: usize,
    [ho, wo, _]: Shape,
    (kh, kw): (usize, usize),
    stride: usize,
    pad: [usize; 4],
    max: bool,
) {
    let rows = out.len() / (wo * c).max(1);
    for (r, oy) in (first..(first + rows).min(ho)).enumerate() {
        for ox in 0..wo {
            let o = &mut out[(r * wo + ox) * c..][..c];
            o.fill(if max { f32::NEG_INFINITY } else { 0.0 });
            let mut count = 0usize;
            for ky in 0..kh {
                let Some(y) = (oy * stride + ky).checked_sub(pad[0]).filter(|&y| y < h) else {
                    continue;
                };
                for kx in 0..kw {
                    let Some(x) = (ox * stride + kx).checked_sub(pad[2]).filter(|&x| x < w) else {
                        continue;
                    };
                    count += 1;
                    let pixel = &input[(y * w + x) * c..][..c];
                    if max {
                        for (a, v) in o.iter_mut().zip(pixel) {
                            *a = a.max(*v);
                        }
                    } else {
                        for (a, v) in o.iter_mut().zip(pixel) {
                            *a += v;
                        }
                    }
                }
            }
            if !max {
                let scale = 1.0 / count.max(1) as f32;
                o.iter_mut().for_each(|a| *a *= scale);
            }
        }
    }
}

/// Mean over pixels of a `[pixels, c]` activation.
pub(super) fn average_pool(activation: &[f32], c: usize, out: &mut [f32]) {
    out.fill(0.0);
    let pixels = activation.len() / c;
    for row in activation.chunks_exact(c) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
    let scale = 1.0 / pixels as f32;
    for o in out.iter_mut() {
        *o *= scale;
    }
}
