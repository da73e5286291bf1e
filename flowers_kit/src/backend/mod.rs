//! Running a network: its weights prepared once (batch norm folded) into a validated
//! [`Network`], then executed by a backend — [`native`] (NHWC kernels for the CPU, the
//! default) or [`dfdx`] (dfdx tensors: the reference on the CPU, and the CUDA path).
//! [`padding`] holds TensorFlow's "SAME" arithmetic that both use.

pub mod dfdx;
pub mod native;
pub mod padding;

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::models::{MobileNetV2, Op};
use crate::weights::KerasWeights;
use padding::same_output;

/// Keras' BatchNormalization epsilon in MobileNet V2.
pub const BN_EPSILON: f32 = 1e-3;

/// Largest input resolution a network is built for: far above any published model, and small
/// enough that every buffer size computed from it fits comfortably in memory and in `usize`.
pub const MAX_RESOLUTION: usize = 2048;

/// One executable step with batch norm folded into the convolution.
#[derive(Debug, Clone, PartialEq)]
pub enum Layer {
    /// 3×3 conv over RGB: `weights` is [27, cout], rows in (ky, kx, cin) order.
    Stem {
        /// [27, cout].
        weights: Vec<f32>,
        /// [cout].
        bias: Vec<f32>,
        /// Stride (1 or 2).
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
        /// Stride (1 or 2).
        stride: usize,
    },
    /// Remember the activation for a residual connection.
    SaveResidual,
    /// Add the remembered activation; must follow a linear (no ReLU6) pointwise layer.
    AddResidual,
}

/// A MobileNet V2 ready to run: its layer table with folded weights.
///
/// Every `Network` has passed [`Network::new`]'s checks — each weight and bias has the length
/// its layer's shape says, channel counts chain from layer to layer, residual adds join equal
/// shapes. The backends' unchecked kernels rely on exactly that, which is why the fields are
/// private and there is no other way to build one.
#[derive(Debug, Clone)]
pub struct Network {
    model: MobileNetV2,
    layers: Vec<Layer>,
    weights_id: String,
    weights_path: Option<PathBuf>,
}

impl Network {
    /// Checks `layers` against `model` and wraps them. `weights_id` identifies the weights in
    /// cache keys and classifier files; `weights_path` is the file they came from, if any.
    ///
    /// ```
    /// use flowers_kit::backend::{Layer, Network};
    /// use flowers_kit::models::MobileNetV2;
    /// let model = MobileNetV2::parse("mobilenet_v2_0.35_96")?;
    /// // A stem whose weights are shorter than [27, 16] is refused, not run.
    /// let bad = vec![Layer::Stem { weights: vec![0.0; 10], bias: vec![0.0; 16], stride: 2 }];
    /// assert!(Network::new(model, bad, "test".into(), None).is_err());
    /// # Ok::<(), flowers_kit::Error>(())
    /// ```
    pub fn new(
        model: MobileNetV2,
        layers: Vec<Layer>,
        weights_id: String,
        weights_path: Option<PathBuf>,
    ) -> Result<Network> {
        validate(&model, &layers)?;
        Ok(Network {
            model,
            layers,
            weights_id,
            weights_path,
        })
    }

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
        Network::new(
            model,
            layers,
            weights.digest().to_string(),
            Some(weights.path().to_path_buf()),
        )
    }

    /// The network with seeded random weights (He-style scale): for benchmarks, where
    /// throughput does not depend on the values.
    pub fn random(model: MobileNetV2, seed: u64) -> Result<Network> {
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
        Network::new(model, layers, format!("random-seed-{seed}"), None)
    }

    /// The variant.
    pub fn model(&self) -> MobileNetV2 {
        self.model
    }

    /// Layers in execution order; global average pooling follows the last one.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Identifies the weights (SHA-256 of the file, or a description of random weights).
    pub fn weights_id(&self) -> &str {
        &self.weights_id
    }

    /// The weight file the network was read from, if any.
    pub fn weights_path(&self) -> Option<&std::path::Path> {
        self.weights_path.as_deref()
    }

    /// Length of the feature vector.
    pub fn feature_dim(&self) -> usize {
        self.model.feature_dim()
    }
}

