//! The public dashboard in a real browser: `stroom demo --serve` publishes the whole catalog (its
//! reviewer releases every round), an interpretation is added and a quarter left under embargo, and
//! Debian's headless Chromium, driven through chromedriver, reads the page as a visitor would.
//! Screenshots go to `target/dashboard-screenshots/` (ignored by git) for a person to look at.

use crate::support::webdriver::{Driver, Session};
use crate::support::*;

const TAB: &str = "\u{E004}";

/// The monitor's eight themes, as the dashboard anchors them (`#theme-…`): freedom-restricting
/// measures, care, individual tailoring, matching and placement, suicide prevention (annual),
/// small-scale living, education, the panel. Every theme on the page must show a chart.
const THEMES: [&str; 8] = [
    "vrijheidsbeperking",
    "zorg",
    "maatwerk",
    "matching_plaatsing",
    "suicide",
    "kleinschaligheid",
    "onderwijs",
    "ervaringen",
];

/// Console messages at error level; the log channel itself is checked to work elsewhere.
fn errors(console: &[(String, String)]) -> Vec<&(String, String)> {
    console
        .iter()
        .filter(|(level, _)| level == "SEVERE")
        .collect()
}

/// The demo process; interrupted (Ctrl-C) when dropped, so a failing test leaves nothing running.
struct Demo(std::process::Child);

impl Demo {
    /// Ctrl-C (SIGINT) and wait for the exit; a process already waited for is not signalled again
    /// (its pid may belong to another process by then).
    fn interrupt(&mut self) -> std::io::Result<std::process::ExitStatus> {
        if let Some(status) = self.0.try_wait()? {
            return Ok(status);
        }
        std::process::Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status()?;
        self.0.wait()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.interrupt();
    }
}

/// One published record as compared: period, group (JSON), estimate and 95% interval.
type Row = (String, String, Option<f64>, Option<f64>, Option<f64>);

