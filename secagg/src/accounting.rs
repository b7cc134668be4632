//! How much discrete Gaussian noise each node adds so that the noise of any `honest` answering
//! nodes together gives the indicator's ρ, by the distributed discrete Gaussian bound of Kairouz,
//! Liu & Steinke (2021, "The Distributed Discrete Gaussian Mechanism for Federated Learning with
//! Secure Aggregation", Proposition 14).
//!
//! A sum of discrete Gaussians is not itself a discrete Gaussian, so the bound carries a τ term
//! that grows when each node's share is small. Where τ would cost more than a tenth of a percent
//! of extra noise, the integers are scaled by a public power-of-two granularity γ first: the
//! shares grow with γ, τ falls away exponentially, and the national sum is divided by γ again.

/// The τ of Proposition 14 for `n` summands of discrete Gaussian noise with parameter `sigma`:
/// τ = 10 · Σ_{k=1}^{n−1} exp(−2π²σ² · k/(k+1)).
pub fn tau(sigma: f64, n: u64) -> f64 {
    let c = 2.0 * std::f64::consts::PI.powi(2) * sigma * sigma;
    10.0 * (1..n)
        .map(|k| (-c * k as f64 / (k + 1) as f64).exp())
        .sum::<f64>()
}

/// ρ (zCDP) of the sum of `n` independent discrete Gaussian shares with parameter `sigma` each,
/// added to an integer vector of dimension `dim` whose L1 and L2 sensitivities are `l1` and `l2`:
/// ρ = ½ · min(l₂² + 2·l₁·τ + τ²·d, (l₂ + √d·τ)²) with lᵢ = Δᵢ / (√n·σ). Proposition 14's first
/// term adds a constant τ·d to the Rényi divergence; it is not zCDP, so it is not used. With one
/// summand τ = 0 and this is Δ₂²/(2σ²), the discrete Gaussian's own ρ.
pub fn distributed_rho(l1: f64, l2: f64, dim: u64, sigma: f64, n: u64) -> f64 {
    let root = (n as f64).sqrt() * sigma;
    let (a1, a2) = (l1 / root, l2 / root);
    let t = tau(sigma, n);
    let d = dim as f64;
    let first = a2 * a2 + 2.0 * a1 * t + t * t * d;
    let second = (a2 + d.sqrt() * t).powi(2);
    0.5 * first.min(second)
}

/// ρ of one node's own share alone: what a node's youths keep if both aggregators collude.
pub fn local_rho(l2: f64, sigma: f64) -> f64 {
    l2 * l2 / (2.0 * sigma * sigma)
}

/// One measure's noise share, as every node of a run computes it from public numbers alone.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SharePlan {
    /// γ: the measure's integers are multiplied by this before noise and sharding.
    pub granularity: i64,
    /// σ of this node's discrete Gaussian share, in scaled units (γ × original).
    pub sigma: f64,
    /// ρ the sum of `honest` such shares guarantees (the bound above, ≤ the target).
    pub rho: f64,
    /// ρ of this node's share alone, against both aggregators colluding.
    pub local_rho: f64,
    /// Variance of this node's share in the measure's own units (σ²/γ²); public.
    pub share_variance: f64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("secure aggregation needs at least one honest node (n − t = {0})")]
    NoHonestNodes(u64),
    #[error("invalid noise target: ρ = {0}")]
    BadRho(f64),
    #[error("invalid sensitivity: L1 {l1}, L2 {l2}")]
    BadSensitivity { l1: i64, l2: f64 },
    #[error("invalid local ρ ceiling: {0}")]
    BadCeiling(f64),
}

/// Extra variance over the central discrete Gaussian that a granularity may cost before a finer
/// one is tried.
const MAX_INFLATION: f64 = 1.001;
/// Finest granularity tried: 2^20.
const MAX_GRANULARITY_LOG2: u32 = 20;

