//! The release plan: which OpenDP mechanism releases each aggregate, with which sensitivity
//! and which share of the query's ε; then execution and post-processing.
//!
//! Notation: K is the number of rows one patient may contribute after bounding
//! ([`super::rewrite::bounded_relation`]); for a grouped query K is also capped by the
//! groups-per-patient bound, since K rows fall in at most K groups. Values are clamped into
//! public bounds [lo, hi]; mid = (lo + hi) / 2 and r = (hi − lo) / 2.
//!
//! Neighbouring datasets differ by one patient (add or remove all of their rows). For a vector
//! of per-group cells, adding a patient changes the cells by at most the L1 sensitivities
//! below, and the Laplace mechanism with scale Δ₁/ε on every cell is ε-DP for the whole vector
//! (Dwork & Roth, Theorem 3.6): that is why empty groups are released too (zero-filled) and the
//! per-group releases cost no more than one. Several aggregates split ε equally (sequential
//! composition); post-processing is free (Proposition 2.1).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::execution::context::SessionContext;
use datafusion::functions_aggregate::expr_fn::{count, count_distinct, sum};
use datafusion::logical_expr::{EmptyRelation, Expr, LogicalPlan, LogicalPlanBuilder, Projection, Values, lit};
use serde::Serialize;

use super::analyze::{AggKind, Analysis, Refusal, refuse};
use super::mechanisms::{self, Noise};
use super::rewrite::{self, PID, key_col, value_col};
use super::{Answer, Budget, Prepared, QueryError, as_f64, as_i64, collect, scalar_json};
use crate::schema::Schemas;
use datafusion::physical_plan::ExecutionPlan;

/// What one component computes exactly, before noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    /// A count (rows, values or patients): discrete Laplace.
    Count,
    /// A sum of clamped (possibly centred, possibly squared) values: Laplace.
    Sum,
    /// A quantile: exponential mechanism.
    Quantile,
    /// Distinct patients per key, for DP partition selection: noise + threshold.
    Selection,
}

#[derive(Debug, Clone)]
struct Component {
    agg: Option<usize>,
    what: What,
    label: &'static str,
    /// The exact aggregate over the bounded relation (none for quantiles): a BIGINT, a count or
    /// a sum of fixed-point integers.
    expr: Option<Expr>,
    /// L1 sensitivity in the released unit (rows, patients, or the column's unit).
    sensitivity: f64,
    /// The value of one step of the exact integer: 1 for counts, the fixed-point unit for sums.
    unit: f64,
    /// L1 sensitivity of the exact integer: `sensitivity / unit`, exactly.
    steps: i64,
    epsilon: f64,
    /// Noise scale in steps of `unit`.
    scale_steps: f64,
    /// Noise scale in the released unit.
    scale: f64,
}

impl Component {
    /// Half-width of the 95% interval of this component's noise, in the released unit.
    fn accuracy(&self) -> f64 {
        mechanisms::count_accuracy(self.scale_steps) * self.unit
    }
}

/// A sum of values of magnitude at most `m` after clamping and centring, K values per patient,
/// computed exactly as a sum of fixed-point integers on a grid of `STEPS` steps per `m`: each
/// integer is in [−STEPS, STEPS], so one patient moves the integer sum by at most K·STEPS steps,
/// which is K·m in the column's unit (no rounding enters the sum: integer addition is exact and
/// order-free; it cannot overflow under 2^43 rows since |sum| ≤ rows·2^20 < 2^63).
fn fixed_point_unit(m: f64) -> f64 {
    if m > 0.0 { m / rewrite::STEPS as f64 } else { 1.0 }
}

/// How one aggregate is released (reported with every answer).
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AggregateReport {
    pub name: String,
    pub kind: String,
    pub mechanism: String,
    pub epsilon: f64,
    /// Per component: (what, L1 sensitivity or symmetric distance).
    #[schema(value_type = Vec<Vec<Object>>)]
    pub sensitivity: Vec<(String, f64)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bounds: Option<[f64; 2]>,
    pub rows_per_patient: u32,
    /// Expected 95% half-width (counts and sums; others depend on the group's size).
    pub ci95_half_width: Option<f64>,
}

