//! The flower photos: download, safe extraction, the class folders, the split, and images.

pub mod archive;
pub mod augment;
pub mod dataset;
pub mod fetch;
pub mod image;
pub mod split;

use std::path::{Path, PathBuf};

pub use augment::Augment;
pub use dataset::{Dataset, Example, Split, TUTORIAL_SEED, TUTORIAL_TRAIN_FRACTION};
pub use fetch::FetchOptions;
pub use split::PyRandom;

use crate::error::{IoContext, Result};

/// The archive the tutorial downloads: 3,670 photos of 5 classes.
pub const FLOWERS_URL: &str = "http://download.tensorflow.org/example_images/flower_photos.tgz";

/// The cache root: `$FLOWERS_KIT_HOME`, or the platform cache folder + `flowers_kit`.
pub fn cache_home() -> PathBuf {
    if let Some(home) = std::env::var_os("FLOWERS_KIT_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("flowers_kit")
}

/// The environment variable naming a class's shared, read-only cache: see [`shared_cache`].
pub const SHARED_CACHE_VARIABLE: &str = "FLOWERS_KIT_SHARED_CACHE";

/// A read-only cache a teacher fills once for a whole class (`$FLOWERS_KIT_SHARED_CACHE`):
/// a folder laid out as a [`cache_home`], filled by running the kit with `FLOWERS_KIT_HOME`
/// pointing at it. Learners read the photos, weights and features found there and write only
/// to their own cache. Nothing in it is trusted: a dataset must open as one, weights pass the
/// same checks as a download, feature files their checksums; what fails is ignored, with a
/// warning, and fetched or computed into the learner's own cache.
pub fn shared_cache() -> Option<PathBuf> {
    std::env::var_os(SHARED_CACHE_VARIABLE)
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// The dataset URL: `$FLOWERS_DATA_URL`, or [`FLOWERS_URL`].
pub fn flowers_url() -> String {
    std::env::var("FLOWERS_DATA_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| FLOWERS_URL.to_string())
}

/// Downloads and extracts the flower photos unless they are already in the cache, then opens
/// them. URL and cache come from the environment (see [`flowers_url`], [`cache_home`]).
///
/// ```no_run
/// # fn main() -> flowers_kit::Result<()> {
/// let photos = flowers_kit::data::download_flowers()?;
/// println!("{} photos of {:?}", photos.len(), photos.classes());
/// # Ok(()) }
/// ```
pub fn download_flowers() -> Result<Dataset> {
    let url = flowers_url();
    if let Some(found) = shared_cache().and_then(|shared| shared_dataset(&shared, &url)) {
        return Ok(found);
    }
    let dir = download_dataset(&url, &cache_home(), &FetchOptions::default())?;
    Dataset::open(dir)
}

/// The dataset from `url` in a shared cache (see [`shared_cache`]), if it is there and opens as
/// a photo dataset; a folder that does not is ignored with a warning.
pub fn shared_dataset(shared: &Path, url: &str) -> Option<Dataset> {
    let folder = dataset_folder(shared, url);
    if !folder.is_dir() {
        return None;
    }
    Dataset::open(&folder)
        .inspect_err(|e| {
            eprintln!("warning: ignoring the shared cache's photos ({e}); using your own cache")
        })
        .ok()
}

/// The folder the `.tgz` at `url` is extracted to under `home`.
fn dataset_folder(home: &Path, url: &str) -> PathBuf {
    let file_name = archive_file_name(url);
    // Keyed by where it came from: two mirrors serving different archives under one name
    // never share a folder.
    home.join("datasets").join(format!(
        "{}-{}",
        archive_stem(file_name),
        fetch::source_key(url)
    ))
}

/// The archive's file name, from the URL.
fn archive_file_name(url: &str) -> &str {
    url.rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .unwrap_or("dataset.tgz")
}

/// Makes sure the `.tgz` at `url` is extracted under `home/datasets`, returning its folder,
/// `<archive name>-<first 16 hex digits of the URL's SHA-256>` (see [`fetch::source_key`]).
///
/// With the folder already there, nothing touches the network. Otherwise the archive is
/// fetched into `home/downloads` (resuming a partial download), extracted atomically, checked
/// to be a photo dataset (class folders with photos), and deleted. An archive that turns out
/// corrupt or not a dataset is deleted too, and nothing of it stays in `home/datasets`, so
/// the next call downloads afresh instead of failing the same way forever. An archive that
/// could not be extracted for a local reason (a full disk) is kept for the next try.
pub fn download_dataset(url: &str, home: &Path, options: &FetchOptions) -> Result<PathBuf> {
    let file_name = archive_file_name(url);
    let key = fetch::source_key(url);
    let expected = dataset_folder(home, url);
    if expected.is_dir() {
        return Ok(expected);
    }
    let downloads = home.join("downloads");
    std::fs::create_dir_all(&downloads).at(&downloads)?;
    // One process downloads and extracts; another waits, then finds the folder. (The lock
    // sits with the downloads, so that a broken `datasets` folder is reported by the
    // extraction, with the archive kept.)
    let stem = archive_stem(file_name);
    let lock = downloads.join(format!("{stem}-{key}-extraction"));
    let started = std::time::Instant::now();
    let _lock = crate::files::FileLock::acquire(&lock, file_name, options.deadline)?;
    if expected.is_dir() {
        return Ok(expected);
    }
    let archive_path = downloads.join(format!("{key}-{file_name}"));
    // One deadline for the whole call: the wait above counts against the download's.
    let options = FetchOptions {
        deadline: options.deadline.saturating_sub(started.elapsed()),
        ..options.clone()
    };
    fetch::fetch(url, &archive_path, &options)?;
    let extracted = archive::extract_tgz_checked(&archive_path, &expected, |content| {
        Dataset::open(content).map(|_| ())
    });
    // Once extracted the archive is dead weight; if it was corrupt or not a dataset, keeping
    // it would make every later call fail the same way instead of downloading it again.
    if matches!(
        extracted,
        Ok(()) | Err(crate::Error::Archive { .. } | crate::Error::Dataset { .. })
    ) {
        let _ = std::fs::remove_file(&archive_path);
    }
    extracted.map(|()| expected)
}

fn archive_stem(file_name: &str) -> &str {
    [".tar.gz", ".tgz", ".gz", ".tar"]
        .iter()
        .find_map(|ext| file_name.strip_suffix(ext))
        .unwrap_or(file_name)
}
