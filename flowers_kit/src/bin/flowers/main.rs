//! `flowers`: the tutorial's steps from the command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use flowers_kit::backend::native::Kernels;
use flowers_kit::backend::Network;
use flowers_kit::data::{self, Augment, Dataset, FetchOptions};
use flowers_kit::features::{BackendKind, DeviceKind, FeatureExtractor};
use flowers_kit::models::Model;
use flowers_kit::train::{Activation, FineTune, Optimizer, Schedule};

#[derive(Parser)]
#[command(
    name = "flowers",
    version,
    about = "Flower photos, MobileNet V2 features and a classifier, as in TensorFlow's transfer-learning tutorial"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the network and the training run.
#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    /// The CPU.
    Cpu,
    /// An NVIDIA GPU (a build with `--features cuda`).
    Cuda,
}

impl From<DeviceArg> for DeviceKind {
    fn from(arg: DeviceArg) -> Self {
        match arg {
            DeviceArg::Cpu => DeviceKind::Cpu,
            DeviceArg::Cuda => DeviceKind::Cuda,
        }
    }
}

/// Which implementation runs the network on the CPU.
#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    /// The fast native kernels.
    Native,
    /// dfdx tensors: the reference (always used on CUDA).
    Dfdx,
}

impl From<BackendArg> for BackendKind {
    fn from(arg: BackendArg) -> Self {
        match arg {
            BackendArg::Native => BackendKind::Native,
            BackendArg::Dfdx => BackendKind::Dfdx,
        }
    }
}

/// The instruction set of the native kernels.
#[derive(Clone, Copy, ValueEnum)]
enum KernelsArg {
    /// AVX-512 (F, VL): avx2's strategy on AVX-512 micro-kernels.
    Avx512,
    /// AVX2 and FMA: packed products, fused inverted-residual blocks.
    Avx2,
    /// Portable loops, any CPU.
    Portable,
}

impl From<KernelsArg> for Kernels {
    fn from(arg: KernelsArg) -> Self {
        match arg {
            KernelsArg::Avx512 => Kernels::Avx512,
            KernelsArg::Avx2 => Kernels::Avx2,
            KernelsArg::Portable => Kernels::Portable,
        }
    }
}

/// The optimizer, with TensorFlow's defaults.
#[derive(Clone, Copy, ValueEnum)]
enum OptimizerArg {
    /// Plain gradient descent (the tutorial's).
    Sgd,
    /// Momentum 0.9.
    Momentum,
    /// Momentum 0.9 with Nesterov's look-ahead.
    Nesterov,
    /// Adagrad.
    Adagrad,
    /// Adam.
    Adam,
    /// RMSprop.
    Rmsprop,
}

impl From<OptimizerArg> for Optimizer {
    fn from(arg: OptimizerArg) -> Self {
        match arg {
            OptimizerArg::Sgd => Optimizer::Sgd,
            OptimizerArg::Momentum => Optimizer::momentum(),
            OptimizerArg::Nesterov => Optimizer::Momentum {
                momentum: 0.9,
                nesterov: true,
            },
            OptimizerArg::Adagrad => Optimizer::adagrad(),
            OptimizerArg::Adam => Optimizer::adam(),
            OptimizerArg::Rmsprop => Optimizer::rmsprop(),
        }
    }
}

/// How the learning rates change over the steps.
#[derive(Clone, Copy, ValueEnum)]
enum ScheduleArg {
    /// The same rate at every step (the tutorial).
    Constant,
    /// From the full rate down to zero along half a cosine.
    Cosine,
}

/// The non-linearity between hidden layers.
#[derive(Clone, Copy, ValueEnum)]
enum ActivationArg {
    /// max(0, x).
    Relu,
    /// None: the layers compose into one linear map.
    None,
}

impl From<ActivationArg> for Activation {
    fn from(arg: ActivationArg) -> Self {
        match arg {
            ActivationArg::Relu => Activation::Relu,
            ActivationArg::None => Activation::Linear,
        }
    }
}

