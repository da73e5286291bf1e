//! The steps above a [`Cut`] on a dfdx device, ready to train: the same interpreter as a
//! forward pass, run with traced parameters.

use dfdx::tensor::{Tensor, TensorFrom, Trace};

use super::{run, DfdxDevice, Matrix, StepParams, Traced};
use crate::backend::Cut;
use crate::error::{Error, Result};

/// Photos per pass when the suffix runs without training: bounds the gathered window taps
/// (`photos · h·w · taps · channels` values).
pub const EVAL_CHUNK: usize = 32;

/// The trainable steps of a [`Cut`], their parameters on a device.
///
/// ```
/// use flowers_kit::backend::dfdx::TrainableSuffix;
/// use flowers_kit::backend::Network;
/// use flowers_kit::models::Model;
///
/// let network = Network::random(Model::parse("mobilenet_v2_0.35_96")?, 0)?;
/// let cut = network.cut(1)?;   // block_16 and what follows it
/// let suffix = TrainableSuffix::new(&cut, dfdx::tensor::Cpu::default())?;
/// let rows = vec![0.5; 2 * cut.row_len()];
/// assert_eq!(suffix.features(&rows, 2)?.len(), 2 * network.feature_dim());
/// # Ok::<(), flowers_kit::Error>(())
/// ```
pub struct TrainableSuffix<D: DfdxDevice> {
    device: D,
    cut: Cut,
    params: Vec<StepParams<D>>,
}

impl<D: DfdxDevice> std::fmt::Debug for TrainableSuffix<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainableSuffix")
            .field("model", &self.cut.network().model().name())
            .field("first", &self.cut.first())
            .finish_non_exhaustive()
    }
}

impl<D: DfdxDevice> TrainableSuffix<D> {
    /// Uploads the weights of the steps above `cut`.
    pub fn new(cut: &Cut, device: D) -> Result<Self> {
        let params = cut
            .suffix()
            .iter()
            .map(|step| StepParams::upload(step, &device))
            .collect::<Result<Vec<_>>>()?;
        Ok(TrainableSuffix {
            device,
            cut: cut.clone(),
            params,
        })
    }

    /// The device it runs on.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// Values per photo of its input rows (the maps crossing the cut).
    pub fn row_len(&self) -> usize {
        self.cut.row_len()
    }

    /// The values of each step the suffix reads below the cut, `[n·h·w, c]`, from `n` rows.
    fn given(&self, rows: &[f32], n: usize) -> Result<Vec<(usize, Matrix<D>)>> {
        let row_len = self.cut.row_len();
        if Some(rows.len()) != n.checked_mul(row_len) {
            return Err(Error::InvalidArgument(format!(
                "expected {n} rows of {row_len} values (the activations entering {}), got {}",
                self.cut.block_name(),
                rows.len()
            )));
        }
        let steps = self.cut.network().steps();
        let mut offset = 0;
        let mut given = Vec::with_capacity(self.cut.inputs().len());
        for &j in self.cut.inputs() {
            let [h, w, c] = steps[j].shape;
            let size = h * w * c;
            let mut values = Vec::with_capacity(n * size);
            for row in rows.chunks_exact(row_len) {
                values.extend_from_slice(&row[offset..offset + size]);
            }
            given.push((j, self.device.tensor((values, (n * h * w, c)))));
            offset += size;
        }
        Ok(given)
    }

    /// Features `[n, F]` of `n` rows, without recording gradients, [`EVAL_CHUNK`] rows at a
    /// time.
    pub fn features(&self, rows: &[f32], n: usize) -> Result<Vec<f32>> {
        let row_len = self.cut.row_len();
        if Some(rows.len()) != n.checked_mul(row_len) {
            // The same message as a single pass gives.
            self.given(rows, n)?;
        }
        let mut out = Vec::with_capacity(n * self.cut.network().feature_dim());
        for chunk in rows.chunks(EVAL_CHUNK * row_len.max(1)) {
            let m = chunk.len() / row_len.max(1);
            let given = self.given(chunk, m)?;
            let steps = self.cut.network().steps();
            out.extend(run(steps, self.cut.first(), given, self.params.clone(), m)?.as_vec());
        }
        Ok(out)
    }

    /// Features `[n, F]` of `n` rows with every parameter traced, for one training step:
    /// after `backward`, each parameter's gradient is `gradients.get(tensor)` of the tensors
    /// [`params_mut`](Self::params_mut) hands out.
    pub fn features_traced(&self, rows: &[f32], n: usize) -> Result<Matrix<D, Traced<D>>> {
        // The rows need no gradient; their tapes start empty and merge into the params'.
        let given = self
            .given(rows, n)?
            .into_iter()
            .map(|(j, x)| (j, x.leaky_trace()))
            .collect();
        let traced = self.params.iter().map(StepParams::traced).collect();
        run(
            self.cut.network().steps(),
            self.cut.first(),
            given,
            traced,
            n,
        )
    }

    /// The parameters of every trainable step, in step order, to update after a step.
    pub fn params_mut(&mut self) -> &mut [StepParams<D>] {
        &mut self.params
    }

    /// The cut with the trained weights copied back into its network.
    pub fn trained(&self) -> Result<Cut> {
        let mut steps = self.cut.suffix().to_vec();
        for (step, params) in steps.iter_mut().zip(&self.params) {
            params.download(step);
        }
        self.cut.with_weights_from(&steps)
    }
}

impl<D: DfdxDevice> StepParams<D> {
    /// Each tensor of the step, as a matrix or a vector, for an optimizer to update.
    pub fn tensors_mut(&mut self) -> Vec<ParamMut<'_, D>> {
        match self {
            StepParams::None => Vec::new(),
            StepParams::Conv { weights, bias } => {
                vec![ParamMut::Matrix(weights), ParamMut::Vector(bias)]
            }
            StepParams::Affine { scale, shift } => {
                vec![ParamMut::Vector(scale), ParamMut::Vector(shift)]
            }
        }
    }
}

/// One trainable tensor.
#[derive(Debug)]
pub enum ParamMut<'a, D: DfdxDevice> {
    /// A kernel.
    Matrix(&'a mut Tensor<(usize, usize), f32, D>),
    /// A bias, scale or shift.
    Vector(&'a mut Tensor<(usize,), f32, D>),
}
