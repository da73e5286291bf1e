//! Where one image's time goes: each step's time against what its multiply-adds and bytes
//! need at this CPU's measured roofs (`flowers bench --layers`).

use std::time::{Duration, Instant};

use super::conv::matmul;
use super::exec::{cores, LayerSplit};
use super::isa::{has_avx2_fma, Kernels};
use super::packed::{self, Epilogue, PackedWeights};
use super::plan::NativeNetwork;
use super::threads::Threads;
use crate::backend::{Kernel, Step};
use crate::error::{Error, Result};
use crate::models::graph::{Activation, Shape};

/// One step's share of a batch-1 forward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerTime {
    /// The Keras layer the step ends with (a fused inverted-residual block is named by its
    /// projection).
    pub name: String,
    /// What it computes: `conv 3×3/2`, `depthwise 3×3/1`, `block` (expand, depthwise and
    /// project in one step), `add`, `pool`…
    pub kind: String,
    /// Its output `[h, w, c]`.
    pub shape: Shape,
    /// Multiply-adds for one image.
    pub multiply_adds: usize,
    /// Bytes it must read and write at least once: its inputs, its output and its weights
    /// (a block's expanded activations stay in cache, so they are not counted).
    pub bytes: usize,
    /// Mean seconds per image.
    pub seconds: f64,
}

/// What this CPU reaches, measured: the limits a layer's time is compared with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Roofs {
    /// Multiply-adds per second of one core running the micro-kernel on operands that fit
    /// in its cache (the compute roof: a VM hides the clock, so the theoretical peak is not
    /// known).
    pub multiply_adds_per_core: f64,
    /// Bytes per second that all threads together read from memory.
    pub bytes_per_second: f64,
    /// Threads that share each layer of a single image (rayon's, at most one per core).
    pub threads: usize,
}

impl Roofs {
    /// Measures both roofs on this machine (about half a second).
    pub fn measure() -> Roofs {
        Roofs {
            multiply_adds_per_core: compute_roof(),
            bytes_per_second: memory_roof(),
            // As many as share a single image's layers.
            threads: rayon::current_num_threads().min(cores()),
        }
    }

    /// The least time a step could take: its `multiply_adds` at the compute roof or its
    /// `bytes` at the memory roof, whichever is longer, all threads sharing it.
    pub fn seconds(&self, multiply_adds: usize, bytes: usize) -> f64 {
        let compute = multiply_adds as f64 / (self.multiply_adds_per_core * self.threads as f64);
        let memory = bytes as f64 / self.bytes_per_second;
        compute.max(memory)
    }
}

/// The micro-kernel's best rate on one core: a 192×128 by 128×128 product (~0.3 MB, in L2),
/// repeated; gemm's where the CPU lacks AVX2.
fn compute_roof() -> f64 {
    let (m, k, n) = (192, 128, 128);
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let w: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut out = vec![0f32; m * n];
    let packed =
        PackedWeights::new(&w, &vec![0.0; n], k, n, Kernels::detect()).filter(|_| has_avx2_fma());
    let mut once = || match &packed {
        Some(p) => packed::product(
            &mut out,
            packed::Operand::Rows(&a),
            m,
            p,
            Epilogue::new(Activation::Linear, None),
            Threads::One,
        ),
        None => matmul(&mut out, &a, &w, (m, k, n), false, Threads::One),
    };
    best_rate((m * k * n) as f64, &mut once)
}

/// All threads reading a 64 MB buffer, summed (best of a few passes).
fn memory_roof() -> f64 {
    use rayon::prelude::*;
    let data = vec![1f32; 16 << 20];
    let mut once = || {
        let sum: f32 = data
            .par_chunks(1 << 16)
            .map(|chunk| {
                // Eight lanes so that the sum vectorises.
                let mut lanes = [0f32; 8];
                for values in chunk.chunks_exact(8) {
                    for (l, v) in lanes.iter_mut().zip(values) {
                        *l += v;
                    }
                }
                lanes.iter().sum::<f32>()
            })
            .sum();
        std::hint::black_box(sum);
    };
    best_rate((data.len() * 4) as f64, &mut once)
}

/// `amount / seconds` of the fastest of several runs of `once` (each run timed over
/// ~50 ms).
fn best_rate(amount: f64, once: &mut dyn FnMut()) -> f64 {
    once();
    let mut best = 0f64;
    for _ in 0..5 {
        let start = Instant::now();
        let mut runs = 0u32;
        while runs == 0 || start.elapsed() < Duration::from_millis(50) {
            once();
            runs += 1;
        }
        best = best.max(amount * f64::from(runs) / start.elapsed().as_secs_f64());
    }
    best
}

impl NativeNetwork {
    /// Each step's mean time over `rounds` batch-1 passes of a synthetic image (after one
    /// warm-up), split among threads as a single image is ([`NativeNetwork::forward`] with
    /// one image), with its multiply-adds and bytes.
    pub fn layer_times(&self, rounds: usize) -> Result<Vec<LayerTime>> {
        if rounds == 0 {
            return Err(Error::InvalidArgument(
                "layer times need at least one round".into(),
            ));
        }
        let per_image = self.resolution * self.resolution * 3;
        let image: Vec<f32> = (0..per_image)
            .map(|i| ((i * 7919) % 256) as f32 / 255.0)
            .collect();
        let mut features = vec![0f32; self.features];
        let mut times = vec![Duration::ZERO; self.steps.len()];
        self.one_by_one(&image, &mut features, None, LayerSplit::Team, true);
        for _ in 0..rounds {
            self.one_by_one(
                &image,
                &mut features,
                Some(&mut times),
                LayerSplit::Team,
                true,
            );
        }
        Ok(self
            .steps
            .iter()
            .enumerate()
            // The image is read where it is: the input step takes no time.
            .filter(|(i, step)| {
                self.inside_later.get(*i) != Some(&true) && !matches!(step.kernel, Kernel::Input)
            })
            .map(|(i, step)| self.layer_time(i, step, times[i].as_secs_f64() / rounds as f64))
            .collect())
    }

