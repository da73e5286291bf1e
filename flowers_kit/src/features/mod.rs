//! The frozen feature extractor: an image model, its weights, a device, and the on-disk cache
//! that makes re-running a notebook after a hyperparameter edit instant.
//!
//! `engine` (private) picks the implementation that runs the network; [`cache`] is the feature
//! cache's format (checksummed packs of rows). Features leave this module as plain `Vec<f32>` rows ([`FeatureSet`]):
//! training uploads them to whatever device it runs on.

pub mod cache;
mod compute;
mod engine;
mod maps;
mod projection;
mod tsne;

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::backend::native::{Kernels, LayerSplit, NativeNetwork};
use crate::backend::{Cut, Network};
use crate::data::image::{
    load_resized_bytes, read_photo, with_decoded, Image, PhotoLimits, Resize,
};
use crate::data::Augment;
use crate::data::{cache_home, shared_cache, Split};
pub use crate::device::DeviceKind;
use crate::digest::sha256_hex;
use crate::error::{Error, Result};
use crate::models::Model;
use crate::progress::{Progress, Unit};
use crate::weights::{fetch_weights, KerasWeights, WeightsRequest};
use cache::PackIndex;
pub use compute::{Compute, Gpu};
pub use engine::BackendKind;
use engine::Engine;
pub use maps::FeatureMap;
pub use projection::{Projection, MAX_PCA_DIM};
pub use tsne::{tsne, MAX_TSNE_POINTS};

/// Largest batch, in bytes of preprocessed pixels (f32), that [`FeatureExtractor::batch_size`]
/// accepts: 256 MiB, about 440 photos at 224 px or 4,000 at 96 px. Bigger batches are no
/// faster, and a mistyped `--batch` would otherwise try to allocate hundreds of gigabytes.
pub const MAX_BATCH_BYTES: usize = 256 << 20;

/// Which extractor produced a set of features: the model, its weights and the preprocessing.
/// A classifier keeps it, so that it refuses to run on features of another extractor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureSource {
    /// The extractor's model name, e.g. `mobilenet_v2_0.35_128`.
    pub model: String,
    /// Identifies the extractor's weights (see [`Network::weights_id`]).
    pub weights_id: String,
    /// The extractor's weight file, if it came from one.
    pub weights_path: Option<PathBuf>,
    /// The preprocessing resize.
    pub resize: Resize,
}

impl FeatureSource {
    /// Errors unless `extractor` produces the same features (same model and weights).
    pub fn check(&self, extractor: &FeatureExtractor) -> Result<()> {
        let network = extractor.network();
        let model = network.model().name();
        if model != self.model
            || network.weights_id() != self.weights_id
            || extractor.resize_method() != self.resize
        {
            return Err(Error::InvalidArgument(format!(
                "this classifier was trained on {} features (weights {}, resize {}), but the \
                 extractor is {model} (weights {}, resize {})",
                self.model,
                short(&self.weights_id),
                self.resize.name(),
                short(network.weights_id()),
                extractor.resize_method().name()
            )));
        }
        Ok(())
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// MobileNet V2 as a frozen feature extractor, as the tutorial uses TF-Hub's module.
///
/// ```no_run
/// use flowers_kit::features::FeatureExtractor;
/// # fn main() -> flowers_kit::Result<()> {
/// let extractor = FeatureExtractor::from_handle(
///     "https://tfhub.dev/google/imagenet/mobilenet_v2_035_128/feature_vector/2")?;
/// let split = flowers_kit::data::download_flowers()?.split(0.8, 2018)?;
/// let features = extractor.extract(&split)?;   // cached per photo on disk
/// println!("{} × {}", features.train.len(), features.dim);
/// # Ok(()) }
/// ```
pub struct FeatureExtractor {
    network: Network,
    engine: Engine,
    device: DeviceKind,
    backend: BackendKind,
    resize: Resize,
    batch_size: usize,
    cache: Option<PathBuf>,
    /// A class's shared cache of features, read when the own cache lacks a row (never written).
    shared_cache: Option<PathBuf>,
    limits: PhotoLimits,
    progress: bool,
}

impl std::fmt::Debug for FeatureExtractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureExtractor")
            .field("model", &self.network.model().name())
            .field("device", &self.device)
            .field("backend", &self.backend)
            .field("resize", &self.resize)
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

/// Features of a list of photos, with the ones that could not be read left out.
#[derive(Debug)]
pub struct Extracted {
    /// `[kept.len(), dim]`, row-major.
    pub values: Vec<f32>,
    /// Length of each feature vector.
    pub dim: usize,
    /// Indices of the photos that have a row, in order.
    pub kept: Vec<usize>,
    /// Photos that could not be read or decoded, with the reason.
    pub skipped: Vec<(PathBuf, Error)>,
    /// How many rows came from the on-disk cache.
    pub cache_hits: usize,
}

/// Features of one side of a split: `len()` rows of `dim()` values, a label and (optionally)
/// a photo path per row.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSet {
    values: Vec<f32>,
    dim: usize,
    labels: Vec<usize>,
    paths: Vec<PathBuf>,
    /// For rows crossing a cut, which network and cut ([`Cut::rows_key`]).
    cut: Option<String>,
}

impl FeatureSet {
    /// A feature set from `labels.len()` rows of `dim` values (e.g. features computed
    /// elsewhere); `paths` may be empty.
    ///
    /// ```
    /// use flowers_kit::features::FeatureSet;
    /// let set = FeatureSet::new(vec![0.0, 1.0, 2.0, 3.0], 2, vec![0, 1], vec![])?;
    /// assert_eq!(set.row(1), Some(&[2.0, 3.0][..]));
    /// assert!(FeatureSet::new(vec![0.0; 3], 2, vec![0, 1], vec![]).is_err());
    /// # Ok::<(), flowers_kit::Error>(())
    /// ```
    pub fn new(
        values: Vec<f32>,
        dim: usize,
        labels: Vec<usize>,
        paths: Vec<PathBuf>,
    ) -> Result<FeatureSet> {
        if dim == 0 || Some(values.len()) != labels.len().checked_mul(dim) {
            return Err(Error::InvalidArgument(format!(
                "{} values are not {} rows of {dim} features",
                values.len(),
                labels.len()
            )));
        }
        if !paths.is_empty() && paths.len() != labels.len() {
            return Err(Error::InvalidArgument(format!(
                "{} paths for {} examples",
                paths.len(),
                labels.len()
            )));
        }
        Ok(FeatureSet {
            values,
            dim,
            labels,
            paths,
            cut: None,
        })
    }

