//! The coordinator as leader and collector of secure aggregation. For one base indicator and
//! quarter it checks every node's report against the run, verifies its share of each report's
//! range proof together with the helper, sums the verified reports' output shares, collects the
//! helper's aggregate share over exactly those nodes and unshards the national sums. It never
//! holds a node's cells: only its own input shares, which alone are uniformly random.
//!
//! The result is the same [`BaseResult`] per-node runs produce (cell sums and the sum of the
//! nodes' public noise variances), so intervals, publication and the dashboard do not change.

use crate::helper_client::{HelperClient, HelperError};
use crate::national::{BaseResult, CellSum};
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use policies::wire::{AnswerMeta, SecureRequest, SecureShares};
use secagg::api::{AggregateRequest, CollectRequest, HelperReport, ReportOutcome};
use secagg::vdaf::{LeaderState, Shape, VERIFY_KEY_LEN, parse_nonce, unhex};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum SecureError {
    #[error(transparent)]
    Helper(#[from] HelperError),
    #[error(
        "{indicator} {quarter}: {verified} of {nodes} reports verified, but the noise needs at least n − t = {needed} (t = {max_missing}); nothing is published. Excluded: {excluded}"
    )]
    TooFew {
        indicator: String,
        quarter: String,
        verified: usize,
        nodes: u32,
        max_missing: u32,
        needed: u32,
        excluded: String,
    },
    #[error("{0}")]
    Internal(String),
}

fn internal(e: impl std::fmt::Display) -> SecureError {
    SecureError::Internal(e.to_string())
}

/// A node left out of a secure sum, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Excluded {
    pub node: String,
    pub reason: String,
}

impl std::fmt::Display for Excluded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.node, self.reason)
    }
}

pub struct SecureAggregator {
    pub helper: HelperClient,
    pub verify_key: [u8; VERIFY_KEY_LEN],
}

/// What every report of the batch must agree on, from the run and the first valid report.
struct Expected<'a> {
    indicator: &'a str,
    content_hash: &'a str,
    quarter: &'a str,
    request: SecureRequest,
}

/// What the first valid report fixes for the batch: report shape, granularities, measure names
/// and public keys.
struct BatchShape {
    shape: Shape,
    granularity: Vec<i64>,
    measures: Vec<String>,
    keys: Vec<Vec<String>>,
}

/// A report checked against the run, with the leader's verification started.
struct Checked<'a> {
    meta: &'a AnswerMeta,
    shares: &'a SecureShares,
    state: LeaderState,
    verifier_share: Vec<u8>,
}

