//! `secretum serve`: the governed HTTP service.
//!
//! axum over tokio. Every request that touches the catalog, the ledger or the audit log runs
//! its SQLite work on the blocking pool with its own connection (SQLite serializes writers;
//! the ledger's check-and-spend is one immediate transaction). Layers, outermost first:
//! tracing, a global concurrency limit, a per-request timeout, the body limit; per-account
//! rate limiting happens after authentication ([`auth`]).

pub mod auth;
pub mod console;
pub mod error;
pub mod limits;
pub mod openapi;
pub mod routes;
pub mod state;

pub use state::{AppState, Config};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use secretum_engine::{Error, Result};

use self::error::ApiError;

/// The whole application: routes and layers.
pub fn app(state: AppState) -> Router {
    let cfg = state.config();
    let timeout = Duration::from_secs_f64(cfg.request_timeout_secs.max(1e-6));
    let concurrency = Arc::new(Semaphore::new(cfg.max_concurrency.max(1)));
    routes::router()
        .layer(DefaultBodyLimit::max(cfg.body_limit))
        .layer(middleware::from_fn(move |req: Request, next: Next| timed(timeout, req, next)))
        .layer(middleware::from_fn(move |req: Request, next: Next| limited(concurrency.clone(), req, next)))
        .layer(middleware::from_fn_with_state(state.clone(), trace))
        .with_state(state)
}

async fn timed(timeout: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("the request took longer than {timeout:?}; a query's budget stays charged"),
        )
        .into_response(),
    }
}

async fn limited(permits: Arc<Semaphore>, req: Request, next: Next) -> Response {
    let Ok(_permit) = permits.acquire().await else {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the server is shutting down").into_response();
    };
    next.run(req).await
}

/// One log line per request: method, route, status, time. Never bodies, values or tokens.
async fn trace(State(_): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route =
        req.extensions().get::<axum::extract::MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| req.uri().path().to_owned());
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    tracing::info!(%method, route, status = resp.status().as_u16(), ms = started.elapsed().as_secs_f64() * 1e3, "request");
    resp
}

/// Serve until SIGTERM or Ctrl-C; in-flight requests finish first.
pub async fn serve(config: Config) -> Result<()> {
    let state = AppState::new(config.clone())?;
    let router = app(state).into_make_service_with_connect_info::<SocketAddr>();
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|e| Error::BadRequest(format!("TLS certificate {} / key {}: {e}", cert.display(), key.display())))?;
            let handle = axum_server::Handle::new();
            let h = handle.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                h.graceful_shutdown(Some(Duration::from_secs(600)));
            });
            let listener = std::net::TcpListener::bind(config.listen)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|e| Error::BadRequest(format!("cannot listen on {}: {e}", config.listen)))?;
            let addr = listener.local_addr().map_err(|e| Error::io(&config.data_dir, e))?;
            eprintln!("secretum serving https://{addr} (data {})", config.data_dir.display());
            axum_server::from_tcp_rustls(listener, tls).handle(handle).serve(router).await.map_err(|e| Error::io(&config.data_dir, e))
        }
        (None, None) => {
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .map_err(|e| Error::BadRequest(format!("cannot listen on {}: {e}", config.listen)))?;
            let addr = listener.local_addr().map_err(|e| Error::io(&config.data_dir, e))?;
            // Tests and scripts read this line to learn the port when listening on port 0.
            eprintln!("secretum serving http://{addr} (data {})", config.data_dir.display());
            axum::serve(listener, router).with_graceful_shutdown(shutdown_signal()).await.map_err(|e| Error::io(&config.data_dir, e))
        }
        _ => Err(Error::BadRequest("TLS needs both --tls-cert and --tls-key".into())),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::warn!("shutting down: finishing in-flight requests");
    eprintln!("secretum: shutting down, finishing in-flight requests");
}
