//! Differentially-private answers to researcher SQL.
//!
//! The path of one query:
//! 1. [`analyze`]: the statement and DataFusion's logical plan against the allow-list.
//! 2. [`plan::Release`]: which mechanisms, with which sensitivities and which share of ε.
//! 3. the ledger debits the project (durably) before any data is read,
//! 4. [`rewrite`]: the plan rewritten so that each patient's contribution is bounded,
//!    executed by DataFusion over the catalog's Parquet files,
//! 5. [`mechanisms`]: OpenDP noise on the exact aggregates, then post-processing
//!    (clamping, rounding, small-cell suppression, HAVING/ORDER BY/LIMIT on noisy values).

pub mod analyze;
pub mod mechanisms;
pub mod plan;
pub mod rewrite;

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::catalog::MemTable;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::logical_expr::LogicalPlan;
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
    let ctx = SessionContext::new_with_config(config);
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
    let statement = statements.into_iter().next().expect("checked: one statement");

    let ctx = session(&wh.layout, wh, &project.tables)?;
    let state = ctx.state();
    let references = state.resolve_table_references(&statement).map_err(sql_error)?;
    analyze::check_tables(&references, &wh.schemas, &project.tables)?;
    let plan = state.statement_to_plan(statement).await.map_err(sql_error)?;
    let plan = state.analyzer().execute_and_check(plan, state.config_options(), |_, _| {}).map_err(sql_error)?;
    let analysis = analyze::Analyzer::new(&wh.schemas).analyze(plan, req.max_groups)?;

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
    Ok(Prepared { ctx, analysis, release, project, policy, schemas: wh.schemas.clone(), epsilon, delta })
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

/// Run one query end to end: prepare, debit, execute, noise, post-process.
pub async fn run(wh: &Warehouse, ledger: &mut Ledger, req: &QueryRequest, noise: Noise) -> Result<Answer, QueryError> {
    let prepared = prepare(wh, ledger, req).await?;
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
        return Ok(answer);
    }
    let debit = ledger.debit(&req.project, prepared.epsilon, prepared.delta, &req.sql)?.map_err(QueryError::Budget)?;
    match prepared.release.execute(&prepared, noise).await {
        Ok(mut answer) => {
            ledger.settle(debit, "released")?;
            let project = ledger.project(&req.project)?.unwrap_or(prepared.project.clone());
            answer.budget_remaining = Budget { epsilon: project.epsilon_remaining(), delta: project.delta_remaining() };
            answer.query_id = Some(debit.0);
            Ok(answer)
        }
        Err(e) => {
            tracing::warn!(ledger_entry = debit.0, "query failed after the debit: {e}");
            let _ = ledger.settle(debit, "failed");
            Err(QueryError::Failed(debit.0))
        }
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
