//! The embedded key store: one SQLite file.
//!
//! Durability: WAL journal with `synchronous = FULL`, so a transaction that
//! returned is on disk (the WAL is fsynced at every commit) and survives a
//! crash or power loss of the host; a torn write is rolled back on the next
//! open. `create_first` and `erase` are single `IMMEDIATE` transactions, so
//! concurrent writers (threads, or several processes on one host sharing
//! the file) serialize and a subject never gets two first keys. SQLite is
//! not for replicas on several hosts (use the PostgreSQL store there).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{KeyStore, StoreError, StoredKey, SubjectRecord, SubjectSummary};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS fieldseal_data_keys (
    reference  TEXT    NOT NULL,
    version    INTEGER NOT NULL CHECK (version > 0),
    kek_id     TEXT    NOT NULL,
    wrapped    BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (reference, version)
);
CREATE TABLE IF NOT EXISTS fieldseal_erasures (
    reference    TEXT    PRIMARY KEY,
    erased_at    INTEGER NOT NULL,
    requested_by TEXT    NOT NULL,
    last_version INTEGER NOT NULL DEFAULT 0
);
";

pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed, mode 0600) the store at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if !path.exists() {
            // Created owner-only before SQLite opens it: it holds wrapped keys.
            let mut o = std::fs::OpenOptions::new();
            o.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                o.mode(0o600);
            }
            match o.open(path) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(unavailable(format!("{}: {e}", path.display()))),
            }
        }
        let conn =
            Connection::open(path).map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(unavailable)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(unavailable)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(unavailable)?;
        conn.execute_batch(SCHEMA).map_err(unavailable)?;
        Ok(SqliteStore {
            path: path.to_owned(),
            conn: Mutex::new(conn),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| unavailable("the connection lock is poisoned"))?;
        f(&mut conn).map_err(unavailable)
    }
}

fn read(conn: &Connection, reference: &str) -> rusqlite::Result<SubjectRecord> {
    let erased: Option<(i64, i64)> = conn
        .query_row(
            "SELECT erased_at, last_version FROM fieldseal_erasures WHERE reference = ?1",
            params![reference],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let mut stmt = conn.prepare_cached(
        "SELECT version, kek_id, wrapped, created_at FROM fieldseal_data_keys
         WHERE reference = ?1 ORDER BY version DESC",
    )?;
    let keys = stmt
        .query_map(params![reference], |r| {
            Ok(StoredKey {
                version: r.get::<_, i64>(0)?.clamp(0, u32::MAX as i64) as u32,
                kek_id: r.get(1)?,
                wrapped: r.get(2)?,
                created_at: r.get::<_, i64>(3)?.max(0) as u64,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(match (keys.is_empty(), erased) {
        (false, _) => SubjectRecord::Keys(keys),
        (true, Some((at, last))) => SubjectRecord::Erased {
            at: at.max(0) as u64,
            last_version: last.clamp(0, u32::MAX as i64) as u32,
        },
        (true, None) => SubjectRecord::Absent,
    })
}

impl KeyStore for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn get(&self, reference: &str) -> Result<SubjectRecord, StoreError> {
        self.with(|c| read(c, reference))
    }

    fn create_first(
        &self,
        reference: &str,
        key: &StoredKey,
        revive: bool,
    ) -> Result<SubjectRecord, StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = read(&tx, reference)?;
            let write = match now {
                SubjectRecord::Absent => true,
                SubjectRecord::Erased { .. } => revive,
                SubjectRecord::Keys(_) => false,
            };
            if write {
                tx.execute(
                    "DELETE FROM fieldseal_erasures WHERE reference = ?1",
                    params![reference],
                )?;
                tx.execute(
                    "INSERT INTO fieldseal_data_keys (reference, version, kek_id, wrapped, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        reference,
                        key.version as i64,
                        key.kek_id,
                        key.wrapped,
                        key.created_at as i64
                    ],
                )?;
            }
            let after = read(&tx, reference)?;
            tx.commit()?;
            Ok(after)
        })
    }

    fn erase(&self, reference: &str, requested_by: &str, at: u64) -> Result<usize, StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let newest: Option<i64> = tx.query_row(
                "SELECT MAX(version) FROM fieldseal_data_keys WHERE reference = ?1",
                params![reference],
                |r| r.get(0),
            )?;
            let n = tx.execute(
                "DELETE FROM fieldseal_data_keys WHERE reference = ?1",
                params![reference],
            )?;
            tx.execute(
                "INSERT INTO fieldseal_erasures (reference, erased_at, requested_by, last_version)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (reference) DO UPDATE SET erased_at = excluded.erased_at,
                     requested_by = excluded.requested_by,
                     last_version = MAX(fieldseal_erasures.last_version, excluded.last_version)",
                params![reference, at as i64, requested_by, newest.unwrap_or(0)],
            )?;
            tx.commit()?;
            Ok(n)
        })
    }

    fn rewrap(
        &self,
        reference: &str,
        version: u32,
        old_kek: &str,
        new_kek: &str,
        wrapped: &[u8],
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE fieldseal_data_keys SET kek_id = ?1, wrapped = ?2
                 WHERE reference = ?3 AND version = ?4 AND kek_id = ?5",
                params![new_kek, wrapped, reference, version as i64, old_kek],
            )?;
            Ok(n == 1)
        })
    }

    fn list(&self) -> Result<Vec<SubjectSummary>, StoreError> {
        self.with(|c| {
            let mut out: Vec<SubjectSummary> = Vec::new();
            let mut stmt = c.prepare(
                "SELECT reference, version, kek_id, created_at FROM fieldseal_data_keys
                 ORDER BY reference, version",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?;
            for row in rows {
                let (reference, version, kek, created) = row?;
                let version = version.clamp(0, u32::MAX as i64) as u32;
                let created = created.max(0) as u64;
                SubjectSummary::add_key(&mut out, reference, version, kek, created);
            }
            let mut stmt = c.prepare(
                "SELECT reference, erased_at, requested_by FROM fieldseal_erasures ORDER BY reference",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?))
            })?;
            for row in rows {
                let (reference, at, by) = row?;
                out.push(SubjectSummary {
                    reference,
                    versions: vec![],
                    kek_ids: vec![],
                    created_at: None,
                    erased_at: Some(at.max(0) as u64),
                    erased_by: Some(by),
                });
            }
            Ok(out)
        })
    }

    fn all_keys(&self) -> Result<Vec<(String, StoredKey)>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT reference, version, kek_id, wrapped, created_at FROM fieldseal_data_keys
                 ORDER BY reference, version",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    StoredKey {
                        version: r.get::<_, i64>(1)?.clamp(0, u32::MAX as i64) as u32,
                        kek_id: r.get(2)?,
                        wrapped: r.get(3)?,
                        created_at: r.get::<_, i64>(4)?.max(0) as u64,
                    },
                ))
            })?;
            rows.collect()
        })
    }

    fn ping(&self) -> Result<(), StoreError> {
        // Reads both tables, so a lost or unreadable schema shows too.
        self.with(|c| {
            c.query_row(
                "SELECT (SELECT COUNT(*) FROM fieldseal_data_keys WHERE reference = ?1)
                      + (SELECT COUNT(*) FROM fieldseal_erasures WHERE reference = ?1)",
                params![super::REF_SECRET_REFERENCE],
                |_| Ok(()),
            )
        })
    }
}
