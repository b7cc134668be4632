//! Stroom's end-to-end tests, one binary (one link instead of one per file): real processes,
//! real HTTPS with mutual TLS, a real browser. Each module is one area; `support` starts the
//! processes and talks to them.

mod support;

mod audit;
mod before_the_spend;
mod bench_cli;
mod coordinator_api;
mod coordinator_restart;
mod coordinator_tls;
mod coordinator_tokens;
mod dashboard_browser;
mod demo;
mod deploy_configs;
mod governance;
mod monitor_indicators;
mod node_api;
mod node_crash;
mod node_startup;
mod node_tls;
mod policy_check;
mod postgres;
mod provisioning;
mod publication_round;
mod report_lifecycle;
mod researcher_cli;
mod secure_aggregation;