/// The release plan of one query.
pub struct Release {
    components: Vec<Component>,
    /// K: rows per patient after bounding.
    bound: u32,
    /// Public keys, or `None` for partition selection.
    keys: Option<Vec<Vec<ScalarValue>>>,
    epsilon: f64,
}

impl Release {
    pub fn plan(ctx: &SessionContext, a: &Analysis, epsilon: f64) -> Result<Release, Refusal> {
        let grouped = !a.keys.is_empty();
        let bound = if grouped { a.rows_per_unit.min(a.groups_per_unit) } else { a.rows_per_unit };
        let k = bound as f64;
        let keys = if a.public_groups() { Some(rewrite::public_keys(ctx, a)?) } else { None };
        let mut components = Vec::new();
        // A count: Δ in rows or patients, one step per unit.
        let count_component = |agg, label, expr: Expr, sensitivity: f64| Component {
            agg,
            what: What::Count,
            label,
            expr: Some(expr),
            sensitivity,
            unit: 1.0,
            steps: sensitivity.round() as i64,
            epsilon: 0.0,
            scale_steps: 0.0,
            scale: 0.0,
        };
        // A fixed-point sum of K values of magnitude at most m (see `fixed_point_unit`).
        let sum_component = |agg, label, v: Expr, centre: f64, m: f64, square: bool| {
            let unit = fixed_point_unit(m);
            Component {
                agg,
                what: What::Sum,
                label,
                expr: Some(sum(rewrite::fixed_point(v, centre, unit, square))),
                sensitivity: k * m,
                unit,
                steps: bound as i64 * rewrite::STEPS,
                epsilon: 0.0,
                scale_steps: 0.0,
                scale: 0.0,
            }
        };
        for (j, spec) in a.aggs.iter().enumerate() {
            let v = || Expr::Column(Column::from_name(value_col(j)));
            let (lo, hi) = spec.bounds.unwrap_or((0.0, 0.0));
            let (mid, r) = ((lo + hi) / 2.0, (hi - lo) / 2.0);
            match spec.kind {
                // Each retained row adds 1 to one cell: Δ₁ = K.
                AggKind::CountRows => components.push(count_component(Some(j), "count", count(lit(1i64)), k)),
                AggKind::CountValues => components.push(count_component(Some(j), "count", count(v()), k)),
                // A patient is counted once per group they have a retained row in: at most one
                // group ungrouped, at most min(K, #groups) grouped.
                AggKind::CountPatients => {
                    let per_unit = a.keys_per_unit as f64;
                    let groups = if grouped { keys.as_ref().map_or(per_unit, |ks| per_unit.min(ks.len().max(1) as f64)) } else { 1.0 };
                    components.push(count_component(Some(j), "patients", count_distinct(Expr::Column(Column::from_name(PID))), groups))
                }
                // K clamped values, each of magnitude at most max(|lo|, |hi|).
                AggKind::Sum => components.push(sum_component(Some(j), "sum", v(), 0.0, lo.abs().max(hi.abs()), false)),
                // Mean = mid + Σ(x − mid) / n: the centred sum has Δ₁ = K·r, the count Δ₁ = K.
                AggKind::Mean => {
                    components.push(sum_component(Some(j), "centred_sum", v(), mid, r, false));
                    components.push(count_component(Some(j), "count", count(v()), k));
                }
                // Variance from the centred sum (K·r), sum of squares (K·r²) and count (K).
                AggKind::Variance { .. } | AggKind::Stddev { .. } => {
                    components.push(sum_component(Some(j), "centred_sum", v(), mid, r, false));
                    components.push(sum_component(Some(j), "centred_sum_of_squares", v(), mid, r * r, true));
                    components.push(count_component(Some(j), "count", count(v()), k));
                }
                // One patient adds or removes at most K values of the group's multiset.
                AggKind::Quantile(_) => components.push(Component {
                    agg: Some(j),
                    what: What::Quantile,
                    label: "quantile",
                    expr: None,
                    sensitivity: k,
                    unit: 1.0,
                    steps: bound as i64,
                    epsilon: 0.0,
                    scale_steps: 0.0,
                    scale: 0.0,
                }),
            }
        }
        if keys.is_none() {
            // Each patient is in at most `keys_per_unit` groups and adds 1 to each: ℓ∞ = 1.
            let l0 = a.keys_per_unit as f64;
            let mut c = count_component(None, "partition_selection", count_distinct(Expr::Column(Column::from_name(PID))), l0);
            c.what = What::Selection;
            components.push(c);
        }
        let mut release = Release { components, bound, keys, epsilon };
        release.set_epsilon(epsilon)?;
        Ok(release)
    }

