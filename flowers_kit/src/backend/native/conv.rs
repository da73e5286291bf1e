//! Convolutions as matrix products: 1×1 directly, k×k through windows read in place by the
//! packed product (from the image, or from a zero-padded copy of a band of its rows for the
//! 3-channel stems), or through an im2col copy with gemm where the weights are not packed.

use super::depthwise::Depthwise;
use super::eltwise::{activate, affine as affine_channels, bias_activate};
use super::gemm::{product_here, View};
use super::isa::Kernels;
use super::packed::{self, Epilogue, PackedWeights};
use super::pool::Pool;
use super::scratch::{self, Kind, PATCHES};
use super::threads::Threads;
use crate::backend::Conv;
use crate::models::graph::{Activation, Shape};

/// One convolution of a `[h, w, cin]` input into `out` (`[ho, wo, cout]`).
#[allow(clippy::too_many_arguments)]
pub(super) fn run_conv(
    conv: &Conv,
    packed: Option<&PackedWeights>,
    kernels: Kernels,
    input: &[f32],
    [h, w, cin]: Shape,
    out: &mut [f32],
    [ho, wo, cout]: Shape,
    residual: Option<&[f32]>,
    affine: Option<Affine>,
    pool: &mut Pool,
    threads: Threads,
) {
    if conv.depthwise {
        Depthwise::of(conv, input, (h, w), conv.pad[0], kernels).run(out, (ho, wo), threads);
        return;
    }
    // The product's left operand: the input itself for a 1×1 convolution, else its patches:
    // read in place by the packed product where each tap is a run of at least
    // WINDOW_CHANNELS values in at most MAX_TAPS taps, else gathered: from padded bands of
    // rows where the weights are packed (the 3-channel stems), by im2col where they are not.
    let m = ho * wo;
    let k = conv.kernel.0 * conv.kernel.1 * cin;
    let gathered = gathers_patches(conv, packed.is_some());
    // The plan folds an affine step only into a convolution that gathers its patches.
    assert!(
        affine.is_none() || gathered,
        "invariant: an affine step is gathered only with patches (plan)"
    );
    if let (Some(weights), true) = (packed, gathered) {
        let epilogue = Epilogue::new(conv.activation, residual);
        let dims = (h, w, cin);
        gathered_product(
            input,
            dims,
            conv,
            (ho, wo),
            out,
            weights,
            epilogue,
            affine,
            threads,
        );
        return;
    }
    let windows = !conv.is_pointwise() && !gathered;
    let cols = gathered.then(|| {
        let mut cols = pool.take(m * k);
        im2col(
            input,
            (h, w, cin),
            conv,
            (ho, wo),
            &mut cols,
            affine,
            threads,
        );
        cols
    });
    let a = cols.as_deref().unwrap_or(input);
    match packed {
        Some(weights) => {
            let epilogue = Epilogue::new(conv.activation, residual);
            let operand = if windows {
                packed::Operand::Windows(packed::Windows {
                    input,
                    size: (h, w),
                    channels: cin,
                    kernel: conv.kernel,
                    stride: conv.stride,
                    pad: (conv.pad[0], conv.pad[2]),
                    out_width: wo,
                })
            } else {
                packed::Operand::Rows(a)
            };
            packed::product(out, operand, m, weights, epilogue, threads);
        }
        None => {
            // A linear convolution, or one feeding a residual add, starts from bias
            // (+ addend) and lets gemm accumulate; one followed by an activation lets gemm
            // overwrite, then adds the bias and applies the activation in one pass.
            let accumulate = residual.is_some() || conv.activation == Activation::Linear;
            if accumulate {
                fill_rows(out, &conv.bias, residual);
            }
            matmul(out, a, &conv.weights, (m, k, cout), accumulate, threads);
            if accumulate {
                activate(out, conv.activation, kernels);
            } else {
                bias_activate(out, &conv.bias, conv.activation, kernels);
            }
        }
    }
    if let Some(cols) = cols {
        pool.give(cols);
    }
}

