//! The node's HTTPS API, against a real `stroom node` process on loopback.

use crate::support::*;
use policies::wire::Answer;

#[tokio::test]
async fn evaluate_answers_arrow_with_scales_and_spend_and_repeats_are_idempotent() {
    let dir = federation_fixture(1);
    let cfg = node_config(dir.path(), "P01", 5.0, "");
    let node = NodeProcess::start(&cfg);
    let c = client(dir.path());

    let first = evaluate(&c, &node.url, "measures.youths_by_type", "2024Q1:2024Q2").await;
    assert_eq!(first.status(), 200);
    assert_eq!(
        first.headers()["content-type"],
        "application/vnd.apache.arrow.stream"
    );
    assert_eq!(first.headers()["x-stroom-replayed"], "false");
    assert!(first.headers().contains_key("x-request-id"));
    let bytes = first.bytes().await.unwrap();
    let Answer { batch, meta } = Answer::decode(&bytes).expect("arrow answer");
    assert_eq!(meta.node_id, "P01");
    assert_eq!(meta.rho, 0.1);
    assert_eq!(meta.group_columns, ["quarter", "measure_type"]);
    // Every public key: 2 quarters × 14 measure types, and nothing else.
    assert_eq!(batch.num_rows(), 2 * 14);
    let names: Vec<_> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["quarter", "measure_type", "count", "count_scale"]);
    let m = &meta.measures[0];
    assert_eq!(m.mechanism, "discrete_gaussian");
    assert_eq!((m.per_cell_bound, m.cells_per_unit), (1, 6));
    assert!((m.scale - (6f64).sqrt() / (0.2f64).sqrt()).abs() < 1e-6);

    let b = budget(&c, &node.url).await;
    assert_eq!(b["releases"], 1);
    assert!((b["rho_spent"].as_f64().unwrap() - 0.1).abs() < 1e-9);

    // The same request again: the stored answer, byte for byte, and no new spend.
    let again = evaluate(&c, &node.url, "measures.youths_by_type", "2024Q1:2024Q2").await;
    assert_eq!(again.headers()["x-stroom-replayed"], "true");
    assert_eq!(again.bytes().await.unwrap(), bytes);
    let b = budget(&c, &node.url).await;
    assert_eq!(b["releases"], 1);
    assert!((b["rho_spent"].as_f64().unwrap() - 0.1).abs() < 1e-9);

    // A different period is a different release.
    let other = evaluate(&c, &node.url, "measures.youths_by_type", "2024Q3").await;
    assert_eq!(other.status(), 200);
    assert_eq!(budget(&c, &node.url).await["releases"], 2);
}

#[tokio::test]
async fn a_request_beyond_the_budget_is_refused_and_releases_nothing() {
    let dir = federation_fixture(1);
    let cfg = node_config(dir.path(), "P01", 0.12, "");
    let node = NodeProcess::start(&cfg);
    let c = client(dir.path());
    for ind in ["care.unique_youths", "care.youth_days"] {
        assert_eq!(
            evaluate(&c, &node.url, ind, "2024Q1").await.status(),
            200,
            "{ind}"
        );
    }
    let refused = evaluate(&c, &node.url, "discharge.count", "2024Q1").await;
    assert_eq!(refused.status(), 403);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "budget_exhausted");
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains("costs ρ=0.05") && msg.contains("nothing was released"),
        "{msg}"
    );
    let b = budget(&c, &node.url).await;
    assert_eq!(b["releases"], 2);
    assert!((b["rho_spent"].as_f64().unwrap() - 0.10).abs() < 1e-9);
    assert!(b["rho_spent"].as_f64().unwrap() <= b["rho_budget"].as_f64().unwrap());
    // Already released answers stay available: replaying costs nothing.
    let replay = evaluate(&c, &node.url, "care.unique_youths", "2024Q1").await;
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.headers()["x-stroom-replayed"], "true");
}

