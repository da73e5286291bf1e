//! `flowers train` and `flowers predict`.

use std::path::{Path, PathBuf};

use flowers_kit::data::{self, Dataset};
use flowers_kit::display::write_atomically;
use flowers_kit::features::FeatureExtractor;
use flowers_kit::plot::{self, Gallery, Picture};
use flowers_kit::train::{train, Classifier, TrainConfig};
use flowers_kit::{Error, Result};

/// Everything `flowers train` needs.
pub struct TrainArgs {
    pub photos: Dataset,
    pub extractor: FeatureExtractor,
    pub config: TrainConfig,
    pub out: PathBuf,
}

/// Errors if `out` exists and is not a folder: found before any work is done.
pub fn check_out_folder(out: &Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "--out {} is an existing file; give a folder for the results",
            out.display()
        )));
    }
    Ok(())
}

/// Split, extract (cached), train, evaluate, and write the results to `out`.
pub fn run_train(args: TrainArgs) -> Result<()> {
    let split = args
        .photos
        .split(data::TUTORIAL_TRAIN_FRACTION, data::TUTORIAL_SEED)?;
    println!(
        "The dataset has {} label classes: {:?}",
        split.classes.len(),
        split.classes
    );
    let features = args.extractor.extract_for(&split, &args.config)?;
    // Counts of the photos actually used: unreadable ones were skipped with a warning.
    let skipped = (split.train.len() + split.test.len())
        .saturating_sub(features.train.len() + features.test.len());
    println!(
        "There are {} training images and {} test images{}",
        features.train.len(),
        features.test.len(),
        if skipped > 0 {
            format!(" ({skipped} unreadable files skipped)")
        } else {
            String::new()
        }
    );
    let config = args.config;
    let (classifier, history) = train(&features, &config)?;
    let metrics = classifier.evaluate(&features.test)?;
    println!("Final test accuracy: {:.2}%", metrics.accuracy * 100.0);

    let out = &args.out;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let report = serde_json::json!({
        "model": features.source.model,
        "config": config,
        "final_test_accuracy": metrics.accuracy,
        "test_loss": metrics.loss,
        "confusion": metrics.confusion,
        "confusion_normalized": metrics.confusion_normalized(),
        "per_class": metrics.per_class,
        "misclassified": metrics.misclassified,
        "history": history,
    });
    let json = serde_json::to_vec_pretty(&report).map_err(|e| Error::Write {
        path: out.join("metrics.json"),
        reason: e.to_string(),
    })?;
    write_atomically(&out.join("metrics.json"), &json)?;
    plot::curves(&history).save(out.join("curves.svg"))?;
    plot::confusion(&metrics)?.save(out.join("confusion.svg"))?;
    match Picture::mistakes(
        &metrics,
        Gallery {
            photos: 20,
            columns: 5,
        },
    ) {
        Ok(gallery) => gallery.save(out.join("misclassified.png"))?,
        Err(_) => println!("No misclassified test photos: nothing to show in misclassified.png"),
    }
    classifier.save(out.join("classifier.safetensors"))?;
    println!("Wrote metrics.json, curves.svg, confusion.svg, misclassified.png and classifier.safetensors to {}", out.display());
    Ok(())
}

/// Prints the top `top` classes of each photo, or with `None` every class's probability as
/// one JSON line per photo.
pub fn run_predict(
    classifier_path: &Path,
    images: &[PathBuf],
    top: Option<usize>,
    weights: Option<&str>,
) -> Result<()> {
    let classifier = Classifier::load(classifier_path)?;
    let extractor = classifier.training_extractor(weights)?;
    // The extractor itself, or with the classifier's fine-tuned blocks (checked to be the
    // training extractor either way), prepared once for every photo.
    let fine_tuned = classifier.fine_tuned_extractor(&extractor)?;
    let runner = fine_tuned.as_ref().unwrap_or(&extractor);
    for image in images {
        let features = runner.extract_one(image)?;
        let Some(top) = top else {
            // Every class, in label order, at full precision (`--json`).
            let probabilities = classifier.head().probabilities(&features, 1)?;
            let line = serde_json::json!({"photo": image.to_string_lossy(), "classes": classifier.classes(),
                "probabilities": probabilities});
            println!("{line}");
            continue;
        };
        let ranked = classifier.top_k(&features, top)?;
        let answers: Vec<String> = ranked
            .iter()
            .map(|p| format!("{} {:.4}", p.class, p.probability))
            .collect();
        println!("{}: {}", image.display(), answers.join(", "));
    }
    Ok(())
}
