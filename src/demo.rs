//! `stroom demo`: synthetic data for every provider, certificates, every node as a real HTTPS
//! server on loopback, every catalog indicator for every quarter of 2023Q1–2024Q4, combined into
//! national figures with 95% intervals, plus the exact figures (possible only because the data is
//! synthetic) to show what the noise and the contribution bounds cost.
//!
//! Until the coordinator service lands (federation issue), the demo process itself fans the
//! requests out to the nodes and combines their Arrow answers with the coordinator crate.

use anyhow::{Context, Result};
use coordinator::combine::{self, Interval};
use futures::StreamExt;
use node::evaluate::{Bounding, Cells};
use policies::wire::{AnswerMeta, decode_answer};
use policies::{Aggregate, Catalog, Derived, Domain, Indicator, Period};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const DEMO_PERIOD: &str = "2023Q1:2024Q4";
const NODE_BUDGET: f64 = 12.0;
const PANEL_BUDGET: f64 = 2.0;

pub struct DemoOptions {
    pub out: PathBuf,
    pub providers: usize,
    pub seed: u64,
    pub catalog: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub indicator: String,
    pub period: String,
    pub group: BTreeMap<String, String>,
    pub estimate: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub providers_reporting: usize,
    pub providers_total: usize,
    pub rho: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Truth {
    pub indicator: String,
    pub period: String,
    pub group: BTreeMap<String, String>,
    pub value: f64,
    pub value_bounded: f64,
}

/// Per measure of a cell: (noisy national sum, its noise variance, exact value, bounded value).
type CellStats = (f64, f64, f64, f64);
type MeasureStats = BTreeMap<String, CellStats>;
type Answers = Vec<(datafusion::arrow::array::RecordBatch, AnswerMeta)>;

/// National noisy sums and exact sums for one base indicator and quarter, per cell.
struct BaseResult {
    group_columns: Vec<String>,
    /// key → (measure → (noisy sum, variance, exact, bounded))
    cells: Vec<(Vec<String>, MeasureStats)>,
    reporting: usize,
    total: usize,
}

fn node_config(
    dir: &Path,
    id: &str,
    catalog: &Path,
    tables: &[&str],
    budget: f64,
) -> Result<PathBuf> {
    let path = dir.join("nodes").join(format!("{id}.toml"));
    std::fs::create_dir_all(path.parent().unwrap_or(dir))?;
    let tables = tables
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "node_id = \"{id}\"\nlisten = \"127.0.0.1:0\"\ncatalog_dir = \"{}\"\n\n[data]\ndir = \"../data/{id}\"\ncoverage = \"{}\"\ntables = [{tables}]\n\n[ledger]\npath = \"../ledgers/{id}.sqlite\"\n\n[budget]\nrho_per_period = {budget}\nperiod = \"year\"\ndelta = 1e-6\n\n[tls]\ncert = \"../certs/{id}.crt\"\nkey = \"../certs/{id}.key\"\n",
        catalog.display(),
        crate::synth::COVERAGE
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn period_column(ind: &Indicator) -> Option<String> {
    ind.query()?
        .group_by
        .iter()
        .find(|g| g.domain == Domain::Period)
        .map(|g| g.column.clone())
}

fn progress(done: usize, total: usize) {
    let width = 30;
    let filled = done * width / total.max(1);
    eprint!(
        "\r  evaluating [{}{}] {done}/{total}",
        "#".repeat(filled),
        ".".repeat(width - filled)
    );
    let _ = std::io::stderr().flush();
}

pub async fn run(opts: DemoOptions) -> Result<()> {
    let started = std::time::Instant::now();
    let out = &opts.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let catalog_dir = std::fs::canonicalize(&opts.catalog)
        .with_context(|| format!("catalog folder {}", opts.catalog.display()))?;
    let catalog = Catalog::load(&catalog_dir).await?;

    eprintln!(
        "1/4 synthetic data for {} providers and the panel",
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

    eprintln!("2/4 federation CA and certificates");
    let mut ids = manifest.providers.clone();
    ids.push(manifest.panel_node.clone());
    crate::certs::generate(&out.join("certs"), &ids)?;
    // Fresh ledgers: a demo over new synthetic data starts with a full budget.
    let _ = std::fs::remove_dir_all(out.join("ledgers"));

    eprintln!(
        "3/4 starting {} nodes as HTTPS servers on 127.0.0.1",
        ids.len()
    );
    let mut nodes = BTreeMap::new();
    for id in &ids {
        let (tables, budget): (Vec<&str>, f64) = if *id == manifest.panel_node {
            (vec!["panel_response"], PANEL_BUDGET)
        } else {
            (node::config::DEFAULT_TABLES.to_vec(), NODE_BUDGET)
        };
        let cfg_path = node_config(out, id, &catalog_dir, &tables, budget)?;
        let cfg = node::config::NodeConfig::load(&cfg_path)?;
        let n = Arc::new(
            node::Node::open(cfg)
                .await
                .with_context(|| format!("node {id}"))?,
        );
        let running = node::server::start(n.clone()).await?;
        nodes.insert(id.clone(), (n, running));
    }
    node::tls::install_crypto_provider();
    let ca = std::fs::read(out.join("certs/ca.crt"))?;
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca)?])
        .build()?;

