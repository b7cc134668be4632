//! The secure-aggregation helper: the second aggregator, run by an organisation independent of the
//! coordinator's. It opens its sealed share of each node report, verifies the report's range proof
//! together with the coordinator (Prio3), keeps its output share, and hands out one aggregate share
//! per batch. It never sees a leader share, a node's cells or a national figure, and it answers
//! the coordinator only (mutual TLS).

pub mod config;
pub mod server;
pub mod store;

use crate::config::HelperConfig;
use crate::store::{Known, NewReport, Store, StoreError};
use policies::wire::KeyId;
use policies::wire::ReportBinding;
use secagg::api::HpkeKeys;
use secagg::api::{
    AggregateRequest, AggregateResponse, CollectRequest, CollectResponse, HelperReport,
    ReportOutcome,
};
use secagg::seal::HelperPrivateKey;
use secagg::vdaf::{Shape, VERIFY_KEY_LEN, parse_nonce, parse_verify_key, unhex};
use secagg::window::ReportWindow;
use service::clock::{Clock, SystemClock};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("{file}: {message}")]
    Key {
        file: std::path::PathBuf,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] service::tls::TlsError),
    #[error("batch {batch}: {message}")]
    BadCollect { batch: String, message: String },
    #[error(
        "batch {batch} was already collected over another set of nodes; a batch is collected once"
    )]
    AlreadyCollected { batch: String },
    #[error(
        "batch {batch}: {count} verified report(s), but the nodes declared n = {nodes} with at most t = {max_missing} missing: at least {needed} are needed for the noise to suffice"
    )]
    TooFew {
        batch: String,
        count: usize,
        nodes: u32,
        max_missing: u32,
        needed: u32,
    },
    #[error("batch {batch}: {source}")]
    Floor {
        batch: String,
        source: secagg::floors::FloorError,
    },
    #[error("batch {batch}, report of node {node}: {source}")]
    Expired {
        batch: String,
        node: String,
        source: secagg::window::WindowError,
    },
    #[error(
        "batch {batch}: the report of node {node} was made before this helper found its store restored from a backup (at {not_before}); no report that the lost history may have counted is counted again"
    )]
    Restored {
        batch: String,
        node: String,
        not_before: String,
    },
    #[error("internal: {0}")]
    Internal(String),
    #[error("server: {0}")]
    Server(String),
}

impl HelperError {
    pub fn code(&self) -> &'static str {
        match self {
            HelperError::Config(_) => "config",
            HelperError::Key { .. } => "key",
            HelperError::Store(_) => "store",
            HelperError::Tls(_) => "tls",
            HelperError::BadCollect { .. } => "invalid_collect",
            HelperError::AlreadyCollected { .. } => "already_collected",
            HelperError::TooFew { .. } => "too_few_reports",
            HelperError::Floor { .. } => "below_helper_floor",
            HelperError::Expired { .. } => "report_expired",
            HelperError::Restored { .. } => "store_restored",
            HelperError::Internal(_) => "internal",
            HelperError::Server(_) => "server",
        }
    }
}

/// What every report of one batch shares: a report with other parameters is rejected.
/// A Unix time as RFC 3339, for messages.
fn unix_time(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| secs.to_string())
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct BatchParams {
    indicator: String,
    content_hash: String,
    period: String,
    nodes: u32,
    max_missing: u32,
    bits: u32,
    length: u32,
    granularity: Vec<i64>,
}

impl BatchParams {
    fn of(b: &ReportBinding) -> BatchParams {
        BatchParams {
            indicator: b.indicator.clone(),
            content_hash: b.content_hash.clone(),
            period: b.period.to_string(),
            nodes: b.nodes,
            max_missing: b.max_missing,
            bits: b.bits,
            length: b.length,
            granularity: b.granularity.clone(),
        }
    }
}

/// What checking one report against the store and its proof gave.
enum Verdict {
    /// Verified before in this batch: the stored verifier message.
    Known(String),
    Rejected(String),
    /// Verified now; stored (after a last check) with the others of its request.
    Verified(NewReport),
}

