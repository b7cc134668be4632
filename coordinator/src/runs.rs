//! Runs: a researcher asks for an approved indicator over a period; the coordinator asks every node
//! that serves the indicator's privacy unit, for each base indicator and quarter, concurrently and
//! with bounded retries, stores each answer as it arrives, then combines and publishes.
//!
//! State machine (persisted in the run store): pending → running → done | partial | failed.
//! A coordinator restarted mid-run resumes every pending or running run; answers already stored
//! are reused and the rest asked again — safe, because a node answers a repeated request with its
//! stored release (no new noise, no new spend).

use crate::config::CoordinatorConfig;
use crate::national::{self, BaseResult};
use crate::node_client::{NodeClient, NodeError, TlsMaterial};
use crate::publish::{self, Record};
use crate::store::{NewAnswer, RunStatus, RunStore, StoreError};
use futures::StreamExt;
use policies::audit::{AuditEvent, AuditLog, digest};
use policies::governance::CatalogVersion;
use policies::wire::{Answer, EvaluateRequest, KeyId};
use policies::{Catalog, Indicator, Period};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most node answers stored in one transaction.
const ANSWER_BATCH: usize = 256;

/// A run's node answers, decoded, or why the node failed; keyed by (base, quarter, node).
type Collected = BTreeMap<(String, String, String), Result<Answer, String>>;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("unknown indicator '{0}': it is not in the approved catalog")]
    UnknownIndicator(String),
    #[error("period '{period}': {message}")]
    BadPeriod { period: String, message: String },
    #[error("no configured node serves privacy unit '{0}'")]
    NoNodes(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Audit(#[from] policies::audit::AuditError),
    #[error("catalog: {0}")]
    Catalog(String),
    #[error("secure aggregation: {0}")]
    Secure(String),
    #[error("{0}")]
    NoReference(String),
}

/// The most quarters one run may cover: each quarter is one release per node and base indicator.
pub const MAX_QUARTERS: usize = 16;

pub struct Target {
    pub client: NodeClient,
    pub units: Vec<String>,
    /// Requests in flight to this node (`fanout.per_node` permits).
    pub slots: Arc<tokio::sync::Semaphore>,
}

#[derive(Default)]
pub struct FanoutCounters {
    pub node_requests: AtomicU64,
    pub node_failures: AtomicU64,
    /// Per node: whether the last contact succeeded, and when (Unix seconds).
    pub last_contact: std::sync::Mutex<BTreeMap<String, (bool, i64)>>,
}

pub struct Runner {
    /// The catalog folder plus every indicator approved through governance; replaced whole when
    /// an approval makes a new catalog version.
    catalog: std::sync::RwLock<Arc<Catalog>>,
    base_sources: Vec<(std::path::PathBuf, String)>,
    catalog_version: AtomicU64,
    pub required_approvals: usize,
    /// Synthetic providers that dry runs of proposals are evaluated on; none disables dry runs.
    pub sandbox: Option<Arc<dyn crate::sandbox::Sandbox>>,
    pub store: RunStore,
    pub audit: AuditLog,
    pub targets: Vec<Target>,
    pub quorum: f64,
    pub concurrency: usize,
    pub counters: FanoutCounters,
    /// Leader and collector of secure aggregation, when a helper is configured.
    pub secure: Option<crate::secure::SecureAggregator>,
    pub secure_config: crate::config::SecureConfig,
    /// Each node's budget as it last reported it, for the dashboard; `budgets_stale` is set when
    /// a run finishes (its spend is not in there yet).
    budgets: std::sync::Mutex<BTreeMap<String, policies::wire::BudgetStatus>>,
    budgets_stale: std::sync::atomic::AtomicBool,
    /// Held while a publication round is started (see [`crate::rounds`]).
    pub(crate) round_start: std::sync::Mutex<()>,
    /// Reviewers whose release makes a round public (`publication.required_releases`).
    pub required_releases: usize,
    /// The denominators of per-capita indicators (`reference.population`); set by
    /// [`Runner::load_reference`], none until then.
    pub population: Arc<crate::reference::Population>,
}

impl Runner {
    pub fn new(cfg: &CoordinatorConfig, catalog: Catalog) -> Result<Runner, RunError> {
        let tls = TlsMaterial::load(&crate::node_client::FederationTls {
            ca: cfg.tls.ca.clone(),
            cert: cfg.tls.cert.clone(),
            key: cfg.tls.key.clone(),
        })?;
        let targets = cfg
            .nodes
            .iter()
            .map(|n| {
                Ok(Target {
                    client: NodeClient::new(&n.id, &n.url, &tls, cfg.retry())?,
                    units: n.units.clone(),
                    slots: Arc::new(tokio::sync::Semaphore::new(cfg.fanout.per_node)),
                })
            })
            .collect::<Result<_, NodeError>>()?;
        let secure = match (&cfg.secure.helper_url, &cfg.secure.verify_key) {
            (Some(url), Some(key_file)) => {
                let text = std::fs::read_to_string(key_file)
                    .map_err(|e| RunError::Secure(format!("{}: {e}", key_file.display())))?;
                let verify_key = secagg::vdaf::parse_verify_key(&text)
                    .map_err(|e| RunError::Secure(format!("{}: {e}", key_file.display())))?;
                let helper = crate::helper_client::HelperClient::new(url, &tls, cfg.retry())
                    .map_err(|e| RunError::Secure(e.to_string()))?;
                let window = cfg.secure.window().map_err(RunError::Secure)?;
                Some(crate::secure::SecureAggregator {
                    helper,
                    verify_key,
                    window,
                })
            }
            _ => None,
        };
        let mut base_sources = Vec::new();
        for file in catalog.files.values() {
            let text = std::fs::read_to_string(file)
                .map_err(|e| RunError::Catalog(format!("{}: {e}", file.display())))?;
            base_sources.push((file.clone(), text));
        }
        Ok(Runner {
            catalog: std::sync::RwLock::new(Arc::new(catalog)),
            base_sources,
            catalog_version: AtomicU64::new(0),
            required_approvals: cfg.governance.required_approvals,
            sandbox: None,
            store: RunStore::open(&cfg.store.path)?,
            audit: AuditLog::open(&cfg.audit.path)?,
            targets,
            quorum: cfg.quorum,
            concurrency: cfg.fanout.concurrency,
            counters: FanoutCounters::default(),
            secure,
            secure_config: cfg.secure.clone(),
            budgets: std::sync::Mutex::new(BTreeMap::new()),
            budgets_stale: std::sync::atomic::AtomicBool::new(true),
            round_start: std::sync::Mutex::new(()),
            required_releases: cfg.publication.required_releases,
            population: Arc::new(crate::reference::Population::none()),
        })
    }

    /// Loads the reference population the configuration names, if any.
    pub async fn load_reference(
        &mut self,
        cfg: &CoordinatorConfig,
    ) -> Result<(), crate::reference::ReferenceError> {
        if let Some(file) = &cfg.reference.population {
            self.population = Arc::new(crate::reference::Population::load(file).await?);
        }
        Ok(())
    }

    /// Asks every node for its budget (all at once) and keeps what they say for the dashboard.
    /// Per node, in configuration order: its status, or why it could not be asked.
    pub async fn refresh_budgets(
        &self,
    ) -> Vec<(String, Result<policies::wire::BudgetStatus, String>)> {
        self.budgets_stale.store(false, Ordering::SeqCst);
        let asks = self.targets.iter().map(|t| async move {
            let answer = t.client.budget().await;
            self.record_contact(&t.client.id, answer.is_ok());
            (t.client.id.clone(), answer.map_err(|e| e.to_string()))
        });
        let answers = futures::future::join_all(asks).await;
        if let Ok(mut known) = self.budgets.lock() {
            for (node, answer) in &answers {
                if let Ok(status) = answer {
                    known.insert(node.clone(), status.clone());
                }
            }
        }
        answers
    }

    /// The budgets nodes last reported, refreshed first (waiting at most `wait`) when a run has
    /// finished since: what the public dashboard shows.
    pub async fn known_budgets(
        &self,
        wait: std::time::Duration,
    ) -> BTreeMap<String, policies::wire::BudgetStatus> {
        if self.budgets_stale.load(Ordering::SeqCst) {
            let _ = tokio::time::timeout(wait, self.refresh_budgets()).await;
        }
        self.budgets.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// Notes whether a node answered (any answer, a refusal included, means it was reachable).
    pub fn record_contact(&self, node: &str, reachable: bool) {
        if let Ok(mut m) = self.counters.last_contact.lock() {
            m.insert(
                node.to_string(),
                (reachable, self.store.clock().now().timestamp()),
            );
        }
    }

    /// `stroom_coordinator_node_up` and `…_node_last_contact_seconds` for every configured node.
    pub fn render_node_status(&self) -> String {
        let mut s = String::from(
            "# HELP stroom_coordinator_node_up Whether the node answered the coordinator's last request (1), did not (0), or was not asked yet (absent).\n# TYPE stroom_coordinator_node_up gauge\n",
        );
        let seen = self
            .counters
            .last_contact
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        let mut last = String::from(
            "# HELP stroom_coordinator_node_last_contact_seconds Unix time of the last request to the node.\n# TYPE stroom_coordinator_node_last_contact_seconds gauge\n",
        );
        for t in &self.targets {
            if let Some((up, at)) = seen.get(&t.client.id) {
                s.push_str(&format!(
                    "stroom_coordinator_node_up{{node=\"{}\"}} {}\n",
                    t.client.id,
                    u8::from(*up)
                ));
                last.push_str(&format!(
                    "stroom_coordinator_node_last_contact_seconds{{node=\"{}\"}} {at}\n",
                    t.client.id
                ));
            }
        }
        s + &last
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        match self.catalog.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The newest signed catalog version this coordinator serves (0: none yet).
    pub fn catalog_version(&self) -> u64 {
        self.catalog_version.load(Ordering::SeqCst)
    }

    /// The catalog folder's files, the `approved` catalog version's entries and `extra` sources,
    /// checked as one catalog. The caller reads `approved` from the store, so that a store it
    /// cannot read is an error rather than a catalog silently missing its approved indicators.
    pub async fn catalog_with(
        &self,
        approved: &CatalogVersion,
        extra: &[(std::path::PathBuf, String)],
    ) -> Result<Catalog, policies::CatalogError> {
        let mut sources = self.base_sources.clone();
        for e in &approved.entries {
            sources.push((approved_file(&e.id), e.toml.clone()));
        }
        sources.extend_from_slice(extra);
        Catalog::from_sources(&self.catalog().dir, &sources).await
    }

    /// Rebuilds the catalog from the folder and the newest signed catalog version in the store.
    pub async fn reload_catalog(&self) -> Result<u64, RunError> {
        let latest = self
            .store
            .latest_catalog()
            .map_err(|e| RunError::Catalog(e.to_string()))?;
        let catalog = self
            .catalog_with(&latest, &[])
            .await
            .map_err(|e| RunError::Catalog(e.to_string()))?;
        match self.catalog.write() {
            Ok(mut c) => *c = Arc::new(catalog),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(catalog),
        }
        self.catalog_version.store(latest.version, Ordering::SeqCst);
        Ok(latest.version)
    }

    /// The secure parameters a base indicator runs with: n and t when a helper is configured and
    /// more than one node holds the indicator's unit; None runs it with per-node noise (a single
    /// holder, such as the panel, or no helper configured).
    pub fn secure_request_for(
        &self,
        base: &Indicator,
        period: &Period,
        helper_key_id: Option<KeyId>,
    ) -> Option<policies::wire::SecureRequest> {
        self.secure.as_ref()?;
        let n = self.targets_for(base).len();
        if n <= 1 {
            return None;
        }
        let nodes = n as u32;
        let max_missing = self.secure_config.max_missing_for(n);
        let bits = self.secure_config.bits.unwrap_or_else(|| {
            crate::secure::planned_bits(
                base,
                period,
                nodes - max_missing,
                self.secure_config.max_units,
            )
        });
        Some(policies::wire::SecureRequest {
            nodes,
            max_missing,
            bits,
            helper_key_id,
        })
    }

    pub fn targets_for(&self, base: &Indicator) -> Vec<&Target> {
        let unit = base.query().map(|q| q.privacy_unit.as_str()).unwrap_or("");
        self.targets
            .iter()
            .filter(|t| t.units.iter().any(|u| u == unit))
            .collect()
    }

    /// Checks the request and stores a pending run; the caller starts it with [`Runner::execute`].
    /// Accepted and refused requests alike are written to the audit log.
    pub fn submit(&self, indicator: &str, period: &str, who: &str) -> Result<String, RunError> {
        let result = self.check_and_store(indicator, period, who);
        self.audit.append(AuditEvent {
            actor: who.to_string(),
            action: "run.start".into(),
            indicator: Some(indicator.to_string()),
            content_hash: self
                .catalog()
                .get(indicator)
                .map(|i| i.content_hash.clone()),
            parameters: serde_json::json!({
                "period": period,
                "run": result.as_ref().ok(),
            }),
            outcome: match &result {
                Ok(_) => "accepted".into(),
                Err(e) => format!("refused: {e}"),
            },
            ..Default::default()
        })?;
        result
    }

    fn check_and_store(
        &self,
        indicator: &str,
        period: &str,
        who: &str,
    ) -> Result<String, RunError> {
        let catalog = self.catalog();
        let ind = catalog
            .get(indicator)
            .ok_or_else(|| RunError::UnknownIndicator(indicator.to_string()))?;
        let parsed: Period = period.parse().map_err(|e| RunError::BadPeriod {
            period: period.to_string(),
            message: format!("{e}"),
        })?;
        let quarters = parsed.quarters().len();
        if quarters > MAX_QUARTERS {
            return Err(RunError::BadPeriod {
                period: period.to_string(),
                message: format!("covers {quarters} quarters; at most {MAX_QUARTERS} per run"),
            });
        }
        if catalog.time_grain(ind).release_periods(&parsed).is_empty() {
            return Err(RunError::BadPeriod {
                period: period.to_string(),
                message: format!(
                    "{indicator} is published per calendar year only; the period must cover at least one whole year, e.g. {}Q1:{}Q4",
                    parsed.last.year, parsed.last.year
                ),
            });
        }
        if let policies::Body::Derived(policies::Derived::PerCapita { population, .. }) = &ind.body
        {
            for year in parsed.quarters().iter().map(|q| q.year) {
                if self.population.get(year, population).is_none() {
                    return Err(RunError::NoReference(format!(
                        "{indicator} divides by the population aged {population} on 1 January {year}, which the coordinator's reference data (reference.population) does not have"
                    )));
                }
            }
        }
        for base in publish::bases(&catalog, ind) {
            if self.targets_for(base).is_empty() {
                let unit = base
                    .query()
                    .map(|q| q.privacy_unit.clone())
                    .unwrap_or_default();
                return Err(RunError::NoNodes(unit));
            }
        }
        Ok(self.store.create_run(indicator, &parsed.to_string(), who)?)
    }

    /// Picks up every run a previous coordinator process left unfinished.
    pub async fn resume_unfinished(self: &Arc<Self>) -> Result<usize, RunError> {
        let runs = self.store.unfinished()?;
        let n = runs.len();
        for run in runs {
            tracing::info!(run = %run.id, indicator = %run.indicator, "resuming run");
            self.store.mark_resumed(&run.id)?;
            let me = self.clone();
            tokio::spawn(async move { me.execute(&run.id).await });
        }
        Ok(n)
    }

    /// Runs one stored run to a finished state. Never returns an error: failures land in the store.
    pub async fn execute(&self, run_id: &str) {
        if let Err(e) = self.try_execute(run_id).await {
            tracing::error!(run = %run_id, error = %e, "run failed");
            let _ = self
                .store
                .set_status(run_id, RunStatus::Failed, Some(&e.to_string()));
        }
        self.budgets_stale.store(true, Ordering::SeqCst);
    }

    async fn try_execute(&self, run_id: &str) -> Result<(), RunError> {
        let Some((run, _)) = self.store.run(run_id)? else {
            return Ok(());
        };
        let catalog = self.catalog();
        let ind = catalog
            .get(&run.indicator)
            .ok_or_else(|| RunError::UnknownIndicator(run.indicator.clone()))?;
        let period: Period = run.period.parse().map_err(|e| RunError::BadPeriod {
            period: run.period.clone(),
            message: format!("{e}"),
        })?;
        self.store.set_status(run_id, RunStatus::Running, None)?;
        // One release per quarter, or per whole year for annual figures.
        let quarters: Vec<Period> = catalog.time_grain(ind).release_periods(&period);
        let bases = publish::bases(&catalog, ind);
        let catalog_version = Some(self.catalog_version()).filter(|v| *v > 0);

        // Answers an earlier process stored (a resumed run) are reused; the rest are asked.
        let mut collected = Collected::new();
        for a in self.store.answers(run_id)? {
            if let Some(bytes) = a.answer {
                let decoded = Answer::decode(&bytes).map_err(|e| {
                    RunError::Store(StoreError::Json(serde_json::Error::io(
                        std::io::Error::other(e.to_string()),
                    )))
                })?;
                collected.insert((a.base, a.quarter, a.node), Ok(decoded));
            }
        }
        // The helper's current key, asked before any node is: with the helper unreachable no
        // node spends anything on the run.
        let helper_key_id = match &self.secure {
            Some(aggregator) if bases.iter().any(|b| self.targets_for(b).len() > 1) => Some(
                aggregator
                    .helper
                    .hpke_keys()
                    .await
                    .map_err(|e| RunError::Secure(e.to_string()))?
                    .current,
            ),
            Some(_) | None => None,
        };
        // Nodes vary fastest, so that the first requests in flight go to different nodes.
        let mut jobs: Vec<(Arc<tokio::sync::Semaphore>, (EvaluateRequest, NodeClient))> =
            Vec::new();
        for base in &bases {
            for q in &quarters {
                // Once per release, not per node: planning the width is linear in n.
                let secure = self.secure_request_for(base, q, helper_key_id);
                for t in self.targets_for(base) {
                    let key = (base.id.clone(), q.to_string(), t.client.id.clone());
                    if !collected.contains_key(&key) {
                        let request = EvaluateRequest {
                            indicator: base.id.clone(),
                            period: *q,
                            content_hash: Some(base.content_hash.clone()),
                            catalog_version,
                            secure,
                        };
                        jobs.push((t.slots.clone(), (request, t.client.clone())));
                    }
                }
            }
        }
        let counters = &self.counters;
        let mut stream = fan_out(jobs, self.concurrency, |(request, client)| async move {
            counters.node_requests.fetch_add(1, Ordering::Relaxed);
            let result = client.evaluate_raw(&request).await;
            (request, client.id, result)
        })
        // Whatever has arrived is stored together, in one transaction.
        .ready_chunks(ANSWER_BATCH);
        while let Some(batch) = stream.next().await {
            let mut rows = Vec::with_capacity(batch.len());
            for (request, node, result) in batch {
                // A refusal is an answer: the node was reachable.
                let reachable = match &result {
                    Ok(_) => true,
                    Err(e) => e.is_refusal(),
                };
                self.record_contact(&node, reachable);
                let key = (request.indicator, request.period.to_string(), node);
                match result {
                    Ok((bytes, answer)) => {
                        rows.push((key, Ok(bytes), Ok(answer)));
                    }
                    Err(e) => {
                        self.counters.node_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(run = %run_id, node = %key.2, indicator = %key.0, quarter = %key.1, error = %e, "node failed");
                        rows.push((key, Err(e.to_string()), Err(e.to_string())));
                    }
                }
            }
            let answers: Vec<NewAnswer<'_>> = rows
                .iter()
                .map(|((base, quarter, node), stored, decoded)| NewAnswer {
                    base,
                    quarter,
                    node,
                    secure: decoded
                        .as_ref()
                        .is_ok_and(|a: &Answer| a.meta.secure.is_some()),
                    answer: match stored {
                        Ok(b) => Ok(b.as_slice()),
                        Err(e) => Err(e.as_str()),
                    },
                })
                .collect();
            self.store.record_answers(run_id, &answers)?;
            for (key, _, decoded) in rows {
                collected.insert(key, decoded);
            }
        }
        drop(stream);
        self.finish(run_id, &catalog, ind, &bases, &quarters, collected)
            .await
    }

    async fn finish(
        &self,
        run_id: &str,
        catalog: &Catalog,
        ind: &Indicator,
        bases: &[&Indicator],
        quarters: &[Period],
        mut collected: Collected,
    ) -> Result<(), RunError> {
        let mut records: Vec<Record> = Vec::new();
        let mut failures: Vec<String> = Vec::new();
        let mut complete = true;
        let mut quorum_met = true;
        // A secure sum that cannot be formed fails the run: nothing is published.
        let mut secure_failures: Vec<String> = Vec::new();
        for q in quarters {
            let quarter = q.to_string();
            let mut by_base: BTreeMap<String, BaseResult> = BTreeMap::new();
            for base in bases {
                let total = self.targets_for(base).len();
                let mut answers = Vec::new();
                for t in self.targets_for(base) {
                    match collected.remove(&(base.id.clone(), quarter.clone(), t.client.id.clone()))
                    {
                        Some(Ok(answer)) => answers.push(answer),
                        Some(Err(e)) => failures.push(e),
                        None => {}
                    }
                }
                if answers.len() < total {
                    complete = false;
                }
                if (answers.len() as f64) < self.quorum * total as f64 - 1e-9 {
                    quorum_met = false;
                }
                if answers.is_empty() {
                    continue;
                }
                // The run's n, t and width; which helper key a report is sealed to is the
                // helper's to check (a resumed run's reports may predate a rotation).
                let secure = self
                    .secure_request_for(base, q, None)
                    .zip(self.secure.as_ref());
                let now = self.store.clock().now().timestamp();
                let combined = match secure {
                    Some((request, aggregator)) => aggregator
                        .combine(base, *q, request, &answers, now)
                        .await
                        .map(|(r, excluded)| {
                            for e in excluded {
                                tracing::warn!(run = %run_id, node = %e.node, reason = %e.reason, "report excluded");
                                complete = false;
                                failures.push(format!("{} {quarter}: {e}", base.id));
                            }
                            r
                        })
                        .map_err(|e| {
                            secure_failures.push(e.to_string());
                            e.to_string()
                        }),
                    None => national::combine(&answers, total)
                        .await
                        .map_err(|e| e.to_string()),
                };
                match combined {
                    Ok(r) => {
                        by_base.insert(base.id.clone(), r);
                    }
                    Err(e) => {
                        failures.push(format!("{} {quarter}: {e}", base.id));
                        quorum_met = false;
                    }
                }
            }
            records.extend(publish::records(
                catalog,
                ind,
                &quarter,
                &by_base,
                &self.population,
            ));
        }
        let (status, error) = if let Some(first) = secure_failures.first() {
            records.clear();
            (
                RunStatus::Failed,
                Some(format!("secure aggregation failed: {first}")),
            )
        } else if records.is_empty() {
            (
                RunStatus::Failed,
                Some(format!(
                    "no node answered: {}",
                    failures.first().cloned().unwrap_or_default()
                )),
            )
        } else if complete {
            (RunStatus::Done, None)
        } else {
            let note = if quorum_met {
                "published as partial: quorum met"
            } else {
                "not published: below quorum"
            };
            (
                RunStatus::Partial,
                Some(format!(
                    "{} node request(s) failed ({note}); first: {}",
                    failures.len(),
                    failures.first().cloned().unwrap_or_default()
                )),
            )
        };
        let published: Option<Vec<_>> = (status != RunStatus::Failed && quorum_met).then(|| {
            records
                .iter()
                .map(|r| publish::publish(catalog, r))
                .collect()
        });
        self.store.finish(
            run_id,
            status,
            error.as_deref(),
            &records,
            published.as_deref(),
        )?;
        let rho = catalog.rho(ind);
        self.audit.append(AuditEvent {
            actor: "coordinator".into(),
            action: "run.finish".into(),
            indicator: Some(ind.id.clone()),
            content_hash: Some(ind.content_hash.clone()),
            parameters: serde_json::json!({
                "run": run_id,
                "quarters": quarters.iter().map(|q| q.to_string()).collect::<Vec<_>>(),
                "published": published.is_some(),
                "mode": bases.iter().map(|b| match quarters.first().and_then(|q| self.secure_request_for(b, q, None)) {
                    Some(s) => format!("{}: secure (n = {}, t = {}, {} bits)", b.id, s.nodes, s.max_missing, s.bits),
                    None => format!("{}: per-node noise", b.id),
                }).collect::<Vec<_>>(),
            }),
            // Per node asked: each base indicator's cost for each quarter.
            rho: Some(rho * quarters.len() as f64),
            answer_digest: Some(digest(
                serde_json::to_string(&records)
                    .unwrap_or_default()
                    .as_bytes(),
            )),
            outcome: format!("{status:?}").to_lowercase(),
            reason: error.clone(),
        })?;
        tracing::info!(run = %run_id, status = ?status, records = records.len(), "run finished");
        Ok(())
    }
}

/// Runs `ask` on every job with at most `total` in flight over all nodes and, per node, at most
/// the permits of the job's node semaphore; results come in the order they finish.
pub fn fan_out<J, T, F, Fut>(
    jobs: Vec<(Arc<tokio::sync::Semaphore>, J)>,
    total: usize,
    ask: F,
) -> impl futures::Stream<Item = T>
where
    F: Fn(J) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    futures::stream::iter(jobs.into_iter().map(move |(slots, job)| {
        let asked = ask(job);
        async move {
            // A closed semaphore only means no limit is left to keep.
            let _permit = slots.acquire_owned().await.ok();
            asked.await
        }
    }))
    .buffer_unordered(total.max(1))
}

/// The name an approved indicator's text goes by in catalog problems.
pub fn approved_file(id: &str) -> std::path::PathBuf {
    std::path::PathBuf::from("approved").join(format!("{id}.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;
    use tokio::sync::{Barrier, Semaphore};

    #[tokio::test]
    async fn a_thousand_nodes_are_asked_at_once() {
        // Every request waits until all 1,000 are in flight: fan-out in waves never gets there.
        let barrier = Arc::new(Barrier::new(1000));
        let jobs = (0..1000)
            .map(|i| (Arc::new(Semaphore::new(4)), i))
            .collect();
        let stream = fan_out(jobs, 1024, |i| {
            let barrier = barrier.clone();
            async move {
                barrier.wait().await;
                i
            }
        });
        let done: Vec<usize> = tokio::time::timeout(Duration::from_secs(30), stream.collect())
            .await
            .expect("all requests in flight at once");
        assert_eq!(done.len(), 1000);
    }

    #[tokio::test]
    async fn no_node_gets_more_requests_at_once_than_its_limit_and_the_total_is_capped() {
        let nodes: Vec<Arc<Semaphore>> = (0..3).map(|_| Arc::new(Semaphore::new(2))).collect();
        let in_flight: Vec<Arc<AtomicUsize>> =
            (0..3).map(|_| Arc::new(AtomicUsize::new(0))).collect();
        let most: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::new(AtomicUsize::new(0))).collect();
        let (total, total_most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        // Sixteen quarters per node, nodes varying fastest as a run orders them.
        let jobs: Vec<(Arc<Semaphore>, usize)> =
            (0..48).map(|j| (nodes[j % 3].clone(), j % 3)).collect();
        let run = |cap: usize| {
            fan_out(jobs.clone(), cap, |n| {
                let (now, most, total, total_most) = (
                    in_flight[n].clone(),
                    most[n].clone(),
                    total.clone(),
                    total_most.clone(),
                );
                async move {
                    most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    total_most
                        .fetch_max(total.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    total.fetch_sub(1, Ordering::SeqCst);
                    n
                }
            })
            .collect::<Vec<_>>()
        };
        assert_eq!(run(1024).await.len(), 48);
        for m in &most {
            assert_eq!(
                m.load(Ordering::SeqCst),
                2,
                "per-node limit reached, never passed"
            );
        }
        assert_eq!(total_most.load(Ordering::SeqCst), 6);
        total_most.store(0, Ordering::SeqCst);
        assert_eq!(run(4).await.len(), 48);
        assert_eq!(total_most.load(Ordering::SeqCst), 4, "the total cap holds");
    }
}
