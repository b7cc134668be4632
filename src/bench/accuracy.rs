//! `stroom bench accuracy`: how close the federation's national estimates come to the truth, and
//! to the best a central DP system could do at the same privacy cost.
//!
//! Over synthetic providers, every base indicator of the catalog is evaluated once per node and
//! quarter with the catalog's contribution bounds (and once without bounds, for the truth). Then,
//! many times over:
//! - **federated**: every node adds its own noise at the catalog cost (as a node's release does)
//!   and the coordinator's arithmetic (`publish::records`) turns the sums into national records;
//! - **secure aggregation**: every node adds its *share* of the noise (1/(n − t) of the central
//!   variance, by the distributed discrete Gaussian bound, at the node's granularity) as a secure
//!   release does; the sum is what the coordinator unshards (Prio3 adds no error: tested end to end);
//! - **central DP**: the pooled bounded sums get one noise draw at the same cost, then the same
//!   arithmetic. This is the limit any DP system with these bounds reaches with the records pooled.
//!
//! The error of each against the exact bounded value is pure noise; against the unbounded truth it
//! adds the bias of the bounds. Federated over central is the price of per-node noise: for sums of
//! P independent draws it is √P for counts.

use super::Machine;
use anyhow::{Context, Result};
use coordinator::national::BaseResult;
use coordinator::publish::{self, Record};
use node::evaluate::{Bounding, Cells};
use policies::{Catalog, Period, TimeGrain};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

pub struct AccuracyBenchOptions {
    pub providers: usize,
    pub repetitions: usize,
    pub period: String,
    pub seed: u64,
    pub catalog: PathBuf,
    pub out: PathBuf,
    /// t of the secure figures.
    pub max_missing: u32,
}

/// A relative error a reader can still work with for a quarterly figure: ±10% (one RMSE).
const READABLE_RELATIVE_ERROR: f64 = 0.10;

