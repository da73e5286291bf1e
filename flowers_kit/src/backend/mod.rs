//! Running a network: a model's [`Graph`] with its weights attached and batch norm folded,
//! prepared once into a validated [`Network`] of [`Step`]s, then executed by a backend —
//! [`native`] (NHWC kernels for the CPU, the default) or [`dfdx`] (dfdx tensors: the
//! reference on the CPU, and the CUDA path). [`padding`] holds TensorFlow's window arithmetic
//! that both use.

mod cut;
pub mod dfdx;
pub mod native;

pub mod padding;

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::models::graph::{Activation, Graph, Op, Shape};
use crate::models::Model;
use crate::weights::KerasWeights;
use padding::resolve;

pub use cut::{BlockStart, Cut, MAX_CUT_VALUES};
/// The network above a [`Cut`], traced for training: what `train` fine-tunes, through this
/// API rather than the dfdx module it lives in.
pub use dfdx::{Matrix, ParamMut, Traced, TrainableSuffix, EVAL_CHUNK};
/// The same steps trained on the CPU by the native kernels' forward and backward passes,
/// for `train` through this API.
pub use native::{NativeSuffix, Parameter, SuffixTape};

/// Largest input resolution a network is built for (defined with the image code, which
/// bounds every resize by it).
pub use crate::data::image::MAX_RESOLUTION;

/// A convolution with its batch norm folded in: `[kh, kw, cin, cout]` weights (depthwise:
/// `[kh, kw, c]`), a bias per output channel, explicit padding and a fused activation.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv {
    /// Kernel height and width.
    pub kernel: (usize, usize),
    /// Both directions.
    pub stride: usize,
    /// Zero padding (top, bottom, left, right).
    pub pad: [usize; 4],
    /// Input channels.
    pub cin: usize,
    /// Output channels (= `cin` for depthwise).
    pub cout: usize,
    /// One filter per channel instead of a full matrix.
    pub depthwise: bool,
    /// `[kh, kw, cin, cout]`, or `[kh, kw, c]` for depthwise, row-major.
    pub weights: Vec<f32>,
    /// `[cout]`.
    pub bias: Vec<f32>,
    /// Applied to the result.
    pub activation: Activation,
}

impl Conv {
    /// A 1×1, stride-1, unpadded, full convolution: a plain matrix product of the input.
    pub fn is_pointwise(&self) -> bool {
        !self.depthwise && self.kernel == (1, 1) && self.stride == 1 && self.pad == [0; 4]
    }
}

/// What one step computes.
#[derive(Debug, Clone, PartialEq)]
pub enum Kernel {
    /// The image in [0, 1].
    Input,
    /// A convolution.
    Conv(Conv),
    /// `act(x · scale + shift)` per channel: a batch norm that follows no convolution, a
    /// normalisation or a rescaling.
    Affine {
        /// `[channels]`.
        scale: Vec<f32>,
        /// `[channels]`.
        shift: Vec<f32>,
        /// Applied to the result.
        activation: Activation,
    },
    /// An activation on its own.
    Activation(Activation),
    /// Sum of the inputs, then an activation.
    Add(Activation),
    /// Product, a `[1, 1, C]` input broadcast.
    Multiply,
    /// Channels of the inputs, one after the other.
    Concat,
    /// Max pooling, padded taps ignored.
    MaxPool {
        /// Window (kh, kw).
        size: (usize, usize),
        /// Both directions.
        stride: usize,
        /// (top, bottom, left, right).
        pad: [usize; 4],
    },
    /// Average pooling over the valid taps.
    AvgPool {
        /// Window (kh, kw).
        size: (usize, usize),
        /// Both directions.
        stride: usize,
        /// (top, bottom, left, right).
        pad: [usize; 4],
    },
    /// Zero padding (top, bottom, left, right).
    Pad([usize; 4]),
    /// Cropping (top, bottom, left, right).
    Crop([usize; 4]),
    /// Mean over pixels, as a `[1, 1, C]` map.
    GlobalAvgPool,
}

/// One step of a prepared network.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The Keras layer it came from (the last one fused into it).
    pub name: String,
    /// What it computes.
    pub kernel: Kernel,
    /// Earlier steps it reads.
    pub inputs: Vec<usize>,
    /// Its output `[h, w, c]`.
    pub shape: Shape,
}

