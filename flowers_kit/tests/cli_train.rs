//! `flowers train` and `flowers predict` on the real sample with the real 0.35/224 weights.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flowers_kit::train::Classifier;

fn weights() -> PathBuf {
    support::golden().join("mobilenet_v2_0.35_224_no_top.h5")
}

fn flowers(args: &[&str]) -> Output {
    let out = Command::new(support::flowers_bin())
        .args(args)
        .env("FLOWERS_KIT_HOME", support::shared_home())
        .output()
        .unwrap();
    out
}

fn train(out: &Path, extra: &[&str]) -> String {
    let data = support::sample_dir();
    let weights = weights();
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--model",
        "mobilenet_v2_0.35_224",
        "--weights",
        weights.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let run = flowers(&args);
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    stdout
}

fn final_accuracy(dir: &Path) -> f64 {
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).unwrap()).unwrap();
    metrics["final_test_accuracy"].as_f64().unwrap()
}

#[test]
fn train_writes_results_and_reaches_80_percent_when_converged() {
    let dir = tempfile::tempdir().unwrap();
    // The tutorial's own setting: 100 SGD steps, batch 10, lr 0.01.
    let tutorial = dir.path().join("tutorial");
    let stdout = train(&tutorial, &[]);
    assert!(
        stdout.contains("The dataset has 5 label classes"),
        "{stdout}"
    );
    for step in [0, 10, 50, 90, 99] {
        assert!(
            stdout.contains(&format!("Test accuracy at step {step}: ")),
            "{stdout}"
        );
    }
    println!(
        "tutorial setting: {:.2}%",
        final_accuracy(&tutorial) * 100.0
    );
    for file in [
        "metrics.json",
        "curves.svg",
        "confusion.svg",
        "misclassified.png",
        "classifier.safetensors",
    ] {
        assert!(tutorial.join(file).is_file(), "{file} missing");
    }
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tutorial.join("metrics.json")).unwrap()).unwrap();
    let confusion = metrics["confusion"].as_array().unwrap();
    let total: u64 = confusion
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, 150);
    assert_eq!(metrics["per_class"].as_array().unwrap().len(), 5);
    assert_eq!(metrics["history"]["step"].as_array().unwrap().len(), 11);

    // A converged setting: full-batch gradient descent.
    let converged = dir.path().join("converged");
    train(
        &converged,
        &[
            "--steps",
            "1000",
            "--batch",
            "full",
            "--lr",
            "0.1",
            "--eval-every",
            "100",
        ],
    );
    let accuracy = final_accuracy(&converged);
    println!("converged setting: {:.2}%", accuracy * 100.0);
    assert!(accuracy >= 0.80, "accuracy {accuracy}");
}

#[test]
fn train_on_augmented_views() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("augmented");
    let stdout = train(
        &out,
        &[
            "--augment",
            "flip,crop=10,scale=10,brightness=10",
            "--views",
            "2",
            "--steps",
            "500",
            "--batch",
            "full",
            "--lr",
            "0.1",
            "--eval-every",
            "100",
        ],
    );
    // The views' extraction reports like the plain one: one operation, 2 views of each of
    // the 600 training photos.
    assert!(
        stdout.contains("1200 augmented views (2 per photo)"),
        "{stdout}"
    );
    let accuracy = final_accuracy(&out);
    println!("augmented: {:.2}%", accuracy * 100.0);
    assert!(accuracy >= 0.75, "accuracy {accuracy}");
}

#[test]
fn predict_in_a_fresh_process_reproduces_the_trained_classifier() {
    predicts_in_a_fresh_process(&[
        "--steps",
        "50",
        "--hidden",
        "32",
        "--optimizer",
        "adam",
        "--lr",
        "0.001",
    ]);
}

#[test]
fn a_fine_tuned_classifier_predicts_in_a_fresh_process() {
    predicts_in_a_fresh_process(&[
        "--fine-tune-blocks",
        "1",
        "--fine-tune-lr",
        "0.001",
        "--schedule",
        "cosine",
        "--steps",
        "20",
        "--batch",
        "16",
        "--optimizer",
        "adam",
        "--lr",
        "0.001",
    ]);
}

