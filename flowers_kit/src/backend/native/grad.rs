//! Gradient kernels: what each kind of step's backward pass computes, on NHWC buffers
//! (`[pixels, channels]`, images one after the other). `train` runs them in reverse step
//! order, and for a value read by several steps adds up what each reader sends back.

use rayon::prelude::*;

use super::eltwise::exp;
use super::gemm::product_here;
pub(super) use super::gemm::View;
use super::threads::MIN_PARALLEL_MACS;
use crate::models::graph::{Activation, Shape};

/// Values per job of an element-wise loop: smaller loops run on the calling thread, where a
/// job costs more to hand out than it saves.
const ELEMENTWISE_JOB: usize = 1 << 15;

/// Runs `f(offset, chunk)` over `values` in chunks, in parallel when it is large: the
/// element-wise loops of a backward pass (a third of its time on one thread).
pub(super) fn par_elements(values: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync) {
    if values.len() > ELEMENTWISE_JOB && rayon::current_num_threads() > 1 {
        values
            .par_chunks_mut(ELEMENTWISE_JOB)
            .enumerate()
            .for_each(|(i, values)| f(i * ELEMENTWISE_JOB, values));
    } else {
        f(0, values);
    }
}

/// Multiplies `dy` (the gradient of an activation's output) by the activation's derivative,
/// in place. The ReLU family and the sigmoids read it off the `output`; swish and hard swish
/// need the `input` (a convolution's or sum's value before its activation), which the
/// forward pass keeps for exactly those two.
// max/min and comparisons rather than clamp: they vectorise.
#[allow(clippy::manual_clamp)]
pub(super) fn activation_grad(
    dy: &mut [f32],
    output: &[f32],
    input: Option<&[f32]>,
    activation: Activation,
) {
    assert_eq!(
        dy.len(),
        output.len(),
        "an activation's gradient and output differ"
    );
    let with_input = |dy: &mut [f32], f: &dyn Fn(f32) -> f32| {
        let input = input.expect("invariant: the forward pass keeps swish's input");
        assert_eq!(
            dy.len(),
            input.len(),
            "an activation's gradient and input differ"
        );
        for (d, &x) in dy.iter_mut().zip(input) {
            *d *= f(x);
        }
    };
    match activation {
        Activation::Linear => {}
        Activation::Relu => {
            for (d, &y) in dy.iter_mut().zip(output) {
                *d = if y > 0.0 { *d } else { 0.0 };
            }
        }
        Activation::Relu6 => {
            for (d, &y) in dy.iter_mut().zip(output) {
                *d = if y > 0.0 && y < 6.0 { *d } else { 0.0 };
            }
        }
        Activation::Sigmoid => {
            for (d, &y) in dy.iter_mut().zip(output) {
                *d *= y * (1.0 - y);
            }
        }
        Activation::HardSigmoid => {
            for (d, &y) in dy.iter_mut().zip(output) {
                *d = if y > 0.0 && y < 1.0 {
                    *d * (1.0 / 6.0)
                } else {
                    0.0
                };
            }
        }
        Activation::Swish => with_input(dy, &|x| {
            let s = 1.0 / (1.0 + exp(-x));
            s * (1.0 + x * (1.0 - s))
        }),
        Activation::HardSwish => with_input(dy, &|x| {
            let gate = (x + 3.0).max(0.0).min(6.0) * (1.0 / 6.0);
            gate + if x > -3.0 && x < 3.0 {
                x * (1.0 / 6.0)
            } else {
                0.0
            }
        }),
    }
}

