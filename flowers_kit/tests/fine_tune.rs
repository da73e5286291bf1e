//! Fine-tuning every family on the network it runs (issue 22): each family's blocks as Keras
//! names them; the untrained suffix above a cut continues the frozen part exactly as the
//! whole network runs, on both backends; its gradients match finite differences; a
//! fine-tuned classifier survives its file; and fine-tuning helps — the training loss falls
//! below the frozen head's, and the blocks' weights move.

mod support;

use dfdx::prelude::*;
use flowers_kit::backend::dfdx::{DfdxNetwork, StepParams, TrainableSuffix};
use flowers_kit::backend::native::{Kernels, NativeNetwork, NativeSuffix};
use flowers_kit::backend::{Cut, Network};
use flowers_kit::device::DeviceKind;
use flowers_kit::features::{BackendKind, FeatureExtractor};
use flowers_kit::models::Model;
use flowers_kit::train::{train, Classifier, FineTune, Optimizer, TrainConfig};

/// Every family, at its smallest resolution, with the first and last of its blocks.
const FAMILIES: [(&str, &str, &str); 6] = [
    ("mobilenet_v2_0.35_96", "expanded_conv", "block_16"),
    ("mobilenet_v3_large", "expanded_conv", "expanded_conv_14"),
    ("efficientnet_b0", "block1a", "block7a"),
    ("resnet50_v2", "conv2_block1", "conv5_block3"),
    ("inception_v3", "mixed0", "mixed10"),
    ("nasnet_mobile", "reduction_stem_1", "normal_12"),
];

fn network(name: &str, seed: u64) -> Network {
    Network::random(Model::parse(name).unwrap(), seed).unwrap()
}

/// `n` smooth synthetic images at the model's resolution.
fn pixels(network: &Network, n: usize) -> Vec<f32> {
    let r = network.model().resolution();
    (0..n * r * r * 3)
        .map(|i| {
            let (image, rest) = (i / (r * r * 3), i % (r * r * 3));
            let (y, x, c) = (rest / (r * 3), rest / 3 % r, rest % 3);
            (0.5 + 0.4 * ((x + 2 * y + 7 * image) as f32 / 9.0 + c as f32).sin()).clamp(0.0, 1.0)
        })
        .collect()
}

