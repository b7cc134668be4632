//! `stroom`: the one binary of the federation.

mod bench;
mod certs;
mod client;
mod demo;
mod governance;
mod rounds;
mod sandbox;
mod synth;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "stroom",
    version,
    about = "Privacy-preserving federated indicators for Dutch secure youth care"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole federation on loopback over synthetic data and write national indicators.
    Demo {
        #[arg(long, default_value = "stroom-demo")]
        out: PathBuf,
        #[arg(long, default_value_t = 11)]
        providers: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Indicator catalog to run (default: the shipped one).
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// Keep the federation and the dashboard running afterwards and print the dashboard's
        /// address; Ctrl-C stops.
        #[arg(long)]
        serve: bool,
        /// Per-node noise (every provider adds the full noise) instead of secure aggregation
        /// with the helper.
        #[arg(long)]
        per_node: bool,
        /// Run the first provider over this PostgreSQL (a `postgres://` URL; its records are
        /// written into schema `p01`), the others over Parquet.
        #[arg(long, value_name = "URL")]
        postgres: Option<String>,
    },
    /// Measure the node's DP evaluation, the federation's fan-out and the estimates' accuracy;
    /// each prints a table and writes JSON (figures in BENCHMARKS.md). Use a release build.
    Bench {
        #[command(subcommand)]
        action: BenchAction,
    },
    /// Check indicator catalogs.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Generate deterministic synthetic records per provider (Parquet), plus panel responses.
    Synth {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 11)]
        providers: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Multiply volumes (e.g. 1000 for benchmarks).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Also write one provider's records into this PostgreSQL (a `postgres://` URL or
        /// `key=value` pairs), in a schema named after the provider (`p01`), with COPY.
        #[arg(long, value_name = "URL")]
        postgres: Option<String>,
        /// The provider written into PostgreSQL.
        #[arg(long, default_value = "P01", requires = "postgres")]
        postgres_provider: String,
    },
    /// Keys made by their owners: the federation CA, each party's keys and signing request, the
    /// CA's signature, the aggregators' shared key. Never replaces a key; keys are owner-only.
    Certs(certs::cli::CertsArgs),
    /// Run a provider node (HTTPS), or check its configuration and data with `node check`.
    Node {
        #[command(subcommand)]
        action: Option<NodeAction>,
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
    /// Create, list and revoke API tokens in a coordinator's store (run on the coordinator's host).
    Token {
        #[command(subcommand)]
        action: TokenAction,
        /// The coordinator's configuration (for the store's location).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
    /// Start a run of an approved indicator at the coordinator and wait for its national results.
    Run {
        indicator: String,
        /// A quarter or a range: 2024Q1 or 2024Q1:2024Q4.
        #[arg(long)]
        period: String,
        #[command(flatten)]
        connection: client::Connection,
    },
    /// Run every approved indicator for one quarter (a publication round) and follow it; annual
    /// figures come with the fourth quarter's round, over the whole year. Run it again to resume:
    /// finished runs are kept, failed ones run again. The results stay under embargo until
    /// reviewers release the round.
    Round {
        /// The quarter, e.g. 2024Q3.
        quarter: String,
        #[command(flatten)]
        connection: client::Connection,
    },
    /// Release a finished round from embargo, as a reviewer; with `publication.required_releases`
    /// reviewers' releases of the same figures, they become public.
    Release {
        quarter: String,
        #[command(flatten)]
        connection: client::Connection,
    },
    /// Attach the expert council's interpretation (duiding) of an indicator for a quarter (or a
    /// year, for annual figures), as a reviewer; it is public with the round.
    Interpret {
        indicator: String,
        period: String,
        #[arg(long)]
        nl: Option<String>,
        #[arg(long)]
        en: Option<String>,
        #[command(flatten)]
        connection: client::Connection,
    },
    /// A finished run's national results.
    Results {
        run: String,
        #[arg(long, default_value = "table", value_parser = ["table", "csv", "json"])]
        format: String,
        #[command(flatten)]
        connection: client::Connection,
    },
    /// Each node's privacy budget, as the nodes report it through the coordinator.
    Budget {
        /// Print the budget plan instead: what a year of rounds over the approved catalog costs
        /// each node against its budget.
        #[arg(long)]
        plan: bool,
        #[command(flatten)]
        connection: client::Connection,
    },
    /// Propose a new indicator (TOML) for review, with the purpose it serves.
    Propose {
        file: PathBuf,
        #[arg(long)]
        purpose: String,
        #[command(flatten)]
        connection: client::Connection,
    },
    /// List proposals and their state.
    Proposals {
        #[command(flatten)]
        connection: client::Connection,
    },
    /// Evaluate a proposal on synthetic providers: the output's shape and noise, no budget spent.
    DryRun {
        proposal: String,
        /// A quarter or range within the synthetic data (default: its last quarter).
        #[arg(long)]
        period: Option<String>,
        #[arg(long, default_value = "table", value_parser = ["table", "csv", "json"])]
        format: String,
        #[command(flatten)]
        connection: client::Connection,
    },
    /// Approve a proposal as a reviewer: signs its exact content with your ed25519 key.
    Approve {
        proposal: String,
        /// Your signing key (from `stroom keygen`).
        #[arg(long, env = "STROOM_SIGNING_KEY")]
        key: PathBuf,
        #[command(flatten)]
        connection: client::Connection,
    },
    /// Reject a proposal as a reviewer, with the reason.
    Reject {
        proposal: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        connection: client::Connection,
    },
    /// Make a reviewer's ed25519 signing key; prints the public key to register and to give nodes.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Check hash-chained audit logs.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Run the coordinator: researcher API, fan-out to the nodes over mutual TLS, publication.
    Coordinator {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the secure-aggregation helper (HTTPS, mutual TLS: it answers the coordinator only).
    Helper {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyAction {
    /// Validate every indicator file in DIR (default: the shipped catalog); exit 1 on any problem.
    Check { dir: Option<PathBuf> },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Make a token; it is printed once and only its sha256 is stored.
    Create {
        #[arg(long, value_parser = ["researcher", "reviewer", "admin"])]
        role: String,
        #[arg(long)]
        name: String,
        /// When it stops working: a duration (90d, 12h) or a date (2027-01-01).
        #[arg(long)]
        expires: Option<String>,
        /// A reviewer's ed25519 public key (hex, from `stroom keygen`): approvals must be signed
        /// with its private half.
        #[arg(long)]
        public_key: Option<String>,
    },
    /// List tokens (id, name, role, expiry, revocation); never the tokens themselves.
    List,
    /// Revoke the token with this id.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Verify every entry of FILE in order; name the first edited, deleted, inserted or moved
    /// entry and exit 1. With --head, also check the log ends at that hash (catches truncation).
    Verify {
        file: PathBuf,
        #[arg(long)]
        head: Option<String>,
    },
}

#[derive(Subcommand)]
enum BenchAction {
    /// DP evaluation time and peak memory per aggregate kind on one synthetic provider, against
    /// the plain two-level DataFusion aggregate (--scale 5800 ≈ 10 million measure rows).
    Node {
        #[arg(long, default_value_t = 100.0)]
        scale: f64,
        /// Use this provider's folder (from `stroom synth`) instead of synthesizing one.
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, default_value_t = 7)]
        repetitions: usize,
        #[arg(long, default_value = "bench-node.json")]
        out: PathBuf,
        /// Also evaluate over PostgreSQL: the provider's records are written into this database
        /// (schema `p01`, replaced) and each kind is timed reading them from there.
        #[arg(long, value_name = "URL")]
        postgres: Option<String>,
    },
    /// Run latency, coordinator CPU and memory for one run against N nodes on loopback (real
    /// HTTPS with mutual TLS; the nodes share a child process).
    Federation {
        /// Node counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
        nodes: Vec<usize>,
        #[arg(long, default_value_t = 9)]
        repeats: usize,
        #[arg(long, default_value = "care.unique_youths")]
        indicator: String,
        #[arg(long, default_value = "2024Q1")]
        quarter: String,
        /// When every node answers in the last measurement, after the request arrived (it works
        /// first, then holds the answer), as a node on its own machine whose work takes that long:
        /// the run should end soon after it.
        #[arg(long, default_value_t = 1000)]
        node_delay_ms: u64,
        #[arg(long)]
        catalog: Option<PathBuf>,
        #[arg(long, default_value = "bench-federation.json")]
        out: PathBuf,
        /// Secure aggregation: the helper as its own process, nodes answering with signed Prio3
        /// reports; adds the secure combination with a fresh helper, the helper's CPU and memory
        /// and the bytes per report.
        #[arg(long)]
        secure: bool,
        /// t as a share of the nodes in secure runs.
        #[arg(long, default_value_t = 0.1)]
        max_missing_share: f64,
        /// A fixed entry width for secure reports (the coordinator's `[secure] bits`) instead of
        /// the one planned from the public bound on units: for a baseline at 32 bits.
        #[arg(long)]
        bits: Option<u32>,
    },
    /// Error of the national estimates against the truth and against central DP at the same cost,
    /// per catalog indicator, over many repetitions of the noise.
    Accuracy {
        #[arg(long, default_value_t = 11)]
        providers: usize,
        #[arg(long, default_value_t = 100)]
        repetitions: usize,
        #[arg(long, default_value = "2024Q1:2024Q4")]
        period: String,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long)]
        catalog: Option<PathBuf>,
        #[arg(long, default_value = "bench-accuracy.json")]
        out: PathBuf,
        /// t of the secure-aggregation figures: providers that may drop out (each adds
        /// 1/(providers − t) of the noise).
        #[arg(long, default_value_t = 1)]
        max_missing: u32,
    },
    /// (Used by `bench federation`.) Serve N nodes; print where; stop when stdin closes.
    #[command(hide = true)]
    ServeNodes {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        nodes: usize,
        #[arg(long)]
        catalog: PathBuf,
        #[arg(long)]
        indicator: String,
        #[arg(long)]
        quarter: String,
        /// Configure the nodes for secure aggregation (keys from DIR/certs).
        #[arg(long)]
        secure: bool,
    },
}

