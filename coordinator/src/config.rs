//! Coordinator configuration through the `config` crate: built-in defaults, then a TOML file, then
//! `STROOM_`-prefixed environment variables (`__` between levels). Relative paths are resolved
//! against the config file's folder. Every error names the file and, where it can, the key.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    pub listen: String,
    pub catalog_dir: PathBuf,
    pub store: StoreConfig,
    pub audit: AuditConfig,
    pub tls: TlsConfig,
    pub fanout: FanoutConfig,
    /// Share of the asked providers that must answer before a run's results are published.
    pub quorum: f64,
    pub nodes: Vec<NodeEntry>,
    #[serde(default)]
    pub researchers: Vec<Researcher>,
    pub limits: LimitsConfig,
    #[serde(default)]
    pub governance: GovernanceConfig,
    #[serde(default)]
    pub secure: SecureConfig,
    #[serde(default)]
    pub publication: PublicationConfig,
    #[serde(default)]
    pub reference: ReferenceConfig,
}

/// Public reference data (see [`crate::reference`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceConfig {
    /// CSV of population per year and age group, the denominators of per-capita indicators;
    /// unset refuses every per-capita run.
    #[serde(default)]
    pub population: Option<PathBuf>,
}

/// The embargo: a round's results become public when this many reviewers have released them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicationConfig {
    #[serde(default = "default_required_releases")]
    pub required_releases: usize,
}

fn default_required_releases() -> usize {
    1
}

impl Default for PublicationConfig {
    fn default() -> Self {
        PublicationConfig {
            required_releases: default_required_releases(),
        }
    }
}

/// Secure aggregation with the helper. On (the default where a helper is configured), every base
/// indicator held by more than one node runs securely; one held by a single node (the panel) runs
/// per node, as it must. Off is the explicit per-node fallback: a secure run never silently
/// becomes one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecureConfig {
    /// The helper's base URL (`https://…`); unset means per-node noise for every run.
    #[serde(default)]
    pub helper_url: Option<String>,
    /// The verification key shared with the helper alone (hex, 32 bytes), never with nodes.
    #[serde(default)]
    pub verify_key: Option<PathBuf>,
    /// t: nodes of a run that may drop out or cheat. Each node adds 1/(n − t) of the noise.
    /// Default 1: with t = 0 one provider's node down on release day would sink every national
    /// figure of the round after the others had spent their budget on it.
    #[serde(default = "default_max_missing")]
    pub max_missing: u32,
    /// t as a share of the run's nodes (rounded up); the larger of the two counts. Default 0.1:
    /// a tenth of a large federation may be down, well inside nodes' and the helper's ceilings
    /// (a third by default), which they enforce whatever this says.
    #[serde(default = "default_max_missing_share")]
    pub max_missing_share: f64,
    /// A public upper bound on the units (youths) any one node holds. Each run's entry width is
    /// the narrowest that holds this many units' cells plus the noise share, so a cheating node
    /// can move a national cell by no more than that public range. A node with a larger bound of
    /// its own refuses the run before it spends anything.
    #[serde(default = "default_max_units")]
    pub max_units: u64,
    /// A fixed entry width instead of the one planned from `max_units`; nodes refuse a run whose
    /// width cannot hold their own public bound.
    #[serde(default)]
    pub bits: Option<u32>,
    /// Reports made longer ago than this are excluded from a run (`24h`, `90m`): an old report
    /// kept back, or one from a restored store, never joins a batch. The helper has its own.
    #[serde(default = "default_report_max_age")]
    pub report_max_age: String,
    /// How far ahead of the coordinator's clock a report may be dated.
    #[serde(default = "default_report_max_skew")]
    pub report_max_skew: String,
}

fn default_report_max_age() -> String {
    secagg::window::DEFAULT_MAX_AGE.into()
}

fn default_report_max_skew() -> String {
    secagg::window::DEFAULT_MAX_SKEW.into()
}

fn default_max_units() -> u64 {
    policies::wire::DEFAULT_MAX_UNITS
}

fn default_max_missing() -> u32 {
    1
}

fn default_max_missing_share() -> f64 {
    0.1
}

impl Default for SecureConfig {
    fn default() -> Self {
        SecureConfig {
            helper_url: None,
            verify_key: None,
            max_missing: default_max_missing(),
            max_missing_share: default_max_missing_share(),
            max_units: default_max_units(),
            bits: None,
            report_max_age: default_report_max_age(),
            report_max_skew: default_report_max_skew(),
        }
    }
}

