//! A node over the provider's own PostgreSQL, against a real server started for the test: the
//! same pre-noise cells as over the Parquet files of the same records, a read-only role, a clear
//! error for each way the database can be wrong, and the snapshot identity (unchanged data
//! replays, a changed row is a new release, a database gone fails the request with nothing spent).

use crate::support::postgres::PgCluster;
use crate::support::*;
use node::evaluate::Bounding;
use node::tables::DataError;
use policies::wire::EvaluateRequest;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const READER_PASSWORD: &str = "reader-secret-7f3a";

/// A node config over `P01`'s records in PostgreSQL schema `p01`, as the read-only role.
fn postgres_config(dir: &Path, name: &str, secret: &str, mapping: &str) -> PathBuf {
    let secret_file = dir.join(format!("{name}.pgconn"));
    std::fs::write(&secret_file, secret).expect("secret");
    let mut tables = String::new();
    for t in node::config::DEFAULT_TABLES {
        if !mapping.contains(&format!("[data.postgres.tables.{t}]")) {
            tables.push_str(&format!("[data.postgres.tables.{t}]\nfrom = \"p01.{t}\"\n"));
        }
    }
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        r#"node_id = "P01"
listen = "127.0.0.1:0"
catalog_dir = "{catalog}"
[data]
source = "postgres"
coverage = "2022Q1:2024Q4"
[data.postgres]
connection_file = "{secret_file}"
sslmode = "disable"
{mapping}
{tables}
[ledger]
path = "ledger-{name}.sqlite"
[audit]
path = "audit-{name}.jsonl"
[budget]
rho_per_period = 5.0
period = "year"
delta = 1e-6
[tls]
cert = "certs/P01/P01.crt"
key = "certs/P01/P01.key"
"#,
        catalog = catalog_dir().display(),
        secret_file = secret_file.display(),
    );
    std::fs::write(&path, text).expect("config");
    path
}

async fn open(config: &Path) -> Result<node::Node, node::NodeError> {
    let cfg = node::config::NodeConfig::load(config)?;
    node::Node::open(cfg).await
}

fn reader_secret(pg: &PgCluster, password: &str) -> String {
    format!(
        "host=127.0.0.1 port={} dbname=postgres user=stroom_reader password={password}",
        pg.port
    )
}

/// A fresh cluster, and `providers` synthetic providers in a folder with P01's records also in
/// schema `p01`, written by the real `stroom synth --postgres`.
fn cluster_with_records(providers: usize) -> (PgCluster, tempfile::TempDir) {
    let pg = PgCluster::start();
    let fixture = tempfile::tempdir().expect("tempdir");
    let out = run(&[
        "synth",
        "--out",
        fixture.path().to_str().unwrap(),
        "--providers",
        &providers.to_string(),
        "--postgres",
        &pg.superuser_url(),
    ]);
    assert!(out.status.success(), "synth: {}", text(&out));
    assert!(
        text(&out).contains("into PostgreSQL schema p01"),
        "{}",
        text(&out)
    );
    (pg, fixture)
}

