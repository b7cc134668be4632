//! The SQL side of the contract: an indicator's SQL must be one read-only query whose output is
//! exactly the privacy-unit column, the declared group columns and (where the aggregate needs
//! one) an integer value column. Everything else is refused before it runs.

use crate::cdm;
use crate::indicator::{BIN_COLUMN, Query};
use crate::period::Period;
use datafusion::arrow::array::{Date32Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::DFSchema;
use datafusion::datasource::MemTable;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::sql::sqlparser::ast::Statement;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use std::sync::Arc;

/// Name of the public table holding the quarters of the run's period.
pub const QUARTERS_TABLE: &str = "quarters";
/// Name of the public table holding the calendar years the run's period covers completely.
pub const YEARS_TABLE: &str = "years";
/// The public tables every indicator may join: they hold nothing but the run's period.
pub const PUBLIC_TABLES: [&str; 2] = [QUARTERS_TABLE, YEARS_TABLE];

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ContractError {
    #[error("SQL does not parse: {0}")]
    Syntax(String),
    #[error("SQL is empty")]
    Empty,
    #[error("SQL must be a single query (SELECT or WITH … SELECT), found {0} statements")]
    Multiple(usize),
    #[error("SQL must be a query (SELECT or WITH … SELECT), found a {0} statement")]
    NotAQuery(String),
    #[error("SQL cannot be planned against the data model: {0}")]
    Plan(String),
    #[error("SQL does not yield the privacy-unit column '{0}'")]
    MissingUnit(String),
    #[error("SQL does not yield the declared {role} column '{column}'")]
    MissingColumn { role: &'static str, column: String },
    #[error(
        "SQL yields column '{0}', which is not the privacy unit, a declared group key or the value column; only those may leave the query"
    )]
    ExtraColumn(String),
    #[error("SQL yields column '{column}' more than once")]
    Duplicate { column: String },
    #[error("SQL does not keep each unit's rows apart: {0}")]
    Unstable(#[from] crate::stability::StabilityError),
    #[error(
        "SQL can fail on some data values, and whether it fails would tell a caller about the records: {0}"
    )]
    Partial(#[from] crate::totality::PartialExpression),
    #[error("column '{column}' ({role}) must be {expected}, found {found}")]
    WrongType {
        column: String,
        role: &'static str,
        expected: &'static str,
        found: String,
    },
}

pub fn check_sql_shape(sql: &str) -> Result<(), ContractError> {
    if sql.trim().is_empty() {
        return Err(ContractError::Empty);
    }
    let statements = Parser::parse_sql(&GenericDialect {}, sql)
        .map_err(|e| ContractError::Syntax(e.to_string()))?;
    match statements.as_slice() {
        [Statement::Query(_)] => Ok(()),
        [] => Err(ContractError::Empty),
        [other] => Err(ContractError::NotAQuery(statement_kind(other))),
        many => Err(ContractError::Multiple(many.len())),
    }
}

fn statement_kind(s: &Statement) -> String {
    let text = s.to_string();
    text.split_whitespace()
        .next()
        .unwrap_or("unknown")
        .to_uppercase()
}

pub fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

pub fn is_integer(t: &DataType) -> bool {
    t.is_integer()
}

/// Check an already planned query's output columns against the contract.
pub fn check_output(schema: &DFSchema, query: &Query) -> Result<(), ContractError> {
    let value = query.aggregate.value_column();
    let mut seen = std::collections::HashSet::new();
    for f in schema.fields() {
        if !seen.insert(f.name().as_str()) {
            return Err(ContractError::Duplicate {
                column: f.name().to_string(),
            });
        }
    }
    // Missing columns first: the most telling problem when an indicator is being written.
    if !seen.contains(query.privacy_unit.as_str()) {
        return Err(ContractError::MissingUnit(query.privacy_unit.clone()));
    }
    for g in &query.group_by {
        if !seen.contains(g.column.as_str()) {
            return Err(ContractError::MissingColumn {
                role: "group",
                column: g.column.clone(),
            });
        }
    }
    if let Some(v) = value
        && !seen.contains(v)
    {
        return Err(ContractError::MissingColumn {
            role: "value",
            column: v.to_string(),
        });
    }
    for f in schema.fields() {
        let name = f.name().as_str();
        let (role, ok, expected) = if name == query.privacy_unit {
            ("privacy unit", is_text(f.data_type()), "text")
        } else if query.group_by.iter().any(|g| g.column == name) {
            ("group key", is_text(f.data_type()), "text")
        } else if Some(name) == value {
            ("value", is_integer(f.data_type()), "an integer")
        } else {
            return Err(ContractError::ExtraColumn(name.to_string()));
        };
        if !ok {
            return Err(ContractError::WrongType {
                column: name.to_string(),
                role,
                expected,
                found: f.data_type().to_string(),
            });
        }
    }
    debug_assert!(!seen.contains(BIN_COLUMN));
    Ok(())
}

