//! Fine-tuning on the CPU: the steps above a [`Cut`] run forward with the native kernels,
//! keeping every value, then backward through the gradient kernels of `grad`. The same
//! steps of the same network as every other pass; dfdx's traced tape
//! ([`crate::backend::TrainableSuffix`]) computes the same gradients and is what the tests
//! hold this to.
//!
//! A batch is one buffer per step, `[n·h·w, c]`: a 1×1 convolution is one matrix product
//! over the whole batch (its weights' gradient too, the batch's pixels as the inner
//! dimension), other windows run image by image in parallel.

use rayon::prelude::*;

use super::conv::{im2col, run_conv};
use super::eltwise::{activate, affine};
use super::grad::{
    activation_grad, add_column_sums, add_into, col2im, depthwise_grad, par_elements,
    per_image_sum, pool_grad, product, View, Window,
};
use super::isa::{has_avx2_fma, Kernels};
use super::packed::PackedWeights;
use super::pool::Pool;
use super::pooling::{average_pool, pool2d};
use super::threads::Threads;
use crate::backend::{Cut, Kernel, Step, EVAL_CHUNK};
use crate::error::{Error, Result};
use crate::models::graph::{Activation, Shape};
use std::time::{Duration, Instant};

use super::profile::step_kind;

/// The trainable steps of a [`Cut`], with their current weights, on the CPU.
///
/// ```
/// use flowers_kit::backend::native::NativeSuffix;
/// use flowers_kit::backend::Network;
/// use flowers_kit::models::Model;
///
/// let network = Network::random(Model::parse("mobilenet_v2_0.35_96")?, 0)?;
/// let cut = network.cut(1)?;   // block_16 and what follows it
/// let suffix = NativeSuffix::new(&cut)?;
/// let rows = vec![0.5; 2 * cut.row_len()];
/// let (features, tape) = suffix.forward(&rows, 2)?;
/// assert_eq!(features.len(), 2 * network.feature_dim());
/// // The gradient of the features' sum, for every weight and bias above the cut.
/// let gradients = suffix.backward(tape, &vec![1.0; features.len()])?;
/// assert_eq!(gradients.iter().map(Vec::len).sum::<usize>(), cut.parameter_count());
/// # Ok::<(), flowers_kit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct NativeSuffix {
    cut: Cut,
    /// Steps `cut.first()..`, with the current weights. A convolution whose activation
    /// needs its input to be differentiated (swish, hard swish) has it taken out here, and
    /// applied after the kernel, so that the input can be kept.
    steps: Vec<Step>,
    /// Each step's activation as the network defines it.
    activations: Vec<Activation>,
    /// The activation applied after each step's kernel (`Linear` where the kernel applies
    /// it itself).
    after: Vec<Activation>,
    kernels: Kernels,
    /// Buffers kept from one step to the next.
    buffers: Recycler,
    /// Values a forward pass keeps per row (every step's output, and the values before
    /// swish), to bound a batch before allocating it.
    tape_values_per_row: usize,
    /// Names these weights: a tape made with others is refused.
    stamp: Stamp,
}

/// One step of a fine-tuning pass: forward and backward times for a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct SuffixStepTime {
    /// The Keras layer the step ends with.
    pub name: String,
    /// What it computes (`conv 1×1/1`, `depthwise 3×3/1`, `add`…).
    pub kind: String,
    /// Its output `[h, w, c]` per row.
    pub shape: Shape,
    /// Multiply-adds of the forward pass for the batch.
    pub forward_multiply_adds: usize,
    /// Multiply-adds of the backward pass: a convolution's weights' gradient, and its
    /// input's unless the input lies below the cut (where no gradient is needed).
    pub backward_multiply_adds: usize,
    /// Bytes the forward pass must read and write at least once.
    pub forward_bytes: usize,
    /// Bytes the backward pass must read and write at least once.
    pub backward_bytes: usize,
    /// Mean seconds of the forward pass.
    pub forward_seconds: f64,
    /// Mean seconds of the backward pass.
    pub backward_seconds: f64,
}

/// The most values a forward pass may keep: 2²⁹ (2 GiB of f32). A batch of 256 photos
/// through three ResNet-50 V2 blocks keeps about 2²⁸.
pub const MAX_TAPE_VALUES: usize = 1 << 29;

/// A number no other suffix, clone or set of weights has: a tape carries its suffix's, and
/// [`NativeSuffix::backward`] refuses a tape from another suffix, or from before the weights
/// changed (its values would no longer match them).
#[derive(Debug, PartialEq, Eq)]
struct Stamp(u64);

