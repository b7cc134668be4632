//! The provider's own PostgreSQL as a node's source, read-only, through
//! `datafusion-table-providers-postgres` with its federation (query push-down) off.
//!
//! Each release reads the tables it may use in one `REPEATABLE READ READ ONLY` transaction, so
//! every table is seen at one moment of the database, and evaluates over exactly those rows in
//! the node's own DataFusion plan: bounding and noise never run in SQL sent to the database. The
//! rows' content digest is the release's snapshot identity, so the same key can never answer
//! different data, and unchanged data replays its stored answer (docs/DESIGN_NOTES.md,
//! "Snapshot identity of a live database").

use crate::config::{PostgresConfig, TableMapping};
use crate::tables::{DataError, Tables};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::TableReference;
use datafusion_table_providers_common::sql::db_connection_pool::dbconnection::{
    AsyncDbConnection, Error as DbError,
};
use datafusion_table_providers_postgres::conn::PostgresConnection;
use datafusion_table_providers_postgres::pool::{Error as PoolError, PostgresConnectionPool};
use futures::TryStreamExt;
use policies::cdm::{self, TableDef};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

/// One data-model table and where it lives in the provider's database.
struct Mapped {
    def: TableDef,
    /// The provider's table or view, as written in the config.
    from: String,
    /// `SELECT provider_column AS model_column, … FROM table`: only renaming, nothing computed.
    select: String,
    /// The model's column names with the provider's types.
    schema: SchemaRef,
}

pub struct PostgresSource {
    pool: Arc<PostgresConnectionPool>,
    tables: Vec<Mapped>,
    /// `user@host:port/db`, for messages: never the password.
    pub described: String,
}

fn database(described: &str, message: impl std::fmt::Display) -> DataError {
    DataError::Database {
        database: described.to_string(),
        message: message.to_string(),
    }
}

/// The source label of a mapped table in messages: `postgres:schema.table`.
fn label(from: &str) -> PathBuf {
    PathBuf::from(format!("postgres:{from}"))
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The connection as configured: the secret file's or environment variable's text, parsed by
/// tokio-postgres (a `key=value` string or a `postgres://` URL).
fn connection(cfg: &PostgresConfig) -> Result<tokio_postgres::Config, DataError> {
    let (text, from) = match (&cfg.connection_file, &cfg.connection_env) {
        (Some(file), None) => (
            std::fs::read_to_string(file).map_err(|source| DataError::Io {
                file: file.clone(),
                source,
            })?,
            file.display().to_string(),
        ),
        (None, Some(var)) => (
            std::env::var(var).map_err(|_| DataError::Secret {
                from: format!("environment variable {var}"),
                message: "is not set".into(),
            })?,
            format!("environment variable {var}"),
        ),
        (Some(_), Some(_)) | (None, None) => {
            return Err(DataError::Secret {
                from: "[data.postgres]".into(),
                message: "set exactly one of connection_file and connection_env".into(),
            });
        }
    };
    // The text holds the password: its parse error says what is wrong, never what it says.
    tokio_postgres::Config::from_str(text.trim()).map_err(|_| DataError::Secret {
        from,
        message: "is not a PostgreSQL connection (key=value pairs or a postgres:// URL)".into(),
    })
}

fn describe(c: &tokio_postgres::Config) -> String {
    let host = c
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        c.get_user().unwrap_or("?"),
        c.get_dbname().unwrap_or("?")
    )
}

impl PostgresSource {
    /// Connects, and checks that every served table exists with every data-model column of an
    /// acceptable type. Fails with the first problem, naming table, column, expected and found.
    pub async fn connect(cfg: &PostgresConfig, served: &[String]) -> Result<Self, DataError> {
        let conn = connection(cfg)?;
        let described = describe(&conn);
        let mut params: HashMap<String, SecretString> = HashMap::new();
        let mut put = |k: &str, v: String| {
            params.insert(k.to_string(), SecretString::from(v));
        };
        if let Some(tokio_postgres::config::Host::Tcp(h)) = conn.get_hosts().first() {
            put("host", h.clone());
        }
        if let Some(p) = conn.get_ports().first() {
            put("port", p.to_string());
        }
        if let Some(u) = conn.get_user() {
            put("user", u.to_string());
        }
        if let Some(d) = conn.get_dbname() {
            put("db", d.to_string());
        }
        if let Some(p) = conn.get_password() {
            put("pass", String::from_utf8_lossy(p).into_owned());
        }
        put("sslmode", cfg.sslmode.clone());
        if let Some(ca) = &cfg.sslrootcert {
            put("sslrootcert", ca.display().to_string());
        }
        let pool = PostgresConnectionPool::new(params)
            .await
            .map_err(|e| match e {
                PoolError::InvalidHostOrPortError { host, port, .. } => DataError::Unreachable {
                    database: described.clone(),
                    host,
                    port,
                },
                PoolError::InvalidUsernameOrPassword { .. } => DataError::Authentication {
                    database: described.clone(),
                },
                other => database(&described, first_line(&other)),
            })?;
        let pool = Arc::new(pool);
        let mut tables = Vec::new();
        {
            let c = pool
                .connect_direct()
                .await
                .map_err(|e| database(&described, first_line(&e)))?;
            for def in cdm::tables() {
                if !served.iter().any(|t| t == def.name) {
                    continue;
                }
                let mapping = cfg.tables.get(def.name).cloned().unwrap_or(TableMapping {
                    from: def.name.to_string(),
                    columns: Default::default(),
                });
                tables.push(map_table(&c, def, mapping).await?);
            }
        }
        Ok(PostgresSource {
            pool,
            tables,
            described,
        })
    }

