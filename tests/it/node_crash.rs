//! A real node process killed (SIGKILL) after its spend is recorded and before its answer is
//! stored: after a restart the budget still holds — the spend was kept, the release is answered
//! once under it, and the total charged never exceeds the budget.

use crate::support::*;
use std::time::{Duration, Instant};

fn reserved_count(ledger: &std::path::Path) -> i64 {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(ledger, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    conn.query_row(
        "SELECT COUNT(*) FROM releases WHERE state = 'reserved'",
        [],
        |r| r.get(0),
    )
    .unwrap_or(0)
}

#[tokio::test]
async fn sigkill_between_spend_and_answer_never_overspends() {
    let dir = federation_fixture(1);
    let ledger = dir.path().join("ledger-P01.sqlite");
    let budget_rho = 0.12;
    let paused = node_config(
        dir.path(),
        "P01",
        budget_rho,
        "[testing]\npause_after_spend_ms = 30000",
    );
    let mut node = NodeProcess::start(&paused);
    let c = client(dir.path());

    // Ask, and kill the node while it sits between recording the spend and answering.
    let url = node.url.clone();
    let c2 = c.clone();
    let pending = tokio::spawn(async move {
        c2.post(format!("{url}/v1/evaluate"))
            .json(&serde_json::json!({ "indicator": "care.unique_youths", "period": "2024Q1" }))
            .send()
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while reserved_count(&ledger) == 0 {
        assert!(Instant::now() < deadline, "spend was never recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.kill();
    assert!(
        pending.await.unwrap().is_err(),
        "no answer may leave a killed node"
    );

    // Restart without the pause.
    let normal = node_config(dir.path(), "P01", budget_rho, "");
    let node = NodeProcess::start(&normal);
    let b = budget(&c, &node.url).await;
    assert!(
        (b["rho_spent"].as_f64().unwrap() - 0.05).abs() < 1e-9,
        "the spend survived: {b}"
    );

    // The interrupted release is answered once, under the spend already recorded…
    let r = evaluate(&c, &node.url, "care.unique_youths", "2024Q1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-stroom-replayed"], "false");
    let first = r.bytes().await.unwrap();
    let b = budget(&c, &node.url).await;
    assert!(
        (b["rho_spent"].as_f64().unwrap() - 0.05).abs() < 1e-9,
        "no second charge: {b}"
    );
    // …and from then on replayed.
    let r = evaluate(&c, &node.url, "care.unique_youths", "2024Q1").await;
    assert_eq!(r.headers()["x-stroom-replayed"], "true");
    assert_eq!(r.bytes().await.unwrap(), first);

    // Spend up to the budget and past it: the total charged never exceeds it.
    assert_eq!(
        evaluate(&c, &node.url, "care.youth_days", "2024Q1")
            .await
            .status(),
        200
    );
    assert_eq!(
        evaluate(&c, &node.url, "discharge.count", "2024Q1")
            .await
            .status(),
        403
    );
    let b = budget(&c, &node.url).await;
    let spent = b["rho_spent"].as_f64().unwrap();
    assert!(
        spent <= budget_rho + 1e-12,
        "spent {spent} > budget {budget_rho}"
    );
    assert_eq!(b["releases"], 2);
    assert_eq!(reserved_count(&ledger), 0);
}
