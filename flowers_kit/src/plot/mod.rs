//! The tutorial's figures with plotters: labelled photo grids and galleries (PNG), and charts
//! (SVG or PNG) — training curves, the confusion matrix, top-k bars, and sweep charts.
//! Every figure displays inline in evcxr and saves with `.save("x.svg" | "x.png")`.

pub mod charts;
pub mod inline;
mod language;
pub mod pictures;

pub use charts::{Chart, Series};
pub use language::{language, set_language, Language, LANGUAGE_VARIABLE};
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
        // The zh-CN figures' font: one weight serves both styles.
        let _ = plotters::style::register_font(
            language::CJK_FAMILY,
            FontStyle::Normal,
            language::CJK_FONT,
        );
        let _ = plotters::style::register_font(
            language::CJK_FAMILY,
            FontStyle::Bold,
            language::CJK_FONT,
        );
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
    let t = language::texts();
    Chart::side_by_side(vec![
        Chart::lines(
            t.loss,
            t.step,
            t.cross_entropy,
            vec![
                Series::new(t.train_batch, points(&history.train_loss)),
                Series::new(t.test, points(&history.test_loss)),
            ],
        )
        .with_size(450, 360),
        Chart::lines(
            t.accuracy_title,
            t.step,
            t.accuracy,
            vec![
                Series::new(t.train_batch, points(&history.train_accuracy)),
                Series::new(t.test, points(&history.test_accuracy)),
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
    let t = language::texts();
    Chart::heatmap(
        &language::confusion_title(metrics.accuracy),
        t.predicted_label,
        t.true_label,
        &metrics.classes,
        &metrics.classes,
        values,
    )
}

/// Top-k class probabilities for one photo, most likely on top.
pub fn top_k(predictions: &[Prediction]) -> Chart {
    let t = language::texts();
    Chart::bars(
        t.prediction,
        t.probability,
        predictions
            .iter()
            .map(|p| (p.class.clone(), f64::from(p.probability))),
    )
}
