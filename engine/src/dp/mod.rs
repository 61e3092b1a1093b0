//! Differentially-private answers to researcher SQL.
//!
//! The path of one query:
//! 1. [`statement`] and [`analyze`]: the statement and DataFusion's logical plan against the
//!    allow-list; [`total`]: every expression rewritten into functions that cannot fail.
//! 2. [`plan::Release`]: which mechanisms, with which sensitivities and which share of ε, and
//!    [`rewrite`]: the plan rewritten so that each patient's contribution is bounded. The plans
//!    that will read data are optimized, checked total and planned physically here.
//! 3. the ledger debits the project (durably, with its audit entry) before any data is read,
//! 4. DataFusion executes the bounded plans over the catalog's Parquet files,
//! 5. [`mechanisms`]: OpenDP noise on the exact aggregates, then post-processing
//!    (clamping, rounding, small-cell suppression, HAVING/ORDER BY/LIMIT on noisy values);
//!    the ledger settles the debit and audits the answer's digest in one transaction.
//!
//! Every query is audited here, whatever the path (CLI, server, demo): refused, dry run,
//! submitted (with the debit), answered or failed (with the settlement).
//!
//! What can still fail after the debit, and why that reveals nothing about a patient:
//! - every expression is total ([`total`]), so no value can make evaluation fail;
//! - reading the catalog's files (I/O, a corrupt or missing file) depends on the storage, the
//!   same whoever is in the data;
//! - the per-query memory pool ([`query_memory_limit`]): the operators that grow with the data
//!   (the per-patient aggregate of truncation, sorts, the final aggregate) spill to disk when the
//!   pool is full instead of failing; a hash join's build side cannot spill, but it holds at most
//!   `max_rows_per_unit` rows of each patient after truncation, so one patient moves it by a
//!   bounded number of rows, never by what their values are;
//! - cancellation (a client that goes away, a server stopping) depends on the client and the
//!   operator.
//! A failure is charged (the debit came first), audited by its kind, and answered with one
//! generic message; the error's own text never leaves the engine.

pub mod analyze;
pub mod mechanisms;
pub mod plan;
pub mod rewrite;
pub mod statement;
pub mod total;

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::catalog::MemTable;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::parser::DFParser;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use serde::Serialize;

pub use analyze::{Analysis, Refusal};
pub use mechanisms::Noise;
pub use plan::Release;

use crate::budget::{Ledger, MAX_QUERY_DELTA, Policy, Project, Refused};
use crate::catalog::Layout;
use crate::error::Error;
use crate::warehouse::Warehouse;

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

/// Why a query got no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The SQL broke a rule (decided before any data is read; nothing spent).
    #[error("{0}")]
    Refused(#[from] Refusal),
    /// The ledger refused the debit (nothing spent).
    #[error("{0}")]
    Budget(#[from] Refused),
    /// Execution failed after the debit. Deliberately generic: details could depend on data.
    #[error("the query failed while running; its budget stays charged (ledger entry {0})")]
    Failed(i64),

    #[error(transparent)]
    Internal(#[from] Error),
}

/// One released (or dry-run) answer.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Answer {
    pub columns: Vec<String>,
    /// One array per row; a noisy cell is `{"value": v, "ci95": [lo, hi]}`, a suppressed one `null`.
    #[schema(value_type = Vec<Vec<Object>>)]
    pub rows: Vec<Vec<serde_json::Value>>,
    pub epsilon_spent: f64,
    pub delta_spent: f64,
    pub budget_remaining: Budget,
    pub dry_run: bool,
    /// How each aggregate was released: mechanism, sensitivity, share of the budget.
    pub aggregates: Vec<plan::AggregateReport>,
    /// Where the released groups come from.
    pub groups: String,
    /// The ledger entry that charged this answer (none for a dry run).
    pub query_id: Option<i64>,
    /// For `target_ci`: the ε that gives the asked accuracy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epsilon_needed: Option<f64>,
}

#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Budget {
    pub epsilon: f64,
    pub delta: f64,
}

/// A query that passed analysis, with its release plan: everything decided without data.
pub struct Prepared {
    pub ctx: SessionContext,
    pub(crate) plans: plan::Plans,
    pub analysis: Analysis,
    pub release: Release,
    pub project: Project,
    pub policy: Policy,
    pub schemas: crate::schema::Schemas,
    pub epsilon: f64,
    pub delta: f64,
}

