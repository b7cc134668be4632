//! `stroom bench federation`: one run against N nodes on loopback, each a real HTTPS server with
//! mutual TLS and its own ledger. The nodes live in a child process (`stroom bench serve-nodes`)
//! so that this process is the coordinator alone: its CPU time and memory are the coordinator's.
//!
//! Per N it reports: the first run (every node evaluates and spends; on a small machine the N
//! evaluations share its cores), repeats of the same run (every node answers from its ledger),
//! each paired with the same requests fetched and dropped (the fan-out alone: what waiting for the
//! slowest node costs when all N nodes share this machine), each node's own evaluation timed
//! serially (the slowest is what a deployment with one machine per provider waits for), and
//! combination alone. The coordinator's overhead is a repeat run minus its paired fan-out: checking
//! and decoding answers, storing them durably, combining, intervals, publishing, run state and
//! audit.

use super::{Machine, cpu_seconds, median, peak_rss_mib, reset_peak_rss, rss_mib};
use anyhow::{Context, Result};
use coordinator::config::CoordinatorConfig;
use coordinator::runs::Runner;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

pub struct FederationBenchOptions {
    pub nodes: Vec<usize>,
    pub repeats: usize,
    pub indicator: String,
    pub quarter: String,
    pub node_delay_ms: u64,
    pub catalog: PathBuf,
    pub out: PathBuf,
    pub secure: bool,
    pub max_missing_share: f64,
    /// A fixed entry width instead of the planned one (baseline).
    pub bits: Option<u32>,
}

/// Each node's rho budget per year in the benchmark: ample for the runs it makes.
const NODE_BUDGET: f64 = 5.0;

#[derive(Debug, Serialize)]
pub struct FederationFigures {
    pub nodes: usize,
    pub cells_per_answer: usize,
    pub first_run_s: f64,
    pub repeat_run_median_s: f64,
    /// The same requests to the same nodes, answers received and dropped, paired with each repeat.
    pub fanout_only_median_s: f64,
    pub repeat_runs: usize,
    /// Each repeat run and its paired fan-out alone, in order.
    pub repeat_runs_s: Vec<f64>,
    pub fanout_only_s: Vec<f64>,
    /// The same pairs with new connections (every handshake included), medians.
    pub new_connections_run_s: f64,
    pub new_connections_fanout_only_s: f64,
    pub new_connections_cpu_per_run_s: f64,
    pub new_connections_cpu_per_fanout_s: f64,
    /// Coordinator CPU (user + system) per repeat run.
    pub coordinator_cpu_per_run_s: f64,
    /// Coordinator CPU per fan-out alone: TLS, HTTP and receiving the answers.
    pub coordinator_cpu_per_fanout_s: f64,
    pub slowest_node_evaluation_s: f64,
    pub sum_of_node_evaluations_s: f64,
    /// What the coordinator adds to a run beyond receiving the answers: median over the repeats
    /// of (repeat run − its paired fan-out alone).
    pub overhead_s: f64,
    /// Target: 50 ms + 10% of the slowest node's evaluation.
    pub overhead_target_s: f64,
    pub combination_ms: f64,
    /// Every node waiting this long before it answers (connections warm): medians of the run and
    /// of the fan-out alone, and the run's time beyond that slowest node against the target.
    pub node_delay_s: f64,
    pub delayed_run_s: f64,
    pub delayed_fanout_only_s: f64,
    pub delayed_overhead_s: f64,
    pub delayed_overhead_target_s: f64,
    /// Each run with nodes taking `node_delay_s`, in order.
    pub delayed_runs_s: Vec<f64>,
    pub coordinator_rss_before_mib: f64,
    pub coordinator_peak_rss_mib: f64,
    pub nodes_up_s: f64,
    /// Secure aggregation (repeat runs replay the nodes' reports and the helper's stored
    /// verification); absent for per-node runs.
    pub secure: Option<SecureFigures>,
}

