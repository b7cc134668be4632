//! A catalog is a folder of indicator files. Loading it checks every file, then the references
//! between them, then plans every query against the (empty) data model.

use crate::cdm;
use crate::contract;
use crate::indicator::{self, Body, Derived, Domain, Indicator};
use crate::period::{Period, TimeGrain};
use crate::problem::{Problem, Problems};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Catalog {
    pub dir: PathBuf,
    pub indicators: BTreeMap<String, Indicator>,
    /// File each indicator came from, to name it in later problems.
    pub files: BTreeMap<String, PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read catalog folder {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("catalog folder {0} holds no indicator (*.toml) files")]
    Empty(PathBuf),
    #[error("{} problem(s) in the catalog:\n{}", .0.len(), join(.0))]
    Invalid(Vec<Problem>),
}

fn join(ps: &[Problem]) -> String {
    ps.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

impl Catalog {
    /// Read and check every `*.toml` file in `dir` (not recursive). All problems are reported.
    pub async fn load(dir: &Path) -> Result<Catalog, CatalogError> {
        let io = |source| CatalogError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(CatalogError::Empty(dir.to_path_buf()));
        }
        let mut sources = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(io)?;
            sources.push((f, text));
        }
        Self::from_sources(dir, &sources).await
    }

    /// Check a set of (file, text) pairs as one catalog.
    pub async fn from_sources(
        dir: &Path,
        sources: &[(PathBuf, String)],
    ) -> Result<Catalog, CatalogError> {
        let mut problems = Vec::new();
        let mut indicators = BTreeMap::new();
        let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
        for (file, text) in sources {
            match indicator::parse(file, text) {
                Ok(ind) => {
                    if let Some(prev) = files.get(&ind.id) {
                        let mut p = Problems::new(file);
                        p.push(
                            "id",
                            format!("id '{}' is already used by {}", ind.id, prev.display()),
                        );
                        problems.extend(p.items);
                        continue;
                    }
                    files.insert(ind.id.clone(), file.clone());
                    indicators.insert(ind.id.clone(), ind);
                }
                Err(p) => problems.extend(p.items),
            }
        }
        let catalog = Catalog {
            dir: dir.to_path_buf(),
            indicators,
            files,
        };
        problems.extend(catalog.check_references());
        problems.extend(catalog.check_sql().await);
        if problems.is_empty() {
            Ok(catalog)
        } else {
            Err(CatalogError::Invalid(problems))
        }
    }

    fn file(&self, id: &str) -> PathBuf {
        self.files
            .get(id)
            .cloned()
            .unwrap_or_else(|| PathBuf::from(id))
    }

    fn check_references(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        for ind in self.indicators.values() {
            let Body::Derived(d) = &ind.body else {
                continue;
            };
            let mut p = Problems::new(&self.file(&ind.id));
            let query_of = |id: &str| self.indicators.get(id).and_then(|i| i.query());
            match d {
                Derived::Ratio {
                    numerator,
                    denominator,
                    ..
                } => {
                    for (field, id) in [
                        ("derived.numerator", numerator),
                        ("derived.denominator", denominator),
                    ] {
                        match query_of(id) {
                            None => p.push(
                                field,
                                format!("'{id}' is not a query indicator in this catalog"),
                            ),
                            // A ratio divides one estimate by another: each base has one measure.
                            Some(q) if q.aggregate.measures().len() != 1 => p.push(
                                field,
                                format!(
                                    "'{id}' is a {} indicator; a ratio's bases have one measure each (count_units, count_rows, sum or histogram)",
                                    q.aggregate.kind()
                                ),
                            ),
                            Some(_) => {}
                        }
                    }
                    if let (Some(n), Some(d)) = (query_of(numerator), query_of(denominator)) {
                        for g in &d.group_by {
                            if !n.group_by.iter().any(|k| k == g) {
                                p.push(
                                    "derived.denominator",
                                    format!(
                                        "denominator group key '{}' is not a group key of the numerator with the same domain",
                                        g.column
                                    ),
                                );
                            }
                        }
                    }
                }
                Derived::Quantile { histogram, .. } => match query_of(histogram) {
                    Some(q) if q.aggregate.edges().is_some() => {}
                    _ => p.push(
                        "derived.histogram",
                        format!("'{histogram}' is not a histogram indicator in this catalog"),
                    ),
                },
                Derived::PerCapita { numerator, .. } => match query_of(numerator) {
                    None => p.push(
                        "derived.numerator",
                        format!("'{numerator}' is not a query indicator in this catalog"),
                    ),
                    Some(q) => {
                        let counts = match &q.aggregate {
                            crate::Aggregate::CountUnits { .. }
                            | crate::Aggregate::CountRows { .. } => true,
                            crate::Aggregate::Sum { lower, .. } => *lower >= 0,
                            crate::Aggregate::Mean { .. } | crate::Aggregate::Histogram { .. } => {
                                false
                            }
                        };
                        if !counts {
                            p.push(
                                "derived.numerator",
                                format!(
                                    "'{numerator}' is a {} indicator; a per-capita figure divides a count or a non-negative sum by the population",
                                    q.aggregate.kind()
                                ),
                            );
                        }
                        // The reference population is national per year: a breakdown would need
                        // the population of each group.
                        if let Some(g) = q.group_by.iter().find(|g| {
                            !matches!(
                                g.domain,
                                crate::indicator::Domain::Period | crate::indicator::Domain::Years
                            )
                        }) {
                            p.push(
                                "derived.numerator",
                                format!(
                                    "'{numerator}' is broken down by '{}'; a per-capita figure divides a national total (grouped by period only) by the national population",
                                    g.column
                                ),
                            );
                        }
                    }
                },
            }
            let grains: std::collections::BTreeSet<&str> = self
                .bases(ind)
                .iter()
                .filter_map(|b| b.query())
                .map(|q| q.time_grain().name())
                .collect();
            if grains.len() > 1 {
                p.push(
                    "derived",
                    "its bases are cut in time differently (per quarter and per year); a derived figure combines bases of one time grain".into(),
                );
            }
            if ind.theme == ANNUAL_ONLY_THEME && grains.contains(TimeGrain::Quarter.name()) {
                p.push(
                    "derived",
                    format!("theme '{ANNUAL_ONLY_THEME}' is published annually only; its bases must group by a \"years\" key"),
                );
            }
            out.extend(p.items);
        }
        out
    }

    /// How finely `indicator`'s figures are cut in time: that of its bases (one grain, checked
    /// when the catalog loads).
    pub fn time_grain(&self, indicator: &Indicator) -> TimeGrain {
        self.bases(indicator)
            .iter()
            .filter_map(|b| b.query())
            .map(|q| q.time_grain())
            .next()
            .unwrap_or(TimeGrain::Quarter)
    }

    async fn check_sql(&self) -> Vec<Problem> {
        let ctx = match contract::planning_context() {
            Ok(c) => c,
            Err(e) => {
                let mut p = Problems::new(&self.dir);
                p.push(
                    "(catalog)",
                    format!("cannot build the planning context: {e}"),
                );
                return p.items;
            }
        };
        let mut out = Vec::new();
        for ind in self.indicators.values() {
            let Some(q) = ind.query() else { continue };
            if let Err(e) = contract::plan(&ctx, q).await {
                let mut p = Problems::new(&self.file(&ind.id));
                p.push("sql", e.to_string());
                out.extend(p.items);
            }
        }
        out
    }

    pub fn get(&self, id: &str) -> Option<&Indicator> {
        self.indicators.get(id)
    }

    /// The base (query) indicators a run of `indicator` needs answers for: itself, or the
    /// queries a derived indicator combines.
    pub fn bases<'a>(&'a self, indicator: &'a Indicator) -> Vec<&'a Indicator> {
        match &indicator.body {
            crate::Body::Query(_) => vec![indicator],
            crate::Body::Derived(Derived::Ratio {
                numerator,
                denominator,
                ..
            }) => [numerator, denominator]
                .into_iter()
                .filter_map(|id| self.get(id))
                .collect(),
            crate::Body::Derived(Derived::Quantile { histogram, .. }) => {
                self.get(histogram).into_iter().collect()
            }
            crate::Body::Derived(Derived::PerCapita { numerator, .. }) => {
                self.get(numerator).into_iter().collect()
            }
        }
    }

    /// ρ one node spends on a run of `indicator` for one quarter: the sum over its bases. The one
    /// place an indicator's cost is computed.
    pub fn rho(&self, indicator: &Indicator) -> f64 {
        self.bases(indicator)
            .iter()
            .filter_map(|b| b.query())
            .map(|q| q.cost.rho())
            .sum()
    }
}

