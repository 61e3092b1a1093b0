//! The bounded plan: the query's source rewritten so that one patient's contribution is
//! bounded on the data itself, never trusted.
//!
//! - Joins: each table is first truncated to its own `max_rows_per_unit` rows per patient
//!   (uniformly at random: `ROW_NUMBER() OVER (PARTITION BY unit ORDER BY random())`), so a
//!   patient with a million rows cannot blow the join up.
//! - After WHERE and the join, the rows of each patient are truncated again, uniformly at
//!   random with fresh randomness per query, to the query's bound K. Every release then sees
//!   at most K rows per patient, which is what each sensitivity below assumes.
//! - Aggregated values are clamped to their public bounds before anything sums them.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, ScalarValue};
use datafusion::functions::math::expr_fn::random;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprFunctionExt, JoinType, LogicalPlan, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDFImpl, Signature,
    Volatility, lit,
};

use super::analyze::Analysis;
use crate::schema::Schemas;

pub const PID: &str = "__pid";
const RN: &str = "__rn";

pub fn key_col(i: usize) -> String {
    format!("__k{i}")
}
pub fn value_col(i: usize) -> String {
    format!("__v{i}")
}

fn column(name: &str) -> Expr {
    Expr::Column(Column::from_name(name))
}

/// Keep at most `k` rows per value of `unit`, chosen uniformly at random: a random row number
/// within each patient's rows, kept up to `k`. This sorts its whole input.
fn truncate_all(plan: LogicalPlan, unit: Expr, k: u32) -> datafusion::error::Result<LogicalPlan> {
    let columns: Vec<Expr> = plan.schema().columns().into_iter().map(Expr::Column).collect();
    let rn = row_number().partition_by(vec![unit]).order_by(vec![random().sort(true, true)]).build()?.alias(RN);
    LogicalPlanBuilder::from(plan).window(vec![rn])?.filter(column(RN).lt_eq(lit(k as i64)))?.project(columns)?.build()
}

/// The same result as [`truncate_all`], without sorting everything: patients with at most `k`
/// rows keep them all (a random choice of `k` rows out of at most `k` is all of them), found
/// by a hash aggregate and an anti-join; only the rows of patients over the bound go through
/// the random row number. The output depends on each patient's own rows only.
fn truncate(plan: LogicalPlan, unit: Column, k: u32) -> datafusion::error::Result<LogicalPlan> {
    const OVER: &str = "__over";
    let over = LogicalPlanBuilder::from(plan.clone())
        .aggregate(vec![Expr::Column(unit.clone()).alias(OVER)], vec![count(lit(1i64)).alias("__n")])?
        .filter(column("__n").gt(lit(k as i64)))?
        .project(vec![column(OVER)])?
        .build()?;
    let keys = (vec![unit.clone()], vec![Column::from_name(OVER)]);
    let within = LogicalPlanBuilder::from(plan.clone()).join(over.clone(), JoinType::LeftAnti, keys.clone(), None)?.build()?;
    let beyond = LogicalPlanBuilder::from(plan).join(over, JoinType::LeftSemi, keys, None)?.build()?;
    let relation = unit.relation.clone();
    let union = LogicalPlanBuilder::from(within).union(truncate_all(beyond, Expr::Column(unit), k)?)?;
    // A union drops qualifiers: give the table its name back for the expressions above.
    match relation {
        Some(r) => union.alias(r)?.build(),
        None => union.build(),
    }
}

/// `e` as a double clamped into `[lo, hi]`; NULL and NaN become NULL (a NaN would pass any
/// comparison-based clamp and poison a sum).
pub fn clamp(e: Expr, (lo, hi): (f64, f64)) -> Expr {
    Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
        Arc::new(datafusion::logical_expr::ScalarUDF::new_from_impl(Clamp::new(lo, hi))),
        vec![e],
    ))
}

/// The fixed-point integer of a clamped value: `round((x − centre) / unit)` (or of
/// `(x − centre)²` when `square`), clamped to `[−STEPS, STEPS]`. Sums of these are exact
/// (integer addition is associative), unlike float sums whose rounding depends on the order.
pub fn fixed_point(e: Expr, centre: f64, unit: f64, square: bool) -> Expr {
    Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
        Arc::new(datafusion::logical_expr::ScalarUDF::new_from_impl(FixedPoint::new(centre, unit, square))),
        vec![e],
    ))
}

