//! MobileNet V2 (Sandler et al., 2018) exactly as Keras Applications builds it.
//!
//! A width multiplier α and an input resolution give a [`Graph`] whose layer names are the
//! Keras ones, so weights are looked up by name.

// This module reads untrusted input: every index and every arithmetic step is checked or
// justified where it is allowed.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::fmt;

use super::graph::{Activation, Graph, GraphBuilder, Op, Padding};
use crate::error::{Error, Result};

/// Keras' BatchNormalization epsilon in MobileNet V2.
const BN_EPSILON: f32 = 1e-3;

/// Width multipliers with published ImageNet weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alpha {
    /// α = 0.35 (the tutorial's).
    A035,
    /// α = 0.5.
    A050,
    /// α = 0.75.
    A075,
    /// α = 1.0.
    A100,
    /// α = 1.3 (224 only).
    A130,
    /// α = 1.4 (224 only).
    A140,
}

impl Alpha {
    /// Every published width, narrowest first.
    pub const ALL: [Alpha; 6] = [
        Alpha::A035,
        Alpha::A050,
        Alpha::A075,
        Alpha::A100,
        Alpha::A130,
        Alpha::A140,
    ];

    /// The multiplier as a number.
    pub fn value(self) -> f64 {
        match self {
            Alpha::A035 => 0.35,
            Alpha::A050 => 0.5,
            Alpha::A075 => 0.75,
            Alpha::A100 => 1.0,
            Alpha::A130 => 1.3,
            Alpha::A140 => 1.4,
        }
    }

    /// As Keras writes it in file names (`str(alpha)`): "0.35", "0.5", "1.0"…
    pub fn keras_name(self) -> &'static str {
        match self {
            Alpha::A035 => "0.35",
            Alpha::A050 => "0.5",
            Alpha::A075 => "0.75",
            Alpha::A100 => "1.0",
            Alpha::A130 => "1.3",
            Alpha::A140 => "1.4",
        }
    }

    /// As TF-Hub writes it in handles: "035", "050", "100"…
    pub fn hub_name(self) -> &'static str {
        match self {
            Alpha::A035 => "035",
            Alpha::A050 => "050",
            Alpha::A075 => "075",
            Alpha::A100 => "100",
            Alpha::A130 => "130",
            Alpha::A140 => "140",
        }
    }

    /// The resolutions Keras publishes weights for at this width.
    pub fn resolutions(self) -> &'static [usize] {
        match self {
            Alpha::A130 | Alpha::A140 => &[224],
            _ => &[96, 128, 160, 192, 224],
        }
    }

    fn parse(text: &str) -> Option<Alpha> {
        Alpha::ALL
            .into_iter()
            .find(|a| text == a.keras_name() || text == a.hub_name())
    }
}

/// A MobileNet V2 variant: width multiplier and input resolution.
///
/// ```
/// use flowers_kit::models::MobileNetV2;
/// let tutorial = MobileNetV2::parse(
///     "https://tfhub.dev/google/imagenet/mobilenet_v2_035_128/feature_vector/2")?;
/// assert_eq!(tutorial.name(), "mobilenet_v2_0.35_128");
/// assert_eq!(tutorial.feature_dim(), 1280);
/// assert_eq!(MobileNetV2::parse("mobilenet_v2_1.4_224")?.feature_dim(), 1792);
/// # Ok::<(), flowers_kit::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MobileNetV2 {
    /// Width multiplier.
    pub alpha: Alpha,
    /// Input height and width in pixels.
    pub resolution: usize,
}

/// The inverted-residual blocks: (output filters before α, stride, expansion).
const BLOCKS: [(usize, usize, usize); 17] = [
    (16, 1, 1),
    (24, 2, 6),
    (24, 1, 6),
    (32, 2, 6),
    (32, 1, 6),
    (32, 1, 6),
    (64, 2, 6),
    (64, 1, 6),
    (64, 1, 6),
    (64, 1, 6),
    (96, 1, 6),
    (96, 1, 6),
    (96, 1, 6),
    (160, 2, 6),
    (160, 1, 6),
    (160, 1, 6),
    (320, 1, 6),
];

