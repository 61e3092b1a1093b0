//! Total semantics: no expression a researcher writes can fail on a data value.
//!
//! A query that fails only when some row matches its WHERE is a yes/no answer about the data
//! that no ε can price. So the outcome of a query (answered, or failed after its debit) must be
//! a function of the SQL, the schema and the policy alone. Refusing "what might fail" cannot be
//! made complete (DataFusion has hundreds of functions, and its coercions change between
//! versions), so the guarantee comes from the evaluator instead:
//!
//! 1. [`FUNCTIONS`] lists everything a researcher may write, each with its total behaviour.
//!    Nothing else is admitted; the README's list of what is answered is printed from it.
//! 2. [`make_total`] rewrites every expression of the analysed plan into
//!    - nodes that Arrow evaluates without an error path once the planner has given both sides
//!      one type: column references, literals, comparisons, AND/OR/NOT, IS [NOT] NULL/TRUE/
//!      FALSE/UNKNOWN, IN lists, BETWEEN and CASE ([`Form::Native`]);
//!    - our own kernels for arithmetic, negation, `||`, casts and pattern matching, which
//!      compute in checked `i64` or in `f64` and give NULL where SQL would raise an error
//!      (division by zero, overflow, a value that does not convert, an invalid pattern, a float
//!      result that is not finite);
//!    - every other admitted function wrapped in [`Total`]: DataFusion's own implementation over
//!      the batch and, if it raises an error or panics, again row by row, with NULL for each
//!      row that fails.
//!
//!    None of these kernels returns an error for any input: each `invoke_with_args` answers
//!    `Ok`, falling back to NULLs, whatever the values.
//! 3. [`check_total`] walks the plan that DataFusion will run, after its optimizer has
//!    rewritten it, and refuses any expression that is not one of the above. It runs before
//!    the debit and looks at the plan only, so a refusal there depends on the SQL, never on data.

use std::any::Any;
use std::hash::Hash;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, PrimitiveArray, StringArray, new_null_array,
};
use datafusion::arrow::buffer::{BooleanBuffer, NullBuffer, ScalarBuffer};
use datafusion::arrow::compute::kernels::comparison::{ilike, like, nilike, nlike, regexp_is_match_scalar};
use datafusion::arrow::compute::{CastOptions, cast_with_options, concat};
use datafusion::arrow::datatypes::{ArrowPrimitiveType, DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::expr::{AggregateFunction, Alias, Between, Case, InList, Like, ScalarFunction};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, ExprSchemable, LogicalPlan, Operator, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility,
};

use super::rule::Rule;
use crate::error::{Error, Result};

/// What an argument of an admitted function is (used by the generated oracle tests and the docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    Int,
    Float,
    Text,
    Date,
    Bool,
    /// A literal date part (`'year'`, `'month'`, ...): DataFusion types the result from it.
    Part,
    /// A LIKE or SIMILAR TO pattern.
    Pattern,
}

/// How an admitted function or operator is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// Evaluated by Arrow, which has no error path on operands of one type.
    Native,
    /// Our checked arithmetic kernel ([`Arithmetic`]).
    Arithmetic(Operator),
    /// Our checked negation ([`Negate`]).
    Negation,
    /// Our `||` ([`Concat`]).
    Concat,
    /// Our cast ([`TotalCast`]): CAST, TRY_CAST and the planner's implicit casts.
    Cast,
    /// Our LIKE / ILIKE / SIMILAR TO ([`Pattern`]).
    Pattern,
    /// DataFusion's function of this (planned) name, wrapped in [`Total`].
    Function(&'static str),
}

/// One admitted function or operator.
#[derive(Debug, Clone, Copy)]
pub struct Admitted {
    /// How a researcher writes it; `{0}`, `{1}`, ... stand for its arguments.
    pub sql: &'static str,
    pub form: Form,
    pub args: &'static [Arg],
    /// What it gives where a strict evaluator would raise an error.
    pub total: &'static str,
}

const fn native(sql: &'static str, args: &'static [Arg], total: &'static str) -> Admitted {
    Admitted { sql, form: Form::Native, args, total }
}
const fn function(name: &'static str, sql: &'static str, args: &'static [Arg], total: &'static str) -> Admitted {
    Admitted { sql, form: Form::Function(name), args, total }
}

use Arg::*;

const ONE_TYPE: &str = "no error path: the planner gives both sides one type first (through the total cast)";
const WRAPPED: &str = "DataFusion's function; NULL for a row where it raises an error";

