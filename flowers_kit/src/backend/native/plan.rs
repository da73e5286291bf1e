//! Preparing a [`Network`] for the native kernels: when each buffer is released, which
//! convolutions take a residual addend, which weights are packed, which inverted-residual
//! blocks run as one step, and whether a single image splits its layers among threads.

use super::block::{find_blocks, Block};
use super::conv::gathers_patches;
use super::isa::Kernels;
use super::packed::PackedWeights;
use super::pool::Pool;
use super::threads::MIN_PARALLEL_IMAGE_MACS;
use crate::backend::{Kernel, Network, Step};
use crate::error::{Error, Result};
use crate::models::graph::Activation;

/// A [`Network`] prepared for the native CPU kernels.
pub struct NativeNetwork {
    pub(super) steps: std::sync::Arc<[Step]>,
    /// The last step reading each step's output (its buffer is released after it).
    pub(super) last_use: Vec<usize>,
    /// For a convolution feeding a residual add and nothing else: the add's other input,
    /// pre-filled into the convolution's output.
    pub(super) residual: Vec<Option<usize>>,
    /// For such an add: the convolution whose buffer already holds the sum.
    pub(super) fused_into: Vec<Option<usize>>,
    pub(super) resolution: usize,
    pub(super) features: usize,
    pub(super) kernels: Kernels,
    /// With AVX2 kernels ([`Kernels::Avx2`] and [`Kernels::Avx512`]): each non-depthwise
    /// convolution's packed weights.
    pub(super) packed: Vec<Option<PackedWeights>>,
    /// At the projection of an inverted-residual block run as one step: its parts.
    pub(super) blocks: Vec<Option<Block>>,
    /// Steps computed inside a later one: a block's expansion and depthwise convolution, and
    /// an affine step that a convolution applies as it gathers its patches.
    pub(super) inside_later: Vec<bool>,
    /// For a convolution gathering its patches (im2col) from a linear affine step read by
    /// nothing else (an input rescaling): that step, applied to each value as it is copied,
    /// so the rescaled image is never written (the padding stays zero, as after the step).
    pub(super) gathers_affine: Vec<Option<usize>>,
    /// Whether a single image splits its layers among rayon's threads when the team is
    /// held by another image (see [`MIN_PARALLEL_IMAGE_MACS`]).
    pub(super) split_layers: bool,
    /// Warm buffer pools between calls, one per thread that ran (a few MB each).
    pub(super) pools: std::sync::Mutex<Vec<Pool>>,
    /// The pools of a batch shared among the team, one per share: share `i` always takes
    /// pool `i`, so that each is warm whichever thread runs it (only the team's holder uses
    /// them).
    pub(super) share_pools: std::sync::Mutex<Vec<std::sync::Mutex<Pool>>>,
    /// Steps whose whole maps are the output (instead of the last one's average over pixels).
    pub(super) outputs: Option<Vec<usize>>,
}

impl Clone for NativeNetwork {
    fn clone(&self) -> NativeNetwork {
        NativeNetwork {
            steps: self.steps.clone(),
            last_use: self.last_use.clone(),
            residual: self.residual.clone(),
            fused_into: self.fused_into.clone(),
            resolution: self.resolution,
            features: self.features,
            kernels: self.kernels,
            packed: self.packed.clone(),
            blocks: self.blocks.clone(),
            inside_later: self.inside_later.clone(),
            gathers_affine: self.gathers_affine.clone(),
            split_layers: self.split_layers,
            pools: Default::default(),
            share_pools: Default::default(),
            outputs: self.outputs.clone(),
        }
    }
}

impl std::fmt::Debug for NativeNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeNetwork")
            .field("steps", &self.steps.len())
            .field("resolution", &self.resolution)
            .field("features", &self.features)
            .field("kernels", &self.kernels)
            .finish_non_exhaustive()
    }
}

impl NativeNetwork {
    /// Prepares `network` (its steps are shared, not copied) for this CPU's widest kernels.
    pub fn new(network: &Network) -> Result<NativeNetwork> {
        NativeNetwork::with_kernels(network, Kernels::detect())
    }

    /// Prepares `network` for the `kernels` given; an error if this CPU cannot run them.
    pub fn with_kernels(network: &Network, kernels: Kernels) -> Result<NativeNetwork> {
        NativeNetwork::plan(network, kernels, None)
    }

    /// Prepares `network` so that [`forward`](Self::forward) returns, per image, the whole
    /// `[h, w, c]` maps of the steps `outputs` one after the other instead of the features:
    /// the activations where a fine-tuned suffix takes over (see [`crate::backend::Cut`]).
    pub fn with_outputs(
        network: &Network,
        outputs: &[usize],
        kernels: Kernels,
    ) -> Result<NativeNetwork> {
        NativeNetwork::plan(network, kernels, Some(outputs))
    }

