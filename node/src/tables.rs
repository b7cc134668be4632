//! The provider's records as DataFusion tables, validated against the data model before anything
//! is served. A node whose files do not match refuses to start and says which table and column.

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};
use policies::cdm::{self, TableDef};
use policies::contract;
use policies::period::Period;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("table '{table}': no {table}.parquet, {table}.csv or {table}/ folder in {dir}")]
    MissingTable { table: String, dir: PathBuf },
    #[error("table '{table}' ({file}): column '{column}' is missing; expected type {expected}")]
    MissingColumn {
        table: String,
        file: PathBuf,
        column: String,
        expected: String,
    },
    #[error("table '{table}' ({file}): column '{column}' has type {found}; expected {expected}")]
    WrongType {
        table: String,
        file: PathBuf,
        column: String,
        expected: String,
        found: String,
    },
    #[error(
        "table '{table}' ({file}): column '{column}' holds {count} empty value(s) but may not be empty"
    )]
    Nulls {
        table: String,
        file: PathBuf,
        column: String,
        count: i64,
    },
    #[error(
        "table '{table}' ({file}): column '{column}' holds {count} value(s) outside its code list, e.g. '{example}'; allowed: {allowed}"
    )]
    BadCodes {
        table: String,
        file: PathBuf,
        column: String,
        count: i64,
        example: String,
        allowed: String,
    },
    #[error(
        "table '{table}' ({file}): column '{column}' holds {count} date(s) outside {first} to {last}, the data model's range",
        first = cdm::FIRST_DAY,
        last = cdm::LAST_DAY
    )]
    DateOutOfRange {
        table: String,
        file: PathBuf,
        column: String,
        count: i64,
    },
    #[error(
        "table '{table}' ({file}): {count} row key(s) ({key}) occur more than once among one unit's rows; each must identify one row"
    )]
    RepeatedKeys {
        table: String,
        file: PathBuf,
        key: String,
        count: i64,
    },
    #[error("table '{table}' ({file}) cannot be read: {message}")]
    Read {
        table: String,
        file: PathBuf,
        message: String,
    },
    #[error("cannot read {file}: {source}")]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("query engine: {0}")]
    Engine(String),
    #[error(
        "table '{table}': the database has no table or view '{relation}' (data.postgres.tables.{table}.from)"
    )]
    MissingSourceTable { table: String, relation: String },
    #[error("the database connection from {from} {message}")]
    Secret { from: String, message: String },
    #[error(
        "database {database}: cannot reach {host}:{port} (is the server running, and may this node connect to it?)"
    )]
    Unreachable {
        database: String,
        host: String,
        port: u16,
    },
    #[error(
        "database {database}: authentication failed; check the user and password in the connection secret"
    )]
    Authentication { database: String },
    #[error("database {database}: {message}")]
    Database { database: String, message: String },
}

