//! `stroom_unit_contributions(unit, cell, value)`: an aggregate, grouped by privacy unit, that turns
//! one unit's rows into its bounded contribution per cell and returns them as a list of
//! `{cell, contribution}`.
//!
//! Per-unit bounding is one hash aggregate over the rows, the least work any user-level DP
//! aggregate needs, instead of an aggregate by (unit, cell) followed by a window over all of them:
//! per unit it counts rows and sums values per cell, clamps each cell's contribution, and keeps at
//! most `k` cells, those of lowest [`cell_rank`]. Everything depends on that unit's rows only,
//! whatever order rows arrive and partial states merge in.

use crate::rank::{cell_rank, unit_hash};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray, StringViewArray, StructArray,
    UInt64Array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, Int64Type, UInt64Type};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};
use datafusion::scalar::ScalarValue;
use smallvec::SmallVec;
use std::sync::Arc;

pub const CELL_FIELD: &str = "cell";
pub const CONTRIBUTION_FIELD: &str = "contribution";

/// What one unit contributes to one cell, from its row count and value sum there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Contribution {
    /// 1 for every cell the unit touches.
    Presence,
    /// The number of rows, clamped to `[0, max]` when `max` is set.
    Rows { max: Option<i64> },
    /// The sum of values, clamped to `[lower, upper]` when bounds are set.
    Sum { bounds: Option<(i64, i64)> },
}

impl Contribution {
    fn of(&self, rows: i64, sum: i64) -> i64 {
        match *self {
            Contribution::Presence => 1,
            Contribution::Rows { max } => max.map_or(rows, |m| rows.clamp(0, m)),
            Contribution::Sum { bounds } => bounds.map_or(sum, |(lo, hi)| sum.clamp(lo, hi)),
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct UnitContributions {
    contribution: Contribution,
    /// At most this many cells per unit; `None` keeps all.
    max_cells: Option<usize>,
    signature: Signature,
}

/// The aggregate for one contribution rule and cell bound.
pub fn unit_contributions_udaf(
    contribution: Contribution,
    max_cells: Option<usize>,
) -> AggregateUDF {
    AggregateUDF::from(UnitContributions {
        contribution,
        max_cells,
        signature: Signature::exact(
            vec![DataType::Utf8View, DataType::Int64, DataType::Int64],
            Volatility::Immutable,
        ),
    })
}

fn kept_fields() -> Fields {
    Fields::from(vec![
        Field::new(CELL_FIELD, DataType::Int64, false),
        Field::new(CONTRIBUTION_FIELD, DataType::Int64, false),
    ])
}

fn kept_item() -> FieldRef {
    Arc::new(Field::new_list_field(
        DataType::Struct(kept_fields()),
        false,
    ))
}

fn int64_item() -> FieldRef {
    Arc::new(Field::new_list_field(DataType::Int64, false))
}

impl AggregateUDFImpl for UnitContributions {
    fn name(&self) -> &str {
        "stroom_unit_contributions"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(kept_item()))
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SingleUnit(self.groups())))
    }

    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let list = DataType::List(int64_item());
        Ok(vec![
            Arc::new(Field::new("unit_hash", DataType::UInt64, true)),
            Arc::new(Field::new("cells", list.clone(), true)),
            Arc::new(Field::new("rows", list.clone(), true)),
            Arc::new(Field::new("sums", list, true)),
        ])
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(self.groups()))
    }
}

impl UnitContributions {
    fn groups(&self) -> UnitGroups {
        UnitGroups {
            contribution: self.contribution,
            max_cells: self.max_cells,
            units: Vec::new(),
            cells_held: 0,
        }
    }
}

/// One cell of one unit, before bounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CellTotal {
    cell: i64,
    rows: i64,
    sum: i64,
}

#[derive(Debug, Clone, Default)]
struct UnitState {
    /// Set from the first row seen; every row of a group carries the same unit.
    hash: Option<u64>,
    /// Usually a handful of cells, so a small inline vector beats a map and an allocation.
    cells: SmallVec<[CellTotal; 2]>,
}

impl UnitState {
    /// Adds to the cell's totals; true when the cell is new for this unit.
    fn add(&mut self, cell: i64, rows: i64, sum: i64) -> bool {
        match self.cells.iter_mut().find(|c| c.cell == cell) {
            Some(c) => {
                c.rows = c.rows.saturating_add(rows);
                c.sum = c.sum.saturating_add(sum);
                false
            }
            None => {
                self.cells.push(CellTotal { cell, rows, sum });
                true
            }
        }
    }
}

