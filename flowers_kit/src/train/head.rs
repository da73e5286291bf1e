//! Classifier heads on top of the features: the tutorial's linear layer, or an MLP.
//!
//! Sizes are run-time values, so changing the hidden layers in a notebook cell never makes
//! evcxr recompile generic network code. Weights are `[inputs, outputs]`, as in Keras'
//! Dense, and a layer computes `x·W + b` on rows of features.

use dfdx::prelude::{Axis, HasShape, Merge, NoneTape, Tape};
use dfdx::tensor::{Cpu, Tensor, TensorFrom};
use dfdx::tensor_ops::*;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::device::{dfdx_error as backend, DfdxDevice};
use crate::error::{Error, Result};

/// The non-linearity between hidden layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Activation {
    /// max(0, x).
    #[default]
    Relu,
    /// None: the layers compose into a single linear map (exercise 2's question).
    Linear,
}

impl std::str::FromStr for Activation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "relu" => Ok(Activation::Relu),
            "none" | "linear" | "identity" => Ok(Activation::Linear),
            other => Err(Error::InvalidArgument(format!(
                "unknown activation '{other}': use relu or none"
            ))),
        }
    }
}

/// The most weights and biases a head may have: 2²⁴ (64 MiB of f32, the largest hidden layer
/// about 8,000 units on 2,048 features). Training holds three more copies (the gradient and
/// Adam's two moments), so a head stays within 256 MiB, and its classifier file within
/// [`MAX_CLASSIFIER_BYTES`](super::classifier::MAX_CLASSIFIER_BYTES), which `load` reads.
pub const MAX_HEAD_PARAMETERS: usize = 1 << 24;

/// Weights and biases of a head for `inputs` features, `hidden` layer sizes and `classes`
/// outputs; `None` when the count does not fit in a `usize`.
///
/// ```
/// use flowers_kit::train::head::head_parameters;
/// assert_eq!(head_parameters(1280, &[100], 5), Some(128_605));
/// assert_eq!(head_parameters(1280, &[], 5), Some(6_405));
/// assert_eq!(head_parameters(1280, &[1 << 62], 5), None);
/// ```
pub fn head_parameters(inputs: usize, hidden: &[usize], classes: usize) -> Option<usize> {
    let mut sizes = Vec::with_capacity(hidden.len() + 2);
    sizes.push(inputs);
    sizes.extend_from_slice(hidden);
    sizes.push(classes);
    sizes.windows(2).try_fold(0usize, |total, pair| {
        let layer = pair[0].checked_mul(pair[1])?.checked_add(pair[1])?;
        total.checked_add(layer)
    })
}

/// Errors unless a head of these sizes has at most [`MAX_HEAD_PARAMETERS`]: checked before
/// anything is allocated for it.
pub fn check_head_size(inputs: usize, hidden: &[usize], classes: usize) -> Result<()> {
    match head_parameters(inputs, hidden, classes) {
        Some(n) if n <= MAX_HEAD_PARAMETERS => Ok(()),
        count => Err(Error::InvalidArgument(format!(
            "a head with hidden layers {hidden:?} on {inputs} features and {classes} classes \
             would have {} weights, more than the {MAX_HEAD_PARAMETERS} allowed; use smaller \
             hidden layers",
            count.map_or("too many".to_string(), |n| n.to_string())
        ))),
    }
}

/// One fully connected layer, `y = W x + b`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    /// `[inputs, outputs]`, row-major.
    pub weights: Vec<f32>,
    /// `[outputs]`.
    pub bias: Vec<f32>,
    /// Input size.
    pub inputs: usize,
    /// Output size.
    pub outputs: usize,
}

/// A stack of dense layers ending in one logit per class.
///
/// Every `Head` is consistent — at least one layer, each layer's weights and bias as long as
/// its sizes say, each layer taking the previous one's outputs, finite values — because the
/// only ways to build one ([`Head::new`], [`Head::from_layers`]) check it.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    layers: Vec<Dense>,
    activation: Activation,
}

