//! The frozen feature extractor: a MobileNet V2, its weights, a device, and the on-disk cache
//! that makes re-running a notebook after a hyperparameter edit instant.

use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use dfdx::tensor::{Cpu, Tensor, TensorFrom};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::backend::dfdx::DfdxNetwork;
use crate::backend::native::NativeNetwork;
use crate::backend::Network;
use crate::data::image::{load_resized, load_resized_bytes, Image, Resize};
use crate::data::{cache_home, Split};
use crate::digest::sha256_hex;
use crate::error::{Error, IoContext, Result};
use crate::models::MobileNetV2;
use crate::progress::{Progress, Unit};
use crate::weights::{fetch_weights, KerasWeights};

/// A `[rows, columns]` f32 matrix on the CPU: how features are handed to training.
pub type Matrix = Tensor<(usize, usize), f32, Cpu>;

/// Where the forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceKind {
    /// dfdx's CPU device.
    #[default]
    Cpu,
    /// dfdx's CUDA device (GPU 0); needs the `cuda` feature.
    Cuda,
}

impl FromStr for DeviceKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceKind::Cpu),
            "cuda" | "gpu" => Ok(DeviceKind::Cuda),
            other => Err(Error::InvalidArgument(format!(
                "unknown device '{other}': use cpu or cuda"
            ))),
        }
    }
}

/// Which implementation runs the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// The native NHWC kernels (CPU only): the fast default.
    #[default]
    Native,
    /// dfdx tensors: the reference implementation, and the CUDA path.
    Dfdx,
}

impl FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "native" => Ok(BackendKind::Native),
            "dfdx" => Ok(BackendKind::Dfdx),
            other => Err(Error::InvalidArgument(format!(
                "unknown backend '{other}': use native or dfdx"
            ))),
        }
    }
}

enum Engine {
    Native(NativeNetwork),
    Cpu(DfdxNetwork<Cpu>),
    #[cfg(feature = "cuda")]
    Cuda(DfdxNetwork<dfdx::tensor::Cuda>),
}

impl Engine {
    fn new(network: &Network, device: DeviceKind, backend: BackendKind) -> Result<Engine> {
        match (device, backend) {
            (DeviceKind::Cpu, BackendKind::Native) => {
                Ok(Engine::Native(NativeNetwork::new(network)?))
            }
            (DeviceKind::Cpu, BackendKind::Dfdx) => {
                Ok(Engine::Cpu(DfdxNetwork::new(network, Cpu::default())?))
            }
            // The GPU always runs the dfdx implementation.
            #[cfg(feature = "cuda")]
            (DeviceKind::Cuda, _) => {
                let cuda = dfdx::tensor::Cuda::try_build(0, 0)
                    .map_err(|e| Error::Backend(format!("cannot open CUDA device 0: {e:?}")))?;
                Ok(Engine::Cuda(DfdxNetwork::new(network, cuda)?))
            }
            #[cfg(not(feature = "cuda"))]
            (DeviceKind::Cuda, _) => Err(Error::InvalidArgument(
                "this build has no CUDA support: rebuild flowers_kit with `--features cuda`".into(),
            )),
        }
    }

    fn forward(&self, pixels: &[f32], n: usize) -> Result<Vec<f32>> {
        match self {
            Engine::Native(net) => net.forward(pixels, n),
            Engine::Cpu(net) => Ok(net.forward(pixels, n)?.as_vec()),
            #[cfg(feature = "cuda")]
            Engine::Cuda(net) => Ok(net.forward(pixels, n)?.as_vec()),
        }
    }
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
}

impl std::fmt::Debug for FeatureExtractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureExtractor")
            .field("model", &self.network.model.name())
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

/// Features of one side of a split.
#[derive(Debug, Clone)]
pub struct FeatureSet {
    /// `[examples, dim]` features.
    pub x: Matrix,
    /// Label of each row.
    pub labels: Vec<usize>,
    /// Photo of each row.
    pub paths: Vec<PathBuf>,
}

