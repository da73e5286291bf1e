//! Hostile input: malformed networks, photo files that are not photos, damaged classifier
//! files, out-of-range arguments, unwritable caches and broken downloads. Each one must give
//! an `Error` (or a warning and a skip) — never a panic, a hang or a runaway allocation.

mod support;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use flowers_kit::backend::{Conv, Kernel, Network, Step};
use flowers_kit::data::image::{self, Image, PhotoLimits};
use flowers_kit::data::{self, Dataset};
use flowers_kit::features::{FeatureExtractor, FeatureSet};
use flowers_kit::models::graph::Activation;
use flowers_kit::models::{MobileNetV2, Model};
use flowers_kit::train::head::Dense;
use flowers_kit::train::{Activation as HeadActivation, Classifier, Head};
use flowers_kit::Error;
use support::http::{Behaviour, Server};
use support::quick_fetch as quick;

fn small_model() -> MobileNetV2 {
    MobileNetV2::parse("mobilenet_v2_0.35_96").unwrap()
}

fn photo(name: &str) -> PathBuf {
    support::golden().join("images").join(name)
}

// ---- 1. Networks are validated where they are built -------------------------------------

#[test]
fn malformed_networks_are_errors_not_out_of_bounds_reads() {
    let model = Model::from(small_model());
    let good = Network::random(model, 1).unwrap();
    let steps = good.steps().to_vec();
    let rebuild = |steps: Vec<Step>| Network::new(model, steps, "test".into(), None);
    assert!(rebuild(steps.clone()).is_ok());

    let find = |depthwise: bool, k: (usize, usize)| {
        steps
            .iter()
            .position(|s| matches!(&s.kernel, Kernel::Conv(c) if c.depthwise == depthwise && c.kernel == k))
            .unwrap()
    };
    let (pointwise, depthwise, stem) =
        (find(false, (1, 1)), find(true, (3, 3)), find(false, (3, 3)));
    // Each mutation breaks one invariant the native kernels rely on.
    let mutations: Vec<(&str, Box<Mutation>)> = vec![
        (
            "short 1×1 weights",
            Box::new(move |s| {
                conv(s, pointwise).weights.pop();
            }),
        ),
        (
            "1×1 input channels that do not chain",
            Box::new(move |s| conv(s, pointwise).cin += 1),
        ),
        (
            "short depthwise weights",
            Box::new(move |s| {
                conv(s, depthwise).weights.pop();
            }),
        ),
        (
            "depthwise bias longer than the channels",
            Box::new(move |s| conv(s, depthwise).bias.push(0.0)),
        ),
        (
            "short stem",
            Box::new(move |s| conv(s, stem).weights.truncate(10)),
        ),
        ("stride 0", Box::new(move |s| conv(s, depthwise).stride = 0)),
        (
            "a wrong output shape",
            Box::new(move |s| s[pointwise].shape[0] += 1),
        ),
        (
            "an input that comes later",
            Box::new(move |s| s[pointwise].inputs = vec![pointwise + 1]),
        ),
        (
            "an add of two shapes",
            Box::new(move |s| {
                let (a, b) = (stem, pointwise);
                let shape = s[b].shape;
                s.push(Step {
                    name: "bad_add".into(),
                    kernel: Kernel::Add(Activation::Linear),
                    inputs: vec![a, b],
                    shape,
                });
            }),
        ),
        ("no steps", Box::new(|s| s.clear())),
    ];
    for (what, mutate) in mutations {
        let mut broken = steps.clone();
        mutate(&mut broken);
        let err = rebuild(broken).expect_err(what);
        assert!(matches!(err, Error::InvalidArgument(_)), "{what}: {err}");
    }
}

/// A change that breaks one invariant of a network's steps.
type Mutation = dyn Fn(&mut Vec<Step>);

/// The convolution of step `i`.
fn conv(steps: &mut [Step], i: usize) -> &mut Conv {
    match &mut steps[i].kernel {
        Kernel::Conv(c) => c,
        other => panic!("step {i} is {other:?}"),
    }
}

// ---- 2. Photo files -----------------------------------------------------------------------