impl Head {
    /// A head for `inputs`-long features with `hidden` layer sizes (empty: the linear
    /// classifier) and `classes` outputs, initialised like Keras' Dense: Glorot-uniform
    /// weights, zero biases, from `seed`.
    pub fn new(
        inputs: usize,
        hidden: &[usize],
        classes: usize,
        activation: Activation,
        seed: u64,
    ) -> Result<Head> {
        if inputs == 0 || classes < 2 || hidden.contains(&0) {
            return Err(Error::InvalidArgument(format!(
                "a head needs features, at least 2 classes and non-empty hidden layers \
                 (got {inputs} inputs, hidden {hidden:?}, {classes} classes)"
            )));
        }
        check_head_size(inputs, hidden, classes)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut sizes = vec![inputs];
        sizes.extend_from_slice(hidden);
        sizes.push(classes);
        let layers = sizes
            .windows(2)
            .map(|pair| {
                let (fan_in, fan_out) = (pair[0], pair[1]);
                let limit = (6.0 / (fan_in + fan_out) as f32).sqrt();
                Dense {
                    weights: (0..fan_in * fan_out)
                        .map(|_| rng.gen_range(-limit..limit))
                        .collect(),
                    bias: vec![0.0; fan_out],
                    inputs: fan_in,
                    outputs: fan_out,
                }
            })
            .collect();
        Ok(Head { layers, activation })
    }

    /// A head from trained layers (input first), checked for consistency.
    ///
    /// ```
    /// use flowers_kit::train::{Activation, Head};
    /// use flowers_kit::train::head::Dense;
    /// let layer = Dense { weights: vec![0.0; 6], bias: vec![0.0; 2], inputs: 3, outputs: 2 };
    /// assert!(Head::from_layers(vec![layer.clone()], Activation::Relu).is_ok());
    /// assert!(Head::from_layers(vec![], Activation::Relu).is_err());
    /// let short = Dense { weights: vec![0.0; 5], ..layer };
    /// assert!(Head::from_layers(vec![short], Activation::Relu).is_err());
    /// ```
    pub fn from_layers(layers: Vec<Dense>, activation: Activation) -> Result<Head> {
        let bad = |i: usize, reason: String| {
            Err(Error::InvalidArgument(format!("head layer {i}: {reason}")))
        };
        if layers.is_empty() {
            return Err(Error::InvalidArgument(
                "a head needs at least one layer".into(),
            ));
        }
        let parameters = layers.iter().try_fold(0usize, |total, l| {
            total
                .checked_add(l.weights.len())?
                .checked_add(l.bias.len())
        });
        if parameters.is_none_or(|p| p > MAX_HEAD_PARAMETERS) {
            return Err(Error::InvalidArgument(format!(
                "a head of more than {MAX_HEAD_PARAMETERS} weights"
            )));
        }
        for (i, layer) in layers.iter().enumerate() {
            if layer.inputs == 0 || layer.outputs == 0 {
                return bad(
                    i,
                    format!("{} inputs and {} outputs", layer.inputs, layer.outputs),
                );
            }
            if Some(layer.weights.len()) != layer.inputs.checked_mul(layer.outputs)
                || layer.bias.len() != layer.outputs
            {
                return bad(
                    i,
                    format!(
                        "{} weights and {} biases for {} inputs and {} outputs",
                        layer.weights.len(),
                        layer.bias.len(),
                        layer.inputs,
                        layer.outputs
                    ),
                );
            }
            if let Some(previous) = i.checked_sub(1).and_then(|p| layers.get(p)) {
                if previous.outputs != layer.inputs {
                    return bad(
                        i,
                        format!(
                            "takes {} inputs but the layer before outputs {}",
                            layer.inputs, previous.outputs
                        ),
                    );
                }
            }
            if layer
                .weights
                .iter()
                .chain(&layer.bias)
                .any(|v| !v.is_finite())
            {
                return bad(i, "holds a NaN or infinite value".into());
            }
        }
        Ok(Head { layers, activation })
    }

    /// Layers, input first; the last one outputs the class logits.
    pub fn layers(&self) -> &[Dense] {
        &self.layers
    }