#[derive(Debug)]
pub struct UnitGroups {
    contribution: Contribution,
    max_cells: Option<usize>,
    units: Vec<UnitState>,
    /// Cells held over all units, so that `size` stays O(1) as DataFusion asks.
    cells_held: usize,
}

fn typed<'a, T: 'static>(
    values: &'a [ArrayRef],
    i: usize,
    cast: impl Fn(&'a ArrayRef) -> Option<&'a T>,
) -> Result<&'a T> {
    values.get(i).and_then(cast).ok_or_else(|| {
        DataFusionError::Internal(format!(
            "stroom_unit_contributions: argument {i} has the wrong type"
        ))
    })
}

impl UnitGroups {
    fn ensure(&mut self, total_groups: usize) {
        if self.units.len() < total_groups {
            self.units.resize_with(total_groups, UnitState::default);
        }
    }

    /// The unit's kept cells and their bounded contributions, appended to `cells` and
    /// `contributions`; returns how many.
    fn bounded_into(
        &self,
        unit: &mut UnitState,
        cells: &mut Vec<i64>,
        contributions: &mut Vec<i64>,
    ) -> usize {
        let held = &mut unit.cells;
        if let Some(k) = self.max_cells.filter(|k| held.len() > *k) {
            let hash = unit.hash.unwrap_or(0);
            held.sort_unstable_by_key(|c| (cell_rank(hash, c.cell), c.cell));
            held.truncate(k);
        }
        for c in held.iter() {
            cells.push(c.cell);
            contributions.push(self.contribution.of(c.rows, c.sum));
        }
        held.len()
    }

    /// The unit's kept cells and their bounded contributions.
    #[cfg(test)]
    fn bounded(&self, unit: &UnitState) -> Vec<(i64, i64)> {
        let (mut cells, mut contributions) = (Vec::new(), Vec::new());
        self.bounded_into(&mut unit.clone(), &mut cells, &mut contributions);
        cells.into_iter().zip(contributions).collect()
    }

    fn kept_list(&self, mut units: Vec<UnitState>) -> Result<ArrayRef> {
        let mut cells = Vec::with_capacity(units.len());
        let mut contributions = Vec::with_capacity(units.len());
        let lengths: Vec<usize> = units
            .iter_mut()
            .map(|u| self.bounded_into(u, &mut cells, &mut contributions))
            .collect();
        let structs = StructArray::try_new(
            kept_fields(),
            vec![
                Arc::new(Int64Array::from(cells)),
                Arc::new(Int64Array::from(contributions)),
            ],
            None,
        )?;
        Ok(Arc::new(ListArray::try_new(
            kept_item(),
            OffsetBuffer::from_lengths(lengths),
            Arc::new(structs),
            None,
        )?))
    }

    fn take(&mut self, emit_to: EmitTo) -> Vec<UnitState> {
        let taken = emit_to.take_needed(&mut self.units);
        let cells: usize = taken.iter().map(|u| u.cells.len()).sum();
        self.cells_held = self.cells_held.saturating_sub(cells);
        taken
    }

    fn add(&mut self, group: usize, cell: i64, rows: i64, sum: i64) {
        if self.units[group].add(cell, rows, sum) {
            self.cells_held += 1;
        }
    }
}

fn state_arrays(units: &[UnitState]) -> Vec<ArrayRef> {
    let offsets = || OffsetBuffer::from_lengths(units.iter().map(|u| u.cells.len()));
    let list = |pick: fn(&CellTotal) -> i64| -> ArrayRef {
        let values: Int64Array = units.iter().flat_map(|u| &u.cells).map(pick).collect();
        Arc::new(ListArray::new(
            int64_item(),
            offsets(),
            Arc::new(values),
            None,
        ))
    };
    let hashes: UInt64Array = units.iter().map(|u| u.hash).collect();
    vec![
        Arc::new(hashes),
        list(|c| c.cell),
        list(|c| c.rows),
        list(|c| c.sum),
    ]
}

struct Rows<'a> {
    units: &'a StringViewArray,
    cells: &'a Int64Array,
    values: &'a Int64Array,
}