/// SQL options for indicator queries: no DDL, no DML, no `SET`/`COPY`-style statements.
pub fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// Plan an indicator's SQL in `ctx`, check its output columns and prove from the plan that every
/// output row is one unit's (see [`crate::stability`]). Nothing is executed.
pub async fn plan(ctx: &SessionContext, query: &Query) -> Result<DataFrame, ContractError> {
    check_sql_shape(&query.sql)?;
    let df = ctx
        .sql_with_options(&query.sql, read_only())
        .await
        .map_err(|e| ContractError::Plan(e.strip_backtrace()))?;
    check_output(df.schema(), query)?;
    crate::stability::check(df.logical_plan(), &query.privacy_unit)?;
    // The casts DataFusion inserts to make types meet can fail too: check the analysed plan.
    let state = ctx.state();
    let analyzed = state
        .analyzer()
        .execute_and_check(df.logical_plan().clone(), state.config_options(), |_, _| {})
        .map_err(|e| ContractError::Plan(e.strip_backtrace()))?;
    crate::totality::check(&analyzed)?;
    Ok(df)
}

/// A public period table: one row per span (its label, first and last day, length in days).
fn period_table(
    label: &str,
    spans: &[(String, chrono::NaiveDate, chrono::NaiveDate)],
) -> Result<MemTable, datafusion::error::DataFusionError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new(label, DataType::Utf8, false),
        Field::new("first_day", DataType::Date32, false),
        Field::new("last_day", DataType::Date32, false),
        Field::new("days", DataType::Int64, false),
    ]));
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    let day = |d: &chrono::NaiveDate| (*d - epoch).num_days() as i32;
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(spans.iter().map(|s| &s.0))),
            Arc::new(Date32Array::from_iter_values(
                spans.iter().map(|s| day(&s.1)),
            )),
            Arc::new(Date32Array::from_iter_values(
                spans.iter().map(|s| day(&s.2)),
            )),
            Arc::new(Int64Array::from_iter_values(
                spans.iter().map(|s| (s.2 - s.1).num_days() + 1),
            )),
        ],
    )?;
    MemTable::try_new(schema, vec![vec![batch]])
}

/// The public `quarters` table for a run: one row per quarter of the period.
pub fn quarters_table(
    period: Option<&Period>,
) -> Result<MemTable, datafusion::error::DataFusionError> {
    let spans: Vec<_> = period
        .map(|p| p.quarters())
        .unwrap_or_default()
        .into_iter()
        .map(|q| (q.to_string(), q.first_day(), q.last_day()))
        .collect();
    period_table("quarter", &spans)
}

/// The public `years` table for a run: one row per calendar year the period covers completely.
pub fn years_table(
    period: Option<&Period>,
) -> Result<MemTable, datafusion::error::DataFusionError> {
    let spans: Vec<_> = period
        .map(|p| crate::TimeGrain::Year.release_periods(p))
        .unwrap_or_default()
        .into_iter()
        .map(|y| {
            (
                y.first.year.to_string(),
                y.first.first_day(),
                y.last.last_day(),
            )
        })
        .collect();
    period_table("year", &spans)
}

/// Registers the run's public period tables (`quarters`, `years`) in `ctx`.
pub fn register_period_tables(
    ctx: &SessionContext,
    period: Option<&Period>,
) -> Result<(), datafusion::error::DataFusionError> {
    ctx.register_table(QUARTERS_TABLE, Arc::new(quarters_table(period)?))?;
    ctx.register_table(YEARS_TABLE, Arc::new(years_table(period)?))?;
    Ok(())
}

/// A context with every data-model table registered empty: enough to plan and type-check SQL.
pub fn planning_context() -> Result<SessionContext, datafusion::error::DataFusionError> {
    let ctx = SessionContext::new();
    for t in cdm::tables() {
        let schema = t.schema();
        ctx.register_table(t.name, Arc::new(MemTable::try_new(schema, vec![vec![]])?))?;
    }
    register_period_tables(&ctx, None)?;
    Ok(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_years_table_holds_the_whole_years_of_the_period() {
        let ctx = SessionContext::new();
        let period: Period = "2023Q2:2025Q4".parse().unwrap();
        register_period_tables(&ctx, Some(&period)).unwrap();
        let batches = ctx
            .sql("SELECT year, CAST(first_day AS VARCHAR) AS f, CAST(last_day AS VARCHAR) AS l, days FROM years ORDER BY year")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(
            text.contains("| 2024 | 2024-01-01 | 2024-12-31 | 366  |"),
            "{text}"
        );
        assert!(
            text.contains("| 2025 | 2025-01-01 | 2025-12-31 | 365  |"),
            "{text}"
        );
        assert!(
            !text.contains("2023"),
            "2023 is not covered completely: {text}"
        );
    }

    #[test]
    fn only_single_queries_pass_the_shape_check() {
        assert!(check_sql_shape("SELECT youth_pid FROM youth").is_ok());
        assert!(check_sql_shape("WITH a AS (SELECT 1) SELECT * FROM a").is_ok());
        assert_eq!(check_sql_shape("  "), Err(ContractError::Empty));
        assert!(matches!(
            check_sql_shape("DELETE FROM youth"),
            Err(ContractError::NotAQuery(k)) if k == "DELETE"
        ));
        assert!(matches!(
            check_sql_shape("SELECT 1; SELECT 2"),
            Err(ContractError::Multiple(2))
        ));
        assert!(matches!(
            check_sql_shape("SELEC 1"),
            Err(ContractError::Syntax(_))
        ));
    }
}
