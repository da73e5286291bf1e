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

// This module reads untrusted input: every index and every arithmetic step is checked or
// justified where it is allowed.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::files::{sibling, FileLock};
use crate::progress::{Progress, Unit};

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

/// Checks a fetched file before it enters the cache; an error rejects it.
pub type Verify<'a> = &'a dyn Fn(&Path) -> Result<()>;

/// Whether a failed attempt is worth retrying.
enum Failure {
    /// Network trouble or a 5xx: try again, resuming from what is on disk.
    Transient(String),
    /// The server said no (404, 403…), or something that will not change: stop.
    Permanent(String),
}

/// The path a download is written to while it is under way.
pub fn partial_path(dest: &Path) -> PathBuf {
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
    let part = partial_path(dest);
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
    if let Err(e) = verify(&part) {
        let _ = fs::remove_file(&part);
        return Err(rejected(&source.display().to_string(), &e));
    }
    fs::rename(&part, dest).at(dest)
}

/// The error for a file that failed verification.
fn rejected(url: &str, error: &Error) -> Error {
    Error::Download {
        url: url.to_string(),
        reason: format!("what arrived is not the expected file, so it was deleted: {error}"),
    }
}

fn download(
    url: &str,
    dest: &Path,
    options: &FetchOptions,
    verify: Verify<'_>,
    started: Instant,
) -> Result<()> {
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(options.timeout)
        // In the blocking client this bounds the wait for the headers and each body read,
        // not the whole transfer; the deadline and the rate check below bound that.
        .timeout(options.timeout)
        .build()
        .map_err(|e| Error::Download {
            url: url.to_string(),
            reason: format!("cannot create an HTTP client: {e}"),
        })?;
    let part = partial_path(dest);
    let limits = Limits { started, options };
    let attempts = options.attempts.max(1);
    let mut pause = options.backoff;
    let mut last = String::new();
    let mut fresh_retry_done = false;
    let mut attempt = 0;
    while attempt < attempts {
        if limits.left().is_zero() {
            last = format!(
                "{}no time left within the {} s deadline",
                if last.is_empty() {
                    String::new()
                } else {
                    format!("{last}; ")
                },
                options.deadline.as_secs()
            );
            break;
        }
        attempt = attempt.saturating_add(1);
        match try_once(&client, url, &part, &limits) {
            Ok(resumed) => match verify(&part) {
                Ok(()) => return fs::rename(&part, dest).at(dest),
                Err(e) => {
                    remove_partial(&part).map_err(|f| failure_error(url, f))?;
                    if resumed && !fresh_retry_done {
                        // The first part may have come from an older version of the file.
                        fresh_retry_done = true;
                        attempt = attempt.saturating_sub(1);
                        eprintln!("download of {url}: the resumed file failed its check ({e}); downloading it afresh");
                        continue;
                    }
                    return Err(rejected(url, &e));
                }
            },
            Err(Failure::Permanent(reason)) => {
                return Err(Error::Download {
                    url: url.to_string(),
                    reason,
                })
            }
            Err(Failure::Transient(reason)) => {
                last = reason;
                if attempt < attempts {
                    if pause >= limits.left() {
                        last = format!("{last}; no time left before the deadline for a retry");
                        break;
                    }
                    eprintln!(
                        "download of {url}: {last}; retrying in {:.1} s ({attempt}/{attempts})",
                        pause.as_secs_f64()
                    );
                    std::thread::sleep(pause);
                    pause = pause.saturating_mul(2);
                }
            }
        }
    }
    Err(Error::Download {
        url: url.to_string(),
        reason: format!(
            "{last} (gave up after {attempt} attempts{})",
            resume_note(&part)
        ),
    })
}

fn failure_error(url: &str, failure: Failure) -> Error {
    let (Failure::Transient(reason) | Failure::Permanent(reason)) = failure;
    Error::Download {
        url: url.to_string(),
        reason,
    }
}

/// "; the partial file … will be resumed next time", only when there is something to resume.
fn resume_note(part: &Path) -> String {
    if fs::metadata(part).is_ok_and(|m| m.len() > 0) {
        format!(
            "; the partial file {} will be resumed next time",
            part.display()
        )
    } else {
        String::new()
    }
}

/// The bounds every attempt of one fetch shares.
struct Limits<'a> {
    started: Instant,
    options: &'a FetchOptions,
}

impl Limits<'_> {
    /// Time left before the deadline.
    fn left(&self) -> Duration {
        self.options.deadline.saturating_sub(self.started.elapsed())
    }
}

