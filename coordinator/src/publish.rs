//! From national sums to records a person can read: one per indicator × quarter × group, with its
//! 95% interval (noise only) and how many providers reported. Derived indicators (ratios,
//! quantiles from histograms) are computed here from their base indicators' sums. Publication
//! rules (suppression, rounding) are post-processing for the public, applied by [`publish`].

use crate::combine::{self, Interval};
use crate::national::{BaseResult, CellSum};
use crate::reference::Population;
use policies::indicator::MeasureKind;
use policies::{Aggregate, Catalog, Derived, Indicator};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub indicator: String,
    /// The quarter or year the number describes, e.g. `2024Q1` or `2024` (annual figures).
    pub period: String,
    /// The other breakdowns, key → value; `{}` when none.
    pub group: BTreeMap<String, String>,
    /// NaN (JSON null) when undefined, e.g. a ratio whose noisy denominator is not positive.
    #[serde(with = "nan_as_null")]
    pub estimate: f64,
    #[serde(with = "nan_as_null")]
    pub ci_low: f64,
    #[serde(with = "nan_as_null")]
    pub ci_high: f64,
    pub providers_reporting: usize,
    pub providers_total: usize,
    /// ρ each node spent on the numbers behind this record.
    pub rho: f64,
}

/// JSON has no NaN: undefined numbers travel as null and come back as NaN.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// A record as the public sees it: rounded, or suppressed (no numbers) below the catalog minimum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Published {
    pub indicator: String,
    pub period: String,
    pub group: BTreeMap<String, String>,
    pub estimate: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    pub suppressed: bool,
    pub providers_reporting: usize,
    pub providers_total: usize,
    /// False when some asked providers did not answer: never a national total.
    pub complete: bool,
    pub rho: f64,
}

/// The base indicators a run of `indicator` needs answers for (see [`Catalog::bases`]).
pub fn bases<'a>(catalog: &'a Catalog, indicator: &'a Indicator) -> Vec<&'a Indicator> {
    catalog.bases(indicator)
}

fn period_column(ind: &Indicator) -> Option<String> {
    ind.query()?.time_column().map(str::to_string)
}

/// The record's period (from the quarter column when there is one) and its other group values.
fn split_key(
    ind: &Indicator,
    columns: &[String],
    key: &[String],
    quarter: &str,
) -> (String, BTreeMap<String, String>) {
    let pc = period_column(ind);
    let mut group = BTreeMap::new();
    let mut period = quarter.to_string();
    for (c, v) in columns.iter().zip(key) {
        if Some(c) == pc.as_ref() {
            period = v.clone();
        } else {
            group.insert(c.clone(), v.clone());
        }
    }
    (period, group)
}

/// A single-measure base's estimate and variance in one cell, by its measure's name (the catalog
/// refuses a ratio over a mean, the one kind with two measures).
fn sole_measure(base: &Indicator, m: &BTreeMap<String, CellSum>) -> (f64, f64) {
    let name = base
        .query()
        .and_then(|q| q.aggregate.measures().first())
        .map_or(MeasureKind::Count.name(), |k| k.name());
    get(m, name)
}

fn get(m: &BTreeMap<String, CellSum>, name: &str) -> (f64, f64) {
    m.get(name)
        .map(|c| (c.value, c.variance))
        .unwrap_or((0.0, 0.0))
}

#[allow(clippy::too_many_arguments)]
fn record(
    indicator: &str,
    period: String,
    group: BTreeMap<String, String>,
    i: Interval,
    reporting: usize,
    total: usize,
    rho: f64,
) -> Record {
    Record {
        indicator: indicator.to_string(),
        period,
        group,
        estimate: i.estimate,
        ci_low: i.ci_low,
        ci_high: i.ci_high,
        providers_reporting: reporting,
        providers_total: total,
        rho,
    }
}

fn rho_of(catalog: &Catalog, id: &str) -> f64 {
    catalog.get(id).map_or(0.0, |i| catalog.rho(i))
}

