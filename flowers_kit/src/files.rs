//! Writing files so that a reader never sees half of one.

// This module reads untrusted input: every index and every arithmetic step is checked or
// justified where it is allowed.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, then a rename.
/// Creates the folder if needed; the file gets the usual `rw-r--r--` permissions (less the
/// umask). If anything fails, the temporary file is removed and `path` is untouched.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).at(dir)?;
    let (tmp, mut file) = create_unique(dir, ".write-", |candidate| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o644);
        }
        options.open(candidate)
    })?;
    let tmp = TempFile(Some(tmp));
    std::io::Write::write_all(&mut file, bytes).at(path)?;
    drop(file);
    tmp.rename_to(path).at(path)
}

/// A folder of scratch files that is removed, with everything in it, when dropped.
///
/// ```
/// let scratch = flowers_kit::files::ScratchDir::new_in(&std::env::temp_dir(), "doc-")?;
/// std::fs::write(scratch.path().join("a.txt"), "a")?;
/// let kept = scratch.path().to_path_buf();
/// drop(scratch);
/// assert!(!kept.exists());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Creates `<parent>/<prefix><pid>-<n>`, a name no other process or thread is using.
    /// The process id comes first so that tidying code can tell a killed process's folders.
    pub fn new_in(parent: &Path, prefix: &str) -> Result<ScratchDir> {
        let (path, ()) = create_unique(parent, prefix, |p| std::fs::create_dir(p))?;
        Ok(ScratchDir(path))
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Tidying up: a failure leaves a folder that the next extraction's tidying removes.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A temporary file, removed when dropped unless it has been renamed into place.
struct TempFile(Option<PathBuf>);

impl TempFile {
    /// Renames the file to `path`, after which it is no longer this guard's to remove.
    fn rename_to(mut self, path: &Path) -> std::io::Result<()> {
        if let Some(tmp) = &self.0 {
            std::fs::rename(tmp, path)?;
        }
        self.0 = None;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(tmp) = &self.0 {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Runs `create` on `<dir>/<prefix><pid>-<n>` for fresh `n` until a name is free. Names are
/// short whatever the final file is called, so they never exceed the file system's limit.
fn create_unique<T>(
    dir: &Path,
    prefix: &str,
    create: impl Fn(&Path) -> std::io::Result<T>,
) -> Result<(PathBuf, T)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // The clock's nanoseconds make a name from an earlier run with the same process id unlikely;
    // the counter makes names within this process distinct; create_new/create_dir decides.
    let salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    let mut last = None;
    for _ in 0..100 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed).wrapping_add(salt);
        let candidate = dir.join(format!("{prefix}{}-{n:x}", std::process::id()));
        match create(&candidate) {
            Ok(made) => return Ok((candidate, made)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(Error::io(dir, e)),
        }
    }
    Err(Error::io(
        dir,
        last.unwrap_or_else(|| std::io::Error::other("no free temporary name")),
    ))
}

/// Opens `path` for reading without waiting on a FIFO (links followed); the caller checks
/// that it opened a regular file. What [`read_regular`] and the feature cache's packs open
/// with.
pub(crate) fn open_regular(path: &Path) -> Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        // Non-blocking: opening a FIFO with no writer would otherwise wait forever; the flag
        // does not change how a regular file reads.
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    options.open(path).at(path)
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
    let file = open_regular(path)?;
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

/// An exclusive lock on one cache entry (`.<name>.lock` beside it), held until dropped.
///
/// Learners in a class share a cache, and a notebook and a terminal may fetch the same file
/// at once: whoever holds the lock downloads, verifies and renames; the others wait, then find
/// the file in place. The lock is an advisory `flock` on `<entry>.lock`, which the operating
/// system releases when its holder exits or is killed, so a crashed run never leaves the
/// entry locked. The lock file stays (removing it would let a third process lock a new file
/// of the same name while a second still waits on the old one); it is hidden and empty.
#[derive(Debug)]
pub struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    /// Locks `.<name>.lock` beside `path`, waiting at most `patience` for another process
    /// to release it. `what` names the entry in the one line printed while waiting.
    pub fn acquire(path: &Path, what: &str, patience: std::time::Duration) -> Result<FileLock> {
        let mut name = std::ffi::OsString::from(".");
        name.push(path.file_name().ok_or_else(|| {
            Error::InvalidArgument(format!("cannot lock {}: no file name", path.display()))
        })?);
        name.push(".lock");
        let lock_path = path.with_file_name(name);
        let file = match std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
        {
            Ok(file) => file,
            // Another user's lock file in a shared cache: flock works on a read-only one.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                std::fs::File::open(&lock_path).at(&lock_path)?
            }
            Err(e) => return Err(Error::io(&lock_path, e)),
        };
        let start = std::time::Instant::now();
        let mut said = false;
        loop {
            match try_lock(&file) {
                Ok(true) => return Ok(FileLock { _file: file }),
                Ok(false) => {}
                Err(e) => return Err(Error::io(&lock_path, e)),
            }
            if start.elapsed() >= patience {
                return Err(Error::io(
                    &lock_path,
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "another process has been fetching {what} for over {} s; \
                             try again later",
                            patience.as_secs()
                        ),
                    ),
                ));
            }
            if !said {
                eprintln!("Waiting for another process that is fetching {what}…");
                said = true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// `Ok(true)` when the lock was taken, `Ok(false)` when another process holds it.
#[cfg(unix)]
fn try_lock(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a file descriptor this function borrows for the call; the lock lives
    // as long as the descriptor, which FileLock owns.
    let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if taken == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(error)
    }
}

/// Without `flock`, one process at a time is assumed.
#[cfg(not(unix))]
fn try_lock(_file: &std::fs::File) -> std::io::Result<bool> {
    Ok(true)
}

/// `path` with `suffix` appended to its file name (`a.h5` → `a.h5.part`).
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// A little-endian f32 from a chunk of 4 bytes (`chunks_exact(4)` yields only those).
pub(crate) fn le_f32(chunk: &[u8]) -> f32 {
    f32::from_le_bytes(<[u8; 4]>::try_from(chunk).expect("invariant: a chunk of 4 bytes"))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_and_replaces_leaving_only_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("out.json");
        write_atomically(&path, b"first").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(names(&dir.path().join("sub")), ["out.json"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o600, 0o600, "owner can read and write: {mode:o}");
        }
    }

    #[test]
    fn a_failed_rename_keeps_the_old_content_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty folder where the file should go: the rename fails.
        let path = dir.path().join("taken");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), b"kept").unwrap();
        let error = write_atomically(&path, b"new").unwrap_err();
        assert!(error.to_string().contains("taken"), "{error}");
        assert_eq!(names(dir.path()), ["taken"]);
        assert_eq!(std::fs::read(path.join("inside")).unwrap(), b"kept");
    }

    #[test]
    fn scratch_folders_are_distinct_and_removed_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let a = ScratchDir::new_in(dir.path(), ".extracting-").unwrap();
        let b = ScratchDir::new_in(dir.path(), ".extracting-").unwrap();
        assert_ne!(a.path(), b.path());
        let pid = format!(".extracting-{}-", std::process::id());
        assert!(a
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&pid));
        std::fs::write(a.path().join("photo.jpg"), b"x").unwrap();
        drop(a);
        drop(b);
        assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
    }

    #[test]
    fn a_scratch_folder_in_a_missing_parent_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let error = ScratchDir::new_in(&missing, "x-").unwrap_err();
        assert!(error.to_string().contains("missing"), "{error}");
    }
}
