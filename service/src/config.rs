//! One configuration loader for every service: built-in defaults, then the TOML file, then the
//! `STROOM_`-prefixed environment variables that name one of the service's own top-level keys
//! (`STROOM_BUDGET__RHO_PER_PERIOD=2`); other `STROOM_` variables belong to other parts of the
//! program and are left out.

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("config file {file}: {message}")]
pub struct LoadError {
    pub file: PathBuf,
    pub message: String,
}

fn config_env(keys: &[&str]) -> config::Map<String, String> {
    std::env::vars()
        .filter(|(k, _)| {
            k.strip_prefix("STROOM_").is_some_and(|rest| {
                let first = rest.split("__").next().unwrap_or("").to_ascii_lowercase();
                keys.contains(&first.as_str())
            })
        })
        .collect()
}

/// Loads `file` over `defaults` (TOML text) and the environment. `list_keys` are the keys whose
/// environment value is a comma-separated list.
pub fn load<T: DeserializeOwned>(
    file: &Path,
    defaults: &str,
    keys: &[&str],
    list_keys: &[&str],
) -> Result<T, LoadError> {
    let err = |message: String| LoadError {
        file: file.to_path_buf(),
        message,
    };
    if !file.is_file() {
        return Err(err("no such file".into()));
    }
    let mut env = config::Environment::with_prefix("STROOM")
        .source(Some(config_env(keys)))
        .prefix_separator("_")
        .separator("__")
        .try_parsing(true);
    // With a separator and no list keys, the config crate splits every value into a list.
    if !list_keys.is_empty() {
        env = env.list_separator(",");
        for k in list_keys {
            env = env.with_list_parse_key(k);
        }
    }
    config::Config::builder()
        .add_source(config::File::from_str(defaults, config::FileFormat::Toml))
        .add_source(config::File::from(file).format(config::FileFormat::Toml))
        .add_source(env)
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Cfg {
        store: Store,
        tables: Vec<String>,
    }

    #[derive(Debug, serde::Deserialize)]
    struct Store {
        path: String,
    }

    #[test]
    fn environment_values_are_lists_only_for_list_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "tables = [\"a\"]\n[store]\npath = \"x\"\n").expect("write");
        // SAFETY (edition 2024): the test sets variables no other test of this crate reads.
        unsafe {
            std::env::set_var("STROOM_STORE__PATH", "/var/lib/a,b.sqlite");
            std::env::set_var("STROOM_TABLES", "youth,stay");
        }
        let c: Cfg = load(&file, "", &["store", "tables"], &["tables"]).expect("load");
        assert_eq!(c.store.path, "/var/lib/a,b.sqlite");
        assert_eq!(c.tables, vec!["youth", "stay"]);
        let none: Result<Cfg, _> = load(&dir.path().join("missing.toml"), "", &[], &[]);
        assert!(none.is_err_and(|e| e.message.contains("no such file")));
    }
}