impl Stamp {
    fn fresh() -> Stamp {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Stamp(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

impl Clone for Stamp {
    fn clone(&self) -> Stamp {
        Stamp::fresh()
    }
}

/// Buffers kept from one training step to the next: a step's values and gradients are tens
/// of megabytes, and handing them back to the allocator made every step fault their pages
/// in again (a fifth of a step went to the kernel).
#[derive(Default)]
struct Recycler(std::sync::Mutex<Vec<Vec<f32>>>);

/// Buffers smaller than this (values) are not worth keeping.
const MIN_RECYCLED: usize = 1 << 14;
/// The most buffers kept: more than a step of the largest suffix uses at once.
const MAX_RECYCLED: usize = 256;

impl Recycler {
    /// A buffer of `len` values whose contents are unspecified: for kernels that write every
    /// value.
    fn any(&self, len: usize) -> Vec<f32> {
        let kept = {
            let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let best = kept
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            best.map(|i| kept.swap_remove(i))
        };
        match kept {
            Some(mut buffer) => {
                // Only what the old contents do not cover is written here.
                buffer.resize(len, 0.0);
                buffer
            }
            None => vec![0f32; len],
        }
    }

    /// A buffer of `len` zeros.
    fn zeros(&self, len: usize) -> Vec<f32> {
        let mut buffer = self.any(len);
        par_elements(&mut buffer, |_, chunk| chunk.fill(0.0));
        buffer
    }

    /// Keeps `buffer` for a later step.
    fn give(&self, buffer: Vec<f32>) {
        if buffer.capacity() >= MIN_RECYCLED {
            let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if kept.len() < MAX_RECYCLED {
                kept.push(buffer);
            }
        }
    }
}

impl Clone for Recycler {
    fn clone(&self) -> Recycler {
        Recycler::default()
    }
}

impl std::fmt::Debug for Recycler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recycler")
    }
}

/// What a forward pass keeps for the backward pass: every step's value for a batch.
#[derive(Debug)]
pub struct SuffixTape {
    n: usize,
    /// The suffix's [`Stamp`] when the tape was made.
    stamp: u64,
    /// By step: the rows' maps for the cut's inputs, each trainable step's output; empty
    /// for the other steps.
    values: Vec<Vec<f32>>,
    /// By step: the value before the activation, for swish and hard swish.
    before_activation: Vec<Option<Vec<f32>>>,
}

/// One trainable tensor of a [`NativeSuffix`], to update after a step.
#[derive(Debug)]
pub struct Parameter<'a> {
    /// The values, in the layout of [`Step::parameters`].
    pub values: &'a mut [f32],
    /// A convolution's kernel (weight decay applies), rather than a bias, scale or shift.
    pub is_kernel: bool,
}

/// Whether an activation's derivative needs its input rather than its output.
fn needs_input(activation: Activation) -> bool {
    matches!(activation, Activation::Swish | Activation::HardSwish)
}

impl NativeSuffix {
    /// The trainable steps of `cut`, ready to run. Errors on a step no later step reads (its
    /// gradient would silently be lost).
    pub fn new(cut: &Cut) -> Result<NativeSuffix> {
        let all = cut.network().steps();
        let first = cut.first();
        let readers = crate::backend::readers_from(all, first);
        if let Some(unread) = (first..all.len()).find(|&i| readers[i] == 0) {
            return Err(Error::InvalidArgument(format!(
                "{}: step {} is read by no later step",
                cut.network().model().name(),
                all[unread].name
            )));
        }
        let kept_before_activation = |s: &Step| match &s.kernel {
            Kernel::Conv(c) => needs_input(c.activation),
            Kernel::Affine { activation, .. }
            | Kernel::Activation(activation)
            | Kernel::Add(activation) => needs_input(*activation),
            _ => false,
        };
        let tape_values_per_row = cut.row_len()
            + all[first..]
                .iter()
                .map(|s| {
                    s.shape.iter().product::<usize>() * (1 + usize::from(kept_before_activation(s)))
                })
                .sum::<usize>();
        let mut steps = cut.suffix().to_vec();
        let mut activations = Vec::with_capacity(steps.len());
        let mut after = Vec::with_capacity(steps.len());
        for step in &mut steps {
            let (own, applied_after) = match &mut step.kernel {
                Kernel::Conv(conv) => {
                    let own = conv.activation;
                    if needs_input(own) {
                        conv.activation = Activation::Linear;
                        (own, own)
                    } else {
                        (own, Activation::Linear)
                    }
                }
                Kernel::Affine { activation, .. }
                | Kernel::Activation(activation)
                | Kernel::Add(activation) => (*activation, *activation),
                _ => (Activation::Linear, Activation::Linear),
            };
            activations.push(own);
            after.push(applied_after);
        }
        Ok(NativeSuffix {
            cut: cut.clone(),
            steps,
            activations,
            after,
            kernels: Kernels::detect(),
            buffers: Recycler::default(),
            tape_values_per_row,
            stamp: Stamp::fresh(),
        })
    }

    /// Values per photo of its input rows (the maps crossing the cut).
    pub fn row_len(&self) -> usize {
        self.cut.row_len()
    }

    /// Values per feature vector it computes.
    pub fn feature_dim(&self) -> usize {
        self.cut.network().feature_dim()
    }

    /// Features `[n, F]` of `n` rows, [`EVAL_CHUNK`] rows at a time.
    pub fn features(&self, rows: &[f32], n: usize) -> Result<Vec<f32>> {
        let row_len = self.row_len();
        self.check_rows(rows, n)?;
        let mut out = Vec::with_capacity(n * self.cut.network().feature_dim());
        for chunk in rows.chunks(EVAL_CHUNK * row_len) {
            let m = chunk.len() / row_len;
            let (features, tape) = self.forward(chunk, m)?;
            out.extend(features);
            self.recycle(tape);
        }
        Ok(out)
    }

    /// Features `[n, F]` of `n` rows, and what [`backward`](Self::backward) needs.
    /// Errors when the batch would keep more than [`MAX_TAPE_VALUES`] values.
    pub fn forward(&self, rows: &[f32], n: usize) -> Result<(Vec<f32>, SuffixTape)> {
        self.forward_timed(rows, n, None)
    }

