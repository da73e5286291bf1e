//! Property-based fuzzing of every parser of untrusted bytes, on stable Rust, inside
//! `cargo test`: valid seed files with random bytes overwritten, inserted or cut off, plus
//! purely random bytes. Every case must return (`Ok` or `Err`) without a panic, and no
//! single allocation may exceed 1 GiB — this binary's global allocator refuses larger ones
//! and records them, so a parser that trusts a size field fails the test instead of taking
//! the machine's memory.
//!
//! 10,000 cases per parser by default (`FLOWERS_FUZZ_CASES` changes it).

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use flowers_kit::data::archive;
use flowers_kit::data::image::{self, PhotoLimits, Resize};
use flowers_kit::features::cache;
use flowers_kit::models::MobileNetV2;
use flowers_kit::train::{Activation, Classifier, Head};
use flowers_kit::weights::KerasWeights;

/// The largest allocation any parser may make.
const LIMIT: usize = 1 << 30;

/// The system allocator, refusing (and remembering) any allocation over [`LIMIT`], and
/// tracking the largest allocation of each thread.
struct Counting;

static REFUSED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) -> bool {
    if size > LIMIT {
        REFUSED.fetch_max(size, Ordering::Relaxed);
        return false;
    }
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    true
}

// SAFETY: every call is forwarded to the system allocator unchanged, or answered with null
// (an allocation failure, which the caller must handle) without touching memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !note(new_size) {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn cases() -> u32 {
    std::env::var("FLOWERS_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000)
}

/// How one case changes a seed input.
#[derive(Debug, Clone)]
enum Mutation {
    /// Overwrite bytes at these positions.
    Overwrite(Vec<(prop::sample::Index, u8)>),
    /// Insert bytes at a position.
    Insert(prop::sample::Index, Vec<u8>),
    /// Cut the input at a position.
    Truncate(prop::sample::Index),
    /// Replace the whole input by random bytes.
    Random(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
            .prop_map(Mutation::Overwrite),
        2 => (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        1 => prop::collection::vec(any::<u8>(), 0..512).prop_map(Mutation::Random),
    ]
}

fn apply(seed: &[u8], mutation: &Mutation) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    match mutation {
        Mutation::Overwrite(changes) => {
            for (at, value) in changes {
                let i = at.index(bytes.len().max(1));
                if let Some(b) = bytes.get_mut(i) {
                    *b = *value;
                }
            }
        }
        Mutation::Insert(at, extra) => {
            let i = at.index(bytes.len() + 1);
            bytes.splice(i..i, extra.iter().copied());
        }
        Mutation::Truncate(at) => bytes.truncate(at.index(bytes.len() + 1)),
        Mutation::Random(random) => bytes = random.clone(),
    }
    bytes
}

