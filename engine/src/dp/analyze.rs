//! The allow-list: which researcher SQL may run, decided from the SQL, the schemas and the
//! project's tables alone, never from data.
//!
//! Two passes. The statement itself (before planning): exactly one SELECT, no DDL/DML, COPY,
//! EXPLAIN, SET, PREPARE or CREATE EXTERNAL TABLE, no WITH, every table reference a plain name
//! of one of the project's tables. Then DataFusion's analyzed logical plan (names resolved,
//! implicit casts inserted), which must have the shape
//!
//! ```text
//! [Limit] [Sort] [Projection] [Filter: HAVING]      post-processing of noisy output
//! Aggregate: group keys, aggregates                   what gets noise
//! [Filter: WHERE]* over inner joins on the privacy unit over table scans
//! ```
//!
//! and whose every expression passes [`Analyzer::check_expr`]: no privacy unit or identifier
//! anywhere but the join keys and `COUNT(DISTINCT person_id)`, only admitted functions (each
//! evaluated with total semantics, [`super::total`]), nothing non-deterministic. Deny by
//! default: every plan node and expression not named here is refused with a rule.

use std::collections::{BTreeMap, BTreeSet};

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::expr::{AggregateFunction, Alias, ScalarFunction};
use datafusion::logical_expr::{Aggregate, BinaryExpr, Expr, JoinType, LogicalPlan, Operator};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{SetExpr, Statement};

use super::bounds::{Intervals, bare_column, literal_number, literal_string};
use super::rule::Rule;
use crate::error::{Error, Result};
use crate::schema::{ColumnPolicy, ColumnType, Role, Schemas, TablePolicy};

/// The largest SQL text accepted.
pub const MAX_SQL_BYTES: usize = 64 * 1024;

fn refuse<T>(rule: Rule, detail: impl Into<String>) -> Result<T> {
    Err(Error::refused(rule, detail))
}

/// What an aggregate computes, and so which sensitivity it has.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AggKind {
    /// `COUNT(*)`: rows.
    CountRows,
    /// `COUNT(expr)`: rows where the value is not null.
    CountValues,
    /// `COUNT(DISTINCT person_id)`: patients.
    CountPatients,
    Sum,
    Mean,
    /// Variance; `sample` divides by n − 1.
    Variance {
        sample: bool,
    },
    Stddev {
        sample: bool,
    },
    /// The q-quantile (median: 0.5).
    Quantile(f64),
}

impl AggKind {
    pub fn is_count(self) -> bool {
        matches!(self, AggKind::CountRows | AggKind::CountValues | AggKind::CountPatients)
    }
    pub fn label(self) -> String {
        match self {
            AggKind::CountRows => "count_rows".into(),
            AggKind::CountValues => "count_values".into(),
            AggKind::CountPatients => "count_patients".into(),
            AggKind::Sum => "sum".into(),
            AggKind::Mean => "mean".into(),
            AggKind::Variance { sample } => if sample { "var_samp" } else { "var_pop" }.into(),
            AggKind::Stddev { sample } => if sample { "stddev_samp" } else { "stddev_pop" }.into(),
            AggKind::Quantile(q) => format!("quantile({q})"),
        }
    }

    /// In words, for plan summaries.
    pub fn describe(self) -> String {
        match self {
            AggKind::CountRows => "count of rows".into(),
            AggKind::CountValues => "count of values".into(),
            AggKind::CountPatients => "count of patients".into(),
            AggKind::Sum => "sum".into(),
            AggKind::Mean => "mean".into(),
            AggKind::Variance { sample } => if sample { "sample variance" } else { "population variance" }.into(),
            AggKind::Stddev { sample } => if sample { "sample standard deviation" } else { "population standard deviation" }.into(),
            AggKind::Quantile(0.5) => "median".into(),
            AggKind::Quantile(q) => format!("{q}-quantile"),
        }
    }
}

/// One aggregate of the query.
#[derive(Debug, Clone)]
pub struct AggSpec {
    pub kind: AggKind,
    /// Its output name in the Aggregate node.
    pub name: String,
    /// The aggregated expression (none for `COUNT(*)` and patient counts).
    pub value: Option<Expr>,
    /// Public bounds of `value`, derived from the schema by interval arithmetic.
    pub bounds: Option<(f64, f64)>,
    /// Whether the aggregate's value is integral (its output type).
    pub output_type: DataType,
}

/// One group key.
#[derive(Debug, Clone)]
pub struct KeySpec {
    pub expr: Expr,
    pub name: String,
    /// The base columns it reads, with their policies.
    pub columns: Vec<(Column, ColumnPolicy)>,
    /// Whether its keys are public: every column it reads has a public domain (declared, or a
    /// small bounded range), or the key is an integer within `range`.
    pub public: bool,
    /// Integer bounds of the key by interval arithmetic, when few enough to release them all.
    pub range: Option<(f64, f64)>,
    /// The public table (qualifier, table) every column of the key comes from: its keys are the
    /// values the public table holds ([`super::groups::resolve_public_table_keys`]).
    pub public_source: Option<(String, String)>,
    /// The keys read from that public table.
    pub values: Option<Vec<ScalarValue>>,
}

/// The result of analysis: everything needed to bound, execute and noise the query.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// The analyzed logical plan of the whole query.
    pub plan: LogicalPlan,
    /// Its aggregate node (what gets noise; the nodes above it post-process).
    aggregate: Aggregate,
    /// Relations joined by the outer query, in plan order (qualifier, table or per-patient
    /// relation name).
    pub tables: Vec<(String, String)>,
    /// The policy of each qualifier: a stored table's, or the derived one of a per-patient
    /// relation.
    pub policies: BTreeMap<String, TablePolicy>,
    /// How the bounds of per-patient relations' columns were derived, in words.
    pub derivations: Vec<String>,
    /// The qualifiers of the outer query's per-patient relations (one row per patient each).
    pub per_patient: Vec<String>,
    /// The qualifiers of the outer query's public tables (a join to one may repeat a patient's
    /// rows: the bounded relation is truncated after the joins).
    pub public: Vec<String>,
    /// The privacy-unit column of the first table, as the plan names it.
    pub unit: Column,
    /// Rows one patient may contribute to the aggregation (after the join).
    pub rows_per_unit: u32,
    /// Groups one patient may contribute to (the bound enforced on the data).
    pub groups_per_unit: u32,
    /// Groups one patient can be in, given the above and what the keys read.
    pub keys_per_unit: u32,
    pub keys: Vec<KeySpec>,
    pub aggs: Vec<AggSpec>,
    /// The top-level conjuncts of WHERE (public: they are SQL).
    pub filters: Vec<Expr>,
}

impl Analysis {
    /// Rewrite every expression of the query into its total form ([`super::total`]): the plan
    /// (WHERE, the aggregate, and the expressions over its noisy output), the group keys, the
    /// aggregated values and the WHERE conjuncts. Names and types stay as planned.
    pub(crate) fn make_total(mut self) -> Result<Analysis> {
        let plan = super::total::make_total(self.plan)?;
        let Some(agg) = find_aggregate(&plan) else {
            return refuse(Rule::AggregateRequired, "a query must compute at least one aggregate (COUNT, SUM, AVG, ...)");
        };
        self.aggregate = agg.clone();
        let schema = agg.input.schema().clone();
        let total = |e: Expr| super::total::total_expr(e, &schema);
        for k in &mut self.keys {
            k.expr = total(k.expr.clone())?;
        }
        for a in &mut self.aggs {
            if let Some(v) = a.value.take() {
                a.value = Some(total(v)?);
            }
        }
        self.filters = self.filters.into_iter().map(total).collect::<Result<_, _>>()?;
        // What runs over the noisy output (HAVING, ORDER BY, output arithmetic) is total too.
        for node in above_aggregate(&plan) {
            super::total::check_exprs(&node.expressions())?;
        }
        self.plan = plan;
        Ok(self)
    }

    pub fn aggregate(&self) -> &Aggregate {
        &self.aggregate
    }

