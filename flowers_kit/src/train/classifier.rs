//! A trained classifier: its head plus what it needs to classify a photo later — class
//! names, the extractor variant and weights, the preprocessing, and the backbone's
//! fine-tuned blocks if it has them — saved as one file.
//!
//! The file is safetensors: the head's layers (`layer{i}.weight` `[inputs, outputs]`,
//! `layer{i}.bias`), the fine-tuned steps' tensors (`suffix.{step}.{k}`: a convolution's
//! kernel and bias, an affine step's scale and shift), and one metadata entry,
//! `classifier`, a typed JSON header ([`FORMAT`]). Files written by the first version
//! (`flowers_kit classifier v1`) still load.
//!
//! A classifier file is untrusted input: [`Classifier::load`] reads at most
//! [`MAX_CLASSIFIER_BYTES`], checks every tensor's dtype, rank and shape before using it,
//! bounds every count by the tensors actually present, and refuses NaN or infinite weights.
//! Fine-tuned blocks only replace the weights of the extractor's own steps, checked step by
//! step: a file cannot change the architecture it runs.

// This module reads untrusted input: every index and every arithmetic step is checked or
// justified where it is allowed.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::head::{Activation, Dense, Head};
use super::metrics::{most_probable, Metrics};
use crate::backend::NativeSuffix;
use crate::backend::{Cut, Network, Step};
use crate::data::image::Resize;
use crate::error::{Error, Result};
use crate::features::{FeatureExtractor, FeatureSet, FeatureSource, Features};

/// Marks classifier files of this layout.
pub const FORMAT: &str = "flowers_kit classifier v2";

/// The first layout (until 2026-12): metadata as separate strings, a fine-tuned MobileNet V2
/// top described by its own layer list. Still read.
const FORMAT_V1: &str = "flowers_kit classifier v1";

/// Largest classifier file [`Classifier::load`] reads, and [`Classifier::save`] writes.
pub const MAX_CLASSIFIER_BYTES: u64 = 256 << 20;

/// Most fine-tuned steps a file may describe (a fully fine-tuned MobileNet V2 has ~70,
/// NASNet Mobile's last three cells ~135).
const MAX_SAVED_STEPS: usize = 4096;

/// A head trained on features of one extractor.
#[derive(Debug, Clone)]
pub struct Classifier {
    head: Head,
    classes: Vec<String>,
    source: FeatureSource,
    fine_tuned: Option<FineTuned>,
}

/// The backbone's fine-tuned blocks in front of the head.
#[derive(Debug, Clone)]
enum FineTuned {
    /// Just trained: the whole network, cut below the blocks, with their trained weights,
    /// and the [`Cut::rows_key`] of the rows it was trained on.
    Trained(Cut, String),
    /// Read from a file: their weights, for the extractor's network to take.
    Saved(SavedSteps),
}

/// Fine-tuned weights as a file holds them.
#[derive(Debug, Clone, PartialEq)]
struct SavedSteps {
    /// Where they start in the network.
    first: FirstStep,
    /// Each step's name and tensors, in order (none for a step without weights).
    steps: Vec<(String, Vec<Vec<f32>>)>,
}

