//! The on-disk feature cache: checksummed packs of rows, one file per chunk of photos
//! extracted together, so that a re-run reads features instead of decoding and running the
//! network.
//!
//! A pack rather than a file per photo: a cold extraction of the 3,670 photos creates about
//! 60 files, not 3,670. Creating a file costs far more than writing 5 KB into one: 0.05 ms
//! on a local disk, up to 1 ms on this project's VMs (ext4 without a journal scans past every
//! inode deleted in the last minutes), and milliseconds on the network home folders of a
//! class's JupyterHub; at MobileNet V2 0.35/128 the network itself takes 0.6 ms per photo.
//!
//! Pack layout (little-endian), `<hex>.pack`, named by the first 32 hex digits of the SHA-256
//! of its bytes (so that two processes writing the same rows write one name; the name is
//! never trusted when read):
//! - `FKP1`, the feature count `dim` as u32, the row count `n` as u32;
//! - the `n` keys (each a 32-byte SHA-256: a photo's content, or an augmented view's key);
//! - the first 8 bytes of the SHA-256 of everything before (the header's check);
//! - `n` rows: `dim` f32, then the first 8 bytes of the SHA-256 of the row's key and values
//!   (the row's check, which also ties the row to its key).
//!
//! A pack is written whole to a temporary file and renamed into place, so a reader sees a
//! complete pack or none, and two processes that extract the same photos write two packs,
//! never one damaged one. Nothing read is trusted before its check passes: a pack whose size
//! or header fails is skipped (all its rows are recomputed), a row whose check fails is
//! recomputed into a new pack. The checks are plain SHA-256: they catch damage, not a row
//! planted on purpose by someone who can write the folder.
//!
//! Caches from before packs (a file per photo, in folders named by two hex digits) are not
//! read: those features are computed once more, and the old folders can be deleted.

// This module reads untrusted input: every index and every arithmetic step is checked or
// justified where it is allowed.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"FKP1";
/// Magic, feature count, row count.
const HEADER: usize = 4 + 4 + 4;
/// A key, a SHA-256.
const KEY: usize = 32;
/// The truncated SHA-256 after the keys and after each row.
const CHECK: usize = 8;
/// The file name's extension.
const EXTENSION: &str = "pack";
/// The most rows one pack holds (an extraction writes one pack per chunk of photos, about 64).
pub const MAX_PACK_ROWS: usize = 4096;
/// The most rows one folder's index takes in, over all its packs (about 100 bytes each): a
/// cache folder filled with foreign packs cannot exhaust memory. Notebook 05 on the whole
/// dataset keeps about 15,000 rows in a folder per augmentation (the photos and four views of
/// each). A folder past it is full: its rows are read up to the limit, and no more are written
/// (a warning says to delete the folder), so that it never grows on rows nobody reads.
pub const MAX_INDEXED_ROWS: usize = 1 << 18;
/// The most pack files one folder's index opens (at 64 rows each, 4 times the rows it takes
/// in), and the most folder entries it looks at is 4 times that: a folder of a million
/// planted files cannot hold each extraction up for minutes.
pub const MAX_INDEXED_PACKS: usize = 1 << 14;
/// The most places one key is looked for: a key planted in every pack with a damaged row
/// cannot make one lookup read them all.
const MAX_PLACES_PER_KEY: usize = 4;

/// A cache key's 32 bytes, from its lowercase or uppercase hex; `None` for anything else.
fn key_bytes(key: &str) -> Option<[u8; KEY]> {
    let hex = key.as_bytes();
    if hex.len() != 2 * KEY {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16);
    let mut out = [0u8; KEY];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let [high, low] = [pair.first()?, pair.get(1)?].map(|&c| digit(c));
        // Two hex digits make a byte: at most 15 × 16 + 15.
        *byte = u8::try_from(high?.checked_mul(16)?.checked_add(low?)?).ok()?;
    }
    Some(out)
}

/// The check of one row: the SHA-256 of its key and values.
fn row_check(key: &[u8; KEY], values: &[u8]) -> [u8; 32] {
    let mut bytes = Vec::with_capacity(KEY.saturating_add(values.len()));
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(values);
    crate::digest::sha256(&bytes)
}

