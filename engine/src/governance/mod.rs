//! Who may ask what: the warehouse's policy, projects and their lifecycle, accounts.
//!
//! ```text
//! pending ──approve──► active ──suspend──► suspended ──resume──► active
//!    │                   │  (expires_at passes: expired)
//!    └──reject──► rejected   any but rejected ──close──► closed
//! ```
//!
//! Only `active` projects (not past their expiry) can be debited: that check lives in the
//! ledger's debit ([`crate::budget::Ledger::debit`]), inside the transaction that spends, and
//! reads the project and the policy through the functions here. Every change of a project or of
//! the policy writes its audit entry in the transaction that makes the change, whoever calls.

pub mod accounts;

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::audit::{self, Event};
use crate::db::{self, Layout, now_rfc3339};
use crate::error::{Error, Result};

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

/// Where a project stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProjectStatus {
    Pending,
    Active,
    Rejected,
    Suspended,
    Closed,
    /// Active, but past its `expires_at` (decided when read: expiry needs no background job).
    Expired,
}

impl ProjectStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectStatus::Pending => "pending",
            ProjectStatus::Active => "active",
            ProjectStatus::Rejected => "rejected",
            ProjectStatus::Suspended => "suspended",
            ProjectStatus::Closed => "closed",
            ProjectStatus::Expired => "expired",
        }
    }

    fn stored(s: &str) -> Result<ProjectStatus> {
        Ok(match s {
            "pending" => ProjectStatus::Pending,
            "active" => ProjectStatus::Active,
            "rejected" => ProjectStatus::Rejected,
            "suspended" => ProjectStatus::Suspended,
            "closed" => ProjectStatus::Closed,
            other => return Err(Error::internal(format!("project status {other:?} in the catalog"))),
        })
    }
}

impl std::str::FromStr for ProjectStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<ProjectStatus> {
        match s {
            "expired" => Ok(ProjectStatus::Expired),
            other => ProjectStatus::stored(other).map_err(|_| {
                Error::BadRequest(format!("unknown status {other:?}: pending, active, rejected, suspended, closed or expired"))
            }),
        }
    }
}

impl std::fmt::Display for ProjectStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// How a project composes its queries' privacy loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Accounting {
    /// Pure ε-DP, Laplace noise, ε added up.
    #[default]
    Pure,
    /// ρ-zero-concentrated DP, Gaussian noise, ρ added up, reported as the (ε, δ) it implies.
    Zcdp,
}

impl Accounting {
    pub fn parse(s: &str) -> Option<Accounting> {
        match s.to_ascii_lowercase().as_str() {
            "pure" | "epsilon" | "pure-dp" => Some(Accounting::Pure),
            "zcdp" | "rho" | "zero-concentrated" => Some(Accounting::Zcdp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Accounting::Pure => "pure",
            Accounting::Zcdp => "zcdp",
        }
    }

    /// The ρ a query asked at ε is charged in a zCDP project.
    pub fn rho_of(epsilon: f64) -> f64 {
        epsilon * epsilon / 2.0
    }
}

/// A project, its grant and what it has spent.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Project {
    pub id: i64,
    pub name: String,
    pub epsilon: f64,
    pub delta: f64,
    pub tables: Vec<String>,
    pub status: ProjectStatus,
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
    /// How its queries compose: pure ε, or ρ-zCDP (the grant stated as (ε, δ) either way).
    pub accounting: Accounting,
    /// ρ spent by its queries (zCDP projects; 0 otherwise). `epsilon_spent` is then the ε this
    /// ρ implies at the grant's δ.
    pub rho_spent: f64,
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

/// What a researcher asks for.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectRequest {
    pub title: String,
    pub purpose: String,
    pub tables: Vec<String>,
    pub epsilon: f64,
    pub delta: f64,
    pub duration_days: i64,
    /// Co-investigators (researcher accounts) who may also query.
    #[serde(default)]
    pub members: Vec<String>,
    /// `pure` (default) or `zcdp`: how the project's queries compose (the steward may change it
    /// at approval).
    #[serde(default)]
    pub accounting: Accounting,
}