/// One request: resumes from the bytes already in `part`, streams the rest within the
/// limits, checks the size. `Ok(true)` when the file was completed by resuming.
fn try_once(
    client: &reqwest::blocking::Client,
    url: &str,
    part: &Path,
    limits: &Limits<'_>,
) -> Result<bool, Failure> {
    let options = limits.options;
    let have = fs::metadata(part).map_or(0, |m| m.len());
    if have > options.max_bytes {
        remove_partial(part)?;
        return Err(Failure::Transient(
            "the partial file is larger than any file accepted; starting over".into(),
        ));
    }
    // No single wait (for the headers, or a read) may outlast the deadline.
    let mut request = client.get(url).timeout(options.timeout.min(limits.left()));
    if have > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut response = request.send().map_err(|e| classify(&e))?;
    let status = response.status();

    let (start, total) = match status.as_u16() {
        200 => (0, response.content_length()),
        206 => match content_range(&response) {
            Some((start, total)) if start == have => (start, total),
            // The server sent some other range: drop what we have and start clean.
            _ => {
                remove_partial(part)?;
                return Err(Failure::Transient(
                    "server answered an unexpected byte range; starting over".into(),
                ));
            }
        },
        416 => {
            // Nothing left to send. The partial file is either complete or bogus.
            let total = content_range_total(&response);
            if total == Some(have) {
                return Ok(have > 0);
            }
            remove_partial(part)?;
            return Err(Failure::Transient(
                "server refused to resume the partial file; starting over".into(),
            ));
        }
        408 | 429 | 500..=599 => return Err(Failure::Transient(format!("HTTP {status}"))),
        _ => return Err(Failure::Permanent(format!("HTTP {status}"))),
    };
    if let Some(total) = total.filter(|&t| t > options.max_bytes) {
        return Err(Failure::Permanent(format!(
            "the server announces {total} bytes, more than the {} accepted",
            options.max_bytes
        )));
    }

    let mut file = if start == 0 {
        File::create(part)
    } else {
        OpenOptions::new().append(true).open(part)
    }
    .map_err(|e| Failure::Permanent(format!("cannot write {}: {e}", part.display())))?;

    let name = display_name(url);
    let mut progress = Progress::new(&format!("Downloading {name}"), total, Unit::Bytes);
    progress.resume_from(start);
    let mut written = start;
    let mut window = (Instant::now(), written);
    let mut buffer = vec![0u8; 256 * 1024];
    let stop = |progress: Progress, failure: Failure| {
        let (Failure::Transient(reason) | Failure::Permanent(reason)) = &failure;
        progress.fail(reason);
        Err(failure)
    };
    loop {
        let n = match response.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let _ = file.flush();
                let reason = format!("connection lost after {written} bytes: {e}");
                return stop(progress, Failure::Transient(reason));
            }
        };
        let chunk = buffer
            .get(..n)
            .expect("invariant: Read::read returns at most the buffer's length");
        written = written.saturating_add(n as u64);
        if written > options.max_bytes {
            drop(file);
            remove_partial(part)?;
            let reason = format!(
                "the server sent more than the {} bytes accepted; the partial file was deleted",
                options.max_bytes
            );
            return stop(progress, Failure::Permanent(reason));
        }
        if let Err(e) = file.write_all(chunk) {
            let reason = format!("cannot write {}: {e}", part.display());
            return stop(progress, Failure::Permanent(reason));
        }
        progress.inc(n as u64);
        if limits.started.elapsed() > options.deadline {
            let _ = file.flush();
            let reason = format!(
                "not finished within the {} s deadline ({written} of {} bytes){}",
                options.deadline.as_secs(),
                total.map_or("?".into(), |t| t.to_string()),
                resume_note(part)
            );
            return stop(progress, Failure::Permanent(reason));
        }
        let (since, at) = window;
        let span = since.elapsed();
        if span >= options.slow_window {
            let got = written.saturating_sub(at);
            let wanted = (options.min_rate as f64 * span.as_secs_f64()) as u64;
            if got < wanted {
                let _ = file.flush();
                let reason = format!(
                    "the server sent only {got} bytes in {:.0} s, slower than the {} bytes/s \
                     accepted",
                    span.as_secs_f64(),
                    options.min_rate
                );
                return stop(progress, Failure::Transient(reason));
            }
            window = (Instant::now(), written);
        }
    }
    file.sync_all()
        .map_err(|e| Failure::Permanent(format!("cannot write {}: {e}", part.display())))?;
    progress.finish_with(|s| format!("Downloaded {name}: {}", s.bytes()));

    match total {
        Some(total) if written < total => Err(Failure::Transient(format!(
            "connection closed after {written} of {total} bytes"
        ))),
        Some(total) if written > total => {
            remove_partial(part)?;
            Err(Failure::Transient(format!(
                "received {written} bytes but the server announced {total}; starting over"
            )))
        }
        _ => Ok(start > 0),
    }
}

/// A failed request: transient (network trouble), except a redirect loop or a too-long
/// redirect chain, which the same request will hit again.
fn classify(e: &reqwest::Error) -> Failure {
    // Walk the source chain: reqwest's own message ("error sending request") hides the cause.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    if e.is_redirect() {
        Failure::Permanent(message)
    } else {
        Failure::Transient(message)
    }
}

fn remove_partial(part: &Path) -> Result<(), Failure> {
    match fs::remove_file(part) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Failure::Permanent(format!(
            "cannot remove {}: {e}",
            part.display()
        ))),
    }
}

/// Parses `Content-Range: bytes START-END/TOTAL` into (START, Some(TOTAL)).
fn content_range(response: &reqwest::blocking::Response) -> Option<(u64, Option<u64>)> {
    let value = response
        .headers()
        .get(reqwest::header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let start = range.split_once('-')?.0.trim().parse().ok()?;
    Some((start, total.trim().parse().ok()))
}

/// The TOTAL of `Content-Range: bytes */TOTAL` (a 416 answer).
fn content_range_total(response: &reqwest::blocking::Response) -> Option<u64> {
    let value = response
        .headers()
        .get(reqwest::header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    value.rsplit_once('/')?.1.trim().parse().ok()
}
