//! The feature extractor end to end: weights (files, errors, download), the cache, the CLI,
//! and a linear probe on real features of the 750 sample photos.

mod support;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use flowers_kit::backend::Network;
use flowers_kit::data::Dataset;
use flowers_kit::features::{cache, FeatureExtractor};
use flowers_kit::models::MobileNetV2;
use flowers_kit::weights::KerasWeights;
use flowers_kit::Error;
use sha2::Digest;
use support::http::{Behaviour, Server};

fn extractor(variant: &str, cache: &Path) -> FeatureExtractor {
    let model = MobileNetV2::parse(&format!("mobilenet_v2_{variant}")).unwrap();
    FeatureExtractor::with_weights(model, Some(support::golden_h5(variant).to_str().unwrap()))
        .unwrap()
        .cache_dir(cache)
}

#[test]
fn teachable_machine_whole_model_file_holds_the_same_weights() {
    // The golden 0.35/224 weights were taken from this export, so both files must give
    // identical features, although one is a Keras 2.4 whole-model file.
    let model = MobileNetV2::parse("mobilenet_v2_0.35_224").unwrap();
    let tm = KerasWeights::open(support::shared().join("weights/teachable_machine_keras_model.h5"))
        .unwrap();
    let keras = KerasWeights::open(support::golden_h5("0.35_224")).unwrap();
    assert!(
        tm.names().contains(&"dense_Dense1/kernel"),
        "the head is read too"
    );
    let a = Network::from_keras(model, &tm).unwrap();
    let b = Network::from_keras(model, &keras).unwrap();
    assert_eq!(a.steps(), b.steps());
}