    /// [`forward`](Self::forward), adding each step's time (its kernel and activation) to
    /// `times[k]` for step `k` of the suffix.
    fn forward_timed(
        &self,
        rows: &[f32],
        n: usize,
        mut times: Option<&mut [Duration]>,
    ) -> Result<(Vec<f32>, SuffixTape)> {
        if n.checked_mul(self.tape_values_per_row)
            .is_none_or(|values| values > MAX_TAPE_VALUES)
        {
            return Err(Error::InvalidArgument(format!(
                "a batch of {n} photos through {} would keep more than {} MiB of \
                 activations for the backward pass: use a batch of at most {}",
                self.cut.block_name(),
                (MAX_TAPE_VALUES * 4) >> 20,
                MAX_TAPE_VALUES / self.tape_values_per_row.max(1)
            )));
        }
        self.check_rows(rows, n)?;
        let all = self.cut.network().steps();
        let first = self.cut.first();
        let mut tape = SuffixTape {
            n,
            stamp: self.stamp.0,
            values: vec![Vec::new(); all.len()],
            before_activation: vec![None; all.len()],
        };
        let row_len = self.row_len();
        let mut offset = 0;
        for &j in self.cut.inputs() {
            let size: usize = all[j].shape.iter().product();
            let mut values = self.buffers.any(n * size);
            for (map, row) in values
                .chunks_exact_mut(size)
                .zip(rows.chunks_exact(row_len))
            {
                map.copy_from_slice(&row[offset..offset + size]);
            }
            tape.values[j] = values;
            offset += size;
        }
        for (k, step) in self.steps.iter().enumerate() {
            let started = times.is_some().then(Instant::now);
            let mut value = self.step_forward(step, &tape.values, n)?;
            let after = self.after[k];
            if needs_input(after) {
                let mut output = self.buffers.any(value.len());
                par_elements(&mut output, |at, chunk| {
                    chunk.copy_from_slice(&value[at..at + chunk.len()]);
                    activate(chunk, after, self.kernels)
                });
                tape.before_activation[first + k] = Some(value);
                value = output;
            } else if after != Activation::Linear {
                par_elements(&mut value, |_, chunk| activate(chunk, after, self.kernels));
            }
            tape.values[first + k] = value;
            if let (Some(t), Some(started)) =
                (times.as_deref_mut().and_then(|t| t.get_mut(k)), started)
            {
                *t += started.elapsed();
            }
        }
        let [h, w, c] = all[all.len() - 1].shape;
        let mut features = vec![0f32; n * c];
        for (map, f) in tape.values[all.len() - 1]
            .chunks_exact(h * w * c)
            .zip(features.chunks_exact_mut(c))
        {
            average_pool(map, c, f);
        }
        Ok((features, tape))
    }

    /// The gradient of every trainable tensor, in the order of [`Step::parameters`] step by
    /// step, given the gradient `d_features` (`[n, F]`) of the features `tape` came with.
    pub fn backward(&self, tape: SuffixTape, d_features: &[f32]) -> Result<Vec<Vec<f32>>> {
        self.backward_timed(tape, d_features, None)
    }

    /// [`backward`](Self::backward), adding each step's time to `times[k]`.
    fn backward_timed(
        &self,
        tape: SuffixTape,
        d_features: &[f32],
        mut times: Option<&mut [Duration]>,
    ) -> Result<Vec<Vec<f32>>> {
        let all = self.cut.network().steps();
        let first = self.cut.first();
        let n = tape.n;
        let [h, w, c] = all[all.len() - 1].shape;
        if tape.stamp != self.stamp.0 {
            return Err(Error::InvalidArgument(
                "this tape was made by another suffix, or before its weights changed: run \
                 forward again"
                    .into(),
            ));
        }
        if tape.values.len() != all.len() || Some(d_features.len()) != n.checked_mul(c) {
            return Err(Error::InvalidArgument(format!(
                "expected the gradient of {n} feature vectors of {c} values, got {} values",
                d_features.len()
            )));
        }
        let mut grads: Vec<Option<Vec<f32>>> = vec![None; all.len()];
        let share = 1.0 / (h * w) as f32;
        let mut last = self.buffers.any(n * h * w * c);
        for (map, d) in last
            .chunks_exact_mut(h * w * c)
            .zip(d_features.chunks_exact(c))
        {
            for pixel in map.chunks_exact_mut(c) {
                pixel.iter_mut().zip(d).for_each(|(p, v)| *p = v * share);
            }
        }
        grads[all.len() - 1] = Some(last);
        let mut parameters: Vec<Vec<Vec<f32>>> = vec![Vec::new(); self.steps.len()];
        for (k, step) in self.steps.iter().enumerate().rev() {
            let started = times.is_some().then(Instant::now);
            let i = first + k;
            let mut dz = grads[i]
                .take()
                .expect("invariant: NativeSuffix::new checked that every step is read");
            activation_grad(
                &mut dz,
                &tape.values[i],
                tape.before_activation[i].as_deref(),
                self.activations[k],
            );
            parameters[k] = self.step_backward(step, &tape, &dz, &mut grads)?;
            self.buffers.give(dz);
            if let (Some(t), Some(started)) =
                (times.as_deref_mut().and_then(|t| t.get_mut(k)), started)
            {
                *t += started.elapsed();
            }
        }
        self.recycle(tape);
        Ok(parameters.into_iter().flatten().collect())
    }

