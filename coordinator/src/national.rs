//! National sums with DataFusion over the nodes' Arrow answers: per cell, the exact sum of the node
//! estimates and the sum of their (public) noise variances, with a check that every node answered
//! the same public key set.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::prelude::{SessionContext, ident, lit};
use policies::wire::{Answer, AnswerMeta, Protection};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum CombineError {
    #[error("answer from {node} lacks column {column}")]
    MissingColumn { node: String, column: String },
    #[error("answers disagree: {0}")]
    Mismatch(String),
    #[error("no answers to combine")]
    Empty,
    /// A secret-shared answer carries no values to sum here; only the helper path combines it.
    #[error(
        "the answer from {0} is secret-shared: it is combined with the helper, never summed as node noise"
    )]
    SecretShared(String),
    #[error("combining in DataFusion: {0}")]
    Engine(String),
}

fn engine(e: impl std::fmt::Display) -> CombineError {
    CombineError::Engine(e.to_string())
}

/// One measure of one national cell.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CellSum {
    /// Exact sum of the node estimates: integers for per-node noise; for a secure sum the integer
    /// sum divided by its power-of-two granularity, also exact in a float.
    pub value: f64,
    /// Sum of the node noise variances.
    pub variance: f64,
}

/// The national sums of one base indicator for one quarter.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BaseResult {
    pub indicator: String,
    pub quarter: String,
    pub group_columns: Vec<String>,
    /// Keys in the nodes' canonical order; per key, measure → sum.
    pub cells: Vec<(Vec<String>, BTreeMap<String, CellSum>)>,
    pub providers_reporting: usize,
    pub providers_total: usize,
}

const NODE: &str = "__node";

fn variance_column(measure: &str) -> String {
    format!("{measure}__variance")
}