impl Step {
    /// Multiply-adds for one image: a convolution's output values times the taps each one
    /// sums (its window, times the input channels unless depthwise); 0 for any other step.
    pub fn multiply_adds(&self) -> usize {
        match &self.kernel {
            Kernel::Conv(c) => {
                let per_output = c.kernel.0 * c.kernel.1 * if c.depthwise { 1 } else { c.cin };
                self.shape.iter().product::<usize>() * per_output
            }
            _ => 0,
        }
    }

    /// Whether `other` computes the same thing from the same inputs, weights aside: the
    /// same name, inputs, shape and kernel (sizes, stride, padding, activation).
    pub fn same_operation(&self, other: &Step) -> bool {
        let kernel = match (&self.kernel, &other.kernel) {
            (Kernel::Conv(a), Kernel::Conv(b)) => {
                (
                    a.kernel,
                    a.stride,
                    a.pad,
                    a.cin,
                    a.cout,
                    a.depthwise,
                    a.activation,
                ) == (
                    b.kernel,
                    b.stride,
                    b.pad,
                    b.cin,
                    b.cout,
                    b.depthwise,
                    b.activation,
                )
            }
            (Kernel::Affine { activation: a, .. }, Kernel::Affine { activation: b, .. }) => a == b,
            (a, b) => a == b,
        };
        kernel
            && self.name == other.name
            && self.inputs == other.inputs
            && self.shape == other.shape
    }

    /// The step's trainable tensors, in a fixed order: a convolution's weights and bias, an
    /// affine step's scale and shift; none for the others.
    pub fn parameters(&self) -> Vec<&[f32]> {
        match &self.kernel {
            Kernel::Conv(c) => vec![&c.weights, &c.bias],
            Kernel::Affine { scale, shift, .. } => vec![scale, shift],
            _ => Vec::new(),
        }
    }

    /// The same, to write into.
    pub fn parameters_mut(&mut self) -> Vec<&mut Vec<f32>> {
        match &mut self.kernel {
            Kernel::Conv(c) => vec![&mut c.weights, &mut c.bias],
            Kernel::Affine { scale, shift, .. } => vec![scale, shift],
            _ => Vec::new(),
        }
    }
}

/// A model ready to run: its steps with folded weights; the last step's output, averaged
/// over pixels, is the feature vector.
///
/// Every `Network` has passed [`Network::new`]'s checks — inputs come earlier, each step's
/// shape follows from its inputs', every weight and bias has the length its shape says. The
/// backends' unchecked kernels rely on exactly that, which is why the fields are private and
/// there is no other way to build one.
#[derive(Debug, Clone)]
pub struct Network {
    model: Model,
    /// Shared with the backends' prepared copies: the weights are held once.
    steps: std::sync::Arc<[Step]>,
    weights_id: String,
    weights_path: Option<PathBuf>,
    /// The family's blocks, where each one's first step is (see [`Network::cut`]).
    blocks: std::sync::Arc<[BlockStart]>,
}

impl Network {
    /// Checks `steps` and wraps them. `weights_id` identifies the weights in cache keys and
    /// classifier files; `weights_path` is the file they came from, if any.
    ///
    /// ```
    /// use flowers_kit::backend::{Kernel, Network, Step};
    /// use flowers_kit::models::Model;
    /// let model = Model::parse("mobilenet_v2_0.35_96")?;
    /// // A first step that is not the input is refused, not run.
    /// let bad = vec![Step { name: "x".into(), kernel: Kernel::Concat, inputs: vec![], shape: [96, 96, 3] }];
    /// assert!(Network::new(model, bad, "test".into(), None).is_err());
    /// // Nor is a step with nothing in it: a convolution to zero channels.
    /// use flowers_kit::backend::Conv;
    /// use flowers_kit::models::graph::Activation;
    /// let input = Step { name: "in".into(), kernel: Kernel::Input, inputs: vec![], shape: [96, 96, 3] };
    /// let empty = Conv {
    ///     kernel: (1, 1), stride: 1, pad: [0; 4], cin: 3, cout: 0, depthwise: false,
    ///     weights: vec![], bias: vec![], activation: Activation::Linear,
    /// };
    /// let conv = Step { name: "c".into(), kernel: Kernel::Conv(empty), inputs: vec![0], shape: [96, 96, 0] };
    /// let error = Network::new(model, vec![input, conv], "test".into(), None).unwrap_err();
    /// assert!(error.to_string().contains("empty dimension"), "{error}");
    /// # Ok::<(), flowers_kit::Error>(())
    /// ```
    pub fn new(
        model: Model,
        steps: Vec<Step>,
        weights_id: String,
        weights_path: Option<PathBuf>,
    ) -> Result<Network> {
        validate(&model, &steps)?;
        Ok(Network {
            model,
            steps: steps.into(),
            weights_id,
            weights_path,
            blocks: Vec::new().into(),
        })
    }