/// The values a quantity can take, from its public definition alone: counts and non-negative
/// sums at least 0, a mean within its value bounds, a ratio of non-negative quantities at least
/// 0 (and at most its `publish.upper_bound`, 100 for a share), a quantile within its histogram's
/// edges.
pub fn range(catalog: &Catalog, ind: &Indicator) -> (f64, f64) {
    let (lo, hi) = match &ind.body {
        policies::Body::Query(q) => match &q.aggregate {
            Aggregate::CountUnits { .. }
            | Aggregate::CountRows { .. }
            | Aggregate::Histogram { .. } => (0.0, f64::INFINITY),
            Aggregate::Sum { lower, .. } if *lower >= 0 => (0.0, f64::INFINITY),
            Aggregate::Sum { .. } => (f64::NEG_INFINITY, f64::INFINITY),
            Aggregate::Mean { lower, upper, .. } => (*lower as f64, *upper as f64),
        },
        policies::Body::Derived(Derived::Ratio {
            numerator,
            denominator,
            ..
        }) => {
            let non_negative = |id: &str| {
                catalog
                    .get(id)
                    .is_some_and(|b| b.query().is_some() && range(catalog, b).0 >= 0.0)
            };
            if non_negative(numerator) && non_negative(denominator) {
                (0.0, f64::INFINITY)
            } else {
                (f64::NEG_INFINITY, f64::INFINITY)
            }
        }
        policies::Body::Derived(Derived::PerCapita { numerator, .. }) => {
            match catalog.get(numerator) {
                Some(n) if n.query().is_some() && range(catalog, n).0 >= 0.0 => {
                    (0.0, f64::INFINITY)
                }
                Some(_) | None => (f64::NEG_INFINITY, f64::INFINITY),
            }
        }
        policies::Body::Derived(Derived::Quantile { histogram, .. }) => {
            match catalog
                .get(histogram)
                .and_then(|h| h.query())
                .and_then(|q| q.aggregate.edges())
            {
                Some([first, .., last]) => (*first as f64, *last as f64),
                Some(_) | None => (f64::NEG_INFINITY, f64::INFINITY),
            }
        }
    };
    (lo, ind.publish.upper_bound.map_or(hi, |u| hi.min(u)))
}

/// `x` within `[lo, hi]`; an undefined value stays undefined.
fn clamp(x: f64, (lo, hi): (f64, f64)) -> f64 {
    if x.is_nan() || lo > hi {
        x
    } else {
        x.clamp(lo, hi)
    }
}

/// National records of `indicator` for one quarter, with estimates and interval ends clamped to
/// the quantity's [`range`] (free post-processing: a count is never published below 0, a share
/// never above 100%). An estimate inside the range is never moved.
pub fn records(
    catalog: &Catalog,
    indicator: &Indicator,
    quarter: &str,
    base: &BTreeMap<String, BaseResult>,
    population: &Population,
) -> Vec<Record> {
    let bounds = range(catalog, indicator);
    unclamped_records(catalog, indicator, quarter, base, population)
        .into_iter()
        .map(|r| Record {
            estimate: clamp(r.estimate, bounds),
            ci_low: clamp(r.ci_low, bounds),
            ci_high: clamp(r.ci_high, bounds),
            ..r
        })
        .collect()
}

