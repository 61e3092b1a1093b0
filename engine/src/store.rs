//! Where a warehouse keeps its Parquet files: under its data directory (the default), or in an
//! S3-compatible object store the institution runs (Garage is the store of reference).
//!
//! Only the Parquet files move. The catalog, the ledger and the audit log stay in the SQLite
//! database on the API node, and the catalog alone decides which files exist for queries: an
//! object the catalog does not name is never read. So an ingest keeps its atomicity on a store
//! without renames or transactions: it uploads its files under `<prefix>/staging/<ingest>/`,
//! copies them to `<prefix>/tables/<table>/` (still invisible), commits the catalog, then
//! removes the staged copies. A killed ingest leaves only objects the catalog does not name,
//! which the next ingest sweeps (see [`crate::ingest::sweep_staging`]).
//!
//! Credentials come from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`) or from
//! a file readable by its owner only (`--s3-credentials`, or `SECRETUM_S3_CREDENTIALS`); the
//! catalog records the file's path, never a secret, and no message prints one.
//!
//! Object-store calls run on one process-wide runtime kept for their connections, whichever
//! runtime (or none) asks: a query's scan and an ingest's upload share its connection pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::SpawnedReqwestConnector;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::catalog::Catalog;
use crate::error::{Error, IoContext, Result};

/// How a warehouse's files are stored, as `init` was told.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreConfig {
    /// `s3://bucket/prefix`.
    pub url: String,
    /// The store's S3 endpoint (`http://10.0.0.5:3900`); required for a self-hosted store.
    pub endpoint: Option<String>,
    /// The region the store answers for (Garage's `s3_region`, often `garage`).
    pub region: Option<String>,
    /// A file with `access_key_id` and `secret_access_key` (TOML), mode 0600.
    pub credentials_file: Option<PathBuf>,
}

/// The warehouse's file store.
#[derive(Clone, Debug, Default)]
pub enum Store {
    /// Files under the data directory.
    #[default]
    Local,
    /// Files in an S3-compatible object store.
    S3(Arc<S3Store>),
}

#[derive(Debug)]
pub struct S3Store {
    bucket: String,
    /// The key prefix every object of this warehouse is under (no leading or trailing `/`).
    prefix: String,
    endpoint: String,
    config: StoreConfig,
    /// The client, made on first use: commands that read no file (projects, users, audit) work
    /// without the store's credentials.
    client: OnceLock<Arc<AmazonS3>>,
}

const META_URL: &str = "store.url";
const META_ENDPOINT: &str = "store.endpoint";
const META_REGION: &str = "store.region";
const META_CREDENTIALS: &str = "store.credentials_file";

/// The runtime object-store connections live on.
fn io_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("object-store")
            .enable_all()
            .build()
            .expect("the object-store runtime starts")
    })
}

/// Run an object-store call to completion from synchronous code (ingest, sweep), from any thread,
/// inside a runtime or not.
fn block<T: Send>(f: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|s| s.spawn(|| io_runtime().block_on(f)).join().expect("an object-store call panicked"))
}

fn store_error(what: &str, endpoint: &str, e: object_store::Error) -> Error {
    // object_store's messages name the object and the HTTP status, never credentials.
    Error::Unavailable(format!("object store at {endpoint}: {what} failed: {e}"))
}

