//! One release, start to finish: check the request against the node's own policy, compute the
//! bounded cells, record the spend durably, add noise, store the answer, hand it out. Identical
//! requests (same indicator content, period and data snapshot) get the stored answer back.

use crate::Node;
use crate::evaluate::{self, Bounding, EvalError};
use crate::ledger::{Entry, LedgerError, NewRelease};
use crate::metrics::Metrics;
use crate::noise::{self, NoiseError};
use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use policies::sensitivity::Measure;
use policies::wire::{
    self, AnswerMeta, EvaluateRequest, MeasureNoise, ReportBinding, SecureRequest,
};
use policies::{Indicator, Period};
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("unknown indicator '{0}': it is not in this node's approved catalog")]
    UnknownIndicator(String),
    #[error("indicator '{0}' is derived from other indicators; ask for those instead")]
    Derived(String),
    #[error("indicator '{id}' has content hash {found} here; the request expects {expected}")]
    HashMismatch {
        id: String,
        expected: String,
        found: String,
    },
    #[error("period {period} lies outside the data this node holds ({coverage})")]
    PeriodOutsideData { period: String, coverage: String },
    #[error(
        "indicator '{id}' is published per calendar year only; period {period} is not a run of whole years (YYYYQ1:YYYYQ4)"
    )]
    AnnualOnly { id: String, period: String },
    #[error(transparent)]
    Budget(LedgerError),
    #[error(transparent)]
    Ledger(LedgerError),
    #[error("evaluation failed: {0}")]
    Eval(#[from] EvalError),
    #[error("noise: {0}")]
    Noise(#[from] NoiseError),
    #[error(transparent)]
    Refused(#[from] crate::governance::Refusal),
    #[error("secure aggregation: {0}")]
    Secure(#[from] crate::secure::SecureError),
    /// The records could not be read (the database went away, or its data no longer matches
    /// the data model): nothing was spent.
    #[error("the records cannot be read: {0}")]
    Data(#[from] crate::tables::DataError),
    #[error("internal: {0}")]
    Internal(String),
}

impl ReleaseError {
    /// What a caller is told. Failures that can carry something read from the records (an
    /// evaluation error naming a value, a database error quoting a row, an encoding error naming
    /// an entry) say only what failed; the node's log and audit keep the detail for its operator.
    pub fn public_message(&self) -> String {
        const SEE_LOG: &str =
            "the detail is in this node's log and audit for its operator, not in this answer";
        match self {
            ReleaseError::Eval(_) => format!("the evaluation failed; {SEE_LOG}"),
            ReleaseError::Data(_) => format!("the records cannot be read right now; {SEE_LOG}"),
            ReleaseError::Internal(_) => format!("an internal error occurred; {SEE_LOG}"),
            ReleaseError::Secure(e) if !e.is_refusal() => {
                format!("the secure report could not be made; {SEE_LOG}")
            }
            ReleaseError::UnknownIndicator(_)
            | ReleaseError::Derived(_)
            | ReleaseError::HashMismatch { .. }
            | ReleaseError::PeriodOutsideData { .. }
            | ReleaseError::AnnualOnly { .. }
            | ReleaseError::Budget(_)
            | ReleaseError::Ledger(_)
            | ReleaseError::Noise(_)
            | ReleaseError::Refused(_)
            | ReleaseError::Secure(_) => self.to_string(),
        }
    }

    /// Stable machine-readable code for the error body.
    pub fn code(&self) -> &'static str {
        match self {
            ReleaseError::UnknownIndicator(_) => "unknown_indicator",
            ReleaseError::Derived(_) => "derived_indicator",
            ReleaseError::HashMismatch { .. } => "content_hash_mismatch",
            ReleaseError::PeriodOutsideData { .. } => "period_outside_data",
            ReleaseError::AnnualOnly { .. } => "annual_only",
            ReleaseError::Budget(_) => "budget_exhausted",
            ReleaseError::Ledger(_) => "ledger_error",
            ReleaseError::Eval(_) => "evaluation_failed",
            ReleaseError::Noise(_) => "noise_failed",
            ReleaseError::Refused(r) => r.code(),
            ReleaseError::Secure(e) => e.code(),
            ReleaseError::Data(_) => "data_unavailable",
            ReleaseError::Internal(_) => "internal",
        }
    }
}

pub struct Released {
    pub bytes: Vec<u8>,
    pub replayed: bool,
}

/// The identity of a release: indicator content, period and data snapshot, and for a secure
/// release the run size its noise share was drawn for (per-node keys are unchanged by it).
pub fn release_key(
    ind: &Indicator,
    period: &Period,
    snapshot: &str,
    secure: Option<&SecureRequest>,
) -> String {
    let mut h = Sha256::new();
    // A named helper key is part of the release (the report is sealed to it); requests naming
    // none keep the key they always had.
    let secure_part = secure.map(|s| {
        let key = s
            .helper_key_id
            .map(|id| format!(" key={id}"))
            .unwrap_or_default();
        format!(
            "secure n={} t={} bits={}{key}",
            s.nodes, s.max_missing, s.bits
        )
    });
    for part in [
        ind.id.as_str(),
        ind.content_hash.as_str(),
        &period.to_string(),
        snapshot,
    ]
    .into_iter()
    .chain(secure_part.as_deref())
    {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

async fn ledger_call<T: Send + 'static>(
    node: &Arc<Node>,
    f: impl FnOnce(&mut crate::ledger::Ledger) -> Result<T, LedgerError> + Send + 'static,
) -> Result<T, ReleaseError> {
    let node = node.clone();
    tokio::task::spawn_blocking(move || {
        let mut l = node
            .ledger
            .lock()
            .map_err(|_| ReleaseError::Internal("ledger lock poisoned".into()))?;
        f(&mut l).map_err(|e| match e {
            e @ LedgerError::Exhausted { .. } => ReleaseError::Budget(e),
            e @ (LedgerError::Sql { .. }
            | LedgerError::Newer { .. }
            | LedgerError::Unmigratable { .. }
            | LedgerError::SnapshotKey { .. }) => ReleaseError::Ledger(e),
        })
    })
    .await
    .map_err(|e| ReleaseError::Internal(e.to_string()))?
}

pub async fn evaluate(node: &Arc<Node>, req: &EvaluateRequest) -> Result<Released, ReleaseError> {
    let result = evaluate_inner(node, req).await;
    let m = &node.metrics;
    match &result {
        Ok(r) if r.replayed => Metrics::inc(&m.replayed),
        Ok(_) => Metrics::inc(&m.released),
        Err(ReleaseError::Budget(_)) => Metrics::inc(&m.refused_budget),
        Err(
            ReleaseError::UnknownIndicator(_)
            | ReleaseError::Derived(_)
            | ReleaseError::HashMismatch { .. }
            | ReleaseError::PeriodOutsideData { .. }
            | ReleaseError::AnnualOnly { .. }
            | ReleaseError::Refused(_),
        ) => Metrics::inc(&m.rejected),
        Err(ReleaseError::Secure(e)) if e.is_refusal() => Metrics::inc(&m.rejected),
        Err(_) => Metrics::inc(&m.failed),
    }
    result
}

/// The indicator a request names, from the local catalog or else from the signed catalog
/// (fetched anew when the request names a newer version or an indicator not seen yet), after
/// the operator's local policy allows it.
pub async fn resolve(node: &Arc<Node>, req: &EvaluateRequest) -> Result<Indicator, ReleaseError> {
    let gov = &node.config.governance;
    let (ind, fetched) = match node.catalog.get(&req.indicator) {
        Some(ind) => (ind.clone(), false),
        None if gov.coordinator_url.is_none() => {
            return Err(ReleaseError::UnknownIndicator(req.indicator.clone()));
        }
        None => {
            let mut state = node.fetched.lock().await;
            let known = state.accepted.contains_key(&req.indicator)
                || state.refused.contains_key(&req.indicator);
            let newer = req.catalog_version.is_some_and(|v| v > state.version);
            if !known || newer {
                let ca = node.config.tls.client_ca.clone().unwrap_or_default();
                let version = crate::governance::fetch(gov, &ca).await?;
                *state = crate::governance::verify_catalog(
                    &version,
                    gov,
                    &*node.tables().await?,
                    &node.config.data.coverage,
                )
                .await;
                tracing::info!(
                    version = state.version,
                    verified = state.accepted.len(),
                    refused = state.refused.len(),
                    "signed catalog fetched"
                );
            }
            if let Some(r) = state.refused.get(&req.indicator) {
                return Err(r.clone().into());
            }
            let ind = state
                .accepted
                .get(&req.indicator)
                .cloned()
                .ok_or_else(|| ReleaseError::UnknownIndicator(req.indicator.clone()))?;
            (ind, true)
        }
    };
    let accepted = if fetched && gov.require_acceptance {
        let (id, hash) = (ind.id.clone(), ind.content_hash.clone());
        ledger_call(node, move |l| l.is_accepted(&id, &hash)).await?
    } else {
        false
    };
    crate::governance::local_policy(gov, &ind, fetched, || accepted)?;
    Ok(ind)
}

async fn evaluate_inner(node: &Arc<Node>, req: &EvaluateRequest) -> Result<Released, ReleaseError> {
    let ind = resolve(node, req).await?;
    let query = ind
        .query()
        .ok_or_else(|| ReleaseError::Derived(ind.id.clone()))?
        .clone();
    if let Some(expected) = &req.content_hash
        && expected != &ind.content_hash
    {
        return Err(ReleaseError::HashMismatch {
            id: ind.id.clone(),
            expected: expected.clone(),
            found: ind.content_hash.clone(),
        });
    }
    if query.time_grain() == policies::TimeGrain::Year
        && !(req.period.first.q == 1 && req.period.last.q == 4)
    {
        return Err(ReleaseError::AnnualOnly {
            id: ind.id.clone(),
            period: req.period.to_string(),
        });
    }
    let coverage = node.config.data.coverage;
    if !coverage.contains(&req.period) {
        return Err(ReleaseError::PeriodOutsideData {
            period: req.period.to_string(),
            coverage: coverage.to_string(),
        });
    }
    // A secure request is checked and its noise shares planned from public facts alone (the
    // public key set, the measures' bounds, secure.max_units) before any record is read.
    let measures = query.measures(req.period.quarters().len());
    let secure = match &req.secure {
        Some(s) => {
            let (_, public_keys) = policies::catalog::public_keys(&query, &req.period);
            // Planning is CPU work (bounded: the floors refuse an absurd n before it starts):
            // off the async workers, so no request can stall the node's other connections.
            let (id, cfg, configured, request, ms, dim) = (
                ind.id.clone(),
                node.config.secure.clone(),
                node.secure.as_ref().map(|k| k.helper_key_ids()),
                *s,
                measures.clone(),
                public_keys.len(),
            );
            Some(
                tokio::task::spawn_blocking(move || {
                    crate::secure::prepare(&id, &cfg, configured.as_deref(), &request, &ms, dim)
                })
                .await
                .map_err(|e| ReleaseError::Internal(e.to_string()))??,
            )
        }
        None => None,
    };
    // The rows this release reads, and their identity: a changed row is another release.
    let tables = node.tables().await?;
    let snapshot = node.snapshot_id(&tables.snapshot);
    let key = release_key(&ind, &req.period, &snapshot, req.secure.as_ref());
    // Releases made before ledger version 3 are keyed by the plain digest; they replay as made.
    let legacy_key = release_key(&ind, &req.period, &tables.snapshot, req.secure.as_ref());

    // One computation per release key at a time: two concurrent identical requests must not draw
    // two independent noises.
    let key_lock = node.key_lock(&key).await;
    let _guard = key_lock.lock().await;

    let k = key.clone();
    let stored = ledger_call(node, move |l| match l.lookup(&k)? {
        Some(found) => Ok(Some(found)),
        None => l.lookup(&legacy_key),
    })
    .await?;
    if let Some(Entry::Released { answer }) = stored {
        return Ok(Released {
            bytes: answer,
            replayed: true,
        });
    }

    let rho = query.cost.rho();
    let quarters = req.period.quarters();
    let budget_period =
        crate::ledger::charged_periods(node.config.budget.period, &quarters).join(",");
    {
        let new = OwnedRelease {
            key: key.clone(),
            quarters,
            budget_period: budget_period.clone(),
            indicator: ind.id.clone(),
            content_hash: ind.content_hash.clone(),
            period: req.period.to_string(),
            snapshot: snapshot.clone(),
            rho,
        };
        let rule = node.budget_rule();
        // An existing reservation (a crash came between spend and answer) is already paid for:
        // no answer left the node, so one fresh release under it is still a single release.
        ledger_call(node, move |l| l.reserve(&new.as_new(), &rule)).await?;
    }
    tracing::info!(indicator = %ind.id, period = %req.period, rho, "spend recorded");
    if let Some(ms) = node.config.testing.pause_after_spend_ms {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }

    // The records are read only now, after the charge: whatever happens from here on is paid
    // for, and a failure is answered without its detail (see [`ReleaseError::public_message`]).
    if let Some(message) = &node.config.testing.fail_evaluation_with {
        return Err(EvalError::Engine(message.clone()).into());
    }
    let cells = evaluate::cells(&tables, &query, &req.period, Bounding::Bounded).await?;

    let stamp = Stamp {
        node_id: &node.config.node_id,
        snapshot: &snapshot,
        budget_period,
        released_at: node.clock.now().to_rfc3339(),
    };
    let bytes = match secure {
        Some(prepared) => {
            secure_answer(node, &stamp, &ind, &query, &req.period, &cells, prepared).await?
        }
        None => noisy_answer(&stamp, &ind, &query, &req.period, &cells, &measures).await?,
    };
    let stored = bytes.clone();
    let k = key.clone();
    ledger_call(node, move |l| l.complete(&k, &stored)).await?;
    Ok(Released {
        bytes,
        replayed: false,
    })
}

/// OpenDP noise for every measure's cells, off the async threads.
async fn draw_noise(
    measures: &[Measure],
    cells: &evaluate::Cells,
) -> Result<Vec<Vec<i64>>, ReleaseError> {
    let measures = measures.to_vec();
    let cells = cells.clone();
    Ok(
        tokio::task::spawn_blocking(move || noise::noisy_measures(&measures, &cells))
            .await
            .map_err(|e| ReleaseError::Internal(e.to_string()))??,
    )
}

/// What an answer's metadata takes from the answering node rather than from the indicator.
struct Stamp<'a> {
    node_id: &'a str,
    snapshot: &'a str,
    budget_period: String,
    released_at: String,
}

/// Noise drawn over the bounded cells, encoded as the Arrow IPC answer a node sends. The one
/// path for real releases and dry runs alike.
async fn noisy_answer(
    stamp: &Stamp<'_>,
    ind: &Indicator,
    query: &policies::Query,
    period: &Period,
    cells: &evaluate::Cells,
    measures: &[Measure],
) -> Result<Vec<u8>, ReleaseError> {
    let noisy = draw_noise(measures, cells).await?;
    let meta = AnswerMeta {
        node_id: stamp.node_id.to_string(),
        indicator: ind.id.clone(),
        content_hash: ind.content_hash.clone(),
        period: *period,
        snapshot: stamp.snapshot.to_string(),
        release_key: release_key(ind, period, stamp.snapshot, None),
        aggregate: query.aggregate.kind().to_string(),
        group_columns: cells.group_columns.clone(),
        measures: measures.iter().map(noise_meta).collect(),
        rho: query.cost.rho(),
        budget_period: stamp.budget_period.clone(),
        released_at: stamp.released_at.clone(),
        secure: None,
    };
    let batch = answer_batch(cells, measures, &noisy)?;
    wire::Answer { batch, meta }
        .encode()
        .map_err(|e| ReleaseError::Internal(e.to_string()))
}

/// The secure answer: the public keys, the noise shares' public facts and the signed report.
async fn secure_answer(
    node: &Arc<Node>,
    stamp: &Stamp<'_>,
    ind: &Indicator,
    query: &policies::Query,
    period: &Period,
    cells: &evaluate::Cells,
    prepared: crate::secure::Prepared,
) -> Result<Vec<u8>, ReleaseError> {
    let nonce = secagg::vdaf::random_bytes::<{ secagg::vdaf::NONCE_LEN }>()
        .map_err(|e| ReleaseError::Internal(e.to_string()))?;
    let release_key = release_key(ind, period, stamp.snapshot, Some(&prepared.request));
    let binding = ReportBinding {
        node_id: stamp.node_id.to_string(),
        indicator: ind.id.clone(),
        content_hash: ind.content_hash.clone(),
        period: *period,
        release_key: release_key.clone(),
        // The rest is filled in from the plan.
        nodes: 0,
        max_missing: 0,
        bits: 0,
        length: 0,
        granularity: Vec::new(),
        nonce: hex::encode(nonce),
        created_at: node.clock.now().timestamp(),
        helper_key_id: None,
    };
    let (n, c) = (node.clone(), cells.clone());
    let answer = tokio::task::spawn_blocking(move || {
        let keys = n
            .secure
            .as_ref()
            .ok_or(crate::secure::SecureError::NotConfigured)?;
        crate::secure::answer(
            &prepared,
            keys,
            binding,
            &c,
            n.config.secure.max_local_rho,
            n.config.testing.corrupt_secure_report,
        )
    })
    .await
    .map_err(|e| ReleaseError::Internal(e.to_string()))??;
    let meta = AnswerMeta {
        node_id: stamp.node_id.to_string(),
        indicator: ind.id.clone(),
        content_hash: ind.content_hash.clone(),
        period: *period,
        snapshot: stamp.snapshot.to_string(),
        release_key,
        aggregate: query.aggregate.kind().to_string(),
        group_columns: cells.group_columns.clone(),
        measures: answer.measures,
        rho: query.cost.rho(),
        budget_period: stamp.budget_period.clone(),
        released_at: stamp.released_at.clone(),
        secure: Some(answer.shares),
    };
    let batch = answer_batch(cells, &[], &[])?;
    wire::Answer { batch, meta }
        .encode()
        .map_err(|e| ReleaseError::Internal(e.to_string()))
}

/// A noisy answer drawn outside any ledger, for dry runs on synthetic records only: the same
/// bounding, noise and encoding as a release, with budget period `sandbox`.
pub async fn sandbox_answer(
    node_id: &str,
    tables: &crate::tables::Tables,
    ind: &Indicator,
    period: &Period,
) -> Result<Vec<u8>, ReleaseError> {
    let query = ind
        .query()
        .ok_or_else(|| ReleaseError::Derived(ind.id.clone()))?;
    let cells = evaluate::cells(tables, query, period, Bounding::Bounded).await?;
    let measures = query.measures(period.quarters().len());
    let stamp = Stamp {
        node_id,
        snapshot: &tables.snapshot,
        budget_period: "sandbox".into(),
        released_at: chrono::Utc::now().to_rfc3339(),
    };
    noisy_answer(&stamp, ind, query, period, &cells, &measures).await
}

struct OwnedRelease {
    key: String,
    quarters: Vec<policies::Quarter>,
    budget_period: String,
    indicator: String,
    content_hash: String,
    period: String,
    snapshot: String,
    rho: f64,
}

impl OwnedRelease {
    fn as_new(&self) -> NewRelease<'_> {
        NewRelease {
            key: &self.key,
            quarters: &self.quarters,
            budget_period: &self.budget_period,
            indicator: &self.indicator,
            content_hash: &self.content_hash,
            period: &self.period,
            snapshot: &self.snapshot,
            rho: self.rho,
        }
    }
}

pub fn noise_meta(m: &Measure) -> MeasureNoise {
    MeasureNoise {
        column: m.name.clone(),
        mechanism: m.mechanism().to_string(),
        scale: m.scale(),
        variance: m.variance(),
        per_cell_bound: m.per_cell,
        cells_per_unit: m.cells_per_unit,
        l1_bound: m.l1(),
        l2_bound: m.l2(),
    }
}

/// Group columns, then per measure its noisy integers and the (public) noise scale of each cell.
pub fn answer_batch(
    cells: &evaluate::Cells,
    measures: &[Measure],
    noisy: &[Vec<i64>],
) -> Result<RecordBatch, ReleaseError> {
    let mut fields = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    for (i, name) in cells.group_columns.iter().enumerate() {
        fields.push(Field::new(name, DataType::Utf8, false));
        cols.push(Arc::new(StringArray::from_iter_values(
            cells.keys.iter().map(|k| k[i].as_str()),
        )));
    }
    for (m, values) in measures.iter().zip(noisy) {
        fields.push(Field::new(&m.name, DataType::Int64, false));
        cols.push(Arc::new(Int64Array::from(values.clone())));
        fields.push(Field::new(
            format!("{}_scale", m.name),
            DataType::Float64,
            false,
        ));
        cols.push(Arc::new(Float64Array::from(vec![m.scale(); values.len()])));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
        .map_err(|e| ReleaseError::Internal(e.to_string()))
}
