//! The fast CPU path: any [`Network`] on plain NHWC buffers.
//!
//! - Convolutions are one `gemm` call each (AVX-512 or AVX2 kernels, chosen at run time):
//!   a 1×1 stride-1 convolution multiplies the activation directly, others go through an
//!   im2col buffer. The output is pre-filled with the bias — and, when the convolution feeds
//!   a residual add and nothing else, with the other addend too — so both are fused into the
//!   product for free.
//! - Depthwise convolutions walk output pixels and vectorise over channels: an explicit
//!   AVX-512 kernel (taps in registers), the bounds-checked loop compiled for AVX2+FMA, or
//!   the same loop for any other CPU, chosen at run time. Stride 2 reads every other pixel.
//! - Pooling, padding, concatenation, squeeze-and-excitation products and activations are
//!   plain loops over channels.
//! - Buffers come from a per-thread pool and return to it after their last reader; nothing
//!   is allocated per layer once the pool is warm. A batch runs its images in parallel on
//!   rayon; a single image parallelises inside the layers instead.
//!
//! Memory safety: the gemm call and the AVX-512 loads are `unsafe`. They rely on the shapes
//! that [`Network::new`] validated (weights `[kh, kw, cin, cout]` or `[kh, kw, c]`, each
//! step's shape following from its inputs'), and each kernel re-checks the lengths of the
//! slices it is handed with `assert!` before any unchecked access, so a broken invariant
//! panics instead of reading out of bounds.

use gemm::Parallelism;
use rayon::prelude::*;

use super::{Conv, Kernel, Network, Step};
use crate::error::{Error, Result};
use crate::models::graph::{Activation, Shape};

/// A [`Network`] prepared for the native CPU kernels.
#[derive(Debug, Clone)]
pub struct NativeNetwork {
    steps: std::sync::Arc<[Step]>,
    /// The last step reading each step's output (its buffer is released after it).
    last_use: Vec<usize>,
    /// For a convolution feeding a residual add and nothing else: the add's other input,
    /// pre-filled into the convolution's output.
    residual: Vec<Option<usize>>,
    /// For such an add: the convolution whose buffer already holds the sum.
    fused_into: Vec<Option<usize>>,
    resolution: usize,
    features: usize,
}

impl NativeNetwork {
    /// Prepares `network` (its steps are shared, not copied).
    pub fn new(network: &Network) -> Result<NativeNetwork> {
        let steps = network.shared_steps();
        let n = steps.len();
        let mut last_use: Vec<usize> = (0..n).collect();
        let mut readers = vec![0usize; n];
        for (i, step) in steps.iter().enumerate() {
            for &j in &step.inputs {
                if let Some(l) = last_use.get_mut(j) {
                    *l = (*l).max(i);
                }
                if let Some(r) = readers.get_mut(j) {
                    *r += 1;
                }
            }
        }
        // The output is read by the final pooling.
        if let Some(l) = last_use.last_mut() {
            *l = usize::MAX;
        }
        let mut residual = vec![None; n];
        let mut fused_into = vec![None; n];
        for (a, step) in steps.iter().enumerate() {
            let (Kernel::Add(_), [p, q]) = (&step.kernel, step.inputs.as_slice()) else {
                continue;
            };
            // The later addend is the convolution; the earlier one must already exist.
            let (early, late) = if p < q { (*p, *q) } else { (*q, *p) };
            let is_plain_conv = steps.get(late).is_some_and(|s| {
                matches!(&s.kernel, Kernel::Conv(c) if !c.depthwise && c.activation == Activation::Linear)
            });
            if is_plain_conv && readers.get(late) == Some(&1) && early != late {
                residual[late] = Some(early);
                fused_into[a] = Some(late);
                // The early addend must live until the convolution has read it.
                if let Some(l) = last_use.get_mut(early) {
                    *l = (*l).max(late);
                }
            }
        }
        let features = network.feature_dim();
        if features == 0 {
            return Err(Error::InvalidArgument("a network without features".into()));
        }
        Ok(NativeNetwork {
            steps,
            last_use,
            residual,
            fused_into,
            resolution: network.model().resolution(),
            features,
        })
    }

