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

/// Largest side of an image the kit resizes to, and of a network's input: far above any
/// published model, and small enough that every buffer size computed from it fits
/// comfortably in memory and in `usize`.
pub const MAX_RESOLUTION: usize = 2048;

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
    /// Most memory one decode may take, estimated from the header before anything is
    /// decoded (default 640 MiB: a 50-megapixel progressive CMYK JPEG needs about 600 MB).
    /// Decodes running at once also share the process-wide [`decode_budget`].
    pub max_decode_bytes: u64,
}

impl Default for PhotoLimits {
    fn default() -> Self {
        PhotoLimits {
            max_file_bytes: 64 << 20,
            max_pixels: 50_000_000,
            max_decode_bytes: 640 << 20,
        }
    }
}

/// The default of [`decode_budget`]: 768 MiB.
pub const DEFAULT_DECODE_BUDGET: u64 = 768 << 20;

/// The memory all photo decodes running at once may take together, in bytes:
/// `$FLOWERS_KIT_DECODE_MIB` mebibytes if set (a class server may lower it per learner),
/// else [`DEFAULT_DECODE_BUDGET`]. Decoding threads wait for their share, so peak memory
/// does not grow with the number of threads: eight threads meeting eight 50-megapixel photos
/// decode one or two at a time, while ordinary photos (a few MB each) never wait.
pub fn decode_budget() -> u64 {
    static BUDGET: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BUDGET.get_or_init(|| {
        std::env::var("FLOWERS_KIT_DECODE_MIB")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&mib| mib >= 1)
            .map_or(DEFAULT_DECODE_BUDGET, |mib| mib.saturating_mul(1 << 20))
    })
}

/// Memory reserved from the decode budget, returned when dropped.
struct Permit(u64);

/// Bytes of the decode budget in use.
static IN_USE: std::sync::Mutex<u64> = std::sync::Mutex::new(0);
static RETURNED: std::sync::Condvar = std::sync::Condvar::new();