/// Whether `conv` gathers its patches (into padded bands of rows, or by im2col where its
/// weights are not packed) before its product: a k×k convolution whose windows the packed
/// product cannot read from the image in place (too few channels per tap, too many taps, or
/// weights not packed).
pub(super) fn gathers_patches(conv: &Conv, packed: bool) -> bool {
    let read_in_place =
        packed && conv.cin >= WINDOW_CHANNELS && conv.kernel.0 * conv.kernel.1 <= packed::MAX_TAPS;
    !(conv.depthwise || conv.is_pointwise() || read_in_place)
}

/// A per-channel `x · scale + shift` applied to each value as patches are gathered.
#[derive(Clone, Copy)]
pub(super) struct Affine<'a> {
    pub(super) scale: &'a [f32],
    pub(super) shift: &'a [f32],
}

/// The fewest input channels for which the packed product reads a convolution's windows in
/// place rather than from an im2col copy: each tap is one run of the micro-kernel.
const WINDOW_CHANNELS: usize = 16;

/// The `[kh, kw, cin]` patch of every output pixel, zeros for padding: `[ho·wo, kh·kw·cin]`
/// (output rows shared among `threads` for a large layer); with `affine`, of the input
/// after that per-channel affine step (the padding is still zero).
#[allow(clippy::too_many_arguments)]
pub(super) fn im2col(
    input: &[f32],
    dims: (usize, usize, usize),
    conv: &Conv,
    (ho, wo): (usize, usize),
    cols: &mut [f32],
    affine: Option<Affine>,
    threads: Threads,
) {
    let row_len = conv.kernel.0 * conv.kernel.1 * dims.2;
    let rows = &mut cols[..ho * wo * row_len];
    // A copy, not multiply-adds: its length stands for the work.
    let split = threads.for_work(rows.len());
    threads.chunks_mut(rows, wo * row_len, split, |oy, rows| {
        im2col_rows(input, dims, conv, wo, oy..oy + 1, rows, affine)
    });
}

/// The patches of output rows `rows` (`wo` pixels each) into `cols`, as [`im2col`].
fn im2col_rows(
    input: &[f32],
    (h, w, c): (usize, usize, usize),
    conv: &Conv,
    wo: usize,
    rows: std::ops::Range<usize>,
    cols: &mut [f32],
    affine: Option<Affine>,
) {
    if let Some(Affine { scale, shift }) = affine {
        assert!(
            scale.len() == c && shift.len() == c,
            "im2col: the affine step has {} scales and {} shifts for {c} channels",
            scale.len(),
            shift.len()
        );
    }
    // Copies `c`-channel pixels from `from` into `to`, through the affine step if any.
    let copy = |to: &mut [f32], from: &[f32]| match affine {
        None => {
            // An element loop, not a memcpy call: runs of 9–27 values are common.
            for (t, v) in to.iter_mut().zip(from) {
                *t = *v;
            }
        }
        Some(Affine { scale, shift }) => affine_channels(to, from, scale, shift),
    };
    let (kh, kw) = conv.kernel;
    let (pad_y, pad_x) = (conv.pad[0], conv.pad[2]);
    let row_len = kh * kw * c;
    // The affine step tiled along a window row (the identity without one), for the
    // fixed-length copies of the stems' rows (3×3 and 7×7 windows of 3 channels).
    let mut tiled = ([1f32; MAX_RUN], [0f32; MAX_RUN]);
    if let Some(Affine { scale, shift }) = affine {
        for (j, (s, b)) in tiled.0.iter_mut().zip(tiled.1.iter_mut()).enumerate() {
            *s = scale[j % c];
            *b = shift[j % c];
        }
    }
    let inside_run = |to: &mut [f32], from: &[f32]| match kw * c {
        9 => affine_row::<9>(to, from, &tiled),
        21 => affine_row::<21>(to, from, &tiled),
        _ => copy(to, from),
    };
    // Row by row of the window, so that each source row is found once per output row.
    for (oy, out_row) in rows.zip(cols.chunks_exact_mut(wo * row_len)) {
        for ky in 0..kh {
            let source = (oy * conv.stride + ky)
                .checked_sub(pad_y)
                .filter(|&y| y < h)
                .map(|y| &input[y * w * c..(y + 1) * w * c]);
            for (ox, row) in out_row.chunks_exact_mut(row_len).enumerate() {
                let taps = &mut row[ky * kw * c..(ky + 1) * kw * c];
                let Some(source) = source else {
                    taps.fill(0.0);
                    continue;
                };
                // A window row inside the image is one contiguous run of kw·c values.
                let left = (ox * conv.stride).checked_sub(pad_x);
                if let Some(x) = left.filter(|&x| x + kw <= w) {
                    inside_run(taps, &source[x * c..(x + kw) * c]);
                    continue;
                }
                for (kx, tap) in taps.chunks_exact_mut(c).enumerate() {
                    match (ox * conv.stride + kx)
                        .checked_sub(pad_x)
                        .filter(|&x| x < w)
                    {
                        Some(x) => copy(tap, &source[x * c..(x + 1) * c]),
                        None => tap.fill(0.0),
                    }
                }
            }
        }
    }
}

