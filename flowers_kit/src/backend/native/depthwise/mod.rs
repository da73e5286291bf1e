//! Depthwise convolutions, vectorised over channels: the layer's description and the
//! dispatch to the widest kernel the CPU has — explicit AVX-512 ([`avx512`]) and AVX2
//! ([`avx2`]) kernels, the bounds-checked loop ([`portable`]) on any other CPU.
//!
//! The explicit kernels run the image's border columns and rows too. Border columns go to
//! their `edges` (the taps inside the image only, accumulated in registers); the interior
//! columns of a border row go to the interior loop over the window rows inside the image,
//! which loads each tap once for a group of columns. Border pixels went through the
//! bounds-checked loop until 2026-12-08, which adds into the output in memory tap by tap:
//! on the small maps of α = 0.35 at 128 px (4×4 to 16×16) a fifth to three quarters of
//! each depthwise layer's pixels are border pixels, 22 % of MobileNet V2 0.35/128's
//! depthwise work. Running the border rows' interior on the interior loop instead of
//! `edges` (which loads a tap for every pixel) made 3×3 layers of 4×4 to 64×64 pixels
//! 5–10 % faster alone on a Zen 4 (one core, 2026-12-08).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod portable;

use super::eltwise::activate;
use super::isa::Kernels;
use super::threads::Threads;
use crate::backend::Conv;
use crate::models::graph::Activation;

/// Output columns the explicit kernels compute together: each input vector loaded once
/// serves every column of the group whose window covers it.
#[cfg(target_arch = "x86_64")]
const GROUP: usize = 4;

/// The window rows of an output row that lie inside the image: taps `first..end`, the
/// first of them over input row `input`. All of them (`0..kh`) except in the rows whose
/// window leaves the image above or below (the first and last of a 3×3 layer padded by
/// one).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct TapRows {
    input: usize,
    first: usize,
    end: usize,
}

/// Defines an explicit kernel module's `row`, compiled with `$features`: the module's own
/// `edges` on the columns whose window leaves the image (only the taps inside it, for any
/// window shape), and on the others its `group::<KH, KW, S, RELU6, N>` (`N` output columns
/// from `ox`, every channel), for each window shape it is written for as constants: 3×3
/// and 5×5, stride 1 or 2, with or without ReLU6, and for the window's rows: all of them
/// (`FULL`, a loop the compiler writes out) or those inside the image ([`TapRows`]). At
/// stride 1, `$stride_one` columns at a time first, then [`GROUP`], two and one.
#[cfg(target_arch = "x86_64")]
macro_rules! explicit_row {
    ($features:literal, stride_one: $stride_one:expr) => {
        /// # Safety
        /// The CPU has the instruction sets this function is compiled for.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn row(layer: &Depthwise, oy: usize, row: &mut [f32]) {
            let (rows, interior) = layer.explicit_interior(oy, row);
            let out = row.as_mut_ptr();
            // SAFETY: the caller checked the instruction sets; `explicit_interior` asserted
            // the lengths `edges` relies on (it reads only taps inside the image) and the
            // furthest addresses `group` forms on the interior (columns, rows and channels
            // only grow towards them); masked lanes are neither read nor written.
            unsafe {
                edges(layer, oy, out, 0..interior.start);
                edges(layer, oy, out, interior.end..row.len() / layer.c);
                let Some(rows) = rows else {
                    return;
                };
                match (layer.kernel, layer.stride, layer.relu6) {
                    ((3, 3), 1, true) => columns::<3, 3, 1, true>(layer, rows, out, interior),
                    ((3, 3), 1, false) => columns::<3, 3, 1, false>(layer, rows, out, interior),
                    ((3, 3), 2, true) => columns::<3, 3, 2, true>(layer, rows, out, interior),
                    ((3, 3), 2, false) => columns::<3, 3, 2, false>(layer, rows, out, interior),
                    ((5, 5), 1, true) => columns::<5, 5, 1, true>(layer, rows, out, interior),
                    ((5, 5), 1, false) => columns::<5, 5, 1, false>(layer, rows, out, interior),
                    ((5, 5), 2, true) => columns::<5, 5, 2, true>(layer, rows, out, interior),
                    ((5, 5), 2, false) => columns::<5, 5, 2, false>(layer, rows, out, interior),
                    _ => unreachable!("invariant: explicit_interior is empty for other windows"),
                }
            }
        }

        /// Output columns `columns` (all inside the image) of the row at `out`, every
        /// channel, over the window rows `rows`: on a loop over the whole window's rows
        /// written out where they are all inside, else (a row whose window leaves the
        /// image above or below) on one over the rows inside.
        ///
        /// # Safety
        /// As `row`'s, for a `KH × KW` window with stride `S`, with every value read and
        /// written inside its slice.
        #[inline(always)]
        unsafe fn columns<const KH: usize, const KW: usize, const S: usize, const RELU6: bool>(
            layer: &Depthwise,
            rows: TapRows,
            out: *mut f32,
            columns: std::ops::Range<usize>,
        ) {
            if rows.first == 0 && rows.end == KH {
                groups::<KH, KW, S, RELU6, true>(layer, rows, out, columns)
            } else {
                groups::<KH, KW, S, RELU6, false>(layer, rows, out, columns)
            }
        }

        /// Output columns `columns` (all inside the image) of the row at `out`, every
        /// channel: at stride 1 `$stride_one` at a time, then [`GROUP`], two, one (`FULL`:
        /// `rows` are the whole window's).
        ///
        /// # Safety
        /// As [`columns`].
        #[inline(always)]
        unsafe fn groups<
            const KH: usize,
            const KW: usize,
            const S: usize,
            const RELU6: bool,
            const FULL: bool,
        >(
            layer: &Depthwise,
            rows: TapRows,
            out: *mut f32,
            columns: std::ops::Range<usize>,
        ) {
            let mut ox = columns.start;
            if S == 1 {
                while ox + $stride_one <= columns.end {
                    group::<KH, KW, S, RELU6, { $stride_one }, FULL>(layer, rows, out, ox);
                    ox += $stride_one;
                }
            }
            while ox + GROUP <= columns.end {
                group::<KH, KW, S, RELU6, GROUP, FULL>(layer, rows, out, ox);
                ox += GROUP;
            }
            if ox + 2 <= columns.end {
                group::<KH, KW, S, RELU6, 2, FULL>(layer, rows, out, ox);
                ox += 2;
            }
            while ox < columns.end {
                group::<KH, KW, S, RELU6, 1, FULL>(layer, rows, out, ox);
                ox += 1;
            }
        }
    };
}
#[cfg(target_arch = "x86_64")]
use explicit_row;

