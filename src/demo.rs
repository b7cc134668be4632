//! `stroom demo`: synthetic data for every provider, certificates, every node and the coordinator
//! as real HTTPS servers on loopback (nodes accept only the coordinator's certificate), then every
//! catalog indicator run through the coordinator's researcher API for every quarter of
//! 2023Q1–2024Q4, plus the exact figures (possible only because the data is synthetic) to show what
//! the noise and the contribution bounds cost.

use anyhow::{Context, Result};
use coordinator::national::{BaseResult, CellSum};
use coordinator::publish::{self, Record};
use node::evaluate::{Bounding, Cells};
use policies::{Catalog, Period, TimeGrain};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const DEMO_PERIOD: &str = "2023Q1:2024Q4";
const NODE_BUDGET: f64 = 12.0;
const PANEL_BUDGET: f64 = 2.0;
pub(crate) const PANEL_UNIT: &str = "respondent_pid";

pub struct DemoOptions {
    pub out: PathBuf,
    pub providers: usize,
    pub seed: u64,
    pub catalog: PathBuf,
    /// Keep the federation and the dashboard running after the runs, until Ctrl-C.
    pub serve: bool,
    /// Per-node noise instead of secure aggregation with the helper (the explicit fallback).
    pub per_node: bool,
    /// Run the first provider over this PostgreSQL (its records written there, schema `p01`);
    /// the others read Parquet.
    pub postgres: Option<String>,
}

/// t of the demo's secure runs: one of the providers may drop out or cheat (none with fewer
/// than four providers, where the nodes' default floor of three honest nodes would refuse it).
pub const DEMO_MAX_MISSING: u32 = 1;

fn demo_max_missing(providers: usize) -> u32 {
    if providers >= 4 { DEMO_MAX_MISSING } else { 0 }
}

/// The floor on honest nodes the demo's nodes and helper hold: the default, lowered only as far
/// as a demo of two or three providers needs (a real node keeps its operator's setting).
pub(crate) fn demo_min_honest(nodes: usize, max_missing: u32) -> u32 {
    secagg::floors::DEFAULT_MIN_HONEST
        .min((nodes as u32).saturating_sub(max_missing))
        .max(1)
}

#[derive(Debug, Clone, Serialize)]
pub struct Truth {
    pub indicator: String,
    pub period: String,
    pub group: BTreeMap<String, String>,
    pub value: f64,
    pub value_bounded: f64,
}

pub(crate) fn node_config(
    dir: &Path,
    id: &str,
    catalog: &Path,
    tables: &[&str],
    budget: f64,
    extra: &str,
) -> Result<PathBuf> {
    node_config_over(dir, id, catalog, tables, budget, "", extra)
}

/// [`node_config`] with more keys in its `[data]` section (`source = "postgres"`).
fn node_config_over(
    dir: &Path,
    id: &str,
    catalog: &Path,
    tables: &[&str],
    budget: f64,
    data_keys: &str,
    extra: &str,
) -> Result<PathBuf> {
    let path = dir.join("nodes").join(format!("{id}.toml"));
    std::fs::create_dir_all(path.parent().unwrap_or(dir))?;
    let tables = tables
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "node_id = \"{id}\"\nlisten = \"127.0.0.1:0\"\ncatalog_dir = \"{}\"\n\n[data]\ndir = \"../data/{id}\"\ncoverage = \"{}\"\ntables = [{tables}]\n{data_keys}\n[ledger]\npath = \"../ledgers/{id}.sqlite\"\n\n[audit]\npath = \"../audit/{id}.jsonl\"\n\n[budget]\nrho_per_period = {budget}\nperiod = \"year\"\ndelta = 1e-6\n\n[tls]\ncert = \"../certs/{id}/{id}.crt\"\nkey = \"../certs/{id}/{id}.key\"\nclient_ca = \"../certs/{id}/ca.crt\"\n{extra}",
        catalog.display(),
        crate::synth::COVERAGE
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The `[data]` keys of a node over PostgreSQL: every data-model table from `schema`. The demo's
/// database is on loopback without TLS; a provider's is reached with `verify-full`.
fn postgres_data_keys(secret: &Path, schema: &str) -> String {
    let mut keys = format!(
        "source = \"postgres\"\n[data.postgres]\nconnection_file = \"{}\"\nsslmode = \"disable\"\n",
        secret.display()
    );
    for t in node::config::DEFAULT_TABLES {
        keys.push_str(&format!(
            "[data.postgres.tables.{t}]\nfrom = \"{schema}.{t}\"\n"
        ));
    }
    keys
}

/// The connection secret, readable by its owner only.
fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    Ok(())
}