/// Everything a researcher may write in WHERE, GROUP BY and aggregate arguments, with its total
/// behaviour. Expressions over released aggregates (HAVING, ORDER BY, output arithmetic) use
/// the same table.
pub const FUNCTIONS: &[Admitted] = &[
    native("{0} = {1}", &[Int, Int], ONE_TYPE),
    native("{0} <> {1}", &[Int, Int], ONE_TYPE),
    native("{0} < {1}", &[Int, Int], ONE_TYPE),
    native("{0} <= {1}", &[Float, Float], ONE_TYPE),
    native("{0} > {1}", &[Date, Date], ONE_TYPE),
    native("{0} >= {1}", &[Text, Text], ONE_TYPE),
    native("{0} IS DISTINCT FROM {1}", &[Int, Int], ONE_TYPE),
    native("{0} IS NOT DISTINCT FROM {1}", &[Text, Text], ONE_TYPE),
    native("{0} AND {1}", &[Bool, Bool], "no error path (three-valued logic)"),
    native("{0} OR {1}", &[Bool, Bool], "no error path (three-valued logic)"),
    native("NOT {0}", &[Bool], "no error path (three-valued logic)"),
    native("{0} IS NULL", &[Int], "no error path"),
    native("{0} IS NOT NULL", &[Text], "no error path"),
    native("{0} IS TRUE", &[Bool], "no error path"),
    native("{0} IS NOT FALSE", &[Bool], "no error path"),
    native("{0} IN ({1}, {2})", &[Int, Int, Int], ONE_TYPE),
    native("{0} NOT IN ({1}, {2})", &[Text, Text, Text], ONE_TYPE),
    native("{0} BETWEEN {1} AND {2}", &[Int, Int, Int], ONE_TYPE),
    native("CASE WHEN {0} THEN {1} ELSE {2} END", &[Bool, Int, Int], "no error path of its own; its branches are total"),
    native("CASE {0} WHEN 1 THEN {1} ELSE {2} END", &[Int, Text, Text], "no error path of its own; its branches are total"),
    Admitted {
        sql: "{0} + {1}",
        form: Form::Arithmetic(Operator::Plus),
        args: &[Int, Int],
        total: "NULL when an integer result overflows or a float result is not finite",
    },
    Admitted {
        sql: "{0} - {1}",
        form: Form::Arithmetic(Operator::Minus),
        args: &[Int, Int],
        total: "NULL when an integer result overflows or a float result is not finite",
    },
    Admitted {
        sql: "{0} * {1}",
        form: Form::Arithmetic(Operator::Multiply),
        args: &[Int, Int],
        total: "NULL when an integer result overflows or a float result is not finite",
    },
    Admitted {
        sql: "{0} * {1}",
        form: Form::Arithmetic(Operator::Multiply),
        args: &[Float, Float],
        total: "NULL when an integer result overflows or a float result is not finite",
    },
    Admitted {
        sql: "{0} / {1}",
        form: Form::Arithmetic(Operator::Divide),
        args: &[Int, Int],
        total: "NULL for a zero divisor and on overflow; integer division truncates towards zero",
    },
    Admitted {
        sql: "{0} / {1}",
        form: Form::Arithmetic(Operator::Divide),
        args: &[Float, Float],
        total: "NULL for a zero divisor and on overflow; integer division truncates towards zero",
    },
    Admitted { sql: "{0} % {1}", form: Form::Arithmetic(Operator::Modulo), args: &[Int, Int], total: "NULL for a zero divisor" },
    Admitted {
        sql: "{0} - {1}",
        form: Form::Arithmetic(Operator::Minus),
        args: &[Date, Date],
        total: "a date minus a date: days (BIGINT)",
    },
    Admitted {
        sql: "{0} + INTERVAL '30 days'",
        form: Form::Arithmetic(Operator::Plus),
        args: &[Date],
        total: "NULL for a date outside the calendar",
    },
    Admitted {
        sql: "{0} - INTERVAL '1 month'",
        form: Form::Arithmetic(Operator::Minus),
        args: &[Date],
        total: "NULL for a date outside the calendar",
    },
    Admitted { sql: "-({0})", form: Form::Negation, args: &[Int], total: "NULL for the negation of the smallest integer" },
    Admitted { sql: "{0} || {1}", form: Form::Concat, args: &[Text, Text], total: "NULL if either side is NULL" },
    Admitted {
        sql: "CAST({0} AS BIGINT)",
        form: Form::Cast,
        args: &[Text],
        total: "NULL for a value that does not convert (TRY_CAST semantics)",
    },
    Admitted {
        sql: "CAST({0} AS BIGINT)",
        form: Form::Cast,
        args: &[Float],
        total: "NULL for a value that does not convert (TRY_CAST semantics)",
    },
    Admitted {
        sql: "CAST({0} AS INTEGER)",
        form: Form::Cast,
        args: &[Int],
        total: "NULL for a value that does not convert (TRY_CAST semantics)",
    },
    Admitted {
        sql: "CAST({0} AS DOUBLE)",
        form: Form::Cast,
        args: &[Text],
        total: "NULL for a value that does not convert (TRY_CAST semantics)",
    },
    Admitted {
        sql: "CAST({0} AS VARCHAR)",
        form: Form::Cast,
        args: &[Float],
        total: "NULL for a value that does not convert (TRY_CAST semantics)",
    },
    Admitted {
        sql: "CAST({0} AS DATE)",
        form: Form::Cast,
        args: &[Text],
        total: "NULL for a value that does not convert (TRY_CAST semantics)",
    },
    Admitted {
        sql: "CAST({0} AS TIMESTAMP)",
        form: Form::Cast,
        args: &[Date],
        total: "NULL for a value that does not convert (TRY_CAST semantics)",
    },
    Admitted { sql: "TRY_CAST({0} AS BIGINT)", form: Form::Cast, args: &[Text], total: "NULL for a value that does not convert" },
    Admitted { sql: "{0} LIKE {1}", form: Form::Pattern, args: &[Text, Pattern], total: "NULL for a pattern that does not compile" },
    Admitted { sql: "{0} NOT LIKE {1}", form: Form::Pattern, args: &[Text, Pattern], total: "NULL for a pattern that does not compile" },
    Admitted { sql: "{0} ILIKE {1}", form: Form::Pattern, args: &[Text, Pattern], total: "NULL for a pattern that does not compile" },
    Admitted {
        sql: "{0} SIMILAR TO {1}",
        form: Form::Pattern,
        args: &[Text, Pattern],
        total: "regular-expression match; NULL for a pattern that does not compile",
    },
    function("abs", "abs({0})", &[Int], "NULL for the absolute value of the smallest integer"),
    function("ceil", "ceil({0})", &[Float], WRAPPED),
    function("floor", "floor({0})", &[Float], WRAPPED),
    function("round", "round({0})", &[Float], WRAPPED),
    function("round", "round({0}, {1})", &[Float, Int], WRAPPED),
    function("trunc", "trunc({0})", &[Float], WRAPPED),
    function("signum", "signum({0})", &[Float], WRAPPED),
    function("isnan", "isnan({0})", &[Float], WRAPPED),
    function("iszero", "iszero({0})", &[Float], WRAPPED),
    function("greatest", "greatest({0}, {1})", &[Int, Int], WRAPPED),
    function("least", "least({0}, {1})", &[Float, Float], WRAPPED),
    function("coalesce", "coalesce({0}, {1})", &[Int, Int], WRAPPED),
    function("nullif", "nullif({0}, {1})", &[Text, Text], WRAPPED),
    function("nvl", "nvl({0}, {1})", &[Int, Int], WRAPPED),
    function("lower", "lower({0})", &[Text], WRAPPED),
    function("upper", "upper({0})", &[Text], WRAPPED),
    function("btrim", "trim({0})", &[Text], WRAPPED),
    function("ltrim", "ltrim({0})", &[Text], WRAPPED),
    function("rtrim", "rtrim({0})", &[Text], WRAPPED),
    function("character_length", "length({0})", &[Text], WRAPPED),
    function("octet_length", "octet_length({0})", &[Text], WRAPPED),
    function("starts_with", "starts_with({0}, {1})", &[Text, Text], WRAPPED),
    function("ends_with", "ends_with({0}, {1})", &[Text, Text], WRAPPED),
    function("strpos", "strpos({0}, {1})", &[Text, Text], WRAPPED),
    function("substr", "substr({0}, {1})", &[Text, Int], "NULL for a position or length DataFusion rejects"),
    function("substr", "substr({0}, {1}, {2})", &[Text, Int, Int], "NULL for a position or length DataFusion rejects (a negative length)"),
    function("left", "left({0}, {1})", &[Text, Int], WRAPPED),
    function("right", "right({0}, {1})", &[Text, Int], WRAPPED),
    function("concat", "concat({0}, {1})", &[Text, Text], "NULL arguments count as empty strings"),
    function("date_trunc", "date_trunc({0}, {1})", &[Part, Date], "the part must be a literal; NULL where DataFusion raises"),
    function("date_part", "date_part({0}, {1})", &[Part, Date], "the part must be a literal; NULL where DataFusion raises"),
    function("date_part", "EXTRACT(YEAR FROM {0})", &[Date], "NULL where DataFusion raises"),
];

/// Whether DataFusion's function `name` (as planned) is admitted.
pub fn admitted_function(name: &str) -> bool {
    FUNCTIONS.iter().any(|a| matches!(a.form, Form::Function(n) if n == name))
}

/// The admitted functions, one line each, for the README and `secretum functions`.
pub fn describe() -> String {
    let mut out = String::new();
    for a in FUNCTIONS {
        let mut sql = a.sql.to_owned();
        for (i, arg) in a.args.iter().enumerate() {
            let name = match arg {
                Int => "int",
                Float => "float",
                Text => "text",
                Date => "date",
                Bool => "bool",
                Part => "'part'",
                Pattern => "pattern",
            };
            sql = sql.replace(&format!("{{{i}}}"), name);
        }
        out.push_str(&format!("{sql:<40} {}\n", a.total));
    }
    out
}

// ---- the rewrite -----------------------------------------------------------------------------

/// Rewrite every expression of `plan` into its total form, keeping every output name (the
/// release refers to the aggregate's outputs by name). Refuses what [`FUNCTIONS`] does not admit.
pub fn make_total(plan: LogicalPlan) -> Result<LogicalPlan> {
    let mut refusal = None;
    let rewritten = plan.transform_up_with_subqueries(|node| {
        let schema = input_schema(&node);
        let names = NamePreserver::new(&node);
        let node = node.map_expressions(|e| {
            let saved = names.save(&e);
            match total_expr(e.clone(), &schema) {
                Ok(t) => Ok(Transformed::yes(saved.restore(t))),
                Err(r) => {
                    refusal.get_or_insert(r);
                    Ok(Transformed::no(e))
                }
            }
        })?;
        Ok(Transformed::yes(node.data.recompute_schema()?))
    });
    if let Some(r) = refusal {
        return Err(r);
    }
    rewritten.map(|t| t.data).map_err(|e| Error::refused(Rule::SqlError, first_line(&e)))
}

/// The schema a node's expressions are evaluated against.
fn input_schema(node: &LogicalPlan) -> Arc<DFSchema> {
    match node.inputs().as_slice() {
        [one] if !matches!(node, LogicalPlan::Join(_)) => one.schema().clone(),
        _ => node.schema().clone(),
    }
}

fn first_line(e: &datafusion::error::DataFusionError) -> String {
    e.strip_backtrace().lines().next().unwrap_or("").to_owned()
}

fn udf(f: impl ScalarUDFImpl + 'static, args: Vec<Expr>) -> Expr {
    Expr::ScalarFunction(ScalarFunction::new_udf(Arc::new(ScalarUDF::new_from_impl(f)), args))
}