/// `out = a · b`, `out` row-major. A large product is split among the threads, each part a
/// single-threaded gemm (gemm's own threads scaled these shapes poorly): a weight's
/// gradient, whose inner dimension is the batch's pixels, by pixels (each thread sums its
/// share, the shares are added in order); any other product by bands of output rows.
pub(super) fn product(out: &mut [f32], a: View<'_>, b: View<'_>) {
    let (m, k, n) = (a.rows, a.columns, b.columns);
    // Checked in release builds too: gemm reads and writes through raw pointers below.
    assert!(
        b.rows == k && Some(out.len()) == m.checked_mul(n) && a.in_bounds() && b.in_bounds(),
        "gradient product shapes do not match the slices"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    let threads = rayon::current_num_threads();
    let large = m.saturating_mul(k).saturating_mul(n) >= MIN_PARALLEL_MACS;
    if threads > 1 && large && k >= m.max(n) {
        // A weight's gradient (the batch's pixels as the inner dimension): each thread sums
        // its share of the pixels into its own copy, then the copies are added in order.
        let share = k.div_ceil(threads);
        let parts: Vec<Vec<f32>> = (0..k.div_ceil(share))
            .into_par_iter()
            .map(|t| {
                let (from, to) = (t * share, ((t + 1) * share).min(k));
                let mut part = vec![0f32; m * n];
                let a = View {
                    data: &a.data[from * a.column_stride..],
                    columns: to - from,
                    ..a
                };
                let b = View {
                    data: &b.data[from * b.row_stride..],
                    rows: to - from,
                    ..b
                };
                product_here(&mut part, a, b, false);
                part
            })
            .collect();
        let partial = sum_in_order(parts, m * n);
        out.copy_from_slice(&partial);
        return;
    }
    // One band of output rows per thread, each a single-threaded product.
    if threads > 1 && large && m >= 2 * threads {
        let rows = m.div_ceil(threads);
        out.par_chunks_mut(rows * n)
            .enumerate()
            .for_each(|(band, out)| {
                let first = band * rows;
                let a = View {
                    data: &a.data[first * a.row_stride..],
                    rows: out.len() / n,
                    ..a
                };
                product_here(out, a, b, false);
            });
        return;
    }
    product_here(out, a, b, false);
}

/// Adds the sum over rows of `[rows, c]` `values` to `out` (`[c]`): a bias's gradient
/// (chunks of rows summed in parallel, then added in order).
pub(super) fn add_column_sums(values: &[f32], out: &mut [f32]) {
    let c = out.len().max(1);
    let sum = |values: &[f32]| {
        let mut sum = vec![0f32; c];
        for row in values.chunks_exact(c) {
            for (o, v) in sum.iter_mut().zip(row) {
                *o += v;
            }
        }
        sum
    };
    let chunk = (ELEMENTWISE_JOB / c).max(1) * c;
    let total = if values.len() > chunk && rayon::current_num_threads() > 1 {
        sum_in_order(values.par_chunks(chunk).map(sum).collect(), c)
    } else {
        sum(values)
    };
    out.iter_mut().zip(&total).for_each(|(o, t)| *o += t);
}

/// `out += values`, element by element.
pub(super) fn add_into(out: &mut [f32], values: &[f32]) {
    assert_eq!(out.len(), values.len(), "gradients of different sizes");
    par_elements(out, |at, out| {
        out.iter_mut().zip(&values[at..]).for_each(|(o, v)| *o += v)
    });
}

/// A window's geometry on one image: input `[h, w, c]`, output `[ho, wo, ·]`, taps
/// `kernel`, `stride` and the padding before the first row and column.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub input: Shape,
    pub output: (usize, usize),
    pub kernel: (usize, usize),
    pub stride: usize,
    pub pad: (usize, usize),
}

impl Window {
    /// The input pixel under tap `(ky, kx)` of output pixel `(oy, ox)`, or `None` in the
    /// padding.
    #[inline(always)]
    fn tap(&self, (oy, ox): (usize, usize), (ky, kx): (usize, usize)) -> Option<usize> {
        let [h, w, _] = self.input;
        let y = (oy * self.stride + ky)
            .checked_sub(self.pad.0)
            .filter(|&y| y < h)?;
        let x = (ox * self.stride + kx)
            .checked_sub(self.pad.1)
            .filter(|&x| x < w)?;
        Some(y * w + x)
    }
}