#[cfg(unix)]
#[test]
fn a_link_to_dev_zero_or_a_fifo_named_jpg_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let zero = dir.path().join("zero.jpg");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let fifo = dir.path().join("fifo.jpg");
    let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `name` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o644) }, 0);
    let started = Instant::now();
    for path in [&zero, &fifo] {
        let err = image::read_photo(path, &PhotoLimits::default()).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_file_over_the_size_cap_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.jpg");
    // 2 GB, sparse: reading it whole would take seconds and 2 GB of memory.
    fs::File::create(&big).unwrap().set_len(2 << 30).unwrap();
    let err = image::read_photo(&big, &PhotoLimits::default()).unwrap_err();
    assert!(
        err.to_string().contains("more than a photo may hold"),
        "{err}"
    );
    // The cap is configurable: a real photo over a 1 KB cap is refused too.
    let tiny = PhotoLimits {
        max_file_bytes: 1024,
        ..PhotoLimits::default()
    };
    assert!(image::read_photo(&photo("00_daisy.jpg"), &tiny).is_err());
    assert!(image::read_photo(&photo("00_daisy.jpg"), &PhotoLimits::default()).is_ok());
}

#[test]
fn photos_over_the_pixel_cap_are_skipped_with_the_reason() {
    let path = photo("03_roses.jpg");
    let bytes = fs::read(&path).unwrap();
    let limits = PhotoLimits {
        max_pixels: 10_000,
        ..PhotoLimits::default()
    };
    let err =
        image::load_resized_bytes(&bytes, &path, 96, Default::default(), &limits).unwrap_err();
    assert!(err.to_string().contains("megapixel limit"), "{err}");
    // In an extraction, such a photo is skipped and the others are kept.
    let cache = tempfile::tempdir().unwrap();
    let extractor = FeatureExtractor::from_network(Network::random(small_model(), 0).unwrap())
        .unwrap()
        .cache_dir(cache.path())
        .photo_limits(limits);
    let out = extractor
        .extract_paths(std::slice::from_ref(&path))
        .unwrap();
    assert!(out.kept.is_empty());
    assert_eq!(out.skipped[0].0, path);
}

#[cfg(unix)]
#[test]
fn a_file_name_that_is_not_utf8_is_skipped_not_fatal() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let class = dir.path().join("roses");
    fs::create_dir(&class).unwrap();
    fs::copy(photo("03_roses.jpg"), class.join("a.jpg")).unwrap();
    let odd = class.join(std::ffi::OsStr::from_bytes(b"b\xff.jpg"));
    fs::copy(photo("04_roses.jpg"), &odd).unwrap();
    let photos = Dataset::open(dir.path()).unwrap();
    assert_eq!(photos.len(), 1);
    assert!(photos.skipped().contains(&odd));
}

// ---- 3. Classifier files ------------------------------------------------------------------

