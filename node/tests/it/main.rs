//! The node crate's integration tests, one binary: noise calibration, public groups and
//! sensitivity of every aggregate kind, and the totality check against edge values.

mod common;

mod noise_calibration;
mod public_groups;
mod sensitivity;
mod totality_fuzz;
