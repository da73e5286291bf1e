//! The five optimizers of the tutorial's exercise, with TensorFlow/Keras update rules and
//! defaults, written as element-wise updates on dfdx tensors so they run on any device.

use std::str::FromStr;

use dfdx::shapes::{HasShape, Shape};
use dfdx::tensor::Tensor;
use dfdx::tensor_ops::*;
use serde::{Deserialize, Serialize};

use crate::device::{dfdx_error as backend, DfdxDevice};
use crate::error::{Error, Result};

/// An optimizer and its hyperparameters (the learning rate lives in the training config).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Optimizer {
    /// Plain gradient descent: `w -= lr·g` (the tutorial's).
    Sgd,
    /// `a = momentum·a + g` (a decaying sum of gradients); `w -= lr·a`, or with Nesterov `w -= lr·(g + momentum·a)`
    /// (`tf.compat.v1.train.MomentumOptimizer`).
    Momentum {
        /// Decay of the velocity (0.9).
        momentum: f32,
        /// Use Nesterov's look-ahead gradient.
        nesterov: bool,
    },
    /// `acc += g²; w -= lr·g / (√acc + ε)` (Keras Adagrad; TF starts `acc` at 0.1).
    Adagrad {
        /// Starting value of the accumulator (0.1).
        initial_accumulator: f32,
        /// ε (1e-7).
        epsilon: f32,
    },
    /// Adam with TF's bias-corrected step size `lr·√(1−β₂ᵗ)/(1−β₁ᵗ)`.
    Adam {
        /// β₁ (0.9).
        beta1: f32,
        /// β₂ (0.999).
        beta2: f32,
        /// ε (1e-7).
        epsilon: f32,
    },
    /// RMSprop: `ms = ρ·ms + (1−ρ)·g²; w -= lr·g / (√ms + ε)`, with optional momentum.
    RmsProp {
        /// ρ, the decay of the squared-gradient average (0.9).
        rho: f32,
        /// Momentum (0.0).
        momentum: f32,
        /// ε (1e-7).
        epsilon: f32,
    },
}

impl Optimizer {
    /// Every optimizer with its default hyperparameters, in the exercise's order.
    pub fn all() -> [Optimizer; 5] {
        [
            Optimizer::Sgd,
            Optimizer::momentum(),
            Optimizer::adagrad(),
            Optimizer::adam(),
            Optimizer::rmsprop(),
        ]
    }

    /// Momentum with TF-like defaults (0.9, no Nesterov).
    pub fn momentum() -> Optimizer {
        Optimizer::Momentum {
            momentum: 0.9,
            nesterov: false,
        }
    }

    /// Adagrad with TF's defaults.
    pub fn adagrad() -> Optimizer {
        Optimizer::Adagrad {
            initial_accumulator: 0.1,
            epsilon: 1e-7,
        }
    }

    /// Adam with Keras' defaults.
    pub fn adam() -> Optimizer {
        Optimizer::Adam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
        }
    }

    /// RMSprop with Keras' defaults.
    pub fn rmsprop() -> Optimizer {
        Optimizer::RmsProp {
            rho: 0.9,
            momentum: 0.0,
            epsilon: 1e-7,
        }
    }

    /// Short name, which [`str::parse`] reads back: sgd, momentum, nesterov, adagrad, adam,
    /// rmsprop.
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Sgd => "sgd",
            Optimizer::Momentum {
                nesterov: false, ..
            } => "momentum",
            Optimizer::Momentum { nesterov: true, .. } => "nesterov",
            Optimizer::Adagrad { .. } => "adagrad",
            Optimizer::Adam { .. } => "adam",
            Optimizer::RmsProp { .. } => "rmsprop",
        }
    }
}

impl FromStr for Optimizer {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "sgd" | "gradientdescent" => Ok(Optimizer::Sgd),
            "momentum" => Ok(Optimizer::momentum()),
            "nesterov" => Ok(Optimizer::Momentum {
                momentum: 0.9,
                nesterov: true,
            }),
            "adagrad" => Ok(Optimizer::adagrad()),
            "adam" => Ok(Optimizer::adam()),
            "rmsprop" => Ok(Optimizer::rmsprop()),
            other => Err(Error::InvalidArgument(format!(
                "unknown optimizer '{other}': use sgd, momentum, nesterov, adagrad, adam or rmsprop"
            ))),
        }
    }
}

impl std::fmt::Display for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Per-parameter optimizer state ("slots" in TF): up to two running averages, created on
/// the first step.
pub struct Slots<S: Shape, D: DfdxDevice> {
    first: Option<Tensor<S, f32, D>>,
    second: Option<Tensor<S, f32, D>>,
}

impl<S: Shape, D: DfdxDevice> Default for Slots<S, D> {
    fn default() -> Self {
        Slots::new()
    }
}

impl<S: Shape, D: DfdxDevice> Slots<S, D> {
    /// Empty state, before the first step.
    pub fn new() -> Self {
        Slots {
            first: None,
            second: None,
        }
    }
}