/// A depthwise convolution's backward pass on one image: adds `Σ dz·x` to `dw`
/// (`[taps, c]`), and, when given `dx`, `Σ dz·w` to the input's gradient.
pub(super) fn depthwise_grad(
    window: &Window,
    x: &[f32],
    w: &[f32],
    dz: &[f32],
    dw: &mut [f32],
    mut dx: Option<&mut [f32]>,
) {
    let [h, iw, c] = window.input;
    let (ho, wo) = window.output;
    let (kh, kw) = window.kernel;
    assert!(
        x.len() == h * iw * c
            && w.len() == kh * kw * c
            && dw.len() == w.len()
            && dz.len() == ho * wo * c
            && dx.as_ref().is_none_or(|dx| dx.len() == x.len()),
        "depthwise gradient buffers do not match the layer's shape"
    );
    for oy in 0..ho {
        for ox in 0..wo {
            let d = &dz[(oy * wo + ox) * c..][..c];
            for ky in 0..kh {
                for kx in 0..kw {
                    let Some(p) = window.tap((oy, ox), (ky, kx)) else {
                        continue;
                    };
                    let t = (ky * kw + kx) * c;
                    let pixel = &x[p * c..][..c];
                    for ((g, &v), &d) in dw[t..t + c].iter_mut().zip(pixel).zip(d) {
                        *g += d * v;
                    }
                    if let Some(dx) = dx.as_deref_mut() {
                        for ((g, &k), &d) in dx[p * c..][..c].iter_mut().zip(&w[t..t + c]).zip(d) {
                            *g += d * k;
                        }
                    }
                }
            }
        }
    }
}

/// The reverse of im2col on one image: adds each patch row of `cols` (`[ho·wo, kh·kw·c]`)
/// back onto the input pixels it was copied from.
pub(super) fn col2im(window: &Window, cols: &[f32], dx: &mut [f32]) {
    let [h, w, c] = window.input;
    let (ho, wo) = window.output;
    let (kh, kw) = window.kernel;
    let row_len = kh * kw * c;
    assert!(
        cols.len() == ho * wo * row_len && dx.len() == h * w * c,
        "col2im buffers do not match the layer's shape"
    );
    for (o, row) in cols.chunks_exact(row_len).enumerate() {
        for (t, tap) in row.chunks_exact(c).enumerate() {
            if let Some(p) = window.tap((o / wo, o % wo), (t / kw, t % kw)) {
                for (g, v) in dx[p * c..][..c].iter_mut().zip(tap) {
                    *g += v;
                }
            }
        }
    }
}

/// Pooling's backward pass on one image: a max pool sends each output's gradient to the
/// first tap holding the maximum (TensorFlow's choice), an average pool shares it among
/// the valid taps. Adds into `dx`.
pub(super) fn pool_grad(window: &Window, x: &[f32], dz: &[f32], max: bool, dx: &mut [f32]) {
    let [h, w, c] = window.input;
    let (ho, wo) = window.output;
    let (kh, kw) = window.kernel;
    assert!(
        x.len() == h * w * c && dx.len() == x.len() && dz.len() == ho * wo * c,
        "pooling gradient buffers do not match the layer's shape"
    );
    let mut best = vec![(f32::NEG_INFINITY, usize::MAX); c];
    for oy in 0..ho {
        for ox in 0..wo {
            let d = &dz[(oy * wo + ox) * c..][..c];
            let taps = (0..kh * kw).filter_map(|t| window.tap((oy, ox), (t / kw, t % kw)));
            if max {
                best.fill((f32::NEG_INFINITY, usize::MAX));
                for p in taps {
                    for (ch, (b, &v)) in best.iter_mut().zip(&x[p * c..][..c]).enumerate() {
                        // The forward pass's `f32::max` skips NaN, and so does this.
                        if v > b.0 || (b.1 == usize::MAX && !v.is_nan()) {
                            *b = (v, p * c + ch);
                        }
                    }
                }
                for (&(_, at), &d) in best.iter().zip(d) {
                    if at != usize::MAX {
                        dx[at] += d;
                    }
                }
            } else {
                let taps: Vec<usize> = taps.collect();
                let share = 1.0 / taps.len().max(1) as f32;
                for p in taps {
                    for (g, &d) in dx[p * c..][..c].iter_mut().zip(d) {
                        *g += d * share;
                    }
                }
            }
        }
    }
}

