//! The totality check: proof, from an indicator's analysed `LogicalPlan` (with DataFusion's
//! implicit casts in place), that evaluating it cannot fail on any record a node may hold.
//!
//! A query that fails on some rows and succeeds on others answers one question about the records
//! — "does any row make this fail?" — without noise and without a charge. So every operation that
//! can fail on a data value is refused unless its inputs are known to stay where it cannot:
//! integer division or modulo by anything but a constant other than 0 and −1, CASTs that can fail
//! (text to a number or date, a float or wide integer to a narrower one, a date or timestamp
//! outside its representable range), functions not known to be total, date arithmetic on values
//! of unknown range, patterns that are not constants. Total forms are accepted: `TRY_CAST`, float
//! division (a zero divisor gives NULL with `NULLIF`, or ±inf), casts whose value range fits.
//!
//! Ranges come from the data model, not from records: integers span their type, dates and
//! timestamps of the data model and of the public period tables lie in [`DATE_RANGE`] (a node
//! leaves other rows out, see `node::tables`), and each operation carries its inputs' ranges to
//! its output, across subqueries and joins. Everything not understood is refused.

use crate::cdm::{self, ColumnType};
use crate::contract::PUBLIC_TABLES;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::logical_expr::expr::{
    AggregateFunction, Exists, InSubquery, ScalarFunction, WindowFunction, WindowFunctionDefinition,
};
use datafusion::logical_expr::{
    BinaryExpr, Cast, Distinct, Expr, ExprSchemable, LogicalPlan, Operator, Subquery,
};

/// Days since 1970-01-01 within which every data-model or public date or timestamp lies
/// ([`cdm::FIRST_DAY`] to the end of [`cdm::LAST_DAY`]).
pub const DATE_RANGE: (f64, f64) = (cdm::DAY_RANGE.0 as f64, cdm::DAY_RANGE.1 as f64);

/// Microseconds per day (timestamps of the data model are in microseconds).
const DAY_SECONDS: f64 = 86_400.0;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{expression}: {reason} (in {at})")]
pub struct PartialExpression {
    /// The expression as DataFusion prints it.
    pub expression: String,
    pub reason: Partial,
    /// The clause it sits in and the tables involved.
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Partial {
    #[error(
        "integer {op} by something other than a constant (except 0 and −1) fails when the divisor is 0 and overflows for −1; divide as a float instead, e.g. CAST(a AS DOUBLE) / NULLIF(b, 0)"
    )]
    DivisionByNonConstant { op: String },
    #[error("{op} by the constant {divisor} fails on every row it reaches")]
    DivisionByBadConstant { op: String, divisor: String },
    #[error(
        "CAST from {from} to {to} fails on values it cannot convert; use TRY_CAST, which gives NULL for them"
    )]
    Cast { from: String, to: String },
    #[error(
        "function {function}() can fail on some input values; it is not among the functions known to be total"
    )]
    Function { function: String },
    #[error("{function}() {requirement}")]
    Argument {
        function: String,
        requirement: &'static str,
    },
    #[error(
        "date and time arithmetic on a value of unknown range can overflow; use data-model dates and timestamps and constant intervals"
    )]
    TemporalUnbounded,
    #[error("the result can leave the range of {to}")]
    OutOfRange { to: String },
    #[error("abs() of an integer that can be its type's minimum overflows; take it of a float")]
    Abs,
    #[error("decimal arithmetic can overflow; compute in integers or floats")]
    Decimal,
    #[error("a {what} pattern that is not a constant can be invalid on some rows")]
    Pattern { what: &'static str },
    #[error("operator {op} is not known to be total")]
    Operator { op: String },
    #[error(
        "{construct} is not understood by the totality check, and what it cannot prove is refused"
    )]
    Unsupported { construct: String },
}

/// What is known of a value's range, from the data model and the operations on it: numbers as
/// themselves, dates and timestamps as days since 1970-01-01, durations and intervals as days.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Facts {
    range: Option<(f64, f64)>,
    /// A float that may be NaN.
    nan: bool,
}

impl Facts {
    fn range(lo: f64, hi: f64) -> Facts {
        Facts {
            range: Some((lo.min(hi), lo.max(hi))),
            nan: false,
        }
    }

    fn unknown() -> Facts {
        Facts::default()
    }

    fn union(self, other: Facts) -> Facts {
        Facts {
            range: match (self.range, other.range) {
                (Some(a), Some(b)) => Some((a.0.min(b.0), a.1.max(b.1))),
                _ => None,
            },
            nan: self.nan || other.nan,
        }
    }

    /// Facts a value of this type has whatever produced it.
    fn of_type(t: &DataType) -> Facts {
        match integer_range(t) {
            Some((lo, hi)) => Facts::range(lo, hi),
            None if t.is_floating() => Facts {
                range: None,
                nan: true,
            },
            None => Facts::unknown(),
        }
    }

    fn within(&self, lo: f64, hi: f64) -> bool {
        !self.nan && self.range.is_some_and(|(a, b)| a >= lo && b <= hi)
    }
}

fn integer_range(t: &DataType) -> Option<(f64, f64)> {
    Some(match t {
        DataType::Int8 => (i8::MIN as f64, i8::MAX as f64),
        DataType::Int16 => (i16::MIN as f64, i16::MAX as f64),
        DataType::Int32 => (i32::MIN as f64, i32::MAX as f64),
        DataType::Int64 => (i64::MIN as f64, i64::MAX as f64),
        DataType::UInt8 => (0.0, u8::MAX as f64),
        DataType::UInt16 => (0.0, u16::MAX as f64),
        DataType::UInt32 => (0.0, u32::MAX as f64),
        DataType::UInt64 => (0.0, u64::MAX as f64),
        DataType::Boolean => (0.0, 1.0),
        _ => return None,
    })
}

