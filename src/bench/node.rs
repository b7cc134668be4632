//! `stroom bench node`: DP evaluation of each aggregate kind on one provider's records, against the
//! plain non-private DataFusion query that groups by youth and group and then by group on the same
//! data — the least work any user-level DP aggregate needs.

use super::{Machine, median, peak_rss_mib, reset_peak_rss};
use anyhow::{Context, Result};
use node::evaluate::{Bounding, cells};
use node::tables::Tables;
use policies::Period;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

pub struct NodeBenchOptions {
    /// Synthesize one provider at this scale (1 = a national average provider × 11).
    pub scale: f64,
    /// Use this provider folder instead of synthesizing one.
    pub data: Option<PathBuf>,
    pub repetitions: usize,
    pub out: PathBuf,
    /// Also time each kind over this PostgreSQL (the records written into schema `p01`).
    pub postgres: Option<String>,
}

pub const KINDS: [&str; 6] = [
    "count_units",
    "count_rows",
    "sum",
    "mean",
    "histogram_all_cells",
    "histogram",
];

const SQL_EVENTS: &str = "SELECT m.youth_pid, q.quarter{value} FROM restrictive_measure m \
     JOIN quarters q ON CAST(m.start_ts AS DATE) BETWEEN q.first_day AND q.last_day";
const MINUTES: &str = ", CAST(date_part('epoch', m.end_ts - m.start_ts) / 60 AS BIGINT) AS minutes";
const PERIOD: &str = "2024Q1:2024Q4";

