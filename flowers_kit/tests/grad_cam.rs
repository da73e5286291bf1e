//! Grad-CAM and the feature map through the whole path: a photo file, the extractor's
//! network, the head, the picture.

mod support;

use std::path::{Path, PathBuf};

use flowers_kit::backend::{Conv, Kernel, Network, Step};
use flowers_kit::features::{FeatureExtractor, FeatureSource, Features};
use flowers_kit::models::graph::Activation as Act;
use flowers_kit::models::Model;
use flowers_kit::plot::{self, Picture};
use flowers_kit::train::head::Dense;
use flowers_kit::train::{Activation, Classifier, Head};

/// A photo 200×200: a red square over its top-left quarter, green everywhere else.
fn red_corner_photo(dir: &Path) -> PathBuf {
    let image = image::RgbImage::from_fn(200, 200, |x, y| {
        if x < 100 && y < 100 {
            image::Rgb([255, 0, 0])
        } else {
            image::Rgb([0, 255, 0])
        }
    });
    let path = dir.join("red_corner.png");
    image.save(&path).unwrap();
    path
}

/// A network whose last map has a "red" channel (1 where the pixel is red) and a "green"
/// one, each cell seeing 8×8 pixels of the 96×96 input (the features are its mean, as in
/// every family).
fn colour_network() -> Network {
    let step = |name: &str, kernel, inputs: Vec<usize>, shape| Step {
        name: name.into(),
        kernel,
        inputs,
        shape,
    };
    // Each output channel sums one input channel over the 8×8 window, divided by 64.
    let mut weights = vec![0.0f32; 8 * 8 * 3 * 2];
    for tap in 0..64 {
        weights[tap * 6] = 1.0 / 64.0; // red → channel 0
        weights[tap * 6 + 2 + 1] = 1.0 / 64.0; // green → channel 1
    }
    let conv = Conv {
        kernel: (8, 8),
        stride: 8,
        pad: [0; 4],
        cin: 3,
        cout: 2,
        depthwise: false,
        weights,
        bias: vec![0.0; 2],
        activation: Act::Relu,
    };
    Network::new(
        Model::parse("mobilenet_v2_0.35_96").unwrap(),
        vec![
            step("input", Kernel::Input, vec![], [96, 96, 3]),
            step("colours", Kernel::Conv(conv), vec![0], [12, 12, 2]),
        ],
        "colour-test".into(),
        None,
    )
    .unwrap()
}

fn source_of(extractor: &FeatureExtractor) -> FeatureSource {
    extractor.source()
}

/// A head that scores class 0 ("red") by channel 0 alone and class 1 ("green") by channel 1.
fn colour_classifier(extractor: &FeatureExtractor) -> Classifier {
    let head = Head::from_layers(
        vec![Dense {
            weights: vec![4.0, 0.0, 0.0, 4.0],
            bias: vec![0.0, 0.0],
            inputs: 2,
            outputs: 2,
        }],
        Activation::Relu,
    )
    .unwrap();
    Classifier::from_parts(
        head,
        vec!["red".into(), "green".into()],
        source_of(extractor),
    )
    .unwrap()
}

