//! Plumbing every Stroom service shares (node, coordinator, helper): the clock, the configuration loader,
//! the TLS setup, the HTTP metrics layer and how SQLite stores are opened and versioned.

pub mod clock;
pub mod config;
pub mod http;
pub mod sqlite;
pub mod tls;
