//! Bearer tokens, roles and the per-account rate limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use secretum_engine::audit::{self, Event};
use secretum_engine::governance::accounts::{Accounts, Principal, Role};

use super::AppState;
use super::error::ApiError;

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
        if let Err(wait) = state.inner.limiter.check(&principal.name) {
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

/// A token bucket per account: `rate` requests per second on average, bursts up to `burst`.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: f64) -> RateLimiter {
        RateLimiter { rate, burst: burst.max(1.0), buckets: Mutex::new(HashMap::new()) }
    }

    /// Take one token, or say how many seconds until one is available.
    pub fn check(&self, key: &str) -> Result<(), f64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - *tokens) / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_per_account() {
        let l = RateLimiter::new(10.0, 3.0);
        assert!((0..3).all(|_| l.check("a").is_ok()));
        let wait = l.check("a").unwrap_err();
        assert!(wait > 0.0 && wait <= 0.1 + 1e-9, "{wait}");
        assert!(l.check("b").is_ok(), "accounts have their own buckets");
        std::thread::sleep(std::time::Duration::from_millis(120));
        assert!(l.check("a").is_ok());
        assert!(RateLimiter::new(0.0, 1.0).check("x").is_ok(), "rate 0 disables the limit");
    }
}