/// The smallest share σ (scaled by γ) whose distributed bound meets `rho` for `honest` shares.
fn smallest_sigma(l1: f64, l2: f64, dim: u64, rho: f64, honest: u64) -> f64 {
    let central = l2 / (2.0 * rho).sqrt();
    let mut low = central / (honest as f64).sqrt();
    if distributed_rho(l1, l2, dim, low, honest) <= rho {
        return low;
    }
    let mut high = low * 2.0;
    while distributed_rho(l1, l2, dim, high, honest) > rho {
        high *= 2.0;
    }
    for _ in 0..80 {
        let mid = 0.5 * (low + high);
        if distributed_rho(l1, l2, dim, mid, honest) <= rho {
            high = mid;
        } else {
            low = mid;
        }
    }
    high
}

/// The share plan for one measure: sensitivities `l1`/`l2` of the unscaled integer vector of
/// dimension `dim`, target `rho`, `honest` = n − t nodes whose shares are counted on, and the
/// node's optional ceiling on its own local ρ (then it adds more than its share).
pub fn plan(
    l1: i64,
    l2: f64,
    dim: u64,
    rho: f64,
    honest: u64,
    max_local_rho: Option<f64>,
) -> Result<SharePlan, PlanError> {
    // A pure function of public numbers, linear in `honest` (τ) times the search: remembered, so
    // a node asked the same release again, or a coordinator planning a round, computes it once.
    type Key = (i64, u64, u64, u64, u64, Option<u64>);
    static PLANS: std::sync::Mutex<Option<std::collections::HashMap<Key, SharePlan>>> =
        std::sync::Mutex::new(None);
    let key: Key = (
        l1,
        l2.to_bits(),
        dim,
        rho.to_bits(),
        honest,
        max_local_rho.map(f64::to_bits),
    );
    if let Ok(guard) = PLANS.lock()
        && let Some(hit) = guard.as_ref().and_then(|m| m.get(&key))
    {
        return Ok(*hit);
    }
    let planned = plan_uncached(l1, l2, dim, rho, honest, max_local_rho)?;
    if let Ok(mut guard) = PLANS.lock() {
        let map = guard.get_or_insert_with(std::collections::HashMap::new);
        if map.len() >= 4096 {
            map.clear();
        }
        map.insert(key, planned);
    }
    Ok(planned)
}

fn plan_uncached(
    l1: i64,
    l2: f64,
    dim: u64,
    rho: f64,
    honest: u64,
    max_local_rho: Option<f64>,
) -> Result<SharePlan, PlanError> {
    if honest == 0 {
        return Err(PlanError::NoHonestNodes(honest));
    }
    if !(rho.is_finite() && rho > 0.0) {
        return Err(PlanError::BadRho(rho));
    }
    if l1 <= 0 || !(l2.is_finite() && l2 > 0.0) {
        return Err(PlanError::BadSensitivity { l1, l2 });
    }
    if let Some(c) = max_local_rho
        && !(c.is_finite() && c > 0.0)
    {
        return Err(PlanError::BadCeiling(c));
    }
    let dim = dim.max(1);
    let mut chosen = None;
    for k in 0..=MAX_GRANULARITY_LOG2 {
        let gamma = 1i64 << k;
        let (g1, g2) = (l1 as f64 * gamma as f64, l2 * gamma as f64);
        let sigma = smallest_sigma(g1, g2, dim, rho, honest);
        let central_sq = g2 * g2 / (2.0 * rho);
        chosen = Some((gamma, sigma, g1, g2));
        if honest as f64 * sigma * sigma <= MAX_INFLATION * central_sq {
            break;
        }
    }
    let (gamma, mut sigma, g1, g2) = chosen.ok_or(PlanError::NoHonestNodes(honest))?;
    if let Some(ceiling) = max_local_rho {
        sigma = sigma.max(g2 / (2.0 * ceiling).sqrt() * (1.0 + 1e-9));
    }
    Ok(SharePlan {
        granularity: gamma,
        sigma,
        rho: distributed_rho(g1, g2, dim, sigma, honest),
        local_rho: local_rho(g2, sigma),
        share_variance: (sigma / gamma as f64).powi(2),
    })
}

/// Standard deviations of headroom kept between a cell's public bound and the end of its entry's
/// range: a discrete Gaussian draw beyond 40σ has probability below e^−800.
pub const HEADROOM_SIGMAS: f64 = 40.0;

