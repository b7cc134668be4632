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
    /// Secure aggregation: the node answers with secret shares carrying its share of the noise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<SecureRequest>,
}

/// The public parameters of a secure run that change a node's noise share: `nodes` asked (n) and
/// at most `max_missing` (t) of them that may drop out or cheat. Every node adds 1/(n − t) of the
/// central noise, so any n − t honest answers together carry all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecureRequest {
    pub nodes: u32,
    pub max_missing: u32,
    /// Width of an encoded entry (public; out-of-range reports fail verification).
    #[serde(default = "default_bits")]
    pub bits: u32,
    /// The helper key the node seals its helper share to (the helper's current key, which the
    /// coordinator reads from the helper). A node seals only to a key of its own configuration
    /// (`secure.helper_key`, `secure.helper_next_key`); without one it uses `helper_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helper_key_id: Option<KeyId>,
}

/// A helper HPKE key's id: the first 8 bytes of the SHA-256 of its public key, as 16 hex digits.
/// Public, and derived from the key alone, so every party computes it from the key file it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for KeyId {
    type Err = String;
    fn from_str(s: &str) -> Result<KeyId, String> {
        let bad = || format!("helper key id '{s}' is not 16 hex digits");
        if s.len() != 16 || !s.is_ascii() {
            return Err(bad());
        }
        let mut id = [0u8; 8];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(KeyId(id))
    }
}

impl Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<KeyId, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The default public bound on the units one node holds (`secure.max_units`, node and
/// coordinator): secure entry widths are planned from it.
pub const DEFAULT_MAX_UNITS: u64 = 100_000;

/// The default entry width of a secure report.
pub const DEFAULT_BITS: u32 = 32;

fn default_bits() -> u32 {
    DEFAULT_BITS
}

impl SecureRequest {
    /// n − t: the answering honest nodes whose noise shares are counted on.
    pub fn honest(&self) -> u32 {
        self.nodes.saturating_sub(self.max_missing)
    }
}

/// What binds a node's report: the node signs it, and it is the HPKE associated data of the
/// helper's input share, so neither can be moved to another node, release or run size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportBinding {
    pub node_id: String,
    pub indicator: String,
    pub content_hash: String,
    pub period: Period,
    pub release_key: String,
    pub nodes: u32,
    pub max_missing: u32,
    /// Each encoded entry lies in [0, 2^bits): the noisy integer plus 2^(bits−1).
    pub bits: u32,
    /// Entries in the vector: cells × measures, measure by measure.
    pub length: u32,
    /// Per measure, the public factor its integers were multiplied by.
    pub granularity: Vec<i64>,
    /// The Prio3 report nonce (hex, 16 bytes).
    pub nonce: String,
    /// When the node made the report (Unix seconds, the node's clock): both aggregators refuse
    /// a report older than their window, so an old report (or a restored store holding one)
    /// cannot be brought into a new batch. 0 in reports made before it was bound.
    #[serde(default)]
    pub created_at: i64,
    /// The helper key the helper's share is sealed to; `None` in reports made before key ids.
    #[serde(default)]
    pub helper_key_id: Option<KeyId>,
}

/// One measure of a secure answer: the node's noise share and what it guarantees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecureMeasure {
    pub column: String,
    pub granularity: i64,
    /// σ of the node's discrete Gaussian share, in scaled units.
    pub sigma: f64,
    /// ρ of the sum of n − t such shares (distributed discrete Gaussian bound).
    pub rho: f64,
    /// ρ of this node's share alone: the protection left if both aggregators collude.
    pub local_rho: f64,
}

/// The helper's input share, sealed to the helper's HPKE key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedShare {
    pub encapsulated_key: String,
    pub ciphertext: String,
}

