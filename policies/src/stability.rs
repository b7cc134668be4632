//! The stability check: proof, from an indicator's logical plan, that every output row is derived
//! from the rows of exactly one privacy unit and carries that unit's id unchanged.
//!
//! The node bounds each unit's contribution *after* the SQL, grouping output rows by the unit
//! column. That bound is the sensitivity the noise is calibrated for, and it holds only if adding
//! or removing one unit's input rows changes output rows labelled with that unit and no others.
//! This module checks that property on DataFusion's unoptimised `LogicalPlan`, before anything
//! runs, by a lineage analysis over a small accepted fragment; every other construct is refused.
//! The rules and the argument for each are in docs/DESIGN_NOTES.md ("Stability check").

use crate::cdm;
use crate::contract::PUBLIC_TABLES;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, JoinType};
use datafusion::logical_expr::expr::{Exists, InSubquery, WindowFunction};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    BinaryExpr, Distinct, Expr, LogicalPlan, Operator, Subquery, Volatility,
};
use std::collections::BTreeSet;

/// A refused query: what is wrong and where in the query it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{refusal} (in {at})")]
pub struct StabilityError {
    pub refusal: Refusal,
    /// The part of the query, described by its clause and the tables (aliases) involved.
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the output column '{column}' is not the privacy unit carried unchanged from a data-model table: it is {found}"
    )]
    UnitNotCarried { column: String, found: String },
    #[error("the query reads no data-model table holding '{unit}' rows")]
    NoUnitRows { unit: String },
    #[error(
        "join of {left} with {right} has no equality of both sides' '{unit}' columns, so rows of different units are combined"
    )]
    JoinWithoutUnitEquality {
        left: String,
        right: String,
        unit: String,
    },
    #[error(
        "cross join of {personal} with the public {public} without a condition relating them repeats every unit's rows for each public row"
    )]
    CrossJoinWithPublic { personal: String, public: String },
    #[error(
        "{join} join keeps rows of {preserved}, whose existence then depends on every unit's rows in {other}"
    )]
    OuterJoinKeepsForeignRows {
        join: String,
        preserved: String,
        other: String,
    },
    #[error(
        "{kind} subquery over data-model rows is not correlated on the unit (it needs a condition '<inner>.{unit} = <outer>.{unit}')"
    )]
    UncorrelatedSubquery { kind: &'static str, unit: String },
    #[error("subquery in a join condition")]
    SubqueryInJoinCondition,
    #[error("window function {function}() is not partitioned by the unit column")]
    WindowAcrossUnits { function: String },
    #[error(
        "aggregate over data-model rows is not grouped by the unit column, so it combines the rows of many units"
    )]
    AggregateAcrossUnits,
    #[error("GROUPING SETS, ROLLUP and CUBE produce totals across units")]
    GroupingSets,
    #[error(
        "DISTINCT over rows that do not include the unit column merges rows of different units"
    )]
    DistinctAcrossUnits,
    #[error("{construct} selects rows by their position among the rows of many units")]
    RowSelection { construct: &'static str },
    #[error(
        "non-deterministic function {function}(): its value may differ between runs over the same data"
    )]
    NonDeterministic { function: String },
    #[error("table '{table}' holds rows of '{found}', not of the query's privacy unit '{unit}'")]
    OtherUnitTable {
        table: String,
        found: String,
        unit: String,
    },
    #[error("table '{table}' is neither a data-model table nor a public table")]
    UnknownTable { table: String },
    #[error(
        "UNION combines inputs that do not all carry the unit column at position {position} (or mixes public and data-model rows)"
    )]
    UnionMixesUnit { position: usize },
    #[error(
        "the outer reference {column} names a column of {levels} enclosing query levels (0: none the check can see); give the tables distinct aliases"
    )]
    AmbiguousOuterReference { column: String, levels: usize },
    #[error(
        "{function}() depends on the order of rows within a unit, and that order is not fixed: order by a key that is unique within the unit's rows ({keys})"
    )]
    OrderDependent { function: String, keys: String },
    #[error(
        "{construct} is not understood by the stability check, and what it cannot prove is refused"
    )]
    Unsupported { construct: String },
}

/// What rows a relation holds, as far as the privacy unit is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    /// Rows built from public and reference tables only: the same whatever any unit's records.
    Public,
    /// Each row is derived from the rows of exactly one unit (and public rows).
    PerUnit,
    /// Inside a subquery: every row is derived from the rows of the one unit whose outer row is
    /// being evaluated (the subquery is correlated on the unit).
    OuterUnit,
}

#[derive(Debug, Clone)]
struct Rel {
    rows: Rows,
    /// Output columns holding the row's unit id, carried unchanged from a data-model table.
    unit_cols: BTreeSet<usize>,
    /// Pairs of columns of which, on every row, one holds the unit id and the other the same id
    /// or NULL (a FULL JOIN on the unit): `COALESCE(a, b)` of such a pair is a unit label.
    either_unit: Vec<(usize, usize)>,
    /// Human description for messages: the tables and aliases involved.
    label: String,
}

impl Rel {
    fn public(label: String) -> Rel {
        Rel {
            rows: Rows::Public,
            unit_cols: BTreeSet::new(),
            either_unit: Vec::new(),
            label,
        }
    }
    /// The same rows with other unit columns (after a projection or grouping).
    fn relabelled(self, unit_cols: BTreeSet<usize>) -> Rel {
        Rel {
            unit_cols,
            either_unit: Vec::new(),
            ..self
        }
    }
    fn shifted(&self, by: usize) -> BTreeSet<usize> {
        self.unit_cols.iter().map(|i| i + by).collect()
    }
}