/// What secure aggregation costs beyond the fan-out, with a helper whose store is new each time
/// (every report verified by both aggregators, then collected).
#[derive(Debug, Serialize)]
pub struct SecureFigures {
    /// t of the runs.
    pub max_missing: u32,
    /// Bytes of one node's answer (Arrow IPC with the report in its metadata), mean.
    pub report_bytes: f64,
    /// Coordinator: check, leader verification, helper round trips, unsharding; medians.
    pub combination_s: Vec<f64>,
    pub combination_median_s: f64,
    /// The helper's CPU (user + system) per combination, and its peak resident memory.
    pub helper_cpu_per_combination_s: f64,
    pub helper_peak_rss_mib: f64,
    /// Coordinator CPU per combination.
    pub coordinator_cpu_per_combination_s: f64,
    /// Run with nodes taking `node_delay_s` − that delay + (fresh combination − the replayed
    /// combination inside the run): the run time beyond its slowest node with every report
    /// verified anew. Target: 1 s.
    pub fresh_run_beyond_slowest_node_s: f64,
}

#[derive(Debug, Serialize)]
pub struct FederationReport {
    pub machine: Machine,
    pub indicator: String,
    pub quarter: String,
    pub runs: Vec<FederationFigures>,
}

/// What the node process tells the coordinator process: where each node listens and how long
/// each node's own evaluation takes.
#[derive(Debug, Serialize, Deserialize)]
pub struct ServedNodes {
    pub nodes: Vec<(String, String)>,
    pub evaluation_s: Vec<f64>,
    pub cells_per_answer: usize,
}