    /// Each step's mean forward and backward time over `rounds` passes of `rows` (`n` of
    /// them, after one warm-up pass), with its multiply-adds and bytes (`flowers bench
    /// --fine-tune --layers`).
    pub fn step_times(&self, rows: &[f32], n: usize, rounds: usize) -> Result<Vec<SuffixStepTime>> {
        if rounds == 0 {
            return Err(Error::InvalidArgument(
                "step times need at least one round".into(),
            ));
        }
        let count = self.steps.len();
        let (mut forward, mut backward) =
            (vec![Duration::ZERO; count], vec![Duration::ZERO; count]);
        let dim = self.feature_dim();
        let d_features = vec![1.0 / (n * dim).max(1) as f32; n * dim];
        for round in 0..=rounds {
            let (f, b) = if round == 0 {
                (None, None)
            } else {
                (Some(&mut forward[..]), Some(&mut backward[..]))
            };
            let (_, tape) = self.forward_timed(rows, n, f)?;
            self.backward_timed(tape, &d_features, b)?;
        }
        let all = self.cut.network().steps();
        let size = |j: usize| all.get(j).map_or(0, |s| s.shape.iter().product::<usize>());
        Ok(self
            .steps
            .iter()
            .enumerate()
            .map(|(k, step)| {
                let inputs: usize = step.inputs.iter().map(|&j| size(j)).sum();
                let output: usize = step.shape.iter().product();
                let macs = step.multiply_adds();
                let weights = match &step.kernel {
                    Kernel::Conv(c) => c.weights.len() + c.bias.len(),
                    Kernel::Affine { scale, shift, .. } => scale.len() + shift.len(),
                    _ => 0,
                };
                let kind = step_kind(&step.kernel);
                let below_cut = step.inputs.iter().all(|&j| j < self.cut.first());
                let seconds = |d: Duration| d.as_secs_f64() / rounds as f64;
                SuffixStepTime {
                    name: step.name.clone(),
                    kind,
                    shape: step.shape,
                    forward_multiply_adds: n * macs,
                    backward_multiply_adds: n * macs * if below_cut { 1 } else { 2 },
                    // Forward: the inputs and the output per row, and the weights once;
                    // backward: the output's gradient, the inputs and their gradients, the
                    // weights and their gradients.
                    forward_bytes: 4 * (n * (inputs + output) + weights),
                    backward_bytes: 4 * (n * (output + 2 * inputs) + 2 * weights),
                    forward_seconds: seconds(forward[k]),
                    backward_seconds: seconds(backward[k]),
                }
            })
            .collect())
    }

    /// Keeps a tape's buffers for the next step.
    fn recycle(&self, tape: SuffixTape) {
        let kept = tape.before_activation.into_iter().flatten();
        for buffer in tape.values.into_iter().chain(kept) {
            self.buffers.give(buffer);
        }
    }

