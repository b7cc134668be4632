//! Helper configuration: built-in defaults, then a TOML file, then `STROOM_`-prefixed environment
//! variables. Relative paths are resolved against the config file's folder.

use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelperConfig {
    /// `host:port`; port 0 picks a free port.
    pub listen: String,
    pub tls: HelperTls,
    /// The helper's current HPKE private key (hex): the key it tells the coordinator to have
    /// nodes seal to (`GET /v1/hpke_keys`).
    pub hpke_key: PathBuf,
    /// Further HPKE private keys it still opens reports with during a rotation: the next key
    /// before it becomes current, the previous one until its reports are out of the window.
    #[serde(default)]
    pub hpke_other_keys: Vec<PathBuf>,
    /// The verification key the helper shares with the coordinator alone (hex, 32 bytes).
    pub verify_key: PathBuf,
    pub store: StoreConfig,
    pub limits: Limits,
    /// The helper's own floors on the runs it aggregates, whatever the coordinator declares.
    pub batches: BatchFloors,
    /// The federation's nodes and the ed25519 keys their reports are signed with. A report from
    /// a node not listed here (or in `roster`), or not signed by its key, is rejected.
    #[serde(default)]
    pub nodes: Vec<RosterEntry>,
    /// A TOML file of further `[[nodes]]` entries (`stroom certs --helper` writes
    /// `helper-roster.toml`), read at start-up.
    #[serde(default)]
    pub roster: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RosterFile {
    #[serde(default)]
    nodes: Vec<RosterEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelperTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The federation CA. Required: only a client certificate from it with `clientAuth` (the
    /// coordinator's; node certificates are server-only) completes the handshake.
    pub client_ca: PathBuf,
    /// The coordinator's name: a client certificate must be valid for it too, so no other
    /// certificate of the CA (whatever its usages) reaches the helper.
    pub client_name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// The highest collection number the helper has given out, kept apart from the store (and
    /// from its backups): a store found behind it was restored, and no report made before that
    /// moment is counted again.
    pub watermark: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_body_bytes: usize,
}

/// A batch is collected over at least `min_batch` reports, and from runs declaring at most
/// `max_missing_share` of their nodes missing or cheating: a coordinator cannot isolate one
/// node's report in a small collection, and the helper need not trust nodes to refuse it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchFloors {
    pub min_batch: u32,
    pub max_missing_share: f64,
    /// Reports made longer ago than this are refused and their material erased (`24h`, `90m`).
    pub report_max_age: String,
    /// How far ahead of the helper's clock a report may be dated.
    pub report_max_skew: String,
}

impl BatchFloors {
    pub fn window(&self) -> Result<secagg::window::ReportWindow, String> {
        secagg::window::ReportWindow::parse(&self.report_max_age, &self.report_max_skew)
    }

    pub fn floors(&self) -> secagg::floors::RunFloors {
        secagg::floors::RunFloors {
            min_honest: self.min_batch,
            max_missing_share: self.max_missing_share,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterEntry {
    pub id: String,
    pub public_key: String,
}

const DEFAULTS: &str = r#"
listen = "127.0.0.1:9443"
hpke_key = "helper.hpke.key"
verify_key = "aggregators.verify.key"
[tls]
cert = "helper.crt"
key = "helper.key"
client_ca = "ca.crt"
client_name = "coordinator.stroom"
[store]
path = "helper.sqlite"
watermark = "helper.watermark"
[limits]
max_body_bytes = 67108864
[batches]
min_batch = 3
max_missing_share = 0.3333333333333333
report_max_age = "24h"
report_max_skew = "5m"
"#;

const KEYS: &[&str] = &[
    "listen",
    "tls",
    "hpke_key",
    "hpke_other_keys",
    "verify_key",
    "store",
    "limits",
    "batches",
    "nodes",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {file}: {message}")]
    Load { file: PathBuf, message: String },
    #[error("config file {file}: key '{key}': {message}")]
    Invalid {
        file: PathBuf,
        key: &'static str,
        message: String,
    },
}

impl HelperConfig {
    pub fn load(file: &Path) -> Result<HelperConfig, ConfigError> {
        let mut cfg: HelperConfig = service::config::load(file, DEFAULTS, KEYS, &[]).map_err(
            |service::config::LoadError { file, message }| ConfigError::Load { file, message },
        )?;
        let base = file.parent().unwrap_or(Path::new("."));
        for p in [
            &mut cfg.tls.cert,
            &mut cfg.tls.key,
            &mut cfg.tls.client_ca,
            &mut cfg.hpke_key,
            &mut cfg.verify_key,
            &mut cfg.store.path,
            &mut cfg.store.watermark,
        ]
        .into_iter()
        .chain(cfg.hpke_other_keys.iter_mut())
        .chain(cfg.roster.as_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(roster) = &cfg.roster {
            let text = std::fs::read_to_string(roster).map_err(|e| ConfigError::Invalid {
                file: file.to_path_buf(),
                key: "roster",
                message: format!("{}: {e}", roster.display()),
            })?;
            let more: RosterFile = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
                file: file.to_path_buf(),
                key: "roster",
                message: format!("{}: {e}", roster.display()),
            })?;
            cfg.nodes.extend(more.nodes);
        }
        cfg.validate(file)?;
        Ok(cfg)
    }

    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |key, message: String| ConfigError::Invalid {
            file: file.to_path_buf(),
            key,
            message,
        };
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "listen",
                format!("'{}' is not an address like 127.0.0.1:9443", self.listen),
            ));
        }
        if let Err(e) = service::tls::client_name(&self.tls.client_name) {
            return Err(invalid("tls.client_name", e.to_string()));
        }
        if let Err(message) = self.batches.floors().validate() {
            return Err(invalid(
                "batches",
                message.replace("min_honest", "min_batch"),
            ));
        }
        if let Err(message) = self.batches.window() {
            return Err(invalid("batches", message));
        }
        if self.store.watermark == self.store.path {
            return Err(invalid(
                "store.watermark",
                "must be another file than store.path".into(),
            ));
        }
        if self.limits.max_body_bytes < 1024 {
            return Err(invalid(
                "limits.max_body_bytes",
                format!(
                    "must be at least 1024, found {}",
                    self.limits.max_body_bytes
                ),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for n in &self.nodes {
            if !seen.insert(n.id.as_str()) {
                return Err(invalid("nodes", format!("node '{}' is listed twice", n.id)));
            }
            if let Err(e) = policies::governance::parse_public_key(&n.public_key) {
                return Err(invalid("nodes", format!("key of node '{}': {e}", n.id)));
            }
        }
        Ok(())
    }
}
