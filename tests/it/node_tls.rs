//! With `tls.client_ca` set, a node completes the TLS 1.3 handshake only with clients holding a
//! the coordinator's certificate from the federation CA (real handshakes on loopback): not with
//! none, not with another CA's, not with a node's own certificate. And `stroom certs` keeps keys
//! private and never replaces a federation's certificates.

use crate::support::*;
use std::time::Duration;

fn client_with(
    dir: &std::path::Path,
    identity: Option<(&str, &std::path::Path)>,
) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = std::fs::read(dir.join("certs/ca/ca.crt")).unwrap();
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .timeout(Duration::from_secs(30));
    if let Some((name, certs)) = identity {
        let mut pem = std::fs::read(certs.join(name).join(format!("{name}.crt"))).unwrap();
        pem.extend(std::fs::read(certs.join(name).join(format!("{name}.key"))).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

#[tokio::test]
async fn mutual_tls_admits_only_federation_certificates() {
    let dir = federation_fixture(1);
    let cfg = node_config(dir.path(), "P01", 5.0, "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace(
            "key = \"certs/P01/P01.key\"",
            "key = \"certs/P01/P01.key\"\nclient_ca = \"certs/ca/ca.crt\"",
        ),
    )
    .unwrap();
    let node = NodeProcess::start(&cfg);

    let without = client_with(dir.path(), None);
    assert!(
        without
            .get(format!("{}/healthz", node.url))
            .send()
            .await
            .is_err(),
        "no client certificate must be refused"
    );

    let other = dir.path().join("other-ca");
    let out = run(&["certs", "--out", other.to_str().unwrap(), "--nodes", "P01"]);
    assert!(out.status.success());
    let foreign = client_with(dir.path(), Some(("coordinator", &other)));
    assert!(
        foreign
            .get(format!("{}/healthz", node.url))
            .send()
            .await
            .is_err(),
        "another CA's certificate must be refused"
    );

    let node_as_client = client_with(dir.path(), Some(("P01", &dir.path().join("certs"))));
    assert!(
        node_as_client
            .get(format!("{}/healthz", node.url))
            .send()
            .await
            .is_err(),
        "a node's certificate in place of the coordinator's must be refused"
    );

    let coordinator = client_with(dir.path(), Some(("coordinator", &dir.path().join("certs"))));
    let r = coordinator
        .get(format!("{}/healthz", node.url))
        .send()
        .await
        .expect("federation certificate accepted");
    assert_eq!(r.status(), 200);
}

/// Probes and scrapers hold no client certificate: the `[ops]` listener answers them over plain
/// HTTP with health and metrics only, while every data endpoint stays behind mutual TLS.
#[tokio::test]
async fn ops_listener_serves_health_and_metrics_only() {
    let dir = federation_fixture(1);
    let cfg = node_config(
        dir.path(),
        "P01",
        5.0,
        "client_ca = \"certs/ca/ca.crt\"\n[ops]\nlisten = \"127.0.0.1:0\"\n",
    );
    let cfg = node::config::NodeConfig::load(&cfg).expect("config");
    let listen = cfg.ops.listen.clone().expect("ops listen");
    let node = std::sync::Arc::new(node::Node::open(cfg).await.expect("node"));
    let ops = node::server::start_ops(node, &listen).await.expect("ops");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let c = reqwest::Client::new();
    let base = format!("http://{}", ops.addr);
    let health = c.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let metrics = c.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    for needle in [
        "stroom_node_rho_remaining{node=\"P01\"} 5",
        "stroom_node_http_requests_total{node=\"P01\",method=\"GET\",route=\"/healthz\",status=\"200\"} 1",
        "stroom_node_certificate_not_after_seconds{node=\"P01\",cert=\"node\"}",
        "stroom_node_certificate_not_after_seconds{node=\"P01\",cert=\"federation_ca\"}",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    for path in ["/v1/budget", "/v1/evaluate"] {
        let r = c.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path} must not be on the plain listener");
    }
    ops.shutdown().await;
}

#[test]
fn certs_keeps_keys_private_and_never_replaces_them() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let out_arg = out.to_str().unwrap();
    assert!(
        run(&["certs", "--out", out_arg, "--nodes", "P01"])
            .status
            .success()
    );
    let keys = [
        "ca/ca.key",
        "coordinator/coordinator.key",
        "P01/P01.key",
        "P01/P01.sign.key",
    ];
    for key in keys {
        let mode = std::fs::metadata(out.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{key} has mode {:o}", mode & 0o777);
    }

    let kept = ["ca/ca.key", "ca/ca.crt", "P01/P01.key", "P01/P01.crt"];
    let before: Vec<Vec<u8>> = kept
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect();
    // Adding a node to an existing federation folder would silently mint a new CA: refused.
    let again = run(&["certs", "--out", out_arg, "--nodes", "P01,P02"]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("already holds the folder(s) ca, coordinator, P01"),
        "{err}"
    );
    let after: Vec<Vec<u8>> = kept
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect();
    assert_eq!(before, after, "a refused run must change nothing");
    assert!(!out.join("P02").exists());

    let bad = run(&[
        "certs",
        "--out",
        dir.path().join("new").to_str().unwrap(),
        "--nodes",
        "P/1",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("node id 'P/1'"));
    assert!(
        !dir.path().join("new").exists(),
        "a refused run creates no folder"
    );
}