pub async fn run(opts: FederationBenchOptions) -> Result<FederationReport> {
    anyhow::ensure!(!opts.nodes.is_empty(), "--nodes needs at least one count");
    super::warn_if_debug();
    anyhow::ensure!(
        opts.nodes.iter().all(|n| *n > 0),
        "--nodes counts must be at least 1"
    );
    anyhow::ensure!(opts.repeats > 0, "--repeats must be at least 1");
    let catalog_dir = std::fs::canonicalize(&opts.catalog)
        .with_context(|| format!("catalog folder {}", opts.catalog.display()))?;
    let catalog = policies::Catalog::load(&catalog_dir).await?;
    let ind = catalog
        .get(&opts.indicator)
        .with_context(|| format!("no indicator '{}' in the catalog", opts.indicator))?;
    anyhow::ensure!(
        ind.query().is_some(),
        "{} is derived from other indicators; benchmark a base indicator",
        opts.indicator
    );
    let _: policies::Period = opts.quarter.parse()?;
    let max = *opts.nodes.iter().max().unwrap_or(&1);
    let work = tempfile::tempdir()?;
    eprintln!("synthesizing {max} providers and their certificates …");
    let manifest = super::synthesize(crate::synth::SynthOptions {
        out: work.path().join("data"),
        providers: max,
        seed: 42,
        scale: 1.0,
    })
    .await?;
    crate::certs::federation(
        &work.path().join("certs"),
        &manifest.providers,
        opts.secure,
        crate::certs::Existing::Refuse,
    )?;

    let mut runs = Vec::new();
    for &n in &opts.nodes {
        runs.push(one(&opts, &catalog, &catalog_dir, work.path(), n).await?);
    }
    let report = FederationReport {
        machine: Machine::read(),
        indicator: opts.indicator.clone(),
        quarter: opts.quarter.clone(),
        runs,
    };
    let rows: Vec<Vec<String>> = report
        .runs
        .iter()
        .map(|r| {
            vec![
                r.nodes.to_string(),
                format!("{:.3}", r.first_run_s),
                format!("{:.4}", r.repeat_run_median_s),
                format!("{:.4}", r.fanout_only_median_s),
                format!("{:.4}", r.coordinator_cpu_per_run_s),
                format!("{:.4}", r.coordinator_cpu_per_fanout_s),
                format!("{:.4}", r.slowest_node_evaluation_s),
                format!("{:.4}", r.overhead_s),
                format!("{:.4}", r.overhead_target_s),
                format!("{:.2}", r.combination_ms),
                format!("{:.0}", r.coordinator_rss_before_mib),
                format!("{:.0}", r.coordinator_peak_rss_mib),
            ]
        })
        .collect();
    let cold: Vec<Vec<String>> = report
        .runs
        .iter()
        .map(|r| {
            vec![
                r.nodes.to_string(),
                format!("{:.4}", r.new_connections_run_s),
                format!("{:.4}", r.new_connections_fanout_only_s),
                format!("{:.4}", r.new_connections_cpu_per_run_s),
                format!("{:.4}", r.new_connections_cpu_per_fanout_s),
            ]
        })
        .collect();
    let delayed: Vec<Vec<String>> = report
        .runs
        .iter()
        .map(|r| {
            vec![
                r.nodes.to_string(),
                format!("{:.3}", r.node_delay_s),
                format!("{:.4}", r.delayed_run_s),
                format!("{:.4}", r.delayed_fanout_only_s),
                format!("{:.4}", r.delayed_overhead_s),
                format!("{:.4}", r.delayed_overhead_target_s),
            ]
        })
        .collect();
    super::print_table(
        "Every node taking the same time before it answers (warm connections), medians",
        &[
            "nodes",
            "each node (s)",
            "run (s)",
            "fan-out alone (s)",
            "run − slowest node (s)",
            "target (s)",
        ],
        &delayed,
    );
    let secure: Vec<Vec<String>> = report
        .runs
        .iter()
        .filter_map(|r| r.secure.as_ref().map(|s| (r, s)))
        .map(|(r, s)| {
            vec![
                r.nodes.to_string(),
                s.max_missing.to_string(),
                format!("{:.0}", s.report_bytes),
                format!("{:.4}", s.combination_median_s),
                format!("{:.4}", s.coordinator_cpu_per_combination_s),
                format!("{:.4}", s.helper_cpu_per_combination_s),
                format!("{:.0}", s.helper_peak_rss_mib),
                format!("{:.4}", s.fresh_run_beyond_slowest_node_s),
            ]
        })
        .collect();
    if !secure.is_empty() {
        super::print_table(
            "Secure aggregation, every report verified anew by a fresh helper, medians",
            &[
                "nodes",
                "t",
                "bytes/report",
                "secure combination (s)",
                "coordinator CPU (s)",
                "helper CPU (s)",
                "helper peak RSS (MiB)",
                "run − slowest node, fresh (s)",
            ],
            &secure,
        );
    }
    super::print_table(
        "With new connections (every node's mutual-TLS handshake in the run), medians",
        &[
            "nodes",
            "run (s)",
            "fan-out alone (s)",
            "coordinator CPU/run (s)",
            "CPU per fan-out alone (s)",
        ],
        &cold,
    );
    super::print_and_write(
        &format!(
            "Federation: {} for {}, median of {} repeat runs",
            opts.indicator, opts.quarter, opts.repeats
        ),
        &[
            "nodes",
            "first run (s)",
            "repeat run (s)",
            "fan-out alone (s)",
            "coordinator CPU/run (s)",
            "CPU per fan-out alone (s)",
            "slowest node (s)",
            "overhead (s)",
            "target (s)",
            "combination (ms)",
            "RSS before runs (MiB)",
            "peak RSS (MiB)",
        ],
        &rows,
        &opts.out,
        &report,
    )?;
    Ok(report)
}