/// One update of `param` by `grad` at step `t` (1-based), returning the new parameter.
///
/// ```
/// use dfdx::prelude::*;
/// use flowers_kit::train::optim::{update, Optimizer, Slots};
/// let dev = Cpu::default();
/// let w = dev.tensor((vec![1.0f32, 2.0], (2usize,)));
/// let g = dev.tensor((vec![0.5f32, -1.0], (2usize,)));
/// let w = update(&Optimizer::Sgd, w, g, &mut Slots::new(), 0.1, 0.0, 1)?;
/// assert_eq!(w.as_vec(), vec![0.95, 2.1]);
/// # Ok::<(), flowers_kit::Error>(())
/// ```
pub fn update<S: Shape, D: DfdxDevice>(
    optimizer: &Optimizer,
    param: Tensor<S, f32, D>,
    grad: Tensor<S, f32, D>,
    slots: &mut Slots<S, D>,
    lr: f32,
    weight_decay: f32,
    t: i32,
) -> Result<Tensor<S, f32, D>> {
    let dev = param.device().clone();
    let shape = *param.shape();
    let filled = |value: f32| -> Result<Tensor<S, f32, D>> {
        dev.try_zeros_like(&shape)
            .and_then(|z| z.try_add(value))
            .map_err(backend)
    };
    let grad = if weight_decay > 0.0 {
        grad.try_add(param.clone().try_mul(weight_decay).map_err(backend)?)
            .map_err(backend)?
    } else {
        grad
    };
    let step = match *optimizer {
        Optimizer::Sgd => grad.try_mul(lr).map_err(backend)?,
        Optimizer::Momentum { momentum, nesterov } => {
            // A decaying sum of gradients: a = momentum·a + g.
            let accum = decay(&mut slots.first, momentum, grad.clone(), 1.0, || {
                filled(0.0)
            })?;
            let direction = if nesterov {
                grad.try_add(accum.try_mul(momentum).map_err(backend)?)
                    .map_err(backend)?
            } else {
                accum
            };
            direction.try_mul(lr).map_err(backend)?
        }
        Optimizer::Adagrad {
            initial_accumulator,
            epsilon,
        } => {
            let squared = grad.clone().try_square().map_err(backend)?;
            let accum = decay(&mut slots.first, 1.0, squared, 1.0, || {
                filled(initial_accumulator)
            })?;
            adaptive_step(grad, accum, epsilon, lr)?
        }
        Optimizer::Adam {
            beta1,
            beta2,
            epsilon,
        } => {
            let squared = grad.clone().try_square().map_err(backend)?;
            let m = decay(&mut slots.first, beta1, grad, 1.0 - beta1, || filled(0.0))?;
            let v = decay(&mut slots.second, beta2, squared, 1.0 - beta2, || {
                filled(0.0)
            })?;
            let lr_t = lr * (1.0 - beta2.powi(t)).sqrt() / (1.0 - beta1.powi(t));
            adaptive_step(m, v, epsilon, lr_t)?
        }
        Optimizer::RmsProp {
            rho,
            momentum,
            epsilon,
        } => {
            let squared = grad.clone().try_square().map_err(backend)?;
            let ms = decay(&mut slots.first, rho, squared, 1.0 - rho, || filled(0.0))?;
            let step = adaptive_step(grad, ms, epsilon, lr)?;
            if momentum > 0.0 {
                decay(&mut slots.second, momentum, step, 1.0, || filled(0.0))?
            } else {
                step
            }
        }
    };
    param.try_sub(step).map_err(backend)
}

/// Updates an optimizer slot to `rate·slot + scale·value` (the slot starts as `init()` on the
/// first step) and returns the new value: every running average and sum above.
fn decay<S: Shape, D: DfdxDevice>(
    slot: &mut Option<Tensor<S, f32, D>>,
    rate: f32,
    value: Tensor<S, f32, D>,
    scale: f32,
    init: impl FnOnce() -> Result<Tensor<S, f32, D>>,
) -> Result<Tensor<S, f32, D>> {
    let old = match slot.take() {
        Some(old) => old,
        None => init()?,
    };
    let value = if scale == 1.0 {
        value
    } else {
        value.try_mul(scale).map_err(backend)?
    };
    let new = if rate == 1.0 {
        old.try_add(value)
    } else {
        old.try_mul(rate).and_then(|o| o.try_add(value))
    }
    .map_err(backend)?;
    *slot = Some(new.clone());
    Ok(new)
}

/// `lr · numerator / (√accumulator + ε)`: the step of Adagrad, Adam and RMSprop.
fn adaptive_step<S: Shape, D: DfdxDevice>(
    numerator: Tensor<S, f32, D>,
    accumulator: Tensor<S, f32, D>,
    epsilon: f32,
    lr: f32,
) -> Result<Tensor<S, f32, D>> {
    let denominator = accumulator
        .try_sqrt()
        .and_then(|d| d.try_add(epsilon))
        .map_err(backend)?;
    numerator
        .try_div(denominator)
        .and_then(|s| s.try_mul(lr))
        .map_err(backend)
}
