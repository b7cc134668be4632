//! Publication rounds. `POST /v1/rounds {"quarter": "2024Q3"}` runs every approved indicator for
//! the quarter (annual ones in the fourth quarter's round, over the whole year). Starting the same
//! round again is how it resumes: runs that are running or done are kept, failed and partial ones
//! are run again, indicators approved since are added. Results stay under embargo until
//! reviewers release the round (see [`crate::release`]).

use crate::release::{self, Release};
use crate::runs::{RunError, Runner};
use crate::store::{RunStatus, RunStore, StoreError};
use policies::period::{Period, Quarter, TimeGrain};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use std::sync::Arc;

/// Runs of one round executed at once; each fans out to every node on its own.
pub const RUNS_AT_ONCE: usize = 4;

/// One indicator's run in a round.
#[derive(Debug, Clone, Serialize)]
pub struct RoundRun {
    pub indicator: String,
    pub period: String,
    pub run: String,
    pub status: RunStatus,
    pub error: Option<String>,
}

/// An approved indicator the round could not run, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub indicator: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoundView {
    pub quarter: String,
    pub requested_by: String,
    pub created_at: String,
    /// `running` while any run is unfinished, then `finished`; `released` once the round's
    /// current records are public.
    pub state: &'static str,
    pub finished: usize,
    pub total: usize,
    pub runs: Vec<RoundRun>,
    /// The record periods the round publishes.
    pub periods: Vec<String>,
    /// The round's last release, if any.
    pub release: Option<Release>,
    /// Reviewers who released the current records, waiting for more.
    pub released_by: Vec<String>,
}

/// The period an indicator of `grain` runs over in `quarter`'s round, if it runs at all.
pub fn round_period(grain: TimeGrain, quarter: Quarter) -> Option<Period> {
    match grain {
        TimeGrain::Quarter => Some(Period {
            first: quarter,
            last: quarter,
        }),
        TimeGrain::Year if quarter.q == 4 => Period::year(quarter.year),
        TimeGrain::Year => None,
    }
}

impl RunStore {
    fn ensure_round(&self, quarter: &str, who: &str) -> Result<(), StoreError> {
        self.conn()?.execute(
            "INSERT INTO rounds (quarter, requested_by, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (quarter) DO NOTHING",
            params![quarter, who, self.now()],
        )?;
        Ok(())
    }

    fn set_round_run(&self, quarter: &str, indicator: &str, run: &str) -> Result<(), StoreError> {
        self.conn()?.execute(
            "INSERT INTO round_runs (quarter, indicator, run_id) VALUES (?1, ?2, ?3)
             ON CONFLICT (quarter, indicator) DO UPDATE SET run_id = excluded.run_id",
            params![quarter, indicator, run],
        )?;
        Ok(())
    }

    /// The round's runs with their current state, by indicator.
    fn round_runs(&self, quarter: &str) -> Result<Vec<RoundRun>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT rr.indicator, r.period, r.id, r.status, r.error
             FROM round_runs rr JOIN runs r ON r.id = rr.run_id
             WHERE rr.quarter = ?1 ORDER BY rr.indicator",
        )?;
        let rows = stmt.query_map(params![quarter], |r| {
            Ok(RoundRun {
                indicator: r.get(0)?,
                period: r.get(1)?,
                run: r.get(2)?,
                status: RunStatus::parse(&r.get::<_, String>(3)?),
                error: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The round of `quarter`, or None when it was never started.
    pub fn round(&self, quarter: Quarter) -> Result<Option<RoundView>, StoreError> {
        let key = quarter.to_string();
        let head: Option<(String, String)> = self
            .conn()?
            .query_row(
                "SELECT requested_by, created_at FROM rounds WHERE quarter = ?1",
                params![key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((requested_by, created_at)) = head else {
            return Ok(None);
        };
        let runs = self.round_runs(&key)?;
        let finished = runs.iter().filter(|r| r.status.is_finished()).count();
        let release = self.releases()?.into_iter().find(|r| r.quarter == key);
        let released_by = self.release_approvals(&key)?;
        let current = self.round_digest(quarter)?;
        let state = if finished < runs.len() {
            "running"
        } else if release
            .as_ref()
            .is_some_and(|r| Some(&r.digest) == current.as_ref())
        {
            "released"
        } else {
            "finished"
        };
        Ok(Some(RoundView {
            quarter: key,
            requested_by,
            created_at,
            state,
            finished,
            total: runs.len(),
            runs,
            periods: release::round_periods(quarter),
            release,
            released_by,
        }))
    }
}

impl Runner {
    /// Starts (or resumes) the round of `quarter`: stores a run for every approved indicator that
    /// has none running or done, and returns the round and the runs to execute.
    pub fn start_round(
        &self,
        quarter: Quarter,
        who: &str,
    ) -> Result<(RoundView, Vec<String>, Vec<Skipped>), RunError> {
        // Two starts of one round at once would both add the same missing indicators.
        let _one_at_a_time = self
            .round_start
            .lock()
            .map_err(|_| RunError::Store(StoreError::Poisoned))?;
        let key = quarter.to_string();
        let catalog = self.catalog();
        self.store.ensure_round(&key, who)?;
        let existing = self.store.round_runs(&key)?;
        let mut to_execute = Vec::new();
        let mut skipped = Vec::new();
        for ind in catalog.indicators.values() {
            let Some(period) = round_period(catalog.time_grain(ind), quarter) else {
                continue;
            };
            let keep = existing.iter().any(|r| {
                r.indicator == ind.id
                    && match r.status {
                        RunStatus::Pending | RunStatus::Running | RunStatus::Done => true,
                        RunStatus::Partial | RunStatus::Failed => false,
                    }
            });
            if keep {
                continue;
            }
            match self.submit(&ind.id, &period.to_string(), who) {
                Ok(run) => {
                    self.store.set_round_run(&key, &ind.id, &run)?;
                    to_execute.push(run);
                }
                Err(e @ (RunError::NoNodes(_) | RunError::NoReference(_))) => {
                    skipped.push(Skipped {
                        indicator: ind.id.clone(),
                        reason: e.to_string(),
                    })
                }
                Err(e) => return Err(e),
            }
        }
        let view = self
            .store
            .round(quarter)?
            .ok_or_else(|| RunError::Catalog(format!("round {key} vanished from the store")))?;
        Ok((view, to_execute, skipped))
    }

    /// Executes a round's new runs, [`RUNS_AT_ONCE`] at a time.
    pub async fn execute_round(self: Arc<Self>, runs: Vec<String>) {
        use futures::StreamExt;
        futures::stream::iter(runs)
            .for_each_concurrent(RUNS_AT_ONCE, |id| {
                let me = self.clone();
                async move { me.execute(&id).await }
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annual_indicators_run_in_the_fourth_quarter_over_the_whole_year() {
        let q = |s: &str| s.parse::<Quarter>().unwrap();
        assert_eq!(
            round_period(TimeGrain::Quarter, q("2024Q3")).map(|p| p.to_string()),
            Some("2024Q3".to_string())
        );
        assert_eq!(round_period(TimeGrain::Year, q("2024Q3")), None);
        assert_eq!(
            round_period(TimeGrain::Year, q("2024Q4")).map(|p| p.to_string()),
            Some("2024Q1:2024Q4".to_string())
        );
    }
}
