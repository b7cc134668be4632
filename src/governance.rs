//! Governance from the command line: `stroom keygen` for reviewers, `stroom propose`,
//! `stroom proposals`, `stroom dry-run`, `stroom approve` (signs locally: the private key never
//! leaves the reviewer's machine) and `stroom reject`, and a node operator's `stroom node accept`.

use crate::client::{Client, Connection};
use anyhow::{Context, Result, bail};
use policies::governance::SigningKey;
use std::path::Path;

/// Writes a new reviewer signing key (readable by its owner only) and prints the public key.
pub fn keygen(out: &Path) -> Result<std::process::ExitCode> {
    if out.exists() {
        bail!(
            "{} exists; refusing to overwrite a signing key",
            out.display()
        );
    }
    let (key, text) = SigningKey::generate()?;
    write_private(out, &format!("{text}\n"))?;
    let public = key.public_key_hex();
    let pub_path = out.with_extension("pub");
    std::fs::write(&pub_path, format!("{public}\n"))
        .with_context(|| format!("writing {}", pub_path.display()))?;
    eprintln!(
        "signing key written to {} (keep it secret); public key in {}:",
        out.display(),
        pub_path.display()
    );
    println!("{public}");
    Ok(std::process::ExitCode::SUCCESS)
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()?;
    Ok(())
}

