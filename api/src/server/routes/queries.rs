//! Differentially-private answers, charged to the project's budget, and a project's history.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;

use secretum_engine::budget::LedgerEntry;
use secretum_engine::dp::{self, Noise, QueryRequest};
use secretum_engine::governance::accounts::Role;

use crate::output::{self, JsonAnswer};
use crate::server::auth::Caller;
use crate::server::auth::visible;
use crate::server::error::ApiResult;
use crate::server::error::{ApiError, Body, ErrorBody};
use crate::server::state::AppState;

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
                content((JsonAnswer = "application/json"), (String = "text/csv"), (Vec<u8> = "application/vnd.apache.arrow.stream"))),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn query(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(body): Body<QueryBody>,
) -> ApiResult<Response> {
    caller.require(&[Role::Researcher], "querying")?;
    let epsilon = match (body.epsilon, body.target_ci) {
        (Some(e), _) => e,
        (None, Some(_)) => 1.0,
        (None, None) => return Err(ApiError::malformed("epsilon is required (or target_ci to ask for the ε needed)")),
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let _permit = st.query_permit().await?;
    let handle = tokio::runtime::Handle::current();
    let answer = st
        .blocking(move |st| {
            let project = visible(&*st.governance()?, &caller, &id)?;
            let mut ledger = st.ledger()?;
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
        let bytes = output::arrow_stream(&answer)?;
        return Ok(([(header::CONTENT_TYPE, "application/vnd.apache.arrow.stream")], bytes).into_response());
    }
    if accept.contains("text/csv") {
        return Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], output::csv(&answer)).into_response());
    }
    Ok(Json(output::json(&answer)).into_response())
}

/// A project's charged queries, oldest first (members and stewards).
#[utoipa::path(get, path = "/v1/projects/{id}/queries", tag = "queries", security(("bearer" = [])),
    params(("id" = String, Path, description = "project id or name")),
    responses((status = 200, body = Vec<LedgerEntry>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn history(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Vec<LedgerEntry>>> {
    caller.require(&[Role::Researcher, Role::Steward], "reading query history")?;
    st.blocking(move |st| {
        let p = visible(&*st.governance()?, &caller, &id)?;
        Ok(Json(st.ledger()?.entries(&p.name)?))
    })
    .await
}

/// The signed bundle of an answered query (members and stewards): what a paper cites, checked
/// offline with the warehouse's public key (`/v1/signing-key`).
#[utoipa::path(get, path = "/v1/projects/{id}/queries/{qid}/bundle", tag = "queries", security(("bearer" = [])),
    params(("id" = String, Path, description = "project id or name"), ("qid" = i64, Path, description = "query id")),
    responses((status = 200, body = Object), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn bundle(
    State(st): State<AppState>,
    caller: Caller,
    Path((id, qid)): Path<(String, i64)>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.require(&[Role::Researcher, Role::Steward], "release bundles")?;
    st.blocking(move |st| {
        let p = visible(&*st.governance()?, &caller, &id)?;
        let ledger = st.ledger()?;
        // Only a release of this project: query ids of other projects are not found here.
        if !ledger.entries(&p.name)?.iter().any(|e| e.id == qid) {
            return Err(secretum_engine::Error::not_found("query", format!("{qid} in project {}", p.name)).into());
        }
        Ok(Json(crate::commands::release::bundle(&st.config().data_dir, &ledger, qid)?))
    })
    .await
}
