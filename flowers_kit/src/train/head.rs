//! Classifier heads on top of the features: the tutorial's linear layer, or an MLP.
//!
//! Sizes are run-time values, so changing the hidden layers in a notebook cell never makes
//! evcxr recompile generic network code. Layers store weights as `[out, in]` and compute
//! `W·Xᵀ`: the trainable tensor is always the left operand, which is where dfdx's autodiff
//! wants the tape, and the features never need a gradient.

use dfdx::prelude::{Axis, HasShape, Merge, NoneTape, Tape};
use dfdx::tensor::{Cpu, Tensor, TensorFrom};
use dfdx::tensor_ops::*;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::backend::dfdx::DfdxDevice;
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

/// One fully connected layer, `y = W x + b`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    /// `[outputs, inputs]`, row-major.
    pub weights: Vec<f32>,
    /// `[outputs]`.
    pub bias: Vec<f32>,
    /// Input size.
    pub inputs: usize,
    /// Output size.
    pub outputs: usize,
}

/// A stack of dense layers ending in one logit per class.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    /// Layers, input first; the last one outputs the class logits.
    pub layers: Vec<Dense>,
    /// Between layers (not after the last).
    pub activation: Activation,
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

    /// Feature length the head takes.
    pub fn inputs(&self) -> usize {
        self.layers.first().map_or(0, |l| l.inputs)
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.layers.last().map_or(0, |l| l.outputs)
    }

    /// Hidden layer sizes.
    pub fn hidden(&self) -> Vec<usize> {
        let n = self.layers.len();
        self.layers[..n.saturating_sub(1)]
            .iter()
            .map(|l| l.outputs)
            .collect()
    }

    /// Class probabilities `[n, classes]` for `n` feature rows `[n, inputs]`.
    pub fn probabilities(&self, features: &[f32], n: usize) -> Result<Vec<f32>> {
        if features.len() != n * self.inputs() {
            return Err(Error::InvalidArgument(format!(
                "expected {n} rows of {} features, got {} values",
                self.inputs(),
                features.len()
            )));
        }
        let dev = Cpu::default();
        let params = DeviceParams::upload(self, &dev)?;
        let xt = transpose_to_device(&dev, features, n, self.inputs());
        let logits_t = logits_t(params.w, params.b, xt, self.activation)?;
        softmax_columns(logits_t.as_vec(), self.classes(), n)
    }
}

/// Column-wise softmax of `[classes, n]` logits, returned as `[n, classes]` rows.
pub(crate) fn softmax_columns(logits_t: Vec<f32>, classes: usize, n: usize) -> Result<Vec<f32>> {
    let mut out = vec![0f32; n * classes];
    for i in 0..n {
        let column = (0..classes).map(|c| logits_t[c * n + i]);
        let max = column.clone().fold(f32::NEG_INFINITY, f32::max);
        let total: f32 = column.clone().map(|v| (v - max).exp()).sum();
        for (c, v) in column.enumerate() {
            out[i * classes + c] = (v - max).exp() / total;
        }
    }
    Ok(out)
}

/// `[inputs, n]` on `dev` from `n` rows of `inputs` values.
pub(crate) fn transpose_to_device<D: DfdxDevice>(
    dev: &D,
    rows: &[f32],
    n: usize,
    inputs: usize,
) -> Tensor<(usize, usize), f32, D> {
    let mut t = vec![0f32; rows.len()];
    for (i, row) in rows.chunks_exact(inputs).enumerate() {
        for (j, v) in row.iter().enumerate() {
            t[j * n + i] = *v;
        }
    }
    dev.tensor((t, (inputs, n)))
}

fn backend(e: impl std::fmt::Debug) -> Error {
    Error::Backend(format!("{e:?}"))
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
                .map(|l| dev.tensor((l.weights.clone(), (l.outputs, l.inputs))))
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

/// Logits `[classes, n]` for features `xt` `[inputs, n]`; `w`/`b` carry tape `T` (a gradient
/// tape while training, none for inference).
pub(crate) fn logits_t<D: DfdxDevice, T>(
    w: Vec<Tensor<(usize, usize), f32, D, T>>,
    b: Vec<Tensor<(usize,), f32, D, T>>,
    xt: Tensor<(usize, usize), f32, D>,
    activation: Activation,
) -> Result<Tensor<(usize, usize), f32, D, T>>
where
    T: Tape<f32, D> + Merge<T> + Merge<NoneTape>,
{
    let last = w.len() - 1;
    let mut h: Option<Tensor<(usize, usize), f32, D, T>> = None;
    for (i, (wi, bi)) in w.into_iter().zip(b).enumerate() {
        let z = match h.take() {
            None => wi.try_matmul(xt.clone()).map_err(backend)?,
            Some(prev) => wi.try_matmul(prev).map_err(backend)?,
        };
        let shape = *z.shape();
        let bias = bi
            .try_broadcast_like::<_, Axis<1>>(&shape)
            .map_err(backend)?;
        let mut z = z.try_add(bias).map_err(backend)?;
        if i < last && activation == Activation::Relu {
            z = z.try_relu().map_err(backend)?;
        }
        h = Some(z);
    }
    h.ok_or_else(|| Error::Backend("a head without layers".into()))
}