#[derive(Debug, Clone, PartialEq)]
enum FirstStep {
    /// At this step.
    At(usize),
    /// After the step of this name and shape (a v1 file's cut).
    After(String, [usize; 3]),
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

impl PartialEq for Classifier {
    fn eq(&self, other: &Classifier) -> bool {
        let suffix = |c: &Classifier| match &c.fine_tuned {
            None => None,
            Some(FineTuned::Trained(cut, _)) => Some(SavedSteps::of(cut)),
            Some(FineTuned::Saved(saved)) => Some(saved.clone()),
        };
        self.head == other.head
            && self.classes == other.classes
            && self.source == other.source
            && suffix(self) == suffix(other)
    }
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
            fine_tuned: None,
        })
    }

    /// The classifier with the backbone's fine-tuned blocks in front of its head: `cut`'s
    /// network carries their trained weights, and its features are the head's inputs; `rows`
    /// is the [`Cut::rows_key`] of the rows it was trained on (evaluating it on rows of
    /// another cut is then an error).
    pub fn with_fine_tuned(mut self, cut: Cut, rows: String) -> Result<Classifier> {
        if cut.network().feature_dim() != self.head.inputs() {
            return Err(Error::InvalidArgument(format!(
                "the fine-tuned network gives {} features, the head takes {}",
                cut.network().feature_dim(),
                self.head.inputs()
            )));
        }
        self.fine_tuned = Some(FineTuned::Trained(cut, rows));
        Ok(self)
    }

    /// The fine-tuned network, cut below its trained blocks, for a classifier just trained
    /// with them (`None` without fine-tuning, or for one read from a file: see
    /// [`Classifier::fine_tuned_extractor`]).
    pub fn fine_tuned(&self) -> Option<&Cut> {
        match &self.fine_tuned {
            Some(FineTuned::Trained(cut, _)) => Some(cut),
            _ => None,
        }
    }

    /// Whether the classifier carries fine-tuned blocks of the backbone.
    pub fn is_fine_tuned(&self) -> bool {
        self.fine_tuned.is_some()
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

    /// Class probabilities `[n, classes]` for `n` rows: features, or for a classifier just
    /// trained with fine-tuned blocks, the activations entering them.
    pub fn probabilities(&self, rows: &[f32], n: usize) -> Result<Vec<f32>> {
        match &self.fine_tuned {
            None => self.head.probabilities(rows, n),
            Some(FineTuned::Trained(cut, _)) => {
                let suffix = NativeSuffix::new(cut)?;
                self.head.probabilities(&suffix.features(rows, n)?, n)
            }
            Some(FineTuned::Saved(_)) => Err(Error::InvalidArgument(
                "this classifier was read from a file with fine-tuned blocks: classify photos \
                 with `predict(&extractor, photo, k)`, which runs them"
                    .into(),
            )),
        }
    }

    /// Errors unless `set`'s rows are what the classifier takes: features for a plain one,
    /// the activations crossing its own cut for a fine-tuned one.
    fn check_rows(&self, set: &FeatureSet) -> Result<()> {
        let wanted = match &self.fine_tuned {
            Some(FineTuned::Trained(_, rows)) => Some(rows.as_str()),
            _ => None,
        };
        if set.cut_key() != wanted {
            return Err(Error::InvalidArgument(format!(
                "these rows are {}, but the classifier takes {}: extract them with \
                 `extractor.extract_for(&split, &config)` and the classifier's config",
                set.cut_key()
                    .map_or("features".into(), |k| format!("the activations of {k}")),
                wanted.map_or("features".into(), |k| format!("the activations of {k}")),
            )));
        }
        Ok(())
    }

    /// Accuracy, loss, confusion matrix, per-class metrics and mistakes on a feature set.
    pub fn evaluate(&self, set: &FeatureSet) -> Result<Metrics> {
        set.check_labels(self.classes.len())?;
        self.check_rows(set)?;
        let probabilities = self.probabilities(set.values(), set.len())?;
        Metrics::from_probabilities(&self.classes, set.labels(), &probabilities, set.paths())
    }

    /// The predicted label (most probable class) of every example of a feature set, in
    /// order: to compare what two classifiers answer photo by photo.
    pub fn predicted_labels(&self, set: &FeatureSet) -> Result<Vec<usize>> {
        self.check_rows(set)?;
        let probabilities = self.probabilities(set.values(), set.len())?;
        Ok(probabilities
            .chunks(self.classes.len().max(1))
            .map(|row| most_probable(row).0)
            .collect())
    }

    /// The `k` most likely classes for one feature vector (the head's input), most likely
    /// first.
    pub fn top_k(&self, features: &[f32], k: usize) -> Result<Vec<Prediction>> {
        let probabilities = self.head.probabilities(features, 1)?;
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

    /// The extractor the classifier was trained on: its model, resize and weights (`weights`,
    /// a path or URL, if given; else the file the training read, unless the classifier was
    /// trained on the published weights, which come from the cache as published), without a
    /// feature cache. Errors if those are not the weights it was trained on.
    pub fn training_extractor(&self, weights: Option<&str>) -> Result<FeatureExtractor> {
        let trained_on = &self.source;
        // Published weights that Keras builds differently from the same file by path
        // (EfficientNet's input rescaling) are fetched as published again (from the cache).
        let published = trained_on
            .weights_id
            .ends_with(crate::backend::PUBLISHED_INPUT);
        let source = weights.map(str::to_string).or_else(|| {
            trained_on
                .weights_path
                .as_ref()
                .filter(|p| p.is_file() && !published)
                .map(|p| p.display().to_string())
        });
        let extractor = FeatureExtractor::with_weights(
            crate::models::Model::parse(&trained_on.model)?,
            source.as_deref(),
        )?
        .resize(trained_on.resize)
        .without_cache();
        trained_on.check(&extractor)?;
        Ok(extractor)
    }

    /// For a fine-tuned classifier, `extractor` with the fine-tuned blocks' weights in its
    /// network: what extracts the head's inputs from a photo. `None` without fine-tuning
    /// (the extractor itself does). `extractor` must be the one the classifier was trained
    /// on (same variant and weights).
    pub fn fine_tuned_extractor(
        &self,
        extractor: &FeatureExtractor,
    ) -> Result<Option<FeatureExtractor>> {
        self.source.check(extractor)?;
        let network = match &self.fine_tuned {
            None => return Ok(None),
            Some(FineTuned::Trained(cut, _)) => cut.network().clone(),
            Some(FineTuned::Saved(saved)) => saved.applied_to(extractor.network())?,
        };
        extractor.with_network(network).map(Some)
    }

    /// Classifies a photo file with `extractor`, which must be the one the head was trained
    /// on (same variant and weights); a fine-tuned classifier runs its blocks in place of the
    /// extractor's.
    pub fn predict(
        &self,
        extractor: &FeatureExtractor,
        photo: impl AsRef<Path>,
        k: usize,
    ) -> Result<Vec<Prediction>> {
        let features = match self.fine_tuned_extractor(extractor)? {
            None => extractor.extract_one(photo.as_ref())?,
            Some(fine_tuned) => fine_tuned.extract_one(photo.as_ref())?,
        };
        self.top_k(&features, k)
    }

    /// Saves the classifier to one safetensors file, atomically. A file over
    /// [`MAX_CLASSIFIER_BYTES`] (which `load` would refuse) is an error, not written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
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
        let fine_tuned = match &self.fine_tuned {
            None => None,
            Some(FineTuned::Trained(cut, _)) => Some(SavedSteps::of(cut)),
            Some(FineTuned::Saved(saved)) => Some(saved.clone()),
        };
        let suffix_header = match &fine_tuned {
            None => None,
            Some(saved) => {
                let FirstStep::At(first) = saved.first else {
                    return Err(Error::InvalidArgument(
                        "a classifier read from a first-version file keeps its fine-tuned top \
                         until it is given its extractor; train again to save it"
                            .into(),
                    ));
                };
                let mut steps = Vec::with_capacity(saved.steps.len());
                for (offset, (name, params)) in saved.steps.iter().enumerate() {
                    let index = first.saturating_add(offset);
                    for (k, values) in params.iter().enumerate() {
                        tensors.push((
                            format!("suffix.{index}.{k}"),
                            vec![values.len()],
                            bytes(values),
                        ));
                    }
                    steps.push(StepHeader {
                        name: name.clone(),
                        tensors: params.iter().map(Vec::len).collect(),
                    });
                }
                Some(SuffixHeader { first, steps })
            }
        };
        let header = Header {
            classes: self.classes.clone(),
            model: self.source.model.clone(),
            weights_id: self.source.weights_id.clone(),
            weights_path: self.source.weights_path.clone(),
            resize: self.source.resize,
            activation: self.head.activation(),
            layers: self.head.layers().len(),
            fine_tuned: suffix_header,
        };
        let write_error = |reason: String| Error::Write {
            path: path.to_path_buf(),
            reason,
        };
        let header = serde_json::to_string(&header).map_err(|e| write_error(e.to_string()))?;
        let metadata: HashMap<String, String> = [
            ("format".to_string(), FORMAT.to_string()),
            ("classifier".to_string(), header),
        ]
        .into_iter()
        .collect();
        let views = tensors
            .iter()
            .map(|(name, shape, data)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .map(|view| (name.clone(), view))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| write_error(format!("cannot build the tensors: {e}")))?;
        let serialized = safetensors::serialize(views, &Some(metadata))
            .map_err(|e| write_error(e.to_string()))?;
        // What save writes, load must read.
        if serialized.len() as u64 > MAX_CLASSIFIER_BYTES {
            return Err(write_error(format!(
                "{} bytes is more than a classifier file may hold ({MAX_CLASSIFIER_BYTES})",
                serialized.len()
            )));
        }
        crate::files::write_atomically(path, &serialized)
    }

    /// Loads a file written by [`Classifier::save`] (this layout or the first one); anything
    /// else is a clear error.
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
        let file = TensorFile::read(data, path)?;
        let header = match file.meta.get("format").map(String::as_str) {
            Some(FORMAT) => {
                let json = file
                    .meta
                    .get("classifier")
                    .ok_or_else(|| bad("the classifier header is missing".into()))?;
                if json.len() > MAX_HEADER_BYTES {
                    return Err(bad(format!(
                        "a {}-byte classifier header is more than one may hold ({MAX_HEADER_BYTES})",
                        json.len()
                    )));
                }
                serde_json::from_str::<Header>(json)
                    .map_err(|e| bad(format!("bad classifier header: {e}")))?
            }
            Some(FORMAT_V1) => v1::header(&file.meta).map_err(&bad)?,
            _ => return Err(bad("not a flowers_kit classifier file".into())),
        };
        if header.classes.len() > MAX_CLASSES {
            return Err(bad(format!(
                "{} classes, more than a classifier may have ({MAX_CLASSES})",
                header.classes.len()
            )));
        }
        // Two tensors per layer: a count beyond what the file holds is a lie, not a reason
        // to allocate.
        let present = file.tensors.len() / 2;
        if header.layers == 0 || header.layers > present {
            return Err(bad(format!(
                "the layer count must be 1 to {present} (the tensors in the file), not {}",
                header.layers
            )));
        }
        let mut layers = Vec::with_capacity(header.layers);
        for i in 0..header.layers {
            let (wshape, weights) = file.get(&format!("layer{i}.weight"), 2)?;
            let (bshape, bias) = file.get(&format!("layer{i}.bias"), 1)?;
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
        let head = Head::from_layers(layers, header.activation).map_err(|e| bad(e.to_string()))?;
        let saved = match (
            file.meta.get("format").map(String::as_str),
            &header.fine_tuned,
        ) {
            (Some(FORMAT_V1), _) => v1::top(&file)?,
            (_, None) => None,
            (_, Some(suffix)) => Some(SavedSteps::read(suffix, &file)?),
        };
        let source = FeatureSource {
            model: header.model,
            weights_id: header.weights_id,
            weights_path: header.weights_path,
            resize: header.resize,
        };
        let mut classifier =
            Classifier::from_parts(head, header.classes, source).map_err(|e| bad(e.to_string()))?;
        classifier.fine_tuned = saved.map(FineTuned::Saved);
        Ok(classifier)
    }
}

