//! One small graph for every architecture: Keras layers as nodes, in the order Keras builds
//! them, each with its Keras name and the nodes it reads. No maths here — backends interpret
//! the graph once its weights are attached ([`crate::backend::Network`]).

use crate::error::{Error, Result};

/// Index of a node in [`Graph::nodes`].
pub type NodeId = usize;

/// Element-wise non-linearities, as Keras computes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Activation {
    /// Identity.
    Linear,
    /// max(0, x).
    Relu,
    /// min(max(0, x), 6).
    Relu6,
    /// x · sigmoid(x) (Keras "swish").
    Swish,
    /// x · relu6(x + 3) / 6 (MobileNet V3).
    HardSwish,
    /// 1 / (1 + e^−x).
    Sigmoid,
    /// relu6(x + 3) / 6 (MobileNet V3's).
    HardSigmoid,
}

/// How a window is padded, exactly as TensorFlow does it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Padding {
    /// Output `ceil(in / stride)`; the padding total split with the odd one after.
    Same,
    /// No padding.
    Valid,
}

/// What a node computes. Weighted ops read their tensors from the weight file under the
/// node's name.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// The image, `[resolution, resolution, 3]`, in [0, 1].
    Input,
    /// Keras `Conv2D` (`kernel` `[kh, kw, cin, filters]`, optional `bias`).
    Conv {
        /// Output channels.
        filters: usize,
        /// (kh, kw).
        kernel: (usize, usize),
        /// Both directions.
        stride: usize,
        /// Padding mode.
        padding: Padding,
        /// Whether a `bias` tensor is added.
        bias: bool,
        /// Applied after (Keras' `activation=` argument).
        activation: Activation,
    },
    /// Keras `DepthwiseConv2D` (`depthwise_kernel` `[kh, kw, c, 1]`, optional `bias`).
    Depthwise {
        /// (kh, kw).
        kernel: (usize, usize),
        /// Both directions.
        stride: usize,
        /// Padding mode.
        padding: Padding,
        /// Whether a `bias` tensor is added.
        bias: bool,
    },
    /// The 1×1 half of a Keras `SeparableConv2D` (`pointwise_kernel` `[1, 1, cin, filters]`,
    /// no bias); its depthwise half is a [`Op::Depthwise`] node of the same name.
    SeparablePointwise {
        /// Output channels.
        filters: usize,
    },
    /// Keras `BatchNormalization` (`gamma` unless `scale` is false, `beta`, `moving_mean`,
    /// `moving_variance`); folded into the convolution before it where there is one.
    BatchNorm {
        /// ε added to the variance.
        epsilon: f32,
        /// Whether a `gamma` tensor exists (Inception V3's have none).
        scale: bool,
    },
    /// An activation layer.
    Activation(Activation),
    /// Element-wise sum of the inputs.
    Add,
    /// Element-wise product; a `[1, 1, C]` input is broadcast (squeeze-and-excitation).
    Multiply,
    /// Concatenation along channels.
    Concat,
    /// Max pooling.
    MaxPool {
        /// Window (kh, kw).
        size: (usize, usize),
        /// Both directions.
        stride: usize,
        /// Padding mode (padded taps are ignored).
        padding: Padding,
    },
    /// Average pooling; with "same" padding it divides by the number of valid taps.
    AvgPool {
        /// Window (kh, kw).
        size: (usize, usize),
        /// Both directions.
        stride: usize,
        /// Padding mode.
        padding: Padding,
    },
    /// Keras `ZeroPadding2D`: (top, bottom, left, right).
    ZeroPad([usize; 4]),
    /// Keras `Cropping2D`: (top, bottom, left, right).
    Crop([usize; 4]),
    /// Keras `GlobalAveragePooling2D`, as a `[1, 1, C]` map.
    GlobalAvgPool,
    /// Keras `Rescaling`: `x · scale + offset`, per channel when `scale` has 3 values.
    Rescale {
        /// One value, or one per channel.
        scale: Vec<f32>,
        /// Added after scaling.
        offset: f32,
    },
    /// Keras `Normalization` (`mean`, `variance`): `(x − mean) / max(√variance, 1e-7)`.
    Normalize,
}

