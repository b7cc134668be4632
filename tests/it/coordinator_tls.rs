//! The coordinator's side of mutual TLS, against real node processes: it accepts a node only when
//! the node's certificate comes from the federation CA and names the provider it is configured
//! for, and the node accepts the coordinator's certificate.

use crate::support::*;
use coordinator::node_client::{FederationTls, NodeClient, NodeError, RetryPolicy, TlsMaterial};
use std::time::Duration;

fn coordinator_tls(dir: &std::path::Path) -> TlsMaterial {
    let certs = dir.join("certs");
    TlsMaterial::load(&FederationTls {
        ca: certs.join("coordinator/ca.crt"),
        cert: certs.join("coordinator/coordinator.crt"),
        key: certs.join("coordinator/coordinator.key"),
    })
    .expect("coordinator TLS material")
}

fn quick() -> RetryPolicy {
    RetryPolicy {
        timeout: Duration::from_secs(30),
        attempts: 2,
        initial_backoff: Duration::from_millis(50),
    }
}

#[tokio::test]
async fn coordinator_accepts_only_the_provider_it_expects() {
    let dir = federation_fixture(2);
    let tls = coordinator_tls(dir.path());

    // P01's data and id, but P02's certificate.
    let cfg = node_config(dir.path(), "P01", 5.0, "client_ca = \"certs/ca/ca.crt\"");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("certs/P01/P01.crt", "certs/P02/P02.crt")
            .replace("certs/P01/P01.key", "certs/P02/P02.key"),
    )
    .unwrap();
    let impostor = NodeProcess::start(&cfg);
    let client = NodeClient::new("P01", &impostor.url, &tls, quick()).unwrap();
    match client.budget().await {
        Err(NodeError::Connect { node, message }) => {
            assert_eq!(node, "P01");
            assert!(
                message.to_lowercase().contains("certificate"),
                "the error names the certificate problem: {message}"
            );
        }
        other => panic!("a node with another provider's certificate must be refused: {other:?}"),
    }
    drop(impostor);

    let cfg = node_config(dir.path(), "P02", 5.0, "client_ca = \"certs/ca/ca.crt\"");
    let genuine = NodeProcess::start(&cfg);
    let client = NodeClient::new("P02", &genuine.url, &tls, quick()).unwrap();
    let status = client
        .budget()
        .await
        .expect("the right provider is accepted");
    assert_eq!(status.node_id, "P02");
    let request: policies::wire::EvaluateRequest = serde_json::from_value(
        serde_json::json!({ "indicator": "care.unique_youths", "period": "2024Q1" }),
    )
    .unwrap();
    let policies::wire::Answer { batch, meta } =
        client.evaluate(&request).await.expect("an answer");
    assert_eq!(meta.node_id, "P02");
    assert!(batch.num_rows() > 0);

    // A refusal is final: no retry turns it into a success, and it says why.
    let unknown: policies::wire::EvaluateRequest = serde_json::from_value(
        serde_json::json!({ "indicator": "no_such_indicator", "period": "2024Q1" }),
    )
    .unwrap();
    match client.evaluate(&unknown).await {
        Err(e @ NodeError::Refused { .. }) => assert!(!e.is_transient()),
        other => panic!("unknown indicator must be refused: {other:?}"),
    }
}

#[tokio::test]
async fn unreachable_node_fails_after_bounded_retries() {
    let dir = federation_fixture(1);
    let tls = coordinator_tls(dir.path());
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client =
        NodeClient::new("P01", &format!("https://127.0.0.1:{port}"), &tls, quick()).unwrap();
    let started = std::time::Instant::now();
    let err = client.budget().await.expect_err("nothing listens");
    assert!(matches!(err, NodeError::Connect { .. }), "{err:?}");
    assert!(err.is_transient());
    // Two attempts with a 50 ms backoff between them.
    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[test]
fn a_node_address_that_is_no_url_is_refused_when_the_client_is_made() {
    let dir = federation_fixture(1);
    let tls = coordinator_tls(dir.path());
    for bad in ["https://", "https://node one.example:8443", "https://[::1"] {
        match NodeClient::new("P01", bad, &tls, quick()) {
            Err(NodeError::Connect { node, message }) => {
                assert_eq!(node, "P01");
                assert!(message.contains("not a usable URL"), "{bad}: {message}");
            }
            Err(other) => panic!("{bad}: {other:?}"),
            Ok(_) => panic!("{bad} accepted"),
        }
    }
}