/// Theme whose figures are shown per year only: suicides and attempts are too rare, and too
/// identifying, per quarter.
pub const ANNUAL_ONLY_THEME: &str = "suicide";

/// Number of values in a public domain for a run of `quarters` quarters. For whole years it is
/// an upper bound (a period of n quarters covers at most ⌊n/4⌋ whole years), never below one, so
/// a sensitivity computed from it is never too small.
pub fn domain_len(domain: &Domain, quarters: usize) -> usize {
    match domain {
        Domain::Period => quarters,
        Domain::Years => (quarters / 4).max(1),
        Domain::Codes { reference } => cdm::codes(reference).map(|c| c.len()).unwrap_or(0),
        Domain::Values { values } => values.len(),
    }
}

/// The public values of a domain for a run over `period`, in their published order.
pub fn domain_values(domain: &Domain, period: &Period) -> Vec<String> {
    match domain {
        Domain::Period => period.quarters().iter().map(|q| q.to_string()).collect(),
        Domain::Years => period.whole_years().iter().map(|y| y.to_string()).collect(),
        Domain::Codes { reference } => cdm::codes(reference)
            .map(|c| c.iter().map(|s| s.to_string()).collect())
            .unwrap_or_default(),
        Domain::Values { values } => values.clone(),
    }
}

