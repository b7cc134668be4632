use super::*;
use crate::contract::planning_context;

/// The join every youth-by-quarter query starts from.
const STAY_Q: &str = "stay s JOIN quarters q ON s.admission_date <= q.last_day \
     AND COALESCE(s.discharge_date, q.last_day) >= q.first_day";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a test runtime")
}

fn check_sql(sql: &str, unit: &str) -> Result<(), StabilityError> {
    runtime().block_on(async {
        let ctx = planning_context().expect("planning context");
        let df = ctx
            .sql(sql)
            .await
            .unwrap_or_else(|e| panic!("test SQL must plan: {e}\n{sql}"));
        check(df.logical_plan(), unit)
    })
}

fn refused(sql: &str) -> Refusal {
    match check_sql(sql, "youth_pid") {
        Ok(()) => panic!("accepted, but must be refused:\n{sql}"),
        Err(e) => {
            // Every refusal says where it is.
            assert!(!e.at.is_empty(), "{e}");
            e.refusal
        }
    }
}

fn accepted(sql: &str) {
    if let Err(e) = check_sql(sql, "youth_pid") {
        panic!("refused, but must be accepted: {e}\n{sql}");
    }
}

#[test]
fn every_shipped_indicator_is_accepted() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("catalog");
    let catalog = runtime()
        .block_on(crate::Catalog::load(&dir))
        .expect("the shipped catalog loads, stability check included");
    let mut checked = 0;
    for ind in catalog.indicators.values() {
        if let Some(q) = ind.query() {
            check_sql(&q.sql, &q.privacy_unit)
                .unwrap_or_else(|e| panic!("{} is refused: {e}", ind.id));
            checked += 1;
        }
    }
    assert!(checked >= 19, "only {checked} query indicators checked");
}

#[test]
fn accepted_forms() {
    // Semi-join on the unit through IN.
    accepted(&format!(
        "SELECT s.youth_pid, q.quarter FROM {STAY_Q} \
         WHERE s.youth_pid IN (SELECT youth_pid FROM incident WHERE type = 'suicidepoging')"
    ));
    // Correlated scalar subquery aggregating the same youth's rows.
    accepted(&format!(
        "SELECT s.youth_pid, q.quarter FROM {STAY_Q} \
         WHERE (SELECT count(*) FROM move mv WHERE mv.youth_pid = s.youth_pid) > 2"
    ));
    // Window partitioned by the unit; GROUP BY the unit with HAVING.
    accepted(&format!(
        "SELECT youth_pid, quarter FROM (SELECT s.youth_pid, q.quarter, \
         row_number() OVER (PARTITION BY s.youth_pid ORDER BY s.admission_date, s.stay_id, q.quarter) AS rn \
         FROM {STAY_Q}) t WHERE rn = 1"
    ));
    accepted(&format!(
        "SELECT s.youth_pid, q.quarter, count(*) AS n FROM {STAY_Q} \
         GROUP BY s.youth_pid, q.quarter HAVING count(*) > 1"
    ));
    // Joins of data-model tables on the unit, inner and left, and the reference table `unit`.
    accepted(
        "SELECT s.youth_pid, mv.move_type FROM stay s \
         JOIN move mv ON mv.youth_pid = s.youth_pid AND mv.stay_id = s.stay_id \
         JOIN unit u ON u.unit_id = s.unit_id",
    );
    accepted(
        "SELECT s.youth_pid, mv.move_type FROM stay s \
         LEFT JOIN move mv ON s.youth_pid = mv.youth_pid",
    );
    accepted("SELECT y.youth_pid, y.sex FROM youth y JOIN stay s USING (youth_pid)");
    // UNION ALL of accepted inputs, a CTE, DISTINCT, ORDER BY without LIMIT.
    accepted(
        "WITH a AS (SELECT youth_pid, 'm' AS src FROM move), \
              b AS (SELECT youth_pid, 'i' AS src FROM incident) \
         SELECT DISTINCT youth_pid, src FROM (SELECT * FROM a UNION ALL SELECT * FROM b) u \
         ORDER BY youth_pid",
    );
    // Aggregates inside a per-youth group over a public subquery.
    accepted(&format!(
        "SELECT s.youth_pid, q.quarter FROM {STAY_Q} \
         WHERE q.quarter IN (SELECT quarter FROM quarters WHERE days > 80)"
    ));
    // The panel's own unit.
    check_sql(
        "SELECT p.respondent_pid, p.quarter FROM panel_response p",
        "respondent_pid",
    )
    .expect("panel query for its own unit");
}