    let period: Period = DEMO_PERIOD.parse()?;
    let quarters: Vec<Period> = period
        .quarters()
        .into_iter()
        .map(|q| Period { first: q, last: q })
        .collect();
    let base: Vec<&Indicator> = catalog
        .indicators
        .values()
        .filter(|i| i.query().is_some())
        .collect();
    let mut jobs = Vec::new();
    for ind in &base {
        let targets: Vec<String> =
            if ind.query().map(|q| q.privacy_unit.as_str()) == Some("respondent_pid") {
                vec![manifest.panel_node.clone()]
            } else {
                manifest.providers.clone()
            };
        for q in &quarters {
            for t in &targets {
                jobs.push((ind.id.clone(), *q, t.clone(), targets.len()));
            }
        }
    }
    eprintln!(
        "4/4 {} evaluations ({} indicators × {} quarters × their nodes)",
        jobs.len(),
        base.len(),
        quarters.len()
    );
    let total = jobs.len();
    let mut done = 0;
    let mut answers: BTreeMap<(String, Period), (Answers, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    let urls: BTreeMap<String, String> = nodes
        .iter()
        .map(|(id, (_, r))| (id.clone(), format!("https://{}", r.addr)))
        .collect();
    let mut stream = futures::stream::iter(jobs.into_iter().map(|(ind, q, node_id, asked)| {
        let client = client.clone();
        let url = urls.get(&node_id).cloned().unwrap_or_default();
        async move {
            let resp = client
                .post(format!("{url}/v1/evaluate"))
                .json(&serde_json::json!({ "indicator": ind, "period": q.to_string() }))
                .send()
                .await;
            let result = match resp {
                Ok(r) if r.status().is_success() => r
                    .bytes()
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|b| decode_answer(&b).map_err(|e| e.to_string())),
                Ok(r) => Err(format!(
                    "{}: {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )),
                Err(e) => Err(e.to_string()),
            };
            (ind, q, node_id, asked, result)
        }
    }))
    .buffer_unordered(8);
    while let Some((ind, q, node_id, asked, result)) = stream.next().await {
        done += 1;
        progress(done, total);
        let entry = answers
            .entry((ind.clone(), q))
            .or_insert_with(|| (Vec::new(), asked));
        match result {
            Ok(a) => entry.0.push(a),
            Err(e) => failures.push(format!("{ind} {q} at {node_id}: {e}")),
        }
    }
    eprintln!();
    for f in failures.iter().take(5) {
        eprintln!("  failed: {f}");
    }

    // Combine, and compute the truth centrally from the same synthetic tables.
    let mut records = Vec::new();
    let mut truths = Vec::new();
    let mut base_results: BTreeMap<(String, Period), BaseResult> = BTreeMap::new();
    for ind in &base {
        let Some(query) = ind.query() else { continue };
        let node_ids: Vec<&String> = if query.privacy_unit == "respondent_pid" {
            vec![&manifest.panel_node]
        } else {
            manifest.providers.iter().collect()
        };
        for q in &quarters {
            let Some((list, asked)) = answers.get(&(ind.id.clone(), *q)) else {
                continue;
            };
            if list.is_empty() {
                continue;
            }
            let mut exact_sum: BTreeMap<(Vec<String>, String), (i64, i64)> = BTreeMap::new();
            for id in &node_ids {
                let Some((n, _)) = nodes.get(*id) else {
                    continue;
                };
                let exact = node::evaluate::cells(&n.tables, query, q, Bounding::Exact).await?;
                let bounded = node::evaluate::cells(&n.tables, query, q, Bounding::Bounded).await?;
                accumulate(&mut exact_sum, &exact, &bounded);
            }
            let measures: Vec<String> = list[0]
                .1
                .measures
                .iter()
                .map(|m| m.column.clone())
                .collect();
            let mut per_key: BTreeMap<Vec<String>, MeasureStats> = BTreeMap::new();
            let mut group_columns = Vec::new();
            let mut order = Vec::new();
            for m in &measures {
                let (groups, cells) = combine::sum_measure(list, m)?;
                group_columns = groups;
                for c in cells {
                    let (e, b) = exact_sum
                        .get(&(c.key.clone(), m.clone()))
                        .copied()
                        .unwrap_or((0, 0));
                    if !per_key.contains_key(&c.key) {
                        order.push(c.key.clone());
                    }
                    per_key
                        .entry(c.key)
                        .or_default()
                        .insert(m.clone(), (c.value as f64, c.variance, e as f64, b as f64));
                }
            }
            let result = BaseResult {
                group_columns,
                cells: order
                    .into_iter()
                    .map(|k| {
                        let v = per_key.remove(&k).unwrap_or_default();
                        (k, v)
                    })
                    .collect(),
                reporting: list.len(),
                total: *asked,
            };
            emit_base(ind, q, &result, &mut records, &mut truths);
            base_results.insert((ind.id.clone(), *q), result);
        }
    }
    for ind in catalog.indicators.values() {
        if let policies::Body::Derived(d) = &ind.body {
            for q in &quarters {
                emit_derived(
                    &catalog,
                    ind,
                    d,
                    q,
                    &base_results,
                    &mut records,
                    &mut truths,
                );
            }
        }
    }

    write_outputs(out, &records, &truths)?;
    for (_, (_, running)) in nodes {
        running.shutdown().await;
    }
    print_table(&records, &truths, &catalog);
    println!(
        "\n{} national records for {} indicators × {} quarters in {:.1}s; {} node answers failed.\nWrote {}, {} and {}.\nIntervals are 95% and cover the differential-privacy noise only.",
        records.len(),
        catalog.indicators.len(),
        quarters.len(),
        started.elapsed().as_secs_f64(),
        failures.len(),
        out.join("national.json").display(),
        out.join("national.csv").display(),
        out.join("truth.json").display()
    );
    anyhow::ensure!(
        failures.is_empty(),
        "{} node answers failed",
        failures.len()
    );
    Ok(())
}

fn accumulate(
    sum: &mut BTreeMap<(Vec<String>, String), (i64, i64)>,
    exact: &Cells,
    bounded: &Cells,
) {
    for (name, values) in &exact.measures {
        for (k, v) in exact.keys.iter().zip(values) {
            sum.entry((k.clone(), name.clone())).or_default().0 += v;
        }
    }
    for (name, values) in &bounded.measures {
        for (k, v) in bounded.keys.iter().zip(values) {
            sum.entry((k.clone(), name.clone())).or_default().1 += v;
        }
    }
}

fn split_key(
    ind: &Indicator,
    columns: &[String],
    key: &[String],
    q: &Period,
) -> (String, BTreeMap<String, String>) {
    let pc = period_column(ind);
    let mut group = BTreeMap::new();
    let mut period = q.to_string();
    for (c, v) in columns.iter().zip(key) {
        if Some(c) == pc.as_ref() {
            period = v.clone();
        } else {
            group.insert(c.clone(), v.clone());
        }
    }
    (period, group)
}

fn emit_base(
    ind: &Indicator,
    q: &Period,
    r: &BaseResult,
    records: &mut Vec<Record>,
    truths: &mut Vec<Truth>,
) {
    let Some(query) = ind.query() else { return };
    for (key, m) in &r.cells {
        let (period, group) = split_key(ind, &r.group_columns, key, q);
        let (interval, value, bounded) = match &query.aggregate {
            Aggregate::Mean { .. } => {
                let (s, sv, se, sb) = m.get("sum").copied().unwrap_or_default();
                let (c, cv, ce, cb) = m.get("count").copied().unwrap_or_default();
                let salt = format!("{}{period}{group:?}", ind.id);
                (
                    combine::ratio((s, sv), (c, cv), 1.0, &salt),
                    se / ce,
                    sb / cb,
                )
            }
            _ => {
                let (v, var, e, b) = m.values().next().copied().unwrap_or_default();
                (combine::normal_interval(v, var), e, b)
            }
        };
        records.push(record(
            ind.id.clone(),
            period.clone(),
            group.clone(),
            interval,
            r,
            query.cost.rho(),
        ));
        truths.push(Truth {
            indicator: ind.id.clone(),
            period,
            group,
            value,
            value_bounded: bounded,
        });
    }
}

fn record(
    indicator: String,
    period: String,
    group: BTreeMap<String, String>,
    i: Interval,
    r: &BaseResult,
    rho: f64,
) -> Record {
    Record {
        indicator,
        period,
        group,
        estimate: i.estimate,
        ci_low: i.ci_low,
        ci_high: i.ci_high,
        providers_reporting: r.reporting,
        providers_total: r.total,
        rho,
    }
}

fn emit_derived(
    catalog: &Catalog,
    ind: &Indicator,
    d: &Derived,
    q: &Period,
    base: &BTreeMap<(String, Period), BaseResult>,
    records: &mut Vec<Record>,
    truths: &mut Vec<Truth>,
) {
    let rho_of = |id: &str| {
        catalog
            .get(id)
            .and_then(|i| i.query())
            .map(|q| q.cost.rho())
            .unwrap_or(0.0)
    };
    match d {
        Derived::Ratio {
            numerator,
            denominator,
            multiplier,
        } => {
            let (Some(n), Some(dn)) = (
                base.get(&(numerator.clone(), *q)),
                base.get(&(denominator.clone(), *q)),
            ) else {
                return;
            };
            let Some(num_ind) = catalog.get(numerator) else {
                return;
            };
            for (key, nm) in &n.cells {
                // The denominator's key: the numerator's key projected on the denominator's columns.
                let dkey: Vec<String> = dn
                    .group_columns
                    .iter()
                    .filter_map(|c| {
                        n.group_columns
                            .iter()
                            .position(|x| x == c)
                            .map(|i| key[i].clone())
                    })
                    .collect();
                let Some((_, dm)) = dn.cells.iter().find(|(k, _)| *k == dkey) else {
                    continue;
                };
                let (nv, nvar, ne, nb) = nm.values().next().copied().unwrap_or_default();
                let (dv, dvar, de, db) = dm.values().next().copied().unwrap_or_default();
                let (period, group) = split_key(num_ind, &n.group_columns, key, q);
                let salt = format!("{}{period}{group:?}", ind.id);
                let interval = combine::ratio((nv, nvar), (dv, dvar), *multiplier, &salt);
                let reporting = n.reporting.min(dn.reporting);
                let r = BaseResult {
                    group_columns: vec![],
                    cells: vec![],
                    reporting,
                    total: n.total,
                };
                records.push(record(
                    ind.id.clone(),
                    period.clone(),
                    group.clone(),
                    interval,
                    &r,
                    rho_of(numerator) + rho_of(denominator),
                ));
                truths.push(Truth {
                    indicator: ind.id.clone(),
                    period,
                    group,
                    value: ne / de * multiplier,
                    value_bounded: nb / db * multiplier,
                });
            }
        }
        Derived::Quantile {
            histogram,
            q: quant,
        } => {
            let Some(h) = base.get(&(histogram.clone(), *q)) else {
                return;
            };
            let Some(hist_ind) = catalog.get(histogram) else {
                return;
            };
            let Some(Aggregate::Histogram { edges, .. }) = hist_ind.query().map(|q| &q.aggregate)
            else {
                return;
            };
            let bin_pos = h.group_columns.len() - 1;
            let mut groups: BTreeMap<Vec<String>, Vec<CellStats>> = BTreeMap::new();
            for (key, m) in &h.cells {
                let g = key[..bin_pos].to_vec();
                groups
                    .entry(g)
                    .or_default()
                    .push(m.values().next().copied().unwrap_or_default());
            }
            for (gkey, bins) in groups {
                let (period, group) = split_key(hist_ind, &h.group_columns[..bin_pos], &gkey, q);
                let salt = format!("{}{period}{group:?}", ind.id);
                let noisy: Vec<(f64, f64)> = bins.iter().map(|b| (b.0, b.1)).collect();
                let interval = combine::quantile_interval(&noisy, edges, *quant, &salt);
                let exact: Vec<f64> = bins.iter().map(|b| b.2).collect();
                let bounded: Vec<f64> = bins.iter().map(|b| b.3).collect();
                records.push(record(
                    ind.id.clone(),
                    period.clone(),
                    group.clone(),
                    interval,
                    h,
                    rho_of(histogram),
                ));
                truths.push(Truth {
                    indicator: ind.id.clone(),
                    period,
                    group,
                    value: combine::histogram_quantile(&exact, edges, *quant),
                    value_bounded: combine::histogram_quantile(&bounded, edges, *quant),
                });
            }
        }
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
            r.estimate,
            r.ci_low,
            r.ci_high,
            r.providers_reporting,
            r.providers_total,
            r.rho
        ));
    }
    std::fs::write(out.join("national.csv"), csv)?;
    Ok(())
}

fn print_table(records: &[Record], truths: &[Truth], catalog: &Catalog) {
    let last = records
        .iter()
        .map(|r| r.period.clone())
        .max()
        .unwrap_or_default();
    println!(
        "\nNational indicators for {last} (estimate, 95% interval for the noise, exact value, bias of the bounds)"
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
        if r.period != last || r.group.contains_key("bin") {
            continue;
        }
        let group = r.group.values().cloned().collect::<Vec<_>>().join("/");
        let title = catalog
            .get(&r.indicator)
            .map(|_| r.indicator.as_str())
            .unwrap_or("");
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