/// The role of a table for one privacy unit.
enum TableRole {
    Unit(usize),
    OtherUnit(&'static str),
    Public,
}

fn table_role(table: &str, unit: &str, schema: &DFSchema) -> Option<TableRole> {
    if PUBLIC_TABLES.contains(&table) {
        return Some(TableRole::Public);
    }
    let def = cdm::table(table)?;
    Some(match def.unit_column() {
        None => TableRole::Public,
        Some(u) if u == unit => match schema.fields().iter().position(|f| f.name() == u) {
            Some(i) => TableRole::Unit(i),
            // The unit column projected away: the rows are still per unit, without a label.
            None => TableRole::Unit(usize::MAX),
        },
        Some(other) => TableRole::OtherUnit(other),
    })
}

/// Check a planned query: every output row belongs to one unit and `unit` is its id.
pub fn check(plan: &LogicalPlan, unit: &str) -> Result<(), StabilityError> {
    let checker = Checker { unit };
    let rel = checker.relation(plan, &[])?;
    let at = || format!("the query's output over {}", rel.label);
    match rel.rows {
        Rows::PerUnit => {}
        Rows::Public | Rows::OuterUnit => {
            return Err(StabilityError {
                refusal: Refusal::NoUnitRows {
                    unit: unit.to_string(),
                },
                at: at(),
            });
        }
    }
    let schema = plan.schema();
    let Some(index) = schema.fields().iter().position(|f| f.name() == unit) else {
        // The output contract (checked before) names the missing column; nothing to add here.
        return Ok(());
    };
    if rel.unit_cols.contains(&index) {
        return Ok(());
    }
    Err(StabilityError {
        refusal: Refusal::UnitNotCarried {
            column: unit.to_string(),
            found: describe_output(plan, index),
        },
        at: at(),
    })
}

/// What an output column is, for the message: the expression that computes it where a
/// projection does, otherwise "not traceable to a unit column".
fn describe_output(plan: &LogicalPlan, index: usize) -> String {
    match plan {
        LogicalPlan::Projection(p) => match p.expr.get(index) {
            Some(e) => format!("'{}'", strip_alias(e)),
            None => "not traceable to a unit column".into(),
        },
        LogicalPlan::SubqueryAlias(a) => describe_output(&a.input, index),
        LogicalPlan::Distinct(Distinct::All(input)) => describe_output(input, index),
        LogicalPlan::Sort(s) => describe_output(&s.input, index),
        _other => "not traceable to a unit column".into(),
    }
}

fn strip_alias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => strip_alias(&a.expr),
        other => other,
    }
}

/// An enclosing query level, for subqueries: its input's schema and rows.
struct Scope<'a> {
    schema: &'a DFSchema,
    rel: &'a Rel,
}

/// Where an expression sits, which decides what it may contain.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Row,
    AggregateList,
    WindowList,
    JoinCondition,
}

struct Checker<'u> {
    unit: &'u str,
}

