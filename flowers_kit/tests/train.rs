//! Training: optimizers against hand-computed updates, heads on synthetic and real features,
//! metrics, save/load, and bad input.

mod support;

use std::path::PathBuf;

use dfdx::prelude::*;
use flowers_kit::features::{FeatureSet, FeatureSource, Features};
use flowers_kit::train::optim::{update, Slots};
use flowers_kit::train::{train, Activation, Classifier, Metrics, Optimizer, TrainConfig};
use flowers_kit::Error;
use rand::{Rng, SeedableRng};

/// `n_per_class` points around well-separated class centres in `dim` dimensions.
fn blobs(classes: usize, dim: usize, n_per_class: usize, seed: u64) -> (Vec<f32>, Vec<usize>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut values = Vec::new();
    let mut labels = Vec::new();
    for c in 0..classes {
        for _ in 0..n_per_class {
            for d in 0..dim {
                let centre = if d % classes == c { 3.0 } else { 0.0 };
                values.push(centre + rng.gen_range(-0.5f32..0.5));
            }
            labels.push(c);
        }
    }
    (values, labels)
}

fn synthetic(classes: usize, dim: usize) -> Features {
    let (train_x, train_y) = blobs(classes, dim, 40, 1);
    let (test_x, test_y) = blobs(classes, dim, 10, 2);
    Features {
        classes: (0..classes).map(|c| format!("class{c}")).collect(),
        source: FeatureSource {
            model: "synthetic".into(),
            weights_id: "none".into(),
            weights_path: None,
            resize: Default::default(),
        },
        dim,
        train: FeatureSet::new(train_x, dim, train_y, vec![]).unwrap(),
        validation: FeatureSet::new(vec![], dim, vec![], vec![]).unwrap(),
        test: FeatureSet::new(test_x, dim, test_y, vec![]).unwrap(),
        train_views: Vec::new(),
        augment: None,
        cut: None,
    }
}

fn quiet(config: TrainConfig) -> TrainConfig {
    TrainConfig {
        verbose: false,
        ..config
    }
}

#[test]
fn linear_and_mlp_heads_reach_100_percent_on_separable_features() {
    let features = synthetic(4, 12);
    for hidden in [vec![], vec![16], vec![16, 8]] {
        let config = quiet(TrainConfig {
            steps: 200,
            batch_size: None,
            learning_rate: 0.05,
            optimizer: Optimizer::adam(),
            hidden: hidden.clone(),
            ..Default::default()
        });
        let (classifier, history) = train(&features, &config).unwrap();
        assert_eq!(history.final_test_accuracy(), 1.0, "hidden {hidden:?}");
        let metrics = classifier.evaluate(&features.train).unwrap();
        assert_eq!(metrics.accuracy, 1.0, "hidden {hidden:?}");
        assert_eq!(classifier.head().hidden(), hidden);
    }
}

#[test]
fn predicted_labels_are_the_answers_evaluate_counts() {
    let features = synthetic(4, 12);
    let config = quiet(TrainConfig {
        steps: 3,
        batch_size: Some(4),
        ..Default::default()
    });
    // Three steps: far from perfect, so some answers are wrong and the comparison bites.
    let (classifier, _) = train(&features, &config).unwrap();
    let predicted = classifier.predicted_labels(&features.test).unwrap();
    let metrics = classifier.evaluate(&features.test).unwrap();
    assert_eq!(predicted.len(), features.test.len());
    for (label, row) in metrics.confusion.iter().enumerate() {
        for (answer, &count) in row.iter().enumerate() {
            let got = features
                .test
                .labels()
                .iter()
                .zip(&predicted)
                .filter(|&(&l, &p)| l == label && p == answer)
                .count();
            assert_eq!(got, count, "true {label}, predicted {answer}");
        }
    }
}

#[test]
fn optimizer_names_read_back_as_the_same_optimizer() {
    let mut names = Vec::new();
    for optimizer in Optimizer::all().into_iter().chain([Optimizer::Momentum {
        momentum: 0.9,
        nesterov: true,
    }]) {
        let name = optimizer.to_string();
        assert_eq!(name.parse::<Optimizer>().unwrap(), optimizer, "{name}");
        names.push(name);
    }
    names.sort();
    names.dedup();
    assert_eq!(
        names.len(),
        6,
        "every optimizer has its own name: {names:?}"
    );
}

