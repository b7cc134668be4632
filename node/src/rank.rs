//! `stroom_rank(unit, key…)`: a fixed 64-bit hash of a unit's (unit, group key) pair. Ordering a
//! unit's cells by it picks which cells the unit keeps when it touches more than it may: a choice
//! that depends only on that unit's own rows and is spread evenly over the keys.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use std::sync::Arc;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

pub fn rank_of(parts: &[&str]) -> i64 {
    let mut h = FNV_OFFSET;
    for p in parts {
        for b in p.as_bytes().iter().chain(std::iter::once(&0x1f)) {
            h ^= *b as u64;
            h = h.wrapping_mul(FNV_PRIME);
        }
    }
    // Final avalanche (splitmix64) so that near-identical keys spread over the whole range.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    h as i64
}

fn rank(args: &[ColumnarValue]) -> Result<ColumnarValue> {
    let arrays: Vec<ArrayRef> = ColumnarValue::values_to_arrays(args)?;
    let strings: Vec<_> = arrays
        .iter()
        .map(|a| {
            a.as_string_opt::<i32>()
                .ok_or_else(|| DataFusionError::Internal("stroom_rank takes Utf8 arguments".into()))
        })
        .collect::<Result<_>>()?;
    let rows = arrays.first().map(|a| a.len()).unwrap_or(0);
    let mut parts = Vec::with_capacity(strings.len());
    let out: Int64Array = (0..rows)
        .map(|r| {
            parts.clear();
            for s in &strings {
                parts.push(if s.is_null(r) { "" } else { s.value(r) });
            }
            rank_of(&parts)
        })
        .collect();
    Ok(ColumnarValue::Array(Arc::new(out)))
}

/// The UDF for `arity` Utf8 arguments (the unit and each group key).
pub fn rank_udf_n(arity: usize) -> ScalarUDF {
    create_udf(
        "stroom_rank",
        vec![DataType::Utf8; arity],
        DataType::Int64,
        Volatility::Immutable,
        Arc::new(rank),
    )
}

/// Helper with the call shape used by the evaluator.
pub struct RankUdf;

pub fn rank_udf() -> RankUdf {
    RankUdf
}

impl RankUdf {
    pub fn call(&self, args: Vec<datafusion::prelude::Expr>) -> datafusion::prelude::Expr {
        rank_udf_n(args.len()).call(args)
    }
}