#[tokio::test]
async fn bad_requests_get_specific_errors_and_change_nothing() {
    let dir = federation_fixture(1);
    let cfg = node_config(dir.path(), "P01", 5.0, "");
    let node = NodeProcess::start(&cfg);
    let c = client(dir.path());
    let post = |body: String| {
        let c = c.clone();
        let url = format!("{}/v1/evaluate", node.url);
        async move {
            let r = c
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let v: serde_json::Value = r.json().await.unwrap();
            (
                status,
                v["error"].as_str().unwrap().to_string(),
                v["message"].as_str().unwrap().to_string(),
            )
        }
    };
    let cases = [
        (
            r#"{"indicator":"no.such","period":"2024Q1"}"#.to_string(),
            404,
            "unknown_indicator",
            "no.such",
        ),
        (
            r#"{"indicator":"care.unique_youths","period":"2019Q1"}"#.into(),
            422,
            "period_outside_data",
            "2022Q1:2024Q4",
        ),
        (
            r#"{"indicator":"care.unique_youths","period":"2024Q7"}"#.into(),
            422,
            "invalid_request",
            "2024Q7",
        ),
        (
            r#"{"indicator":"seclusion.rate_per_1000_days","period":"2024Q1"}"#.into(),
            422,
            "derived_indicator",
            "derived",
        ),
        (
            r#"{"indicator":"care.unique_youths","period":"2024Q1","content_hash":"abc"}"#.into(),
            409,
            "content_hash_mismatch",
            "abc",
        ),
        (
            r#"{"indicator":"care.unique_youths","period":"2024Q1","sql":"SELECT *"}"#.into(),
            422,
            "invalid_request",
            "unknown field",
        ),
        ("{not json".into(), 400, "invalid_request", "JSON"),
        (
            format!(
                r#"{{"indicator":"care.unique_youths","period":"2024Q1","content_hash":"{}"}}"#,
                "a".repeat(70_000)
            ),
            413,
            "body_too_large",
            "65536",
        ),
    ];
    for (body, status, code, mention) in cases {
        let (s, e, m) = post(body).await;
        assert_eq!((s, e.as_str()), (status, code), "{m}");
        assert!(
            m.contains(mention),
            "message {m:?} should mention {mention:?}"
        );
    }
    let b = budget(&c, &node.url).await;
    assert_eq!(b["releases"], 0);
    assert_eq!(b["rho_spent"], 0.0);
    let missing = c.get(format!("{}/v1/rows", node.url)).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn no_row_leaves_the_node() {
    let dir = federation_fixture(1);
    let cfg = node_config(dir.path(), "P01", 50.0, "");
    let node = NodeProcess::start(&cfg);
    let c = client(dir.path());
    // Every youth pseudonym of the provider.
    let ctx = datafusion::prelude::SessionContext::new();
    let youth = dir.path().join("P01/youth.parquet");
    ctx.register_parquet("youth", youth.to_str().unwrap(), Default::default())
        .await
        .unwrap();
    let batches = ctx
        .sql("SELECT youth_pid FROM youth")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut pids = Vec::new();
    for b in &batches {
        let col = datafusion::arrow::compute::cast(
            b.column(0),
            &datafusion::arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let a = datafusion::arrow::array::AsArray::as_string::<i32>(&col);
        pids.extend(a.iter().flatten().map(String::from));
    }
    assert!(pids.len() > 100);
    let catalog = policies::Catalog::load(&catalog_dir()).await.unwrap();
    for ind in catalog.indicators.values().filter(|i| i.query().is_some()) {
        let r = evaluate(&c, &node.url, &ind.id, "2024Q1:2024Q4").await;
        assert_eq!(r.status(), 200, "{}", ind.id);
        let bytes = r.bytes().await.unwrap();
        let Answer { batch, meta } = Answer::decode(&bytes).unwrap();
        let q = ind.query().unwrap();
        // Only public keys and noisy aggregates: exactly one row per public key.
        assert_eq!(batch.num_rows() as i64, q.cell_count(4), "{}", ind.id);
        assert!(
            !meta
                .group_columns
                .iter()
                .any(|c| c == "youth_pid" || c == "respondent_pid")
        );
        let text = String::from_utf8_lossy(&bytes);
        for pid in &pids {
            assert!(
                !text.contains(pid.as_str()),
                "{} leaked a pseudonym",
                ind.id
            );
        }
    }
}

#[tokio::test]
async fn health_and_metrics_are_served() {
    let dir = federation_fixture(1);
    let cfg = node_config(dir.path(), "P01", 5.0, "");
    let node = NodeProcess::start(&cfg);
    let c = client(dir.path());
    let h: serde_json::Value = get_json(&c, format!("{}/healthz", node.url)).await;
    assert_eq!(h["status"], "ok");
    evaluate(&c, &node.url, "care.unique_youths", "2024Q1").await;
    let m = c
        .get(format!("{}/metrics", node.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("stroom_node_evaluations_total{node=\"P01\",outcome=\"released\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("stroom_node_rho_spent{node=\"P01\"} 0.05"),
        "{m}"
    );
}

/// Budgets belong to the data's period: a release is charged to every data year it covers, and
/// the same records queried again in a later calendar year draw on the same data-year budget.
/// In-process, with the node's clock set to 2025 and then to 2026 over one ledger.
#[tokio::test]
async fn old_data_queried_in_a_later_calendar_year_draws_on_the_same_data_year_budget() {
    use chrono::TimeZone;
    use node::clock::FixedClock;
    use std::sync::Arc;
    let dir = federation_fixture(1);
    let cfg = node_config(dir.path(), "P01", 0.2, "");
    let open = |year: i32| {
        let cfg = node::config::NodeConfig::load(&cfg).expect("config");
        let clock = FixedClock(chrono::Utc.with_ymd_and_hms(year, 6, 1, 0, 0, 0).unwrap());
        async move {
            Arc::new(
                node::Node::open_with_clock(cfg, Arc::new(clock))
                    .await
                    .expect("node"),
            )
        }
    };
    let ask = |indicator: &str, period: &str| policies::wire::EvaluateRequest {
        indicator: indicator.into(),
        period: period.parse().unwrap(),
        content_hash: None,
        catalog_version: None,
        secure: None,
    };
    let spent = |b: &policies::wire::BudgetStatus, period: &str| {
        b.periods
            .iter()
            .find(|p| p.period == period)
            .map_or(0.0, |p| p.rho_spent)
    };

    let in_2025 = open(2025).await;
    // ρ 0.05 each: one over 2024Q1, one spanning 2023Q4:2024Q1 (charged to both years).
    node::release::evaluate(&in_2025, &ask("care.unique_youths", "2024Q1"))
        .await
        .expect("first release");
    node::release::evaluate(&in_2025, &ask("discharge.count", "2023Q4:2024Q1"))
        .await
        .expect("spanning release");
    let b = in_2025.budget().expect("budget");
    assert!((spent(&b, "2023") - 0.05).abs() < 1e-9, "{b:?}");
    assert!((spent(&b, "2024") - 0.10).abs() < 1e-9, "{b:?}");
    assert!((b.rho_spent_total - 0.10).abs() < 1e-9, "{b:?}");
    assert_eq!(b.budget_period, "2024");
    drop(in_2025);

    // A year later: 2024's records have no fresh budget.
    let in_2026 = open(2026).await;
    node::release::evaluate(&in_2026, &ask("care.youth_days", "2024Q2"))
        .await
        .expect("third release over 2024");
    let refused = node::release::evaluate(&in_2026, &ask("measures.count", "2024Q3")).await;
    let e = refused
        .err()
        .expect("2024 is at 0.15 of 0.2; ρ 0.1 more is refused");
    assert_eq!(e.code(), "budget_exhausted", "{e}");
    assert!(e.to_string().contains("data period 2024"), "{e}");
    // 2023's records still have room.
    node::release::evaluate(&in_2026, &ask("measures.count", "2023Q3"))
        .await
        .expect("a release over 2023 fits 2023's budget");
    let b = in_2026.budget().expect("budget");
    assert!((spent(&b, "2023") - 0.15).abs() < 1e-9, "{b:?}");
    assert!((spent(&b, "2024") - 0.15).abs() < 1e-9, "{b:?}");
    assert_eq!(b.releases, 4);
}