#[derive(Debug, Serialize)]
pub struct IndicatorAccuracy {
    pub indicator: String,
    /// ρ each node spends per quarter at the catalog's cost.
    pub rho: f64,
    /// Records (quarter × group) the figures average over.
    pub records: usize,
    /// Mean |exact value| over those records, for scale.
    pub mean_abs_value: f64,
    /// Root mean square error of the federated estimate against the exact bounded value (noise).
    pub federated_rmse: f64,
    /// … against the unbounded truth (noise and the bias of the bounds).
    pub federated_rmse_vs_truth: f64,
    /// Central DP at the same cost on the pooled records, against the exact bounded value.
    pub central_rmse: f64,
    /// federated_rmse / central_rmse: the price of per-node noise.
    pub ratio: f64,
    /// Secure aggregation (noise shares of n − t honest nodes) against the exact bounded value;
    /// per-node noise for an indicator with one holder (the panel).
    pub secure_rmse: f64,
    /// secure_rmse / central_rmse.
    pub secure_ratio: f64,
    /// Share of the secure 95% intervals that hold the exact bounded value.
    pub secure_coverage: f64,
    /// Share of the federated 95% intervals that hold the exact bounded value.
    pub coverage: f64,
    /// federated_rmse / mean_abs_value.
    pub relative_error: f64,
    /// The ρ per quarter at which the federated noise alone would be ±10% of the value (noise
    /// scales as 1/√ρ); `null` when the value is zero.
    pub rho_for_readable: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct AccuracyReport {
    pub machine: Machine,
    pub providers: usize,
    pub repetitions: usize,
    pub period: String,
    pub seed: u64,
    /// t of the secure figures.
    pub max_missing: u32,
    pub indicators: Vec<IndicatorAccuracy>,
}

type Key = (String, String, BTreeMap<String, String>);

fn key(r: &Record) -> Key {
    (r.indicator.clone(), r.period.clone(), r.group.clone())
}

/// Per base indicator, per quarter: the cells of every node that answers it.
struct Evaluated {
    bounded: BTreeMap<(String, String), Vec<Cells>>,
    exact: BTreeMap<(String, String), Vec<Cells>>,
}

pub async fn run(opts: AccuracyBenchOptions) -> Result<AccuracyReport> {
    anyhow::ensure!(opts.providers > 0, "--providers must be at least 1");
    super::warn_if_debug();
    anyhow::ensure!(opts.repetitions >= 2, "--repetitions must be at least 2");
    let period: Period = opts.period.parse()?;
    let catalog_dir = std::fs::canonicalize(&opts.catalog)
        .with_context(|| format!("catalog folder {}", opts.catalog.display()))?;
    let catalog = Catalog::load(&catalog_dir).await?;
    let work = tempfile::tempdir()?;
    eprintln!(
        "synthesizing {} providers and the panel (seed {}) …",
        opts.providers, opts.seed
    );
    let manifest = super::synthesize(crate::synth::SynthOptions {
        out: work.path().join("data"),
        providers: opts.providers,
        seed: opts.seed,
        scale: 1.0,
    })
    .await?;
    let mut ids = manifest.providers.clone();
    ids.push(manifest.panel_node.clone());
    crate::certs::federation(
        &work.path().join("certs"),
        &ids,
        false,
        crate::certs::Existing::Refuse,
    )?;
    let mut nodes = BTreeMap::new();
    for id in &ids {
        let panel = *id == manifest.panel_node;
        let tables = if panel {
            vec!["panel_response"]
        } else {
            node::config::DEFAULT_TABLES.to_vec()
        };
        let n = crate::demo::open_node(work.path(), id, &catalog_dir, &tables, 1.0, "").await?;
        nodes.insert(id.clone(), n);
    }

    eprintln!("evaluating every base indicator on every node, bounded and exact …");
    let t = Instant::now();
    let mut ev = Evaluated {
        bounded: BTreeMap::new(),
        exact: BTreeMap::new(),
    };
    // Each release period as the coordinator asks it: quarters, and whole years for the annual
    // figures (suicides and attempts).
    let periods: Vec<(TimeGrain, Period)> = [TimeGrain::Quarter, TimeGrain::Year]
        .into_iter()
        .flat_map(|g| g.release_periods(&period).into_iter().map(move |p| (g, p)))
        .collect();
    for (grain, release) in &periods {
        for ind in catalog.indicators.values() {
            let Some(query) = ind.query() else { continue };
            if query.time_grain() != *grain {
                continue;
            }
            let answering: Vec<&String> = if query.privacy_unit == crate::demo::PANEL_UNIT {
                vec![&manifest.panel_node]
            } else {
                manifest.providers.iter().collect()
            };
            let k = (ind.id.clone(), release.to_string());
            for id in answering {
                let n = &nodes[id];
                let tables = n.tables().await?;
                let b = node::evaluate::cells(&tables, query, release, Bounding::Bounded).await?;
                let e = node::evaluate::cells(&tables, query, release, Bounding::Exact).await?;
                ev.bounded.entry(k.clone()).or_default().push(b);
                ev.exact.entry(k.clone()).or_default().push(e);
            }
        }
    }
    eprintln!("  done in {:.1}s", t.elapsed().as_secs_f64());

    let release_periods: Vec<(TimeGrain, String)> =
        periods.iter().map(|(g, p)| (*g, p.to_string())).collect();
    // The truth: exact sums with zero variance through the same arithmetic.
    let exact = estimates(&catalog, &release_periods, |k| {
        base(&catalog, k, &ev.exact[k], Noise::None)
    })?;
    let bounded = estimates(&catalog, &release_periods, |k| {
        base(&catalog, k, &ev.bounded[k], Noise::None)
    })?;

    #[derive(Default)]
    struct Acc {
        fed_sq: f64,
        fed_truth_sq: f64,
        central_sq: f64,
        secure_sq: f64,
        covered: usize,
        secure_covered: usize,
        n: usize,
        rho: f64,
    }
    let mut acc: BTreeMap<Key, Acc> = BTreeMap::new();
    let started = Instant::now();
    for rep in 0..opts.repetitions {
        crate::demo::progress(rep, opts.repetitions, "repetitions");
        let fed = records_all(&catalog, &release_periods, |k| {
            base(&catalog, k, &ev.bounded[k], Noise::PerNode)
        })?;
        let central = records_all(&catalog, &release_periods, |k| {
            base(&catalog, k, &ev.bounded[k], Noise::Pooled)
        })?;
        let central: BTreeMap<Key, f64> = central.iter().map(|r| (key(r), r.estimate)).collect();
        let secure = records_all(&catalog, &release_periods, |k| {
            base(
                &catalog,
                k,
                &ev.bounded[k],
                Noise::Secure {
                    max_missing: opts.max_missing,
                },
            )
        })?;
        let secure: BTreeMap<Key, &Record> = secure.iter().map(|r| (key(r), r)).collect();
        for r in &fed {
            let k = key(r);
            let (Some(b), Some(t), Some(c), Some(s)) = (
                bounded.get(&k),
                exact.get(&k),
                central.get(&k),
                secure.get(&k),
            ) else {
                continue;
            };
            if !(r.estimate.is_finite()
                && b.is_finite()
                && t.is_finite()
                && c.is_finite()
                && s.estimate.is_finite())
            {
                continue;
            }
            let a = acc.entry(k).or_default();
            a.fed_sq += (r.estimate - b).powi(2);
            a.fed_truth_sq += (r.estimate - t).powi(2);
            a.central_sq += (c - b).powi(2);
            a.secure_sq += (s.estimate - b).powi(2);
            a.covered += usize::from(r.ci_low <= *b && *b <= r.ci_high);
            a.secure_covered += usize::from(s.ci_low <= *b && *b <= s.ci_high);
            a.n += 1;
            a.rho = r.rho;
        }
    }
    crate::demo::progress(opts.repetitions, opts.repetitions, "repetitions");
    eprintln!(" in {:.1}s", started.elapsed().as_secs_f64());

    let mut indicators = Vec::new();
    for ind in catalog.indicators.values() {
        let mine: Vec<(&Key, &Acc)> = acc
            .iter()
            .filter(|(k, a)| k.0 == ind.id && a.n > 0)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let n: usize = mine.iter().map(|(_, a)| a.n).sum();
        let rmse =
            |f: fn(&Acc) -> f64| (mine.iter().map(|(_, a)| f(a)).sum::<f64>() / n as f64).sqrt();
        let fed = rmse(|a| a.fed_sq);
        let central = rmse(|a| a.central_sq);
        let secure = rmse(|a| a.secure_sq);
        let mean_abs = mine
            .iter()
            .filter_map(|(k, _)| exact.get(*k))
            .map(|v| v.abs())
            .sum::<f64>()
            / mine.len() as f64;
        let rho = mine.iter().map(|(_, a)| a.rho).fold(0.0, f64::max);
        let relative = fed / mean_abs;
        indicators.push(IndicatorAccuracy {
            indicator: ind.id.clone(),
            rho,
            records: mine.len(),
            mean_abs_value: mean_abs,
            federated_rmse: fed,
            federated_rmse_vs_truth: rmse(|a| a.fed_truth_sq),
            central_rmse: central,
            ratio: fed / central,
            secure_rmse: secure,
            secure_ratio: secure / central,
            secure_coverage: mine.iter().map(|(_, a)| a.secure_covered).sum::<usize>() as f64
                / n as f64,
            coverage: mine.iter().map(|(_, a)| a.covered).sum::<usize>() as f64 / n as f64,
            relative_error: relative,
            rho_for_readable: (mean_abs > 0.0)
                .then(|| rho * (relative / READABLE_RELATIVE_ERROR).powi(2)),
        });
    }
    let report = AccuracyReport {
        machine: Machine::read(),
        providers: opts.providers,
        repetitions: opts.repetitions,
        period: opts.period.clone(),
        seed: opts.seed,
        max_missing: opts.max_missing,
        indicators,
    };
    let g = |x: f64| {
        if x.abs() >= 100.0 {
            format!("{x:.0}")
        } else if x.abs() >= 1.0 {
            format!("{x:.2}")
        } else {
            format!("{x:.4}")
        }
    };
    let rows: Vec<Vec<String>> = report
        .indicators
        .iter()
        .map(|i| {
            vec![
                i.indicator.clone(),
                g(i.rho),
                g(i.mean_abs_value),
                g(i.federated_rmse),
                g(i.federated_rmse_vs_truth),
                g(i.central_rmse),
                format!("{:.2}×", i.ratio),
                g(i.secure_rmse),
                format!("{:.2}×", i.secure_ratio),
                format!("{:.1}%", 100.0 * i.secure_coverage),
                format!("{:.1}%", 100.0 * i.relative_error),
                format!("{:.1}%", 100.0 * i.coverage),
                i.rho_for_readable.map_or("–".into(), g),
            ]
        })
        .collect();
    super::print_and_write(
        &format!(
            "Accuracy over {} repetitions, {} providers, {}, secure with t = {} (RMSE per record; exact = bounded, no noise)",
            opts.repetitions, opts.providers, opts.period, opts.max_missing
        ),
        &[
            "indicator",
            "ρ/quarter",
            "mean |value|",
            "federated RMSE",
            "… vs truth",
            "central DP RMSE",
            "fed/central",
            "secure RMSE",
            "secure/central",
            "secure coverage",
            "relative",
            "95% coverage",
            "ρ for ±10%",
        ],
        &rows,
        &opts.out,
        &report,
    )?;
    Ok(report)
}

#[derive(Clone, Copy)]
enum Noise {
    None,
    /// Every node draws its own noise: the federation.
    PerNode,
    /// One draw on the pooled sums: central DP.
    Pooled,
    /// Every node draws its share of the noise for n − t honest nodes: secure aggregation.
    Secure {
        max_missing: u32,
    },
}

/// National sums of one base indicator for one quarter from the nodes' cells.
fn base(
    catalog: &Catalog,
    k: &(String, String),
    cells: &[Cells],
    noise: Noise,
) -> Result<BaseResult> {
    let ind = catalog.get(&k.0).context("indicator")?;
    let query = ind.query().context("base indicator")?;
    let measures = query.measures(1);
    let mut sum: Option<BaseResult> = None;
    let noisy = |c: &Cells| -> Result<Cells> {
        let mut c = c.clone();
        for (name, values) in &mut c.measures {
            if let Some(m) = measures.iter().find(|m| m.name == *name) {
                *values = node::noise::add_noise(m, values)?;
            }
        }
        Ok(c)
    };
    // One holder (the panel) runs with per-node noise in secure mode too.
    let noise = match noise {
        Noise::Secure { .. } if cells.len() < 2 => Noise::PerNode,
        n => n,
    };
    if let Noise::Secure { max_missing } = noise {
        return secure_base(k, cells, &measures, max_missing);
    }
    for c in cells {
        match noise {
            Noise::PerNode => crate::demo::add_cells(&mut sum, &noisy(c)?, &k.0, &k.1),
            Noise::None | Noise::Pooled | Noise::Secure { .. } => {
                crate::demo::add_cells(&mut sum, c, &k.0, &k.1)
            }
        }
    }
    let mut r = sum.context("no node answered")?;
    let draws = match noise {
        Noise::None => 0.0,
        Noise::PerNode | Noise::Secure { .. } => cells.len() as f64,
        Noise::Pooled => 1.0,
    };
    if let Noise::Pooled = noise {
        for m in &measures {
            let exact: Vec<i64> = r
                .cells
                .iter()
                .map(|(_, ms)| ms.get(&m.name).map_or(0, |s| s.value as i64))
                .collect();
            let noisy = node::noise::add_noise(m, &exact)?;
            for ((_, ms), v) in r.cells.iter_mut().zip(noisy) {
                if let Some(s) = ms.get_mut(&m.name) {
                    s.value = v as f64;
                }
            }
        }
    }
    for m in &measures {
        for (_, ms) in r.cells.iter_mut() {
            if let Some(s) = ms.get_mut(&m.name) {
                s.variance = draws * m.variance();
            }
        }
    }
    r.providers_reporting = cells.len();
    r.providers_total = cells.len();
    Ok(r)
}

/// National sums as a secure run forms them: every node scales its cells by the measure's
/// granularity and adds its noise share (node::noise::gaussian_share, as a release does); the
/// coordinator divides the integer sum by the granularity; the variance is the sum of the shares'.
fn secure_base(
    k: &(String, String),
    cells: &[Cells],
    measures: &[policies::sensitivity::Measure],
    max_missing: u32,
) -> Result<BaseResult> {
    let n = cells.len() as u32;
    let t = max_missing.min(n.saturating_sub(1));
    let dim = cells.first().map_or(1, |c| c.keys.len()) as u64;
    let mut sum: Option<BaseResult> = None;
    for c in cells {
        crate::demo::add_cells(&mut sum, c, &k.0, &k.1);
    }
    let mut r = sum.context("no node answered")?;
    for m in measures {
        let policies::sensitivity::MeasureCost::Rho(rho) = m.cost else {
            anyhow::bail!("{}: secure aggregation needs a ρ cost", k.0);
        };
        // The nodes' default ceiling on a share's own ρ, as a release applies it.
        let plan = secagg::accounting::plan(
            m.l1(),
            m.l2(),
            dim,
            rho,
            (n - t) as u64,
            Some(node::config::DEFAULT_MAX_LOCAL_RHO),
        )?;
        let mut national = vec![0i64; r.cells.len()];
        for c in cells {
            let scaled: Vec<i64> = c
                .measure(&m.name)
                .unwrap_or_default()
                .iter()
                .map(|v| v * plan.granularity)
                .collect();
            let (noisy, _) =
                node::noise::gaussian_share(plan.sigma, m.l2() * plan.granularity as f64, &scaled)?;
            for (a, b) in national.iter_mut().zip(noisy) {
                *a += b;
            }
        }
        for ((_, ms), v) in r.cells.iter_mut().zip(national) {
            if let Some(s) = ms.get_mut(&m.name) {
                s.value = v as f64 / plan.granularity as f64;
                s.variance = n as f64 * plan.share_variance;
            }
        }
    }
    r.providers_reporting = cells.len();
    r.providers_total = cells.len();
    Ok(r)
}

/// Every catalog record for every quarter, with base sums made by `make`.
fn records_all(
    catalog: &Catalog,
    periods: &[(TimeGrain, String)],
    make: impl Fn(&(String, String)) -> Result<BaseResult>,
) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for (grain, p) in periods {
        let mut bases = BTreeMap::new();
        for ind in catalog.indicators.values() {
            if ind.query().is_some_and(|q| q.time_grain() == *grain) {
                let k = (ind.id.clone(), p.clone());
                bases.insert(ind.id.clone(), make(&k)?);
            }
        }
        for ind in catalog.indicators.values() {
            if catalog.time_grain(ind) == *grain {
                out.extend(publish::records(
                    catalog,
                    ind,
                    p,
                    &bases,
                    &coordinator::reference::Population::none(),
                ));
            }
        }
    }
    Ok(out)
}

fn estimates(
    catalog: &Catalog,
    release_periods: &[(TimeGrain, String)],
    make: impl Fn(&(String, String)) -> Result<BaseResult>,
) -> Result<BTreeMap<Key, f64>> {
    Ok(records_all(catalog, release_periods, make)?
        .iter()
        .map(|r| (key(r), r.estimate))
        .collect())
}
