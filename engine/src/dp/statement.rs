//! Syntax that DataFusion's logical plan does not represent, refused on the statement before
//! planning.
//!
//! The parser accepts clauses of many dialects; DataFusion's planner reads some of them and
//! silently ignores others (`TABLESAMPLE` is parsed and then dropped, so a "1% sample" would be
//! answered over the whole table). Whatever the planner drops, the analysis of its plan cannot
//! see. So every query, select and table reference of the statement is destructured here with
//! all of its fields named: a field we do not know to be represented must be empty, and a new
//! field in a parser upgrade stops the build instead of slipping through.

use std::ops::ControlFlow;

use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    Expr, Function, FunctionArguments, GroupByExpr, Join, LimitClause, OrderBy, Query, Select, SelectFlavor, TableFactor, Visit, Visitor,
};

use super::rule::Rule;
use crate::error::{Error, Result};

/// Check every query, select, table reference and function call of the statement.
pub fn check(statement: &DFStatement) -> Result<()> {
    let DFStatement::Statement(s) = statement else {
        return Err(Error::refused(Rule::SingleSelect, "only SELECT queries are answered"));
    };
    match s.visit(&mut Unrepresented) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(r) => Err(r),
    }
}

struct Unrepresented;

fn unsupported(what: &str) -> ControlFlow<Error> {
    ControlFlow::Break(Error::refused(
        Rule::UnsupportedSyntax,
        format!("{what} is not supported (the query would not be answered as written)"),
    ))
}

