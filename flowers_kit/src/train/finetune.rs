//! Fine-tuning the top of the backbone: the last inverted-residual blocks of a MobileNet V2
//! and its last 1×1 convolution ([`Top`]), trained together with the head.
//!
//! The frozen part of the network runs once per photo (and view) on the native backend; its
//! output — the activations entering the top, `7×7×160` at 1.0/224 — is cached like features
//! and becomes the training rows. Each step then runs only the small top, on dfdx tensors
//! with run-time sizes and autodiff, on the CPU or CUDA. Batch norm stays folded: what
//! trains is each convolution's kernel and bias. Convolutions are the same gather + matmul
//! as the dfdx backend's (dfdx's own `conv2d` needs its nightly feature): a 1×1 convolution
//! is a matrix product, a 3×3 depthwise one gathers the nine taps of every pixel, multiplies
//! them by the `[9, c]` kernel and sums.

use dfdx::prelude::{Axis, HasShape, Merge, NoneTape, Tape, Tensor, TensorFrom, WithEmptyTape};
use dfdx::tensor::Trace;
use dfdx::tensor_ops::*;
use serde::{Deserialize, Serialize};

use crate::backend::dfdx::{activate, add_row, gather_taps, Window};
use crate::backend::{Kernel, Network};
use crate::device::{dfdx_error as backend, DfdxDevice};
use crate::error::{Error, Result};
use crate::models::graph::{Activation, Shape};

/// The most inverted-residual blocks that can be fine-tuned: MobileNet V2's last three are
/// the ones after its last stride-2 block, all at the final 7×7 (at 224 px) resolution.
pub const MAX_FINE_TUNE_BLOCKS: usize = 3;

/// Photos per pass when a top runs without training: bounds the gathered depthwise taps
/// (`photos · h·w · 9 · c` values, 17 MB per 32 photos at 1.0/224).
pub const EVAL_CHUNK: usize = 32;

/// Largest `h·w·c` of any value in a top (MobileNet V2 1.4 at 224 px: 7·7·1792 ≈ 88 K).
pub const MAX_TOP_VALUES: usize = 1 << 22;

/// Most layers in a top (three blocks and the last convolution are 13).
pub const MAX_TOP_LAYERS: usize = 64;

/// Which part of the backbone trains, and how fast.
///
/// ```
/// use flowers_kit::train::FineTune;
/// assert!(FineTune { blocks: 2, learning_rate: 1e-3 }.validate().is_ok());
/// assert!(FineTune { blocks: 9, learning_rate: 1e-3 }.validate().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FineTune {
    /// Inverted-residual blocks counted from the top (1 to [`MAX_FINE_TUNE_BLOCKS`]); the
    /// last 1×1 convolution always trains with them.
    pub blocks: usize,
    /// The backbone's learning rate (the head keeps `TrainConfig::learning_rate`): smaller,
    /// so the pretrained filters move a little rather than being overwritten.
    pub learning_rate: f32,
}

impl FineTune {
    /// Errors unless `blocks` is 1 to [`MAX_FINE_TUNE_BLOCKS`] and the learning rate a
    /// positive number.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_FINE_TUNE_BLOCKS).contains(&self.blocks) {
            return Err(Error::InvalidArgument(format!(
                "fine-tuning trains 1 to {MAX_FINE_TUNE_BLOCKS} blocks, got {}",
                self.blocks
            )));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "the fine-tuning learning rate must be a positive number, got {}",
                self.learning_rate
            )));
        }
        Ok(())
    }
}

/// How the learning rates change over training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Schedule {
    /// The same rate at every step (the tutorial).
    #[default]
    Constant,
    /// From the full rate down to zero along half a cosine.
    Cosine,
}

impl Schedule {
    /// The factor on the learning rate at `step` (from 0) of `steps`.
    ///
    /// ```
    /// use flowers_kit::train::Schedule;
    /// assert_eq!(Schedule::Cosine.factor(0, 100), 1.0);
    /// assert!((Schedule::Cosine.factor(50, 100) - 0.5).abs() < 1e-6);
    /// assert_eq!(Schedule::Constant.factor(99, 100), 1.0);
    /// ```
    pub fn factor(self, step: usize, steps: usize) -> f32 {
        match self {
            Schedule::Constant => 1.0,
            Schedule::Cosine => {
                let progress = step as f64 / steps.max(1) as f64;
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())) as f32
            }
        }
    }
}