/// The total form of one expression.
pub fn total_expr(e: Expr, schema: &DFSchema) -> Result<Expr> {
    let rec = |x: Expr| total_expr(x, schema);
    let boxed = |x: Box<Expr>| total_expr(*x, schema).map(Box::new);
    let type_of = |x: &Expr| x.get_type(schema).map_err(|e| Error::refused(Rule::SqlError, first_line(&e)));
    Ok(match e {
        Expr::Column(_) | Expr::Literal(..) | Expr::OuterReferenceColumn(..) => e,
        // Cohort filters: their subquery plans are made total by `make_total`'s walk into
        // subqueries; the predicate itself cannot fail.
        Expr::Exists(_) => e,
        Expr::InSubquery(datafusion::logical_expr::expr::InSubquery { expr, subquery, negated }) => {
            Expr::InSubquery(datafusion::logical_expr::expr::InSubquery { expr: boxed(expr)?, subquery, negated })
        }
        Expr::Alias(Alias { expr, relation, name, metadata }) => Expr::Alias(Alias { expr: boxed(expr)?, relation, name, metadata }),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            use Operator::*;
            match op {
                Eq | NotEq | Lt | LtEq | Gt | GtEq | And | Or | IsDistinctFrom | IsNotDistinctFrom => {
                    Expr::BinaryExpr(BinaryExpr { left: boxed(left)?, op, right: boxed(right)? })
                }
                Plus | Minus if temporal(&type_of(&left)?) || temporal(&type_of(&right)?) => {
                    let out = type_of(&Expr::BinaryExpr(BinaryExpr { left: left.clone(), op, right: right.clone() }))?;
                    udf(Temporal::new(op, out), vec![rec(*left)?, rec(*right)?])
                }
                Plus | Minus | Multiply | Divide | Modulo => {
                    let out = type_of(&Expr::BinaryExpr(BinaryExpr { left: left.clone(), op, right: right.clone() }))?;
                    if !(out.is_integer() || out.is_floating()) {
                        return Err(Error::refused(
                            Rule::UnsupportedExpression,
                            format!("arithmetic {op} on {out} is not supported (numbers only: cast or extract first)"),
                        ));
                    }
                    udf(Arithmetic::new(op, out), vec![rec(*left)?, rec(*right)?])
                }
                StringConcat => udf(Concat::new(), vec![rec(*left)?, rec(*right)?]),
                LikeMatch | ILikeMatch | NotLikeMatch | NotILikeMatch => {
                    let negated = matches!(op, NotLikeMatch | NotILikeMatch);
                    let insensitive = matches!(op, ILikeMatch | NotILikeMatch);
                    udf(Pattern::new(PatternKind::Like, negated, insensitive), vec![rec(*left)?, rec(*right)?])
                }
                other => return Err(Error::refused(Rule::UnsupportedExpression, format!("operator {other} is not allowed"))),
            }
        }
        Expr::Like(l) => pattern(l, PatternKind::Like, schema)?,
        Expr::SimilarTo(l) => pattern(l, PatternKind::Similar, schema)?,
        Expr::Not(x) => Expr::Not(boxed(x)?),
        Expr::IsNull(x) => Expr::IsNull(boxed(x)?),
        Expr::IsNotNull(x) => Expr::IsNotNull(boxed(x)?),
        Expr::IsTrue(x) => Expr::IsTrue(boxed(x)?),
        Expr::IsFalse(x) => Expr::IsFalse(boxed(x)?),
        Expr::IsUnknown(x) => Expr::IsUnknown(boxed(x)?),
        Expr::IsNotTrue(x) => Expr::IsNotTrue(boxed(x)?),
        Expr::IsNotFalse(x) => Expr::IsNotFalse(boxed(x)?),
        Expr::IsNotUnknown(x) => Expr::IsNotUnknown(boxed(x)?),
        Expr::Negative(x) => {
            let ty = type_of(&x)?;
            if !(ty.is_integer() || ty.is_floating()) {
                return Err(Error::refused(Rule::UnsupportedExpression, format!("negation of {ty} is not supported")));
            }
            udf(Negate::new(ty), vec![rec(*x)?])
        }
        Expr::Between(Between { expr, negated, low, high }) => {
            Expr::Between(Between { expr: boxed(expr)?, negated, low: boxed(low)?, high: boxed(high)? })
        }
        Expr::InList(InList { expr, list, negated }) => {
            Expr::InList(InList { expr: boxed(expr)?, list: list.into_iter().map(rec).collect::<Result<_, _>>()?, negated })
        }
        Expr::Case(Case { expr, when_then_expr, else_expr }) => Expr::Case(Case {
            expr: expr.map(boxed).transpose()?,
            when_then_expr: when_then_expr.into_iter().map(|(w, t)| Ok((boxed(w)?, boxed(t)?))).collect::<Result<_>>()?,
            else_expr: else_expr.map(boxed).transpose()?,
        }),
        Expr::Cast(c) => cast(*c.expr, c.field.data_type(), schema)?,
        Expr::TryCast(c) => cast(*c.expr, c.field.data_type(), schema)?,
        Expr::ScalarFunction(ScalarFunction { func, args }) => {
            let name = func.name().to_ascii_lowercase();
            if is_ours(&func) {
                Expr::ScalarFunction(ScalarFunction { func, args: args.into_iter().map(rec).collect::<Result<_, _>>()? })
            } else if let Some(simpler) = simplified(&func, &args, schema) {
                // Some functions run only in the form DataFusion's simplifier gives them
                // (COALESCE, NVL and NVL2 become CASE; their own kernels refuse to run): that
                // form, made total in turn.
                rec(simpler)?
            } else if admitted_function(&name) {
                udf(Total::new(func), args.into_iter().map(rec).collect::<Result<_, _>>()?)
            } else {
                return Err(Error::refused(
                    Rule::UnsupportedFunction,
                    format!("function {name} is not admitted (`secretum functions` lists what is)"),
                ));
            }
        }
        Expr::AggregateFunction(AggregateFunction { func, params }) => {
            let mut params = params;
            params.args = params.args.into_iter().map(rec).collect::<Result<_, _>>()?;
            params.filter = params.filter.map(boxed).transpose()?;
            params.order_by = params
                .order_by
                .into_iter()
                .map(|mut s| {
                    s.expr = rec(s.expr)?;
                    Ok(s)
                })
                .collect::<Result<_>>()?;
            Expr::AggregateFunction(AggregateFunction { func, params })
        }
        other => return Err(Error::refused(Rule::UnsupportedExpression, format!("expression {other} is not allowed"))),
    })
}

/// The expression a function's own simplification rewrites a call into, if it does.
fn simplified(func: &Arc<ScalarUDF>, args: &[Expr], schema: &DFSchema) -> Option<Expr> {
    use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
    let info = SimplifyContext::builder().with_schema(Arc::new(schema.clone())).build();
    match func.simplify(args.to_vec(), &info) {
        // A call that simplifies into the same call (nothing left to simplify) stays wrapped.
        Ok(ExprSimplifyResult::Simplified(e)) if !matches!(&e, Expr::ScalarFunction(f) if f.func.name() == func.name() && f.args == args) => {
            Some(e)
        }
        _ => None,
    }
}

fn pattern(l: Like, kind: PatternKind, schema: &DFSchema) -> Result<Expr> {
    if l.escape_char.is_some_and(|c| c != '\\') {
        return Err(Error::refused(Rule::UnsupportedExpression, "LIKE ... ESCAPE with another character than '\\' is not supported"));
    }
    Ok(udf(Pattern::new(kind, l.negated, l.case_insensitive), vec![total_expr(*l.expr, schema)?, total_expr(*l.pattern, schema)?]))
}

/// The casts we admit: to the stored types and their narrower integer and float siblings.
fn castable(to: &DataType) -> bool {
    use DataType::*;
    matches!(
        to,
        Int8 | Int16
            | Int32
            | Int64
            | UInt8
            | UInt16
            | UInt32
            | UInt64
            | Float32
            | Float64
            | Utf8
            | LargeUtf8
            | Utf8View
            | Date32
            | Boolean
    ) || matches!(to, Timestamp(_, None))
}

fn cast(expr: Expr, to: &DataType, schema: &DFSchema) -> Result<Expr> {
    if !castable(to) {
        return Err(Error::refused(Rule::UnsupportedExpression, format!("a cast to {to} is not supported")));
    }
    let from = expr.get_type(schema).map_err(|e| Error::refused(Rule::SqlError, first_line(&e)))?;
    let expr = total_expr(expr, schema)?;
    if &from == to {
        return Ok(expr);
    }
    Ok(udf(TotalCast::new(to.clone()), vec![expr]))
}

// ---- the release's own kernels: clamping and fixed point --------------------------------------

/// `e` as a double clamped into `[lo, hi]`; NULL and NaN become NULL (a NaN would pass any
/// comparison-based clamp and poison a sum).
pub fn clamp(e: Expr, (lo, hi): (f64, f64)) -> Expr {
    Expr::ScalarFunction(ScalarFunction::new_udf(Arc::new(ScalarUDF::new_from_impl(Clamp::new(lo, hi))), vec![e]))
}

