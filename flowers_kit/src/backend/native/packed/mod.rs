//! Convolutions as matrix products on weights packed once, with AVX2 and FMA (`avx2`, a
//! 6×16 micro-kernel) or AVX-512 (`avx512`, 12×32 over two panels, 12×16 on a layer's
//! last odd panel).
//!
//! Every non-depthwise convolution is `out[m, n] = a[m, k] · w[k, n]`, where `a` is the input
//! itself (1×1, stride 1) or its patches. Patches are read from the image in place
//! ([`Windows`]): the micro-kernel walks each window tap by tap (window row by window row
//! where the rows lie inside the image), so ResNet's and Inception's k×k convolutions never
//! write an im2col copy (25 MB per image for Inception's second convolution) only to read it
//! back. A general gemm re-packs `w` on every call and
//! needs separate passes for the bias, the activation and a residual addend. Here `w` is
//! packed when the network is built, into panels of [`NR`] columns (`[k][NR]`, zero-padded),
//! and a 6×16 micro-kernel keeps its tile in 12 registers over the whole `k` (the AVX-512 one
//! two such tiles in 12 of its 32), reading `a`'s rows in place, then adds the bias (and the
//! residual), clamps, and stores each value once.
//!
//! Cache blocking: rows go in chunks whose `a` fits in L1/L2, each chunk meets every panel
//! (`k · 64` bytes, L2-resident); split by [`Threads`], the row chunks are shared among threads.

use super::eltwise::activate;
use super::isa::{has_avx2_fma, Kernels};
use super::scratch::{self, Kind, SEGMENTS};
use super::threads::Threads;
use crate::models::graph::Activation;

/// Columns per panel: two AVX2 registers.
pub(crate) const NR: usize = 16;
/// Rows per micro-kernel tile.
const MR: usize = 6;
/// Bytes of `a` one row chunk aims to keep in cache.
const CHUNK_BYTES: usize = 256 * 1024;
/// The most taps for which a convolution's windows are read in place tap by tap rather than
/// from a copy (5×5, and Inception's 1×7 and 7×1).
pub(crate) const MAX_TAPS: usize = 25;

/// The left operand of a product.
#[derive(Clone, Copy)]
pub(crate) enum Operand<'a> {
    /// `m` rows of `k` values, in place.
    Rows(&'a [f32]),
    /// A convolution's windows over one NHWC image, read in place.
    Windows(Windows<'a>),
}

/// The windows of a convolution over one `[h, w, channels]` image: row `oy · out_width + ox`
/// of the operand is, tap by tap (`ky`, then `kx`), the channels of input pixel
/// `(oy · stride + ky − pad.0, ox · stride + kx − pad.1)`, zeros outside the image, exactly
/// as im2col lays it out.
#[derive(Clone, Copy)]
pub(crate) struct Windows<'a> {
    pub(crate) input: &'a [f32],
    pub(crate) size: (usize, usize),
    pub(crate) channels: usize,
    pub(crate) kernel: (usize, usize),
    pub(crate) stride: usize,
    /// Top and left padding.
    pub(crate) pad: (usize, usize),
    pub(crate) out_width: usize,
}