#[test]
fn the_three_reported_queries_are_refused() {
    assert!(matches!(
        refused(
            "SELECT CAST(m.measure_id AS VARCHAR) AS youth_pid, q.quarter \
             FROM restrictive_measure m \
             JOIN quarters q ON CAST(m.start_ts AS DATE) BETWEEN q.first_day AND q.last_day"
        ),
        Refusal::UnitNotCarried { .. }
    ));
    assert!(matches!(
        refused(
            "SELECT y.youth_pid, q.quarter FROM youth y CROSS JOIN quarters q \
             WHERE EXISTS (SELECT 1 FROM incident i WHERE i.type = 'suicidepoging')"
        ),
        Refusal::CrossJoinWithPublic { .. }
    ));
    assert!(matches!(
        refused(
            "SELECT y.youth_pid, q.quarter FROM youth y \
             JOIN quarters q ON y.birth_month <= q.last_day \
             WHERE EXISTS (SELECT 1 FROM incident i WHERE i.type = 'suicidepoging' \
               AND CAST(i.incident_ts AS DATE) BETWEEN q.first_day AND q.last_day)"
        ),
        Refusal::UncorrelatedSubquery { kind: "EXISTS", .. }
    ));
    assert!(matches!(
        refused(&format!(
            "SELECT s.youth_pid, q.quarter FROM {STAY_Q} \
             JOIN (SELECT count(*) AS heavy FROM (SELECT youth_pid FROM restrictive_measure \
                   GROUP BY youth_pid HAVING count(*) > 40) h) hh ON hh.heavy > 0"
        )),
        Refusal::AggregateAcrossUnits
    ));
}

