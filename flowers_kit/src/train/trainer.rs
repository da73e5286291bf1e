//! The tutorial's training loop.

use dfdx::prelude::{Axis, HasShape};
use dfdx::tensor::{Cpu, Gradients, Tensor, TensorFrom, Trace};
use dfdx::tensor_ops::*;
use rand::SeedableRng;
use serde::Serialize;

use super::classifier::Classifier;
use super::finetune::{FineTune, Schedule};
use super::head::{forward_from_first, Activation, DeviceParams, Head};
use super::metrics::most_probable;
use super::optim::{update, Optimizer, Slots};
use super::suffix::Suffix;
use crate::backend::EVAL_CHUNK;
use crate::data::Augment;
use crate::device::{dfdx_error as backend, DeviceKind, DfdxDevice};
use crate::error::{Error, Result};
use crate::features::{BackendKind, FeatureSet, Features, RowsPlan};
use std::borrow::Cow;

/// Hyperparameters, named after the tutorial's constants where it has them.
///
/// ```
/// use flowers_kit::train::{Optimizer, TrainConfig};
/// let config = TrainConfig { steps: 300, optimizer: Optimizer::adam(), learning_rate: 0.001,
///                            ..Default::default() };
/// assert_eq!(config.batch_size, Some(10));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainConfig {
    /// `NUM_TRAIN_STEPS` (100).
    pub steps: usize,
    /// `TRAIN_BATCH_SIZE` (10): a random batch per step; `None` trains on the full set.
    pub batch_size: Option<usize>,
    /// `LEARNING_RATE` (0.01).
    pub learning_rate: f32,
    /// `EVAL_EVERY` (10): test accuracy is computed and printed at step 0, every
    /// `eval_every` steps, and at the last step.
    pub eval_every: usize,
    /// The optimizer (SGD, as in the tutorial).
    pub optimizer: Optimizer,
    /// Hidden layer sizes; empty for the tutorial's linear classifier.
    pub hidden: Vec<usize>,
    /// Between hidden layers.
    pub activation: Activation,
    /// L2 weight decay added to the gradients (0: none).
    pub weight_decay: f32,
    /// Seeds the initial weights and the batches: same seed, same history.
    pub seed: u64,
    /// Where to train.
    #[serde(skip)]
    pub device: DeviceKind,
    /// What trains fine-tuned blocks on the CPU: the native kernels' own backward pass
    /// (the default, several times faster) or dfdx's tape (the reference). On a GPU, dfdx.
    #[serde(skip)]
    pub backend: BackendKind,
    /// Print the tutorial's `Test accuracy at step N` lines.
    pub verbose: bool,
    /// Train on augmented views of the training photos instead of the photos themselves
    /// (`None`, the tutorial: no augmentation). The features must hold the views:
    /// extract them with [`FeatureExtractor::extract_for`].
    pub augment: Option<Augment>,
    /// How many augmented views of each training photo batches are drawn from (with
    /// `augment`; default 4).
    pub views: usize,
    /// Also train the top of the backbone (`None`, the tutorial: the backbone is frozen).
    /// The features must be the activations entering it: extract them with
    /// [`FeatureExtractor::extract_for`].
    pub fine_tune: Option<FineTune>,
    /// How the learning rates change over the steps (the tutorial: constant).
    pub schedule: Schedule,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 100,
            batch_size: Some(10),
            learning_rate: 0.01,
            eval_every: 10,
            optimizer: Optimizer::Sgd,
            hidden: Vec::new(),
            activation: Activation::Relu,
            weight_decay: 0.0,
            seed: 0,
            device: DeviceKind::preferred(),
            backend: BackendKind::Native,
            verbose: true,
            augment: None,
            views: 4,
            fine_tune: None,
            schedule: Schedule::Constant,
        }
    }
}

