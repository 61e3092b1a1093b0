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
pub mod openapi;
pub mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rusqlite::Connection;
use serde::Deserialize;
use tokio::sync::Semaphore;

use secretum_engine::budget::Ledger;
use secretum_engine::catalog::Catalog;
use secretum_engine::db::{self, Layout};
use secretum_engine::governance::Governance;
use secretum_engine::schema::Schemas;
use secretum_engine::{Error, Result, Warehouse};

use self::auth::RateLimiter;
use self::error::ApiError;

/// Server settings: command line, environment (`SECRETUM_*`) or a TOML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Largest request body, in bytes.
    pub body_limit: usize,
    /// Requests taking longer are answered 503 (a query's debit stays charged).
    pub request_timeout_secs: f64,
    /// Average requests per second per account (0 disables).
    pub rate_limit: f64,
    /// Burst size per account.
    pub rate_burst: f64,
    /// Requests served at once; the rest wait.
    pub max_concurrency: usize,
    /// Queries executed at once; the rest wait.
    pub max_queries: usize,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: "127.0.0.1:8080".parse().expect("literal address"),
            data_dir: PathBuf::from("secretum-data"),
            body_limit: 256 * 1024,
            request_timeout_secs: 300.0,
            rate_limit: 20.0,
            rate_burst: 40.0,
            max_concurrency: 256,
            max_queries: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) * 2,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl Config {
    pub fn from_file(path: &std::path::Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::BadRequest(format!("{}: {}", path.display(), e.message())))
    }
}

/// Shared by every request.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    layout: Layout,
    schemas: Schemas,
    config: Config,
    limiter: RateLimiter,
    queries: Semaphore,
}

impl AppState {
    pub fn new(config: Config) -> Result<AppState> {
        // Opening the warehouse checks that it exists and that its schemas load.
        let wh = Warehouse::open(&config.data_dir)?;
        Ok(AppState {
            inner: Arc::new(Inner {
                layout: wh.layout,
                schemas: wh.schemas,
                limiter: RateLimiter::new(config.rate_limit, config.rate_burst),
                queries: Semaphore::new(config.max_queries.max(1)),
                config,
            }),
        })
    }

    /// A fresh connection to the warehouse database (migrations already applied).
    pub fn connection(&self) -> Result<Connection> {
        db::open(&self.inner.layout.database())
    }

    pub fn ledger(&self) -> Result<Ledger> {
        Ok(Ledger::from_connection(self.connection()?))
    }

    pub fn governance(&self) -> Result<Governance> {
        Ok(Governance::from_connection(self.connection()?))
    }

    pub fn warehouse(&self) -> Result<Warehouse> {
        Ok(Warehouse {
            layout: self.inner.layout.clone(),
            schemas: self.inner.schemas.clone(),
            catalog: Catalog::open(&self.inner.layout.database())?,
        })
    }

    pub fn schemas(&self) -> &Schemas {
        &self.inner.schemas
    }

    /// One of the permits that bound how many queries execute at once; waits for one.
    pub async fn query_permit(&self) -> std::result::Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        self.inner
            .queries
            .acquire()
            .await
            .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the server is shutting down"))
    }

    /// Run SQLite work on the blocking pool.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&AppState) -> std::result::Result<T, ApiError> + Send + 'static,
    ) -> std::result::Result<T, ApiError> {
        let st = self.clone();
        tokio::task::spawn_blocking(move || f(&st)).await?
    }
}

/// The whole application: routes and layers.
pub fn app(state: AppState) -> Router {
    let cfg = &state.inner.config;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_files_set_what_they_name_and_refuse_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secretum.toml");
        std::fs::write(&path, "listen = \"0.0.0.0:9000\"\ndata_dir = \"/srv/wh\"\nrate_limit = 5.0\n").unwrap();
        let c = Config::from_file(&path).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.data_dir, PathBuf::from("/srv/wh"));
        assert_eq!(c.rate_limit, 5.0);
        assert_eq!(c.body_limit, Config::default().body_limit, "unnamed settings keep their defaults");
        std::fs::write(&path, "listen_on = \"0.0.0.0:9000\"\n").unwrap();
        let err = Config::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("listen_on"), "{err}");
    }
}
