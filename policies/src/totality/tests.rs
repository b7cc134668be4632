use super::*;
use crate::contract::planning_context;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a test runtime")
}

/// The analysed plan of `sql` (implicit casts in place), as `contract::plan` checks it.
fn check_sql(sql: &str) -> Result<(), PartialExpression> {
    runtime().block_on(async {
        let ctx = planning_context().expect("planning context");
        let df = ctx
            .sql(sql)
            .await
            .unwrap_or_else(|e| panic!("test SQL must plan: {e}\n{sql}"));
        let state = ctx.state();
        let analyzed = state
            .analyzer()
            .execute_and_check(df.logical_plan().clone(), state.config_options(), |_, _| {})
            .expect("analyses");
        check(&analyzed)
    })
}

fn refused(sql: &str) -> Partial {
    match check_sql(sql) {
        Ok(()) => panic!("accepted, but can fail on some value:\n{sql}"),
        Err(e) => {
            assert!(!e.at.is_empty() && !e.expression.is_empty(), "{e}");
            e.reason
        }
    }
}

fn accepted(sql: &str) {
    if let Err(e) = check_sql(sql) {
        panic!("refused, but is total: {e}\n{sql}");
    }
}

/// Selects `expr` per measure row; `m` is a restrictive measure, `e` an education month.
fn measure(expr: &str) -> String {
    format!("SELECT m.youth_pid, {expr} AS v FROM restrictive_measure m")
}

fn education(expr: &str) -> String {
    format!("SELECT e.youth_pid, {expr} AS v FROM education e")
}

#[test]
fn every_shipped_indicator_is_total() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("catalog");
    let catalog = runtime()
        .block_on(crate::Catalog::load(&dir))
        .expect("the shipped catalog loads, totality check included");
    let mut checked = 0;
    for ind in catalog.indicators.values() {
        if let Some(q) = ind.query() {
            check_sql(&q.sql).unwrap_or_else(|e| panic!("{} is refused: {e}", ind.id));
            checked += 1;
        }
    }
    assert!(checked >= 25, "only {checked} queries checked");
}

#[test]
fn division_and_modulo_by_what_can_be_zero_are_refused_and_their_total_forms_accepted() {
    for sql in [
        education("e.attended_hours / e.planned_hours"),
        education("e.attended_hours % e.planned_hours"),
        education("e.attended_hours / NULLIF(e.planned_hours, 0)"),
        education("e.attended_hours / (e.planned_hours - 3)"),
    ] {
        assert!(
            matches!(refused(&sql), Partial::DivisionByNonConstant { .. }),
            "{sql}"
        );
    }
    for sql in [
        education("e.attended_hours / 0"),
        education("e.attended_hours % 0"),
        education("e.attended_hours / -1"),
    ] {
        assert!(
            matches!(refused(&sql), Partial::DivisionByBadConstant { .. }),
            "{sql}"
        );
    }
    accepted(&education("e.attended_hours / 4"));
    accepted(&education("e.attended_hours % 7"));
    accepted(&education(
        "CAST(e.attended_hours AS DOUBLE) / NULLIF(e.planned_hours, 0)",
    ));
    accepted(&education(
        "CAST(e.attended_hours AS DOUBLE) / e.planned_hours",
    ));
}

#[test]
fn casts_that_can_fail_are_refused_and_try_cast_accepted() {
    for sql in [
        measure("CAST(m.unit_id AS BIGINT)"),
        measure("CAST(m.unit_id AS DATE)"),
        measure("CAST(m.unit_id AS TIMESTAMP)"),
        measure("CAST(m.unit_id AS DOUBLE)"),
        education("CAST(e.planned_hours AS INT)"),
        education("CAST(e.planned_hours AS SMALLINT)"),
        education("CAST(CAST(e.planned_hours AS DOUBLE) AS BIGINT)"),
        // The implicit cast DataFusion inserts to compare text with a number.
        measure("m.unit_id = 5"),
        // A constant that does not convert fails on every row it reaches.
        measure("CASE WHEN m.planned THEN CAST('x' AS BIGINT) END"),
    ] {
        assert!(matches!(refused(&sql), Partial::Cast { .. }), "{sql}");
    }
    accepted(&measure("TRY_CAST(m.unit_id AS BIGINT)"));
    accepted(&measure("TRY_CAST(m.unit_id AS DATE)"));
    accepted(&education("CAST(e.planned_hours AS DOUBLE)"));
    accepted(&education("CAST(e.planned_hours AS VARCHAR)"));
    accepted(&measure("CAST(m.start_ts AS DATE)"));
    accepted(&measure("CAST(m.start_ts AS VARCHAR)"));
    accepted(&measure("CAST('2024-01-01' AS DATE)"));
    // A float whose range is known converts: minutes of a bounded duration.
    accepted(&measure(
        "CAST(date_part('epoch', m.end_ts - m.start_ts) / 60 AS BIGINT)",
    ));
}

