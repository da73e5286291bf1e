//! Reading photos safely, decoding them, and resizing them exactly as TensorFlow does.
//!
//! Photos are hostile input: only regular files are opened (never a FIFO or a device behind
//! a `.jpg` name), their size is capped before reading, and their pixel count is read from
//! the header and capped before decoding ([`PhotoLimits`]). Resizing reads the decoded 8-bit
//! rows directly, so a large photo never exists as a whole f32 image.

// This module reads untrusted input: every index and every arithmetic step is checked or
// justified where it is allowed.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::path::Path;

use crate::error::{Error, Result};

/// Caps on what one photo may cost to read and decode.
///
/// ```
/// use flowers_kit::data::image::PhotoLimits;
/// let strict = PhotoLimits { max_file_bytes: 8 << 20, ..PhotoLimits::default() };
/// assert_eq!(strict.max_pixels, 50_000_000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhotoLimits {
    /// Largest file read, in bytes (default 64 MiB; the flower photos are under 1 MB).
    pub max_file_bytes: u64,
    /// Largest width × height decoded (default 50 megapixels).
    pub max_pixels: u64,
}

impl Default for PhotoLimits {
    fn default() -> Self {
        PhotoLimits {
            max_file_bytes: 64 << 20,
            max_pixels: 50_000_000,
        }
    }
}

/// Reads a photo file: a regular file (symbolic links followed) of at most
/// `limits.max_file_bytes`. A FIFO, a device or a folder is an error, not a hang or an
/// endless read.
pub fn read_photo(path: &Path, limits: &PhotoLimits) -> Result<Vec<u8>> {
    crate::files::read_regular(path, limits.max_file_bytes, "photo", |reason| {
        Error::Image {
            path: path.to_path_buf(),
            reason,
        }
    })
}

/// An RGB image as f32 in [0, 1], height × width × 3, row-major (HWC).
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `height * width * 3` values, `[row][column][channel]`.
    pub data: Vec<f32>,
}

/// The bilinear resize to reproduce.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum Resize {
    /// `tf.compat.v1.image.resize_images` (align_corners=False, half_pixel_centers=False):
    /// the tutorial's preprocessing, and what TF-Hub's image modules were used with.
    #[default]
    TfV1Bilinear,
    /// TF2's `tf.image.resize` (bilinear with half-pixel centres).
    TfV2Bilinear,
}

impl Resize {
    /// A short stable name, used in cache keys and file metadata.
    pub fn name(self) -> &'static str {
        match self {
            Resize::TfV1Bilinear => "tf_v1_bilinear",
            Resize::TfV2Bilinear => "tf_v2_bilinear",
        }
    }
}

impl Image {
    /// Wraps 8-bit RGB pixels, scaling to [0, 1] as `tf.image.convert_image_dtype` does.
    /// `pixels` must hold exactly `height × width × 3` values.
    pub fn from_rgb8(height: usize, width: usize, pixels: &[u8]) -> Result<Image> {
        let expected = height.checked_mul(width).and_then(|p| p.checked_mul(3));
        if expected != Some(pixels.len()) {
            return Err(Error::InvalidArgument(format!(
                "{} bytes are not {height}×{width} RGB pixels",
                pixels.len()
            )));
        }
        let scale = 1.0f32 / 255.0;
        Ok(Image {
            height,
            width,
            data: pixels.iter().map(|&p| f32::from(p) * scale).collect(),
        })
    }

    /// Resizes to `height × width` with TensorFlow's bilinear arithmetic. An image whose
    /// data does not hold `height × width × 3` values, or an output too large to address,
    /// is an error.
    pub fn resize(&self, height: usize, width: usize, method: Resize) -> Result<Image> {
        resize_rows(
            &self.data,
            (self.height, self.width),
            (height, width),
            method,
            |v| v,
        )
    }
}

/// Resizes 8-bit RGB pixels straight to a `height × width` [0, 1] image: the same numbers as
/// [`Image::from_rgb8`] followed by [`Image::resize`], without the full-size f32 copy.
pub fn resize_rgb8(
    rgb: &image::RgbImage,
    height: usize,
    width: usize,
    method: Resize,
) -> Result<Image> {
    let scale = 1.0f32 / 255.0;
    resize_rows(
        rgb.as_raw(),
        (rgb.height() as usize, rgb.width() as usize),
        (height, width),
        method,
        |p| f32::from(p) * scale,
    )
}