/// The fixed-point integer of a clamped value: `(x − centre) / unit` rounded (or of
/// `(x − centre)²` when `square`), clamped to `[−STEPS, STEPS]`. Sums of these are exact
/// (integer addition is associative), unlike float sums whose rounding depends on the order.
pub fn fixed_point(e: Expr, centre: f64, unit: f64, square: bool) -> Expr {
    Expr::ScalarFunction(ScalarFunction::new_udf(Arc::new(ScalarUDF::new_from_impl(FixedPoint::new(centre, unit, square))), vec![e]))
}

/// Steps of the fixed-point grid between 0 and the largest magnitude a value may have.
pub const STEPS: i64 = 1 << 20;

/// The grid's unit for values of magnitude at most `m`: `m / STEPS` (1 when every value is 0).
/// The rounding error of one value, at most unit/2 = m·2⁻²¹, is far under any noise scale.
pub fn fixed_point_unit(m: f64) -> f64 {
    if m > 0.0 { m / STEPS as f64 } else { 1.0 }
}

/// One value on the grid: `(x − centre) · (1 / unit)` (of its square when `square`) rounded to the
/// nearest step, clamped to `[−STEPS, STEPS]` whatever the float rounding, so the bound the
/// sensitivity assumes is exact. NULL and non-finite values are NULL.
pub fn fixed_point_value(x: Option<f64>, centre: f64, unit: f64, square: bool) -> Option<i64> {
    x.filter(|x| x.is_finite()).map(|x| fixed_point_step(x, centre, 1.0 / unit, square))
}

/// The step of a finite value (see [`fixed_point_value`]). Total on every f64, NaN included
/// (the kernel computes it for NULL slots too, and throws those away), and without branches,
/// divisions or float-to-integer conversions, so that it runs as one vectorized pass over a
/// column (an integer clamp or a division per value each cost more than the rest together).
///
/// The quotient is clamped to ±STEPS (`max`/`min` ignore a NaN, giving a bound). Adding
/// 1.5·2^52 puts it in [2^52, 2^53), where the doubles are exactly the integers: the addition
/// rounds it to the nearest integer (ties to even), and the sum's bits, less those of 1.5·2^52,
/// are that integer (in that binade a double's bits grow by one per unit; exact for any
/// |q| < 2^51). Rounding is monotone and ±STEPS are integers, so a quotient within ±STEPS
/// rounds to an integer within ±STEPS: the bound the sensitivity assumes holds exactly.
fn fixed_point_step(x: f64, centre: f64, per_unit: f64, square: bool) -> i64 {
    const ROUND: f64 = 6_755_399_441_055_744.0; // 1.5 · 2^52
    let d = x - centre;
    let v = if square { d * d } else { d };
    let q = (v * per_unit).max(-(STEPS as f64)).min(STEPS as f64);
    (q + ROUND).to_bits() as i64 - ROUND.to_bits() as i64
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
        Ok(map_f64::<Float64Type>(&args, |x| !x.is_nan(), |x| x.max(lo).min(hi)))
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
        let (c, u, square) = (f64::from_bits(self.centre), 1.0 / f64::from_bits(self.unit), self.square);
        // Two loops rather than one testing `square` per value, so each vectorizes.
        Ok(if square {
            map_f64::<Int64Type>(&args, f64::is_finite, |x| fixed_point_step(x, c, u, true))
        } else {
            map_f64::<Int64Type>(&args, f64::is_finite, |x| fixed_point_step(x, c, u, false))
        })
    }
}

/// Apply `f` to every value of the single argument read as f64; the result is NULL where the
/// argument is NULL, where it does not convert to f64, and where `keep` is false. Never fails.
///
/// It runs on every row a release aggregates, so it is two plain passes the compiler can
/// vectorize: `f` over the whole value buffer (NULL slots included, hence `f` must be total, as
/// our kernels' functions are: min, max and arithmetic), then `keep`
/// as a bitmap only when some value fails it. No per-value branch, allocation or zeroing.
fn map_f64<O: ArrowPrimitiveType>(args: &ScalarFunctionArgs, keep: impl Fn(f64) -> bool, f: impl Fn(f64) -> O::Native) -> ColumnarValue {
    let (n, scalar) = match &args.args[0] {
        ColumnarValue::Scalar(_) => (1, true),
        ColumnarValue::Array(a) => (a.len(), false),
    };
    let out: ArrayRef = match args.args[0]
        .to_array(n)
        .ok()
        .and_then(|a| cast_with_options(&a, &DataType::Float64, &CastOptions { safe: true, ..Default::default() }).ok())
    {
        Some(a) => {
            let a = a.as_primitive::<Float64Type>();
            let values = a.values();
            let out: Vec<O::Native> = values.iter().map(|&x| f(x)).collect();
            // A fold rather than `all`, which stops early and so runs value by value.
            // A column without NULLs gets no null buffer: counts over it take their fast path.
            let nulls = if values.iter().fold(true, |all, &x| all & keep(x)) {
                a.nulls().filter(|n| n.null_count() > 0).cloned()
            } else {
                let kept = NullBuffer::new(BooleanBuffer::collect_bool(values.len(), |i| keep(values[i])));
                NullBuffer::union(a.nulls(), Some(&kept))
            };
            Arc::new(PrimitiveArray::<O>::new(ScalarBuffer::from(out), nulls))
        }
        None => new_null_array(&O::DATA_TYPE, n),
    };
    if scalar {
        match ScalarValue::try_from_array(&out, 0) {
            Ok(v) => ColumnarValue::Scalar(v),
            Err(_) => ColumnarValue::Array(out),
        }
    } else {
        ColumnarValue::Array(out)
    }
}

// ---- the verifier ----------------------------------------------------------------------------

/// Check that every expression of a plan about to run is total: one of our kernels, a native
/// node of [`Form::Native`], or part of the release's own machinery (COUNT and SUM over our
/// fixed-point integers, ROW_NUMBER over a random order for truncation). Looks at the plan only.
pub fn check_total(plan: &LogicalPlan) -> Result<()> {
    let mut result = Ok(());
    let _ = plan.apply_with_subqueries(|node| {
        result = check_exprs(&node.expressions());
        Ok(if result.is_ok() { TreeNodeRecursion::Continue } else { TreeNodeRecursion::Stop })
    });
    result
}

/// [`check_total`] for a list of expressions.
pub fn check_exprs(exprs: &[Expr]) -> Result<()> {
    let mut bad: Option<String> = None;
    for e in exprs {
        let _ = e.apply(|x| {
            if let Some(why) = not_total(x) {
                bad.get_or_insert(why);
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        });
    }
    match bad {
        None => Ok(()),
        // The rewrite makes every expression total: an expression that is not is the engine's
        // bug, found before the debit and from the plan alone.
        Some(why) => Err(Error::internal(format!("the planned query would evaluate {why}, which is not known to be total"))),
    }
}

fn not_total(e: &Expr) -> Option<String> {
    use Operator::*;
    match e {
        Expr::Column(_) | Expr::Literal(..) | Expr::Alias(_) | Expr::OuterReferenceColumn(..) => None,
        // Semi- and anti-joins before decorrelation; their subqueries are walked too.
        Expr::Exists(_) | Expr::InSubquery(_) => None,
        Expr::BinaryExpr(b) if matches!(b.op, Eq | NotEq | Lt | LtEq | Gt | GtEq | And | Or | IsDistinctFrom | IsNotDistinctFrom) => None,
        Expr::Not(_)
        | Expr::IsNull(_)
        | Expr::IsNotNull(_)
        | Expr::IsTrue(_)
        | Expr::IsFalse(_)
        | Expr::IsUnknown(_)
        | Expr::IsNotTrue(_)
        | Expr::IsNotFalse(_)
        | Expr::IsNotUnknown(_)
        | Expr::Between(_)
        | Expr::InList(_)
        | Expr::Case(_) => None,
        Expr::ScalarFunction(f) if is_ours(&f.func) || f.func.name() == "random" => None,
        // The release's own aggregates: COUNT never fails; SUM only ever sums our fixed-point
        // BIGINTs (|value| ≤ 2^20), which cannot overflow under 2^43 rows.
        Expr::AggregateFunction(f) if matches!(f.func.name(), "count" | "sum") => None,
        // Per-patient aggregates (inside a per-patient relation): MIN, MAX, BOOL_OR and
        // BOOL_AND only compare; AVG fails only when averaging decimals, and no stored type,
        // cast or literal is a decimal (integers and floats are summed wrapping, as SUM is).
        Expr::AggregateFunction(f) if matches!(f.func.name(), "min" | "max" | "bool_or" | "bool_and" | "avg") => None,
        Expr::WindowFunction(w) if w.fun.name() == "row_number" => None,
        other => Some(format!("{other}")),
    }
}

/// Whether a scalar function is one of our total kernels.
/// A kernel's parameters, as they travel to the nodes of a cluster ([`crate::cluster`]): a
/// kernel is known by its parameters (a clamp by its bounds, a cast by its type), which its
/// name alone does not carry, so the nodes rebuild exactly the function the API node checked.
/// An admitted DataFusion function travels by its name and is looked up among DataFusion's
/// own functions on the node that decodes it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Kernel {
    Clamp { lo: u64, hi: u64 },
    FixedPoint { centre: u64, unit: u64, square: bool },
    Arithmetic { op: String, out: String },
    Temporal { op: String, out: String },
    Negate { ty: String },
    Concat,
    Cast { to: String },
    Pattern { similar: bool, negated: bool, insensitive: bool },
    Total { inner: String },
}