#[test]
fn wrong_or_damaged_weights_are_clear_errors() {
    let model = MobileNetV2::parse("mobilenet_v2_0.35_128").unwrap();
    // Another width's file: shapes disagree, and the message names tensor and file.
    let other = KerasWeights::open(support::golden_h5("1.0_224")).unwrap();
    let err = Network::from_keras(model, &other).unwrap_err().to_string();
    assert!(
        err.contains("Conv1/kernel") && err.contains("1.0_224_no_top.h5"),
        "{err}"
    );
    assert!(
        err.contains("shape [3, 3, 3, 32], expected [3, 3, 3, 16]"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bytes = fs::read(support::golden_h5("0.35_128")).unwrap();
    let truncated = dir.path().join("truncated.h5");
    fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = KerasWeights::open(&truncated).unwrap_err();
    assert!(matches!(err, Error::Tensors { .. }), "{err}");
    assert!(err.to_string().contains("truncated.h5"), "{err}");

    let text = dir.path().join("weights.h5");
    fs::write(&text, "<html>404</html>").unwrap();
    let err = KerasWeights::open(&text).unwrap_err().to_string();
    assert!(
        err.contains("weights.h5") && err.contains("not an HDF5 file"),
        "{err}"
    );

    // A Keras file without the MobileNet tensors: the head-less names are missing.
    let err = FeatureExtractor::with_weights(model, Some("/nonexistent/w.h5")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/w.h5"), "{err}");
}

#[test]
fn unknown_models_are_rejected_with_the_choices() {
    for bad in [
        "resnet50",
        "mobilenet_v2_0.35_100",
        "mobilenet_v2_1.4_128",
        "mobilenet_v2_2.0_224",
    ] {
        let err = MobileNetV2::parse(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{bad}: {err}");
    }
    assert_eq!(MobileNetV2::published().len(), 22);
    let hub = MobileNetV2::parse(
        "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/4",
    )
    .unwrap();
    assert_eq!(hub.name(), "mobilenet_v2_1.0_224");
    assert_eq!(MobileNetV2::parse(&hub.hub_handle()).unwrap(), hub);
    assert_eq!(
        MobileNetV2::parse("mobilenet_v2_0.5_96")
            .unwrap()
            .weights_file_name(),
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_96_no_top.h5"
    );
}

#[test]
fn cache_serves_reruns_and_recomputes_what_changed() {
    let cache = tempfile::tempdir().unwrap();
    let photos = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = support::golden_pngs()
        .iter()
        .take(4)
        .map(|p| {
            let dest = photos.path().join(p.file_name().unwrap());
            fs::copy(p, &dest).unwrap();
            dest
        })
        .collect();
    let ex = extractor("0.75_96", cache.path());
    let first = ex.extract_paths(&paths).unwrap();
    assert_eq!((first.cache_hits, first.kept.len()), (0, 4));
    // The four rows are one pack, keyed by the SHA-256 of each photo's content.
    let packs = walk(cache.path());
    assert_eq!(packs.len(), 1);
    let good = fs::read(&packs[0]).unwrap();
    let keys = cache::parse_keys(&good, 1280, good.len() as u64).expect("a valid pack");
    let photo_keys: Vec<[u8; 32]> = paths
        .iter()
        .map(|p| sha2::Sha256::digest(fs::read(p).unwrap()).into())
        .collect();
    assert_eq!(keys, photo_keys);

    let second = ex.extract_paths(&paths).unwrap();
    assert_eq!(second.cache_hits, 4);
    assert_eq!(second.values, first.values);

    // One flipped bit in the first photo's row: that row is recomputed into a new pack.
    // (Rows start after the header, 4 keys and the header's check: 12 + 4 × 32 + 8 bytes.)
    let mut flipped = good.clone();
    flipped[148 + 100] ^= 1;
    fs::write(&packs[0], &flipped).unwrap();
    let third = ex.extract_paths(&paths).unwrap();
    assert_eq!((third.cache_hits, &third.values), (3, &first.values));
    assert_eq!(walk(cache.path()).len(), 2);

    // A cut-off pack is passed over whole: its other three rows are recomputed, the first
    // photo's comes from the new pack.
    fs::write(&packs[0], &good[..good.len() / 2]).unwrap();
    let fourth = ex.extract_paths(&paths).unwrap();
    assert_eq!((fourth.cache_hits, &fourth.values), (1, &first.values));
    assert_eq!(walk(cache.path()).len(), 3);

    // A changed photo is recomputed; the others still come from the cache.
    fs::copy(support::golden_pngs()[7].clone(), &paths[1]).unwrap();
    let fifth = ex.extract_paths(&paths).unwrap();
    assert_eq!(fifth.cache_hits, 3);
    assert_ne!(fifth.values[1280..2560], first.values[1280..2560]);

    // Other weights (same variant) get their own cache entries.
    let random = FeatureExtractor::from_network(Network::random(ex.model(), 3).unwrap())
        .unwrap()
        .cache_dir(cache.path());
    assert_eq!(random.extract_paths(&paths).unwrap().cache_hits, 0);
    // No temp files are left behind by the atomic writes.
    assert!(walk(cache.path())
        .iter()
        .all(|p| p.extension().unwrap() == "pack"));
}

#[test]
fn photos_run_where_they_are_decoded_give_the_rows_of_one_photo_at_a_time() {
    // Several photos run each on the loader thread that decoded it, one photo alone on the
    // team: the two ways agree, and with TensorFlow.
    let cache = tempfile::tempdir().unwrap();
    let ex = extractor("0.35_128", cache.path());
    let paths = support::golden_pngs();
    let together = ex.extract_paths(&paths).unwrap();
    assert_eq!(together.kept.len(), paths.len());
    for (i, path) in paths.iter().enumerate() {
        let alone = ex.extract_one(path).unwrap();
        let row = &together.values[i * alone.len()..][..alone.len()];
        let (max, _) = support::max_mean_abs_diff(row, &alone);
        assert!(max <= 1e-5, "{}: max |Δ| {max}", path.display());
    }
    let (_, golden) = support::tensor_f32(
        &support::golden().join("mobilenet_v2_0.35_128.safetensors"),
        "features",
    );
    assert!(support::max_mean_abs_diff(&together.values, &golden).0 <= 1e-4);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

#[test]
fn unreadable_photos_are_skipped_not_fatal() {
    let cache = tempfile::tempdir().unwrap();
    let bad = cache.path().join("bad.jpg");
    fs::write(&bad, "garbage").unwrap();
    let mut paths = support::golden_pngs()[..2].to_vec();
    paths.insert(1, bad.clone());
    let out = extractor("0.35_128", cache.path())
        .extract_paths(&paths)
        .unwrap();
    assert_eq!(out.kept, vec![0, 2]);
    assert_eq!(out.values.len(), 2 * 1280);
    assert_eq!(out.skipped[0].0, bad);
}

/// Serves the golden weight files under their Keras Applications names.
fn weights_server() -> Server {
    let mut files = HashMap::new();
    for variant in ["0.35_128", "0.35_224"] {
        let (alpha, rows) = variant.split_once('_').unwrap();
        files.insert(
            format!(
                "/mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{rows}_no_top.h5"
            ),
            Arc::new(fs::read(support::golden_h5(variant)).unwrap()),
        );
    }
    Server::start(files, Behaviour::Normal)
}

fn flowers(home: &Path, server: &Server, args: &[&str], extra: &[PathBuf]) -> std::process::Output {
    Command::new(support::flowers_bin())
        .args(args)
        .args(extra)
        .env("FLOWERS_KIT_HOME", home)
        .env("FLOWERS_WEIGHTS_URL", format!("{}/", server.base))
        .output()
        .unwrap()
}

#[test]
fn cli_downloads_weights_once_and_writes_golden_features() {
    let home = tempfile::tempdir().unwrap();
    let server = weights_server();
    let out_file = home.path().join("features.safetensors");
    let handle = "https://tfhub.dev/google/imagenet/mobilenet_v2_035_128/feature_vector/2";
    let args = [
        "features",
        "--model",
        handle,
        "--out",
        out_file.to_str().unwrap(),
    ];
    let run = flowers(home.path(), &server, &args, &support::golden_pngs());
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let file = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_128_no_top.h5";
    let key = flowers_kit::data::fetch::source_key(&format!("{}/mobilenet_v2/{file}", server.base));
    let cached = home
        .path()
        .join(format!("weights/mobilenet_v2/{key}-{file}"));
    assert_eq!(
        fs::read(&cached).unwrap(),
        fs::read(support::golden_h5("0.35_128")).unwrap()
    );

    let (shape, ours) = support::tensor_f32(&out_file, "features");
    let (_, golden) = support::tensor_f32(
        &support::golden().join("mobilenet_v2_0.35_128.safetensors"),
        "features",
    );
    assert_eq!(shape, [8, 1280]);
    assert!(support::max_mean_abs_diff(&ours, &golden).0 <= 1e-4);

    // Again: weights and features both come from the cache; its own output is overwritten.
    let requests = server.seen().len();
    let again = flowers(home.path(), &server, &args, &support::golden_pngs());
    assert!(again.status.success());
    assert_eq!(server.seen().len(), requests);
    assert_eq!(support::tensor_f32(&out_file, "features").1, ours);

    // Input order is output order.
    let mut reversed = support::golden_pngs();
    reversed.reverse();
    let rev = flowers(home.path(), &server, &args, &reversed);
    assert!(rev.status.success());
    let (_, rows) = support::tensor_f32(&out_file, "features");
    assert_eq!(rows[..1280], ours[7 * 1280..]);
}

#[test]
fn cli_features_refuses_foreign_files_and_bad_photos() {
    let home = tempfile::tempdir().unwrap();
    let server = weights_server();
    let foreign = home.path().join("notes.safetensors");
    fs::write(&foreign, "my precious notes").unwrap();
    let args = [
        "features",
        "--model",
        "mobilenet_v2_0.35_128",
        "--out",
        foreign.to_str().unwrap(),
    ];
    let run = flowers(home.path(), &server, &args, &support::golden_pngs()[..1]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("refusing to overwrite"));
    assert_eq!(fs::read(&foreign).unwrap(), b"my precious notes");

    let bad = home.path().join("broken.jpg");
    fs::write(&bad, "nope").unwrap();
    let out = home.path().join("f.safetensors");
    let args = [
        "features",
        "--model",
        "mobilenet_v2_0.35_128",
        "--out",
        out.to_str().unwrap(),
    ];
    let run = flowers(
        home.path(),
        &server,
        &args,
        &[support::golden_pngs()[0].clone(), bad],
    );
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("broken.jpg"), "{stderr}");
    assert!(!out.exists());

    let args = [
        "features",
        "--model",
        "mobilenet_v2_0.35_128",
        "--device",
        "tpu",
        "--out",
        "x",
    ];
    let run = flowers(home.path(), &server, &args, &support::golden_pngs()[..1]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("invalid value 'tpu'") && stderr.contains("[possible values: cpu, cuda]"),
        "{stderr}"
    );
}

/// Class scores of one feature row under weights `[dim + 1, classes]` (last row: bias).
fn logits(w: &[f32], row: &[f32], classes: usize) -> Vec<f32> {
    let dim = row.len();
    (0..classes)
        .map(|c| {
            w[dim * classes + c]
                + row
                    .iter()
                    .enumerate()
                    .map(|(j, v)| v * w[j * classes + c])
                    .sum::<f32>()
        })
        .collect()
}

/// Multinomial logistic regression by full-batch gradient descent: a plain linear probe.
fn linear_probe(x: &[f32], y: &[usize], dim: usize, classes: usize) -> Vec<f32> {
    let n = y.len();
    let mut w = vec![0f32; (dim + 1) * classes];
    for _ in 0..300 {
        let mut grad = vec![0f32; w.len()];
        for i in 0..n {
            let row = &x[i * dim..][..dim];
            let mut scores = logits(&w, row, classes);
            let max = scores.iter().cloned().fold(f32::MIN, f32::max);
            let total: f32 = scores
                .iter_mut()
                .map(|l| {
                    *l = (*l - max).exp();
                    *l
                })
                .sum();
            for c in 0..classes {
                let g = scores[c] / total - if y[i] == c { 1.0 } else { 0.0 };
                for (j, v) in row.iter().enumerate() {
                    grad[j * classes + c] += g * v;
                }
                grad[dim * classes + c] += g;
            }
        }
        for (wi, gi) in w.iter_mut().zip(&grad) {
            *wi -= 0.5 * gi / n as f32;
        }
    }
    w
}

fn predict(w: &[f32], row: &[f32], classes: usize) -> usize {
    logits(w, row, classes)
        .into_iter()
        .enumerate()
        .fold(
            (0, f32::MIN),
            |best, (c, s)| if s > best.1 { (c, s) } else { best },
        )
        .0
}

#[test]
fn linear_probe_on_real_features_of_the_sample_beats_75_percent() {
    let cache = tempfile::tempdir().unwrap();
    let split = Dataset::open(support::sample_dir())
        .unwrap()
        .split(0.8, 2018)
        .unwrap();
    let features = extractor("0.35_224", cache.path())
        .batch_size(32)
        .unwrap()
        .extract(&split)
        .unwrap();
    assert_eq!((features.train.len(), features.test.len()), (600, 150));
    let (dim, classes) = (features.dim, features.classes.len());
    let w = linear_probe(
        features.train.values(),
        features.train.labels(),
        dim,
        classes,
    );
    let test = features.test.values();
    let correct = (0..features.test.len())
        .filter(|&i| predict(&w, &test[i * dim..][..dim], classes) == features.test.labels()[i])
        .count();
    let accuracy = correct as f64 / features.test.len() as f64;
    println!("linear probe test accuracy: {:.1}%", accuracy * 100.0);
    assert!(accuracy >= 0.75, "accuracy {accuracy}");
}

/// Two classes of four golden photos each, as a dataset folder.
fn two_class_folder(root: &Path) -> Dataset {
    for (i, photo) in support::golden_pngs().iter().enumerate() {
        let class = root.join(if i % 2 == 0 { "daisy" } else { "roses" });
        fs::create_dir_all(&class).unwrap();
        fs::copy(photo, class.join(photo.file_name().unwrap())).unwrap();
    }
    Dataset::open(root).unwrap()
}

#[test]
fn augmented_views_are_extracted_once_and_trained_on() {
    use flowers_kit::data::Augment;
    use flowers_kit::train::{train, TrainConfig};

    let cache = tempfile::tempdir().unwrap();
    let photos = tempfile::tempdir().unwrap();
    let split = two_class_folder(photos.path()).split(0.5, 1).unwrap();
    let ex = extractor("0.35_128", cache.path()).quiet();
    let config = TrainConfig {
        augment: Some(Augment::default()),
        views: 2,
        steps: 5,
        verbose: false,
        ..Default::default()
    };
    let features = ex.extract_for(&split, &config).unwrap();
    let plain = ex.extract(&split).unwrap();
    let n = features.train.len();
    assert!(n >= 2);
    // The test photos and the plain training rows are untouched; each view is its own.
    assert_eq!(
        (&features.train, &features.test),
        (&plain.train, &plain.test)
    );
    assert_eq!(features.augment, config.augment);
    assert_eq!(features.train_views.len(), 2);
    let [one, two] = &features.train_views[..] else {
        unreachable!()
    };
    assert_eq!((one.len(), one.labels()), (n, plain.train.labels()));
    assert_ne!(one.values(), plain.train.values());
    assert_ne!(one.values(), two.values());
    // A view's features are the network's on the view's pixels.
    let path = &features.train.paths()[0];
    let bytes = fs::read(path).unwrap();
    let key: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let rgb = image::load_from_memory(&bytes).unwrap().to_rgb8();
    let view = Augment::default()
        .view(&rgb, 128, ex.resize_method(), &key, 1)
        .unwrap();
    let direct = ex.forward(&view.data, 1).unwrap();
    let worst = direct
        .iter()
        .zip(two.row(0).unwrap())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "view 2 of photo 0 differs by {worst}");

    // Every view is cached under its own key: a row per photo plus one per view.
    let packs = walk(cache.path());
    let cached: Vec<[u8; 32]> = packs
        .iter()
        .flat_map(|p| {
            let bytes = fs::read(p).unwrap();
            cache::parse_keys(&bytes, 1280, bytes.len() as u64).expect("a valid pack")
        })
        .collect();
    assert_eq!(cached.len(), split.train.len() + split.test.len() + 2 * n);
    let view_key = Augment::default().view_key(&key, 0);
    let hex = |k: &[u8; 32]| k.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert!(cached.iter().any(|k| hex(k) == key));
    assert!(cached.iter().any(|k| hex(k) == view_key));
    // A re-run reads them back: a row planted under view 1's key comes out as view 1. The
    // index reads packs in name order, so "0.pack" comes before the packs named by hash.
    let folder = packs[0].parent().unwrap();
    let planted =
        cache::encode_pack(1280, &[(view_key, plain.train.row(0).unwrap().to_vec())]).unwrap();
    fs::write(folder.join("0.pack"), planted).unwrap();
    let again = ex.extract_for(&split, &config).unwrap();
    assert_eq!(again.train_views[0].row(0), plain.train.row(0));
    assert_eq!(again.train_views[1], features.train_views[1]);
    assert_eq!(walk(cache.path()).len(), packs.len() + 1);

    // Training draws from the views; features without them are refused with the fix.
    let (_, history) = train(&features, &config).unwrap();
    assert_eq!(history.step.last(), Some(&4));
    let err = train(&plain, &config).unwrap_err().to_string();
    assert!(err.contains("extract_for"), "{err}");
    let other = TrainConfig {
        views: 3,
        ..config.clone()
    };
    assert!(train(&features, &other).is_err());
    let bad = TrainConfig { views: 0, ..config };
    assert!(ex.extract_for(&split, &bad).is_err());
}

#[test]
fn fine_tuning_trains_the_last_blocks_and_the_classifier_file_keeps_them() {
    use flowers_kit::train::{train, Classifier, FineTune, Schedule, TrainConfig};

    let cache = tempfile::tempdir().unwrap();
    let photos = tempfile::tempdir().unwrap();
    let split = two_class_folder(photos.path()).split(0.5, 1).unwrap();
    let ex = extractor("0.35_128", cache.path()).quiet();
    let config = TrainConfig {
        fine_tune: Some(FineTune {
            blocks: 2,
            learning_rate: 0.01,
            head_steps: 0,
        }),
        schedule: Schedule::Cosine,
        batch_size: Some(4),
        steps: 8,
        eval_every: 4,
        verbose: false,
        ..Default::default()
    };
    let rows = ex.extract_for(&split, &config).unwrap();
    let cut = rows
        .cut
        .clone()
        .expect("the cut below the blocks to fine-tune");
    assert_eq!(cut.block_name(), "block_15");
    let entering: Vec<_> = cut
        .inputs()
        .iter()
        .map(|&j| cut.network().steps()[j].shape)
        .collect();
    assert_eq!(entering, [[4, 4, 56]]);
    assert_eq!(rows.dim, 4 * 4 * 56);
    let (classifier, history) = train(&rows, &config).unwrap();
    assert_eq!(history.step, vec![0, 4, 7]);
    let trained = classifier
        .fine_tuned()
        .expect("a fine-tuned classifier has its blocks");
    // Every convolution above the cut moved; the structure did not.
    assert_eq!(trained.suffix().len(), cut.suffix().len());
    for (after, before) in trained.suffix().iter().zip(cut.suffix()) {
        assert!(after.same_operation(before), "{}", after.name);
        if !before.parameters().is_empty() {
            assert_ne!(after.parameters(), before.parameters(), "{}", after.name);
        }
    }
    // The classifier's test accuracy is what training last measured.
    let metrics = classifier.evaluate(&rows.test).unwrap();
    assert_eq!(metrics.accuracy, history.final_test_accuracy());
    // Rows of another cut have the same length here (block 15 and 16 both take 4×4×56), but
    // they are not what this classifier takes; nor are plain features.
    let one_block = TrainConfig {
        fine_tune: Some(FineTune {
            blocks: 1,
            ..config.fine_tune.unwrap()
        }),
        ..config.clone()
    };
    let other_rows = ex.extract_for(&split, &one_block).unwrap();
    assert_eq!(other_rows.dim, rows.dim);
    let err = classifier
        .evaluate(&other_rows.test)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cut at step"), "{err}");
    assert!(classifier
        .evaluate(&ex.extract(&split).unwrap().test)
        .is_err());

    // Two phases: the head alone first, numbered on from there.
    let two_phase = TrainConfig {
        fine_tune: Some(FineTune {
            head_steps: 3,
            ..config.fine_tune.unwrap()
        }),
        ..config.clone()
    };
    let (_, history) = train(&rows, &two_phase).unwrap();
    assert_eq!(history.step, vec![0, 2, 3, 7, 10]);

    // The file keeps the blocks; a photo is classified through them, from the photo alone.
    let file = cache.path().join("classifier.safetensors");
    classifier.save(&file).unwrap();
    let loaded = Classifier::load(&file).unwrap();
    assert_eq!(loaded, classifier);
    let photo = &rows.test.paths()[0];
    let ranked = loaded.predict(&ex, photo, 2).unwrap();
    let probabilities = classifier
        .probabilities(rows.test.row(0).unwrap(), 1)
        .unwrap();
    let best = probabilities[ranked[0].label];
    assert!((ranked[0].probability - best).abs() < 1e-5);

    // Another backbone (other weights), or another resize, is refused.
    let other = FeatureExtractor::from_network(Network::random(ex.model(), 2).unwrap()).unwrap();
    let err = loaded.predict(&other, photo, 2).unwrap_err().to_string();
    assert!(err.contains("weights"), "{err}");
    let half_pixel = extractor("0.35_128", cache.path())
        .quiet()
        .resize(flowers_kit::data::image::Resize::TfV2Bilinear);
    let err = loaded
        .predict(&half_pixel, photo, 2)
        .unwrap_err()
        .to_string();
    assert!(err.contains("resize tf_v1_bilinear"), "{err}");

    // Rows and config must agree.
    let plain = ex.extract(&split).unwrap();
    let err = train(&plain, &config).unwrap_err().to_string();
    assert!(err.contains("extract_for"), "{err}");
    let head_only = TrainConfig {
        fine_tune: None,
        ..config.clone()
    };
    assert!(train(&rows, &head_only).is_err());
    let full_batch = TrainConfig {
        batch_size: None,
        ..config
    };
    assert!(ex.extract_for(&split, &full_batch).is_err());

    // A file whose steps are not the network's is refused when it meets the network, not
    // run. Same length, so the safetensors header still parses.
    let mut bytes = fs::read(&file).unwrap();
    let at = bytes
        .windows(15)
        .position(|w| w == b"block_16_expand")
        .expect("a step of block 16 in the header");
    bytes[at..at + 15].copy_from_slice(b"block_16_extend");
    let bad = cache.path().join("bad.safetensors");
    fs::write(&bad, &bytes).unwrap();
    let err = Classifier::load(&bad)
        .unwrap()
        .predict(&ex, photo, 2)
        .unwrap_err()
        .to_string();
    assert!(err.contains("block_16_extend"), "{err}");
}

/// The untrained baseline of notebook 00: the same architecture with seeded random weights.
/// Its features must keep a usable scale through the whole depth (a fan-in computed wrongly
/// for depthwise kernels once made them ~1e-6, which no classifier could use), differ from
/// photo to photo, and be cached apart from the trained network's and from another seed's.
#[test]
fn random_weights_give_an_untrained_network_with_features_of_a_usable_scale() {
    let cache = tempfile::tempdir().unwrap();
    let trained = extractor("0.35_128", cache.path());
    let untrained = FeatureExtractor::with_random_weights(trained.model(), 0)
        .unwrap()
        .cache_dir(cache.path());
    let paths = support::golden_pngs();
    let features = untrained.extract_paths(&paths).unwrap();
    let dim = untrained.feature_dim();
    assert_eq!(features.values.len(), paths.len() * dim);
    assert!(features.values.iter().all(|v| v.is_finite() && *v >= 0.0));
    let mean =
        features.values.iter().map(|&v| f64::from(v)).sum::<f64>() / features.values.len() as f64;
    assert!((0.05..6.0).contains(&mean), "mean feature {mean}");
    let (first, second) = features.values.split_at(dim);
    assert!(first.iter().zip(second).any(|(a, b)| (a - b).abs() > 1e-3));
    // Its own cache entries: neither the trained network's nor another seed's.
    assert_eq!(trained.extract_paths(&paths).unwrap().cache_hits, 0);
    let other_seed = FeatureExtractor::with_random_weights(trained.model(), 1)
        .unwrap()
        .cache_dir(cache.path());
    assert_eq!(other_seed.extract_paths(&paths).unwrap().cache_hits, 0);
    assert_eq!(
        untrained.extract_paths(&paths).unwrap().cache_hits,
        paths.len()
    );
}