/// One federation of `n` nodes: its own ledgers, run store and node process.
async fn one(
    opts: &FederationBenchOptions,
    catalog: &policies::Catalog,
    catalog_dir: &Path,
    work: &Path,
    n: usize,
) -> Result<FederationFigures> {
    let dir = work.join(format!("n{n}"));
    std::fs::create_dir_all(&dir)?;
    for shared in ["data", "certs"] {
        std::os::unix::fs::symlink(work.join(shared), dir.join(shared))?;
    }
    eprintln!("{n} nodes: starting them in a child process …");
    let t = Instant::now();
    let mut command = Command::new(std::env::current_exe()?);
    command
        .args(["bench", "serve-nodes", "--dir"])
        .arg(&dir)
        .args(["--nodes", &n.to_string(), "--catalog"])
        .arg(catalog_dir)
        .args(["--indicator", &opts.indicator, "--quarter", &opts.quarter]);
    if opts.secure {
        command.arg("--secure");
    }
    let mut child = command
        .env("STROOM_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the node process")?;
    let mut stdout = BufReader::new(child.stdout.take().context("node process stdout")?);
    let (line, stdout) = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        stdout.read_line(&mut line).map(|_| (line, stdout))
    })
    .await??;
    let mut nodes_control = NodeProcess {
        stdin: child.stdin.take().context("node process stdin")?,
        stdout,
    };
    let served: ServedNodes = serde_json::from_str(&line)
        .with_context(|| format!("the node process did not report its nodes: '{line}'"))?;
    let nodes_up_s = t.elapsed().as_secs_f64();
    eprintln!("  up in {nodes_up_s:.1}s");

    let entries: Vec<(String, String, &str)> = served
        .nodes
        .iter()
        .map(|(id, url)| (id.clone(), url.clone(), policies::cdm::UNIT_COLUMN))
        .collect();
    let ids: Vec<String> = served.nodes.iter().map(|(id, _)| id.clone()).collect();
    let helper_cfg = if opts.secure {
        Some(crate::demo::write_helper_config(
            &dir,
            &ids,
            crate::demo::demo_min_honest(ids.len(), 1),
        )?)
    } else {
        None
    };
    let helper = match &helper_cfg {
        Some(cfg) => Some(HelperProcess::start(cfg, &dir.join("helper.sqlite"))?),
        None => None,
    };
    let secure_section = match &helper {
        Some(h) => crate::demo::coordinator_secure_section(
            &h.url,
            &match opts.bits {
                Some(b) => format!("max_missing_share = {}\nbits = {b}", opts.max_missing_share),
                None => format!("max_missing_share = {}", opts.max_missing_share),
            },
        ),
        None => String::new(),
    };
    let token = crate::demo::random_token();
    let cfg_path = crate::demo::coordinator_config(
        &dir,
        catalog_dir,
        &entries,
        &coordinator::config::token_hash(&token),
        &secure_section,
    )?;
    let cfg = CoordinatorConfig::load(&cfg_path)?;
    let rss_before = rss_mib();
    reset_peak_rss();
    let runner = Arc::new(Runner::new(&cfg, catalog.clone())?);
    let timed = |runner: Arc<Runner>| {
        let (indicator, quarter) = (opts.indicator.clone(), opts.quarter.clone());
        async move {
            let id = runner.submit(&indicator, &quarter, "bench")?;
            let t = Instant::now();
            runner.execute(&id).await;
            let secs = t.elapsed().as_secs_f64();
            let (run, records) = runner.store.run(&id)?.context("the run is stored")?;
            anyhow::ensure!(
                run.status == coordinator::store::RunStatus::Done,
                "run {id}: {:?} {:?}",
                run.status,
                run.error
            );
            anyhow::ensure!(
                records.iter().all(|r| r.providers_reporting == n),
                "not every node answered"
            );
            Ok::<_, anyhow::Error>((id, secs))
        }
    };
    let (_, first) = timed(runner.clone()).await?;
    let ind = catalog.get(&opts.indicator).context("indicator")?;
    let quarter: policies::Period = opts.quarter.parse()?;
    let warm = pairs(
        "repeat runs and fan-outs alone",
        opts.repeats,
        ind,
        quarter,
        || Ok(runner.clone()),
        &timed,
    )
    .await?;
    // Combination alone over the N answers of the last run. The coordinator erased its reports
    // when the run finished, so they are asked again: each node replays its stored release.
    let helper_key = match &runner.secure {
        Some(aggregator) => Some(aggregator.helper.hpke_keys().await?.current),
        None => None,
    };
    let raw = run_answers(&runner, ind, quarter, helper_key).await?;
    let answers: Vec<policies::wire::Answer> = raw.iter().map(|(_, a)| a.clone()).collect();
    let now = chrono::Utc::now().timestamp();
    let t = Instant::now();
    let combined = match runner
        .secure_request_for(ind, &quarter, helper_key)
        .zip(runner.secure.as_ref())
    {
        Some((request, aggregator)) => {
            aggregator
                .combine(ind, quarter, request, &answers, now)
                .await?
                .0
        }
        None => coordinator::national::combine(&answers, n).await?,
    };
    let mut base = std::collections::BTreeMap::new();
    base.insert(opts.indicator.clone(), combined);
    let records = coordinator::publish::records(
        catalog,
        ind,
        &opts.quarter,
        &base,
        &coordinator::reference::Population::none(),
    );
    let combination_ms = t.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(!records.is_empty(), "combination published nothing");
    let secure_fresh = match (
        &helper_cfg,
        runner.secure_request_for(ind, &quarter, helper_key),
    ) {
        (Some(helper_cfg), Some(request)) => Some(
            fresh_secure_combinations(
                &cfg,
                helper_cfg,
                &dir,
                opts,
                ind,
                request,
                &answers,
                raw.iter().map(|(bytes, _)| bytes.len()).collect(),
            )
            .await?,
        ),
        _ => None,
    };

    // Nodes that each take a while, as each on its own machine: the run should end soon after
    // the slowest of them, not after waves of them.
    nodes_control.set_delay(opts.node_delay_ms)?;
    let delayed = pairs(
        &format!(
            "runs and fan-outs alone with nodes taking {} ms",
            opts.node_delay_ms
        ),
        opts.repeats,
        ind,
        quarter,
        || Ok(runner.clone()),
        &timed,
    )
    .await?;
    nodes_control.set_delay(0)?;
    drop(runner);

    // With fresh connections, as in a quarterly run whose connections expired long ago: every
    // node's mutual-TLS handshake is in the run. Each pair gets its own new clients.
    let cold = pairs(
        "runs and fan-outs alone with new connections",
        opts.repeats,
        ind,
        quarter,
        || Ok(Arc::new(Runner::new(&cfg, catalog.clone())?)),
        &timed,
    )
    .await?;
    let peak = peak_rss_mib();

    drop(helper);
    // Closing its stdin tells the node process to stop.
    drop(nodes_control);
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "the node process ended with {status}");

    let slowest = served.evaluation_s.iter().cloned().fold(0.0, f64::max);
    let delay = opts.node_delay_ms as f64 / 1000.0;
    let delayed_run_s = median(delayed.runs.clone());
    Ok(FederationFigures {
        nodes: n,
        cells_per_answer: served.cells_per_answer,
        first_run_s: first,
        repeat_run_median_s: median(warm.runs.clone()),
        fanout_only_median_s: median(warm.fanouts.clone()),
        repeat_runs: opts.repeats,
        new_connections_run_s: median(cold.runs.clone()),
        new_connections_fanout_only_s: median(cold.fanouts.clone()),
        new_connections_cpu_per_run_s: cold.run_cpu_s / opts.repeats as f64,
        new_connections_cpu_per_fanout_s: cold.fanout_cpu_s / opts.repeats as f64,
        coordinator_cpu_per_run_s: warm.run_cpu_s / opts.repeats as f64,
        coordinator_cpu_per_fanout_s: warm.fanout_cpu_s / opts.repeats as f64,
        slowest_node_evaluation_s: slowest,
        sum_of_node_evaluations_s: served.evaluation_s.iter().sum(),
        overhead_s: warm.overhead_s(),
        overhead_target_s: 0.050 + 0.10 * slowest,
        combination_ms,
        node_delay_s: delay,
        delayed_run_s,
        delayed_fanout_only_s: median(delayed.fanouts),
        delayed_overhead_s: delayed_run_s - delay,
        delayed_overhead_target_s: 0.050 + 0.10 * delay,
        delayed_runs_s: delayed.runs,
        coordinator_rss_before_mib: rss_before,
        coordinator_peak_rss_mib: peak,
        nodes_up_s,
        repeat_runs_s: warm.runs,
        fanout_only_s: warm.fanouts,
        secure: secure_fresh.map(|mut f| {
            // The delayed runs replayed the helper's verification; add what fresh work costs.
            f.fresh_run_beyond_slowest_node_s =
                delayed_run_s - delay + (f.combination_median_s - combination_ms / 1000.0);
            f
        }),
    })
}

