//! An answer: one Arrow record batch typed from the query's plan, and the release report beside
//! it.
//!
//! The batch's schema depends on the SQL and the schema only, never on the values: each group
//! key in its planned type; each aggregate as its value (planned type) and two `Float64`
//! columns `<name>_ci95_lo` and `<name>_ci95_hi`; each expression over aggregates in its planned
//! type. Every column is nullable: a suppressed cell is NULL, and so are its interval bounds.
//! Each field's metadata says what it is (`secretum.kind`: key, aggregate, ci95_lo, ci95_hi,
//! derived; `secretum.aggregate`: which aggregate). JSON, CSV and Arrow IPC are renderings of
//! this batch (in the API).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, new_null_array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::Column;
use datafusion::logical_expr::{Expr, LogicalPlan};
use serde::{Deserialize, Serialize};

use super::analyze::{Analysis, above_aggregate};
use crate::error::Result;

/// Field metadata: what a column of an answer is.
pub const KIND: &str = "secretum.kind";
/// Field metadata: the index of the aggregate a column belongs to.
pub const AGGREGATE: &str = "secretum.aggregate";

/// One released (or dry-run) answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub batch: RecordBatch,
    pub report: Report,
}

/// How an answer was released, and what it cost.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Report {
    pub epsilon_spent: f64,
    pub delta_spent: f64,
    pub budget_remaining: Budget,
    pub dry_run: bool,
    /// How each aggregate was released: mechanism, sensitivity, share of the budget.
    pub aggregates: Vec<AggregateReport>,
    /// Where the released groups come from.
    pub groups: String,
    /// How the bounds of per-patient relations' columns were derived, one line each
    /// (`f.index_date: in [2000-01-01, 2025-12-31] (min of condition_occurrence.condition_start_date)`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub derived_bounds: Vec<String>,
    /// The rows per patient each table was truncated to (its `max_rows_per_unit`; 1 for a
    /// per-patient relation), before the joins; the query's own bound applies after them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rows_per_patient_by_table: std::collections::BTreeMap<String, u32>,
    /// Counts whose noisy value is under this are suppressed (NULL), by the steward's policy;
    /// 0 when nothing is suppressed.
    #[serde(default)]
    pub suppression_threshold: u32,
    /// Remarks for the researcher (e.g. an accuracy target that needs more than the cap).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The ledger entry that charged this answer (none for a dry run).
    pub query_id: Option<i64>,
    /// Where the bounded plans ran (for a dry run, where they would run): `this node`, or
    /// `cluster df://host:port` for a service started with `--cluster`.
    #[serde(default)]
    pub executed_on: String,
    /// For `target_ci`: the ε that gives the asked accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon_needed: Option<f64>,
    /// Set when this answer is the stored release of the same question asked before (that
    /// query's id): returned again, nothing spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<i64>,
    /// In a zCDP project: the ρ spent, and the project's spend in both currencies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zcdp: Option<ZcdpSpend>,
}

/// A zCDP project's spend: ρ, and the (ε, δ) it implies for the whole project so far.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ZcdpSpend {
    /// The ρ this query spent (or would spend, for a dry run).
    pub rho: f64,
    pub project_rho_spent: f64,
    pub project_rho_granted: f64,
    /// The ε the project's ρ so far implies at its δ (OpenDP's zCDP → (ε, δ) conversion).
    pub project_epsilon_implied: f64,
    pub project_delta: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Budget {
    pub epsilon: f64,
    pub delta: f64,
}

/// How one aggregate is released (reported with every answer).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AggregateReport {
    pub name: String,
    pub kind: String,
    pub mechanism: String,
    pub epsilon: f64,
    /// Per component: (what, L1 sensitivity or symmetric distance).
    #[schema(value_type = Vec<Vec<Object>>)]
    pub sensitivity: Vec<(String, f64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounds: Option<[f64; 2]>,
    pub rows_per_patient: u32,
    /// Expected 95% half-width (counts and sums; others depend on the group's size).
    pub ci95_half_width: Option<f64>,
}

