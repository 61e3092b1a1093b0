//! What every request shares: the server's settings and the warehouse's layout, schemas, rate
//! limiter and query permits; each request opens its own database connection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

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
    /// The cluster that executes the bounded plans (`df://host:port`); none: this node.
    pub cluster: Option<String>,
    /// The file of the key the cluster's scheduler asks for.
    pub cluster_key_file: Option<PathBuf>,
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
            cluster: None,
            cluster_key_file: None,
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
    /// Open connections to the warehouse database, and opened warehouses, kept between requests
    /// (each with its prepared statements): a request takes one and gives it back when done.
    connections: Mutex<Vec<Connection>>,
    warehouses: Mutex<Vec<Warehouse>>,
    layout: Layout,
    schemas: Schemas,
    store: secretum_engine::store::Store,
    cluster: Option<secretum_engine::cluster::Cluster>,
    domains: Arc<secretum_engine::warehouse::DomainCache>,
    config: Config,
    limiter: RateLimiter,
    queries: Semaphore,
}

impl AppState {
    pub fn new(config: Config) -> Result<AppState> {
        // Opening the warehouse checks that it exists and that its schemas load.
        let cluster = match (config.cluster.as_deref(), &config.cluster_key_file) {
            (None, None) => None,
            (None, Some(_)) => return Err(Error::BadRequest("a cluster key file without --cluster".into())),
            (Some(url), None) => Some(secretum_engine::cluster::Cluster::parse(url)?),
            (Some(url), Some(file)) => {
                Some(secretum_engine::cluster::Cluster::parse(url)?.with_key(secretum_engine::cluster::ClusterKey::load(file)?))
            }
        };
        let wh = Warehouse::open(&config.data_dir)?;
        Ok(AppState {
            inner: Arc::new(Inner {
                connections: Mutex::new(Vec::new()),
                warehouses: Mutex::new(Vec::new()),
                domains: wh.domain_cache(),
                store: wh.store.clone(),
                cluster,
                layout: wh.layout,
                schemas: wh.schemas,
                limiter: RateLimiter::new(config.rate_limit, config.rate_burst),
                queries: Semaphore::new(config.max_queries.max(1)),
                config,
            }),
        })
    }

    /// A connection to the warehouse database (migrations already applied), from those kept
    /// between requests or a new one; it goes back when the lease is dropped.
    pub fn connection(&self) -> Result<Lease<Connection>> {
        let conn = match lock(&self.inner.connections).pop() {
            Some(c) => c,
            None => db::open(&self.inner.layout.database())?,
        };
        Ok(Lease::new(self, conn, |st, c| st.give_back(c)))
    }

    pub fn ledger(&self) -> Result<Lease<Ledger>> {
        let conn = self.connection()?.take();
        Ok(Lease::new(self, Ledger::from_connection(conn), |st, l| st.give_back(l.into_connection())))
    }

    pub fn governance(&self) -> Result<Lease<Governance>> {
        let conn = self.connection()?.take();
        Ok(Lease::new(self, Governance::from_connection(conn), |st, g| st.give_back(g.into_connection())))
    }

    pub fn warehouse(&self) -> Result<Lease<Warehouse>> {
        let wh = match lock(&self.inner.warehouses).pop() {
            Some(w) => w,
            None => {
                let mut wh = Warehouse::from_parts(
                    self.inner.layout.clone(),
                    self.inner.schemas.clone(),
                    Catalog::open(&self.inner.layout.database())?,
                    self.inner.store.clone(),
                    self.inner.domains.clone(),
                );
                wh.cluster = self.inner.cluster.clone();
                wh
            }
        };
        Ok(Lease::new(self, wh, |st, w| {
            let idle = w.catalog.connection().is_autocommit();
            keep(&st.inner.warehouses, w, idle)
        }))
    }

    fn give_back(&self, conn: Connection) {
        let idle = conn.is_autocommit();
        keep(&self.inner.connections, conn, idle)
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

/// How many connections (and warehouses) are kept between requests at most.
const KEPT: usize = 32;

/// Keep `item` for the next request, unless its connection is in the middle of a transaction (a
/// request that failed half-way: `idle` is false) or enough are kept already.
fn keep<T>(pool: &Mutex<Vec<T>>, item: T, idle: bool) {
    let mut kept = lock(pool);
    if idle && kept.len() < KEPT {
        kept.push(item);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connection (or what wraps one) lent to a request: derefs to it, and goes back to the
/// server's pool when dropped (not when the thread is panicking: it is closed instead).
pub struct Lease<T> {
    item: Option<T>,
    state: AppState,
    give_back: fn(&AppState, T),
}

impl<T> Lease<T> {
    fn new(state: &AppState, item: T, give_back: fn(&AppState, T)) -> Lease<T> {
        Lease { item: Some(item), state: state.clone(), give_back }
    }

    /// The item itself, never given back.
    pub fn take(mut self) -> T {
        self.item.take().expect("a lease holds its item until dropped")
    }
}

impl<T> std::ops::Deref for Lease<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.item.as_ref().expect("a lease holds its item until dropped")
    }
}

impl<T> std::ops::DerefMut for Lease<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.item.as_mut().expect("a lease holds its item until dropped")
    }
}

impl<T> Drop for Lease<T> {
    fn drop(&mut self) {
        if let Some(item) = self.item.take()
            && !std::thread::panicking()
        {
            (self.give_back)(&self.state, item);
        }
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
