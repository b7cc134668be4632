//! Secure aggregation end to end with real processes: nodes, the helper and the coordinator as
//! HTTPS servers on 127.0.0.1 with mutual TLS, certificates and keys from `stroom certs --helper`.

use crate::support::*;
use policies::wire::{Answer, AnswerMeta};
use secagg::seal::HelperPrivateKey;
use secagg::vdaf::{Shape, parse_nonce, parse_verify_key};
use std::path::{Path, PathBuf};

const T: u32 = 1;

/// A file of one party's folder (`stroom certs --helper` makes one folder per party).
pub(crate) fn read(dir: &Path, party: &str, file: &str) -> String {
    std::fs::read_to_string(dir.join("certs").join(party).join(file)).expect(file)
}

pub(crate) fn helper_config(dir: &Path, nodes: &[&str]) -> PathBuf {
    let mut text = String::from(
        r#"listen = "127.0.0.1:0"
hpke_key = "certs/helper/helper.hpke.key"
verify_key = "certs/helper/aggregators.verify.key"
[tls]
cert = "certs/helper/helper.crt"
key = "certs/helper/helper.key"
client_ca = "certs/helper/ca.crt"
[store]
path = "helper.sqlite"
[batches]
# The test federations are small: collections of two reports (the default floor is three).
min_batch = 2
max_missing_share = 0.34
"#,
    );
    for n in nodes {
        text.push_str(&format!(
            "[[nodes]]\nid = \"{n}\"\npublic_key = \"{}\"\n",
            read(dir, n, &format!("{n}.sign.pub")).trim()
        ));
    }
    let path = dir.join("helper.toml");
    std::fs::write(&path, text).expect("helper config");
    path
}

pub(crate) fn secure_node(dir: &Path, id: &str, testing: &str) -> ServerProcess {
    let extra = format!(
        "client_ca = \"certs/{id}/ca.crt\"\n[secure]\nhelper_key = \"certs/{id}/helper.hpke.pub\"\nsigning_key = \"certs/{id}/{id}.sign.key\"\nmin_honest = 2\n{testing}"
    );
    ServerProcess::start(&node_config(dir, id, 5.0, &extra))
}

/// A helper configuration on a port chosen now, so that a restarted helper is found where it was;
/// with the helper's URL.
pub(crate) fn helper_config_on_a_fixed_port(dir: &Path, nodes: &[&str]) -> (PathBuf, String) {
    let cfg = helper_config(dir, nodes);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let text = std::fs::read_to_string(&cfg)
        .expect("cfg")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&cfg, text).expect("cfg");
    (cfg, format!("https://127.0.0.1:{port}"))
}

/// Secure nodes for `ids` and a coordinator that fans out to them through the helper at `helper`.
pub(crate) fn secure_federation(
    dir: &Path,
    ids: &[&str],
    helper: &str,
) -> (Vec<ServerProcess>, ServerProcess) {
    let nodes: Vec<ServerProcess> = ids.iter().map(|id| secure_node(dir, id, "")).collect();
    let pairs: Vec<(&str, &str)> = ids
        .iter()
        .zip(&nodes)
        .map(|(id, n)| (*id, n.url.as_str()))
        .collect();
    let coordinator =
        ServerProcess::start_coordinator(&secure_coordinator(dir, "coordinator", helper, &pairs));
    (nodes, coordinator)
}

pub(crate) fn secure_coordinator(
    dir: &Path,
    name: &str,
    helper: &str,
    nodes: &[(&str, &str)],
) -> PathBuf {
    secure_coordinator_with(dir, name, helper, nodes, "")
}

/// With `top` (top-level keys such as `quorum`) before the `[secure]` table.
pub(crate) fn secure_coordinator_with(
    dir: &Path,
    name: &str,
    helper: &str,
    nodes: &[(&str, &str)],
    top: &str,
) -> PathBuf {
    coordinator_config(
        dir,
        name,
        nodes,
        &format!(
            "{top}\n[secure]\nhelper_url = \"{helper}\"\nverify_key = \"certs/coordinator/aggregators.verify.key\"\nmax_missing = {T}\n"
        ),
    )
}