/// Where the answer is known: the map for "red" lights the photo's red quarter and nothing
/// else, the map for "green" the other three quarters; and the picture shows it.
#[test]
fn the_map_of_a_class_lights_where_its_evidence_is() {
    let dir = tempfile::tempdir().unwrap();
    let photo = red_corner_photo(dir.path());
    let extractor = FeatureExtractor::from_network(colour_network())
        .unwrap()
        .without_cache();
    let classifier = colour_classifier(&extractor);

    let map = extractor.last_feature_map(&photo).unwrap();
    assert_eq!((map.height(), map.width(), map.channels()), (12, 12, 2));
    let features = extractor.extract_one(&photo).unwrap();
    let pooled = map.pooled();
    assert!(
        pooled
            .iter()
            .zip(&features)
            .all(|(a, b)| (a - b).abs() < 1e-6),
        "{pooled:?} {features:?}"
    );

    let red = classifier.grad_cam(&extractor, &photo, 0).unwrap();
    let green = classifier.grad_cam(&extractor, &photo, 1).unwrap();
    assert_eq!((red.height, red.width), (12, 12));
    for row in 0..12 {
        for column in 0..12 {
            let (r, g) = (
                red.normalised()[row * 12 + column],
                green.normalised()[row * 12 + column],
            );
            let in_red_quarter = row < 6 && column < 6;
            // The resize blends the cells on the square's edge; away from it, the map is sharp.
            let edge = (5..=6).contains(&row) || (5..=6).contains(&column);
            if !edge {
                assert_eq!(r > 0.9, in_red_quarter, "red map at ({row}, {column}): {r}");
                assert_eq!(
                    r < 0.05,
                    !in_red_quarter,
                    "red map at ({row}, {column}): {r}"
                );
                assert_eq!(
                    g > 0.9,
                    !in_red_quarter,
                    "green map at ({row}, {column}): {g}"
                );
            }
        }
    }
    assert!((red.probability + green.probability - 1.0).abs() < 1e-5);
    let p_red = support::predicted_probability(&classifier, &extractor, &photo, "red");
    assert!(
        (p_red - red.probability).abs() < 1e-5,
        "{p_red} vs {}",
        red.probability
    );

    // The picture: the photo, then the photo under the map of "green": lit and warm over the
    // green quarters, dark over the red one.
    let picture = Picture::grad_cam(&classifier, &extractor, &photo, 1).unwrap();
    let png = dir.path().join("green.png");
    picture.save(&png).unwrap();
    let drawn = image::open(&png).unwrap().to_rgb8();
    assert!(drawn.width() > 300, "two tiles side by side");
    let (w, _) = picture.size();
    // The second tile's photo: 150 px wide, centred in its cell on the right half.
    let right_half_pixels: Vec<image::Rgb<u8>> = drawn
        .enumerate_pixels()
        .filter(|(x, _, _)| *x > w / 2)
        .map(|(_, _, p)| *p)
        .collect();
    // The green quarters under a hot map are lit and tinted yellow: red rises from 0.
    assert!(right_half_pixels
        .iter()
        .any(|p| p[0] > 100 && p[1] > 200 && p[2] < 60));
    // The red quarter is cold for "green": darkened red, untinted.
    assert!(right_half_pixels
        .iter()
        .any(|p| (60..=95).contains(&p[0]) && p[1] < 15 && p[2] < 15));

    // Bad requests are errors, not panics.
    assert!(
        classifier.grad_cam(&extractor, &photo, 2).is_err(),
        "no class 2"
    );
    let missing = classifier
        .grad_cam(&extractor, dir.path().join("nope.jpg"), 0)
        .unwrap_err();
    assert!(missing.to_string().contains("nope.jpg"), "{missing}");
    let garbage = dir.path().join("garbage.jpg");
    std::fs::write(&garbage, b"not a photo").unwrap();
    assert!(Picture::grad_cam(&classifier, &extractor, &garbage, 0).is_err());
    let other =
        FeatureExtractor::with_random_weights(Model::parse("mobilenet_v2_0.35_96").unwrap(), 1)
            .unwrap()
            .without_cache();
    assert!(
        classifier.grad_cam(&other, &photo, 0).is_err(),
        "another extractor's network"
    );
}

