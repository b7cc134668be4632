//! The durable privacy ledger (SQLite, WAL, `synchronous=FULL`). A release is *reserved* — its ρ
//! counted and synced — before any noise is drawn, and *completed* with the stored answer before the
//! answer leaves. A crash can therefore waste budget but never overspend it, and a repeated request
//! gets the stored answer back: no new noise, no new spend.
//!
//! ρ is kept as integer nano-ρ so that sums and comparisons are exact; spends round up, budgets down.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::path::{Path, PathBuf};

pub const NANO: f64 = 1e9;

pub fn to_nano_up(rho: f64) -> i64 {
    (rho * NANO).ceil() as i64
}

pub fn to_nano_down(rho: f64) -> i64 {
    (rho * NANO).floor() as i64
}

pub fn from_nano(n: i64) -> f64 {
    n as f64 / NANO
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("privacy ledger {path}: {source}")]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "privacy budget exhausted for {budget_period}: this release costs ρ={cost}, {spent} of {budget} is spent, {remaining} remains; nothing was released"
    )]
    Exhausted {
        budget_period: String,
        cost: f64,
        spent: f64,
        budget: f64,
        remaining: f64,
    },
}

/// What the ledger knows about a release key.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// Spend recorded, answer not stored: a crash (or failure) came in between.
    Reserved {
        rho_nano: i64,
        budget_period: String,
    },
    /// The stored answer, to be returned as is.
    Released { answer: Vec<u8> },
}

pub struct NewRelease<'a> {
    pub key: &'a str,
    pub budget_period: &'a str,
    pub indicator: &'a str,
    pub content_hash: &'a str,
    pub period: &'a str,
    pub snapshot: &'a str,
    pub rho: f64,
}

pub struct Ledger {
    conn: Connection,
    path: PathBuf,
}

