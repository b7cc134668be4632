//! Tokens and roles at the coordinator, against a real coordinator process: `stroom token`
//! creates, lists and revokes tokens in the coordinator's store (only hashes are stored), and
//! every endpoint × role cell of the authorization matrix (README) answers as documented.

use crate::support::*;

fn token(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["token"];
    all.extend_from_slice(args);
    all.extend(["--config", config.to_str().unwrap()]);
    run(&all)
}

#[tokio::test]
async fn authorization_matrix_cell_by_cell_and_token_lifecycle() {
    let dir = federation_fixture(1);
    let (_node, cfg) = mtls_node_and_coordinator_config(dir.path());
    // Tokens made before the coordinator starts and after (it reads the store per request).
    let researcher = create_token(&cfg, "researcher", "Rita Researcher");
    let coordinator = ServerProcess::start_coordinator(&cfg);
    let reviewer = create_token(&cfg, "reviewer", "Rob Reviewer");
    let admin = create_token(&cfg, "admin", "Ada Admin");
    assert!(researcher.starts_with("stroom_") && researcher.len() > 40);
    let url = &coordinator.url;
    let c = client(dir.path());
    let run_id = start_run(&c, url, "care.unique_youths", "2024Q1").await;
    assert_eq!(wait_for_run(&c, url, &run_id).await["status"], "done");

    let callers: [(&str, Option<&str>); 4] = [
        ("public", None),
        ("researcher", Some(&researcher)),
        ("reviewer", Some(&reviewer)),
        ("admin", Some(&admin)),
    ];
    let run_body = serde_json::json!({ "indicator": "care.unique_youths", "period": "2024Q2" });
    let reading = serde_json::json!({ "nl": "Stabiel ten opzichte van vorig kwartaal.", "en": "Stable since last quarter." });
    // (method, path, expected status for public, researcher, reviewer, admin)
    let matrix: Vec<(&str, String, [u16; 4])> = vec![
        ("POST", "/v1/runs".into(), [401, 202, 403, 403]),
        ("GET", format!("/v1/runs/{run_id}"), [401, 200, 200, 200]),
        ("GET", "/v1/budget".into(), [401, 200, 200, 200]),
        ("GET", "/v1/budget/plan".into(), [401, 200, 200, 200]),
        (
            "PUT",
            "/v1/indicators/care.unique_youths/2024Q1/interpretation".into(),
            [401, 403, 200, 403],
        ),
        // Rounds: the run request is not a round request (400 for a researcher); nothing
        // started for 2031Q1; 2024Q1 has the run above, which a reviewer's release makes public.
        ("POST", "/v1/rounds".into(), [401, 400, 403, 403]),
        ("GET", "/v1/rounds/2031Q1".into(), [401, 404, 404, 404]),
        (
            "POST",
            "/v1/rounds/2031Q1/release".into(),
            [401, 403, 409, 403],
        ),
        (
            "POST",
            "/v1/rounds/2024Q1/release".into(),
            [401, 403, 200, 403],
        ),
        ("GET", "/v1/tokens".into(), [401, 403, 403, 200]),
        (
            "POST",
            "/v1/tokens/ffffffff/revoke".into(),
            [401, 403, 403, 404],
        ),
        // Governance endpoints. The body sent is a run request, which no proposal endpoint
        // takes: a role that passes authorization gets 400 for the body (404 for the unknown
        // proposal id), a role that does not gets 401/403 before the body is read.
        ("POST", "/v1/proposals".into(), [401, 400, 403, 403]),
        ("GET", "/v1/proposals".into(), [401, 200, 200, 200]),
        ("GET", "/v1/proposals/p-none".into(), [401, 404, 404, 404]),
        (
            "POST",
            "/v1/proposals/p-none/dry-run".into(),
            [401, 400, 400, 403],
        ),
        (
            "POST",
            "/v1/proposals/p-none/approve".into(),
            [401, 403, 400, 403],
        ),
        (
            "POST",
            "/v1/proposals/p-none/reject".into(),
            [401, 403, 400, 403],
        ),
        ("GET", "/v1/catalog".into(), [200, 200, 200, 200]),
        ("GET", "/".into(), [200, 200, 200, 200]),
        ("GET", "/favicon.ico".into(), [204, 204, 204, 204]),
        ("GET", "/v1/indicators".into(), [200, 200, 200, 200]),
        (
            "GET",
            "/v1/indicators?format=csv".into(),
            [200, 200, 200, 200],
        ),
        ("GET", "/openapi.json".into(), [200, 200, 200, 200]),
        ("GET", "/healthz".into(), [200, 200, 200, 200]),
        ("GET", "/metrics".into(), [200, 200, 200, 200]),
    ];
    for (method, path, expected) in &matrix {
        for ((who, tok), want) in callers.iter().zip(expected) {
            let mut req = match *method {
                "POST" => c.post(format!("{url}{path}")).json(&run_body),
                "PUT" => c.put(format!("{url}{path}")).json(&reading),
                _ => c.get(format!("{url}{path}")),
            };
            if let Some(t) = tok {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            assert_eq!(status, *want, "{method} {path} as {who}: {text}");
            if status == 403 {
                let e: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert!(
                    e["message"].as_str().unwrap().contains("role"),
                    "{who}: {text}"
                );
            }
        }
    }

    // The interpretation travels with the published numbers; refusals say why.
    let published: serde_json::Value = get_json(&c, format!("{url}/v1/indicators")).await;
    let reading_back = &published["indicators"][0]["interpretations"][0];
    assert_eq!(reading_back["period"], "2024Q1");
    assert_eq!(reading_back["nl"], reading["nl"]);
    assert_eq!(reading_back["reviewer"], "Rob Reviewer");
    for (path, body, status, code) in [
        (
            "care.unique_youths/2023Q1",
            reading.clone(),
            404,
            "not_published",
        ),
        ("no.such/2024Q1", reading.clone(), 404, "unknown_indicator"),
        (
            "care.unique_youths/2024Q1",
            serde_json::json!({ "nl": "  " }),
            400,
            "bad_request",
        ),
        (
            "care.unique_youths/2024Q1",
            serde_json::json!({ "fr": "x" }),
            400,
            "bad_request",
        ),
    ] {
        let r = c
            .put(format!("{url}/v1/indicators/{path}/interpretation"))
            .bearer_auth(&reviewer)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{path} {body}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(e["error"], code, "{path} {body}");
    }

    // The public dashboard: Dutch by default, English by its link; the published indicator under
    // its theme with a chart, its numbers as a table, the interpretation and working downloads.
    let page = c.get(format!("{url}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let nl = page.text().await.unwrap();
    assert!(nl.contains("<html lang=\"nl\">"), "{nl}");
    assert!(nl.contains("id=\"theme-zorg\""), "{nl}");
    assert!(nl.contains("<svg") && nl.contains("role=\"img\""), "{nl}");
    assert!(nl.contains("<table>") && nl.contains("2024Q1"), "{nl}");
    assert!(
        nl.contains("Stabiel ten opzichte van vorig kwartaal."),
        "{nl}"
    );
    assert!(nl.contains("Zo leest u deze cijfers"), "{nl}");
    assert!(
        !nl.contains("src=\"http") && !nl.contains("href=\"http"),
        "no outside resources"
    );
    let en = get_text(&c, format!("{url}/?lang=en")).await;
    assert!(en.contains("<html lang=\"en\">") && en.contains("How to read this"));
    assert!(en.contains("Stable since last quarter."));
    let link = "/v1/indicators?indicator=care.unique_youths&amp;format=csv";
    assert!(nl.contains(link), "{nl}");
    let csv = get_text(&c, format!("{url}{}", link.replace("&amp;", "&"))).await;
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert!(
        !rows.is_empty()
            && rows
                .iter()
                .all(|r| r.starts_with("care.unique_youths,2024Q")),
        "{csv}"
    );

    // Listing shows ids, names and roles, never a token.
    let out = token(&cfg, &["list"]);
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        listing.contains("Rita Researcher") && listing.contains("admin"),
        "{listing}"
    );
    for t in [&researcher, &reviewer, &admin] {
        assert!(!listing.contains(t.as_str()));
    }
    let tokens: serde_json::Value = c
        .get(format!("{url}/v1/tokens"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rita = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "Rita Researcher")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Revocation through the CLI takes effect at once.
    let out = token(&cfg, &["revoke", &rita]);
    assert!(out.status.success(), "{out:?}");
    let r = c
        .post(format!("{url}/v1/runs"))
        .bearer_auth(&researcher)
        .json(&run_body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("revoked"));
    let again = token(&cfg, &["revoke", &rita]);
    assert!(!again.status.success(), "revoking twice is refused");

    // Expiry: a token whose time has passed is refused.
    let late = create_token(&cfg, "researcher", "Late Larry");
    let store = rusqlite::Connection::open(dir.path().join("coordinator.sqlite")).unwrap();
    store
        .execute(
            "UPDATE tokens SET expires_at = '2020-01-01T00:00:00Z' WHERE name = 'Late Larry'",
            [],
        )
        .unwrap();
    let r = c
        .get(format!("{url}/v1/runs/{run_id}"))
        .bearer_auth(&late)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("expired"));

    // Bad CLI input changes nothing.
    let base = ["create", "--name", "x", "--role"];
    for extra in [
        vec!["superuser"],
        vec!["researcher", "--expires", "2001-01-01"],
        vec!["researcher", "--expires", "soon"],
    ] {
        let args: Vec<&str> = base.iter().copied().chain(extra).collect();
        let out = token(&cfg, &args);
        assert!(!out.status.success(), "{args:?}");
    }
    let count: i64 = store
        .query_row("SELECT COUNT(*) FROM tokens", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 4);

    // Token management is audited in the coordinator's own chain, CLI and API alike.
    let log = dir.path().join("coordinator-audit.jsonl");
    policies::audit::verify_file(&log).expect("one intact chain");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("token.create") && text.contains("token.revoke"));
    assert_answered_statuses_documented(&c, url).await;
}