/// A fine-tuned classifier's maps come from its own blocks, not the extractor's: its map's
/// probability is the one its predictions give, and differs from the plain network's.
#[test]
fn a_fine_tuned_classifier_maps_its_own_network() {
    let model = Model::parse("mobilenet_v2_0.35_96").unwrap();
    let extractor = FeatureExtractor::with_random_weights(model, 3)
        .unwrap()
        .without_cache();
    let photo = support::golden()
        .join("images")
        .join(format!("{}.png", support::GOLDEN_IMAGES[0]));
    let head = Head::new(extractor.feature_dim(), &[], 5, Activation::Relu, 0).unwrap();
    let classes: Vec<String> = (0..5).map(|i| format!("class {i}")).collect();
    let plain = Classifier::from_parts(head.clone(), classes.clone(), extractor.source()).unwrap();
    // "Fine-tuned": the last block's weights scaled, as training would change them.
    let cut = extractor.network().cut(1).unwrap();
    let mut steps = cut.suffix().to_vec();
    for step in &mut steps {
        for weights in step.parameters_mut() {
            weights.iter_mut().for_each(|w| *w *= 1.5);
        }
    }
    let cut = cut.with_weights_from(&steps).unwrap();
    let rows = cut.rows_key();
    let tuned = Classifier::from_parts(head, classes, extractor.source())
        .unwrap()
        .with_fine_tuned(cut, rows)
        .unwrap();
    for class in 0..5 {
        let map = tuned.grad_cam(&extractor, &photo, class).unwrap();
        let p =
            support::predicted_probability(&tuned, &extractor, &photo, &format!("class {class}"));
        assert!(
            (p - map.probability).abs() < 1e-4,
            "{p} vs {}",
            map.probability
        );
        assert!(map.values.iter().all(|v| v.is_finite() && *v >= 0.0));
    }
    let (a, b) = (
        tuned.grad_cam(&extractor, &photo, 0).unwrap(),
        plain.grad_cam(&extractor, &photo, 0).unwrap(),
    );
    assert_ne!(a.values, b.values, "the fine-tuned blocks change the map");
}

/// The feature map of real features: every photo is a point, the mistakes are crossed, and
/// bad input is refused.
#[test]
fn the_feature_space_draws_every_photo_and_crosses_the_mistakes() {
    use flowers_kit::features::FeatureSet;
    // Two well-separated clouds of 3-D "features", one per class.
    let mut values = Vec::new();
    let mut labels = Vec::new();
    let mut paths = Vec::new();
    for i in 0..40 {
        let class = i % 2;
        let offset = if class == 0 { -5.0 } else { 5.0 };
        values.extend([
            offset + (i as f32 * 0.37).sin(),
            (i as f32 * 0.91).cos(),
            0.1 * i as f32,
        ]);
        labels.push(class);
        paths.push(PathBuf::from(format!("photo{i}.jpg")));
    }
    let set = |range: std::ops::Range<usize>| {
        FeatureSet::new(
            values[range.start * 3..range.end * 3].to_vec(),
            3,
            labels[range.clone()].to_vec(),
            paths[range].to_vec(),
        )
        .unwrap()
    };
    let extractor =
        FeatureExtractor::with_random_weights(Model::parse("mobilenet_v2_0.35_96").unwrap(), 0)
            .unwrap();
    let features = Features {
        classes: vec!["daisy".into(), "roses".into()],
        source: extractor.source(),
        dim: 3,
        train: set(0..30),
        validation: FeatureSet::new(vec![], 3, vec![], vec![]).unwrap(),
        test: set(30..40),
        train_views: vec![],
        augment: None,
        cut: None,
    };
    let svg = plot::feature_space(&features, None).unwrap().svg().unwrap();
    assert!(
        svg.contains("daisy") && svg.contains("roses"),
        "a legend entry per class"
    );
    assert!(svg.contains("PCA"));
    let circles = svg.matches("<circle").count();
    assert!(circles >= 40, "every photo drawn: {circles} circles");

    // A classifier that calls everything "daisy" gets the roses wrong: they are crossed.
    let head = Head::from_layers(
        vec![Dense {
            weights: vec![0.0; 6],
            bias: vec![1.0, 0.0],
            inputs: 3,
            outputs: 2,
        }],
        Activation::Relu,
    )
    .unwrap();
    let classifier = Classifier::new(head, &features).unwrap();
    let metrics = classifier.evaluate(&features.test).unwrap();
    assert_eq!(metrics.misclassified.len(), 5);
    let crossed = plot::feature_space(&features, Some(&metrics))
        .unwrap()
        .svg()
        .unwrap();
    assert!(
        crossed.matches("<polyline").count() + crossed.matches("<line").count()
            > svg.matches("<polyline").count() + svg.matches("<line").count()
    );

    // t-SNE of the test photos alone: every test photo drawn, the mistakes crossed.
    let tsne = plot::feature_space_tsne(&features, Some(&metrics))
        .unwrap()
        .svg()
        .unwrap();
    assert!(tsne.contains("t-SNE") && tsne.contains("10 test photos"));
    assert!(tsne.matches("<circle").count() >= 10);

    // Bad input: features that cannot be projected, metrics of other classes.
    let mut flat = features.clone();
    flat.train = FeatureSet::new(vec![1.0; 30 * 3], 3, vec![0; 30], vec![]).unwrap();
    assert!(plot::feature_space(&flat, None).is_err());
    let mut other = metrics.clone();
    other.classes = vec!["a".into(), "b".into()];
    assert!(plot::feature_space(&features, Some(&other)).is_err());
    assert!(plot::feature_space_tsne(&features, Some(&other)).is_err());
}