impl<'a> Rows<'a> {
    fn of(values: &'a [ArrayRef]) -> Result<Self> {
        Ok(Rows {
            units: typed(values, 0, |a| a.as_string_view_opt())?,
            cells: typed(values, 1, |a| a.as_primitive_opt::<Int64Type>())?,
            values: typed(values, 2, |a| a.as_primitive_opt::<Int64Type>())?,
        })
    }

    /// Rows without a unit, cell or value take no part (filtered out upstream as well).
    fn usable(&self, row: usize, filter: Option<&BooleanArray>) -> bool {
        !(filter.is_some_and(|f| !f.is_valid(row) || !f.value(row))
            || self.units.is_null(row)
            || self.cells.is_null(row)
            || self.values.is_null(row))
    }
}

impl GroupsAccumulator for UnitGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.ensure(total_num_groups);
        let rows = Rows::of(values)?;
        for (row, &group) in group_indices.iter().enumerate() {
            if !rows.usable(row, opt_filter) {
                continue;
            }
            let unit = &mut self.units[group];
            if unit.hash.is_none() {
                unit.hash = Some(unit_hash(rows.units.value(row)));
            }
            self.add(group, rows.cells.value(row), 1, rows.values.value(row));
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let units = self.take(emit_to);
        self.kept_list(units)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(state_arrays(&self.take(emit_to)))
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.ensure(total_num_groups);
        let hashes = typed(values, 0, |a| a.as_primitive_opt::<UInt64Type>())?;
        let cells = typed(values, 1, |a| a.as_list_opt::<i32>())?;
        let rows = typed(values, 2, |a| a.as_list_opt::<i32>())?;
        let sums = typed(values, 3, |a| a.as_list_opt::<i32>())?;
        for (row, &group) in group_indices.iter().enumerate() {
            if hashes.is_null(row) {
                continue;
            }
            self.units[group].hash.get_or_insert(hashes.value(row));
            let (c, n, s) = (cells.value(row), rows.value(row), sums.value(row));
            let (c, n, s) = (
                c.as_primitive::<Int64Type>(),
                n.as_primitive::<Int64Type>(),
                s.as_primitive::<Int64Type>(),
            );
            if c.len() != n.len() || c.len() != s.len() {
                return Err(DataFusionError::Internal(
                    "stroom_unit_contributions: state lists differ in length".into(),
                ));
            }
            for i in 0..c.len() {
                self.add(group, c.value(i), n.value(i), s.value(i));
            }
        }
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        // One state per row, built column-wise: no per-row allocation.
        let rows = Rows::of(values)?;
        let n = rows.units.len();
        let usable: Vec<bool> = (0..n).map(|r| rows.usable(r, opt_filter)).collect();
        let hashes: UInt64Array = (0..n)
            .map(|r| usable[r].then(|| unit_hash(rows.units.value(r))))
            .collect();
        let offsets = OffsetBuffer::from_lengths(usable.iter().map(|u| usize::from(*u)));
        let list = |pick: &dyn Fn(usize) -> i64| -> ArrayRef {
            let values: Int64Array = (0..n).filter(|r| usable[*r]).map(pick).collect();
            Arc::new(ListArray::new(
                int64_item(),
                offsets.clone(),
                Arc::new(values),
                None,
            ))
        };
        Ok(vec![
            Arc::new(hashes),
            list(&|r| rows.cells.value(r)),
            list(&|_| 1),
            list(&|r| rows.values.value(r)),
        ])
    }

    fn size(&self) -> usize {
        self.units.capacity() * std::mem::size_of::<UnitState>()
            + self.cells_held * std::mem::size_of::<CellTotal>()
    }
}

/// The same logic for a single group, for plans without GROUP BY.
#[derive(Debug)]
struct SingleUnit(UnitGroups);

impl SingleUnit {
    fn unit(&mut self) -> Vec<UnitState> {
        self.0.ensure(1);
        self.0.units[..1].to_vec()
    }
}

