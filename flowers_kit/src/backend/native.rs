//! The fast CPU path: MobileNet V2 on plain NHWC buffers.
//!
//! - Pointwise (1×1) convolutions are one `gemm` call each (AVX-512 kernels where the CPU has
//!   them). The output is pre-filled with the bias — and, for a residual block's projection,
//!   with the block input too — so both are fused into the product for free.
//! - Depthwise 3×3 convolutions walk output pixels and vectorise over channels: an explicit
//!   AVX-512 kernel, the bounds-checked loop compiled for AVX2+FMA, or the same loop for any
//!   other CPU, chosen at run time. Stride 2 reads every other pixel: no copies.
//! - The stem is an im2col into a `[pixels, 27]` matrix and one gemm.
//! - Each image runs through three buffers sized once for the largest activation; nothing
//!   is allocated per layer. A batch runs its images in parallel on rayon; a single image
//!   parallelises inside the layers instead.
//!
//! Memory safety: the gemm call and the AVX-512 loads are `unsafe`. They rely on the shapes
//! that [`Network::new`] validated (weights `[cin, cout]`, `[9, c]`, `[27, cout]`; channels
//! chained from layer to layer), and each kernel re-checks the lengths of the slices it is
//! handed with `assert!` before any unchecked access, so a broken invariant panics instead of
//! reading out of bounds.

use gemm::Parallelism;
use rayon::prelude::*;

use super::padding::{same_output, same_pad_before};
use super::{Layer, Network};
use crate::error::{Error, Result};

/// A step with everything it needs; residual adds are fused into the projection before them.
#[derive(Debug, Clone)]
enum Step {
    Stem {
        weights: Vec<f32>,
        bias: Vec<f32>,
        stride: usize,
    },
    Pointwise {
        weights: Vec<f32>,
        bias: Vec<f32>,
        cin: usize,
        relu6: bool,
        add_saved: bool,
    },
    Depthwise {
        weights: Vec<f32>,
        bias: Vec<f32>,
        stride: usize,
    },
    Save,
}

/// A [`Network`] prepared for the native CPU kernels.
#[derive(Debug, Clone)]
pub struct NativeNetwork {
    resolution: usize,
    steps: Vec<Step>,
    features: usize,
    /// Floats per buffer: the largest activation of one image (im2col of the stem included).
    buffer_len: usize,
}

impl NativeNetwork {
    /// Prepares `network` (weights are copied; nothing else is computed here).
    pub fn new(network: &Network) -> Result<NativeNetwork> {
        let mut steps = Vec::with_capacity(network.layers().len());
        let mut layers = network.layers().iter().peekable();
        while let Some(layer) = layers.next() {
            steps.push(match layer {
                Layer::Stem {
                    weights,
                    bias,
                    stride,
                } => Step::Stem {
                    weights: weights.clone(),
                    bias: bias.clone(),
                    stride: *stride,
                },
                Layer::Pointwise {
                    weights,
                    bias,
                    cin,
                    relu6,
                } => {
                    let add_saved = matches!(layers.peek(), Some(Layer::AddResidual));
                    if add_saved {
                        layers.next();
                        if *relu6 {
                            return Err(Error::Backend(
                                "a residual add after a ReLU6 layer cannot be fused".into(),
                            ));
                        }
                    }
                    Step::Pointwise {
                        weights: weights.clone(),
                        bias: bias.clone(),
                        cin: *cin,
                        relu6: *relu6,
                        add_saved,
                    }
                }
                Layer::Depthwise {
                    weights,
                    bias,
                    stride,
                } => Step::Depthwise {
                    weights: weights.clone(),
                    bias: bias.clone(),
                    stride: *stride,
                },
                Layer::SaveResidual => Step::Save,
                Layer::AddResidual => {
                    return Err(Error::Backend(
                        "a residual add must follow a pointwise projection".into(),
                    ))
                }
            });
        }
        // Walk the shapes once to size the buffers.
        let (mut h, mut c) = (network.model().resolution, 3);
        let mut buffer_len = 0;
        for step in &steps {
            match step {
                Step::Stem { bias, stride, .. } => {
                    h = same_output(h, *stride);
                    buffer_len = buffer_len.max(h * h * 27);
                    c = bias.len();
                }
                Step::Pointwise { bias, .. } => c = bias.len(),
                Step::Depthwise { stride, .. } => h = same_output(h, *stride),
                Step::Save => {}
            }
            buffer_len = buffer_len.max(h * h * c);
        }
        Ok(NativeNetwork {
            resolution: network.model().resolution,
            steps,
            features: network.feature_dim(),
            buffer_len,
        })
    }