/// One depthwise layer's fixed inputs: explicit padding, then bias and optionally ReLU6.
#[derive(Clone, Copy)]
pub(super) struct Depthwise<'a> {
    input: &'a [f32],
    h: usize,
    w: usize,
    c: usize,
    stride: usize,
    kernel: (usize, usize),
    /// Padding (top, left); the bottom and right follow from the output size.
    pad: (usize, usize),
    /// `[kh·kw, c]`, rows in (ky, kx) order.
    weights: &'a [f32],
    bias: &'a [f32],
    relu6: bool,
    /// Any other activation, applied to each output row while it is in L1.
    then: Activation,
    kernels: Kernels,
}

impl<'a> Depthwise<'a> {
    /// Depthwise `conv` on an `(h, w)` input, with `pad_top` rows of padding above it
    /// (ReLU6 is applied in the kernel, another activation to each row after it).
    pub(super) fn of(
        conv: &'a Conv,
        input: &'a [f32],
        (h, w): (usize, usize),
        pad_top: usize,
        kernels: Kernels,
    ) -> Depthwise<'a> {
        Depthwise {
            input,
            h,
            w,
            c: conv.cin,
            stride: conv.stride,
            kernel: conv.kernel,
            pad: (pad_top, conv.pad[2]),
            weights: &conv.weights,
            bias: &conv.bias,
            relu6: conv.activation == Activation::Relu6,
            then: match conv.activation {
                Activation::Relu6 => Activation::Linear,
                other => other,
            },
            kernels,
        }
    }

    /// The whole `[ho, wo, c]` output, row by row (rows shared among `threads` for a large
    /// layer).
    pub(super) fn run(&self, output: &mut [f32], (ho, wo): (usize, usize), threads: Threads) {
        let (kh, kw) = self.kernel;
        // The AVX-512 kernel's unchecked loads rely on these lengths (see its SAFETY note).
        assert!(
            self.c > 0
                && self.stride > 0
                && self.input.len() == self.h * self.w * self.c
                && self.weights.len() == kh * kw * self.c
                && self.bias.len() == self.c
                && output.len() == ho * wo * self.c,
            "depthwise buffers do not match the layer's shape"
        );
        let row_len = wo * self.c;
        let split = threads.for_work(output.len() * kh * kw);
        threads.chunks_mut(output, row_len, split, |oy, row| {
            self.row(oy, row);
            activate(row, self.then, self.kernels);
        });
    }

    /// One output row, dispatched to the widest vector unit available.
    fn row(&self, oy: usize, row: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            // `NativeNetwork::with_kernels` refused kernels this CPU lacks; checked again
            // here because the safety of the calls below rests on it.
            if self.kernels == Kernels::Avx512 && Kernels::Avx512.is_supported() {
                // SAFETY: the CPU supports AVX-512 (F and VL), AVX2 and FMA, checked just
                // above.
                return unsafe { avx512::row(self, oy, row) };
            }
            if self.kernels != Kernels::Portable && Kernels::Avx2.is_supported() {
                // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                return unsafe { avx2::row(self, oy, row) };
            }
        }
        self.checked(oy, row, 0..row.len() / self.c)
    }
}

