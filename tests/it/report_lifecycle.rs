//! A report's life at the aggregators: it is refused outside the report window, it is sealed to a
//! helper key that can rotate without stopping runs, and a helper store restored from a backup
//! cannot count it again.

use crate::secure_aggregation::{
    helper_config, helper_config_on_a_fixed_port, secure_coordinator, secure_federation,
    secure_node,
};
use crate::support::*;
use std::path::{Path, PathBuf};

fn with_helper_setting(cfg: &Path, setting: &str) {
    let text = std::fs::read_to_string(cfg).expect("helper config");
    let text = text.replace(
        "max_missing_share = 0.34\n",
        &format!("max_missing_share = 0.34\n{setting}\n"),
    );
    std::fs::write(cfg, text).expect("helper config");
}

fn pairs<'a>(ids: &[&'a str], nodes: &'a [ServerProcess]) -> Vec<(&'a str, &'a str)> {
    ids.iter()
        .zip(nodes)
        .map(|(id, n)| (*id, n.url.as_str()))
        .collect()
}

/// Nodes whose clocks run two hours behind make reports the helper's one-hour window refuses,
/// and a coordinator with a one-hour window excludes them before the helper sees them.
#[tokio::test]
async fn reports_outside_the_window_are_refused_by_both_aggregators() {
    let ids = ["P01", "P02", "P03"];
    let fed = secure_federation_fixture(ids.len());
    let dir = fed.path();
    let cfg = helper_config(dir, &ids);
    with_helper_setting(&cfg, "report_max_age = \"1h\"");
    let helper = ServerProcess::start_helper(&cfg);
    let late = "[testing]\nclock_offset_secs = -7200\n";
    let nodes: Vec<ServerProcess> = ids.iter().map(|id| secure_node(dir, id, late)).collect();
    let c = client(dir);

    // The coordinator's window is the default day: the helper refuses every report.
    let coordinator = ServerProcess::start_coordinator(&secure_coordinator(
        dir,
        "coordinator",
        &helper.url,
        &pairs(&ids, &nodes),
    ));
    let run = run_to_completion(&c, &coordinator.url, "care.youth_days", "2024Q2").await;
    assert_eq!(run["status"], "failed", "{run}");
    let error = run["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("rejected by the helper") && error.contains("window of 1h"),
        "{error}"
    );
    drop(coordinator);

    // A coordinator with a one-hour window excludes them itself.
    let strict = secure_coordinator(dir, "strict", &helper.url, &pairs(&ids, &nodes));
    let text = std::fs::read_to_string(&strict).expect("config");
    std::fs::write(
        &strict,
        text.replacen("\n[store]", "\nreport_max_age = \"1h\"\n[store]", 1),
    )
    .expect("config");
    let coordinator = ServerProcess::start_coordinator(&strict);
    let run = run_to_completion(&c, &coordinator.url, "care.youth_days", "2024Q2").await;
    assert_eq!(run["status"], "failed", "{run}");
    let error = run["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("made 2h") && !error.contains("rejected by the helper"),
        "{error}"
    );

    // Nodes with a right clock: the same federation publishes.
    drop(nodes);
    let nodes: Vec<ServerProcess> = ids.iter().map(|id| secure_node(dir, id, "")).collect();
    let coordinator = ServerProcess::start_coordinator(&secure_coordinator(
        dir,
        "fresh",
        &helper.url,
        &pairs(&ids, &nodes),
    ));
    let run = run_to_completion(&c, &coordinator.url, "care.youth_days", "2024Q3").await;
    assert_eq!(run["status"], "done", "{run}");
}

/// A new helper key pair made by the helper: private key in the helper's folder, public key
/// (what the helper's operator sends) in every node's.
fn rotate_in(dir: &Path, ids: &[&str]) -> (PathBuf, String) {
    let (private, public) = secagg::seal::HelperPrivateKey::generate();
    let key = dir.join("certs/helper/helper-next.hpke.key");
    std::fs::write(&key, private).expect("key");
    for id in ids {
        std::fs::write(
            dir.join(format!("certs/{id}/helper-next.hpke.pub")),
            &public,
        )
        .expect("pub");
    }
    let id = secagg::seal::HelperPublicKey::from_hex(&public)
        .expect("pub")
        .key_id()
        .to_string();
    (key, id)
}

