//! The release plan: which OpenDP mechanism releases each aggregate, with which sensitivity and
//! which share of the query's ε.
//!
//! Notation: K is the number of rows one patient may contribute after bounding
//! ([`super::rewrite::bounded_relation`]); for a grouped query K is also capped by the
//! groups-per-patient bound, since K rows fall in at most K groups. Values are clamped into
//! public bounds [lo, hi]; mid = (lo + hi) / 2 and r = (hi − lo) / 2.
//!
//! Neighbouring datasets differ by one patient (add or remove all of their rows). For a vector
//! of per-group cells, adding a patient changes the cells by at most the L1 sensitivities
//! below, and Laplace noise of scale Δ₁/ε on every cell is ε-DP for the whole vector (Dwork &
//! Roth, Theorem 3.6; OpenDP's discrete Laplace for integers, Canonne, Kamath & Steinke 2020):
//! that is why empty groups are released too (zero-filled) and the per-group releases cost no
//! more than one. Several components split ε equally (sequential composition); post-processing
//! is free (Proposition 2.1).
//!
//! In a project accounted in ρ-zCDP the same components get discrete Gaussian noise calibrated
//! to their L2 sensitivity: ρ = ε²/2 for a query asked at ε (the ρ of which pure ε-DP is a
//! bound, Bun & Steinke 2016, Proposition 1.4, so a query costs its Laplace counterpart's ε at
//! most), split equally over the components (zCDP composes by adding ρ, Lemma 2.3). L2 is
//! tighter than L1 where a patient spreads over several cells with at most one each (a count of
//! patients over G groups: √G against G); otherwise L2 ≤ L1 (the cells' changes are non-negative
//! and add up to at most L1). Quantiles stay the exponential mechanism at ε_c = √(2ρ_c) (pure
//! ε_c-DP is ε_c²/2-zCDP); DP partition selection is not offered in zCDP projects.
//!
//! Every component is an integer computed exactly over the bounded rows: a count, or a sum of
//! fixed-point integers ([`super::rewrite::fixed_point`]). A float sum would round in an order
//! that depends on the data and its partitioning, and its sensitivity would then need a
//! rounding term; integer sums are exact and order-free, so the sensitivities below hold as
//! stated. One function per aggregate kind builds its components and says why.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::{Column, ScalarValue};
use datafusion::execution::context::SessionContext;
use datafusion::functions_aggregate::expr_fn::{count, count_distinct, sum};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, lit};
use datafusion::physical_plan::ExecutionPlan;

use super::analyze::{AggKind, Analysis};
use super::answer::AggregateReport;
use super::groups;
use super::mechanisms::{self, Additive, Noise};
use super::rewrite::{self, PID, STEPS, key_col, value_col};
use super::rule::Rule;
use super::session;
use crate::error::{Error, Result};
pub use crate::governance::Accounting;

/// What one component computes exactly, before noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// A count (rows, values or patients).
    Count,
    /// A sum of fixed-point integers.
    Sum,
    /// A quantile (exponential mechanism over the group's values).
    Quantile,
    /// Distinct patients per key, for DP partition selection.
    Selection,
}

/// One released component of an aggregate.
#[derive(Debug, Clone)]
pub struct Component {
    /// The aggregate it belongs to (none for partition selection).
    pub agg: Option<usize>,
    pub what: What,
    pub label: &'static str,
    /// The exact aggregate over the bounded relation: a BIGINT (none for quantiles).
    expr: Option<Expr>,
    /// L1 sensitivity in the released unit (rows, patients, or the column's unit).
    pub sensitivity: f64,
    /// The value of one step of the exact integer: 1 for counts, the fixed-point unit for sums.
    pub unit: f64,
    /// L1 sensitivity of the exact integer, in steps: `sensitivity / unit`, exactly.
    pub steps: i64,
    /// L2 sensitivity of the exact integer vector, in steps (≤ `steps`).
    pub l2_steps: f64,
    pub epsilon: f64,
    /// The component's share of ρ (zCDP projects; 0 otherwise).
    pub rho: f64,
    /// The calibrated additive noise (counts and sums).
    laplace: Option<Additive>,
    /// Whether the exact aggregate adds up over a disjoint union of rows (a count of rows or of
    /// values, an integer sum; not a count of distinct patients): see [`rewrite::Split`].
    additive: bool,
}

