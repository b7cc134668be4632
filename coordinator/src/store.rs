//! The run store: an embedded SQLite database (WAL, synchronous=FULL) holding every run, every node
//! answer as it arrives, the run's results and what was published. A coordinator restarted mid-run
//! finds its unfinished runs here and resumes them; answers already stored are not asked again.

use crate::publish::{Published, Record};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("run store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("run store: stored JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("run store: lock poisoned")]
    Poisoned,
    #[error(
        "run store has schema version {found}, newer than this build's {SCHEMA_VERSION}: refusing to run on it"
    )]
    Newer { found: i64 },
}

/// Schema version this build writes; a store from a newer build is refused.
pub const SCHEMA_VERSION: i64 = 3;

/// Version 3: a secure answer's report material is erased once its run is finished; its row
/// keeps the audit trail (node, release, times, the SHA-256 of the answer as it arrived).
const V3: &str = "ALTER TABLE answers ADD COLUMN secure INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE answers ADD COLUMN answer_sha256 TEXT;
    ALTER TABLE answers ADD COLUMN erased_at TEXT;";

const V1: &str = "CREATE TABLE IF NOT EXISTS runs (
        id TEXT PRIMARY KEY,
        indicator TEXT NOT NULL,
        period TEXT NOT NULL,
        status TEXT NOT NULL,
        requested_by TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        error TEXT,
        resumed INTEGER NOT NULL DEFAULT 0,
        published INTEGER NOT NULL DEFAULT 0,
        records TEXT
    );
    CREATE TABLE IF NOT EXISTS answers (
        run_id TEXT NOT NULL REFERENCES runs(id),
        base TEXT NOT NULL,
        quarter TEXT NOT NULL,
        node TEXT NOT NULL,
        answer BLOB,
        error TEXT,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (run_id, base, quarter, node)
    );
    CREATE TABLE IF NOT EXISTS interpretations (
        indicator TEXT NOT NULL,
        period TEXT NOT NULL,
        nl TEXT,
        en TEXT,
        reviewer TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (indicator, period)
    );
    CREATE TABLE IF NOT EXISTS tokens (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT,
        revoked_at TEXT
    );
    CREATE TABLE IF NOT EXISTS published (
        indicator TEXT NOT NULL,
        period TEXT NOT NULL,
        grp TEXT NOT NULL,
        run_id TEXT NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (indicator, period, grp)
    );";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Accepted, not yet started.
    Pending,
    Running,
    /// Every asked node answered; results published.
    Done,
    /// Some nodes did not answer; results are there, published only if the quorum was met.
    Partial,
    /// Nothing usable; `error` says why.
    Failed,
}

impl RunStatus {
    fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Done => "done",
            RunStatus::Partial => "partial",
            RunStatus::Failed => "failed",
        }
    }

    pub(crate) fn parse(s: &str) -> RunStatus {
        match s {
            "pending" => RunStatus::Pending,
            "running" => RunStatus::Running,
            "done" => RunStatus::Done,
            "partial" => RunStatus::Partial,
            _ => RunStatus::Failed,
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            RunStatus::Done | RunStatus::Partial | RunStatus::Failed
        )
    }
}

/// A reviewer's reading (duiding) of a published indicator for one quarter, in Dutch and/or English.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Interpretation {
    pub indicator: String,
    pub period: String,
    pub nl: Option<String>,
    pub en: Option<String>,
    pub reviewer: String,
    pub updated_at: String,
}

/// What a token may do. See the authorization matrix in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Researcher,
    Reviewer,
    Admin,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Researcher => "researcher",
            Role::Reviewer => "reviewer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "researcher" => Some(Role::Researcher),
            "reviewer" => Some(Role::Reviewer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub id: String,
    pub indicator: String,
    pub period: String,
    pub status: RunStatus,
    pub requested_by: String,
    pub created_at: String,
    pub updated_at: String,
    pub error: Option<String>,
    /// Times the run was picked up again after a coordinator restart.
    pub resumed: u32,
    pub published: bool,
}

/// One node's answer (Arrow IPC bytes) or error, to store.
pub struct NewAnswer<'a> {
    pub base: &'a str,
    pub quarter: &'a str,
    pub node: &'a str,
    pub answer: Result<&'a [u8], &'a str>,
    /// A secret-shared answer (a report): erased once the run is finished.
    pub secure: bool,
}

