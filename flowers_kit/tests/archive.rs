//! Safe extraction: crafted archives that try to escape extract nothing.

mod support;

use std::fs;
use std::io::Write;
use std::path::Path;

use flowers_kit::data::archive::extract_tgz;
use flowers_kit::Error;

/// One tar entry with raw, unchecked name and link fields.
struct Raw<'a> {
    name: &'a str,
    kind: tar::EntryType,
    link: &'a str,
    data: &'a [u8],
}

fn file<'a>(name: &'a str, data: &'a [u8]) -> Raw<'a> {
    Raw {
        name,
        kind: tar::EntryType::Regular,
        link: "",
        data,
    }
}

fn link<'a>(name: &'a str, kind: tar::EntryType, target: &'a str) -> Raw<'a> {
    Raw {
        name,
        kind,
        link: target,
        data: b"",
    }
}

/// Writes a .tgz whose headers are filled byte by byte, bypassing the tar crate's checks.
fn craft(path: &Path, entries: &[Raw]) {
    let mut tar = Vec::new();
    for e in entries {
        let mut header = tar::Header::new_ustar();
        {
            let old = header.as_old_mut();
            old.name[..e.name.len()].copy_from_slice(e.name.as_bytes());
            old.linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
        }
        header.set_entry_type(e.kind);
        header.set_size(e.data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.extend_from_slice(header.as_bytes());
        tar.extend_from_slice(e.data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }
    tar.extend_from_slice(&[0u8; 1024]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    fs::write(path, gz.finish().unwrap()).unwrap();
}

/// Extracts `entries` and expects a refusal that names the entry and leaves nothing behind.
fn assert_refused(entries: &[Raw], culprit: &str) {
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("evil.tgz");
    craft(&archive, entries);
    let out = work.path().join("out");
    let dest = out.join("data");
    let err = extract_tgz(&archive, &dest).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::Archive { .. }), "{message}");
    assert!(message.contains(culprit), "{message} should name {culprit}");
    assert!(message.contains("evil.tgz"), "{message}");
    // Nothing extracted: not the destination, no staging folder, nothing outside.
    assert!(!dest.exists());
    assert_eq!(
        fs::read_dir(&out).unwrap().count(),
        0,
        "staging left behind"
    );
    assert!(!work.path().join("escaped.txt").exists());
    assert!(!Path::new("/tmp/flowers_kit_escaped.txt").exists());
}

#[test]
fn parent_dir_entries_are_refused() {
    assert_refused(
        &[
            file("flower_photos/daisy/ok.jpg", b"fine"),
            file("../../escaped.txt", b"gotcha"),
        ],
        "../../escaped.txt",
    );
    // `..` in the middle counts too, even when it would stay inside.
    assert_refused(&[file("a/../b.txt", b"x")], "a/../b.txt");
}

#[test]
fn absolute_entries_are_refused() {
    assert_refused(
        &[file("/tmp/flowers_kit_escaped.txt", b"gotcha")],
        "/tmp/flowers_kit_escaped.txt",
    );
}

#[test]
fn links_pointing_outside_are_refused() {
    assert_refused(
        &[link("flower_photos/evil", tar::EntryType::Symlink, "/etc")],
        "flower_photos/evil",
    );
    assert_refused(
        &[
            link("flower_photos/up", tar::EntryType::Symlink, "../.."),
            file("flower_photos/x.jpg", b"x"),
        ],
        "flower_photos/up",
    );
    assert_refused(
        &[link("hard", tar::EntryType::Link, "../escaped.txt")],
        "hard",
    );
}

#[test]
fn device_files_are_refused() {
    assert_refused(
        &[link("flower_photos/null", tar::EntryType::Char, "")],
        "flower_photos/null",
    );
    assert_refused(&[link("fifo", tar::EntryType::Fifo, "")], "fifo");
}

#[test]
fn links_inside_are_skipped_and_files_extracted() {
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("ok.tgz");
    craft(
        &archive,
        &[
            file("flower_photos/roses/a.jpg", b"rose"),
            link(
                "flower_photos/roses/b.jpg",
                tar::EntryType::Symlink,
                "a.jpg",
            ),
            file("flower_photos/./tulips/c.jpg", b"tulip"),
        ],
    );
    let dest = work.path().join("datasets").join("flowers");
    extract_tgz(&archive, &dest).unwrap();
    assert_eq!(fs::read(dest.join("roses/a.jpg")).unwrap(), b"rose");
    assert_eq!(fs::read(dest.join("tulips/c.jpg")).unwrap(), b"tulip");
    assert!(!dest.join("roses/b.jpg").exists());
    assert_eq!(
        fs::read_dir(work.path().join("datasets")).unwrap().count(),
        1
    );
}

#[test]
fn an_existing_destination_is_left_alone() {
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("ok.tgz");
    craft(&archive, &[file("top/new.txt", b"new")]);
    let dest = work.path().join("data");
    fs::create_dir_all(&dest).unwrap();
    fs::write(dest.join("old.txt"), b"old").unwrap();
    extract_tgz(&archive, &dest).unwrap();
    assert!(dest.join("old.txt").exists());
    assert!(!dest.join("new.txt").exists());
}

#[test]
fn empty_archive_is_an_error() {
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("empty.tgz");
    craft(&archive, &[]);
    let err = extract_tgz(&archive, &work.path().join("d")).unwrap_err();
    assert!(err.to_string().contains("no files"), "{err}");
}
