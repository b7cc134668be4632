//! SQLite as every Stroom store opens it (node ledger, coordinator run store, helper store): its
//! folder made, WAL, `synchronous=FULL` (a commit is on disk before it is answered), a busy
//! timeout, and the schema version (`user_version`) read before any migration, so a store written
//! by a newer build is refused rather than half-understood.

use rusqlite::Connection;
use std::path::Path;

/// Opens (creating if needed) the store at `path` with the settings every store relies on.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    }
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

/// Where a store's schema stands against the version this build writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// At this version (0: new, or written before versioning): migrations from it are to run.
    At(i64),
    /// Written by a newer build: refuse it.
    Newer(i64),
}

pub fn schema(conn: &Connection, current: i64) -> rusqlite::Result<Schema> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    Ok(if found > current {
        Schema::Newer(found)
    } else {
        Schema::At(found)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_in_a_new_folder_with_wal_and_reads_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/store.sqlite");
        let conn = open(&path).unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(schema(&conn, 2).unwrap(), Schema::At(0));
        conn.pragma_update(None, "user_version", 3).unwrap();
        assert_eq!(schema(&conn, 2).unwrap(), Schema::Newer(3));
        assert_eq!(schema(&conn, 3).unwrap(), Schema::At(3));
    }
}
