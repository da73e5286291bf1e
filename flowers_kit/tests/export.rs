//! The ONNX export's refusals, in process (ONNX Runtime itself checks the files it writes:
//! tests/test_export.py).

use flowers_kit::export::{export_onnx, onnx_bytes};
use flowers_kit::features::FeatureExtractor;
use flowers_kit::models::Model;
use flowers_kit::train::{Activation, Classifier, Head};

fn classifier_of(extractor: &FeatureExtractor) -> Classifier {
    let head = Head::new(extractor.feature_dim(), &[8], 3, Activation::Relu, 0).unwrap();
    let classes = vec!["a".into(), "b".into(), "c".into()];
    Classifier::from_parts(head, classes, extractor.source()).unwrap()
}

#[test]
fn export_refuses_another_extractor_and_other_file_names() {
    let model = Model::parse("mobilenet_v2_0.35_96").unwrap();
    let extractor = FeatureExtractor::with_random_weights(model, 0).unwrap();
    let classifier = classifier_of(&extractor);
    let bytes = onnx_bytes(&classifier, &extractor).unwrap();
    // The class names are in the file, as the JSON list ONNX's metadata_props holds.
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("class_names") && text.contains(r#"["a","b","c"]"#));
    let other = FeatureExtractor::with_random_weights(model, 1).unwrap();
    assert!(
        onnx_bytes(&classifier, &other).is_err(),
        "weights it was not trained on"
    );

    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("c.safetensors");
    classifier.save(&saved).unwrap();
    let error = export_onnx(&saved, &dir.path().join("model.txt")).unwrap_err();
    assert!(error.to_string().contains(".onnx"), "{error}");
    let missing = export_onnx(
        &dir.path().join("nope.safetensors"),
        &dir.path().join("m.onnx"),
    );
    assert!(missing
        .unwrap_err()
        .to_string()
        .contains("nope.safetensors"));
    assert!(!dir.path().join("m.onnx").exists());
}