impl Component {
    fn new(agg: Option<usize>, what: What, label: &'static str, expr: Option<Expr>, sensitivity: f64, unit: f64, steps: i64) -> Component {
        Component {
            agg,
            what,
            label,
            expr,
            sensitivity,
            unit,
            steps,
            l2_steps: steps as f64,
            epsilon: 0.0,
            rho: 0.0,
            laplace: None,
            additive: false,
        }
    }

    /// The same component, its exact aggregate a count of rows or values or an integer sum.
    fn additive(self) -> Component {
        Component { additive: true, ..self }
    }

    /// The noise's name, for the report.
    pub fn mechanism(&self) -> Option<&'static str> {
        self.laplace.map(|l| l.name())
    }

    /// Half-width at level `alpha` of the continuous counterpart of this component's noise, in
    /// the released unit (for intervals of combined releases).
    pub fn accuracy_at(&self, alpha: f64) -> f64 {
        self.laplace.map_or(0.0, |l| l.accuracy_at(alpha) * self.unit)
    }

    /// Noise scale in the released unit.
    pub fn scale(&self) -> f64 {
        self.laplace.map_or(0.0, |l| l.scale() * self.unit)
    }

    /// Half-width of the 95% interval of this component's noise, in the released unit.
    pub fn accuracy(&self) -> f64 {
        self.laplace.map_or(0.0, |l| l.accuracy() * self.unit)
    }
}

// ---- one function per aggregate kind --------------------------------------------------------

/// `COUNT(*)`: each retained row adds 1 to one cell, so one patient's K rows move the vector of
/// cells by at most K in L1.
fn count_rows(j: usize, k: u32) -> Vec<Component> {
    vec![Component::new(Some(j), What::Count, "rows", Some(count(lit(1i64))), k as f64, 1.0, k as i64).additive()]
}

/// `COUNT(x)`: as `COUNT(*)`, over the rows where x is not null: Δ₁ = K.
fn count_values(j: usize, k: u32, v: Expr) -> Vec<Component> {
    vec![Component::new(Some(j), What::Count, "values", Some(count(v)), k as f64, 1.0, k as i64).additive()]
}

/// `COUNT(DISTINCT person_id)`: a patient is counted once per group they have a retained row
/// in: once when ungrouped, at most `groups` times grouped (min of the keys a patient can take
/// and the number of keys).
fn count_patients(j: usize, groups: u32) -> Vec<Component> {
    let pid = Expr::Column(Column::from_name(PID));
    let mut c = Component::new(Some(j), What::Count, "patients", Some(count_distinct(pid)), groups as f64, 1.0, groups as i64);
    // At most 1 in each of at most `groups` cells: L2 = √groups.
    c.l2_steps = (groups as f64).sqrt();
    vec![c]
}

/// A fixed-point sum of K values per patient of magnitude at most `m` after clamping and
/// centring on `centre`. Each fixed-point integer is in [−STEPS, STEPS] (the kernel clamps it
/// there), so one patient moves the integer sum by at most K·STEPS steps, which is K·m in the
/// column's unit. The integer sum cannot overflow under 2^43 rows (|sum| ≤ rows·2^20 < 2^63).
fn fixed_point_sum(j: usize, label: &'static str, k: u32, v: Expr, centre: f64, m: f64, square: bool) -> Component {
    let unit = rewrite::fixed_point_unit(m);
    let expr = sum(rewrite::fixed_point(v, centre, unit, square));
    Component::new(Some(j), What::Sum, label, Some(expr), k as f64 * m, unit, k as i64 * STEPS).additive()
}

/// `SUM(x)`: K clamped values, each of magnitude at most max(|lo|, |hi|): Δ₁ = K·max(|lo|, |hi|).
fn sum_of(j: usize, k: u32, v: Expr, (lo, hi): (f64, f64)) -> Vec<Component> {
    vec![fixed_point_sum(j, "sum", k, v, 0.0, lo.abs().max(hi.abs()), false)]
}

/// `AVG(x)` = mid + Σ(x − mid) / n: the centred sum has Δ₁ = K·r, the count Δ₁ = K; the ratio
/// is post-processing.
fn mean(j: usize, k: u32, v: Expr, (lo, hi): (f64, f64)) -> Vec<Component> {
    let (mid, r) = ((lo + hi) / 2.0, (hi - lo) / 2.0);
    vec![fixed_point_sum(j, "centred_sum", k, v.clone(), mid, r, false), count_values(j, k, v).remove(0)]
}

