//! Decoding photos and resizing them exactly as TensorFlow does.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};

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
    pub fn from_rgb8(height: usize, width: usize, pixels: &[u8]) -> Image {
        let scale = 1.0f32 / 255.0;
        Image {
            height,
            width,
            data: pixels.iter().map(|&p| f32::from(p) * scale).collect(),
        }
    }

    /// Resizes to `height × width` with TensorFlow's bilinear arithmetic.
    pub fn resize(&self, height: usize, width: usize, method: Resize) -> Image {
        let rows = sample_points(self.height, height, method);
        let cols = sample_points(self.width, width, method);
        let mut data = Vec::with_capacity(height * width * 3);
        let stride = self.width * 3;
        for &(top, bottom, y_lerp) in &rows {
            let top_row = &self.data[top * stride..][..stride];
            let bottom_row = &self.data[bottom * stride..][..stride];
            for &(left, right, x_lerp) in &cols {
                for c in 0..3 {
                    let (tl, tr) = (top_row[left * 3 + c], top_row[right * 3 + c]);
                    let (bl, br) = (bottom_row[left * 3 + c], bottom_row[right * 3 + c]);
                    // Same order of operations as TF's compute_lerp.
                    let top = tl + (tr - tl) * x_lerp;
                    let bottom = bl + (br - bl) * x_lerp;
                    data.push(top + (bottom - top) * y_lerp);
                }
            }
        }
        Image {
            height,
            width,
            data,
        }
    }
}

/// For each output index: (lower input index, upper input index, weight of the upper one),
/// as TF's `compute_interpolation_weights` computes them in f32.
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

/// Decodes a JPEG or PNG file of any colour type (grey, CMYK, alpha…) to 8-bit RGB.
pub fn decode_rgb8(path: &Path) -> Result<image::RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_rgb8_bytes(&bytes, path)
}

/// Decodes image bytes; `path` only names the source in errors.
pub fn decode_rgb8_bytes(bytes: &[u8], path: &Path) -> Result<image::RgbImage> {
    let bad = |reason: String| Error::Image {
        path: path.to_path_buf(),
        reason,
    };
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?;
    match reader.format() {
        None => return Err(bad("not a JPEG or PNG file".into())),
        Some(image::ImageFormat::Jpeg) if !jpeg_is_complete(bytes) => {
            return Err(bad("truncated JPEG (no end-of-image marker)".into()))
        }
        Some(_) => {}
    }
    let decoded = reader
        .decode()
        .map_err(|e| bad(format!("cannot decode: {e}")))?;
    Ok(decoded.to_rgb8())
}

/// True when an end-of-image marker follows the last start-of-scan.
///
/// The decoder fills a cut-off JPEG with grey and reports success, where TensorFlow's
/// `decode_jpeg` fails. Inside entropy-coded data every 0xFF is followed by 0x00 or a restart
/// marker, so `FF D9` after the last `FF DA` is the real end of the image (an EXIF thumbnail's
/// markers all come before the main image's scan).
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_scan {
        Some(start) => bytes[start..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

/// Decodes a photo to f32 RGB in [0, 1].
pub fn load(path: &Path) -> Result<Image> {
    let rgb = decode_rgb8(path)?;
    Ok(Image::from_rgb8(
        rgb.height() as usize,
        rgb.width() as usize,
        rgb.as_raw(),
    ))
}

/// Decodes a photo and resizes it to `size × size`: the model's input.
pub fn load_resized(path: &Path, size: usize, method: Resize) -> Result<Image> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    load_resized_bytes(&bytes, path, size, method)
}

/// [`load_resized`] on bytes already read; `path` only names the source in errors.
pub fn load_resized_bytes(bytes: &[u8], path: &Path, size: usize, method: Resize) -> Result<Image> {
    let rgb = decode_rgb8_bytes(bytes, path)?;
    Ok(
        Image::from_rgb8(rgb.height() as usize, rgb.width() as usize, rgb.as_raw())
            .resize(size, size, method),
    )
}

/// Photos decoded and resized for a forward pass.
#[derive(Debug)]
pub struct Batch {
    /// `kept.len() × size × size × 3` values, NHWC.
    pub pixels: Vec<f32>,
    /// Indices (into the requested paths) of the photos in `pixels`, in order.
    pub kept: Vec<usize>,
    /// Photos that could not be read, with the reason.
    pub skipped: Vec<(PathBuf, Error)>,
}

/// Loads many photos in parallel. A file that cannot be decoded is skipped with a warning on
/// stderr instead of aborting the whole run.
pub fn load_batch(paths: &[PathBuf], size: usize, method: Resize) -> Batch {
    let results: Vec<Result<Image>> = paths
        .par_iter()
        .map(|p| load_resized(p, size, method))
        .collect();
    let mut batch = Batch {
        pixels: Vec::with_capacity(paths.len() * size * size * 3),
        kept: Vec::with_capacity(paths.len()),
        skipped: Vec::new(),
    };
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(image) => {
                batch.pixels.extend_from_slice(&image.data);
                batch.kept.push(i);
            }
            Err(e) => {
                eprintln!("warning: skipping {e}");
                batch.skipped.push((paths[i].clone(), e));
            }
        }
    }
    batch
}
