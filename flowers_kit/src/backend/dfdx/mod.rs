//! Any [`Network`] on dfdx tensors with run-time shapes: `Cpu`, or `Cuda` with the `cuda`
//! feature. The reference implementation (simple, and checked against TensorFlow), the CUDA
//! path, and the one that trains: the interpreter is generic over dfdx's tape, so running
//! the steps above a [`Cut`] with traced parameters is the same code as a forward pass
//! ([`TrainableSuffix`]).
//!
//! dfdx 0.13's `conv2d` and `pool2d` need its `nightly` feature, so windows are built from ops
//! that work on stable with `usize` shapes. Activations are `[pixels, channels]` matrices
//! (pixels of all images, row-major); a window op gathers the taps of each output pixel with
//! one `gather` over a precomputed index tensor — padding points at an appended constant row
//! (zero, or −∞ for max pooling), and strides simply skip pixels — giving
//! `[pixels, taps, channels]` ([`window`]):
//! - a convolution flattens that to `[pixels, taps·cin]` and multiplies by `[taps·cin, cout]`;
//! - a depthwise convolution multiplies by `[taps, c]` and sums the taps;
//! - pooling takes the maximum, or the sum times one over the number of valid taps;
//! - padding and cropping are a one-tap gather.

mod suffix;
mod window;

use dfdx::shapes::{Axis, HasShape};
use dfdx::tensor::{Merge, NoneTape, OwnedTape, Tape, Trace, WithEmptyTape};
use dfdx::tensor::{Tensor, TensorFrom};
use dfdx::tensor_ops::*;

use super::{Kernel, Network, Step};
use crate::device::dfdx_error as backend_error;
pub use crate::device::DfdxDevice;
use crate::error::{Error, Result};
use crate::models::graph::Activation;
pub use suffix::{ParamMut, TrainableSuffix, EVAL_CHUNK};
use window::{gather_one, gather_taps, Window};

/// `[rows, columns]` on a device, carrying tape `T`.
pub type Matrix<D, T = NoneTape> = Tensor<(usize, usize), f32, D, T>;
/// `[length]` on a device, carrying tape `T`.
pub type Vector<D, T = NoneTape> = Tensor<(usize,), f32, D, T>;
/// `[pixels, taps, channels]`: every tap of every output pixel of a window.
type Taps<D, T> = Tensor<(usize, usize, usize), f32, D, T>;
/// The tape a training step records on.
pub type Traced<D> = OwnedTape<f32, D>;

/// A step's trainable tensors on a device, carrying tape `T`.
#[derive(Debug, Clone)]
pub enum StepParams<D: DfdxDevice, T = NoneTape> {
    /// A step without weights.
    None,
    /// A convolution: weights `[taps·cin, cout]` (depthwise `[taps, c]`) and bias `[cout]`.
    Conv {
        /// The kernel.
        weights: Matrix<D, T>,
        /// The bias.
        bias: Vector<D, T>,
    },
    /// Per-channel scale and shift.
    Affine {
        /// Multiplies each channel.
        scale: Vector<D, T>,
        /// Added after.
        shift: Vector<D, T>,
    },
}

impl<D: DfdxDevice> StepParams<D> {
    /// Uploads `step`'s weights.
    pub fn upload(step: &Step, device: &D) -> Result<Self> {
        let vector = |values: &[f32]| -> Result<Vector<D>> {
            let mut t = device
                .try_zeros_like(&(values.len(),))
                .map_err(backend_error)?;
            t.copy_from(values);
            Ok(t)
        };
        Ok(match &step.kernel {
            Kernel::Conv(conv) => {
                let mut weights = device
                    .try_zeros_like(&(conv.weights.len() / conv.cout, conv.cout))
                    .map_err(backend_error)?;
                weights.copy_from(&conv.weights);
                StepParams::Conv {
                    weights,
                    bias: vector(&conv.bias)?,
                }
            }
            Kernel::Affine { scale, shift, .. } => StepParams::Affine {
                scale: vector(scale)?,
                shift: vector(shift)?,
            },
            _ => StepParams::None,
        })
    }