/// What one layer of the top computes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TopOp {
    /// A 1×1 convolution: weights `[cin, cout]`.
    Pointwise(Activation),
    /// A 3×3 depthwise convolution, stride 1, "same" padding: weights `[9, c]`.
    Depthwise(Activation),
    /// The sum of two earlier values.
    Add,
}

/// One layer of the top, with its (folded) weights.
#[derive(Debug, Clone, PartialEq)]
pub struct TopLayer {
    /// The Keras layer it came from.
    pub name: String,
    /// What it computes.
    pub op: TopOp,
    /// The values it reads: 0 is the top's input, `j + 1` layer `j`'s output.
    pub inputs: Vec<usize>,
    /// Its output `[h, w, c]`.
    pub shape: Shape,
    /// Kernel, row-major (empty for an add).
    pub weights: Vec<f32>,
    /// Bias (empty for an add).
    pub bias: Vec<f32>,
}

/// The trainable top of a backbone: the layers after `cut`, whose output, averaged over
/// pixels, is the feature vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Top {
    /// The Keras layer whose output enters the top.
    pub cut: String,
    /// That output's `[h, w, c]`.
    pub input_shape: Shape,
    /// In execution order.
    pub layers: Vec<TopLayer>,
}

impl Top {
    /// The last `blocks` inverted-residual blocks of a MobileNet V2 `network`, and
    /// everything after them, with its weights. Another architecture, or a block this
    /// module cannot train, is an error that says so.
    pub fn of(network: &Network, blocks: usize) -> Result<(Top, usize)> {
        FineTune {
            blocks,
            learning_rate: 1.0,
        }
        .validate()?;
        let steps = network.steps();
        let model = network.model().name();
        let first = format!("block_{}_expand_relu", 17 - blocks);
        let unsupported = |why: String| {
            Error::InvalidArgument(format!(
                "fine-tuning supports MobileNet V2 only: {model} {why}"
            ))
        };
        let start = steps
            .iter()
            .position(|s| s.name == first)
            .ok_or_else(|| unsupported(format!("has no layer {first}")))?;
        let cut = steps
            .get(start)
            .and_then(|s| s.inputs.first().copied())
            .ok_or_else(|| unsupported(format!("{first} reads nothing")))?;
        let cut_step = steps
            .get(cut)
            .ok_or_else(|| unsupported(format!("{first} reads a missing step")))?;
        let mut layers = Vec::new();
        for (i, step) in steps.iter().enumerate().skip(cut + 1) {
            let inputs = step
                .inputs
                .iter()
                .map(|&j| j.checked_sub(cut))
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| unsupported(format!("{} reads below the cut", step.name)))?;
            let trainable = |a: Activation| {
                matches!(a, Activation::Linear | Activation::Relu | Activation::Relu6)
            };
            let (op, weights, bias) = match &step.kernel {
                Kernel::Conv(c) if c.is_pointwise() && trainable(c.activation) => (
                    TopOp::Pointwise(c.activation),
                    c.weights.clone(),
                    c.bias.clone(),
                ),
                Kernel::Conv(c)
                    if c.depthwise
                        && c.kernel == (3, 3)
                        && c.stride == 1
                        && c.pad == [1; 4]
                        && trainable(c.activation) =>
                {
                    (
                        TopOp::Depthwise(c.activation),
                        c.weights.clone(),
                        c.bias.clone(),
                    )
                }
                Kernel::Add(Activation::Linear) if inputs.len() == 2 => {
                    (TopOp::Add, Vec::new(), Vec::new())
                }
                _ => {
                    return Err(unsupported(format!(
                        "layer {} (step {i}) is not a 1×1 or stride-1 3×3 depthwise \
                         convolution nor an add",
                        step.name
                    )))
                }
            };
            layers.push(TopLayer {
                name: step.name.clone(),
                op,
                inputs,
                shape: step.shape,
                weights,
                bias,
            });
        }
        if layers.is_empty() {
            return Err(unsupported("has nothing after the cut".into()));
        }
        Ok((
            Top {
                cut: cut_step.name.clone(),
                input_shape: cut_step.shape,
                layers,
            },
            cut,
        ))
    }

    /// Values per photo entering the top.
    pub fn input_len(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// Length of the feature vector it produces.
    pub fn feature_dim(&self) -> usize {
        self.layers.last().map_or(0, |l| l.shape[2])
    }

    /// Trainable numbers: every kernel and bias.
    pub fn parameter_count(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.weights.len() + l.bias.len())
            .sum()
    }

    /// Errors unless the layers fit together: every input an earlier value, each
    /// convolution's kernel and bias the size its input and output channels say, shapes
    /// that follow, and sizes within [`MAX_TOP_VALUES`]. A top read from a file passes
    /// this before anything runs it (dfdx would panic on mismatched shapes).
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::InvalidArgument(format!("fine-tuned top: {why}")));
        let size = |s: Shape| s.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let mut shapes = vec![self.input_shape];
        if size(self.input_shape).is_none_or(|v| v == 0 || v > MAX_TOP_VALUES) {
            return bad(format!("input shape {:?}", self.input_shape));
        }
        if self.layers.is_empty() || self.layers.len() > MAX_TOP_LAYERS {
            return bad(format!("{} layers", self.layers.len()));
        }
        for layer in &self.layers {
            let name = &layer.name;
            let input = |k: usize| layer.inputs.get(k).and_then(|&j| shapes.get(j)).copied();
            let Some(first) = input(0) else {
                return bad(format!("{name} reads a value that is not before it"));
            };
            if size(layer.shape).is_none_or(|v| v == 0 || v > MAX_TOP_VALUES) {
                return bad(format!("{name} has shape {:?}", layer.shape));
            }
            let [h, w, c] = layer.shape;
            let (kernel, spatial_ok) = match layer.op {
                TopOp::Pointwise(_) => (first[2].checked_mul(c), first[..2] == [h, w]),
                TopOp::Depthwise(_) => (Some(9 * c), first == layer.shape),
                TopOp::Add => {
                    let ok =
                        layer.inputs.len() == 2 && input(1) == Some(first) && first == layer.shape;
                    if !ok || !layer.weights.is_empty() || !layer.bias.is_empty() {
                        return bad(format!("{name} adds values of other shapes"));
                    }
                    shapes.push(layer.shape);
                    continue;
                }
            };
            if layer.inputs.len() != 1
                || !spatial_ok
                || Some(layer.weights.len()) != kernel
                || layer.bias.len() != c
                || !matches!(
                    layer.op,
                    TopOp::Pointwise(Activation::Linear | Activation::Relu | Activation::Relu6)
                        | TopOp::Depthwise(
                            Activation::Linear | Activation::Relu | Activation::Relu6
                        )
                )
            {
                return bad(format!(
                    "{name}: {} weights and {} biases do not fit {first:?} → {:?}",
                    layer.weights.len(),
                    layer.bias.len(),
                    layer.shape
                ));
            }
            shapes.push(layer.shape);
        }
        Ok(())
    }

    /// Features `[n, F]` of `n` photos' input activations (`[n, h, w, c]`, flattened), on
    /// the CPU with dfdx, [`EVAL_CHUNK`] photos at a time.
    pub fn features(&self, inputs: &[f32], n: usize) -> Result<Vec<f32>> {
        self.validate()?;
        let dev = dfdx::tensor::Cpu::default();
        let params = TopParams::upload(self, &dev)?;
        let per_photo = self.input_len();
        if Some(inputs.len()) != n.checked_mul(per_photo) {
            return Err(Error::InvalidArgument(format!(
                "expected {n} activations of {per_photo} values (the input of {}), got {}",
                self.cut,
                inputs.len()
            )));
        }
        let mut out = Vec::with_capacity(n * self.feature_dim());
        for chunk in inputs.chunks(EVAL_CHUNK * per_photo) {
            let m = chunk.len() / per_photo;
            let x = self.upload_inputs(&dev, chunk, m)?;
            out.extend(top_forward(self, x, m, params.untraced())?.as_vec());
        }
        Ok(out)
    }

    /// `[n·h·w, c]` on the device, after checking the length.
    pub(crate) fn upload_inputs<D: DfdxDevice>(
        &self,
        dev: &D,
        inputs: &[f32],
        n: usize,
    ) -> Result<Matrix<D>> {
        let [h, w, c] = self.input_shape;
        if Some(inputs.len()) != n.checked_mul(h * w * c) {
            return Err(Error::InvalidArgument(format!(
                "expected {n} activations of {h}×{w}×{c} values (the input of {}), got {}",
                self.cut,
                inputs.len()
            )));
        }
        Ok(dev.tensor((inputs.to_vec(), (n * h * w, c))))
    }
}