fn op_code(op: Operator) -> String {
    op.to_string()
}

fn op_of(code: &str) -> Option<Operator> {
    [Operator::Plus, Operator::Minus, Operator::Multiply, Operator::Divide, Operator::Modulo].into_iter().find(|o| o.to_string() == code)
}

/// The encoding of one of our kernels (`None` for a function that is not ours).
pub fn encode_kernel(f: &ScalarUDF) -> Option<Vec<u8>> {
    let any: &dyn Any = f.inner().as_ref();
    let k = if let Some(k) = any.downcast_ref::<Clamp>() {
        Kernel::Clamp { lo: k.lo, hi: k.hi }
    } else if let Some(k) = any.downcast_ref::<FixedPoint>() {
        Kernel::FixedPoint { centre: k.centre, unit: k.unit, square: k.square }
    } else if let Some(k) = any.downcast_ref::<Arithmetic>() {
        Kernel::Arithmetic { op: op_code(k.op), out: k.out.to_string() }
    } else if let Some(k) = any.downcast_ref::<Temporal>() {
        Kernel::Temporal { op: op_code(k.op), out: k.out.to_string() }
    } else if let Some(k) = any.downcast_ref::<Negate>() {
        Kernel::Negate { ty: k.ty.to_string() }
    } else if any.is::<Concat>() {
        Kernel::Concat
    } else if let Some(k) = any.downcast_ref::<TotalCast>() {
        Kernel::Cast { to: k.to.to_string() }
    } else if let Some(k) = any.downcast_ref::<Pattern>() {
        Kernel::Pattern { similar: k.kind == PatternKind::Similar, negated: k.negated, insensitive: k.insensitive }
    } else if let Some(k) = any.downcast_ref::<Total>() {
        Kernel::Total { inner: k.inner.name().to_owned() }
    } else {
        return None;
    };
    serde_json::to_vec(&k).ok()
}

/// The kernel [`encode_kernel`] encoded. Fails on bytes it did not write, and on a wrapped
/// function this build of DataFusion does not have.
pub fn decode_kernel(buf: &[u8]) -> datafusion::error::Result<Arc<ScalarUDF>> {
    use datafusion::error::DataFusionError::Plan;
    let k: Kernel = serde_json::from_slice(buf).map_err(|e| Plan(format!("not a secretum kernel: {e}")))?;
    let ty = |s: &str| s.parse::<DataType>().map_err(|e| Plan(format!("kernel type {s:?}: {e}")));
    let op = |s: &str| op_of(s).ok_or_else(|| Plan(format!("kernel operator {s:?}")));
    let f: Arc<ScalarUDF> = match k {
        Kernel::Clamp { lo, hi } => Arc::new(ScalarUDF::new_from_impl(Clamp::new(f64::from_bits(lo), f64::from_bits(hi)))),
        Kernel::FixedPoint { centre, unit, square } => {
            Arc::new(ScalarUDF::new_from_impl(FixedPoint::new(f64::from_bits(centre), f64::from_bits(unit), square)))
        }
        Kernel::Arithmetic { op: o, out } => Arc::new(ScalarUDF::new_from_impl(Arithmetic::new(op(&o)?, ty(&out)?))),
        Kernel::Temporal { op: o, out } => Arc::new(ScalarUDF::new_from_impl(Temporal::new(op(&o)?, ty(&out)?))),
        Kernel::Negate { ty: t } => Arc::new(ScalarUDF::new_from_impl(Negate::new(ty(&t)?))),
        Kernel::Concat => Arc::new(ScalarUDF::new_from_impl(Concat::new())),
        Kernel::Cast { to } => Arc::new(ScalarUDF::new_from_impl(TotalCast::new(ty(&to)?))),
        Kernel::Pattern { similar, negated, insensitive } => Arc::new(ScalarUDF::new_from_impl(Pattern::new(
            if similar { PatternKind::Similar } else { PatternKind::Like },
            negated,
            insensitive,
        ))),
        Kernel::Total { inner } => {
            let f = datafusion::functions::all_default_functions()
                .into_iter()
                .find(|f| f.name() == inner || f.aliases().iter().any(|a| a == &inner))
                .ok_or_else(|| Plan(format!("function {inner} is not in this build")))?;
            Arc::new(ScalarUDF::new_from_impl(Total::new(f)))
        }
    };
    Ok(f)
}

fn is_ours(f: &ScalarUDF) -> bool {
    let any: &dyn Any = f.inner().as_ref();
    any.is::<Total>()
        || any.is::<Arithmetic>()
        || any.is::<Temporal>()
        || any.is::<Negate>()
        || any.is::<Concat>()
        || any.is::<TotalCast>()
        || any.is::<Pattern>()
        || any.is::<Clamp>()
        || any.is::<FixedPoint>()
}

// ---- kernels -----------------------------------------------------------------------------------

/// Evaluate `f` over the arguments; never fails: a kernel error or panic becomes all-NULL.
/// All-scalar arguments give a scalar.
fn never_fails(args: &ScalarFunctionArgs, out: &DataType, f: impl Fn(&[ArrayRef], usize) -> Option<ArrayRef>) -> ColumnarValue {
    let scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
    let n = if scalar { 1 } else { args.number_rows };
    let arrays: Option<Vec<ArrayRef>> = args.args.iter().map(|a| a.to_array(n).ok()).collect();
    let result = arrays.and_then(|arrays| catch_unwind(AssertUnwindSafe(|| f(&arrays, n))).ok().flatten());
    let array = match result {
        Some(a) if a.len() == n && a.data_type() == out => a,
        _ => new_null_array(out, n),
    };
    if scalar {
        ColumnarValue::Scalar(
            ScalarValue::try_from_array(&array, 0).unwrap_or_else(|_| ScalarValue::try_from(out).unwrap_or(ScalarValue::Null)),
        )
    } else {
        ColumnarValue::Array(array)
    }
}

fn safe_cast(a: &ArrayRef, to: &DataType) -> Option<ArrayRef> {
    if a.data_type() == to {
        return Some(a.clone());
    }
    cast_with_options(a, to, &CastOptions { safe: true, ..Default::default() }).ok()
}

/// Cast element by element where the whole-array cast fails: a value that does not convert
/// becomes NULL.
fn cast_each(a: &ArrayRef, to: &DataType) -> Option<ArrayRef> {
    if let Some(c) = safe_cast(a, to) {
        return Some(c);
    }
    let parts: Vec<ArrayRef> = (0..a.len()).map(|i| safe_cast(&a.slice(i, 1), to).unwrap_or_else(|| new_null_array(to, 1))).collect();
    let refs: Vec<&dyn Array> = parts.iter().map(|p| p.as_ref()).collect();
    if refs.is_empty() { Some(new_null_array(to, 0)) } else { concat(&refs).ok() }
}

macro_rules! kernel_boilerplate {
    () => {
        fn signature(&self) -> &Signature {
            &self.signature
        }
    };
}

/// `+ - * / %` on numbers: checked in `i64` for integer results, `f64` for float results, then
/// cast (checked) to the planned type. NULL on overflow, division by zero, a non-finite float.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Arithmetic {
    op: Operator,
    out: DataType,
    signature: Signature,
}

