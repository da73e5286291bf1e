//! Architectures as data: each family is a builder that emits a [`graph::Graph`] with
//! Keras' own layer names, the way Keras Applications writes the model in Python. No maths
//! here; execution lives in [`crate::backend`].
//!
//! | model | input | features | family |
//! |---|---|---|---|
//! | `mobilenet_v2_<α>_<r>` | r, [-1, 1] | 1280 (α ≤ 1) | [`mobilenet_v2`] (the tutorial's) |
//! | `inception_v3` | 299, [-1, 1] | 2048 | [`inception_v3`] |
//! | `resnet50_v2` | 224, [-1, 1] | 2048 | [`resnet_v2`] |
//! | `nasnet_mobile` | 224, [-1, 1] | 1056 | [`nasnet`] |
//! | `efficientnet_b0` | 224, 0–255 | 1280 | [`efficientnet`] |
//! | `mobilenet_v3_large` | 224, 0–255 | 960 | [`mobilenet_v3`] |

pub mod efficientnet;
pub mod graph;
pub mod inception_v3;
pub mod mobilenet_v2;
pub mod mobilenet_v3;
pub mod nasnet;
pub mod resnet_v2;

use std::fmt;

pub use graph::Graph;
pub use mobilenet_v2::{Alpha, MobileNetV2};

use crate::error::{Error, Result};

/// Every image model the kit can extract features with.
///
/// ```
/// use flowers_kit::models::Model;
/// let m = Model::parse("https://tfhub.dev/google/imagenet/inception_v3/feature_vector/5")?;
/// assert_eq!((m.name().as_str(), m.resolution(), m.feature_dim()), ("inception_v3", 299, 2048));
/// assert_eq!(Model::parse("mobilenet_v2_0.35_128")?.feature_dim(), 1280);
/// # Ok::<(), flowers_kit::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Model {
    /// MobileNet V2 at one of its 22 published widths and resolutions (the tutorial's).
    MobileNetV2(MobileNetV2),
    /// Inception V3 (Szegedy et al., 2016), 299 px.
    InceptionV3,
    /// ResNet-50 V2 (He et al., 2016, pre-activation), 224 px.
    ResNet50V2,
    /// NASNet-A Mobile (Zoph et al., 2018), 224 px.
    NasNetMobile,
    /// EfficientNet-B0 (Tan & Le, 2019), 224 px.
    EfficientNetB0,
    /// MobileNet V3 Large (Howard et al., 2019), 224 px.
    MobileNetV3Large,
}

impl From<MobileNetV2> for Model {
    fn from(model: MobileNetV2) -> Model {
        Model::MobileNetV2(model)
    }
}

/// Where Keras Applications publishes its weight files; [`Model::weights_file`] is relative
/// to it.
pub const KERAS_APPLICATIONS: &str =
    "https://storage.googleapis.com/tensorflow/keras-applications/";

impl Model {
    /// One of each family (MobileNet V2 at the tutorial's 0.35/128).
    pub fn families() -> Vec<Model> {
        let tutorial = MobileNetV2 {
            alpha: Alpha::A035,
            resolution: 128,
        };
        vec![
            Model::MobileNetV2(tutorial),
            Model::InceptionV3,
            Model::ResNet50V2,
            Model::NasNetMobile,
            Model::EfficientNetB0,
            Model::MobileNetV3Large,
        ]
    }

    /// Every model with published weights: the 22 MobileNet V2 variants, then the families.
    pub fn all() -> Vec<Model> {
        let mut all: Vec<Model> = MobileNetV2::published()
            .into_iter()
            .map(Model::from)
            .collect();
        all.extend(Model::families().into_iter().skip(1));
        all
    }

