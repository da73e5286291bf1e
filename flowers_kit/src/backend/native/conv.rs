//! Convolutions as matrix products: 1×1 directly, k×k through windows read in place (the
//! packed product) or an im2col copy, with gemm where the weights are not packed.

use gemm::Parallelism;
use rayon::prelude::*;

use super::depthwise::Depthwise;
use super::eltwise::{activate, bias_activate};
use super::isa::Kernels;
use super::packed::{self, Epilogue, PackedWeights};
use super::pool::Pool;
use super::threads::MIN_PARALLEL_MACS;
use crate::backend::Conv;
use crate::models::graph::{Activation, Shape};

/// One convolution of a `[h, w, cin]` input into `out` (`[ho, wo, cout]`).
#[allow(clippy::too_many_arguments)]
pub(super) fn run_conv(
    conv: &Conv,
    packed: Option<&PackedWeights>,
    kernels: Kernels,
    input: &[f32],
    [h, w, cin]: Shape,
    out: &mut [f32],
    [ho, wo, cout]: Shape,
    residual: Option<&[f32]>,
    pool: &mut Pool,
    parallel: bool,
) {
    if conv.depthwise {
        Depthwise::of(conv, input, (h, w), conv.pad[0], kernels).run(out, (ho, wo), parallel);
        return;
    }
    // The product's left operand: the input itself for a 1×1 convolution, else its patches:
    // read in place by the packed product where each tap is a run of at least
    // WINDOW_CHANNELS values, else copied by im2col (the 3-channel stems).
    let m = ho * wo;
    let k = conv.kernel.0 * conv.kernel.1 * cin;
    let windows = packed.is_some()
        && !conv.is_pointwise()
        && cin >= WINDOW_CHANNELS
        && conv.kernel.0 * conv.kernel.1 <= packed::MAX_TAPS;
    let cols = (!conv.is_pointwise() && !windows).then(|| {
        let mut cols = pool.take(m * k);
        im2col(input, (h, w, cin), conv, (ho, wo), &mut cols, parallel);
        cols
    });
    let a = cols.as_deref().unwrap_or(input);
    match packed {
        Some(weights) => {
            let epilogue = Epilogue::new(conv.activation, residual);
            let operand = if windows {
                packed::Operand::Windows(packed::Windows {
                    input,
                    size: (h, w),
                    channels: cin,
                    kernel: conv.kernel,
                    stride: conv.stride,
                    pad: (conv.pad[0], conv.pad[2]),
                    out_width: wo,
                })
            } else {
                packed::Operand::Rows(a)
            };
            packed::product(out, operand, m, weights, epilogue, parallel);
        }
        None => {
            // A linear convolution, or one feeding a residual add, starts from bias
            // (+ addend) and lets gemm accumulate; one followed by an activation lets gemm
            // overwrite, then adds the bias and applies the activation in one pass.
            let accumulate = residual.is_some() || conv.activation == Activation::Linear;
            if accumulate {
                fill_rows(out, &conv.bias, residual);
            }
            matmul(out, a, &conv.weights, m, k, cout, accumulate, parallel);
            if accumulate {
                activate(out, conv.activation);
            } else {
                bias_activate(out, &conv.bias, conv.activation);
            }
        }
    }
    if let Some(cols) = cols {
        pool.give(cols);
    }
}

/// The fewest input channels for which the packed product reads a convolution's windows in
/// place rather than from an im2col copy: each tap is one run of the micro-kernel.
const WINDOW_CHANNELS: usize = 16;

