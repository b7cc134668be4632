//! Plumbing every Stroom service shares (node, coordinator, helper): the configuration loader and
//! the TLS setup.

pub mod config;
pub mod tls;