/// The bilinear resize over any pixel type; `value` turns a stored channel into f32.
// Indexing and arithmetic are justified by the checks at the top: `source` holds exactly
// in_h × in_w × 3 values, `sample_points` only yields rows below in_h and columns below
// in_w, and the output's size was computed with checked products.
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
fn resize_rows<T: Copy>(
    source: &[T],
    (in_h, in_w): (usize, usize),
    (height, width): (usize, usize),
    method: Resize,
    value: impl Fn(T) -> f32,
) -> Result<Image> {
    let stride = in_w.checked_mul(3);
    let in_len = stride.and_then(|s| s.checked_mul(in_h));
    let out_len = height.checked_mul(width).and_then(|p| p.checked_mul(3));
    let (Some(stride), Some(out_len)) = (stride, out_len) else {
        return Err(Error::InvalidArgument(format!(
            "cannot resize {in_h}×{in_w} to {height}×{width}: too large"
        )));
    };
    if in_h == 0 || in_w == 0 || in_len != Some(source.len()) {
        return Err(Error::InvalidArgument(format!(
            "cannot resize: {} values are not a {in_h}×{in_w} RGB image",
            source.len()
        )));
    }
    let rows = sample_points(in_h, height, method);
    let cols = sample_points(in_w, width, method);
    let mut data = Vec::with_capacity(out_len);
    for &(top, bottom, y_lerp) in &rows {
        let top_row = &source[top * stride..][..stride];
        let bottom_row = &source[bottom * stride..][..stride];
        for &(left, right, x_lerp) in &cols {
            for c in 0..3 {
                let (tl, tr) = (value(top_row[left * 3 + c]), value(top_row[right * 3 + c]));
                let (bl, br) = (
                    value(bottom_row[left * 3 + c]),
                    value(bottom_row[right * 3 + c]),
                );
                // Same order of operations as TF's compute_lerp.
                let top = tl + (tr - tl) * x_lerp;
                let bottom = bl + (br - bl) * x_lerp;
                data.push(top + (bottom - top) * y_lerp);
            }
        }
    }
    Ok(Image {
        height,
        width,
        data,
    })
}

/// For each output index: (lower input index, upper input index, weight of the upper one),
/// as TF's `compute_interpolation_weights` computes them in f32. Both indices are clamped to
/// `0..in_size` (`in_size` ≥ 1, checked by the caller).
#[allow(clippy::arithmetic_side_effects)] // f32 arithmetic, and in_size ≥ 1 fits in i64
fn sample_points(in_size: usize, out_size: usize, method: Resize) -> Vec<(usize, usize, f32)> {
    let scale = in_size as f32 / out_size as f32;
    let last = in_size as i64 - 1;
    (0..out_size)
        .map(|i| {
            let x = match method {
                Resize::TfV1Bilinear => i as f32 * scale,
                Resize::TfV2Bilinear => (i as f32 + 0.5) * scale - 0.5,
            };
            let floor = x.floor();
            let lower = (floor as i64).clamp(0, last) as usize;
            let upper = (x.ceil() as i64).clamp(0, last) as usize;
            (lower, upper, x - floor)
        })
        .collect()
}

/// Decodes a JPEG or PNG file of any colour type (grey, CMYK, alpha…) to 8-bit RGB, within
/// the default [`PhotoLimits`].
pub fn decode_rgb8(path: &Path) -> Result<image::RgbImage> {
    let limits = PhotoLimits::default();
    decode_rgb8_bytes(&read_photo(path, &limits)?, path, &limits)
}

/// Decodes image bytes; `path` only names the source in errors. The dimensions are read from
/// the header and checked against `limits.max_pixels` before anything is decoded.
pub fn decode_rgb8_bytes(
    bytes: &[u8],
    path: &Path,
    limits: &PhotoLimits,
) -> Result<image::RgbImage> {
    let bad = |reason: String| Error::Image {
        path: path.to_path_buf(),
        reason,
    };
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| bad(e.to_string()))
    };
    match reader()?.format() {
        None => return Err(bad("not a JPEG or PNG file".into())),
        Some(image::ImageFormat::Jpeg) if !jpeg_is_complete(bytes) => {
            return Err(bad("truncated JPEG (no end-of-image marker)".into()))
        }
        Some(_) => {}
    }
    let (width, height) = reader()?
        .into_dimensions()
        .map_err(|e| bad(format!("cannot read the image header: {e}")))?;
    let pixels = u64::from(width).saturating_mul(u64::from(height));
    if pixels > limits.max_pixels {
        return Err(bad(format!(
            "{width}×{height} is {:.1} megapixels, over the {:.1}-megapixel limit \
             (PhotoLimits::max_pixels)",
            pixels as f64 / 1e6,
            limits.max_pixels as f64 / 1e6
        )));
    }
    let decoded = reader()?
        .decode()
        .map_err(|e| bad(format!("cannot decode: {e}")))?;
    // into_rgb8 keeps an RGB8 buffer as it is instead of copying it.
    Ok(decoded.into_rgb8())
}

/// True when an end-of-image marker follows the last start-of-scan.
///
/// The decoder fills a cut-off JPEG with grey and reports success, where TensorFlow's
/// `decode_jpeg` fails. Inside entropy-coded data every 0xFF is followed by 0x00 or a restart
/// marker, so `FF D9` after the last `FF DA` is the real end of the image (an EXIF thumbnail's
/// markers all come before the main image's scan).
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_scan.and_then(|start| bytes.get(start..)) {
        Some(scan) => scan.windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

/// Decodes a photo to f32 RGB in [0, 1].
pub fn load(path: &Path) -> Result<Image> {
    let rgb = decode_rgb8(path)?;
    Image::from_rgb8(rgb.height() as usize, rgb.width() as usize, rgb.as_raw())
}

/// Decodes a photo and resizes it to `size × size`: the model's input.
pub fn load_resized(path: &Path, size: usize, method: Resize) -> Result<Image> {
    let limits = PhotoLimits::default();
    let bytes = read_photo(path, &limits)?;
    load_resized_bytes(&bytes, path, size, method, &limits)
}

/// [`load_resized`] on bytes already read; `path` only names the source in errors.
pub fn load_resized_bytes(
    bytes: &[u8],
    path: &Path,
    size: usize,
    method: Resize,
    limits: &PhotoLimits,
) -> Result<Image> {
    let rgb = decode_rgb8_bytes(bytes, path, limits)?;
    resize_rgb8(&rgb, size, size, method)
}
