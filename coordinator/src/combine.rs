//! Combining node answers into national figures. The national estimate of a cell is the exact sum
//! of the node estimates; its noise variance is the sum of the node variances (public). Counts and
//! sums get a normal 95% interval; ratios and means get theirs by simulating the public noise
//! distributions; quantiles from histograms by inverting a test on the distribution function, which
//! holds its coverage where simulation did not. Intervals cover the DP noise only.

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

/// Where bin `i` starts and how wide it is: bins are [edges[i], edges[i+1]); the last, open bin is
/// given the width of the one before it.
fn bin_span(i: usize, edges: &[i64]) -> (f64, f64) {
    let last = edges.len() - 1;
    let lo = edges.get(i).copied().unwrap_or(edges[last]) as f64;
    let width = match (edges.get(i), edges.get(i + 1)) {
        (Some(a), Some(b)) => (b - a) as f64,
        _ => (edges[last] - edges[last - 1]) as f64,
    };
    (lo, width)
}

/// Quantile `q` of a histogram by linear interpolation within the bin where the cumulative count
/// crosses q. Negative noisy counts are read as zero.
pub fn histogram_quantile(counts: &[f64], edges: &[i64], q: f64) -> f64 {
    let counts: Vec<f64> = counts.iter().map(|c| c.max(0.0)).collect();
    let total: f64 = counts.iter().sum();
    if total <= 0.0 || edges.len() < 2 {
        return f64::NAN;
    }
    let target = q * total;
    let mut acc = 0.0;
    for (i, c) in counts.iter().enumerate() {
        let (lo, width) = bin_span(i, edges);
        if acc + c >= target && *c > 0.0 {
            return lo + width * (target - acc) / c;
        }
        acc += c;
    }
    edges[edges.len() - 1] as f64
}

/// The 95% interval of a histogram quantile, by inverting a test on the interpolated distribution
/// function (Woodruff's interval). A point x belongs to it when L(x) = (count below x) − q × total,
/// read off the noisy bins, is within 1.96 standard errors of zero. L(x) is linear in the bin counts,
/// so its noise variance is public and exact; at the quantile of the exact counts it is exactly
/// zero, so the interval holds that quantile 95% of the time however small the counts are next to
/// the noise. (Percentiles of simulated quantiles covered only 85–88% there: the quantile is far from
/// linear in the counts.) The interval is widened to hold the estimate, which reads negative noisy
/// counts as zero. Cells are (noisy count, noise variance), one per bin in edge order.
pub fn quantile_interval(cells: &[(f64, f64)], edges: &[i64], q: f64) -> Interval {
    let values: Vec<f64> = cells.iter().map(|c| c.0).collect();
    let estimate = histogram_quantile(&values, edges, q);
    if edges.len() < 2 || cells.is_empty() {
        return Interval {
            estimate,
            ci_low: f64::NAN,
            ci_high: f64::NAN,
        };
    }
    let z2 = Z95 * Z95;
    let total: f64 = values.iter().sum();
    let mut low = f64::INFINITY;
    let mut high = f64::NEG_INFINITY;
    let mut below = 0.0;
    for (k, (count, variance)) in cells.iter().enumerate() {
        let variance = variance.max(0.0);
        // Inside bin k, at fraction f of its width: L = a + f·count and
        // Var L = rest + (f − q)²·variance, from the weights 1 − q below, f − q in, −q above.
        let a = below - q * total;
        let rest: f64 = cells
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != k)
            .map(|(i, (_, v))| {
                let w = if i < k { 1.0 - q } else { -q };
                w * w * v.max(0.0)
            })
            .sum();
        // L² − z²·Var L ≤ 0, a quadratic in f.
        let c2 = count * count - z2 * variance;
        let c1 = 2.0 * a * count + 2.0 * z2 * q * variance;
        let c0 = a * a - z2 * rest - z2 * q * q * variance;
        let (lo, width) = bin_span(k, edges);
        for (f_low, f_high) in nonpositive_within_unit(c2, c1, c0) {
            low = low.min(lo + width * f_low);
            high = high.max(lo + width * f_high);
        }
        below += count;
    }
    if estimate.is_finite() {
        low = low.min(estimate);
        high = high.max(estimate);
    }
    if low > high {
        // Not reachable: L runs from −q·total to (1 − q)·total and is continuous, so it has a zero,
        // which always passes the test. Kept so that a numerical surprise reads as "unknown".
        return Interval {
            estimate,
            ci_low: f64::NAN,
            ci_high: f64::NAN,
        };
    }
    Interval {
        estimate,
        ci_low: low,
        ci_high: high,
    }
}

