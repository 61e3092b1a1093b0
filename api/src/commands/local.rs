//! What a local command needs: who runs it (as the audit log names them), and a runtime for the
//! engine's async work.

use secretum_engine::{Error, Result};

/// Who runs a local command, as the audit log names them.
pub fn local_actor() -> String {
    format!("local:{}", std::env::var("USER").unwrap_or_else(|_| "steward".into()))
}

/// A runtime for the engine's async work.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| Error::internal(format!("cannot start the runtime: {e}")))
}
