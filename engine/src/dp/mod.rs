//! Differentially-private answers to researcher SQL.
//!
//! The path of one query, each step in its own module:
//! 1. [`statement`] and [`analyze`]: the statement and DataFusion's logical plan against the
//!    allow-list (its rules: [`rule`]); [`bounds`]: public bounds of the aggregated values;
//!    [`total`]: every expression rewritten into functions that cannot fail on a value.
//! 2. [`release`]: which mechanisms, with which sensitivities and which share of ε;
//!    [`groups`]: public keys or partition selection; [`rewrite`]: the plan rewritten so that
//!    each patient's contribution is bounded. The plans that will read data are optimized,
//!    checked total and planned physically ([`session`]). All of this is a [`Prepared`] query:
//!    decided from the SQL, the schema and the policy, without reading data.
//! 3. The ledger debits the project (durably, with its audit entry) and hands back a
//!    [`Debit`]; only [`Prepared::execute`], which takes it, reads data.
//! 4. [`mechanisms`]: OpenDP noise on the exact aggregates; [`postprocess`]: intervals,
//!    rounding, small-cell suppression, HAVING/ORDER BY/LIMIT on the noisy values;
//!    [`answer`]: the typed Arrow answer. The ledger settles the debit and audits the answer's
//!    digest in one transaction.
//!
//! Every query is audited here, whatever the path (CLI, server, demo): refused, dry run,
//! submitted (with the debit), answered or failed (with the settlement).
//!
//! What can still fail after the debit, and why that reveals nothing about a patient:
//! - every expression is total ([`total`]), so no value can make evaluation fail;
//! - reading the catalog's files (I/O, a corrupt or missing file) depends on the storage, the
//!   same whoever is in the data;
//! - the per-query memory pool ([`session::query_memory_limit`]): the operators that grow with
//!   the data (the per-patient aggregate of truncation, sorts, the final aggregate) spill to disk
//!   when the pool is full instead of failing; a hash join's build side cannot spill, but it
//!   holds at most `max_rows_per_unit` rows of each patient after truncation, so one patient
//!   moves it by a bounded number of rows, never by what their values are;
//! - cancellation (a client that goes away, a server stopping) depends on the client and the
//!   operator.
//!
//! A failure is charged (the debit came first), audited by its kind, and answered with one
//! generic message; the error's own text never leaves the engine.

#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod analyze;
pub mod answer;
pub mod bounds;
pub mod groups;
pub mod mechanisms;
pub mod postprocess;
pub mod release;
pub mod replay;
pub mod rewrite;
pub mod rule;
pub mod session;
pub mod statement;
pub mod total;

use std::collections::HashMap;

use datafusion::common::ScalarValue;
use datafusion::execution::context::SessionContext;
use datafusion::sql::parser::DFParser;
use datafusion::sql::sqlparser::dialect::GenericDialect;

pub use answer::{AggregateReport, Answer, Budget, Report};
pub use mechanisms::Noise;
pub use rule::Rule;

use crate::audit::{self, Event};
use crate::budget::{Charge, Debit, Ledger, ReleaseRecord, Spend, StoredRelease};
use crate::error::{BudgetRefusal, Error, Result};
use crate::governance::{self, Policy, Project, ProjectStatus};
use crate::warehouse::Warehouse;
use analyze::Analysis;
use release::{Groups, Plans, Release, What};

/// The largest δ one query may spend.
pub const MAX_QUERY_DELTA: f64 = 1e-3;

/// What a researcher asks.
#[derive(Debug, Clone, Default)]
pub struct QueryRequest {
    /// Who asks, as the audit log names them (`local:<user>` for the CLI).
    pub actor: String,
    pub project: String,
    pub sql: String,
    pub epsilon: f64,
    pub delta: Option<f64>,
    pub dry_run: bool,
    /// Ask for the ε that gives this 95% half-width on the query's counts and sums.
    pub target_ci: Option<f64>,
    /// Tighten the schema's groups-per-patient bound.
    pub max_groups: Option<u32>,
}

