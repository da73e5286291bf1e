//! Keras HDF5 weight files → named f32 tensors, with no libhdf5.
//!
//! Keras Applications files store a layer's weights at `<layer>/<layer>/<weight>:0`
//! (`Conv1/Conv1/kernel:0`); whole-model saves put them under `model_weights/<model>/…`
//! (`model_weights/sequential_1/Conv1/kernel:0`). Both are read here, and every tensor is
//! addressed by its last two path parts without the `:0` suffix: `Conv1/kernel`.

// This module reads untrusted input: every index and every arithmetic step is checked or
// justified where it is allowed.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Largest weight file read: 1 GiB (the biggest Keras Applications `no_top` file is ~350 MB).
pub const MAX_WEIGHTS_BYTES: u64 = 1 << 30;

/// Largest tensor read, in values (1 GiB of f32): a header claiming more is refused before
/// anything is allocated for it.
const MAX_TENSOR_VALUES: usize = 1 << 28;

/// One tensor: its shape and values in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// Dimensions as stored (conv kernels HWIO, depthwise kernels (kh, kw, C, 1)).
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f32>,
}

/// All tensors of a Keras weight file, by `<layer>/<weight>`.
#[derive(Debug, Clone)]
pub struct KerasWeights {
    path: PathBuf,
    tensors: HashMap<String, NamedTensor>,
    digest: String,
}

impl KerasWeights {
    /// Reads every dataset of the file.
    pub fn open(path: impl AsRef<Path>) -> Result<KerasWeights> {
        let path = path.as_ref();
        let bytes = crate::files::read_regular(path, MAX_WEIGHTS_BYTES, "weight file", |reason| {
            Error::Tensors {
                path: path.to_path_buf(),
                reason,
            }
        })?;
        KerasWeights::from_bytes(bytes, path)
    }

    /// Reads the weights from a file's bytes; `path` names the source in errors.
    pub fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<KerasWeights> {
        let path = path.to_path_buf();
        let digest = crate::digest::sha256_hex(&bytes);
        let bad = |reason: String| Error::Tensors {
            path: path.clone(),
            reason,
        };
        if !hdf5_pure::is_hdf5_bytes(&bytes) {
            return Err(bad("not an HDF5 file".into()));
        }
        let file = hdf5_pure::File::from_bytes(bytes)
            .map_err(|e| bad(format!("cannot read HDF5 (truncated or damaged?): {e}")))?;
        let mut tensors = HashMap::new();
        collect(&file.root(), "", &mut tensors).map_err(&bad)?;
        if tensors.is_empty() {
            return Err(bad("the file holds no weight tensors".into()));
        }
        Ok(KerasWeights {
            path,
            tensors,
            digest,
        })
    }

    /// The file the weights came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// SHA-256 of the file, hex: identifies the weights in cache keys.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// How many tensors were read.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True when no tensor was read (never for an opened file).
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The tensor `<layer>/<weight>`, checked against the expected shape.
    pub fn get(&self, layer: &str, weight: &str, shape: &[usize]) -> Result<&NamedTensor> {
        let name = format!("{layer}/{weight}");
        let tensor = self.tensors.get(&name).ok_or_else(|| Error::Tensors {
            path: self.path.clone(),
            reason: format!(
                "tensor {name} is missing (is this the weight file of the right model?)"
            ),
        })?;
        if tensor.shape != shape {
            return Err(Error::Tensors {
                path: self.path.clone(),
                reason: format!(
                    "tensor {name} has shape {:?}, expected {shape:?} (weights of another \
                     width multiplier?)",
                    tensor.shape
                ),
            });
        }
        Ok(tensor)
    }
}

/// Walks the group tree, storing each float dataset under its last two path parts.
fn collect(
    group: &hdf5_pure::Group,
    prefix: &str,
    out: &mut HashMap<String, NamedTensor>,
) -> std::result::Result<(), String> {
    let datasets = group
        .datasets()
        .map_err(|e| format!("cannot list {prefix}/: {e}"))?;
    for name in datasets {
        let full = format!("{prefix}/{name}");
        let dataset = group
            .dataset(&name)
            .map_err(|e| format!("cannot open {full}: {e}"))?;
        let shape = dataset
            .shape()
            .map_err(|e| format!("cannot read the shape of {full}: {e}"))?
            .into_iter()
            .map(|d| usize::try_from(d).unwrap_or(usize::MAX))
            .collect::<Vec<_>>();
        let count = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= MAX_TENSOR_VALUES)
            .ok_or_else(|| format!("{full} has an impossible shape {shape:?}"))?;
        let values = dataset
            .read_f32()
            .map_err(|e| format!("cannot read {full} (truncated file?): {e}"))?;
        if values.len() != count {
            return Err(format!(
                "{full} holds {} values for shape {shape:?}",
                values.len()
            ));
        }
        let layer = prefix.rsplit('/').next().unwrap_or_default();
        let weight = name.strip_suffix(":0").unwrap_or(&name);
        out.insert(format!("{layer}/{weight}"), NamedTensor { shape, values });
    }
    let groups = group
        .groups()
        .map_err(|e| format!("cannot list {prefix}/: {e}"))?;
    for name in groups {
        let child = group
            .group(&name)
            .map_err(|e| format!("cannot open {prefix}/{name}: {e}"))?;
        collect(&child, &format!("{prefix}/{name}"), out)?;
    }
    Ok(())
}