/// Input values one band copies (~64 KB: the band and its product stay in L2).
const BAND_VALUES: usize = 16 * 1024;

/// A packed convolution whose windows cannot be read from the image in place (3-channel
/// stems: taps of 3 values; or more than `MAX_TAPS` taps), band by band of output rows: each
/// band's input rows are copied, zero-padded and through the affine step if any, into a
/// per-thread buffer of ~64 KB, whose windows the packed product then reads in place, a
/// window row at a time. An im2col copy of the band's patches wrote 27 values per output
/// pixel of a 3×3 stride-2 stem where this writes about 12, and cost about twice the
/// product itself (MobileNet V2 0.35/128's stem: 73 µs of 450 per image).
#[allow(clippy::too_many_arguments)]
fn gathered_product(
    input: &[f32],
    dims: (usize, usize, usize),
    conv: &Conv,
    (ho, wo): (usize, usize),
    out: &mut [f32],
    weights: &PackedWeights,
    epilogue: Epilogue,
    affine: Option<Affine>,
    threads: Threads,
) {
    let (kh, kw) = conv.kernel;
    let stride = conv.stride;
    let channels = dims.2;
    // The band's columns: those the windows of a row read, from the left padding on.
    let width = wo.saturating_sub(1) * stride + kw;
    let cout = weights.n();
    let row_out = wo * cout;
    let split = threads.for_work(ho * wo * weights.k() * cout);
    // Even bands, as many as keep each one's input near BAND_VALUES, a multiple of the
    // threads sharing them.
    let per_band = (BAND_VALUES / (stride * width * channels).max(1)).max(1);
    let bands = ho.div_ceil(per_band).div_ceil(split) * split;
    let per_band = ho.div_ceil(bands.max(1)).max(1);
    threads.chunks_mut(out, per_band * row_out, split, |band, out| {
        let first = band * per_band;
        let count = out.len() / row_out.max(1);
        let residual = epilogue
            .residual
            .map(|r| &r[first * row_out..][..out.len()]);
        let rows = count.saturating_sub(1) * stride + kh;
        scratch::catch_up();
        PATCHES.with(|patches| {
            // A band never runs another band inside it on the same thread.
            let mut patches = patches
                .try_borrow_mut()
                .expect("invariant: one gathered band at a time per thread");
            scratch::grow_len(&mut patches, rows * width * channels, Kind::Patches);
            let padded = &mut patches[..rows * width * channels];
            padded_rows(input, dims, conv, first * stride, width, padded, affine);
            let windows = packed::Windows {
                input: padded,
                size: (rows, width),
                channels,
                kernel: conv.kernel,
                stride,
                pad: (0, 0),
                out_width: wo,
            };
            packed::product(
                out,
                packed::Operand::Windows(windows),
                count * wo,
                weights,
                Epilogue {
                    residual,
                    ..epilogue
                },
                Threads::One,
            );
        });
    });
}