    /// The network with its family's blocks marked; each must start at an existing step,
    /// in order.
    fn with_blocks(mut self, blocks: Vec<BlockStart>) -> Result<Network> {
        let in_order = blocks.windows(2).all(|w| w[0].first_step < w[1].first_step);
        let inside = blocks
            .iter()
            .all(|b| b.first_step > 0 && b.first_step < self.steps.len());
        if !in_order || !inside {
            return Err(Error::InvalidArgument(format!(
                "{}: blocks out of order or outside the {} steps",
                self.model.name(),
                self.steps.len()
            )));
        }
        self.blocks = blocks.into();
        Ok(self)
    }

    /// The family's blocks as Keras names them, in order, with the step each starts at.
    pub fn blocks(&self) -> &[BlockStart] {
        &self.blocks
    }

    /// Builds the network from a Keras weight file given by path (Keras' `weights=path`),
    /// folding each batch norm into the convolution before it. A missing tensor or a wrong
    /// shape is an error naming the tensor and file.
    pub fn from_keras(model: impl Into<Model>, weights: &KerasWeights) -> Result<Network> {
        Network::from_keras_as(model.into(), weights, false)
    }

    /// [`Network::from_keras`] for the published ImageNet file the kit fetched itself
    /// (Keras' `weights="imagenet"`, which changes EfficientNet's input scaling).
    pub fn from_published_keras(
        model: impl Into<Model>,
        weights: &KerasWeights,
    ) -> Result<Network> {
        Network::from_keras_as(model.into(), weights, true)
    }

    fn from_keras_as(model: Model, weights: &KerasWeights, published: bool) -> Result<Network> {
        let graph = model.graph(published);
        let source = WeightSource::new(&model, &graph, weights)?;
        let (steps, blocks) = prepare(&graph, |node, name, shape| source.get(node, name, shape))?;
        // Keras' weights="imagenet" changes EfficientNet's input scaling: the same file then
        // makes another network, and must have another identity.
        let mut id = weights.digest().to_string();
        if published && graph != model.graph(false) {
            id.push_str(PUBLISHED_INPUT);
        }
        Network::new(model, steps, id, Some(weights.path().to_path_buf()))?.with_blocks(blocks)
    }

