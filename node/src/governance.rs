//! Indicators approved through the coordinator, checked by the node itself. The node fetches the
//! newest signed catalog version from the coordinator and keeps only entries that enough reviewers
//! it trusts signed, over exactly the text it received, and whose query plans on its own tables.
//! On top of that the operator's local policy applies to every indicator, local or fetched:
//! a deny list, cost caps, and (for fetched ones) local acceptance per exact content.

use crate::config::GovernanceConfig;
use crate::tables::Tables;
use policies::governance::{CatalogVersion, SignatureRefusal, verify_entry};
use policies::{Indicator, Period};
use std::collections::BTreeMap;
use std::path::Path;

/// Why the node will not answer an indicator; stated in the answer and in the audit log.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Signature(#[from] SignatureRefusal),
    #[error("indicator '{id}' is not valid here: {message}")]
    Invalid { id: String, message: String },
    #[error("indicator '{0}' is denied by this node's operator (governance.deny)")]
    Denied(String),
    #[error(
        "indicator '{id}' (sha256 {content_hash}) awaits this node operator's acceptance: run `stroom node accept {id}` on the node"
    )]
    NotAccepted { id: String, content_hash: String },
    #[error("indicator '{id}' costs ρ={cost} per release; this node caps it at ρ={cap}")]
    OverCap { id: String, cost: f64, cap: f64 },
    #[error("cannot fetch the signed catalog from the coordinator: {0}")]
    Fetch(String),
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Signature(s) => s.code(),
            Refusal::Invalid { .. } => "invalid_indicator",
            Refusal::Denied(_) => "denied_locally",
            Refusal::NotAccepted { .. } => "not_accepted_locally",
            Refusal::OverCap { .. } => "over_cost_cap",
            Refusal::Fetch(_) => "catalog_unavailable",
        }
    }
}

/// The verified part of the newest catalog version this node has seen.
#[derive(Default)]
pub struct Fetched {
    pub version: u64,
    pub accepted: BTreeMap<String, Indicator>,
    pub refused: BTreeMap<String, Refusal>,
}

/// Checks every entry of `catalog` against the node's trusted keys and its own tables.
pub async fn verify_catalog(
    catalog: &CatalogVersion,
    cfg: &GovernanceConfig,
    tables: &Tables,
    coverage: &Period,
) -> Fetched {
    let mut out = Fetched {
        version: catalog.version,
        ..Default::default()
    };
    let ctx = tables.session(coverage).ok();
    for entry in &catalog.entries {
        let checked = check_entry(entry, cfg, ctx.as_ref()).await;
        match checked {
            Ok(ind) => {
                out.accepted.insert(entry.id.clone(), ind);
            }
            Err(r) => {
                tracing::warn!(indicator = %entry.id, "refused from catalog version {}: {r}", catalog.version);
                out.refused.insert(entry.id.clone(), r);
            }
        }
    }
    out
}

async fn check_entry(
    entry: &policies::governance::SignedIndicator,
    cfg: &GovernanceConfig,
    ctx: Option<&datafusion::prelude::SessionContext>,
) -> Result<Indicator, Refusal> {
    verify_entry(entry, &cfg.reviewer_keys, cfg.required_signatures)?;
    let invalid = |message: String| Refusal::Invalid {
        id: entry.id.clone(),
        message,
    };
    let file = Path::new("signed-catalog").join(format!("{}.toml", entry.id));
    let ind = policies::indicator::parse(&file, &entry.toml).map_err(|p| invalid(p.to_string()))?;
    if ind.id != entry.id {
        return Err(invalid(format!(
            "its text declares id '{}', the catalog entry says '{}'",
            ind.id, entry.id
        )));
    }
    if let (Some(q), Some(ctx)) = (ind.query(), ctx) {
        policies::contract::plan(ctx, q)
            .await
            .map_err(|e| invalid(e.to_string()))?;
    }
    Ok(ind)
}

