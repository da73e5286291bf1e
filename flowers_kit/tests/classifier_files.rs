//! Classifier files written by an earlier version still load and answer as they did: the
//! fixtures in `tests/fixtures/classifier_v1` were written by the first file layout (a linear
//! head, and a MobileNet V2 0.35/224 with its last block fine-tuned), with the predictions
//! that version printed for the golden photos.

mod support;

use std::path::{Path, PathBuf};

use flowers_kit::features::FeatureExtractor;
use flowers_kit::models::Model;
use flowers_kit::train::Classifier;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/classifier_v1")
}

fn check(file: &str, key: &str) {
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("predictions.json")).unwrap())
            .unwrap();
    let classifier = Classifier::load(fixtures().join(file)).unwrap();
    assert_eq!(classifier.classes(), ["daisy", "tulips"]);
    assert_eq!(classifier.is_fine_tuned(), key == "fine_tuned");
    let weights = support::golden().join("mobilenet_v2_0.35_224_no_top.h5");
    let extractor = FeatureExtractor::with_weights(
        Model::parse("mobilenet_v2_0.35_224").unwrap(),
        Some(weights.to_str().unwrap()),
    )
    .unwrap()
    .without_cache()
    .quiet();
    for (photo, probabilities) in expected["predictions"][key].as_object().unwrap() {
        let path = support::golden().join("images").join(photo);
        let ranked = classifier.predict(&extractor, &path, 2).unwrap();
        for prediction in ranked {
            let want = probabilities[&prediction.class].as_f64().unwrap() as f32;
            // Printed with 4 decimals.
            assert!(
                (prediction.probability - want).abs() <= 1.5e-4,
                "{file} {photo} {}: {} against {want}",
                prediction.class,
                prediction.probability
            );
        }
    }
    // Saved again, it is the current layout, and answers the same.
    let dir = tempfile::tempdir().unwrap();
    let again = dir.path().join("again.safetensors");
    if key == "fine_tuned" {
        // A v1 top meets its network only at predict time; until then it cannot be re-saved.
        let err = classifier.save(&again).unwrap_err().to_string();
        assert!(err.contains("train again"), "{err}");
    } else {
        classifier.save(&again).unwrap();
        assert_eq!(Classifier::load(&again).unwrap(), classifier);
    }
}

#[test]
fn a_first_version_linear_classifier_loads_and_predicts_as_before() {
    check("linear.safetensors", "linear");
}

#[test]
fn a_first_version_fine_tuned_classifier_loads_and_predicts_as_before() {
    check("fine_tuned.safetensors", "fine_tuned");
}