impl Arithmetic {
    fn new(op: Operator, out: DataType) -> Arithmetic {
        Arithmetic { op, out, signature: Signature::any(2, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for Arithmetic {
    kernel_boilerplate!();
    fn name(&self) -> &str {
        match self.op {
            Operator::Plus => "total_add",
            Operator::Minus => "total_sub",
            Operator::Multiply => "total_mul",
            Operator::Divide => "total_div",
            _ => "total_mod",
        }
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(self.out.clone())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        let op = self.op;
        Ok(never_fails(&args, &self.out, |a, _| {
            if self.out.is_integer() {
                let (l, r) = (cast_each(&a[0], &DataType::Int64)?, cast_each(&a[1], &DataType::Int64)?);
                let (l, r) = (l.as_primitive::<Int64Type>(), r.as_primitive::<Int64Type>());
                let out: Int64Array = l
                    .iter()
                    .zip(r.iter())
                    .map(|(x, y)| match (x, y) {
                        (Some(x), Some(y)) => match op {
                            Operator::Plus => x.checked_add(y),
                            Operator::Minus => x.checked_sub(y),
                            Operator::Multiply => x.checked_mul(y),
                            Operator::Divide => x.checked_div(y),
                            _ => x.checked_rem(y),
                        },
                        _ => None,
                    })
                    .collect();
                cast_each(&(Arc::new(out) as ArrayRef), &self.out)
            } else {
                let (l, r) = (cast_each(&a[0], &DataType::Float64)?, cast_each(&a[1], &DataType::Float64)?);
                let (l, r) = (l.as_primitive::<Float64Type>(), r.as_primitive::<Float64Type>());
                let out: Float64Array = l
                    .iter()
                    .zip(r.iter())
                    .map(|(x, y)| {
                        let (x, y): (f64, f64) = (x?, y?);
                        let v = match op {
                            Operator::Plus => x + y,
                            Operator::Minus => x - y,
                            Operator::Multiply => x * y,
                            Operator::Divide => x / y,
                            _ => x % y,
                        };
                        v.is_finite().then_some(v)
                    })
                    .collect();
                cast_each(&(Arc::new(out) as ArrayRef), &self.out)
            }
        }))
    }
}

fn temporal(t: &DataType) -> bool {
    matches!(t, DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) | DataType::Interval(_) | DataType::Duration(_))
}

/// Date arithmetic: a date minus a date (days, BIGINT), a date or time plus or minus an interval.
/// Arrow's kernels over the batch, and where they raise (a result outside the calendar), row by
/// row with NULL for the rows that fail.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Temporal {
    op: Operator,
    out: DataType,
    signature: Signature,
}

impl Temporal {
    fn new(op: Operator, out: DataType) -> Temporal {
        Temporal { op, out, signature: Signature::any(2, Volatility::Immutable) }
    }

    fn eval(&self, l: &ArrayRef, r: &ArrayRef) -> Option<ArrayRef> {
        // Date - date is the difference in days (DataFusion's type for it is BIGINT).
        if l.data_type() == &DataType::Date32 && r.data_type() == &DataType::Date32 && self.op == Operator::Minus {
            let (l, r) = (
                l.as_primitive::<datafusion::arrow::datatypes::Date32Type>(),
                r.as_primitive::<datafusion::arrow::datatypes::Date32Type>(),
            );
            let days: Int64Array = l.iter().zip(r.iter()).map(|(a, b)| Some(a? as i64 - b? as i64)).collect();
            return cast_each(&(Arc::new(days) as ArrayRef), &self.out);
        }
        let out = match self.op {
            Operator::Plus => datafusion::arrow::compute::kernels::numeric::add(l, r),
            _ => datafusion::arrow::compute::kernels::numeric::sub(l, r),
        };
        out.ok().and_then(|a| cast_each(&a, &self.out))
    }
}

impl ScalarUDFImpl for Temporal {
    kernel_boilerplate!();
    fn name(&self) -> &str {
        if self.op == Operator::Plus { "total_date_add" } else { "total_date_sub" }
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(self.out.clone())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        Ok(never_fails(&args, &self.out, |a, n| {
            if let Some(all) = self.eval(&a[0], &a[1]) {
                return Some(all);
            }
            let parts: Vec<ArrayRef> =
                (0..n).map(|i| self.eval(&a[0].slice(i, 1), &a[1].slice(i, 1)).unwrap_or_else(|| new_null_array(&self.out, 1))).collect();
            let refs: Vec<&dyn Array> = parts.iter().map(|p| p.as_ref()).collect();
            if refs.is_empty() { Some(new_null_array(&self.out, 0)) } else { concat(&refs).ok() }
        }))
    }
}

/// Unary minus: checked for integers (the smallest integer has no negation: NULL).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Negate {
    ty: DataType,
    signature: Signature,
}

impl Negate {
    fn new(ty: DataType) -> Negate {
        Negate { ty, signature: Signature::any(1, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for Negate {
    kernel_boilerplate!();
    fn name(&self) -> &str {
        "total_negate"
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(self.ty.clone())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        Ok(never_fails(&args, &self.ty, |a, _| {
            let out: ArrayRef = if self.ty.is_integer() {
                let x = cast_each(&a[0], &DataType::Int64)?;
                Arc::new(x.as_primitive::<Int64Type>().iter().map(|v| v?.checked_neg()).collect::<Int64Array>())
            } else {
                let x = cast_each(&a[0], &DataType::Float64)?;
                Arc::new(x.as_primitive::<Float64Type>().iter().map(|v| v.map(|v| -v)).collect::<Float64Array>())
            };
            cast_each(&out, &self.ty)
        }))
    }
}

/// `a || b`: NULL if either side is NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Concat {
    signature: Signature,
}

impl Concat {
    fn new() -> Concat {
        Concat { signature: Signature::any(2, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for Concat {
    kernel_boilerplate!();
    fn name(&self) -> &str {
        "total_concat"
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        Ok(never_fails(&args, &DataType::Utf8, |a, _| {
            let (l, r) = (cast_each(&a[0], &DataType::Utf8)?, cast_each(&a[1], &DataType::Utf8)?);
            let (l, r) = (l.as_string::<i32>(), r.as_string::<i32>());
            let out: StringArray = l.iter().zip(r.iter()).map(|(x, y)| Some(format!("{}{}", x?, y?))).collect();
            Some(Arc::new(out) as ArrayRef)
        }))
    }
}

/// CAST, TRY_CAST and the planner's implicit casts: a value that does not convert is NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TotalCast {
    to: DataType,
    signature: Signature,
}

impl TotalCast {
    fn new(to: DataType) -> TotalCast {
        TotalCast { to, signature: Signature::any(1, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for TotalCast {
    kernel_boilerplate!();
    fn name(&self) -> &str {
        "total_cast"
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(self.to.clone())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        Ok(never_fails(&args, &self.to, |a, _| {
            let out = cast_each(&a[0], &self.to)?;
            // Arrow's float-to-integer cast is checked; a float cast keeps only finite values.
            if self.to.is_floating() {
                let f = cast_each(&out, &DataType::Float64)?;
                let f: Float64Array = f.as_primitive::<Float64Type>().iter().map(|v| v.filter(|v| v.is_finite())).collect();
                return cast_each(&(Arc::new(f) as ArrayRef), &self.to);
            }
            Some(out)
        }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PatternKind {
    Like,
    Similar,
}

/// LIKE / ILIKE / NOT LIKE / SIMILAR TO: Arrow's kernels; a pattern that does not compile gives
/// NULL for the rows that use it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Pattern {
    kind: PatternKind,
    negated: bool,
    insensitive: bool,
    signature: Signature,
}

impl Pattern {
    fn new(kind: PatternKind, negated: bool, insensitive: bool) -> Pattern {
        Pattern { kind, negated, insensitive, signature: Signature::any(2, Volatility::Immutable) }
    }

    fn eval(&self, text: &ArrayRef, pattern: &ArrayRef) -> Option<BooleanArray> {
        match self.kind {
            PatternKind::Like => {
                let f = match (self.negated, self.insensitive) {
                    (false, false) => like,
                    (false, true) => ilike,
                    (true, false) => nlike,
                    (true, true) => nilike,
                };
                f(text, pattern).ok()
            }
            PatternKind::Similar => {
                // One pattern per row: match each row against its own pattern.
                let (t, p) = (text.as_string::<i32>(), pattern.as_string::<i32>());
                let flag = self.insensitive.then_some("i");
                let out: BooleanArray = (0..t.len())
                    .map(|i| {
                        if t.is_null(i) || p.is_null(i) {
                            return None;
                        }
                        let one = StringArray::from(vec![t.value(i)]);
                        let m = regexp_is_match_scalar(&one, p.value(i), flag).ok()?.value(0);
                        Some(m != self.negated)
                    })
                    .collect();
                Some(out)
            }
        }
    }
}

impl ScalarUDFImpl for Pattern {
    kernel_boilerplate!();
    fn name(&self) -> &str {
        match self.kind {
            PatternKind::Like => "total_like",
            PatternKind::Similar => "total_similar_to",
        }
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        Ok(never_fails(&args, &DataType::Boolean, |a, n| {
            let (t, p) = (cast_each(&a[0], &DataType::Utf8)?, cast_each(&a[1], &DataType::Utf8)?);
            if let Some(all) = self.eval(&t, &p) {
                return Some(Arc::new(all) as ArrayRef);
            }
            // Row by row: only the rows whose pattern fails are NULL.
            let parts: Vec<ArrayRef> = (0..n)
                .map(|i| match self.eval(&t.slice(i, 1), &p.slice(i, 1)) {
                    Some(b) => Arc::new(b) as ArrayRef,
                    None => new_null_array(&DataType::Boolean, 1),
                })
                .collect();
            let refs: Vec<&dyn Array> = parts.iter().map(|p| p.as_ref()).collect();
            if refs.is_empty() { Some(new_null_array(&DataType::Boolean, 0)) } else { concat(&refs).ok() }
        }))
    }
}

/// An admitted DataFusion function, made total: evaluated over the batch, and where that raises
/// an error or panics, row by row with NULL for each row that fails. Its type is the wrapped
/// function's type (the planner's coercions already ran), always nullable.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Total {
    inner: Arc<ScalarUDF>,
    name: String,
}

impl Total {
    fn new(inner: Arc<ScalarUDF>) -> Total {
        let name = format!("total_{}", inner.name());
        Total { inner, name }
    }

    fn call(&self, args: ScalarFunctionArgs) -> Option<ColumnarValue> {
        catch_unwind(AssertUnwindSafe(|| self.inner.invoke_with_args(args))).ok()?.ok()
    }
}

impl ScalarUDFImpl for Total {
    fn name(&self) -> &str {
        &self.name
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> datafusion::error::Result<FieldRef> {
        let f = self.inner.return_field_from_args(args)?;
        Ok(Arc::new(Field::new(self.name(), f.data_type().clone(), true)))
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> datafusion::error::Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        let out = args.return_field.data_type().clone();
        let n = args.number_rows;
        if let Some(v) = self.call(args.clone()) {
            let ok = match &v {
                ColumnarValue::Array(a) => a.len() == n && a.data_type() == &out,
                ColumnarValue::Scalar(s) => s.data_type() == out,
            };
            if ok {
                return Ok(v);
            }
        }
        // Row by row.
        let scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        if scalar {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from(&out).unwrap_or(ScalarValue::Null)));
        }
        let mut parts: Vec<ArrayRef> = Vec::with_capacity(n);
        for i in 0..n {
            let row_args = args
                .args
                .iter()
                .map(|a| match a {
                    ColumnarValue::Array(a) => ColumnarValue::Array(a.slice(i, 1)),
                    s => s.clone(),
                })
                .collect();
            let one = ScalarFunctionArgs { args: row_args, number_rows: 1, ..args.clone() };
            let cell = self.call(one).and_then(|v| v.to_array(1).ok()).filter(|a| a.len() == 1 && a.data_type() == &out);
            parts.push(cell.unwrap_or_else(|| new_null_array(&out, 1)));
        }
        let refs: Vec<&dyn Array> = parts.iter().map(|p| p.as_ref()).collect();
        let array = if refs.is_empty() { Some(new_null_array(&out, 0)) } else { concat(&refs).ok() };
        Ok(ColumnarValue::Array(array.unwrap_or_else(|| new_null_array(&out, n))))
    }
}

#[cfg(test)]
mod tests {
    //! Every admitted function, planned by DataFusion as a researcher would write it, rewritten
    //! total, and evaluated on columns full of extreme values: no row may make it fail.
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use datafusion::arrow::array::{BooleanArray, Date32Array, RecordBatch};
    use datafusion::arrow::datatypes::Schema;
    use datafusion::catalog::MemTable;
    use datafusion::execution::context::SessionContext;

    /// A table whose every column holds the values that make functions fail.
    fn extreme_table() -> SessionContext {
        let schema = Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int64, true),
            Field::new("f", DataType::Float64, true),
            Field::new("t", DataType::Utf8, true),
            Field::new("d", DataType::Date32, true),
            Field::new("b", DataType::Boolean, true),
        ]));
        let i = Int64Array::from(vec![Some(0), Some(-1), Some(i64::MAX), Some(i64::MIN), None, Some(7)]);
        let f = Float64Array::from(vec![Some(0.0), Some(-1.5), Some(f64::MAX), Some(f64::NAN), None, Some(f64::INFINITY)]);
        let t = StringArray::from(vec![Some(""), Some("("), Some("%"), Some("99999999999999999999"), None, Some("2026-13-45")]);
        let d = Date32Array::from(vec![Some(0), Some(i32::MAX), Some(i32::MIN), Some(-719_162), None, Some(20_000)]);
        let b = BooleanArray::from(vec![Some(true), Some(false), None, Some(true), None, Some(false)]);
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(i), Arc::new(f), Arc::new(t), Arc::new(d), Arc::new(b)]).unwrap();
        let ctx = SessionContext::new();
        ctx.register_table("x", Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap())).unwrap();
        ctx
    }

    fn column_of(kind: Arg) -> &'static str {
        match kind {
            Arg::Int => "i",
            Arg::Float => "f",
            Arg::Text | Arg::Pattern => "t",
            Arg::Date => "d",
            Arg::Bool => "b",
            Arg::Part => "'year'",
        }
    }

    #[tokio::test]
    async fn every_admitted_function_is_total_on_extreme_values() {
        let ctx = extreme_table();
        for entry in FUNCTIONS {
            let mut sql = entry.sql.to_owned();
            for (i, kind) in entry.args.iter().enumerate() {
                sql = sql.replace(&format!("{{{i}}}"), column_of(*kind));
            }
            let query = format!("SELECT {sql} AS v FROM x");
            let df = ctx.sql(&query).await.unwrap_or_else(|e| panic!("{query}: {e}"));
            let state = ctx.state();
            let plan = state.analyzer().execute_and_check(df.logical_plan().clone(), state.config_options(), |_, _| {}).unwrap();
            // The form the table names is the one DataFusion plans.
            let mut found = false;
            plan.apply_expressions(|e| {
                e.apply(|x| {
                    found |= match (entry.form, x) {
                        (Form::Function(name), Expr::ScalarFunction(f)) => f.func.name() == name,
                        (Form::Arithmetic(op), Expr::BinaryExpr(b)) => b.op == op,
                        (Form::Negation, Expr::Negative(_)) => true,
                        (Form::Concat, Expr::BinaryExpr(b)) => b.op == Operator::StringConcat,
                        (Form::Cast, Expr::Cast(_) | Expr::TryCast(_)) => true,
                        (Form::Pattern, Expr::Like(_) | Expr::SimilarTo(_)) => true,
                        (Form::Native, _) => true,
                        _ => false,
                    };
                    Ok(TreeNodeRecursion::Continue)
                })
            })
            .unwrap();
            assert!(found, "{}: DataFusion does not plan it as {:?}", entry.sql, entry.form);
            let total = make_total(plan).unwrap_or_else(|e| panic!("{query}: {e}"));
            let out = ctx.execute_logical_plan(total).await.unwrap().collect().await;
            assert!(out.is_ok(), "{query} failed on extreme values: {:?}", out.err());
        }
    }

    /// Every kernel a total plan can hold travels to a cluster's nodes and comes back as the same
    /// function (same parameters), which computes the same values on the extreme table.
    #[tokio::test]
    async fn every_kernel_survives_its_encoding_for_a_cluster() {
        let ctx = extreme_table();
        let mut seen = std::collections::BTreeSet::new();
        let mut queries: Vec<String> = FUNCTIONS
            .iter()
            .map(|entry| {
                let mut sql = entry.sql.to_owned();
                for (i, kind) in entry.args.iter().enumerate() {
                    sql = sql.replace(&format!("{{{i}}}"), column_of(*kind));
                }
                format!("SELECT {sql} AS v FROM x")
            })
            .collect();
        queries.push("SELECT i AS v FROM x".into());
        for query in queries {
            let df = ctx.sql(&query).await.unwrap();
            let state = ctx.state();
            let plan = state.analyzer().execute_and_check(df.logical_plan().clone(), state.config_options(), |_, _| {}).unwrap();
            let mut total = make_total(plan).unwrap();
            if query == "SELECT i AS v FROM x" {
                // The release's own kernels: a clamp and a fixed-point sum.
                let input = Arc::new(total);
                let clamped = fixed_point(clamp(Expr::Column(datafusion::common::Column::from_name("v")), (-2.5, 7.25)), 0.5, 0.01, true);
                total = LogicalPlan::Projection(datafusion::logical_expr::Projection::try_new(vec![clamped.alias("v")], input).unwrap());
            }
            let expected = ctx.execute_logical_plan(total.clone()).await.unwrap().collect().await.unwrap();
            let travelled = total
                .transform_up(|node| {
                    node.map_expressions(|e| {
                        e.transform_up(|e| match e {
                            Expr::ScalarFunction(ScalarFunction { func, args }) if is_ours(&func) => {
                                let bytes = encode_kernel(&func).expect("ours");
                                let back = decode_kernel(&bytes).unwrap_or_else(|e| panic!("{query}: {e}"));
                                assert_eq!(*back, *func, "{query}: {} came back different", func.name());
                                seen.insert(func.name().to_owned());
                                Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction { func: back, args })))
                            }
                            other => Ok(Transformed::no(other)),
                        })
                    })
                })
                .unwrap()
                .data;
            let got = ctx.execute_logical_plan(travelled).await.unwrap().collect().await.unwrap();
            assert_eq!(got, expected, "{query}");
        }
        for kernel in
            ["clamp", "fixed_point", "total_add", "total_date_add", "total_neg", "total_concat", "total_cast", "total_like", "total_abs"]
        {
            assert!(seen.iter().any(|s| s.starts_with(kernel)), "no {kernel} among {seen:?}");
        }
        assert!(encode_kernel(&ScalarUDF::new_from_impl(datafusion::functions::math::abs::AbsFunc::new())).is_none());
        assert!(decode_kernel(b"{\"Total\":{\"inner\":\"no_such_function\"}}").is_err());
        assert!(decode_kernel(b"not json").is_err());
    }