/// A `stroom helper` process on a free loopback port; killed when dropped.
struct HelperProcess {
    child: std::process::Child,
    url: String,
}

impl HelperProcess {
    fn start(config: &Path, store: &Path) -> Result<HelperProcess> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["helper", "--config"])
            .arg(config)
            .env("STROOM_LOG", "warn")
            .env("STROOM_STORE__PATH", store)
            .env("STROOM_STORE__WATERMARK", store.with_extension("watermark"))
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the helper")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("helper stdout")?).read_line(&mut line)?;
        let url = line
            .find("https://")
            .map(|i| line[i..].trim().to_string())
            .with_context(|| format!("the helper did not report its address: '{line}'"))?;
        Ok(HelperProcess { child, url })
    }
}

impl Drop for HelperProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The secure combination of the stored answers, `opts.repeats` times, each with a new helper
/// process on a new store (so both aggregators verify every report), with the helper's CPU and
/// peak memory read from /proc.
#[allow(clippy::too_many_arguments)]
async fn fresh_secure_combinations(
    cfg: &CoordinatorConfig,
    helper_cfg: &Path,
    dir: &Path,
    opts: &FederationBenchOptions,
    ind: &policies::Indicator,
    request: policies::wire::SecureRequest,
    answers: &[policies::wire::Answer],
    bytes: Vec<usize>,
) -> Result<SecureFigures> {
    let mut times = Vec::new();
    let (mut helper_cpu, mut helper_peak, mut coordinator_cpu) = (0.0, 0.0f64, 0.0);
    for i in 0..opts.repeats {
        eprint!(
            "\r  secure combinations with a fresh helper {}/{}",
            i + 1,
            opts.repeats
        );
        let helper =
            HelperProcess::start(helper_cfg, &dir.join(format!("helper-fresh-{i}.sqlite")))?;
        let (cpu_before, _) = super::process_cpu_and_peak(helper.child.id());
        let mut fresh = cfg.clone();
        fresh.secure.helper_url = Some(helper.url.clone());
        let runner = Runner::new(&fresh, policies::Catalog::load(&opts.catalog).await?)?;
        let aggregator = runner.secure.as_ref().context("secure runner")?;
        let cpu = cpu_seconds();
        let t = Instant::now();
        let quarter: policies::Period = opts.quarter.parse()?;
        let now = chrono::Utc::now().timestamp();
        let (result, excluded) = aggregator
            .combine(ind, quarter, request, answers, now)
            .await?;
        times.push(t.elapsed().as_secs_f64());
        coordinator_cpu += cpu_seconds() - cpu;
        anyhow::ensure!(
            excluded.is_empty() && result.providers_reporting == answers.len(),
            "a fresh secure combination excluded reports: {excluded:?}"
        );
        let (cpu_after, peak) = super::process_cpu_and_peak(helper.child.id());
        helper_cpu += cpu_after - cpu_before;
        helper_peak = helper_peak.max(peak);
    }
    eprintln!();
    let reps = opts.repeats as f64;
    Ok(SecureFigures {
        max_missing: request.max_missing,
        report_bytes: bytes.iter().sum::<usize>() as f64 / bytes.len().max(1) as f64,
        combination_median_s: median(times.clone()),
        combination_s: times,
        helper_cpu_per_combination_s: helper_cpu / reps,
        helper_peak_rss_mib: helper_peak,
        coordinator_cpu_per_combination_s: coordinator_cpu / reps,
        fresh_run_beyond_slowest_node_s: f64::NAN,
    })
}

