//! The split equals the tutorial's Python `make_train_and_test_sets`, list for list.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;

use flowers_kit::data::{Dataset, PyRandom};
use flowers_kit::Error;
use serde_json::Value;

/// The tutorial's algorithm, run by CPython's own `random` module, with the same file filter.
const PYTHON_SPLIT: &str = r#"
import json, os, random, sys
root, seed, fraction = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def is_image(name):
    return name.rsplit(".", 1)[-1].lower() in ("jpg", "jpeg", "png") and "." in name
classes = sorted(d for d in os.listdir(root)
                 if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
shuffler = random.Random(seed)
train, test = [], []
for label, cls in enumerate(classes):
    names = sorted(f for f in os.listdir(os.path.join(root, cls))
                   if is_image(f) and not os.path.isdir(os.path.join(root, cls, f)))
    shuffler.shuffle(names)
    examples = [[cls + "/" + f, label] for f in names]
    n = int(len(names) * fraction)
    train.extend(examples[:n])
    test.extend(examples[n:])
shuffler.shuffle(train)
shuffler.shuffle(test)
print(json.dumps({"classes": classes, "train": train, "test": test}))
"#;

fn python_split(root: &Path, seed: u64, fraction: f64) -> Value {
    let out = Command::new("python3")
        .args(["-c", PYTHON_SPLIT])
        .arg(root)
        .arg(seed.to_string())
        .arg(fraction.to_string())
        .output()
        .expect("python3 is needed for this test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn cli_split(root: &Path, extra: &[&str]) -> Value {
    let out = Command::new(support::flowers_bin())
        .args(["split", "--json", "--data"])
        .arg(root)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn cli_split_of_the_sample_equals_python() {
    let sample = support::sample_dir();
    let ours = cli_split(&sample, &[]);
    let theirs = python_split(&sample, 2018, 0.8);
    assert_eq!(ours["train"].as_array().unwrap().len(), 600);
    assert_eq!(ours["test"].as_array().unwrap().len(), 150);
    assert_eq!(ours, theirs);
}

#[test]
fn other_seeds_and_fractions_equal_python() {
    let sample = support::sample_dir();
    for (seed, fraction) in [(0u64, 0.5), (7, 0.33), (1u64 << 40, 0.9), (2018, 1.0)] {
        let ours = cli_split(
            &sample,
            &[
                "--seed",
                &seed.to_string(),
                "--train-fraction",
                &fraction.to_string(),
            ],
        );
        assert_eq!(
            ours,
            python_split(&sample, seed, fraction),
            "seed {seed} fraction {fraction}"
        );
    }
}

#[test]
fn cli_summary_line() {
    let out = Command::new(support::flowers_bin())
        .args(["split", "--data"])
        .arg(support::sample_dir())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "5 classes, 600 train, 150 test"
    );
}

#[test]
fn generator_streams_equal_python() {
    let script = r#"
import json, random
out = {}
for seed in (0, 1, 2018, 2**32 + 5, 2**40):
    r = random.Random(seed)
    out[str(seed)] = {
        "bits": [r.getrandbits(k) for k in (1, 5, 31, 32, 33, 48, 64)],
        "below": [r.randrange(n) for n in (1, 2, 3, 10, 1000, 2**31 + 7)],
        "random": repr(r.random()),
        "shuffle": (lambda x: (r.shuffle(x), x)[1])(list(range(1000))),
    }
print(json.dumps(out))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .output()
        .unwrap();
    assert!(out.status.success());
    let python: Value = serde_json::from_slice(&out.stdout).unwrap();
    for seed in [0u64, 1, 2018, (1 << 32) + 5, 1 << 40] {
        let mut r = PyRandom::new(seed);
        let bits: Vec<u64> = [1, 5, 31, 32, 33, 48, 64]
            .iter()
            .map(|&k| r.getrandbits(k))
            .collect();
        let below: Vec<u64> = [1u64, 2, 3, 10, 1000, (1 << 31) + 7]
            .iter()
            .map(|&n| r.randbelow(n))
            .collect();
        let random = r.random();
        let mut shuffled: Vec<u64> = (0..1000).collect();
        r.shuffle(&mut shuffled);
        let expected = &python[seed.to_string()];
        assert_eq!(serde_json::json!(bits), expected["bits"], "seed {seed}");
        assert_eq!(serde_json::json!(below), expected["below"], "seed {seed}");
        // Compared via Python's repr: serde_json's default float parser may be off by an ulp.
        let python_random: f64 = expected["random"].as_str().unwrap().parse().unwrap();
        assert_eq!(random, python_random, "seed {seed}");
        assert_eq!(
            serde_json::json!(shuffled),
            expected["shuffle"],
            "seed {seed}"
        );
    }
}

/// A small dataset folder with real photos from the sample.
fn tiny_dataset(root: &Path, counts: &[(&str, usize)]) {
    for (class, n) in counts {
        let dir = root.join(class);
        fs::create_dir_all(&dir).unwrap();
        let source = support::sample_dir().join("daisy");
        let mut photos: Vec<_> = fs::read_dir(&source)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        photos.sort();
        for photo in photos.iter().take(*n) {
            fs::copy(photo, dir.join(photo.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn non_images_and_hidden_folders_are_skipped() {
    let root = tempfile::tempdir().unwrap();
    tiny_dataset(root.path(), &[("b_class", 3), ("a_class", 4)]);
    fs::write(root.path().join("LICENSE.txt"), "cc-by").unwrap();
    fs::write(root.path().join("a_class/.DS_Store"), "junk").unwrap();
    fs::write(root.path().join("a_class/notes.txt"), "junk").unwrap();
    fs::create_dir_all(root.path().join(".hidden")).unwrap();
    fs::write(
        root.path().join("b_class/UPPER.JPG"),
        fs::read(support::sample_dir().join("daisy/10140303196_b88d3d6cec.jpg")).unwrap(),
    )
    .unwrap();
    let photos = Dataset::open(root.path()).unwrap();
    assert_eq!(photos.classes(), ["a_class", "b_class"]);
    assert_eq!(photos.class_counts(), vec![4, 4]);
    assert_eq!(photos.skipped().len(), 4);
    assert_eq!(
        cli_split(root.path(), &[]),
        python_split(root.path(), 2018, 0.8)
    );
}

#[test]
fn bad_folders_are_clear_errors() {
    let root = tempfile::tempdir().unwrap();
    let err = Dataset::open(root.path().join("nope")).unwrap_err();
    assert!(
        err.to_string().contains("nope") && err.to_string().contains("not a folder"),
        "{err}"
    );

    fs::write(root.path().join("LICENSE.txt"), "x").unwrap();
    let err = Dataset::open(root.path()).unwrap_err();
    assert!(matches!(err, Error::Dataset { .. }));
    assert!(err.to_string().contains("no class folders"), "{err}");

    tiny_dataset(root.path(), &[("daisy", 2)]);
    fs::create_dir_all(root.path().join("roses")).unwrap();
    fs::write(root.path().join("roses/readme.txt"), "x").unwrap();
    let err = Dataset::open(root.path()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("roses") && message.contains("no JPEG or PNG"),
        "{message}"
    );

    let out = Command::new(support::flowers_bin())
        .args(["split", "--data"])
        .arg(root.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Error: dataset"));
}

#[test]
fn bad_fractions_are_rejected() {
    let photos = Dataset::open(support::sample_dir()).unwrap();
    for fraction in [0.0, -0.5, 1.5, f64::NAN] {
        let err = photos.split(fraction, 2018).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument(_)),
            "{fraction}: {err}"
        );
    }
}

#[test]
fn a_validation_set_comes_from_the_training_photos_per_class_and_leaves_the_test_set() {
    let photos = Dataset::open(support::sample_dir()).unwrap();
    let plain = photos.split(0.8, 2018).unwrap();
    let split = plain.clone().with_validation(0.2, 7).unwrap();
    // The tutorial's test set, unchanged.
    assert_eq!(split.test, plain.test);
    // Train and validation partition the tutorial's training photos; train keeps its order.
    let kept: Vec<_> = plain
        .train
        .iter()
        .filter(|e| !split.validation.contains(e))
        .cloned()
        .collect();
    assert_eq!(split.train, kept);
    assert_eq!(
        split.train.len() + split.validation.len(),
        plain.train.len()
    );
    // int(120 · 0.2) = 24 of each class's 120 training photos.
    for label in 0..5 {
        let count = split.validation.iter().filter(|e| e.label == label).count();
        assert_eq!(count, 24, "class {label}");
    }
    // Seeded: the same seed the same photos, another seed others.
    assert_eq!(plain.clone().with_validation(0.2, 7).unwrap(), split);
    assert_ne!(
        plain.clone().with_validation(0.2, 8).unwrap().validation,
        split.validation
    );
    // Nothing asked, nothing moved; a class of two photos still gives one.
    assert_eq!(plain.clone().with_validation(0.0, 7).unwrap(), plain);
    for bad in [-0.1, 1.0, f64::NAN] {
        assert!(plain.clone().with_validation(bad, 7).is_err(), "{bad}");
    }
}
