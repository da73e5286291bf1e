//! Downloads from servers that misbehave, and from several processes at once (issue 21,
//! cases 5–8): every transfer is bounded in time and size, nothing enters the cache
//! unverified, cache entries are keyed by where they came from, and concurrent runs share a
//! cold cache without corrupting it.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flowers_kit::backend::Network;
use flowers_kit::data::{fetch, Dataset, FetchOptions};
use flowers_kit::digest::md5_hex;
use flowers_kit::models::Model;
use flowers_kit::weights::{fetch_weights_into, KerasWeights, WeightsRequest};
use support::http::{Behaviour, Server};

const FILE: &str = "mobilenet_v2/weights.h5";

fn tutorial_model() -> Model {
    Model::parse("mobilenet_v2_0.35_128").unwrap()
}

/// The real Keras-layout file of the tutorial's model (0.35/128).
fn good_h5() -> Vec<u8> {
    fs::read(support::golden().join("mobilenet_v2_0.35_128_no_top.h5")).unwrap()
}

/// A valid weight file of another model (0.5/160).
fn other_h5() -> Vec<u8> {
    fs::read(support::golden().join("mobilenet_v2_0.5_160_no_top.h5")).unwrap()
}

const ERROR_PAGE: &[u8] = b"<!DOCTYPE html><html><body>Quota exceeded</body></html>";

/// Quick retries, so tests of failures finish fast.
fn options(attempts: u32) -> FetchOptions {
    FetchOptions {
        attempts,
        backoff: Duration::from_millis(10),
        timeout: Duration::from_secs(10),
        ..FetchOptions::default()
    }
}

/// Every file under `dir` (recursively), without the lock files cache entries keep.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else if !path.to_string_lossy().ends_with(".lock") {
            found.push(path);
        }
    }
    found
}

/// The check `FeatureExtractor` gives unpinned weights: they must load as the model.
fn loads_as_tutorial_model(path: &Path) -> flowers_kit::Result<()> {
    Network::from_keras(tutorial_model(), &KerasWeights::open(path)?).map(|_| ())
}

/// Fetches weights published at `url` (pinned to `pin`, if any) into `home`.
fn fetch_published(
    home: &Path,
    url: &str,
    pin: Option<&str>,
    options: &FetchOptions,
) -> flowers_kit::Result<PathBuf> {
    let request = WeightsRequest {
        relative: FILE,
        published_url: url,
        pinned_md5: pin,
        source: Some(url),
    };
    fetch_weights_into(home, request, options, &loads_as_tutorial_model)
}

#[test]
fn a_trickling_server_is_cut_off_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::one(
        "slow.bin",
        vec![7; 10_000],
        Behaviour::Trickle {
            bytes: 1,
            every: Duration::from_millis(100),
        },
    );
    let options = FetchOptions {
        min_rate: 100,
        slow_window: Duration::from_millis(500),
        ..options(1)
    };
    let start = Instant::now();
    let err = fetch::fetch(
        &server.url("slow.bin"),
        &dir.path().join("slow.bin"),
        &options,
    )
    .unwrap_err()
    .to_string();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(
        err.contains("slow.bin") && err.contains("slower than"),
        "{err}"
    );
}

#[test]
fn a_download_past_its_deadline_stops_and_keeps_what_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::one(
        "long.bin",
        vec![7; 200_000],
        Behaviour::Trickle {
            bytes: 1000,
            every: Duration::from_millis(50),
        },
    );
    let options = FetchOptions {
        deadline: Duration::from_secs(1),
        min_rate: 0,
        ..options(3)
    };
    let dest = dir.path().join("long.bin");
    let start = Instant::now();
    let err = fetch::fetch(&server.url("long.bin"), &dest, &options)
        .unwrap_err()
        .to_string();
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert!(
        err.contains("deadline") && err.contains("resumed next time"),
        "{err}"
    );
    assert!(!dest.exists());
    assert!(fetch::partial_path(&dest).is_file());
    // The deadline ends the fetch: no retry.
    assert_eq!(server.seen().len(), 1);
}

#[test]
fn an_endless_body_is_cut_at_the_size_cap_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::one("endless.h5", vec![0x42; 64 * 1024], Behaviour::Endless);
    let options = FetchOptions {
        max_bytes: 1 << 20,
        ..options(3)
    };
    let dest = dir.path().join("endless.h5");
    let err = fetch::fetch(&server.url("endless.h5"), &dest, &options)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("more than the 1048576 bytes accepted"),
        "{err}"
    );
    assert!(
        files_under(dir.path()).is_empty(),
        "{:?}",
        files_under(dir.path())
    );
    // Not worth retrying.
    assert_eq!(server.seen().len(), 1);
}

