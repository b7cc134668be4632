//! The shipped configurations load as they are, and the local federation's coordinator points at
//! exactly the nodes `deploy/local/` defines, at their addresses.

use std::path::Path;

#[test]
fn shipped_configs_load_and_agree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    node::config::NodeConfig::load(&root.join("node.example.toml")).expect("node example");
    let pg = node::config::NodeConfig::load(&root.join("node.postgres.example.toml"))
        .expect("node over PostgreSQL example");
    assert_eq!(pg.data.source, node::config::SourceKind::Postgres);
    assert_eq!(
        pg.data.postgres.as_ref().map(|p| p.sslmode.as_str()),
        Some("verify-full")
    );
    coordinator::config::CoordinatorConfig::load(&root.join("coordinator.example.toml"))
        .expect("coordinator example");
    for helper in ["helper.example.toml", "local/helper.toml"] {
        // The roster file is made by `stroom certs --helper`; the rest must load as shipped.
        let text = std::fs::read_to_string(root.join(helper)).expect("helper config");
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join("helper.toml");
        std::fs::write(&copy, text.replace("roster = ", "# roster = ")).expect("copy");
        helper::config::HelperConfig::load(&copy).unwrap_or_else(|e| panic!("{helper}: {e}"));
    }

    let local = root.join("local");
    let coordinator = coordinator::config::CoordinatorConfig::load(&local.join("coordinator.toml"))
        .expect("local coordinator");
    assert_eq!(coordinator.nodes.len(), 3);
    // A thousand nodes are asked at once, and no node more than four times at once.
    assert_eq!(
        (coordinator.fanout.concurrency, coordinator.fanout.per_node),
        (1024, 4)
    );
    for entry in &coordinator.nodes {
        let node = node::config::NodeConfig::load(&local.join(format!("{}.toml", entry.id)))
            .unwrap_or_else(|e| panic!("local node {}: {e}", entry.id));
        assert_eq!(node.node_id, entry.id);
        assert_eq!(entry.url, format!("https://{}", node.listen));
        assert!(node.tls.client_ca.is_some(), "{}: mutual TLS", entry.id);
        assert!(
            node.secure.helper_key.is_some() && node.secure.signing_key.is_some(),
            "{}: secure aggregation",
            entry.id
        );
    }
    assert!(
        coordinator.secure.helper_url.is_some(),
        "the local federation runs securely"
    );
    assert_eq!(
        coordinator.researchers[0].token_sha256,
        coordinator::config::token_hash("local-researcher-token"),
        "the token the README uses"
    );
}

#[test]
fn bad_coordinator_config_is_refused_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "quorum = 2.0\n[[nodes]]\nid = \"P01\"\nurl = \"https://127.0.0.1:1\"\n",
            "'quorum'",
        ),
        (
            "[[nodes]]\nid = \"P01\"\nurl = \"http://127.0.0.1:1\"\n",
            "'nodes[0].url'",
        ),
        ("nodes = []\n", "'nodes'"),
        (
            "[[nodes]]\nid = \"P01\"\nurl = \"https://x\"\n[[nodes]]\nid = \"P01\"\nurl = \"https://y\"\n",
            "listed twice",
        ),
        ("listen = [\n", "bad.toml"),
        (
            "[governance]\nrequired_approvals = 0\n[[nodes]]\nid = \"P01\"\nurl = \"https://x\"\n",
            "'governance.required_approvals'",
        ),
        (
            "[fanout]\nper_node = 0\n[[nodes]]\nid = \"P01\"\nurl = \"https://x\"\n",
            "per_node must be at least 1",
        ),
    ];
    for (text, expected) in cases {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_stroom"))
            .args(["coordinator", "--config", file.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}");
        assert!(
            stderr.contains(expected) && stderr.contains("bad.toml"),
            "{text}: {stderr}"
        );
    }
}

#[test]
fn bad_node_governance_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = "ab".repeat(32);
    let cases = [
        (
            "[governance]\nreviewer_keys = [{ name = \"a\", public_key = \"abcd\" }]\n".to_string(),
            "'governance.reviewer_keys'",
        ),
        (
            format!(
                "[tls]\nclient_ca = \"ca.crt\"\n[governance]\ncoordinator_url = \"https://c:1\"\nreviewer_keys = [{{ name = \"a\", public_key = \"{key}\" }}]\n"
            ),
            "can never give the 2 signatures",
        ),
        (
            "[governance]\ncoordinator_url = \"http://c:1\"\n".to_string(),
            "'governance.coordinator_url'",
        ),
        (
            "[governance]\ncaps = [{ indicator = \"x\", max_rho = -1.0 }]\n".to_string(),
            "'governance.caps'",
        ),
        (
            "[governance]\nrequired_signatures = 0\n".to_string(),
            "'governance.required_signatures'",
        ),
    ];
    for (extra, expected) in cases {
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            format!("node_id = \"P01\"\n[data]\ncoverage = \"2024Q1:2024Q4\"\n{extra}"),
        )
        .unwrap();
        let err = node::config::NodeConfig::load(&file)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(expected) && err.contains("node.toml"),
            "{extra}: {err}"
        );
    }
}

/// The compose federation's configs load, its coordinator lists exactly its nodes, and the compose
/// file starts each node with its own config and state volume. (Schema checks of compose.yaml and
/// the Kubernetes manifests are deploy/validate.sh, run by CI.)
#[test]
fn compose_configs_load_and_agree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let compose = std::fs::read_to_string(root.join("compose.yaml")).unwrap();
    let dir = root.join("compose");
    let coordinator = coordinator::config::CoordinatorConfig::load(&dir.join("coordinator.toml"))
        .expect("compose coordinator");
    assert_eq!(coordinator.nodes.len(), 3);
    let text = std::fs::read_to_string(dir.join("helper.toml")).expect("compose helper");
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        tmp.path().join("helper.toml"),
        text.replace("roster = ", "# roster = "),
    )
    .expect("copy");
    helper::config::HelperConfig::load(&tmp.path().join("helper.toml")).expect("compose helper");
    assert!(compose.contains("/etc/stroom/helper.toml") && compose.contains("state-helper:"));
    for entry in &coordinator.nodes {
        let node = node::config::NodeConfig::load(&dir.join(format!("{}.toml", entry.id)))
            .unwrap_or_else(|e| panic!("compose node {}: {e}", entry.id));
        assert_eq!(node.node_id, entry.id);
        let service = entry.id.to_lowercase();
        assert_eq!(entry.url, format!("https://{service}:7443"));
        assert!(node.ops.listen.is_some(), "{}: health listener", entry.id);
        assert!(
            compose.contains(&format!("/etc/stroom/{}.toml", entry.id))
                && compose.contains(&format!("state-{service}:/var/lib/stroom")),
            "compose.yaml must start {} with its config and state volume",
            entry.id
        );
    }
    assert!(
        coordinator.secure.helper_url.is_some(),
        "the compose federation runs securely"
    );
    assert_eq!(
        coordinator.researchers[0].token_sha256,
        coordinator::config::token_hash("compose-researcher-token"),
        "the token compose.yaml's comment uses"
    );
}
