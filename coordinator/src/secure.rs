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
use policies::sensitivity::MeasureCost;
use policies::wire::{Answer, AnswerMeta, Protection, SecureRequest, SecureShares};
use policies::{Indicator, Period};
use secagg::accounting;
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

/// The narrowest entry width that holds every measure of `base` over `period` for a node of up
/// to `max_units` units with its noise share when `honest` = n − t shares are counted on: the
/// same public computation each node makes (`node::secure::prepare`), so a node with the same
/// bound accepts the width, and a cheating node can move a national cell by no more than it.
/// Falls back to the widest entry when no width holds it (the nodes then refuse, naming why).
/// Shares are planned at the nodes' default ceiling on their own ρ (which can only widen σ); a
/// node with a lower ceiling of its own may need a wider entry and says so (`[secure] bits`).
pub fn planned_bits(base: &Indicator, period: &Period, honest: u32, max_units: u64) -> u32 {
    let Some(query) = base.query() else {
        return secagg::vdaf::MAX_BITS;
    };
    let (_, keys) = policies::catalog::public_keys(query, period);
    let mut bits = 2;
    for m in query.measures(period.quarters().len()) {
        let MeasureCost::Rho(rho) = m.cost else {
            continue;
        };
        let needed = accounting::plan(
            m.l1(),
            m.l2(),
            keys.len() as u64,
            rho,
            honest as u64,
            Some(secagg::floors::DEFAULT_MAX_LOCAL_RHO),
        )
        .ok()
        .and_then(|plan| {
            let bound = accounting::cell_bound(m.per_cell, max_units);
            accounting::entry_bits(bound, &plan, secagg::vdaf::MAX_BITS)
        })
        .unwrap_or(secagg::vdaf::MAX_BITS);
        bits = bits.max(needed);
    }
    bits
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
    /// Reports made outside it are excluded before the helper sees them.
    pub window: secagg::window::ReportWindow,
}

/// What every report of the batch must agree on, from the run and the first valid report.
struct Expected<'a> {
    indicator: &'a str,
    content_hash: &'a str,
    quarter: &'a str,
    request: SecureRequest,
    /// Now, by the coordinator's clock (Unix seconds).
    now: i64,
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

/// The shares of a secret-shared answer; a node-noise answer to a secure request is refused, so
/// a secure run never quietly becomes a per-node-noise one.
fn secret_shares(answer: &Answer) -> Result<&SecureShares, String> {
    match answer.protection() {
        Protection::SecretShared(shares) => Ok(shares),
        Protection::NodeNoise(_) => Err("answered with per-node noise to a secure request".into()),
    }
}