/// The `classifier` metadata entry.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    /// Class names in label order.
    classes: Vec<String>,
    /// The extractor's model name.
    model: String,
    /// Its weights' identity (SHA-256 of the weight file).
    weights_id: String,
    /// Its weight file, if it came from one.
    weights_path: Option<PathBuf>,
    /// The preprocessing resize.
    resize: Resize,
    /// Between the head's layers.
    activation: Activation,
    /// The head's layer count.
    layers: usize,
    /// The fine-tuned steps, if any.
    fine_tuned: Option<SuffixHeader>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SuffixHeader {
    /// The first fine-tuned step's index in the network.
    first: usize,
    /// Every step from there to the last, in order.
    steps: Vec<StepHeader>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StepHeader {
    /// The step's name (its last Keras layer).
    name: String,
    /// The length of each of its tensors, stored as `suffix.{index}.{k}`.
    tensors: Vec<usize>,
}

impl SavedSteps {
    /// The trained steps of `cut`.
    fn of(cut: &Cut) -> SavedSteps {
        SavedSteps {
            first: FirstStep::At(cut.first()),
            steps: cut
                .suffix()
                .iter()
                .map(|step| {
                    let params = step.parameters().into_iter().map(<[f32]>::to_vec).collect();
                    (step.name.clone(), params)
                })
                .collect(),
        }
    }

    /// The steps a v2 header describes, with their tensors from the file.
    fn read(header: &SuffixHeader, file: &TensorFile) -> Result<SavedSteps> {
        if header.steps.len() > MAX_SAVED_STEPS || header.steps.is_empty() {
            return Err(file.bad(format!("{} fine-tuned steps", header.steps.len())));
        }
        let mut steps = Vec::with_capacity(header.steps.len());
        for (offset, step) in header.steps.iter().enumerate() {
            if step.tensors.len() > 2 {
                return Err(file.bad(format!(
                    "step {} has {} tensors",
                    step.name,
                    step.tensors.len()
                )));
            }
            let index = header
                .first
                .checked_add(offset)
                .ok_or_else(|| file.bad("a step index past usize".into()))?;
            let mut params = Vec::with_capacity(step.tensors.len());
            for (k, &len) in step.tensors.iter().enumerate() {
                let (shape, values) = file.get(&format!("suffix.{index}.{k}"), 1)?;
                if shape != [len] {
                    return Err(file.bad(format!(
                        "tensor suffix.{index}.{k} has shape {shape:?}, the header says [{len}]"
                    )));
                }
                params.push(values);
            }
            steps.push((step.name.clone(), params));
        }
        Ok(SavedSteps {
            first: FirstStep::At(header.first),
            steps,
        })
    }

    /// `network` with these weights in its steps, each checked against the step it
    /// replaces: the same name, and tensors of the same lengths.
    fn applied_to(&self, network: &Network) -> Result<Network> {
        let all = network.steps();
        let first = match &self.first {
            FirstStep::At(first) => *first,
            FirstStep::After(name, shape) => all
                .iter()
                .position(|s| &s.name == name && &s.shape == shape)
                .and_then(|i| i.checked_add(1))
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "{} has no layer {name} of shape {shape:?} for the fine-tuned top",
                        network.model().name()
                    ))
                })?,
        };
        let mismatch = |why: String| {
            Error::InvalidArgument(format!(
                "the classifier's fine-tuned blocks do not fit {}: {why}",
                network.model().name()
            ))
        };
        let theirs = all
            .get(first..)
            .filter(|rest| rest.len() == self.steps.len())
            .ok_or_else(|| {
                mismatch(format!(
                    "{} steps from step {first} of {}",
                    self.steps.len(),
                    all.len()
                ))
            })?;
        let mut steps: Vec<Step> = theirs.to_vec();
        for (step, (name, params)) in steps.iter_mut().zip(&self.steps) {
            let targets = step.parameters();
            let fits = step.name == *name
                && targets.len() == params.len()
                && targets.iter().zip(params).all(|(t, p)| t.len() == p.len());
            if !fits {
                return Err(mismatch(format!(
                    "step {name} is not the network's {}",
                    step.name
                )));
            }
            for (target, values) in step.parameters_mut().into_iter().zip(params) {
                target.clone_from(values);
            }
        }
        network.with_weights_from(first, &steps)
    }
}

