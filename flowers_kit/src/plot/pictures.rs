//! Photo figures: the tutorial's labelled grid and the gallery of wrong predictions.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::inline::{emit_png, extension};
use super::{ensure_fonts, plot_error};
use crate::data::image::{
    decode_rgb8, decode_rgb8_bytes, read_photo, PhotoLimits, Resize, MAX_RESOLUTION,
};
use crate::data::{Augment, Example};
use crate::error::{Error, Result};
use crate::files::write_atomically;
use crate::train::Metrics;

/// A raster figure of photos with captions: displays inline in evcxr (PNG), saves as `.png`.
#[derive(Debug, Clone, PartialEq)]
pub struct Picture {
    width: u32,
    height: u32,
    /// RGB, row-major.
    pixels: Vec<u8>,
}

/// How many photos a gallery shows, and in how many columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gallery {
    /// At most this many photos (default 10).
    pub photos: usize,
    /// Photos per row (default 5).
    pub columns: usize,
}

impl Default for Gallery {
    fn default() -> Self {
        Gallery {
            photos: 10,
            columns: 5,
        }
    }
}

/// One photo with its caption lines.
#[derive(Debug, Clone)]
pub struct Tile {
    /// The photo file.
    pub path: PathBuf,
    /// Caption lines under the photo.
    pub caption: Vec<String>,
}

const TILE: u32 = 150;
const LINE: u32 = 18;
const GAP: u32 = 10;
/// Cells are wider than photos so that two-line captions fit.
const CELL_W: u32 = 190;

impl Picture {
    /// Photos in a grid of `columns`, each scaled to fit a square tile, captions below.
    /// A photo that cannot be decoded becomes a grey tile saying so.
    pub fn grid(tiles: &[Tile], columns: usize) -> Result<Picture> {
        check_tiles(tiles.len())?;
        let images: Vec<Thumbnail> = tiles
            .iter()
            .map(|t| (decode_rgb8(&t.path).map(|rgb| fit(&rgb)), t.caption.clone()))
            .collect();
        Picture::of_thumbnails(&images, columns)
    }

    /// Augmented views of one photo side by side, as the network sees them (before its own
    /// input scaling), captioned with their index: what [`Augment`] does to a photo.
    ///
    /// ```no_run
    /// # use flowers_kit::prelude::*;
    /// # let path = std::path::Path::new("daisy.jpg");
    /// Picture::views(path, &Augment::default(), 8, 224)?.evcxr_display();
    /// # Ok::<(), flowers_kit::Error>(())
    /// ```
    pub fn views(
        photo: impl AsRef<Path>,
        augment: &Augment,
        views: usize,
        size: usize,
    ) -> Result<Picture> {
        let path = photo.as_ref();
        if views == 0 || views > MAX_VIEWS_SHOWN || size == 0 || size > MAX_RESOLUTION {
            return Err(Error::InvalidArgument(format!(
                "show 1 to {MAX_VIEWS_SHOWN} views of 1 to {MAX_RESOLUTION} pixels, not {views} of {size}"
            )));
        }
        let bytes = read_photo(path, &PhotoLimits::default())?;
        let rgb = decode_rgb8_bytes(&bytes, path, &PhotoLimits::default())?;
        let key = crate::digest::sha256_hex(&bytes);
        let mut images = Vec::with_capacity(views);
        for v in 0..views {
            let view = augment.view(&rgb, size, Resize::TfV1Bilinear, &key, v)?;
            // Brighter than white is shown as white.
            let pixels: Vec<u8> = view
                .data
                .iter()
                .map(|&x| (x * 255.0).round().clamp(0.0, 255.0) as u8)
                .collect();
            let side = size as u32;
            let rgb = image::RgbImage::from_raw(side, side, pixels)
                .ok_or_else(|| Error::Plot("view buffer has the wrong size".into()))?;
            images.push((Ok(fit(&rgb)), vec![super::language::view_caption(v + 1)]));
        }
        Picture::of_thumbnails(&images, views.min(4))
    }

