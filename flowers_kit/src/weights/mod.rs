//! Pretrained weights: reading Keras HDF5 files and fetching them into the cache.

pub mod keras_h5;

pub use keras_h5::{KerasWeights, NamedTensor};

use std::path::PathBuf;

use crate::data::{cache_home, fetch, FetchOptions};
use crate::error::Result;

/// Where Keras Applications publishes the MobileNet V2 files.
pub const KERAS_WEIGHTS_BASE: &str =
    "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/";

/// The base URL or folder for weight files: `$FLOWERS_WEIGHTS_URL`, else [`KERAS_WEIGHTS_BASE`].
pub fn weights_base() -> String {
    std::env::var("FLOWERS_WEIGHTS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| KERAS_WEIGHTS_BASE.to_string())
}

/// Makes sure a weight file is on disk and returns its path.
///
/// `source` is a weight file (path or URL), or `None` for the published file `file_name`
/// under [`weights_base`]. Remote files are downloaded once into `<cache>/weights/`
/// (resumable, atomic); local files are used where they are.
pub fn fetch_weights(file_name: &str, source: Option<&str>) -> Result<PathBuf> {
    let source = match source {
        Some(s) => s.to_string(),
        None => {
            let base = weights_base();
            if base.ends_with('/') {
                format!("{base}{file_name}")
            } else {
                format!("{base}/{file_name}")
            }
        }
    };
    if let Some(local) = fetch::local_source(&source) {
        // Local weights need no copy; reading them checks them.
        return Ok(local);
    }
    let name = source
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .unwrap_or(file_name);
    let dest = cache_home().join("weights").join(name);
    fetch::fetch(&source, &dest, &FetchOptions::default())
}
