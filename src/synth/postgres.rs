//! `stroom synth --postgres URL`: one provider's synthetic records written into PostgreSQL with
//! COPY, one schema per provider (`p01`, …), tables and columns as in the data model. For trying
//! a node over a database and for its tests; a provider's real database is only ever read.

use anyhow::{Context, Result};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use futures::SinkExt;
use policies::cdm::{self, ColumnType};
use std::collections::BTreeMap;
use std::path::Path;

fn sql_type(t: ColumnType) -> &'static str {
    match t {
        ColumnType::Utf8 => "text",
        ColumnType::Date32 => "date",
        ColumnType::Timestamp => "timestamp",
        ColumnType::Boolean => "boolean",
        ColumnType::Int64 => "bigint",
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// COPY's text format: tab-separated, `\N` for NULL, backslash escapes.
fn copy_text(batch: &RecordBatch) -> Result<String> {
    let columns = batch
        .columns()
        .iter()
        .map(|c| cast(c, &DataType::Utf8))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = String::new();
    for row in 0..batch.num_rows() {
        for (i, c) in columns.iter().enumerate() {
            if i > 0 {
                out.push('\t');
            }
            if c.is_null(row) {
                out.push_str("\\N");
                continue;
            }
            for ch in c.as_string::<i32>().value(row).chars() {
                match ch {
                    '\\' => out.push_str("\\\\"),
                    '\t' => out.push_str("\\t"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    other => out.push(other),
                }
            }
        }
        out.push('\n');
    }
    Ok(out)
}

/// Writes the provider folder `dir` (from `stroom synth`) into `schema`, replacing its tables.
/// Returns the rows written per table.
pub async fn load(
    url: &str,
    dir: &Path,
    schema: &str,
    progress: impl Fn(&str),
) -> Result<BTreeMap<String, u64>> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("connecting to PostgreSQL (synth --postgres writes over a plain connection)")?;
    let driver = tokio::spawn(connection);
    let schema_id = quote_ident(schema);
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema_id}"))
        .await
        .with_context(|| format!("creating schema {schema}"))?;
    let mut written = BTreeMap::new();
    for def in cdm::tables() {
        let file = dir.join(format!("{}.parquet", def.name));
        if !file.is_file() {
            continue;
        }
        let table = format!("{schema_id}.{}", quote_ident(def.name));
        let columns = def
            .columns
            .iter()
            .map(|c| {
                format!(
                    "{} {}{}",
                    quote_ident(c.name),
                    sql_type(c.ty),
                    if c.nullable { "" } else { " NOT NULL" }
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} ({columns})"
            ))
            .await
            .with_context(|| format!("creating {table}"))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?,
        )?
        .build()?;
        let names = def
            .columns
            .iter()
            .map(|c| quote_ident(c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let sink = client
            .copy_in(&format!("COPY {table} ({names}) FROM STDIN"))
            .await
            .with_context(|| format!("COPY into {table}"))?;
        let mut sink = std::pin::pin!(sink);
        for batch in reader {
            let batch = batch?;
            sink.send(bytes::Bytes::from(copy_text(&batch)?))
                .await
                .with_context(|| format!("COPY into {table}"))?;
        }
        let rows = sink
            .as_mut()
            .finish()
            .await
            .with_context(|| format!("COPY into {table}"))?;
        progress(&format!("{table}: {rows} rows"));
        written.insert(def.name.to_string(), rows);
    }
    drop(client);
    driver.await?.context("PostgreSQL connection")?;
    Ok(written)
}