/// Variance and standard deviation from the centred sum (Δ₁ = K·r), the centred sum of squares
/// (each square in [0, r²]: Δ₁ = K·r²) and the count (Δ₁ = K).
fn variance(j: usize, k: u32, v: Expr, (lo, hi): (f64, f64)) -> Vec<Component> {
    let (mid, r) = ((lo + hi) / 2.0, (hi - lo) / 2.0);
    vec![
        fixed_point_sum(j, "centred_sum", k, v.clone(), mid, r, false),
        fixed_point_sum(j, "centred_sum_of_squares", k, v.clone(), mid, r * r, true),
        count_values(j, k, v).remove(0),
    ]
}

/// A quantile: one patient adds or removes at most K values of the group's multiset; the
/// exponential mechanism is calibrated for that symmetric distance (see [`mechanisms`]).
fn quantile(j: usize, k: u32) -> Vec<Component> {
    vec![Component::new(Some(j), What::Quantile, "quantile", None, k as f64, 1.0, k as i64)]
}

/// Partition selection: each patient is in at most `l0` keys and adds 1 to each key's count of
/// distinct patients (ℓ∞ = 1).
fn partition_selection(l0: u32) -> Component {
    let pid = Expr::Column(Column::from_name(PID));
    Component::new(None, What::Selection, "partition_selection", Some(count_distinct(pid)), l0 as f64, 1.0, l0 as i64)
}

// ---- the plan --------------------------------------------------------------------------------

/// Where a release's groups come from.
#[derive(Debug, Clone)]
pub enum Groups {
    /// Every key of the public domain (one empty key for an ungrouped query).
    Public(Vec<Vec<ScalarValue>>),
    /// DP partition selection.
    Selected,
}

/// The release plan of one query.
pub struct Release {
    pub components: Vec<Component>,
    /// K: rows per patient after bounding.
    pub bound: u32,
    pub groups: Groups,
    pub epsilon: f64,
    /// How the project accounts: pure ε (Laplace) or ρ-zCDP (Gaussian).
    pub accounting: Accounting,
}

/// The data-reading plans of a release, made before the debit.
pub struct Plans {
    /// Components with an exact aggregate, in the order of the exact plans' columns.
    pub exact_comps: Vec<usize>,
    pub exact: Option<Arc<dyn ExecutionPlan>>,
    /// Whether the exact plan is over the parts of a split relation ([`rewrite::Split`]): each of
    /// its rows then has a last column, the sign (1 or −1) its values are added up with.
    pub signed: bool,
    /// (component, plan of its group keys and values)
    pub quantiles: Vec<(usize, Arc<dyn ExecutionPlan>)>,
}

impl Release {
    pub fn plan(ctx: &SessionContext, a: &Analysis, epsilon: f64, accounting: Accounting) -> Result<Release> {
        let grouped = !a.keys.is_empty();
        let k = if grouped { a.rows_per_unit.min(a.groups_per_unit) } else { a.rows_per_unit };
        let groups = if a.public_groups() { Groups::Public(groups::public_keys(ctx, a)?) } else { Groups::Selected };
        let mut components = Vec::new();
        for (j, spec) in a.aggs.iter().enumerate() {
            let v = || Expr::Column(Column::from_name(value_col(j)));
            let bounds = spec.bounds.unwrap_or((0.0, 0.0));
            components.extend(match spec.kind {
                AggKind::CountRows => count_rows(j, k),
                AggKind::CountValues => count_values(j, k, v()),
                AggKind::CountPatients => {
                    let per_unit = a.keys_per_unit;
                    let groups = match &groups {
                        _ if !grouped => 1,
                        Groups::Public(keys) => per_unit.min(keys.len().max(1) as u32),
                        Groups::Selected => per_unit,
                    };
                    count_patients(j, groups)
                }
                AggKind::Sum => sum_of(j, k, v(), bounds),
                AggKind::Mean => mean(j, k, v(), bounds),
                AggKind::Variance { .. } | AggKind::Stddev { .. } => variance(j, k, v(), bounds),
                AggKind::Quantile(_) => quantile(j, k),
            });
        }
        if matches!(groups, Groups::Selected) {
            if accounting == Accounting::Zcdp {
                return Err(Error::refused(
                    Rule::NeedsDelta,
                    "in a zCDP project, groups must come from public domains (DP partition selection is offered in pure-ε projects)",
                ));
            }
            components.push(partition_selection(a.keys_per_unit));
        }
        let mut release = Release { components, bound: k, groups, epsilon, accounting };
        release.set_epsilon(epsilon)?;
        Ok(release)
    }

