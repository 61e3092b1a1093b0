//! Project requests, approval and the life of a project.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use secretum_engine::governance::accounts::{Accounts, Role};
use secretum_engine::governance::{Approval, Project, ProjectRequest, ProjectStatus, Transition};

use crate::server::auth::Caller;
use crate::server::auth::visible;
use crate::server::error::ApiResult;
use crate::server::error::{ApiError, Body, ErrorBody, OptionalBody, Params};
use crate::server::state::AppState;

/// Request a project (researchers). The caller becomes its owner and first member.
#[utoipa::path(post, path = "/v1/projects", tag = "projects", security(("bearer" = [])), request_body = ProjectRequest,
    responses((status = 201, body = Project), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn request_project(
    State(st): State<AppState>,
    caller: Caller,
    Body(req): Body<ProjectRequest>,
) -> ApiResult<(StatusCode, Json<Project>)> {
    caller.require(&[Role::Researcher], "requesting a project")?;
    let known: Vec<String> = st.schemas().tables.keys().cloned().collect();
    st.blocking(move |st| {
        let mut conn = st.connection()?;
        let researchers: Vec<String> =
            Accounts::new(&mut conn).list()?.into_iter().filter(|u| u.role == Role::Researcher).map(|u| u.name).collect();
        let p = st.governance()?.request_project(caller.name(), &req, &known, &researchers)?;
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
pub async fn list_projects(
    State(st): State<AppState>,
    caller: Caller,
    Params(filter): Params<ProjectFilter>,
) -> ApiResult<Json<Vec<Project>>> {
    caller.require(&[Role::Researcher, Role::Steward], "listing projects")?;
    let status: Option<ProjectStatus> = filter.status.as_deref().map(str::parse).transpose()?;
    st.blocking(move |st| {
        let g = st.governance()?;
        let all = if caller.role() == Role::Steward { g.projects()? } else { g.projects_of(caller.name())? };
        Ok(Json(all.into_iter().filter(|p| status.is_none_or(|s| p.status == s)).collect()))
    })
    .await
}

/// One project with its grant, budget spent and left.
#[utoipa::path(get, path = "/v1/projects/{id}", tag = "projects", security(("bearer" = [])),
    params(("id" = String, Path, description = "project id or name")),
    responses((status = 200, body = Project), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_project(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Project>> {
    caller.require(&[Role::Researcher, Role::Steward], "reading a project")?;
    st.blocking(move |st| Ok(Json(visible(&*st.governance()?, &caller, &id)?))).await
}

/// Approve a pending request (stewards); anything left out is granted as requested.
#[utoipa::path(post, path = "/v1/projects/{id}/approve", tag = "projects", security(("bearer" = [])), request_body = Approval,
    params(("id" = String, Path, description = "project id or name")),
    responses((status = 200, body = Project), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn approve(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(approval): Body<Approval>,
) -> ApiResult<Json<Project>> {
    caller.require(&[Role::Steward], "approving a project")?;
    st.blocking(move |st| Ok(Json(st.governance()?.approve(&id, caller.name(), &approval)?))).await
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
pub async fn reject(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<Reason>,
) -> ApiResult<Json<Project>> {
    caller.require(&[Role::Steward], "rejecting a project")?;
    st.blocking(move |st| Ok(Json(st.governance()?.reject(&id, caller.name(), &body.reason)?))).await
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct OptionalReason {
    pub reason: Option<String>,
}

/// Suspend an active project, resume a suspended one, or close one for good (stewards). The
/// budget and the ledger are kept.
#[utoipa::path(post, path = "/v1/projects/{id}/{transition}", tag = "projects", security(("bearer" = [])),
    request_body(content = OptionalReason, description = "optional"),
    params(("id" = String, Path, description = "project id or name"),
           ("transition" = String, Path, description = "`suspend`, `resume` or `close`")),
    responses((status = 200, body = Project), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn transition(
    State(st): State<AppState>,
    caller: Caller,
    Path((id, transition)): Path<(String, String)>,
    OptionalBody(body): OptionalBody<OptionalReason>,
) -> ApiResult<Json<Project>> {
    let t = match transition.as_str() {
        "suspend" => Transition::Suspend,
        "resume" => Transition::Resume,
        "close" => Transition::Close,
        other => return Err(ApiError::not_found(format!("no action {other:?} on projects: suspend, resume or close"))),
    };
    caller.require(&[Role::Steward], &format!("{}ing a project", t.verb().trim_end_matches('e')))?;
    let reason = body.and_then(|b| b.reason);
    st.blocking(move |st| Ok(Json(st.governance()?.transition(&id, caller.name(), t, reason.as_deref())?))).await
}
