//! The coordinator: fans approved runs out to the nodes over mutual TLS and combines their
//! differentially private answers into national indicators with 95% intervals.

// A refusal is an HTTP response; boxing it buys nothing.
#![allow(clippy::result_large_err)]

pub mod api_error;
pub mod budget_plan;
pub mod combine;
pub mod config;
pub mod dashboard;
pub mod helper_client;
pub mod national;
pub mod node_client;
pub mod openapi;
pub mod proposals;
pub mod publish;
pub mod reference;
pub mod release;
pub mod rounds;
pub mod runs;
pub mod sandbox;
pub mod secure;
pub mod server;
pub mod store;
