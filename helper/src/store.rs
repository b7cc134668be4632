//! The helper's durable state (SQLite, WAL, `synchronous=FULL`, `secure_delete`): the output share
//! of every verified report until its batch is collected or it expires, and the one aggregate share
//! each batch was collected with.
//!
//! Two rules keep the coordinator from learning one node's vector by differencing: a report (its
//! nonce) belongs to the first batch it was verified in, and a batch is collected over exactly one
//! set of nodes (asked again over the same set, the stored share is returned). A restart loses
//! nothing: verified reports and collections are committed before they are answered.
//!
//! What the helper keeps after a collection or the report window is the audit trail only: node,
//! batch, nonce, times and the SHA-256 of the erased share. Collections are numbered; the highest
//! number is also written to a watermark file outside the store, so a store restored from a backup
//! is recognised (it is behind the watermark) and nothing made before then is counted again.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Schema version this build writes; a store from a newer build is refused.
const SCHEMA_VERSION: i64 = 2;

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE batches (
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
    );",
    // Version 2: report times and erasure, numbered collections, the restore fence. Shares of
    // batches collected before the upgrade are erased now (their rows stay).
    "ALTER TABLE reports ADD COLUMN created_at INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE reports ADD COLUMN share_sha256 TEXT;
    ALTER TABLE reports ADD COLUMN erased_at TEXT;
    ALTER TABLE collections ADD COLUMN seq INTEGER;
    UPDATE collections SET seq = rowid;
    CREATE TABLE fence (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        seq_floor  INTEGER NOT NULL,
        not_before INTEGER NOT NULL,
        found_at   TEXT NOT NULL
    );
    CREATE INDEX reports_live ON reports (created_at) WHERE erased_at IS NULL;
    UPDATE reports SET output_share = X'',
        erased_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
        WHERE batch IN (SELECT batch FROM collections);",
];

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
    #[error("helper watermark {path}: {message}")]
    Watermark { path: PathBuf, message: String },
}

/// What the store found at open when it was behind its watermark: restored from a backup.
#[derive(Debug, Clone, PartialEq)]
pub struct Restored {
    /// The store's highest collection number, and the watermark's.
    pub store_seq: i64,
    pub watermark: i64,
    /// Reports made before this time (Unix seconds; the second after the restore was found)
    /// are never counted again.
    pub not_before: i64,
    /// Report shares erased at once.
    pub erased: usize,
}

/// A verified report's stored share with what decides whether it may still be collected.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredShare {
    pub share: Vec<u8>,
    pub created_at: i64,
    pub erased: bool,
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
    watermark: PathBuf,
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
    /// From the report's signed binding (Unix seconds).
    pub created_at: i64,
}

const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// The highest collection number the store has given out or been fenced at.
fn current_seq(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT max(coalesce((SELECT max(seq) FROM collections), 0),
                    coalesce((SELECT seq_floor FROM fence WHERE id = 1), 0))",
        [],
        |r| r.get(0),
    )
}

