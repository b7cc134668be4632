//! Criterion micro-benchmarks of the hot paths a run goes through: per-unit contribution bounding
//! in DataFusion, discrete noise from OpenDP, the Arrow IPC answer encoded by a node and decoded by
//! the coordinator, and the coordinator's combination of N answers.
//!
//! cargo bench --bench hot_paths            (figures in BENCHMARKS.md)

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use node::evaluate::{Bounding, Cells};
use node::tables::Tables;
use policies::wire::{Answer, AnswerMeta};
use std::hint::black_box;
use std::sync::Arc;

const QUARTERS: [&str; 4] = ["2024Q1", "2024Q2", "2024Q3", "2024Q4"];
const QUESTIONS: [&str; 4] = ["Q1", "Q2", "Q3", "Q4"];

/// Panel responses: `units` respondents with a heavy-tailed number of rows each (1 to 40), spread
/// over the quarters and questions, so bounding has rows and cells to drop.
fn panel(units: usize) -> RecordBatch {
    let schema = policies::cdm::table("panel_response")
        .map(|t| t.schema())
        .expect("panel table");
    let (mut unit, mut quarter, mut question, mut score) = (vec![], vec![], vec![], vec![]);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for u in 0..units {
        let rows = 1 + (next() % 40) * (next() % 40) / 40;
        for _ in 0..rows {
            unit.push(format!("R{u:07}"));
            quarter.push(QUARTERS[(next() % 4) as usize]);
            question.push(QUESTIONS[(next() % 4) as usize]);
            score.push((next() % 11) as i64);
        }
    }
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(unit)),
            Arc::new(StringArray::from_iter_values(
                quarter.iter().map(|_| "jongere"),
            )),
            Arc::new(StringArray::from_iter_values(quarter)),
            Arc::new(StringArray::from_iter_values(question)),
            Arc::new(Int64Array::from(score)),
        ],
    )
    .expect("batch")
}

/// A panel indicator; counts select no value column (the contract refuses extra columns).
fn indicator(aggregate: &str) -> policies::Indicator {
    let select = if aggregate.contains("value =") {
        "SELECT respondent_pid, quarter, question_id, score FROM panel_response"
    } else {
        "SELECT respondent_pid, quarter, question_id FROM panel_response"
    };
    let text = format!(
        r#"id = "bench.panel"
theme = "ervaringen"
title = {{ nl = "b", en = "b" }}
definition = {{ nl = "b", en = "b" }}
privacy_unit = "respondent_pid"
sql = "{select}"
group_by = {{ quarter = "period", question_id = ["Q1", "Q2", "Q3", "Q4"] }}
aggregate = {aggregate}
cost = {{ rho = 0.5 }}
"#
    );
    policies::indicator::parse(std::path::Path::new("bench"), &text).expect("bench indicator")
}