/// Records of `indicator` for one quarter, from its bases' national sums for that quarter
/// (`base` maps a base indicator id to its result). With zero variances the estimates are the
/// exact values, which is how the demo computes its truth with the very same arithmetic.
fn unclamped_records(
    catalog: &Catalog,
    indicator: &Indicator,
    quarter: &str,
    base: &BTreeMap<String, BaseResult>,
    population: &Population,
) -> Vec<Record> {
    let mut out = Vec::new();
    let salt = |period: &str, group: &BTreeMap<String, String>| {
        format!("{}{period}{group:?}", indicator.id)
    };
    match &indicator.body {
        policies::Body::Query(query) => {
            let Some(r) = base.get(&indicator.id) else {
                return out;
            };
            for (key, m) in &r.cells {
                let (period, group) = split_key(indicator, &r.group_columns, key, quarter);
                let interval = match &query.aggregate {
                    Aggregate::Mean { .. } => combine::ratio(
                        get(m, MeasureKind::Sum.name()),
                        get(m, MeasureKind::Count.name()),
                        1.0,
                        &salt(&period, &group),
                    ),
                    // One measure: its estimate and variance.
                    Aggregate::CountUnits { .. }
                    | Aggregate::CountRows { .. }
                    | Aggregate::Sum { .. }
                    | Aggregate::Histogram { .. } => {
                        let (v, var) = get(m, query.aggregate.measures()[0].name());
                        combine::normal_interval(v, var)
                    }
                };
                out.push(record(
                    &indicator.id,
                    period,
                    group,
                    interval,
                    r.providers_reporting,
                    r.providers_total,
                    query.cost.rho(),
                ));
            }
        }
        policies::Body::Derived(Derived::Ratio {
            numerator,
            denominator,
            multiplier,
        }) => {
            let (Some(n), Some(d), Some(num_ind), Some(den_ind)) = (
                base.get(numerator),
                base.get(denominator),
                catalog.get(numerator),
                catalog.get(denominator),
            ) else {
                return out;
            };
            let rho = rho_of(catalog, numerator) + rho_of(catalog, denominator);
            for (key, nm) in &n.cells {
                // The denominator's key: the numerator's key projected on the denominator's columns.
                let dkey: Vec<String> = d
                    .group_columns
                    .iter()
                    .filter_map(|c| {
                        n.group_columns
                            .iter()
                            .position(|x| x == c)
                            .map(|i| key[i].clone())
                    })
                    .collect();
                let Some((_, dm)) = d.cells.iter().find(|(k, _)| *k == dkey) else {
                    continue;
                };
                let (period, group) = split_key(num_ind, &n.group_columns, key, quarter);
                let interval = combine::ratio(
                    sole_measure(num_ind, nm),
                    sole_measure(den_ind, dm),
                    *multiplier,
                    &salt(&period, &group),
                );
                out.push(record(
                    &indicator.id,
                    period,
                    group,
                    interval,
                    n.providers_reporting.min(d.providers_reporting),
                    n.providers_total.max(d.providers_total),
                    rho,
                ));
            }
        }
        policies::Body::Derived(Derived::PerCapita {
            numerator,
            population: group,
            per,
        }) => {
            let (Some(n), Some(num_ind)) = (base.get(numerator), catalog.get(numerator)) else {
                return out;
            };
            for (key, m) in &n.cells {
                let (period, breakdown) = split_key(num_ind, &n.group_columns, key, quarter);
                // The population on 1 January of the figure's year; the run was refused
                // beforehand when it is missing, so NaN here is only a guard.
                let scale = crate::release::round_of(&period)
                    .and_then(|q| population.get(q.year, group))
                    .map_or(f64::NAN, |people| per / people as f64);
                let (v, var) = sole_measure(num_ind, m);
                let i = combine::normal_interval(v, var);
                let interval = Interval {
                    estimate: i.estimate * scale,
                    ci_low: i.ci_low * scale,
                    ci_high: i.ci_high * scale,
                };
                out.push(record(
                    &indicator.id,
                    period,
                    breakdown,
                    interval,
                    n.providers_reporting,
                    n.providers_total,
                    rho_of(catalog, numerator),
                ));
            }
        }
        policies::Body::Derived(Derived::Quantile { histogram, q }) => {
            let (Some(h), Some(hist_ind)) = (base.get(histogram), catalog.get(histogram)) else {
                return out;
            };
            let Some(Aggregate::Histogram { edges, .. }) = hist_ind.query().map(|q| &q.aggregate)
            else {
                return out;
            };
            let bin_pos = h.group_columns.len().saturating_sub(1);
            let mut groups: BTreeMap<Vec<String>, Vec<(f64, f64)>> = BTreeMap::new();
            for (key, m) in &h.cells {
                groups
                    .entry(key[..bin_pos].to_vec())
                    .or_default()
                    .push(sole_measure(hist_ind, m));
            }
            for (gkey, bins) in groups {
                let (period, group) =
                    split_key(hist_ind, &h.group_columns[..bin_pos], &gkey, quarter);
                let interval = combine::quantile_interval(&bins, edges, *q);
                out.push(record(
                    &indicator.id,
                    period,
                    group,
                    interval,
                    h.providers_reporting,
                    h.providers_total,
                    rho_of(catalog, histogram),
                ));
            }
        }
    }
    out
}