    /// Split ε equally over the components and calibrate their scales.
    pub(crate) fn set_epsilon(&mut self, epsilon: f64) -> Result<(), Refusal> {
        let n = self.components.len() as f64;
        self.epsilon = epsilon;
        for c in &mut self.components {
            c.epsilon = epsilon / n;
            c.scale_steps = match c.what {
                What::Count | What::Sum => mechanisms::count_scale(c.steps, c.epsilon),
                What::Quantile | What::Selection => Ok(0.0),
            }
            .map_err(|m| Refusal { rule: "epsilon", message: m })?;
            c.scale = c.scale_steps * c.unit;
        }
        Ok(())
    }

    /// The ε that gives every count and sum a 95% half-width of `half_width`.
    pub fn epsilon_for_half_width(&self, half_width: f64) -> Result<f64, Refusal> {
        if !(half_width.is_finite() && half_width > 0.0) {
            return refuse("target-ci", "the target half-width must be a positive number");
        }
        let mut worst: Option<f64> = None;
        for c in &self.components {
            let needed = match c.what {
                What::Count => mechanisms::epsilon_for_count_accuracy(c.steps as f64, half_width),
                What::Sum if c.label == "sum" => mechanisms::epsilon_for_count_accuracy(c.steps as f64, half_width / c.unit),
                _ => continue,
            }
            .map_err(|m| Refusal { rule: "target-ci", message: m })?;
            worst = Some(worst.map_or(needed, |w: f64| w.max(needed)));
        }
        match worst {
            Some(w) => Ok(w * self.components.len() as f64),
            None => refuse(
                "target-ci",
                "--target-ci applies to COUNT and SUM aggregates; for means and quantiles compare dry runs at several ε",
            ),
        }
    }

    pub fn summary(&self, a: &Analysis) -> String {
        let mut s = String::new();
        let tables: Vec<&str> = a.tables.iter().map(|(_, t)| t.as_str()).collect();
        s.push_str(&format!("tables: {}\n", tables.join(", ")));
        s.push_str(&format!("rows per patient: {}\n", self.bound));
        s.push_str(&format!("groups: {}\n", self.groups_label()));
        for (j, spec) in a.aggs.iter().enumerate() {
            let parts: Vec<String> =
                self.components.iter().filter(|c| c.agg == Some(j)).map(|c| format!("{} Δ={}", c.label, fmt_num(c.sensitivity))).collect();
            let bounds = spec.bounds.map(|(lo, hi)| format!(" bounds [{}, {}]", fmt_num(lo), fmt_num(hi))).unwrap_or_default();
            s.push_str(&format!("aggregate {}: {}{bounds}; {}\n", spec.name, spec.kind.label(), parts.join(", ")));
        }
        s
    }

    fn groups_label(&self) -> String {
        match &self.keys {
            Some(k) if k.len() == 1 && k[0].is_empty() => "none".into(),
            Some(k) => format!("public domain ({} keys)", k.len()),
            None => format!(
                "partition selection (ℓ0 = {})",
                self.components.iter().find(|c| c.what == What::Selection).map_or(0.0, |c| c.sensitivity)
            ),
        }
    }

