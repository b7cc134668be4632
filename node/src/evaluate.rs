//! Evaluation of one indicator over the node's own records, entirely inside DataFusion:
//! the indicator's SQL, then per-unit contribution bounding, then aggregation by public group.
//! The result here is *exact* (pre-noise); [`crate::noise`] turns it into a release.

use crate::cell_index::CellLayout;
use crate::contributions::{CELL_FIELD, CONTRIBUTION_FIELD, Contribution, unit_contributions_udaf};
use crate::tables::{DataError, Tables};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast as arrow_cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::functions::core::expr_fn::get_field;
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::logical_expr::when;
use datafusion::prelude::{DataFrame, Expr, cast, ident, lit};
use policies::catalog::domain_values;
use policies::contract::{self, ContractError};
use policies::indicator::{Aggregate, MeasureKind};
use policies::{Period, Query};

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
const CELL: &str = "__cell";
const KEPT: &str = "__kept";

fn clamp(e: Expr, lo: i64, hi: i64) -> Expr {
    when(e.clone().lt(lit(lo)), lit(lo))
        .when(e.clone().gt(lit(hi)), lit(hi))
        .otherwise(e)
        .unwrap_or_else(|_| lit(lo))
}

pub use policies::catalog::{cartesian, public_domains};

/// The DataFrame of bounded (or exact) values per cell (`__cell`, the position in the public key
/// set), before collection. Cells no unit touched are absent; [`cells`] fills them with zeros.
pub async fn plan_cells(
    tables: &Tables,
    query: &Query,
    period: &Period,
    bounding: Bounding,
) -> Result<DataFrame, EvalError> {
    let ctx = tables.session(period)?;
    let df = contract::plan(&ctx, query).await?;
    let keyed_domains: Vec<Vec<String>> = query
        .group_by
        .iter()
        .map(|k| domain_values(&k.domain, period))
        .collect();
    let edges = query.aggregate.edges();

    // 1. Normalise names and types; every row gets its cell in the public key set, NULL when any
    //    part of its key lies outside the public domain.
    let raw_value = query
        .aggregate
        .value_column()
        .map(|v| cast(ident(v), DataType::Int64));
    // Histograms use the value only to pick the bin (a NULL value gives a NULL cell); sums and
    // means add it up, clamped per row first.
    let summed = matches!(
        query.aggregate,
        Aggregate::Sum { .. } | Aggregate::Mean { .. }
    );
    let value = raw_value
        .clone()
        .filter(|_| summed)
        .map(|value| match bounding {
            Bounding::Bounded => clamp(value, -ROW_VALUE_LIMIT, ROW_VALUE_LIMIT),
            Bounding::Exact => value,
        });
    let mut cell_args: Vec<Expr> = query
        .group_by
        .iter()
        .map(|k| cast(ident(&k.column), DataType::Utf8View))
        .collect();
    if let (Some(_), Some(v)) = (edges, raw_value) {
        cell_args.push(v);
    }
    let cell = CellLayout::new(&keyed_domains, edges).udf().call(cell_args);
    let mut select = vec![
        // Utf8View: what Parquet strings arrive as, so usually no copy at all.
        cast(ident(&query.privacy_unit), DataType::Utf8View).alias(UNIT),
        cell.alias(CELL),
    ];
    if let Some(v) = value {
        select.push(v.alias(VALUE));
    }
    let mut df = df.select(select).map_err(engine)?;

    // 2. Drop rows without a unit or value, and rows whose keys lie outside the public domain.
    let mut keep = ident(UNIT).is_not_null().and(ident(CELL).is_not_null());
    if summed {
        keep = keep.and(ident(VALUE).is_not_null());
    }
    df = df.filter(keep).map_err(engine)?;

    // 3. Per unit, one hash aggregate: its contribution to each cell it touches, clamped, and at
    //    most k cells (only needed when the key set has more than k cells), chosen by a fixed rank
    //    of the unit's own (unit, cell) pairs. No sort or window over the rows.
    let bounded = bounding == Bounding::Bounded;
    let contribution = match &query.aggregate {
        Aggregate::CountUnits { .. } => Contribution::Presence,
        Aggregate::CountRows {
            max_rows_per_group, ..
        }
        | Aggregate::Histogram {
            max_rows_per_group, ..
        } => Contribution::Rows {
            max: bounded.then_some(*max_rows_per_group),
        },
        Aggregate::Sum { lower, upper, .. } | Aggregate::Mean { lower, upper, .. } => {
            Contribution::Sum {
                bounds: bounded.then_some((*lower, *upper)),
            }
        }
    };
    let k = query.aggregate.max_groups_per_unit();
    let cell_count = query.cell_count(period.quarters().len());
    let max_cells = (bounded && k < cell_count).then(|| usize::try_from(k).unwrap_or(1));
    df = match max_cells {
        // Every unit may keep all its cells: a plain aggregate by (unit, cell), then the clamp.
        None => {
            let (aggs, per_cell) = match contribution {
                Contribution::Presence => (vec![], lit(1i64)),
                Contribution::Rows { max } => {
                    let n = ident("__n");
                    let c = max.map_or(n.clone(), |m| clamp(n, 0, m));
                    (vec![count(lit(1i64)).alias("__n")], c)
                }
                Contribution::Sum { bounds } => {
                    let s = ident("__s");
                    let c = bounds.map_or(s.clone(), |(lo, hi)| clamp(s, lo, hi));
                    (vec![sum(ident(VALUE)).alias("__s")], c)
                }
            };
            df.aggregate(vec![ident(UNIT), ident(CELL)], aggs)
                .map_err(engine)?
                .select(vec![
                    ident(CELL),
                    cast(per_cell, DataType::Int64).alias(CONTRIB),
                ])
                .map_err(engine)?
        }
        // A unit may touch more cells than it may keep: one aggregate per unit does it all.
        Some(_) => {
            let value = if summed { ident(VALUE) } else { lit(0i64) };
            let kept = unit_contributions_udaf(contribution, max_cells).call(vec![
                ident(UNIT),
                ident(CELL),
                value,
            ]);
            df.aggregate(vec![ident(UNIT)], vec![kept.alias(KEPT)])
                .map_err(engine)?
                .unnest_columns(&[KEPT])
                .map_err(engine)?
                .select(vec![
                    get_field(ident(KEPT), CELL_FIELD).alias(CELL),
                    get_field(ident(KEPT), CONTRIBUTION_FIELD).alias(CONTRIB),
                ])
                .map_err(engine)?
        }
    };

    // 5. Aggregate by cell.
    // A mean's count is of units (one contribution each); every other count sums contributions.
    let is_mean = match &query.aggregate {
        Aggregate::Mean { .. } => true,
        Aggregate::CountUnits { .. }
        | Aggregate::CountRows { .. }
        | Aggregate::Sum { .. }
        | Aggregate::Histogram { .. } => false,
    };
    let finals = query
        .aggregate
        .measures()
        .iter()
        .map(|m| match m {
            MeasureKind::Sum => sum(ident(CONTRIB)).alias(m.name()),
            MeasureKind::Count if is_mean => count(lit(1i64)).alias(m.name()),
            MeasureKind::Count => sum(ident(CONTRIB)).alias(m.name()),
        })
        .collect();
    df.aggregate(vec![ident(CELL)], finals).map_err(engine)
}