/// The stretches of [0, 1] where c2·f² + c1·f + c0 ≤ 0.
fn nonpositive_within_unit(c2: f64, c1: f64, c0: f64) -> Vec<(f64, f64)> {
    let g = |f: f64| (c2 * f + c1) * f + c0;
    let tolerance = 1e-9 * (c2.abs() + c1.abs() + c0.abs());
    let mut cuts = vec![0.0, 1.0];
    if c2 != 0.0 {
        let disc = c1 * c1 - 4.0 * c2 * c0;
        let root = disc.max(0.0).sqrt();
        // With no real roots the vertex still goes in: rounding can hide a double root.
        cuts.push((-c1 - root) / (2.0 * c2));
        cuts.push((-c1 + root) / (2.0 * c2));
    } else if c1 != 0.0 {
        cuts.push(-c0 / c1);
    }
    cuts.retain(|f| (0.0..=1.0).contains(f));
    cuts.sort_by(|a, b| a.total_cmp(b));
    let mut out: Vec<(f64, f64)> = Vec::new();
    for pair in cuts.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        // g keeps its sign between consecutive cuts, so the middle tells.
        if a < b && g((a + b) / 2.0) <= 0.0 {
            match out.last_mut() {
                Some(last) if last.1 >= a => last.1 = b,
                _ => out.push((a, b)),
            }
        }
    }
    // A point where g only touches zero is in the set on its own.
    for f in &cuts {
        if g(*f) <= tolerance && !out.iter().any(|(a, b)| a <= f && f <= b) {
            out.push((*f, *f));
        }
    }
    out
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

    /// L(x)² − z²·Var L(x) straight from the definition, for checking the closed form.
    fn woodruff_statistic(cells: &[(f64, f64)], edges: &[i64], q: f64, x: f64) -> f64 {
        let total: f64 = cells.iter().map(|c| c.0).sum();
        let (mut below, mut variance) = (0.0, 0.0);
        for (i, (count, var)) in cells.iter().enumerate() {
            let (lo, width) = bin_span(i, edges);
            let share = ((x - lo) / width).clamp(0.0, 1.0);
            below += share * count;
            variance += (share - q).powi(2) * var;
        }
        (below - q * total).powi(2) - Z95 * Z95 * variance
    }

    #[test]
    fn quantile_interval_matches_a_brute_force_scan() {
        let edges = [0, 15, 30, 60, 120, 240];
        let histograms: [&[(f64, f64)]; 4] = [
            &[
                (3.0, 25.0),
                (8.0, 25.0),
                (12.0, 25.0),
                (6.0, 25.0),
                (2.0, 25.0),
                (1.0, 25.0),
            ],
            &[
                (40.0, 4.0),
                (-3.0, 4.0),
                (30.0, 9.0),
                (10.0, 1.0),
                (0.5, 16.0),
                (7.0, 4.0),
            ],
            &[
                (0.0, 100.0),
                (1.0, 100.0),
                (2.0, 100.0),
                (0.0, 100.0),
                (5.0, 100.0),
                (0.0, 100.0),
            ],
            &[
                (500.0, 30.0),
                (400.0, 30.0),
                (300.0, 30.0),
                (20.0, 30.0),
                (9.0, 30.0),
                (4.0, 30.0),
            ],
        ];
        for cells in histograms {
            for q in [0.1, 0.5, 0.9] {
                let got = quantile_interval(cells, &edges, q);
                let step = 0.01;
                let inside: Vec<f64> = (0..=36_000)
                    .map(|i| i as f64 * step)
                    .filter(|x| woodruff_statistic(cells, &edges, q, *x) <= 0.0)
                    .chain(std::iter::once(got.estimate).filter(|e| e.is_finite()))
                    .collect();
                let low = inside.iter().copied().fold(f64::INFINITY, f64::min);
                let high = inside.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                assert!(
                    (got.ci_low - low).abs() <= step && (got.ci_high - high).abs() <= step,
                    "{cells:?} q={q}: closed form {got:?}, scan [{low}, {high}]"
                );
            }
        }
    }

    #[test]
    fn quantile_interval_without_noise_is_the_estimate() {
        let edges = [0, 10, 20, 40];
        let cells = [(4.0, 0.0), (10.0, 0.0), (6.0, 0.0), (2.0, 0.0)];
        let i = quantile_interval(&cells, &edges, 0.5);
        assert!((i.estimate - 17.0).abs() < 1e-9, "{i:?}");
        assert!((i.ci_low - i.estimate).abs() < 1e-6 && (i.ci_high - i.estimate).abs() < 1e-6);
    }

    /// Mean coverage of the exact quantile and mean width over `reps` noisy copies of `exact`.
    fn coverage_and_width(
        exact: &[f64],
        edges: &[i64],
        q: f64,
        sd: f64,
        reps: usize,
    ) -> (f64, f64) {
        let noise = Normal::new(0.0, sd).expect("valid normal");
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let truth = histogram_quantile(exact, edges, q);
        let (mut covered, mut width) = (0, 0.0);
        for _ in 0..reps {
            let cells: Vec<(f64, f64)> = exact
                .iter()
                .map(|c| (c + noise.sample(&mut rng), sd * sd))
                .collect();
            let i = quantile_interval(&cells, edges, q);
            covered += usize::from(i.ci_low <= truth && truth <= i.ci_high);
            width += (i.ci_high - i.ci_low) / reps as f64;
        }
        (covered as f64 / reps as f64, width)
    }

    const EDGES: [i64; 7] = [0, 15, 30, 60, 120, 240, 480];
    const SECLUSION_MINUTES: [f64; 7] = [6.0, 14.0, 20.0, 9.0, 4.0, 2.0, 1.0];

    /// The claim that failed before: with counts no bigger than the noise, 95% of the intervals hold
    /// the quantile of the exact counts (simulated percentiles held about 91% here, 85–88% in the
    /// accuracy benchmark).
    #[test]
    fn quantile_interval_covers_the_exact_quantile_when_noise_rivals_the_counts() {
        for (scale, q) in [(1.0, 0.5), (1.0, 0.9), (3.0, 0.9)] {
            let exact: Vec<f64> = SECLUSION_MINUTES.iter().map(|c| c * scale).collect();
            let (coverage, width) = coverage_and_width(&exact, &EDGES, q, 6.0, 4000);
            assert!(
                (0.94..=0.985).contains(&coverage),
                "×{scale} q={q}: coverage {coverage}, mean width {width}"
            );
        }
    }

    /// … and it is no wider than the noise makes it: with counts ten times the noise the median's
    /// interval is a fraction of the 30-minute bin it falls in.
    #[test]
    fn quantile_interval_narrows_when_counts_dwarf_the_noise() {
        let exact: Vec<f64> = SECLUSION_MINUTES.iter().map(|c| c * 10.0).collect();
        let (coverage, width) = coverage_and_width(&exact, &EDGES, 0.5, 6.0, 1000);
        assert!(coverage >= 0.93, "coverage {coverage}");
        assert!(width < 8.0, "mean width {width}");
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
