//! What one privacy unit can change in a released answer, and the noise that follows from it.
//! Shared by the node (which adds the noise) and the coordinator (which needs the public scales).

use crate::indicator::{Aggregate, Cost, MeasureKind, Query};

/// One released column of noisy integers (`count` or `sum`) and its per-unit bound.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Measure {
    pub name: String,
    /// Most one unit can move a single cell of this measure.
    pub per_cell: i64,
    /// Most cells of this measure one unit can touch.
    pub cells_per_unit: i64,
    /// The part of the indicator's cost spent on this measure.
    pub cost: MeasureCost,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeasureCost {
    Rho(f64),
    Epsilon(f64),
}

impl Measure {
    /// L1 bound of one unit's effect on the whole vector: cells × per-cell bound.
    pub fn l1(&self) -> i64 {
        self.cells_per_unit.saturating_mul(self.per_cell)
    }

    /// L2 bound: √cells × per-cell bound. Rounded *up* to the next float so the privacy map is
    /// never handed a sensitivity smaller than the true one.
    pub fn l2(&self) -> f64 {
        let exact_sq = (self.cells_per_unit as f64) * (self.per_cell as f64).powi(2);
        exact_sq.sqrt().next_up()
    }

    /// Noise scale for this measure's cost: σ of the discrete Gaussian (zCDP: ρ = Δ₂²/(2σ²)), or
    /// b of the discrete Laplace (ε = Δ₁/b). Nudged up by a relative 1e-9 so that the OpenDP
    /// privacy map of the resulting measurement never exceeds the cost through float rounding.
    pub fn scale(&self) -> f64 {
        let s = match self.cost {
            MeasureCost::Rho(rho) => self.l2() / (2.0 * rho).sqrt(),
            MeasureCost::Epsilon(eps) => self.l1() as f64 / eps,
        };
        s * (1.0 + 1e-9)
    }

    /// Variance of one cell's noise: σ² for the discrete Gaussian (bounded above by it), and
    /// 2·e^(-1/b)/(1-e^(-1/b))² for the discrete Laplace.
    pub fn variance(&self) -> f64 {
        let s = self.scale();
        match self.cost {
            MeasureCost::Rho(_) => s * s,
            MeasureCost::Epsilon(_) => {
                let a = (-1.0 / s).exp();
                2.0 * a / (1.0 - a).powi(2)
            }
        }
    }

    pub fn mechanism(&self) -> &'static str {
        match self.cost {
            MeasureCost::Rho(_) => "discrete_gaussian",
            MeasureCost::Epsilon(_) => "discrete_laplace",
        }
    }
}

impl Query {
    /// Number of cells in the public key set for a run whose period has `quarters` quarters.
    pub fn cell_count(&self, quarters: usize) -> i64 {
        let mut n: i64 = 1;
        for g in &self.group_by {
            n = n.saturating_mul(crate::catalog::domain_len(&g.domain, quarters) as i64);
        }
        let bins = self.bins().len();
        if bins > 0 {
            n = n.saturating_mul(bins as i64);
        }
        n
    }

    /// The released measures, each with its sensitivity and share of the cost. A unit can touch
    /// at most `max_groups_per_unit` cells, and never more cells than the key set has.
    pub fn measures(&self, quarters: usize) -> Vec<Measure> {
        let cells = self
            .aggregate
            .max_groups_per_unit()
            .min(self.cell_count(quarters))
            .max(1);
        let split = |share: f64| match self.cost {
            Cost::Rho(r) => MeasureCost::Rho(r * share),
            Cost::Epsilon(e) => MeasureCost::Epsilon(e * share),
        };
        let one = |name: &str, per_cell: i64| Measure {
            name: name.to_string(),
            per_cell,
            cells_per_unit: cells,
            cost: split(1.0),
        };
        match &self.aggregate {
            Aggregate::CountUnits { .. } => vec![one(MeasureKind::Count.name(), 1)],
            Aggregate::CountRows {
                max_rows_per_group, ..
            }
            | Aggregate::Histogram {
                max_rows_per_group, ..
            } => vec![one(MeasureKind::Count.name(), *max_rows_per_group)],
            Aggregate::Sum { lower, upper, .. } => {
                vec![one(MeasureKind::Sum.name(), magnitude(*lower, *upper))]
            }
            Aggregate::Mean {
                lower,
                upper,
                sum_share,
                ..
            } => vec![
                Measure {
                    name: MeasureKind::Sum.name().into(),
                    per_cell: magnitude(*lower, *upper),
                    cells_per_unit: cells,
                    cost: split(*sum_share),
                },
                Measure {
                    name: MeasureKind::Count.name().into(),
                    per_cell: 1,
                    cells_per_unit: cells,
                    cost: split(1.0 - sum_share),
                },
            ],
        }
    }
}