/// The operator's local policy, applied to every indicator before anything is computed.
/// `fetched` says whether the indicator came through the signed catalog (acceptance applies).
pub fn local_policy(
    cfg: &GovernanceConfig,
    ind: &Indicator,
    fetched: bool,
    accepted: impl FnOnce() -> bool,
) -> Result<(), Refusal> {
    if cfg.deny.iter().any(|d| d == &ind.id) {
        return Err(Refusal::Denied(ind.id.clone()));
    }
    if let Some(q) = ind.query() {
        let cost = q.cost.rho();
        let cap = cfg
            .caps
            .iter()
            .filter(|c| c.indicator == ind.id)
            .map(|c| c.max_rho)
            .chain(cfg.max_rho)
            .fold(f64::INFINITY, f64::min);
        if cost > cap {
            return Err(Refusal::OverCap {
                id: ind.id.clone(),
                cost,
                cap,
            });
        }
    }
    if fetched && cfg.require_acceptance && !accepted() {
        return Err(Refusal::NotAccepted {
            id: ind.id.clone(),
            content_hash: ind.content_hash.clone(),
        });
    }
    Ok(())
}

/// Fetches the newest catalog version from the coordinator, checking its certificate against
/// the federation CA.
pub async fn fetch(cfg: &GovernanceConfig, ca: &Path) -> Result<CatalogVersion, Refusal> {
    let Some(base) = &cfg.coordinator_url else {
        return Err(Refusal::Fetch(
            "governance.coordinator_url is not set".into(),
        ));
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pem = std::fs::read(ca).map_err(|e| Refusal::Fetch(format!("{}: {e}", ca.display())))?;
    let cert = reqwest::Certificate::from_pem(&pem)
        .map_err(|e| Refusal::Fetch(format!("{}: {e}", ca.display())))?;
    let client = reqwest::Client::builder()
        .tls_certs_only([cert])
        .timeout(std::time::Duration::from_millis(cfg.fetch_timeout_ms))
        .build()
        .map_err(|e| Refusal::Fetch(e.to_string()))?;
    let url = format!("{}/v1/catalog", base.trim_end_matches('/'));
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| Refusal::Fetch(format!("{url}: {e}")))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(Refusal::Fetch(format!("{url}: HTTP {status}")));
    }
    resp.json::<CatalogVersion>()
        .await
        .map_err(|e| Refusal::Fetch(format!("{url}: not a catalog version: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use policies::governance::{ReviewerSignature, SignedIndicator, SigningKey, TrustedKey};

    /// A node enforces the stability check on what it receives, even when the indicator carries
    /// every signature it requires: reviewers are a second line, not the only one.
    #[tokio::test]
    async fn a_signed_indicator_whose_rows_are_not_one_youths_is_refused_on_arrival() {
        let (key, _) = SigningKey::generate().expect("key");
        let cfg = GovernanceConfig {
            reviewer_keys: vec![TrustedKey {
                name: "ann".into(),
                public_key: key.public_key_hex(),
            }],
            required_signatures: 1,
            ..GovernanceConfig::default()
        };
        let signed = |id: &str, select: &str| {
            let toml = format!(
                "id = \"{id}\"\ntheme = \"zorg\"\ntitle = {{ nl = \"t\", en = \"t\" }}\n\
                 definition = {{ nl = \"d\", en = \"d\" }}\nprivacy_unit = \"youth_pid\"\n\
                 sql = \"{select} FROM restrictive_measure m JOIN quarters q ON CAST(m.start_ts AS DATE) BETWEEN q.first_day AND q.last_day\"\n\
                 group_by = {{ quarter = \"period\" }}\n\
                 aggregate = {{ kind = \"count_units\", max_groups_per_unit = 4 }}\ncost = {{ rho = 0.1 }}\n"
            );
            let hash = policies::indicator::content_hash(toml.as_bytes());
            SignedIndicator {
                id: id.into(),
                signatures: vec![ReviewerSignature {
                    reviewer: "ann".into(),
                    public_key: key.public_key_hex(),
                    signature: key.sign_approval(id, &hash),
                    signed_at: String::new(),
                }],
                content_hash: hash,
                toml,
                proposal: "p".into(),
            }
        };
        let ctx = policies::contract::planning_context().expect("context");
        let stable = signed("research.ok", "SELECT m.youth_pid, q.quarter");
        check_entry(&stable, &cfg, Some(&ctx))
            .await
            .expect("a stable, signed indicator is taken");
        let unstable = signed(
            "research.per_measure",
            "SELECT CAST(m.measure_id AS VARCHAR) AS youth_pid, q.quarter",
        );
        let refusal = check_entry(&unstable, &cfg, Some(&ctx))
            .await
            .expect_err("refused");
        assert!(
            matches!(&refusal, Refusal::Invalid { id, message }
                if id == "research.per_measure" && message.contains("is not the privacy unit carried unchanged")),
            "{refusal}"
        );
    }
}
