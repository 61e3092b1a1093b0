//! The budget ledger: the trusted counter of privacy loss.
//!
//! Accounting is basic (sequential) composition: a project that released answers at
//! (ε₁, δ₁), …, (εₙ, δₙ) has spent (Σεᵢ, Σδᵢ) (Dwork & Roth, Theorem 3.16). The same sums,
//! taken over every project, bound what any one patient can lose, because a patient may be
//! in every project's data: that total is held under the warehouse-wide per-patient cap.
//!
//! The per-patient caps bound ε and δ separately: under basic composition the (ε, δ) of all
//! releases together is (Σεᵢ, Σδᵢ), so capping each sum caps what any one patient can lose.
//!
//! Every debit is one `BEGIN IMMEDIATE` SQLite transaction that reads what was spent, checks
//! it against the project's grant and the warehouse caps, inserts the debit and writes the
//! query's `query.submitted` audit entry; the settlement writes `query.answered` (with the
//! answer's digest) or `query.failed` in the transaction that records the outcome. SQLite
//! serializes immediate transactions across threads and processes, so concurrent queries can
//! never both see the same remaining budget; with `synchronous = FULL` the debit is on disk
//! before [`Ledger::debit`] returns, which is before any data is read. A query that fails or
//! is killed after that stays charged.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use crate::audit;
use crate::catalog::{Catalog, now_rfc3339};
use crate::dp::{QueryError, QueryRequest};
use crate::error::{Error, Result};

/// Slack for float sums: ten debits of 0.1 must fit a budget of 1.0.
const EPS_SLACK: f64 = 1e-9;

/// The largest δ one query may spend.
pub const MAX_QUERY_DELTA: f64 = 1e-3;

/// Warehouse-wide settings a steward controls.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Policy {
    /// The total ε any one patient may lose, summed over every project.
    pub patient_epsilon_cap: f64,
    /// The total δ any one patient may lose, summed over every project.
    pub patient_delta_cap: f64,
    /// The largest ε one query may spend.
    pub query_epsilon_cap: f64,
    /// Noisy counts under this threshold are suppressed (0 disables).
    pub suppression_threshold: u32,
    /// Decimal digits kept in released non-count values.
    pub round_digits: u32,
}

impl Default for Policy {
    fn default() -> Policy {
        // Conservative: a patient's total loss across every project stays at ε = 10 and
        // δ = 1e-5 (ten partition-selection queries at δ = 1e-6) unless a steward decides
        // otherwise; one query spends at most ε = 1.
        Policy { patient_epsilon_cap: 10.0, patient_delta_cap: 1e-5, query_epsilon_cap: 1.0, suppression_threshold: 10, round_digits: 2 }
    }
}

/// A change to the policy: only the fields given change.
#[derive(Debug, Clone, Default)]
pub struct PolicyUpdate {
    pub patient_epsilon_cap: Option<f64>,
    pub patient_delta_cap: Option<f64>,
    pub query_epsilon_cap: Option<f64>,
    pub suppression_threshold: Option<u32>,
    pub round_digits: Option<u32>,
}

/// A project and its grant.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Project {
    pub id: i64,
    pub name: String,
    pub epsilon: f64,
    pub delta: f64,
    pub tables: Vec<String>,
    /// `pending`, `active`, `rejected`, `suspended`, `closed`, or `expired` (an active project
    /// past its `expires_at`; computed when read, so expiry needs no background job).
    pub status: String,
    pub created_at: String,
    pub epsilon_spent: f64,
    pub delta_spent: f64,
    pub title: String,
    pub purpose: String,
    /// Who requested it (none for projects a steward created locally).
    pub owner: Option<String>,
    /// Researchers who may query it (the owner included).
    pub members: Vec<String>,
    /// What was asked for, when it came as a request.
    pub requested: Option<Grant>,
    pub duration_days: Option<i64>,
    pub expires_at: Option<String>,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    /// The steward's reason (rejection, suspension) if any.
    pub reason: Option<String>,
}