/// A classifier file with one layer `[inputs, outputs]` built from the given parts.
fn classifier_bytes(
    dtype: safetensors::Dtype,
    weight_shape: Vec<usize>,
    weight_bytes: Vec<u8>,
    layers: &str,
) -> Vec<u8> {
    let outputs = *weight_shape.last().unwrap_or(&2);
    let bias = vec![0u8; outputs * 4];
    let w = safetensors::tensor::TensorView::new(dtype, weight_shape, &weight_bytes).unwrap();
    let b = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![outputs], &bias)
        .unwrap();
    let metadata: HashMap<String, String> = [
        ("format", "flowers_kit classifier v1"),
        ("classes", r#"["a","b"]"#),
        ("model", "mobilenet_v2_0.35_96"),
        ("weights_id", "x"),
        ("resize", "tf_v1_bilinear"),
        ("activation", "Relu"),
        ("layers", layers),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    safetensors::serialize([("layer0.weight", w), ("layer0.bias", b)], &Some(metadata)).unwrap()
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn damaged_classifier_files_are_errors_naming_the_problem() {
    use safetensors::Dtype;
    let path = Path::new("c.safetensors");
    let load = |bytes: Vec<u8>| Classifier::from_bytes(&bytes, path);
    let good = classifier_bytes(Dtype::F32, vec![3, 2], f32_bytes(&[0.5; 6]), "1");
    assert!(load(good).is_ok());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "expected F32",
            classifier_bytes(Dtype::F16, vec![3, 2], vec![0; 12], "1"),
        ),
        (
            "expected 2 dimensions",
            classifier_bytes(Dtype::F32, vec![6], f32_bytes(&[0.5; 6]), "1"),
        ),
        (
            "layer count must be 1 to 1",
            classifier_bytes(Dtype::F32, vec![3, 2], f32_bytes(&[0.5; 6]), "100000000000"),
        ),
        (
            "layer count must be 1 to 1",
            classifier_bytes(Dtype::F32, vec![3, 2], f32_bytes(&[0.5; 6]), "0"),
        ),
        (
            "NaN or infinite",
            classifier_bytes(
                Dtype::F32,
                vec![3, 2],
                f32_bytes(&[0.5, f32::NAN, 0.5, 0.5, 0.5, 0.5]),
                "1",
            ),
        ),
        (
            "NaN or infinite",
            classifier_bytes(
                Dtype::F32,
                vec![3, 2],
                f32_bytes(&[0.5, 0.5, f32::INFINITY, 0.5, 0.5, 0.5]),
                "1",
            ),
        ),
        (
            "logits for 2 classes",
            classifier_bytes(Dtype::F32, vec![2, 3], f32_bytes(&[0.5; 6]), "1"),
        ),
    ];
    for (message, bytes) in cases {
        let err = load(bytes).unwrap_err();
        assert!(matches!(err, Error::Tensors { .. }), "{err}");
        assert!(err.to_string().contains(message), "{message}: {err}");
        assert!(err.to_string().contains("c.safetensors"), "{err}");
    }
    // A FIFO or folder given as the classifier file is refused, not read.
    let dir = tempfile::tempdir().unwrap();
    let err = Classifier::load(dir.path()).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
}

// ---- 4. Panics reachable from the public API ----------------------------------------------

#[test]
fn out_of_range_labels_empty_heads_and_short_pixel_buffers_are_errors() {
    let head = Head::new(2, &[], 2, HeadActivation::Relu, 0).unwrap();
    let source = FeatureExtractor::from_network(Network::random(small_model(), 0).unwrap())
        .unwrap()
        .source();
    let classifier = Classifier::from_parts(head, vec!["a".into(), "b".into()], source).unwrap();
    let set = FeatureSet::new(vec![0.0; 4], 2, vec![0, 7], vec![]).unwrap();
    let err = classifier.evaluate(&set).unwrap_err();
    assert!(err.to_string().contains("label 7"), "{err}");

    assert!(Head::from_layers(Vec::new(), HeadActivation::Relu).is_err());
    let unchained = vec![
        Dense {
            weights: vec![0.0; 6],
            bias: vec![0.0; 3],
            inputs: 2,
            outputs: 3,
        },
        Dense {
            weights: vec![0.0; 8],
            bias: vec![0.0; 2],
            inputs: 4,
            outputs: 2,
        },
    ];
    assert!(Head::from_layers(unchained, HeadActivation::Relu).is_err());

    assert!(Image::from_rgb8(10, 10, &[0u8; 299]).is_err());
    assert!(Image::from_rgb8(usize::MAX, 3, &[]).is_err());
    assert!(Image::from_rgb8(2, 2, &[0u8; 12]).is_ok());
}