    /// Every served table, read in one read-only transaction, checked like files are, with the
    /// digest of its rows as the snapshot identity. The database going away fails the read.
    pub async fn read(&self) -> Result<Tables, DataError> {
        let c = self
            .pool
            .connect_direct()
            .await
            .map_err(|e| database(&self.described, first_line(&e)))?;
        let db = |e: tokio_postgres::Error| database(&self.described, e);
        c.conn
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(db)?;
        let mut batches: Vec<(&str, RecordBatch)> = Vec::new();
        let mut sources = Vec::new();
        let mut digest = Sha256::new();
        for t in &self.tables {
            let stream = c
                .query_arrow(&t.select, &[], Some(t.schema.clone()))
                .await
                .map_err(|e| DataError::Read {
                    table: t.def.name.to_string(),
                    file: label(&t.from),
                    message: e.to_string(),
                })?;
            let read: Vec<RecordBatch> =
                stream.try_collect().await.map_err(|e| DataError::Read {
                    table: t.def.name.to_string(),
                    file: label(&t.from),
                    message: e.strip_backtrace(),
                })?;
            // An empty result comes back without the table's schema.
            let read: Vec<RecordBatch> = read.into_iter().filter(|b| b.num_rows() > 0).collect();
            digest_rows(&mut digest, t.def.name, &t.schema, &read)?;
            for b in read {
                let b = b
                    .with_schema(t.schema.clone())
                    .map_err(|e| DataError::Engine(e.to_string()))?;
                batches.push((t.def.name, b));
            }
            sources.push((t.def.name, label(&t.from)));
        }
        c.conn.batch_execute("COMMIT").await.map_err(db)?;
        let snapshot = format!("postgres:{}", hex::encode(digest.finalize()));
        Tables::from_batches(batches, snapshot, &sources).await
    }
}

/// An error and its causes on one line (the crate's messages add advice on further lines, and
/// the cause that matters, such as a certificate that does not verify, is often a source).
fn first_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && *l != "PostgreSQL connection failed.")
            .unwrap_or_default()
            .to_string();
        if !line.is_empty() && !parts.iter().any(|p| p.contains(&line)) {
            parts.push(line);
        }
        next = err.source();
    }
    parts.join(": ")
}

async fn map_table(
    c: &PostgresConnection,
    def: TableDef,
    mapping: TableMapping,
) -> Result<Mapped, DataError> {
    let file = label(&mapping.from);
    let reference = TableReference::from(mapping.from.as_str());
    let found = c.get_schema(&reference).await.map_err(|e| match e {
        DbError::UndefinedTable { .. } => DataError::MissingSourceTable {
            table: def.name.to_string(),
            relation: mapping.from.clone(),
        },
        other => DataError::Read {
            table: def.name.to_string(),
            file: file.clone(),
            message: other.to_string(),
        },
    })?;
    if found.fields().is_empty() {
        return Err(DataError::MissingSourceTable {
            table: def.name.to_string(),
            relation: mapping.from.clone(),
        });
    }
    let mut fields = Vec::new();
    let mut select = Vec::new();
    for col in &def.columns {
        let theirs = mapping
            .columns
            .get(col.name)
            .cloned()
            .unwrap_or_else(|| col.name.to_string());
        let shown = if theirs == col.name {
            col.name.to_string()
        } else {
            format!("{} (their {theirs})", col.name)
        };
        let Ok(f) = found.field_with_name(&theirs) else {
            return Err(DataError::MissingColumn {
                table: def.name.to_string(),
                file: file.clone(),
                column: shown,
                expected: col.ty.arrow().to_string(),
            });
        };
        if !col.ty.accepts(f.data_type()) {
            return Err(DataError::WrongType {
                table: def.name.to_string(),
                file: file.clone(),
                column: shown,
                expected: col.ty.arrow().to_string(),
                found: f.data_type().to_string(),
            });
        }
        fields.push(Field::new(col.name, f.data_type().clone(), f.is_nullable()));
        select.push(format!(
            "{} AS {}",
            quote_ident(&theirs),
            quote_ident(col.name)
        ));
    }
    let select = format!(
        "SELECT {} FROM {}",
        select.join(", "),
        reference.to_quoted_string()
    );
    Ok(Mapped {
        def,
        from: mapping.from,
        select,
        schema: Arc::new(Schema::new(fields)),
    })
}

/// An order-independent digest of a table's rows: each row's canonical bytes (Arrow's row
/// format) hashed, the hashes sorted, then hashed together with the table's name and types.
fn digest_rows(
    h: &mut Sha256,
    table: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<(), DataError> {
    let engine = |e: datafusion::arrow::error::ArrowError| DataError::Engine(e.to_string());
    let converter = RowConverter::new(
        schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )
    .map_err(engine)?;
    let mut rows: Vec<[u8; 32]> = Vec::new();
    for b in batches {
        let converted = converter.convert_columns(b.columns()).map_err(engine)?;
        rows.extend(
            converted
                .iter()
                .map(|r| -> [u8; 32] { Sha256::digest(r.as_ref()).into() }),
        );
    }
    rows.sort_unstable();
    h.update((table.len() as u64).to_le_bytes());
    h.update(table.as_bytes());
    for f in schema.fields() {
        h.update(format!("{}:{};", f.name(), f.data_type()).as_bytes());
    }
    h.update((rows.len() as u64).to_le_bytes());
    for r in rows {
        h.update(r);
    }
    Ok(())
}
