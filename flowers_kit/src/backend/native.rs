//! The fast CPU path: any [`Network`] on plain NHWC buffers, with the kernels of the widest
//! instruction set the CPU has ([`Kernels`], chosen at run time).
//!
//! - Convolutions are matrix products: a 1×1 stride-1 convolution multiplies the activation
//!   directly, others go through an im2col buffer. With [`Kernels::Avx2`] the weights are
//!   packed once for a 6×16 FMA micro-kernel (`packed.rs`) that adds the bias, a residual
//!   addend and the ReLU/ReLU6 clamp as it stores; otherwise each is one `gemm` call into an
//!   output pre-filled with the bias (and the addend).
//! - With [`Kernels::Avx2`], an inverted-residual block (expand → depthwise → project) is one
//!   step, run band by band of output rows so that its expanded activations stay in L2.
//! - Depthwise convolutions vectorise over channels: explicit AVX-512 and AVX2 kernels (taps
//!   in registers) inside the image, a bounds-checked loop at its borders and for any other
//!   CPU.
//! - Pooling, concatenation, squeeze-and-excitation products and activations are plain loops
//!   over channels (activations compiled for AVX2 where the CPU has it).
//! - Buffers come from pools kept between calls and return to them after their last reader;
//!   nothing is allocated per layer once warm. A batch runs its images in parallel on rayon;
//!   a single large image parallelises inside the layers instead.
//!
//! Memory safety: the gemm call, the micro-kernel and the explicit SIMD loads are `unsafe`.
//! They rely on the shapes that [`Network::new`] validated (weights `[kh, kw, cin, cout]` or
//! `[kh, kw, c]`, each step's shape following from its inputs'), and each kernel re-checks
//! the lengths of the slices it is handed with `assert!` before any unchecked access, so a
//! broken invariant panics instead of reading out of bounds.

use gemm::Parallelism;
use rayon::prelude::*;

use super::packed::{self, Epilogue, PackedWeights};
use super::{Conv, Kernel, Network, Step};
use crate::error::{Error, Result};
use crate::models::graph::{Activation, Shape};

/// Which instruction set the native kernels are written for. [`Kernels::detect`] picks the
/// widest this CPU has; tests force each available one to compare it with the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// AVX-512: the explicit depthwise kernel, and gemm's AVX-512 matrix products.
    Avx512,
    /// AVX2 + FMA: matrix products on weights packed once, with the bias, residual and
    /// clamp fused into the store, and the depthwise loop compiled for AVX2.
    Avx2,
    /// Any CPU: portable loops (gemm still picks its own kernels at run time).
    Portable,
}

impl Kernels {
    /// The widest set this CPU supports.
    ///
    /// ```
    /// use flowers_kit::backend::native::Kernels;
    /// assert!(Kernels::detect().is_supported());
    /// ```
    pub fn detect() -> Kernels {
        [Kernels::Avx512, Kernels::Avx2]
            .into_iter()
            .find(|k| k.is_supported())
            .unwrap_or(Kernels::Portable)
    }

    /// Every set this CPU can run, widest first.
    pub fn available() -> Vec<Kernels> {
        [Kernels::Avx512, Kernels::Avx2, Kernels::Portable]
            .into_iter()
            .filter(|k| k.is_supported())
            .collect()
    }

    /// Whether this CPU has the instructions.
    pub fn is_supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            Kernels::Avx512 => false,
            Kernels::Avx2 => packed::supported(),
            Kernels::Portable => true,
        }
    }
}

/// A [`Network`] prepared for the native CPU kernels.
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
    kernels: Kernels,
    /// With [`Kernels::Avx2`]: each non-depthwise convolution's packed weights.
    packed: Vec<Option<PackedWeights>>,
    /// At the projection of an inverted-residual block run as one step: its parts.
    blocks: Vec<Option<Block>>,
    /// Expansions and depthwise convolutions computed inside such a block's step.
    inside_block: Vec<bool>,
    /// Whether a single image splits its layers among threads (see
    /// [`MIN_PARALLEL_IMAGE_MACS`]).
    split_layers: bool,
    /// Warm buffer pools between calls, one per thread that ran (a few MB each).
    pools: std::sync::Mutex<Vec<Pool>>,
    /// The output is the last step's whole map, not its average over pixels.
    maps: bool,
}

