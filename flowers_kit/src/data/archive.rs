//! Safe, atomic extraction of `.tgz` archives.
//!
//! Entries are written into a temporary folder beside the destination; only when the whole
//! gzip+tar stream has been read and checked (gzip CRC and length included) is the result
//! renamed into place. Anything unsafe — absolute paths, `..`, links pointing outside the
//! archive, device files, entry types it does not know — aborts the extraction and removes
//! the temporary folder, so a bad archive leaves nothing behind. GNU sparse files are
//! extracted with their holes filled. A failed write (a full disk) is reported as an I/O
//! error on the file being written, not as a damaged archive.

// This module reads untrusted input: every index and every arithmetic step is checked or
// justified where it is allowed.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::error::{Error, IoContext, Result};
use crate::files::ScratchDir;

/// Extracts the `.tgz` at `archive` so that its content appears at `dest`, all at once.
///
/// An archive with a single top-level folder (like `flower_photos.tgz`, whose photos sit
/// under `flower_photos/`) has that folder's content placed at `dest`; any other archive
/// has its whole content placed there. If `dest` already exists it is left untouched.
pub fn extract_tgz(archive: &Path, dest: &Path) -> Result<()> {
    extract_tgz_checked(archive, dest, |_| Ok(()))
}

/// [`extract_tgz`], with `check` run on the extracted content before it is moved to `dest`:
/// content that fails the check never appears at `dest`.
pub fn extract_tgz_checked(
    archive: &Path,
    dest: &Path,
    check: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).at(parent)?;
    remove_stale_staging(parent);
    let staging = ScratchDir::new_in(parent, STAGING_PREFIX)?;
    let file = File::open(archive).at(archive)?;
    let size = file.metadata().at(archive)?.len();
    unpack(
        BufReader::new(file),
        staging.path(),
        archive,
        extraction_limit(size),
    )?;

    let source = match single_top_folder(staging.path())? {
        Some(name) => staging.path().join(name),
        None => staging.path().to_path_buf(),
    };
    check(&source)?;
    if !dest.exists() {
        fs::rename(&source, dest).at(dest)?;
    }
    // `staging` is dropped here, removing whatever did not move.
    Ok(())
}

/// The most bytes an archive of `size` bytes may expand to: photos barely compress, so 8×
/// its size plus 64 MiB is generous, and 16 GiB in all. A gzip or sparse-file bomb stops
/// there instead of filling the disk.
fn extraction_limit(size: u64) -> u64 {
    size.saturating_mul(8)
        .saturating_add(64 << 20)
        .min(MAX_EXTRACTED_BYTES)
}

/// The most an archive is ever extracted to.
pub const MAX_EXTRACTED_BYTES: u64 = 16 << 30;

/// The most entries an archive may hold (the flower photos are 3,676).
const MAX_ENTRIES: usize = 1_000_000;

/// Staging folders are named `.extracting-<pid>-<n>` ([`ScratchDir`]).
const STAGING_PREFIX: &str = ".extracting-";

/// A staging folder is stale when its process is gone, or when it is older than this (the
/// process id may have been reused).
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes staging folders in `dir` left by extractions that were killed: those whose process
/// no longer runs, or older than an hour. Failures are ignored: this is tidying up.
pub fn remove_stale_staging(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(STAGING_PREFIX)) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let gone = pid.is_some_and(|pid| {
            pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists()
        }) && Path::new("/proc/self").exists();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_AFTER);
        if gone || old {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn single_top_folder(dir: &Path) -> Result<Option<String>> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        entries.push(entry.at(dir)?);
    }
    match entries.as_slice() {
        [only] if only.file_type().at(&only.path())?.is_dir() => {
            Ok(Some(only.file_name().to_string_lossy().into_owned()))
        }
        _ => Ok(None),
    }
}

