//! Class-activation maps (Grad-CAM, Selvaraju et al. 2017): where in a photo the network
//! found the evidence for a class.
//!
//! The class's score (its logit) is differentiated with respect to the last convolutional
//! feature map `A` (`h × w` cells of `C` channels). Each channel `k` gets the weight
//! `α_k`, the mean of those gradients over the cells, and the map is
//! `ReLU(Σ_k α_k · A_k)`: the cells whose channels push the score up. In every family the
//! map is followed by a global average pooling and the head, so `∂score/∂A_k(cell)` is the
//! head's gradient with respect to feature `k` divided by the number of cells, the same at
//! every cell, and `α_k` is exactly that. A fine-tuned classifier's map comes from its own
//! blocks (it runs its fine-tuned network).

use std::path::Path;

use super::head::Head;
use super::Classifier;
use crate::error::{Error, Result};
use crate::features::{FeatureExtractor, FeatureMap};

/// A Grad-CAM map of one photo for one class.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassMap {
    /// The class the map is for (an index into the classifier's classes).
    pub class: usize,
    /// The classifier's probability for that class, on this photo.
    pub probability: f32,
    /// The class the classifier predicts for this photo (its most probable).
    pub predicted: usize,
    /// Rows of cells (the last feature map's height: 4 for MobileNet V2 at 128 px).
    pub height: usize,
    /// Columns of cells.
    pub width: usize,
    /// `ReLU(Σ_k α_k · A_k)` per cell, row-major: how much the cell's features raise the
    /// class's score. 0 where they do not.
    pub values: Vec<f32>,
    /// `α_k` per channel: the gradient of the class's score with respect to each cell's
    /// channel `k`.
    pub channel_weights: Vec<f32>,
}

impl ClassMap {
    /// The values divided by the largest, so 0 to 1 (all 0 when no cell raises the score).
    pub fn normalised(&self) -> Vec<f32> {
        let max = self.values.iter().copied().fold(0.0f32, f32::max);
        if max > 0.0 {
            self.values.iter().map(|v| v / max).collect()
        } else {
            vec![0.0; self.values.len()]
        }
    }
}

/// The Grad-CAM map of `map` for `class` under `head` (whose inputs are the map's mean over
/// its cells): the channel weights `α` and `ReLU(Σ_k α_k · A_k)`, with the class's score.
pub fn class_map_of(head: &Head, map: &FeatureMap, class: usize) -> Result<(ClassMap, f32)> {
    let cells = map.height() * map.width();
    let features = map.pooled();
    let (score, gradient) = head.class_score_gradient(&features, class)?;
    // FeatureMap::new refuses empty maps, so there is at least one cell.
    let channel_weights: Vec<f32> = gradient.iter().map(|g| g / cells as f32).collect();
    let values: Vec<f32> = map
        .values()
        .chunks_exact(map.channels())
        .map(|cell| {
            let sum: f64 = cell
                .iter()
                .zip(&channel_weights)
                .map(|(&a, &w)| f64::from(a) * f64::from(w))
                .sum();
            sum.max(0.0) as f32
        })
        .collect();
    if values.iter().any(|v| !v.is_finite()) {
        return Err(Error::InvalidArgument(
            "the class-activation map is not finite (weights or features too large?)".into(),
        ));
    }
    let probabilities = head.probabilities(&features, 1)?;
    let predicted = super::metrics::most_probable(&probabilities).0;
    Ok((
        ClassMap {
            class,
            probability: probabilities[class],
            predicted,
            height: map.height(),
            width: map.width(),
            values,
            channel_weights,
        },
        score,
    ))
}

impl Classifier {
    /// The Grad-CAM map of `photo` for `class` (an index into [`Classifier::classes`]):
    /// where the network found evidence for that class. `extractor` must be the one the
    /// classifier was trained on; a fine-tuned classifier runs its own blocks.
    ///
    /// ```no_run
    /// # use flowers_kit::prelude::*;
    /// # let (classifier, extractor): (Classifier, FeatureExtractor) = unimplemented!();
    /// let tulips = classifier.classes().iter().position(|c| c == "tulips").unwrap();
    /// let map = classifier.grad_cam(&extractor, "photo.jpg", tulips)?;
    /// println!("{}×{} cells, p(tulips) = {:.2}", map.height, map.width, map.probability);
    /// # Ok::<(), flowers_kit::Error>(())
    /// ```
    pub fn grad_cam(
        &self,
        extractor: &FeatureExtractor,
        photo: impl AsRef<Path>,
        class: usize,
    ) -> Result<ClassMap> {
        let mut maps = self.grad_cams(extractor, &[(photo.as_ref(), class)])?;
        Ok(maps.pop().expect("invariant: one map per photo"))
    }

