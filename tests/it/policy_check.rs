//! `stroom policy check`: the shipped catalog passes; every kind of bad indicator is reported with
//! its file and field, all at once, and the command exits non-zero.

use crate::support::*;

const VALID: &str = r#"id = "ok.one"
theme = "zorg"
title = { nl = "t", en = "t" }
definition = { nl = "d", en = "d" }
privacy_unit = "youth_pid"
sql = "SELECT youth_pid, 'x' AS quarter FROM youth"
group_by = { quarter = "period" }
aggregate = { kind = "count_units", max_groups_per_unit = 1 }
cost = { rho = 0.1 }
"#;

fn check_dir(files: &[(&str, String)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let out = run(&["policy", "check", dir.path().to_str().unwrap()]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

fn variant(id: &str, from: &str, to: &str) -> String {
    VALID.replace("ok.one", id).replace(from, to)
}

#[test]
fn the_shipped_catalog_passes() {
    let out = run(&["policy", "check", catalog_dir().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("indicators OK"), "{text}");
}

#[test]
fn every_problem_is_reported_with_file_and_field() {
    let files = vec![
        ("ok.one.toml", VALID.to_string()),
        (
            "bad.toml_syntax.toml",
            "id = \"x\"\ntitle = { nl = \"t\" \n".to_string(),
        ),
        (
            "bad.kind.toml",
            variant("bad.kind", "count_units", "median_of_everything"),
        ),
        (
            "bad.unit.toml",
            variant("bad.unit", "SELECT youth_pid, 'x'", "SELECT sex, 'x'"),
        ),
        (
            "bad.notquery.toml",
            variant(
                "bad.notquery",
                "SELECT youth_pid, 'x' AS quarter FROM youth",
                "DELETE FROM youth",
            ),
        ),
        (
            "bad.extra.toml",
            variant("bad.extra", "'x' AS quarter", "'x' AS quarter, birth_month"),
        ),
        (
            "bad.cost.toml",
            variant("bad.cost", "rho = 0.1", "rho = -1"),
        ),
        (
            "bad.domain.toml",
            variant("bad.domain", "\"period\"", "\"codes:youth.nothing\""),
        ),
        (
            "bad.table.toml",
            variant("bad.table", "FROM youth", "FROM secrets"),
        ),
        (
            "bad.stability.toml",
            variant(
                "bad.stability",
                "FROM youth",
                "FROM youth WHERE EXISTS (SELECT 1 FROM incident WHERE type = 'suicidepoging')",
            ),
        ),
    ];
    let (ok, out) = check_dir(&files);
    assert!(!ok, "{out}");
    let expect = [
        ("bad.toml_syntax.toml", "(toml)", "malformed TOML"),
        (
            "bad.kind.toml",
            "aggregate.kind",
            "unknown aggregate kind 'median_of_everything'",
        ),
        (
            "bad.unit.toml",
            "sql",
            "does not yield the privacy-unit column 'youth_pid'",
        ),
        ("bad.notquery.toml", "sql", "must be a query"),
        ("bad.extra.toml", "sql", "column 'birth_month'"),
        ("bad.cost.toml", "cost.rho", "must be positive"),
        ("bad.domain.toml", "group_by.quarter", "not a coded column"),
        ("bad.table.toml", "sql", "secrets"),
        (
            "bad.stability.toml",
            "sql",
            "does not keep each unit's rows apart: EXISTS subquery over data-model rows is not correlated on the unit",
        ),
    ];
    for (file, field, message) in expect {
        let line = out
            .lines()
            .find(|l| l.contains(file))
            .unwrap_or_else(|| panic!("no problem reported for {file}:\n{out}"));
        assert!(line.contains(&format!(": {field}: ")), "{line}");
        assert!(line.contains(message), "{line}");
    }
    assert!(!out.lines().any(|l| l.contains("ok.one.toml")), "{out}");
    assert!(out.contains("9 problem(s)"), "{out}");
}

#[test]
fn derived_indicators_must_reference_existing_queries() {
    let derived = r#"id = "ratio.bad"
theme = "zorg"
title = { nl = "t", en = "t" }
definition = { nl = "d", en = "d" }
derived = { kind = "ratio", numerator = "ok.one", denominator = "not.there" }
"#;
    let (ok, out) = check_dir(&[
        ("ok.one.toml", VALID.into()),
        ("ratio.bad.toml", derived.into()),
    ]);
    assert!(!ok);
    assert!(
        out.contains("ratio.bad.toml: derived.denominator: 'not.there'"),
        "{out}"
    );
}

#[test]
fn an_empty_or_missing_folder_is_an_error() {
    let (ok, out) = check_dir(&[]);
    assert!(!ok, "{out}");
    let out = run(&["policy", "check", "/nonexistent/catalog"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/catalog"));
}

/// `stroom policy check | head -1`: the reader goes away; the command ends as `cat` would (by
/// SIGPIPE), not with a panic in `println!` (exit 101 and a backtrace on stderr).
#[test]
fn a_closed_output_pipe_ends_the_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader); // closed before the command writes: every write fails, deterministically
    let out = stroom()
        .args(["policy", "check", catalog_dir().to_str().unwrap()])
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
}

/// `stroom policy check` reports the refusals of "nothing about the records before the spend" as
/// the node does: SQL that can fail on some value, and picks that depend on row order, each with
/// its reason and its place in the SQL.
#[test]
fn partial_and_order_dependent_sql_is_reported_with_reason_and_place() {
    let sql = |id: &str, select: &str| {
        variant(
            id,
            "SELECT youth_pid, 'x' AS quarter FROM youth",
            &format!("SELECT {select} FROM education e"),
        )
    };
    let files = vec![
        (
            "bad.division.toml",
            sql(
                "bad.division",
                "e.youth_pid, CAST(e.attended_hours / e.planned_hours AS VARCHAR) AS quarter",
            ),
        ),
        (
            "bad.cast.toml",
            sql(
                "bad.cast",
                "e.youth_pid, CAST(CAST(e.stay_id AS BIGINT) AS VARCHAR) AS quarter",
            ),
        ),
        (
            "bad.order.toml",
            sql(
                "bad.order",
                "e.youth_pid, CAST(row_number() OVER (PARTITION BY e.youth_pid ORDER BY e.month) AS VARCHAR) AS quarter",
            ),
        ),
        (
            "ok.total.toml",
            sql(
                "ok.total",
                "e.youth_pid, CAST(CAST(e.attended_hours AS DOUBLE) / NULLIF(e.planned_hours, 0) AS VARCHAR) AS quarter",
            ),
        ),
    ];
    let (ok, text) = check_dir(&files);
    assert!(!ok, "{text}");
    for (file, expected) in [
        ("bad.division", "e.attended_hours / e.planned_hours"),
        ("bad.division", "NULLIF"),
        ("bad.cast", "TRY_CAST"),
        ("bad.order", "row_number"),
        ("bad.order", "e.stay_id"),
    ] {
        let line = text
            .lines()
            .find(|l| l.contains(file))
            .unwrap_or_else(|| panic!("{file} not reported:\n{text}"));
        assert!(line.contains(expected), "{file}: no '{expected}' in {line}");
        assert!(line.contains("(in "), "{file}: no place in {line}");
    }
    assert!(!text.contains("ok.total"), "{text}");
    assert!(text.contains("3 problem(s)"), "{text}");
}