impl Op {
    /// The weight tensors Keras stores for this op, in file order.
    pub fn weight_names(&self) -> Vec<&'static str> {
        match self {
            Op::Conv { bias: true, .. } => vec!["kernel", "bias"],
            Op::Conv { .. } => vec!["kernel"],
            Op::Depthwise { bias: true, .. } => vec!["depthwise_kernel", "bias"],
            Op::Depthwise { .. } => vec!["depthwise_kernel"],
            Op::SeparablePointwise { .. } => vec!["pointwise_kernel"],
            Op::BatchNorm { scale: true, .. } => {
                vec!["gamma", "beta", "moving_mean", "moving_variance"]
            }
            Op::BatchNorm { .. } => vec!["beta", "moving_mean", "moving_variance"],
            Op::Normalize => vec!["mean", "variance", "count"],
            _ => Vec::new(),
        }
    }
}

impl Op {
    /// The shape Keras stores weight `name` in, for an input of `channels` channels.
    pub fn weight_shape(&self, name: &str, channels: usize) -> Vec<usize> {
        match (self, name) {
            (
                Op::Conv {
                    kernel, filters, ..
                },
                "kernel",
            ) => {
                vec![kernel.0, kernel.1, channels, *filters]
            }
            (Op::Conv { filters, .. }, _) => vec![*filters],
            (Op::SeparablePointwise { filters }, _) => vec![1, 1, channels, *filters],
            (Op::Depthwise { kernel, .. }, "depthwise_kernel") => {
                vec![kernel.0, kernel.1, channels, 1]
            }
            (Op::Normalize, "count") => vec![],
            _ => vec![channels],
        }
    }
}

/// One layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Keras' layer name: weights are found under it.
    pub name: String,
    /// What it computes.
    pub op: Op,
    /// The nodes it reads, all earlier in the graph.
    pub inputs: Vec<NodeId>,
}

/// An architecture: nodes in topological order; node 0 is the input, the last node's output
/// is global-average-pooled into the feature vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    /// Input height and width.
    pub resolution: usize,
    /// The layers.
    pub nodes: Vec<Node>,
    /// The family's blocks, as Keras names them (`block_16`, `expanded_conv_14`,
    /// `block7a`, `conv5_block3`, `mixed10`, `normal_12`), in order: the units fine-tuning
    /// unfreezes from the top.
    pub blocks: Vec<Block>,
}

/// Where one block of a family starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Keras' name for it (the prefix of its layers' names).
    pub name: String,
    /// Its first node; every node after it up to the next block's first belongs to it.
    pub first: NodeId,
}

/// `[height, width, channels]` of a node's output.
pub type Shape = [usize; 3];

/// Output size and padding before of a window op along one axis.
pub fn window(
    input: usize,
    size: usize,
    stride: usize,
    padding: Padding,
) -> Option<(usize, usize)> {
    let stride = stride.max(1);
    match padding {
        Padding::Same => {
            let out = input.div_ceil(stride);
            let total = (out.checked_sub(1)? * stride + size).saturating_sub(input);
            Some((out, total / 2))
        }
        Padding::Valid => Some((input.checked_sub(size)? / stride + 1, 0)),
    }
}