/// The node's noisy (scaled) vector, reconstructed from its report with both aggregators' keys:
/// what only a coalition of coordinator and helper could do.
fn noisy_vector(dir: &Path, meta: &AnswerMeta) -> Vec<i128> {
    let s = meta.secure.as_ref().expect("a secure answer");
    let b = &s.binding;
    let shape = Shape::new(b.bits, b.length as usize).expect("shape");
    let sk = HelperPrivateKey::from_hex(&read(dir, "helper", "helper.hpke.key")).expect("hpke key");
    let node_key = read(dir, &b.node_id, &format!("{}.sign.pub", b.node_id));
    let helper_share = secagg::report::open(
        b,
        &s.public_share,
        &s.helper_share,
        &s.signature,
        Some(node_key.trim()),
        &sk,
    )
    .expect("report opens");
    let vk =
        parse_verify_key(&read(dir, "coordinator", "aggregators.verify.key")).expect("verify key");
    let nonce = parse_nonce(&b.nonce).expect("nonce");
    let public = hex::decode(&s.public_share).expect("hex");
    let leader = hex::decode(&s.leader_share).expect("hex");
    let (state, vs) = shape
        .leader_init(&vk, &nonce, &public, &leader)
        .expect("leader");
    let (out, msg) = shape
        .helper_verify(&vk, &nonce, &public, &helper_share, &vs)
        .expect("helper");
    let l = shape
        .aggregate([shape.leader_finish(state, &msg).expect("finish")])
        .expect("aggregate");
    let h = shape
        .aggregate([shape.decode_output_share(&out).expect("output share")])
        .expect("aggregate");
    shape.decode_sum(&shape.unshard(l, h, 1).expect("unshard"), 1)
}

/// The request the coordinator sends for a run of `n` nodes: its entry width planned from the
/// public bound on units, as `coordinator::runs` plans it.
/// The id of the helper's key as a node holds it (the key the coordinator asks nodes to seal to).
pub(crate) fn helper_key_id(dir: &Path) -> String {
    let text = read(dir, "P01", "helper.hpke.pub");
    secagg::seal::HelperPublicKey::from_hex(text.trim())
        .expect("helper key")
        .key_id()
        .to_string()
}

pub(crate) async fn run_request(
    dir: &Path,
    indicator: &str,
    quarter: &str,
    n: u32,
) -> serde_json::Value {
    let catalog = policies::Catalog::load(&catalog_dir())
        .await
        .expect("catalog");
    let base = catalog.get(indicator).expect("indicator");
    let period: policies::Period = quarter.parse().expect("period");
    let bits =
        coordinator::secure::planned_bits(base, &period, n - T, policies::wire::DEFAULT_MAX_UNITS);
    serde_json::json!({
        "indicator": indicator,
        "period": quarter,
        "secure": {
            "nodes": n,
            "max_missing": T,
            "bits": bits,
            "helper_key_id": helper_key_id(dir),
        },
    })
}

/// The node's stored answer, replayed (a repeat of the run's request: no new noise, no spend).
async fn replayed(dir: &Path, url: &str, indicator: &str, quarter: &str, n: u32) -> AnswerMeta {
    let c = coordinator_identity_client(dir);
    let r = c
        .post(format!("{url}/v1/evaluate"))
        .json(&run_request(dir, indicator, quarter, n).await)
        .send()
        .await
        .expect("evaluate");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get("x-stroom-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true"),
        "the run's release is replayed, not drawn anew"
    );
    let bytes = r.bytes().await.expect("body");
    let Answer { batch, meta } = Answer::decode(&bytes).expect("answer");
    assert_eq!(batch.num_columns(), meta.group_columns.len(), "keys only");
    meta
}

/// The cell index of a run record in the answers' key order.
fn cell_of(meta_keys: &[Vec<String>], columns: &[String], record: &serde_json::Value) -> usize {
    meta_keys
        .iter()
        .position(|key| {
            columns.iter().zip(key).all(|(c, v)| {
                record["group"]
                    .get(c)
                    .and_then(|x| x.as_str())
                    .unwrap_or_else(|| record["period"].as_str().unwrap_or_default())
                    == v
            })
        })
        .expect("record's cell")
}