/// Each adversarial query with the reason it must be refused for.
#[test]
fn adversarial_queries_are_refused_each_for_its_reason() {
    use Refusal as R;
    type Expect = fn(&Refusal) -> bool;
    let cases: Vec<(&str, String, Expect)> = vec![
        (
            "unit taken from the other side of a join on a non-unit key",
            format!(
                "SELECT mv.youth_pid, q.quarter FROM {STAY_Q} \
                 JOIN move mv ON mv.stay_id = s.stay_id"
            ),
            |r| matches!(r, R::JoinWithoutUnitEquality { .. }),
        ),
        (
            "unit taken from the null-supplying side of a left join",
            "SELECT mv.youth_pid, s.legal_basis FROM stay s \
             LEFT JOIN move mv ON mv.youth_pid = s.youth_pid"
                .into(),
            |r| matches!(r, R::UnitNotCarried { .. }),
        ),
        (
            "self-join on a non-unit key",
            "SELECT a.youth_pid, b.legal_basis FROM stay a JOIN stay b ON a.unit_id = b.unit_id"
                .into(),
            |r| matches!(r, R::JoinWithoutUnitEquality { .. }),
        ),
        (
            "cross join of two data-model tables",
            "SELECT s.youth_pid, i.type FROM stay s CROSS JOIN incident i".into(),
            |r| matches!(r, R::JoinWithoutUnitEquality { .. }),
        ),
        (
            "join whose unit equality is only one disjunct",
            "SELECT s.youth_pid, i.type FROM stay s JOIN incident i \
             ON s.youth_pid = i.youth_pid OR i.type = 'suicidepoging'"
                .into(),
            |r| matches!(r, R::JoinWithoutUnitEquality { .. }),
        ),
        (
            "UNION of a unit column with a non-unit column",
            format!(
                "SELECT s.youth_pid, q.quarter FROM {STAY_Q} \
                 UNION ALL SELECT s.stay_id, q.quarter FROM {STAY_Q}"
            ),
            |r| matches!(r, R::UnionMixesUnit { .. }),
        ),
        (
            "UNION with public rows labelled as a youth",
            format!(
                "SELECT s.youth_pid, q.quarter FROM {STAY_Q} \
                 UNION ALL SELECT 'nobody', quarter FROM quarters"
            ),
            |r| matches!(r, R::UnionMixesUnit { .. }),
        ),
        (
            "correlated subquery on a non-unit key",
            format!(
                "SELECT s.youth_pid, q.quarter FROM {STAY_Q} \
                 WHERE EXISTS (SELECT 1 FROM move mv WHERE mv.stay_id = s.stay_id)"
            ),
            |r| matches!(r, R::UncorrelatedSubquery { kind: "EXISTS", .. }),
        ),
        (
            "uncorrelated NOT EXISTS",
            format!(
                "SELECT s.youth_pid, q.quarter FROM {STAY_Q} \
                 WHERE NOT EXISTS (SELECT 1 FROM incident i WHERE i.type = 'suicide')"
            ),
            |r| matches!(r, R::UncorrelatedSubquery { kind: "EXISTS", .. }),
        ),
        (
            "IN over a non-unit key",
            format!(
                "SELECT s.youth_pid, q.quarter FROM {STAY_Q} \
                 WHERE s.unit_id IN (SELECT unit_id FROM restrictive_measure)"
            ),
            |r| matches!(r, R::UncorrelatedSubquery { kind: "IN", .. }),
        ),
        (
            "NOT IN over the unit",
            format!(
                "SELECT s.youth_pid, q.quarter FROM {STAY_Q} \
                 WHERE s.youth_pid NOT IN (SELECT youth_pid FROM incident)"
            ),
            |r| matches!(r, R::UncorrelatedSubquery { kind: "NOT IN", .. }),
        ),
        (
            "uncorrelated scalar subquery",
            format!(
                "SELECT s.youth_pid, q.quarter FROM {STAY_Q} \
                 WHERE (SELECT i.type FROM incident i WHERE i.incident_id = 'x') = 'suicidepoging'"
            ),
            |r| matches!(r, R::UncorrelatedSubquery { kind: "scalar", .. }),
        ),
        (
            "a public relation filtered on data-model rows",
            "SELECT q.quarter AS youth_pid FROM quarters q \
             WHERE EXISTS (SELECT 1 FROM stay s WHERE s.admission_date <= q.last_day)"
                .into(),
            |r| matches!(r, R::UncorrelatedSubquery { .. }),
        ),
        (
            "window ordered across youths",
            format!(
                "SELECT youth_pid, quarter FROM (SELECT s.youth_pid, q.quarter, \
                 row_number() OVER (ORDER BY s.admission_date) AS rn FROM {STAY_Q}) t \
                 WHERE rn <= 100"
            ),
            |r| matches!(r, R::WindowAcrossUnits { .. }),
        ),
        (
            "window partitioned by quarter only",
            format!(
                "SELECT youth_pid, quarter FROM (SELECT s.youth_pid, q.quarter, \
                 count(*) OVER (PARTITION BY q.quarter) AS n FROM {STAY_Q}) t WHERE n > 10"
            ),
            |r| matches!(r, R::WindowAcrossUnits { .. }),
        ),
        (
            "LIMIT",
            format!("SELECT s.youth_pid, q.quarter FROM {STAY_Q} LIMIT 10"),
            |r| matches!(r, R::RowSelection { .. }),
        ),
        (
            "OFFSET",
            format!("SELECT s.youth_pid, q.quarter FROM {STAY_Q} OFFSET 5"),
            |r| matches!(r, R::RowSelection { .. }),
        ),
        (
            "ORDER BY with LIMIT in a derived table",
            format!(
                "SELECT youth_pid, quarter FROM (SELECT s.youth_pid, q.quarter FROM {STAY_Q} \
                 ORDER BY s.admission_date DESC LIMIT 50) t"
            ),
            |r| matches!(r, R::RowSelection { .. }),
        ),
        (
            "random()",
            format!("SELECT s.youth_pid, q.quarter FROM {STAY_Q} WHERE random() < 0.5"),
            |r| matches!(r, R::NonDeterministic { function } if function == "random"),
        ),
        (
            "now()",
            format!("SELECT s.youth_pid, q.quarter FROM {STAY_Q} WHERE s.admission_date < now()"),
            |r| matches!(r, R::NonDeterministic { function } if function == "now"),
        ),
        (
            "uuid() as the unit",
            "SELECT uuid() AS youth_pid, s.legal_basis FROM stay s".into(),
            |r| matches!(r, R::NonDeterministic { function } if function == "uuid"),
        ),
        (
            "a view-like CTE that aggregates across youths",
            format!(
                "WITH busy AS (SELECT count(*) AS n FROM stay) \
                 SELECT s.youth_pid, q.quarter FROM {STAY_Q} JOIN busy ON busy.n > 10"
            ),
            |r| matches!(r, R::AggregateAcrossUnits),
        ),
        (
            "a join to quarters used to duplicate rows beyond the group bound",
            "SELECT s.youth_pid, q.quarter FROM stay s CROSS JOIN quarters q".into(),
            |r| matches!(r, R::CrossJoinWithPublic { .. }),
        ),
        (
            "aggregate grouped by quarter only",
            format!(
                "SELECT max(s.youth_pid) AS youth_pid, q.quarter FROM {STAY_Q} GROUP BY q.quarter"
            ),
            |r| matches!(r, R::AggregateAcrossUnits),
        ),
        (
            "aggregate without GROUP BY as the unit",
            "SELECT (SELECT min(youth_pid) FROM youth) AS youth_pid, quarter FROM quarters".into(),
            |r| matches!(r, R::AggregateAcrossUnits),
        ),
        (
            "ROLLUP",
            format!(
                "SELECT s.youth_pid, q.quarter, count(*) AS n FROM {STAY_Q} \
                 GROUP BY ROLLUP (s.youth_pid, q.quarter)"
            ),
            |r| matches!(r, R::GroupingSets),
        ),
        (
            "DISTINCT without the unit",
            format!(
                "SELECT 'x' AS youth_pid, quarter FROM \
                 (SELECT DISTINCT q.quarter FROM {STAY_Q}) t"
            ),
            |r| matches!(r, R::DistinctAcrossUnits),
        ),
        (
            "DISTINCT ON a non-unit key",
            format!("SELECT DISTINCT ON (q.quarter) s.youth_pid, q.quarter FROM {STAY_Q}"),
            |r| matches!(r, R::DistinctAcrossUnits),
        ),
        (
            "public rows kept by a LEFT JOIN",
            "SELECT s.youth_pid, q.quarter FROM quarters q \
             LEFT JOIN stay s ON s.admission_date <= q.last_day"
                .into(),
            |r| matches!(r, R::OuterJoinKeepsForeignRows { .. }),
        ),
        (
            "public rows kept by a FULL JOIN",
            "SELECT s.youth_pid, q.quarter FROM stay s \
             FULL JOIN quarters q ON s.admission_date <= q.last_day"
                .into(),
            |r| matches!(r, R::OuterJoinKeepsForeignRows { .. }),
        ),
        (
            "unit computed with COALESCE",
            format!("SELECT COALESCE(s.youth_pid, 'x') AS youth_pid, q.quarter FROM {STAY_Q}"),
            |r| matches!(r, R::UnitNotCarried { .. }),
        ),
        (
            "unit concatenated",
            format!("SELECT s.youth_pid || '' AS youth_pid, q.quarter FROM {STAY_Q}"),
            |r| matches!(r, R::UnitNotCarried { .. }),
        ),
        (
            "unit from a CASE over two youths' columns",
            "SELECT CASE WHEN s.stay_id > 'a' THEN s.youth_pid ELSE i.youth_pid END AS youth_pid, \
             i.type FROM stay s JOIN incident i ON s.youth_pid = i.youth_pid"
                .into(),
            |r| matches!(r, R::UnitNotCarried { .. }),
        ),
        (
            "only public rows",
            "SELECT quarter AS youth_pid, quarter FROM quarters".into(),
            |r| matches!(r, R::NoUnitRows { .. }),
        ),
        (
            "another unit's table relabelled as youths",
            "SELECT p.respondent_pid AS youth_pid, p.quarter FROM panel_response p".into(),
            |r| matches!(r, R::OtherUnitTable { .. }),
        ),
        (
            "WITH RECURSIVE",
            "WITH RECURSIVE r(youth_pid, n) AS (SELECT youth_pid, 1 FROM youth \
             UNION ALL SELECT youth_pid, n + 1 FROM r WHERE n < 3) SELECT youth_pid, n FROM r"
                .into(),
            |r| matches!(r, R::Unsupported { .. }),
        ),
        (
            "ANY over a subquery",
            format!(
                "SELECT s.youth_pid, q.quarter FROM {STAY_Q} \
                 WHERE s.admission_date > ANY (SELECT first_day FROM quarters)"
            ),
            |r| matches!(r, R::Unsupported { .. }),
        ),
        (
            "a query parameter",
            format!("SELECT s.youth_pid, q.quarter FROM {STAY_Q} WHERE s.legal_basis = $1"),
            |r| matches!(r, R::Unsupported { .. }),
        ),
    ];
    assert!(cases.len() >= 30, "{} cases", cases.len());
    for (name, sql, expect) in &cases {
        let refusal = refused(sql);
        assert!(
            expect(&refusal),
            "{name}: refused for the wrong reason: {refusal}"
        );
    }
}

