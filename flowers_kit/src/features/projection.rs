//! Feature vectors as points on a page: their first two principal components (PCA).
//!
//! PCA is a linear projection, like the classifier the tutorial trains on the features: kinds
//! of flower that form separate clouds here are what a linear head can tell apart. The
//! maths is two eigenvectors of the features' covariance, found by subspace iteration on
//! the covariance (one matrix product per round, through the native backend's gemm) and a
//! Rayleigh–Ritz step on a few vectors. A PCA crate (linfa-reduction) would add 31 crates
//! (ndarray, sprs, kdtree, alga, …) to what every notebook kernel type-checks when it starts,
//! for these two vectors.

use rand::{Rng, SeedableRng};

use crate::backend::native::gemm::{product_here, View};
use crate::error::{Error, Result};

/// Longest feature vector [`Projection::pca`] accepts: its covariance is `dim²` values
/// (64 MiB at 4096; the kit's longest features are NASNet Large's 4032).
pub const MAX_PCA_DIM: usize = 4096;

/// Vectors iterated at once: more than the two kept, so that the third and later
/// directions do not slow the convergence of the second.
const SUBSPACE: usize = 8;

/// Rounds of subspace iteration at most; convergence is checked every `CHECK_EVERY`.
const MAX_ROUNDS: usize = 1_000;
const CHECK_EVERY: usize = 10;

/// A linear map from feature vectors to the plane of their two largest principal
/// components, fitted to a set of vectors (typically the training photos' features).
///
/// ```
/// use flowers_kit::features::Projection;
/// // Points along the line y = 2x in 3-D, with z constant: one direction holds everything.
/// let rows: Vec<f32> = (0..20).flat_map(|i| [i as f32, 2.0 * i as f32, 5.0]).collect();
/// let pca = Projection::pca(&rows, 3)?;
/// assert!(pca.explained()[0] > 0.999);
/// let points = pca.project(&rows)?;
/// assert_eq!(points.len(), 20);
/// # Ok::<(), flowers_kit::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    dim: usize,
    mean: Vec<f32>,
    /// Two unit vectors of `dim` values, the larger variance first.
    components: [Vec<f32>; 2],
    /// The share of the total variance along each component.
    explained: [f64; 2],
}

impl Projection {
    /// Fits the projection to `rows` (row-major, `dim` values each): the mean and the two
    /// directions of largest variance. Errors on fewer than two rows, a length that is not
    /// whole rows, a non-finite value, or vectors that are all the same (no direction to
    /// show).
    pub fn pca(rows: &[f32], dim: usize) -> Result<Projection> {
        if dim == 0 || dim > MAX_PCA_DIM || !rows.len().is_multiple_of(dim) || rows.len() / dim < 2
        {
            return Err(Error::InvalidArgument(format!(
                "PCA needs at least 2 vectors of 1 to {MAX_PCA_DIM} values, not {} values in \
                 vectors of {dim}",
                rows.len()
            )));
        }
        if rows.iter().any(|v| !v.is_finite()) {
            return Err(Error::InvalidArgument(
                "PCA of feature vectors with a NaN or infinite value".into(),
            ));
        }
        let n = rows.len() / dim;
        let (mean, centred) = centred_to_unit(rows, dim)?;
        // The covariance times (n − 1) / largest² (the scale does not change its eigenvectors).
        let mut covariance = vec![0.0f32; dim * dim];
        let x = View::rows(&centred, n, dim);
        product_here(&mut covariance, x.t(), x, false);
        let total: f64 = (0..dim).map(|i| f64::from(covariance[i * dim + i])).sum();
        if !total.is_finite() || total <= 0.0 {
            return Err(Error::InvalidArgument(format!(
                "PCA of feature vectors whose total variance is {total}: no direction to show"
            )));
        }
        let components = top_eigenvectors(&covariance, dim)?;
        // Each direction's share, measured along the final unit vector itself.
        let share = |c: &[f32]| -> f64 {
            let along: f64 = (0..dim)
                .map(|r| {
                    let row = &covariance[r * dim..(r + 1) * dim];
                    let ar: f64 = row
                        .iter()
                        .zip(c)
                        .map(|(a, x)| f64::from(*a) * f64::from(*x))
                        .sum();
                    ar * f64::from(c[r])
                })
                .sum();
            along / total
        };
        let explained = [share(&components[0]), share(&components[1])];
        if explained
            .iter()
            .any(|e| !e.is_finite() || *e < -1e-4 || *e > 1.0 + 1e-4)
            || explained[0] + explained[1] > 1.0 + 1e-4
        {
            return Err(Error::InvalidArgument(format!(
                "PCA went wrong: the two directions claim {explained:?} of the variance"
            )));
        }
        Ok(Projection {
            dim,
            mean,
            components,
            explained: explained.map(|e| e.clamp(0.0, 1.0)),
        })
    }

