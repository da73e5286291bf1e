//! HTTP downloads into the cache: resumable, retried, bounded in size and time, verified
//! before they enter the cache, and safe when several processes fetch the same file.
//!
//! A download streams into `<dest>.part`. A retry (within one call, or a later call after an
//! interrupted one) asks the server for the remaining bytes with a `Range` header and appends
//! them; a server that ignores ranges answers 200 and the file starts over. A complete file
//! (its size matching the server's `Content-Length`/`Content-Range`) is checked by the
//! caller's verifier and only then renamed to `<dest>`, so `<dest>` existing means the
//! download finished and was verified. A file that fails verification is deleted: the next
//! call fetches afresh instead of failing the same way forever.
//!
//! Every fetch holds a lock on `.<dest name>.lock` ([`FileLock`]): two processes never write the
//! same `.part`, and the second one waits, then finds `<dest>` in place.
//!
//! Where the HTTP client lives depends on the build:
//! - with the `download` feature (the default, and the `flowers` command line), in this
//!   process, with reqwest;
//! - without it (the notebooks' build), in a child process: the `flowers fetch` command
//!   downloads the file, with the same resuming, retries and bounds, and this process checks
//!   it and moves it into the cache. The notebook's kernel then never loads an HTTP stack:
//!   evcxr's type checker reads the source of every crate a cell's `:dep` pulls in, and
//!   reqwest with its async runtime, HTTP and TLS crates is the largest part of the kit's
//!   (see `helper.rs` for how the program is found).

// This module reads untrusted input: every index and every arithmetic step is checked or
// justified where it is allowed.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::files::{sibling, FileLock};

/// The `flowers` program, which the notebooks' build of the kit runs for what it leaves out
/// (downloads, ONNX export), if one is found: the one [`FETCH_PROGRAM_VARIABLE`] names; the
/// kit's own build of it next to its source (`target/debug/flowers`, which `./lab` and
/// `./test` build, then `target/release/flowers`); `flowers` on the `PATH`.
#[cfg(any(not(feature = "download"), not(feature = "onnx")))]
pub(crate) fn flowers_program() -> Option<PathBuf> {
    if let Some(named) = std::env::var_os(FETCH_PROGRAM_VARIABLE).filter(|v| !v.is_empty()) {
        // Named explicitly: used as given, so that a wrong name fails with its own message.
        return Some(PathBuf::from(named));
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR"));
    let built =
        ["debug", "release"].map(|profile| source.join("../target").join(profile).join("flowers"));
    if let Some(found) = built.into_iter().find(|path| path.is_file()) {
        return Some(found);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("flowers"))
        .find(|path| path.is_file())
}

#[cfg(not(feature = "download"))]
mod helper;
#[cfg(feature = "download")]
mod http;

#[cfg(not(feature = "download"))]
use helper::download;
#[cfg(feature = "download")]
use http::download;

/// How [`fetch`] retries, times out and bounds what it accepts.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    /// Pause before the first retry; it doubles for each further retry.
    pub backoff: Duration,
    /// How long to wait for a connection, for the response headers, and for each read once
    /// connected.
    pub timeout: Duration,
    /// The whole fetch, every attempt and pause included (default 1 hour: the flower archive
    /// is 229 MB, which takes 30 minutes at 1 Mbit/s). Past it the fetch stops with an error
    /// and keeps what it has for the next call to resume.
    pub deadline: Duration,
    /// The slowest transfer accepted, in bytes per second averaged over [`slow_window`]
    /// (default 1 KiB/s): a server trickling a byte a second would otherwise hold the learner
    /// until the deadline. Below it the attempt fails and is retried.
    ///
    /// [`slow_window`]: FetchOptions::slow_window
    pub min_rate: u64,
    /// The window over which [`min_rate`](FetchOptions::min_rate) is measured (default 60 s).
    pub slow_window: Duration,
    /// The largest file accepted, in bytes: a larger `Content-Length` is refused before
    /// anything is read, and a body that grows past it is cut off and deleted.
    pub max_bytes: u64,
}

/// Largest file [`FetchOptions::default`] accepts: 4 GiB (the flower archive is 229 MB, the
/// largest Keras Applications `no_top` file about 350 MB).
pub const MAX_DOWNLOAD_BYTES: u64 = 4 << 30;

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            attempts: 5,
            backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(60),
            deadline: Duration::from_secs(60 * 60),
            min_rate: 1024,
            slow_window: Duration::from_secs(60),
            max_bytes: MAX_DOWNLOAD_BYTES,
        }
    }
}

/// The environment variable naming the program that downloads for a build of the kit
/// without the `download` feature (the notebooks'): a `flowers` command line, which has it.
/// Unset, the kit looks for its own build of `flowers` next to its source, then on the `PATH`.
pub const FETCH_PROGRAM_VARIABLE: &str = "FLOWERS_KIT_FETCH";

/// Checks a fetched file before it enters the cache; an error rejects it.
pub type Verify<'a> = &'a dyn Fn(&Path) -> Result<()>;

/// The file an interrupted download of `dest` is kept in, to be resumed by the next call:
/// `<dest>.part`, or without the `download` feature (the helper program downloads to
/// `<dest>.fetched`) `<dest>.fetched.part`.
pub fn partial_path(dest: &Path) -> PathBuf {
    #[cfg(feature = "download")]
    let downloading = dest.to_path_buf();
    #[cfg(not(feature = "download"))]
    let downloading = helper::fetched_path(dest);
    part_file(&downloading)
}

