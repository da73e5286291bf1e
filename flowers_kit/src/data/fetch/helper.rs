//! Downloads over HTTP in a child process, for builds without the `download` feature (the
//! notebooks'): `flowers fetch` downloads the file to `<dest>.fetched` with the same
//! resuming, retries and bounds as the `download` feature's client, and this process checks
//! it and moves it into the cache. Its progress lines go to this process's stdout (a notebook
//! shows them as the cell's output) and its warnings to stderr.
//!
//! The program is, in order: the one [`FETCH_PROGRAM_VARIABLE`] names; the kit's own build
//! of it next to its source (`target/debug/flowers`, which `./lab` and `./test` build, then
//! `target/release/flowers`); `flowers` on the `PATH`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use super::{check_complete, part_file, Checked, FetchOptions, Verify, FETCH_PROGRAM_VARIABLE};
use crate::error::{Error, Result};
use crate::files::sibling;

/// How long the helper may overrun the deadline it was given (it stops itself at the
/// deadline; this covers its start and exit) before it is killed.
const GRACE: Duration = Duration::from_secs(10);

/// How much of the helper's stderr is kept for the error message (all of it is passed on).
const KEPT_STDERR_BYTES: usize = 4096;

/// Downloads `url` to `dest` through the helper program (see [`super::fetch_verified`]).
pub(super) fn download(
    url: &str,
    dest: &Path,
    options: &FetchOptions,
    verify: Verify<'_>,
    started: Instant,
) -> Result<()> {
    let program = super::flowers_program().ok_or_else(|| Error::Download {
        url: url.to_string(),
        reason: format!(
            "this build of the kit (without its `download` feature, as the notebooks build it) \
             downloads with the `flowers` program, and none was found: build it with \
             `cargo build -p flowers_kit --bin flowers` (./lab does) or name it in \
             {FETCH_PROGRAM_VARIABLE}"
        ),
    })?;
    let fetched = fetched_path(dest);
    // A file an earlier helper completed but no one checked, or a part it will resume, may
    // come from another version of the file: if the check fails, one fresh download.
    let mut resumed = fetched.exists() || part_file(&fetched).exists();
    loop {
        run(&program, url, &fetched, options, started)?;
        match check_complete(url, &fetched, dest, verify, resumed)? {
            Checked::Cached => return Ok(()),
            Checked::FetchAfresh => resumed = false,
        }
    }
}

/// Where the helper downloads `dest` to, before it is checked.
pub(super) fn fetched_path(dest: &Path) -> PathBuf {
    sibling(dest, ".fetched")
}

/// Runs the helper once, to completion, within what is left of the deadline.
fn run(
    program: &Path,
    url: &str,
    fetched: &Path,
    options: &FetchOptions,
    started: Instant,
) -> Result<()> {
    let failed = |reason: String| Error::Download {
        url: url.to_string(),
        reason,
    };
    let left = options.deadline.saturating_sub(started.elapsed());
    if left.is_zero() {
        return Err(failed(format!(
            "no time left within the {} s deadline",
            options.deadline.as_secs()
        )));
    }
    // Within the ranges `flowers fetch` accepts, so that no setting the library takes is
    // refused by the program with a message about its flags.
    let day = Duration::from_secs(24 * 60 * 60);
    let millis = |d: Duration, most: Duration| {
        d.clamp(Duration::from_millis(1), most)
            .as_millis()
            .to_string()
    };
    // The helper's progress lines follow what this process printed so far.
    let _ = std::io::stdout().flush();
    let mut child = Command::new(program)
        .arg("fetch")
        .args(["--attempts", &options.attempts.clamp(1, 100).to_string()])
        .args([
            "--backoff-ms",
            &millis(options.backoff, Duration::from_secs(3600)),
        ])
        .args(["--timeout-ms", &millis(options.timeout, day)])
        .args(["--deadline-ms", &millis(left, day.saturating_mul(7))])
        .args(["--min-rate", &options.min_rate.to_string()])
        .args(["--slow-window-ms", &millis(options.slow_window, day)])
        .args(["--max-bytes", &options.max_bytes.to_string()])
        .arg("--")
        .arg(url)
        .arg(fetched)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            failed(format!(
                "cannot run the download program {}: {e}",
                program.display()
            ))
        })?;
    let stderr = child.stderr.take().map(pass_on);
    let status = wait(&mut child, left.saturating_add(GRACE));
    // The program's stderr ends with it, unless something it started holds it open: the
    // message then goes without its last lines rather than waiting for them.
    let kept = stderr
        .and_then(|lines| lines.recv_timeout(GRACE).ok())
        .unwrap_or_else(|| b"(the download program's messages did not end with it)".to_vec());
    match status {
        Some(status) if status.success() => Ok(()),
        Some(status) => Err(failed(helper_error(url, program, status, &kept))),
        None => Err(failed(format!(
            "the download program {} did not finish within the {} s deadline and was stopped",
            program.display(),
            options.deadline.as_secs()
        ))),
    }
}

/// Copies the helper's stderr (its retries and warnings) to this process's line by line as
/// it comes, except its closing `Error:` line, which this process's error repeats; sends its
/// last [`KEPT_STDERR_BYTES`] bytes once it ends.
fn pass_on(from: impl Read + Send + 'static) -> Receiver<Vec<u8>> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        // Lines are bounded: a longer one is passed on in pieces.
        let mut lines = BufReader::new(from);
        let mut line = Vec::new();
        while lines
            .by_ref()
            .take(KEPT_STDERR_BYTES as u64)
            .read_until(b'\n', &mut line)
            .is_ok_and(|read| read > 0)
        {
            if !line.starts_with(b"Error: ") {
                let _ = std::io::stderr().write_all(&line);
            }
            kept.append(&mut line);
            let excess = kept.len().saturating_sub(KEPT_STDERR_BYTES);
            kept.drain(..excess);
        }
        // The receiver may have stopped waiting.
        let _ = sender.send(kept);
    });
    receiver
}

/// The child's exit status, or `None` (after killing it) if it outlived `limit` or its
/// status could not be read.
fn wait(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let until = Instant::now().checked_add(limit);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if until.is_none_or(|until| Instant::now() < until) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// The reason a failed helper gave: its `Error:` line, without the `flowers` program's own
/// "download of <url> failed: " prefix; else (an old `flowers` without `fetch`, another
/// program) its first error line, with the exit status.
fn helper_error(url: &str, program: &Path, status: ExitStatus, stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines = || text.lines().map(str::trim).filter(|line| !line.is_empty());
    match lines().rev().find_map(|line| line.strip_prefix("Error: ")) {
        Some(reason) => reason
            .strip_prefix(&format!("download of {url} failed: "))
            .unwrap_or(reason)
            .to_string(),
        None => {
            let said = lines()
                .find(|line| line.to_ascii_lowercase().starts_with("error"))
                .or_else(|| lines().next_back())
                .map(|line| format!(": {line}"))
                .unwrap_or_default();
            format!(
                "the download program {} failed ({status}){said}",
                program.display()
            )
        }
    }
}
