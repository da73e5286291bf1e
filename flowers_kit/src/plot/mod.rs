//! The tutorial's figures with plotters: labelled photo grids and galleries (PNG), and charts
//! (SVG or PNG) — training curves, the confusion matrix, top-k bars, and sweep charts.
//! Every figure displays inline in evcxr and saves with `.save("x.svg" | "x.png")`.

pub mod charts;
pub mod inline;
pub mod pictures;

pub use charts::{Chart, Series};
pub use pictures::{Gallery, Picture};

use std::sync::Once;

/// Registers the embedded DejaVu Sans as plotters' sans-serif font (once per process), so
/// text renders the same on a machine with no fonts installed.
pub(crate) fn ensure_fonts() {
    static FONTS: Once = Once::new();
    FONTS.call_once(|| {
        use plotters::style::FontStyle;
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
        let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

/// A plotters error as this crate's error.
pub(crate) fn plot_error(e: impl std::fmt::Display) -> crate::Error {
    crate::Error::Plot(e.to_string())
}

use crate::train::{History, Metrics, Prediction};

/// Training curves: loss and accuracy against step, train and test, side by side.
pub fn curves(history: &History) -> Chart {
    let points = |values: &[f32]| -> Vec<(f64, f64)> {
        history
            .step
            .iter()
            .zip(values)
            .map(|(&s, &v)| (s as f64, f64::from(v)))
            .collect()
    };
    Chart::side_by_side(vec![
        Chart::lines(
            "Loss",
            "step",
            "cross-entropy",
            vec![
                Series::new("train (batch)", points(&history.train_loss)),
                Series::new("test", points(&history.test_loss)),
            ],
        )
        .with_size(450, 360),
        Chart::lines(
            "Accuracy",
            "step",
            "accuracy",
            vec![
                Series::new("train (batch)", points(&history.train_accuracy)),
                Series::new("test", points(&history.test_accuracy)),
            ],
        )
        .with_size(450, 360),
    ])
}

/// The row-normalised confusion matrix as an annotated heat map, true labels down the side
/// and predictions along the bottom (the tutorial's seaborn figure).
pub fn confusion(metrics: &Metrics) -> crate::Result<Chart> {
    let values = metrics
        .confusion_normalized()
        .into_iter()
        .map(|row| row.into_iter().map(f64::from).collect::<Vec<f64>>());
    Chart::heatmap(
        &format!(
            "Confusion matrix (test accuracy {:.1}%)",
            metrics.accuracy * 100.0
        ),
        "predicted label",
        "true label",
        &metrics.classes,
        &metrics.classes,
        values,
    )
}

/// Top-k class probabilities for one photo, most likely on top.
pub fn top_k(predictions: &[Prediction]) -> Chart {
    Chart::bars(
        "Prediction",
        "probability",
        predictions
            .iter()
            .map(|p| (p.class.clone(), f64::from(p.probability))),
    )
}