impl Ledger {
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        let err = |source| LedgerError::Sql {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        }
        let conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS releases (
                release_key   TEXT PRIMARY KEY,
                budget_period TEXT NOT NULL,
                indicator     TEXT NOT NULL,
                content_hash  TEXT NOT NULL,
                period        TEXT NOT NULL,
                snapshot      TEXT NOT NULL,
                rho_nano      INTEGER NOT NULL CHECK (rho_nano > 0),
                state         TEXT NOT NULL CHECK (state IN ('reserved', 'released')),
                answer        BLOB,
                reserved_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
                released_at   TEXT
            );
            CREATE INDEX IF NOT EXISTS releases_by_period ON releases (budget_period);
            CREATE TABLE IF NOT EXISTS acceptances (
                indicator     TEXT NOT NULL,
                content_hash  TEXT NOT NULL,
                accepted_by   TEXT NOT NULL,
                accepted_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
                PRIMARY KEY (indicator, content_hash)
            );",
        )
        .map_err(err)?;
        Ok(Ledger {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, source: rusqlite::Error) -> LedgerError {
        LedgerError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    /// Records the operator's local acceptance of one exact indicator content.
    pub fn accept(&self, indicator: &str, content_hash: &str, by: &str) -> Result<(), LedgerError> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO acceptances (indicator, content_hash, accepted_by)
                 VALUES (?1, ?2, ?3)",
                params![indicator, content_hash, by],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Whether the operator accepted this indicator with exactly this content.
    pub fn is_accepted(&self, indicator: &str, content_hash: &str) -> Result<bool, LedgerError> {
        self.conn
            .query_row(
                "SELECT 1 FROM acceptances WHERE indicator = ?1 AND content_hash = ?2",
                params![indicator, content_hash],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(|e| self.err(e))
    }

    pub fn lookup(&self, key: &str) -> Result<Option<Entry>, LedgerError> {
        self.conn
            .query_row(
                "SELECT state, answer, rho_nano, budget_period FROM releases WHERE release_key = ?1",
                params![key],
                |r| {
                    let state: String = r.get(0)?;
                    let answer: Option<Vec<u8>> = r.get(1)?;
                    let rho_nano: i64 = r.get(2)?;
                    let budget_period: String = r.get(3)?;
                    Ok(match (state.as_str(), answer) {
                        ("released", Some(answer)) => Entry::Released { answer },
                        _ => Entry::Reserved {
                            rho_nano,
                            budget_period,
                        },
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Record the spend of a new release, or refuse it when it would exceed `budget` for its
    /// budget period. Returns the entry already there if the key was recorded meanwhile.
    pub fn reserve(&mut self, r: &NewRelease, budget: f64) -> Result<Option<Entry>, LedgerError> {
        let cost = to_nano_up(r.rho);
        let budget_nano = to_nano_down(budget);
        let path = self.path.clone();
        let err = |source| LedgerError::Sql {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let existing: Option<String> = tx
            .query_row(
                "SELECT state FROM releases WHERE release_key = ?1",
                params![r.key],
                |row| row.get(0),
            )
            .optional()
            .map_err(err)?;
        if existing.is_some() {
            drop(tx);
            return self.lookup(r.key);
        }
        let spent: i64 = tx
            .query_row(
                "SELECT COALESCE(SUM(rho_nano), 0) FROM releases WHERE budget_period = ?1",
                params![r.budget_period],
                |row| row.get(0),
            )
            .map_err(err)?;
        if spent.saturating_add(cost) > budget_nano {
            return Err(LedgerError::Exhausted {
                budget_period: r.budget_period.to_string(),
                cost: r.rho,
                spent: from_nano(spent),
                budget,
                remaining: from_nano((budget_nano - spent).max(0)),
            });
        }
        tx.execute(
            "INSERT INTO releases (release_key, budget_period, indicator, content_hash, period, snapshot, rho_nano, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'reserved')",
            params![r.key, r.budget_period, r.indicator, r.content_hash, r.period, r.snapshot, cost],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(None)
    }

    /// Store the answer of a reserved release. Only a reserved release can be completed, once.
    pub fn complete(&mut self, key: &str, answer: &[u8]) -> Result<(), LedgerError> {
        let n = self
            .conn
            .execute(
                "UPDATE releases SET state = 'released', answer = ?2,
                        released_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                 WHERE release_key = ?1 AND state = 'reserved'",
                params![key, answer],
            )
            .map_err(|e| self.err(e))?;
        if n != 1 {
            return Err(self.err(rusqlite::Error::StatementChangedRows(n)));
        }
        Ok(())
    }

    /// (ρ spent in nano-ρ, number of releases) for a budget period.
    pub fn spent(&self, budget_period: &str) -> Result<(i64, u64), LedgerError> {
        self.conn
            .query_row(
                "SELECT COALESCE(SUM(rho_nano), 0), COUNT(*) FROM releases WHERE budget_period = ?1",
                params![budget_period],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u64)),
            )
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release<'a>(key: &'a str, rho: f64) -> NewRelease<'a> {
        NewRelease {
            key,
            budget_period: "2026",
            indicator: "x",
            content_hash: "h",
            period: "2024Q1",
            snapshot: "s",
            rho,
        }
    }

    #[test]
    fn refuses_over_budget_and_keeps_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(&dir.path().join("l.sqlite")).unwrap();
        assert_eq!(l.reserve(&release("a", 0.3), 1.0).unwrap(), None);
        assert_eq!(l.reserve(&release("b", 0.3), 1.0).unwrap(), None);
        assert_eq!(l.reserve(&release("c", 0.4), 1.0).unwrap(), None);
        let e = l.reserve(&release("d", 0.1), 1.0).unwrap_err();
        assert!(matches!(e, LedgerError::Exhausted { .. }), "{e}");
        assert_eq!(l.spent("2026").unwrap(), (1_000_000_000, 3));
        assert_eq!(l.spent("2027").unwrap(), (0, 0));
        assert_eq!(l.lookup("d").unwrap(), None);
    }

    #[test]
    fn repeated_key_is_not_charged_twice_and_completes_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sqlite");
        let mut l = Ledger::open(&path).unwrap();
        l.reserve(&release("a", 0.5), 1.0).unwrap();
        let again = l.reserve(&release("a", 0.5), 1.0).unwrap();
        assert!(matches!(again, Some(Entry::Reserved { .. })));
        l.complete("a", b"answer").unwrap();
        assert!(l.complete("a", b"other").is_err());
        drop(l);
        let l = Ledger::open(&path).unwrap();
        assert_eq!(
            l.lookup("a").unwrap(),
            Some(Entry::Released {
                answer: b"answer".to_vec()
            })
        );
        assert_eq!(l.spent("2026").unwrap().0, 500_000_000);
    }
}