impl SecureConfig {
    pub fn window(&self) -> Result<secagg::window::ReportWindow, String> {
        secagg::window::ReportWindow::parse(&self.report_max_age, &self.report_max_skew)
    }

    /// t for a run asking `n` nodes (never all of them).
    pub fn max_missing_for(&self, n: usize) -> u32 {
        let by_share = (self.max_missing_share * n as f64).ceil() as u32;
        self.max_missing
            .max(by_share)
            .min((n as u32).saturating_sub(1))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernanceConfig {
    /// Distinct reviewer approvals (none by the proposer) that make a proposal approved.
    #[serde(default = "default_required_approvals")]
    pub required_approvals: usize,
    /// Synthetic providers a proposal's dry run is evaluated on (0 disables dry runs).
    #[serde(default = "default_dry_run_providers")]
    pub dry_run_providers: usize,
    /// Seed of the dry-run data; fixed so that every dry run sees the same synthetic records.
    #[serde(default = "default_dry_run_seed")]
    pub dry_run_seed: u64,
    /// Where the dry-run data is written (made on first start).
    #[serde(default = "default_dry_run_dir")]
    pub dry_run_dir: PathBuf,
}

fn default_required_approvals() -> usize {
    2
}
fn default_dry_run_providers() -> usize {
    3
}
fn default_dry_run_seed() -> u64 {
    20240101
}
fn default_dry_run_dir() -> PathBuf {
    PathBuf::from("dry-run")
}

impl Default for GovernanceConfig {
    fn default() -> Self {
        GovernanceConfig {
            required_approvals: default_required_approvals(),
            dry_run_providers: default_dry_run_providers(),
            dry_run_seed: default_dry_run_seed(),
            dry_run_dir: default_dry_run_dir(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub path: PathBuf,
}

/// The coordinator's append-only, hash-chained audit log (`stroom audit verify FILE`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The federation CA: nodes' certificates must chain to it.
    pub ca: PathBuf,
    /// The coordinator's certificate and key: its client identity toward nodes and the server
    /// certificate of its own API.
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FanoutConfig {
    pub timeout_seconds: f64,
    /// Attempts per node request, the first included.
    pub attempts: u32,
    pub backoff_ms: u64,
    /// Node requests in flight at once, over all nodes: enough to ask a thousand nodes at once,
    /// so that a run waits for its slowest node rather than for waves of nodes.
    pub concurrency: usize,
    /// Requests in flight to any one node: a run over many quarters does not start all of its
    /// evaluations on one node at once.
    pub per_node: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// The provider id; the node's certificate must name it.
    pub id: String,
    pub url: String,
    /// The privacy units whose indicators this node answers (a provider: youth_pid; the panel:
    /// respondent_pid).
    #[serde(default = "default_units")]
    pub units: Vec<String>,
}

fn default_units() -> Vec<String> {
    vec![policies::cdm::UNIT_COLUMN.to_string()]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Researcher {
    pub name: String,
    /// Hex sha256 of the bearer token; the token itself is never stored.
    pub token_sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_body_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {file}: {message}")]
    Load { file: PathBuf, message: String },
    #[error("config file {file}: key '{key}': {message}")]
    Invalid {
        file: PathBuf,
        key: String,
        message: String,
    },
}

const DEFAULTS: &str = r#"
listen = "127.0.0.1:8443"
catalog_dir = "catalog"
quorum = 1.0
nodes = []
[store]
path = "runs.sqlite"
[audit]
path = "audit.jsonl"
[tls]
ca = "certs/ca.crt"
cert = "certs/coordinator.crt"
key = "certs/coordinator.key"
[fanout]
timeout_seconds = 60.0
attempts = 4
backoff_ms = 200
concurrency = 1024
per_node = 4
[limits]
max_body_bytes = 65536
"#;

const KEYS: &[&str] = &[
    "listen",
    "catalog_dir",
    "store",
    "audit",
    "tls",
    "fanout",
    "quorum",
    "nodes",
    "researchers",
    "limits",
    "governance",
    "secure",
    "publication",
    "reference",
];

/// Hex sha256 of a bearer token, as stored in the config.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

impl CoordinatorConfig {
    pub fn load(file: &Path) -> Result<CoordinatorConfig, ConfigError> {
        let mut cfg: CoordinatorConfig = service::config::load(file, DEFAULTS, KEYS, &[]).map_err(
            |service::config::LoadError { file, message }| ConfigError::Load { file, message },
        )?;
        let base = file.parent().unwrap_or(Path::new("."));
        for p in [
            &mut cfg.catalog_dir,
            &mut cfg.store.path,
            &mut cfg.audit.path,
            &mut cfg.tls.ca,
            &mut cfg.tls.cert,
            &mut cfg.tls.key,
            &mut cfg.governance.dry_run_dir,
        ]
        .into_iter()
        .chain(cfg.secure.verify_key.as_mut())
        .chain(cfg.reference.population.as_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.validate(file)?;
        Ok(cfg)
    }

    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_path_buf(),
            key: key.to_string(),
            message,
        };
        if !(self.quorum > 0.0 && self.quorum <= 1.0) {
            return Err(invalid(
                "quorum",
                format!("must lie in (0, 1], found {}", self.quorum),
            ));
        }
        if !(self.fanout.timeout_seconds > 0.0 && self.fanout.timeout_seconds.is_finite()) {
            return Err(invalid(
                "fanout.timeout_seconds",
                format!("must be positive, found {}", self.fanout.timeout_seconds),
            ));
        }
        if self.fanout.attempts == 0 || self.fanout.concurrency == 0 || self.fanout.per_node == 0 {
            return Err(invalid(
                "fanout",
                "attempts, concurrency and per_node must be at least 1".into(),
            ));
        }
        if self.governance.required_approvals == 0 {
            return Err(invalid(
                "governance.required_approvals",
                "must be at least 1: no indicator is approved without a reviewer".into(),
            ));
        }
        if self.publication.required_releases == 0 {
            return Err(invalid(
                "publication.required_releases",
                "must be at least 1: no round becomes public without a reviewer's release".into(),
            ));
        }
        if self.governance.dry_run_providers > 50 {
            return Err(invalid(
                "governance.dry_run_providers",
                format!(
                    "at most 50 synthetic providers, found {}",
                    self.governance.dry_run_providers
                ),
            ));
        }
        if self.nodes.is_empty() {
            return Err(invalid("nodes", "at least one node is needed".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let key = format!("nodes[{i}]");
            if n.id.is_empty()
                || !n
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid(
                    &format!("{key}.id"),
                    format!("'{}' must be letters, digits, '-' or '_'", n.id),
                ));
            }
            if !seen.insert(n.id.clone()) {
                return Err(invalid(
                    &format!("{key}.id"),
                    format!("node '{}' is listed twice", n.id),
                ));
            }
            if !n.url.starts_with("https://") {
                return Err(invalid(
                    &format!("{key}.url"),
                    format!("must be an https:// address, found '{}'", n.url),
                ));
            }
        }
        let sec = &self.secure;
        if let Some(url) = &sec.helper_url {
            if !url.starts_with("https://") {
                return Err(invalid(
                    "secure.helper_url",
                    format!("must be an https:// address, found '{url}'"),
                ));
            }
            if sec.verify_key.is_none() {
                return Err(invalid(
                    "secure.verify_key",
                    "a helper needs the verification key the coordinator shares with it".into(),
                ));
            }
        }
        if let Some(bits) = sec.bits
            && !(2..=secagg::vdaf::MAX_BITS).contains(&bits)
        {
            return Err(invalid(
                "secure.bits",
                format!(
                    "must be between 2 and {}, found {bits}",
                    secagg::vdaf::MAX_BITS
                ),
            ));
        }
        if sec.max_units == 0 {
            return Err(invalid(
                "secure.max_units",
                "must be at least 1 (a public upper bound on the units one node holds)".into(),
            ));
        }
        if !(0.0..1.0).contains(&sec.max_missing_share) {
            return Err(invalid(
                "secure.max_missing_share",
                format!("must lie in [0, 1), found {}", sec.max_missing_share),
            ));
        }
        if let Err(message) = sec.window() {
            return Err(invalid("secure", message));
        }
        for (i, r) in self.researchers.iter().enumerate() {
            if r.token_sha256.len() != 64 || !r.token_sha256.chars().all(|c| c.is_ascii_hexdigit())
            {
                return Err(invalid(
                    &format!("researchers[{i}].token_sha256"),
                    "must be 64 hex digits: the sha256 of the token (printf %s TOKEN | sha256sum)"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    pub fn retry(&self) -> crate::node_client::RetryPolicy {
        crate::node_client::RetryPolicy {
            timeout: Duration::from_secs_f64(self.fanout.timeout_seconds),
            attempts: self.fanout.attempts,
            initial_backoff: Duration::from_millis(self.fanout.backoff_ms),
        }
    }
}