    /// For rows that are the activations crossing a cut (extracted for fine-tuning), which
    /// network and cut they came from ([`Cut::rows_key`]); `None` for features.
    pub fn cut_key(&self) -> Option<&str> {
        self.cut.as_deref()
    }

    /// The rows marked as crossing the cut `key` names.
    fn crossing(mut self, key: &str) -> FeatureSet {
        self.cut = Some(key.to_string());
        self
    }

    /// All rows, row-major: `len() × dim()` values.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Length of each feature vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row `i`, if there is one.
    pub fn row(&self, i: usize) -> Option<&[f32]> {
        let start = i.checked_mul(self.dim)?;
        self.values.get(start..start.checked_add(self.dim)?)
    }

    /// Label of each row.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }

    /// Photo of each row (empty when the features came without paths).
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there is no example.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Errors unless every label is below `classes`.
    pub fn check_labels(&self, classes: usize) -> Result<()> {
        match self.labels.iter().find(|&&l| l >= classes) {
            Some(label) => Err(Error::InvalidArgument(format!(
                "label {label} is out of range for {classes} classes"
            ))),
            None => Ok(()),
        }
    }
}

/// Train and test features of a split.
#[derive(Debug, Clone)]
pub struct Features {
    /// Class names in label order.
    pub classes: Vec<String>,
    /// The extractor that computed them.
    pub source: FeatureSource,
    /// Length of each feature vector.
    pub dim: usize,
    /// Training examples.
    pub train: FeatureSet,
    /// Validation examples (empty unless the split has them: [`Split::with_validation`]).
    pub validation: FeatureSet,
    /// Test examples.
    pub test: FeatureSet,
    /// Augmented views of the training photos, each row for row like `train` (empty unless
    /// extracted with [`FeatureExtractor::extract_for`] and an augmentation).
    pub train_views: Vec<FeatureSet>,
    /// The distortions the views were drawn with.
    pub augment: Option<Augment>,
    /// For fine-tuning: where the network is cut. The rows are then the activations
    /// crossing the cut (see [`Cut::row_len`]), not features; `None` for plain features.
    pub cut: Option<Cut>,
}

impl FeatureExtractor {
    /// The extractor for a model name or TF-Hub handle, with the published weights
    /// (downloaded once into the cache; see [`crate::weights::weights_base`]).
    pub fn from_handle(handle: &str) -> Result<FeatureExtractor> {
        FeatureExtractor::new(Model::parse(handle)?)
    }

    /// The extractor for `model` with its published weights.
    pub fn new(model: impl Into<Model>) -> Result<FeatureExtractor> {
        FeatureExtractor::with_weights(model, None)
    }

    /// The extractor for `model` with weights from `source` (a path or URL of a Keras
    /// `no_top` HDF5 file), or the published ones for `None`, on [`DeviceKind::preferred`].
    pub fn with_weights(model: impl Into<Model>, source: Option<&str>) -> Result<FeatureExtractor> {
        FeatureExtractor::with_weights_on(model, source, DeviceKind::preferred())
    }

