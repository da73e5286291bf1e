//! The ONNX model of a classifier: its network's steps as ONNX operators (opset 17), from
//! the photo's bytes to the class probabilities.

use prost::Message;

use super::onnx_proto as pb;
use crate::backend::{Kernel, Network, Step};
use crate::error::{Error, Result};
use crate::models::graph::Activation;
use crate::train::{Activation as HeadActivation, Classifier};

/// The ONNX operator set the model uses (tested with ONNX Runtime 1.32).
pub const OPSET: i64 = 17;
/// The IR version that goes with [`OPSET`].
pub const IR_VERSION: i64 = 8;
/// The model's one input: `uint8 [batch, size, size, 3]`, RGB, already resized.
pub const INPUT: &str = "pixels";
/// The model's one output: `float [batch, classes]`, each row summing to 1.
pub const OUTPUT: &str = "probabilities";
/// The `metadata_props` key of the class names, a JSON list in label order.
pub const CLASS_NAMES_KEY: &str = "class_names";

// onnx.proto's enums, as the numbers its fields hold.
const FLOAT: i32 = 1;
const UINT8: i32 = 2;
const INT64: i32 = 7;
const ATTRIBUTE_FLOAT: i32 = 1;
const ATTRIBUTE_INT: i32 = 2;
const ATTRIBUTE_INTS: i32 = 7;

/// Nodes and weights, named as they are added.
#[derive(Default)]
struct Builder {
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
}

fn attribute(name: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        ..Default::default()
    }
}

fn int(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        i: Some(value),
        r#type: Some(ATTRIBUTE_INT),
        ..attribute(name)
    }
}

fn ints(name: &str, values: &[usize]) -> pb::AttributeProto {
    pb::AttributeProto {
        ints: values.iter().map(|&v| v as i64).collect(),
        r#type: Some(ATTRIBUTE_INTS),
        ..attribute(name)
    }
}

fn float(name: &str, value: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        f: Some(value),
        r#type: Some(ATTRIBUTE_FLOAT),
        ..attribute(name)
    }
}