    /// The same tensors, each starting a tape of its own (a training step).
    pub fn traced(&self) -> StepParams<D, Traced<D>> {
        match self {
            StepParams::None => StepParams::None,
            StepParams::Conv { weights, bias } => StepParams::Conv {
                weights: weights.leaky_trace(),
                bias: bias.leaky_trace(),
            },
            StepParams::Affine { scale, shift } => StepParams::Affine {
                scale: scale.leaky_trace(),
                shift: shift.leaky_trace(),
            },
        }
    }

    /// Copies the values back into `step` (whose kernel they were uploaded from).
    pub fn download(&self, step: &mut Step) {
        let values: Vec<Vec<f32>> = match self {
            StepParams::None => Vec::new(),
            StepParams::Conv { weights, bias } => vec![weights.as_vec(), bias.as_vec()],
            StepParams::Affine { scale, shift } => vec![scale.as_vec(), shift.as_vec()],
        };
        for (target, values) in step.parameters_mut().into_iter().zip(values) {
            *target = values;
        }
    }
}

/// A [`Network`] whose weights live on a dfdx device.
pub struct DfdxNetwork<D: DfdxDevice> {
    device: D,
    network: Network,
    params: Vec<StepParams<D>>,
}

impl<D: DfdxDevice> std::fmt::Debug for DfdxNetwork<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DfdxNetwork")
            .field("model", &self.network.model().name())
            .field("steps", &self.params.len())
            .finish()
    }
}

impl<D: DfdxDevice> DfdxNetwork<D> {
    /// Uploads the folded weights to `device`.
    pub fn new(network: &Network, device: D) -> Result<Self> {
        let params = network
            .steps()
            .iter()
            .map(|step| StepParams::upload(step, &device))
            .collect::<Result<Vec<_>>>()?;
        Ok(DfdxNetwork {
            device,
            network: network.clone(),
            params,
        })
    }

    /// Features of `n` images given as NHWC pixels in [0, 1]: a `[n, features]` tensor.
    pub fn forward(&self, pixels: &[f32], n: usize) -> Result<Matrix<D>> {
        let r = self.network.model().resolution();
        if Some(pixels.len()) != n.checked_mul(r * r * 3) {
            return Err(Error::InvalidArgument(format!(
                "expected {n} images of {r}×{r}×3 values, got {}",
                pixels.len()
            )));
        }
        let mut x: Matrix<D> = self
            .device
            .try_zeros_like(&(n * r * r, 3))
            .map_err(backend_error)?;
        x.copy_from(pixels);
        run(
            self.network.steps(),
            1,
            vec![(0, x)],
            self.params[1..].to_vec(),
            n,
        )
    }
}