    /// [`FeatureExtractor::with_weights`] on `device`: the GPU is not opened for a CPU
    /// extractor.
    pub fn with_weights_on(
        model: impl Into<Model>,
        source: Option<&str>,
        device: DeviceKind,
    ) -> Result<FeatureExtractor> {
        let model = model.into();
        let relative = model.weights_file();
        let published_url = model.published_url();
        let request = WeightsRequest {
            relative: &relative,
            published_url: &published_url,
            pinned_md5: model.published_md5(),
            source,
        };
        // A downloaded file Keras pins no digest for must load as this model's weights
        // before it enters the cache.
        let loads_as_model = |path: &Path| -> Result<()> {
            Network::from_keras(model, &KerasWeights::open(path)?).map(|_| ())
        };
        let path = fetch_weights(request, &loads_as_model)?;
        let weights = KerasWeights::open(&path)?;
        let network = match source {
            // Keras' weights="imagenet": the published file, fetched by the kit.
            None => Network::from_published_keras(model, &weights)?,
            Some(_) => Network::from_keras(model, &weights)?,
        };
        FeatureExtractor::from_network_on(network, device)
    }

    /// The extractor for `model` with seeded random weights instead of trained ones (He-style
    /// scale, batch norms left at their start): what the same architecture gives before any
    /// pre-training, the baseline that shows what ImageNet's weights are worth. Its features
    /// are cached apart from the trained network's.
    ///
    /// ```no_run
    /// use flowers_kit::prelude::*;
    /// let untrained = FeatureExtractor::with_random_weights(Model::parse("mobilenet_v2_0.35_128")?, 0)?;
    /// assert!(untrained.network().weights_id().starts_with("random"));
    /// # Ok::<(), flowers_kit::Error>(())
    /// ```
    pub fn with_random_weights(model: impl Into<Model>, seed: u64) -> Result<FeatureExtractor> {
        FeatureExtractor::from_network(Network::random(model, seed)?)
    }

    /// An extractor running a prepared network on [`DeviceKind::preferred`]: the GPU in a
    /// build with CUDA where one answers, else the CPU with the native backend.
    pub fn from_network(network: Network) -> Result<FeatureExtractor> {
        FeatureExtractor::from_network_on(network, DeviceKind::preferred())
    }

    /// An extractor running a prepared network on `device` (the CPU with the native backend).
    pub fn from_network_on(network: Network, device: DeviceKind) -> Result<FeatureExtractor> {
        let engine = Engine::new(&network, device, BackendKind::Native)?;
        Ok(FeatureExtractor {
            network,
            engine,
            device,
            backend: BackendKind::Native,
            resize: Resize::TfV1Bilinear,
            batch_size: 16,
            cache: Some(cache_home().join("features")),
            shared_cache: shared_cache().map(|shared| shared.join("features")),
            limits: PhotoLimits::default(),
            progress: true,
        })
    }

    /// Runs on `device` instead (CUDA always uses the dfdx backend).
    pub fn on(mut self, device: DeviceKind) -> Result<FeatureExtractor> {
        if device != self.device {
            self.engine = Engine::new(&self.network, device, self.backend)?;
            self.device = device;
        }
        Ok(self)
    }

    /// Uses another implementation on the CPU: [`BackendKind::Dfdx`] is the reference. (On
    /// the GPU it applies once the extractor moves to the CPU.)
    pub fn with_backend(mut self, backend: BackendKind) -> Result<FeatureExtractor> {
        if backend != self.backend {
            if self.device == DeviceKind::Cpu {
                self.engine = Engine::new(&self.network, self.device, backend)?;
            }
            self.backend = backend;
        }
        Ok(self)
    }

    /// Runs the native backend on the CPU with the instruction set `kernels` instead of the
    /// widest this CPU has: to compare the kernels with each other, or with the reference.
    /// An error if this CPU lacks them.
    ///
    /// ```
    /// use flowers_kit::backend::native::Kernels;
    /// use flowers_kit::backend::Network;
    /// use flowers_kit::prelude::*;
    ///
    /// let network = Network::random(Model::parse("mobilenet_v2_0.35_96")?, 0)?;
    /// let extractor = FeatureExtractor::from_network(network)?
    ///     .with_native_kernels(Kernels::Portable)?;
    /// assert_eq!(extractor.backend(), BackendKind::Native);
    /// # Ok::<(), flowers_kit::Error>(())
    /// ```
    pub fn with_native_kernels(mut self, kernels: Kernels) -> Result<FeatureExtractor> {
        self.engine = Engine::Native(NativeNetwork::with_kernels(&self.network, kernels)?);
        self.backend = BackendKind::Native;
        self.device = DeviceKind::Cpu;
        Ok(self)
    }

