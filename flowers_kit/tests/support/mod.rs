//! Shared test helpers: the real sample data from `../shared`, a .tgz packer and a local
//! HTTP server with the failure modes downloads must survive.
#![allow(dead_code)]

pub mod http;
pub mod keras;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// `../shared` from the repository root (tests run in the crate folder), or the folder
/// `FLOWERS_TEST_SHARED` names: `scripts/gpu-check.sh` runs the CUDA tests on another machine
/// with the part of it they read.
pub fn shared() -> PathBuf {
    let root = std::env::var_os("FLOWERS_TEST_SHARED").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("..")
                .join("shared")
        },
        PathBuf::from,
    );
    assert!(
        root.is_dir(),
        "the shared data folder {} is missing",
        root.display()
    );
    root
}

/// The 750 real flower photos, 150 per class.
pub fn sample_dir() -> PathBuf {
    shared().join("data").join("flower_photos_sample")
}

/// The golden outputs computed with TensorFlow.
pub fn golden() -> PathBuf {
    shared().join("golden")
}

/// `flower_photos_sample` packed like the real `flower_photos.tgz`: a `flower_photos/` top
/// folder with the class folders and a LICENSE.txt. Built once per test binary.
pub fn sample_tgz() -> &'static [u8] {
    static TGZ: OnceLock<Vec<u8>> = OnceLock::new();
    TGZ.get_or_init(|| {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        tar.append_dir_all("flower_photos", sample_dir()).unwrap();
        let license = b"All images are licensed under CC-BY 2.0 by their Flickr authors.\n";
        let mut header = tar::Header::new_gnu();
        header.set_size(license.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "flower_photos/LICENSE.txt", &license[..])
            .unwrap();
        tar.into_inner().unwrap().finish().unwrap()
    })
}

/// Path to the built `flowers` binary.
#[cfg(feature = "cli")]
pub fn flowers_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flowers"))
}

/// The 8 golden image stems, in the order of the golden feature rows.
pub const GOLDEN_IMAGES: [&str; 8] = [
    "00_daisy",
    "01_daisy",
    "02_dandelion",
    "03_roses",
    "04_roses",
    "05_sunflowers",
    "06_tulips",
    "07_tulips",
];

/// The 8 golden photos, in the order of the golden feature rows.
pub fn golden_pngs() -> Vec<PathBuf> {
    GOLDEN_IMAGES
        .iter()
        .map(|s| golden().join("images").join(format!("{s}.png")))
        .collect()
}

/// Keras' no_top weight file of a MobileNet V2 variant (`"0.35_224"`), as the golden
/// features were computed with.
pub fn golden_h5(variant: &str) -> PathBuf {
    golden().join(format!("mobilenet_v2_{variant}_no_top.h5"))
}

/// Two classes ("daisy", "roses") of four golden photos each, copied under `root`, and split
/// as `Dataset::split(0.75, 1)` splits them (its test side is not empty).
pub fn golden_photos(root: &Path) -> flowers_kit::data::Split {
    for (i, stem) in GOLDEN_IMAGES.iter().enumerate() {
        let class = root.join(if i % 2 == 0 { "daisy" } else { "roses" });
        std::fs::create_dir_all(&class).unwrap();
        let photo = golden().join("images").join(format!("{stem}.png"));
        std::fs::copy(&photo, class.join(photo.file_name().unwrap())).unwrap();
    }
    let split = flowers_kit::data::Dataset::open(root)
        .unwrap()
        .split(0.75, 1)
        .unwrap();
    assert!(!split.test.is_empty());
    split
}

/// A tensor from a safetensors file: its shape and raw little-endian bytes.
pub fn tensor_bytes(path: &Path, name: &str) -> (Vec<usize>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = file
        .tensor(name)
        .unwrap_or_else(|e| panic!("{name} in {}: {e}", path.display()));
    (view.shape().to_vec(), view.data().to_vec())
}

/// An f32 tensor from a safetensors file.
pub fn tensor_f32(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let (shape, raw) = tensor_bytes(path, name);
    let values = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (shape, values)
}

/// max |a - b| and mean |a - b|.
pub fn max_mean_abs_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let mut max = 0f32;
    let mut sum = 0f64;
    for (x, y) in a.iter().zip(b) {
        let d = (x - y).abs();
        max = max.max(d);
        sum += f64::from(d);
    }
    (max, (sum / a.len() as f64) as f32)
}

/// A cache home shared by the test binaries of this build (features are keyed by content,
/// so sharing is safe): real features of the 750 photos are extracted once, not per test.
pub fn shared_home() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("flowers_kit_home")
}

