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
//!
//! Projects accounted in ρ-zCDP keep their ledger in ρ (each query's ρ adds up: zCDP
//! composition, Bun & Steinke 2016, Lemma 2.3) and are held to the largest ρ whose (ε, δ)
//! conversion (OpenDP's zCDP → approximate-DP map) fits the grant. Each debit also records, as
//! its ε and δ, what it adds to the project's *implied* (ε, δ): ε(ρ_spent + ρ, δ) − ε(ρ_spent, δ),
//! and the grant's δ on the project's first query. The ε and δ columns of a project then add up
//! to exactly the (ε, δ) its ρ so far implies, and the warehouse-wide per-patient caps, which sum
//! ε and δ over every ledger row, hold a patient's loss across projects of both kinds by basic
//! composition of each project's (ε, δ) guarantee.
//!
//! Replays: a released answer is stored with its ledger row, under the query's replay key (see
//! `dp::replay`: the normalized plan, ε, δ, project and data version). The same key asked again
//! gets the stored answer and spends nothing: the lookup and the debit are one immediate
//! transaction, so of many identical queries arriving together exactly one is charged and the
//! others wait for its release. Returning a stored answer is post-processing of a release
//! already paid for (Dwork & Roth, Proposition 2.1): it costs no privacy, and it removes the
//! averaging of repeated noisy answers.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
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
    /// In a zCDP project: the ρ the query spends (its `epsilon` is then the ε of the same
    /// convention, ρ = ε²/2, and what is charged is worked out by the debit).
    pub rho: f64,
}

/// A durable debit: the ledger row that charged a query. Only [`Ledger::debit`] makes one, and
/// settling consumes it: data is read only with a debit in hand.
#[derive(Debug, PartialEq)]
pub struct Debit {
    id: i64,
    epsilon: f64,
    delta: f64,
}

impl Debit {
    /// The ledger entry (the query's id).
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The (ε, δ) charged: as asked in a pure project, the growth of the implied (ε, δ) in a
    /// zCDP one.
    pub fn charged(&self) -> (f64, f64) {
        (self.epsilon, self.delta)
    }
}

/// A release already paid for, as stored: the Arrow IPC stream of its answer and its report.
#[derive(Debug, Clone)]
pub struct StoredRelease {
    /// The ledger entry that charged it (the original query id).
    pub ledger_id: i64,
    pub batch: Vec<u8>,
    pub report: String,
    /// The bounded plan in secretum's words, and the data version it was read from.
    pub summary: String,
    pub data_version: String,
}

/// What is stored with a release.
#[derive(Debug, Clone, Copy)]
pub struct ReleaseRecord<'a> {
    pub batch: &'a [u8],
    pub report: &'a str,
    pub summary: &'a str,
    pub data_version: &'a str,
}

/// What a query with a replay key gets from the ledger.
#[derive(Debug)]
pub enum Spend {
    /// A new debit: read the data, then settle.
    Debit(Debit),
    /// The same question was answered before: its stored release, for free.
    Replay(StoredRelease),
    /// The same question is being answered now (ledger entry): wait and ask again.
    Running(i64),
}