impl Checker<'_> {
    fn refuse<T>(&self, refusal: Refusal, at: impl Into<String>) -> Result<T, StabilityError> {
        Err(StabilityError {
            refusal,
            at: at.into(),
        })
    }

    fn unsupported<T>(&self, construct: &str, at: impl Into<String>) -> Result<T, StabilityError> {
        self.refuse(
            Refusal::Unsupported {
                construct: construct.to_string(),
            },
            at,
        )
    }

    fn relation(&self, plan: &LogicalPlan, scopes: &[Scope]) -> Result<Rel, StabilityError> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                let table = scan.table_name.table().to_string();
                let at = format!("FROM {table}");
                let rel = match table_role(&table, self.unit, &scan.projected_schema) {
                    None => return self.refuse(Refusal::UnknownTable { table }, at),
                    Some(TableRole::OtherUnit(found)) => {
                        return self.refuse(
                            Refusal::OtherUnitTable {
                                table,
                                found: found.to_string(),
                                unit: self.unit.to_string(),
                            },
                            at,
                        );
                    }
                    Some(TableRole::Public) => Rel::public(table),
                    Some(TableRole::Unit(i)) => Rel {
                        rows: Rows::PerUnit,
                        unit_cols: (i != usize::MAX).then_some(i).into_iter().collect(),
                        either_unit: Vec::new(),
                        label: table,
                    },
                };
                if scan.fetch.is_some() && rel.rows != Rows::Public {
                    return self.refuse(Refusal::RowSelection { construct: "LIMIT" }, at);
                }
                for f in &scan.filters {
                    self.expr(f, Place::Row, &scan.projected_schema, &rel, scopes, &at)?;
                }
                Ok(rel)
            }
            LogicalPlan::SubqueryAlias(a) => {
                let mut rel = self.relation(&a.input, scopes)?;
                let alias = a.alias.table();
                if alias != rel.label {
                    rel.label = format!("{} AS {alias}", rel.label);
                }
                Ok(rel)
            }
            // A subquery that refers to columns outside itself as a plan input is a LATERAL
            // join's right side, analysed in `join` with the left side in scope; anywhere else
            // its references could not be resolved as DataFusion resolves them.
            LogicalPlan::Subquery(s) if !s.outer_ref_columns.is_empty() => self.unsupported(
                "a LATERAL subquery other than a join's right side",
                "the query",
            ),
            LogicalPlan::Subquery(s) => self.relation(&s.subquery, scopes),
            LogicalPlan::Projection(p) => {
                let input = self.relation(&p.input, scopes)?;
                let at = format!("the SELECT list over {}", input.label);
                for e in &p.expr {
                    self.expr(e, Place::Row, p.input.schema(), &input, scopes, &at)?;
                }
                let unit_cols = unit_positions(&p.expr, p.input.schema(), &input);
                Ok(input.relabelled(unit_cols))
            }
            LogicalPlan::Filter(f) => {
                // Over inner (and comma) joins a WHERE condition is their join condition too.
                let conjuncts = split_conjunction(&f.predicate);
                let input = self.join_input(&f.input, &conjuncts, scopes)?;
                let at = format!("the WHERE/HAVING condition over {}", input.label);
                self.expr(
                    &f.predicate,
                    Place::Row,
                    f.input.schema(),
                    &input,
                    scopes,
                    &at,
                )?;
                let correlated = input.rows == Rows::PerUnit
                    && split_conjunction(&f.predicate)
                        .into_iter()
                        .any(|c| self.correlates_on_unit(c, f.input.schema(), &input, scopes));
                Ok(Rel {
                    rows: if correlated {
                        Rows::OuterUnit
                    } else {
                        input.rows
                    },
                    ..input
                })
            }
            LogicalPlan::Join(j) => self.join(j, &[], scopes),
            LogicalPlan::Aggregate(a) => {
                let input = self.relation(&a.input, scopes)?;
                let at = format!("the GROUP BY over {}", input.label);
                for g in &a.group_expr {
                    if matches!(g, Expr::GroupingSet(_)) {
                        return self.refuse(Refusal::GroupingSets, at);
                    }
                    self.expr(g, Place::Row, a.input.schema(), &input, scopes, &at)?;
                }
                let unit_cols = unit_positions(&a.group_expr, a.input.schema(), &input);
                for e in &a.aggr_expr {
                    self.expr(
                        e,
                        Place::AggregateList,
                        a.input.schema(),
                        &input,
                        scopes,
                        &at,
                    )?;
                    if let Expr::AggregateFunction(f) = strip_alias(e)
                        && input.rows != Rows::Public
                        && aggregate_depends_on_order(f.func.name())
                    {
                        let by: Vec<&Expr> = a
                            .group_expr
                            .iter()
                            .chain(f.params.order_by.iter().map(|s| &s.expr))
                            .collect();
                        self.totally_ordered(&a.input, &by, f.func.name(), &at)?;
                    }
                }
                match input.rows {
                    Rows::PerUnit if unit_cols.is_empty() => {
                        self.refuse(Refusal::AggregateAcrossUnits, at)
                    }
                    Rows::PerUnit | Rows::OuterUnit | Rows::Public => {
                        Ok(input.relabelled(unit_cols))
                    }
                }
            }
            LogicalPlan::Window(w) => {
                let input = self.relation(&w.input, scopes)?;
                let at = format!("the window functions over {}", input.label);
                for e in &w.window_expr {
                    self.expr(e, Place::WindowList, w.input.schema(), &input, scopes, &at)?;
                    if let Expr::WindowFunction(f) = strip_alias(e)
                        && input.rows != Rows::Public
                        && window_depends_on_order(f)
                    {
                        let by: Vec<&Expr> = f
                            .params
                            .partition_by
                            .iter()
                            .chain(f.params.order_by.iter().map(|s| &s.expr))
                            .collect();
                        self.totally_ordered(&w.input, &by, f.fun.name(), &at)?;
                    }
                }
                Ok(input)
            }
            LogicalPlan::Distinct(Distinct::All(inner)) => {
                let input = self.relation(inner, scopes)?;
                if input.rows == Rows::PerUnit && input.unit_cols.is_empty() {
                    return self.refuse(
                        Refusal::DistinctAcrossUnits,
                        format!("SELECT DISTINCT over {}", input.label),
                    );
                }
                Ok(input)
            }
            LogicalPlan::Distinct(Distinct::On(d)) => {
                let input = self.relation(&d.input, scopes)?;
                let at = format!("SELECT DISTINCT ON over {}", input.label);
                let schema = d.input.schema();
                for e in d.on_expr.iter().chain(&d.select_expr) {
                    self.expr(e, Place::Row, schema, &input, scopes, &at)?;
                }
                for s in d.sort_expr.iter().flatten() {
                    self.expr(&s.expr, Place::Row, schema, &input, scopes, &at)?;
                }
                if input.rows == Rows::PerUnit
                    && !d.on_expr.iter().any(|e| is_unit_column(e, schema, &input))
                {
                    return self.refuse(Refusal::DistinctAcrossUnits, at);
                }
                // The row kept for each DISTINCT ON value is the first in the ORDER BY.
                if input.rows != Rows::Public {
                    let by: Vec<&Expr> = d
                        .on_expr
                        .iter()
                        .chain(d.sort_expr.iter().flatten().map(|s| &s.expr))
                        .collect();
                    self.totally_ordered(&d.input, &by, "DISTINCT ON", &at)?;
                }
                let unit_cols = unit_positions(&d.select_expr, schema, &input);
                Ok(input.relabelled(unit_cols))
            }
            LogicalPlan::Sort(s) => {
                let input = self.relation(&s.input, scopes)?;
                let at = format!("the ORDER BY over {}", input.label);
                for e in &s.expr {
                    self.expr(&e.expr, Place::Row, s.input.schema(), &input, scopes, &at)?;
                }
                if s.fetch.is_some() && input.rows == Rows::PerUnit {
                    return self.refuse(
                        Refusal::RowSelection {
                            construct: "ORDER BY with LIMIT",
                        },
                        at,
                    );
                }
                if s.fetch.is_some() && input.rows == Rows::OuterUnit {
                    let by: Vec<&Expr> = s.expr.iter().map(|e| &e.expr).collect();
                    self.totally_ordered(&s.input, &by, "LIMIT", &at)?;
                }
                Ok(input)
            }
            LogicalPlan::Limit(l) => {
                let input = self.relation(&l.input, scopes)?;
                match input.rows {
                    // Choosing among public rows is harmless.
                    Rows::Public => Ok(input),
                    // Among the one unit's own rows only in an order that leaves no ties: their
                    // arrival order can depend on other units' rows (a join's output order).
                    Rows::OuterUnit => {
                        let at = format!("the LIMIT over {}", input.label);
                        match sorted_input(&l.input) {
                            Some(sort) => {
                                let by: Vec<&Expr> = sort.expr.iter().map(|e| &e.expr).collect();
                                self.totally_ordered(&sort.input, &by, "LIMIT", &at)?;
                            }
                            None => {
                                self.refuse(
                                    Refusal::OrderDependent {
                                        function: "LIMIT".into(),
                                        keys: "it has no ORDER BY".into(),
                                    },
                                    at,
                                )?;
                            }
                        }
                        Ok(input)
                    }
                    Rows::PerUnit => self.refuse(
                        Refusal::RowSelection {
                            construct: if l.skip.is_some() {
                                "LIMIT/OFFSET"
                            } else {
                                "LIMIT"
                            },
                        },
                        format!("the LIMIT over {}", input.label),
                    ),
                }
            }
            LogicalPlan::Union(u) => {
                let mut rels = Vec::with_capacity(u.inputs.len());
                for input in &u.inputs {
                    rels.push(self.relation(input, scopes)?);
                }
                let label = rels
                    .iter()
                    .map(|r| r.label.as_str())
                    .collect::<Vec<_>>()
                    .join(" UNION ALL ");
                let Some(first) = rels.first() else {
                    return Ok(Rel::public(label));
                };
                if rels.iter().any(|r| r.rows != first.rows) {
                    return self.refuse(
                        Refusal::UnionMixesUnit { position: 0 },
                        format!("UNION of {label}"),
                    );
                }
                let mut unit_cols = first.unit_cols.clone();
                for r in &rels[1..] {
                    if let Some(p) = unit_cols.symmetric_difference(&r.unit_cols).next() {
                        return self.refuse(
                            Refusal::UnionMixesUnit { position: p + 1 },
                            format!("UNION of {label}"),
                        );
                    }
                    unit_cols = unit_cols.intersection(&r.unit_cols).copied().collect();
                }
                Ok(Rel {
                    rows: first.rows,
                    unit_cols,
                    either_unit: Vec::new(),
                    label,
                })
            }
            LogicalPlan::Values(v) => {
                let rel = Rel::public("VALUES".into());
                for row in &v.values {
                    for e in row {
                        self.expr(e, Place::Row, &v.schema, &rel, scopes, "VALUES")?;
                    }
                }
                Ok(rel)
            }
            LogicalPlan::EmptyRelation(_) => Ok(Rel::public("no table".into())),
            LogicalPlan::Repartition(_) => self.unsupported("REPARTITION", "the query"),
            LogicalPlan::Unnest(_) => self.unsupported("UNNEST", "the query"),
            LogicalPlan::RecursiveQuery(_) => self.unsupported("WITH RECURSIVE", "the query"),
            LogicalPlan::Extension(e) => {
                self.unsupported(&format!("plan extension {}", e.node.name()), "the query")
            }
            LogicalPlan::Statement(_)
            | LogicalPlan::Explain(_)
            | LogicalPlan::Analyze(_)
            | LogicalPlan::Dml(_)
            | LogicalPlan::Ddl(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::DescribeTable(_) => {
                self.unsupported("a statement other than a query", "the query")
            }
        }
    }

    /// Refuses `function` unless `by` (its PARTITION BY / GROUP BY and ORDER BY) covers a row
    /// key of `input`: then no two rows of one unit tie, and the result cannot depend on the
    /// order in which the rows arrive, which other units' rows can change.
    fn totally_ordered(
        &self,
        input: &LogicalPlan,
        by: &[&Expr],
        function: &str,
        at: &str,
    ) -> Result<(), StabilityError> {
        let schema = input.schema();
        let ordered: BTreeSet<usize> = by
            .iter()
            .filter_map(|e| match strip_alias(e) {
                Expr::Column(c) => schema.maybe_index_of_column(c),
                _other => None,
            })
            .collect();
        match row_key(input) {
            Some(key) if key.is_subset(&ordered) => Ok(()),
            Some(key) => {
                let missing: Vec<String> = key
                    .difference(&ordered)
                    .map(|i| {
                        let (q, f) = schema.qualified_field(*i);
                        match q {
                            Some(q) => format!("{q}.{}", f.name()),
                            None => f.name().to_string(),
                        }
                    })
                    .collect();
                self.refuse(
                    Refusal::OrderDependent {
                        function: function.to_string(),
                        keys: format!("add {}", missing.join(", ")),
                    },
                    at,
                )
            }
            None => self.refuse(
                Refusal::OrderDependent {
                    function: function.to_string(),
                    keys: "none is known for this input".into(),
                },
                at,
            ),
        }
    }

    /// A join's input: an inner join under it sees the conditions of the WHERE above too.
    fn join_input(
        &self,
        plan: &LogicalPlan,
        pushed: &[&Expr],
        scopes: &[Scope],
    ) -> Result<Rel, StabilityError> {
        match plan {
            LogicalPlan::Join(j) if j.join_type == JoinType::Inner => self.join(j, pushed, scopes),
            other => self.relation(other, scopes),
        }
    }

    /// A join, with `pushed`: conditions of a WHERE directly above a chain of inner joins, which
    /// for inner joins mean what the same conditions in ON would.
    fn join(
        &self,
        j: &datafusion::logical_expr::Join,
        pushed: &[&Expr],
        scopes: &[Scope],
    ) -> Result<Rel, StabilityError> {
        let pushed: &[&Expr] = if j.join_type == JoinType::Inner {
            pushed
        } else {
            &[]
        };
        let left = self.join_input(&j.left, pushed, scopes)?;
        let (ls, rs) = (j.left.schema(), j.right.schema());
        // JOIN LATERAL: the right side is evaluated for each left row, with the left side as its
        // enclosing query level. Correlated on the unit, its rows are that row's unit's own.
        let lateral = lateral_subquery(&j.right);
        let right = match lateral {
            Some(sub) => {
                let mut inner: Vec<Scope> = scopes
                    .iter()
                    .map(|s| Scope {
                        schema: s.schema,
                        rel: s.rel,
                    })
                    .collect();
                inner.push(Scope {
                    schema: ls,
                    rel: &left,
                });
                let mut rel = self.relation(&sub.subquery, &inner)?;
                rel.label = format!("LATERAL ({})", rel.label);
                rel
            }
            None => self.join_input(&j.right, pushed, scopes)?,
        };
        let at = format!("the JOIN of {} with {}", left.label, right.label);
        if lateral.is_some() && left.rows == Rows::PerUnit && right.rows == Rows::OuterUnit {
            // Each left row meets only rows of its own unit: the left side's rows, labels kept.
            for (l, r) in &j.on {
                self.condition(l, ls, &left, scopes, &at)?;
                self.condition(r, rs, &right, scopes, &at)?;
            }
            if let Some(filter) = &j.filter {
                let mut merged = ls.as_ref().clone();
                merged.merge(rs);
                let both = Rel {
                    rows: Rows::PerUnit,
                    unit_cols: BTreeSet::new(),
                    either_unit: Vec::new(),
                    label: format!("{}, {}", left.label, right.label),
                };
                self.condition(filter, &merged, &both, scopes, &at)?;
            }
            return match j.join_type {
                JoinType::Inner | JoinType::Left => Ok(Rel {
                    rows: Rows::PerUnit,
                    unit_cols: left.unit_cols.clone(),
                    either_unit: Vec::new(),
                    label: format!("{}, {}", left.label, right.label),
                }),
                JoinType::Right
                | JoinType::Full
                | JoinType::LeftSemi
                | JoinType::RightSemi
                | JoinType::LeftAnti
                | JoinType::RightAnti
                | JoinType::LeftMark
                | JoinType::RightMark => self.unsupported(
                    &format!("{} JOIN LATERAL", j.join_type.to_string().to_uppercase()),
                    at,
                ),
            };
        }
        let relating = pushed.iter().any(|c| relates(c, ls, rs));
        let has_condition = !j.on.is_empty() || j.filter.is_some() || relating;
        // Conditions are checked against the side(s) they reference; a subquery there is refused
        // because its result would decide which rows of *two* relations meet.
        let mut unit_equality = false;
        for (l, r) in &j.on {
            self.condition(l, ls, &left, scopes, &at)?;
            self.condition(r, rs, &right, scopes, &at)?;
            unit_equality |= is_unit_column(l, ls, &left) && is_unit_column(r, rs, &right);
        }
        if let Some(filter) = &j.filter {
            let mut merged = ls.as_ref().clone();
            merged.merge(rs);
            let both = Rel {
                rows: combine_rows(left.rows, right.rows),
                unit_cols: BTreeSet::new(),
                either_unit: Vec::new(),
                label: format!("{}, {}", left.label, right.label),
            };
            self.condition(filter, &merged, &both, scopes, &at)?;
            unit_equality |= split_conjunction(filter)
                .into_iter()
                .any(|c| equates_units(c, ls, &left, rs, &right));
        }
        unit_equality |= pushed
            .iter()
            .any(|c| equates_units(c, ls, &left, rs, &right));
        // Rows of many units on one side may meet rows that are not public only where the units
        // are equal; a side restricted to the outer unit meets only that unit's rows anyway.
        let many = |r: &Rel| r.rows == Rows::PerUnit;
        let public = |r: &Rel| r.rows == Rows::Public;
        let needs_units = (many(&left) && !public(&right)) || (many(&right) && !public(&left));
        if needs_units && !unit_equality {
            return self.refuse(
                Refusal::JoinWithoutUnitEquality {
                    left: left.label.clone(),
                    right: right.label.clone(),
                    unit: self.unit.to_string(),
                },
                at,
            );
        }
        if !has_condition {
            let repeated = match (left.rows, right.rows) {
                (Rows::PerUnit, Rows::Public) => Some((&left, &right)),
                (Rows::Public, Rows::PerUnit) => Some((&right, &left)),
                (Rows::Public | Rows::OuterUnit, Rows::Public | Rows::OuterUnit)
                | (Rows::PerUnit, Rows::PerUnit | Rows::OuterUnit)
                | (Rows::OuterUnit, Rows::PerUnit) => None,
            };
            if let Some((personal, public)) = repeated {
                return self.refuse(
                    Refusal::CrossJoinWithPublic {
                        personal: personal.label.clone(),
                        public: public.label.clone(),
                    },
                    at,
                );
            }
        }
        let nl = ls.fields().len();
        let label = format!("{}, {}", left.label, right.label);
        // An outer or semi join keeps the preserved side's rows whether or not they meet the
        // other side: fine when those rows are one unit's, not when they are public rows (their
        // presence in the output would then depend on every unit's rows).
        let keep = |preserved: &Rel, other: &Rel| -> Result<Rows, StabilityError> {
            if public(preserved) && !public(other) {
                return self.refuse(
                    Refusal::OuterJoinKeepsForeignRows {
                        join: j.join_type.to_string().to_uppercase(),
                        preserved: preserved.label.clone(),
                        other: other.label.clone(),
                    },
                    at.clone(),
                );
            }
            Ok(preserved_rows(preserved, other))
        };
        // The null-supplying side's unit columns are NULL on unmatched rows: not unit labels.
        let (rows, unit_cols) = match j.join_type {
            JoinType::Inner => {
                let mut cols = left.unit_cols.clone();
                cols.extend(right.shifted(nl));
                (combine_rows(left.rows, right.rows), cols)
            }
            JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => {
                (keep(&left, &right)?, left.unit_cols.clone())
            }
            JoinType::Right => (keep(&right, &left)?, right.shifted(nl)),
            JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => {
                (keep(&right, &left)?, right.unit_cols.clone())
            }
            JoinType::Full => {
                if !public(&left) {
                    keep(&right, &left)?;
                }
                if !public(&right) {
                    keep(&left, &right)?;
                }
                // Both sides are kept; with neither public each unmatched row is still one
                // unit's, but the other side's unit columns are NULL there: only COALESCE of a
                // pair of unit columns the join equates is a label on every row.
                (combine_rows(left.rows, right.rows), BTreeSet::new())
            }
        };
        let filter_pairs: Vec<(Expr, Expr)> = j
            .filter
            .iter()
            .flat_map(split_conjunction)
            .filter_map(|c| match c {
                Expr::BinaryExpr(BinaryExpr {
                    left: a,
                    op: Operator::Eq,
                    right: b,
                }) => Some(((**a).clone(), (**b).clone())),
                _other => None,
            })
            .flat_map(|(a, b)| [(a.clone(), b.clone()), (b, a)])
            .collect();
        let either_unit = match j.join_type {
            JoinType::Full => {
                j.on.iter()
                    .chain(&filter_pairs)
                    .filter_map(|(l, r)| {
                        let (Expr::Column(lc), Expr::Column(rc)) = (strip_alias(l), strip_alias(r))
                        else {
                            return None;
                        };
                        let li = ls.maybe_index_of_column(lc)?;
                        let ri = rs.maybe_index_of_column(rc)?;
                        (left.unit_cols.contains(&li) && right.unit_cols.contains(&ri))
                            .then_some((li, ri + nl))
                    })
                    .collect()
            }
            JoinType::Inner
            | JoinType::Left
            | JoinType::Right
            | JoinType::LeftSemi
            | JoinType::RightSemi
            | JoinType::LeftAnti
            | JoinType::RightAnti
            | JoinType::LeftMark
            | JoinType::RightMark => Vec::new(),
        };
        Ok(Rel {
            rows,
            unit_cols,
            either_unit,
            label,
        })
    }

    fn condition(
        &self,
        e: &Expr,
        schema: &DFSchema,
        rel: &Rel,
        scopes: &[Scope],
        at: &str,
    ) -> Result<(), StabilityError> {
        self.expr(e, Place::JoinCondition, schema, rel, scopes, at)
    }

    /// `inner.unit = outer.unit` where `inner.unit` is a unit column of this relation and
    /// `outer.unit` one of the immediately enclosing query level's.
    fn correlates_on_unit(&self, c: &Expr, schema: &DFSchema, rel: &Rel, scopes: &[Scope]) -> bool {
        let Some(outer) = scopes.last() else {
            return false;
        };
        let Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) = c
        else {
            return false;
        };
        // Only a reference that the immediately enclosing level alone can mean: were the name
        // also another level's, the check and DataFusion might resolve it differently.
        let outer_unit = |e: &Expr| match e {
            Expr::OuterReferenceColumn(_, col) => {
                column_is_unit(col, outer.schema, outer.rel)
                    && scopes
                        .iter()
                        .filter(|s| s.schema.maybe_index_of_column(col).is_some())
                        .count()
                        == 1
            }
            _other => false,
        };
        (is_unit_column(left, schema, rel) && outer_unit(right))
            || (is_unit_column(right, schema, rel) && outer_unit(left))
    }

    /// Check every node of an expression; subqueries are analysed as relations of their own.
    fn expr(
        &self,
        e: &Expr,
        place: Place,
        schema: &DFSchema,
        rel: &Rel,
        scopes: &[Scope],
        at: &str,
    ) -> Result<(), StabilityError> {
        let mut failure: Option<StabilityError> = None;
        let visit = e.apply(
            |node| match self.node(node, place, schema, rel, scopes, at) {
                Ok(()) => Ok(TreeNodeRecursion::Continue),
                Err(err) => {
                    failure = Some(err);
                    Ok(TreeNodeRecursion::Stop)
                }
            },
        );
        if let Some(err) = failure {
            return Err(err);
        }
        visit
            .map(|_| ())
            .or_else(|e| self.unsupported(&format!("expression ({})", e.strip_backtrace()), at))
    }

    fn node(
        &self,
        node: &Expr,
        place: Place,
        schema: &DFSchema,
        rel: &Rel,
        scopes: &[Scope],
        at: &str,
    ) -> Result<(), StabilityError> {
        #[allow(deprecated)]
        match node {
            Expr::OuterReferenceColumn(_, col) => {
                let levels = scopes
                    .iter()
                    .filter(|s| s.schema.maybe_index_of_column(col).is_some())
                    .count();
                if levels == 1 {
                    Ok(())
                } else {
                    self.refuse(
                        Refusal::AmbiguousOuterReference {
                            column: col.flat_name(),
                            levels,
                        },
                        at,
                    )
                }
            }
            Expr::Alias(_)
            | Expr::Column(_)
            | Expr::Literal(..)
            | Expr::BinaryExpr(_)
            | Expr::Like(_)
            | Expr::SimilarTo(_)
            | Expr::Not(_)
            | Expr::IsNotNull(_)
            | Expr::IsNull(_)
            | Expr::IsTrue(_)
            | Expr::IsFalse(_)
            | Expr::IsUnknown(_)
            | Expr::IsNotTrue(_)
            | Expr::IsNotFalse(_)
            | Expr::IsNotUnknown(_)
            | Expr::Negative(_)
            | Expr::Between(_)
            | Expr::Case(_)
            | Expr::Cast(_)
            | Expr::TryCast(_)
            | Expr::InList(_) => Ok(()),
            Expr::ScalarFunction(f) => {
                self.deterministic(f.func.name(), f.func.signature().volatility, at)
            }
            Expr::AggregateFunction(f) => {
                if place != Place::AggregateList {
                    return self.unsupported(
                        &format!("aggregate {}() outside GROUP BY", f.func.name()),
                        at,
                    );
                }
                self.deterministic(f.func.name(), f.func.signature().volatility, at)
            }
            Expr::WindowFunction(w) => self.window(w, place, schema, rel, at),
            Expr::Exists(Exists { subquery, .. }) => {
                self.subquery(subquery, "EXISTS", None, place, schema, rel, scopes, at)
            }
            // `NOT IN` is left out of the semi-join form: its NULL semantics make one row's
            // value depend on every row of the set.
            Expr::InSubquery(InSubquery {
                expr,
                subquery,
                negated: false,
            }) => self.subquery(subquery, "IN", Some(expr), place, schema, rel, scopes, at),
            Expr::InSubquery(InSubquery {
                subquery,
                negated: true,
                ..
            }) => self.subquery(subquery, "NOT IN", None, place, schema, rel, scopes, at),
            Expr::ScalarSubquery(subquery) => {
                self.subquery(subquery, "scalar", None, place, schema, rel, scopes, at)
            }
            Expr::SetComparison(_) => self.unsupported("ANY/ALL subquery comparison", at),
            Expr::ScalarVariable(..) => self.unsupported("a session variable", at),
            Expr::Placeholder(_) => self.unsupported("a query parameter placeholder", at),
            Expr::GroupingSet(_) => self.refuse(Refusal::GroupingSets, at),
            Expr::Unnest(_) => self.unsupported("UNNEST", at),
            Expr::HigherOrderFunction(f) => {
                self.unsupported(&format!("higher-order function {}()", f.func.name()), at)
            }
            Expr::Lambda(_) | Expr::LambdaVariable(_) => self.unsupported("a lambda", at),
            Expr::Wildcard { .. } => self.unsupported("an unexpanded wildcard", at),
        }
    }

    fn deterministic(
        &self,
        function: &str,
        volatility: Volatility,
        at: &str,
    ) -> Result<(), StabilityError> {
        match volatility {
            Volatility::Immutable => Ok(()),
            Volatility::Stable | Volatility::Volatile => self.refuse(
                Refusal::NonDeterministic {
                    function: function.to_string(),
                },
                at,
            ),
        }
    }

    fn window(
        &self,
        w: &WindowFunction,
        place: Place,
        schema: &DFSchema,
        rel: &Rel,
        at: &str,
    ) -> Result<(), StabilityError> {
        let name = w.fun.name().to_string();
        if place != Place::WindowList {
            return self.unsupported(&format!("window function {name}() here"), at);
        }
        let volatility = match &w.fun {
            datafusion::logical_expr::WindowFunctionDefinition::AggregateUDF(f) => {
                f.signature().volatility
            }
            datafusion::logical_expr::WindowFunctionDefinition::WindowUDF(f) => {
                f.signature().volatility
            }
        };
        self.deterministic(&name, volatility, at)?;
        let partitioned = w
            .params
            .partition_by
            .iter()
            .any(|p| is_unit_column(p, schema, rel));
        match rel.rows {
            Rows::PerUnit if !partitioned => {
                self.refuse(Refusal::WindowAcrossUnits { function: name }, at)
            }
            Rows::PerUnit | Rows::OuterUnit | Rows::Public => Ok(()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn subquery(
        &self,
        subquery: &Subquery,
        kind: &'static str,
        compared: Option<&Expr>,
        place: Place,
        schema: &DFSchema,
        rel: &Rel,
        scopes: &[Scope],
        at: &str,
    ) -> Result<(), StabilityError> {
        let outer_at = at;
        let at = format!("the {kind} subquery in {outer_at}");
        if place == Place::JoinCondition {
            return self.refuse(Refusal::SubqueryInJoinCondition, at);
        }
        let mut inner_scopes: Vec<Scope> = scopes
            .iter()
            .map(|s| Scope {
                schema: s.schema,
                rel: s.rel,
            })
            .collect();
        inner_scopes.push(Scope { schema, rel });
        let inner = self.relation(&subquery.subquery, &inner_scopes)?;
        match inner.rows {
            Rows::Public | Rows::OuterUnit => Ok(()),
            Rows::PerUnit => {
                // `outer.unit IN (SELECT inner.unit …)` is a semi-join on the unit: whether the
                // outer unit is in the set depends only on rows labelled with that same unit.
                let semi_join_on_unit = compared.is_some_and(|e| is_unit_column(e, schema, rel))
                    && inner.unit_cols.contains(&0)
                    && subquery.subquery.schema().fields().len() == 1;
                if semi_join_on_unit {
                    Ok(())
                } else {
                    self.refuse(
                        Refusal::UncorrelatedSubquery {
                            kind,
                            unit: self.unit.to_string(),
                        },
                        format!("the {kind} subquery over {} in {outer_at}", inner.label),
                    )
                }
            }
        }
    }
}

/// Window functions whose value for a row depends on where among tied rows it falls: those
/// that count or pick rows, and aggregates over a ROWS frame short of the whole partition.
/// `rank`, `dense_rank`, `percent_rank` and `cume_dist` treat ties alike; RANGE and GROUPS
/// frames take all peers.
fn window_depends_on_order(f: &WindowFunction) -> bool {
    use datafusion::logical_expr::{WindowFrameBound, WindowFrameUnits};
    match &f.fun {
        datafusion::logical_expr::WindowFunctionDefinition::WindowUDF(u) => !matches!(
            u.name(),
            "rank" | "dense_rank" | "percent_rank" | "cume_dist"
        ),
        datafusion::logical_expr::WindowFunctionDefinition::AggregateUDF(a) => {
            let frame = &f.params.window_frame;
            let whole = matches!(&frame.start_bound, WindowFrameBound::Preceding(v) if v.is_null())
                && matches!(&frame.end_bound, WindowFrameBound::Following(v) if v.is_null());
            let by_rows = match frame.units {
                WindowFrameUnits::Rows => true,
                WindowFrameUnits::Range | WindowFrameUnits::Groups => false,
            };
            aggregate_depends_on_order(a.name()) || (by_rows && !whole)
        }
    }
}

/// Aggregates whose value depends on the order of their input rows.
fn aggregate_depends_on_order(name: &str) -> bool {
    matches!(
        name,
        "first_value" | "last_value" | "nth_value" | "array_agg" | "string_agg"
    )
}

/// The Sort a LIMIT applies to, under projections and aliases.
fn sorted_input(plan: &LogicalPlan) -> Option<&datafusion::logical_expr::Sort> {
    match plan {
        LogicalPlan::Sort(s) => Some(s),
        LogicalPlan::Projection(p) => sorted_input(&p.input),
        LogicalPlan::SubqueryAlias(a) => sorted_input(&a.input),
        _other => None,
    }
}

/// Positions of `plan`'s output columns that together identify a row among its unit's rows:
/// the data model's row keys (`cdm::TableDef::row_key`, unique within a unit at every node),
/// carried through projections, filters and joins; a grouping's keys; all columns of a DISTINCT.
/// `None` when no such key is known.
fn row_key(plan: &LogicalPlan) -> Option<BTreeSet<usize>> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            let table = scan.table_name.table();
            let names: Vec<&str> = match cdm::table(table) {
                Some(def) => def.row_key().to_vec(),
                None if table == crate::contract::QUARTERS_TABLE => vec!["quarter"],
                None if table == crate::contract::YEARS_TABLE => vec!["year"],
                None => return None,
            };
            if names.is_empty() {
                return None;
            }
            let fields = scan.projected_schema.fields();
            names
                .iter()
                .map(|n| fields.iter().position(|f| f.name() == n))
                .collect()
        }
        LogicalPlan::SubqueryAlias(a) => row_key(&a.input),
        LogicalPlan::Subquery(s) => row_key(&s.subquery),
        LogicalPlan::Filter(f) => row_key(&f.input),
        LogicalPlan::Sort(s) => row_key(&s.input),
        LogicalPlan::Limit(l) => row_key(&l.input),
        LogicalPlan::Window(w) => row_key(&w.input),
        LogicalPlan::Projection(p) => {
            let key = row_key(&p.input)?;
            let input = p.input.schema();
            key.iter()
                .map(|k| {
                    p.expr.iter().position(|e| match strip_alias(e) {
                        Expr::Column(c) => input.maybe_index_of_column(c) == Some(*k),
                        _other => false,
                    })
                })
                .collect()
        }
        LogicalPlan::Join(j) => {
            let nl = j.left.schema().fields().len();
            match j.join_type {
                JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => {
                    let mut key = row_key(&j.left)?;
                    key.extend(row_key(&j.right)?.into_iter().map(|i| i + nl));
                    Some(key)
                }
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => row_key(&j.left),
                JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => {
                    row_key(&j.right)
                }
            }
        }
        LogicalPlan::Aggregate(a) => Some((0..a.group_expr.len()).collect()),
        LogicalPlan::Distinct(Distinct::All(input)) => {
            Some((0..input.schema().fields().len()).collect())
        }
        LogicalPlan::Distinct(Distinct::On(_))
        | LogicalPlan::Union(_)
        | LogicalPlan::Values(_)
        | LogicalPlan::EmptyRelation(_)
        | LogicalPlan::Repartition(_)
        | LogicalPlan::Unnest(_)
        | LogicalPlan::RecursiveQuery(_)
        | LogicalPlan::Extension(_)
        | LogicalPlan::Statement(_)
        | LogicalPlan::Explain(_)
        | LogicalPlan::Analyze(_)
        | LogicalPlan::Dml(_)
        | LogicalPlan::Ddl(_)
        | LogicalPlan::Copy(_)
        | LogicalPlan::DescribeTable(_) => None,
    }
}

