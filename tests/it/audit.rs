//! A real node writes every evaluate request to its hash-chained audit log; `stroom audit verify`
//! accepts the log as written and names the first bad entry after an edit, a deletion or a
//! reordering, and catches a cut-off tail against a recorded head.

use crate::support::*;

fn verify(file: &std::path::Path, head: Option<&str>) -> (bool, String) {
    let mut args = vec!["audit", "verify", file.to_str().unwrap()];
    if let Some(h) = head {
        args.extend(["--head", h]);
    }
    let out = run(&args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test]
async fn node_audit_log_records_requests_and_tampering_is_detected() {
    let dir = federation_fixture(1);
    let mut node = NodeProcess::start(&node_config(dir.path(), "P01", 5.0, ""));
    let c = client(dir.path());
    for q in ["2024Q1", "2024Q2", "2024Q1"] {
        assert_eq!(
            evaluate(&c, &node.url, "care.unique_youths", q)
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        evaluate(&c, &node.url, "no.such", "2024Q1").await.status(),
        404
    );
    node.kill();

    let log = dir.path().join("audit-P01.jsonl");
    let (ok, text) = verify(&log, None);
    assert!(ok, "{text}");
    assert!(text.contains("4 entries"), "{text}");
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let outcomes: Vec<String> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["outcome"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            "released",
            "released",
            "replayed",
            "refused: unknown_indicator"
        ]
    );
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["rho"], 0.05);
    assert!(first["answer_digest"].as_str().unwrap().len() == 64);
    assert!(
        first["actor"]
            .as_str()
            .unwrap()
            .starts_with("client 127.0.0.1:")
    );
    let head = text.split("head ").nth(1).unwrap().trim().to_string();

    let tampered = dir.path().join("tampered.jsonl");
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "edit",
            {
                let mut l = lines.clone();
                l[1] = l[1].replace("\"rho\":0.05", "\"rho\":0.0");
                l
            },
            "line 2",
        ),
        (
            "delete",
            {
                let mut l = lines.clone();
                l.remove(0);
                l
            },
            "line 1",
        ),
        (
            "reorder",
            {
                let mut l = lines.clone();
                l.swap(1, 2);
                l
            },
            "line 2",
        ),
    ];
    for (what, content, expected) in cases {
        std::fs::write(&tampered, content.join("\n") + "\n").unwrap();
        let (ok, text) = verify(&tampered, None);
        assert!(!ok, "{what} not detected: {text}");
        assert!(
            text.contains("TAMPERED") && text.contains(expected),
            "{what}: {text}"
        );
    }
    std::fs::write(&tampered, lines[..3].join("\n") + "\n").unwrap();
    assert!(verify(&tampered, None).0, "a cut-off log is still a chain");
    let (ok, text) = verify(&tampered, Some(&head));
    assert!(!ok && text.contains("expected head"), "{text}");

    // A node refuses to start on a tampered log.
    std::fs::write(&log, lines[1..].join("\n") + "\n").unwrap();
    let out = run(&[
        "node",
        "check",
        "--config",
        dir.path().join("P01.toml").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("audit log"),
        "{out:?}"
    );
}
