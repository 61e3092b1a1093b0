//! The life of a project: a researcher requests, a steward approves (possibly granting less)
//! or rejects, and may later suspend, resume or close it.
//!
//! ```text
//! pending ──approve──► active ──suspend──► suspended ──resume──► active
//!    │                   │  (expires_at passes: expired)
//!    └──reject──► rejected   any but rejected ──close──► closed
//! ```
//!
//! Only `active` projects (not past their expiry) can be debited: that check lives in
//! [`Ledger::debit`], inside the same transaction that spends. Every change of a project writes
//! its audit entry in the transaction that makes the change, whoever calls (CLI or server).

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Deserialize;

use crate::audit::{self, Event};
use crate::budget::{Ledger, Project, project_in};
use crate::catalog::now_rfc3339;
use crate::error::{Error, Result};

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

fn check_budget(epsilon: f64, delta: f64) -> Result<()> {
    if !(epsilon.is_finite() && epsilon > 0.0) {
        return Err(Error::Usage(format!("epsilon must be a positive number, got {epsilon}")));
    }
    if !(delta.is_finite() && (0.0..1.0).contains(&delta)) {
        return Err(Error::Usage(format!("delta must be in [0, 1), got {delta}")));
    }
    Ok(())
}

/// Parse an RFC 3339 time into the catalog's sortable UTC form.
fn normalize_time(t: &str) -> Result<String> {
    let parsed = chrono::DateTime::parse_from_rfc3339(t)
        .map_err(|e| Error::Usage(format!("expires_at {t:?} is not an RFC 3339 time (e.g. 2027-06-30T00:00:00Z): {e}")))?;
    Ok(parsed.with_timezone(&chrono::Utc).format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
}

/// One ledger row: a charged query.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerEntry {
    pub id: i64,
    pub epsilon: f64,
    pub delta: f64,
    pub status: String,
    pub created_at: String,
    pub sql: String,
}

impl Ledger {
    /// The charged queries of a project, oldest first.
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

    /// A project by numeric id or by name.
    pub fn project_ref(&self, reference: &str) -> Result<Option<Project>> {
        if let Ok(id) = reference.parse::<i64>() {
            let name: Option<String> = self.conn.query_row("SELECT name FROM projects WHERE id = ?1", [id], |r| r.get(0)).optional()?;
            return match name {
                Some(n) => project_in(&self.conn, &n),
                None => Ok(None),
            };
        }
        project_in(&self.conn, reference)
    }

