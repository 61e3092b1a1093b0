//! What each `secretum` command does, on plain arguments: [`crate::cli`] parses the command
//! line and calls these; they act on the data directory and print.

pub mod audit;
pub mod policy;
pub mod projects;
pub mod query;
pub mod users;
pub mod warehouse;

use secretum_engine::{Error, Result};

/// Who runs a local command, as the audit log names them.
pub fn local_actor() -> String {
    format!("local:{}", std::env::var("USER").unwrap_or_else(|_| "steward".into()))
}

/// A runtime for the engine's async work.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| Error::internal(format!("cannot start the runtime: {e}")))
}