#[test]
fn every_optimizer_lowers_the_loss() {
    let features = synthetic(3, 8);
    for optimizer in Optimizer::all() {
        let config = quiet(TrainConfig {
            steps: 50,
            batch_size: Some(16),
            learning_rate: 0.01,
            eval_every: 49,
            optimizer,
            hidden: vec![10],
            ..Default::default()
        });
        let (_, history) = train(&features, &config).unwrap();
        let (first, last) = (history.test_loss[0], *history.test_loss.last().unwrap());
        assert!(
            last < first * 0.9,
            "{optimizer}: test loss {first} -> {last}"
        );
    }
}

/// Two steps of each rule on w = [1, 2] with gradients [0.5, -1] then [0.2, 0.4], lr 0.1;
/// the expected values were worked out by hand from the TF/Keras update formulas.
#[test]
fn optimizers_match_hand_computed_two_step_updates() {
    let dev = Cpu::default();
    let cases = [
        (Optimizer::momentum(), [0.885, 2.15]),
        (
            Optimizer::Momentum {
                momentum: 0.9,
                nesterov: true,
            },
            [0.8265, 2.195],
        ),
        (Optimizer::adagrad(), [0.883_459, 2.059_711]),
        (Optimizer::adam(), [0.810_144, 2.134_56]),
        (Optimizer::rmsprop(), [0.560_913_5, 2.193_368_7]),
        (Optimizer::Sgd, [0.93, 2.06]),
    ];
    for (optimizer, expected) in cases {
        let mut w = dev.tensor((vec![1.0f32, 2.0], (2usize,)));
        let mut slots = Slots::new();
        for (t, g) in [[0.5f32, -1.0], [0.2, 0.4]].into_iter().enumerate() {
            let g = dev.tensor((g.to_vec(), (2usize,)));
            w = update(&optimizer, w, g, &mut slots, 0.1, 0.0, t as i32 + 1).unwrap();
        }
        let got = w.as_vec();
        for (a, b) in got.iter().zip(expected) {
            assert!((a - b).abs() < 1e-5, "{optimizer}: {got:?} vs {expected:?}");
        }
    }
    // Weight decay adds wd·w to the gradient: one SGD step on w=[1,2], g=0, wd=0.5, lr=0.1.
    let w = dev.tensor((vec![1.0f32, 2.0], (2usize,)));
    let g = dev.tensor((vec![0.0f32, 0.0], (2usize,)));
    let w = update(&Optimizer::Sgd, w, g, &mut Slots::new(), 0.1, 0.5, 1).unwrap();
    assert_eq!(w.as_vec(), vec![0.95, 1.9]);
}

#[test]
fn same_seed_same_history_other_seed_other_history() {
    let features = synthetic(3, 8);
    let config = quiet(TrainConfig {
        steps: 30,
        eval_every: 5,
        hidden: vec![6],
        ..Default::default()
    });
    let (a, ha) = train(&features, &config).unwrap();
    let (b, hb) = train(&features, &config).unwrap();
    assert_eq!(ha, hb);
    assert_eq!(a, b);
    let (_, hc) = train(&features, &TrainConfig { seed: 7, ..config }).unwrap();
    assert_ne!(ha.train_loss, hc.train_loss);
    assert_eq!(ha.step, vec![0, 5, 10, 15, 20, 25, 29]);
}

