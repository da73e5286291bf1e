//! Inverted-residual blocks (expand → depthwise → project) run as one step, band by band.

use super::depthwise::Depthwise;
use super::isa::Kernels;
use super::packed::{self, Epilogue, PackedWeights};
use super::scratch::{self, Kind};
use super::threads::Threads;
use crate::backend::{Conv, Kernel, Step};
use crate::models::graph::Activation;

/// An inverted-residual block (1×1 expansion → depthwise → 1×1 projection) run as one step,
/// band by band of output rows: the expanded activations, 6× the width of the block's input,
/// live in an L2-sized band and never go to memory. MobileNet V2 is memory-bound on a
/// laptop's 10 GB/s per core; its expansions wrote and re-read ~40 MB per image.
#[derive(Debug, Clone)]
pub(super) struct Block {
    /// The block's input (the expansion's).
    pub(super) input: usize,
    pub(super) expand: usize,
    pub(super) depthwise: usize,
}

/// The blocks among `steps`: a packed pointwise convolution whose only input is a depthwise
/// convolution, read by nothing else, whose only input is a packed pointwise convolution,
/// read by nothing else. Extends the block input's life to the projection.
pub(super) fn find_blocks(
    steps: &[Step],
    readers: &[usize],
    packed: &[Option<PackedWeights>],
    last_use: &mut [usize],
) -> (Vec<Option<Block>>, Vec<bool>) {
    let n = steps.len();
    let mut blocks = vec![None; n];
    let mut inside = vec![false; n];
    let conv = |i: usize| match steps.get(i).map(|s| &s.kernel) {
        Some(Kernel::Conv(c)) => Some(c),
        _ => None,
    };
    let only_input = |i: usize| match steps.get(i).map(|s| s.inputs.as_slice()) {
        Some(&[j]) => Some(j),
        _ => None,
    };
    let packed_pointwise = |i: usize| {
        conv(i).is_some_and(Conv::is_pointwise) && packed.get(i).is_some_and(Option::is_some)
    };
    for (project, slot) in blocks.iter_mut().enumerate() {
        if !packed_pointwise(project) {
            continue;
        }
        let Some(depthwise) = only_input(project) else {
            continue;
        };
        let Some(expand) = only_input(depthwise) else {
            continue;
        };
        let Some(input) = only_input(expand) else {
            continue;
        };
        if conv(depthwise).is_some_and(|c| c.depthwise)
            && packed_pointwise(expand)
            && readers.get(depthwise) == Some(&1)
            && readers.get(expand) == Some(&1)
        {
            *slot = Some(Block {
                input,
                expand,
                depthwise,
            });
            inside[expand] = true;
            inside[depthwise] = true;
            if let Some(l) = last_use.get_mut(input) {
                *l = (*l).max(project);
            }
        }
    }
    (blocks, inside)
}

/// Bytes of expanded activations one band aims for (Zen 3 has 512 KB of L2 per core).
const BAND_BYTES: usize = 192 * 1024;

thread_local! {
    /// A block's band buffers (expanded rows, depthwise output), per thread.
    static BANDS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Grows this thread's band buffers to the marks (false while a band holds them).
pub(super) fn grow_bands_to_mark() -> bool {
    BANDS.with(|bands| {
        let Ok(mut bands) = bands.try_borrow_mut() else {
            return false;
        };
        let (expanded, dw_out) = &mut *bands;
        scratch::fill_to_mark(expanded, Kind::Expanded);
        scratch::fill_to_mark(dw_out, Kind::DepthwiseRows);
        true
    })
}

/// `block` of `steps` (whose weights `packed` holds) on input `x` into `out` (the
/// projection's output), with the residual addend; output rows split among `threads` for a
/// large block.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_block(
    steps: &[Step],
    packed: &[Option<PackedWeights>],
    kernels: Kernels,
    project: usize,
    block: &Block,
    x: &[f32],
    out: &mut [f32],
    residual: Option<&[f32]>,
    threads: Threads,
) {
    let part = |i: usize| {
        let step = steps.get(i)?;
        match (&step.kernel, packed.get(i)) {
            (Kernel::Conv(c), Some(p)) => Some((step, c, p.as_ref())),
            _ => None,
        }
    };
    let (
        Some((e_step, expand, Some(e_packed))),
        Some((_, depthwise, _)),
        Some((p_step, project, Some(p_packed))),
    ) = (part(block.expand), part(block.depthwise), part(project))
    else {
        unreachable!(
            "invariant: find_blocks only makes blocks of packed 1×1, depthwise, packed 1×1"
        );
    };
    let [h, w, _] = steps[block.input].shape;
    let [ho, wo, cout] = p_step.shape;
    let band = BlockBand {
        x,
        w,
        h,
        expanded: e_step.shape[2],
        expand: (e_packed, expand.activation),
        depthwise,
        project: (p_packed, project.activation),
        wo,
        kernels,
    };
    let split = threads.for_work(ho * wo * cout * e_step.shape[2]);
    if split > 1 && ho >= split {
        let rows = ho.div_ceil(split);
        threads.chunks_mut(out, rows * wo * cout, split, |t, out| {
            let first = t * rows;
            let count = out.len() / (wo * cout);
            let res = residual.map(|r| &r[first * wo * cout..(first + count) * wo * cout]);
            band.rows(first..first + count, out, res);
        });
    } else {
        band.rows(0..ho, out, residual);
    }
}