#[test]
fn functions_that_can_fail_are_refused_by_name() {
    for (sql, function) in [
        (measure("to_date(m.unit_id)"), "to_date"),
        (measure("to_timestamp(m.unit_id)"), "to_timestamp"),
        (measure("make_date(2024, 1, 1)"), "make_date"),
        (education("chr(e.planned_hours)"), "chr"),
        (
            measure("regexp_like(m.unit_id, m.measure_id)"),
            "regexp_like",
        ),
        (
            education("power(e.planned_hours, e.attended_hours)"),
            "power",
        ),
        (measure("arrow_cast(m.unit_id, 'Int64')"), "arrow_cast"),
    ] {
        match refused(&sql) {
            Partial::Function { function: f } => assert_eq!(f, function, "{sql}"),
            other => panic!("{sql}: {other}"),
        }
    }
    // Functions total only with constant arguments in range.
    for sql in [
        measure("substr(m.unit_id, 1, CAST(m.planned AS BIGINT) - 1)"),
        measure("substr(m.unit_id, 1, -1)"),
        measure("split_part(m.unit_id, '-', 0)"),
        education("repeat('x', e.planned_hours)"),
        education("lpad('x', e.planned_hours)"),
        measure("date_trunc(m.unit_id, m.start_ts)"),
    ] {
        assert!(matches!(refused(&sql), Partial::Argument { .. }), "{sql}");
    }
    assert!(matches!(
        refused(&education("abs(e.planned_hours)")),
        Partial::Abs
    ));
    accepted(&education("abs(e.attended_hours % 10)"));
    accepted(&education("abs(CAST(e.planned_hours AS DOUBLE))"));
    accepted(&measure("substr(m.unit_id, 2, 3)"));
    accepted(&measure("split_part(m.unit_id, '-', 2)"));
    accepted(&measure("date_trunc('month', m.start_ts)"));
    accepted(&measure(
        "upper(concat(m.unit_id, '-', m.route)) || lower(m.measure_type)",
    ));
    accepted(&measure("COALESCE(m.end_ts, m.start_ts)"));
    accepted(&measure("date_part('year', m.start_ts)"));
}

#[test]
fn date_arithmetic_needs_known_ranges_and_constant_intervals() {
    accepted(&measure("m.end_ts - m.start_ts > INTERVAL '12 hours'"));
    accepted(&measure("m.start_ts + INTERVAL '30 days'"));
    accepted("SELECT s.youth_pid, s.discharge_date - s.admission_date AS v FROM stay s");
    accepted("SELECT s.youth_pid, s.admission_date + 365 AS v FROM stay s");
    // An integer number of days from the records is not bounded: the date can overflow.
    assert!(matches!(
        refused(
            "SELECT s.youth_pid, s.admission_date + e.planned_hours AS v FROM stay s \
             JOIN education e ON e.youth_pid = s.youth_pid"
        ),
        Partial::OutOfRange { .. } | Partial::TemporalUnbounded | Partial::Cast { .. }
    ));
    // An interval of millennia leaves every timestamp type's range.
    assert!(matches!(
        refused(&measure("m.start_ts + INTERVAL '300000 years'")),
        Partial::OutOfRange { .. }
    ));
}

#[test]
fn patterns_must_be_constants() {
    assert!(matches!(
        refused(&measure("m.unit_id LIKE m.measure_id")),
        Partial::Pattern { .. }
    ));
    assert!(matches!(
        refused(&measure("m.unit_id ~ m.measure_id")),
        Partial::Pattern { .. }
    ));
    accepted(&measure("m.unit_id LIKE 'U%'"));
    accepted(&measure("m.unit_id ~ '^U[0-9]+$'"));
}

#[test]
fn the_check_follows_values_through_subqueries_and_joins() {
    // The range of a derived column is carried through the subquery that computes it.
    accepted(
        "SELECT youth_pid, CAST(minutes AS INT) AS v FROM (SELECT m.youth_pid, \
         CAST(date_part('epoch', m.end_ts - m.start_ts) / 60 AS BIGINT) AS minutes \
         FROM restrictive_measure m) t",
    );
    // ... and so is an unknown one: a planned-hours total does not fit an INT.
    assert!(matches!(
        refused(
            "SELECT youth_pid, CAST(total AS INT) AS v FROM (SELECT e.youth_pid, \
             sum(e.planned_hours) AS total FROM education e GROUP BY e.youth_pid) t"
        ),
        Partial::Cast { .. }
    ));
    // A partial expression inside a correlated subquery is found too.
    assert!(matches!(
        refused(
            "SELECT s.youth_pid, 1 AS v FROM stay s WHERE EXISTS (SELECT 1 FROM education e \
             WHERE e.youth_pid = s.youth_pid AND e.attended_hours / e.planned_hours > 1)"
        ),
        Partial::DivisionByNonConstant { .. }
    ));
}

#[test]
fn a_refusal_names_the_expression_and_its_place() {
    let e = check_sql(&education("e.attended_hours / e.planned_hours")).expect_err("refused");
    assert!(e.expression.contains("attended_hours"), "{e}");
    assert!(e.at.contains("SELECT"), "{e}");
    assert!(e.to_string().contains("NULLIF"), "{e}");
}
