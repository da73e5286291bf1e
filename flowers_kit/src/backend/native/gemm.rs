//! The one call into gemm: a product of two strided views on the calling thread. Inference
//! (`conv`, row-major operands) and the gradient kernels (`grad`, transposed views) both
//! come here, so the `unsafe` call and its bounds check are written once.

use gemm::Parallelism;

/// A matrix read from a slice: element `(i, j)` at `i·row_stride + j·column_stride`, so a
/// row-major matrix and its transpose are views of the same values.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) rows: usize,
    pub(crate) columns: usize,
    pub(crate) row_stride: usize,
    pub(crate) column_stride: usize,
}

impl<'a> View<'a> {
    /// `data` as a row-major `[rows, columns]` matrix.
    pub(crate) fn rows(data: &'a [f32], rows: usize, columns: usize) -> View<'a> {
        View {
            data,
            rows,
            columns,
            row_stride: columns,
            column_stride: 1,
        }
    }

    /// The same values, rows and columns swapped.
    pub(crate) fn t(self) -> View<'a> {
        View {
            rows: self.columns,
            columns: self.rows,
            row_stride: self.column_stride,
            column_stride: self.row_stride,
            ..self
        }
    }

    /// Whether every element the view names lies inside its slice.
    pub(super) fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.columns == 0 {
            return true;
        }
        (self.rows - 1)
            .checked_mul(self.row_stride)
            .zip((self.columns - 1).checked_mul(self.column_stride))
            .and_then(|(a, b)| a.checked_add(b))
            .is_some_and(|last| last < self.data.len())
    }
}

/// `out = a · b`, or `out += a · b` with `accumulate`; `out` row-major `[a.rows, b.columns]`,
/// computed on the calling thread.
///
/// # Panics
/// When the views' shapes do not match each other or `out`, or a view names an element
/// outside its slice: gemm reads and writes through raw pointers, so this is checked in
/// release builds too.
pub(crate) fn product_here(out: &mut [f32], a: View<'_>, b: View<'_>, accumulate: bool) {
    let (m, k, n) = (a.rows, a.columns, b.columns);
    assert!(
        b.rows == k && Some(out.len()) == m.checked_mul(n) && a.in_bounds() && b.in_bounds(),
        "matrix product: shapes do not match the slices"
    );
    // SAFETY: the assert above proves that `out` holds exactly m×n values (row-major) and
    // that every element either view names is inside its slice; `out` is a `&mut` and so
    // cannot alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.column_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.column_stride as isize,
            b.row_stride as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}