/// Metrics over training, one entry per evaluation step.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct History {
    /// The steps at which the entries were taken.
    pub step: Vec<usize>,
    /// Loss of the step's training batch (before its update, like the tutorial's `sess.run`).
    pub train_loss: Vec<f32>,
    /// Accuracy on the step's training batch.
    pub train_accuracy: Vec<f32>,
    /// Loss on the whole test set after the step.
    pub test_loss: Vec<f32>,
    /// Accuracy on the whole test set after the step.
    pub test_accuracy: Vec<f32>,
    /// Loss on the whole validation set after the step (empty without one).
    pub validation_loss: Vec<f32>,
    /// Accuracy on the whole validation set after the step (empty without one).
    pub validation_accuracy: Vec<f32>,
}

impl History {
    /// Appends one evaluation: the step's training batch `(loss, accuracy)`, the test set's
    /// and the validation set's if there is one; with `verbose`, prints the tutorial's line.
    fn record(
        &mut self,
        step: usize,
        train: (f32, f32),
        test: (f32, f32),
        validation: Option<(f32, f32)>,
        verbose: bool,
    ) {
        self.step.push(step);
        self.train_loss.push(train.0);
        self.train_accuracy.push(train.1);
        self.test_loss.push(test.0);
        self.test_accuracy.push(test.1);
        if let Some((loss, accuracy)) = validation {
            self.validation_loss.push(loss);
            self.validation_accuracy.push(accuracy);
        }
        if verbose {
            println!("Test accuracy at step {step}: {:.2}%", test.1 * 100.0);
        }
    }

    /// The validation accuracy after the last step (NaN without a validation set): what to
    /// compare settings by, leaving the test set for the one final measurement.
    pub fn final_validation_accuracy(&self) -> f32 {
        self.validation_accuracy.last().copied().unwrap_or(f32::NAN)
    }

    /// The test accuracy evaluated at `step`, if it was (`step` 0, every `eval_every`
    /// steps and the last one are): how far a run had come halfway, say.
    ///
    /// ```
    /// use flowers_kit::train::History;
    /// let history = History { step: vec![0, 500, 999], test_accuracy: vec![0.2, 0.8, 0.82], ..Default::default() };
    /// assert_eq!(history.test_accuracy_at(500), Some(0.8));
    /// assert_eq!(history.test_accuracy_at(501), None);
    /// ```
    pub fn test_accuracy_at(&self, step: usize) -> Option<f32> {
        let index = self.step.iter().position(|&s| s == step)?;
        self.test_accuracy.get(index).copied()
    }

    /// The test accuracy after the last step (training always evaluates it); NaN for an
    /// empty history.
    pub fn final_test_accuracy(&self) -> f32 {
        self.test_accuracy.last().copied().unwrap_or(f32::NAN)
    }
}

impl TrainConfig {
    /// Checks the hyperparameters alone: at least one step, a positive evaluation interval,
    /// batch size and hidden sizes, a finite positive learning rate, a finite non-negative
    /// weight decay. [`train`] calls it first; a command line can call it before any work.
    ///
    /// ```
    /// use flowers_kit::train::TrainConfig;
    /// assert!(TrainConfig::default().validate().is_ok());
    /// assert!(TrainConfig { learning_rate: f32::NAN, ..Default::default() }.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.steps == 0 || self.eval_every == 0 || self.batch_size == Some(0) {
            return bad("steps, eval_every and batch_size must be at least 1".into());
        }
        if self.hidden.contains(&0) {
            return bad(format!(
                "hidden layer sizes must be at least 1, got {:?}",
                self.hidden
            ));
        }
        if let Some(&too_big) = self
            .hidden
            .iter()
            .find(|&&h| h > super::head::MAX_HEAD_PARAMETERS)
        {
            return bad(format!(
                "a hidden layer of {too_big} units is more than a head may hold ({} weights in \
                 all)",
                super::head::MAX_HEAD_PARAMETERS
            ));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad(format!(
                "the learning rate must be a positive number, got {}",
                self.learning_rate
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "weight decay must be zero or positive, got {}",
                self.weight_decay
            ));
        }
        if let Some(fine_tune) = &self.fine_tune {
            fine_tune.validate()?;
            if self.batch_size.is_none_or(|b| b > MAX_FINE_TUNE_BATCH) {
                return bad(format!(
                    "fine-tuning trains on batches of 1 to {MAX_FINE_TUNE_BATCH} photos, \
                     got {:?}",
                    self.batch_size
                ));
            }
        }
        if let Some(augment) = &self.augment {
            augment.validate()?;
            if !(1..=MAX_VIEWS).contains(&self.views) {
                return bad(format!(
                    "views must be from 1 to {MAX_VIEWS} with augmentation, got {}",
                    self.views
                ));
            }
        }
        Ok(())
    }
}