/// The checks behind [`Network::new`]: shapes walked from the input to the features.
fn validate(model: &MobileNetV2, layers: &[Layer]) -> Result<()> {
    let bad = |i: usize, reason: String| {
        Err(Error::InvalidArgument(format!(
            "{} network, layer {i}: {reason}",
            model.name()
        )))
    };
    let resolution = model.resolution;
    if resolution == 0 || resolution > MAX_RESOLUTION {
        return bad(
            0,
            format!("input resolution {resolution} is outside 1..={MAX_RESOLUTION}"),
        );
    }
    let (mut size, mut channels) = (resolution, 3usize);
    // (size, channels) of the activation saved for a residual add.
    let mut saved: Option<(usize, usize)> = None;
    let mut previous: Option<&Layer> = None;
    for (i, layer) in layers.iter().enumerate() {
        let stride_ok = |stride: usize| stride == 1 || stride == 2;
        match layer {
            Layer::Stem {
                weights,
                bias,
                stride,
            } => {
                if i != 0 {
                    return bad(i, "the stem must be the first layer".into());
                }
                if bias.is_empty() || !stride_ok(*stride) {
                    return bad(
                        i,
                        format!("stem with {} channels, stride {stride}", bias.len()),
                    );
                }
                if Some(weights.len()) != bias.len().checked_mul(27) {
                    return bad(
                        i,
                        format!(
                            "stem weights hold {} values, not 27 × {}",
                            weights.len(),
                            bias.len()
                        ),
                    );
                }
                (size, channels) = (same_output(size, *stride), bias.len());
            }
            Layer::Pointwise {
                weights, bias, cin, ..
            } => {
                if i == 0 {
                    return bad(i, "the first layer must be the stem".into());
                }
                if *cin != channels || bias.is_empty() {
                    return bad(
                        i,
                        format!(
                            "1×1 convolution takes {cin} channels into {}, but its input has {channels}",
                            bias.len()
                        ),
                    );
                }
                if Some(weights.len()) != cin.checked_mul(bias.len()) {
                    return bad(
                        i,
                        format!(
                            "1×1 convolution weights hold {} values, not {cin} × {}",
                            weights.len(),
                            bias.len()
                        ),
                    );
                }
                channels = bias.len();
            }
            Layer::Depthwise {
                weights,
                bias,
                stride,
            } => {
                if i == 0 {
                    return bad(i, "the first layer must be the stem".into());
                }
                if bias.len() != channels || !stride_ok(*stride) {
                    return bad(
                        i,
                        format!(
                            "depthwise convolution with {} biases and stride {stride} on {channels} channels",
                            bias.len()
                        ),
                    );
                }
                if Some(weights.len()) != channels.checked_mul(9) {
                    return bad(
                        i,
                        format!(
                            "depthwise weights hold {} values, not 9 × {channels}",
                            weights.len()
                        ),
                    );
                }
                size = same_output(size, *stride);
            }
            Layer::SaveResidual => {
                if i == 0 || saved.is_some() {
                    return bad(
                        i,
                        "a residual save must follow the stem and not nest".into(),
                    );
                }
                saved = Some((size, channels));
            }
            Layer::AddResidual => {
                let linear_projection =
                    matches!(previous, Some(Layer::Pointwise { relu6: false, .. }));
                if !linear_projection {
                    return bad(
                        i,
                        "a residual add must follow a linear 1×1 convolution".into(),
                    );
                }
                if saved.take() != Some((size, channels)) {
                    return bad(
                        i,
                        format!(
                            "a residual add of a {size}×{size}×{channels} activation without a                              saved input of that shape"
                        ),
                    );
                }
            }
        }
        previous = Some(layer);
    }
    if layers.is_empty() || saved.is_some() || channels != model.feature_dim() {
        return bad(
            layers.len(),
            format!(
                "the network ends with {channels} channels{}, not the {} features of the model",
                if saved.is_some() {
                    " and an unused residual"
                } else {
                    ""
                },
                model.feature_dim()
            ),
        );
    }
    Ok(())
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
    use padding::same_pad_before;
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
