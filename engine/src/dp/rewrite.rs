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
//!
//! ## Truncation prepared at ingest
//!
//! Truncating to K rows per patient costs a hash aggregate by patient over every row. It is
//! skipped where the catalog shows it would drop nothing: each ingest records the most rows one
//! patient has among its rows ([`crate::catalog::Catalog::unit_rows_bound`] sums them over a
//! table's ingests, an upper bound on any patient's rows in the table). When that bound is at
//! most K, truncating to K is the identity on this data, so the plan without it computes
//! exactly the same relation, row for row: the released value is the same function of the data,
//! its sensitivity argument unchanged (one patient still has at most K rows in it, now because
//! the data has no more, checked at ingest, rather than because an operator removed them). On
//! data where some patient has more rows than K, the truncation runs as before. `person`, whose
//! ingest refuses a second row for a patient, is never truncated: each of its ingests checks its
//! patients against the table's files and commits only if those are still the table's files, so
//! its ingests hold disjoint patients and the bound is their largest, 1, not their sum.
//!
//! The choice reads the catalog, not the query's rows, and changes the plan, not the answer:
//! which of two plans runs depends on the most rows any one patient of the whole table has
//! (not on any WHERE a researcher writes), so it cannot single a patient out.
//!
//! Why not a rank stored at ingest (each row's place among its patient's rows, in a random
//! order fixed then, truncation a filter `rank <= K`)? It would be as private (a patient's kept
//! rows would still depend on that patient's rows only), but it truncates *before* the WHERE:
//! a patient with 300 measurements, 20 of them HbA1c, would keep 100 random rows of the 300
//! and about 7 of the HbA1c ones, so every filtered question would under-count exactly the
//! patients with many rows. Filtering first and truncating what the question selects keeps
//! all 20. The price is that a table where some patient exceeds K still pays the per-query
//! truncation, but only for the rows of the patients who can exceed K (next section).
//!
//! ## Patients listed at ingest
//!
//! Real tables have a few patients with many rows. For them, each ingest also lists its patients
//! with the most rows ([`crate::catalog::listing`]: every patient above a threshold, with their
//! rows, at most [`crate::catalog::LISTED_MAX`] of them), and the catalog adds the lists up over
//! a table's ingests ([`crate::catalog::Heavy::over`]): every patient it does not return for K
//! has at most K rows in the table, so at most K rows after any WHERE. Truncating such a
//! patient's rows to K keeps them all, so [`truncate_listed`] lets them pass as they are and runs
//! the random row number over the returned patients' rows only. The result is the relation
//! [`truncate_all`] draws, with the same distribution, row for row: each patient keeps all of
//! their rows if they have at most K, else K of them uniformly at random, with fresh randomness
//! per query. The sensitivity argument is unchanged, and a patient's kept rows still depend on
//! that patient's rows only. Which patients are listed reads the catalog, not the query's rows,
//! and changes the plan, not the answer. When the catalog cannot account for every patient at K
//! (the lists' threshold, summed over ingests, is over K; or too many patients are over K), the
//! truncation computes each patient's rows from the data ([`truncate`]).
//!
//! The listed patients' pseudonyms are in the plan's filter only: the plan is never shown, and
//! nothing a researcher or an audit reader sees names them.

use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::functions::math::expr_fn::random;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::{Expr, ExprFunctionExt, JoinType, LogicalPlan, LogicalPlanBuilder, lit};

use super::analyze::Analysis;
use crate::schema::Schemas;

/// The tables a plan reads: their policies, and what the catalog knows of their rows.
pub struct Tables<'a> {
    pub schemas: &'a Schemas,
    /// Per stored table, an upper bound on the rows any one patient has in it (from the
    /// catalog; absent when not known).
    pub rows_per_patient: &'a std::collections::BTreeMap<String, u64>,
    /// Per stored table, its patients with the most rows (from the catalog; absent when not known).
    pub heavy: &'a std::collections::BTreeMap<String, std::sync::Arc<crate::catalog::Heavy>>,
}