#[test]
fn messages_name_the_construct_and_where_it_is() {
    let e = check_sql(
        &format!(
            "SELECT s.youth_pid, q.quarter FROM {STAY_Q} \
             WHERE EXISTS (SELECT 1 FROM move mv WHERE mv.stay_id = s.stay_id)"
        ),
        "youth_pid",
    )
    .expect_err("refused");
    let text = e.to_string();
    assert!(text.contains("EXISTS subquery"), "{text}");
    assert!(text.contains("move AS mv"), "{text}");
    let e = check_sql(
        "SELECT CAST(m.measure_id AS VARCHAR) AS youth_pid FROM restrictive_measure m",
        "youth_pid",
    )
    .expect_err("refused");
    assert!(e.to_string().contains("m.measure_id"), "{e}");
}

#[test]
fn tables_outside_the_data_model_are_refused() {
    let e = runtime().block_on(async {
        let ctx = planning_context().expect("context");
        let extra = crate::contract::quarters_table(None).expect("table");
        ctx.register_table("shadow", std::sync::Arc::new(extra))
            .expect("register");
        let df = ctx
            .sql("SELECT quarter AS youth_pid FROM shadow")
            .await
            .expect("plans");
        check(df.logical_plan(), "youth_pid")
    });
    assert!(matches!(
        e,
        Err(StabilityError {
            refusal: Refusal::UnknownTable { .. },
            ..
        })
    ));
}