    fn reports(&self, a: &Analysis) -> Vec<AggregateReport> {
        a.aggs
            .iter()
            .enumerate()
            .map(|(j, spec)| {
                let comps: Vec<&Component> = self.components.iter().filter(|c| c.agg == Some(j)).collect();
                let mechanism = match spec.kind {
                    AggKind::Quantile(_) => "exponential mechanism over candidates (OpenDP make_private_quantile)",
                    k if k.is_count() => "discrete Laplace (OpenDP make_laplace)",
                    AggKind::Sum => "discrete Laplace on an exact fixed-point sum (OpenDP make_laplace)",
                    _ => "discrete Laplace on exact fixed-point centred sums and on the count (OpenDP make_laplace)",
                };
                let half = match spec.kind {
                    k if k.is_count() => Some(comps[0].accuracy()),
                    AggKind::Sum => Some(comps[0].accuracy()),
                    _ => None,
                };
                AggregateReport {
                    name: spec.name.clone(),
                    kind: spec.kind.label(),
                    mechanism: mechanism.into(),
                    epsilon: comps.iter().map(|c| c.epsilon).sum(),
                    sensitivity: comps.iter().map(|c| (c.label.to_string(), c.sensitivity)).collect(),
                    bounds: spec.bounds.map(|(lo, hi)| [lo, hi]),
                    rows_per_patient: self.bound,
                    ci95_half_width: half,
                }
            })
            .collect()
    }

    /// The answer's shape with expected accuracy, without reading any data.
    pub fn dry_run(&self, p: &Prepared) -> Result<Answer, QueryError> {
        let reports = self.reports(&p.analysis);
        let outputs = classify_outputs(&p.analysis.plan, &p.analysis);
        let row = outputs
            .iter()
            .map(|o| match o {
                Output::Agg(j) => serde_json::json!({"value": null, "ci95_half_width": reports[*j].ci95_half_width}),
                _ => serde_json::Value::Null,
            })
            .collect();
        Ok(Answer {
            columns: output_names(&p.analysis.plan),
            rows: vec![row],
            epsilon_spent: 0.0,
            delta_spent: 0.0,
            budget_remaining: Budget { epsilon: p.project.epsilon_remaining(), delta: p.project.delta_remaining() },
            dry_run: true,
            aggregates: reports,
            groups: self.groups_label(),
            query_id: None,
            epsilon_needed: None,
        })
    }

    /// The physical plans that read data: the exact components over the bounded relation, and
    /// each quantile's values. Built, optimized and checked for totality before the debit,
    /// from the SQL, the schema and the catalog's file list only.
    pub(crate) async fn physical_plans(&self, ctx: &SessionContext, a: &Analysis, schemas: &Schemas) -> Result<Plans, Refusal> {
        let nkeys = a.keys.len();
        let plan_err = |e: datafusion::error::DataFusionError| Refusal { rule: "sql-error", message: first_line(&e) };
        let relation = rewrite::bounded_relation(a, schemas, self.bound).map_err(plan_err)?;
        let exact_comps: Vec<usize> = (0..self.components.len()).filter(|i| self.components[*i].expr.is_some()).collect();
        let exact = if exact_comps.is_empty() {
            None
        } else {
            let group: Vec<Expr> = (0..nkeys).map(|i| Expr::Column(Column::from_name(key_col(i)))).collect();
            let aggs: Vec<Expr> =
                exact_comps.iter().filter_map(|i| self.components[*i].expr.clone().map(|e| e.alias(format!("__c{i}")))).collect();
            let plan = LogicalPlanBuilder::from(relation.clone()).aggregate(group, aggs).and_then(|b| b.build()).map_err(plan_err)?;
            Some(super::physical(ctx, plan).await?)
        };
        let mut quantiles = Vec::new();
        for (i, c) in self.components.iter().enumerate() {
            let Some(j) = c.agg.filter(|_| c.what == What::Quantile) else { continue };
            let mut cols: Vec<Expr> = (0..nkeys).map(|k| Expr::Column(Column::from_name(key_col(k)))).collect();
            cols.push(Expr::Column(Column::from_name(value_col(j))));
            let plan = LogicalPlanBuilder::from(relation.clone())
                .filter(Expr::Column(Column::from_name(value_col(j))).is_not_null())
                .and_then(|b| b.project(cols))
                .and_then(|b| b.build())
                .map_err(plan_err)?;
            quantiles.push((i, super::physical(ctx, plan).await?));
        }
        Ok(Plans { exact_comps, exact, quantiles })
    }

