//! The rule of the round, tested as an adversarial coordinator would test it: before a release is
//! charged, everything a node says depends on the request, its configuration and the catalog,
//! never on its records. Two real node processes serve neighbouring datasets — D, and D′ = D plus
//! one youth with many records — and get the same sweep of requests (per-node and secure, entry
//! widths from 2 to 64 bits, several n and t, every catalog indicator, periods inside and outside
//! the data, unknown indicators). Every refusal and error must be byte-identical on both, headers
//! included (but the request id), and no message may carry a number that is not in the request,
//! the configuration or the catalog.

use crate::support::*;
use datafusion::arrow::array::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::StreamExt;
use std::collections::BTreeSet;
use std::path::Path;

/// The added youth's id.
const NEIGHBOUR: &str = "Y-NEIGHBOUR";
/// Budget large enough that no request of the sweep is refused for budget (that refusal depends
/// on earlier requests, which both nodes get alike, but its numbers are not in the config).
const BUDGET: f64 = 1.0e6;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn quote(name: &str) -> String {
    format!("\"{name}\"")
}

/// D′: every record of the youth with the most restrictive measures, copied under a new youth
/// id (record ids suffixed so they stay unique), in every table that describes youths.
async fn add_busiest_youth_again(data: &Path) -> String {
    let ctx = SessionContext::new();
    let path = |t: &str| data.join(format!("{t}.parquet"));
    ctx.register_parquet(
        "restrictive_measure",
        path("restrictive_measure").to_str().expect("utf8"),
        ParquetReadOptions::default(),
    )
    .await
    .expect("register");
    let busiest = ctx
        .sql(
            "SELECT youth_pid, count(*) AS n FROM restrictive_measure \
             GROUP BY youth_pid ORDER BY n DESC, youth_pid LIMIT 1",
        )
        .await
        .expect("sql")
        .collect()
        .await
        .expect("collect");
    let youth = datafusion::arrow::util::display::array_value_to_string(busiest[0].column(0), 0)
        .expect("youth id");
    for def in policies::cdm::tables() {
        let file = path(def.name);
        if def.column(policies::cdm::UNIT_COLUMN).is_none() || !file.exists() {
            continue;
        }
        let name = format!("src_{}", def.name);
        ctx.register_parquet(
            &name,
            file.to_str().expect("utf8"),
            ParquetReadOptions::default(),
        )
        .await
        .expect("register");
        let copied: Vec<String> = def
            .columns
            .iter()
            .map(|c| {
                let id = quote(c.name);
                if c.name == policies::cdm::UNIT_COLUMN {
                    format!("'{NEIGHBOUR}' AS {id}")
                } else if c.name.ends_with("_id") && !c.name.ends_with("unit_id") {
                    format!("concat({id}, '-n') AS {id}")
                } else {
                    id
                }
            })
            .collect();
        let sql = format!(
            "SELECT * FROM {name} UNION ALL SELECT {} FROM {name} WHERE youth_pid = '{youth}'",
            copied.join(", ")
        );
        let batches: Vec<RecordBatch> = ctx
            .sql(&sql)
            .await
            .expect("sql")
            .collect()
            .await
            .expect("collect");
        write_table(data, def.name, batches);
    }
    youth
}

/// `batch` with the data model's column types (DataFusion reads Parquet strings as views).
fn conform(batch: &RecordBatch, schema: &datafusion::arrow::datatypes::SchemaRef) -> RecordBatch {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| datafusion::arrow::compute::cast(c, f.data_type()).expect("cast"))
        .collect();
    RecordBatch::try_new(schema.clone(), columns).expect("batch")
}

/// Every number written in `text` (digits with an optional fraction), leaving out long hex
/// tokens (content hashes, which the catalog publishes).
fn numbers(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for token in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.')) {
        if token.len() >= 16 && token.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        let mut current = String::new();
        let chars: Vec<char> = token.chars().collect();
        for (i, c) in chars.iter().enumerate() {
            let continues = c.is_ascii_digit()
                || (*c == '.'
                    && !current.is_empty()
                    && chars.get(i + 1).is_some_and(|n| n.is_ascii_digit()));
            if continues {
                current.push(*c);
            } else if !current.is_empty() {
                out.insert(std::mem::take(&mut current));
            }
        }
        if !current.is_empty() {
            out.insert(current);
        }
    }
    out
}