/// `--batch` of `train`: a number of photos per step, or the whole training set.
#[derive(Clone, Copy)]
struct TrainBatch(Option<usize>);

fn parse_train_batch(text: &str) -> Result<TrainBatch, String> {
    match text {
        "full" | "all" => Ok(TrainBatch(None)),
        n => positive(n)
            .map(|b| TrainBatch(Some(b)))
            .map_err(|_| format!("takes a positive number or 'full', not '{n}'")),
    }
}

/// A whole number of at least 1.
fn positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "expected a whole number of at least 1, not '{text}'"
        )),
    }
}

/// A finite number above 0.
fn positive_rate(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("expected a finite number above 0, not '{text}'")),
    }
}

/// A finite number of at least 0.
fn non_negative(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "expected a finite number of at least 0, not '{text}'"
        )),
    }
}

/// A measurement time: a finite number of seconds above 0, at most an hour.
fn bench_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err(format!(
            "expected a number of seconds above 0 and at most 3600, not '{text}'"
        )),
    }
}

fn parse_fine_tune_blocks(text: &str) -> Result<usize, String> {
    let max = flowers_kit::train::finetune::MAX_FINE_TUNE_BLOCKS;
    text.parse()
        .ok()
        .filter(|b| (1..=max).contains(b))
        .ok_or_else(|| format!("takes 1 to {max} blocks"))
}

fn parse_augment(text: &str) -> Result<Augment, String> {
    text.parse().map_err(|e: flowers_kit::Error| e.to_string())
}

fn parse_model(text: &str) -> Result<Model, String> {
    Model::parse(text).map_err(|e| e.to_string())
}

/// Which MobileNet V2 extracts the features, and where it runs.
#[derive(clap::Args)]
struct ExtractorArgs {
    /// Model name (mobilenet_v2_0.35_128) or TF-Hub feature-vector handle.
    #[arg(long, default_value = "mobilenet_v2_0.35_128", value_parser = parse_model)]
    model: Model,
    /// Keras no_top weight file, path or URL [default: the published one].
    #[arg(long)]
    weights: Option<String>,
    /// Where the network runs [default: cuda in a build with CUDA where a GPU answers, else
    /// cpu].
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Which implementation runs it on the CPU: feature extraction, and the fine-tuned blocks
    /// when training.
    #[arg(long, value_enum, default_value_t = BackendArg::Native)]
    backend: BackendArg,
    /// The native backend's instruction set [default: the widest this CPU has].
    #[arg(long, value_enum)]
    kernels: Option<KernelsArg>,
}

impl ExtractorArgs {
    /// `--device`, else [`DeviceKind::preferred`].
    fn device(&self) -> DeviceKind {
        self.device_or(DeviceKind::preferred)
    }

    /// `--device`, else `default()` (asked only then: it may ask CUDA's driver).
    fn device_or(&self, default: impl FnOnce() -> DeviceKind) -> DeviceKind {
        self.device.map_or_else(default, DeviceKind::from)
    }

    /// The extractor; without --weights, `random_by_default` picks seeded random weights
    /// (for benchmarks) instead of the published ones. `--kernels` means the CPU.
    fn build(&self, random_by_default: bool) -> flowers_kit::Result<FeatureExtractor> {
        let device = match self.kernels {
            Some(_) => self.device_or(|| DeviceKind::Cpu),
            None => self.device(),
        };
        self.build_on(random_by_default, device)
    }

    /// [`ExtractorArgs::build`] on `device`, opening no other.
    fn build_on(
        &self,
        random_by_default: bool,
        device: DeviceKind,
    ) -> flowers_kit::Result<FeatureExtractor> {
        let extractor = match (&self.weights, random_by_default) {
            (None, true) => {
                FeatureExtractor::from_network_on(Network::random(self.model, 0)?, device)?
            }
            (weights, _) => {
                FeatureExtractor::with_weights_on(self.model, weights.as_deref(), device)?
            }
        };
        let extractor = extractor.with_backend(self.backend.into())?;
        match self.kernels {
            Some(kernels) => extractor.with_native_kernels(kernels.into()),
            None => Ok(extractor),
        }
    }
}