/// The most augmented views per training photo: each is a full extraction of the
/// training set.
pub const MAX_VIEWS: usize = 64;

/// Largest batch when fine-tuning. The window ops gather every tap of every output pixel:
/// for MobileNet V2 1.0/224's last blocks `photos · 49 · 9 · 960` values, 433 MB for 256
/// photos (and as much again for their gradient; the tape keeps every intermediate until the
/// step ends), more for ResNet's and NASNet's wider windows. Smaller batches are what fine-
/// tuning uses in practice (the Keras guide: 32).
pub const MAX_FINE_TUNE_BATCH: usize = 256;

impl RowsPlan for TrainConfig {
    fn check(&self) -> Result<()> {
        self.validate()
    }

    fn augmentation(&self) -> Option<(Augment, usize)> {
        self.augment.map(|augment| (augment, self.views))
    }

    fn fine_tuned_blocks(&self) -> Option<usize> {
        self.fine_tune.map(|f| f.blocks)
    }
}

/// The rows training draws its batches from: the photos, or with `config.augment` their
/// first `config.views` augmented views, which the features must hold.
fn training_rows<'a>(features: &'a Features, config: &TrainConfig) -> Result<Cow<'a, FeatureSet>> {
    let Some(augment) = config.augment else {
        return Ok(Cow::Borrowed(&features.train));
    };
    if features.augment != Some(augment) || features.train_views.len() < config.views {
        return Err(Error::InvalidArgument(format!(
            "the config asks for {} augmented views ({}), but the features hold {} ({}): \
             extract them with `extractor.extract_for(&split, &config)`",
            config.views,
            augment.key(),
            features.train_views.len(),
            features
                .augment
                .map_or("no augmentation".into(), |a| a.key()),
        )));
    }
    let views = &features.train_views[..config.views];
    let mut values = Vec::with_capacity(views.iter().map(|v| v.values().len()).sum());
    let (mut labels, mut paths) = (Vec::new(), Vec::new());
    for view in views {
        values.extend_from_slice(view.values());
        labels.extend_from_slice(view.labels());
        paths.extend_from_slice(view.paths());
    }
    Ok(Cow::Owned(FeatureSet::new(
        values,
        features.dim,
        labels,
        paths,
    )?))
}

/// Checks the features and the config before any work is done.
fn validate(features: &Features, config: &TrainConfig) -> Result<()> {
    config.validate()?;
    let bad = |m: String| Err(Error::InvalidArgument(m));
    if features.train.is_empty() || features.test.is_empty() {
        return bad(format!(
            "empty split: {} training and {} test examples (both are needed)",
            features.train.len(),
            features.test.len()
        ));
    }
    let views = features.train_views.iter().map(|v| ("augmented view", v));
    let sets = [
        ("train", &features.train),
        ("validation", &features.validation),
        ("test", &features.test),
    ];
    for (name, set) in sets.into_iter().chain(views) {
        let cols = set.dim();
        if cols != features.dim {
            return bad(format!(
                "{name} features have {cols} values per row, but the feature dimension is {}",
                features.dim
            ));
        }
        set.check_labels(features.classes.len())
            .map_err(|e| Error::InvalidArgument(format!("{name} set: {e}")))?;
        if let Some(i) = set.values().iter().position(|v| !v.is_finite()) {
            return bad(format!(
                "{name} features contain a non-finite value (NaN or infinity) in row {}, from {}",
                i / cols,
                set.paths()
                    .get(i / cols)
                    .map_or("?".into(), |p| p.display().to_string())
            ));
        }
    }
    if features.classes.len() < 2 {
        return bad(format!(
            "a classifier needs at least 2 classes, got {}",
            features.classes.len()
        ));
    }
    match (&features.cut, config.fine_tune) {
        (None, None) => Ok(()),
        (Some(cut), Some(fine_tune)) if cut.blocks() != fine_tune.blocks => bad(format!(
            "the rows are the activations entering the last {} blocks, but the config \
             fine-tunes {}: extract them with `extractor.extract_for(&split, &config)`",
            cut.blocks(),
            fine_tune.blocks
        )),
        (Some(cut), Some(_)) if cut.row_len() != features.dim => bad(format!(
            "the rows hold {} values, but the activations entering {} are {}",
            features.dim,
            cut.block_name(),
            cut.row_len()
        )),
        (Some(_), Some(_)) => Ok(()),
        (None, Some(_)) => bad(
            "fine-tuning needs the activations entering the blocks, not features: extract \
             them with `extractor.extract_for(&split, &config)`"
                .into(),
        ),
        (Some(cut), None) => bad(format!(
            "these rows are the activations entering {} (extracted for fine-tuning), but the \
             config fine-tunes nothing",
            cut.block_name()
        )),
    }
}