/// A query that passed analysis, with its release plan and the physical plans that will read
/// data: everything decided without data. The session over the data is private: only
/// [`Prepared::execute`], which needs the ledger's [`Debit`], runs it.
pub struct Prepared {
    ctx: SessionContext,
    plans: Plans,
    analysis: Analysis,
    release: Release,
    project: Project,
    policy: Policy,
    summary: String,
    /// The statement's normalized plan (part of the replay key).
    plan_text: String,
    /// The version of the data the plans read (part of the replay key).
    data_version: String,
    epsilon: f64,
    delta: f64,
}

impl Prepared {
    /// The bounded plan in secretum's own words (what the golden cases check).
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// The ε this query spends.
    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }

    /// The δ this query spends.
    pub fn delta(&self) -> f64 {
        self.delta
    }

    fn report(&self, dry_run: bool) -> Report {
        Report {
            epsilon_spent: if dry_run { 0.0 } else { self.epsilon },
            delta_spent: if dry_run { 0.0 } else { self.delta },
            budget_remaining: Budget { epsilon: self.project.epsilon_remaining(), delta: self.project.delta_remaining() },
            dry_run,
            aggregates: self.release.reports(&self.analysis),
            groups: self.release.groups_label(&self.analysis),
            derived_bounds: self.analysis.derivations.clone(),
            rows_per_patient_by_table: self
                .analysis
                .tables
                .iter()
                .filter_map(|(q, t)| self.analysis.policies.get(q).filter(|p| !p.public).map(|p| (t.clone(), p.max_rows_per_unit)))
                .collect(),
            suppression_threshold: self.policy.suppression_threshold,
            notes: Vec::new(),
            query_id: None,
            executed_on: session::ran_on(&self.ctx),
            epsilon_needed: None,
            replay_of: None,
            // Dry runs say the ρ the query would spend.
            zcdp: zcdp_report(&self.project, self.release.rho()).ok().flatten(),
        }
    }

    /// The answer's shape (one row of NULLs, typed as a released answer would be) and the
    /// expected accuracy of each aggregate, without reading any data.
    pub fn dry_run(&self) -> Result<Answer> {
        let batch = answer::empty_rows(&answer::answer_schema(&self.analysis), 1)?;
        Ok(Answer { batch, report: self.report(true) })
    }

    /// The physical plans that will read data, as DataFusion displays them: for the tests of
    /// which bounding a plan runs. Only in the test suite's build (a plan may name the patients
    /// the catalog lists, see `rewrite`).
    #[cfg(feature = "test-exact")]
    pub fn physical_plans(&self) -> Vec<String> {
        let plans = self.plans.exact.iter().chain(self.plans.quantiles.iter().map(|(_, p)| p));
        plans.map(|p| datafusion::physical_plan::displayable(p.as_ref()).indent(true).to_string()).collect()
    }

    /// Release given exact component values (in component order, in the released unit: e.g.
    /// `[centred_sum, count]` for a mean) with the same noise and post-processing as
    /// [`Prepared::execute`], without reading data: for the statistical tests of the noise. Only
    /// ungrouped queries without quantiles; only in the test suite's build.
    #[cfg(feature = "test-exact")]
    pub fn release_exact_components(&self, exact: &[f64], noise: Noise) -> Result<Vec<(Option<f64>, Option<(f64, f64)>)>> {
        let comps = &self.release.components;
        if !self.analysis.keys.is_empty() || comps.iter().any(|c| c.what == What::Quantile) || exact.len() != comps.len() {
            return Err(Error::BadRequest("only for ungrouped queries without quantiles, with one value per component".into()));
        }
        let keys = vec![vec![]];
        let order: Vec<usize> = (0..comps.len()).collect();
        // Real values to the components' integer steps, as the fixed-point kernel rounds them.
        let steps: Vec<i64> = exact.iter().zip(comps).map(|(x, c)| (x / c.unit).round() as i64).collect();
        let noisy = self.release.noise(&keys, &HashMap::from([(vec![], steps)]), &order, noise)?;
        let cells = postprocess::cells(&self.release, &self.analysis, 1, &noisy, &self.policy)?;
        Ok(cells[0]
            .iter()
            .map(|c| match c {
                postprocess::Cell::Noisy(v, ci) => (Some(*v), *ci),
                postprocess::Cell::Suppressed => (None, None),
            })
            .collect())
    }

    /// Read the data, noise, post-process. Takes the debit (proof that the query is charged) and
    /// hands it back for settlement. An error here is a failure after the debit: the caller
    /// reports it by kind only.
    pub async fn execute(self, debit: Debit, noise: Noise) -> (Debit, Result<Answer>) {
        let result = self.read_and_release(noise).await;
        (debit, result)
    }

    async fn read_and_release(&self, noise: Noise) -> Result<Answer> {
        let (a, release, plans) = (&self.analysis, &self.release, &self.plans);
        let nkeys = a.keys.len();
        let key_of = |batch: &datafusion::arrow::array::RecordBatch, row: usize| -> Result<Vec<ScalarValue>> {
            (0..nkeys).map(|k| Ok(ScalarValue::try_from_array(batch.column(k), row)?)).collect()
        };

        // Exact components over the bounded relation: integers (counts, fixed-point sums), added
        // up over its parts with their signs where it is split (`rewrite::Split`).
        let mut exact: HashMap<Vec<ScalarValue>, Vec<i64>> = HashMap::new();
        let ncomps = plans.exact_comps.len();
        if let Some(plan) = &plans.exact {
            for batch in session::collect(&self.ctx, plan.clone()).await? {
                for row in 0..batch.num_rows() {
                    let sign = if plans.signed { integer_at(batch.column(nkeys + ncomps), row) } else { 1 };
                    let sums = exact.entry(key_of(&batch, row)?).or_insert_with(|| vec![0; ncomps]);
                    for (c, sum) in sums.iter_mut().enumerate() {
                        // Within ±2^63 for fewer than 2^43 rows (see `release::fixed_point_sum`).
                        *sum = sum
                            .checked_add(sign * integer_at(batch.column(nkeys + c), row))
                            .ok_or_else(|| Error::internal("an exact component overflowed"))?;
                    }
                }
            }
        }

        // The released keys: public, or selected privately.
        let keys: Vec<Vec<ScalarValue>> = match &release.groups {
            Groups::Public(k) => k.clone(),
            Groups::Selected => {
                let (sel, c) = release
                    .components
                    .iter()
                    .enumerate()
                    .find(|(_, c)| c.what == What::Selection)
                    .ok_or_else(|| Error::internal("a release plan without partition selection"))?;
                let idx = plans.exact_comps.iter().position(|c| *c == sel).ok_or_else(|| Error::internal("selection counts missing"))?;
                let counts: HashMap<Vec<ScalarValue>, i64> =
                    exact.iter().map(|(k, v)| (k.clone(), v.get(idx).copied().unwrap_or(0))).collect();
                groups::select_partitions(&counts, c.steps as u32, c.epsilon, self.delta, noise)?
            }
        };

        let mut noisy = release.noise(&keys, &exact, &plans.exact_comps, noise)?;
        for (i, plan) in &plans.quantiles {
            let mut values: HashMap<Vec<ScalarValue>, Vec<f64>> = HashMap::new();
            for batch in session::collect(&self.ctx, plan.clone()).await? {
                for row in 0..batch.num_rows() {
                    if let Some(v) = float_at(batch.column(nkeys), row).filter(|v| v.is_finite()) {
                        values.entry(key_of(&batch, row)?).or_default().push(v);
                    }
                }
            }
            noisy.insert(*i, release.quantiles(*i, a, &keys, &values, noise)?);
        }

        let cells = postprocess::cells(release, a, keys.len(), &noisy, &self.policy)?;
        let batch = postprocess::finish(&self.ctx, a, &keys, &cells).await?;
        Ok(Answer { batch, report: self.report(false) })
    }
}