#[test]
fn dashboard_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let mut demo = Demo(
        stroom()
            .args([
                "demo",
                "--out",
                out.to_str().unwrap(),
                // All eleven providers: with fewer, small national counts (suicide attempts) are
                // suppressed and their charts have no values to show.
                "--providers",
                "11",
                "--seed",
                "11",
                "--serve",
            ])
            .env("STROOM_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(demo.0.stdout.take().unwrap()));
    let dashboard = loop {
        let line = lines
            .next()
            .expect("demo ended without serving the dashboard")
            .unwrap();
        if let Some(rest) = line.strip_prefix("Dashboard: ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let downloads = dir.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let profile = dir.path().join("chromium-profile");

    let driver = Driver::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let session = driver.session(&downloads, &profile).await;
        visit(&session, &dashboard, &out, &downloads, &shots).await;
    });
    drop(driver);

    let status = demo.interrupt().unwrap();
    assert!(status.success(), "demo after Ctrl-C: {status:?}");
}

async fn visit(
    session: &Session,
    dashboard: &str,
    out: &std::path::Path,
    downloads: &std::path::Path,
    shots: &std::path::Path,
) {
    let base = dashboard.trim_end_matches('/');

    // The console channel works: a page that does not exist logs a load error. Without this,
    // "no console errors" below could pass because nothing was ever recorded.
    session.goto(&format!("{base}/no-such-page")).await;
    let console = session.console().await;
    assert!(
        !errors(&console).is_empty(),
        "a 404 should show in the console log: {console:?}"
    );

    // The page loads with no console errors (no blocked resource, no CSP violation, no 404).
    session.goto(dashboard).await;
    let html = session.find("html").await;
    assert_eq!(
        session.attribute(&html, "lang").await.as_deref(),
        Some("nl")
    );
    let console = session.console().await;
    assert!(
        errors(&console).is_empty(),
        "console errors: {:?}",
        errors(&console)
    );
    std::fs::write(shots.join("dashboard-nl.png"), session.screenshot().await).unwrap();

    // The embargo in the browser: the demo released its rounds (2023Q1–2024Q4). A reviewer now
    // interprets the first freedom-restriction indicator for 2024Q4, and a researcher runs it for
    // 2022Q4, a round nobody releases. The page shows the reading with the release date and says
    // which quarters have none; 2022Q4 is nowhere on it, though a reviewer sees it in the API.
    let first = session
        .find_all("#theme-vrijheidsbeperking article")
        .await
        .into_iter()
        .next()
        .expect("a freedom-restriction indicator");
    let anchor = session.attribute(&first, "id").await.expect("its anchor");
    let indicator = anchor.replacen('-', ".", 1);
    let api = client(out);
    let researcher = std::fs::read_to_string(out.join("researcher.token")).unwrap();
    let reviewer = std::fs::read_to_string(out.join("reviewer.token")).unwrap();
    let run = start_run_as(&api, base, researcher.trim(), &indicator, "2022Q4").await;
    let finished = wait_for_run_as(&api, base, researcher.trim(), &run).await;
    assert_eq!(finished["status"], "done", "{finished}");
    let reading = "Minder dan vorig jaar; de daling zit vooral bij de grote aanbieders.";
    let put = api
        .put(format!(
            "{base}/v1/indicators/{indicator}/2024Q4/interpretation"
        ))
        .bearer_auth(reviewer.trim())
        .json(&serde_json::json!({ "nl": reading }))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let seen = get_json_as(
        &api,
        reviewer.trim(),
        format!("{base}/v1/indicators?indicator={indicator}"),
    )
    .await;
    let embargoed: Vec<&serde_json::Value> = seen["indicators"][0]["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["period"] == "2022Q4")
        .collect();
    assert!(
        !embargoed.is_empty() && embargoed.iter().all(|r| r["released"] == false),
        "a reviewer sees the embargoed quarter, marked: {seen}"
    );
    session.goto(dashboard).await;
    let article = session.find(&format!("#{anchor}")).await;
    let readings = session.find_within(&article, "blockquote.duiding").await;
    assert_eq!(readings.len(), 1, "one interpretation on {anchor}");
    let shown = session.text(&readings[0]).await;
    assert!(
        shown.contains(reading) && shown.contains("2024Q4") && shown.contains("vrijgegeven op"),
        "{shown}"
    );
    let none = session.find_within(&article, ".no-duiding").await;
    assert_eq!(none.len(), 1);
    let none = session.text(&none[0]).await;
    assert!(
        none.contains("2024Q3") && none.contains("2023Q1") && !none.contains("2024Q4"),
        "the quarters without interpretation: {none}"
    );
    let releases = session.text(&session.find("#releases").await).await;
    assert!(
        releases.contains("2024Q4") && releases.contains("2023Q1"),
        "{releases}"
    );
    assert!(
        !session.source().await.contains("2022Q4"),
        "the embargoed quarter is on the public page"
    );

    // The providers' spend per data year, as they reported it after the demo's runs (2023 and
    // 2024 data): one row per provider and year.
    let mut budget_rows = Vec::new();
    for row in session.find_all("#budgets tbody tr").await {
        budget_rows.push(session.text(&row).await);
    }
    for year in ["2023", "2024"] {
        assert!(
            budget_rows.iter().filter(|r| r.contains(year)).count() >= 2,
            "data year {year} missing from the budget table: {budget_rows:?}"
        );
    }

    // Every theme shows a chart: a visible SVG with a real size, labelled for assistive
    // technology, and beside it a table that states the numbers.
    let sections = session.find_all("section.theme").await;
    let mut ids = Vec::new();
    for section in &sections {
        ids.push(session.attribute(section, "id").await.unwrap_or_default());
    }
    for theme in THEMES {
        assert!(
            ids.contains(&format!("theme-{theme}")),
            "theme {theme} missing from {ids:?}"
        );
    }
    for (section, theme) in sections.iter().zip(&ids) {
        let charts = session.find_within(section, "svg").await;
        assert!(!charts.is_empty(), "theme {theme} shows no chart");
        for chart in &charts {
            assert!(
                session.displayed(chart).await,
                "a chart of {theme} is hidden"
            );
            let (w, h) = session.size(chart).await;
            assert!(w > 100.0 && h > 50.0, "a chart of {theme} is {w}×{h}");
            assert_eq!(
                session.attribute(chart, "role").await.as_deref(),
                Some("img")
            );
            assert!(
                session.attribute(chart, "aria-labelledby").await.is_some(),
                "a chart of {theme} has no accessible name"
            );
        }
        let bands = session.find_within(section, "svg .band").await;
        assert!(!bands.is_empty(), "theme {theme}: no 95% band");
        let tables = session.find_within(section, "table").await;
        assert!(
            tables.len() >= charts.len(),
            "theme {theme}: a chart without its table"
        );
    }

    // Keyboard: the first Tab reaches the skip link, which is visible when focused.
    session.press(TAB).await;
    let focused = session.active().await;
    assert_eq!(
        session.attribute(&focused, "class").await.as_deref(),
        Some("skip")
    );

    // The language switch changes the labels.
    let [title_nl, theme_nl, how_nl] = labels(session).await;
    let switch = session.find("#language-switch").await;
    assert_eq!(session.text(&switch).await, "English");
    session.click(&switch).await;
    let html = session.find("html").await;
    assert_eq!(
        session.attribute(&html, "lang").await.as_deref(),
        Some("en")
    );
    let [title_en, theme_en, how_en] = labels(session).await;
    assert_ne!(title_nl, title_en);
    assert_ne!(theme_nl, theme_en);
    assert_eq!(how_en, "How to read this");
    assert!(how_nl.starts_with("Zo leest u"), "{how_nl}");
    assert_eq!(
        session.text(&session.find("#language-switch").await).await,
        "Nederlands"
    );
    let console = session.console().await;
    assert!(errors(&console).is_empty(), "console errors: {console:?}");
    std::fs::write(shots.join("dashboard-en.png"), session.screenshot().await).unwrap();

    // A download link returns the right CSV: click it, wait for the file, and compare it with
    // the published records of that indicator.
    let link = session
        .find_all("#theme-vrijheidsbeperking a[href$='format=csv']")
        .await
        .into_iter()
        .next()
        .expect("a CSV download link");
    let href = session.attribute(&link, "href").await.expect("href");
    let indicator = href
        .split("indicator=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .expect("the link names its indicator")
        .to_string();
    session.click(&link).await;
    let file = downloads.join(format!("{indicator}.csv"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no download of {indicator}.csv: {:?}",
            std::fs::read_dir(downloads).unwrap().collect::<Vec<_>>()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let csv = std::fs::read_to_string(&file).unwrap();
    let mut rows = csv.lines();
    assert_eq!(
        rows.next(),
        Some(coordinator::server::CSV_HEADER.trim_end()),
        "CSV header"
    );
    let mut got: Vec<Row> = rows
        .map(|line| {
            let f = csv_fields(line);
            assert_eq!(f.len(), 11, "{line}");
            assert_eq!(f[0], indicator, "{line}");
            let num = |s: &str| (!s.is_empty()).then(|| s.parse::<f64>().expect("a number"));
            (
                f[1].clone(),
                f[2].clone(),
                num(&f[3]),
                num(&f[4]),
                num(&f[5]),
            )
        })
        .collect();
    // What the demo's runs produced, through the catalog's publication rules (suppression,
    // rounding): what the public may download.
    let national: Vec<coordinator::publish::Record> =
        serde_json::from_slice(&std::fs::read(out.join("national.json")).unwrap()).unwrap();
    let catalog = policies::Catalog::load(&catalog_dir()).await.unwrap();
    let mut expected: Vec<_> = national
        .iter()
        .filter(|r| r.indicator == indicator)
        .map(|r| coordinator::publish::publish(&catalog, r))
        .map(|p| {
            (
                p.period,
                serde_json::to_string(&p.group).unwrap(),
                p.estimate,
                p.ci_low,
                p.ci_high,
            )
        })
        .collect();
    assert!(
        got.iter().all(|r| r.0 != "2022Q4"),
        "the embargoed quarter is in the public CSV"
    );
    got.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    expected.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    assert!(!expected.is_empty());
    assert_eq!(
        got, expected,
        "the downloaded CSV holds exactly the indicator's published records"
    );
}

/// The fields of one CSV line, with RFC 4180 quoting ("" inside quotes is one ").
/// The page title, a theme's title and the "how to read this" title, in the page's language.
async fn labels(session: &Session) -> [String; 3] {
    let mut texts = Vec::new();
    for selector in ["h1", "#theme-ervaringen-title", "#how-to-read-title"] {
        texts.push(session.text(&session.find(selector).await).await);
    }
    texts.try_into().expect("three labels")
}

fn csv_fields(line: &str) -> Vec<String> {
    let (mut fields, mut field, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    fields.push(field);
    fields
}