/// One node request of a run: a base indicator for one quarter at one node.
#[derive(Debug, Clone)]
pub struct StoredAnswer {
    pub base: String,
    pub quarter: String,
    pub node: String,
    /// The node's Arrow IPC answer, when it answered.
    pub answer: Option<Vec<u8>>,
    pub error: Option<String>,
}

pub struct RunStore {
    conn: Mutex<Connection>,
    /// Every timestamp the store writes, and token expiry, come from here.
    clock: std::sync::Arc<dyn service::clock::Clock>,
}

/// A presented token, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenCheck {
    Unknown,
    Revoked(TokenInfo),
    Expired(TokenInfo),
    Valid(TokenInfo),
}

/// A timestamp as the store writes them.
fn stamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl RunStore {
    pub fn open(path: &Path) -> Result<RunStore, StoreError> {
        Self::open_with_clock(path, std::sync::Arc::new(service::clock::SystemClock))
    }

    pub fn open_with_clock(
        path: &Path,
        clock: std::sync::Arc<dyn service::clock::Clock>,
    ) -> Result<RunStore, StoreError> {
        let mut conn = service::sqlite::open(path)?;
        // Erased report material is overwritten on disk, not merely unlinked.
        conn.pragma_update(None, "secure_delete", "ON")?;
        let version = match service::sqlite::schema(&conn, SCHEMA_VERSION)? {
            service::sqlite::Schema::At(v) => v,
            service::sqlite::Schema::Newer(found) => return Err(StoreError::Newer { found }),
        };
        // Version 1: the store as first released (before versioning it had `user_version` 0 and
        // these same tables, hence `IF NOT EXISTS`). Later versions add their steps below it.
        let tx = conn.transaction()?;
        if version < 1 {
            tx.execute_batch(V1)?;
            tx.execute_batch(crate::proposals::SCHEMA)?;
        }
        // Version 2: publication rounds and the embargo; what was public stays public.
        if version < 2 {
            tx.execute_batch(crate::release::SCHEMA_V2)?;
            crate::release::carry_over_public(&tx, &stamp(clock.now()))?;
        }
        if version < 3 {
            tx.execute_batch(V3)?;
            mark_stored_reports(&tx)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        let store = RunStore {
            conn: Mutex::new(conn),
            clock,
        };
        if version < 3 {
            store.erase_finished_reports()?;
        }
        Ok(store)
    }

    /// Erases the report material of every finished run (after an upgrade, and as a sweep).
    fn erase_finished_reports(&self) -> Result<usize, StoreError> {
        let conn = self.conn()?;
        let erased = conn.execute(
            "UPDATE answers SET answer = NULL, erased_at = ?1
             WHERE secure = 1 AND answer IS NOT NULL
               AND run_id IN (SELECT id FROM runs WHERE status IN ('done', 'partial', 'failed'))",
            params![self.now()],
        )?;
        if erased > 0 {
            checkpoint(&conn)?;
        }
        Ok(erased)
    }

    /// Erases a finished run's report material: its secure answers' bytes (leader shares,
    /// sealed helper shares). The rows stay, with the hash of each answer as it arrived.
    fn erase_reports(&self, conn: &Connection, run_id: &str) -> Result<usize, StoreError> {
        let erased = conn.execute(
            "UPDATE answers SET answer = NULL, erased_at = ?2
             WHERE run_id = ?1 AND secure = 1 AND answer IS NOT NULL",
            params![run_id, self.now()],
        )?;
        if erased > 0 {
            checkpoint(conn)?;
        }
        Ok(erased)
    }

    /// The store's clock (the coordinator's): what "now" is for runs, tokens and publication.
    pub fn clock(&self) -> &dyn service::clock::Clock {
        self.clock.as_ref()
    }

    /// Now, as the store writes timestamps.
    pub(crate) fn now(&self) -> String {
        stamp(self.clock.now())
    }

    pub(crate) fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }

    pub fn create_run(
        &self,
        indicator: &str,
        period: &str,
        requested_by: &str,
    ) -> Result<String, StoreError> {
        let id = uuid::Uuid::new_v4().to_string();
        let t = self.now();
        self.conn()?.execute(
            "INSERT INTO runs (id, indicator, period, status, requested_by, created_at, updated_at)
             VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?5)",
            params![id, indicator, period, requested_by, t],
        )?;
        Ok(id)
    }

    pub fn set_status(
        &self,
        id: &str,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let conn = self.conn()?;
        conn.execute(
            "UPDATE runs SET status = ?2, error = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, status.as_str(), error, self.now()],
        )?;
        if status.is_finished() {
            self.erase_reports(&conn, id)?;
        }
        Ok(())
    }

    pub fn mark_resumed(&self, id: &str) -> Result<(), StoreError> {
        self.conn()?.execute(
            "UPDATE runs SET resumed = resumed + 1, updated_at = ?2 WHERE id = ?1",
            params![id, self.now()],
        )?;
        Ok(())
    }

    /// Store node answers (or errors) of a run in one transaction. An answer lost in a crash
    /// before it reaches the disk is asked again on resume, and a node answers a repeated request
    /// from its ledger, so neither batching nor skipping this commit's disk sync ever makes a node
    /// spend twice. The WAL is written in order, so the run's next fully synced commit (its status
    /// or results) carries these answers to disk with it.
    pub fn record_answers(
        &self,
        run_id: &str,
        answers: &[NewAnswer<'_>],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let result = insert_answers(&mut conn, run_id, answers, &self.now());
        conn.pragma_update(None, "synchronous", "FULL")?;
        result
    }

    pub fn answers(&self, run_id: &str) -> Result<Vec<StoredAnswer>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT base, quarter, node, answer, error FROM answers WHERE run_id = ?1
             ORDER BY base, quarter, node",
        )?;
        let rows = stmt.query_map(params![run_id], |r| {
            Ok(StoredAnswer {
                base: r.get(0)?,
                quarter: r.get(1)?,
                node: r.get(2)?,
                answer: r.get(3)?,
                error: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores the run's results and, when `publish` is given, replaces the public records for the
    /// same indicator, period and group, in one transaction.
    pub fn finish(
        &self,
        run_id: &str,
        status: RunStatus,
        error: Option<&str>,
        records: &[Record],
        publish: Option<&[Published]>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE runs SET status = ?2, error = ?3, records = ?4, published = ?5, updated_at = ?6
             WHERE id = ?1",
            params![
                run_id,
                status.as_str(),
                error,
                serde_json::to_string(records)?,
                publish.is_some(),
                self.now()
            ],
        )?;
        for p in publish.unwrap_or(&[]) {
            tx.execute(
                "INSERT INTO published (indicator, period, grp, run_id, record)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (indicator, period, grp)
                 DO UPDATE SET run_id = excluded.run_id, record = excluded.record",
                params![
                    p.indicator,
                    p.period,
                    serde_json::to_string(&p.group)?,
                    run_id,
                    serde_json::to_string(p)?
                ],
            )?;
        }
        tx.commit()?;
        if status.is_finished() {
            self.erase_reports(&conn, run_id)?;
        }
        Ok(())
    }

    fn run_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Run> {
        let status: String = r.get(3)?;
        Ok(Run {
            id: r.get(0)?,
            indicator: r.get(1)?,
            period: r.get(2)?,
            status: RunStatus::parse(&status),
            requested_by: r.get(4)?,
            created_at: r.get(5)?,
            updated_at: r.get(6)?,
            error: r.get(7)?,
            resumed: r.get(8)?,
            published: r.get(9)?,
        })
    }

    const RUN_COLUMNS: &'static str = "id, indicator, period, status, requested_by, created_at, updated_at, error, resumed, published";

    pub fn run(&self, id: &str) -> Result<Option<(Run, Vec<Record>)>, StoreError> {
        let conn = self.conn()?;
        let row = conn
            .query_row(
                &format!(
                    "SELECT {}, records FROM runs WHERE id = ?1",
                    Self::RUN_COLUMNS
                ),
                params![id],
                |r| Ok((Self::run_from_row(r)?, r.get::<_, Option<String>>(10)?)),
            )
            .optional()?;
        let Some((run, records)) = row else {
            return Ok(None);
        };
        let records = match records {
            Some(text) => serde_json::from_str(&text)?,
            None => Vec::new(),
        };
        Ok(Some((run, records)))
    }

    pub fn unfinished(&self) -> Result<Vec<Run>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM runs WHERE status IN ('pending', 'running') ORDER BY created_at",
            Self::RUN_COLUMNS
        ))?;
        let rows = stmt.query_map([], Self::run_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn count_by_status(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT status, COUNT(*) FROM runs GROUP BY status")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores a new token's hash; the token itself is returned once and never stored.
    pub fn create_token(
        &self,
        name: &str,
        role: Role,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(TokenInfo, String), StoreError> {
        use rand::RngCore;
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let token = format!("stroom_{}", hex::encode(secret));
        let id = hex::encode(&secret[..4]);
        let info = TokenInfo {
            id,
            name: name.to_string(),
            role,
            created_at: self.now(),
            expires_at: expires_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            revoked_at: None,
        };
        self.conn()?.execute(
            "INSERT INTO tokens (id, hash, name, role, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                info.id,
                crate::config::token_hash(&token),
                info.name,
                info.role.as_str(),
                info.created_at,
                info.expires_at
            ],
        )?;
        Ok((info, token))
    }

    fn token_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenInfo> {
        let role: String = r.get(2)?;
        Ok(TokenInfo {
            id: r.get(0)?,
            name: r.get(1)?,
            role: Role::parse(&role).unwrap_or(Role::Researcher),
            created_at: r.get(3)?,
            expires_at: r.get(4)?,
            revoked_at: r.get(5)?,
        })
    }

    pub fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT id, name, role, created_at, expires_at, revoked_at FROM tokens
             ORDER BY created_at",
        )?;
        let rows = stmt.query_map([], Self::token_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revokes a token by id; false when there is no such token or it was already revoked.
    pub fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let n = self.conn()?.execute(
            "UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, self.now()],
        )?;
        Ok(n == 1)
    }

    /// The token with this hash, whatever its state (the caller checks revocation and expiry).
    pub fn token_by_hash(&self, hash: &str) -> Result<Option<TokenInfo>, StoreError> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT id, name, role, created_at, expires_at, revoked_at FROM tokens
                 WHERE hash = ?1",
                params![hash],
                Self::token_from_row,
            )
            .optional()?)
    }

    /// What a presented token's hash is worth now, by the store's clock.
    pub fn check_token(&self, hash: &str) -> Result<TokenCheck, StoreError> {
        let Some(info) = self.token_by_hash(hash)? else {
            return Ok(TokenCheck::Unknown);
        };
        if info.revoked_at.is_some() {
            return Ok(TokenCheck::Revoked(info));
        }
        let expired = info
            .expires_at
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .is_some_and(|t| t <= self.clock.now());
        Ok(if expired {
            TokenCheck::Expired(info)
        } else {
            TokenCheck::Valid(info)
        })
    }

    /// Whether any record of this indicator and quarter is published.
    pub fn is_published(&self, indicator: &str, period: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT 1 FROM published WHERE indicator = ?1 AND period = ?2 LIMIT 1",
                params![indicator, period],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    pub fn set_interpretation(&self, i: &Interpretation) -> Result<(), StoreError> {
        self.conn()?.execute(
            "INSERT INTO interpretations (indicator, period, nl, en, reviewer, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (indicator, period) DO UPDATE SET nl = excluded.nl, en = excluded.en,
                 reviewer = excluded.reviewer, updated_at = excluded.updated_at",
            params![i.indicator, i.period, i.nl, i.en, i.reviewer, i.updated_at],
        )?;
        Ok(())
    }

    pub fn interpretations(&self) -> Result<Vec<Interpretation>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT indicator, period, nl, en, reviewer, updated_at FROM interpretations
             ORDER BY indicator, period",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Interpretation {
                indicator: r.get(0)?,
                period: r.get(1)?,
                nl: r.get(2)?,
                en: r.get(3)?,
                reviewer: r.get(4)?,
                updated_at: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn published(&self) -> Result<Vec<Published>, StoreError> {
        let conn = self.conn()?;
        let mut stmt =
            conn.prepare("SELECT record FROM published ORDER BY indicator, period, grp")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.map(|t| Ok(serde_json::from_str(&t?)?)).collect()
    }
}