#[cfg(target_arch = "x86_64")]
impl Depthwise<'_> {
    /// Splits output row `oy` for an explicit kernel: the window rows inside the image,
    /// where there are some and the kernel has an explicit loop for the window's shape, and
    /// the interior columns (those whose window lies inside horizontally; empty
    /// otherwise), with the check the unchecked loads rely on: the furthest input and
    /// output values the interior touches (the window of its last column, in its last row
    /// inside the image, last channel) lie inside their buffers, and so do the image, the
    /// taps and the bias that the border columns read. A row whose window leaves the image
    /// above or below still runs its interior columns on the explicit loop, over the window
    /// rows inside.
    #[inline(always)]
    fn explicit_interior(
        &self,
        oy: usize,
        row: &[f32],
    ) -> (Option<TapRows>, std::ops::Range<usize>) {
        let (kh, kw) = self.kernel;
        let (stride, pad_x) = (self.stride, self.pad.1);
        let wo = row.len() / self.c;
        assert!(
            self.input.len() >= self.h * self.w * self.c
                && self.weights.len() >= kh * kw * self.c
                && self.bias.len() >= self.c
                && wo * self.c == row.len(),
            "depthwise layer outside its buffers"
        );
        let known = matches!((kh, kw), (3, 3) | (5, 5)) && matches!(self.stride, 1 | 2);
        let (ky, _, _) = self.taps_inside(oy, 0);
        if !known || ky.is_empty() {
            return (None, 0..0);
        }
        let rows = TapRows {
            input: oy * stride + ky.start - self.pad.0,
            first: ky.start,
            end: ky.end,
        };
        // From the first ox with ox·stride ≥ pad_x to the last with
        // ox·stride − pad_x + kw − 1 ≤ w − 1.
        let first = pad_x.div_ceil(stride);
        let last = (self.w + pad_x)
            .checked_sub(kw)
            .map_or(0, |v| v / stride + 1)
            .min(wo);
        let interior = first.min(last)..last;
        if interior.is_empty() {
            return (None, 0..0);
        }
        let last_input = ((rows.input + ky.len() - 1) * self.w + (interior.end - 1) * stride + kw
            - pad_x)
            * self.c;
        assert!(
            last_input <= self.input.len(),
            "depthwise interior outside its buffers"
        );
        (Some(rows), interior)
    }

    /// The taps of output pixel (`oy`, `ox`) whose input lies inside the image — window
    /// rows `ky`, window columns `kx` — and the input pixel (row-major index) under the
    /// first of them: an explicit kernel's border columns read only these. Both ranges may
    /// be empty (a window wholly in the padding), and then the pixel is meaningless.
    #[inline(always)]
    fn taps_inside(
        &self,
        oy: usize,
        ox: usize,
    ) -> (std::ops::Range<usize>, std::ops::Range<usize>, usize) {
        let (kh, kw) = self.kernel;
        let (pad_y, pad_x) = self.pad;
        let inside = |o: usize, pad: usize, size: usize, k: usize| {
            let at = o * self.stride;
            let first = pad.saturating_sub(at).min(k);
            let end = (size + pad).saturating_sub(at).min(k).max(first);
            first..end
        };
        let ky = inside(oy, pad_y, self.h, kh);
        let kx = inside(ox, pad_x, self.w, kw);
        let pixel = if ky.is_empty() || kx.is_empty() {
            0
        } else {
            (oy * self.stride + ky.start - pad_y) * self.w + ox * self.stride + kx.start - pad_x
        };
        (ky, kx, pixel)
    }

    /// Where a border column's channel `block` starts, given its
    /// [`taps_inside`](Self::taps_inside): the input under the first tap inside the image,
    /// and that tap's weights. Wrapping: a window wholly in the padding (no taps, nothing
    /// read) may point past the buffers.
    #[inline(always)]
    fn edge_starts(
        &self,
        (ky, kx, pixel): &(std::ops::Range<usize>, std::ops::Range<usize>, usize),
        block: usize,
    ) -> (*const f32, *const f32) {
        let (c, kw) = (self.c, self.kernel.1);
        (
            self.input.as_ptr().wrapping_add(pixel * c + block),
            self.weights
                .as_ptr()
                .wrapping_add((ky.start * kw + kx.start) * c + block),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel set this CPU has gives the bounds-checked loop's output, for channel
    /// counts that fill whole registers, groups of four registers, and that leave tails of
    /// each width (1–7, 8, 9–15), both window sizes and strides the explicit kernels are
    /// written for and others (1×1, 7×7, stride 3: border columns only), with and without
    /// ReLU6, odd and even image sizes (partial groups of columns), images of one and two
    /// rows (windows that leave the image above and below at once), and each padding
    /// vertically against each horizontally: half the window, none, the window less one,
    /// the whole window (windows wholly in the padding), and TensorFlow's `same` (at stride
    /// 2 on an even size: none above, one row below).
    #[test]
    fn every_kernel_set_matches_the_checked_loop() {
        let value = |i: usize, salt: usize| ((i * 7919 + salt * 104_729) % 211) as f32 / 50.0 - 2.0;
        let windows = [
            ((3, 3), 1, true),
            ((3, 3), 2, false),
            ((5, 5), 1, false),
            ((5, 5), 2, true),
            ((1, 1), 1, true),
            ((7, 7), 1, false),
            ((3, 3), 3, true),
        ];
        // (Padding above or left, output size) on an `n`-sized side for a `k` window: none
        // where the window does not fit the padded side.
        let symmetric = |n: usize, k: usize, pad: usize, stride: usize| {
            (n + 2 * pad)
                .checked_sub(k)
                .map(|room| (pad, room / stride + 1))
        };
        let same = |n: usize, k: usize, stride: usize| {
            let out = n.div_ceil(stride);
            (((out - 1) * stride + k).saturating_sub(n) / 2, out)
        };
        let sides = |n: usize, k: usize, stride: usize| {
            [k / 2, 0, k - 1, k]
                .into_iter()
                .filter_map(move |pad| symmetric(n, k, pad, stride))
                .chain([same(n, k, stride)])
        };
        for c in [1, 5, 8, 9, 15, 16, 17, 24, 40, 56, 64, 72, 100] {
            let cases = windows
                .into_iter()
                .flat_map(|window @ (kernel, stride, _)| {
                    [(11, 13), (12, 14), (1, 13), (2, 14)]
                        .into_iter()
                        .flat_map(move |(h, w)| {
                            sides(h, kernel.0, stride).flat_map(move |y| {
                                sides(w, kernel.1, stride).map(move |x| (window, (h, w), y, x))
                            })
                        })
                });
            for ((kernel, stride, relu6), (h, w), (pad_y, ho), (pad_x, wo)) in cases {
                let pad = (pad_y, pad_x);
                let input: Vec<f32> = (0..h * w * c).map(|i| value(i, 1)).collect();
                let weights: Vec<f32> = (0..kernel.0 * kernel.1 * c).map(|i| value(i, 2)).collect();
                let bias: Vec<f32> = (0..c).map(|i| value(i, 3)).collect();
                let layer = |kernels| Depthwise {
                    input: &input,
                    h,
                    w,
                    c,
                    stride,
                    kernel,
                    pad,
                    weights: &weights,
                    bias: &bias,
                    relu6,
                    then: Activation::Linear,
                    kernels,
                };
                let mut want = vec![0f32; ho * wo * c];
                let portable = layer(Kernels::Portable);
                for (oy, row) in want.chunks_exact_mut(wo * c).enumerate() {
                    portable.checked(oy, row, 0..wo);
                }
                for kernels in Kernels::available() {
                    let mut got = vec![f32::NAN; ho * wo * c];
                    layer(kernels).run(&mut got, (ho, wo), Threads::One);
                    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - e).abs() <= 1e-5 * e.abs().max(1.0),
                            "{kernels:?}, {c} channels, {kernel:?}/{stride}, pad {pad:?}, value {i}: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }
}