/// Trains with `args`, then classifies photos with `flowers predict` in new processes:
/// the same answers each time, and the same as this process computes from the saved file.
fn predicts_in_a_fresh_process(args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    train(dir.path(), args);
    let classifier_path = dir.path().join("classifier.safetensors");
    let photos: Vec<PathBuf> = ["00_daisy.jpg", "03_roses.jpg", "06_tulips.jpg"]
        .iter()
        .map(|n| support::golden().join("images").join(n))
        .collect();
    let mut args = vec![
        "predict",
        "--classifier",
        classifier_path.to_str().unwrap(),
        "--top",
        "2",
    ];
    args.extend(photos.iter().map(|p| p.to_str().unwrap()));
    let first = flowers(&args);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let lines = String::from_utf8_lossy(&first.stdout).into_owned();
    assert_eq!(lines.lines().count(), 3, "{lines}");
    assert!(lines
        .lines()
        .next()
        .unwrap()
        .starts_with(photos[0].to_str().unwrap()));
    assert_eq!(lines.lines().next().unwrap().matches(", ").count(), 1);
    // The same answers again, and the same as this process computes from the saved file.
    assert_eq!(flowers(&args).stdout, first.stdout);
    let classifier = Classifier::load(&classifier_path).unwrap();
    let extractor = flowers_kit::features::FeatureExtractor::with_weights(
        flowers_kit::models::MobileNetV2::parse(&classifier.source().model).unwrap(),
        Some(weights().to_str().unwrap()),
    )
    .unwrap()
    .without_cache();
    let ours = classifier.predict(&extractor, &photos[1], 2).unwrap();
    let expected = format!(
        "{}: {} {:.4}, {} {:.4}",
        photos[1].display(),
        ours[0].class,
        ours[0].probability,
        ours[1].class,
        ours[1].probability
    );
    assert_eq!(lines.lines().nth(1).unwrap(), expected);

    // Another variant's weights: a clear error, not wrong answers.
    let other = support::golden().join("mobilenet_v2_0.35_128_no_top.h5");
    let mut wrong = args.clone();
    wrong.extend(["--weights", other.to_str().unwrap()]);
    let run = flowers(&wrong);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("Error:"));
}

#[test]
fn train_rejects_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    // A dataset folder that does not exist: every bad argument must be caught before it is
    // looked at, so the error is about the argument, never the data.
    let missing = dir.path().join("no-such-dataset");
    let cases = [
        (
            "--optimizer",
            "adamw",
            "[possible values: sgd, momentum, nesterov, adagrad, adam, rmsprop]",
        ),
        ("--batch", "lots", "takes a positive number or 'full'"),
        ("--batch", "0", "takes a positive number or 'full'"),
        ("--activation", "tanh", "[possible values: relu, none]"),
        ("--device", "tpu", "[possible values: cpu, cuda]"),
        ("--backend", "fast", "[possible values: native, dfdx]"),
        ("--steps", "0", "at least 1"),
        ("--eval-every", "0", "at least 1"),
        ("--hidden", "100,0", "at least 1"),
        ("--lr", "NaN", "finite number above 0"),
        ("--lr", "inf", "finite number above 0"),
        ("--lr", "-0.5", "finite number above 0"),
        ("--lr", "0", "finite number above 0"),
        ("--weight-decay", "-1", "finite number of at least 0"),
        ("--model", "mobilenet_v2_0.35_128/../x", "unknown model"),
        ("--augment", "zoom=3", "unknown setting"),
        ("--augment", "crop=500", "a percentage from 0 to 100"),
        ("--views", "0", "at least 1"),
        ("--fine-tune-blocks", "0", "1 to 64"),
        ("--fine-tune-blocks", "65", "1 to 64"),
        ("--head-steps", "-1", "invalid digit"),
        ("--fine-tune-lr", "-1", "finite number above 0"),
        ("--schedule", "step", "[possible values: constant, cosine]"),
        (
            "--model",
            "https://tfhub.dev/google/imagenet/mobilenet_v2_035_128/classification/2",
            "feature_vector handle",
        ),
    ];
    for (flag, value, message) in cases {
        // `--flag=value`, so that a negative number is not read as a flag.
        let argument = format!("{flag}={value}");
        let run = flowers(&[
            "train",
            "--data",
            missing.to_str().unwrap(),
            &argument,
            "--out",
            dir.path().to_str().unwrap(),
        ]);
        // 2: clap's usage error, raised while parsing, before anything runs.
        assert_eq!(run.status.code(), Some(2), "{flag} {value}");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains(message), "{flag} {value}: {stderr}");
        assert!(!stderr.contains("no-such-dataset"), "{stderr}");
    }
    // An --out that is a file is refused before the (missing) dataset is scanned.
    let file = dir.path().join("results.txt");
    std::fs::write(&file, "keep me").unwrap();
    let run = flowers(&[
        "train",
        "--data",
        missing.to_str().unwrap(),
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("is an existing file"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    // --help lists the choices.
    let help = String::from_utf8_lossy(&flowers(&["train", "--help"]).stdout).into_owned();
    for choice in ["sgd", "nesterov", "rmsprop", "relu", "cuda", "dfdx"] {
        assert!(help.contains(choice), "{help}");
    }
}