/// The requests of the sweep.
fn sweep(indicators: &[String]) -> Vec<serde_json::Value> {
    use serde_json::json;
    let secure = |n: u32, t: u32, bits: u32| json!({ "nodes": n, "max_missing": t, "bits": bits });
    let mut out = Vec::new();
    let periods = ["2024Q1", "2024Q1:2024Q4", "2019Q1", "2023Q3:2024Q2"];
    for id in indicators {
        for period in periods {
            out.push(json!({ "indicator": id, "period": period }));
            for bits in [2, 12, 24, 64] {
                out.push(
                    json!({ "indicator": id, "period": period, "secure": secure(12, 1, bits) }),
                );
            }
        }
    }
    // The width sweep that used to find each cell's size, on a count, a sum and a histogram.
    for id in [
        "seclusion.count",
        "care.youth_days",
        "seclusion.duration_histogram",
    ] {
        for bits in 2..=64 {
            out.push(json!({ "indicator": id, "period": "2024Q2", "secure": secure(12, 1, bits) }));
        }
    }
    for (n, t) in [
        (3, 2),
        (3, 1),
        (2, 1),
        (40, 39),
        (0, 0),
        (5, 5),
        (1000, 2),
        (7, 0),
        (12, 10),
        (10_001, 2),
        (u32::MAX, 1),
    ] {
        for bits in [2, 20, 40, 65] {
            out.push(json!({ "indicator": "seclusion.count", "period": "2023Q1", "secure": secure(n, t, bits) }));
        }
    }
    for id in ["no.such.indicator", "", "seclusion"] {
        out.push(json!({ "indicator": id, "period": "2024Q1" }));
    }
    out.push(json!({ "indicator": "seclusion.count", "period": "2024Q5" }));
    out.push(json!({ "indicator": "seclusion.count", "period": "2024Q1", "content_hash": "00" }));
    out
}

/// What a response says that the rule covers: status, headers but the request id and the date,
/// and the body of anything but an answer (answers carry noise and differ by design).
#[derive(Debug, PartialEq)]
struct Said {
    status: u16,
    headers: Vec<(String, String)>,
    body: Option<String>,
}

async fn ask(c: &reqwest::Client, url: &str, request: &serde_json::Value) -> Said {
    let r = c
        .post(format!("{url}/v1/evaluate"))
        .json(request)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let mut headers: Vec<(String, String)> = r
        .headers()
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "x-request-id" | "date" | "content-length"))
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
        .collect();
    headers.sort();
    let bytes = r.bytes().await.expect("body");
    let body = (status != 200).then(|| String::from_utf8_lossy(&bytes).into_owned());
    Said {
        status,
        headers,
        body,
    }
}

