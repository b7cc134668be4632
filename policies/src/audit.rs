//! Append-only, hash-chained audit logs, one JSON object per line. Each entry carries its sequence
//! number, the previous entry's hash and its own hash over both and its content, so any edit,
//! deletion, insertion or reordering breaks the chain at the first entry it touches, and
//! [`verify_file`] names that entry. Cutting entries off the end leaves a valid shorter chain: pass
//! the head recorded elsewhere (`--head`) to catch that too.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, by whom, to which approved indicator, with what spend and what was released.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub actor: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indicator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub parameters: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rho: Option<f64>,
    /// sha256 of the released answer's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_digest: Option<String>,
    pub outcome: String,
    /// Why, in words, when the outcome is a refusal or failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub time: String,
    #[serde(flatten)]
    pub event: AuditEvent,
    pub prev: String,
    pub hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {file}: {message}")]
    Io { file: PathBuf, message: String },
    #[error("audit log {file}: entry at line {line} (seq {seq}): {reason}")]
    Broken {
        file: PathBuf,
        line: usize,
        seq: String,
        reason: String,
    },
    #[error("audit log {file}: ends at seq {found_seq} ({found}), expected head {expected}")]
    Truncated {
        file: PathBuf,
        found_seq: u64,
        found: String,
        expected: String,
    },
}

/// The hash of an entry: sha256 over the previous hash and the entry's canonical JSON without its
/// own hash.
pub fn entry_hash(seq: u64, time: &str, event: &AuditEvent, prev: &str) -> String {
    let body = serde_json::json!({ "seq": seq, "time": time, "event": event, "prev": prev });
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(body.to_string().as_bytes());
    hex::encode(h.finalize())
}

pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub entries: u64,
    /// The last entry's hash (GENESIS for an empty log).
    pub head: String,
}

/// Check every entry in order; the error names the first bad one.
pub fn verify_file(file: &Path) -> Result<Verified, AuditError> {
    let io = |e: std::io::Error| AuditError::Io {
        file: file.to_path_buf(),
        message: e.to_string(),
    };
    let reader = BufReader::new(std::fs::File::open(file).map_err(io)?);
    let mut prev = GENESIS.to_string();
    let mut count = 0u64;
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(io)?;
        let broken = |seq: String, reason: String| AuditError::Broken {
            file: file.to_path_buf(),
            line: i + 1,
            seq,
            reason,
        };
        if line.trim().is_empty() {
            return Err(broken("?".into(), "empty line".into()));
        }
        let entry: AuditEntry = serde_json::from_str(&line)
            .map_err(|e| broken("?".into(), format!("not an audit entry: {e}")))?;
        let seq = entry.seq.to_string();
        if entry.seq != count + 1 {
            return Err(broken(
                seq,
                format!(
                    "sequence number {} where {} was due (an entry was deleted, inserted or moved)",
                    entry.seq,
                    count + 1
                ),
            ));
        }
        if entry.prev != prev {
            return Err(broken(
                seq,
                "does not link to the entry before it (deleted, inserted or moved entry)".into(),
            ));
        }
        if entry_hash(entry.seq, &entry.time, &entry.event, &entry.prev) != entry.hash {
            return Err(broken(
                seq,
                "content does not match its hash (edited)".into(),
            ));
        }
        prev = entry.hash;
        count += 1;
    }
    Ok(Verified {
        entries: count,
        head: prev,
    })
}

/// [`verify_file`], and that the log ends at `head` (a hash recorded elsewhere).
pub fn verify_with_head(file: &Path, head: &str) -> Result<Verified, AuditError> {
    let v = verify_file(file)?;
    if v.head != head {
        return Err(AuditError::Truncated {
            file: file.to_path_buf(),
            found_seq: v.entries,
            found: v.head,
            expected: head.to_string(),
        });
    }
    Ok(v)
}

/// An open log: verified on open, then appended to (each entry synced to disk before `append`
/// returns). Appends take an exclusive file lock and continue from the entry actually last in the
/// file, so a second process (the `stroom token` CLI beside a running coordinator) extends the
/// same chain instead of forking it.
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

/// The last entry of a log file, read from its end (None for an empty file).
fn last_entry(file: &mut std::fs::File) -> std::io::Result<Option<AuditEntry>> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.seek(SeekFrom::End(0))?;
    let mut chunk = 4096u64;
    loop {
        let start = len.saturating_sub(chunk);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        let trimmed = text.trim_end_matches('\n');
        match trimmed.rfind('\n') {
            Some(i) => {
                return serde_json::from_str(&trimmed[i + 1..])
                    .map(Some)
                    .map_err(std::io::Error::other);
            }
            None if start == 0 => {
                return if trimmed.is_empty() {
                    Ok(None)
                } else {
                    serde_json::from_str(trimmed)
                        .map(Some)
                        .map_err(std::io::Error::other)
                };
            }
            None => chunk *= 4,
        }
    }
}

