//! Running a prepared network: images in parallel, or one image with its layers split among
//! the threads of a team; each step's buffer from the pool, released after its last reader.

use std::sync::PoisonError;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::block::run_block;
use super::conv::{run_conv, Affine};
use super::eltwise::{activate, affine};
use super::plan::NativeNetwork;
use super::pool::{Buffer, Pool};
use super::pooling::{average_pool, pool_rows};
use super::scratch;
use super::team::{with_team, Team};
use super::threads::Threads;
use crate::backend::{Kernel, Step};
use crate::error::{Error, Result};
use crate::models::graph::Shape;

/// How a single image's layers share the threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerSplit {
    /// Among a team of threads that spin between layers, led by the calling thread: every
    /// layer above a few microseconds of work is split. Falls back to `Rayon` (for a network
    /// of at least 250 M multiply-adds) or `Single` while another image holds the team, or
    /// where its threads cannot be started.
    Team,
    /// As tasks on rayon's pool: large layers only, since waking a sleeping worker costs
    /// tens of microseconds.
    Rayon,
    /// No split: the calling thread only.
    Single,
}

impl NativeNetwork {
    /// An error unless `pixels` holds `n` images at this network's resolution.
    fn check_pixels(&self, pixels: &[f32], n: usize) -> Result<()> {
        let per_image = self.resolution * self.resolution * 3;
        if Some(pixels.len()) != n.checked_mul(per_image) {
            return Err(Error::InvalidArgument(format!(
                "expected {n} images of {0}×{0}×3 values, got {1}",
                self.resolution,
                pixels.len()
            )));
        }
        Ok(())
    }

    /// Features `[n, F]` of `n` images given as NHWC pixels in [0, 1].
    pub fn forward(&self, pixels: &[f32], n: usize) -> Result<Vec<f32>> {
        // Checked before the allocation: `n` is bounded by the pixels it came with.
        self.check_pixels(pixels, n)?;
        let mut out = vec![0f32; n * self.features];
        self.forward_into(pixels, n, &mut out)?;
        Ok(out)
    }

    /// [`forward`](Self::forward) into `out` (`n × F` values), which an app keeps from call
    /// to call: once warm, a call allocates nothing with the packed kernel sets (tested with
    /// a counting allocator; see [`Kernels::Portable`](super::Kernels::Portable)). Warm
    /// means every thread that runs a part has run one since the largest band grew: the
    /// team's always have after a call on the team; a rayon worker (used while another
    /// image holds the team) grows its band buffers at its first part.
    pub fn forward_into(&self, pixels: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
        self.check_pixels(pixels, n)?;
        if Some(out.len()) != n.checked_mul(self.features) {
            return Err(Error::InvalidArgument(format!(
                "expected room for {n} × {} features, got {} values",
                self.features,
                out.len()
            )));
        }
        let per_image = self.resolution * self.resolution * 3;
        let threads = rayon::current_num_threads();
        if n < threads || threads < 2 {
            self.one_by_one(pixels, out, None, LayerSplit::Team, false);
            return Ok(());
        }
        // Whole images per thread, one contiguous share each: no synchronisation inside the
        // network, and one pool per share (rayon's `for_each_init` made a fresh pool per
        // stolen job, and batch 16 on 2 threads ran only 1.5× one thread).
        let run_share = |images: &[f32], features: &mut [f32], pool: &mut Pool| {
            for (image, f) in images
                .chunks(per_image)
                .zip(features.chunks_mut(self.features))
            {
                self.forward_image(image, f, pool, Threads::One, None);
            }
        };
        // On the team when it is free: a job handed to rayon from outside its pool goes
        // through rayon's injection queue, which allocates a block every 64 or so jobs.
        let on_team = with_team(threads.min(cores()), false, |team| {
            let team = team?;
            let size = team.size();
            let share = n.div_ceil(size);
            // Only the team's holder is here, so the lock is free; a panic in a part that
            // poisoned it left pools that are still whole.
            let mut pools = self
                .share_pools
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if pools.len() < size {
                pools.resize_with(size, Default::default);
            }
            let pools = &*pools;
            team.chunks_mut(out, share * self.features, size, &|i, features| {
                let first = i * share * per_image;
                let count = features.len() / self.features.max(1);
                let mut pool = pools[i].lock().unwrap_or_else(PoisonError::into_inner);
                run_share(
                    &pixels[first..first + count * per_image],
                    features,
                    &mut pool,
                );
            });
            spread_scratch(team);
            Some(())
        });
        if on_team.is_none() {
            // Another image holds the team.
            let share = n.div_ceil(threads);
            pixels
                .par_chunks(per_image * share)
                .zip(out.par_chunks_mut(self.features * share))
                .for_each(|(images, features)| {
                    self.with_pool(|pool| run_share(images, features, pool))
                });
        }
        Ok(())
    }