    /// Between layers (not after the last).
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// Weights and biases in all.
    pub fn parameter_count(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.weights.len() + l.bias.len())
            .sum()
    }

    /// Feature length the head takes.
    pub fn inputs(&self) -> usize {
        self.layers
            .first()
            .expect("invariant: Head::new and Head::from_layers refuse a head without layers")
            .inputs
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.layers
            .last()
            .expect("invariant: Head::new and Head::from_layers refuse a head without layers")
            .outputs
    }

    /// Hidden layer sizes.
    pub fn hidden(&self) -> Vec<usize> {
        let n = self.layers.len();
        self.layers
            .iter()
            .take(n.saturating_sub(1))
            .map(|l| l.outputs)
            .collect()
    }

    /// For a head without activation, the single linear layer it is equal to:
    /// `(x·W₁ + b₁)·W₂ + b₂ = x·(W₁W₂) + (b₁W₂ + b₂)`. `None` when a ReLU sits between the
    /// layers — then the stack really is more than one linear map — or when that one layer
    /// would hold more than [`MAX_HEAD_PARAMETERS`] weights (a narrow layer between wide
    /// ones).
    pub fn collapse_linear(&self) -> Option<Head> {
        if self.layers.len() > 1 && self.activation != Activation::Linear {
            return None;
        }
        let merged = self.inputs().checked_mul(self.classes())?;
        if merged > MAX_HEAD_PARAMETERS {
            return None;
        }
        let mut layers = self.layers.iter();
        let first = layers.next()?.clone();
        let merged = layers.fold(first, |acc, next| {
            // acc: [a, b], next: [b, c] -> [a, c].
            let (a, b, c) = (acc.inputs, acc.outputs, next.outputs);
            let mut weights = vec![0f32; a * c];
            for i in 0..a {
                for k in 0..b {
                    let w = acc.weights[i * b + k];
                    for j in 0..c {
                        weights[i * c + j] += w * next.weights[k * c + j];
                    }
                }
            }
            let bias = (0..c)
                .map(|j| {
                    next.bias[j]
                        + (0..b)
                            .map(|k| acc.bias[k] * next.weights[k * c + j])
                            .sum::<f32>()
                })
                .collect();
            Dense {
                weights,
                bias,
                inputs: a,
                outputs: c,
            }
        });
        Some(Head {
            layers: vec![merged],
            activation: self.activation,
        })
    }

    /// For one feature vector, the score (logit, before the softmax) of `class` and its
    /// gradient with respect to each feature: how much each feature pushes the photo
    /// towards `class`, which Grad-CAM weighs the feature map's channels by. Computed in
    /// f64 on the calling thread (one row; no device needed).
    ///
    /// ```
    /// use flowers_kit::train::head::{Dense, Head};
    /// use flowers_kit::train::Activation;
    /// // One linear layer: the gradient of a class's score is that class's weights.
    /// let layer = Dense { weights: vec![1.0, 2.0, 3.0, 4.0], bias: vec![0.5, 0.0], inputs: 2, outputs: 2 };
    /// let head = Head::from_layers(vec![layer], Activation::Relu)?;
    /// let (score, gradient) = head.class_score_gradient(&[1.0, 1.0], 1)?;
    /// assert_eq!((score, gradient), (6.0, vec![2.0, 4.0]));
    /// # Ok::<(), flowers_kit::Error>(())
    /// ```
    pub fn class_score_gradient(&self, features: &[f32], class: usize) -> Result<(f32, Vec<f32>)> {
        if features.len() != self.inputs() || class >= self.classes() {
            return Err(Error::InvalidArgument(format!(
                "the head takes {} features and scores {} classes, not {} features and class {class}",
                self.inputs(),
                self.classes(),
                features.len()
            )));
        }
        // Forward, keeping each layer's input (after the activation).
        let mut inputs: Vec<Vec<f64>> = Vec::with_capacity(self.layers.len());
        let mut x: Vec<f64> = features.iter().map(|&v| f64::from(v)).collect();
        for (i, layer) in self.layers.iter().enumerate() {
            let mut z: Vec<f64> = layer.bias.iter().map(|&b| f64::from(b)).collect();
            for (xi, row) in x.iter().zip(layer.weights.chunks_exact(layer.outputs)) {
                for (zo, &w) in z.iter_mut().zip(row) {
                    *zo += xi * f64::from(w);
                }
            }
            if i + 1 < self.layers.len() && self.activation == Activation::Relu {
                z.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            inputs.push(std::mem::replace(&mut x, z));
        }
        let score = x[class];
        // Backward from d score / d logits = the one-hot vector of `class`.
        let mut gradient = vec![0.0f64; self.classes()];
        gradient[class] = 1.0;
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let mut below: Vec<f64> = layer
                .weights
                .chunks_exact(layer.outputs)
                .map(|row| {
                    row.iter()
                        .zip(&gradient)
                        .map(|(&w, g)| f64::from(w) * g)
                        .sum()
                })
                .collect();
            // The layer's input came out of a ReLU unless it is the features themselves.
            if i > 0 && self.activation == Activation::Relu {
                for (g, &h) in below.iter_mut().zip(&inputs[i]) {
                    if h <= 0.0 {
                        *g = 0.0;
                    }
                }
            }
            gradient = below;
        }
        // Checked after the conversion: a finite f64 can still be too large for an f32.
        let score = score as f32;
        let gradient: Vec<f32> = gradient.into_iter().map(|g| g as f32).collect();
        if !score.is_finite() || gradient.iter().any(|g| !g.is_finite()) {
            return Err(Error::InvalidArgument(
                "the classifier's score is not a finite number (weights or features too large?)"
                    .into(),
            ));
        }
        Ok((score, gradient))
    }

    /// Class probabilities `[n, classes]` for `n` feature rows `[n, inputs]`.
    pub fn probabilities(&self, features: &[f32], n: usize) -> Result<Vec<f32>> {
        if Some(features.len()) != n.checked_mul(self.inputs()) {
            return Err(Error::InvalidArgument(format!(
                "expected {n} rows of {} features, got {} values",
                self.inputs(),
                features.len()
            )));
        }
        let dev = Cpu::default();
        let params = DeviceParams::upload(self, &dev)?;
        let x = dev.tensor((features.to_vec(), (n, self.inputs())));
        let (w1, rest) = params
            .w
            .split_first()
            .ok_or_else(|| Error::InvalidArgument("a head without layers".into()))?;
        let first = x.try_matmul(w1.clone()).map_err(backend)?;
        let logits = forward_from_first(first, params.b, rest.to_vec(), self.activation)?;
        let classes = self.classes();
        let mut out = logits.as_vec();
        if out.iter().any(|v| !v.is_finite()) {
            return Err(Error::InvalidArgument(
                "the classifier's outputs are not finite numbers (weights or features too \
                 large?)"
                    .into(),
            ));
        }
        for row in out.chunks_exact_mut(classes) {
            softmax_in_place(row);
        }
        Ok(out)
    }
}

