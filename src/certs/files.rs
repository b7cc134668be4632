//! Writing key material: private files readable by their owner alone from the first byte, and
//! never a silent replacement of what a party already holds.

use anyhow::{Context, Result};
use std::path::Path;

/// What to do with certificate and key files already in an output folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse before writing anything: replacing a federation's CA key or a party's key silently
    /// would cut it off from the others.
    Refuse,
    /// Replace them (the demo's own scratch folder).
    Replace,
}

/// Whether a file holds a secret (owner-only) or public material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrecy {
    Private,
    Public,
}

/// Refuses, naming them, when any of `names` already exists in `out` (with [`Existing::Refuse`]).
pub fn check_free(out: &Path, names: &[String], existing: Existing) -> Result<()> {
    if existing == Existing::Replace {
        return Ok(());
    }
    let present: Vec<&str> = names
        .iter()
        .filter(|f| out.join(f).exists())
        .map(String::as_str)
        .collect();
    anyhow::ensure!(
        present.is_empty(),
        "{} already holds {}; stroom certs never replaces certificates or keys (a new key would cut \
         its holder off from the federation). Choose an empty folder, or move these away first",
        out.display(),
        present.join(", ")
    );
    Ok(())
}

/// Writes a new file. A private key is created readable by its owner only, so its contents never
/// sit in a file others can read, not even between writing and restricting it.
pub fn write(path: &Path, text: &str, secrecy: Secrecy) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("replacing {}", path.display()));
        }
        Ok(()) | Err(_) => {}
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(match secrecy {
            Secrecy::Private => 0o600,
            Secrecy::Public => 0o644,
        });
    }
    #[cfg(not(unix))]
    let _ = secrecy;
    let mut file = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

pub fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}
