//! t-SNE (van der Maaten and Hinton, 2008): feature vectors laid out in 2-D so that photos
//! that are near each other in the feature space stay near each other on the page.
//!
//! Unlike PCA ([`super::Projection`]) it is not linear: it bends the space to keep each
//! photo's neighbours around it, so clusters show more clearly, but distances between
//! clusters, and their sizes, mean little. Exact t-SNE costs `n²` per round, so it is for
//! the test photos (a few hundred), not the whole dataset: the kit caps it at
//! [`MAX_TSNE_POINTS`]. Written here (like PCA) rather than taken from a crate: bhtsne
//! would add 38 crates to what every notebook kernel type-checks when it starts.

use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::Projection;
use crate::backend::native::gemm::{product_here, View};
use crate::error::{Error, Result};

/// Most vectors [`tsne`] lays out: its rounds cost `n²` (1.8 s for 1,000 vectors of 1,280
/// on two cores).
pub const MAX_TSNE_POINTS: usize = 2_000;

/// Rounds of gradient descent, the first `EXAGGERATED` with the affinities multiplied by
/// `EXAGGERATION` (so that clusters form before they settle): scikit-learn's numbers.
const ROUNDS: usize = 1_000;
const EXAGGERATED: usize = 250;
const EXAGGERATION: f64 = 12.0;

/// The 2-D layout of `rows` (row-major, `dim` values each) by exact t-SNE with the given
/// `perplexity` (the effective number of neighbours each point keeps; 30 is usual, and it
/// is lowered to a third of the other points for small sets). It starts from the PCA
/// projection, as scikit-learn's `init="pca"`, so the same vectors give the same layout on
/// the same machine (another CPU's instruction set can change the last bits of the
/// products, which t-SNE can amplify).
///
/// ```
/// use flowers_kit::features::tsne;
/// // Two far-apart groups of 10 points in 3-D stay apart in 2-D.
/// let rows: Vec<f32> = (0..20)
///     .flat_map(|i| {
///         let x = if i < 10 { 0.0 } else { 50.0 };
///         [x + (i % 10) as f32 * 0.1, (i % 3) as f32 * 0.1, (i % 7) as f32 * 0.1]
///     })
///     .collect();
/// let points = tsne(&rows, 3, 5.0)?;
/// let centre = |r: std::ops::Range<usize>| points[r].iter().map(|p| p[0]).sum::<f32>() / 10.0;
/// assert!((centre(0..10) - centre(10..20)).abs() > 1.0);
/// # Ok::<(), flowers_kit::Error>(())
/// ```
pub fn tsne(rows: &[f32], dim: usize, perplexity: f64) -> Result<Vec<[f32; 2]>> {
    if dim == 0 || !rows.len().is_multiple_of(dim) {
        return Err(Error::InvalidArgument(format!(
            "{} values are not whole vectors of {dim}",
            rows.len()
        )));
    }
    let n = rows.len() / dim;
    if !(4..=MAX_TSNE_POINTS).contains(&n) {
        return Err(Error::InvalidArgument(format!(
            "t-SNE lays out 4 to {MAX_TSNE_POINTS} vectors, not {n}"
        )));
    }
    if !(perplexity.is_finite() && perplexity >= 1.0) {
        return Err(Error::InvalidArgument(format!(
            "a perplexity is at least 1, not {perplexity}"
        )));
    }
    // Also refuses NaN and identical vectors, with its own messages.
    let start = Projection::pca(rows, dim)?.project(rows)?;
    let perplexity = perplexity.min((n - 1) as f64 / 3.0).max(1.0);
    let affinities = affinities(rows, n, dim, perplexity)?;
    Ok(descend(&affinities, n, &start))
}