/// The file a download or copy to `dest` is written to while it is under way.
fn part_file(dest: &Path) -> PathBuf {
    sibling(dest, ".part")
}

/// Downloads `source` to `dest` unless `dest` already exists.
///
/// `source` is an `http(s)://` URL, a `file://` URL or a plain local path (copied). Returns
/// `dest`. With `dest` in place, no network I/O happens at all. Nothing checks the content
/// beyond its size; see [`fetch_verified`].
pub fn fetch(source: &str, dest: &Path, options: &FetchOptions) -> Result<PathBuf> {
    fetch_verified(source, dest, options, &|_| Ok(()))
}

/// [`fetch`], with `verify` run on the complete file before it is renamed to `dest`. A file
/// that fails it is deleted and the error returned names the source and the reason; after a
/// resumed download, whose first part may have come from another version of the file, one
/// fresh download is tried first.
pub fn fetch_verified(
    source: &str,
    dest: &Path,
    options: &FetchOptions,
    verify: Verify<'_>,
) -> Result<PathBuf> {
    if dest.is_file() {
        return Ok(dest.to_path_buf());
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).at(parent)?;
    }
    let name = display_name(source);
    // The deadline covers the whole fetch, waiting for another process's lock included.
    let started = Instant::now();
    let _lock = FileLock::acquire(dest, &name, options.deadline)?;
    // Another process may have finished it while this one waited.
    if dest.is_file() {
        return Ok(dest.to_path_buf());
    }
    match local_source(source) {
        Some(path) => copy_local(&path, dest, options, verify)?,
        None => download(source, dest, options, verify, started)?,
    }
    Ok(dest.to_path_buf())
}

/// The cache key of a source (URL or path): the first 16 hex digits of its SHA-256. Cached
/// files carry it in their names, so that two sources serving different files under one
/// name never share an entry.
///
/// ```
/// use flowers_kit::data::fetch::source_key;
/// assert_eq!(source_key("http://a/x.h5").len(), 16);
/// assert_ne!(source_key("http://a/x.h5"), source_key("http://b/x.h5"));
/// ```
pub fn source_key(source: &str) -> String {
    let digest = crate::digest::sha256_hex(source.as_bytes());
    // 64 bits: no one finds a second URL with the key of a published one.
    digest[..16].to_string()
}

/// `Some(path)` when `source` names a local file rather than an HTTP URL.
pub(crate) fn local_source(source: &str) -> Option<PathBuf> {
    if let Some(path) = source.strip_prefix("file://") {
        return Some(PathBuf::from(path));
    }
    if source.starts_with("http://") || source.starts_with("https://") {
        None
    } else {
        Some(PathBuf::from(source))
    }
}

/// The last part of a URL or path, for messages.
fn display_name(source: &str) -> String {
    source
        .rsplit('/')
        .find(|part| !part.is_empty())
        .unwrap_or(source)
        .to_string()
}

fn copy_local(
    source: &Path,
    dest: &Path,
    options: &FetchOptions,
    verify: Verify<'_>,
) -> Result<()> {
    let part = part_file(dest);
    let refuse = |reason: String| Error::Download {
        url: source.display().to_string(),
        reason,
    };
    // Streamed, never held in memory: a regular file within the size cap (opened without
    // blocking, so a FIFO is refused rather than waited on).
    let mut open = OpenOptions::new();
    open.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.custom_flags(libc::O_NONBLOCK);
    }
    let file = open.open(source).at(source)?;
    let metadata = file.metadata().at(source)?;
    if !metadata.is_file() || metadata.len() > options.max_bytes {
        return Err(refuse(format!(
            "not a regular file of at most {} bytes",
            options.max_bytes
        )));
    }
    let mut out = File::create(&part).at(&part)?;
    let copied = std::io::copy(
        &mut file.take(options.max_bytes.saturating_add(1)),
        &mut out,
    )
    .at(&part)?;
    drop(out);
    if copied > options.max_bytes {
        let _ = fs::remove_file(&part);
        return Err(refuse(format!(
            "grew past {} bytes while being copied",
            options.max_bytes
        )));
    }
    // A copy is never resumed: a file that fails is an error.
    check_complete(&source.display().to_string(), &part, dest, verify, false).map(|_| ())
}

/// What a complete download became once checked ([`check_complete`]).
enum Checked {
    /// It passed, and is the cache entry now.
    Cached,
    /// It failed and was deleted, but had been resumed, so its first part may come from an
    /// older version of the file: download it once more, from the start.
    FetchAfresh,
}

/// Checks the complete file at `path` with `verify`: renamed to `dest` if it passes, deleted
/// if not. A failed file that was `resumed` asks for one fresh download; otherwise the
/// failure is the error. (Every way of fetching ends here.)
fn check_complete(
    url: &str,
    path: &Path,
    dest: &Path,
    verify: Verify<'_>,
    resumed: bool,
) -> Result<Checked> {
    let failure = match verify(path) {
        Ok(()) => return fs::rename(path, dest).at(dest).map(|()| Checked::Cached),
        Err(e) => e,
    };
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::Download {
                url: url.to_string(),
                reason: format!("cannot remove {}: {e}", path.display()),
            })
        }
    }
    if !resumed {
        return Err(rejected(url, &failure));
    }
    eprintln!(
        "download of {url}: the resumed file failed its check ({failure}); downloading it afresh"
    );
    Ok(Checked::FetchAfresh)
}

/// The error for a file that failed verification.
fn rejected(url: &str, error: &Error) -> Error {
    Error::Download {
        url: url.to_string(),
        reason: format!("what arrived is not the expected file, so it was deleted: {error}"),
    }
}