fn keys_of(batch: &RecordBatch, columns: &[String]) -> Result<Vec<Vec<String>>, String> {
    let cols = columns
        .iter()
        .map(|c| {
            let a = batch
                .column_by_name(c)
                .ok_or_else(|| format!("answer lacks column {c}"))?;
            cast(a, &DataType::Utf8).map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((0..batch.num_rows())
        .map(|row| {
            cols.iter()
                .map(|a| a.as_string::<i32>().value(row).to_string())
                .collect()
        })
        .collect())
}

impl SecureAggregator {
    /// The batch a set of reports forms: the run's public parameters and each report's identity.
    /// The same reports make the same batch (a resumed or repeated run collects it again and gets
    /// the same sums); reports the helper saw in another batch are refused there.
    pub fn batch_id(expected_parts: &[&str], reports: &[(&str, &str)]) -> String {
        let mut h = Sha256::new();
        for p in expected_parts.iter().chain(
            reports
                .iter()
                .flat_map(|(node, nonce)| [*node, *nonce])
                .collect::<Vec<_>>()
                .iter(),
        ) {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p.as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// National sums of one base indicator for one quarter from the nodes' secure answers.
    /// `providers_total` nodes were asked with `request`.
    pub async fn combine(
        &self,
        indicator: &str,
        content_hash: &str,
        quarter: &str,
        request: SecureRequest,
        answers: &[(RecordBatch, AnswerMeta)],
    ) -> Result<(BaseResult, Vec<Excluded>), SecureError> {
        let expected = Expected {
            indicator,
            content_hash,
            quarter,
            request,
        };
        let mut excluded = Vec::new();
        let mut checked: Vec<Checked<'_>> = Vec::new();
        let mut shape: Option<BatchShape> = None;
        for (batch, meta) in answers {
            match self.check(&expected, batch, meta, &mut shape) {
                Ok(c) => checked.push(c),
                Err(reason) => excluded.push(Excluded {
                    node: meta.node_id.clone(),
                    reason,
                }),
            }
        }
        let too_few = |verified: usize, excluded: &[Excluded]| SecureError::TooFew {
            indicator: indicator.to_string(),
            quarter: quarter.to_string(),
            verified,
            nodes: request.nodes,
            max_missing: request.max_missing,
            needed: request.honest(),
            excluded: if excluded.is_empty() {
                "none".into()
            } else {
                excluded
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            },
        };
        let Some(BatchShape {
            shape,
            granularity,
            measures,
            keys,
        }) = shape
        else {
            return Err(too_few(0, &excluded));
        };
        if (checked.len() as u32) < request.honest() {
            return Err(too_few(checked.len(), &excluded));
        }
        let parts = [
            indicator.to_string(),
            content_hash.to_string(),
            quarter.to_string(),
            request.nodes.to_string(),
            request.max_missing.to_string(),
        ];
        let ids: Vec<(&str, &str)> = checked
            .iter()
            .map(|c| (c.meta.node_id.as_str(), c.shares.binding.nonce.as_str()))
            .collect();
        let part_refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let batch_id = Self::batch_id(&part_refs, &ids);
        let reports = checked
            .iter()
            .map(|c| HelperReport {
                binding: c.shares.binding.clone(),
                public_share: c.shares.public_share.clone(),
                helper_share: c.shares.helper_share.clone(),
                signature: c.shares.signature.clone(),
                leader_verifier_share: hex::encode(&c.verifier_share),
            })
            .collect();
        let response = self
            .helper
            .aggregate(&AggregateRequest {
                batch: batch_id.clone(),
                reports,
            })
            .await?;
        if response.outcomes.len() != checked.len() {
            return Err(internal(format!(
                "helper answered {} outcomes for {} reports",
                response.outcomes.len(),
                checked.len()
            )));
        }
        let mut outputs = Vec::new();
        let mut accepted: Vec<&Checked<'_>> = Vec::new();
        for (c, outcome) in checked.iter().zip(response.outcomes) {
            let node = c.meta.node_id.clone();
            match outcome {
                ReportOutcome::Verified {
                    node_id,
                    verifier_message,
                } if node_id == node => {
                    let finished = unhex("verifier message", &verifier_message)
                        .and_then(|m| shape.leader_finish(c.state.clone(), &m));
                    match finished {
                        Ok(out) => {
                            outputs.push(out);
                            accepted.push(c);
                        }
                        Err(e) => excluded.push(Excluded {
                            node,
                            reason: format!("verification failed at the coordinator: {e}"),
                        }),
                    }
                }
                ReportOutcome::Verified { node_id, .. } => {
                    return Err(internal(format!(
                        "helper's outcome for {node} names {node_id}"
                    )));
                }
                ReportOutcome::Rejected { node_id, reason } if node_id == node => {
                    excluded.push(Excluded {
                        node,
                        reason: format!("rejected by the helper: {reason}"),
                    });
                }
                ReportOutcome::Rejected { node_id, .. } => {
                    return Err(internal(format!(
                        "helper's outcome for {node} names {node_id}"
                    )));
                }
            }
        }
        if (accepted.len() as u32) < request.honest() {
            return Err(too_few(accepted.len(), &excluded));
        }
        let collected = self
            .helper
            .collect(&CollectRequest {
                batch: batch_id,
                nodes: accepted.iter().map(|c| c.meta.node_id.clone()).collect(),
            })
            .await?;
        if collected.count != accepted.len() {
            return Err(internal(format!(
                "helper collected {} reports, the coordinator verified {}",
                collected.count,
                accepted.len()
            )));
        }
        let helper_share = unhex("aggregate share", &collected.aggregate_share)
            .and_then(|b| shape.decode_aggregate_share(&b))
            .map_err(internal)?;
        let leader_share = shape.aggregate(outputs).map_err(internal)?;
        let sums = shape
            .unshard(leader_share, helper_share, accepted.len())
            .map_err(internal)?;
        let sums = shape.decode_sum(&sums, accepted.len());

        let cells = keys.len();
        let mut out: Vec<(Vec<String>, BTreeMap<String, CellSum>)> =
            keys.iter().map(|k| (k.clone(), BTreeMap::new())).collect();
        for (i, name) in measures.iter().enumerate() {
            let variance: f64 = accepted.iter().map(|c| c.meta.measures[i].variance).sum();
            let gamma = granularity[i] as f64;
            for (cell, (_, m)) in out.iter_mut().enumerate() {
                let sum = sums[i * cells + cell];
                m.insert(
                    name.clone(),
                    CellSum {
                        value: sum as f64 / gamma,
                        variance,
                    },
                );
            }
        }
        let first = accepted
            .first()
            .map(|c| c.meta)
            .ok_or_else(|| internal("no report"))?;
        Ok((
            BaseResult {
                indicator: first.indicator.clone(),
                quarter: first.period.to_string(),
                group_columns: first.group_columns.clone(),
                cells: out,
                providers_reporting: accepted.len(),
                providers_total: request.nodes as usize,
            },
            excluded,
        ))
    }

    /// One answer against the run; the first valid one fixes the report shape and public keys.
    fn check<'a>(
        &self,
        expected: &Expected<'_>,
        batch: &'a RecordBatch,
        meta: &'a AnswerMeta,
        shape: &mut Option<BatchShape>,
    ) -> Result<Checked<'a>, String> {
        let shares = meta
            .secure
            .as_ref()
            .ok_or("answered with per-node noise to a secure request")?;
        let b = &shares.binding;
        if b.node_id != meta.node_id {
            return Err(format!("report is labelled as node {}", b.node_id));
        }
        if b.indicator != expected.indicator
            || b.content_hash != expected.content_hash
            || b.period.to_string() != expected.quarter
            || meta.indicator != expected.indicator
            || meta.period.to_string() != expected.quarter
        {
            return Err(format!(
                "report is for {} ({}) {}, the run asked {} ({}) {}",
                b.indicator,
                b.content_hash,
                b.period,
                expected.indicator,
                expected.content_hash,
                expected.quarter
            ));
        }
        if b.nodes != expected.request.nodes || b.max_missing != expected.request.max_missing {
            return Err(format!(
                "report's noise share is for n = {}, t = {}; the run has n = {}, t = {}",
                b.nodes, b.max_missing, expected.request.nodes, expected.request.max_missing
            ));
        }
        if meta.measures.len() != shares.measures.len()
            || b.granularity.len() != meta.measures.len()
        {
            return Err("report's measures do not match its noise facts".into());
        }
        let keys = keys_of(batch, &meta.group_columns)?;
        let names: Vec<String> = meta.measures.iter().map(|m| m.column.clone()).collect();
        if b.length as usize != keys.len() * names.len() {
            return Err(format!(
                "report has {} entries for {} cells × {} measures",
                b.length,
                keys.len(),
                names.len()
            ));
        }
        if let Some(BatchShape {
            shape: s,
            granularity: g,
            measures: n,
            keys: k,
        }) = shape.as_ref()
        {
            if s.bits != b.bits || s.length != b.length as usize || *g != b.granularity {
                return Err(format!(
                    "report shape ({} bits, {} entries, granularity {:?}) differs from the other reports' ({} bits, {} entries, {:?})",
                    b.bits, b.length, b.granularity, s.bits, s.length, g
                ));
            }
            if *n != names || *k != keys {
                return Err(
                    "report's measures or public keys differ from the other reports'".into(),
                );
            }
        }
        let candidate = match shape.as_ref() {
            Some(fixed) => fixed.shape.clone(),
            None => Shape::new(b.bits, b.length as usize).map_err(|e| e.to_string())?,
        };
        let nonce = parse_nonce(&b.nonce).map_err(|e| e.to_string())?;
        let public = unhex("public share", &shares.public_share).map_err(|e| e.to_string())?;
        let leader = unhex("leader share", &shares.leader_share).map_err(|e| e.to_string())?;
        let (state, verifier_share) = candidate
            .leader_init(&self.verify_key, &nonce, &public, &leader)
            .map_err(|e| format!("verification failed at the coordinator: {e}"))?;
        if shape.is_none() {
            *shape = Some(BatchShape {
                shape: candidate,
                granularity: b.granularity.clone(),
                measures: names,
                keys,
            });
        }
        Ok(Checked {
            meta,
            shares,
            state,
            verifier_share,
        })
    }
}