    /// Each of `rows`' vectors as a point `[x, y]` of the plane.
    pub fn project(&self, rows: &[f32]) -> Result<Vec<[f32; 2]>> {
        if !rows.len().is_multiple_of(self.dim) {
            return Err(Error::InvalidArgument(format!(
                "{} values are not whole vectors of {}",
                rows.len(),
                self.dim
            )));
        }
        Ok(rows
            .chunks_exact(self.dim)
            .map(|row| {
                let along = |c: &[f32]| -> f32 {
                    row.iter()
                        .zip(&self.mean)
                        .zip(c)
                        .map(|((v, m), c)| f64::from(v - m) * f64::from(*c))
                        .sum::<f64>() as f32
                };
                [along(&self.components[0]), along(&self.components[1])]
            })
            .collect())
    }

    /// The two directions, unit vectors, the larger variance first.
    pub fn components(&self) -> &[Vec<f32>; 2] {
        &self.components
    }

    /// The share of the vectors' total variance that each direction shows (0 to 1).
    pub fn explained(&self) -> [f64; 2] {
        self.explained
    }
}

/// `rows` (`dim` values each) minus their mean, divided by the largest absolute value left,
/// so that products of them (a covariance, a Gram matrix) cannot overflow f32 — directions,
/// shares of variance and nearest neighbours do not depend on that scale — and the mean.
/// Errors when a centred value is beyond f32's range, or when the vectors are all the same.
pub(super) fn centred_to_unit(rows: &[f32], dim: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let n = rows.len() / dim;
    let mut mean = vec![0.0f64; dim];
    for row in rows.chunks_exact(dim) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += f64::from(v);
        }
    }
    let mean: Vec<f32> = mean.iter().map(|m| (m / n as f64) as f32).collect();
    let mut centred: Vec<f32> = rows
        .chunks_exact(dim)
        .flat_map(|row| row.iter().zip(&mean).map(|(v, m)| v - m))
        .collect();
    let largest = centred.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if !largest.is_finite() {
        return Err(Error::InvalidArgument(
            "PCA of feature vectors too large to subtract (beyond f32's range)".into(),
        ));
    }
    if largest == 0.0 {
        return Err(Error::InvalidArgument(
            "PCA of feature vectors that are all the same: no direction to show".into(),
        ));
    }
    centred.iter_mut().for_each(|v| *v /= largest);
    Ok((mean, centred))
}

