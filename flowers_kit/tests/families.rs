//! Every image-model family against TensorFlow: features of the 8 golden photos, computed by
//! `tf_keras.applications` with weights from the documented generator
//! (`../shared/golden/families/generator.md`), which this test reproduces and writes as a
//! Keras-layout HDF5 file — so the real file-reading path runs — for both backends.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flowers_kit::features::{BackendKind, FeatureExtractor};
use flowers_kit::models::Model;

fn families() -> PathBuf {
    support::golden().join("families")
}

/// The generator's value for element `i` of weight `name` (`layer/weight`).
fn generate(layer: &str, weight: &str, shape: &[usize], gain: f64) -> Vec<f32> {
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

/// A group of the HDF5 file being written.
#[derive(Default)]
struct Tree {
    groups: BTreeMap<String, Tree>,
    datasets: Vec<(String, Vec<f32>, Vec<u64>)>,
    attrs: Vec<(String, Vec<String>)>,
}

impl Tree {
    fn at(&mut self, path: &str) -> &mut Tree {
        path.split('/').fold(self, |tree, part| {
            tree.groups.entry(part.to_string()).or_default()
        })
    }

    fn emit_group(self, mut group: hdf5_pure::GroupBuilder) -> hdf5_pure::FinishedGroup {
        for (name, values, shape) in self.datasets {
            group
                .create_dataset(&name)
                .with_f32_data(&values)
                .with_shape(&shape);
        }
        for (name, values) in self.attrs {
            group.set_attr(&name, hdf5_pure::AttrValue::StringArray(values));
        }
        for (name, child) in self.groups {
            let sub = group.create_group(&name);
            group.add_group(child.emit_group(sub));
        }
        group.finish()
    }
}

/// Writes the family's weights in Keras' `save_weights` layout: root `layer_names`, each
/// layer's `weight_names`, datasets at `<layer>/<layer>/<weight>:0`.
fn write_h5(family: &str, path: &Path) -> serde_json::Value {
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(families().join(format!("{family}.json"))).unwrap())
            .unwrap();
    let gain = spec["kernel_gain"].as_f64().unwrap_or(1.0);
    let mut root = Tree::default();
    let mut layer_names: Vec<String> = Vec::new();
    for entry in spec["weights"].as_array().unwrap() {
        let layer = entry[0].as_str().unwrap();
        let weight = entry[1].as_str().unwrap();
        let shape: Vec<usize> = entry[2]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        if layer_names.last().map(String::as_str) != Some(layer) {
            layer_names.push(layer.to_string());
        }
        let values = generate(layer, weight, &shape, gain);
        let group = root.at(layer);
        let full = format!("{layer}/{weight}:0");
        match group.attrs.iter_mut().find(|(n, _)| n == "weight_names") {
            Some((_, names)) => names.push(full.clone()),
            None => group
                .attrs
                .push(("weight_names".into(), vec![full.clone()])),
        }
        let (folder, file) = full.rsplit_once('/').unwrap();
        let dims = shape.iter().map(|&d| d as u64).collect();
        group
            .at(folder)
            .datasets
            .push((file.to_string(), values, dims));
    }
    let mut builder = hdf5_pure::FileBuilder::new();
    builder.set_attr(
        "layer_names",
        hdf5_pure::AttrValue::StringArray(layer_names),
    );
    for (name, child) in root.groups {
        let group = builder.create_group(&name);
        builder.add_group(child.emit_group(group));
    }
    std::fs::write(path, builder.finish().unwrap()).unwrap();
    spec
}

fn golden_pngs() -> Vec<PathBuf> {
    support::GOLDEN_IMAGES
        .iter()
        .map(|s| support::golden().join("images").join(format!("{s}.png")))
        .collect()
}

fn check(family: &str) {
    let dir = tempfile::tempdir().unwrap();
    let h5 = dir.path().join(format!("{family}.h5"));
    let spec = write_h5(family, &h5);
    let model = Model::parse(family).unwrap();
    let graph = model.graph(false);
    assert_eq!(
        graph.parameters().unwrap() as u64,
        spec["parameters"].as_u64().unwrap(),
        "{family}: the graph's weights do not match Keras' model"
    );
    let (_, golden) = support::tensor_f32(
        &families().join(format!("{family}.safetensors")),
        "features",
    );
    let bound = 1e-4 * spec["max_abs_feature"].as_f64().unwrap().max(1.0) as f32;
    for backend in [BackendKind::Native, BackendKind::Dfdx] {
        let extractor = FeatureExtractor::with_weights(model, Some(h5.to_str().unwrap()))
            .unwrap()
            .without_cache()
            .with_backend(backend)
            .unwrap()
            .batch_size(4)
            .unwrap();
        let out = extractor.extract_paths(&golden_pngs()).unwrap();
        assert!(out.skipped.is_empty());
        let (max, mean) = support::max_mean_abs_diff(&out.values, &golden);
        println!("{family} {backend:?}: max |Δ| {max:.3e}, mean {mean:.3e} (bound {bound:.1e})");
        assert!(
            max <= bound,
            "{family} {backend:?}: max |Δ| {max} > {bound}"
        );
    }
}

#[test]
fn resnet50_v2_matches_tensorflow() {
    check("resnet50_v2");
}

#[test]
fn efficientnet_b0_matches_tensorflow() {
    check("efficientnet_b0");
}

#[test]
fn mobilenet_v3_large_matches_tensorflow() {
    check("mobilenet_v3_large");
}

#[test]
fn inception_v3_matches_tensorflow() {
    check("inception_v3");
}
