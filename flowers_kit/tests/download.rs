//! The real download code against a local server serving the real sample photos.

mod support;

use std::fs;
use std::path::Path;

use flowers_kit::data::{self, fetch, Dataset};
use flowers_kit::Error;
use support::http::{Behaviour, Server};

use support::quick_fetch as quick;

/// The names in `dir`, sorted, without the (empty) lock files cache entries keep.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| !name.ends_with(".lock"))
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

fn assert_complete_sample(dir: &Path) {
    let photos = Dataset::open(dir).unwrap();
    assert_eq!(
        photos.classes(),
        ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    );
    assert_eq!(photos.class_counts(), vec![150; 5]);
    // LICENSE.txt came along and was skipped, not counted.
    assert!(photos.skipped().iter().any(|p| p.ends_with("LICENSE.txt")));
    // Byte-identical photos.
    let name = "daisy/10140303196_b88d3d6cec.jpg";
    assert_eq!(
        fs::read(dir.join(name)).unwrap(),
        fs::read(support::sample_dir().join(name)).unwrap()
    );
}

#[test]
fn downloads_extracts_and_then_stays_offline() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::one(
        "flower_photos.tgz",
        support::sample_tgz().to_vec(),
        Behaviour::Normal,
    );
    let url = server.url("flower_photos.tgz");
    let dir = data::download_dataset(&url, home.path(), &quick(3)).unwrap();
    // Keyed by the URL it came from.
    let folder = format!("flower_photos-{}", fetch::source_key(&url));
    assert_eq!(dir, home.path().join("datasets").join(&folder));
    assert_complete_sample(&dir);
    // The archive is removed after extraction and no staging folder is left over.
    assert!(listing(&home.path().join("downloads")).is_empty());
    assert_eq!(listing(&home.path().join("datasets")), [folder]);
    assert_eq!(server.seen().len(), 1);

    // Second call: served from the cache, no request at all.
    let again = data::download_dataset(&url, home.path(), &quick(3)).unwrap();
    assert_eq!(again, dir);
    assert_eq!(server.seen().len(), 1);
}

#[test]
fn cut_connection_is_resumed_with_a_range_request_within_one_call() {
    let home = tempfile::tempdir().unwrap();
    let tgz = support::sample_tgz();
    let half = tgz.len() / 2;
    let server = Server::one(
        "flower_photos.tgz",
        tgz.to_vec(),
        Behaviour::CutFirstAfter(half),
    );
    let dir =
        data::download_dataset(&server.url("flower_photos.tgz"), home.path(), &quick(3)).unwrap();
    assert_complete_sample(&dir);
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].range, None);
    let resumed_from: usize = seen[1]
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse().ok())
        .expect("second request must carry a Range header");
    assert!(
        resumed_from > 0 && resumed_from <= half,
        "{resumed_from} vs {half}"
    );
}

#[test]
fn interrupted_download_is_resumed_by_the_next_call() {
    let home = tempfile::tempdir().unwrap();
    let tgz = support::sample_tgz();
    let half = tgz.len() / 2;
    let server = Server::one(
        "flower_photos.tgz",
        tgz.to_vec(),
        Behaviour::CutFirstAfter(half),
    );
    let url = server.url("flower_photos.tgz");
    // One attempt only: the call fails and leaves the partial file behind.
    let err = data::download_dataset(&url, home.path(), &quick(1)).unwrap_err();
    assert!(matches!(err, Error::Download { .. }), "{err}");
    assert!(err.to_string().contains("flower_photos.tgz"), "{err}");
    let key = fetch::source_key(&url);
    let part = fetch::partial_path(
        &home
            .path()
            .join("downloads")
            .join(format!("{key}-flower_photos.tgz")),
    );
    let kept = fs::metadata(&part).unwrap().len() as usize;
    assert!(kept > 0 && kept <= half);
    assert!(listing(&home.path().join("datasets")).is_empty());

    let dir = data::download_dataset(&url, home.path(), &quick(1)).unwrap();
    assert_complete_sample(&dir);
    let seen = server.seen();
    assert_eq!(seen.last().unwrap().range, Some(format!("bytes={kept}-")));
    assert!(!part.exists());
}

#[test]
fn server_without_range_support_restarts_cleanly() {
    let home = tempfile::tempdir().unwrap();
    let tgz = support::sample_tgz();
    // A stale partial file of garbage must not end up in the result.
    let server = Server::one("flower_photos.tgz", tgz.to_vec(), Behaviour::NoRange);
    let url = server.url("flower_photos.tgz");
    let downloads = home.path().join("downloads");
    fs::create_dir_all(&downloads).unwrap();
    let archive = format!("{}-flower_photos.tgz", fetch::source_key(&url));
    fs::write(
        fetch::partial_path(&downloads.join(archive)),
        vec![0xAB; 1000],
    )
    .unwrap();
    let dir = data::download_dataset(&url, home.path(), &quick(2)).unwrap();
    assert_complete_sample(&dir);
    assert_eq!(server.seen()[0].range.as_deref(), Some("bytes=1000-"));
}