/// What a steward grants; anything left out is granted as requested.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    pub epsilon: Option<f64>,
    pub delta: Option<f64>,
    pub tables: Option<Vec<String>>,
    /// RFC 3339; default: approval time plus the requested duration.
    pub expires_at: Option<String>,
    /// How the project accounts (default: as requested, pure ε if not said).
    pub accounting: Option<Accounting>,
}

/// A steward's decision on an existing project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Suspend,
    Resume,
    Close,
}

impl Transition {
    pub fn verb(self) -> &'static str {
        match self {
            Transition::Suspend => "suspend",
            Transition::Resume => "resume",
            Transition::Close => "close",
        }
    }

    /// The statuses it applies to, and the status it leads to.
    fn edge(self) -> (&'static [ProjectStatus], ProjectStatus) {
        use ProjectStatus::*;
        match self {
            Transition::Suspend => (&[Active], Suspended),
            Transition::Resume => (&[Suspended], Active),
            Transition::Close => (&[Pending, Active, Suspended, Expired], Closed),
        }
    }
}

/// The policy as stored (defaults for what a steward never set). The one place it is parsed:
/// the ledger reads its caps through this inside the debit's transaction.
pub fn policy(conn: &Connection) -> Result<Policy> {
    let get = |key: &str| -> Result<Option<String>> {
        Ok(conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    };
    fn parsed<T: std::str::FromStr>(v: Option<String>, default: T) -> T {
        v.and_then(|v| v.parse().ok()).unwrap_or(default)
    }
    let d = Policy::default();
    Ok(Policy {
        patient_epsilon_cap: parsed(get("policy.patient_epsilon_cap")?, d.patient_epsilon_cap),
        patient_delta_cap: parsed(get("policy.patient_delta_cap")?, d.patient_delta_cap),
        query_epsilon_cap: parsed(get("policy.query_epsilon_cap")?, d.query_epsilon_cap),
        suppression_threshold: parsed(get("policy.suppression_threshold")?, d.suppression_threshold),
        round_digits: parsed(get("policy.round_digits")?, d.round_digits),
    })
}

/// A project by numeric id or by name.
/// zCDP needs δ > 0: the grant is stated, and spent, as the (ε, δ) its ρ implies.
pub fn check_accounting(accounting: Accounting, delta: f64) -> Result<()> {
    if accounting == Accounting::Zcdp && !(delta > 0.0) {
        return Err(Error::BadRequest(
            "zCDP accounting needs a δ > 0 in the grant (its ρ is spent as the (ε, δ) it implies); give --delta".into(),
        ));
    }
    Ok(())
}

pub fn project(conn: &Connection, reference: &str) -> Result<Option<Project>> {
    let id: Option<i64> = match reference.parse::<i64>() {
        Ok(id) => Some(id),
        Err(_) => conn.query_row("SELECT id FROM projects WHERE name = ?1", [reference], |r| r.get(0)).optional()?,
    };
    match id {
        Some(id) => project_by_id(conn, id),
        None => Ok(None),
    }
}

fn project_by_id(conn: &Connection, id: i64) -> Result<Option<Project>> {
    let row = conn
        .query_row(
            "SELECT p.id, p.name, p.epsilon, p.delta, p.tables, p.status, p.created_at,
                    COALESCE(s.epsilon, 0),
                    COALESCE(s.delta, 0),
                    p.title, p.purpose, p.owner, p.requested_epsilon, p.requested_delta, p.requested_tables,
                    p.duration_days, p.expires_at, p.decided_by, p.decided_at, p.reason, p.accounting,
                    COALESCE(s.rho, 0)
             FROM projects p LEFT JOIN spent s ON s.project_id = p.id WHERE p.id = ?1",
            [id],
            |r| {
                let tables: String = r.get(4)?;
                let requested = match (r.get::<_, Option<f64>>(12)?, r.get::<_, Option<f64>>(13)?, r.get::<_, Option<String>>(14)?) {
                    (Some(epsilon), Some(delta), Some(t)) => Some(Grant { epsilon, delta, tables: split_tables(&t) }),
                    _ => None,
                };
                Ok((
                    r.get::<_, String>(5)?,
                    Project {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        epsilon: r.get(2)?,
                        delta: r.get(3)?,
                        tables: split_tables(&tables),
                        status: ProjectStatus::Pending,
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
                        accounting: Accounting::parse(&r.get::<_, String>(20)?).unwrap_or_default(),
                        rho_spent: r.get(21)?,
                    },
                ))
            },
        )
        .optional()?;
    let Some((status, mut p)) = row else { return Ok(None) };
    p.status = ProjectStatus::stored(&status)?;
    // Expiry is decided when the project is read, against the clock: the debit (which reads
    // the project in its transaction) refuses an expired project without any background job.
    if p.status == ProjectStatus::Active && p.expires_at.as_deref().is_some_and(|e| e <= now_rfc3339().as_str()) {
        p.status = ProjectStatus::Expired;
    }
    p.members = conn
        .prepare_cached("SELECT user_name FROM project_members WHERE project_id = ?1 ORDER BY user_name")?
        .query_map([p.id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(p))
}

fn split_tables(tables: &str) -> Vec<String> {
    tables.split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect()
}

/// The audit entry of a change to a project, with the grant it sets if any.
fn project_event<'a>(actor: &'a str, action: &'a str, project: &'a str, grant: Option<(f64, f64)>, detail: Option<&'a str>) -> Event<'a> {
    Event {
        actor,
        action,
        project: Some(project),
        epsilon: grant.map(|g| g.0),
        delta: grant.map(|g| g.1),
        outcome: "ok",
        detail,
        ..Default::default()
    }
}

/// A grant's ε and δ: the one check for every way a budget is set.
fn check_grant(epsilon: f64, delta: f64) -> Result<()> {
    if !(epsilon.is_finite() && epsilon > 0.0) {
        return Err(Error::BadRequest(format!("epsilon must be a positive number, got {epsilon}")));
    }
    if !(delta.is_finite() && (0.0..1.0).contains(&delta)) {
        return Err(Error::BadRequest(format!("delta must be in [0, 1), got {delta}")));
    }
    Ok(())
}

fn check_tables(tables: &[String], known: &[String]) -> Result<()> {
    if tables.is_empty() {
        return Err(Error::BadRequest("tables: a project needs at least one table".into()));
    }
    match tables.iter().find(|t| !known.contains(t)) {
        Some(t) => Err(Error::BadRequest(format!("unknown table {t:?}; the warehouse has {}", known.join(", ")))),
        None => Ok(()),
    }
}

fn slug(title: &str) -> String {
    let mut s = String::new();
    for c in title.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            s.push(c);
        } else if !s.ends_with('-') && !s.is_empty() {
            s.push('-');
        }
        if s.len() >= 40 {
            break;
        }
    }
    let s = s.trim_end_matches('-').to_owned();
    if s.is_empty() { "project".into() } else { s }
}

