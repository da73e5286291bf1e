//! The on-disk feature cache: one small checksummed file per photo, so a re-run reads
//! features instead of decoding and running the network.
//!
//! File layout: `FKF1`, the feature count as u32 LE, that many f32 LE, then the first 8 bytes
//! of the SHA-256 of everything before. A partial, damaged or foreign file fails the check
//! and is recomputed; nothing in it is trusted before the check passes.

// This module reads untrusted input: every index and every arithmetic step is checked or
// justified where it is allowed.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::path::{Path, PathBuf};

use crate::error::Result;

const MAGIC: &[u8; 4] = b"FKF1";
/// Magic, count, checksum.
const OVERHEAD: usize = 4 + 4 + 8;

/// The file for content key `key` (a hex SHA-256) under `dir`.
pub(crate) fn cache_file(dir: &Path, key: &str) -> PathBuf {
    let prefix = key
        .get(..2)
        .expect("invariant: cache keys are SHA-256 hex digests");
    dir.join(prefix).join(format!("{key}.f32"))
}

/// The features stored in `dir` for `key`, if a valid file of `dim` features is there.
pub(crate) fn read_cached(dir: &Path, key: &str, dim: usize) -> Option<Vec<f32>> {
    let path = cache_file(dir, key);
    // A valid file has an exact size: never read more than that.
    let expected = dim.checked_mul(4)?.checked_add(OVERHEAD)?;
    // A bounded read of a regular file only (never a FIFO swapped in after a check).
    let bytes =
        crate::files::read_regular(&path, expected as u64, "feature cache file", |reason| {
            crate::Error::InvalidArgument(reason)
        })
        .ok()?;
    parse(&bytes, dim)
}

/// Parses a cache file's bytes: `Some` only for a complete, undamaged file of `dim` features.
///
/// ```
/// # use flowers_kit::features::cache;
/// let bytes = cache::encode(&[1.0, 2.5]);
/// assert_eq!(cache::parse(&bytes, 2), Some(vec![1.0, 2.5]));
/// assert_eq!(cache::parse(&bytes[..bytes.len() - 1], 2), None);
/// ```
pub fn parse(bytes: &[u8], dim: usize) -> Option<Vec<f32>> {
    let body_len = dim.checked_mul(4)?.checked_add(8)?;
    if bytes.len() != body_len.checked_add(8)? {
        return None;
    }
    let (body, check) = bytes.split_at(body_len);
    let (magic, rest) = body.split_at(4);
    let (count, values) = rest.split_at(4);
    let count = u32::from_le_bytes(count.try_into().ok()?);
    if magic != MAGIC
        || usize::try_from(count).ok()? != dim
        || crate::digest::sha256(body).get(..8) != Some(check)
    {
        return None;
    }
    Some(values.chunks_exact(4).map(crate::files::le_f32).collect())
}

/// The bytes of a cache file holding `row`.
pub fn encode(row: &[f32]) -> Vec<u8> {
    let mut body = Vec::with_capacity(row.len().saturating_mul(4).saturating_add(OVERHEAD));
    body.extend_from_slice(MAGIC);
    // Rows are feature vectors (≤ a few thousand values); saturate rather than wrap.
    let count = u32::try_from(row.len()).unwrap_or(u32::MAX);
    body.extend_from_slice(&count.to_le_bytes());
    for v in row {
        body.extend_from_slice(&v.to_le_bytes());
    }
    let check = crate::digest::sha256(&body);
    body.extend_from_slice(&check[..8]);
    body
}

/// Stores `row` for `key` under `dir`, atomically.
pub(crate) fn write_cached(dir: &Path, key: &str, row: &[f32]) -> Result<()> {
    crate::files::write_atomically(&cache_file(dir, key), &encode(row))
}