/// The size of a pack of `rows` rows of `dim` features, if it is addressable.
fn pack_len(dim: usize, rows: usize) -> Option<usize> {
    let per_row = dim.checked_mul(4)?.checked_add(CHECK)?;
    HEADER
        .checked_add(rows.checked_mul(KEY)?)?
        .checked_add(CHECK)?
        .checked_add(rows.checked_mul(per_row)?)
}

/// The bytes of a pack holding `rows` (a hex key and its features each), all of `dim`
/// features; an error for more than [`MAX_PACK_ROWS`] rows, a row of another length or a
/// key that is not a SHA-256 in hex.
///
/// ```
/// # use flowers_kit::features::cache;
/// let key = "ab".repeat(32);
/// let bytes = cache::encode_pack(2, &[(key.clone(), vec![1.0, 2.5])])?;
/// let keys = cache::parse_keys(&bytes, 2, bytes.len() as u64).unwrap();
/// assert_eq!(keys.len(), 1);
/// assert_eq!(cache::parse_row(&bytes, 0, &keys[0], 2), Some(vec![1.0, 2.5]));
/// // One flipped bit anywhere fails a check.
/// let mut damaged = bytes.clone();
/// *damaged.last_mut().unwrap() ^= 1;
/// assert_eq!(cache::parse_row(&damaged, 0, &keys[0], 2), None);
/// # Ok::<(), flowers_kit::Error>(())
/// ```
pub fn encode_pack(dim: usize, rows: &[(String, Vec<f32>)]) -> Result<Vec<u8>> {
    let refuse = |reason: String| Error::InvalidArgument(format!("feature pack: {reason}"));
    if rows.len() > MAX_PACK_ROWS {
        return Err(refuse(format!(
            "{} rows, over the {MAX_PACK_ROWS} a pack holds",
            rows.len()
        )));
    }
    let keys = rows
        .iter()
        .map(|(key, _)| key_bytes(key).ok_or_else(|| refuse(format!("'{key}' is not a key"))))
        .collect::<Result<Vec<_>>>()?;
    let (Some(len), Ok(dim32), Ok(count)) = (
        pack_len(dim, rows.len()),
        u32::try_from(dim),
        u32::try_from(rows.len()),
    ) else {
        return Err(refuse(format!("{dim} features per row is too many")));
    };
    let mut bytes = Vec::with_capacity(len);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&dim32.to_le_bytes());
    bytes.extend_from_slice(&count.to_le_bytes());
    for key in &keys {
        bytes.extend_from_slice(key);
    }
    let check = crate::digest::sha256(&bytes);
    bytes.extend_from_slice(
        check
            .get(..CHECK)
            .expect("invariant: a SHA-256 has 32 bytes"),
    );
    for (key, (_, row)) in keys.iter().zip(rows) {
        if row.len() != dim {
            return Err(refuse(format!(
                "a row of {} features among rows of {dim}",
                row.len()
            )));
        }
        let start = bytes.len();
        for v in row {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let check = row_check(key, bytes.get(start..).unwrap_or_default());
        bytes.extend_from_slice(
            check
                .get(..CHECK)
                .expect("invariant: a SHA-256 has 32 bytes"),
        );
    }
    Ok(bytes)
}

/// The keys of a pack of `dim` features whose file holds `file_len` bytes, from its first
/// bytes (at least the header and the keys; more are ignored): `None` unless the header is
/// a pack's, of `dim` features, of a row count that fits [`MAX_PACK_ROWS`] and `file_len`
/// exactly, and its check passes.
pub fn parse_keys(bytes: &[u8], dim: usize, file_len: u64) -> Option<Vec<[u8; KEY]>> {
    let rows = header_rows(bytes, dim, file_len)?;
    let keys_end = HEADER.checked_add(rows.checked_mul(KEY)?)?;
    let checked = bytes.get(..keys_end)?;
    let check = bytes.get(keys_end..keys_end.checked_add(CHECK)?)?;
    if crate::digest::sha256(checked).get(..CHECK) != Some(check) {
        return None;
    }
    Some(
        checked
            .get(HEADER..)?
            .chunks_exact(KEY)
            .filter_map(|key| key.try_into().ok())
            .collect(),
    )
}

