//! The bounds-checked depthwise loop: the portable kernel set on any CPU, and the reference
//! the explicit kernels are tested against.

use super::Depthwise;

impl Depthwise<'_> {
    /// The bounds-checked kernel for output columns `columns` of row `oy`; inlined into the
    /// feature-specific callers, where the channel loops become vector instructions.
    #[inline(always)]
    pub(super) fn checked(&self, oy: usize, row: &mut [f32], columns: std::ops::Range<usize>) {
        // Constant window sizes let the compiler unroll the tap loops of the common kernels.
        match self.kernel {
            (3, 3) => self.checked_with(oy, row, columns, 3, 3),
            (5, 5) => self.checked_with(oy, row, columns, 5, 5),
            (kh, kw) => self.checked_with(oy, row, columns, kh, kw),
        }
    }

    #[inline(always)]
    #[allow(clippy::manual_clamp)]
    fn checked_with(
        &self,
        oy: usize,
        row: &mut [f32],
        columns: std::ops::Range<usize>,
        kh: usize,
        kw: usize,
    ) {
        let Depthwise {
            input,
            h,
            w,
            c,
            stride,
            pad: (pad_y, pad_x),
            weights,
            bias,
            relu6,
            ..
        } = *self;
        for ox in columns {
            let out = &mut row[ox * c..][..c];
            out.copy_from_slice(bias);
            for ky in 0..kh {
                let Some(iy) = (oy * stride + ky).checked_sub(pad_y).filter(|&y| y < h) else {
                    continue;
                };
                for kx in 0..kw {
                    let Some(ix) = (ox * stride + kx).checked_sub(pad_x).filter(|&x| x < w) else {
                        continue;
                    };
                    let pixel = &input[(iy * w + ix) * c..][..c];
                    let tap = &weights[(ky * kw + kx) * c..][..c];
                    for ((o, p), k) in out.iter_mut().zip(pixel).zip(tap) {
                        *o = p.mul_add(*k, *o);
                    }
                }
            }
            if relu6 {
                // max/min rather than clamp: clamp's NaN-preserving select vectorises worse.
                for o in out.iter_mut() {
                    *o = o.max(0.0).min(6.0);
                }
            }
        }
    }
}
