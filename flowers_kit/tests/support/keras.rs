//! Keras-layout weight files for the families whose weights come from the documented
//! generator (`../shared/golden/families/generator.md`), written exactly as `tf_keras`'s
//! `save_weights` lays them out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub fn families() -> PathBuf {
    super::golden().join("families")
}

/// The generator's value for element `i` of weight `name` (`layer/weight`).
pub fn generate(layer: &str, weight: &str, shape: &[usize], gain: f64) -> Vec<f32> {
    let key = format!("{layer}/{weight}");
    let mut state: u64 = 0xCBF2_9CE4_8422_2325;
    for b in key.bytes() {
        state ^= u64::from(b);
        state = state.wrapping_mul(0x0000_0100_0000_01B3);
    }
    let n: usize = shape.iter().product();
    let fan_in: usize = if weight == "depthwise_kernel" {
        shape.iter().take(2).product()
    } else {
        shape.iter().take(shape.len().saturating_sub(1)).product()
    };
    (0..n)
        .map(|i| {
            let mut z = state.wrapping_add((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 40) as f64 / (1u64 << 24) as f64;
            let value = match weight {
                "gamma" => 0.5 + u,
                "moving_variance" | "variance" => 0.5 + 1.5 * u,
                "count" => 1000.0,
                _ if shape.len() >= 2 => (2.0 * u - 1.0) * (6.0 / fan_in as f64).sqrt() * gain,
                _ => (2.0 * u - 1.0) * 0.05,
            };
            value as f32
        })
        .collect()
}

/// A group of the HDF5 file being written: sub-groups and datasets in name order, as h5py
/// (and so Keras) lays them out.
#[derive(Default)]
struct Tree {
    groups: BTreeMap<String, Tree>,
    datasets: BTreeMap<String, (Data, Vec<u64>)>,
    attrs: Vec<(String, hdf5_pure::AttrValue)>,
}

/// A dataset's values in the dtype the listing gives.
enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl Tree {
    fn at(&mut self, path: &str) -> &mut Tree {
        path.split('/').fold(self, |tree, part| {
            tree.groups.entry(part.to_string()).or_default()
        })
    }

    fn emit_group(self, mut group: hdf5_pure::GroupBuilder) -> hdf5_pure::FinishedGroup {
        for (name, (data, shape)) in self.datasets {
            let builder = group.create_dataset(&name);
            match &data {
                Data::F32(values) => builder.with_f32_data(values),
                Data::I64(values) => builder.with_i64_data(values),
            }
            .with_shape(&shape);
        }
        for (name, value) in self.attrs {
            group.set_attr(&name, value);
        }
        for (name, child) in self.groups {
            let sub = group.create_group(&name);
            group.add_group(child.emit_group(sub));
        }
        group.finish()
    }
}

/// An attribute as h5py stores what Keras hands it: a `str` as a variable-length UTF-8
/// string, a list of `bytes` as variable-length ASCII strings, an empty list as an empty
/// float64 array (`np.asarray([])`).
fn keras_attr(value: &serde_json::Value) -> hdf5_pure::AttrValue {
    match value {
        serde_json::Value::String(s) => hdf5_pure::AttrValue::VarLenString(s.clone()),
        serde_json::Value::Array(items) if items.is_empty() => {
            hdf5_pure::AttrValue::F64Array(Vec::new())
        }
        serde_json::Value::Array(items) => hdf5_pure::AttrValue::VarLenAsciiStringArray(
            items
                .iter()
                .map(|i| i.as_str().unwrap().to_string())
                .collect(),
        ),
        other => panic!("unexpected attribute value {other}"),
    }
}

/// A family's golden check: its Keras-layout weight file written in a folder of its own, and
/// TensorFlow's features of the golden photos with the bound extracted features must meet.
pub struct FamilyCase {
    pub model: flowers_kit::models::Model,
    /// The weight file (in `_dir`, removed with the case).
    pub h5: PathBuf,
    _dir: tempfile::TempDir,
    /// `<family>.json`: the generator's settings and Keras' model facts.
    pub spec: serde_json::Value,
    /// TensorFlow's features, one row per golden photo.
    pub golden: Vec<f32>,
    /// 1e-4 of the largest feature (at least 1e-4): the generator's weights make large ones.
    pub bound: f32,
}

impl FamilyCase {
    pub fn new(family: &str) -> FamilyCase {
        let dir = tempfile::tempdir().unwrap();
        let h5 = dir.path().join(format!("{family}.h5"));
        let spec = write_h5(family, &h5);
        let (_, golden) = super::tensor_f32(
            &families().join(format!("{family}.safetensors")),
            "features",
        );
        let bound = 1e-4 * spec["max_abs_feature"].as_f64().unwrap().max(1.0) as f32;
        FamilyCase {
            model: flowers_kit::models::Model::parse(family).unwrap(),
            h5,
            _dir: dir,
            spec,
            golden,
            bound,
        }
    }

    /// The weight file's path as the extractor takes it.
    pub fn weights(&self) -> Option<&str> {
        self.h5.to_str()
    }
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The family's HDF5 tree exactly as `tf_keras`'s `save_weights` wrote it
/// (`<family>.keras_layout.json`: every group, dataset and attribute, weightless layers and
/// `/`-nested layer names included), filled with the generator's values. The generator
/// names weights as a fresh Keras session does; the file may carry other layer names
/// (Inception V3's published ones), so weighted layers are matched by order, as Keras loads
/// such files.
pub fn write_h5(family: &str, path: &Path) -> serde_json::Value {
    let spec = read_json(&families().join(format!("{family}.json")));
    let layout = read_json(&families().join(format!("{family}.keras_layout.json")));
    let gain = spec["kernel_gain"].as_f64().unwrap_or(1.0);
    // The generator's (layer, weight) for each dataset path of the file.
    let groups = layout["groups"].as_array().unwrap();
    let weight_names = |group: &str| -> Vec<String> {
        groups
            .iter()
            .find(|g| g["path"] == group)
            .and_then(|g| g["attrs"]["weight_names"].as_array())
            .map(|names| {
                names
                    .iter()
                    .map(|n| n.as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let weighted: Vec<&str> = layout["attrs"]["layer_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .filter(|n| !weight_names(n).is_empty())
        .collect();
    let mut spec_layers: Vec<(String, Vec<String>)> = Vec::new();
    for entry in spec["weights"].as_array().unwrap() {
        let (layer, weight) = (entry[0].as_str().unwrap(), entry[1].as_str().unwrap());
        if spec_layers.last().map(|(l, _)| l.as_str()) != Some(layer) {
            spec_layers.push((layer.to_string(), Vec::new()));
        }
        spec_layers.last_mut().unwrap().1.push(weight.to_string());
    }
    assert_eq!(
        weighted.len(),
        spec_layers.len(),
        "{family}: weighted layers"
    );
    let mut owner = BTreeMap::new();
    for (name, (layer, weights)) in weighted.iter().zip(&spec_layers) {
        let names = weight_names(name);
        assert_eq!(names.len(), weights.len(), "{family}: weights of {name}");
        for (file_weight, weight) in names.iter().zip(weights) {
            owner.insert(
                format!("{name}/{file_weight}"),
                (layer.clone(), weight.clone()),
            );
        }
    }

    let mut root = Tree::default();
    for (name, value) in layout["attrs"].as_object().unwrap() {
        root.attrs.push((name.clone(), keras_attr(value)));
    }
    for group in groups {
        let tree = root.at(group["path"].as_str().unwrap());
        for (name, value) in group["attrs"].as_object().unwrap() {
            tree.attrs.push((name.clone(), keras_attr(value)));
        }
    }
    for dataset in layout["datasets"].as_array().unwrap() {
        let full = dataset["path"].as_str().unwrap();
        let shape: Vec<usize> = dataset["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let (layer, weight) = &owner[full];
        let values = generate(layer, weight, &shape, gain);
        let data = match dataset["dtype"].as_str().unwrap() {
            "float32" => Data::F32(values),
            "int64" => Data::I64(values.iter().map(|&v| v as i64).collect()),
            other => panic!("{full}: dtype {other}"),
        };
        let (folder, file) = full.rsplit_once('/').unwrap();
        let dims = shape.iter().map(|&d| d as u64).collect();
        root.at(folder)
            .datasets
            .insert(file.to_string(), (data, dims));
    }
    let mut builder = hdf5_pure::FileBuilder::new();
    for (name, value) in std::mem::take(&mut root.attrs) {
        builder.set_attr(&name, value);
    }
    assert!(root.datasets.is_empty(), "{family}: datasets at the root");
    for (name, child) in root.groups {
        let group = builder.create_group(&name);
        builder.add_group(child.emit_group(group));
    }
    std::fs::write(path, builder.finish().unwrap()).unwrap();
    spec
}
