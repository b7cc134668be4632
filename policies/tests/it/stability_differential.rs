//! The stability check's promise, tested by running the queries: for every accepted catalog
//! query, over random records, adding one youth's rows (or, read the other way, removing them)
//! changes only output rows labelled with that youth. A positive control shows the harness
//! catches a query that breaks the promise.

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use policies::cdm::{self, ColumnType, TableDef};
use policies::contract;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::sync::Arc;

const SEEDS: u64 = 12;
const YOUTHS: usize = 12;
/// The youth whose rows are added; its id sorts after every base youth's.
const ADDED: &str = "Y_added";

/// Rows of every table, each row a vector of optional cell values (as typed literals).
#[derive(Clone, Default)]
struct Records {
    tables: BTreeMap<&'static str, Vec<Vec<Cell>>>,
}

#[derive(Clone, Debug)]
enum Cell {
    Null,
    Text(String),
    Day(i32),
    Micros(i64),
    Flag(bool),
    Int(i64),
}

/// Days since 1970 of 2023-10-01 and the span to 2025-03-31: the run's year 2024 with margins.
const FIRST_DAY: i32 = 19631;
const SPAN_DAYS: i32 = 547;

fn cell(rng: &mut ChaCha8Rng, table: &str, c: &cdm::ColumnDef, youth: &str) -> Cell {
    if c.nullable && rng.random_bool(0.2) {
        return Cell::Null;
    }
    if c.name == "youth_pid" || c.name == "respondent_pid" {
        return Cell::Text(youth.to_string());
    }
    if !c.codes.is_empty() {
        return Cell::Text(c.codes[rng.random_range(0..c.codes.len())].to_string());
    }
    match c.ty {
        // Shared small pools for keys, so joins on non-unit keys meet rows of other youths.
        ColumnType::Utf8 if c.name.ends_with("unit_id") => {
            Cell::Text(format!("U{}", rng.random_range(0..4)))
        }
        ColumnType::Utf8 if table == "panel_response" && c.name == "quarter" => {
            Cell::Text(format!("2024Q{}", rng.random_range(1..=4)))
        }
        ColumnType::Utf8 => Cell::Text(format!("K{}", rng.random_range(0..6))),
        ColumnType::Date32 => Cell::Day(FIRST_DAY + rng.random_range(0..SPAN_DAYS)),
        ColumnType::Timestamp => Cell::Micros(
            (FIRST_DAY as i64 * 86_400 + rng.random_range(0..SPAN_DAYS as i64 * 86_400))
                * 1_000_000,
        ),
        ColumnType::Boolean => Cell::Flag(rng.random_bool(0.5)),
        ColumnType::Int64 => Cell::Int(rng.random_range(0..12)),
    }
}

/// One youth's rows in every table that holds a unit column: a few rows each.
fn youth_rows(rng: &mut ChaCha8Rng, youth: &str, into: &mut Records) {
    for t in cdm::tables() {
        if t.unit_column().is_none() {
            continue;
        }
        let n = if t.name == "youth" {
            1
        } else {
            rng.random_range(0..4)
        };
        // Row keys repeat across youths (joins on them meet other youths' rows) but never
        // within one youth's rows, as at every node.
        let key: Vec<usize> = t
            .row_key()
            .iter()
            .filter_map(|k| t.columns.iter().position(|c| c.name == *k))
            .collect();
        let mut seen: Vec<String> = Vec::new();
        for _ in 0..n {
            let row: Vec<Cell> = loop {
                let row: Vec<Cell> = t
                    .columns
                    .iter()
                    .map(|c| cell(rng, t.name, c, youth))
                    .collect();
                let id = key
                    .iter()
                    .map(|i| format!("{:?}", row[*i]))
                    .collect::<Vec<_>>()
                    .join("|");
                if key.is_empty() || !seen.contains(&id) {
                    seen.push(id);
                    break row;
                }
            };
            into.tables.entry(t.name).or_default().push(row);
        }
    }
}

