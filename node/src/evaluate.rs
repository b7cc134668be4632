//! Evaluation of one indicator over the node's own records, entirely inside DataFusion:
//! the indicator's SQL, then per-unit contribution bounding, then aggregation by public group.
//! The result here is *exact* (pre-noise); [`crate::noise`] turns it into a release.

use crate::rank::rank_udf;
use crate::tables::{DataError, Tables};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast as arrow_cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::{ExprFunctionExt, when};
use datafusion::prelude::{DataFrame, Expr, cast, ident, lit};
use policies::catalog::domain_values;
use policies::contract::{self, ContractError};
use policies::indicator::Aggregate;
use policies::{Period, Query};
use std::collections::HashMap;

/// Per-row clamp applied to summed values before any per-unit total is formed, so that no sum of
/// a unit's rows can overflow 64 bits. Far beyond any real value (durations are in minutes).
pub const ROW_VALUE_LIMIT: i64 = 1 << 40;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Contract(#[from] ContractError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("query engine: {0}")]
    Engine(String),
    #[error("internal: {0}")]
    Internal(String),
}

fn engine(e: datafusion::error::DataFusionError) -> EvalError {
    EvalError::Engine(e.strip_backtrace())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bounding {
    /// The catalog's contribution bounds: what a release is computed from.
    Bounded,
    /// No bounds at all: the true figure (for accuracy checks on synthetic data only).
    Exact,
}

/// Pre-noise values over the full public key set, zeros included.
#[derive(Debug, Clone, PartialEq)]
pub struct Cells {
    pub group_columns: Vec<String>,
    /// Every key of the public key set, in canonical order (cartesian product of the domains).
    pub keys: Vec<Vec<String>>,
    /// Measure name and its value per key, aligned with `keys`.
    pub measures: Vec<(String, Vec<i64>)>,
}

impl Cells {
    pub fn measure(&self, name: &str) -> Option<&[i64]> {
        self.measures
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

const UNIT: &str = "__unit";
const VALUE: &str = "__value";
const CONTRIB: &str = "__contrib";
const RANK: &str = "__rank";
const ROW: &str = "__row";

fn g(i: usize) -> String {
    format!("__g{i}")
}

fn clamp(e: Expr, lo: i64, hi: i64) -> Expr {
    when(e.clone().lt(lit(lo)), lit(lo))
        .when(e.clone().gt(lit(hi)), lit(hi))
        .otherwise(e)
        .unwrap_or_else(|_| lit(lo))
}

/// The public domains of the answer's group columns, bins last for histograms.
pub fn public_domains(query: &Query, period: &Period) -> (Vec<String>, Vec<Vec<String>>) {
    let mut names: Vec<String> = query.group_by.iter().map(|k| k.column.clone()).collect();
    let mut domains: Vec<Vec<String>> = query
        .group_by
        .iter()
        .map(|k| domain_values(&k.domain, period))
        .collect();
    let bins = query.bins();
    if !bins.is_empty() {
        names.push(policies::indicator::BIN_COLUMN.to_string());
        domains.push(bins);
    }
    (names, domains)
}

pub fn cartesian(domains: &[Vec<String>]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = vec![vec![]];
    for d in domains {
        let mut next = Vec::with_capacity(out.len() * d.len());
        for prefix in &out {
            for v in d {
                let mut k = prefix.clone();
                k.push(v.clone());
                next.push(k);
            }
        }
        out = next;
    }
    out
}

/// The DataFrame of bounded (or exact) per-group values, before collection.
pub async fn plan_cells(
    tables: &Tables,
    query: &Query,
    period: &Period,
    bounding: Bounding,
) -> Result<(DataFrame, usize), EvalError> {
    let ctx = tables.session(period)?;
    let df = contract::plan(&ctx, query).await?;
    let (_, domains) = public_domains(query, period);
    let n_groups = domains.len();

    // 1. Normalise names and types; histogram rows get their public bin.
    let mut select = vec![cast(ident(&query.privacy_unit), DataType::Utf8).alias(UNIT)];
    for (i, k) in query.group_by.iter().enumerate() {
        select.push(cast(ident(&k.column), DataType::Utf8).alias(g(i)));
    }
    if let Some(v) = query.aggregate.value_column() {
        let value = cast(ident(v), DataType::Int64);
        let value = match bounding {
            Bounding::Bounded => clamp(value, -ROW_VALUE_LIMIT, ROW_VALUE_LIMIT),
            Bounding::Exact => value,
        };
        select.push(value.alias(VALUE));
    }
    let mut df = df.select(select).map_err(engine)?;
    if let Aggregate::Histogram { edges, .. } = &query.aggregate {
        let labels = policies::indicator::bin_labels(edges);
        let v = ident(VALUE);
        let mut case = when(v.clone().lt(lit(edges[1])), lit(labels[0].clone()));
        for (i, e) in edges.iter().enumerate().skip(2) {
            case = case.when(v.clone().lt(lit(*e)), lit(labels[i - 1].clone()));
        }
        let bin = case
            .otherwise(lit(labels[labels.len() - 1].clone()))
            .map_err(engine)?;
        df = df.with_column(&g(n_groups - 1), bin).map_err(engine)?;
    }

    // 2. Drop rows without a unit or value, and rows whose keys lie outside the public domain.
    let mut keep = ident(UNIT).is_not_null();
    if query.aggregate.value_column().is_some() {
        keep = keep.and(ident(VALUE).is_not_null());
    }
    for (i, d) in domains.iter().enumerate() {
        let list = d.iter().map(|v| lit(v.clone())).collect();
        keep = keep.and(ident(g(i)).in_list(list, false));
    }
    df = df.filter(keep).map_err(engine)?;

    // 3. One row per (unit, group): the unit's contribution to that cell, bounded.
    let unit_group: Vec<Expr> = std::iter::once(ident(UNIT))
        .chain((0..n_groups).map(|i| ident(g(i))))
        .collect();
    let (aggs, contrib): (Vec<Expr>, Expr) = match (&query.aggregate, bounding) {
        (Aggregate::CountUnits { .. }, _) => (vec![], lit(1i64)),
        (
            Aggregate::CountRows {
                max_rows_per_group, ..
            }
            | Aggregate::Histogram {
                max_rows_per_group, ..
            },
            b,
        ) => {
            let n = ident("__n");
            let c = if b == Bounding::Bounded {
                clamp(n, 0, *max_rows_per_group)
            } else {
                n
            };
            (vec![count(lit(1i64)).alias("__n")], c)
        }
        (Aggregate::Sum { lower, upper, .. } | Aggregate::Mean { lower, upper, .. }, b) => {
            let s = ident("__s");
            let c = if b == Bounding::Bounded {
                clamp(s, *lower, *upper)
            } else {
                s
            };
            (vec![sum(ident(VALUE)).alias("__s")], c)
        }
    };
    df = df.aggregate(unit_group.clone(), aggs).map_err(engine)?;
    let mut keep_cols: Vec<Expr> = unit_group.clone();
    keep_cols.push(cast(contrib, DataType::Int64).alias(CONTRIB));
    df = df.select(keep_cols).map_err(engine)?;

    // 4. At most k cells per unit. Only needed when the key set has more than k cells; the cells a
    //    unit keeps are chosen by a fixed hash of its own (unit, key) pairs, so the choice depends
    //    on nothing but that unit's rows and does not favour early quarters or low codes.
    let k = query.aggregate.max_groups_per_unit();
    let cell_count = query.cell_count(period.quarters().len());
    if bounding == Bounding::Bounded && k < cell_count {
        let rank = rank_udf().call(unit_group.clone());
        df = df.with_column(RANK, rank).map_err(engine)?;
        let rn = row_number()
            .partition_by(vec![ident(UNIT)])
            .order_by(vec![ident(RANK).sort(true, false)])
            .build()
            .map_err(engine)?
            .alias(ROW);
        df = df.window(vec![rn]).map_err(engine)?;
        df = df.filter(ident(ROW).lt_eq(lit(k))).map_err(engine)?;
    }

    // 5. Aggregate by public group.
    let groups: Vec<Expr> = (0..n_groups).map(|i| ident(g(i))).collect();
    let finals = match &query.aggregate {
        Aggregate::Mean { .. } => vec![
            sum(ident(CONTRIB)).alias("sum"),
            count(lit(1i64)).alias("count"),
        ],
        Aggregate::Sum { .. } => vec![sum(ident(CONTRIB)).alias("sum")],
        _ => vec![sum(ident(CONTRIB)).alias("count")],
    };
    df = df.aggregate(groups, finals).map_err(engine)?;
    Ok((df, n_groups))
}

/// Exact or bounded values for every cell of the public key set.
pub async fn cells(
    tables: &Tables,
    query: &Query,
    period: &Period,
    bounding: Bounding,
) -> Result<Cells, EvalError> {
    let (df, n_groups) = plan_cells(tables, query, period, bounding).await?;
    let batches = df.collect().await.map_err(engine)?;
    let (names, domains) = public_domains(query, period);
    let keys = cartesian(&domains);
    let measure_names: Vec<&str> = match &query.aggregate {
        Aggregate::Mean { .. } => vec!["sum", "count"],
        Aggregate::Sum { .. } => vec!["sum"],
        _ => vec!["count"],
    };
    let index: HashMap<&Vec<String>, usize> =
        keys.iter().enumerate().map(|(i, k)| (k, i)).collect();
    let mut values = vec![vec![0i64; keys.len()]; measure_names.len()];
    for b in &batches {
        let key_cols: Vec<_> = (0..n_groups)
            .map(|i| arrow_cast(b.column(i), &DataType::Utf8))
            .collect::<Result<_, _>>()
            .map_err(|e| EvalError::Engine(e.to_string()))?;
        let measure_cols: Vec<_> = measure_names
            .iter()
            .map(|m| {
                b.column_by_name(m)
                    .ok_or_else(|| EvalError::Internal(format!("no column {m}")))
                    .and_then(|a| {
                        arrow_cast(a, &DataType::Int64)
                            .map_err(|e| EvalError::Engine(e.to_string()))
                    })
            })
            .collect::<Result<_, _>>()?;
        for row in 0..b.num_rows() {
            let key: Vec<String> = key_cols
                .iter()
                .map(|c| c.as_string::<i32>().value(row).to_string())
                .collect();
            let Some(&i) = index.get(&key) else {
                return Err(EvalError::Internal(format!(
                    "key {key:?} outside the public domain reached aggregation"
                )));
            };
            for (m, col) in measure_cols.iter().enumerate() {
                let a = col.as_primitive::<Int64Type>();
                values[m][i] = if a.is_null(row) { 0 } else { a.value(row) };
            }
        }
    }
    Ok(Cells {
        group_columns: names,
        keys,
        measures: measure_names
            .iter()
            .map(|m| m.to_string())
            .zip(values)
            .collect(),
    })
}
