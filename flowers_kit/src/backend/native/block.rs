//! Inverted-residual blocks (expand → depthwise → project) run as one step, band by band;
//! where something else reads the depthwise output (a squeeze-and-excitation), the expansion
//! and the depthwise layer alone.

use super::depthwise::Depthwise;
use super::isa::Kernels;
use super::packed::{self, Epilogue, PackedWeights};
use super::pool::Pool;
use super::scratch::{self, Kind, BANDS};
use super::threads::Threads;
use crate::backend::{Conv, Kernel, Step};
use crate::models::graph::Activation;

/// An inverted-residual block (1×1 expansion → depthwise → 1×1 projection) run as one step,
/// band by band of output rows: the expanded activations, 6× the width of the block's input,
/// live in an L2-sized band and never go to memory. MobileNet V2 is memory-bound on a
/// laptop's 10 GB/s per core; its expansions wrote and re-read ~40 MB per image. (A large
/// block on a small map that a team splits runs layer by layer instead, its whole expanded
/// map in L2: see [`recomputes_rows`].)
///
/// In EfficientNet and MobileNet V3 a squeeze-and-excitation reads the depthwise output
/// whole (its mean over the image scales it before the projection), so there the block is
/// the expansion and the depthwise layer, run band by band into the depthwise output: the
/// expanded map, the largest of the block (4× the depthwise output after a stride of 2),
/// still never goes to memory. Such a block runs at its depthwise step.
#[derive(Debug, Clone)]
pub(super) struct Block {
    /// The block's input (the expansion's).
    pub(super) input: usize,
    pub(super) expand: usize,
    pub(super) depthwise: usize,
}

