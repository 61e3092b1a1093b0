//! Bearer tokens and roles: who a request comes from, what they may see. The per-account rate
//! limit ([`super::limits`]) applies once the caller is known.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use secretum_engine::audit::{self, Event};
use secretum_engine::governance::accounts::{Accounts, Principal, Role};
use secretum_engine::governance::{Governance, Project};

use super::error::ApiError;
use super::state::AppState;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl Caller {
    pub fn name(&self) -> &str {
        &self.0.name
    }
    pub fn role(&self) -> Role {
        self.0.role
    }
    /// Refuse unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role], what: &str) -> Result<(), ApiError> {
        if roles.contains(&self.0.role) {
            return Ok(());
        }
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        Err(ApiError::forbidden(format!("{what} needs the {} role; {} is a {}", names.join(" or "), self.0.name, self.0.role)))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let header = parts.headers.get(AUTHORIZATION).map(|v| v.to_str().unwrap_or("").to_owned());
        let token = match header.as_deref().map(|h| h.split_once(' ')) {
            Some(Some((scheme, token))) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => token.trim().to_owned(),
            Some(_) => return Err(failed(state, "malformed Authorization header (expected `Bearer <token>`)").await),
            None => return Err(failed(state, "no bearer token (send `Authorization: Bearer <token>`)").await),
        };
        let st = state.clone();
        let principal = tokio::task::spawn_blocking(move || -> secretum_engine::Result<Option<Principal>> {
            let mut conn = st.connection()?;
            Accounts::new(&mut conn).authenticate(&token)
        })
        .await??;
        let Some(principal) = principal else {
            return Err(failed(state, "invalid or revoked token").await);
        };
        if let Err(wait) = state.limiter().check(&principal.name) {
            return Err(ApiError {
                retry_after: Some(wait.ceil().max(1.0) as u64),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("too many requests for {}; retry in {:.1} s", principal.name, wait),
                )
            });
        }
        Ok(Caller(principal))
    }
}

/// Record a failed authentication and build its 401. The token itself is never logged.
async fn failed(state: &AppState, reason: &'static str) -> ApiError {
    let st = state.clone();
    let recorded = tokio::task::spawn_blocking(move || -> secretum_engine::Result<()> {
        let mut conn = st.connection()?;
        audit::append(
            &mut conn,
            &Event { actor: "anonymous", action: "auth.failed", outcome: "denied", detail: Some(reason), ..Default::default() },
        )?;
        Ok(())
    })
    .await;
    if !matches!(recorded, Ok(Ok(()))) {
        tracing::error!("could not record a failed authentication in the audit log");
    }
    tracing::info!("authentication failed: {reason}");
    ApiError::unauthorized(reason)
}

/// The project as this caller may see it: stewards see all, researchers only their own (any
/// other is answered 404, as if it did not exist).
pub fn visible(g: &Governance, caller: &Caller, reference: &str) -> Result<Project, ApiError> {
    let not_found = || ApiError::not_found(format!("no project {reference:?} visible to {}", caller.name()));
    let p = g.project(reference)?.ok_or_else(not_found)?;
    match caller.role() {
        Role::Steward => Ok(p),
        Role::Researcher if p.members.iter().any(|m| m == caller.name()) => Ok(p),
        _ => Err(not_found()),
    }
}
