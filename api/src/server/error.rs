//! Errors as HTTP answers: `{"error": {"code": "...", "message": "..."}}` with the right status.
//!
//! Messages come from the request, the schema, the policy and the budget only. Internal
//! errors are logged with their cause and answered with a generic message.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use secretum_engine::Error;
use secretum_engine::budget::Refused;
use secretum_engine::dp::QueryError;

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
    pub fn internal() -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; the server log has the details")
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
            Error::Usage(m) => ApiError::malformed(m),
            Error::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            Error::NotFound(m) => ApiError::not_found(m),
            Error::UnknownTable(t) => ApiError::malformed(format!("unknown table `{t}`")),
            other => {
                tracing::error!("internal error: {other}");
                ApiError::internal()
            }
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> ApiError {
        match e {
            QueryError::Refused(r) => ApiError {
                rule: Some(r.rule),
                ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "sql_refused", format!("refused ({}): {}", r.rule, r.message))
            },
            QueryError::Budget(r) => match r {
                Refused::UnknownProject(p) => ApiError::not_found(format!("project {p:?}")),
                Refused::NotActive { .. } => ApiError::new(StatusCode::CONFLICT, "project_not_active", r.to_string()),
                other => ApiError::new(StatusCode::CONFLICT, "budget_exhausted", other.to_string()),
            },
            QueryError::Failed(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "query_failed", e.to_string()),
            QueryError::Internal(e) => e.into(),
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
        tracing::error!("request task failed: {e}");
        ApiError::internal()
    }
}
