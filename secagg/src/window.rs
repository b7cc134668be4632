//! How long a report may be used: both aggregators refuse a report made longer ago than their
//! window (or dated too far ahead of their clock). A report's creation time is in its signed
//! binding, so no aggregator can make an old report look new; an old report, or a store restored
//! with one, cannot be brought into a batch after its window has passed.

use std::time::Duration;

/// The default window: long enough for a run to be resumed after a crash the same day, short
/// enough that a report kept back (or a backup holding one) is useless by the next day.
pub const DEFAULT_MAX_AGE: &str = "24h";

/// How far ahead of the aggregator's clock a report may be dated (clocks drift).
pub const DEFAULT_MAX_SKEW: &str = "5m";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportWindow {
    pub max_age: Duration,
    pub max_skew: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error(
        "the report was made before its creation time was bound (an older node); it cannot be used"
    )]
    Undated,
    #[error(
        "the report was made {age} ago, longer than this aggregator's window of {max_age}; an expired report is never counted"
    )]
    Expired { age: String, max_age: String },
    #[error(
        "the report is dated {ahead} ahead of this aggregator's clock (at most {max_skew} allowed)"
    )]
    Future { ahead: String, max_skew: String },
}

fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// A configured duration (`24h`, `90m`, `7days`), with the setting's name in the error.
pub fn parse_duration(key: &str, text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{key} = '{text}': {e} (write it as 24h, 90m or 7days)"))?;
    if d.as_secs() == 0 {
        return Err(format!("{key} = '{text}': must be at least one second"));
    }
    Ok(d)
}

impl ReportWindow {
    pub fn parse(max_age: &str, max_skew: &str) -> Result<ReportWindow, String> {
        Ok(ReportWindow {
            max_age: parse_duration("report_max_age", max_age)?,
            max_skew: parse_duration("report_max_skew", max_skew)?,
        })
    }

    /// A report made at `created_at` (Unix seconds), judged at `now`.
    pub fn check(&self, created_at: i64, now: i64) -> Result<(), WindowError> {
        if created_at <= 0 {
            return Err(WindowError::Undated);
        }
        let age = now.saturating_sub(created_at);
        if age < 0 {
            let ahead = age.unsigned_abs();
            if ahead > self.max_skew.as_secs() {
                return Err(WindowError::Future {
                    ahead: human(Duration::from_secs(ahead)),
                    max_skew: human(self.max_skew),
                });
            }
            return Ok(());
        }
        if age.unsigned_abs() > self.max_age.as_secs() {
            return Err(WindowError::Expired {
                age: human(Duration::from_secs(age.unsigned_abs())),
                max_age: human(self.max_age),
            });
        }
        Ok(())
    }

    /// Reports made before this time (Unix seconds) are out of the window at `now`.
    pub fn oldest_allowed(&self, now: i64) -> i64 {
        now.saturating_sub(i64::try_from(self.max_age.as_secs()).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_counts_only_inside_the_window() {
        let w = ReportWindow::parse("1h", "5m").expect("window");
        let now = 1_800_000_000;
        assert_eq!(w.check(now, now), Ok(()));
        assert_eq!(w.check(now - 3_600, now), Ok(()));
        assert!(matches!(
            w.check(now - 3_601, now),
            Err(WindowError::Expired { .. })
        ));
        assert_eq!(w.check(now + 300, now), Ok(()));
        assert!(matches!(
            w.check(now + 301, now),
            Err(WindowError::Future { .. })
        ));
        assert_eq!(w.check(0, now), Err(WindowError::Undated));
        let text = w.check(now - 7_200, now).expect_err("old").to_string();
        assert!(
            text.contains("made 2h ago") && text.contains("window of 1h"),
            "{text}"
        );
        assert_eq!(w.oldest_allowed(now), now - 3_600);
    }

    #[test]
    fn a_window_is_a_positive_duration() {
        assert!(ReportWindow::parse("24h", "5m").is_ok());
        let e = ReportWindow::parse("soon", "5m").expect_err("bad");
        assert!(e.contains("report_max_age = 'soon'"), "{e}");
        assert!(ReportWindow::parse("0s", "5m").is_err());
    }
}
