//! Running a network: its weights prepared once (batch norm folded), then executed by a
//! backend. [`dfdx`] runs on dfdx tensors, on the CPU or (feature `cuda`) an NVIDIA GPU.

pub mod dfdx;
pub mod native;

use crate::error::Result;
use crate::models::{MobileNetV2, Op};
use crate::weights::KerasWeights;

/// Keras' BatchNormalization epsilon in MobileNet V2.
pub const BN_EPSILON: f32 = 1e-3;

/// One executable step with batch norm folded into the convolution.
#[derive(Debug, Clone, PartialEq)]
pub enum Layer {
    /// 3×3 conv over RGB: `weights` is [27, cout], rows in (ky, kx, cin) order.
    Stem {
        /// [27, cout].
        weights: Vec<f32>,
        /// [cout].
        bias: Vec<f32>,
        /// Stride.
        stride: usize,
    },
    /// 1×1 conv: `weights` is [cin, cout].
    Pointwise {
        /// [cin, cout].
        weights: Vec<f32>,
        /// [cout].
        bias: Vec<f32>,
        /// Input channels.
        cin: usize,
        /// Whether ReLU6 follows.
        relu6: bool,
    },
    /// 3×3 depthwise conv: `weights` is [9, channels], rows in (ky, kx) order.
    Depthwise {
        /// [9, channels].
        weights: Vec<f32>,
        /// [channels].
        bias: Vec<f32>,
        /// Stride.
        stride: usize,
    },
    /// Remember the activation for a residual connection.
    SaveResidual,
    /// Add the remembered activation.
    AddResidual,
}

/// A MobileNet V2 ready to run: its layer table with folded weights.
#[derive(Debug, Clone)]
pub struct Network {
    /// The variant.
    pub model: MobileNetV2,
    /// Layers in execution order; global average pooling follows the last one.
    pub layers: Vec<Layer>,
    /// Identifies the weights (SHA-256 of the file, or a description of random weights).
    pub weights_id: String,
    /// The weight file the network was read from, if any.
    pub weights_path: Option<std::path::PathBuf>,
}

