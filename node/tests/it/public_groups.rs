//! Every public group appears (zeros included); nothing outside the public domain ever does; the
//! per-unit bounds do what the catalog says.

use crate::common::*;
use node::evaluate::{Bounding, cells};

fn r(u: &str, q: &str, k: &str, v: i64) -> Row {
    (u.into(), q.into(), k.into(), v)
}

#[tokio::test]
async fn answers_cover_exactly_the_public_key_set_with_zeros() {
    let rows = vec![
        r("a", "2024Q1", "Q1", 3),
        r("a", "2024Q1", "Q1", 4),
        r("b", "2024Q1", "Q1", 5),
        r("b", "2024Q2", "Q2", 2),
        r("c", "2030Q1", "Q1", 1), // quarter outside the period
        r("d", "2024Q1", "Q9", 1), // question outside the list
    ];
    let t = panel_tables(&rows).await;
    for (kind, ind) in all_kinds() {
        let q = query(&ind);
        let c = cells(&t, &q, &period(), Bounding::Bounded)
            .await
            .expect(kind);
        let bins = q.bins().len().max(1);
        assert_eq!(
            c.keys.len(),
            4 * 4 * bins,
            "{kind}: every quarter × question (× bin)"
        );
        for key in &c.keys {
            assert!(key[0].starts_with("2024Q"), "{kind}: {key:?}");
            assert_ne!(key[1], "Q9", "{kind}: {key:?}");
        }
        let zeros = c.measures[0].1.iter().filter(|v| **v == 0).count();
        assert!(
            zeros >= c.keys.len() - 2 * bins,
            "{kind}: empty groups are present as zeros"
        );
    }
    let count_units = query(&all_kinds()[0].1);
    let c = cells(&t, &count_units, &period(), Bounding::Bounded)
        .await
        .unwrap();
    let at = |q: &str, k: &str| {
        let i = c.keys.iter().position(|x| x[0] == q && x[1] == k).unwrap();
        c.measures[0].1[i]
    };
    assert_eq!(at("2024Q1", "Q1"), 2);
    assert_eq!(at("2024Q2", "Q2"), 1);
    assert_eq!(at("2024Q3", "Q3"), 0);
}

#[tokio::test]
async fn bounds_clamp_rows_values_and_groups_per_unit() {
    // One unit: 5 rows in one cell, scores far above the sum's upper bound, and 10 distinct cells.
    let mut rows: Vec<Row> = (0..5).map(|_| r("a", "2024Q1", "Q1", 100)).collect();
    for q in ["2024Q2", "2024Q3"] {
        for k in ["Q1", "Q2", "Q3", "Q4"] {
            rows.push(r("a", q, k, 1));
        }
    }
    let t = panel_tables(&rows).await;
    let kinds = all_kinds();
    let total = |c: &node::evaluate::Cells, m: &str| c.measure(m).unwrap().iter().sum::<i64>();

    let count_rows = query(&kinds[1].1);
    let exact = cells(&t, &count_rows, &period(), Bounding::Exact)
        .await
        .unwrap();
    let bounded = cells(&t, &count_rows, &period(), Bounding::Bounded)
        .await
        .unwrap();
    assert_eq!(total(&exact, "count"), 13);
    // At most 3 cells, each at most 2 rows.
    assert!(total(&bounded, "count") <= 6, "{bounded:?}");
    assert_eq!(
        bounded
            .measure("count")
            .unwrap()
            .iter()
            .filter(|v| **v > 0)
            .count(),
        3
    );

    let sum = query(&kinds[2].1);
    let exact = cells(&t, &sum, &period(), Bounding::Exact).await.unwrap();
    let bounded = cells(&t, &sum, &period(), Bounding::Bounded).await.unwrap();
    assert_eq!(total(&exact, "sum"), 508);
    assert!(bounded.measure("sum").unwrap().iter().all(|v| *v <= 10));
    assert_eq!(
        bounded
            .measure("sum")
            .unwrap()
            .iter()
            .filter(|v| **v != 0)
            .count(),
        3
    );
}

#[tokio::test]
async fn the_cells_a_unit_keeps_depend_only_on_its_own_rows() {
    let mut unit_a: Vec<Row> = Vec::new();
    for q in ["2024Q1", "2024Q2", "2024Q3", "2024Q4"] {
        for k in ["Q1", "Q2"] {
            unit_a.push(r("a", q, k, 1));
        }
    }
    let ind = &all_kinds()[0].1;
    let q = query(ind);
    let alone = cells(
        &panel_tables(&unit_a).await,
        &q,
        &period(),
        Bounding::Bounded,
    )
    .await
    .unwrap();
    let mut crowd = unit_a.clone();
    for i in 0..30 {
        crowd.push(r(&format!("o{i}"), "2024Q3", "Q4", 1));
    }
    let with_others = cells(
        &panel_tables(&crowd).await,
        &q,
        &period(),
        Bounding::Bounded,
    )
    .await
    .unwrap();
    let others_cell = with_others
        .keys
        .iter()
        .position(|k| k[0] == "2024Q3" && k[1] == "Q4")
        .unwrap();
    let mut expected = alone.measure("count").unwrap().to_vec();
    expected[others_cell] += 30;
    assert_eq!(with_others.measure("count").unwrap(), expected.as_slice());
}

/// The per-kind tests iterate over `all_kinds()`: it must hold every aggregate kind there is, so a
/// new kind cannot go untested.
#[test]
fn the_fixtures_cover_every_aggregate_kind() {
    let fixtures: Vec<&str> = all_kinds().iter().map(|(k, _)| *k).collect();
    let kinds: Vec<&str> = policies::indicator::AggregateKind::ALL
        .iter()
        .map(|k| k.name())
        .collect();
    assert_eq!(fixtures, kinds);
}
