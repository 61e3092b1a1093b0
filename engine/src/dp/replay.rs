//! The replay key: what makes two queries the same question.
//!
//! Two requests get the same key only if their answers would be drawn from the same
//! distribution over the same data, so that returning the first release for the second is pure
//! post-processing (no privacy cost) and never a different answer than the second would have
//! had in distribution. The key hashes:
//!
//! - the researcher's statement as DataFusion planned it (identifiers case-folded, literals
//!   typed, whitespace gone), with the conjuncts of every filter sorted (AND commutes) and the
//!   output names of the top projection removed (a replay is relabelled with the new names);
//! - the analysis' summary (every bound, sensitivity, group source) and the answer's column
//!   types;
//! - ε and δ to the bit, the noise path, the project, the small-cell threshold;
//! - the data version: every committed file, so any ingest or vocabulary load makes a new
//!   release.
//!
//! Anything else that differs (another literal, another table alias, another column order)
//! gives another key: a missed replay costs budget, a wrong one would be a wrong answer.

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::logical_expr::utils::{conjunction, split_conjunction_owned};
use datafusion::logical_expr::{Filter, LogicalPlan, Projection};
use sha2::{Digest, Sha256};

use crate::error::Result;

/// The statement's plan in a form where trivial rewrites coincide.
pub fn normalized_plan(plan: &LogicalPlan) -> Result<String> {
    let plan = plan
        .clone()
        .transform_up(|node| match node {
            LogicalPlan::Filter(f) => {
                let mut parts = split_conjunction_owned(f.predicate.clone());
                parts.sort_by_cached_key(|e| e.to_string());
                match conjunction(parts) {
                    Some(predicate) => Ok(Transformed::yes(LogicalPlan::Filter(Filter::try_new(predicate, f.input)?))),
                    None => Ok(Transformed::no(LogicalPlan::Filter(f))),
                }
            }
            other => Ok(Transformed::no(other)),
        })?
        .data;
    let plan = match plan {
        LogicalPlan::Projection(p) => {
            // Every level of alias (`COUNT(*) AS n` is `count(Int64(1)) AS count(*) AS n`).
            let exprs = p
                .expr
                .into_iter()
                .map(|mut e| {
                    while let datafusion::logical_expr::Expr::Alias(a) = e {
                        e = *a.expr;
                    }
                    e
                })
                .collect();
            LogicalPlan::Projection(Projection::try_new(exprs, p.input)?)
        }
        other => other,
    };
    Ok(plan.display_indent().to_string())
}

/// Everything the key is made of, in order.
pub struct KeyParts<'a> {
    pub plan: &'a str,
    pub summary: &'a str,
    pub column_types: &'a str,
    pub epsilon: f64,
    pub delta: f64,
    pub noise: &'a str,
    pub project: &'a str,
    pub suppression_threshold: u32,
    pub data_version: &'a str,
}

pub fn key(p: &KeyParts<'_>) -> String {
    let mut h = Sha256::new();
    for part in [p.plan, p.summary, p.column_types, p.noise, p.project, p.data_version] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.update(p.epsilon.to_bits().to_le_bytes());
    h.update(p.delta.to_bits().to_le_bytes());
    h.update(p.suppression_threshold.to_le_bytes());
    hex::encode(h.finalize())
}