    /// The implementation running the network.
    pub fn backend(&self) -> BackendKind {
        match self.device {
            DeviceKind::Cuda => BackendKind::Dfdx,
            DeviceKind::Cpu => self.backend,
        }
    }

    /// Images per forward pass (default 16): at least 1, and at most what fits in
    /// [`MAX_BATCH_BYTES`] of pixels at this model's resolution. The native backend's
    /// extraction of several photos runs each photo on the thread that decoded it, so there
    /// it sets only how many photos [`forward`](Self::forward) takes at once.
    pub fn batch_size(mut self, batch_size: usize) -> Result<FeatureExtractor> {
        let most = MAX_BATCH_BYTES / (self.pixels_per_image() * 4);
        if batch_size == 0 || batch_size > most {
            return Err(Error::InvalidArgument(format!(
                "batch size {batch_size} is out of range: {} takes 1 to {most} photos per \
                 forward pass ({} MiB of pixels)",
                self.network.model().name(),
                MAX_BATCH_BYTES >> 20
            )));
        }
        self.batch_size = batch_size;
        Ok(self)
    }

    /// Prints no progress or summary lines (a loop that reports in its own words).
    pub fn quiet(mut self) -> FeatureExtractor {
        self.progress = false;
        self
    }

    /// Caps on the photo files read (size, pixels); see [`PhotoLimits`].
    pub fn photo_limits(mut self, limits: PhotoLimits) -> FeatureExtractor {
        self.limits = limits;
        self
    }

    /// The limits this extractor reads photos with (size, pixels).
    pub fn limits(&self) -> PhotoLimits {
        self.limits
    }

    /// The instruction set the native backend runs this network with; `None` when another
    /// backend runs it.
    pub fn kernels(&self) -> Option<Kernels> {
        match &self.engine {
            Engine::Native(net) => Some(net.kernels()),
            _ => None,
        }
    }

    /// The instruction set for parts of this network run natively apart from its engine
    /// (the frozen part below a cut, the last feature map): the engine's own if it runs
    /// natively, else the widest this CPU has.
    fn native_kernels(&self) -> Kernels {
        self.kernels().unwrap_or_else(Kernels::detect)
    }

    /// What identifies this extractor's features (model, weights, preprocessing).
    pub fn source(&self) -> FeatureSource {
        FeatureSource {
            model: self.network.model().name(),
            weights_id: self.network.weights_id().to_string(),
            weights_path: self.network.weights_path().map(Path::to_path_buf),
            resize: self.resize,
        }
    }

    fn pixels_per_image(&self) -> usize {
        let r = self.network.model().resolution();
        r * r * 3
    }

    /// Uses TF2's half-pixel resize instead of the tutorial's TF1 one.
    pub fn resize(mut self, resize: Resize) -> FeatureExtractor {
        self.resize = resize;
        self
    }

    /// Keeps the feature cache in `dir` (default `<cache>/features`).
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> FeatureExtractor {
        self.cache = Some(dir.into());
        self
    }

    /// Never reads or writes the feature cache (nor reads a shared one).
    pub fn without_cache(mut self) -> FeatureExtractor {
        self.cache = None;
        self.shared_cache = None;
        self
    }

    /// Also reads features from `dir`, a read-only feature cache shared by a class (default
    /// `<shared cache>/features` when [`crate::data::shared_cache`] names one): a row the own
    /// cache lacks is taken from there if its file passes its checksum, and computed into the
    /// own cache if not.
    pub fn shared_cache_dir(mut self, dir: impl Into<PathBuf>) -> FeatureExtractor {
        self.shared_cache = Some(dir.into());
        self
    }

    /// The model variant.
    pub fn model(&self) -> Model {
        self.network.model()
    }

    /// The resize used in preprocessing.
    pub fn resize_method(&self) -> Resize {
        self.resize
    }

    /// Images per forward pass.
    pub fn batch(&self) -> usize {
        self.batch_size
    }

    /// The device the forward pass runs on.
    pub fn device(&self) -> DeviceKind {
        self.device
    }

    /// Length of each feature vector.
    pub fn feature_dim(&self) -> usize {
        self.network.feature_dim()
    }

    /// Values per photo this extractor outputs: the feature length, or for the frozen part
    /// below a cut, the maps crossing it.
    fn row_len(&self) -> usize {
        match &self.engine {
            Engine::Native(net) => net.output_len(),
            _ => self.network.feature_dim(),
        }
    }

