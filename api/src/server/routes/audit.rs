//! The hash-chained audit log and the warehouse policy (stewards).

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use secretum_engine::audit::{self, Entry, Verification};
use secretum_engine::budget::Spent;
use secretum_engine::governance::Policy;
use secretum_engine::governance::accounts::Role;

use crate::server::auth::Caller;
use crate::server::error::ApiResult;
use crate::server::error::{ApiError, ErrorBody, Params};
use crate::server::state::AppState;

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
pub async fn audit_log(State(st): State<AppState>, caller: Caller, Params(q): Params<AuditQuery>) -> ApiResult<Json<AuditPage>> {
    caller.require(&[Role::Steward], "the audit log")?;
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
pub async fn audit_verify(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Verification>> {
    caller.require(&[Role::Steward], "verifying the audit log")?;
    st.blocking(|st| Ok(Json(audit::verify(&*st.connection()?)?))).await
}

#[derive(Serialize, ToSchema)]
pub struct PolicyView {
    pub policy: Policy,
    /// ε spent by all projects together: what one patient may have lost, against the cap.
    pub epsilon_spent_all_projects: f64,
    /// δ spent by all projects together, against the per-patient δ cap.
    pub delta_spent_all_projects: f64,
}

impl PolicyView {
    fn new(policy: Policy, spent: Spent) -> PolicyView {
        PolicyView { policy, epsilon_spent_all_projects: spent.epsilon, delta_spent_all_projects: spent.delta }
    }
}

/// The warehouse-wide policy and per-patient spend (stewards).
#[utoipa::path(get, path = "/v1/policy", tag = "audit", security(("bearer" = [])),
    responses((status = 200, body = PolicyView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn policy(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<PolicyView>> {
    caller.require(&[Role::Steward], "the policy")?;
    st.blocking(|st| Ok(Json(PolicyView::new(st.governance()?.policy()?, st.ledger()?.spent()?)))).await
}