/// Moves the write-ahead log into the database and empties it, so erased material survives in
/// neither file.
fn checkpoint(conn: &Connection) -> Result<(), StoreError> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

/// Marks the secret-shared answers stored before version 3 (read from each answer's metadata),
/// with the hash of every stored answer.
fn mark_stored_reports(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    let rows: Vec<(i64, Vec<u8>)> = {
        let mut stmt = tx.prepare("SELECT rowid, answer FROM answers WHERE answer IS NOT NULL")?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?
    };
    for (rowid, bytes) in rows {
        // An answer that does not decode was never usable; it is marked as a report to be safe.
        let secure =
            policies::wire::Answer::decode(&bytes).map_or(true, |a| a.meta.secure.is_some());
        tx.execute(
            "UPDATE answers SET secure = ?2, answer_sha256 = ?3 WHERE rowid = ?1",
            params![rowid, secure, hex::encode(Sha256::digest(&bytes))],
        )?;
    }
    Ok(())
}

/// Upserts a run's answers (or errors) in one transaction.
fn insert_answers(
    conn: &mut Connection,
    run_id: &str,
    answers: &[NewAnswer<'_>],
    at: &str,
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO answers (run_id, base, quarter, node, answer, error, updated_at,
                                  secure, answer_sha256)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (run_id, base, quarter, node)
             DO UPDATE SET answer = excluded.answer, error = excluded.error,
                           updated_at = excluded.updated_at, secure = excluded.secure,
                           answer_sha256 = excluded.answer_sha256",
        )?;
        for a in answers {
            let (bytes, error) = match a.answer {
                Ok(b) => (Some(b), None),
                Err(e) => (None, Some(e)),
            };
            let hash = bytes.map(|b| hex::encode(Sha256::digest(b)));
            stmt.execute(params![
                run_id, a.base, a.quarter, a.node, bytes, error, at, a.secure, hash
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// An expiry given as a duration from now (`90d`, `12h`, `30m`) or a date or time in RFC 3339
/// (`2027-01-01`, `2027-01-01T12:00:00Z`). Must lie in the future.
pub fn parse_expiry(
    text: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let t = text.trim();
    let by_unit =
        |unit: char, secs: i64| -> Option<Result<chrono::DateTime<chrono::Utc>, String>> {
            let n = t.strip_suffix(unit)?;
            Some(
                n.parse::<i64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .and_then(|n| n.checked_mul(secs))
                    .and_then(chrono::TimeDelta::try_seconds)
                    .map(|d| now + d)
                    .ok_or_else(|| {
                        format!("'{text}': the number before '{unit}' must be a positive integer")
                    }),
            )
        };
    let at = if let Some(r) = by_unit('d', 86_400)
        .or_else(|| by_unit('h', 3_600))
        .or_else(|| by_unit('m', 60))
    {
        r?
    } else if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(t) {
        dt.with_timezone(&chrono::Utc)
    } else if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        d.and_hms_opt(0, 0, 0)
            .map(|x| x.and_utc())
            .ok_or_else(|| format!("'{text}' is not a valid date"))?
    } else {
        return Err(format!(
            "'{text}' is neither a duration (90d, 12h, 30m) nor a date (2027-01-01)"
        ));
    };
    if at <= now {
        return Err(format!("'{text}' lies in the past"));
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Every table's rows, as text, to compare a store before and after its upgrade.
    fn dump(conn: &Connection) -> BTreeMap<String, Vec<String>> {
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        tables
            .into_iter()
            .map(|t| {
                let mut stmt = conn.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
                let n = stmt.column_count();
                let mut rows: Vec<String> = stmt
                    .query_map([], |r| {
                        Ok((0..n)
                            .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                            .collect::<Vec<_>>()
                            .join("|"))
                    })
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                rows.sort();
                (t, rows)
            })
            .collect()
    }

    /// A run store written by the release before versioning (the governance test's coordinator:
    /// runs, answers, a publication, an interpretation, tokens, reviewer keys, proposals,
    /// approvals and catalog versions) opens with every row intact and is readable.
    #[test]
    fn a_store_from_the_previous_release_opens_with_every_row_intact() {
        // Version 0 (before versioning) and version 1 (written by the release before the
        // embargo, from the same rows).
        for name in ["runs-v0.sqlite", "runs-v1.sqlite"] {
            upgrade_keeps_every_row(name);
        }
    }

    fn upgrade_keeps_every_row(name: &str) {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.sqlite");
        std::fs::copy(&fixture, &path).unwrap();
        let before = dump(&Connection::open(&path).unwrap());
        assert_eq!(before["runs"].len(), 3);
        assert_eq!(before["proposals"].len(), 3);
        let store = RunStore::open(&path).unwrap();
        let after = dump(&store.conn().unwrap());
        // Old tables keep every row; a table that gained columns keeps its old columns' values
        // (the answers here are per-node ones, which version 3 keeps).
        let old_tables = |d: &BTreeMap<String, Vec<String>>| {
            d.iter()
                .filter(|(t, _)| before.contains_key(*t))
                .map(|(t, rows)| {
                    let width = before[t]
                        .first()
                        .map_or(usize::MAX, |r| r.split('|').count());
                    let mut rows: Vec<String> = rows
                        .iter()
                        .map(|r| r.split('|').take(width).collect::<Vec<_>>().join("|"))
                        .collect();
                    rows.sort();
                    (t.clone(), rows)
                })
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(old_tables(&after), before);
        // Version 2: what was published was public, and stays public (carried into `released`,
        // each of its rounds released "before the embargo").
        assert_eq!(store.released().unwrap(), store.published().unwrap());
        let releases = store.releases().unwrap();
        assert!(!releases.is_empty());
        assert!(
            releases
                .iter()
                .all(|r| r.reviewers == [crate::release::BEFORE_EMBARGO])
        );
        let version: i64 = store
            .conn()
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(store.published().unwrap().len(), before["published"].len());
        assert_eq!(store.interpretations().unwrap().len(), 1);
        assert_eq!(store.list_tokens().unwrap().len(), before["tokens"].len());
        assert_eq!(store.proposals().unwrap().len(), 3);
        drop(store);
        // Reopening changes nothing more; a store from a newer build is refused.
        let store = RunStore::open(&path).unwrap();
        assert_eq!(dump(&store.conn().unwrap()), after);
        store
            .conn()
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(store);
        assert!(matches!(
            RunStore::open(&path),
            Err(StoreError::Newer { found }) if found == SCHEMA_VERSION + 1
        ));
    }

    #[test]
    fn expiry_accepts_durations_and_dates_in_the_future_only() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-24T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            parse_expiry("2d", now).unwrap().to_rfc3339(),
            "2026-11-26T00:00:00+00:00"
        );
        assert_eq!(
            parse_expiry("2027-01-01", now).unwrap().to_rfc3339(),
            "2027-01-01T00:00:00+00:00"
        );
        assert!(parse_expiry("12h", now).is_ok());
        for bad in ["2025-01-01", "0d", "-3d", "soon", "5y", ""] {
            assert!(parse_expiry(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_are_stored_hashed_and_can_be_revoked_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(&dir.path().join("runs.sqlite")).unwrap();
        let (info, token) = store.create_token("ann", Role::Reviewer, None).unwrap();
        let raw = std::fs::read(dir.path().join("runs.sqlite")).unwrap_or_default();
        let wal = std::fs::read(dir.path().join("runs.sqlite-wal")).unwrap_or_default();
        let needle = token.as_bytes();
        for bytes in [&raw, &wal] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "token stored in clear"
            );
        }
        let found = store
            .token_by_hash(&crate::config::token_hash(&token))
            .unwrap()
            .unwrap();
        assert_eq!(
            (found.id.as_str(), found.role),
            (info.id.as_str(), Role::Reviewer)
        );
        assert!(store.revoke_token(&info.id).unwrap());
        assert!(!store.revoke_token(&info.id).unwrap());
        assert!(store.list_tokens().unwrap()[0].revoked_at.is_some());
    }

    /// Expiry and timestamps follow the store's clock: a token valid today is refused once the
    /// clock passes its expiry, and runs carry the clock's time.
    #[test]
    fn tokens_expire_and_runs_are_stamped_by_the_stores_clock() {
        use service::clock::{Clock, ManualClock};
        let dir = tempfile::tempdir().unwrap();
        let start = chrono::DateTime::parse_from_rfc3339("2027-03-01T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let clock = std::sync::Arc::new(ManualClock::new(start));
        let store =
            RunStore::open_with_clock(&dir.path().join("runs.sqlite"), clock.clone()).unwrap();
        let expiry = parse_expiry("2d", clock.now()).unwrap();
        let (info, token) = store
            .create_token("larry", Role::Researcher, Some(expiry))
            .unwrap();
        let hash = crate::config::token_hash(&token);
        assert!(matches!(
            store.check_token(&hash).unwrap(),
            TokenCheck::Valid(_)
        ));
        assert_eq!(info.created_at, "2027-03-01T12:00:00.000Z");
        clock.advance(chrono::Duration::hours(47));
        assert!(matches!(
            store.check_token(&hash).unwrap(),
            TokenCheck::Valid(_)
        ));
        clock.advance(chrono::Duration::hours(2));
        assert!(matches!(
            store.check_token(&hash).unwrap(),
            TokenCheck::Expired(i) if i.id == info.id
        ));
        assert_eq!(
            store.check_token("no such hash").unwrap(),
            TokenCheck::Unknown
        );
        let run = store.create_run("x", "2024Q1", "larry").unwrap();
        let (run, _) = store.run(&run).unwrap().unwrap();
        assert_eq!(run.created_at, "2027-03-03T13:00:00.000Z");
        store.revoke_token(&info.id).unwrap();
        assert!(matches!(
            store.check_token(&hash).unwrap(),
            TokenCheck::Revoked(_)
        ));
    }

    #[test]
    fn a_finished_runs_reports_are_erased_from_disk_and_other_answers_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("runs.sqlite");
        let store = RunStore::open(&path).expect("open");
        let run = store.create_run("x", "2024Q1", "t").expect("run");
        let report = [b"REPORT-MATERIAL-".as_slice(), &[7u8; 5_000]].concat();
        let noisy = [b"NOISY-ANSWER-".as_slice(), &[9u8; 100]].concat();
        store
            .record_answers(
                &run,
                &[
                    NewAnswer {
                        base: "x",
                        quarter: "2024Q1",
                        node: "P01",
                        answer: Ok(&report),
                        secure: true,
                    },
                    NewAnswer {
                        base: "x",
                        quarter: "2024Q1",
                        node: "P02",
                        answer: Ok(&noisy),
                        secure: false,
                    },
                ],
            )
            .expect("record");
        let on_disk = |needle: &[u8]| {
            [path.clone(), dir.path().join("runs.sqlite-wal")]
                .iter()
                .any(|f| {
                    std::fs::read(f).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
                })
        };
        assert!(
            on_disk(b"REPORT-MATERIAL-"),
            "the test must see the stored report"
        );
        store
            .finish(&run, RunStatus::Done, None, &[], None)
            .expect("finish");
        assert!(
            !on_disk(b"REPORT-MATERIAL-"),
            "report material left on disk"
        );
        let answers = store.answers(&run).expect("answers");
        assert_eq!(answers[0].answer, None);
        assert_eq!(answers[1].answer.as_deref(), Some(noisy.as_slice()));
        let hash: String = store
            .conn()
            .expect("conn")
            .query_row(
                "SELECT answer_sha256 FROM answers WHERE node = 'P01' AND erased_at IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .expect("audit row");
        assert_eq!(hash, hex::encode(Sha256::digest(&report)));
    }

    #[test]
    fn answers_replace_earlier_ones_and_leave_the_connection_fully_synced() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(&dir.path().join("runs.sqlite")).unwrap();
        let run = store
            .create_run("care.unique_youths", "2024Q1", "t")
            .unwrap();
        let answer = |node, answer| NewAnswer {
            secure: false,
            base: "care.unique_youths",
            quarter: "2024Q1",
            node,
            answer,
        };
        store
            .record_answers(
                &run,
                &[answer("P01", Err("timed out")), answer("P02", Ok(b"a"))],
            )
            .unwrap();
        store
            .record_answers(&run, &[answer("P01", Ok(b"b"))])
            .unwrap();
        let stored: Vec<_> = store
            .answers(&run)
            .unwrap()
            .into_iter()
            .map(|a| (a.node, a.answer, a.error))
            .collect();
        assert_eq!(
            stored,
            [
                ("P01".to_string(), Some(b"b".to_vec()), None),
                ("P02".to_string(), Some(b"a".to_vec()), None)
            ]
        );
        // Run state written after the answers is synced to disk on commit (FULL = 2).
        let synchronous: i64 = store
            .conn()
            .unwrap()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(synchronous, 2);
    }
}
