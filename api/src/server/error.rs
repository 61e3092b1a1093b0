//! Errors as HTTP answers: `{"error": {"code": "...", "message": "...", "rule": "..."}}` with the
//! right status, decided here and nowhere else.
//!
//! | engine error | HTTP | `code` |
//! | --- | --- | --- |
//! | SQL refused by a rule | 422 | `sql_refused` (+ `rule`) |
//! | budget exhausted, per-patient cap reached | 409 | `budget_exhausted` |
//! | project not active | 409 | `project_not_active` |
//! | a state conflict | 409 | `conflict` |
//! | not found | 404 | `not_found` |
//! | bad request, bad input, malformed JSON | 400 | `malformed` |
//! | body over the limit | 413 | `payload_too_large` |
//! | a query that failed after its debit | 500 | `query_failed` (+ ledger entry) |
//! | anything else | 500 | `internal` (+ an id the server log has) |
//!
//! Messages come from the request, the schema, the policy and the budget only. Internal errors
//! are logged with their cause under an id and answered with the id alone.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use secretum_engine::Error;
use secretum_engine::error::BudgetRefusal;

/// What a handler returns.
pub type ApiResult<T> = Result<T, ApiError>;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// For refused SQL: the privacy rule that refused it.
    pub rule: Option<&'static str>,
    /// For 429: seconds to wait.
    pub retry_after: Option<u64>,
}

/// The JSON body of every error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code: `malformed`, `unauthorized`, `forbidden`, `not_found`,
    /// `conflict`, `project_not_active`, `budget_exhausted`, `payload_too_large`,
    /// `sql_refused`, `rate_limited`, `timeout`, `query_failed`, `internal`.
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), rule: None, retry_after: None }
    }
    pub fn malformed(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed", message)
    }
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    /// An internal failure: logged under a new id, answered with the id only.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        let id = secretum_engine::error::new_id();
        tracing::error!(id = %id, "internal error: {detail}");
        ApiError::with_id(&id)
    }
    fn with_id(id: &str) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("internal error {id}; the server log has the details"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            ErrorBody { error: ErrorDetail { code: self.code.to_owned(), message: self.message, rule: self.rule.map(str::to_owned) } };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        match e {
            Error::Refused { rule, detail } => ApiError {
                rule: Some(rule.name()),
                ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "sql_refused", format!("refused ({rule}): {detail}"))
            },
            Error::Budget(r @ BudgetRefusal::NotActive { .. }) => ApiError::new(StatusCode::CONFLICT, "project_not_active", r.to_string()),
            Error::Budget(r) => ApiError::new(StatusCode::CONFLICT, "budget_exhausted", r.to_string()),
            e @ Error::QueryFailed { .. } => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "query_failed", e.to_string()),
            e @ (Error::BadRequest(_)
            | Error::InvalidInput { .. }
            | Error::UnreadableInput { .. }
            | Error::Schema(_)
            | Error::Key { .. }) => ApiError::malformed(e.to_string()),
            Error::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            Error::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
            e @ Error::NotFound { .. } => ApiError::not_found(e.to_string()),
            Error::Internal { id } => ApiError::with_id(&id),
            other => ApiError::internal(other),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the request body is over the server's limit");
        }
        // axum answers 415/422 for a missing content type or fields; our 422 means refused SQL,
        // so every malformed body is a 400 here.
        ApiError::malformed(format!("malformed JSON body: {}", r.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::malformed(format!("malformed query string: {}", r.body_text()))
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> ApiError {
        ApiError::internal(format!("request task failed: {e}"))
    }
}

/// A JSON request body, rejected with our error type when malformed (axum's
/// "customize extractor error" pattern): handlers receive the value or never run.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Body<T>, ApiError> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(Body(value))
    }
}

/// A JSON body that may be absent (no content): `None` then; malformed is still refused.
pub struct OptionalBody<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<OptionalBody<T>, ApiError> {
        let headers = req.headers();
        let has_body = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).is_some_and(|v| v != "0")
            || headers.contains_key(header::TRANSFER_ENCODING);
        if !has_body {
            return Ok(OptionalBody(None));
        }
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(OptionalBody(Some(value)))
    }
}

/// Query-string parameters, rejected with our error type when malformed.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Params<T>, ApiError> {
        let axum::extract::Query(value) = axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Params(value))
    }
}
