//! Writing files so that a reader never sees half of one.

// This module reads untrusted input: every index and every arithmetic step is checked or
// justified where it is allowed.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, then a rename.
/// Creates the folder if needed; the file gets the usual `rw-r--r--` permissions.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).at(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).at(dir)?;
    std::io::Write::write_all(&mut tmp, bytes).at(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // tempfile creates 0600 files; results are meant to be shared like any other file.
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .at(path)?;
    }
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Reads a file that must be a regular file (links followed) of at most `max_bytes`: the
/// bounded read behind every weight, classifier and photo file. `what` names the kind of file
/// in errors ("classifier file"); `refuse` turns a refusal's reason into the caller's error.
pub fn read_regular(
    path: &Path,
    max_bytes: u64,
    what: &str,
    refuse: impl Fn(String) -> Error,
) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        // Non-blocking: opening a FIFO with no writer would otherwise wait forever; the flag
        // does not change how a regular file reads.
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).at(path)?;
    let metadata = file.metadata().at(path)?;
    if !metadata.is_file() {
        return Err(refuse(format!(
            "not a regular file (a FIFO, device or folder?), so not a {what}"
        )));
    }
    if metadata.len() > max_bytes {
        return Err(refuse(format!(
            "{} bytes is more than a {what} may hold ({max_bytes} bytes)",
            metadata.len()
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    // Bounded even if the file grows while it is read.
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .at(path)?;
    if bytes.len() as u64 > max_bytes {
        return Err(refuse(format!(
            "grew past {max_bytes} bytes while being read"
        )));
    }
    Ok(bytes)
}

/// A little-endian f32 from 4 bytes (0.0 for a chunk of another length, which
/// `chunks_exact(4)` never yields).
pub(crate) fn le_f32(chunk: &[u8]) -> f32 {
    <[u8; 4]>::try_from(chunk).map_or(0.0, f32::from_le_bytes)
}
