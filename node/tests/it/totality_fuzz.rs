//! The totality check's promise, tested by running the node's own evaluation: every accepted
//! catalog query, over random records full of edge values the data model allows (NULLs where it
//! allows them, zeros, the integer extremes, the first and last representable days, malformed
//! text), evaluates without an error. A positive control shows the harness catches a query the
//! check refuses.

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use node::evaluate::{self, Bounding};
use node::tables::Tables;
use policies::cdm::{self, ColumnType, TableDef};
use std::sync::Arc;

const SEEDS: u64 = 16;
const YOUTHS: usize = 10;

/// A small deterministic generator (xorshift64*): the test needs spread, not secrecy.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const TEXTS: &[&str] = &[
    "",
    "x",
    "0",
    "-1",
    "2024-13-45",
    "9223372036854775808",
    "NaN",
    "'; --",
    "U0",
    "U1",
    "K1",
    "ééé",
    "2024Q1",
    " ",
    "1e400",
];

fn day(rng: &mut Rng) -> i32 {
    let (first, end) = cdm::DAY_RANGE;
    let edges = [first, end - 1, 0, 19_723, 19_813, 20_088];
    if rng.below(3) == 0 {
        *rng.pick(&edges) as i32
    } else {
        (first + rng.below((end - first) as u64) as i64) as i32
    }
}

fn micros(rng: &mut Rng) -> i64 {
    let (first, end) = cdm::DAY_RANGE;
    let edges = [first * 86_400_000_000, end * 86_400_000_000 - 1, 0];
    if rng.below(3) == 0 {
        *rng.pick(&edges)
    } else {
        day(rng) as i64 * 86_400_000_000 + rng.below(86_400_000_000) as i64
    }
}

fn batch(rng: &mut Rng, t: &TableDef) -> RecordBatch {
    let rows = match t.unit_column() {
        _ if t.name == "youth" => YOUTHS,
        Some(_) => YOUTHS * 3,
        None => 6,
    };
    let youth = |r: usize| format!("Y{}", r % YOUTHS);
    let null = |rng: &mut Rng, nullable: bool| nullable && rng.below(4) == 0;
    let columns: Vec<ArrayRef> = t
        .columns
        .iter()
        .map(|c| -> ArrayRef {
            match c.ty {
                ColumnType::Utf8 => {
                    let mut b = StringBuilder::new();
                    for r in 0..rows {
                        if null(rng, c.nullable) {
                            b.append_null();
                        } else if c.name == "youth_pid" || c.name == "respondent_pid" {
                            b.append_value(youth(r));
                        } else if t.row_key().contains(&c.name) {
                            // Row keys are unique within a unit, as the data model requires.
                            b.append_value(format!("R{r}"));
                        } else if !c.codes.is_empty() {
                            b.append_value(rng.pick(c.codes));
                        } else if c.name == "quarter" {
                            b.append_value(*rng.pick(&["2024Q1", "2024Q4", "1900Q1", "x"]));
                        } else {
                            b.append_value(*rng.pick(TEXTS));
                        }
                    }
                    Arc::new(b.finish())
                }
                ColumnType::Date32 => {
                    let mut b = Date32Builder::new();
                    for _ in 0..rows {
                        if null(rng, c.nullable) {
                            b.append_null();
                        } else {
                            b.append_value(day(rng));
                        }
                    }
                    Arc::new(b.finish())
                }
                ColumnType::Timestamp => {
                    let mut b = TimestampMicrosecondBuilder::new();
                    for _ in 0..rows {
                        if null(rng, c.nullable) {
                            b.append_null();
                        } else {
                            b.append_value(micros(rng));
                        }
                    }
                    Arc::new(b.finish())
                }
                ColumnType::Boolean => {
                    let mut b = BooleanBuilder::new();
                    for _ in 0..rows {
                        if null(rng, c.nullable) {
                            b.append_null();
                        } else {
                            b.append_value(rng.below(2) == 0);
                        }
                    }
                    Arc::new(b.finish())
                }
                ColumnType::Int64 => {
                    let mut b = Int64Builder::new();
                    let edges = [i64::MIN, i64::MAX, 0, -1, 1, i64::MIN + 1];
                    for _ in 0..rows {
                        if null(rng, c.nullable) {
                            b.append_null();
                        } else if rng.below(2) == 0 {
                            b.append_value(*rng.pick(&edges));
                        } else {
                            b.append_value(rng.below(40) as i64);
                        }
                    }
                    Arc::new(b.finish())
                }
            }
        })
        .collect();
    RecordBatch::try_new(t.schema(), columns).expect("a batch of the data model")
}

async fn records(seed: u64) -> Tables {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let tables = cdm::tables();
    let batches: Vec<(&str, RecordBatch)> = tables
        .iter()
        .map(|t| (t.name, batch(&mut rng, t)))
        .collect();
    Tables::in_memory(batches)
        .await
        .expect("the records meet the data model")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime")
}

/// Periods at the edges of what a request may name, and an ordinary one.
fn periods() -> Vec<policies::Period> {
    ["2024Q1", "2024Q1:2024Q4", "1900Q1", "2099Q1:2099Q4"]
        .iter()
        .map(|p| p.parse().expect("period"))
        .collect()
}

#[test]
fn accepted_catalog_queries_never_fail_on_edge_values() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/catalog");
    runtime().block_on(async {
        let catalog = policies::Catalog::load(&dir).await.expect("catalog");
        let mut evaluated = 0;
        for seed in 0..SEEDS {
            let tables = records(seed).await;
            for ind in catalog.indicators.values() {
                let Some(q) = ind.query() else { continue };
                for period in periods() {
                    if q.time_grain() == policies::TimeGrain::Year
                        && !(period.first.q == 1 && period.last.q == 4)
                    {
                        continue;
                    }
                    for bounding in [Bounding::Bounded, Bounding::Exact] {
                        evaluate::cells(&tables, q, &period, bounding)
                            .await
                            .unwrap_or_else(|e| {
                                panic!("{} over {period} (seed {seed}) failed: {e}", ind.id)
                            });
                        evaluated += 1;
                    }
                }
            }
        }
        assert!(evaluated > 1000, "only {evaluated} evaluations");
    });
}

/// The records above do make partial SQL fail, so the test above could fail: a division by a
/// value the records hold as 0, and a cast of malformed text, both refused by the check.
#[test]
fn the_harness_makes_refused_queries_fail() {
    let partial = [
        "SELECT e.youth_pid, e.month AS m, e.attended_hours / e.planned_hours AS v FROM education e",
        "SELECT m.youth_pid, CAST(m.unit_id AS BIGINT) AS v FROM restrictive_measure m",
    ];
    runtime().block_on(async {
        let ctx = policies::contract::planning_context().expect("context");
        for sql in partial {
            let df = ctx.sql(sql).await.expect("plans");
            let state = ctx.state();
            let analyzed = state
                .analyzer()
                .execute_and_check(df.logical_plan().clone(), state.config_options(), |_, _| {})
                .expect("analyses");
            assert!(
                policies::totality::check(&analyzed).is_err(),
                "the check must refuse {sql}"
            );
            let mut failed = false;
            for seed in 0..SEEDS {
                let tables = records(seed).await;
                let period: policies::Period = "2024Q1".parse().expect("period");
                let session = tables.session(&period).expect("session");
                let run = session.sql(sql).await.expect("plans");
                failed |= run.collect().await.is_err();
            }
            assert!(failed, "the records never made {sql} fail");
        }
    });
}
