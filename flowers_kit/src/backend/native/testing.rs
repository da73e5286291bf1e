//! Networks written step by step, for the tests of the native kernels.

use crate::backend::{Conv, Kernel, Step};
use crate::models::graph::{Activation, Shape};

/// Deterministic values in [-0.5, 0.5).
pub(super) fn values(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

/// A step named `name`.
pub(super) fn step(name: &str, kernel: Kernel, inputs: Vec<usize>, shape: Shape) -> Step {
    Step {
        name: name.into(),
        kernel,
        inputs,
        shape,
    }
}

/// A convolution with deterministic weights and bias from `seed`.
#[allow(clippy::too_many_arguments)]
pub(super) fn conv(
    (kh, kw): (usize, usize),
    stride: usize,
    pad: [usize; 4],
    cin: usize,
    cout: usize,
    depthwise: bool,
    activation: Activation,
    seed: usize,
) -> Kernel {
    let weights = kh * kw * cin * if depthwise { 1 } else { cout };
    Kernel::Conv(Conv {
        kernel: (kh, kw),
        stride,
        pad,
        cin,
        cout,
        depthwise,
        weights: values(weights, seed),
        bias: values(cout, seed + 1),
        activation,
    })
}
