//! The catalog: which Parquet files make up each table, and where they came from.
//!
//! Embedded SQLite (WAL, `synchronous = FULL`). An ingest becomes visible in exactly one
//! transaction that records the ingest and all of its files; queries read only the files the
//! catalog lists, so a file on disk that no committed transaction names is never read.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{Error, IoContext, Result};

/// Migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE ingests (
    id            TEXT PRIMARY KEY,
    table_name    TEXT NOT NULL,
    source_path   TEXT NOT NULL,
    source_sha256 TEXT NOT NULL,
    rows          INTEGER NOT NULL,
    bytes         INTEGER NOT NULL,
    committed_at  TEXT NOT NULL,
    actor         TEXT NOT NULL
);
CREATE INDEX ingests_by_source ON ingests (table_name, source_sha256);
CREATE TABLE files (
    path       TEXT PRIMARY KEY,
    ingest_id  TEXT NOT NULL REFERENCES ingests (id),
    table_name TEXT NOT NULL,
    rows       INTEGER NOT NULL,
    bytes      INTEGER NOT NULL
);
CREATE INDEX files_by_table ON files (table_name);
"#,
    r#"
CREATE TABLE projects (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    epsilon    REAL NOT NULL,
    delta      REAL NOT NULL,
    tables     TEXT NOT NULL,
    status     TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE ledger (
    id          INTEGER PRIMARY KEY,
    project_id  INTEGER NOT NULL REFERENCES projects (id),
    epsilon     REAL NOT NULL,
    delta       REAL NOT NULL,
    sql         TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    finished_at TEXT
);
CREATE INDEX ledger_by_project ON ledger (project_id);
"#,
    r#"
CREATE TABLE users (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    role       TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE tokens (
    id           INTEGER PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users (id),
    hash         TEXT NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    revoked_at   TEXT,
    last_used_at TEXT
);
ALTER TABLE projects ADD COLUMN title TEXT NOT NULL DEFAULT '';
ALTER TABLE projects ADD COLUMN purpose TEXT NOT NULL DEFAULT '';
ALTER TABLE projects ADD COLUMN owner TEXT;
ALTER TABLE projects ADD COLUMN requested_epsilon REAL;
ALTER TABLE projects ADD COLUMN requested_delta REAL;
ALTER TABLE projects ADD COLUMN requested_tables TEXT;
ALTER TABLE projects ADD COLUMN duration_days INTEGER;
ALTER TABLE projects ADD COLUMN expires_at TEXT;
ALTER TABLE projects ADD COLUMN decided_by TEXT;
ALTER TABLE projects ADD COLUMN decided_at TEXT;
ALTER TABLE projects ADD COLUMN reason TEXT;
CREATE TABLE project_members (
    project_id INTEGER NOT NULL REFERENCES projects (id),
    user_name  TEXT NOT NULL,
    PRIMARY KEY (project_id, user_name)
);
CREATE TABLE audit (
    id            INTEGER PRIMARY KEY,
    at            TEXT NOT NULL,
    actor         TEXT NOT NULL,
    action        TEXT NOT NULL,
    project       TEXT,
    sql           TEXT,
    epsilon       REAL,
    delta         REAL,
    outcome       TEXT NOT NULL,
    detail        TEXT,
    result_digest TEXT,
    prev_hash     TEXT NOT NULL,
    hash          TEXT NOT NULL
);
CREATE INDEX audit_by_project ON audit (project);
CREATE INDEX audit_by_actor ON audit (actor);
"#,
];

/// One committed Parquet file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to the data directory.
    pub path: String,
    pub ingest_id: String,
    pub rows: u64,
    pub bytes: u64,
}

/// One committed ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestEntry {
    pub id: String,
    pub table: String,
    pub source_path: String,
    pub source_sha256: String,
    pub rows: u64,
    pub bytes: u64,
    pub committed_at: String,
    pub actor: String,
}

/// Per-table totals for the steward's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSummary {
    pub table: String,
    pub files: u64,
    pub rows: u64,
    pub bytes: u64,
}

/// A new ingest to commit.
pub struct NewIngest<'a> {
    pub id: &'a str,
    pub table: &'a str,
    pub source_path: &'a str,
    pub source_sha256: &'a str,
    pub actor: &'a str,
    pub allow_duplicate: bool,
    pub files: &'a [FileEntry],
}

pub struct Catalog {
    conn: Connection,
}