/// Keras' `_make_divisible`: round to the nearest multiple of `divisor`, never below it and
/// never more than 10 % down.
pub fn make_divisible(value: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    // `as usize` saturates (NaN → 0); a divisor of 0 leaves the value unrounded.
    let nearest = (value + d / 2.0) as usize;
    let mut rounded = nearest
        .checked_div(divisor)
        .map_or(nearest, |q| q.saturating_mul(divisor))
        .max(divisor);
    if (rounded as f64) < 0.9 * value {
        rounded = rounded.saturating_add(divisor);
    }
    rounded
}

impl MobileNetV2 {
    /// A published variant; others are an error listing what exists.
    pub fn new(alpha: Alpha, resolution: usize) -> Result<MobileNetV2> {
        if alpha.resolutions().contains(&resolution) {
            Ok(MobileNetV2 { alpha, resolution })
        } else {
            Err(Error::InvalidArgument(format!(
                "no published MobileNet V2 weights for alpha {} at {resolution} px; {}",
                alpha.keras_name(),
                Self::published_list()
            )))
        }
    }

    /// Every variant with published ImageNet weights (22 of them).
    pub fn published() -> Vec<MobileNetV2> {
        Alpha::ALL
            .into_iter()
            .flat_map(|alpha| {
                alpha
                    .resolutions()
                    .iter()
                    .map(move |&resolution| MobileNetV2 { alpha, resolution })
            })
            .collect()
    }

    fn published_list() -> String {
        "published: alpha 0.35, 0.5, 0.75, 1.0 at 96/128/160/192/224 and 1.3, 1.4 at 224".into()
    }

