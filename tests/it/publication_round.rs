//! The quarterly publication round against a real coordinator and node: `stroom round 2024Q4`
//! runs every approved indicator (the annual ones over the whole year), its results stay under
//! embargo (absent from the public API, its CSV and the dashboard, present for token holders)
//! until `publication.required_releases` reviewers release them; each release is audited, a
//! researcher's or admin's is refused, an interpretation is public only with its round. A
//! per-capita figure divides the count and its interval by the reference population (a test
//! CSV here; the real one holds CBS StatLine figures) and cites its source.

use crate::support::*;

/// The round's catalog: a quarterly count, a share over it, and an annual-only figure.
const INDICATORS: [&str; 4] = [
    "care.unique_youths",
    "maatwerk.youths_plan_youth_participated",
    "maatwerk.plan_youth_participated_share",
    "suicide.youths_with_attempt",
];

/// A per-capita figure over the quarterly count, with a test population (not CBS figures).
const PER_CAPITA: &str = r#"id = "care.youths_per_10000_12_17"
theme = "zorg"
title = { nl = "Jongeren in JeugdzorgPlus per 10.000 jongeren van 12-17 jaar", en = "Youths in JeugdzorgPlus per 10,000 youths aged 12-17" }
definition = { nl = "Unieke jongeren in zorg in het kwartaal per 10.000 inwoners van 12 tot en met 17 jaar op 1 januari.", en = "Unique youths in care in the quarter per 10,000 inhabitants aged 12 to 17 on 1 January." }
derived = { kind = "per_capita", numerator = "care.unique_youths", population = "12-17", per = 10000 }
"#;
const POPULATION: f64 = 1_200_000.0;

fn round_catalog(dir: &std::path::Path) -> std::path::PathBuf {
    let catalog = dir.join("round-catalog");
    std::fs::create_dir_all(&catalog).unwrap();
    for id in INDICATORS {
        let file = format!("{id}.toml");
        std::fs::copy(catalog_dir().join(&file), catalog.join(&file)).unwrap();
    }
    std::fs::write(catalog.join("care.youths_per_10000_12_17.toml"), PER_CAPITA).unwrap();
    std::fs::write(
        dir.join("population.csv"),
        format!("# source: test figures (not CBS)\n# retrieved: 2026-12-02\n# licence: CC BY 4.0\nyear,age_group,population\n2024,12-17,{POPULATION}\n"),
    )
    .unwrap();
    catalog
}