#[derive(Subcommand)]
enum NodeAction {
    /// Validate configuration, catalog and data; print row counts; start nothing.
    Check,
    /// Accept a signed indicator on this node (when governance.require_acceptance is set): shows
    /// it as this node verifies it and records acceptance of exactly that content.
    Accept { indicator: String },
}

fn default_catalog() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies/catalog")
}

/// The log filter: STROOM_LOG, else RUST_LOG, else `default`.
fn log_filter(default: &str) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    EnvFilter::try_from_env("STROOM_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default))
}

/// Logs to stderr at `default` unless STROOM_LOG (or RUST_LOG) says otherwise.
fn init_tracing(default: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(log_filter(default))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// The demo's console shows its steps, the progress bar and the table; its servers' logs go to
/// `file` instead (falling back to stderr when the file cannot be made).
fn init_tracing_to_file(default: &str, file: &std::path::Path) {
    let opened = file
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
        });
    match opened {
        Ok(f) => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(log_filter(default))
                .with_writer(std::sync::Mutex::new(f))
                .with_ansi(false)
                .try_init();
        }
        Err(e) => {
            eprintln!(
                "cannot write the log file {}: {e}; logging to stderr",
                file.display()
            );
            init_tracing(default);
        }
    }
}

/// Commands that only read and print. For them a closed pipe (`stroom node check | head`) ends the
/// process quietly, as it ends `cat`, instead of a panic in `println!`. Everything else keeps Rust's
/// default of ignoring SIGPIPE: a server, the demo or a benchmark must see a peer or child that went
/// away as an error to handle, and a command that writes files must not die half-way.
fn prints_only(command: &Command) -> bool {
    matches!(
        command,
        Command::Policy { .. }
            | Command::Node {
                action: Some(NodeAction::Check),
                ..
            }
            | Command::Token {
                action: TokenAction::List,
                ..
            }
            | Command::Results { .. }
            | Command::Budget { .. }
            | Command::Proposals { .. }
            | Command::Audit { .. }
    )
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if prints_only(&cli.command) {
        // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
        #[cfg(unix)]
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // A benchmark's output is its table; a log line per run would bury it. The demo's logs go to
    // its folder, so the console shows progress.
    match &cli.command {
        Command::Bench { .. } => init_tracing("warn"),
        Command::Demo { out, .. } => init_tracing_to_file("info", &out.join("logs/stroom.log")),
        _ => init_tracing("info"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<std::process::ExitCode> {
    match cli.command {
        Command::Demo {
            out,
            providers,
            seed,
            catalog,
            serve,
            per_node,
            postgres,
        } => {
            demo::run(demo::DemoOptions {
                out,
                providers,
                seed,
                catalog: catalog.unwrap_or_else(default_catalog),
                serve,
                per_node,
                postgres,
            })
            .await?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Policy {
            action: PolicyAction::Check { dir },
        } => policy_check(dir.unwrap_or_else(default_catalog)).await,
        Command::Synth {
            out,
            providers,
            seed,
            scale,
            postgres,
            postgres_provider,
        } => {
            let opts = synth::SynthOptions {
                out: out.clone(),
                providers,
                seed,
                scale,
            };
            let started = std::time::Instant::now();
            let manifest = tokio::task::spawn_blocking(move || {
                synth::generate(&opts, |line| eprintln!("  {line}"))
            })
            .await??;
            println!(
                "wrote {} providers and the panel to {} in {:.1}s (coverage {}, seed {}, scale {})",
                manifest.providers.len(),
                out.display(),
                started.elapsed().as_secs_f64(),
                manifest.coverage,
                manifest.seed,
                manifest.scale
            );
            if let Some(url) = postgres {
                anyhow::ensure!(
                    manifest.providers.contains(&postgres_provider),
                    "--postgres-provider {postgres_provider}: no such provider (have {})",
                    manifest.providers.join(", ")
                );
                let schema = postgres_provider.to_lowercase();
                let rows =
                    synth::postgres::load(&url, &out.join(&postgres_provider), &schema, |line| {
                        eprintln!("  {line}")
                    })
                    .await?;
                println!(
                    "wrote {postgres_provider} into PostgreSQL schema {schema}: {} tables, {} rows",
                    rows.len(),
                    rows.values().sum::<u64>()
                );
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Bench { action } => {
            match action {
                BenchAction::Node {
                    scale,
                    data,
                    repetitions,
                    out,
                    postgres,
                } => {
                    bench::node::run(bench::node::NodeBenchOptions {
                        scale,
                        data,
                        repetitions,
                        out,
                        postgres,
                    })
                    .await?;
                }
                BenchAction::Federation {
                    nodes,
                    repeats,
                    indicator,
                    quarter,
                    node_delay_ms,
                    catalog,
                    out,
                    secure,
                    max_missing_share,
                    bits,
                } => {
                    bench::federation::run(bench::federation::FederationBenchOptions {
                        secure,
                        max_missing_share,
                        bits,
                        nodes,
                        repeats,
                        indicator,
                        quarter,
                        node_delay_ms,
                        catalog: catalog.unwrap_or_else(default_catalog),
                        out,
                    })
                    .await?;
                }
                BenchAction::Accuracy {
                    providers,
                    repetitions,
                    period,
                    seed,
                    catalog,
                    out,
                    max_missing,
                } => {
                    bench::accuracy::run(bench::accuracy::AccuracyBenchOptions {
                        providers,
                        repetitions,
                        period,
                        seed,
                        catalog: catalog.unwrap_or_else(default_catalog),
                        out,
                        max_missing,
                    })
                    .await?;
                }
                BenchAction::ServeNodes {
                    dir,
                    nodes,
                    catalog,
                    indicator,
                    quarter,
                    secure,
                } => {
                    bench::federation::serve_nodes(bench::federation::ServeNodesOptions {
                        dir,
                        nodes,
                        catalog,
                        indicator,
                        quarter,
                        secure,
                    })
                    .await?;
                }
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Certs(args) => certs::cli::run(args),
        Command::Coordinator { config } => coordinator_serve(config).await,
        Command::Helper { config } => helper_serve(config).await,
        Command::Run {
            indicator,
            period,
            connection,
        } => client::run(&connection, &indicator, &period).await,
        Command::Results {
            run,
            format,
            connection,
        } => client::results(&connection, &run, &format).await,
        Command::Round {
            quarter,
            connection,
        } => rounds::round(&connection, &quarter).await,
        Command::Release {
            quarter,
            connection,
        } => rounds::release(&connection, &quarter).await,
        Command::Interpret {
            indicator,
            period,
            nl,
            en,
            connection,
        } => {
            rounds::interpret(
                &connection,
                &indicator,
                &period,
                nl.as_deref(),
                en.as_deref(),
            )
            .await
        }
        Command::Budget {
            plan: false,
            connection,
        } => client::budget(&connection).await,
        Command::Budget {
            plan: true,
            connection,
        } => client::budget_plan(&connection).await,
        Command::Propose {
            file,
            purpose,
            connection,
        } => governance::propose(&connection, &file, &purpose).await,
        Command::Proposals { connection } => governance::proposals(&connection).await,
        Command::DryRun {
            proposal,
            period,
            format,
            connection,
        } => governance::dry_run(&connection, &proposal, period.as_deref(), &format).await,
        Command::Approve {
            proposal,
            key,
            connection,
        } => governance::approve(&connection, &proposal, &key).await,
        Command::Reject {
            proposal,
            reason,
            connection,
        } => governance::reject(&connection, &proposal, &reason).await,
        Command::Keygen { out } => governance::keygen(&out),
        Command::Token { action, config } => {
            let config = config.context("--config FILE (the coordinator's) is required")?;
            token_command(action, &config)
        }
        Command::Audit {
            action: AuditAction::Verify { file, head },
        } => {
            let verified = match &head {
                Some(h) => policies::audit::verify_with_head(&file, h),
                None => policies::audit::verify_file(&file),
            };
            match verified {
                Ok(v) => {
                    println!(
                        "{}: {} entries, chain intact; head {}",
                        file.display(),
                        v.entries,
                        v.head
                    );
                    Ok(std::process::ExitCode::SUCCESS)
                }
                Err(e @ policies::audit::AuditError::Io { .. }) => Err(e.into()),
                Err(e) => {
                    println!("TAMPERED: {e}");
                    Ok(std::process::ExitCode::FAILURE)
                }
            }
        }
        Command::Node { action, config } => {
            let config = config.context("--config FILE is required")?;
            let cfg = node::config::NodeConfig::load(&config)?;
            match action {
                Some(NodeAction::Check) => node_check(cfg).await,
                Some(NodeAction::Accept { indicator }) => {
                    governance::node_accept(&cfg, &indicator).await
                }
                None => node_serve(cfg).await,
            }
        }
    }
}

fn token_command(action: TokenAction, config: &std::path::Path) -> Result<std::process::ExitCode> {
    use coordinator::store::{Role, RunStore, parse_expiry};
    let cfg = coordinator::config::CoordinatorConfig::load(config)?;
    let store = RunStore::open(&cfg.store.path)?;
    let audit = policies::audit::AuditLog::open(&cfg.audit.path)?;
    let actor = format!(
        "{} (local CLI)",
        std::env::var("USER").unwrap_or_else(|_| "operator".into())
    );
    match action {
        TokenAction::Create {
            role,
            name,
            expires,
            public_key,
        } => {
            let role = Role::parse(&role).context("role")?;
            anyhow::ensure!(!name.trim().is_empty(), "--name must not be empty");
            if let Some(k) = &public_key {
                anyhow::ensure!(
                    role == Role::Reviewer,
                    "--public-key belongs to reviewers: they sign approvals"
                );
                policies::governance::parse_public_key(k).context("--public-key")?;
            }
            let expires = expires
                .map(|e| parse_expiry(&e, store.clock().now()))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--expires {e}"))?;
            let (info, token) = store.create_token(&name, role, expires)?;
            if let Some(k) = &public_key {
                store.set_reviewer_key(&name, k)?;
            }
            audit.append(policies::audit::AuditEvent {
                actor,
                action: "token.create".into(),
                parameters: serde_json::json!({ "token": info.id, "name": info.name, "role": role.as_str(), "expires_at": info.expires_at, "public_key": public_key }),
                outcome: "created".into(),
                ..Default::default()
            })?;
            eprintln!(
                "token {} for {} ({}), expires {}; shown once, store it now:",
                info.id,
                info.name,
                role.as_str(),
                info.expires_at.as_deref().unwrap_or("never")
            );
            println!("{token}");
        }
        TokenAction::List => {
            println!(
                "{:<10} {:<24} {:<11} {:<22} {:<22} revoked",
                "id", "name", "role", "created", "expires"
            );
            for t in store.list_tokens()? {
                println!(
                    "{:<10} {:<24} {:<11} {:<22} {:<22} {}",
                    t.id,
                    t.name,
                    t.role.as_str(),
                    &t.created_at[..t.created_at.len().min(19)],
                    t.expires_at.as_deref().unwrap_or("never"),
                    t.revoked_at.as_deref().unwrap_or("-")
                );
            }
        }
        TokenAction::Revoke { id } => {
            let revoked = store.revoke_token(&id)?;
            audit.append(policies::audit::AuditEvent {
                actor,
                action: "token.revoke".into(),
                parameters: serde_json::json!({ "token": id }),
                outcome: if revoked {
                    "revoked".into()
                } else {
                    "refused: no such active token".into()
                },
                ..Default::default()
            })?;
            anyhow::ensure!(revoked, "no active token with id {id}");
            println!("token {id} revoked");
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn coordinator_serve(config: PathBuf) -> Result<std::process::ExitCode> {
    let cfg = coordinator::config::CoordinatorConfig::load(&config)?;
    let catalog = policies::Catalog::load(&cfg.catalog_dir)
        .await
        .with_context(|| format!("catalog {}", cfg.catalog_dir.display()))?;
    let mut runner = coordinator::runs::Runner::new(&cfg, catalog)?;
    runner
        .load_reference(&cfg)
        .await
        .context("the reference data")?;
    let gov = &cfg.governance;
    if gov.dry_run_providers > 0 {
        runner.sandbox = Some(Arc::new(sandbox::SyntheticProviders::new(
            &gov.dry_run_dir,
            gov.dry_run_providers,
            gov.dry_run_seed,
        )));
    }
    let version = runner
        .reload_catalog()
        .await
        .context("the approved catalog in the run store")?;
    tracing::info!(catalog_version = version, "catalog loaded");
    let running = coordinator::server::start(&cfg, Arc::new(runner)).await?;
    // Printed on stdout for scripts and tests that start a coordinator on port 0.
    println!("coordinator listening on https://{}", running.addr);
    tracing::info!(addr = %running.addr, nodes = cfg.nodes.len(), "serving");
    until_interrupted().await?;
    running.shutdown().await;
    Ok(std::process::ExitCode::SUCCESS)
}

async fn helper_serve(config: PathBuf) -> Result<std::process::ExitCode> {
    let cfg = helper::config::HelperConfig::load(&config)?;
    let helper = Arc::new(helper::Helper::open(cfg)?);
    let running = helper::server::start(helper.clone()).await?;
    // Printed on stdout for scripts and tests that start a helper on port 0.
    println!("helper listening on https://{}", running.addr);
    tracing::info!(addr = %running.addr, public_key = %helper.public_key_hex(), "serving");
    until_interrupted().await?;
    running.shutdown().await;
    Ok(std::process::ExitCode::SUCCESS)
}

async fn until_interrupted() -> Result<()> {
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    tracing::info!("shutting down");
    Ok(())
}

async fn policy_check(dir: PathBuf) -> Result<std::process::ExitCode> {
    match policies::Catalog::load(&dir).await {
        Ok(c) => {
            let queries = c
                .indicators
                .values()
                .filter(|i| i.query().is_some())
                .count();
            println!(
                "{}: {} indicators OK ({} queries, {} derived)",
                dir.display(),
                c.indicators.len(),
                queries,
                c.indicators.len() - queries
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        Err(policies::CatalogError::Invalid(problems)) => {
            for p in &problems {
                println!("{p}");
            }
            println!("{} problem(s) found in {}", problems.len(), dir.display());
            Ok(std::process::ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

async fn node_check(cfg: node::config::NodeConfig) -> Result<std::process::ExitCode> {
    let node = node::Node::open(cfg).await?;
    println!(
        "node {}: configuration, catalog and data are valid",
        node.config.node_id
    );
    let tables = node.tables().await?;
    // The plain digest is for this console only; answers carry the keyed identity.
    println!("  data snapshot {}", tables.snapshot);
    println!("  answers name it {}", node.snapshot_id(&tables.snapshot));
    println!("  coverage {}", node.config.data.coverage);
    match &node.secure {
        // Compare with the helper operator's published fingerprint, out of band.
        Some(keys) => {
            for (role, (id, key)) in ["helper key", "next helper key"].iter().zip(&keys.helpers) {
                println!("  {role} {id} ({})", key.fingerprint());
            }
            println!(
                "  secure aggregation floors: n − t ≥ {}, t ≤ {:.3}·n",
                node.config.secure.min_honest, node.config.secure.max_missing_share
            );
        }
        None => println!("  secure aggregation: off (per-node answers only)"),
    }
    for t in &tables.report {
        match &t.source {
            Some(src) => println!("  {:<22} {:>12} rows  {}", t.table, t.rows, src.display()),
            None => println!("  {:<22} {:>12}       (not served)", t.table, "-"),
        }
    }
    let b = node.budget()?;
    println!(
        "  budget: ρ {:.4} per data {} ({} releases so far)",
        b.rho_budget, b.granularity, b.releases
    );
    for p in &b.periods {
        println!(
            "    {}: ρ {:.4} spent, {:.4} left",
            p.period, p.rho_spent, p.rho_remaining
        );
    }
    println!(
        "  catalog: {} approved indicators from {}",
        node.catalog.indicators.len(),
        node.catalog.dir.display()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

async fn node_serve(cfg: node::config::NodeConfig) -> Result<std::process::ExitCode> {
    let id = cfg.node_id.clone();
    let ops_listen = cfg.ops.listen.clone();
    let node = Arc::new(node::Node::open(cfg).await?);
    let ops = match &ops_listen {
        Some(listen) => {
            let ops = node::server::start_ops(node.clone(), listen).await?;
            println!("node {id} health and metrics on http://{}", ops.addr);
            Some(ops)
        }
        None => None,
    };
    let running = node::server::start(node).await?;
    // Printed on stdout for scripts and tests that start a node on port 0.
    println!("node {id} listening on https://{}", running.addr);
    tracing::info!(node = %id, addr = %running.addr, "serving");
    until_interrupted().await?;
    running.shutdown().await;
    if let Some(ops) = ops {
        ops.shutdown().await;
    }
    Ok(std::process::ExitCode::SUCCESS)
}
