//! TensorFlow's "SAME" padding for the 3×3 convolutions: output size, and how much padding
//! goes before (top/left) — TF puts the odd one after.

/// Output size of a TF "SAME" convolution.
pub fn same_output(input: usize, stride: usize) -> usize {
    input.div_ceil(stride.max(1))
}

/// Padding before (top/left) of a TF "SAME" 3×3 convolution; the rest goes after.
pub fn same_pad_before(input: usize, stride: usize) -> usize {
    let out = same_output(input, stride);
    let total = (out.saturating_sub(1) * stride + 3).saturating_sub(input);
    total / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_tensorflow_same_padding() {
        // 224 → 112 with stride 2: TF pads 0 before and 1 after.
        assert_eq!((same_output(224, 2), same_pad_before(224, 2)), (112, 0));
        // 7 → 4 with stride 2: total padding 2, 1 before.
        assert_eq!((same_output(7, 2), same_pad_before(7, 2)), (4, 1));
        // Stride 1 always pads 1 before.
        assert_eq!((same_output(5, 1), same_pad_before(5, 1)), (5, 1));
    }
}
