//! The service itself: liveness, the OpenAPI document, who a token belongs to.

use axum::Json;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use secretum_engine::governance::accounts::Role;

use crate::server::auth::Caller;
use crate::server::error::ErrorBody;

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
}

/// Liveness; no authentication.
#[utoipa::path(get, path = "/health", tag = "service", responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into() })
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "service", responses((status = 200, description = "OpenAPI 3 document")))]
pub async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::server::openapi::document()).into_response()
}

#[derive(Serialize, ToSchema)]
pub struct Me {
    pub name: String,
    pub role: Role,
}

/// Who the token belongs to.
#[utoipa::path(get, path = "/v1/me", tag = "service", security(("bearer" = [])),
    responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
pub async fn me(caller: Caller) -> Json<Me> {
    Json(Me { name: caller.name().to_owned(), role: caller.role() })
}