/// A youth's stays by quarter, with the columns the new forms order by.
fn by_quarter(select: &str) -> String {
    format!("SELECT {select} FROM {STAY_Q}")
}

#[test]
fn picks_that_depend_on_row_order_within_a_unit_are_refused() {
    let order_dependent = [
        // Window functions that count or pick rows, without an order that leaves no ties.
        format!(
            "SELECT youth_pid, quarter FROM ({}) t WHERE rn = 1",
            by_quarter("s.youth_pid, q.quarter, row_number() OVER (PARTITION BY s.youth_pid) AS rn")
        ),
        format!(
            "SELECT youth_pid, quarter FROM ({}) t WHERE rn = 1",
            by_quarter(
                "s.youth_pid, q.quarter, row_number() OVER (PARTITION BY s.youth_pid ORDER BY s.admission_date) AS rn"
            )
        ),
        by_quarter(
            "s.youth_pid, lag(q.quarter) OVER (PARTITION BY s.youth_pid ORDER BY s.admission_date) AS quarter"
        ),
        by_quarter(
            "s.youth_pid, lead(q.quarter) OVER (PARTITION BY s.youth_pid ORDER BY s.stay_id) AS quarter"
        ),
        by_quarter("s.youth_pid, first_value(q.quarter) OVER (PARTITION BY s.youth_pid) AS quarter"),
        by_quarter(
            "s.youth_pid, last_value(q.quarter) OVER (PARTITION BY s.youth_pid ORDER BY s.stay_id) AS quarter"
        ),
        by_quarter(
            "s.youth_pid, nth_value(q.quarter, 2) OVER (PARTITION BY s.youth_pid ORDER BY q.quarter) AS quarter"
        ),
        by_quarter(
            "s.youth_pid, q.quarter, ntile(2) OVER (PARTITION BY s.youth_pid ORDER BY s.admission_date) AS half"
        ),
        by_quarter(
            "s.youth_pid, q.quarter, sum(1) OVER (PARTITION BY s.youth_pid ORDER BY s.admission_date \
             ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running"
        ),
        "SELECT m.youth_pid, count(*) OVER (PARTITION BY m.youth_pid ORDER BY m.start_ts \
         ROWS 1 PRECEDING) AS pair FROM restrictive_measure m"
            .to_string(),
        "SELECT m.youth_pid, row_number() OVER (PARTITION BY m.youth_pid ORDER BY m.start_ts) AS n \
         FROM restrictive_measure m"
            .to_string(),
        // Aggregates that keep the order of their input rows.
        format!(
            "{} GROUP BY s.youth_pid",
            by_quarter("s.youth_pid, array_agg(q.quarter) AS quarters")
        ),
        format!(
            "{} GROUP BY s.youth_pid",
            by_quarter("s.youth_pid, first_value(q.quarter) AS quarter")
        ),
        format!(
            "{} GROUP BY s.youth_pid",
            by_quarter("s.youth_pid, last_value(q.quarter) AS quarter")
        ),
        format!(
            "{} GROUP BY s.youth_pid",
            by_quarter("s.youth_pid, string_agg(q.quarter, ',') AS quarters")
        ),
        format!(
            "{} GROUP BY s.youth_pid",
            by_quarter("s.youth_pid, array_agg(q.quarter ORDER BY s.admission_date) AS quarters")
        ),
        format!(
            "{} GROUP BY s.youth_pid",
            by_quarter("s.youth_pid, first_value(q.quarter ORDER BY s.admission_date) AS quarter")
        ),
        // DISTINCT ON keeps the first row of each value in an order with ties.
        by_quarter("DISTINCT ON (s.youth_pid) s.youth_pid, q.quarter"),
        format!(
            "{} ORDER BY s.youth_pid, s.admission_date",
            by_quarter("DISTINCT ON (s.youth_pid) s.youth_pid, q.quarter")
        ),
        // LIMIT among one youth's rows, in an order with ties.
        format!(
            "{} WHERE q.quarter = (SELECT q2.quarter FROM stay s2 JOIN quarters q2 \
             ON s2.admission_date <= q2.last_day WHERE s2.youth_pid = s.youth_pid LIMIT 1)",
            by_quarter("s.youth_pid, q.quarter")
        ),
        format!(
            "{} WHERE q.quarter = (SELECT q2.quarter FROM stay s2 JOIN quarters q2 \
             ON s2.admission_date <= q2.last_day WHERE s2.youth_pid = s.youth_pid \
             ORDER BY s2.admission_date LIMIT 1)",
            by_quarter("s.youth_pid, q.quarter")
        ),
    ];
    for sql in &order_dependent {
        match refused(sql) {
            Refusal::OrderDependent { .. } => {}
            other => panic!("refused for another reason ({other}):\n{sql}"),
        }
    }
}

