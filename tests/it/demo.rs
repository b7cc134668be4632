//! `stroom demo` end to end (two providers to keep it quick): real node and coordinator servers
//! over HTTPS, national records with intervals, the truth beside them, and the intervals' coverage.

use crate::support::*;

#[test]
fn demo_writes_national_records_with_intervals_and_truth() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    // With --serve the federation and the dashboard stay up until Ctrl-C (SIGINT).
    let mut child = stroom()
        .args([
            "demo",
            "--out",
            out.to_str().unwrap(),
            "--providers",
            "2",
            "--seed",
            "3",
            "--serve",
        ])
        .env_remove("STROOM_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let console = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let mut stdout = String::new();
    let dashboard = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("demo ended without serving:\n{stdout}"))
            .unwrap();
        stdout.push_str(&line);
        stdout.push('\n');
        if let Some(rest) = line.strip_prefix("Dashboard: ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let page = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = std::fs::read(out.join("certs/ca/ca.crt")).unwrap();
        let c = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
            .build()
            .unwrap();
        get_text(&c, dashboard.clone()).await
    });
    assert!(
        page.contains("<html lang=\"nl\">") && page.matches("<svg").count() >= 7,
        "the dashboard shows a chart per theme: {page}"
    );
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "demo after Ctrl-C: {status:?}\n{stdout}");
    // The console shows the steps and progress; the servers' log lines go to DIR/logs/.
    let console = console.join().unwrap();
    assert!(
        console.contains("1/5 ") && console.contains("5/5 "),
        "{console}"
    );
    assert!(
        !console.contains(" INFO ") && !console.contains(" WARN "),
        "log lines on the console:\n{console}"
    );
    let log = std::fs::read_to_string(out.join("logs/stroom.log")).expect("demo log file");
    assert!(
        log.contains(" INFO ") && log.contains("spend recorded"),
        "{log}"
    );
    assert!(stdout.contains("logs/stroom.log"), "{stdout}");
    assert!(
        stdout.contains("care.unique_youths") && stdout.contains("95% interval"),
        "{stdout}"
    );

    let national: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(out.join("national.json")).unwrap()).unwrap();
    let truth: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(out.join("truth.json")).unwrap()).unwrap();
    assert_eq!(national.len(), truth.len());
    let catalog_ids: std::collections::BTreeSet<String> = std::fs::read_dir(catalog_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.path().file_stem()?.to_str().map(String::from))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut periods = std::collections::BTreeSet::new();
    for (r, t) in national.iter().zip(&truth) {
        for k in [
            "indicator",
            "period",
            "group",
            "estimate",
            "ci_low",
            "ci_high",
            "providers_reporting",
            "providers_total",
            "rho",
        ] {
            assert!(r.get(k).is_some(), "record lacks {k}: {r}");
        }
        assert_eq!(
            (&r["indicator"], &r["period"], &r["group"]),
            (&t["indicator"], &t["period"], &t["group"])
        );
        assert!(t.get("value").is_some() && t.get("value_bounded").is_some());
        assert_eq!(r["providers_reporting"], r["providers_total"]);
        let (lo, est, hi) = (
            r["ci_low"].as_f64(),
            r["estimate"].as_f64(),
            r["ci_high"].as_f64(),
        );
        if let (Some(lo), Some(est), Some(hi)) = (lo, est, hi) {
            assert!(lo <= hi, "{r}");
            // Clamped to the quantity's range: no negative count, no share above 100%.
            let id = r["indicator"].as_str().unwrap_or_default();
            if id.ends_with("_share") {
                assert!(0.0 <= lo && hi <= 100.0, "{r}");
            }
            if id.contains(".count") || id.starts_with("care.") {
                assert!(lo >= 0.0 && est >= 0.0, "{r}");
            }
            if r["indicator"]
                .as_str()
                .is_some_and(|i| i.starts_with("care."))
            {
                assert!(lo <= est && est <= hi, "{r}");
            }
        }
        seen.insert(r["indicator"].as_str().unwrap().to_string());
        periods.insert(r["period"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, catalog_ids, "every catalog indicator is published");
    // 2023Q1–2024Q4, and the years 2023 and 2024 for the annual suicide figures.
    assert_eq!(periods.len(), 10, "{periods:?}");
    assert!(
        periods.contains("2023") && periods.contains("2024Q4"),
        "{periods:?}"
    );
    let csv = std::fs::read_to_string(out.join("national.csv")).unwrap();
    assert!(csv.starts_with(
        "indicator,period,group,estimate,ci_low,ci_high,providers_reporting,providers_total,rho"
    ));
    assert_eq!(csv.lines().count(), national.len() + 1);

    // Coverage of the bounded exact value by the 95% intervals. About 580 records: if they were
    // independent, the observed rate would have a standard deviation of √(0.95·0.05/580) ≈ 0.9
    // points. They are not (a share and its numerator share noise; histogram bins feed their
    // quantiles), so take half the records as independent (sd ≈ 1.3 points) and accept ±5 sd below
    // and ±3 sd above 95%: too low means intervals that are too narrow or biased estimates, too
    // high means overstated noise.
    let (mut covered, mut counted) = (0usize, 0usize);
    for (r, t) in national.iter().zip(&truth) {
        let (Some(lo), Some(hi), Some(v)) = (
            r["ci_low"].as_f64(),
            r["ci_high"].as_f64(),
            t["value_bounded"].as_f64(),
        ) else {
            continue;
        };
        counted += 1;
        if lo <= v && v <= hi {
            covered += 1;
        }
    }
    assert!(counted > 500, "{counted} records with intervals");
    let rate = covered as f64 / counted as f64;
    assert!(
        (0.885..=0.99).contains(&rate),
        "coverage {rate:.3} ({covered}/{counted}) is not consistent with 95%"
    );
}