impl SecureAggregator {
    /// The batch a set of reports forms: the run's public parameters and each report's identity.
    /// The same reports make the same batch (a resumed or repeated run collects it again and gets
    /// the same sums); reports the helper saw in another batch are refused there.
    /// Reports are taken in node order, so answers arriving (or read back) in another order
    /// make the same batch.
    pub fn batch_id(expected_parts: &[&str], reports: &[(&str, &str)]) -> String {
        let mut reports = reports.to_vec();
        reports.sort_unstable();
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

    /// What every honest report of the batch looks like, from public facts alone: the entry
    /// width the run asked, the public key set, the measures and each measure's granularity
    /// (which every node derives from the same public numbers). A report that differs is
    /// excluded; no report can set the shape for the others.
    fn expected_shape(
        base: &Indicator,
        quarter: &Period,
        request: &SecureRequest,
    ) -> Result<BatchShape, SecureError> {
        let query = base
            .query()
            .ok_or_else(|| internal(format!("{} is not a base indicator", base.id)))?;
        let (_, keys) = policies::catalog::public_keys(query, quarter);
        let measures = query.measures(1);
        let mut granularity = Vec::with_capacity(measures.len());
        for m in &measures {
            let MeasureCost::Rho(rho) = m.cost else {
                return Err(internal(format!(
                    "{}: secure aggregation needs a ρ cost",
                    base.id
                )));
            };
            let plan = accounting::plan(
                m.l1(),
                m.l2(),
                keys.len() as u64,
                rho,
                request.honest() as u64,
                None,
            )
            .map_err(internal)?;
            granularity.push(plan.granularity);
        }
        let shape = Shape::new(request.bits, keys.len() * measures.len()).map_err(internal)?;
        Ok(BatchShape {
            shape,
            granularity,
            measures: measures.into_iter().map(|m| m.name).collect(),
            keys,
        })
    }

    /// National sums of one base indicator for one quarter from the nodes' secure answers; the
    /// nodes were asked with `request`. `now` (Unix seconds) judges the reports' age.
    pub async fn combine(
        &self,
        base: &Indicator,
        quarter: Period,
        request: SecureRequest,
        answers: &[Answer],
        now: i64,
    ) -> Result<(BaseResult, Vec<Excluded>), SecureError> {
        let quarter_text = quarter.to_string();
        let (indicator, content_hash, quarter) = (
            base.id.as_str(),
            base.content_hash.as_str(),
            quarter_text.as_str(),
        );
        let expected = Expected {
            indicator,
            content_hash,
            quarter,
            request,
            now,
        };
        let batch_shape =
            Self::expected_shape(base, &quarter_text.parse().map_err(internal)?, &request)?;
        let mut excluded = Vec::new();
        let mut checked: Vec<Checked<'_>> = Vec::new();
        // The leader's share of verification is per report: spread over the cores.
        let verdicts = secagg::parallel::map(answers, |answer| {
            self.check(&expected, answer, &batch_shape)
        });
        for (Answer { meta, .. }, verdict) in answers.iter().zip(verdicts) {
            match verdict {
                Ok(c) => checked.push(c),
                Err(reason) => excluded.push(Excluded {
                    node: meta.node_id.clone(),
                    reason,
                }),
            }
        }
        // One order for everything the helper sees, whatever order the answers came in.
        checked.sort_by(|a, b| a.meta.node_id.cmp(&b.meta.node_id));
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
        let BatchShape {
            shape,
            granularity,
            measures,
            keys,
        } = &batch_shape;
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

    /// One answer against the run and the batch's expected shape.
    fn check<'a>(
        &self,
        expected: &Expected<'_>,
        answer: &'a Answer,
        shape: &BatchShape,
    ) -> Result<Checked<'a>, String> {
        let (batch, meta) = (&answer.batch, &answer.meta);
        let shares = secret_shares(answer)?;
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
        self.window
            .check(b.created_at, expected.now)
            .map_err(|e| e.to_string())?;
        if meta.measures.len() != shares.measures.len()
            || b.granularity.len() != meta.measures.len()
        {
            return Err("report's measures do not match its noise facts".into());
        }
        let keys = keys_of(batch, &meta.group_columns)?;
        let names: Vec<String> = meta.measures.iter().map(|m| m.column.clone()).collect();
        if shape.shape.bits != b.bits
            || shape.shape.length != b.length as usize
            || shape.granularity != b.granularity
        {
            return Err(format!(
                "report shape ({} bits, {} entries, granularity {:?}) is not the run's ({} bits, {} entries, granularity {:?})",
                b.bits,
                b.length,
                b.granularity,
                shape.shape.bits,
                shape.shape.length,
                shape.granularity
            ));
        }
        if shape.measures != names || shape.keys != keys {
            return Err("report's measures or public keys are not the indicator's".into());
        }
        let nonce = parse_nonce(&b.nonce).map_err(|e| e.to_string())?;
        let public = unhex("public share", &shares.public_share).map_err(|e| e.to_string())?;
        let leader = unhex("leader share", &shares.leader_share).map_err(|e| e.to_string())?;
        let (state, verifier_share) = shape
            .shape
            .leader_init(&self.verify_key, &nonce, &public, &leader)
            .map_err(|e| format!("verification failed at the coordinator: {e}"))?;
        Ok(Checked {
            meta,
            shares,
            state,
            verifier_share,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{SecureAggregator, planned_bits, secret_shares};
    use policies::wire::testing::{noisy_answer, secret_shared};
    use secagg::vdaf::{NONCE_LEN, Shape, VERIFY_KEY_LEN, random_bytes};

    #[tokio::test]
    async fn the_planned_width_holds_the_public_bound_and_nothing_beyond_verifies() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/catalog");
        let catalog = policies::Catalog::load(&dir).await.expect("catalog");
        let base = catalog.get("seclusion.count").expect("indicator");
        let quarter: policies::Period = "2024Q1".parse().expect("period");
        let bits = planned_bits(base, &quarter, 11, 1_000);
        // 1,000 youths of at most 12 seclusions each (the catalog's bound) plus noise: far fewer
        // than the 32 bits every report used before, and more than the bound alone needs.
        assert!(bits < 32, "{bits}");
        assert!(2f64.powi(bits as i32 - 1) > 12_000.0, "{bits}");
        assert!(planned_bits(base, &quarter, 11, 1_000_000) > bits);
        // A report that proves wider entries than the run's, to add more than the public range
        // to a national cell, fails verification at the run's width.
        let run = Shape::new(bits, 1).expect("shape");
        let cheat = Shape::new(bits + 8, 1).expect("shape");
        let key = random_bytes::<VERIFY_KEY_LEN>().expect("key");
        let nonce = random_bytes::<NONCE_LEN>().expect("nonce");
        let beyond = 1i64 << bits;
        let s = cheat.shard(&[beyond], &nonce).expect("shard");
        let verified = run
            .leader_init(&key, &nonce, &s.public_share, &s.leader_share)
            .and_then(|(_, vs)| {
                run.helper_verify(&key, &nonce, &s.public_share, &s.helper_share, &vs)
            });
        assert!(
            verified.is_err(),
            "an entry of {beyond} verified at {bits} bits"
        );
        // ... and the run's own width refuses to encode it at all.
        assert!(run.shard(&[beyond], &nonce).is_err());
    }

    #[test]
    fn a_node_noise_answer_to_a_secure_request_is_refused() {
        let noisy = noisy_answer("P01", &["a"], &[3], 4.0);
        let err = secret_shares(&noisy).expect_err("refused");
        assert!(err.contains("per-node noise"), "{err}");
        let shared = secret_shared(noisy);
        assert_eq!(
            secret_shares(&shared).expect("shares").binding.node_id,
            "P01"
        );
    }

    #[test]
    fn a_batch_does_not_depend_on_the_order_its_reports_arrive_in() {
        let parts = ["measures.youths_by_type", "hash", "2024Q1", "3", "0"];
        let in_order = [("P01", "n1"), ("P10", "n2"), ("P100", "n3")];
        let arrived = [("P100", "n3"), ("P01", "n1"), ("P10", "n2")];
        assert_eq!(
            SecureAggregator::batch_id(&parts, &in_order),
            SecureAggregator::batch_id(&parts, &arrived)
        );
        // Another set of reports, or another nonce, is another batch.
        assert_ne!(
            SecureAggregator::batch_id(&parts, &in_order),
            SecureAggregator::batch_id(&parts, &in_order[..2])
        );
        assert_ne!(
            SecureAggregator::batch_id(&parts, &in_order),
            SecureAggregator::batch_id(&parts, &[("P01", "n1"), ("P10", "n2"), ("P100", "n4")])
        );
    }
}