    /// Read the data (the debit is done), noise, post-process. An error here is reported by
    /// its kind only: its text could quote a value.
    pub(crate) async fn execute(&self, p: &Prepared, noise: Noise) -> Result<Answer, &'static str> {
        let a = &p.analysis;
        let ctx = &p.ctx;
        let nkeys = a.keys.len();
        let df = |e: datafusion::error::DataFusionError| super::error_kind(&e);

        // Exact aggregates over the bounded relation: every component is an integer (a count,
        // or a sum of fixed-point integers).
        let plans = &p.plans;
        let mut exact: HashMap<Vec<ScalarValue>, Vec<i64>> = HashMap::new();
        if let Some(plan) = &plans.exact {
            for batch in datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx()).await.map_err(df)? {
                for row in 0..batch.num_rows() {
                    let key: Vec<ScalarValue> =
                        (0..nkeys).map(|i| ScalarValue::try_from_array(batch.column(i), row)).collect::<Result<_, _>>().map_err(df)?;
                    let vals = (0..plans.exact_comps.len()).map(|c| as_i64(batch.column(nkeys + c), row).unwrap_or(0)).collect();
                    exact.insert(key, vals);
                }
            }
        }
        let exact_comps = &plans.exact_comps;

        // The released keys: public, or selected privately.
        let keys: Vec<Vec<ScalarValue>> = match &self.keys {
            Some(k) => k.clone(),
            None => {
                let Some((sel, c)) = self.components.iter().enumerate().find(|(_, c)| c.what == What::Selection) else {
                    return Err("release plan without partition selection");
                };
                let Some(idx) = exact_comps.iter().position(|c| *c == sel) else { return Err("release plan without selection counts") };
                let mut by_name = HashMap::new();
                let mut counts = HashMap::new();
                for (k, v) in &exact {
                    let name = format!("{k:?}");
                    counts.insert(name.clone(), v[idx]);
                    by_name.insert(name, k.clone());
                }
                let (kept, _) = mechanisms::select_partitions(counts, c.sensitivity as u32, c.epsilon, p.delta, noise)
                    .map_err(|_| "partition selection")?;
                let mut keys: Vec<Vec<ScalarValue>> = kept.keys().filter_map(|n| by_name.get(n).cloned()).collect();
                keys.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
                keys
            }
        };

        let mut noisy = self.noise_components(&keys, &exact, exact_comps, noise).map_err(|_| "noise")?;
        // Quantiles, from the bounded rows of each released group.
        for (i, plan) in &plans.quantiles {
            let c = &self.components[*i];
            let Some(j) = c.agg else { return Err("quantile without aggregate") };
            let spec = &a.aggs[j];
            let AggKind::Quantile(q) = spec.kind else { return Err("quantile of another aggregate") };
            let mut groups: HashMap<Vec<ScalarValue>, Vec<f64>> = HashMap::new();
            for batch in datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx()).await.map_err(df)? {
                for row in 0..batch.num_rows() {
                    let key: Vec<ScalarValue> =
                        (0..nkeys).map(|k| ScalarValue::try_from_array(batch.column(k), row)).collect::<Result<_, _>>().map_err(df)?;
                    if let Some(v) = as_f64(batch.column(nkeys), row).filter(|v| v.is_finite()) {
                        groups.entry(key).or_default().push(v);
                    }
                }
            }
            let candidates = candidates(spec.bounds.unwrap_or((0.0, 0.0)), is_integer(&spec.output_type));
            let mut out = Vec::with_capacity(keys.len());
            for k in &keys {
                let empty = Vec::new();
                let values = groups.get(k).unwrap_or(&empty);
                out.push(mechanisms::quantile(values, &candidates, q, self.bound, c.epsilon, noise).map_err(|_| "quantile")?);
            }
            noisy.insert(*i, out);
        }

        // Post-processing: one (value, interval) per aggregate and key.
        let cells = self.post_process(a, &keys, &noisy, &p.policy);

        // HAVING, ORDER BY, LIMIT and output expressions, evaluated by DataFusion on the noisy table.
        let (names, rows) = self.finish(ctx, a, &keys, &cells).await.map_err(|_| "post-processing")?;
        Ok(Answer {
            columns: names,
            rows,
            epsilon_spent: p.epsilon,
            delta_spent: p.delta,
            budget_remaining: Budget { epsilon: p.project.epsilon_remaining(), delta: p.project.delta_remaining() },
            dry_run: false,
            aggregates: self.reports(a),
            groups: self.groups_label(),
            query_id: None,
            epsilon_needed: None,
        })
    }

    /// Noise, one vector per count or sum component over the released keys (missing keys are
    /// zero-filled before noise). Counts and fixed-point sums are integers: discrete Laplace in
    /// steps, then scaled to the released unit.
    fn noise_components(
        &self,
        keys: &[Vec<ScalarValue>],
        exact: &HashMap<Vec<ScalarValue>, Vec<i64>>,
        exact_comps: &[usize],
        noise: Noise,
    ) -> Result<HashMap<usize, Vec<f64>>, String> {
        let mut noisy: HashMap<usize, Vec<f64>> = HashMap::new();
        for (i, c) in self.components.iter().enumerate() {
            if !matches!(c.what, What::Count | What::Sum) {
                continue;
            }
            let idx = exact_comps.iter().position(|e| *e == i).ok_or("component without an exact value")?;
            let values: Vec<i64> = keys.iter().map(|k| exact.get(k).map_or(0, |v| v[idx])).collect();
            let (n, _) = mechanisms::laplace_counts(&values, c.steps, c.epsilon, noise)?;
            noisy.insert(i, n.into_iter().map(|x| x as f64 * c.unit).collect());
        }
        Ok(noisy)
    }

    /// Release an ungrouped query without quantiles from given exact component values (in
    /// component order: e.g. `[centred_sum, count]` for a mean): the same noise and
    /// post-processing as [`Release::execute`], without reading data. For statistical tests.
    pub fn release_exact_components(
        &self,
        p: &Prepared,
        exact: &[f64],
        noise: Noise,
    ) -> Result<Vec<(Option<f64>, Option<(f64, f64)>)>, String> {
        if !p.analysis.keys.is_empty() || self.components.iter().any(|c| c.expr.is_none()) || exact.len() != self.components.len() {
            return Err("only for ungrouped queries without quantiles, with one value per component".into());
        }
        let keys = vec![vec![]];
        let exact_comps: Vec<usize> = (0..self.components.len()).collect();
        // Real values to the components' integer steps, as the fixed-point kernel would round them.
        let steps: Vec<i64> = exact.iter().zip(&self.components).map(|(x, c)| (x / c.unit).round() as i64).collect();
        let map = HashMap::from([(vec![], steps)]);
        let noisy = self.noise_components(&keys, &map, &exact_comps, noise)?;
        let cells = self.post_process(&p.analysis, &keys, &noisy, &p.policy);
        Ok(cells[0]
            .iter()
            .map(|c| match c {
                Cell::Noisy(v, ci) => (Some(*v), *ci),
                Cell::Suppressed => (None, None),
            })
            .collect())
    }

    /// Clamp counts at zero, build intervals, round, suppress small cells.
    fn post_process(
        &self,
        a: &Analysis,
        keys: &[Vec<ScalarValue>],
        noisy: &HashMap<usize, Vec<f64>>,
        policy: &crate::budget::Policy,
    ) -> Vec<Vec<Cell>> {
        let round = |v: f64| {
            let f = 10f64.powi(policy.round_digits as i32);
            (v * f).round() / f
        };
        let comps = |j: usize| -> Vec<usize> { (0..self.components.len()).filter(|i| self.components[*i].agg == Some(j)).collect() };
        let mut out = vec![Vec::with_capacity(a.aggs.len()); keys.len()];
        for (j, spec) in a.aggs.iter().enumerate() {
            let cs = comps(j);
            let (lo, hi) = spec.bounds.unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
            let mid = (lo + hi) / 2.0;
            for (r, row) in out.iter_mut().enumerate() {
                let get = |n: usize| noisy[&cs[n]][r];
                let scale = |n: usize| self.components[cs[n]].scale;
                let cell = match spec.kind {
                    k if k.is_count() => {
                        let v = get(0);
                        let a = self.components[cs[0]].accuracy();
                        let shown = v.max(0.0);
                        if policy.suppression_threshold > 0 && shown < policy.suppression_threshold as f64 {
                            Cell::Suppressed
                        } else {
                            Cell::Noisy(shown, Some(((v - a).max(0.0), v + a)))
                        }
                    }
                    AggKind::Sum => {
                        let a = self.components[cs[0]].accuracy();
                        let v = get(0);
                        Cell::Noisy(round(v), Some((round(v - a), round(v + a))))
                    }
                    AggKind::Mean => {
                        let (s, n) = (get(0), get(1));
                        if n < 1.0 {
                            Cell::Noisy(round(mid), Some((lo, hi)))
                        } else {
                            let m = (mid + s / n).clamp(lo, hi);
                            // First-order error of S/n: (e_S − (S/n)·e_n) / n with independent
                            // Laplace errors. Their 95% half-widths combined in quadrature: exact
                            // when one term dominates, about 95.5% when both are equal (the
                            // sum of two Laplace variables has lighter tails than either).
                            let a_s = mechanisms::sum_accuracy(scale(0));
                            let a_n = mechanisms::sum_accuracy(scale(1));
                            let half = (a_s.powi(2) + ((s / n) * a_n).powi(2)).sqrt() / n;
                            Cell::Noisy(round(m), Some((round((m - half).max(lo)), round((m + half).min(hi)))))
                        }
                    }
                    AggKind::Variance { sample } | AggKind::Stddev { sample } => {
                        let (s, ss, n) = (get(0), get(1), get(2));
                        let r2 = ((hi - lo) / 2.0).powi(2);
                        let var = |s: f64, ss: f64, n: f64| -> f64 {
                            let d = if sample { n - 1.0 } else { n };
                            if n < 2.0 || d <= 0.0 { r2 } else { ((ss - s * s / n) / d).clamp(0.0, r2) }
                        };
                        // A conservative interval: each component within its 1 − α/3 interval
                        // (union bound), and the variance's range over that box.
                        let alpha = mechanisms::ALPHA / 3.0;
                        let (as_, ass, an) = (
                            mechanisms::sum_accuracy_at(scale(0), alpha),
                            mechanisms::sum_accuracy_at(scale(1), alpha),
                            mechanisms::sum_accuracy_at(scale(2), alpha),
                        );
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
                    AggKind::Quantile(_) => Cell::Noisy(round(get(0)), None),
                    // Counts are matched by the first arm; this is unreachable.
                    _ => Cell::Suppressed,
                };
                row.push(cell);
            }
        }
        out
    }

    /// Evaluate the query's upper part (projection, HAVING, ORDER BY, LIMIT) over the noisy
    /// aggregate table, carrying a hidden row index to attach each cell's interval.
    async fn finish(
        &self,
        ctx: &SessionContext,
        a: &Analysis,
        keys: &[Vec<ScalarValue>],
        cells: &[Vec<Cell>],
    ) -> Result<(Vec<String>, Vec<Vec<serde_json::Value>>), String> {
        let df = |e: datafusion::error::DataFusionError| e.to_string();
        let agg = a.aggregate();
        let nkeys = a.keys.len();
        // The aggregate's schema, every field nullable (suppressed cells), plus the row index.
        let mut fields: Vec<(Option<datafusion::common::TableReference>, Arc<Field>)> =
            agg.schema.iter().map(|(q, f)| (q.cloned(), Arc::new(f.as_ref().clone().with_nullable(true)))).collect();
        fields.push((None, Arc::new(Field::new(ROW, DataType::Int64, false))));
        let schema = Arc::new(DFSchema::new_with_metadata(fields, HashMap::new()).map_err(df)?);
        let mut values = Vec::with_capacity(keys.len());
        for (r, key) in keys.iter().enumerate() {
            let mut row: Vec<Expr> = key.iter().map(|k| Expr::Literal(k.clone(), None)).collect();
            for (j, spec) in a.aggs.iter().enumerate() {
                let ty = agg.schema.field(nkeys + j).data_type();
                let v = match &cells[r][j] {
                    Cell::Suppressed => ScalarValue::try_from(ty).map_err(df)?,
                    Cell::Noisy(v, _) => {
                        let v = if is_integer(ty) || spec.kind.is_count() { v.round() } else { *v };
                        // A noisy value outside the output type's range shows as NULL.
                        ScalarValue::Float64(Some(v)).cast_to(ty).or_else(|_| ScalarValue::try_from(ty)).map_err(df)?
                    }
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
        let mut chain = Vec::new();
        let mut node = &a.plan;
        while !matches!(node, LogicalPlan::Aggregate(_)) {
            chain.push(node);
            node = node.inputs()[0];
        }
        let mut plan = base;
        for n in chain.iter().rev() {
            plan = match n {
                LogicalPlan::Projection(p) => {
                    let mut exprs = p.expr.clone();
                    exprs.push(Expr::Column(Column::from_name(ROW)));
                    LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(plan)).map_err(df)?)
                }
                other => other.with_new_exprs(other.expressions(), vec![plan]).map_err(df)?,
            };
        }
        let outputs = classify_outputs(&a.plan, a);
        let names = output_names(&a.plan);
        let mut rows = Vec::new();
        for batch in collect(ctx, plan).await.map_err(df)? {
            let row_col = batch.num_columns() - 1;
            for i in 0..batch.num_rows() {
                let r = match ScalarValue::try_from_array(batch.column(row_col), i).map_err(df)? {
                    ScalarValue::Int64(Some(r)) => r as usize,
                    _ => return Err("row index lost".into()),
                };
                let mut out = Vec::with_capacity(names.len());
                for (c, o) in outputs.iter().enumerate() {
                    let v = ScalarValue::try_from_array(batch.column(c), i).map_err(df)?;
                    out.push(match o {
                        Output::Key => scalar_json(&v),
                        _ if v.is_null() => serde_json::Value::Null,
                        Output::Agg(j) => {
                            let ci = match &cells[r][*j] {
                                Cell::Noisy(_, Some((lo, hi))) => serde_json::json!([lo, hi]),
                                _ => serde_json::Value::Null,
                            };
                            serde_json::json!({"value": scalar_json(&v), "ci95": ci})
                        }
                        Output::Derived => serde_json::json!({"value": scalar_json(&v), "ci95": null}),
                    });
                }
                rows.push(out);
            }
        }
        Ok((names, rows))
    }
}

const ROW: &str = "__row";

#[derive(Debug, Clone)]
enum Cell {
    Noisy(f64, Option<(f64, f64)>),
    Suppressed,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Output {
    Key,
    Agg(usize),
    Derived,
}

fn output_names(plan: &LogicalPlan) -> Vec<String> {
    plan.schema().fields().iter().map(|f| f.name().clone()).collect()
}

/// What each output column shows: a group key, an aggregate (with its interval) or an
/// expression of aggregates (noisy, without an interval).
fn classify_outputs(plan: &LogicalPlan, a: &Analysis) -> Vec<Output> {
    let agg = a.aggregate();
    let nkeys = a.keys.len();
    let mut node = plan;
    let projection = loop {
        match node {
            LogicalPlan::Projection(p) => break Some(p),
            LogicalPlan::Aggregate(_) => break None,
            other => node = other.inputs()[0],
        }
    };
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

fn is_integer(t: &DataType) -> bool {
    t.is_integer()
}

/// Quantile candidates: every integer in the bounds when the values are integral and few,
/// otherwise 1,001 evenly spaced points.
fn candidates((lo, hi): (f64, f64), integer: bool) -> Vec<f64> {
    if integer && hi - lo <= 10_000.0 {
        return (lo.ceil() as i64..=hi.floor() as i64).map(|v| v as f64).collect();
    }
    let n = 1000;
    (0..=n).map(|i| lo + (hi - lo) * i as f64 / n as f64).collect()
}

fn first_line(e: &datafusion::error::DataFusionError) -> String {
    e.strip_backtrace().lines().next().unwrap_or("").to_owned()
}

/// The data-reading plans of a release, made before the debit.
pub(crate) struct Plans {
    /// Components with an exact aggregate, in the order of the exact plan's columns.
    exact_comps: Vec<usize>,
    exact: Option<Arc<dyn ExecutionPlan>>,
    /// (component, plan of its group keys and values)
    quantiles: Vec<(usize, Arc<dyn ExecutionPlan>)>,
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{}", v as i64) } else { format!("{v}") }
}