/// The row count in a pack's first bytes, if they are a pack's header for `dim` features,
/// with a row count that fits [`MAX_PACK_ROWS`] and a file of exactly `file_len` bytes.
fn header_rows(bytes: &[u8], dim: usize, file_len: u64) -> Option<usize> {
    let word = |at: usize| -> Option<usize> {
        let word = bytes.get(at..at.checked_add(4)?)?;
        usize::try_from(u32::from_le_bytes(word.try_into().ok()?)).ok()
    };
    let (stored_dim, rows) = (word(4)?, word(8)?);
    let whole = u64::try_from(pack_len(dim, rows)?).ok()? == file_len;
    (bytes.get(..4)? == MAGIC && stored_dim == dim && rows <= MAX_PACK_ROWS && whole)
        .then_some(rows)
}

/// Where row `index` of a pack of `rows` rows of `dim` features starts.
fn row_offset(dim: usize, rows: usize, index: usize) -> Option<usize> {
    let per_row = dim.checked_mul(4)?.checked_add(CHECK)?;
    HEADER
        .checked_add(rows.checked_mul(KEY)?)?
        .checked_add(CHECK)?
        .checked_add(index.checked_mul(per_row)?)
}

/// Row `index` of a whole pack's bytes, `Some` only if that row's check passes for `key`.
pub fn parse_row(pack: &[u8], index: usize, key: &[u8; KEY], dim: usize) -> Option<Vec<f32>> {
    let rows = usize::try_from(u32::from_le_bytes(pack.get(8..12)?.try_into().ok()?)).ok()?;
    let start = row_offset(dim, rows, index)?;
    let end = start.checked_add(dim.checked_mul(4)?.checked_add(CHECK)?)?;
    check_row(pack.get(start..end)?, key)
}

/// A row's bytes (values, then check) as features, if the check passes for `key`.
fn check_row(bytes: &[u8], key: &[u8; KEY]) -> Option<Vec<f32>> {
    let (values, check) = bytes.split_at(bytes.len().checked_sub(CHECK)?);
    if row_check(key, values).get(..CHECK) != Some(check) {
        return None;
    }
    Some(values.chunks_exact(4).map(crate::files::le_f32).collect())
}

/// One pack the index took in.
struct Pack {
    path: PathBuf,
    rows: usize,
    len: u64,
}

/// Which pack holds which key, for the packs of one cache folder that passed their header
/// check when the index was built. Rows are read (and checked) only when asked for.
pub(crate) struct PackIndex {
    dim: usize,
    packs: Vec<Pack>,
    /// Each key's places (pack, row); a key two packs hold is read from the first whose row
    /// passes its check.
    rows: HashMap<[u8; KEY], Vec<(usize, usize)>>,
    /// Whether the folder held more than the index takes in.
    full: bool,
}

impl PackIndex {
    /// The index of the packs of `dim` features in `dir`; a folder that cannot be listed has
    /// none, and a file that is not a valid pack is passed over.
    pub(crate) fn open(dir: &Path, dim: usize) -> PackIndex {
        Self::open_bounded(dir, dim, MAX_INDEXED_PACKS, MAX_INDEXED_ROWS)
    }

