//! Element-wise maths: activations (compiled for the network's instruction set) and a
//! vectorisable `exp`.

use super::isa::Kernels;
use crate::models::graph::Activation;

/// Applies `activation` in place, compiled for `kernels`' instruction set (swish in
/// EfficientNet spent half its forward pass here with SSE2 code, and its polynomial and
/// division still dominate its expansions: AVX-512 halves their instructions).
pub(super) fn activate(values: &mut [f32], activation: Activation, kernels: Kernels) {
    if activation == Activation::Linear {
        return;
    }
    match kernels {
        #[cfg(target_arch = "x86_64")]
        Kernels::Avx512 if kernels.is_supported() => {
            // SAFETY: the CPU supports AVX-512 F and VL, AVX2 and FMA (is_supported).
            unsafe { activate_avx512(values, activation) }
        }
        #[cfg(target_arch = "x86_64")]
        Kernels::Avx2 | Kernels::Avx512 if Kernels::Avx2.is_supported() => {
            // SAFETY: the CPU supports AVX2 and FMA (is_supported).
            unsafe { activate_avx2(values, activation) }
        }
        _ => activate_inline(values, activation),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn activate_avx2(values: &mut [f32], activation: Activation) {
    activate_inline(values, activation)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
fn activate_avx512(values: &mut [f32], activation: Activation) {
    activate_inline(values, activation)
}

// max/min rather than clamp: clamp's NaN-preserving compare-and-select vectorises worse.
#[allow(clippy::manual_clamp)]
#[inline(always)]
fn activate_inline(values: &mut [f32], activation: Activation) {
    match activation {
        Activation::Linear => {}
        Activation::Relu => values.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Relu6 => values.iter_mut().for_each(|v| *v = v.max(0.0).min(6.0)),
        Activation::Sigmoid => values.iter_mut().for_each(|v| *v = 1.0 / (1.0 + exp(-*v))),
        Activation::Swish => values.iter_mut().for_each(|v| *v *= 1.0 / (1.0 + exp(-*v))),
        Activation::HardSigmoid => values
            .iter_mut()
            .for_each(|v| *v = (*v + 3.0).max(0.0).min(6.0) * (1.0 / 6.0)),
        Activation::HardSwish => values
            .iter_mut()
            .for_each(|v| *v *= (*v + 3.0).max(0.0).min(6.0) * (1.0 / 6.0)),
    }
}

/// `out = x · scale + shift`, per channel over rows of `scale.len()` channels (a batch norm
/// without a convolution, a rescaling).
pub(super) fn affine(out: &mut [f32], x: &[f32], scale: &[f32], shift: &[f32]) {
    let c = scale.len().max(1);
    for (row, x) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        for (((o, v), s), t) in row.iter_mut().zip(x).zip(scale).zip(shift) {
            *o = v * s + t;
        }
    }
}

/// Adds the per-channel bias to every row and applies `activation`, in one pass.
// max/min rather than clamp: clamp's NaN-preserving compare-and-select vectorises worse.
#[allow(clippy::manual_clamp)]
pub(super) fn bias_activate(
    out: &mut [f32],
    bias: &[f32],
    activation: Activation,
    kernels: Kernels,
) {
    match activation {
        Activation::Relu6 => {
            for row in out.chunks_exact_mut(bias.len()) {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v = (*v + b).max(0.0).min(6.0);
                }
            }
        }
        Activation::Relu => {
            for row in out.chunks_exact_mut(bias.len()) {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v = (*v + b).max(0.0);
                }
            }
        }
        other => {
            for row in out.chunks_exact_mut(bias.len()) {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v += b;
                }
                activate(row, other, kernels);
            }
        }
    }
}

/// e^x in f32 with a branch-free polynomial (Cephes' `expf`, within a few ulp), so that loops
/// over it vectorise; `f32::exp` is a scalar library call per element.
// max/min rather than clamp: clamp's NaN-preserving compare-and-select vectorises worse.
#[allow(clippy::manual_clamp)]
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.3).min(88.3);
    // n = round(x / ln 2), |n| ≤ 127 after the clamp, by the magic-number addition: integer
    // bit operations only, so that the loop vectorises (a float-to-int `as` did not).
    let shifted = x * LOG2E + ROUND;
    let nf = shifted - ROUND;
    let r = x - nf * LN2_HI - nf * LN2_LO;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n from its exponent bits: n + 127 is within 1..=254 for the clamped range, and
    // `shifted`'s low bits hold n + 0x40_0000.
    let biased = shifted
        .to_bits()
        .wrapping_sub(0x4B40_0000)
        .wrapping_add(127);
    e * f32::from_bits(biased << 23)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_vectorisable_exp_matches_the_library_one() {
        let mut worst = 0f32;
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let (ours, std) = (super::exp(x), x.exp());
            worst = worst.max(((ours - std) / std).abs());
        }
        assert!(worst < 5e-7, "relative error {worst}");
    }
}