    /// Thumbnails in a grid of `columns`, captions below; an error shows as a grey tile.
    pub(super) fn of_thumbnails(tiles: &[Thumbnail], columns: usize) -> Result<Picture> {
        ensure_fonts();
        check_tiles(tiles.len())?;
        let columns = columns.clamp(1, tiles.len()) as u32;
        let rows = (tiles.len() as u32).div_ceil(columns);
        let lines = tiles.iter().map(|t| t.1.len()).max().unwrap_or(0) as u32;
        let cell_w = CELL_W;
        let cell_h = TILE + lines * LINE + GAP;
        let (width, height) = (columns * cell_w + GAP, rows * cell_h + GAP);
        let mut pixels = vec![255u8; (width * height * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
            for (i, (thumbnail, caption)) in tiles.iter().enumerate() {
                let (col, row) = (i as u32 % columns, i as u32 / columns);
                let (x, y) = (
                    GAP + col * cell_w + (CELL_W - GAP - TILE) / 2,
                    GAP + row * cell_h,
                );
                match thumbnail {
                    Ok((w, h, rgb)) => {
                        let (dx, dy) = ((TILE - w) / 2, (TILE - h) / 2);
                        let element = BitMapElement::<_>::with_owned_buffer(
                            ((x + dx) as i32, (y + dy) as i32),
                            (*w, *h),
                            rgb.clone(),
                        )
                        .ok_or_else(|| Error::Plot("thumbnail buffer too small".into()))?;
                        root.draw(&element).map_err(plot_error)?;
                    }
                    Err(_) => {
                        root.draw(&Rectangle::new(
                            [(x as i32, y as i32), ((x + TILE) as i32, (y + TILE) as i32)],
                            RGBColor(220, 220, 220).filled(),
                        ))
                        .map_err(plot_error)?;
                        root.draw(&Text::new(
                            "(unreadable)",
                            ((x + TILE / 2) as i32, (y + TILE / 2) as i32),
                            (super::language::font_family(), 14)
                                .into_font()
                                .color(&BLACK)
                                .pos(Pos::new(HPos::Center, VPos::Center)),
                        ))
                        .map_err(plot_error)?;
                    }
                }
                for (l, line) in caption.iter().enumerate() {
                    root.draw(&Text::new(
                        line.clone(),
                        (
                            (x + TILE / 2) as i32,
                            (y + TILE + 3 + l as u32 * LINE) as i32,
                        ),
                        (super::language::font_family(), 13)
                            .into_font()
                            .color(&BLACK)
                            .pos(Pos::new(HPos::Center, VPos::Top)),
                    ))
                    .map_err(plot_error)?;
                }
            }
            root.present().map_err(plot_error)?;
        }
        Ok(Picture {
            width,
            height,
            pixels,
        })
    }

    /// One photo, e.g. the one you are about to classify.
    pub fn photo(path: impl AsRef<Path>) -> Result<Picture> {
        let path = path.as_ref();
        // Surface an unreadable photo as an error here rather than a grey tile.
        decode_rgb8(path)?;
        Picture::grid(
            &[Tile {
                path: path.to_path_buf(),
                caption: vec![],
            }],
            1,
        )
    }

    /// The tutorial's "some labelled images": photos captioned with their class.
    pub fn labelled(examples: &[Example], classes: &[String], columns: usize) -> Result<Picture> {
        let tiles: Vec<Tile> = examples
            .iter()
            .map(|e| {
                let class = classes.get(e.label).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "{} has label {}, but there are {} classes",
                        e.path.display(),
                        e.label,
                        classes.len()
                    ))
                })?;
                Ok(Tile {
                    path: e.path.clone(),
                    caption: vec![class.clone()],
                })
            })
            .collect::<Result<_>>()?;
        Picture::grid(&tiles, columns)
    }

    /// The wrong predictions, the most confidently wrong first (fastai's top losses:
    /// [`Metrics::top_losses`]), captioned "prediction: X (p %)" / "label: Y", as many and in
    /// as many columns as `gallery` says.
    ///
    /// ```no_run
    /// # use flowers_kit::prelude::*;
    /// # let metrics: Metrics = unimplemented!();
    /// Picture::mistakes(&metrics, Gallery::default())?;                        // 10, 5 per row
    /// Picture::mistakes(&metrics, Gallery { photos: 20, ..Gallery::default() })?;
    /// # Ok::<(), flowers_kit::Error>(())
    /// ```
    pub fn mistakes(metrics: &Metrics, gallery: Gallery) -> Result<Picture> {
        let Gallery {
            photos: max,
            columns,
        } = gallery;
        let name = |i: usize| {
            metrics
                .classes
                .get(i)
                .cloned()
                .expect("invariant: Metrics labels index its class list")
        };
        let tiles: Vec<Tile> = metrics
            .top_losses()
            .into_iter()
            .take(max)
            .map(|m| Tile {
                path: m.path.clone(),
                caption: super::language::mistake_captions(
                    &name(m.prediction),
                    m.probability,
                    &name(m.label),
                )
                .to_vec(),
            })
            .collect();
        if tiles.is_empty() {
            return Err(Error::InvalidArgument(
                "no misclassified photos to show: every prediction was right".into(),
            ));
        }
        Picture::grid(&tiles, columns)
    }

    /// Width and height in pixels.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// PNG bytes.
    pub fn png(&self) -> Result<Vec<u8>> {
        encode_png(self.width, self.height, self.pixels.clone())
    }

    /// Saves as PNG (the only format for photos).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        if extension(path).as_deref() != Some("png") {
            return Err(Error::InvalidArgument(format!(
                "photo figures are saved as .png, not {}",
                path.display()
            )));
        }
        write_atomically(path, &self.png()?)
    }

    /// Shows the picture inline in an evcxr notebook (PNG).
    pub fn evcxr_display(&self) {
        match self.png() {
            Ok(png) => emit_png(&png),
            Err(e) => println!("Error: {e}"),
        }
    }
}

