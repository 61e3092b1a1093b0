//! A warehouse: one data directory holding the catalog, the table policies and the Parquet files.

use std::path::{Path, PathBuf};

use crate::catalog::Catalog;
use crate::db::Layout;
use crate::error::{Error, IoContext, Result};
use crate::pseudonym::Key;
use crate::schema::Schemas;

pub struct Warehouse {
    pub layout: Layout,
    pub schemas: Schemas,
    pub catalog: Catalog,
}

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
        layout.create_dirs()?;
        match schemas_dir {
            Some(dir) => copy_schema_dir(dir, &layout.schemas())?,
            None => Schemas::write_bundled(&layout.schemas())?,
        }
        let key = Key::create_file(&key_file)?;
        let key_file = std::fs::canonicalize(&key_file).at(&key_file)?;
        let catalog = Catalog::open(&layout.database())?;
        catalog.set_meta("key_file", &key_file.to_string_lossy())?;
        catalog.set_meta("key_fingerprint", &key.fingerprint())?;
        catalog.set_meta("created_at", &crate::db::now_rfc3339())?;
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
        Ok(Warehouse { layout, schemas, catalog })
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