impl Windows<'_> {
    /// Whether every window row lies inside the image's columns (no left padding, and the
    /// last window ends inside the image): a window row is then one run of `kw · channels`
    /// values, and the micro-kernel walks a window row by row instead of tap by tap (a
    /// 3-channel stem's 27-value window in 3 runs of 9 rather than 9 of 3).
    fn rows_inside(&self) -> bool {
        let last = self.out_width.saturating_sub(1) * self.stride;
        self.pad.1 == 0 && last + self.kernel.1 <= self.size.1
    }

    /// How the micro-kernel walks one window: (segments, values per segment).
    fn segments(&self) -> (usize, usize) {
        let (kh, kw) = self.kernel;
        if self.rows_inside() {
            (kh, kw * self.channels)
        } else {
            (kh * kw, self.channels)
        }
    }

    /// Whether every window of operand rows up to `last` lies inside the image (no padding
    /// read).
    fn inside(&self, last: usize) -> bool {
        let (kh, kw) = self.kernel;
        let (h, w) = self.size;
        let last_row = last / self.out_width.max(1);
        let last_column = self.out_width.saturating_sub(1);
        self.pad == (0, 0)
            && last_row * self.stride + kh <= h
            && last_column * self.stride + kw <= w
    }

    /// Where segment `segment` of a window starts: (`ky`, `kx`).
    fn segment_tap(&self, segment: usize) -> (usize, usize) {
        if self.rows_inside() {
            (segment, 0)
        } else {
            (segment / self.kernel.1, segment % self.kernel.1)
        }
    }

    /// The output pixels (`oy`, `ox`) of a tile's `MR` operand rows, the last
    /// `MR − count` repeating the last of the `count` present (a part-empty tile): the
    /// first row's pixel is `at`, which moves on to the next tile's.
    fn pixels(&self, at: &mut (usize, usize), count: usize) -> [(usize, usize); MR] {
        let width = self.out_width.max(1);
        let mut pixel = *at;
        let tile = std::array::from_fn(|r| {
            if r > 0 && r < count {
                pixel.1 += 1;
                if pixel.1 == width {
                    pixel = (pixel.0 + 1, 0);
                }
            }
            pixel
        });
        // The next tile's first row: MR rows on.
        at.1 += MR;
        while at.1 >= width {
            at.1 -= width;
            at.0 += 1;
        }
        tile
    }

    /// The `run` values that tap (`ky`, `kx`) starts for output pixel (`oy`, `ox`): a run of
    /// the image, or `zeros` where the tap falls outside it.
    fn segment<'z>(
        &self,
        (oy, ox): (usize, usize),
        (ky, kx): (usize, usize),
        run: usize,
        zeros: &'z [f32],
    ) -> &'z [f32]
    where
        Self: 'z,
    {
        let (h, w) = self.size;
        let y = (oy * self.stride + ky)
            .checked_sub(self.pad.0)
            .filter(|&y| y < h);
        let x = (ox * self.stride + kx)
            .checked_sub(self.pad.1)
            .filter(|&x| x < w);
        match (y, x) {
            (Some(y), Some(x)) => {
                let start = (y * w + x) * self.channels;
                self.input.get(start..start + run).unwrap_or(zeros)
            }
            _ => zeros,
        }
    }
}

/// A `[k, n]` weight matrix and its bias, in micro-kernel order.
#[derive(Debug, Clone)]
pub(crate) struct PackedWeights {
    k: usize,
    n: usize,
    /// `[n / NR rounded up][k][NR]`, the last panel's missing columns zero.
    panels: Vec<f32>,
    /// `[panels · NR]`, zero-padded.
    bias: Vec<f32>,
    /// The micro-kernel the product runs: the 12×16 AVX-512 one when packed for
    /// [`Kernels::Avx512`] (on a CPU that has it), else the 6×16 AVX2 one.
    avx512: bool,
}

impl PackedWeights {
    /// Packs row-major `weights` (`[k, n]`) and `bias` (`[n]`) for the micro-kernel of
    /// `kernels`; `None` when the lengths do not match the shape.
    pub(crate) fn new(
        weights: &[f32],
        bias: &[f32],
        k: usize,
        n: usize,
        kernels: Kernels,
    ) -> Option<PackedWeights> {
        if k == 0 || n == 0 || Some(weights.len()) != k.checked_mul(n) || bias.len() != n {
            return None;
        }
        let panels = n.div_ceil(NR);
        let mut packed = vec![0f32; panels * k * NR];
        for (p, panel) in packed.chunks_exact_mut(k * NR).enumerate() {
            let first = p * NR;
            let width = (n - first).min(NR);
            for (row, dst) in weights.chunks_exact(n).zip(panel.chunks_exact_mut(NR)) {
                dst[..width].copy_from_slice(&row[first..first + width]);
            }
        }
        let mut padded = vec![0f32; panels * NR];
        padded[..n].copy_from_slice(bias);
        Some(PackedWeights {
            k,
            n,
            panels: packed,
            bias: padded,
            avx512: kernels == Kernels::Avx512 && Kernels::Avx512.is_supported(),
        })
    }

    /// The instruction set its micro-kernel runs on.
    pub(crate) fn kernels(&self) -> Kernels {
        if self.avx512 {
            Kernels::Avx512
        } else {
            Kernels::Avx2
        }
    }

    /// The inner dimension.
    pub(crate) fn k(&self) -> usize {
        self.k
    }

    /// Output columns.
    pub(crate) fn n(&self) -> usize {
        self.n
    }

    /// Rows of the micro-kernel's tile (12 for AVX-512's, 6 for AVX2's): row chunks are
    /// whole numbers of them, so that no tile but a product's last runs part empty.
    fn tile_rows(&self) -> usize {
        if self.avx512 {
            2 * MR
        } else {
            MR
        }
    }
}

/// What happens to each product before it is stored.
#[derive(Clone, Copy)]
pub(crate) struct Epilogue<'a> {
    /// Added to every row: a residual addend `[m, n]`.
    pub(crate) residual: Option<&'a [f32]>,
    /// The result is clamped to `[lo, hi]` (ReLU: 0, ∞; ReLU6: 0, 6; none: −∞, ∞).
    pub(crate) lo: f32,
    pub(crate) hi: f32,
    /// Any other activation, applied to each chunk of rows while it is in L2.
    pub(crate) then: Activation,
}