fn integer_at(a: &datafusion::arrow::array::ArrayRef, row: usize) -> i64 {
    match ScalarValue::try_from_array(a, row).and_then(|v| v.cast_to(&datafusion::arrow::datatypes::DataType::Int64)) {
        Ok(ScalarValue::Int64(Some(x))) => x,
        _ => 0,
    }
}

fn float_at(a: &datafusion::arrow::array::ArrayRef, row: usize) -> Option<f64> {
    match ScalarValue::try_from_array(a, row).and_then(|v| v.cast_to(&datafusion::arrow::datatypes::DataType::Float64)) {
        Ok(ScalarValue::Float64(x)) => x,
        _ => None,
    }
}

fn check_epsilon(epsilon: f64, policy: &Policy) -> Result<()> {
    if !(epsilon.is_finite() && epsilon > 0.0) {
        return Err(Error::refused(Rule::Epsilon, format!("ε must be a positive number, got {epsilon}")));
    }
    if epsilon > policy.query_epsilon_cap {
        return Err(Error::refused(
            Rule::Epsilon,
            format!("ε {epsilon} is over the per-query cap {} set by the steward", policy.query_epsilon_cap),
        ));
    }
    Ok(())
}

/// Everything before the debit: parse, analyze, plan the release and the physical plans.
/// Reads no data.
pub async fn prepare(wh: &Warehouse, req: &QueryRequest) -> Result<Prepared> {
    let conn = wh.catalog.connection();
    let policy = governance::policy(conn)?;
    let project = governance::project(conn, &req.project)?.ok_or_else(|| Error::not_found("project", format!("{:?}", req.project)))?;
    if project.status != ProjectStatus::Active {
        return Err(BudgetRefusal::NotActive { project: project.name.clone(), status: project.status.to_string() }.into());
    }
    if req.target_ci.is_none() {
        check_epsilon(req.epsilon, &policy)?;
    }
    if let Some(d) = req.delta
        && !(d > 0.0 && d <= MAX_QUERY_DELTA)
    {
        return Err(Error::refused(Rule::Delta, format!("δ must be in (0, {MAX_QUERY_DELTA:e}], got {d:e}")));
    }
    if req.sql.len() > analyze::MAX_SQL_BYTES {
        analyze::check_statement(&req.sql, &[])?;
    }
    let statements = DFParser::parse_sql_with_dialect(&req.sql, &GenericDialect {})
        .map_err(|e| Error::refused(Rule::SqlSyntax, e.strip_backtrace().lines().next().unwrap_or("")))?;
    let statements: Vec<_> = statements.into_iter().collect();
    analyze::check_statement(&req.sql, &statements)?;
    let Some(statement) = statements.into_iter().next() else {
        return Err(Error::refused(Rule::SingleSelect, "exactly one SELECT statement per query"));
    };
    // Syntax the logical plan would not represent (TABLESAMPLE, hints, ...) is refused here,
    // before DataFusion's planner could drop it silently.
    statement::check(&statement)?;

    // Concept-id columns get public domains from the loaded vocabulary (public data).
    let schemas = crate::vocabulary::resolve_domains(wh).await?;
    let session::Session { ctx, rows_per_patient, heavy, data_version } = session::session(wh, &project.tables)?;
    let state = ctx.state();
    let references = state.resolve_table_references(&statement).map_err(session::plan_error)?;
    analyze::check_tables(&references, &schemas, &project.tables)?;
    let plan = state.statement_to_plan(statement).await.map_err(session::plan_error)?;
    let plan = state.analyzer().execute_and_check(plan, state.config_options(), |_, _| {}).map_err(session::plan_error)?;
    let plan_text = replay::normalized_plan(&plan)?;
    let analysis = analyze::Analyzer::new(&schemas).analyze(plan, req.max_groups)?;
    // From here on, every expression is evaluated by total functions.
    let mut analysis = analysis.make_total()?;
    groups::resolve_public_table_keys(&ctx, &mut analysis).await?;

    let delta = match (analysis.public_groups(), req.delta) {
        (true, _) => 0.0,
        (false, Some(d)) => d,
        (false, None) => {
            return Err(Error::refused(
                Rule::NeedsDelta,
                "grouping by a column without a public domain uses DP partition selection, which needs δ > 0 (--delta)",
            ));
        }
    };
    let mut epsilon = req.epsilon;
    let mut release = Release::plan(&ctx, &analysis, if req.target_ci.is_some() { 1.0 } else { epsilon }, project.accounting)?;
    if let Some(target) = req.target_ci {
        epsilon = release.epsilon_for_half_width(target)?;
        release.set_epsilon(epsilon)?;
    }
    let tables = rewrite::Tables { schemas: &wh.schemas, rows_per_patient: &rows_per_patient, heavy: &heavy };
    let plans = release.physical_plans(&ctx, &analysis, &tables).await?;
    let summary = release.summary(&analysis);
    Ok(Prepared { ctx, plans, analysis, release, project, policy, summary, plan_text, data_version, epsilon, delta })
}

