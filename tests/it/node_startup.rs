//! A node refuses to start on data or configuration that does not match, and says exactly where.

use crate::support::*;
use datafusion::arrow::array::{ArrayRef, Date32Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use std::sync::Arc;

fn write_parquet(path: &std::path::Path, fields: Vec<(&str, DataType)>, cols: Vec<ArrayRef>) {
    let schema = Arc::new(Schema::new(
        fields
            .into_iter()
            .map(|(n, t)| Field::new(n, t, true))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(schema.clone(), cols).unwrap();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn check(config: &std::path::Path) -> (bool, String) {
    let out = run(&["node", "check", "--config", config.to_str().unwrap()]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `node check` on a fresh provider whose youth table is replaced by the given columns.
fn check_with_youth(fields: Vec<(&str, DataType)>, cols: Vec<ArrayRef>) -> (bool, String) {
    let dir = federation_fixture(1);
    let cfg = node_config(dir.path(), "P01", 5.0, "");
    write_parquet(&dir.path().join("P01/youth.parquet"), fields, cols);
    check(&cfg)
}

#[test]
fn node_check_prints_row_counts_for_valid_data() {
    let dir = federation_fixture(1);
    let cfg = node_config(dir.path(), "P01", 5.0, "");
    let (ok, out) = check(&cfg);
    assert!(ok, "{out}");
    assert!(
        out.contains("restrictive_measure") && out.contains("rows"),
        "{out}"
    );
    assert!(
        out.contains("panel_response") && out.contains("not served"),
        "{out}"
    );
}

#[test]
fn wrong_column_type_is_named_with_expected_and_found() {
    let (ok, out) = check_with_youth(
        vec![
            ("youth_pid", DataType::Utf8),
            ("birth_month", DataType::Utf8),
            ("sex", DataType::Utf8),
            ("jeugdregio", DataType::Utf8),
        ],
        vec![
            Arc::new(StringArray::from(vec!["a"])),
            Arc::new(StringArray::from(vec!["2010-01"])),
            Arc::new(StringArray::from(vec!["M"])),
            Arc::new(StringArray::from(vec!["JZ01"])),
        ],
    );
    assert!(!ok);
    assert!(
        out.contains("table 'youth'") && out.contains("column 'birth_month'"),
        "{out}"
    );
    assert!(
        out.contains("expected Date32") && out.contains("has type Utf8"),
        "{out}"
    );
}

#[test]
fn missing_column_is_named() {
    let (ok, out) = check_with_youth(
        vec![
            ("youth_pid", DataType::Utf8),
            ("birth_month", DataType::Date32),
            ("sex", DataType::Utf8),
        ],
        vec![
            Arc::new(StringArray::from(vec!["a"])),
            Arc::new(Date32Array::from(vec![14000])),
            Arc::new(StringArray::from(vec!["M"])),
        ],
    );
    assert!(!ok);
    assert!(
        out.contains("table 'youth'") && out.contains("column 'jeugdregio' is missing"),
        "{out}"
    );
}

#[test]
fn values_outside_a_code_list_are_refused() {
    let (ok, out) = check_with_youth(
        vec![
            ("youth_pid", DataType::Utf8),
            ("birth_month", DataType::Date32),
            ("sex", DataType::Utf8),
            ("jeugdregio", DataType::Utf8),
        ],
        vec![
            Arc::new(StringArray::from(vec!["a", "b"])),
            Arc::new(Date32Array::from(vec![14000, 14001])),
            Arc::new(StringArray::from(vec!["M", "boy"])),
            Arc::new(StringArray::from(vec!["JZ01", "JZ02"])),
        ],
    );
    assert!(!ok);
    assert!(
        out.contains("column 'sex'") && out.contains("'boy'"),
        "{out}"
    );
}

#[test]
fn a_missing_table_is_named() {
    let dir = federation_fixture(1);
    let cfg = node_config(dir.path(), "P01", 5.0, "");
    std::fs::remove_file(dir.path().join("P01/incident.parquet")).unwrap();
    let (ok, out) = check(&cfg);
    assert!(!ok);
    assert!(
        out.contains("table 'incident'") && out.contains("incident.parquet"),
        "{out}"
    );
}

#[test]
fn config_errors_name_the_file_and_key_and_env_overrides_apply() {
    let dir = federation_fixture(1);
    let cfg = node_config(dir.path(), "P01", -1.0, "");
    let (ok, out) = check(&cfg);
    assert!(!ok);
    assert!(
        out.contains("P01.toml") && out.contains("budget.rho_per_period"),
        "{out}"
    );

    let out = stroom()
        .args(["node", "check", "--config", cfg.to_str().unwrap()])
        .env("STROOM_BUDGET__RHO_PER_PERIOD", "2.5")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ρ 2.5000 per data year"), "{text}");

    let bad = dir.path().join("bad.toml");
    let valid = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &bad,
        valid.replace("rho_per_period = -1", "rho_per_period = \"lots\""),
    )
    .unwrap();
    let (ok, out) = check(&bad);
    assert!(!ok);
    assert!(
        out.contains("bad.toml") && out.contains("rho_per_period"),
        "{out}"
    );

    let (ok, out) = check(&dir.path().join("absent.toml"));
    assert!(!ok);
    assert!(
        out.contains("absent.toml") && out.contains("no such file"),
        "{out}"
    );
}

/// A node enforces the stability check itself: an indicator in its own catalog whose SQL labels
/// rows with something other than the youth's id stops it, whoever approved the indicator.
#[test]
fn an_indicator_whose_rows_are_not_one_youths_stops_the_node() {
    let dir = federation_fixture(1);
    let catalog = dir.path().join("catalog");
    std::fs::create_dir_all(&catalog).unwrap();
    for entry in std::fs::read_dir(catalog_dir()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, catalog.join(path.file_name().unwrap())).unwrap();
    }
    let unstable = std::fs::read_to_string(catalog_dir().join("measures.count.toml"))
        .unwrap()
        .replace(
            "id = \"measures.count\"",
            "id = \"measures.count_per_measure\"",
        )
        .replace(
            "SELECT m.youth_pid, q.quarter",
            "SELECT CAST(m.measure_id AS VARCHAR) AS youth_pid, q.quarter",
        );
    assert!(
        unstable.contains("measure_id AS VARCHAR"),
        "fixture edit applies"
    );
    std::fs::write(catalog.join("measures.count_per_measure.toml"), unstable).unwrap();
    let cfg = node_config(dir.path(), "P01", 5.0, "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &catalog_dir().display().to_string(),
        &catalog.display().to_string(),
    );
    std::fs::write(&cfg, text).unwrap();
    let (ok, out) = check(&cfg);
    assert!(!ok, "{out}");
    assert!(
        out.contains("measures.count_per_measure")
            && out.contains("is not the privacy unit carried unchanged"),
        "{out}"
    );
}
