//! Random distortions of training photos, as TensorFlow's image retraining script
//! (`retrain.py`, the tutorial's "learn more" pointer) applies them.
//!
//! A view of a photo is: resize to `size · (1 + crop/100) · u` with `u` uniform in
//! `[1, 1 + scale/100]`, cut a random `size × size` square out of it, flip it left to right
//! with probability ½ (when enabled), and multiply every value by a brightness uniform in
//! `[1 − brightness/100, 1 + brightness/100]` (not clipped, as `retrain.py` does not).
//! Every draw comes from a seed derived from the photo's bytes, the view's index and
//! [`Augment::seed`], so a view is the same every time it is computed, and its features
//! can be cached like the plain ones.

use std::str::FromStr;

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::data::image::{resize_rgb8, Image, Resize};
use crate::digest::sha256_hex;
use crate::error::{Error, Result};

/// The largest `crop` and `scale` accepted, in percent: a view is then resized to at most
/// 4× the model's input side before it is cropped.
pub const MAX_PERCENT: f32 = 100.0;

/// How training photos are distorted: `retrain.py`'s `--flip_left_right`, `--random_crop`,
/// `--random_scale` and `--random_brightness`, with their meanings (percentages).
///
/// ```
/// use flowers_kit::data::augment::Augment;
/// let augment: Augment = "flip,crop=10,scale=10,brightness=10".parse()?;
/// assert_eq!(augment, Augment::default());
/// assert!("crop=500".parse::<Augment>().is_err());
/// # Ok::<(), flowers_kit::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// Mirror half of the views left to right.
    pub flip_left_right: bool,
    /// Margin cropped off, in percent of the photo's side (0–100).
    pub crop: f32,
    /// Extra random enlargement before cropping, in percent (0–100).
    pub scale: f32,
    /// Brightness multiplier range, in percent either side of 1 (0–100).
    pub brightness: f32,
    /// Seeds the views: another seed draws other views (and misses the feature cache).
    pub seed: u64,
}

impl Default for Augment {
    /// A mild recipe: flips, 10 % crop, 10 % scale, ±10 % brightness.
    fn default() -> Self {
        Augment {
            flip_left_right: true,
            crop: 10.0,
            scale: 10.0,
            brightness: 10.0,
            seed: 0,
        }
    }
}

impl Augment {
    /// Errors unless `crop`, `scale` and `brightness` are numbers in `0..=100`.
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("crop", self.crop),
            ("scale", self.scale),
            ("brightness", self.brightness),
        ] {
            if !(value.is_finite() && (0.0..=MAX_PERCENT).contains(&value)) {
                return Err(Error::InvalidArgument(format!(
                    "augmentation {name} must be a percentage from 0 to 100, got {value}"
                )));
            }
        }
        Ok(())
    }

    /// A stable text naming every parameter exactly (cache keys, classifier files).
    pub fn key(&self) -> String {
        format!(
            "flip={} crop={:08x} scale={:08x} brightness={:08x} seed={}",
            self.flip_left_right,
            self.crop.to_bits(),
            self.scale.to_bits(),
            self.brightness.to_bits(),
            self.seed
        )
    }

    /// The cache key of view `view` of the photo whose plain key (its bytes' SHA-256) is
    /// `photo_key`.
    pub fn view_key(&self, photo_key: &str, view: usize) -> String {
        sha256_hex(format!("{photo_key}|{}|view {view}", self.key()).as_bytes())
    }

    /// View `view` of a decoded photo as a `size × size` image in [0, 1] × brightness,
    /// resized with `method`. `photo_key` (the photo's SHA-256) and `view` seed the draws.
    pub fn view(
        &self,
        rgb: &image::RgbImage,
        size: usize,
        method: Resize,
        photo_key: &str,
        view: usize,
    ) -> Result<Image> {
        self.validate()?;
        if size == 0 || size > super::image::MAX_RESOLUTION {
            return Err(Error::InvalidArgument(format!(
                "a view is 1 to {} pixels wide, not {size}",
                super::image::MAX_RESOLUTION
            )));
        }
        let digest = sha256_hex(self.view_key(photo_key, view).as_bytes());
        let seed = u64::from_str_radix(&digest[..16], 16)
            .expect("invariant: a SHA-256 hex digest starts with 16 hex digits");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // retrain.py: precrop = size · margin · uniform(1, 1 + scale), cast to int.
        let margin = 1.0 + f64::from(self.crop) / 100.0;
        let enlarge = 1.0 + f64::from(self.scale) / 100.0;
        let factor = margin
            * if enlarge > 1.0 {
                rng.gen_range(1.0..enlarge)
            } else {
                1.0
            };
        // At most 4 · size: validate() bounds crop and scale.
        let precrop = ((size as f64 * factor) as usize).max(size);
        let big = resize_rgb8(rgb, precrop, precrop, method)?;
        let (top, left) = (
            rng.gen_range(0..=precrop - size),
            rng.gen_range(0..=precrop - size),
        );
        let flip = self.flip_left_right && rng.gen_bool(0.5);
        let spread = f64::from(self.brightness) / 100.0;
        // A spread too small to move 1.0 in f64 (brightness=1e-20) is no spread: the range
        // would be empty.
        let (low, high) = (1.0 - spread, 1.0 + spread);
        let brightness = if low < high {
            rng.gen_range(low..high) as f32
        } else {
            1.0
        };
        let mut data = Vec::with_capacity(size * size * 3);
        for row in big.data.chunks_exact(precrop * 3).skip(top).take(size) {
            let window = row.get(left * 3..(left + size) * 3).ok_or_else(|| {
                Error::InvalidArgument("augmentation crop outside the image".into())
            })?;
            let mut pixels: Vec<&[f32]> = window.chunks_exact(3).collect();
            if flip {
                pixels.reverse();
            }
            data.extend(pixels.into_iter().flatten().map(|v| v * brightness));
        }
        Ok(Image {
            height: size,
            width: size,
            data,
        })
    }
}

