//! The budget ledger: the trusted counter of privacy loss.
//!
//! Accounting is basic (sequential) composition: a project that released answers at
//! (ε₁, δ₁), …, (εₙ, δₙ) has spent (Σεᵢ, Σδᵢ) (Dwork & Roth, Theorem 3.16). The same sums,
//! taken over every project, bound what any one patient can lose, because a patient may be
//! in every project's data: that total is held under the warehouse-wide per-patient cap.
//!
//! Every debit is one `BEGIN IMMEDIATE` SQLite transaction that reads what was spent, checks
//! it against the project's grant and the warehouse cap, and inserts the debit. SQLite
//! serializes immediate transactions across threads and processes, so concurrent queries can
//! never both see the same remaining budget; with `synchronous = FULL` the debit is on disk
//! before [`Ledger::debit`] returns, which is before any data is read. A query that fails or
//! is killed after that stays charged.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use crate::catalog::{Catalog, now_rfc3339};
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
    /// The largest ε one query may spend.
    pub query_epsilon_cap: f64,
    /// Noisy counts under this threshold are suppressed (0 disables).
    pub suppression_threshold: u32,
    /// Decimal digits kept in released non-count values.
    pub round_digits: u32,
}

impl Default for Policy {
    fn default() -> Policy {
        // Conservative: a patient's total loss across every project stays at ε = 10 unless a
        // steward decides otherwise; one query spends at most ε = 1.
        Policy { patient_epsilon_cap: 10.0, query_epsilon_cap: 1.0, suppression_threshold: 10, round_digits: 2 }
    }
}

/// A change to the policy: only the fields given change.
#[derive(Debug, Clone, Default)]
pub struct PolicyUpdate {
    pub patient_epsilon_cap: Option<f64>,
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
}

/// A durable debit: the ledger row that charged a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debit(pub i64);

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

    /// Check and spend, atomically and durably. On `Ok` the debit is on disk.
    pub fn debit(&mut self, project: &str, epsilon: f64, delta: f64, sql: &str) -> Result<std::result::Result<Debit, Refused>> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(p) = project_in(&tx, project)? else {
            return Ok(Err(Refused::UnknownProject(project.into())));
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
        let cap: f64 = tx
            .query_row("SELECT value FROM meta WHERE key = 'policy.patient_epsilon_cap'", [], |r| r.get::<_, String>(0))
            .optional()?
            .and_then(|v| v.parse().ok())
            .unwrap_or(Policy::default().patient_epsilon_cap);
        let spent: f64 = tx.query_row("SELECT COALESCE(SUM(epsilon), 0) FROM ledger", [], |r| r.get(0))?;
        if spent + epsilon > cap + EPS_SLACK {
            return Ok(Err(Refused::PatientCap { spent, cap, asked: epsilon }));
        }
        tx.execute(
            "INSERT INTO ledger (project_id, epsilon, delta, sql, status, created_at) VALUES (?1, ?2, ?3, ?4, 'debited', ?5)",
            params![p.id, epsilon, delta, sql, now_rfc3339()],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(Ok(Debit(id)))
    }

    /// Record how a charged query ended (`released` or `failed`). The charge itself stays.
    pub fn settle(&self, debit: Debit, outcome: &str) -> Result<()> {
        // The outcome is bookkeeping: the charge was made durable by `debit`, and a settle lost
        // to a power cut leaves the row `debited`, still charged. So this write skips the fsync
        // (WAL with synchronous = NORMAL survives a killed process, only not a power cut).
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        let done =
            self.conn.execute("UPDATE ledger SET status = ?1, finished_at = ?2 WHERE id = ?3", params![outcome, now_rfc3339(), debit.0]);
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        done?;
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
