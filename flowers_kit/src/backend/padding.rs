//! TensorFlow's window arithmetic: output sizes and where "same" padding goes (the odd one
//! after), resolved once into explicit (top, bottom, left, right) padding.

use crate::models::graph::{window, Padding};

/// Explicit (top, bottom, left, right) padding of a `kernel` window with `stride` on an
/// `h × w` map.
pub fn resolve(
    h: usize,
    w: usize,
    kernel: (usize, usize),
    stride: usize,
    padding: Padding,
) -> [usize; 4] {
    let axis = |size: usize, k: usize| -> (usize, usize) {
        match (padding, window(size, k, stride, padding)) {
            (Padding::Same, Some((out, before))) => {
                let total = ((out.saturating_sub(1)) * stride.max(1) + k).saturating_sub(size);
                (before, total - before)
            }
            _ => (0, 0),
        }
    };
    let (top, bottom) = axis(h, kernel.0);
    let (left, right) = axis(w, kernel.1);
    [top, bottom, left, right]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_tensorflow_same_padding() {
        // 224 → 112 with a 3×3 window, stride 2: TF pads 0 before and 1 after.
        assert_eq!(resolve(224, 224, (3, 3), 2, Padding::Same), [0, 1, 0, 1]);
        // 7 → 4: total padding 2, 1 before.
        assert_eq!(resolve(7, 7, (3, 3), 2, Padding::Same), [1, 1, 1, 1]);
        // 1×7 windows pad only the columns.
        assert_eq!(resolve(17, 17, (1, 7), 1, Padding::Same), [0, 0, 3, 3]);
        assert_eq!(resolve(9, 9, (3, 3), 1, Padding::Valid), [0, 0, 0, 0]);
    }
}
