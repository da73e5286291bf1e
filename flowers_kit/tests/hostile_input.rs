//! Hostile input, round 2 (issue 21, cases 1–3, 9 and 10): sizes from flags bounded before
//! anything is allocated, what `train` writes always readable by `predict`, an overwrite
//! guard that never reads a device or a FIFO, counts of the photos actually used, and
//! measurement times that end.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use flowers_kit::features::{FeatureSet, FeatureSource, Features};
use flowers_kit::train::classifier::MAX_CLASSIFIER_BYTES;
use flowers_kit::train::head::{head_parameters, MAX_HEAD_PARAMETERS};
use flowers_kit::train::{Activation, Classifier, Head};

fn weights() -> PathBuf {
    support::golden().join("mobilenet_v2_0.35_128_no_top.h5")
}

/// Runs `flowers` with a fresh cache under `home`, killing it if it takes over a minute.
fn flowers(home: &Path, args: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = Command::new(support::flowers_bin())
        .args(args)
        .env("FLOWERS_KIT_HOME", home)
        .env("FLOWERS_KIT_QUIET", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("flowers {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child.wait_with_output().unwrap(), start.elapsed())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Two classes of 4 real photos each.
fn small_dataset(root: &Path) -> PathBuf {
    let data = root.join("data");
    for (class, stems) in [
        (
            "daisy",
            ["00_daisy", "01_daisy", "02_dandelion", "03_roses"],
        ),
        (
            "tulips",
            ["04_roses", "05_sunflowers", "06_tulips", "07_tulips"],
        ),
    ] {
        fs::create_dir_all(data.join(class)).unwrap();
        for stem in stems {
            fs::copy(
                support::golden().join("images").join(format!("{stem}.jpg")),
                data.join(class).join(format!("{stem}.jpg")),
            )
            .unwrap();
        }
    }
    data
}

#[test]
fn huge_hidden_layers_are_refused_before_anything_is_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset(dir.path());
    let out = dir.path().join("out");
    for hidden in ["1000000", "100000000", "72057594037927936", "100000"] {
        let (run, took) = flowers(
            dir.path(),
            &[
                "train",
                "--data",
                data.to_str().unwrap(),
                "--weights",
                "http://127.0.0.1:9/never-fetched.h5",
                "--hidden",
                hidden,
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert_eq!(run.status.code(), Some(1), "--hidden {hidden}");
        let message = stderr(&run);
        assert!(
            message.contains(&MAX_HEAD_PARAMETERS.to_string()) && !message.contains("allocation"),
            "--hidden {hidden}: {message}"
        );
        // Refused before the weights are fetched (the URL would fail) or photos decoded.
        assert!(!message.contains("never-fetched"), "{message}");
        assert!(took < Duration::from_secs(10), "{took:?}");
    }
    assert!(!out.exists());
}

#[test]
fn the_largest_head_train_accepts_is_a_file_predict_reads() {
    // The heads `train` refuses are the ones whose file `load` would refuse.
    let dim = 2048;
    let hidden = MAX_HEAD_PARAMETERS / (dim + 1 + 5);
    let parameters = head_parameters(dim, &[hidden], 5).unwrap();
    assert!(parameters <= MAX_HEAD_PARAMETERS);
    assert!(head_parameters(dim, &[hidden + 1], 5).unwrap() > MAX_HEAD_PARAMETERS);
    assert!((MAX_HEAD_PARAMETERS as u64) * 4 < MAX_CLASSIFIER_BYTES);
    let head = Head::new(dim, &[hidden], 5, Activation::Relu, 0).unwrap();
    assert!(Head::new(dim, &[hidden + 1], 5, Activation::Relu, 0).is_err());
    let set = |n: usize| FeatureSet::new(vec![0.5; n * dim], dim, vec![0; n], vec![]).unwrap();
    let features = Features {
        classes: (0..5).map(|c| format!("c{c}")).collect(),
        source: FeatureSource {
            model: "inception_v3".into(),
            weights_id: "test".into(),
            weights_path: None,
            resize: Default::default(),
        },
        dim,
        train: set(2),
        validation: set(0),
        test: set(1),
        train_views: Vec::new(),
        augment: None,
        cut: None,
    };
    let classifier = Classifier::new(head.clone(), &features).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("classifier.safetensors");
    classifier.save(&path).unwrap();
    assert!(fs::metadata(&path).unwrap().len() <= MAX_CLASSIFIER_BYTES);
    assert_eq!(Classifier::load(&path).unwrap().head(), &head);
}

#[test]
fn the_overwrite_guard_never_reads_devices_fifos_or_huge_files() {
    let dir = tempfile::tempdir().unwrap();
    let photo = support::golden().join("images/00_daisy.png");
    let fifo = dir.path().join("fifo.safetensors");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let sparse = dir.path().join("sparse.safetensors");
    fs::File::create(&sparse)
        .unwrap()
        .set_len(2_500_000_000)
        .unwrap();
    for target in [
        PathBuf::from("/dev/zero"),
        PathBuf::from("/dev/full"),
        sparse.clone(),
        fifo.clone(),
    ] {
        let (run, took) = flowers(
            dir.path(),
            &[
                "features",
                "--model",
                "mobilenet_v2_0.35_128",
                "--weights",
                weights().to_str().unwrap(),
                "--out",
                target.to_str().unwrap(),
                photo.to_str().unwrap(),
            ],
        );
        assert_eq!(run.status.code(), Some(1), "{}", target.display());
        let message = stderr(&run);
        assert!(message.contains("refusing to overwrite"), "{message}");
        assert!(
            took < Duration::from_secs(10),
            "{}: {took:?}",
            target.display()
        );
    }
    // Left as they were.
    assert_eq!(fs::metadata(&sparse).unwrap().len(), 2_500_000_000);
    assert!(fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo_like());
}

/// `FileType::is_fifo` behind a name that reads on every platform.
trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}

impl FifoLike for fs::FileType {
    fn is_fifo_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_fifo()
    }
}

#[test]
fn a_class_of_unreadable_files_is_an_error_naming_it_and_counts_are_of_photos_used() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset(dir.path());
    let empty = data.join("empty");
    fs::create_dir_all(&empty).unwrap();
    for i in 0..50 {
        fs::write(empty.join(format!("{i:02}.jpg")), b"").unwrap();
    }
    let out = dir.path().join("out");
    let args = |data: &Path| {
        vec![
            "train".to_string(),
            "--data".into(),
            data.to_str().unwrap().into(),
            "--model".into(),
            "mobilenet_v2_0.35_128".into(),
            "--weights".into(),
            weights().to_str().unwrap().into(),
            "--steps".into(),
            "5".into(),
            "--out".into(),
            out.to_str().unwrap().into(),
        ]
    };
    let owned = args(&data);
    let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
    let (run, _) = flowers(dir.path(), &refs);
    assert_eq!(run.status.code(), Some(1));
    let message = stderr(&run);
    assert!(
        message.contains("class 'empty' has no readable training photo")
            && message.contains("all 40 of its training files were skipped"),
        "{message}"
    );
    assert!(!out.join("classifier.safetensors").exists());

    // Three unreadable files among real photos: trained on, and counted as, the rest.
    fs::remove_dir_all(&empty).unwrap();
    for i in 0..3 {
        fs::write(data.join("daisy").join(format!("broken{i}.jpg")), b"").unwrap();
    }
    let (run, _) = flowers(dir.path(), &refs);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", stderr(&run));
    let counts = stdout
        .lines()
        .find(|l| l.starts_with("There are "))
        .unwrap();
    // 11 files: 6 training files of daisy (3 broken) + 3 of tulips, 2 test files of daisy
    // + 1 of tulips — whichever way the split falls, 8 photos are used in all.
    let numbers: Vec<usize> = counts
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(numbers[0] + numbers[1], 8, "{counts}");
    assert_eq!(numbers[2], 3, "{counts}");
    assert!(counts.contains("3 unreadable files skipped"), "{counts}");
}

#[test]
fn measurement_times_must_be_finite_and_sane() {
    let dir = tempfile::tempdir().unwrap();
    for seconds in ["inf", "1e300", "NaN", "0", "-1", "3601"] {
        let (run, took) = flowers(
            dir.path(),
            &["bench", "--forward-only", &format!("--seconds={seconds}")],
        );
        assert_eq!(run.status.code(), Some(2), "--seconds {seconds}");
        assert!(stderr(&run).contains("at most 3600"), "{}", stderr(&run));
        assert!(took < Duration::from_secs(10));
    }
}

// ---- Found by reading the change as an attacker ------------------------------------------

/// A safetensors file from named f32 tensors and metadata.
fn safetensors_file(tensors: &[(&str, Vec<usize>, Vec<f32>)], meta: &[(&str, &str)]) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), data)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .unwrap();
            (name.to_string(), view)
        })
        .collect();
    let meta: std::collections::HashMap<String, String> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    safetensors::serialize(views, &Some(meta)).unwrap()
}