impl Tables<'_> {
    /// Whether truncating `table` to `k` rows per patient would keep every row.
    fn within(&self, table: &str, k: u64) -> bool {
        self.rows_per_patient.get(table).is_some_and(|m| *m <= k)
    }

    /// The patients that can have more than `k` rows in `table`, when the catalog shows that
    /// every other patient has at most `k` ([`crate::catalog::Heavy::over`]).
    fn over(&self, table: &str, k: u64) -> Option<Vec<i64>> {
        self.heavy.get(table)?.over(k)
    }
}

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
    ranked(plan, unit, false, |rn| rn.lt_eq(lit(k as i64)))
}

/// The rows of `plan` whose random row number within their patient's rows passes `keep`.
///
/// When the rows are those of one patient (`one`), the row number runs over all of them, in the
/// order of the unit (one value) and then the random one. Partitioned by the unit, a filter that
/// fixes it would let DataFusion sort by the random order alone, and a cluster's next stage would
/// not know those rows to be one patient's; ordered by it, the unit stays a column of the plan.
fn ranked(plan: LogicalPlan, unit: Expr, one: bool, keep: impl FnOnce(Expr) -> Expr) -> datafusion::error::Result<LogicalPlan> {
    let columns: Vec<Expr> = plan.schema().columns().into_iter().map(Expr::Column).collect();
    let random = random().sort(true, true);
    let rn = match one {
        true => row_number().order_by(vec![unit.sort(true, true), random]),
        false => row_number().partition_by(vec![unit]).order_by(vec![random]),
    };
    let rn = rn.build()?.alias(RN);
    LogicalPlanBuilder::from(plan).window(vec![rn])?.filter(keep(column(RN)))?.project(columns)?.build()
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
    union_of(within, truncate_all(beyond, Expr::Column(unit), k)?, relation)
}

/// The same result as [`truncate_all`] on a relation where every patient not in `heavy` has at
/// most `k` rows (the catalog's listing, see the module documentation): their rows pass as they
/// are, and only the rows of the patients in `heavy` go through the random row number. Nothing
/// is aggregated over the data. The privacy unit is never NULL (a stored table refuses it).
fn truncate_listed(plan: LogicalPlan, unit: Column, k: u32, heavy: &[i64]) -> datafusion::error::Result<LogicalPlan> {
    if heavy.is_empty() {
        return Ok(plan);
    }
    let within = listed_rows(plan.clone(), &unit, heavy, true)?;
    let truncated = ranked_listed(plan, &unit, heavy, |rn| rn.lt_eq(lit(k as i64)))?;
    union_of(within, truncated, unit.relation)
}

/// The rows of the patients in `heavy` or, `negated`, of the others.
fn listed_rows(plan: LogicalPlan, unit: &Column, heavy: &[i64], negated: bool) -> datafusion::error::Result<LogicalPlan> {
    let list: Vec<Expr> = heavy.iter().map(|p| lit(*p)).collect();
    LogicalPlanBuilder::from(plan).filter(Expr::Column(unit.clone()).in_list(list, negated))?.build()
}

/// The rows of the patients in `heavy` whose random row number within their patient's rows
/// passes `keep`: the ranking of [`truncate_listed`], and of the rows a [`Split`] drops.
fn ranked_listed(
    plan: LogicalPlan,
    unit: &Column,
    heavy: &[i64],
    keep: impl FnOnce(Expr) -> Expr,
) -> datafusion::error::Result<LogicalPlan> {
    ranked(listed_rows(plan, unit, heavy, false)?, Expr::Column(unit.clone()), heavy.len() == 1, keep)
}

/// The rows of the patients within the bound, and those of the others truncated.
fn union_of(
    within: LogicalPlan,
    truncated: LogicalPlan,
    relation: Option<datafusion::common::TableReference>,
) -> datafusion::error::Result<LogicalPlan> {
    let union = LogicalPlanBuilder::from(within).union(truncated)?;
    // A union drops qualifiers: give the table its name back for the expressions above.
    match relation {
        Some(r) => union.alias(r)?.build(),
        None => union.build(),
    }
}