/// ε, δ and tables: asked for or granted.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Grant {
    pub epsilon: f64,
    pub delta: f64,
    pub tables: Vec<String>,
}

impl Project {
    pub fn epsilon_remaining(&self) -> f64 {
        (self.epsilon - self.epsilon_spent).max(0.0)
    }
    pub fn delta_remaining(&self) -> f64 {
        (self.delta - self.delta_spent).max(0.0)
    }
}

/// Why a debit was refused. Depends only on the grant, the policy and what was spent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    #[error("project {0:?} does not exist")]
    UnknownProject(String),
    #[error("project {project:?} is {status}, not active")]
    NotActive { project: String, status: String },
    #[error("budget exhausted: project {project:?} has ε {remaining:.6} left, the query asks for {asked}")]
    Epsilon { project: String, remaining: f64, asked: f64 },
    #[error("budget exhausted: project {project:?} has δ {remaining:e} left, the query asks for {asked:e}")]
    Delta { project: String, remaining: f64, asked: f64 },
    #[error(
        "warehouse per-patient cap reached: all projects together have spent ε {spent:.6} of the cap {cap}, the query asks for {asked}"
    )]
    PatientCap { spent: f64, cap: f64, asked: f64 },
    #[error(
        "warehouse per-patient δ cap reached: all projects together have spent δ {spent:e} of the cap {cap:e}, the query asks for {asked:e}"
    )]
    PatientDeltaCap { spent: f64, cap: f64, asked: f64 },
}

/// A durable debit: the ledger row that charged a query. Only [`Ledger::debit`] makes one, and
/// settling consumes it.
#[derive(Debug, PartialEq, Eq)]
pub struct Debit(i64);

impl Debit {
    /// The ledger entry (the query's id).
    pub fn id(&self) -> i64 {
        self.0
    }
}

/// The ledger over the catalog database.
pub struct Ledger {
    pub(crate) conn: Connection,
}

impl Ledger {
    /// Open the ledger of a warehouse (the catalog database; its migrations create the tables).
    pub fn open(data_dir: &Path) -> Result<Ledger> {
        let catalog = Catalog::open(&crate::catalog::Layout::new(data_dir).catalog())?;
        Ok(Ledger { conn: catalog.into_connection() })
    }

    pub fn from_catalog(catalog: Catalog) -> Ledger {
        Ledger { conn: catalog.into_connection() }
    }

    pub fn policy(&self) -> Result<Policy> {
        let get = |key: &str| -> Result<Option<String>> {
            Ok(self.conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
        };
        let mut p = Policy::default();
        if let Some(v) = get("policy.patient_epsilon_cap")? {
            p.patient_epsilon_cap = v.parse().unwrap_or(p.patient_epsilon_cap);
        }
        if let Some(v) = get("policy.patient_delta_cap")? {
            p.patient_delta_cap = v.parse().unwrap_or(p.patient_delta_cap);
        }
        if let Some(v) = get("policy.query_epsilon_cap")? {
            p.query_epsilon_cap = v.parse().unwrap_or(p.query_epsilon_cap);
        }
        if let Some(v) = get("policy.suppression_threshold")? {
            p.suppression_threshold = v.parse().unwrap_or(p.suppression_threshold);
        }
        if let Some(v) = get("policy.round_digits")? {
            p.round_digits = v.parse().unwrap_or(p.round_digits);
        }
        Ok(p)
    }

    pub fn set_policy(&mut self, update: &PolicyUpdate) -> Result<Policy> {
        let positive = |name: &str, v: Option<f64>| match v {
            Some(x) if !(x.is_finite() && x > 0.0) => Err(Error::Usage(format!("{name} must be a positive number, got {x}"))),
            _ => Ok(()),
        };
        positive("--patient-epsilon-cap", update.patient_epsilon_cap)?;
        positive("--query-epsilon-cap", update.query_epsilon_cap)?;
        if let Some(d) = update.patient_delta_cap
            && !(d.is_finite() && (0.0..1.0).contains(&d))
        {
            return Err(Error::Usage(format!("--patient-delta-cap must be in [0, 1), got {d}")));
        }
        if update.round_digits.is_some_and(|d| d > 12) {
            return Err(Error::Usage("--round-digits must be at most 12".into()));
        }
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let set = |key: &str, value: Option<String>| -> Result<()> {
            if let Some(value) = value {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![key, value],
                )?;
            }
            Ok(())
        };
        set("policy.patient_epsilon_cap", update.patient_epsilon_cap.map(|v| v.to_string()))?;
        set("policy.patient_delta_cap", update.patient_delta_cap.map(|v| v.to_string()))?;
        set("policy.query_epsilon_cap", update.query_epsilon_cap.map(|v| v.to_string()))?;
        set("policy.suppression_threshold", update.suppression_threshold.map(|v| v.to_string()))?;
        set("policy.round_digits", update.round_digits.map(|v| v.to_string()))?;
        tx.commit()?;
        self.policy()
    }