impl Accumulator for SingleUnit {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let rows = values.first().map(|a| a.len()).unwrap_or(0);
        self.0.update_batch(values, &vec![0; rows], None, 1)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let units = self.unit();
        ScalarValue::try_from_array(&self.0.kept_list(units)?, 0)
    }

    fn size(&self) -> usize {
        self.0.size()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let units = self.unit();
        state_arrays(&units)
            .iter()
            .map(|a| ScalarValue::try_from_array(a, 0))
            .collect()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let rows = states.first().map(|a| a.len()).unwrap_or(0);
        self.0.merge_batch(states, &vec![0; rows], 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(units: &[&str], cells: &[i64], values: &[i64]) -> Vec<ArrayRef> {
        vec![
            Arc::new(StringViewArray::from(units.to_vec())),
            Arc::new(Int64Array::from(cells.to_vec())),
            Arc::new(Int64Array::from(values.to_vec())),
        ]
    }

    fn groups(contribution: Contribution, max_cells: Option<usize>) -> UnitGroups {
        UnitContributions {
            contribution,
            max_cells,
            signature: Signature::any(3, Volatility::Immutable),
        }
        .groups()
    }

    fn kept(acc: &mut UnitGroups) -> Vec<Vec<(i64, i64)>> {
        let units = acc.take(EmitTo::All);
        units
            .iter()
            .map(|u| {
                let mut v = acc.bounded(u);
                v.sort();
                v
            })
            .collect()
    }

    #[test]
    fn rows_and_sums_are_clamped_per_cell() {
        let mut rows = groups(Contribution::Rows { max: Some(2) }, None);
        let mut sums = groups(
            Contribution::Sum {
                bounds: Some((0, 100)),
            },
            None,
        );
        let a = args(
            &["u", "u", "u", "u", "v"],
            &[1, 1, 1, 2, 1],
            &[80, 80, 80, -5, 7],
        );
        for acc in [&mut rows, &mut sums] {
            acc.update_batch(&a, &[0, 0, 0, 0, 1], None, 2).unwrap();
        }
        assert_eq!(kept(&mut rows), vec![vec![(1, 2), (2, 1)], vec![(1, 1)]]);
        assert_eq!(kept(&mut sums), vec![vec![(1, 100), (2, 0)], vec![(1, 7)]]);
    }

    #[test]
    fn keeps_k_cells_whatever_the_row_order_and_merging() {
        let cells: Vec<i64> = (0..20).collect();
        let units = vec!["youth-7"; 20];
        let ones = vec![1i64; 20];
        let mut one_pass = groups(Contribution::Presence, Some(3));
        one_pass
            .update_batch(&args(&units, &cells, &ones), &[0; 20], None, 1)
            .unwrap();
        let expected = kept(&mut one_pass);
        assert_eq!(expected[0].len(), 3);

        // Reversed rows, split over two partial accumulators, one of them via convert_to_state.
        let rev: Vec<i64> = cells.iter().rev().copied().collect();
        let mut a = groups(Contribution::Presence, Some(3));
        a.update_batch(
            &args(&units[..12], &rev[..12], &ones[..12]),
            &[0; 12],
            None,
            1,
        )
        .unwrap();
        let b_state = a
            .convert_to_state(&args(&units[12..], &rev[12..], &ones[12..]), None)
            .unwrap();
        let mut merged = groups(Contribution::Presence, Some(3));
        merged
            .merge_batch(&a.state(EmitTo::All).unwrap(), &[0], 1)
            .unwrap();
        merged.merge_batch(&b_state, &[0; 8], 1).unwrap();
        assert_eq!(kept(&mut merged), expected);
    }

    #[test]
    fn filtered_and_null_rows_take_no_part() {
        let mut acc = groups(Contribution::Rows { max: None }, None);
        let values: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None, Some(1)]));
        let a = vec![
            Arc::new(StringViewArray::from(vec!["u", "u", "u"])) as ArrayRef,
            Arc::new(Int64Array::from(vec![1, 1, 1])),
            values,
        ];
        let filter = BooleanArray::from(vec![true, true, false]);
        acc.update_batch(&a, &[0, 0, 0], Some(&filter), 1).unwrap();
        assert_eq!(kept(&mut acc), vec![vec![(1, 1)]]);
    }

    #[test]
    fn emit_first_keeps_the_rest() {
        let mut acc = groups(Contribution::Presence, None);
        acc.update_batch(&args(&["u", "v"], &[1, 2], &[0, 0]), &[0, 1], None, 2)
            .unwrap();
        let first = acc.take(EmitTo::First(1));
        assert_eq!(first.len(), 1);
        assert_eq!(kept(&mut acc), vec![vec![(2, 1)]]);
    }
}