/// A coordinator config over the round's catalog, with the test population.
fn round_coordinator_config(
    dir: &std::path::Path,
    catalog: &std::path::Path,
    nodes: &[(&str, &str)],
    extra: &str,
) -> std::path::PathBuf {
    let cfg = coordinator_config(
        dir,
        "coordinator",
        nodes,
        &format!("{extra}\n[reference]\npopulation = \"population.csv\""),
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("catalog_dir = \"{}\"", catalog_dir().display()),
        &format!("catalog_dir = \"{}\"", catalog.display()),
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

async fn post_as(c: &reqwest::Client, token: &str, url: String) -> (u16, serde_json::Value) {
    let r = c
        .post(url)
        .bearer_auth(token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// Periods with records in the public `/v1/indicators` (no token).
async fn public_periods(c: &reqwest::Client, url: &str) -> Vec<String> {
    let body = get_json(c, format!("{url}/v1/indicators")).await;
    let mut periods: Vec<String> = body["indicators"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["records"].as_array().unwrap().clone())
        .map(|r| r["period"].as_str().unwrap().to_string())
        .collect();
    periods.sort();
    periods.dedup();
    periods
}

#[tokio::test]
async fn a_round_is_embargoed_until_enough_reviewers_release_it() {
    let dir = federation_fixture(1);
    let catalog = round_catalog(dir.path());
    let node = ServerProcess::start(&node_config(
        dir.path(),
        "P01",
        5.0,
        "client_ca = \"certs/ca/ca.crt\"",
    ));
    let cfg = round_coordinator_config(
        dir.path(),
        &catalog,
        &[("P01", &node.url)],
        "[publication]\nrequired_releases = 2",
    );
    let coordinator = ServerProcess::start_coordinator(&cfg);
    let url = coordinator.url.as_str();
    let c = client(dir.path());
    let ann = create_token(&cfg, "reviewer", "Ann Reviewer");
    let bob = create_token(&cfg, "reviewer", "Bob Reviewer");
    let admin = create_token(&cfg, "admin", "Ada Admin");

    // Bad input changes nothing.
    for (body, code) in [
        (serde_json::json!({ "quarter": "2024Q5" }), "bad_request"),
        (
            serde_json::json!({ "quarter": "2024Q1:2024Q4" }),
            "bad_request",
        ),
        (serde_json::json!({ "period": "2024Q4" }), "bad_request"),
    ] {
        let r = c
            .post(format!("{url}/v1/rounds"))
            .bearer_auth(RESEARCHER_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(e["error"], code);
    }
    let none = get_json_as(&c, &ann, format!("{url}/v1/rounds/2024Q4")).await;
    assert_eq!(none["error"], "unknown_round", "{none}");

    // The round from the command line: every indicator, the annual one over the whole year.
    let out = cli(
        dir.path(),
        url,
        Some(RESEARCHER_TOKEN),
        &["round", "2024Q4"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("5 indicator run(s), 5 started now"),
        "{stderr}"
    );
    assert!(
        stdout.contains("suicide.youths_with_attempt") && stdout.contains("2024Q1:2024Q4"),
        "{stdout}"
    );
    assert!(stdout.contains("under embargo"), "{stdout}");
    let round = get_json_as(&c, &ann, format!("{url}/v1/rounds/2024Q4")).await;
    assert_eq!(round["state"], "finished", "{round}");
    assert_eq!(
        (round["finished"].as_u64(), round["total"].as_u64()),
        (Some(5), Some(5))
    );
    assert!(
        round["runs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "done")
    );

    // The per-capita figure is the count and its interval divided by the CSV's population, at
    // the count's cost; a year the CSV lacks is refused before anything is asked.
    let run_of = |indicator: &str| {
        round["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["indicator"] == indicator)
            .unwrap()["run"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let count = wait_for_run(&c, url, &run_of("care.unique_youths")).await["results"][0].clone();
    let per =
        wait_for_run(&c, url, &run_of("care.youths_per_10000_12_17")).await["results"][0].clone();
    for field in ["estimate", "ci_low", "ci_high"] {
        let by_hand = count[field].as_f64().unwrap().max(0.0) * 10000.0 / POPULATION;
        let got = per[field].as_f64().unwrap();
        assert!(
            (got - by_hand).abs() < 1e-9,
            "{field}: {got} vs {by_hand}: {count} {per}"
        );
    }
    assert_eq!(per["rho"], count["rho"]);
    let r = c
        .post(format!("{url}/v1/runs"))
        .bearer_auth(RESEARCHER_TOKEN)
        .json(
            &serde_json::json!({ "indicator": "care.youths_per_10000_12_17", "period": "2023Q4" }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: serde_json::Value = r.json().await.unwrap();
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("aged 12-17 on 1 January 2023"),
        "{e}"
    );

    // Embargoed: nothing public, everything visible to a reviewer, marked.
    assert!(public_periods(&c, url).await.is_empty());
    let csv = get_text(&c, format!("{url}/v1/indicators?format=csv")).await;
    assert_eq!(csv.lines().count(), 1, "only the header: {csv}");
    let page = get_text(&c, format!("{url}/")).await;
    assert!(
        !page.contains("2024Q4") && page.contains("Er is nog geen kwartaal vrijgegeven"),
        "{page}"
    );
    let seen = get_json_as(&c, &ann, format!("{url}/v1/indicators")).await;
    let records: Vec<&serde_json::Value> = seen["indicators"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["records"].as_array().unwrap())
        .collect();
    assert!(records.iter().any(|r| r["period"] == "2024Q4"), "{seen}");
    assert!(
        records.iter().any(|r| r["period"] == "2024"),
        "annual: {seen}"
    );
    assert!(records.iter().all(|r| r["released"] == false), "{seen}");
    let reviewer_csv = c
        .get(format!("{url}/v1/indicators?format=csv"))
        .bearer_auth(&ann)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        reviewer_csv.lines().next().unwrap().ends_with(",released")
            && reviewer_csv.lines().skip(1).all(|l| l.ends_with(",false"))
            && reviewer_csv.lines().count() > 1,
        "{reviewer_csv}"
    );
    // A token that is sent must be valid: no silent fallback to the public view.
    let r = c
        .get(format!("{url}/v1/indicators"))
        .bearer_auth("stroom_not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // The interpretation is written under embargo and not public before the release.
    let reading = "Iets meer jongeren dan in het derde kwartaal; binnen de ruis.";
    let out = cli(
        dir.path(),
        url,
        Some(&ann),
        &[
            "interpret",
            "care.unique_youths",
            "2024Q4",
            "--nl",
            reading,
            "--en",
            "A few more youths than in Q3; within the noise.",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let public = get_json(&c, format!("{url}/v1/indicators")).await;
    assert!(!public.to_string().contains(reading), "{public}");

    // The wrong roles are refused and nothing changes.
    for token in [RESEARCHER_TOKEN, admin.as_str()] {
        let (status, e) = post_as(&c, token, format!("{url}/v1/rounds/2024Q4/release")).await;
        assert_eq!(
            (status, e["error"].as_str()),
            (403, Some("forbidden")),
            "{e}"
        );
    }
    let (status, e) = post_as(&c, &ann, format!("{url}/v1/rounds/2024Q3/release")).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (409, Some("nothing_to_release")),
        "{e}"
    );

    // One reviewer is not enough, twice is still one; the second reviewer releases.
    let out = cli(dir.path(), url, Some(&ann), &["release", "2024Q4"]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && said.contains("1 of 2 reviewers"),
        "{said}{out:?}"
    );
    let (status, again) = post_as(&c, &ann, format!("{url}/v1/rounds/2024Q4/release")).await;
    assert_eq!(
        (status, again["status"].as_str()),
        (202, Some("awaiting_releases"))
    );
    assert_eq!(again["released_by"], serde_json::json!(["Ann Reviewer"]));
    assert!(public_periods(&c, url).await.is_empty());
    let (status, released) = post_as(&c, &bob, format!("{url}/v1/rounds/2024Q4/release")).await;
    assert_eq!(
        (status, released["status"].as_str()),
        (200, Some("released")),
        "{released}"
    );
    assert_eq!(released["periods"], serde_json::json!(["2024Q4", "2024"]));
    assert_eq!(
        released["reviewers"],
        serde_json::json!(["Ann Reviewer", "Bob Reviewer"])
    );

    // Public now: the quarter and the year, with the interpretation and the release date.
    assert_eq!(public_periods(&c, url).await, vec!["2024", "2024Q4"]);
    let public = get_json(&c, format!("{url}/v1/indicators")).await;
    assert_eq!(public["releases"][0]["quarter"], "2024Q4");
    assert!(public.to_string().contains(reading), "{public}");
    assert_eq!(
        public["reference"]["population"]["source"], "test figures (not CBS)",
        "per-capita figures cite their population's source: {public}"
    );
    let csv = get_text(&c, format!("{url}/v1/indicators?format=csv")).await;
    assert!(
        csv.lines()
            .skip(1)
            .all(|l| l.contains(",2024Q4,") || l.contains(",2024,"))
    );
    assert!(csv.lines().count() > 1);
    let page = get_text(&c, format!("{url}/")).await;
    let day = released["released_at"].as_str().unwrap()[..10].to_string();
    assert!(page.contains(reading) && page.contains(&day), "{page}");
    assert!(
        page.contains("Bevolking: test figures (not CBS), 2026-12-02, CC BY 4.0"),
        "the dashboard cites the population: {page}"
    );
    assert!(
        page.contains("De expertraad gaf (nog) geen duiding bij 2024."),
        "the annual figure has no interpretation: {page}"
    );
    let round = get_json_as(&c, &ann, format!("{url}/v1/rounds/2024Q4")).await;
    assert_eq!(round["state"], "released", "{round}");

    // Releasing the same figures again changes nothing; resuming the round starts nothing.
    let (status, same) = post_as(&c, &ann, format!("{url}/v1/rounds/2024Q4/release")).await;
    assert_eq!((status, same["status"].as_str()), (200, Some("unchanged")));
    let out = cli(
        dir.path(),
        url,
        Some(RESEARCHER_TOKEN),
        &["round", "2024Q4"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success() && stderr.contains("0 started now, 5 kept"),
        "{stderr}"
    );

    // Every release is in the coordinator's audit log, which verifies.
    let audit = std::fs::read_to_string(dir.path().join("coordinator-audit.jsonl")).unwrap();
    let releases: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["action"] == "round.release")
        .collect();
    let outcomes: Vec<(String, String)> = releases
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("Ann Reviewer", "refused: nothing to release for 2024Q3: no finished run has published figures for it"),
            ("Ann Reviewer", "awaiting releases (1 of 2)"),
            ("Ann Reviewer", "awaiting releases (1 of 2)"),
            ("Bob Reviewer", "released"),
            ("Ann Reviewer", "unchanged"),
        ]
        .map(|(a, o)| (a.to_string(), o.to_string())),
    );
    assert_eq!(releases[3]["answer_digest"], released["digest"]);
    let out = run(&[
        "audit",
        "verify",
        dir.path().join("coordinator-audit.jsonl").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_answered_statuses_documented(&c, url).await;
}

/// A coordinator killed (SIGKILL) mid-round and started again finishes the round from its store;
/// each node released each base once per quarter, so nothing was spent twice, and starting the
/// round again starts nothing.
#[tokio::test]
async fn a_round_interrupted_by_a_coordinator_crash_finishes_without_spending_twice() {
    let dir = federation_fixture(2);
    let catalog = round_catalog(dir.path());
    // Each node pauses after recording its spend, so the kill lands while answers are in flight.
    let slow = "client_ca = \"certs/ca/ca.crt\"\n[testing]\npause_after_spend_ms = 1500";
    let p1 = NodeProcess::start(&node_config(dir.path(), "P01", 5.0, slow));
    let p2 = NodeProcess::start(&node_config(dir.path(), "P02", 5.0, slow));
    let cfg = round_coordinator_config(
        dir.path(),
        &catalog,
        &[("P01", &p1.url), ("P02", &p2.url)],
        "",
    );
    let c = client(dir.path());
    let as_coordinator = coordinator_identity_client(dir.path());
    let mut first = ServerProcess::start_coordinator(&cfg);
    let r = c
        .post(format!("{}/v1/rounds", first.url))
        .bearer_auth(RESEARCHER_TOKEN)
        .json(&serde_json::json!({ "quarter": "2024Q3" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let started: serde_json::Value = r.json().await.unwrap();
    // The quarterly indicators; the annual one waits for the fourth quarter.
    assert_eq!(started["started"], 4, "{started}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while budget(&as_coordinator, &p1.url).await["releases"].as_u64() == Some(0) {
        assert!(std::time::Instant::now() < deadline, "no spend recorded");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    first.kill();
    let store = rusqlite::Connection::open(dir.path().join("coordinator.sqlite")).unwrap();
    let unfinished: i64 = store
        .query_row(
            "SELECT COUNT(*) FROM runs WHERE status IN ('pending', 'running')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        unfinished > 0,
        "the kill landed after the round had finished"
    );
    drop(store);
    let second = ServerProcess::start_coordinator(&cfg);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let round = loop {
        let round = get_json_as(
            &c,
            RESEARCHER_TOKEN,
            format!("{}/v1/rounds/2024Q3", second.url),
        )
        .await;
        if round["state"] != "running" {
            break round;
        }
        assert!(std::time::Instant::now() < deadline, "{round}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(round["state"], "finished", "{round}");
    let runs = round["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    assert!(runs.iter().all(|r| r["status"] == "done"), "{round}");
    let mut resumed = 0;
    for r in runs {
        let run = get_json_as(
            &c,
            RESEARCHER_TOKEN,
            format!("{}/v1/runs/{}", second.url, r["run"].as_str().unwrap()),
        )
        .await;
        resumed += run["resumed"].as_u64().unwrap();
    }
    assert_eq!(
        resumed as i64, unfinished,
        "every unfinished run was resumed once"
    );
    // Two bases (the count of youths in care, the count with a plan they took part in), one
    // quarter: two releases per node at ρ 0.05 each, whatever the crash interrupted.
    for node in [&p1.url, &p2.url] {
        let b = budget(&as_coordinator, node).await;
        assert_eq!(b["releases"], 2, "{b}");
        let spent = b["rho_spent"].as_f64().unwrap();
        assert!((spent - 0.1).abs() < 1e-9, "spent {spent}: {b}");
    }
    let r = c
        .post(format!("{}/v1/rounds", second.url))
        .bearer_auth(RESEARCHER_TOKEN)
        .json(&serde_json::json!({ "quarter": "2024Q3" }))
        .send()
        .await
        .unwrap();
    let again: serde_json::Value = r.json().await.unwrap();
    assert_eq!(again["started"], 0, "{again}");
}