impl Catalog {
    /// Open (creating if needed) the catalog database and bring it to the current version.
    pub fn open(path: &Path) -> Result<Catalog> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut catalog = Catalog { conn };
        catalog.migrate()?;
        Ok(catalog)
    }

    fn migrate(&mut self) -> Result<()> {
        // The common case (already current) takes no write lock.
        let version: i64 = self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version as usize >= MIGRATIONS.len() {
            return Ok(());
        }
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn into_connection(self) -> Connection {
        self.conn
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self.conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, value],
        )?;
        Ok(())
    }

    /// The committed files of one table, in commit order.
    pub fn files(&self, table: &str) -> Result<Vec<FileEntry>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT f.path, f.ingest_id, f.rows, f.bytes FROM files f JOIN ingests i ON i.id = f.ingest_id
             WHERE f.table_name = ?1 ORDER BY i.committed_at, f.path",
        )?;
        let rows = stmt.query_map([table], |r| {
            Ok(FileEntry { path: r.get(0)?, ingest_id: r.get(1)?, rows: r.get::<_, i64>(2)? as u64, bytes: r.get::<_, i64>(3)? as u64 })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn is_referenced(&self, path: &str) -> Result<bool> {
        Ok(self.conn.query_row("SELECT 1 FROM files WHERE path = ?1", [path], |_| Ok(())).optional()?.is_some())
    }

    pub fn ingests(&self) -> Result<Vec<IngestEntry>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, table_name, source_path, source_sha256, rows, bytes, committed_at, actor FROM ingests ORDER BY committed_at",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(IngestEntry {
                id: r.get(0)?,
                table: r.get(1)?,
                source_path: r.get(2)?,
                source_sha256: r.get(3)?,
                rows: r.get::<_, i64>(4)? as u64,
                bytes: r.get::<_, i64>(5)? as u64,
                committed_at: r.get(6)?,
                actor: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Totals per table, for every table in `tables` (zero when nothing is ingested yet).
    pub fn summary(&self, tables: impl IntoIterator<Item = String>) -> Result<Vec<TableSummary>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT COUNT(*), COALESCE(SUM(rows), 0), COALESCE(SUM(bytes), 0) FROM files WHERE table_name = ?1")?;
        tables
            .into_iter()
            .map(|table| {
                let (files, rows, bytes): (i64, i64, i64) = stmt.query_row([&table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                Ok(TableSummary { table, files: files as u64, rows: rows as u64, bytes: bytes as u64 })
            })
            .collect()
    }

    /// Commit one ingest and all its files in one transaction. The duplicate check runs inside
    /// the transaction, so two concurrent ingests of the same file cannot both commit.
    pub fn commit_ingest(&mut self, ingest: &NewIngest<'_>) -> Result<()> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if !ingest.allow_duplicate {
            let existing: Option<(String, String)> = tx
                .query_row(
                    "SELECT id, committed_at FROM ingests WHERE table_name = ?1 AND source_sha256 = ?2",
                    [ingest.table, ingest.source_sha256],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((id, at)) = existing {
                return Err(duplicate_error(ingest.table, &id, &at));
            }
        }
        let rows: u64 = ingest.files.iter().map(|f| f.rows).sum();
        let bytes: u64 = ingest.files.iter().map(|f| f.bytes).sum();
        tx.execute(
            "INSERT INTO ingests (id, table_name, source_path, source_sha256, rows, bytes, committed_at, actor)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                ingest.id,
                ingest.table,
                ingest.source_path,
                ingest.source_sha256,
                rows as i64,
                bytes as i64,
                now_rfc3339(),
                ingest.actor
            ],
        )?;
        for f in ingest.files {
            tx.execute(
                "INSERT INTO files (path, ingest_id, table_name, rows, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![f.path, ingest.id, ingest.table, f.rows as i64, f.bytes as i64],
            )?;
        }
        // The audit entry commits with the ingest, or neither does.
        let detail = format!(
            "ingest {} of {} ({}): {} files, {rows} rows, {bytes} bytes",
            ingest.id,
            ingest.source_path,
            ingest.source_sha256,
            ingest.files.len()
        );
        crate::audit::append_in(
            &tx,
            &crate::audit::Event {
                actor: ingest.actor,
                action: "ingest.committed",
                outcome: "ok",
                detail: Some(&detail),
                project: None,
                ..Default::default()
            },
        )?;
        tx.commit()?;
        Ok(())
    }
}

fn duplicate_error(table: &str, id: &str, at: &str) -> Error {
    Error::Usage(format!(
        "this file's content was already ingested into `{table}` (ingest {id} at {at}); nothing was committed. Pass --allow-duplicate if loading it again is intended"
    ))
}

/// The current UTC time, RFC 3339 with microseconds (sorts as text).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Files and directories of a warehouse.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }
    pub fn catalog(&self) -> PathBuf {
        self.root.join("catalog.sqlite")
    }
    pub fn schemas(&self) -> PathBuf {
        self.root.join("schemas")
    }
    pub fn tables(&self) -> PathBuf {
        self.root.join("tables")
    }
    pub fn table_dir(&self, table: &str) -> PathBuf {
        self.tables().join(table)
    }
    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }
    pub fn create_dirs(&self) -> Result<()> {
        for d in [self.root.clone(), self.schemas(), self.tables(), self.staging()] {
            std::fs::create_dir_all(&d).at(&d)?;
        }
        Ok(())
    }
}
