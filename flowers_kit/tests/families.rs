//! Every image-model family against TensorFlow: features of the 8 golden photos, computed by
//! `tf_keras.applications` with weights from the documented generator
//! (`../shared/golden/families/generator.md`), which this test reproduces and writes as a
//! Keras-layout HDF5 file — so the real file-reading path runs — for both backends.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flowers_kit::backend::native::Kernels;
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
    // The reference, then the native backend with every instruction set this CPU has.
    let runs = std::iter::once((BackendKind::Dfdx, None)).chain(
        Kernels::available()
            .into_iter()
            .map(|k| (BackendKind::Native, Some(k))),
    );
    for (backend, kernels) in runs {
        let mut extractor = FeatureExtractor::with_weights(model, Some(h5.to_str().unwrap()))
            .unwrap()
            .without_cache()
            .with_backend(backend)
            .unwrap()
            .batch_size(4)
            .unwrap();
        if let Some(kernels) = kernels {
            extractor = extractor.with_native_kernels(kernels).unwrap();
        }
        let out = extractor.extract_paths(&golden_pngs()).unwrap();
        assert!(out.skipped.is_empty());
        let (max, mean) = support::max_mean_abs_diff(&out.values, &golden);
        let run = format!(
            "{family} {backend:?} {}",
            kernels.map_or(String::new(), |k| format!("{k:?}"))
        );
        println!("{run}: max |Δ| {max:.3e}, mean {mean:.3e} (bound {bound:.1e})");
        assert!(max <= bound, "{run}: max |Δ| {max} > {bound}");
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

#[test]
fn nasnet_mobile_matches_tensorflow() {
    check("nasnet_mobile");
}

#[test]
fn cli_fetches_a_family_by_its_hub_handle_from_the_weights_mirror() {
    use std::collections::HashMap;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let h5 = dir.path().join("inception_v3.h5");
    write_h5("inception_v3", &h5);
    let mut files = HashMap::new();
    files.insert(
        format!("/{}", Model::InceptionV3.weights_file()),
        Arc::new(std::fs::read(&h5).unwrap()),
    );
    let server = support::http::Server::start(files, support::http::Behaviour::Normal);
    let out = dir.path().join("features.safetensors");
    let run = std::process::Command::new(support::flowers_bin())
        .args([
            "features",
            "--model",
            "https://tfhub.dev/google/imagenet/inception_v3/feature_vector/5",
        ])
        .arg("--out")
        .arg(&out)
        .args(golden_pngs())
        .env("FLOWERS_KIT_HOME", dir.path().join("home"))
        .env("FLOWERS_WEIGHTS_URL", &server.base)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let (shape, ours) = support::tensor_f32(&out, "features");
    assert_eq!(shape, vec![8, 2048]);
    let (_, golden) = support::tensor_f32(&families().join("inception_v3.safetensors"), "features");
    let (max, _) = support::max_mean_abs_diff(&ours, &golden);
    assert!(max <= 1e-4 * 2.61, "max |Δ| {max}");
    // Downloaded once into the cache, under the family's folder.
    assert!(dir
        .path()
        .join("home/weights/inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5")
        .is_file());
}

#[test]
fn every_family_is_listed_and_the_inaturalist_module_is_explained() {
    let run = std::process::Command::new(support::flowers_bin())
        .arg("models")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&run.stdout);
    for family in [
        "inception_v3",
        "resnet50_v2",
        "nasnet_mobile",
        "efficientnet_b0",
        "mobilenet_v3_large",
    ] {
        let spec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(families().join(format!("{family}.json"))).unwrap(),
        )
        .unwrap();
        let line = listing.lines().find(|l| l.starts_with(family)).unwrap();
        assert!(line.contains(&spec["parameters"].to_string()), "{line}");
        assert!(line.contains(&spec["features"].to_string()), "{line}");
    }
    assert_eq!(
        listing
            .lines()
            .filter(|l| l.starts_with("mobilenet_v2_"))
            .count(),
        22
    );
    let err = Model::parse("https://tfhub.dev/google/inaturalist/inception_v3/feature_vector/5")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("iNaturalist") && err.contains("inception_v3"),
        "{err}"
    );
    for handle in [
        "https://tfhub.dev/google/imagenet/resnet_v2_50/feature_vector/5",
        "https://tfhub.dev/google/imagenet/nasnet_mobile/feature_vector/5",
        "https://tfhub.dev/tensorflow/efficientnet/b0/feature-vector/1",
        "https://tfhub.dev/google/imagenet/mobilenet_v3_large_100_224/feature_vector/5",
    ] {
        assert!(Model::parse(handle).is_ok(), "{handle}");
    }
}
