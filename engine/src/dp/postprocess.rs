//! Post-processing of the noisy components: free, since it never looks at the data again
//! (Dwork & Roth, Proposition 2.1).
//!
//! - [`cells`]: one value and 95% interval per aggregate and group: counts clamped at 0,
//!   ratios for means, variances from their three sums, rounding, and suppression of counts
//!   under the steward's small-cell threshold.
//! - [`finish`]: the query's own post-processing (output expressions, HAVING, ORDER BY, LIMIT)
//!   evaluated by DataFusion over the table of noisy cells, then typed into the answer's batch.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{EmptyRelation, Expr, LogicalPlan, Projection, Values};

use super::analyze::{AggKind, Analysis, above_aggregate};
use super::answer::{Output, answer_schema, classify_outputs};
use super::mechanisms::ALPHA;
use super::release::Release;
use crate::error::{Error, Result};
use crate::governance::Policy;

/// One released cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// A value with its 95% interval (none for quantiles).
    Noisy(f64, Option<(f64, f64)>),
    /// A count under the small-cell threshold.
    Suppressed,
}

/// One cell per released key (rows) and aggregate (columns), from the noisy components.
pub fn cells(release: &Release, a: &Analysis, rows: usize, noisy: &HashMap<usize, Vec<f64>>, policy: &Policy) -> Result<Vec<Vec<Cell>>> {
    let round = |v: f64| {
        let f = 10f64.powi(policy.round_digits as i32);
        (v * f).round() / f
    };
    let mut out = vec![Vec::with_capacity(a.aggs.len()); rows];
    for (j, spec) in a.aggs.iter().enumerate() {
        let indices: Vec<usize> = (0..release.components.len()).filter(|i| release.components[*i].agg == Some(j)).collect();
        let comps = release.of(j);
        let (lo, hi) = spec.bounds.unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
        let mid = (lo + hi) / 2.0;
        for (r, row) in out.iter_mut().enumerate() {
            let get = |n: usize| -> Result<f64> {
                indices
                    .get(n)
                    .and_then(|i| noisy.get(i))
                    .and_then(|v| v.get(r))
                    .copied()
                    .ok_or_else(|| Error::internal("a noisy component is missing"))
            };
            let accuracy_at = |n: usize, alpha: f64| comps.get(n).map_or(0.0, |c| c.accuracy_at(alpha));
            let cell = match spec.kind {
                k if k.is_count() => {
                    let v = get(0)?;
                    let a = comps.first().map_or(0.0, |c| c.accuracy());
                    let shown = v.max(0.0);
                    if policy.suppression_threshold > 0 && shown < policy.suppression_threshold as f64 {
                        Cell::Suppressed
                    } else {
                        Cell::Noisy(shown, Some(((v - a).max(0.0), v + a)))
                    }
                }
                AggKind::Sum => {
                    let a = comps.first().map_or(0.0, |c| c.accuracy());
                    let v = get(0)?;
                    Cell::Noisy(round(v), Some((round(v - a), round(v + a))))
                }
                AggKind::Mean => {
                    let (s, n) = (get(0)?, get(1)?);
                    if n < 1.0 {
                        Cell::Noisy(round(mid), Some((lo, hi)))
                    } else {
                        let m = (mid + s / n).clamp(lo, hi);
                        // First-order error of S/n: (e_S − (S/n)·e_n) / n with independent
                        // Laplace errors. Their 95% half-widths combined in quadrature: exact
                        // when one term dominates, about 95.5% when both are equal (the sum of
                        // two Laplace variables has lighter tails than either).
                        let a_s = accuracy_at(0, ALPHA);
                        let a_n = accuracy_at(1, ALPHA);
                        let half = (a_s.powi(2) + ((s / n) * a_n).powi(2)).sqrt() / n;
                        Cell::Noisy(round(m), Some((round((m - half).max(lo)), round((m + half).min(hi)))))
                    }
                }
                AggKind::Variance { sample } | AggKind::Stddev { sample } => {
                    let (s, ss, n) = (get(0)?, get(1)?, get(2)?);
                    let r2 = ((hi - lo) / 2.0).powi(2);
                    let var = |s: f64, ss: f64, n: f64| -> f64 {
                        let d = if sample { n - 1.0 } else { n };
                        if n < 2.0 || d <= 0.0 { r2 } else { ((ss - s * s / n) / d).clamp(0.0, r2) }
                    };
                    // A conservative interval: each component within its 1 − α/3 interval
                    // (union bound), and the variance's range over that box.
                    let alpha = ALPHA / 3.0;
                    let (as_, ass, an) = (accuracy_at(0, alpha), accuracy_at(1, alpha), accuracy_at(2, alpha));
                    let mut lo_v = f64::INFINITY;
                    let mut hi_v = f64::NEG_INFINITY;
                    let s_points = [s - as_, s + as_, if (s - as_) * (s + as_) < 0.0 { 0.0 } else { s }];
                    for sv in s_points {
                        for ssv in [ss - ass, ss + ass] {
                            for nv in [n - an, n + an, n] {
                                let v = var(sv, ssv.max(0.0), nv);
                                lo_v = lo_v.min(v);
                                hi_v = hi_v.max(v);
                            }
                        }
                    }
                    let v = var(s, ss.max(0.0), n);
                    if matches!(spec.kind, AggKind::Stddev { .. }) {
                        Cell::Noisy(round(v.sqrt()), Some((round(lo_v.sqrt()), round(hi_v.sqrt()))))
                    } else {
                        Cell::Noisy(round(v), Some((round(lo_v), round(hi_v))))
                    }
                }
                AggKind::Quantile(_) => Cell::Noisy(round(get(0)?), None),
                // Counts took the first arm.
                AggKind::CountRows | AggKind::CountValues | AggKind::CountPatients => Cell::Suppressed,
            };
            row.push(cell);
        }
    }
    Ok(out)
}

