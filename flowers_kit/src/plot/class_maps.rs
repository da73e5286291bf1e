//! Class-activation maps drawn over their photos ([`Picture::grad_cam`],
//! [`Picture::class_maps`]).

use std::path::Path;

use super::pictures::{fit, Thumbnail, MAX_TILES};
use crate::data::image::{decode_rgb8_bytes, read_photo};
use crate::data::Example;
use crate::error::{Error, Result};
use crate::features::FeatureExtractor;
use crate::train::{ClassMap, Classifier, Metrics};

use super::Picture;

impl Picture {
    /// `photo` beside its Grad-CAM map for `class` (an index into the classifier's classes),
    /// drawn over it: lit and tinted yellow where the network found the most evidence for the
    /// class, orange to red for less, darkened where a cell found none (or evidence against
    /// it). Each map is scaled to its own strongest cell, so colours compare
    /// regions of one photo, never two photos: the caption gives the class's probability.
    ///
    /// The map has one cell per cell of the network's last feature map (4×4 for the
    /// tutorial's MobileNet V2 at 128 px, 7×7 at 224), smoothed to the photo's size: it says
    /// which region mattered, not which pixels. `extractor` must be the one the classifier
    /// was trained on.
    ///
    /// ```no_run
    /// # use flowers_kit::prelude::*;
    /// # let (classifier, extractor): (Classifier, FeatureExtractor) = unimplemented!();
    /// let daisy = classifier.classes().iter().position(|c| c == "daisy").unwrap();
    /// Picture::grad_cam(&classifier, &extractor, "my_flower.jpg", daisy)?.evcxr_display();
    /// # Ok::<(), flowers_kit::Error>(())
    /// ```
    pub fn grad_cam(
        classifier: &Classifier,
        extractor: &FeatureExtractor,
        photo: impl AsRef<Path>,
        class: usize,
    ) -> Result<Picture> {
        let path = photo.as_ref();
        let map = classifier.grad_cam(extractor, path, class)?;
        let rgb = read_rgb(path, extractor)?;
        let name = classifier
            .classes()
            .get(map.class)
            .expect("invariant: Classifier::grad_cam checked the class");
        let tiles: Vec<Thumbnail> = vec![
            (Ok(fit(&rgb)), vec![]),
            (
                Ok(overlay(&rgb, &map)),
                vec![super::language::class_map_caption(name, map.probability)],
            ),
        ];
        Picture::of_thumbnails(&tiles, 2)
    }

    /// Grad-CAM maps of test photos, each for the class the classifier predicted: the first
    /// `photos` of `examples` it got right, then its `photos` most confident mistakes
    /// ([`Metrics::top_losses`]), each captioned with the prediction (its probability) and
    /// the label. `metrics` must be the classifier's on `examples` (`classifier.evaluate` of
    /// their features).
    ///
    /// ```no_run
    /// # use flowers_kit::prelude::*;
    /// # let (classifier, extractor, metrics, split): (Classifier, FeatureExtractor, Metrics, Split) = unimplemented!();
    /// Picture::class_maps(&classifier, &extractor, &metrics, &split.test, 2)?; // 2 right, 2 wrong
    /// # Ok::<(), flowers_kit::Error>(())
    /// ```
    pub fn class_maps(
        classifier: &Classifier,
        extractor: &FeatureExtractor,
        metrics: &Metrics,
        examples: &[Example],
        photos: usize,
    ) -> Result<Picture> {
        if photos == 0 || photos > MAX_TILES / 2 {
            return Err(Error::InvalidArgument(format!(
                "show 1 to {} photos of each kind, not {photos}",
                MAX_TILES / 2
            )));
        }
        metrics.check_classes(classifier.classes(), "the classifier")?;
        if metrics
            .misclassified
            .iter()
            .any(|m| m.path.as_os_str().is_empty())
        {
            return Err(Error::InvalidArgument(
                "the metrics do not name their photos: evaluate features extracted from photo \
                 files (`extractor.extract(&split)`)"
                    .into(),
            ));
        }
        let wrong = metrics.mistaken_photos();
        let right = examples
            .iter()
            .filter(|e| !wrong.contains(e.path.as_path()))
            .take(photos)
            .map(|e| (e.path.as_path(), e.label, e.label));
        let mistakes = metrics.top_losses();
        let mistaken = mistakes
            .iter()
            .take(photos)
            .map(|m| (m.path.as_path(), m.prediction, m.label));
        // (photo, the predicted class the map is for, the label)
        let chosen: Vec<(&Path, usize, usize)> = right.chain(mistaken).collect();
        if chosen.is_empty() {
            return Err(Error::InvalidArgument(
                "no test photos to show maps for".into(),
            ));
        }
        let requests: Vec<(&Path, usize)> = chosen.iter().map(|&(p, c, _)| (p, c)).collect();
        let maps = classifier.grad_cams(extractor, &requests)?;
        let mut tiles: Vec<Thumbnail> = Vec::with_capacity(chosen.len());
        for (&(path, class, label), map) in chosen.iter().zip(&maps) {
            // The captions say "prediction": the classifier must really predict it here.
            if map.predicted != class {
                return Err(Error::InvalidArgument(format!(
                    "{}: the classifier predicts class {}, not {class} as the metrics say: \
                     pass the metrics of this classifier on these photos",
                    path.display(),
                    map.predicted
                )));
            }
            let name = |i: usize| {
                classifier.classes().get(i).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "{} has label {i}, but the classifier has {} classes",
                        path.display(),
                        classifier.classes().len()
                    ))
                })
            };
            let caption =
                super::language::mistake_captions(name(class)?, map.probability, name(label)?);
            let rgb = read_rgb(path, extractor)?;
            tiles.push((Ok(overlay(&rgb, map)), caption.to_vec()));
        }
        Picture::of_thumbnails(&tiles, 4)
    }
}

