//! Public reference data at the coordinator: population counts per year and age group (CBS
//! StatLine), the denominators of per-capita indicators. Read from a small CSV as a DataFusion
//! table; the source, its retrieval date and its licence are required header lines, because
//! every published per-capita figure must name them.
//!
//! ```text
//! # source: CBS StatLine 03759ned, Bevolking op 1 januari; leeftijd, Nederland
//! # retrieved: 2026-11-30
//! # licence: CC BY 4.0
//! year,age_group,population
//! 2024,12-17,1234567
//! ```

use datafusion::arrow::array::{Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::{CsvReadOptions, SessionContext};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The name of the table the CSV is registered as.
pub const TABLE: &str = "population";

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("{file}: {message}")]
    Invalid { file: PathBuf, message: String },
}

/// Where the figures come from, as every per-capita figure cites it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Source {
    pub source: String,
    pub retrieved: String,
    pub licence: String,
}

/// Population per (year, age group): the population on 1 January of that year.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Population {
    pub source: Option<Source>,
    counts: BTreeMap<(i32, String), u64>,
}

impl Population {
    /// No reference data: every per-capita run is refused, saying what is missing.
    pub fn none() -> Population {
        Population::default()
    }

    pub fn get(&self, year: i32, group: &str) -> Option<u64> {
        self.counts.get(&(year, group.to_string())).copied()
    }

    /// Reads and checks the CSV; a bad file is refused whole, naming the problem.
    pub async fn load(file: &Path) -> Result<Population, ReferenceError> {
        let invalid = |message: String| ReferenceError::Invalid {
            file: file.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(file).map_err(|e| invalid(e.to_string()))?;
        let mut meta = BTreeMap::new();
        for line in text.lines().take_while(|l| l.starts_with('#')) {
            if let Some((k, v)) = line.trim_start_matches('#').split_once(':') {
                meta.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let mut field = |name: &str| {
            meta.remove(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    invalid(format!(
                        "a '# {name}: …' header line is required (the source, its retrieval date and its licence are cited with every figure)"
                    ))
                })
        };
        let source = Source {
            source: field("source")?,
            retrieved: field("retrieved")?,
            licence: field("licence")?,
        };
        let schema = Schema::new(vec![
            Field::new("year", DataType::Int64, false),
            Field::new("age_group", DataType::Utf8, false),
            Field::new("population", DataType::Int64, false),
        ]);
        let ctx = SessionContext::new();
        let path = file
            .to_str()
            .ok_or_else(|| invalid("not a UTF-8 path".into()))?;
        ctx.register_csv(
            TABLE,
            path,
            CsvReadOptions::new()
                .has_header(true)
                .comment(b'#')
                .schema(&schema)
                .file_extension(""),
        )
        .await
        .map_err(|e| invalid(e.to_string()))?;
        let batches = ctx
            .sql(&format!(
                "SELECT year, age_group, population FROM {TABLE} ORDER BY year, age_group"
            ))
            .await
            .map_err(|e| invalid(e.to_string()))?
            .collect()
            .await
            .map_err(|e| invalid(format!("expected columns year,age_group,population: {e}")))?;
        let mut counts = BTreeMap::new();
        for b in &batches {
            let (Some(years), Some(groups), Some(people)) = (
                b.column(0).as_any().downcast_ref::<Int64Array>(),
                b.column(1).as_any().downcast_ref::<StringArray>(),
                b.column(2).as_any().downcast_ref::<Int64Array>(),
            ) else {
                return Err(invalid("expected columns year,age_group,population".into()));
            };
            for i in 0..b.num_rows() {
                if years.is_null(i) || groups.is_null(i) || people.is_null(i) {
                    return Err(invalid(format!("row {}: an empty field", counts.len() + 1)));
                }
                let (year, group, n) = (years.value(i), groups.value(i).trim(), people.value(i));
                let year = i32::try_from(year)
                    .ok()
                    .filter(|y| (1900..=2999).contains(y))
                    .ok_or_else(|| invalid(format!("year {year} is not a calendar year")))?;
                let n = u64::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| {
                    invalid(format!(
                        "{year} {group}: population must be positive, found {n}"
                    ))
                })?;
                if counts.insert((year, group.to_string()), n).is_some() {
                    return Err(invalid(format!("{year} {group} appears twice")));
                }
            }
        }
        if counts.is_empty() {
            return Err(invalid("no rows".into()));
        }
        Ok(Population {
            source: Some(source),
            counts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str =
        "# source: test figures (not CBS)\n# retrieved: 2026-12-02\n# licence: CC BY 4.0\n";

    async fn load(text: &str) -> Result<Population, ReferenceError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("population.csv");
        std::fs::write(&file, text).unwrap();
        Population::load(&file).await
    }

    #[tokio::test]
    async fn reads_counts_per_year_and_group_with_their_source() {
        let p = load(&format!(
            "{HEADER}year,age_group,population\n2023,12-17,1200000\n2024,12-17,1210000\n2024,12-23,2400000\n"
        ))
        .await
        .unwrap();
        assert_eq!(p.get(2024, "12-17"), Some(1_210_000));
        assert_eq!(p.get(2023, "12-17"), Some(1_200_000));
        assert_eq!(p.get(2024, "12-23"), Some(2_400_000));
        assert_eq!(p.get(2022, "12-17"), None);
        assert_eq!(p.source.unwrap().licence, "CC BY 4.0");
    }

    #[tokio::test]
    async fn refuses_a_file_without_its_source_or_with_bad_rows() {
        let body = "year,age_group,population\n2024,12-17,1210000\n";
        for (text, needle) in [
            (body.to_string(), "'# source: …'"),
            (
                format!("# source: x\n# retrieved: y\n{body}"),
                "'# licence: …'",
            ),
            (
                format!("{HEADER}year,age_group,population\n2024,12-17,0\n"),
                "must be positive",
            ),
            (
                format!("{HEADER}year,age_group,population\n2024,12-17,5\n2024,12-17,6\n"),
                "appears twice",
            ),
            (
                format!("{HEADER}year,age_group,population\n24000,12-17,5\n"),
                "not a calendar year",
            ),
            (
                format!("{HEADER}year,age_group,population\n2024,12-17,many\n"),
                "population",
            ),
            (format!("{HEADER}year,age_group,population\n"), "no rows"),
        ] {
            let e = load(&text).await.unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
}