#[test]
fn a_length_over_the_cap_is_refused_before_the_body_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::one("big.h5", vec![0; 2 << 20], Behaviour::Normal);
    let options = FetchOptions {
        max_bytes: 1 << 20,
        ..options(3)
    };
    let err = fetch::fetch(&server.url("big.h5"), &dir.path().join("big.h5"), &options)
        .unwrap_err()
        .to_string();
    assert!(err.contains("announces 2097152 bytes"), "{err}");
    assert!(files_under(dir.path()).is_empty());
}

#[test]
fn an_error_page_never_enters_the_cache_and_a_fixed_server_is_fetched_afresh() {
    let home = tempfile::tempdir().unwrap();
    let good = good_h5();
    let pin = md5_hex(&good);
    let server = Server::one(FILE, ERROR_PAGE.to_vec(), Behaviour::Normal);
    let url = server.url(FILE);
    let err = fetch_published(home.path(), &url, Some(&pin), &options(3))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&url) && err.contains("MD5") && err.contains(&pin),
        "{err}"
    );
    assert!(
        files_under(home.path()).is_empty(),
        "{:?}",
        files_under(home.path())
    );

    server.set_file(FILE, good.clone());
    let path = fetch_published(home.path(), &url, Some(&pin), &options(3)).unwrap();
    assert_eq!(fs::read(&path).unwrap(), good);
    assert_eq!(files_under(home.path()), [path]);
}