#[test]
fn batch_sizes_are_bounded_by_memory_with_a_clear_error() {
    let extractor =
        || FeatureExtractor::from_network(Network::random(small_model(), 0).unwrap()).unwrap();
    for batch in [0, 1_000_000, 1usize << 62] {
        let err = extractor().batch_size(batch).unwrap_err();
        assert!(err.to_string().contains("batch size"), "{err}");
    }
    assert!(extractor().batch_size(64).is_ok());
    // The same through the command line: an error message, not a panic or an abort.
    for batch in ["1000000", "4611686018427387904"] {
        let run = Command::new(support::flowers_bin())
            .args([
                "bench",
                "--forward-only",
                "--seconds",
                "0.1",
                "--batch",
                batch,
            ])
            .env("FLOWERS_KIT_HOME", support::shared_home())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("batch size"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

// ---- 5. Cache and download robustness -----------------------------------------------------

#[test]
fn an_unwritable_feature_cache_is_reported_and_the_run_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    // A cache folder below a regular file can never be created, not even by root.
    let blocker = dir.path().join("file");
    fs::write(&blocker, "").unwrap();
    let extractor = FeatureExtractor::from_network(Network::random(small_model(), 0).unwrap())
        .unwrap()
        .cache_dir(blocker.join("cache"));
    let photos = [photo("00_daisy.jpg"), photo("03_roses.jpg")];
    let out = extractor.extract_paths(&photos).unwrap();
    assert_eq!(out.kept, vec![0, 1]);
    assert_eq!(out.values.len(), 2 * extractor.feature_dim());
}

fn tgz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, *data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

#[test]
fn an_archive_that_is_not_a_dataset_leaves_nothing_and_a_good_one_then_works() {
    let home = tempfile::tempdir().unwrap();
    let sources = tempfile::tempdir().unwrap();
    let bad_dir = sources.path().join("bad");
    let good_dir = sources.path().join("good");
    fs::create_dir_all(&bad_dir).unwrap();
    fs::create_dir_all(&good_dir).unwrap();
    // Same file name, so the second download must not reuse the first archive.
    let bad = bad_dir.join("flower_photos.tgz");
    fs::write(
        &bad,
        tgz(&[("flower_photos/README.txt", b"no photos here")]),
    )
    .unwrap();
    let good = good_dir.join("flower_photos.tgz");
    fs::write(&good, support::sample_tgz()).unwrap();

    let err = data::download_dataset(bad.to_str().unwrap(), home.path(), &quick(3)).unwrap_err();
    assert!(matches!(err, Error::Dataset { .. }), "{err}");
    let left: Vec<_> = fs::read_dir(home.path().join("datasets"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");

    let folder = data::download_dataset(good.to_str().unwrap(), home.path(), &quick(3)).unwrap();
    assert_eq!(Dataset::open(folder).unwrap().len(), 750);
}

#[test]
fn stale_staging_folders_of_killed_extractions_are_removed() {
    let home = tempfile::tempdir().unwrap();
    let datasets = home.path().join("datasets");
    // A process id above the kernel's maximum (4194304) never runs.
    let dead = datasets.join(".extracting-99999999-abc");
    let old = datasets.join(".extracting-1-old");
    let live = datasets.join(format!(".extracting-{}-mine", std::process::id()));
    for dir in [&dead, &old, &live] {
        fs::create_dir_all(dir.join("roses")).unwrap();
    }
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    fs::File::open(&old)
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    let archive = home.path().join("flower_photos.tgz");
    fs::write(&archive, support::sample_tgz()).unwrap();
    data::download_dataset(archive.to_str().unwrap(), home.path(), &quick(3)).unwrap();
    assert!(!dead.exists());
    assert!(!old.exists());
    assert!(live.exists(), "a running extraction's folder must stay");
}

#[test]
fn an_extraction_that_fails_for_a_local_reason_keeps_the_download() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::one(
        "flower_photos.tgz",
        support::sample_tgz().to_vec(),
        Behaviour::Normal,
    );
    // `datasets` is a file: extraction cannot even start. That is not the archive's fault.
    fs::write(home.path().join("datasets"), "").unwrap();
    let url = server.url("flower_photos.tgz");
    let err = data::download_dataset(&url, home.path(), &quick(3)).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    let key = data::fetch::source_key(&url);
    assert!(home
        .path()
        .join(format!("downloads/{key}-flower_photos.tgz"))
        .is_file());
}

#[test]
fn gnu_sparse_entries_are_extracted_with_their_holes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src/flower_photos/roses");
    fs::create_dir_all(&src).unwrap();
    fs::copy(photo("03_roses.jpg"), src.join("a.jpg")).unwrap();
    // A file with a 1 MB hole, archived by GNU tar with --sparse.
    let sparse = src.join("b.jpg");
    let mut content = vec![0u8; 1 << 20];
    content.extend_from_slice(b"tail");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::File::create(&sparse).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(b"tail").unwrap();
    }
    let archive = dir.path().join("sparse.tgz");
    let status = Command::new("tar")
        .args(["--format=gnu", "--sparse", "-czf"])
        .arg(&archive)
        .arg("-C")
        .arg(dir.path().join("src"))
        .arg("flower_photos")
        .status()
        .unwrap();
    assert!(status.success());
    // The archive really holds a sparse ('S') entry.
    let mut raw = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(fs::File::open(&archive).unwrap()),
        &mut raw,
    )
    .unwrap();
    let types: Vec<u8> = raw
        .chunks(512)
        .filter_map(|b| b.get(156).copied())
        .collect();
    assert!(types.contains(&b'S'), "GNU tar wrote no sparse entry");

    let dest = dir.path().join("out");
    data::archive::extract_tgz(&archive, &dest).unwrap();
    assert_eq!(fs::read(dest.join("roses/b.jpg")).unwrap(), content);
}