/// The two eigenvectors of the symmetric `dim × dim` matrix `a` with the largest
/// eigenvalues (unit vectors; the second is zero when `dim` is 1). `a` is positive
/// semi-definite (a covariance). An error if they have not settled after `MAX_ROUNDS`.
fn top_eigenvectors(a: &[f32], dim: usize) -> Result<[Vec<f32>; 2]> {
    let k = SUBSPACE.min(dim);
    // A fixed start: the same features always give the same picture.
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut v: Vec<f32> = (0..dim * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
    orthonormalize(&mut v, dim, k, &mut rng);
    let mut product = vec![0.0f32; dim * k];
    let mut previous = [f64::NAN; 2];
    let mut settled = false;
    for round in 1..=MAX_ROUNDS {
        product_here(
            &mut product,
            View::rows(a, dim, dim),
            View::rows(&v, dim, k),
            false,
        );
        if round % CHECK_EVERY != 0 {
            std::mem::swap(&mut v, &mut product);
            orthonormalize(&mut v, dim, k, &mut rng);
            continue;
        }
        // Rayleigh–Ritz: the best eigenvectors within the current (orthonormal) subspace.
        let mut small = vec![0.0f64; k * k];
        for i in 0..k {
            for j in 0..k {
                small[i * k + j] = (0..dim)
                    .map(|r| f64::from(v[r * k + i]) * f64::from(product[r * k + j]))
                    .sum();
            }
        }
        let (eigenvalues, vectors) = jacobi_eigen(&mut small, k);
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&x, &y| eigenvalues[y].total_cmp(&eigenvalues[x]));
        let mut rotated = vec![0.0f32; dim * k];
        for r in 0..dim {
            for (slot, &c) in order.iter().enumerate() {
                rotated[r * k + slot] = (0..k)
                    .map(|i| f64::from(v[r * k + i]) * vectors[i * k + c])
                    .sum::<f64>() as f32;
            }
        }
        v = rotated;
        orthonormalize(&mut v, dim, k, &mut rng);
        let values = [
            eigenvalues[order[0]],
            order.get(1).map_or(0.0, |&c| eigenvalues[c]),
        ];
        let scale = values[0].abs().max(f64::MIN_POSITIVE);
        if (0..2).all(|i| (values[i] - previous[i]).abs() <= 1e-7 * scale) {
            settled = true;
            break;
        }
        previous = values;
    }
    if !settled {
        return Err(Error::InvalidArgument(format!(
            "PCA did not settle in {MAX_ROUNDS} rounds"
        )));
    }
    let column = |c: usize| -> Vec<f32> {
        if c >= k {
            return vec![0.0; dim];
        }
        let mut x: Vec<f32> = (0..dim).map(|r| v[r * k + c]).collect();
        // A sign of its own choosing: the largest entry is positive.
        let largest = x
            .iter()
            .fold(0.0f32, |m, &e| if e.abs() > m.abs() { e } else { m });
        if largest < 0.0 {
            x.iter_mut().for_each(|e| *e = -*e);
        }
        x
    };
    Ok([column(0), column(1)])
}

