//! The coordinator: fans approved runs out to the nodes over mutual TLS and combines their
//! differentially private answers into national indicators with 95% intervals.

pub mod combine;
pub mod node_client;