    /// The instruction set its kernels use.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    fn plan(
        network: &Network,
        kernels: Kernels,
        outputs: Option<&[usize]>,
    ) -> Result<NativeNetwork> {
        if !kernels.is_supported() {
            return Err(Error::InvalidArgument(format!(
                "this CPU cannot run the {kernels:?} kernels"
            )));
        }
        let steps = network.shared_steps();
        let n = steps.len();
        let mut last_use: Vec<usize> = (0..n).collect();
        let mut readers = vec![0usize; n];
        for (i, step) in steps.iter().enumerate() {
            for &j in &step.inputs {
                if let Some(l) = last_use.get_mut(j) {
                    *l = (*l).max(i);
                }
                if let Some(r) = readers.get_mut(j) {
                    *r += 1;
                }
            }
        }
        // The output is read by the final pooling; maps returned whole are read at the end,
        // and must never be fused away inside a block or a residual sum.
        let ends: Vec<usize> = match outputs {
            Some(outputs) => outputs.to_vec(),
            None => vec![n.saturating_sub(1)],
        };
        for &j in &ends {
            let (Some(l), Some(r)) = (last_use.get_mut(j), readers.get_mut(j)) else {
                return Err(Error::InvalidArgument(format!(
                    "step {j} is not one of the network's {n} steps"
                )));
            };
            *l = usize::MAX;
            *r += 1;
        }
        let mut residual = vec![None; n];
        let mut fused_into = vec![None; n];
        for (a, step) in steps.iter().enumerate() {
            let (Kernel::Add(_), [p, q]) = (&step.kernel, step.inputs.as_slice()) else {
                continue;
            };
            // The later addend is the convolution; the earlier one must already exist.
            let (early, late) = if p < q { (*p, *q) } else { (*q, *p) };
            let is_plain_conv = steps.get(late).is_some_and(|s| {
                matches!(&s.kernel, Kernel::Conv(c) if !c.depthwise && c.activation == Activation::Linear)
            });
            if is_plain_conv && readers.get(late) == Some(&1) && early != late {
                residual[late] = Some(early);
                fused_into[a] = Some(late);
                // The early addend must live until the convolution has read it.
                if let Some(l) = last_use.get_mut(early) {
                    *l = (*l).max(late);
                }
            }
        }
        let packed: Vec<Option<PackedWeights>> = steps
            .iter()
            .map(|step| match &step.kernel {
                Kernel::Conv(c) if kernels != Kernels::Portable && !c.depthwise => {
                    PackedWeights::new(
                        &c.weights,
                        &c.bias,
                        c.kernel.0 * c.kernel.1 * c.cin,
                        c.cout,
                        kernels,
                    )
                }
                _ => None,
            })
            .collect();
        let (blocks, mut inside_later) = find_blocks(&steps, &readers, &packed, &mut last_use);
        let mut gathers_affine = vec![None; n];
        for (c, step) in steps.iter().enumerate() {
            let (Kernel::Conv(conv), &[a]) = (&step.kernel, step.inputs.as_slice()) else {
                continue;
            };
            let Some(affine) = steps.get(a) else {
                continue;
            };
            if let (
                Kernel::Affine {
                    activation: Activation::Linear,
                    ..
                },
                &[x],
            ) = (&affine.kernel, affine.inputs.as_slice())
            {
                if gathers_patches(conv, packed[c].is_some())
                    && readers.get(a) == Some(&1)
                    && inside_later.get(a) == Some(&false)
                {
                    gathers_affine[c] = Some(a);
                    inside_later[a] = true;
                    if let Some(l) = last_use.get_mut(x) {
                        *l = (*l).max(c);
                    }
                }
            }
        }
        let macs: usize = steps.iter().map(Step::multiply_adds).sum();
        let features = match outputs {
            None => network.feature_dim(),
            Some(outputs) => outputs
                .iter()
                .filter_map(|&j| steps.get(j))
                .map(|s| s.shape.iter().product::<usize>())
                .sum(),
        };
        if features == 0 {
            return Err(Error::InvalidArgument("a network without features".into()));
        }
        Ok(NativeNetwork {
            steps,
            last_use,
            residual,
            fused_into,
            resolution: network.model().resolution(),
            features,
            kernels,
            packed,
            blocks,
            inside_later,
            gathers_affine,
            split_layers: macs >= MIN_PARALLEL_IMAGE_MACS,
            pools: Default::default(),
            share_pools: Default::default(),
            outputs: outputs.map(<[usize]>::to_vec),
        })
    }

    /// The steps whose whole maps [`forward`](Self::forward) returns
    /// ([`with_outputs`](Self::with_outputs)), or `None` when it returns features.
    pub fn outputs(&self) -> Option<&[usize]> {
        self.outputs.as_deref()
    }

    /// Values per image that [`forward`](Self::forward) returns: the feature length, or the
    /// maps' sizes with [`with_outputs`](Self::with_outputs).
    pub fn output_len(&self) -> usize {
        self.features
    }
}