/// The photos in `data`, or the downloaded flower photos.
fn photos(data: Option<PathBuf>) -> flowers_kit::Result<Dataset> {
    match data {
        Some(dir) => Dataset::open(dir),
        None => data::download_flowers(),
    }
}

/// `flowers fetch`'s bounds; each defaults to [`FetchOptions::default`]'s.
#[derive(clap::Args)]
struct FetchLimits {
    /// Attempts in all, the first included.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    attempts: Option<u32>,
    /// Pause before the first retry, in milliseconds; it doubles for each further one.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    backoff_ms: Option<u64>,
    /// Wait for a connection, the headers and each read, in milliseconds.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    timeout_ms: Option<u64>,
    /// The whole fetch, every attempt and pause included, in milliseconds.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=604_800_000))]
    deadline_ms: Option<u64>,
    /// The slowest transfer accepted, in bytes per second over --slow-window-ms.
    #[arg(long)]
    min_rate: Option<u64>,
    /// The window --min-rate is measured over, in milliseconds.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    slow_window_ms: Option<u64>,
    /// The largest file accepted, in bytes.
    #[arg(long)]
    max_bytes: Option<u64>,
}

impl FetchLimits {
    fn options(&self) -> FetchOptions {
        let default = FetchOptions::default();
        let millis = |ms: Option<u64>, default: Duration| ms.map_or(default, Duration::from_millis);
        FetchOptions {
            attempts: self.attempts.unwrap_or(default.attempts),
            backoff: millis(self.backoff_ms, default.backoff),
            timeout: millis(self.timeout_ms, default.timeout),
            deadline: millis(self.deadline_ms, default.deadline),
            min_rate: self.min_rate.unwrap_or(default.min_rate),
            slow_window: millis(self.slow_window_ms, default.slow_window),
            max_bytes: self.max_bytes.unwrap_or(default.max_bytes),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Download and extract the flower photos into the cache (nothing happens if they are there).
    Download {
        /// Archive URL or local path [default: $FLOWERS_DATA_URL, else the tutorial's URL].
        #[arg(long)]
        url: Option<String>,
        /// Cache folder [default: $FLOWERS_KIT_HOME, else the platform cache dir].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Download one URL into FILE (nothing happens if FILE exists): resumed, retried and
    /// bounded like every download of the kit. The notebooks' build of the kit, which has no
    /// HTTP client of its own, runs this to download; the caller checks the file.
    Fetch {
        /// An http(s):// URL, a file:// URL or a local path (copied).
        url: String,
        /// The file to write; a partial download is kept next to it as FILE.part and resumed.
        file: PathBuf,
        #[command(flatten)]
        limits: FetchLimits,
    },
    /// Split a photo folder into train and test sets as the tutorial does.
    Split {
        /// The dataset folder, one sub-folder per class [default: the downloaded flower photos,
        /// fetched first if needed].
        #[arg(long)]
        data: Option<PathBuf>,
        /// Seed of Python's random.Random used for the shuffles.
        #[arg(long, default_value_t = data::TUTORIAL_SEED)]
        seed: u64,
        /// Share of each class that goes to training.
        #[arg(long, default_value_t = data::TUTORIAL_TRAIN_FRACTION)]
        train_fraction: f64,
        /// Print the lists as JSON: {"classes":[..],"train":[["class/file",label],..],"test":[..]}.
        #[arg(long)]
        json: bool,
    },
    /// Extract MobileNet V2 features of photos into a safetensors file (tensor `features`).
    Features {
        #[command(flatten)]
        extractor: ExtractorArgs,
        /// Images per forward pass.
        #[arg(long, default_value_t = 16, value_parser = positive)]
        batch: usize,
        /// Output file; only a file written by this command is ever overwritten.
        #[arg(long)]
        out: PathBuf,
        /// Photos, in the order of the output rows.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Train a classifier on MobileNet V2 features, as the tutorial does, and write its results.
    Train {
        /// Dataset folder [default: the downloaded flower photos].
        #[arg(long)]
        data: Option<PathBuf>,
        #[command(flatten)]
        extractor: ExtractorArgs,
        /// NUM_TRAIN_STEPS.
        #[arg(long, default_value_t = 100, value_parser = positive)]
        steps: usize,
        /// TRAIN_BATCH_SIZE, or "full" for the whole training set each step.
        #[arg(long, default_value = "10", value_parser = parse_train_batch)]
        batch: TrainBatch,
        /// LEARNING_RATE.
        #[arg(long, default_value_t = 0.01, value_parser = positive_rate)]
        lr: f32,
        /// The optimizer.
        #[arg(long, value_enum, default_value_t = OptimizerArg::Sgd)]
        optimizer: OptimizerArg,
        /// EVAL_EVERY.
        #[arg(long, default_value_t = 10, value_parser = positive)]
        eval_every: usize,
        /// Hidden layer sizes, e.g. 100,50 [default: none, the linear classifier].
        #[arg(long, value_delimiter = ',', value_parser = positive)]
        hidden: Vec<usize>,
        /// Between hidden layers.
        #[arg(long, value_enum, default_value_t = ActivationArg::Relu)]
        activation: ActivationArg,
        /// L2 weight decay.
        #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
        weight_decay: f32,
        /// Seed of the initial weights and the batches.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Train on augmented views of the training photos, as retrain.py distorts them:
        /// e.g. flip,crop=10,scale=10,brightness=10 (percentages; seed=N draws other views).
        #[arg(long, value_parser = parse_augment)]
        augment: Option<Augment>,
        /// Augmented views per training photo (with --augment), each cached like features.
        #[arg(long, default_value_t = 4, value_parser = positive)]
        views: usize,
        /// Also train the backbone's last N blocks (as Keras names them: block_16,
        /// expanded_conv_14, block7a, conv5_block3, mixed10, normal_12) and what follows them,
        /// from activations cached per photo; `flowers models` lists each model's limit.
        #[arg(long, value_parser = parse_fine_tune_blocks)]
        fine_tune_blocks: Option<usize>,
        /// The backbone's learning rate when fine-tuning.
        #[arg(long, default_value_t = 0.001, value_parser = positive_rate)]
        fine_tune_lr: f32,
        /// When fine-tuning, steps of the head alone on the frozen features before the
        /// blocks unfreeze (the Keras transfer-learning guide's first phase; 0: none).
        #[arg(long, default_value_t = 100)]
        head_steps: usize,
        /// How the learning rates change over the steps.
        #[arg(long, value_enum, default_value_t = ScheduleArg::Constant)]
        schedule: ScheduleArg,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Classify photos with a saved classifier.
    Predict {
        /// A classifier.safetensors written by `flowers train`.
        #[arg(long)]
        classifier: PathBuf,
        /// How many classes to print per photo.
        #[arg(long, default_value_t = 3)]
        top: usize,
        /// Keras weight file, if not the one used in training.
        #[arg(long)]
        weights: Option<String>,
        /// Print one JSON object per photo, with every class's probability at full
        /// precision: {"photo": .., "classes": [..], "probabilities": [..]}.
        #[arg(long, conflicts_with = "top")]
        json: bool,
        /// Photos to classify.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Write a classifier as one ONNX model: RGB bytes resized to the model's size in, class
    /// probabilities out (see the README's "Export to ONNX").
    Export {
        /// A classifier.safetensors written by `flowers train` (or a notebook).
        #[arg(long)]
        classifier: PathBuf,
        /// The .onnx file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a model's prepared steps as JSON (kind, inputs, shape and sizes; no weights):
    /// what bench/ort_families.py turns into the same network for ONNX Runtime.
    Graph {
        /// Model name or TF-Hub handle.
        #[arg(value_parser = parse_model)]
        model: Model,
    },
    /// List every model: input size, feature size, parameters, multiply-adds per image and
    /// the Keras Applications weight file.
    Models,
    /// Measure images/s: forward pass and decode+resize separately, or cold/warm extraction.
    /// Without --weights, seeded random weights are used: speed does not depend on them.
    Bench {
        #[command(flatten)]
        extractor: ExtractorArgs,
        /// Images per forward pass.
        #[arg(long, default_value_t = 16, value_parser = positive)]
        batch: usize,
        /// Seconds to run each measurement (at most an hour).
        #[arg(long, default_value_t = 5.0, value_parser = bench_seconds)]
        seconds: f64,
        /// Photo folder (class sub-folders) for the decode and extraction measurements
        /// [default: the downloaded flower photos].
        #[arg(long)]
        data: Option<PathBuf>,
        /// Only measure the forward pass (needs no photos).
        #[arg(long, conflicts_with = "extract")]
        forward_only: bool,
        /// Instead: time 1000 full-batch steps of the linear head on 2934×F random features
        /// (the full dataset's training split) with 5 classes.
        #[arg(long, conflicts_with_all = ["extract", "forward_only"])]
        train: bool,
        /// Instead: time fine-tuning steps of the last --blocks blocks and the head (Adam, a
        /// fixed random batch of --batch activations at the cut, random weights), and print
        /// seconds per step; --backend dfdx times dfdx's tape instead of the native kernels.
        #[arg(long, conflicts_with_all = ["extract", "forward_only", "train"])]
        fine_tune: bool,
        /// Blocks to fine-tune, with --fine-tune.
        #[arg(long, default_value_t = 2, value_parser = positive, requires = "fine_tune")]
        blocks: usize,
        /// Instead: extract features of every photo in --data twice, with a fresh cache, and
        /// report the cold and the warm (cached) run.
        #[arg(long)]
        extract: bool,
        /// Instead: time each step of one image (batch 1, the native backend) over about
        /// --seconds and print it against this CPU's measured compute and memory roofs; with
        /// --fine-tune, each step of a fine-tuning pass (forward and backward, --batch rows).
        #[arg(long, conflicts_with_all = ["extract", "forward_only", "train"])]
        layers: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> flowers_kit::Result<()> {
    match cli.command {
        Command::Download { url, dir } => {
            let url = url.unwrap_or_else(data::flowers_url);
            let home = dir.unwrap_or_else(data::cache_home);
            let folder = data::download_dataset(&url, &home, &FetchOptions::default())?;
            let photos = Dataset::open(&folder)?;
            println!(
                "{} photos in {} classes at {}",
                photos.len(),
                photos.classes().len(),
                folder.display()
            );
            Ok(())
        }
        Command::Fetch { url, file, limits } => {
            data::fetch::fetch(&url, &file, &limits.options())?;
            Ok(())
        }
        Command::Split {
            data,
            seed,
            train_fraction,
            json,
        } => {
            let split = photos(data)?.split(train_fraction, seed)?;
            if json {
                let list = |examples: &[data::Example]| -> Vec<(String, usize)> {
                    examples
                        .iter()
                        .map(|e| (split.relative_path(e), e.label))
                        .collect()
                };
                let value = serde_json::json!({
                    "classes": split.classes,
                    "train": list(&split.train),
                    "test": list(&split.test),
                });
                println!("{value}");
            } else {
                println!(
                    "{} classes, {} train, {} test",
                    split.classes.len(),
                    split.train.len(),
                    split.test.len()
                );
            }
            Ok(())
        }
        Command::Features {
            extractor,
            batch,
            out,
            images,
        } => {
            let extractor = extractor.build(false)?.batch_size(batch)?;
            bench::write_features(&extractor, &images, &out)
        }
        Command::Train {
            data,
            extractor,
            steps,
            batch,
            lr,
            optimizer,
            eval_every,
            hidden,
            activation,
            weight_decay,
            seed,
            augment,
            views,
            fine_tune_blocks,
            fine_tune_lr,
            head_steps,
            schedule,
            out,
        } => {
            let config = flowers_kit::train::TrainConfig {
                steps,
                batch_size: batch.0,
                learning_rate: lr,
                eval_every,
                optimizer: optimizer.into(),
                hidden,
                activation: activation.into(),
                weight_decay,
                seed,
                device: extractor.device(),
                backend: extractor.backend.into(),
                augment,
                views,
                fine_tune: fine_tune_blocks.map(|blocks| FineTune {
                    blocks,
                    learning_rate: fine_tune_lr,
                    head_steps,
                }),
                schedule: match schedule {
                    ScheduleArg::Constant => Schedule::Constant,
                    ScheduleArg::Cosine => Schedule::Cosine,
                },
                ..Default::default()
            };
            // Everything that can be checked is checked before the dataset is scanned or a
            // weight file fetched.
            config.validate()?;
            train_cmd::check_out_folder(&out)?;
            let photos = photos(data)?;
            // The head's size is known once the classes are: refused before any weights
            // are fetched or photos decoded.
            flowers_kit::train::head::check_head_size(
                extractor.model.feature_dim(),
                &config.hidden,
                photos.classes().len(),
            )?;
            train_cmd::run_train(train_cmd::TrainArgs {
                photos,
                extractor: extractor.build(false)?,
                config,
                out,
            })
        }
        Command::Graph { model } => {
            println!("{}", bench::graph_json(model)?);
            Ok(())
        }
        Command::Models => {
            println!(
                "{:<24} {:>7} {:>8} {:>11} {:>14} {:>11}  weights file",
                "model", "input", "features", "parameters", "multiply-adds", "fine-tune"
            );
            for model in Model::all() {
                let graph = model.graph(false);
                // The blocks whose input fits the cut's bound; the weights do not matter.
                let network = Network::random(model, 0)?;
                println!(
                    "{:<24} {:>7} {:>8} {:>11} {:>14} {:>11}  {}",
                    model.name(),
                    format!("{0}×{0}", model.resolution()),
                    model.feature_dim(),
                    graph.parameters()?,
                    graph.multiply_adds()?,
                    format!("1–{} blocks", network.max_fine_tune_blocks()),
                    model.weights_file()
                );
            }
            Ok(())
        }
        Command::Predict {
            classifier,
            top,
            weights,
            json,
            images,
        } => {
            let top = if json { None } else { Some(top) };
            train_cmd::run_predict(&classifier, &images, top, weights.as_deref())
        }
        Command::Export { classifier, out } => {
            let bytes = flowers_kit::export::export_onnx(&classifier, &out)?;
            println!("Wrote {}: {:.1} MB", out.display(), bytes as f64 / 1e6);
            Ok(())
        }
        Command::Bench {
            extractor,
            batch,
            seconds,
            data,
            forward_only,
            train,
            fine_tune,
            blocks,
            extract,
            layers,
        } => {
            if layers && fine_tune {
                return bench::fine_tune_layers(extractor.model, blocks, batch, seconds);
            }
            if layers {
                // The per-layer table times the native kernels: the CPU's, unless --device
                // says otherwise (which bench::layers refuses).
                let device = extractor.device_or(|| DeviceKind::Cpu);
                return bench::layers(&extractor.build_on(true, device)?, seconds);
            }
            if fine_tune {
                return bench::fine_tune_steps(&extractor, blocks, batch, seconds);
            }
            if train {
                let dim = extractor.model.feature_dim();
                return bench::train_steps(dim, &extractor.device());
            }
            let extractor = extractor.build(true)?.batch_size(batch)?;
            bench::forward(&extractor, seconds)?;
            if forward_only {
                return Ok(());
            }
            let photos = photos(data)?;
            if extract {
                bench::cold_and_warm(extractor, &photos)
            } else {
                bench::decode(&extractor, &photos, seconds)
            }
        }
    }
}

mod bench;
mod train_cmd;