#[tokio::test]
async fn a_node_reads_postgres_exactly_like_its_parquet_files() {
    let (pg, fixture) = cluster_with_records(2);
    let dir = fixture.path();
    // The runbook's read-only role: SELECT on the schema, read-only transactions by default.
    pg.execute(&format!(
        "CREATE ROLE stroom_reader LOGIN PASSWORD '{READER_PASSWORD}';
         ALTER ROLE stroom_reader SET default_transaction_read_only = on;
         GRANT USAGE ON SCHEMA p01 TO stroom_reader;
         GRANT SELECT ON ALL TABLES IN SCHEMA p01 TO stroom_reader;"
    ))
    .await;

    let over_pg = open(&postgres_config(
        dir,
        "pg",
        &reader_secret(&pg, READER_PASSWORD),
        "",
    ))
    .await
    .expect("a node over PostgreSQL");
    let over_files = open(&node_config(dir, "P01", 5.0, ""))
        .await
        .expect("a node over Parquet");

    // Every catalog indicator on youth records: the same pre-noise cells, exact and bounded.
    let pg_tables = over_pg.tables().await.expect("read");
    let file_tables = over_files.tables().await.expect("files");
    assert!(pg_tables.snapshot.starts_with("postgres:"));
    let rows = |t: &node::tables::Tables, name: &str| {
        t.report
            .iter()
            .find(|r| r.table == name)
            .map(|r| r.rows)
            .unwrap_or(0)
    };
    for table in ["youth", "stay", "restrictive_measure", "care_plan"] {
        assert!(rows(&file_tables, table) > 0, "{table} has rows");
        assert_eq!(
            rows(&pg_tables, table),
            rows(&file_tables, table),
            "{table}"
        );
    }
    let mut compared = 0;
    for ind in over_files.catalog.indicators.values() {
        let Some(query) = ind.query() else { continue };
        if query.privacy_unit == "respondent_pid" {
            continue;
        }
        // Two quarters, and a whole year for the annual figures.
        for quarter in ["2023Q4", "2024Q3", "2024Q1:2024Q4"] {
            let period = quarter.parse().expect("quarter");
            for bounding in [Bounding::Exact, Bounding::Bounded] {
                let a = node::evaluate::cells(&pg_tables, query, &period, bounding)
                    .await
                    .expect("cells over PostgreSQL");
                let b = node::evaluate::cells(&file_tables, query, &period, bounding)
                    .await
                    .expect("cells over Parquet");
                assert_eq!(a, b, "{} {quarter} {bounding:?}", ind.id);
            }
        }
        compared += 1;
    }
    assert!(compared >= 15, "only {compared} indicators compared");

    // The role cannot write, whatever the path: plain statements and the node's own connection.
    let reader_url = pg.url("stroom_reader", READER_PASSWORD);
    let (client, conn) = tokio_postgres::connect(&reader_url, tokio_postgres::NoTls)
        .await
        .expect("reader connects");
    let driver = tokio::spawn(conn);
    for write in [
        "INSERT INTO p01.unit SELECT * FROM p01.unit LIMIT 1",
        "UPDATE p01.youth SET youth_pid = youth_pid",
        "DELETE FROM p01.stay",
        "CREATE TABLE p01.sneaky (x int)",
        "BEGIN READ WRITE; INSERT INTO p01.unit SELECT * FROM p01.unit LIMIT 1; COMMIT",
    ] {
        let err = client.batch_execute(write).await.expect_err(write);
        let _ = client.batch_execute("ROLLBACK").await;
        let text = err
            .as_db_error()
            .map(|e| e.message().to_string())
            .unwrap_or_default();
        assert!(
            text.contains("permission denied") || text.contains("read-only"),
            "{write}: {text}"
        );
    }
    drop(client);
    let _ = driver.await;

    // Repeats replay while the data is unchanged; a changed row is a new release.
    let over_pg = Arc::new(over_pg);
    let request = EvaluateRequest {
        indicator: "care.unique_youths".into(),
        period: "2024Q3".parse().expect("quarter"),
        content_hash: None,
        catalog_version: None,
        secure: None,
    };
    let first = node::release::evaluate(&over_pg, &request)
        .await
        .expect("released");
    let again = node::release::evaluate(&over_pg, &request)
        .await
        .expect("replayed");
    assert!(!first.replayed && again.replayed);
    assert_eq!(first.bytes, again.bytes);
    let spent = over_pg.budget().expect("budget").rho_spent_total;
    // One row changed, in a table this indicator does not even read: still another release.
    pg.execute(
        "UPDATE p01.unit SET max_group_size = max_group_size + 1 \
         WHERE unit_id = (SELECT min(unit_id) FROM p01.unit)",
    )
    .await;
    let changed = node::release::evaluate(&over_pg, &request)
        .await
        .expect("a new release");
    assert!(!changed.replayed, "changed data must not replay");
    assert_ne!(
        policies::wire::Answer::decode(&changed.bytes)
            .unwrap()
            .meta
            .release_key,
        policies::wire::Answer::decode(&first.bytes)
            .unwrap()
            .meta
            .release_key
    );
    let spent_after_change = over_pg.budget().expect("budget").rho_spent_total;
    assert!(spent_after_change > spent);

    // The database gone: the request fails, saying so, and nothing is spent.
    pg.stop();
    let other = EvaluateRequest {
        period: "2024Q2".parse().expect("quarter"),
        ..request.clone()
    };
    let err = node::release::evaluate(&over_pg, &other)
        .await
        .err()
        .expect("fails without its database");
    assert_eq!(err.code(), "data_unavailable", "{err}");
    assert_eq!(
        over_pg.budget().expect("budget").rho_spent_total,
        spent_after_change
    );
}