impl Prepared {
    /// A stable, human-readable summary of the bounded plan (used by the golden tests).
    pub fn summary(&self) -> String {
        self.release.summary(&self.analysis)
    }
}

/// Build the session that plans and runs researcher SQL: only the project's tables, read from
/// exactly the files the catalog lists; no information_schema, no URL tables.
pub fn session(layout: &Layout, wh: &Warehouse, tables: &[String]) -> Result<SessionContext, Error> {
    let mut config = SessionConfig::new().with_information_schema(false).with_target_partitions(num_partitions());
    // Statistics would be read from every file's footer while planning; the release never uses
    // them (a count must come from the bounded rows, not from metadata), so skip that work.
    config.options_mut().execution.collect_statistics = false;
    // One memory pool per query (a session serves one query): spilling operators spill to the
    // system's temporary directory when it is full (see the module documentation).
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(query_memory_limit())))
        .build_arc()
        .map_err(Error::DataFusion)?;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    for t in tables {
        let policy = wh.schemas.get(t)?;
        let schema = policy.stored_schema();
        let files = wh.catalog.files(t)?;
        let provider: Arc<dyn datafusion::catalog::TableProvider> = if files.is_empty() {
            Arc::new(MemTable::try_new(schema, vec![vec![]])?)
        } else {
            let mut urls = Vec::with_capacity(files.len());
            for f in &files {
                let path = layout.root.join(&f.path);
                let path = std::fs::canonicalize(&path).map_err(|e| Error::Io { path: path.clone(), source: e })?;
                urls.push(ListingTableUrl::parse(path.to_string_lossy().as_ref())?);
            }
            let options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
            let config = ListingTableConfig::new_with_multi_paths(urls).with_listing_options(options).with_schema(schema);
            Arc::new(ListingTable::try_new(config)?)
        };
        ctx.register_table(t.as_str(), provider)?;
    }
    Ok(ctx)
}

/// Bytes of memory one query may use: `SECRETUM_QUERY_MEMORY_MB` (default 2048), an operator's
/// setting, the same for every query whatever the data.
pub fn query_memory_limit() -> usize {
    std::env::var("SECRETUM_QUERY_MEMORY_MB").ok().and_then(|v| v.parse::<usize>().ok()).filter(|m| *m > 0).unwrap_or(2048) * 1024 * 1024
}

fn num_partitions() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

fn sql_error(e: datafusion::error::DataFusionError) -> Refusal {
    // Planning errors depend on the SQL and the schema only (no data has been touched).
    let msg = e.strip_backtrace();
    let msg = msg.lines().next().unwrap_or("").to_owned();
    Refusal { rule: "sql-error", message: msg }
}

