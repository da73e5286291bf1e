//! Running a prepared network: images in parallel, or one image with its layers split among
//! threads; each step's buffer from the pool, released after its last reader.

use rayon::prelude::*;

use super::block::run_block;
use super::conv::run_conv;
use super::eltwise::activate;
use super::plan::NativeNetwork;
use super::pool::{Buffer, Pool};
use super::pooling::{average_pool, pool2d};
use crate::backend::Kernel;
use crate::error::{Error, Result};
use crate::models::graph::Shape;

impl NativeNetwork {
    /// Features `[n, F]` of `n` images given as NHWC pixels in [0, 1].
    pub fn forward(&self, pixels: &[f32], n: usize) -> Result<Vec<f32>> {
        let per_image = self.resolution * self.resolution * 3;
        if Some(pixels.len()) != n.checked_mul(per_image) {
            return Err(Error::InvalidArgument(format!(
                "expected {n} images of {0}×{0}×3 values, got {1}",
                self.resolution,
                pixels.len()
            )));
        }
        let mut out = vec![0f32; n * self.features];
        let threads = rayon::current_num_threads();
        if n >= threads && threads > 1 {
            // Whole images per thread, one contiguous share each: no synchronisation inside
            // the network, and one pool per share (rayon's `for_each_init` made a fresh pool
            // per stolen job, and batch 16 on 2 threads ran only 1.5× one thread).
            let share = n.div_ceil(threads);
            pixels
                .par_chunks(per_image * share)
                .zip(out.par_chunks_mut(self.features * share))
                .for_each(|(images, features)| {
                    self.with_pool(|pool| {
                        for (image, f) in images
                            .chunks(per_image)
                            .zip(features.chunks_mut(self.features))
                        {
                            self.forward_image(image, f, pool, false);
                        }
                    })
                });
        } else {
            let mut run = || {
                self.with_pool(|pool| {
                    for (image, f) in pixels.chunks(per_image).zip(out.chunks_mut(self.features)) {
                        self.forward_image(image, f, pool, threads > 1 && self.split_layers);
                    }
                })
            };
            if threads > 1 && self.split_layers {
                // On a worker thread, each layer's split is a cheap local job for the other
                // workers to steal, not a job injected from outside and waited for.
                rayon::scope(|_| run());
            } else {
                run();
            }
        }
        Ok(out)
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
    fn forward_image(&self, image: &[f32], features: &mut [f32], pool: &mut Pool, parallel: bool) {
        let mut values: Vec<Option<Buffer>> = std::iter::repeat_with(|| None)
            .take(self.steps.len())
            .collect();
        for (i, step) in self.steps.iter().enumerate() {
            if self.inside_block.get(i) == Some(&true) {
                continue;
            }
            let [h, w, c] = step.shape;
            // Network::new checked that every input is an earlier step; the plan keeps each
            // buffer until its last reader.
            let input = |k: usize| -> &[f32] {
                values[step.inputs[k]]
                    .as_deref()
                    .expect("invariant: an input's buffer lives until its last reader (plan)")
            };
            let in_shape = |k: usize| -> Shape { self.steps[step.inputs[k]].shape };
            let output = if let Some(conv) = self.fused_into[i] {
                // The convolution's buffer already holds the sum.
                let mut sum = values[conv]
                    .take()
                    .expect("invariant: a fused add follows its convolution (plan)");
                if let Kernel::Add(activation) = &step.kernel {
                    activate(&mut sum, *activation);
                }
                sum
            } else {
                let mut out = pool.take(h * w * c);
                match &step.kernel {
                    Kernel::Input => out.copy_from_slice(image),
                    Kernel::Conv(_) if self.blocks[i].is_some() => {
                        let residual = self.residual[i]
                            .and_then(|j| values.get(j))
                            .and_then(|v| v.as_deref());
                        if let Some(block) = &self.blocks[i] {
                            let x = values[block.input]
                                .as_deref()
                                .expect("invariant: a block's input lives until its projection");
                            run_block(
                                &self.steps,
                                &self.packed,
                                self.kernels,
                                i,
                                block,
                                x,
                                &mut out,
                                residual,
                                parallel,
                            );
                        }
                    }
                    Kernel::Conv(conv) => {
                        let residual = self.residual[i]
                            .and_then(|j| values.get(j))
                            .and_then(|v| v.as_deref());
                        run_conv(
                            conv,
                            self.packed.get(i).and_then(Option::as_ref),
                            self.kernels,
                            input(0),
                            in_shape(0),
                            &mut out,
                            step.shape,
                            residual,
                            pool,
                            parallel,
                        );
                    }
                    Kernel::Affine {
                        scale,
                        shift,
                        activation,
                    } => {
                        let uniform = |v: &[f32]| v.iter().all(|x| Some(x) == v.first());
                        if let (true, true, Some(s), Some(t)) =
                            (uniform(scale), uniform(shift), scale.first(), shift.first())
                        {
                            // One flat loop (an input rescaling): rows of 3 channels do not
                            // vectorise.
                            for (o, v) in out.iter_mut().zip(input(0)) {
                                *o = v * s + t;
                            }
                        } else {
                            for (row, x) in out.chunks_exact_mut(c).zip(input(0).chunks_exact(c)) {
                                for (((o, v), s), t) in row.iter_mut().zip(x).zip(scale).zip(shift)
                                {
                                    *o = v * s + t;
                                }
                            }
                        }
                        activate(&mut out, *activation);
                    }
                    Kernel::Activation(activation) => {
                        out.copy_from_slice(input(0));
                        activate(&mut out, *activation);
                    }
                    Kernel::Add(activation) => {
                        out.copy_from_slice(input(0));
                        for k in 1..step.inputs.len() {
                            for (o, v) in out.iter_mut().zip(input(k)) {
                                *o += v;
                            }
                        }
                        activate(&mut out, *activation);
                    }
                    Kernel::Multiply => {
                        let (a, b) = (input(0), input(1));
                        let (big, small) = if a.len() >= b.len() { (a, b) } else { (b, a) };
                        if small.len() == big.len() {
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
                    }
                    Kernel::Concat => {
                        let mut offset = 0;
                        for k in 0..step.inputs.len() {
                            let part = in_shape(k)[2];
                            for (row, x) in out.chunks_exact_mut(c).zip(input(k).chunks_exact(part))
                            {
                                row[offset..offset + part].copy_from_slice(x);
                            }
                            offset += part;
                        }
                    }
                    Kernel::MaxPool { size, stride, pad } => pool2d(
                        input(0),
                        in_shape(0),
                        &mut out,
                        step.shape,
                        *size,
                        *stride,
                        *pad,
                        true,
                    ),
                    Kernel::AvgPool { size, stride, pad } => pool2d(
                        input(0),
                        in_shape(0),
                        &mut out,
                        step.shape,
                        *size,
                        *stride,
                        *pad,
                        false,
                    ),
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
            for &j in &step.inputs {
                if self.last_use.get(j) == Some(&i) {
                    if let Some(buffer) = values.get_mut(j).and_then(Option::take) {
                        pool.give(buffer);
                    }
                }
            }
            let extra = [self.residual[i], self.blocks[i].as_ref().map(|b| b.input)];
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
                    let map = values[j]
                        .as_deref()
                        .expect("invariant: output maps live to the end (plan)");
                    features[at..at + map.len()].copy_from_slice(map);
                    at += map.len();
                }
            }
            None => {
                let last = values
                    .last()
                    .and_then(|v| v.as_deref())
                    .expect("invariant: the last step's output lives to the end (plan)");
                average_pool(last, self.features, features);
            }
        }
        for buffer in values.into_iter().flatten() {
            pool.give(buffer);
        }
    }
}