impl Graph {
    /// Every node's output shape, checking that inputs exist, come earlier and fit together.
    pub fn shapes(&self) -> Result<Vec<Shape>> {
        let mut shapes: Vec<Shape> = Vec::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            let bad = |reason: String| {
                Error::InvalidArgument(format!("layer {} ({i}): {reason}", node.name))
            };
            let inputs: Vec<Shape> = node
                .inputs
                .iter()
                .map(|&j| {
                    shapes
                        .get(j)
                        .copied()
                        .ok_or_else(|| bad(format!("reads node {j}, which is not before it")))
                })
                .collect::<Result<_>>()?;
            let first = || {
                inputs
                    .first()
                    .copied()
                    .ok_or_else(|| bad("has no input".into()))
            };
            let spatial = |[h, w, c]: Shape, size: (usize, usize), stride, padding, out_c| {
                let (ho, _) = window(h, size.0, stride, padding)
                    .ok_or_else(|| bad(format!("a {}×{} window on {h}×{w}", size.0, size.1)))?;
                let (wo, _) = window(w, size.1, stride, padding)
                    .ok_or_else(|| bad(format!("a {}×{} window on {h}×{w}", size.0, size.1)))?;
                let _ = c;
                Ok::<Shape, Error>([ho, wo, out_c])
            };
            let shape = match &node.op {
                Op::Input => {
                    if i != 0 || !node.inputs.is_empty() {
                        return Err(bad("the input must be node 0".into()));
                    }
                    [self.resolution, self.resolution, 3]
                }
                Op::Conv {
                    filters,
                    kernel,
                    stride,
                    padding,
                    ..
                } => spatial(first()?, *kernel, *stride, *padding, *filters)?,
                Op::SeparablePointwise { filters } => {
                    let [h, w, _] = first()?;
                    [h, w, *filters]
                }
                Op::Depthwise {
                    kernel,
                    stride,
                    padding,
                    ..
                } => {
                    let s = first()?;
                    spatial(s, *kernel, *stride, *padding, s[2])?
                }
                Op::MaxPool {
                    size,
                    stride,
                    padding,
                }
                | Op::AvgPool {
                    size,
                    stride,
                    padding,
                } => {
                    let s = first()?;
                    spatial(s, *size, *stride, *padding, s[2])?
                }
                Op::BatchNorm { .. } | Op::Activation(_) | Op::Rescale { .. } | Op::Normalize => {
                    first()?
                }
                Op::Add => {
                    let s = first()?;
                    if inputs.len() < 2 || inputs.iter().any(|&o| o != s) {
                        return Err(bad(format!("adds shapes {inputs:?}")));
                    }
                    s
                }
                Op::Multiply => match inputs.as_slice() {
                    [a, b] if a == b => *a,
                    [a, [1, 1, c]] | [[1, 1, c], a] if a[2] == *c => *a,
                    _ => return Err(bad(format!("multiplies shapes {inputs:?}"))),
                },
                Op::Concat => {
                    let [h, w, _] = first()?;
                    if inputs.iter().any(|&[ih, iw, _]| (ih, iw) != (h, w)) {
                        return Err(bad(format!("concatenates shapes {inputs:?}")));
                    }
                    [h, w, inputs.iter().map(|s| s[2]).sum()]
                }
                Op::ZeroPad([t, b, l, r]) => {
                    let [h, w, c] = first()?;
                    [h + t + b, w + l + r, c]
                }
                Op::Crop([t, b, l, r]) => {
                    let [h, w, c] = first()?;
                    match (h.checked_sub(t + b), w.checked_sub(l + r)) {
                        (Some(ho), Some(wo)) if ho > 0 && wo > 0 => [ho, wo, c],
                        _ => return Err(bad(format!("crops {h}×{w} to nothing"))),
                    }
                }
                Op::GlobalAvgPool => {
                    let [_, _, c] = first()?;
                    [1, 1, c]
                }
            };
            if shape.contains(&0) {
                return Err(bad(format!("has an empty output {shape:?}")));
            }
            shapes.push(shape);
        }
        if shapes.is_empty() {
            return Err(Error::InvalidArgument("an empty graph".into()));
        }
        Ok(shapes)
    }
}

impl Graph {
    /// Weights in all, as Keras counts them (batch-norm statistics included).
    pub fn parameters(&self) -> Result<usize> {
        let shapes = self.shapes()?;
        Ok(self
            .nodes
            .iter()
            .map(|node| {
                let channels = node
                    .inputs
                    .first()
                    .and_then(|&i| shapes.get(i))
                    .map_or(3, |s| s[2]);
                node.op
                    .weight_names()
                    .iter()
                    .map(|w| node.op.weight_shape(w, channels).iter().product::<usize>())
                    .sum::<usize>()
            })
            .sum())
    }

