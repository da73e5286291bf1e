//! Every image-model family against TensorFlow: features of the 8 golden photos, computed by
//! `tf_keras.applications` with weights from the documented generator
//! (`../shared/golden/families/generator.md`), which this test reproduces and writes as a
//! Keras-layout HDF5 file — so the real file-reading path runs — for both backends.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use flowers_kit::backend::native::Kernels;
use flowers_kit::device::DeviceKind;
use flowers_kit::features::{BackendKind, FeatureExtractor};
use flowers_kit::models::Model;

use support::keras::{families, read_json, write_h5, FamilyCase};

/// The HDF5 tree of a file as `<family>.keras_layout.json` lists it: groups (with their
/// attributes) and datasets (with shape and dtype), depth first, in file order.
fn listing(path: &Path) -> serde_json::Value {
    use serde_json::json;
    fn attr_json(value: &hdf5_pure::AttrValue) -> serde_json::Value {
        use hdf5_pure::AttrValue;
        match value {
            AttrValue::VarLenString(s) => json!(s),
            AttrValue::VarLenAsciiStringArray(v) => json!(v),
            AttrValue::F64Array(v) if v.is_empty() => json!([]),
            other => panic!("an attribute h5py would not write for Keras: {other:?}"),
        }
    }
    fn attrs_json(
        attrs: &std::collections::HashMap<String, hdf5_pure::AttrValue>,
    ) -> serde_json::Value {
        let sorted: BTreeMap<&String, serde_json::Value> =
            attrs.iter().map(|(k, v)| (k, attr_json(v))).collect();
        json!(sorted)
    }
    fn visit(
        group: &hdf5_pure::Group,
        prefix: &str,
        groups: &mut Vec<serde_json::Value>,
        datasets: &mut Vec<serde_json::Value>,
    ) {
        let group_names = group.groups().unwrap();
        let dataset_names = group.datasets().unwrap();
        for names in [&group_names, &dataset_names] {
            assert!(
                names.windows(2).all(|w| w[0] < w[1]),
                "{prefix}: not in name order"
            );
        }
        let mut links: Vec<(&String, bool)> = group_names
            .iter()
            .map(|n| (n, true))
            .chain(dataset_names.iter().map(|n| (n, false)))
            .collect();
        links.sort();
        for (name, is_group) in links {
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            if is_group {
                let child = group.group(name).unwrap();
                groups.push(json!({"path": path, "attrs": attrs_json(&child.attrs().unwrap())}));
                visit(&child, &path, groups, datasets);
            } else {
                let dataset = group.dataset(name).unwrap();
                let dtype = match dataset.dtype().unwrap() {
                    hdf5_pure::DType::F32 => "float32",
                    hdf5_pure::DType::I64 => "int64",
                    other => panic!("{path}: {other:?}"),
                };
                datasets
                    .push(json!({"path": path, "shape": dataset.shape().unwrap(), "dtype": dtype}));
            }
        }
    }
    let file = hdf5_pure::File::open(path).unwrap();
    let root = file.root();
    let (mut groups, mut datasets) = (Vec::new(), Vec::new());
    visit(&root, "", &mut groups, &mut datasets);
    json!({"attrs": attrs_json(&root.attrs().unwrap()), "groups": groups, "datasets": datasets})
}

fn check(family: &str) {
    let case = FamilyCase::new(family);
    let model = case.model;
    let graph = model.graph(false);
    assert_eq!(
        graph.parameters().unwrap() as u64,
        case.spec["parameters"].as_u64().unwrap(),
        "{family}: the graph's weights do not match Keras' model"
    );
    let (golden, bound) = (&case.golden, case.bound);
    // The reference, then the native backend with every instruction set this CPU has.
    let runs = std::iter::once((BackendKind::Dfdx, None)).chain(
        Kernels::available()
            .into_iter()
            .map(|k| (BackendKind::Native, Some(k))),
    );
    for (backend, kernels) in runs {
        let mut extractor =
            FeatureExtractor::with_weights_on(model, case.weights(), DeviceKind::Cpu)
                .unwrap()
                .without_cache()
                .with_backend(backend)
                .unwrap()
                .batch_size(4)
                .unwrap();
        if let Some(kernels) = kernels {
            extractor = extractor.with_native_kernels(kernels).unwrap();
        }
        let out = extractor.extract_paths(&support::golden_pngs()).unwrap();
        assert!(out.skipped.is_empty());
        let (max, mean) = support::max_mean_abs_diff(&out.values, golden);
        let run = format!(
            "{family} {backend:?} {}",
            kernels.map_or(String::new(), |k| format!("{k:?}"))
        );
        println!("{run}: max |Δ| {max:.3e}, mean {mean:.3e} (bound {bound:.1e})");
        assert!(max <= bound, "{run}: max |Δ| {max} > {bound}");
        if backend == BackendKind::Native {
            // One photo at a time: each photo's layers split among the threads.
            let one = extractor.batch_size(1).unwrap();
            let out = one.extract_paths(&support::golden_pngs()).unwrap();
            let (max, _) = support::max_mean_abs_diff(&out.values, golden);
            println!("{run}, batch 1: max |Δ| {max:.3e}");
            assert!(max <= bound, "{run}, batch 1: max |Δ| {max} > {bound}");
        }
    }
    // Grad-CAM reads the last feature map: its mean is TF's features, for every family.
    let extractor = FeatureExtractor::with_weights(model, case.weights())
        .unwrap()
        .without_cache();
    support::check_class_maps(&extractor, &support::golden_pngs()[..2], golden, bound);
}

/// The test's files are laid out exactly as `tf_keras` writes them: same groups, datasets,
/// shapes, dtypes and attributes, in the same order, for every family.
#[test]
fn every_family_file_has_the_tree_keras_writes() {
    for family in [
        "inception_v3",
        "resnet50_v2",
        "nasnet_mobile",
        "efficientnet_b0",
        "mobilenet_v3_large",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let h5 = dir.path().join(format!("{family}.h5"));
        write_h5(family, &h5);
        let mut expected = read_json(&families().join(format!("{family}.keras_layout.json")));
        // Attribute maps compare regardless of key order; lists keep theirs.
        for group in expected["groups"].as_array_mut().unwrap() {
            let attrs: BTreeMap<String, serde_json::Value> =
                serde_json::from_value(group["attrs"].take()).unwrap();
            group["attrs"] = serde_json::json!(attrs);
        }
        let attrs: BTreeMap<String, serde_json::Value> =
            serde_json::from_value(expected["attrs"].take()).unwrap();
        expected["attrs"] = serde_json::json!(attrs);
        let written = listing(&h5);
        for key in ["attrs", "groups", "datasets"] {
            assert_eq!(
                written[key], expected[key],
                "{family}: the written {key} differ from tf_keras' listing"
            );
        }
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
        .args(support::golden_pngs())
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
    // Downloaded once into the cache, under the family's folder, keyed by its URL.
    let file = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5";
    let url = format!("{}/inception_v3/{file}", server.base);
    let key = flowers_kit::data::fetch::source_key(&url);
    assert!(dir
        .path()
        .join(format!("home/weights/inception_v3/{key}-{file}"))
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
