//! `stroom_cell(key…[, value])`: the position of a row's group key in the public key set (the
//! cartesian product of the group domains, histogram bin last), or NULL when any part of the key
//! lies outside its public domain. Later stages group on this one integer instead of several
//! strings, and the answer is read straight into the key set's order.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, StringViewArray};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use std::collections::HashMap;
use std::sync::Arc;

/// Position of a value in one public domain. Domains of a few values (quarters, roles) are
/// scanned, which beats hashing each row's string; larger ones use a map.
#[derive(Debug, Clone)]
enum Lookup {
    Scan(Vec<String>),
    Map(HashMap<String, i64>),
}

const SCAN_LIMIT: usize = 16;

impl Lookup {
    fn new(domain: &[String]) -> Self {
        if domain.len() <= SCAN_LIMIT {
            Lookup::Scan(domain.to_vec())
        } else {
            Lookup::Map(
                domain
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (v.clone(), i as i64))
                    .collect(),
            )
        }
    }

    fn get(&self, value: &str) -> Option<i64> {
        match self {
            Lookup::Scan(values) => values.iter().position(|v| v == value).map(|i| i as i64),
            Lookup::Map(map) => map.get(value).copied(),
        }
    }
}

/// How a row's key maps to a cell: one lookup per keyed group, then the histogram bin if any.
#[derive(Debug, Clone)]
pub struct CellLayout {
    /// Value → position, per keyed group column, in answer order.
    lookups: Vec<Lookup>,
    /// Histogram bin edges; the bin is the last (fastest-varying) part of the key.
    edges: Option<Vec<i64>>,
    strides: Vec<i64>,
}

impl CellLayout {
    /// `domains` are the keyed group columns' domains; `edges` the histogram's bin edges.
    pub fn new(domains: &[Vec<String>], edges: Option<&[i64]>) -> Self {
        let mut sizes: Vec<i64> = domains.iter().map(|d| d.len() as i64).collect();
        if let Some(e) = edges {
            sizes.push(e.len() as i64);
        }
        let mut strides = vec![1i64; sizes.len()];
        for i in (0..sizes.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * sizes[i + 1];
        }
        CellLayout {
            lookups: domains.iter().map(|d| Lookup::new(d)).collect(),
            edges: edges.map(<[i64]>::to_vec),
            strides,
        }
    }

    /// The histogram bin of a value: values below the second edge fall in the first bin, values
    /// at or above the last edge in the last (open-ended) bin.
    pub fn bin(edges: &[i64], value: i64) -> i64 {
        let above = edges
            .get(1..)
            .unwrap_or(&[])
            .partition_point(|e| *e <= value);
        above.min(edges.len().saturating_sub(1)) as i64
    }

    fn cell(
        &self,
        keys: &[&StringViewArray],
        value: Option<&Int64Array>,
        row: usize,
    ) -> Option<i64> {
        let mut cell = 0i64;
        for (i, (column, lookup)) in keys.iter().zip(&self.lookups).enumerate() {
            if column.is_null(row) {
                return None;
            }
            cell += lookup.get(column.value(row))? * self.strides[i];
        }
        if let (Some(edges), Some(values)) = (&self.edges, value) {
            if values.is_null(row) {
                return None;
            }
            cell += Self::bin(edges, values.value(row));
        }
        Some(cell)
    }

    fn evaluate(&self, args: &[ColumnarValue]) -> Result<ColumnarValue> {
        let arrays: Vec<ArrayRef> = ColumnarValue::values_to_arrays(args)?;
        let keyed = self.lookups.len();
        let keys: Vec<&StringViewArray> = arrays[..keyed.min(arrays.len())]
            .iter()
            .map(|a| {
                a.as_string_view_opt().ok_or_else(|| {
                    DataFusionError::Internal("stroom_cell keys must be Utf8View".into())
                })
            })
            .collect::<Result<_>>()?;
        if keys.len() != keyed {
            return Err(DataFusionError::Internal(
                "stroom_cell: too few arguments".into(),
            ));
        }
        let value = match &self.edges {
            Some(_) => Some(
                arrays
                    .get(keyed)
                    .and_then(|a| a.as_primitive_opt::<Int64Type>())
                    .ok_or_else(|| {
                        DataFusionError::Internal(
                            "stroom_cell: histogram value must be Int64".into(),
                        )
                    })?,
            ),
            None => None,
        };
        let rows = arrays.first().map(|a| a.len()).unwrap_or(0);
        let out: Int64Array = (0..rows).map(|r| self.cell(&keys, value, r)).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }

    pub fn udf(self) -> ScalarUDF {
        let mut inputs = vec![DataType::Utf8View; self.lookups.len()];
        if self.edges.is_some() {
            inputs.push(DataType::Int64);
        }
        let layout = Arc::new(self);
        create_udf(
            "stroom_cell",
            inputs,
            DataType::Int64,
            Volatility::Immutable,
            Arc::new(move |args: &[ColumnarValue]| layout.evaluate(args)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_domains_look_up_alike() {
        let small: Vec<String> = (0..SCAN_LIMIT).map(|i| format!("v{i}")).collect();
        let large: Vec<String> = (0..SCAN_LIMIT * 4).map(|i| format!("v{i}")).collect();
        for domain in [small, large] {
            let lookup = Lookup::new(&domain);
            for (i, v) in domain.iter().enumerate() {
                assert_eq!(lookup.get(v), Some(i as i64));
            }
            assert_eq!(lookup.get("outside"), None);
        }
    }

    #[test]
    fn bins_follow_the_edges() {
        let edges = [0, 30, 60, 720];
        let bins: Vec<i64> = [-5, 0, 29, 30, 59, 60, 719, 720, 10_000]
            .iter()
            .map(|v| CellLayout::bin(&edges, *v))
            .collect();
        assert_eq!(bins, vec![0, 0, 0, 1, 1, 2, 2, 3, 3]);
    }

    #[test]
    fn cells_are_row_major_with_the_bin_last_and_null_outside_the_domain() {
        let layout = CellLayout::new(
            &[
                vec!["2024Q1".into(), "2024Q2".into()],
                vec!["a".into(), "b".into(), "c".into()],
            ],
            Some(&[0, 10]),
        );
        let q = StringViewArray::from(vec![Some("2024Q2"), Some("2024Q1"), Some("2023Q4"), None]);
        let code = StringViewArray::from(vec!["c", "a", "a", "a"]);
        let v = Int64Array::from(vec![Some(15), Some(3), Some(3), Some(3)]);
        let got: Vec<Option<i64>> = (0..4)
            .map(|r| layout.cell(&[&q, &code], Some(&v), r))
            .collect();
        // (1 * 3 + 2) * 2 + 1 = 11; (0 * 3 + 0) * 2 + 0 = 0.
        assert_eq!(got, vec![Some(11), Some(0), None, None]);
    }
}
