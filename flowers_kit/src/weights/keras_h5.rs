//! Keras HDF5 weight files → named f32 tensors, with no libhdf5.
//!
//! Keras writes a `layer_names` attribute on the root (or on `model_weights` in a whole-model
//! save) and a `weight_names` attribute on each layer's group, naming the datasets relative
//! to it: layer `Conv1` holds `Conv1/kernel:0`, layer `Conv/BatchNorm` (MobileNet V3) holds
//! `Conv/BatchNorm/gamma:0`, and a nested model's group lists its inner layers' weights. As
//! Keras' `load_weights` does, this reader follows those attributes, in file order. Each
//! tensor is addressed by its weight path without the last part's `:0`: layer
//! `Conv/BatchNorm`, weight `gamma`. A file without the attributes is walked instead, each
//! tensor named by its last two path parts.

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

/// Most values read from one file in all (1 GiB of f32): compressed or unallocated datasets
/// could otherwise expand a small file into many full-size tensors.
const MAX_TOTAL_VALUES: usize = 1 << 28;

/// Deepest group nesting walked, and most groups visited, in a file without Keras'
/// attributes: HDF5 groups can link back to their parents.
const MAX_DEPTH: usize = 32;
const MAX_GROUPS: usize = 100_000;

/// What reading one file may still cost.
struct Allowance {
    values: usize,
    groups: usize,
}

impl Allowance {
    fn new() -> Allowance {
        Allowance {
            values: MAX_TOTAL_VALUES,
            groups: MAX_GROUPS,
        }
    }

    /// Takes `count` values, or errors when the file would exceed its total.
    fn take(&mut self, count: usize, full: &str) -> std::result::Result<(), String> {
        self.values = self.values.checked_sub(count).ok_or_else(|| {
            format!("{full} would take the file past {MAX_TOTAL_VALUES} values in all")
        })?;
        Ok(())
    }
}

/// One tensor: its shape and values in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// Dimensions as stored (conv kernels HWIO, depthwise kernels (kh, kw, C, 1)).
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f32>,
}

/// One weighted layer of the file: its name and its tensors, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct KerasLayer {
    /// The layer name (`Conv1`, `Conv/BatchNorm`, `conv2d_12`…).
    pub name: String,
    /// (weight name without `:0`, tensor), in the order Keras wrote them.
    pub weights: Vec<(String, NamedTensor)>,
}

/// All tensors of a Keras weight file, by layer, in file order.
#[derive(Debug, Clone)]
pub struct KerasWeights {
    path: PathBuf,
    layers: Vec<KerasLayer>,
    /// `<layer>/<weight>` → (layer index, weight index).
    index: HashMap<String, (usize, usize)>,
    digest: String,
}