    /// Split ε (or ρ = ε²/2 in a zCDP project) equally over the components and calibrate their
    /// noise.
    pub fn set_epsilon(&mut self, epsilon: f64) -> Result<()> {
        let n = self.components.len() as f64;
        self.epsilon = epsilon;
        let rho = Accounting::rho_of(epsilon);
        for c in &mut self.components {
            match self.accounting {
                Accounting::Pure => {
                    c.epsilon = epsilon / n;
                    c.laplace = match c.what {
                        What::Count | What::Sum => Some(Additive::Laplace(mechanisms::make_discrete_laplace(c.steps, c.epsilon)?)),
                        What::Quantile | What::Selection => None,
                    };
                }
                Accounting::Zcdp => {
                    c.rho = rho / n;
                    // What the component's pure counterpart would be: ε_c = √(2ρ_c) (quantiles
                    // are calibrated at it; for the Gaussian parts it is only reported).
                    c.epsilon = (2.0 * c.rho).sqrt();
                    c.laplace = match c.what {
                        What::Count | What::Sum => Some(Additive::Gaussian(mechanisms::make_discrete_gaussian(c.l2_steps, c.rho)?)),
                        What::Quantile | What::Selection => None,
                    };
                }
            }
        }
        Ok(())
    }

    /// The ρ this release spends (zCDP projects; 0 in pure ones).
    pub fn rho(&self) -> f64 {
        self.components.iter().map(|c| c.rho).sum()
    }

    /// The components of aggregate `j`, in order.
    pub fn of(&self, j: usize) -> Vec<&Component> {
        self.components.iter().filter(|c| c.agg == Some(j)).collect()
    }

    /// The ε that gives every count and sum a 95% half-width of `half_width`.
    pub fn epsilon_for_half_width(&self, half_width: f64) -> Result<f64> {
        if !(half_width.is_finite() && half_width > 0.0) {
            return Err(Error::refused(Rule::TargetCi, "the target half-width must be a positive number"));
        }
        let mut worst: Option<f64> = None;
        for c in &self.components {
            // Counts, and plain sums (the parts of a mean or a variance are not answers).
            let needed = match (c.what, c.label, self.accounting) {
                (What::Count, _, Accounting::Pure) | (What::Sum, "sum", Accounting::Pure) => {
                    mechanisms::epsilon_for_accuracy(c.steps as f64, half_width / c.unit)?
                }
                // The component's ρ, as an ε of the same convention (ρ = ε²/2).
                (What::Count, _, Accounting::Zcdp) | (What::Sum, "sum", Accounting::Zcdp) => {
                    (2.0 * mechanisms::rho_for_accuracy(c.l2_steps, half_width / c.unit)?).sqrt()
                }
                _ => continue,
            };
            worst = Some(worst.map_or(needed, |w: f64| w.max(needed)));
        }
        let n = self.components.len() as f64;
        match worst {
            // Pure: ε_c · n; zCDP: ρ = n · ρ_c, so ε = √(2 n ρ_c) = ε_c · √n.
            Some(w) if self.accounting == Accounting::Zcdp => Ok(w * n.sqrt()),
            Some(w) => Ok(w * n),
            None => Err(Error::refused(
                Rule::TargetCi,
                "--target-ci applies to COUNT and SUM aggregates; for means and quantiles compare dry runs at several ε",
            )),
        }
    }