fn kinds() -> Vec<(&'static str, policies::Indicator)> {
    vec![
        (
            "count_units",
            indicator(r#"{ kind = "count_units", max_groups_per_unit = 4 }"#),
        ),
        (
            "count_rows",
            indicator(
                r#"{ kind = "count_rows", max_groups_per_unit = 4, max_rows_per_group = 3 }"#,
            ),
        ),
        (
            "sum",
            indicator(
                r#"{ kind = "sum", value = "score", lower = 0, upper = 10, max_groups_per_unit = 4 }"#,
            ),
        ),
        (
            "mean",
            indicator(
                r#"{ kind = "mean", value = "score", lower = 0, upper = 10, max_groups_per_unit = 4 }"#,
            ),
        ),
        (
            "histogram",
            indicator(
                r#"{ kind = "histogram", value = "score", edges = [0, 3, 6, 9], max_groups_per_unit = 4, max_rows_per_group = 3 }"#,
            ),
        ),
    ]
}

fn period() -> policies::Period {
    "2024Q1:2024Q4".parse().expect("period")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Bounding and aggregation over the full public key set (the node's pre-noise path).
fn bounding(c: &mut Criterion) {
    let rt = runtime();
    let tables = rt
        .block_on(Tables::in_memory(vec![("panel_response", panel(20_000))]))
        .expect("tables");
    let mut group = c.benchmark_group("bounding_20k_units");
    group.sample_size(20);
    for (kind, ind) in kinds() {
        let query = ind.query().expect("query").clone();
        group.bench_function(kind, |b| {
            b.to_async(&rt).iter(|| async {
                node::evaluate::cells(&tables, &query, &period(), Bounding::Bounded)
                    .await
                    .expect("cells")
            })
        });
    }
    group.finish();
}

/// Discrete Gaussian (zCDP) and discrete Laplace (pure DP) noise over n cells, measurement
/// construction and OpenDP's privacy map included, as a release does it.
fn noise(c: &mut Criterion) {
    let ind = kinds().remove(0).1;
    let query = ind.query().expect("query");
    let gaussian = query.measures(4).remove(0);
    let mut laplace = gaussian.clone();
    laplace.cost = policies::sensitivity::MeasureCost::Epsilon(1.0);
    let mut group = c.benchmark_group("noise");
    for n in [16usize, 1_000] {
        let exact: Vec<i64> = (0..n as i64).collect();
        group.bench_with_input(BenchmarkId::new("discrete_gaussian", n), &exact, |b, e| {
            b.iter(|| node::noise::add_noise(&gaussian, black_box(e)).expect("noise"))
        });
        group.bench_with_input(BenchmarkId::new("discrete_laplace", n), &exact, |b, e| {
            b.iter(|| node::noise::add_noise(&laplace, black_box(e)).expect("noise"))
        });
    }
    group.finish();
}

/// One node's answer for the panel's mean indicator: cells, noise and metadata.
fn answer(node_id: &str, cells: &Cells, ind: &policies::Indicator) -> Answer {
    let query = ind.query().expect("query");
    let measures = query.measures(4);
    let noisy = node::noise::noisy_measures(&measures, cells).expect("noise");
    let batch = node::release::answer_batch(cells, &measures, &noisy).expect("batch");
    let meta = AnswerMeta {
        node_id: node_id.to_string(),
        indicator: ind.id.clone(),
        content_hash: ind.content_hash.clone(),
        period: period(),
        snapshot: "bench".into(),
        release_key: format!("bench-{node_id}"),
        aggregate: query.aggregate.kind().to_string(),
        group_columns: cells.group_columns.clone(),
        measures: measures.iter().map(node::release::noise_meta).collect(),
        rho: query.cost.rho(),
        budget_period: "2024".into(),
        released_at: "2024-12-31T00:00:00Z".into(),
        secure: None,
    };
    Answer { batch, meta }
}

/// The bounded cells of `ind` over `units` panel respondents.
fn bounded_cells(rt: &tokio::runtime::Runtime, units: usize, ind: &policies::Indicator) -> Cells {
    let tables = rt
        .block_on(Tables::in_memory(vec![("panel_response", panel(units))]))
        .expect("tables");
    rt.block_on(node::evaluate::cells(
        &tables,
        ind.query().expect("query"),
        &period(),
        Bounding::Bounded,
    ))
    .expect("cells")
}

/// Arrow IPC: a node encodes its answer; the coordinator decodes it.
fn arrow_ipc(c: &mut Criterion) {
    let rt = runtime();
    let (_, ind) = kinds().remove(4);
    let cells = bounded_cells(&rt, 2_000, &ind);
    let answer = answer("P01", &cells, &ind);
    let bytes = answer.encode().expect("encode");
    let mut group = c.benchmark_group("arrow_ipc_histogram_answer");
    group.bench_function("encode", |b| {
        b.iter(|| black_box(&answer).encode().expect("encode"))
    });
    group.bench_function("decode", |b| {
        b.iter(|| Answer::decode(black_box(&bytes)).expect("decode"))
    });
    group.finish();
}

/// The coordinator's combination of N answers in DataFusion.
fn combination(c: &mut Criterion) {
    let rt = runtime();
    let (_, ind) = kinds().remove(3);
    let cells = bounded_cells(&rt, 2_000, &ind);
    let mut group = c.benchmark_group("combine_mean_answers");
    group.sample_size(20);
    for n in [11usize, 100, 1_000] {
        let answers: Vec<Answer> = (0..n)
            .map(|i| answer(&format!("P{:02}", i + 1), &cells, &ind))
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &answers, |b, a| {
            b.to_async(&rt)
                .iter(|| async { coordinator::national::combine(a, n).await.expect("combine") })
        });
    }
    group.finish();
}

criterion_group!(benches, bounding, noise, arrow_ipc, combination);
criterion_main!(benches);
