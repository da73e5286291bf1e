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
