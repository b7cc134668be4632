//! Governance end to end on real processes: a researcher proposes an indicator, dry-runs it on
//! synthetic data, two reviewers approve it with their own ed25519 keys, the nodes fetch the signed
//! catalog and verify it themselves, one node's operator accepts it locally, the run publishes and
//! a reviewer interprets it. Then every refusal: at the coordinator (roles, own proposal, repeats,
//! bad signatures, invalid indicators, rejection) and at the nodes (unsigned, unknown signers,
//! altered after signing, denied locally, over the cost cap, not accepted), each with its reason in
//! the answer and in the node's audit log.

use crate::support::*;
use std::path::Path;

/// A port that was free a moment ago. The nodes must know the coordinator's address before it
/// starts, and the coordinator must know theirs, so one side needs a fixed port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn keygen(dir: &Path, name: &str) -> String {
    let key = dir.join(format!("{name}.key"));
    let out = run(&["keygen", "--out", key.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn token(cfg: &Path, role: &str, name: &str, public_key: Option<&str>) -> String {
    create_token_with_key(cfg, role, name, public_key)
}

/// `stroom ARGS` as a coordinator client with `token`.
fn cli(dir: &Path, url: &str, token: &str, args: &[&str]) -> std::process::Output {
    stroom()
        .args(args)
        .env("STROOM_TOKEN", token)
        .env("STROOM_COORDINATOR", url)
        .env("STROOM_CA", dir.join("certs/ca/ca.crt"))
        .output()
        .expect("run stroom")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn proposal_toml(id: &str, incident_type: &str, rho: f64) -> String {
    format!(
        r#"id = "{id}"
theme = "zorg"
title = {{ nl = "Jongeren met incident {incident_type}", en = "Youths with incident {incident_type}" }}
definition = {{ nl = "Aantal jongeren met ten minste één incident van dit type in het kwartaal.", en = "Number of youths with at least one incident of this type in the quarter." }}
privacy_unit = "youth_pid"
sql = """
SELECT i.youth_pid, q.quarter
FROM incident i
JOIN quarters q ON CAST(i.incident_ts AS DATE) BETWEEN q.first_day AND q.last_day
WHERE i.type = '{incident_type}'
"""
group_by = {{ quarter = "period" }}
aggregate = {{ kind = "count_units", max_groups_per_unit = 4 }}
cost = {{ rho = {rho} }}
publish = {{ min_estimate = 0, round_to = 1 }}
"#
    )
}

async fn post(
    c: &reqwest::Client,
    url: String,
    token: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = c
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// Ask a node directly with the coordinator's client certificate, as a coordinator would.
async fn ask_node(
    dir: &Path,
    node_url: &str,
    indicator: &str,
    version: u64,
) -> (u16, serde_json::Value) {
    let c = coordinator_identity_client(dir);
    let r = c
        .post(format!("{node_url}/v1/evaluate"))
        .json(&serde_json::json!({
            "indicator": indicator,
            "period": "2024Q1",
            "catalog_version": version,
        }))
        .send()
        .await
        .expect("node request");
    let status = r.status().as_u16();
    let body = if status == 200 {
        serde_json::json!({ "released": true })
    } else {
        r.json().await.unwrap_or_default()
    };
    (status, body)
}

fn audit_reasons(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn propose_dry_run_approve_verify_run_publish_and_every_refusal() {
    let fixture = federation_fixture(2);
    let dir = fixture.path();
    let alice_pub = keygen(dir, "alice");
    let bob_pub = keygen(dir, "bob");
    let carol_pub = keygen(dir, "carol");
    let port = free_port();
    let coordinator_url = format!("https://127.0.0.1:{port}");
    let trusted = format!(
        "[governance]\ncoordinator_url = \"{coordinator_url}\"\nreviewer_keys = [{{ name = \"alice\", public_key = \"{alice_pub}\" }}, {{ name = \"bob\", public_key = \"{bob_pub}\" }}]\n"
    );
    // P01's operator accepts each signed indicator by hand and caps research.aggression;
    // P02 denies research.aggression outright.
    let p01 = ServerProcess::start(&node_config(
        dir,
        "P01",
        12.0,
        &format!(
            "client_ca = \"certs/ca/ca.crt\"\n{trusted}require_acceptance = true\ncaps = [{{ indicator = \"research.aggression\", max_rho = 0.01 }}]\n"
        ),
    ));
    let p02 = ServerProcess::start(&node_config(
        dir,
        "P02",
        12.0,
        &format!("client_ca = \"certs/ca/ca.crt\"\n{trusted}deny = [\"research.aggression\"]\n"),
    ));
    let cfg = coordinator_config(
        dir,
        "coordinator",
        &[("P01", &p01.url), ("P02", &p02.url)],
        "[governance]\ndry_run_providers = 2\n",
    );
    let text_cfg = std::fs::read_to_string(&cfg).unwrap().replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&cfg, text_cfg).unwrap();
    let alice = token(&cfg, "reviewer", "alice", Some(&alice_pub));
    let bob = token(&cfg, "reviewer", "bob", Some(&bob_pub));
    let carol = token(&cfg, "reviewer", "carol", Some(&carol_pub));
    let keyless = token(&cfg, "reviewer", "dave", None);
    // Alice also holds a researcher token: she may propose, never approve her own proposal.
    let alice_researcher = token(&cfg, "researcher", "alice", None);
    let coordinator = ServerProcess::start_coordinator(&cfg);
    let url = coordinator.url.clone();
    assert_eq!(url, coordinator_url);
    let c = client(dir);
    let key = |name: &str| dir.join(format!("{name}.key"));

    // --- propose (CLI) ---
    let file = dir.join("running_away.toml");
    std::fs::write(
        &file,
        proposal_toml("research.running_away", "weglopen", 0.05),
    )
    .unwrap();
    let out = cli(
        dir,
        &url,
        RESEARCHER_TOKEN,
        &[
            "propose",
            file.to_str().unwrap(),
            "--purpose",
            "Running away from secure care signals unmet needs; the sector asked for it.",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("ρ = 0.05") && said.contains("95% interval"),
        "{said}"
    );
    let listing: serde_json::Value = c
        .get(format!("{url}/v1/proposals"))
        .bearer_auth(RESEARCHER_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let proposal = listing["proposals"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(listing["proposals"][0]["status"], "pending");

    // Not approved yet: no run, and the nodes have nothing to answer.
    let (status, body) = post(
        &c,
        format!("{url}/v1/runs"),
        RESEARCHER_TOKEN,
        serde_json::json!({ "indicator": "research.running_away", "period": "2024Q1" }),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_indicator"))
    );

    // --- dry run on synthetic providers (CLI): numbers with intervals, no budget spent ---
    let budget_before = budget(&coordinator_identity_client(dir), &p01.url).await;
    let out = cli(
        dir,
        &url,
        RESEARCHER_TOKEN,
        &[
            "dry-run", &proposal, "--period", "2024Q1", "--format", "json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let records: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["period"], "2024Q1");
    assert_eq!(records[0]["providers_total"], 2);
    assert!(records[0]["ci_low"].as_f64().unwrap() < records[0]["ci_high"].as_f64().unwrap());
    let budget_after = budget(&coordinator_identity_client(dir), &p01.url).await;
    assert_eq!(budget_before["rho_spent"], budget_after["rho_spent"]);

    // --- coordinator refusals before approval ---
    let approve_url = format!("{url}/v1/proposals/{proposal}/approve");
    let good_sig = |name: &str| {
        let k = policies::governance::SigningKey::from_text(
            &std::fs::read_to_string(key(name)).unwrap(),
        )
        .unwrap();
        let p = policies::indicator::content_hash(
            proposal_toml("research.running_away", "weglopen", 0.05).as_bytes(),
        );
        k.sign_approval("research.running_away", &p)
    };
    let cases = [
        (RESEARCHER_TOKEN, good_sig("alice"), 403, "forbidden"),
        (keyless.as_str(), good_sig("alice"), 403, "no_signing_key"),
        // Bob's token with Alice's signature: not his key.
        (bob.as_str(), good_sig("alice"), 400, "bad_signature"),
        (bob.as_str(), "00ff".to_string(), 400, "bad_signature"),
    ];
    for (tok, sig, want, code) in cases {
        let (status, body) = post(
            &c,
            approve_url.clone(),
            tok,
            serde_json::json!({ "signature": sig }),
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (want, Some(code)),
            "{body}"
        );
    }
    // A proposal of Alice's own: Alice cannot approve it.
    let own = proposal_toml("research.own", "agressie", 0.05);
    let (status, body) = post(
        &c,
        format!("{url}/v1/proposals"),
        &alice_researcher,
        serde_json::json!({ "toml": own, "purpose": "A proposal Alice makes herself." }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let own_id = body["proposal"]["id"].as_str().unwrap().to_string();
    let own_sig = policies::governance::SigningKey::from_text(
        &std::fs::read_to_string(key("alice")).unwrap(),
    )
    .unwrap()
    .sign_approval(
        "research.own",
        &policies::indicator::content_hash(own.as_bytes()),
    );
    let (status, body) = post(
        &c,
        format!("{url}/v1/proposals/{own_id}/approve"),
        &alice,
        serde_json::json!({ "signature": own_sig }),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("own_proposal")),
        "{body}"
    );
    // Rejection needs a reason; then the proposal is closed.
    let reject_url = format!("{url}/v1/proposals/{own_id}/reject");
    let (status, _) = post(
        &c,
        reject_url.clone(),
        &bob,
        serde_json::json!({ "reason": "  " }),
    )
    .await;
    assert_eq!(status, 400);
    let out = cli(
        dir,
        &url,
        &bob,
        &[
            "reject",
            &own_id,
            "--reason",
            "Overlaps with the aggression indicator under review.",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let bob_sig =
        policies::governance::SigningKey::from_text(&std::fs::read_to_string(key("bob")).unwrap())
            .unwrap()
            .sign_approval(
                "research.own",
                &policies::indicator::content_hash(own.as_bytes()),
            );
    let (status, body) = post(
        &c,
        format!("{url}/v1/proposals/{own_id}/approve"),
        &bob,
        serde_json::json!({ "signature": bob_sig }),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("not_pending")),
        "{body}"
    );
    // Invalid indicators are refused with every problem named; a duplicate pending one too.
    let broken = proposal_toml("research.broken", "weglopen", 0.05)
        .replace("count_units", "count_everything")
        .replace("i.youth_pid, q.quarter", "q.quarter");
    let (status, body) = post(
        &c,
        format!("{url}/v1/proposals"),
        RESEARCHER_TOKEN,
        serde_json::json!({ "toml": broken, "purpose": "Broken on purpose." }),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("invalid_indicator")),
        "{body}"
    );
    assert!(body["problems"].to_string().contains("aggregate"), "{body}");
    // SQL whose rows are not each one youth's is refused at the coordinator, before any review.
    let unstable = proposal_toml("research.unstable", "weglopen", 0.05).replace(
        "SELECT i.youth_pid, q.quarter",
        "SELECT CAST(i.incident_id AS VARCHAR) AS youth_pid, q.quarter",
    );
    let (status, body) = post(
        &c,
        format!("{url}/v1/proposals"),
        RESEARCHER_TOKEN,
        serde_json::json!({ "toml": unstable, "purpose": "Every incident its own youth." }),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("invalid_indicator")),
        "{body}"
    );
    assert!(
        body["problems"]
            .to_string()
            .contains("is not the privacy unit carried unchanged"),
        "{body}"
    );
    let (status, body) = post(
        &c,
        format!("{url}/v1/proposals"),
        RESEARCHER_TOKEN,
        serde_json::json!({ "toml": proposal_toml("research.running_away", "weglopen", 0.05), "purpose": "Again." }),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("already_proposed")),
        "{body}"
    );
    let (status, body) = post(
        &c,
        format!("{url}/v1/proposals"),
        RESEARCHER_TOKEN,
        serde_json::json!({ "toml": proposal_toml("research.x", "weglopen", 0.05), "purpose": "" }),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );

    // --- two approvals (CLI, signed with the reviewers' own keys) ---
    let out = cli(
        dir,
        &url,
        &alice,
        &[
            "approve",
            &proposal,
            "--key",
            key("alice").to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1/2"), "{}", text(&out));
    let out = cli(
        dir,
        &url,
        &alice,
        &[
            "approve",
            &proposal,
            "--key",
            key("alice").to_str().unwrap(),
        ],
    );
    assert!(
        !out.status.success() && text(&out).contains("already_approved"),
        "{}",
        text(&out)
    );
    let out = cli(
        dir,
        &url,
        &bob,
        &["approve", &proposal, "--key", key("bob").to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("catalog version 1"), "{}", text(&out));
    let catalog: serde_json::Value = get_json(&c, format!("{url}/v1/catalog")).await;
    assert_eq!(catalog["version"], 1);
    assert_eq!(
        catalog["entries"][0]["signatures"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // --- run: P01 has not accepted yet, so only P02 answers ---
    let first = run_to_completion(&c, &url, "research.running_away", "2024Q1").await;
    assert_eq!(first["status"], "partial", "{first}");
    assert!(
        first["error"]
            .as_str()
            .unwrap()
            .contains("not_accepted_locally")
            || first["error"].as_str().unwrap().contains("awaits"),
        "{first}"
    );
    let (status, body) = ask_node(dir, &p01.url, "research.running_away", 1).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("not_accepted_locally")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("stroom node accept"),
        "{body}"
    );

    // The operator of P01 reads it and accepts it.
    let out = run(&[
        "node",
        "accept",
        "research.running_away",
        "--config",
        dir.join("P01.toml").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("signed by alice, bob"),
        "{}",
        text(&out)
    );
    let done = run_to_completion(&c, &url, "research.running_away", "2024Q2").await;
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["results"][0]["providers_reporting"], 2);

    // --- publication with interpretation ---
    let (status, body) = {
        let r = c
            .put(format!("{url}/v1/indicators/research.running_away/2024Q2/interpretation"))
            .bearer_auth(&carol)
            .json(&serde_json::json!({ "nl": "Weglopen blijft zeldzaam.", "en": "Running away stays rare." }))
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    };
    assert_eq!(status, 200, "{body}");
    let published = get_json_as(
        &c,
        &carol,
        format!("{url}/v1/indicators?indicator=research.running_away"),
    )
    .await;
    let ind = &published["indicators"][0];
    assert_eq!(ind["id"], "research.running_away");
    assert!(
        ind["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["period"] == "2024Q2")
    );
    assert_eq!(ind["interpretations"][0]["en"], "Running away stays rare.");

    // --- local deny and cost cap: approved, signed, and still refused by each node ---
    let aggression = proposal_toml("research.aggression", "agressie", 0.05);
    let (status, body) = post(
        &c,
        format!("{url}/v1/proposals"),
        RESEARCHER_TOKEN,
        serde_json::json!({ "toml": aggression, "purpose": "Aggression incidents per quarter." }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let aggr_id = body["proposal"]["id"].as_str().unwrap().to_string();
    for who in ["alice", "bob"] {
        let tok = if who == "alice" { &alice } else { &bob };
        let out = cli(
            dir,
            &url,
            tok,
            &["approve", &aggr_id, "--key", key(who).to_str().unwrap()],
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    let refused = run_to_completion(&c, &url, "research.aggression", "2024Q1").await;
    assert_eq!(refused["status"], "failed", "{refused}");
    let (status, body) = ask_node(dir, &p01.url, "research.aggression", 2).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("over_cost_cap")),
        "{body}"
    );
    let (status, body) = ask_node(dir, &p02.url, "research.aggression", 2).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("denied_locally")),
        "{body}"
    );

    // --- a compromised coordinator: catalog versions it was never given, served as its own ---
    let store = rusqlite::Connection::open(dir.join("coordinator.sqlite")).unwrap();
    let body: String = store
        .query_row(
            "SELECT body FROM catalog_versions WHERE version = 2",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let v2: policies::governance::CatalogVersion = serde_json::from_str(&body).unwrap();
    let mut v3 = v2.clone();
    v3.version = 3;
    let mut unsigned = v2.entries[0].clone();
    unsigned.id = "research.unsigned".into();
    unsigned.toml = unsigned
        .toml
        .replace("research.running_away", "research.unsigned");
    unsigned.signatures.clear();
    let mut strangers = unsigned.clone();
    strangers.id = "research.strangers".into();
    strangers.toml = strangers
        .toml
        .replace("research.unsigned", "research.strangers");
    let carol_key = policies::governance::SigningKey::from_text(
        &std::fs::read_to_string(key("carol")).unwrap(),
    )
    .unwrap();
    let h = policies::indicator::content_hash(strangers.toml.as_bytes());
    strangers.signatures = vec![policies::governance::ReviewerSignature {
        reviewer: "carol".into(),
        public_key: carol_pub.clone(),
        signature: carol_key.sign_approval("research.strangers", &h),
        signed_at: String::new(),
    }];
    // Approved text with one word changed after signing: the weglopen query becomes agressie.
    let mut altered = v2.entries[0].clone();
    altered.toml = altered.toml.replace("weglopen", "suicidepoging");
    v3.entries = vec![unsigned, strangers, altered];
    store
        .execute(
            "INSERT INTO catalog_versions (version, created_at, body) VALUES (3, 'now', ?1)",
            [serde_json::to_string(&v3).unwrap()],
        )
        .unwrap();
    for (indicator, code) in [
        ("research.unsigned", "unsigned_indicator"),
        ("research.strangers", "unknown_signers"),
        ("research.running_away", "altered_indicator"),
    ] {
        let node = if indicator == "research.running_away" {
            &p02.url
        } else {
            &p01.url
        };
        let (status, body) = ask_node(dir, node, indicator, 3).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some(code)),
            "{indicator}: {body}"
        );
    }

    // Every refusal is in the nodes' audit logs with its reason, and the logs verify.
    let p01_reasons = audit_reasons(&dir.join("audit-P01.jsonl")).join("\n");
    let p02_reasons = audit_reasons(&dir.join("audit-P02.jsonl")).join("\n");
    for needle in [
        "awaits this node operator's acceptance",
        "caps it at",
        "is unsigned",
        "does not trust",
    ] {
        assert!(
            p01_reasons.contains(needle),
            "P01 audit lacks '{needle}':\n{p01_reasons}"
        );
    }
    for needle in ["denied by this node's operator", "altered after signing"] {
        assert!(
            p02_reasons.contains(needle),
            "P02 audit lacks '{needle}':\n{p02_reasons}"
        );
    }
    for log in [
        "audit-P01.jsonl",
        "audit-P02.jsonl",
        "coordinator-audit.jsonl",
    ] {
        let out = run(&["audit", "verify", dir.join(log).to_str().unwrap()]);
        assert!(out.status.success(), "{log}: {}", text(&out));
    }
    let coordinator_log = std::fs::read_to_string(dir.join("coordinator-audit.jsonl")).unwrap();
    for action in [
        "proposal.create",
        "proposal.dry_run",
        "proposal.approve",
        "proposal.reject",
    ] {
        assert!(
            coordinator_log.contains(action),
            "coordinator audit lacks {action}"
        );
    }
    assert_answered_statuses_documented(&c, &url).await;
    drop(coordinator);
}

/// ρ a year of rounds over the shipped catalog charges a yearly budget of a youth-records node,
/// computed here from the catalog files: four releases of each quarterly query, one of each
/// annual query.
fn shipped_year_plan() -> f64 {
    let mut rho = 0.0;
    for entry in std::fs::read_dir(catalog_dir()).unwrap() {
        let t: toml::Table = std::fs::read_to_string(entry.unwrap().path())
            .unwrap()
            .parse()
            .unwrap();
        let (Some(cost), Some(unit)) = (t.get("cost"), t.get("privacy_unit")) else {
            continue;
        };
        if unit.as_str() != Some("youth_pid") {
            continue;
        }
        let r = cost["rho"].as_float().unwrap();
        let annual = t["group_by"]
            .as_table()
            .unwrap()
            .values()
            .any(|v| v.as_str() == Some("years"));
        rho += if annual { r } else { 4.0 * r };
    }
    rho
}

#[tokio::test]
async fn approval_is_refused_when_a_year_of_rounds_would_overrun_a_node_budget() {
    let dir = federation_fixture(1);
    let dir = dir.path();
    let planned = shipped_year_plan();
    // Room for the catalog, not for one more quarterly indicator at ρ = 0.05 (0.2 a year).
    let budget = planned + 0.1;
    let p01 = ServerProcess::start(&node_config(
        dir,
        "P01",
        budget,
        "client_ca = \"certs/ca/ca.crt\"",
    ));
    let cfg = coordinator_config(dir, "coordinator", &[("P01", &p01.url)], "");
    let alice_pub = keygen(dir, "alice");
    let alice = token(&cfg, "reviewer", "alice", Some(&alice_pub));
    let coordinator = ServerProcess::start_coordinator(&cfg);
    let url = coordinator.url.clone();
    let c = client(dir);

    // The plan: the catalog's cost against P01's budget, per base indicator.
    let plan: serde_json::Value = c
        .get(format!("{url}/v1/budget/plan"))
        .bearer_auth(RESEARCHER_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let node = &plan["nodes"][0];
    assert_eq!(node["node"], "P01");
    assert_eq!(node["granularity"], "year");
    assert!(
        (node["rho_planned"].as_f64().unwrap() - planned).abs() < 1e-9,
        "{node}"
    );
    assert_eq!(node["fits"], true);
    let lines = node["lines"].as_array().unwrap();
    let line = |id: &str| {
        lines
            .iter()
            .find(|l| l["indicator"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(line("care.unique_youths")["releases_per_period"], 4);
    assert_eq!(line("suicide.suicides")["releases_per_period"], 1);
    assert!(
        lines.iter().all(|l| l["indicator"] != "panel.mean_score"),
        "the panel's indicator is not asked of a youth-records node"
    );
    let out = cli(dir, &url, RESEARCHER_TOKEN, &["budget", "--plan"]);
    assert!(out.status.success(), "{}", text(&out));
    let printed = text(&out);
    assert!(
        printed.contains(&format!("{planned:.4}"))
            && printed.contains(&format!("{budget:.4}"))
            && printed.contains("suicide.suicides"),
        "{printed}"
    );

    // A proposal that would not fit: refused with the figures, audited, nothing approved.
    let file = dir.join("running_away.toml");
    let toml = proposal_toml("research.running_away", "weglopen", 0.05);
    std::fs::write(&file, &toml).unwrap();
    let out = cli(
        dir,
        &url,
        RESEARCHER_TOKEN,
        &[
            "propose",
            file.to_str().unwrap(),
            "--purpose",
            "Running away signals unmet needs.",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let listing = get_json_as(&c, RESEARCHER_TOKEN, format!("{url}/v1/proposals")).await;
    let proposal = listing["proposals"][0]["id"].as_str().unwrap().to_string();
    let k = policies::governance::SigningKey::from_text(
        &std::fs::read_to_string(dir.join("alice.key")).unwrap(),
    )
    .unwrap();
    let sig = k.sign_approval(
        "research.running_away",
        &policies::indicator::content_hash(toml.as_bytes()),
    );
    let (status, body) = post(
        &c,
        format!("{url}/v1/proposals/{proposal}/approve"),
        &alice,
        serde_json::json!({ "signature": sig }),
    )
    .await;
    let expected = format!(
        "P01: a year of rounds costs ρ={:.4} per year of data, its budget is ρ={budget:.4}",
        planned + 0.2
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("over_budget_plan")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains(&expected),
        "{body}"
    );
    let after = get_json_as(
        &c,
        RESEARCHER_TOKEN,
        format!("{url}/v1/proposals/{proposal}"),
    )
    .await;
    assert_eq!(after["proposal"]["status"], "pending", "{after}");
    assert!(
        audit_reasons(&dir.join("coordinator-audit.jsonl"))
            .iter()
            .any(|r| r.contains(&expected)),
        "the refusal is audited"
    );
    drop(coordinator);
    drop(p01);
}