    /// [`Classifier::grad_cam`] of several photos, each for its own class, preparing the
    /// network once.
    pub fn grad_cams(
        &self,
        extractor: &FeatureExtractor,
        photos: &[(&Path, usize)],
    ) -> Result<Vec<ClassMap>> {
        if let Some((photo, class)) = photos.iter().find(|(_, c)| *c >= self.classes().len()) {
            return Err(Error::InvalidArgument(format!(
                "{}: class {class} is not one of the classifier's {} classes",
                photo.display(),
                self.classes().len()
            )));
        }
        let paths: Vec<&Path> = photos.iter().map(|(p, _)| *p).collect();
        let maps = match self.fine_tuned_extractor(extractor)? {
            None => extractor.last_feature_maps(&paths)?,
            Some(fine_tuned) => fine_tuned.last_feature_maps(&paths)?,
        };
        maps.iter()
            .zip(photos)
            .map(|(map, (photo, class))| {
                class_map_of(self.head(), map, *class)
                    .map(|(cam, _)| cam)
                    .map_err(|e| Error::InvalidArgument(format!("{}: {e}", photo.display())))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::head::Dense;
    use crate::train::Activation;
    use rand::{Rng, SeedableRng};

    /// The channel weights are the derivative of the class's score with respect to every
    /// cell of the map, checked by finite differences through the pooling and a head with a
    /// hidden ReLU layer.
    #[test]
    fn channel_weights_are_the_score_gradient_at_every_cell() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        // Cells (6) and channels (5) differ, so dividing by the wrong one fails.
        let (channels, hidden, classes) = (5, 4, 3);
        let mut dense = |inputs: usize, outputs: usize| Dense {
            weights: (0..inputs * outputs)
                .map(|_| rng.gen_range(-1.0..1.0))
                .collect(),
            bias: (0..outputs).map(|_| rng.gen_range(-0.1..0.1)).collect(),
            inputs,
            outputs,
        };
        let head = Head::from_layers(
            vec![dense(channels, hidden), dense(hidden, classes)],
            Activation::Relu,
        )
        .unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let map = FeatureMap::new(
            3,
            2,
            channels,
            (0..3 * 2 * channels)
                .map(|_| rng.gen_range(0.0..2.0))
                .collect(),
        )
        .unwrap();
        // The scores are the head's own logits: their softmax is its probabilities.
        let scores: Vec<f32> = (0..classes)
            .map(|c| class_map_of(&head, &map, c).unwrap().1)
            .collect();
        let total: f32 = scores.iter().map(|s| s.exp()).sum();
        let probabilities = head.probabilities(&map.pooled(), 1).unwrap();
        for (s, p) in scores.iter().zip(&probabilities) {
            assert!(
                (s.exp() / total - p).abs() < 1e-5,
                "{scores:?} {probabilities:?}"
            );
        }
        for class in 0..classes {
            let (cam, score) = class_map_of(&head, &map, class).unwrap();
            for i in 0..map.values().len() {
                let h = 1e-2f32;
                let shifted = |d: f32| {
                    let mut values = map.values().to_vec();
                    values[i] += d;
                    let shifted = FeatureMap::new(3, 2, channels, values).unwrap();
                    class_map_of(&head, &shifted, class).unwrap().1
                };
                let numeric = (shifted(h) - shifted(-h)) / (2.0 * h);
                let analytic = cam.channel_weights[i % channels];
                assert!(
                    (numeric - analytic).abs() < 1e-3,
                    "class {class}, value {i}: {numeric} vs {analytic} (score {score})"
                );
            }
        }
    }

    /// A head that reads only channel 0, on a map whose channel 0 is active in one corner
    /// only: the map lights that corner and nothing else.
    #[test]
    fn the_map_lights_only_where_the_class_evidence_is() {
        let head = Head::from_layers(
            vec![Dense {
                weights: vec![2.0, 0.0, 0.0, 1.0], // class 0 ← channel 0, class 1 ← channel 1
                bias: vec![0.0, 0.0],
                inputs: 2,
                outputs: 2,
            }],
            Activation::Relu,
        )
        .unwrap();
        // 3×3 cells; channel 0 is 1 in the top-left cell, channel 1 is 1 everywhere.
        let values = (0..9)
            .flat_map(|cell| [if cell == 0 { 1.0 } else { 0.0 }, 1.0])
            .collect();
        let map = FeatureMap::new(3, 3, 2, values).unwrap();
        let (cam, _) = class_map_of(&head, &map, 0).unwrap();
        assert_eq!(
            cam.normalised(),
            [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        );
        let (cam, _) = class_map_of(&head, &map, 1).unwrap();
        assert_eq!(cam.normalised(), [1.0; 9]);
        assert!(class_map_of(&head, &map, 2).is_err(), "no class 2");
    }
}