/// Everything before the debit: parse, analyze, plan the release. Reads no data.
pub async fn prepare(wh: &Warehouse, ledger: &Ledger, req: &QueryRequest) -> Result<Prepared, QueryError> {
    let policy = ledger.policy()?;
    let project = ledger.project(&req.project)?.ok_or_else(|| Refused::UnknownProject(req.project.clone()))?;
    if project.status != "active" {
        return Err(Refused::NotActive { project: project.name.clone(), status: project.status.clone() }.into());
    }
    if req.target_ci.is_none() {
        check_epsilon(req.epsilon, &policy)?;
    }
    if let Some(d) = req.delta
        && !(d > 0.0 && d <= MAX_QUERY_DELTA)
    {
        return Err(analyze::refuse::<()>("delta", format!("δ must be in (0, {MAX_QUERY_DELTA:e}], got {d:e}")).unwrap_err().into());
    }
    if req.sql.len() > analyze::MAX_SQL_BYTES {
        analyze::check_statement(&req.sql, &[])?;
    }
    let statements = DFParser::parse_sql_with_dialect(&req.sql, &GenericDialect {})
        .map_err(|e| Refusal { rule: "sql-syntax", message: e.strip_backtrace().lines().next().unwrap_or("").to_owned() })?;
    let statements: Vec<_> = statements.into_iter().collect();
    analyze::check_statement(&req.sql, &statements)?;
    let Some(statement) = statements.into_iter().next() else {
        return Err(Refusal { rule: "single-select", message: "exactly one SELECT statement per query".into() }.into());
    };
    // Syntax the logical plan would not represent (TABLESAMPLE, hints, ...) is refused here,
    // before DataFusion's planner could drop it silently.
    statement::check(&statement)?;

    let ctx = session(&wh.layout, wh, &project.tables)?;
    let state = ctx.state();
    let references = state.resolve_table_references(&statement).map_err(sql_error)?;
    analyze::check_tables(&references, &wh.schemas, &project.tables)?;
    let plan = state.statement_to_plan(statement).await.map_err(sql_error)?;
    let plan = state.analyzer().execute_and_check(plan, state.config_options(), |_, _| {}).map_err(sql_error)?;
    let analysis = analyze::Analyzer::new(&wh.schemas).analyze(plan, req.max_groups)?;
    // From here on, every expression is evaluated by total functions.
    let analysis = analysis.make_total()?;

    let mut epsilon = req.epsilon;
    let delta_needed = !analysis.public_groups();
    let delta = match (delta_needed, req.delta) {
        (false, _) => 0.0,
        (true, Some(d)) => d,
        (true, None) => {
            return Err(Refusal {
                rule: "needs-delta",
                message: "grouping by a column without a public domain uses DP partition selection, which needs δ > 0 (--delta)".into(),
            }
            .into());
        }
    };
    let mut release = Release::plan(&ctx, &analysis, if req.target_ci.is_some() { 1.0 } else { epsilon })?;
    if let Some(target) = req.target_ci {
        epsilon = release.epsilon_for_half_width(target)?;
        release.set_epsilon(epsilon)?;
    }
    let plans = release.physical_plans(&ctx, &analysis, &wh.schemas).await?;
    Ok(Prepared { ctx, plans, analysis, release, project, policy, schemas: wh.schemas.clone(), epsilon, delta })
}

fn check_epsilon(epsilon: f64, policy: &Policy) -> Result<(), Refusal> {
    if !(epsilon.is_finite() && epsilon > 0.0) {
        return analyze::refuse("epsilon", format!("ε must be a positive number, got {epsilon}"));
    }
    if epsilon > policy.query_epsilon_cap {
        return analyze::refuse(
            "epsilon",
            format!("ε {epsilon} is over the per-query cap {} set by the steward", policy.query_epsilon_cap),
        );
    }
    Ok(())
}

/// Run one query end to end: prepare, debit, execute, noise, post-process; every outcome is
/// audited in the transaction that records it.
pub async fn run(wh: &Warehouse, ledger: &mut Ledger, req: &QueryRequest, noise: Noise) -> Result<Answer, QueryError> {
    let prepared = match prepare(wh, ledger, req).await {
        Ok(p) => p,
        Err(e) => {
            ledger.audit_query_refused(req, &e)?;
            return Err(e);
        }
    };
    if req.dry_run || req.target_ci.is_some() {
        let mut answer = prepared.release.dry_run(&prepared)?;
        if req.target_ci.is_some() {
            answer.epsilon_needed = Some(prepared.epsilon);
            if prepared.epsilon > prepared.policy.query_epsilon_cap {
                answer
                    .groups
                    .push_str(&format!(" (note: ε {} is over the per-query cap {})", prepared.epsilon, prepared.policy.query_epsilon_cap));
            }
        }
        ledger.audit_dry_run(req, &answer_digest(&answer))?;
        return Ok(answer);
    }
    let debit = match ledger.debit(req, prepared.epsilon, prepared.delta)? {
        Ok(d) => d,
        Err(refused) => {
            let e = QueryError::Budget(refused);
            ledger.audit_query_refused(req, &e)?;
            return Err(e);
        }
    };
    let entry = debit.id();
    match prepared.release.execute(&prepared, noise).await {
        Ok(mut answer) => {
            answer.query_id = Some(entry);
            ledger.settle_released(debit, req, &answer_digest(&answer))?;
            let project = ledger.project(&req.project)?.unwrap_or(prepared.project.clone());
            answer.budget_remaining = Budget { epsilon: project.epsilon_remaining(), delta: project.delta_remaining() };
            Ok(answer)
        }
        Err(kind) => {
            // The kind only: the error's text could quote a value.
            tracing::warn!(ledger_entry = entry, kind, "query failed after the debit");
            ledger.settle_failed(debit, req, kind)?;
            Err(QueryError::Failed(entry))
        }
    }
}

