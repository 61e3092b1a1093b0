//! Routes. Each handler checks the caller's role first, then membership (a project a
//! researcher does not belong to is answered 404, as if it did not exist), then does its work
//! on the blocking pool and records security-relevant events in the audit log.

use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use secretum_engine::accounts::{Accounts, Role, User};
use secretum_engine::audit::{self, Entry, Verification};
use secretum_engine::budget::{Ledger, Policy, Project};
use secretum_engine::dp::{self, Answer, Noise, QueryRequest};
use secretum_engine::projects::{Approval, ProjectRequest, Transition};
use secretum_engine::schema::Domain;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi_json))
        .route("/console", get(super::console::index))
        .route("/console/", get(super::console::index))
        .route("/console/console.js", get(super::console::script))
        .route("/console/console.css", get(super::console::style))
        .route("/v1/me", get(me))
        .route("/v1/tables", get(tables))
        .route("/v1/projects", post(request_project).get(list_projects))
        .route("/v1/projects/{id}", get(get_project))
        .route("/v1/projects/{id}/approve", post(approve))
        .route("/v1/projects/{id}/reject", post(reject))
        .route("/v1/projects/{id}/suspend", post(suspend))
        .route("/v1/projects/{id}/resume", post(resume))
        .route("/v1/projects/{id}/close", post(close))
        .route("/v1/projects/{id}/queries", post(query).get(history))
        .route("/v1/audit", get(audit_log))
        .route("/v1/audit/verify", get(audit_verify))
        .route("/v1/policy", get(policy))
        .route("/v1/ingests", get(ingests))
        .route("/v1/users", get(list_users).post(add_user))
        .route("/v1/users/{name}/revoke", post(revoke_user))
        .route("/v1/users/{name}/rotate", post(rotate_user))
}

type ApiResult<T> = Result<T, ApiError>;

/// The project as this caller may see it: stewards see all, researchers only their own.
fn visible(ledger: &Ledger, caller: &Caller, reference: &str) -> ApiResult<Project> {
    let not_found = || ApiError::not_found(format!("no project {reference:?} visible to {}", caller.name()));
    let p = ledger.project_ref(reference)?.ok_or_else(not_found)?;
    match caller.role() {
        Role::Steward => Ok(p),
        Role::Researcher if p.members.iter().any(|m| m == caller.name()) => Ok(p),
        _ => Err(not_found()),
    }
}

// ---------------------------------------------------------------------------------------------
// Service

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
}

/// Liveness; no authentication.
#[utoipa::path(get, path = "/health", tag = "service", responses((status = 200, body = Health)))]
async fn health() -> Json<Health> {
    Json(Health { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into() })
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "service", responses((status = 200, description = "OpenAPI 3 document")))]
async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], super::openapi::document()).into_response()
}

#[derive(Serialize, ToSchema)]
pub struct Me {
    pub name: String,
    pub role: Role,
}

/// Who the token belongs to.
#[utoipa::path(get, path = "/v1/me", tag = "service", security(("bearer" = [])),
    responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
async fn me(caller: Caller) -> Json<Me> {
    Json(Me { name: caller.name().to_owned(), role: caller.role() })
}

// ---------------------------------------------------------------------------------------------
// Catalog

#[derive(Serialize, ToSchema)]
pub struct TableView {
    pub name: String,
    pub description: Option<String>,
    /// Rows one patient may contribute to a query; more are sampled away.
    pub max_rows_per_unit: u32,
    /// Groups one patient may contribute to (a query may tighten it).
    pub max_groups_per_unit: u32,
    pub columns: Vec<ColumnView>,
}

