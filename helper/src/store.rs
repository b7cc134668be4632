//! The helper's durable state (SQLite, WAL, `synchronous=FULL`): the output share of every verified
//! report, and the one aggregate share each batch was collected with.
//!
//! Two rules keep the coordinator from learning one node's vector by differencing: a report (its
//! nonce) belongs to the first batch it was verified in, and a batch is collected over exactly one
//! set of nodes (asked again over the same set, the stored share is returned). A restart loses
//! nothing: verified reports and collections are committed before they are answered.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::path::{Path, PathBuf};

/// Schema version this build writes; a store from a newer build is refused.
const SCHEMA_VERSION: i64 = 1;

const MIGRATIONS: &[&str] = &["CREATE TABLE batches (
        batch      TEXT PRIMARY KEY,
        params     TEXT NOT NULL
    );
    CREATE TABLE reports (
        nonce            TEXT PRIMARY KEY,
        batch            TEXT NOT NULL REFERENCES batches (batch),
        node_id          TEXT NOT NULL,
        output_share     BLOB NOT NULL,
        verifier_message TEXT NOT NULL,
        verified_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        UNIQUE (batch, node_id)
    );
    CREATE TABLE collections (
        batch           TEXT PRIMARY KEY REFERENCES batches (batch),
        node_set        TEXT NOT NULL,
        count           INTEGER NOT NULL,
        aggregate_share TEXT NOT NULL,
        collected_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );"];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("helper store {path}: {source}")]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "helper store {path} has schema version {found}, newer than this build's {SCHEMA_VERSION}: refusing to run on it"
    )]
    Newer { path: PathBuf, found: i64 },
}

