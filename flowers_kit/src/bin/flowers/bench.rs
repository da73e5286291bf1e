//! The `features` writer and the `bench` measurements.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use flowers_kit::data::image::load_resized;
use flowers_kit::data::Dataset;
use flowers_kit::features::{BackendKind, DeviceKind, FeatureExtractor};
use flowers_kit::files::ScratchDir;
use flowers_kit::{Error, Result};
use rayon::prelude::*;

/// Marks files written by `flowers features`, the only ones it will overwrite.
const PRODUCER: &str = "flowers features";

/// Writes tensor `features` [N, F] for `images`, in order, atomically.
pub fn write_features(extractor: &FeatureExtractor, images: &[PathBuf], out: &Path) -> Result<()> {
    refuse_foreign(out)?;
    let extracted = extractor.extract_paths(images)?;
    if let Some((_, e)) = extracted.skipped.into_iter().next() {
        // Rows must line up with the arguments, so a bad photo fails the command; the error
        // already names the photo.
        return Err(e);
    }
    let n = extracted.kept.len();
    let bytes: Vec<u8> = extracted
        .values
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![n, extracted.dim],
        &bytes,
    )
    .map_err(|e| Error::Write {
        path: out.to_path_buf(),
        reason: format!("cannot build the features tensor: {e}"),
    })?;
    let network = extractor.network();
    let metadata = [
        ("producer".to_string(), PRODUCER.to_string()),
        ("model".to_string(), network.model().name()),
        ("weights".to_string(), network.weights_id().to_string()),
        (
            "images".to_string(),
            serde_json::to_string(images).map_err(|e| Error::Write {
                path: out.to_path_buf(),
                reason: format!("cannot list the photos: {e}"),
            })?,
        ),
    ]
    .into_iter()
    .collect();
    let serialized =
        safetensors::serialize([("features", view)], &Some(metadata)).map_err(|e| {
            Error::Write {
                path: out.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
    flowers_kit::files::write_atomically(out, &serialized)?;
    println!(
        "wrote features [{n}, {}] of {} to {}",
        extracted.dim,
        network.model().name(),
        out.display()
    );
    Ok(())
}

/// An existing `out` must be a safetensors file that this command wrote. Only its header is
/// read, and only from a regular file: `/dev/zero`, a FIFO or a huge sparse file is refused
/// without reading it.
fn refuse_foreign(out: &Path) -> Result<()> {
    let metadata = match std::fs::metadata(out) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(out, e)),
    };
    let refuse = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "refusing to overwrite {}: {why}",
            out.display()
        )))
    };
    if !metadata.is_file() {
        return refuse("it is not a regular file (a device, a FIFO or a folder?)");
    }
    match producer(out) {
        Ok(Some(producer)) if producer == PRODUCER => Ok(()),
        Ok(_) => refuse("it was not written by `flowers features`"),
        Err(e) => Err(Error::io(out, e)),
    }
}

/// The `producer` of a safetensors file's metadata, reading nothing but its header (at most
/// 100 MB, safetensors' own limit: the header lists the photos); `None` for a file that is
/// not safetensors or has no producer.
fn producer(path: &Path) -> std::io::Result<Option<String>> {
    use std::io::Read;
    const MAX_HEADER: u64 = 100_000_000;
    #[derive(serde::Deserialize)]
    struct Header {
        #[serde(rename = "__metadata__")]
        metadata: Option<std::collections::HashMap<String, String>>,
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // A FIFO swapped in after the check above must not block the open.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let mut file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Ok(None);
    }
    let mut length = [0u8; 8];
    if file.read_exact(&mut length).is_err() {
        return Ok(None);
    }
    let length = u64::from_le_bytes(length);
    if length > MAX_HEADER {
        return Ok(None);
    }
    let mut header = Vec::new();
    file.take(length).read_to_end(&mut header)?;
    Ok(serde_json::from_slice::<Header>(&header)
        .ok()
        .and_then(|h| h.metadata)
        .and_then(|mut m| m.remove("producer")))
}

