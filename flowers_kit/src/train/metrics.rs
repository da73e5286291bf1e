//! Accuracy, confusion matrix, per-class precision/recall/F1 and the misclassified photos.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

/// Precision, recall and F1 of one class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassMetrics {
    /// Class name.
    pub class: String,
    /// Of the photos predicted as this class, the share that are.
    pub precision: f32,
    /// Of the photos of this class, the share predicted as it.
    pub recall: f32,
    /// Harmonic mean of precision and recall.
    pub f1: f32,
    /// Photos of this class.
    pub support: usize,
}

/// A photo the classifier got wrong.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mistake {
    /// The photo.
    pub path: PathBuf,
    /// Its true label.
    pub label: usize,
    /// The predicted label.
    pub prediction: usize,
    /// The probability given to the prediction.
    pub probability: f32,
    /// The probability given to the true label: the smaller, the larger the photo's loss
    /// (`−ln` of it).
    pub label_probability: f32,
}

impl Mistake {
    /// The photo's cross-entropy loss, `−ln p(label)`: how wrong the classifier was.
    pub fn loss(&self) -> f32 {
        -self.label_probability.max(1e-12).ln()
    }
}

/// How a classifier did on a set of examples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    /// Class names in label order.
    pub classes: Vec<String>,
    /// Share of correct predictions.
    pub accuracy: f32,
    /// Mean cross-entropy.
    pub loss: f32,
    /// `confusion[label][prediction]` counts.
    pub confusion: Vec<Vec<usize>>,
    /// Per class, in label order.
    pub per_class: Vec<ClassMetrics>,
    /// Every wrong prediction, in example order.
    pub misclassified: Vec<Mistake>,
}

impl Metrics {
    /// Computes everything from class probabilities `[n, classes]` (rows sum to 1). Every
    /// label must be a class index, and `paths` is empty or one per label.
    pub fn from_probabilities(
        classes: &[String],
        labels: &[usize],
        probabilities: &[f32],
        paths: &[PathBuf],
    ) -> Result<Metrics> {
        let k = classes.len();
        let n = labels.len();
        if k == 0 || Some(probabilities.len()) != n.checked_mul(k) {
            return Err(Error::InvalidArgument(format!(
                "{} probabilities are not {n} rows of {k} classes",
                probabilities.len()
            )));
        }
        if let Some(label) = labels.iter().find(|&&l| l >= k) {
            return Err(Error::InvalidArgument(format!(
                "label {label} is out of range for {k} classes"
            )));
        }
        if !paths.is_empty() && paths.len() != n {
            return Err(Error::InvalidArgument(format!(
                "{} paths for {n} labels",
                paths.len()
            )));
        }
        let mut confusion = vec![vec![0usize; k]; k];
        let mut misclassified = Vec::new();
        let mut loss = 0f64;
        for (i, &label) in labels.iter().enumerate() {
            let row = &probabilities[i * k..][..k];
            let (prediction, probability) = most_probable(row);
            confusion[label][prediction] += 1;
            loss -= f64::from(row[label].max(1e-12)).ln();
            if prediction != label {
                misclassified.push(Mistake {
                    path: paths.get(i).cloned().unwrap_or_default(),
                    label,
                    prediction,
                    probability,
                    label_probability: row[label],
                });
            }
        }
        let correct: usize = (0..k).map(|c| confusion[c][c]).sum();
        let per_class = (0..k)
            .map(|c| {
                let support: usize = confusion[c].iter().sum();
                let predicted: usize = (0..k).map(|r| confusion[r][c]).sum();
                let hits = confusion[c][c] as f32;
                let precision = if predicted > 0 {
                    hits / predicted as f32
                } else {
                    0.0
                };
                let recall = if support > 0 {
                    hits / support as f32
                } else {
                    0.0
                };
                let f1 = if precision + recall > 0.0 {
                    2.0 * precision * recall / (precision + recall)
                } else {
                    0.0
                };
                ClassMetrics {
                    class: classes[c].clone(),
                    precision,
                    recall,
                    f1,
                    support,
                }
            })
            .collect();
        Ok(Metrics {
            classes: classes.to_vec(),
            accuracy: if n > 0 {
                correct as f32 / n as f32
            } else {
                0.0
            },
            loss: if n > 0 { (loss / n as f64) as f32 } else { 0.0 },
            confusion,
            per_class,
            misclassified,
        })
    }