    /// Step `i`'s kind, work and bytes (those of its whole block where it ends one).
    fn layer_time(&self, i: usize, step: &Step, seconds: f64) -> LayerTime {
        let size = |j: usize| self.steps.get(j).map_or(0, |s| s.shape.iter().product());
        let inputs: usize = step.inputs.iter().map(|&j| size(j)).sum();
        let output = size(i);
        let conv_work = |j: usize| match self.steps.get(j) {
            Some(
                s @ Step {
                    kernel: Kernel::Conv(c),
                    ..
                },
            ) => (s.multiply_adds(), c.weights.len() + c.bias.len()),
            _ => (0, 0),
        };
        let (kind, multiply_adds, values) = match (&step.kernel, &self.blocks[i]) {
            (Kernel::Conv(_), Some(block)) => {
                // A block that ends at its depthwise layer runs at that step.
                let projection = (i != block.depthwise).then_some(i);
                let parts = [Some(block.expand), Some(block.depthwise), projection]
                    .map(|j| j.map_or((0, 0), conv_work));
                let residual = self.residual[i].map_or(0, size);
                (
                    match projection {
                        Some(_) => "block",
                        None => "expand + depthwise",
                    }
                    .to_string(),
                    parts.iter().map(|p| p.0).sum(),
                    size(block.input)
                        + output
                        + residual
                        + parts.iter().map(|p| p.1).sum::<usize>(),
                )
            }
            (Kernel::Conv(_), None) => {
                let (macs, weights) = conv_work(i);
                let residual = self.residual[i].map_or(0, size);
                (
                    step_kind(&step.kernel),
                    macs,
                    inputs + output + residual + weights,
                )
            }
            (kernel, _) => (step_kind(kernel), 0, inputs + output),
        };
        LayerTime {
            name: step.name.clone(),
            kind,
            shape: step.shape,
            multiply_adds,
            bytes: values * 4,
            seconds,
        }
    }
}

/// A short name for what a step computes: `conv 3×3/2`, `depthwise 3×3/1`, `add`…
pub(super) fn step_kind(kernel: &Kernel) -> String {
    let name = match kernel {
        Kernel::Conv(c) => {
            let what = if c.depthwise { "depthwise" } else { "conv" };
            return format!("{what} {}×{}/{}", c.kernel.0, c.kernel.1, c.stride);
        }
        Kernel::Input => "input",
        Kernel::Affine { .. } => "affine",
        Kernel::Activation(_) => "activation",
        Kernel::Add(_) => "add",
        Kernel::Multiply => "multiply",
        Kernel::Concat => "concat",
        Kernel::MaxPool { .. } => "max pool",
        Kernel::AvgPool { .. } => "average pool",
        Kernel::Pad(_) => "pad",
        Kernel::Crop(_) => "crop",
        Kernel::GlobalAvgPool => "global average",
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Network;
    use crate::models::Model;

    /// Every step that runs is listed once, with the convolutions' multiply-adds adding up
    /// to the model's, and blocks counted whole: MobileNet V2's (expand, depthwise,
    /// project), and EfficientNet's, which end at the depthwise layer that the
    /// squeeze-and-excitation reads.
    #[test]
    fn layer_times_cover_the_network() {
        for (name, block) in [
            ("mobilenet_v2_0.35_96", "block"),
            ("efficientnet_b0", "expand + depthwise"),
        ] {
            let model = Model::parse(name).expect("a model");
            let network = Network::random(model, 7).expect("network");
            let native = NativeNetwork::new(&network).expect("native");
            let layers = native.layer_times(2).expect("layer times");
            let macs: usize = layers.iter().map(|l| l.multiply_adds).sum();
            assert_eq!(macs, model.multiply_adds().expect("macs"), "{name}");
            let fused = native.inside_later.iter().filter(|&&b| b).count();
            // Less the input step (the rescaling that the first convolution gathers is
            // among the fused steps).
            assert_eq!(layers.len(), native.steps.len() - fused - 1, "{name}");
            assert!(layers.iter().all(|l| l.seconds > 0.0));
            // MobileNet V2's rescaling is gathered by its first convolution (EfficientNet's
            // rescaling and normalisation run as steps).
            if name.starts_with("mobilenet") {
                assert!(!layers.iter().any(|l| l.kind == "affine"));
            }
            if has_avx2_fma() {
                assert!(layers.iter().any(|l| l.kind == block), "{name}: no {block}");
            }
            assert!(native.layer_times(0).is_err());
        }
    }

    #[test]
    fn roofs_are_positive_and_bound_a_layer_below_its_time() {
        let roofs = Roofs::measure();
        assert!(roofs.multiply_adds_per_core > 1e8 && roofs.bytes_per_second > 1e8);
        let compute = (1u64 << 30) as f64 / (roofs.multiply_adds_per_core * roofs.threads as f64);
        assert_eq!(roofs.seconds(1 << 30, 1 << 10), compute);
    }
}
