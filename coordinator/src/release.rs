//! The embargo. A finished run writes its publishable records to the store's `published` table,
//! which only token holders read. The public (`/v1/indicators` without a token, its CSV, the
//! dashboard) reads `released`: a copy of a round's records made when enough reviewers release
//! the round. A re-run after a release changes nothing public until the round is released again.
//!
//! A round is one quarter's publication: the quarter's records and, in a fourth quarter, the
//! calendar year's annual figures (period `2024`).

use crate::publish::Published;
use crate::store::{RunStore, StoreError};
use policies::Quarter;
use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};
use serde::Serialize;

/// Schema version 2: rounds, release approvals and the released copy.
pub(crate) const SCHEMA_V2: &str = "
    CREATE TABLE rounds (
        quarter TEXT PRIMARY KEY,
        requested_by TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE round_runs (
        quarter TEXT NOT NULL REFERENCES rounds(quarter),
        indicator TEXT NOT NULL,
        run_id TEXT NOT NULL REFERENCES runs(id),
        PRIMARY KEY (quarter, indicator)
    );
    CREATE TABLE release_approvals (
        quarter TEXT NOT NULL,
        reviewer TEXT NOT NULL,
        digest TEXT NOT NULL,
        at TEXT NOT NULL,
        PRIMARY KEY (quarter, reviewer)
    );
    CREATE TABLE releases (
        quarter TEXT PRIMARY KEY,
        released_at TEXT NOT NULL,
        reviewers TEXT NOT NULL,
        digest TEXT NOT NULL
    );
    CREATE TABLE released (
        indicator TEXT NOT NULL,
        period TEXT NOT NULL,
        grp TEXT NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (indicator, period, grp)
    );";

/// Who released the figures that were public before the embargo existed (schema version 1).
pub const BEFORE_EMBARGO: &str = "(public before the embargo)";

/// The record periods a round publishes: its quarter and, for a fourth quarter, the year.
pub fn round_periods(quarter: Quarter) -> Vec<String> {
    let mut periods = vec![quarter.to_string()];
    if quarter.q == 4 {
        periods.push(quarter.year.to_string());
    }
    periods
}

/// The round that publishes records of `period` (`2024Q3`, or `2024` for annual figures).
pub fn round_of(period: &str) -> Option<Quarter> {
    if let Ok(q) = period.parse::<Quarter>() {
        return Some(q);
    }
    period.parse::<i32>().ok().and_then(|y| Quarter::new(y, 4))
}

/// A released round, as the public sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Release {
    pub quarter: String,
    /// The record periods it made public.
    pub periods: Vec<String>,
    pub released_at: String,
    pub reviewers: Vec<String>,
    /// sha256 over the released records, as in the audit log.
    pub digest: String,
}

impl Release {
    /// The day it was released, `YYYY-MM-DD`.
    pub fn day(&self) -> &str {
        self.released_at.get(..10).unwrap_or(&self.released_at)
    }
}

