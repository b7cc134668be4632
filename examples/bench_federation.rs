//! Benchmark: one run against N nodes on loopback (all nodes in this process, each a real HTTPS
//! server with mutual TLS), driven by the coordinator's runner.
//!
//! Prepare data and certificates with the CLI, then run:
//!   stroom synth --out /tmp/fed --providers 100
//!   stroom certs --out /tmp/fed/certs --nodes $(seq -f 'P%02g' -s, 1 100 | sed 's/,$//')
//!   cargo run --release --example bench_federation -- /tmp/fed 100
//!
//! Reports: (1) the first run, where every node evaluates and spends; (2) repeats of the same run,
//! where every node answers from its ledger, so the time is almost all fan-out (TLS, HTTP, Arrow
//! decoding, storing) and combination: the coordinator's own overhead; (3) each node's own
//! evaluation time measured serially in-process, the slowest of which a distributed deployment
//! would wait for; (4) combination alone over the N answers.

use coordinator::config::CoordinatorConfig;
use coordinator::runs::Runner;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

const INDICATOR: &str = "care.unique_youths";
const QUARTER: &str = "2024Q1";

fn write(path: &Path, text: String) {
    std::fs::write(path, text).expect("write config");
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::fs::canonicalize(args.get(1).expect("DATA_DIR from stroom synth")).expect("dir");
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    let repeats: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5);
    let catalog_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/catalog");
    let work = tempfile::tempdir().expect("tempdir");
    let ids: Vec<String> = (1..=n).map(|i| format!("P{i:02}")).collect();

    let started = Instant::now();
    let mut nodes = Vec::new();
    let mut entries = String::new();
    for id in &ids {
        let cfg = work.path().join(format!("{id}.toml"));
        write(
            &cfg,
            format!(
                "node_id = \"{id}\"\nlisten = \"127.0.0.1:0\"\ncatalog_dir = \"{}\"\n[data]\ndir = \"{}\"\ncoverage = \"2022Q1:2024Q4\"\n[ledger]\npath = \"{id}.sqlite\"\n[audit]\npath = \"{id}.jsonl\"\n[budget]\nrho_per_period = 5.0\nperiod = \"year\"\ndelta = 1e-6\n[tls]\ncert = \"{certs}/{id}.crt\"\nkey = \"{certs}/{id}.key\"\nclient_ca = \"{certs}/ca.crt\"\n",
                catalog_dir.display(),
                dir.join(id).display(),
                certs = dir.join("certs").display()
            ),
        );
        let node = Arc::new(
            node::Node::open(node::config::NodeConfig::load(&cfg).expect("node config"))
                .await
                .expect("node"),
        );
        let running = node::server::start(node.clone()).await.expect("serve");
        entries.push_str(&format!(
            "[[nodes]]\nid = \"{id}\"\nurl = \"https://{}\"\n",
            running.addr
        ));
        nodes.push((node, running));
    }
    eprintln!("{n} nodes up in {:.1}s", started.elapsed().as_secs_f64());

    let cfg_path = work.path().join("coordinator.toml");
    write(
        &cfg_path,
        format!(
            "listen = \"127.0.0.1:0\"\ncatalog_dir = \"{}\"\n[store]\npath = \"runs.sqlite\"\n[tls]\nca = \"{certs}/ca.crt\"\ncert = \"{certs}/coordinator.crt\"\nkey = \"{certs}/coordinator.key\"\n[fanout]\nconcurrency = 64\n{entries}",
            catalog_dir.display(),
            certs = dir.join("certs").display()
        ),
    );
    let cfg = CoordinatorConfig::load(&cfg_path).expect("coordinator config");
    let catalog = policies::Catalog::load(&catalog_dir)
        .await
        .expect("catalog");
    let runner = Arc::new(Runner::new(&cfg, catalog.clone()).expect("runner"));

    let timed_run = |label: &'static str| {
        let runner = runner.clone();
        async move {
            let id = runner.submit(INDICATOR, QUARTER, "bench").expect("submit");
            let t = Instant::now();
            runner.execute(&id).await;
            let secs = t.elapsed().as_secs_f64();
            let (run, records) = runner.store.run(&id).expect("store").expect("run");
            assert_eq!(
                format!("{:?}", run.status),
                "Done",
                "{label}: {:?}",
                run.error
            );
            assert_eq!(records[0].providers_reporting, n);
            secs
        }
    };
    let first = timed_run("first").await;
    let mut repeats_s = Vec::new();
    for _ in 0..repeats {
        repeats_s.push(timed_run("repeat").await);
    }
    repeats_s.sort_by(|a, b| a.total_cmp(b));
    let repeat = repeats_s[repeats_s.len() / 2];

    // Each node's own evaluation, serially, in-process (no HTTP): cells plus noise.
    let ind = catalog.get(INDICATOR).expect("indicator");
    let query = ind.query().expect("query");
    let period: policies::Period = QUARTER.parse().expect("period");
    let mut evals = Vec::new();
    for (node, _) in &nodes {
        let t = Instant::now();
        let cells = node::evaluate::cells(
            &node.tables,
            query,
            &period,
            node::evaluate::Bounding::Bounded,
        )
        .await
        .expect("cells");
        for m in query.measures(1) {
            node::noise::add_noise(&m, cells.measure(&m.name).unwrap_or_default()).expect("noise");
        }
        evals.push(t.elapsed().as_secs_f64());
    }
    let slowest = evals.iter().cloned().fold(0.0, f64::max);
    let total: f64 = evals.iter().sum();

    // Combination alone over the N stored answers.
    let id = runner.submit(INDICATOR, QUARTER, "bench").expect("submit");
    runner.execute(&id).await;
    let answers: Vec<_> = runner
        .store
        .answers(&id)
        .expect("answers")
        .into_iter()
        .filter_map(|a| a.answer)
        .map(|b| policies::wire::decode_answer(&b).expect("decode"))
        .collect();
    let t = Instant::now();
    let combined = coordinator::national::combine(&answers, n)
        .await
        .expect("combine");
    let mut base = std::collections::BTreeMap::new();
    base.insert(INDICATOR.to_string(), combined);
    let records = coordinator::publish::records(&catalog, ind, QUARTER, &base);
    let combine_s = t.elapsed().as_secs_f64();
    assert!(!records.is_empty());

    println!(
        "| nodes | first run (s) | repeat run, median of {repeats} (s) | slowest node evaluation (s) | sum of node evaluations (s) | combination (ms) | peak RSS (MiB) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {n} | {first:.3} | {repeat:.3} | {slowest:.4} | {total:.3} | {:.2} | {:.0} |",
        combine_s * 1000.0,
        peak_rss_mib()
    );
    for (_, running) in nodes {
        running.shutdown().await;
    }
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}
