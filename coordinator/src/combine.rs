//! Combining node answers into national figures. The national estimate of a cell is the exact sum
//! of the node estimates; its noise variance is the sum of the node variances (public). Counts and
//! sums get a normal 95% interval; derived statistics (ratios, means, quantiles from histograms) get
//! theirs by simulating the public noise distributions. Intervals cover the DP noise only.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

pub const Z95: f64 = 1.959_963_984_540_054;
const DRAWS: usize = 4000;

/// An estimate with its 95% interval (noise only).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Interval {
    pub estimate: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

pub fn normal_interval(value: f64, variance: f64) -> Interval {
    let half = Z95 * variance.max(0.0).sqrt();
    Interval {
        estimate: value,
        ci_low: value - half,
        ci_high: value + half,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The estimate with the 2.5% and 97.5% points of its simulated values.
fn from_simulations(estimate: f64, mut sims: Vec<f64>) -> Interval {
    sims.sort_by(|a, b| a.total_cmp(b));
    Interval {
        estimate,
        ci_low: percentile(&sims, 0.025),
        ci_high: percentile(&sims, 0.975),
    }
}

/// Deterministic simulation generator: the simulation is post-processing of public numbers, so a
/// fixed seed costs no privacy and makes published intervals reproducible.
fn sim_rng(salt: &str) -> ChaCha8Rng {
    let mut seed = 0xC0FF_EE00_u64;
    for b in salt.bytes() {
        seed = seed.rotate_left(5) ^ b as u64;
    }
    ChaCha8Rng::seed_from_u64(seed)
}

fn draws(value: f64, variance: f64, rng: &mut ChaCha8Rng) -> impl Iterator<Item = f64> {
    let normal = Normal::new(0.0, variance.max(0.0).sqrt()).ok();
    let mut r = rng.clone();
    let out: Vec<f64> = (0..DRAWS)
        .map(|_| value - normal.map(|n| n.sample(&mut r)).unwrap_or(0.0))
        .collect();
    *rng = r;
    out.into_iter()
}

/// Ratio num/den × multiplier, its interval from simulating both noises. The sum of node noises is
/// treated as normal with the summed variance (a sum of independent discrete Gaussians/Laplaces).
pub fn ratio(num: (f64, f64), den: (f64, f64), multiplier: f64, salt: &str) -> Interval {
    // A noisy count can fall below zero; a ratio of counts cannot.
    let estimate = if den.0 > 0.0 {
        num.0.max(0.0) / den.0 * multiplier
    } else {
        f64::NAN
    };
    let mut rng = sim_rng(salt);
    let ns: Vec<f64> = draws(num.0, num.1, &mut rng).collect();
    let ds: Vec<f64> = draws(den.0, den.1, &mut rng).collect();
    let sims: Vec<f64> = ns
        .iter()
        .zip(&ds)
        .filter(|(_, d)| **d > 0.0)
        .map(|(n, d)| n.max(0.0) / d * multiplier)
        .collect();
    from_simulations(estimate, sims)
}

/// Quantile `q` of a histogram with bins [edges[i], edges[i+1]) and a last open bin, by linear
/// interpolation within the bin where the cumulative count crosses q. Negative noisy counts are
/// read as zero. The open last bin is given the width of the one before it.
pub fn histogram_quantile(counts: &[f64], edges: &[i64], q: f64) -> f64 {
    let counts: Vec<f64> = counts.iter().map(|c| c.max(0.0)).collect();
    let total: f64 = counts.iter().sum();
    if total <= 0.0 || edges.len() < 2 {
        return f64::NAN;
    }
    let target = q * total;
    let mut acc = 0.0;
    for (i, c) in counts.iter().enumerate() {
        let lo = edges.get(i).copied().unwrap_or(edges[edges.len() - 1]) as f64;
        let width = match (edges.get(i), edges.get(i + 1)) {
            (Some(a), Some(b)) => (b - a) as f64,
            _ => (edges[edges.len() - 1] - edges[edges.len() - 2]) as f64,
        };
        if acc + c >= target && *c > 0.0 {
            return lo + width * (target - acc) / c;
        }
        acc += c;
    }
    edges[edges.len() - 1] as f64
}

pub fn quantile_interval(cells: &[(f64, f64)], edges: &[i64], q: f64, salt: &str) -> Interval {
    let values: Vec<f64> = cells.iter().map(|c| c.0).collect();
    let estimate = histogram_quantile(&values, edges, q);
    let mut rng = sim_rng(salt);
    let per_bin: Vec<Vec<f64>> = cells
        .iter()
        .map(|(v, var)| draws(*v, *var, &mut rng).collect())
        .collect();
    let sims: Vec<f64> = (0..DRAWS)
        .map(|d| {
            let sample: Vec<f64> = per_bin.iter().map(|b| b[d]).collect();
            histogram_quantile(&sample, edges, q)
        })
        .filter(|x| x.is_finite())
        .collect();
    from_simulations(estimate, sims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_within_the_crossing_bin() {
        let edges = [0, 10, 20];
        assert_eq!(histogram_quantile(&[10.0, 10.0, 0.0], &edges, 0.5), 10.0);
        assert_eq!(histogram_quantile(&[10.0, 10.0, 0.0], &edges, 0.25), 5.0);
        assert_eq!(histogram_quantile(&[-5.0, 10.0, 0.0], &edges, 0.5), 15.0);
        assert!(histogram_quantile(&[0.0, 0.0, 0.0], &edges, 0.5).is_nan());
    }

    #[test]
    fn ratio_interval_contains_the_estimate_and_widens_with_noise() {
        let tight = ratio((50.0, 1.0), (100.0, 1.0), 100.0, "a");
        let wide = ratio((50.0, 100.0), (100.0, 100.0), 100.0, "a");
        assert!((tight.estimate - 50.0).abs() < 1e-9);
        assert!(tight.ci_low < 50.0 && tight.ci_high > 50.0);
        assert!(wide.ci_high - wide.ci_low > 3.0 * (tight.ci_high - tight.ci_low));
    }

    #[test]
    fn normal_interval_is_symmetric_at_1_96_sigma() {
        let i = normal_interval(100.0, 25.0);
        assert!((i.ci_high - 100.0 - 1.96 * 5.0).abs() < 1e-2);
        assert!((100.0 - i.ci_low - 1.96 * 5.0).abs() < 1e-2);
    }
}