    /// Features `[n, F]` of `n` images given as NHWC pixels in [0, 1].
    pub fn forward(&self, pixels: &[f32], n: usize) -> Result<Vec<f32>> {
        let per_image = self.resolution * self.resolution * 3;
        if Some(pixels.len()) != n.checked_mul(per_image) {
            return Err(Error::InvalidArgument(format!(
                "expected {n} images of {0}×{0}×3 values, got {1}",
                self.resolution,
                pixels.len()
            )));
        }
        let mut out = vec![0f32; n * self.features];
        let threads = rayon::current_num_threads();
        if n >= threads && threads > 1 {
            // Whole images per thread: no synchronisation inside the network.
            pixels
                .par_chunks(per_image)
                .zip(out.par_chunks_mut(self.features))
                .for_each_init(Pool::default, |pool, (image, features)| {
                    self.forward_image(image, features, pool, false)
                });
        } else {
            let mut pool = Pool::default();
            for (image, features) in pixels.chunks(per_image).zip(out.chunks_mut(self.features)) {
                self.forward_image(image, features, &mut pool, threads > 1);
            }
        }
        Ok(out)
    }

    /// One image through the network into `features`.
    fn forward_image(&self, image: &[f32], features: &mut [f32], pool: &mut Pool, parallel: bool) {
        let parallelism = if parallel {
            Parallelism::Rayon(0)
        } else {
            Parallelism::None
        };
        let mut values: Vec<Option<Vec<f32>>> = vec![None; self.steps.len()];
        for (i, step) in self.steps.iter().enumerate() {
            let [h, w, c] = step.shape;
            let input = |k: usize| -> &[f32] {
                step.inputs
                    .get(k)
                    .and_then(|&j| values.get(j))
                    .and_then(|v| v.as_deref())
                    .unwrap_or_default()
            };
            let in_shape = |k: usize| -> Shape {
                step.inputs
                    .get(k)
                    .and_then(|&j| self.steps.get(j))
                    .map_or([0; 3], |s| s.shape)
            };
            let output = if let Some(conv) = self.fused_into[i] {
                // The convolution's buffer already holds the sum.
                let mut sum = values[conv].take().unwrap_or_default();
                if let Kernel::Add(activation) = &step.kernel {
                    activate(&mut sum, *activation);
                }
                sum
            } else {
                let mut out = pool.take(h * w * c);
                match &step.kernel {
                    Kernel::Input => out.copy_from_slice(image),
                    Kernel::Conv(conv) => {
                        let residual = self.residual[i]
                            .and_then(|j| values.get(j))
                            .and_then(|v| v.as_deref());
                        run_conv(
                            conv,
                            input(0),
                            in_shape(0),
                            &mut out,
                            step.shape,
                            residual,
                            pool,
                            parallel,
                            parallelism,
                        );
                    }
                    Kernel::Affine {
                        scale,
                        shift,
                        activation,
                    } => {
                        for (row, x) in out.chunks_exact_mut(c).zip(input(0).chunks_exact(c)) {
                            for (((o, v), s), t) in row.iter_mut().zip(x).zip(scale).zip(shift) {
                                *o = v * s + t;
                            }
                        }
                        activate(&mut out, *activation);
                    }
                    Kernel::Activation(activation) => {
                        out.copy_from_slice(input(0));
                        activate(&mut out, *activation);
                    }
                    Kernel::Add(activation) => {
                        out.copy_from_slice(input(0));
                        for k in 1..step.inputs.len() {
                            for (o, v) in out.iter_mut().zip(input(k)) {
                                *o += v;
                            }
                        }
                        activate(&mut out, *activation);
                    }
                    Kernel::Multiply => {
                        let (a, b) = (input(0), input(1));
                        let (big, small) = if a.len() >= b.len() { (a, b) } else { (b, a) };
                        if small.len() == big.len() {
                            for ((o, x), y) in out.iter_mut().zip(big).zip(small) {
                                *o = x * y;
                            }
                        } else {
                            for (row, x) in out.chunks_exact_mut(c).zip(big.chunks_exact(c)) {
                                for ((o, v), s) in row.iter_mut().zip(x).zip(small) {
                                    *o = v * s;
                                }
                            }
                        }
                    }
                    Kernel::Concat => {
                        let mut offset = 0;
                        for k in 0..step.inputs.len() {
                            let part = in_shape(k)[2];
                            for (row, x) in out.chunks_exact_mut(c).zip(input(k).chunks_exact(part))
                            {
                                row[offset..offset + part].copy_from_slice(x);
                            }
                            offset += part;
                        }
                    }
                    Kernel::MaxPool { size, stride, pad } => pool2d(
                        input(0),
                        in_shape(0),
                        &mut out,
                        step.shape,
                        *size,
                        *stride,
                        *pad,
                        true,
                    ),
                    Kernel::AvgPool { size, stride, pad } => pool2d(
                        input(0),
                        in_shape(0),
                        &mut out,
                        step.shape,
                        *size,
                        *stride,
                        *pad,
                        false,
                    ),
                    Kernel::Pad([top, _, left, _]) => {
                        out.fill(0.0);
                        let [ih, iw, _] = in_shape(0);
                        for (y, row) in input(0).chunks_exact(iw * c).enumerate().take(ih) {
                            let start = ((y + top) * w + left) * c;
                            out[start..start + iw * c].copy_from_slice(row);
                        }
                    }
                    Kernel::Crop([top, _, left, _]) => {
                        let [_, iw, _] = in_shape(0);
                        for (y, row) in out.chunks_exact_mut(w * c).enumerate() {
                            let start = ((y + top) * iw + left) * c;
                            row.copy_from_slice(&input(0)[start..start + w * c]);
                        }
                    }
                    Kernel::GlobalAvgPool => average_pool(input(0), c, &mut out),
                }
                out
            };
            values[i] = Some(output);
            for &j in &step.inputs {
                if self.last_use.get(j) == Some(&i) {
                    if let Some(buffer) = values.get_mut(j).and_then(Option::take) {
                        pool.give(buffer);
                    }
                }
            }
            if let Some(j) = self.residual[i] {
                if self.last_use.get(j) == Some(&i) {
                    if let Some(buffer) = values.get_mut(j).and_then(Option::take) {
                        pool.give(buffer);
                    }
                }
            }
        }
        let last = values.last().and_then(|v| v.as_deref()).unwrap_or_default();
        average_pool(last, self.features, features);
        for buffer in values.into_iter().flatten() {
            pool.give(buffer);
        }
    }
}

