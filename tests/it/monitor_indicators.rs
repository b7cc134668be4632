//! The monitor's focus-point indicators (individual tailoring, TLS waiting time, readmission,
//! school attendance, annual suicide figures, measures by route) over `stroom synth` records: the
//! node's exact cells equal a plain computation over the same Parquet files, written here without
//! DataFusion or the catalog's SQL.

use crate::support::*;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use node::evaluate::Bounding;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One table's columns as plain vectors, row-aligned.
struct Table {
    batches: Vec<RecordBatch>,
}

impl Table {
    fn read(dir: &Path, name: &str) -> Table {
        let file = std::fs::File::open(dir.join(format!("{name}.parquet"))).expect(name);
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("parquet")
            .build()
            .expect("reader");
        Table {
            batches: reader.map(|b| b.expect("batch")).collect(),
        }
    }

    fn strs(&self, col: &str) -> Vec<Option<String>> {
        let mut out = Vec::new();
        for b in &self.batches {
            let a = cast(b.column_by_name(col).expect(col), &DataType::Utf8).expect("utf8");
            let a = a.as_string::<i32>();
            out.extend((0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i).to_string())));
        }
        out
    }

    /// Integers, dates (days since 1970) and timestamps (microseconds) alike.
    fn ints(&self, col: &str) -> Vec<Option<i64>> {
        let mut out = Vec::new();
        for b in &self.batches {
            let raw = b.column_by_name(col).expect(col);
            let a = match raw.data_type() {
                DataType::Date32 => {
                    cast(&cast(raw, &DataType::Int32).expect("i32"), &DataType::Int64)
                }
                _ => cast(raw, &DataType::Int64),
            }
            .expect("i64");
            let a = a.as_primitive::<Int64Type>();
            out.extend((0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i))));
        }
        out
    }

    fn bools(&self, col: &str) -> Vec<bool> {
        let mut out = Vec::new();
        for b in &self.batches {
            let a = b.column_by_name(col).expect(col).as_boolean().clone();
            out.extend((0..a.len()).map(|i| a.is_valid(i) && a.value(i)));
        }
        out
    }
}