/// Parse an RFC 3339 time into the catalog's sortable UTC form.
fn normalize_time(t: &str) -> Result<String> {
    let parsed = chrono::DateTime::parse_from_rfc3339(t)
        .map_err(|e| Error::BadRequest(format!("expires_at {t:?} is not an RFC 3339 time (e.g. 2027-06-30T00:00:00Z): {e}")))?;
    Ok(parsed.with_timezone(&chrono::Utc).format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
}

/// Projects and policy over the warehouse database.
pub struct Governance {
    conn: Connection,
}

impl Governance {
    pub fn open(data_dir: &Path) -> Result<Governance> {
        Ok(Governance { conn: db::open(&Layout::new(data_dir).database())? })
    }

    pub fn from_connection(conn: Connection) -> Governance {
        Governance { conn }
    }

    pub fn into_connection(self) -> Connection {
        self.conn
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn policy(&self) -> Result<Policy> {
        policy(&self.conn)
    }

    /// Change the policy, on `actor`'s behalf, with its audit entry.
    pub fn set_policy(&mut self, actor: &str, update: &PolicyUpdate) -> Result<Policy> {
        let positive = |name: &str, v: Option<f64>| match v {
            Some(x) if !(x.is_finite() && x > 0.0) => Err(Error::BadRequest(format!("{name} must be a positive number, got {x}"))),
            _ => Ok(()),
        };
        positive("--patient-epsilon-cap", update.patient_epsilon_cap)?;
        positive("--query-epsilon-cap", update.query_epsilon_cap)?;
        if let Some(d) = update.patient_delta_cap
            && !(d.is_finite() && (0.0..1.0).contains(&d))
        {
            return Err(Error::BadRequest(format!("--patient-delta-cap must be in [0, 1), got {d}")));
        }
        if update.round_digits.is_some_and(|d| d > 12) {
            return Err(Error::BadRequest("--round-digits must be at most 12".into()));
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
        let p = policy(&tx)?;
        let detail = format!(
            "patient ε cap {}, patient δ cap {:e}, query ε cap {}, suppression threshold {}, rounding {} digits",
            p.patient_epsilon_cap, p.patient_delta_cap, p.query_epsilon_cap, p.suppression_threshold, p.round_digits
        );
        audit::append_in(&tx, &Event { actor, action: "policy.changed", outcome: "ok", detail: Some(&detail), ..Default::default() })?;
        tx.commit()?;
        Ok(p)
    }

    /// A project created and granted at once by a steward (no request), with its audit entry.
    pub fn create_project(
        &mut self,
        actor: &str,
        name: &str,
        epsilon: f64,
        delta: f64,
        tables: &[String],
        known_tables: &[String],
    ) -> Result<Project> {
        if name.is_empty() || name.len() > 100 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(Error::BadRequest(format!("project name {name:?}: use 1 to 100 letters, digits, '-', '_' or '.'")));
        }
        if name.parse::<i64>().is_ok() {
            return Err(Error::BadRequest(format!("project name {name:?}: a name may not be a number (numbers are project ids)")));
        }
        check_grant(epsilon, delta)?;
        check_tables(tables, known_tables)?;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: bool = tx.query_row("SELECT EXISTS (SELECT 1 FROM projects WHERE name = ?1)", [name], |r| r.get(0))?;
        if exists {
            return Err(Error::Conflict(format!("project {name:?} already exists")));
        }
        tx.execute(
            "INSERT INTO projects (name, epsilon, delta, tables, status, created_at) VALUES (?1, ?2, ?3, ?4, 'active', ?5)",
            params![name, epsilon, delta, tables.join(","), now_rfc3339()],
        )?;
        let id = tx.last_insert_rowid();
        let detail = format!("tables {}", tables.join(","));
        let event = project_event(actor, "project.created", name, Some((epsilon, delta)), Some(&detail));
        audit::append_in(&tx, &event)?;
        tx.commit()?;
        self.by_id(id)
    }

    /// A project by numeric id or by name.
    pub fn project(&self, reference: &str) -> Result<Option<Project>> {
        project(&self.conn, reference)
    }

    /// A project that must exist.
    pub fn existing(&self, reference: &str) -> Result<Project> {
        self.project(reference)?.ok_or_else(|| Error::not_found("project", format!("{reference:?}")))
    }

    fn by_id(&self, id: i64) -> Result<Project> {
        project_by_id(&self.conn, id)?.ok_or_else(|| Error::internal(format!("project #{id} vanished after its change")))
    }

    pub fn projects(&self) -> Result<Vec<Project>> {
        let ids: Vec<i64> = self
            .conn
            .prepare_cached("SELECT id FROM projects ORDER BY id")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        ids.into_iter().filter_map(|id| project_by_id(&self.conn, id).transpose()).collect()
    }

    /// Projects a researcher belongs to.
    pub fn projects_of(&self, user: &str) -> Result<Vec<Project>> {
        Ok(self.projects()?.into_iter().filter(|p| p.members.iter().any(|m| m == user)).collect())
    }

    /// Record a researcher's request (status `pending`, nothing granted yet). `known_tables`
    /// are the warehouse's tables; `researchers` the accounts that may be co-investigators.
    pub fn request_project(
        &mut self,
        owner: &str,
        req: &ProjectRequest,
        known_tables: &[String],
        researchers: &[String],
    ) -> Result<Project> {
        let title = req.title.trim();
        if title.is_empty() || title.chars().count() > 200 {
            return Err(Error::BadRequest("title must be 1 to 200 characters".into()));
        }
        if req.purpose.trim().is_empty() || req.purpose.len() > 20_000 {
            return Err(Error::BadRequest("purpose must be 1 to 20000 bytes: describe the study protocol".into()));
        }
        check_grant(req.epsilon, req.delta)?;
        check_accounting(req.accounting, req.delta)?;
        if !(1..=3650).contains(&req.duration_days) {
            return Err(Error::BadRequest(format!("duration_days must be 1 to 3650, got {}", req.duration_days)));
        }
        check_tables(&req.tables, known_tables)?;
        if let Some(m) = req.members.iter().find(|m| !researchers.contains(m)) {
            return Err(Error::BadRequest(format!("member {m:?} is not a researcher account")));
        }
        let base = slug(title);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut name = base.clone();
        let mut n = 1;
        while tx.query_row("SELECT EXISTS (SELECT 1 FROM projects WHERE name = ?1)", [&name], |r| r.get::<_, bool>(0))? {
            n += 1;
            name = format!("{base}-{n}");
        }
        let mut tables = req.tables.clone();
        tables.dedup();
        tx.execute(
            "INSERT INTO projects (name, epsilon, delta, tables, status, created_at, title, purpose, owner,
                                   requested_epsilon, requested_delta, requested_tables, duration_days, accounting)
             VALUES (?1, 0, 0, '', 'pending', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                name,
                now_rfc3339(),
                title,
                req.purpose,
                owner,
                req.epsilon,
                req.delta,
                tables.join(","),
                req.duration_days,
                req.accounting.name()
            ],
        )?;
        let id = tx.last_insert_rowid();
        let members: std::collections::BTreeSet<&str> = std::iter::once(owner).chain(req.members.iter().map(String::as_str)).collect();
        for m in &members {
            tx.execute("INSERT INTO project_members (project_id, user_name) VALUES (?1, ?2)", params![id, m])?;
        }
        let members: Vec<&str> = members.into_iter().collect();
        let detail = format!("tables {}; {} days; members {}", req.tables.join(","), req.duration_days, members.join(","));
        let event = project_event(owner, "project.requested", &name, Some((req.epsilon, req.delta)), Some(&detail));
        audit::append_in(&tx, &event)?;
        tx.commit()?;
        self.by_id(id)
    }

    /// Approve a pending request, granting at most what was asked.
    pub fn approve(&mut self, reference: &str, steward: &str, approval: &Approval) -> Result<Project> {
        let p = self.existing(reference)?;
        if p.status != ProjectStatus::Pending {
            return Err(Error::Conflict(format!("project {} is {}; only pending requests can be approved", p.name, p.status)));
        }
        let asked = p.requested.clone().ok_or_else(|| Error::Conflict(format!("project {} has no request to approve", p.name)))?;
        let epsilon = approval.epsilon.unwrap_or(asked.epsilon);
        let delta = approval.delta.unwrap_or(asked.delta);
        check_grant(epsilon, delta)?;
        if epsilon > asked.epsilon * (1.0 + 1e-12) || delta > asked.delta * (1.0 + 1e-12) {
            return Err(Error::BadRequest(format!(
                "a grant may not exceed the request (ε {}, δ {:e}); the researcher can file a new request",
                asked.epsilon, asked.delta
            )));
        }
        let tables = approval.tables.clone().unwrap_or(asked.tables.clone());
        if tables.is_empty() {
            return Err(Error::BadRequest("tables: grant at least one table (or reject the request)".into()));
        }
        if let Some(t) = tables.iter().find(|t| !asked.tables.contains(t)) {
            return Err(Error::BadRequest(format!("table {t:?} was not requested; grant a subset of {}", asked.tables.join(", "))));
        }
        let now = now_rfc3339();
        let expires_at = match &approval.expires_at {
            Some(t) => {
                let t = normalize_time(t)?;
                if t <= now {
                    return Err(Error::BadRequest(format!("expires_at {t} is in the past")));
                }
                t
            }
            None => {
                let days = p.duration_days.unwrap_or(365);
                (chrono::Utc::now() + chrono::Duration::days(days)).format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
            }
        };
        let accounting = approval.accounting.unwrap_or(p.accounting);
        check_accounting(accounting, delta)?;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let changed = tx.execute(
            "UPDATE projects SET status = 'active', epsilon = ?1, delta = ?2, tables = ?3, expires_at = ?4,
                                 decided_by = ?5, decided_at = ?6, accounting = ?8 WHERE id = ?7 AND status = 'pending'",
            params![epsilon, delta, tables.join(","), expires_at, steward, now, p.id, accounting.name()],
        )?;
        if changed == 0 {
            return Err(Error::Conflict(format!("project {} was decided concurrently", p.name)));
        }
        let detail = format!("granted tables {}; {} accounting; expires {expires_at}", tables.join(","), accounting.name());
        let event = project_event(steward, "project.approved", &p.name, Some((epsilon, delta)), Some(&detail));
        audit::append_in(&tx, &event)?;
        tx.commit()?;
        self.by_id(p.id)
    }

    /// Choose how a project accounts, before it has spent anything (a ledger of one kind cannot
    /// be re-read as the other).
    pub fn set_accounting(&mut self, actor: &str, reference: &str, accounting: Accounting) -> Result<Project> {
        let p = self.existing(reference)?;
        check_accounting(accounting, p.delta)?;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let spent: i64 = tx.query_row("SELECT COUNT(*) FROM ledger WHERE project_id = ?1", [p.id], |r| r.get(0))?;
        if spent > 0 && accounting != p.accounting {
            return Err(Error::Conflict(format!(
                "project {} has charged queries in {} accounting; its accounting can no longer change",
                p.name,
                p.accounting.name()
            )));
        }
        tx.execute("UPDATE projects SET accounting = ?1 WHERE id = ?2", params![accounting.name(), p.id])?;
        let detail = format!("{} accounting", accounting.name());
        audit::append_in(&tx, &project_event(actor, "project.accounting", &p.name, None, Some(&detail)))?;
        tx.commit()?;
        self.by_id(p.id)
    }

    /// Reject a pending request with a reason the researcher will read.
    pub fn reject(&mut self, reference: &str, steward: &str, reason: &str) -> Result<Project> {
        let p = self.existing(reference)?;
        if reason.trim().is_empty() || reason.len() > 5000 {
            return Err(Error::BadRequest("reason must be 1 to 5000 bytes".into()));
        }
        let reason = reason.trim();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let changed = tx.execute(
            "UPDATE projects SET status = 'rejected', reason = ?1, decided_by = ?2, decided_at = ?3 WHERE id = ?4 AND status = 'pending'",
            params![reason, steward, now_rfc3339(), p.id],
        )?;
        if changed == 0 {
            return Err(Error::Conflict(format!("project {} is {}; only pending requests can be rejected", p.name, p.status)));
        }
        let event = project_event(steward, "project.rejected", &p.name, None, Some(reason));
        audit::append_in(&tx, &event)?;
        tx.commit()?;
        self.by_id(p.id)
    }

    /// Suspend, resume or close. The ledger keeps everything spent.
    pub fn transition(&mut self, reference: &str, steward: &str, t: Transition, reason: Option<&str>) -> Result<Project> {
        let p = self.existing(reference)?;
        let (from, to) = t.edge();
        if !from.contains(&p.status) {
            return Err(Error::Conflict(format!("project {} is {}; cannot {} it", p.name, p.status, t.verb())));
        }
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE projects SET status = ?1, reason = COALESCE(?2, reason), decided_by = ?3, decided_at = ?4 WHERE id = ?5",
            params![to.as_str(), reason, steward, now_rfc3339(), p.id],
        )?;
        let action = format!("project.{to}");
        let event = project_event(steward, &action, &p.name, None, reason);
        audit::append_in(&tx, &event)?;
        tx.commit()?;
        self.by_id(p.id)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::budget::{Charge, Ledger};

    fn open() -> (tempfile::TempDir, Governance, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let g = Governance::open(dir.path()).unwrap();
        let l = Ledger::open(dir.path()).unwrap();
        (dir, g, l)
    }

    fn request() -> ProjectRequest {
        ProjectRequest {
            title: "Diabetes by decade (2026)".into(),
            purpose: "Protocol 12: prevalence of type 2 diabetes".into(),
            tables: vec!["person".into(), "measurement".into()],
            epsilon: 2.0,
            delta: 1e-6,
            duration_days: 30,
            members: vec!["bob".into()],
            accounting: Default::default(),
        }
    }

    fn spend(l: &mut Ledger, project: &str) -> Result<()> {
        l.debit(&Charge { actor: "t", project, sql: "q", epsilon: 0.1, delta: 0.0, rho: 0.0 }).map(drop)
    }

    #[test]
    fn request_approve_suspend_resume_close() {
        let (_d, mut g, mut l) = open();
        let known = vec!["person".to_string(), "measurement".into(), "condition_occurrence".into()];
        let p = g.request_project("alice", &request(), &known, &["alice".into(), "bob".into()]).unwrap();
        assert_eq!((p.name.as_str(), p.status), ("diabetes-by-decade-2026", ProjectStatus::Pending));
        assert_eq!(p.members, vec!["alice", "bob"]);
        assert!(matches!(spend(&mut l, &p.name), Err(Error::Budget(_))), "pending projects cannot spend");

        let second = g.request_project("alice", &request(), &known, &["bob".into()]).unwrap();
        assert_eq!(second.name, "diabetes-by-decade-2026-2");

        let too_much = Approval { epsilon: Some(5.0), ..Default::default() };
        assert!(matches!(g.approve(&p.id.to_string(), "sue", &too_much), Err(Error::BadRequest(_))));
        let extra_table = Approval { tables: Some(vec!["condition_occurrence".into()]), ..Default::default() };
        assert!(matches!(g.approve(&p.name, "sue", &extra_table), Err(Error::BadRequest(_))));
        let grant = Approval { epsilon: Some(1.0), tables: Some(vec!["person".into()]), ..Default::default() };
        let p = g.approve(&p.name, "sue", &grant).unwrap();
        assert_eq!((p.status, p.epsilon, p.tables.clone()), (ProjectStatus::Active, 1.0, vec!["person".to_string()]));
        assert!(p.expires_at.is_some());
        assert!(matches!(g.approve(&p.name, "sue", &grant), Err(Error::Conflict(_))));
        spend(&mut l, &p.name).unwrap();

        let p = g.transition(&p.name, "sue", Transition::Suspend, Some("audit pending")).unwrap();
        assert_eq!(p.status, ProjectStatus::Suspended);
        assert!(spend(&mut l, &p.name).is_err());
        assert!(matches!(g.transition(&p.name, "sue", Transition::Suspend, None), Err(Error::Conflict(_))));
        let p = g.transition(&p.name, "sue", Transition::Resume, None).unwrap();
        assert_eq!(p.status, ProjectStatus::Active);
        let p = g.transition(&p.name, "sue", Transition::Close, None).unwrap();
        assert_eq!(p.status, ProjectStatus::Closed);
        assert!((p.epsilon_spent - 0.1).abs() < 1e-12, "closing keeps the ledger");

        assert!(matches!(g.reject(&second.name, "sue", " "), Err(Error::BadRequest(_))));
        let r = g.reject(&second.name, "sue", "protocol lacks ethics approval").unwrap();
        assert_eq!(r.status, ProjectStatus::Rejected);
        assert!(matches!(g.approve(&r.name, "sue", &Approval::default()), Err(Error::Conflict(_))));
        assert!(matches!(g.approve("999", "sue", &Approval::default()), Err(Error::NotFound { .. })));
        assert_eq!(g.projects_of("bob").unwrap().len(), 2);
        assert_eq!(g.projects_of("carol").unwrap().len(), 0);
        // Each change wrote its audit entry with it, and the chain holds.
        let actions: Vec<String> = audit::entries(&g.conn, &audit::Filter::default()).unwrap().into_iter().map(|e| e.action).collect();
        let want = [
            "project.requested",
            "project.requested",
            "project.approved",
            // The debit audits its query in its own transaction.
            "query.submitted",
            "project.suspended",
            "project.active",
            "project.closed",
            "project.rejected",
        ];
        assert_eq!(actions, want);
        assert!(audit::verify(&g.conn).unwrap().ok());
    }

    #[test]
    fn an_expired_project_cannot_spend() {
        let (_d, mut g, mut l) = open();
        let known = ["person".into(), "measurement".into()];
        let p = g.request_project("alice", &request(), &known, &["bob".into()]).unwrap();
        let soon = (chrono::Utc::now() + chrono::Duration::milliseconds(300)).to_rfc3339();
        let p = g.approve(&p.name, "sue", &Approval { expires_at: Some(soon), ..Default::default() }).unwrap();
        spend(&mut l, &p.name).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(400));
        assert_eq!(g.project(&p.name).unwrap().unwrap().status, ProjectStatus::Expired);
        assert!(spend(&mut l, &p.name).is_err());
        let past = Approval { expires_at: Some("2020-01-01T00:00:00Z".into()), ..Default::default() };
        let q = g.request_project("alice", &request(), &known, &["bob".into()]).unwrap();
        assert!(matches!(g.approve(&q.name, "sue", &past), Err(Error::BadRequest(_))));
    }

    #[test]
    fn bad_requests_are_refused_with_the_field_named() {
        let (_d, mut g, _l) = open();
        let known = vec!["person".to_string(), "measurement".into()];
        let cases: Vec<(fn(&mut ProjectRequest), &str)> = vec![
            (|r| r.title = "".into(), "title"),
            (|r| r.purpose = " ".into(), "purpose"),
            (|r| r.epsilon = -1.0, "epsilon"),
            (|r| r.delta = 1.0, "delta"),
            (|r| r.duration_days = 0, "duration_days"),
            (|r| r.tables = vec!["secrets".into()], "table"),
            (|r| r.members = vec!["mallory".into()], "member"),
        ];
        for (mutate, field) in cases {
            let mut r = request();
            mutate(&mut r);
            let err = g.request_project("alice", &r, &known, &["bob".into()]).unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn policy_changes_are_validated_and_audited() {
        let (_d, mut g, _l) = open();
        assert_eq!(g.policy().unwrap(), Policy::default());
        let p = g.set_policy("sue", &PolicyUpdate { patient_delta_cap: Some(1e-6), ..Default::default() }).unwrap();
        assert_eq!(p.patient_delta_cap, 1e-6);
        assert!(matches!(
            g.set_policy("sue", &PolicyUpdate { patient_epsilon_cap: Some(-1.0), ..Default::default() }),
            Err(Error::BadRequest(_))
        ));
        let log = audit::entries(&g.conn, &audit::Filter::default()).unwrap();
        assert_eq!(log.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), ["policy.changed"]);
    }
}