/// Trains a head on `features.train` (or, with `config.augment`, on its augmented views),
/// evaluating on `features.test` as the tutorial does. With `config.fine_tune`, the rows are
/// the activations entering the backbone's last blocks ([`FeatureExtractor::extract_for`]
/// makes them), and those blocks train with the head, after `head_steps` steps of the head
/// alone.
///
/// [`FeatureExtractor::extract_for`]: crate::features::FeatureExtractor::extract_for
///
/// ```no_run
/// # use flowers_kit::prelude::*;
/// # fn main() -> flowers_kit::Result<()> {
/// # let features: Features = unimplemented!();
/// let config = TrainConfig::default();                 // the tutorial's settings
/// let (classifier, history) = train(&features, &config)?;
/// println!("final test accuracy {:.1}%", history.final_test_accuracy() * 100.0);
/// # Ok(()) }
/// ```
pub fn train(features: &Features, config: &TrainConfig) -> Result<(Classifier, History)> {
    validate(features, config)?;
    let inputs = features
        .cut
        .as_ref()
        .map_or(features.dim, |cut| cut.network().feature_dim());
    let head = Head::new(
        inputs,
        &config.hidden,
        features.classes.len(),
        config.activation,
        config.seed,
    )?;
    let _flush = super::denormals::FlushDenormals::new();
    match config.device {
        DeviceKind::Cpu => run_on(Cpu::default(), head, features, config),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => run_on(
            crate::device::open_cuda(config.seed)?,
            head,
            features,
            config,
        ),
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda => Err(crate::device::no_cuda()),
    }
}

