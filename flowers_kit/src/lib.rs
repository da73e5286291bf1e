//! # flowers_kit
//!
//! TensorFlow's tutorial "Classify flowers with transfer learning", in Rust: download the
//! flower photos, split them exactly as the tutorial does, extract features with an
//! ImageNet-pretrained MobileNet V2 (or Inception V3, ResNet-50 V2, NASNet Mobile,
//! EfficientNet-B0, MobileNet V3 — see [`models`]), and train a small classifier on top —
//! from evcxr notebooks or the `flowers` command line.
//!
//! ```no_run
//! use flowers_kit::prelude::*;
//!
//! # fn main() -> flowers_kit::Result<()> {
//! let photos = download_flowers()?;          // cached after the first time
//! let split = photos.split(TUTORIAL_TRAIN_FRACTION, TUTORIAL_SEED)?;
//! println!("The dataset has {} label classes: {:?}", split.classes().len(), split.classes());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod backend;
pub mod data;
pub mod device;
pub mod digest;
pub mod display;
pub mod error;
pub mod export;
pub mod features;
pub mod files;
pub mod models;
pub mod plot;
pub mod progress;
pub mod train;
pub mod weights;

pub use error::{Error, Result};

/// What a notebook needs in one `use`.
pub mod prelude {
    pub use crate::data::cache_home;
    pub use crate::data::image::{Image, Resize};
    pub use crate::data::{
        download_flowers, Augment, Dataset, Example, Split, TUTORIAL_SEED, TUTORIAL_TRAIN_FRACTION,
    };
    pub use crate::error::{Error, Result};
    pub use crate::export::export_onnx;
    pub use crate::features::{BackendKind, Compute, DeviceKind, FeatureExtractor, Features};
    pub use crate::models::{MobileNetV2, Model};
    pub use crate::plot::{self, Chart, Gallery, Picture, Series};
    pub use crate::train::{
        train, train_seeds, Activation, Classifier, History, Metrics, Optimizer, SeedRuns, Spread,
        TrainConfig,
    };
}