impl AuditLog {
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let io = |e: std::io::Error| AuditError::Io {
            file: path.to_path_buf(),
            message: e.to_string(),
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        if path.exists() {
            verify_file(path)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry and returns its hash.
    pub fn append(&self, event: AuditEvent) -> Result<String, AuditError> {
        let io = |e: std::io::Error| AuditError::Io {
            file: self.path.clone(),
            message: e.to_string(),
        };
        let mut file = self.file.lock().map_err(|_| AuditError::Io {
            file: self.path.clone(),
            message: "lock poisoned".into(),
        })?;
        file.lock().map_err(io)?;
        let result = (|| {
            let (seq, prev) = match last_entry(&mut file)? {
                Some(e) => (e.seq, e.hash),
                None => (0, GENESIS.to_string()),
            };
            let next = seq + 1;
            let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            let hash = entry_hash(next, &time, &event, &prev);
            let entry = AuditEntry {
                seq: next,
                time,
                event,
                prev,
                hash: hash.clone(),
            };
            let mut line = serde_json::to_string(&entry).map_err(std::io::Error::other)?;
            line.push('\n');
            file.write_all(line.as_bytes())?;
            file.sync_data()?;
            Ok(hash)
        })();
        let _ = file.unlock();
        result.map_err(io)
    }

    /// (entries, head hash) as the file stands.
    pub fn head(&self) -> Result<(u64, String), AuditError> {
        let v = verify_file(&self.path)?;
        Ok((v.entries, v.head))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: u64) -> AuditEvent {
        AuditEvent {
            actor: "tester".into(),
            action: "evaluate".into(),
            indicator: Some(format!("ind.{i}")),
            rho: Some(0.05),
            outcome: "released".into(),
            ..Default::default()
        }
    }

    fn log_with(n: u64) -> (tempfile::TempDir, PathBuf, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let hashes = (1..=n).map(|i| log.append(event(i)).unwrap()).collect();
        (dir, path, hashes)
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    fn write(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    fn bad_line(path: &Path) -> usize {
        match verify_file(path) {
            Err(AuditError::Broken { line, .. }) => line,
            other => panic!("tampering not detected: {other:?}"),
        }
    }

    #[test]
    fn an_intact_log_verifies_and_reopens_where_it_ended() {
        let (_d, path, hashes) = log_with(5);
        let v = verify_file(&path).unwrap();
        assert_eq!((v.entries, v.head.clone()), (5, hashes[4].clone()));
        let log = AuditLog::open(&path).unwrap();
        log.append(event(6)).unwrap();
        assert_eq!(verify_file(&path).unwrap().entries, 6);
        assert!(
            verify_with_head(&path, &hashes[4]).is_err(),
            "head moved on"
        );
    }

    #[test]
    fn an_edit_is_detected_at_the_edited_entry() {
        let (_d, path, _) = log_with(5);
        let mut l = lines(&path);
        l[2] = l[2].replace("\"rho\":0.05", "\"rho\":0.01");
        write(&path, &l);
        assert_eq!(bad_line(&path), 3);
    }

    #[test]
    fn a_deletion_is_detected_where_the_gap_is() {
        let (_d, path, _) = log_with(5);
        let mut l = lines(&path);
        l.remove(1);
        write(&path, &l);
        assert_eq!(bad_line(&path), 2);
    }

    #[test]
    fn a_reordering_is_detected_at_the_first_moved_entry() {
        let (_d, path, _) = log_with(5);
        let mut l = lines(&path);
        l.swap(2, 3);
        write(&path, &l);
        assert_eq!(bad_line(&path), 3);
    }

    #[test]
    fn an_insertion_is_detected_even_with_a_recomputed_hash() {
        let (_d, path, hashes) = log_with(3);
        let mut l = lines(&path);
        // A forger who recomputes the inserted entry's own hash still breaks the next link.
        let time = "2026-01-01T00:00:00Z".to_string();
        let forged = AuditEntry {
            seq: 3,
            time: time.clone(),
            event: event(99),
            prev: hashes[1].clone(),
            hash: entry_hash(3, &time, &event(99), &hashes[1]),
        };
        l.insert(2, serde_json::to_string(&forged).unwrap());
        write(&path, &l);
        assert_eq!(bad_line(&path), 4);
    }

    #[test]
    fn truncation_is_caught_against_a_recorded_head() {
        let (_d, path, hashes) = log_with(4);
        let mut l = lines(&path);
        l.pop();
        write(&path, &l);
        assert!(
            verify_file(&path).is_ok(),
            "a shorter chain is still a chain"
        );
        assert!(matches!(
            verify_with_head(&path, &hashes[3]),
            Err(AuditError::Truncated { found_seq: 3, .. })
        ));
    }

    #[test]
    fn two_writers_on_one_file_extend_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let a = AuditLog::open(&path).unwrap();
        let b = AuditLog::open(&path).unwrap();
        for i in 0..10 {
            if i % 3 == 0 { &b } else { &a }.append(event(i)).unwrap();
        }
        assert_eq!(verify_file(&path).unwrap().entries, 10);
    }

    #[test]
    fn a_tampered_log_refuses_to_open_for_appending() {
        let (_d, path, _) = log_with(3);
        let mut l = lines(&path);
        l[0] = l[0].replace("tester", "someone else");
        write(&path, &l);
        assert!(AuditLog::open(&path).is_err());
    }
}
