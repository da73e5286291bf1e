//! The crate's single error type.
//!
//! Every variant names the file, URL or argument it is about, so that a message printed in a
//! notebook (`Error: …`) tells the reader what to fix without a backtrace.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in flowers_kit.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file or folder failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// What the operating system reported.
        source: std::io::Error,
    },
    /// A download did not complete (after all retries) or returned something unusable.
    #[error("download of {url} failed: {reason}")]
    Download {
        /// The URL that was requested.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// An archive is corrupt, truncated or unsafe to extract.
    #[error("archive {}: {reason}", path.display())]
    Archive {
        /// The archive file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A photo folder does not have the expected `<class>/<image>` shape.
    #[error("dataset {}: {reason}", path.display())]
    Dataset {
        /// The folder (or the class folder) concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An image could not be decoded.
    #[error("image {}: {reason}", path.display())]
    Image {
        /// The image file.
        path: PathBuf,
        /// What the decoder reported.
        reason: String,
    },
    /// A weights, features or classifier file is missing a tensor, has a wrong shape or is damaged.
    #[error("{}: {reason}", path.display())]
    Tensors {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The compute device failed (out of GPU memory, no CUDA device, a kernel error…).
    #[error("compute backend: {0}")]
    Backend(String),
    /// A figure could not be drawn or encoded.
    #[error("cannot draw the figure: {0}")]
    Plot(String),
    /// Results could not be serialised into a file (JSON, safetensors, PNG).
    #[error("cannot write {}: {reason}", path.display())]
    Write {
        /// The file that was being written.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A parameter is out of range or unknown (a model name, a fraction, an optimizer…).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

/// Adds the path to an `std::io::Result`.
pub(crate) trait IoContext<T> {
    /// Turns an I/O error into [`Error::Io`] naming `path`.
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