/// Reusable f32 buffers of one thread.
#[derive(Default)]
struct Pool {
    free: Vec<Vec<f32>>,
}

impl Pool {
    /// A buffer of `len` values (contents unspecified: every kernel writes all of them).
    fn take(&mut self, len: usize) -> Vec<f32> {
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        let mut buffer = match best {
            Some(i) => self.free.swap_remove(i),
            None => Vec::with_capacity(len),
        };
        // Shrinks, or zero-fills only the part never used before.
        buffer.resize(len, 0.0);
        buffer
    }

    fn give(&mut self, buffer: Vec<f32>) {
        self.free.push(buffer);
    }
}

/// Applies `activation` in place.
// max/min rather than clamp: clamp's NaN-preserving compare-and-select vectorises worse.
#[allow(clippy::manual_clamp)]
pub(crate) fn activate(values: &mut [f32], activation: Activation) {
    match activation {
        Activation::Linear => {}
        Activation::Relu => values.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Relu6 => values.iter_mut().for_each(|v| *v = v.max(0.0).min(6.0)),
        Activation::Sigmoid => values.iter_mut().for_each(|v| *v = 1.0 / (1.0 + exp(-*v))),
        Activation::Swish => values.iter_mut().for_each(|v| *v *= 1.0 / (1.0 + exp(-*v))),
        Activation::HardSigmoid => values
            .iter_mut()
            .for_each(|v| *v = (*v + 3.0).max(0.0).min(6.0) * (1.0 / 6.0)),
        Activation::HardSwish => values
            .iter_mut()
            .for_each(|v| *v *= (*v + 3.0).max(0.0).min(6.0) * (1.0 / 6.0)),
    }
}