/// Files of a party, as bytes.
fn contents(paths: &[PathBuf]) -> Vec<(PathBuf, Vec<u8>)> {
    paths
        .iter()
        .filter_map(|p| std::fs::read(p).ok().map(|b| (p.clone(), b)))
        .collect()
}

/// Where a value shows in the clear: as an Arrow/little-endian i64, or as a decimal number
/// standing alone in text.
fn finds(haystack: &[u8], value: i64) -> bool {
    let le = value.to_le_bytes();
    if haystack.windows(8).any(|w| w == le) {
        return true;
    }
    let text = value.to_string();
    let t = text.as_bytes();
    haystack.windows(t.len()).enumerate().any(|(i, w)| {
        w == t
            && !haystack
                .get(i.wrapping_sub(1))
                .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'.')
            && !haystack
                .get(i + t.len())
                .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'.')
    })
}

#[tokio::test]
async fn a_secure_run_sums_the_nodes_noisy_vectors_and_no_party_sees_them() {
    let ids = ["P01", "P02", "P03", "P04"];
    let fed = secure_federation_fixture(ids.len());
    let dir = fed.path();
    let helper_log = dir.join("helper.log");
    let helper =
        ServerProcess::spawn_logging("helper", &helper_config(dir, &ids), Some(&helper_log));
    let nodes: Vec<ServerProcess> = ids.iter().map(|id| secure_node(dir, id, "")).collect();
    let pairs: Vec<(&str, &str)> = ids
        .iter()
        .zip(&nodes)
        .map(|(id, n)| (*id, n.url.as_str()))
        .collect();
    let coordinator_log = dir.join("coordinator.log");
    let coordinator = ServerProcess::spawn_logging(
        "coordinator",
        &secure_coordinator(dir, "coordinator", &helper.url, &pairs),
        Some(&coordinator_log),
    );
    let c = client(dir);
    let n = ids.len() as u32;

    for indicator in ["care.youth_days", "measures.youths_by_type"] {
        let run = run_to_completion(&c, &coordinator.url, indicator, "2024Q2").await;
        assert_eq!(run["status"], "done", "{run}");
        let records = run["results"].as_array().expect("results");
        assert!(!records.is_empty());

        // Every node's noisy vector, and its share of the variance.
        let mut metas = Vec::new();
        for node in &nodes {
            metas.push(replayed(dir, &node.url, indicator, "2024Q2", n).await);
        }
        let vectors: Vec<Vec<i128>> = metas.iter().map(|m| noisy_vector(dir, m)).collect();
        let reference = &metas[0];
        let g = reference
            .secure
            .as_ref()
            .expect("secure")
            .binding
            .granularity[0];
        let variance: f64 = metas.iter().map(|m| m.measures[0].variance).sum();
        // The answers' public keys, in order: decode one answer again for its batch.
        let answer = coordinator_identity_client(dir)
            .post(format!("{}/v1/evaluate", nodes[0].url))
            .json(&run_request(dir, indicator, "2024Q2", n).await)
            .send()
            .await
            .expect("evaluate")
            .bytes()
            .await
            .expect("body");
        let batch = Answer::decode(&answer).expect("answer").batch;
        let keys: Vec<Vec<String>> = (0..batch.num_rows())
            .map(|row| {
                reference
                    .group_columns
                    .iter()
                    .map(|col| {
                        let a = batch.column_by_name(col).expect("key column");
                        datafusion::arrow::util::display::array_value_to_string(a, row)
                            .expect("key")
                    })
                    .collect()
            })
            .collect();
        assert_eq!(keys.len(), records.len());
        for r in records {
            let cell = cell_of(&keys, &reference.group_columns, r);
            let total: i128 = vectors.iter().map(|v| v[cell]).sum();
            let estimate = r["estimate"].as_f64().expect("estimate");
            // The sum exactly, clamped to the count's range (≥ 0) as every published count is.
            let exact = total as f64 / g as f64;
            assert_eq!(estimate, exact.max(0.0), "{indicator} {r}");
            assert_eq!(r["providers_reporting"], n);
            let high = r["ci_high"].as_f64().expect("ci");
            if high > 0.0 {
                let half = high - exact;
                assert!(
                    (half - 1.959_963_984_540_054 * variance.sqrt()).abs() < 1e-6 * half.max(1.0),
                    "interval from the summed share variances: {half} vs {variance}"
                );
            }
        }
        // Each node's noise is its share: n − t shares make the central variance.
        let central = metas[0].measures[0].l2_bound.powi(2)
            / (2.0 * metas[0].secure.as_ref().expect("s").measures[0].rho);
        let honest_sum = (n - T) as f64 * metas[0].measures[0].variance;
        assert!(
            honest_sum >= central * 0.999 && honest_sum <= central * 1.002,
            "{honest_sum} vs {central}"
        );

        // Canary: each node's noisy cells (large for the day sums) appear nowhere in the clear
        // at the coordinator or the helper.
        let watched = contents(&[
            dir.join("coordinator.sqlite"),
            dir.join("coordinator.sqlite-wal"),
            dir.join("coordinator-audit.jsonl"),
            coordinator_log.clone(),
            dir.join("helper.sqlite"),
            dir.join("helper.sqlite-wal"),
            helper_log.clone(),
        ]);
        assert!(watched.len() >= 4, "the stores and logs exist");
        if indicator == "care.youth_days" {
            for v in &vectors {
                for x in v {
                    let x = (*x / g as i128) as i64;
                    assert!(x.abs() >= 1000, "a recognisable canary: {x}");
                    for (path, bytes) in &watched {
                        assert!(
                            !finds(bytes, x),
                            "node value {x} in the clear in {}",
                            path.display()
                        );
                    }
                }
            }
        }
    }

    // Report material is gone from both stores once the runs are finished: no leader share or
    // sealed helper share in the coordinator's files, no output share in the helper's; the
    // audit trail (node, batch, times, hashes) stays.
    let coordinator_files = contents(&[
        dir.join("coordinator.sqlite"),
        dir.join("coordinator.sqlite-wal"),
    ]);
    for node in &nodes {
        for indicator in ["care.youth_days", "measures.youths_by_type"] {
            let shares = replayed(dir, &node.url, indicator, "2024Q2", n)
                .await
                .secure
                .expect("secure");
            for material in [
                &shares.leader_share[..64],
                &shares.helper_share.ciphertext[..64],
            ] {
                for (path, bytes) in &coordinator_files {
                    assert!(
                        !bytes
                            .windows(material.len())
                            .any(|w| w == material.as_bytes()),
                        "report material of {} still in {}",
                        node.url,
                        path.display()
                    );
                }
            }
        }
    }
    let coordinator_store =
        rusqlite::Connection::open(dir.join("coordinator.sqlite")).expect("coordinator store");
    let (answers, erased, hashed): (i64, i64, i64) = coordinator_store
        .query_row(
            "SELECT count(*), count(erased_at), count(answer_sha256) FROM answers WHERE secure = 1 AND answer IS NULL",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("answers");
    assert_eq!(
        (answers, erased, hashed),
        (8, 8, 8),
        "two runs of four reports"
    );
    let helper_store = rusqlite::Connection::open(dir.join("helper.sqlite")).expect("helper store");
    let (reports, live, audited): (i64, i64, i64) = helper_store
        .query_row(
            "SELECT count(*), count(*) FILTER (WHERE length(output_share) > 0 OR erased_at IS NULL),
                    count(share_sha256) FROM reports",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("reports");
    assert_eq!((reports, live, audited), (8, 0, 8));

    // Each node spent each release once: ρ 0.05 for care.youth_days and 0.05 for the other.
    for node in &nodes {
        let b = budget(&coordinator_identity_client(dir), &node.url).await;
        let spent = b["rho_spent"].as_f64().expect("spent");
        let expect = ["care.youth_days", "measures.youths_by_type"]
            .iter()
            .map(|id| {
                let t = std::fs::read_to_string(catalog_dir().join(format!("{id}.toml")))
                    .expect("toml");
                let v: toml::Value = toml::from_str(&t).expect("toml");
                v["cost"]["rho"].as_float().expect("rho")
            })
            .sum::<f64>();
        assert!((spent - expect).abs() < 1e-6, "{spent} vs {expect}");
    }
    drop(coordinator);

    // Positive control for the canary: a per-node run stores the noisy values in the clear, and
    // the same search finds them.
    let plain = ServerProcess::start_coordinator(&coordinator_config(dir, "plain", &pairs, ""));
    let run = run_to_completion(&c, &plain.url, "care.youth_days", "2024Q3").await;
    assert_eq!(run["status"], "done", "{run}");
    let store = std::fs::read(dir.join("plain.sqlite"))
        .into_iter()
        .chain(std::fs::read(dir.join("plain.sqlite-wal")))
        .flatten()
        .collect::<Vec<u8>>();
    let c2 = coordinator_identity_client(dir);
    let r = c2
        .post(format!("{}/v1/evaluate", nodes[0].url))
        .json(&serde_json::json!({"indicator": "care.youth_days", "period": "2024Q3"}))
        .send()
        .await
        .expect("evaluate")
        .bytes()
        .await
        .expect("bytes");
    let Answer { batch, meta } = Answer::decode(&r).expect("answer");
    let values = batch
        .column_by_name(&meta.measures[0].column)
        .expect("values");
    let values = values
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Int64Array>()
        .expect("i64");
    assert!(values.iter().flatten().any(|v| finds(&store, v)));
}

#[tokio::test]
async fn dropouts_within_t_publish_with_the_real_variance_and_beyond_t_nothing() {
    let ids = ["P01", "P02", "P03", "P04"];
    let fed = secure_federation_fixture(ids.len());
    let dir = fed.path();
    let helper = ServerProcess::start_helper(&helper_config(dir, &ids));
    let mut nodes: Vec<ServerProcess> = ids
        .iter()
        .map(|id| {
            // P04 cheats: its report is altered after sharding and must fail verification.
            let testing = if *id == "P04" {
                "[testing]\ncorrupt_secure_report = true\n"
            } else {
                ""
            };
            secure_node(dir, id, testing)
        })
        .collect();
    let pairs: Vec<(String, String)> = ids
        .iter()
        .zip(&nodes)
        .map(|(id, n)| (id.to_string(), n.url.clone()))
        .collect();
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    // Publish when 3 of 4 answer (quorum 0.7), marked incomplete.
    let cfg = secure_coordinator_with(dir, "coordinator", &helper.url, &refs, "quorum = 0.7");
    let coordinator = ServerProcess::start_coordinator(&cfg);
    let c = client(dir);

    // One cheater, t = 1: excluded with the reason, published from 3 of 4.
    let run = run_to_completion(&c, &coordinator.url, "care.unique_youths", "2024Q1").await;
    assert_eq!(run["status"], "partial", "{run}");
    let error = run["error"].as_str().unwrap_or_default();
    assert!(error.contains("P04") && error.contains("verif"), "{error}");
    let record = &run["results"][0];
    assert_eq!(record["providers_reporting"], 3);
    assert_eq!(record["providers_total"], 4);
    let meta = replayed(dir, &nodes[0].url, "care.unique_youths", "2024Q1", 4).await;
    let half = record["ci_high"].as_f64().expect("ci") - record["estimate"].as_f64().expect("e");
    let three = 3.0 * meta.measures[0].variance;
    assert!(
        (half - 1.959_963_984_540_054 * three.sqrt()).abs() < 1e-6,
        "the variance of the three reports that count"
    );
    let public = get_json_as(
        &c,
        RESEARCHER_TOKEN,
        format!(
            "{}/v1/indicators?indicator=care.unique_youths",
            coordinator.url
        ),
    )
    .await;
    let published = public.to_string();
    assert!(
        published.contains("2024Q1")
            && published.contains("\"providers_reporting\":3")
            && published.contains("\"complete\":false"),
        "published as 3 of 4, incomplete: {public}"
    );

    // A cheater and a node down: beyond t, the run fails and publishes nothing.
    nodes[2].kill();
    let run = run_to_completion(&c, &coordinator.url, "care.unique_youths", "2024Q2").await;
    assert_eq!(run["status"], "failed", "{run}");
    let error = run["error"].as_str().unwrap_or_default();
    assert!(error.contains("secure aggregation failed"), "{error}");
    assert!(
        run["results"].as_array().is_none_or(|r| r.is_empty()),
        "{run}"
    );
    let public = get_json_as(
        &c,
        RESEARCHER_TOKEN,
        format!("{}/v1/indicators", coordinator.url),
    )
    .await;
    assert!(
        !public.to_string().contains("2024Q2"),
        "nothing of the failed run is published, not even under embargo: {public}"
    );
}

#[tokio::test]
async fn helper_down_or_restarted_draws_no_new_noise_and_counts_no_report_twice() {
    let ids = ["P01", "P02", "P03"];
    let fed = secure_federation_fixture(ids.len());
    let dir = fed.path();
    let (helper_cfg, helper_url) = helper_config_on_a_fixed_port(dir, &ids);
    let (nodes, coordinator) = secure_federation(dir, &ids, &helper_url);
    let c = client(dir);
    let spent = |url: String| {
        let dir = dir.to_path_buf();
        async move {
            budget(&coordinator_identity_client(&dir), &url).await["rho_spent"]
                .as_f64()
                .expect("spent")
        }
    };

    // Helper down: the run fails explicitly, before any node is asked (the helper's key is
    // asked first), so nothing is spent; it never falls back to per-node noise.
    let run = run_to_completion(&c, &coordinator.url, "care.unique_youths", "2024Q1").await;
    assert_eq!(run["status"], "failed", "{run}");
    assert!(
        run["error"].as_str().unwrap_or_default().contains("helper"),
        "{run}"
    );
    let after_first: Vec<f64> =
        futures::future::join_all(nodes.iter().map(|n| spent(n.url.clone()))).await;
    assert!(after_first.iter().all(|s| *s == 0.0), "{after_first:?}");

    // Helper up: the run goes through.
    let mut helper = ServerProcess::start_helper(&helper_cfg);
    let run = run_to_completion(&c, &coordinator.url, "care.unique_youths", "2024Q1").await;
    assert_eq!(run["status"], "done", "{run}");
    let first = run["results"].clone();
    let after_second: Vec<f64> =
        futures::future::join_all(nodes.iter().map(|n| spent(n.url.clone()))).await;
    assert!(after_second.iter().all(|s| *s > 0.0), "{after_second:?}");

    // Helper restarted: its store keeps the verified reports and the collection, so the same
    // run (the nodes replay their stored reports: no new noise) gives the same sums, counted
    // once.
    helper.kill();
    let _helper = ServerProcess::start_helper(&helper_cfg);
    let run = run_to_completion(&c, &coordinator.url, "care.unique_youths", "2024Q1").await;
    assert_eq!(run["status"], "done", "{run}");
    assert_eq!(run["results"], first, "same reports, same national sums");
    let after_third: Vec<f64> =
        futures::future::join_all(nodes.iter().map(|n| spent(n.url.clone()))).await;
    assert_eq!(after_second, after_third, "no second spend");
    drop(coordinator);
}

#[tokio::test]
async fn the_helper_accepts_the_coordinator_only() {
    let fed = secure_federation_fixture(2);
    let dir = fed.path();
    let helper = ServerProcess::start_helper(&helper_config(dir, &["P01", "P02"]));
    let url = format!("{}/healthz", helper.url);
    let ca = std::fs::read(dir.join("certs/ca/ca.crt")).expect("ca");
    let with_identity = |cert: &Path, key: &Path| {
        let mut pem = std::fs::read(cert).expect("cert");
        pem.extend(std::fs::read(key).expect("key"));
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("pem")])
            .identity(reqwest::Identity::from_pem(&pem).expect("identity"))
            .build()
            .expect("client")
    };
    let certs = dir.join("certs");
    // The coordinator gets in.
    let ok = coordinator_identity_client(dir)
        .get(&url)
        .send()
        .await
        .expect("coordinator reaches the helper");
    assert_eq!(ok.status(), 200);
    // No certificate, a node's certificate, or a coordinator certificate of another CA do not.
    assert!(
        client(dir).get(&url).send().await.is_err(),
        "no client certificate"
    );
    let node = with_identity(&certs.join("P01/P01.crt"), &certs.join("P01/P01.key"));
    assert!(node.get(&url).send().await.is_err(), "a node's certificate");
    let other = tempfile::tempdir().expect("tempdir");
    let out = run(&[
        "certs",
        "--out",
        other.path().to_str().expect("path"),
        "--nodes",
        "P01",
    ]);
    assert!(out.status.success());
    let foreign = with_identity(
        &other.path().join("coordinator/coordinator.crt"),
        &other.path().join("coordinator/coordinator.key"),
    );
    assert!(foreign.get(&url).send().await.is_err(), "another CA");
    // A client certificate of the same CA, but for another name than the coordinator's (what
    // the CA's holder could mint): refused by the helper's pinned client name. The same made
    // for the coordinator's name gets in, so the name is what decides.
    let minted = |name: &str| {
        let ca_key = rcgen::KeyPair::from_pem(&read(dir, "ca", "ca.key")).expect("ca key");
        let issuer =
            rcgen::Issuer::from_ca_cert_pem(&read(dir, "ca", "ca.crt"), ca_key).expect("issuer");
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &issuer).expect("sign");
        let (c, k) = (
            other.path().join(format!("{name}.crt")),
            other.path().join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("cert");
        std::fs::write(&k, key.serialize_pem()).expect("key");
        with_identity(&c, &k)
    };
    assert!(
        minted("p01.node.stroom").get(&url).send().await.is_err(),
        "a same-CA client certificate for another name"
    );
    let pinned = minted("coordinator.stroom").get(&url).send().await;
    assert_eq!(
        pinned.expect("the coordinator's name gets in").status(),
        200
    );
}