#[test]
fn scopes_are_resolved_as_datafusion_resolves_them() {
    // Inside the subquery, `s` is every youth's stay again, and the LATERAL's `s.youth_pid` is
    // that inner `s`: the subquery counts over all youths. The check once resolved it to the
    // outer `s` and took the subquery for a per-youth one.
    let reused_alias = format!(
        "{} WHERE (SELECT count(*) FROM stay s JOIN LATERAL (SELECT 1 AS one FROM move mv \
         WHERE mv.youth_pid = s.youth_pid) l ON true) > 5",
        by_quarter("s.youth_pid, q.quarter")
    );
    assert!(
        matches!(
            refused(&reused_alias),
            Refusal::AmbiguousOuterReference { levels: 2, .. }
        ),
        "{reused_alias}"
    );
    // The same name at two enclosing levels, without LATERAL.
    let nested = format!(
        "{} WHERE EXISTS (SELECT 1 FROM stay s WHERE EXISTS \
         (SELECT 1 FROM move mv WHERE mv.youth_pid = s.youth_pid))",
        by_quarter("s.youth_pid, q.quarter")
    );
    assert!(
        matches!(
            refused(&nested),
            Refusal::AmbiguousOuterReference { .. } | Refusal::UncorrelatedSubquery { .. }
        ),
        "{nested}"
    );
    // LATERAL correlated on something other than the unit meets other youths' rows.
    let by_stay = "SELECT s.youth_pid, c.n FROM stay s JOIN LATERAL (SELECT count(*) AS n \
                   FROM move mv WHERE mv.stay_id = s.stay_id) c ON true";
    assert!(matches!(
        refused(by_stay),
        Refusal::JoinWithoutUnitEquality { .. } | Refusal::AggregateAcrossUnits
    ));
    // A comma join keeps its refusals when WHERE does not relate the tables.
    assert!(matches!(
        refused(
            "SELECT m.youth_pid, q.quarter FROM restrictive_measure m, quarters q \
             WHERE m.route = 'noodsituatie'"
        ),
        Refusal::CrossJoinWithPublic { .. }
    ));
    assert!(matches!(
        refused(
            "SELECT s.youth_pid, mv.move_type FROM stay s, move mv WHERE mv.stay_id = s.stay_id"
        ),
        Refusal::JoinWithoutUnitEquality { .. }
    ));
    // FULL JOIN: only COALESCE of the equated unit columns labels every row.
    let full = |on: &str, unit: &str| {
        format!(
            "SELECT {unit} AS youth_pid FROM (SELECT youth_pid, stay_id FROM move) a \
             FULL JOIN (SELECT youth_pid, stay_id FROM incident) b ON {on}"
        )
    };
    assert!(matches!(
        refused(&full(
            "a.youth_pid = b.youth_pid",
            "COALESCE(a.youth_pid, b.stay_id)"
        )),
        Refusal::UnitNotCarried { .. }
    ));
    assert!(matches!(
        refused(&full(
            "a.stay_id = b.stay_id",
            "COALESCE(a.youth_pid, b.youth_pid)"
        )),
        Refusal::JoinWithoutUnitEquality { .. } | Refusal::UnitNotCarried { .. }
    ));
    assert!(matches!(
        refused(&full("a.youth_pid = b.youth_pid", "a.youth_pid")),
        Refusal::UnitNotCarried { .. }
    ));
}