pub async fn propose(c: &Connection, file: &Path, purpose: &str) -> Result<std::process::ExitCode> {
    let toml =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let client = Client::new(c)?;
    let body = client
        .post(
            "/v1/proposals",
            &serde_json::json!({ "toml": toml, "purpose": purpose }),
        )
        .await?;
    let p = &body["proposal"];
    println!(
        "proposal {} for indicator '{}' (sha256 {}) is pending; it needs {} reviewer approval(s)",
        p["id"].as_str().unwrap_or("?"),
        p["indicator"].as_str().unwrap_or("?"),
        p["content_hash"].as_str().unwrap_or("?"),
        body["required_approvals"]
    );
    let e = &body["estimate"];
    println!(
        "cost per node per quarter: ρ = {} (ε ≈ {:.3} at δ = 1e-6)",
        e["rho_per_quarter_per_node"],
        e["epsilon_per_quarter_per_node_at_delta_1e-6"]
            .as_f64()
            .unwrap_or(f64::NAN)
    );
    for m in e["measures"].as_array().into_iter().flatten() {
        println!(
            "  {} {}: noise σ {:.2} per node, {} node(s): 95% interval ≈ ± {:.1} per cell",
            m["indicator"].as_str().unwrap_or(""),
            m["measure"].as_str().unwrap_or(""),
            m["noise_sd_per_node"].as_f64().unwrap_or(f64::NAN),
            m["nodes"],
            m["ci95_half_width"].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!("{}", e["note"].as_str().unwrap_or(""));
    Ok(std::process::ExitCode::SUCCESS)
}

pub async fn proposals(c: &Connection) -> Result<std::process::ExitCode> {
    let client = Client::new(c)?;
    let body = client.get("/v1/proposals").await?;
    println!(
        "{:<16} {:<36} {:<10} {:<10} {:<18} purpose",
        "id", "indicator", "status", "approvals", "proposed by"
    );
    for p in body["proposals"].as_array().into_iter().flatten() {
        let purpose = p["purpose"].as_str().unwrap_or("");
        println!(
            "{:<16} {:<36} {:<10} {:<10} {:<18} {}",
            p["id"].as_str().unwrap_or(""),
            p["indicator"].as_str().unwrap_or(""),
            p["status"].as_str().unwrap_or(""),
            format!(
                "{}/{}",
                p["approvals"].as_array().map(|a| a.len()).unwrap_or(0),
                body["required_approvals"]
            ),
            p["proposed_by"].as_str().unwrap_or(""),
            purpose.chars().take(60).collect::<String>()
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

pub async fn dry_run(
    c: &Connection,
    id: &str,
    period: Option<&str>,
    format: &str,
) -> Result<std::process::ExitCode> {
    let client = Client::new(c)?;
    eprintln!("dry run of {id} on synthetic providers (no node asked, no budget spent)…");
    let body = match period {
        Some(p) => serde_json::json!({ "period": p }),
        None => serde_json::json!({}),
    };
    let out = client
        .post(&format!("/v1/proposals/{id}/dry-run"), &body)
        .await?;
    let view = serde_json::json!({
        "indicator": out["indicator"],
        "period": out["period"],
        "status": "dry run (synthetic data)",
        "results": out["records"],
    });
    crate::client::print_results(&view, format)?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Fetches the proposal, shows what is being approved, signs (indicator, content hash) locally.
pub async fn approve(c: &Connection, id: &str, key_file: &Path) -> Result<std::process::ExitCode> {
    let key_text = std::fs::read_to_string(key_file)
        .with_context(|| format!("reading signing key {}", key_file.display()))?;
    let key = SigningKey::from_text(&key_text)
        .with_context(|| format!("signing key {}", key_file.display()))?;
    let client = Client::new(c)?;
    let p = client.get(&format!("/v1/proposals/{id}")).await?;
    let p = &p["proposal"];
    let indicator = p["indicator"]
        .as_str()
        .context("proposal without indicator")?;
    let hash = p["content_hash"]
        .as_str()
        .context("proposal without hash")?;
    // Sign what the text actually hashes to, not what the server says it hashes to.
    let toml = p["toml"].as_str().context("proposal without text")?;
    let actual = policies::indicator::content_hash(toml.as_bytes());
    if actual != hash {
        bail!("proposal {id}: its text hashes to {actual}, not the stated {hash}; not signing");
    }
    let signature = key.sign_approval(indicator, &actual);
    let out = client
        .post(
            &format!("/v1/proposals/{id}/approve"),
            &serde_json::json!({ "signature": signature }),
        )
        .await?;
    let o = &out["outcome"];
    match o["catalog_version"].as_u64() {
        Some(v) => println!(
            "approved '{indicator}' (sha256 {actual}): {}/{} approvals; now in catalog version {v}",
            o["approvals"], o["required"]
        ),
        None => println!(
            "approval of '{indicator}' (sha256 {actual}) recorded: {}/{} approvals",
            o["approvals"], o["required"]
        ),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

pub async fn reject(c: &Connection, id: &str, reason: &str) -> Result<std::process::ExitCode> {
    let client = Client::new(c)?;
    let out = client
        .post(
            &format!("/v1/proposals/{id}/reject"),
            &serde_json::json!({ "reason": reason }),
        )
        .await?;
    println!(
        "proposal {id} ('{}') rejected",
        out["proposal"]["indicator"].as_str().unwrap_or("?")
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// `stroom node accept ID`: the operator reads the signed indicator as this node verifies it and
/// records acceptance of exactly that content in the node's ledger.
pub async fn node_accept(
    cfg: &node::config::NodeConfig,
    id: &str,
) -> Result<std::process::ExitCode> {
    let gov = &cfg.governance;
    let ca = cfg
        .tls
        .client_ca
        .clone()
        .context("tls.client_ca (the federation CA) is needed to reach the coordinator")?;
    let catalog = node::governance::fetch(gov, &ca).await?;
    let tables = node::tables::Tables::open(&cfg.data.dir, &cfg.data.tables).await?;
    let verified =
        node::governance::verify_catalog(&catalog, gov, &tables, &cfg.data.coverage).await;
    if let Some(refusal) = verified.refused.get(id) {
        bail!("{refusal}; not accepted");
    }
    let Some(ind) = verified.accepted.get(id) else {
        bail!(
            "'{id}' is not in the coordinator's signed catalog (version {})",
            catalog.version
        );
    };
    let signers: Vec<String> = catalog
        .entries
        .iter()
        .filter(|e| e.id == id)
        .flat_map(|e| e.signatures.iter().map(|s| s.reviewer.clone()))
        .collect();
    println!("{} — {}", ind.id, ind.title.en);
    println!("  {}", ind.definition.en);
    if let Some(q) = ind.query() {
        println!("  cost per release: ρ = {}", q.cost.rho());
        println!("  sql: {}", q.sql.trim().replace('\n', "\n       "));
    }
    println!(
        "  sha256 {} signed by {}",
        ind.content_hash,
        signers.join(", ")
    );
    if let Err(refusal) = node::governance::local_policy(gov, ind, true, || true) {
        bail!("{refusal}; accepting it would change nothing");
    }
    let ledger = node::ledger::Ledger::open(&cfg.ledger.path)?;
    let by = format!(
        "{} (local CLI)",
        std::env::var("USER").unwrap_or_else(|_| "operator".into())
    );
    ledger.accept(&ind.id, &ind.content_hash, &by)?;
    let audit = policies::audit::AuditLog::open(&cfg.audit.path)?;
    audit.append(policies::audit::AuditEvent {
        actor: by,
        action: "indicator.accept".into(),
        indicator: Some(ind.id.clone()),
        content_hash: Some(ind.content_hash.clone()),
        parameters: serde_json::json!({ "catalog_version": catalog.version }),
        outcome: "accepted".into(),
        ..Default::default()
    })?;
    println!("accepted on node {}", cfg.node_id);
    Ok(std::process::ExitCode::SUCCESS)
}