#[tokio::test]
async fn each_way_the_database_can_be_wrong_has_its_own_error() {
    let (pg, fixture) = cluster_with_records(1);
    let dir = fixture.path();
    pg.execute(&format!(
        "CREATE ROLE stroom_reader LOGIN PASSWORD '{READER_PASSWORD}';
         GRANT USAGE ON SCHEMA p01 TO stroom_reader;
         CREATE VIEW p01.eenheden AS SELECT unit_id AS eenheid, unit_type AS soort_eenheid, \
             max_group_size, has_safe_room, 'extra' AS niet_gebruikt FROM p01.unit;
         CREATE VIEW p01.unit_wrong AS SELECT length(unit_id) AS unit_id, unit_type, \
             max_group_size, has_safe_room FROM p01.unit;
         GRANT SELECT ON ALL TABLES IN SCHEMA p01 TO stroom_reader;"
    ))
    .await;

    let good = reader_secret(&pg, READER_PASSWORD);
    // A wrong password: authentication, and the password itself appears nowhere.
    let err = open(&postgres_config(
        dir,
        "a",
        &reader_secret(&pg, "not-it"),
        "",
    ))
    .await
    .err()
    .expect("refused");
    let message = err.to_string();
    assert!(
        matches!(err, node::NodeError::Data(DataError::Authentication { .. })),
        "{message}"
    );
    assert!(!message.contains("not-it") && !message.contains(READER_PASSWORD));

    // Nothing listening.
    let closed = format!(
        "host=127.0.0.1 port={} dbname=postgres user=stroom_reader password={READER_PASSWORD}",
        {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        }
    );
    let err = open(&postgres_config(dir, "b", &closed, ""))
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(err, node::NodeError::Data(DataError::Unreachable { .. })),
        "{err}"
    );
    assert!(!err.to_string().contains(READER_PASSWORD));

    // A table the database does not have.
    let err = open(&postgres_config(
        dir,
        "c",
        &good,
        "[data.postgres.tables.unit]\nfrom = \"p01.no_such_table\"\n",
    ))
    .await
    .err()
    .expect("refused");
    assert!(
        matches!(&err, node::NodeError::Data(DataError::MissingSourceTable { table, relation }) if table == "unit" && relation == "p01.no_such_table"),
        "{err}"
    );

    // A column mapped to one the table does not have.
    let err = open(&postgres_config(
        dir,
        "d",
        &good,
        "[data.postgres.tables.unit]\nfrom = \"p01.unit\"\ncolumns = { unit_type = \"soort\" }\n",
    ))
    .await
    .err()
    .expect("refused");
    assert!(
        matches!(&err, node::NodeError::Data(DataError::MissingColumn { table, column, .. }) if table == "unit" && column.contains("soort")),
        "{err}"
    );

    // A column of the wrong type, named with table, column, expected and found type.
    let err = open(&postgres_config(
        dir,
        "e",
        &good,
        "[data.postgres.tables.unit]\nfrom = \"p01.unit_wrong\"\n",
    ))
    .await
    .err()
    .expect("refused");
    assert!(
        matches!(&err, node::NodeError::Data(DataError::WrongType { table, column, expected, .. }) if table == "unit" && column == "unit_id" && expected == "Utf8"),
        "{err}"
    );
    assert!(err.to_string().contains("Int32"), "{err}");

    // Renamed columns are mapped: the provider's names differ, the node's tables do not.
    let renamed = open(&postgres_config(
        dir,
        "f",
        &good,
        "[data.postgres.tables.unit]\nfrom = \"p01.eenheden\"\ncolumns = { unit_id = \"eenheid\", unit_type = \"soort_eenheid\" }\n",
    ))
    .await
    .expect("a node over renamed columns");
    let tables = renamed.tables().await.expect("read");
    let units = tables
        .report
        .iter()
        .find(|r| r.table == "unit")
        .expect("unit");
    assert!(units.rows > 0);
}

