//! Noise calibration: many draws from the node's noise match the declared scale, and OpenDP's own
//! privacy map of the measurement equals the declared cost (the budget is used, not exceeded).
//!
//! OpenDP draws from OpenSSL's secure generator, which cannot be seeded (by design: a seedable
//! generator would be an attack surface). So instead of a fixed seed the tolerances are set at six
//! standard errors of the estimate, making a false failure rarer than one in 10^8 runs while a
//! miscalibration of 10% or more is caught every time.

use node::noise::{add_noise, certified_loss};
use policies::sensitivity::{Measure, MeasureCost};

const N: usize = 40_000;

fn stats(v: &[i64], offset: i64) -> (f64, f64, f64) {
    let n = v.len() as f64;
    let xs: Vec<f64> = v.iter().map(|x| (x - offset) as f64).collect();
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let m4 = xs.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n;
    (mean, var, m4 / (var * var))
}

fn measure(cost: MeasureCost, per_cell: i64, cells: i64) -> Measure {
    Measure {
        name: "count".into(),
        per_cell,
        cells_per_unit: cells,
        cost,
    }
}

#[test]
fn discrete_gaussian_spread_matches_the_declared_scale() {
    for (rho, per_cell, cells) in [(0.05, 1, 1), (0.5, 12, 4), (0.01, 92, 4)] {
        let m = measure(MeasureCost::Rho(rho), per_cell, cells);
        let exact = vec![1_000i64; N];
        let noisy = add_noise(&m, &exact).expect("noise");
        let (mean, var, kurtosis) = stats(&noisy, 1_000);
        let declared = m.variance();
        // Sample variance of N near-Gaussian draws has relative standard error √(2/N) ≈ 0.7%.
        let rel_se = (2.0 / N as f64).sqrt();
        assert!(
            ((var / declared) - 1.0).abs() < 6.0 * rel_se,
            "ρ={rho}: empirical variance {var:.1} vs declared σ²={declared:.1}"
        );
        // The mean is unbiased: |mean| within six standard errors σ/√N.
        assert!(
            mean.abs() < 6.0 * (declared / N as f64).sqrt(),
            "ρ={rho}: mean {mean}"
        );
        // Gaussian tails, not Laplace ones (kurtosis 3 vs 6).
        assert!((kurtosis - 3.0).abs() < 0.3, "ρ={rho}: kurtosis {kurtosis}");
        // σ is Δ₂/√(2ρ), and OpenDP certifies exactly the declared ρ (to float precision).
        let expected_sigma = m.l2() / (2.0 * rho).sqrt();
        assert!((m.scale() / expected_sigma - 1.0).abs() < 1e-6);
        let loss = certified_loss(&m).expect("map");
        assert!(
            loss <= rho && loss > rho * (1.0 - 1e-6),
            "ρ={rho}: OpenDP map {loss}"
        );
    }
}

#[test]
fn discrete_laplace_spread_matches_the_declared_scale() {
    for (eps, per_cell, cells) in [(0.5, 1, 1), (1.0, 3, 2)] {
        let m = measure(MeasureCost::Epsilon(eps), per_cell, cells);
        let exact = vec![0i64; N];
        let noisy = add_noise(&m, &exact).expect("noise");
        let (mean, var, kurtosis) = stats(&noisy, 0);
        let declared = m.variance();
        // Laplace kurtosis is 6, so the sample variance's relative standard error is √(5/N) ≈ 1.1%.
        let rel_se = (5.0 / N as f64).sqrt();
        assert!(
            ((var / declared) - 1.0).abs() < 6.0 * rel_se,
            "ε={eps}: empirical variance {var:.2} vs declared {declared:.2}"
        );
        assert!(
            mean.abs() < 6.0 * (declared / N as f64).sqrt(),
            "ε={eps}: mean {mean}"
        );
        assert!(
            kurtosis > 4.5,
            "ε={eps}: kurtosis {kurtosis} is not Laplace-like"
        );
        let loss = certified_loss(&m).expect("map");
        assert!(
            loss <= eps && loss > eps * (1.0 - 1e-6),
            "ε={eps}: OpenDP map {loss}"
        );
    }
}

#[test]
fn noise_is_fresh_for_every_release() {
    let m = measure(MeasureCost::Rho(0.05), 1, 1);
    let a = add_noise(&m, &[0; 64]).unwrap();
    let b = add_noise(&m, &[0; 64]).unwrap();
    assert_ne!(a, b, "two releases drew the same noise");
}
