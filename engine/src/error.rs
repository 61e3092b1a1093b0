//! One error type for the engine. Every variant carries what a user needs to act on it, and
//! nothing derived from stored data: messages are built from file names, schema names, policy
//! and SQL text only.

use std::path::PathBuf;

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A problem found while loading a schema: where it is, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaProblem {
    pub file: String,
    pub table: Option<String>,
    pub column: Option<String>,
    pub problem: String,
}

impl std::fmt::Display for SchemaProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(t) = &self.table {
            write!(f, ": table {t}")?;
        }
        if let Some(c) = &self.column {
            write!(f, ": column {c}")?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// One invalid input row: `file:line: column: reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowProblem {
    pub file: String,
    /// 1-based line (CSV, NDJSON) or row (Parquet) of the input.
    pub line: u64,
    pub column: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for RowProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: ", self.file, self.line)?;
        if let Some(c) = &self.column {
            write!(f, "{c}: ")?;
        }
        write!(f, "{}", self.reason)
    }
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(|p| format!("\n  {p}")).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid schema ({} problem{}):{}", .0.len(), if .0.len() == 1 { "" } else { "s" }, list(.0))]
    Schema(Vec<SchemaProblem>),

    #[error("invalid input: nothing was committed.{}{}", list(.shown), if *.more > 0 { format!("\n  ... and {} more invalid rows", .more) } else { String::new() })]
    InvalidInput { shown: Vec<RowProblem>, more: u64 },

    #[error("key file {path}: {reason}")]
    Key { path: PathBuf, reason: String },

    #[error("{0}")]
    Usage(String),

    /// The request conflicts with the current state (e.g. approving a project twice).
    #[error("{0}")]
    Conflict(String),

    /// Something named in the request does not exist.
    #[error("not found: {0}")]
    NotFound(String),

    #[error("unknown table `{0}`")]
    UnknownTable(String),

    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("catalog: {0}")]
    Catalog(#[from] rusqlite::Error),

    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),

    #[error("query engine: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// Attach a path to an I/O result.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