/// Days from 1970 a value of this temporal type can represent without overflow or a calendar
/// error: nanosecond timestamps reach 1677–2262; everything else the calendar's ±262,000 years.
fn temporal_limit(t: &DataType) -> Option<f64> {
    match t {
        DataType::Timestamp(TimeUnit::Nanosecond, _) | DataType::Date64 => Some(106_000.0),
        DataType::Timestamp(_, _) | DataType::Date32 => Some(95_000_000.0),
        // An interval's time part is nanoseconds: casting a span into one overflows past this.
        DataType::Duration(TimeUnit::Nanosecond) | DataType::Interval(_) => Some(106_000.0),
        DataType::Duration(_) => Some(95_000_000.0),
        _ => None,
    }
}

fn is_temporal(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _)
    )
}

fn is_span(t: &DataType) -> bool {
    matches!(t, DataType::Duration(_) | DataType::Interval(_))
}

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// The facts of a literal.
fn literal_facts(v: &ScalarValue) -> Facts {
    let exact = |x: f64| Facts::range(x, x);
    match v {
        ScalarValue::Int8(Some(x)) => exact(*x as f64),
        ScalarValue::Int16(Some(x)) => exact(*x as f64),
        ScalarValue::Int32(Some(x)) => exact(*x as f64),
        ScalarValue::Int64(Some(x)) => exact(*x as f64),
        ScalarValue::UInt8(Some(x)) => exact(*x as f64),
        ScalarValue::UInt16(Some(x)) => exact(*x as f64),
        ScalarValue::UInt32(Some(x)) => exact(*x as f64),
        ScalarValue::UInt64(Some(x)) => exact(*x as f64),
        ScalarValue::Float32(Some(x)) if x.is_finite() => exact(*x as f64),
        ScalarValue::Float64(Some(x)) if x.is_finite() => exact(*x),
        ScalarValue::Boolean(Some(b)) => exact(if *b { 1.0 } else { 0.0 }),
        ScalarValue::Date32(Some(d)) => exact(*d as f64),
        ScalarValue::Date64(Some(ms)) => exact(*ms as f64 / (DAY_SECONDS * 1e3)),
        ScalarValue::TimestampSecond(Some(t), _) => exact(*t as f64 / DAY_SECONDS),
        ScalarValue::TimestampMillisecond(Some(t), _) => exact(*t as f64 / (DAY_SECONDS * 1e3)),
        ScalarValue::TimestampMicrosecond(Some(t), _) => exact(*t as f64 / (DAY_SECONDS * 1e6)),
        ScalarValue::TimestampNanosecond(Some(t), _) => exact(*t as f64 / (DAY_SECONDS * 1e9)),
        ScalarValue::IntervalYearMonth(Some(m)) => span(*m as f64 * 31.0),
        ScalarValue::IntervalDayTime(Some(v)) => {
            span(v.days as f64 + v.milliseconds as f64 / (DAY_SECONDS * 1e3))
        }
        ScalarValue::IntervalMonthDayNano(Some(v)) => span(
            v.months as f64 * 31.0 + v.days as f64 + v.nanoseconds as f64 / (DAY_SECONDS * 1e9),
        ),
        ScalarValue::DurationSecond(Some(s)) => span(*s as f64 / DAY_SECONDS),
        ScalarValue::DurationMillisecond(Some(s)) => span(*s as f64 / (DAY_SECONDS * 1e3)),
        ScalarValue::DurationMicrosecond(Some(s)) => span(*s as f64 / (DAY_SECONDS * 1e6)),
        ScalarValue::DurationNanosecond(Some(s)) => span(*s as f64 / (DAY_SECONDS * 1e9)),
        // NULL of any type, text, NaN, infinities: no numeric range to carry.
        other if other.is_null() => Facts::range(0.0, 0.0),
        _ => Facts::unknown(),
    }
}

/// An interval's extent in days, widened by a day both ways (months differ in length).
fn span(days: f64) -> Facts {
    let m = days.abs() + 1.0;
    Facts::range(-m, m)
}

/// The literal under any casts of it (the analyser casts constants to the other side's type).
fn literal_of(e: &Expr) -> Option<&ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v),
        Expr::Cast(c) => literal_of(&c.expr),
        Expr::TryCast(c) => literal_of(&c.expr),
        Expr::Alias(a) => literal_of(&a.expr),
        _ => None,
    }
}

fn literal_i64(e: &Expr) -> Option<i64> {
    let v = literal_of(e)?;
    match v.cast_to(&DataType::Int64).ok()? {
        ScalarValue::Int64(Some(x)) => Some(x),
        _ => None,
    }
}

fn literal_text(e: &Expr) -> Option<String> {
    match literal_of(e)? {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Some(s.clone()),
        _ => None,
    }
}

/// Columns in scope at one plan node: the schema its expressions are typed against and the facts
/// of each field.
struct Env {
    schema: DFSchema,
    facts: Vec<Facts>,
}

impl Env {
    fn of(plan: &LogicalPlan, facts: Vec<Facts>) -> Env {
        Env {
            schema: plan.schema().as_ref().clone(),
            facts,
        }
    }

    fn lookup(&self, c: &Column) -> Option<Facts> {
        self.schema
            .maybe_index_of_column(c)
            .and_then(|i| self.facts.get(i).copied())
    }
}

/// Check an analysed plan (implicit casts in place): nothing in it can fail on a data value.
pub fn check(plan: &LogicalPlan) -> Result<(), PartialExpression> {
    Checker.plan(plan, &[]).map(|_| ())
}

struct Checker;

type Res<T> = Result<T, PartialExpression>;