const ROW: &str = "__row";

/// Evaluate the query's upper part (projection, HAVING, ORDER BY, LIMIT) over the noisy
/// aggregate table, carrying a hidden row index to attach each cell's interval, and type the
/// result into the answer's batch.
pub async fn finish(ctx: &SessionContext, a: &Analysis, keys: &[Vec<ScalarValue>], cells: &[Vec<Cell>]) -> Result<RecordBatch> {
    let agg = a.aggregate();
    let nkeys = a.keys.len();
    // The aggregate's schema, every field nullable (suppressed cells), plus the row index.
    let mut fields: Vec<(Option<datafusion::common::TableReference>, Arc<Field>)> =
        agg.schema.iter().map(|(q, f)| (q.cloned(), Arc::new(f.as_ref().clone().with_nullable(true)))).collect();
    fields.push((None, Arc::new(Field::new(ROW, DataType::Int64, false))));
    let schema = Arc::new(DFSchema::new_with_metadata(fields, HashMap::new())?);
    let mut values = Vec::with_capacity(keys.len());
    for (r, key) in keys.iter().enumerate() {
        let mut row: Vec<Expr> = key.iter().map(|k| Expr::Literal(k.clone(), None)).collect();
        for (j, spec) in a.aggs.iter().enumerate() {
            let ty = agg.schema.field(nkeys + j).data_type();
            let v = match cells.get(r).and_then(|c| c.get(j)) {
                Some(Cell::Noisy(v, _)) => {
                    let v = if ty.is_integer() || spec.kind.is_count() { v.round() } else { *v };
                    // A noisy value outside the output type's range shows as NULL.
                    ScalarValue::Float64(Some(v)).cast_to(ty).or_else(|_| ScalarValue::try_from(ty))?
                }
                _ => ScalarValue::try_from(ty)?,
            };
            row.push(Expr::Literal(v, None));
        }
        row.push(Expr::Literal(ScalarValue::Int64(Some(r as i64)), None));
        values.push(row);
    }
    let base = if values.is_empty() {
        LogicalPlan::EmptyRelation(EmptyRelation { produce_one_row: false, schema })
    } else {
        LogicalPlan::Values(Values { schema, values })
    };
    // Rebuild the nodes above the aggregate over the noisy table, bottom-up.
    let mut plan = base;
    for n in above_aggregate(&a.plan).into_iter().rev() {
        plan = match n {
            LogicalPlan::Projection(p) => {
                let mut exprs = p.expr.clone();
                exprs.push(Expr::Column(Column::from_name(ROW)));
                LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(plan))?)
            }
            other => other.with_new_exprs(other.expressions(), vec![plan])?,
        };
    }
    let batches = ctx.execute_logical_plan(plan).await?.collect().await?;
    typed(a, &batches, cells)
}

/// The evaluated upper part, typed into the answer's schema, with each aggregate's interval.
fn typed(a: &Analysis, batches: &[RecordBatch], cells: &[Vec<Cell>]) -> Result<RecordBatch> {
    let schema = answer_schema(a);
    let outputs = classify_outputs(a);
    let safe = CastOptions { safe: true, ..Default::default() };
    let mut parts = Vec::new();
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        let row_col = batch.num_columns() - 1;
        let rows = cast_with_options(batch.column(row_col), &DataType::Int64, &safe)?;
        let rows: Vec<Option<usize>> =
            rows.as_any().downcast_ref::<Int64Array>().map(|r| r.iter().map(|x| x.map(|x| x as usize)).collect()).unwrap_or_default();
        let mut columns: Vec<ArrayRef> = Vec::new();
        let mut f = 0;
        for (c, o) in outputs.iter().enumerate() {
            let ty = schema.field(f).data_type();
            columns.push(cast_with_options(batch.column(c), ty, &safe)?);
            f += 1;
            if let Output::Agg(j) = o {
                let interval = |k: usize| -> Float64Array {
                    rows.iter()
                        .map(|r| match r.and_then(|r| cells.get(r)).and_then(|c| c.get(*j)) {
                            Some(Cell::Noisy(_, Some((lo, hi)))) => Some(if k == 0 { *lo } else { *hi }),
                            _ => None,
                        })
                        .collect()
                };
                columns.push(Arc::new(interval(0)));
                columns.push(Arc::new(interval(1)));
                f += 2;
            }
        }
        parts.push(RecordBatch::try_new(schema.clone(), columns)?);
    }
    Ok(datafusion::arrow::compute::concat_batches(&schema, &parts)?)
}