/// A node's secret-shared answer (hex-encoded Prio3 messages).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecureShares {
    pub binding: ReportBinding,
    pub public_share: String,
    /// The leader's (coordinator's) input share.
    pub leader_share: String,
    pub helper_share: SealedShare,
    /// ed25519 over [`ReportBinding`], the public share and the sealed helper share.
    pub signature: String,
    pub measures: Vec<SecureMeasure>,
    /// The node's public bound on its units (`secure.max_units`): its cells were clamped into
    /// ± this times each measure's per-unit bound. 0 in answers made before it was stated.
    #[serde(default)]
    pub max_units: u64,
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
    /// Present on a secure answer: the batch then holds the public keys only, no values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<SecureShares>,
}

/// A node's budget: ρ per period of the *data* (year, quarter or lifetime), each release charged
/// to every data period it covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetStatus {
    pub node_id: String,
    /// The data period nearest its budget (the one a next release over it would exhaust first),
    /// or "none spent"; `rho_spent`, `rho_remaining` and `epsilon_spent` are that period's.
    pub budget_period: String,
    /// "year", "quarter" or "lifetime": the data periods budgets are kept for.
    #[serde(default)]
    pub granularity: String,
    /// ρ per data period.
    pub rho_budget: f64,
    pub rho_spent: f64,
    pub rho_remaining: f64,
    /// Every release the node ever made (each counted once).
    pub releases: u64,
    /// The spent ρ stated as (ε, δ)-DP.
    pub delta: f64,
    pub epsilon_spent: f64,
    /// Spend per data period, oldest first; periods without spend are left out.
    #[serde(default)]
    pub periods: Vec<PeriodBudget>,
    /// ρ of every release together, and the optional cap on it.
    #[serde(default)]
    pub rho_spent_total: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_rho: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeriodBudget {
    /// "2024" (year), "2024Q1" (quarter) or "lifetime".
    pub period: String,
    pub rho_spent: f64,
    pub rho_remaining: f64,
    pub releases: u64,
    pub epsilon_spent: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

/// What a node releases for one indicator and quarter, and what the coordinator combines: the
/// cells' public keys (under node noise also their noisy integers) as Arrow columns, and the
/// metadata that says what was charged and how the values are protected. One type for both kinds
/// of answer, so combination picks its path from [`Answer::protection`] and everything after it
/// (intervals, publication, the dashboard) never sees the difference.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub batch: RecordBatch,
    pub meta: AnswerMeta,
}

/// How an answer's values are protected, which decides how it is combined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Protection<'a> {
    /// Each value carries the node's own full noise; the batch holds the noisy integers and the
    /// coordinator sums them.
    NodeNoise(&'a [MeasureNoise]),
    /// The values are secret-shared between the coordinator and the helper, each node adding its
    /// share of the national noise; the batch holds the public keys only.
    SecretShared(&'a SecureShares),
}

impl Answer {
    pub fn protection(&self) -> Protection<'_> {
        match &self.meta.secure {
            Some(shares) => Protection::SecretShared(shares),
            None => Protection::NodeNoise(&self.meta.measures),
        }
    }

    /// The answer as one Arrow IPC stream, its metadata in the schema.
    pub fn encode(&self) -> Result<Vec<u8>, ArrowError> {
        let json = serde_json::to_string(&self.meta)
            .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
        let mut md: HashMap<String, String> = self.batch.schema().metadata().clone();
        md.insert(ANSWER_METADATA_KEY.to_string(), json);
        let schema = Arc::new(self.batch.schema().as_ref().clone().with_metadata(md));
        let batch = self.batch.clone().with_schema(schema.clone())?;
        let mut out = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut out, &schema)?;
            w.write(&batch)?;
            w.finish()?;
        }
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Answer, ArrowError> {
        let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
        let schema = reader.schema();
        let meta_json = schema.metadata().get(ANSWER_METADATA_KEY).ok_or_else(|| {
            ArrowError::SchemaError(format!("answer lacks {ANSWER_METADATA_KEY} metadata"))
        })?;
        let meta: AnswerMeta =
            serde_json::from_str(meta_json).map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
        let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>()?;
        let batch = datafusion::arrow::compute::concat_batches(&schema, &batches)?;
        Ok(Answer { batch, meta })
    }
}