/// An indicator over seclusion-and-restraint events per quarter with the given aggregate kind.
pub fn indicator(kind: &str) -> Result<policies::Indicator> {
    let (value, aggregate) = match kind {
        "count_units" => ("", r#"{ kind = "count_units", max_groups_per_unit = 4 }"#),
        "count_rows" => (
            "",
            r#"{ kind = "count_rows", max_groups_per_unit = 4, max_rows_per_group = 12 }"#,
        ),
        "sum" => (
            MINUTES,
            r#"{ kind = "sum", value = "minutes", lower = 0, upper = 2000, max_groups_per_unit = 4 }"#,
        ),
        "mean" => (
            MINUTES,
            r#"{ kind = "mean", value = "minutes", lower = 0, upper = 2000, max_groups_per_unit = 4 }"#,
        ),
        // Every unit may keep all 4 × 7 cells: no per-unit choice of cells.
        "histogram_all_cells" => (
            MINUTES,
            r#"{ kind = "histogram", value = "minutes", edges = [0, 30, 60, 120, 240, 480, 720], max_groups_per_unit = 28, max_rows_per_group = 4 }"#,
        ),
        "histogram" => (
            MINUTES,
            r#"{ kind = "histogram", value = "minutes", edges = [0, 30, 60, 120, 240, 480, 720], max_groups_per_unit = 4, max_rows_per_group = 4 }"#,
        ),
        other => anyhow::bail!("unknown aggregate kind '{other}'"),
    };
    let sql = SQL_EVENTS.replace("{value}", value);
    let text = format!(
        "id = \"bench\"\ntheme = \"zorg\"\ntitle = {{ nl = \"b\", en = \"b\" }}\ndefinition = {{ nl = \"b\", en = \"b\" }}\n\
         privacy_unit = \"youth_pid\"\nsql = \"{sql}\"\ngroup_by = {{ quarter = \"period\" }}\naggregate = {aggregate}\ncost = {{ rho = 0.1 }}\n"
    );
    Ok(policies::indicator::parse(
        std::path::Path::new("bench"),
        &text,
    )?)
}

/// The plain query: per (youth, group), then per group. Histograms group by bin as well.
pub fn plain_sql(kind: &str) -> String {
    let counts = kind == "count_units" || kind == "count_rows";
    let inner = SQL_EVENTS.replace("{value}", if counts { "" } else { MINUTES });
    match kind {
        "count_units" => format!(
            "SELECT quarter, COUNT(*) FROM (SELECT youth_pid, quarter FROM ({inner}) GROUP BY youth_pid, quarter) GROUP BY quarter"
        ),
        "count_rows" => format!(
            "SELECT quarter, SUM(n) FROM (SELECT youth_pid, quarter, COUNT(*) AS n FROM ({inner}) GROUP BY youth_pid, quarter) GROUP BY quarter"
        ),
        "sum" | "mean" => format!(
            "SELECT quarter, SUM(s), COUNT(*) FROM (SELECT youth_pid, quarter, SUM(minutes) AS s FROM ({inner}) GROUP BY youth_pid, quarter) GROUP BY quarter"
        ),
        _ => format!(
            "SELECT quarter, b, SUM(n) FROM (SELECT youth_pid, quarter, CASE WHEN minutes < 30 THEN 0 WHEN minutes < 60 THEN 1 WHEN minutes < 120 THEN 2 WHEN minutes < 240 THEN 3 WHEN minutes < 480 THEN 4 WHEN minutes < 720 THEN 5 ELSE 6 END AS b, COUNT(*) AS n FROM ({inner}) WHERE minutes IS NOT NULL GROUP BY 1, 2, 3) GROUP BY quarter, b"
        ),
    }
}

#[derive(Debug, Serialize)]
pub struct KindFigures {
    pub kind: String,
    pub dp_median_s: f64,
    pub plain_median_s: f64,
    /// DP over plain (target ≤ 1.3).
    pub ratio: f64,
    /// Peak resident memory of the process while this kind ran (tables registered).
    pub peak_rss_mib: f64,
    pub cells: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresFigures>,
}

/// The same DP evaluation as a node over PostgreSQL runs it: read the tables in one read-only
/// transaction (with the snapshot digest), then bound, aggregate and noise in DataFusion.
#[derive(Debug, Serialize)]
pub struct PostgresFigures {
    pub dp_median_s: f64,
    /// Of that, reading (and digesting) the records from the database.
    pub read_median_s: f64,
    pub read_share: f64,
    /// DP over PostgreSQL against DP over Parquet.
    pub vs_parquet: f64,
}

#[derive(Debug, Serialize)]
pub struct NodeReport {
    pub machine: Machine,
    pub scale: Option<f64>,
    pub data: String,
    pub measure_rows: u64,
    pub youths: u64,
    pub period: String,
    pub repetitions: usize,
    pub kinds: Vec<KindFigures>,
}

pub async fn run(opts: NodeBenchOptions) -> Result<NodeReport> {
    anyhow::ensure!(opts.repetitions > 0, "--repetitions must be at least 1");
    super::warn_if_debug();
    anyhow::ensure!(
        opts.scale.is_finite() && opts.scale > 0.0,
        "--scale must be a positive number, found {}",
        opts.scale
    );
    let workdir = tempfile::tempdir()?;
    let (dir, scale) = match &opts.data {
        Some(d) => (d.clone(), None),
        None => {
            eprintln!(
                "synthesizing one provider at --scale {} (about {:.1} million measure rows) …",
                opts.scale,
                opts.scale * 1720.0 / 1e6
            );
            super::synthesize(crate::synth::SynthOptions {
                out: workdir.path().to_path_buf(),
                providers: 1,
                seed: 42,
                scale: opts.scale,
            })
            .await?;
            (
                workdir.path().join(crate::synth::provider_id(0)),
                Some(opts.scale),
            )
        }
    };
    let served: Vec<String> = node::config::DEFAULT_TABLES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let t = Instant::now();
    let tables = Tables::open(&dir, &served)
        .await
        .with_context(|| format!("opening the provider's tables in {}", dir.display()))?;
    let rows = |name: &str| {
        tables
            .report
            .iter()
            .find(|r| r.table == name)
            .map_or(0, |r| r.rows)
    };
    let (measure_rows, youths) = (rows("restrictive_measure"), rows("youth"));
    eprintln!(
        "opened and validated {} in {:.1}s: {measure_rows} measure rows, {youths} youths",
        dir.display(),
        t.elapsed().as_secs_f64()
    );
    let pg = match &opts.postgres {
        Some(url) => Some(postgres_source(url, &dir, workdir.path(), &served).await?),
        None => None,
    };
    let period: Period = PERIOD.parse()?;
    let mut kinds = Vec::new();
    for kind in KINDS {
        let ind = indicator(kind)?;
        let query = ind.query().context("bench indicator has a query")?.clone();
        let ctx = tables.session(&period)?;
        let plain = plain_sql(kind);
        reset_peak_rss();
        let (mut dp, mut base, mut cell_count) = (Vec::new(), Vec::new(), 0);
        for rep in 0..opts.repetitions {
            eprint!("\r{kind}: repetition {}/{}   ", rep + 1, opts.repetitions);
            let t = Instant::now();
            let c = cells(&tables, &query, &period, Bounding::Bounded).await?;
            node::noise::noisy_measures(&query.measures(period.quarters().len()), &c)?;
            dp.push(t.elapsed().as_secs_f64());
            cell_count = c.keys.len();
            let t = Instant::now();
            let batches = ctx.sql(&plain).await?.collect().await?;
            base.push(t.elapsed().as_secs_f64());
            anyhow::ensure!(!batches.is_empty(), "the plain query returned nothing");
        }
        eprintln!();
        let mut over_pg = None;
        if let Some(pg) = &pg {
            let (mut total, mut read) = (Vec::new(), Vec::new());
            for rep in 0..opts.repetitions {
                eprint!(
                    "\r{kind} over PostgreSQL: repetition {}/{}   ",
                    rep + 1,
                    opts.repetitions
                );
                let t = Instant::now();
                let tables = pg.read().await?;
                read.push(t.elapsed().as_secs_f64());
                let c = cells(&tables, &query, &period, Bounding::Bounded).await?;
                node::noise::noisy_measures(&query.measures(period.quarters().len()), &c)?;
                total.push(t.elapsed().as_secs_f64());
            }
            eprintln!();
            over_pg = Some((median(total), median(read)));
        }
        let (d, p) = (median(dp), median(base));
        kinds.push(KindFigures {
            kind: kind.to_string(),
            dp_median_s: d,
            plain_median_s: p,
            ratio: d / p,
            peak_rss_mib: peak_rss_mib(),
            cells: cell_count,
            postgres: over_pg.map(|(total, read)| PostgresFigures {
                dp_median_s: total,
                read_median_s: read,
                read_share: read / total,
                vs_parquet: total / d,
            }),
        });
    }
    let report = NodeReport {
        machine: Machine::read(),
        scale,
        data: dir.display().to_string(),
        measure_rows,
        youths,
        period: PERIOD.to_string(),
        repetitions: opts.repetitions,
        kinds,
    };
    let rows: Vec<Vec<String>> = report
        .kinds
        .iter()
        .map(|k| {
            vec![
                k.kind.clone(),
                format!("{:.4}", k.dp_median_s),
                format!("{:.4}", k.plain_median_s),
                format!("{:.2}×", k.ratio),
                format!("{:.0}", k.peak_rss_mib),
                k.postgres.as_ref().map_or("-".into(), |p| {
                    format!(
                        "{:.4} ({:.0}% reading, {:.2}× Parquet)",
                        p.dp_median_s,
                        100.0 * p.read_share,
                        p.vs_parquet
                    )
                }),
            ]
        })
        .collect();
    super::print_and_write(
        &format!(
            "Node DP evaluation on {measure_rows} measure rows ({PERIOD}), median of {} repetitions",
            opts.repetitions
        ),
        &[
            "kind",
            "DP evaluation (s)",
            "plain query (s)",
            "ratio",
            "peak RSS (MiB)",
            "DP over PostgreSQL (s)",
        ],
        &rows,
        &opts.out,
        &report,
    )?;
    Ok(report)
}

/// The provider's records written into `url` (schema `p01`) and a node's PostgreSQL source over
/// them, the way `[data] source = "postgres"` opens it.
async fn postgres_source(
    url: &str,
    dir: &std::path::Path,
    work: &std::path::Path,
    served: &[String],
) -> Result<node::postgres::PostgresSource> {
    let t = Instant::now();
    let rows = crate::synth::postgres::load(url, dir, "p01", |_| {}).await?;
    eprintln!(
        "wrote {} rows into PostgreSQL in {:.1}s",
        rows.values().sum::<u64>(),
        t.elapsed().as_secs_f64()
    );
    let secret = work.join("pg.conn");
    std::fs::write(&secret, url)?;
    let cfg = node::config::PostgresConfig {
        connection_file: Some(secret),
        connection_env: None,
        sslmode: "disable".into(),
        sslrootcert: None,
        tables: node::config::DEFAULT_TABLES
            .iter()
            .map(|t| {
                (
                    t.to_string(),
                    node::config::TableMapping {
                        from: format!("p01.{t}"),
                        columns: Default::default(),
                    },
                )
            })
            .collect(),
    };
    Ok(node::postgres::PostgresSource::connect(&cfg, served).await?)
}