impl<'a> Epilogue<'a> {
    /// `activation` as a clamp where it is one (ReLU, ReLU6), else applied chunk by chunk.
    pub(crate) fn new(activation: Activation, residual: Option<&'a [f32]>) -> Epilogue<'a> {
        let (lo, hi, then) = match activation {
            Activation::Relu => (0.0, f32::INFINITY, Activation::Linear),
            Activation::Relu6 => (0.0, 6.0, Activation::Linear),
            other => (f32::NEG_INFINITY, f32::INFINITY, other),
        };
        Epilogue {
            residual,
            lo,
            hi,
            then,
        }
    }
}

/// `out[m, n] = clamp(a[m, k] · w + bias (+ residual))`.
///
/// # Panics
/// When the slices do not hold `m × k` (rows; windows: `h × w × channels` with
/// `k = kh · kw · channels`), `m × n` (and `m × n` for the
/// residual) values, or the CPU lacks AVX2/FMA: the micro-kernel's unchecked loads rely on
/// both.
pub(crate) fn product(
    out: &mut [f32],
    a: Operand,
    m: usize,
    w: &PackedWeights,
    epilogue: Epilogue,
    threads: Threads,
) {
    let (k, n) = (w.k, w.n);
    let operand_fits = match a {
        Operand::Rows(a) => Some(a.len()) == m.checked_mul(k),
        Operand::Windows(win) => {
            let (kh, kw) = win.kernel;
            win.channels > 0
                && win.out_width > 0
                && Some(k) == (kh * kw).checked_mul(win.channels)
                && Some(win.input.len()) == win.size.0.checked_mul(win.size.1 * win.channels)
        }
    };
    assert!(
        has_avx2_fma()
            && operand_fits
            && Some(out.len()) == m.checked_mul(n)
            && epilogue.residual.is_none_or(|r| r.len() == out.len())
            && w.panels.len() == n.div_ceil(NR) * k * NR
            && w.bias.len() == n.div_ceil(NR) * NR,
        "packed product: slices do not match the shapes"
    );
    if m == 0 {
        return;
    }
    let split = threads.for_work(m * k * n);
    let panels = n.div_ceil(NR);
    if split > 1 && n > m && panels >= split {
        return panels_shared(out, a, m, w, epilogue, threads, split);
    }
    let tile = w.tile_rows();
    // Weights that outweigh the rows stream past once per chunk: then chunks as large as
    // keep the rows in L2 (see `panels_shared`).
    let budget = if n > m {
        SHARED_PANELS_CHUNK_BYTES
    } else {
        CHUNK_BYTES
    };
    let mut chunk = (budget / (4 * (k + n))).max(tile) / tile * tile;
    if split > 1 {
        // Enough chunks for every thread, each still a whole number of tiles.
        chunk = chunk.min(m.div_ceil(split).div_ceil(tile) * tile);
    }
    let run = |index: usize, out: &mut [f32]| {
        let first = index * chunk;
        let rows = out.len() / n;
        let residual = epilogue.residual.map(|r| &r[first * n..(first + rows) * n]);
        // SAFETY: `out` is this chunk's `rows` rows of n values, written by this call only.
        unsafe {
            chunk_product(
                out.as_mut_ptr(),
                a,
                first..first + rows,
                w,
                0..panels,
                residual,
                epilogue.lo,
                epilogue.hi,
            )
        };
        activate(out, epilogue.then, w.kernels());
    };
    threads.chunks_mut(out, chunk * n, split, run);
}

/// [`product`] with the threads sharing the panels instead of the rows, for a product whose
/// weights outweigh its operand (`n > m`: the small maps at the top of a network, such as
/// ResNet-50's 7×7 ones, 49 rows against up to 9 MB of weights). Sharing the rows made
/// every thread stream all the weights from memory, once per chunk of rows; here each
/// streams its own share of them past rows kept in L2.
fn panels_shared(
    out: &mut [f32],
    a: Operand,
    m: usize,
    w: &PackedWeights,
    epilogue: Epilogue,
    threads: Threads,
    split: usize,
) {
    let (k, n) = (w.k, w.n);
    let panels = n.div_ceil(NR);
    let per_part = panels.div_ceil(split);
    // As few chunks as keep the operand's rows in L2, of even sizes: the weights stream past
    // once per chunk.
    let tile = w.tile_rows();
    let chunks = (m * k * 4).div_ceil(SHARED_PANELS_CHUNK_BYTES);
    let chunk = m.div_ceil(chunks).div_ceil(tile) * tile;
    let base = SharedOut(out.as_mut_ptr());
    threads.parts(panels.div_ceil(per_part), split, |part| {
        let mine = part * per_part..((part + 1) * per_part).min(panels);
        for first in (0..m).step_by(chunk) {
            let last = (first + chunk).min(m);
            let residual = epilogue.residual.map(|r| &r[first * n..last * n]);
            // SAFETY: `out` holds m × n values (asserted by `product`), so rows
            // first..last of it start at `first · n`; this part writes only the columns of
            // its own panels `mine`, which no other part writes.
            unsafe {
                chunk_product(
                    base.at(first * n),
                    a,
                    first..last,
                    w,
                    mine.clone(),
                    residual,
                    epilogue.lo,
                    epilogue.hi,
                )
            };
        }
    });
    activate(out, epilogue.then, w.kernels());
}

/// Bytes of the operand's rows that [`panels_shared`] keeps in L2 while a thread's panels
/// stream past them (Zen 4 and recent Xeons have 1–2 MB of L2 per core): ResNet-50's
/// largest 7×7 operand (49 rows of 3×3×512) is 0.9 MB.
const SHARED_PANELS_CHUNK_BYTES: usize = 1024 * 1024;

/// The output of [`panels_shared`], which its parts write in disjoint columns.
struct SharedOut(*mut f32);

// SAFETY: the parts that share it write disjoint values (see `panels_shared`).
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The output from value `offset` (a method, so that a closure captures the whole
    /// `SharedOut`, which is `Sync`, rather than its pointer).
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// One chunk of rows against the panels `panels`: `out` points at the chunk's first row
/// (rows `n` values apart), and `residual` holds just the chunk's rows.
///
/// # Safety
/// `out` is valid for writes of `rows.len()` rows of `n` values, and no other thread reads
/// or writes the columns of `panels` in those rows meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn chunk_product(
    out: *mut f32,
    a: Operand,
    rows: std::ops::Range<usize>,
    w: &PackedWeights,
    panels: std::ops::Range<usize>,
    residual: Option<&[f32]>,
    lo: f32,
    hi: f32,
) {
    // `tiles` pairs panels up to `panels.end`: past the last one a pair would read and
    // write beyond the weights and the output's columns.
    assert!(
        panels.end <= w.n.div_ceil(NR),
        "invariant: panels within the layer's"
    );
    let k = w.k;
    // Each tile's operand as segments: MR row starts of `run` values each, consecutive
    // along `k` (one segment of k for rows; for windows one per tap, or per window row, or
    // only each row's start where the segments are strided). Worked out once per
    // chunk, as safe slices, then met by every panel.
    let (taps, run) = match a {
        Operand::Rows(_) => (1, k),
        Operand::Windows(win) => win.segments(),
    };
    let count = rows.len();
    scratch::catch_up();
    SEGMENTS.with(|cell| {
        // A chunk never runs another chunk inside it on the same thread.
        let mut held = cell
            .try_borrow_mut()
            .expect("invariant: one chunk at a time per thread");
        let (segments, zeros, copied) = &mut *held;
        let inside = match a {
            Operand::Windows(win) => win.inside(rows.end.saturating_sub(1)),
            Operand::Rows(_) => false,
        };
        // Segment lists per 6-row tile: every segment's, only the first where strided, and
        // none for rows (a tile's rows lie `k`, or the copies' stride, apart: the kernel
        // finds them from the first).
        let listed = match a {
            Operand::Rows(_) => 0,
            Operand::Windows(_) if inside => 1,
            Operand::Windows(_) => taps,
        };
        // Kept between calls, so a warm product allocates nothing.
        segments.clear();
        scratch::grow_capacity(segments, count.div_ceil(MR) * listed * MR, Kind::Segments);
        if matches!(a, Operand::Windows(_)) {
            scratch::grow_len(zeros, run, Kind::Zeros);
        }
        let zeros = &zeros[..];
        // Rows whose stride is a multiple of 2 KB fall in one or two of L1's sets, more than
        // its ways hold beside the panel: a tile's twelve rows then evict one another at
        // every step (k of 1024 or 2048 ran at 35-40 G multiply-adds/s against 54 for 1040
        // or 2064 on a Zen 4 core). Such rows are copied apart, a cache line further each,
        // once per chunk for all its panels.
        let apart = matches!(a, Operand::Rows(_)) && k.is_multiple_of(ALIASED_DEPTH);
        if let (Operand::Rows(a), true) = (a, apart) {
            let stride = apart_stride(k);
            scratch::grow_len(copied, count * stride, Kind::Rows);
            let source = &a[rows.start * k..rows.end * k];
            for (to, from) in copied.chunks_exact_mut(stride).zip(source.chunks_exact(k)) {
                to[..k].copy_from_slice(from);
            }
        }
        let copied = &copied[..];
        // The output pixel of the tile's first row, for windows.
        let mut pixel = match a {
            Operand::Windows(win) => {
                let width = win.out_width.max(1);
                (rows.start / width, rows.start % width)
            }
            Operand::Rows(_) => (0, 0),
        };
        if let Operand::Windows(win) = a {
            for first in (0..count).step_by(MR) {
                // Missing rows repeat the tile's last row: computed, never stored.
                let present = (count - first).min(MR);
                if inside {
                    // Every window inside the image (a row mode, see `Windows::segments`):
                    // each row's segments are one image row apart, so the tile keeps only
                    // where each window starts and the kernel steps from there.
                    let (w, c, stride) = (win.size.1, win.channels, win.stride);
                    let span = (taps - 1) * w * c + run;
                    let tile: [*const f32; MR] = win.pixels(&mut pixel, present).map(|(oy, ox)| {
                        let start = (oy * w + ox) * stride * c;
                        win.input
                            .get(start..start + span)
                            .expect("invariant: windows checked inside the image")
                            .as_ptr()
                    });
                    segments.extend_from_slice(&tile);
                } else {
                    let pixels = win.pixels(&mut pixel, present);
                    for segment in 0..taps {
                        let tap = win.segment_tap(segment);
                        let tile: [*const f32; MR] = std::array::from_fn(|r| {
                            win.segment(pixels[r], tap, run, zeros).as_ptr()
                        });
                        segments.extend_from_slice(&tile);
                    }
                }
            }
        }
        let (tiled, _) = segments.as_chunks::<MR>();
        let layout = match a {
            Operand::Rows(_) if apart => Layout::Consecutive {
                first: copied[..count * apart_stride(k)].as_ptr(),
                stride: apart_stride(k),
            },
            Operand::Rows(a) => Layout::Consecutive {
                first: a[rows.start * k..rows.end * k].as_ptr(),
                stride: k,
            },
            Operand::Windows(win) if inside => Layout::Strided {
                stride: win.size.1 * win.channels,
            },
            Operand::Windows(_) => Layout::Listed,
        };
        let operand = (tiled, layout, taps, run);
        // SAFETY: as this function's.
        unsafe { tiles(out, operand, count, w, panels, residual, lo, hi) };
        segments.clear();
    });
}

/// Depths (values per row) whose rows [`chunk_product`] copies apart: a multiple of 512
/// values is a stride of a multiple of 2 KB.
const ALIASED_DEPTH: usize = 512;

/// The stride of rows copied apart: one cache line more than their depth.
const fn apart_stride(k: usize) -> usize {
    k + 16
}

/// How a chunk's tiles list their operand's segments.
#[derive(Clone, Copy)]
enum Layout {
    /// Every segment's six row pointers, segment after segment, per 6-row tile.
    Listed,
    /// Each row's first segment only, per 6-row tile: its segments follow `stride` values
    /// apart ([`Strided`]).
    Strided { stride: usize },
    /// No list: the chunk's rows, one segment each, `stride` values apart from `first`
    /// ([`Consecutive`]).
    Consecutive { first: *const f32, stride: usize },
}

/// The operand of one 6-row tile, segment by segment along `k`: each segment is `run`
/// consecutive values of each of the six rows.
pub(super) trait Segments: Copy {
    /// How many segments.
    fn count(self) -> usize;
    /// The six rows' pointers for segment `s` (< `count`).
    fn rows(self, s: usize) -> [*const f32; MR];
}

impl Segments for &[[*const f32; MR]] {
    #[inline(always)]
    fn count(self) -> usize {
        self.len()
    }

