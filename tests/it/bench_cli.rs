//! `stroom bench`: each command runs for real at a small size, prints its table and writes JSON
//! whose figures hang together; bad input is refused before any work.

use crate::support::*;

fn bench(
    args: &[&str],
) -> (
    std::process::Output,
    Option<serde_json::Value>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.json");
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--out", out.to_str().unwrap()]);
    let output = run(&all);
    let report = std::fs::read(&out)
        .ok()
        .map(|b| serde_json::from_slice(&b).expect("report is JSON"));
    (output, report, dir)
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bench_node_measures_every_aggregate_kind_against_the_plain_query() {
    let (o, report, _dir) = bench(&["node", "--scale", "1", "--repetitions", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = report.expect("a JSON report");
    let kinds = report["kinds"].as_array().unwrap();
    let names: Vec<&str> = kinds.iter().map(|k| k["kind"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "count_units",
            "count_rows",
            "sum",
            "mean",
            "histogram_all_cells",
            "histogram"
        ]
    );
    assert!(report["measure_rows"].as_u64().unwrap() > 1000, "{report}");
    for k in kinds {
        let (dp, plain, ratio) = (
            k["dp_median_s"].as_f64().unwrap(),
            k["plain_median_s"].as_f64().unwrap(),
            k["ratio"].as_f64().unwrap(),
        );
        assert!(dp > 0.0 && plain > 0.0, "{k}");
        assert!((ratio - dp / plain).abs() < 1e-9, "{k}");
        assert!(k["peak_rss_mib"].as_f64().unwrap() > 1.0, "{k}");
        // Four quarters, histograms with seven bins each.
        let cells = k["cells"].as_u64().unwrap();
        assert!(cells == 4 || cells == 28, "{k}");
    }
    let table = stdout(&o);
    assert!(table.contains("| histogram_all_cells"), "{table}");
}

#[test]
fn bench_federation_runs_against_real_nodes_and_reports_the_coordinator() {
    let (o, report, _dir) = bench(&[
        "federation",
        "--nodes",
        "2,3",
        "--repeats",
        "2",
        "--node-delay-ms",
        "300",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = report.expect("a JSON report");
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for (r, n) in runs.iter().zip([2, 3]) {
        assert_eq!(r["nodes"], n);
        for field in [
            "first_run_s",
            "repeat_run_median_s",
            "fanout_only_median_s",
            "coordinator_cpu_per_run_s",
            "coordinator_cpu_per_fanout_s",
            "new_connections_run_s",
            "new_connections_fanout_only_s",
            "new_connections_cpu_per_run_s",
            "new_connections_cpu_per_fanout_s",
            "slowest_node_evaluation_s",
            "combination_ms",
            "coordinator_peak_rss_mib",
        ] {
            assert!(r[field].as_f64().unwrap() > 0.0, "{field}: {r}");
        }
        // The nodes run in another process: their evaluations are not in the coordinator's
        // figures, and each node's evaluation was timed.
        assert!(
            r["sum_of_node_evaluations_s"].as_f64().unwrap()
                >= r["slowest_node_evaluation_s"].as_f64().unwrap()
        );
        // The overhead is the median of each repeat run minus its paired fan-out alone.
        let series = |field: &str| -> Vec<f64> {
            r[field]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        };
        let (repeats, fanouts) = (series("repeat_runs_s"), series("fanout_only_s"));
        assert_eq!((repeats.len(), fanouts.len()), (2, 2), "{r}");
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let differences = repeats.iter().zip(&fanouts).map(|(a, b)| a - b).collect();
        // serde_json parses floats to within one unit in the last place, so the differences
        // recomputed from the JSON may differ from the bench's by that much.
        assert!(
            (r["overhead_s"].as_f64().unwrap() - median(differences)).abs() < 1e-15,
            "{r}"
        );
        assert_eq!(
            r["repeat_run_median_s"].as_f64().unwrap(),
            median(repeats),
            "{r}"
        );
        assert_eq!(
            r["fanout_only_median_s"].as_f64().unwrap(),
            median(fanouts),
            "{r}"
        );
        // Nodes told to take 300 ms do: no run with them ends sooner, and the run's time beyond
        // the slowest node is measured from that delay. The delay is switched off again after:
        // the runs with new connections come later and take far less.
        let delayed = series("delayed_runs_s");
        assert_eq!(delayed.len(), 2, "{r}");
        assert!(delayed.iter().all(|s| *s >= 0.3), "{r}");
        assert!(
            (r["delayed_overhead_s"].as_f64().unwrap() - (median(delayed) - 0.3)).abs() < 1e-12,
            "{r}"
        );
        assert!(r["new_connections_run_s"].as_f64().unwrap() < 0.3, "{r}");
    }
    assert!(stdout(&o).contains("repeat run (s)"));
    assert!(stdout(&o).contains("fan-out alone (s)"));
    assert!(stdout(&o).contains("With new connections"));
    assert!(stdout(&o).contains("run − slowest node (s)"));
}

#[test]
fn bench_accuracy_prices_per_node_noise_against_central_dp() {
    let (o, report, _dir) = bench(&[
        "accuracy",
        "--providers",
        "4",
        "--repetitions",
        "60",
        "--period",
        "2024Q4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = report.expect("a JSON report");
    let by_id = |id: &str| {
        report["indicators"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["indicator"] == id)
            .unwrap_or_else(|| panic!("{id} missing"))
            .clone()
    };
    // A count: four nodes' independent draws against one draw at the same scale, so the error
    // ratio is √4 = 2. With 60 repetitions of one cell the RMSEs' ratio has a relative spread of
    // about √(1/120 + 1/120) ≈ 13%; 1.3–3.0 is more than ±3 of those.
    let youths = by_id("care.unique_youths");
    let ratio = youths["ratio"].as_f64().unwrap();
    assert!(
        (1.3..=3.0).contains(&ratio),
        "fed/central {ratio}: {youths}"
    );
    // Its federated RMSE matches the declared noise: √4 × σ.
    let catalog = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(policies::Catalog::load(&catalog_dir()))
        .unwrap();
    let sigma = catalog
        .get("care.unique_youths")
        .unwrap()
        .query()
        .unwrap()
        .measures(1)[0]
        .scale();
    let rmse = youths["federated_rmse"].as_f64().unwrap();
    assert!(
        (0.7 * 2.0 * sigma..=1.3 * 2.0 * sigma).contains(&rmse),
        "RMSE {rmse} against 2σ = {}",
        2.0 * sigma
    );
    let coverage = youths["coverage"].as_f64().unwrap();
    assert!(coverage >= 0.8, "{youths}");
    assert!(stdout(&o).contains("fed/central"));
}

#[test]
fn bench_refuses_bad_input_before_any_work() {
    for (args, says) in [
        (vec!["federation", "--nodes", "0"], "--nodes"),
        (
            vec!["federation", "--nodes", "2", "--indicator", "no.such"],
            "no indicator 'no.such'",
        ),
        (vec!["node", "--scale=-1"], "--scale"),
        (vec!["node", "--scale=0"], "--scale"),
        (
            vec!["node", "--data", "/nonexistent/P01", "--repetitions", "1"],
            "/nonexistent/P01",
        ),
        (vec!["accuracy", "--period", "2024Q9"], "2024Q9"),
        (vec!["accuracy", "--repetitions", "1"], "--repetitions"),
    ] {
        let (o, report, _dir) = bench(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(report.is_none(), "{args:?} wrote a report");
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
}