    /// The photos of the wrong predictions, to find them among a set's photos (a mistake
    /// computed without paths has an empty one).
    pub fn mistaken_photos(&self) -> std::collections::HashSet<&Path> {
        self.misclassified
            .iter()
            .map(|m| m.path.as_path())
            .collect()
    }

    /// Errors unless these metrics are for `classes` (the same names, in the same order),
    /// `whose` naming what the classes came from in the message.
    pub fn check_classes(&self, classes: &[String], whose: &str) -> Result<()> {
        if self.classes != classes {
            return Err(Error::InvalidArgument(format!(
                "the metrics are for the classes {:?}, {whose} for {classes:?}",
                self.classes
            )));
        }
        Ok(())
    }

    /// The wrong predictions, the most confidently wrong first: fastai's "top losses",
    /// sorted by each photo's loss (`−ln p(label)`), largest first.
    pub fn top_losses(&self) -> Vec<&Mistake> {
        let mut sorted: Vec<&Mistake> = self.misclassified.iter().collect();
        sorted.sort_by(|a, b| b.loss().total_cmp(&a.loss()));
        sorted
    }

    /// The (true class, predicted class, photos) pairs confused at least `min_count` times,
    /// most often first: the off-diagonal of the confusion matrix, as fastai's
    /// `most_confused` lists it.
    ///
    /// ```
    /// use flowers_kit::train::Metrics;
    /// let classes = vec!["a".to_string(), "b".to_string()];
    /// // Two photos of class a, both taken for b.
    /// let m = Metrics::from_probabilities(&classes, &[0, 0], &[0.2, 0.8, 0.3, 0.7], &[])?;
    /// assert_eq!(m.most_confused(1), vec![("a".to_string(), "b".to_string(), 2)]);
    /// # Ok::<(), flowers_kit::Error>(())
    /// ```
    pub fn most_confused(&self, min_count: usize) -> Vec<(String, String, usize)> {
        let mut pairs = Vec::new();
        for (label, row) in self.confusion.iter().enumerate() {
            for (prediction, &count) in row.iter().enumerate() {
                if label != prediction && count >= min_count.max(1) {
                    pairs.push((
                        self.classes[label].clone(),
                        self.classes[prediction].clone(),
                        count,
                    ));
                }
            }
        }
        pairs.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (&a.0, &a.1).cmp(&(&b.0, &b.1))));
        pairs
    }

    /// A text table of per-class precision, recall, F1 and support, with the accuracy.
    pub fn report(&self) -> String {
        let width = self
            .classes
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(5)
            .max(8);
        let mut out = format!("{:width$}  precision  recall     f1  support\n", "");
        for c in &self.per_class {
            out += &format!(
                "{:width$}  {:>9.3}  {:>6.3}  {:>5.3}  {:>7}\n",
                c.class, c.precision, c.recall, c.f1, c.support
            );
        }
        let total: usize = self.per_class.iter().map(|c| c.support).sum();
        out += &format!(
            "{:width$}  {:>9}  {:>6}  {:>5.3}  {:>7}\n",
            "accuracy", "", "", self.accuracy, total
        );
        out
    }

    /// The confusion matrix with each row divided by its total (the tutorial's heat map).
    pub fn confusion_normalized(&self) -> Vec<Vec<f32>> {
        self.confusion
            .iter()
            .map(|row| {
                let total: usize = row.iter().sum();
                row.iter()
                    .map(|&c| {
                        if total > 0 {
                            c as f32 / total as f32
                        } else {
                            0.0
                        }
                    })
                    .collect()
            })
            .collect()
    }
}

/// The most probable class of one row of probabilities (or logits: softmax keeps the order)
/// and its value; the first one on ties, and class 0 for an empty or all-NaN row. Training's
/// accuracy and [`Metrics`] both answer with it, so they agree on the same classifier.
pub(crate) fn most_probable(row: &[f32]) -> (usize, f32) {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (class, &p)| {
            if p > best.1 {
                (class, p)
            } else {
                best
            }
        })
}