/// Largest absolute value a clamped per-unit total can take.
pub fn magnitude(lower: i64, upper: i64) -> i64 {
    lower.unsigned_abs().max(upper.unsigned_abs()) as i64
}

/// ε of ρ-zCDP at a given δ, by OpenDP's conversion (its privacy profile of ρ-zCDP, the tight
/// bound of Canonne, Kamath & Steinke 2020, inverted at δ). Where OpenDP cannot give a figure
/// (δ outside (0, 1), ρ not finite), the looser [`zcdp_to_epsilon_bound`], never an understatement.
pub fn zcdp_to_epsilon(rho: f64, delta: f64) -> f64 {
    use opendp::combinators::ConcentratedMeasure;
    use opendp::measures::ZeroConcentratedDivergence;
    match ZeroConcentratedDivergence::convert(rho).and_then(|profile| profile.epsilon(delta)) {
        Ok(epsilon) if epsilon.is_finite() => epsilon,
        Ok(_) | Err(_) => zcdp_to_epsilon_bound(rho, delta),
    }
}

/// ε = ρ + 2·√(ρ·ln(1/δ)) (Bun & Steinke 2016, Prop. 1.3): a simple upper bound on the above.
pub fn zcdp_to_epsilon_bound(rho: f64, delta: f64) -> f64 {
    rho + 2.0 * (rho * (1.0 / delta).ln()).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opendp::combinators::make_zCDP_to_approxDP;
    use opendp::domains::{AtomDomain, VectorDomain};
    use opendp::measurements::make_gaussian;
    use opendp::measures::ZeroConcentratedDivergence;
    use opendp::metrics::L2Distance;

    /// ε at δ from a real OpenDP measurement: a discrete Gaussian of σ = 1 over an L2
    /// sensitivity of √(2ρ), which is ρ-zCDP, converted by OpenDP's combinator.
    fn opendp_epsilon(rho: f64, delta: f64) -> f64 {
        let gaussian = make_gaussian::<_, _, ZeroConcentratedDivergence>(
            VectorDomain::new(AtomDomain::<i64>::default()),
            L2Distance::<f64>::default(),
            1.0,
            None,
        )
        .expect("gaussian");
        let approx = make_zCDP_to_approxDP(gaussian).expect("conversion");
        let profile = approx.map(&(2.0 * rho).sqrt()).expect("map");
        profile.epsilon(delta).expect("epsilon")
    }

    #[test]
    fn epsilon_is_opendps_and_tighter_than_the_simple_bound() {
        for rho in [0.01, 0.05, 0.1, 0.5, 1.0, 2.0] {
            for delta in [1e-5, 1e-6, 1e-9] {
                let ours = zcdp_to_epsilon(rho, delta);
                let theirs = opendp_epsilon(rho, delta);
                // The measurement's ρ is √(2ρ)²/2, which float rounding can move by an ulp.
                assert!(
                    (ours - theirs).abs() <= 1e-9 * theirs.max(1.0),
                    "ρ={rho} δ={delta}: {ours} vs OpenDP {theirs}"
                );
                let bound = zcdp_to_epsilon_bound(rho, delta);
                assert!(ours < bound, "ρ={rho} δ={delta}: {ours} ≥ {bound}");
            }
        }
    }

    #[test]
    fn impossible_deltas_fall_back_to_the_upper_bound() {
        // δ = 0: no finite ε exists; the bound says so (infinity) rather than a number.
        assert_eq!(zcdp_to_epsilon(0.5, 0.0), f64::INFINITY);
    }
}
