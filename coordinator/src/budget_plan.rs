//! The budget plan: what a year of publication rounds over the approved catalog will cost each
//! node, against the budget the node reports. A year of data is asked about in four quarterly
//! rounds (each quarterly indicator once per quarter) and once for the annual figures; all of it
//! is charged to that year's data, so it must fit the node's budget for one data period.
//!
//! A node's budget is its own ([`policies::wire::BudgetStatus`]); the coordinator only plans with
//! it. A node with `deny` or `caps` in its local policy may spend less than planned, never more.

use crate::runs::Target;
use policies::wire::BudgetStatus;
use policies::{Catalog, TimeGrain};
use serde::Serialize;
use std::collections::BTreeMap;

/// Quarterly rounds per data year.
pub const ROUNDS_PER_YEAR: u32 = 4;

/// One base query's share of a node's plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanLine {
    pub indicator: String,
    /// "quarter" or "year".
    pub grain: &'static str,
    pub rho_per_release: f64,
    /// Releases charged to one budget period of the node.
    pub releases_per_period: u32,
    pub rho_per_period: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodePlan {
    pub node: String,
    /// The node's data-period granularity ("year", "quarter", "lifetime"); None when unknown.
    pub granularity: Option<String>,
    /// ρ per data period, as the node reports it; None when the node has not reported.
    pub rho_budget: Option<f64>,
    /// ρ a year of rounds charges to one budget period of this node.
    pub rho_planned: f64,
    /// Budget minus plan; negative when the plan does not fit.
    pub rho_headroom: Option<f64>,
    pub fits: Option<bool>,
    pub lines: Vec<PlanLine>,
}

impl NodePlan {
    pub fn exceeds(&self) -> bool {
        self.fits == Some(false)
    }
}

/// Releases of one base over a data year charged to one budget period of `granularity`. A
/// quarterly budget is charged once by a quarterly release and once by an annual one (which
/// covers every quarter); a yearly or lifetime budget by all four quarterly releases.
fn releases_per_period(granularity: Option<&str>, grain: TimeGrain) -> u32 {
    match (granularity, grain) {
        (_, TimeGrain::Year) => 1,
        (Some("quarter"), TimeGrain::Quarter) => 1,
        (_, TimeGrain::Quarter) => ROUNDS_PER_YEAR,
    }
}

/// The plan for every target node: each base query of the catalog the node serves (by privacy
/// unit), counted once however many derived indicators share it (a node replays a repeated
/// release without new spend).
pub fn plan(
    catalog: &Catalog,
    targets: &[Target],
    budgets: &BTreeMap<String, BudgetStatus>,
) -> Vec<NodePlan> {
    targets
        .iter()
        .map(|t| {
            let status = budgets.get(&t.client.id);
            let granularity = status.map(|s| s.granularity.clone());
            let mut lines = Vec::new();
            for ind in catalog.indicators.values() {
                let Some(q) = ind.query() else { continue };
                if !t.units.contains(&q.privacy_unit) {
                    continue;
                }
                let rho = q.cost.rho();
                let n = releases_per_period(granularity.as_deref(), q.time_grain());
                lines.push(PlanLine {
                    indicator: ind.id.clone(),
                    grain: q.time_grain().name(),
                    rho_per_release: rho,
                    releases_per_period: n,
                    rho_per_period: rho * f64::from(n),
                });
            }
            let rho_planned: f64 = lines.iter().map(|l| l.rho_per_period).sum();
            let rho_budget = status.map(|s| s.rho_budget);
            // A hair of slack for the sum of decimal costs (0.1 + 0.2 ≠ 0.3 in binary).
            let fits = rho_budget.map(|b| rho_planned <= b + 1e-9);
            NodePlan {
                node: t.client.id.clone(),
                granularity,
                rho_budget,
                rho_planned,
                rho_headroom: rho_budget.map(|b| b - rho_planned),
                fits,
                lines,
            }
        })
        .collect()
}

/// The nodes whose budget the plan exceeds, as one sentence with the figures.
pub fn exceeded(plans: &[NodePlan]) -> Option<String> {
    let over: Vec<String> = plans
        .iter()
        .filter(|p| p.exceeds())
        .map(|p| {
            format!(
                "{}: a year of rounds costs ρ={:.4} per {} of data, its budget is ρ={:.4}",
                p.node,
                p.rho_planned,
                p.granularity.as_deref().unwrap_or("period"),
                p.rho_budget.unwrap_or(0.0)
            )
        })
        .collect();
    (!over.is_empty()).then(|| over.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_charged_to_one_budget_period() {
        assert_eq!(releases_per_period(Some("year"), TimeGrain::Quarter), 4);
        assert_eq!(releases_per_period(Some("year"), TimeGrain::Year), 1);
        assert_eq!(releases_per_period(Some("quarter"), TimeGrain::Quarter), 1);
        assert_eq!(releases_per_period(Some("quarter"), TimeGrain::Year), 1);
        assert_eq!(releases_per_period(Some("lifetime"), TimeGrain::Quarter), 4);
        // Unknown: planned as the most a year can charge.
        assert_eq!(releases_per_period(None, TimeGrain::Quarter), 4);
    }

    #[test]
    fn exceeded_names_each_node_with_its_figures() {
        let mut p = NodePlan {
            node: "P01".into(),
            granularity: Some("year".into()),
            rho_budget: Some(7.0),
            rho_planned: 7.5,
            rho_headroom: Some(-0.5),
            fits: Some(false),
            lines: vec![],
        };
        let text = exceeded(std::slice::from_ref(&p)).expect("exceeded");
        assert_eq!(
            text,
            "P01: a year of rounds costs ρ=7.5000 per year of data, its budget is ρ=7.0000"
        );
        p.fits = Some(true);
        assert_eq!(exceeded(std::slice::from_ref(&p)), None);
        p.fits = None;
        assert_eq!(
            exceeded(std::slice::from_ref(&p)),
            None,
            "an unknown budget is not exceeded"
        );
    }
}
