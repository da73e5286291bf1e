//! A trained classifier: its head plus what it needs to classify a photo later — class
//! names, the extractor variant and weights, and the preprocessing — saved as one file.
//!
//! A classifier file is untrusted input: [`Classifier::load`] reads at most
//! [`MAX_CLASSIFIER_BYTES`], checks every tensor's dtype, rank and shape before using it,
//! bounds the layer count by the tensors actually present, and refuses NaN or infinite
//! weights.

// This module reads untrusted input: every index and every arithmetic step is checked or
// justified where it is allowed.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::finetune::{Top, TopLayer, TopOp, MAX_TOP_LAYERS};
use super::head::{Activation, Dense, Head};
use super::metrics::{most_probable, Metrics};
use crate::data::image::Resize;
use crate::error::{Error, Result};
use crate::features::{FeatureExtractor, FeatureSet, FeatureSource, Features};
use crate::models::graph::Activation as GraphActivation;

/// Marks classifier files; bumped if the layout changes.
const FORMAT: &str = "flowers_kit classifier v1";

/// Largest classifier file [`Classifier::load`] reads (a 1792→500→5 head is under 4 MB).
pub const MAX_CLASSIFIER_BYTES: u64 = 256 << 20;

/// A head trained on features of one extractor.
#[derive(Debug, Clone, PartialEq)]
pub struct Classifier {
    head: Head,
    classes: Vec<String>,
    source: FeatureSource,
    /// A fine-tuned top of the backbone: the head reads its features, and the classifier's
    /// rows are the activations entering it.
    top: Option<Top>,
}

/// One of the top-k answers for a photo.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// Class name.
    pub class: String,
    /// Class index.
    pub label: usize,
    /// Softmax probability.
    pub probability: f32,
}

impl Classifier {
    /// Wraps a trained head with the facts of the features it was trained on. The head must
    /// take `features.dim` inputs and output one logit per class.
    pub fn new(head: Head, features: &Features) -> Result<Classifier> {
        Classifier::from_parts(head, features.classes.clone(), features.source.clone())
    }

    /// A classifier from its parts, checked: `head` outputs one logit per class.
    pub fn from_parts(
        head: Head,
        classes: Vec<String>,
        source: FeatureSource,
    ) -> Result<Classifier> {
        if head.classes() != classes.len() {
            return Err(Error::InvalidArgument(format!(
                "the head outputs {} logits for {} classes",
                head.classes(),
                classes.len()
            )));
        }
        Ok(Classifier {
            head,
            classes,
            source,
            top: None,
        })
    }

    /// The classifier with a fine-tuned top of the backbone in front of its head: the top's
    /// features must be the head's inputs.
    pub fn with_top(mut self, top: Top) -> Result<Classifier> {
        top.validate()?;
        if top.feature_dim() != self.head.inputs() {
            return Err(Error::InvalidArgument(format!(
                "the fine-tuned top gives {} features, the head takes {}",
                top.feature_dim(),
                self.head.inputs()
            )));
        }
        self.top = Some(top);
        Ok(self)
    }

    /// The fine-tuned top of the backbone, if the classifier has one.
    pub fn top(&self) -> Option<&Top> {
        self.top.as_ref()
    }

    /// The trained layers.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Class names in label order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The extractor whose features the head was trained on.
    pub fn source(&self) -> &FeatureSource {
        &self.source
    }

    /// Class probabilities `[n, classes]` for `n` rows: features, or with a fine-tuned
    /// top, the activations entering it.
    pub fn probabilities(&self, rows: &[f32], n: usize) -> Result<Vec<f32>> {
        match &self.top {
            None => self.head.probabilities(rows, n),
            Some(top) => self.head.probabilities(&top.features(rows, n)?, n),
        }
    }

    /// Accuracy, loss, confusion matrix, per-class metrics and mistakes on a feature set.
    pub fn evaluate(&self, set: &FeatureSet) -> Result<Metrics> {
        set.check_labels(self.classes.len())?;
        let probabilities = self.probabilities(set.values(), set.len())?;
        Metrics::from_probabilities(&self.classes, set.labels(), &probabilities, set.paths())
    }

