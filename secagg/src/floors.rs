//! Floors each party holds a secure run to, whatever the coordinator declares. A run of n nodes
//! declaring t missing or cheating is collected over as few as n − t reports, and each node adds
//! 1/(n − t) of the noise. A coordinator that declared t close to n and collected over its own
//! colluding nodes plus one target would expose the target at nearly its own share's ρ; so every
//! node and the helper refuse a run that declares more than a share of its nodes missing, or
//! counts on fewer honest nodes than they require.

/// The largest run a party plans for: noise planning is linear in n, so a declared n is bounded
/// before any planning starts (the federation has tens of providers).
pub const MAX_RUN_NODES: u32 = 10_000;

/// The defaults: t at most a third of n, and at least three honest nodes counted on.
pub const DEFAULT_MAX_MISSING_SHARE: f64 = 1.0 / 3.0;
pub const DEFAULT_MIN_HONEST: u32 = 3;

/// A node's default ceiling on the ρ its share gives alone (both aggregators colluding): ρ 1 per
/// release, ε ≈ 8.4 at δ = 10⁻⁶, still a differentially private release (the catalog's releases
/// are ρ 0.03–0.15 centrally). The coordinator plans entry widths for shares at this ceiling.
pub const DEFAULT_MAX_LOCAL_RHO: f64 = 1.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunFloors {
    /// The fewest honest nodes (n − t) a run may count on.
    pub min_honest: u32,
    /// The largest share of a run's n that may be declared missing or cheating (t ≤ ⌊share·n⌋).
    pub max_missing_share: f64,
}

impl Default for RunFloors {
    fn default() -> Self {
        RunFloors {
            min_honest: DEFAULT_MIN_HONEST,
            max_missing_share: DEFAULT_MAX_MISSING_SHARE,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FloorError {
    #[error(
        "a secure run of n = {nodes} nodes with t = {max_missing} is not possible: it needs 1 ≤ n ≤ {MAX_RUN_NODES} and t < n"
    )]
    Impossible { nodes: u32, max_missing: u32 },
    #[error(
        "a secure run of n = {nodes} declaring t = {max_missing} missing or cheating exceeds this party's ceiling of {ceiling} ({share:.3} of n)"
    )]
    TooManyMissing {
        nodes: u32,
        max_missing: u32,
        ceiling: u32,
        share: f64,
    },
    #[error(
        "a secure run of n = {nodes} with t = {max_missing} counts on {honest} honest node(s); this party requires at least {floor}"
    )]
    TooFewHonest {
        nodes: u32,
        max_missing: u32,
        honest: u32,
        floor: u32,
    },
}

impl RunFloors {
    /// The most nodes of an n-node run this party accepts as missing or cheating.
    pub fn ceiling(&self, nodes: u32) -> u32 {
        // A tiny epsilon so that a third of 3 is 1, not 0.9999….
        ((self.max_missing_share * nodes as f64) + 1e-9).floor() as u32
    }

    /// Refuses a declared (n, t) this party cannot stand behind; checked before any planning.
    pub fn check(&self, nodes: u32, max_missing: u32) -> Result<(), FloorError> {
        if nodes == 0 || nodes > MAX_RUN_NODES || max_missing >= nodes {
            return Err(FloorError::Impossible { nodes, max_missing });
        }
        let ceiling = self.ceiling(nodes);
        if max_missing > ceiling {
            return Err(FloorError::TooManyMissing {
                nodes,
                max_missing,
                ceiling,
                share: self.max_missing_share,
            });
        }
        let honest = nodes - max_missing;
        if honest < self.min_honest {
            return Err(FloorError::TooFewHonest {
                nodes,
                max_missing,
                honest,
                floor: self.min_honest,
            });
        }
        Ok(())
    }

    /// Checks the floors' own values (configuration).
    pub fn validate(&self) -> Result<(), String> {
        if self.min_honest == 0 {
            return Err("min_honest must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.max_missing_share) {
            return Err(format!(
                "max_missing_share must lie in [0, 1), found {}",
                self.max_missing_share
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_refuse_runs_a_coordinator_could_isolate_a_node_in() {
        let f = RunFloors::default();
        assert_eq!(f.check(11, 2), Ok(()));
        assert_eq!(
            f.check(3, 1),
            Err(FloorError::TooFewHonest {
                nodes: 3,
                max_missing: 1,
                honest: 2,
                floor: 3
            })
        );
        assert_eq!(f.check(4, 1), Ok(()));
        // t = n − 2 with a colluding node: refused by the ceiling, whatever n is.
        assert!(matches!(
            f.check(12, 10),
            Err(FloorError::TooManyMissing { ceiling: 4, .. })
        ));
        assert!(matches!(
            f.check(12, 5),
            Err(FloorError::TooManyMissing { .. })
        ));
        assert_eq!(f.check(12, 4), Ok(()));
        assert!(matches!(
            f.check(u32::MAX, 1),
            Err(FloorError::Impossible { .. })
        ));
        assert!(matches!(
            f.check(MAX_RUN_NODES + 1, 1),
            Err(FloorError::Impossible { .. })
        ));
        assert!(matches!(f.check(5, 5), Err(FloorError::Impossible { .. })));
        assert!(matches!(f.check(0, 0), Err(FloorError::Impossible { .. })));
        assert_eq!(f.ceiling(3), 1);
        assert_eq!(f.ceiling(2), 0);
    }

    #[test]
    fn floors_outside_their_range_are_refused() {
        assert!(
            RunFloors {
                min_honest: 0,
                ..RunFloors::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            RunFloors {
                max_missing_share: 1.0,
                ..RunFloors::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            RunFloors {
                max_missing_share: -0.1,
                ..RunFloors::default()
            }
            .validate()
            .is_err()
        );
        assert!(RunFloors::default().validate().is_ok());
    }
}
