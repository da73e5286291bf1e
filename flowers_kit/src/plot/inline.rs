//! How a figure shows in an evcxr notebook: evcxr calls a value's `evcxr_display` method,
//! which prints a MIME bundle between `EVCXR_BEGIN_CONTENT` and `EVCXR_END_CONTENT` on
//! stdout — charts as SVG (sharp at any zoom, small), photos as PNG.

use std::path::Path;

use base64::Engine;

/// Prints `content` as an evcxr MIME bundle.
pub fn emit(mime: &str, content: &str) {
    println!("EVCXR_BEGIN_CONTENT {mime}\n{content}\nEVCXR_END_CONTENT");
}

/// Prints PNG bytes as an evcxr `image/png` bundle.
pub fn emit_png(png: &[u8]) {
    emit(
        "image/png",
        &base64::engine::general_purpose::STANDARD.encode(png),
    );
}

/// The lowercase extension of `path`, for choosing a format.
pub(crate) fn extension(path: &Path) -> Option<String> {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
}
