//! The ground floor: the warehouse's directory layout, its one SQLite database (catalog,
//! ledger, projects, accounts and audit log, with their migrations) and the clock.
//!
//! Every connection is opened here: WAL journal, `synchronous = FULL` (a commit is on disk when
//! it returns), foreign keys on, a 30 s busy timeout (SQLite serializes writers across threads
//! and processes), and the migrations brought up to date.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::error::{IoContext, Result};

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
    r#"
ALTER TABLE ledger ADD COLUMN replay_key TEXT;
ALTER TABLE ledger ADD COLUMN replays INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ledger ADD COLUMN rho REAL NOT NULL DEFAULT 0;
ALTER TABLE ledger ADD COLUMN runner INTEGER;
ALTER TABLE projects ADD COLUMN accounting TEXT NOT NULL DEFAULT 'pure';
CREATE INDEX ledger_by_replay_key ON ledger (replay_key);
CREATE TABLE releases (
    ledger_id INTEGER PRIMARY KEY REFERENCES ledger (id),
    batch        BLOB NOT NULL,
    report       TEXT NOT NULL,
    summary      TEXT NOT NULL,
    data_version TEXT NOT NULL
);
"#,
    r#"
ALTER TABLE files ADD COLUMN unit_rows_max INTEGER;
-- Each project's spend, kept by the database itself as ledger entries are inserted: a debit
-- reads three numbers instead of summing the project's whole ledger. Charges are final (an
-- entry's amounts never change, no entry is deleted), so the totals are the ledger's sums.
CREATE TABLE spent (
    project_id INTEGER PRIMARY KEY REFERENCES projects (id),
    epsilon    REAL NOT NULL DEFAULT 0,
    delta      REAL NOT NULL DEFAULT 0,
    rho        REAL NOT NULL DEFAULT 0
);
INSERT INTO spent (project_id, epsilon, delta, rho)
    SELECT project_id, SUM(epsilon), SUM(delta), SUM(rho) FROM ledger GROUP BY project_id;
CREATE TRIGGER ledger_adds_to_spent AFTER INSERT ON ledger BEGIN
    INSERT OR IGNORE INTO spent (project_id) VALUES (NEW.project_id);
    UPDATE spent SET epsilon = epsilon + NEW.epsilon, delta = delta + NEW.delta, rho = rho + NEW.rho
        WHERE project_id = NEW.project_id;
END;
CREATE TRIGGER ledger_charges_are_final BEFORE UPDATE OF project_id, epsilon, delta, rho ON ledger BEGIN
    SELECT RAISE(ABORT, 'a ledger entry''s charge is final');
END;
CREATE TRIGGER ledger_entries_stay BEFORE DELETE ON ledger BEGIN
    SELECT RAISE(ABORT, 'ledger entries are never deleted');
END;
"#,
    r#"
-- The patients with the most rows of each ingest, and their rows: every patient of the ingest
-- with more than `unit_rows_listed_above` rows (see catalog::listing). Read only to plan the
-- truncation of a query (dp::rewrite), never shown.
ALTER TABLE files ADD COLUMN unit_rows_listed_above INTEGER;
-- 1 when the ingest that wrote the file holds no patient of the table's earlier ingests (`person`,
-- whose privacy unit is its primary key, checked against exactly the files committed before it).
ALTER TABLE files ADD COLUMN unit_disjoint INTEGER NOT NULL DEFAULT 0;
CREATE TABLE unit_rows (
    ingest_id TEXT NOT NULL REFERENCES ingests (id),
    unit      INTEGER NOT NULL,
    rows      INTEGER NOT NULL,
    PRIMARY KEY (ingest_id, unit)
) WITHOUT ROWID;
"#,
];

/// Open (creating if needed) the warehouse database at `path` and bring it to the current version.
pub fn open(path: &Path) -> Result<Connection> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrate(&mut conn)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    // The common case (already current) takes no write lock.
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version as usize >= MIGRATIONS.len() {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    tx.commit()?;
    Ok(())
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
    pub fn database(&self) -> PathBuf {
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