    /// Multiply-adds of the convolutions for one image.
    pub fn multiply_adds(&self) -> Result<usize> {
        let shapes = self.shapes()?;
        let mut total = 0usize;
        for (node, [h, w, c]) in self.nodes.iter().zip(&shapes) {
            let cin = node
                .inputs
                .first()
                .and_then(|&i| shapes.get(i))
                .map_or(3, |s| s[2]);
            total += match &node.op {
                Op::Conv { kernel, .. } => h * w * c * kernel.0 * kernel.1 * cin,
                Op::Depthwise { kernel, .. } => h * w * c * kernel.0 * kernel.1,
                Op::SeparablePointwise { .. } => h * w * c * cin,
                _ => 0,
            };
        }
        Ok(total)
    }
}

/// Builds a graph the way a Keras Applications function builds its model: one call per
/// layer, each returning the new node.
#[derive(Debug)]
pub struct GraphBuilder {
    graph: Graph,
}

impl GraphBuilder {
    /// A graph with its input node (node 0).
    pub fn new(resolution: usize) -> (GraphBuilder, NodeId) {
        let graph = Graph {
            resolution,
            nodes: vec![Node {
                name: "input".into(),
                op: Op::Input,
                inputs: Vec::new(),
            }],
            blocks: Vec::new(),
        };
        (GraphBuilder { graph }, 0)
    }

    /// Marks the next layer added as the first of block `name`.
    pub fn begin_block(&mut self, name: impl Into<String>) {
        self.graph.blocks.push(Block {
            name: name.into(),
            first: self.graph.nodes.len(),
        });
    }

    /// Adds a layer.
    pub fn layer(&mut self, name: impl Into<String>, op: Op, inputs: &[NodeId]) -> NodeId {
        self.graph.nodes.push(Node {
            name: name.into(),
            op,
            inputs: inputs.to_vec(),
        });
        self.graph.nodes.len() - 1
    }

    /// `Conv2D` without bias or activation.
    pub fn conv(
        &mut self,
        x: NodeId,
        name: &str,
        filters: usize,
        kernel: (usize, usize),
        stride: usize,
        padding: Padding,
    ) -> NodeId {
        self.conv_with(
            x,
            name,
            filters,
            kernel,
            stride,
            padding,
            false,
            Activation::Linear,
        )
    }

    /// `Conv2D` with every option.
    #[allow(clippy::too_many_arguments)]
    pub fn conv_with(
        &mut self,
        x: NodeId,
        name: &str,
        filters: usize,
        kernel: (usize, usize),
        stride: usize,
        padding: Padding,
        bias: bool,
        activation: Activation,
    ) -> NodeId {
        let op = Op::Conv {
            filters,
            kernel,
            stride,
            padding,
            bias,
            activation,
        };
        self.layer(name, op, &[x])
    }

    /// `DepthwiseConv2D` without bias.
    pub fn depthwise(
        &mut self,
        x: NodeId,
        name: &str,
        kernel: usize,
        stride: usize,
        padding: Padding,
    ) -> NodeId {
        let op = Op::Depthwise {
            kernel: (kernel, kernel),
            stride,
            padding,
            bias: false,
        };
        self.layer(name, op, &[x])
    }

    /// Keras `SeparableConv2D` without bias: a depthwise and a 1×1 node, both named `name`.
    pub fn separable(
        &mut self,
        x: NodeId,
        name: &str,
        filters: usize,
        kernel: usize,
        stride: usize,
        padding: Padding,
    ) -> NodeId {
        let x = self.depthwise(x, name, kernel, stride, padding);
        self.layer(name, Op::SeparablePointwise { filters }, &[x])
    }

    /// A 1×1, stride-1 `Conv2D` without bias, then its `BatchNormalization`: the expand and
    /// project layers of every inverted-residual family.
    pub fn pointwise_bn(
        &mut self,
        x: NodeId,
        conv: &str,
        bn: &str,
        filters: usize,
        epsilon: f32,
    ) -> NodeId {
        let x = self.conv(x, conv, filters, (1, 1), 1, Padding::Same);
        self.bn(x, bn, epsilon)
    }