    /// [`open`](Self::open) with the bounds as arguments (the tests' small ones).
    fn open_bounded(dir: &Path, dim: usize, most_packs: usize, most_rows: usize) -> PackIndex {
        let mut index = PackIndex {
            dim,
            packs: Vec::new(),
            rows: HashMap::new(),
            full: false,
        };
        let Ok(listing) = std::fs::read_dir(dir) else {
            return index;
        };
        let mut entries = 0usize;
        let mut paths = Vec::new();
        for entry in listing {
            entries = entries.saturating_add(1);
            if entries > most_packs.saturating_mul(4) {
                index.full = true;
                break;
            }
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            if path.extension().is_some_and(|e| e == EXTENSION) {
                if paths.len() == most_packs {
                    index.full = true;
                    break;
                }
                paths.push(path);
            }
        }
        // The same order on every run and machine (of a folder within the bounds).
        paths.sort();
        let mut indexed = 0usize;
        for path in paths {
            let Some((keys, len)) = read_keys(&path, dim) else {
                continue;
            };
            indexed = indexed.saturating_add(keys.len());
            if indexed > most_rows {
                index.full = true;
                break;
            }
            let pack = index.packs.len();
            index.packs.push(Pack {
                rows: keys.len(),
                path,
                len,
            });
            for (row, key) in keys.into_iter().enumerate() {
                let places = index.rows.entry(key).or_default();
                if places.len() < MAX_PLACES_PER_KEY {
                    places.push((pack, row));
                }
            }
        }
        if index.full {
            eprintln!(
                "warning: the feature cache folder {} holds more than the kit reads ({most_rows} \
                 rows in {most_packs} packs); only part of it is read and nothing more is \
                 written. Delete the folder to start it afresh.",
                dir.display()
            );
        }
        index
    }

    /// Whether the folder held more than the index takes in: a cache that should not grow.
    pub(crate) fn is_full(&self) -> bool {
        self.full
    }

    /// The features stored for `key`, if a pack holds a row for it that passes its check.
    pub(crate) fn read(&self, key: &str) -> Option<Vec<f32>> {
        let bytes = key_bytes(key)?;
        self.rows.get(&bytes)?.iter().find_map(|&(pack, row)| {
            let pack = self.packs.get(pack)?;
            read_row(pack, row, &bytes, self.dim)
        })
    }
}

/// Opens a pack (a regular file, never a FIFO swapped in) and reads its keys.
fn read_keys(path: &Path, dim: usize) -> Option<(Vec<[u8; KEY]>, u64)> {
    let (mut file, len) = open_pack(path)?;
    let mut header = [0u8; HEADER];
    file.read_exact(&mut header).ok()?;
    // Nothing more is read from a file that is not a whole pack of `dim` features.
    let rows = header_rows(&header, dim, len)?;
    // Header, keys and check: bounded by MAX_PACK_ROWS.
    let head_len = HEADER
        .checked_add(rows.checked_mul(KEY)?)?
        .checked_add(CHECK)?;
    let mut head = vec![0u8; head_len];
    let (first, rest) = head.split_at_mut(HEADER);
    first.copy_from_slice(&header);
    file.read_exact(rest).ok()?;
    Some((parse_keys(&head, dim, len)?, len))
}

/// Reads and checks one row of an indexed pack; `None` if the file changed size since.
fn read_row(pack: &Pack, row: usize, key: &[u8; KEY], dim: usize) -> Option<Vec<f32>> {
    let (mut file, len) = open_pack(&pack.path)?;
    if len != pack.len {
        return None;
    }
    let start = u64::try_from(row_offset(dim, pack.rows, row)?).ok()?;
    let mut bytes = vec![0u8; dim.checked_mul(4)?.checked_add(CHECK)?];
    file.seek(SeekFrom::Start(start)).ok()?;
    file.read_exact(&mut bytes).ok()?;
    check_row(&bytes, key)
}

/// A pack opened for reading, with its length; `None` unless it is a regular file.
fn open_pack(path: &Path) -> Option<(std::fs::File, u64)> {
    let file = crate::files::open_regular(path).ok()?;
    let metadata = file.metadata().ok()?;
    metadata.is_file().then_some((file, metadata.len()))
}