/// Rows `top..` of the input padded as `conv` pads it (`top` counted from the top padding),
/// `width` columns from the left padding on, into `band` (`[rows][width][c]`), zeros outside
/// the image and through the affine step (if any) inside it.
fn padded_rows(
    input: &[f32],
    (h, w, c): (usize, usize, usize),
    conv: &Conv,
    top: usize,
    width: usize,
    band: &mut [f32],
    affine: Option<Affine>,
) {
    let (pad_y, pad_x) = (conv.pad[0], conv.pad[2]);
    let left = pad_x.min(width);
    let inside = w.min(width - left);
    let tiled = affine.map(|a| TiledAffine::new(a, c));
    for (r, row) in band.chunks_exact_mut(width * c).enumerate() {
        let Some(y) = (top + r).checked_sub(pad_y).filter(|&y| y < h) else {
            row.fill(0.0);
            continue;
        };
        let (zeros, rest) = row.split_at_mut(left * c);
        zeros.fill(0.0);
        let (values, zeros) = rest.split_at_mut(inside * c);
        let source = &input[y * w * c..][..inside * c];
        match &tiled {
            None => values.copy_from_slice(source),
            Some(tiled) => tiled.apply(values, source),
        }
        zeros.fill(0.0);
    }
}

/// A per-channel affine step tiled over a whole number of pixels, so that a row of
/// `c`-channel pixels is transformed in long runs rather than pixel by pixel (3 values at a
/// time for an RGB image).
struct TiledAffine<'a> {
    affine: Affine<'a>,
    /// `scale` and `shift` repeated over `len` values (a whole number of pixels), or `len`
    /// 0 for pixels too wide to tile (applied pixel by pixel, already long runs).
    scale: [f32; TILED_VALUES],
    shift: [f32; TILED_VALUES],
    len: usize,
}

/// Values of a [`TiledAffine`]'s tile: 16 RGB pixels (a whole number of pixels for any
/// channel count that divides 48), so that such a row runs in whole tiles of a fixed
/// length, which the compiler writes out as vector operations (a 63-value tile ran its
/// last 15 values one at a time: the stem's copy took 3 % of MobileNet V2 0.35/128's time
/// on one core).
const TILED_VALUES: usize = 48;