impl FromStr for Augment {
    type Err = Error;

    /// `flip,crop=10,scale=10,brightness=10,seed=1`: every item optional, the ones left out
    /// off (0); `none` for no distortion at all.
    fn from_str(text: &str) -> Result<Augment> {
        let mut augment = Augment {
            flip_left_right: false,
            crop: 0.0,
            scale: 0.0,
            brightness: 0.0,
            seed: 0,
        };
        let bad = |item: &str, why: &str| {
            Error::InvalidArgument(format!(
                "augmentation `{item}`: {why} (expected e.g. flip,crop=10,scale=10,brightness=10)"
            ))
        };
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if item == "flip" {
                augment.flip_left_right = true;
                continue;
            }
            if item == "none" {
                continue;
            }
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| bad(item, "not `flip` nor name=value"))?;
            let percent = || {
                value
                    .trim()
                    .parse::<f32>()
                    .map_err(|_| bad(item, "the value is not a number"))
            };
            match name.trim() {
                "crop" => augment.crop = percent()?,
                "scale" => augment.scale = percent()?,
                "brightness" => augment.brightness = percent()?,
                "seed" => {
                    augment.seed = value
                        .trim()
                        .parse()
                        .map_err(|_| bad(item, "the seed is not a whole number"))?
                }
                _ => return Err(bad(item, "unknown setting")),
            }
        }
        augment.validate()?;
        Ok(augment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(h: u32, w: u32) -> image::RgbImage {
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 128]))
    }

    #[test]
    fn no_distortion_is_the_plain_resize() {
        let rgb = gradient(40, 30);
        let none: Augment = "none".parse().unwrap();
        let view = none.view(&rgb, 16, Resize::TfV1Bilinear, "k", 0).unwrap();
        let plain = resize_rgb8(&rgb, 16, 16, Resize::TfV1Bilinear).unwrap();
        assert_eq!(view, plain);
    }

    #[test]
    fn views_are_reproducible_and_differ() {
        let rgb = gradient(40, 30);
        let augment = Augment::default();
        let a = augment
            .view(&rgb, 16, Resize::TfV1Bilinear, "k", 0)
            .unwrap();
        let again = augment
            .view(&rgb, 16, Resize::TfV1Bilinear, "k", 0)
            .unwrap();
        let other = augment
            .view(&rgb, 16, Resize::TfV1Bilinear, "k", 1)
            .unwrap();
        assert_eq!(a, again);
        assert_ne!(a, other);
        assert_eq!(a.data.len(), 16 * 16 * 3);
    }

    #[test]
    fn flip_mirrors_and_brightness_scales() {
        let rgb = gradient(20, 20);
        let plain = resize_rgb8(&rgb, 20, 20, Resize::TfV1Bilinear).unwrap();
        let flip: Augment = "flip".parse().unwrap();
        // Half of the views flip: find one that did, and check it is the mirror image.
        let flipped = (0..16)
            .map(|v| flip.view(&rgb, 20, Resize::TfV1Bilinear, "k", v).unwrap())
            .find(|view| *view != plain)
            .unwrap();
        for y in 0..20 {
            for x in 0..20 {
                for c in 0..3 {
                    let got = flipped.data[(y * 20 + x) * 3 + c];
                    assert_eq!(got, plain.data[(y * 20 + 19 - x) * 3 + c]);
                }
            }
        }
        let bright: Augment = "brightness=50".parse().unwrap();
        let view = bright.view(&rgb, 20, Resize::TfV1Bilinear, "k", 0).unwrap();
        let ratio = view.data[3] / plain.data[3];
        assert!((0.5..1.5).contains(&ratio) && (ratio - 1.0).abs() > 1e-6);
        for (v, p) in view.data.iter().zip(&plain.data) {
            assert!((v - p * ratio).abs() < 1e-5);
        }
    }

    #[test]
    fn bad_settings_are_errors() {
        for text in [
            "crop=-1",
            "scale=101",
            "brightness=nan",
            "zoom=3",
            "flip=1x",
            "seed=-2",
        ] {
            assert!(text.parse::<Augment>().is_err(), "{text}");
        }
        let bad = Augment {
            crop: f32::INFINITY,
            ..Augment::default()
        };
        assert!(bad
            .view(&gradient(8, 8), 4, Resize::TfV1Bilinear, "k", 0)
            .is_err());
        let fine = Augment::default();
        assert!(fine
            .view(&gradient(8, 8), 0, Resize::TfV1Bilinear, "k", 0)
            .is_err());
        assert!(fine
            .view(&gradient(8, 8), 1 << 20, Resize::TfV1Bilinear, "k", 0)
            .is_err());
    }
}
