//! The network on dfdx tensors with run-time shapes: `Cpu`, or `Cuda` with the `cuda` feature.
//!
//! dfdx 0.13's `conv2d` needs its `nightly` feature, so convolutions are built from ops that
//! work on stable with `usize` shapes. Activations are `[pixels, channels]` matrices:
//! - a 1×1 convolution is a matmul;
//! - a 3×3 convolution gathers its 9 taps per output pixel with one `gather` over a
//!   precomputed index tensor (padding points at an appended zero row, and stride 2 simply
//!   skips pixels), giving `[M, 9, C]`; the stem then multiplies `[M, 27]` by `[27, cout]`,
//!   a depthwise layer multiplies by `[9, C]` and sums the taps.

use dfdx::shapes::{Axis, HasShape};
use dfdx::tensor::{Tensor, TensorFrom};
use dfdx::tensor_ops::*;

use super::{tap_indices, Layer, Network};
use crate::device::dfdx_error as backend_error;
pub use crate::device::DfdxDevice;
use crate::error::{Error, Result};

type Matrix<D> = Tensor<(usize, usize), f32, D>;
type Vector<D> = Tensor<(usize,), f32, D>;
/// `[pixels, 9 taps, channels]`.
type Taps<D> = Tensor<(usize, usize, usize), f32, D>;

enum DeviceLayer<D: DfdxDevice> {
    Stem {
        weights: Matrix<D>,
        bias: Vector<D>,
        stride: usize,
    },
    Pointwise {
        weights: Matrix<D>,
        bias: Vector<D>,
        relu6: bool,
    },
    Depthwise {
        weights: Matrix<D>,
        bias: Vector<D>,
        stride: usize,
    },
    SaveResidual,
    AddResidual,
}

/// A [`Network`] whose weights live on a dfdx device.
pub struct DfdxNetwork<D: DfdxDevice> {
    device: D,
    resolution: usize,
    layers: Vec<DeviceLayer<D>>,
}

impl<D: DfdxDevice> std::fmt::Debug for DfdxNetwork<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DfdxNetwork")
            .field("resolution", &self.resolution)
            .field("layers", &self.layers.len())
            .finish()
    }
}

