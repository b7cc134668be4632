//! Node configuration: built-in defaults, then a TOML file, then `STROOM_`-prefixed environment
//! variables (`STROOM_BUDGET__RHO_PER_PERIOD=2`). Relative paths are resolved against the folder
//! of the config file, so a config and its data can move together.

use policies::Period;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Provider id, e.g. `P01`. Named in every answer and in the node's certificate.
    pub node_id: String,
    /// `host:port`; port 0 picks a free port (printed at start-up).
    pub listen: String,
    pub catalog_dir: PathBuf,
    pub data: DataConfig,
    pub ledger: LedgerConfig,
    pub audit: AuditConfig,
    pub budget: BudgetConfig,
    pub tls: TlsConfig,
    pub limits: LimitsConfig,
    #[serde(default)]
    pub governance: GovernanceConfig,
    #[serde(default)]
    pub ops: OpsConfig,
    #[serde(default)]
    pub secure: SecureConfig,
    #[serde(default)]
    pub testing: TestingConfig,
}

/// Secure aggregation: the node answers a secure request with Prio3 shares of its vector carrying
/// only its share of the noise. Without `helper_key` and `signing_key` it refuses such requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecureConfig {
    /// File with the helper's HPKE public key (hex), from the helper's operator: never taken
    /// from the coordinator.
    #[serde(default)]
    pub helper_key: Option<PathBuf>,
    /// During a helper key rotation: the helper's next public key, from the helper's operator
    /// (fingerprint compared out of band). The node seals to whichever of the two the request
    /// names, and to no other.
    #[serde(default)]
    pub helper_next_key: Option<PathBuf>,
    /// File with this node's ed25519 report-signing key (`stroom keygen`); the helper lists its
    /// public key.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// The fewest honest nodes (n − t) a run may count on; a run counting on fewer is refused
    /// whatever the coordinator declares. Each share is 1/(n − t) of the central noise, so with
    /// c colluding nodes in a collection this node keeps at least (n − t − c)/(n − t) of its ρ.
    #[serde(default = "default_min_honest")]
    pub min_honest: u32,
    /// The largest share of a run's n it may declare missing or cheating (t ≤ ⌊share·n⌋): a run
    /// is collected over as few as n − t reports, so no coordinator may declare most of the
    /// federation absent and collect over a handful.
    #[serde(default = "default_max_missing_share")]
    pub max_missing_share: f64,
    /// Ceiling on the ρ this node's own share gives alone (both aggregators colluding); above it
    /// the node adds more than its share. On by default: with n − t honest nodes a share alone
    /// gives about (n − t)·ρ, which in a large federation would protect little.
    #[serde(default = "default_max_local_rho")]
    pub max_local_rho: Option<f64>,
    /// A public upper bound on the units (youths) this node may hold. The entry width of a secure
    /// report is decided from it, never from the records; cells are clamped into the range it
    /// gives, and the node states it in its answer. Too high costs bits, too low biases counts.
    #[serde(default = "default_max_units")]
    pub max_units: u64,
}

fn default_min_honest() -> u32 {
    secagg::floors::DEFAULT_MIN_HONEST
}

fn default_max_missing_share() -> f64 {
    secagg::floors::DEFAULT_MAX_MISSING_SHARE
}

pub use secagg::floors::DEFAULT_MAX_LOCAL_RHO;

fn default_max_local_rho() -> Option<f64> {
    Some(DEFAULT_MAX_LOCAL_RHO)
}

fn default_max_units() -> u64 {
    policies::wire::DEFAULT_MAX_UNITS
}

impl SecureConfig {
    pub fn floors(&self) -> secagg::floors::RunFloors {
        secagg::floors::RunFloors {
            min_honest: self.min_honest,
            max_missing_share: self.max_missing_share,
        }
    }
}

impl Default for SecureConfig {
    fn default() -> Self {
        SecureConfig {
            helper_key: None,
            helper_next_key: None,
            signing_key: None,
            min_honest: default_min_honest(),
            max_missing_share: default_max_missing_share(),
            max_local_rho: default_max_local_rho(),
            max_units: default_max_units(),
        }
    }
}

/// A plain-HTTP listener for liveness probes and metrics scrapers, which hold no client
/// certificate. It serves `/healthz` and `/metrics` only: no data, no budget changes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    /// `host:port`, e.g. `0.0.0.0:9090` in a pod; unset means no such listener.
    #[serde(default)]
    pub listen: Option<String>,
}

