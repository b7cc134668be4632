//! Sensitivity: adding all rows of one unit — any number of rows, in any groups (inside and outside
//! the public domain), with extreme values — moves every pre-noise cell by at most the declared
//! per-cell bound, and the whole vector by at most the declared L1 and L2 bounds. This is the
//! property every noise scale rests on.

use crate::common::*;
use node::evaluate::{Bounding, cells};
use proptest::prelude::*;

fn row_strategy(units: std::ops::Range<u32>) -> impl Strategy<Value = Row> {
    (
        units,
        0..QUARTERS.len(),
        0..QUESTIONS.len(),
        prop_oneof![
            -20i64..40,
            Just(i64::MAX / 4),
            Just(i64::MIN / 4),
            Just((1i64 << 40) + 1),
            any::<i32>().prop_map(|v| v as i64),
        ],
    )
        .prop_map(|(u, q, k, v)| (format!("u{u}"), QUARTERS[q].into(), QUESTIONS[k].into(), v))
}

fn adversary_strategy() -> impl Strategy<Value = Vec<Row>> {
    prop::collection::vec(row_strategy(0..1), 1..120).prop_map(|rows| {
        rows.into_iter()
            .map(|(_, q, k, v)| ("adversary".to_string(), q, k, v))
            .collect()
    })
}

fn check(base: &[Row], adversary: &[Row]) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let period = period();
    let mut with: Vec<Row> = base.to_vec();
    with.extend_from_slice(adversary);
    for (kind, ind) in all_kinds() {
        let q = query(&ind);
        let (before, after) = rt.block_on(async {
            let t0 = panel_tables(base).await;
            let t1 = panel_tables(&with).await;
            (
                cells(&t0, &q, &period, Bounding::Bounded).await,
                cells(&t1, &q, &period, Bounding::Bounded).await,
            )
        });
        let (before, after) = (
            before.map_err(|e| TestCaseError::fail(e.to_string()))?,
            after.map_err(|e| TestCaseError::fail(e.to_string()))?,
        );
        prop_assert_eq!(&before.keys, &after.keys);
        for m in q.measures(period.quarters().len()) {
            let a = before.measure(&m.name).unwrap_or_default();
            let b = after.measure(&m.name).unwrap_or_default();
            let diffs: Vec<i128> = a
                .iter()
                .zip(b)
                .map(|(x, y)| *y as i128 - *x as i128)
                .collect();
            let max = diffs.iter().map(|d| d.abs()).max().unwrap_or(0);
            let l1: i128 = diffs.iter().map(|d| d.abs()).sum();
            let l2 = (diffs.iter().map(|d| (d * d) as f64).sum::<f64>()).sqrt();
            prop_assert!(
                max <= m.per_cell as i128,
                "{kind}/{}: cell moved by {max} > {}",
                m.name,
                m.per_cell
            );
            prop_assert!(
                l1 <= m.l1() as i128,
                "{kind}/{}: L1 {l1} > {}",
                m.name,
                m.l1()
            );
            prop_assert!(l2 <= m.l2(), "{kind}/{}: L2 {l2} > {}", m.name, m.l2());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn adding_one_unit_moves_cells_within_the_declared_bounds(
        base in prop::collection::vec(row_strategy(0..6), 0..60),
        adversary in adversary_strategy(),
    ) {
        check(&base, &adversary)?;
    }
}

/// A fixed worst case: one unit touching every cell, many times, with extreme values.
#[test]
fn a_unit_in_every_cell_with_extreme_values_stays_within_bounds() {
    let mut adversary = Vec::new();
    for q in QUARTERS {
        for k in QUESTIONS {
            for v in [i64::MAX / 4, i64::MIN / 4, 7, 30] {
                adversary.push(("adversary".to_string(), q.to_string(), k.to_string(), v));
            }
        }
    }
    let base = vec![("u1".to_string(), "2024Q1".to_string(), "Q1".to_string(), 3)];
    check(&base, &adversary).expect("within bounds");
}