#[test]
fn truncated_archive_is_an_error_and_leaves_nothing() {
    let home = tempfile::tempdir().unwrap();
    let tgz = support::sample_tgz();
    let truncated = tgz[..tgz.len() * 2 / 3].to_vec();
    let server = Server::one("flower_photos.tgz", truncated, Behaviour::Normal);
    let err = data::download_dataset(&server.url("flower_photos.tgz"), home.path(), &quick(2))
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::Archive { .. }), "{message}");
    assert!(message.contains("flower_photos.tgz"), "{message}");
    assert!(message.contains("truncated"), "{message}");
    assert!(listing(&home.path().join("datasets")).is_empty());
    // The bad archive is gone, so the next call downloads afresh.
    assert!(listing(&home.path().join("downloads")).is_empty());
}

#[test]
fn corrupt_gzip_is_an_error_and_leaves_nothing() {
    let home = tempfile::tempdir().unwrap();
    let mut corrupt = support::sample_tgz().to_vec();
    // Flip bytes in the middle of the deflate stream.
    let middle = corrupt.len() / 2;
    for b in &mut corrupt[middle..middle + 64] {
        *b ^= 0x5A;
    }
    let server = Server::one("flower_photos.tgz", corrupt, Behaviour::Normal);
    let err = data::download_dataset(&server.url("flower_photos.tgz"), home.path(), &quick(2))
        .unwrap_err();
    assert!(matches!(err, Error::Archive { .. }), "{err}");
    assert!(listing(&home.path().join("datasets")).is_empty());
}

#[test]
fn not_a_gzip_at_all_is_an_error() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::one(
        "flower_photos.tgz",
        b"<html>nope</html>".to_vec(),
        Behaviour::Normal,
    );
    let err = data::download_dataset(&server.url("flower_photos.tgz"), home.path(), &quick(1))
        .unwrap_err();
    assert!(matches!(err, Error::Archive { .. }), "{err}");
    assert!(listing(&home.path().join("datasets")).is_empty());
}

#[test]
fn http_errors_are_reported_with_the_url() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::one("other.tgz", vec![1, 2, 3], Behaviour::Normal);
    let url = server.url("flower_photos.tgz");
    let err = data::download_dataset(&url, home.path(), &quick(3)).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&url) && message.contains("404"),
        "{message}"
    );
    // 404 is permanent: one request, no retries.
    assert_eq!(server.seen().len(), 1);

    let flaky = Server::one("x.tgz", vec![], Behaviour::Status(503));
    let err = data::download_dataset(&flaky.url("x.tgz"), home.path(), &quick(3)).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("503") && message.contains("3 attempts"),
        "{message}"
    );
    assert_eq!(flaky.seen().len(), 3);
}

#[test]
fn unreachable_server_fails_after_retries() {
    let home = tempfile::tempdir().unwrap();
    // Bind and drop to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/flower_photos.tgz");
    let err = data::download_dataset(&url, home.path(), &quick(2)).unwrap_err();
    assert!(matches!(err, Error::Download { .. }), "{err}");
    assert!(err.to_string().contains("2 attempts"), "{err}");
    // Nothing arrived, so there is nothing to resume: the message must not promise it.
    assert!(!err.to_string().contains("resumed"), "{err}");
}

#[test]
fn local_files_are_fetched_by_path_and_file_url() {
    let home = tempfile::tempdir().unwrap();
    let source = home.path().join("mirror.tgz");
    fs::write(&source, support::sample_tgz()).unwrap();
    let dest = home.path().join("copy.tgz");
    fetch::fetch(source.to_str().unwrap(), &dest, &quick(1)).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), support::sample_tgz());

    let dir = data::download_dataset(
        &format!("file://{}", source.display()),
        &home.path().join("cache"),
        &quick(1),
    )
    .unwrap();
    assert_complete_sample(&dir);
    // A local source is copied, never consumed.
    assert!(source.exists());

    let missing = home.path().join("missing.tgz");
    let err =
        fetch::fetch(missing.to_str().unwrap(), &home.path().join("m"), &quick(1)).unwrap_err();
    assert!(err.to_string().contains("missing.tgz"), "{err}");
}

#[test]
#[cfg(feature = "cli")]
fn cli_download_uses_the_environment_url() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::one(
        "flower_photos.tgz",
        support::sample_tgz().to_vec(),
        Behaviour::Normal,
    );
    let url = server.url("flower_photos.tgz");
    let out = std::process::Command::new(support::flowers_bin())
        .args(["download", "--dir"])
        .arg(home.path())
        .env("FLOWERS_DATA_URL", &url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("750 photos in 5 classes"), "{stdout}");
    // Notebook/pipe progress: a quick download prints one closing line on stdout, no more.
    let progress: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("Download"))
        .collect();
    assert_eq!(progress.len(), 1, "{stdout}");
    assert!(
        progress[0].starts_with("Downloaded flower_photos.tgz: "),
        "{stdout}"
    );
    let folder = format!("flower_photos-{}", fetch::source_key(&url));
    assert_complete_sample(&home.path().join("datasets").join(folder));
}
