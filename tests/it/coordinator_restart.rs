//! A coordinator killed (SIGKILL) in the middle of a run and started again on the same run store
//! resumes the run to completion; no node spends budget twice for it.

use crate::support::*;
use std::time::{Duration, Instant};

#[tokio::test]
async fn killed_coordinator_resumes_the_run_without_double_spend() {
    let dir = federation_fixture(2);
    // Each node pauses after recording its spend, so the kill lands while answers are in flight.
    let slow = "client_ca = \"certs/ca/ca.crt\"\n[testing]\npause_after_spend_ms = 1500";
    let p1 = NodeProcess::start(&node_config(dir.path(), "P01", 5.0, slow));
    let p2 = NodeProcess::start(&node_config(dir.path(), "P02", 5.0, slow));
    let cfg = coordinator_config(
        dir.path(),
        "coordinator",
        &[("P01", &p1.url), ("P02", &p2.url)],
        "",
    );
    let c = client(dir.path());
    let as_coordinator = coordinator_identity_client(dir.path());

    let mut first = ServerProcess::start_coordinator(&cfg);
    let id = start_run(&c, &first.url, "care.unique_youths", "2024Q1:2024Q4").await;
    // Wait until a node has recorded a spend, then kill the coordinator mid-run.
    let deadline = Instant::now() + Duration::from_secs(60);
    while budget(&as_coordinator, &p1.url).await["releases"].as_u64() == Some(0) {
        assert!(Instant::now() < deadline, "no spend recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill();
    let store = rusqlite::Connection::open(dir.path().join("coordinator.sqlite")).unwrap();
    let status: String = store
        .query_row("SELECT status FROM runs WHERE id = ?1", [&id], |r| r.get(0))
        .unwrap();
    assert!(
        status == "running" || status == "pending",
        "killed mid-run, found {status}"
    );
    drop(store);

    let second = ServerProcess::start_coordinator(&cfg);
    let run = wait_for_run(&c, &second.url, &id).await;
    assert_eq!(run["status"], "done", "{run}");
    assert_eq!(run["resumed"], 1, "{run}");
    assert_eq!(run["results"].as_array().unwrap().len(), 4);

    // One release per quarter at each node: the resumed run reused the stored answers.
    let cost = 0.05;
    for node in [&p1.url, &p2.url] {
        let b = budget(&as_coordinator, node).await;
        assert_eq!(b["releases"], 4, "{b}");
        let spent = b["rho_spent"].as_f64().unwrap();
        assert!((spent - 4.0 * cost).abs() < 1e-6, "spent {spent}: {b}");
    }
}