impl Clone for NativeNetwork {
    fn clone(&self) -> NativeNetwork {
        NativeNetwork {
            steps: self.steps.clone(),
            last_use: self.last_use.clone(),
            residual: self.residual.clone(),
            fused_into: self.fused_into.clone(),
            resolution: self.resolution,
            features: self.features,
            kernels: self.kernels,
            packed: self.packed.clone(),
            blocks: self.blocks.clone(),
            inside_block: self.inside_block.clone(),
            split_layers: self.split_layers,
            pools: Default::default(),
            maps: self.maps,
        }
    }
}

impl std::fmt::Debug for NativeNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeNetwork")
            .field("steps", &self.steps.len())
            .field("resolution", &self.resolution)
            .field("features", &self.features)
            .field("kernels", &self.kernels)
            .finish_non_exhaustive()
    }
}

impl NativeNetwork {
    /// Prepares `network` (its steps are shared, not copied) for this CPU's widest kernels.
    pub fn new(network: &Network) -> Result<NativeNetwork> {
        NativeNetwork::with_kernels(network, Kernels::detect())
    }

    /// Prepares `network` for the `kernels` given; an error if this CPU cannot run them.
    pub fn with_kernels(network: &Network, kernels: Kernels) -> Result<NativeNetwork> {
        if !kernels.is_supported() {
            return Err(Error::InvalidArgument(format!(
                "this CPU cannot run the {kernels:?} kernels"
            )));
        }
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
        let packed: Vec<Option<PackedWeights>> = steps
            .iter()
            .map(|step| match &step.kernel {
                Kernel::Conv(c) if kernels == Kernels::Avx2 && !c.depthwise => {
                    PackedWeights::new(&c.weights, &c.bias, c.kernel.0 * c.kernel.1 * c.cin, c.cout)
                }
                _ => None,
            })
            .collect();
        let (blocks, inside_block) = find_blocks(&steps, &readers, &packed, &mut last_use);
        let macs: usize = steps
            .iter()
            .map(|step| match &step.kernel {
                Kernel::Conv(c) => {
                    let per_output = c.kernel.0 * c.kernel.1 * if c.depthwise { 1 } else { c.cin };
                    step.shape.iter().product::<usize>() * per_output
                }
                _ => 0,
            })
            .sum();
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
            kernels,
            packed,
            blocks,
            inside_block,
            split_layers: macs >= MIN_PARALLEL_IMAGE_MACS,
            pools: Default::default(),
            maps: false,
        })
    }

    /// The network whose [`forward`](Self::forward) returns the last step's whole
    /// `[h, w, c]` map per image instead of its average over pixels.
    pub fn output_maps(mut self) -> NativeNetwork {
        self.maps = true;
        self.features = self.steps.last().map_or(0, |s| s.shape.iter().product());
        self
    }

    /// Whether [`forward`](Self::forward) returns whole maps ([`output_maps`](Self::output_maps)).
    pub fn outputs_maps(&self) -> bool {
        self.maps
    }

    /// Values per image that [`forward`](Self::forward) returns: the feature length, or the
    /// map's size with [`output_maps`](Self::output_maps).
    pub fn output_len(&self) -> usize {
        self.features
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
            // Whole images per thread, one contiguous share each: no synchronisation inside
            // the network, and one pool per share (rayon's `for_each_init` made a fresh pool
            // per stolen job, and batch 16 on 2 threads ran only 1.5× one thread).
            let share = n.div_ceil(threads);
            pixels
                .par_chunks(per_image * share)
                .zip(out.par_chunks_mut(self.features * share))
                .for_each(|(images, features)| {
                    self.with_pool(|pool| {
                        for (image, f) in images
                            .chunks(per_image)
                            .zip(features.chunks_mut(self.features))
                        {
                            self.forward_image(image, f, pool, false);
                        }
                    })
                });
        } else {
            let mut run = || {
                self.with_pool(|pool| {
                    for (image, f) in pixels.chunks(per_image).zip(out.chunks_mut(self.features)) {
                        self.forward_image(image, f, pool, threads > 1 && self.split_layers);
                    }
                })
            };
            if threads > 1 && self.split_layers {
                // On a worker thread, each layer's split is a cheap local job for the other
                // workers to steal, not a job injected from outside and waited for.
                rayon::scope(|_| run());
            } else {
                run();
            }
        }
        Ok(out)
    }

    /// Runs `work` with a warm buffer pool, kept for the next call.
    fn with_pool(&self, work: impl FnOnce(&mut Pool)) {
        let stashed = self.pools.lock().ok().and_then(|mut pools| pools.pop());
        let mut pool = stashed.unwrap_or_default();
        work(&mut pool);
        if let Ok(mut pools) = self.pools.lock() {
            pools.push(pool);
        }
    }

    /// One image through the network into `features`.
    fn forward_image(&self, image: &[f32], features: &mut [f32], pool: &mut Pool, parallel: bool) {
        let mut values: Vec<Option<Buffer>> = std::iter::repeat_with(|| None)
            .take(self.steps.len())
            .collect();
        for (i, step) in self.steps.iter().enumerate() {
            if self.inside_block.get(i) == Some(&true) {
                continue;
            }
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
                    Kernel::Conv(_) if self.blocks[i].is_some() => {
                        let residual = self.residual[i]
                            .and_then(|j| values.get(j))
                            .and_then(|v| v.as_deref());
                        if let Some(block) = &self.blocks[i] {
                            let x = values.get(block.input).and_then(|v| v.as_deref());
                            self.run_block(
                                i,
                                block,
                                x.unwrap_or_default(),
                                &mut out,
                                residual,
                                parallel,
                            );
                        }
                    }
                    Kernel::Conv(conv) => {
                        let residual = self.residual[i]
                            .and_then(|j| values.get(j))
                            .and_then(|v| v.as_deref());
                        run_conv(
                            conv,
                            self.packed.get(i).and_then(Option::as_ref),
                            self.kernels,
                            input(0),
                            in_shape(0),
                            &mut out,
                            step.shape,
                            residual,
                            pool,
                            parallel,
                        );
                    }
                    Kernel::Affine {
                        scale,
                        shift,
                        activation,
                    } => {
                        let uniform = |v: &[f32]| v.iter().all(|x| Some(x) == v.first());
                        if let (true, true, Some(s), Some(t)) =
                            (uniform(scale), uniform(shift), scale.first(), shift.first())
                        {
                            // One flat loop (an input rescaling): rows of 3 channels do not
                            // vectorise.
                            for (o, v) in out.iter_mut().zip(input(0)) {
                                *o = v * s + t;
                            }
                        } else {
                            for (row, x) in out.chunks_exact_mut(c).zip(input(0).chunks_exact(c)) {
                                for (((o, v), s), t) in row.iter_mut().zip(x).zip(scale).zip(shift)
                                {
                                    *o = v * s + t;
                                }
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
            let extra = [self.residual[i], self.blocks[i].as_ref().map(|b| b.input)];
            for j in extra.into_iter().flatten() {
                if self.last_use.get(j) == Some(&i) {
                    if let Some(buffer) = values.get_mut(j).and_then(Option::take) {
                        pool.give(buffer);
                    }
                }
            }
        }
        let last = values.last().and_then(|v| v.as_deref()).unwrap_or_default();
        if self.maps {
            if let Some(map) = last.get(..features.len()) {
                features.copy_from_slice(map);
            }
        } else {
            average_pool(last, self.features, features);
        }
        for buffer in values.into_iter().flatten() {
            pool.give(buffer);
        }
    }
}

/// An inverted-residual block (1×1 expansion → depthwise → 1×1 projection) run as one step,
/// band by band of output rows: the expanded activations, 6× the width of the block's input,
/// live in an L2-sized band and never go to memory. MobileNet V2 is memory-bound on a
/// laptop's 10 GB/s per core; its expansions wrote and re-read ~40 MB per image.
#[derive(Debug, Clone)]
struct Block {
    /// The block's input (the expansion's).
    input: usize,
    expand: usize,
    depthwise: usize,
}

/// The blocks among `steps`: a packed pointwise convolution whose only input is a depthwise
/// convolution, read by nothing else, whose only input is a packed pointwise convolution,
/// read by nothing else. Extends the block input's life to the projection.
fn find_blocks(
    steps: &[Step],
    readers: &[usize],
    packed: &[Option<PackedWeights>],
    last_use: &mut [usize],
) -> (Vec<Option<Block>>, Vec<bool>) {
    let n = steps.len();
    let mut blocks = vec![None; n];
    let mut inside = vec![false; n];
    let conv = |i: usize| match steps.get(i).map(|s| &s.kernel) {
        Some(Kernel::Conv(c)) => Some(c),
        _ => None,
    };
    let only_input = |i: usize| match steps.get(i).map(|s| s.inputs.as_slice()) {
        Some(&[j]) => Some(j),
        _ => None,
    };
    let packed_pointwise = |i: usize| {
        conv(i).is_some_and(Conv::is_pointwise) && packed.get(i).is_some_and(Option::is_some)
    };
    for (project, slot) in blocks.iter_mut().enumerate() {
        if !packed_pointwise(project) {
            continue;
        }
        let Some(depthwise) = only_input(project) else {
            continue;
        };
        let Some(expand) = only_input(depthwise) else {
            continue;
        };
        let Some(input) = only_input(expand) else {
            continue;
        };
        if conv(depthwise).is_some_and(|c| c.depthwise)
            && packed_pointwise(expand)
            && readers.get(depthwise) == Some(&1)
            && readers.get(expand) == Some(&1)
        {
            *slot = Some(Block {
                input,
                expand,
                depthwise,
            });
            inside[expand] = true;
            inside[depthwise] = true;
            if let Some(l) = last_use.get_mut(input) {
                *l = (*l).max(project);
            }
        }
    }
    (blocks, inside)
}

/// Bytes of expanded activations one band aims for (Zen 3 has 512 KB of L2 per core).
const BAND_BYTES: usize = 192 * 1024;

thread_local! {
    /// A block's band buffers (expanded rows, depthwise output), per thread.
    static BANDS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

impl NativeNetwork {
    /// `block` on input `x` into `out` (the projection's output), with the residual
    /// addend; output rows split among threads when `parallel`.
    fn run_block(
        &self,
        project: usize,
        block: &Block,
        x: &[f32],
        out: &mut [f32],
        residual: Option<&[f32]>,
        parallel: bool,
    ) {
        let part = |i: usize| {
            let step = self.steps.get(i)?;
            match (&step.kernel, self.packed.get(i)) {
                (Kernel::Conv(c), Some(p)) => Some((step, c, p.as_ref())),
                _ => None,
            }
        };
        // `find_blocks` checked these kinds; a mismatch leaves `out` as it is.
        let (
            Some((e_step, expand, Some(e_packed))),
            Some((_, depthwise, _)),
            Some((p_step, project, Some(p_packed))),
        ) = (part(block.expand), part(block.depthwise), part(project))
        else {
            return;
        };
        let [h, w, _] = self.steps.get(block.input).map_or([0; 3], |s| s.shape);
        let [ho, wo, cout] = p_step.shape;
        let band = BlockBand {
            x,
            w,
            h,
            expanded: e_step.shape[2],
            expand: (e_packed, expand.activation),
            depthwise,
            project: (p_packed, project.activation),
            wo,
            kernels: self.kernels,
        };
        let threads = rayon::current_num_threads();
        let macs = ho * wo * cout * e_step.shape[2];
        if parallel && threads > 1 && ho >= threads && macs >= MIN_PARALLEL_MACS {
            let rows = ho.div_ceil(threads);
            out.par_chunks_mut(rows * wo * cout)
                .enumerate()
                .for_each(|(t, out)| {
                    let first = t * rows;
                    let count = out.len() / (wo * cout);
                    let res = residual.map(|r| &r[first * wo * cout..(first + count) * wo * cout]);
                    band.rows(first..first + count, out, res);
                });
        } else {
            band.rows(0..ho, out, residual);
        }
    }
}

/// What one thread needs to run output rows of a block.
struct BlockBand<'a> {
    x: &'a [f32],
    h: usize,
    w: usize,
    /// Channels after the expansion.
    expanded: usize,
    expand: (&'a PackedWeights, Activation),
    depthwise: &'a Conv,
    project: (&'a PackedWeights, Activation),
    wo: usize,
    kernels: Kernels,
}

impl BlockBand<'_> {
    /// Output rows `rows` into `out` (those rows only), band by band.
    fn rows(&self, rows: std::ops::Range<usize>, out: &mut [f32], residual: Option<&[f32]>) {
        let BlockBand {
            x,
            h,
            w,
            expanded: ce,
            wo,
            ..
        } = *self;
        let (kh, _) = self.depthwise.kernel;
        let stride = self.depthwise.stride;
        let pad_top = self.depthwise.pad[0];
        let cin = self.expand.0.k();
        let cout = out.len() / (rows.len() * wo).max(1);
        let in_row = w * ce;
        // Output rows per band: as many as keep the band's expanded rows near BAND_BYTES.
        let band_rows_in = (BAND_BYTES / (4 * in_row).max(1)).max(kh);
        let per_band = ((band_rows_in - kh) / stride + 1).max(1);
        BANDS.with(|bands| {
            let Ok(mut bands) = bands.try_borrow_mut() else {
                return;
            };
            let (expanded, dw_out) = &mut *bands;
            let need = ((per_band - 1) * stride + kh) * in_row;
            if expanded.len() < need {
                expanded.resize(need, 0.0);
            }
            if dw_out.len() < per_band * wo * ce {
                dw_out.resize(per_band * wo * ce, 0.0);
            }
            // Expanded input rows held at the front of `expanded`.
            let mut held = 0..0;
            let mut start = rows.start;
            while start < rows.end {
                let end = (start + per_band).min(rows.end);
                let lo = (start * stride).saturating_sub(pad_top).min(h);
                let hi = ((end - 1) * stride + kh).saturating_sub(pad_top).min(h);
                // Rows already expanded for the last band move to the front.
                let mut from = lo;
                if held.start <= lo && lo < held.end {
                    expanded.copy_within(
                        (lo - held.start) * in_row..(held.end - held.start) * in_row,
                        0,
                    );
                    from = held.end.min(hi);
                }
                let fresh = &mut expanded[(from - lo) * in_row..(hi - lo) * in_row];
                let (weights, activation) = self.expand;
                packed::product(
                    fresh,
                    packed::Operand::Rows(&x[from * w * cin..hi * w * cin]),
                    (hi - from) * w,
                    weights,
                    Epilogue::new(activation, None),
                    false,
                );
                held = lo..hi;
                let band = &expanded[..(hi - lo) * in_row];
                let count = end - start;
                let dw = &mut dw_out[..count * wo * ce];
                // Rows above the band's first are padding only where they are above the image.
                let pad = pad_top + lo - start * stride;
                Depthwise::of(self.depthwise, band, (hi - lo, w), pad, self.kernels).run(
                    dw,
                    (count, wo),
                    false,
                );

                let at = (start - rows.start) * wo * cout..(end - rows.start) * wo * cout;
                let (weights, activation) = self.project;
                let target = &mut out[at.clone()];
                packed::product(
                    target,
                    packed::Operand::Rows(dw),
                    count * wo,
                    weights,
                    Epilogue::new(activation, residual.map(|r| &r[at])),
                    false,
                );
                start = end;
            }
        });
    }
}

/// Reusable f32 buffers of one worker. A network keeps one per thread between calls, so a
/// warm forward pass allocates nothing and touches no fresh pages.
#[derive(Default)]
struct Pool {
    free: Vec<Buffer>,
}

impl Pool {
    /// A buffer of `len` values (contents unspecified: every kernel writes all of them).
    fn take(&mut self, len: usize) -> Buffer {
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.data.len() >= len)
            .min_by_key(|(_, b)| b.data.len())
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                let mut buffer = self.free.swap_remove(i);
                buffer.len = len;
                buffer
            }
            None => Buffer {
                data: vec![0.0; len],
                len,
            },
        }
    }

    fn give(&mut self, buffer: Buffer) {
        self.free.push(buffer);
    }
}