/// Adds `parts` in order: the same sum, to the last bit, whichever thread finished first.
fn sum_in_order(parts: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut total = vec![0f32; len];
    for part in parts {
        total.iter_mut().zip(&part).for_each(|(t, p)| *t += p);
    }
    total
}

/// Runs `f(image, a, b, sum)` on each image's slices of `a` (`a_len` values per image) and
/// `b` (`b_len` values, or empty slices when `b_len` is 0). The images are split into one
/// contiguous share per thread, each adding into its own `[len]` sum, and the shares' sums
/// are added in order, so that a training run repeats exactly. What a weight's gradient
/// over a batch needs.
pub(super) fn per_image_sum<F>(
    (a, a_len): (&[f32], usize),
    (b, b_len): (&mut [f32], usize),
    len: usize,
    f: F,
) -> Vec<f32>
where
    F: Fn(usize, &[f32], &mut [f32], &mut [f32]) + Sync,
{
    let images = a.len() / a_len.max(1);
    assert!(
        a_len > 0 && a.len() == images * a_len && b.len() == images * b_len,
        "per-image buffers do not hold the same number of images"
    );
    let mut b: Vec<&mut [f32]> = if b_len == 0 {
        (0..images).map(|_| <&mut [f32]>::default()).collect()
    } else {
        b.chunks_mut(b_len).collect()
    };
    let share = images.div_ceil(rayon::current_num_threads().max(1)).max(1);
    let parts: Vec<Vec<f32>> = a
        .par_chunks(share * a_len)
        .zip(b.par_chunks_mut(share))
        .enumerate()
        .map(|(s, (a, b))| {
            let mut sum = vec![0f32; len];
            for (i, (a, b)) in a.chunks(a_len).zip(b.iter_mut()).enumerate() {
                f(s * share + i, a, b, &mut sum);
            }
            sum
        })
        .collect();
    sum_in_order(parts, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 + seed * 104_729) % 2000) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// `a · b` by the definition, in f64.
    fn naive(a: View<'_>, b: View<'_>) -> Vec<f32> {
        let at = |v: &View<'_>, i: usize, j: usize| {
            f64::from(v.data[i * v.row_stride + j * v.column_stride])
        };
        let mut out = Vec::with_capacity(a.rows * b.columns);
        for i in 0..a.rows {
            for j in 0..b.columns {
                out.push(
                    (0..a.columns)
                        .map(|k| at(&a, i, k) * at(&b, k, j))
                        .sum::<f64>() as f32,
                );
            }
        }
        out
    }

    /// Every way `product` splits its work — by pixels (a weight's gradient: transposed left
    /// operand, inner dimension unevenly shared among three threads), by bands of output
    /// rows (transposed right operand), and on one thread — gives the product.
    #[test]
    fn products_split_among_threads_are_the_product() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .expect("a pool");
        pool.install(|| {
            for (m, k, n) in [(40, 3001, 50), (301, 100, 150), (5, 7, 3)] {
                let x = values(k * m, 1);
                let y = values(k * n, 2);
                let w = values(n * k, 3);
                // A weight's gradient: xᵀ · y with x `[k, m]`; an input's: y · wᵀ with w `[n, k]`.
                let cases = [
                    (View::rows(&x, k, m).t(), View::rows(&y, k, n)),
                    (View::rows(&y, k, n).t(), View::rows(&w, n, k).t()),
                ];
                for (case, (a, b)) in cases.into_iter().enumerate() {
                    let expected = naive(a, b);
                    let mut out = vec![f32::NAN; a.rows * b.columns];
                    product(&mut out, a, b);
                    let scale = (a.columns as f32).sqrt();
                    for (i, (o, e)) in out.iter().zip(&expected).enumerate() {
                        assert!(
                            (o - e).abs() <= 1e-4 * scale,
                            "{m}×{k}×{n}, case {case}, [{i}]: {o} against {e}"
                        );
                    }
                }
            }
        });
    }
}