#[derive(Serialize, ToSchema)]
pub struct ColumnView {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    /// `privacy_unit`, `identifier`, `quasi_identifier` or `attribute`.
    pub privacy_role: String,
    /// Whether values may be released, grouped on, or aggregated.
    pub releasable: bool,
    pub nullable: bool,
    /// Values are clamped to these bounds in every aggregate.
    pub bounds: Option<[f64; 2]>,
    /// The declared public domain: grouping on it releases every key, even empty ones.
    pub domain: Option<DomainView>,
    pub description: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DomainView {
    /// Number of keys.
    pub size: usize,
    /// `[lo, hi]` for an integer range.
    pub range: Option<[i64; 2]>,
    /// The listed values (for lists).
    #[schema(value_type = Option<Vec<Object>>)]
    pub values: Option<Vec<serde_json::Value>>,
}

/// What researchers may ask about: tables, columns, privacy roles, bounds, domains. Never rows,
/// never row counts.
#[utoipa::path(get, path = "/v1/tables", tag = "catalog", security(("bearer" = [])),
    responses((status = 200, body = Vec<TableView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn tables(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<TableView>>> {
    caller.require(&[Role::Researcher, Role::Steward], "the catalog")?;
    let views = st
        .schemas()
        .tables
        .values()
        .map(|t| TableView {
            name: t.name.clone(),
            description: t.description.clone(),
            max_rows_per_unit: t.max_rows_per_unit,
            max_groups_per_unit: t.max_groups_per_unit,
            columns: t
                .stored_columns()
                .map(|c| ColumnView {
                    name: c.name.clone(),
                    ty: c.stored_type().name(),
                    privacy_role: c.role.name().into(),
                    releasable: c.is_releasable(),
                    nullable: c.nullable,
                    bounds: c.bounds.map(|(lo, hi)| [lo, hi]),
                    domain: c.domain.as_ref().map(|d| match d {
                        Domain::Range(lo, hi) => DomainView { size: d.len(), range: Some([*lo, *hi]), values: None },
                        Domain::Values(set) => DomainView {
                            size: set.len(),
                            range: None,
                            values: Some(
                                set.iter()
                                    .map(|v| match v {
                                        secretum_engine::schema::DomainValue::Int(i) => (*i).into(),
                                        secretum_engine::schema::DomainValue::Str(s) => s.clone().into(),
                                    })
                                    .collect(),
                            ),
                        },
                    }),
                    description: c.description.clone(),
                })
                .collect(),
        })
        .collect();
    Ok(Json(views))
}

#[derive(Serialize, ToSchema)]
pub struct IngestView {
    pub id: String,
    pub table: String,
    pub source: String,
    pub source_sha256: String,
    pub rows: u64,
    pub bytes: u64,
    pub committed_at: String,
    pub actor: String,
}

/// Ingest history (stewards only: it carries row counts).
#[utoipa::path(get, path = "/v1/ingests", tag = "catalog", security(("bearer" = [])),
    responses((status = 200, body = Vec<IngestView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn ingests(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<IngestView>>> {
    caller.require(&[Role::Steward], "the ingest history")?;
    st.blocking(|st| {
        let wh = st.warehouse()?;
        Ok(Json(
            wh.catalog
                .ingests()?
                .into_iter()
                .map(|i| IngestView {
                    id: i.id,
                    table: i.table,
                    source: i.source_path,
                    source_sha256: i.source_sha256,
                    rows: i.rows,
                    bytes: i.bytes,
                    committed_at: i.committed_at,
                    actor: i.actor,
                })
                .collect(),
        ))
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Projects

/// Request a project (researchers). The caller becomes its owner and first member.
#[utoipa::path(post, path = "/v1/projects", tag = "projects", security(("bearer" = [])), request_body = ProjectRequest,
    responses((status = 201, body = Project), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 413, body = ErrorBody)))]
async fn request_project(
    State(st): State<AppState>,
    caller: Caller,
    body: Result<Json<ProjectRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Project>)> {
    caller.require(&[Role::Researcher], "requesting a project")?;
    let req = body?.0;
    let known: Vec<String> = st.schemas().tables.keys().cloned().collect();
    st.blocking(move |st| {
        let mut conn = st.connection()?;
        let researchers: Vec<String> =
            Accounts::new(&mut conn).list()?.into_iter().filter(|u| u.role == Role::Researcher).map(|u| u.name).collect();
        let mut ledger = st.ledger()?;
        let p = ledger.request_project(caller.name(), &req, &known, &researchers)?;
        Ok((StatusCode::CREATED, Json(p)))
    })
    .await
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProjectFilter {
    /// Only projects in this status (`pending`, `active`, ...).
    pub status: Option<String>,
}

/// Projects: all of them for stewards, a researcher's own for researchers.
#[utoipa::path(get, path = "/v1/projects", tag = "projects", security(("bearer" = [])), params(ProjectFilter),
    responses((status = 200, body = Vec<Project>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_projects(
    State(st): State<AppState>,
    caller: Caller,
    filter: Result<Query<ProjectFilter>, QueryRejection>,
) -> ApiResult<Json<Vec<Project>>> {
    caller.require(&[Role::Researcher, Role::Steward], "listing projects")?;
    let filter = filter?.0;
    st.blocking(move |st| {
        let ledger = st.ledger()?;
        let all = if caller.role() == Role::Steward { ledger.projects()? } else { ledger.projects_of(caller.name())? };
        Ok(Json(all.into_iter().filter(|p| filter.status.as_ref().is_none_or(|s| &p.status == s)).collect()))
    })
    .await
}

/// One project with its grant, budget spent and left.
#[utoipa::path(get, path = "/v1/projects/{id}", tag = "projects", security(("bearer" = [])),
    params(("id" = String, Path, description = "project id or name")),
    responses((status = 200, body = Project), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_project(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Project>> {
    caller.require(&[Role::Researcher, Role::Steward], "reading a project")?;
    st.blocking(move |st| Ok(Json(visible(&st.ledger()?, &caller, &id)?))).await
}

/// Approve a pending request (stewards); anything left out is granted as requested.
#[utoipa::path(post, path = "/v1/projects/{id}/approve", tag = "projects", security(("bearer" = [])), request_body = Approval,
    params(("id" = String, Path, description = "project id or name")),
    responses((status = 200, body = Project), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn approve(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<Approval>, JsonRejection>,
) -> ApiResult<Json<Project>> {
    caller.require(&[Role::Steward], "approving a project")?;
    let approval = body?.0;
    st.blocking(move |st| {
        let mut ledger = st.ledger()?;
        let p = ledger.approve(&id, caller.name(), &approval)?;
        Ok(Json(p))
    })
    .await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    pub reason: String,
}

/// Reject a pending request with a reason (stewards).
#[utoipa::path(post, path = "/v1/projects/{id}/reject", tag = "projects", security(("bearer" = [])), request_body = Reason,
    params(("id" = String, Path, description = "project id or name")),
    responses((status = 200, body = Project), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn reject(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<Reason>, JsonRejection>,
) -> ApiResult<Json<Project>> {
    caller.require(&[Role::Steward], "rejecting a project")?;
    let reason = body?.0.reason;
    st.blocking(move |st| {
        let p = st.ledger()?.reject(&id, caller.name(), &reason)?;
        Ok(Json(p))
    })
    .await
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct OptionalReason {
    pub reason: Option<String>,
}

async fn transition(
    st: AppState,
    caller: Caller,
    id: String,
    body: Option<Result<Json<OptionalReason>, JsonRejection>>,
    t: Transition,
) -> ApiResult<Json<Project>> {
    caller.require(&[Role::Steward], &format!("{}ing a project", t.verb().trim_end_matches('e')))?;
    let reason = match body {
        Some(b) => b?.0.reason,
        None => None,
    };
    st.blocking(move |st| {
        let p = st.ledger()?.transition(&id, caller.name(), t, reason.as_deref())?;
        Ok(Json(p))
    })
    .await
}

/// An optional JSON body: absent (no content type, empty) is fine, malformed is not.
fn optional_body(
    headers: &HeaderMap,
    body: Result<Json<OptionalReason>, JsonRejection>,
) -> Option<Result<Json<OptionalReason>, JsonRejection>> {
    let has_body = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).is_some_and(|v| v != "0")
        || headers.contains_key(header::TRANSFER_ENCODING);
    has_body.then_some(body)
}

/// Suspend an active project (stewards); its budget is kept.
#[utoipa::path(post, path = "/v1/projects/{id}/suspend", tag = "projects", security(("bearer" = [])), request_body(content = OptionalReason, description = "optional"),
    params(("id" = String, Path, description = "project id or name")),
    responses((status = 200, body = Project), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn suspend(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<OptionalReason>, JsonRejection>,
) -> ApiResult<Json<Project>> {
    transition(st, caller, id, optional_body(&headers, body), Transition::Suspend).await
}

/// Resume a suspended project (stewards).
#[utoipa::path(post, path = "/v1/projects/{id}/resume", tag = "projects", security(("bearer" = [])), request_body(content = OptionalReason, description = "optional"),
    params(("id" = String, Path, description = "project id or name")),
    responses((status = 200, body = Project), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn resume(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<OptionalReason>, JsonRejection>,
) -> ApiResult<Json<Project>> {
    transition(st, caller, id, optional_body(&headers, body), Transition::Resume).await
}

/// Close a project for good (stewards); its ledger stays.
#[utoipa::path(post, path = "/v1/projects/{id}/close", tag = "projects", security(("bearer" = [])), request_body(content = OptionalReason, description = "optional"),
    params(("id" = String, Path, description = "project id or name")),
    responses((status = 200, body = Project), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn close(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<OptionalReason>, JsonRejection>,
) -> ApiResult<Json<Project>> {
    transition(st, caller, id, optional_body(&headers, body), Transition::Close).await
}

// ---------------------------------------------------------------------------------------------
// Queries

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryBody {
    /// One SELECT over the project's tables.
    pub sql: String,
    /// ε to spend (split across the query's aggregates). Required unless `target_ci` is given.
    pub epsilon: Option<f64>,
    /// δ, needed only to group by a column without a public domain; in (0, 1e-3].
    pub delta: Option<f64>,
    /// Expected accuracy only: spends nothing, reads no data.
    #[serde(default)]
    pub dry_run: bool,
    /// Ask for the ε that gives a 95% half-width of this size (spends nothing).
    pub target_ci: Option<f64>,
    /// Tighten the number of groups one patient may contribute to.
    pub max_groups: Option<u32>,
}

/// Run a query in a project (its members). The answer's noisy cells are
/// `{"value": v, "ci95": [lo, hi]}`; `Accept: text/csv` or `application/vnd.apache.arrow.stream`
/// select CSV or an Arrow IPC stream instead of JSON.
#[utoipa::path(post, path = "/v1/projects/{id}/queries", tag = "queries", security(("bearer" = [])), request_body = QueryBody,
    params(("id" = String, Path, description = "project id or name")),
    responses((status = 200, description = "the answer (JSON by default; CSV or Arrow IPC by Accept)",
                content((Answer = "application/json"), (String = "text/csv"), (Vec<u8> = "application/vnd.apache.arrow.stream"))),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn query(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<QueryBody>, JsonRejection>,
) -> ApiResult<Response> {
    caller.require(&[Role::Researcher], "querying")?;
    let body = body?.0;
    let epsilon = match (body.epsilon, body.target_ci) {
        (Some(e), _) => e,
        (None, Some(_)) => 1.0,
        (None, None) => return Err(ApiError::malformed("epsilon is required (or target_ci to ask for the ε needed)")),
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let _permit = st.inner.queries.acquire().await.map_err(|_| ApiError::internal())?;
    let handle = tokio::runtime::Handle::current();
    let answer = st
        .blocking(move |st| {
            let mut ledger = st.ledger()?;
            let project = visible(&ledger, &caller, &id)?;
            let req = QueryRequest {
                actor: caller.name().to_owned(),
                project: project.name.clone(),
                sql: body.sql,
                epsilon,
                delta: body.delta,
                dry_run: body.dry_run,
                target_ci: body.target_ci,
                max_groups: body.max_groups,
            };
            // The engine audits the query (refused, dry run, submitted with its debit,
            // answered or failed with its settlement) whatever the path.
            let wh = st.warehouse()?;
            let result = handle.block_on(dp::run(&wh, &mut ledger, &req, Noise::OpenDp));
            result.map_err(ApiError::from)
        })
        .await?;
    if accept.contains("application/vnd.apache.arrow.stream") {
        let bytes = crate::format::arrow_stream(&answer).map_err(|e| {
            tracing::error!("arrow encoding: {e}");
            ApiError::internal()
        })?;
        return Ok(([(header::CONTENT_TYPE, "application/vnd.apache.arrow.stream")], bytes).into_response());
    }
    if accept.contains("text/csv") {
        return Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], crate::format::csv(&answer)).into_response());
    }
    Ok(Json(answer).into_response())
}

/// One charged query of a project.
#[derive(Serialize, ToSchema)]
pub struct LedgerView {
    pub id: i64,
    pub epsilon: f64,
    pub delta: f64,
    /// `debited` (running or interrupted), `released` or `failed`: all stay charged.
    pub status: String,
    pub created_at: String,
    pub sql: String,
}

/// A project's charged queries, oldest first (members and stewards).
#[utoipa::path(get, path = "/v1/projects/{id}/queries", tag = "queries", security(("bearer" = [])),
    params(("id" = String, Path, description = "project id or name")),
    responses((status = 200, body = Vec<LedgerView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn history(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Vec<LedgerView>>> {
    caller.require(&[Role::Researcher, Role::Steward], "reading query history")?;
    st.blocking(move |st| {
        let ledger = st.ledger()?;
        let p = visible(&ledger, &caller, &id)?;
        Ok(Json(
            ledger
                .entries(&p.name)?
                .into_iter()
                .map(|e| LedgerView {
                    id: e.id,
                    epsilon: e.epsilon,
                    delta: e.delta,
                    status: e.status,
                    created_at: e.created_at,
                    sql: e.sql,
                })
                .collect(),
        ))
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Audit and policy

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    pub project: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    /// Entries after this id (the previous page's `next_after`).
    pub after: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<Entry>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<i64>,
}

/// The audit log, paginated and filtered (stewards).
#[utoipa::path(get, path = "/v1/audit", tag = "audit", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn audit_log(State(st): State<AppState>, caller: Caller, q: Result<Query<AuditQuery>, QueryRejection>) -> ApiResult<Json<AuditPage>> {
    caller.require(&[Role::Steward], "the audit log")?;
    let q = q?.0;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::malformed(format!("limit must be 1 to 1000, got {limit}")));
    }
    st.blocking(move |st| {
        let conn = st.connection()?;
        let filter = audit::Filter {
            project: q.project,
            actor: q.actor,
            action: q.action,
            outcome: q.outcome,
            after: q.after,
            limit: Some(limit + 1),
        };
        let mut entries = audit::entries(&conn, &filter)?;
        let more = entries.len() > limit;
        entries.truncate(limit);
        let next_after = if more { entries.last().map(|e| e.id) } else { None };
        Ok(Json(AuditPage { entries, next_after }))
    })
    .await
}

/// Recompute the audit chain (stewards).
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", security(("bearer" = [])),
    responses((status = 200, body = Verification), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn audit_verify(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Verification>> {
    caller.require(&[Role::Steward], "verifying the audit log")?;
    st.blocking(|st| Ok(Json(audit::verify(&st.connection()?)?))).await
}

#[derive(Serialize, ToSchema)]
pub struct PolicyView {
    pub policy: Policy,
    /// ε spent by all projects together: what one patient may have lost, against the cap.
    pub epsilon_spent_all_projects: f64,
    /// δ spent by all projects together, against the per-patient δ cap.
    pub delta_spent_all_projects: f64,
}

/// The warehouse-wide policy and per-patient spend (stewards).
#[utoipa::path(get, path = "/v1/policy", tag = "audit", security(("bearer" = [])),
    responses((status = 200, body = PolicyView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn policy(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<PolicyView>> {
    caller.require(&[Role::Steward], "the policy")?;
    st.blocking(|st| {
        let ledger = st.ledger()?;
        Ok(Json(PolicyView {
            policy: ledger.policy()?,
            epsilon_spent_all_projects: ledger.warehouse_epsilon_spent()?,
            delta_spent_all_projects: ledger.warehouse_delta_spent()?,
        }))
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Accounts

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    pub role: Role,
}

#[derive(Serialize, ToSchema)]
pub struct IssuedToken {
    pub user: User,
    /// Shown once; only its hash is stored.
    pub token: String,
}

/// Accounts and their active token prefixes (admins).
#[utoipa::path(get, path = "/v1/users", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, body = Vec<User>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_users(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<User>>> {
    caller.require(&[Role::Admin], "managing accounts")?;
    st.blocking(|st| Ok(Json(Accounts::new(&mut st.connection()?).list()?))).await
}

/// Create an account; its token is in the answer, once (admins).
#[utoipa::path(post, path = "/v1/users", tag = "accounts", security(("bearer" = [])), request_body = NewUser,
    responses((status = 201, body = IssuedToken), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn add_user(
    State(st): State<AppState>,
    caller: Caller,
    body: Result<Json<NewUser>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<IssuedToken>)> {
    caller.require(&[Role::Admin], "managing accounts")?;
    let new = body?.0;
    st.blocking(move |st| {
        let (user, token) = Accounts::new(&mut st.connection()?).add(caller.name(), &new.name, new.role)?;
        Ok((StatusCode::CREATED, Json(IssuedToken { user, token })))
    })
    .await
}

#[derive(Serialize, ToSchema)]
pub struct Revoked {
    pub revoked: usize,
}

/// Revoke every token of an account, at once (admins).
#[utoipa::path(post, path = "/v1/users/{name}/revoke", tag = "accounts", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = Revoked), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn revoke_user(State(st): State<AppState>, caller: Caller, Path(name): Path<String>) -> ApiResult<Json<Revoked>> {
    caller.require(&[Role::Admin], "managing accounts")?;
    st.blocking(move |st| {
        let revoked = Accounts::new(&mut st.connection()?).revoke(caller.name(), &name)?;
        Ok(Json(Revoked { revoked }))
    })
    .await
}

#[derive(Serialize, ToSchema)]
pub struct Rotated {
    /// The new token, shown once; the old ones no longer work.
    pub token: String,
}

/// Replace an account's tokens with a new one (admins).
#[utoipa::path(post, path = "/v1/users/{name}/rotate", tag = "accounts", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = Rotated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn rotate_user(State(st): State<AppState>, caller: Caller, Path(name): Path<String>) -> ApiResult<Json<Rotated>> {
    caller.require(&[Role::Admin], "managing accounts")?;
    st.blocking(move |st| {
        let token = Accounts::new(&mut st.connection()?).rotate(caller.name(), &name)?;
        Ok(Json(Rotated { token }))
    })
    .await
}