/// The first `len` values of a pooled allocation. Unlike `Vec::resize`, handing a larger
/// buffer out for a smaller layer writes nothing (re-zeroing cost 8 % of a forward pass).
#[derive(Default)]
struct Buffer {
    data: Vec<f32>,
    len: usize,
}

impl std::ops::Deref for Buffer {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        self.data.get(..self.len).unwrap_or_default()
    }
}

impl std::ops::DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [f32] {
        self.data.get_mut(..self.len).unwrap_or_default()
    }
}

/// Applies `activation` in place, compiled for AVX2 + FMA where the CPU has them (swish in
/// EfficientNet spent half its forward pass here with SSE2 code).
pub(crate) fn activate(values: &mut [f32], activation: Activation) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        return unsafe { activate_avx2(values, activation) };
    }
    activate_inline(values, activation)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn activate_avx2(values: &mut [f32], activation: Activation) {
    activate_inline(values, activation)
}

// max/min rather than clamp: clamp's NaN-preserving compare-and-select vectorises worse.
#[allow(clippy::manual_clamp)]
#[inline(always)]
fn activate_inline(values: &mut [f32], activation: Activation) {
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
// max/min rather than clamp: clamp's NaN-preserving compare-and-select vectorises worse.
#[allow(clippy::manual_clamp)]
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.3).min(88.3);
    // n = round(x / ln 2), |n| ≤ 127 after the clamp, by the magic-number addition: integer
    // bit operations only, so that the loop vectorises (a float-to-int `as` did not).
    let shifted = x * LOG2E + ROUND;
    let nf = shifted - ROUND;
    let r = x - nf * LN2_HI - nf * LN2_LO;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n from its exponent bits: n + 127 is within 1..=254 for the clamped range, and
    // `shifted`'s low bits hold n + 0x40_0000.
    let biased = shifted
        .to_bits()
        .wrapping_sub(0x4B40_0000)
        .wrapping_add(127);
    e * f32::from_bits(biased << 23)
}