    /// The same extractor (device, backend, preprocessing, photo limits, batch size, cache)
    /// running `network` instead: other weights for the same model, such as a fine-tuned
    /// classifier's.
    pub fn with_network(&self, network: Network) -> Result<FeatureExtractor> {
        if network.model() != self.network.model() {
            return Err(Error::InvalidArgument(format!(
                "the extractor runs {}, not {}",
                self.network.model().name(),
                network.model().name()
            )));
        }
        let engine = Engine::new(&network, self.device, self.backend)?;
        Ok(FeatureExtractor {
            network,
            engine,
            device: self.device,
            backend: self.backend,
            resize: self.resize,
            batch_size: self.batch_size,
            cache: self.cache.clone(),
            shared_cache: self.shared_cache.clone(),
            limits: self.limits,
            progress: self.progress,
        })
    }

    /// The frozen part below `cut` as an extractor whose rows are the maps crossing it
    /// (cached apart from the features). It runs on the native backend, once per photo.
    fn frozen_part(&self, cut: &Cut) -> Result<FeatureExtractor> {
        let network = cut.frozen()?;
        let engine = Engine::Native(NativeNetwork::with_outputs(
            &network,
            cut.inputs(),
            self.native_kernels(),
        )?);
        Ok(FeatureExtractor {
            network,
            engine,
            device: DeviceKind::Cpu,
            backend: BackendKind::Native,
            resize: self.resize,
            batch_size: self.batch_size,
            cache: self.cache.clone(),
            shared_cache: self.shared_cache.clone(),
            limits: self.limits,
            progress: self.progress,
        })
    }

    /// The network (layer table and folded weights).
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Features of `n` preprocessed images (NHWC, `resolution²·3` values each, in [0, 1]),
    /// batched by [`FeatureExtractor::batch_size`]. No cache is involved.
    pub fn forward(&self, pixels: &[f32], n: usize) -> Result<Vec<f32>> {
        let per_image = self.pixels_per_image();
        if Some(pixels.len()) != n.checked_mul(per_image) {
            return Err(Error::InvalidArgument(format!(
                "{n} images need {} values, got {}",
                n * per_image,
                pixels.len()
            )));
        }
        let mut out = Vec::with_capacity(pixels.len() / per_image * self.row_len());
        for chunk in pixels.chunks(self.batch_size * per_image) {
            out.extend(self.engine.forward(chunk, chunk.len() / per_image)?);
        }
        Ok(out)
    }

    /// Forward-pass throughput in images/s, measured for about `seconds` on synthetic input
    /// (speed does not depend on the pixels).
    pub fn throughput(&self, seconds: f64) -> Result<f64> {
        let per_image = self.pixels_per_image();
        let pixels: Vec<f32> = (0..self.batch_size * per_image)
            .map(|i| ((i * 7919) % 256) as f32 / 255.0)
            .collect();
        self.forward(&pixels, self.batch_size)?; // warm-up
        let start = std::time::Instant::now();
        let mut images = 0usize;
        while images == 0 || start.elapsed().as_secs_f64() < seconds {
            self.forward(&pixels, self.batch_size)?;
            images += self.batch_size;
        }
        Ok(images as f64 / start.elapsed().as_secs_f64())
    }

    /// Each step's mean time for one image over `rounds` passes, with its multiply-adds and
    /// bytes (`flowers bench --layers`): native backend only, the others have no steps of
    /// their own to time.
    pub fn layer_times(&self, rounds: usize) -> Result<Vec<crate::backend::native::LayerTime>> {
        match &self.engine {
            Engine::Native(native) => native.layer_times(rounds),
            _ => Err(Error::InvalidArgument(
                "layer times are measured on the native backend only (--backend native)".into(),
            )),
        }
    }

    /// Decodes and resizes one photo as this extractor's input.
    pub fn preprocess(&self, path: &Path) -> Result<Image> {
        let bytes = read_photo(path, &self.limits)?;
        load_resized_bytes(
            &bytes,
            path,
            self.network.model().resolution(),
            self.resize,
            &self.limits,
        )
    }

    /// Features of one photo.
    pub fn extract_one(&self, path: &Path) -> Result<Vec<f32>> {
        let image = self.preprocess(path)?;
        self.forward(&image.data, 1)
    }

    /// Features of many photos, from the cache where possible, with progress lines.
    /// A photo that cannot be read is skipped with a warning and listed in `skipped`. A
    /// cache that cannot be written is reported once; the run carries on without it.
    pub fn extract_paths(&self, paths: &[PathBuf]) -> Result<Extracted> {
        let items: Vec<(&PathBuf, Option<View>)> = paths.iter().map(|p| (p, None)).collect();
        self.extract_items(&items)
    }