    /// Parses exactly a model name, `mobilenet_v2_0.35_128` (α as Keras or TF-Hub writes
    /// it), or a TF-Hub feature-vector handle,
    /// `https://tfhub.dev/google/imagenet/mobilenet_v2_035_128/feature_vector/2` (any
    /// version, `http://` or no scheme, a trailing `/` allowed). Anything else — extra path
    /// parts, a `classification` handle, another host — is an error saying what is accepted.
    ///
    /// ```
    /// use flowers_kit::models::MobileNetV2;
    /// assert!(MobileNetV2::parse("mobilenet_v2_0.35_128/../x").is_err());
    /// assert!(MobileNetV2::parse(
    ///     "https://tfhub.dev/google/imagenet/mobilenet_v2_035_128/classification/2").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<MobileNetV2> {
        let unknown = |why: &str| {
            Error::InvalidArgument(format!(
                "unknown model '{text}'{why}: expected a name mobilenet_v2_<alpha>_<resolution> \
                 (e.g. mobilenet_v2_0.35_128) or a TF-Hub feature-vector handle like \
                 https://tfhub.dev/google/imagenet/mobilenet_v2_035_128/feature_vector/2"
            ))
        };
        let name = match text.strip_prefix("mobilenet_v2_") {
            Some(_) => text,
            None => {
                let path = text
                    .strip_prefix("https://")
                    .or_else(|| text.strip_prefix("http://"))
                    .unwrap_or(text);
                let path = path.strip_suffix('/').unwrap_or(path);
                let rest = path
                    .strip_prefix("tfhub.dev/google/imagenet/")
                    .ok_or_else(|| unknown(""))?;
                let parts: Vec<&str> = rest.split('/').collect();
                match parts.as_slice() {
                    [name, "feature_vector", version]
                        if !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        *name
                    }
                    [_, "classification", _] => {
                        return Err(unknown(
                            " (a classification handle outputs ImageNet logits, not features: \
                             use its feature_vector handle)",
                        ))
                    }
                    _ => return Err(unknown("")),
                }
            }
        };
        let rest = name
            .strip_prefix("mobilenet_v2_")
            .ok_or_else(|| unknown(""))?;
        let (alpha, resolution) = rest.split_once('_').ok_or_else(|| unknown(""))?;
        let alpha = Alpha::parse(alpha).ok_or_else(|| unknown(""))?;
        let resolution: usize = resolution
            .parse()
            .ok()
            .filter(|_| resolution.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| unknown(""))?;
        MobileNetV2::new(alpha, resolution)
    }

    /// `mobilenet_v2_{alpha}_{resolution}`, alpha as Keras writes it.
    pub fn name(&self) -> String {
        format!(
            "mobilenet_v2_{}_{}",
            self.alpha.keras_name(),
            self.resolution
        )
    }

    /// The TF-Hub feature-vector handle of this variant.
    pub fn hub_handle(&self) -> String {
        format!(
            "https://tfhub.dev/google/imagenet/mobilenet_v2_{}_{}/feature_vector/4",
            self.alpha.hub_name(),
            self.resolution
        )
    }

    /// The Keras Applications weight file name (the `no_top` feature extractor).
    pub fn weights_file_name(&self) -> String {
        format!(
            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{}_{}_no_top.h5",
            self.alpha.keras_name(),
            self.resolution
        )
    }

    /// Channels of the stem.
    pub fn stem_channels(&self) -> usize {
        make_divisible(32.0 * self.alpha.value(), 8)
    }

    /// Length of the feature vector: 1280, or `make_divisible(1280·α, 8)` when α > 1.
    pub fn feature_dim(&self) -> usize {
        if self.alpha.value() > 1.0 {
            make_divisible(1280.0 * self.alpha.value(), 8)
        } else {
            1280
        }
    }

    /// The network as Keras Applications builds it, layer by layer with Keras' names,
    /// after the kit's input scaling from [0, 1] to [-1, 1].
    pub fn graph(&self) -> Graph {
        let alpha = self.alpha.value();
        let (mut g, input) = GraphBuilder::new(self.resolution);
        let scaled = g.from_unit_to_symmetric(input);
        let x = g.conv(
            scaled,
            "Conv1",
            self.stem_channels(),
            (3, 3),
            2,
            Padding::Same,
        );
        let x = g.bn(x, "bn_Conv1", BN_EPSILON);
        let mut x = g.act(x, "Conv1_relu", Activation::Relu6);
        let mut channels = self.stem_channels();
        for (id, &(filters, stride, expansion)) in BLOCKS.iter().enumerate() {
            // Keras truncates filters·α before rounding.
            let out = make_divisible((filters as f64 * alpha).trunc(), 8);
            let prefix = if id == 0 {
                "expanded_conv_".to_string()
            } else {
                format!("block_{id}_")
            };
            g.begin_block(prefix.trim_end_matches('_'));
            let block_input = x;
            if id > 0 {
                let inner = channels.saturating_mul(expansion);
                let (conv, bn) = (format!("{prefix}expand"), format!("{prefix}expand_BN"));
                x = g.pointwise_bn(x, &conv, &bn, inner, BN_EPSILON);
                x = g.act(x, &format!("{prefix}expand_relu"), Activation::Relu6);
            }
            let (padded, padding) = g.pad_for_stride(x, &format!("{prefix}pad"), 3, stride);
            x = padded;
            x = g.depthwise(x, &format!("{prefix}depthwise"), 3, stride, padding);
            x = g.bn(x, &format!("{prefix}depthwise_BN"), BN_EPSILON);
            x = g.act(x, &format!("{prefix}depthwise_relu"), Activation::Relu6);
            let (conv, bn) = (format!("{prefix}project"), format!("{prefix}project_BN"));
            x = g.pointwise_bn(x, &conv, &bn, out, BN_EPSILON);
            if channels == out && stride == 1 {
                x = g.layer(format!("{prefix}add"), Op::Add, &[block_input, x]);
            }
            channels = out;
        }
        let x = g.conv(x, "Conv_1", self.feature_dim(), (1, 1), 1, Padding::Same);
        let x = g.bn(x, "Conv_1_bn", BN_EPSILON);
        g.act(x, "out_relu", Activation::Relu6);
        g.finish()
    }
}

impl fmt::Display for MobileNetV2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl std::str::FromStr for MobileNetV2 {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        MobileNetV2::parse(s)
    }
}