    /// Every trainable tensor, in the order [`backward`](Self::backward) returns their
    /// gradients.
    /// Tapes made before are refused afterwards: they hold values of the old weights.
    pub fn parameters_mut(&mut self) -> Vec<Parameter<'_>> {
        self.stamp = Stamp::fresh();
        self.steps
            .iter_mut()
            .flat_map(|step| {
                let conv = matches!(step.kernel, Kernel::Conv(_));
                step.parameters_mut()
                    .into_iter()
                    .enumerate()
                    .map(move |(t, values)| Parameter {
                        values: values.as_mut_slice(),
                        is_kernel: conv && t == 0,
                    })
            })
            .collect()
    }

    /// The cut with the trained weights copied back into its network.
    pub fn trained(&self) -> Result<Cut> {
        let mut steps = self.steps.clone();
        for (step, &activation) in steps.iter_mut().zip(&self.activations) {
            if let Kernel::Conv(conv) = &mut step.kernel {
                conv.activation = activation;
            }
        }
        self.cut.with_weights_from(&steps)
    }

    fn check_rows(&self, rows: &[f32], n: usize) -> Result<()> {
        let row_len = self.row_len();
        if row_len == 0 || Some(rows.len()) != n.checked_mul(row_len) {
            return Err(Error::InvalidArgument(format!(
                "expected {n} rows of {row_len} values (the activations entering {}), got {}",
                self.cut.block_name(),
                rows.len()
            )));
        }
        Ok(())
    }

    /// One step's kernel on the batch, before any activation applied after it.
    fn step_forward(&self, step: &Step, values: &[Vec<f32>], n: usize) -> Result<Vec<f32>> {
        let all = self.cut.network().steps();
        let input = |k: usize| values[step.inputs[k]].as_slice();
        let in_shape = |k: usize| all[step.inputs[k]].shape;
        let [ho, wo, co] = step.shape;
        // Every kernel writes each value, but padding (zeros around the input).
        let mut out = match step.kernel {
            Kernel::Pad(_) => self.buffers.zeros(n * ho * wo * co),
            _ => self.buffers.any(n * ho * wo * co),
        };
        match &step.kernel {
            Kernel::Conv(conv) if conv.is_pointwise() => {
                // The batch as one tall image: one product over all its pixels, on the
                // inference path's packed micro-kernel where the CPU has AVX2 (packing the
                // weights costs one copy of them, a fraction of a product over the batch).
                let [h, w, cin] = in_shape(0);
                let packed = (self.kernels != Kernels::Portable && has_avx2_fma())
                    .then(|| PackedWeights::new(&conv.weights, &conv.bias, cin, co, self.kernels))
                    .flatten();
                let mut pool = Pool::default();
                run_conv(
                    conv,
                    packed.as_ref(),
                    self.kernels,
                    input(0),
                    [n * h, w, cin],
                    &mut out,
                    [n * ho, wo, co],
                    None,
                    None,
                    &mut pool,
                    Threads::Rayon,
                );
            }
            Kernel::Conv(conv) => {
                let shape = in_shape(0);
                let in_len: usize = shape.iter().product();
                out.par_chunks_mut(ho * wo * co)
                    .zip(input(0).par_chunks(in_len))
                    .for_each_init(Pool::default, |pool, (out, x)| {
                        run_conv(
                            conv,
                            None,
                            self.kernels,
                            x,
                            shape,
                            out,
                            step.shape,
                            None,
                            None,
                            pool,
                            Threads::One,
                        )
                    });
            }
            Kernel::Affine { scale, shift, .. } => {
                affine(&mut out, input(0), scale, shift);
            }
            Kernel::Activation(_) => out.copy_from_slice(input(0)),
            Kernel::Add(_) => {
                out.copy_from_slice(input(0));
                for k in 1..step.inputs.len() {
                    add_into(&mut out, input(k));
                }
            }
            Kernel::Multiply => {
                let (a, b) = (input(0), input(1));
                if in_shape(0) == in_shape(1) {
                    for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
                        *o = a * b;
                    }
                } else {
                    let (big, small) = if in_shape(0)[..2] == [1, 1] {
                        (b, a)
                    } else {
                        (a, b)
                    };
                    out.par_chunks_mut(ho * wo * co)
                        .zip(big.par_chunks(ho * wo * co))
                        .zip(small.par_chunks(co))
                        .for_each(|((o, x), s)| {
                            for (o, x) in o.chunks_exact_mut(co).zip(x.chunks_exact(co)) {
                                for ((o, x), s) in o.iter_mut().zip(x).zip(s) {
                                    *o = x * s;
                                }
                            }
                        });
                }
            }
            Kernel::Concat => {
                let mut offset = 0;
                for k in 0..step.inputs.len() {
                    let c = in_shape(k)[2];
                    for (o, x) in out.chunks_exact_mut(co).zip(input(k).chunks_exact(c)) {
                        o[offset..offset + c].copy_from_slice(x);
                    }
                    offset += c;
                }
            }
            Kernel::MaxPool { size, stride, pad } | Kernel::AvgPool { size, stride, pad } => {
                let max = matches!(step.kernel, Kernel::MaxPool { .. });
                let shape = in_shape(0);
                let in_len: usize = shape.iter().product();
                out.par_chunks_mut(ho * wo * co)
                    .zip(input(0).par_chunks(in_len))
                    .for_each(|(out, x)| {
                        pool2d(x, shape, out, step.shape, *size, *stride, *pad, max)
                    });
            }
            Kernel::Pad([top, _, left, _]) => {
                let [h, w, c] = in_shape(0);
                for (out, x) in out
                    .chunks_exact_mut(ho * wo * co)
                    .zip(input(0).chunks_exact(h * w * c))
                {
                    for (y, row) in x.chunks_exact(w * c).enumerate() {
                        out[((y + top) * wo + left) * c..][..w * c].copy_from_slice(row);
                    }
                }
            }
            Kernel::Crop([top, _, left, _]) => {
                let [h, w, c] = in_shape(0);
                for (out, x) in out
                    .chunks_exact_mut(ho * wo * co)
                    .zip(input(0).chunks_exact(h * w * c))
                {
                    for (y, row) in out.chunks_exact_mut(wo * c).enumerate() {
                        row.copy_from_slice(&x[((y + top) * w + left) * c..][..wo * c]);
                    }
                }
            }
            Kernel::GlobalAvgPool => {
                let [h, w, c] = in_shape(0);
                out.par_chunks_mut(c)
                    .zip(input(0).par_chunks(h * w * c))
                    .for_each(|(out, x)| average_pool(x, c, out));
            }
            Kernel::Input => {
                return Err(Error::InvalidArgument(
                    "the input is not a step to train".into(),
                ))
            }
        }
        Ok(out)
    }

    /// One step's backward pass: `dz` is the gradient of its kernel's output (its
    /// activation already differentiated). Adds its inputs' gradients into `grads` (for the
    /// trainable ones) and returns its parameters' gradients.
    fn step_backward(
        &self,
        step: &Step,
        tape: &SuffixTape,
        dz: &[f32],
        grads: &mut [Option<Vec<f32>>],
    ) -> Result<Vec<Vec<f32>>> {
        let all = self.cut.network().steps();
        let first = self.cut.first();
        let n = tape.n;
        let [ho, wo, co] = step.shape;
        let out_len = ho * wo * co;
        let in_shape = |k: usize| all[step.inputs[k]].shape;
        let input = |k: usize| tape.values[step.inputs[k]].as_slice();
        // A zeroed buffer for input `k`'s gradient from this step; `None` below the cut.
        let fresh = |k: usize| -> Option<Vec<f32>> {
            let j = step.inputs[k];
            (j >= first).then(|| self.buffers.zeros(tape.values[j].len()))
        };
        let mut given = Vec::new();
        let parameters = match &step.kernel {
            Kernel::Conv(conv) => {
                let [h, w, cin] = in_shape(0);
                let in_len = h * w * cin;
                let x = input(0);
                let mut dx = fresh(0);
                let mut db = vec![0f32; co];
                add_column_sums(dz, &mut db);
                let rows = n * ho * wo;
                let dw = if conv.depthwise {
                    let window = Window {
                        input: [h, w, cin],
                        output: (ho, wo),
                        kernel: conv.kernel,
                        stride: conv.stride,
                        pad: (conv.pad[0], conv.pad[2]),
                    };
                    let (b, b_len) = match dx.as_deref_mut() {
                        Some(dx) => (dx, in_len),
                        None => (&mut [][..], 0),
                    };
                    per_image_sum(
                        (dz, out_len),
                        (b, b_len),
                        conv.weights.len(),
                        |i, dz, dx, dw| {
                            let dx = (b_len > 0).then_some(dx);
                            let x = &x[i * in_len..][..in_len];
                            depthwise_grad(&window, x, &conv.weights, dz, dw, dx);
                        },
                    )
                } else {
                    let k = conv.kernel.0 * conv.kernel.1 * cin;
                    let weights = View::rows(&conv.weights, k, co);
                    let dz_view = View::rows(dz, rows, co);
                    let mut dw = vec![0f32; k * co];
                    if conv.is_pointwise() {
                        product(&mut dw, View::rows(x, rows, cin).t(), dz_view);
                        if let Some(dx) = dx.as_deref_mut() {
                            product(dx, dz_view, weights.t());
                        }
                    } else {
                        let window = Window {
                            input: [h, w, cin],
                            output: (ho, wo),
                            kernel: conv.kernel,
                            stride: conv.stride,
                            pad: (conv.pad[0], conv.pad[2]),
                        };
                        let mut cols = self.buffers.any(rows * k);
                        cols.par_chunks_mut(ho * wo * k)
                            .zip(x.par_chunks(in_len))
                            .for_each(|(cols, x)| {
                                im2col(x, (h, w, cin), conv, (ho, wo), cols, None, Threads::One)
                            });
                        product(&mut dw, View::rows(&cols, rows, k).t(), dz_view);
                        if let Some(dx) = dx.as_deref_mut() {
                            // The patches' gradient, reusing the patches' buffer.
                            product(&mut cols, dz_view, weights.t());
                            dx.par_chunks_mut(in_len)
                                .zip(cols.par_chunks(ho * wo * k))
                                .for_each(|(dx, cols)| col2im(&window, cols, dx));
                        }
                        self.buffers.give(cols);
                    }
                    dw
                };
                given.push((0, dx));
                vec![dw, db]
            }
            Kernel::Affine { scale, .. } => {
                let x = input(0);
                let (mut ds, mut dt) = (vec![0f32; co], vec![0f32; co]);
                add_column_sums(dz, &mut dt);
                for (d, x) in dz.chunks_exact(co).zip(x.chunks_exact(co)) {
                    for ((g, d), x) in ds.iter_mut().zip(d).zip(x) {
                        *g += d * x;
                    }
                }
                let mut dx = fresh(0);
                if let Some(dx) = dx.as_deref_mut() {
                    for (g, d) in dx.chunks_exact_mut(co).zip(dz.chunks_exact(co)) {
                        for ((g, d), s) in g.iter_mut().zip(d).zip(scale) {
                            *g += d * s;
                        }
                    }
                }
                given.push((0, dx));
                vec![ds, dt]
            }
            Kernel::Activation(_) | Kernel::Add(_) => {
                for k in 0..step.inputs.len() {
                    let mut dx = fresh(k);
                    if let Some(dx) = dx.as_deref_mut() {
                        dx.iter_mut().zip(dz).for_each(|(g, d)| *g += d);
                    }
                    given.push((k, dx));
                }
                Vec::new()
            }
            Kernel::Multiply => {
                let (a, b) = (input(0), input(1));
                let (mut da, mut db) = (fresh(0), fresh(1));
                if in_shape(0) == in_shape(1) {
                    for (g, (d, b)) in da.iter_mut().flatten().zip(dz.iter().zip(b)) {
                        *g += d * b;
                    }
                    for (g, (d, a)) in db.iter_mut().flatten().zip(dz.iter().zip(a)) {
                        *g += d * a;
                    }
                } else {
                    // `big` [n, h, w, c] times `small` [n, 1, 1, c].
                    let small_first = in_shape(0)[..2] == [1, 1];
                    let (big, small) = if small_first { (b, a) } else { (a, b) };
                    let (d_big, d_small) = if small_first {
                        (&mut db, &mut da)
                    } else {
                        (&mut da, &mut db)
                    };
                    if let Some(g) = d_big.as_deref_mut() {
                        g.par_chunks_mut(out_len)
                            .zip(dz.par_chunks(out_len))
                            .zip(small.par_chunks(co))
                            .for_each(|((g, d), s)| {
                                for (g, d) in g.chunks_exact_mut(co).zip(d.chunks_exact(co)) {
                                    for ((g, d), s) in g.iter_mut().zip(d).zip(s) {
                                        *g += d * s;
                                    }
                                }
                            });
                    }
                    if let Some(g) = d_small.as_deref_mut() {
                        g.par_chunks_mut(co)
                            .zip(dz.par_chunks(out_len))
                            .zip(big.par_chunks(out_len))
                            .for_each(|((g, d), x)| {
                                for (d, x) in d.chunks_exact(co).zip(x.chunks_exact(co)) {
                                    for ((g, d), x) in g.iter_mut().zip(d).zip(x) {
                                        *g += d * x;
                                    }
                                }
                            });
                    }
                }
                given.push((0, da));
                given.push((1, db));
                Vec::new()
            }
            Kernel::Concat => {
                let mut offset = 0;
                for k in 0..step.inputs.len() {
                    let c = in_shape(k)[2];
                    let mut dx = fresh(k);
                    if let Some(dx) = dx.as_deref_mut() {
                        for (g, d) in dx.chunks_exact_mut(c).zip(dz.chunks_exact(co)) {
                            for (g, d) in g.iter_mut().zip(&d[offset..offset + c]) {
                                *g += d;
                            }
                        }
                    }
                    given.push((k, dx));
                    offset += c;
                }
                Vec::new()
            }
            Kernel::MaxPool { size, stride, pad } | Kernel::AvgPool { size, stride, pad } => {
                let max = matches!(step.kernel, Kernel::MaxPool { .. });
                let shape = in_shape(0);
                let in_len: usize = shape.iter().product();
                let window = Window {
                    input: shape,
                    output: (ho, wo),
                    kernel: *size,
                    stride: *stride,
                    pad: (pad[0], pad[2]),
                };
                let x = input(0);
                let mut dx = fresh(0);
                if let Some(dx) = dx.as_deref_mut() {
                    dx.par_chunks_mut(in_len)
                        .zip(x.par_chunks(in_len))
                        .zip(dz.par_chunks(out_len))
                        .for_each(|((dx, x), dz)| pool_grad(&window, x, dz, max, dx));
                }
                given.push((0, dx));
                Vec::new()
            }
            Kernel::Pad([top, _, left, _]) | Kernel::Crop([top, _, left, _]) => {
                let crop = matches!(step.kernel, Kernel::Crop(_));
                let [h, w, c] = in_shape(0);
                let mut dx = fresh(0);
                if let Some(dx) = dx.as_deref_mut() {
                    for (g, d) in dx.chunks_exact_mut(h * w * c).zip(dz.chunks_exact(out_len)) {
                        if crop {
                            for (y, d) in d.chunks_exact(wo * c).enumerate() {
                                let g = &mut g[((y + top) * w + left) * c..][..wo * c];
                                g.iter_mut().zip(d).for_each(|(g, d)| *g += d);
                            }
                        } else {
                            for (y, g) in g.chunks_exact_mut(w * c).enumerate() {
                                let d = &d[((y + top) * wo + left) * c..][..w * c];
                                g.iter_mut().zip(d).for_each(|(g, d)| *g += d);
                            }
                        }
                    }
                }
                given.push((0, dx));
                Vec::new()
            }
            Kernel::GlobalAvgPool => {
                let [h, w, c] = in_shape(0);
                let share = 1.0 / (h * w) as f32;
                let mut dx = fresh(0);
                if let Some(dx) = dx.as_deref_mut() {
                    dx.par_chunks_mut(h * w * c)
                        .zip(dz.par_chunks(c))
                        .for_each(|(g, d)| {
                            for g in g.chunks_exact_mut(c) {
                                g.iter_mut().zip(d).for_each(|(g, d)| *g += d * share);
                            }
                        });
                }
                given.push((0, dx));
                Vec::new()
            }
            Kernel::Input => {
                return Err(Error::InvalidArgument(
                    "the input is not a step to train".into(),
                ))
            }
        };
        // Added to what later readers sent back: a value read twice (a block's input, read
        // by its expansion and its residual sum) gets both.
        for (k, dx) in given {
            let Some(dx) = dx else { continue };
            match &mut grads[step.inputs[k]] {
                Some(sum) => {
                    add_into(sum, &dx);
                    self.buffers.give(dx);
                }
                empty => *empty = Some(dx),
            }
        }
        Ok(parameters)
    }
}