    /// [`extract_paths`](Self::extract_paths) of photos, or of augmented views of them
    /// (an augmentation and a view index per item), as one operation with one progress
    /// report.
    fn extract_items(&self, items: &[(&PathBuf, Option<View>)]) -> Result<Extracted> {
        let dim = self.row_len();
        let mut cache = self.cache.as_ref().map(|dir| self.cache_folder(dir));
        let shared = self
            .cache
            .as_ref()
            .and(self.shared_cache.as_ref())
            .map(|dir| self.cache_folder(dir));
        let mut rows: Vec<Option<Vec<f32>>> = vec![None; items.len()];
        let mut skipped = Vec::new();
        let mut cache_hits = 0;
        let model = self.network.model().name();
        let views = items
            .iter()
            .filter_map(|(_, v)| v.map(|(_, i)| i + 1))
            .max();
        let label = match views {
            None => format!("Extracting features ({model})"),
            Some(n) => format!("Extracting features ({model}) of {n} augmented views"),
        };
        let total = Some(items.len() as u64);
        let mut progress = if self.progress {
            Progress::new(&label, total, Unit::Items)
        } else {
            Progress::silent(&label, total, Unit::Items)
        };
        // Chunks of a few batches (about 64 photos) keep every core busy decoding while
        // bounding memory; each chunk's new rows make one pack in the cache.
        let chunk = self.batch_size * (64 / self.batch_size).max(1);
        // On the native backend each loader thread runs its own photos through the network
        // as soon as it has decoded them, one photo per core: no thread waits for another,
        // and decoding and the network never compete for the same cores (a batch split
        // between the team while the loaders decode the next chunk ran 8–27 % slower end to
        // end, 0.35/128 and 1.0/224, alternating runs). One photo keeps the team instead.
        let on_loaders = match &self.engine {
            Engine::Native(network) if items.len() > 1 => Some(network),
            _ => None,
        };
        // The loader captures only these, not `self`: a CUDA engine is neither Send nor Sync.
        let (size, resize, limits, indexes) = (
            self.network.model().resolution(),
            self.resize,
            self.limits,
            [cache.as_deref(), shared.as_deref()].map(|dir| dir.map(|d| PackIndex::open(d, dim))),
        );
        // A folder past what the index takes in gets no more rows (PackIndex warned).
        if indexes[0].as_ref().is_some_and(PackIndex::is_full) {
            cache = None;
        }
        let load = move |&(path, view): &(&PathBuf, Option<View>)| -> Result<Loaded> {
            let bytes = read_photo(path, &limits)?;
            let photo_key = sha256_hex(&bytes);
            let key = match view {
                None => photo_key.clone(),
                Some((augment, v)) => augment.view_key(&photo_key, v),
            };
            // The own cache first, then the class's shared one.
            if let Some(hit) = indexes.iter().flatten().find_map(|index| index.read(&key)) {
                return Ok(Loaded::Cached(hit));
            }
            let image = match view {
                None => load_resized_bytes(&bytes, path, size, resize, &limits)?,
                Some((augment, v)) => with_decoded(&bytes, path, &limits, |rgb| {
                    augment.view(rgb, size, resize, &photo_key, v)
                })?,
            };
            match on_loaders {
                Some(network) => Ok(Loaded::Computed(
                    key,
                    network.forward_split(&image.data, 1, LayerSplit::Single)?,
                )),
                None => Ok(Loaded::Decoded(key, image)),
            }
        };
        // Pipeline: a loader thread reads, hashes and decodes the next chunk (in parallel)
        // while this thread runs the current one through the network (or, on the loaders,
        // stores the rows of the current one).
        let run = std::thread::scope(|scope| -> Result<()> {
            let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<Result<Loaded>>>(1);
            scope.spawn(move || {
                for chunk_items in items.chunks(chunk) {
                    let loaded = chunk_items.par_iter().map(&load).collect();
                    if sender.send(loaded).is_err() {
                        break; // the consumer stopped on an error
                    }
                }
            });
            for (c, loaded) in receiver.into_iter().enumerate() {
                let base = c * chunk;
                let mut pixels = Vec::new();
                let mut pending = Vec::new();
                let mut computed = Vec::new();
                let count = loaded.len();
                for (i, result) in loaded.into_iter().enumerate() {
                    match result {
                        Ok(Loaded::Cached(row)) => {
                            rows[base + i] = Some(row);
                            cache_hits += 1;
                        }
                        Ok(Loaded::Decoded(key, image)) => {
                            pixels.extend_from_slice(&image.data);
                            pending.push((base + i, key));
                        }
                        Ok(Loaded::Computed(key, row)) => computed.push((base + i, key, row)),
                        Err(e) => {
                            eprintln!("warning: skipping {e}");
                            if let Some((path, _)) = items.get(base + i) {
                                skipped.push(((*path).clone(), e));
                            }
                        }
                    }
                }
                if !pending.is_empty() {
                    let values = self.forward(&pixels, pending.len())?;
                    for ((index, key), row) in pending.into_iter().zip(values.chunks_exact(dim)) {
                        computed.push((index, key, row.to_vec()));
                    }
                }
                // The chunk's new rows go into the cache as one pack.
                let (places, new_rows): (Vec<usize>, Vec<(String, Vec<f32>)>) = computed
                    .into_iter()
                    .map(|(index, key, row)| (index, (key, row)))
                    .unzip();
                if let Some(dir) = &cache {
                    if let Err(e) = cache::write_rows(dir, dim, &new_rows) {
                        eprintln!(
                            "warning: the feature cache is not writable ({e}); carrying on \
                             without caching"
                        );
                        cache = None;
                    }
                }
                for (index, (_, row)) in places.into_iter().zip(new_rows) {
                    rows[index] = Some(row);
                }
                progress.inc(count as u64);
            }
            Ok(())
        });
        if let Err(e) = run {
            progress.fail(&e);
            return Err(e);
        }
        let hits = cache_hits;
        let what = views.map_or("photos".into(), |n| {
            format!("augmented views ({n} per photo)")
        });
        progress.finish_with(|s| {
            if hits as u64 == s.done {
                format!("{} {what} from the cache in {:.1} s", s.done, s.seconds)
            } else {
                format!(
                    "Extracted {} {what} with {model} in {:.1} s ({:.1} photos/s; {hits} from cache)",
                    s.done,
                    s.seconds,
                    s.rate()
                )
            }
        });
        let mut values = Vec::with_capacity(items.len() * dim);
        let mut kept = Vec::with_capacity(items.len());
        for (i, row) in rows.into_iter().enumerate() {
            if let Some(row) = row {
                values.extend(row);
                kept.push(i);
            }
        }
        Ok(Extracted {
            values,
            dim,
            kept,
            skipped,
            cache_hits,
        })
    }