/// Adds the per-channel bias to every row and applies `activation`, in one pass.
// max/min rather than clamp: clamp's NaN-preserving compare-and-select vectorises worse.
#[allow(clippy::manual_clamp)]
fn bias_activate(out: &mut [f32], bias: &[f32], activation: Activation) {
    match activation {
        Activation::Relu6 => {
            for row in out.chunks_exact_mut(bias.len()) {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v = (*v + b).max(0.0).min(6.0);
                }
            }
        }
        Activation::Relu => {
            for row in out.chunks_exact_mut(bias.len()) {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v = (*v + b).max(0.0);
                }
            }
        }
        other => {
            for row in out.chunks_exact_mut(bias.len()) {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v += b;
                }
                activate(row, other);
            }
        }
    }
}

/// e^x in f32 with a branch-free polynomial (Cephes' `expf`, within a few ulp), so that loops
/// over it vectorise; `f32::exp` is a scalar library call per element.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.3);
    // n = round(x / ln 2), by truncating x·log2(e) ± 0.5; |n| ≤ 128 after the clamp.
    let t = x * LOG2E;
    let n = (t + 0.5f32.copysign(t)) as i32;
    let nf = n as f32;
    let r = x - nf * LN2_HI - nf * LN2_LO;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n from its exponent bits: n + 127 is within 1..=254 for the clamped range.
    e * f32::from_bits(((n + 127).clamp(1, 254) as u32) << 23)
}

/// One convolution of a `[h, w, cin]` input into `out` (`[ho, wo, cout]`).
#[allow(clippy::too_many_arguments)]
fn run_conv(
    conv: &Conv,
    input: &[f32],
    [h, w, cin]: Shape,
    out: &mut [f32],
    [ho, wo, cout]: Shape,
    residual: Option<&[f32]>,
    pool: &mut Pool,
    parallel: bool,
    parallelism: Parallelism,
) {
    if conv.depthwise {
        let clamp = match conv.activation {
            Activation::Relu6 => Some(6.0),
            Activation::Linear => None,
            _ => None,
        };
        let layer = Depthwise {
            input,
            h,
            w,
            c: cin,
            stride: conv.stride,
            kernel: conv.kernel,
            pad: (conv.pad[0], conv.pad[2]),
            weights: &conv.weights,
            bias: &conv.bias,
            relu6: clamp.is_some(),
        };
        layer.run(out, (ho, wo), parallel);
        if clamp.is_none() {
            activate(out, conv.activation);
        }
        return;
    }
    // A linear convolution, or one feeding a residual add, starts from bias (+ addend) and
    // lets gemm accumulate; one followed by an activation lets gemm overwrite, then adds the
    // bias and applies the activation in one pass.
    let accumulate = residual.is_some() || conv.activation == Activation::Linear;
    if accumulate {
        fill_rows(out, &conv.bias, residual);
    }
    let (kh, kw) = conv.kernel;
    let m = ho * wo;
    if (kh, kw) == (1, 1) && conv.stride == 1 && conv.pad == [0; 4] {
        matmul(
            out,
            input,
            &conv.weights,
            m,
            cin,
            cout,
            accumulate,
            parallelism,
        );
    } else {
        let k = kh * kw * cin;
        let mut cols = pool.take(m * k);
        im2col(input, (h, w, cin), conv, (ho, wo), &mut cols);
        matmul(
            out,
            &cols,
            &conv.weights,
            m,
            k,
            cout,
            accumulate,
            parallelism,
        );
        pool.give(cols);
    }
    if accumulate {
        activate(out, conv.activation);
    } else {
        bias_activate(out, &conv.bias, conv.activation);
    }
}

/// The `[kh, kw, cin]` patch of every output pixel, zeros for padding: `[ho·wo, kh·kw·cin]`.
fn im2col(
    input: &[f32],
    (h, w, c): (usize, usize, usize),
    conv: &Conv,
    (ho, wo): (usize, usize),
    cols: &mut [f32],
) {
    let (kh, kw) = conv.kernel;
    let (pad_y, pad_x) = (conv.pad[0], conv.pad[2]);
    let row_len = kh * kw * c;
    for oy in 0..ho {
        for ox in 0..wo {
            let row = &mut cols[(oy * wo + ox) * row_len..][..row_len];
            for ky in 0..kh {
                let iy = (oy * conv.stride + ky)
                    .checked_sub(pad_y)
                    .filter(|&y| y < h);
                for kx in 0..kw {
                    let tap = &mut row[(ky * kw + kx) * c..][..c];
                    let ix = (ox * conv.stride + kx)
                        .checked_sub(pad_x)
                        .filter(|&x| x < w);
                    match (iy, ix) {
                        (Some(y), Some(x)) => tap.copy_from_slice(&input[(y * w + x) * c..][..c]),
                        _ => tap.fill(0.0),
                    }
                }
            }
        }
    }
}