    /// A column as `table.column` (the table's name, whatever alias the query gave it).
    pub fn column_name(&self, c: &Column) -> String {
        let table = c.relation.as_ref().and_then(|r| self.tables.iter().find(|(q, _)| q == r.table())).map(|(_, t)| t.as_str());
        match table {
            Some(t) => format!("{t}.{}", c.name),
            None => c.name.clone(),
        }
    }

    /// An aggregated expression in words: the column it is, or the columns it reads.
    pub fn describe(&self, e: &Expr) -> String {
        if let Some(c) = bare_column(e).or_else(|| match e {
            Expr::ScalarFunction(f) if f.args.len() == 1 && f.func.name() == "total_cast" => bare_column(&f.args[0]),
            _ => None,
        }) {
            return self.column_name(c);
        }
        let mut names: Vec<String> = e.column_refs().into_iter().map(|c| self.column_name(c)).collect();
        names.sort();
        names.dedup();
        if names.is_empty() { "a constant".into() } else { format!("an expression of {}", names.join(", ")) }
    }
    /// Whether every group key has a public domain (no partition selection needed).
    pub fn public_groups(&self) -> bool {
        self.keys.iter().all(|k| k.public)
    }
    pub fn max_rows_per_table(&self, schemas: &Schemas) -> BTreeMap<String, u32> {
        self.tables.iter().filter_map(|(_, t)| schemas.tables.get(t).map(|p| (t.clone(), p.max_rows_per_unit))).collect()
    }
}

