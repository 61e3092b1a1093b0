//! The audit log: append-only and hash-chained.
//!
//! Each entry's hash is SHA-256 over the previous entry's hash and this entry's fields
//! (including its id), so editing a row changes its hash, deleting or reordering rows breaks
//! the next row's link, and [`verify`] finds the first entry where the chain does not hold.
//! The head (last hash and entry count) is also kept in `meta`, so deleting the newest rows
//! is caught too. Someone who can rewrite the whole database can rebuild a consistent chain;
//! `secretum audit verify` prints the head so it can be recorded outside the warehouse.
//!
//! Appends run in one `BEGIN IMMEDIATE` transaction (read head, insert, move head), so
//! concurrent writers, threads or processes, extend one chain.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::db::now_rfc3339;
use crate::error::Result;

/// The hash before the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An event to record.
#[derive(Debug, Clone, Default)]
pub struct Event<'a> {
    pub actor: &'a str,
    /// e.g. `auth.failed`, `project.requested`, `project.approved`, `query.answered`, `ingest.committed`.
    pub action: &'a str,
    pub project: Option<&'a str>,
    pub sql: Option<&'a str>,
    pub epsilon: Option<f64>,
    pub delta: Option<f64>,
    /// `ok`, `refused`, `failed`, `denied`.
    pub outcome: &'a str,
    /// Free text built from the request and policy only (never from data).
    pub detail: Option<&'a str>,
    /// SHA-256 of the released answer, for queries.
    pub result_digest: Option<&'a str>,
}

/// A recorded entry.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Entry {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub project: Option<String>,
    pub sql: Option<String>,
    pub epsilon: Option<f64>,
    pub delta: Option<f64>,
    pub outcome: String,
    pub detail: Option<String>,
    pub result_digest: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

impl Entry {
    /// The hash this entry must carry, given the previous one.
    fn compute_hash(&self, prev_hash: &str) -> String {
        // A JSON array is an unambiguous encoding: no field can bleed into the next.
        let body = serde_json::json!([
            self.id,
            self.at,
            self.actor,
            self.action,
            self.project,
            self.sql,
            self.epsilon.map(|e| e.to_string()),
            self.delta.map(|d| d.to_string()),
            self.outcome,
            self.detail,
            self.result_digest,
        ]);
        let mut h = Sha256::new();
        h.update(prev_hash.as_bytes());
        h.update(b"\n");
        h.update(body.to_string().as_bytes());
        hex::encode(h.finalize())
    }
}

/// Append one entry; durable when this returns.
pub fn append(conn: &mut Connection, event: &Event<'_>) -> Result<Entry> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let entry = append_in(&tx, event)?;
    tx.commit()?;
    Ok(entry)
}

/// Append inside a caller's immediate transaction (the entry commits with the caller's change).
pub fn append_in(tx: &rusqlite::Transaction<'_>, event: &Event<'_>) -> Result<Entry> {
    let prev: Option<(i64, String)> =
        tx.query_row("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
    let (id, prev_hash) = match prev {
        Some((id, h)) => (id + 1, h),
        None => (1, GENESIS.to_owned()),
    };
    let mut entry = Entry {
        id,
        at: now_rfc3339(),
        actor: event.actor.to_owned(),
        action: event.action.to_owned(),
        project: event.project.map(str::to_owned),
        sql: event.sql.map(str::to_owned),
        epsilon: event.epsilon,
        delta: event.delta,
        outcome: event.outcome.to_owned(),
        detail: event.detail.map(str::to_owned),
        result_digest: event.result_digest.map(str::to_owned),
        prev_hash: prev_hash.clone(),
        hash: String::new(),
    };
    entry.hash = entry.compute_hash(&prev_hash);
    tx.execute(
        "INSERT INTO audit (id, at, actor, action, project, sql, epsilon, delta, outcome, detail, result_digest, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            entry.id,
            entry.at,
            entry.actor,
            entry.action,
            entry.project,
            entry.sql,
            entry.epsilon,
            entry.delta,
            entry.outcome,
            entry.detail,
            entry.result_digest,
            entry.prev_hash,
            entry.hash
        ],
    )?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('audit.head', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [format!("{}:{}", entry.id, entry.hash)],
    )?;
    Ok(entry)
}

/// Which entries to read.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub project: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    /// Only entries with an id greater than this (pagination cursor).
    pub after: Option<i64>,
    pub limit: Option<usize>,
}

/// Entries in id order, filtered.
pub fn entries(conn: &Connection, f: &Filter) -> Result<Vec<Entry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, at, actor, action, project, sql, epsilon, delta, outcome, detail, result_digest, prev_hash, hash FROM audit
         WHERE id > ?1 AND (?2 IS NULL OR project = ?2) AND (?3 IS NULL OR actor = ?3)
           AND (?4 IS NULL OR action = ?4) AND (?5 IS NULL OR outcome = ?5)
         ORDER BY id LIMIT ?6",
    )?;
    let limit = f.limit.map(|l| l as i64).unwrap_or(-1);
    let rows = stmt.query_map(params![f.after.unwrap_or(0), f.project, f.actor, f.action, f.outcome, limit], row_entry)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn row_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        id: r.get(0)?,
        at: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        project: r.get(4)?,
        sql: r.get(5)?,
        epsilon: r.get(6)?,
        delta: r.get(7)?,
        outcome: r.get(8)?,
        detail: r.get(9)?,
        result_digest: r.get(10)?,
        prev_hash: r.get(11)?,
        hash: r.get(12)?,
    })
}

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Verification {
    pub entries: u64,
    /// The last hash of a chain that holds.
    pub head: String,
    /// The first entry where the chain does not hold, and why.
    pub broken: Option<Broken>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Broken {
    /// The id of the first bad entry (or the id the head expects, for deleted newest rows).
    pub id: i64,
    pub reason: String,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.broken.is_none()
    }
}

