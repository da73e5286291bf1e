//! Downloads over HTTP in this process, with reqwest (the `download` feature): resumed with
//! `Range`, retried with backoff, bounded by the deadline, a minimum rate and a size cap.

// This module reads untrusted input: every index and every arithmetic step is checked or
// justified where it is allowed.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use super::{check_complete, display_name, part_file, Checked, FetchOptions, Verify};
use crate::error::{Error, Result};
use crate::progress::{Progress, Unit};

/// Whether a failed attempt is worth retrying.
enum Failure {
    /// Network trouble or a 5xx: try again, resuming from what is on disk.
    Transient(String),
    /// The server said no (404, 403…), or something that will not change: stop.
    Permanent(String),
}

/// Downloads `url` to `dest` (see [`super::fetch_verified`]).
pub(super) fn download(
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
    let part = part_file(dest);
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
            Ok(resumed) => {
                match check_complete(url, &part, dest, verify, resumed && !fresh_retry_done)? {
                    Checked::Cached => return Ok(()),
                    Checked::FetchAfresh => {
                        fresh_retry_done = true;
                        attempt = attempt.saturating_sub(1);
                        continue;
                    }
                }
            }
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
