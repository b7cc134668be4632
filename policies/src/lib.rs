//! The contract shared by node and coordinator: the data model, the indicator catalog and its
//! validation, the SQL contract, sensitivity and privacy arithmetic, and wire types.

pub mod audit;
pub mod catalog;
pub mod cdm;
pub mod contract;
pub mod governance;
pub mod indicator;
pub mod ops;
pub mod period;
pub mod problem;
pub mod sensitivity;
pub mod stability;
pub mod totality;
pub mod wire;

pub use catalog::{Catalog, CatalogError};
pub use indicator::{Aggregate, Body, Cost, Derived, Domain, GroupKey, Indicator, Query};
pub use period::{Period, Quarter, TimeGrain};
pub use problem::{Problem, Problems};