impl StoreConfig {
    fn parse_url(&self) -> Result<(String, String)> {
        let rest = self.url.strip_prefix("s3://").ok_or_else(|| {
            Error::BadRequest(format!("--store {:?}: expected s3://bucket/prefix (local disk is the default: leave --store out)", self.url))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() || !bucket.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
            return Err(Error::BadRequest(format!("--store {:?}: the bucket name must be letters, digits, '-' or '.'", self.url)));
        }
        Ok((bucket.to_owned(), prefix.trim_matches('/').to_owned()))
    }

    /// Record the configuration in the catalog (no secret: only the credentials file's path).
    pub fn save(&self, catalog: &Catalog) -> Result<()> {
        self.parse_url()?;
        catalog.set_meta(META_URL, &self.url)?;
        if let Some(e) = &self.endpoint {
            catalog.set_meta(META_ENDPOINT, e)?;
        }
        if let Some(r) = &self.region {
            catalog.set_meta(META_REGION, r)?;
        }
        if let Some(c) = &self.credentials_file {
            let c = std::fs::canonicalize(c).at(c)?;
            catalog.set_meta(META_CREDENTIALS, &c.to_string_lossy())?;
        }
        Ok(())
    }

    /// The configuration a warehouse's catalog records, if it uses an object store.
    pub fn load(catalog: &Catalog) -> Result<Option<StoreConfig>> {
        let Some(url) = catalog.meta(META_URL)? else { return Ok(None) };
        Ok(Some(StoreConfig {
            url,
            endpoint: catalog.meta(META_ENDPOINT)?,
            region: catalog.meta(META_REGION)?,
            credentials_file: catalog.meta(META_CREDENTIALS)?.map(PathBuf::from),
        }))
    }
}

#[derive(serde::Deserialize)]
struct CredentialsFile {
    access_key_id: String,
    secret_access_key: String,
}

/// The access key: from the environment, else from the credentials file (owner-only).
fn credentials(file: Option<&Path>) -> Result<(String, String)> {
    if let (Ok(id), Ok(secret)) = (std::env::var("AWS_ACCESS_KEY_ID"), std::env::var("AWS_SECRET_ACCESS_KEY"))
        && !id.is_empty()
    {
        return Ok((id, secret));
    }
    let from_env = std::env::var_os("SECRETUM_S3_CREDENTIALS").map(PathBuf::from);
    let Some(path) = from_env.as_deref().or(file) else {
        return Err(Error::BadRequest(
            "the object store needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give a credentials file \
             (--s3-credentials or SECRETUM_S3_CREDENTIALS; TOML with access_key_id and secret_access_key, mode 0600)"
                .into(),
        ));
    };
    let text = read_private_file(path, "the credentials file")?;
    // The parse error could quote the file: say only where it is.
    let c: CredentialsFile = toml::from_str(&text).map_err(|_| {
        Error::BadRequest(format!("{}: expected TOML with access_key_id = \"...\" and secret_access_key = \"...\"", path.display()))
    })?;
    Ok((c.access_key_id, c.secret_access_key))
}

/// The text of a file holding a secret, refused when others can read it (its content is never
/// quoted in a message).
pub fn read_private_file(path: &Path, what: &str) -> Result<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).at(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(Error::BadRequest(format!(
                "{}: {what} is readable by others (mode {:o}); make it 0600 (chmod 600)",
                path.display(),
                mode & 0o777
            )));
        }
    }
    std::fs::read_to_string(path).at(path)
}

impl Store {
    /// The store a warehouse's catalog records.
    pub fn open(catalog: &Catalog) -> Result<Store> {
        match StoreConfig::load(catalog)? {
            None => Ok(Store::Local),
            Some(config) => Store::connect(&config),
        }
    }

    /// The configured object store (no request is made, and credentials are read on first use).
    pub fn connect(config: &StoreConfig) -> Result<Store> {
        let (bucket, prefix) = config.parse_url()?;
        let endpoint = config.endpoint.clone().unwrap_or_else(|| "https://s3.amazonaws.com".into());
        Ok(Store::S3(Arc::new(S3Store { bucket, prefix, endpoint, config: config.clone(), client: OnceLock::new() })))
    }

    /// Where the files are, for people (`info`, `tables`).
    pub fn describe(&self, data_dir: &Path) -> String {
        match self {
            Store::Local => format!("{} (local disk)", data_dir.join("tables").display()),
            Store::S3(s) => format!("s3://{}/{} at {}", s.bucket, s.prefix, s.endpoint),
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Store::Local)
    }

    /// Make the store readable by a query's DataFusion runtime.
    pub fn register(&self, runtime: &RuntimeEnv) -> Result<()> {
        if let Store::S3(s) = self {
            let url = ObjectStoreUrl::parse(format!("s3://{}", s.bucket))?;
            runtime.register_object_store(url.as_ref(), s.client()?.clone());
        }
        Ok(())
    }

    /// The URL DataFusion reads a catalog file (`tables/<table>/<file>`) at.
    pub fn table_url(&self, data_dir: &Path, rel: &str) -> Result<ListingTableUrl> {
        match self {
            Store::Local => {
                let path = data_dir.join(rel);
                let path = std::fs::canonicalize(&path).map_err(|e| Error::io(&path, e))?;
                Ok(ListingTableUrl::parse(path.to_string_lossy().as_ref())?)
            }
            Store::S3(s) => Ok(ListingTableUrl::parse(format!("s3://{}/{}", s.bucket, s.key(rel)))?),
        }
    }

    /// Check at `init` that the bucket answers with these credentials (a listing of the prefix).
    pub fn check(&self) -> Result<()> {
        if let Store::S3(s) = self {
            let prefix = s.object("tables");
            let client = s.client()?;
            block(async { client.list(Some(&prefix)).next().await.transpose() })
                .map_err(|e| store_error("listing the bucket", &s.endpoint, e))?;
        }
        Ok(())
    }
}

