//! Any [`Network`] on dfdx tensors with run-time shapes: `Cpu`, or `Cuda` with the `cuda`
//! feature. The reference implementation: simple, and checked against TensorFlow.
//!
//! dfdx 0.13's `conv2d` and `pool2d` need its `nightly` feature, so windows are built from ops
//! that work on stable with `usize` shapes. Activations are `[pixels, channels]` matrices
//! (pixels of all images, row-major); a window op gathers the taps of each output pixel with
//! one `gather` over a precomputed index tensor — padding points at an appended constant row
//! (zero, or −∞ for max pooling), and strides simply skip pixels — giving
//! `[pixels, taps, channels]`:
//! - a convolution flattens that to `[pixels, taps·cin]` and multiplies by `[taps·cin, cout]`;
//! - a depthwise convolution multiplies by `[taps, c]` and sums the taps;
//! - pooling takes the maximum, or the sum times one over the number of valid taps;
//! - padding and cropping are a one-tap gather.

use dfdx::shapes::{Axis, HasShape};
use dfdx::tensor::{Merge, NoneTape, Tape, WithEmptyTape};
use dfdx::tensor::{Tensor, TensorFrom};
use dfdx::tensor_ops::*;

use super::{Kernel, Network};
use crate::device::dfdx_error as backend_error;
pub use crate::device::DfdxDevice;
use crate::error::{Error, Result};
use crate::models::graph::{Activation, Shape};

type Matrix<D> = Tensor<(usize, usize), f32, D>;
type Vector<D> = Tensor<(usize,), f32, D>;
/// `[pixels, taps, channels]`: every tap of every output pixel of a window.
type Taps<D, T> = Tensor<(usize, usize, usize), f32, D, T>;

/// A step with its weights on the device.
enum DeviceStep<D: DfdxDevice> {
    /// Anything without weights: computed from the step's kernel.
    Plain,
    /// A convolution: weights `[taps·cin, cout]` (depthwise `[taps, c]`) and bias.
    Conv { weights: Matrix<D>, bias: Vector<D> },
    /// Per-channel scale and shift.
    Affine { scale: Vector<D>, shift: Vector<D> },
}

/// A [`Network`] whose weights live on a dfdx device.
pub struct DfdxNetwork<D: DfdxDevice> {
    device: D,
    network: Network,
    steps: Vec<DeviceStep<D>>,
}

impl<D: DfdxDevice> std::fmt::Debug for DfdxNetwork<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DfdxNetwork")
            .field("model", &self.network.model().name())
            .field("steps", &self.steps.len())
            .finish()
    }
}