/// A safetensors file's tensors and metadata, read with every shape checked, and each value
/// at most once in all: a file that names one tensor many times cannot multiply its size in
/// memory.
struct TensorFile<'a> {
    tensors: safetensors::SafeTensors<'a>,
    meta: HashMap<String, String>,
    path: &'a Path,
    /// Values still to read: the file's length in f32s, less what was read.
    unread: std::cell::Cell<usize>,
}

/// Longest `classifier` header read: far above any real one (classes, a few hundred steps),
/// and small enough to parse before checking its counts.
const MAX_HEADER_BYTES: usize = 4 << 20;

/// Most classes a classifier file may have (ImageNet's 1,000): its evaluation holds a
/// classes × classes confusion matrix.
pub const MAX_CLASSES: usize = 1_000;

impl<'a> TensorFile<'a> {
    fn read(data: &'a [u8], path: &'a Path) -> Result<TensorFile<'a>> {
        let bad = |reason: String| Error::Tensors {
            path: path.to_path_buf(),
            reason,
        };
        let tensors = safetensors::SafeTensors::deserialize(data)
            .map_err(|e| bad(format!("not a classifier file (damaged safetensors: {e})")))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(data)
            .map_err(|e| bad(format!("not a classifier file (damaged safetensors: {e})")))?;
        Ok(TensorFile {
            tensors,
            meta: header.metadata().clone().unwrap_or_default(),
            path,
            unread: std::cell::Cell::new(data.len() / 4),
        })
    }

    fn bad(&self, reason: String) -> Error {
        Error::Tensors {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    /// Tensor `name` of `rank` dimensions: its shape and values, all finite.
    fn get(&self, name: &str, rank: usize) -> Result<(Vec<usize>, Vec<f32>)> {
        let view = self
            .tensors
            .tensor(name)
            .map_err(|_| self.bad(format!("tensor {name} is missing")))?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(self.bad(format!("tensor {name} is {:?}, expected F32", view.dtype())));
        }
        if view.shape().len() != rank {
            return Err(self.bad(format!(
                "tensor {name} has shape {:?}, expected {rank} dimensions",
                view.shape()
            )));
        }
        let expected = view
            .shape()
            .iter()
            .try_fold(4usize, |acc, &d| acc.checked_mul(d));
        if expected != Some(view.data().len()) {
            return Err(self.bad(format!(
                "tensor {name} holds {} bytes for shape {:?}",
                view.data().len(),
                view.shape()
            )));
        }
        let count = view.data().len() / 4;
        let left = self.unread.get().checked_sub(count).ok_or_else(|| {
            self.bad(format!(
                "tensor {name} is read again (the file names one tensor several times)"
            ))
        })?;
        self.unread.set(left);
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(crate::files::le_f32)
            .collect();
        if values.iter().any(|v| !v.is_finite()) {
            return Err(self.bad(format!("tensor {name} holds NaN or infinite values")));
        }
        Ok((view.shape().to_vec(), values))
    }
}

