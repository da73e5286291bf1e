//! Pretrained weights: reading Keras HDF5 files and fetching them into the cache.

pub mod keras_h5;

pub use keras_h5::{KerasWeights, NamedTensor, MAX_WEIGHTS_BYTES};

use std::path::{Path, PathBuf};

use crate::data::fetch::{self, Verify};
use crate::data::{cache_home, shared_cache, FetchOptions};
use crate::error::{Error, Result};

/// The base URL or folder that replaces Keras Applications' for every weight file:
/// `$FLOWERS_WEIGHTS_URL`, if set. Files are looked up at `<base>/<family folder>/<file>`
/// ([`crate::models::Model::weights_file`]), as on Keras Applications' bucket.
pub fn weights_base() -> Option<String> {
    std::env::var("FLOWERS_WEIGHTS_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// Where a weight file comes from, and how to tell it is the right one.
#[derive(Debug, Clone, Copy)]
pub struct WeightsRequest<'a> {
    /// The file's path under Keras Applications' bucket (`<family folder>/<file>`), also
    /// its place under [`weights_base`] and in the cache.
    pub relative: &'a str,
    /// The published file's URL.
    pub published_url: &'a str,
    /// The MD5 Keras Applications pins for the published file (its `get_file(file_hash=…)`),
    /// if it pins one.
    pub pinned_md5: Option<&'a str>,
    /// A weight file (path or URL) given instead of the published one.
    pub source: Option<&'a str>,
}

/// Makes sure a weight file is on disk and returns its path.
///
/// The source is `request.source`, or the published file: `relative` under [`weights_base`]
/// when it is set, else the published URL. Local files are used where they are (reading them
/// checks them). Remote files are downloaded once into
/// `<cache>/weights/<family folder>/<source key>-<file>` (resumable, atomic, one process at a
/// time; [`fetch::source_key`]), and checked before they enter the cache: the published file
/// against the MD5 Keras pins for it, any other file (a mirror, a URL given by hand, a file
/// Keras pins nothing for) by `check`, which the caller makes load it as its model. A file
/// that fails is deleted, so the next call fetches afresh.
///
/// Where the learner's own cache lacks the file, a class's shared cache
/// ([`crate::data::shared_cache`]) is looked in before downloading; see [`shared_weights`].
pub fn fetch_weights(request: WeightsRequest<'_>, check: Verify<'_>) -> Result<PathBuf> {
    let home = cache_home();
    // The learner's own copy, checked when it entered their cache, first; then the class's.
    if !CacheEntry::new(&home, request).path.is_file() {
        if let Some(found) =
            shared_cache().and_then(|shared| shared_weights(&shared, request, check))
        {
            return Ok(found);
        }
    }
    let options = FetchOptions {
        max_bytes: MAX_WEIGHTS_BYTES,
        ..FetchOptions::default()
    };
    fetch_weights_into(&home, request, &options, check)
}

/// The weight file `request` names in a shared cache filled by the kit (`shared` laid out as
/// a cache home), if it is there and passes the checks a download must pass: the MD5 Keras
/// pins for the published file, else `check`. A file that fails is ignored with a warning
/// (the caller then fetches into the learner's own cache); the shared file is never changed.
pub fn shared_weights(
    shared: &Path,
    request: WeightsRequest<'_>,
    check: Verify<'_>,
) -> Option<PathBuf> {
    let entry = CacheEntry::new(shared, request);
    if fetch::local_source(&entry.source).is_some() || !entry.path.is_file() {
        return None;
    }
    entry
        .verify(&entry.path, check)
        .inspect_err(|e| {
            eprintln!("warning: ignoring the shared cache's weights ({e}); using your own cache")
        })
        .ok()
        .map(|()| entry.path)
}

/// Where a requested weight file comes from, where the cache under a home keeps it, and its
/// pin.
struct CacheEntry<'a> {
    source: String,
    path: PathBuf,
    pin: Option<&'a str>,
}

impl<'a> CacheEntry<'a> {
    fn new(home: &Path, request: WeightsRequest<'a>) -> CacheEntry<'a> {
        let source = match (request.source, weights_base()) {
            (Some(s), _) => s.to_string(),
            (None, Some(base)) => format!("{}/{}", base.trim_end_matches('/'), request.relative),
            (None, None) => request.published_url.to_string(),
        };
        let file_name = source
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty() && *n != "." && *n != "..")
            .unwrap_or("weights.h5");
        // Keep the family folder, so that files of different families never collide.
        let folder = request
            .relative
            .rsplit_once('/')
            .map(|(folder, _)| folder)
            .filter(|f| f.split('/').all(|p| !p.is_empty() && p != "." && p != ".."));
        let mut path = home.join("weights");
        if let Some(folder) = folder {
            path = path.join(folder);
        }
        let path = path.join(format!("{}-{file_name}", fetch::source_key(&source)));
        let pin = request
            .pinned_md5
            .filter(|_| source == request.published_url);
        CacheEntry { source, path, pin }
    }

    /// The published file's pin where Keras pins one, else the caller's check.
    fn verify(&self, path: &Path, check: Verify<'_>) -> Result<()> {
        match self.pin {
            Some(pin) => check_md5(path, pin),
            None => check(path),
        }
    }
}

/// [`fetch_weights`] with the cache at `home` and the given download options.
pub fn fetch_weights_into(
    home: &Path,
    request: WeightsRequest<'_>,
    options: &FetchOptions,
    check: Verify<'_>,
) -> Result<PathBuf> {
    let entry = CacheEntry::new(home, request);
    if let Some(local) = fetch::local_source(&entry.source) {
        // Local weights need no copy; reading them checks them.
        return Ok(local);
    }
    let verify = |path: &Path| entry.verify(path, check);
    fetch::fetch_verified(&entry.source, &entry.path, options, &verify)
}

/// Errors unless the file's MD5 is `pin`.
fn check_md5(path: &Path, pin: &str) -> Result<()> {
    let bytes = crate::files::read_regular(path, MAX_WEIGHTS_BYTES, "weight file", |reason| {
        Error::Tensors {
            path: path.to_path_buf(),
            reason,
        }
    })?;
    let md5 = crate::digest::md5_hex(&bytes);
    if md5 != pin {
        return Err(Error::Tensors {
            path: path.to_path_buf(),
            reason: format!(
                "its MD5 is {md5}, but Keras Applications pins {pin} for this file ({} bytes \
                 received: an error page, a truncated or another file?)",
                bytes.len()
            ),
        });
    }
    Ok(())
}