pub use super::total::{STEPS, clamp, fixed_point, fixed_point_unit, fixed_point_value};

/// The source of one scope (WHERE conjuncts over inner joins on the privacy unit over
/// relations), rewritten so that one patient's rows are bounded wherever relations are joined:
///
/// - a stored table joined to anything is filtered by the WHERE conjuncts on it alone, then
///   truncated to its own `max_rows_per_unit` (filter, then truncate: the bound counts the rows
///   the question is about);
/// - a per-patient relation (a subquery grouped by the unit) has one row per patient by
///   construction; its own source is rewritten the same way, recursively;
/// - the sources of EXISTS and IN subqueries are rewritten the same way; conjuncts that refer to
///   the outer query stay where they are, for the decorrelation to find them.
///
/// Every rewrite keeps a patient's output a function of that patient's own rows.
fn bound_source(plan: &LogicalPlan, tables: &Tables<'_>) -> datafusion::error::Result<LogicalPlan> {
    let mut conjuncts: Vec<Expr> = Vec::new();
    let mut node = plan;
    while let LogicalPlan::Filter(f) = node {
        conjuncts.extend(split_conjunction(&f.predicate).into_iter().cloned());
        node = &f.input;
    }
    let mut leaves = Vec::new();
    leaf_qualifiers(node, false, &mut leaves);
    let joined = leaves.len() > 1;
    // A WHERE condition on the right side of a left join applies after the join (it removes
    // the rows it NULL-filled): it stays above.
    let leaves: Vec<String> = leaves.into_iter().filter(|(_, nullable)| !nullable).map(|(q, _)| q).collect();
    let mut pushed: Vec<(String, Vec<Expr>)> = Vec::new();
    let mut kept: Vec<Expr> = Vec::new();
    for c in conjuncts {
        let c = bound_subqueries(c, tables)?;
        match single_qualifier(&c).filter(|q| joined && leaves.contains(q)) {
            Some(q) => match pushed.iter_mut().find(|(x, _)| *x == q) {
                Some((_, v)) => v.push(c),
                None => pushed.push((q, vec![c])),
            },
            None => kept.push(c),
        }
    }
    // A public table that a conjunct selects rows of (`ca.ancestor_concept_id IN (...)`) and that
    // joins a patient table on a column (`ca.descendant_concept_id = co.condition_concept_id`)
    // selects that table's rows too: the patient table keeps only rows with a match, before it is
    // truncated (a semi-join, which repeats no row). The inner join above still does the join.
    let mut semi: Vec<(String, Expr, Expr, LogicalPlan)> = Vec::new();
    if joined {
        let mut leaf_plans = Vec::new();
        leaf_plans_of(node, &mut leaf_plans);
        for (a, b) in join_pairs(node) {
            for (patient, public) in [(&a, &b), (&b, &a)] {
                let (Some(pq), Some(uq)) = (qualifier(patient), qualifier(public)) else { continue };
                let is_public =
                    |q: &str| leaf_plans.iter().any(|(x, t, _)| x == q && tables.schemas.tables.get(t).is_some_and(|p| p.public));
                if is_public(&pq) || !is_public(&uq) || !leaves.contains(&pq) || !leaves.contains(&uq) {
                    continue;
                }
                let Some(conds) = pushed.iter().find(|(q, _)| *q == uq).and_then(|(_, v)| conjunction(v.clone())) else { continue };
                let Some((_, _, plan)) = leaf_plans.iter().find(|(x, _, _)| *x == uq) else { continue };
                let selected = LogicalPlanBuilder::from(plan.clone()).filter(conds)?.project(vec![public.clone()])?.build()?;
                semi.push((pq, patient.clone(), public.clone(), selected));
            }
        }
    }
    let rebuilt = bound_relations(node, tables, joined, &pushed, &semi)?;
    match conjunction(kept) {
        Some(p) => LogicalPlanBuilder::from(rebuilt).filter(p)?.build(),
        None => Ok(rebuilt),
    }
}

