//! A provider node: DataFusion over the provider's own records, answering approved indicators only
//! as differentially private aggregates, within its own durable privacy budget.

// Errors are rare and carry the operator's context (file, table, column); boxing buys nothing.
#![allow(clippy::result_large_err)]

pub mod cell_index;
pub mod clock;
pub mod config;
pub mod contributions;
pub mod evaluate;
pub mod governance;
pub mod ledger;
pub mod metrics;
pub mod noise;
pub mod postgres;
pub mod rank;
pub mod release;
pub mod secure;
pub mod server;
pub mod tables;
pub mod tls;

use crate::clock::{Clock, SystemClock};
use crate::config::NodeConfig;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::tables::Tables;
use policies::Catalog;
use policies::wire::{BudgetStatus, PeriodBudget};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("catalog {dir}: {source}")]
    Catalog {
        dir: std::path::PathBuf,
        source: policies::CatalogError,
    },
    #[error(transparent)]
    Data(#[from] tables::DataError),
    #[error("indicator '{id}' cannot run on this node's tables: {source}")]
    Indicator {
        id: String,
        source: policies::contract::ContractError,
    },
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    #[error(transparent)]
    Audit(#[from] policies::audit::AuditError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Secure(#[from] secure::KeyError),
    #[error("server: {0}")]
    Server(String),
}

pub struct Node {
    pub config: NodeConfig,
    pub catalog: Catalog,
    pub data: DataSource,
    pub ledger: Mutex<Ledger>,
    pub audit: policies::audit::AuditLog,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    /// The helper's key and this node's signing key, when secure aggregation is configured.
    pub secure: Option<secure::SecureKeys>,
    /// The verified part of the newest signed catalog fetched from the coordinator. The async lock
    /// makes concurrent requests for a new indicator share one fetch.
    pub fetched: tokio::sync::Mutex<governance::Fetched>,
    /// The ledger's secret key for snapshot identities (see [`Node::snapshot_id`]).
    snapshot_key: ring::hmac::Key,
    key_locks: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Where a node's records come from.
pub enum DataSource {
    /// Parquet or CSV files, read and digested once at start.
    Files(Arc<Tables>),
    /// The provider's PostgreSQL, read for each release in one read-only transaction.
    Postgres(postgres::PostgresSource),
}

impl DataSource {
    pub async fn open(cfg: &config::DataConfig) -> Result<DataSource, tables::DataError> {
        match (cfg.source, &cfg.postgres) {
            (config::SourceKind::Postgres, Some(pg)) => Ok(DataSource::Postgres(
                postgres::PostgresSource::connect(pg, &cfg.tables).await?,
            )),
            (config::SourceKind::Postgres, None) => Err(tables::DataError::Secret {
                from: "[data.postgres]".into(),
                message: "is missing: data.source = \"postgres\" needs it".into(),
            }),
            (config::SourceKind::Files, _) => Ok(DataSource::Files(Arc::new(
                Tables::open(&cfg.dir, &cfg.tables).await?,
            ))),
        }
    }

    /// The tables one release reads, with the snapshot identity of exactly their rows.
    pub async fn tables(&self) -> Result<Arc<Tables>, tables::DataError> {
        match self {
            DataSource::Files(t) => Ok(t.clone()),
            DataSource::Postgres(pg) => Ok(Arc::new(pg.read().await?)),
        }
    }
}

impl Node {
    /// The tables one release reads (see [`DataSource::tables`]).
    pub async fn tables(&self) -> Result<Arc<Tables>, tables::DataError> {
        self.data.tables().await
    }

    /// Load catalog and data, validate both, open the ledger. Serves nothing yet.
    pub async fn open(config: NodeConfig) -> Result<Node, NodeError> {
        Self::open_with_clock(config, Arc::new(SystemClock)).await
    }

    pub async fn open_with_clock(
        config: NodeConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Node, NodeError> {
        let clock: Arc<dyn Clock> = match config.testing.clock_offset_secs {
            Some(secs) => Arc::new(service::clock::OffsetClock {
                inner: clock,
                offset: chrono::TimeDelta::seconds(secs),
            }),
            None => clock,
        };
        let catalog =
            Catalog::load(&config.catalog_dir)
                .await
                .map_err(|source| NodeError::Catalog {
                    dir: config.catalog_dir.clone(),
                    source,
                })?;
        let data = DataSource::open(&config.data).await?;
        // Every approved query must also plan against this node's actual tables.
        let tables = data.tables().await?;
        let ctx = tables.session(&config.data.coverage)?;
        for ind in catalog.indicators.values() {
            if let Some(q) = ind.query() {
                policies::contract::plan(&ctx, q)
                    .await
                    .map_err(|source| NodeError::Indicator {
                        id: ind.id.clone(),
                        source,
                    })?;
            }
        }
        let secure = secure::SecureKeys::load(&config.secure)?;
        let ledger = Ledger::open(&config.ledger.path)?;
        let snapshot_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &ledger.snapshot_key()?);
        // A log that fails verification stops the node: its history must be looked at first.
        let audit = policies::audit::AuditLog::open(&config.audit.path)?;
        Ok(Node {
            config,
            catalog,
            data,
            ledger: Mutex::new(ledger),
            audit,
            metrics: Metrics::default(),
            clock,
            secure,
            fetched: tokio::sync::Mutex::new(governance::Fetched::default()),
            snapshot_key,
            key_locks: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The identity of a data snapshot as it leaves the node: HMAC-SHA256 of the records' digest
    /// under the node's secret key. Equal records give the same identity (a request replays),
    /// one changed row gives another, and without the key nobody can compute it from a guess
    /// about the records, as anyone could from the plain digest.
    pub fn snapshot_id(&self, records_digest: &str) -> String {
        let tag = ring::hmac::sign(&self.snapshot_key, records_digest.as_bytes());
        format!("hmac-sha256:{}", hex::encode(tag.as_ref()))
    }

    async fn key_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.key_locks.lock().await;
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone()
    }

    /// How this node's budget is kept (see `ledger`: charged to the data's periods).
    pub fn budget_rule(&self) -> ledger::BudgetRule {
        ledger::BudgetRule {
            granularity: self.config.budget.period,
            rho_per_period: self.config.budget.rho_per_period,
            lifetime_rho: self.config.budget.lifetime_rho,
        }
    }

    /// Spend per data period, the lifetime total, and as a summary the data period nearest its
    /// budget.
    pub fn budget(&self) -> Result<BudgetStatus, ledger::LedgerError> {
        let rule = self.budget_rule();
        let (periods, (total_nano, releases)) = {
            let l = self.ledger.lock().map_err(|_| ledger::LedgerError::Sql {
                path: self.config.ledger.path.clone(),
                source: rusqlite::Error::InvalidQuery,
            })?;
            (l.spend_by_period(rule.granularity)?, l.total()?)
        };
        let delta = self.config.budget.delta;
        let budget = rule.rho_per_period;
        let epsilon = |rho: f64| {
            if rho > 0.0 {
                policies::sensitivity::zcdp_to_epsilon(rho, delta)
            } else {
                0.0
            }
        };
        let periods: Vec<PeriodBudget> = periods
            .into_iter()
            .map(|p| {
                let spent = ledger::from_nano(p.rho_nano);
                PeriodBudget {
                    period: p.period,
                    rho_spent: spent,
                    rho_remaining: (budget - spent).max(0.0),
                    releases: p.releases,
                    epsilon_spent: epsilon(spent),
                }
            })
            .collect();
        let tightest = periods
            .iter()
            .max_by(|a, b| a.rho_spent.total_cmp(&b.rho_spent))
            .cloned();
        let total = ledger::from_nano(total_nano);
        Ok(BudgetStatus {
            node_id: self.config.node_id.clone(),
            budget_period: tightest
                .as_ref()
                .map(|p| p.period.clone())
                .unwrap_or_else(|| "none spent".into()),
            granularity: rule.granularity.name().to_string(),
            rho_budget: budget,
            rho_spent: tightest.as_ref().map_or(0.0, |p| p.rho_spent),
            rho_remaining: tightest.as_ref().map_or(budget, |p| p.rho_remaining),
            releases,
            delta,
            epsilon_spent: tightest.as_ref().map_or(0.0, |p| p.epsilon_spent),
            periods,
            rho_spent_total: total,
            lifetime_rho: rule.lifetime_rho,
        })
    }
}

impl AsRef<policies::ops::HttpMetrics> for Node {
    fn as_ref(&self) -> &policies::ops::HttpMetrics {
        &self.metrics.http
    }
}