/// Forward-pass images/s over about `seconds`.
pub fn forward(extractor: &FeatureExtractor, seconds: f64) -> Result<()> {
    let model = extractor.model();
    let batch = extractor.batch();
    let forward = extractor.throughput(seconds)?;
    let kernels = extractor
        .kernels()
        .map_or(String::new(), |k| format!(", {k:?} kernels"));
    println!(
        "{model} forward ({:?} backend{kernels}), batch {batch}, {} threads: {forward:.1} \
         images/s",
        extractor.backend(),
        rayon::current_num_threads()
    );
    Ok(())
}

/// Each step of one image (batch 1) against this CPU's roofs: what it takes, what its
/// multiply-adds and bytes would take at the measured compute and memory roofs, and how far
/// above that it runs.
pub fn layers(extractor: &FeatureExtractor, seconds: f64) -> Result<()> {
    let roofs = flowers_kit::backend::native::Roofs::measure();
    let once: f64 = extractor.layer_times(1)?.iter().map(|l| l.seconds).sum();
    let rounds = ((seconds / once.max(1e-6)) as usize).clamp(1, 100_000);
    let layers = extractor.layer_times(rounds)?;
    let total: f64 = layers.iter().map(|l| l.seconds).sum();
    // Written, not printed: a closed pipe (`| head`) ends the table instead of panicking.
    let mut out = std::io::stdout().lock();
    let stdout = |e: std::io::Error| Error::io(Path::new("<stdout>"), e);
    let roof_total: f64 = layers
        .iter()
        .map(|l| roofs.seconds(l.multiply_adds, l.bytes))
        .sum();
    writeln!(
        out,
        "{} batch 1, {} threads, {rounds} rounds: {:.1} µs per image ({:.0} images/s)",
        extractor.model(),
        roofs.threads,
        total * 1e6,
        1.0 / total
    )
    .map_err(stdout)?;
    writeln!(
        out,
        "roofs (measured): {:.1} G multiply-adds/s per core (the micro-kernel in cache), \
         {:.1} GB/s from memory (all threads); a step's roof is the longer of its work and \
         its bytes at those rates, all threads sharing it",
        roofs.multiply_adds_per_core / 1e9,
        roofs.bytes_per_second / 1e9
    )
    .map_err(stdout)?;
    writeln!(
        out,
        "{:<28} {:<16} {:>14} {:>8} {:>8} {:>8} {:>6} {:>7} {:>8} {:>7}",
        "step", "kind", "output", "M MACs", "KiB", "µs", "%", "GMAC/s", "roof µs", "×roof"
    )
    .map_err(stdout)?;
    for layer in &layers {
        let roof = roofs.seconds(layer.multiply_adds, layer.bytes);
        let [h, w, c] = layer.shape;
        writeln!(
            out,
            "{:<28} {:<16} {:>14} {:>8.2} {:>8.0} {:>8.1} {:>6.1} {:>7.1} {:>8.1} {:>7.1}",
            truncate(&layer.name, 28),
            layer.kind,
            format!("{h}×{w}×{c}"),
            layer.multiply_adds as f64 / 1e6,
            layer.bytes as f64 / 1024.0,
            layer.seconds * 1e6,
            100.0 * layer.seconds / total,
            layer.multiply_adds as f64 / layer.seconds.max(1e-12) / 1e9,
            roof * 1e6,
            layer.seconds / roof.max(1e-12),
        )
        .map_err(stdout)?;
    }
    writeln!(
        out,
        "total: {:.1} µs, roof {:.1} µs ({:.1}× the roof)",
        total * 1e6,
        roof_total * 1e6,
        total / roof_total.max(1e-12)
    )
    .map_err(stdout)?;
    Ok(())
}

