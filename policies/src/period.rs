//! Quarters ("2024Q1") and periods ("2023Q1:2024Q4"): the public time domain of every run.

use chrono::NaiveDate;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quarter {
    pub year: i32,
    /// 1 to 4.
    pub q: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    #[error("'{0}' is not a quarter; expected YYYYQn, e.g. 2024Q1")]
    BadQuarter(String),
    #[error("'{0}' is not a period; expected YYYYQn or YYYYQn:YYYYQn, e.g. 2023Q1:2024Q4")]
    BadPeriod(String),
    #[error("period {0} ends before it starts")]
    Reversed(String),
    #[error("period {period} spans {quarters} quarters; at most {max} are allowed")]
    TooLong {
        period: String,
        quarters: usize,
        max: usize,
    },
}

impl Quarter {
    /// A quarter of 1900 to 2099: the public period tables then hold only dates within the data
    /// model's range ([`crate::cdm::FIRST_DAY`] to [`crate::cdm::LAST_DAY`]).
    pub fn new(year: i32, q: u8) -> Option<Self> {
        ((1..=4).contains(&q) && (1900..=2099).contains(&year)).then_some(Quarter { year, q })
    }

    pub fn of_date(d: NaiveDate) -> Self {
        use chrono::Datelike;
        Quarter {
            year: d.year(),
            q: ((d.month0() / 3) + 1) as u8,
        }
    }

    pub fn first_day(self) -> NaiveDate {
        NaiveDate::from_ymd_opt(self.year, (self.q as u32 - 1) * 3 + 1, 1).unwrap_or(NaiveDate::MIN)
    }

    pub fn next(self) -> Self {
        if self.q == 4 {
            Quarter {
                year: self.year + 1,
                q: 1,
            }
        } else {
            Quarter {
                year: self.year,
                q: self.q + 1,
            }
        }
    }

    pub fn last_day(self) -> NaiveDate {
        self.next().first_day().pred_opt().unwrap_or(NaiveDate::MAX)
    }

    pub fn days(self) -> i64 {
        (self.last_day() - self.first_day()).num_days() + 1
    }
}

impl fmt::Display for Quarter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}Q{}", self.year, self.q)
    }
}

impl FromStr for Quarter {
    type Err = PeriodError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PeriodError::BadQuarter(s.to_string());
        let (y, q) = s.trim().split_once(['Q', 'q']).ok_or_else(bad)?;
        if y.len() != 4 || q.len() != 1 {
            return Err(bad());
        }
        let year: i32 = y.parse().map_err(|_| bad())?;
        let q: u8 = q.parse().map_err(|_| bad())?;
        Quarter::new(year, q).ok_or_else(bad)
    }
}

/// An inclusive range of quarters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    pub first: Quarter,
    pub last: Quarter,
}

/// Longest period a single run may cover (ten years): keeps the public key set small.
pub const MAX_QUARTERS: usize = 40;

impl Period {
    pub fn quarters(&self) -> Vec<Quarter> {
        let mut out = Vec::new();
        let mut q = self.first;
        while q <= self.last {
            out.push(q);
            q = q.next();
        }
        out
    }

    pub fn contains(&self, other: &Period) -> bool {
        self.first <= other.first && other.last <= self.last
    }

    /// The calendar years this period covers completely, first to last.
    pub fn whole_years(&self) -> Vec<i32> {
        let first = if self.first.q == 1 {
            self.first.year
        } else {
            self.first.year + 1
        };
        let last = if self.last.q == 4 {
            self.last.year
        } else {
            self.last.year - 1
        };
        (first..=last).collect()
    }

    /// The whole calendar year `year` as a period, `YYYYQ1:YYYYQ4`.
    pub fn year(year: i32) -> Option<Period> {
        Some(Period {
            first: Quarter::new(year, 1)?,
            last: Quarter::new(year, 4)?,
        })
    }
}

/// How finely an indicator's figures are cut in time: each release covers one quarter, or one
/// whole calendar year (figures too rare or too sensitive to show per quarter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeGrain {
    Quarter,
    Year,
}

impl TimeGrain {
    pub fn name(self) -> &'static str {
        match self {
            TimeGrain::Quarter => "quarter",
            TimeGrain::Year => "year",
        }
    }

    /// The periods one run over `period` asks each node about: its quarters, or the calendar
    /// years it covers completely (none when it covers no whole year).
    pub fn release_periods(self, period: &Period) -> Vec<Period> {
        match self {
            TimeGrain::Quarter => period
                .quarters()
                .into_iter()
                .map(|q| Period { first: q, last: q })
                .collect(),
            TimeGrain::Year => period
                .whole_years()
                .into_iter()
                .filter_map(Period::year)
                .collect(),
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

impl FromStr for Period {
    type Err = PeriodError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = match s.split_once(':') {
            Some((a, b)) => (a, b),
            None => (s, s),
        };
        let first: Quarter = a
            .parse()
            .map_err(|_| PeriodError::BadPeriod(s.to_string()))?;
        let last: Quarter = b
            .parse()
            .map_err(|_| PeriodError::BadPeriod(s.to_string()))?;
        if last < first {
            return Err(PeriodError::Reversed(s.to_string()));
        }
        let p = Period { first, last };
        let n = p.quarters().len();
        if n > MAX_QUARTERS {
            return Err(PeriodError::TooLong {
                period: s.to_string(),
                quarters: n,
                max: MAX_QUARTERS,
            });
        }
        Ok(p)
    }
}

impl serde::Serialize for Period {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Period {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_quarters_and_periods() {
        let p: Period = "2023Q3:2024Q2".parse().unwrap();
        let qs: Vec<String> = p.quarters().iter().map(|q| q.to_string()).collect();
        assert_eq!(qs, ["2023Q3", "2023Q4", "2024Q1", "2024Q2"]);
        assert_eq!(p.to_string(), "2023Q3:2024Q2");
        assert_eq!("2024Q1".parse::<Period>().unwrap().quarters().len(), 1);
        let q: Quarter = "2024Q1".parse().unwrap();
        assert_eq!(q.first_day().to_string(), "2024-01-01");
        assert_eq!(q.last_day().to_string(), "2024-03-31");
        assert_eq!(q.days(), 91);
    }

    #[test]
    fn whole_years_are_only_the_years_covered_completely() {
        let years = |p: &str| p.parse::<Period>().unwrap().whole_years();
        assert_eq!(years("2023Q1:2024Q4"), [2023, 2024]);
        assert_eq!(years("2023Q2:2024Q4"), [2024]);
        assert_eq!(years("2023Q1:2024Q3"), [2023]);
        assert!(years("2023Q2:2024Q3").is_empty());
        assert!(years("2024Q3").is_empty());
        let p: Period = "2023Q3:2025Q4".parse().unwrap();
        let periods: Vec<String> = TimeGrain::Year
            .release_periods(&p)
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(periods, ["2024Q1:2024Q4", "2025Q1:2025Q4"]);
        assert_eq!(TimeGrain::Quarter.release_periods(&p).len(), 10);
    }

    #[test]
    fn rejects_bad_periods_with_specific_errors() {
        assert!(matches!(
            "2024Q5".parse::<Period>(),
            Err(PeriodError::BadPeriod(_))
        ));
        assert!(matches!(
            "24Q1".parse::<Quarter>(),
            Err(PeriodError::BadQuarter(_))
        ));
        assert!(matches!(
            "2024Q2:2024Q1".parse::<Period>(),
            Err(PeriodError::Reversed(_))
        ));
        assert!(matches!(
            "2000Q1:2024Q1".parse::<Period>(),
            Err(PeriodError::TooLong { .. })
        ));
    }
}