/// Run one query end to end: prepare, debit, execute, noise, post-process; every outcome is
/// audited in the transaction that records it.
pub async fn run(wh: &Warehouse, ledger: &mut Ledger, req: &QueryRequest, noise: Noise) -> Result<Answer> {
    let prepared = match prepare(wh, req).await {
        Ok(p) => p,
        Err(e) => {
            audit_unanswered(ledger, req, &e)?;
            return Err(e);
        }
    };
    if req.dry_run || req.target_ci.is_some() {
        let mut answer = prepared.dry_run()?;
        if req.target_ci.is_some() {
            answer.report.epsilon_needed = Some(prepared.epsilon);
            if prepared.epsilon > prepared.policy.query_epsilon_cap {
                answer.report.notes.push(format!("ε {} is over the per-query cap {}", prepared.epsilon, prepared.policy.query_epsilon_cap));
            }
        }
        let detail =
            if req.target_ci.is_some() { "accuracy target: nothing spent, no data read" } else { "dry run: nothing spent, no data read" };
        let digest = answer.digest()?;
        audit::append(ledger.connection_mut(), &event(req, "query.dry_run", "ok", detail, Some(&digest)))?;
        return Ok(answer);
    }
    // A cluster that does not answer now would fail the query after its debit: ask it first.
    if let Some(cluster) = &wh.cluster
        && let Err(e) = cluster.probe().await
    {
        audit_unanswered(ledger, req, &e)?;
        return Err(e);
    }
    let charge = Charge {
        actor: &req.actor,
        project: &req.project,
        sql: &req.sql,
        epsilon: prepared.epsilon,
        delta: prepared.delta,
        rho: prepared.release.rho(),
    };
    // The same question over the same data at the same ε/δ: its stored release, for free.
    let shape = answer::answer_schema(&prepared.analysis);
    let column_types: Vec<String> = shape.fields().iter().map(|f| f.data_type().to_string()).collect();
    let data_version = prepared.data_version.clone();
    let noise_name = format!("{noise:?} {}", prepared.release.accounting.name());
    let key = replay::key(&replay::KeyParts {
        plan: &prepared.plan_text,
        summary: &prepared.summary,
        column_types: &column_types.join(","),
        epsilon: prepared.epsilon,
        delta: prepared.delta,
        noise: &noise_name,
        project: &req.project,
        suppression_threshold: prepared.policy.suppression_threshold,
        data_version: &data_version,
    });
    let waiting_since = std::time::Instant::now();
    let debit = loop {
        match ledger.debit_or_replay(&charge, &key) {
            Ok(Spend::Debit(d)) => break d,
            Ok(Spend::Replay(stored)) => return replayed(ledger, req, &stored, &shape),
            Ok(Spend::Running(id)) => {
                if waiting_since.elapsed() > std::time::Duration::from_secs(600) {
                    return Err(Error::Conflict(format!(
                        "the same question is being answered by query {id}; ask again when it has finished"
                    )));
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => {
                audit_unanswered(ledger, req, &e)?;
                return Err(e);
            }
        }
    };
    let entry = debit.id();
    // What the ledger charged (in a zCDP project, what the query added to the implied (ε, δ)).
    let (epsilon_charged, delta_charged) = debit.charged();
    let summary = prepared.summary.clone();
    let (debit, result) = prepared.execute(debit, noise).await;
    let stored = result.and_then(|mut a| {
        a.report.query_id = Some(entry);
        a.report.epsilon_spent = epsilon_charged;
        a.report.delta_spent = delta_charged;
        let ipc = a.ipc()?;
        let report = serde_json::to_string(&a.report).map_err(Error::internal)?;
        Ok((a, ipc, report))
    });
    match stored {
        Ok((mut answer, ipc, report)) => {
            let digest = {
                use sha2::{Digest, Sha256};
                hex::encode(Sha256::digest(&ipc))
            };
            let record = ReleaseRecord { batch: &ipc, report: &report, summary: &summary, data_version: &data_version };
            ledger.settle_stored(debit, &charge, &digest, &record)?;
            if let Some(p) = governance::project(ledger.connection(), &req.project)? {
                answer.report.budget_remaining = Budget { epsilon: p.epsilon_remaining(), delta: p.delta_remaining() };
                answer.report.zcdp = zcdp_report(&p, charge.rho)?;
            }
            Ok(answer)
        }
        Err(e) => {
            // The kind only: the error's text could quote a value.
            let kind = session::error_kind(&e);
            tracing::warn!(ledger_entry = entry, kind, "query failed after the debit");
            ledger.settle_failed(debit, &charge, kind)?;
            Err(Error::QueryFailed { entry })
        }
    }
}

/// The spend of a zCDP project in both currencies (none for a pure project).
fn zcdp_report(p: &Project, rho: f64) -> Result<Option<answer::ZcdpSpend>> {
    if p.accounting != crate::governance::Accounting::Zcdp {
        return Ok(None);
    }
    Ok(Some(answer::ZcdpSpend {
        rho,
        project_rho_spent: p.rho_spent,
        project_rho_granted: crate::budget::zcdp_rho_for(p.epsilon, p.delta)?,
        project_epsilon_implied: p.epsilon_spent,
        project_delta: p.delta,
    }))
}

/// A stored release returned again: the same numbers, relabelled with this query's column
/// names, marked as a replay of the original query, nothing spent.
fn replayed(ledger: &Ledger, req: &QueryRequest, stored: &StoredRelease, shape: &arrow::datatypes::SchemaRef) -> Result<Answer> {
    let mut answer = Answer::from_stored(&stored.batch, &stored.report)?;
    if let Ok(batch) = arrow::record_batch::RecordBatch::try_new(shape.clone(), answer.batch.columns().to_vec()) {
        answer.batch = batch;
    }
    answer.report.epsilon_spent = 0.0;
    answer.report.delta_spent = 0.0;
    answer.report.replay_of = Some(stored.ledger_id);
    answer.report.query_id = Some(stored.ledger_id);
    answer
        .report
        .notes
        .push(format!("the same question was answered by query {}: its release is returned again and nothing is spent", stored.ledger_id));
    if let Some(p) = governance::project(ledger.connection(), &req.project)? {
        answer.report.budget_remaining = Budget { epsilon: p.epsilon_remaining(), delta: p.delta_remaining() };
    }
    Ok(answer)
}

fn event<'a>(req: &'a QueryRequest, action: &'a str, outcome: &'a str, detail: &'a str, digest: Option<&'a str>) -> Event<'a> {
    Event {
        actor: &req.actor,
        action,
        project: Some(&req.project),
        sql: Some(&req.sql),
        epsilon: None,
        delta: None,
        outcome,
        detail: Some(detail),
        result_digest: digest,
    }
}

/// Audit a query that got no answer and spent nothing: refused by a rule or by the ledger, or
/// an internal error before any data was read.
fn audit_unanswered(ledger: &mut Ledger, req: &QueryRequest, e: &Error) -> Result<()> {
    let (action, outcome, detail) = match e {
        Error::Refused { rule, detail } => ("query.refused", "refused", format!("{rule}: {detail}")),
        Error::Budget(b) => ("query.refused", "refused", b.to_string()),
        Error::NotFound { .. } => ("query.refused", "refused", e.to_string()),
        other => ("query.failed", "failed", format!("before any data was read, nothing spent: {other}")),
    };
    audit::append(ledger.connection_mut(), &event(req, action, outcome, &detail, None))?;
    Ok(())
}