/// The largest |cell| a node holding at most `max_units` units can report for a measure whose one
/// unit moves a cell by at most `per_cell`: public, so the entry width depends on no record.
pub fn cell_bound(per_cell: i64, max_units: u64) -> i64 {
    per_cell
        .unsigned_abs()
        .saturating_mul(max_units)
        .min(i64::MAX as u64) as i64
}

/// The narrowest signed entry width, in bits, that holds any cell within ±`cell_bound` scaled by
/// the plan's granularity plus its noise share with 40σ headroom; `None` when no width up to
/// `max_bits` does. Every input is public, so nodes, coordinator and helper agree on it.
pub fn entry_bits(cell_bound: i64, plan: &SharePlan, max_bits: u32) -> Option<u32> {
    let reach = cell_bound as f64 * plan.granularity as f64 + HEADROOM_SIGMAS * plan.sigma;
    (2..=max_bits).find(|b| reach < 2f64.powi(*b as i32 - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    #[test]
    fn a_remembered_plan_is_the_plan() {
        for (honest, ceiling) in [(1, None), (10, None), (900, Some(1.0)), (900, None)] {
            let fresh = plan_uncached(2, 2.0, 14, 0.05, honest, ceiling).expect("plan");
            assert_eq!(
                plan(2, 2.0, 14, 0.05, honest, ceiling).expect("plan"),
                fresh
            );
            assert_eq!(
                plan(2, 2.0, 14, 0.05, honest, ceiling).expect("plan"),
                fresh
            );
        }
        assert!(plan(2, 2.0, 14, 0.05, 0, None).is_err());
    }

    #[test]
    fn tau_and_rho_against_worked_values() {
        // n = 2, σ = 1: τ = 10·e^(−π²) (one term, k = 1, k/(k+1) = ½).
        let t = tau(1.0, 2);
        assert!(close(
            t,
            10.0 * (-std::f64::consts::PI.powi(2)).exp(),
            1e-12
        ));
        assert!(close(t, 5.172_318_4e-4, 1e-6), "{t}");
        // Δ₁ = Δ₂ = 1, d = 1: l = 1/√2, both terms equal (l + τ)²; ρ = ½(0.707107 + τ)².
        let rho = distributed_rho(1.0, 1.0, 1, 1.0, 2);
        let l = 1.0 / 2f64.sqrt();
        assert!(close(rho, 0.5 * (l + t).powi(2), 1e-12));
        assert!(close(rho, 0.250_365_87, 1e-7), "{rho}");
        // n = 3, σ = 0.5: τ = 10(e^(−π²/4) + e^(−π²/3)) = 1.2206373.
        let t3 = tau(0.5, 3);
        assert!(close(t3, 1.220_637_3, 1e-6), "{t3}");
        // Δ₁ = 4, Δ₂ = 2, d = 4: l₁ = 4/(√3·0.5) = 4.6188, l₂ = 2.3094;
        // both terms equal here (l₁ = √d·l₂ with d = 4): ρ = ½(2.3094 + 2·1.2206)² = 11.284460.
        let r3 = distributed_rho(4.0, 2.0, 4, 0.5, 3);
        let (a1, a2) = (4.0 / (3f64.sqrt() * 0.5), 2.0 / (3f64.sqrt() * 0.5));
        let expect = 0.5 * (a2 * a2 + 2.0 * a1 * t3 + t3 * t3 * 4.0).min((a2 + 2.0 * t3).powi(2));
        assert!(close(r3, expect, 1e-12));
        assert!(close(r3, 11.284_460_1, 1e-7), "{r3}");
    }

    #[test]
    fn one_node_holding_all_noise_is_the_plain_discrete_gaussian() {
        for (l2, sigma) in [(1.0, 3.0), (2.0, 14.142), (10.5, 0.7)] {
            assert!(close(
                distributed_rho(l2, l2, 8, sigma, 1),
                local_rho(l2, sigma),
                1e-15
            ));
            assert!(close(
                local_rho(l2, sigma),
                l2 * l2 / (2.0 * sigma * sigma),
                1e-15
            ));
        }
        let p = plan(4, 2.0, 32, 0.01, 1, None).expect("plan");
        assert_eq!(p.granularity, 1);
        assert!(p.rho <= 0.01 && close(p.rho, 0.01, 1e-6), "{p:?}");
        assert!(close(p.local_rho, p.rho, 1e-12));
        assert!(close(p.share_variance, 2.0 * 2.0 / 0.02, 1e-6));
    }

    #[test]
    fn shares_of_honest_nodes_add_up_to_the_central_noise() {
        // 11 providers, t = 1: ten shares carry the central variance Δ₂²/(2ρ) within 0.1%.
        let central = 2.0 * 2.0 / (2.0 * 0.01);
        let p = plan(4, 2.0, 16, 0.01, 10, None).expect("plan");
        assert!(p.rho <= 0.01, "{p:?}");
        let total = 10.0 * p.share_variance;
        assert!(
            total >= central * 0.999_999 && total <= central * MAX_INFLATION,
            "{p:?}"
        );
        // Alone, one share protects far less: ρ ten times the target.
        assert!(close(p.local_rho, 0.1, 1e-3), "{p:?}");
    }

    #[test]
    fn tiny_shares_get_a_granularity_so_tau_stays_negligible() {
        // 1,000 nodes, t = 100: without scaling each share would have σ² ≈ 0.22 and τ ≈ 100.
        let unscaled = tau((200.0f64 / 900.0).sqrt(), 900);
        assert!(unscaled > 10.0, "{unscaled}");
        let p = plan(4, 2.0, 32, 0.01, 900, None).expect("plan");
        assert!(p.granularity > 1, "{p:?}");
        assert!(p.rho <= 0.01, "{p:?}");
        let central = 200.0;
        assert!(900.0 * p.share_variance <= central * MAX_INFLATION, "{p:?}");
        assert!(tau(p.sigma, 900) < 1e-6);
    }

    #[test]
    fn a_local_ceiling_adds_noise_and_holds() {
        let free = plan(4, 2.0, 16, 0.01, 10, None).expect("plan");
        let capped = plan(4, 2.0, 16, 0.01, 10, Some(0.05)).expect("plan");
        assert!(capped.local_rho <= 0.05 && close(capped.local_rho, 0.05, 1e-6));
        assert!(capped.share_variance > free.share_variance * 1.99);
        assert!(capped.rho < free.rho);
        // A ceiling above the share's own local ρ changes nothing.
        assert_eq!(plan(4, 2.0, 16, 0.01, 10, Some(1.0)).expect("plan"), free);
    }

    #[test]
    fn bad_inputs_are_refused() {
        assert_eq!(
            plan(1, 1.0, 1, 0.01, 0, None),
            Err(PlanError::NoHonestNodes(0))
        );
        assert!(matches!(
            plan(1, 1.0, 1, 0.0, 3, None),
            Err(PlanError::BadRho(_))
        ));
        assert!(matches!(
            plan(0, 1.0, 1, 0.1, 3, None),
            Err(PlanError::BadSensitivity { .. })
        ));
        assert!(matches!(
            plan(1, 1.0, 1, 0.1, 3, Some(-1.0)),
            Err(PlanError::BadCeiling(_))
        ));
    }

    #[test]
    fn entry_width_holds_the_public_bound_and_its_noise_and_no_more() {
        let p = plan(4, 2.0, 16, 0.01, 10, None).expect("plan");
        let bound = cell_bound(4, 1000);
        assert_eq!(bound, 4000);
        let bits = entry_bits(bound, &p, 64).expect("fits");
        let reach = 4000.0 * p.granularity as f64 + HEADROOM_SIGMAS * p.sigma;
        assert!(reach < 2f64.powi(bits as i32 - 1), "{bits} too narrow");
        assert!(
            reach >= 2f64.powi(bits as i32 - 2),
            "{bits} wider than needed"
        );
        // A bound no 64-bit entry holds is refused, and a huge one saturates instead of wrapping.
        assert_eq!(cell_bound(i64::MAX, u64::MAX), i64::MAX);
        assert_eq!(entry_bits(cell_bound(i64::MAX, 2), &p, 64), None);
        assert_eq!(entry_bits(bound, &p, bits - 1), None);
    }
}
