//! The durable privacy ledger (SQLite, WAL, `synchronous=FULL`). A release is *reserved* — its ρ
//! counted and synced — before any noise is drawn, and *completed* with the stored answer before the
//! answer leaves. A crash can therefore waste budget but never overspend it, and a repeated request
//! gets the stored answer back: no new noise, no new spend.
//!
//! ρ is kept as integer nano-ρ so that sums and comparisons are exact; spends round up, budgets down.
//!
//! Budgets belong to the *data's* period, not the calendar: each release records the quarters of
//! data it covers, and is charged to the budget of every data year (or quarter) among them, so the
//! same records cannot be queried again with a fresh budget each new year.

use crate::config::BudgetPeriod;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use std::path::{Path, PathBuf};

/// Schema version this build writes; a ledger from a newer build is refused.
pub const SCHEMA_VERSION: i64 = 3;

/// Version 1: the ledger as first released (before versioning it had `user_version` 0 and these
/// same tables, hence `IF NOT EXISTS`).
const V1: &str = "CREATE TABLE IF NOT EXISTS releases (
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
    );";

/// Version 2: the data quarters of every release, which its spend is charged to. Filled for the
/// releases already there from their `period`; `budget_period` keeps what it said when written
/// (the calendar period before version 2, the charged data periods after).
const V2: &str = "CREATE TABLE release_quarters (
        release_key TEXT NOT NULL REFERENCES releases (release_key),
        quarter     TEXT NOT NULL,
        PRIMARY KEY (release_key, quarter)
    );
    CREATE INDEX release_quarters_by_quarter ON release_quarters (quarter);";

/// Version 3: the node's secret key for its snapshot identities (HMAC-SHA256), made once at
/// random and never sent. Answers name their data snapshot by it, so equal data still replays and
/// changed data is a new release, but nobody without the key can test a guess about the records
/// against an answer. Releases already there keep their keys and answers.
const V3: &str = "CREATE TABLE node_secret (
        id           INTEGER PRIMARY KEY CHECK (id = 1),
        snapshot_key BLOB NOT NULL CHECK (length(snapshot_key) = 32)
    );";

/// Length of the snapshot key in bytes.
pub const SNAPSHOT_KEY_LEN: usize = 32;

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
        "privacy ledger {path} has schema version {found}, newer than this build's {SCHEMA_VERSION}: refusing to run on it"
    )]
    Newer { path: PathBuf, found: i64 },
    #[error(
        "privacy ledger {path}: release {key} has period '{period}', which names no quarters; the upgrade stopped and changed nothing"
    )]
    Unmigratable {
        path: PathBuf,
        key: String,
        period: String,
    },
    #[error("privacy ledger {path}: the node's snapshot key: {message}")]
    SnapshotKey { path: PathBuf, message: String },
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

/// How a node's budget is kept: ρ per data period of the given granularity, and optionally a cap
/// on everything it ever releases (each release counted once, whatever it covers).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetRule {
    pub granularity: BudgetPeriod,
    pub rho_per_period: f64,
    pub lifetime_rho: Option<f64>,
}

/// The budget periods a release over these data quarters is charged to.
pub fn charged_periods(granularity: BudgetPeriod, quarters: &[policies::Quarter]) -> Vec<String> {
    let mut out: Vec<String> = match granularity {
        BudgetPeriod::Year => quarters.iter().map(|q| q.year.to_string()).collect(),
        BudgetPeriod::Quarter => quarters.iter().map(|q| q.to_string()).collect(),
        BudgetPeriod::Lifetime => vec![LIFETIME.to_string()],
    };
    out.sort();
    out.dedup();
    out
}

/// The one budget period of `BudgetPeriod::Lifetime`.
pub const LIFETIME: &str = "lifetime";

/// Spend of one budget period: ρ in nano-ρ and the number of releases charged to it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeriodSpend {
    pub period: String,
    pub rho_nano: i64,
    pub releases: u64,
}