    /// The physical plans that read data: the exact components over the bounded relation, and
    /// each quantile's values. Built, optimized and checked total before the debit, from the
    /// SQL, the schema and the catalog's file list only.
    pub async fn physical_plans(&self, ctx: &SessionContext, a: &Analysis, tables: &rewrite::Tables<'_>) -> Result<Plans> {
        let nkeys = a.keys.len();
        let bounded = rewrite::bounded(a, tables, self.bound).map_err(session::plan_error)?;
        let relation = bounded.relation;
        let exact_comps: Vec<usize> = (0..self.components.len()).filter(|i| self.components[*i].expr.is_some()).collect();
        let group: Vec<Expr> = (0..nkeys).map(|i| Expr::Column(Column::from_name(key_col(i)))).collect();
        let aggs: Vec<Expr> =
            exact_comps.iter().filter_map(|i| self.components[*i].expr.clone().map(|e| e.alias(format!("__c{i}")))).collect();
        let aggregate = |over: &LogicalPlan| {
            LogicalPlanBuilder::from(over.clone())
                .aggregate(group.clone(), aggs.clone())
                .and_then(|b| b.build())
                .map_err(session::plan_error)
        };
        let signed = |over: &LogicalPlan, sign: i64| {
            let aggregated = aggregate(over)?;
            let mut columns: Vec<Expr> = aggregated.schema().columns().into_iter().map(Expr::Column).collect();
            columns.push(lit(sign).alias("__sign"));
            LogicalPlanBuilder::from(aggregated).project(columns).and_then(|b| b.build()).map_err(session::plan_error)
        };
        let split = bounded.split.as_ref().filter(|_| exact_comps.iter().all(|i| self.components[*i].additive));
        let exact = match split {
            _ if exact_comps.is_empty() => None,
            // Every exact aggregate adds up over disjoint rows: over all rows, minus over those the
            // truncation drops (see `Split`), in one plan.
            Some(s) => {
                let parts = LogicalPlanBuilder::from(signed(&s.all, 1)?)
                    .union(signed(&s.dropped, -1)?)
                    .and_then(|b| b.build())
                    .map_err(session::plan_error)?;
                Some(session::physical(ctx, parts).await?)
            }
            None => Some(session::physical(ctx, aggregate(&relation)?).await?),
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
                .map_err(session::plan_error)?;
            quantiles.push((i, session::physical(ctx, plan).await?));
        }
        Ok(Plans { exact_comps, exact, signed: split.is_some(), quantiles })
    }

    /// Noise every count and sum over the released keys (a key no row has is zero-filled before
    /// noise): discrete Laplace in steps, then scaled to the released unit.
    pub fn noise(
        &self,
        keys: &[Vec<ScalarValue>],
        exact: &HashMap<Vec<ScalarValue>, Vec<i64>>,
        exact_comps: &[usize],
        noise: Noise,
    ) -> Result<HashMap<usize, Vec<f64>>> {
        let mut noisy = HashMap::new();
        for (i, c) in self.components.iter().enumerate() {
            let Some(laplace) = c.laplace.filter(|_| matches!(c.what, What::Count | What::Sum)) else { continue };
            let idx = exact_comps.iter().position(|e| *e == i).ok_or_else(|| Error::internal("a component without its exact value"))?;
            let values: Vec<i64> = keys.iter().map(|k| exact.get(k).map_or(0, |v| v[idx])).collect();
            let released = laplace.release(&values, noise)?;
            noisy.insert(i, released.into_iter().map(|x| x as f64 * c.unit).collect());
        }
        Ok(noisy)
    }

    /// The quantile of each released key's values.
    pub fn quantiles(
        &self,
        i: usize,
        a: &Analysis,
        keys: &[Vec<ScalarValue>],
        values: &HashMap<Vec<ScalarValue>, Vec<f64>>,
        noise: Noise,
    ) -> Result<Vec<f64>> {
        let c = &self.components[i];
        let spec = c.agg.and_then(|j| a.aggs.get(j)).ok_or_else(|| Error::internal("a quantile without its aggregate"))?;
        let AggKind::Quantile(q) = spec.kind else { return Err(Error::internal("a quantile component of another aggregate")) };
        let candidates = candidates(spec.bounds.unwrap_or((0.0, 0.0)), spec.output_type.is_integer());
        let mechanism = mechanisms::make_private_quantile(candidates, q, self.bound, c.epsilon)?;
        let empty = Vec::new();
        keys.iter().map(|k| mechanism.release(values.get(k).unwrap_or(&empty), noise)).collect()
    }

    /// Where the groups come from, in words.
    pub fn groups_label(&self, a: &Analysis) -> String {
        let keys = || a.keys.iter().flat_map(|k| k.columns.iter().map(|(c, _)| a.column_name(c))).collect::<Vec<_>>().join(", ");
        match &self.groups {
            Groups::Public(k) if a.keys.is_empty() && k.len() == 1 => "none".into(),
            Groups::Public(k) if a.keys.iter().any(|k| k.range.is_some()) => {
                let ranges: Vec<String> = a
                    .keys
                    .iter()
                    .map(|k| match k.range {
                        Some((lo, hi)) => format!("the integers {}..{} of {}", fmt_num(lo), fmt_num(hi), a.describe(&k.expr)),
                        None => format!("the public domain of {}", a.describe(&k.expr)),
                    })
                    .collect();
                format!("{} ({} keys)", ranges.join(" × "), k.len())
            }
            Groups::Public(k) => format!("public domain of {} ({} keys)", keys(), k.len()),
            Groups::Selected => format!("partition selection over {} (ℓ0 = {})", keys(), a.keys_per_unit),
        }
    }