    /// Train and test features of a split (photos that cannot be read are left out).
    ///
    /// Train and test photos are one extraction, with one progress report.
    pub fn extract(&self, split: &Split) -> Result<Features> {
        let examples: Vec<&crate::data::Example> = split
            .train
            .iter()
            .chain(&split.validation)
            .chain(&split.test)
            .collect();
        let paths: Vec<PathBuf> = examples.iter().map(|e| e.path.clone()).collect();
        let out = self.extract_paths(&paths)?;
        check_every_class_kept(split, &out)?;
        let dim = out.dim;
        let (train_end, validation_end) = (
            split.train.len(),
            split.train.len() + split.validation.len(),
        );
        let mut sides = [Side::default(), Side::default(), Side::default()];
        for (row, &i) in out.values.chunks_exact(dim).zip(&out.kept) {
            let side = match i {
                i if i < train_end => &mut sides[0],
                i if i < validation_end => &mut sides[1],
                _ => &mut sides[2],
            };
            let example = examples[i];
            side.values.extend_from_slice(row);
            side.labels.push(example.label);
            side.paths.push(example.path.clone());
        }
        let [train, validation, test] =
            sides.map(|s| FeatureSet::new(s.values, dim, s.labels, s.paths));
        Ok(Features {
            classes: split.classes.clone(),
            source: self.source(),
            dim,
            train: train?,
            validation: validation?,
            test: test?,
            train_views: Vec::new(),
            augment: None,
            cut: None,
        })
    }

    /// [`extract`](Self::extract), plus `views` augmented views of every training photo
    /// under `augment` (the test photos are never augmented). Views are cached like plain
    /// features, keyed by the photo, the augmentation and the view's index: a second run
    /// decodes nothing. [`FeatureExtractor::extract_for`] takes both from a `TrainConfig`.
    pub fn extract_augmented(
        &self,
        split: &Split,
        augment: Augment,
        views: usize,
    ) -> Result<Features> {
        augment.validate()?;
        let mut features = self.extract(split)?;
        let paths = features.train.paths().to_vec();
        let items: Vec<(&PathBuf, Option<View>)> = (0..views)
            .flat_map(|v| paths.iter().map(move |p| (p, Some((augment, v)))))
            .collect();
        let out = self.extract_items(&items)?;
        if let Some((path, e)) = out.skipped.into_iter().next() {
            return Err(Error::Image {
                path,
                reason: format!("an augmented view of it failed: {e}"),
            });
        }
        if paths.is_empty() {
            features.augment = Some(augment);
            return Ok(features);
        }
        for rows in out.values.chunks_exact(paths.len() * out.dim) {
            let set = FeatureSet::new(
                rows.to_vec(),
                out.dim,
                features.train.labels().to_vec(),
                paths.clone(),
            )?;
            features.train_views.push(set);
        }
        features.augment = Some(augment);
        Ok(features)
    }