fn v1_meta<'a>(classes: &'a str, top: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("format", "flowers_kit classifier v1"),
        ("classes", classes),
        ("model", "mobilenet_v2_0.35_96"),
        ("weights_id", "x"),
        ("resize", "tf_v1_bilinear"),
        ("activation", "Relu"),
        ("layers", "1"),
        ("top", top),
    ]
}

#[test]
fn a_classifier_file_naming_one_tensor_many_times_is_refused() {
    let head = [
        ("layer0.weight", vec![4, 2], vec![0.0; 8]),
        ("layer0.bias", vec![2], vec![0.0; 2]),
        ("top.x.weight", vec![100, 100], vec![0.0; 10_000]),
        ("top.x.bias", vec![100], vec![0.0; 100]),
    ];
    let layer =
        r#"{"name":"x","op":"pointwise","activation":"Relu6","inputs":[0],"shape":[1,1,100]}"#;
    let top = format!(
        r#"{{"cut":"c","input_shape":[1,1,100],"layers":[{}]}}"#,
        vec![layer; 64].join(",")
    );
    let bytes = safetensors_file(&head, &v1_meta(r#"["a","b"]"#, &top));
    let err = Classifier::from_bytes(&bytes, Path::new("dup.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("read again"), "{err}");
}

#[test]
fn a_classifier_of_too_many_classes_or_overflowing_weights_is_refused() {
    let classes: Vec<String> = (0..1001).map(|i| format!("\"c{i}\"")).collect();
    let classes = format!("[{}]", classes.join(","));
    let head = [
        ("layer0.weight", vec![2, 1001], vec![0.0; 2002]),
        ("layer0.bias", vec![1001], vec![0.0; 1001]),
    ];
    let mut meta = v1_meta(&classes, "");
    meta.retain(|(k, _)| *k != "top");
    let err = Classifier::from_bytes(&safetensors_file(&head, &meta), Path::new("many.st"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("1001 classes"), "{err}");

    // Finite weights whose outputs overflow: an error, not NaN probabilities or class 0.
    let huge = [
        ("layer0.weight", vec![2, 2], vec![3e38, -3e38, 3e38, -3e38]),
        ("layer0.bias", vec![2], vec![0.0; 2]),
    ];
    let mut meta = v1_meta(r#"["a","b"]"#, "");
    meta.retain(|(k, _)| *k != "top");
    let classifier =
        Classifier::from_bytes(&safetensors_file(&huge, &meta), Path::new("huge.st")).unwrap();
    let err = classifier.top_k(&[10.0, 10.0], 2).unwrap_err().to_string();
    assert!(err.contains("not finite"), "{err}");
}

#[test]
fn a_weight_file_listing_a_layer_twice_is_refused_before_reading_it_again() {
    use hdf5_pure::AttrValue;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("twice.h5");
    let mut builder = hdf5_pure::FileBuilder::new();
    builder.set_attr(
        "layer_names",
        AttrValue::VarLenAsciiStringArray(vec!["Conv1".into(), "Conv1".into()]),
    );
    let mut group = builder.create_group("Conv1");
    group.set_attr(
        "weight_names",
        AttrValue::VarLenAsciiStringArray(vec!["Conv1/kernel:0".into()]),
    );
    let mut inner = group.create_group("Conv1");
    inner
        .create_dataset("kernel:0")
        .with_f32_data(&[0.0; 4])
        .with_shape(&[4]);
    group.add_group(inner.finish());
    builder.add_group(group.finish());
    fs::write(&path, builder.finish().unwrap()).unwrap();
    let err = flowers_kit::weights::KerasWeights::open(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("listed twice"), "{err}");
}

#[test]
fn a_brightness_too_small_to_move_one_is_no_brightness_change() {
    use flowers_kit::data::image::{decode_rgb8, Resize};
    let augment: flowers_kit::data::Augment = "brightness=1e-20".parse().unwrap();
    let photo = decode_rgb8(&support::golden().join("images/00_daisy.png")).unwrap();
    let view = augment
        .view(&photo, 32, Resize::TfV1Bilinear, &"0".repeat(64), 0)
        .unwrap();
    assert_eq!(view.data.len(), 32 * 32 * 3);
}

#[test]
fn an_archive_that_expands_far_past_its_size_is_refused_and_deleted() {
    use flowers_kit::data::{self, FetchOptions};
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src/flower_photos/roses");
    fs::create_dir_all(&src).unwrap();
    fs::copy(
        support::golden().join("images/03_roses.jpg"),
        src.join("a.jpg"),
    )
    .unwrap();
    // A 4 GiB hole: a few hundred bytes of sparse tar, 4 GiB on disk once extracted.
    fs::File::create(src.join("b.jpg"))
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let archive = dir.path().join("flower_photos.tgz");
    let status = Command::new("tar")
        .args(["--format=gnu", "--sparse", "-czf"])
        .arg(&archive)
        .arg("-C")
        .arg(dir.path().join("src"))
        .arg("flower_photos")
        .status()
        .unwrap();
    assert!(status.success());
    assert!(fs::metadata(&archive).unwrap().len() < 1 << 20);
    let home = dir.path().join("home");
    let started = Instant::now();
    let err = data::download_dataset(archive.to_str().unwrap(), &home, &FetchOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("expands past"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60));
    // Nothing stays: no dataset, no archive to fail the same way next time.
    let left: Vec<_> = walk(&home)
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[test]
fn a_picture_of_too_many_photos_is_an_error() {
    use flowers_kit::data::Example;
    use flowers_kit::plot::Picture;
    let photo = support::golden().join("images/00_daisy.png");
    let examples: Vec<Example> = (0..40_000)
        .map(|_| Example {
            path: photo.clone(),
            label: 0,
        })
        .collect();
    let err = Picture::labelled(&examples, &["daisy".to_string()], 200)
        .unwrap_err()
        .to_string();
    assert!(err.contains("1 to 1000 photos"), "{err}");
}