/// The blocks among `steps`: a packed pointwise convolution whose only input is a depthwise
/// convolution, read by nothing else, whose only input is a packed pointwise convolution,
/// read by nothing else; then, among the rest, a depthwise convolution whose only input is a
/// packed pointwise convolution read by nothing else. Extends the block input's life to the
/// step the block runs at.
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
    for project in 0..n {
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
        // Not through another block: an expansion that is an earlier block's projection
        // (a chain of 1×1 and depthwise layers) would leave that block unrun.
        if conv(depthwise).is_some_and(|c| c.depthwise)
            && packed_pointwise(expand)
            && readers.get(depthwise) == Some(&1)
            && readers.get(expand) == Some(&1)
            && blocks[expand].is_none()
            && !inside[input]
        {
            blocks[project] = Some(Block {
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
    // Expansions whose depthwise output other steps read as well.
    for depthwise in 0..n {
        let Some(expand) = only_input(depthwise) else {
            continue;
        };
        let Some(input) = only_input(expand) else {
            continue;
        };
        if conv(depthwise).is_some_and(|c| c.depthwise)
            && !inside[depthwise]
            && !inside[expand]
            && !inside[input]
            && blocks[expand].is_none()
            && packed_pointwise(expand)
            && readers.get(expand) == Some(&1)
        {
            blocks[depthwise] = Some(Block {
                input,
                expand,
                depthwise,
            });
            inside[expand] = true;
            if let Some(l) = last_use.get_mut(input) {
                *l = (*l).max(depthwise);
            }
        }
    }
    (blocks, inside)
}

/// Bytes of expanded activations one band aims for (Zen 3 has 512 KB of L2 per core).
const BAND_BYTES: usize = 192 * 1024;

/// Multiply-adds from which a block split among threads on a small map runs layer by layer
/// (see [`recomputes_rows`]): MobileNet V2 1.0/224's 7×7 blocks (8–23 M) do, α = 0.35's 4×4
/// ones (under 1 M), whose layers are too small to split three times, do not.
const LAYERED_MACS: usize = 4 << 20;

/// Whether the bands of `split` threads over a block's `ho` output rows expand over a fifth
/// more rows of its `h`-row input than the input has: a band expands the rows its depthwise
/// windows reach, so a small map cut in two recomputes the rows on both sides of the cut
/// (a 7×7 map: 9 rows for 7).
fn recomputes_rows(depthwise: &Conv, h: usize, ho: usize, split: usize) -> bool {
    let rows = ho.div_ceil(split.max(1)).max(1);
    let (kh, stride, pad_top) = (depthwise.kernel.0, depthwise.stride, depthwise.pad[0]);
    let expanded: usize = (0..ho)
        .step_by(rows)
        .map(|start| {
            let end = (start + rows).min(ho);
            let lo = (start * stride).saturating_sub(pad_top).min(h);
            let hi = ((end - 1) * stride + kh).saturating_sub(pad_top).min(h);
            hi - lo
        })
        .sum();
    expanded * 5 > h * 6
}

/// `block` of `steps` (whose weights `packed` holds), run at step `at`, on input `x` into
/// `out` (the output of step `at`: the projection's, or the depthwise layer's where `at` is
/// the block's depthwise step), with the residual addend; output rows split among `threads`
/// for a large block, or for a large block on a small map each layer split among them in
/// turn (buffers from `pool`).
#[allow(clippy::too_many_arguments)]
pub(super) fn run_block(
    steps: &[Step],
    packed: &[Option<PackedWeights>],
    kernels: Kernels,
    at: usize,
    block: &Block,
    x: &[f32],
    out: &mut [f32],
    residual: Option<&[f32]>,
    pool: &mut Pool,
    threads: Threads,
) {
    let part = |i: usize| {
        let step = steps.get(i)?;
        match (&step.kernel, packed.get(i)) {
            (Kernel::Conv(c), Some(p)) => Some((step, c, p.as_ref())),
            _ => None,
        }
    };
    let (Some((e_step, expand, Some(e_packed))), Some((d_step, depthwise, _))) =
        (part(block.expand), part(block.depthwise))
    else {
        unreachable!("invariant: find_blocks only makes blocks of packed 1×1, then depthwise");
    };
    let project = if at == block.depthwise {
        None
    } else {
        let Some((p_step, project, Some(p_packed))) = part(at) else {
            unreachable!("invariant: find_blocks only projects with a packed 1×1");
        };
        Some((p_step, (p_packed, project.activation)))
    };
    let [h, w, cin] = steps[block.input].shape;
    let [ho, wo, cout] = project.map_or(d_step.shape, |(p_step, _)| p_step.shape);
    let expanded = e_step.shape[2];
    let band = BlockBand {
        x,
        w,
        h,
        expanded,
        expand: (e_packed, expand.activation),
        depthwise,
        project: project.map(|(_, p)| p),
        wo,
        kernels,
    };
    let expand_macs = h * w * cin * expanded;
    let depthwise_macs = ho * wo * expanded * depthwise.kernel.0 * depthwise.kernel.1;
    let project_macs = project.map_or(0, |_| ho * wo * cout * expanded);
    // The split follows the projection where there is one, as it always has.
    let split = threads.for_work(match project {
        Some(_) => project_macs,
        None => expand_macs + depthwise_macs,
    });
    let all_macs = expand_macs + depthwise_macs + project_macs;
    if split > 1 && all_macs >= LAYERED_MACS && recomputes_rows(depthwise, h, ho, split) {
        band.layered(out, residual, ho, pool, threads);
    } else if split > 1 && ho >= split {
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
    /// None where the block ends at its depthwise layer.
    project: Option<(&'a PackedWeights, Activation)>,
    wo: usize,
    kernels: Kernels,
}

impl BlockBand<'_> {
    /// The whole block into `out` (`ho` rows) layer by layer, each layer split among
    /// `threads` as an unfused one would be (a product's panels, where its weights outweigh
    /// its rows): the expanded map of a small image fits in L2 whole.
    fn layered(
        &self,
        out: &mut [f32],
        residual: Option<&[f32]>,
        ho: usize,
        pool: &mut Pool,
        threads: Threads,
    ) {
        let (h, w, ce, wo) = (self.h, self.w, self.expanded, self.wo);
        let (weights, activation) = self.expand;
        let mut expanded = pool.take(h * w * ce);
        packed::product(
            &mut expanded,
            packed::Operand::Rows(self.x),
            h * w,
            weights,
            Epilogue::new(activation, None),
            threads,
        );
        let pad_top = self.depthwise.pad[0];
        let depthwise = Depthwise::of(self.depthwise, &expanded, (h, w), pad_top, self.kernels);
        match self.project {
            None => depthwise.run(out, (ho, wo), threads),
            Some((weights, activation)) => {
                let mut dw_out = pool.take(ho * wo * ce);
                depthwise.run(&mut dw_out, (ho, wo), threads);
                packed::product(
                    out,
                    packed::Operand::Rows(&dw_out),
                    ho * wo,
                    weights,
                    Epilogue::new(activation, residual),
                    threads,
                );
                pool.give(dw_out);
            }
        }
        pool.give(expanded);
    }

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
        scratch::catch_up();
        BANDS.with(|bands| {
            // A band never runs another block inside it on the same thread.
            let mut bands = bands
                .try_borrow_mut()
                .expect("invariant: one block band at a time per thread");
            let (expanded, dw_out) = &mut *bands;
            let need = ((per_band - 1) * stride + kh) * in_row;
            scratch::grow_len(expanded, need, Kind::Expanded);
            if self.project.is_some() {
                scratch::grow_len(dw_out, per_band * wo * ce, Kind::DepthwiseRows);
            }
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
                // Rows above the band's first are padding only where they are above the image.
                // None below the band's first row when the window starts under the image
                // (padding below larger than the kernel: the band is empty).
                let pad = (pad_top + lo).saturating_sub(start * stride);
                let depthwise =
                    Depthwise::of(self.depthwise, band, (hi - lo, w), pad, self.kernels);
                let at = (start - rows.start) * wo * cout..(end - rows.start) * wo * cout;
                match self.project {
                    None => depthwise.run(&mut out[at], (count, wo), Threads::One),
                    Some((weights, activation)) => {
                        let dw = &mut dw_out[..count * wo * ce];
                        depthwise.run(dw, (count, wo), Threads::One);
                        packed::product(
                            &mut out[at.clone()],
                            packed::Operand::Rows(dw),
                            count * wo,
                            weights,
                            Epilogue::new(activation, residual.map(|r| &r[at])),
                            Threads::One,
                        );
                    }
                }
                start = end;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::pool::Pool;
    use super::super::team::Team;
    use super::super::testing::{conv, step, values};
    use super::super::threads::Threads;
    use super::super::{Kernels, NativeNetwork};
    use super::{recomputes_rows, run_block};
    use crate::backend::{Kernel, Network, Step};
    use crate::models::graph::Activation;
    use crate::models::Model;

    /// A chain of 1×1 and depthwise layers (MobileNet V1's shape, written by hand) fuses
    /// only blocks that do not overlap, an expansion read by two steps is never fused, and a
    /// depthwise layer padded below by more than its kernel gives what the unfused kernels
    /// give: no panic, no step left unrun. (Before, the chain's second block took the first
    /// one's projection as its expansion and left it unrun.)
    #[test]
    fn chained_and_oddly_padded_blocks_match_the_unfused_kernels() {
        let pw =
            |cin, cout, seed| conv((1, 1), 1, [0; 4], cin, cout, false, Activation::Relu6, seed);
        let dw = |pad, stride, seed| conv((3, 3), stride, pad, 8, 8, true, Activation::Relu6, seed);
        let pool = Kernel::AvgPool {
            size: (8, 8),
            stride: 8,
            pad: [0; 4],
        };
        let steps = vec![
            step("input", Kernel::Input, vec![], [96, 96, 3]),
            step("shrink", pool, vec![0], [12, 12, 3]),
            step("expand_1", pw(3, 8, 1), vec![1], [12, 12, 8]),
            step("depthwise_1", dw([1, 1, 1, 1], 1, 2), vec![2], [12, 12, 8]),
            step("project_1", pw(8, 8, 3), vec![3], [12, 12, 8]),
            step("depthwise_2", dw([1, 1, 1, 1], 1, 4), vec![4], [12, 12, 8]),
            step("project_2", pw(8, 8, 5), vec![5], [12, 12, 8]),
            // Padded 5 rows below a 3-row window, stride 2: the last output rows' windows
            // start under the image.
            step("depthwise_3", dw([1, 5, 1, 1], 2, 6), vec![6], [8, 6, 8]),
            step("squeeze", Kernel::GlobalAvgPool, vec![7], [1, 1, 8]),
            step("excite", Kernel::Multiply, vec![7, 8], [8, 6, 8]),
            // An expansion whose output two steps read.
            step("expand_2", pw(8, 8, 7), vec![9], [8, 6, 8]),
            step("depthwise_4", dw([1, 1, 1, 1], 1, 8), vec![10], [8, 6, 8]),
            step(
                "sum",
                Kernel::Add(Activation::Linear),
                vec![10, 11],
                [8, 6, 8],
            ),
        ];
        let pixels: Vec<f32> = (0..96 * 96 * 3).map(|i| (i % 251) as f32 / 251.0).collect();
        assert_fused_as_unfused(steps, &pixels, &[2, 6]);
        // At full size a band is one output row (the expanded rows are 72 KB each), so the
        // last bands start under the image.
        let steps = vec![
            step("input", Kernel::Input, vec![], [96, 96, 3]),
            step("expand", pw(3, 192, 1), vec![0], [96, 96, 192]),
            step(
                "depthwise",
                conv(
                    (3, 3),
                    2,
                    [1, 5, 1, 1],
                    192,
                    192,
                    true,
                    Activation::Swish,
                    2,
                ),
                vec![1],
                [50, 48, 192],
            ),
            step("squeeze", Kernel::GlobalAvgPool, vec![2], [1, 1, 192]),
            step("excite", Kernel::Multiply, vec![2, 3], [50, 48, 192]),
        ];
        assert_fused_as_unfused(steps, &pixels, &[1]);
    }

    /// Large blocks on a 7×7 map, which a team runs layer by layer (a block with its
    /// residual sum, and an expansion with a 5×5 swish depthwise layer that a
    /// squeeze-and-excitation reads), give what the unfused kernels give.
    #[test]
    fn layered_blocks_match_the_unfused_kernels() {
        let pw = |cin, cout, activation, seed| {
            conv((1, 1), 1, [0; 4], cin, cout, false, activation, seed)
        };
        let dw = |k: usize, activation, seed| {
            let p = k / 2;
            conv((k, k), 1, [p, p, p, p], 960, 960, true, activation, seed)
        };
        let pool = Kernel::AvgPool {
            size: (13, 13),
            stride: 13,
            pad: [0; 4],
        };
        let relu6 = Activation::Relu6;
        let steps = vec![
            step("input", Kernel::Input, vec![], [96, 96, 3]),
            step("shrink", pool, vec![0], [7, 7, 3]),
            step("widen", pw(3, 160, relu6, 1), vec![1], [7, 7, 160]),
            step("expand", pw(160, 960, relu6, 2), vec![2], [7, 7, 960]),
            step("depthwise", dw(3, relu6, 3), vec![3], [7, 7, 960]),
            step(
                "project",
                pw(960, 160, Activation::Linear, 4),
                vec![4],
                [7, 7, 160],
            ),
            step(
                "sum",
                Kernel::Add(Activation::Linear),
                vec![2, 5],
                [7, 7, 160],
            ),
            step(
                "expand_2",
                pw(160, 960, Activation::Swish, 5),
                vec![6],
                [7, 7, 960],
            ),
            step(
                "depthwise_2",
                dw(5, Activation::Swish, 6),
                vec![7],
                [7, 7, 960],
            ),
            step("squeeze", Kernel::GlobalAvgPool, vec![8], [1, 1, 960]),
            step("excite", Kernel::Multiply, vec![8, 9], [7, 7, 960]),
        ];
        let pixels: Vec<f32> = (0..96 * 96 * 3).map(|i| (i % 251) as f32 / 251.0).collect();
        assert_fused_as_unfused(steps, &pixels, &[3, 7]);
    }

    /// Layer by layer on a team of 4 (a stride-2 block that two threads would run in bands
    /// but four would not, and a stride-1 one), a block gives what it gives band by band on
    /// one thread.
    #[test]
    fn layered_blocks_match_their_bands() {
        let pw =
            |cin, cout, seed| conv((1, 1), 1, [0; 4], cin, cout, false, Activation::Relu6, seed);
        let linear = |cin, cout, seed| {
            conv(
                (1, 1),
                1,
                [0; 4],
                cin,
                cout,
                false,
                Activation::Linear,
                seed,
            )
        };
        let dw =
            |stride, pad, seed| conv((3, 3), stride, pad, 960, 960, true, Activation::Relu6, seed);
        let pool = Kernel::AvgPool {
            size: (5, 5),
            stride: 7,
            pad: [0; 4],
        };
        let steps = vec![
            step("input", Kernel::Input, vec![], [96, 96, 3]),
            step("shrink", pool, vec![0], [14, 14, 3]),
            step("widen", pw(3, 160, 1), vec![1], [14, 14, 160]),
            step("expand", pw(160, 960, 2), vec![2], [14, 14, 960]),
            step("depthwise", dw(2, [0, 1, 0, 1], 3), vec![3], [7, 7, 960]),
            step("project", linear(960, 160, 4), vec![4], [7, 7, 160]),
            step("expand_2", pw(160, 960, 5), vec![5], [7, 7, 960]),
            step("depthwise_2", dw(1, [1, 1, 1, 1], 6), vec![6], [7, 7, 960]),
            step("project_2", linear(960, 160, 7), vec![7], [7, 7, 160]),
        ];
        let model = Model::parse("mobilenet_v2_0.35_96").expect("a model");
        let network = Network::new(model, steps, "synthetic".into(), None).expect("valid steps");
        let team = Team::new(4).expect("threads start");
        for kernels in Kernels::available() {
            if kernels == Kernels::Portable {
                continue;
            }
            let native = NativeNetwork::with_kernels(&network, kernels).expect("native");
            for at in [5, 8] {
                let block = native.blocks[at]
                    .as_ref()
                    .expect("a block at each projection");
                let Kernel::Conv(depthwise) = &native.steps[block.depthwise].kernel else {
                    unreachable!("a block's depthwise step is a convolution")
                };
                let [h, w, c] = native.steps[block.input].shape;
                let ho = native.steps[at].shape[0];
                assert!(
                    recomputes_rows(depthwise, h, ho, 4),
                    "{at}: layered on 4 threads"
                );
                let x = values(h * w * c, at);
                let len = native.steps[at].shape.iter().product::<usize>();
                let (mut bands, mut layered) = (vec![0f32; len], vec![f32::NAN; len]);
                let mut pool = Pool::default();
                for (out, threads) in [
                    (&mut bands, Threads::One),
                    (&mut layered, Threads::Team(&team)),
                ] {
                    let (steps, packed) = (&native.steps, &native.packed);
                    run_block(
                        steps, packed, kernels, at, block, &x, out, None, &mut pool, threads,
                    );
                }
                for (i, (a, b)) in layered.iter().zip(&bands).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{kernels:?} block at {at} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
        // Two threads run the stride-2 block in bands (15 expanded rows for 14).
        let Kernel::Conv(depthwise) =
            conv((3, 3), 2, [0, 1, 0, 1], 8, 8, true, Activation::Relu6, 1)
        else {
            unreachable!("conv() makes a convolution")
        };
        assert!(!recomputes_rows(&depthwise, 14, 7, 2));
    }

    /// The network of `steps` gives the same features on every kernel set as on the
    /// portable one (which fuses nothing), with blocks at the expansions `fused`.
    fn assert_fused_as_unfused(steps: Vec<Step>, pixels: &[f32], fused: &[usize]) {
        let model = Model::parse("mobilenet_v2_0.35_96").expect("a model");
        let network = Network::new(model, steps, "synthetic".into(), None).expect("valid steps");
        let reference = NativeNetwork::with_kernels(&network, Kernels::Portable)
            .expect("portable")
            .forward(pixels, 1)
            .expect("portable forward");
        for kernels in Kernels::available() {
            let native = NativeNetwork::with_kernels(&network, kernels).expect("native");
            if kernels != Kernels::Portable {
                let expansions: Vec<_> = native.blocks.iter().flatten().map(|b| b.expand).collect();
                assert_eq!(expansions, fused, "{kernels:?}");
            }
            let features = native.forward(pixels, 1).expect("forward");
            for (i, (a, b)) in features.iter().zip(&reference).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{kernels:?} [{i}]: {a} vs {b}"
                );
            }
        }
    }
}