/// Replaces logits by their softmax.
pub(crate) fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        total += *v;
    }
    for v in row.iter_mut() {
        *v /= total;
    }
}

/// A head's parameters on a device.
pub(crate) struct DeviceParams<D: DfdxDevice> {
    pub w: Vec<Tensor<(usize, usize), f32, D>>,
    pub b: Vec<Tensor<(usize,), f32, D>>,
}

impl<D: DfdxDevice> DeviceParams<D> {
    pub fn upload(head: &Head, dev: &D) -> Result<Self> {
        Ok(DeviceParams {
            w: head
                .layers
                .iter()
                .map(|l| dev.tensor((l.weights.clone(), (l.inputs, l.outputs))))
                .collect(),
            b: head
                .layers
                .iter()
                .map(|l| dev.tensor((l.bias.clone(), (l.outputs,))))
                .collect(),
        })
    }

    /// Copies the parameters back into `head`.
    pub fn download(&self, head: &mut Head) {
        for ((layer, w), b) in head.layers.iter_mut().zip(&self.w).zip(&self.b) {
            layer.weights = w.as_vec();
            layer.bias = b.as_vec();
        }
    }
}

/// Logits `[n, classes]` given the first layer's product `x·W₁` (`first`, `[n, out₁]`), all
/// biases, and the weights of the layers after the first; the tensors carry tape `T`.
///
/// Training starts the tape at `first` rather than at `W₁`: dfdx's matmul backward always
/// computes the gradient of both operands, and for the first layer the other operand is the
/// `[n, 1280]` feature matrix, whose gradient is never needed and tripled the step time.
/// The trainer applies `dW₁ = xᵀ·dfirst` itself.
pub(crate) fn forward_from_first<D: DfdxDevice, T>(
    first: Tensor<(usize, usize), f32, D, T>,
    biases: Vec<Tensor<(usize,), f32, D, T>>,
    weights: Vec<Tensor<(usize, usize), f32, D, T>>,
    activation: Activation,
) -> Result<Tensor<(usize, usize), f32, D, T>>
where
    T: Tape<f32, D> + Merge<T> + Merge<NoneTape>,
{
    let layers = biases.len();
    let mut weights = weights.into_iter();
    let mut z = first;
    for (i, b) in biases.into_iter().enumerate() {
        let shape = *z.shape();
        let bias = b
            .try_broadcast_like::<_, Axis<0>>(&shape)
            .map_err(backend)?;
        let mut h = z.try_add(bias).map_err(backend)?;
        if i + 1 == layers {
            return Ok(h);
        }
        if activation == Activation::Relu {
            h = h.try_relu().map_err(backend)?;
        }
        let w = weights
            .next()
            .ok_or_else(|| Error::Backend("a head with fewer weights than biases".into()))?;
        z = h.try_matmul(w).map_err(backend)?;
    }
    Err(Error::Backend("a head without layers".into()))
}