fn base(seed: u64) -> Records {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut r = Records::default();
    for t in cdm::tables().iter().filter(|t| t.unit_column().is_none()) {
        // Reference tables: one row per id of the shared pool.
        for i in 0..4 {
            let row = t
                .columns
                .iter()
                .map(|c| match c.name {
                    "unit_id" => Cell::Text(format!("U{i}")),
                    _ => cell(&mut rng, t.name, c, ""),
                })
                .collect();
            r.tables.entry(t.name).or_default().push(row);
        }
    }
    for y in 0..YOUTHS {
        youth_rows(&mut rng, &format!("Y{y:02}"), &mut r);
    }
    r
}

fn with_added(base: &Records, seed: u64) -> Records {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let mut r = base.clone();
    youth_rows(&mut rng, ADDED, &mut r);
    r
}

fn batch(t: &TableDef, rows: &[Vec<Cell>]) -> RecordBatch {
    let columns: Vec<ArrayRef> = t
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| -> ArrayRef {
            macro_rules! build {
                ($builder:expr, $variant:ident) => {{
                    let mut b = $builder;
                    for row in rows {
                        match &row[i] {
                            Cell::$variant(v) => b.append_value(v.clone()),
                            Cell::Null => b.append_null(),
                            other => panic!("{}.{}: {other:?}", t.name, c.name),
                        }
                    }
                    Arc::new(b.finish())
                }};
            }
            match c.ty {
                ColumnType::Utf8 => build!(StringBuilder::new(), Text),
                ColumnType::Date32 => build!(Date32Builder::new(), Day),
                ColumnType::Timestamp => build!(TimestampMicrosecondBuilder::new(), Micros),
                ColumnType::Boolean => build!(BooleanBuilder::new(), Flag),
                ColumnType::Int64 => build!(Int64Builder::new(), Int),
            }
        })
        .collect();
    RecordBatch::try_new(t.schema(), columns).expect("batch matches the data model")
}

/// The query's output rows, as sorted text rows, split by whether the unit is `youth`.
async fn run(sql: &str, unit: &str, records: &Records) -> Vec<(String, String)> {
    let ctx = SessionContext::new();
    for t in cdm::tables() {
        let rows = records.tables.get(t.name).map(Vec::as_slice).unwrap_or(&[]);
        let table = MemTable::try_new(t.schema(), vec![vec![batch(&t, rows)]]).expect("table");
        ctx.register_table(t.name, Arc::new(table))
            .expect("register");
    }
    let period: policies::Period = "2024Q1:2024Q4".parse().expect("period");
    contract::register_period_tables(&ctx, Some(&period)).expect("period tables");
    let df = ctx
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("query plans: {e}\n{sql}"));
    let batches = df
        .collect()
        .await
        .unwrap_or_else(|e| panic!("query runs: {e}\n{sql}"));
    let mut out = Vec::new();
    for b in batches {
        let ui = b.schema().index_of(unit).expect("unit column");
        for r in 0..b.num_rows() {
            let u = array_value_to_string(b.column(ui), r).expect("display");
            let row = (0..b.num_columns())
                .map(|c| array_value_to_string(b.column(c), r).expect("display"))
                .collect::<Vec<_>>()
                .join("|");
            out.push((u, row));
        }
    }
    out.sort();
    out
}

