//! The approved-query contract: one indicator per TOML file, parsed with every problem reported
//! (file and field), never just the first.

use crate::cdm;
use crate::problem::Problems;
use sha2::{Digest, Sha256};
use std::path::Path;
use toml::{Table, Value};

pub const THEMES: &[&str] = &[
    "zorg",
    "vrijheidsbeperking",
    "maatwerk",
    "matching_plaatsing",
    "suicide",
    "kleinschaligheid",
    "onderwijs",
    "ervaringen",
];
pub const PRIVACY_UNITS: &[&str] = &["youth_pid", "respondent_pid"];
/// Column the node adds for histogram bins; indicators may not use it themselves.
pub const BIN_COLUMN: &str = "bin";
/// Largest ρ (or ε) a single indicator may cost per run; anything larger is a typo, not a policy.
pub const MAX_COST: f64 = 10.0;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Text {
    pub nl: String,
    pub en: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Domain {
    /// The quarters of the run's period, as `YYYYQn`.
    Period,
    /// The calendar years the run's period covers completely, as `YYYY`: for figures published
    /// annually only.
    Years,
    /// A code list of the data model, `table.column`.
    Codes { reference: String },
    /// An explicit public list.
    Values { values: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GroupKey {
    pub column: String,
    pub domain: Domain,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Aggregate {
    CountUnits {
        max_groups_per_unit: i64,
    },
    CountRows {
        max_groups_per_unit: i64,
        max_rows_per_group: i64,
    },
    Sum {
        value: String,
        lower: i64,
        upper: i64,
        max_groups_per_unit: i64,
    },
    Mean {
        value: String,
        lower: i64,
        upper: i64,
        max_groups_per_unit: i64,
        /// Share of the cost spent on the sum; the rest goes to the count.
        sum_share: f64,
    },
    Histogram {
        value: String,
        edges: Vec<i64>,
        max_groups_per_unit: i64,
        max_rows_per_group: i64,
    },
}

/// The aggregate kinds, by name: what the catalog's `aggregate.kind` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateKind {
    CountUnits,
    CountRows,
    Sum,
    Mean,
    Histogram,
}

impl AggregateKind {
    pub const ALL: [AggregateKind; 5] = [
        AggregateKind::CountUnits,
        AggregateKind::CountRows,
        AggregateKind::Sum,
        AggregateKind::Mean,
        AggregateKind::Histogram,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AggregateKind::CountUnits => "count_units",
            AggregateKind::CountRows => "count_rows",
            AggregateKind::Sum => "sum",
            AggregateKind::Mean => "mean",
            AggregateKind::Histogram => "histogram",
        }
    }

    pub fn parse(name: &str) -> Option<AggregateKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// The noisy integer columns a node releases: a count of units or rows per cell, or a sum of
/// bounded values per cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeasureKind {
    Count,
    Sum,
}

impl MeasureKind {
    /// The measure's column name in answers and cells.
    pub fn name(self) -> &'static str {
        match self {
            MeasureKind::Count => "count",
            MeasureKind::Sum => "sum",
        }
    }
}

impl Aggregate {
    pub fn of_kind(&self) -> AggregateKind {
        match self {
            Aggregate::CountUnits { .. } => AggregateKind::CountUnits,
            Aggregate::CountRows { .. } => AggregateKind::CountRows,
            Aggregate::Sum { .. } => AggregateKind::Sum,
            Aggregate::Mean { .. } => AggregateKind::Mean,
            Aggregate::Histogram { .. } => AggregateKind::Histogram,
        }
    }

    pub fn kind(&self) -> &'static str {
        self.of_kind().name()
    }

    /// The measures a release of this kind carries, in their order in answers.
    pub fn measures(&self) -> &'static [MeasureKind] {
        match self {
            Aggregate::CountUnits { .. }
            | Aggregate::CountRows { .. }
            | Aggregate::Histogram { .. } => &[MeasureKind::Count],
            Aggregate::Sum { .. } => &[MeasureKind::Sum],
            Aggregate::Mean { .. } => &[MeasureKind::Sum, MeasureKind::Count],
        }
    }

    /// The histogram's bin edges; `None` for every other kind.
    pub fn edges(&self) -> Option<&[i64]> {
        match self {
            Aggregate::Histogram { edges, .. } => Some(edges),
            Aggregate::CountUnits { .. }
            | Aggregate::CountRows { .. }
            | Aggregate::Sum { .. }
            | Aggregate::Mean { .. } => None,
        }
    }

    pub fn value_column(&self) -> Option<&str> {
        match self {
            Aggregate::Sum { value, .. }
            | Aggregate::Mean { value, .. }
            | Aggregate::Histogram { value, .. } => Some(value),
            Aggregate::CountUnits { .. } | Aggregate::CountRows { .. } => None,
        }
    }

    pub fn max_groups_per_unit(&self) -> i64 {
        match self {
            Aggregate::CountUnits {
                max_groups_per_unit,
            }
            | Aggregate::CountRows {
                max_groups_per_unit,
                ..
            }
            | Aggregate::Sum {
                max_groups_per_unit,
                ..
            }
            | Aggregate::Mean {
                max_groups_per_unit,
                ..
            }
            | Aggregate::Histogram {
                max_groups_per_unit,
                ..
            } => *max_groups_per_unit,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cost {
    /// ρ-zCDP, answered with discrete Gaussian noise.
    Rho(f64),
    /// Pure ε-DP, answered with discrete Laplace noise.
    Epsilon(f64),
}

impl Cost {
    /// The zCDP ρ this cost consumes from a node's ledger. Pure ε-DP implies (ε²/2)-zCDP.
    pub fn rho(&self) -> f64 {
        match *self {
            Cost::Rho(r) => r,
            Cost::Epsilon(e) => e * e / 2.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Publish {
    pub min_estimate: f64,
    pub round_to: i64,
    /// The largest value the quantity can take (100 for a share): published estimates and
    /// interval ends above it are clamped to it, free post-processing.
    pub upper_bound: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Query {
    pub privacy_unit: String,
    pub sql: String,
    pub group_by: Vec<GroupKey>,
    pub aggregate: Aggregate,
    pub cost: Cost,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Derived {
    /// numerator / denominator × multiplier, cell by cell over the shared group keys.
    Ratio {
        numerator: String,
        denominator: String,
        multiplier: f64,
    },
    /// A quantile read from a histogram indicator after combination.
    Quantile { histogram: String, q: f64 },
    /// A national total per `per` inhabitants of a public population group (e.g. youths in
    /// JeugdzorgPlus per 10,000 youths aged 12–17): the numerator's estimate and interval
    /// divided by the coordinator's reference population for the figure's year. No privacy
    /// cost beyond the numerator's: the denominator is public.
    PerCapita {
        numerator: String,
        population: String,
        per: f64,
    },
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    Query(Query),
    Derived(Derived),
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Indicator {
    pub id: String,
    pub title: Text,
    pub definition: Text,
    pub theme: String,
    pub body: Body,
    pub publish: Publish,
    pub notes: Option<String>,
    /// sha256 of the file's bytes: what reviewers approved and what a node's answer is bound to.
    pub content_hash: String,
}

impl Query {
    /// The time grain of this query's releases: annual when it groups by whole years.
    pub fn time_grain(&self) -> crate::TimeGrain {
        if self.group_by.iter().any(|g| g.domain == Domain::Years) {
            crate::TimeGrain::Year
        } else {
            crate::TimeGrain::Quarter
        }
    }

    /// The group column that holds the time (a quarter or a year), if any.
    pub fn time_column(&self) -> Option<&str> {
        self.group_by
            .iter()
            .find(|g| matches!(g.domain, Domain::Period | Domain::Years))
            .map(|g| g.column.as_str())
    }
}

impl Indicator {
    pub fn query(&self) -> Option<&Query> {
        match &self.body {
            Body::Query(q) => Some(q),
            Body::Derived(_) => None,
        }
    }
}

pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The `id` an indicator text declares, when it parses far enough to say; used to name a text
/// that arrives without a file (a proposal) as `<id>.toml`.
pub fn declared_id(text: &str) -> Option<String> {
    let table: Table = text.parse().ok()?;
    table.get("id")?.as_str().map(str::to_string)
}

/// Parse one indicator file's text. `file` is used only to name problems.
pub fn parse(file: &Path, text: &str) -> Result<Indicator, Problems> {
    let mut p = Problems::new(file);
    let table: Table = match text.parse::<Table>() {
        Ok(t) => t,
        Err(e) => {
            p.push("(toml)", format!("malformed TOML: {}", e.message().trim()));
            if let Some(span) = e.span() {
                let line = text[..span.start.min(text.len())].lines().count().max(1);
                p.last_mut_message(|m| format!("{m} (line {line})"));
            }
            return Err(p);
        }
    };
    let mut r = Reader {
        p: &mut p,
        prefix: String::new(),
    };
    let id = r.string(&table, "id");
    let title = r.text(&table, "title");
    let definition = r.text(&table, "definition");
    let theme = r.string(&table, "theme");
    if let Some(t) = &theme
        && !THEMES.contains(&t.as_str())
    {
        r.problem(
            "theme",
            format!("unknown theme '{t}'; expected one of {THEMES:?}"),
        );
    }
    let notes = r.opt_string(&table, "notes");
    let publish = r.publish(&table);
    let derived = table.get("derived");
    let body = if let Some(d) = derived {
        for k in ["sql", "group_by", "aggregate", "cost", "privacy_unit"] {
            if table.contains_key(k) {
                r.problem(
                    k,
                    "a derived indicator has no query; remove this field".into(),
                );
            }
        }
        r.derived(d).map(Body::Derived)
    } else {
        r.query(&table).map(Body::Query)
    };
    if let (Some(t), Some(Body::Query(q))) = (&theme, &body)
        && t == crate::catalog::ANNUAL_ONLY_THEME
        && q.time_grain() == crate::TimeGrain::Quarter
    {
        r.problem(
            "group_by",
            format!(
                "theme '{t}' is published annually only: group by a \"years\" key, never by quarter"
            ),
        );
    }
    let known = [
        "id",
        "title",
        "definition",
        "theme",
        "notes",
        "publish",
        "derived",
        "sql",
        "group_by",
        "aggregate",
        "cost",
        "privacy_unit",
    ];
    for k in table.keys() {
        if !known.contains(&k.as_str()) {
            r.problem(k, format!("unknown field; expected one of {known:?}"));
        }
    }
    if let (Some(id), Some(stem)) = (&id, file.file_stem().and_then(|s| s.to_str()))
        && file.extension().is_some()
        && stem != id
    {
        r.problem(
            "id",
            format!("id '{id}' does not match the file name '{stem}.toml'"),
        );
    }
    if let Some(id) = &id
        && !valid_id(id)
    {
        r.problem(
            "id",
            format!("'{id}' is not a valid id: use lower-case letters, digits, '_' and '.'"),
        );
    }
    match (id, title, definition, theme, body, publish) {
        (Some(id), Some(title), Some(definition), Some(theme), Some(body), Some(publish))
            if p.is_empty() =>
        {
            Ok(Indicator {
                id,
                title,
                definition,
                theme,
                body,
                publish,
                notes,
                content_hash: content_hash(text.as_bytes()),
            })
        }
        _ => Err(p),
    }
}

pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 100
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
}

/// Field-by-field reader that records a problem for every missing or ill-typed field.
struct Reader<'a> {
    p: &'a mut Problems,
    prefix: String,
}

impl Reader<'_> {
    fn field(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    fn problem(&mut self, key: &str, message: String) {
        let f = self.field(key);
        self.p.push(&f, message);
    }

    fn opt_string(&mut self, t: &Table, key: &str) -> Option<String> {
        match t.get(key) {
            None => None,
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            Some(Value::String(_)) => {
                self.problem(key, "must not be empty".into());
                None
            }
            Some(v) => {
                self.problem(key, format!("must be a string, found {}", v.type_str()));
                None
            }
        }
    }

    fn string(&mut self, t: &Table, key: &str) -> Option<String> {
        if !t.contains_key(key) {
            self.problem(key, "missing".into());
            return None;
        }
        self.opt_string(t, key)
    }

    fn int(&mut self, t: &Table, key: &str, min: i64) -> Option<i64> {
        match t.get(key) {
            None => {
                self.problem(key, "missing".into());
                None
            }
            Some(Value::Integer(i)) if *i >= min => Some(*i),
            Some(Value::Integer(i)) => {
                self.problem(key, format!("must be at least {min}, found {i}"));
                None
            }
            Some(v) => {
                self.problem(key, format!("must be an integer, found {}", v.type_str()));
                None
            }
        }
    }

    fn any_int(&mut self, t: &Table, key: &str) -> Option<i64> {
        self.int(t, key, i64::MIN)
    }

    fn number(&mut self, v: &Value, key: &str) -> Option<f64> {
        match v {
            Value::Float(f) if f.is_finite() => Some(*f),
            Value::Integer(i) => Some(*i as f64),
            v => {
                self.problem(key, format!("must be a number, found {}", v.type_str()));
                None
            }
        }
    }

    fn table<'t>(&mut self, t: &'t Table, key: &str) -> Option<&'t Table> {
        match t.get(key) {
            None => {
                self.problem(key, "missing".into());
                None
            }
            Some(Value::Table(inner)) => Some(inner),
            Some(v) => {
                self.problem(key, format!("must be a table, found {}", v.type_str()));
                None
            }
        }
    }

    fn unknown_keys(&mut self, t: &Table, key: &str, known: &[&str]) {
        for k in t.keys() {
            if !known.contains(&k.as_str()) {
                let f = format!("{key}.{k}");
                self.problem(&f, format!("unknown field; expected one of {known:?}"));
            }
        }
    }

    fn nested<'s>(&'s mut self, key: &str) -> Reader<'s> {
        Reader {
            prefix: self.field(key),
            p: self.p,
        }
    }

    fn text(&mut self, t: &Table, key: &str) -> Option<Text> {
        let inner = self.table(t, key)?;
        let mut r = self.nested(key);
        let nl = r.string(inner, "nl");
        let en = r.string(inner, "en");
        self.unknown_keys(inner, key, &["nl", "en"]);
        Some(Text { nl: nl?, en: en? })
    }

    fn publish(&mut self, t: &Table) -> Option<Publish> {
        let Some(v) = t.get("publish") else {
            return Some(Publish {
                min_estimate: 0.0,
                round_to: 1,
                upper_bound: None,
            });
        };
        let Value::Table(inner) = v else {
            self.problem(
                "publish",
                format!("must be a table, found {}", v.type_str()),
            );
            return None;
        };
        self.unknown_keys(
            inner,
            "publish",
            &["min_estimate", "round_to", "upper_bound"],
        );
        let mut r = self.nested("publish");
        let min_estimate = match inner.get("min_estimate") {
            None => Some(0.0),
            Some(v) => r.number(v, "min_estimate").and_then(|m| {
                if m < 0.0 {
                    r.problem("min_estimate", format!("must not be negative, found {m}"));
                    None
                } else {
                    Some(m)
                }
            }),
        };
        let round_to = if inner.contains_key("round_to") {
            r.int(inner, "round_to", 1)
        } else {
            Some(1)
        };
        let upper_bound = match inner.get("upper_bound") {
            None => Some(None),
            Some(v) => r.number(v, "upper_bound").and_then(|u| {
                if u > 0.0 && u.is_finite() {
                    Some(Some(u))
                } else {
                    r.problem(
                        "upper_bound",
                        format!("must be a positive number, found {u}"),
                    );
                    None
                }
            }),
        };
        Some(Publish {
            min_estimate: min_estimate?,
            round_to: round_to?,
            upper_bound: upper_bound?,
        })
    }

    fn derived(&mut self, v: &Value) -> Option<Derived> {
        let Value::Table(t) = v else {
            self.problem(
                "derived",
                format!("must be a table, found {}", v.type_str()),
            );
            return None;
        };
        let mut r = self.nested("derived");
        let kind = r.string(t, "kind")?;
        match kind.as_str() {
            "ratio" => {
                self.unknown_keys(
                    t,
                    "derived",
                    &["kind", "numerator", "denominator", "multiplier"],
                );
                let mut r = self.nested("derived");
                let numerator = r.string(t, "numerator");
                let denominator = r.string(t, "denominator");
                let multiplier = match t.get("multiplier") {
                    None => Some(1.0),
                    Some(v) => r.number(v, "multiplier").filter(|m| {
                        let ok = *m > 0.0;
                        if !ok {
                            r.problem("multiplier", format!("must be positive, found {m}"));
                        }
                        ok
                    }),
                };
                Some(Derived::Ratio {
                    numerator: numerator?,
                    denominator: denominator?,
                    multiplier: multiplier?,
                })
            }
            "quantile" => {
                self.unknown_keys(t, "derived", &["kind", "histogram", "q"]);
                let mut r = self.nested("derived");
                let histogram = r.string(t, "histogram");
                let q = match t.get("q") {
                    None => {
                        r.problem("q", "missing".into());
                        None
                    }
                    Some(v) => r.number(v, "q").filter(|q| {
                        let ok = *q > 0.0 && *q < 1.0;
                        if !ok {
                            r.problem("q", format!("must lie strictly between 0 and 1, found {q}"));
                        }
                        ok
                    }),
                };
                Some(Derived::Quantile {
                    histogram: histogram?,
                    q: q?,
                })
            }
            "per_capita" => {
                self.unknown_keys(t, "derived", &["kind", "numerator", "population", "per"]);
                let mut r = self.nested("derived");
                let numerator = r.string(t, "numerator");
                let population = r.string(t, "population").filter(|g| {
                    let ok = !g.trim().is_empty();
                    if !ok {
                        r.problem(
                            "population",
                            "must name a population group, e.g. \"12-17\"".into(),
                        );
                    }
                    ok
                });
                let per = match t.get("per") {
                    None => {
                        r.problem("per", "missing (e.g. 10000 for a figure per 10,000)".into());
                        None
                    }
                    Some(v) => r.number(v, "per").filter(|p| {
                        let ok = *p > 0.0;
                        if !ok {
                            r.problem("per", format!("must be positive, found {p}"));
                        }
                        ok
                    }),
                };
                Some(Derived::PerCapita {
                    numerator: numerator?,
                    population: population?,
                    per: per?,
                })
            }
            other => {
                r.problem(
                    "kind",
                    format!(
                        "unknown derived kind '{other}'; expected 'ratio', 'quantile' or 'per_capita'"
                    ),
                );
                None
            }
        }
    }

    fn query(&mut self, t: &Table) -> Option<Query> {
        let privacy_unit = self.string(t, "privacy_unit");
        if let Some(u) = &privacy_unit
            && !PRIVACY_UNITS.contains(&u.as_str())
        {
            self.problem(
                "privacy_unit",
                format!("unknown privacy unit '{u}'; expected one of {PRIVACY_UNITS:?}"),
            );
        }
        let sql = self.string(t, "sql");
        if let Some(s) = &sql
            && let Err(e) = crate::contract::check_sql_shape(s)
        {
            self.problem("sql", e.to_string());
        }
        let group_by = self.group_by(t);
        let aggregate = self.aggregate(t);
        let cost = self.cost(t);
        if let (Some(groups), Some(agg)) = (&group_by, &aggregate) {
            let mut names: Vec<&str> = groups.iter().map(|g| g.column.as_str()).collect();
            if let Some(v) = agg.value_column() {
                names.push(v);
            }
            if let Some(u) = &privacy_unit {
                names.push(u);
            }
            let mut seen = std::collections::HashSet::new();
            for n in names {
                if !seen.insert(n) {
                    self.problem(
                        "group_by",
                        format!("column '{n}' is used twice among unit, group and value columns"),
                    );
                }
            }
        }
        Some(Query {
            privacy_unit: privacy_unit?,
            sql: sql?,
            group_by: group_by?,
            aggregate: aggregate?,
            cost: cost?,
        })
    }

    fn group_by(&mut self, t: &Table) -> Option<Vec<GroupKey>> {
        let inner = self.table(t, "group_by")?;
        if inner.is_empty() {
            self.problem("group_by", "must name at least one public group key".into());
            return None;
        }
        let mut keys = Vec::new();
        let mut ok = true;
        let mut periods = 0;
        for (column, v) in inner {
            let field = format!("group_by.{column}");
            if column == BIN_COLUMN {
                self.problem(&field, "'bin' is reserved for histogram bins".into());
                ok = false;
                continue;
            }
            let domain = match v {
                Value::String(s) if s == "period" => {
                    periods += 1;
                    Some(Domain::Period)
                }
                Value::String(s) if s == "years" => {
                    periods += 1;
                    Some(Domain::Years)
                }
                Value::String(s) => match s.strip_prefix("codes:") {
                    Some(reference) if cdm::codes(reference).is_some() => Some(Domain::Codes {
                        reference: reference.to_string(),
                    }),
                    Some(reference) => {
                        self.problem(
                            &field,
                            format!("'{reference}' is not a coded column of the data model"),
                        );
                        None
                    }
                    None => {
                        self.problem(
                            &field,
                            format!(
                                "unknown domain '{s}'; expected \"period\", \"years\", \"codes:TABLE.COLUMN\" or a list of values"
                            ),
                        );
                        None
                    }
                },
                Value::Array(items) => {
                    let mut values = Vec::new();
                    for i in items {
                        match i {
                            Value::String(s) if !s.is_empty() => values.push(s.clone()),
                            other => {
                                self.problem(
                                    &field,
                                    format!("values must be non-empty strings, found {other}"),
                                );
                            }
                        }
                    }
                    let unique: std::collections::HashSet<_> = values.iter().collect();
                    if values.is_empty() || unique.len() != values.len() {
                        self.problem(
                            &field,
                            "values must be a non-empty list without repeats".into(),
                        );
                        None
                    } else {
                        Some(Domain::Values { values })
                    }
                }
                other => {
                    self.problem(
                        &field,
                        format!("must be a string or a list, found {}", other.type_str()),
                    );
                    None
                }
            };
            match domain {
                Some(domain) => keys.push(GroupKey {
                    column: column.clone(),
                    domain,
                }),
                None => ok = false,
            }
        }
        if periods > 1 {
            self.problem(
                "group_by",
                "at most one key may use a time domain (\"period\" or \"years\")".into(),
            );
            ok = false;
        }
        ok.then_some(keys)
    }

    fn aggregate(&mut self, t: &Table) -> Option<Aggregate> {
        let inner = self.table(t, "aggregate")?;
        let mut r = self.nested("aggregate");
        let name = r.string(inner, "kind")?;
        let Some(kind) = AggregateKind::parse(&name) else {
            let names: Vec<&str> = AggregateKind::ALL.iter().map(|k| k.name()).collect();
            r.problem(
                "kind",
                format!(
                    "unknown aggregate kind '{name}'; expected one of {}",
                    names.join(", ")
                ),
            );
            return None;
        };
        let known: &[&str] = match kind {
            AggregateKind::CountUnits => &["kind", "max_groups_per_unit"],
            AggregateKind::CountRows => &["kind", "max_groups_per_unit", "max_rows_per_group"],
            AggregateKind::Sum => &["kind", "value", "lower", "upper", "max_groups_per_unit"],
            AggregateKind::Mean => &[
                "kind",
                "value",
                "lower",
                "upper",
                "max_groups_per_unit",
                "sum_share",
            ],
            AggregateKind::Histogram => &[
                "kind",
                "value",
                "edges",
                "max_groups_per_unit",
                "max_rows_per_group",
            ],
        };
        self.unknown_keys(inner, "aggregate", known);
        let mut r = self.nested("aggregate");
        let k = r.int(inner, "max_groups_per_unit", 1);
        let agg = match kind {
            AggregateKind::CountUnits => Aggregate::CountUnits {
                max_groups_per_unit: k?,
            },
            AggregateKind::CountRows => {
                let m = r.int(inner, "max_rows_per_group", 1);
                Aggregate::CountRows {
                    max_groups_per_unit: k?,
                    max_rows_per_group: m?,
                }
            }
            AggregateKind::Sum | AggregateKind::Mean => {
                let value = r.string(inner, "value");
                let lower = r.any_int(inner, "lower");
                let upper = r.any_int(inner, "upper");
                if let (Some(l), Some(u)) = (lower, upper)
                    && l > u
                {
                    r.problem("lower", format!("lower ({l}) must not exceed upper ({u})"));
                    return None;
                }
                if let (Some(l), Some(u)) = (lower, upper)
                    && (l.unsigned_abs().max(u.unsigned_abs()) > 1 << 40)
                {
                    r.problem("upper", "bounds beyond ±2^40 are not supported".into());
                    return None;
                }
                if kind == AggregateKind::Sum {
                    Aggregate::Sum {
                        value: value?,
                        lower: lower?,
                        upper: upper?,
                        max_groups_per_unit: k?,
                    }
                } else {
                    let share = match inner.get("sum_share") {
                        None => Some(0.5),
                        Some(v) => r.number(v, "sum_share").filter(|s| {
                            let ok = *s > 0.0 && *s < 1.0;
                            if !ok {
                                r.problem(
                                    "sum_share",
                                    format!("must lie strictly between 0 and 1, found {s}"),
                                );
                            }
                            ok
                        }),
                    };
                    Aggregate::Mean {
                        value: value?,
                        lower: lower?,
                        upper: upper?,
                        max_groups_per_unit: k?,
                        sum_share: share?,
                    }
                }
            }
            AggregateKind::Histogram => {
                let value = r.string(inner, "value");
                let m = r.int(inner, "max_rows_per_group", 1);
                let edges = match inner.get("edges") {
                    Some(Value::Array(a)) => {
                        let e: Option<Vec<i64>> = a.iter().map(|v| v.as_integer()).collect();
                        match e {
                            Some(e) if e.len() >= 2 && e.windows(2).all(|w| w[0] < w[1]) => Some(e),
                            _ => {
                                r.problem(
                                    "edges",
                                    "must be at least two strictly increasing integers".into(),
                                );
                                None
                            }
                        }
                    }
                    Some(v) => {
                        r.problem("edges", format!("must be a list, found {}", v.type_str()));
                        None
                    }
                    None => {
                        r.problem("edges", "missing".into());
                        None
                    }
                };
                Aggregate::Histogram {
                    value: value?,
                    edges: edges?,
                    max_groups_per_unit: k?,
                    max_rows_per_group: m?,
                }
            }
        };
        Some(agg)
    }

    fn cost(&mut self, t: &Table) -> Option<Cost> {
        let inner = self.table(t, "cost")?;
        self.unknown_keys(inner, "cost", &["rho", "epsilon"]);
        let mut r = self.nested("cost");
        let pick = |r: &mut Reader, key: &str| -> Option<f64> {
            let v = inner.get(key)?;
            let x = r.number(v, key)?;
            if !(x > 0.0 && x <= MAX_COST) {
                r.problem(
                    key,
                    format!("must be positive and at most {MAX_COST}, found {x}"),
                );
                return None;
            }
            Some(x)
        };
        match (inner.contains_key("rho"), inner.contains_key("epsilon")) {
            (true, false) => pick(&mut r, "rho").map(Cost::Rho),
            (false, true) => pick(&mut r, "epsilon").map(Cost::Epsilon),
            (true, true) => {
                r.problem(
                    "rho",
                    "give either rho (zCDP) or epsilon (pure DP), not both".into(),
                );
                None
            }
            (false, false) => {
                r.problem(
                    "rho",
                    "missing: give rho (zCDP) or epsilon (pure DP)".into(),
                );
                None
            }
        }
    }
}

impl Query {
    /// Histogram bin labels in order: `[a,b)` for each pair of edges and `[last,∞)`; values
    /// below the first edge fall in the first bin.
    pub fn bins(&self) -> Vec<String> {
        self.aggregate.edges().map(bin_labels).unwrap_or_default()
    }
}

pub fn bin_labels(edges: &[i64]) -> Vec<String> {
    let mut out: Vec<String> = edges
        .windows(2)
        .map(|w| format!("[{},{})", w[0], w[1]))
        .collect();
    if let Some(last) = edges.last() {
        out.push(format!("[{last},inf)"));
    }
    out
}
