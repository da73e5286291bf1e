//! The last convolutional feature map of one photo: the map whose mean over its cells is
//! the feature vector. Class-activation maps (Grad-CAM, in `train`) read
//! where in the photo each feature came from.

use std::path::Path;

use super::FeatureExtractor;
use crate::backend::native::NativeNetwork;
use crate::backend::Kernel;
use crate::error::{Error, Result};

/// The last feature map of one photo (the activations the final global average pooling
/// turns into the feature vector): `height × width` cells of `channels` values, row-major
/// (`[row][column][channel]`). Their mean over the cells is the photo's feature vector;
/// each cell sits over one region of the (resized) photo.
///
/// ```
/// use flowers_kit::features::FeatureMap;
/// let map = FeatureMap::new(1, 2, 2, vec![1.0, 2.0, 3.0, 4.0])?;
/// assert_eq!(map.pooled(), [2.0, 3.0]);
/// assert!(FeatureMap::new(1, 2, 2, vec![1.0; 3]).is_err());
/// # Ok::<(), flowers_kit::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureMap {
    height: usize,
    width: usize,
    channels: usize,
    values: Vec<f32>,
}

impl FeatureMap {
    /// A map of `height × width` cells of `channels` values; errors unless every dimension
    /// is at least 1 and `values` holds exactly that many.
    pub fn new(
        height: usize,
        width: usize,
        channels: usize,
        values: Vec<f32>,
    ) -> Result<FeatureMap> {
        let expected = height
            .checked_mul(width)
            .and_then(|cells| cells.checked_mul(channels));
        if height == 0 || width == 0 || channels == 0 || expected != Some(values.len()) {
            return Err(Error::InvalidArgument(format!(
                "a feature map of {height}×{width} cells of {channels} values cannot hold {} values",
                values.len()
            )));
        }
        Ok(FeatureMap {
            height,
            width,
            channels,
            values,
        })
    }

    /// Rows of cells.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Columns of cells.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Values per cell: the feature vector's length.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// `height · width · channels` values, `[row][column][channel]`.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// The mean over the cells: the feature vector the extractor outputs for the photo.
    pub fn pooled(&self) -> Vec<f32> {
        let mut sum = vec![0.0f64; self.channels];
        for cell in self.values.chunks_exact(self.channels) {
            for (s, &v) in sum.iter_mut().zip(cell) {
                *s += f64::from(v);
            }
        }
        // At least one cell: FeatureMap::new refuses empty maps.
        let cells = (self.height * self.width) as f64;
        sum.into_iter().map(|s| (s / cells) as f32).collect()
    }
}

impl FeatureExtractor {
    /// The last convolutional feature map of `photo`: the map whose mean over its cells is
    /// the feature vector (4×4 cells for MobileNet V2 at 128 px, 7×7 at 224, 8×8 for
    /// Inception V3 at 299). It runs on the native CPU backend, which can return a map
    /// whole, with this extractor's instruction set where it runs natively.
    pub fn last_feature_map(&self, photo: &Path) -> Result<FeatureMap> {
        let mut maps = self.last_feature_maps(&[photo])?;
        Ok(maps.pop().expect("invariant: one map per photo"))
    }

    /// [`FeatureExtractor::last_feature_map`] of several photos, preparing the network once;
    /// the first photo that cannot be read is an error naming it.
    pub fn last_feature_maps(&self, photos: &[&Path]) -> Result<Vec<FeatureMap>> {
        let steps = self.network.steps();
        let last = steps.len() - 1;
        // The features are the mean of the last step's map; a network that pools
        // explicitly at the end has its map one step down.
        let map_step = match (&steps[last].kernel, steps[last].inputs.as_slice()) {
            (Kernel::GlobalAvgPool, &[input]) => input,
            _ => last,
        };
        let [height, width, channels] = steps[map_step].shape;
        let native =
            NativeNetwork::with_outputs(&self.network, &[map_step], self.native_kernels())?;
        photos
            .iter()
            .map(|photo| {
                let image = self.preprocess(photo)?;
                FeatureMap::new(height, width, channels, native.forward(&image.data, 1)?)
            })
            .collect()
    }
}