/// Reading the first layout: its metadata strings, and a fine-tuned MobileNet V2 top
/// described layer by layer (1×1 and 3×3 depthwise convolutions and adds after a named
/// cut), which maps one to one onto the network's steps after that cut.
mod v1 {
    use super::*;

    /// Most layers a v1 top held (three blocks and the last convolution are 13).
    const MAX_TOP_LAYERS: usize = 64;

    #[derive(Deserialize)]
    struct TopSpec {
        cut: String,
        input_shape: [usize; 3],
        layers: Vec<LayerSpec>,
    }

    #[derive(Deserialize)]
    struct LayerSpec {
        name: String,
        /// `pointwise`, `depthwise` or `add`.
        op: String,
    }

    pub(super) fn header(meta: &HashMap<String, String>) -> std::result::Result<Header, String> {
        let field = |k: &str| -> std::result::Result<&String, String> {
            meta.get(k)
                .ok_or_else(|| format!("metadata field '{k}' is missing"))
        };
        let classes: Vec<String> =
            serde_json::from_str(field("classes")?).map_err(|e| format!("bad class list: {e}"))?;
        let resize = match field("resize")?.as_str() {
            "tf_v1_bilinear" => Resize::TfV1Bilinear,
            "tf_v2_bilinear" => Resize::TfV2Bilinear,
            other => return Err(format!("unknown resize '{other}'")),
        };
        let activation = match field("activation")?.as_str() {
            "Relu" => Activation::Relu,
            "Linear" => Activation::Linear,
            other => return Err(format!("unknown activation '{other}'")),
        };
        let layers = field("layers")?
            .parse()
            .map_err(|_| "the layer count is not a number".to_string())?;
        Ok(Header {
            classes,
            model: field("model")?.clone(),
            weights_id: field("weights_id")?.clone(),
            weights_path: meta
                .get("weights_path")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            resize,
            activation,
            layers,
            fine_tuned: None,
        })
    }