/// Write a node's configuration under `dir/nodes/` (see `node_config`) and open the node.
pub(crate) async fn open_node(
    dir: &Path,
    id: &str,
    catalog: &Path,
    tables: &[&str],
    budget: f64,
    extra: &str,
) -> Result<Arc<node::Node>> {
    open_config(&node_config(dir, id, catalog, tables, budget, extra)?, id).await
}

async fn open_config(cfg_path: &Path, id: &str) -> Result<Arc<node::Node>> {
    let cfg = node::config::NodeConfig::load(cfg_path)?;
    let n = node::Node::open(cfg)
        .await
        .with_context(|| format!("node {id}"))?;
    Ok(Arc::new(n))
}

pub(crate) fn coordinator_config(
    dir: &Path,
    catalog: &Path,
    nodes: &[(String, String, &str)],
    token_sha256: &str,
    extra: &str,
) -> Result<PathBuf> {
    let path = dir.join("coordinator.toml");
    let mut text = format!(
        "listen = \"127.0.0.1:0\"\ncatalog_dir = \"{}\"\nquorum = 1.0\n{extra}\n[store]\npath = \"runs.sqlite\"\n\n[audit]\npath = \"audit/coordinator.jsonl\"\n\n[tls]\nca = \"certs/coordinator/ca.crt\"\ncert = \"certs/coordinator/coordinator.crt\"\nkey = \"certs/coordinator/coordinator.key\"\n\n[[researchers]]\nname = \"demo\"\ntoken_sha256 = \"{token_sha256}\"\n",
        catalog.display()
    );
    for (id, url, unit) in nodes {
        text.push_str(&format!(
            "\n[[nodes]]\nid = \"{id}\"\nurl = \"{url}\"\nunits = [\"{unit}\"]\n"
        ));
    }
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A node's `[secure]` section: the helper's public key and the node's signing key, both from
/// the demo's certificate folder.
pub(crate) fn node_secure_section(id: &str, min_honest: u32) -> String {
    format!(
        "\n[secure]\nhelper_key = \"../certs/{id}/{}\"\nsigning_key = \"../certs/{id}/{}\"\nmin_honest = {min_honest}\n",
        crate::certs::HELPER_HPKE_PUB,
        crate::certs::node_signing_key(id)
    )
}

/// The coordinator's `[secure]` section for a helper at `helper_url`; `t` is the TOML line that
/// sets t (`max_missing = 1` or `max_missing_share = 0.1`).
pub(crate) fn coordinator_secure_section(helper_url: &str, t: &str) -> String {
    format!(
        "\n[secure]\nhelper_url = \"{helper_url}\"\nverify_key = \"certs/coordinator/{}\"\n{t}\n",
        crate::certs::VERIFY_KEY
    )
}

/// Writes `dir/helper.toml` (see [`write_helper_config`]) and starts the helper as an HTTPS server
/// on loopback in this process.
pub(crate) async fn start_helper(
    dir: &Path,
    nodes: &[String],
    min_batch: u32,
) -> Result<helper::server::Running> {
    let path = write_helper_config(dir, nodes, min_batch)?;
    let cfg = helper::config::HelperConfig::load(&path)?;
    let h = Arc::new(helper::Helper::open(cfg)?);
    Ok(helper::server::start(h).await?)
}

/// `dir/helper.toml` for a helper on a free loopback port; its roster is `nodes` with their
/// signing keys from `dir/certs`.
pub(crate) fn write_helper_config(dir: &Path, nodes: &[String], min_batch: u32) -> Result<PathBuf> {
    let mut text = format!(
        "listen = \"127.0.0.1:0\"\nhpke_key = \"certs/helper/{}\"\nverify_key = \"certs/helper/{}\"\n\n[tls]\ncert = \"certs/helper/helper.crt\"\nkey = \"certs/helper/helper.key\"\nclient_ca = \"certs/helper/ca.crt\"\n\n[store]\npath = \"helper.sqlite\"\n\n[batches]\nmin_batch = {min_batch}\nmax_missing_share = 0.3333333333333333\n",
        crate::certs::HELPER_HPKE_KEY,
        crate::certs::VERIFY_KEY
    );
    for id in nodes {
        let key_file = dir
            .join("certs")
            .join(id)
            .join(crate::certs::node_signing_pub(id));
        let key = std::fs::read_to_string(&key_file)
            .with_context(|| format!("reading {}", key_file.display()))?;
        text.push_str(&format!(
            "\n[[nodes]]\nid = \"{id}\"\npublic_key = \"{}\"\n",
            key.trim()
        ));
    }
    let path = dir.join("helper.toml");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

pub(crate) fn progress(done: usize, total: usize, label: &str) {
    let width = 30;
    let filled = done * width / total.max(1);
    eprint!(
        "\r  {label} [{}{}] {done}/{total}",
        "#".repeat(filled),
        ".".repeat(width - filled)
    );
    let _ = std::io::stderr().flush();
}

pub(crate) fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

pub async fn run(opts: DemoOptions) -> Result<()> {
    let started = std::time::Instant::now();
    let out = &opts.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let catalog_dir = std::fs::canonicalize(&opts.catalog)
        .with_context(|| format!("catalog folder {}", opts.catalog.display()))?;
    let catalog = Catalog::load(&catalog_dir).await?;

    eprintln!(
        "1/5 synthetic data for {} providers and the panel",
        opts.providers
    );
    let synth = crate::synth::SynthOptions {
        out: out.join("data"),
        providers: opts.providers,
        seed: opts.seed,
        scale: 1.0,
    };
    let manifest =
        tokio::task::spawn_blocking(move || crate::synth::generate(&synth, |_| {})).await??;
    let over_postgres = match &opts.postgres {
        Some(url) => {
            let id = manifest
                .providers
                .first()
                .context("no provider to run over PostgreSQL")?
                .clone();
            let schema = id.to_lowercase();
            let rows =
                crate::synth::postgres::load(url, &out.join("data").join(&id), &schema, |_| {})
                    .await
                    .context("writing the first provider's records into PostgreSQL")?;
            eprintln!(
                "    {id} reads PostgreSQL (schema {schema}, {} rows); the others read Parquet",
                rows.values().sum::<u64>()
            );
            let secret = out.join("nodes").join(format!("{id}.pgconn"));
            std::fs::create_dir_all(out.join("nodes"))?;
            write_secret(&secret, url)?;
            Some((id, postgres_data_keys(&secret, &schema)))
        }
        None => None,
    };

    eprintln!(
        "2/5 keys made per party, one folder each under {} (CA, coordinator, helper, nodes; the demo plays every party)",
        out.join("certs").display()
    );
    let mut ids = manifest.providers.clone();
    ids.push(manifest.panel_node.clone());
    let secure = !opts.per_node;
    // The demo's own scratch material: made anew, so no key of an earlier layout stays beside it.
    let _ = std::fs::remove_dir_all(out.join("certs"));
    crate::certs::federation(
        &out.join("certs"),
        &ids,
        secure,
        crate::certs::Existing::Replace,
    )?;
    // Fresh ledgers, run store and helper store: a demo over new synthetic data starts with a
    // full budget.
    let _ = std::fs::remove_dir_all(out.join("ledgers"));
    let _ = std::fs::remove_dir_all(out.join("audit"));
    for store in ["runs", "helper"] {
        for ext in ["sqlite", "sqlite-wal", "sqlite-shm"] {
            let _ = std::fs::remove_file(out.join(format!("{store}.{ext}")));
        }
    }

    eprintln!(
        "3/5 starting {} nodes as HTTPS servers on 127.0.0.1 (mutual TLS)",
        ids.len()
    );
    let mut nodes = BTreeMap::new();
    let mut entries = Vec::new();
    for id in &ids {
        let panel = *id == manifest.panel_node;
        let (tables, budget, unit): (Vec<&str>, f64, &str) = if panel {
            (vec!["panel_response"], PANEL_BUDGET, PANEL_UNIT)
        } else {
            (
                node::config::DEFAULT_TABLES.to_vec(),
                NODE_BUDGET,
                policies::cdm::UNIT_COLUMN,
            )
        };
        // The panel is the only holder of its records: its indicators run with per-node noise.
        let extra = if secure && !panel {
            node_secure_section(
                id,
                demo_min_honest(opts.providers, demo_max_missing(opts.providers)),
            )
        } else {
            String::new()
        };
        let n = match &over_postgres {
            Some((pg_id, data_keys)) if pg_id == id => {
                let cfg =
                    node_config_over(out, id, &catalog_dir, &tables, budget, data_keys, &extra)?;
                open_config(&cfg, id).await?
            }
            Some(_) | None => open_node(out, id, &catalog_dir, &tables, budget, &extra).await?,
        };
        let running = node::server::start(n.clone()).await?;
        entries.push((id.clone(), format!("https://{}", running.addr), unit));
        nodes.insert(id.clone(), (n, running));
    }

    let helper = if secure {
        eprintln!(
            "4/5 starting the helper and the coordinator (secure aggregation, t = {})",
            demo_max_missing(opts.providers)
        );
        Some(
            start_helper(
                out,
                &manifest.providers,
                demo_min_honest(opts.providers, demo_max_missing(opts.providers)),
            )
            .await?,
        )
    } else {
        eprintln!("4/5 starting the coordinator (per-node noise)");
        None
    };
    let secure_section = helper
        .as_ref()
        .map(|h| {
            coordinator_secure_section(
                &format!("https://{}", h.addr),
                &format!(
                    "max_missing = {}\nmax_missing_share = 0.0",
                    demo_max_missing(opts.providers)
                ),
            )
        })
        .unwrap_or_default();
    let token = random_token();
    let coordinator_cfg_path = coordinator_config(
        out,
        &catalog_dir,
        &entries,
        &coordinator::config::token_hash(&token),
        &secure_section,
    )?;
    std::fs::write(out.join("researcher.token"), &token)?;
    let ccfg = coordinator::config::CoordinatorConfig::load(&coordinator_cfg_path)?;
    let runner = Arc::new(coordinator::runs::Runner::new(&ccfg, catalog.clone())?);
    // The demo releases its own rounds from embargo, as a reviewer would, so that the dashboard
    // has figures to show; it writes no interpretation (that is the expert council's to give).
    let (_, reviewer_token) =
        runner
            .store
            .create_token("demo-reviewer", coordinator::store::Role::Reviewer, None)?;
    std::fs::write(out.join("reviewer.token"), &reviewer_token)?;
    let coordinator = coordinator::server::start(&ccfg, runner).await?;
    let base_url = format!("https://{}", coordinator.addr);
    let ca = std::fs::read(out.join("certs/ca/ca.crt"))?;
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca)?])
        .timeout(Duration::from_secs(120))
        .build()?;

    let period: Period = DEMO_PERIOD.parse()?;
    let annual = catalog
        .indicators
        .values()
        .filter(|i| catalog.time_grain(i) == TimeGrain::Year)
        .count();
    let years = TimeGrain::Year.release_periods(&period).len();
    let grains = format!(
        "{} indicators × {} quarters, {annual} annual × {years} years",
        catalog.indicators.len() - annual,
        period.quarters().len()
    );
    eprintln!(
        "5/5 {} runs ({grains}) through {base_url}",
        catalog.indicators.len()
    );
    let mut runs = Vec::new();
    for ind in catalog.indicators.values() {
        let r = client
            .post(format!("{base_url}/v1/runs"))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "indicator": ind.id, "period": DEMO_PERIOD }))
            .send()
            .await?;
        let status = r.status();
        let body: serde_json::Value = r.json().await?;
        anyhow::ensure!(status.is_success(), "starting run of {}: {body}", ind.id);
        let id = body["id"].as_str().context("run id")?.to_string();
        runs.push((ind.id.clone(), id));
    }
    let mut finished: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    while finished.len() < runs.len() {
        for (ind, id) in &runs {
            if finished.contains_key(id) {
                continue;
            }
            let response = client
                .get(format!("{base_url}/v1/runs/{id}"))
                .bearer_auth(&token)
                .send()
                .await?;
            let ok = response.status().is_success();
            let body: serde_json::Value = response.json().await?;
            anyhow::ensure!(ok, "reading run {id} of {ind}: {body}");
            let status = body["status"].as_str().unwrap_or("");
            if matches!(status, "done" | "partial" | "failed") {
                if status != "done" {
                    eprintln!("\n  run of {ind}: {status}: {}", body["error"]);
                }
                finished.insert(id.clone(), body);
            }
        }
        progress(finished.len(), runs.len(), "runs");
        if finished.len() < runs.len() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!();
    let quarters = period.quarters();
    for (i, q) in quarters.iter().enumerate() {
        let r = client
            .post(format!("{base_url}/v1/rounds/{q}/release"))
            .bearer_auth(&reviewer_token)
            .send()
            .await?;
        let status = r.status();
        let body: serde_json::Value = r.json().await?;
        anyhow::ensure!(status.is_success(), "releasing round {q}: {body}");
        progress(i + 1, quarters.len(), "rounds released");
    }
    eprintln!(" (released by the demo's reviewer, without interpretation)");
    let failed: Vec<String> = finished
        .values()
        .filter(|b| b["status"] != "done")
        .map(|b| format!("{} ({})", b["indicator"], b["status"]))
        .collect();
    let mut records: Vec<Record> = Vec::new();
    for (_, id) in &runs {
        if let Some(body) = finished.get(id) {
            let rs: Vec<Record> = serde_json::from_value(body["results"].clone())
                .with_context(|| format!("results of run {id}"))?;
            records.extend(rs);
        }
    }

    // The truth, computed centrally from the same synthetic tables with the same arithmetic.
    let truths = truth(&catalog, &manifest, &nodes, &period, &records).await?;

    write_outputs(out, &records, &truths)?;
    print_table(&records, &truths);
    println!(
        "\nMode: {}",
        if secure {
            format!(
                "secure aggregation (coordinator and helper each see only shares; every provider adds 1/(n − t) of the noise, t = {}); the panel's indicator with per-node noise (one holder)",
                demo_max_missing(opts.providers)
            )
        } else {
            "per-node noise (each provider adds the full noise; --per-node)".to_string()
        }
    );
    println!(
        "\n{} national records ({grains}) in {:.1}s; {} run(s) incomplete.\nWrote {}, {} and {}; the servers' logs are in {}.\nIntervals are 95% and cover the differential-privacy noise only.",
        records.len(),
        started.elapsed().as_secs_f64(),
        failed.len(),
        out.join("national.json").display(),
        out.join("national.csv").display(),
        out.join("truth.json").display(),
        out.join("logs/stroom.log").display()
    );
    if opts.serve {
        println!(
            "\nDashboard: {base_url}/ (certificate from the demo's CA, {}). Ctrl-C stops the federation.",
            out.join("certs/ca/ca.crt").display()
        );
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
    }
    coordinator.shutdown().await;
    if let Some(h) = helper {
        h.shutdown().await;
    }
    for (_, (_, running)) in nodes {
        running.shutdown().await;
    }
    anyhow::ensure!(
        failed.is_empty(),
        "runs not complete: {}",
        failed.join(", ")
    );
    Ok(())
}