/// Max or average pooling; padded taps are skipped (the average divides by valid taps).
#[allow(clippy::too_many_arguments)]
fn pool2d(
    input: &[f32],
    [h, w, c]: Shape,
    out: &mut [f32],
    [ho, wo, _]: Shape,
    (kh, kw): (usize, usize),
    stride: usize,
    pad: [usize; 4],
    max: bool,
) {
    for oy in 0..ho {
        for ox in 0..wo {
            let o = &mut out[(oy * wo + ox) * c..][..c];
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

/// Below this many multiply-adds a layer runs on one thread: splitting a small layer across
/// threads costs more than it saves (batch 1 at 0.35/128 ran 3× slower on 2 threads).
const MIN_PARALLEL_MACS: usize = 1 << 22;

/// `out[m, n] = a[m, k] · b[k, n]` (with `accumulate`: `+=`), all row-major.
#[allow(clippy::too_many_arguments)]
fn matmul(
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
    parallelism: Parallelism,
) {
    // Checked in release builds too: gemm reads and writes through raw pointers below.
    assert!(
        Some(out.len()) == m.checked_mul(n)
            && Some(a.len()) == m.checked_mul(k)
            && Some(b.len()) == k.checked_mul(n),
        "matmul shapes do not match the slices"
    );
    let parallelism = if m * k * n < MIN_PARALLEL_MACS {
        Parallelism::None
    } else {
        parallelism
    };
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
            parallelism,
        );
    }
}

/// One depthwise layer's fixed inputs: explicit padding, then bias and optionally ReLU6.
#[derive(Clone, Copy)]
struct Depthwise<'a> {
    input: &'a [f32],
    h: usize,
    w: usize,
    c: usize,
    stride: usize,
    kernel: (usize, usize),
    /// Padding (top, left); the bottom and right follow from the output size.
    pad: (usize, usize),
    /// `[kh·kw, c]`, rows in (ky, kx) order.
    weights: &'a [f32],
    bias: &'a [f32],
    relu6: bool,
}

