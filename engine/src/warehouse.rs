//! A warehouse: one data directory holding the catalog, the table policies and the Parquet files.

use std::path::{Path, PathBuf};

use crate::catalog::Catalog;
use crate::db::Layout;
use crate::error::{Error, IoContext, Result};
use crate::pseudonym::Key;
use crate::schema::Schemas;
use crate::store::{Store, StoreConfig};

pub struct Warehouse {
    pub layout: Layout,
    pub schemas: Schemas,
    pub catalog: Catalog,
    /// Where the Parquet files are: the data directory, or an object store.
    pub store: Store,
    /// Where the bounded plans run: here, or on a Ballista cluster (`serve --cluster`).
    pub cluster: Option<crate::cluster::Cluster>,
    /// The schemas with concept domains resolved from the loaded vocabulary (see
    /// [`crate::vocabulary::resolve_domains`]); shared by the warehouses a server opens.
    resolved: std::sync::Arc<DomainCache>,
}

/// What queries reuse from one to the next while the data does not change: the schemas with
/// resolved concept domains (and the state of the `concept` table they were resolved from), and
/// each table's registration (see [`crate::dp::session`]).
#[derive(Default)]
pub struct DomainCache(std::sync::Mutex<Option<(String, std::sync::Arc<Schemas>)>>, std::sync::Mutex<crate::dp::session::Registrations>);

/// What `init` did.
#[derive(Debug)]
pub struct InitReport {
    pub data_dir: PathBuf,
    pub key_file: PathBuf,
    pub tables: Vec<String>,
}

impl Warehouse {
    /// Create a new warehouse in `data_dir` and a new pseudonymization key in `key_file`
    /// (default: `<data_dir>/pseudonymization.key`). The table policies come from `schemas_dir`,
    /// or the bundled OMOP subset; they are validated before anything is written.
    pub fn init(data_dir: &Path, key_file: Option<&Path>, schemas_dir: Option<&Path>) -> Result<InitReport> {
        Warehouse::init_on(data_dir, key_file, schemas_dir, None)
    }

    /// [`Warehouse::init`], keeping the Parquet files in an object store (`store`) instead of the
    /// data directory. The store is reached (its bucket listed) before anything is written.
    pub fn init_on(
        data_dir: &Path,
        key_file: Option<&Path>,
        schemas_dir: Option<&Path>,
        store: Option<&StoreConfig>,
    ) -> Result<InitReport> {
        let layout = Layout::new(data_dir);
        if layout.database().exists() {
            return Err(Error::Conflict(format!("{} is already a secretum warehouse; nothing was changed", data_dir.display())));
        }
        let schemas = match schemas_dir {
            Some(dir) => Schemas::load_dir(dir)?,
            None => Schemas::bundled()?,
        };
        let key_file = match key_file {
            Some(k) => k.to_owned(),
            None => data_dir.join("pseudonymization.key"),
        };
        if key_file.exists() {
            return Err(Error::Key {
                path: key_file,
                reason: "already exists; refusing to overwrite a pseudonymization key. Choose another --key-file".into(),
            });
        }
        if let Some(config) = store {
            Store::connect(config)?.check()?;
        }
        layout.create_dirs()?;
        match schemas_dir {
            Some(dir) => copy_schema_dir(dir, &layout.schemas())?,
            None => Schemas::write_bundled(&layout.schemas())?,
        }
        let key = Key::create_file(&key_file)?;
        let key_file = std::fs::canonicalize(&key_file).at(&key_file)?;
        // The key releases are signed with (bundles anyone can check offline).
        crate::signing::Signer::open_or_create(&layout.root)?;
        let catalog = Catalog::open(&layout.database())?;
        catalog.set_meta("key_file", &key_file.to_string_lossy())?;
        catalog.set_meta("key_fingerprint", &key.fingerprint())?;
        catalog.set_meta("created_at", &crate::db::now_rfc3339())?;
        if let Some(config) = store {
            config.save(&catalog)?;
        }
        drop(catalog);
        // A minimal vocabulary to start with (the concepts of the synthetic data, the OMOP gender,
        // race, visit and type concepts): concept-id columns have public domains from the first
        // query; `secretum vocabulary load` replaces it with a site's Athena download.
        if schemas.tables.get("concept").is_some_and(|p| p.public) {
            let mut wh = Warehouse::open(data_dir)?;
            let dir = layout.root.join(".bundled-vocabulary");
            crate::synth::write_vocabulary(&dir)?;
            let loaded = crate::vocabulary::load(&mut wh, &dir, "init", None);
            let _ = std::fs::remove_dir_all(&dir);
            loaded?;
        }
        Ok(InitReport { data_dir: data_dir.to_owned(), key_file, tables: schemas.tables.keys().cloned().collect() })
    }