    /// Features `[n, F]` of `n` images taken one at a time, each image's layers shared
    /// among the threads as `split` says ([`forward`](Self::forward) does this with
    /// [`LayerSplit::Team`] when there are fewer images than threads, but does not wait for
    /// a team that another image holds). Extraction runs each photo with
    /// [`LayerSplit::Single`] on the thread that decoded it; tests and benchmarks compare the
    /// ways of splitting with it.
    pub fn forward_split(&self, pixels: &[f32], n: usize, split: LayerSplit) -> Result<Vec<f32>> {
        self.check_pixels(pixels, n)?;
        let mut out = vec![0f32; n * self.features];
        self.one_by_one(pixels, &mut out, None, split, true);
        Ok(out)
    }

    /// The images of `pixels` one by one into `out`, each image's layers split as `split`
    /// says (waiting for the team while another image holds it with `wait`); with `times`,
    /// each step's time is added to its entry.
    pub(super) fn one_by_one(
        &self,
        pixels: &[f32],
        out: &mut [f32],
        mut times: Option<&mut [Duration]>,
        split: LayerSplit,
        wait: bool,
    ) {
        let per_image = self.resolution * self.resolution * 3;
        let mut run = |threads: Threads| {
            self.with_pool(|pool| {
                for (image, f) in pixels.chunks(per_image).zip(out.chunks_mut(self.features)) {
                    self.forward_image(image, f, pool, threads, times.as_deref_mut());
                }
            })
        };
        // A spinning helper must not share a core with its leader.
        let size = rayon::current_num_threads().min(cores());
        // On a rayon worker thread, each split is a cheap local job for the other workers to
        // steal rather than a job injected from outside.
        let on_rayon = |run: &mut (dyn FnMut(Threads) + Send)| {
            rayon::scope(|_| run(Threads::Rayon));
        };
        match split {
            LayerSplit::Team if size > 1 => with_team(size, wait, |team| match team {
                Some(team) => {
                    run(Threads::Team(team));
                    spread_scratch(team);
                }
                // Another image holds the team: rayon splits the large layers of a large
                // network.
                None if self.split_layers => on_rayon(&mut run),
                None => run(Threads::One),
            }),
            LayerSplit::Rayon if size > 1 => on_rayon(&mut run),
            _ => run(Threads::One),
        }
    }

    /// Runs `work` with a warm buffer pool, kept for the next call.
    fn with_pool(&self, work: impl FnOnce(&mut Pool)) {
        let stashed = self.pools.lock().ok().and_then(|mut pools| pools.pop());
        let mut pool = stashed.unwrap_or_default();
        work(&mut pool);
        if let Ok(mut pools) = self.pools.lock() {
            pools.push(pool);
        }
    }

