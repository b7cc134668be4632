//! Secure aggregation, shared by node, coordinator and helper (below all three): Prio3 sharding
//! and verification ([`vdaf`]), the helper's sealed input share ([`seal`]), a node's signed report
//! ([`report`]), the leader–helper messages ([`api`]), the noise each node adds ([`accounting`]),
//! per-report work over the machine's cores ([`parallel`]) and how long a report may be used
//! ([`window`]).

pub mod accounting;
pub mod api;
pub mod floors;
pub mod parallel;
pub mod report;
pub mod seal;
pub mod vdaf;
pub mod window;

/// The discrete Gaussian share's name in answers.
pub const MECHANISM: &str = "distributed_discrete_gaussian";