    /// Create a project with its grant. Table names are checked by the caller against the schemas.
    pub fn create_project(&mut self, name: &str, epsilon: f64, delta: f64, tables: &[String]) -> Result<Project> {
        if name.is_empty() || name.len() > 100 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(Error::Usage(format!("project name {name:?}: use 1 to 100 letters, digits, '-', '_' or '.'")));
        }
        if !(epsilon.is_finite() && epsilon > 0.0) {
            return Err(Error::Usage(format!("--epsilon must be a positive number, got {epsilon}")));
        }
        if !(delta.is_finite() && (0.0..1.0).contains(&delta)) {
            return Err(Error::Usage(format!("--delta must be in [0, 1), got {delta}")));
        }
        if tables.is_empty() {
            return Err(Error::Usage("a project needs at least one table (--tables)".into()));
        }
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: bool = tx.query_row("SELECT EXISTS (SELECT 1 FROM projects WHERE name = ?1)", [name], |r| r.get(0))?;
        if exists {
            return Err(Error::Usage(format!("project {name:?} already exists")));
        }
        tx.execute(
            "INSERT INTO projects (name, epsilon, delta, tables, status, created_at) VALUES (?1, ?2, ?3, ?4, 'active', ?5)",
            params![name, epsilon, delta, tables.join(","), now_rfc3339()],
        )?;
        tx.commit()?;
        self.project(name)?.ok_or_else(|| Error::Usage(format!("project {name:?} vanished")))
    }

    pub fn project(&self, name: &str) -> Result<Option<Project>> {
        project_in(&self.conn, name)
    }

    pub fn projects(&self) -> Result<Vec<Project>> {
        let names: Vec<String> = self
            .conn
            .prepare_cached("SELECT name FROM projects ORDER BY id")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        names.iter().filter_map(|n| self.project(n).transpose()).collect()
    }

    /// ε spent by every project together: what one patient may have lost.
    pub fn warehouse_epsilon_spent(&self) -> Result<f64> {
        Ok(self.conn.query_row("SELECT COALESCE(SUM(epsilon), 0) FROM ledger", [], |r| r.get(0))?)
    }

    /// δ spent by every project together.
    pub fn warehouse_delta_spent(&self) -> Result<f64> {
        Ok(self.conn.query_row("SELECT COALESCE(SUM(delta), 0) FROM ledger", [], |r| r.get(0))?)
    }

    /// Check and spend, atomically and durably, and audit the submission in the same
    /// transaction. On `Ok` the debit and its audit entry are on disk.
    pub fn debit(&mut self, req: &QueryRequest, epsilon: f64, delta: f64) -> Result<std::result::Result<Debit, Refused>> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(p) = project_in(&tx, &req.project)? else {
            return Ok(Err(Refused::UnknownProject(req.project.clone())));
        };
        if p.status != "active" {
            return Ok(Err(Refused::NotActive { project: p.name, status: p.status }));
        }
        if p.epsilon_spent + epsilon > p.epsilon + EPS_SLACK {
            return Ok(Err(Refused::Epsilon { project: p.name.clone(), remaining: p.epsilon_remaining(), asked: epsilon }));
        }
        if delta > 0.0 && p.delta_spent + delta > p.delta * (1.0 + 1e-9) {
            return Ok(Err(Refused::Delta { project: p.name.clone(), remaining: p.delta_remaining(), asked: delta }));
        }
        let policy = |key: &str, default: f64| -> Result<f64> {
            Ok(tx
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get::<_, String>(0))
                .optional()?
                .and_then(|v| v.parse().ok())
                .unwrap_or(default))
        };
        let defaults = Policy::default();
        let cap = policy("policy.patient_epsilon_cap", defaults.patient_epsilon_cap)?;
        let delta_cap = policy("policy.patient_delta_cap", defaults.patient_delta_cap)?;
        let (spent, delta_spent): (f64, f64) =
            tx.query_row("SELECT COALESCE(SUM(epsilon), 0), COALESCE(SUM(delta), 0) FROM ledger", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
        if spent + epsilon > cap + EPS_SLACK {
            return Ok(Err(Refused::PatientCap { spent, cap, asked: epsilon }));
        }
        if delta > 0.0 && delta_spent + delta > delta_cap * (1.0 + 1e-9) {
            return Ok(Err(Refused::PatientDeltaCap { spent: delta_spent, cap: delta_cap, asked: delta }));
        }
        tx.execute(
            "INSERT INTO ledger (project_id, epsilon, delta, sql, status, created_at) VALUES (?1, ?2, ?3, ?4, 'debited', ?5)",
            params![p.id, epsilon, delta, req.sql, now_rfc3339()],
        )?;
        let id = tx.last_insert_rowid();
        let detail = format!("ledger entry {id}");
        audit::append_in(&tx, &query_event(req, "query.submitted", "ok", Some(&detail), None, Some(epsilon), Some(delta)))?;
        tx.commit()?;
        Ok(Ok(Debit(id)))
    }

    /// Record that a charged query was answered, with the answer's digest. The charge stays.
    pub fn settle_released(&self, debit: Debit, req: &QueryRequest, digest: &str) -> Result<()> {
        let (epsilon, delta): (f64, f64) =
            self.conn.query_row("SELECT epsilon, delta FROM ledger WHERE id = ?1", [debit.0], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let detail = format!("ledger entry {}", debit.0);
        self.settle(debit, "released", &query_event(req, "query.answered", "ok", Some(&detail), Some(digest), Some(epsilon), Some(delta)))
    }

    /// Record that a charged query failed while running, by the kind of failure only. The
    /// charge stays.
    pub fn settle_failed(&self, debit: Debit, req: &QueryRequest, kind: &str) -> Result<()> {
        let detail = format!("ledger entry {}: {kind} failure while running", debit.0);
        self.settle(debit, "failed", &query_event(req, "query.failed", "failed", Some(&detail), None, None, None))
    }

    fn settle(&self, debit: Debit, outcome: &str, event: &audit::Event<'_>) -> Result<()> {
        // The outcome is bookkeeping: the charge and the submission's audit entry were made
        // durable by `debit`, and a settlement lost to a power cut leaves the row `debited`,
        // still charged. So this write skips the fsync (WAL with synchronous = NORMAL survives a
        // killed process, only not a power cut).
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        let done = (|| -> Result<()> {
            let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
            tx.execute("UPDATE ledger SET status = ?1, finished_at = ?2 WHERE id = ?3", params![outcome, now_rfc3339(), debit.0])?;
            audit::append_in(&tx, event)?;
            tx.commit()?;
            Ok(())
        })();
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        done
    }

    /// Audit a query that was refused (by a rule or by the ledger) or failed before reading any
    /// data: nothing was spent.
    pub fn audit_query_refused(&mut self, req: &QueryRequest, e: &QueryError) -> Result<()> {
        let (action, outcome, detail) = match e {
            QueryError::Refused(r) => ("query.refused", "refused", format!("{}: {}", r.rule, r.message)),
            QueryError::Budget(b) => ("query.refused", "refused", b.to_string()),
            QueryError::Failed(id) => ("query.failed", "failed", format!("ledger entry {id}")),
            QueryError::Internal(_) => ("query.failed", "failed", "internal error before any data was read; nothing was spent".to_owned()),
        };
        audit::append(&mut self.conn, &query_event(req, action, outcome, Some(&detail), None, None, None))?;
        Ok(())
    }

    /// Audit a dry run (or a `target_ci` question): nothing spent, nothing read.
    pub fn audit_dry_run(&mut self, req: &QueryRequest, digest: &str) -> Result<()> {
        let detail =
            if req.target_ci.is_some() { "accuracy target: nothing spent, no data read" } else { "dry run: nothing spent, no data read" };
        audit::append(&mut self.conn, &query_event(req, "query.dry_run", "ok", Some(detail), Some(digest), Some(req.epsilon), req.delta))?;
        Ok(())
    }

    /// The ledger rows of one project, oldest first: (id, ε, δ, status, created_at).
    pub fn history(&self, project: &str) -> Result<Vec<(i64, f64, f64, String, String)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT l.id, l.epsilon, l.delta, l.status, l.created_at FROM ledger l JOIN projects p ON p.id = l.project_id
             WHERE p.name = ?1 ORDER BY l.id",
        )?;
        let rows = stmt.query_map([project], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

fn query_event<'a>(
    req: &'a QueryRequest,
    action: &'a str,
    outcome: &'a str,
    detail: Option<&'a str>,
    result_digest: Option<&'a str>,
    epsilon: Option<f64>,
    delta: Option<f64>,
) -> audit::Event<'a> {
    audit::Event {
        actor: &req.actor,
        action,
        project: Some(&req.project),
        sql: Some(&req.sql),
        epsilon,
        delta,
        outcome,
        detail,
        result_digest,
    }
}