/// How long a charged query with the same key keeps others waiting for its release: after this
/// the entry is taken for interrupted (a killed process leaves `debited` rows).
const RUNNING_FOR_AT_MOST: chrono::Duration = chrono::Duration::minutes(15);

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
    /// How many times the same question was answered again from this release, for free.
    pub replays: i64,
    /// The ρ it spent (zCDP projects; 0 otherwise).
    pub rho: f64,
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

    pub fn into_connection(self) -> Connection {
        self.conn
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
        let debit = debit_in(&tx, charge, None)?;
        tx.commit()?;
        Ok(debit)
    }

    /// The stored release of the same question (`key`), or a new debit, atomically: of
    /// identical queries arriving together one is charged, the others see it `Running` and
    /// then replay its release.
    pub fn debit_or_replay(&mut self, charge: &Charge<'_>, key: &str) -> Result<Spend> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let p = governance::project(&tx, charge.project)?.ok_or_else(|| Error::not_found("project", format!("{:?}", charge.project)))?;
        if p.status != ProjectStatus::Active {
            return Err(BudgetRefusal::NotActive { project: p.name, status: p.status.to_string() }.into());
        }
        let earlier = tx
            .query_row(
                "SELECT l.id, l.status, l.created_at, r.batch, r.report, r.summary, r.data_version, l.runner FROM ledger l
                 LEFT JOIN releases r ON r.ledger_id = l.id
                 WHERE l.replay_key = ?1 AND l.project_id = ?2 AND l.status IN ('released', 'debited') ORDER BY l.id DESC LIMIT 1",
                params![key, p.id],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<Vec<u8>>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                        r.get::<_, Option<String>>(6)?.unwrap_or_default(),
                        r.get::<_, Option<i64>>(7)?,
                    ))
                },
            )
            .optional()?;
        match earlier {
            Some((id, _, _, Some(batch), Some(report), summary, data_version, _)) => {
                tx.execute("UPDATE ledger SET replays = replays + 1 WHERE id = ?1", [id])?;
                let digest = {
                    use sha2::{Digest, Sha256};
                    hex::encode(Sha256::digest(&batch))
                };
                let detail = format!("replay of ledger entry {id}: nothing spent");
                let replay = Charge { epsilon: 0.0, delta: 0.0, rho: 0.0, ..*charge };
                audit::append_in(&tx, &event(&replay, "query.replayed", "ok", Some(&detail), Some(&digest), true))?;
                tx.commit()?;
                return Ok(Spend::Replay(StoredRelease { ledger_id: id, batch, report, summary, data_version }));
            }
            Some((id, status, created_at, _, _, _, _, runner)) if status == "debited" => {
                let recent = chrono::DateTime::parse_from_rfc3339(&created_at)
                    .map(|t| chrono::Utc::now().signed_duration_since(t) < RUNNING_FOR_AT_MOST)
                    .unwrap_or(false);
                // A query whose process was killed stays `debited` (charged) but holds no one.
                let running = recent && runner.is_none_or(process_alive);
                if running {
                    return Ok(Spend::Running(id));
                }
            }
            _ => {}
        }
        let debit = debit_in(&tx, charge, Some(key))?;
        tx.commit()?;
        Ok(Spend::Debit(debit))
    }

    /// Record a release with its stored answer (for replays and bundles), in the settlement's
    /// transaction.
    pub fn settle_stored(&self, debit: Debit, charge: &Charge<'_>, digest: &str, record: &ReleaseRecord<'_>) -> Result<()> {
        let detail = format!("ledger entry {}", debit.id);
        let id = debit.id;
        self.settle_with(debit, "released", &event(charge, "query.answered", "ok", Some(&detail), Some(digest), true), |tx| {
            tx.execute(
                "INSERT INTO releases (ledger_id, batch, report, summary, data_version) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, record.batch, record.report, record.summary, record.data_version],
            )?;
            Ok(())
        })
    }

    /// A stored release by its ledger entry, with the project's name.
    pub fn stored_release(&self, ledger_id: i64) -> Result<Option<(StoredRelease, String)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT r.batch, r.report, r.summary, r.data_version, p.name FROM releases r JOIN ledger l ON l.id = r.ledger_id
                 JOIN projects p ON p.id = l.project_id WHERE r.ledger_id = ?1",
                [ledger_id],
                |r| {
                    Ok((
                        StoredRelease { ledger_id, batch: r.get(0)?, report: r.get(1)?, summary: r.get(2)?, data_version: r.get(3)? },
                        r.get(4)?,
                    ))
                },
            )
            .optional()?)
    }
}

/// Check a charge against the project's grant and the warehouse caps and insert its debit, in
/// the caller's immediate transaction.
fn debit_in(tx: &rusqlite::Transaction<'_>, charge: &Charge<'_>, replay_key: Option<&str>) -> Result<Debit> {
    let p = governance::project(tx, charge.project)?.ok_or_else(|| Error::not_found("project", format!("{:?}", charge.project)))?;
    if p.status != ProjectStatus::Active {
        return Err(BudgetRefusal::NotActive { project: p.name, status: p.status.to_string() }.into());
    }
    // What this query adds to the project's (ε, δ): as asked in a pure project; in a zCDP
    // project, the growth of the (ε, δ) its ρ implies (see the module's comment).
    let (epsilon, delta, rho) = match p.accounting {
        governance::Accounting::Pure => (charge.epsilon, charge.delta, 0.0),
        governance::Accounting::Zcdp => {
            let granted = zcdp_rho_for(p.epsilon, p.delta)?;
            if p.rho_spent + charge.rho > granted * (1.0 + 1e-9) {
                return Err(
                    BudgetRefusal::Rho { project: p.name.clone(), remaining: (granted - p.rho_spent).max(0.0), asked: charge.rho }.into()
                );
            }
            let implied = zcdp_epsilon(p.rho_spent + charge.rho, p.delta)?;
            let delta = if p.delta_spent > 0.0 { 0.0 } else { p.delta };
            ((implied - p.epsilon_spent).max(0.0), delta, charge.rho)
        }
    };
    let charge = &Charge { epsilon, delta, rho, ..*charge };
    let runner = replay_key.map(|_| i64::from(std::process::id()));
    if p.epsilon_spent + charge.epsilon > p.epsilon + EPS_SLACK {
        return Err(BudgetRefusal::Epsilon { project: p.name.clone(), remaining: p.epsilon_remaining(), asked: charge.epsilon }.into());
    }
    if charge.delta > 0.0 && p.delta_spent + charge.delta > p.delta * (1.0 + 1e-9) {
        return Err(BudgetRefusal::Delta { project: p.name.clone(), remaining: p.delta_remaining(), asked: charge.delta }.into());
    }
    let caps = governance::policy(tx)?;
    let spent = spent_in(tx)?;
    if spent.epsilon + charge.epsilon > caps.patient_epsilon_cap + EPS_SLACK {
        return Err(BudgetRefusal::PatientCap { spent: spent.epsilon, cap: caps.patient_epsilon_cap, asked: charge.epsilon }.into());
    }
    if charge.delta > 0.0 && spent.delta + charge.delta > caps.patient_delta_cap * (1.0 + 1e-9) {
        return Err(BudgetRefusal::PatientDeltaCap { spent: spent.delta, cap: caps.patient_delta_cap, asked: charge.delta }.into());
    }
    tx.execute(
        "INSERT INTO ledger (project_id, epsilon, delta, sql, status, created_at, replay_key, rho, runner)
         VALUES (?1, ?2, ?3, ?4, 'debited', ?5, ?6, ?7, ?8)",
        params![p.id, charge.epsilon, charge.delta, charge.sql, now_rfc3339(), replay_key, charge.rho, runner],
    )?;
    let id = tx.last_insert_rowid();
    let detail = format!("ledger entry {id}");
    audit::append_in(tx, &event(charge, "query.submitted", "ok", Some(&detail), None, true))?;
    Ok(Debit { id, epsilon: charge.epsilon, delta: charge.delta })
}