impl<D: DfdxDevice> DfdxNetwork<D> {
    /// Uploads the folded weights to `device`.
    pub fn new(network: &Network, device: D) -> Result<Self> {
        let vector = |values: &[f32]| -> Result<Vector<D>> {
            let mut t = device
                .try_zeros_like(&(values.len(),))
                .map_err(backend_error)?;
            t.copy_from(values);
            Ok(t)
        };
        let steps = network
            .steps()
            .iter()
            .map(|step| {
                Ok(match &step.kernel {
                    Kernel::Conv(conv) => {
                        let mut weights = device
                            .try_zeros_like(&(conv.weights.len() / conv.cout, conv.cout))
                            .map_err(backend_error)?;
                        weights.copy_from(&conv.weights);
                        DeviceStep::Conv {
                            weights,
                            bias: vector(&conv.bias)?,
                        }
                    }
                    Kernel::Affine { scale, shift, .. } => DeviceStep::Affine {
                        scale: vector(scale)?,
                        shift: vector(shift)?,
                    },
                    _ => DeviceStep::Plain,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DfdxNetwork {
            device,
            network: network.clone(),
            steps,
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
        let dev = &self.device;
        let steps = self.network.steps();
        let mut values: Vec<Option<Matrix<D>>> = vec![None; steps.len()];
        for (i, (step, on_device)) in steps.iter().zip(&self.steps).enumerate() {
            let input = |k: usize| -> Result<Matrix<D>> {
                step.inputs
                    .get(k)
                    .and_then(|&j| values.get(j))
                    .and_then(Clone::clone)
                    .ok_or_else(|| Error::Backend(format!("step {} has no input {k}", step.name)))
            };
            let in_shape = |k: usize| -> Shape {
                step.inputs
                    .get(k)
                    .and_then(|&j| steps.get(j))
                    .map_or([0; 3], |s| s.shape)
            };
            let out = match (&step.kernel, on_device) {
                (Kernel::Input, _) => {
                    let mut x: Matrix<D> =
                        dev.try_zeros_like(&(n * r * r, 3)).map_err(backend_error)?;
                    x.copy_from(pixels);
                    x
                }
                (Kernel::Conv(conv), DeviceStep::Conv { weights, bias }) => {
                    let x = input(0)?;
                    let y = if conv.is_pointwise() {
                        x.try_matmul(weights.clone()).map_err(backend_error)?
                    } else {
                        let window =
                            Window::new(n, in_shape(0), conv.kernel, conv.stride, conv.pad);
                        let taps = gather_taps(x, &window, 0.0)?;
                        let m = window.pixels();
                        if conv.depthwise {
                            let shape = *taps.shape();
                            let kernel = weights
                                .clone()
                                .try_broadcast_like::<_, Axis<0>>(&shape)
                                .map_err(backend_error)?;
                            taps.try_mul(kernel)
                                .and_then(|t| t.try_sum::<(usize, usize), Axis<1>>())
                                .map_err(backend_error)?
                        } else {
                            let cin = in_shape(0)[2];
                            taps.try_reshape_like(&(m, window.taps() * cin))
                                .and_then(|t| t.try_matmul(weights.clone()))
                                .map_err(backend_error)?
                        }
                    };
                    activate(add_row(y, bias.clone())?, conv.activation)?
                }
                (Kernel::Affine { activation, .. }, DeviceStep::Affine { scale, shift }) => {
                    let x = input(0)?;
                    let shape = *x.shape();
                    let s = scale
                        .clone()
                        .try_broadcast_like::<_, Axis<0>>(&shape)
                        .map_err(backend_error)?;
                    activate(
                        add_row(x.try_mul(s).map_err(backend_error)?, shift.clone())?,
                        *activation,
                    )?
                }
                (Kernel::Activation(activation), _) => activate(input(0)?, *activation)?,
                (Kernel::Add(activation), _) => {
                    let mut sum = input(0)?;
                    for k in 1..step.inputs.len() {
                        sum = sum.try_add(input(k)?).map_err(backend_error)?;
                    }
                    activate(sum, *activation)?
                }
                (Kernel::Multiply, _) => {
                    let (a, b) = (input(0)?, input(1)?);
                    let (sa, sb) = (in_shape(0), in_shape(1));
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
                    let mut all = input(0)?;
                    for k in 1..step.inputs.len() {
                        all = (all, input(k)?)
                            .try_concat_along(Axis::<1>)
                            .map_err(backend_error)?;
                    }
                    all
                }
                (Kernel::MaxPool { size, stride, pad }, _) => {
                    let window = Window::new(n, in_shape(0), *size, *stride, *pad);
                    gather_taps(input(0)?, &window, f32::NEG_INFINITY)?
                        .try_max::<(usize, usize), Axis<1>>()
                        .map_err(backend_error)?
                }
                (Kernel::AvgPool { size, stride, pad }, _) => {
                    let window = Window::new(n, in_shape(0), *size, *stride, *pad);
                    let sum = gather_taps(input(0)?, &window, 0.0)?
                        .try_sum::<(usize, usize), Axis<1>>()
                        .map_err(backend_error)?;
                    let inverse: Vec<f32> = window
                        .valid
                        .iter()
                        .map(|&v| 1.0 / v.max(1) as f32)
                        .collect();
                    let shape = *sum.shape();
                    let inverse: Vector<D> = dev.tensor((inverse, (shape.0,)));
                    let inverse = inverse
                        .try_broadcast_like::<_, Axis<1>>(&shape)
                        .map_err(backend_error)?;
                    sum.try_mul(inverse).map_err(backend_error)?
                }
                (Kernel::Pad(pad), _) => {
                    let window = Window::new(n, in_shape(0), (1, 1), 1, *pad);
                    self.gather_one(input(0)?, &window)?
                }
                (Kernel::Crop([top, _, left, _]), _) => {
                    let [h, w, _] = in_shape(0);
                    let [ho, wo, _] = step.shape;
                    let mut window = Window::new(n, [h, w, 0], (1, 1), 1, [0; 4]);
                    window.ho = ho;
                    window.wo = wo;
                    window.offset = (*top, *left);
                    self.gather_one(input(0)?, &window.recomputed())?
                }
                (Kernel::GlobalAvgPool, _) => {
                    let [h, w, c] = in_shape(0);
                    input(0)?
                        .try_reshape_like(&(n, h * w, c))
                        .and_then(|t| t.try_mean::<(usize, usize), Axis<1>>())
                        .map_err(backend_error)?
                }
                _ => {
                    return Err(Error::Backend(format!(
                        "step {} has no weights on the device",
                        step.name
                    )))
                }
            };
            values[i] = Some(out);
        }
        let [h, w, c] = steps.last().map_or([0; 3], |s| s.shape);
        values
            .pop()
            .flatten()
            .ok_or_else(|| Error::Backend("an empty network".into()))?
            .try_reshape_like(&(n, h * w, c))
            .and_then(|t| t.try_mean::<(usize, usize), Axis<1>>())
            .map_err(backend_error)
    }

    /// A one-tap window (padding, cropping): `[pixels, channels]`.
    fn gather_one(&self, x: Matrix<D>, window: &Window) -> Result<Matrix<D>> {
        let padded = with_fill_row(x, 0.0)?;
        let idx: Tensor<(usize,), usize, D> = self
            .device
            .tensor((window.indices.clone(), (window.pixels(),)));
        padded.try_gather(idx).map_err(backend_error)
    }
}

/// Every tap of every output pixel of `window`, `[pixels, taps, channels]`; taps outside the
/// image read `fill`. `x` may carry a tape (fine-tuning's depthwise convolutions).
pub(crate) fn gather_taps<D: DfdxDevice, T>(
    x: Tensor<(usize, usize), f32, D, T>,
    window: &Window,
    fill: f32,
) -> Result<Taps<D, T>>
where
    T: Tape<f32, D> + Merge<NoneTape>,
{
    let dev = x.device().clone();
    let padded = with_fill_row(x, fill)?;
    let idx: Tensor<(usize, usize), usize, D> =
        dev.tensor((window.indices.clone(), (window.pixels(), window.taps())));
    padded.try_gather(idx).map_err(backend_error)
}

/// `x` with one more row of `fill` at the end (what padded taps point at).
fn with_fill_row<D: DfdxDevice, T>(
    x: Tensor<(usize, usize), f32, D, T>,
    fill: f32,
) -> Result<Tensor<(usize, usize), f32, D, T>>
where
    T: Tape<f32, D> + Merge<NoneTape>,
{
    let c = x.shape().1;
    let row: Matrix<D> = x.device().tensor((vec![fill; c], (1, c)));
    (x, row).try_concat_along(Axis::<0>).map_err(backend_error)
}

/// Where each tap of each output pixel reads, in `[n·h·w (+ the fill row), c]`.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    n: usize,
    h: usize,
    w: usize,
    kernel: (usize, usize),
    stride: usize,
    /// (top, left) padding — or, for a crop, how many rows and columns are skipped.
    pad: (usize, usize),
    offset: (usize, usize),
    ho: usize,
    wo: usize,
    /// `[pixels, taps]` row indices; `n·h·w` is the fill row.
    indices: Vec<usize>,
    /// Valid taps per output pixel.
    valid: Vec<usize>,
}

impl Window {
    pub(crate) fn new(
        n: usize,
        [h, w, _]: Shape,
        kernel: (usize, usize),
        stride: usize,
        pad: [usize; 4],
    ) -> Window {
        let stride = stride.max(1);
        let ho = (h + pad[0] + pad[1]).saturating_sub(kernel.0) / stride + 1;
        let wo = (w + pad[2] + pad[3]).saturating_sub(kernel.1) / stride + 1;
        Window {
            n,
            h,
            w,
            kernel,
            stride,
            pad: (pad[0], pad[2]),
            offset: (0, 0),
            ho,
            wo,
            indices: Vec::new(),
            valid: Vec::new(),
        }
        .recomputed()
    }

    fn recomputed(mut self) -> Window {
        let (kh, kw) = self.kernel;
        let fill = self.n * self.h * self.w;
        self.indices = Vec::with_capacity(self.pixels() * kh * kw);
        self.valid = Vec::with_capacity(self.pixels());
        for b in 0..self.n {
            for oy in 0..self.ho {
                for ox in 0..self.wo {
                    let mut valid = 0;
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * self.stride + ky + self.offset.0)
                                .checked_sub(self.pad.0)
                                .filter(|&y| y < self.h);
                            let ix = (ox * self.stride + kx + self.offset.1)
                                .checked_sub(self.pad.1)
                                .filter(|&x| x < self.w);
                            self.indices.push(match (iy, ix) {
                                (Some(y), Some(x)) => {
                                    valid += 1;
                                    (b * self.h + y) * self.w + x
                                }
                                _ => fill,
                            });
                        }
                    }
                    self.valid.push(valid);
                }
            }
        }
        self
    }

    pub(crate) fn pixels(&self) -> usize {
        self.n * self.ho * self.wo
    }

    /// Taps per output pixel: the kernel's height times its width.
    pub(crate) fn taps(&self) -> usize {
        self.kernel.0 * self.kernel.1
    }
}

/// `y + bias` with the bias broadcast over rows; either may carry a tape (fine-tuning).
pub(crate) fn add_row<D: DfdxDevice, T, R>(
    y: Tensor<(usize, usize), f32, D, T>,
    bias: Tensor<(usize,), f32, D, R>,
) -> Result<Tensor<(usize, usize), f32, D, T>>
where
    T: Tape<f32, D> + Merge<R>,
    R: Tape<f32, D>,
{
    let shape = *y.shape();
    let b = bias
        .try_broadcast_like::<_, Axis<0>>(&shape)
        .map_err(backend_error)?;
    y.try_add(b).map_err(backend_error)
}

/// Applies `activation`; `x` may carry a tape (fine-tuning). Where `x` is read twice
/// (swish, hard-swish) the first read gets a copy with an empty tape, so the tape's record
/// reaches the result once.
pub(crate) fn activate<D: DfdxDevice, T>(
    x: Tensor<(usize, usize), f32, D, T>,
    activation: Activation,
) -> Result<Tensor<(usize, usize), f32, D, T>>
where
    T: Tape<f32, D> + Merge<T> + Default,
{
    let hard_sigmoid = |x: Tensor<(usize, usize), f32, D, T>| {
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
