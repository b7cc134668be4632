//! What travels between coordinator and node. Answers are Arrow IPC streams; the public facts about
//! an answer (noise scales, spend) ride along in the schema metadata under [`ANSWER_METADATA_KEY`].

use crate::period::Period;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

pub const ARROW_STREAM_MIME: &str = "application/vnd.apache.arrow.stream";
pub const ANSWER_METADATA_KEY: &str = "stroom.answer";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateRequest {
    pub indicator: String,
    pub period: Period,
    /// The content hash the caller expects; a node refuses when its own copy differs.
    #[serde(default)]
    pub content_hash: Option<String>,
    /// The signed catalog version the caller knows; a node behind it fetches the newer one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_version: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasureNoise {
    /// Column of the answer holding this measure's noisy integers.
    pub column: String,
    pub mechanism: String,
    /// σ of the discrete Gaussian, or b of the discrete Laplace: public and data-independent.
    pub scale: f64,
    pub variance: f64,
    pub per_cell_bound: i64,
    pub cells_per_unit: i64,
    pub l1_bound: i64,
    pub l2_bound: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerMeta {
    pub node_id: String,
    pub indicator: String,
    pub content_hash: String,
    pub period: Period,
    pub snapshot: String,
    /// Identity of the release: same key, same stored answer.
    pub release_key: String,
    pub aggregate: String,
    /// Group columns of the answer, in order (histograms end with `bin`).
    pub group_columns: Vec<String>,
    pub measures: Vec<MeasureNoise>,
    /// ρ charged to the node's ledger for this release (0 is never reported for a fresh release).
    pub rho: f64,
    pub budget_period: String,
    pub released_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetStatus {
    pub node_id: String,
    pub budget_period: String,
    pub rho_budget: f64,
    pub rho_spent: f64,
    pub rho_remaining: f64,
    pub releases: u64,
    /// The spent ρ stated as (ε, δ)-DP.
    pub delta: f64,
    pub epsilon_spent: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

pub fn encode_answer(batch: &RecordBatch, meta: &AnswerMeta) -> Result<Vec<u8>, ArrowError> {
    let json = serde_json::to_string(meta).map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
    let mut md: HashMap<String, String> = batch.schema().metadata().clone();
    md.insert(ANSWER_METADATA_KEY.to_string(), json);
    let schema = Arc::new(batch.schema().as_ref().clone().with_metadata(md));
    let batch = batch.clone().with_schema(schema.clone())?;
    let mut out = Vec::new();
    {
        let mut w = StreamWriter::try_new(&mut out, &schema)?;
        w.write(&batch)?;
        w.finish()?;
    }
    Ok(out)
}

pub fn decode_answer(bytes: &[u8]) -> Result<(RecordBatch, AnswerMeta), ArrowError> {
    let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    let schema = reader.schema();
    let meta_json = schema.metadata().get(ANSWER_METADATA_KEY).ok_or_else(|| {
        ArrowError::SchemaError(format!("answer lacks {ANSWER_METADATA_KEY} metadata"))
    })?;
    let meta: AnswerMeta =
        serde_json::from_str(meta_json).map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>()?;
    let batch = datafusion::arrow::compute::concat_batches(&schema, &batches)?;
    Ok((batch, meta))
}
