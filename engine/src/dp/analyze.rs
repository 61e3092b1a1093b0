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

use super::bounds::{self, Intervals, bare_column, literal_number, literal_string};
use super::rule::Rule;
use crate::error::{Error, Result};
use crate::schema::{ColumnPolicy, Role, Schemas, TablePolicy};

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
    /// Whether every column it reads has a public domain (declared, or a small bounded range).
    pub public: bool,
}

/// The result of analysis: everything needed to bound, execute and noise the query.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// The analyzed logical plan of the whole query.
    pub plan: LogicalPlan,
    /// Its aggregate node (what gets noise; the nodes above it post-process).
    aggregate: Aggregate,
    /// Base tables read, in plan order (qualifier, table).
    pub tables: Vec<(String, String)>,
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
    if q.with.is_some() {
        return refuse(Rule::Subquery, "WITH (common table expressions) is not supported: write one SELECT over the tables");
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
        if project_tables.iter().any(|t| t == table.as_ref()) {
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

/// The plan analyzer.
pub struct Analyzer<'a> {
    pub schemas: &'a Schemas,
    /// qualifier (table name or alias) -> table policy
    qualifiers: BTreeMap<String, &'a TablePolicy>,
    tables: Vec<(String, String)>,
    /// Top-level conjuncts of WHERE, used to tighten a column's bounds.
    conjuncts: Vec<Expr>,
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
        Analyzer { schemas, qualifiers: BTreeMap::new(), tables: Vec::new(), conjuncts: Vec::new() }
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
                LogicalPlan::Subquery(_) | LogicalPlan::SubqueryAlias(_) => return refuse(Rule::Subquery, "subqueries are not allowed"),
                LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
                    return refuse(Rule::TableReference, "a query must aggregate over the project's tables");
                }
                LogicalPlan::TableScan(_) | LogicalPlan::Join(_) => {
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
        let (first_q, first_t) = self.tables[0].clone();
        let first = self.schemas.tables[&first_t].privacy_unit().name.clone();
        let unit = Column::new(Some(first_q), first);

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
            let public = columns.iter().all(|(_, p)| p.public_domain_size().is_some());
            let name = aggregate.schema.field(i).name().clone();
            keys.push(KeySpec { expr: e.clone(), name, columns, public });
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
        let rows_per_unit = self.tables.iter().map(|(_, t)| self.schemas.tables[t].max_rows_per_unit).max().unwrap_or(1).max(1);
        // Groups: each table's default allows at most its own row bound; after a join the
        // largest default applies (a patient's K rows fall in at most K groups anyway).
        let schema_groups = self.tables.iter().map(|(_, t)| self.schemas.tables[t].max_groups_per_unit).max().unwrap_or(1).max(1);
        let groups_per_unit = match max_groups {
            Some(0) => return refuse(Rule::MaxGroups, "the groups-per-patient bound must be at least 1"),
            Some(g) => g.min(schema_groups),
            None => schema_groups,
        };
        // Keys read only from tables bounded to one row per patient (person, death) take one
        // value per patient: each table is truncated to that one row before any join, and a
        // single-table query is truncated to it. A patient is then in exactly one group.
        let single_valued = keys.iter().all(|k| {
            k.columns
                .iter()
                .all(|(c, _)| c.relation.as_ref().and_then(|r| self.qualifiers.get(r.table())).is_some_and(|t| t.max_rows_per_unit == 1))
        });
        let keys_per_unit = if keys.is_empty() || single_valued { 1 } else { groups_per_unit.min(rows_per_unit) };
        let tables = self.tables.clone();
        let filters = self.conjuncts.clone();
        let aggregate = aggregate.clone();
        Ok(Analysis { plan: plan.clone(), aggregate, tables, unit, rows_per_unit, groups_per_unit, keys_per_unit, keys, aggs, filters })
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
                if j.join_type != JoinType::Inner {
                    return refuse(Rule::JoinOnUnit, "only inner joins on the privacy unit are allowed");
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
                    if pa.role != Role::PrivacyUnit || pb.role != Role::PrivacyUnit {
                        return refuse(Rule::JoinOnUnit, format!("joins must be on the privacy unit, not on {} = {}", a.name, b.name));
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
                _ => refuse(Rule::Subquery, "subqueries are not allowed in FROM"),
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
        if self.qualifiers.insert(qualifier.to_owned(), policy).is_some() || self.tables.iter().any(|(_, t)| t == table) {
            return refuse(Rule::SelfJoin, format!("table {table} appears twice: self-joins are not allowed"));
        }
        self.tables.push((qualifier.to_owned(), table.to_owned()));
        Ok(())
    }

    /// Resolve a column to its table and policy, whatever its role.
    fn resolve_any(&self, c: &Column) -> Result<(String, &'a ColumnPolicy)> {
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
    fn resolve(&self, c: &Column, ctx: Ctx) -> Result<(String, &'a ColumnPolicy)> {
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
        let Some(bounds) = Intervals::new(&resolve).of(e).map(|b| bounds::tighten(e, b, &self.conjuncts)) else {
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
            Expr::Exists(_) | Expr::InSubquery(_) | Expr::ScalarSubquery(_) | Expr::SetComparison(_) | Expr::OuterReferenceColumn(..) => {
                refuse(Rule::Subquery, "subqueries are not allowed")
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