    /// The network with seeded random weights (He uniform, unit batch norms): for
    /// benchmarks, where throughput does not depend on the values, and as the untrained
    /// baseline that shows what pre-training is worth.
    pub fn random(model: impl Into<Model>, seed: u64) -> Result<Network> {
        use rand::{Rng, SeedableRng};
        let model = model.into();
        let graph = model.graph(false);
        let rng = std::cell::RefCell::new(rand::rngs::StdRng::seed_from_u64(seed));
        let (steps, blocks) = prepare(&graph, |_, name, shape| {
            let n: usize = shape.iter().product();
            Ok(match name {
                "gamma" | "moving_variance" | "variance" => vec![1.0; n],
                "beta" | "moving_mean" | "mean" | "bias" => vec![0.01; n],
                "count" => vec![1.0; n],
                _ => {
                    // He uniform (variance 2 / fan-in), so that a signal neither dies out
                    // nor blows up through the depth of the network. A depthwise kernel
                    // [kh, kw, channels, 1] filters each channel alone: its fan-in is kh·kw.
                    let fan_in: usize = if name == "depthwise_kernel" {
                        shape.iter().take(2).product::<usize>()
                    } else {
                        shape.iter().rev().skip(1).product::<usize>()
                    }
                    .max(1);
                    let scale = (6.0 / fan_in as f32).sqrt();
                    let mut rng = rng.borrow_mut();
                    (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
                }
            })
        })?;
        Network::new(model, steps, format!("random-he-uniform-seed-{seed}"), None)?
            .with_blocks(blocks)
    }

    /// The model.
    pub fn model(&self) -> Model {
        self.model
    }

    /// Steps in execution order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The steps, shared rather than copied (a backend keeps them without duplicating the
    /// weights).
    pub(crate) fn shared_steps(&self) -> std::sync::Arc<[Step]> {
        self.steps.clone()
    }

    /// Identifies the weights (SHA-256 of the file, or a description of random weights).
    pub fn weights_id(&self) -> &str {
        &self.weights_id
    }

    /// The weight file the network was read from, if any.
    pub fn weights_path(&self) -> Option<&std::path::Path> {
        self.weights_path.as_deref()
    }

    /// The network up to and including step `last` (fine-tuning runs the frozen part below
    /// a [`Cut`] this way, once per photo).
    pub fn truncated(&self, last: usize) -> Result<Network> {
        let steps = self.steps.get(..=last).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{} has {} steps, not {}",
                self.model.name(),
                self.steps.len(),
                last + 1
            ))
        })?;
        // Part of a network computes something else than the whole: another identity, so
        // that its outputs never share a cache entry with the features.
        Network::new(
            self.model,
            steps.to_vec(),
            format!("{}+first-{}-steps", self.weights_id, last + 1),
            self.weights_path.clone(),
        )
    }

    /// Length of the feature vector.
    pub fn feature_dim(&self) -> usize {
        self.steps
            .last()
            .expect("invariant: Network::new refuses networks of fewer than 2 steps")
            .shape[2]
    }

    /// The network with the weights of steps `first..` replaced by `steps`' (a trained
    /// suffix, or one read from a classifier file). Every replacement must be the same
    /// operation, with the same name, inputs and shape, as the step it replaces: only
    /// weights change, never the architecture.
    pub fn with_weights_from(&self, first: usize, steps: &[Step]) -> Result<Network> {
        let bad = |why: String| {
            Err(Error::InvalidArgument(format!(
                "{}: {why}",
                self.model.name()
            )))
        };
        if first == 0 || first.checked_add(steps.len()) != Some(self.steps.len()) {
            return bad(format!(
                "steps {first}.. of {} cannot be replaced by {} steps",
                self.steps.len(),
                steps.len()
            ));
        }
        for (mine, theirs) in self.steps[first..].iter().zip(steps) {
            if !mine.same_operation(theirs) {
                return bad(format!(
                    "step {} ({:?}) is not the network's {} ({:?})",
                    theirs.name, theirs.shape, mine.name, mine.shape
                ));
            }
        }
        let mut all = self.steps[..first].to_vec();
        all.extend_from_slice(steps);
        // Other weights, another identity: features of the two networks never share a cache
        // entry.
        let bytes: Vec<u8> = steps
            .iter()
            .flat_map(Step::parameters)
            .flat_map(|values| values.iter().flat_map(|v| v.to_le_bytes()))
            .collect();
        let digest = crate::digest::sha256_hex(&bytes);
        Network::new(
            self.model,
            all,
            format!("{}+tuned-{}", self.weights_id, &digest[..16]),
            self.weights_path.clone(),
        )?
        .with_blocks(self.blocks.to_vec())
    }
}

/// Marks the identity of a network built as Keras' `weights="imagenet"` builds it, where
/// that differs from the file given by path (EfficientNet's extra input rescaling).
pub const PUBLISHED_INPUT: &str = "+keras-imagenet-input";

/// Finds each weighted layer's tensors: by name, or — for models whose layer names Keras
/// generates (Inception V3) — by position among the file's weighted layers, as Keras'
/// `load_weights` does.
struct WeightSource<'a> {
    weights: &'a KerasWeights,
    /// Graph node → file layer, when matching by position.
    by_position: Option<std::collections::HashMap<usize, usize>>,
}