/// A rotation: the helper holds the next key beside its current one, nodes are given it, the
/// helper makes it current, and runs go on throughout; a node that was not given the new key
/// refuses to seal to it before it spends anything.
#[tokio::test]
async fn a_helper_key_rotation_keeps_runs_working() {
    let ids = ["P01", "P02", "P03"];
    let fed = secure_federation_fixture(ids.len());
    let dir = fed.path();
    let (next_key, next_id) = rotate_in(dir, &ids);
    let old_id = crate::secure_aggregation::helper_key_id(dir);
    let c = client(dir);
    let keys_of = |helper: &str| {
        let (helper, dir) = (helper.to_string(), dir.to_path_buf());
        async move {
            coordinator_identity_client(&dir)
                .get(format!("{helper}/v1/hpke_keys"))
                .send()
                .await
                .expect("keys")
                .json::<serde_json::Value>()
                .await
                .expect("json")
        }
    };

    // Step 1: the helper opens with both keys; the old one is still current.
    let cfg = helper_config(dir, &ids);
    let both = std::fs::read_to_string(&cfg).expect("cfg").replacen(
        "verify_key =",
        &format!(
            "hpke_other_keys = [\"{}\"]\nverify_key =",
            next_key.display()
        ),
        1,
    );
    std::fs::write(&cfg, &both).expect("cfg");
    let mut helper = ServerProcess::start_helper(&cfg);
    let keys = keys_of(&helper.url).await;
    assert_eq!(keys["current"], old_id.as_str(), "{keys}");
    assert_eq!(keys["keys"], serde_json::json!([old_id, next_id]), "{keys}");
    let next = |id: &str| format!("helper_next_key = \"certs/{id}/helper-next.hpke.pub\"\n");
    let nodes: Vec<ServerProcess> = ids
        .iter()
        .map(|id| secure_node(dir, id, &next(id)))
        .collect();
    let coordinator = ServerProcess::start_coordinator(&secure_coordinator(
        dir,
        "coordinator",
        &helper.url,
        &pairs(&ids, &nodes),
    ));
    let run = run_to_completion(&c, &coordinator.url, "care.youth_days", "2024Q1").await;
    assert_eq!(run["status"], "done", "{run}");
    drop(coordinator);

    // Step 2: the new key becomes current, the old one is kept for reports still in flight.
    helper.kill();
    let swapped = both
        .replacen(
            "hpke_key = \"certs/helper/helper.hpke.key\"",
            &format!("hpke_key = \"{}\"", next_key.display()),
            1,
        )
        .replacen(
            &format!("hpke_other_keys = [\"{}\"]", next_key.display()),
            "hpke_other_keys = [\"certs/helper/helper.hpke.key\"]",
            1,
        );
    std::fs::write(&cfg, swapped).expect("cfg");
    let helper = ServerProcess::start_helper(&cfg);
    assert_eq!(keys_of(&helper.url).await["current"], next_id.as_str());
    let coordinator = ServerProcess::start_coordinator(&secure_coordinator(
        dir,
        "rotated",
        &helper.url,
        &pairs(&ids, &nodes),
    ));
    let run = run_to_completion(&c, &coordinator.url, "care.youth_days", "2024Q2").await;
    assert_eq!(run["status"], "done", "{run}");

    // A node without the next key refuses to seal to it, before any spend.
    drop(coordinator);
    drop(nodes);
    let lagging = secure_node(dir, "P01", "");
    let response = coordinator_identity_client(dir)
        .post(format!("{}/v1/evaluate", lagging.url))
        .json(&serde_json::json!({
            "indicator": "care.youth_days",
            "period": "2024Q3",
            "secure": { "nodes": 3, "max_missing": 1, "bits": 40, "helper_key_id": next_id },
        }))
        .send()
        .await
        .expect("evaluate");
    assert_eq!(response.status(), 422);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"], "unknown_helper_key", "{body}");
    let spent = budget(&coordinator_identity_client(dir), &lagging.url).await;
    assert_eq!(spent["releases"], 2, "only the two runs' releases: {spent}");
}

/// The helper's store restored from a backup taken before a collection: the helper finds it
/// behind its watermark and counts none of the reports made before, so the same reports cannot
/// be collected a second time (over another node set, or at all).
#[tokio::test]
async fn a_restored_helper_store_cannot_collect_again() {
    let ids = ["P01", "P02", "P03"];
    let fed = secure_federation_fixture(ids.len());
    let dir = fed.path();
    let (cfg, helper_url) = helper_config_on_a_fixed_port(dir, &ids);
    let store = dir.join("helper.sqlite");
    let backup = dir.join("helper-backup.sqlite");

    // The operator's backup of a store that has not collected anything yet.
    let mut helper = ServerProcess::start_helper(&cfg);
    helper.kill();
    std::fs::copy(&store, &backup).expect("backup");
    let mut helper = ServerProcess::start_helper(&cfg);
    let (_nodes, coordinator) = secure_federation(dir, &ids, &helper_url);
    let c = client(dir);
    let run = run_to_completion(&c, &coordinator.url, "care.youth_days", "2024Q2").await;
    assert_eq!(run["status"], "done", "{run}");
    assert_eq!(
        std::fs::read_to_string(dir.join("helper.watermark"))
            .expect("watermark")
            .trim(),
        "1"
    );

    // Restored: the same reports (each node replays its release) are counted nowhere again.
    helper.kill();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", store.display()));
    }
    std::fs::copy(&backup, &store).expect("restore");
    let _helper = ServerProcess::start_helper(&cfg);
    let run = run_to_completion(&c, &coordinator.url, "care.youth_days", "2024Q2").await;
    assert_eq!(run["status"], "failed", "{run}");
    let error = run["error"].as_str().unwrap_or_default();
    assert!(error.contains("restored from a backup"), "{error}");
}