#[test]
fn confusion_matrix_and_per_class_metrics_on_a_known_case() {
    let classes: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    // Predictions: a→a, a→b, b→b, b→b, c→a, c→c.
    let labels = [0, 0, 1, 1, 2, 2];
    let predicted = [0, 1, 1, 1, 0, 2];
    let mut probabilities = Vec::new();
    for &p in &predicted {
        let mut row = vec![0.1f32; 3];
        row[p] = 0.8;
        probabilities.extend(row);
    }
    let paths: Vec<PathBuf> = (0..6).map(|i| PathBuf::from(format!("{i}.jpg"))).collect();
    let m = Metrics::from_probabilities(&classes, &labels, &probabilities, &paths).unwrap();
    assert_eq!(
        m.confusion,
        vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 1]]
    );
    assert!((m.accuracy - 4.0 / 6.0).abs() < 1e-6);
    assert_eq!(m.confusion_normalized()[0], vec![0.5, 0.5, 0.0]);
    // Class a: precision 1/2, recall 1/2. Class b: precision 2/3, recall 1. Class c: 1, 1/2.
    let pr: Vec<(f32, f32)> = m
        .per_class
        .iter()
        .map(|c| (c.precision, c.recall))
        .collect();
    assert_eq!(pr, vec![(0.5, 0.5), (2.0 / 3.0, 1.0), (1.0, 0.5)]);
    assert!((m.per_class[1].f1 - 0.8).abs() < 1e-6);
    let wrong: Vec<(PathBuf, usize, usize)> = m
        .misclassified
        .iter()
        .map(|x| (x.path.clone(), x.label, x.prediction))
        .collect();
    assert_eq!(wrong, vec![("1.jpg".into(), 0, 1), ("4.jpg".into(), 2, 0)]);
    assert!((m.loss - (-(0.8f32.ln()) * 4.0 - 0.1f32.ln() * 2.0) / 6.0).abs() < 1e-5);
}

#[test]
fn save_and_load_round_trip_and_reject_bad_files() {
    let features = synthetic(3, 8);
    let config = quiet(TrainConfig {
        steps: 20,
        hidden: vec![5],
        activation: Activation::Linear,
        ..Default::default()
    });
    let (classifier, _) = train(&features, &config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/classifier.safetensors");
    classifier.save(&path).unwrap();
    let loaded = Classifier::load(&path).unwrap();
    assert_eq!(loaded, classifier);
    let row = &features.test.values().to_vec()[..8];
    assert_eq!(
        loaded.top_k(row, 3).unwrap(),
        classifier.top_k(row, 3).unwrap()
    );

    let bytes = std::fs::read(&path).unwrap();
    let damaged = dir.path().join("damaged.safetensors");
    std::fs::write(&damaged, &bytes[..bytes.len() / 2]).unwrap();
    let err = Classifier::load(&damaged).unwrap_err().to_string();
    assert!(err.contains("damaged.safetensors"), "{err}");
    let foreign = dir.path().join("features.safetensors");
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &[0u8; 4]).unwrap();
    std::fs::write(
        &foreign,
        safetensors::serialize([("x", view)], &None).unwrap(),
    )
    .unwrap();
    let err = Classifier::load(&foreign).unwrap_err().to_string();
    assert!(err.contains("not a flowers_kit classifier"), "{err}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let features = synthetic(3, 8);
    let config = quiet(TrainConfig::default());

    let mut empty = features.clone();
    empty.test = FeatureSet::new(vec![], 8, vec![], vec![]).unwrap();
    let err = train(&empty, &config).unwrap_err().to_string();
    assert!(err.contains("empty split"), "{err}");

    let mut mismatched = features.clone();
    mismatched.dim = 10;
    let err = train(&mismatched, &config).unwrap_err().to_string();
    assert!(err.contains("feature dimension is 10"), "{err}");

    let mut nan = features.clone();
    let mut values = nan.train.values().to_vec();
    values[8 * 5 + 3] = f32::NAN;
    nan.train = FeatureSet::new(values, 8, nan.train.labels().to_vec(), vec![]).unwrap();
    let err = train(&nan, &config).unwrap_err().to_string();
    assert!(err.contains("NaN") && err.contains("row 5"), "{err}");

    let err = "adamw".parse::<Optimizer>().unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)));
    assert!(
        err.to_string().contains("unknown optimizer 'adamw'"),
        "{err}"
    );

    let err = train(
        &features,
        &TrainConfig {
            learning_rate: -1.0,
            ..config.clone()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("learning rate"), "{err}");
    let err = FeatureSet::new(vec![1.0; 7], 2, vec![0, 1, 2], vec![]).unwrap_err();
    assert!(err.to_string().contains("7 values"), "{err}");
}

