//! HTTP downloads into the cache: resumable, retried, size-checked and atomic.
//!
//! A download streams into `<dest>.part`. A retry (within one call, or a later call after an
//! interrupted one) asks the server for the remaining bytes with a `Range` header and appends
//! them; a server that ignores ranges answers 200 and the file starts over. Only a complete
//! file whose size matches the server's `Content-Length`/`Content-Range` is renamed to
//! `<dest>`, so `<dest>` existing means the download finished.

// This module reads untrusted input: every index and every arithmetic step is checked or
// justified where it is allowed.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, IoContext, Result};
use crate::progress::{Progress, Unit};

/// How [`fetch`] retries and times out.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    /// Pause before the first retry; it doubles for each further retry.
    pub backoff: Duration,
    /// How long to wait for a connection, and for each read once connected.
    pub timeout: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            attempts: 5,
            backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(60),
        }
    }
}

/// Whether a failed attempt is worth retrying.
enum Failure {
    /// Network trouble or a 5xx: try again, resuming from what is on disk.
    Transient(String),
    /// The server said no (404, 403…): retrying will not help.
    Permanent(String),
}

/// The path a download is written to while it is under way.
pub fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

/// Downloads `source` to `dest` unless `dest` already exists.
///
/// `source` is an `http(s)://` URL, a `file://` URL or a plain local path (copied). Returns
/// `dest`. With `dest` in place, no network I/O happens at all.
pub fn fetch(source: &str, dest: &Path, options: &FetchOptions) -> Result<PathBuf> {
    if dest.is_file() {
        return Ok(dest.to_path_buf());
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).at(parent)?;
    }
    match local_source(source) {
        Some(path) => copy_local(&path, dest)?,
        None => download(source, dest, options)?,
    }
    Ok(dest.to_path_buf())
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

fn copy_local(source: &Path, dest: &Path) -> Result<()> {
    let part = partial_path(dest);
    fs::copy(source, &part).at(source)?;
    fs::rename(&part, dest).at(dest)
}

fn download(url: &str, dest: &Path, options: &FetchOptions) -> Result<()> {
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(options.timeout)
        // In the blocking client this bounds the wait for the headers and each body read,
        // not the whole transfer: a 220 MB archive on a slow line is fine, a stall is not.
        .timeout(options.timeout)
        .build()
        .map_err(|e| Error::Download {
            url: url.to_string(),
            reason: format!("cannot create an HTTP client: {e}"),
        })?;
    let part = partial_path(dest);
    let attempts = options.attempts.max(1);
    let mut pause = options.backoff;
    let mut last = String::new();
    for attempt in 1..=attempts {
        match try_once(&client, url, &part) {
            Ok(()) => return fs::rename(&part, dest).at(dest),
            Err(Failure::Permanent(reason)) => {
                return Err(Error::Download {
                    url: url.to_string(),
                    reason,
                })
            }
            Err(Failure::Transient(reason)) => {
                last = reason;
                if attempt < attempts {
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
    // Only promise a resume when there is something to resume.
    let resume = if fs::metadata(&part).is_ok_and(|m| m.len() > 0) {
        format!(
            "; the partial file {} will be resumed next time",
            part.display()
        )
    } else {
        String::new()
    };
    Err(Error::Download {
        url: url.to_string(),
        reason: format!("{last} (gave up after {attempts} attempts{resume})"),
    })
}

/// One request: resumes from the bytes already in `part`, streams the rest, checks the size.
fn try_once(client: &reqwest::blocking::Client, url: &str, part: &Path) -> Result<(), Failure> {
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut request = client.get(url);
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
                return Ok(());
            }
            remove_partial(part)?;
            return Err(Failure::Transient(
                "server refused to resume the partial file; starting over".into(),
            ));
        }
        408 | 429 | 500..=599 => return Err(Failure::Transient(format!("HTTP {status}"))),
        _ => return Err(Failure::Permanent(format!("HTTP {status}"))),
    };

    let mut file = if start == 0 {
        File::create(part)
    } else {
        OpenOptions::new().append(true).open(part)
    }
    .map_err(|e| Failure::Permanent(format!("cannot write {}: {e}", part.display())))?;

    let name = url.rsplit('/').next().unwrap_or(url);
    let mut progress = Progress::new(&format!("Downloading {name}"), total, Unit::Bytes);
    progress.resume_from(start);
    let mut written = start;
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let n = match response.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let _ = file.flush();
                let reason = format!("connection lost after {written} bytes: {e}");
                progress.fail(&reason);
                return Err(Failure::Transient(reason));
            }
        };
        if let Err(e) = file.write_all(buffer.get(..n).unwrap_or_default()) {
            let reason = format!("cannot write {}: {e}", part.display());
            progress.fail(&reason);
            return Err(Failure::Permanent(reason));
        }
        written = written.saturating_add(n as u64);
        progress.inc(n as u64);
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
        _ => Ok(()),
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