/// What the store already knows about a report's nonce.
#[derive(Debug, Clone, PartialEq)]
pub enum Known {
    New,
    /// Verified in this batch for this node: the stored verifier message.
    Same {
        verifier_message: String,
    },
    /// Verified elsewhere: the batch and node it belongs to.
    Elsewhere {
        batch: String,
        node_id: String,
    },
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// A batch's collection: node set, count, aggregate share.
type Collection = (String, usize, String);

const COLLECTION: &str =
    "SELECT node_set, count, aggregate_share FROM collections WHERE batch = ?1";

fn collection_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Collection> {
    Ok((r.get(0)?, r.get::<_, i64>(1)? as usize, r.get(2)?))
}

/// Maps a SQLite error to the store's error, naming the file.
fn sql_err(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sql {
        path: path.to_path_buf(),
        source,
    }
}

/// A report both aggregators verified, to be stored.
pub struct NewReport {
    pub params_json: String,
    pub nonce: String,
    pub node_id: String,
    pub output_share: Vec<u8>,
    pub verifier_message: String,
}

fn known(conn: &Connection, nonce: &str, batch: &str, node_id: &str) -> rusqlite::Result<Known> {
    let row: Option<(String, String, String)> = conn
        .query_row(
            "SELECT batch, node_id, verifier_message FROM reports WHERE nonce = ?1",
            params![nonce],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    Ok(match row {
        None => Known::New,
        Some((b, n, m)) if b == batch && n == node_id => Known::Same {
            verifier_message: m,
        },
        Some((batch, node_id, _)) => Known::Elsewhere { batch, node_id },
    })
}

fn refusal(
    conn: &Connection,
    batch: &str,
    node_id: &str,
    params_json: &str,
) -> rusqlite::Result<Option<String>> {
    if conn
        .query_row(COLLECTION, params![batch], collection_row)
        .optional()?
        .is_some()
    {
        return Ok(Some(format!(
            "batch {batch} is already collected; no report can join it"
        )));
    }
    let other = conn
        .query_row(
            "SELECT 1 FROM reports WHERE batch = ?1 AND node_id = ?2",
            params![batch, node_id],
            |_| Ok(()),
        )
        .optional()?;
    if other.is_some() {
        return Ok(Some(format!(
            "node {node_id} already has another report in batch {batch}"
        )));
    }
    let existing: Option<String> = conn
        .query_row(
            "SELECT params FROM batches WHERE batch = ?1",
            params![batch],
            |r| r.get(0),
        )
        .optional()?;
    Ok(match existing {
        Some(existing) if existing != params_json => Some(format!(
            "report parameters {params_json} differ from the batch's {existing}"
        )),
        Some(_) | None => None,
    })
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let err = |source| StoreError::Sql {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = service::sqlite::open(path).map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        let version = match service::sqlite::schema(&conn, SCHEMA_VERSION).map_err(err)? {
            service::sqlite::Schema::At(v) => v,
            service::sqlite::Schema::Newer(found) => {
                return Err(StoreError::Newer {
                    path: path.to_path_buf(),
                    found,
                });
            }
        };
        let tx = conn.transaction().map_err(err)?;
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(m).map_err(err)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    pub fn known(&self, nonce: &str, batch: &str, node_id: &str) -> Result<Known, StoreError> {
        known(&self.conn, nonce, batch, node_id).map_err(|e| self.err(e))
    }

    /// The batch's common parameters (JSON), if it has any report yet.
    pub fn batch_params(&self, batch: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row(
                "SELECT params FROM batches WHERE batch = ?1",
                params![batch],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The set of nodes a batch was collected over, with the count and aggregate share.
    pub fn collection(&self, batch: &str) -> Result<Option<Collection>, StoreError> {
        self.conn
            .query_row(COLLECTION, params![batch], collection_row)
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Why a new report of `node_id` cannot join `batch` now, if it cannot: the batch is
    /// collected, the node has another report in it, or its parameters differ from the batch's.
    pub fn refusal(
        &self,
        batch: &str,
        node_id: &str,
        params_json: &str,
    ) -> Result<Option<String>, StoreError> {
        refusal(&self.conn, batch, node_id, params_json).map_err(|e| self.err(e))
    }

    /// Stores verified reports in one transaction, each checked again against the store as it
    /// then is (a concurrent request may have stored a report of the same nonce or node, or
    /// collected the batch). Per report: its verifier message, or why it was not stored.
    pub fn insert_reports(
        &mut self,
        batch: &str,
        reports: &[NewReport],
    ) -> Result<Vec<Result<String, String>>, StoreError> {
        if reports.is_empty() {
            return Ok(vec![]);
        }
        let err = sql_err(&self.path);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let mut out = Vec::with_capacity(reports.len());
        for r in reports {
            match known(&tx, &r.nonce, batch, &r.node_id).map_err(&err)? {
                Known::Same { verifier_message } => {
                    out.push(Ok(verifier_message));
                    continue;
                }
                Known::Elsewhere { batch: other, .. } => {
                    out.push(Err(format!(
                        "report nonce {} was verified in batch {other} meanwhile",
                        r.nonce
                    )));
                    continue;
                }
                Known::New => {}
            }
            if let Some(reason) = refusal(&tx, batch, &r.node_id, &r.params_json).map_err(&err)? {
                out.push(Err(reason));
                continue;
            }
            tx.execute(
                "INSERT OR IGNORE INTO batches (batch, params) VALUES (?1, ?2)",
                params![batch, r.params_json],
            )
            .map_err(&err)?;
            tx.execute(
                "INSERT INTO reports (nonce, batch, node_id, output_share, verifier_message)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    r.nonce,
                    batch,
                    r.node_id,
                    r.output_share,
                    r.verifier_message
                ],
            )
            .map_err(&err)?;
            out.push(Ok(r.verifier_message.clone()));
        }
        tx.commit().map_err(&err)?;
        Ok(out)
    }

    /// The stored output shares of these nodes' reports in the batch (None for a node without).
    pub fn output_shares(
        &self,
        batch: &str,
        nodes: &[String],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT output_share FROM reports WHERE batch = ?1 AND node_id = ?2")
            .map_err(|e| self.err(e))?;
        nodes
            .iter()
            .map(|n| {
                stmt.query_row(params![batch, n], |r| r.get(0))
                    .optional()
                    .map_err(|e| StoreError::Sql {
                        path: self.path.clone(),
                        source: e,
                    })
            })
            .collect()
    }

    /// Records a batch's one collection. Returns the stored one when another request got there
    /// first (the caller compares its node set).
    pub fn insert_collection(
        &mut self,
        batch: &str,
        node_set: &str,
        count: usize,
        aggregate_share: &str,
    ) -> Result<Collection, StoreError> {
        let err = sql_err(&self.path);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        tx.execute(
            "INSERT OR IGNORE INTO collections (batch, node_set, count, aggregate_share)
             VALUES (?1, ?2, ?3, ?4)",
            params![batch, node_set, count as i64, aggregate_share],
        )
        .map_err(&err)?;
        let stored = tx
            .query_row(COLLECTION, params![batch], collection_row)
            .map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_from_a_newer_build_is_refused_and_reopening_keeps_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("h.sqlite");
        {
            let mut s = Store::open(&path).expect("open");
            let report = |nonce: &str, node: &str, params: &str| NewReport {
                params_json: params.into(),
                nonce: nonce.into(),
                node_id: node.into(),
                output_share: b"share".to_vec(),
                verifier_message: format!("msg-{nonce}"),
            };
            let stored = s
                .insert_reports(
                    "b1",
                    &[
                        report("n1", "P01", "{}"),
                        // Each checked again in the transaction: the second report of P01, a
                        // report with other parameters and a repeat of n1 are not stored anew.
                        report("n2", "P01", "{}"),
                        report("n3", "P02", "{\"other\":1}"),
                        report("n1", "P01", "{}"),
                    ],
                )
                .expect("insert");
            assert_eq!(stored[0], Ok("msg-n1".into()));
            assert!(matches!(&stored[1], Err(r) if r.contains("already has another report")));
            assert!(matches!(&stored[2], Err(r) if r.contains("differ from the batch's")));
            assert_eq!(stored[3], Ok("msg-n1".into()));
        }
        let s = Store::open(&path).expect("reopen");
        assert_eq!(
            s.known("n1", "b1", "P01").expect("known"),
            Known::Same {
                verifier_message: "msg-n1".into()
            }
        );
        drop(s);
        let conn = Connection::open(&path).expect("sqlite");
        conn.pragma_update(None, "user_version", 99)
            .expect("bump version");
        drop(conn);
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::Newer { found: 99, .. })
        ));
    }
}