/// The node's own say over which indicators it answers, beyond its local catalog folder:
/// indicators approved through the coordinator count only when enough reviewers this node trusts
/// signed them, and the operator may still require local acceptance, deny, or cap their cost.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernanceConfig {
    /// Where to fetch signed catalog versions (`GET /v1/catalog`); none means local catalog only.
    #[serde(default)]
    pub coordinator_url: Option<String>,
    /// Reviewer public keys (ed25519, hex) whose signatures this node accepts.
    #[serde(default)]
    pub reviewer_keys: Vec<policies::governance::TrustedKey>,
    /// Distinct trusted reviewer signatures an indicator needs.
    #[serde(default = "default_required_signatures")]
    pub required_signatures: usize,
    /// Answer a signed indicator only after `stroom node accept ID` on this node.
    #[serde(default)]
    pub require_acceptance: bool,
    /// Indicator ids this node never answers, whoever approved them.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Highest ρ one release of any indicator may cost here.
    #[serde(default)]
    pub max_rho: Option<f64>,
    /// Per-indicator caps on ρ per release (a list: indicator ids contain dots, which the
    /// configuration layer would read as nesting in a table's keys).
    #[serde(default)]
    pub caps: Vec<CostCap>,
    #[serde(default = "default_fetch_timeout_ms")]
    pub fetch_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostCap {
    pub indicator: String,
    pub max_rho: f64,
}

fn default_required_signatures() -> usize {
    2
}

fn default_fetch_timeout_ms() -> u64 {
    5000
}

impl Default for GovernanceConfig {
    fn default() -> Self {
        GovernanceConfig {
            coordinator_url: None,
            reviewer_keys: Vec::new(),
            required_signatures: default_required_signatures(),
            require_acceptance: false,
            deny: Vec::new(),
            max_rho: None,
            caps: Default::default(),
            fetch_timeout_ms: default_fetch_timeout_ms(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Folder holding one `TABLE.parquet` (or `TABLE.csv`, or a `TABLE/` folder of Parquet files)
    /// per data-model table.
    pub dir: PathBuf,
    /// The quarters the records cover; a run outside them is refused. Public, set by the operator.
    pub coverage: Period,
    /// Tables this node must serve; the others are registered empty.
    pub tables: Vec<String>,
    /// Where the records are: files in `dir` (the default) or the provider's PostgreSQL.
    #[serde(default)]
    pub source: SourceKind,
    /// The database, when `source = "postgres"`.
    #[serde(default)]
    pub postgres: Option<PostgresConfig>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    #[default]
    Files,
    Postgres,
}

/// The provider's PostgreSQL, read-only. The connection (with its password) is read from a file
/// or an environment variable and never written to logs, the audit log or errors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// File holding the connection: libpq `key=value` pairs or a `postgres://` URL.
    #[serde(default)]
    pub connection_file: Option<PathBuf>,
    /// Or the environment variable holding it.
    #[serde(default)]
    pub connection_env: Option<String>,
    /// `verify-full` (the default: the server's certificate must chain to `sslrootcert` and name
    /// the host), `verify-ca`, `require`, or `disable` (a local socket or test cluster only).
    #[serde(default = "verify_full")]
    pub sslmode: String,
    /// CA certificate (PEM) the database server's certificate must chain to.
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// Per data-model table: the provider's table or view and its column names, where they differ.
    #[serde(default)]
    pub tables: std::collections::BTreeMap<String, TableMapping>,
}

fn verify_full() -> String {
    "verify-full".into()
}

/// Where one data-model table lives in the provider's database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableMapping {
    /// The provider's table or view (`schema.name` or `name`); a query is given as a view.
    pub from: String,
    /// Data-model column → the provider's column, for the ones named differently.
    #[serde(default)]
    pub columns: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    pub path: PathBuf,
}

/// The node's append-only, hash-chained audit log (JSON lines; `stroom audit verify FILE`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    pub path: PathBuf,
}

/// The periods of the *data* a budget is kept for: a release is charged to every one its period
/// covers, whenever it is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    Year,
    Quarter,
    /// One budget for all of the node's data.
    Lifetime,
}