fn round_to(x: f64, step: f64, up: bool) -> f64 {
    if !x.is_finite() || step <= 0.0 {
        return x;
    }
    let q = x / step;
    let r = if up { q.ceil() } else { q.floor() };
    r * step
}

/// Publication rules, post-processing free of privacy cost. Counts and sums are suppressed below
/// the indicator's `min_estimate` and rounded to `round_to` (interval rounded outwards, so it
/// still covers what it covered). Means, ratios and quantiles are rounded to one decimal.
pub fn publish(catalog: &Catalog, r: &Record) -> Published {
    let ind = catalog.get(&r.indicator);
    let rules = ind.map(|i| i.publish.clone());
    let countlike = ind
        .and_then(|i| i.query())
        .is_some_and(|q| match q.aggregate {
            Aggregate::CountUnits { .. }
            | Aggregate::CountRows { .. }
            | Aggregate::Sum { .. }
            | Aggregate::Histogram { .. } => true,
            Aggregate::Mean { .. } => false,
        });
    let (min, step) = match (&rules, countlike) {
        (Some(p), true) => (p.min_estimate, p.round_to.max(1) as f64),
        (Some(p), false) => (p.min_estimate, 0.1),
        (None, _) => (0.0, 0.1),
    };
    // Derived values are not counts; their minimum applies only to count-like indicators.
    let suppressed = !r.estimate.is_finite() || (countlike && r.estimate < min);
    let round = |x: f64, up: bool| {
        let v = round_to(x, step, up);
        // Avoid 35.300000000000004 in the output.
        (v * 10.0).round() / 10.0
    };
    Published {
        indicator: r.indicator.clone(),
        period: r.period.clone(),
        group: r.group.clone(),
        estimate: (!suppressed).then(|| round((r.estimate / step).round() * step, false)),
        ci_low: (!suppressed).then(|| round(r.ci_low, false)),
        ci_high: (!suppressed).then(|| round(r.ci_high, true)),
        suppressed,
        providers_reporting: r.providers_reporting,
        providers_total: r.providers_total,
        complete: r.providers_reporting == r.providers_total,
        rho: r.rho,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_clamped_to_the_quantitys_range_and_never_moved_inside_it() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/catalog");
        let catalog = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(Catalog::load(&dir))
            .unwrap();
        let range_of = |id: &str| range(&catalog, catalog.get(id).unwrap());
        let inf = f64::INFINITY;
        assert_eq!(range_of("care.unique_youths"), (0.0, inf));
        assert_eq!(range_of("care.youth_days"), (0.0, inf));
        assert_eq!(range_of("seclusion.own_room_share"), (0.0, 100.0));
        assert_eq!(range_of("seclusion.rate_per_1000_days"), (0.0, inf));
        assert_eq!(range_of("panel.mean_score"), (1.0, 5.0));
        let (lo, hi) = range_of("seclusion.duration_median");
        assert!(lo >= 0.0 && hi.is_finite() && lo < hi, "{lo} {hi}");
        for bounds in [(0.0, inf), (0.0, 100.0), (1.0, 5.0)] {
            // Inside: never moved, to the last bit.
            for x in [
                bounds.0,
                0.5 * (bounds.0 + bounds.1.min(1e6)),
                1.0 + bounds.0,
                99.999,
            ] {
                if x >= bounds.0 && x <= bounds.1 {
                    assert_eq!(clamp(x, bounds).to_bits(), x.to_bits());
                }
            }
            assert_eq!(clamp(bounds.0 - 88.0, bounds), bounds.0);
            assert!(clamp(f64::NAN, bounds).is_nan());
        }
        assert_eq!(clamp(177.0, (0.0, 100.0)), 100.0);
    }

    #[test]
    fn a_per_capita_figure_is_the_count_and_its_interval_per_10000_of_the_csv_population() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/catalog");
        let mut sources: Vec<(std::path::PathBuf, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap()))
            .collect();
        sources.push((
            dir.join("care.per_10000.toml"),
            r#"id = "care.per_10000"
theme = "zorg"
title = { nl = "Jongeren per 10.000", en = "Youths per 10,000" }
definition = { nl = "Per 10.000 jongeren van 12 tot en met 17 jaar.", en = "Per 10,000 youths aged 12 to 17." }
derived = { kind = "per_capita", numerator = "care.unique_youths", population = "12-17", per = 10000 }
"#
            .into(),
        ));
        let catalog = rt.block_on(Catalog::from_sources(&dir, &sources)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let csv = tmp.path().join("population.csv");
        std::fs::write(
            &csv,
            "# source: test figures (not CBS)\n# retrieved: 2026-12-02\n# licence: CC BY 4.0\nyear,age_group,population\n2024,12-17,1200000\n2024,12-23,2000000\n",
        )
        .unwrap();
        let population = rt.block_on(Population::load(&csv)).unwrap();
        let count = catalog.get("care.unique_youths").unwrap();
        let measure = count.query().unwrap().aggregate.measures()[0].name();
        let cells = |value: f64, variance: f64| {
            BTreeMap::from([(measure.to_string(), CellSum { value, variance })])
        };
        let base = BTreeMap::from([(
            "care.unique_youths".to_string(),
            BaseResult {
                indicator: "care.unique_youths".into(),
                quarter: "2024Q3".into(),
                group_columns: vec!["quarter".into()],
                cells: vec![(vec!["2024Q3".to_string()], cells(900.0, 25.0))],
                providers_reporting: 11,
                providers_total: 11,
            },
        )]);
        let ind = catalog.get("care.per_10000").unwrap();
        let [r] = records(&catalog, ind, "2024Q3", &base, &population)
            .try_into()
            .unwrap();
        // By hand: 900 youths among 1,200,000 aged 12–17 is 7.5 per 10,000; the interval is the
        // count's (900 ± 1.96 × 5) on the same scale; the cost is the count's.
        let scale = 10000.0 / 1_200_000.0;
        let z = 1.959_963_984_540_054;
        assert!((r.estimate - 7.5).abs() < 1e-12, "{r:?}");
        assert!((r.ci_low - (900.0 - z * 5.0) * scale).abs() < 1e-9, "{r:?}");
        assert!(
            (r.ci_high - (900.0 + z * 5.0) * scale).abs() < 1e-9,
            "{r:?}"
        );
        assert_eq!((r.period.as_str(), r.group.len()), ("2024Q3", 0));
        assert_eq!(r.rho, catalog.rho(count));
        assert_eq!(range(&catalog, ind), (0.0, f64::INFINITY));
        // A year the CSV lacks gives no number (runs are refused before they reach here).
        let none = records(&catalog, ind, "2024Q3", &base, &Population::none());
        assert!(none[0].estimate.is_nan());
    }

    #[test]
    fn undefined_numbers_survive_a_json_round_trip() {
        let r = Record {
            indicator: "x".into(),
            period: "2024Q1".into(),
            group: BTreeMap::new(),
            estimate: f64::NAN,
            ci_low: 1.0,
            ci_high: f64::INFINITY,
            providers_reporting: 1,
            providers_total: 1,
            rho: 0.1,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"estimate\":null"), "{text}");
        let back: Record = serde_json::from_str(&text).unwrap();
        assert!(back.estimate.is_nan() && back.ci_high.is_nan());
        assert_eq!(back.ci_low, 1.0);
    }

    #[test]
    fn rounding_moves_the_interval_outwards() {
        assert_eq!(round_to(12.0, 5.0, false), 10.0);
        assert_eq!(round_to(12.0, 5.0, true), 15.0);
        assert_eq!(round_to(-3.0, 5.0, false), -5.0);
        assert_eq!(round_to(35.27, 0.1, true), 35.300000000000004);
    }
}