    #[inline(always)]
    fn rows(self, s: usize) -> [*const f32; MR] {
        self[s]
    }
}

/// Segments `stride` values apart in every row: the rows of windows that lie inside the
/// image, so that a tile's pointers cost no more than a row product's.
#[derive(Clone, Copy)]
pub(super) struct Strided {
    starts: [*const f32; MR],
    stride: usize,
    count: usize,
}

impl Segments for Strided {
    #[inline(always)]
    fn count(self) -> usize {
        self.count
    }

    #[inline(always)]
    fn rows(self, s: usize) -> [*const f32; MR] {
        self.starts.map(|p| p.wrapping_add(s * self.stride))
    }
}

/// Up to six rows of one segment each, `stride` values apart: a tile of a product's rows.
#[derive(Clone, Copy)]
pub(super) struct Consecutive {
    first: *const f32,
    stride: usize,
    /// Rows present (1–6); the missing ones repeat the last: computed, never stored.
    rows: usize,
}

impl Segments for Consecutive {
    #[inline(always)]
    fn count(self) -> usize {
        1
    }

    #[inline(always)]
    fn rows(self, _: usize) -> [*const f32; MR] {
        debug_assert!(self.rows >= 1, "invariant: a tile has a row");
        std::array::from_fn(|r| self.first.wrapping_add(r.min(self.rows - 1) * self.stride))
    }
}

/// Every tile of a chunk: the panels `panels` of `w` against the tiles' operand
/// (`segments` laid out as `layout`, `taps` segments of `run` values per row).
///
/// # Safety
/// As [`chunk_product`]'s, for `count` rows.
#[allow(clippy::too_many_arguments)]
unsafe fn tiles(
    out: *mut f32,
    (segments, layout, taps, run): (&[[*const f32; MR]], Layout, usize, usize),
    count: usize,
    w: &PackedWeights,
    panels: std::ops::Range<usize>,
    residual: Option<&[f32]>,
    lo: f32,
    hi: f32,
) {
    let (k, n) = (w.k, w.n);
    // The AVX-512 kernel takes two of the segments' 6-row tiles at a time.
    let per_tile = w.tile_rows();
    let per_group = match layout {
        Layout::Listed => taps,
        Layout::Strided { .. } | Layout::Consecutive { .. } => 1,
    };
    let listed = per_group * per_tile / MR;
    // Panel `p`'s weights and bias.
    let panel = |p: usize| (w.panels[p * k * NR..].as_ptr(), w.bias[p * NR..].as_ptr());
    let mut p = panels.start;
    while p < panels.end {
        // Two panels at a time on the AVX-512 kernel's 12×32 tile, the first of them full
        // (only a layer's last panel is narrower).
        let wide = w.avx512 && p + 1 < panels.end;
        let first_col = p * NR;
        let cols = (n - first_col).min(NR);
        let (weights, bias) = panel(p);
        for t in 0..count.div_ceil(per_tile) {
            let first_row = t * per_tile;
            let groups = segments
                .get(t * listed..)
                .map_or(&[][..], |g| &g[..listed.min(g.len())]);
            let tile = Tile {
                run,
                rows: (count - first_row).min(per_tile),
                panel: weights,
                bias,
                residual: residual.map(|r| r[first_row * n + first_col..].as_ptr()),
                out: out.add(first_row * n + first_col),
                ldo: n,
                cols,
                lo,
                hi,
            };
            // The next panel's tile: its columns, weights and bias, the same rows.
            let beside = || {
                let (weights, bias) = panel(p + 1);
                let cols = (n - first_col - NR).min(NR);
                (weights, bias, cols)
            };
            // SAFETY: `product` asserted AVX2/FMA (and `PackedWeights::new` AVX-512 where
            // `w.avx512`) and the lengths: every segment pointer starts a slice of at least
            // `run` values (a row of `a`, a run of the image, or `zeros`; strided segments
            // were checked inside the image by `chunk_product`; consecutive rows lie
            // within the chunk's `count` rows, which `chunk_product` sliced: a tile's
            // first row is below `count` and the rows it reads stop at `count`),
            // taps · run = k, each panel holds k × NR values and each bias NR; `out` (the
            // caller's promise) and
            // `residual` hold `count` rows of n, of which the tile writes (reads) rows
            // first_row..first_row + tile.rows, the columns of panels `panels` (a wide
            // tile's first panel is full: 16 columns, then the next panel's `cols`).
            unsafe {
                match layout {
                    Layout::Listed => {
                        let (first, second) = groups.split_at(taps.min(groups.len()));
                        let second = (!second.is_empty()).then_some(second);
                        tile.run_on(w.avx512, first, second, wide.then(beside));
                    }
                    Layout::Strided { stride } => {
                        let strided = |&starts: &[*const f32; MR]| Strided {
                            starts,
                            stride,
                            count: taps,
                        };
                        let second = groups.get(1).map(strided);
                        tile.run_on(w.avx512, strided(&groups[0]), second, wide.then(beside));
                    }
                    Layout::Consecutive { first, stride } => {
                        // The tile's rows from `from` on, at most six.
                        let rows = |from: usize| Consecutive {
                            first: first.wrapping_add(from * stride),
                            stride,
                            rows: (count - from).min(MR),
                        };
                        let second =
                            (per_tile > MR && count - first_row > MR).then(|| rows(first_row + MR));
                        tile.run_on(w.avx512, rows(first_row), second, wide.then(beside));
                    }
                }
            }
        }
        p += if wide { 2 } else { 1 };
    }
}

/// One micro-kernel tile's destination and epilogue (see the kernels' `tile`).
#[derive(Clone, Copy)]
struct Tile {
    run: usize,
    rows: usize,
    panel: *const f32,
    bias: *const f32,
    residual: Option<*const f32>,
    out: *mut f32,
    ldo: usize,
    cols: usize,
    lo: f32,
    hi: f32,
}

impl Tile {
    /// Runs the tile on `first` (and `second`, the next 6 rows, on the 12-row AVX-512
    /// kernel where `avx512`; a lone last 6-row tile of one panel runs on the AVX2 kernel,
    /// which an AVX-512 CPU has), and on the next panel too where `beside` gives it (its
    /// weights, bias and columns): on AVX-512 as one 12×32 (6×32 without `second`) tile,
    /// else one panel after the other.
    ///
    /// # Safety
    /// As the kernels' `tile`, and [`avx512::wide_tile`]'s with `beside`.
    #[inline(always)]
    unsafe fn run_on<S: Segments>(
        self,
        avx512: bool,
        first: S,
        second: Option<S>,
        beside: Option<(*const f32, *const f32, usize)>,
    ) {
        #[cfg(target_arch = "x86_64")]
        unsafe {
            match (avx512, second, beside) {
                (true, Some(second), Some(beside)) => {
                    avx512::wide_tile::<S, true>(first, second, self, beside)
                }
                (true, Some(second), None) => avx512::tile(first, second, self),
                (true, None, Some(beside)) => {
                    avx512::wide_tile::<S, false>(first, first, self, beside)
                }
                // At most 6 rows, one panel (or two without AVX-512): the AVX2 kernel,
                // panel by panel.
                (_, _, beside) => {
                    avx2::tile(first, self);
                    if let Some((panel, bias, cols)) = beside {
                        let next = Tile {
                            panel,
                            bias,
                            cols,
                            residual: self.residual.map(|r| r.add(NR)),
                            out: self.out.add(NR),
                            ..self
                        };
                        avx2::tile(first, next);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(test)]
mod tests {
    use super::super::team::Team;
    use super::*;

    /// The packed product against a plain triple loop, for shapes with partial tiles and
    /// panels, a residual, each clamp, and every threading mode (large enough to split on
    /// rayon and on the team, by rows and by panels).
    #[test]
    fn matches_the_plain_product() {
        if !has_avx2_fma() {
            return;
        }
        let mut seed = 1u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        for &(m, k, n) in &[
            (1, 1, 1),
            (7, 3, 17),
            (49, 96, 24),
            (200, 27, 40),
            (13, 5, 8),
            (31, 19, 29),
            (300, 128, 120),
            // Fewer rows than columns and enough work to split: the threads share panels
            // (the last 12 or 4 columns wide).
            (30, 600, 300),
            (30, 600, 292),
            // Rows 4 KB apart, copied apart (and a residual read through them): in one
            // chunk, and in chunks that start inside the rows, the last tile part empty.
            (30, 1024, 40),
            (301, 512, 24),
            // Second 6-row tiles of 3 to 5 rows (plain and copied apart).
            (9, 19, 70),
            (11, 40, 40),
            (33, 512, 24),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let w: Vec<f32> = (0..k * n).map(|_| next()).collect();
            let bias: Vec<f32> = (0..n).map(|_| next()).collect();
            let residual: Vec<f32> = (0..m * n).map(|_| next()).collect();
            let inf = f32::INFINITY;
            for (kernels, (res, lo, hi, then)) in packed_sets().flat_map(|kernels| {
                [
                    (None, -inf, inf, Activation::Linear),
                    (Some(&residual[..]), 0.0, 0.1, Activation::Linear),
                    // Applied after the product, once to every value.
                    (None, -inf, inf, Activation::Sigmoid),
                ]
                .map(|case| (kernels, case))
            }) {
                let packed = PackedWeights::new(&w, &bias, k, n, kernels).unwrap();
                let team = Team::new(2).expect("threads start");
                for threads in [Threads::One, Threads::Rayon, Threads::Team(&team)] {
                    let mut out = vec![f32::NAN; m * n];
                    let epilogue = Epilogue {
                        residual: res,
                        lo,
                        hi,
                        then,
                    };
                    product(&mut out, Operand::Rows(&a), m, &packed, epilogue, threads);
                    for i in 0..m {
                        for j in 0..n {
                            let mut want = bias[j] + res.map_or(0.0, |r| r[i * n + j]);
                            for p in 0..k {
                                want += a[i * k + p] * w[p * n + j];
                            }
                            let mut want = [want.max(lo).min(hi)];
                            activate(&mut want, then, kernels);
                            let [want] = want;
                            let got = out[i * n + j];
                            assert!(
                                (got - want).abs() < 1e-5,
                                "{kernels:?} {m}×{k}×{n} [{i},{j}]: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Windows read in place give the product of an im2col copy, for strides, paddings,
    /// 1×7 and 3×3 kernels, taps that fall outside the image, and every threading mode.
    #[test]
    fn windows_match_copied_patches() {
        if !has_avx2_fma() {
            return;
        }
        let value = |i: usize| ((i * 7919) % 101) as f32 / 101.0 - 0.5;
        // The 5×5 image with 40 columns has fewer rows than columns: the team shares panels.
        for ((h, w, c, n), (kernel, stride, pad)) in [
            ((9, 7, 16, 20), ((3, 3), 1, (1, 1))),
            ((9, 7, 16, 20), ((3, 3), 2, (0, 0))),
            ((9, 7, 16, 20), ((1, 7), 1, (0, 3))),
            // Window rows inside the image's columns, padded above and below.
            ((9, 7, 16, 20), ((3, 3), 1, (1, 0))),
            // Every window inside: each row's segments one image row apart.
            ((8, 9, 3, 24), ((3, 3), 2, (0, 0))),
            // Deeper ones: padded taps of 64 channels; window rows of 384 values, inside.
            ((6, 7, 64, 20), ((3, 3), 1, (1, 1))),
            ((6, 7, 128, 20), ((3, 3), 1, (0, 0))),
            ((5, 5, 16, 40), ((3, 3), 1, (1, 1))),
        ] {
            let input: Vec<f32> = (0..h * w * c).map(value).collect();
            let (kh, kw) = kernel;
            let (ho, wo) = (
                (h + 2 * pad.0 - kh) / stride + 1,
                (w + 2 * pad.1 - kw) / stride + 1,
            );
            let k = kh * kw * c;
            let mut patches = vec![0f32; ho * wo * k];
            for (row, patch) in patches.chunks_exact_mut(k).enumerate() {
                let (oy, ox) = (row / wo, row % wo);
                for (tap, values) in patch.chunks_exact_mut(c).enumerate() {
                    let y = (oy * stride + tap / kw)
                        .checked_sub(pad.0)
                        .filter(|&y| y < h);
                    let x = (ox * stride + tap % kw)
                        .checked_sub(pad.1)
                        .filter(|&x| x < w);
                    if let (Some(y), Some(x)) = (y, x) {
                        values.copy_from_slice(&input[(y * w + x) * c..][..c]);
                    }
                }
            }
            let weights: Vec<f32> = (0..k * n).map(|i| value(i + 13)).collect();
            for kernels in packed_sets() {
                let packed = PackedWeights::new(&weights, &vec![0.25; n], k, n, kernels).unwrap();
                let windows = Windows {
                    input: &input,
                    size: (h, w),
                    channels: c,
                    kernel,
                    stride,
                    pad,
                    out_width: wo,
                };
                let team = Team::new(2).expect("threads start");
                for threads in [Threads::One, Threads::Rayon, Threads::Team(&team)] {
                    let m = ho * wo;
                    let mut want = vec![0f32; m * n];
                    let mut got = vec![f32::NAN; m * n];
                    let epilogue = Epilogue::new(Activation::Relu6, None);
                    product(
                        &mut want,
                        Operand::Rows(&patches),
                        m,
                        &packed,
                        epilogue,
                        threads,
                    );
                    product(
                        &mut got,
                        Operand::Windows(windows),
                        m,
                        &packed,
                        epilogue,
                        threads,
                    );
                    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - e).abs() < 1e-5,
                            "{kernels:?} {kernel:?}/{stride} [{i}]: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }

    /// The kernel sets that pack weights on this CPU (each micro-kernel it has).
    fn packed_sets() -> impl Iterator<Item = Kernels> {
        Kernels::available()
            .into_iter()
            .filter(|&k| k != Kernels::Portable)
    }

    #[test]
    fn refuses_mismatched_weights() {
        assert!(PackedWeights::new(&[0.0; 5], &[0.0; 2], 3, 2, Kernels::Avx2).is_none());
        assert!(PackedWeights::new(&[0.0; 6], &[0.0; 3], 3, 2, Kernels::Avx2).is_none());
        assert!(PackedWeights::new(&[], &[], 0, 0, Kernels::Avx2).is_none());
    }
}