/// Small answers for tests of what consumes them (combination, the run store): not for releases.
#[doc(hidden)]
pub mod testing {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    /// A node-noise answer of `node` with one group column `g` and one measure `count`.
    pub fn noisy_answer(node: &str, keys: &[&str], counts: &[i64], variance: f64) -> Answer {
        let schema = Arc::new(Schema::new(vec![
            Field::new("g", DataType::Utf8, false),
            Field::new("count", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(Int64Array::from(counts.to_vec())),
            ],
        )
        .expect("batch");
        let meta = AnswerMeta {
            node_id: node.into(),
            indicator: "care.test".into(),
            content_hash: "c0ffee".into(),
            period: "2024Q1".parse().expect("period"),
            snapshot: "s".into(),
            release_key: format!("k-{node}"),
            aggregate: "count_distinct".into(),
            group_columns: vec!["g".into()],
            measures: vec![MeasureNoise {
                column: "count".into(),
                mechanism: "discrete_gaussian".into(),
                scale: variance.sqrt(),
                variance,
                per_cell_bound: 1,
                cells_per_unit: 1,
                l1_bound: 1,
                l2_bound: 1.0,
            }],
            rho: 0.1,
            budget_period: "2024".into(),
            released_at: "2024-04-01T00:00:00Z".into(),
            secure: None,
        };
        Answer { batch, meta }
    }

    pub fn secret_shared(mut answer: Answer) -> Answer {
        let meta = answer.meta.clone();
        answer.meta.secure = Some(SecureShares {
            binding: ReportBinding {
                node_id: meta.node_id,
                indicator: meta.indicator,
                content_hash: meta.content_hash,
                period: meta.period,
                release_key: meta.release_key,
                nodes: 2,
                max_missing: 0,
                bits: DEFAULT_BITS,
                length: 1,
                granularity: vec![1],
                nonce: "00".repeat(16),
                created_at: 0,
                helper_key_id: None,
            },
            public_share: String::new(),
            leader_share: String::new(),
            helper_share: SealedShare {
                encapsulated_key: String::new(),
                ciphertext: String::new(),
            },
            signature: String::new(),
            measures: Vec::new(),
            max_units: 0,
        });
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{noisy_answer, secret_shared};
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn an_answer_survives_arrow_ipc_with_its_metadata() {
        for answer in [
            noisy_answer("P01", &["a", "b"], &[3, -1], 4.0),
            secret_shared(noisy_answer("P02", &["a"], &[0], 4.0)),
        ] {
            let bytes = answer.encode().expect("encode");
            let back = Answer::decode(&bytes).expect("decode");
            assert_eq!(back.meta, answer.meta);
            assert_eq!(back.batch.columns(), answer.batch.columns());
        }
    }

    #[test]
    fn protection_follows_the_metadata() {
        let noisy = noisy_answer("P01", &["a"], &[3], 4.0);
        assert!(
            matches!(noisy.protection(), Protection::NodeNoise(m) if m.len() == 1 && m[0].variance == 4.0)
        );
        let shared = secret_shared(noisy);
        assert!(
            matches!(shared.protection(), Protection::SecretShared(s) if s.binding.node_id == "P01")
        );
    }

    #[test]
    fn bytes_without_answer_metadata_are_refused() {
        let mut answer = noisy_answer("P01", &["a"], &[3], 4.0);
        let bytes = answer.encode().expect("encode");
        assert!(Answer::decode(&bytes[..bytes.len() / 2]).is_err());
        // A plain Arrow stream, no metadata.
        answer.batch = answer
            .batch
            .with_schema(Arc::new(Schema::new(vec![
                Field::new("g", DataType::Utf8, false),
                Field::new("count", DataType::Int64, false),
            ])))
            .expect("schema");
        let mut plain = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut plain, &answer.batch.schema()).expect("writer");
            w.write(&answer.batch).expect("write");
            w.finish().expect("finish");
        }
        let err = Answer::decode(&plain).expect_err("no metadata");
        assert!(err.to_string().contains(ANSWER_METADATA_KEY), "{err}");
    }
}
