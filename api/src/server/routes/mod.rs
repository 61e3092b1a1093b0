//! Routes, one file per resource. Each handler checks the caller's role first, then membership
//! (a project a researcher does not belong to is answered 404, as if it did not exist), then does
//! its work on the blocking pool. Bodies and query strings come through [`Body`], [`OptionalBody`]
//! and [`Params`], so a malformed one is our 400 before any handler runs.
//!
//! [`Body`]: super::error::Body
//! [`OptionalBody`]: super::error::OptionalBody
//! [`Params`]: super::error::Params

pub mod audit;
pub mod catalog;
pub mod projects;
pub mod queries;
pub mod service;
pub mod users;

use axum::Router;
use axum::routing::{get, post};

use crate::server::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(service::health))
        .route("/openapi.json", get(crate::server::openapi::openapi_json))
        .route("/console", get(super::console::index))
        .route("/console/", get(super::console::index))
        .route("/console/console.js", get(super::console::script))
        .route("/console/console.css", get(super::console::style))
        .route("/v1/me", get(service::me))
        .route("/v1/tables", get(catalog::tables))
        .route("/v1/concepts", get(catalog::concepts))
        .route("/v1/ingests", get(catalog::ingests))
        .route("/v1/projects", post(projects::request_project).get(projects::list_projects))
        .route("/v1/projects/{id}", get(projects::get_project))
        .route("/v1/projects/{id}/approve", post(projects::approve))
        .route("/v1/projects/{id}/reject", post(projects::reject))
        .route("/v1/projects/{id}/{transition}", post(projects::transition))
        .route("/v1/projects/{id}/queries", post(queries::query).get(queries::history))
        .route("/v1/projects/{id}/queries/{qid}/bundle", get(queries::bundle))
        .route("/v1/signing-key", get(catalog::signing_key))
        .route("/v1/audit", get(audit::audit_log))
        .route("/v1/audit/verify", get(audit::audit_verify))
        .route("/v1/policy", get(audit::policy))
        .route("/v1/users", get(users::list_users).post(users::add_user))
        .route("/v1/users/{name}/revoke", post(users::revoke_user))
        .route("/v1/users/{name}/rotate", post(users::rotate_user))
}

#[cfg(test)]
mod tests;
