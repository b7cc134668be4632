#![allow(dead_code)]
//! Shared fixtures: small in-memory panel tables and inline indicators.

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use node::tables::Tables;
use policies::{Indicator, Query};
use std::sync::Arc;

/// One panel row: (unit, quarter, question, score). The panel table is a convenient generic
/// table: a text unit, two text keys and an integer value.
pub type Row = (String, String, String, i64);

pub fn panel_batch(rows: &[Row]) -> RecordBatch {
    let schema = policies::cdm::table("panel_response")
        .map(|t| t.schema())
        .expect("panel table");
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.0.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|_| "jongere"),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.1.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.2.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.3))),
        ],
    )
    .expect("batch")
}

pub async fn panel_tables(rows: &[Row]) -> Tables {
    Tables::in_memory(vec![("panel_response", panel_batch(rows))])
        .await
        .expect("tables")
}

pub fn indicator(aggregate: &str, with_value: bool) -> Indicator {
    let select = if with_value {
        "SELECT respondent_pid, quarter, question_id, score FROM panel_response"
    } else {
        "SELECT respondent_pid, quarter, question_id FROM panel_response"
    };
    let text = format!(
        r#"id = "test.indicator"
theme = "ervaringen"
title = {{ nl = "t", en = "t" }}
definition = {{ nl = "d", en = "d" }}
privacy_unit = "respondent_pid"
sql = "{select}"
group_by = {{ quarter = "period", question_id = ["Q1", "Q2", "Q3", "Q4"] }}
aggregate = {aggregate}
cost = {{ rho = 0.5 }}
"#
    );
    policies::indicator::parse(std::path::Path::new("inline"), &text).expect("valid indicator")
}

pub fn query(ind: &Indicator) -> Query {
    ind.query().expect("query").clone()
}

pub fn period() -> policies::Period {
    "2024Q1:2024Q4".parse().expect("period")
}

/// Quarters and questions used by generated rows; the last of each lies outside the public domain.
pub const QUARTERS: &[&str] = &["2024Q1", "2024Q2", "2024Q3", "2024Q4", "2030Q1"];
pub const QUESTIONS: &[&str] = &["Q1", "Q2", "Q3", "Q4", "Q9"];

/// The five aggregate kinds with small bounds, so that bounding is exercised.
pub fn all_kinds() -> Vec<(&'static str, Indicator)> {
    vec![
        (
            "count_units",
            indicator(
                r#"{ kind = "count_units", max_groups_per_unit = 3 }"#,
                false,
            ),
        ),
        (
            "count_rows",
            indicator(
                r#"{ kind = "count_rows", max_groups_per_unit = 3, max_rows_per_group = 2 }"#,
                false,
            ),
        ),
        (
            "sum",
            indicator(
                r#"{ kind = "sum", value = "score", lower = -5, upper = 10, max_groups_per_unit = 3 }"#,
                true,
            ),
        ),
        (
            "mean",
            indicator(
                r#"{ kind = "mean", value = "score", lower = 1, upper = 5, max_groups_per_unit = 3 }"#,
                true,
            ),
        ),
        (
            "histogram",
            indicator(
                r#"{ kind = "histogram", value = "score", edges = [0, 5, 10, 20], max_groups_per_unit = 3, max_rows_per_group = 2 }"#,
                true,
            ),
        ),
    ]
}