/// Output rows of other youths that differ between the two runs, if any.
async fn foreign_changes(sql: &str, unit: &str, seed: u64) -> Vec<String> {
    let before = base(seed);
    let after = with_added(&before, seed);
    let strip = |rows: Vec<(String, String)>| -> Vec<String> {
        rows.into_iter()
            .filter(|(u, _)| u != ADDED)
            .map(|(_, r)| r)
            .collect()
    };
    let a = strip(run(sql, unit, &before).await);
    let b = strip(run(sql, unit, &after).await);
    if a == b {
        return vec![];
    }
    let mut diff: Vec<String> = b.iter().filter(|r| !a.contains(r)).cloned().collect();
    diff.extend(
        a.iter()
            .filter(|r| !b.contains(r))
            .map(|r| format!("lost {r}")),
    );
    if diff.is_empty() {
        diff.push("row multiplicities changed".into());
    }
    diff
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

#[test]
fn adding_one_youth_changes_only_that_youths_output_rows_for_every_catalog_query() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("catalog");
    runtime().block_on(async {
        let catalog = policies::Catalog::load(&dir).await.expect("catalog");
        let mut checked = 0;
        let mut nonempty = 0;
        for ind in catalog.indicators.values() {
            let Some(q) = ind.query() else { continue };
            // Youth-unit queries only: the added rows are a youth's.
            if q.privacy_unit != "youth_pid" {
                continue;
            }
            for seed in 0..SEEDS {
                let changes = foreign_changes(&q.sql, &q.privacy_unit, seed).await;
                assert!(
                    changes.is_empty(),
                    "{} (seed {seed}): adding one youth changed other youths' rows: {changes:?}",
                    ind.id
                );
                nonempty += usize::from(!run(&q.sql, "youth_pid", &base(seed)).await.is_empty());
            }
            checked += 1;
        }
        assert!(checked >= 18, "only {checked} queries checked");
        // The random records must exercise the queries, or the property says nothing.
        assert!(
            nonempty as u64 >= checked as u64 * SEEDS * 3 / 4,
            "too few non-empty outputs: {nonempty}"
        );
    });
}

/// The forms accepted since the check learned comma joins, FULL JOIN on the unit, LATERAL
/// correlated on the unit and order-dependent picks in an order without ties.
const ACCEPTED_FORMS: &[&str] = &[
    "SELECT m.youth_pid, q.quarter FROM restrictive_measure m, quarters q \
     WHERE CAST(m.start_ts AS DATE) BETWEEN q.first_day AND q.last_day",
    "SELECT s.youth_pid, q.quarter FROM stay s, move mv, quarters q \
     WHERE mv.youth_pid = s.youth_pid AND mv.move_date BETWEEN q.first_day AND q.last_day",
    "SELECT COALESCE(a.youth_pid, b.youth_pid) AS youth_pid, COALESCE(a.n, 0) + COALESCE(b.k, 0) AS v \
     FROM (SELECT youth_pid, count(*) AS n FROM move GROUP BY youth_pid) a \
     FULL JOIN (SELECT youth_pid, count(*) AS k FROM incident GROUP BY youth_pid) b \
     ON a.youth_pid = b.youth_pid",
    "SELECT s.youth_pid, q.quarter, c.n FROM stay s JOIN quarters q \
     ON s.admission_date <= q.last_day AND COALESCE(s.discharge_date, q.last_day) >= q.first_day \
     JOIN LATERAL (SELECT count(*) AS n FROM move mv WHERE mv.youth_pid = s.youth_pid) c ON true",
    "SELECT youth_pid, quarter FROM (SELECT s.youth_pid, q.quarter, row_number() OVER \
     (PARTITION BY s.youth_pid ORDER BY s.admission_date, s.stay_id, q.quarter) AS rn \
     FROM stay s JOIN quarters q ON s.admission_date <= q.last_day \
     AND COALESCE(s.discharge_date, q.last_day) >= q.first_day) t WHERE rn = 1",
    "SELECT DISTINCT ON (s.youth_pid) s.youth_pid, q.quarter FROM stay s JOIN quarters q \
     ON s.admission_date <= q.last_day AND COALESCE(s.discharge_date, q.last_day) >= q.first_day \
     ORDER BY s.youth_pid, s.admission_date, s.stay_id, q.quarter",
    "SELECT m.youth_pid, lag(m.measure_type) OVER (PARTITION BY m.youth_pid \
     ORDER BY m.start_ts, m.measure_id) AS previous FROM restrictive_measure m",
];

