//! Secure aggregation, shared by node, coordinator and helper (below all three): Prio3 sharding
//! and verification ([`vdaf`]), the helper's sealed input share ([`seal`]), a node's signed report
//! ([`report`]), the leader–helper messages ([`api`]), the noise each node adds ([`accounting`])
//! and per-report work over the machine's cores ([`parallel`]).

pub mod accounting;
pub mod api;
pub mod floors;
pub mod parallel;
pub mod report;
pub mod seal;
pub mod vdaf;

/// The discrete Gaussian share's name in answers.
pub const MECHANISM: &str = "distributed_discrete_gaussian";
