//! Where fine-tuning divides a network: the frozen steps below, run once per photo, and the
//! trainable suffix above, whose input is the activations crossing the cut.

use super::Network;
use crate::error::{Error, Result};

/// The most values per photo that may cross a cut: 2¹⁷ (512 KB of f32). Every family's last
/// block fits (ResNet-50 V2's `7×7×2048` and Inception V3's `8×8×2048` are the largest), and
/// the training rows of the 3,670 flower photos stay under 2 GB in memory and in the cache.
pub const MAX_CUT_VALUES: usize = 1 << 17;

/// Where one of a family's blocks starts in a prepared network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockStart {
    /// Keras' name for the block (`block_16`, `expanded_conv_14`, `block7a`,
    /// `conv5_block3`, `mixed10`, `normal_12`).
    pub name: String,
    /// The first step that belongs to it.
    pub first_step: usize,
}

/// A network divided for fine-tuning its last blocks: steps `first..` train, the steps below
/// are frozen, and `inputs` are the frozen steps the trainable ones read (one for most
/// families; NASNet's cells read the two cells before them). A photo's training row is the
/// `[h, w, c]` maps of those steps, one after the other.
#[derive(Debug, Clone)]
pub struct Cut {
    network: Network,
    blocks: usize,
    first: usize,
    inputs: Vec<usize>,
}

impl Network {
    /// The cut below the last `blocks` of the family's blocks. Errors unless `blocks` is 1
    /// to [`Network::max_fine_tune_blocks`].
    pub fn cut(&self, blocks: usize) -> Result<Cut> {
        let most = self.max_fine_tune_blocks();
        let start = self
            .blocks()
            .len()
            .checked_sub(blocks)
            .and_then(|i| self.blocks().get(i))
            .filter(|_| blocks >= 1 && blocks <= most)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{} fine-tunes 1 to {most} blocks (what fits {MAX_CUT_VALUES} values per \
                     photo at the cut), not {blocks}",
                    self.model().name()
                ))
            })?;
        Ok(self.cut_at(blocks, start.first_step))
    }

    /// The most blocks [`Network::cut`] accepts: the most whose input fits
    /// [`MAX_CUT_VALUES`] per photo (0 for a network without blocks).
    pub fn max_fine_tune_blocks(&self) -> usize {
        let blocks = self.blocks();
        // The input grows (or stays) as the cut moves down: count while it fits.
        (1..=blocks.len())
            .take_while(|&n| {
                let start = &blocks[blocks.len() - n];
                self.cut_at(n, start.first_step).row_len() <= MAX_CUT_VALUES
            })
            .count()
    }

    pub(crate) fn cut_at(&self, blocks: usize, first: usize) -> Cut {
        let steps = self.steps();
        let mut inputs: Vec<usize> = steps[first..]
            .iter()
            .flat_map(|s| s.inputs.iter().copied())
            .filter(|&j| j < first)
            .collect();
        inputs.sort_unstable();
        inputs.dedup();
        Cut {
            network: self.clone(),
            blocks,
            first,
            inputs,
        }
    }
}

impl Cut {
    /// The whole network, frozen part and trainable suffix.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// How many of the family's blocks train.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// The first trainable step.
    pub fn first(&self) -> usize {
        self.first
    }

    /// The frozen steps the trainable ones read, in order: a training row holds their maps.
    pub fn inputs(&self) -> &[usize] {
        &self.inputs
    }

    /// Names the rows this cut takes: the network's weights and where it is cut, so that
    /// rows of another cut (of the same length) are told apart.
    pub fn rows_key(&self) -> String {
        format!("{} cut at step {}", self.network.weights_id(), self.first)
    }

    /// The name of the first trainable block.
    pub fn block_name(&self) -> &str {
        let blocks = self.network.blocks();
        &blocks[blocks.len() - self.blocks].name
    }

    /// Values per photo crossing the cut: the length of a training row.
    pub fn row_len(&self) -> usize {
        self.inputs
            .iter()
            .map(|&j| self.network.steps()[j].shape.iter().product::<usize>())
            .sum()
    }

    /// The frozen part: the network up to the last step below the cut.
    pub fn frozen(&self) -> Result<Network> {
        self.network.truncated(self.first - 1)
    }

    /// The same cut of the network with the trainable steps' weights replaced (see
    /// [`Network::with_weights_from`]).
    pub fn with_weights_from(&self, steps: &[super::Step]) -> Result<Cut> {
        Ok(Cut {
            network: self.network.with_weights_from(self.first, steps)?,
            blocks: self.blocks,
            first: self.first,
            inputs: self.inputs.clone(),
        })
    }

    /// The trainable steps, with their current weights.
    pub fn suffix(&self) -> &[super::Step] {
        &self.network.steps()[self.first..]
    }

    /// Weights and biases in the trainable steps.
    pub fn parameter_count(&self) -> usize {
        self.suffix()
            .iter()
            .flat_map(|s| s.parameters())
            .map(<[f32]>::len)
            .sum()
    }
}