/// The symmetric affinities `p_ij` (summing to 1): each point's Gaussian over the others,
/// its width found by bisection so that its entropy is `ln(perplexity)`.
fn affinities(rows: &[f32], n: usize, dim: usize, perplexity: f64) -> Result<Vec<f64>> {
    // Squared distances from the Gram matrix (one product): |a − b|² = a·a + b·b − 2 a·b.
    // The vectors are centred and scaled first, so that the Gram matrix stays in f32's range.
    let (_, centred) = super::projection::centred_to_unit(rows, dim)?;
    let mut gram = vec![0.0f32; n * n];
    let x = View::rows(&centred, n, dim);
    product_here(&mut gram, x, x.t(), false);
    let distance = |i: usize, j: usize| {
        (f64::from(gram[i * n + i]) + f64::from(gram[j * n + j]) - 2.0 * f64::from(gram[i * n + j]))
            .max(0.0)
    };
    let target = perplexity.ln();
    let mut p = vec![0.0f64; n * n];
    let mut row = vec![0.0f64; n];
    for i in 0..n {
        let distances: Vec<f64> = (0..n).map(|j| distance(i, j)).collect();
        let nearest = (0..n)
            .filter(|&j| j != i)
            .map(|j| distances[j])
            .fold(f64::INFINITY, f64::min);
        // β = 1 / (2σ²), by bisection on the entropy.
        let (mut beta, mut low, mut high) = (1.0f64, 0.0f64, f64::INFINITY);
        for _ in 0..64 {
            let mut sum = 0.0;
            for j in 0..n {
                // Shifted by the nearest distance, so that the largest term is 1: no underflow.
                row[j] = if j == i {
                    0.0
                } else {
                    (-(distances[j] - nearest) * beta).exp()
                };
                sum += row[j];
            }
            let mean_distance: f64 = (0..n)
                .map(|j| row[j] * (distances[j] - nearest))
                .sum::<f64>()
                / sum;
            let entropy = sum.ln() + beta * mean_distance;
            if (entropy - target).abs() < 1e-5 {
                break;
            }
            if entropy > target {
                low = beta;
                beta = if high.is_finite() {
                    (beta + high) / 2.0
                } else {
                    beta * 2.0
                };
            } else {
                high = beta;
                beta = (beta + low) / 2.0;
            }
        }
        let sum: f64 = row.iter().sum();
        for j in 0..n {
            p[i * n + j] = row[j] / sum;
        }
    }
    // Symmetric, summing to 1, with a floor (as the reference implementation).
    let mut symmetric = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            symmetric[i * n + j] = ((p[i * n + j] + p[j * n + i]) / (2.0 * n as f64)).max(1e-12);
        }
    }
    Ok(symmetric)
}

/// The gradient of KL(P ‖ Q) (with P multiplied by `exaggeration`) with respect to each
/// point of the layout `y`, into `gradient`; `q` (`n²`) and `row_sums` are scratch. The
/// rows are independent, so both cores share them; their sums are added in order, so the
/// result does not depend on how the threads split the work.
fn kl_gradient(
    p: &[f64],
    y: &[[f64; 2]],
    exaggeration: f64,
    q: &mut [f64],
    row_sums: &mut Vec<f64>,
    gradient: &mut [[f64; 2]],
) {
    let n = y.len();
    // The Student-t kernel between every pair, and its sum.
    q.par_chunks_mut(n)
        .enumerate()
        .map(|(i, row)| {
            let mut sum = 0.0;
            for (j, value) in row.iter_mut().enumerate() {
                *value = if i == j {
                    0.0
                } else {
                    let (dx, dy) = (y[i][0] - y[j][0], y[i][1] - y[j][1]);
                    1.0 / (1.0 + dx * dx + dy * dy)
                };
                sum += *value;
            }
            sum
        })
        .collect_into_vec(row_sums);
    let total: f64 = row_sums.iter().sum();
    let kernels = &*q;
    gradient.par_iter_mut().enumerate().for_each(|(i, out)| {
        let mut g = [0.0f64; 2];
        for j in 0..n {
            let kernel = kernels[i * n + j];
            let force = (exaggeration * p[i * n + j] - kernel / total) * kernel;
            g[0] += force * (y[i][0] - y[j][0]);
            g[1] += force * (y[i][1] - y[j][1]);
        }
        *out = [4.0 * g[0], 4.0 * g[1]];
    });
}