    /// One image through the network into `features`.
    fn forward_image(
        &self,
        image: &[f32],
        features: &mut [f32],
        pool: &mut Pool,
        threads: Threads,
        mut times: Option<&mut [Duration]>,
    ) {
        let mut values = pool.take_slots(self.steps.len());
        for (i, step) in self.steps.iter().enumerate() {
            // The image is read where it is; steps computed inside later ones have no buffer.
            if self.inside_later.get(i) == Some(&true) || matches!(step.kernel, Kernel::Input) {
                continue;
            }
            let started = times.is_some().then(Instant::now);
            let [h, w, c] = step.shape;
            let input = |k: usize| -> &[f32] { read(&self.steps, &values, image, step.inputs[k]) };
            let in_shape = |k: usize| -> Shape { self.steps[step.inputs[k]].shape };
            let output = if let Some(conv) = self.fused_into[i] {
                // The convolution's buffer already holds the sum.
                let mut sum = values[conv]
                    .take()
                    .expect("invariant: a fused add follows its convolution (plan)");
                if let Kernel::Add(activation) = &step.kernel {
                    activate(&mut sum, *activation, self.kernels);
                }
                sum
            } else {
                let mut out = pool.take(h * w * c);
                match &step.kernel {
                    // Read in place (skipped above).
                    Kernel::Input => {}
                    Kernel::Conv(_) if self.blocks[i].is_some() => {
                        let residual =
                            self.residual[i].map(|j| read(&self.steps, &values, image, j));
                        if let Some(block) = &self.blocks[i] {
                            let x = read(&self.steps, &values, image, block.input);
                            run_block(
                                &self.steps,
                                &self.packed,
                                self.kernels,
                                i,
                                block,
                                x,
                                &mut out,
                                residual,
                                pool,
                                threads,
                            );
                        }
                    }
                    Kernel::Conv(conv) => {
                        let residual =
                            self.residual[i].map(|j| read(&self.steps, &values, image, j));
                        // A rescaling gathered with the patches: the convolution reads the
                        // rescaling's input.
                        let (x, affine) = match self.gathers_affine[i].map(|a| &self.steps[a]) {
                            Some(Step {
                                kernel: Kernel::Affine { scale, shift, .. },
                                inputs,
                                ..
                            }) => (
                                read(&self.steps, &values, image, inputs[0]),
                                Some(Affine { scale, shift }),
                            ),
                            _ => (input(0), None),
                        };
                        run_conv(
                            conv,
                            self.packed.get(i).and_then(Option::as_ref),
                            self.kernels,
                            x,
                            in_shape(0),
                            &mut out,
                            step.shape,
                            residual,
                            affine,
                            pool,
                            threads,
                        );
                    }
                    Kernel::Affine {
                        scale,
                        shift,
                        activation,
                    } => {
                        let x = input(0);
                        let uniform = |v: &[f32]| v.iter().all(|x| Some(x) == v.first());
                        let flat = match (uniform(scale), uniform(shift)) {
                            (true, true) => scale.first().zip(shift.first()),
                            _ => None,
                        };
                        split_rows(threads, &mut out, w * c, 1, |at, out| {
                            let x = &x[at..at + out.len()];
                            if let Some((s, t)) = flat {
                                // One flat loop (an input rescaling): rows of 3 channels do
                                // not vectorise.
                                for (o, v) in out.iter_mut().zip(x) {
                                    *o = v * s + t;
                                }
                            } else {
                                affine(out, x, scale, shift);
                            }
                            activate(out, *activation, self.kernels);
                        });
                    }
                    Kernel::Activation(activation) => {
                        let x = input(0);
                        split_rows(threads, &mut out, w * c, 1, |at, out| {
                            out.copy_from_slice(&x[at..at + out.len()]);
                            activate(out, *activation, self.kernels);
                        });
                    }
                    Kernel::Add(activation) => {
                        split_rows(threads, &mut out, w * c, 1, |at, out| {
                            let len = out.len();
                            out.copy_from_slice(&input(0)[at..at + len]);
                            for k in 1..step.inputs.len() {
                                for (o, v) in out.iter_mut().zip(&input(k)[at..at + len]) {
                                    *o += v;
                                }
                            }
                            activate(out, *activation, self.kernels);
                        });
                    }
                    Kernel::Multiply => {
                        let (a, b) = (input(0), input(1));
                        let (big, small) = if a.len() >= b.len() { (a, b) } else { (b, a) };
                        let same_shape = small.len() == big.len();
                        split_rows(threads, &mut out, w * c, 1, |at, out| {
                            let big = &big[at..at + out.len()];
                            if same_shape {
                                let small = &small[at..at + out.len()];
                                for ((o, x), y) in out.iter_mut().zip(big).zip(small) {
                                    *o = x * y;
                                }
                            } else {
                                for (row, x) in out.chunks_exact_mut(c).zip(big.chunks_exact(c)) {
                                    for ((o, v), s) in row.iter_mut().zip(x).zip(small) {
                                        *o = v * s;
                                    }
                                }
                            }
                        });
                    }
                    Kernel::Concat => {
                        split_rows(threads, &mut out, w * c, 1, |at, out| {
                            let pixel = at / c.max(1);
                            let mut offset = 0;
                            for k in 0..step.inputs.len() {
                                let part = in_shape(k)[2];
                                let x = &input(k)[pixel * part..];
                                for (row, x) in out.chunks_exact_mut(c).zip(x.chunks_exact(part)) {
                                    row[offset..offset + part].copy_from_slice(x);
                                }
                                offset += part;
                            }
                        });
                    }
                    Kernel::MaxPool { size, stride, pad }
                    | Kernel::AvgPool { size, stride, pad } => {
                        let max = matches!(step.kernel, Kernel::MaxPool { .. });
                        let (x, shape) = (input(0), in_shape(0));
                        let taps = size.0.saturating_mul(size.1);
                        split_rows(threads, &mut out, w * c, taps, |at, out| {
                            let first = at / (w * c).max(1);
                            pool_rows(x, shape, out, first, step.shape, *size, *stride, *pad, max);
                        });
                    }
                    Kernel::Pad([top, _, left, _]) => {
                        out.fill(0.0);
                        let [ih, iw, _] = in_shape(0);
                        for (y, row) in input(0).chunks_exact(iw * c).enumerate().take(ih) {
                            let start = ((y + top) * w + left) * c;
                            out[start..start + iw * c].copy_from_slice(row);
                        }
                    }
                    Kernel::Crop([top, _, left, _]) => {
                        let [_, iw, _] = in_shape(0);
                        for (y, row) in out.chunks_exact_mut(w * c).enumerate() {
                            let start = ((y + top) * iw + left) * c;
                            row.copy_from_slice(&input(0)[start..start + w * c]);
                        }
                    }
                    Kernel::GlobalAvgPool => average_pool(input(0), c, &mut out),
                }
                out
            };
            values[i] = Some(output);
            if let (Some(times), Some(started)) = (times.as_deref_mut(), started) {
                if let Some(t) = times.get_mut(i) {
                    *t += started.elapsed();
                }
            }
            for &j in &step.inputs {
                if self.last_use.get(j) == Some(&i) {
                    if let Some(buffer) = values.get_mut(j).and_then(Option::take) {
                        pool.give(buffer);
                    }
                }
            }
            // Inputs read past the step's own: the residual addend, a block's input, the input
            // of a gathered affine step.
            let gathered = self.gathers_affine[i]
                .and_then(|a| self.steps.get(a))
                .and_then(|a| a.inputs.first().copied());
            let extra = [
                self.residual[i],
                self.blocks[i].as_ref().map(|b| b.input),
                gathered,
            ];
            for j in extra.into_iter().flatten() {
                if self.last_use.get(j) == Some(&i) {
                    if let Some(buffer) = values.get_mut(j).and_then(Option::take) {
                        pool.give(buffer);
                    }
                }
            }
        }
        match &self.outputs {
            Some(outputs) => {
                let mut at = 0;
                for &j in outputs {
                    let map = read(&self.steps, &values, image, j);
                    features[at..at + map.len()].copy_from_slice(map);
                    at += map.len();
                }
            }
            None => {
                let last = read(&self.steps, &values, image, values.len() - 1);
                average_pool(last, self.features, features);
            }
        }
        pool.give_slots(values);
    }
}