impl S3Store {
    fn client(&self) -> Result<&Arc<AmazonS3>> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let (id, secret) = credentials(self.config.credentials_file.as_deref())?;
        let made = AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_endpoint(&self.endpoint)
            .with_region(self.config.region.clone().unwrap_or_else(|| "us-east-1".into()))
            .with_access_key_id(id)
            .with_secret_access_key(secret)
            .with_allow_http(self.endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(false)
            .with_http_connector(SpawnedReqwestConnector::new(io_runtime().handle().clone()))
            .build()
            .map_err(|e| store_error("configuring the client", &self.endpoint, e))?;
        // Two threads may both build one; either is kept (a failure is not kept: the next call
        // tries again, with whatever credentials are there then).
        Ok(self.client.get_or_init(|| Arc::new(made)))
    }

    fn key(&self, rel: &str) -> String {
        if self.prefix.is_empty() { rel.to_owned() } else { format!("{}/{rel}", self.prefix) }
    }

    fn object(&self, rel: &str) -> ObjectPath {
        ObjectPath::from(self.key(rel))
    }

    /// The object path relative to the warehouse's prefix.
    fn rel(&self, path: &ObjectPath) -> String {
        let p = path.as_ref();
        if self.prefix.is_empty() { p.to_owned() } else { p.strip_prefix(&format!("{}/", self.prefix)).unwrap_or(p).to_owned() }
    }

    /// Upload a local file to `rel`, in parts for a large file.
    pub fn upload(&self, local: &Path, rel: &str) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let target = self.object(rel);
        let store: Arc<dyn ObjectStore> = self.client()?.clone();
        let file = std::fs::File::open(local).at(local)?;
        block(async move {
            let mut writer = object_store::buffered::BufWriter::new(store, target);
            let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = std::io::Read::read(&mut reader, &mut buf)?;
                if n == 0 {
                    break;
                }
                if let Err(e) = writer.write_all(&buf[..n]).await {
                    let _ = writer.abort().await;
                    return Err(e);
                }
            }
            writer.shutdown().await
        })
        .map_err(|e| Error::Unavailable(format!("object store at {}: uploading {rel} failed: {e}", self.endpoint)))
    }

    /// Copy `from` to `to` inside the store.
    pub fn copy(&self, from: &str, to: &str) -> Result<()> {
        let (a, b) = (self.object(from), self.object(to));
        block(self.client()?.copy(&a, &b)).map_err(|e| store_error(&format!("copying {from} to {to}"), &self.endpoint, e))
    }

    /// Remove an object (absent is fine).
    pub fn remove(&self, rel: &str) -> Result<()> {
        let p = self.object(rel);
        match block(self.client()?.delete(&p)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error(&format!("removing {rel}"), &self.endpoint, e)),
        }
    }

    /// Every object under `rel_prefix` (a directory-like prefix), relative to the warehouse's prefix.
    pub fn list(&self, rel_prefix: &str) -> Result<Vec<String>> {
        let p = self.object(rel_prefix.trim_end_matches('/'));
        let client = self.client()?;
        let found: Vec<_> = block(async { client.list(Some(&p)).collect::<Vec<_>>().await });
        let mut out = Vec::new();
        for m in found {
            out.push(self.rel(&m.map_err(|e| store_error(&format!("listing {rel_prefix}"), &self.endpoint, e))?.location));
        }
        Ok(out)
    }

    /// The whole object.
    pub fn read(&self, rel: &str) -> Result<bytes::Bytes> {
        let p = self.object(rel);
        let client = self.client()?;
        block(async { client.get(&p).await?.bytes().await }).map_err(|e| store_error(&format!("reading {rel}"), &self.endpoint, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_are_checked() {
        let c = |url: &str| StoreConfig { url: url.into(), ..Default::default() }.parse_url();
        assert_eq!(c("s3://warehouse/site-a/").unwrap(), ("warehouse".into(), "site-a".into()));
        assert_eq!(c("s3://warehouse").unwrap(), ("warehouse".into(), "".into()));
        assert!(c("/data/x").is_err());
        assert!(c("s3:///x").is_err());
        assert!(c("s3://bad bucket/x").is_err());
    }

    #[test]
    fn a_credentials_file_others_can_read_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s3.toml");
        std::fs::write(&f, "access_key_id = \"GK1\"\nsecret_access_key = \"very-secret\"\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = credentials(Some(&f)).unwrap_err().to_string();
            assert!(e.contains("0600") && !e.contains("very-secret"), "{e}");
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        if std::env::var("AWS_ACCESS_KEY_ID").is_err() && std::env::var("SECRETUM_S3_CREDENTIALS").is_err() {
            assert_eq!(credentials(Some(&f)).unwrap(), ("GK1".into(), "very-secret".into()));
            std::fs::write(&f, "secret = very-secret").unwrap();
            let e = credentials(Some(&f)).unwrap_err().to_string();
            assert!(!e.contains("very-secret"), "{e}");
        }
    }
}