/// One convolution of a `[h, w, cin]` input into `out` (`[ho, wo, cout]`).
#[allow(clippy::too_many_arguments)]
fn run_conv(
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
fn im2col(
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

/// Below this many multiply-adds per image, a single image runs on one thread: measured on
/// a 2-core Zen 3, splitting the layers of MobileNet V3 (214 M) or MobileNet V2 1.0/128
/// (98 M) among threads ran no faster or slower than one thread (the waits for the other
/// thread cost what its half saved), while MobileNet V2 1.0/224 (299 M) and EfficientNet
/// B0 (385 M) gained 12–21 %.
const MIN_PARALLEL_IMAGE_MACS: usize = 250_000_000;

/// Below this many multiply-adds a layer runs on one thread: splitting a small layer across
/// threads costs more than it saves (batch 1 at 0.35/128 ran 3× slower on 2 threads).
pub(crate) const MIN_PARALLEL_MACS: usize = 1 << 22;

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
    /// Any other activation, applied to each output row while it is in L1.
    then: Activation,
    kernels: Kernels,
}

impl<'a> Depthwise<'a> {
    /// Depthwise `conv` on an `(h, w)` input, with `pad_top` rows of padding above it
    /// (ReLU6 is applied in the kernel, another activation to each row after it).
    fn of(
        conv: &'a Conv,
        input: &'a [f32],
        (h, w): (usize, usize),
        pad_top: usize,
        kernels: Kernels,
    ) -> Depthwise<'a> {
        Depthwise {
            input,
            h,
            w,
            c: conv.cin,
            stride: conv.stride,
            kernel: conv.kernel,
            pad: (pad_top, conv.pad[2]),
            weights: &conv.weights,
            bias: &conv.bias,
            relu6: conv.activation == Activation::Relu6,
            then: match conv.activation {
                Activation::Relu6 => Activation::Linear,
                other => other,
            },
            kernels,
        }
    }

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
        let run = |(oy, row): (usize, &mut [f32])| {
            self.row(oy, row);
            activate(row, self.then);
        };
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
            // `NativeNetwork::with_kernels` refused kernels this CPU lacks; checked again
            // here because the safety of the calls below rests on it.
            if self.kernels == Kernels::Avx512
                && self.kernel.0 * self.kernel.1 <= avx512::MAX_TAPS
                && is_x86_feature_detected!("avx512f")
            {
                // SAFETY: the CPU supports AVX-512F, checked just above.
                return unsafe { avx512::row(self, oy, row) };
            }
            if self.kernels != Kernels::Portable
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                return unsafe {
                    if matches!(self.kernel, (3, 3) | (5, 5)) {
                        avx2::row(self, oy, row)
                    } else {
                        row_avx2(self, oy, row)
                    }
                };
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
impl Depthwise<'_> {
    /// Splits output row `oy` for an explicit kernel: runs the bounds-checked loop on the
    /// columns whose window leaves the image (on the whole row when the window leaves it
    /// vertically, or when `explicit` is false), and returns the window's top input row and
    /// the interior columns left to the caller, if any.
    #[inline(always)]
    fn interior(
        &self,
        oy: usize,
        row: &mut [f32],
        explicit: bool,
    ) -> Option<(usize, std::ops::Range<usize>)> {
        let (kh, kw) = self.kernel;
        let (stride, pad_x) = (self.stride, self.pad.1);
        let wo = row.len() / self.c;
        let top = (oy * stride).checked_sub(self.pad.0);
        let rows_inside = top.is_some_and(|t| t + kh <= self.h);
        let interior = if rows_inside && explicit {
            // From the first ox with ox·stride ≥ pad_x to the last with
            // ox·stride − pad_x + kw − 1 ≤ w − 1.
            let first = pad_x.div_ceil(stride);
            let last = (self.w + pad_x)
                .checked_sub(kw)
                .map_or(0, |v| v / stride + 1)
                .min(wo);
            first.min(last)..last
        } else {
            0..0
        };
        self.checked(oy, row, 0..interior.start);
        self.checked(oy, row, interior.end..wo);
        top.filter(|_| !interior.is_empty()).map(|t| (t, interior))
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
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

    use super::Depthwise;

    /// Output columns computed together.
    const GROUP: usize = 4;

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn row(layer: &Depthwise, oy: usize, row: &mut [f32]) {
        let Depthwise {
            w,
            c,
            stride,
            kernel: (kh, kw),
            pad: (_, pad_x),
            relu6,
            ..
        } = *layer;
        let known = matches!((kh, kw), (3, 3) | (5, 5)) && matches!(stride, 1 | 2);
        let Some((top, interior)) = layer.interior(oy, row, known) else {
            return;
        };
        // The furthest input and output values the interior touches: the window of its last
        // column, in its bottom row, last channel. The unchecked loads below rely on it.
        let last_input = ((top + kh - 1) * w + (interior.end - 1) * stride + kw - pad_x) * c;
        assert!(
            last_input <= layer.input.len()
                && interior.end * c <= row.len()
                && kh * kw * c <= layer.weights.len()
                && c <= layer.bias.len(),
            "depthwise interior outside its buffers"
        );
        macro_rules! run {
            ($kh:literal, $kw:literal, $s:literal, $relu6:literal) => {
                // SAFETY: AVX2 and FMA were checked by the caller; every address formed is at
                // most the ones just asserted (columns, rows and channels only grow towards
                // them).
                unsafe { columns::<$kh, $kw, $s, $relu6>(layer, top, row, interior.clone()) }
            };
        }
        match ((kh, kw), stride, relu6) {
            ((3, 3), 1, true) => run!(3, 3, 1, true),
            ((3, 3), 1, false) => run!(3, 3, 1, false),
            ((3, 3), 2, true) => run!(3, 3, 2, true),
            ((3, 3), 2, false) => run!(3, 3, 2, false),
            ((5, 5), 1, true) => run!(5, 5, 1, true),
            ((5, 5), 1, false) => run!(5, 5, 1, false),
            ((5, 5), 2, true) => run!(5, 5, 2, true),
            ((5, 5), 2, false) => run!(5, 5, 2, false),
            _ => layer.checked(oy, row, interior),
        }
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
        let mut ox = columns.start;
        while ox + GROUP <= columns.end {
            group::<KH, KW, S, RELU6, GROUP>(layer, top, row, ox);
            ox += GROUP;
        }
        while ox < columns.end {
            group::<KH, KW, S, RELU6, 1>(layer, top, row, ox);
            ox += 1;
        }
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
        row: &mut [f32],
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
        let out = row.as_mut_ptr().add(ox * c);
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
}

/// The bounds-checked loop compiled for AVX2 + FMA: borders and windows over 3×3.
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