fn read_watermark(path: &Path) -> Result<Option<i64>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| format!("'{}' is not a collection number", text.trim())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Replaces the watermark durably: a temporary file, synced, renamed over it, the folder synced.
fn write_watermark(path: &Path, seq: i64) -> Result<(), String> {
    use std::io::Write;
    let tmp = path.with_extension("watermark.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
    f.write_all(format!("{seq}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| e.to_string())?;
    }
    Ok(())
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
    /// Opens (and migrates) the store, then compares it with its watermark: a store behind the
    /// watermark was restored, and every report made before `now` is fenced off and erased.
    pub fn open(
        path: &Path,
        watermark: &Path,
        now: i64,
    ) -> Result<(Store, Option<Restored>), StoreError> {
        let err = |source| StoreError::Sql {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = service::sqlite::open(path).map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err)?;
        // Erased shares are overwritten on disk, not merely unlinked.
        conn.pragma_update(None, "secure_delete", "ON")
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
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            watermark: watermark.to_path_buf(),
        };
        let restored = store.check_watermark(now)?;
        Ok((store, restored))
    }

    fn watermark_err(&self, message: String) -> StoreError {
        StoreError::Watermark {
            path: self.watermark.clone(),
            message,
        }
    }

    fn check_watermark(&mut self, now: i64) -> Result<Option<Restored>, StoreError> {
        let err = sql_err(&self.path);
        let store_seq = current_seq(&self.conn).map_err(&err)?;
        let mark = read_watermark(&self.watermark).map_err(|m| self.watermark_err(m))?;
        match mark {
            Some(watermark) if watermark > store_seq => {
                // Up to and including this second: a report is dated in whole seconds.
                let not_before = now.saturating_add(1);
                let tx = self
                    .conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(&err)?;
                tx.execute(
                    &format!(
                        "INSERT INTO fence (id, seq_floor, not_before, found_at)
                         VALUES (1, ?1, ?2, {NOW})
                         ON CONFLICT (id) DO UPDATE SET seq_floor = excluded.seq_floor,
                           not_before = max(not_before, excluded.not_before),
                           found_at = excluded.found_at"
                    ),
                    params![watermark, not_before],
                )
                .map_err(&err)?;
                let erased = tx
                    .execute(
                        &format!(
                            "UPDATE reports SET output_share = X'', erased_at = {NOW}
                             WHERE erased_at IS NULL AND created_at < ?1"
                        ),
                        params![not_before],
                    )
                    .map_err(&err)?;
                tx.commit().map_err(&err)?;
                self.checkpoint()?;
                Ok(Some(Restored {
                    store_seq,
                    watermark,
                    not_before,
                    erased,
                }))
            }
            Some(watermark) if watermark == store_seq => Ok(None),
            // First start, a lost watermark, or a crash between a collection and its watermark:
            // the store is the newer record.
            Some(_) | None => {
                write_watermark(&self.watermark, store_seq).map_err(|m| self.watermark_err(m))?;
                Ok(None)
            }
        }
    }

    /// Reports made before this time (Unix seconds) are fenced off: a restore was found.
    pub fn not_before(&self) -> Result<Option<i64>, StoreError> {
        self.conn
            .query_row("SELECT not_before FROM fence WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Erases the shares of reports made before `oldest` (out of the window): they can never be
    /// collected. Returns how many were erased.
    pub fn erase_expired(&mut self, oldest: i64) -> Result<usize, StoreError> {
        let erased = self
            .conn
            .execute(
                &format!(
                    "UPDATE reports SET output_share = X'', erased_at = {NOW}
                     WHERE erased_at IS NULL AND created_at < ?1"
                ),
                params![oldest],
            )
            .map_err(|e| self.err(e))?;
        if erased > 0 {
            self.checkpoint()?;
        }
        Ok(erased)
    }

    /// Moves the write-ahead log into the database and empties it, so erased shares survive in
    /// neither file.
    fn checkpoint(&self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| self.err(e))
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
            let share_sha256 = hex::encode(Sha256::digest(&r.output_share));
            tx.execute(
                "INSERT INTO reports (nonce, batch, node_id, output_share, verifier_message,
                                      created_at, share_sha256)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    r.nonce,
                    batch,
                    r.node_id,
                    r.output_share,
                    r.verifier_message,
                    r.created_at,
                    share_sha256
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
    ) -> Result<Vec<Option<StoredShare>>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT output_share, created_at, erased_at IS NOT NULL FROM reports
                 WHERE batch = ?1 AND node_id = ?2",
            )
            .map_err(|e| self.err(e))?;
        nodes
            .iter()
            .map(|n| {
                stmt.query_row(params![batch, n], |r| {
                    Ok(StoredShare {
                        share: r.get(0)?,
                        created_at: r.get(1)?,
                        erased: r.get(2)?,
                    })
                })
                .optional()
                .map_err(|e| StoreError::Sql {
                    path: self.path.clone(),
                    source: e,
                })
            })
            .collect()
    }

    /// Records a batch's one collection under the next collection number and erases the
    /// shares of every report in the batch (collected or not, none can count again). Returns
    /// the stored one when another request got there first (the caller compares its node set).
    /// The watermark is raised before the commit: a crash between the two leaves the store
    /// behind it, which is read as a restore (safe: nothing older is counted again).
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
        if let Some(stored) = tx
            .query_row(COLLECTION, params![batch], collection_row)
            .optional()
            .map_err(&err)?
        {
            return Ok(stored);
        }
        let seq = current_seq(&tx).map_err(&err)? + 1;
        write_watermark(&self.watermark, seq).map_err(|message| StoreError::Watermark {
            path: self.watermark.clone(),
            message,
        })?;
        tx.execute(
            "INSERT INTO collections (batch, node_set, count, aggregate_share, seq)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![batch, node_set, count as i64, aggregate_share, seq],
        )
        .map_err(&err)?;
        tx.execute(
            &format!(
                "UPDATE reports SET output_share = X'', erased_at = {NOW}
                 WHERE batch = ?1 AND erased_at IS NULL"
            ),
            params![batch],
        )
        .map_err(&err)?;
        let stored = tx
            .query_row(COLLECTION, params![batch], collection_row)
            .map_err(&err)?;
        tx.commit().map_err(&err)?;
        self.checkpoint()?;
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
        let mark = dir.path().join("h.watermark");
        {
            let (mut s, _) = Store::open(&path, &mark, NOW_SECS).expect("open");
            let report = |nonce: &str, node: &str, params: &str| NewReport {
                params_json: params.into(),
                nonce: nonce.into(),
                node_id: node.into(),
                output_share: b"share".to_vec(),
                verifier_message: format!("msg-{nonce}"),
                created_at: NOW_SECS,
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
        let (s, restored) = Store::open(&path, &mark, NOW_SECS).expect("reopen");
        assert_eq!(restored, None);
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
            Store::open(&path, &mark, NOW_SECS),
            Err(StoreError::Newer { found: 99, .. })
        ));
    }

    const NOW_SECS: i64 = 1_800_000_000;

    /// A share no honest encoding would produce by chance, to look for in the raw files.
    fn marked_share(tag: u8) -> Vec<u8> {
        let mut share = b"STROOM-SHARE-MARK-".to_vec();
        share.push(tag);
        share.extend(std::iter::repeat_n(tag, 6_000));
        share
    }

    fn report(nonce: &str, node: &str, created_at: i64, tag: u8) -> NewReport {
        NewReport {
            params_json: "{}".into(),
            nonce: nonce.into(),
            node_id: node.into(),
            output_share: marked_share(tag),
            verifier_message: format!("msg-{nonce}"),
            created_at,
        }
    }

    /// Whether the database or its write-ahead log still holds the bytes anywhere.
    fn on_disk(path: &Path, needle: &[u8]) -> bool {
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        [path.to_path_buf(), wal].iter().any(|f| {
            std::fs::read(f).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
        })
    }

    #[test]
    fn a_collection_erases_the_batchs_shares_from_disk_and_keeps_the_audit_trail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, mark) = (dir.path().join("h.sqlite"), dir.path().join("h.watermark"));
        let (mut s, _) = Store::open(&path, &mark, NOW_SECS).expect("open");
        let stored = s
            .insert_reports(
                "b1",
                &[
                    report("n1", "P01", NOW_SECS, b'a'),
                    report("n2", "P02", NOW_SECS, b'b'),
                    report("n3", "P03", NOW_SECS, b'c'),
                ],
            )
            .expect("insert");
        assert!(stored.iter().all(Result::is_ok));
        s.insert_reports("b2", &[report("n4", "P01", NOW_SECS, b'd')])
            .expect("insert");
        let needle = |t: u8| marked_share(t)[..40].to_vec();
        assert!(
            on_disk(&path, &needle(b'a')),
            "the test must see a stored share"
        );
        // Collected over P01 and P02 only: P03's report can never count again either.
        s.insert_collection("b1", "P01,P02", 2, "agg")
            .expect("collect");
        for t in [b'a', b'b', b'c'] {
            assert!(
                !on_disk(&path, &needle(t)),
                "share {} still on disk",
                t as char
            );
        }
        assert!(
            on_disk(&path, &needle(b'd')),
            "another batch's share is kept"
        );
        // What the audit needs stays: node, batch, nonce, times, the erased share's hash.
        let rows: Vec<(String, String, i64, String, bool)> = s
            .conn
            .prepare("SELECT nonce, node_id, created_at, share_sha256, erased_at IS NOT NULL FROM reports WHERE batch = 'b1' ORDER BY nonce")
            .and_then(|mut q| {
                q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
                    .collect()
            })
            .expect("rows");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].3, hex::encode(Sha256::digest(marked_share(b'a'))));
        assert!(rows.iter().all(|r| r.2 == NOW_SECS && r.4), "{rows:?}");
        let shares = s.output_shares("b1", &["P01".into()]).expect("shares");
        assert!(
            shares[0]
                .as_ref()
                .is_some_and(|x| x.erased && x.share.is_empty())
        );
        assert_eq!(std::fs::read_to_string(&mark).expect("mark").trim(), "1");
    }

    #[test]
    fn reports_out_of_the_window_are_erased() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, mark) = (dir.path().join("h.sqlite"), dir.path().join("h.watermark"));
        let (mut s, _) = Store::open(&path, &mark, NOW_SECS).expect("open");
        s.insert_reports(
            "b1",
            &[
                report("old", "P01", NOW_SECS - 7_200, b'o'),
                report("new", "P02", NOW_SECS, b'n'),
            ],
        )
        .expect("insert");
        assert_eq!(s.erase_expired(NOW_SECS - 3_600).expect("erase"), 1);
        assert!(!on_disk(&path, &marked_share(b'o')[..40]));
        assert!(on_disk(&path, &marked_share(b'n')[..40]));
        assert_eq!(s.erase_expired(NOW_SECS - 3_600).expect("again"), 0);
    }

    #[test]
    fn a_store_behind_its_watermark_fences_off_everything_made_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, mark) = (dir.path().join("h.sqlite"), dir.path().join("h.watermark"));
        let backup = dir.path().join("backup.sqlite");
        {
            let (mut s, _) = Store::open(&path, &mark, NOW_SECS).expect("open");
            s.insert_reports("b1", &[report("n1", "P01", NOW_SECS, b'a')])
                .expect("insert");
            s.checkpoint().expect("checkpoint");
            // The operator's backup, taken while b1 waits for its collection.
            std::fs::copy(&path, &backup).expect("backup");
            s.insert_collection("b1", "P01", 1, "agg").expect("collect");
        }
        std::fs::copy(&backup, &path).expect("restore");
        let later = NOW_SECS + 600;
        let (s, restored) = Store::open(&path, &mark, later).expect("open restored");
        let restored = restored.expect("the restore is recognised");
        assert_eq!((restored.store_seq, restored.watermark), (0, 1));
        assert_eq!(restored.not_before, later + 1);
        assert_eq!(restored.erased, 1);
        assert_eq!(s.not_before().expect("fence"), Some(later + 1));
        assert!(!on_disk(&path, &marked_share(b'a')[..40]));
        drop(s);
        // Numbers go on from the watermark, and the fence stays across restarts.
        let (mut s, again) = Store::open(&path, &mark, later + 60).expect("reopen");
        assert_eq!(again, None);
        assert_eq!(s.not_before().expect("fence"), Some(later + 1));
        s.insert_reports("b9", &[report("n9", "P01", later + 60, b'z')])
            .expect("insert");
        s.insert_collection("b9", "P01", 1, "agg").expect("collect");
        assert_eq!(std::fs::read_to_string(&mark).expect("mark").trim(), "2");
    }
}
