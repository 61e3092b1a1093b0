//! One error type for the engine. Every variant carries what a user needs to act on it, and
//! nothing derived from stored data: messages are built from file names, schema names, policy
//! and SQL text only. Failures whose details could quote a value (a query that failed while
//! running, an internal error) carry an id that the logs and the audit log join on, and nothing
//! else.

use std::path::PathBuf;

pub use crate::dp::rule::Rule;

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

/// Why the ledger refused a debit. Depends only on the grant, the policy and what was spent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BudgetRefusal {
    #[error("project {project:?} is {status}, not active")]
    NotActive { project: String, status: String },
    #[error("budget exhausted: project {project:?} has ε {remaining:.6} left, the query asks for {asked}")]
    Epsilon { project: String, remaining: f64, asked: f64 },
    #[error("budget exhausted: project {project:?} has δ {remaining:e} left, the query asks for {asked:e}")]
    Delta { project: String, remaining: f64, asked: f64 },
    #[error("budget exhausted: zCDP project {project:?} has ρ {remaining:.6} left, the query asks for ρ {asked:.6}")]
    Rho { project: String, remaining: f64, asked: f64 },
    #[error(
        "warehouse per-patient cap reached: all projects together have spent ε {spent:.6} of the cap {cap}, the query asks for {asked}"
    )]
    PatientCap { spent: f64, cap: f64, asked: f64 },
    #[error(
        "warehouse per-patient δ cap reached: all projects together have spent δ {spent:e} of the cap {cap:e}, the query asks for {asked:e}"
    )]
    PatientDeltaCap { spent: f64, cap: f64, asked: f64 },
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(|p| format!("\n  {p}")).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SQL broke a rule: decided from the SQL, the schema and the policy before any data is
    /// read; nothing was spent.
    #[error("refused by rule `{rule}`: {detail}")]
    Refused { rule: Rule, detail: String },

    /// The ledger refused the debit; nothing was spent.
    #[error(transparent)]
    Budget(#[from] BudgetRefusal),

    /// A charged query failed while reading data. Deliberately generic: details could depend on
    /// data; the ledger entry joins the audit log and the server log.
    #[error("the query failed while running; its budget stays charged (ledger entry {entry})")]
    QueryFailed { entry: i64 },

    #[error("invalid schema ({} problem{}):{}", .0.len(), if .0.len() == 1 { "" } else { "s" }, list(.0))]
    Schema(Vec<SchemaProblem>),

    /// Rows of an input file that do not fit the table's policy.
    #[error("invalid input, {} problem{} in all: nothing was committed.{}{}", .shown.len() as u64 + .more, if .shown.len() as u64 + .more == 1 { "" } else { "s" }, list(.shown), if *.more > 0 { format!("\n  ... and {} more", .more) } else { String::new() })]
    InvalidInput { shown: Vec<RowProblem>, more: u64 },

    /// An input file that cannot be read as its format at all.
    #[error("{file}: {reason}; nothing was committed")]
    UnreadableInput { file: String, reason: String },

    #[error("key file {path}: {reason}")]
    Key { path: PathBuf, reason: String },

    /// The request's own arguments are wrong (a value out of range, a malformed name).
    #[error("{0}")]
    BadRequest(String),

    /// Something named in the request does not exist.
    #[error("no {what} {name}")]
    NotFound { what: &'static str, name: String },

    /// The request conflicts with the current state (approving a project twice, a duplicate
    /// ingest, a name that is taken).
    #[error("{0}")]
    Conflict(String),

    /// A service the warehouse depends on (its object store) did not answer; nothing was
    /// spent or committed.
    #[error("{0}")]
    Unavailable(String),

    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    /// A failure of the engine itself; its details are in the log under this id.
    #[error("internal error {id}; the log has the details")]
    Internal { id: String },

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

    pub fn refused(rule: Rule, detail: impl Into<String>) -> Self {
        Error::Refused { rule, detail: detail.into() }
    }

    pub fn not_found(what: &'static str, name: impl std::fmt::Display) -> Self {
        Error::NotFound { what, name: name.to_string() }
    }

    /// An internal failure: `detail` goes to the log under a new id, the error carries the id.
    /// `detail` must not hold data values (it never comes from reading patient rows).
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        let id = new_id();
        tracing::error!(id = %id, "internal error: {detail}");
        Error::Internal { id }
    }

    /// The refused rule, if this is a refusal.
    pub fn rule(&self) -> Option<Rule> {
        match self {
            Error::Refused { rule, .. } => Some(*rule),
            _ => None,
        }
    }
}

/// A short random id for joining an error with the log.
pub fn new_id() -> String {
    use rand::Rng;
    format!("{:012x}", rand::thread_rng().r#gen::<u64>() & 0xffff_ffff_ffff)
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