/// What one reviewer's release did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ReleaseOutcome {
    /// Recorded; more reviewers must release the same records.
    AwaitingReleases {
        quarter: String,
        released_by: Vec<String>,
        required: usize,
        digest: String,
    },
    /// The round's records are public from now.
    Released(Release),
    /// These exact records were already public; nothing changed.
    Unchanged(Release),
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("nothing to release for {0}: no finished run has published figures for it")]
    NothingToRelease(String),
    #[error(
        "round {quarter} is still running ({unfinished} run(s) unfinished); release it when it has finished"
    )]
    RoundUnfinished { quarter: String, unfinished: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for ReleaseError {
    fn from(e: rusqlite::Error) -> Self {
        ReleaseError::Store(StoreError::Sql(e))
    }
}

/// The published rows of `periods`, ordered, as (indicator, period, grp, record JSON).
fn pending_rows(
    tx: &Transaction<'_>,
    periods: &[String],
) -> rusqlite::Result<Vec<(String, String, String, String)>> {
    let mut stmt = tx.prepare_cached(
        "SELECT indicator, period, grp, record FROM published WHERE period = ?1
         ORDER BY indicator, period, grp",
    )?;
    let mut rows = Vec::new();
    for p in periods {
        let found = stmt.query_map(params![p], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        for row in found {
            rows.push(row?);
        }
    }
    Ok(rows)
}

fn digest_of(rows: &[(String, String, String, String)]) -> String {
    let mut text = String::new();
    for (_, _, _, record) in rows {
        text.push_str(record);
        text.push('\n');
    }
    policies::audit::digest(text.as_bytes())
}

fn release_row(tx: &Transaction<'_>, quarter: &str) -> rusqlite::Result<Option<Release>> {
    tx.query_row(
        "SELECT released_at, reviewers, digest FROM releases WHERE quarter = ?1",
        params![quarter],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        },
    )
    .optional()
    .map(|row| {
        row.map(|(released_at, reviewers, digest)| Release {
            quarter: quarter.to_string(),
            periods: round_of(quarter).map(round_periods).unwrap_or_default(),
            released_at,
            reviewers: serde_json::from_str(&reviewers).unwrap_or_default(),
            digest,
        })
    })
}

/// Copies `rows` into `released` in place of what was public for `periods`.
fn make_public(
    tx: &Transaction<'_>,
    periods: &[String],
    rows: &[(String, String, String, String)],
) -> rusqlite::Result<()> {
    for p in periods {
        tx.execute("DELETE FROM released WHERE period = ?1", params![p])?;
    }
    let mut insert = tx.prepare_cached(
        "INSERT INTO released (indicator, period, grp, record) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (indicator, period, grp, record) in rows {
        insert.execute(params![indicator, period, grp, record])?;
    }
    Ok(())
}

/// Migration to version 2: whatever version 1 had published was public, and stays so, released
/// by [`BEFORE_EMBARGO`] at the time of the upgrade.
pub(crate) fn carry_over_public(tx: &Transaction<'_>, now: &str) -> rusqlite::Result<()> {
    let periods: Vec<String> = {
        let mut stmt = tx.prepare("SELECT DISTINCT period FROM published ORDER BY period")?;
        stmt.query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?
    };
    let mut rounds: Vec<Quarter> = periods.iter().filter_map(|p| round_of(p)).collect();
    rounds.sort();
    rounds.dedup();
    for q in rounds {
        let periods = round_periods(q);
        let rows = pending_rows(tx, &periods)?;
        make_public(tx, &periods, &rows)?;
        tx.execute(
            "INSERT INTO releases (quarter, released_at, reviewers, digest) VALUES (?1, ?2, ?3, ?4)",
            params![
                q.to_string(),
                now,
                serde_json::json!([BEFORE_EMBARGO]).to_string(),
                digest_of(&rows)
            ],
        )?;
    }
    Ok(())
}

impl RunStore {
    /// Records `reviewer`'s release of round `quarter`'s current records; with `required`
    /// distinct reviewers having released the same records, makes them public. One transaction.
    pub fn release(
        &self,
        quarter: Quarter,
        reviewer: &str,
        required: usize,
    ) -> Result<ReleaseOutcome, ReleaseError> {
        let now = self.now();
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let key = quarter.to_string();
        let unfinished: usize = tx.query_row(
            "SELECT COUNT(*) FROM round_runs rr JOIN runs r ON r.id = rr.run_id
             WHERE rr.quarter = ?1 AND r.status IN ('pending', 'running')",
            params![key],
            |r| r.get(0),
        )?;
        if unfinished > 0 {
            return Err(ReleaseError::RoundUnfinished {
                quarter: key,
                unfinished,
            });
        }
        let periods = round_periods(quarter);
        let rows = pending_rows(&tx, &periods)?;
        if rows.is_empty() {
            return Err(ReleaseError::NothingToRelease(key));
        }
        let digest = digest_of(&rows);
        if let Some(existing) = release_row(&tx, &key)?
            && existing.digest == digest
        {
            return Ok(ReleaseOutcome::Unchanged(existing));
        }
        // A reviewer's release of other figures is replaced (a new row, so that the order of
        // rows is the order of the releases of these figures); a repeat of the same is kept.
        tx.execute(
            "DELETE FROM release_approvals WHERE quarter = ?1 AND reviewer = ?2 AND digest <> ?3",
            params![key, reviewer, digest],
        )?;
        tx.execute(
            "INSERT INTO release_approvals (quarter, reviewer, digest, at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (quarter, reviewer) DO NOTHING",
            params![key, reviewer, digest, now],
        )?;
        // Only releases of these very records count: a re-run since voids earlier ones.
        let released_by: Vec<String> = {
            let mut stmt = tx.prepare(
                "SELECT reviewer FROM release_approvals WHERE quarter = ?1 AND digest = ?2
                 ORDER BY rowid",
            )?;
            stmt.query_map(params![key, digest], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        let outcome = if released_by.len() >= required {
            make_public(&tx, &periods, &rows)?;
            tx.execute(
                "INSERT INTO releases (quarter, released_at, reviewers, digest) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (quarter) DO UPDATE SET released_at = excluded.released_at,
                     reviewers = excluded.reviewers, digest = excluded.digest",
                params![key, now, serde_json::to_string(&released_by).map_err(StoreError::Json)?, digest],
            )?;
            tx.execute(
                "DELETE FROM release_approvals WHERE quarter = ?1",
                params![key],
            )?;
            ReleaseOutcome::Released(Release {
                quarter: key,
                periods,
                released_at: now,
                reviewers: released_by,
                digest,
            })
        } else {
            ReleaseOutcome::AwaitingReleases {
                quarter: key,
                released_by,
                required,
                digest,
            }
        };
        tx.commit()?;
        Ok(outcome)
    }

    /// Reviewers who released round `quarter`'s records and wait for more.
    pub fn release_approvals(&self, quarter: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare("SELECT reviewer FROM release_approvals WHERE quarter = ?1 ORDER BY rowid")?;
        let rows = stmt.query_map(params![quarter], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// sha256 over round `quarter`'s current (embargoed) records; None when it has none.
    pub fn round_digest(&self, quarter: Quarter) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let rows = pending_rows(&tx, &round_periods(quarter))?;
        Ok((!rows.is_empty()).then(|| digest_of(&rows)))
    }

    /// Every released round, oldest first.
    pub fn releases(&self) -> Result<Vec<Release>, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let quarters: Vec<String> = {
            let mut stmt = tx.prepare("SELECT quarter FROM releases ORDER BY quarter")?;
            stmt.query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        let mut out = Vec::new();
        for q in quarters {
            if let Some(r) = release_row(&tx, &q)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The public records: those of released rounds, as they were when released.
    pub fn released(&self) -> Result<Vec<Published>, StoreError> {
        let conn = self.conn()?;
        let mut stmt =
            conn.prepare("SELECT record FROM released ORDER BY indicator, period, grp")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.map(|t| Ok(serde_json::from_str(&t?)?)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RunStatus;

    fn record(indicator: &str, period: &str, estimate: f64) -> Published {
        Published {
            indicator: indicator.into(),
            period: period.into(),
            group: Default::default(),
            estimate: Some(estimate),
            ci_low: Some(estimate - 1.0),
            ci_high: Some(estimate + 1.0),
            suppressed: false,
            providers_reporting: 1,
            providers_total: 1,
            complete: true,
            rho: 0.05,
        }
    }

    /// A finished run that published `records`.
    fn publish(store: &RunStore, records: &[Published]) -> String {
        let run = store.create_run("x", "2024Q4", "tester").unwrap();
        store
            .finish(&run, RunStatus::Done, None, &[], Some(records))
            .unwrap();
        run
    }

    #[test]
    fn releases_count_only_for_the_same_figures_and_a_rerun_stays_embargoed() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(&dir.path().join("runs.sqlite")).unwrap();
        let q4: Quarter = "2024Q4".parse().unwrap();
        assert!(matches!(
            store.release(q4, "ann", 2),
            Err(ReleaseError::NothingToRelease(q)) if q == "2024Q4"
        ));
        let first = [record("a", "2024Q4", 10.0), record("b", "2024", 3.0)];
        publish(&store, &first);
        let ReleaseOutcome::AwaitingReleases { released_by, .. } =
            store.release(q4, "ann", 2).unwrap()
        else {
            panic!("one of two reviewers released")
        };
        assert_eq!(released_by, ["ann"]);
        // Ann's release was of the first figures; a re-run since voids it.
        let second = [record("a", "2024Q4", 11.0), record("b", "2024", 3.0)];
        publish(&store, &second);
        let ReleaseOutcome::AwaitingReleases { released_by, .. } =
            store.release(q4, "bob", 2).unwrap()
        else {
            panic!("ann's release was of other figures")
        };
        assert_eq!(released_by, ["bob"]);
        assert!(store.released().unwrap().is_empty());
        let ReleaseOutcome::Released(release) = store.release(q4, "ann", 2).unwrap() else {
            panic!("two reviewers released the same figures")
        };
        assert_eq!(release.reviewers, ["bob", "ann"]);
        assert_eq!(release.periods, ["2024Q4", "2024"]);
        let mut public = store.released().unwrap();
        public.sort_by(|x, y| x.indicator.cmp(&y.indicator));
        assert_eq!(public, second);
        // A later re-run changes nothing public until the round is released again.
        let third = [record("a", "2024Q4", 12.0), record("b", "2024", 3.0)];
        publish(&store, &third);
        assert_eq!(store.released().unwrap().len(), 2);
        assert!(store.released().unwrap().contains(&second[0]));
        assert_ne!(
            store.round_digest(q4).unwrap(),
            Some(release.digest.clone())
        );
        let ReleaseOutcome::Released(again) = store.release(q4, "ann", 1).unwrap() else {
            panic!("one reviewer is enough here")
        };
        assert!(store.released().unwrap().contains(&third[0]));
        assert!(matches!(
            store.release(q4, "bob", 1).unwrap(),
            ReleaseOutcome::Unchanged(r) if r.digest == again.digest
        ));
        // Other rounds are untouched: 2024Q3 has nothing of its own.
        assert!(
            store
                .releases()
                .unwrap()
                .iter()
                .all(|r| r.quarter == "2024Q4")
        );
    }

    #[test]
    fn a_round_with_runs_still_going_is_not_released() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(&dir.path().join("runs.sqlite")).unwrap();
        let q3: Quarter = "2024Q3".parse().unwrap();
        publish(&store, &[record("a", "2024Q3", 10.0)]);
        let pending = store.create_run("b", "2024Q3", "tester").unwrap();
        {
            let conn = store.conn().unwrap();
            conn.execute(
                "INSERT INTO rounds (quarter, requested_by, created_at) VALUES ('2024Q3', 't', 'now')",
                [],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO round_runs (quarter, indicator, run_id) VALUES ('2024Q3', 'b', ?1)",
                params![pending],
            )
            .unwrap();
        }
        assert!(matches!(
            store.release(q3, "ann", 1),
            Err(ReleaseError::RoundUnfinished { unfinished: 1, .. })
        ));
        assert!(store.released().unwrap().is_empty());
        store
            .set_status(&pending, RunStatus::Failed, Some("x"))
            .unwrap();
        assert!(matches!(
            store.release(q3, "ann", 1).unwrap(),
            ReleaseOutcome::Released(_)
        ));
    }

    #[test]
    fn a_fourth_quarter_round_also_publishes_the_year() {
        let q = |s: &str| s.parse::<Quarter>().unwrap();
        assert_eq!(round_periods(q("2024Q3")), vec!["2024Q3"]);
        assert_eq!(round_periods(q("2024Q4")), vec!["2024Q4", "2024"]);
        assert_eq!(round_of("2024"), Some(q("2024Q4")));
        assert_eq!(round_of("2023Q2"), Some(q("2023Q2")));
        assert_eq!(round_of("2024Q1:2024Q4"), None);
        assert_eq!(round_of("whenever"), None);
    }
}
