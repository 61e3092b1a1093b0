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
//! anywhere but the join keys and `COUNT(DISTINCT person_id)`, no function that can fail on a
//! data value (so that an error can never reveal one), nothing non-deterministic.

use std::collections::{BTreeMap, BTreeSet};

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::logical_expr::expr::{AggregateFunction, Alias, ScalarFunction};
use datafusion::logical_expr::{Aggregate, BinaryExpr, Expr, JoinType, LogicalPlan, Operator};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{SetExpr, Statement};

use crate::schema::{ColumnPolicy, ColumnType, Role, Schemas, TablePolicy};

/// The largest SQL text accepted.
pub const MAX_SQL_BYTES: usize = 64 * 1024;

/// A refusal: the rule broken, in words that never contain data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused by rule `{rule}`: {message}")]
pub struct Refusal {
    pub rule: &'static str,
    pub message: String,
}

pub(crate) fn refuse<T>(rule: &'static str, message: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal { rule, message: message.into() })
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
    pub(crate) fn make_total(mut self) -> Result<Analysis, Refusal> {
        let plan = super::total::make_total(self.plan)?;
        let Some(agg) = find_aggregate(&plan) else {
            return refuse("aggregate-required", "a query must compute at least one aggregate (COUNT, SUM, AVG, ...)");
        };
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
        let mut node = &plan;
        while !matches!(node, LogicalPlan::Aggregate(_)) {
            super::total::check_exprs(&node.expressions())?;
            node = node.inputs()[0];
        }
        self.plan = plan;
        Ok(self)
    }

    pub fn aggregate(&self) -> &Aggregate {
        find_aggregate(&self.plan).expect("analysis found it")
    }
    /// Whether every group key has a public domain (no partition selection needed).
    pub fn public_groups(&self) -> bool {
        self.keys.iter().all(|k| k.public)
    }
    pub fn max_rows_per_table(&self, schemas: &Schemas) -> BTreeMap<String, u32> {
        self.tables.iter().filter_map(|(_, t)| schemas.tables.get(t).map(|p| (t.clone(), p.max_rows_per_unit))).collect()
    }
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
pub fn check_statement(sql: &str, statements: &[DFStatement]) -> Result<(), Refusal> {
    if sql.len() > MAX_SQL_BYTES {
        return refuse("sql-too-long", format!("the SQL text is {} bytes; the limit is {MAX_SQL_BYTES}", sql.len()));
    }
    let [statement] = statements else {
        return refuse("single-select", format!("exactly one SELECT statement per query, found {}", statements.len()));
    };
    let DFStatement::Statement(s) = statement else {
        return refuse("single-select", "only SELECT queries are answered (no CREATE EXTERNAL TABLE, COPY or EXPLAIN)");
    };
    let Statement::Query(q) = s.as_ref() else {
        return refuse("single-select", "only SELECT queries are answered (no DDL, DML, EXPLAIN, SET or PREPARE)");
    };
    if q.with.is_some() {
        return refuse("subquery", "WITH (common table expressions) is not supported: write one SELECT over the tables");
    }
    match q.body.as_ref() {
        SetExpr::Select(_) => Ok(()),
        SetExpr::SetOperation { .. } => refuse("set-operation", "UNION, INTERSECT and EXCEPT are not allowed: run one query per part"),
        SetExpr::Query(_) => refuse("subquery", "subqueries are not allowed"),
        _ => refuse("single-select", "only SELECT queries are answered"),
    }
}

/// Checks the table names a statement references against the project.
pub fn check_tables(
    references: &[datafusion::common::TableReference],
    schemas: &Schemas,
    project_tables: &[String],
) -> Result<(), Refusal> {
    for r in references {
        let datafusion::common::TableReference::Bare { table } = r else {
            return refuse("table-reference", format!("table {r} must be a plain table name of the project"));
        };
        if project_tables.iter().any(|t| t == table.as_ref()) {
            continue;
        }
        if schemas.tables.contains_key(table.as_ref()) {
            return refuse(
                "table-not-in-project",
                format!("table {table} is not among this project's tables ({})", project_tables.join(", ")),
            );
        }
        return refuse(
            "table-reference",
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
    pub fn analyze(mut self, plan: LogicalPlan, max_groups: Option<u32>) -> Result<Analysis, Refusal> {
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
                LogicalPlan::Window(_) => return refuse("window-function", "window functions are not allowed"),
                LogicalPlan::Distinct(_) => {
                    return refuse("aggregate-required", "SELECT DISTINCT lists values: use GROUP BY with an aggregate");
                }
                LogicalPlan::Union(_) => return refuse("set-operation", "UNION, INTERSECT and EXCEPT are not allowed"),
                LogicalPlan::Subquery(_) | LogicalPlan::SubqueryAlias(_) => return refuse("subquery", "subqueries are not allowed"),
                LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
                    return refuse("table-reference", "a query must aggregate over the project's tables");
                }
                LogicalPlan::TableScan(_) | LogicalPlan::Join(_) => {
                    return refuse(
                        "aggregate-required",
                        "every output column must be an aggregate or a GROUP BY key (no SELECT *, no row-level columns)",
                    );
                }
                _ => return refuse("single-select", "only SELECT queries over the project's tables are answered"),
            }
        };

        // The source: filters over inner joins on the privacy unit over scans.
        self.source(&aggregate.input)?;
        let input_schema = aggregate.input.schema().clone();
        let (first_q, first_t) = self.tables[0].clone();
        let first = self.schemas.tables[&first_t].privacy_unit().name.clone();
        let unit = Column::new(Some(first_q), first);

        // Group keys.
        let mut keys = Vec::new();
        for (i, e) in aggregate.group_expr.iter().enumerate() {
            if matches!(e, Expr::GroupingSet(_)) {
                return refuse("unsupported-grouping", "GROUPING SETS, CUBE and ROLLUP are not supported");
            }
            self.check_expr(e, Ctx::Key, &input_schema)?;
            let mut columns = Vec::new();
            for c in e.column_refs() {
                let (_, policy) = self.resolve(c, Ctx::Key)?;
                columns.push((c.clone(), policy.clone()));
            }
            if columns.is_empty() {
                return refuse("unsupported-grouping", "a GROUP BY key must read a column");
            }
            let public = columns.iter().all(|(_, p)| public_domain_size(p).is_some());
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
                return refuse("unsupported-aggregate", "aggregates must be plain aggregate calls");
            };
            aggs.push(self.aggregate(f, field.name().clone(), field.data_type().clone(), &input_schema)?);
        }
        if aggs.is_empty() {
            return refuse("aggregate-required", "a query must compute at least one aggregate (COUNT, SUM, AVG, ...)");
        }

        // Contribution bounds. After the join, one patient's rows are bounded by the largest
        // per-table bound (each table is truncated to its own bound before the join, and the
        // joined rows are truncated again to this bound).
        let rows_per_unit = self.tables.iter().map(|(_, t)| self.schemas.tables[t].max_rows_per_unit).max().unwrap_or(1).max(1);
        // Groups: each table's default allows at most its own row bound; after a join the
        // largest default applies (a patient's K rows fall in at most K groups anyway).
        let schema_groups = self.tables.iter().map(|(_, t)| self.schemas.tables[t].max_groups_per_unit).max().unwrap_or(1).max(1);
        let groups_per_unit = match max_groups {
            Some(0) => return refuse("max-groups", "the groups-per-patient bound must be at least 1"),
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
        Ok(Analysis { plan: plan.clone(), tables, unit, rows_per_unit, groups_per_unit, keys_per_unit, keys, aggs, filters })
    }

    fn source(&mut self, plan: &LogicalPlan) -> Result<(), Refusal> {
        match plan {
            LogicalPlan::Filter(f) => {
                self.source(&f.input)?;
                self.check_expr(&f.predicate, Ctx::Where, f.input.schema())?;
                self.conjuncts.extend(split_conjunction(&f.predicate).into_iter().cloned());
                Ok(())
            }
            LogicalPlan::Join(j) => {
                if j.join_type != JoinType::Inner {
                    return refuse("join-on-unit", "only inner joins on the privacy unit are allowed");
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
                            _ => return refuse("join-on-unit", "a join condition may only equate the tables' privacy units"),
                        }
                    }
                }
                let mut linked = false;
                for (a, b) in &pairs {
                    let (Some(a), Some(b)) = (bare_column(a), bare_column(b)) else {
                        return refuse("join-on-unit", "a join condition may only equate the tables' privacy units");
                    };
                    let (qa, pa) = self.resolve_any(a)?;
                    let (qb, pb) = self.resolve_any(b)?;
                    if pa.role != Role::PrivacyUnit || pb.role != Role::PrivacyUnit {
                        return refuse("join-on-unit", format!("joins must be on the privacy unit, not on {} = {}", a.name, b.name));
                    }
                    linked |= left.contains(&qa) != left.contains(&qb);
                }
                if !linked {
                    return refuse(
                        "join-on-unit",
                        "tables must be joined on the privacy unit (USING (person_id) or ON a.person_id = b.person_id)",
                    );
                }
                Ok(())
            }
            LogicalPlan::SubqueryAlias(s) => match s.input.as_ref() {
                LogicalPlan::TableScan(t) => self.scan(s.alias.table(), t.table_name.table()),
                _ => refuse("subquery", "subqueries are not allowed in FROM"),
            },
            LogicalPlan::TableScan(t) => self.scan(t.table_name.table(), t.table_name.table()),
            LogicalPlan::Limit(_) => refuse("limit-below-aggregate", "LIMIT and OFFSET may only apply to the aggregated output"),
            LogicalPlan::Sort(_) => refuse("limit-below-aggregate", "ORDER BY may only apply to the aggregated output"),
            LogicalPlan::Window(_) => refuse("window-function", "window functions are not allowed"),
            LogicalPlan::Union(_) => refuse("set-operation", "UNION, INTERSECT and EXCEPT are not allowed"),
            LogicalPlan::Aggregate(_) | LogicalPlan::Distinct(_) => refuse("subquery", "nested aggregation is not allowed"),
            LogicalPlan::Projection(_) | LogicalPlan::Subquery(_) => refuse("subquery", "subqueries are not allowed"),
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => refuse("table-reference", "a query must read the project's tables"),
            _ => refuse("single-select", "unsupported query shape"),
        }
    }

    fn scan(&mut self, qualifier: &str, table: &str) -> Result<(), Refusal> {
        let Some(policy) = self.schemas.tables.get(table) else {
            return refuse("table-reference", format!("{table:?} is not a table of the catalog"));
        };
        if self.qualifiers.insert(qualifier.to_owned(), policy).is_some() || self.tables.iter().any(|(_, t)| t == table) {
            return refuse("self-join", format!("table {table} appears twice: self-joins are not allowed"));
        }
        self.tables.push((qualifier.to_owned(), table.to_owned()));
        Ok(())
    }

    /// Resolve a column to its table and policy, whatever its role.
    fn resolve_any(&self, c: &Column) -> Result<(String, &'a ColumnPolicy), Refusal> {
        let found: Vec<(String, &ColumnPolicy)> = match &c.relation {
            Some(r) => {
                self.qualifiers.get(r.table()).and_then(|t| t.column(&c.name)).map(|p| (r.table().to_owned(), p)).into_iter().collect()
            }
            None => self.qualifiers.iter().filter_map(|(q, t)| t.column(&c.name).map(|p| (q.clone(), p))).collect(),
        };
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => refuse("unknown-column", format!("column {} is not a stored column of the query's tables", c.name)),
            many => {
                // Ambiguous: the strictest role wins.
                let p = many.iter().find(|(_, p)| !p.is_releasable()).unwrap_or(&many[0]);
                Ok(p.clone())
            }
        }
    }

    /// Resolve a column that is used as data: it must be releasable.
    fn resolve(&self, c: &Column, ctx: Ctx) -> Result<(String, &'a ColumnPolicy), Refusal> {
        let (q, p) = self.resolve_any(c)?;
        if !p.is_releasable() {
            let what = if p.role == Role::PrivacyUnit { "the privacy unit" } else { "an identifier" };
            return refuse(
                "unit-or-identifier",
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

    fn aggregate(&self, f: &AggregateFunction, name: String, output_type: DataType, schema: &DFSchema) -> Result<AggSpec, Refusal> {
        let fname = f.func.name().to_ascii_lowercase();
        let p = &f.params;
        if p.filter.is_some() {
            return refuse("aggregate-filter", "FILTER (WHERE ...) on an aggregate is not supported: put the condition in WHERE");
        }
        let spec =
            |kind, value: Option<Expr>, bounds| AggSpec { kind, name: name.clone(), value, bounds, output_type: output_type.clone() };
        match fname.as_str() {
            "min" | "max" => refuse(
                "min-max",
                format!("{} on raw values releases a record's value: use MEDIAN or APPROX_PERCENTILE_CONT", fname.to_uppercase()),
            ),
            "count" => {
                if !p.order_by.is_empty() || p.args.len() != 1 {
                    return refuse("unsupported-aggregate", "COUNT takes one argument");
                }
                let arg = &p.args[0];
                if p.distinct {
                    if let Some(c) = bare_column(arg) {
                        let (_, policy) = self.resolve_any(c)?;
                        if policy.role == Role::PrivacyUnit {
                            return Ok(spec(AggKind::CountPatients, None, None));
                        }
                    }
                    return refuse("count-distinct", "COUNT(DISTINCT ...) is only allowed on the privacy unit (patients)");
                }
                if let Expr::Literal(v, _) = arg
                    && !v.is_null()
                {
                    return Ok(spec(AggKind::CountRows, None, None));
                }
                self.check_expr(arg, Ctx::Value, schema)?;
                Ok(spec(AggKind::CountValues, Some(arg.clone()), None))
            }
            "sum" | "avg" | "mean" | "var" | "var_samp" | "var_sample" | "var_pop" | "variance" | "variance_samp" | "variance_pop"
            | "stddev" | "stddev_samp" | "stddev_pop" | "median" | "approx_median" => {
                if p.distinct {
                    return refuse("unsupported-aggregate", format!("{}(DISTINCT ...) is not supported", fname.to_uppercase()));
                }
                if !p.order_by.is_empty() || p.args.len() != 1 {
                    return refuse("unsupported-aggregate", format!("{} takes one argument", fname.to_uppercase()));
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
                let value = self.bounded_value(&p.args[0], schema, &fname)?;
                Ok(spec(kind, Some(value.0), Some(value.1)))
            }
            "approx_percentile_cont" | "percentile_cont" | "quantile_cont" => {
                if p.distinct {
                    return refuse("unsupported-aggregate", "DISTINCT quantiles are not supported");
                }
                let (value, q) = if let Some(o) = p.order_by.first() {
                    // WITHIN GROUP (ORDER BY value): the percentile is the literal argument.
                    (o.expr.clone(), p.args.iter().find(|a| literal_number(a).is_some()).or(p.args.get(1)).or(p.args.first()))
                } else {
                    (p.args.first().cloned().unwrap_or(Expr::Literal(ScalarValue::Null, None)), p.args.get(1))
                };
                let Some(q) = q.and_then(literal_number).filter(|q| (0.0..=1.0).contains(q)) else {
                    return refuse("unsupported-aggregate", "the percentile must be a literal between 0 and 1");
                };
                let value = self.bounded_value(&value, schema, &fname)?;
                Ok(spec(AggKind::Quantile(q), Some(value.0), Some(value.1)))
            }
            other => refuse(
                "unsupported-aggregate",
                format!(
                    "{other} is not a supported aggregate (COUNT, COUNT(DISTINCT person_id), SUM, AVG, VARIANCE, STDDEV, MEDIAN, APPROX_PERCENTILE_CONT)"
                ),
            ),
        }
    }

    fn bounded_value(&self, e: &Expr, schema: &DFSchema, fname: &str) -> Result<(Expr, (f64, f64)), Refusal> {
        self.check_expr(e, Ctx::Value, schema)?;
        let Some(bounds) = self.bounds(e).map(|b| self.tighten(e, b)) else {
            return refuse(
                "unbounded-value",
                format!(
                    "{} needs public bounds on its argument: aggregate a numeric column whose schema declares bounds, or arithmetic of such columns and literals",
                    fname.to_uppercase()
                ),
            );
        };
        Ok((e.clone(), bounds))
    }

    /// Narrow a column's bounds with WHERE conditions on it (`x BETWEEN a AND b`, `x >= a`,
    /// `x < b`, ...): rows outside are filtered out, and whatever bounds we pick the values are
    /// clamped into them, so narrower bounds only lower the sensitivity.
    fn tighten(&self, e: &Expr, (mut lo, mut hi): (f64, f64)) -> (f64, f64) {
        let target = strip_cast(e);
        if !matches!(target, Expr::Column(_)) {
            return (lo, hi);
        }
        let is_target = |x: &Expr| strip_cast(x) == target;
        for c in &self.conjuncts {
            match c {
                Expr::Between(b) if !b.negated && is_target(&b.expr) => {
                    if let (Some(l), Some(h)) = (literal_number(&b.low), literal_number(&b.high)) {
                        lo = lo.max(l);
                        hi = hi.min(h);
                    }
                }
                Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                    let (op, v) = if is_target(left) {
                        (*op, literal_number(right))
                    } else if is_target(right) {
                        match op.swap() {
                            Some(o) => (o, literal_number(left)),
                            None => continue,
                        }
                    } else {
                        continue;
                    };
                    let Some(v) = v else { continue };
                    match op {
                        Operator::Gt | Operator::GtEq => lo = lo.max(v),
                        Operator::Lt | Operator::LtEq => hi = hi.min(v),
                        Operator::Eq => {
                            lo = lo.max(v);
                            hi = hi.min(v);
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        if lo > hi { (hi, hi) } else { (lo, hi) }
    }

    /// Bounds that may be known on one side only: GREATEST(x, a) ≥ a whatever x is, and
    /// LEAST(x, b) ≤ b. NULL arguments are ignored by both functions, so they move no bound.
    fn half_bounds(&self, e: &Expr) -> (Option<f64>, Option<f64>) {
        if let Some(v) = literal_number(e) {
            return (Some(v), Some(v));
        }
        let e = match e {
            Expr::Alias(a) => a.expr.as_ref(),
            other => other,
        };
        if let Expr::ScalarFunction(ScalarFunction { func, args }) = e
            && matches!(func.name(), "greatest" | "least")
        {
            let parts: Vec<(Option<f64>, Option<f64>)> = args.iter().map(|a| self.half_bounds(a)).collect();
            let known = |v: Vec<Option<f64>>, pick: fn(f64, f64) -> f64| v.into_iter().flatten().reduce(pick);
            let all = |v: Vec<Option<f64>>, pick: fn(f64, f64) -> f64| {
                v.into_iter().collect::<Option<Vec<f64>>>().and_then(|v| v.into_iter().reduce(pick))
            };
            let los: Vec<Option<f64>> = parts.iter().map(|p| p.0).collect();
            let his: Vec<Option<f64>> = parts.iter().map(|p| p.1).collect();
            return if func.name() == "greatest" {
                // Greater than or equal to every argument: any known lower bound bounds it.
                (known(los, f64::max), all(his, f64::max))
            } else {
                (all(los, f64::min), known(his, f64::min))
            };
        }
        match self.bounds(e) {
            Some((lo, hi)) => (Some(lo), Some(hi)),
            None => (None, None),
        }
    }

    /// Public bounds of a numeric expression, by interval arithmetic over the schema's bounds.
    fn bounds(&self, e: &Expr) -> Option<(f64, f64)> {
        let b = match e {
            Expr::Alias(a) => self.bounds(&a.expr)?,
            Expr::Column(c) => {
                let (_, p) = self.resolve_any(c).ok()?;
                if !p.stored_type().is_numeric() {
                    return None;
                }
                p.bounds?
            }
            Expr::Cast(c) if c.field.data_type().is_numeric() => self.bounds(&c.expr)?,
            Expr::TryCast(c) if c.field.data_type().is_numeric() => self.bounds(&c.expr)?,
            Expr::Negative(x) => {
                let (lo, hi) = self.bounds(x)?;
                (-hi, -lo)
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let l = literal_number(left).map(|v| (v, v)).or_else(|| self.bounds(left))?;
                let r = literal_number(right).map(|v| (v, v)).or_else(|| self.bounds(right))?;
                match op {
                    Operator::Plus => (l.0 + r.0, l.1 + r.1),
                    Operator::Minus => (l.0 - r.1, l.1 - r.0),
                    Operator::Multiply => {
                        let p = [l.0 * r.0, l.0 * r.1, l.1 * r.0, l.1 * r.1];
                        (p.iter().cloned().fold(f64::INFINITY, f64::min), p.iter().cloned().fold(f64::NEG_INFINITY, f64::max))
                    }
                    // Only by a positive literal (check_expr enforces it); integer division
                    // truncates towards zero, which stays inside these bounds widened by one.
                    Operator::Divide if r.0 == r.1 && r.0 > 0.0 => (l.0 / r.0 - 1.0, l.1 / r.0 + 1.0),
                    _ => return None,
                }
            }
            Expr::ScalarFunction(ScalarFunction { func, args }) => match func.name() {
                "date_part" => {
                    let part = args.first().and_then(literal_string)?.to_ascii_lowercase();
                    match part.as_str() {
                        "year" | "years" => {
                            let c = bare_column(args.get(1)?)?;
                            let (_, p) = self.resolve_any(c).ok()?;
                            let (lo, hi) = p.bounds?;
                            (year_of_day(lo) as f64, year_of_day(hi) as f64)
                        }
                        "month" => (1.0, 12.0),
                        "day" => (1.0, 31.0),
                        "dow" => (0.0, 6.0),
                        "doy" => (1.0, 366.0),
                        "quarter" => (1.0, 4.0),
                        "week" => (1.0, 53.0),
                        _ => return None,
                    }
                }
                "abs" => {
                    let (lo, hi) = self.bounds(args.first()?)?;
                    (if lo <= 0.0 && hi >= 0.0 { 0.0 } else { lo.abs().min(hi.abs()) }, lo.abs().max(hi.abs()))
                }
                "floor" | "ceil" | "round" | "trunc" => {
                    let (lo, hi) = self.bounds(args.first()?)?;
                    (lo.floor() - 1.0, hi.ceil() + 1.0)
                }
                // An explicit clamp: LEAST(GREATEST(x, a), b) is in [a, b] whatever x is.
                "greatest" | "least" => match self.half_bounds(e) {
                    (Some(lo), Some(hi)) => (lo, hi),
                    _ => return None,
                },
                _ => return None,
            },
            Expr::Case(c) => {
                let mut out: Option<(f64, f64)> = None;
                let branches = c.when_then_expr.iter().map(|(_, t)| t.as_ref()).chain(c.else_expr.as_deref());
                for t in branches {
                    let b = match literal_number(t) {
                        Some(v) => (v, v),
                        None if is_null_literal(t) => continue,
                        None => self.bounds(t)?,
                    };
                    out = Some(out.map_or(b, |o| (o.0.min(b.0), o.1.max(b.1))));
                }
                out?
            }
            _ => literal_number(e).map(|v| (v, v))?,
        };
        (b.0.is_finite() && b.1.is_finite() && b.0 <= b.1).then_some(b)
    }

    /// The expression allow-list.
    fn check_expr(&self, e: &Expr, ctx: Ctx, schema: &DFSchema) -> Result<(), Refusal> {
        let rec = |x: &Expr| self.check_expr(x, ctx, schema);
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
                    _ => return refuse("unsupported-expression", format!("operator {op} is not allowed")),
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
                        return refuse("nondeterministic", format!("{name}() is not deterministic"));
                    }
                    // DataFusion types these from their first argument: it must be a literal.
                    "date_trunc" | "date_part" => {
                        if !args.first().is_some_and(|a| literal_string(a).is_some()) {
                            return refuse("literal-argument", format!("{name}'s first argument must be a literal ('year', 'month', ...)"));
                        }
                    }
                    n if super::total::admitted_function(n) => {}
                    _ => {
                        return refuse(
                            "unsupported-function",
                            format!("function {name} is not on the allow-list (`secretum functions` lists every admitted function)"),
                        );
                    }
                }
                args.iter().try_for_each(rec)
            }
            Expr::AggregateFunction(_) => {
                refuse("unsupported-aggregate", "aggregates may not be nested or used outside the SELECT list and HAVING")
            }
            Expr::WindowFunction(_) => refuse("window-function", "window functions are not allowed"),
            Expr::Exists(_) | Expr::InSubquery(_) | Expr::ScalarSubquery(_) | Expr::SetComparison(_) | Expr::OuterReferenceColumn(..) => {
                refuse("subquery", "subqueries are not allowed")
            }
            Expr::Placeholder(_) => refuse("unsupported-expression", "placeholders are not allowed"),
            _ => refuse("unsupported-expression", format!("expression {e} is not allowed")),
        }
    }
}

/// Expressions above the aggregate see only noisy outputs; they may not hide subqueries or
/// window functions.
fn check_upper_exprs(exprs: &[Expr]) -> Result<(), Refusal> {
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
            Some("subquery") => return refuse("subquery", "subqueries are not allowed"),
            Some("window-function") => return refuse("window-function", "window functions are not allowed"),
            Some(_) => return refuse("nondeterministic", "non-deterministic functions are not allowed"),
            None => {}
        }
    }
    Ok(())
}

use datafusion::common::tree_node::TreeNode;

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

fn bare_column(e: &Expr) -> Option<&Column> {
    match e {
        Expr::Column(c) => Some(c),
        Expr::Alias(a) => bare_column(&a.expr),
        _ => None,
    }
}

fn strip_cast(e: &Expr) -> &Expr {
    match e {
        Expr::Cast(c) => strip_cast(&c.expr),
        Expr::TryCast(c) => strip_cast(&c.expr),
        Expr::Alias(a) => strip_cast(&a.expr),
        other => other,
    }
}

fn is_null_literal(e: &Expr) -> bool {
    matches!(strip_cast(e), Expr::Literal(v, _) if v.is_null())
}

/// A numeric literal (through casts, which are applied, and negation), as f64.
pub(crate) fn literal_number(e: &Expr) -> Option<f64> {
    let f64_of = |v: &ScalarValue| match v.cast_to(&DataType::Float64).ok()? {
        ScalarValue::Float64(Some(x)) => Some(x),
        _ => None,
    };
    match e {
        Expr::Negative(x) => literal_number(x).map(|v| -v),
        Expr::Alias(a) => literal_number(&a.expr),
        // `CAST(0.5 AS BIGINT)` is 0, not 0.5: cast the literal as the evaluator will.
        Expr::Cast(datafusion::logical_expr::Cast { expr, field }) | Expr::TryCast(datafusion::logical_expr::TryCast { expr, field }) => {
            let inner = literal_scalar(expr)?;
            f64_of(&inner.cast_to(field.data_type()).ok()?)
        }
        Expr::Literal(v, _) if !v.is_null() && v.data_type().is_numeric() => f64_of(v),
        _ => None,
    }
}

/// A literal value through nested casts (each applied) and negation.
fn literal_scalar(e: &Expr) -> Option<ScalarValue> {
    match e {
        Expr::Literal(v, _) if !v.is_null() => Some(v.clone()),
        Expr::Alias(a) => literal_scalar(&a.expr),
        Expr::Negative(x) => literal_scalar(x)?.arithmetic_negate().ok(),
        Expr::Cast(datafusion::logical_expr::Cast { expr, field }) | Expr::TryCast(datafusion::logical_expr::TryCast { expr, field }) => {
            literal_scalar(expr)?.cast_to(field.data_type()).ok()
        }
        _ => None,
    }
}

fn literal_string(e: &Expr) -> Option<String> {
    match strip_cast(e) {
        Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)), _) => Some(s.clone()),
        _ => None,
    }
}

/// Calendar year of a day number (days since 1970-01-01).
fn year_of_day(day: f64) -> i32 {
    use chrono::Datelike;
    chrono::DateTime::from_timestamp(day as i64 * 86_400, 0).map(|d| d.year()).unwrap_or(1970)
}

/// How many values a column's public domain has, if it has one small enough to enumerate:
/// a declared domain, or the bounds of an integer or date column.
pub const MAX_DOMAIN: usize = 100_000;

pub fn public_domain_size(p: &ColumnPolicy) -> Option<usize> {
    if let Some(d) = &p.domain {
        return Some(d.len()).filter(|n| *n <= MAX_DOMAIN);
    }
    match (p.stored_type(), p.bounds) {
        (ColumnType::Integer | ColumnType::Date, Some((lo, hi))) => {
            let n = (hi.floor() - lo.ceil() + 1.0).max(0.0) as usize;
            Some(n).filter(|n| *n <= MAX_DOMAIN)
        }
        _ => None,
    }
}
