//! Safe, atomic extraction of `.tgz` archives.
//!
//! Entries are written into a temporary folder beside the destination; only when the whole
//! gzip+tar stream has been read and checked (gzip CRC and length included) is the result
//! renamed into place. Anything unsafe — absolute paths, `..`, links pointing outside the
//! archive, device files — aborts the extraction and removes the temporary folder, so a bad
//! archive leaves nothing behind.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::error::{Error, IoContext, Result};

/// Extracts the `.tgz` at `archive` so that its content appears at `dest`, all at once.
///
/// An archive with a single top-level folder (like `flower_photos.tgz`, whose photos sit
/// under `flower_photos/`) has that folder's content placed at `dest`; any other archive
/// has its whole content placed there. If `dest` already exists it is left untouched.
pub fn extract_tgz(archive: &Path, dest: &Path) -> Result<()> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).at(parent)?;
    let staging = tempfile::Builder::new()
        .prefix(".extracting-")
        .tempdir_in(parent)
        .at(parent)?;
    let file = File::open(archive).at(archive)?;
    unpack(BufReader::new(file), staging.path(), archive)?;

    let source = match single_top_folder(staging.path())? {
        Some(name) => staging.path().join(name),
        None => staging.path().to_path_buf(),
    };
    if !dest.exists() {
        fs::rename(&source, dest).at(dest)?;
    }
    // `staging` is dropped here, removing whatever did not move.
    Ok(())
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

fn unpack(reader: impl Read, into: &Path, archive: &Path) -> Result<()> {
    let bad = |reason: String| Error::Archive {
        path: archive.to_path_buf(),
        reason,
    };
    let corrupt = |e: io::Error| bad(format!("corrupt or truncated gzip/tar stream: {e}"));

    let mut tar = tar::Archive::new(MultiGzDecoder::new(reader));
    let mut files = 0usize;
    let mut skipped_links = 0usize;
    for entry in tar.entries().map_err(corrupt)? {
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
            skipped_links += 1;
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
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            if let Some(dir) = dest.parent() {
                fs::create_dir_all(dir).at(dir)?;
            }
            let mut out = File::create(&dest).at(&dest)?;
            io::copy(&mut entry, &mut out).map_err(corrupt)?;
            files += 1;
        }
        // Other kinds (PAX/GNU metadata) carry no data of their own.
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