    fn existing(&self, reference: &str) -> Result<Project> {
        self.project_ref(reference)?.ok_or_else(|| Error::NotFound(format!("project {reference:?}")))
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
            return Err(Error::Usage("title must be 1 to 200 characters".into()));
        }
        if req.purpose.trim().is_empty() || req.purpose.len() > 20_000 {
            return Err(Error::Usage("purpose must be 1 to 20000 bytes: describe the study protocol".into()));
        }
        check_budget(req.epsilon, req.delta)?;
        if !(1..=3650).contains(&req.duration_days) {
            return Err(Error::Usage(format!("duration_days must be 1 to 3650, got {}", req.duration_days)));
        }
        if req.tables.is_empty() {
            return Err(Error::Usage("tables: a project needs at least one table".into()));
        }
        for t in &req.tables {
            if !known_tables.contains(t) {
                return Err(Error::Usage(format!("unknown table {t:?}; the warehouse has {}", known_tables.join(", "))));
            }
        }
        for m in &req.members {
            if !researchers.contains(m) {
                return Err(Error::Usage(format!("member {m:?} is not a researcher account")));
            }
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
                                   requested_epsilon, requested_delta, requested_tables, duration_days)
             VALUES (?1, 0, 0, '', 'pending', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![name, now_rfc3339(), title, req.purpose, owner, req.epsilon, req.delta, tables.join(","), req.duration_days],
        )?;
        let id = tx.last_insert_rowid();
        let members: std::collections::BTreeSet<&str> = std::iter::once(owner).chain(req.members.iter().map(String::as_str)).collect();
        for m in &members {
            tx.execute("INSERT INTO project_members (project_id, user_name) VALUES (?1, ?2)", params![id, m])?;
        }
        let members: Vec<&str> = members.into_iter().collect();
        let detail = format!("tables {}; {} days; members {}", req.tables.join(","), req.duration_days, members.join(","));
        let event = Event {
            actor: owner,
            action: "project.requested",
            project: Some(&name),
            epsilon: Some(req.epsilon),
            delta: Some(req.delta),
            outcome: "ok",
            detail: Some(&detail),
            ..Default::default()
        };
        audit::append_in(&tx, &event)?;
        tx.commit()?;
        self.existing(&name)
    }

    /// Approve a pending request, granting at most what was asked.
    pub fn approve(&mut self, reference: &str, steward: &str, approval: &Approval) -> Result<Project> {
        let p = self.existing(reference)?;
        if p.status != "pending" {
            return Err(Error::Conflict(format!("project {} is {}; only pending requests can be approved", p.name, p.status)));
        }
        let asked = p.requested.clone().ok_or_else(|| Error::Conflict(format!("project {} has no request to approve", p.name)))?;
        let epsilon = approval.epsilon.unwrap_or(asked.epsilon);
        let delta = approval.delta.unwrap_or(asked.delta);
        check_budget(epsilon, delta)?;
        if epsilon > asked.epsilon * (1.0 + 1e-12) || delta > asked.delta * (1.0 + 1e-12) {
            return Err(Error::Usage(format!(
                "a grant may not exceed the request (ε {}, δ {:e}); the researcher can file a new request",
                asked.epsilon, asked.delta
            )));
        }
        let tables = approval.tables.clone().unwrap_or(asked.tables.clone());
        if tables.is_empty() {
            return Err(Error::Usage("tables: grant at least one table (or reject the request)".into()));
        }
        if let Some(t) = tables.iter().find(|t| !asked.tables.contains(t)) {
            return Err(Error::Usage(format!("table {t:?} was not requested; grant a subset of {}", asked.tables.join(", "))));
        }
        let now = now_rfc3339();
        let expires_at = match &approval.expires_at {
            Some(t) => {
                let t = normalize_time(t)?;
                if t <= now {
                    return Err(Error::Usage(format!("expires_at {t} is in the past")));
                }
                t
            }
            None => {
                let days = p.duration_days.unwrap_or(365);
                (chrono::Utc::now() + chrono::Duration::days(days)).format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
            }
        };
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let changed = tx.execute(
            "UPDATE projects SET status = 'active', epsilon = ?1, delta = ?2, tables = ?3, expires_at = ?4,
                                 decided_by = ?5, decided_at = ?6 WHERE id = ?7 AND status = 'pending'",
            params![epsilon, delta, tables.join(","), expires_at, steward, now, p.id],
        )?;
        if changed == 0 {
            return Err(Error::Conflict(format!("project {} was decided concurrently", p.name)));
        }
        let detail = format!("granted tables {}; expires {expires_at}", tables.join(","));
        let event = Event {
            actor: steward,
            action: "project.approved",
            project: Some(&p.name),
            epsilon: Some(epsilon),
            delta: Some(delta),
            outcome: "ok",
            detail: Some(&detail),
            ..Default::default()
        };
        audit::append_in(&tx, &event)?;
        tx.commit()?;
        self.existing(&p.name)
    }

    /// Reject a pending request with a reason the researcher will read.
    pub fn reject(&mut self, reference: &str, steward: &str, reason: &str) -> Result<Project> {
        let p = self.existing(reference)?;
        if reason.trim().is_empty() || reason.len() > 5000 {
            return Err(Error::Usage("reason must be 1 to 5000 bytes".into()));
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
        let event = Event {
            actor: steward,
            action: "project.rejected",
            project: Some(&p.name),
            outcome: "ok",
            detail: Some(reason),
            ..Default::default()
        };
        audit::append_in(&tx, &event)?;
        tx.commit()?;
        self.existing(&p.name)
    }

    /// Suspend, resume or close. The ledger keeps everything spent.
    pub fn transition(&mut self, reference: &str, steward: &str, t: Transition, reason: Option<&str>) -> Result<Project> {
        let p = self.existing(reference)?;
        let (from, to): (&[&str], &str) = match t {
            Transition::Suspend => (&["active"], "suspended"),
            Transition::Resume => (&["suspended"], "active"),
            Transition::Close => (&["pending", "active", "suspended", "expired"], "closed"),
        };
        if !from.contains(&p.status.as_str()) {
            return Err(Error::Conflict(format!("project {} is {}; cannot {} it", p.name, p.status, t.verb())));
        }
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE projects SET status = ?1, reason = COALESCE(?2, reason), decided_by = ?3, decided_at = ?4 WHERE id = ?5",
            params![to, reason, steward, now_rfc3339(), p.id],
        )?;
        let action = format!("project.{to}");
        let event = Event { actor: steward, action: &action, project: Some(&p.name), outcome: "ok", detail: reason, ..Default::default() };
        audit::append_in(&tx, &event)?;
        tx.commit()?;
        self.existing(&p.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(dir.path()).unwrap();
        (dir, l)
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
        }
    }

    #[test]
    fn request_approve_suspend_resume_close() {
        let (_d, mut l) = ledger();
        let known = vec!["person".to_string(), "measurement".into(), "condition_occurrence".into()];
        let p = l.request_project("alice", &request(), &known, &["alice".into(), "bob".into()]).unwrap();
        assert_eq!((p.name.as_str(), p.status.as_str()), ("diabetes-by-decade-2026", "pending"));
        assert_eq!(p.members, vec!["alice", "bob"]);
        assert!(
            l.debit(
                &crate::dp::QueryRequest { actor: "t".into(), project: p.name.clone(), sql: "q".into(), ..Default::default() },
                0.1,
                0.0
            )
            .unwrap()
            .is_err(),
            "pending projects cannot spend"
        );

        let second = l.request_project("alice", &request(), &known, &["bob".into()]).unwrap();
        assert_eq!(second.name, "diabetes-by-decade-2026-2");

        let too_much = Approval { epsilon: Some(5.0), ..Default::default() };
        assert!(matches!(l.approve(&p.id.to_string(), "sue", &too_much), Err(Error::Usage(_))));
        let extra_table = Approval { tables: Some(vec!["condition_occurrence".into()]), ..Default::default() };
        assert!(matches!(l.approve(&p.name, "sue", &extra_table), Err(Error::Usage(_))));
        let grant = Approval { epsilon: Some(1.0), tables: Some(vec!["person".into()]), ..Default::default() };
        let p = l.approve(&p.name, "sue", &grant).unwrap();
        assert_eq!((p.status.as_str(), p.epsilon, p.tables.clone()), ("active", 1.0, vec!["person".to_string()]));
        assert!(p.expires_at.is_some());
        assert!(matches!(l.approve(&p.name, "sue", &grant), Err(Error::Conflict(_))));
        assert!(
            l.debit(
                &crate::dp::QueryRequest { actor: "t".into(), project: p.name.clone(), sql: "q".into(), ..Default::default() },
                0.1,
                0.0
            )
            .unwrap()
            .is_ok()
        );

        let p = l.transition(&p.name, "sue", Transition::Suspend, Some("audit pending")).unwrap();
        assert_eq!(p.status, "suspended");
        assert!(
            l.debit(
                &crate::dp::QueryRequest { actor: "t".into(), project: p.name.clone(), sql: "q".into(), ..Default::default() },
                0.1,
                0.0
            )
            .unwrap()
            .is_err()
        );
        assert!(matches!(l.transition(&p.name, "sue", Transition::Suspend, None), Err(Error::Conflict(_))));
        let p = l.transition(&p.name, "sue", Transition::Resume, None).unwrap();
        assert_eq!(p.status, "active");
        let p = l.transition(&p.name, "sue", Transition::Close, None).unwrap();
        assert_eq!(p.status, "closed");
        assert!((p.epsilon_spent - 0.1).abs() < 1e-12, "closing keeps the ledger");

        assert!(matches!(l.reject(&second.name, "sue", " "), Err(Error::Usage(_))));
        let r = l.reject(&second.name, "sue", "protocol lacks ethics approval").unwrap();
        assert_eq!(r.status, "rejected");
        assert!(matches!(l.approve(&r.name, "sue", &Approval::default()), Err(Error::Conflict(_))));
        assert!(matches!(l.approve("999", "sue", &Approval::default()), Err(Error::NotFound(_))));
        assert_eq!(l.projects_of("bob").unwrap().len(), 2);
        assert_eq!(l.projects_of("carol").unwrap().len(), 0);
        // Each change wrote its audit entry with it, and the chain holds.
        let actions: Vec<String> = audit::entries(&l.conn, &audit::Filter::default()).unwrap().into_iter().map(|e| e.action).collect();
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
        assert!(audit::verify(&l.conn).unwrap().ok());
    }

    #[test]
    fn an_expired_project_cannot_spend() {
        let (_d, mut l) = ledger();
        let p = l.request_project("alice", &request(), &["person".into(), "measurement".into()], &["bob".into()]).unwrap();
        let soon = (chrono::Utc::now() + chrono::Duration::milliseconds(300)).to_rfc3339();
        let p = l.approve(&p.name, "sue", &Approval { expires_at: Some(soon), ..Default::default() }).unwrap();
        assert!(
            l.debit(
                &crate::dp::QueryRequest { actor: "t".into(), project: p.name.clone(), sql: "q".into(), ..Default::default() },
                0.1,
                0.0
            )
            .unwrap()
            .is_ok()
        );
        std::thread::sleep(std::time::Duration::from_millis(400));
        assert_eq!(l.project(&p.name).unwrap().unwrap().status, "expired");
        assert!(
            l.debit(
                &crate::dp::QueryRequest { actor: "t".into(), project: p.name.clone(), sql: "q".into(), ..Default::default() },
                0.1,
                0.0
            )
            .unwrap()
            .is_err()
        );
        let past = Approval { expires_at: Some("2020-01-01T00:00:00Z".into()), ..Default::default() };
        let q = l.request_project("alice", &request(), &["person".into(), "measurement".into()], &["bob".into()]).unwrap();
        assert!(matches!(l.approve(&q.name, "sue", &past), Err(Error::Usage(_))));
    }

    #[test]
    fn bad_requests_are_refused_with_the_field_named() {
        let (_d, mut l) = ledger();
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
            let err = l.request_project("alice", &r, &known, &["bob".into()]).unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }
}
