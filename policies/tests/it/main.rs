//! The `policies` crate's integration tests, one binary.

mod stability_differential;