fn secure_node(dir: &Path) -> ServerProcess {
    let extra = "[secure]\nhelper_key = \"certs/helper/helper.hpke.pub\"\nsigning_key = \"certs/P01/P01.sign.key\"\n";
    ServerProcess::start(&node_config(dir, "P01", BUDGET, extra))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn neighbouring_datasets_get_identical_refusals_before_the_spend() {
    let d = secure_federation_fixture(1);
    let d_prime = tempfile::tempdir().expect("tempdir");
    copy_dir(&d.path().join("certs"), &d_prime.path().join("certs"));
    copy_dir(&d.path().join("P01"), &d_prime.path().join("P01"));
    let youth = add_busiest_youth_again(&d_prime.path().join("P01")).await;
    assert_ne!(youth, NEIGHBOUR);

    let node_d = secure_node(d.path());
    let node_d_prime = secure_node(d_prime.path());
    let c = client(d.path());

    let catalog = policies::Catalog::load(&catalog_dir())
        .await
        .expect("catalog");
    let indicators: Vec<String> = catalog.indicators.keys().cloned().collect();
    let requests = sweep(&indicators);

    // Public text every number in a message must come from.
    let config = std::fs::read_to_string(d.path().join("P01.toml")).expect("config");
    let mut public = String::new();
    for entry in std::fs::read_dir(catalog_dir()).expect("catalog dir") {
        public.push_str(&std::fs::read_to_string(entry.expect("entry").path()).unwrap_or_default());
    }
    let mut allowed = numbers(&public);
    allowed.extend(numbers(&config));
    let units = policies::wire::DEFAULT_MAX_UNITS;
    allowed.insert(units.to_string());
    for n in numbers(&public) {
        if let Ok(k) = n.parse::<u64>() {
            allowed.insert((k * units).to_string());
        }
    }
    allowed.extend((0..=64).map(|b| b.to_string()));
    // The floors' defaults (configuration the node was not given explicitly) and the largest n.
    allowed.insert(format!("{:.3}", secagg::floors::DEFAULT_MAX_MISSING_SHARE));
    allowed.insert(secagg::floors::MAX_RUN_NODES.to_string());
    // The fixed example in the period parser's message (and JSON positions, within 0..=64).
    allowed.extend(numbers("e.g. 2023Q1:2024Q4"));

    let asked = futures::stream::iter(requests.iter().enumerate())
        .map(|(i, r)| {
            let (c, a, b) = (c.clone(), node_d.url.clone(), node_d_prime.url.clone());
            async move {
                let (x, y) = tokio::join!(ask(&c, &a, r), ask(&c, &b, r));
                (i, x, y)
            }
        })
        .buffer_unordered(6)
        .collect::<Vec<_>>()
        .await;

    let mut codes = BTreeSet::new();
    let mut answered = 0;
    for (i, on_d, on_d_prime) in asked {
        let request = &requests[i];
        assert_eq!(
            on_d, on_d_prime,
            "the node said something else about D and D′ before the spend, for {request}"
        );
        let Some(body) = &on_d.body else {
            answered += 1;
            continue;
        };
        let error: serde_json::Value = serde_json::from_str(body).expect("an error body");
        codes.insert(error["error"].as_str().unwrap_or("?").to_string());
        let mut from_request = allowed.clone();
        from_request.extend(numbers(&request.to_string()));
        let message = error["message"].as_str().unwrap_or_default();
        for n in numbers(message) {
            assert!(
                from_request.contains(&n),
                "'{message}' (for {request}) states {n}, which is not in the request, the configuration or the catalog"
            );
        }
    }
    // The sweep met every kind of refusal and real answers too: not a vacuous comparison.
    for code in [
        "unknown_indicator",
        "derived_indicator",
        "period_outside_data",
        "report_too_wide",
        "too_few_honest_nodes",
        "too_many_missing",
        "invalid_request",
        "content_hash_mismatch",
    ] {
        assert!(codes.contains(code), "no '{code}' in the sweep: {codes:?}");
    }
    assert!(answered > 100, "only {answered} answers");

    // The two nodes really hold neighbouring datasets: D′ has the added youth's records.
    let rows = |dir: &Path| {
        let file = std::fs::File::open(dir.join("P01/restrictive_measure.parquet")).expect("file");
        datafusion::parquet::file::reader::SerializedFileReader::new(file)
            .map(|r| {
                use datafusion::parquet::file::reader::FileReader;
                r.metadata().file_metadata().num_rows()
            })
            .expect("parquet")
    };
    let added = rows(d_prime.path()) - rows(d.path());
    assert!(added >= 2, "the added youth has only {added} measure(s)");
}

/// Rewrites one data-model table of `data` through `sql` over `src` (the table as it was).
async fn rewrite(data: &Path, table: &str, sql: &str) {
    let file = data.join(format!("{table}.parquet"));
    let ctx = SessionContext::new();
    ctx.register_parquet(
        "src",
        file.to_str().expect("utf8"),
        ParquetReadOptions::default(),
    )
    .await
    .expect("register");
    let batches = ctx
        .sql(sql)
        .await
        .expect("sql")
        .collect()
        .await
        .expect("collect");
    write_table(data, table, batches);
}

/// Replaces `data/TABLE.parquet` with `batches`, in the data model's column types.
fn write_table(data: &Path, table: &str, batches: Vec<RecordBatch>) {
    let schema = policies::cdm::table(table).expect("table").schema();
    let tmp = data.join(format!("{table}.parquet.new"));
    let mut writer = ArrowWriter::try_new(
        std::fs::File::create(&tmp).expect("create"),
        schema.clone(),
        None,
    )
    .expect("writer");
    for b in batches {
        writer.write(&conform(&b, &schema)).expect("write");
    }
    writer.close().expect("close");
    std::fs::rename(&tmp, data.join(format!("{table}.parquet"))).expect("rename");
}

async fn answer_meta(c: &reqwest::Client, url: &str) -> (policies::wire::AnswerMeta, bool) {
    let r = evaluate(c, url, "seclusion.count", "2024Q1").await;
    assert_eq!(r.status(), 200);
    let replayed = r.headers()["x-stroom-replayed"] == "true";
    let bytes = r.bytes().await.expect("bytes");
    (
        policies::wire::Answer::decode(&bytes).expect("answer").meta,
        replayed,
    )
}

#[tokio::test]
async fn no_record_digest_leaves_the_node_yet_equal_data_replays_and_a_changed_row_does_not() {
    let dir = federation_fixture(1);
    let cfg_path = node_config(dir.path(), "P01", 5.0, "");
    let c = client(dir.path());

    // The plain digest of the records, computed here as anyone holding a copy of them could.
    let cfg = node::config::NodeConfig::load(&cfg_path).expect("config");
    let plain = node::tables::Tables::open(&cfg.data.dir, &cfg.data.tables)
        .await
        .expect("tables")
        .snapshot;
    let catalog = policies::Catalog::load(&catalog_dir())
        .await
        .expect("catalog");
    let ind = catalog.get("seclusion.count").expect("indicator");
    let period: policies::Period = "2024Q1".parse().expect("period");
    let plain_key = node::release::release_key(ind, &period, &plain, None);

    let mut node = NodeProcess::start(&cfg_path);
    let (first, replayed) = answer_meta(&c, &node.url).await;
    assert!(!replayed);
    assert!(
        first.snapshot.starts_with("hmac-sha256:"),
        "{}",
        first.snapshot
    );
    assert!(
        !first.snapshot.contains(&plain),
        "the plain digest left the node"
    );
    assert_ne!(
        first.release_key, plain_key,
        "the release key is the plain one"
    );

    // Equal data, after a restart: the same identity, the stored answer.
    node.kill();
    let mut node = NodeProcess::start(&cfg_path);
    let (again, replayed) = answer_meta(&c, &node.url).await;
    assert!(replayed, "equal data must replay");
    assert_eq!(again.snapshot, first.snapshot);

    // One changed row in one table: a new identity, a new release.
    node.kill();
    let def = policies::cdm::table("unit").expect("unit table");
    let columns: Vec<String> = def
        .columns
        .iter()
        .map(|c| match c.name {
            "max_group_size" => "CASE WHEN unit_id = (SELECT min(unit_id) FROM src) \
                                 THEN max_group_size + 1 ELSE max_group_size END AS max_group_size"
                .to_string(),
            other => format!("\"{other}\""),
        })
        .collect();
    rewrite(
        &dir.path().join("P01"),
        "unit",
        &format!("SELECT {} FROM src", columns.join(", ")),
    )
    .await;
    let node = NodeProcess::start(&cfg_path);
    let (changed, replayed) = answer_meta(&c, &node.url).await;
    assert!(!replayed, "changed data must not replay");
    assert_ne!(changed.snapshot, first.snapshot);
    assert_ne!(changed.release_key, first.release_key);
}

/// A failure after the charge (which the totality check leaves to resource exhaustion) reaches
/// the caller without its detail; the operator finds it in the node's audit log. The spend stays
/// recorded, and a repeat fails the same way without spending again.
#[tokio::test]
async fn a_failure_after_the_charge_names_no_value() {
    let dir = federation_fixture(1);
    let detail = "Arrow error: Divide by zero error at row 4711 (youth Y0042)";
    let cfg = node_config(
        dir.path(),
        "P01",
        5.0,
        &format!("[testing]\nfail_evaluation_with = \"{detail}\"\n"),
    );
    let node = NodeProcess::start(&cfg);
    let c = client(dir.path());
    for attempt in 0..2 {
        let r = evaluate(&c, &node.url, "seclusion.count", "2024Q1").await;
        assert_eq!(r.status(), 500);
        let body: serde_json::Value = r.json().await.expect("json");
        assert_eq!(body["error"], "evaluation_failed");
        let message = body["message"].as_str().expect("message");
        assert!(
            !message.contains("4711") && !message.contains("Y0042") && !message.contains("zero"),
            "the detail reached the caller: {message}"
        );
        assert!(message.contains("log and audit"), "{message}");
        let b = budget(&c, &node.url).await;
        assert!(
            (b["rho_spent"].as_f64().expect("spent") - 0.15).abs() < 1e-9,
            "attempt {attempt}: charged once: {b}"
        );
    }
    let audit = std::fs::read_to_string(dir.path().join("audit-P01.jsonl")).expect("audit");
    assert!(
        audit.contains("4711"),
        "the operator's audit keeps the detail"
    );
}