    /// The bounded plan in secretum's own words (tables and their bounds, groups, and each
    /// aggregate's kind, argument, bounds and sensitivities): what the golden cases check.
    pub fn summary(&self, a: &Analysis) -> String {
        let mut s = String::new();
        let tables: Vec<String> = a
            .tables
            .iter()
            .map(|(q, t)| match a.policies.get(q) {
                Some(_) if a.per_patient.contains(q) => format!("{t} (per-patient relation: 1 per patient)"),
                Some(p) if p.public => format!("{t} (public)"),
                Some(p) => format!("{t} (≤ {} per patient)", p.max_rows_per_unit),
                None => t.clone(),
            })
            .collect();
        s.push_str(&format!("tables: {}\n", tables.join(", ")));
        if !a.public.is_empty() {
            s.push_str(&format!("public joins may repeat a patient's rows: truncated to {} per patient after the joins\n", self.bound));
        }
        for d in &a.derivations {
            s.push_str(&format!("derived {d}\n"));
        }
        s.push_str(&format!("rows per patient: {}\n", self.bound));
        s.push_str(&format!("groups: {}\n", self.groups_label(a)));
        for (j, spec) in a.aggs.iter().enumerate() {
            let parts: Vec<String> =
                self.of(j).iter().map(|c| format!("{} Δ {}", c.label.replace('_', " "), fmt_num(c.sensitivity))).collect();
            let of = spec.value.as_ref().map(|v| format!(" of {}", a.describe(v))).unwrap_or_default();
            let bounds = spec.bounds.map(|(lo, hi)| format!(" in [{}, {}]", fmt_num(lo), fmt_num(hi))).unwrap_or_default();
            s.push_str(&format!("aggregate {}: {}{of}{bounds}; {}\n", j + 1, spec.kind.describe(), parts.join(", ")));
        }
        s
    }

    /// How each aggregate is released (reported with every answer).
    pub fn reports(&self, a: &Analysis) -> Vec<AggregateReport> {
        a.aggs
            .iter()
            .enumerate()
            .map(|(j, spec)| {
                let comps = self.of(j);
                let noise = comps.iter().find_map(|c| c.mechanism()).unwrap_or("");
                let mechanism = match spec.kind {
                    AggKind::Quantile(_) => "exponential mechanism over candidates (OpenDP make_private_quantile)".to_owned(),
                    k if k.is_count() => noise.to_owned(),
                    AggKind::Sum => format!("{noise} on an exact fixed-point sum"),
                    _ => format!("{noise} on exact fixed-point centred sums and on the count"),
                };
                let half = match spec.kind {
                    k if k.is_count() || k == AggKind::Sum => comps.first().map(|c| c.accuracy()),
                    _ => None,
                };
                AggregateReport {
                    name: spec.name.clone(),
                    kind: spec.kind.label(),
                    mechanism,
                    epsilon: comps.iter().map(|c| c.epsilon).sum(),
                    sensitivity: comps.iter().map(|c| (c.label.to_string(), c.sensitivity)).collect(),
                    bounds: spec.bounds.map(|(lo, hi)| [lo, hi]),
                    rows_per_patient: self.bound,
                    ci95_half_width: half,
                }
            })
            .collect()
    }
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

pub(crate) fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{}", v as i64) } else { format!("{v}") }
}

#[cfg(test)]
mod tests {
    //! Each aggregate kind's stated sensitivity against brute force: random datasets of patients
    //! (each with at most K rows, values anywhere, clamped as the bounded plan clamps them), the
    //! component computed exactly as the engine computes it, with and without one patient.
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::dp::rewrite::fixed_point_value;

    /// A small deterministic generator (no dependency needed for a test's data).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// One patient's rows: (group, value or NULL).
    type Patient = Vec<(u8, Option<f64>)>;