impl Analyzer<'_> {
    /// A per-patient relation: a subquery or CTE grouped by the privacy unit alone. It has
    /// exactly one row per patient whatever the patient has in the data, each row computed
    /// from that patient's rows only (the grouping is by patient), so joined on the unit it
    /// contributes one row per patient. Its columns get policies derived from the schema: the
    /// unit, and per-patient aggregates with bounds (see [`Analyzer::per_patient_aggregate`]).
    fn per_patient(&mut self, alias: &str, plan: &LogicalPlan) -> Result<()> {
        let policy = self.per_patient_policy(alias, plan)?;
        self.per_patient.push(alias.to_owned());
        self.relation(alias, alias, policy)
    }

    fn per_patient_policy(&mut self, alias: &str, plan: &LogicalPlan) -> Result<TablePolicy> {
        if contains_set_operation(plan) {
            return refuse(Rule::SetOperation, "UNION, INTERSECT and EXCEPT are not allowed, inside a subquery either");
        }
        if !plan.exists(|n| Ok(matches!(n, LogicalPlan::TableScan(_)))).unwrap_or(false) {
            return refuse(Rule::TableReference, format!("subquery {alias} must read the project's tables"));
        }
        // A CTE used under another name is the same relation.
        let mut plan = plan;
        while let LogicalPlan::SubqueryAlias(s) = plan {
            plan = &s.input;
        }
        let not_per_patient = || {
            refuse(
                Rule::PerPatientRelation,
                format!("subquery {alias} must group by the privacy unit alone (GROUP BY person_id): a per-patient relation"),
            )
        };
        let mut node = plan;
        let mut projection: Option<&datafusion::logical_expr::Projection> = None;
        let mut having: Vec<&Expr> = Vec::new();
        let agg = loop {
            match node {
                LogicalPlan::Projection(p) if projection.is_none() && having.is_empty() => {
                    projection = Some(p);
                    node = &p.input;
                }
                LogicalPlan::Filter(f) => {
                    having.push(&f.predicate);
                    node = &f.input;
                }
                LogicalPlan::Aggregate(a) => break a,
                LogicalPlan::Union(_) => {
                    return refuse(Rule::SetOperation, "UNION, INTERSECT and EXCEPT are not allowed, inside a subquery either");
                }
                LogicalPlan::Window(_) => return refuse(Rule::WindowFunction, "window functions are not allowed"),
                LogicalPlan::Limit(_) | LogicalPlan::Sort(_) => {
                    return refuse(Rule::LimitBelowAggregate, "ORDER BY, LIMIT and OFFSET may only apply to the aggregated output");
                }
                // Selected from per-patient relations without grouping: still one row per
                // patient at most (a filter only removes patients).
                LogicalPlan::SubqueryAlias(_) | LogicalPlan::Join(_) => match projection {
                    Some(p) => return self.filtered_per_patient(alias, p, &having, node),
                    None => return not_per_patient(),
                },
                _ => return not_per_patient(),
            }
        };
        let mut inner = self.inner();
        inner.source(&agg.input)?;
        let [group] = agg.group_expr.as_slice() else { return not_per_patient() };
        let Some(group) = bare_column(group) else { return not_per_patient() };
        if inner.resolve_any(group)?.1.role != Role::PrivacyUnit {
            return not_per_patient();
        }
        // The rows one patient may have inside: what per-patient counts are bounded by.
        let rows = inner.rows_product();
        let fields = agg.schema.fields();
        let mut derived: Vec<ColumnPolicy> = Vec::with_capacity(fields.len());
        derived.push(derived_column(fields[0].name(), ColumnType::Integer, Role::PrivacyUnit, None, None, "the privacy unit"));
        for (i, e) in agg.aggr_expr.iter().enumerate() {
            let field = &fields[1 + i];
            let Expr::AggregateFunction(f) = strip_alias(e) else {
                return refuse(Rule::UnsupportedAggregate, "a per-patient relation's columns must be plain aggregate calls");
            };
            derived.push(inner.per_patient_aggregate(f, field.name(), field.data_type(), rows, alias)?);
        }
        // HAVING is a per-patient condition on these columns.
        let lookup = |c: &Column| derived.iter().find(|p| p.name == c.name || c.flat_name() == p.name);
        for h in &having {
            check_upper_exprs(std::slice::from_ref(*h))?;
            for c in h.column_refs() {
                if lookup(c).is_none_or(|p| p.role == Role::PrivacyUnit) {
                    return refuse(Rule::UnitOrIdentifier, format!("HAVING in subquery {alias} may use its aggregates only"));
                }
            }
        }
        let columns = match projection {
            None => derived.clone(),
            Some(p) => {
                let mut out = Vec::with_capacity(p.expr.len());
                for (e, field) in p.expr.iter().zip(p.schema.fields()) {
                    let e = strip_alias(e);
                    if let Expr::Column(c) = e {
                        let Some(d) = lookup(c) else {
                            return refuse(Rule::UnknownColumn, format!("column {} of subquery {alias}", c.name));
                        };
                        out.push(ColumnPolicy { name: field.name().clone(), ..d.clone() });
                        continue;
                    }
                    // An expression of per-patient values (e.g. EXTRACT(YEAR FROM MIN(d))).
                    check_upper_exprs(std::slice::from_ref(e))?;
                    for c in e.column_refs() {
                        if lookup(c).is_none_or(|p| p.role == Role::PrivacyUnit) {
                            return refuse(Rule::UnitOrIdentifier, format!("subquery {alias}: the privacy unit may only be output as is"));
                        }
                    }
                    let resolve = |c: &Column| lookup(c);
                    let bounds = Intervals::new(&resolve, &[]).of(e);
                    let Some(ty) = column_type(field.data_type()) else {
                        return refuse(
                            Rule::UnsupportedExpression,
                            format!("subquery {alias}: a column of type {} is not supported", field.data_type()),
                        );
                    };
                    let why = "interval arithmetic over the relation's columns";
                    out.push(derived_column(field.name(), ty, Role::Attribute, bounds, None, why));
                }
                out
            }
        };
        let derivations = std::mem::take(&mut inner.derivations);
        self.finish_relation(alias, columns, derivations)
    }

    /// A relation selected from per-patient relations joined on the unit, filtered, without
    /// grouping: `SELECT f.person_id, f.index_date FROM f JOIN g ON ... WHERE ...`. Each
    /// relation has one row per patient, so the join has at most one and the filter keeps or
    /// drops it. Its columns keep the policies (and bounds) of what they select; expressions
    /// get bounds by interval arithmetic.
    fn filtered_per_patient(
        &mut self,
        alias: &str,
        projection: &datafusion::logical_expr::Projection,
        filters: &[&Expr],
        source: &LogicalPlan,
    ) -> Result<TablePolicy> {
        let mut inner = self.inner();
        inner.source(source)?;
        if inner.tables.iter().any(|(q, _)| !inner.per_patient.contains(q)) {
            return refuse(
                Rule::PerPatientRelation,
                format!("subquery {alias} must group by the privacy unit alone (GROUP BY person_id), or select from per-patient relations"),
            );
        }
        for f in filters {
            inner.check_expr(f, Ctx::Where)?;
            inner.conjuncts.extend(split_conjunction(f).into_iter().cloned());
        }
        let mut columns = Vec::with_capacity(projection.expr.len());
        for (e, field) in projection.expr.iter().zip(projection.schema.fields()) {
            let e = strip_alias(e);
            if let Expr::Column(c) = e {
                let (_, p) = inner.resolve_any(c)?;
                // Its bounds, narrowed by this relation's WHERE (`f.index_date >= DATE '2005-01-01'`).
                let resolve = |c: &Column| inner.resolve_any(c).ok().map(|(_, p)| p);
                let bounds = p.bounds.and_then(|_| Intervals::new(&resolve, &inner.conjuncts).of(e));
                let description = match (bounds == p.bounds, &p.description) {
                    (false, Some(d)) => Some(format!("{d}, narrowed by WHERE")),
                    (_, d) => d.clone(),
                };
                columns.push(ColumnPolicy { name: field.name().clone(), bounds: bounds.or(p.bounds), description, ..p.clone() });
                continue;
            }
            inner.check_expr(e, Ctx::Value)?;
            let resolve = |c: &Column| inner.resolve_any(c).ok().map(|(_, p)| p);
            let bounds = Intervals::new(&resolve, &inner.conjuncts).of(e);
            let Some(ty) = column_type(field.data_type()) else {
                return refuse(
                    Rule::UnsupportedExpression,
                    format!("subquery {alias}: a column of type {} is not supported", field.data_type()),
                );
            };
            columns.push(derived_column(
                field.name(),
                ty,
                Role::Attribute,
                bounds,
                None,
                "interval arithmetic over the relation's columns",
            ));
        }
        let derivations = std::mem::take(&mut inner.derivations);
        self.finish_relation(alias, columns, derivations)
    }

    /// The policy of a per-patient relation from its columns; how their bounds were derived
    /// goes to the report.
    fn finish_relation(&mut self, alias: &str, columns: Vec<ColumnPolicy>, mut derivations: Vec<String>) -> Result<TablePolicy> {
        if columns.iter().filter(|c| c.role == Role::PrivacyUnit).count() != 1 {
            return refuse(Rule::PerPatientRelation, format!("subquery {alias} must output the privacy unit once (SELECT person_id, ...)"));
        }
        for c in &columns {
            if let (Some((lo, hi)), Some(why)) = (c.bounds, c.description.as_deref()) {
                let show = |v: f64| if c.ty == ColumnType::Date { day_text(v) } else { super::release::fmt_num(v) };
                derivations.push(format!("{alias}.{}: in [{}, {}] ({why})", c.name, show(lo), show(hi)));
            }
        }
        for d in derivations {
            // A CTE used in several places is derived once.
            if !self.derivations.contains(&d) {
                self.derivations.push(d);
            }
        }
        Ok(TablePolicy {
            name: alias.to_owned(),
            description: Some(format!("per-patient relation {alias}")),
            file: std::path::PathBuf::new(),
            max_rows_per_unit: 1,
            max_groups_per_unit: 1,
            public: false,
            columns,
        })
    }

    /// One column of a per-patient relation, and its bounds:
    /// - `MIN(x)`, `MAX(x)`, `AVG(x)`: within the bounds of x (each is one of x's values, or
    ///   their mean);
    /// - `COUNT(*)`, `COUNT(x)`, `COUNT(DISTINCT x)`: in [0, R], R the rows one patient may have
    ///   in the relation's source (the product of its tables' `max_rows_per_unit`);
    /// - `SUM(x)`: in [R·min(lo, 0), R·max(hi, 0)];
    /// - `BOOL_OR`, `BOOL_AND`: a boolean.
    ///
    /// A count over more rows than R is not truncated here (the relation has one row per patient
    /// whatever it counts); where such a column is aggregated or grouped on, the bound is what
    /// its values are clamped to, or the public domain of its keys.
    fn per_patient_aggregate(&self, f: &AggregateFunction, name: &str, ty: &DataType, rows: u64, relation: &str) -> Result<ColumnPolicy> {
        let fname = f.func.name().to_ascii_lowercase();
        let p = &f.params;
        if p.filter.is_some() || !p.order_by.is_empty() {
            return refuse(Rule::AggregateFilter, "FILTER and ORDER BY inside an aggregate are not supported: put the condition in WHERE");
        }
        let column_ty = column_type(ty)
            .ok_or_else(|| Error::refused(Rule::UnsupportedAggregate, format!("{relation}: an aggregate of type {ty} is not supported")))?;
        let arg = p.args.first();
        let resolve = |c: &Column| self.resolve_any(c).ok().map(|(_, p)| p);
        let of = |e: &Expr| Intervals::new(&resolve, &self.conjuncts).of(e);
        let r = (rows < u32::MAX as u64).then_some(rows as f64);
        let (bounds, domain, why): (Option<(f64, f64)>, Option<crate::schema::Domain>, String) = match fname.as_str() {
            "count" => {
                if let Some(a) = arg
                    && !matches!(a, Expr::Literal(..))
                {
                    let unit = bare_column(a).and_then(|c| self.resolve_any(c).ok()).is_some_and(|(_, p)| p.role == Role::PrivacyUnit);
                    if !unit {
                        self.check_expr(a, Ctx::Value)?;
                    }
                }
                (r.map(|r| (0.0, r)), None, format!("a count of at most the {rows} rows a patient may have"))
            }
            "min" | "max" | "avg" | "mean" | "sum" => {
                let Some(a) = arg else { return refuse(Rule::UnsupportedAggregate, format!("{fname} takes one argument")) };
                if p.distinct {
                    return refuse(Rule::UnsupportedAggregate, format!("{}(DISTINCT ...) is not supported", fname.to_uppercase()));
                }
                self.check_expr(a, Ctx::Value)?;
                let b = of(a);
                let domain = if matches!(fname.as_str(), "min" | "max") {
                    bare_column(a).and_then(|c| resolve(c)).and_then(|p| p.domain.clone())
                } else {
                    None
                };
                match fname.as_str() {
                    "sum" => (
                        b.zip(r).map(|((lo, hi), r)| (r * lo.min(0.0), r * hi.max(0.0))),
                        None,
                        format!("a sum of at most {rows} values of {}", self.describe_here(a)),
                    ),
                    other => (b, domain, format!("{other} of {}", self.describe_here(a))),
                }
            }
            "bool_or" | "bool_and" => {
                if let Some(a) = arg {
                    self.check_expr(a, Ctx::Value)?;
                }
                (None, None, format!("{fname} per patient"))
            }
            other => {
                return refuse(
                    Rule::UnsupportedAggregate,
                    format!("{other} is not a per-patient aggregate (MIN, MAX, COUNT, COUNT(DISTINCT ...), SUM, AVG, BOOL_OR, BOOL_AND)"),
                );
            }
        };
        Ok(derived_column(name, column_ty, Role::Attribute, bounds, domain, &why))
    }

    /// A column or expression of this scope, in words (table names, not aliases).
    fn describe_here(&self, e: &Expr) -> String {
        if let Some(c) = bare_column(e) {
            return match self.resolve_any(c) {
                Ok((q, _)) => format!("{}.{}", self.tables.iter().find(|(x, _)| *x == q).map_or(q.as_str(), |(_, t)| t.as_str()), c.name),
                Err(_) => c.name.clone(),
            };
        }
        let mut names: Vec<String> = e.column_refs().into_iter().map(|c| self.describe_here(&Expr::Column(c.clone()))).collect();
        names.sort();
        names.dedup();
        format!("an expression of {}", names.join(", "))
    }

    /// `EXISTS (SELECT ... FROM t WHERE t.person_id = outer.person_id AND ...)`: a semi-join on
    /// the unit. The subquery is correlated exactly once on the privacy units; its other
    /// conditions may compare its columns with the outer row's (`x.drug_exposure_start_date <
    /// f.index_date`). Since the equality of units restricts the inner rows to the outer row's
    /// patient, whether a row is kept depends on that patient's rows alone.
    fn exists(&self, plan: &LogicalPlan) -> Result<()> {
        if contains_set_operation(plan) {
            return refuse(Rule::SetOperation, "UNION, INTERSECT and EXCEPT are not allowed, inside a subquery either");
        }
        let mut node = plan;
        while let LogicalPlan::Projection(p) = node {
            node = &p.input;
        }
        let LogicalPlan::Filter(f) = node else {
            return refuse(Rule::Correlation, "EXISTS must be correlated on the privacy unit: WHERE t.person_id = outer.person_id");
        };
        let mut inner = self.inner();
        inner.source(&f.input)?;
        let mut correlated = 0;
        for c in split_conjunction(&f.predicate) {
            if !has_outer_reference(c) {
                inner.check_expr(c, Ctx::Where)?;
                continue;
            }
            let unit_pair = match c {
                Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) => match (left.as_ref(), right.as_ref()) {
                    (Expr::Column(h), Expr::OuterReferenceColumn(_, t)) | (Expr::OuterReferenceColumn(_, t), Expr::Column(h)) => {
                        Some((h, t))
                    }
                    _ => None,
                },
                _ => None,
            };
            let is_unit = |(h, t): (&Column, &Column)| -> Result<bool> {
                let inner_unit = inner.resolve_any(h)?.1.role == Role::PrivacyUnit;
                let outer_unit = self.resolve_any(t).or_else(|_| self.resolve_outer(t))?.1.role == Role::PrivacyUnit;
                Ok(inner_unit && outer_unit)
            };
            match unit_pair {
                Some(pair) if is_unit(pair)? => correlated += 1,
                // Any other condition on the outer row: its outer columns must be releasable
                // (never the unit or an identifier), the rest checked as inner WHERE.
                _ => {
                    let mut outer_ok = Ok(());
                    let _ = c.apply(|x| {
                        if let Expr::OuterReferenceColumn(_, col) = x {
                            outer_ok = self.resolve_any(col).or_else(|_| self.resolve_outer(col)).and_then(|(_, p)| {
                                if p.is_releasable() {
                                    Ok(())
                                } else {
                                    refuse(Rule::UnitOrIdentifier, format!("column {} is the privacy unit or an identifier", col.name))
                                }
                            });
                        }
                        Ok(if outer_ok.is_ok() { TreeNodeRecursion::Continue } else { TreeNodeRecursion::Stop })
                    });
                    outer_ok?;
                    let local = c.clone().transform_up(|x| match x {
                        // The outer value stands as a literal of its type for the checks.
                        Expr::OuterReferenceColumn(f, _) => Ok(datafusion::common::tree_node::Transformed::yes(Expr::Literal(
                            ScalarValue::try_from(f.data_type()).unwrap_or(ScalarValue::Null),
                            None,
                        ))),
                        other => Ok(datafusion::common::tree_node::Transformed::no(other)),
                    });
                    let local = local.map_err(|e| Error::internal(e.to_string()))?.data;
                    inner.check_expr(&local, Ctx::Where)?;
                }
            }
        }
        if correlated != 1 {
            return refuse(
                Rule::Correlation,
                "EXISTS must be correlated exactly once, on the privacy unit (t.person_id = outer.person_id)",
            );
        }
        Ok(())
    }

    /// `person_id IN (SELECT person_id FROM ...)`: a set of patients, uncorrelated.
    fn patient_set(&self, plan: &LogicalPlan) -> Result<()> {
        if contains_set_operation(plan) {
            return refuse(Rule::SetOperation, "UNION, INTERSECT and EXCEPT are not allowed, inside a subquery either");
        }
        if plan_has_outer_reference(plan) {
            return refuse(Rule::Correlation, "IN (subquery) may not refer to the outer query; use EXISTS correlated on the privacy unit");
        }
        let LogicalPlan::Projection(p) = plan else {
            return refuse(Rule::Correlation, "IN (subquery) must select the privacy unit: SELECT person_id FROM ...");
        };
        let [e] = p.expr.as_slice() else {
            return refuse(Rule::Correlation, "IN (subquery) must select the privacy unit alone");
        };
        let mut inner = self.inner();
        let mut below = p.input.as_ref();
        while let LogicalPlan::Filter(f) = below {
            below = &f.input;
        }
        let unit = if matches!(below, LogicalPlan::Aggregate(_)) {
            // GROUP BY person_id [HAVING ...]: a per-patient relation whose unit is selected.
            let policy = inner.per_patient_policy("subquery", plan)?;
            policy.columns.iter().all(|c| c.role == Role::PrivacyUnit)
        } else {
            inner.source(&p.input)?;
            bare_column(e).map(|c| inner.resolve_any(c)).transpose()?.is_some_and(|(_, p)| p.role == Role::PrivacyUnit)
        };
        if !unit {
            return refuse(Rule::Correlation, "IN (subquery) must select the privacy unit: SELECT person_id FROM ...");
        }
        Ok(())
    }

    /// A column of the enclosing scope (for a correlation).
    fn resolve_outer(&self, c: &Column) -> Result<(String, &ColumnPolicy)> {
        let outer = self.outer.ok_or_else(|| Error::refused(Rule::Correlation, "a reference to an outer query that is not there"))?;
        let found = match &c.relation {
            Some(r) => outer.get(r.table()).and_then(|t| t.column(&c.name)).map(|p| (r.table().to_owned(), p)),
            None => outer.iter().find_map(|(q, t)| t.column(&c.name).map(|p| (q.clone(), p))),
        };
        found.ok_or_else(|| Error::refused(Rule::UnknownColumn, format!("column {} of the outer query", c.name)))
    }
}