fn day(y: i32, m: u32, d: u32) -> i64 {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
    (chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap() - epoch).num_days()
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The node's exact cells of `id` over `period`, by key joined with '|'.
async fn node_cells(
    node: &node::Node,
    tables: &node::tables::Tables,
    id: &str,
    period: &str,
) -> BTreeMap<String, i64> {
    let ind = node
        .catalog
        .get(id)
        .unwrap_or_else(|| panic!("{id} in the catalog"));
    let query = ind.query().expect("a query indicator");
    let cells = node::evaluate::cells(tables, query, &period.parse().unwrap(), Bounding::Exact)
        .await
        .unwrap_or_else(|e| panic!("{id}: {e}"));
    let measure = query.aggregate.measures()[0].name();
    let values = cells.measure(measure).expect("measure");
    cells
        .keys
        .iter()
        .zip(values)
        .map(|(k, v)| (k.join("|"), *v))
        .collect()
}

/// Only the non-zero cells, to compare with a computation that never produces zeros.
fn nonzero(cells: BTreeMap<String, i64>) -> BTreeMap<String, i64> {
    cells.into_iter().filter(|(_, v)| *v != 0).collect()
}

#[tokio::test]
async fn focus_point_indicators_equal_a_plain_computation_over_the_records() {
    let fixture = federation_fixture(1);
    let dir = fixture.path();
    let cfg = node::config::NodeConfig::load(&node_config(dir, "P01", 5.0, "")).expect("config");
    let node = node::Node::open(cfg).await.expect("node");
    let tables = node.tables().await.expect("tables");
    let data = dir.join("P01");
    let (q_first, q_last) = (day(2024, 7, 1), day(2024, 9, 30));
    let in_q = |d: i64| (q_first..=q_last).contains(&d);
    const Q: &str = "2024Q3";

    // Individual tailoring: youths with a care plan in the quarter, by who took part.
    let plans = Table::read(&data, "care_plan");
    let (pids, dates) = (plans.strs("youth_pid"), plans.ints("plan_date"));
    for (column, id) in [
        (
            "youth_participated",
            "maatwerk.youths_plan_youth_participated",
        ),
        (
            "parents_participated",
            "maatwerk.youths_plan_parents_participated",
        ),
    ] {
        let took_part = plans.bools(column);
        let youths: BTreeSet<&String> = (0..pids.len())
            .filter(|&i| took_part[i] && dates[i].is_some_and(in_q))
            .filter_map(|i| pids[i].as_ref())
            .collect();
        assert!(
            youths.len() > 5,
            "{id}: too few youths to test ({})",
            youths.len()
        );
        let expected = BTreeMap::from([(Q.to_string(), youths.len() as i64)]);
        assert_eq!(node_cells(&node, &tables, id, Q).await, expected, "{id}");
    }

    // TLS waiting time: days from request to admission, over the histogram's bins.
    let stays = Table::read(&data, "stay");
    let (s_pid, adm, dis, tls) = (
        stays.strs("youth_pid"),
        stays.ints("admission_date"),
        stays.ints("discharge_date"),
        stays.ints("tls_request_date"),
    );
    let edges = [0, 7, 14, 21, 28, 35, 42, 49, 56, 63, 91, 182, 365];
    let labels = policies::indicator::bin_labels(&edges);
    let mut waits = BTreeMap::new();
    for (a, t) in adm.iter().zip(&tls) {
        let (Some(a), Some(t)) = (*a, *t) else {
            continue;
        };
        if in_q(a) {
            let wait = a - t;
            let bin = edges[1..].iter().filter(|e| **e <= wait).count();
            *waits.entry(format!("{Q}|{}", labels[bin])).or_insert(0) += 1;
        }
    }
    assert!(waits.values().sum::<i64>() > 5, "{waits:?}");
    assert_eq!(
        nonzero(node_cells(&node, &tables, "tls.wait_histogram", Q).await),
        waits
    );

    // Admissions, and those within 365 days of an earlier discharge of the same youth.
    let admissions = (0..adm.len()).filter(|&i| adm[i].is_some_and(in_q)).count() as i64;
    let readmissions = (0..adm.len())
        .filter(|&i| adm[i].is_some_and(in_q))
        .filter(|&i| {
            let a = adm[i].unwrap();
            (0..adm.len())
                .any(|j| s_pid[j] == s_pid[i] && dis[j].is_some_and(|d| d <= a && a - d <= 365))
        })
        .count() as i64;
    assert!(readmissions > 0, "the synthetic records have readmissions");
    assert_eq!(
        node_cells(&node, &tables, "care.admissions", Q).await,
        BTreeMap::from([(Q.to_string(), admissions)])
    );
    assert_eq!(
        node_cells(&node, &tables, "readmission.within_12m", Q).await,
        BTreeMap::from([(Q.to_string(), readmissions)])
    );

    // School attendance: planned and attended hours in the quarter's months.
    let edu = Table::read(&data, "education");
    let (month, planned, attended) = (
        edu.ints("month"),
        edu.ints("planned_hours"),
        edu.ints("attended_hours"),
    );
    let in_quarter: Vec<usize> = (0..month.len())
        .filter(|&i| month[i].is_some_and(in_q))
        .collect();
    let total = |v: &[Option<i64>]| in_quarter.iter().map(|&i| v[i].unwrap_or(0)).sum::<i64>();
    let (planned, attended) = (total(&planned), total(&attended));
    assert!(
        0 < attended && attended < planned,
        "{attended} of {planned}"
    );
    assert_eq!(
        node_cells(&node, &tables, "education.hours_planned", Q).await,
        BTreeMap::from([(Q.to_string(), planned)])
    );
    assert_eq!(
        node_cells(&node, &tables, "education.hours_attended", Q).await,
        BTreeMap::from([(Q.to_string(), attended)])
    );

    // Suicide figures per calendar year only: youths with an attempt, youths who died.
    let incidents = Table::read(&data, "incident");
    let (i_pid, ts, kind) = (
        incidents.strs("youth_pid"),
        incidents.ints("incident_ts"),
        incidents.strs("type"),
    );
    let (y_first, y_last) = (day(2024, 1, 1), day(2024, 12, 31));
    for (code, id) in [
        ("suicidepoging", "suicide.youths_with_attempt"),
        ("suicide", "suicide.suicides"),
    ] {
        let youths: BTreeSet<&String> = (0..i_pid.len())
            .filter(|&i| kind[i].as_deref() == Some(code))
            .filter(|&i| {
                ts[i].is_some_and(|t| (y_first..=y_last).contains(&t.div_euclid(MICROS_PER_DAY)))
            })
            .filter_map(|i| i_pid[i].as_ref())
            .collect();
        let expected = BTreeMap::from([("2024".to_string(), youths.len() as i64)]);
        assert_eq!(
            node_cells(&node, &tables, id, "2024Q1:2024Q4").await,
            expected,
            "{id}"
        );
        // A quarter covers no whole year: the public year domain is empty, no cell exists.
        assert!(node_cells(&node, &tables, id, Q).await.is_empty(), "{id}");
    }

    // Measures by type and route: distinct youths per (type, route).
    let measures = Table::read(&data, "restrictive_measure");
    let (m_pid, start, mtype, route) = (
        measures.strs("youth_pid"),
        measures.ints("start_ts"),
        measures.strs("measure_type"),
        measures.strs("route"),
    );
    let mut by_type_route: BTreeMap<String, BTreeSet<&String>> = BTreeMap::new();
    for (i, pid) in m_pid.iter().enumerate() {
        if start[i].is_some_and(|t| in_q(t.div_euclid(MICROS_PER_DAY))) {
            let key = format!(
                "{Q}|{}|{}",
                mtype[i].as_deref().unwrap_or_default(),
                route[i].as_deref().unwrap_or_default()
            );
            by_type_route.entry(key).or_default().extend(pid.as_ref());
        }
    }
    let expected: BTreeMap<String, i64> = by_type_route
        .into_iter()
        .map(|(k, v)| (k, v.len() as i64))
        .collect();
    assert!(
        expected.keys().any(|k| k.ends_with("noodsituatie"))
            && expected.keys().any(|k| k.ends_with("hulpverleningsplan")),
        "{expected:?}"
    );
    assert_eq!(
        nonzero(node_cells(&node, &tables, "measures.youths_by_type_and_route", Q).await),
        expected
    );
}
