#![allow(dead_code)]
//! End-to-end helpers: run the real `stroom` binary, start real node processes over HTTPS on
//! 127.0.0.1 (port 0), talk to them with a real TLS client.

pub mod postgres;
pub mod webdriver;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn stroom() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stroom"))
}

pub fn run(args: &[&str]) -> Output {
    stroom().args(args).output().expect("run stroom")
}

pub fn catalog_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies/catalog")
}

/// Synthetic data for `providers` providers and certificates for them, in a fresh temp dir.
pub fn federation_fixture(providers: usize) -> tempfile::TempDir {
    fixture(providers, &[])
}

/// [`federation_fixture`] with the secure-aggregation material (`stroom certs --helper`).
pub fn secure_federation_fixture(providers: usize) -> tempfile::TempDir {
    fixture(providers, &["--helper"])
}

fn fixture(providers: usize, cert_args: &[&str]) -> tempfile::TempDir {
    let dir = synth_fixture(providers);
    let ids: Vec<String> = (1..=providers).map(|i| format!("P{i:02}")).collect();
    let certs = dir.path().join("certs");
    let ids = ids.join(",");
    let mut args = vec!["certs", "--out", certs.to_str().unwrap(), "--nodes", &ids];
    args.extend_from_slice(cert_args);
    let out = run(&args);
    assert!(
        out.status.success(),
        "certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// Synthetic data for `providers` providers (P01, P02, …) in a fresh temp dir, no certificates.
pub fn synth_fixture(providers: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf8 path");
    let out = run(&[
        "synth",
        "--out",
        d,
        "--providers",
        &providers.to_string(),
        "--seed",
        "7",
    ]);
    assert!(
        out.status.success(),
        "synth: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// Write `DIR/<id>.toml` for a node serving `DIR/<id>/`, with extra TOML appended.
pub fn node_config(dir: &Path, id: &str, budget: f64, extra: &str) -> PathBuf {
    let path = dir.join(format!("{id}.toml"));
    let text = format!(
        r#"node_id = "{id}"
listen = "127.0.0.1:0"
catalog_dir = "{catalog}"
[data]
dir = "{id}"
coverage = "2022Q1:2024Q4"
[ledger]
path = "ledger-{id}.sqlite"
[audit]
path = "audit-{id}.jsonl"
[budget]
rho_per_period = {budget}
period = "year"
delta = 1e-6
[tls]
cert = "certs/{id}/{id}.crt"
key = "certs/{id}/{id}.key"
{extra}
"#,
        catalog = catalog_dir().display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// A `stroom node` or `stroom coordinator` process; killed (SIGKILL) when dropped.
pub struct ServerProcess {
    pub child: Child,
    pub url: String,
}

pub type NodeProcess = ServerProcess;

impl ServerProcess {
    pub fn start(config: &Path) -> ServerProcess {
        Self::spawn("node", config)
    }

    pub fn start_coordinator(config: &Path) -> ServerProcess {
        Self::spawn("coordinator", config)
    }

    pub fn start_helper(config: &Path) -> ServerProcess {
        Self::spawn("helper", config)
    }

    fn spawn(command: &str, config: &Path) -> ServerProcess {
        Self::spawn_logging(command, config, None)
    }

    /// Starts `stroom COMMAND --config FILE`; with `log`, its log (at debug level) goes to that
    /// file instead of the test's stderr.
    pub fn spawn_logging(command: &str, config: &Path, log: Option<&Path>) -> ServerProcess {
        let (level, stderr) = match log {
            Some(path) => (
                "debug",
                Stdio::from(std::fs::File::create(path).expect("log file")),
            ),
            None => ("warn", Stdio::inherit()),
        };
        let mut child = stroom()
            .args([command, "--config", config.to_str().unwrap()])
            .env("STROOM_LOG", level)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn node");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "{command} did not start in time");
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(i) = line.find("https://") {
                        let url = line[i..].trim().to_string();
                        // Keep draining stdout so the node never blocks on a full pipe.
                        std::thread::spawn(move || for _ in lines {});
                        return ServerProcess { child, url };
                    }
                }
                _ => {
                    let status = child.wait().expect("wait");
                    panic!("{command} exited before listening: {status}");
                }
            }
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL on Unix
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn client(dir: &Path) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = std::fs::read(dir.join("certs/ca/ca.crt")).expect("ca");
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("pem")])
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

pub async fn evaluate(
    c: &reqwest::Client,
    url: &str,
    indicator: &str,
    period: &str,
) -> reqwest::Response {
    c.post(format!("{url}/v1/evaluate"))
        .json(&serde_json::json!({ "indicator": indicator, "period": period }))
        .send()
        .await
        .expect("request")
}

pub async fn budget(c: &reqwest::Client, url: &str) -> serde_json::Value {
    c.get(format!("{url}/v1/budget"))
        .send()
        .await
        .expect("budget")
        .json()
        .await
        .expect("json")
}

/// A client holding the coordinator's certificate: what nodes with `client_ca` accept.
pub fn coordinator_identity_client(dir: &Path) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = std::fs::read(dir.join("certs/ca/ca.crt")).expect("ca");
    let mut pem = std::fs::read(dir.join("certs/coordinator/coordinator.crt")).expect("cert");
    pem.extend(std::fs::read(dir.join("certs/coordinator/coordinator.key")).expect("key"));
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("pem")])
        .identity(reqwest::Identity::from_pem(&pem).expect("identity"))
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

pub const RESEARCHER_TOKEN: &str = "test-researcher-token";

/// A coordinator config in `dir` for the given (node id, url) pairs; researcher token
/// [`RESEARCHER_TOKEN`].
pub fn coordinator_config(dir: &Path, name: &str, nodes: &[(&str, &str)], extra: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let mut text = format!(
        r#"listen = "127.0.0.1:0"
catalog_dir = "{catalog}"
{extra}
[store]
path = "{name}.sqlite"
[audit]
path = "{name}-audit.jsonl"
[tls]
ca = "certs/coordinator/ca.crt"
cert = "certs/coordinator/coordinator.crt"
key = "certs/coordinator/coordinator.key"
[fanout]
timeout_seconds = 30
attempts = 2
backoff_ms = 50
[[researchers]]
name = "tester"
token_sha256 = "{hash}"
"#,
        catalog = catalog_dir().display(),
        hash = coordinator::config::token_hash(RESEARCHER_TOKEN),
    );
    for (id, url) in nodes {
        text.push_str(&format!("[[nodes]]\nid = \"{id}\"\nurl = \"{url}\"\n"));
    }
    std::fs::write(&path, text).expect("write coordinator config");
    path
}

/// Start a run and wait until it has finished; returns the run's JSON.
pub async fn run_to_completion(
    c: &reqwest::Client,
    url: &str,
    indicator: &str,
    period: &str,
) -> serde_json::Value {
    let id = start_run(c, url, indicator, period).await;
    wait_for_run(c, url, &id).await
}

pub async fn start_run(c: &reqwest::Client, url: &str, indicator: &str, period: &str) -> String {
    start_run_as(c, url, RESEARCHER_TOKEN, indicator, period).await
}

/// [`start_run`] with another researcher's token.
pub async fn start_run_as(
    c: &reqwest::Client,
    url: &str,
    token: &str,
    indicator: &str,
    period: &str,
) -> String {
    let r = c
        .post(format!("{url}/v1/runs"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "indicator": indicator, "period": period }))
        .send()
        .await
        .expect("start run");
    assert_eq!(r.status(), 202);
    let body: serde_json::Value = r.json().await.expect("json");
    body["id"].as_str().expect("run id").to_string()
}

pub async fn wait_for_run(c: &reqwest::Client, url: &str, id: &str) -> serde_json::Value {
    wait_for_run_as(c, url, RESEARCHER_TOKEN, id).await
}

/// [`wait_for_run`] with another token.
pub async fn wait_for_run_as(
    c: &reqwest::Client,
    url: &str,
    token: &str,
    id: &str,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let body: serde_json::Value = c
            .get(format!("{url}/v1/runs/{id}"))
            .bearer_auth(token)
            .send()
            .await
            .expect("get run")
            .json()
            .await
            .expect("json");
        if matches!(body["status"].as_str(), Some("done" | "partial" | "failed")) {
            return body;
        }
        assert!(Instant::now() < deadline, "run did not finish: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `stroom ARGS` toward the coordinator at `url` (CA from `dir/certs`), with `token` as
/// `STROOM_TOKEN` (none: unset).
pub fn cli(
    dir: &std::path::Path,
    url: &str,
    token: Option<&str>,
    args: &[&str],
) -> std::process::Output {
    let mut cmd = stroom();
    cmd.args(args)
        .env("STROOM_COORDINATOR", url)
        .env("STROOM_CA", dir.join("certs/ca/ca.crt"))
        .env_remove("STROOM_TOKEN");
    if let Some(t) = token {
        cmd.env("STROOM_TOKEN", t);
    }
    cmd.output().expect("run stroom")
}

/// `stroom token create --role ROLE --name NAME` in the coordinator's store; the token printed.
pub fn create_token(config: &Path, role: &str, name: &str) -> String {
    create_token_with_key(config, role, name, None)
}

/// [`create_token`], for a reviewer with the ed25519 public key approvals are checked against.
pub fn create_token_with_key(
    config: &Path,
    role: &str,
    name: &str,
    public_key: Option<&str>,
) -> String {
    let mut args = vec![
        "token",
        "create",
        "--role",
        role,
        "--name",
        name,
        "--config",
        config.to_str().expect("utf8 path"),
    ];
    if let Some(k) = public_key {
        args.extend(["--public-key", k]);
    }
    let out = run(&args);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Node P01 with mutual TLS, started, and a coordinator config (not started) pointing at it.
pub fn mtls_node_and_coordinator_config(dir: &Path) -> (ServerProcess, PathBuf) {
    let node = ServerProcess::start(&node_config(
        dir,
        "P01",
        5.0,
        "client_ca = \"certs/ca/ca.crt\"",
    ));
    let cfg = coordinator_config(dir, "coordinator", &[("P01", &node.url)], "");
    (node, cfg)
}

/// GET a URL and parse the JSON answer (whatever the status).
pub async fn get_json(c: &reqwest::Client, url: String) -> serde_json::Value {
    get_json_request(c.get(url)).await
}

/// GET a URL with a bearer token and parse the JSON body.
pub async fn get_json_as(c: &reqwest::Client, token: &str, url: String) -> serde_json::Value {
    get_json_request(c.get(url).bearer_auth(token)).await
}

async fn get_json_request(request: reqwest::RequestBuilder) -> serde_json::Value {
    request
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json body")
}

/// GET a URL and return the body as text (whatever the status).
pub async fn get_text(c: &reqwest::Client, url: String) -> String {
    c.get(url)
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("text body")
}

/// Every (route, method, status) the coordinator has answered so far, from its request metrics, is
/// documented in its OpenAPI document: the document is checked against what the router really did.
pub async fn assert_answered_statuses_documented(c: &reqwest::Client, url: &str) {
    let doc = get_json(c, format!("{url}/openapi.json")).await;
    let metrics = get_text(c, format!("{url}/metrics")).await;
    let label = |line: &str, name: &str| {
        let start = line.find(&format!("{name}=\""))? + name.len() + 2;
        let len = line[start..].find('"')?;
        Some(line[start..start + len].to_string())
    };
    let mut seen = 0;
    let mut undocumented = Vec::new();
    for line in metrics
        .lines()
        .filter(|l| l.contains("_http_requests_total{"))
    {
        let (Some(method), Some(route), Some(status)) = (
            label(line, "method"),
            label(line, "route"),
            label(line, "status"),
        ) else {
            panic!("unreadable metrics line {line}");
        };
        if route == "unmatched" {
            continue;
        }
        seen += 1;
        let documented = doc["paths"][&route][method.to_lowercase()]["responses"]
            .get(&status)
            .is_some();
        if !documented {
            undocumented.push(format!("{method} {route} -> {status}"));
        }
    }
    assert!(seen > 0, "no requests counted:\n{metrics}");
    assert!(
        undocumented.is_empty(),
        "answered but not documented in /openapi.json: {undocumented:?}"
    );
}
