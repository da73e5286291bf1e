//! Pretrained weights: reading Keras HDF5 files and fetching them into the cache.

pub mod keras_h5;

pub use keras_h5::{KerasWeights, NamedTensor};

use std::path::PathBuf;

use crate::data::{cache_home, fetch, FetchOptions};
use crate::error::Result;

/// The base URL or folder that replaces Keras Applications' for every weight file:
/// `$FLOWERS_WEIGHTS_URL`, if set. Files are looked up at `<base>/<family folder>/<file>`
/// ([`crate::models::Model::weights_file`]), as on Keras Applications' bucket.
pub fn weights_base() -> Option<String> {
    std::env::var("FLOWERS_WEIGHTS_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// Makes sure a weight file is on disk and returns its path.
///
/// `source` is a weight file (path or URL); with `None`, the published file: `relative`
/// under [`weights_base`] when it is set, else `published_url`. Remote files are downloaded
/// once into `<cache>/weights/<relative>` (resumable, atomic); local files are used where
/// they are.
pub fn fetch_weights(relative: &str, published_url: &str, source: Option<&str>) -> Result<PathBuf> {
    let source = match (source, weights_base()) {
        (Some(s), _) => s.to_string(),
        (None, Some(base)) => format!("{}/{relative}", base.trim_end_matches('/')),
        (None, None) => published_url.to_string(),
    };
    if let Some(local) = fetch::local_source(&source) {
        // Local weights need no copy; reading them checks them.
        return Ok(local);
    }
    let file_name = source
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .unwrap_or("weights.h5");
    // Keep the family folder, so that files of different families never collide.
    let folder = relative
        .rsplit_once('/')
        .map(|(folder, _)| folder)
        .filter(|f| f.split('/').all(|p| !p.is_empty() && p != "." && p != ".."));
    let mut dest = cache_home().join("weights");
    if let Some(folder) = folder {
        dest = dest.join(folder);
    }
    fetch::fetch(&source, &dest.join(file_name), &FetchOptions::default())
}