/// Recompute the whole chain.
pub fn verify(conn: &Connection) -> Result<Verification> {
    let mut stmt = conn.prepare(
        "SELECT id, at, actor, action, project, sql, epsilon, delta, outcome, detail, result_digest, prev_hash, hash
         FROM audit ORDER BY rowid",
    )?;
    let mut prev_hash = GENESIS.to_owned();
    let mut expected_id = 1;
    let mut count = 0u64;
    let rows = stmt.query_map([], row_entry)?;
    for e in rows {
        let e = e?;
        let broken = |reason: String| Verification { entries: count, head: prev_hash.clone(), broken: Some(Broken { id: e.id, reason }) };
        if e.id != expected_id {
            return Ok(broken(format!("expected entry {expected_id} here, found {} (deleted or reordered)", e.id)));
        }
        if e.prev_hash != prev_hash {
            return Ok(broken("does not link to the previous entry (an earlier entry was removed or changed)".into()));
        }
        if e.compute_hash(&prev_hash) != e.hash {
            return Ok(broken("its content does not match its hash (the entry was edited)".into()));
        }
        prev_hash = e.hash;
        expected_id += 1;
        count += 1;
    }
    let head: Option<String> = conn.query_row("SELECT value FROM meta WHERE key = 'audit.head'", [], |r| r.get(0)).optional()?;
    if let Some(head) = head {
        let want = format!("{}:{}", count, prev_hash);
        if count == 0 && head.is_empty() || head == want {
            return Ok(Verification { entries: count, head: prev_hash, broken: None });
        }
        let id = head.split(':').next().and_then(|s| s.parse().ok()).unwrap_or(count as i64);
        return Ok(Verification {
            entries: count,
            head: prev_hash,
            broken: Some(Broken {
                id,
                reason: format!("the log ends at entry {count} but its recorded head is entry {id} (newest entries deleted)"),
            }),
        });
    }
    Ok(Verification { entries: count, head: prev_hash, broken: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    fn log(n: usize) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&dir.path().join("catalog.sqlite")).unwrap().into_connection();
        for i in 0..n {
            let sql = format!("SELECT COUNT(*) FROM person -- {i}");
            append(
                &mut c,
                &Event {
                    actor: "alice",
                    action: "query.answered",
                    project: Some("p"),
                    sql: Some(&sql),
                    epsilon: Some(0.1),
                    outcome: "ok",
                    ..Default::default()
                },
            )
            .unwrap();
        }
        (dir, c)
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let (_d, c) = log(5);
        let v = verify(&c).unwrap();
        assert!(v.ok(), "{v:?}");
        assert_eq!(v.entries, 5);
        let (_d, c) = log(0);
        assert!(verify(&c).unwrap().ok());
    }

    #[test]
    fn edits_deletions_and_reordering_are_found() {
        let (_d, c) = log(5);
        c.execute("UPDATE audit SET epsilon = 0.01 WHERE id = 3", []).unwrap();
        assert_eq!(verify(&c).unwrap().broken.unwrap().id, 3);

        let (_d, c) = log(5);
        c.execute("DELETE FROM audit WHERE id = 2", []).unwrap();
        assert_eq!(verify(&c).unwrap().broken.unwrap().id, 3);

        let (_d, c) = log(5);
        c.execute("DELETE FROM audit WHERE id = 5", []).unwrap();
        let b = verify(&c).unwrap().broken.unwrap();
        assert_eq!(b.id, 5, "{b:?}");

        let (_d, c) = log(5);
        // Swap the contents of two rows, ids kept: links break at the first.
        c.execute_batch(
            "UPDATE audit SET sql = CASE id WHEN 2 THEN (SELECT sql FROM audit WHERE id = 4) ELSE (SELECT sql FROM audit WHERE id = 2) END WHERE id IN (2, 4)",
        )
        .unwrap();
        assert_eq!(verify(&c).unwrap().broken.unwrap().id, 2);
    }

    #[test]
    fn filters_and_pages() {
        let (_d, mut c) = log(3);
        append(&mut c, &Event { actor: "bob", action: "project.approved", project: Some("q"), outcome: "ok", ..Default::default() })
            .unwrap();
        assert_eq!(entries(&c, &Filter { actor: Some("bob".into()), ..Default::default() }).unwrap().len(), 1);
        assert_eq!(entries(&c, &Filter { project: Some("p".into()), ..Default::default() }).unwrap().len(), 3);
        let page = entries(&c, &Filter { after: Some(1), limit: Some(2), ..Default::default() }).unwrap();
        assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), vec![2, 3]);
    }
}