    fn dataset(rng: &mut Lcg, patients: usize, k: u32, groups: u8) -> Vec<Patient> {
        (0..patients)
            .map(|_| {
                let n = 1 + (rng.next() * k as f64) as usize % k as usize;
                (0..n)
                    .map(|_| {
                        let g = (rng.next() * groups as f64) as u8;
                        let v = (rng.next() > 0.1).then(|| -5000.0 + rng.next() * 10000.0);
                        (g, v)
                    })
                    .collect()
            })
            .collect()
    }

    /// The exact integer of each group for one component, as the engine computes it.
    fn exact(c: &Component, data: &[Patient], groups: u8, (lo, hi): (f64, f64)) -> Vec<i64> {
        let clamp = |v: f64| v.max(lo).min(hi);
        let mut out = vec![0i64; groups as usize];
        for (g, cell) in out.iter_mut().enumerate() {
            let g = g as u8;
            let rows = || data.iter().flat_map(|p| p.iter()).filter(move |(pg, _)| *pg == g);
            *cell = match (c.what, c.label) {
                (What::Count, "rows") => rows().count() as i64,
                (What::Count, "values") => rows().filter(|(_, v)| v.is_some()).count() as i64,
                (What::Count, "patients") => data.iter().filter(|p| p.iter().any(|(pg, _)| *pg == g)).count() as i64,
                (What::Sum, label) => {
                    let (mid, r) = ((lo + hi) / 2.0, (hi - lo) / 2.0);
                    let (centre, m, square) = match label {
                        "sum" => (0.0, lo.abs().max(hi.abs()), false),
                        "centred_sum" => (mid, r, false),
                        _ => (mid, r * r, true),
                    };
                    let unit = rewrite::fixed_point_unit(m);
                    rows().filter_map(|(_, v)| fixed_point_value(v.map(clamp), centre, unit, square)).sum()
                }
                _ => 0,
            };
        }
        out
    }

    /// The largest L1 move of the component's vector when one patient (at most K rows) is added.
    fn worst_move(components: Vec<Component>, k: u32, groups: u8, bounds: (f64, f64)) {
        let mut rng = Lcg(7);
        for round in 0..200 {
            let data = dataset(&mut rng, 30, k, groups);
            let mut with = data.clone();
            with.extend(dataset(&mut rng, 1, k, groups));
            for c in &components {
                let (a, b) = (exact(c, &data, groups, bounds), exact(c, &with, groups, bounds));
                let moved: i64 = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum();
                assert!(moved <= c.steps, "{} moved by {moved} > {} steps (round {round})", c.label, c.steps);
                assert!((c.steps as f64 * c.unit - c.sensitivity).abs() <= 1e-9 * c.sensitivity.max(1.0), "{}: steps·unit ≠ Δ", c.label);
            }
        }
    }

    fn v() -> Expr {
        Expr::Column(Column::from_name("v"))
    }

    #[test]
    fn count_rows_moves_by_at_most_k() {
        worst_move(count_rows(0, 7), 7, 5, (0.0, 1.0));
    }

    #[test]
    fn count_values_moves_by_at_most_k() {
        worst_move(count_values(0, 7, v()), 7, 5, (0.0, 1.0));
    }

    #[test]
    fn count_patients_moves_by_at_most_the_groups_a_patient_can_be_in() {
        worst_move(count_patients(0, 1), 7, 1, (0.0, 1.0));
        worst_move(count_patients(0, 5), 7, 5, (0.0, 1.0));
    }

    #[test]
    fn sums_move_by_at_most_k_times_the_largest_magnitude() {
        worst_move(sum_of(0, 4, v(), (-300.0, 500.0)), 4, 3, (-300.0, 500.0));
        worst_move(sum_of(0, 4, v(), (3.0, 20.0)), 4, 1, (3.0, 20.0));
    }

    #[test]
    fn mean_components_move_by_at_most_k_r_and_k() {
        worst_move(mean(0, 6, v(), (3.0, 20.0)), 6, 2, (3.0, 20.0));
    }

    #[test]
    fn variance_components_move_by_at_most_k_r_k_r2_and_k() {
        worst_move(variance(0, 6, v(), (-1.0, 1e4)), 6, 2, (-1.0, 1e4));
    }

    #[test]
    fn quantiles_and_selection_state_their_distance() {
        let q = quantile(0, 9);
        assert_eq!((q[0].steps, q[0].what), (9, What::Quantile));
        let s = partition_selection(4);
        assert_eq!((s.steps, s.what, s.agg), (4, What::Selection, None));
    }
}
