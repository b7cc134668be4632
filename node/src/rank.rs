//! A fixed ranking of a unit's cells. Ordering a unit's cells by it picks which cells the unit
//! keeps when it touches more than it may: a choice that depends only on that unit's own rows and
//! is spread evenly over the cells, so it favours neither early quarters nor low codes.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a of the unit's identifier.
pub fn unit_hash(unit: &str) -> u64 {
    unit.as_bytes()
        .iter()
        .fold(FNV_OFFSET, |h, b| (h ^ *b as u64).wrapping_mul(FNV_PRIME))
}

/// The rank of one cell for one unit (splitmix64 of the pair, so neighbouring cells spread over
/// the whole range).
pub fn cell_rank(unit_hash: u64, cell: i64) -> u64 {
    let mut h = unit_hash ^ (cell as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_spread_each_cell_evenly_over_units() {
        // Over many units, each of 8 cells should be a unit's lowest-ranked cell about 1/8 of
        // the time; a biased rank would favour some cells (e.g. early quarters).
        let mut first = [0u32; 8];
        for u in 0..80_000 {
            let h = unit_hash(&format!("youth-{u}"));
            let best = (0..8).min_by_key(|c| cell_rank(h, *c)).unwrap_or(0);
            first[best as usize] += 1;
        }
        // Binomial(80000, 1/8): sd ≈ 94; 6 sd ≈ 560.
        for n in first {
            assert!((n as i64 - 10_000).abs() < 560, "{first:?}");
        }
    }
}