/// The `[kh, kw, cin]` patch of every output pixel, zeros for padding: `[ho·wo, kh·kw·cin]`
/// (output rows in parallel with `parallel`).
pub(super) fn im2col(
    input: &[f32],
    (h, w, c): (usize, usize, usize),
    conv: &Conv,
    (ho, wo): (usize, usize),
    cols: &mut [f32],
    parallel: bool,
) {
    let (kh, kw) = conv.kernel;
    let (pad_y, pad_x) = (conv.pad[0], conv.pad[2]);
    let row_len = kh * kw * c;
    let fill = |(oy, rows): (usize, &mut [f32])| {
        for (ox, row) in rows.chunks_exact_mut(row_len).enumerate() {
            let left = (ox * conv.stride).checked_sub(pad_x);
            // A window row inside the image is one contiguous run of kw·c values.
            let inside = left.filter(|&x| x + kw <= w);
            for (ky, taps) in row.chunks_exact_mut(kw * c).enumerate() {
                let Some(y) = (oy * conv.stride + ky)
                    .checked_sub(pad_y)
                    .filter(|&y| y < h)
                else {
                    taps.fill(0.0);
                    continue;
                };
                if let Some(x) = inside {
                    // An element loop, not a memcpy call: runs of 9–27 values are common.
                    for (t, v) in taps.iter_mut().zip(&input[(y * w + x) * c..][..kw * c]) {
                        *t = *v;
                    }
                    continue;
                }
                for (kx, tap) in taps.chunks_exact_mut(c).enumerate() {
                    match (ox * conv.stride + kx)
                        .checked_sub(pad_x)
                        .filter(|&x| x < w)
                    {
                        Some(x) => {
                            for (t, v) in tap.iter_mut().zip(&input[(y * w + x) * c..][..c]) {
                                *t = *v;
                            }
                        }
                        None => tap.fill(0.0),
                    }
                }
            }
        }
    };
    let rows = &mut cols[..ho * wo * row_len];
    if parallel && rows.len() >= MIN_PARALLEL_MACS {
        rows.par_chunks_mut(wo * row_len).enumerate().for_each(fill);
    } else {
        rows.chunks_mut(wo * row_len).enumerate().for_each(fill);
    }
}

/// Sets every `[channels]` row of `out` to `bias` (+ the matching row of `residual`).
fn fill_rows(out: &mut [f32], bias: &[f32], residual: Option<&[f32]>) {
    let c = bias.len();
    match residual {
        Some(r) => {
            for (row, res) in out.chunks_exact_mut(c).zip(r.chunks_exact(c)) {
                for ((o, b), x) in row.iter_mut().zip(bias).zip(res) {
                    *o = b + x;
                }
            }
        }
        None => {
            // An element loop, not copy_from_slice: rows are short, and a memcpy call per
            // row of 8–64 floats costs more than the copy.
            for row in out.chunks_exact_mut(c) {
                for (o, b) in row.iter_mut().zip(bias) {
                    *o = *b;
                }
            }
        }
    }
}

/// `out[m, n] = a[m, k] · b[k, n]` (with `accumulate`: `+=`), all row-major. With
/// `parallel`, a large product is split into one band of rows per thread, each a
/// single-threaded gemm: gemm's own threading cost more than it saved on these shapes
/// (batch 1 at 1.0/224 ran at 33 images/s on 2 threads against 52 on one).
#[allow(clippy::too_many_arguments)]
fn matmul(
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
    parallel: bool,
) {
    // Checked in release builds too: gemm reads and writes through raw pointers below.
    assert!(
        Some(out.len()) == m.checked_mul(n)
            && Some(a.len()) == m.checked_mul(k)
            && Some(b.len()) == k.checked_mul(n),
        "matmul shapes do not match the slices"
    );
    let threads = rayon::current_num_threads();
    if parallel && threads > 1 && m >= 2 * threads && m * k * n >= MIN_PARALLEL_MACS {
        let rows = m.div_ceil(threads);
        out.par_chunks_mut(rows * n)
            .zip(a.par_chunks(rows * k))
            .for_each(|(out, a)| matmul(out, a, b, a.len() / k.max(1), k, n, accumulate, false));
        return;
    }
    // SAFETY: the assert above proves that the three slices hold exactly m×n, m×k and k×n
    // elements; the strides describe those row-major layouts, so every address gemm forms is
    // inside its slice; `out` is a `&mut` and so cannot alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}
