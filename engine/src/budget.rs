//! The budget ledger: the trusted counter of privacy loss.
//!
//! Accounting is basic (sequential) composition: a project that released answers at
//! (ε₁, δ₁), …, (εₙ, δₙ) has spent (Σεᵢ, Σδᵢ) (Dwork & Roth, Theorem 3.16). The same sums,
//! taken over every project, bound what any one patient can lose, because a patient may be
//! in every project's data: those totals are held under the warehouse-wide per-patient caps,
//! one on ε and one on δ (capping each sum caps the composed (ε, δ)).
//!
//! Every debit is one `BEGIN IMMEDIATE` SQLite transaction that reads what was spent, checks
//! it against the project's grant and the warehouse caps, inserts the debit and writes the
//! query's `query.submitted` audit entry. SQLite serializes immediate transactions across
//! threads and processes, so concurrent queries can never both see the same remaining budget;
//! with `synchronous = FULL` the debit is on disk before [`Ledger::debit`] returns, which is
//! before any data is read (reading data needs the [`Debit`], which only the debit makes). A
//! query that fails or is killed after that stays charged; its settlement writes
//! `query.answered` (with the answer's digest) or `query.failed` in the transaction that records
//! the outcome.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior, params};
use serde::Serialize;

use crate::audit::{self, Event};
use crate::db::{self, Layout, now_rfc3339};
use crate::error::{BudgetRefusal, Error, Result};
use crate::governance::{self, ProjectStatus};

/// Slack for float sums: ten debits of 0.1 must fit a budget of 1.0.
const EPS_SLACK: f64 = 1e-9;

/// What a query asks to spend, and who asks: what the debit checks and what its audit entries
/// record.
#[derive(Debug, Clone, Copy)]
pub struct Charge<'a> {
    pub actor: &'a str,
    pub project: &'a str,
    pub sql: &'a str,
    pub epsilon: f64,
    pub delta: f64,
}

/// A durable debit: the ledger row that charged a query. Only [`Ledger::debit`] makes one, and
/// settling consumes it: data is read only with a debit in hand.
#[derive(Debug, PartialEq, Eq)]
pub struct Debit {
    id: i64,
}

impl Debit {
    /// The ledger entry (the query's id).
    pub fn id(&self) -> i64 {
        self.id
    }
}

/// What every project together has spent: what one patient may have lost.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Spent {
    pub epsilon: f64,
    pub delta: f64,
}

/// One ledger row: a charged query.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LedgerEntry {
    pub id: i64,
    pub epsilon: f64,
    pub delta: f64,
    /// `debited` (running or interrupted), `released` or `failed`: all stay charged.
    pub status: String,
    pub created_at: String,
    pub sql: String,
}

/// The ledger over the warehouse database.
pub struct Ledger {
    conn: Connection,
}

impl Ledger {
    /// Open the ledger of a warehouse.
    pub fn open(data_dir: &Path) -> Result<Ledger> {
        Ok(Ledger { conn: db::open(&Layout::new(data_dir).database())? })
    }

    pub fn from_connection(conn: Connection) -> Ledger {
        Ledger { conn }
    }