/// Runs paired with their fan-outs alone, each timed, with the coordinator CPU each kind used.
struct Pairs {
    runs: Vec<f64>,
    fanouts: Vec<f64>,
    run_cpu_s: f64,
    fanout_cpu_s: f64,
    last_run: String,
}

impl Pairs {
    /// What a run adds beyond its fan-out alone: the median of the paired differences.
    fn overhead_s(&self) -> f64 {
        median(
            self.runs
                .iter()
                .zip(&self.fanouts)
                .map(|(r, f)| r - f)
                .collect(),
        )
    }
}

/// `repeats` times a run, then its fan-out alone, each through a runner from `runner_for` (the
/// same one for warm connections, a new one for new connections). Pairing them makes drift
/// (growing logs, a warming cache) fall on both alike.
async fn pairs<Fut>(
    what: &str,
    repeats: usize,
    ind: &policies::Indicator,
    quarter: policies::Period,
    runner_for: impl Fn() -> Result<Arc<Runner>>,
    timed: &impl Fn(Arc<Runner>) -> Fut,
) -> Result<Pairs>
where
    Fut: std::future::Future<Output = Result<(String, f64)>>,
{
    let mut p = Pairs {
        runs: Vec::new(),
        fanouts: Vec::new(),
        run_cpu_s: 0.0,
        fanout_cpu_s: 0.0,
        last_run: String::new(),
    };
    for i in 0..repeats {
        eprint!("\r  {what} {}/{repeats}", i + 1);
        let runner = runner_for()?;
        let cpu_before = cpu_seconds();
        let (id, run) = timed(runner).await?;
        p.run_cpu_s += cpu_seconds() - cpu_before;
        let runner = runner_for()?;
        let cpu_before = cpu_seconds();
        let fanout = fanout_only(&runner, ind, quarter).await?;
        p.fanout_cpu_s += cpu_seconds() - cpu_before;
        p.runs.push(run);
        p.fanouts.push(fanout);
        p.last_run = id;
    }
    eprintln!();
    Ok(p)
}