impl<'a> WeightSource<'a> {
    fn new(model: &Model, graph: &Graph, weights: &'a KerasWeights) -> Result<Self> {
        if !model.matches_weights_by_position() {
            return Ok(WeightSource {
                weights,
                by_position: None,
            });
        }
        // Keras numbers generated names in creation order (`conv2d`, `conv2d_1`, … in a
        // fresh session; `conv2d_1`, `conv2d_2`, … in the published file): within each kind
        // of layer, the n-th created layer of the graph takes the file's n-th.
        let kind = |name: &str| -> (String, i64) {
            match name.rsplit_once('_') {
                Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                    (base.to_string(), n.parse().unwrap_or(i64::MAX))
                }
                _ => (name.to_string(), -1),
            }
        };
        let mut file: std::collections::HashMap<String, Vec<(i64, usize)>> = Default::default();
        for (l, layer) in weights.layers().iter().enumerate() {
            let (base, n) = kind(&layer.name);
            file.entry(base).or_default().push((n, l));
        }
        for layers in file.values_mut() {
            layers.sort_unstable();
        }
        let mut taken: std::collections::HashMap<String, usize> = Default::default();
        let mut map = std::collections::HashMap::new();
        for (i, node) in graph.nodes.iter().enumerate() {
            if node.op.weight_names().is_empty() {
                continue;
            }
            let (base, _) = kind(&node.name);
            let next = taken.entry(base.clone()).or_default();
            let layer = file.get(&base).and_then(|l| l.get(*next)).map(|&(_, l)| l);
            let Some(layer) = layer else {
                return Err(Error::Tensors {
                    path: weights.path().to_path_buf(),
                    reason: format!(
                        "the file has too few {base} layers for {} (layer {})",
                        model.name(),
                        node.name
                    ),
                });
            };
            *next += 1;
            map.insert(i, layer);
        }
        if map.len() != weights.layers().len() {
            return Err(Error::Tensors {
                path: weights.path().to_path_buf(),
                reason: format!(
                    "the file has {} weighted layers, {} has {}",
                    weights.layers().len(),
                    model.name(),
                    map.len()
                ),
            });
        }
        Ok(WeightSource {
            weights,
            by_position: Some(map),
        })
    }

    fn get(&self, node: (usize, &str), weight: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (index, layer) = node;
        match &self.by_position {
            None => Ok(self.weights.get(layer, weight, shape)?.values.clone()),
            Some(map) => {
                let file_layer = map
                    .get(&index)
                    .and_then(|&l| self.weights.layers().get(l))
                    .ok_or_else(|| Error::Tensors {
                        path: self.weights.path().to_path_buf(),
                        reason: format!("no weights for layer {layer}"),
                    })?;
                let tensor = file_layer
                    .weights
                    .iter()
                    .find(|(name, _)| name == weight)
                    .map(|(_, t)| t)
                    .ok_or_else(|| Error::Tensors {
                        path: self.weights.path().to_path_buf(),
                        reason: format!(
                            "layer {} (matched to {layer} by position) has no {weight}",
                            file_layer.name
                        ),
                    })?;
                crate::weights::keras_h5::check_shape(
                    self.weights.path(),
                    &format!("{}/{weight} (for {layer})", file_layer.name),
                    tensor,
                    shape,
                )?;
                Ok(tensor.values.clone())
            }
        }
    }
}

