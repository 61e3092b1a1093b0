//! The OpenAPI 3 document, generated from the handlers' annotations. A copy is checked in at
//! `api/openapi.json`; a test fails when the two drift (`SECRETUM_BLESS=1` rewrites the copy).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::routes::{audit, catalog, projects, queries, service, users};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "secretum",
        description = "Sovereign research data warehouse for health data: researchers get differentially-private aggregates \
                       only, charged to a budget a data steward approved. Every route but /health, /openapi.json and /v1/signing-key needs \
                       `Authorization: Bearer <token>`.",
        license(name = "Apache-2.0")
    ),
    paths(
        service::health, openapi_json, service::me, catalog::tables, catalog::concepts, catalog::ingests, catalog::signing_key,
        projects::request_project, projects::list_projects, projects::get_project, projects::approve, projects::reject,
        projects::transition, queries::query, queries::history, queries::bundle,
        audit::audit_log, audit::audit_verify, audit::policy,
        users::list_users, users::add_user, users::revoke_user, users::rotate_user,
    ),
    modifiers(&Bearer),
    tags(
        (name = "service"), (name = "catalog", description = "What may be asked: schemas, privacy roles, bounds, domains"),
        (name = "projects", description = "Requests, approval and the life of a project"),
        (name = "queries", description = "Differentially-private answers, charged to the project's budget"),
        (name = "audit", description = "Hash-chained audit log and warehouse policy"),
        (name = "accounts", description = "Accounts and bearer tokens"),
    )
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    }
}

/// The document as pretty JSON (what `/openapi.json` serves and `api/openapi.json` holds).
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    // The version comes from the crate, so a release does not need a hand edit here.
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "service", responses((status = 200, description = "OpenAPI 3 document")))]
pub async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}