/// The head alone, or the fine-tuned blocks and the head in two phases, on `dev`.
fn run_on<D: DfdxDevice>(
    dev: D,
    mut head: Head,
    features: &Features,
    config: &TrainConfig,
) -> Result<(Classifier, History)> {
    let rows = training_rows(features, config)?;
    let mut history = History::default();
    let mut params = DeviceParams::upload(&head, &dev)?;
    let whole = Phase {
        steps: config.steps,
        first_step: 0,
        learning_rate: config.learning_rate,
        suffix_learning_rate: 0.0,
        seed: config.seed,
    };
    let Some(cut) = &features.cut else {
        let held_out = (&features.validation, &features.test);
        train_loop(
            &dev,
            &mut params,
            None,
            &rows,
            held_out,
            config,
            whole,
            &mut history,
        )?;
        params.download(&mut head);
        return Ok((Classifier::new(head, features)?, history));
    };
    let fine_tune = config
        .fine_tune
        .expect("invariant: validate pairs rows of a cut with config.fine_tune");
    // The CPU trains the blocks with the native kernels unless dfdx is asked for; another
    // device traces them with dfdx where the head runs.
    let native = config.device == DeviceKind::Cpu && config.backend == BackendKind::Native;
    let mut suffix = Suffix::new(cut, &dev, native)?;
    if fine_tune.head_steps > 0 {
        // Phase 1: the head alone on the frozen features, computed once from the rows.
        let frozen = |set: &FeatureSet| -> Result<FeatureSet> {
            let values = suffix.features(set.values(), set.len())?;
            let dim = cut.network().feature_dim();
            FeatureSet::new(values, dim, set.labels().to_vec(), set.paths().to_vec())
        };
        let head_only = Phase {
            steps: fine_tune.head_steps,
            ..whole
        };
        let (train_set, validation_set, test_set) = (
            frozen(&rows)?,
            frozen(&features.validation)?,
            frozen(&features.test)?,
        );
        let held_out = (&validation_set, &test_set);
        train_loop(
            &dev,
            &mut params,
            None,
            &train_set,
            held_out,
            config,
            head_only,
            &mut history,
        )?;
    }
    // Phase 2: the blocks unfrozen, at their own rate, with the head. After a head-only
    // phase the head, already trained, continues at the blocks' low rate too, as the Keras
    // guide recompiles the whole model with one low rate; trained together from the start,
    // it keeps its own.
    let together = Phase {
        first_step: fine_tune.head_steps,
        learning_rate: if fine_tune.head_steps > 0 {
            fine_tune.learning_rate
        } else {
            config.learning_rate
        },
        suffix_learning_rate: fine_tune.learning_rate,
        // Other batches than the head-only phase drew, when there was one.
        seed: if fine_tune.head_steps > 0 {
            config.seed.wrapping_add(1)
        } else {
            config.seed
        },
        ..whole
    };
    train_loop(
        &dev,
        &mut params,
        Some(&mut suffix),
        &rows,
        (&features.validation, &features.test),
        config,
        together,
        &mut history,
    )?;
    params.download(&mut head);
    let classifier =
        Classifier::new(head, features)?.with_fine_tuned(suffix.trained()?, cut.rows_key())?;
    Ok((classifier, history))
}

/// One run of the training loop: how many steps, numbered from where, at which rates.
#[derive(Debug, Clone, Copy)]
struct Phase {
    steps: usize,
    /// The number of this phase's first step in the history.
    first_step: usize,
    learning_rate: f32,
    suffix_learning_rate: f32,
    seed: u64,
}

/// A batch on the device: features `[n, dim]`, the same transposed, one-hot targets.
struct Batch<D: DfdxDevice> {
    x: Tensor<(usize, usize), f32, D>,
    xt: Tensor<(usize, usize), f32, D>,
    targets: Tensor<(usize, usize), f32, D>,
    labels: Vec<usize>,
}

impl<D: DfdxDevice> Batch<D> {
    /// Uploads the rows of `set` picked by `picked`, or all of them.
    fn new(dev: &D, set: &FeatureSet, classes: usize, picked: Option<&[usize]>) -> Self {
        let (values, labels) = picked_rows(set, picked);
        let (n, dim) = (labels.len(), set.dim());
        let mut transposed = vec![0f32; values.len()];
        for (i, row) in values.chunks_exact(dim).enumerate() {
            for (j, v) in row.iter().enumerate() {
                transposed[j * n + i] = *v;
            }
        }
        Batch {
            x: dev.tensor((values, (n, dim))),
            xt: dev.tensor((transposed, (dim, n))),
            targets: one_hot(dev, &labels, classes),
            labels,
        }
    }
}

/// The rows of `set` picked by `picked` (indices sampled from `0..set.len()`), or all, with
/// their labels.
fn picked_rows(set: &FeatureSet, picked: Option<&[usize]>) -> (Vec<f32>, Vec<usize>) {
    match picked {
        None => (set.values().to_vec(), set.labels().to_vec()),
        Some(idx) => (
            idx.iter()
                .flat_map(|&i| set.row(i).expect("invariant: sampled below the row count"))
                .copied()
                .collect(),
            idx.iter().map(|&i| set.labels()[i]).collect(),
        ),
    }
}

/// Share of rows of `[n, classes]` logits whose largest entry is the label.
fn accuracy(logits: &[f32], labels: &[usize], classes: usize) -> f32 {
    let correct = labels
        .iter()
        .zip(logits.chunks_exact(classes))
        .filter(|(&label, row)| most_probable(row).0 == label)
        .count();
    correct as f32 / labels.len() as f32
}