/// The tutorial's network with its real ImageNet weights: the last feature map (4×4 cells of
/// 1,280) of each golden photo averages to TensorFlow's features of it.
#[test]
fn mobilenet_v2_maps_average_to_tensorflows_features() {
    let extractor = FeatureExtractor::with_weights(
        Model::parse("mobilenet_v2_0.35_128").unwrap(),
        Some(
            support::golden()
                .join("mobilenet_v2_0.35_128_no_top.h5")
                .to_str()
                .unwrap(),
        ),
    )
    .unwrap()
    .without_cache();
    let photos = support::golden_pngs();
    let (_, golden) = support::tensor_f32(
        &support::golden().join("mobilenet_v2_0.35_128.safetensors"),
        "features",
    );
    let map = extractor.last_feature_map(&photos[0]).unwrap();
    assert_eq!((map.height(), map.width(), map.channels()), (4, 4, 1280));
    support::check_class_maps(&extractor, &photos, &golden, 1e-4);
}

/// The gallery of maps: right answers first, then mistakes, each for the predicted class;
/// metrics that are not this classifier's on these photos, or that name no photos, are
/// refused instead of captioned wrongly.
#[test]
fn class_maps_show_right_and_wrong_answers_and_refuse_metrics_of_other_photos() {
    use flowers_kit::data::Example;
    use flowers_kit::features::FeatureSet;
    use flowers_kit::train::Metrics;
    let dir = tempfile::tempdir().unwrap();
    let plain = |name: &str, rgb: [u8; 3]| {
        let path = dir.path().join(name);
        image::RgbImage::from_pixel(64, 48, image::Rgb(rgb))
            .save(&path)
            .unwrap();
        path
    };
    // A red photo labelled red (right) and a green one labelled red (wrong).
    let examples = vec![
        Example {
            path: plain("red.png", [255, 0, 0]),
            label: 0,
        },
        Example {
            path: plain("green.png", [0, 255, 0]),
            label: 0,
        },
    ];
    let extractor = FeatureExtractor::from_network(colour_network())
        .unwrap()
        .without_cache();
    let classifier = colour_classifier(&extractor);
    let paths: Vec<PathBuf> = examples.iter().map(|e| e.path.clone()).collect();
    let rows = extractor.extract_paths(&paths).unwrap();
    let set = FeatureSet::new(rows.values, 2, vec![0, 0], paths.clone()).unwrap();
    let metrics = classifier.evaluate(&set).unwrap();
    assert_eq!(metrics.misclassified.len(), 1);
    let picture = Picture::class_maps(&classifier, &extractor, &metrics, &examples, 1).unwrap();
    let (w, h) = picture.size();
    assert!(w > 300 && h > 150, "two tiles: {w}×{h}");

    // Metrics of another classifier's answers: the green photo "right" as red.
    let lying =
        Metrics::from_probabilities(classifier.classes(), &[0, 0], &[1.0, 0.0, 1.0, 0.0], &paths)
            .unwrap();
    let Err(error) = Picture::class_maps(&classifier, &extractor, &lying, &examples, 2) else {
        panic!("metrics that call the green photo red were accepted");
    };
    assert!(error.to_string().contains("green.png"), "{error}");
    // Metrics without photo paths cannot be matched to photos.
    let nameless = classifier
        .evaluate(&FeatureSet::new(set.values().to_vec(), 2, vec![0, 0], vec![]).unwrap())
        .unwrap();
    assert!(Picture::class_maps(&classifier, &extractor, &nameless, &examples, 1).is_err());
    assert!(Picture::class_maps(&classifier, &extractor, &metrics, &examples, 0).is_err());
}
