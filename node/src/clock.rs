//! Time as a dependency, so budget periods can be tested without waiting for a new year (the
//! shared clock of every service).

pub use service::clock::{Clock, FixedClock, ManualClock, SystemClock};