/// The rows a cut trains on: the frozen part's maps, from the native backend.
fn rows(cut: &Cut, pixels: &[f32], n: usize) -> Vec<f32> {
    let frozen =
        NativeNetwork::with_outputs(&cut.frozen().unwrap(), cut.inputs(), Kernels::detect())
            .unwrap();
    let rows = frozen.forward(pixels, n).unwrap();
    assert_eq!(rows.len(), n * cut.row_len());
    rows
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn every_family_has_its_keras_blocks_and_a_limit() {
    for (name, first, last) in FAMILIES {
        let network = network(name, 0);
        let blocks = network.blocks();
        assert_eq!(blocks.first().unwrap().name, first, "{name}");
        assert_eq!(blocks.last().unwrap().name, last, "{name}");
        let most = network.max_fine_tune_blocks();
        assert!(most >= 1, "{name}");
        assert!(
            network.cut(most).is_ok() && network.cut(most + 1).is_err(),
            "{name}"
        );
        let err = network.cut(0).unwrap_err().to_string();
        assert!(err.contains(&format!("1 to {most}")), "{name}: {err}");
        // The last block's cut: what it reads comes from below it, nothing else crosses.
        let cut = network.cut(1).unwrap();
        assert_eq!(cut.block_name(), last);
        assert!(cut.inputs().iter().all(|&j| j < cut.first()));
    }
    // NASNet's cells read the two cells before them.
    assert_eq!(
        network("nasnet_mobile", 0).cut(1).unwrap().inputs().len(),
        2
    );
    // Part of a network is another network: its outputs never share the features' cache.
    let whole = network("resnet50_v2", 0);
    let frozen = whole.cut(1).unwrap().frozen().unwrap();
    assert_ne!(frozen.weights_id(), whole.weights_id());
}

#[test]
fn published_efficientnet_weights_make_another_network_than_the_file_by_path() {
    use flowers_kit::backend::PUBLISHED_INPUT;
    use flowers_kit::weights::KerasWeights;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("efficientnet_b0.h5");
    support::keras::write_h5("efficientnet_b0", &file);
    let weights = KerasWeights::open(&file).unwrap();
    let model = Model::parse("efficientnet_b0").unwrap();
    let published = Network::from_published_keras(model, &weights).unwrap();
    let by_path = Network::from_keras(model, &weights).unwrap();
    assert_eq!(published.steps().len(), by_path.steps().len() + 1);
    assert!(published.weights_id().ends_with(PUBLISHED_INPUT));
    assert_eq!(by_path.weights_id(), weights.digest());
    // For the other families the two are one network, one identity.
    let mobilenet =
        KerasWeights::open(support::golden().join("mobilenet_v2_0.35_128_no_top.h5")).unwrap();
    let model = Model::parse("mobilenet_v2_0.35_128").unwrap();
    assert_eq!(
        Network::from_published_keras(model, &mobilenet)
            .unwrap()
            .weights_id(),
        Network::from_keras(model, &mobilenet).unwrap().weights_id()
    );
}

#[test]
fn the_untrained_suffix_continues_the_frozen_part_on_both_backends() {
    let n = 2;
    for (name, _, _) in FAMILIES {
        let network = network(name, 3);
        let pixels = pixels(&network, n);
        let native = NativeNetwork::new(&network)
            .unwrap()
            .forward(&pixels, n)
            .unwrap();
        let dfdx = DfdxNetwork::new(&network, Cpu::default())
            .unwrap()
            .forward(&pixels, n)
            .unwrap()
            .as_vec();
        let scale = native.iter().fold(1f32, |m, v| m.max(v.abs()));
        assert!(
            max_abs_diff(&native, &dfdx) <= 1e-4 * scale,
            "{name}: backends"
        );
        for blocks in [1, network.max_fine_tune_blocks().min(2)] {
            let cut = network.cut(blocks).unwrap();
            let rows = rows(&cut, &pixels, n);
            let suffix = TrainableSuffix::new(&cut, Cpu::default()).unwrap();
            let features = suffix.features(&rows, n).unwrap();
            let worst = max_abs_diff(&features, &native);
            assert!(
                worst <= 1e-4 * scale,
                "{name}, {blocks} blocks: {worst} (scale {scale})"
            );
        }
    }
}

/// Σ features · projection over `n` rows, in f64.
fn scalar(suffix: &TrainableSuffix<Cpu>, rows: &[f32], n: usize, projection: &[f32]) -> f64 {
    let features = suffix.features(rows, n).unwrap();
    features
        .iter()
        .zip(projection)
        .map(|(a, b)| f64::from(*a) * f64::from(*b))
        .sum()
}

#[test]
fn gradients_of_every_family_match_finite_differences() {
    let n = 2;
    for (name, _, _) in FAMILIES {
        let network = network(name, 9);
        let pixels = pixels(&network, n);
        let cut = network.cut(1).unwrap();
        let rows = rows(&cut, &pixels, n);
        let dim = network.feature_dim();
        let projection: Vec<f32> = (0..n * dim)
            .map(|i| ((i * 31) % 17) as f32 / 17.0 - 0.5)
            .collect();
        let mut suffix = TrainableSuffix::new(&cut, Cpu::default()).unwrap();
        let features = suffix.features_traced(&rows, n).unwrap();
        let p: Tensor<(usize, usize), f32, Cpu> =
            Cpu::default().tensor((projection.clone(), (n, dim)));
        let grads = features
            .try_mul(p)
            .unwrap()
            .try_sum::<(), _>()
            .unwrap()
            .backward();
        // The first and the last trainable kernel whose gradient does not vanish (a random
        // network leaves some units dead), each at its largest gradient (a small one
        // drowns in f32 rounding).
        let kernels: Vec<(usize, Vec<f32>)> = suffix
            .params_mut()
            .iter()
            .enumerate()
            .filter_map(|(k, p)| match p {
                StepParams::Conv { weights, .. } => Some((k, grads.get(weights).as_vec())),
                _ => None,
            })
            .filter(|(_, g)| g.iter().any(|v| v.abs() > 1e-6))
            .collect();
        assert!(
            kernels.len() >= 2,
            "{name}: gradients vanish nearly everywhere"
        );
        for (k, g) in [&kernels[0], &kernels[kernels.len() - 1]] {
            let k = *k;
            let index = (0..g.len())
                .max_by(|&i, &j| g[i].abs().total_cmp(&g[j].abs()))
                .unwrap();
            let step = cut.first() + k;
            let h = 1e-3f32;
            let moved = |delta: f32| {
                let mut steps = cut.suffix().to_vec();
                steps[k].parameters_mut()[0][index] += delta;
                let cut = cut.with_weights_from(&steps).unwrap();
                let suffix = TrainableSuffix::new(&cut, Cpu::default()).unwrap();
                scalar(&suffix, &rows, n, &projection)
            };
            let numeric = (moved(h) - moved(-h)) / (2.0 * f64::from(h));
            let analytic = f64::from(g[index]);
            assert!(
                analytic.abs() > 1e-6,
                "{name}: a vanishing gradient proves nothing"
            );
            let tolerance = 5e-2 * numeric.abs().max(1e-2);
            assert!(
                (analytic - numeric).abs() <= tolerance,
                "{name}, step {step} ({}), weight {index}: autodiff {analytic}, finite \
                 differences {numeric}",
                network.steps()[step].name
            );
        }
    }
}

/// The native backward pass against dfdx's autodiff, on every family with up to three
/// blocks unfrozen (swish and squeeze-excitation, hard swish, pre-activation batch norms,
/// concatenated branches and average pools, separable cells): the same features, and the
/// same gradient for every weight, bias, scale and shift.
#[test]
fn native_gradients_match_dfdx_autodiff_on_every_family() {
    let n = 3;
    for (name, _, _) in FAMILIES {
        let network = network(name, 5);
        let pixels = pixels(&network, n);
        for blocks in [1, network.max_fine_tune_blocks().min(3)] {
            let cut = network.cut(blocks).unwrap();
            // Scaled to a root mean square of 1: deep in a random network the activations
            // reach the hundreds, where swish is ReLU and sigmoid a step, and a wrong
            // derivative of either would go unseen.
            let mut rows = rows(&cut, &pixels, n);
            let rms = (rows.iter().map(|v| v * v).sum::<f32>() / rows.len() as f32).sqrt();
            rows.iter_mut().for_each(|v| *v /= rms.max(1e-6));
            let dim = network.feature_dim();
            let projection: Vec<f32> = (0..n * dim)
                .map(|i| ((i * 37) % 23) as f32 / 23.0 - 0.5)
                .collect();
            let mut reference = TrainableSuffix::new(&cut, Cpu::default()).unwrap();
            let traced = reference.features_traced(&rows, n).unwrap();
            let expected_features = traced.as_vec();
            let p: Tensor<(usize, usize), f32, Cpu> =
                Cpu::default().tensor((projection.clone(), (n, dim)));
            let grads = traced
                .try_mul(p)
                .unwrap()
                .try_sum::<(), _>()
                .unwrap()
                .backward();
            let expected: Vec<Vec<f32>> = reference
                .params_mut()
                .iter()
                .flat_map(|params| match params {
                    StepParams::Conv { weights, bias } => {
                        vec![grads.get(weights).as_vec(), grads.get(bias).as_vec()]
                    }
                    StepParams::Affine { scale, shift } => {
                        vec![grads.get(scale).as_vec(), grads.get(shift).as_vec()]
                    }
                    StepParams::None => Vec::new(),
                })
                .collect();

            let native = NativeSuffix::new(&cut).unwrap();
            let (features, tape) = native.forward(&rows, n).unwrap();
            let scale = expected_features.iter().fold(1f32, |m, v| m.max(v.abs()));
            let worst = max_abs_diff(&features, &expected_features);
            assert!(
                worst <= 1e-4 * scale,
                "{name}, {blocks} blocks: features differ by {worst}"
            );
            let actual = native.backward(tape, &projection).unwrap();
            assert_eq!(actual.len(), expected.len(), "{name}: tensors");
            let mut compared = 0;
            for (t, (a, e)) in actual.iter().zip(&expected).enumerate() {
                // Relative to the gradient's norm: through three ResNet blocks of a random
                // network the values reach the hundreds, and f32 sums in another order differ
                // by a few parts in 10⁴; a wrong kernel is off by its whole size.
                let norm = |v: &mut dyn Iterator<Item = f32>| {
                    v.map(|x| f64::from(x).powi(2)).sum::<f64>().sqrt()
                };
                let size = norm(&mut e.iter().copied());
                let error = norm(&mut a.iter().zip(e).map(|(a, e)| a - e)) / size.max(1e-12);
                assert!(
                    error <= 2e-3,
                    "{name}, {blocks} blocks, tensor {t} of {}: gradients differ by {error:.1e} \
                     of their norm",
                    expected.len()
                );
                let largest = e.iter().fold(0f32, |m, v| m.max(v.abs()));
                compared += usize::from(largest > 1e-6);
            }
            assert!(
                compared * 2 >= expected.len(),
                "{name}: gradients vanish nearly everywhere"
            );
        }
    }
}

/// Training with the native backward pass takes the same steps as training on dfdx's tape:
/// the same losses step by step (head-only phase, then blocks and head with weight decay on
/// the kernels only), and the same trained weights. MobileNet V2 with its real weights, and
/// ResNet V2 for the pre-activation batch norms' scale and shift.
#[test]
fn native_and_dfdx_fine_tuning_take_the_same_steps() {
    let dir = tempfile::tempdir().unwrap();
    let split = support::golden_photos(&dir.path().join("photos"));
    for name in ["mobilenet_v2_0.35_224", "resnet50_v2"] {
        let (weights, scale) = if name == "resnet50_v2" {
            let file = dir.path().join("resnet.h5");
            let spec = support::keras::write_h5(name, &file);
            (
                file,
                spec["max_abs_feature"].as_f64().unwrap().max(1.0) as f32,
            )
        } else {
            (support::golden_h5("0.35_224"), 1.0)
        };
        let extractor =
            FeatureExtractor::with_weights(Model::parse(name).unwrap(), weights.to_str())
                .unwrap()
                .cache_dir(dir.path().join("cache"))
                .quiet();
        // The CPU's two backends, also in a build with CUDA on a GPU machine.
        let config = TrainConfig {
            device: DeviceKind::Cpu,
            steps: 4,
            batch_size: Some(4),
            optimizer: Optimizer::adam(),
            learning_rate: 0.01 / scale,
            weight_decay: 0.01,
            eval_every: 1,
            verbose: false,
            fine_tune: Some(FineTune {
                blocks: 1,
                learning_rate: 0.001 / scale,
                head_steps: 2,
            }),
            ..Default::default()
        };
        let rows = extractor.extract_for(&split, &config).unwrap();
        let (native, native_history) = train(&rows, &config).unwrap();
        let reference = TrainConfig {
            backend: BackendKind::Dfdx,
            ..config.clone()
        };
        let (dfdx, dfdx_history) = train(&rows, &reference).unwrap();
        // Threads share the work, not the order of the sums: on one machine with one thread
        // count, a run repeats to the last bit.
        let (_, again) = train(&rows, &config).unwrap();
        assert_eq!(
            again.train_loss, native_history.train_loss,
            "{name}: a re-run differs"
        );
        support::assert_same_training(
            name,
            (&native, &native_history),
            (&dfdx, &dfdx_history),
            &rows,
        );
    }
}

#[test]
fn fine_tuning_helps_every_family_and_its_classifier_survives_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let split = support::golden_photos(&dir.path().join("photos"));
    // Weights whose features carry the photos (seeded random ones collapse to constants):
    // the real MobileNet V2 0.35/224, and the other families' generator weights in Keras'
    // layout. The generator's features range up to `max_abs_feature` (23,000 for NASNet),
    // so the learning rates are scaled by it: Adam moves each weight by about the rate per
    // step whatever the gradient, and a logit by the rate times the features.
    let families = [
        "mobilenet_v2_0.35_224",
        "mobilenet_v3_large",
        "efficientnet_b0",
        "resnet50_v2",
        "inception_v3",
        "nasnet_mobile",
    ];
    for name in families {
        let (weights, scale) = match name {
            "mobilenet_v2_0.35_224" => (support::golden_h5("0.35_224"), 1.0),
            family => {
                let file = dir.path().join(format!("{family}.h5"));
                let spec = support::keras::write_h5(family, &file);
                (
                    file,
                    spec["max_abs_feature"].as_f64().unwrap().max(1.0) as f32,
                )
            }
        };
        let (head_rate, block_rate) = (0.01 / scale, 0.001 / scale);
        let model = Model::parse(name).unwrap();
        let extractor = FeatureExtractor::with_weights(model, Some(weights.to_str().unwrap()))
            .unwrap()
            .cache_dir(dir.path().join("cache"))
            .quiet();
        let frozen = TrainConfig {
            steps: 30,
            batch_size: Some(split.train.len()),
            optimizer: Optimizer::adam(),
            learning_rate: head_rate,
            eval_every: 10,
            verbose: false,
            ..Default::default()
        };
        let tuned = TrainConfig {
            fine_tune: Some(FineTune {
                blocks: 1,
                learning_rate: block_rate,
                head_steps: 0,
            }),
            ..frozen.clone()
        };
        let features = extractor.extract_for(&split, &frozen).unwrap();
        let (_, head_only) = train(&features, &frozen).unwrap();
        let rows = extractor.extract_for(&split, &tuned).unwrap();
        let (classifier, history) = train(&rows, &tuned).unwrap();
        // Full batches: the recorded training loss is the whole training set's.
        let (before, after) = (
            *head_only.train_loss.last().unwrap(),
            *history.train_loss.last().unwrap(),
        );
        assert!(
            after < before,
            "{name}: fine-tuned loss {after} ≥ frozen {before}"
        );
        let cut = rows.cut.as_ref().unwrap();
        let trained = classifier.fine_tuned().unwrap();
        let moved = trained
            .suffix()
            .iter()
            .zip(cut.suffix())
            .filter(|(a, b)| !a.parameters().is_empty() && a.parameters() != b.parameters())
            .count();
        let weighted = cut
            .suffix()
            .iter()
            .filter(|s| !s.parameters().is_empty())
            .count();
        assert_eq!(
            moved, weighted,
            "{name}: every weighted step of the block moves"
        );

        // Saved, loaded and run from a photo: the same answer.
        let file = dir.path().join(format!("{name}.safetensors"));
        classifier.save(&file).unwrap();
        let loaded = Classifier::load(&file).unwrap();
        assert_eq!(loaded, classifier, "{name}");
        let photo = &rows.test.paths()[0];
        let ranked = loaded.predict(&extractor, photo, 2).unwrap();
        let expected = classifier
            .probabilities(rows.test.row(0).unwrap(), 1)
            .unwrap();
        for prediction in &ranked {
            let want = expected[prediction.label];
            assert!(
                (prediction.probability - want).abs() < 1e-4,
                "{name}: {} against {want}",
                prediction.probability
            );
        }
    }
}