fn unpack(reader: impl Read, into: &Path, archive: &Path, limit: u64) -> Result<()> {
    let bad = |reason: String| Error::Archive {
        path: archive.to_path_buf(),
        reason,
    };
    let corrupt = |e: io::Error| bad(format!("corrupt or truncated gzip/tar stream: {e}"));

    let mut tar = tar::Archive::new(MultiGzDecoder::new(reader));
    let mut files = 0usize;
    let mut skipped_links = 0usize;
    let mut left = limit;
    for (count, entry) in tar.entries().map_err(corrupt)?.enumerate() {
        if count >= MAX_ENTRIES {
            return Err(bad(format!(
                "more than {MAX_ENTRIES} entries; nothing was extracted"
            )));
        }
        let mut entry = entry.map_err(corrupt)?;
        let raw_path = entry.path().map_err(corrupt)?.into_owned();
        let Some(relative) = entry_path(&raw_path) else {
            return Err(bad(format!(
                "entry {} points outside the archive (absolute path or '..'); nothing was extracted",
                raw_path.display()
            )));
        };
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry.link_name().map_err(corrupt)?.unwrap_or_default();
            // Symlink targets are relative to the link's folder, hard links to the archive root.
            let base = if kind.is_symlink() {
                relative.parent().unwrap_or(Path::new("")).to_path_buf()
            } else {
                PathBuf::new()
            };
            if target.is_absolute() || contained(&base.join(&target)).is_none() {
                return Err(bad(format!(
                    "link {} -> {} points outside the archive; nothing was extracted",
                    raw_path.display(),
                    target.display()
                )));
            }
            // Links inside the archive are harmless but never needed for a photo dataset;
            // not creating them means no later entry can be written through one.
            skipped_links = skipped_links.saturating_add(1);
            continue;
        }
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            return Err(bad(format!(
                "entry {} is a device or FIFO; nothing was extracted",
                raw_path.display()
            )));
        }
        if relative.as_os_str().is_empty() {
            continue;
        }
        let dest = into.join(&relative);
        if kind.is_dir() {
            fs::create_dir_all(&dest).at(&dest)?;
        } else if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
            // tar expands a GNU sparse entry's map, holes included, as it is read.
            if let Some(dir) = dest.parent() {
                fs::create_dir_all(dir).at(dir)?;
            }
            let mut out = File::create(&dest).at(&dest)?;
            let written = copy_entry(&mut entry, &mut out, &dest, left).map_err(|e| match e {
                Copy::Read(e) => corrupt(e),
                Copy::Write(e) => e,
                Copy::TooLarge => bad(format!(
                    "it expands past {limit} bytes (at {}); a gzip or sparse-file bomb? \
                     nothing was extracted",
                    raw_path.display()
                )),
            })?;
            left = left.saturating_sub(written);
            files = files.saturating_add(1);
        } else if !(kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink())
        {
            // Metadata entries carry no data of their own; anything else is unknown here and
            // would be silently lost.
            return Err(bad(format!(
                "entry {} has tar type {:?}, which cannot be extracted; nothing was extracted",
                raw_path.display(),
                kind
            )));
        }
    }
    // tar stops at its end-of-archive blocks; read the gzip stream to its end so that its CRC
    // and length trailer are checked too.
    let mut rest = tar.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(corrupt)?;
    if files == 0 {
        return Err(bad("the archive holds no files".into()));
    }
    if skipped_links > 0 {
        eprintln!(
            "note: {}: skipped {skipped_links} link(s) inside the archive",
            archive.display()
        );
    }
    Ok(())
}

/// Why copying an entry stopped.
pub(crate) enum Copy {
    /// The archive could not be read: it is damaged or truncated.
    Read(io::Error),
    /// The file could not be written (a full disk…): not the archive's fault.
    Write(Error),
    /// The entry holds more than the bytes allowed.
    TooLarge,
}

/// Copies an entry's bytes to `out` (the file at `path`), at most `limit` of them, telling
/// read failures from write failures.
pub(crate) fn copy_entry(
    entry: &mut impl Read,
    out: &mut impl io::Write,
    path: &Path,
    limit: u64,
) -> std::result::Result<u64, Copy> {
    let mut buffer = [0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match entry.read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Copy::Read(e)),
        };
        let chunk = buffer
            .get(..n)
            .expect("invariant: Read::read returns at most the buffer's length");
        out.write_all(chunk)
            .map_err(|e| Copy::Write(Error::io(path, e)))?;
        total = total.saturating_add(n as u64);
        if total > limit {
            return Err(Copy::TooLarge);
        }
    }
}

/// An entry's own path with `.` removed, or `None` if it is absolute or has any `..`.
fn entry_path(path: &Path) -> Option<PathBuf> {
    if path.components().any(|c| c == Component::ParentDir) {
        return None;
    }
    contained(path)
}

/// A link target resolved lexically, or `None` if it is absolute or climbs out with `..`.
fn contained(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                // `a/../b` stays inside; `../b` does not.
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file system that is full: every write fails with ENOSPC.
    struct FullDisk;

    impl io::Write for FullDisk {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(28))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_disk_is_a_write_error_on_the_file_not_a_damaged_archive() {
        let mut entry: &[u8] = b"photo bytes";
        let result = copy_entry(
            &mut entry,
            &mut FullDisk,
            Path::new("out/roses/a.jpg"),
            u64::MAX,
        );
        match result {
            Err(Copy::Write(e)) => {
                let message = e.to_string();
                assert!(message.contains("out/roses/a.jpg"), "{message}");
                assert!(message.contains("No space left on device"), "{message}");
            }
            Err(Copy::Read(e)) => panic!("reported as a damaged archive: {e}"),
            Err(Copy::TooLarge) => panic!("reported as too large"),
            Ok(n) => panic!("copied {n} bytes to a full disk"),
        }
    }
}