    /// Squeeze-and-excitation: global average → 1×1 conv with bias and `inner` → 1×1 conv
    /// with bias and `gate` → product with `x`. `names`: the pooling, the two convolutions
    /// and the product.
    pub fn squeeze_excite(
        &mut self,
        x: NodeId,
        names: [&str; 4],
        squeeze: usize,
        inner: Activation,
        gate: Activation,
    ) -> NodeId {
        let [pool, reduce, expand, product] = names;
        let filters = self.shape(x)[2];
        let s = self.layer(pool, Op::GlobalAvgPool, &[x]);
        let s = self.conv_with(s, reduce, squeeze, (1, 1), 1, Padding::Same, true, inner);
        let s = self.conv_with(s, expand, filters, (1, 1), 1, Padding::Same, true, gate);
        self.layer(product, Op::Multiply, &[x, s])
    }

    /// The output shape of node `x` so far.
    pub fn shape(&self, x: NodeId) -> Shape {
        self.graph
            .shapes()
            .ok()
            .and_then(|s| s.get(x).copied())
            .expect("invariant: the family builders make valid graphs")
    }

    /// Keras Applications' way into a strided window: stride 2 gets an explicit
    /// `ZeroPadding2D(correct_pad(x, kernel))` named `pad_name` and a "valid" window; stride 1
    /// a "same" one. Returns the (maybe padded) node and the padding for the window.
    pub fn pad_for_stride(
        &mut self,
        x: NodeId,
        pad_name: &str,
        kernel: usize,
        stride: usize,
    ) -> (NodeId, Padding) {
        if stride == 2 {
            let size = self.shape(x)[0];
            let padded = self.layer(pad_name, Op::ZeroPad(correct_pad(size, kernel)), &[x]);
            (padded, Padding::Valid)
        } else {
            (x, Padding::Same)
        }
    }

    /// Keras `Rescaling` by one factor: `x · scale + offset`.
    pub fn rescale(&mut self, x: NodeId, name: &str, scale: f32, offset: f32) -> NodeId {
        let op = Op::Rescale {
            scale: vec![scale],
            offset,
        };
        self.layer(name, op, &[x])
    }

    /// The kit's input is [0, 1]; models trained on [-1, 1] (MobileNet V2, Inception V3,
    /// ResNet V2, NASNet) start with this rescaling.
    pub fn from_unit_to_symmetric(&mut self, x: NodeId) -> NodeId {
        self.rescale(x, "scale_to_minus_one_one", 2.0, -1.0)
    }

    /// Models that rescale inside (EfficientNet, MobileNet V3) take 0–255: this comes first.
    pub fn from_unit_to_bytes(&mut self, x: NodeId) -> NodeId {
        self.rescale(x, "scale_to_0_255", 255.0, 0.0)
    }

    /// `BatchNormalization` with a `gamma`.
    pub fn bn(&mut self, x: NodeId, name: &str, epsilon: f32) -> NodeId {
        self.layer(
            name,
            Op::BatchNorm {
                epsilon,
                scale: true,
            },
            &[x],
        )
    }

    /// An activation layer.
    pub fn act(&mut self, x: NodeId, name: &str, activation: Activation) -> NodeId {
        self.layer(name, Op::Activation(activation), &[x])
    }

    /// The graph so far.
    pub fn peek(&self) -> &Graph {
        &self.graph
    }

    /// The finished graph.
    pub fn finish(self) -> Graph {
        self.graph
    }
}

/// TF's `imagenet_utils.correct_pad`: the `ZeroPadding2D` before a stride-2 "valid"
/// convolution of size `kernel` on a `size × size` map.
pub fn correct_pad(size: usize, kernel: usize) -> [usize; 4] {
    let adjust = 1 - size % 2;
    let correct = kernel / 2;
    [
        correct - adjust.min(correct),
        correct,
        correct - adjust.min(correct),
        correct,
    ]
}