pub struct NewRelease<'a> {
    pub key: &'a str,
    /// The data quarters the release covers; its spend is charged to their budget periods.
    pub quarters: &'a [policies::Quarter],
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
        let mut conn = service::sqlite::open(path).map_err(err)?;
        migrate(&mut conn, path)?;
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

    /// The node's secret snapshot key (made by the version 3 migration).
    pub fn snapshot_key(&self) -> Result<[u8; SNAPSHOT_KEY_LEN], LedgerError> {
        let bytes: Vec<u8> = self
            .conn
            .query_row(
                "SELECT snapshot_key FROM node_secret WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        bytes.try_into().map_err(|_| LedgerError::SnapshotKey {
            path: self.path.clone(),
            message: format!("it is not {SNAPSHOT_KEY_LEN} bytes"),
        })
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

    /// Record the spend of a new release, or refuse it when it would exceed the budget of any
    /// data period it covers (or the lifetime cap). Returns the entry already there if the key
    /// was recorded meanwhile.
    pub fn reserve(
        &mut self,
        r: &NewRelease,
        rule: &BudgetRule,
    ) -> Result<Option<Entry>, LedgerError> {
        let cost = to_nano_up(r.rho);
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
        let mut limits: Vec<(BudgetPeriod, String, f64)> =
            charged_periods(rule.granularity, r.quarters)
                .into_iter()
                .map(|p| (rule.granularity, p, rule.rho_per_period))
                .collect();
        if let Some(cap) = rule.lifetime_rho {
            limits.push((BudgetPeriod::Lifetime, LIFETIME.to_string(), cap));
        }
        for (granularity, period, budget) in limits {
            let (spent, _) = spent_in(&tx, granularity, &period).map_err(err)?;
            let budget_nano = to_nano_down(budget);
            if spent.saturating_add(cost) > budget_nano {
                let budget_period = match (granularity, rule.granularity) {
                    (BudgetPeriod::Lifetime, BudgetPeriod::Year | BudgetPeriod::Quarter) => {
                        "the lifetime cap".to_string()
                    }
                    (BudgetPeriod::Lifetime, BudgetPeriod::Lifetime) => {
                        "the node's lifetime budget".to_string()
                    }
                    (BudgetPeriod::Year | BudgetPeriod::Quarter, _) => {
                        format!("data period {period}")
                    }
                };
                return Err(LedgerError::Exhausted {
                    budget_period,
                    cost: r.rho,
                    spent: from_nano(spent),
                    budget,
                    remaining: from_nano((budget_nano - spent).max(0)),
                });
            }
        }
        tx.execute(
            "INSERT INTO releases (release_key, budget_period, indicator, content_hash, period, snapshot, rho_nano, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'reserved')",
            params![r.key, r.budget_period, r.indicator, r.content_hash, r.period, r.snapshot, cost],
        )
        .map_err(err)?;
        for q in r.quarters {
            tx.execute(
                "INSERT OR IGNORE INTO release_quarters (release_key, quarter) VALUES (?1, ?2)",
                params![r.key, q.to_string()],
            )
            .map_err(err)?;
        }
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

    /// (ρ spent in nano-ρ, number of releases) for a budget period of this granularity.
    pub fn spent(
        &self,
        granularity: BudgetPeriod,
        period: &str,
    ) -> Result<(i64, u64), LedgerError> {
        spent_in(&self.conn, granularity, period).map_err(|e| self.err(e))
    }

    /// Every budget period with any spend, oldest first.
    pub fn spend_by_period(
        &self,
        granularity: BudgetPeriod,
    ) -> Result<Vec<PeriodSpend>, LedgerError> {
        let sql = match granularity {
            BudgetPeriod::Year => {
                "SELECT y, SUM(rho_nano), COUNT(*) FROM (
                     SELECT DISTINCT r.release_key, substr(q.quarter, 1, 4) AS y, r.rho_nano
                     FROM releases r JOIN release_quarters q USING (release_key))
                 GROUP BY y ORDER BY y"
            }
            BudgetPeriod::Quarter => {
                "SELECT q.quarter, SUM(r.rho_nano), COUNT(*)
                 FROM releases r JOIN release_quarters q USING (release_key)
                 GROUP BY q.quarter ORDER BY q.quarter"
            }
            BudgetPeriod::Lifetime => {
                "SELECT 'lifetime', SUM(rho_nano), COUNT(*) FROM releases HAVING COUNT(*) > 0"
            }
        };
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(PeriodSpend {
                    period: r.get(0)?,
                    rho_nano: r.get(1)?,
                    releases: r.get::<_, i64>(2)? as u64,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// ρ of every release ever recorded (each once) and their number.
    pub fn total(&self) -> Result<(i64, u64), LedgerError> {
        spent_in(&self.conn, BudgetPeriod::Lifetime, LIFETIME).map_err(|e| self.err(e))
    }
}

/// (ρ in nano-ρ, releases) charged to one budget period: the releases covering any of its data
/// quarters, each counted once.
fn spent_in(
    conn: &Connection,
    granularity: BudgetPeriod,
    period: &str,
) -> rusqlite::Result<(i64, u64)> {
    let sql = match granularity {
        BudgetPeriod::Year => {
            "SELECT COALESCE(SUM(rho_nano), 0), COUNT(*) FROM releases WHERE release_key IN
                 (SELECT release_key FROM release_quarters WHERE substr(quarter, 1, 4) = ?1)"
        }
        BudgetPeriod::Quarter => {
            "SELECT COALESCE(SUM(rho_nano), 0), COUNT(*) FROM releases WHERE release_key IN
                 (SELECT release_key FROM release_quarters WHERE quarter = ?1)"
        }
        BudgetPeriod::Lifetime => "SELECT COALESCE(SUM(rho_nano), 0), COUNT(*) FROM releases",
    };
    let row = |r: &rusqlite::Row<'_>| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u64));
    match granularity {
        BudgetPeriod::Year | BudgetPeriod::Quarter => conn.query_row(sql, params![period], row),
        BudgetPeriod::Lifetime => conn.query_row(sql, [], row),
    }
}

/// Bring a ledger to [`SCHEMA_VERSION`] in one transaction: all of it or nothing.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), LedgerError> {
    let err = |source| LedgerError::Sql {
        path: path.to_path_buf(),
        source,
    };
    let version = match service::sqlite::schema(conn, SCHEMA_VERSION).map_err(err)? {
        service::sqlite::Schema::At(v) => v,
        service::sqlite::Schema::Newer(found) => {
            return Err(LedgerError::Newer {
                path: path.to_path_buf(),
                found,
            });
        }
    };
    let tx = conn.transaction().map_err(err)?;
    if version < 1 {
        tx.execute_batch(V1).map_err(err)?;
    }
    if version < 2 {
        tx.execute_batch(V2).map_err(err)?;
        backfill_quarters(&tx, path)?;
    }
    if version < 3 {
        tx.execute_batch(V3).map_err(err)?;
        let mut key = [0u8; SNAPSHOT_KEY_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).map_err(
            |_| LedgerError::SnapshotKey {
                path: path.to_path_buf(),
                message: "the system's random number generator failed to make it".into(),
            },
        )?;
        tx.execute(
            "INSERT INTO node_secret (id, snapshot_key) VALUES (1, ?1)",
            params![key.as_slice()],
        )
        .map_err(err)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(err)?;
    tx.commit().map_err(err)
}

/// The data quarters of every release written before version 2, from its `period`.
fn backfill_quarters(tx: &Transaction<'_>, path: &Path) -> Result<(), LedgerError> {
    let err = |source| LedgerError::Sql {
        path: path.to_path_buf(),
        source,
    };
    let releases: Vec<(String, String)> = {
        let mut stmt = tx
            .prepare("SELECT release_key, period FROM releases")
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)?
    };
    for (key, period) in releases {
        let quarters = match period.parse::<policies::Period>() {
            Ok(p) => p.quarters(),
            Err(_) => vec![],
        };
        if quarters.is_empty() {
            return Err(LedgerError::Unmigratable {
                path: path.to_path_buf(),
                key,
                period,
            });
        }
        for q in quarters {
            tx.execute(
                "INSERT INTO release_quarters (release_key, quarter) VALUES (?1, ?2)",
                params![key, q.to_string()],
            )
            .map_err(err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use policies::Quarter;

    fn quarters(period: &str) -> Vec<Quarter> {
        period.parse::<policies::Period>().unwrap().quarters()
    }

    fn release<'a>(key: &'a str, qs: &'a [Quarter], rho: f64) -> NewRelease<'a> {
        NewRelease {
            key,
            quarters: qs,
            budget_period: "2024",
            indicator: "x",
            content_hash: "h",
            period: "2024Q1",
            snapshot: "s",
            rho,
        }
    }

    const YEARLY: BudgetRule = BudgetRule {
        granularity: BudgetPeriod::Year,
        rho_per_period: 1.0,
        lifetime_rho: None,
    };

    #[test]
    fn refuses_over_budget_and_keeps_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(&dir.path().join("l.sqlite")).unwrap();
        let q1 = quarters("2024Q1");
        assert_eq!(l.reserve(&release("a", &q1, 0.3), &YEARLY).unwrap(), None);
        assert_eq!(l.reserve(&release("b", &q1, 0.3), &YEARLY).unwrap(), None);
        assert_eq!(l.reserve(&release("c", &q1, 0.4), &YEARLY).unwrap(), None);
        let e = l.reserve(&release("d", &q1, 0.1), &YEARLY).unwrap_err();
        assert!(matches!(e, LedgerError::Exhausted { .. }), "{e}");
        assert!(e.to_string().contains("data period 2024"), "{e}");
        assert_eq!(
            l.spent(BudgetPeriod::Year, "2024").unwrap(),
            (1_000_000_000, 3)
        );
        assert_eq!(l.spent(BudgetPeriod::Year, "2025").unwrap(), (0, 0));
        assert_eq!(l.lookup("d").unwrap(), None);
        // Another data year has its own budget.
        let next = quarters("2025Q1");
        assert_eq!(l.reserve(&release("e", &next, 0.9), &YEARLY).unwrap(), None);
    }

    #[test]
    fn a_release_spanning_two_data_years_charges_both_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(&dir.path().join("l.sqlite")).unwrap();
        let span = quarters("2023Q4:2024Q1");
        l.reserve(&release("span", &span, 0.6), &YEARLY).unwrap();
        assert_eq!(
            l.spent(BudgetPeriod::Year, "2023").unwrap(),
            (600_000_000, 1)
        );
        assert_eq!(
            l.spent(BudgetPeriod::Year, "2024").unwrap(),
            (600_000_000, 1)
        );
        // Counted once in the total, and once per quarter it covers.
        assert_eq!(l.total().unwrap(), (600_000_000, 1));
        assert_eq!(
            l.spent(BudgetPeriod::Quarter, "2023Q4").unwrap(),
            (600_000_000, 1)
        );
        // 2023 has 0.4 left: a 0.5 release over 2023 alone is refused, one over 2024Q2 too
        // only if it would pass 2024's budget.
        let y2023 = quarters("2023Q3");
        let e = l
            .reserve(&release("old", &y2023, 0.5), &YEARLY)
            .unwrap_err();
        assert!(e.to_string().contains("data period 2023"), "{e}");
        assert_eq!(
            l.spend_by_period(BudgetPeriod::Year).unwrap(),
            vec![
                PeriodSpend {
                    period: "2023".into(),
                    rho_nano: 600_000_000,
                    releases: 1
                },
                PeriodSpend {
                    period: "2024".into(),
                    rho_nano: 600_000_000,
                    releases: 1
                },
            ]
        );
    }

    #[test]
    fn the_lifetime_cap_bounds_all_data_periods_together() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(&dir.path().join("l.sqlite")).unwrap();
        let rule = BudgetRule {
            lifetime_rho: Some(1.5),
            ..YEARLY
        };
        let (a, b, c) = (quarters("2022Q1"), quarters("2023Q1"), quarters("2024Q1"));
        l.reserve(&release("a", &a, 0.8), &rule).unwrap();
        l.reserve(&release("b", &b, 0.6), &rule).unwrap();
        // 2024's own budget has room, the lifetime cap does not.
        let e = l.reserve(&release("c", &c, 0.2), &rule).unwrap_err();
        assert!(e.to_string().contains("lifetime cap"), "{e}");
        assert_eq!(l.lookup("c").unwrap(), None);
    }

    #[test]
    fn repeated_key_is_not_charged_twice_and_completes_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sqlite");
        let mut l = Ledger::open(&path).unwrap();
        let q1 = quarters("2024Q1");
        l.reserve(&release("a", &q1, 0.5), &YEARLY).unwrap();
        let again = l.reserve(&release("a", &q1, 0.5), &YEARLY).unwrap();
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
        assert_eq!(l.spent(BudgetPeriod::Year, "2024").unwrap().0, 500_000_000);
    }

    /// A ledger written by the release before versioning (`stroom demo --providers 2`, provider
    /// P01: 144 releases over 2023Q1–2024Q4, all charged to calendar year 2026) opens after the
    /// upgrade with every entry intact, each charged to the data year of its quarter.
    #[test]
    fn the_upgrade_keeps_every_entry_of_a_ledger_from_the_previous_release() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ledger-v1.sqlite");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sqlite");
        std::fs::copy(&fixture, &path).unwrap();
        type Row = (String, String, i64, Option<Vec<u8>>);
        let rows = |conn: &Connection| -> Vec<Row> {
            let mut stmt = conn
                .prepare("SELECT release_key, period, rho_nano, answer FROM releases ORDER BY release_key")
                .unwrap();
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let before = rows(&Connection::open(&path).unwrap());
        assert_eq!(before.len(), 144);
        let l = Ledger::open(&path).unwrap();
        assert_eq!(
            rows(&l.conn),
            before,
            "every entry, answer and spend is kept"
        );
        for (key, period, _, answer) in &before {
            assert_eq!(
                l.lookup(key).unwrap(),
                Some(Entry::Released {
                    answer: answer.clone().unwrap()
                })
            );
            let quarters: Vec<String> = l
                .conn
                .prepare("SELECT quarter FROM release_quarters WHERE release_key = ?1")
                .unwrap()
                .query_map(params![key], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert_eq!(quarters, std::slice::from_ref(period), "{key}");
        }
        let total: i64 = before.iter().map(|r| r.2).sum();
        let by_year = l.spend_by_period(BudgetPeriod::Year).unwrap();
        assert_eq!(
            by_year
                .iter()
                .map(|p| p.period.as_str())
                .collect::<Vec<_>>(),
            ["2023", "2024"]
        );
        assert_eq!(by_year.iter().map(|p| p.rho_nano).sum::<i64>(), total);
        assert_eq!(l.total().unwrap(), (total, 144));
        // Version 3 made the node's snapshot key, at random.
        let key = l.snapshot_key().unwrap();
        assert_ne!(key, [0u8; SNAPSHOT_KEY_LEN]);
        drop(l);
        // Opening again changes nothing more, the key included.
        let l = Ledger::open(&path).unwrap();
        assert_eq!(rows(&l.conn), before);
        assert_eq!(l.spend_by_period(BudgetPeriod::Year).unwrap(), by_year);
        assert_eq!(l.snapshot_key().unwrap(), key);
    }

    #[test]
    fn every_ledger_has_its_own_snapshot_key() {
        let dir = tempfile::tempdir().unwrap();
        let a = Ledger::open(&dir.path().join("a.sqlite")).unwrap();
        let b = Ledger::open(&dir.path().join("b.sqlite")).unwrap();
        assert_ne!(a.snapshot_key().unwrap(), b.snapshot_key().unwrap());
    }

    #[test]
    fn a_ledger_from_a_newer_build_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sqlite");
        drop(Ledger::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        assert!(matches!(
            Ledger::open(&path),
            Err(LedgerError::Newer { found, .. }) if found == SCHEMA_VERSION + 1
        ));
    }

    /// A version-1 ledger with an entry whose period names no quarters: the upgrade stops, and
    /// the ledger is left exactly as it was.
    #[test]
    fn an_entry_the_upgrade_cannot_place_stops_it_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(V1).unwrap();
        conn.execute(
            "INSERT INTO releases (release_key, budget_period, indicator, content_hash, period, snapshot, rho_nano, state)
             VALUES ('k', '2026', 'x', 'h', 'not-a-period', 's', 5, 'reserved')",
            [],
        )
        .unwrap();
        drop(conn);
        let e = Ledger::open(&path).err().expect("refused");
        assert!(matches!(e, LedgerError::Unmigratable { .. }), "{e}");
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 0);
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM releases", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }
}