/// The photo scaled to fit a `TILE` square: (width, height, RGB bytes).
/// A photo scaled to fit a tile (width, height, RGB), or why it could not be read; and its
/// caption lines.
pub(super) type Thumbnail = (Result<(u32, u32, Vec<u8>)>, Vec<String>);

/// Most views [`Picture::views`] draws.
pub const MAX_VIEWS_SHOWN: usize = 64;

/// Most photos one picture shows: a 10 × 100 grid is already 40 MB of pixels, and the sizes
/// stay far from `u32`'s range.
pub const MAX_TILES: usize = 1_000;

/// Errors unless a picture of `count` photos is 1 to [`MAX_TILES`] (checked before any
/// photo is decoded).
fn check_tiles(count: usize) -> Result<()> {
    if count == 0 || count > MAX_TILES {
        return Err(Error::InvalidArgument(format!(
            "a picture shows 1 to {MAX_TILES} photos, not {count}"
        )));
    }
    Ok(())
}

/// `rgb` scaled to fit a square tile.
pub(super) fn fit(rgb: &image::RgbImage) -> (u32, u32, Vec<u8>) {
    let (w, h) = rgb.dimensions();
    let scale = TILE as f32 / w.max(h) as f32;
    let (tw, th) = (
        ((w as f32 * scale).round() as u32).clamp(1, TILE),
        ((h as f32 * scale).round() as u32).clamp(1, TILE),
    );
    let small = image::imageops::resize(rgb, tw, th, image::imageops::FilterType::Triangle);
    (tw, th, small.into_raw())
}

/// Encodes RGB pixels as PNG.
pub(crate) fn encode_png(width: u32, height: u32, pixels: Vec<u8>) -> Result<Vec<u8>> {
    let image = image::RgbImage::from_raw(width, height, pixels)
        .ok_or_else(|| Error::Plot("image buffer has the wrong size".into()))?;
    let mut out = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| Error::Plot(format!("cannot encode PNG: {e}")))?;
    Ok(out.into_inner())
}
