//! The tutorial's figures with plotters: labelled photo grids and galleries (PNG), and charts
//! (SVG or PNG) — training curves, the confusion matrix, top-k bars, and sweep charts.
//! Every figure displays inline in evcxr and saves with `.save("x.svg" | "x.png")`.

pub mod charts;
mod class_maps;
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

use crate::features::{Features, Projection};
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

/// Most classes [`feature_space`] draws: one colour each, and the charts' palette has eight
/// that can be told apart.
pub const MAX_MAP_CLASSES: usize = 8;

/// What the network sees: every photo's feature vector as a point in 2-D, coloured by its
/// class — the training photos small and faint, the test photos larger. With `mistakes`
/// (the test [`Metrics`] of a classifier trained on these features), the test photos it got
/// wrong are crossed.
///
/// The two axes are the features' first two principal components, fitted to the training
/// photos ([`Projection::pca`]); the title says how much of the features' variance they
/// show. PCA is a linear projection, like the classifier: kinds that form separate clouds
/// here are kinds a linear head can tell apart, while clouds that overlap here may still be
/// apart in the dimensions the map does not show. 3,670 photos take under a second at 1,280
/// features and about 2 s at 2,048 on two cores.
///
/// ```no_run
/// # use flowers_kit::prelude::*;
/// # let features: Features = unimplemented!();
/// # let metrics: Metrics = unimplemented!();
/// plot::feature_space(&features, None)?;            // right after extraction
/// plot::feature_space(&features, Some(&metrics))?;  // with the test mistakes crossed
/// # Ok::<(), flowers_kit::Error>(())
/// ```
pub fn feature_space(features: &Features, mistakes: Option<&Metrics>) -> crate::Result<Chart> {
    let wrong = mistaken_photos(features, mistakes)?;
    let projection = Projection::pca(features.train.values(), features.dim)?;
    let mut points = class_points(
        &features.train,
        &projection.project(features.train.values())?,
        None,
    );
    points.extend(class_points(
        &features.test,
        &projection.project(features.test.values())?,
        Some(&wrong),
    ));
    let texts = language::feature_space_texts(&features.source.model, projection.explained());
    Ok(Chart::class_points(texts, features.classes.clone(), points))
}

/// [`feature_space`] by t-SNE ([`crate::features::tsne`], perplexity 30) instead of PCA, for
/// the test photos only (its cost grows with the square of the photos: about 2 s for 1,000
/// on two cores, and at most [`crate::features::MAX_TSNE_POINTS`]). Photos that are
/// neighbours in the feature space stay neighbours on the page, so clusters show more
/// clearly than in PCA's flat projection; but t-SNE bends the space, so the distances
/// between clusters and their sizes mean little, and its axes mean nothing.
pub fn feature_space_tsne(features: &Features, mistakes: Option<&Metrics>) -> crate::Result<Chart> {
    let wrong = mistaken_photos(features, mistakes)?;
    let layout = crate::features::tsne(features.test.values(), features.dim, 30.0)?;
    let points = class_points(&features.test, &layout, Some(&wrong));
    let texts = language::tsne_texts(&features.source.model, features.test.len());
    Ok(Chart::class_points(texts, features.classes.clone(), points))
}

/// Checks that `features` can be mapped (plain features, rows as long as they say, labels
/// within the classes, few enough classes to colour) and returns the test photos `mistakes`
/// names.
fn mistaken_photos<'a>(
    features: &Features,
    mistakes: Option<&'a Metrics>,
) -> crate::Result<std::collections::HashSet<&'a std::path::Path>> {
    if let Some(cut) = &features.cut {
        return Err(crate::Error::InvalidArgument(format!(
            "these rows are the activations entering {} (for fine-tuning), not features: map \
             the features of `extractor.extract(&split)` instead",
            cut.block_name()
        )));
    }
    if features.train.cut_key().is_some() {
        return Err(crate::Error::InvalidArgument(
            "these rows are activations at a cut (for fine-tuning), not features".into(),
        ));
    }
    if features.train.dim() != features.dim || features.test.dim() != features.dim {
        return Err(crate::Error::InvalidArgument(format!(
            "the features say {} values per photo, but their rows have {} (train) and {} (test)",
            features.dim,
            features.train.dim(),
            features.test.dim()
        )));
    }
    if features.classes.is_empty() || features.classes.len() > MAX_MAP_CLASSES {
        return Err(crate::Error::InvalidArgument(format!(
            "a feature map shows 1 to {MAX_MAP_CLASSES} classes, not {}",
            features.classes.len()
        )));
    }
    features.train.check_labels(features.classes.len())?;
    features.test.check_labels(features.classes.len())?;
    let Some(metrics) = mistakes else {
        return Ok(Default::default());
    };
    metrics.check_classes(&features.classes, "the features")?;
    if features.test.paths().is_empty() && !metrics.misclassified.is_empty() {
        return Err(crate::Error::InvalidArgument(
            "the test features have no photo paths to find the mistakes by".into(),
        ));
    }
    Ok(metrics.mistaken_photos())
}

/// `set`'s photos at `coordinates`, coloured by label: training photos without `wrong`,
/// test photos with it (those it names crossed).
fn class_points(
    set: &crate::features::FeatureSet,
    coordinates: &[[f32; 2]],
    wrong: Option<&std::collections::HashSet<&std::path::Path>>,
) -> Vec<charts::ClassPoint> {
    use charts::{ClassPoint, PointKind};
    coordinates
        .iter()
        .zip(set.labels())
        .enumerate()
        .map(|(i, (&[x, y], &class))| {
            let kind = match (wrong, set.paths().get(i)) {
                (None, _) => PointKind::Train,
                (Some(wrong), Some(path)) if wrong.contains(path.as_path()) => PointKind::Mistake,
                (Some(_), _) => PointKind::Test,
            };
            ClassPoint {
                x: f64::from(x),
                y: f64::from(y),
                class,
                kind,
            }
        })
        .collect()
}