impl<D: DfdxDevice> DfdxNetwork<D> {
    /// Uploads the folded weights to `device`.
    pub fn new(network: &Network, device: D) -> Result<Self> {
        let matrix = |values: &[f32], cols: usize| -> Result<Matrix<D>> {
            let mut t = device
                .try_zeros_like(&(values.len() / cols, cols))
                .map_err(backend_error)?;
            t.copy_from(values);
            Ok(t)
        };
        let vector = |values: &[f32]| -> Result<Vector<D>> {
            let mut t = device
                .try_zeros_like(&(values.len(),))
                .map_err(backend_error)?;
            t.copy_from(values);
            Ok(t)
        };
        let layers = network
            .layers()
            .iter()
            .map(|layer| {
                Ok(match layer {
                    Layer::Stem {
                        weights,
                        bias,
                        stride,
                    } => DeviceLayer::Stem {
                        weights: matrix(weights, bias.len())?,
                        bias: vector(bias)?,
                        stride: *stride,
                    },
                    Layer::Pointwise {
                        weights,
                        bias,
                        relu6,
                        ..
                    } => DeviceLayer::Pointwise {
                        weights: matrix(weights, bias.len())?,
                        bias: vector(bias)?,
                        relu6: *relu6,
                    },
                    Layer::Depthwise {
                        weights,
                        bias,
                        stride,
                    } => DeviceLayer::Depthwise {
                        weights: matrix(weights, bias.len())?,
                        bias: vector(bias)?,
                        stride: *stride,
                    },
                    Layer::SaveResidual => DeviceLayer::SaveResidual,
                    Layer::AddResidual => DeviceLayer::AddResidual,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DfdxNetwork {
            device,
            resolution: network.model().resolution,
            layers,
        })
    }

    /// Features of `n` images given as NHWC pixels in [0, 1]: a `[n, features]` tensor.
    pub fn forward(&self, pixels: &[f32], n: usize) -> Result<Matrix<D>> {
        let r = self.resolution;
        if pixels.len() != n * r * r * 3 {
            return Err(Error::InvalidArgument(format!(
                "expected {n} images of {r}×{r}×3 values ({}), got {}",
                n * r * r * 3,
                pixels.len()
            )));
        }
        let dev = &self.device;
        let mut x: Matrix<D> = dev.try_zeros_like(&(n * r * r, 3)).map_err(backend_error)?;
        x.copy_from(pixels);
        // The TF-Hub module takes [0, 1]; Keras' MobileNet V2 expects [-1, 1].
        let mut x = x
            .try_mul(2.0)
            .and_then(|t| t.try_sub(1.0))
            .map_err(backend_error)?;
        let (mut h, mut w) = (r, r);
        let mut residual: Option<Matrix<D>> = None;
        for layer in &self.layers {
            x = match layer {
                DeviceLayer::Stem {
                    weights,
                    bias,
                    stride,
                } => {
                    let (taps, ho, wo) = self.gather_taps(x, n, h, w, *stride)?;
                    (h, w) = (ho, wo);
                    let m = n * h * w;
                    let cin = taps.shape().2;
                    let flat = taps
                        .try_reshape_like(&(m, 9 * cin))
                        .map_err(backend_error)?;
                    let y = flat.try_matmul(weights.clone()).map_err(backend_error)?;
                    add_bias(y, bias, true)?
                }
                DeviceLayer::Depthwise {
                    weights,
                    bias,
                    stride,
                } => {
                    let (taps, ho, wo) = self.gather_taps(x, n, h, w, *stride)?;
                    (h, w) = (ho, wo);
                    let shape = *taps.shape();
                    let kernel = weights
                        .clone()
                        .try_broadcast_like::<_, Axis<0>>(&shape)
                        .map_err(backend_error)?;
                    let y = taps
                        .try_mul(kernel)
                        .and_then(|t| t.try_sum::<(usize, usize), Axis<1>>())
                        .map_err(backend_error)?;
                    add_bias(y, bias, true)?
                }
                DeviceLayer::Pointwise {
                    weights,
                    bias,
                    relu6,
                } => {
                    let y = x.try_matmul(weights.clone()).map_err(backend_error)?;
                    add_bias(y, bias, *relu6)?
                }
                DeviceLayer::SaveResidual => {
                    residual = Some(x.clone());
                    x
                }
                DeviceLayer::AddResidual => match residual.take() {
                    Some(saved) => x.try_add(saved).map_err(backend_error)?,
                    None => {
                        return Err(Error::Backend("residual add without a saved input".into()))
                    }
                },
            };
        }
        let c = x.shape().1;
        x.try_reshape_like(&(n, h * w, c))
            .and_then(|t| t.try_mean::<(usize, usize), Axis<1>>())
            .map_err(backend_error)
    }

    /// `[M, 9, C]`: the 3×3 neighbourhood of each output pixel of a SAME convolution.
    fn gather_taps(
        &self,
        x: Matrix<D>,
        n: usize,
        h: usize,
        w: usize,
        stride: usize,
    ) -> Result<(Taps<D>, usize, usize)> {
        let (ho, wo, idx) = tap_indices(n, h, w, stride);
        let c = x.shape().1;
        let zero_row: Matrix<D> = self.device.try_zeros_like(&(1, c)).map_err(backend_error)?;
        let padded = (x, zero_row)
            .try_concat_along(Axis::<0>)
            .map_err(backend_error)?;
        let idx: Tensor<(usize, usize), usize, D> =
            self.device.tensor((idx, (n * ho * wo, 9usize)));
        let taps = padded.try_gather(idx).map_err(backend_error)?;
        Ok((taps, ho, wo))
    }
}

fn add_bias<D: DfdxDevice>(y: Matrix<D>, bias: &Vector<D>, relu6: bool) -> Result<Matrix<D>> {
    let shape = *y.shape();
    let b = bias
        .clone()
        .try_broadcast_like::<_, Axis<0>>(&shape)
        .map_err(backend_error)?;
    let y = y.try_add(b).map_err(backend_error)?;
    if relu6 {
        y.try_clamp(0.0, 6.0).map_err(backend_error)
    } else {
        Ok(y)
    }
}