/// Step `j`'s output: the image itself for the input step, else its buffer.
fn read<'a>(steps: &[Step], values: &'a [Option<Buffer>], image: &'a [f32], j: usize) -> &'a [f32] {
    if matches!(steps[j].kernel, Kernel::Input) {
        return image;
    }
    // Network::new checked that every input is an earlier step; the plan keeps each buffer
    // until its last reader (outputs to the end).
    values[j]
        .as_deref()
        .expect("invariant: a step's buffer lives until its last reader (plan)")
}

/// The cores this process may use, read once: `available_parallelism` reads the cgroup
/// files on every call (dozens of allocations and system calls per image).
pub(super) fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// After a call that raised a scratch mark, the team's threads grow their scratch to the
/// marks before the call returns, so that a helper never meets a risen mark for the first
/// time inside a later call (see `scratch.rs`). Nothing happens, and nothing is allocated,
/// while no mark has risen since the team last caught up.
fn spread_scratch(team: &Team) {
    team.broadcast_once(scratch::generation(), &scratch::catch_up);
}

/// `work(at, rows)` over whole rows (of `row` values) of `out`, `at` being the first value's
/// offset: split among `threads` when the step is large enough (a pass over `out` costing
/// about `taps` operations per value). Element-wise steps and pooling ran on one thread,
/// 15–30 % of NASNet's batch-1 time.
fn split_rows(
    threads: Threads,
    out: &mut [f32],
    row: usize,
    taps: usize,
    work: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    let row = row.max(1);
    let rows = out.len() / row;
    let split = threads.for_work(out.len().saturating_mul(taps));
    if split < 2 || rows < split {
        return work(0, out);
    }
    let per_part = rows.div_ceil(split);
    threads.chunks_mut(out, per_part * row, split, |i, chunk| {
        work(i * per_part * row, chunk)
    });
}