/// Stores `rows` (a hex key and its features each, all `dim` long) under `dir` as packs of at
/// most [`MAX_PACK_ROWS`] rows, each written atomically; nothing for no rows.
pub(crate) fn write_rows(dir: &Path, dim: usize, rows: &[(String, Vec<f32>)]) -> Result<()> {
    for chunk in rows.chunks(MAX_PACK_ROWS) {
        let bytes = encode_pack(dim, chunk)?;
        let name = crate::digest::sha256_hex(&bytes);
        let name = name
            .get(..32)
            .expect("invariant: a SHA-256 has 64 hex digits");
        crate::files::write_atomically(&dir.join(format!("{name}.{EXTENSION}")), &bytes)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    fn rows(n: usize, dim: usize) -> Vec<(String, Vec<f32>)> {
        (0..n)
            .map(|i| {
                let key = crate::digest::sha256_hex(&i.to_le_bytes());
                (key, (0..dim).map(|j| (i * dim + j) as f32 * 0.5).collect())
            })
            .collect()
    }

    #[test]
    fn packs_written_are_read_back_row_by_row() {
        let dir = tempfile::tempdir().unwrap();
        let written = rows(70, 5);
        write_rows(dir.path(), 5, &written[..64]).unwrap();
        write_rows(dir.path(), 5, &written[64..]).unwrap();
        let index = PackIndex::open(dir.path(), 5);
        assert_eq!(index.packs.len(), 2);
        for (key, row) in &written {
            assert_eq!(index.read(key).as_ref(), Some(row));
        }
        assert_eq!(index.read(&"00".repeat(32)), None);
        assert_eq!(index.read("not a key"), None);
        // Another feature count reads nothing.
        assert!(PackIndex::open(dir.path(), 4).rows.is_empty());
    }

    #[test]
    fn damaged_truncated_or_foreign_packs_give_nothing() {
        let written = rows(3, 4);
        let bytes = encode_pack(4, &written).unwrap();
        let len = bytes.len() as u64;
        let keys = parse_keys(&bytes, 4, len).unwrap();
        // Every byte of the header and keys is covered by the header's check.
        for at in 0..HEADER + 3 * KEY + CHECK {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert_eq!(parse_keys(&damaged, 4, len), None, "byte {at}");
        }
        // Every byte of a row is covered by its check.
        let row_start = row_offset(4, 3, 1).unwrap();
        for at in row_start..row_start + 4 * 4 + CHECK {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x01;
            assert_eq!(parse_row(&damaged, 1, &keys[1], 4), None, "byte {at}");
            assert!(parse_row(&damaged, 0, &keys[0], 4).is_some());
        }
        // A row read under another key fails: rows cannot be swapped between keys.
        assert_eq!(parse_row(&bytes, 1, &keys[2], 4), None);
        // A size that does not match the header, a huge row count, another magic.
        assert_eq!(parse_keys(&bytes, 4, len - 1), None);
        assert_eq!(parse_keys(&bytes[..10], 4, len), None);
        let mut huge = bytes.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_keys(&huge, 4, len), None);
        let mut foreign = bytes.clone();
        foreign[..4].copy_from_slice(b"FKF1");
        assert_eq!(parse_keys(&foreign, 4, len), None);
        // Rows out of range are nothing, not a panic.
        assert_eq!(parse_row(&bytes, 3, &keys[0], 4), None);
        assert_eq!(parse_row(&bytes, usize::MAX, &keys[0], 4), None);
    }

    #[test]
    fn a_folder_of_bad_files_indexes_only_its_valid_packs() {
        let dir = tempfile::tempdir().unwrap();
        let written = rows(2, 3);
        write_rows(dir.path(), 3, &written).unwrap();
        let good = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let bytes = std::fs::read(&good).unwrap();
        std::fs::write(dir.path().join("cut.pack"), &bytes[..bytes.len() - 1]).unwrap();
        std::fs::write(dir.path().join("empty.pack"), b"").unwrap();
        std::fs::create_dir(dir.path().join("folder.pack")).unwrap();
        std::fs::write(dir.path().join("other.txt"), &bytes).unwrap();
        let index = PackIndex::open(dir.path(), 3);
        assert_eq!(index.packs.len(), 1);
        assert_eq!(index.read(&written[1].0), Some(written[1].1.clone()));
        // A pack rewritten after indexing (another size) is read as nothing.
        std::fs::write(&good, &bytes[..bytes.len() - 8]).unwrap();
        assert_eq!(index.read(&written[1].0), None);
        // A missing folder has no packs.
        assert!(PackIndex::open(&dir.path().join("absent"), 3)
            .packs
            .is_empty());
    }

    /// Writes `rows` as the pack `name` in `dir`, with row `damaged` flipped if given.
    fn plant(
        dir: &Path,
        name: &str,
        dim: usize,
        rows: &[(String, Vec<f32>)],
        damaged: Option<usize>,
    ) {
        let mut bytes = encode_pack(dim, rows).unwrap();
        if let Some(row) = damaged {
            bytes[row_offset(dim, rows.len(), row).unwrap()] ^= 1;
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    #[test]
    fn a_key_in_two_packs_is_read_from_the_first_whose_row_passes() {
        let dir = tempfile::tempdir().unwrap();
        let written = rows(2, 3);
        let other = vec![(written[0].0.clone(), vec![9.0; 3])];
        // "a.pack" comes first and its row is damaged; "b.pack" holds a good one.
        plant(dir.path(), "a.pack", 3, &written, Some(0));
        plant(dir.path(), "b.pack", 3, &other, None);
        let index = PackIndex::open(dir.path(), 3);
        assert_eq!(index.read(&written[0].0), Some(vec![9.0; 3]));
        assert_eq!(index.read(&written[1].0), Some(written[1].1.clone()));
        // A key is looked for in its first MAX_PLACES_PER_KEY packs only.
        for i in 0..MAX_PLACES_PER_KEY {
            plant(dir.path(), &format!("0{i}.pack"), 3, &written, Some(0));
        }
        assert_eq!(PackIndex::open(dir.path(), 3).read(&written[0].0), None);
        assert!(!PackIndex::open(dir.path(), 3).is_full());
    }

    #[test]
    fn a_folder_past_the_bounds_is_read_in_part_and_marked_full() {
        let dir = tempfile::tempdir().unwrap();
        let written = rows(6, 2);
        for (i, pair) in written.chunks(2).enumerate() {
            plant(dir.path(), &format!("{i}.pack"), 2, pair, None);
        }
        let within = PackIndex::open_bounded(dir.path(), 2, 3, 6);
        assert!(!within.is_full());
        assert!(written
            .iter()
            .all(|(key, row)| within.read(key).as_ref() == Some(row)));
        // Too many rows: the packs in name order up to the bound.
        let rows_bound = PackIndex::open_bounded(dir.path(), 2, 3, 5);
        assert!(rows_bound.is_full());
        assert_eq!(rows_bound.packs.len(), 2);
        assert_eq!(rows_bound.read(&written[3].0), Some(written[3].1.clone()));
        assert_eq!(rows_bound.read(&written[4].0), None);
        // Too many packs, or too many other entries in the folder.
        assert!(PackIndex::open_bounded(dir.path(), 2, 2, 6).is_full());
        for i in 0..10 {
            std::fs::write(dir.path().join(format!("{i}.txt")), b"").unwrap();
        }
        assert!(PackIndex::open_bounded(dir.path(), 2, 3, 6).is_full());
    }

    #[cfg(unix)]
    #[test]
    fn fifos_links_and_folders_named_like_packs_are_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let written = rows(1, 2);
        plant(dir.path(), "good.pack", 2, &written, None);
        let fifo = std::ffi::CString::new(dir.path().join("fifo.pack").to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.pack")).unwrap();
        std::fs::create_dir(dir.path().join("folder.pack")).unwrap();
        let index = PackIndex::open(dir.path(), 2);
        assert_eq!(index.packs.len(), 1);
        assert_eq!(index.read(&written[0].0), Some(written[0].1.clone()));
    }

    #[test]
    fn bad_rows_are_refused_when_encoding() {
        assert!(encode_pack(3, &rows(1, 4)).is_err());
        assert!(encode_pack(3, &[("xyz".into(), vec![0.0; 3])]).is_err());
        assert!(encode_pack(1, &rows(MAX_PACK_ROWS + 1, 1)).is_err());
        assert_eq!(key_bytes(&"Ab".repeat(32)), Some([0xAB; 32]));
        assert_eq!(key_bytes(&"g0".repeat(32)), None);
        assert_eq!(key_bytes("ab"), None);
    }
}