/// What one thread needs to run output rows of a block.
struct BlockBand<'a> {
    x: &'a [f32],
    h: usize,
    w: usize,
    /// Channels after the expansion.
    expanded: usize,
    expand: (&'a PackedWeights, Activation),
    depthwise: &'a Conv,
    project: (&'a PackedWeights, Activation),
    wo: usize,
    kernels: Kernels,
}

impl BlockBand<'_> {
    /// Output rows `rows` into `out` (those rows only), band by band.
    fn rows(&self, rows: std::ops::Range<usize>, out: &mut [f32], residual: Option<&[f32]>) {
        let BlockBand {
            x,
            h,
            w,
            expanded: ce,
            wo,
            ..
        } = *self;
        let (kh, _) = self.depthwise.kernel;
        let stride = self.depthwise.stride;
        let pad_top = self.depthwise.pad[0];
        let cin = self.expand.0.k();
        let cout = out.len() / (rows.len() * wo).max(1);
        let in_row = w * ce;
        // Output rows per band: as many as keep the band's expanded rows near BAND_BYTES.
        let band_rows_in = (BAND_BYTES / (4 * in_row).max(1)).max(kh);
        let per_band = ((band_rows_in - kh) / stride + 1).max(1);
        BANDS.with(|bands| {
            // A band never runs another block inside it on the same thread.
            let mut bands = bands
                .try_borrow_mut()
                .expect("invariant: one block band at a time per thread");
            let (expanded, dw_out) = &mut *bands;
            let need = ((per_band - 1) * stride + kh) * in_row;
            scratch::grow_len(expanded, need, Kind::Expanded);
            scratch::grow_len(dw_out, per_band * wo * ce, Kind::DepthwiseRows);
            // Expanded input rows held at the front of `expanded`.
            let mut held = 0..0;
            let mut start = rows.start;
            while start < rows.end {
                let end = (start + per_band).min(rows.end);
                let lo = (start * stride).saturating_sub(pad_top).min(h);
                let hi = ((end - 1) * stride + kh).saturating_sub(pad_top).min(h);
                // Rows already expanded for the last band move to the front.
                let mut from = lo;
                if held.start <= lo && lo < held.end {
                    expanded.copy_within(
                        (lo - held.start) * in_row..(held.end - held.start) * in_row,
                        0,
                    );
                    from = held.end.min(hi);
                }
                let fresh = &mut expanded[(from - lo) * in_row..(hi - lo) * in_row];
                let (weights, activation) = self.expand;
                packed::product(
                    fresh,
                    packed::Operand::Rows(&x[from * w * cin..hi * w * cin]),
                    (hi - from) * w,
                    weights,
                    Epilogue::new(activation, None),
                    Threads::One,
                );
                held = lo..hi;
                let band = &expanded[..(hi - lo) * in_row];
                let count = end - start;
                let dw = &mut dw_out[..count * wo * ce];
                // Rows above the band's first are padding only where they are above the image.
                let pad = pad_top + lo - start * stride;
                Depthwise::of(self.depthwise, band, (hi - lo, w), pad, self.kernels).run(
                    dw,
                    (count, wo),
                    Threads::One,
                );

                let at = (start - rows.start) * wo * cout..(end - rows.start) * wo * cout;
                let (weights, activation) = self.project;
                let target = &mut out[at.clone()];
                packed::product(
                    target,
                    packed::Operand::Rows(dw),
                    count * wo,
                    weights,
                    Epilogue::new(activation, residual.map(|r| &r[at])),
                    Threads::One,
                );
                start = end;
            }
        });
    }
}