    /// Parses exactly a model name (`inception_v3`, `mobilenet_v2_0.35_128`…) or a TF-Hub
    /// feature-vector handle (`https://tfhub.dev/google/imagenet/resnet_v2_50/feature_vector/5`;
    /// any version, `http://` or no scheme, a trailing `/` allowed).
    pub fn parse(text: &str) -> Result<Model> {
        let fixed = [
            ("inception_v3", Model::InceptionV3),
            ("resnet50_v2", Model::ResNet50V2),
            ("nasnet_mobile", Model::NasNetMobile),
            ("efficientnet_b0", Model::EfficientNetB0),
            ("mobilenet_v3_large", Model::MobileNetV3Large),
        ];
        if let Some((_, model)) = fixed.iter().find(|(name, _)| *name == text) {
            return Ok(*model);
        }
        if text.starts_with("mobilenet_v2_") {
            return MobileNetV2::parse(text).map(Model::from);
        }
        let path = text
            .strip_prefix("https://")
            .or_else(|| text.strip_prefix("http://"))
            .unwrap_or(text);
        let path = path.strip_suffix('/').unwrap_or(path);
        let version = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["tfhub.dev", "google", "imagenet", "inception_v3", "feature_vector", v]
                if version(v) =>
            {
                Ok(Model::InceptionV3)
            }
            ["tfhub.dev", "google", "imagenet", "resnet_v2_50", "feature_vector", v]
                if version(v) =>
            {
                Ok(Model::ResNet50V2)
            }
            ["tfhub.dev", "google", "imagenet", "nasnet_mobile", "feature_vector", v]
                if version(v) =>
            {
                Ok(Model::NasNetMobile)
            }
            ["tfhub.dev", "tensorflow" | "google", "efficientnet", "b0", "feature-vector", v]
                if version(v) =>
            {
                Ok(Model::EfficientNetB0)
            }
            ["tfhub.dev", "google", "imagenet", "mobilenet_v3_large_100_224", "feature_vector", v]
                if version(v) =>
            {
                Ok(Model::MobileNetV3Large)
            }
            ["tfhub.dev", "google", "imagenet", name, ..] if name.starts_with("mobilenet_v2_") => {
                MobileNetV2::parse(text).map(Model::from)
            }
            ["tfhub.dev", "google", "inaturalist", "inception_v3", ..] => {
                Err(Error::InvalidArgument(format!(
                    "'{text}' is Inception V3 trained on iNaturalist, a TF-Hub-only module with \
                     no Keras weight file, so the kit cannot load it; {}",
                    Model::accepted()
                )))
            }
            [.., "classification", _] => Err(Error::InvalidArgument(format!(
                "'{text}' is a classification handle: it outputs ImageNet logits, not features; \
                 use its feature_vector handle. {}",
                Model::accepted()
            ))),
            _ => Err(Error::InvalidArgument(format!(
                "unknown model '{text}'. {}",
                Model::accepted()
            ))),
        }
    }

    fn accepted() -> String {
        "Accepted: mobilenet_v2_<alpha>_<resolution> (e.g. mobilenet_v2_0.35_128), \
         inception_v3, resnet50_v2, nasnet_mobile, efficientnet_b0, mobilenet_v3_large, or their TF-Hub \
         feature-vector handles: https://tfhub.dev/google/imagenet/mobilenet_v2_035_128/feature_vector/2, \
         …/google/imagenet/inception_v3/feature_vector/5, …/google/imagenet/resnet_v2_50/feature_vector/5, \
         …/google/imagenet/nasnet_mobile/feature_vector/5, \
         …/tensorflow/efficientnet/b0/feature-vector/1, \
         …/google/imagenet/mobilenet_v3_large_100_224/feature_vector/5"
            .into()
    }

    /// The model's name, as [`Model::parse`] takes it.
    pub fn name(&self) -> String {
        match self {
            Model::MobileNetV2(m) => m.name(),
            Model::InceptionV3 => "inception_v3".into(),
            Model::ResNet50V2 => "resnet50_v2".into(),
            Model::NasNetMobile => "nasnet_mobile".into(),
            Model::EfficientNetB0 => "efficientnet_b0".into(),
            Model::MobileNetV3Large => "mobilenet_v3_large".into(),
        }
    }

    /// Input height and width in pixels.
    pub fn resolution(&self) -> usize {
        match self {
            Model::MobileNetV2(m) => m.resolution,
            Model::InceptionV3 => 299,
            _ => 224,
        }
    }

    /// Length of the feature vector.
    pub fn feature_dim(&self) -> usize {
        match self {
            Model::MobileNetV2(m) => m.feature_dim(),
            Model::InceptionV3 | Model::ResNet50V2 => 2048,
            Model::NasNetMobile => 1056,
            Model::EfficientNetB0 => 1280,
            Model::MobileNetV3Large => 960,
        }
    }

    /// The Keras Applications `no_top` weight file, relative to [`KERAS_APPLICATIONS`] (or
    /// to `$FLOWERS_WEIGHTS_URL`).
    pub fn weights_file(&self) -> String {
        match self {
            Model::MobileNetV2(m) => format!("mobilenet_v2/{}", m.weights_file_name()),
            Model::InceptionV3 => {
                "inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5".into()
            }
            Model::ResNet50V2 => {
                "resnet/resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5".into()
            }
            Model::NasNetMobile => "nasnet/NASNet-mobile-no-top.h5".into(),
            Model::EfficientNetB0 => "efficientnetb0_notop.h5".into(),
            Model::MobileNetV3Large => {
                "mobilenet_v3/weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5".into()
            }
        }
    }

    /// The MD5 Keras Applications pins for the published `no_top` file
    /// (`get_file(..., file_hash=...)` in `tf_keras.applications`); `None` for MobileNet V2,
    /// whose files Keras fetches without one.
    pub fn published_md5(&self) -> Option<&'static str> {
        match self {
            Model::MobileNetV2(_) => None,
            Model::InceptionV3 => Some("bcbd6486424b2319ff4ef7d526e38f63"),
            Model::ResNet50V2 => Some("fac2f116257151a9d068a22e544a4917"),
            Model::NasNetMobile => Some("1ed92395b5b598bdda52abe5c0dbfd63"),
            Model::EfficientNetB0 => Some("50bc09e76180e00e4465e1a485ddc09d"),
            // WEIGHTS_HASHES["large_224_1.0_float"][1], the no_top_v2 file.
            Model::MobileNetV3Large => Some("07fb09a5933dd0c8eaafa16978110389"),
        }
    }

    /// Where the published weight file is downloaded from when `$FLOWERS_WEIGHTS_URL` is
    /// not set (EfficientNet's live on another bucket than the others).
    pub fn published_url(&self) -> String {
        match self {
            Model::EfficientNetB0 => {
                format!(
                    "https://storage.googleapis.com/keras-applications/{}",
                    self.weights_file()
                )
            }
            _ => format!("{KERAS_APPLICATIONS}{}", self.weights_file()),
        }
    }

    /// The graph, starting from [0, 1] pixels. `published_weights`: the weights are the
    /// published ImageNet file that the kit fetched itself — Keras' `weights="imagenet"`,
    /// which changes EfficientNet's input scaling (tensorflow/tensorflow#49930).
    pub fn graph(&self, published_weights: bool) -> Graph {
        match self {
            Model::MobileNetV2(m) => m.graph(),
            Model::InceptionV3 => inception_v3::graph(),
            Model::ResNet50V2 => resnet_v2::graph(),
            Model::NasNetMobile => nasnet::graph(),
            Model::EfficientNetB0 => efficientnet::graph(published_weights),
            Model::MobileNetV3Large => mobilenet_v3::graph(),
        }
    }

    /// Weights in all, as Keras counts them.
    pub fn parameters(&self) -> Result<usize> {
        self.graph(false).parameters()
    }

    /// Multiply-adds of one forward pass (convolutions).
    pub fn multiply_adds(&self) -> Result<usize> {
        self.graph(false).multiply_adds()
    }

    /// Whether weights are matched to layers by position rather than by name: Inception V3's
    /// layer names are generated by Keras and differ between files.
    pub fn matches_weights_by_position(&self) -> bool {
        matches!(self, Model::InceptionV3)
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl std::str::FromStr for Model {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Model::parse(s)
    }
}