    /// Features `[n, F]` of `n` images given as NHWC pixels in [0, 1].
    pub fn forward(&self, pixels: &[f32], n: usize) -> Result<Vec<f32>> {
        let per_image = self.resolution * self.resolution * 3;
        if pixels.len() != n * per_image {
            return Err(Error::InvalidArgument(format!(
                "expected {n} images of {0}×{0}×3 values ({1}), got {2}",
                self.resolution,
                n * per_image,
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
                .for_each_init(
                    || self.buffers(),
                    |buffers, (image, features)| {
                        self.forward_image(image, features, buffers, false)
                    },
                );
        } else {
            let mut buffers = self.buffers();
            for (image, features) in pixels.chunks(per_image).zip(out.chunks_mut(self.features)) {
                self.forward_image(image, features, &mut buffers, threads > 1);
            }
        }
        Ok(out)
    }

    fn buffers(&self) -> [Vec<f32>; 3] {
        std::array::from_fn(|_| vec![0f32; self.buffer_len])
    }

    /// One image through the network into `features`, using `buffers` as scratch.
    fn forward_image(
        &self,
        image: &[f32],
        features: &mut [f32],
        buffers: &mut [Vec<f32>; 3],
        parallel: bool,
    ) {
        let parallelism = if parallel {
            Parallelism::Rayon(0)
        } else {
            Parallelism::None
        };
        let (mut h, mut w, mut c) = (self.resolution, self.resolution, 3usize);
        let mut current = 0usize; // buffer holding the activation
        let mut saved: Option<usize> = None; // buffer holding a residual block's input
        for step in &self.steps {
            // The first buffer that holds neither the activation nor a saved input.
            let free = (0..3)
                .find(|&b| b != current && Some(b) != saved)
                .unwrap_or(0);
            match step {
                Step::Stem {
                    weights,
                    bias,
                    stride,
                } => {
                    let (ho, wo) = (same_output(h, *stride), same_output(w, *stride));
                    let cout = bias.len();
                    let [cols, out, _] = buffers;
                    im2col_stem(image, h, w, *stride, &mut cols[..ho * wo * 27]);
                    let out = &mut out[..ho * wo * cout];
                    let cols = &cols[..ho * wo * 27];
                    matmul(out, cols, weights, ho * wo, 27, cout, false, parallelism);
                    bias_relu6(out, bias);
                    (h, w, c, current) = (ho, wo, cout, 1);
                }
                Step::Pointwise {
                    weights,
                    bias,
                    cin,
                    relu6: clamp,
                    add_saved,
                } => {
                    let cout = bias.len();
                    let pixels = h * w;
                    let (input, output, residual) = split3(buffers, current, free, saved);
                    let output = &mut output[..pixels * cout];
                    let residual = if *add_saved {
                        residual.map(|r| &r[..pixels * cout])
                    } else {
                        None
                    };
                    let input = &input[..pixels * cin];
                    // ReLU6 layers: gemm overwrites, then bias and clamp in one pass.
                    // Projections: pre-filled with bias (+ the block input), gemm accumulates.
                    if !*clamp {
                        fill_rows(output, bias, residual);
                    }
                    matmul(
                        output,
                        input,
                        weights,
                        pixels,
                        *cin,
                        cout,
                        !*clamp,
                        parallelism,
                    );
                    if *clamp {
                        bias_relu6(output, bias);
                    }
                    if *add_saved {
                        saved = None;
                    }
                    (c, current) = (cout, free);
                }
                Step::Depthwise {
                    weights,
                    bias,
                    stride,
                } => {
                    let (ho, wo) = (same_output(h, *stride), same_output(w, *stride));
                    let (input, output, _) = split3(buffers, current, free, None);
                    let layer = Depthwise {
                        input: &input[..h * w * c],
                        h,
                        w,
                        c,
                        stride: *stride,
                        weights,
                        bias,
                    };
                    layer.run(&mut output[..ho * wo * c], parallel);
                    (h, w, current) = (ho, wo, free);
                }
                Step::Save => saved = Some(current),
            }
        }
        average_pool(&buffers[current][..h * w * c], c, features);
    }
}

/// (`&buffers[read]`, `&mut buffers[write]`, `&buffers[extra]` if any), all distinct.
fn split3(
    buffers: &mut [Vec<f32>; 3],
    read: usize,
    write: usize,
    extra: Option<usize>,
) -> (&[f32], &mut [f32], Option<&[f32]>) {
    let [a, b, c] = buffers;
    let mut slots: [Option<&mut Vec<f32>>; 3] = [Some(a), Some(b), Some(c)];
    let output = slots[write]
        .take()
        .map(|v| v.as_mut_slice())
        .unwrap_or_default();
    let input = slots[read].take().map(|v| v.as_slice()).unwrap_or_default();
    let extra = extra.and_then(|e| slots[e].take().map(|v| v.as_slice()));
    (input, output, extra)
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

/// Adds the per-channel bias to every row and applies ReLU6.
// max/min rather than clamp: clamp's NaN-preserving compare-and-select vectorises worse.
#[allow(clippy::manual_clamp)]
fn bias_relu6(out: &mut [f32], bias: &[f32]) {
    for row in out.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v = (*v + b).max(0.0).min(6.0);
        }
    }
}

/// The stem's 3×3 patches of the input scaled to [-1, 1] (padding stays 0), `[pixels, 27]`.
fn im2col_stem(image: &[f32], h: usize, w: usize, stride: usize, cols: &mut [f32]) {
    let (ho, wo) = (same_output(h, stride), same_output(w, stride));
    let (pad_y, pad_x) = (same_pad_before(h, stride), same_pad_before(w, stride));
    for oy in 0..ho {
        for ox in 0..wo {
            let row = &mut cols[(oy * wo + ox) * 27..][..27];
            for ky in 0..3 {
                for kx in 0..3 {
                    let tap = &mut row[(ky * 3 + kx) * 3..][..3];
                    let iy = (oy * stride + ky).checked_sub(pad_y).filter(|&y| y < h);
                    let ix = (ox * stride + kx).checked_sub(pad_x).filter(|&x| x < w);
                    match (iy, ix) {
                        (Some(y), Some(x)) => {
                            let px = &image[(y * w + x) * 3..][..3];
                            for (t, p) in tap.iter_mut().zip(px) {
                                *t = p * 2.0 - 1.0;
                            }
                        }
                        _ => tap.fill(0.0),
                    }
                }
            }
        }
    }
}

/// One 3×3 depthwise layer's fixed inputs: TF "SAME" padding, then bias and ReLU6.
#[derive(Clone, Copy)]
struct Depthwise<'a> {
    input: &'a [f32],
    h: usize,
    w: usize,
    c: usize,
    stride: usize,
    /// `[9, c]`, rows in (ky, kx) order.
    weights: &'a [f32],
    bias: &'a [f32],
}

impl Depthwise<'_> {
    /// The whole output, row by row (rows in parallel for a large layer).
    fn run(&self, output: &mut [f32], parallel: bool) {
        let (ho, wo) = (
            same_output(self.h, self.stride),
            same_output(self.w, self.stride),
        );
        // The AVX-512 kernel's unchecked loads rely on these lengths (see its SAFETY note).
        assert!(
            self.c > 0
                && self.input.len() == self.h * self.w * self.c
                && self.weights.len() == 9 * self.c
                && self.bias.len() == self.c
                && output.len() == ho * wo * self.c,
            "depthwise buffers do not match the layer's shape"
        );
        let row_len = wo * self.c;
        let run = |(oy, row): (usize, &mut [f32])| self.row(oy, row);
        if parallel && output.len() * 9 >= MIN_PARALLEL_MACS {
            output.par_chunks_mut(row_len).enumerate().for_each(run);
        } else {
            output.chunks_mut(row_len).enumerate().for_each(run);
        }
    }