/// The public domains of the answer's group columns, bins last for histograms.
pub fn public_domains(query: &crate::Query, period: &Period) -> (Vec<String>, Vec<Vec<String>>) {
    let mut names: Vec<String> = query.group_by.iter().map(|k| k.column.clone()).collect();
    let mut domains: Vec<Vec<String>> = query
        .group_by
        .iter()
        .map(|k| domain_values(&k.domain, period))
        .collect();
    let bins = query.bins();
    if !bins.is_empty() {
        names.push(crate::indicator::BIN_COLUMN.to_string());
        domains.push(bins);
    }
    (names, domains)
}

pub fn cartesian(domains: &[Vec<String>]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = vec![vec![]];
    for d in domains {
        let mut next = Vec::with_capacity(out.len() * d.len());
        for prefix in &out {
            for v in d {
                let mut k = prefix.clone();
                k.push(v.clone());
                next.push(k);
            }
        }
        out = next;
    }
    out
}

/// The public key set of an answer for `period`: every combination of the group columns' public
/// values (bins last), in the canonical order nodes answer in.
pub fn public_keys(query: &crate::Query, period: &Period) -> (Vec<String>, Vec<Vec<String>>) {
    let (names, domains) = public_domains(query, period);
    (names, cartesian(&domains))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_ratio_over_a_mean_is_refused() {
        let e = load_with(|dir, sources| {
            let ratio = std::fs::read_to_string(dir.join("seclusion.own_room_share.toml"))
                .unwrap()
                .replace("seclusion.own_room_share", "panel.score_ratio")
                .replace("\"seclusion.count_own_room\"", "\"panel.mean_score\"");
            sources.push((dir.join("panel.score_ratio.toml"), ratio));
        })
        .expect_err("refused");
        let text = e.to_string();
        assert!(
            text.contains(
                "'panel.mean_score' is a mean indicator; a ratio's bases have one measure each"
            ),
            "{text}"
        );
    }

    fn load_with(
        edit: impl Fn(&std::path::Path, &mut Vec<(std::path::PathBuf, String)>),
    ) -> Result<super::Catalog, super::CatalogError> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("catalog");
        let mut sources: Vec<(std::path::PathBuf, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap()))
            .collect();
        edit(&dir, &mut sources);
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(super::Catalog::from_sources(&dir, &sources))
    }

    fn replace(sources: &mut [(std::path::PathBuf, String)], file: &str, from: &str, to: &str) {
        let (_, text) = sources
            .iter_mut()
            .find(|(p, _)| p.ends_with(file))
            .expect(file);
        assert!(text.contains(from), "{file} holds {from}");
        *text = text.replace(from, to);
    }

    #[test]
    fn suicide_figures_per_quarter_are_refused() {
        let e = load_with(|_, s| {
            replace(
                s,
                "suicide.suicides.toml",
                "JOIN years y ON CAST(i.incident_ts AS DATE) BETWEEN y.first_day AND y.last_day",
                "JOIN quarters y ON CAST(i.incident_ts AS DATE) BETWEEN y.first_day AND y.last_day",
            );
            replace(s, "suicide.suicides.toml", "y.year", "y.quarter AS year");
            replace(
                s,
                "suicide.suicides.toml",
                "{ year = \"years\" }",
                "{ year = \"period\" }",
            );
        })
        .expect_err("refused");
        let text = e.to_string();
        assert!(
            text.contains("suicide.suicides.toml")
                && text.contains("theme 'suicide' is published annually only"),
            "{text}"
        );
    }

    #[test]
    fn a_ratio_over_bases_of_different_time_grains_is_refused() {
        let e = load_with(|dir, s| {
            let ratio = std::fs::read_to_string(dir.join("seclusion.own_room_share.toml"))
                .unwrap()
                .replace("seclusion.own_room_share", "seclusion.attempt_ratio")
                .replace(
                    "\"seclusion.count_own_room\"",
                    "\"suicide.youths_with_attempt\"",
                );
            s.push((dir.join("seclusion.attempt_ratio.toml"), ratio));
        })
        .expect_err("refused");
        assert!(
            e.to_string()
                .contains("its bases are cut in time differently"),
            "{e}"
        );
    }

    fn per_capita(numerator: &str, extra: &str) -> String {
        format!(
            r#"id = "care.per_10000"
theme = "zorg"
title = {{ nl = "Jongeren per 10.000", en = "Youths per 10,000" }}
definition = {{ nl = "Per 10.000 jongeren van 12 tot en met 17 jaar.", en = "Per 10,000 youths aged 12 to 17." }}
derived = {{ kind = "per_capita", numerator = "{numerator}", population = "12-17"{extra} }}
"#
        )
    }

    #[test]
    fn a_per_capita_figure_divides_a_national_total_and_costs_what_it_does() {
        let catalog = load_with(|dir, s| {
            s.push((
                dir.join("care.per_10000.toml"),
                per_capita("care.unique_youths", ", per = 10000"),
            ));
        })
        .expect("a per-capita figure over a national count loads");
        let ind = catalog.get("care.per_10000").unwrap();
        assert_eq!(
            ind.body,
            crate::Body::Derived(crate::Derived::PerCapita {
                numerator: "care.unique_youths".into(),
                population: "12-17".into(),
                per: 10000.0,
            })
        );
        let count = catalog.get("care.unique_youths").unwrap();
        assert_eq!(
            catalog.rho(ind),
            catalog.rho(count),
            "the population is public"
        );
        assert_eq!(catalog.bases(ind), vec![count]);
    }

    #[test]
    fn a_per_capita_figure_over_a_breakdown_a_mean_or_nothing_is_refused() {
        for (numerator, extra, needle) in [
            (
                "measures.youths_by_type",
                ", per = 10000",
                "is broken down by 'measure_type'",
            ),
            ("panel.mean_score", ", per = 10000", "is a mean indicator"),
            (
                "no.such",
                ", per = 10000",
                "'no.such' is not a query indicator",
            ),
            ("care.unique_youths", "", "derived.per: missing"),
            ("care.unique_youths", ", per = -5", "must be positive"),
        ] {
            let e = load_with(|dir, s| {
                s.push((
                    dir.join("care.per_10000.toml"),
                    per_capita(numerator, extra),
                ));
            })
            .expect_err(needle)
            .to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn the_shipped_catalog_cuts_suicide_figures_per_year() {
        let catalog = load_with(|_, _| {}).expect("catalog");
        for (id, ind) in &catalog.indicators {
            let grain = catalog.time_grain(ind);
            assert_eq!(
                grain == crate::TimeGrain::Year,
                ind.theme == super::ANNUAL_ONLY_THEME,
                "{id}"
            );
        }
    }

    #[test]
    fn an_indicators_rho_is_the_sum_over_its_bases() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("catalog");
        let catalog = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(super::Catalog::load(&dir))
            .expect("catalog");
        let rho = |id: &str| catalog.rho(catalog.get(id).expect(id));
        // A query: its own cost. A ratio: numerator + denominator. A quantile: its histogram.
        assert_eq!(rho("seclusion.count_own_room"), 0.1);
        assert!(
            (rho("seclusion.own_room_share")
                - rho("seclusion.count_own_room")
                - rho("seclusion.count"))
            .abs()
                < 1e-12
        );
        assert_eq!(
            rho("seclusion.duration_median"),
            rho("seclusion.duration_histogram")
        );
    }
}