pub struct Helper {
    pub config: HelperConfig,
    /// Current key first, then the others it still opens reports with.
    hpke: Vec<(KeyId, HelperPrivateKey)>,
    verify_key: [u8; VERIFY_KEY_LEN],
    roster: HashMap<String, String>,
    window: ReportWindow,
    clock: Arc<dyn Clock>,
    store: Mutex<Store>,
}

fn read_key(file: &std::path::Path) -> Result<String, HelperError> {
    std::fs::read_to_string(file).map_err(|e| HelperError::Key {
        file: file.to_path_buf(),
        message: e.to_string(),
    })
}

fn key_list(ids: impl Iterator<Item = KeyId>) -> String {
    ids.map(|k| k.to_string()).collect::<Vec<_>>().join(", ")
}

impl Helper {
    pub fn open(config: HelperConfig) -> Result<Helper, HelperError> {
        Self::open_with_clock(config, Arc::new(SystemClock))
    }

    pub fn open_with_clock(
        config: HelperConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Helper, HelperError> {
        let key_err = |file: &std::path::Path, e: &dyn std::fmt::Display| HelperError::Key {
            file: file.to_path_buf(),
            message: e.to_string(),
        };
        let mut hpke: Vec<(KeyId, HelperPrivateKey)> = Vec::new();
        for file in std::iter::once(&config.hpke_key).chain(&config.hpke_other_keys) {
            let key =
                HelperPrivateKey::from_hex(&read_key(file)?).map_err(|e| key_err(file, &e))?;
            let id = key.public_key().key_id();
            if hpke.iter().any(|(k, _)| *k == id) {
                return Err(key_err(file, &format!("key {id} is configured twice")));
            }
            hpke.push((id, key));
        }
        let verify_key = parse_verify_key(&read_key(&config.verify_key)?)
            .map_err(|e| key_err(&config.verify_key, &e))?;
        let roster = config
            .nodes
            .iter()
            .map(|n| (n.id.clone(), n.public_key.clone()))
            .collect();
        let window = config
            .batches
            .window()
            .map_err(|e| HelperError::Internal(e.to_string()))?;
        let now = clock.now().timestamp();
        let (mut store, restored) = Store::open(&config.store.path, &config.store.watermark, now)?;
        if let Some(r) = &restored {
            tracing::warn!(
                store_seq = r.store_seq,
                watermark = r.watermark,
                erased = r.erased,
                "the store is behind its watermark: restored from a backup; reports made before now are fenced off"
            );
        }
        let erased = store.erase_expired(window.oldest_allowed(now))?;
        if erased > 0 {
            tracing::info!(erased, "expired report shares erased");
        }
        Ok(Helper {
            config,
            hpke,
            verify_key,
            roster,
            window,
            clock,
            store: Mutex::new(store),
        })
    }

    /// The helper's current HPKE public key (hex), for nodes' configuration.
    pub fn public_key_hex(&self) -> String {
        self.hpke
            .first()
            .map(|(_, k)| k.public_key().to_hex())
            .unwrap_or_default()
    }

    /// The keys this helper opens reports with, current first: what the coordinator asks
    /// nodes to seal to.
    pub fn hpke_keys(&self) -> HpkeKeys {
        let keys: Vec<KeyId> = self.hpke.iter().map(|(id, _)| *id).collect();
        HpkeKeys {
            current: keys[0],
            keys,
        }
    }

    fn store(&self) -> Result<std::sync::MutexGuard<'_, Store>, HelperError> {
        self.store
            .lock()
            .map_err(|_| HelperError::Internal("store lock poisoned".into()))
    }

    fn now(&self) -> i64 {
        self.clock.now().timestamp()
    }

    /// Erases the shares of reports that fell out of the window since the last call.
    fn erase_expired(&self) -> Result<(), HelperError> {
        let erased = self
            .store()?
            .erase_expired(self.window.oldest_allowed(self.now()))?;
        if erased > 0 {
            tracing::info!(erased, "expired report shares erased");
        }
        Ok(())
    }