/// Loss and accuracy of the head (after the suffix, if any) on a whole set, without
/// recording gradients: the set uploaded at once for plain features, [`EVAL_CHUNK`] rows
/// at a time through the suffix.
fn evaluate<D: DfdxDevice>(
    dev: &D,
    head: &DeviceParams<D>,
    suffix: Option<&Suffix<D>>,
    set: &FeatureSet,
    uploaded: Option<&Batch<D>>,
    classes: usize,
    activation: Activation,
) -> Result<(f32, f32)> {
    let logits_of = |x: Tensor<(usize, usize), f32, D>| -> Result<_> {
        let (w1, rest) = head
            .w
            .split_first()
            .expect("invariant: Head::new and Head::from_layers refuse a head without layers");
        let first = x.try_matmul(w1.clone()).map_err(backend)?;
        forward_from_first(first, head.b.clone(), rest.to_vec(), activation)
    };
    let (mut loss, mut logits) = (0f32, Vec::with_capacity(set.len() * classes));
    match (suffix, uploaded) {
        (None, Some(batch)) => {
            let chunk = logits_of(batch.x.clone())?;
            logits = chunk.as_vec();
            loss = cross_entropy(chunk, batch.targets.clone(), set.len())?.as_vec()[0];
        }
        _ => {
            let per_row = set.dim();
            for (rows, labels) in set
                .values()
                .chunks(EVAL_CHUNK * per_row)
                .zip(set.labels().chunks(EVAL_CHUNK))
            {
                let n = labels.len();
                let features = match suffix {
                    Some(suffix) => suffix.features(rows, n)?,
                    None => rows.to_vec(),
                };
                let dim = features.len() / n;
                let chunk = logits_of(dev.tensor((features, (n, dim))))?;
                logits.extend(chunk.as_vec());
                let chunk_loss = cross_entropy(chunk, one_hot(dev, labels, classes), n)?;
                loss += chunk_loss.as_vec()[0] * n as f32;
            }
            loss /= set.len() as f32;
        }
    }
    Ok((loss, accuracy(&logits, set.labels(), classes)))
}