/// Each step of a fine-tuning pass (the last `blocks` blocks, random weights, `batch` random
/// activations at the cut): forward and backward times against this CPU's roofs.
pub fn fine_tune_layers(
    model: flowers_kit::models::Model,
    blocks: usize,
    batch: usize,
    seconds: f64,
) -> Result<()> {
    use flowers_kit::backend::native::{NativeSuffix, Roofs};
    use flowers_kit::backend::Network;
    let network = Network::random(model, 0)?;
    let cut = network.cut(blocks)?;
    let suffix = NativeSuffix::new(&cut)?;
    let rows: Vec<f32> = (0..batch * cut.row_len())
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let roofs = Roofs::measure();
    let once: f64 = suffix
        .step_times(&rows, batch, 1)?
        .iter()
        .map(|s| s.forward_seconds + s.backward_seconds)
        .sum();
    let rounds = ((seconds / once.max(1e-6)) as usize).clamp(1, 10_000);
    let steps = suffix.step_times(&rows, batch, rounds)?;
    let mut out = std::io::stdout().lock();
    let stdout = |e: std::io::Error| Error::io(Path::new("<stdout>"), e);
    let total: f64 = steps
        .iter()
        .map(|s| s.forward_seconds + s.backward_seconds)
        .sum();
    let roof_total: f64 = steps
        .iter()
        .map(|s| {
            roofs.seconds(s.forward_multiply_adds, s.forward_bytes)
                + roofs.seconds(s.backward_multiply_adds, s.backward_bytes)
        })
        .sum();
    writeln!(
        out,
        "{} fine-tuning {blocks} block(s), batch {batch}, {} threads, {rounds} rounds: {:.1} ms \
         per step without the head and the optimizer",
        model.name(),
        roofs.threads,
        total * 1e3
    )
    .map_err(stdout)?;
    writeln!(
        out,
        "roofs (measured): {:.1} G multiply-adds/s per core, {:.1} GB/s from memory",
        roofs.multiply_adds_per_core / 1e9,
        roofs.bytes_per_second / 1e9
    )
    .map_err(stdout)?;
    writeln!(
        out,
        "{:<28} {:<16} {:>9} {:>9} {:>9} {:>8} {:>9} {:>8}",
        "step", "kind", "M MACs", "fwd ms", "×roof", "bwd ms", "×roof", "% time"
    )
    .map_err(stdout)?;
    for s in &steps {
        let forward_roof = roofs.seconds(s.forward_multiply_adds, s.forward_bytes);
        let backward_roof = roofs.seconds(s.backward_multiply_adds, s.backward_bytes);
        writeln!(
            out,
            "{:<28} {:<16} {:>9.1} {:>9.2} {:>9.1} {:>8.2} {:>9.1} {:>8.1}",
            truncate(&s.name, 28),
            s.kind,
            s.forward_multiply_adds as f64 / 1e6,
            s.forward_seconds * 1e3,
            s.forward_seconds / forward_roof.max(1e-12),
            s.backward_seconds * 1e3,
            s.backward_seconds / backward_roof.max(1e-12),
            100.0 * (s.forward_seconds + s.backward_seconds) / total.max(1e-12),
        )
        .map_err(stdout)?;
    }
    writeln!(
        out,
        "total: {:.2} ms, roof {:.2} ms ({:.1}× the roof)",
        total * 1e3,
        roof_total * 1e3,
        total / roof_total.max(1e-12)
    )
    .map_err(stdout)?;
    Ok(())
}

/// At most `n` characters of `s`.
fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Decode+resize images/s over the photos, in parallel, for about `seconds`.
pub fn decode(extractor: &FeatureExtractor, photos: &Dataset, seconds: f64) -> Result<()> {
    let model = extractor.model();
    let paths: Vec<PathBuf> = photos.examples().into_iter().map(|e| e.path).collect();
    let resize = extractor.resize_method();
    let start = Instant::now();
    let mut decoded = 0usize;
    'outer: loop {
        for chunk in paths.chunks(64) {
            chunk
                .par_iter()
                .map(|p| load_resized(p, model.resolution(), resize).map(|_| ()))
                .collect::<Result<Vec<()>>>()?;
            decoded += chunk.len();
            if start.elapsed().as_secs_f64() >= seconds {
                break 'outer;
            }
        }
    }
    let decode = decoded as f64 / start.elapsed().as_secs_f64();
    println!(
        "decode+resize to {0}x{0}, {1} threads: {decode:.1} images/s",
        model.resolution(),
        rayon::current_num_threads()
    );
    Ok(())
}