impl Network {
    /// Builds the network from Keras weights, folding each batch norm into its convolution.
    /// A missing tensor or a wrong shape is an error naming the tensor and the file.
    pub fn from_keras(model: MobileNetV2, weights: &KerasWeights) -> Result<Network> {
        let layers = model
            .ops()
            .into_iter()
            .map(|op| {
                let conv = |name: &str, weight: &str, shape: &[usize]| -> Result<Vec<f32>> {
                    Ok(weights.get(name, weight, shape)?.values.clone())
                };
                let bn = |name: &str, channels: usize| -> Result<BatchNorm> {
                    let get = |w: &str| -> Result<Vec<f32>> {
                        Ok(weights.get(name, w, &[channels])?.values.clone())
                    };
                    Ok(BatchNorm {
                        gamma: get("gamma")?,
                        beta: get("beta")?,
                        mean: get("moving_mean")?,
                        variance: get("moving_variance")?,
                    })
                };
                Ok(match op {
                    Op::Stem {
                        conv: c,
                        bn: b,
                        channels,
                        stride,
                    } => {
                        let (weights, bias) =
                            bn(&b, channels)?.fold(conv(&c, "kernel", &[3, 3, 3, channels])?);
                        Layer::Stem {
                            weights,
                            bias,
                            stride,
                        }
                    }
                    Op::Pointwise {
                        conv: c,
                        bn: b,
                        cin,
                        cout,
                        relu6,
                    } => {
                        let (weights, bias) =
                            bn(&b, cout)?.fold(conv(&c, "kernel", &[1, 1, cin, cout])?);
                        Layer::Pointwise {
                            weights,
                            bias,
                            cin,
                            relu6,
                        }
                    }
                    Op::Depthwise {
                        conv: c,
                        bn: b,
                        channels,
                        stride,
                    } => {
                        let kernel = conv(&c, "depthwise_kernel", &[3, 3, channels, 1])?;
                        let (weights, bias) = bn(&b, channels)?.fold(kernel);
                        Layer::Depthwise {
                            weights,
                            bias,
                            stride,
                        }
                    }
                    Op::SaveResidual => Layer::SaveResidual,
                    Op::AddResidual => Layer::AddResidual,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Network {
            model,
            layers,
            weights_id: weights.digest().to_string(),
            weights_path: Some(weights.path().to_path_buf()),
        })
    }

    /// The network with seeded random weights (He-style scale): for benchmarks, where
    /// throughput does not depend on the values.
    pub fn random(model: MobileNetV2, seed: u64) -> Network {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut fill = |n: usize, fan_in: usize| -> Vec<f32> {
            let scale = (2.0 / fan_in as f32).sqrt();
            (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
        };
        let layers = model
            .ops()
            .into_iter()
            .map(|op| match op {
                Op::Stem {
                    channels, stride, ..
                } => Layer::Stem {
                    weights: fill(27 * channels, 27),
                    bias: vec![0.01; channels],
                    stride,
                },
                Op::Pointwise {
                    cin, cout, relu6, ..
                } => Layer::Pointwise {
                    weights: fill(cin * cout, cin),
                    bias: vec![0.01; cout],
                    cin,
                    relu6,
                },
                Op::Depthwise {
                    channels, stride, ..
                } => Layer::Depthwise {
                    weights: fill(9 * channels, 9),
                    bias: vec![0.01; channels],
                    stride,
                },
                Op::SaveResidual => Layer::SaveResidual,
                Op::AddResidual => Layer::AddResidual,
            })
            .collect();
        Network {
            model,
            layers,
            weights_id: format!("random-seed-{seed}"),
            weights_path: None,
        }
    }

    /// Length of the feature vector.
    pub fn feature_dim(&self) -> usize {
        self.model.feature_dim()
    }
}

struct BatchNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    mean: Vec<f32>,
    variance: Vec<f32>,
}

impl BatchNorm {
    /// Folds `y = γ (x − μ) / √(σ² + ε) + β` into a kernel whose last axis is the channel:
    /// returns the scaled kernel and the bias.
    fn fold(&self, mut kernel: Vec<f32>) -> (Vec<f32>, Vec<f32>) {
        let channels = self.gamma.len();
        let scale: Vec<f32> = self
            .gamma
            .iter()
            .zip(&self.variance)
            .map(|(g, v)| g / (v + BN_EPSILON).sqrt())
            .collect();
        for row in kernel.chunks_exact_mut(channels) {
            for (w, s) in row.iter_mut().zip(&scale) {
                *w *= s;
            }
        }
        let bias = (0..channels)
            .map(|c| self.beta[c] - self.mean[c] * scale[c])
            .collect();
        (kernel, bias)
    }
}

/// For a TF "SAME" 3×3 convolution over `n` images of `h × w`, the source row of each of the
/// 9 taps of each output pixel, in a row-major (image, y, x) activation with one extra zero
/// row at index `n·h·w` standing for the padding. Returns (out h, out w, indices [M, 9]).
pub fn tap_indices(n: usize, h: usize, w: usize, stride: usize) -> (usize, usize, Vec<usize>) {
    use crate::models::mobilenet_v2::{same_output, same_pad_before};
    let (ho, wo) = (same_output(h, stride), same_output(w, stride));
    let (pad_y, pad_x) = (same_pad_before(h, stride), same_pad_before(w, stride));
    let zero_row = n * h * w;
    let mut idx = Vec::with_capacity(n * ho * wo * 9);
    for b in 0..n {
        for oy in 0..ho {
            for ox in 0..wo {
                for ky in 0..3 {
                    for kx in 0..3 {
                        let iy = (oy * stride + ky).checked_sub(pad_y).filter(|&y| y < h);
                        let ix = (ox * stride + kx).checked_sub(pad_x).filter(|&x| x < w);
                        idx.push(match (iy, ix) {
                            (Some(y), Some(x)) => (b * h + y) * w + x,
                            _ => zero_row,
                        });
                    }
                }
            }
        }
    }
    (ho, wo, idx)
}
