//! The tutorial's training loop.

use dfdx::prelude::Axis;
use dfdx::tensor::{Cpu, Gradients, Tensor, TensorFrom, Trace};
use dfdx::tensor_ops::*;
use rand::SeedableRng;
use serde::Serialize;

use super::classifier::Classifier;
use super::finetune::{top_forward, FineTune, Schedule, Top, TopParams, EVAL_CHUNK};
use super::head::{forward_from_first, Activation, DeviceParams, Head};
use super::metrics::most_probable;
use super::optim::{update, Optimizer, Slots};
use crate::data::{Augment, Split};
use crate::device::{dfdx_error as backend, DeviceKind, DfdxDevice};
use crate::error::{Error, Result};
use crate::features::{FeatureExtractor, FeatureSet, Features};
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
            device: DeviceKind::Cpu,
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
}

impl History {
    /// Appends one evaluation: the step's training batch `(loss, accuracy)` and the test
    /// set's; with `verbose`, prints the tutorial's line.
    fn record(&mut self, step: usize, train: (f32, f32), test: (f32, f32), verbose: bool) {
        self.step.push(step);
        self.train_loss.push(train.0);
        self.train_accuracy.push(train.1);
        self.test_loss.push(test.0);
        self.test_accuracy.push(test.1);
        if verbose {
            println!("Test accuracy at step {step}: {:.2}%", test.1 * 100.0);
        }
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

/// Largest batch when fine-tuning: the gathered depthwise taps of a batch take
/// `photos · 49 · 9 · 960` values at 1.0/224 (68 MB for 256 photos, and as much again for
/// their gradient).
pub const MAX_FINE_TUNE_BATCH: usize = 256;

impl FeatureExtractor {
    /// The features `config` trains on: [`extract`](FeatureExtractor::extract), plus, with
    /// `config.augment`, `config.views` augmented views of every training photo
    /// ([`extract_augmented`](FeatureExtractor::extract_augmented)).
    ///
    /// ```no_run
    /// # use flowers_kit::prelude::*;
    /// # fn main() -> flowers_kit::Result<()> {
    /// # let (extractor, split): (FeatureExtractor, Split) = unimplemented!();
    /// let config = TrainConfig { augment: Some(Augment::default()), views: 4, ..Default::default() };
    /// let features = extractor.extract_for(&split, &config)?;   // cached after the first run
    /// let (classifier, history) = train(&features, &config)?;
    /// # Ok(()) }
    /// ```
    pub fn extract_for(&self, split: &Split, config: &TrainConfig) -> Result<Features> {
        config.validate()?;
        let below;
        let (extractor, top) = match config.fine_tune {
            Some(fine_tune) => {
                let (top, cut) = Top::of(self.network(), fine_tune.blocks)?;
                below = self.below(cut)?;
                (&below, Some(top))
            }
            None => (self, None),
        };
        let mut features = match config.augment {
            Some(augment) => extractor.extract_augmented(split, augment, config.views)?,
            None => extractor.extract(split)?,
        };
        features.source = self.source();
        features.top = top;
        Ok(features)
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
    for (name, set) in [("train", &features.train), ("test", &features.test)]
        .into_iter()
        .chain(views)
    {
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
    Ok(())
}

/// Trains a head on `features.train` (or, with `config.augment`, on its augmented views),
/// evaluating on `features.test` as the tutorial does.
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
    let top = match (&features.top, config.fine_tune) {
        (None, None) => None,
        (Some(top), Some(_)) => {
            top.validate()?;
            if top.input_len() != features.dim {
                return Err(Error::InvalidArgument(format!(
                    "the rows hold {} values, but the top to fine-tune takes {}",
                    features.dim,
                    top.input_len()
                )));
            }
            Some(top.clone())
        }
        (None, Some(_)) => {
            return Err(Error::InvalidArgument(
                "fine-tuning needs the activations entering the top, not features: extract \
                 them with `extractor.extract_for(&split, &config)`"
                    .into(),
            ))
        }
        (Some(top), None) => {
            return Err(Error::InvalidArgument(format!(
                "these rows are the activations entering {} (extracted for fine-tuning), \
                 but the config fine-tunes nothing",
                top.cut
            )))
        }
    };
    let inputs = top.as_ref().map_or(features.dim, Top::feature_dim);
    let head = Head::new(
        inputs,
        &config.hidden,
        features.classes.len(),
        config.activation,
        config.seed,
    )?;
    let _flush = super::denormals::FlushDenormals::new();
    let (head, top, history) = match config.device {
        DeviceKind::Cpu => run_on(Cpu::default(), head, top, features, config)?,
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => run_on(
            crate::device::open_cuda(config.seed)?,
            head,
            top,
            features,
            config,
        )?,
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda => return Err(crate::device::no_cuda()),
    };
    let classifier = Classifier::new(head, features)?;
    Ok((
        match top {
            Some(top) => classifier.with_top(top)?,
            None => classifier,
        },
        history,
    ))
}

/// The head alone, or the top and the head, on `dev`.
fn run_on<D: DfdxDevice>(
    dev: D,
    head: Head,
    top: Option<Top>,
    features: &Features,
    config: &TrainConfig,
) -> Result<(Head, Option<Top>, History)> {
    match top {
        None => {
            let (head, history) = train_on(dev, head, features, config)?;
            Ok((head, None, history))
        }
        Some(top) => {
            let (head, top, history) = fine_tune_on(dev, head, top, features, config)?;
            Ok((head, Some(top), history))
        }
    }
}

/// A batch on the device: features `[n, dim]`, the same transposed, one-hot targets.
struct Batch<D: DfdxDevice> {
    x: Tensor<(usize, usize), f32, D>,
    xt: Tensor<(usize, usize), f32, D>,
    targets: Tensor<(usize, usize), f32, D>,
    labels: Vec<usize>,
}

impl<D: DfdxDevice> Batch<D> {
    /// Uploads the rows of `rows` (`dim` values each) picked by `picked`, or all of them.
    fn new(
        dev: &D,
        rows: &[f32],
        labels: &[usize],
        dim: usize,
        classes: usize,
        picked: Option<&[usize]>,
    ) -> Self {
        let (values, labels): (Vec<f32>, Vec<usize>) = match picked {
            None => (rows.to_vec(), labels.to_vec()),
            // Indices come from sampling 0..n (validated sets): in range.
            Some(idx) => (
                idx.iter()
                    .flat_map(|&i| rows[i * dim..][..dim].iter().copied())
                    .collect(),
                idx.iter().map(|&i| labels[i]).collect(),
            ),
        };
        let n = labels.len();
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

/// Share of rows of `[n, classes]` logits whose largest entry is the label.
fn accuracy(logits: &[f32], labels: &[usize], classes: usize) -> f32 {
    let correct = labels
        .iter()
        .zip(logits.chunks_exact(classes))
        .filter(|(&label, row)| most_probable(row).0 == label)
        .count();
    correct as f32 / labels.len() as f32
}

/// Loss and logits of the head on a batch, without recording gradients.
fn evaluate<D: DfdxDevice>(
    params: &DeviceParams<D>,
    batch: &Batch<D>,
    activation: Activation,
) -> Result<(f32, Vec<f32>)> {
    let (w1, rest) = params
        .w
        .split_first()
        .ok_or_else(|| Error::InvalidArgument("a head without layers".into()))?;
    let first = batch.x.clone().try_matmul(w1.clone()).map_err(backend)?;
    let logits = forward_from_first(first, params.b.clone(), rest.to_vec(), activation)?;
    let values = logits.as_vec();
    let loss = cross_entropy(logits, batch.targets.clone(), batch.labels.len())?.as_vec()[0];
    Ok((loss, values))
}

fn train_on<D: DfdxDevice>(
    dev: D,
    mut head: Head,
    features: &Features,
    config: &TrainConfig,
) -> Result<(Head, History)> {
    let classes = features.classes.len();
    let dim = features.dim;
    let train_set = training_rows(features, config)?;
    let (train_rows, train_labels) = (train_set.values(), train_set.labels());
    let n_train = train_labels.len();
    let batch_size = config.batch_size.map(|b| b.min(n_train));
    // The full sets are uploaded once; random batches are gathered on the host (they are small).
    let full = Batch::new(&dev, train_rows, train_labels, dim, classes, None);
    let test = Batch::new(
        &dev,
        features.test.values(),
        features.test.labels(),
        dim,
        classes,
        None,
    );

    let mut params = DeviceParams::upload(&head, &dev)?;
    let mut w_slots: Vec<Slots<(usize, usize), D>> =
        params.w.iter().map(|_| Slots::new()).collect();
    let mut b_slots: Vec<Slots<(usize,), D>> = params.b.iter().map(|_| Slots::new()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let mut history = History::default();

    for step in 0..config.steps {
        let sampled;
        let batch = match batch_size {
            None => &full,
            Some(b) => {
                let picked = rand::seq::index::sample(&mut rng, n_train, b).into_vec();
                sampled = Batch::new(&dev, train_rows, train_labels, dim, classes, Some(&picked));
                &sampled
            }
        };
        let n = batch.labels.len();
        // The tape starts at x·W₁ (see `forward_from_first`); dW₁ = xᵀ·d(x·W₁) is applied below.
        let (w1, rest) = params
            .w
            .split_first()
            .ok_or_else(|| Error::InvalidArgument("a head without layers".into()))?;
        let first = batch.x.clone().try_matmul(w1.clone()).map_err(backend)?;
        let first_traced = first.leaky_trace();
        let b_traced: Vec<_> = params.b.iter().map(|b| b.leaky_trace()).collect();
        let w_traced: Vec<_> = rest.iter().map(|w| w.leaky_trace()).collect();
        let logits = forward_from_first(first_traced, b_traced, w_traced, config.activation)?;
        let logits_values = logits.as_vec();
        let loss = cross_entropy(logits, batch.targets.clone(), n)?;
        let loss_value = loss.as_vec()[0];
        if !loss_value.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "training diverged at step {step} (loss {loss_value}): lower the learning rate \
                 (now {})",
                config.learning_rate
            )));
        }
        let grads: Gradients<f32, D> = loss.backward();
        let t = step as i32 + 1;
        let lr = config.learning_rate * config.schedule.factor(step, config.steps);
        for (i, (w, slots)) in params.w.iter_mut().zip(&mut w_slots).enumerate() {
            let g = if i == 0 {
                batch
                    .xt
                    .clone()
                    .try_matmul(grads.get(&first))
                    .map_err(backend)?
            } else {
                grads.get(&*w)
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
        for (b, slots) in params.b.iter_mut().zip(&mut b_slots) {
            let g = grads.get(&*b);
            *b = update(&config.optimizer, b.clone(), g, slots, lr, 0.0, t)?;
        }

        if step % config.eval_every == 0 || step + 1 == config.steps {
            let (test_loss, test_logits) = evaluate(&params, &test, config.activation)?;
            history.record(
                step,
                (loss_value, accuracy(&logits_values, &batch.labels, classes)),
                (test_loss, accuracy(&test_logits, &test.labels, classes)),
                config.verbose,
            );
        }
    }
    params.download(&mut head);
    Ok((head, history))
}

/// One-hot `[n, classes]` targets of `labels`.
fn one_hot<D: DfdxDevice>(
    dev: &D,
    labels: &[usize],
    classes: usize,
) -> Tensor<(usize, usize), f32, D> {
    let mut values = vec![0f32; labels.len() * classes];
    for (row, &label) in values.chunks_exact_mut(classes).zip(labels) {
        if let Some(v) = row.get_mut(label) {
            *v = 1.0;
        }
    }
    dev.tensor((values, (labels.len(), classes)))
}

/// Loss and logits of the top and head on `rows` (`n` photos' activations), without
/// recording gradients, [`EVAL_CHUNK`] photos at a time.
fn evaluate_top<D: DfdxDevice>(
    dev: &D,
    top: &Top,
    top_params: &TopParams<D>,
    params: &DeviceParams<D>,
    set: &FeatureSet,
    classes: usize,
    activation: Activation,
) -> Result<(f32, Vec<f32>)> {
    let per_photo = top.input_len();
    let (mut loss, mut logits) = (0f32, Vec::with_capacity(set.len() * classes));
    for (rows, labels) in set
        .values()
        .chunks(EVAL_CHUNK * per_photo)
        .zip(set.labels().chunks(EVAL_CHUNK))
    {
        let n = labels.len();
        let x = top.upload_inputs(dev, rows, n)?;
        let features = top_forward(top, x, n, top_params.untraced())?;
        let (w1, rest) = params
            .w
            .split_first()
            .ok_or_else(|| Error::InvalidArgument("a head without layers".into()))?;
        let first = features.try_matmul(w1.clone()).map_err(backend)?;
        let chunk_logits = forward_from_first(first, params.b.clone(), rest.to_vec(), activation)?;
        logits.extend(chunk_logits.as_vec());
        let chunk_loss = cross_entropy(chunk_logits, one_hot(dev, labels, classes), n)?;
        loss += chunk_loss.as_vec().first().copied().unwrap_or(f32::NAN) * n as f32;
    }
    Ok((loss / set.len().max(1) as f32, logits))
}

/// Trains the top of the backbone and the head together on batches of activations.
fn fine_tune_on<D: DfdxDevice>(
    dev: D,
    mut head: Head,
    mut top: Top,
    features: &Features,
    config: &TrainConfig,
) -> Result<(Head, Top, History)> {
    let fine_tune = config
        .fine_tune
        .ok_or_else(|| Error::InvalidArgument("nothing to fine-tune".into()))?;
    let classes = features.classes.len();
    let per_photo = top.input_len();
    let train_set = training_rows(features, config)?;
    let n_train = train_set.len();
    let batch_size = config.batch_size.unwrap_or(1).clamp(1, n_train.max(1));
    let mut params = DeviceParams::upload(&head, &dev)?;
    let mut top_params = TopParams::upload(&top, &dev)?;
    let mut w_slots: Vec<Slots<(usize, usize), D>> =
        params.w.iter().map(|_| Slots::new()).collect();
    let mut b_slots: Vec<Slots<(usize,), D>> = params.b.iter().map(|_| Slots::new()).collect();
    // An optimizer's state for each kernel and bias of the top.
    type KernelSlots<D> = (Slots<(usize, usize), D>, Slots<(usize,), D>);
    let mut top_slots: Vec<KernelSlots<D>> = top_params
        .layers
        .iter()
        .map(|_| (Slots::new(), Slots::new()))
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let mut history = History::default();
    for step in 0..config.steps {
        let picked = rand::seq::index::sample(&mut rng, n_train, batch_size).into_vec();
        let mut rows = Vec::with_capacity(batch_size * per_photo);
        let mut labels = Vec::with_capacity(batch_size);
        for &i in &picked {
            let row = train_set
                .row(i)
                .ok_or_else(|| Error::Backend(format!("training row {i} is missing")))?;
            rows.extend_from_slice(row);
            labels.push(train_set.labels().get(i).copied().unwrap_or(0));
        }
        let n = labels.len();
        let x = top.upload_inputs(&dev, &rows, n)?;
        // The input needs no gradient, but the tape must start somewhere before the first
        // trained kernel: it starts at the input, with an empty record.
        let traced = top_forward(&top, x.retaped(), n, top_params.traced())?;
        let (w1, rest) = params
            .w
            .split_first()
            .ok_or_else(|| Error::InvalidArgument("a head without layers".into()))?;
        let first = traced.try_matmul(w1.leaky_trace()).map_err(backend)?;
        let b_traced: Vec<_> = params.b.iter().map(|b| b.leaky_trace()).collect();
        let w_traced: Vec<_> = rest.iter().map(|w| w.leaky_trace()).collect();
        let logits = forward_from_first(first, b_traced, w_traced, config.activation)?;
        let logits_values = logits.as_vec();
        let loss = cross_entropy(logits, one_hot(&dev, &labels, classes), n)?;
        let loss_value = loss.as_vec().first().copied().unwrap_or(f32::NAN);
        if !loss_value.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "fine-tuning diverged at step {step} (loss {loss_value}): lower the learning \
                 rates (now {} and {})",
                config.learning_rate, fine_tune.learning_rate
            )));
        }
        let grads: Gradients<f32, D> = loss.backward();
        let t = step as i32 + 1;
        let factor = config.schedule.factor(step, config.steps);
        let (lr, top_lr) = (
            config.learning_rate * factor,
            fine_tune.learning_rate * factor,
        );
        for (w, slots) in params.w.iter_mut().zip(&mut w_slots) {
            let g = grads.get(&*w);
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
        for (b, slots) in params.b.iter_mut().zip(&mut b_slots) {
            let g = grads.get(&*b);
            *b = update(&config.optimizer, b.clone(), g, slots, lr, 0.0, t)?;
        }
        for (layer, (w_slots, b_slots)) in top_params.layers.iter_mut().zip(&mut top_slots) {
            if let Some((w, b)) = layer {
                let (gw, gb) = (grads.get(&*w), grads.get(&*b));
                *w = update(
                    &config.optimizer,
                    w.clone(),
                    gw,
                    w_slots,
                    top_lr,
                    config.weight_decay,
                    t,
                )?;
                *b = update(&config.optimizer, b.clone(), gb, b_slots, top_lr, 0.0, t)?;
            }
        }
        if step % config.eval_every == 0 || step + 1 == config.steps {
            let (test_loss, test_logits) = evaluate_top(
                &dev,
                &top,
                &top_params,
                &params,
                &features.test,
                classes,
                config.activation,
            )?;
            history.record(
                step,
                (loss_value, accuracy(&logits_values, &labels, classes)),
                (
                    test_loss,
                    accuracy(&test_logits, features.test.labels(), classes),
                ),
                config.verbose,
            );
        }
    }
    params.download(&mut head);
    top_params.download(&mut top);
    Ok((head, top, history))
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