fn strip_alias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => strip_alias(&a.expr),
        other => other,
    }
}

fn has_outer_reference(e: &Expr) -> bool {
    let mut found = false;
    let _ = e.apply(|x| {
        found |= matches!(x, Expr::OuterReferenceColumn(..));
        Ok(if found { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    });
    found
}

fn contains_set_operation(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|n| {
        found |= matches!(n, LogicalPlan::Union(_));
        Ok(if found { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    });
    found
}

fn plan_has_outer_reference(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|n| {
        let _ = n.apply_expressions(|e| {
            found |= has_outer_reference(e);
            Ok(TreeNodeRecursion::Continue)
        });
        Ok(if found { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    });
    found
}

/// The schema type of a derived column.
fn column_type(ty: &DataType) -> Option<ColumnType> {
    Some(match ty {
        t if t.is_integer() => ColumnType::Integer,
        t if t.is_floating() => ColumnType::Float,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ColumnType::Varchar(None),
        DataType::Date32 => ColumnType::Date,
        DataType::Timestamp(..) => ColumnType::Datetime,
        DataType::Boolean => ColumnType::Boolean,
        _ => return None,
    })
}

/// A column of a per-patient relation. Its description holds how its bounds were derived.
fn derived_column(
    name: &str,
    ty: ColumnType,
    role: Role,
    bounds: Option<(f64, f64)>,
    domain: Option<crate::schema::Domain>,
    why: &str,
) -> ColumnPolicy {
    ColumnPolicy {
        name: name.to_owned(),
        ty,
        role,
        nullable: true,
        source: None,
        generalize: None,
        pseudonymize: false,
        check: None,
        bounds,
        on_out_of_bounds: crate::schema::OutOfBounds::Keep,
        domain,
        description: Some(why.to_owned()),
    }
}

/// A day number as a date.
fn day_text(day: f64) -> String {
    chrono::DateTime::from_timestamp(day as i64 * 86_400, 0).map_or_else(|| day.to_string(), |d| d.format("%Y-%m-%d").to_string())
}

/// Whether a plan sorts or limits rows before they are aggregated (the order would have to
/// come from the data).
fn ordered_or_limited(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply(|n| {
        found |= matches!(n, LogicalPlan::Limit(_) | LogicalPlan::Sort(_));
        Ok(if found { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    });
    found
}

/// The nodes above the aggregate (post-processing of its noisy output), top first.
pub(crate) fn above_aggregate(plan: &LogicalPlan) -> Vec<&LogicalPlan> {
    let mut out = Vec::new();
    let mut node = plan;
    while !matches!(node, LogicalPlan::Aggregate(_)) {
        out.push(node);
        match node.inputs().first() {
            Some(input) => node = input,
            None => break,
        }
    }
    out
}

pub(crate) fn find_aggregate(plan: &LogicalPlan) -> Option<&Aggregate> {
    match plan {
        LogicalPlan::Aggregate(a) => Some(a),
        LogicalPlan::Projection(_) | LogicalPlan::Filter(_) | LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => {
            find_aggregate(plan.inputs()[0])
        }
        _ => None,
    }
}

/// Checks on the parsed statement, before any planning.
pub fn check_statement(sql: &str, statements: &[DFStatement]) -> Result<()> {
    if sql.len() > MAX_SQL_BYTES {
        return refuse(Rule::SqlTooLong, format!("the SQL text is {} bytes; the limit is {MAX_SQL_BYTES}", sql.len()));
    }
    let [statement] = statements else {
        return refuse(Rule::SingleSelect, format!("exactly one SELECT statement per query, found {}", statements.len()));
    };
    let DFStatement::Statement(s) = statement else {
        return refuse(Rule::SingleSelect, "only SELECT queries are answered (no CREATE EXTERNAL TABLE, COPY or EXPLAIN)");
    };
    let Statement::Query(q) = s.as_ref() else {
        return refuse(Rule::SingleSelect, "only SELECT queries are answered (no DDL, DML, EXPLAIN, SET or PREPARE)");
    };
    if q.with.as_ref().is_some_and(|w| w.recursive) {
        return refuse(Rule::RecursiveCte, "WITH RECURSIVE is not supported");
    }
    match q.body.as_ref() {
        SetExpr::Select(_) => Ok(()),
        SetExpr::SetOperation { .. } => refuse(Rule::SetOperation, "UNION, INTERSECT and EXCEPT are not allowed: run one query per part"),
        SetExpr::Query(_) => refuse(Rule::Subquery, "subqueries are not allowed"),
        _ => refuse(Rule::SingleSelect, "only SELECT queries are answered"),
    }
}

/// Checks the table names a statement references against the project.
pub fn check_tables(references: &[datafusion::common::TableReference], schemas: &Schemas, project_tables: &[String]) -> Result<()> {
    for r in references {
        let datafusion::common::TableReference::Bare { table } = r else {
            return refuse(Rule::TableReference, format!("table {r} must be a plain table name of the project"));
        };
        // Public tables (the vocabularies) are every project's.
        if project_tables.iter().any(|t| t == table.as_ref()) || schemas.tables.get(table.as_ref()).is_some_and(|p| p.public) {
            continue;
        }
        if schemas.tables.contains_key(table.as_ref()) {
            return refuse(
                Rule::TableNotInProject,
                format!("table {table} is not among this project's tables ({})", project_tables.join(", ")),
            );
        }
        return refuse(
            Rule::TableReference,
            format!("{table:?} is not a table of the catalog (file paths, URLs and table functions are not allowed)"),
        );
    }
    Ok(())
}

/// The plan analyzer. One analyzer is one scope: the outer query, or the inside of a
/// per-patient relation or of a subquery predicate, each with its own tables.
pub struct Analyzer<'a> {
    pub schemas: &'a Schemas,
    /// qualifier (table name or alias) -> table policy (a stored table's, or the derived policy
    /// of a per-patient relation)
    qualifiers: BTreeMap<String, TablePolicy>,
    tables: Vec<(String, String)>,
    /// Top-level conjuncts of WHERE, used to tighten a column's bounds.
    conjuncts: Vec<Expr>,
    /// How each bound of a per-patient relation's column was derived, in words.
    derivations: Vec<String>,
    /// The qualifiers of this scope's per-patient relations.
    per_patient: Vec<String>,
    /// The enclosing scope, for the correlation of an EXISTS subquery.
    outer: Option<&'a BTreeMap<String, TablePolicy>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Where,
    Key,
    Value,
}

impl Ctx {
    fn place(self) -> &'static str {
        match self {
            Ctx::Where => "WHERE",
            Ctx::Key => "GROUP BY",
            Ctx::Value => "an aggregate's argument",
        }
    }
}

impl<'a> Analyzer<'a> {
    pub fn new(schemas: &'a Schemas) -> Analyzer<'a> {
        Analyzer {
            schemas,
            qualifiers: BTreeMap::new(),
            tables: Vec::new(),
            conjuncts: Vec::new(),
            derivations: Vec::new(),
            per_patient: Vec::new(),
            outer: None,
        }
    }

    /// A fresh scope for a subquery (its tables are its own).
    fn inner(&self) -> Analyzer<'_> {
        Analyzer {
            schemas: self.schemas,
            qualifiers: BTreeMap::new(),
            tables: Vec::new(),
            conjuncts: Vec::new(),
            derivations: Vec::new(),
            per_patient: Vec::new(),
            outer: Some(&self.qualifiers),
        }
    }

    /// Analyze an analyzed (type-coerced) logical plan.
    pub fn analyze(mut self, plan: LogicalPlan, max_groups: Option<u32>) -> Result<Analysis> {
        // Upper nodes: post-processing of the noisy aggregate output.
        let mut node = &plan;
        let aggregate = loop {
            match node {
                LogicalPlan::Aggregate(a) => break a,
                LogicalPlan::Projection(p) => {
                    check_upper_exprs(&p.expr)?;
                    node = &p.input;
                }
                LogicalPlan::Filter(f) => {
                    check_upper_exprs(std::slice::from_ref(&f.predicate))?;
                    node = &f.input;
                }
                LogicalPlan::Sort(s) => {
                    let exprs: Vec<Expr> = s.expr.iter().map(|e| e.expr.clone()).collect();
                    check_upper_exprs(&exprs)?;
                    node = &s.input;
                }
                LogicalPlan::Limit(l) => node = &l.input,
                LogicalPlan::Window(_) => return refuse(Rule::WindowFunction, "window functions are not allowed"),
                LogicalPlan::Distinct(_) => {
                    return refuse(Rule::AggregateRequired, "SELECT DISTINCT lists values: use GROUP BY with an aggregate");
                }
                LogicalPlan::Union(_) => return refuse(Rule::SetOperation, "UNION, INTERSECT and EXCEPT are not allowed"),
                LogicalPlan::Subquery(_) => return refuse(Rule::Subquery, "subqueries are not allowed"),
                LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
                    return refuse(Rule::TableReference, "a query must aggregate over the project's tables");
                }
                LogicalPlan::TableScan(_) | LogicalPlan::Join(_) | LogicalPlan::SubqueryAlias(_) => {
                    return refuse(
                        Rule::AggregateRequired,
                        "every output column must be an aggregate or a GROUP BY key (no SELECT *, no row-level columns)",
                    );
                }
                _ => return refuse(Rule::SingleSelect, "only SELECT queries over the project's tables are answered"),
            }
        };

        // The source: filters over inner joins on the privacy unit over scans.
        self.source(&aggregate.input)?;
        let unit = self.unit()?;

        // Group keys.
        let mut keys = Vec::new();
        for (i, e) in aggregate.group_expr.iter().enumerate() {
            if matches!(e, Expr::GroupingSet(_)) {
                return refuse(Rule::UnsupportedGrouping, "GROUPING SETS, CUBE and ROLLUP are not supported");
            }
            self.check_expr(e, Ctx::Key)?;
            let mut columns = Vec::new();
            for c in e.column_refs() {
                let (_, policy) = self.resolve(c, Ctx::Key)?;
                columns.push((c.clone(), policy.clone()));
            }
            if columns.is_empty() {
                return refuse(Rule::UnsupportedGrouping, "a GROUP BY key must read a column");
            }
            // A boolean key (`x.d IS NOT NULL`, `n >= 2`) has the public domain {false, true}.
            let field = aggregate.schema.field(i);
            if field.data_type() == &DataType::Boolean {
                keys.push(KeySpec {
                    expr: e.clone(),
                    name: field.name().clone(),
                    columns,
                    public: true,
                    range: Some((0.0, 1.0)),
                    public_source: None,
                    values: None,
                });
                continue;
            }
            // A key read from one public table alone (`c.concept_name`) releases every value
            // that table holds, narrowed by WHERE on it: public data, not the patients'.
            let sources: BTreeSet<String> = e.column_refs().into_iter().filter_map(|c| self.resolve_any(c).ok().map(|(q, _)| q)).collect();
            if let [q] = sources.iter().collect::<Vec<_>>().as_slice()
                && self.is_public(q)
            {
                let table = self.tables.iter().find(|(x, _)| x == *q).map_or((*q).clone(), |(_, t)| t.clone());
                keys.push(KeySpec {
                    expr: e.clone(),
                    name: field.name().clone(),
                    columns,
                    public: true,
                    range: None,
                    public_source: Some(((*q).clone(), table)),
                    values: None,
                });
                continue;
            }
            // An integer key with bounds by interval arithmetic (ages at an index date, months
            // since it) has the integers of its bounds as a public domain, whatever columns
            // it reads.
            let resolve = |c: &Column| self.resolve_any(c).ok().map(|(_, p)| p);
            let range = Intervals::new(&resolve, &self.conjuncts)
                .of(e)
                .map(|(lo, hi)| (lo.ceil(), hi.floor()))
                .filter(|(lo, hi)| field.data_type().is_integer() && hi - lo < crate::schema::MAX_DOMAIN as f64);
            // The cross product of the columns' domains, when it is small enough to evaluate the
            // key over, gives exactly the keys it can take; otherwise its integer range.
            let product = columns
                .iter()
                .map(|(_, p)| p.public_domain_size())
                .try_fold(1usize, |acc, n| n.map(|n| acc.saturating_mul(n)))
                .filter(|n| *n <= 10 * crate::schema::MAX_DOMAIN);
            let range = range.filter(|_| product.is_none());
            let public = range.is_some() || product.is_some();
            keys.push(KeySpec { expr: e.clone(), name: field.name().clone(), columns, public, range, public_source: None, values: None });
        }

        // Aggregates.
        let mut aggs = Vec::new();
        for (i, e) in aggregate.aggr_expr.iter().enumerate() {
            let field = aggregate.schema.field(aggregate.group_expr.len() + i);
            let inner = match e {
                Expr::Alias(Alias { expr, .. }) => expr.as_ref(),
                other => other,
            };
            let Expr::AggregateFunction(f) = inner else {
                return refuse(Rule::UnsupportedAggregate, "aggregates must be plain aggregate calls");
            };
            aggs.push(self.aggregate(f, field.name().clone(), field.data_type().clone())?);
        }
        if aggs.is_empty() {
            return refuse(Rule::AggregateRequired, "a query must compute at least one aggregate (COUNT, SUM, AVG, ...)");
        }

        // Contribution bounds. After the join, one patient's rows are bounded by the largest
        // per-table bound (each table is truncated to its own bound before the join, and the
        // joined rows are truncated again to this bound).
        let policy = |q: &String| self.qualifiers.get(q).filter(|p| !p.public);
        let rows_per_unit = self.tables.iter().filter_map(|(q, _)| policy(q)).map(|p| p.max_rows_per_unit).max().unwrap_or(1).max(1);
        // Groups: each table's default allows at most its own row bound; after a join the
        // largest default applies (a patient's K rows fall in at most K groups anyway).
        let schema_groups = self.tables.iter().filter_map(|(q, _)| policy(q)).map(|p| p.max_groups_per_unit).max().unwrap_or(1).max(1);
        let groups_per_unit = match max_groups {
            Some(0) => return refuse(Rule::MaxGroups, "the groups-per-patient bound must be at least 1"),
            Some(g) => g.min(schema_groups),
            None => schema_groups,
        };
        // Keys read only from tables bounded to one row per patient (person, death) take one
        // value per patient: each table is truncated to that one row before any join, and a
        // single-table query is truncated to it. A patient is then in exactly one group.
        let single_valued = keys.iter().all(|k| {
            k.columns.iter().all(|(c, _)| {
                c.relation.as_ref().and_then(|r| self.qualifiers.get(r.table())).is_some_and(|t| !t.public && t.max_rows_per_unit == 1)
            }) && !self.tables.iter().any(|(q, _)| self.is_public(q))
        });
        let keys_per_unit = if keys.is_empty() || single_valued { 1 } else { groups_per_unit.min(rows_per_unit) };
        let tables = self.tables.clone();
        let filters = self.conjuncts.clone();
        let aggregate = aggregate.clone();
        let policies = self.qualifiers.clone();
        let derivations = self.derivations.clone();
        let per_patient = self.per_patient.clone();
        let public: Vec<String> = self.tables.iter().filter(|(q, _)| self.is_public(q)).map(|(q, _)| q.clone()).collect();
        Ok(Analysis {
            public,
            plan: plan.clone(),
            aggregate,
            tables,
            policies,
            derivations,
            per_patient,
            unit,
            rows_per_unit,
            groups_per_unit,
            keys_per_unit,
            keys,
            aggs,
            filters,
        })
    }

    /// The privacy unit of this scope's first relation, as the plan names it.
    fn unit(&self) -> Result<Column> {
        let (q, _) = self.tables.iter().find(|(q, _)| !self.is_public(q)).ok_or_else(|| {
            Error::refused(
                Rule::TableReference,
                "a query must read the project's patient tables (public tables alone are read with `secretum vocabulary search` or GET /v1/concepts)",
            )
        })?;
        let policy = self.qualifiers.get(q).ok_or_else(|| Error::internal(format!("relation {q} without a policy")))?;
        Ok(Column::new(Some(q.clone()), policy.privacy_unit().name.clone()))
    }

    /// The rows one patient may have in this scope's relation (the product of what each joined
    /// relation may hold; 1 for a per-patient relation).
    fn rows_product(&self) -> u64 {
        self.tables
            .iter()
            .filter_map(|(q, _)| self.qualifiers.get(q))
            .filter(|p| !p.public)
            .fold(1u64, |acc, p| acc.saturating_mul(p.max_rows_per_unit as u64))
    }

    /// Whether a qualifier names a public table (no patient in it).
    fn is_public(&self, qualifier: &str) -> bool {
        self.qualifiers.get(qualifier).is_some_and(|p| p.public)
    }

    fn source(&mut self, plan: &LogicalPlan) -> Result<()> {
        match plan {
            LogicalPlan::Filter(f) => {
                self.source(&f.input)?;
                self.check_expr(&f.predicate, Ctx::Where)?;
                self.conjuncts.extend(split_conjunction(&f.predicate).into_iter().cloned());
                Ok(())
            }
            LogicalPlan::Join(j) => {
                // A left join keeps every row of the left side and adds the right side's
                // matches on the unit, or NULLs: a patient's rows are still bounded by the
                // product of what each side may hold (at least one row per left row).
                if !matches!(j.join_type, JoinType::Inner | JoinType::Left) {
                    return refuse(Rule::JoinOnUnit, "only inner and left joins on the privacy unit are allowed");
                }
                let before = self.tables.len();
                self.source(&j.left)?;
                let left: BTreeSet<String> = self.tables[before..].iter().map(|(q, _)| q.clone()).collect();
                self.source(&j.right)?;
                let mut pairs: Vec<(Expr, Expr)> = j.on.clone();
                if let Some(filter) = &j.filter {
                    for conjunct in split_conjunction(filter) {
                        match conjunct {
                            Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) => pairs.push((*left.clone(), *right.clone())),
                            _ => return refuse(Rule::JoinOnUnit, "a join condition may only equate the tables' privacy units"),
                        }
                    }
                }
                let mut linked = false;
                for (a, b) in &pairs {
                    let (Some(a), Some(b)) = (bare_column(a), bare_column(b)) else {
                        return refuse(Rule::JoinOnUnit, "a join condition may only equate the tables' privacy units");
                    };
                    let (qa, pa) = self.resolve_any(a)?;
                    let (qb, pb) = self.resolve_any(b)?;
                    match (self.is_public(&qa), self.is_public(&qb)) {
                        // Patient tables join on the privacy unit only.
                        (false, false) => {
                            if pa.role != Role::PrivacyUnit || pb.role != Role::PrivacyUnit {
                                return refuse(
                                    Rule::JoinOnUnit,
                                    format!("joins must be on the privacy unit, not on {} = {}", a.name, b.name),
                                );
                            }
                        }
                        // A public table joins a patient table on a releasable column (a concept
                        // id, a code): never on the unit or an identifier, which would let public
                        // rows stand for patients.
                        (true, false) | (false, true) => {
                            let patient = if self.is_public(&qa) { pb } else { pa };
                            if !patient.is_releasable() {
                                return refuse(
                                    Rule::UnitOrIdentifier,
                                    format!("a public table may be joined on a patient table's attributes, not on {}", patient.name),
                                );
                            }
                        }
                        (true, true) => {}
                    }
                    linked |= left.contains(&qa) != left.contains(&qb);
                }
                if !linked {
                    return refuse(
                        Rule::JoinOnUnit,
                        "tables must be joined on the privacy unit (USING (person_id) or ON a.person_id = b.person_id)",
                    );
                }
                Ok(())
            }
            LogicalPlan::SubqueryAlias(s) => match s.input.as_ref() {
                LogicalPlan::TableScan(t) => self.scan(s.alias.table(), t.table_name.table()),
                inner if ordered_or_limited(inner) => {
                    refuse(Rule::LimitBelowAggregate, "ORDER BY, LIMIT and OFFSET may only apply to the aggregated output")
                }
                inner => self.per_patient(s.alias.table(), inner),
            },
            LogicalPlan::TableScan(t) => self.scan(t.table_name.table(), t.table_name.table()),
            LogicalPlan::Limit(_) => refuse(Rule::LimitBelowAggregate, "LIMIT and OFFSET may only apply to the aggregated output"),
            LogicalPlan::Sort(_) => refuse(Rule::LimitBelowAggregate, "ORDER BY may only apply to the aggregated output"),
            LogicalPlan::Window(_) => refuse(Rule::WindowFunction, "window functions are not allowed"),
            LogicalPlan::Union(_) => refuse(Rule::SetOperation, "UNION, INTERSECT and EXCEPT are not allowed"),
            LogicalPlan::Aggregate(_) | LogicalPlan::Distinct(_) => refuse(Rule::Subquery, "nested aggregation is not allowed"),
            LogicalPlan::Projection(_) | LogicalPlan::Subquery(_) => refuse(Rule::Subquery, "subqueries are not allowed"),
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
                refuse(Rule::TableReference, "a query must read the project's tables")
            }
            _ => refuse(Rule::SingleSelect, "unsupported query shape"),
        }
    }

    fn scan(&mut self, qualifier: &str, table: &str) -> Result<()> {
        let Some(policy) = self.schemas.tables.get(table) else {
            return refuse(Rule::TableReference, format!("{table:?} is not a table of the catalog"));
        };
        self.relation(qualifier, table, policy.clone())
    }

    /// Add a relation (a stored table, or a per-patient relation) under its qualifier.
    fn relation(&mut self, qualifier: &str, name: &str, policy: TablePolicy) -> Result<()> {
        // A public table holds no patient: joining it twice (concept for two codes) is harmless.
        let public = policy.public;
        if self.qualifiers.insert(qualifier.to_owned(), policy).is_some()
            || (!public && self.tables.iter().any(|(q, t)| t == name && !self.is_public(q)))
        {
            return refuse(Rule::SelfJoin, format!("table {name} appears twice: self-joins are not allowed"));
        }
        self.tables.push((qualifier.to_owned(), name.to_owned()));
        Ok(())
    }

    /// Resolve a column to its table and policy, whatever its role.
    fn resolve_any(&self, c: &Column) -> Result<(String, &ColumnPolicy)> {
        let found: Vec<(String, &ColumnPolicy)> = match &c.relation {
            Some(r) => {
                self.qualifiers.get(r.table()).and_then(|t| t.column(&c.name)).map(|p| (r.table().to_owned(), p)).into_iter().collect()
            }
            None => self.qualifiers.iter().filter_map(|(q, t)| t.column(&c.name).map(|p| (q.clone(), p))).collect(),
        };
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => refuse(Rule::UnknownColumn, format!("column {} is not a stored column of the query's tables", c.name)),
            many => {
                // Ambiguous: the strictest role wins.
                let p = many.iter().find(|(_, p)| !p.is_releasable()).unwrap_or(&many[0]);
                Ok(p.clone())
            }
        }
    }

    /// Resolve a column that is used as data: it must be releasable.
    fn resolve(&self, c: &Column, ctx: Ctx) -> Result<(String, &ColumnPolicy)> {
        let (q, p) = self.resolve_any(c)?;
        if !p.is_releasable() {
            let what = if p.role == Role::PrivacyUnit { "the privacy unit" } else { "an identifier" };
            return refuse(
                Rule::UnitOrIdentifier,
                format!(
                    "column {} is {what}: it may not appear in {} (only COUNT(DISTINCT {}) and join keys may use it)",
                    c.name,
                    ctx.place(),
                    c.name
                ),
            );
        }
        Ok((q, p))
    }

    fn aggregate(&self, f: &AggregateFunction, name: String, output_type: DataType) -> Result<AggSpec> {
        let fname = f.func.name().to_ascii_lowercase();
        let p = &f.params;
        if p.filter.is_some() {
            return refuse(Rule::AggregateFilter, "FILTER (WHERE ...) on an aggregate is not supported: put the condition in WHERE");
        }
        let spec =
            |kind, value: Option<Expr>, bounds| AggSpec { kind, name: name.clone(), value, bounds, output_type: output_type.clone() };
        match fname.as_str() {
            "min" | "max" => refuse(
                Rule::MinMax,
                format!("{} on raw values releases a record's value: use MEDIAN or APPROX_PERCENTILE_CONT", fname.to_uppercase()),
            ),
            "count" => {
                if !p.order_by.is_empty() || p.args.len() != 1 {
                    return refuse(Rule::UnsupportedAggregate, "COUNT takes one argument");
                }
                let arg = &p.args[0];
                if p.distinct {
                    if let Some(c) = bare_column(arg) {
                        let (_, policy) = self.resolve_any(c)?;
                        if policy.role == Role::PrivacyUnit {
                            return Ok(spec(AggKind::CountPatients, None, None));
                        }
                    }
                    return refuse(Rule::CountDistinct, "COUNT(DISTINCT ...) is only allowed on the privacy unit (patients)");
                }
                if let Expr::Literal(v, _) = arg
                    && !v.is_null()
                {
                    return Ok(spec(AggKind::CountRows, None, None));
                }
                self.check_expr(arg, Ctx::Value)?;
                Ok(spec(AggKind::CountValues, Some(arg.clone()), None))
            }
            "sum" | "avg" | "mean" | "var" | "var_samp" | "var_sample" | "var_pop" | "variance" | "variance_samp" | "variance_pop"
            | "stddev" | "stddev_samp" | "stddev_pop" | "median" | "approx_median" => {
                if p.distinct {
                    return refuse(Rule::UnsupportedAggregate, format!("{}(DISTINCT ...) is not supported", fname.to_uppercase()));
                }
                if !p.order_by.is_empty() || p.args.len() != 1 {
                    return refuse(Rule::UnsupportedAggregate, format!("{} takes one argument", fname.to_uppercase()));
                }
                let kind = match fname.as_str() {
                    "sum" => AggKind::Sum,
                    "avg" | "mean" => AggKind::Mean,
                    "var_pop" | "variance_pop" => AggKind::Variance { sample: false },
                    "var" | "var_samp" | "var_sample" | "variance" | "variance_samp" => AggKind::Variance { sample: true },
                    "stddev_pop" => AggKind::Stddev { sample: false },
                    "stddev" | "stddev_samp" => AggKind::Stddev { sample: true },
                    _ => AggKind::Quantile(0.5),
                };
                let value = self.bounded_value(&p.args[0], &fname)?;
                Ok(spec(kind, Some(value.0), Some(value.1)))
            }
            "approx_percentile_cont" | "percentile_cont" | "quantile_cont" => {
                if p.distinct {
                    return refuse(Rule::UnsupportedAggregate, "DISTINCT quantiles are not supported");
                }
                let (value, q) = if let Some(o) = p.order_by.first() {
                    // WITHIN GROUP (ORDER BY value): the percentile is the literal argument.
                    (o.expr.clone(), p.args.iter().find(|a| literal_number(a).is_some()).or(p.args.get(1)).or(p.args.first()))
                } else {
                    (p.args.first().cloned().unwrap_or(Expr::Literal(ScalarValue::Null, None)), p.args.get(1))
                };
                let Some(q) = q.and_then(literal_number).filter(|q| (0.0..=1.0).contains(q)) else {
                    return refuse(Rule::UnsupportedAggregate, "the percentile must be a literal between 0 and 1");
                };
                let value = self.bounded_value(&value, &fname)?;
                Ok(spec(AggKind::Quantile(q), Some(value.0), Some(value.1)))
            }
            other => refuse(
                Rule::UnsupportedAggregate,
                format!(
                    "{other} is not a supported aggregate (COUNT, COUNT(DISTINCT person_id), SUM, AVG, VARIANCE, STDDEV, MEDIAN, APPROX_PERCENTILE_CONT)"
                ),
            ),
        }
    }

    fn bounded_value(&self, e: &Expr, fname: &str) -> Result<(Expr, (f64, f64))> {
        self.check_expr(e, Ctx::Value)?;
        let resolve = |c: &Column| self.resolve_any(c).ok().map(|(_, p)| p);
        let Some(bounds) = Intervals::new(&resolve, &self.conjuncts).of(e) else {
            return refuse(
                Rule::UnboundedValue,
                format!(
                    "{} needs public bounds on its argument: aggregate a numeric column whose schema declares bounds, or arithmetic of such columns and literals",
                    fname.to_uppercase()
                ),
            );
        };
        Ok((e.clone(), bounds))
    }

    /// The expression allow-list.
    fn check_expr(&self, e: &Expr, ctx: Ctx) -> Result<()> {
        let rec = |x: &Expr| self.check_expr(x, ctx);
        match e {
            Expr::Alias(a) => rec(&a.expr),
            Expr::Column(c) => self.resolve(c, ctx).map(|_| ()),
            Expr::Literal(..) => Ok(()),
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                use Operator::*;
                match op {
                    // Division and modulo by zero, and overflow, give NULL (total semantics).
                    Eq | NotEq | Lt | LtEq | Gt | GtEq | And | Or | Plus | Minus | Multiply | Divide | Modulo | IsDistinctFrom
                    | IsNotDistinctFrom | StringConcat | LikeMatch | ILikeMatch | NotLikeMatch | NotILikeMatch => {}
                    _ => return refuse(Rule::UnsupportedExpression, format!("operator {op} is not allowed")),
                }
                rec(left)?;
                rec(right)
            }
            Expr::Like(l) | Expr::SimilarTo(l) => {
                rec(&l.expr)?;
                rec(&l.pattern)
            }
            Expr::Not(x)
            | Expr::IsNotNull(x)
            | Expr::IsNull(x)
            | Expr::IsTrue(x)
            | Expr::IsFalse(x)
            | Expr::IsUnknown(x)
            | Expr::IsNotTrue(x)
            | Expr::IsNotFalse(x)
            | Expr::IsNotUnknown(x)
            | Expr::Negative(x) => rec(x),
            Expr::Between(b) => {
                rec(&b.expr)?;
                rec(&b.low)?;
                rec(&b.high)
            }
            Expr::InList(l) => {
                rec(&l.expr)?;
                l.list.iter().try_for_each(rec)
            }
            Expr::Case(c) => {
                if let Some(x) = &c.expr {
                    rec(x)?;
                }
                for (w, t) in &c.when_then_expr {
                    rec(w)?;
                    rec(t)?;
                }
                if let Some(x) = &c.else_expr {
                    rec(x)?;
                }
                Ok(())
            }
            // Casts convert or give NULL (TRY_CAST semantics); which target types are admitted
            // is decided with the total rewrite.
            Expr::Cast(c) => rec(&c.expr),
            Expr::TryCast(c) => rec(&c.expr),
            Expr::ScalarFunction(ScalarFunction { func, args }) => {
                let name = func.name().to_ascii_lowercase();
                match name.as_str() {
                    "random" | "uuid" | "now" | "current_date" | "current_time" | "current_timestamp" => {
                        return refuse(Rule::Nondeterministic, format!("{name}() is not deterministic"));
                    }
                    // DataFusion types these from their first argument: it must be a literal.
                    "date_trunc" | "date_part" => {
                        if args.first().is_none_or(|a| literal_string(a).is_none()) {
                            return refuse(
                                Rule::LiteralArgument,
                                format!("{name}'s first argument must be a literal ('year', 'month', ...)"),
                            );
                        }
                    }
                    n if super::total::admitted_function(n) => {}
                    _ => {
                        return refuse(
                            Rule::UnsupportedFunction,
                            format!("function {name} is not on the allow-list (`secretum functions` lists every admitted function)"),
                        );
                    }
                }
                args.iter().try_for_each(rec)
            }
            Expr::AggregateFunction(_) => {
                refuse(Rule::UnsupportedAggregate, "aggregates may not be nested or used outside the SELECT list and HAVING")
            }
            Expr::WindowFunction(_) => refuse(Rule::WindowFunction, "window functions are not allowed"),
            // Cohort filters: semi- and anti-joins on the privacy unit.
            Expr::Exists(x) if ctx == Ctx::Where => self.exists(&x.subquery.subquery),
            Expr::InSubquery(x) if ctx == Ctx::Where => {
                let unit = bare_column(&x.expr).map(|c| self.resolve_any(c)).transpose()?;
                if !unit.is_some_and(|(_, p)| p.role == Role::PrivacyUnit) {
                    return refuse(Rule::Correlation, "IN (subquery) filters patients: write `person_id IN (SELECT person_id FROM ...)`");
                }
                self.patient_set(&x.subquery.subquery)
            }
            Expr::Exists(_) | Expr::InSubquery(_) => refuse(Rule::Subquery, "EXISTS and IN (subquery) may only filter patients in WHERE"),
            Expr::ScalarSubquery(_) | Expr::SetComparison(_) => refuse(Rule::Subquery, "scalar subqueries and ANY/ALL are not allowed"),
            Expr::OuterReferenceColumn(..) => {
                refuse(Rule::Correlation, "a subquery may refer to the outer query only by `t.person_id = outer.person_id` in EXISTS")
            }
            Expr::Placeholder(_) => refuse(Rule::UnsupportedExpression, "placeholders are not allowed"),
            _ => refuse(Rule::UnsupportedExpression, format!("expression {e} is not allowed")),
        }
    }
}

/// Expressions above the aggregate see only noisy outputs; they may not hide subqueries or
/// window functions.
fn check_upper_exprs(exprs: &[Expr]) -> Result<()> {
    for e in exprs {
        let mut bad = None;
        let _ = e.apply(|x| {
            match x {
                Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) | Expr::SetComparison(_) => bad = Some("subquery"),
                Expr::WindowFunction(_) => bad = Some("window-function"),
                Expr::ScalarFunction(f) if matches!(f.func.name(), "random" | "uuid" | "now") => bad = Some("nondeterministic"),
                _ => {}
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        });
        match bad {
            Some("subquery") => return refuse(Rule::Subquery, "subqueries are not allowed"),
            Some("window-function") => return refuse(Rule::WindowFunction, "window functions are not allowed"),
            Some(_) => return refuse(Rule::Nondeterministic, "non-deterministic functions are not allowed"),
            None => {}
        }
    }
    Ok(())
}

fn split_conjunction(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::And, right }) => {
            let mut v = split_conjunction(left);
            v.extend(split_conjunction(right));
            v
        }
        other => vec![other],
    }
}