/// What an output column of the query shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Output {
    /// A group key.
    Key,
    /// Aggregate `j`, with its interval.
    Agg(usize),
    /// An expression of aggregates (noisy, without an interval).
    Derived,
}

/// What each output column of the query shows.
pub fn classify_outputs(a: &Analysis) -> Vec<Output> {
    let agg = a.aggregate();
    let nkeys = a.keys.len();
    let projection = above_aggregate(&a.plan).into_iter().find_map(|n| match n {
        LogicalPlan::Projection(p) => Some(p),
        _ => None,
    });
    let by_column = |c: &Column| -> Output {
        for (i, (q, f)) in agg.schema.iter().enumerate() {
            if f.name() == &c.name && (c.relation.is_none() || c.relation.as_ref() == q) {
                return if i < nkeys { Output::Key } else { Output::Agg(i - nkeys) };
            }
        }
        Output::Derived
    };
    match projection {
        Some(p) => p
            .expr
            .iter()
            .map(|e| {
                let mut e = e;
                while let Expr::Alias(a) = e {
                    e = &a.expr;
                }
                match e {
                    Expr::Column(c) => by_column(c),
                    other if other.column_refs().iter().all(|c| by_column(c) == Output::Key) => Output::Key,
                    _ => Output::Derived,
                }
            })
            .collect(),
        None => (0..agg.schema.fields().len()).map(|i| if i < nkeys { Output::Key } else { Output::Agg(i - nkeys) }).collect(),
    }
}

fn tagged(name: &str, ty: DataType, kind: &str, agg: Option<usize>) -> Field {
    let mut meta = HashMap::from([(KIND.to_owned(), kind.to_owned())]);
    if let Some(j) = agg {
        meta.insert(AGGREGATE.to_owned(), j.to_string());
    }
    Field::new(name, ty, true).with_metadata(meta)
}

/// The answer's schema, from the plan alone.
pub fn answer_schema(a: &Analysis) -> SchemaRef {
    let outputs = classify_outputs(a);
    let mut fields = Vec::new();
    for (f, o) in a.plan.schema().fields().iter().zip(&outputs) {
        match o {
            Output::Key => fields.push(tagged(f.name(), f.data_type().clone(), "key", None)),
            Output::Derived => fields.push(tagged(f.name(), f.data_type().clone(), "derived", None)),
            Output::Agg(j) => {
                fields.push(tagged(f.name(), f.data_type().clone(), "aggregate", Some(*j)));
                fields.push(tagged(&format!("{}_ci95_lo", f.name()), DataType::Float64, "ci95_lo", Some(*j)));
                fields.push(tagged(&format!("{}_ci95_hi", f.name()), DataType::Float64, "ci95_hi", Some(*j)));
            }
        }
    }
    Arc::new(Schema::new(fields))
}

/// A batch of `rows` all-NULL rows of the answer's schema (a dry run shows the shape only).
pub fn empty_rows(schema: &SchemaRef, rows: usize) -> Result<RecordBatch> {
    let columns = schema.fields().iter().map(|f| new_null_array(f.data_type(), rows)).collect();
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

impl Answer {
    /// SHA-256 of the released table (its Arrow IPC encoding, schema included), as the audit log
    /// records it.
    pub fn digest(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        Ok(hex::encode(Sha256::digest(self.ipc()?)))
    }

    /// The answer's batch as an Arrow IPC stream (what is stored, and what the digest is of).
    pub fn ipc(&self) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        {
            let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &self.batch.schema())?;
            w.write(&self.batch)?;
            w.finish()?;
        }
        Ok(bytes)
    }

    /// A stored answer back from its IPC stream and report.
    pub fn from_stored(ipc: &[u8], report: &str) -> Result<Answer> {
        let mut reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None)?;
        let batch = match reader.next() {
            Some(b) => b?,
            None => return Err(crate::error::Error::internal("a stored release without its batch")),
        };
        let report: Report = serde_json::from_str(report).map_err(|e| crate::error::Error::internal(format!("a stored report: {e}")))?;
        Ok(Answer { batch, report })
    }
}