    /// The predicted label (most probable class) of every example of a feature set, in
    /// order: to compare what two classifiers answer photo by photo.
    pub fn predicted_labels(&self, set: &FeatureSet) -> Result<Vec<usize>> {
        let probabilities = self.probabilities(set.values(), set.len())?;
        Ok(probabilities
            .chunks(self.classes.len().max(1))
            .map(|row| most_probable(row).0)
            .collect())
    }

    /// The `k` most likely classes for one feature vector, most likely first.
    pub fn top_k(&self, features: &[f32], k: usize) -> Result<Vec<Prediction>> {
        let probabilities = self.probabilities(features, 1)?;
        let mut ranked: Vec<Prediction> = probabilities
            .iter()
            .zip(&self.classes)
            .enumerate()
            .map(|(label, (&probability, class))| Prediction {
                class: class.clone(),
                label,
                probability,
            })
            .collect();
        ranked.sort_by(|a, b| b.probability.total_cmp(&a.probability));
        ranked.truncate(k.max(1));
        Ok(ranked)
    }

    /// Classifies a photo file with `extractor`, which must be the one the head was trained
    /// on (same variant and weights).
    pub fn predict(
        &self,
        extractor: &FeatureExtractor,
        photo: impl AsRef<Path>,
        k: usize,
    ) -> Result<Vec<Prediction>> {
        self.source.check(extractor)?;
        let rows = match &self.top {
            None => extractor.extract_one(photo.as_ref())?,
            Some(top) => {
                // The frozen part runs up to the layer whose output enters the top.
                let network = extractor.network();
                let cut = network
                    .steps()
                    .iter()
                    .position(|s| s.name == top.cut && s.shape == top.input_shape)
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "the extractor has no layer {} of shape {:?} for the fine-tuned top",
                            top.cut, top.input_shape
                        ))
                    })?;
                extractor.below(cut)?.extract_one(photo.as_ref())?
            }
        };
        self.top_k(&rows, k)
    }

    /// Saves head weights and metadata to one safetensors file, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut tensors = Vec::new();
        for (i, layer) in self.head.layers().iter().enumerate() {
            tensors.push((
                format!("layer{i}.weight"),
                vec![layer.inputs, layer.outputs],
                bytes(&layer.weights),
            ));
            tensors.push((
                format!("layer{i}.bias"),
                vec![layer.outputs],
                bytes(&layer.bias),
            ));
        }
        if let Some(top) = &self.top {
            for layer in &top.layers {
                if layer.weights.is_empty() {
                    continue;
                }
                let c = layer.shape[2];
                tensors.push((
                    format!("top.{}.weight", layer.name),
                    vec![layer.weights.len().checked_div(c).unwrap_or(0), c],
                    bytes(&layer.weights),
                ));
                tensors.push((
                    format!("top.{}.bias", layer.name),
                    vec![c],
                    bytes(&layer.bias),
                ));
            }
        }
        let views = tensors
            .iter()
            .map(|(name, shape, data)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .map(|view| (name.clone(), view))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Write {
                path: path.to_path_buf(),
                reason: format!("cannot build the tensors: {e}"),
            })?;
        let source = &self.source;
        let metadata: HashMap<String, String> = [
            ("format", FORMAT.to_string()),
            (
                "classes",
                serde_json::to_string(&self.classes).unwrap_or_default(),
            ),
            ("model", source.model.clone()),
            ("weights_id", source.weights_id.clone()),
            (
                "weights_path",
                source
                    .weights_path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ),
            ("resize", source.resize.name().to_string()),
            ("activation", format!("{:?}", self.head.activation())),
            ("layers", self.head.layers().len().to_string()),
            (
                "top",
                self.top
                    .as_ref()
                    .map(|top| serde_json::to_string(&TopSpec::of(top)).unwrap_or_default())
                    .unwrap_or_default(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let serialized =
            safetensors::serialize(views, &Some(metadata)).map_err(|e| Error::Write {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        // What save writes, load must read.
        if serialized.len() as u64 > MAX_CLASSIFIER_BYTES {
            return Err(Error::Write {
                path: path.to_path_buf(),
                reason: format!(
                    "{} bytes is more than a classifier file may hold ({MAX_CLASSIFIER_BYTES})",
                    serialized.len()
                ),
            });
        }
        crate::files::write_atomically(path, &serialized)
    }

    /// Loads a file written by [`Classifier::save`]; anything else is a clear error.
    pub fn load(path: impl AsRef<Path>) -> Result<Classifier> {
        let path = path.as_ref();
        let data =
            crate::files::read_regular(path, MAX_CLASSIFIER_BYTES, "classifier file", |reason| {
                Error::Tensors {
                    path: path.to_path_buf(),
                    reason,
                }
            })?;
        Classifier::from_bytes(&data, path)
    }

    /// [`Classifier::load`] on bytes already read; `path` only names the source in errors.
    pub fn from_bytes(data: &[u8], path: &Path) -> Result<Classifier> {
        let bad = |reason: String| Error::Tensors {
            path: path.to_path_buf(),
            reason,
        };
        let tensors = safetensors::SafeTensors::deserialize(data)
            .map_err(|e| bad(format!("not a classifier file (damaged safetensors: {e})")))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(data)
            .map_err(|e| bad(format!("not a classifier file (damaged safetensors: {e})")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad("not a flowers_kit classifier file".into()));
        }
        let field = |k: &str| -> Result<&String> {
            meta.get(k)
                .ok_or_else(|| bad(format!("metadata field '{k}' is missing")))
        };
        let classes: Vec<String> = serde_json::from_str(field("classes")?)
            .map_err(|e| bad(format!("bad class list: {e}")))?;
        let resize = match field("resize")?.as_str() {
            "tf_v1_bilinear" => Resize::TfV1Bilinear,
            "tf_v2_bilinear" => Resize::TfV2Bilinear,
            other => return Err(bad(format!("unknown resize '{other}'"))),
        };
        let activation = match field("activation")?.as_str() {
            "Relu" => Activation::Relu,
            "Linear" => Activation::Linear,
            other => return Err(bad(format!("unknown activation '{other}'"))),
        };
        // Two tensors per layer: a count beyond what the file holds is a lie, not a reason
        // to allocate.
        let present = tensors.len() / 2;
        let count: usize = field("layers")?
            .parse()
            .ok()
            .filter(|&c| c >= 1 && c <= present)
            .ok_or_else(|| {
                bad(format!(
                    "the layer count must be 1 to {present} (the tensors in the file)"
                ))
            })?;
        let get = |name: String, rank: usize| -> Result<(Vec<usize>, Vec<f32>)> {
            let view = tensors
                .tensor(&name)
                .map_err(|_| bad(format!("tensor {name} is missing")))?;
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(bad(format!(
                    "tensor {name} is {:?}, expected F32",
                    view.dtype()
                )));
            }
            if view.shape().len() != rank {
                return Err(bad(format!(
                    "tensor {name} has shape {:?}, expected {rank} dimensions",
                    view.shape()
                )));
            }
            let expected = view
                .shape()
                .iter()
                .try_fold(4usize, |acc, &d| acc.checked_mul(d));
            if expected != Some(view.data().len()) {
                return Err(bad(format!(
                    "tensor {name} holds {} bytes for shape {:?}",
                    view.data().len(),
                    view.shape()
                )));
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(crate::files::le_f32)
                .collect();
            if values.iter().any(|v| !v.is_finite()) {
                return Err(bad(format!("tensor {name} holds NaN or infinite values")));
            }
            Ok((view.shape().to_vec(), values))
        };
        let mut layers = Vec::with_capacity(count);
        for i in 0..count {
            let (wshape, weights) = get(format!("layer{i}.weight"), 2)?;
            let (bshape, bias) = get(format!("layer{i}.bias"), 1)?;
            // Weights are [inputs, outputs], as in Keras.
            let (inputs, outputs) = match wshape.as_slice() {
                &[inputs, outputs] => (inputs, outputs),
                _ => return Err(bad(format!("layer {i} weights are not a matrix"))),
            };
            if bshape != [outputs] {
                return Err(bad(format!(
                    "layer {i} has inconsistent shapes {wshape:?} and {bshape:?}"
                )));
            }
            layers.push(Dense {
                weights,
                bias,
                inputs,
                outputs,
            });
        }
        let head = Head::from_layers(layers, activation).map_err(|e| bad(e.to_string()))?;
        let top = match meta.get("top").filter(|t| !t.is_empty()) {
            None => None,
            Some(spec) => {
                let spec: TopSpec = serde_json::from_str(spec)
                    .map_err(|e| bad(format!("bad fine-tuned top description: {e}")))?;
                if spec.layers.len() > MAX_TOP_LAYERS {
                    return Err(bad(format!("{} fine-tuned layers", spec.layers.len())));
                }
                let mut layers = Vec::with_capacity(spec.layers.len());
                for layer in spec.layers {
                    let op = layer.op()?;
                    let (weights, bias) = if op == TopOp::Add {
                        (Vec::new(), Vec::new())
                    } else {
                        let (_, weights) = get(format!("top.{}.weight", layer.name), 2)?;
                        let (_, bias) = get(format!("top.{}.bias", layer.name), 1)?;
                        (weights, bias)
                    };
                    layers.push(TopLayer {
                        name: layer.name,
                        op,
                        inputs: layer.inputs,
                        shape: layer.shape,
                        weights,
                        bias,
                    });
                }
                let top = Top {
                    cut: spec.cut,
                    input_shape: spec.input_shape,
                    layers,
                };
                top.validate().map_err(|e| bad(e.to_string()))?;
                Some(top)
            }
        };
        let weights_path = meta
            .get("weights_path")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        let source = FeatureSource {
            model: field("model")?.clone(),
            weights_id: field("weights_id")?.clone(),
            weights_path,
            resize,
        };
        let classifier =
            Classifier::from_parts(head, classes, source).map_err(|e| bad(e.to_string()))?;
        match top {
            Some(top) => classifier.with_top(top).map_err(|e| bad(e.to_string())),
            None => Ok(classifier),
        }
    }
}

/// A fine-tuned top's structure, as the file's metadata holds it (the weights are tensors).
#[derive(serde::Serialize, serde::Deserialize)]
struct TopSpec {
    cut: String,
    input_shape: [usize; 3],
    layers: Vec<TopLayerSpec>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct TopLayerSpec {
    name: String,
    /// `pointwise`, `depthwise` or `add`.
    op: String,
    /// `Linear`, `Relu` or `Relu6`.
    activation: String,
    inputs: Vec<usize>,
    shape: [usize; 3],
}

impl TopSpec {
    fn of(top: &Top) -> TopSpec {
        TopSpec {
            cut: top.cut.clone(),
            input_shape: top.input_shape,
            layers: top
                .layers
                .iter()
                .map(|l| {
                    let (op, activation) = match l.op {
                        TopOp::Pointwise(a) => ("pointwise", a),
                        TopOp::Depthwise(a) => ("depthwise", a),
                        TopOp::Add => ("add", GraphActivation::Linear),
                    };
                    TopLayerSpec {
                        name: l.name.clone(),
                        op: op.into(),
                        activation: format!("{activation:?}"),
                        inputs: l.inputs.clone(),
                        shape: l.shape,
                    }
                })
                .collect(),
        }
    }
}

impl TopLayerSpec {
    fn op(&self) -> Result<TopOp> {
        let activation = match self.activation.as_str() {
            "Linear" => GraphActivation::Linear,
            "Relu" => GraphActivation::Relu,
            "Relu6" => GraphActivation::Relu6,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "fine-tuned layer {}: unknown activation '{other}'",
                    self.name
                )))
            }
        };
        match self.op.as_str() {
            "pointwise" => Ok(TopOp::Pointwise(activation)),
            "depthwise" => Ok(TopOp::Depthwise(activation)),
            "add" => Ok(TopOp::Add),
            other => Err(Error::InvalidArgument(format!(
                "fine-tuned layer {}: unknown operation '{other}'",
                self.name
            ))),
        }
    }
}

fn bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