#[test]
fn the_newly_accepted_forms_keep_each_youths_rows_apart() {
    runtime().block_on(async {
        let ctx = contract::planning_context().expect("context");
        for sql in ACCEPTED_FORMS {
            let plan = ctx.sql(sql).await.expect("plans");
            policies::stability::check(plan.logical_plan(), "youth_pid")
                .unwrap_or_else(|e| panic!("refused: {e}\n{sql}"));
            let mut nonempty = 0;
            for seed in 0..SEEDS {
                let changes = foreign_changes(sql, "youth_pid", seed).await;
                assert!(
                    changes.is_empty(),
                    "{sql} (seed {seed}): adding one youth changed other youths' rows: {changes:?}"
                );
                nonempty += usize::from(!run(sql, "youth_pid", &base(seed)).await.is_empty());
            }
            assert!(
                nonempty as u64 >= SEEDS / 2,
                "{sql}: too few non-empty outputs"
            );
        }
    });
}

/// Queries the check refuses do break the property, and the harness sees it: it is not a test
/// that cannot fail.
#[test]
fn the_harness_catches_queries_the_check_refuses() {
    let unstable = [
        // Every youth's row depends on whether any youth had a suicide incident in the quarter.
        "SELECT s.youth_pid, q.quarter FROM stay s JOIN quarters q \
         ON s.admission_date <= q.last_day AND COALESCE(s.discharge_date, q.last_day) >= q.first_day \
         WHERE NOT EXISTS (SELECT 1 FROM incident i WHERE i.type = 'suicide' \
           AND CAST(i.incident_ts AS DATE) BETWEEN q.first_day AND q.last_day)",
        // Join on a non-unit key: youths sharing a stay key meet.
        "SELECT s.youth_pid, mv.move_type FROM stay s JOIN move mv ON mv.stay_id = s.stay_id",
        // A window ordered across youths.
        "SELECT youth_pid, rn FROM (SELECT youth_pid, \
         row_number() OVER (ORDER BY admission_date, stay_id, youth_pid) AS rn FROM stay) t",
    ];
    runtime().block_on(async {
        let ctx = contract::planning_context().expect("context");
        for sql in unstable {
            let plan = ctx.sql(sql).await.expect("plans");
            assert!(
                policies::stability::check(plan.logical_plan(), "youth_pid").is_err(),
                "the check must refuse {sql}"
            );
            let mut caught = false;
            for seed in 0..SEEDS {
                caught |= !foreign_changes(sql, "youth_pid", seed).await.is_empty();
            }
            assert!(caught, "the harness never saw the breach in {sql}");
        }
    });
}

/// Order-dependent picks the check refuses. Their breach needs rows to arrive in another order
/// when a youth is added (a hash join's partitions, several batches); the harness's small
/// single-batch tables keep the order, so it does not reproduce it (it saw none over these
/// seeds), and the refusal rests on the argument in DESIGN_NOTES. Their ordered forms are in
/// [`ACCEPTED_FORMS`] and keep the property.
#[test]
fn order_dependent_picks_are_refused() {
    let ordered_with_ties = [
        "SELECT youth_pid, quarter FROM (SELECT s.youth_pid, q.quarter, row_number() OVER \
         (PARTITION BY s.youth_pid ORDER BY s.admission_date) AS rn FROM stay s JOIN move mv \
         ON mv.youth_pid = s.youth_pid JOIN quarters q ON mv.move_date BETWEEN q.first_day AND q.last_day) t \
         WHERE rn = 1",
        "SELECT youth_pid, quarter FROM (SELECT s.youth_pid, q.quarter, row_number() OVER \
         (PARTITION BY s.youth_pid) AS rn FROM stay s JOIN quarters q ON s.admission_date <= q.last_day \
         AND COALESCE(s.discharge_date, q.last_day) >= q.first_day) t WHERE rn = 1",
        "SELECT DISTINCT ON (s.youth_pid) s.youth_pid, q.quarter FROM stay s JOIN quarters q \
         ON s.admission_date <= q.last_day AND COALESCE(s.discharge_date, q.last_day) >= q.first_day",
    ];
    runtime().block_on(async {
        let ctx = contract::planning_context().expect("context");
        for sql in ordered_with_ties {
            let plan = ctx.sql(sql).await.expect("plans");
            assert!(
                policies::stability::check(plan.logical_plan(), "youth_pid").is_err(),
                "the check must refuse {sql}"
            );
        }
    });
}