/// The node process's control channel: its stdin and stdout.
struct NodeProcess {
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl NodeProcess {
    /// Makes every node answer an evaluation `ms` after it arrived, once the nodes confirm it.
    fn set_delay(&mut self, ms: u64) -> Result<()> {
        writeln!(self.stdin, "delay {ms}")?;
        self.stdin.flush()?;
        let mut ack = String::new();
        self.stdout.read_line(&mut ack)?;
        anyhow::ensure!(
            ack.trim() == format!("delay {ms}"),
            "the node process did not confirm the delay: '{}'",
            ack.trim()
        );
        Ok(())
    }
}

/// The run's request to every node, as the runner sends it (a node replays a release it made).
fn run_request(
    runner: &Runner,
    ind: &policies::Indicator,
    quarter: policies::Period,
    helper_key: Option<policies::wire::KeyId>,
) -> policies::wire::EvaluateRequest {
    policies::wire::EvaluateRequest {
        indicator: ind.id.clone(),
        period: quarter,
        content_hash: Some(ind.content_hash.clone()),
        catalog_version: None,
        secure: runner.secure_request_for(ind, &quarter, helper_key),
    }
}

/// One job per node of the indicator, with the node's request slots, as the runner fans out.
fn node_jobs<'a>(
    runner: &'a Runner,
    ind: &policies::Indicator,
) -> Vec<(
    Arc<tokio::sync::Semaphore>,
    &'a coordinator::node_client::NodeClient,
)> {
    runner
        .targets_for(ind)
        .into_iter()
        .map(|target| (target.slots.clone(), &target.client))
        .collect()
}

/// Every node's answer to the run's request, with its size on the wire.
async fn run_answers(
    runner: &Runner,
    ind: &policies::Indicator,
    quarter: policies::Period,
    helper_key: Option<policies::wire::KeyId>,
) -> Result<Vec<(Vec<u8>, policies::wire::Answer)>> {
    use futures::StreamExt;
    let request = run_request(runner, ind, quarter, helper_key);
    let jobs = node_jobs(runner, ind);
    let answers: Vec<_> = coordinator::runs::fan_out(jobs, runner.concurrency, |client| {
        client.evaluate_raw(&request)
    })
    .collect()
    .await;
    Ok(answers.into_iter().collect::<Result<_, _>>()?)
}

/// The run's requests to every node, concurrently as the runner sends them, each answer received
/// whole and dropped: the seconds until the last one arrived.
async fn fanout_only(
    runner: &Runner,
    ind: &policies::Indicator,
    quarter: policies::Period,
) -> Result<f64> {
    use futures::StreamExt;
    let t = Instant::now();
    // As a run does: the helper's current key first.
    let helper_key = match &runner.secure {
        Some(aggregator) => Some(aggregator.helper.hpke_keys().await?.current),
        None => None,
    };
    let request = run_request(runner, ind, quarter, helper_key);
    let jobs = node_jobs(runner, ind);
    let answers: Vec<_> = coordinator::runs::fan_out(jobs, runner.concurrency, |client| {
        client.fetch_answer(&request)
    })
    .collect()
    .await;
    let secs = t.elapsed().as_secs_f64();
    for answer in answers {
        answer?;
    }
    Ok(secs)
}