/// The photo, decoded within the extractor's limits (the ones its map was computed under).
fn read_rgb(path: &Path, extractor: &FeatureExtractor) -> Result<image::RgbImage> {
    let limits = extractor.limits();
    decode_rgb8_bytes(&read_photo(path, &limits)?, path, &limits)
}

/// How bright the photo stays where the map is 0, and how much of the heat colour it takes
/// where the map is 1. Darkening the cold regions, not only colouring the hot ones, keeps
/// the map readable on yellow flowers (sunflowers, dandelions), which a yellow tint alone
/// hid.
const COLD_LIGHT: f32 = 0.3;
const HOT_TINT: f32 = 0.5;

/// The photo fitted to a tile, with `map` drawn over it: each pixel lit in proportion to the
/// map's value there (dark where it is 0) and tinted from red (weak) to yellow (strong), the
/// value bilinearly interpolated between the cells' centres (the photo was squeezed to the
/// network's square input, so the cells span the whole photo).
fn overlay(rgb: &image::RgbImage, map: &ClassMap) -> (u32, u32, Vec<u8>) {
    let (w, h, mut pixels) = fit(rgb);
    let values = map.normalised();
    let value = |row: usize, column: usize| values[row * map.width + column];
    // A cell's value at fractional coordinates, clamped at the edges.
    let sample = |v: f32, u: f32| -> f32 {
        let v = v.clamp(0.0, (map.height - 1) as f32);
        let u = u.clamp(0.0, (map.width - 1) as f32);
        let (r0, c0) = (v.floor() as usize, u.floor() as usize);
        let (r1, c1) = ((r0 + 1).min(map.height - 1), (c0 + 1).min(map.width - 1));
        let (dv, du) = (v - r0 as f32, u - c0 as f32);
        let top = value(r0, c0) * (1.0 - du) + value(r0, c1) * du;
        let bottom = value(r1, c0) * (1.0 - du) + value(r1, c1) * du;
        top * (1.0 - dv) + bottom * dv
    };
    for y in 0..h as usize {
        let v = (y as f32 + 0.5) / h as f32 * map.height as f32 - 0.5;
        for x in 0..w as usize {
            let u = (x as f32 + 0.5) / w as f32 * map.width as f32 - 0.5;
            let t = sample(v, u).clamp(0.0, 1.0);
            let heat = [255.0, 40.0 + 200.0 * t, 0.0];
            let (light, tint) = (COLD_LIGHT + (1.0 - COLD_LIGHT) * t, HOT_TINT * t);
            let pixel = &mut pixels[(y * w as usize + x) * 3..][..3];
            for (p, c) in pixel.iter_mut().zip(heat) {
                *p = (f32::from(*p) * light * (1.0 - tint) + c * tint).round() as u8;
            }
        }
    }
    (w, h, pixels)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hot cells light their part of the photo and tint it yellow; cold ones darken theirs.
    #[test]
    fn the_overlay_colours_only_the_hot_region() {
        let grey = image::RgbImage::from_pixel(100, 100, image::Rgb([100, 100, 100]));
        let map = ClassMap {
            class: 0,
            probability: 1.0,
            height: 2,
            width: 2,
            predicted: 0,
            values: vec![3.0, 0.0, 0.0, 0.0], // the top-left quarter only
            channel_weights: vec![],
        };
        let (w, h, pixels) = overlay(&grey, &map);
        let at = |x: u32, y: u32| &pixels[((y * w + x) * 3) as usize..][..3];
        assert_eq!(
            at(w - 1, h - 1),
            [30, 30, 30],
            "a cold corner is the photo, darkened"
        );
        let hot = at(0, 0);
        assert!(
            hot[0] > 150 && hot[0] > hot[2] + 100,
            "the hot corner is red-yellow: {hot:?}"
        );
    }
}