/// `stroom demo --postgres URL` runs its first provider over the database and the others over
/// Parquet; its exact national values (truth.json) equal those of the same demo over Parquet only,
/// and `stroom node check` validates the PostgreSQL node's configuration as a real process.
#[test]
fn the_demo_runs_a_provider_over_postgres_with_the_same_truth() {
    let pg = PgCluster::start();
    let work = tempfile::tempdir().expect("tempdir");
    let (over_pg, over_files) = (work.path().join("pg"), work.path().join("files"));
    let demo = |out: &Path, extra: &[&str]| {
        let mut args = vec!["demo", "--out", out.to_str().unwrap(), "--providers", "3"];
        args.extend_from_slice(extra);
        let o = run(&args);
        assert!(o.status.success(), "demo {extra:?}: {}", text(&o));
        o
    };
    let url = pg.superuser_url();
    let o = demo(&over_pg, &["--postgres", &url]);
    assert!(text(&o).contains("P01 reads PostgreSQL"), "{}", text(&o));
    demo(&over_files, &[]);
    let truth = |d: &Path| std::fs::read(d.join("truth.json")).expect("truth.json");
    assert_eq!(truth(&over_pg), truth(&over_files), "truth.json differs");
    let config = over_pg.join("nodes/P01.toml");
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains("source = \"postgres\"")
    );
    // The secret is the owner's only, and appears in no log.
    let secret = over_pg.join("nodes/P01.pgconn");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let log = std::fs::read_to_string(over_pg.join("logs/stroom.log")).unwrap_or_default();
    assert!(!log.contains(crate::support::postgres::SUPERUSER_PASSWORD));

    let check = run(&["node", "check", "--config", config.to_str().unwrap()]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        text(&check).contains("data snapshot postgres:"),
        "{}",
        text(&check)
    );
    assert!(
        text(&check).contains("postgres:p01.restrictive_measure"),
        "{}",
        text(&check)
    );
}

/// TLS to the database: with `sslmode = "verify-full"` the server's certificate must chain to
/// `sslrootcert` and name the host; a certificate from another CA is refused.
#[tokio::test]
async fn the_database_is_reached_over_verified_tls() {
    let work = tempfile::tempdir().expect("tempdir");
    let certs = |name: &str| {
        let dir = work.path().join(name);
        let o = run(&["certs", "--out", dir.to_str().unwrap(), "--nodes", "db"]);
        assert!(o.status.success(), "certs: {}", text(&o));
        dir
    };
    // `stroom certs` leaves name localhost and 127.0.0.1: good enough for a database server.
    let (ours, theirs) = (certs("ours"), certs("theirs"));
    let pg = PgCluster::start_with_tls(&ours.join("db/db.crt"), &ours.join("db/db.key"));
    pg.execute(&format!(
        "CREATE ROLE stroom_reader LOGIN PASSWORD '{READER_PASSWORD}';
         CREATE SCHEMA p01;
         GRANT USAGE ON SCHEMA p01 TO stroom_reader;"
    ))
    .await;
    let out = run(&[
        "synth",
        "--out",
        work.path().join("records").to_str().unwrap(),
        "--providers",
        "1",
        "--postgres",
        &pg.superuser_url(),
    ]);
    assert!(out.status.success(), "synth: {}", text(&out));
    pg.execute("GRANT SELECT ON ALL TABLES IN SCHEMA p01 TO stroom_reader;")
        .await;

    let verified = |name: &str, ca: &Path| {
        let cfg = postgres_config(work.path(), name, &reader_secret(&pg, READER_PASSWORD), "");
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "sslmode = \"disable\"",
            &format!(
                "sslmode = \"verify-full\"\nsslrootcert = \"{}\"",
                ca.display()
            ),
        );
        std::fs::write(&cfg, text).unwrap();
        cfg
    };
    let node = open(&verified("tls-good", &ours.join("ca/ca.crt")))
        .await
        .expect("a node over verified TLS");
    let tables = node.tables().await.expect("read over TLS");
    assert!(
        tables
            .report
            .iter()
            .any(|r| r.table == "stay" && r.rows > 0)
    );

    let err = open(&verified("tls-bad", &theirs.join("ca/ca.crt")))
        .await
        .err()
        .expect("another CA is refused");
    assert!(
        matches!(err, node::NodeError::Data(DataError::Database { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("certificate"), "{err}");
}