/// Exact or bounded values for every cell of the public key set.
pub async fn cells(
    tables: &Tables,
    query: &Query,
    period: &Period,
    bounding: Bounding,
) -> Result<Cells, EvalError> {
    let df = plan_cells(tables, query, period, bounding).await?;
    let batches = df.collect().await.map_err(engine)?;
    let (names, domains) = public_domains(query, period);
    let keys = cartesian(&domains);
    let measure_names: Vec<&str> = query
        .aggregate
        .measures()
        .iter()
        .map(|m| m.name())
        .collect();
    let mut values = vec![vec![0i64; keys.len()]; measure_names.len()];
    for b in &batches {
        let as_int64 = |name: &str| {
            b.column_by_name(name)
                .ok_or_else(|| EvalError::Internal(format!("no column {name}")))
                .and_then(|a| {
                    arrow_cast(a, &DataType::Int64).map_err(|e| EvalError::Engine(e.to_string()))
                })
        };
        let cell_col = as_int64(CELL)?;
        let cell_col = cell_col.as_primitive::<Int64Type>();
        let measure_cols: Vec<_> = measure_names
            .iter()
            .map(|m| as_int64(m))
            .collect::<Result<_, _>>()?;
        for row in 0..b.num_rows() {
            let cell = usize::try_from(cell_col.value(row))
                .ok()
                .filter(|c| *c < keys.len() && !cell_col.is_null(row))
                .ok_or_else(|| {
                    EvalError::Internal(format!(
                        "cell {} outside the public key set reached aggregation",
                        cell_col.value(row)
                    ))
                })?;
            for (m, col) in measure_cols.iter().enumerate() {
                let a = col.as_primitive::<Int64Type>();
                values[m][cell] = if a.is_null(row) { 0 } else { a.value(row) };
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