/// Steps of the fixed-point grid between 0 and the largest magnitude a value may have.
pub const STEPS: i64 = 1 << 20;

/// The grid's unit for values of magnitude at most `m`: `m / STEPS` (1 when every value is 0).
/// The rounding error of one value, at most unit/2 = m·2⁻²¹, is far under any noise scale.
pub fn fixed_point_unit(m: f64) -> f64 {
    if m > 0.0 { m / STEPS as f64 } else { 1.0 }
}

/// One value on the grid: `round((x − centre) / unit)` (of its square when `square`), clamped to
/// `[−STEPS, STEPS]` whatever the float rounding, so the bound the sensitivity assumes is exact.
/// NULL and non-finite values are NULL.
pub fn fixed_point_value(x: Option<f64>, centre: f64, unit: f64, square: bool) -> Option<i64> {
    let d = x.filter(|x| x.is_finite())? - centre;
    let v = if square { d * d } else { d };
    // `as` saturates on overflow; the clamp bounds the result exactly.
    Some(((v / unit).round() as i64).clamp(-STEPS, STEPS))
}

/// The clamp kernel: never fails (a value that is not a number is NULL).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Clamp {
    lo: u64,
    hi: u64,
    signature: Signature,
}

impl Clamp {
    fn new(lo: f64, hi: f64) -> Clamp {
        Clamp { lo: lo.to_bits(), hi: hi.to_bits(), signature: Signature::any(1, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for Clamp {
    fn name(&self) -> &str {
        "clamp"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Float64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        let (lo, hi) = (f64::from_bits(self.lo), f64::from_bits(self.hi));
        // max/min rather than f64::clamp, which panics on inverted bounds.
        Ok(map_f64(&args, |x| x.filter(|x| !x.is_nan()).map(|x| x.max(lo).min(hi)), |v: Vec<Option<f64>>| Float64Array::from(v)))
    }
}

/// The fixed-point kernel (see [`fixed_point`]).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct FixedPoint {
    centre: u64,
    unit: u64,
    square: bool,
    signature: Signature,
}

impl FixedPoint {
    fn new(centre: f64, unit: f64, square: bool) -> FixedPoint {
        FixedPoint { centre: centre.to_bits(), unit: unit.to_bits(), square, signature: Signature::any(1, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for FixedPoint {
    fn name(&self) -> &str {
        "fixed_point"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Int64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        let (c, u, square) = (f64::from_bits(self.centre), f64::from_bits(self.unit), self.square);
        Ok(map_f64(&args, |x| fixed_point_value(x, c, u, square), |v: Vec<Option<i64>>| Int64Array::from(v)))
    }
}

/// Apply `f` to every value of the single argument read as f64 (a value that does not convert
/// is NULL). Never fails.
fn map_f64<T, A: Array + 'static>(
    args: &ScalarFunctionArgs,
    f: impl Fn(Option<f64>) -> Option<T>,
    build: impl Fn(Vec<Option<T>>) -> A,
) -> ColumnarValue {
    let (n, scalar) = match &args.args[0] {
        ColumnarValue::Scalar(_) => (1, true),
        ColumnarValue::Array(a) => (a.len(), false),
    };
    let values: Vec<Option<f64>> = args.args[0]
        .to_array(n)
        .ok()
        .and_then(|a| cast_with_options(&a, &DataType::Float64, &CastOptions { safe: true, ..Default::default() }).ok())
        .map(|a| a.as_primitive::<datafusion::arrow::datatypes::Float64Type>().iter().collect())
        .unwrap_or_else(|| vec![None; n]);
    let out: ArrayRef = Arc::new(build(values.into_iter().map(f).collect()));
    if scalar {
        match ScalarValue::try_from_array(&out, 0) {
            Ok(v) => ColumnarValue::Scalar(v),
            Err(_) => ColumnarValue::Array(out),
        }
    } else {
        ColumnarValue::Array(out)
    }
}

/// The bounded relation: one row per retained source row, with columns `__pid`, `__k{i}` for
/// each group key and `__v{j}` for each aggregate's clamped value. At most `bound` rows per patient.
pub fn bounded_relation(analysis: &Analysis, schemas: &Schemas, bound: u32) -> datafusion::error::Result<LogicalPlan> {
    let agg = analysis.aggregate();
    let mut source = agg.input.as_ref().clone();
    // Rows per patient after the join, with every table truncated to its own bound first.
    let mut product: u64 = 1;
    if analysis.tables.len() > 1 {
        source = source
            .transform_up(|node| match &node {
                LogicalPlan::TableScan(scan) => {
                    let table = scan.table_name.table();
                    let policy = schemas
                        .tables
                        .get(table)
                        .ok_or_else(|| datafusion::error::DataFusionError::Plan(format!("table {table} has no policy")))?;
                    let unit = Column::new(Some(scan.table_name.clone()), policy.privacy_unit().name.clone());
                    product = product.saturating_mul(policy.max_rows_per_unit as u64);
                    Ok(Transformed::yes(truncate(node.clone(), unit, policy.max_rows_per_unit)?))
                }
                _ => Ok(Transformed::no(node)),
            })?
            .data;
    } else {
        product = u64::MAX;
    }
    let mut exprs = vec![Expr::Column(analysis.unit.clone()).alias(PID)];
    for (i, k) in analysis.keys.iter().enumerate() {
        exprs.push(k.expr.clone().alias(key_col(i)));
    }
    for (j, a) in analysis.aggs.iter().enumerate() {
        if let Some(v) = &a.value {
            let e = match a.bounds {
                Some(b) => clamp(v.clone(), b),
                None => v.clone(),
            };
            exprs.push(e.alias(value_col(j)));
        }
    }
    let projected = LogicalPlanBuilder::from(source).project(exprs)?.build()?;
    if product <= bound as u64 {
        // The join of tables truncated to k₁, k₂, ... rows per patient has at most k₁·k₂·...
        // rows per patient (e.g. person (1) ⋈ measurement (20) ≤ 20): already within the bound.
        return Ok(projected);
    }
    truncate(projected, Column::from_name(PID), bound)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use datafusion::arrow::array::RecordBatch;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::catalog::MemTable;
    use datafusion::execution::context::SessionContext;

    async fn run(plan: LogicalPlan, ctx: &SessionContext) -> Vec<(i64, i64)> {
        let batches = ctx.execute_logical_plan(plan).await.unwrap().collect().await.unwrap();
        let mut rows = Vec::new();
        for b in batches {
            let pid = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            let v = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
            rows.extend((0..b.num_rows()).map(|i| (pid.value(i), v.value(i))));
        }
        rows.sort();
        rows
    }

    #[tokio::test]
    async fn truncation_keeps_light_patients_whole_and_samples_heavy_ones() {
        // Patient 1 has 3 rows, patient 2 has 50, patient 3 has exactly 5; the bound is 5.
        let mut pid = Vec::new();
        let mut v = Vec::new();
        for (p, n) in [(1i64, 3i64), (2, 50), (3, 5)] {
            for i in 0..n {
                pid.push(p);
                v.push(p * 1000 + i);
            }
        }
        let schema = Arc::new(Schema::new(vec![Field::new("pid", DataType::Int64, false), Field::new("v", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(pid)), Arc::new(Int64Array::from(v))]).unwrap();
        let ctx = SessionContext::new();
        ctx.register_table("t", Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap())).unwrap();
        let scan = ctx.table("t").await.unwrap().into_unoptimized_plan();
        let unit = Column::new(Some(datafusion::common::TableReference::bare("t")), "pid");
        let mut samples = Vec::new();
        for _ in 0..5 {
            let rows = run(truncate(scan.clone(), unit.clone(), 5).unwrap(), &ctx).await;
            let count = |p: i64| rows.iter().filter(|(q, _)| *q == p).count();
            assert_eq!((count(1), count(2), count(3)), (3, 5, 5), "{rows:?}");
            // Light patients keep exactly their own rows; heavy ones keep distinct rows of theirs.
            assert!(rows.iter().all(|(p, v)| v / 1000 == *p));
            let mut heavy: Vec<i64> = rows.iter().filter(|(p, _)| *p == 2).map(|(_, v)| *v).collect();
            heavy.dedup();
            assert_eq!(heavy.len(), 5);
            samples.push(heavy);
        }
        // Fresh randomness per run: five draws of 5 rows out of 50 are not all the same.
        assert!(samples.windows(2).any(|w| w[0] != w[1]), "the heavy patient's rows were not resampled: {samples:?}");
        // The fast path and the full random row number agree on how many rows each patient keeps.
        let full = run(truncate_all(scan, Expr::Column(unit), 5).unwrap(), &ctx).await;
        assert_eq!(full.len(), 13);
    }
}