impl BudgetPeriod {
    pub fn name(self) -> &'static str {
        match self {
            BudgetPeriod::Year => "year",
            BudgetPeriod::Quarter => "quarter",
            BudgetPeriod::Lifetime => "lifetime",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// ρ (zCDP) this node releases per data period, per youth.
    pub rho_per_period: f64,
    pub period: BudgetPeriod,
    /// Optional cap on the ρ of all releases together, whatever data periods they cover: bounds
    /// the loss of a youth whose records span many years.
    #[serde(default)]
    pub lifetime_rho: Option<f64>,
    /// δ used to state the spent ρ as (ε, δ)-DP.
    pub delta: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA whose certificates may connect as clients; when set, clients without one are refused.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_body_bytes: usize,
}

/// Fault injection for tests of the crash-safety of the ledger. Never set in production.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestingConfig {
    /// Sleep this long after the spend is recorded and before noise is drawn.
    pub pause_after_spend_ms: Option<u64>,
    /// Alter one byte of the leader's share after sharding: a cheating node whose report must
    /// fail verification and be excluded.
    #[serde(default)]
    pub corrupt_secure_report: bool,
    /// Fail every evaluation after the spend with this engine message (as a division by zero
    /// would say it): tests that such a failure leaves the node without its detail.
    #[serde(default)]
    pub fail_evaluation_with: Option<String>,
    /// Run the node's clock this many seconds off the system's (negative: behind), as a node
    /// with a wrong clock or a report kept back would look to the aggregators.
    #[serde(default)]
    pub clock_offset_secs: Option<i64>,
}

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

pub const DEFAULT_TABLES: &[&str] = &[
    "youth",
    "stay",
    "move",
    "restrictive_measure",
    "incident",
    "unit",
    "care_plan",
    "education",
];

const DEFAULTS: &str = r#"
listen = "127.0.0.1:7443"
catalog_dir = "catalog"
[data]
dir = "data"
tables = ["youth", "stay", "move", "restrictive_measure", "incident", "unit", "care_plan", "education"]
[ledger]
path = "ledger.sqlite"
[audit]
path = "audit.jsonl"
[budget]
rho_per_period = 5.0
period = "year"
delta = 1e-6
[tls]
cert = "node.crt"
key = "node.key"
[limits]
max_body_bytes = 65536
"#;

/// Top-level keys of the node's configuration.
const KEYS: &[&str] = &[
    "node_id",
    "listen",
    "catalog_dir",
    "data",
    "ledger",
    "audit",
    "budget",
    "tls",
    "limits",
    "governance",
    "ops",
    "secure",
    "testing",
];

impl NodeConfig {
    pub fn load(file: &Path) -> Result<NodeConfig, ConfigError> {
        let mut cfg: NodeConfig = service::config::load(file, DEFAULTS, KEYS, &["data.tables"])
            .map_err(
                |service::config::LoadError { file, message }| ConfigError::Load { file, message },
            )?;
        let base = file.parent().unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        cfg.validate(file)?;
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.catalog_dir);
        fix(&mut self.data.dir);
        if let Some(pg) = &mut self.data.postgres {
            for p in [&mut pg.connection_file, &mut pg.sslrootcert]
                .into_iter()
                .flatten()
            {
                fix(p);
            }
        }
        fix(&mut self.ledger.path);
        fix(&mut self.audit.path);
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        if let Some(ca) = &mut self.tls.client_ca {
            fix(ca);
        }
        for p in [
            &mut self.secure.helper_key,
            &mut self.secure.helper_next_key,
            &mut self.secure.signing_key,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
    }