    /// `dir/<model>-<key>`: one folder per model, weights and preprocessing, so that a change
    /// of any of them never serves stale features.
    fn cache_folder(&self, dir: &Path) -> PathBuf {
        let mut key = format!(
            "{}|{}|{}",
            self.network.model().name(),
            self.network.weights_id(),
            self.resize.name()
        );
        let name = self.network.model().name();
        let mut folder = name.to_string();
        if let Some(outputs) = match &self.engine {
            Engine::Native(net) => net.outputs(),
            _ => None,
        } {
            // Activations below a cut: keyed by the layers they come out of.
            let steps = self.network.steps();
            let names: Vec<&str> = outputs.iter().map(|&j| steps[j].name.as_str()).collect();
            key.push_str(&format!("|maps of {}", names.join("+")));
            folder.push_str(&format!("-{}", names.join("+")));
        }
        let key = sha256_hex(key.as_bytes());
        dir.join(format!("{folder}-{}", &key[..16]))
    }
}

/// Errors unless every class of `split` kept at least one training photo: a class whose
/// photos were all unreadable would otherwise be trained without a single example (and the
/// counts printed would be of files, not of photos). The error names the class and says why
/// its photos were skipped.
fn check_every_class_kept(split: &Split, out: &Extracted) -> Result<()> {
    let mut kept = vec![0usize; split.classes.len()];
    for &i in &out.kept {
        if let Some(label) = split.train.get(i).map(|e| e.label) {
            if let Some(count) = kept.get_mut(label) {
                *count += 1;
            }
        }
    }
    let Some(label) = kept.iter().position(|&n| n == 0) else {
        return Ok(());
    };
    let class = split.classes[label].as_str();
    let files = split.train.iter().filter(|e| e.label == label).count();
    let first = out
        .skipped
        .iter()
        .find(|(path, _)| path.parent().and_then(|p| p.file_name()) == Some(class.as_ref()))
        .map_or(String::new(), |(_, e)| format!(" (for example {e})"));
    Err(Error::Dataset {
        path: split.root.join(class),
        reason: format!(
            "class '{class}' has no readable training photo: all {files} of its training files \
             were skipped{first}"
        ),
    })
}

/// What a training run trains on, as far as extraction is concerned: augmented views of the
/// training photos, and how many of the backbone's last blocks are fine-tuned.
/// `train::TrainConfig` implements it, so that [`FeatureExtractor::extract_for`] takes a
/// training configuration while this module knows nothing of training.
pub trait RowsPlan {
    /// Errors unless the plan is sound (checked before anything is extracted).
    fn check(&self) -> Result<()> {
        Ok(())
    }
    /// The augmentation and how many views of each training photo, if any.
    fn augmentation(&self) -> Option<(Augment, usize)>;
    /// How many of the family's last blocks train, if any: the rows are then the
    /// activations entering them.
    fn fine_tuned_blocks(&self) -> Option<usize>;
}

impl FeatureExtractor {
    /// The rows `plan` trains on: [`extract`](FeatureExtractor::extract), plus augmented
    /// views of every training photo when it augments
    /// ([`extract_augmented`](FeatureExtractor::extract_augmented)), and when it fine-tunes
    /// the last blocks, the activations entering them instead of features (the frozen part
    /// runs once per photo and view, cached like features).
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
    pub fn extract_for(&self, split: &Split, plan: &impl RowsPlan) -> Result<Features> {
        plan.check()?;
        let frozen;
        let (extractor, cut) = match plan.fine_tuned_blocks() {
            Some(blocks) => {
                let cut = self.network.cut(blocks)?;
                frozen = self.frozen_part(&cut)?;
                (&frozen, Some(cut))
            }
            None => (self, None),
        };
        let mut features = match plan.augmentation() {
            Some((augment, views)) => extractor.extract_augmented(split, augment, views)?,
            None => extractor.extract(split)?,
        };
        features.source = self.source();
        if let Some(cut) = &cut {
            let key = cut.rows_key();
            features.train = features.train.crossing(&key);
            features.validation = features.validation.crossing(&key);
            features.test = features.test.crossing(&key);
            features.train_views = features
                .train_views
                .into_iter()
                .map(|set| set.crossing(&key))
                .collect();
        }
        features.cut = cut;
        Ok(features)
    }
}

/// Rows of one side of a split, while they are sorted out.
#[derive(Default)]
struct Side {
    values: Vec<f32>,
    labels: Vec<usize>,
    paths: Vec<PathBuf>,
}

/// An augmentation and the index of one of its views.
type View = (Augment, usize);

/// One photo from the loaders: its features from a cache, or its cache key with its
/// pixels (for the network) or with the features the loader computed.
enum Loaded {
    Cached(Vec<f32>),
    Decoded(String, Image),
    Computed(String, Vec<f32>),
}