/// Turns a graph into steps, reading each weight through `weight((node index, layer name),
/// weight name, shape)`: batch norms fold into the convolution before them, activations into
/// the step before them, where that step has no other reader.
fn prepare(
    graph: &Graph,
    weight: impl Fn((usize, &str), &str, &[usize]) -> Result<Vec<f32>>,
) -> Result<(Vec<Step>, Vec<BlockStart>)> {
    let shapes = graph.shapes()?;
    // The step each block starts at: the first one made once its first node is reached.
    let mut blocks = Vec::with_capacity(graph.blocks.len());
    let mut next_block = graph.blocks.iter().peekable();
    let mut readers = vec![0usize; graph.nodes.len()];
    for node in &graph.nodes {
        for &i in &node.inputs {
            if let Some(r) = readers.get_mut(i) {
                *r += 1;
            }
        }
    }
    let mut steps: Vec<Step> = Vec::new();
    // Graph node → the step holding its output.
    let mut step_of: Vec<usize> = Vec::with_capacity(graph.nodes.len());
    // A zero-padding layer read only by a convolution becomes that convolution's explicit
    // padding: no padded copy of the activation is written (MobileNet V2 pads before each
    // stride-2 depthwise convolution; the copies took 7 % of its forward pass).
    let mut folded_pad: Vec<Option<[usize; 4]>> = vec![None; graph.nodes.len()];
    for (i, (node, &shape)) in graph.nodes.iter().zip(&shapes).enumerate() {
        if let Some(block) = next_block.next_if(|b| b.first == i) {
            blocks.push(BlockStart {
                name: block.name.clone(),
                first_step: steps.len(),
            });
        }
        if let (Op::ZeroPad(p), [j]) = (&node.op, node.inputs.as_slice()) {
            let mut consumers = graph.nodes.iter().filter(|n| n.inputs.contains(&i));
            let only_a_conv = matches!(
                (consumers.next(), consumers.next()),
                (Some(n), None) if n.inputs.len() == 1
                    && matches!(n.op, Op::Conv { .. } | Op::Depthwise { .. })
            );
            if only_a_conv && readers.get(i) == Some(&1) {
                folded_pad[i] = Some(*p);
                // Graph::shapes checked that inputs come earlier: step_of[j] exists.
                step_of.push(step_of[*j]);
                continue;
            }
        }
        // Graph::shapes checked that every input is an earlier node: both lookups exist.
        let inputs: Vec<usize> = node.inputs.iter().map(|&j| step_of[j]).collect();
        let in_shapes: Vec<Shape> = node.inputs.iter().map(|&j| shapes[j]).collect();
        // Only the input node reads nothing (Graph::shapes refuses any other); its own
        // shape is the image's.
        let [in_h, in_w, channels] = in_shapes.first().copied().unwrap_or(shape);
        // Explicit (top, bottom, left, right) padding of a window on this node's input, plus
        // a zero-padding layer folded into it (none: no extra padding).
        let extra = node
            .inputs
            .first()
            .and_then(|&j| folded_pad.get(j).copied().flatten())
            .unwrap_or([0; 4]);
        let pad = |kernel, stride, padding| {
            let mut p = resolve(in_h, in_w, kernel, stride, padding);
            for (p, e) in p.iter_mut().zip(extra) {
                *p += e;
            }
            p
        };
        let get = |name: &str| weight((i, &node.name), name, &node.op.weight_shape(name, channels));
        // A bias from the file, or zeros for a layer without one.
        let bias_or_zeros = |has: bool, n: usize| if has { get("bias") } else { Ok(vec![0.0; n]) };
        // The single step this node may fuse into: its only input's step, if this node is
        // that input's only reader.
        let fusable = match node.inputs.as_slice() {
            [j] if readers.get(*j) == Some(&1) => step_of.get(*j).copied(),
            _ => None,
        };
        let fold_target = fusable.filter(|&k| {
            matches!(
                steps.get(k).map(|s| &s.kernel),
                Some(Kernel::Conv(Conv {
                    activation: Activation::Linear,
                    ..
                }))
            )
        });
        let kernel = match &node.op {
            Op::Input => Kernel::Input,
            Op::Conv {
                filters,
                kernel,
                stride,
                padding,
                bias,
                activation,
            } => Kernel::Conv(Conv {
                kernel: *kernel,
                stride: *stride,
                pad: pad(*kernel, *stride, *padding),
                cin: channels,
                cout: *filters,
                depthwise: false,
                weights: get("kernel")?,
                bias: bias_or_zeros(*bias, *filters)?,
                activation: *activation,
            }),
            Op::SeparablePointwise { filters } => Kernel::Conv(Conv {
                kernel: (1, 1),
                stride: 1,
                pad: [0; 4],
                cin: channels,
                cout: *filters,
                depthwise: false,
                weights: get("pointwise_kernel")?,
                bias: vec![0.0; *filters],
                activation: Activation::Linear,
            }),
            Op::Depthwise {
                kernel,
                stride,
                padding,
                bias,
            } => Kernel::Conv(Conv {
                kernel: *kernel,
                stride: *stride,
                pad: pad(*kernel, *stride, *padding),
                cin: channels,
                cout: channels,
                depthwise: true,
                weights: get("depthwise_kernel")?,
                bias: bias_or_zeros(*bias, channels)?,
                activation: Activation::Linear,
            }),
            Op::BatchNorm { epsilon, scale } => {
                let gamma = if *scale {
                    get("gamma")?
                } else {
                    vec![1.0; channels]
                };
                let (beta, mean, variance) =
                    (get("beta")?, get("moving_mean")?, get("moving_variance")?);
                // y = γ (x − μ) / √(σ² + ε) + β = x · s + (β − μ · s)
                let s: Vec<f32> = gamma
                    .iter()
                    .zip(&variance)
                    .map(|(g, v)| g / (v + epsilon).sqrt())
                    .collect();
                let shift: Vec<f32> = beta
                    .iter()
                    .zip(&mean)
                    .zip(&s)
                    .map(|((b, m), s)| b - m * s)
                    .collect();
                if let Some((target, Kernel::Conv(conv))) =
                    fold_target.and_then(|k| Some((k, &mut steps.get_mut(k)?.kernel)))
                {
                    // Scale each output channel of the kernel, and its bias.
                    for row in conv.weights.chunks_exact_mut(conv.cout) {
                        for (w, s) in row.iter_mut().zip(&s) {
                            *w *= s;
                        }
                    }
                    for ((b, s), t) in conv.bias.iter_mut().zip(&s).zip(&shift) {
                        *b = *b * s + t;
                    }
                    steps[target].name.clone_from(&node.name);
                    step_of.push(target);
                    continue;
                }
                Kernel::Affine {
                    scale: s,
                    shift,
                    activation: Activation::Linear,
                }
            }
            Op::Activation(activation) => {
                if let Some((target, step)) = fusable.and_then(|k| Some((k, steps.get_mut(k)?))) {
                    let slot = match &mut step.kernel {
                        Kernel::Conv(Conv { activation, .. })
                        | Kernel::Affine { activation, .. }
                        | Kernel::Add(activation) => Some(activation),
                        _ => None,
                    };
                    if let Some(slot) = slot.filter(|a| **a == Activation::Linear) {
                        *slot = *activation;
                        step.name.clone_from(&node.name);
                        step_of.push(target);
                        continue;
                    }
                }
                Kernel::Activation(*activation)
            }
            Op::Rescale { scale, offset } => Kernel::Affine {
                scale: (0..channels)
                    .map(|c| {
                        *scale
                            .get(c)
                            .or(scale.first())
                            .expect("invariant: the builders give a rescaling a factor")
                    })
                    .collect(),
                shift: vec![*offset; channels],
                activation: Activation::Linear,
            },
            Op::Normalize => {
                let (mean, variance) = (get("mean")?, get("variance")?);
                let _count = get("count")?;
                // (x − mean) / max(√variance, ε) = x · s − mean · s
                let s: Vec<f32> = variance.iter().map(|v| 1.0 / v.sqrt().max(1e-7)).collect();
                Kernel::Affine {
                    shift: mean.iter().zip(&s).map(|(m, s)| -m * s).collect(),
                    scale: s,
                    activation: Activation::Linear,
                }
            }
            Op::Add => Kernel::Add(Activation::Linear),
            Op::Multiply => Kernel::Multiply,
            Op::Concat => Kernel::Concat,
            Op::MaxPool {
                size,
                stride,
                padding,
            } => Kernel::MaxPool {
                size: *size,
                stride: *stride,
                pad: pad(*size, *stride, *padding),
            },
            Op::AvgPool {
                size,
                stride,
                padding,
            } => Kernel::AvgPool {
                size: *size,
                stride: *stride,
                pad: pad(*size, *stride, *padding),
            },
            Op::ZeroPad(p) => Kernel::Pad(*p),
            Op::Crop(c) => Kernel::Crop(*c),
            Op::GlobalAvgPool => Kernel::GlobalAvgPool,
        };
        step_of.push(steps.len());
        steps.push(Step {
            name: node.name.clone(),
            kernel,
            inputs,
            shape,
        });
    }
    // Every node of a block must be computed at or above its first step: one fused into a
    // step below would stay frozen when the block trains. (A zero-padding layer folded into
    // the convolution after it belongs to that convolution.)
    if next_block.peek().is_some() || blocks.len() != graph.blocks.len() {
        return Err(Error::InvalidArgument(
            "a block starts at no layer of the graph".into(),
        ));
    }
    for (b, (block, start)) in graph.blocks.iter().zip(&blocks).enumerate() {
        let end = graph
            .blocks
            .get(b + 1)
            .map_or(graph.nodes.len(), |next| next.first);
        let below = (block.first..end)
            .filter(|&i| folded_pad[i].is_none())
            .find(|&i| step_of[i] < start.first_step);
        if let Some(i) = below {
            return Err(Error::InvalidArgument(format!(
                "block {}: layer {} is computed in a step below the block's first",
                block.name, graph.nodes[i].name
            )));
        }
    }
    Ok((steps, blocks))
}