    #[tokio::test]
    async fn kernels_give_null_where_sql_would_raise() {
        let ctx = extreme_table();
        let value = |sql: &'static str| {
            let ctx = ctx.clone();
            async move {
                let df = ctx.sql(sql).await.unwrap();
                let state = ctx.state();
                let plan = state.analyzer().execute_and_check(df.logical_plan().clone(), state.config_options(), |_, _| {}).unwrap();
                let batches = ctx.execute_logical_plan(make_total(plan).unwrap()).await.unwrap().collect().await.unwrap();
                ScalarValue::try_from_array(batches[0].column(0), 0).unwrap()
            }
        };
        assert!(value("SELECT 9223372036854775807 + 1").await.is_null(), "integer overflow");
        assert!(value("SELECT 7 / 0").await.is_null(), "division by zero");
        assert!(value("SELECT 7 % 0").await.is_null(), "modulo by zero");
        assert_eq!(value("SELECT -7 / 2").await, ScalarValue::Int64(Some(-3)), "integer division truncates");
        assert!(value("SELECT 1e308 * 10").await.is_null(), "a float that is not finite");
        assert!(value("SELECT CAST('abc' AS BIGINT)").await.is_null(), "a value that does not convert");
        assert!(value("SELECT abs(i) FROM x WHERE i < -9223372036854775000").await.is_null(), "abs of the smallest integer");
        assert!(value("SELECT -(i) FROM x WHERE i < -9223372036854775000").await.is_null(), "negation of the smallest integer");
        assert!(value("SELECT substr(t, 1, -1) FROM x WHERE t = '%'").await.is_null(), "a negative substring length");
        assert!(value("SELECT 'abc' SIMILAR TO '('").await.is_null(), "a pattern that does not compile");
        assert_eq!(value("SELECT 'abc' LIKE 'a%'").await, ScalarValue::Boolean(Some(true)));
    }

