//! Without the `download` feature (the notebooks' build), the kit has no HTTP client and
//! downloads through the `flowers fetch` program. `./test` runs `download.rs` and
//! `hostile_downloads.rs` in that build too, so every download behaviour is checked through
//! the program; this file checks how the program is found. It sets an environment variable,
//! so it is a test binary of its own.
#![cfg(not(feature = "download"))]

mod support;

use flowers_kit::data::fetch::{self, FETCH_PROGRAM_VARIABLE};
use support::http::{Behaviour, Server};

#[test]
fn the_download_program_is_found_or_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::one("file.bin", vec![7; 1000], Behaviour::Normal);
    let url = server.url("file.bin");
    let dest = dir.path().join("file.bin");

    // A program that is not there: the error names it, and nothing was requested.
    std::env::set_var(FETCH_PROGRAM_VARIABLE, "/nonexistent/flowers");
    let err = fetch::fetch(&url, &dest, &support::quick_fetch(1))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&url) && err.contains("cannot run the download program /nonexistent/flowers"),
        "{err}"
    );
    assert!(server.seen().is_empty());
    assert!(!dest.exists());

    // Unset, the kit finds its own build of `flowers` (./test builds it first).
    std::env::remove_var(FETCH_PROGRAM_VARIABLE);
    fetch::fetch(&url, &dest, &support::quick_fetch(1)).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), vec![7; 1000]);
    assert_eq!(server.seen().len(), 1);
}