pub(crate) type Matrix<D, T = NoneTape> = Tensor<(usize, usize), f32, D, T>;
pub(crate) type Vector<D, T = NoneTape> = Tensor<(usize,), f32, D, T>;
/// Each layer's kernel and bias (`None` for an add), on tape `T`.
pub(crate) type LayerParams<D, T = NoneTape> = Vec<Option<(Matrix<D, T>, Vector<D, T>)>>;

/// A top's parameters on a device: kernel `[k, cout]` and bias per convolution.
pub(crate) struct TopParams<D: DfdxDevice> {
    pub layers: LayerParams<D>,
}

impl<D: DfdxDevice> TopParams<D> {
    pub fn upload(top: &Top, dev: &D) -> Result<Self> {
        let layers = top
            .layers
            .iter()
            .map(|layer| {
                let c = layer.shape[2];
                match layer.op {
                    TopOp::Add => Ok(None),
                    TopOp::Pointwise(_) | TopOp::Depthwise(_) => {
                        if c == 0 || layer.weights.len() % c != 0 || layer.bias.len() != c {
                            return Err(Error::InvalidArgument(format!(
                                "{}: {} weights and {} biases do not fit {c} channels",
                                layer.name,
                                layer.weights.len(),
                                layer.bias.len()
                            )));
                        }
                        let k = layer.weights.len() / c;
                        Ok(Some((
                            dev.tensor((layer.weights.clone(), (k, c))),
                            dev.tensor((layer.bias.clone(), (c,))),
                        )))
                    }
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(TopParams { layers })
    }

    /// The parameters without a tape (evaluation).
    pub fn untraced(&self) -> LayerParams<D> {
        self.layers.clone()
    }

    /// The parameters, each starting a tape (training).
    pub fn traced(&self) -> LayerParams<D, TracedTape<D>> {
        self.layers
            .iter()
            .map(|p| p.as_ref().map(|(w, b)| (w.leaky_trace(), b.leaky_trace())))
            .collect()
    }

    /// Copies the parameters back into `top`.
    pub fn download(&self, top: &mut Top) {
        for (layer, params) in top.layers.iter_mut().zip(&self.layers) {
            if let Some((w, b)) = params {
                layer.weights = w.as_vec();
                layer.bias = b.as_vec();
            }
        }
    }
}

pub(crate) type TracedTape<D> = dfdx::prelude::OwnedTape<f32, D>;

/// Features `[n, F]` of the top on `x` (`[n·h·w, c]`), every tensor carrying tape `T`.
///
/// A traced value read by two layers (a block's input, read by its expansion and its
/// residual add) gives its first readers a copy with an empty tape and its last reader
/// the original, so that every recorded operation reaches the loss exactly once.
pub(crate) fn top_forward<D: DfdxDevice, T>(
    top: &Top,
    x: Matrix<D, T>,
    n: usize,
    params: LayerParams<D, T>,
) -> Result<Matrix<D, T>>
where
    T: Tape<f32, D> + Merge<T> + Merge<NoneTape> + Default,
{
    let mut readers = vec![0usize; top.layers.len() + 1];
    for layer in &top.layers {
        for &j in &layer.inputs {
            if let Some(r) = readers.get_mut(j) {
                *r += 1;
            }
        }
    }
    let mut values: Vec<Option<Matrix<D, T>>> = Vec::with_capacity(readers.len());
    values.push(Some(x));
    let mut shapes = vec![top.input_shape];
    for (layer, params) in top.layers.iter().zip(params) {
        let mut take = |j: usize| -> Result<Matrix<D, T>> {
            let missing = || Error::Backend(format!("{} reads a missing value", layer.name));
            let left = readers.get_mut(j).ok_or_else(missing)?;
            *left = left.saturating_sub(1);
            let slot = values.get_mut(j).ok_or_else(missing)?;
            if *left == 0 {
                slot.take().ok_or_else(missing)
            } else {
                slot.as_ref()
                    .map(|v| v.with_empty_tape())
                    .ok_or_else(missing)
            }
        };
        let out = match (layer.op, params) {
            (TopOp::Add, _) => {
                let a = take(*layer.inputs.first().unwrap_or(&0))?;
                let b = take(*layer.inputs.get(1).unwrap_or(&0))?;
                a.try_add(b).map_err(backend)?
            }
            (TopOp::Pointwise(activation), Some((w, b))) => {
                let x = take(*layer.inputs.first().unwrap_or(&0))?;
                let y = x.try_matmul(w).map_err(backend)?;
                activate(add_row(y, b)?, activation)?
            }
            (TopOp::Depthwise(activation), Some((w, b))) => {
                let j = *layer.inputs.first().unwrap_or(&0);
                let shape = *shapes.get(j).unwrap_or(&[0; 3]);
                let window = Window::new(n, shape, (3, 3), 1, [1; 4]);
                let taps = gather_taps(take(j)?, &window, 0.0)?;
                let tap_shape = *taps.shape();
                let kernel = w
                    .try_broadcast_like::<_, Axis<0>>(&tap_shape)
                    .map_err(backend)?;
                let y = taps
                    .try_mul(kernel)
                    .and_then(|t| t.try_sum::<(usize, usize), Axis<1>>())
                    .map_err(backend)?;
                activate(add_row(y, b)?, activation)?
            }
            _ => {
                return Err(Error::Backend(format!(
                    "{} has no weights on the device",
                    layer.name
                )))
            }
        };
        values.push(Some(out));
        shapes.push(layer.shape);
    }
    let [h, w, c] = shapes.last().copied().unwrap_or([0; 3]);
    values
        .pop()
        .flatten()
        .ok_or_else(|| Error::Backend("an empty top".into()))?
        .try_reshape_like(&(n, h * w, c))
        .and_then(|t| t.try_mean::<(usize, usize), Axis<1>>())
        .map_err(backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::native::NativeNetwork;
    use crate::models::Model;

    /// The top on dfdx, fed the native backend's activations at the cut, gives the native
    /// backend's features of the whole network.
    #[test]
    fn top_continues_the_native_network() {
        let model = Model::parse("mobilenet_v2_0.35_96").unwrap();
        let network = Network::random(model, 5).unwrap();
        let full = NativeNetwork::new(&network).unwrap();
        let r = model.resolution();
        let n = 2;
        let pixels: Vec<f32> = (0..n * r * r * 3)
            .map(|i| ((i * 37) % 255) as f32 / 255.0)
            .collect();
        let want = full.forward(&pixels, n).unwrap();
        for blocks in 1..=MAX_FINE_TUNE_BLOCKS {
            let (top, cut) = Top::of(&network, blocks).unwrap();
            let below = NativeNetwork::new(&network.truncated(cut).unwrap())
                .unwrap()
                .output_maps();
            let maps = below.forward(&pixels, n).unwrap();
            assert_eq!(maps.len(), n * top.input_len());
            let got = top.features(&maps, n).unwrap();
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
            assert!(worst <= 1e-4 * scale, "{blocks} blocks: {worst}");
            assert_eq!(top.feature_dim(), network.feature_dim());
        }
    }

    #[test]
    fn other_architectures_and_bad_settings_are_errors() {
        let resnet = Network::random(Model::parse("resnet50_v2").unwrap(), 1).unwrap();
        let err = Top::of(&resnet, 1).unwrap_err().to_string();
        assert!(err.contains("MobileNet V2 only"), "{err}");
        let mobilenet = Network::random(Model::parse("mobilenet_v2_0.35_96").unwrap(), 1).unwrap();
        assert!(Top::of(&mobilenet, 0).is_err());
        assert!(Top::of(&mobilenet, 4).is_err());
        let (top, _) = Top::of(&mobilenet, 1).unwrap();
        assert!(top.features(&[0.0; 5], 1).is_err());
    }

    /// Autodiff gradients of a scalar of the top's features against finite differences,
    /// for a kernel entry of every convolution and a bias.
    #[test]
    fn gradients_match_finite_differences() {
        let model = Model::parse("mobilenet_v2_0.35_96").unwrap();
        let network = Network::random(model, 9).unwrap();
        let (mut top, _) = Top::of(&network, 2).unwrap();
        // Spread the biases: with the random network's near-zero ones, whole channels sit on
        // ReLU6's kink at 0, where a finite difference halves the (one-sided) derivative.
        for (l, layer) in top.layers.iter_mut().enumerate() {
            for (i, b) in layer.bias.iter_mut().enumerate() {
                *b += ((i * 13 + l * 7) % 19) as f32 / 9.5 - 1.0;
            }
        }
        let n = 2;
        let inputs: Vec<f32> = (0..n * top.input_len())
            .map(|i| ((i * 7919) % 97) as f32 / 97.0)
            .collect();
        let dev = dfdx::tensor::Cpu::default();
        // A fixed projection of the features, so the scalar depends on every channel.
        let dim = top.feature_dim();
        let projection: Vec<f32> = (0..n * dim)
            .map(|i| ((i * 31) % 17) as f32 / 17.0 - 0.5)
            .collect();
        let scalar = |top: &Top| -> f64 {
            let f = top.features(&inputs, n).unwrap();
            f.iter()
                .zip(&projection)
                .map(|(a, b)| f64::from(a * b))
                .sum()
        };
        let params = TopParams::upload(&top, &dev).unwrap();
        let x = top.upload_inputs(&dev, &inputs, n).unwrap();
        let features = top_forward(&top, x.leaky_trace(), n, params.traced()).unwrap();
        let p: Matrix<_> = dev.tensor((projection.clone(), (n, dim)));
        let loss = features.try_mul(p).unwrap().try_sum::<(), _>().unwrap();
        let grads = loss.backward();
        for (l, layer) in top.layers.iter().enumerate() {
            let Some((w, b)) = &params.layers[l] else {
                continue;
            };
            let gw = grads.get(w).as_vec();
            let gb = grads.get(b).as_vec();
            // The entry with the largest gradient: a small one drowns in f32 rounding.
            let largest = |g: &[f32]| {
                (0..g.len())
                    .max_by(|&i, &j| g[i].abs().total_cmp(&g[j].abs()))
                    .unwrap()
            };
            let (iw, ib) = (largest(&gw), largest(&gb));
            for (which, index, analytic) in [("w", iw, gw[iw]), ("b", ib, gb[ib])] {
                let h = 1e-3f32;
                let mut plus = top.clone();
                let mut minus = top.clone();
                let (pv, mv) = if which == "w" {
                    (&mut plus.layers[l].weights, &mut minus.layers[l].weights)
                } else {
                    (&mut plus.layers[l].bias, &mut minus.layers[l].bias)
                };
                pv[index] += h;
                mv[index] -= h;
                let numeric = (scalar(&plus) - scalar(&minus)) / (2.0 * f64::from(h));
                let tolerance = 5e-2 * numeric.abs().max(1e-2);
                assert!(
                    (f64::from(analytic) - numeric).abs() <= tolerance,
                    "{} {which}[{index}]: autodiff {analytic}, finite differences {numeric}",
                    layer.name
                );
            }
        }
    }
}