/// The one training loop: `phase.steps` steps on batches of `rows`, updating the head and,
/// when there is one, the trainable suffix in front of it; the test set is evaluated at
/// step 0, every `eval_every` steps and at the last step, and recorded in `history`.
///
/// With a suffix, the head's input comes traced out of it. Without one, the tape starts at
/// `x·W₁` (see [`forward_from_first`]) and `dW₁ = xᵀ·d(x·W₁)` is applied here.
#[allow(clippy::too_many_arguments)]
fn train_loop<D: DfdxDevice>(
    dev: &D,
    head: &mut DeviceParams<D>,
    mut suffix: Option<&mut Suffix<D>>,
    rows: &FeatureSet,
    (validation, test): (&FeatureSet, &FeatureSet),
    config: &TrainConfig,
    phase: Phase,
    history: &mut History,
) -> Result<()> {
    let classes = head
        .b
        .last()
        .expect("invariant: a head has layers")
        .shape()
        .0;
    let n_rows = rows.len();
    let batch_size = config.batch_size.map(|b| b.min(n_rows));
    // Plain features are uploaded once (the full training set for full-batch steps, and the
    // test set); random batches are gathered on the host (they are small).
    let plain = suffix.is_none();
    let full = (plain && batch_size.is_none()).then(|| Batch::new(dev, rows, classes, None));
    let test_batch = plain.then(|| Batch::new(dev, test, classes, None));
    let validation_batch =
        (plain && !validation.is_empty()).then(|| Batch::new(dev, validation, classes, None));
    let mut w_slots: Vec<Slots<(usize, usize), D>> = head.w.iter().map(|_| Slots::new()).collect();
    let mut b_slots: Vec<Slots<(usize,), D>> = head.b.iter().map(|_| Slots::new()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(phase.seed);
    for step in 0..phase.steps {
        let sampled;
        let picked = batch_size.map(|b| rand::seq::index::sample(&mut rng, n_rows, b).into_vec());
        let (w1, rest) = head
            .w
            .split_first()
            .expect("invariant: Head::new and Head::from_layers refuse a head without layers");
        let b_traced: Vec<_> = head.b.iter().map(|b| b.leaky_trace()).collect();
        let w_traced: Vec<_> = rest.iter().map(|w| w.leaky_trace()).collect();
        // The head's first product, traced, and what W₁'s gradient is computed from.
        let (first, batch_labels, targets, plain_batch) = match suffix.as_deref_mut() {
            None => {
                let batch = match &picked {
                    None => full.as_ref().expect("invariant: uploaded for full batches"),
                    Some(picked) => {
                        sampled = Batch::new(dev, rows, classes, Some(picked));
                        &sampled
                    }
                };
                let first = batch.x.clone().try_matmul(w1.clone()).map_err(backend)?;
                (
                    first.leaky_trace(),
                    batch.labels.clone(),
                    batch.targets.clone(),
                    Some((batch, first)),
                )
            }
            Some(suffix) => {
                let (values, labels) = picked_rows(rows, picked.as_deref());
                let features = suffix.forward(dev, &values, labels.len())?;
                let first = features.try_matmul(w1.leaky_trace()).map_err(backend)?;
                let targets = one_hot(dev, &labels, classes);
                (first, labels, targets, None)
            }
        };
        let n = batch_labels.len();
        let logits = forward_from_first(first, b_traced, w_traced, config.activation)?;
        let logits_values = logits.as_vec();
        let loss = cross_entropy(logits, targets, n)?;
        let loss_value = loss.as_vec()[0];
        if !loss_value.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "training diverged at step {} (loss {loss_value}): lower the learning rate{} \
                 (now {})",
                phase.first_step + step,
                if plain { "" } else { "s" },
                if plain {
                    phase.learning_rate.to_string()
                } else {
                    format!("{} and {}", phase.learning_rate, phase.suffix_learning_rate)
                }
            )));
        }
        let grads: Gradients<f32, D> = loss.backward();
        let t = step as i32 + 1;
        let factor = config.schedule.factor(step, phase.steps);
        let lr = phase.learning_rate * factor;
        for (i, (w, slots)) in head.w.iter_mut().zip(&mut w_slots).enumerate() {
            let g = match (i, &plain_batch) {
                (0, Some((batch, first))) => batch
                    .xt
                    .clone()
                    .try_matmul(grads.get(first))
                    .map_err(backend)?,
                _ => grads.get(&*w),
            };
            *w = update(
                &config.optimizer,
                w.clone(),
                g,
                slots,
                lr,
                config.weight_decay,
                t,
            )?;
        }
        for (b, slots) in head.b.iter_mut().zip(&mut b_slots) {
            let g = grads.get(&*b);
            *b = update(&config.optimizer, b.clone(), g, slots, lr, 0.0, t)?;
        }
        if let Some(suffix) = suffix.as_deref_mut() {
            let lr = phase.suffix_learning_rate * factor;
            suffix.update(&grads, &config.optimizer, lr, config.weight_decay, t)?;
        }
        if step % config.eval_every == 0 || step + 1 == phase.steps {
            let (test_loss, test_accuracy) = evaluate(
                dev,
                head,
                suffix.as_deref(),
                test,
                test_batch.as_ref(),
                classes,
                config.activation,
            )?;
            let validation = if validation.is_empty() {
                None
            } else {
                Some(evaluate(
                    dev,
                    head,
                    suffix.as_deref(),
                    validation,
                    validation_batch.as_ref(),
                    classes,
                    config.activation,
                )?)
            };
            history.record(
                phase.first_step + step,
                (loss_value, accuracy(&logits_values, &batch_labels, classes)),
                (test_loss, test_accuracy),
                validation,
                config.verbose,
            );
        }
    }
    Ok(())
}

/// One-hot `[n, classes]` targets of `labels`.
fn one_hot<D: DfdxDevice>(
    dev: &D,
    labels: &[usize],
    classes: usize,
) -> Tensor<(usize, usize), f32, D> {
    let mut values = vec![0f32; labels.len() * classes];
    for (row, &label) in values.chunks_exact_mut(classes).zip(labels) {
        row[label] = 1.0;
    }
    dev.tensor((values, (labels.len(), classes)))
}

