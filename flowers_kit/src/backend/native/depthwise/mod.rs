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
            activate(row, self.then);
        });
    }

    /// One output row, dispatched to the widest vector unit available.
    fn row(&self, oy: usize, row: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            // `NativeNetwork::with_kernels` refused kernels this CPU lacks; checked again
            // here because the safety of the calls below rests on it.
            if self.kernels == Kernels::Avx512
                && self.kernel.0 * self.kernel.1 <= avx512::MAX_TAPS
                && is_x86_feature_detected!("avx512f")
            {
                // SAFETY: the CPU supports AVX-512F, checked just above.
                return unsafe { avx512::row(self, oy, row) };
            }
            if self.kernels != Kernels::Portable
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                return unsafe {
                    if matches!(self.kernel, (3, 3) | (5, 5)) {
                        avx2::row(self, oy, row)
                    } else {
                        avx2::checked_row(self, oy, row)
                    }
                };
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
}
