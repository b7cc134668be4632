//! The coordinator's dry-run sandbox: synthetic providers (made with `stroom synth`'s generator on
//! the first dry run, then kept on disk) evaluated in-process with the node's own bounding and noise
//! code. Nothing here touches a node, a ledger or a budget.

use anyhow::{Context, Result};
use coordinator::sandbox::Sandbox;
use futures::future::BoxFuture;
use node::tables::Tables;
use policies::{Indicator, Period};
use std::path::{Path, PathBuf};

pub struct SyntheticProviders {
    dir: PathBuf,
    providers: usize,
    seed: u64,
    /// (provider id, privacy unit, tables), opened on first use.
    opened: tokio::sync::OnceCell<Vec<(String, String, Tables)>>,
}

impl SyntheticProviders {
    pub fn new(dir: &Path, providers: usize, seed: u64) -> SyntheticProviders {
        SyntheticProviders {
            dir: dir.to_path_buf(),
            providers,
            seed,
            opened: tokio::sync::OnceCell::new(),
        }
    }

    /// Opens the synthetic data, generating it first when it is missing or made differently.
    async fn open(&self) -> Result<Vec<(String, String, Tables)>> {
        let dir = &self.dir;
        let manifest_path = dir.join("manifest.json");
        let stale = match std::fs::read_to_string(&manifest_path) {
            Ok(text) => {
                let m: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{}", manifest_path.display()))?;
                m["seed"] != self.seed
                    || m["providers"].as_array().map(|a| a.len()) != Some(self.providers)
            }
            Err(_) => true,
        };
        if stale {
            tracing::info!(dir = %dir.display(), providers = self.providers, "generating dry-run data");
            let _ = std::fs::remove_dir_all(dir);
            let opts = crate::synth::SynthOptions {
                out: dir.to_path_buf(),
                providers: self.providers,
                seed: self.seed,
                scale: 1.0,
            };
            tokio::task::spawn_blocking(move || crate::synth::generate(&opts, |_| {}))
                .await
                .context("dry-run data generator")??;
        }
        let mut out = Vec::new();
        let served: Vec<String> = node::config::DEFAULT_TABLES
            .iter()
            .map(|t| t.to_string())
            .collect();
        for i in 0..self.providers {
            let id = crate::synth::provider_id(i);
            let tables = Tables::open(&dir.join(&id), &served)
                .await
                .with_context(|| format!("dry-run provider {id}"))?;
            out.push((id, policies::cdm::UNIT_COLUMN.to_string(), tables));
        }
        let panel = crate::synth::PANEL_NODE.to_string();
        let tables = Tables::open(&dir.join(&panel), &["panel_response".to_string()])
            .await
            .context("dry-run panel")?;
        out.push((panel, "respondent_pid".to_string(), tables));
        Ok(out)
    }
}

impl Sandbox for SyntheticProviders {
    fn coverage(&self) -> Period {
        // COVERAGE is a constant that parses; a fallback keeps this free of panics all the same.
        crate::synth::COVERAGE.parse().unwrap_or_else(|_| {
            let q = policies::Quarter::of_date(chrono::Utc::now().date_naive());
            Period { first: q, last: q }
        })
    }

    fn answers<'a>(
        &'a self,
        base: &'a Indicator,
        quarter: Period,
    ) -> BoxFuture<'a, Result<Vec<Vec<u8>>, String>> {
        Box::pin(async move {
            let providers = self
                .opened
                .get_or_try_init(|| self.open())
                .await
                .map_err(|e| format!("{e:#}"))?;
            let unit = base
                .query()
                .map(|q| q.privacy_unit.as_str())
                .unwrap_or_default();
            let mut out = Vec::new();
            for (id, _, tables) in providers.iter().filter(|(_, u, _)| u == unit) {
                out.push(
                    node::release::sandbox_answer(id, tables, base, &quarter)
                        .await
                        .map_err(|e| format!("{id}: {e}"))?,
                );
            }
            Ok(out)
        })
    }
}
