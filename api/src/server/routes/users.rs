//! Accounts and their bearer tokens (admins).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use secretum_engine::governance::accounts::{Accounts, Role, User};

use crate::server::auth::Caller;
use crate::server::error::ApiResult;
use crate::server::error::{Body, ErrorBody};
use crate::server::state::AppState;

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
pub async fn list_users(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<User>>> {
    caller.require(&[Role::Admin], "managing accounts")?;
    st.blocking(|st| Ok(Json(Accounts::new(&mut *st.connection()?).list()?))).await
}

/// Create an account; its token is in the answer, once (admins).
#[utoipa::path(post, path = "/v1/users", tag = "accounts", security(("bearer" = [])), request_body = NewUser,
    responses((status = 201, body = IssuedToken), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn add_user(State(st): State<AppState>, caller: Caller, Body(new): Body<NewUser>) -> ApiResult<(StatusCode, Json<IssuedToken>)> {
    caller.require(&[Role::Admin], "managing accounts")?;
    st.blocking(move |st| {
        let (user, token) = Accounts::new(&mut *st.connection()?).add(caller.name(), &new.name, new.role)?;
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
pub async fn revoke_user(State(st): State<AppState>, caller: Caller, Path(name): Path<String>) -> ApiResult<Json<Revoked>> {
    caller.require(&[Role::Admin], "managing accounts")?;
    st.blocking(move |st| {
        let revoked = Accounts::new(&mut *st.connection()?).revoke(caller.name(), &name)?;
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
pub async fn rotate_user(State(st): State<AppState>, caller: Caller, Path(name): Path<String>) -> ApiResult<Json<Rotated>> {
    caller.require(&[Role::Admin], "managing accounts")?;
    st.blocking(move |st| {
        let token = Accounts::new(&mut *st.connection()?).rotate(caller.name(), &name)?;
        Ok(Json(Rotated { token }))
    })
    .await
}