impl Depthwise<'_> {
    /// The whole `[ho, wo, c]` output, row by row (rows in parallel for a large layer).
    fn run(&self, output: &mut [f32], (ho, wo): (usize, usize), parallel: bool) {
        let (kh, kw) = self.kernel;
        // The AVX-512 kernel's unchecked loads rely on these lengths (see its SAFETY note).
        assert!(
            self.c > 0
                && self.stride > 0
                && self.input.len() == self.h * self.w * self.c
                && self.weights.len() == kh * kw * self.c
                && self.bias.len() == self.c
                && output.len() == ho * wo * self.c,
            "depthwise buffers do not match the layer's shape"
        );
        let row_len = wo * self.c;
        let run = |(oy, row): (usize, &mut [f32])| self.row(oy, row);
        if parallel && output.len() * kh * kw >= MIN_PARALLEL_MACS {
            output.par_chunks_mut(row_len).enumerate().for_each(run);
        } else {
            output.chunks_mut(row_len).enumerate().for_each(run);
        }
    }

    /// One output row, dispatched to the widest vector unit available.
    fn row(&self, oy: usize, row: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if self.kernel.0 * self.kernel.1 <= avx512::MAX_TAPS
                && is_x86_feature_detected!("avx512f")
            {
                // SAFETY: the CPU supports AVX-512F, checked just above.
                return unsafe { avx512::row(self, oy, row) };
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                return unsafe { row_avx2(self, oy, row) };
            }
        }
        self.checked(oy, row, 0..row.len() / self.c)
    }

    /// The bounds-checked kernel for output columns `columns` of row `oy`; inlined into the
    /// feature-specific callers, where the channel loops become vector instructions.
    #[inline(always)]
    fn checked(&self, oy: usize, row: &mut [f32], columns: std::ops::Range<usize>) {
        // Constant window sizes let the compiler unroll the tap loops of the common kernels.
        match self.kernel {
            (3, 3) => self.checked_with(oy, row, columns, 3, 3),
            (5, 5) => self.checked_with(oy, row, columns, 5, 5),
            (kh, kw) => self.checked_with(oy, row, columns, kh, kw),
        }
    }

    #[inline(always)]
    #[allow(clippy::manual_clamp)]
    fn checked_with(
        &self,
        oy: usize,
        row: &mut [f32],
        columns: std::ops::Range<usize>,
        kh: usize,
        kw: usize,
    ) {
        let Depthwise {
            input,
            h,
            w,
            c,
            stride,
            pad: (pad_y, pad_x),
            weights,
            bias,
            relu6,
            ..
        } = *self;
        for ox in columns {
            let out = &mut row[ox * c..][..c];
            out.copy_from_slice(bias);
            for ky in 0..kh {
                let Some(iy) = (oy * stride + ky).checked_sub(pad_y).filter(|&y| y < h) else {
                    continue;
                };
                for kx in 0..kw {
                    let Some(ix) = (ox * stride + kx).checked_sub(pad_x).filter(|&x| x < w) else {
                        continue;
                    };
                    let pixel = &input[(iy * w + ix) * c..][..c];
                    let tap = &weights[(ky * kw + kx) * c..][..c];
                    for ((o, p), k) in out.iter_mut().zip(pixel).zip(tap) {
                        *o = p.mul_add(*k, *o);
                    }
                }
            }
            if relu6 {
                // max/min rather than clamp: clamp's NaN-preserving select vectorises worse.
                for o in out.iter_mut() {
                    *o = o.max(0.0).min(6.0);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_avx2(layer: &Depthwise, oy: usize, row: &mut [f32]) {
    layer.checked(oy, row, 0..row.len() / layer.c)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! The depthwise kernel with explicit AVX-512: 16 channels per register, the taps of a
    //! channel block kept in registers along a row, no bounds checks inside the image.

    use std::arch::x86_64::*;

    use super::Depthwise;

    /// Most taps kept in registers (a 5×5 kernel).
    pub(super) const MAX_TAPS: usize = 25;

    /// Which output columns of a row see their whole window inside the image.
    fn interior_columns(
        w: usize,
        wo: usize,
        kw: usize,
        stride: usize,
        pad_x: usize,
    ) -> std::ops::Range<usize> {
        let first = pad_x.div_ceil(stride);
        // Largest ox with ox·stride − pad_x + kw − 1 ≤ w − 1.
        let last = (w + pad_x)
            .checked_sub(kw)
            .map_or(0, |v| v / stride + 1)
            .min(wo);
        first.min(last)..last
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn row(layer: &Depthwise, oy: usize, row: &mut [f32]) {
        let Depthwise {
            input,
            h,
            w,
            c,
            stride,
            kernel: (kh, kw),
            pad: (pad_y, pad_x),
            weights,
            bias,
            relu6,
        } = *layer;
        let wo = row.len() / c;
        let top = (oy * stride).checked_sub(pad_y);
        let rows_inside = top.is_some_and(|t| t + kh <= h);
        let interior = if rows_inside && kh * kw <= MAX_TAPS {
            interior_columns(w, wo, kw, stride, pad_x)
        } else {
            0..0
        };
        // Border pixels (and rows touching the padding) take the bounds-checked path.
        layer.checked(oy, row, 0..interior.start);
        layer.checked(oy, row, interior.end..wo);
        let Some(top) = top.filter(|_| !interior.is_empty()) else {
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
                let load =
                    |slice: &[f32], at: usize| _mm512_maskz_loadu_ps(mask, slice[at..].as_ptr());
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
                            acc = _mm512_fmadd_ps(
                                load(input, base + kx * c),
                                taps[ky * kw + kx],
                                acc,
                            );
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
}

/// Mean over pixels of a `[pixels, c]` activation.
fn average_pool(activation: &[f32], c: usize, out: &mut [f32]) {
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_vectorisable_exp_matches_the_library_one() {
        let mut worst = 0f32;
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let (ours, std) = (super::exp(x), x.exp());
            worst = worst.max(((ours - std) / std).abs());
        }
        assert!(worst < 5e-7, "relative error {worst}");
    }
}