    /// Verifies each report; a report that fails is rejected with its reason and the others go on.
    /// Synchronous (proof checks are CPU work): call it off the async threads. The checks and
    /// proofs run on every core; the new reports are then stored in one transaction, each
    /// checked again there against what the store holds by then.
    pub fn aggregate(&self, req: &AggregateRequest) -> Result<AggregateResponse, HelperError> {
        self.erase_expired()?;
        let not_before = self.store()?.not_before()?;
        let now = self.now();
        let verdicts = secagg::parallel::map(&req.reports, |r| {
            self.verify(&req.batch, r, now, not_before)
        });
        let mut fresh: Vec<NewReport> = Vec::new();
        let mut settled: Vec<Option<Result<String, String>>> = Vec::with_capacity(verdicts.len());
        for verdict in verdicts {
            settled.push(match verdict? {
                Verdict::Known(message) => Some(Ok(message)),
                Verdict::Rejected(reason) => Some(Err(reason)),
                Verdict::Verified(report) => {
                    fresh.push(report);
                    None
                }
            });
        }
        let mut stored = self
            .store()?
            .insert_reports(&req.batch, &fresh)?
            .into_iter();
        let mut outcomes = Vec::with_capacity(req.reports.len());
        for (report, settled) in req.reports.iter().zip(settled) {
            let node_id = report.binding.node_id.clone();
            let result = match settled {
                Some(r) => r,
                None => stored.next().ok_or_else(|| {
                    HelperError::Internal("a verified report was not stored".into())
                })?,
            };
            outcomes.push(match result {
                Ok(verifier_message) => ReportOutcome::Verified {
                    node_id,
                    verifier_message,
                },
                Err(reason) => {
                    tracing::warn!(batch = %req.batch, node = %node_id, %reason, "report rejected");
                    ReportOutcome::Rejected { node_id, reason }
                }
            });
        }
        Ok(AggregateResponse { outcomes })
    }

    /// One report against what the store holds, its time and its proof. Err only on a store
    /// failure.
    fn verify(
        &self,
        batch: &str,
        r: &HelperReport,
        now: i64,
        not_before: Option<i64>,
    ) -> Result<Verdict, HelperError> {
        let b = &r.binding;
        let params = BatchParams::of(b);
        let params_json =
            serde_json::to_string(&params).map_err(|e| HelperError::Internal(e.to_string()))?;
        {
            let store = self.store()?;
            match store.known(&b.nonce, batch, &b.node_id)? {
                Known::Same { verifier_message } => return Ok(Verdict::Known(verifier_message)),
                Known::Elsewhere {
                    batch: other,
                    node_id,
                } => {
                    return Ok(Verdict::Rejected(format!(
                        "report nonce {} was already verified for node {node_id} in batch {other}; a report counts in one batch only",
                        b.nonce
                    )));
                }
                Known::New => {}
            }
            if let Some(reason) = store.refusal(batch, &b.node_id, &params_json)? {
                return Ok(Verdict::Rejected(reason));
            }
        }
        let verified = (|| -> Result<(Vec<u8>, Vec<u8>), String> {
            // The helper's own floors and window, before any share is opened. The creation time
            // is signed: checked here, it is trusted only once the signature verifies below.
            self.config
                .batches
                .floors()
                .check(b.nodes, b.max_missing)
                .map_err(|e| e.to_string())?;
            self.window
                .check(b.created_at, now)
                .map_err(|e| e.to_string())?;
            if let Some(fence) = not_before.filter(|t| b.created_at < *t) {
                return Err(format!(
                    "the report was made before this helper found its store restored from a backup (at {}); it is never counted",
                    unix_time(fence)
                ));
            }
            let key_id = b
                .helper_key_id
                .ok_or("the report names no helper key (made before key ids)")?;
            let key = self
                .hpke
                .iter()
                .find(|(id, _)| *id == key_id)
                .map(|(_, k)| k)
                .ok_or_else(|| {
                    format!(
                        "the report is sealed to helper key {key_id}, which this helper no longer (or not yet) holds; it holds {}",
                        key_list(self.hpke.iter().map(|(id, _)| *id))
                    )
                })?;
            let share = secagg::report::open(
                b,
                &r.public_share,
                &r.helper_share,
                &r.signature,
                self.roster.get(&b.node_id).map(String::as_str),
                key,
            )
            .map_err(|e| e.to_string())?;
            let shape = Shape::new(b.bits, b.length as usize).map_err(|e| e.to_string())?;
            let nonce = parse_nonce(&b.nonce).map_err(|e| e.to_string())?;
            let public = unhex("public share", &r.public_share).map_err(|e| e.to_string())?;
            let leader = unhex("leader verifier share", &r.leader_verifier_share)
                .map_err(|e| e.to_string())?;
            shape
                .helper_verify(&self.verify_key, &nonce, &public, &share, &leader)
                .map_err(|e| e.to_string())
        })();
        Ok(match verified {
            Ok((output_share, message)) => Verdict::Verified(NewReport {
                params_json,
                nonce: b.nonce.clone(),
                node_id: b.node_id.clone(),
                output_share,
                verifier_message: hex::encode(message),
                created_at: b.created_at,
            }),
            Err(reason) => Verdict::Rejected(reason),
        })
    }

