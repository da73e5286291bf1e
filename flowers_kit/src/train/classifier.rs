//! A trained classifier: its head plus what it needs to classify a photo later — class
//! names, the extractor variant and weights, and the preprocessing — saved as one file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::head::{Activation, Dense, Head};
use super::metrics::Metrics;
use crate::data::image::Resize;
use crate::error::{Error, IoContext, Result};
use crate::features::{FeatureExtractor, FeatureSet, Features};

/// Marks classifier files; bumped if the layout changes.
const FORMAT: &str = "flowers_kit classifier v1";

/// A head trained on features of one extractor.
#[derive(Debug, Clone, PartialEq)]
pub struct Classifier {
    /// The trained layers.
    pub head: Head,
    /// Class names in label order.
    pub classes: Vec<String>,
    /// The extractor variant the features came from, e.g. `mobilenet_v2_0.35_128`.
    pub model: String,
    /// Identifies the extractor's weights (SHA-256 of the weight file).
    pub weights_id: String,
    /// The weight file used when training, if it was a file.
    pub weights_path: Option<PathBuf>,
    /// Preprocessing of the photos.
    pub resize: Resize,
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
    /// Wraps a trained head with the facts of the features it was trained on.
    pub fn new(head: Head, features: &Features) -> Classifier {
        Classifier {
            head,
            classes: features.classes.clone(),
            model: features.model.clone(),
            weights_id: features.weights_id.clone(),
            weights_path: features.weights_path.clone(),
            resize: features.resize,
        }
    }

    /// Class probabilities `[n, classes]` for `n` feature rows.
    pub fn probabilities(&self, features: &[f32], n: usize) -> Result<Vec<f32>> {
        self.head.probabilities(features, n)
    }

    /// Accuracy, loss, confusion matrix, per-class metrics and mistakes on a feature set.
    pub fn evaluate(&self, set: &FeatureSet) -> Result<Metrics> {
        let probabilities = self.probabilities(&set.x.as_vec(), set.len())?;
        Ok(Metrics::from_probabilities(
            &self.classes,
            &set.labels,
            &probabilities,
            &set.paths,
        ))
    }

    /// The `k` most likely classes for one feature vector, most likely first.
    pub fn top_k(&self, features: &[f32], k: usize) -> Result<Vec<Prediction>> {
        let probabilities = self.probabilities(features, 1)?;
        let mut ranked: Vec<Prediction> = probabilities
            .iter()
            .enumerate()
            .map(|(label, &probability)| Prediction {
                class: self.classes[label].clone(),
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
        self.check_extractor(extractor)?;
        let features = extractor.extract_one(photo.as_ref())?;
        self.top_k(&features, k)
    }

    /// Errors unless `extractor` produces the features this head was trained on.
    pub fn check_extractor(&self, extractor: &FeatureExtractor) -> Result<()> {
        let network = extractor.network();
        if network.model.name() != self.model || network.weights_id != self.weights_id {
            return Err(Error::InvalidArgument(format!(
                "this classifier was trained on {} features (weights {}), but the extractor is \
                 {} (weights {})",
                self.model,
                short(&self.weights_id),
                network.model.name(),
                short(&network.weights_id)
            )));
        }
        Ok(())
    }

    /// Saves head weights and metadata to one safetensors file, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut tensors = Vec::new();
        for (i, layer) in self.head.layers.iter().enumerate() {
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
        let views = tensors
            .iter()
            .map(|(name, shape, data)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .map(|view| (name.clone(), view))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Backend(format!("cannot build classifier tensors: {e}")))?;
        let metadata: HashMap<String, String> = [
            ("format", FORMAT.to_string()),
            (
                "classes",
                serde_json::to_string(&self.classes).unwrap_or_default(),
            ),
            ("model", self.model.clone()),
            ("weights_id", self.weights_id.clone()),
            (
                "weights_path",
                self.weights_path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ),
            ("resize", self.resize.name().to_string()),
            ("activation", format!("{:?}", self.head.activation)),
            ("layers", self.head.layers.len().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let serialized = safetensors::serialize(views, &Some(metadata))
            .map_err(|e| Error::Backend(format!("cannot serialise the classifier: {e}")))?;
        crate::files::write_atomically(path, &serialized)
    }

    /// Loads a file written by [`Classifier::save`]; anything else is a clear error.
    pub fn load(path: impl AsRef<Path>) -> Result<Classifier> {
        let path = path.as_ref();
        let bad = |reason: String| Error::Tensors {
            path: path.to_path_buf(),
            reason,
        };
        let data = std::fs::read(path).at(path)?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&data)
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
        let count: usize = field("layers")?
            .parse()
            .map_err(|_| bad("bad layer count".into()))?;
        let tensors = safetensors::SafeTensors::deserialize(&data)
            .map_err(|e| bad(format!("damaged tensor data: {e}")))?;
        let mut layers = Vec::with_capacity(count);
        for i in 0..count {
            let get = |name: String| -> Result<(Vec<usize>, Vec<f32>)> {
                let view = tensors
                    .tensor(&name)
                    .map_err(|_| bad(format!("tensor {name} is missing")))?;
                let values = view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                Ok((view.shape().to_vec(), values))
            };
            let (wshape, weights) = get(format!("layer{i}.weight"))?;
            let (bshape, bias) = get(format!("layer{i}.bias"))?;
            // Weights are [inputs, outputs], as in Keras.
            let consistent = wshape.len() == 2
                && bshape == [wshape[1]]
                && layers
                    .last()
                    .is_none_or(|prev: &Dense| prev.outputs == wshape[0]);
            if !consistent {
                return Err(bad(format!(
                    "layer {i} has inconsistent shapes {wshape:?} and {bshape:?}"
                )));
            }
            layers.push(Dense {
                weights,
                bias,
                inputs: wshape[0],
                outputs: wshape[1],
            });
        }
        if layers.last().map(|l| l.outputs) != Some(classes.len()) {
            return Err(bad(format!(
                "the head does not output one logit per class ({} classes)",
                classes.len()
            )));
        }
        let weights_path = meta
            .get("weights_path")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        Ok(Classifier {
            head: Head { layers, activation },
            classes,
            model: field("model")?.clone(),
            weights_id: field("weights_id")?.clone(),
            weights_path,
            resize,
        })
    }
}

fn bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}