/// Runs steps `first..` of `steps` on `n` images and returns the features `[n, F]` (the last
/// step's map averaged over pixels). `given` holds the values of the steps below `first`
/// that they read; `params` the parameters of steps `first..`, in order. Every tensor carries
/// tape `T`: `NoneTape` for a forward pass, a traced tape for training.
///
/// A traced value read by several steps (a block's input, read by its expansion and its
/// residual add) gives its earlier readers a copy with an empty tape and its last reader the
/// original, so every recorded operation reaches the result exactly once.
pub(crate) fn run<D: DfdxDevice, T>(
    steps: &[Step],
    first: usize,
    given: Vec<(usize, Matrix<D, T>)>,
    params: Vec<StepParams<D, T>>,
    n: usize,
) -> Result<Matrix<D, T>>
where
    T: Tape<f32, D> + Merge<T> + Merge<NoneTape> + Default,
{
    let bad = |why: String| Error::InvalidArgument(format!("dfdx interpreter: {why}"));
    if first == 0 || first >= steps.len() || params.len() != steps.len() - first {
        return Err(bad(format!(
            "steps {first}.. of {} with {} sets of parameters",
            steps.len(),
            params.len()
        )));
    }
    let mut readers = super::readers_from(steps, first);
    // A step nobody reads would take its inputs' tapes with it, and their gradients would
    // silently stop there.
    if let Some(unread) = (first..steps.len()).find(|&i| readers[i] == 0) {
        return Err(bad(format!(
            "step {} is read by no later step",
            steps[unread].name
        )));
    }
    let mut values: Vec<Option<Matrix<D, T>>> = (0..steps.len()).map(|_| None).collect();
    for (j, value) in given {
        let slot = values
            .get_mut(j)
            .filter(|_| j < first)
            .ok_or_else(|| bad(format!("a value for step {j}, which is not below {first}")))?;
        *slot = Some(value);
    }
    if let Some(j) = (0..first).find(|&j| readers[j] > 0 && values[j].is_none()) {
        return Err(bad(format!("step {} is read but not given", steps[j].name)));
    }
    for ((i, step), params) in steps.iter().enumerate().skip(first).zip(params) {
        let mut take = |k: usize| -> Matrix<D, T> {
            let j = step.inputs[k];
            readers[j] -= 1;
            if readers[j] == 0 {
                values[j].take()
            } else {
                values[j].as_ref().map(WithEmptyTape::with_empty_tape)
            }
            .expect("invariant: a value lives until its last reader")
        };
        let in_shape = |k: usize| steps[step.inputs[k]].shape;
        let out = match (&step.kernel, params) {
            (Kernel::Conv(conv), StepParams::Conv { weights, bias }) => {
                let x = take(0);
                let y = if conv.is_pointwise() {
                    x.try_matmul(weights).map_err(backend_error)?
                } else {
                    let window = Window::new(n, in_shape(0), conv.kernel, conv.stride, conv.pad);
                    let taps = gather_taps(x, &window, 0.0)?;
                    if conv.depthwise {
                        let shape = *taps.shape();
                        let kernel = weights
                            .try_broadcast_like::<_, Axis<0>>(&shape)
                            .map_err(backend_error)?;
                        taps.try_mul(kernel)
                            .and_then(|t| t.try_sum::<(usize, usize), Axis<1>>())
                            .map_err(backend_error)?
                    } else {
                        let cin = in_shape(0)[2];
                        taps.try_reshape_like(&(window.pixels(), window.taps() * cin))
                            .and_then(|t| t.try_matmul(weights))
                            .map_err(backend_error)?
                    }
                };
                activate(add_row(y, bias)?, conv.activation)?
            }
            (Kernel::Affine { activation, .. }, StepParams::Affine { scale, shift }) => {
                let x = take(0);
                let shape = *x.shape();
                let s = scale
                    .try_broadcast_like::<_, Axis<0>>(&shape)
                    .map_err(backend_error)?;
                activate(
                    add_row(x.try_mul(s).map_err(backend_error)?, shift)?,
                    *activation,
                )?
            }
            (Kernel::Activation(activation), _) => activate(take(0), *activation)?,
            (Kernel::Add(activation), _) => {
                let mut sum = take(0);
                for k in 1..step.inputs.len() {
                    sum = sum.try_add(take(k)).map_err(backend_error)?;
                }
                activate(sum, *activation)?
            }
            (Kernel::Multiply, _) => {
                let (sa, sb) = (in_shape(0), in_shape(1));
                let (a, b) = (take(0), take(1));
                if sa == sb {
                    a.try_mul(b).map_err(backend_error)?
                } else {
                    // A [1, 1, C] factor per image, broadcast over its pixels.
                    let (big, small, [h, w, c]) = if sa[..2] == [1, 1] {
                        (b, a, sb)
                    } else {
                        (a, b, sa)
                    };
                    let shape = (n, h * w, c);
                    let big = big.try_reshape_like(&shape).map_err(backend_error)?;
                    let small = small
                        .try_broadcast_like::<_, Axis<1>>(&shape)
                        .map_err(backend_error)?;
                    big.try_mul(small)
                        .and_then(|t| t.try_reshape_like(&(n * h * w, c)))
                        .map_err(backend_error)?
                }
            }
            (Kernel::Concat, _) => {
                let mut all = take(0);
                for k in 1..step.inputs.len() {
                    all = (all, take(k))
                        .try_concat_along(Axis::<1>)
                        .map_err(backend_error)?;
                }
                all
            }
            (Kernel::MaxPool { size, stride, pad }, _) => {
                let window = Window::new(n, in_shape(0), *size, *stride, *pad);
                gather_taps(take(0), &window, f32::NEG_INFINITY)?
                    .try_max::<(usize, usize), Axis<1>>()
                    .map_err(backend_error)?
            }
            (Kernel::AvgPool { size, stride, pad }, _) => {
                let window = Window::new(n, in_shape(0), *size, *stride, *pad);
                let sum = gather_taps(take(0), &window, 0.0)?
                    .try_sum::<(usize, usize), Axis<1>>()
                    .map_err(backend_error)?;
                let shape = *sum.shape();
                let inverse: Vector<D> = sum.device().tensor((window.inverse_valid(), (shape.0,)));
                let inverse = inverse
                    .try_broadcast_like::<_, Axis<1>>(&shape)
                    .map_err(backend_error)?;
                sum.try_mul(inverse).map_err(backend_error)?
            }
            (Kernel::Pad(pad), _) => {
                let window = Window::new(n, in_shape(0), (1, 1), 1, *pad);
                gather_one(take(0), &window)?
            }
            (Kernel::Crop([top, _, left, _]), _) => {
                let window = Window::crop(n, in_shape(0), step.shape, (*top, *left));
                gather_one(take(0), &window)?
            }
            (Kernel::GlobalAvgPool, _) => {
                let [h, w, c] = in_shape(0);
                take(0)
                    .try_reshape_like(&(n, h * w, c))
                    .and_then(|t| t.try_mean::<(usize, usize), Axis<1>>())
                    .map_err(backend_error)?
            }
            (Kernel::Input, _) => return Err(bad("the input is not a step to run".into())),
            (kernel, _) => {
                return Err(bad(format!(
                    "step {} ({kernel:?}) was given parameters of another kind",
                    step.name
                )))
            }
        };
        values[i] = Some(out);
    }
    let [h, w, c] = steps[steps.len() - 1].shape;
    values
        .pop()
        .flatten()
        .expect("invariant: the last step's value is read by the final average")
        .try_reshape_like(&(n, h * w, c))
        .and_then(|t| t.try_mean::<(usize, usize), Axis<1>>())
        .map_err(backend_error)
}

