//! The catalog: which Parquet files make up each table, and where they came from.
//!
//! Embedded SQLite ([`crate::db`]). An ingest becomes visible in exactly one
//! transaction that records the ingest and all of its files; queries read only the files the
//! catalog lists, so a file on disk that no committed transaction names is never read.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::db::now_rfc3339;
use crate::error::{Error, Result};

/// One committed Parquet file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to the data directory.
    pub path: String,
    pub ingest_id: String,
    pub rows: u64,
    pub bytes: u64,
    /// The most rows one patient has among the rows of the ingest that wrote this file (the
    /// same for all its files); `None` when not known (a public table, or a file committed
    /// before this was recorded).
    pub unit_rows_max: Option<u64>,
}

/// An upper bound on the rows any one patient has in a table made of `files`: the sum over
/// their ingests of each ingest's most rows for one patient (exact when one ingest wrote the
/// table, larger when several ingests hold rows of the same patients). `None` when an ingest did
/// not record it. Computed from the file list a query reads, so the two always agree.
pub fn unit_rows_bound(files: &[FileEntry]) -> Option<u64> {
    let mut per_ingest: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for f in files {
        let m = f.unit_rows_max?;
        let e = per_ingest.entry(f.ingest_id.as_str()).or_insert(0);
        *e = (*e).max(m);
    }
    Some(per_ingest.values().fold(0u64, |acc, m| acc.saturating_add(*m)))
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
    /// The table's committed files are replaced by these, in the same transaction.
    pub replace: bool,
    pub files: &'a [FileEntry],
}

pub struct Catalog {
    conn: Connection,
}

impl Catalog {
    /// Open (creating if needed) the warehouse database.
    pub fn open(path: &Path) -> Result<Catalog> {
        Ok(Catalog { conn: crate::db::open(path)? })
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
            "SELECT f.path, f.ingest_id, f.rows, f.bytes, f.unit_rows_max FROM files f JOIN ingests i ON i.id = f.ingest_id
             WHERE f.table_name = ?1 ORDER BY i.committed_at, f.path",
        )?;
        let rows = stmt.query_map([table], |r| {
            Ok(FileEntry {
                path: r.get(0)?,
                ingest_id: r.get(1)?,
                rows: r.get::<_, i64>(2)? as u64,
                bytes: r.get::<_, i64>(3)? as u64,
                unit_rows_max: r.get::<_, Option<i64>>(4)?.map(|m| m as u64),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The version of the data: a digest of every committed file (each ingest writes new files,
    /// a vocabulary load replaces them), so any commit gives a new version.
    pub fn data_version(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let mut stmt = self.conn.prepare_cached("SELECT path, ingest_id, rows FROM files ORDER BY path")?;
        let mut h = Sha256::new();
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            h.update(r.get_ref(0)?.as_str().unwrap_or("").as_bytes());
            h.update(b"\0");
            h.update(r.get_ref(1)?.as_str().unwrap_or("").as_bytes());
            h.update(b"\0");
            h.update(r.get::<_, i64>(2)?.to_le_bytes());
        }
        Ok(hex::encode(&h.finalize()[..16]))
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
        if ingest.replace {
            // The previous files stop being part of the table in this transaction; they stay on
            // disk, unread (the catalog names what is read).
            tx.execute("DELETE FROM files WHERE table_name = ?1", [ingest.table])?;
        }
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
                "INSERT INTO files (path, ingest_id, table_name, rows, bytes, unit_rows_max) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![f.path, ingest.id, ingest.table, f.rows as i64, f.bytes as i64, f.unit_rows_max.map(|m| m as i64)],
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
    Error::Conflict(format!(
        "this file's content was already ingested into `{table}` (ingest {id} at {at}); nothing was committed. Pass --allow-duplicate if loading it again is intended"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(ingest: &str, m: Option<u64>) -> FileEntry {
        FileEntry { path: format!("{ingest}-{m:?}"), ingest_id: ingest.into(), rows: 1, bytes: 1, unit_rows_max: m }
    }

    #[test]
    fn rows_per_patient_add_up_over_ingests_and_are_unknown_when_one_is() {
        assert_eq!(unit_rows_bound(&[]), Some(0));
        // One ingest's files share its maximum; two ingests may hold rows of the same patient.
        assert_eq!(unit_rows_bound(&[file("a", Some(3)), file("a", Some(3))]), Some(3));
        assert_eq!(unit_rows_bound(&[file("a", Some(3)), file("b", Some(2))]), Some(5));
        // A file committed before the count was recorded: no bound, the truncation runs.
        assert_eq!(unit_rows_bound(&[file("a", Some(3)), file("b", None)]), None);
    }
}
