//! secretum's engine: everything that touches data or privacy.
//!
//! - [`schema`]: privacy-annotated table definitions.
//! - [`ingest`]: validate, pseudonymize, generalize, write Parquet, commit.
//! - [`catalog`]: which files make up each table (embedded SQLite).
//! - [`synth`]: deterministic synthetic raw extracts for demos, tests and benches.

pub mod accounts;
pub mod audit;
pub mod budget;
pub mod catalog;
pub mod dp;
pub mod error;
pub mod ingest;
pub mod projects;
pub mod pseudonym;
pub mod schema;
pub mod synth;
pub mod warehouse;

pub use error::{Error, Result};
pub use warehouse::Warehouse;