/// The checks behind [`Network::new`]: every input is an earlier step, every shape follows
/// from the inputs', every weight has the length its shape says.
/// How many readers each step has among steps `first..`, counting the final average as
/// the last step's reader: a step above `first` with none would silently lose its gradient.
pub(crate) fn readers_from(steps: &[Step], first: usize) -> Vec<usize> {
    let mut readers = vec![0usize; steps.len()];
    for step in steps.iter().skip(first) {
        for &j in &step.inputs {
            readers[j] += 1;
        }
    }
    if let Some(last) = readers.last_mut() {
        *last += 1;
    }
    readers
}

fn validate(model: &Model, steps: &[Step]) -> Result<()> {
    let resolution = model.resolution();
    if resolution == 0 || resolution > MAX_RESOLUTION {
        return Err(Error::InvalidArgument(format!(
            "{}: input resolution {resolution} is outside 1..={MAX_RESOLUTION}",
            model.name()
        )));
    }
    for (i, step) in steps.iter().enumerate() {
        let bad = |reason: String| {
            Err(Error::InvalidArgument(format!(
                "{} network, step {i} ({}): {reason}",
                model.name(),
                step.name
            )))
        };
        if step.shape.contains(&0) {
            // Kernels divide by channel counts and split by rows: nothing empty runs.
            return bad(format!(
                "output shape {:?} has an empty dimension",
                step.shape
            ));
        }
        let mut inputs = Vec::with_capacity(step.inputs.len());
        for &j in &step.inputs {
            match steps.get(j).filter(|_| j < i) {
                Some(s) => inputs.push(s.shape),
                None => return bad(format!("reads step {j}, which is not before it")),
            }
        }
        let one = match (inputs.as_slice(), &step.kernel) {
            (_, Kernel::Input) => None,
            ([s], _) => Some(*s),
            (_, Kernel::Add(_) | Kernel::Multiply | Kernel::Concat) => None,
            _ => return bad(format!("takes {} inputs", inputs.len())),
        };
        let expected: Option<Shape> = match &step.kernel {
            Kernel::Input => {
                if i != 0 || !inputs.is_empty() {
                    return bad("the input must be the first step".into());
                }
                Some([resolution, resolution, 3])
            }
            Kernel::Conv(conv) => {
                let [h, w, c] = one.expect("invariant: a one-input kernel (matched above)");
                let taps = conv.kernel.0.checked_mul(conv.kernel.1);
                let weights = if conv.depthwise {
                    taps.and_then(|t| t.checked_mul(c))
                } else {
                    taps.and_then(|t| t.checked_mul(c))
                        .and_then(|t| t.checked_mul(conv.cout))
                };
                if conv.cin != c
                    || (conv.depthwise && conv.cout != c)
                    || weights != Some(conv.weights.len())
                    || conv.bias.len() != conv.cout
                {
                    return bad(format!(
                        "a {}×{} convolution {c}→{} with {} weights and {} biases",
                        conv.kernel.0,
                        conv.kernel.1,
                        conv.cout,
                        conv.weights.len(),
                        conv.bias.len()
                    ));
                }
                window_shape([h, w, c], conv.kernel, conv.stride, conv.pad, conv.cout)
            }
            Kernel::MaxPool { size, stride, pad } | Kernel::AvgPool { size, stride, pad } => {
                let s = one.expect("invariant: a one-input kernel (matched above)");
                window_shape(s, *size, *stride, *pad, s[2])
            }
            Kernel::Affine { scale, shift, .. } => {
                let s = one.expect("invariant: a one-input kernel (matched above)");
                if scale.len() != s[2] || shift.len() != s[2] {
                    return bad(format!(
                        "{} scales and {} shifts for {} channels",
                        scale.len(),
                        shift.len(),
                        s[2]
                    ));
                }
                Some(s)
            }
            Kernel::Activation(_) => one,
            Kernel::Add(_) => {
                let first = inputs.first().copied();
                (inputs.len() >= 2 && inputs.iter().all(|s| Some(*s) == first))
                    .then_some(first)
                    .flatten()
            }
            Kernel::Multiply => match inputs.as_slice() {
                [a, b] if a == b => Some(*a),
                [a, [1, 1, c]] | [[1, 1, c], a] if a[2] == *c => Some(*a),
                _ => None,
            },
            Kernel::Concat => {
                let first = inputs.first().copied();
                first
                    .filter(|f| inputs.iter().all(|s| s[..2] == f[..2]))
                    .map(|f| [f[0], f[1], inputs.iter().map(|s| s[2]).sum()])
            }
            Kernel::Pad([t, b, l, r]) => one.map(|[h, w, c]| [h + t + b, w + l + r, c]),
            Kernel::Crop([t, b, l, r]) => {
                one.and_then(|[h, w, c]| Some([h.checked_sub(t + b)?, w.checked_sub(l + r)?, c]))
            }
            Kernel::GlobalAvgPool => one.map(|[_, _, c]| [1, 1, c]),
        };
        let fits = step.shape.iter().all(|&d| d > 0 && d <= 1 << 16);
        if expected != Some(step.shape) || !fits {
            return bad(format!(
                "output {:?} does not follow from inputs {inputs:?}",
                step.shape
            ));
        }
    }
    if steps.len() < 2 {
        return Err(Error::InvalidArgument(format!(
            "{}: a network needs an input and at least one step",
            model.name()
        )));
    }
    Ok(())
}

/// Output shape of a window op, or `None` when the window does not fit.
fn window_shape(
    [h, w, _]: Shape,
    (kh, kw): (usize, usize),
    stride: usize,
    [t, b, l, r]: [usize; 4],
    channels: usize,
) -> Option<Shape> {
    if stride == 0 || kh == 0 || kw == 0 {
        return None;
    }
    let ho = (h + t + b).checked_sub(kh)? / stride + 1;
    let wo = (w + l + r).checked_sub(kw)? / stride + 1;
    Some([ho, wo, channels])
}