#[test]
fn safe_forms_researchers_write_are_accepted() {
    // Comma joins whose relating condition is in WHERE.
    accepted(
        "SELECT m.youth_pid, q.quarter FROM restrictive_measure m, quarters q \
         WHERE CAST(m.start_ts AS DATE) BETWEEN q.first_day AND q.last_day",
    );
    accepted(
        "SELECT s.youth_pid, q.quarter FROM stay s, move mv, quarters q \
         WHERE mv.youth_pid = s.youth_pid AND mv.move_date BETWEEN q.first_day AND q.last_day",
    );
    // FULL JOIN of two per-youth relations on the unit, COALESCE as the unit.
    accepted(
        "SELECT COALESCE(a.youth_pid, b.youth_pid) AS youth_pid, COALESCE(a.n, 0) + COALESCE(b.k, 0) AS v \
         FROM (SELECT youth_pid, count(*) AS n FROM move GROUP BY youth_pid) a \
         FULL JOIN (SELECT youth_pid, count(*) AS k FROM incident GROUP BY youth_pid) b \
         ON a.youth_pid = b.youth_pid",
    );
    // A top-level JOIN LATERAL correlated on the unit.
    accepted(&format!(
        "SELECT s.youth_pid, q.quarter, c.n FROM {STAY_Q} JOIN LATERAL \
         (SELECT count(*) AS n FROM move mv WHERE mv.youth_pid = s.youth_pid) c ON true"
    ));
    // Order-dependent picks in an order without ties, and tie-insensitive ones.
    accepted(&format!(
        "SELECT youth_pid, quarter FROM ({}) t WHERE rn = 1",
        by_quarter(
            "s.youth_pid, q.quarter, row_number() OVER (PARTITION BY s.youth_pid \
             ORDER BY s.admission_date, s.stay_id, q.quarter) AS rn"
        )
    ));
    accepted(&by_quarter(
        "s.youth_pid, q.quarter, rank() OVER (PARTITION BY s.youth_pid ORDER BY s.admission_date) AS r",
    ));
    accepted(&by_quarter(
        "s.youth_pid, q.quarter, count(*) OVER (PARTITION BY s.youth_pid ORDER BY s.admission_date) AS c",
    ));
    accepted(&format!(
        "{} ORDER BY s.youth_pid, s.admission_date, s.stay_id, q.quarter",
        by_quarter("DISTINCT ON (s.youth_pid) s.youth_pid, q.quarter")
    ));
    accepted(&format!(
        "{} GROUP BY s.youth_pid",
        by_quarter("s.youth_pid, array_agg(q.quarter ORDER BY q.quarter, s.stay_id) AS quarters")
    ));
    accepted(
        "SELECT m.youth_pid, row_number() OVER (PARTITION BY m.youth_pid ORDER BY m.start_ts, m.measure_id) AS n \
         FROM restrictive_measure m",
    );
}