fn engine(e: datafusion::error::DataFusionError) -> DataError {
    DataError::Engine(e.strip_backtrace())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TableReport {
    pub table: String,
    /// Where the rows come from; `None` when the node does not serve this table.
    pub source: Option<PathBuf>,
    pub rows: u64,
}

/// Validated, registered tables, plus a digest of the files behind them (the data snapshot).
pub struct Tables {
    providers: Vec<(String, Arc<dyn TableProvider>)>,
    pub report: Vec<TableReport>,
    pub snapshot: String,
}

enum Source {
    Parquet(PathBuf),
    Csv(PathBuf),
}

impl Source {
    fn path(&self) -> &Path {
        match self {
            Source::Parquet(p) | Source::Csv(p) => p,
        }
    }
}

fn find_source(dir: &Path, table: &str) -> Option<Source> {
    let parquet = dir.join(format!("{table}.parquet"));
    if parquet.is_file() {
        return Some(Source::Parquet(parquet));
    }
    let folder = dir.join(table);
    if folder.is_dir() {
        return Some(Source::Parquet(folder));
    }
    let csv = dir.join(format!("{table}.csv"));
    csv.is_file().then_some(Source::Csv(csv))
}

impl Tables {
    pub async fn open(dir: &Path, served: &[String]) -> Result<Tables, DataError> {
        let ctx = SessionContext::new();
        let mut providers = Vec::new();
        let mut report = Vec::new();
        let mut snapshot = Sha256::new();
        for def in cdm::tables() {
            let wanted = served.iter().any(|t| t == def.name);
            let source = if wanted {
                find_source(dir, def.name)
            } else {
                None
            };
            let Some(source) = source else {
                if wanted {
                    return Err(DataError::MissingTable {
                        table: def.name.to_string(),
                        dir: dir.to_path_buf(),
                    });
                }
                let empty = MemTable::try_new(def.schema(), vec![vec![]]).map_err(engine)?;
                providers.push((
                    def.name.to_string(),
                    Arc::new(empty) as Arc<dyn TableProvider>,
                ));
                report.push(TableReport {
                    table: def.name.to_string(),
                    source: None,
                    rows: 0,
                });
                continue;
            };
            let file = source.path().to_path_buf();
            let read_err = |e: datafusion::error::DataFusionError| DataError::Read {
                table: def.name.to_string(),
                file: file.clone(),
                message: e.strip_backtrace(),
            };
            let path = file.to_string_lossy().to_string();
            match &source {
                Source::Parquet(_) => ctx
                    .register_parquet(def.name, &path, ParquetReadOptions::default())
                    .await
                    .map_err(read_err)?,
                Source::Csv(_) => {
                    check_csv_header(&def, &file)?;
                    let schema = def.schema();
                    ctx.register_csv(
                        def.name,
                        &path,
                        CsvReadOptions::new().has_header(true).schema(&schema),
                    )
                    .await
                    .map_err(read_err)?
                }
            }
            let provider = ctx.table_provider(def.name).await.map_err(read_err)?;
            check_schema(&def, &file, &provider.schema())?;
            let rows = check_values(&ctx, &def, &file).await?;
            digest_files(&mut snapshot, def.name, &file)?;
            providers.push((def.name.to_string(), provider));
            report.push(TableReport {
                table: def.name.to_string(),
                source: Some(file),
                rows,
            });
        }
        Ok(Tables {
            providers,
            report,
            snapshot: hex::encode(snapshot.finalize()),
        })
    }

    /// Tables held in memory, checked against the data model like files are: for tests and for
    /// dry runs on synthetic data. Tables not given are registered empty.
    pub async fn in_memory(
        batches: Vec<(&str, datafusion::arrow::array::RecordBatch)>,
    ) -> Result<Tables, DataError> {
        Self::memory(batches, &[], Invalid::Refuse).await
    }

    async fn memory(
        batches: Vec<(&str, datafusion::arrow::array::RecordBatch)>,
        sources: &[(&str, PathBuf)],
        invalid: Invalid,
    ) -> Result<Tables, DataError> {
        let ctx = SessionContext::new();
        let mut providers = Vec::new();
        let mut report = Vec::new();
        for def in cdm::tables() {
            let mine: Vec<_> = batches
                .iter()
                .filter(|(n, _)| *n == def.name)
                .map(|(_, b)| b.clone())
                .collect();
            let schema = mine
                .first()
                .map(|b| b.schema())
                .unwrap_or_else(|| def.schema());
            let source = sources.iter().find(|(t, _)| *t == def.name).map(|(_, s)| s);
            let file = source
                .cloned()
                .unwrap_or_else(|| PathBuf::from(format!("<memory:{}>", def.name)));
            check_schema(&def, &file, &schema)?;
            let rows = mine.iter().map(|b| b.num_rows() as u64).sum();
            let table = MemTable::try_new(schema.clone(), vec![mine]).map_err(engine)?;
            ctx.register_table(def.name, Arc::new(table))
                .map_err(engine)?;
            match invalid {
                Invalid::Refuse => {
                    check_values(&ctx, &def, &file).await?;
                }
                Invalid::Drop => {
                    let kept = valid_rows(&ctx, &def, &file).await?;
                    let dropped = rows - kept.iter().map(|b| b.num_rows() as u64).sum::<u64>();
                    if dropped > 0 {
                        // For the operator only: the count is about the records.
                        tracing::warn!(
                            table = def.name,
                            dropped,
                            "rows that break the data model were left out of this release"
                        );
                    }
                    let table = MemTable::try_new(schema, vec![kept]).map_err(engine)?;
                    ctx.deregister_table(def.name).map_err(engine)?;
                    ctx.register_table(def.name, Arc::new(table))
                        .map_err(engine)?;
                }
            }
            let provider = ctx.table_provider(def.name).await.map_err(engine)?;
            providers.push((def.name.to_string(), provider));
            report.push(TableReport {
                table: def.name.to_string(),
                source: source.cloned(),
                rows,
            });
        }
        Ok(Tables {
            providers,
            report,
            snapshot: "memory".to_string(),
        })
    }

    /// Tables read from a database into memory for one release, under the snapshot identity of
    /// exactly these rows. `sources` names where each came from. Rows that break the data model
    /// (an empty required value, a code outside its list) are left out, not refused: whether a
    /// read fails must not depend on the records, or the failure itself would tell a caller
    /// something about them before any spend. Leaving a row out depends on that row alone, so
    /// every bound still holds; the operator sees the count in the node's log.
    pub async fn from_batches(
        batches: Vec<(&str, datafusion::arrow::array::RecordBatch)>,
        snapshot: String,
        sources: &[(&str, PathBuf)],
    ) -> Result<Tables, DataError> {
        let mut tables = Self::memory(batches, sources, Invalid::Drop).await?;
        tables.snapshot = snapshot;
        Ok(tables)
    }

    /// A fresh session over these tables plus the public `quarters` and `years` tables of `period`.
    pub fn session(&self, period: &Period) -> Result<SessionContext, DataError> {
        let ctx = SessionContext::new();
        for (name, p) in &self.providers {
            ctx.register_table(name.as_str(), p.clone())
                .map_err(engine)?;
        }
        contract::register_period_tables(&ctx, Some(period)).map_err(engine)?;
        Ok(ctx)
    }
}

fn check_schema(def: &TableDef, file: &Path, found: &SchemaRef) -> Result<(), DataError> {
    for c in &def.columns {
        match found.field_with_name(c.name) {
            Err(_) => {
                return Err(DataError::MissingColumn {
                    table: def.name.to_string(),
                    file: file.to_path_buf(),
                    column: c.name.to_string(),
                    expected: c.ty.arrow().to_string(),
                });
            }
            Ok(f) if !c.ty.accepts(f.data_type()) => {
                return Err(DataError::WrongType {
                    table: def.name.to_string(),
                    file: file.to_path_buf(),
                    column: c.name.to_string(),
                    expected: c.ty.arrow().to_string(),
                    found: f.data_type().to_string(),
                });
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

fn check_csv_header(def: &TableDef, file: &Path) -> Result<(), DataError> {
    use std::io::BufRead;
    let f = std::fs::File::open(file).map_err(|source| DataError::Io {
        file: file.to_path_buf(),
        source,
    })?;
    let mut line = String::new();
    std::io::BufReader::new(f)
        .read_line(&mut line)
        .map_err(|source| DataError::Io {
            file: file.to_path_buf(),
            source,
        })?;
    let header: Vec<&str> = line.trim_end().split(',').map(|h| h.trim()).collect();
    for c in &def.columns {
        if !header.contains(&c.name) {
            return Err(DataError::MissingColumn {
                table: def.name.to_string(),
                file: file.to_path_buf(),
                column: c.name.to_string(),
                expected: c.ty.arrow().to_string(),
            });
        }
    }
    if header.len() != def.columns.len() {
        return Err(DataError::Read {
            table: def.name.to_string(),
            file: file.to_path_buf(),
            message: format!(
                "CSV header has {} columns; the data model has {} ({})",
                header.len(),
                def.columns.len(),
                def.columns
                    .iter()
                    .map(|c| c.name)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        });
    }
    Ok(())
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// SQL that is true when a date or timestamp column lies within the data model's range
/// ([`cdm::FIRST_DAY`] to [`cdm::LAST_DAY`]), compared as the stored integer so that no value,
/// however extreme, can make the comparison itself fail. `None` for other columns.
fn in_date_range(column: &str, ty: &datafusion::arrow::datatypes::DataType) -> Option<String> {
    use datafusion::arrow::datatypes::{DataType, TimeUnit};
    let per_day: i64 = match ty {
        DataType::Date32 => 1,
        DataType::Date64 => 86_400_000,
        DataType::Timestamp(TimeUnit::Second, _) => 86_400,
        DataType::Timestamp(TimeUnit::Millisecond, _) => 86_400_000,
        DataType::Timestamp(TimeUnit::Microsecond, _) => 86_400_000_000,
        DataType::Timestamp(TimeUnit::Nanosecond, _) => 86_400_000_000_000,
        _ => return None,
    };
    let (first, end) = cdm::DAY_RANGE;
    Some(format!(
        "(CAST({} AS BIGINT) >= {} AND CAST({} AS BIGINT) < {})",
        quote_ident(column),
        first * per_day,
        quote_ident(column),
        end * per_day
    ))
}

/// A coded column's allowed values as a SQL list.
fn code_list(c: &cdm::ColumnDef) -> String {
    c.codes
        .iter()
        .map(|s| quote_lit(s))
        .collect::<Vec<_>>()
        .join(",")
}

/// [`in_date_range`] for column `c` of a table whose column types are `types`.
fn date_condition(
    types: &[(String, datafusion::arrow::datatypes::DataType)],
    c: &cdm::ColumnDef,
) -> Option<String> {
    types
        .iter()
        .find(|(n, _)| n == c.name)
        .and_then(|(_, t)| in_date_range(c.name, t))
}

/// The declared type of each column of a registered table.
async fn column_types(
    ctx: &SessionContext,
    def: &TableDef,
) -> Result<Vec<(String, datafusion::arrow::datatypes::DataType)>, DataError> {
    let provider = ctx.table_provider(def.name).await.map_err(engine)?;
    Ok(provider
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect())
}

/// The unit column and row key of a table that holds units' rows, as a SQL column list.
fn unit_key(def: &TableDef) -> Option<String> {
    let unit = def.unit_column()?;
    let key = def.row_key();
    (!key.is_empty()).then(|| {
        std::iter::once(unit)
            .chain(key.iter().copied())
            .map(quote_ident)
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// What a table read does with rows that break the data model.
#[derive(Debug, Clone, Copy)]
enum Invalid {
    /// Refuse the whole table, naming the column (files at start, test data).
    Refuse,
    /// Leave the row out (a database read for one release).
    Drop,
}

/// The rows of a registered table that meet the data model: required values present, codes in
/// their lists.
async fn valid_rows(
    ctx: &SessionContext,
    def: &TableDef,
    file: &Path,
) -> Result<Vec<datafusion::arrow::array::RecordBatch>, DataError> {
    let mut conditions = vec!["TRUE".to_string()];
    let types = column_types(ctx, def).await?;
    for c in &def.columns {
        let id = quote_ident(c.name);
        if !c.nullable {
            conditions.push(format!("{id} IS NOT NULL"));
        }
        if let Some(in_range) = date_condition(&types, c) {
            conditions.push(format!("({id} IS NULL OR {in_range})"));
        }
        if !c.codes.is_empty() {
            let list = code_list(c);
            conditions.push(format!("({id} IS NULL OR {id} IN ({list}))"));
        }
    }
    let valid = format!(
        "SELECT * FROM {} WHERE {}",
        quote_ident(def.name),
        conditions.join(" AND ")
    );
    // A row key repeated within one unit's rows would leave their order to chance; all such
    // rows are left out (a decision on that unit's rows alone).
    let sql = match unit_key(def) {
        Some(by) => format!(
            "SELECT {} FROM (SELECT *, count(*) OVER (PARTITION BY {by}) AS \"__stroom_n\" FROM ({valid})) WHERE \"__stroom_n\" = 1",
            def.columns
                .iter()
                .map(|c| quote_ident(c.name))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => valid,
    };
    let read_err = |e: datafusion::error::DataFusionError| DataError::Read {
        table: def.name.to_string(),
        file: file.to_path_buf(),
        message: e.strip_backtrace(),
    };
    ctx.sql(&sql)
        .await
        .map_err(read_err)?
        .collect()
        .await
        .map_err(read_err)
}

/// One scan per table: row count, empty values in required columns, values outside code lists.
async fn check_values(ctx: &SessionContext, def: &TableDef, file: &Path) -> Result<u64, DataError> {
    let mut exprs = vec!["COUNT(*) AS n".to_string()];
    let mut checks = Vec::new();
    let mut dated = Vec::new();
    let types = column_types(ctx, def).await?;
    for c in &def.columns {
        let id = quote_ident(c.name);
        if !c.nullable {
            exprs.push(format!(
                "SUM(CASE WHEN {id} IS NULL THEN 1 ELSE 0 END) AS {}",
                quote_ident(&format!("null_{}", c.name))
            ));
            checks.push((c, false));
        }
        if let Some(in_range) = date_condition(&types, c) {
            exprs.push(format!(
                "SUM(CASE WHEN {id} IS NOT NULL AND NOT {in_range} THEN 1 ELSE 0 END) AS {}",
                quote_ident(&format!("range_{}", c.name))
            ));
            dated.push(c);
        }
        if !c.codes.is_empty() {
            let list = code_list(c);
            exprs.push(format!(
                "SUM(CASE WHEN {id} IS NOT NULL AND {id} NOT IN ({list}) THEN 1 ELSE 0 END) AS {}",
                quote_ident(&format!("bad_{}", c.name))
            ));
            exprs.push(format!(
                "MIN(CASE WHEN {id} NOT IN ({list}) THEN {id} END) AS {}",
                quote_ident(&format!("example_{}", c.name))
            ));
            checks.push((c, true));
        }
    }
    let sql = format!("SELECT {} FROM {}", exprs.join(", "), quote_ident(def.name));
    let read_err = |e: datafusion::error::DataFusionError| DataError::Read {
        table: def.name.to_string(),
        file: file.to_path_buf(),
        message: e.strip_backtrace(),
    };
    let batches = ctx
        .sql(&sql)
        .await
        .map_err(read_err)?
        .collect()
        .await
        .map_err(read_err)?;
    let Some(batch) = batches.first() else {
        return Ok(0);
    };
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::compute::cast;
    use datafusion::arrow::datatypes::{DataType, Int64Type};
    let int = |name: &str| -> i64 {
        batch
            .column_by_name(name)
            .and_then(|a| cast(a, &DataType::Int64).ok())
            .map(|a| {
                let a = a.as_primitive::<Int64Type>();
                if a.is_null(0) { 0 } else { a.value(0) }
            })
            .unwrap_or(0)
    };
    for (c, is_codes) in checks {
        if !is_codes {
            let count = int(&format!("null_{}", c.name));
            if count > 0 {
                return Err(DataError::Nulls {
                    table: def.name.to_string(),
                    file: file.to_path_buf(),
                    column: c.name.to_string(),
                    count,
                });
            }
        } else {
            let count = int(&format!("bad_{}", c.name));
            if count > 0 {
                let example = batch
                    .column_by_name(&format!("example_{}", c.name))
                    .and_then(|a| cast(a, &DataType::Utf8).ok())
                    .map(|a| a.as_string::<i32>().value(0).to_string())
                    .unwrap_or_default();
                return Err(DataError::BadCodes {
                    table: def.name.to_string(),
                    file: file.to_path_buf(),
                    column: c.name.to_string(),
                    count,
                    example,
                    allowed: c.codes.join(", "),
                });
            }
        }
    }
    if let Some(by) = unit_key(def) {
        let sql = format!(
            "SELECT count(*) AS n FROM (SELECT 1 FROM {} GROUP BY {by} HAVING count(*) > 1)",
            quote_ident(def.name)
        );
        let repeated = ctx
            .sql(&sql)
            .await
            .map_err(read_err)?
            .collect()
            .await
            .map_err(read_err)?;
        let count = repeated
            .first()
            .and_then(|b| cast(b.column(0), &DataType::Int64).ok())
            .map(|a| a.as_primitive::<Int64Type>().value(0))
            .unwrap_or(0);
        if count > 0 {
            return Err(DataError::RepeatedKeys {
                table: def.name.to_string(),
                file: file.to_path_buf(),
                key: def.row_key().join(", "),
                count,
            });
        }
    }
    for c in dated {
        let count = int(&format!("range_{}", c.name));
        if count > 0 {
            return Err(DataError::DateOutOfRange {
                table: def.name.to_string(),
                file: file.to_path_buf(),
                column: c.name.to_string(),
                count,
            });
        }
    }
    Ok(int("n").max(0) as u64)
}

/// Feed the table name, and the name, size and content of every file behind it, into the digest.
fn digest_files(h: &mut Sha256, table: &str, path: &Path) -> Result<(), DataError> {
    let io = |source| DataError::Io {
        file: path.to_path_buf(),
        source,
    };
    let mut files = if path.is_dir() {
        std::fs::read_dir(path)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect::<Vec<_>>()
    } else {
        vec![path.to_path_buf()]
    };
    files.sort();
    h.update(table.as_bytes());
    for f in files {
        let mut file = std::fs::File::open(&f).map_err(|source| DataError::Io {
            file: f.clone(),
            source,
        })?;
        h.update(
            f.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        let n = std::io::copy(&mut file, h).map_err(|source| DataError::Io {
            file: f.clone(),
            source,
        })?;
        h.update(n.to_le_bytes());
    }
    Ok(())
}