impl Builder {
    /// A weight tensor named `name`, f32.
    fn weights(&mut self, name: String, dims: &[usize], values: &[f32]) -> String {
        let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, dims, FLOAT, bytes)
    }

    /// An int64 constant (pads, slice bounds).
    fn int64s(&mut self, name: String, values: &[i64]) -> String {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, vec![values.len() as i64], INT64, bytes)
    }

    /// A constant tensor named `name`: `data_type` values as little-endian raw bytes.
    fn initializer(
        &mut self,
        name: String,
        dims: Vec<i64>,
        data_type: i32,
        raw: Vec<u8>,
    ) -> String {
        self.initializers.push(pb::TensorProto {
            name: Some(name.clone()),
            dims,
            data_type: Some(data_type),
            raw_data: Some(raw),
            ..Default::default()
        });
        name
    }

    /// A node `op` named `name`, whose one output is named after it.
    fn node(
        &mut self,
        op: &str,
        name: String,
        inputs: Vec<String>,
        attributes: Vec<pb::AttributeProto>,
    ) -> String {
        self.nodes.push(pb::NodeProto {
            input: inputs,
            output: vec![name.clone()],
            name: Some(name.clone()),
            op_type: Some(op.into()),
            attribute: attributes,
            ..Default::default()
        });
        name
    }

    /// `x` through `activation` (nodes named after `name`).
    fn activate(&mut self, x: String, activation: Activation, name: &str) -> String {
        let out = format!("{name}/{activation:?}");
        match activation {
            Activation::Linear => x,
            Activation::Relu => self.node("Relu", out, vec![x], vec![]),
            Activation::Relu6 => {
                let low = self.weights(format!("{name}/clip_min"), &[], &[0.0]);
                let high = self.weights(format!("{name}/clip_max"), &[], &[6.0]);
                self.node("Clip", out, vec![x, low, high], vec![])
            }
            Activation::Swish => {
                let sigmoid = self.node(
                    "Sigmoid",
                    format!("{name}/sigmoid"),
                    vec![x.clone()],
                    vec![],
                );
                self.node("Mul", out, vec![x, sigmoid], vec![])
            }
            Activation::HardSwish => self.node("HardSwish", out, vec![x], vec![]),
            Activation::Sigmoid => self.node("Sigmoid", out, vec![x], vec![]),
            Activation::HardSigmoid => self.node(
                "HardSigmoid",
                out,
                vec![x],
                vec![float("alpha", 1.0 / 6.0), float("beta", 0.5)],
            ),
        }
    }

    /// One step of the network on its inputs' names (NCHW tensors); its output's name.
    fn step(&mut self, step: &Step, inputs: Vec<String>) -> Result<String> {
        let name = step.name.clone();
        let first = || {
            inputs.first().cloned().ok_or_else(|| {
                Error::InvalidArgument(format!("step {name} has no input to export"))
            })
        };
        let windows = |size: (usize, usize), stride: usize, pad: [usize; 4]| {
            let [top, bottom, left, right] = pad;
            vec![
                ints("kernel_shape", &[size.0, size.1]),
                ints("strides", &[stride, stride]),
                ints("pads", &[top, left, bottom, right]),
            ]
        };
        Ok(match &step.kernel {
            Kernel::Input => {
                return Err(Error::InvalidArgument(format!(
                    "step {name}: a second input cannot be exported"
                )))
            }
            Kernel::Conv(conv) => {
                let (kh, kw) = conv.kernel;
                // [kh, kw, cin, cout] (depthwise [kh, kw, c]) → [cout, cin / group, kh, kw].
                let (group, per_group) = if conv.depthwise {
                    (conv.cout, 1)
                } else {
                    (1, conv.cin)
                };
                let mut kernel = vec![0.0f32; conv.weights.len()];
                for o in 0..conv.cout {
                    for i in 0..per_group {
                        for y in 0..kh {
                            for x in 0..kw {
                                let from = if conv.depthwise {
                                    (y * kw + x) * conv.cout + o
                                } else {
                                    ((y * kw + x) * conv.cin + i) * conv.cout + o
                                };
                                kernel[((o * per_group + i) * kh + y) * kw + x] =
                                    conv.weights[from];
                            }
                        }
                    }
                }
                let w = self.weights(
                    format!("{name}/kernel"),
                    &[conv.cout, per_group, kh, kw],
                    &kernel,
                );
                let b = self.weights(format!("{name}/bias"), &[conv.cout], &conv.bias);
                let mut attributes = windows(conv.kernel, conv.stride, conv.pad);
                attributes.push(int("group", group as i64));
                let y = self.node(
                    "Conv",
                    format!("{name}/conv"),
                    vec![first()?, w, b],
                    attributes,
                );
                self.activate(y, conv.activation, &name)
            }
            Kernel::Affine {
                scale,
                shift,
                activation,
            } => {
                let c = scale.len();
                let s = self.weights(format!("{name}/scale"), &[1, c, 1, 1], scale);
                let t = self.weights(format!("{name}/shift"), &[1, c, 1, 1], shift);
                let scaled = self.node("Mul", format!("{name}/mul"), vec![first()?, s], vec![]);
                let y = self.node("Add", format!("{name}/add"), vec![scaled, t], vec![]);
                self.activate(y, *activation, &name)
            }
            Kernel::Activation(activation) => self.activate(first()?, *activation, &name),
            Kernel::Add(activation) => {
                let mut sum = first()?;
                for (i, other) in inputs.iter().enumerate().skip(1) {
                    sum = self.node(
                        "Add",
                        format!("{name}/add{i}"),
                        vec![sum, other.clone()],
                        vec![],
                    );
                }
                self.activate(sum, *activation, &name)
            }
            Kernel::Multiply => self.node("Mul", format!("{name}/mul"), inputs, vec![]),
            Kernel::Concat => self.node(
                "Concat",
                format!("{name}/concat"),
                inputs,
                vec![int("axis", 1)],
            ),
            Kernel::MaxPool { size, stride, pad } => self.node(
                "MaxPool",
                format!("{name}/max"),
                vec![first()?],
                windows(*size, *stride, *pad),
            ),
            Kernel::AvgPool { size, stride, pad } => {
                // Keras averages over the taps inside the image only.
                let mut attributes = windows(*size, *stride, *pad);
                attributes.push(int("count_include_pad", 0));
                self.node(
                    "AveragePool",
                    format!("{name}/average"),
                    vec![first()?],
                    attributes,
                )
            }
            Kernel::Pad([top, bottom, left, right]) => {
                let pads = [0, 0, *top, *left, 0, 0, *bottom, *right].map(|p| p as i64);
                let pads = self.int64s(format!("{name}/pads"), &pads);
                self.node("Pad", format!("{name}/pad"), vec![first()?, pads], vec![])
            }
            Kernel::Crop([top, _, left, _]) => {
                let [h, w, _] = step.shape;
                let starts = self.int64s(format!("{name}/starts"), &[*top as i64, *left as i64]);
                let ends = self.int64s(
                    format!("{name}/ends"),
                    &[(top + h) as i64, (left + w) as i64],
                );
                let axes = self.int64s(format!("{name}/axes"), &[2, 3]);
                self.node(
                    "Slice",
                    format!("{name}/crop"),
                    vec![first()?, starts, ends, axes],
                    vec![],
                )
            }
            Kernel::GlobalAvgPool => self.node(
                "GlobalAveragePool",
                format!("{name}/mean"),
                vec![first()?],
                vec![],
            ),
        })
    }
}

/// A tensor's type: `elem_type` of the given dimensions, `None` for the batch.
fn tensor_type(elem_type: i32, dims: &[Option<usize>]) -> pb::TypeProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(n) => Value::DimValue(*n as i64),
                None => Value::DimParam("batch".into()),
            }),
            ..Default::default()
        })
        .collect();
    pb::TypeProto {
        value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
            elem_type: Some(elem_type),
            shape: Some(pb::TensorShapeProto { dim }),
        })),
        ..Default::default()
    }
}