impl<'a> TiledAffine<'a> {
    fn new(affine: Affine<'a>, c: usize) -> TiledAffine<'a> {
        assert!(
            affine.scale.len() == c && affine.shift.len() == c,
            "padded rows: the affine step has {} scales and {} shifts for {c} channels",
            affine.scale.len(),
            affine.shift.len()
        );
        let len = TILED_VALUES.checked_div(c).map_or(0, |pixels| pixels * c);
        let mut tiled = TiledAffine {
            affine,
            scale: [1.0; TILED_VALUES],
            shift: [0.0; TILED_VALUES],
            len,
        };
        for j in 0..len {
            tiled.scale[j] = affine.scale[j % c];
            tiled.shift[j] = affine.shift[j % c];
        }
        tiled
    }

    /// `to = from · scale + shift`, channel by channel, for a run of whole pixels.
    fn apply(&self, to: &mut [f32], from: &[f32]) {
        if self.len == 0 {
            let c = self.affine.scale.len().max(1);
            for (to, from) in to.chunks_exact_mut(c).zip(from.chunks_exact(c)) {
                affine_channels(to, from, self.affine.scale, self.affine.shift);
            }
            return;
        }
        debug_assert_eq!(to.len(), from.len(), "invariant: rows of the same length");
        let (scale, shift) = (&self.scale[..self.len], &self.shift[..self.len]);
        if self.len != TILED_VALUES {
            for (to, from) in to.chunks_mut(self.len).zip(from.chunks(self.len)) {
                affine_values(to, from, scale, shift);
            }
            return;
        }
        let (tiles, to_rest) = to.as_chunks_mut::<TILED_VALUES>();
        let (from_tiles, from_rest) = from.as_chunks::<TILED_VALUES>();
        for (to, from) in tiles.iter_mut().zip(from_tiles) {
            for j in 0..TILED_VALUES {
                to[j] = from[j] * self.scale[j] + self.shift[j];
            }
        }
        affine_values(to_rest, from_rest, scale, shift);
    }
}

/// `to = from · scale + shift`, value by value (as many as the shortest holds).
fn affine_values(to: &mut [f32], from: &[f32], scale: &[f32], shift: &[f32]) {
    for (((t, f), s), b) in to.iter_mut().zip(from).zip(scale).zip(shift) {
        *t = f * s + b;
    }
}

/// The longest window row [`affine_row`] copies.
const MAX_RUN: usize = 32;

/// `to[j] = from[j] · scale[j] + shift[j]` for a window row of `N` values, the affine step
/// tiled along it: applied pixel by pixel (rows of 3 channels), the affine step made the
/// stem's gather of MobileNet V2 0.35/128 take 210–340 µs instead of the plain copy's
/// 90–120; tiled along the whole row it costs nothing measurable.
#[inline(always)]
fn affine_row<const N: usize>(
    to: &mut [f32],
    from: &[f32],
    (scale, shift): &([f32; MAX_RUN], [f32; MAX_RUN]),
) {
    const { assert!(N <= MAX_RUN) };
    let to: &mut [f32; N] = (&mut to[..N])
        .try_into()
        .expect("invariant: a slice of N values is an array of N");
    let from: &[f32; N] = from[..N]
        .try_into()
        .expect("invariant: a slice of N values is an array of N");
    for j in 0..N {
        to[j] = from[j] * scale[j] + shift[j];
    }
}

/// Sets every `[channels]` row of `out` to `bias` (+ the matching row of `residual`).
fn fill_rows(out: &mut [f32], bias: &[f32], residual: Option<&[f32]>) {
    let c = bias.len();
    match residual {
        Some(r) => {
            for (row, res) in out.chunks_exact_mut(c).zip(r.chunks_exact(c)) {
                for ((o, b), x) in row.iter_mut().zip(bias).zip(res) {
                    *o = b + x;
                }
            }
        }
        None => {
            // An element loop, not copy_from_slice: rows are short, and a memcpy call per
            // row of 8–64 floats costs more than the copy.
            for row in out.chunks_exact_mut(c) {
                for (o, b) in row.iter_mut().zip(bias) {
                    *o = *b;
                }
            }
        }
    }
}

/// `out[m, n] = a[m, k] · b[k, n]` (with `accumulate`: `+=`), all row-major. A large
/// product is split into one band of rows per thread of `threads`, each a
/// single-threaded gemm: gemm's own threading cost more than it saved on these shapes
/// (batch 1 at 1.0/224 ran at 33 images/s on 2 threads against 52 on one).
pub(super) fn matmul(
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    threads: Threads,
) {
    // Checked first: the bands below slice `a` by these shapes.
    assert!(
        Some(out.len()) == m.checked_mul(n)
            && Some(a.len()) == m.checked_mul(k)
            && Some(b.len()) == k.checked_mul(n),
        "matmul shapes do not match the slices"
    );
    let split = threads.for_work(m * k * n);
    if split > 1 && m >= 2 * split {
        let rows = m.div_ceil(split);
        threads.chunks_mut(out, rows * n, split, |band, out| {
            let a = &a[band * rows * k..][..out.len() / n.max(1) * k];
            matmul(
                out,
                a,
                b,
                (a.len() / k.max(1), k, n),
                accumulate,
                Threads::One,
            );
        });
        return;
    }
    product_here(out, View::rows(a, m, k), View::rows(b, k, n), accumulate);
}

#[cfg(test)]
mod tests {
    use super::super::team::Team;
    use super::super::testing::{conv, values};
    use super::*;
    use crate::backend::Kernel;