/// The subquery of a LATERAL join's right side (under any aliases), if it refers outside itself.
fn lateral_subquery(plan: &LogicalPlan) -> Option<&Subquery> {
    match plan {
        LogicalPlan::SubqueryAlias(a) => lateral_subquery(&a.input),
        LogicalPlan::Subquery(s) if !s.outer_ref_columns.is_empty() => Some(s),
        _other => None,
    }
}

/// Rows of a join where both sides' rows meet (inner join).
fn combine_rows(a: Rows, b: Rows) -> Rows {
    match (a, b) {
        (Rows::Public, Rows::Public) => Rows::Public,
        (Rows::OuterUnit, _) | (_, Rows::OuterUnit) => Rows::OuterUnit,
        (Rows::PerUnit, Rows::Public | Rows::PerUnit) | (Rows::Public, Rows::PerUnit) => {
            Rows::PerUnit
        }
    }
}

/// Rows of an outer or semi join that keeps `preserved`'s rows: the output rows are those rows,
/// restricted to the outer unit if either side is (a preserved row only meets that unit's rows).
fn preserved_rows(preserved: &Rel, other: &Rel) -> Rows {
    match (preserved.rows, other.rows) {
        (Rows::OuterUnit, _) => Rows::OuterUnit,
        (Rows::PerUnit, _) => Rows::PerUnit,
        (Rows::Public, other) => other,
    }
}

