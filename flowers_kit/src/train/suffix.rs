//! The fine-tuned blocks as the training loop drives them, on either backend: on the CPU the
//! native kernels' forward and backward passes ([`NativeSuffix`]), elsewhere (the GPU) or on
//! request dfdx's traced tape ([`TrainableSuffix`]). Both offer the loop the same three
//! moves — features to evaluate, features on the tape for a step, the update after it — and
//! update their weights with the same optimizers.

use dfdx::tensor::{Cpu, Gradients, Tensor, TensorFrom, Trace};
use rayon::prelude::*;

use super::optim::{update, Optimizer, Slots};
use crate::backend::{Cut, Matrix, NativeSuffix, ParamMut, SuffixTape, Traced, TrainableSuffix};
use crate::device::DfdxDevice;
use crate::error::{Error, Result};

/// The trainable steps above a cut, with their optimizer state.
pub(super) enum Suffix<D: DfdxDevice> {
    /// Run by the native kernels on the CPU; the features reach the head's device as a
    /// plain tensor, and their gradient comes back from it.
    Native {
        /// Boxed, so that the two variants take about the same room.
        suffix: Box<NativeSuffix>,
        /// The last forward pass's tape and the features tensor it produced, until the
        /// update after it.
        pending: Option<(SuffixTape, Matrix<D>)>,
        /// Where the optimizer's arithmetic runs.
        cpu: Cpu,
        slots: Vec<Slots<(usize,), Cpu>>,
    },
    /// Traced by dfdx on the head's device.
    Traced {
        suffix: TrainableSuffix<D>,
        slots: Vec<TracedSlots<D>>,
    },
}

/// An optimizer's state for one tensor of a traced suffix.
pub(super) enum TracedSlots<D: DfdxDevice> {
    Matrix(Slots<(usize, usize), D>),
    Vector(Slots<(usize,), D>),
}

impl<D: DfdxDevice> Suffix<D> {
    /// The steps above `cut`: native when `native`, else traced on `dev`.
    pub(super) fn new(cut: &Cut, dev: &D, native: bool) -> Result<Self> {
        if native {
            let suffix = Box::new(NativeSuffix::new(cut)?);
            let slots = (0..cut.suffix().iter().map(|s| s.parameters().len()).sum())
                .map(|_| Slots::new())
                .collect();
            return Ok(Suffix::Native {
                suffix,
                pending: None,
                cpu: Cpu::default(),
                slots,
            });
        }
        let mut suffix = TrainableSuffix::new(cut, dev.clone())?;
        let slots = suffix
            .params_mut()
            .iter_mut()
            .flat_map(|p| p.tensors_mut())
            .map(|tensor| match tensor {
                ParamMut::Matrix(_) => TracedSlots::Matrix(Slots::new()),
                ParamMut::Vector(_) => TracedSlots::Vector(Slots::new()),
            })
            .collect();
        Ok(Suffix::Traced { suffix, slots })
    }

    /// Features `[n, F]` of `n` rows, without recording anything.
    pub(super) fn features(&self, rows: &[f32], n: usize) -> Result<Vec<f32>> {
        match self {
            Suffix::Native { suffix, .. } => suffix.features(rows, n),
            Suffix::Traced { suffix, .. } => suffix.features(rows, n),
        }
    }

    /// Features `[n, F]` of `n` rows on a tape that the head continues; the loss's
    /// gradients then go to [`update`](Self::update).
    pub(super) fn forward(
        &mut self,
        dev: &D,
        rows: &[f32],
        n: usize,
    ) -> Result<Matrix<D, Traced<D>>> {
        match self {
            Suffix::Native {
                suffix, pending, ..
            } => {
                let (features, tape) = suffix.forward(rows, n)?;
                let dim = suffix.feature_dim();
                let features: Matrix<D> = dev.tensor((features, (n, dim)));
                let traced = features.leaky_trace();
                *pending = Some((tape, features));
                Ok(traced)
            }
            Suffix::Traced { suffix, .. } => suffix.features_traced(rows, n),
        }
    }

    /// Moves every weight one optimizer step, from the gradients of the loss computed on
    /// the last [`forward`](Self::forward)'s features.
    pub(super) fn update(
        &mut self,
        grads: &Gradients<f32, D>,
        optimizer: &Optimizer,
        lr: f32,
        weight_decay: f32,
        t: i32,
    ) -> Result<()> {
        match self {
            Suffix::Native {
                suffix,
                pending,
                cpu,
                slots,
            } => {
                let (tape, features) = pending.take().ok_or_else(|| {
                    Error::InvalidArgument("a fine-tuning update needs a forward pass first".into())
                })?;
                let gradients = suffix.backward(tape, &grads.get(&features).as_vec())?;
                // Each tensor's update is independent of the others': on the CPU they run
                // in parallel (a tenth of a step on one thread).
                let parameters = suffix.parameters_mut();
                if parameters.len() != gradients.len() || parameters.len() != slots.len() {
                    return Err(Error::InvalidArgument(format!(
                        "{} trainable tensors, {} gradients and {} optimizer states",
                        parameters.len(),
                        gradients.len(),
                        slots.len()
                    )));
                }
                parameters
                    .into_par_iter()
                    .zip(gradients)
                    .zip(slots.par_iter_mut())
                    .try_for_each(|((param, gradient), slots)| -> Result<()> {
                        let len = param.values.len();
                        let value: Tensor<(usize,), f32, Cpu> =
                            cpu.tensor((param.values.to_vec(), (len,)));
                        let gradient = cpu.tensor((gradient, (len,)));
                        let decay = if param.is_kernel { weight_decay } else { 0.0 };
                        update(optimizer, value, gradient, slots, lr, decay, t)?
                            .copy_into(param.values);
                        Ok(())
                    })?;
            }
            Suffix::Traced { suffix, slots } => {
                let tensors = suffix.params_mut().iter_mut().flat_map(|p| p.tensors_mut());
                for (tensor, slots) in tensors.zip(slots) {
                    match (tensor, slots) {
                        (ParamMut::Matrix(w), TracedSlots::Matrix(slots)) => {
                            let g = grads.get(&*w);
                            *w = update(optimizer, w.clone(), g, slots, lr, weight_decay, t)?;
                        }
                        (ParamMut::Vector(v), TracedSlots::Vector(slots)) => {
                            let g = grads.get(&*v);
                            *v = update(optimizer, v.clone(), g, slots, lr, 0.0, t)?;
                        }
                        _ => unreachable!("invariant: slots were made from the same tensors"),
                    }
                }
            }
        }
        Ok(())
    }

    /// The cut with the trained weights.
    pub(super) fn trained(&self) -> Result<Cut> {
        match self {
            Suffix::Native { suffix, .. } => suffix.trained(),
            Suffix::Traced { suffix, .. } => suffix.trained(),
        }
    }
}