/// `y + bias` with the bias broadcast over rows; both carry tape `T`.
fn add_row<D: DfdxDevice, T>(y: Matrix<D, T>, bias: Vector<D, T>) -> Result<Matrix<D, T>>
where
    T: Tape<f32, D> + Merge<T>,
{
    let shape = *y.shape();
    let b = bias
        .try_broadcast_like::<_, Axis<0>>(&shape)
        .map_err(backend_error)?;
    y.try_add(b).map_err(backend_error)
}

/// Applies `activation`. Where `x` is read twice (swish, hard-swish) the first read gets a
/// copy with an empty tape, so the tape's record reaches the result once.
fn activate<D: DfdxDevice, T>(x: Matrix<D, T>, activation: Activation) -> Result<Matrix<D, T>>
where
    T: Tape<f32, D> + Merge<T> + Default,
{
    let hard_sigmoid = |x: Matrix<D, T>| {
        x.try_add(3.0)
            .and_then(|t| t.try_clamp(0.0, 6.0))
            .and_then(|t| t.try_mul(1.0 / 6.0))
    };
    match activation {
        Activation::Linear => Ok(x),
        Activation::Relu => x.try_relu(),
        Activation::Relu6 => x.try_clamp(0.0, 6.0),
        Activation::Sigmoid => x.try_sigmoid(),
        Activation::Swish => x.with_empty_tape().try_sigmoid().and_then(|s| x.try_mul(s)),
        Activation::HardSigmoid => hard_sigmoid(x),
        Activation::HardSwish => hard_sigmoid(x.with_empty_tape()).and_then(|s| x.try_mul(s)),
    }
    .map_err(backend_error)
}