fn entry(key: &str, value: String) -> pb::StringStringEntryProto {
    pb::StringStringEntryProto {
        key: Some(key.into()),
        value: Some(value),
    }
}

/// The serialized ONNX model of `classifier` on `network` (the extractor's network with any
/// fine-tuned blocks already in it): `uint8` RGB pixels `[batch, size, size, 3]`, already
/// resized to the model's size, to class probabilities `[batch, classes]`.
pub(super) fn model_bytes(
    classifier: &Classifier,
    network: &Network,
    resize: &str,
) -> Result<Vec<u8>> {
    let steps = network.steps();
    let size = network.model().resolution();
    // A classifier file is not checked against a backbone when it is read: a head of another
    // width would make a graph that no runtime can run.
    if classifier.head().inputs() != network.feature_dim() {
        return Err(Error::InvalidArgument(format!(
            "the classifier's head takes {} features, but {} gives {}",
            classifier.head().inputs(),
            network.model().name(),
            network.feature_dim()
        )));
    }
    let mut b = Builder::default();
    let mut outputs: Vec<String> = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        let out = if i == 0 {
            if step.kernel != Kernel::Input {
                return Err(Error::InvalidArgument(format!(
                    "{}: the first step is not the input",
                    network.model().name()
                )));
            }
            // The network's input is the photo in [0, 1]: bytes / 255, channels first.
            let float = b.node(
                "Cast",
                "input/float".into(),
                vec![INPUT.into()],
                vec![int("to", FLOAT.into())],
            );
            let full = b.weights("input/255".into(), &[], &[255.0]);
            let unit = b.node("Div", "input/unit".into(), vec![float, full], vec![]);
            b.node(
                "Transpose",
                "input/nchw".into(),
                vec![unit],
                vec![ints("perm", &[0, 3, 1, 2])],
            )
        } else {
            // Network::new checked that every input is an earlier step.
            let inputs = step.inputs.iter().map(|&j| outputs[j].clone()).collect();
            b.step(step, inputs)?
        };
        outputs.push(out);
    }
    // The features: the last map's mean over its pixels, as every backend computes them.
    let last = outputs
        .pop()
        .expect("invariant: Network::new refuses networks of fewer than 2 steps");
    let pooled = b.node(
        "GlobalAveragePool",
        "features/mean".into(),
        vec![last],
        vec![],
    );
    let mut x = b.node(
        "Flatten",
        "features".into(),
        vec![pooled],
        vec![int("axis", 1)],
    );
    let head = classifier.head();
    for (i, layer) in head.layers().iter().enumerate() {
        let w = b.weights(
            format!("head/dense{i}/kernel"),
            &[layer.inputs, layer.outputs],
            &layer.weights,
        );
        let bias = b.weights(format!("head/dense{i}/bias"), &[layer.outputs], &layer.bias);
        let product = b.node(
            "MatMul",
            format!("head/dense{i}/matmul"),
            vec![x, w],
            vec![],
        );
        x = b.node("Add", format!("head/dense{i}"), vec![product, bias], vec![]);
        if i + 1 < head.layers().len() && head.activation() == HeadActivation::Relu {
            x = b.node("Relu", format!("head/dense{i}/relu"), vec![x], vec![]);
        }
    }
    b.nodes.push(pb::NodeProto {
        input: vec![x],
        output: vec![OUTPUT.into()],
        name: Some("head/softmax".into()),
        op_type: Some("Softmax".into()),
        attribute: vec![int("axis", 1)],
        ..Default::default()
    });
    let classes = classifier.classes();
    let class_names = serde_json::to_string(classes)
        .map_err(|e| Error::InvalidArgument(format!("cannot write the class names: {e}")))?;
    let model_name = network.model().name();
    let graph = pb::GraphProto {
        node: b.nodes,
        name: Some(format!("flowers_kit {model_name}")),
        initializer: b.initializers,
        doc_string: Some(format!(
            "{model_name} and a classifier of {} flower classes. Input: RGB bytes resized to \
             {size}x{size} ({resize}); output: class probabilities.",
            classes.len()
        )),
        input: vec![pb::ValueInfoProto {
            name: Some(INPUT.into()),
            r#type: Some(tensor_type(UINT8, &[None, Some(size), Some(size), Some(3)])),
            ..Default::default()
        }],
        output: vec![pb::ValueInfoProto {
            name: Some(OUTPUT.into()),
            r#type: Some(tensor_type(FLOAT, &[None, Some(classes.len())])),
            ..Default::default()
        }],
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("flowers_kit".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(graph),
        metadata_props: vec![
            entry(CLASS_NAMES_KEY, class_names),
            entry("model", model_name),
            entry("weights", network.weights_id().to_string()),
            entry("resize", resize.to_string()),
            entry("input_size", size.to_string()),
        ],
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}