#[test]
fn a_stack_of_linear_layers_collapses_to_one_equal_layer() {
    let features = synthetic(3, 8);
    let config = quiet(TrainConfig {
        steps: 30,
        hidden: vec![6, 4],
        activation: Activation::Linear,
        ..Default::default()
    });
    let (classifier, _) = train(&features, &config).unwrap();
    let single = classifier.head().collapse_linear().unwrap();
    assert_eq!(single.layers().len(), 1);
    assert_eq!((single.inputs(), single.classes()), (8, 3));
    let x = features.test.values().to_vec();
    let n = features.test.len();
    let deep = classifier.head().probabilities(&x, n).unwrap();
    let flat = single.probabilities(&x, n).unwrap();
    let max = deep
        .iter()
        .zip(&flat)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max < 1e-5, "max |Δ| {max}");

    let relu = TrainConfig {
        activation: Activation::Relu,
        ..config
    };
    let (classifier, _) = train(&features, &relu).unwrap();
    assert!(classifier.head().collapse_linear().is_none());
}

#[test]
fn metrics_report_lists_every_class() {
    let classes: Vec<String> = ["daisy", "roses"].map(String::from).to_vec();
    let m = Metrics::from_probabilities(&classes, &[0, 1, 1], &[0.9, 0.1, 0.2, 0.8, 0.6, 0.4], &[])
        .unwrap();
    let report = m.report();
    assert_eq!(report.lines().count(), 4, "{report}");
    assert!(
        report.contains("roses") && report.contains("0.667"),
        "{report}"
    );
}

#[test]
fn a_validation_set_is_evaluated_beside_the_test_set() {
    let mut features = synthetic(3, 8);
    let n = features.test.len();
    features.validation = features.test.clone();
    let config = quiet(TrainConfig {
        steps: 20,
        eval_every: 5,
        ..Default::default()
    });
    let (_, history) = train(&features, &config).unwrap();
    assert_eq!(history.validation_accuracy.len(), history.step.len());
    // Here the validation set is the test set: the same numbers.
    assert_eq!(history.validation_accuracy, history.test_accuracy);
    assert_eq!(
        history.final_validation_accuracy(),
        history.final_test_accuracy()
    );
    // Without one, nothing is recorded.
    features.validation = FeatureSet::new(vec![], 8, vec![], vec![]).unwrap();
    let (_, history) = train(&features, &config).unwrap();
    assert!(history.validation_accuracy.is_empty() && n > 0);
    assert!(history.final_validation_accuracy().is_nan());
}

#[test]
fn several_seeds_train_one_config_and_report_their_range() {
    let mut features = synthetic(3, 8);
    features.validation = features.test.clone();
    let config = quiet(TrainConfig {
        steps: 5,
        ..Default::default()
    });
    let runs = flowers_kit::train::train_seeds(&features, &config, [0, 1, 2]).unwrap();
    assert_eq!(runs.histories.len(), 3);
    let (_, alone) = train(
        &features,
        &TrainConfig {
            seed: 1,
            ..config.clone()
        },
    )
    .unwrap();
    assert_eq!(
        runs.histories[1], alone,
        "each run is that seed's own training"
    );
    let spread = runs.final_validation_accuracy();
    assert!(spread.min <= spread.mean && spread.mean <= spread.max);
    assert!(flowers_kit::train::train_seeds(&features, &config, []).is_err());
}

#[test]
fn mistakes_come_most_confidently_wrong_first_and_pairs_most_often_first() {
    use flowers_kit::train::Metrics;
    let classes: Vec<String> = ["daisy", "roses", "tulips"].map(String::from).to_vec();
    // Photo 0 right; 1: roses taken for tulips at 0.6; 2: daisy for roses at 0.9 (the
    // worst: p(daisy) = 0.05); 3: roses for tulips at 0.5.
    let probabilities = [
        0.8, 0.1, 0.1, //
        0.1, 0.3, 0.6, //
        0.05, 0.9, 0.05, //
        0.2, 0.3, 0.5,
    ];
    let m = Metrics::from_probabilities(&classes, &[0, 1, 0, 1], &probabilities, &[]).unwrap();
    let order: Vec<(usize, usize)> = m
        .top_losses()
        .iter()
        .map(|x| (x.label, x.prediction))
        .collect();
    assert_eq!(order, vec![(0, 1), (1, 2), (1, 2)]);
    assert!((m.top_losses()[0].loss() - (-(0.05f32).ln())).abs() < 1e-6);
    assert_eq!(
        m.most_confused(1),
        vec![
            ("roses".to_string(), "tulips".to_string(), 2),
            ("daisy".to_string(), "roses".to_string(), 1)
        ]
    );
    assert_eq!(m.most_confused(2).len(), 1);
}