    /// The release's kernels, run over whole columns (their vectorized path), give every value
    /// what their definitions give it alone: the clamp is NULL for NULL and NaN and the value
    /// moved into its bounds otherwise; the fixed point is the nearest step (ties to even)
    /// within ±STEPS, NULL for NULL and non-finite values. NULL slots hold extreme values
    /// underneath, which must change nothing; so do all-valid columns and single values.
    #[tokio::test]
    async fn the_release_kernels_compute_their_definitions_on_every_value() {
        use datafusion::prelude::col;
        let mut xs = vec![0.0, -0.0, 0.5, -0.5, 1.5, 2.5, -2.5, 0.499_999_999_999_999_94, 1e300, -1e-300, f64::MIN_POSITIVE];
        xs.extend([f64::MAX, f64::MIN, f64::NAN, f64::INFINITY, f64::NEG_INFINITY]);
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20_000 {
            (seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17);
            xs.push(f64::from_bits(seed));
            xs.push((seed % 4_000_001) as f64 / 1000.0 - 2000.0);
        }
        let expected_clamp = |x: f64, (lo, hi): (f64, f64)| (!x.is_nan()).then(|| x.max(lo).min(hi));
        let expected_step = |x: f64, centre: f64, unit: f64, square: bool| {
            let d = x - centre;
            let v = if square { d * d } else { d };
            x.is_finite().then(|| (v * (1.0 / unit)).clamp(-(STEPS as f64), STEPS as f64).round_ties_even() as i64)
        };
        let with_nulls =
            Float64Array::new(xs.clone().into(), Some(NullBuffer::from((0..xs.len()).map(|i| i % 7 != 3).collect::<Vec<_>>())));
        let finite: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
        for column in [with_nulls, Float64Array::from(finite), Float64Array::from(vec![f64::NAN]), Float64Array::from(vec![3.5])] {
            let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![Field::new("v", DataType::Float64, true)]));
            let batch = datafusion::arrow::array::RecordBatch::try_new(schema, vec![Arc::new(column.clone())]).unwrap();
            for (bounds, centre, unit, square) in
                [((-2.5, 7.25), 2.375, 4.875 / STEPS as f64, false), ((0.0, 20.0), 10.0, 0.01, true), ((-1e9, 1e9), 0.0, 1.0, false)]
            {
                let df = SessionContext::new().read_batch(batch.clone()).unwrap();
                let out = df
                    .select(vec![
                        col("v"),
                        clamp(col("v"), bounds).alias("c"),
                        fixed_point(clamp(col("v"), bounds), centre, unit, square).alias("f"),
                        fixed_point(col("v"), centre, unit, square).alias("raw"),
                    ])
                    .unwrap()
                    .collect()
                    .await
                    .unwrap();
                let out = datafusion::arrow::compute::concat_batches(&out[0].schema(), &out).unwrap();
                // Rows may come back in another order (the session repartitions): each is
                // checked against its own input value.
                let (v, c) = (out.column(0).as_primitive::<Float64Type>(), out.column(1).as_primitive::<Float64Type>());
                let (f, raw) = (out.column(2).as_primitive::<Int64Type>(), out.column(3).as_primitive::<Int64Type>());
                assert_eq!(v.len(), column.len());
                for (i, x) in v.iter().enumerate() {
                    let want_c = x.and_then(|x| expected_clamp(x, bounds));
                    assert_eq!(c.is_valid(i).then(|| c.value(i)), want_c, "clamp of {x:?} into {bounds:?}");
                    let want_f = want_c.and_then(|x| expected_step(x, centre, unit, square));
                    assert_eq!(f.is_valid(i).then(|| f.value(i)), want_f, "fixed point of {x:?} clamped into {bounds:?}");
                    let want_raw = x.and_then(|x| expected_step(x, centre, unit, square));
                    assert_eq!(raw.is_valid(i).then(|| raw.value(i)), want_raw, "fixed point of {x:?}");
                }
            }
        }
    }

    #[test]
    fn the_verifier_refuses_what_is_not_total() {
        let plan = datafusion::logical_expr::LogicalPlanBuilder::empty(true)
            .project(vec![datafusion::logical_expr::lit(1i64) / datafusion::logical_expr::lit(0i64)])
            .unwrap()
            .build()
            .unwrap();
        assert!(check_total(&plan).is_err(), "a native division must not pass");
        let total = make_total(plan).unwrap();
        assert!(check_total(&total).is_ok());
    }
}
