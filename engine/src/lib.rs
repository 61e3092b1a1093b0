//! secretum's engine: everything that touches data or privacy.
//!
//! From the ground up:
//! - [`db`]: the warehouse's directory layout, its SQLite database and migrations, the clock.
//! - [`error`]: the one error type.
//! - [`audit`]: the append-only, hash-chained log.
//! - [`schema`]: privacy-annotated table definitions.
//! - [`pseudonym`]: keyed pseudonyms.
//! - [`catalog`]: which Parquet files make up each table.
//! - [`governance`]: policy, projects and their lifecycle, accounts.
//! - [`budget`]: the ledger: debit before read, settle after, per-patient caps.
//! - [`ingest`]: validate, pseudonymize, generalize, write Parquet, commit.
//! - [`dp`]: differentially-private answers to researcher SQL.
//! - [`synth`]: deterministic synthetic raw extracts for demos, tests and benches.
//! - [`warehouse`]: one data directory: layout, schemas, catalog.
//! - [`store`]: where the Parquet files are (the data directory or an object store).
//! - [`cluster`]: execution of the bounded plans on a Ballista cluster.

pub mod audit;
pub mod budget;
pub mod catalog;
pub mod cluster;
pub mod db;
pub mod dp;
pub mod error;
pub mod governance;
pub mod ingest;
pub mod omop;
pub mod pseudonym;
pub mod schema;
pub mod signing;
pub mod store;
pub mod synth;
pub mod vocabulary;
pub mod warehouse;

pub use error::{Error, Result};
pub use warehouse::Warehouse;