impl Ledger {
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
        self.settle_with(debit, outcome, event, |_| Ok(()))
    }

    fn settle_with(
        &self,
        debit: Debit,
        outcome: &str,
        event: &Event<'_>,
        also: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<()>,
    ) -> Result<()> {
        // The outcome is bookkeeping: the charge and the submission's audit entry were made
        // durable by `debit`, and a settlement lost to a power cut leaves the row `debited`,
        // still charged. So this write skips the fsync (WAL with synchronous = NORMAL survives a
        // killed process, only not a power cut).
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        let done = (|| -> Result<()> {
            let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
            tx.execute("UPDATE ledger SET status = ?1, finished_at = ?2 WHERE id = ?3", params![outcome, now_rfc3339(), debit.id])?;
            also(&tx)?;
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
            "SELECT l.id, l.epsilon, l.delta, l.status, l.created_at, l.sql, l.replays, l.rho FROM ledger l JOIN projects p ON p.id = l.project_id
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
                replays: r.get(6)?,
                rho: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// The ε of (ε, δ)-DP that ρ-zCDP implies at δ: OpenDP's zCDP → approximate-DP map (the
/// conversion of Canonne, Kamath & Steinke 2020, Proposition 12, as OpenDP's
/// `make_zCDP_to_approxDP` computes it).
pub fn zcdp_epsilon(rho: f64, delta: f64) -> Result<f64> {
    use opendp::combinators::ConcentratedMeasure;
    if rho <= 0.0 {
        return Ok(0.0);
    }
    let failed = |e: opendp::error::Error| Error::internal(format!("OpenDP: {}", e.message.unwrap_or_default()));
    let profile = opendp::measures::ZeroConcentratedDivergence::convert(rho).map_err(failed)?;
    profile.epsilon(delta).map_err(failed)
}

/// The largest ρ whose conversion at δ is at most ε: a steward's (ε, δ) grant as a ρ-zCDP
/// budget (bisection on the monotone map [`zcdp_epsilon`]).
pub fn zcdp_rho_for(epsilon: f64, delta: f64) -> Result<f64> {
    if !(delta > 0.0 && delta < 1.0) {
        return Err(Error::BadRequest(format!("a zCDP grant needs δ in (0, 1) to state it as (ε, δ), got {delta:e}")));
    }
    // A pure function of the grant, asked at every debit and report: computed once per grant.
    static CACHE: std::sync::Mutex<Vec<((u64, u64), f64)>> = std::sync::Mutex::new(Vec::new());
    let key = (epsilon.to_bits(), delta.to_bits());
    if let Some((_, rho)) = CACHE.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|(k, _)| *k == key) {
        return Ok(*rho);
    }
    let rho = rho_for_uncached(epsilon, delta)?;
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() >= 1024 {
        cache.clear();
    }
    cache.push((key, rho));
    Ok(rho)
}

fn rho_for_uncached(epsilon: f64, delta: f64) -> Result<f64> {
    let (mut lo, mut hi) = (0.0f64, epsilon.max(1e-12));
    while zcdp_epsilon(hi, delta)? <= epsilon {
        lo = hi;
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        if zcdp_epsilon(mid, delta)? <= epsilon {
            lo = mid
        } else {
            hi = mid
        }
        if hi - lo <= lo * 1e-10 {
            break;
        }
    }
    Ok(lo)
}

/// Whether the process that debited a query is still running (this box's process table; where
/// there is none to read, assume it is, until [`RUNNING_FOR_AT_MOST`]).
fn process_alive(pid: i64) -> bool {
    if !Path::new("/proc/self").exists() {
        return true;
    }
    Path::new(&format!("/proc/{pid}")).exists()
}

fn spent_in(conn: &Connection) -> Result<Spent> {
    Ok(conn.query_row("SELECT COALESCE(SUM(epsilon), 0), COALESCE(SUM(delta), 0) FROM spent", [], |r| {
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