type RunningNodes = BTreeMap<String, (Arc<node::Node>, node::server::Running)>;

pub(crate) fn add_cells(
    into: &mut Option<BaseResult>,
    cells: &Cells,
    indicator: &str,
    quarter: &str,
) {
    let r = into.get_or_insert_with(|| BaseResult {
        indicator: indicator.to_string(),
        quarter: quarter.to_string(),
        group_columns: cells.group_columns.clone(),
        cells: cells
            .keys
            .iter()
            .map(|k| (k.clone(), BTreeMap::new()))
            .collect(),
        providers_reporting: 0,
        providers_total: 0,
    });
    for (name, values) in &cells.measures {
        for ((_, m), v) in r.cells.iter_mut().zip(values) {
            m.entry(name.clone())
                .or_insert(CellSum {
                    value: 0.0,
                    variance: 0.0,
                })
                .value += *v as f64;
        }
    }
}

/// Exact and bounded national values for every record, from the nodes' own tables: with zero
/// variance, the coordinator's record arithmetic yields the exact figures.
async fn truth(
    catalog: &Catalog,
    manifest: &crate::synth::Manifest,
    nodes: &RunningNodes,
    period: &Period,
    records: &[Record],
) -> Result<Vec<Truth>> {
    // The demo has no reference data: its catalog has no per-capita figures.
    let population = coordinator::reference::Population::none();
    let key =
        |i: &str, p: &str, g: &BTreeMap<String, String>| (i.to_string(), p.to_string(), g.clone());
    let mut exact_by_key = BTreeMap::new();
    let mut bounded_by_key = BTreeMap::new();
    // Each release period as the coordinator asks it: quarters, and whole years for annual figures.
    let grains = [TimeGrain::Quarter, TimeGrain::Year];
    for (grain, quarter) in grains
        .iter()
        .flat_map(|g| g.release_periods(period).into_iter().map(move |p| (*g, p)))
    {
        let mut exact: BTreeMap<String, BaseResult> = BTreeMap::new();
        let mut bounded: BTreeMap<String, BaseResult> = BTreeMap::new();
        for ind in catalog.indicators.values() {
            let Some(query) = ind.query() else { continue };
            if query.time_grain() != grain {
                continue;
            }
            let ids: Vec<&String> = if query.privacy_unit == PANEL_UNIT {
                vec![&manifest.panel_node]
            } else {
                manifest.providers.iter().collect()
            };
            let (mut e, mut b) = (None, None);
            for id in ids {
                let Some((n, _)) = nodes.get(id) else {
                    continue;
                };
                let tables = n.tables().await?;
                let ec = node::evaluate::cells(&tables, query, &quarter, Bounding::Exact).await?;
                let bc = node::evaluate::cells(&tables, query, &quarter, Bounding::Bounded).await?;
                add_cells(&mut e, &ec, &ind.id, &quarter.to_string());
                add_cells(&mut b, &bc, &ind.id, &quarter.to_string());
            }
            if let (Some(e), Some(b)) = (e, b) {
                exact.insert(ind.id.clone(), e);
                bounded.insert(ind.id.clone(), b);
            }
        }
        for ind in catalog.indicators.values() {
            if catalog.time_grain(ind) != grain {
                continue;
            }
            for r in publish::records(catalog, ind, &quarter.to_string(), &exact, &population) {
                exact_by_key.insert(key(&r.indicator, &r.period, &r.group), r.estimate);
            }
            for r in publish::records(catalog, ind, &quarter.to_string(), &bounded, &population) {
                bounded_by_key.insert(key(&r.indicator, &r.period, &r.group), r.estimate);
            }
        }
    }
    Ok(records
        .iter()
        .map(|r| {
            let k = key(&r.indicator, &r.period, &r.group);
            Truth {
                indicator: r.indicator.clone(),
                period: r.period.clone(),
                group: r.group.clone(),
                value: exact_by_key.get(&k).copied().unwrap_or(f64::NAN),
                value_bounded: bounded_by_key.get(&k).copied().unwrap_or(f64::NAN),
            }
        })
        .collect())
}

