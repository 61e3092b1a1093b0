//! What every request shares: the server's settings and the warehouse's layout, schemas, rate
//! limiter and query permits; each request opens its own database connection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::http::StatusCode;
use rusqlite::Connection;
use serde::Deserialize;
use tokio::sync::Semaphore;

use secretum_engine::budget::Ledger;
use secretum_engine::catalog::Catalog;
use secretum_engine::db::{self, Layout};
use secretum_engine::governance::Governance;
use secretum_engine::schema::Schemas;
use secretum_engine::{Error, Result, Warehouse};

use super::error::ApiError;
use super::limits::RateLimiter;

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
    domains: Arc<secretum_engine::warehouse::DomainCache>,
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
                domains: wh.domain_cache(),
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
        Ok(Warehouse::from_parts(
            self.inner.layout.clone(),
            self.inner.schemas.clone(),
            Catalog::open(&self.inner.layout.database())?,
            self.inner.domains.clone(),
        ))
    }

    pub fn schemas(&self) -> &Schemas {
        &self.inner.schemas
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub(crate) fn limiter(&self) -> &RateLimiter {
        &self.inner.limiter
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