fn refuse<T>(e: &Expr, reason: Partial, at: &str) -> Res<T> {
    Err(PartialExpression {
        expression: e.to_string(),
        reason,
        at: at.to_string(),
    })
}

fn label(plan: &LogicalPlan) -> String {
    match plan {
        LogicalPlan::TableScan(s) => s.table_name.table().to_string(),
        LogicalPlan::SubqueryAlias(a) => a.alias.table().to_string(),
        other => match other.inputs().as_slice() {
            [one] => label(one),
            many => many.iter().map(|p| label(p)).collect::<Vec<_>>().join(", "),
        },
    }
}

impl Checker {
    /// The facts of every output column of `plan`, checking every expression on the way.
    fn plan(&self, plan: &LogicalPlan, scopes: &[&Env]) -> Res<Vec<Facts>> {
        let at = |clause: &str| format!("{clause} over {}", label(plan));
        match plan {
            LogicalPlan::TableScan(scan) => {
                let table = scan.table_name.table();
                let known = cdm::table(table);
                let public = PUBLIC_TABLES.contains(&table);
                let facts: Vec<Facts> = scan
                    .projected_schema
                    .fields()
                    .iter()
                    .map(|f| {
                        let model = known
                            .as_ref()
                            .and_then(|d| d.column(f.name()))
                            .map(|c| c.ty);
                        match model {
                            Some(ColumnType::Date32 | ColumnType::Timestamp) => {
                                Facts::range(DATE_RANGE.0, DATE_RANGE.1)
                            }
                            _ if public && is_temporal(f.data_type()) => {
                                Facts::range(DATE_RANGE.0, DATE_RANGE.1)
                            }
                            _ => Facts::of_type(f.data_type()),
                        }
                    })
                    .collect();
                let env = Env {
                    schema: scan.projected_schema.as_ref().clone(),
                    facts: facts.clone(),
                };
                for f in &scan.filters {
                    self.expr(f, &env, scopes, &at("a pushed-down filter"))?;
                }
                Ok(facts)
            }
            LogicalPlan::Projection(p) => {
                let env = Env::of(&p.input, self.plan(&p.input, scopes)?);
                p.expr
                    .iter()
                    .map(|e| self.expr(e, &env, scopes, &at("the SELECT list")))
                    .collect()
            }
            LogicalPlan::Filter(f) => {
                let facts = self.plan(&f.input, scopes)?;
                let env = Env::of(&f.input, facts);
                self.expr(
                    &f.predicate,
                    &env,
                    scopes,
                    &at("the WHERE/HAVING condition"),
                )?;
                Ok(env.facts)
            }
            LogicalPlan::Join(j) => {
                let mut facts = self.plan(&j.left, scopes)?;
                facts.extend(self.plan(&j.right, scopes)?);
                let mut schema = j.left.schema().as_ref().clone();
                schema.merge(j.right.schema());
                let env = Env { schema, facts };
                let where_ = at("the JOIN condition");
                for (l, r) in &j.on {
                    self.expr(l, &env, scopes, &where_)?;
                    self.expr(r, &env, scopes, &where_)?;
                }
                if let Some(f) = &j.filter {
                    self.expr(f, &env, scopes, &where_)?;
                }
                Ok(j.schema
                    .iter()
                    .map(|(q, f)| {
                        env.lookup(&Column::new(q.cloned(), f.name()))
                            .unwrap_or_else(|| Facts::of_type(f.data_type()))
                    })
                    .collect())
            }
            LogicalPlan::Aggregate(a) => {
                let env = Env::of(&a.input, self.plan(&a.input, scopes)?);
                let where_ = at("the GROUP BY");
                a.group_expr
                    .iter()
                    .chain(&a.aggr_expr)
                    .map(|e| self.expr(e, &env, scopes, &where_))
                    .collect()
            }
            LogicalPlan::Window(w) => {
                let env = Env::of(&w.input, self.plan(&w.input, scopes)?);
                let mut facts = env.facts.clone();
                for e in &w.window_expr {
                    facts.push(self.expr(e, &env, scopes, &at("the window functions"))?);
                }
                Ok(facts)
            }
            LogicalPlan::Sort(s) => {
                let env = Env::of(&s.input, self.plan(&s.input, scopes)?);
                for e in &s.expr {
                    self.expr(&e.expr, &env, scopes, &at("the ORDER BY"))?;
                }
                Ok(env.facts)
            }
            LogicalPlan::Limit(l) => self.plan(&l.input, scopes),
            LogicalPlan::Distinct(Distinct::All(input)) => self.plan(input, scopes),
            LogicalPlan::Distinct(Distinct::On(d)) => {
                let env = Env::of(&d.input, self.plan(&d.input, scopes)?);
                let where_ = at("SELECT DISTINCT ON");
                for e in &d.on_expr {
                    self.expr(e, &env, scopes, &where_)?;
                }
                for s in d.sort_expr.iter().flatten() {
                    self.expr(&s.expr, &env, scopes, &where_)?;
                }
                d.select_expr
                    .iter()
                    .map(|e| self.expr(e, &env, scopes, &where_))
                    .collect()
            }
            LogicalPlan::SubqueryAlias(a) => self.plan(&a.input, scopes),
            LogicalPlan::Subquery(s) => self.plan(&s.subquery, scopes),
            LogicalPlan::Union(u) => {
                let mut out: Option<Vec<Facts>> = None;
                for input in &u.inputs {
                    let facts = self.plan(input, scopes)?;
                    out = Some(match out {
                        None => facts,
                        Some(prev) => prev
                            .into_iter()
                            .zip(facts)
                            .map(|(a, b)| a.union(b))
                            .collect(),
                    });
                }
                Ok(out.unwrap_or_default())
            }
            LogicalPlan::Values(v) => {
                let env = Env {
                    schema: v.schema.as_ref().clone(),
                    facts: Vec::new(),
                };
                let mut out: Option<Vec<Facts>> = None;
                for row in &v.values {
                    let facts = row
                        .iter()
                        .map(|e| self.expr(e, &env, scopes, "VALUES"))
                        .collect::<Res<Vec<_>>>()?;
                    out = Some(match out {
                        None => facts,
                        Some(prev) => prev
                            .into_iter()
                            .zip(facts)
                            .map(|(a, b)| a.union(b))
                            .collect(),
                    });
                }
                Ok(out.unwrap_or_default())
            }
            LogicalPlan::EmptyRelation(e) => Ok(e
                .schema
                .fields()
                .iter()
                .map(|f| Facts::of_type(f.data_type()))
                .collect()),
            LogicalPlan::Repartition(_)
            | LogicalPlan::Unnest(_)
            | LogicalPlan::RecursiveQuery(_)
            | LogicalPlan::Extension(_)
            | LogicalPlan::Statement(_)
            | LogicalPlan::Explain(_)
            | LogicalPlan::Analyze(_)
            | LogicalPlan::Dml(_)
            | LogicalPlan::Ddl(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::DescribeTable(_) => Err(PartialExpression {
                expression: plan.display().to_string(),
                reason: Partial::Unsupported {
                    construct: "this plan node".into(),
                },
                at: "the query".into(),
            }),
        }
    }

    fn subquery(&self, s: &Subquery, env: &Env, scopes: &[&Env]) -> Res<Vec<Facts>> {
        let mut inner: Vec<&Env> = scopes.to_vec();
        inner.push(env);
        self.plan(&s.subquery, &inner)
    }

    fn type_of(&self, e: &Expr, env: &Env) -> Option<DataType> {
        e.get_type(&env.schema).ok()
    }

    /// The facts of `e`'s value, after checking it cannot fail on any value of its inputs.
    fn expr(&self, e: &Expr, env: &Env, scopes: &[&Env], at: &str) -> Res<Facts> {
        #[allow(deprecated)]
        match e {
            Expr::Alias(a) => self.expr(&a.expr, env, scopes, at),
            Expr::Column(c) => Ok(env.lookup(c).unwrap_or_else(|| {
                self.type_of(e, env)
                    .map(|t| Facts::of_type(&t))
                    .unwrap_or_default()
            })),
            Expr::OuterReferenceColumn(field, c) => Ok(scopes
                .iter()
                .rev()
                .find_map(|s| s.lookup(c))
                .unwrap_or_else(|| Facts::of_type(field.data_type()))),
            Expr::Literal(v, _) => Ok(literal_facts(v)),
            Expr::BinaryExpr(b) => self.binary(e, b, env, scopes, at),
            Expr::Like(l) | Expr::SimilarTo(l) => {
                self.expr(&l.expr, env, scopes, at)?;
                let what = if matches!(e, Expr::Like(_)) {
                    "LIKE"
                } else {
                    "SIMILAR TO"
                };
                match literal_text(&l.pattern) {
                    Some(p) if l.escape_char.is_none_or(|c| !p.ends_with(c)) => {
                        Ok(Facts::range(0.0, 1.0))
                    }
                    _ => refuse(e, Partial::Pattern { what }, at),
                }
            }
            Expr::Not(x)
            | Expr::IsNotNull(x)
            | Expr::IsNull(x)
            | Expr::IsTrue(x)
            | Expr::IsFalse(x)
            | Expr::IsUnknown(x)
            | Expr::IsNotTrue(x)
            | Expr::IsNotFalse(x)
            | Expr::IsNotUnknown(x) => {
                self.expr(x, env, scopes, at)?;
                Ok(Facts::range(0.0, 1.0))
            }
            Expr::Negative(x) => {
                let f = self.expr(x, env, scopes, at)?;
                // Integer negation wraps (−MIN is MIN) rather than failing: no range kept.
                match self.type_of(x, env) {
                    Some(t) if integer_range(&t).is_some() => Ok(Facts::of_type(&t)),
                    Some(DataType::Decimal128(..) | DataType::Decimal256(..)) => {
                        refuse(e, Partial::Decimal, at)
                    }
                    _ => Ok(Facts {
                        range: f.range.map(|(a, b)| (-b, -a)),
                        nan: f.nan,
                    }),
                }
            }
            Expr::Between(b) => {
                self.expr(&b.expr, env, scopes, at)?;
                self.expr(&b.low, env, scopes, at)?;
                self.expr(&b.high, env, scopes, at)?;
                Ok(Facts::range(0.0, 1.0))
            }
            Expr::Case(c) => {
                if let Some(x) = &c.expr {
                    self.expr(x, env, scopes, at)?;
                }
                let mut out: Option<Facts> = None;
                for (when, then) in &c.when_then_expr {
                    self.expr(when, env, scopes, at)?;
                    let f = self.expr(then, env, scopes, at)?;
                    out = Some(out.map_or(f, |o| o.union(f)));
                }
                let otherwise = match &c.else_expr {
                    Some(x) => self.expr(x, env, scopes, at)?,
                    None => Facts::range(0.0, 0.0),
                };
                Ok(out.map_or(otherwise, |o| o.union(otherwise)))
            }
            Expr::Cast(Cast { expr, field }) => {
                let f = self.expr(expr, env, scopes, at)?;
                let from = self.type_of(expr, env).unwrap_or(DataType::Null);
                self.cast(e, expr, &from, field.data_type(), f, at)
            }
            Expr::TryCast(c) => {
                self.expr(&c.expr, env, scopes, at)?;
                Ok(Facts::of_type(c.field.data_type()))
            }
            Expr::InList(l) => {
                self.expr(&l.expr, env, scopes, at)?;
                for x in &l.list {
                    self.expr(x, env, scopes, at)?;
                }
                Ok(Facts::range(0.0, 1.0))
            }
            Expr::ScalarFunction(f) => self.function(e, f, env, scopes, at),
            Expr::AggregateFunction(a) => self.aggregate(e, a, env, scopes, at),
            Expr::WindowFunction(w) => self.window(e, w, env, scopes, at),
            Expr::Exists(Exists { subquery, .. }) => {
                self.subquery(subquery, env, scopes)?;
                Ok(Facts::range(0.0, 1.0))
            }
            Expr::InSubquery(InSubquery { expr, subquery, .. }) => {
                self.expr(expr, env, scopes, at)?;
                self.subquery(subquery, env, scopes)?;
                Ok(Facts::range(0.0, 1.0))
            }
            Expr::ScalarSubquery(s) => Ok(self
                .subquery(s, env, scopes)?
                .first()
                .copied()
                .unwrap_or_default()),
            Expr::SetComparison(_) => self.unsupported(e, "ANY/ALL subquery comparison", at),
            Expr::ScalarVariable(..) => self.unsupported(e, "a session variable", at),
            Expr::Placeholder(_) => self.unsupported(e, "a query parameter placeholder", at),
            Expr::GroupingSet(_) => self.unsupported(e, "GROUPING SETS", at),
            Expr::Unnest(_) => self.unsupported(e, "UNNEST", at),
            Expr::HigherOrderFunction(_) => self.unsupported(e, "a higher-order function", at),
            Expr::Lambda(_) | Expr::LambdaVariable(_) => self.unsupported(e, "a lambda", at),
            Expr::Wildcard { .. } => self.unsupported(e, "an unexpanded wildcard", at),
        }
    }

    fn unsupported<T>(&self, e: &Expr, construct: &str, at: &str) -> Res<T> {
        refuse(
            e,
            Partial::Unsupported {
                construct: construct.to_string(),
            },
            at,
        )
    }

    fn binary(&self, e: &Expr, b: &BinaryExpr, env: &Env, scopes: &[&Env], at: &str) -> Res<Facts> {
        let lf = self.expr(&b.left, env, scopes, at)?;
        let rf = self.expr(&b.right, env, scopes, at)?;
        let lt = self.type_of(&b.left, env).unwrap_or(DataType::Null);
        let rt = self.type_of(&b.right, env).unwrap_or(DataType::Null);
        let out = self.type_of(e, env).unwrap_or(DataType::Null);
        let boolean = Facts::range(0.0, 1.0);
        let decimal =
            |t: &DataType| matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..));
        match b.op {
            Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq
            | Operator::And
            | Operator::Or
            | Operator::IsDistinctFrom
            | Operator::IsNotDistinctFrom => Ok(boolean),
            Operator::StringConcat => Ok(Facts::unknown()),
            Operator::BitwiseAnd | Operator::BitwiseOr | Operator::BitwiseXor => {
                Ok(Facts::of_type(&out))
            }
            Operator::BitwiseShiftLeft | Operator::BitwiseShiftRight => {
                match literal_i64(&b.right) {
                    Some(n) if (0..64).contains(&n) => Ok(Facts::of_type(&out)),
                    _ => refuse(
                        e,
                        Partial::Operator {
                            op: format!("{} by a non-constant or out-of-range shift", b.op),
                        },
                        at,
                    ),
                }
            }
            Operator::RegexMatch
            | Operator::RegexIMatch
            | Operator::RegexNotMatch
            | Operator::RegexNotIMatch => match literal_text(&b.right) {
                Some(_) => Ok(boolean),
                None => refuse(
                    e,
                    Partial::Pattern {
                        what: "regular expression",
                    },
                    at,
                ),
            },
            Operator::LikeMatch
            | Operator::ILikeMatch
            | Operator::NotLikeMatch
            | Operator::NotILikeMatch => match literal_text(&b.right) {
                Some(_) => Ok(boolean),
                None => refuse(e, Partial::Pattern { what: "LIKE" }, at),
            },
            Operator::Divide | Operator::Modulo | Operator::IntegerDivide => {
                if decimal(&lt) || decimal(&rt) {
                    return refuse(e, Partial::Decimal, at);
                }
                if out.is_floating() {
                    // Never fails; by a constant other than 0 the range divides too.
                    let by = literal_of(&b.right)
                        .and_then(|v| v.cast_to(&DataType::Float64).ok())
                        .and_then(|v| match v {
                            ScalarValue::Float64(Some(d)) if d.is_finite() && d != 0.0 => Some(d),
                            _ => None,
                        });
                    return Ok(match (b.op, by, lf.range) {
                        (Operator::Divide, Some(d), Some((lo, hi))) => Facts {
                            range: Some(((lo / d).min(hi / d), (lo / d).max(hi / d))),
                            nan: lf.nan,
                        },
                        _ => Facts {
                            range: None,
                            nan: true,
                        },
                    });
                }
                let op = match b.op {
                    Operator::Modulo => "modulo",
                    _ => "division",
                }
                .to_string();
                match literal_i64(&b.right) {
                    Some(0 | -1) => refuse(
                        e,
                        Partial::DivisionByBadConstant {
                            op,
                            divisor: b.right.to_string(),
                        },
                        at,
                    ),
                    Some(d) => Ok(match (b.op, lf.range) {
                        (Operator::Modulo, _) => {
                            let m = (d as f64).abs();
                            Facts::range(-m, m)
                        }
                        (_, Some((lo, hi))) => Facts::range(lo / d as f64, hi / d as f64),
                        (_, None) => Facts::of_type(&out),
                    }),
                    None if integer_range(&rt).is_some() || rt.is_null() => {
                        refuse(e, Partial::DivisionByNonConstant { op }, at)
                    }
                    None => refuse(
                        e,
                        Partial::Operator {
                            op: format!("{} on {lt} and {rt}", b.op),
                        },
                        at,
                    ),
                }
            }
            Operator::Plus | Operator::Minus | Operator::Multiply => {
                self.arithmetic(e, b.op, (&lt, lf), (&rt, rf), &out, at)
            }
            Operator::AtArrow
            | Operator::ArrowAt
            | Operator::Arrow
            | Operator::LongArrow
            | Operator::HashArrow
            | Operator::HashLongArrow
            | Operator::AtAt
            | Operator::HashMinus
            | Operator::AtQuestion
            | Operator::Question
            | Operator::QuestionAnd
            | Operator::QuestionPipe
            | Operator::Colon => refuse(
                e,
                Partial::Operator {
                    op: b.op.to_string(),
                },
                at,
            ),
        }
    }

    fn arithmetic(
        &self,
        e: &Expr,
        op: Operator,
        (lt, lf): (&DataType, Facts),
        (rt, rf): (&DataType, Facts),
        out: &DataType,
        at: &str,
    ) -> Res<Facts> {
        let decimal =
            |t: &DataType| matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..));
        if decimal(lt) || decimal(rt) {
            return refuse(e, Partial::Decimal, at);
        }
        let combined = match (lf.range, rf.range) {
            (Some((a, b)), Some((c, d))) => Some(match op {
                Operator::Plus => (a + c, b + d),
                Operator::Minus => (a - d, b - c),
                _ => {
                    let p = [a * c, a * d, b * c, b * d];
                    (
                        p.iter().copied().fold(f64::INFINITY, f64::min),
                        p.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    )
                }
            }),
            _ => None,
        };
        let temporal = is_temporal(lt) || is_temporal(rt) || is_span(lt) || is_span(rt);
        if !temporal {
            if out.is_floating() {
                return Ok(Facts {
                    range: combined,
                    nan: lf.nan || rf.nan || combined.is_none(),
                });
            }
            if let Some((lo, hi)) = integer_range(out) {
                // Integer +, − and × wrap in DataFusion instead of failing; a range that may
                // wrap is no longer known.
                return Ok(match combined {
                    Some((a, b)) if a >= lo && b <= hi => Facts::range(a, b),
                    _ => Facts::range(lo, hi),
                });
            }
            if lt.is_null() || rt.is_null() || out.is_null() {
                return Ok(Facts::range(0.0, 0.0));
            }
            return refuse(
                e,
                Partial::Operator {
                    op: format!("{op} on {lt} and {rt}"),
                },
                at,
            );
        }
        // Date and time arithmetic fails when a value leaves its type's range: both sides need a
        // known range, and the result must stay within what the result type holds.
        if op == Operator::Multiply {
            return refuse(
                e,
                Partial::Operator {
                    op: format!("{op} on {lt} and {rt}"),
                },
                at,
            );
        }
        let Some((lo, hi)) = combined else {
            return refuse(e, Partial::TemporalUnbounded, at);
        };
        // Every operand and the result within the tightest limit involved.
        let limit = [lt, rt, out]
            .into_iter()
            .filter_map(temporal_limit)
            .fold(f64::INFINITY, f64::min);
        let operand_ok = |f: &Facts, t: &DataType| match temporal_limit(t) {
            Some(_) => f.within(-limit, limit),
            // An integer number of days added to a date.
            None => f.within(-limit, limit),
        };
        if !operand_ok(&lf, lt) || !operand_ok(&rf, rt) || lo < -limit || hi > limit {
            return refuse(
                e,
                Partial::OutOfRange {
                    to: out.to_string(),
                },
                at,
            );
        }
        Ok(Facts::range(lo, hi))
    }

    fn cast(
        &self,
        e: &Expr,
        inner: &Expr,
        from: &DataType,
        to: &DataType,
        f: Facts,
        at: &str,
    ) -> Res<Facts> {
        let fails = || {
            refuse(
                e,
                Partial::Cast {
                    from: from.to_string(),
                    to: to.to_string(),
                },
                at,
            )
        };
        // A constant is converted here, once: if it converts, it converts on every row.
        if let Expr::Literal(v, _) = inner {
            return match v.cast_to(to) {
                Ok(c) => Ok(literal_facts(&c)),
                Err(_) => fails(),
            };
        }
        if from == to || from.is_null() {
            return Ok(f);
        }
        if is_text(to) {
            // Numbers, booleans and text always print; dates and timestamps only in range.
            let prints = integer_range(from).is_some()
                || from.is_floating()
                || is_text(from)
                || temporal_limit(from).is_some_and(|l| f.within(-l, l));
            return if prints {
                Ok(Facts::unknown())
            } else {
                fails()
            };
        }
        if let Some((lo, hi)) = integer_range(to) {
            // i64::MAX as a float rounds up to 2^63, which does not convert: keep clear of it.
            let hi = if from.is_floating() { hi - 4096.0 } else { hi };
            let fits = (integer_range(from).is_some() || from.is_floating()) && f.within(lo, hi);
            return if fits { Ok(f) } else { fails() };
        }
        if to.is_floating() {
            return if integer_range(from).is_some() || from.is_floating() {
                Ok(f)
            } else {
                fails()
            };
        }
        // A number of seconds (or other units) as a duration: the analyser's form of
        // `date + 365`. In range when the number, in days, is.
        if let (DataType::Duration(unit), Some(limit)) = (to, temporal_limit(to))
            && integer_range(from).is_some()
        {
            let per_day = match unit {
                TimeUnit::Second => DAY_SECONDS,
                TimeUnit::Millisecond => DAY_SECONDS * 1e3,
                TimeUnit::Microsecond => DAY_SECONDS * 1e6,
                TimeUnit::Nanosecond => DAY_SECONDS * 1e9,
            };
            return match f.range {
                Some((lo, hi)) if !f.nan && (lo / per_day) >= -limit && (hi / per_day) <= limit => {
                    Ok(Facts::range(lo / per_day, hi / per_day))
                }
                _ => fails(),
            };
        }
        if let Some(limit) = temporal_limit(to)
            && ((is_temporal(to) && is_temporal(from)) || (is_span(to) && is_span(from)))
        {
            return if f.within(-limit, limit) {
                Ok(f)
            } else {
                fails()
            };
        }
        fails()
    }

    fn function(
        &self,
        e: &Expr,
        f: &ScalarFunction,
        env: &Env,
        scopes: &[&Env],
        at: &str,
    ) -> Res<Facts> {
        let args: Vec<Facts> = f
            .args
            .iter()
            .map(|a| self.expr(a, env, scopes, at))
            .collect::<Res<_>>()?;
        let name = f.func.name().to_ascii_lowercase();
        let arg_type = |i: usize| f.args.get(i).and_then(|a| self.type_of(a, env));
        let union = || {
            args.iter()
                .copied()
                .reduce(Facts::union)
                .unwrap_or_default()
        };
        let need = |ok: bool, requirement: &'static str| -> Res<()> {
            if ok {
                Ok(())
            } else {
                refuse(
                    e,
                    Partial::Argument {
                        function: name.clone(),
                        requirement,
                    },
                    at,
                )
            }
        };
        let small_constant = |i: usize, lo: i64| {
            f.args
                .get(i)
                .and_then(literal_i64)
                .is_some_and(|n| (lo..=10_000).contains(&n))
        };
        match name.as_str() {
            // Choices among the arguments: their facts.
            "coalesce" | "nullif" | "nvl" | "ifnull" | "greatest" | "least" => Ok(union()),
            "nvl2" => Ok(args
                .iter()
                .skip(1)
                .copied()
                .reduce(Facts::union)
                .unwrap_or_default()),
            // Text functions that are defined on every string.
            "lower" | "upper" | "trim" | "btrim" | "ltrim" | "rtrim" | "concat" | "concat_ws"
            | "replace" | "reverse" | "translate" | "initcap" | "md5" | "to_hex" => {
                Ok(Facts::unknown())
            }
            "length" | "char_length" | "character_length" | "octet_length" | "bit_length"
            | "strpos" | "instr" | "ascii" => Ok(Facts::range(0.0, i64::MAX as f64)),
            "starts_with" | "ends_with" | "isnan" | "iszero" => Ok(Facts::range(0.0, 1.0)),
            // Floats never fail (NaN and infinities instead); on integers these keep the range.
            "floor" | "ceil" | "round" | "trunc" => Ok(args.first().copied().unwrap_or_default()),
            "signum" => Ok(Facts::range(-1.0, 1.0)),
            "sqrt" | "cbrt" | "exp" | "ln" | "log" | "log2" | "log10" | "sin" | "cos" | "tan"
            | "asin" | "acos" | "atan" | "atan2" | "sinh" | "cosh" | "tanh" | "degrees"
            | "radians" | "pi" | "nanvl" => Ok(Facts {
                range: None,
                nan: true,
            }),
            "abs" => match (arg_type(0), args.first()) {
                (Some(t), _) if t.is_floating() => Ok(Facts {
                    range: None,
                    nan: true,
                }),
                (Some(t), Some(a)) if integer_range(&t).is_some() => {
                    let (min, _) = integer_range(&t).unwrap_or((0.0, 0.0));
                    match a.range {
                        Some((lo, hi)) if lo > min => Ok(Facts::range(0.0, lo.abs().max(hi.abs()))),
                        _ => refuse(e, Partial::Abs, at),
                    }
                }
                _ => refuse(e, Partial::Abs, at),
            },
            // date_part and extract give NULL outside the calendar rather than failing.
            "date_part" | "datepart" => {
                need(
                    f.args.first().and_then(literal_text).is_some(),
                    "needs a constant part name",
                )?;
                let part = f.args.first().and_then(literal_text).unwrap_or_default();
                let of = args.get(1).and_then(|a| a.range);
                Ok(match (part.to_ascii_lowercase().as_str(), of) {
                    ("epoch", Some((lo, hi))) => {
                        Facts::range((lo - 1.0) * DAY_SECONDS, (hi + 1.0) * DAY_SECONDS)
                    }
                    ("epoch", None) => Facts {
                        range: None,
                        nan: false,
                    },
                    _ => Facts::range(-1e11, 1e11),
                })
            }
            "date_trunc" | "datetrunc" => {
                need(
                    f.args.first().and_then(literal_text).is_some(),
                    "needs a constant unit",
                )?;
                let of = args.get(1).copied().unwrap_or_default();
                let limit = arg_type(1).as_ref().and_then(temporal_limit).unwrap_or(0.0);
                if !of.within(-limit, limit) {
                    return refuse(e, Partial::TemporalUnbounded, at);
                }
                Ok(Facts {
                    range: of.range.map(|(lo, hi)| (lo - 1.0, hi)),
                    nan: false,
                })
            }
            "substr" | "substring" => {
                need(
                    small_constant(1, -10_000) && (f.args.len() < 3 || small_constant(2, 0)),
                    "needs a constant start and a constant count of 0 to 10,000",
                )?;
                Ok(Facts::unknown())
            }
            "left" | "right" | "lpad" | "rpad" | "repeat" => {
                need(
                    small_constant(1, -10_000),
                    "needs a constant length within ±10,000",
                )?;
                Ok(Facts::unknown())
            }
            "split_part" => {
                need(
                    f.args
                        .get(2)
                        .and_then(literal_i64)
                        .is_some_and(|n| n != 0 && n.abs() <= 10_000),
                    "needs a constant field position other than 0",
                )?;
                Ok(Facts::unknown())
            }
            _ => refuse(e, Partial::Function { function: name }, at),
        }
    }

    fn aggregate(
        &self,
        e: &Expr,
        a: &AggregateFunction,
        env: &Env,
        scopes: &[&Env],
        at: &str,
    ) -> Res<Facts> {
        let args: Vec<Facts> = a
            .params
            .args
            .iter()
            .map(|x| self.expr(x, env, scopes, at))
            .collect::<Res<_>>()?;
        if let Some(filter) = &a.params.filter {
            self.expr(filter, env, scopes, at)?;
        }
        for s in &a.params.order_by {
            self.expr(&s.expr, env, scopes, at)?;
        }
        let out = self.type_of(e, env).unwrap_or(DataType::Null);
        self.aggregate_by_name(e, a.func.name(), &a.params.args, &args, &out, at)
    }

    fn aggregate_by_name(
        &self,
        e: &Expr,
        name: &str,
        arg_exprs: &[Expr],
        args: &[Facts],
        out: &DataType,
        at: &str,
    ) -> Res<Facts> {
        let decimal =
            |t: &DataType| matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..));
        if decimal(out) {
            return refuse(e, Partial::Decimal, at);
        }
        let first = args.first().copied().unwrap_or_default();
        match name.to_ascii_lowercase().as_str() {
            "count" => Ok(Facts::range(0.0, i64::MAX as f64)),
            // Integer sums wrap rather than fail; averages and spreads are floats.
            "sum" => Ok(Facts::of_type(out)),
            "avg" | "mean" | "median" => Ok(Facts {
                range: first.range,
                nan: first.nan,
            }),
            "min" | "max" | "first_value" | "last_value" => Ok(first),
            "bool_and" | "bool_or" => Ok(Facts::range(0.0, 1.0)),
            "bit_and" | "bit_or" | "bit_xor" => Ok(Facts::of_type(out)),
            "stddev" | "stddev_pop" | "stddev_samp" | "var" | "var_pop" | "var_samp"
            | "variance" | "variance_pop" | "variance_samp" | "corr" | "covar" | "covar_pop"
            | "covar_samp" => Ok(Facts {
                range: None,
                nan: true,
            }),
            "array_agg" => Ok(Facts::unknown()),
            "string_agg" => match arg_exprs.get(1).and_then(literal_text) {
                Some(_) => Ok(Facts::unknown()),
                None => refuse(
                    e,
                    Partial::Argument {
                        function: name.to_string(),
                        requirement: "needs a constant separator",
                    },
                    at,
                ),
            },
            _ => refuse(
                e,
                Partial::Function {
                    function: name.to_string(),
                },
                at,
            ),
        }
    }

    fn window(
        &self,
        e: &Expr,
        w: &WindowFunction,
        env: &Env,
        scopes: &[&Env],
        at: &str,
    ) -> Res<Facts> {
        let p = &w.params;
        let args: Vec<Facts> = p
            .args
            .iter()
            .map(|x| self.expr(x, env, scopes, at))
            .collect::<Res<_>>()?;
        for x in &p.partition_by {
            self.expr(x, env, scopes, at)?;
        }
        for s in &p.order_by {
            self.expr(&s.expr, env, scopes, at)?;
        }
        if let Some(filter) = &p.filter {
            self.expr(filter, env, scopes, at)?;
        }
        let out = self.type_of(e, env).unwrap_or(DataType::Null);
        match &w.fun {
            WindowFunctionDefinition::AggregateUDF(udf) => {
                self.aggregate_by_name(e, udf.name(), &p.args, &args, &out, at)
            }
            WindowFunctionDefinition::WindowUDF(udf) => {
                let name = udf.name().to_ascii_lowercase();
                let constant_at_least = |i: usize, lo: i64| {
                    p.args
                        .get(i)
                        .is_none_or(|a| literal_i64(a).is_some_and(|n| n >= lo))
                };
                let requirement = match name.as_str() {
                    "row_number" | "rank" | "dense_rank" => {
                        return Ok(Facts::range(0.0, i64::MAX as f64));
                    }
                    "percent_rank" | "cume_dist" => return Ok(Facts::range(0.0, 1.0)),
                    "first_value" | "last_value" => {
                        return Ok(args.first().copied().unwrap_or_default());
                    }
                    "ntile" if constant_at_least(0, 1) => {
                        return Ok(Facts::range(0.0, i64::MAX as f64));
                    }
                    "ntile" => "needs a constant number of buckets of at least 1",
                    "lag" | "lead" if constant_at_least(1, 0) => {
                        let own = args.first().copied().unwrap_or_default();
                        return Ok(match args.get(2) {
                            Some(d) => own.union(*d),
                            None => own,
                        });
                    }
                    "lag" | "lead" => "needs a constant offset of 0 or more",
                    "nth_value" if constant_at_least(1, 1) => {
                        return Ok(args.first().copied().unwrap_or_default());
                    }
                    "nth_value" => "needs a constant position of at least 1",
                    _ => {
                        return refuse(e, Partial::Function { function: name }, at);
                    }
                };
                refuse(
                    e,
                    Partial::Argument {
                        function: name,
                        requirement,
                    },
                    at,
                )
            }
        }
    }
}

#[cfg(test)]
mod tests;