    /// The helper's aggregate share over exactly `req.nodes`' verified reports in the batch.
    pub fn collect(&self, req: &CollectRequest) -> Result<CollectResponse, HelperError> {
        let bad = |message: String| HelperError::BadCollect {
            batch: req.batch.clone(),
            message,
        };
        let set: BTreeSet<&str> = req.nodes.iter().map(String::as_str).collect();
        if set.len() != req.nodes.len() {
            return Err(bad("a node is listed twice".into()));
        }
        if set.is_empty() {
            return Err(bad("no nodes listed".into()));
        }
        let node_set = set.iter().copied().collect::<Vec<_>>().join(",");
        let respond = |(stored_set, count, share): (String, usize, String)| {
            if stored_set == node_set {
                Ok(CollectResponse {
                    batch: req.batch.clone(),
                    count,
                    aggregate_share: share,
                })
            } else {
                Err(HelperError::AlreadyCollected {
                    batch: req.batch.clone(),
                })
            }
        };
        self.erase_expired()?;
        let mut store = self.store()?;
        if let Some(done) = store.collection(&req.batch)? {
            return respond(done);
        }
        let not_before = store.not_before()?;
        let now = self.now();
        let params: BatchParams = store
            .batch_params(&req.batch)?
            .ok_or_else(|| bad("the helper holds no report of this batch".into()))
            .and_then(|p| {
                serde_json::from_str(&p).map_err(|e| HelperError::Internal(e.to_string()))
            })?;
        // Checked again at collection: the floors may have been raised since the reports came.
        self.config
            .batches
            .floors()
            .check(params.nodes, params.max_missing)
            .map_err(|source| HelperError::Floor {
                batch: req.batch.clone(),
                source,
            })?;
        let needed = params.nodes - params.max_missing;
        if (set.len() as u32) < needed {
            return Err(HelperError::TooFew {
                batch: req.batch.clone(),
                count: set.len(),
                nodes: params.nodes,
                max_missing: params.max_missing,
                needed,
            });
        }
        let nodes: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        let shares = store.output_shares(&req.batch, &nodes)?;
        let shape = Shape::new(params.bits, params.length as usize)
            .map_err(|e| HelperError::Internal(e.to_string()))?;
        let mut outputs = Vec::with_capacity(shares.len());
        for (node, stored) in nodes.iter().zip(shares) {
            let stored =
                stored.ok_or_else(|| bad(format!("no verified report from node {node}")))?;
            // Fenced and expired reports were erased; say which rule took them.
            if let Some(t) = not_before.filter(|t| stored.created_at < *t) {
                return Err(HelperError::Restored {
                    batch: req.batch.clone(),
                    node: node.clone(),
                    not_before: unix_time(t),
                });
            }
            self.window
                .check(stored.created_at, now)
                .map_err(|source| HelperError::Expired {
                    batch: req.batch.clone(),
                    node: node.clone(),
                    source,
                })?;
            if stored.erased {
                return Err(HelperError::Internal(format!(
                    "the share of node {node} in batch {} is erased",
                    req.batch
                )));
            }
            outputs.push(
                shape
                    .decode_output_share(&stored.share)
                    .map_err(|e| HelperError::Internal(e.to_string()))?,
            );
        }
        let total = shape
            .aggregate(outputs)
            .and_then(|a| shape.encode_aggregate_share(&a))
            .map_err(|e| HelperError::Internal(e.to_string()))?;
        let stored =
            store.insert_collection(&req.batch, &node_set, nodes.len(), &hex::encode(total))?;
        tracing::info!(batch = %req.batch, count = nodes.len(), "batch collected");
        respond(stored)
    }
}