pub(crate) fn split_tables(tables: &str) -> Vec<String> {
    tables.split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect()
}

pub(crate) fn project_in(conn: &Connection, name: &str) -> Result<Option<Project>> {
    let row = conn
        .query_row(
            "SELECT p.id, p.name, p.epsilon, p.delta, p.tables, p.status, p.created_at,
                    COALESCE(SUM(l.epsilon), 0), COALESCE(SUM(l.delta), 0),
                    p.title, p.purpose, p.owner, p.requested_epsilon, p.requested_delta, p.requested_tables,
                    p.duration_days, p.expires_at, p.decided_by, p.decided_at, p.reason
             FROM projects p LEFT JOIN ledger l ON l.project_id = p.id WHERE p.name = ?1 GROUP BY p.id",
            [name],
            |r| {
                let tables: String = r.get(4)?;
                let requested = match (r.get::<_, Option<f64>>(12)?, r.get::<_, Option<f64>>(13)?, r.get::<_, Option<String>>(14)?) {
                    (Some(epsilon), Some(delta), Some(t)) => Some(Grant { epsilon, delta, tables: split_tables(&t) }),
                    _ => None,
                };
                Ok(Project {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    epsilon: r.get(2)?,
                    delta: r.get(3)?,
                    tables: split_tables(&tables),
                    status: r.get(5)?,
                    created_at: r.get(6)?,
                    epsilon_spent: r.get(7)?,
                    delta_spent: r.get(8)?,
                    title: r.get(9)?,
                    purpose: r.get(10)?,
                    owner: r.get(11)?,
                    members: Vec::new(),
                    requested,
                    duration_days: r.get(15)?,
                    expires_at: r.get(16)?,
                    decided_by: r.get(17)?,
                    decided_at: r.get(18)?,
                    reason: r.get(19)?,
                })
            },
        )
        .optional()?;
    let Some(mut p) = row else { return Ok(None) };
    // Expiry is decided when the project is read, against the clock: the debit (which reads
    // the project in its transaction) refuses an expired project without any background job.
    if p.status == "active" && p.expires_at.as_deref().is_some_and(|e| e <= now_rfc3339().as_str()) {
        p.status = "expired".into();
    }
    p.members = conn
        .prepare_cached("SELECT user_name FROM project_members WHERE project_id = ?1 ORDER BY user_name")?
        .query_map([p.id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(p))
}
