//! What fine-tuning trains ([`FineTune`]: the backbone's last blocks, as the family names
//! them) and how the learning rates move over the steps ([`Schedule`]).
//!
//! The network is cut below those blocks ([`crate::backend::Cut`]): the frozen part runs
//! once per photo (and view) on the native backend, and its output — the activations
//! entering the blocks — is cached like features and becomes the training rows. Training
//! runs the steps above the cut, the same steps of the same network: on the CPU with the
//! native kernels and their backward pass ([`crate::backend::native::NativeSuffix`]), on a
//! GPU (or with `TrainConfig::backend` set to dfdx) on dfdx with a traced tape
//! ([`crate::backend::TrainableSuffix`]). Batch norm stays folded into the
//! convolutions with its inference statistics, which is what the Keras guide's
//! `training=False` achieves: what trains is each convolution's kernel and bias (and the
//! scale and shift of a batch norm that follows no convolution, as ResNet V2's
//! pre-activations).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The most blocks any family could unfreeze (each family's own limit, what fits
/// [`crate::backend::MAX_CUT_VALUES`] per photo at the cut, is lower: `flowers models` lists
/// it); a bound on the argument before any model is known.
pub const MAX_FINE_TUNE_BLOCKS: usize = 64;

/// Which part of the backbone trains, and how: two phases, as the Keras transfer-learning
/// guide teaches it — first the head alone for `head_steps` steps on the frozen features
/// (cheap: the suffix runs once over the rows) at `TrainConfig::learning_rate`, then the last
/// `blocks` unfrozen together with the head for `TrainConfig::steps` steps, both at the low
/// `learning_rate` (the guide recompiles the whole model with one low rate). With
/// `head_steps: 0` there is one phase, and the head keeps its own rate.
///
/// ```
/// use flowers_kit::train::FineTune;
/// assert!(FineTune { blocks: 2, learning_rate: 1e-3, head_steps: 100 }.validate().is_ok());
/// assert!(FineTune { blocks: 0, learning_rate: 1e-3, head_steps: 0 }.validate().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FineTune {
    /// The family's blocks counted from the top (`block_16`, `expanded_conv_14`, `block7a`,
    /// `conv5_block3`, `mixed10`, `normal_12`): 1 to the model's limit. Everything after them
    /// (the last convolution, a final batch norm) trains with them.
    pub blocks: usize,
    /// The backbone's learning rate, smaller than the head's so that the pretrained filters
    /// move a little rather than being overwritten (and the head's too after a head-only
    /// phase).
    pub learning_rate: f32,
    /// Steps the head trains alone on the frozen features before the blocks unfreeze (0:
    /// train both from the start, the head at `TrainConfig::learning_rate`).
    pub head_steps: usize,
}

impl FineTune {
    /// Errors unless `blocks` is 1 to [`MAX_FINE_TUNE_BLOCKS`] and the learning rate a
    /// positive number.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_FINE_TUNE_BLOCKS).contains(&self.blocks) {
            return Err(Error::InvalidArgument(format!(
                "fine-tuning trains 1 to {MAX_FINE_TUNE_BLOCKS} blocks, got {}",
                self.blocks
            )));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "the fine-tuning learning rate must be a positive number, got {}",
                self.learning_rate
            )));
        }
        Ok(())
    }
}

/// How the learning rates change over training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Schedule {
    /// The same rate at every step (the tutorial).
    #[default]
    Constant,
    /// From the full rate down to zero along half a cosine.
    Cosine,
}

impl Schedule {
    /// The factor on the learning rate at `step` (from 0) of `steps`.
    ///
    /// ```
    /// use flowers_kit::train::Schedule;
    /// assert_eq!(Schedule::Cosine.factor(0, 100), 1.0);
    /// assert!((Schedule::Cosine.factor(50, 100) - 0.5).abs() < 1e-6);
    /// assert_eq!(Schedule::Constant.factor(99, 100), 1.0);
    /// ```
    pub fn factor(self, step: usize, steps: usize) -> f32 {
        match self {
            Schedule::Constant => 1.0,
            Schedule::Cosine => {
                let progress = step as f64 / steps.max(1) as f64;
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())) as f32
            }
        }
    }
}