/// Runs `parse` on `cases()` mutations of the seeds; a panic or an oversized allocation
/// fails the test with the input that caused it.
fn fuzz(name: &str, seeds: &[Vec<u8>], parse: impl Fn(&[u8]) -> bool) {
    let (runs, accepted) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (0..seeds.len(), mutation());
    let started = std::time::Instant::now();
    runner
        .run(&strategy, |(seed, mutation)| {
            let input = apply(&seeds[seed], &mutation);
            runs.fetch_add(1, Ordering::Relaxed);
            if parse(&input) {
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            let refused = REFUSED.load(Ordering::Relaxed);
            prop_assert!(refused == 0, "{name}: an allocation of {refused} bytes");
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let runs = runs.into_inner();
    println!(
        "{name}: {runs} cases in {:.2} s, {} parsed",
        started.elapsed().as_secs_f64(),
        accepted.into_inner()
    );
    assert!(runs >= cases() as usize, "{name}: only {runs} cases ran");
}

/// A small Keras-layout weight file: `<layer>/<layer>/<weight>:0` datasets.
fn keras_file() -> Vec<u8> {
    let mut builder = hdf5_pure::FileBuilder::new();
    for (layer, weights) in [
        ("Conv1", vec![("kernel:0", vec![3u64, 3, 3, 4])]),
        (
            "bn_Conv1",
            vec![
                ("gamma:0", vec![4]),
                ("beta:0", vec![4]),
                ("moving_mean:0", vec![4]),
            ],
        ),
    ] {
        let mut outer = builder.create_group(layer);
        let mut inner = outer.create_group(layer);
        for (name, shape) in weights {
            let n: u64 = shape.iter().product();
            let values: Vec<f32> = (0..n).map(|i| i as f32 * 0.25).collect();
            inner
                .create_dataset(name)
                .with_f32_data(&values)
                .with_shape(&shape);
        }
        outer.add_group(inner.finish());
        builder.add_group(outer.finish());
    }
    builder.finish().unwrap()
}

#[test]
fn keras_weight_reader_survives_damaged_files() {
    let seed = keras_file();
    let parsed = KerasWeights::from_bytes(seed.clone(), Path::new("seed.h5")).unwrap();
    assert_eq!(
        parsed
            .get("Conv1", "kernel", &[3, 3, 3, 4])
            .unwrap()
            .values
            .len(),
        108
    );
    fuzz("keras hdf5", &[seed], |bytes| {
        KerasWeights::from_bytes(bytes.to_vec(), Path::new("fuzz.h5"))
            .map(|weights| weights.names().iter().all(|n| n.contains('/')))
            .unwrap_or(false)
    });
}

#[test]
fn classifier_loader_survives_damaged_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut seeds = Vec::new();
    for hidden in [vec![], vec![3]] {
        let head = Head::new(4, &hidden, 2, Activation::Relu, 7).unwrap();
        let network = flowers_kit::backend::Network::random(
            MobileNetV2::parse("mobilenet_v2_0.35_96").unwrap(),
            0,
        )
        .unwrap();
        let source = flowers_kit::features::FeatureExtractor::from_network(network)
            .unwrap()
            .source();
        let classifier =
            Classifier::from_parts(head, vec!["daisy".into(), "roses".into()], source).unwrap();
        let path = dir.path().join("c.safetensors");
        classifier.save(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            Classifier::from_bytes(&bytes, &path).unwrap(),
            classifier,
            "the seed must round-trip"
        );
        seeds.push(bytes);
    }
    fuzz("classifier", &seeds, |bytes| {
        match Classifier::from_bytes(bytes, Path::new("fuzz.safetensors")) {
            // A loaded classifier must be usable without panicking.
            Ok(classifier) => {
                let inputs = classifier.head().inputs();
                classifier.top_k(&vec![0.5; inputs], 3).is_ok()
            }
            Err(_) => false,
        }
    });
}

#[test]
fn feature_cache_parser_survives_damaged_files() {
    let key = |i: u8| format!("{i:02x}").repeat(32);
    let seeds = vec![
        cache::encode_pack(4, &[(key(1), vec![1.0, -2.5, 3.25, 0.0])]).unwrap(),
        cache::encode_pack(
            1280,
            &[
                (key(2), (0..1280).map(|i| i as f32).collect()),
                (key(3), vec![0.5; 1280]),
            ],
        )
        .unwrap(),
    ];
    let keys = cache::parse_keys(&seeds[0], 4, seeds[0].len() as u64).unwrap();
    assert_eq!(
        cache::parse_row(&seeds[0], 0, &keys[0], 4),
        Some(vec![1.0, -2.5, 3.25, 0.0])
    );
    fuzz("feature cache", &seeds, |bytes| {
        let mut parsed = false;
        for dim in [0, 4, 1280, usize::MAX / 2] {
            let Some(keys) = cache::parse_keys(bytes, dim, bytes.len() as u64) else {
                continue;
            };
            for (i, key) in keys.iter().enumerate() {
                if let Some(row) = cache::parse_row(bytes, i, key, dim) {
                    assert_eq!(row.len(), dim);
                    parsed = true;
                }
            }
            assert_eq!(cache::parse_row(bytes, keys.len(), &[0; 32], dim), None);
        }
        parsed
    });
}

#[test]
fn archive_extraction_survives_damaged_archives() {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, data) in [
        ("flower_photos/roses/a.jpg", &b"pretend photo"[..]),
        ("flower_photos/tulips/b.jpg", &b"another"[..]),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, data).unwrap();
    }
    let seed = tar.into_inner().unwrap().finish().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let archive_path = dir.path().join("in.tgz");
    std::fs::write(&archive_path, &seed).unwrap();
    archive::extract_tgz(&archive_path, &dir.path().join("seed")).unwrap();
    let counter = AtomicUsize::new(0);
    fuzz("archive", &[seed], |bytes| {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        std::fs::write(&archive_path, bytes).unwrap();
        let dest = dir.path().join(format!("out{n}"));
        let ok = archive::extract_tgz(&archive_path, &dest).is_ok();
        if ok {
            // Whatever was extracted stays inside the destination.
            assert!(dest.exists());
            std::fs::remove_dir_all(&dest).unwrap();
        }
        ok
    });
    // Nothing was ever written beside the destinations but the archive itself.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "in.tgz" && n != "seed")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn model_names_and_handles_never_panic() {
    let tokens = prop::collection::vec(
        prop::sample::select(vec![
            "mobilenet_v2_",
            "0.35",
            "035",
            "1.4",
            "_",
            "128",
            "224",
            "/",
            "..",
            "https://",
            "tfhub.dev/google/imagenet/",
            "feature_vector",
            "classification",
            "4",
            "\u{0}",
            "é",
            "99999999999999999999999",
        ]),
        0..8,
    );
    let strategy = prop_oneof![tokens.prop_map(|t| t.concat()), any::<String>(),];
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&strategy, |text| {
            if let Ok(model) = MobileNetV2::parse(&text) {
                // Whatever parses names a published variant, and round-trips.
                prop_assert!(MobileNetV2::published().contains(&model));
                prop_assert_eq!(MobileNetV2::parse(&model.name()).ok(), Some(model));
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_large_photo_is_resized_without_a_full_size_f32_copy() {
    // 7000 × 7000 (49 megapixels, just under the default cap): 147 MB as 8-bit RGB, 588 MB
    // as an f32 image. Resizing must stay near the former.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("large.png");
    let side = 7000u32;
    let png = {
        let rgb = ::image::RgbImage::from_fn(side, side, |x, y| {
            ::image::Rgb([(x % 251) as u8, (y % 241) as u8, 77])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        rgb.write_to(&mut out, ::image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    std::fs::write(&path, &png).unwrap();
    drop(png);
    LARGEST.with(|l| l.set(0));
    let image = image::load_resized(&path, 224, Resize::TfV1Bilinear).unwrap();
    let largest = LARGEST.with(Cell::get);
    assert_eq!(image.data.len(), 224 * 224 * 3);
    let rgb_bytes = (side as usize).pow(2) * 3;
    assert!(
        largest <= rgb_bytes + (16 << 20),
        "largest allocation {largest} bytes for a {rgb_bytes}-byte photo"
    );
    // Over the cap, the same photo is refused from its header alone.
    let strict = PhotoLimits {
        max_pixels: 40_000_000,
        ..PhotoLimits::default()
    };
    let bytes = image::read_photo(&path, &strict).unwrap();
    LARGEST.with(|l| l.set(0));
    let err =
        image::load_resized_bytes(&bytes, &path, 224, Resize::TfV1Bilinear, &strict).unwrap_err();
    assert!(err.to_string().contains("megapixel limit"), "{err}");
    assert!(LARGEST.with(Cell::get) < 1 << 20);
}