#[cfg(test)]
mod tests {
    use dfdx::tensor::{Cpu, Tensor, TensorFrom};
    use dfdx::tensor_ops::{Backward, SumTo, TryMul};

    use super::super::testing::{conv, step, values};
    use super::*;
    use crate::backend::dfdx::{StepParams, TrainableSuffix};
    use crate::backend::Network;
    use crate::models::Model;

    /// A tape is used with the suffix and weights that made it, and a batch is bounded
    /// before anything is allocated: errors, not panics or silently wrong gradients.
    /// One entry per step of the suffix, each timed both ways, the convolutions' work
    /// adding up to the blocks' multiply-adds for the batch.
    #[test]
    fn step_times_cover_every_step() {
        let network = Network::random(Model::parse("mobilenet_v2_0.35_96").expect("a model"), 0)
            .expect("a network");
        let cut = network.cut(2).expect("a cut");
        let suffix = NativeSuffix::new(&cut).expect("a suffix");
        let rows = vec![0.5; 3 * cut.row_len()];
        let times = suffix.step_times(&rows, 3, 2).expect("step times");
        assert_eq!(times.len(), network.steps().len() - cut.first());
        assert!(times
            .iter()
            .all(|t| t.forward_seconds > 0.0 && t.backward_seconds > 0.0));
        let macs: usize = network.steps()[cut.first()..]
            .iter()
            .map(|s| match &s.kernel {
                Kernel::Conv(c) => {
                    s.shape.iter().product::<usize>()
                        * c.kernel.0
                        * c.kernel.1
                        * if c.depthwise { 1 } else { c.cin }
                }
                _ => 0,
            })
            .sum();
        assert_eq!(
            times.iter().map(|t| t.forward_multiply_adds).sum::<usize>(),
            3 * macs
        );
        // The first convolution reads the cut: only its weights' gradient is computed.
        assert_eq!(
            times[0].backward_multiply_adds,
            times[0].forward_multiply_adds
        );
        assert!(times[1..]
            .iter()
            .all(|t| t.backward_multiply_adds == 2 * t.forward_multiply_adds));
        assert!(suffix.step_times(&rows, 3, 0).is_err());
    }

