//! Regenerates docs/figures: one figure of each kind, from the 750-photo sample and the real
//! MobileNet V2 0.35/224 weights.
//!
//! cargo run --release --example figures -- ../shared/data/flower_photos_sample \
//!     ../shared/golden/mobilenet_v2_0.35_224_no_top.h5 docs/figures

use std::path::PathBuf;

use flowers_kit::features::FeatureExtractor;
use flowers_kit::plot::{self, Chart, Gallery, Picture, Series};
use flowers_kit::prelude::*;

fn main() -> flowers_kit::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [data, weights, out] = args.as_slice() else {
        eprintln!("usage: figures DATA_DIR WEIGHTS.h5 OUT_DIR");
        std::process::exit(2);
    };
    let out = PathBuf::from(out);
    let split = Dataset::open(data)?.split(0.8, 2018)?;
    Picture::labelled(&split.train[..15], split.classes(), 5)?.save(out.join("grid.png"))?;

    let model = MobileNetV2::parse("mobilenet_v2_0.35_224")?;
    let extractor = FeatureExtractor::with_weights(model, Some(weights.as_str()))?;
    let features = extractor.extract(&split)?;
    let (classifier, history) = train(&features, &TrainConfig::default())?;
    plot::curves(&history).save(out.join("curves.png"))?;
    let metrics = classifier.evaluate(&features.test)?;
    plot::confusion(&metrics)?.save(out.join("confusion.png"))?;
    Picture::mistakes(&metrics, Gallery::default())?.save(out.join("misclassified.png"))?;
    let photo = &split.test[0].path;
    plot::top_k(&classifier.predict(&extractor, photo, 5)?).save(out.join("top_k.png"))?;

    let quiet = TrainConfig {
        verbose: false,
        ..Default::default()
    };
    let mut series = Vec::new();
    for lr in [0.003f32, 0.01, 0.03, 0.1] {
        let (_, h) = train(
            &features,
            &TrainConfig {
                learning_rate: lr,
                steps: 200,
                ..quiet.clone()
            },
        )?;
        let points = h
            .step
            .iter()
            .zip(&h.test_accuracy)
            .map(|(&s, &a)| (s as f64, f64::from(a)))
            .collect();
        series.push(Series::new(format!("lr {lr}"), points));
    }
    Chart::lines(
        "Test accuracy by learning rate",
        "step",
        "test accuracy",
        series,
    )
    .save(out.join("sweep_lines.png"))?;
    let (lrs, batches) = ([0.003f32, 0.01, 0.03, 0.1], [5usize, 10, 50, 100]);
    let mut grid = Vec::new();
    for lr in lrs {
        let mut row = Vec::new();
        for b in batches {
            let config = TrainConfig {
                learning_rate: lr,
                batch_size: Some(b),
                ..quiet.clone()
            };
            row.push(f64::from(
                train(&features, &config)?.1.final_test_accuracy(),
            ));
        }
        grid.push(row);
    }
    Chart::heatmap(
        "Test accuracy after 100 steps",
        "batch size",
        "learning rate",
        batches,
        lrs,
        &grid,
    )?
    .save(out.join("sweep_heatmap.png"))?;
    println!("figures written to {}", out.display());
    Ok(())
}