    /// Convolutions that copy their input rows (3-channel stems, padded or not, with and
    /// without a gathered affine step) give what im2col and gemm give, on every packed
    /// kernel set and threading mode.
    #[test]
    fn padded_bands_match_im2col() {
        let team = Team::new(2).expect("threads start");
        // (input h, w, c), kernel, stride, padding (top, bottom, left, right), cout.
        for ((h, w, c), kernel, stride, pad, cout) in [
            ((64, 64, 3), (3, 3), 2, [0, 1, 0, 1], 16),
            ((35, 33, 3), (3, 3), 2, [0, 0, 0, 0], 32),
            ((40, 37, 3), (7, 7), 2, [3, 3, 3, 3], 20),
            ((9, 11, 1), (3, 3), 1, [1, 1, 1, 1], 8),
            ((12, 10, 5), (5, 3), 1, [2, 2, 1, 1], 40),
            // More taps than are read in place tap by tap, on 16 channels.
            ((14, 13, 16), (7, 7), 1, [3, 3, 3, 3], 20),
            // The last column unread (valid padding), padding wider than the kernel, a
            // stride longer than the kernel, two output columns.
            ((17, 34, 3), (3, 3), 2, [0, 0, 0, 0], 16),
            ((9, 5, 3), (3, 3), 1, [4, 4, 4, 4], 8),
            ((11, 11, 3), (2, 2), 3, [0, 0, 0, 0], 8),
            ((9, 5, 3), (3, 3), 2, [0, 0, 0, 0], 8),
            // An affine step tiled over 40 channels, and one too wide to tile (70).
            ((9, 8, 40), (7, 7), 1, [3, 3, 3, 3], 16),
            ((8, 8, 70), (7, 7), 1, [3, 3, 3, 3], 16),
        ] {
            let Kernel::Conv(step) =
                conv(kernel, stride, pad, c, cout, false, Activation::Relu6, 3)
            else {
                unreachable!("conv() makes a convolution")
            };
            let ho = (h + pad[0] + pad[1] - kernel.0) / stride + 1;
            let wo = (w + pad[2] + pad[3] - kernel.1) / stride + 1;
            let input = values(h * w * c, 7);
            let (scale, shift) = (values(c, 11), values(c, 13));
            let k = kernel.0 * kernel.1 * c;
            for affine in [
                None,
                Some(Affine {
                    scale: &scale,
                    shift: &shift,
                }),
            ] {
                let mut want = vec![0f32; ho * wo * cout];
                let mut pool = Pool::default();
                let dims = ([h, w, c], [ho, wo, cout]);
                run_conv(
                    &step,
                    None,
                    Kernels::Portable,
                    &input,
                    dims.0,
                    &mut want,
                    dims.1,
                    None,
                    affine,
                    &mut pool,
                    Threads::One,
                );
                for kernels in Kernels::available()
                    .into_iter()
                    .filter(|&k| k != Kernels::Portable)
                {
                    let packed = PackedWeights::new(&step.weights, &step.bias, k, cout, kernels)
                        .expect("weights match the shape");
                    for threads in [Threads::One, Threads::Team(&team)] {
                        let mut got = vec![f32::NAN; ho * wo * cout];
                        run_conv(
                            &step,
                            Some(&packed),
                            kernels,
                            &input,
                            dims.0,
                            &mut got,
                            dims.1,
                            None,
                            affine,
                            &mut pool,
                            threads,
                        );
                        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                (g - e).abs() < 1e-4,
                                "{kernels:?} {kernel:?}/{stride} {pad:?} affine {} [{i}]: {g} vs {e}",
                                affine.is_some()
                            );
                        }
                    }
                }
            }
        }
    }
}