    /// The database the ledger writes to (projects, policy and the audit log live there too).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn connection_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Check and spend, atomically and durably, and audit the submission in the same
    /// transaction. On `Ok` the debit and its audit entry are on disk.
    pub fn debit(&mut self, charge: &Charge<'_>) -> Result<Debit> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let p = governance::project(&tx, charge.project)?.ok_or_else(|| Error::not_found("project", format!("{:?}", charge.project)))?;
        if p.status != ProjectStatus::Active {
            return Err(BudgetRefusal::NotActive { project: p.name, status: p.status.to_string() }.into());
        }
        if p.epsilon_spent + charge.epsilon > p.epsilon + EPS_SLACK {
            return Err(BudgetRefusal::Epsilon { project: p.name.clone(), remaining: p.epsilon_remaining(), asked: charge.epsilon }.into());
        }
        if charge.delta > 0.0 && p.delta_spent + charge.delta > p.delta * (1.0 + 1e-9) {
            return Err(BudgetRefusal::Delta { project: p.name.clone(), remaining: p.delta_remaining(), asked: charge.delta }.into());
        }
        let caps = governance::policy(&tx)?;
        let spent = spent_in(&tx)?;
        if spent.epsilon + charge.epsilon > caps.patient_epsilon_cap + EPS_SLACK {
            return Err(BudgetRefusal::PatientCap { spent: spent.epsilon, cap: caps.patient_epsilon_cap, asked: charge.epsilon }.into());
        }
        if charge.delta > 0.0 && spent.delta + charge.delta > caps.patient_delta_cap * (1.0 + 1e-9) {
            return Err(BudgetRefusal::PatientDeltaCap { spent: spent.delta, cap: caps.patient_delta_cap, asked: charge.delta }.into());
        }
        tx.execute(
            "INSERT INTO ledger (project_id, epsilon, delta, sql, status, created_at) VALUES (?1, ?2, ?3, ?4, 'debited', ?5)",
            params![p.id, charge.epsilon, charge.delta, charge.sql, now_rfc3339()],
        )?;
        let id = tx.last_insert_rowid();
        let detail = format!("ledger entry {id}");
        audit::append_in(&tx, &event(charge, "query.submitted", "ok", Some(&detail), None, true))?;
        tx.commit()?;
        Ok(Debit { id })
    }

    /// Record that a charged query was answered, with the answer's digest. The charge stays.
    pub fn settle_released(&self, debit: Debit, charge: &Charge<'_>, digest: &str) -> Result<()> {
        let detail = format!("ledger entry {}", debit.id);
        self.settle(debit, "released", &event(charge, "query.answered", "ok", Some(&detail), Some(digest), true))
    }

    /// Record that a charged query failed while running, by the kind of failure only. The
    /// charge stays.
    pub fn settle_failed(&self, debit: Debit, charge: &Charge<'_>, kind: &str) -> Result<()> {
        let detail = format!("ledger entry {}: {kind} failure while running", debit.id);
        self.settle(debit, "failed", &event(charge, "query.failed", "failed", Some(&detail), None, false))
    }

    fn settle(&self, debit: Debit, outcome: &str, event: &Event<'_>) -> Result<()> {
        // The outcome is bookkeeping: the charge and the submission's audit entry were made
        // durable by `debit`, and a settlement lost to a power cut leaves the row `debited`,
        // still charged. So this write skips the fsync (WAL with synchronous = NORMAL survives a
        // killed process, only not a power cut).
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        let done = (|| -> Result<()> {
            let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
            tx.execute("UPDATE ledger SET status = ?1, finished_at = ?2 WHERE id = ?3", params![outcome, now_rfc3339(), debit.id])?;
            audit::append_in(&tx, event)?;
            tx.commit()?;
            Ok(())
        })();
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        done
    }

    /// What every project together has spent.
    pub fn spent(&self) -> Result<Spent> {
        spent_in(&self.conn)
    }

    /// The charged queries of a project (by name), oldest first.
    pub fn entries(&self, project: &str) -> Result<Vec<LedgerEntry>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT l.id, l.epsilon, l.delta, l.status, l.created_at, l.sql FROM ledger l JOIN projects p ON p.id = l.project_id
             WHERE p.name = ?1 ORDER BY l.id",
        )?;
        let rows = stmt.query_map([project], |r| {
            Ok(LedgerEntry {
                id: r.get(0)?,
                epsilon: r.get(1)?,
                delta: r.get(2)?,
                status: r.get(3)?,
                created_at: r.get(4)?,
                sql: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

fn spent_in(conn: &Connection) -> Result<Spent> {
    Ok(conn.query_row("SELECT COALESCE(SUM(epsilon), 0), COALESCE(SUM(delta), 0) FROM ledger", [], |r| {
        Ok(Spent { epsilon: r.get(0)?, delta: r.get(1)? })
    })?)
}

fn event<'a>(
    c: &'a Charge<'_>,
    action: &'a str,
    outcome: &'a str,
    detail: Option<&'a str>,
    digest: Option<&'a str>,
    spent: bool,
) -> Event<'a> {
    Event {
        actor: c.actor,
        action,
        project: Some(c.project),
        sql: Some(c.sql),
        epsilon: spent.then_some(c.epsilon),
        delta: spent.then_some(c.delta),
        outcome,
        detail,
        result_digest: digest,
    }
}