/// SHA-256 of a released answer's columns and rows, as the audit log records it.
pub fn answer_digest(a: &Answer) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(serde_json::to_vec(&(&a.columns, &a.rows)).unwrap_or_default()))
}

/// Optimize a plan that will read data, check that every expression in it is total, and plan
/// it physically: all before the debit, from the plan alone.
pub(crate) async fn physical(ctx: &SessionContext, plan: LogicalPlan) -> Result<Arc<dyn ExecutionPlan>, Refusal> {
    let state = ctx.state();
    let optimized = state.optimize(&plan).map_err(sql_error)?;
    total::check_total(&optimized)?;
    state.query_planner().create_physical_plan(&optimized, &state).await.map_err(sql_error)
}

/// What kind of failure an execution error is, without its text (which could quote a value).
pub(crate) fn error_kind(e: &datafusion::error::DataFusionError) -> &'static str {
    use datafusion::error::DataFusionError as E;
    match e {
        E::ArrowError(..) => "arrow",
        E::ParquetError(_) => "parquet",
        E::ObjectStore(_) => "object store",
        E::IoError(_) => "i/o",
        E::ResourcesExhausted(_) => "resources exhausted",
        E::ExecutionJoin(_) => "task",
        E::Context(_, inner) => error_kind(inner),
        E::Shared(inner) => error_kind(inner),
        E::External(_) => "external",
        E::Execution(_) => "execution",
        _ => "internal",
    }
}

/// Collect a plan's output into batches.
pub(crate) async fn collect(ctx: &SessionContext, plan: LogicalPlan) -> datafusion::error::Result<Vec<RecordBatch>> {
    ctx.execute_logical_plan(plan).await?.collect().await
}

/// A scalar as JSON.
pub(crate) fn scalar_json(v: &ScalarValue) -> serde_json::Value {
    use serde_json::Value;
    if v.is_null() {
        return Value::Null;
    }
    match v {
        ScalarValue::Boolean(Some(b)) => Value::Bool(*b),
        ScalarValue::Int8(Some(x)) => (*x).into(),
        ScalarValue::Int16(Some(x)) => (*x).into(),
        ScalarValue::Int32(Some(x)) => (*x).into(),
        ScalarValue::Int64(Some(x)) => (*x).into(),
        ScalarValue::UInt8(Some(x)) => (*x).into(),
        ScalarValue::UInt16(Some(x)) => (*x).into(),
        ScalarValue::UInt32(Some(x)) => (*x).into(),
        ScalarValue::UInt64(Some(x)) => (*x).into(),
        ScalarValue::Float32(Some(x)) => serde_json::Number::from_f64(*x as f64).map(Value::Number).unwrap_or(Value::Null),
        ScalarValue::Float64(Some(x)) => serde_json::Number::from_f64(*x).map(Value::Number).unwrap_or(Value::Null),
        other => Value::String(other.to_string()),
    }
}

/// A DFSchema over given qualified fields.
pub(crate) fn qualified_schema(
    fields: Vec<(Option<datafusion::common::TableReference>, Arc<Field>)>,
) -> datafusion::error::Result<DFSchema> {
    DFSchema::new_with_metadata(fields, HashMap::new())
}

pub(crate) fn as_i64(a: &ArrayRef, row: usize) -> Option<i64> {
    if a.is_null(row) {
        return None;
    }
    match ScalarValue::try_from_array(a, row).ok()?.cast_to(&DataType::Int64).ok()? {
        ScalarValue::Int64(x) => x,
        _ => None,
    }
}

pub(crate) fn as_f64(a: &ArrayRef, row: usize) -> Option<f64> {
    if a.is_null(row) {
        return None;
    }
    let v = ScalarValue::try_from_array(a, row).ok()?.cast_to(&DataType::Float64).ok()?;
    match v {
        ScalarValue::Float64(x) => x,
        _ => None,
    }
}