impl FeatureSet {
    /// A feature set from `labels.len()` rows of `dim` values (e.g. features computed
    /// elsewhere); `paths` may be empty.
    pub fn new(
        values: Vec<f32>,
        dim: usize,
        labels: Vec<usize>,
        paths: Vec<PathBuf>,
    ) -> Result<FeatureSet> {
        if dim == 0 || values.len() != labels.len() * dim {
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
        let n = labels.len();
        Ok(FeatureSet {
            x: Cpu::default().tensor((values, (n, dim))),
            labels,
            paths,
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there is no example.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Train and test features of a split.
#[derive(Debug, Clone)]
pub struct Features {
    /// Class names in label order.
    pub classes: Vec<String>,
    /// The extractor's model name, e.g. `mobilenet_v2_0.35_128`.
    pub model: String,
    /// Identifies the extractor's weights (see [`Network::weights_id`]).
    pub weights_id: String,
    /// The extractor's weight file, if it came from one.
    pub weights_path: Option<PathBuf>,
    /// The preprocessing resize.
    pub resize: Resize,
    /// Length of each feature vector.
    pub dim: usize,
    /// Training examples.
    pub train: FeatureSet,
    /// Test examples.
    pub test: FeatureSet,
}

impl FeatureExtractor {
    /// The extractor for a model name or TF-Hub handle, with the published weights
    /// (downloaded once into the cache; see [`crate::weights::weights_base`]).
    pub fn from_handle(handle: &str) -> Result<FeatureExtractor> {
        FeatureExtractor::new(MobileNetV2::parse(handle)?)
    }

    /// The extractor for `model` with its published weights.
    pub fn new(model: MobileNetV2) -> Result<FeatureExtractor> {
        FeatureExtractor::with_weights(model, None)
    }

    /// The extractor for `model` with weights from `source` (a path or URL of a Keras
    /// `no_top` HDF5 file), or the published ones for `None`.
    pub fn with_weights(model: MobileNetV2, source: Option<&str>) -> Result<FeatureExtractor> {
        let path = fetch_weights(&model, source)?;
        let weights = KerasWeights::open(&path)?;
        FeatureExtractor::from_network(Network::from_keras(model, &weights)?)
    }

    /// An extractor running a prepared network on the CPU with the native backend.
    pub fn from_network(network: Network) -> Result<FeatureExtractor> {
        let engine = Engine::new(&network, DeviceKind::Cpu, BackendKind::Native)?;
        Ok(FeatureExtractor {
            network,
            engine,
            device: DeviceKind::Cpu,
            backend: BackendKind::Native,
            resize: Resize::TfV1Bilinear,
            batch_size: 16,
            cache: Some(cache_home().join("features")),
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

    /// Uses another implementation on the CPU: [`BackendKind::Dfdx`] is the reference.
    pub fn with_backend(mut self, backend: BackendKind) -> Result<FeatureExtractor> {
        if backend != self.backend {
            self.engine = Engine::new(&self.network, self.device, backend)?;
            self.backend = backend;
        }
        Ok(self)
    }

    /// The implementation running the network.
    pub fn backend(&self) -> BackendKind {
        match self.device {
            DeviceKind::Cuda => BackendKind::Dfdx,
            DeviceKind::Cpu => self.backend,
        }
    }

    /// Images per forward pass (default 16).
    pub fn batch_size(mut self, batch_size: usize) -> FeatureExtractor {
        self.batch_size = batch_size.max(1);
        self
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

    /// Never reads or writes the feature cache.
    pub fn without_cache(mut self) -> FeatureExtractor {
        self.cache = None;
        self
    }

    /// The model variant.
    pub fn model(&self) -> MobileNetV2 {
        self.network.model
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

    /// The network (layer table and folded weights).
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Features of `n` preprocessed images (NHWC, `resolution²·3` values each, in [0, 1]),
    /// batched by [`FeatureExtractor::batch_size`]. No cache is involved.
    pub fn forward(&self, pixels: &[f32], n: usize) -> Result<Vec<f32>> {
        let per_image = self.network.model.resolution.pow(2) * 3;
        if pixels.len() != n * per_image {
            return Err(Error::InvalidArgument(format!(
                "{n} images need {} values, got {}",
                n * per_image,
                pixels.len()
            )));
        }
        let mut out = Vec::with_capacity(n * self.feature_dim());
        for chunk in pixels.chunks(self.batch_size * per_image) {
            out.extend(self.engine.forward(chunk, chunk.len() / per_image)?);
        }
        Ok(out)
    }

    /// Forward-pass throughput in images/s, measured for about `seconds` on synthetic input
    /// (speed does not depend on the pixels).
    pub fn throughput(&self, seconds: f64) -> Result<f64> {
        let model = self.network.model;
        let per_image = model.resolution * model.resolution * 3;
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

    /// Decodes and resizes one photo as this extractor's input.
    pub fn preprocess(&self, path: &Path) -> Result<Image> {
        load_resized(path, self.network.model.resolution, self.resize)
    }

    /// Features of one photo.
    pub fn extract_one(&self, path: &Path) -> Result<Vec<f32>> {
        let image = self.preprocess(path)?;
        self.forward(&image.data, 1)
    }

    /// Features of many photos, from the cache where possible, with progress lines.
    /// A photo that cannot be read is skipped with a warning and listed in `skipped`.
    pub fn extract_paths(&self, paths: &[PathBuf]) -> Result<Extracted> {
        let dim = self.feature_dim();
        let cache = self.cache.as_ref().map(|dir| self.cache_folder(dir));
        let mut rows: Vec<Option<Vec<f32>>> = vec![None; paths.len()];
        let mut skipped = Vec::new();
        let mut cache_hits = 0;
        let mut progress = Progress::new(
            &format!("Extracting features ({})", self.network.model.name()),
            Some(paths.len() as u64),
            Unit::Items,
        );
        // Chunks of a few batches keep every core busy decoding while bounding memory.
        let chunk = self.batch_size * 4;
        // The loader captures only these, not `self`: a CUDA engine is neither Send nor Sync.
        let (size, resize, loader_cache) =
            (self.network.model.resolution, self.resize, cache.clone());
        let load = move |path: &PathBuf| -> Result<Loaded> {
            let bytes = fs::read(path).at(path)?;
            let key = sha256_hex(&bytes);
            if let Some(hit) = loader_cache
                .as_ref()
                .and_then(|dir| read_cached(dir, &key, dim))
            {
                return Ok(Loaded::Cached(hit));
            }
            Ok(Loaded::Decoded(
                key,
                load_resized_bytes(&bytes, path, size, resize)?,
            ))
        };
        // Pipeline: a loader thread reads, hashes and decodes the next chunk (in parallel)
        // while this thread runs the current one through the network.
        std::thread::scope(|scope| -> Result<()> {
            let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<Result<Loaded>>>(1);
            scope.spawn(move || {
                for chunk_paths in paths.chunks(chunk) {
                    let loaded = chunk_paths.par_iter().map(&load).collect();
                    if sender.send(loaded).is_err() {
                        break; // the consumer stopped on an error
                    }
                }
            });
            for (c, loaded) in receiver.into_iter().enumerate() {
                let base = c * chunk;
                let mut pixels = Vec::new();
                let mut pending = Vec::new();
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
                        Err(e) => {
                            eprintln!("warning: skipping {e}");
                            skipped.push((paths[base + i].clone(), e));
                        }
                    }
                }
                if !pending.is_empty() {
                    let values = self.forward(&pixels, pending.len())?;
                    for ((index, key), row) in pending.into_iter().zip(values.chunks_exact(dim)) {
                        if let Some(dir) = &cache {
                            write_cached(dir, &key, row)?;
                        }
                        rows[index] = Some(row.to_vec());
                    }
                }
                progress.inc(count as u64);
            }
            Ok(())
        })?;
        progress.finish();
        let mut values = Vec::with_capacity(paths.len() * dim);
        let mut kept = Vec::with_capacity(paths.len());
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
    pub fn extract(&self, split: &Split) -> Result<Features> {
        let side = |examples: &[crate::data::Example]| -> Result<FeatureSet> {
            let paths: Vec<PathBuf> = examples.iter().map(|e| e.path.clone()).collect();
            let out = self.extract_paths(&paths)?;
            let dev = Cpu::default();
            Ok(FeatureSet {
                x: dev.tensor((out.values, (out.kept.len(), out.dim))),
                labels: out.kept.iter().map(|&i| examples[i].label).collect(),
                paths: out.kept.iter().map(|&i| paths[i].clone()).collect(),
            })
        };
        Ok(Features {
            classes: split.classes.clone(),
            model: self.network.model.name(),
            weights_id: self.network.weights_id.clone(),
            weights_path: self.network.weights_path.clone(),
            resize: self.resize,
            dim: self.feature_dim(),
            train: side(&split.train)?,
            test: side(&split.test)?,
        })
    }

    /// `dir/<model>-<key>`: one folder per model, weights and preprocessing, so that a change
    /// of any of them never serves stale features.
    fn cache_folder(&self, dir: &Path) -> PathBuf {
        let key = sha256_hex(
            format!(
                "{}|{}|{}",
                self.network.model.name(),
                self.network.weights_id,
                self.resize.name()
            )
            .as_bytes(),
        );
        dir.join(format!("{}-{}", self.network.model.name(), &key[..16]))
    }
}

enum Loaded {
    Cached(Vec<f32>),
    Decoded(String, Image),
}

/// Cache file: magic, dim (u32 LE), dim f32 LE, then the first 8 bytes of the SHA-256 of
/// everything before — so a partial or damaged file is recognised and recomputed.
const MAGIC: &[u8; 4] = b"FKF1";

fn cache_file(dir: &Path, key: &str) -> PathBuf {
    dir.join(&key[..2]).join(format!("{key}.f32"))
}

fn read_cached(dir: &Path, key: &str, dim: usize) -> Option<Vec<f32>> {
    let bytes = fs::read(cache_file(dir, key)).ok()?;
    let body_len = 8 + dim * 4;
    if bytes.len() != body_len + 8 || &bytes[..4] != MAGIC {
        return None;
    }
    let (body, check) = bytes.split_at(body_len);
    if u32::from_le_bytes(body[4..8].try_into().ok()?) as usize != dim
        || Sha256::digest(body)[..8] != *check
    {
        return None;
    }
    Some(
        body[8..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

fn write_cached(dir: &Path, key: &str, row: &[f32]) -> Result<()> {
    let path = cache_file(dir, key);
    let mut body = Vec::with_capacity(16 + row.len() * 4);
    body.extend_from_slice(MAGIC);
    body.extend_from_slice(&(row.len() as u32).to_le_bytes());
    for v in row {
        body.extend_from_slice(&v.to_le_bytes());
    }
    let check = Sha256::digest(&body);
    body.extend_from_slice(&check[..8]);
    crate::files::write_atomically(&path, &body)
}