/// Positions of `exprs` that are unit labels of `rel`: bare unit columns, or COALESCE of a pair
/// of columns a FULL JOIN equated on the unit.
fn unit_positions(exprs: &[Expr], schema: &DFSchema, rel: &Rel) -> BTreeSet<usize> {
    exprs
        .iter()
        .enumerate()
        .filter(|(_, e)| is_unit_column(e, schema, rel) || is_coalesced_unit(e, schema, rel))
        .map(|(i, _)| i)
        .collect()
}

fn is_coalesced_unit(e: &Expr, schema: &DFSchema, rel: &Rel) -> bool {
    let Expr::ScalarFunction(f) = strip_alias(e) else {
        return false;
    };
    if f.func.name() != "coalesce" || rel.rows == Rows::Public {
        return false;
    }
    let positions: Option<Vec<usize>> = f
        .args
        .iter()
        .map(|a| match strip_alias(a) {
            Expr::Column(c) => schema.maybe_index_of_column(c),
            _other => None,
        })
        .collect();
    match positions.as_deref() {
        Some([a, b]) => rel
            .either_unit
            .iter()
            .any(|p| *p == (*a, *b) || *p == (*b, *a)),
        _ => false,
    }
}

/// Whether a condition refers to columns of both sides of a join.
fn relates(c: &Expr, ls: &DFSchema, rs: &DFSchema) -> bool {
    let columns = c.column_refs();
    let side = |s: &DFSchema| {
        columns
            .iter()
            .any(|col| s.maybe_index_of_column(col).is_some())
    };
    side(ls) && side(rs)
}

/// Whether `e` is a bare (possibly aliased) column holding this relation's unit id.
fn is_unit_column(e: &Expr, schema: &DFSchema, rel: &Rel) -> bool {
    match strip_alias(e) {
        Expr::Column(c) => column_is_unit(c, schema, rel),
        _other => false,
    }
}

fn column_is_unit(c: &Column, schema: &DFSchema, rel: &Rel) -> bool {
    rel.rows != Rows::Public
        && schema
            .maybe_index_of_column(c)
            .is_some_and(|i| rel.unit_cols.contains(&i))
}

/// `l.unit = r.unit` (either way round) in a join condition.
fn equates_units(c: &Expr, ls: &DFSchema, left: &Rel, rs: &DFSchema, right: &Rel) -> bool {
    let Expr::BinaryExpr(BinaryExpr {
        left: a,
        op: Operator::Eq,
        right: b,
    }) = c
    else {
        return false;
    };
    (is_unit_column(a, ls, left) && is_unit_column(b, rs, right))
        || (is_unit_column(b, ls, left) && is_unit_column(a, rs, right))
}

#[cfg(test)]
mod tests;