/// Extraction over every photo twice with a fresh cache: cold, then warm. The scratch cache
/// lies in the kit's own cache folder, removed afterwards: the cold run writes the features'
/// packs there, so it pays what creating files costs where a learner's features go (on this
/// VM, creating files in `/tmp` after benchmarks had filled and emptied it took 0.55 ms each).
pub fn cold_and_warm(extractor: FeatureExtractor, photos: &Dataset) -> Result<()> {
    let home = flowers_kit::data::cache_home();
    std::fs::create_dir_all(&home).map_err(|e| Error::io(&home, e))?;
    let cache = ScratchDir::new_in(&home, "bench-")?;
    let extractor = extractor.cache_dir(cache.path());
    let paths: Vec<PathBuf> = photos.examples().into_iter().map(|e| e.path).collect();
    let mut times = Vec::new();
    for run in ["cold", "warm"] {
        let start = Instant::now();
        let out = extractor.extract_paths(&paths)?;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{run}: {} photos in {secs:.2} s ({:.1} images/s, {} from cache)",
            paths.len(),
            paths.len() as f64 / secs,
            out.cache_hits
        );
        times.push(secs);
    }
    println!("warm run is {:.1}x faster", times[0] / times[1]);
    Ok(())
}

/// 1000 full-batch SGD steps of the linear head over 2934 random feature rows.
pub fn train_steps(dim: usize, device: &flowers_kit::features::DeviceKind) -> Result<()> {
    use flowers_kit::features::{FeatureSet, FeatureSource, Features};
    use flowers_kit::train::{train, TrainConfig};
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut set = |n: usize| -> Result<FeatureSet> {
        let values = (0..n * dim).map(|_| rng.gen_range(0.0f32..6.0)).collect();
        let labels = (0..n).map(|i| i % 5).collect();
        FeatureSet::new(values, dim, labels, vec![])
    };
    let features = Features {
        classes: (0..5).map(|c| format!("class{c}")).collect(),
        source: FeatureSource {
            model: "random".into(),
            weights_id: "random".into(),
            weights_path: None,
            resize: Default::default(),
        },
        dim,
        train: set(2934)?,
        validation: set(0)?,
        test: set(736)?,
        train_views: Vec::new(),
        augment: None,
        cut: None,
    };
    let config = TrainConfig {
        steps: 1000,
        batch_size: None,
        eval_every: 1000,
        verbose: false,
        device: *device,
        ..Default::default()
    };
    let start = Instant::now();
    train(&features, &config)?;
    println!(
        "1000 full-batch steps, linear head, 2934x{dim} features, {} threads: {:.2} s",
        rayon::current_num_threads(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Seconds per fine-tuning step: the last `blocks` blocks of `extractor`'s model (random
/// weights) and a linear head, Adam, on `batch` fixed random activations at the cut — what
/// `bench/torch_finetune.py` times for PyTorch. Steps run for about `seconds`, after one
/// warm-up run.
pub fn fine_tune_steps(
    args: &super::ExtractorArgs,
    blocks: usize,
    batch: usize,
    seconds: f64,
) -> Result<()> {
    use flowers_kit::backend::Network;
    use flowers_kit::features::{FeatureSet, FeatureSource, Features};
    use flowers_kit::train::{train, FineTune, Optimizer, TrainConfig};
    use rand::{Rng, SeedableRng};
    let network = Network::random(args.model, 0)?;
    let cut = network.cut(blocks)?;
    let dim = cut.row_len();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut set = |n: usize| -> Result<FeatureSet> {
        let values = (0..n * dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        FeatureSet::new(values, dim, (0..n).map(|i| i % 5).collect(), vec![])
    };
    let features = Features {
        classes: (0..5).map(|c| format!("class{c}")).collect(),
        source: FeatureSource {
            model: network.model().name(),
            weights_id: network.weights_id().into(),
            weights_path: None,
            resize: Default::default(),
        },
        dim,
        train: set(batch)?,
        validation: set(0)?,
        test: set(1)?,
        train_views: Vec::new(),
        augment: None,
        cut: Some(cut.clone()),
    };
    let run = |steps: usize| -> Result<f64> {
        let config = TrainConfig {
            steps,
            batch_size: Some(batch),
            learning_rate: 1e-3,
            optimizer: Optimizer::adam(),
            eval_every: steps,
            verbose: false,
            device: args.device(),
            backend: args.backend.into(),
            fine_tune: Some(FineTune {
                blocks,
                learning_rate: 1e-3,
                head_steps: 0,
            }),
            ..Default::default()
        };
        let start = Instant::now();
        train(&features, &config)?;
        Ok(start.elapsed().as_secs_f64())
    };
    // Two evaluations of one test row and the set-up are in every run: the difference
    // between a long and a short run is the steps alone.
    let short = 2;
    let once = run(short)?;
    let per_step_guess = (once / short as f64).max(1e-4);
    let steps = ((seconds / per_step_guess) as usize).clamp(short + 4, 10_000);
    let long = run(steps)?;
    let short_again = run(short)?;
    let per_step = (long - short_again.min(once)) / (steps - short) as f64;
    // What trains the blocks: the GPU always runs dfdx (see `TrainConfig::backend`).
    let engine = match (args.device(), BackendKind::from(args.backend)) {
        (DeviceKind::Cuda, _) => "dfdx on CUDA".to_string(),
        (DeviceKind::Cpu, backend) => format!("{backend:?} backend"),
    };
    println!(
        "{}, {blocks} block(s) + head, batch {batch}, {engine}, {} threads: {per_step:.4} s \
         per fine-tuning step ({} steps, {} trainable parameters)",
        network.model().name(),
        rayon::current_num_threads(),
        steps,
        cut.parameter_count()
    );
    Ok(())
}

/// The prepared steps of `model` (random weights) as JSON, without the weight values.
pub fn graph_json(model: flowers_kit::models::Model) -> Result<String> {
    use flowers_kit::backend::{Kernel, Network};
    use serde_json::json;
    let network = Network::random(model, 0)?;
    let steps: Vec<serde_json::Value> = network
        .steps()
        .iter()
        .map(|step| {
            let detail = match &step.kernel {
                Kernel::Input => json!({"kind": "input"}),
                Kernel::Conv(c) => json!({"kind": "conv", "kernel": [c.kernel.0, c.kernel.1],
                    "stride": c.stride, "pad": c.pad, "cin": c.cin, "cout": c.cout,
                    "depthwise": c.depthwise, "activation": format!("{:?}", c.activation)}),
                Kernel::Affine { activation, .. } => {
                    json!({"kind": "affine", "activation": format!("{activation:?}")})
                }
                Kernel::Activation(a) => json!({"kind": "activation", "activation": format!("{a:?}")}),
                Kernel::Add(a) => json!({"kind": "add", "activation": format!("{a:?}")}),
                Kernel::Multiply => json!({"kind": "multiply"}),
                Kernel::Concat => json!({"kind": "concat"}),
                Kernel::MaxPool { size, stride, pad } => {
                    json!({"kind": "maxpool", "size": [size.0, size.1], "stride": stride, "pad": pad})
                }
                Kernel::AvgPool { size, stride, pad } => {
                    json!({"kind": "avgpool", "size": [size.0, size.1], "stride": stride, "pad": pad})
                }
                Kernel::Pad(p) => json!({"kind": "pad", "pad": p}),
                Kernel::Crop(c) => json!({"kind": "crop", "crop": c}),
                Kernel::GlobalAvgPool => json!({"kind": "gap"}),
            };
            let mut value = detail;
            value["name"] = json!(step.name);
            value["inputs"] = json!(step.inputs);
            value["shape"] = json!(step.shape);
            value
        })
        .collect();
    serde_json::to_string(
        &json!({"model": model.name(), "resolution": model.resolution(), "steps": steps}),
    )
    .map_err(|e| Error::InvalidArgument(format!("cannot write the graph: {e}")))
}