/// Makes the `k` columns of the row-major `dim × k` matrix `v` orthonormal: Gram–Schmidt
/// twice (once is not enough in floating point when a column nearly lies in the span of
/// the earlier ones), in f64. A column that (nearly) lies in that span is replaced by a
/// random vector, made orthonormal the same way.
fn orthonormalize(v: &mut [f32], dim: usize, k: usize, rng: &mut rand::rngs::StdRng) {
    for c in 0..k {
        let mut col: Vec<f64> = (0..dim).map(|r| f64::from(v[r * k + c])).collect();
        let mut placed = false;
        for _attempt in 0..8 {
            let before = col.iter().map(|x| x * x).sum::<f64>().sqrt();
            for _pass in 0..2 {
                for p in 0..c {
                    let dot: f64 = (0..dim).map(|r| col[r] * f64::from(v[r * k + p])).sum();
                    for (r, x) in col.iter_mut().enumerate() {
                        *x -= dot * f64::from(v[r * k + p]);
                    }
                }
            }
            let norm = col.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm > 1e-6 * before && norm > 0.0 {
                for (r, x) in col.iter().enumerate() {
                    v[r * k + c] = (x / norm) as f32;
                }
                placed = true;
                break;
            }
            // Nothing of its own left: start this column again from a random vector (k ≤
            // dim, so one with a part outside the span exists, and a random one has it).
            col = (0..dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
        }
        if !placed {
            // Eight random vectors all inside the span cannot happen with k ≤ dim but for
            // rounding; a zero column then only adds a zero eigenvalue to Rayleigh–Ritz.
            for r in 0..dim {
                v[r * k + c] = 0.0;
            }
        }
    }
}

/// Eigenvalues and eigenvectors (as the columns of a row-major `k × k` matrix) of the
/// symmetric `k × k` matrix `a`, by cyclic Jacobi rotations; `a` is overwritten.
fn jacobi_eigen(a: &mut [f64], k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut vectors = vec![0.0f64; k * k];
    for i in 0..k {
        vectors[i * k + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..k)
            .flat_map(|i| (0..k).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * k + j] * a[i * k + j])
            .sum();
        let scale: f64 = (0..k).map(|i| a[i * k + i] * a[i * k + i]).sum();
        if off <= 1e-30 * scale.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..k {
            for q in p + 1..k {
                let apq = a[p * k + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * k + q] - a[p * k + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for r in 0..k {
                    let (arp, arq) = (a[r * k + p], a[r * k + q]);
                    a[r * k + p] = c * arp - s * arq;
                    a[r * k + q] = s * arp + c * arq;
                }
                for r in 0..k {
                    let (apr, aqr) = (a[p * k + r], a[q * k + r]);
                    a[p * k + r] = c * apr - s * aqr;
                    a[q * k + r] = s * apr + c * aqr;
                }
                for r in 0..k {
                    let (vrp, vrq) = (vectors[r * k + p], vectors[r * k + q]);
                    vectors[r * k + p] = c * vrp - s * vrq;
                    vectors[r * k + q] = s * vrp + c * vrq;
                }
            }
        }
    }
    ((0..k).map(|i| a[i * k + i]).collect(), vectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points spread 3 : 2 : 0.1 along three known orthonormal directions of a 40-dim
    /// space: PCA must find the first two, in order, with their share of the variance.
    #[test]
    fn finds_known_directions_and_their_variance() {
        let dim = 40;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut axes: Vec<f32> = (0..dim * 3).map(|_| rng.gen_range(-1.0..1.0)).collect();
        orthonormalize(&mut axes, dim, 3, &mut rng);
        let axis = |c: usize| (0..dim).map(|r| axes[r * 3 + c]).collect::<Vec<f32>>();
        let (u, w, z) = (axis(0), axis(1), axis(2));
        let n = 2000;
        let mut rows = Vec::with_capacity(n * dim);
        for _ in 0..n {
            let (a, b, c): (f32, f32, f32) = (
                rng.gen_range(-1.0..1.0) * 3.0,
                rng.gen_range(-1.0..1.0) * 2.0,
                rng.gen_range(-1.0..1.0) * 0.1,
            );
            rows.extend((0..dim).map(|r| 5.0 + a * u[r] + b * w[r] + c * z[r]));
        }
        let pca = Projection::pca(&rows, dim).unwrap();
        let cos = |x: &[f32], y: &[f32]| -> f32 { x.iter().zip(y).map(|(a, b)| a * b).sum() };
        assert!(cos(&pca.components()[0], &u).abs() > 0.999);
        assert!(cos(&pca.components()[1], &w).abs() > 0.999);
        // Uniform spreads: variances 9 : 4 : 0.01 (each divided by 3), so 9/13.01 and 4/13.01.
        let [first, second] = pca.explained();
        assert!((first - 9.0 / 13.01).abs() < 0.03, "{first}");
        assert!((second - 4.0 / 13.01).abs() < 0.03, "{second}");
        // A projected point is its coordinates along the two axes.
        let points = pca.project(&rows[..dim]).unwrap();
        let expected = [
            cos(
                &rows[..dim].iter().map(|v| v - 5.0).collect::<Vec<_>>(),
                &pca.components()[0],
            ),
            cos(
                &rows[..dim].iter().map(|v| v - 5.0).collect::<Vec<_>>(),
                &pca.components()[1],
            ),
        ];
        assert!(
            (points[0][0] - expected[0]).abs() < 0.05,
            "{points:?} {expected:?}"
        );
        assert!(
            (points[0][1] - expected[1]).abs() < 0.05,
            "{points:?} {expected:?}"
        );
    }

    /// Data of rank 1 and 2 (fewer rows than the vectors iterated): the directions are
    /// still unit vectors, and their shares of the variance add up to at most 1.
    #[test]
    fn low_rank_data_gives_unit_directions_and_true_shares() {
        let unit = |c: &[f32]| (c.iter().map(|x| x * x).sum::<f32>().sqrt() - 1.0).abs() < 1e-4;
        // Two rows: everything lies along (1, 1, 1, 1, 0).
        let pca = Projection::pca(&[0., 0., 0., 0., 0., 1., 1., 1., 1., 0.], 5).unwrap();
        assert!(unit(&pca.components()[0]) && unit(&pca.components()[1]));
        assert!((pca.explained()[0] - 1.0).abs() < 1e-4 && pca.explained()[1] < 1e-4);
        let [p, q] = pca
            .project(&[1., 1., 1., 1., 0., 0., 0., 0., 0., 0.])
            .unwrap()[..]
        else {
            panic!()
        };
        assert!(
            ((p[0] - q[0]).abs() - 2.0).abs() < 1e-4,
            "one unit of (1,1,1,1,0) is 2 long"
        );
        // Three rows in 40 dimensions.
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let rows: Vec<f32> = (0..3 * 40).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let pca = Projection::pca(&rows, 40).unwrap();
        assert!(unit(&pca.components()[0]) && unit(&pca.components()[1]));
        let [a, b] = pca.explained();
        assert!(
            a >= b && a + b <= 1.0 + 1e-4 && a + b > 0.999,
            "rank 2: {a} + {b}"
        );
        let dot: f32 = pca.components()[0]
            .iter()
            .zip(&pca.components()[1])
            .map(|(x, y)| x * y)
            .sum();
        assert!(dot.abs() < 1e-4);
    }

    #[test]
    fn jacobi_diagonalises_a_symmetric_matrix() {
        let mut a = vec![4.0, 1.0, 2.0, 1.0, 3.0, 0.5, 2.0, 0.5, 1.0];
        let original = a.clone();
        let (values, vectors) = jacobi_eigen(&mut a, 3);
        for c in 0..3 {
            for r in 0..3 {
                let av: f64 = (0..3)
                    .map(|i| original[r * 3 + i] * vectors[i * 3 + c])
                    .sum();
                assert!((av - values[c] * vectors[r * 3 + c]).abs() < 1e-9);
            }
        }
        assert!((values.iter().sum::<f64>() - 8.0).abs() < 1e-9);
    }

    #[test]
    fn refuses_what_it_cannot_project() {
        assert!(Projection::pca(&[1.0, 2.0, 3.0], 3).is_err(), "one vector");
        assert!(
            Projection::pca(&[1.0, 2.0, 3.0, 4.0, 5.0], 2).is_err(),
            "half a vector"
        );
        assert!(
            Projection::pca(&[1.0, f32::NAN, 3.0, 4.0], 2).is_err(),
            "NaN"
        );
        let same = Projection::pca(&[1.0, 2.0, 1.0, 2.0], 2).unwrap_err();
        assert!(same.to_string().contains("all the same"), "{same}");
        assert!(Projection::pca(&vec![0.0; 2 * (MAX_PCA_DIM + 1)], MAX_PCA_DIM + 1).is_err());
        // Values whose covariance overflows f32 are scaled first, not turned into NaN.
        let big = Projection::pca(&[1e20, 0.0, -1e20, 0.0], 2).unwrap();
        assert!(big.explained()[0] > 0.999);
        assert!(
            Projection::pca(&[3.4e38, 3.4e38, -3.4e38], 1).is_err(),
            "beyond f32"
        );
        let pca = Projection::pca(&[0.0, 0.0, 1.0, 2.0, 2.0, 1.0], 2).unwrap();
        assert!(pca.project(&[1.0, 2.0, 3.0]).is_err());
    }
}