/// The qualifiers of the stored tables this scope joins (per-patient relations are not listed:
/// nothing is pushed into them, they are one row per patient already).
fn leaf_qualifiers(plan: &LogicalPlan, nullable: bool, out: &mut Vec<(String, bool)>) {
    match plan {
        LogicalPlan::Join(j) => {
            leaf_qualifiers(&j.left, nullable, out);
            leaf_qualifiers(&j.right, nullable || j.join_type != datafusion::logical_expr::JoinType::Inner, out);
        }
        LogicalPlan::Filter(f) => leaf_qualifiers(&f.input, nullable, out),
        LogicalPlan::SubqueryAlias(s) if matches!(s.input.as_ref(), LogicalPlan::TableScan(_)) => {
            out.push((s.alias.table().to_owned(), nullable))
        }
        LogicalPlan::TableScan(t) => out.push((t.table_name.table().to_owned(), nullable)),
        // A per-patient relation counts as a relation of the join; nothing is pushed into it.
        LogicalPlan::SubqueryAlias(s) => out.push((s.alias.table().to_owned(), true)),
        _ => {}
    }
}

/// Whether an expression holds a subquery or a reference to an outer query: it reads rows
/// other than those its columns name.
pub(crate) fn reads_other_rows(e: &Expr) -> bool {
    let mut found = false;
    let _ = e.apply(|x| {
        found |= matches!(x, Expr::Exists(_) | Expr::InSubquery(_) | Expr::ScalarSubquery(_) | Expr::OuterReferenceColumn(..));
        Ok(if found { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    });
    found
}

/// The one qualifier every column of a conjunct has, if it has one and no subquery or outer
/// reference: such a conjunct can filter that relation before the join.
fn single_qualifier(e: &Expr) -> Option<String> {
    if reads_other_rows(e) {
        return None;
    }
    let mut qualifiers = e.column_refs().into_iter().map(|c| c.relation.as_ref().map(|r| r.table().to_owned()));
    let first = qualifiers.next()??;
    qualifiers.all(|q| q.as_deref() == Some(first.as_str())).then_some(first)
}

type SemiJoins = [(String, Expr, Expr, LogicalPlan)];

fn bound_relations(
    plan: &LogicalPlan,
    tables: &Tables<'_>,
    joined: bool,
    pushed: &[(String, Vec<Expr>)],
    semi: &SemiJoins,
) -> datafusion::error::Result<LogicalPlan> {
    match plan {
        LogicalPlan::Join(j) => {
            let left = bound_relations(&j.left, tables, joined, pushed, semi)?;
            let right = bound_relations(&j.right, tables, joined, pushed, semi)?;
            plan.with_new_exprs(plan.expressions(), vec![left, right])
        }
        LogicalPlan::Filter(_) => bound_source(plan, tables),
        LogicalPlan::SubqueryAlias(s) => match s.input.as_ref() {
            LogicalPlan::TableScan(t) => stored(plan.clone(), s.alias.table(), t.table_name.table(), tables, joined, pushed, semi),
            inner => {
                let inner = bound_per_patient(inner, tables)?;
                LogicalPlanBuilder::from(inner).alias(s.alias.clone())?.build()
            }
        },
        LogicalPlan::TableScan(t) => stored(plan.clone(), t.table_name.table(), t.table_name.table(), tables, joined, pushed, semi),
        other => Ok(other.clone()),
    }
}

/// A stored table of a scope: filtered by its own conjuncts, and truncated to its bound when
/// the scope joins it to anything.
fn stored(
    mut plan: LogicalPlan,
    qualifier: &str,
    table: &str,
    tables: &Tables<'_>,
    joined: bool,
    pushed: &[(String, Vec<Expr>)],
    semi: &SemiJoins,
) -> datafusion::error::Result<LogicalPlan> {
    if let Some(p) = pushed.iter().find(|(q, _)| q == qualifier).and_then(|(_, v)| conjunction(v.clone())) {
        plan = LogicalPlanBuilder::from(plan).filter(p)?.build()?;
    }
    let policy =
        tables.schemas.tables.get(table).ok_or_else(|| datafusion::error::DataFusionError::Plan(format!("table {table} has no policy")))?;
    // A public table holds no patient: nothing to bound.
    if !joined || policy.public {
        return Ok(plan);
    }
    for (_, patient, public, selected) in semi.iter().filter(|(q, ..)| q == qualifier) {
        let (Expr::Column(p), Expr::Column(u)) = (patient, public) else { continue };
        plan =
            LogicalPlanBuilder::from(plan).join(selected.clone(), JoinType::LeftSemi, (vec![p.clone()], vec![u.clone()]), None)?.build()?;
    }
    let unit = Column::new(Some(qualifier), policy.privacy_unit().name.clone());
    // No patient has more than its bound in this table: truncating would keep every row (see
    // the module documentation).
    if tables.within(table, policy.max_rows_per_unit as u64) {
        return Ok(plan);
    }
    match tables.over(table, policy.max_rows_per_unit as u64) {
        Some(heavy) => truncate_listed(plan, unit, policy.max_rows_per_unit, &heavy),
        None => truncate(plan, unit, policy.max_rows_per_unit),
    }
}

/// The equi-join column pairs of a scope's joins.
fn join_pairs(plan: &LogicalPlan) -> Vec<(Expr, Expr)> {
    match plan {
        LogicalPlan::Join(j) if j.join_type == JoinType::Inner => {
            let mut out: Vec<(Expr, Expr)> = j.on.clone();
            out.extend(join_pairs(&j.left));
            out.extend(join_pairs(&j.right));
            out
        }
        LogicalPlan::Join(j) => {
            let mut out = join_pairs(&j.left);
            out.extend(join_pairs(&j.right));
            out
        }
        LogicalPlan::Filter(f) => join_pairs(&f.input),
        _ => Vec::new(),
    }
}

fn qualifier(e: &Expr) -> Option<String> {
    match e {
        Expr::Column(c) => c.relation.as_ref().map(|r| r.table().to_owned()),
        _ => None,
    }
}

/// The stored-table leaves of a scope: (qualifier, table, plan).
fn leaf_plans_of(plan: &LogicalPlan, out: &mut Vec<(String, String, LogicalPlan)>) {
    match plan {
        LogicalPlan::Join(j) => {
            leaf_plans_of(&j.left, out);
            leaf_plans_of(&j.right, out);
        }
        LogicalPlan::Filter(f) => leaf_plans_of(&f.input, out),
        LogicalPlan::SubqueryAlias(s) => {
            if let LogicalPlan::TableScan(t) = s.input.as_ref() {
                out.push((s.alias.table().to_owned(), t.table_name.table().to_owned(), plan.clone()))
            }
        }
        LogicalPlan::TableScan(t) => out.push((t.table_name.table().to_owned(), t.table_name.table().to_owned(), plan.clone())),
        _ => {}
    }
}

/// A per-patient relation: [Projection] [Filter: HAVING] Aggregate by the unit over a source,
/// or [Projection] [Filter: WHERE] over per-patient relations joined on the unit.
fn bound_per_patient(plan: &LogicalPlan, tables: &Tables<'_>) -> datafusion::error::Result<LogicalPlan> {
    match plan {
        LogicalPlan::Projection(_) | LogicalPlan::SubqueryAlias(_) => {
            let input = bound_per_patient(plan.inputs()[0], tables)?;
            plan.with_new_exprs(plan.expressions(), vec![input])
        }
        LogicalPlan::Filter(f) => {
            let input = bound_per_patient(&f.input, tables)?;
            LogicalPlanBuilder::from(input).filter(bound_subqueries(f.predicate.clone(), tables)?)?.build()
        }
        LogicalPlan::Aggregate(a) => {
            let input = bound_source(&a.input, tables)?;
            plan.with_new_exprs(plan.expressions(), vec![input])
        }
        LogicalPlan::Join(_) => bound_source(plan, tables),
        other => Ok(other.clone()),
    }
}

/// The subquery plans of EXISTS and IN predicates, their sources bounded.
fn bound_subqueries(e: Expr, tables: &Tables<'_>) -> datafusion::error::Result<Expr> {
    e.transform_up(|x| match x {
        Expr::Exists(mut ex) => {
            ex.subquery.subquery = std::sync::Arc::new(bound_subquery(&ex.subquery.subquery, tables)?);
            Ok(Transformed::yes(Expr::Exists(ex)))
        }
        Expr::InSubquery(mut i) => {
            i.subquery.subquery = std::sync::Arc::new(bound_subquery(&i.subquery.subquery, tables)?);
            Ok(Transformed::yes(Expr::InSubquery(i)))
        }
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}

/// A subquery of a predicate: projections over a per-patient relation or over a source.
fn bound_subquery(plan: &LogicalPlan, tables: &Tables<'_>) -> datafusion::error::Result<LogicalPlan> {
    let mut below = plan;
    while let LogicalPlan::Projection(p) = below {
        below = &p.input;
    }
    let mut under_filters = below;
    while let LogicalPlan::Filter(f) = under_filters {
        under_filters = &f.input;
    }
    match plan {
        LogicalPlan::Projection(p) => {
            let input = if matches!(under_filters, LogicalPlan::Aggregate(_)) {
                bound_per_patient(&p.input, tables)?
            } else {
                bound_subquery(&p.input, tables)?
            };
            plan.with_new_exprs(plan.expressions(), vec![input])
        }
        other => bound_source(other, tables),
    }
}

fn split_conjunction(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::BinaryExpr(datafusion::logical_expr::BinaryExpr { left, op: datafusion::logical_expr::Operator::And, right }) => {
            let mut v = split_conjunction(left);
            v.extend(split_conjunction(right));
            v
        }
        other => vec![other],
    }
}

fn conjunction(v: Vec<Expr>) -> Option<Expr> {
    v.into_iter().reduce(|a, b| a.and(b))
}

/// The bounded relation, and where the catalog lists the patients over the bound of a single
/// stored table, the same relation in parts for additive aggregates ([`Split`]).
pub struct Bounded {
    pub relation: LogicalPlan,
    pub split: Option<Split>,
}

/// The bounded relation of a single stored table whose patients over the bound are listed
/// ([`truncate_listed`]), in two parts: `all`, the relation without truncation, and `dropped`,
/// the rows of the listed patients that the truncation drops (a random row number within each
/// listed patient's rows, beyond the bound: the complement of what [`truncate_all`] keeps).
///
/// The bounded relation is `all` without `dropped`: the rows of patients not listed, all kept,
/// and the listed patients' rows ranked within the bound. So for an aggregate that adds up over
/// a disjoint union of rows (a count of rows or of values, an integer sum), its value over the
/// bounded relation is exactly its value over `all` minus its value over `dropped`, for the same
/// random ranking: the exact values have the same distribution as over the truncated relation,
/// and so does the release (the noise is drawn afterwards, as always). It costs less: `all` does not
/// read the privacy unit (a count over it comes from the catalog's row counts), and the listed
/// patients' rows are found through the files' page statistics where they are close together.
pub struct Split {
    pub all: LogicalPlan,
    pub dropped: LogicalPlan,
}

/// The bounded relation: one row per retained source row, with columns `__pid`, `__k{i}` for
/// each group key and `__v{j}` for each aggregate's clamped value. At most `bound` rows per patient.
pub fn bounded_relation(analysis: &Analysis, tables: &Tables<'_>, bound: u32) -> datafusion::error::Result<LogicalPlan> {
    Ok(bounded(analysis, tables, bound)?.relation)
}

/// [`bounded_relation`], with its [`Split`] where there is one.
pub fn bounded(analysis: &Analysis, tables: &Tables<'_>, bound: u32) -> datafusion::error::Result<Bounded> {
    let agg = analysis.aggregate();
    let source = bound_source(agg.input.as_ref(), tables)?;
    // Rows per patient after the join: each joined relation is truncated to its own bound (a
    // per-patient relation has one row per patient), or has no more than that already (the
    // catalog's bound), so their product bounds the join. A single stored table is not
    // truncated before, only after, unless the catalog shows that no patient has more rows
    // than the bound in it.
    // A join to a public table may repeat a patient's rows (a code with many ancestors): no
    // product holds, the rows are truncated after the joins.
    let single_stored = analysis.tables.len() == 1 && analysis.per_patient.is_empty();
    let rows_of = |qualifier: &str, p: &crate::schema::TablePolicy| -> u64 {
        let table = analysis.tables.iter().find(|(q, _)| q == qualifier).map(|(_, t)| t.as_str());
        let stored = table.and_then(|t| tables.rows_per_patient.get(t)).copied();
        match stored {
            // Not truncated before: as many rows as the data has.
            Some(m) if single_stored => m,
            _ if single_stored => u64::MAX,
            Some(m) if !analysis.per_patient.iter().any(|q| q == qualifier) => m.min(p.max_rows_per_unit as u64),
            _ => p.max_rows_per_unit as u64,
        }
    };
    let product: u64 = if !analysis.public.is_empty() {
        u64::MAX
    } else {
        analysis.policies.iter().filter(|(_, p)| !p.public).fold(1u64, |acc, (q, p)| acc.saturating_mul(rows_of(q, p)))
    };
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
        return Ok(Bounded { relation: projected, split: None });
    }
    // A single stored table: its rows per patient after the WHERE are at most its rows per
    // patient in the table, so the catalog's listing of the table applies.
    let listed = match analysis.tables.as_slice() {
        [(_, table)] if single_stored => tables.over(table, bound as u64),
        _ => None,
    };
    let pid = Column::from_name(PID);
    let Some(heavy) = listed else {
        return Ok(Bounded { relation: truncate(projected, pid, bound)?, split: None });
    };
    let relation = truncate_listed(projected.clone(), pid.clone(), bound, &heavy)?;
    if heavy.is_empty() {
        return Ok(Bounded { relation, split: None });
    }
    let dropped = ranked_listed(projected.clone(), &pid, &heavy, |rn| rn.gt(lit(bound as i64)))?;
    Ok(Bounded { relation, split: Some(Split { all: projected, dropped }) })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::catalog::MemTable;
    use datafusion::execution::context::SessionContext;
    use std::sync::Arc;

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
        // The full truncation, and the listed one with exactly the heavy patient, or with more
        // patients than those over the bound (the catalog's list may name more).
        truncates_to_the_bound(&ctx, &|| truncate(scan.clone(), unit.clone(), 5).unwrap()).await;
        truncates_to_the_bound(&ctx, &|| truncate_listed(scan.clone(), unit.clone(), 5, &[2]).unwrap()).await;
        truncates_to_the_bound(&ctx, &|| truncate_listed(scan.clone(), unit.clone(), 5, &[1, 2, 3, 99]).unwrap()).await;
        // The fast path and the full random row number agree on how many rows each patient keeps.
        let full = run(truncate_all(scan, Expr::Column(unit), 5).unwrap(), &ctx).await;
        assert_eq!(full.len(), 13);
    }

    async fn truncates_to_the_bound(ctx: &SessionContext, plan: &dyn Fn() -> LogicalPlan) {
        let mut samples = Vec::new();
        for _ in 0..5 {
            let rows = run(plan(), ctx).await;
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
    }
}