#[test]
fn the_command_line_fine_tunes_another_family_and_predicts_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let split_root = dir.path().join("photos");
    support::golden_photos(&split_root);
    let weights = dir.path().join("efficientnet_b0.h5");
    support::keras::write_h5("efficientnet_b0", &weights);
    let out = dir.path().join("out");
    let run = |args: &[&str]| {
        std::process::Command::new(support::flowers_bin())
            .args(args)
            .env("FLOWERS_KIT_HOME", dir.path().join("home"))
            .env("FLOWERS_KIT_QUIET", "1")
            .output()
            .unwrap()
    };
    let trained = run(&[
        "train",
        "--data",
        split_root.to_str().unwrap(),
        "--model",
        "efficientnet_b0",
        "--weights",
        weights.to_str().unwrap(),
        "--fine-tune-blocks",
        "1",
        "--head-steps",
        "2",
        "--steps",
        "3",
        "--batch",
        "4",
        "--eval-every",
        "1",
        "--optimizer",
        "adam",
        "--lr",
        "0.0003",
        "--fine-tune-lr",
        "0.00003",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&trained.stdout);
    assert!(
        trained.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    // Two head-only steps, then three with block7a: five evaluations.
    assert_eq!(
        stdout.matches("Test accuracy at step").count(),
        5,
        "{stdout}"
    );
    let photo = support::golden().join("images/06_tulips.png");
    let predicted = run(&[
        "predict",
        "--classifier",
        out.join("classifier.safetensors").to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        photo.to_str().unwrap(),
    ]);
    let answer = String::from_utf8_lossy(&predicted.stdout);
    assert!(
        predicted.status.success() && answer.contains("06_tulips.png: "),
        "{answer}\n{}",
        String::from_utf8_lossy(&predicted.stderr)
    );
    // Too many blocks for the model is an error naming its limit.
    let refused = run(&[
        "train",
        "--data",
        split_root.to_str().unwrap(),
        "--model",
        "inception_v3",
        "--fine-tune-blocks",
        "3",
        "--weights",
        weights.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
}
