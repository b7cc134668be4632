//! What the coordinator (leader) and the helper say to each other, over mutual TLS. The helper
//! never sees a leader share or a national figure: it gets each report's public part, its sealed
//! share and the leader's verifier share, and returns verifier messages and, once per batch, its
//! aggregate share.

use policies::wire::{KeyId, ReportBinding, SealedShare};
use serde::{Deserialize, Serialize};

pub const AGGREGATE_PATH: &str = "/v1/aggregate";
pub const COLLECT_PATH: &str = "/v1/collect";
pub const HPKE_KEYS_PATH: &str = "/v1/hpke_keys";

/// The helper's HPKE keys by id: nodes seal to `current`; reports sealed to any of `keys` open.
/// Ids only: which public key an id stands for, a node learns from the helper's operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HpkeKeys {
    pub current: KeyId,
    pub keys: Vec<KeyId>,
}

/// One node's report as the helper receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelperReport {
    pub binding: ReportBinding,
    pub public_share: String,
    pub helper_share: SealedShare,
    pub signature: String,
    /// The leader's verifier share for this report (hex).
    pub leader_verifier_share: String,
}

/// Reports for one batch: one base indicator and quarter of a secure run. The batch id is the
/// leader's; the helper binds every report to the first batch it arrived in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateRequest {
    pub batch: String,
    pub reports: Vec<HelperReport>,
}

/// Per report, in the request's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReportOutcome {
    /// The proof holds; the helper kept its output share. The leader finishes with the message.
    Verified {
        node_id: String,
        verifier_message: String,
    },
    /// Excluded, with the reason.
    Rejected { node_id: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggregateResponse {
    pub outcomes: Vec<ReportOutcome>,
}

/// Asks for the helper's aggregate share over exactly these nodes' verified reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectRequest {
    pub batch: String,
    pub nodes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectResponse {
    pub batch: String,
    pub count: usize,
    pub aggregate_share: String,
}
