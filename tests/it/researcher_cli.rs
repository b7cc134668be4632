//! The researcher's command line against a real coordinator and node: `stroom run` waits and prints
//! the national results, `stroom results` gives them as CSV or JSON, `stroom budget` shows what each
//! node has left; without a token it says how to give one.

use crate::support::*;

#[test]
fn run_results_and_budget_from_the_command_line() {
    let dir = federation_fixture(1);
    let (_node, cfg) = mtls_node_and_coordinator_config(dir.path());
    let coordinator = ServerProcess::start_coordinator(&cfg);
    let url = coordinator.url.as_str();

    let out = cli(
        dir.path(),
        url,
        Some(RESEARCHER_TOKEN),
        &["run", "care.unique_youths", "--period", "2024Q1:2024Q2"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("done") && stdout.contains("2024Q2") && stdout.contains("1/1"),
        "{stdout}"
    );
    let id = stderr
        .split_whitespace()
        .skip_while(|w| *w != "run")
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_string();

    let out = cli(
        dir.path(),
        url,
        Some(RESEARCHER_TOKEN),
        &["results", &id, "--format", "csv"],
    );
    let csv = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}");
    assert!(csv.starts_with("indicator,period,group,estimate"), "{csv}");
    assert_eq!(csv.lines().count(), 3, "{csv}");
    let out = cli(
        dir.path(),
        url,
        Some(RESEARCHER_TOKEN),
        &["results", &id, "--format", "json"],
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json.as_array().unwrap().len(), 2);

    let out = cli(dir.path(), url, Some(RESEARCHER_TOKEN), &["budget"]);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}");
    let p01 = table
        .lines()
        .find(|l| l.starts_with("P01"))
        .expect("P01 row");
    assert!(
        p01.contains("5.0000") && p01.contains("0.1000"),
        "two quarters at ρ 0.05: {table}"
    );

    let out = cli(dir.path(), url, None, &["budget"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("STROOM_TOKEN"),
        "{out:?}"
    );
    let out = cli(
        dir.path(),
        url,
        Some("wrong"),
        &["run", "care.unique_youths", "--period", "2024Q1"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{out:?}"
    );
}