/// One answer as uniform columns: keys as Utf8, measures as Int64, each measure's variance.
fn normalise(answer: &Answer, reference: &AnswerMeta) -> Result<RecordBatch, CombineError> {
    let (batch, meta) = (&answer.batch, &answer.meta);
    let measures = match answer.protection() {
        Protection::NodeNoise(measures) => measures,
        Protection::SecretShared(_) => {
            return Err(CombineError::SecretShared(meta.node_id.clone()));
        }
    };
    let missing = |c: &str| CombineError::MissingColumn {
        node: meta.node_id.clone(),
        column: c.to_string(),
    };
    if meta.group_columns != reference.group_columns
        || meta.measures.len() != reference.measures.len()
        || meta.content_hash != reference.content_hash
        || meta.period != reference.period
    {
        return Err(CombineError::Mismatch(format!(
            "{} answered {} ({}) for {}, {} answered {} ({}) for {}",
            meta.node_id,
            meta.indicator,
            meta.content_hash,
            meta.period,
            reference.node_id,
            reference.indicator,
            reference.content_hash,
            reference.period
        )));
    }
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for g in &meta.group_columns {
        let a = batch.column_by_name(g).ok_or_else(|| missing(g))?;
        fields.push(Field::new(g, DataType::Utf8, false));
        columns.push(cast(a, &DataType::Utf8).map_err(engine)?);
    }
    for m in &reference.measures {
        let noise = measures
            .iter()
            .find(|x| x.column == m.column)
            .ok_or_else(|| missing(&m.column))?;
        let a = batch
            .column_by_name(&m.column)
            .ok_or_else(|| missing(&m.column))?;
        fields.push(Field::new(&m.column, DataType::Int64, true));
        columns.push(cast(a, &DataType::Int64).map_err(engine)?);
        fields.push(Field::new(
            variance_column(&m.column),
            DataType::Float64,
            false,
        ));
        columns.push(Arc::new(Float64Array::from(vec![
            noise.variance;
            batch.num_rows()
        ])));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(engine)
}

/// Sum node answers cell by cell. `providers_total` is how many nodes were asked.
pub async fn combine(
    answers: &[Answer],
    providers_total: usize,
) -> Result<BaseResult, CombineError> {
    let Answer {
        batch: first,
        meta: reference,
    } = answers.first().ok_or(CombineError::Empty)?;
    let mut seen = std::collections::BTreeSet::new();
    for Answer { meta, .. } in answers {
        if !seen.insert(meta.node_id.clone()) {
            return Err(CombineError::Mismatch(format!(
                "two answers from node {}",
                meta.node_id
            )));
        }
    }
    let batches = answers
        .iter()
        .map(|a| normalise(a, reference))
        .collect::<Result<Vec<_>, _>>()?;
    let ctx = SessionContext::new();
    let groups: Vec<_> = reference.group_columns.iter().map(ident).collect();
    let mut aggregates = vec![count(lit(1i64)).alias(NODE)];
    for m in &reference.measures {
        aggregates.push(sum(ident(&m.column)).alias(&m.column));
        let v = variance_column(&m.column);
        aggregates.push(sum(ident(&v)).alias(&v));
    }
    let summed = ctx
        .read_batches(batches)
        .map_err(engine)?
        .aggregate(groups, aggregates)
        .map_err(engine)?
        .collect()
        .await
        .map_err(engine)?;

    let mut by_key: HashMap<Vec<String>, BTreeMap<String, CellSum>> = HashMap::new();
    for b in &summed {
        let keys: Vec<_> = (0..reference.group_columns.len())
            .map(|i| b.column(i).as_string::<i32>())
            .collect();
        let nodes = b
            .column_by_name(NODE)
            .and_then(|a| a.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| engine("no node count"))?;
        for row in 0..b.num_rows() {
            let key: Vec<String> = keys.iter().map(|k| k.value(row).to_string()).collect();
            if nodes.value(row) as usize != answers.len() {
                return Err(CombineError::Mismatch(format!(
                    "cell {key:?} is in {} of {} answers",
                    nodes.value(row),
                    answers.len()
                )));
            }
            let mut measures = BTreeMap::new();
            for m in &reference.measures {
                let value = b
                    .column_by_name(&m.column)
                    .and_then(|a| a.as_primitive_opt::<Int64Type>())
                    .ok_or_else(|| engine("no measure sum"))?;
                let variance = b
                    .column_by_name(&variance_column(&m.column))
                    .and_then(|a| a.as_primitive_opt::<Float64Type>())
                    .ok_or_else(|| engine("no variance sum"))?;
                measures.insert(
                    m.column.clone(),
                    CellSum {
                        value: if value.is_null(row) {
                            0.0
                        } else {
                            value.value(row) as f64
                        },
                        variance: variance.value(row),
                    },
                );
            }
            by_key.insert(key, measures);
        }
    }
    // Keep the nodes' canonical key order.
    let first_keys: Vec<_> = reference
        .group_columns
        .iter()
        .map(|g| {
            first
                .column_by_name(g)
                .ok_or_else(|| CombineError::MissingColumn {
                    node: reference.node_id.clone(),
                    column: g.clone(),
                })
                .and_then(|a| cast(a, &DataType::Utf8).map_err(engine))
        })
        .collect::<Result<_, _>>()?;
    let mut cells = Vec::with_capacity(first.num_rows());
    for row in 0..first.num_rows() {
        let key: Vec<String> = first_keys
            .iter()
            .map(|k| k.as_string::<i32>().value(row).to_string())
            .collect();
        let measures = by_key
            .remove(&key)
            .ok_or_else(|| engine(format!("cell {key:?} lost in combination")))?;
        cells.push((key, measures));
    }
    if let Some(extra) = by_key.keys().next() {
        return Err(CombineError::Mismatch(format!(
            "cell {extra:?} is not in {}'s answer",
            reference.node_id
        )));
    }
    Ok(BaseResult {
        indicator: reference.indicator.clone(),
        quarter: reference.period.to_string(),
        group_columns: reference.group_columns.clone(),
        cells,
        providers_reporting: answers.len(),
        providers_total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use policies::wire::testing::{noisy_answer, secret_shared};

    #[tokio::test]
    async fn node_noise_answers_sum_cell_by_cell_with_their_variances() {
        let answers = [
            noisy_answer("P01", &["a", "b"], &[3, -1], 4.0),
            noisy_answer("P02", &["b", "a"], &[5, 7], 9.0),
        ];
        let r = combine(&answers, 3).await.expect("combined");
        assert_eq!((r.providers_reporting, r.providers_total), (2, 3));
        let cell = |k: &str| {
            r.cells
                .iter()
                .find(|(key, _)| key == &vec![k.to_string()])
                .map(|(_, m)| m["count"])
                .expect("cell")
        };
        assert_eq!(
            cell("a"),
            CellSum {
                value: 10.0,
                variance: 13.0
            }
        );
        assert_eq!(
            cell("b"),
            CellSum {
                value: 4.0,
                variance: 13.0
            }
        );
    }

    #[tokio::test]
    async fn a_secret_shared_answer_is_never_summed_as_node_noise() {
        let answers = [
            noisy_answer("P01", &["a"], &[3], 4.0),
            secret_shared(noisy_answer("P02", &["a"], &[0], 4.0)),
        ];
        let err = combine(&answers, 2).await.expect_err("refused");
        assert!(
            matches!(err, CombineError::SecretShared(ref n) if n == "P02"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn two_answers_from_one_node_or_different_keys_are_refused() {
        let twice = [
            noisy_answer("P01", &["a"], &[3], 4.0),
            noisy_answer("P01", &["a"], &[3], 4.0),
        ];
        assert!(matches!(
            combine(&twice, 2).await,
            Err(CombineError::Mismatch(_))
        ));
        let apart = [
            noisy_answer("P01", &["a"], &[3], 4.0),
            noisy_answer("P02", &["b"], &[3], 4.0),
        ];
        assert!(matches!(
            combine(&apart, 2).await,
            Err(CombineError::Mismatch(_))
        ));
        assert!(matches!(combine(&[], 2).await, Err(CombineError::Empty)));
    }
}