    #[test]
    fn tapes_from_elsewhere_and_huge_batches_are_refused() {
        let network = Network::random(Model::parse("mobilenet_v2_0.35_96").expect("a model"), 0)
            .expect("a network");
        let cut = network.cut(1).expect("a cut");
        let mut suffix = NativeSuffix::new(&cut).expect("a suffix");
        let other = suffix.clone();
        let rows = vec![0.5; 2 * cut.row_len()];
        let gradient = vec![1.0; 2 * suffix.feature_dim()];
        let (_, tape) = other.forward(&rows, 2).expect("forward");
        assert!(
            suffix.backward(tape, &gradient).is_err(),
            "another suffix's tape"
        );
        let (_, tape) = suffix.forward(&rows, 2).expect("forward");
        suffix.parameters_mut()[0].values[0] += 1.0;
        assert!(
            suffix.backward(tape, &gradient).is_err(),
            "a tape of the old weights"
        );
        let (_, tape) = suffix.forward(&rows, 2).expect("forward");
        assert!(
            suffix.backward(tape, &gradient[1..]).is_err(),
            "a short gradient"
        );
        let (_, tape) = suffix.forward(&rows, 2).expect("forward");
        assert_eq!(suffix.backward(tape, &gradient).expect("backward").len(), 8);
        let huge = MAX_TAPE_VALUES / cut.row_len() + 1;
        let error = suffix
            .forward(&[], huge)
            .expect_err("a batch past the bound");
        assert!(
            error.to_string().contains("use a batch of at most"),
            "{error}"
        );
        assert!(
            suffix.forward(&rows, 3).is_err(),
            "rows of another batch size"
        );
    }