#[test]
fn unpinned_weights_must_load_as_the_model_before_they_are_cached() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::one(FILE, ERROR_PAGE.to_vec(), Behaviour::Normal);
    let url = server.url(FILE);
    let err = fetch_published(home.path(), &url, None, &options(1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not an HDF5 file"), "{err}");
    assert!(files_under(home.path()).is_empty());

    // A real Keras file, of another width: refused by its shapes.
    server.set_file(FILE, other_h5());
    let err = fetch_published(home.path(), &url, None, &options(1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("has shape"), "{err}");
    assert!(files_under(home.path()).is_empty());
}

#[test]
fn a_short_body_is_resumed_later_and_verified() {
    let home = tempfile::tempdir().unwrap();
    let good = good_h5();
    let pin = md5_hex(&good);
    let server = Server::one(FILE, good.clone(), Behaviour::AlwaysCutAfter(300_000));
    let url = server.url(FILE);
    let err = fetch_published(home.path(), &url, Some(&pin), &options(2))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("after 600000 bytes") && err.contains("resumed next time"),
        "{err}"
    );
    let parts: Vec<PathBuf> = files_under(home.path());
    assert!(
        parts.len() == 1 && parts[0].to_string_lossy().ends_with(".part"),
        "{parts:?}"
    );

    server.set_behaviour(Behaviour::Normal);
    let path = fetch_published(home.path(), &url, Some(&pin), &options(2)).unwrap();
    assert_eq!(fs::read(&path).unwrap(), good);
    let last = server.seen().last().unwrap().clone();
    assert!(
        last.range.is_some(),
        "the fixed server is asked for the rest only"
    );
    assert_eq!(files_under(home.path()), [path]);
}

#[test]
fn a_resumed_file_that_fails_its_check_is_downloaded_afresh() {
    let home = tempfile::tempdir().unwrap();
    let new = good_h5();
    let pin = md5_hex(&new);
    // Half of an older file of the same name is on disk…
    let server = Server::one(FILE, other_h5(), Behaviour::AlwaysCutAfter(500_000));
    let url = server.url(FILE);
    fetch_published(home.path(), &url, Some(&pin), &options(1)).unwrap_err();
    // …and the server now has the new one: the resumed file fails, a fresh one passes.
    server.set_file(FILE, new.clone());
    server.set_behaviour(Behaviour::Normal);
    let path = fetch_published(home.path(), &url, Some(&pin), &options(1)).unwrap();
    assert_eq!(fs::read(&path).unwrap(), new);
    let seen = server.seen();
    assert!(seen[seen.len() - 2].range.is_some(), "{seen:?}");
    assert!(seen[seen.len() - 1].range.is_none(), "{seen:?}");
}

#[test]
fn two_sources_with_one_file_name_are_two_cache_entries() {
    let home = tempfile::tempdir().unwrap();
    let a = Server::one(FILE, good_h5(), Behaviour::Normal);
    let b = Server::one(FILE, other_h5(), Behaviour::Normal);
    let accept = |_: &Path| Ok(());
    let fetch_from = |server: &Server| {
        let url = server.url(FILE);
        let request = WeightsRequest {
            relative: FILE,
            published_url: "https://example.invalid/w.h5",
            pinned_md5: None,
            source: Some(&url),
        };
        fetch_weights_into(home.path(), request, &options(1), &accept).unwrap()
    };
    let from_a = fetch_from(&a);
    let from_b = fetch_from(&b);
    assert_ne!(from_a, from_b);
    assert_eq!(fs::read(&from_a).unwrap(), good_h5());
    assert_eq!(fs::read(&from_b).unwrap(), other_h5());
    // Each came once; a second call is served from the cache.
    assert_eq!(fetch_from(&a), from_a);
    assert_eq!(a.seen().len(), 1);
}

/// Several `flowers` processes at once (the command line, so not in a build without it).
#[cfg(feature = "cli")]
mod processes {
    use super::*;
    use std::process::{Command, Stdio};

    /// `flowers download` into `home` from `url`, started now.
    fn download_process(home: &Path, url: &str) -> std::process::Child {
        Command::new(support::flowers_bin())
            .args(["download", "--dir"])
            .arg(home)
            .env("FLOWERS_DATA_URL", url)
            .env("FLOWERS_KIT_QUIET", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn assert_succeeded(child: std::process::Child) {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("750 photos in 5 classes"));
    }

    /// The extracted sample is complete and byte-identical.
    fn assert_intact(home: &Path, url: &str) {
        let folder = home
            .join("datasets")
            .join(format!("flower_photos-{}", fetch::source_key(url)));
        let photos = Dataset::open(&folder).unwrap();
        assert_eq!(photos.class_counts(), vec![150; 5]);
        for example in photos.examples() {
            let relative = example.path.strip_prefix(&folder).unwrap();
            assert_eq!(
                fs::read(&example.path).unwrap(),
                fs::read(support::sample_dir().join(relative)).unwrap(),
                "{}",
                relative.display()
            );
        }
        // Nothing half-done is left beside it.
        let datasets: Vec<String> = fs::read_dir(home.join("datasets"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(datasets.len(), 1, "{datasets:?}");
        assert!(files_under(&home.join("downloads")).is_empty());
    }

    /// The sample archive, served slowly enough (about 2 s) for runs to overlap.
    fn slow_archive_server() -> Server {
        Server::one(
            "flower_photos.tgz",
            support::sample_tgz().to_vec(),
            Behaviour::Trickle {
                bytes: 1 << 20,
                every: Duration::from_millis(40),
            },
        )
    }

    #[test]
    fn two_processes_share_a_cold_cache_and_a_third_finds_it_intact() {
        let home = tempfile::tempdir().unwrap();
        let server = slow_archive_server();
        let url = server.url("flower_photos.tgz");
        let first = download_process(home.path(), &url);
        let second = download_process(home.path(), &url);
        assert_succeeded(first);
        assert_succeeded(second);
        assert_intact(home.path(), &url);
        // One of them downloaded; the other waited and found the folder.
        assert_eq!(server.seen().len(), 1, "{:?}", server.seen());
        assert_succeeded(download_process(home.path(), &url));
        assert_eq!(server.seen().len(), 1);
    }

    #[test]
    fn a_run_killed_half_way_leaves_nothing_that_breaks_the_next_ones() {
        let home = tempfile::tempdir().unwrap();
        let server = slow_archive_server();
        let url = server.url("flower_photos.tgz");
        let mut victim = download_process(home.path(), &url);
        std::thread::sleep(Duration::from_millis(800));
        victim.kill().unwrap();
        victim.wait().unwrap();
        assert!(
            files_under(&home.path().join("downloads"))
                .iter()
                .any(|p| p.to_string_lossy().ends_with(".part")),
            "the killed run was mid-download"
        );
        let first = download_process(home.path(), &url);
        let second = download_process(home.path(), &url);
        assert_succeeded(first);
        assert_succeeded(second);
        assert_intact(home.path(), &url);
        // The survivor resumed what the killed run had.
        assert!(
            server.seen().iter().any(|s| s.range.is_some()),
            "{:?}",
            server.seen()
        );
    }

    #[test]
    fn two_feature_runs_fetch_one_weight_file_into_a_cold_cache() {
        let home = tempfile::tempdir().unwrap();
        let weights = good_h5();
        let server = Server::one(
            "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_128_no_top.h5",
            weights.clone(),
            Behaviour::Trickle {
                bytes: 128 << 10,
                every: Duration::from_millis(50),
            },
        );
        let photo = support::golden().join("images/00_daisy.png");
        let run = |out: &str| {
            Command::new(support::flowers_bin())
                .args(["features", "--model", "mobilenet_v2_0.35_128", "--out"])
                .arg(home.path().join(out))
                .arg(&photo)
                .env("FLOWERS_KIT_HOME", home.path())
                .env("FLOWERS_WEIGHTS_URL", &server.base)
                .env("FLOWERS_KIT_QUIET", "1")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (run("a.safetensors"), run("b.safetensors"));
        for child in [a, b] {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let (_, fa) = support::tensor_f32(&home.path().join("a.safetensors"), "features");
        let (_, fb) = support::tensor_f32(&home.path().join("b.safetensors"), "features");
        assert_eq!(fa, fb);
        let cached = files_under(&home.path().join("weights"));
        assert_eq!(cached.len(), 1, "{cached:?}");
        assert_eq!(fs::read(&cached[0]).unwrap(), weights);
        assert_eq!(server.seen().len(), 1);
    }
}
