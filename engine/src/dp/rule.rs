//! The rules a researcher's query can break. A refusal names its rule and says why in words
//! built from the SQL, the schema and the policy, never from data. Every rule has a name (stable,
//! machine-readable: the HTTP `rule` field), a one-line meaning, and golden cases in
//! `tests/sql/` (a test checks that every rule has one).

/// One rule of the allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    Epsilon,
    Delta,
    TargetCi,
    SqlTooLong,
    SqlSyntax,
    SqlError,
    SingleSelect,
    UnsupportedSyntax,
    TableReference,
    TableNotInProject,
    UnknownColumn,
    AggregateRequired,
    Subquery,
    PerPatientRelation,
    Correlation,
    RecursiveCte,
    SetOperation,
    WindowFunction,
    SelfJoin,
    JoinOnUnit,
    LimitBelowAggregate,
    UnitOrIdentifier,
    UnsupportedExpression,
    UnsupportedFunction,
    LiteralArgument,
    Nondeterministic,
    UnsupportedAggregate,
    AggregateFilter,
    MinMax,
    CountDistinct,
    UnboundedValue,
    UnsupportedGrouping,
    MaxGroups,
    TooManyGroups,
    NeedsDelta,
}

impl Rule {
    /// Every rule, for documentation and for the test that each has a golden case.
    pub const ALL: &'static [Rule] = &[
        Rule::Epsilon,
        Rule::Delta,
        Rule::TargetCi,
        Rule::SqlTooLong,
        Rule::SqlSyntax,
        Rule::SqlError,
        Rule::SingleSelect,
        Rule::UnsupportedSyntax,
        Rule::TableReference,
        Rule::TableNotInProject,
        Rule::UnknownColumn,
        Rule::AggregateRequired,
        Rule::Subquery,
        Rule::PerPatientRelation,
        Rule::Correlation,
        Rule::RecursiveCte,
        Rule::SetOperation,
        Rule::WindowFunction,
        Rule::SelfJoin,
        Rule::JoinOnUnit,
        Rule::LimitBelowAggregate,
        Rule::UnitOrIdentifier,
        Rule::UnsupportedExpression,
        Rule::UnsupportedFunction,
        Rule::LiteralArgument,
        Rule::Nondeterministic,
        Rule::UnsupportedAggregate,
        Rule::AggregateFilter,
        Rule::MinMax,
        Rule::CountDistinct,
        Rule::UnboundedValue,
        Rule::UnsupportedGrouping,
        Rule::MaxGroups,
        Rule::TooManyGroups,
        Rule::NeedsDelta,
    ];

    /// The rule's stable name.
    pub fn name(self) -> &'static str {
        match self {
            Rule::Epsilon => "epsilon",
            Rule::Delta => "delta",
            Rule::TargetCi => "target-ci",
            Rule::SqlTooLong => "sql-too-long",
            Rule::SqlSyntax => "sql-syntax",
            Rule::SqlError => "sql-error",
            Rule::SingleSelect => "single-select",
            Rule::UnsupportedSyntax => "unsupported-syntax",
            Rule::TableReference => "table-reference",
            Rule::TableNotInProject => "table-not-in-project",
            Rule::UnknownColumn => "unknown-column",
            Rule::AggregateRequired => "aggregate-required",
            Rule::Subquery => "subquery",
            Rule::PerPatientRelation => "per-patient-relation",
            Rule::Correlation => "correlation",
            Rule::RecursiveCte => "recursive-cte",
            Rule::SetOperation => "set-operation",
            Rule::WindowFunction => "window-function",
            Rule::SelfJoin => "self-join",
            Rule::JoinOnUnit => "join-on-unit",
            Rule::LimitBelowAggregate => "limit-below-aggregate",
            Rule::UnitOrIdentifier => "unit-or-identifier",
            Rule::UnsupportedExpression => "unsupported-expression",
            Rule::UnsupportedFunction => "unsupported-function",
            Rule::LiteralArgument => "literal-argument",
            Rule::Nondeterministic => "nondeterministic",
            Rule::UnsupportedAggregate => "unsupported-aggregate",
            Rule::AggregateFilter => "aggregate-filter",
            Rule::MinMax => "min-max",
            Rule::CountDistinct => "count-distinct",
            Rule::UnboundedValue => "unbounded-value",
            Rule::UnsupportedGrouping => "unsupported-grouping",
            Rule::MaxGroups => "max-groups",
            Rule::TooManyGroups => "too-many-groups",
            Rule::NeedsDelta => "needs-delta",
        }
    }

    /// What the rule asks, in one line.
    pub fn meaning(self) -> &'static str {
        match self {
            Rule::Epsilon => "ε is a positive number no larger than the steward's per-query cap",
            Rule::Delta => "δ, when given, is in (0, 1e-3]",
            Rule::TargetCi => "an accuracy target is a positive half-width, for counts and sums",
            Rule::SqlTooLong => "the SQL text is at most 64 KiB",
            Rule::SqlSyntax => "the SQL parses",
            Rule::SqlError => "the SQL plans against the project's tables (names, types)",
            Rule::SingleSelect => "one SELECT statement: no DDL, DML, COPY, EXPLAIN, SET or PREPARE",
            Rule::UnsupportedSyntax => "no clause the query engine would silently drop (TABLESAMPLE, TOP, hints, ...)",
            Rule::TableReference => "tables are plain names of the catalog: no file paths, URLs or table functions",
            Rule::TableNotInProject => "only the project's tables",
            Rule::UnknownColumn => "every column is a stored column of the query's tables",
            Rule::AggregateRequired => "every output is an aggregate or a GROUP BY key: no row-level output",
            Rule::Subquery => {
                "subqueries only as per-patient relations, EXISTS or IN on the privacy unit (no scalar subqueries, no LATERAL)"
            }
            Rule::PerPatientRelation => "a subquery or CTE groups by the privacy unit alone and outputs it once (a per-patient relation)",
            Rule::Correlation => {
                "a subquery refers to the outer query only as EXISTS (... WHERE t.person_id = outer.person_id); IN selects person_id"
            }
            Rule::RecursiveCte => "no WITH RECURSIVE",
            Rule::SetOperation => "no UNION, INTERSECT or EXCEPT",
            Rule::WindowFunction => "no window functions",
            Rule::SelfJoin => "a table appears once",
            Rule::JoinOnUnit => "tables are inner-joined on the privacy unit only",
            Rule::LimitBelowAggregate => "LIMIT, OFFSET and ORDER BY apply to the aggregated output only",
            Rule::UnitOrIdentifier => "the privacy unit and identifiers appear only in joins and COUNT(DISTINCT person_id)",
            Rule::UnsupportedExpression => "expressions use admitted operators and casts only",
            Rule::UnsupportedFunction => "functions are on the admitted list (`secretum functions`)",
            Rule::LiteralArgument => "arguments that type a function's result (date parts) are literals",
            Rule::Nondeterministic => "no random() or clock functions",
            Rule::UnsupportedAggregate => "aggregates are COUNT, SUM, AVG, VARIANCE, STDDEV, MEDIAN or a percentile",
            Rule::AggregateFilter => "no FILTER (WHERE ...) on an aggregate: put the condition in WHERE",
            Rule::MinMax => "no MIN or MAX on raw values: they release one record's value",
            Rule::CountDistinct => "COUNT(DISTINCT ...) counts patients only",
            Rule::UnboundedValue => "a summed or averaged value has public bounds (schema, WHERE or LEAST/GREATEST)",
            Rule::UnsupportedGrouping => "GROUP BY keys are expressions of columns: no GROUPING SETS, CUBE or ROLLUP",
            Rule::MaxGroups => "the groups-per-patient bound is at least 1",
            Rule::TooManyGroups => "public group keys span at most 100,000 groups",
            Rule::NeedsDelta => "grouping without a public domain (DP partition selection) needs δ > 0",
        }
    }

    /// The rule of a name, if any.
    pub fn from_name(name: &str) -> Option<Rule> {
        Rule::ALL.iter().copied().find(|r| r.name() == name)
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        let mut names: Vec<&str> = Rule::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Rule::ALL.len());
        for r in Rule::ALL {
            assert_eq!(Rule::from_name(r.name()), Some(*r));
            assert!(!r.meaning().is_empty());
        }
    }
}