    /// Open an existing warehouse.
    pub fn open(data_dir: &Path) -> Result<Warehouse> {
        let layout = Layout::new(data_dir);
        if !layout.database().exists() {
            return Err(Error::not_found(
                "warehouse",
                format!(
                    "at {}: run `secretum init --data-dir {}` first (or set SECRETUM_DATA_DIR)",
                    data_dir.display(),
                    data_dir.display()
                ),
            ));
        }
        let schemas = Schemas::load_dir(&layout.schemas())?;
        let catalog = Catalog::open(&layout.database())?;
        let store = Store::open(&catalog)?;
        Ok(Warehouse { layout, schemas, catalog, store, cluster: None, resolved: Default::default() })
    }

    /// A warehouse from parts already opened (a server's: one layout and schemas, a catalog
    /// connection per request, one domain cache).
    pub fn from_parts(layout: Layout, schemas: Schemas, catalog: Catalog, store: Store, cache: std::sync::Arc<DomainCache>) -> Warehouse {
        Warehouse { layout, schemas, catalog, store, cluster: None, resolved: cache }
    }

    /// The cache of resolved domains, to share with warehouses made [`Warehouse::from_parts`].
    pub fn domain_cache(&self) -> std::sync::Arc<DomainCache> {
        self.resolved.clone()
    }

    /// The schemas with resolved concept domains, if resolved from this state of `concept`.
    pub(crate) fn resolved_domains(&self, stamp: &str) -> Option<std::sync::Arc<Schemas>> {
        let guard = self.resolved.0.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().filter(|(s, _)| s == stamp).map(|(_, schemas)| schemas.clone())
    }

    pub(crate) fn remember_resolved_domains(&self, stamp: String, schemas: std::sync::Arc<Schemas>) {
        *self.resolved.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((stamp, schemas));
    }

    /// The tables' registrations kept between queries.
    pub(crate) fn registrations(&self) -> std::sync::MutexGuard<'_, crate::dp::session::Registrations> {
        self.resolved.1.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn forget_resolved_domains(&self) {
        *self.resolved.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Load the pseudonymization key (`key_file`, or the one recorded at init) and check that it
    /// is the key this warehouse was created with.
    pub fn key(&self, key_file: Option<&Path>) -> Result<Key> {
        let path = match key_file {
            Some(p) => p.to_owned(),
            None => PathBuf::from(
                self.catalog
                    .meta("key_file")?
                    .ok_or_else(|| Error::BadRequest("this warehouse records no key file: pass --key-file".into()))?,
            ),
        };
        let key = Key::load(&path)?;
        let expected = self.catalog.meta("key_fingerprint")?;
        if expected.as_deref() != Some(key.fingerprint().as_str()) {
            return Err(Error::Key {
                path,
                reason: "is not the key this warehouse was initialized with: its pseudonyms would not link to the stored ones. Use the steward's original key file".into(),
            });
        }
        Ok(key)
    }
}

fn copy_schema_dir(from: &Path, to: &Path) -> Result<()> {
    for entry in walk(from)? {
        let rel = entry.strip_prefix(from).map_err(|e| Error::internal(format!("{}: {e}", entry.display())))?;
        let dest = to.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).at(parent)?;
        }
        std::fs::copy(&entry, &dest).at(&entry)?;
    }
    Ok(())
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).at(dir)? {
        let path = entry.at(dir)?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}
