//! Window ops on dfdx tensors without `conv2d` (which needs dfdx's nightly feature): every
//! tap of every output pixel gathered with one `gather` over precomputed row indices.

use dfdx::shapes::{Axis, HasShape};
use dfdx::tensor::{Merge, NoneTape, Tape, Tensor, TensorFrom};
use dfdx::tensor_ops::*;

use super::{Matrix, Taps};
use crate::device::dfdx_error as backend_error;
use crate::device::DfdxDevice;
use crate::error::Result;
use crate::models::graph::Shape;

/// Every tap of every output pixel of `window`, `[pixels, taps, channels]`; taps outside the
/// image read `fill`. `x` may carry a tape (fine-tuning's depthwise convolutions).
pub(super) fn gather_taps<D: DfdxDevice, T>(
    x: Tensor<(usize, usize), f32, D, T>,
    window: &Window,
    fill: f32,
) -> Result<Taps<D, T>>
where
    T: Tape<f32, D> + Merge<NoneTape>,
{
    let dev = x.device().clone();
    let padded = with_fill_row(x, fill)?;
    let idx: Tensor<(usize, usize), usize, D> =
        dev.tensor((window.indices.clone(), (window.pixels(), window.taps())));
    padded.try_gather(idx).map_err(backend_error)
}

/// A one-tap window (padding, cropping): `[pixels, channels]`.
pub(super) fn gather_one<D: DfdxDevice, T>(
    x: Tensor<(usize, usize), f32, D, T>,
    window: &Window,
) -> Result<Tensor<(usize, usize), f32, D, T>>
where
    T: Tape<f32, D> + Merge<NoneTape>,
{
    let dev = x.device().clone();
    let padded = with_fill_row(x, 0.0)?;
    let idx: Tensor<(usize,), usize, D> = dev.tensor((window.indices.clone(), (window.pixels(),)));
    padded.try_gather(idx).map_err(backend_error)
}

/// `x` with one more row of `fill` at the end (what padded taps point at).
fn with_fill_row<D: DfdxDevice, T>(
    x: Tensor<(usize, usize), f32, D, T>,
    fill: f32,
) -> Result<Tensor<(usize, usize), f32, D, T>>
where
    T: Tape<f32, D> + Merge<NoneTape>,
{
    let c = x.shape().1;
    let row: Matrix<D> = x.device().tensor((vec![fill; c], (1, c)));
    (x, row).try_concat_along(Axis::<0>).map_err(backend_error)
}

/// Where each tap of each output pixel reads, in `[n·h·w (+ the fill row), c]`.
#[derive(Debug, Clone)]
pub(super) struct Window {
    n: usize,
    h: usize,
    w: usize,
    kernel: (usize, usize),
    stride: usize,
    /// (top, left) padding — or, for a crop, how many rows and columns are skipped.
    pad: (usize, usize),
    offset: (usize, usize),
    ho: usize,
    wo: usize,
    /// `[pixels, taps]` row indices; `n·h·w` is the fill row.
    indices: Vec<usize>,
    /// Valid taps per output pixel.
    valid: Vec<usize>,
}

impl Window {
    pub(super) fn new(
        n: usize,
        [h, w, _]: Shape,
        kernel: (usize, usize),
        stride: usize,
        pad: [usize; 4],
    ) -> Window {
        let stride = stride.max(1);
        let ho = (h + pad[0] + pad[1]).saturating_sub(kernel.0) / stride + 1;
        let wo = (w + pad[2] + pad[3]).saturating_sub(kernel.1) / stride + 1;
        Window {
            n,
            h,
            w,
            kernel,
            stride,
            pad: (pad[0], pad[2]),
            offset: (0, 0),
            ho,
            wo,
            indices: Vec::new(),
            valid: Vec::new(),
        }
        .recomputed()
    }

    /// Cropping an `[h, w, c]` map to `[ho, wo, c]` from (top, left).
    pub(super) fn crop(
        n: usize,
        from: Shape,
        [ho, wo, _]: Shape,
        (top, left): (usize, usize),
    ) -> Window {
        let mut window = Window::new(n, from, (1, 1), 1, [0; 4]);
        window.ho = ho;
        window.wo = wo;
        window.offset = (top, left);
        window.recomputed()
    }

    /// One over the number of valid taps of each output pixel (an average over them).
    pub(super) fn inverse_valid(&self) -> Vec<f32> {
        self.valid.iter().map(|&v| 1.0 / v.max(1) as f32).collect()
    }

    fn recomputed(mut self) -> Window {
        let (kh, kw) = self.kernel;
        let fill = self.n * self.h * self.w;
        self.indices = Vec::with_capacity(self.pixels() * kh * kw);
        self.valid = Vec::with_capacity(self.pixels());
        for b in 0..self.n {
            for oy in 0..self.ho {
                for ox in 0..self.wo {
                    let mut valid = 0;
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * self.stride + ky + self.offset.0)
                                .checked_sub(self.pad.0)
                                .filter(|&y| y < self.h);
                            let ix = (ox * self.stride + kx + self.offset.1)
                                .checked_sub(self.pad.1)
                                .filter(|&x| x < self.w);
                            self.indices.push(match (iy, ix) {
                                (Some(y), Some(x)) => {
                                    valid += 1;
                                    (b * self.h + y) * self.w + x
                                }
                                _ => fill,
                            });
                        }
                    }
                    self.valid.push(valid);
                }
            }
        }
        self
    }

    pub(super) fn pixels(&self) -> usize {
        self.n * self.ho * self.wo
    }

    /// Taps per output pixel: the kernel's height times its width.
    pub(super) fn taps(&self) -> usize {
        self.kernel.0 * self.kernel.1
    }
}
