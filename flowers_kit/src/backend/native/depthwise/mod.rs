//! Depthwise convolutions, vectorised over channels: the layer's description and the
//! dispatch to the widest kernel the CPU has — explicit AVX-512 ([`avx512`]) and AVX2
//! ([`avx2`]) kernels inside the image, the bounds-checked loop ([`portable`]) at its borders
//! and on any other CPU.

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

/// Defines an explicit kernel module's `row`, compiled with `$features`: the bounds-checked
/// loop on the columns whose window leaves the image ([`Depthwise::explicit_interior`]), and
/// on the others the module's own `group::<KH, KW, S, RELU6, N>` (`N` output columns from
/// `ox`, every channel), [`GROUP`] columns at a time, for each window shape it is written
/// for as constants: 3×3 and 5×5, stride 1 or 2, with or without ReLU6.
#[cfg(target_arch = "x86_64")]
macro_rules! explicit_row {
    ($features:literal) => {
        /// # Safety
        /// The CPU has the instruction sets this function is compiled for.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn row(layer: &Depthwise, oy: usize, row: &mut [f32]) {
            let Some((top, interior)) = layer.explicit_interior(oy, row) else {
                return;
            };
            let out = row.as_mut_ptr();
            // SAFETY: the caller checked the instruction sets; every address `group` forms
            // is at most the ones `explicit_interior` asserted (columns, rows and channels
            // only grow towards them), and masked lanes are neither read nor written.
            unsafe {
                match (layer.kernel, layer.stride, layer.relu6) {
                    ((3, 3), 1, true) => columns::<3, 3, 1, true>(layer, top, out, interior),
                    ((3, 3), 1, false) => columns::<3, 3, 1, false>(layer, top, out, interior),
                    ((3, 3), 2, true) => columns::<3, 3, 2, true>(layer, top, out, interior),
                    ((3, 3), 2, false) => columns::<3, 3, 2, false>(layer, top, out, interior),
                    ((5, 5), 1, true) => columns::<5, 5, 1, true>(layer, top, out, interior),
                    ((5, 5), 1, false) => columns::<5, 5, 1, false>(layer, top, out, interior),
                    ((5, 5), 2, true) => columns::<5, 5, 2, true>(layer, top, out, interior),
                    ((5, 5), 2, false) => columns::<5, 5, 2, false>(layer, top, out, interior),
                    _ => layer.checked(oy, row, interior),
                }
            }
        }

        /// Output columns `columns` (all inside the image) of the row at `out`, every
        /// channel: [`GROUP`] at a time, then one at a time.
        ///
        /// # Safety
        /// As `row`'s, for a `KH × KW` window with stride `S`, with every value read and
        /// written inside its slice.
        #[inline(always)]
        unsafe fn columns<const KH: usize, const KW: usize, const S: usize, const RELU6: bool>(
            layer: &Depthwise,
            top: usize,
            out: *mut f32,
            columns: std::ops::Range<usize>,
        ) {
            let mut ox = columns.start;
            while ox + GROUP <= columns.end {
                group::<KH, KW, S, RELU6, GROUP>(layer, top, out, ox);
                ox += GROUP;
            }
            while ox < columns.end {
                group::<KH, KW, S, RELU6, 1>(layer, top, out, ox);
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
    /// Splits output row `oy` for an explicit kernel: runs the bounds-checked loop on the
    /// columns whose window leaves the image (on the whole row when the window leaves it
    /// vertically, or when `explicit` is false), and returns the window's top input row and
    /// the interior columns left to the caller, if any.
    #[inline(always)]
    fn interior(
        &self,
        oy: usize,
        row: &mut [f32],
        explicit: bool,
    ) -> Option<(usize, std::ops::Range<usize>)> {
        let (kh, kw) = self.kernel;
        let (stride, pad_x) = (self.stride, self.pad.1);
        let wo = row.len() / self.c;
        let top = (oy * stride).checked_sub(self.pad.0);
        let rows_inside = top.is_some_and(|t| t + kh <= self.h);
        let interior = if rows_inside && explicit {
            // From the first ox with ox·stride ≥ pad_x to the last with
            // ox·stride − pad_x + kw − 1 ≤ w − 1.
            let first = pad_x.div_ceil(stride);
            let last = (self.w + pad_x)
                .checked_sub(kw)
                .map_or(0, |v| v / stride + 1)
                .min(wo);
            first.min(last)..last
        } else {
            0..0
        };
        self.checked(oy, row, 0..interior.start);
        self.checked(oy, row, interior.end..wo);
        top.filter(|_| !interior.is_empty()).map(|t| (t, interior))
    }

    /// [`Depthwise::interior`] for the explicit kernels, which run the window shapes of
    /// `explicit_row` (the bounds-checked loop takes the whole row for any other), with
    /// the check their unchecked loads rely on: the furthest input and output values the
    /// interior touches (the window of its last column, in its bottom row, last channel)
    /// lie inside their buffers.
    #[inline(always)]
    fn explicit_interior(
        &self,
        oy: usize,
        row: &mut [f32],
    ) -> Option<(usize, std::ops::Range<usize>)> {
        let (kh, kw) = self.kernel;
        let known = matches!((kh, kw), (3, 3) | (5, 5)) && matches!(self.stride, 1 | 2);
        let (top, interior) = self.interior(oy, row, known)?;
        let last_input =
            ((top + kh - 1) * self.w + (interior.end - 1) * self.stride + kw - self.pad.1) * self.c;
        assert!(
            last_input <= self.input.len()
                && interior.end * self.c <= row.len()
                && kh * kw * self.c <= self.weights.len()
                && self.c <= self.bias.len(),
            "depthwise interior outside its buffers"
        );
        Some((top, interior))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel set this CPU has gives the bounds-checked loop's output, for channel
    /// counts that fill whole registers and that leave tails of each width (1–7, 8, 9–15),
    /// both window sizes and strides, with and without ReLU6, odd image sizes (partial
    /// groups of columns) and padding on either side.
    #[test]
    fn every_kernel_set_matches_the_checked_loop() {
        let value = |i: usize, salt: usize| ((i * 7919 + salt * 104_729) % 211) as f32 / 50.0 - 2.0;
        for c in [1, 5, 8, 9, 15, 16, 17, 24, 40, 56] {
            for (kernel, stride, relu6) in [
                ((3, 3), 1, true),
                ((3, 3), 2, false),
                ((5, 5), 1, false),
                ((5, 5), 2, true),
                ((1, 1), 1, true),
            ] {
                let (h, w) = (11, 13);
                let pad = (kernel.0 / 2, kernel.1 / 2);
                let (ho, wo) = (
                    (h + 2 * pad.0 - kernel.0) / stride + 1,
                    (w + 2 * pad.1 - kernel.1) / stride + 1,
                );
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
                            "{kernels:?}, {c} channels, {kernel:?}/{stride}, value {i}: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }
}