    fn validate_postgres(
        &self,
        invalid: &dyn Fn(&'static str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let pg = match (self.data.source, &self.data.postgres) {
            (SourceKind::Files, None) => return Ok(()),
            (SourceKind::Files, Some(_)) => {
                return Err(invalid(
                    "data.postgres",
                    "is set but data.source is \"files\"; set data.source = \"postgres\" to use it"
                        .into(),
                ));
            }
            (SourceKind::Postgres, None) => {
                return Err(invalid(
                    "data.postgres",
                    "data.source = \"postgres\" needs a [data.postgres] section with connection_file or connection_env".into(),
                ));
            }
            (SourceKind::Postgres, Some(pg)) => pg,
        };
        if pg.connection_file.is_some() == pg.connection_env.is_some() {
            return Err(invalid(
                "data.postgres",
                "set exactly one of connection_file and connection_env".into(),
            ));
        }
        if !["disable", "require", "verify-ca", "verify-full"].contains(&pg.sslmode.as_str()) {
            return Err(invalid(
                "data.postgres.sslmode",
                format!(
                    "must be verify-full, verify-ca, require or disable, found '{}'",
                    pg.sslmode
                ),
            ));
        }
        for (table, mapping) in &pg.tables {
            let Some(def) = policies::cdm::table(table) else {
                return Err(invalid(
                    "data.postgres.tables",
                    format!("'{table}' is not a table of the data model"),
                ));
            };
            if mapping.from.trim().is_empty() {
                return Err(invalid(
                    "data.postgres.tables",
                    format!("'{table}': 'from' must name a table or view"),
                ));
            }
            for column in mapping.columns.keys() {
                if !def.columns.iter().any(|c| c.name == column) {
                    return Err(invalid(
                        "data.postgres.tables",
                        format!("'{table}' has no column '{column}' in the data model"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |key, message: String| ConfigError::Invalid {
            file: file.to_path_buf(),
            key,
            message,
        };
        if self.node_id.is_empty()
            || !self
                .node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                "node_id",
                format!(
                    "'{}' must be non-empty letters, digits, '-' or '_'",
                    self.node_id
                ),
            ));
        }
        if !(self.budget.rho_per_period.is_finite() && self.budget.rho_per_period > 0.0) {
            return Err(invalid(
                "budget.rho_per_period",
                format!(
                    "must be a positive number, found {}",
                    self.budget.rho_per_period
                ),
            ));
        }
        if let Some(cap) = self.budget.lifetime_rho
            && !(cap.is_finite() && cap > 0.0)
        {
            return Err(invalid(
                "budget.lifetime_rho",
                format!("must be a positive number, found {cap}"),
            ));
        }
        if !(self.budget.delta > 0.0 && self.budget.delta < 1.0) {
            return Err(invalid(
                "budget.delta",
                format!(
                    "must lie strictly between 0 and 1, found {}",
                    self.budget.delta
                ),
            ));
        }
        if self.limits.max_body_bytes < 256 {
            return Err(invalid(
                "limits.max_body_bytes",
                format!("must be at least 256, found {}", self.limits.max_body_bytes),
            ));
        }
        for t in &self.data.tables {
            if policies::cdm::table(t).is_none() {
                return Err(invalid(
                    "data.tables",
                    format!("'{t}' is not a table of the data model"),
                ));
            }
        }
        self.validate_postgres(&invalid)?;
        let g = &self.governance;
        if g.required_signatures == 0 {
            return Err(invalid(
                "governance.required_signatures",
                "must be at least 1".into(),
            ));
        }
        for k in &g.reviewer_keys {
            if let Err(e) = policies::governance::parse_public_key(&k.public_key) {
                return Err(invalid(
                    "governance.reviewer_keys",
                    format!("key of '{}': {e}", k.name),
                ));
            }
        }
        if let Some(url) = &g.coordinator_url
            && !url.starts_with("https://")
        {
            return Err(invalid(
                "governance.coordinator_url",
                format!("'{url}' must be an https:// address"),
            ));
        }
        if g.coordinator_url.is_some() && g.reviewer_keys.len() < g.required_signatures {
            return Err(invalid(
                "governance.reviewer_keys",
                format!(
                    "{} trusted key(s) can never give the {} signatures governance.required_signatures asks",
                    g.reviewer_keys.len(),
                    g.required_signatures
                ),
            ));
        }
        if g.coordinator_url.is_some() && self.tls.client_ca.is_none() {
            return Err(invalid(
                "governance.coordinator_url",
                "fetching from the coordinator needs tls.client_ca (the federation CA) to check its certificate".into(),
            ));
        }
        for (key, rho) in g
            .max_rho
            .iter()
            .map(|r| ("*", r))
            .chain(g.caps.iter().map(|c| (c.indicator.as_str(), &c.max_rho)))
        {
            if !(rho.is_finite() && *rho > 0.0) {
                return Err(invalid(
                    "governance.caps",
                    format!("cap for '{key}' must be a positive ρ, found {rho}"),
                ));
            }
        }
        if let Some(ops) = &self.ops.listen
            && ops.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(invalid(
                "ops.listen",
                format!("'{ops}' is not an address like 0.0.0.0:9090"),
            ));
        }
        let sec = &self.secure;
        if let Err(message) = sec.floors().validate() {
            return Err(invalid("secure", message));
        }
        if let Some(r) = sec.max_local_rho
            && !(r.is_finite() && r > 0.0)
        {
            return Err(invalid(
                "secure.max_local_rho",
                format!("must be a positive ρ, found {r}"),
            ));
        }
        if sec.max_units == 0 {
            return Err(invalid(
                "secure.max_units",
                "must be at least 1 (a public upper bound on the units this node holds)".into(),
            ));
        }
        if sec.helper_key.is_some() != sec.signing_key.is_some() {
            return Err(invalid(
                "secure.helper_key",
                "secure aggregation needs both secure.helper_key and secure.signing_key".into(),
            ));
        }
        if sec.helper_next_key.is_some() && sec.helper_key.is_none() {
            return Err(invalid(
                "secure.helper_next_key",
                "a next helper key is for a rotation: set secure.helper_key (the current one) too"
                    .into(),
            ));
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "listen",
                format!("'{}' is not an address like 127.0.0.1:7443", self.listen),
            ));
        }
        Ok(())
    }
}