/// Gradient descent on the layout from `start` (scaled down to a standard deviation of
/// 1e-4), with momentum and per-coordinate gains as in the reference implementation (whose
/// momentum and gains, unlike scikit-learn's, carry over from the exaggerated rounds).
fn descend(p: &[f64], n: usize, start: &[[f32; 2]]) -> Vec<[f32; 2]> {
    let spread = (start.iter().map(|s| f64::from(s[0]).powi(2)).sum::<f64>() / n as f64)
        .sqrt()
        .max(f64::MIN_POSITIVE);
    let mut y: Vec<[f64; 2]> = start
        .iter()
        .map(|s| {
            [
                f64::from(s[0]) / spread * 1e-4,
                f64::from(s[1]) / spread * 1e-4,
            ]
        })
        .collect();
    // Ties in the PCA start (identical photos) are broken by a seeded jitter.
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    for point in &mut y {
        point[0] += rng.gen_range(-1e-7..1e-7);
        point[1] += rng.gen_range(-1e-7..1e-7);
    }
    let learning_rate = (n as f64 / EXAGGERATION / 4.0).max(50.0);
    let mut velocity = vec![[0.0f64; 2]; n];
    let mut gains = vec![[1.0f64; 2]; n];
    let mut q = vec![0.0f64; n * n];
    let mut gradient = vec![[0.0f64; 2]; n];
    let mut row_sums: Vec<f64> = Vec::with_capacity(n);
    for round in 0..ROUNDS {
        let exaggeration = if round < EXAGGERATED {
            EXAGGERATION
        } else {
            1.0
        };
        let momentum = if round < EXAGGERATED { 0.5 } else { 0.8 };
        kl_gradient(p, &y, exaggeration, &mut q, &mut row_sums, &mut gradient);
        for i in 0..n {
            for d in 0..2 {
                // A coordinate that keeps moving downhill speeds up; one that turns, or has
                // not moved yet, slows down.
                gains[i][d] = if gradient[i][d] * velocity[i][d] < 0.0 {
                    gains[i][d] + 0.2
                } else {
                    (gains[i][d] * 0.8).max(0.01)
                };
                velocity[i][d] =
                    momentum * velocity[i][d] - learning_rate * gains[i][d] * gradient[i][d];
                y[i][d] += velocity[i][d];
            }
        }
        // Centred, so that the layout does not drift.
        for d in 0..2 {
            let mean = y.iter().map(|p| p[d]).sum::<f64>() / n as f64;
            y.iter_mut().for_each(|p| p[d] -= mean);
        }
    }
    y.iter().map(|p| [p[0] as f32, p[1] as f32]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three clusters in 20-D, far apart compared with their spread: on the page each point's
    /// nearest neighbour is of its own cluster.
    #[test]
    fn keeps_clusters_together() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let dim = 20;
        let centres: Vec<Vec<f32>> = (0..3)
            .map(|_| (0..dim).map(|_| rng.gen_range(-10.0..10.0)).collect())
            .collect();
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for i in 0..90 {
            let c = i % 3;
            rows.extend(centres[c].iter().map(|&x| x + rng.gen_range(-1.0..1.0)));
            labels.push(c);
        }
        let points = tsne(&rows, dim, 15.0).unwrap();
        assert!(points.iter().all(|p| p[0].is_finite() && p[1].is_finite()));
        for (i, p) in points.iter().enumerate() {
            let nearest = (0..points.len())
                .filter(|&j| j != i)
                .min_by(|&a, &b| {
                    let d = |q: &[f32; 2]| (q[0] - p[0]).powi(2) + (q[1] - p[1]).powi(2);
                    d(&points[a]).total_cmp(&d(&points[b]))
                })
                .unwrap();
            assert_eq!(labels[nearest], labels[i], "point {i}");
        }
        // The same input, the same layout.
        assert_eq!(tsne(&rows, dim, 15.0).unwrap(), points);
    }

    /// KL(P ‖ Q) of a layout, for the finite differences below.
    fn divergence(p: &[f64], y: &[[f64; 2]]) -> f64 {
        let n = y.len();
        let w = |i: usize, j: usize| {
            let (dx, dy) = (y[i][0] - y[j][0], y[i][1] - y[j][1]);
            1.0 / (1.0 + dx * dx + dy * dy)
        };
        let total: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| w(i, j))
            .sum();
        (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| p[i * n + j] * (p[i * n + j] / (w(i, j) / total)).ln())
            .sum()
    }

    /// The gradient is the derivative of the divergence t-SNE minimises, by finite
    /// differences at a random layout of random affinities.
    #[test]
    fn the_gradient_is_the_divergences_derivative() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let n = 7;
        let mut p: Vec<f64> = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..i {
                let v = rng.gen_range(0.1..1.0);
                p[i * n + j] = v;
                p[j * n + i] = v;
            }
        }
        let sum: f64 = p.iter().sum();
        p.iter_mut().for_each(|v| *v /= sum);
        let y: Vec<[f64; 2]> = (0..n)
            .map(|_| [rng.gen_range(-2.0..2.0), rng.gen_range(-2.0..2.0)])
            .collect();
        let (mut q, mut sums, mut gradient) = (vec![0.0; n * n], Vec::new(), vec![[0.0; 2]; n]);
        kl_gradient(&p, &y, 1.0, &mut q, &mut sums, &mut gradient);
        for i in 0..n {
            for d in 0..2 {
                let h = 1e-6;
                let moved = |delta: f64| {
                    let mut z = y.clone();
                    z[i][d] += delta;
                    divergence(&p, &z)
                };
                let numeric = (moved(h) - moved(-h)) / (2.0 * h);
                assert!(
                    (numeric - gradient[i][d]).abs() < 1e-6,
                    "point {i}, axis {d}: {numeric} vs {}",
                    gradient[i][d]
                );
            }
        }
    }

    /// P is symmetric and sums to 1, each point's conditional row contributing 1/n.
    #[test]
    fn affinities_are_symmetric_and_sum_to_one() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let (n, dim) = (40, 5);
        let rows: Vec<f32> = (0..n * dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let p = affinities(&rows, n, dim, 8.0).unwrap();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-6);
        for i in 0..n {
            for j in 0..n {
                assert!((p[i * n + j] - p[j * n + i]).abs() < 1e-15);
            }
        }
        // Symmetrising mixes the rows, so the perplexity is checked on P's row sums: each
        // conditional row sums to 1, so the symmetric rows sum to 1/n on average.
        let mean_row: f64 = (0..n)
            .map(|i| p[i * n..(i + 1) * n].iter().sum::<f64>())
            .sum::<f64>()
            / n as f64;
        assert!((mean_row - 1.0 / n as f64).abs() < 1e-9);
    }

    /// Clusters apart only in directions of small variance, which the PCA start mixes up:
    /// t-SNE must pull them apart itself.
    #[test]
    fn separates_clusters_that_pca_mixes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let dim = 8;
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for i in 0..60 {
            let c = i % 2;
            for d in 0..dim {
                // Dimensions 0 and 1: a wide spread shared by both; 2..: the clusters, 3 apart.
                rows.push(if d < 2 {
                    rng.gen_range(-6.0..6.0)
                } else {
                    c as f32 * 3.0 / (dim as f32 - 2.0).sqrt() * 2.0 + rng.gen_range(-0.2..0.2)
                });
            }
            labels.push(c);
        }
        let points = tsne(&rows, dim, 10.0).unwrap();
        let same_nearest = (0..60)
            .filter(|&i| {
                let nearest = (0..60)
                    .filter(|&j| j != i)
                    .min_by(|&a, &b| {
                        let d = |q: &[f32; 2]| {
                            (q[0] - points[i][0]).powi(2) + (q[1] - points[i][1]).powi(2)
                        };
                        d(&points[a]).total_cmp(&d(&points[b]))
                    })
                    .unwrap();
                labels[nearest] == labels[i]
            })
            .count();
        assert!(
            same_nearest >= 57,
            "{same_nearest} of 60 have a neighbour of their own cluster"
        );
    }

    #[test]
    fn refuses_what_it_cannot_lay_out() {
        assert!(tsne(&[1.0; 6], 2, 30.0).is_err(), "three points");
        assert!(tsne(&[1.0; 7], 2, 30.0).is_err(), "half a vector");
        assert!(
            tsne(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], 2, 0.5).is_err(),
            "perplexity"
        );
        assert!(
            tsne(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, f32::NAN], 2, 2.0).is_err(),
            "NaN"
        );
        assert!(tsne(&[1.0; 8], 2, 2.0).is_err(), "all the same");
        assert!(
            tsne(&vec![0.5; 2 * (MAX_TSNE_POINTS + 1)], 2, 30.0).is_err(),
            "too many"
        );
    }
}
