//! The publication round from the command line: `stroom round 2024Q3` (researcher) runs every
//! approved indicator for the quarter and follows it; `stroom interpret` and `stroom release`
//! (reviewer) attach the expert council's reading and lift the embargo.

use crate::client::{Client, Connection};
use anyhow::{Context, Result};
use std::time::Duration;

/// `stroom round QUARTER`: start or resume the round, show progress, list how each run ended.
pub async fn round(c: &Connection, quarter: &str) -> Result<std::process::ExitCode> {
    let client = Client::new(c)?;
    let started = client
        .post("/v1/rounds", &serde_json::json!({ "quarter": quarter }))
        .await?;
    let total = started["total"].as_u64().unwrap_or(0);
    eprintln!(
        "round {quarter}: {total} indicator run(s), {} started now, {} kept from before",
        started["started"],
        total.saturating_sub(started["started"].as_u64().unwrap_or(0))
    );
    let empty = Vec::new();
    for s in started["skipped"].as_array().unwrap_or(&empty) {
        eprintln!(
            "  skipped {}: {}",
            s["indicator"].as_str().unwrap_or(""),
            s["reason"].as_str().unwrap_or("")
        );
    }
    let path = format!("/v1/rounds/{quarter}");
    let view = loop {
        let view = client.get(&path).await?;
        let (done, total) = (
            view["finished"].as_u64().unwrap_or(0) as usize,
            view["total"].as_u64().unwrap_or(0) as usize,
        );
        crate::demo::progress(done, total, "runs");
        if view["state"] != "running" {
            eprintln!();
            break view;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut not_done = 0;
    for r in view["runs"].as_array().unwrap_or(&empty) {
        let status = r["status"].as_str().unwrap_or("?");
        if status != "done" {
            not_done += 1;
        }
        println!(
            "{:<44} {:<14} {:<8} {}{}",
            r["indicator"].as_str().unwrap_or(""),
            r["period"].as_str().unwrap_or(""),
            status,
            r["run"].as_str().unwrap_or(""),
            r["error"]
                .as_str()
                .map(|e| format!("  {e}"))
                .unwrap_or_default()
        );
    }
    let state = view["state"].as_str().unwrap_or("?");
    if state == "released" {
        println!("\nRound {quarter} is released: its figures are public.");
    } else {
        println!(
            "\nRound {quarter} is under embargo: researchers and reviewers see its figures, the public does not until reviewers release it (`stroom release {quarter}`)."
        );
    }
    if not_done > 0 {
        eprintln!(
            "{not_done} run(s) did not finish completely; `stroom round {quarter}` again runs them again"
        );
        return Ok(std::process::ExitCode::FAILURE);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `stroom release QUARTER`: a reviewer's release of the round's current figures.
pub async fn release(c: &Connection, quarter: &str) -> Result<std::process::ExitCode> {
    let client = Client::new(c)?;
    let outcome = client
        .post(
            &format!("/v1/rounds/{quarter}/release"),
            &serde_json::json!({}),
        )
        .await?;
    match outcome["status"].as_str().unwrap_or("") {
        "released" => println!(
            "Round {quarter} released at {}: its figures ({}) are public.",
            outcome["released_at"].as_str().unwrap_or("?"),
            outcome["periods"]
        ),
        "unchanged" => println!(
            "Round {quarter}'s figures were already released at {}; nothing changed.",
            outcome["released_at"].as_str().unwrap_or("?")
        ),
        "awaiting_releases" => println!(
            "Your release of round {quarter} is recorded: {} of {} reviewers so far ({}).",
            outcome["released_by"].as_array().map_or(0, Vec::len),
            outcome["required"],
            outcome["released_by"]
        ),
        other => anyhow::bail!("unexpected answer from the coordinator ({other}): {outcome}"),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `stroom interpret INDICATOR PERIOD --nl … --en …`: the expert council's reading.
pub async fn interpret(
    c: &Connection,
    indicator: &str,
    period: &str,
    nl: Option<&str>,
    en: Option<&str>,
) -> Result<std::process::ExitCode> {
    anyhow::ensure!(
        nl.is_some() || en.is_some(),
        "give the interpretation with --nl, --en or both"
    );
    let client = Client::new(c)?;
    let stored = client
        .put(
            &format!("/v1/indicators/{indicator}/{period}/interpretation"),
            &serde_json::json!({ "nl": nl, "en": en }),
        )
        .await
        .with_context(|| format!("storing the interpretation of {indicator} {period}"))?;
    println!(
        "Interpretation of {indicator} for {period} stored by {}; it is public once the round is released.",
        stored["reviewer"].as_str().unwrap_or("?")
    );
    Ok(std::process::ExitCode::SUCCESS)
}