    /// Every kind of step no family's last blocks hold — padding, strided and depthwise
    /// windows, max pooling, cropping, a padded average pool, products and sums of a value
    /// with what was computed from it — above a cut, against dfdx's autodiff.
    #[test]
    fn every_kind_of_step_has_the_gradient_dfdx_computes() {
        let pool = |size, stride, pad| Kernel::AvgPool { size, stride, pad };
        let steps = vec![
            step("input", Kernel::Input, vec![], [96, 96, 3]),
            step("shrink", pool((8, 8), 8, [0; 4]), vec![0], [12, 12, 3]),
            step(
                "frozen",
                conv((1, 1), 1, [0; 4], 3, 6, false, Activation::Relu, 1),
                vec![1],
                [12, 12, 6],
            ),
            step(
                "first",
                conv((1, 1), 1, [0; 4], 6, 6, false, Activation::Linear, 2),
                vec![2],
                [12, 12, 6],
            ),
            step("pad", Kernel::Pad([1, 0, 1, 0]), vec![3], [13, 13, 6]),
            step(
                "strided",
                conv((3, 3), 2, [0; 4], 6, 8, false, Activation::Swish, 3),
                vec![4],
                [6, 6, 8],
            ),
            step(
                "max",
                Kernel::MaxPool {
                    size: (3, 3),
                    stride: 1,
                    pad: [1; 4],
                },
                vec![5],
                [6, 6, 8],
            ),
            step("crop", Kernel::Crop([1, 0, 1, 0]), vec![6], [5, 5, 8]),
            step(
                "depthwise",
                conv((3, 3), 2, [1; 4], 8, 8, true, Activation::HardSwish, 5),
                vec![7],
                [3, 3, 8],
            ),
            step(
                "gate",
                Kernel::Activation(Activation::Sigmoid),
                vec![8],
                [3, 3, 8],
            ),
            step("gated", Kernel::Multiply, vec![8, 9], [3, 3, 8]),
            step(
                "affine",
                Kernel::Affine {
                    scale: values(8, 7),
                    shift: values(8, 8),
                    activation: Activation::HardSigmoid,
                },
                vec![10],
                [3, 3, 8],
            ),
            step(
                "average",
                pool((2, 2), 1, [0, 1, 0, 1]),
                vec![11],
                [3, 3, 8],
            ),
            step("concat", Kernel::Concat, vec![12, 10], [3, 3, 16]),
            step("squeeze", Kernel::GlobalAvgPool, vec![13], [1, 1, 16]),
            step("excite", Kernel::Multiply, vec![13, 14], [3, 3, 16]),
            step(
                "head",
                conv((1, 1), 1, [0; 4], 16, 5, false, Activation::Sigmoid, 9),
                vec![15],
                [3, 3, 5],
            ),
            step(
                "clamp",
                Kernel::Activation(Activation::Relu6),
                vec![16],
                [3, 3, 5],
            ),
            step(
                "sum",
                Kernel::Add(Activation::Relu),
                vec![16, 17],
                [3, 3, 5],
            ),
        ];
        let model = Model::parse("mobilenet_v2_0.35_96").expect("a model");
        let network = Network::new(model, steps, "synthetic".into(), None).expect("valid steps");
        let cut = network.cut_at(1, 3);
        assert_eq!(cut.inputs(), &[2]);
        let n = 3;
        let rows: Vec<f32> = values(n * cut.row_len(), 11)
            .iter()
            .map(|v| 4.0 * v)
            .collect();
        let projection = values(n * 5, 13);
        // Steps `first` and `pad` are trainable, so every window's input gradient is used.

        let mut reference = TrainableSuffix::new(&cut, Cpu::default()).expect("dfdx suffix");
        let traced = reference
            .features_traced(&rows, n)
            .expect("traced features");
        let expected_features = traced.as_vec();
        let p: Tensor<(usize, usize), f32, Cpu> =
            Cpu::default().tensor((projection.clone(), (n, 5)));
        let grads = traced
            .try_mul(p)
            .and_then(|t| t.try_sum::<(), _>())
            .expect("loss")
            .backward();
        let expected: Vec<Vec<f32>> = reference
            .params_mut()
            .iter()
            .flat_map(|params| match params {
                StepParams::Conv { weights, bias } => {
                    vec![grads.get(weights).as_vec(), grads.get(bias).as_vec()]
                }
                StepParams::Affine { scale, shift } => {
                    vec![grads.get(scale).as_vec(), grads.get(shift).as_vec()]
                }
                StepParams::None => Vec::new(),
            })
            .collect();

        let suffix = NativeSuffix::new(&cut).expect("native suffix");
        let (features, tape) = suffix.forward(&rows, n).expect("forward");
        for (a, e) in features.iter().zip(&expected_features) {
            assert!((a - e).abs() <= 1e-5, "features: {a} against {e}");
        }
        let actual = suffix.backward(tape, &projection).expect("backward");
        assert_eq!(actual.len(), expected.len());
        for (t, (a, e)) in actual.iter().zip(&expected).enumerate() {
            assert!(
                e.iter().any(|v| v.abs() > 1e-4),
                "tensor {t}: a vanishing gradient"
            );
            for (i, (a, e)) in a.iter().zip(e).enumerate() {
                assert!(
                    (a - e).abs() <= 1e-4 + 1e-3 * e.abs(),
                    "tensor {t}[{i}]: {a} against {e}"
                );
            }
        }
    }
}