/// Download options for tests: `attempts` tries, 20 ms back-off, 10 s time-out.
pub fn quick_fetch(attempts: u32) -> flowers_kit::data::FetchOptions {
    flowers_kit::data::FetchOptions {
        attempts,
        backoff: std::time::Duration::from_millis(20),
        timeout: std::time::Duration::from_secs(10),
        ..Default::default()
    }
}

/// The extractor's last feature map of each photo averages to TensorFlow's features of it
/// (`golden`, one row per photo, within `bound`), and a Grad-CAM map of it under a random
/// head has one finite, non-negative value per cell and the probability the classifier
/// predicts: the maps are the real network's, for the family the extractor runs.
pub fn check_class_maps(
    extractor: &flowers_kit::features::FeatureExtractor,
    photos: &[PathBuf],
    golden: &[f32],
    bound: f32,
) {
    use flowers_kit::train::{Activation, Classifier, Head};
    let dim = extractor.feature_dim();
    let head = Head::new(dim, &[], 5, Activation::Relu, 0).unwrap();
    let classes: Vec<String> = (0..5).map(|i| format!("class {i}")).collect();
    let classifier = Classifier::from_parts(head, classes, extractor.source()).unwrap();
    for (photo, expected) in photos.iter().zip(golden.chunks(dim)) {
        let map = extractor.last_feature_map(photo).unwrap();
        assert_eq!(map.channels(), dim);
        assert!(
            map.height() * map.width() > 1,
            "a map of {}×{} cells",
            map.height(),
            map.width()
        );
        let (max, _) = max_mean_abs_diff(&map.pooled(), expected);
        assert!(
            max <= bound,
            "{}: the map's mean is {max} from TF's features",
            photo.display()
        );
        let cam = classifier.grad_cam(extractor, photo, 2).unwrap();
        assert_eq!(cam.values.len(), map.height() * map.width());
        assert!(cam.values.iter().all(|v| v.is_finite() && *v >= 0.0));
        let p = predicted_probability(&classifier, extractor, photo, "class 2");
        // The map's mean and the whole network's features differ by rounding (summed in
        // another order), which NASNet's large features carry to the 4th decimal.
        assert!(
            (p - cam.probability).abs() < 1e-3,
            "{p} vs {}",
            cam.probability
        );
    }
}

/// The probability `classifier.predict` gives the class named `class` for `photo`.
pub fn predicted_probability(
    classifier: &flowers_kit::train::Classifier,
    extractor: &flowers_kit::features::FeatureExtractor,
    photo: &Path,
    class: &str,
) -> f32 {
    let classes = classifier.classes().len();
    let predicted = classifier.predict(extractor, photo, classes).unwrap();
    predicted
        .iter()
        .find(|p| p.class == class)
        .unwrap()
        .probability
}

/// Two trainings of `rows` took the same steps: the same training and test losses step by
/// step (within 1e-3, relative), and fine-tuned blocks (if any) that moved, to within 5 % of
/// how far training moved them. `name` says which run failed.
pub fn assert_same_training(
    name: &str,
    (a, a_history): (
        &flowers_kit::train::Classifier,
        &flowers_kit::train::History,
    ),
    (b, b_history): (
        &flowers_kit::train::Classifier,
        &flowers_kit::train::History,
    ),
    rows: &flowers_kit::features::Features,
) {
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-3 * b.abs().max(1e-2);
    for (what, a, b) in [
        ("training", &a_history.train_loss, &b_history.train_loss),
        ("test", &a_history.test_loss, &b_history.test_loss),
    ] {
        assert_eq!(a.len(), b.len(), "{name}: {what} losses recorded");
        assert!(!a.is_empty(), "{name}: no {what} losses recorded");
        assert!(
            a.iter().zip(b).all(|(a, b)| close(*a, *b)),
            "{name}: {what} losses {a:?} against {b:?}"
        );
    }
    let Some(cut) = &rows.cut else {
        return;
    };
    let suffix = |c: &flowers_kit::backend::Cut| -> Vec<f32> {
        c.suffix()
            .iter()
            .flat_map(|s| s.parameters())
            .flatten()
            .copied()
            .collect()
    };
    let trained = |c: &flowers_kit::train::Classifier| {
        suffix(c.fine_tuned().expect("a fine-tuned classifier"))
    };
    let (a, b, before) = (trained(a), trained(b), suffix(cut));
    let diff = |x: &[f32], y: &[f32]| max_mean_abs_diff(x, y).0;
    let moved = diff(&b, &before);
    assert!(moved > 0.0, "{name}: the blocks did not train");
    let worst = diff(&a, &b);
    assert!(
        worst <= 0.05 * moved,
        "{name}: trained weights differ by {worst}, where training moved them by {moved}"
    );
}
