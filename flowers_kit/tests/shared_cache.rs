//! A class's shared, read-only cache (`FLOWERS_KIT_SHARED_CACHE`, issue 24): a teacher fills
//! it by running the kit with it as the cache home; learners read from it and write only to
//! their own cache; anything damaged or foreign in it is ignored and recomputed, never trusted.

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use flowers_kit::backend::Network;
use flowers_kit::data::{self, FetchOptions};
use flowers_kit::digest::md5_hex;
use flowers_kit::features::FeatureExtractor;
use flowers_kit::models::{MobileNetV2, Model};
use flowers_kit::weights::{fetch_weights_into, shared_weights, KerasWeights, WeightsRequest};
use support::http::{Behaviour, Server};

const FILE: &str = "mobilenet_v2/weights.h5";

fn tutorial_model() -> Model {
    Model::parse("mobilenet_v2_0.35_128").unwrap()
}

fn good_h5() -> Vec<u8> {
    fs::read(support::golden().join("mobilenet_v2_0.35_128_no_top.h5")).unwrap()
}

fn loads_as_tutorial_model(path: &Path) -> flowers_kit::Result<()> {
    Network::from_keras(tutorial_model(), &KerasWeights::open(path)?).map(|_| ())
}

/// Every file under `dir`, without the lock files cache entries keep.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if !path.to_string_lossy().ends_with(".lock") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn shared_weights_are_used_in_place_when_they_pass_the_download_checks() {
    let (teacher, learner) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let good = good_h5();
    let pin = md5_hex(&good);
    let server = Server::one(FILE, good.clone(), Behaviour::Normal);
    let url = server.url(FILE);
    for pinned in [Some(pin.as_str()), None] {
        let request = WeightsRequest {
            relative: FILE,
            published_url: &url,
            pinned_md5: pinned,
            source: None,
        };
        // The teacher fills the shared cache as any cache is filled.
        let filled = fetch_weights_into(
            teacher.path(),
            request,
            &FetchOptions::default(),
            &loads_as_tutorial_model,
        )
        .unwrap();
        let requests = server.seen().len();
        let found = shared_weights(teacher.path(), request, &loads_as_tutorial_model);
        assert_eq!(found.as_deref(), Some(filled.as_path()));
        assert_eq!(server.seen().len(), requests, "nothing is downloaded");

        // Damaged in the shared cache: ignored, left as it is, and the learner downloads.
        fs::write(&filled, b"<html>oops</html>").unwrap();
        assert_eq!(
            shared_weights(teacher.path(), request, &loads_as_tutorial_model),
            None
        );
        let own = fetch_weights_into(
            learner.path(),
            request,
            &FetchOptions::default(),
            &loads_as_tutorial_model,
        )
        .unwrap();
        assert!(own.starts_with(learner.path()));
        assert_eq!(fs::read(&own).unwrap(), good);
        assert_eq!(fs::read(&filled).unwrap(), b"<html>oops</html>");
        fs::remove_file(&filled).unwrap();
        fs::remove_file(&own).unwrap();
    }
    // Not there at all: nothing found, no warning needed.
    let request = WeightsRequest {
        relative: "other/file.h5",
        published_url: &url,
        pinned_md5: None,
        source: None,
    };
    assert_eq!(
        shared_weights(teacher.path(), request, &loads_as_tutorial_model),
        None
    );
}

#[test]
fn a_shared_dataset_is_used_only_if_it_opens_as_one() {
    let teacher = tempfile::tempdir().unwrap();
    let server = Server::one(
        "flower_photos.tgz",
        support::sample_tgz().to_vec(),
        Behaviour::Normal,
    );
    let url = server.url("flower_photos.tgz");
    assert!(data::shared_dataset(teacher.path(), &url).is_none());
    let folder = data::download_dataset(&url, teacher.path(), &support::quick_fetch(1)).unwrap();
    let requests = server.seen().len();
    let photos = data::shared_dataset(teacher.path(), &url).unwrap();
    assert_eq!(photos.len(), 750);
    assert_eq!(server.seen().len(), requests);

    // Another URL is another entry; a folder of the right name that is no dataset is ignored.
    let other = server.url("other.tgz");
    assert!(data::shared_dataset(teacher.path(), &other).is_none());
    for entry in fs::read_dir(&folder).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            fs::remove_dir_all(path).unwrap();
        }
    }
    assert!(data::shared_dataset(teacher.path(), &url).is_none());
}

#[test]
fn shared_features_are_read_and_a_damaged_one_is_recomputed_into_the_own_cache() {
    let (teacher, learner, photos) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let paths: Vec<PathBuf> = support::GOLDEN_IMAGES
        .iter()
        .take(4)
        .map(|stem| {
            let dest = photos.path().join(format!("{stem}.png"));
            fs::copy(
                support::golden().join("images").join(format!("{stem}.png")),
                &dest,
            )
            .unwrap();
            dest
        })
        .collect();
    let weights = support::golden().join("mobilenet_v2_0.35_128_no_top.h5");
    let extractor = |cache: &Path| {
        FeatureExtractor::with_weights(
            MobileNetV2::parse("mobilenet_v2_0.35_128").unwrap(),
            Some(weights.to_str().unwrap()),
        )
        .unwrap()
        .cache_dir(cache)
    };
    let filled = extractor(teacher.path()).extract_paths(&paths).unwrap();
    assert_eq!(filled.cache_hits, 0);
    // The four rows are one pack.
    let shared_files = files_under(teacher.path());
    assert_eq!(shared_files.len(), 1);

    let learners = extractor(learner.path()).shared_cache_dir(teacher.path());
    let read = learners.extract_paths(&paths).unwrap();
    assert_eq!((read.cache_hits, &read.values), (4, &filled.values));
    assert!(files_under(learner.path()).is_empty(), "nothing is written");

    // One shared row damaged (rows start after the header, 4 keys and the header's check:
    // 12 + 4 × 32 + 8 bytes): that row is recomputed, into the learner's cache only.
    let mut bytes = fs::read(&shared_files[0]).unwrap();
    bytes[148 + 20] ^= 0xFF;
    fs::write(&shared_files[0], &bytes).unwrap();
    let again = learners.extract_paths(&paths).unwrap();
    assert_eq!((again.cache_hits, &again.values), (3, &filled.values));
    assert_eq!(files_under(learner.path()).len(), 1);
    assert_eq!(fs::read(&shared_files[0]).unwrap(), bytes);

    // Without a cache, the shared one is not read either.
    let uncached = extractor(learner.path())
        .shared_cache_dir(teacher.path())
        .without_cache();
    assert_eq!(uncached.extract_paths(&paths).unwrap().cache_hits, 0);
}