impl Permit {
    /// Waits until `bytes` (at most the whole budget, checked by the caller) are free.
    fn reserve(bytes: u64) -> Permit {
        let budget = decode_budget();
        // The counter is always consistent (updated in one statement), so a panic elsewhere
        // while it was locked leaves nothing to repair.
        let mut used = IN_USE.lock().unwrap_or_else(|e| e.into_inner());
        while used.saturating_add(bytes) > budget && *used > 0 {
            used = RETURNED.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used = used.saturating_add(bytes);
        Permit(bytes)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut used = IN_USE.lock().unwrap_or_else(|e| e.into_inner());
        *used = used.saturating_sub(self.0);
        RETURNED.notify_all();
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
    // One pixel's three channels as f32.
    let pixel = |row: &[T], x: usize| -> [f32; 3] {
        let p = &row[x * 3..][..3];
        [value(p[0]), value(p[1]), value(p[2])]
    };
    for &(top, bottom, y_lerp) in &rows {
        let top_row = &source[top * stride..][..stride];
        let bottom_row = &source[bottom * stride..][..stride];
        for &(left, right, x_lerp) in &cols {
            let (tl, tr) = (pixel(top_row, left), pixel(top_row, right));
            let (bl, br) = (pixel(bottom_row, left), pixel(bottom_row, right));
            let mut out = [0f32; 3];
            for c in 0..3 {
                // Same order of operations as TF's compute_lerp.
                let top = tl[c] + (tr[c] - tl[c]) * x_lerp;
                let bottom = bl[c] + (br[c] - bl[c]) * x_lerp;
                out[c] = top + (bottom - top) * y_lerp;
            }
            data.extend_from_slice(&out);
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
/// the header and checked against `limits.max_pixels`, and the memory the decode needs
/// against `limits.max_decode_bytes`, before anything is decoded.
pub fn decode_rgb8_bytes(
    bytes: &[u8],
    path: &Path,
    limits: &PhotoLimits,
) -> Result<image::RgbImage> {
    decode_with_permit(bytes, path, limits).map(|(rgb, _)| rgb)
}

/// Decodes image bytes and runs `use_pixels` on them while their memory is counted against
/// the [`decode_budget`]: how the parallel loaders decode, so that a full-size photo never
/// outlives its share of the budget.
pub fn with_decoded<T>(
    bytes: &[u8],
    path: &Path,
    limits: &PhotoLimits,
    use_pixels: impl FnOnce(&image::RgbImage) -> Result<T>,
) -> Result<T> {
    let (rgb, _permit) = decode_with_permit(bytes, path, limits)?;
    use_pixels(&rgb)
}

/// What a JPEG decode costs at most, per pixel: 16-bit coefficients of up to four components
/// (a progressive CMYK file) besides the 8-bit RGB output.
const JPEG_BYTES_PER_PIXEL: u64 = 12;

fn decode_with_permit(
    bytes: &[u8],
    path: &Path,
    limits: &PhotoLimits,
) -> Result<(image::RgbImage, Permit)> {
    let bad = |reason: String| Error::Image {
        path: path.to_path_buf(),
        reason,
    };
    let format = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?
        .format();
    match format {
        Some(image::ImageFormat::Png) => decode_png(bytes, limits, &bad),
        Some(image::ImageFormat::Jpeg) => {
            if !jpeg_is_complete(bytes) {
                return Err(bad("truncated JPEG (no end-of-image marker)".into()));
            }
            decode_jpeg(bytes, limits, &bad)
        }
        _ => Err(bad("not a JPEG or PNG file".into())),
    }
}

/// Errors unless `width × height` is within the pixel cap.
fn check_pixels(
    width: u32,
    height: u32,
    limits: &PhotoLimits,
    bad: &dyn Fn(String) -> Error,
) -> Result<u64> {
    let pixels = u64::from(width).saturating_mul(u64::from(height));
    if pixels > limits.max_pixels {
        return Err(bad(format!(
            "{width}×{height} is {:.1} megapixels, over the {:.1}-megapixel limit \
             (PhotoLimits::max_pixels)",
            pixels as f64 / 1e6,
            limits.max_pixels as f64 / 1e6
        )));
    }
    Ok(pixels)
}

/// Reserves `cost` bytes of the decode budget, or errors when one photo would need more than
/// it may.
fn reserve(
    cost: u64,
    (width, height): (u32, u32),
    limits: &PhotoLimits,
    bad: &dyn Fn(String) -> Error,
) -> Result<Permit> {
    let most = limits.max_decode_bytes.min(decode_budget());
    if cost > most {
        return Err(bad(format!(
            "{width}×{height} would take {} MiB to decode, over the {} MiB a photo may take \
             (PhotoLimits::max_decode_bytes, $FLOWERS_KIT_DECODE_MIB)",
            cost >> 20,
            most >> 20
        )));
    }
    Ok(Permit::reserve(cost))
}

fn decode_jpeg(
    bytes: &[u8],
    limits: &PhotoLimits,
    bad: &dyn Fn(String) -> Error,
) -> Result<(image::RgbImage, Permit)> {
    let reader =
        || image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Jpeg);
    let (width, height) = reader()
        .into_dimensions()
        .map_err(|e| bad(format!("cannot read the image header: {e}")))?;
    let pixels = check_pixels(width, height, limits, bad)?;
    let cost = pixels.saturating_mul(JPEG_BYTES_PER_PIXEL);
    let permit = reserve(cost, (width, height), limits, bad)?;
    let mut reader = reader();
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_alloc = Some(cost);
    reader.limits(decoder_limits);
    let decoded = reader
        .decode()
        .map_err(|e| bad(format!("cannot decode: {e}")))?;
    // into_rgb8 keeps an RGB8 buffer as it is instead of copying it.
    Ok((decoded.into_rgb8(), permit))
}

/// PNG through the `png` crate directly: colour profiles and text chunks are skipped unread
/// (a kilobyte of compressed iCCP can inflate to a gigabyte, and the pixels never need it),
/// 16-bit samples keep their high byte (as TensorFlow's `decode_png` to `uint8` does),
/// palettes expand, and alpha is dropped.
fn decode_png(
    bytes: &[u8],
    limits: &PhotoLimits,
    bad: &dyn Fn(String) -> Error,
) -> Result<(image::RgbImage, Permit)> {
    let png_error = |e: png::DecodingError| bad(format!("cannot decode: {e}"));
    let own_limit = usize::try_from(limits.max_decode_bytes).unwrap_or(usize::MAX);
    let mut decoder = png::Decoder::new_with_limits(
        std::io::Cursor::new(bytes),
        png::Limits { bytes: own_limit },
    );
    decoder.set_ignore_iccp_chunk(true);
    decoder.set_ignore_text_chunk(true);
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let (width, height) = {
        let info = decoder
            .read_header_info()
            .map_err(|e| bad(format!("cannot read the image header: {e}")))?;
        (info.width, info.height)
    };
    let pixels = check_pixels(width, height, limits, bad)?;
    let mut reader = decoder.read_info().map_err(png_error)?;
    let frame = reader
        .output_buffer_size()
        .ok_or_else(|| bad(format!("{width}×{height} is too large to address")))?;
    let rgb_len = usize::try_from(pixels.saturating_mul(3))
        .map_err(|_| bad(format!("{width}×{height} is too large to address")))?;
    let (color, _) = reader.output_color_type();
    let direct = color == png::ColorType::Rgb && frame == rgb_len;
    let cost = if direct {
        rgb_len as u64
    } else {
        (frame as u64).saturating_add(rgb_len as u64)
    };
    let permit = reserve(cost, (width, height), limits, bad)?;
    let mut buffer = vec![0u8; frame];
    reader.next_frame(&mut buffer).map_err(png_error)?;
    let rgb = if direct {
        buffer
    } else {
        let channels = match color {
            png::ColorType::Grayscale => 1,
            png::ColorType::GrayscaleAlpha => 2,
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            png::ColorType::Indexed => {
                return Err(bad("a palette the decoder did not expand".into()))
            }
        };
        to_rgb(&buffer, channels, rgb_len)
    };
    let image = image::RgbImage::from_raw(width, height, rgb).ok_or_else(|| {
        bad(format!(
            "the decoder returned too few pixels for {width}×{height}"
        ))
    })?;
    Ok((image, permit))
}

/// 8-bit pixels of 1–4 channels (grey, grey + alpha, RGB, RGBA) as RGB, alpha dropped.
fn to_rgb(samples: &[u8], channels: usize, rgb_len: usize) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(rgb_len);
    for pixel in samples.chunks_exact(channels).take(rgb_len / 3) {
        match pixel {
            [grey] | [grey, _] => rgb.extend_from_slice(&[*grey, *grey, *grey]),
            [r, g, b, ..] => rgb.extend_from_slice(&[*r, *g, *b]),
            [] => {}
        }
    }
    rgb
}

/// True when an end-of-image marker follows the last start-of-scan.
///
/// The decoder fills a cut-off JPEG with grey and reports success, where TensorFlow's
/// `decode_jpeg` fails. Inside entropy-coded data every 0xFF is followed by 0x00 or a restart
/// marker, so `FF D9` after the last `FF DA` is the real end of the image (an EXIF thumbnail's
/// markers all come before the main image's scan).
///
/// Searched from both ends, so that only the headers and the file's tail are read (the same
/// answer as scanning from the last start-of-scan): the last `FF D9` is found first, from the
/// end; the image is complete when no `FF DA` follows it and one comes before it.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let marker = |second: u8| move |w: &[u8]| w == [0xFF, second];
    let Some(end) = bytes.windows(2).rposition(marker(0xD9)) else {
        return false;
    };
    let (before, after) = bytes.split_at(end);
    !after.windows(2).any(marker(0xDA)) && before.windows(2).any(marker(0xDA))
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
    with_decoded(bytes, path, limits, |rgb| {
        resize_rgb8(rgb, size, size, method)
    })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::jpeg_is_complete;

    #[test]
    fn a_jpeg_is_complete_when_an_end_marker_follows_its_last_scan() {
        let (soi, sos, eoi) = ([0xFF, 0xD8], [0xFF, 0xDA], [0xFF, 0xD9]);
        let file = |parts: &[&[u8]]| parts.concat();
        // A thumbnail's scan and end come before the main scan; trailing bytes are allowed.
        let thumbnail: &[u8] = &file(&[&sos, b"thumb", &eoi]);
        assert!(jpeg_is_complete(&file(&[&soi, &sos, b"data", &eoi])));
        assert!(jpeg_is_complete(&file(&[
            &soi, thumbnail, &sos, b"data", &eoi, b"tail"
        ])));
        // Cut off inside the main scan: the thumbnail's end does not count.
        assert!(!jpeg_is_complete(&file(&[&soi, thumbnail, &sos, b"da"])));
        assert!(!jpeg_is_complete(&file(&[&soi, &sos, b"data"])));
        // No scan at all, or nothing.
        assert!(!jpeg_is_complete(&file(&[&soi, &eoi])));
        assert!(!jpeg_is_complete(&[]));
        assert!(!jpeg_is_complete(&[0xFF]));
        // Markers that share a byte: FF DA D9 is a scan marker followed by D9, not an end.
        assert!(!jpeg_is_complete(&[0xFF, 0xDA, 0xD9]));
        assert!(jpeg_is_complete(&[0xFF, 0xDA, 0xFF, 0xD9]));
    }

    #[test]
    fn searching_from_both_ends_answers_as_scanning_from_the_last_scan_does() {
        // The earlier formulation: an end marker anywhere after the last start-of-scan.
        let scanning = |bytes: &[u8]| {
            let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
            last_scan
                .and_then(|start| bytes.get(start..))
                .is_some_and(|scan| scan.windows(2).any(|w| w == [0xFF, 0xD9]))
        };
        let alphabet = [0xFF, 0xDA, 0xD9, 0xD8, 0x00];
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let (mut complete, mut cut) = (0, 0);
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 12) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| alphabet[((state >> (4 + 3 * i)) % 5) as usize])
                .collect();
            let answer = jpeg_is_complete(&bytes);
            assert_eq!(answer, scanning(&bytes), "{bytes:02X?}");
            if answer {
                complete += 1;
            } else {
                cut += 1;
            }
        }
        assert!(
            complete > 100 && cut > 100,
            "{complete} complete, {cut} cut"
        );
    }
}