/// Undefined numbers (NaN) are empty CSV fields, as they are null in JSON.
fn num(x: f64) -> String {
    if x.is_finite() {
        x.to_string()
    } else {
        String::new()
    }
}

fn write_outputs(out: &Path, records: &[Record], truths: &[Truth]) -> Result<()> {
    std::fs::write(
        out.join("national.json"),
        serde_json::to_string_pretty(records)?,
    )?;
    std::fs::write(
        out.join("truth.json"),
        serde_json::to_string_pretty(truths)?,
    )?;
    let mut csv = String::from(
        "indicator,period,group,estimate,ci_low,ci_high,providers_reporting,providers_total,rho\n",
    );
    for r in records {
        let group = serde_json::to_string(&r.group)?.replace('"', "\"\"");
        csv.push_str(&format!(
            "{},{},\"{}\",{},{},{},{},{},{}\n",
            r.indicator,
            r.period,
            group,
            num(r.estimate),
            num(r.ci_low),
            num(r.ci_high),
            r.providers_reporting,
            r.providers_total,
            r.rho
        ));
    }
    std::fs::write(out.join("national.csv"), csv)?;
    Ok(())
}

fn print_table(records: &[Record], truths: &[Truth]) {
    let last = records
        .iter()
        .map(|r| r.period.clone())
        .max()
        .unwrap_or_default();
    // Annual figures (suicides) carry the year as their period.
    let year = last.get(..4).unwrap_or_default().to_string();
    println!(
        "\nNational indicators for {last}, annual ones for {year} (estimate, 95% interval for the noise, exact value, bias of the bounds)"
    );
    println!(
        "{:<34} {:<28} {:>10} {:>23} {:>10} {:>9}",
        "indicator", "group", "estimate", "95% interval", "exact", "bias"
    );
    let mut covered = 0usize;
    let mut counted = 0usize;
    for (r, t) in records.iter().zip(truths) {
        if r.estimate.is_finite() && t.value_bounded.is_finite() {
            counted += 1;
            if r.ci_low <= t.value_bounded && t.value_bounded <= r.ci_high {
                covered += 1;
            }
        }
        if (r.period != last && r.period != year) || r.group.contains_key("bin") {
            continue;
        }
        let group = r.group.values().cloned().collect::<Vec<_>>().join("/");
        let title = r.indicator.as_str();
        println!(
            "{:<34} {:<28} {:>10.1} {:>23} {:>10.1} {:>9.1}",
            title,
            group,
            r.estimate,
            format!("[{:.1}, {:.1}]", r.ci_low, r.ci_high),
            t.value,
            t.value - t.value_bounded
        );
    }
    if counted > 0 {
        println!(
            "\nThe 95% intervals cover the bounded exact value in {covered} of {counted} records ({:.1}%).",
            100.0 * covered as f64 / counted as f64
        );
    }
}
