//! The coordinator as a real process in front of real node processes, all over HTTPS on loopback
//! with mutual TLS toward the nodes: researcher authentication, runs, exact combination, coverage
//! statements, quorum, publication and the public endpoints.

use crate::support::*;
use policies::wire::Answer;

const MTLS: &str = "client_ca = \"certs/ca/ca.crt\"";

fn dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("https://127.0.0.1:{port}")
}

#[tokio::test]
async fn researcher_api_authenticates_runs_combine_exactly_and_publish() {
    let dir = federation_fixture(2);
    let p1 = NodeProcess::start(&node_config(dir.path(), "P01", 5.0, MTLS));
    let p2 = NodeProcess::start(&node_config(dir.path(), "P02", 5.0, MTLS));
    let cfg = coordinator_config(
        dir.path(),
        "coordinator",
        &[("P01", &p1.url), ("P02", &p2.url)],
        "",
    );
    let coordinator = ServerProcess::start_coordinator(&cfg);
    let url = &coordinator.url;
    let c = client(dir.path());
    let body = serde_json::json!({ "indicator": "care.unique_youths", "period": "2024Q1:2024Q2" });

    // Refusals, each with its own status and a body that says why.
    let r = c
        .post(format!("{url}/v1/runs"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"], "unauthorized");
    assert!(e["message"].as_str().unwrap().contains("Bearer"));
    let r = c
        .post(format!("{url}/v1/runs"))
        .bearer_auth("not-a-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"], "forbidden");
    let r = c
        .get(format!("{url}/v1/runs/anything"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(format!("{url}/v1/runs"))
        .bearer_auth(RESEARCHER_TOKEN)
        .json(&serde_json::json!({ "indicator": "no.such", "period": "2024Q1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .post(format!("{url}/v1/runs"))
        .bearer_auth(RESEARCHER_TOKEN)
        .json(&serde_json::json!({ "indicator": "care.unique_youths", "period": "2024Q5" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(format!("{url}/v1/runs"))
        .bearer_auth(RESEARCHER_TOKEN)
        .json(&serde_json::json!({ "indicator": "care.unique_youths", "period": "2024Q1", "sql": "SELECT 1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "unknown fields are refused");

    // A run: done, every record states 2 of 2 providers.
    let run = run_to_completion(&c, url, "care.unique_youths", "2024Q1:2024Q2").await;
    assert_eq!(run["status"], "done", "{run}");
    assert_eq!(run["published"], true);
    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);

    // The national estimate is exactly the sum of the node answers. Asking the nodes again
    // returns their stored releases (no new noise, no new spend).
    let as_coordinator = coordinator_identity_client(dir.path());
    let before = budget(&as_coordinator, &p1.url).await;
    for record in results {
        assert_eq!(record["providers_reporting"], 2);
        assert_eq!(record["providers_total"], 2);
        let quarter = record["period"].as_str().unwrap();
        let mut sum = 0i64;
        for node in [&p1.url, &p2.url] {
            let r = evaluate(&as_coordinator, node, "care.unique_youths", quarter).await;
            assert_eq!(r.status(), 200);
            let batch = Answer::decode(&r.bytes().await.unwrap()).unwrap().batch;
            let counts = batch
                .column_by_name("count")
                .unwrap()
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .unwrap()
                .clone();
            sum += counts.value(0);
        }
        // The sum of the nodes' noisy counts exactly, clamped to a count's range (≥ 0).
        let exact = sum as f64;
        assert_eq!(
            record["estimate"].as_f64().unwrap(),
            exact.max(0.0),
            "{record}"
        );
        assert!(record["ci_low"].as_f64().unwrap() <= exact.max(0.0));
        assert!(record["ci_high"].as_f64().unwrap() > exact);
    }
    let after = budget(&as_coordinator, &p1.url).await;
    assert_eq!(before["rho_spent"], after["rho_spent"]);

    // Under embargo until a reviewer releases the quarter: nothing public, all of it for a
    // token holder (tests/it/publication_round.rs follows the release).
    let public: serde_json::Value = get_json(&c, format!("{url}/v1/indicators")).await;
    assert_eq!(public["indicators"], serde_json::json!([]), "{public}");
    let published: serde_json::Value =
        get_json_as(&c, RESEARCHER_TOKEN, format!("{url}/v1/indicators")).await;
    let ind = &published["indicators"][0];
    assert_eq!(ind["id"], "care.unique_youths");
    assert_eq!(ind["records"].as_array().unwrap().len(), 2);
    assert_eq!(ind["records"][0]["complete"], true);
    let csv = c
        .get(format!("{url}/v1/indicators?format=csv"))
        .bearer_auth(RESEARCHER_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = csv.text().await.unwrap();
    assert!(csv.starts_with("indicator,period,group,estimate"), "{csv}");
    assert_eq!(csv.lines().count(), 3, "{csv}");
    let r = c
        .get(format!("{url}/v1/indicators?format=xml"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let openapi: serde_json::Value = get_json(&c, format!("{url}/openapi.json")).await;
    for path in [
        "/v1/runs",
        "/v1/runs/{id}",
        "/v1/indicators",
        "/v1/budget",
        "/v1/indicators/{indicator}/{period}/interpretation",
        "/v1/tokens",
        "/v1/tokens/{id}/revoke",
        "/v1/proposals",
        "/v1/proposals/{id}",
        "/v1/proposals/{id}/dry-run",
        "/v1/proposals/{id}/approve",
        "/v1/proposals/{id}/reject",
        "/v1/catalog",
        "/v1/catalog/{version}",
        "/openapi.json",
        "/healthz",
        "/metrics",
    ] {
        assert!(openapi["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    let metrics = c
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("stroom_coordinator_runs{status=\"done\"} 1"),
        "{metrics}"
    );
    // What an operator pages on: node reachability, request rate and latency per route,
    // certificate expiry (the generated certificates run for years, not days).
    for needle in [
        "stroom_coordinator_node_up{node=\"P01\"} 1",
        "stroom_coordinator_http_requests_total{method=\"POST\",route=\"/v1/runs\",status=\"202\"}",
        "stroom_coordinator_http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/runs/{id}\",le=\"+Inf\"}",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }
    let expiry: i64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("stroom_coordinator_certificate_not_after_seconds{cert=\"coordinator\"}")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("coordinator certificate expiry");
    let now = chrono::Utc::now().timestamp();
    // `stroom certs` issues leaf certificates for two years.
    let days = (expiry - now) / 86400;
    assert!((728..=731).contains(&days), "expiry in {days} days");
    let health = c.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    // The coordinator's audit log: who started what (refusals too) and what each run produced.
    let log = dir.path().join("coordinator-audit.jsonl");
    policies::audit::verify_file(&log).expect("intact chain");
    let entries: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["outcome"]
                    .as_str()
                    .unwrap()
                    .split(':')
                    .next()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    assert!(
        summary.contains(&("run.start".into(), "refused".into())),
        "{summary:?}"
    );
    assert!(
        summary.contains(&("run.start".into(), "accepted".into())),
        "{summary:?}"
    );
    assert!(
        summary.contains(&("run.finish".into(), "done".into())),
        "{summary:?}"
    );
    assert!(entries.iter().any(|e| e["actor"] == "tester"));
    assert_answered_statuses_documented(&c, url).await;
}

#[tokio::test]
async fn one_node_down_is_stated_in_every_record_and_publication_follows_quorum() {
    let dir = federation_fixture(3);
    let p1 = NodeProcess::start(&node_config(dir.path(), "P01", 5.0, MTLS));
    let p2 = NodeProcess::start(&node_config(dir.path(), "P02", 5.0, MTLS));
    let down = dead_url();
    let nodes = [
        ("P01", p1.url.as_str()),
        ("P02", p2.url.as_str()),
        ("P03", down.as_str()),
    ];
    let lenient = ServerProcess::start_coordinator(&coordinator_config(
        dir.path(),
        "lenient",
        &nodes,
        "quorum = 0.6",
    ));
    let strict = ServerProcess::start_coordinator(&coordinator_config(
        dir.path(),
        "strict",
        &nodes,
        "quorum = 1.0",
    ));
    let c = client(dir.path());

    let run = run_to_completion(&c, &lenient.url, "care.unique_youths", "2024Q1:2024Q2").await;
    assert_eq!(run["status"], "partial", "{run}");
    assert_eq!(run["published"], true);
    assert!(run["error"].as_str().unwrap().contains("P03"), "{run}");
    for r in run["results"].as_array().unwrap() {
        assert_eq!(
            (
                r["providers_reporting"].as_u64(),
                r["providers_total"].as_u64()
            ),
            (Some(2), Some(3))
        );
    }
    let published: serde_json::Value = get_json_as(
        &c,
        RESEARCHER_TOKEN,
        format!("{}/v1/indicators", lenient.url),
    )
    .await;
    for r in published["indicators"][0]["records"].as_array().unwrap() {
        assert_eq!(
            r["complete"], false,
            "a partial result is never presented as complete"
        );
        assert_eq!(r["providers_reporting"], 2);
    }

    let run = run_to_completion(&c, &strict.url, "care.unique_youths", "2024Q1:2024Q2").await;
    assert_eq!(run["status"], "partial", "{run}");
    assert_eq!(run["published"], false);
    assert!(
        run["error"].as_str().unwrap().contains("below quorum"),
        "{run}"
    );
    let published: serde_json::Value = get_json_as(
        &c,
        RESEARCHER_TOKEN,
        format!("{}/v1/indicators", strict.url),
    )
    .await;
    assert_eq!(published["indicators"].as_array().unwrap().len(), 0);
}