impl KerasWeights {
    /// Reads every weight of the file.
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
        let root = file.root();
        let top = match child(&root, "model_weights") {
            Some(group) => group,
            None => root,
        };
        let layers = match string_list(&top, "layer_names", "the root group").map_err(&bad)? {
            Some(names) => by_attributes(&top, &names),
            None => {
                let mut layers = Vec::new();
                walk(&top, "", &mut layers).map(|()| layers)
            }
        }
        .map_err(&bad)?;
        let mut index = HashMap::new();
        for (l, layer) in layers.iter().enumerate() {
            for (w, (weight, _)) in layer.weights.iter().enumerate() {
                let name = format!("{}/{weight}", layer.name);
                // Two tensors under one name would leave the model with whichever came last:
                // a wrong answer, not an error, so it is refused here.
                if index.insert(name.clone(), (l, w)).is_some() {
                    return Err(bad(format!(
                        "two tensors are named {name} (a file without Keras' layer_names \
                         attribute whose groups repeat a name); cannot tell which is which"
                    )));
                }
            }
        }
        if index.is_empty() {
            return Err(bad("the file holds no weight tensors".into()));
        }
        Ok(KerasWeights {
            path,
            layers,
            index,
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
        self.index.len()
    }

    /// True when no tensor was read (never for an opened file).
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Tensor names (`<layer>/<weight>`), sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.index.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The weighted layers in file order (what Keras matches by position when names differ).
    pub fn layers(&self) -> &[KerasLayer] {
        &self.layers
    }

    /// The tensor `<layer>/<weight>`, checked against the expected shape.
    pub fn get(&self, layer: &str, weight: &str, shape: &[usize]) -> Result<&NamedTensor> {
        let name = format!("{layer}/{weight}");
        let tensor = self
            .index
            .get(&name)
            .and_then(|&(l, w)| self.layers.get(l)?.weights.get(w))
            .map(|(_, t)| t)
            .ok_or_else(|| Error::Tensors {
                path: self.path.clone(),
                reason: format!(
                    "tensor {name} is missing (is this the weight file of the right model?)"
                ),
            })?;
        check_shape(&self.path, &name, tensor, shape)?;
        Ok(tensor)
    }
}

/// Errors unless `tensor` has `shape`.
pub(crate) fn check_shape(
    path: &Path,
    name: &str,
    tensor: &NamedTensor,
    shape: &[usize],
) -> Result<()> {
    if tensor.shape != shape {
        return Err(Error::Tensors {
            path: path.to_path_buf(),
            reason: format!(
                "tensor {name} has shape {:?}, expected {shape:?} (weights of another model or \
                 width?)",
                tensor.shape
            ),
        });
    }
    Ok(())
}

/// The group at `path` below `group`, following each `/`-separated part.
fn child(group: &hdf5_pure::Group, path: &str) -> Option<hdf5_pure::Group> {
    let mut current = group.group(path.split('/').next()?).ok()?;
    for part in path.split('/').skip(1) {
        current = current.group(part).ok()?;
    }
    Some(current)
}

/// A string-list attribute, as Keras' `load_attributes_from_hdf5_group` reads it: `name`
/// itself, or when Keras had to split a list too long for one object header, `name0`,
/// `name1`, … in order. `Ok(None)` when the group has neither.
///
/// h5py stores the list Keras hands it in whatever string datatype its version picks:
/// fixed-length in the 2018 Keras Applications files, variable-length ASCII from `tf_keras`
/// today. Every string form is accepted. An empty list is stored by Keras as an empty
/// float64 array (`np.asarray([])`), which reads as an empty list; any other value is an
/// error, not a silently empty list.
fn string_list(
    group: &hdf5_pure::Group,
    name: &str,
    at: &str,
) -> std::result::Result<Option<Vec<String>>, String> {
    let attrs = group
        .attrs()
        .map_err(|e| format!("cannot read the attributes of {at}: {e}"))?;
    if let Some(value) = attrs.get(name) {
        return strings_of(value)
            .map(Some)
            .ok_or_else(|| format!("attribute {name} of {at} is not a list of names"));
    }
    let mut chunks = Vec::new();
    for chunk in 0usize.. {
        let Some(value) = attrs.get(&format!("{name}{chunk}")) else {
            break;
        };
        let names = strings_of(value)
            .ok_or_else(|| format!("attribute {name}{chunk} of {at} is not a list of names"))?;
        chunks.extend(names);
    }
    Ok((!chunks.is_empty()).then_some(chunks))
}

/// The strings of a string or string-list attribute (without fixed-length padding), or an
/// empty list for an empty numeric array; `None` for anything else.
fn strings_of(value: &hdf5_pure::AttrValue) -> Option<Vec<String>> {
    use hdf5_pure::AttrValue;
    let trim = |s: &String| s.trim_end_matches('\0').to_string();
    let list = match value {
        AttrValue::StringArray(v)
        | AttrValue::AsciiStringArray(v)
        | AttrValue::VarLenStringArray(v)
        | AttrValue::VarLenAsciiStringArray(v)
        | AttrValue::VarLenAsciiCharArray(v) => v.iter().map(trim).collect(),
        AttrValue::StringArraySized { values, .. }
        | AttrValue::AsciiStringArraySized { values, .. } => values.iter().map(trim).collect(),
        AttrValue::String(s)
        | AttrValue::AsciiString(s)
        | AttrValue::VarLenString(s)
        | AttrValue::VarLenAsciiString(s) => vec![trim(s)],
        AttrValue::StringSized { value, .. } | AttrValue::AsciiStringSized { value, .. } => {
            vec![trim(value)]
        }
        AttrValue::F64Array(v) if v.is_empty() => Vec::new(),
        AttrValue::F32Array(v) if v.is_empty() => Vec::new(),
        _ => return None,
    };
    Some(list)
}

/// Reads one dataset as a tensor.
fn read_tensor(
    dataset: &hdf5_pure::Dataset,
    full: &str,
    allowance: &mut Allowance,
) -> std::result::Result<NamedTensor, String> {
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
    allowance.take(count, full)?;
    let values = dataset
        .read_f32()
        .map_err(|e| format!("cannot read {full} (truncated file?): {e}"))?;
    if values.len() != count {
        return Err(format!(
            "{full} holds {} values for shape {shape:?}",
            values.len()
        ));
    }
    Ok(NamedTensor { shape, values })
}

/// The layers named by `layer_names`, each with the datasets its `weight_names` lists.
fn by_attributes(
    top: &hdf5_pure::Group,
    names: &[String],
) -> std::result::Result<Vec<KerasLayer>, String> {
    let mut by_layer: Vec<KerasLayer> = Vec::new();
    let mut allowance = Allowance::new();
    // Each layer, and each weight, once: a name listed twice would read its tensor twice.
    let mut seen_layers = std::collections::HashSet::new();
    let mut seen_weights = std::collections::HashSet::new();
    for name in names {
        if !seen_layers.insert(name) {
            return Err(format!("layer {name} is listed twice in layer_names"));
        }
        let group = child(top, name).ok_or_else(|| format!("layer group {name} is missing"))?;
        // A weightless layer (an activation, an addition) has an empty list or none at all.
        let weights =
            string_list(&group, "weight_names", &format!("layer {name}"))?.unwrap_or_default();
        for weight in weights {
            if !seen_weights.insert(format!("{name}\u{0}{weight}")) {
                return Err(format!("weight {weight} of layer {name} is listed twice"));
            }
            let (folder, file) = match weight.rsplit_once('/') {
                Some((folder, file)) => (Some(folder), file),
                None => (None, weight.as_str()),
            };
            let holder = match folder {
                Some(folder) => child(&group, folder)
                    .ok_or_else(|| format!("{name}/{weight}: group {folder} is missing"))?,
                None => group.clone(),
            };
            let dataset = holder
                .dataset(file)
                .map_err(|e| format!("cannot open {name}/{weight}: {e}"))?;
            let tensor = read_tensor(&dataset, &format!("{name}/{weight}"), &mut allowance)?;
            // The weight's own path names its layer: `Conv/BatchNorm/gamma:0`, or for a
            // nested model's group, the inner layer.
            let layer = folder.unwrap_or(name).to_string();
            let short = file.strip_suffix(":0").unwrap_or(file).to_string();
            push_weight(&mut by_layer, layer, short, tensor);
        }
    }
    Ok(by_layer)
}

/// Adds a tensor to the last layer if it is `layer`, else starts that layer (file order).
fn push_weight(layers: &mut Vec<KerasLayer>, layer: String, weight: String, tensor: NamedTensor) {
    match layers.last_mut() {
        Some(last) if last.name == layer => last.weights.push((weight, tensor)),
        _ => layers.push(KerasLayer {
            name: layer,
            weights: vec![(weight, tensor)],
        }),
    }
}

/// A file without Keras' attributes: every float dataset, named by its last two path parts.
fn walk(
    group: &hdf5_pure::Group,
    prefix: &str,
    out: &mut Vec<KerasLayer>,
) -> std::result::Result<(), String> {
    walk_within(group, prefix, out, &mut Allowance::new(), 0)
}

fn walk_within(
    group: &hdf5_pure::Group,
    prefix: &str,
    out: &mut Vec<KerasLayer>,
    allowance: &mut Allowance,
    depth: usize,
) -> std::result::Result<(), String> {
    allowance.groups = allowance.groups.checked_sub(1).ok_or_else(|| {
        format!("more than {MAX_GROUPS} groups (do groups link back to their parents?)")
    })?;
    if depth > MAX_DEPTH {
        return Err(format!(
            "groups nest deeper than {MAX_DEPTH} at {prefix} (does a group link to its parent?)"
        ));
    }
    let datasets = group
        .datasets()
        .map_err(|e| format!("cannot list {prefix}/: {e}"))?;
    for name in datasets {
        let full = format!("{prefix}/{name}");
        let dataset = group
            .dataset(&name)
            .map_err(|e| format!("cannot open {full}: {e}"))?;
        let tensor = read_tensor(&dataset, &full, allowance)?;
        let layer = prefix
            .rsplit_once('/')
            .map_or(prefix, |(_, last)| last)
            .to_string();
        let weight = name.strip_suffix(":0").unwrap_or(&name).to_string();
        push_weight(out, layer, weight, tensor);
    }
    let groups = group
        .groups()
        .map_err(|e| format!("cannot list {prefix}/: {e}"))?;
    for name in groups {
        let child = group
            .group(&name)
            .map_err(|e| format!("cannot open {prefix}/{name}: {e}"))?;
        walk_within(
            &child,
            &format!("{prefix}/{name}"),
            out,
            allowance,
            depth.saturating_add(1),
        )?;
    }
    Ok(())
}