pub struct ServeNodesOptions {
    pub dir: PathBuf,
    pub nodes: usize,
    pub catalog: PathBuf,
    pub indicator: String,
    pub quarter: String,
    pub secure: bool,
}

/// The child process: start `nodes` nodes over `dir/data`, time each node's own evaluation, print
/// one JSON line (`ServedNodes`) and serve until stdin closes.
pub async fn serve_nodes(opts: ServeNodesOptions) -> Result<()> {
    let catalog = policies::Catalog::load(&opts.catalog).await?;
    let ind = catalog
        .get(&opts.indicator)
        .with_context(|| format!("no indicator '{}'", opts.indicator))?;
    let query = ind.query().context("a base indicator")?;
    let period: policies::Period = opts.quarter.parse()?;
    let mut nodes = Vec::new();
    let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut served = ServedNodes {
        nodes: Vec::new(),
        evaluation_s: Vec::new(),
        cells_per_answer: 0,
    };
    for i in 0..opts.nodes {
        let id = crate::synth::provider_id(i);
        let n = crate::demo::open_node(
            &opts.dir,
            &id,
            &opts.catalog,
            node::config::DEFAULT_TABLES,
            NODE_BUDGET,
            &if opts.secure {
                crate::demo::node_secure_section(&id, crate::demo::demo_min_honest(opts.nodes, 1))
            } else {
                String::new()
            },
        )
        .await?;
        let delay = delay_ms.clone();
        let running = node::server::start_with(n.clone(), move |app| {
            app.layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let ms = delay.load(std::sync::atomic::Ordering::SeqCst);
                    async move {
                        // The node does its work at once, then holds the answer until `ms` after
                        // the request came in: a node on its own machine whose work takes that
                        // long. Working after the wait instead would make all the co-located
                        // nodes work at the same instant on the coordinator's cores.
                        let arrived = tokio::time::Instant::now();
                        let evaluate = ms > 0 && req.uri().path() == "/v1/evaluate";
                        let response = next.run(req).await;
                        if evaluate {
                            tokio::time::sleep_until(
                                arrived + std::time::Duration::from_millis(ms),
                            )
                            .await;
                        }
                        response
                    }
                },
            ))
        })
        .await?;
        served
            .nodes
            .push((id.clone(), format!("https://{}", running.addr)));
        nodes.push((n, running));
    }
    // Each node's own evaluation, serially (no HTTP): cells plus noise.
    for (n, _) in &nodes {
        let t = Instant::now();
        let cells = node::evaluate::cells(
            &*n.tables().await?,
            query,
            &period,
            node::evaluate::Bounding::Bounded,
        )
        .await?;
        node::noise::noisy_measures(&query.measures(period.quarters().len()), &cells)?;
        served.evaluation_s.push(t.elapsed().as_secs_f64());
        served.cells_per_answer = cells.keys.len();
    }
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", serde_json::to_string(&served)?)?;
    stdout.flush()?;
    // Each stdin line "delay <ms>" sets when every node answers an evaluation, after its arrival
    // (acknowledged on stdout); the end of stdin stops the nodes.
    let control = delay_ms.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            let ms = line
                .trim()
                .strip_prefix("delay ")
                .and_then(|ms| ms.parse::<u64>().ok())
                .with_context(|| format!("unknown node process command '{}'", line.trim()))?;
            control.store(ms, std::sync::atomic::Ordering::SeqCst);
            writeln!(std::io::stdout(), "delay {ms}")?;
            std::io::stdout().flush()?;
            line.clear();
        }
        Ok(())
    })
    .await??;
    for (_, running) in nodes {
        running.shutdown().await;
    }
    Ok(())
}