    /// The fine-tuned top of a v1 file, if it has one.
    pub(super) fn top(file: &TensorFile) -> Result<Option<SavedSteps>> {
        let Some(spec) = file.meta.get("top").filter(|t| !t.is_empty()) else {
            return Ok(None);
        };
        let spec: TopSpec = serde_json::from_str(spec)
            .map_err(|e| file.bad(format!("bad fine-tuned top description: {e}")))?;
        if spec.layers.is_empty() || spec.layers.len() > MAX_TOP_LAYERS {
            return Err(file.bad(format!("{} fine-tuned layers", spec.layers.len())));
        }
        let mut steps = Vec::with_capacity(spec.layers.len());
        for layer in spec.layers {
            let params = match layer.op.as_str() {
                "add" => Vec::new(),
                "pointwise" | "depthwise" => {
                    let (_, weights) = file.get(&format!("top.{}.weight", layer.name), 2)?;
                    let (_, bias) = file.get(&format!("top.{}.bias", layer.name), 1)?;
                    vec![weights, bias]
                }
                other => {
                    return Err(file.bad(format!(
                        "fine-tuned layer {}: unknown operation '{other}'",
                        layer.name
                    )))
                }
            };
            steps.push((layer.name, params));
        }
        Ok(Some(SavedSteps {
            first: FirstStep::After(spec.cut, spec.input_shape),
            steps,
        }))
    }
}

fn bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
