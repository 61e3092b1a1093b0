//! The service itself: liveness, the OpenAPI document, who a token belongs to.

use axum::Json;
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