#[test]
fn a_failed_download_promises_a_resume_only_when_there_is_a_partial_file() {
    // (With no partial file at all: see download.rs, unreachable_server_fails_after_retries.)
    let home = tempfile::tempdir().unwrap();
    let server = Server::one(
        "flower_photos.tgz",
        support::sample_tgz().to_vec(),
        Behaviour::CutFirstAfter(1000),
    );
    let err = data::download_dataset(&server.url("flower_photos.tgz"), home.path(), &quick(1))
        .unwrap_err();
    assert!(err.to_string().contains("will be resumed"), "{err}");
}

#[test]
fn a_redirect_loop_is_not_retried() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(HashMap::new(), Behaviour::RedirectToSelf);
    let err = data::download_dataset(&server.url("loop.tgz"), home.path(), &quick(5)).unwrap_err();
    assert!(err.to_string().contains("redirect"), "{err}");
    // One attempt follows reqwest's chain of at most 10 redirects; a retry would double it.
    let requests = server.seen().len();
    assert!(requests <= 11, "{requests} requests: the loop was retried");
}

#[test]
fn a_bad_photo_is_named_once_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.jpg");
    fs::write(&bad, b"not a jpeg").unwrap();
    let run = Command::new(support::flowers_bin())
        .args(["features", "--model", "mobilenet_v2_0.35_128", "--weights"])
        .arg(support::golden().join("mobilenet_v2_0.35_128_no_top.h5"))
        .arg("--out")
        .arg(dir.path().join("f.safetensors"))
        .arg(&bad)
        .env("FLOWERS_KIT_HOME", dir.path())
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    let error_line = stderr.lines().find(|l| l.starts_with("Error:")).unwrap();
    assert_eq!(error_line.matches("broken.jpg").count(), 1, "{error_line}");
}

#[test]
fn model_names_and_handles_are_parsed_exactly() {
    for good in [
        "mobilenet_v2_0.35_128",
        "mobilenet_v2_035_128",
        "https://tfhub.dev/google/imagenet/mobilenet_v2_035_128/feature_vector/2",
        "http://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5/",
        "tfhub.dev/google/imagenet/mobilenet_v2_050_160/feature_vector/4",
    ] {
        assert!(MobileNetV2::parse(good).is_ok(), "{good}");
    }
    for bad in [
        "mobilenet_v2_0.35_128/../x",
        "mobilenet_v2_0.35_128_extra",
        "xmobilenet_v2_0.35_128",
        "https://tfhub.dev/google/imagenet/mobilenet_v2_035_128/classification/2",
        "https://tfhub.dev/google/imagenet/mobilenet_v2_035_128/feature_vector/2/../../x",
        "https://evil.example/google/imagenet/mobilenet_v2_035_128/feature_vector/2",
        "mobilenet_v2_0.35_+128",
        "",
    ] {
        assert!(MobileNetV2::parse(bad).is_err(), "{bad}");
    }
}
