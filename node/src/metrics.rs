//! Counters exposed at `/metrics` in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Metrics {
    pub released: AtomicU64,
    pub replayed: AtomicU64,
    pub refused_budget: AtomicU64,
    pub rejected: AtomicU64,
    pub failed: AtomicU64,
    /// Requests and latency per route.
    pub http: policies::ops::HttpMetrics,
}

impl Metrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, node_id: &str, rho_spent: f64, rho_budget: f64) -> String {
        let mut s = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "# HELP stroom_node_evaluations_total Evaluate requests by outcome."
        );
        let _ = writeln!(s, "# TYPE stroom_node_evaluations_total counter");
        for (outcome, c) in [
            ("released", &self.released),
            ("replayed", &self.replayed),
            ("refused_budget", &self.refused_budget),
            ("rejected", &self.rejected),
            ("failed", &self.failed),
        ] {
            let _ = writeln!(
                s,
                "stroom_node_evaluations_total{{node=\"{node_id}\",outcome=\"{outcome}\"}} {}",
                get(c)
            );
        }
        let _ = writeln!(
            s,
            "# HELP stroom_node_rho_spent zCDP rho spent in the current budget period."
        );
        let _ = writeln!(s, "# TYPE stroom_node_rho_spent gauge");
        let _ = writeln!(s, "stroom_node_rho_spent{{node=\"{node_id}\"}} {rho_spent}");
        let _ = writeln!(
            s,
            "# HELP stroom_node_rho_budget zCDP rho available per budget period."
        );
        let _ = writeln!(s, "# TYPE stroom_node_rho_budget gauge");
        let _ = writeln!(
            s,
            "stroom_node_rho_budget{{node=\"{node_id}\"}} {rho_budget}"
        );
        let _ = writeln!(
            s,
            "# HELP stroom_node_rho_remaining zCDP rho left in the current budget period; at 0 every new release is refused."
        );
        let _ = writeln!(s, "# TYPE stroom_node_rho_remaining gauge");
        let _ = writeln!(
            s,
            "stroom_node_rho_remaining{{node=\"{node_id}\"}} {}",
            (rho_budget - rho_spent).max(0.0)
        );
        s
    }
}