/// A value measured over several runs: its mean and range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// The mean.
    pub mean: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Spread {
    /// The mean and range of `values` (NaN for none).
    ///
    /// ```
    /// use flowers_kit::train::Spread;
    /// let s = Spread::of(&[0.8, 0.9, 0.7]);
    /// assert!((s.mean - 0.8).abs() < 1e-12 && s.min == 0.7 && s.max == 0.9);
    /// ```
    pub fn of(values: &[f64]) -> Spread {
        if values.is_empty() {
            return Spread {
                mean: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        let sum: f64 = values.iter().sum();
        Spread {
            mean: sum / values.len() as f64,
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }

    /// As percentages, `84.7 % (80.7–86.7)`, for an accuracy.
    pub fn percent(&self) -> String {
        format!(
            "{:.1} % ({:.1}–{:.1})",
            self.mean * 100.0,
            self.min * 100.0,
            self.max * 100.0
        )
    }
}

/// One configuration trained with several seeds (initial weights and batches): what a
/// comparison of close settings needs, since one seed can move test accuracy by points.
#[derive(Debug, Clone)]
pub struct SeedRuns {
    /// The seeds, in order.
    pub seeds: Vec<u64>,
    /// Each run's history.
    pub histories: Vec<History>,
    /// Each run's classifier.
    pub classifiers: Vec<Classifier>,
}

impl SeedRuns {
    /// The final test accuracies' mean and range.
    pub fn final_test_accuracy(&self) -> Spread {
        self.spread(History::final_test_accuracy)
    }

    /// The final validation accuracies' mean and range (NaN without a validation set).
    pub fn final_validation_accuracy(&self) -> Spread {
        self.spread(History::final_validation_accuracy)
    }

    fn spread(&self, of: impl Fn(&History) -> f32) -> Spread {
        let values: Vec<f64> = self.histories.iter().map(|h| f64::from(of(h))).collect();
        Spread::of(&values)
    }
}

/// Trains `config` once per seed (its `seed` replaced), on the same features: cached
/// features make each run cost only the training.
///
/// ```no_run
/// # use flowers_kit::prelude::*;
/// # fn main() -> flowers_kit::Result<()> {
/// # let features: Features = unimplemented!();
/// let runs = flowers_kit::train::train_seeds(&features, &TrainConfig::default(), [0, 1, 2])?;
/// println!("validation accuracy {}", runs.final_validation_accuracy().percent());
/// # Ok(()) }
/// ```
pub fn train_seeds(
    features: &Features,
    config: &TrainConfig,
    seeds: impl IntoIterator<Item = u64>,
) -> Result<SeedRuns> {
    let seeds: Vec<u64> = seeds.into_iter().collect();
    if seeds.is_empty() {
        return Err(Error::InvalidArgument(
            "train_seeds needs at least one seed".into(),
        ));
    }
    let mut runs = SeedRuns {
        seeds: seeds.clone(),
        histories: Vec::with_capacity(seeds.len()),
        classifiers: Vec::with_capacity(seeds.len()),
    };
    for seed in seeds {
        let (classifier, history) = train(
            features,
            &TrainConfig {
                seed,
                ..config.clone()
            },
        )?;
        runs.histories.push(history);
        runs.classifiers.push(classifier);
    }
    Ok(runs)
}

/// Mean softmax cross-entropy of `[n, classes]` logits against one-hot targets.
fn cross_entropy<D: DfdxDevice, T>(
    logits: Tensor<(usize, usize), f32, D, T>,
    targets: Tensor<(usize, usize), f32, D>,
    n: usize,
) -> Result<Tensor<(), f32, D, T>>
where
    T: dfdx::prelude::Tape<f32, D> + dfdx::prelude::Merge<dfdx::prelude::NoneTape>,
{
    logits
        .try_log_softmax::<Axis<1>>()
        .and_then(|l| l.try_mul(targets))
        .and_then(|l| l.try_sum::<(), _>())
        .and_then(|l| l.try_mul(-1.0 / n as f32))
        .map_err(backend)
}