impl Visitor for Unrepresented {
    type Break = Error;

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<Error> {
        let Query { with: _, body: _, order_by, limit_clause, fetch, locks, for_clause, settings, format_clause, pipe_operators } = query;
        if let Some(OrderBy { kind: _, interpolate }) = order_by
            && interpolate.is_some()
        {
            return unsupported("ORDER BY ... INTERPOLATE");
        }
        if let Some(LimitClause::LimitOffset { limit_by, .. }) = limit_clause
            && !limit_by.is_empty()
        {
            return unsupported("LIMIT ... BY");
        }
        if fetch.is_some() {
            return unsupported("FETCH");
        }
        if !locks.is_empty() {
            return unsupported("FOR UPDATE / FOR SHARE");
        }
        if for_clause.is_some() {
            return unsupported("FOR XML / FOR JSON");
        }
        if settings.is_some() {
            return unsupported("SETTINGS");
        }
        if format_clause.is_some() {
            return unsupported("FORMAT");
        }
        if !pipe_operators.is_empty() {
            return unsupported("pipe syntax (|>)");
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<Error> {
        let Select {
            select_token: _,
            optimizer_hints,
            distinct: _,
            select_modifiers,
            top,
            top_before_distinct: _,
            projection: _,
            exclude,
            into,
            from,
            lateral_views,
            prewhere,
            selection: _,
            connect_by,
            group_by,
            cluster_by,
            distribute_by,
            sort_by,
            having: _,
            named_window,
            qualify,
            window_before_qualify: _,
            value_table_mode,
            flavor,
        } = select;
        if !optimizer_hints.is_empty() {
            return unsupported("optimizer hints");
        }
        if select_modifiers.is_some() {
            return unsupported("SELECT modifiers");
        }
        if top.is_some() {
            return unsupported("TOP");
        }
        if exclude.is_some() {
            return unsupported("EXCLUDE");
        }
        if into.is_some() {
            return unsupported("SELECT INTO");
        }
        if !lateral_views.is_empty() {
            return unsupported("LATERAL VIEW");
        }
        if prewhere.is_some() {
            return unsupported("PREWHERE");
        }
        if !connect_by.is_empty() {
            return unsupported("CONNECT BY");
        }
        if !cluster_by.is_empty() || !distribute_by.is_empty() || !sort_by.is_empty() {
            return unsupported("CLUSTER BY / DISTRIBUTE BY / SORT BY");
        }
        if !named_window.is_empty() {
            return unsupported("WINDOW");
        }
        if qualify.is_some() {
            return unsupported("QUALIFY");
        }
        if value_table_mode.is_some() {
            return unsupported("SELECT AS STRUCT / VALUE");
        }
        if !matches!(flavor, SelectFlavor::Standard) {
            return unsupported("FROM-first SELECT");
        }
        match group_by {
            GroupByExpr::All(modifiers) | GroupByExpr::Expressions(_, modifiers) if !modifiers.is_empty() => {
                return unsupported("GROUP BY ... WITH ROLLUP / CUBE / TOTALS");
            }
            _ => {}
        }
        for t in from {
            for Join { relation: _, global, join_operator: _ } in &t.joins {
                if *global {
                    return unsupported("GLOBAL JOIN");
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<Error> {
        match factor {
            TableFactor::Table {
                name: _,
                alias: _,
                args: _,
                with_hints,
                version,
                with_ordinality,
                partitions,
                json_path,
                sample,
                index_hints,
            } => {
                if sample.is_some() {
                    return unsupported("TABLESAMPLE");
                }
                if !with_hints.is_empty() || !index_hints.is_empty() {
                    return unsupported("table hints");
                }
                if version.is_some() {
                    return unsupported("time travel (FOR SYSTEM_TIME / AT)");
                }
                if *with_ordinality {
                    return unsupported("WITH ORDINALITY");
                }
                if !partitions.is_empty() {
                    return unsupported("PARTITION selection");
                }
                if json_path.is_some() {
                    return unsupported("a JSON path on a table");
                }
                // Table functions (`args`) are refused by the table check, with their own rule.
                ControlFlow::Continue(())
            }
            TableFactor::Derived { sample: Some(_), .. } => unsupported("TABLESAMPLE"),
            TableFactor::Derived { lateral: true, .. } | TableFactor::Function { lateral: true, .. } => {
                ControlFlow::Break(Error::refused(Rule::Subquery, "LATERAL subqueries are not supported"))
            }
            // Other factors (subqueries, joins in parentheses, table functions, ...) are visited
            // further or refused by the analysis of the plan.
            _ => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<Error> {
        if let Expr::Function(Function {
            name: _,
            uses_odbc_syntax: _,
            parameters,
            args: _,
            filter: _,
            null_treatment,
            over: _,
            within_group: _,
        }) = expr
        {
            if !matches!(parameters, FunctionArguments::None) {
                return unsupported("parametric function calls f(...)(...)");
            }
            if null_treatment.is_some() {
                return unsupported("IGNORE NULLS / RESPECT NULLS");
            }
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use datafusion::sql::parser::DFParser;
    use datafusion::sql::sqlparser::dialect::GenericDialect;

    fn rule(sql: &str) -> Option<&'static str> {
        let s = DFParser::parse_sql_with_dialect(sql, &GenericDialect {}).unwrap().pop_front().unwrap();
        check(&s).err().and_then(|e| e.rule()).map(Rule::name)
    }

    #[test]
    fn clauses_the_plan_drops_are_refused() {
        assert_eq!(rule("SELECT COUNT(*) FROM person TABLESAMPLE SYSTEM (1)"), Some("unsupported-syntax"));
        assert_eq!(rule("SELECT COUNT(*) FROM person TABLESAMPLE BERNOULLI (10 PERCENT)"), Some("unsupported-syntax"));
        assert_eq!(rule("SELECT TOP 5 COUNT(*) FROM person"), Some("unsupported-syntax"));
        assert_eq!(
            rule("SELECT COUNT(*) FROM person p WHERE EXISTS (SELECT 1 FROM person TABLESAMPLE SYSTEM (1))"),
            Some("unsupported-syntax")
        );
        assert_eq!(rule("WITH x AS (SELECT * FROM person TABLESAMPLE SYSTEM (1)) SELECT COUNT(*) FROM x"), Some("unsupported-syntax"));
        assert_eq!(rule("SELECT COUNT(*) FROM person LIMIT 1 BY gender_concept_id"), Some("unsupported-syntax"));
        assert_eq!(
            rule("SELECT gender_concept_id, COUNT(*) FROM person GROUP BY gender_concept_id WITH ROLLUP"),
            Some("unsupported-syntax")
        );
        assert_eq!(rule("SELECT COUNT(*) FROM person"), None);
        assert_eq!(
            rule(
                "SELECT year_of_birth / 10, COUNT(*) FROM person WHERE year_of_birth > 1950 GROUP BY 1 HAVING COUNT(*) > 5 ORDER BY 1 LIMIT 3"
            ),
            None
        );
    }
}