    /// One output row, dispatched to the widest vector unit available.
    fn row(&self, oy: usize, row: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
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
    #[allow(clippy::manual_clamp)]
    fn checked(&self, oy: usize, row: &mut [f32], columns: std::ops::Range<usize>) {
        let Depthwise {
            input,
            h,
            w,
            c,
            stride,
            weights,
            bias,
        } = *self;
        let (pad_y, pad_x) = (same_pad_before(h, stride), same_pad_before(w, stride));
        for ox in columns {
            let out = &mut row[ox * c..][..c];
            out.copy_from_slice(bias);
            for ky in 0..3 {
                let Some(iy) = (oy * stride + ky).checked_sub(pad_y).filter(|&y| y < h) else {
                    continue;
                };
                for kx in 0..3 {
                    let Some(ix) = (ox * stride + kx).checked_sub(pad_x).filter(|&x| x < w) else {
                        continue;
                    };
                    let pixel = &input[(iy * w + ix) * c..][..c];
                    let tap = &weights[(ky * 3 + kx) * c..][..c];
                    for ((o, p), k) in out.iter_mut().zip(pixel).zip(tap) {
                        *o = p.mul_add(*k, *o);
                    }
                }
            }
            // max/min rather than clamp: clamp's NaN-preserving select vectorises worse.
            for o in out.iter_mut() {
                *o = o.max(0.0).min(6.0);
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
    //! The depthwise kernel with explicit AVX-512: 16 channels per register, the 9 taps of a
    //! channel block kept in registers along a row, no bounds checks inside the image.

    use std::arch::x86_64::*;

    use super::{same_pad_before, Depthwise};

    /// Which output columns of a row see all 3 input columns inside the image.
    fn interior_columns(
        w: usize,
        wo: usize,
        stride: usize,
        pad_x: usize,
    ) -> std::ops::Range<usize> {
        let first = pad_x.div_ceil(stride);
        // Largest ox with ox·stride − pad_x + 2 ≤ w − 1.
        let last = (w + pad_x)
            .checked_sub(3)
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
            weights,
            bias,
        } = *layer;
        let wo = row.len() / c;
        let (pad_y, pad_x) = (same_pad_before(h, stride), same_pad_before(w, stride));
        let top = (oy * stride).checked_sub(pad_y);
        let rows_inside = top.is_some_and(|t| t + 2 < h);
        let interior = if rows_inside {
            interior_columns(w, wo, stride, pad_x)
        } else {
            0..0
        };
        // Border pixels (and rows touching the padding) take the bounds-checked path.
        layer.checked(oy, row, 0..interior.start);
        layer.checked(oy, row, interior.end..wo);
        let Some(top) = top.filter(|_| !interior.is_empty()) else {
            return;
        };
        for block in (0..c).step_by(16) {
            let lanes = (c - block).min(16);
            let mask: __mmask16 = if lanes == 16 {
                0xFFFF
            } else {
                (1u16 << lanes) - 1
            };
            // SAFETY: each masked load or store touches `lanes` floats from index `at`, with
            // at + lanes ≤ the slice's length, because `Depthwise::run` asserted
            // weights = 9·c, bias = c, input = h·w·c and row = wo·c floats (shapes that
            // `Network::new` validated), `block + lanes ≤ c`, and `interior` holds only the
            // columns whose 3×3 window lies inside the image (`rows_inside` the same for
            // rows). `slice[at..]` additionally panics if `at` itself were past the end.
            unsafe {
                let load =
                    |slice: &[f32], at: usize| _mm512_maskz_loadu_ps(mask, slice[at..].as_ptr());
                let taps: [__m512; 9] = std::array::from_fn(|t| load(weights, t * c + block));
                let b = load(bias, block);
                let (zero, six) = (_mm512_setzero_ps(), _mm512_set1_ps(6.0));
                for ox in interior.clone() {
                    let left = ox * stride - pad_x;
                    let mut acc = b;
                    for ky in 0..3 {
                        let base = ((top + ky) * w + left) * c + block;
                        acc = _mm512_fmadd_ps(load(input, base), taps[ky * 3], acc);
                        acc = _mm512_fmadd_ps(load(input, base + c), taps[ky * 3 + 1], acc);
                        acc = _mm512_fmadd_ps(load(input, base + 2 * c), taps[ky * 3 + 2], acc);
                    }
                    acc = _mm512_min_ps(_mm512_max_ps(acc, zero), six);
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