#[tokio::test]
async fn a_coordinator_killed_mid_run_resumes_without_counting_or_spending_twice() {
    let ids = ["P01", "P02", "P03"];
    let fed = secure_federation_fixture(ids.len());
    let dir = fed.path();
    let helper = ServerProcess::start_helper(&helper_config(dir, &ids));
    // Each node pauses after recording its spend, so the kill lands while answers are in flight.
    let slow = "[testing]\npause_after_spend_ms = 1500\n";
    let nodes: Vec<ServerProcess> = ids.iter().map(|id| secure_node(dir, id, slow)).collect();
    let pairs: Vec<(&str, &str)> = ids
        .iter()
        .zip(&nodes)
        .map(|(id, n)| (*id, n.url.as_str()))
        .collect();
    let cfg = secure_coordinator(dir, "coordinator", &helper.url, &pairs);
    let c = client(dir);
    let as_coordinator = coordinator_identity_client(dir);

    let mut first = ServerProcess::start_coordinator(&cfg);
    let id = start_run(&c, &first.url, "care.unique_youths", "2024Q1:2024Q4").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while budget(&as_coordinator, &nodes[0].url).await["releases"].as_u64() == Some(0) {
        assert!(std::time::Instant::now() < deadline, "no spend recorded");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    first.kill();

    let second = ServerProcess::start_coordinator(&cfg);
    let run = wait_for_run(&c, &second.url, &id).await;
    assert_eq!(run["status"], "done", "{run}");
    assert_eq!(run["resumed"], 1, "{run}");
    assert_eq!(run["results"].as_array().map(Vec::len), Some(4));
    for node in &nodes {
        let b = budget(&as_coordinator, &node.url).await;
        assert_eq!(b["releases"], 4, "{b}");
        let spent = b["rho_spent"].as_f64().unwrap_or_default();
        assert!((spent - 4.0 * 0.05).abs() < 1e-6, "spent {spent}: {b}");
    }
    // The helper verified each node's report once per quarter and collected each quarter once.
    let store = rusqlite::Connection::open(dir.join("helper.sqlite")).expect("helper store");
    let count = |sql: &str| -> i64 { store.query_row(sql, [], |r| r.get(0)).expect(sql) };
    assert_eq!(count("SELECT count(*) FROM reports"), 12);
    assert_eq!(count("SELECT count(DISTINCT nonce) FROM reports"), 12);
    assert_eq!(count("SELECT count(*) FROM collections"), 4);
    assert_eq!(count("SELECT min(count) FROM collections"), 3);
}

/// The nodes' and the helper's floors hold whatever the coordinator declares: a node refuses a
/// run declaring t above its ceiling, counting on fewer honest nodes than it requires, or an
/// absurd n, before it spends anything; the helper refuses reports of a run whose n − t is below
/// its minimum batch, even from nodes that accepted the run.
#[tokio::test]
async fn floors_hold_whatever_the_coordinator_declares() {
    let ids = ["P01", "P02", "P03"];
    let fed = secure_federation_fixture(ids.len());
    let dir = fed.path();

    // P01 at the defaults: at least three honest nodes, at most a third of n missing.
    let defaults = "client_ca = \"certs/P01/ca.crt\"\n[secure]\nhelper_key = \"certs/P01/helper.hpke.pub\"\nsigning_key = \"certs/P01/P01.sign.key\"\n";
    let strict = ServerProcess::start(&node_config(dir, "P01", 5.0, defaults));
    let c = coordinator_identity_client(dir);
    let spent_before = budget(&c, &strict.url).await;
    for (n, t, code) in [
        (12u32, 10u32, "too_many_missing"),
        (12, 5, "too_many_missing"),
        (3, 1, "too_few_honest_nodes"),
        (u32::MAX, 1, "invalid_request"),
        (10_001, 2, "invalid_request"),
    ] {
        let r = c
            .post(format!("{}/v1/evaluate", strict.url))
            .json(&serde_json::json!({
                "indicator": "care.youth_days",
                "period": "2024Q2",
                "secure": { "nodes": n, "max_missing": t, "bits": 40 },
            }))
            .send()
            .await
            .expect("evaluate");
        assert_eq!(r.status(), 422, "n = {n}, t = {t}");
        let body: serde_json::Value = r.json().await.expect("json");
        assert_eq!(body["error"], code, "n = {n}, t = {t}: {body}");
    }
    // Within its floors the same node answers (the control).
    let ok = c
        .post(format!("{}/v1/evaluate", strict.url))
        .json(&serde_json::json!({
            "indicator": "care.youth_days",
            "period": "2024Q2",
            "secure": { "nodes": 12, "max_missing": 4, "bits": 40 },
        }))
        .send()
        .await
        .expect("evaluate");
    assert_eq!(ok.status(), 200);
    let spent_after = budget(&c, &strict.url).await;
    assert_eq!(spent_before["releases"], 0, "{spent_before}");
    assert_eq!(
        spent_after["releases"], 1,
        "only the accepted request spent: {spent_after}"
    );
    drop(strict);

    // Nodes that accept n = 3, t = 1 (min_honest 2), a helper at its default minimum batch of 3:
    // the helper rejects every report, and nothing is published.
    let cfg = helper_config(dir, &ids);
    let text = std::fs::read_to_string(&cfg).expect("helper config");
    std::fs::write(&cfg, text.replace("min_batch = 2", "min_batch = 3")).expect("write");
    let helper = ServerProcess::start_helper(&cfg);
    let (_nodes, coordinator) = secure_federation(dir, &ids, &helper.url);
    let run = run_to_completion(&client(dir), &coordinator.url, "care.youth_days", "2024Q3").await;
    assert_eq!(run["status"], "failed", "{run}");
    let error = run["error"].as_str().unwrap_or_default();
    assert!(error.contains("requires at least 3"), "{error}");
}
