//! Benchmark: DP evaluation of each aggregate kind on one provider's data, against the plain
//! non-private DataFusion query that groups by youth and group and then by group on the same data
//! (the least work any user-level DP aggregate needs).
//!
//! cargo run --release -p node --example bench_eval -- DATA_DIR [REPETITIONS] [KIND]
//! Prints one Markdown table row per kind; peak RSS (VmHWM) at the end.

use node::evaluate::{Bounding, cells};
use node::tables::Tables;
use policies::Period;
use std::time::Instant;

const SQL_EVENTS: &str = "SELECT m.youth_pid, q.quarter{value} FROM restrictive_measure m \
     JOIN quarters q ON CAST(m.start_ts AS DATE) BETWEEN q.first_day AND q.last_day";

fn indicator(kind: &str) -> policies::Indicator {
    let (value, aggregate) = match kind {
        "count_units" => ("", r#"{ kind = "count_units", max_groups_per_unit = 4 }"#),
        "count_rows" => (
            "",
            r#"{ kind = "count_rows", max_groups_per_unit = 4, max_rows_per_group = 12 }"#,
        ),
        "sum" => (
            ", CAST(date_part('epoch', m.end_ts - m.start_ts) / 60 AS BIGINT) AS minutes",
            r#"{ kind = "sum", value = "minutes", lower = 0, upper = 2000, max_groups_per_unit = 4 }"#,
        ),
        "mean" => (
            ", CAST(date_part('epoch', m.end_ts - m.start_ts) / 60 AS BIGINT) AS minutes",
            r#"{ kind = "mean", value = "minutes", lower = 0, upper = 2000, max_groups_per_unit = 4 }"#,
        ),
        // Every unit may keep all 4 × 7 cells: no per-unit cell selection.
        "histogram_all_cells" => (
            ", CAST(date_part('epoch', m.end_ts - m.start_ts) / 60 AS BIGINT) AS minutes",
            r#"{ kind = "histogram", value = "minutes", edges = [0, 30, 60, 120, 240, 480, 720], max_groups_per_unit = 28, max_rows_per_group = 4 }"#,
        ),
        _ => (
            ", CAST(date_part('epoch', m.end_ts - m.start_ts) / 60 AS BIGINT) AS minutes",
            r#"{ kind = "histogram", value = "minutes", edges = [0, 30, 60, 120, 240, 480, 720], max_groups_per_unit = 4, max_rows_per_group = 4 }"#,
        ),
    };
    let sql = SQL_EVENTS.replace("{value}", value);
    let text = format!(
        "id = \"bench\"\ntheme = \"zorg\"\ntitle = {{ nl = \"b\", en = \"b\" }}\ndefinition = {{ nl = \"b\", en = \"b\" }}\n\
         privacy_unit = \"youth_pid\"\nsql = \"{sql}\"\ngroup_by = {{ quarter = \"period\" }}\naggregate = {aggregate}\ncost = {{ rho = 0.1 }}\n"
    );
    policies::indicator::parse(std::path::Path::new("bench"), &text).expect("bench indicator")
}

/// The plain query: per (youth, group), then per group. Histograms group by bin as well.
fn plain_sql(kind: &str) -> String {
    let inner = SQL_EVENTS.replace(
        "{value}",
        if kind == "count_units" || kind == "count_rows" {
            ""
        } else {
            ", CAST(date_part('epoch', m.end_ts - m.start_ts) / 60 AS BIGINT) AS minutes"
        },
    );
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<f64>().ok())
            })
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).expect("DATA_DIR"));
    let reps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let only = args.get(3).cloned();
    let served: Vec<String> = node::config::DEFAULT_TABLES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let t = Instant::now();
    let tables = Tables::open(&dir, &served).await.expect("tables");
    let measures = tables
        .report
        .iter()
        .find(|r| r.table == "restrictive_measure")
        .map(|r| r.rows)
        .unwrap_or(0);
    eprintln!(
        "opened and validated {} in {:.1}s; restrictive_measure rows: {measures}",
        dir.display(),
        t.elapsed().as_secs_f64()
    );
    let period: Period = "2024Q1:2024Q4".parse().unwrap();
    println!("| kind | measure rows | DP evaluation (median s) | plain query (median s) | ratio |");
    println!("|---|---:|---:|---:|---:|");
    for kind in [
        "count_units",
        "count_rows",
        "sum",
        "mean",
        "histogram_all_cells",
        "histogram",
    ] {
        if only.as_deref().is_some_and(|o| o != kind) {
            continue;
        }
        let ind = indicator(kind);
        let q = ind.query().unwrap().clone();
        let (mut dp, mut plain) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let t = Instant::now();
            let c = cells(&tables, &q, &period, Bounding::Bounded)
                .await
                .expect("dp cells");
            for m in q.measures(4) {
                node::noise::add_noise(&m, c.measure(&m.name).unwrap_or_default()).expect("noise");
            }
            dp.push(t.elapsed().as_secs_f64());
            let ctx = tables.session(&period).expect("session");
            let t = Instant::now();
            let batches = ctx
                .sql(&plain_sql(kind))
                .await
                .expect("plan")
                .collect()
                .await
                .expect("plain");
            plain.push(t.elapsed().as_secs_f64());
            assert!(!batches.is_empty());
        }
        let (d, p) = (median(dp), median(plain));
        println!("| {kind} | {measures} | {d:.3} | {p:.3} | {:.2}× |", d / p);
    }
    println!("\npeak RSS (VmHWM): {:.0} MiB", peak_rss_mib());
}
