//! Public bounds of numeric expressions: interval arithmetic over the schema's column bounds,
//! narrowed by the query's WHERE conditions.
//!
//! Bounds decide how values are clamped before they are summed; the clamp (in
//! [`super::rewrite`]) is what enforces them on the data. So a bound that is too wide only costs
//! accuracy (more noise), one that is too narrow only biases the answer: the sensitivity a
//! release states always holds, because it is derived from the clamp and not from the data.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};

use crate::schema::ColumnPolicy;

/// Bounds of expressions over the columns a resolver knows.
pub struct Intervals<'a> {
    column: &'a dyn Fn(&Column) -> Option<&'a ColumnPolicy>,
}

impl<'a> Intervals<'a> {
    pub fn new(column: &'a dyn Fn(&Column) -> Option<&'a ColumnPolicy>) -> Intervals<'a> {
        Intervals { column }
    }

    /// Public bounds of a numeric expression, if they can be derived.
    pub fn of(&self, e: &Expr) -> Option<(f64, f64)> {
        let b = match e {
            Expr::Alias(a) => self.of(&a.expr)?,
            Expr::Column(c) => {
                let p = (self.column)(c)?;
                if !p.stored_type().is_numeric() {
                    return None;
                }
                p.bounds?
            }
            Expr::Cast(c) if c.field.data_type().is_numeric() => self.of(&c.expr)?,
            Expr::TryCast(c) if c.field.data_type().is_numeric() => self.of(&c.expr)?,
            Expr::Negative(x) => {
                let (lo, hi) = self.of(x)?;
                (-hi, -lo)
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let l = literal_number(left).map(|v| (v, v)).or_else(|| self.of(left))?;
                let r = literal_number(right).map(|v| (v, v)).or_else(|| self.of(right))?;
                match op {
                    Operator::Plus => (l.0 + r.0, l.1 + r.1),
                    Operator::Minus => (l.0 - r.1, l.1 - r.0),
                    Operator::Multiply => {
                        let p = [l.0 * r.0, l.0 * r.1, l.1 * r.0, l.1 * r.1];
                        (p.iter().copied().fold(f64::INFINITY, f64::min), p.iter().copied().fold(f64::NEG_INFINITY, f64::max))
                    }
                    // By a positive literal only (otherwise the divisor's range holds 0 or
                    // changes sign); integer division truncates towards zero, which stays inside
                    // these bounds widened by one.
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
                            let (lo, hi) = (self.column)(c)?.bounds?;
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
                    let (lo, hi) = self.of(args.first()?)?;
                    (if lo <= 0.0 && hi >= 0.0 { 0.0 } else { lo.abs().min(hi.abs()) }, lo.abs().max(hi.abs()))
                }
                "floor" | "ceil" | "round" | "trunc" => {
                    let (lo, hi) = self.of(args.first()?)?;
                    (lo.floor() - 1.0, hi.ceil() + 1.0)
                }
                // An explicit clamp: LEAST(GREATEST(x, a), b) is in [a, b] whatever x is.
                "greatest" | "least" => match self.half(e) {
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
                        None => self.of(t)?,
                    };
                    out = Some(out.map_or(b, |o| (o.0.min(b.0), o.1.max(b.1))));
                }
                out?
            }
            _ => literal_number(e).map(|v| (v, v))?,
        };
        (b.0.is_finite() && b.1.is_finite() && b.0 <= b.1).then_some(b)
    }

    /// Bounds that may be known on one side only: GREATEST(x, a) ≥ a whatever x is, and
    /// LEAST(x, b) ≤ b. NULL arguments are ignored by both functions, so they move no bound.
    fn half(&self, e: &Expr) -> (Option<f64>, Option<f64>) {
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
            let parts: Vec<(Option<f64>, Option<f64>)> = args.iter().map(|a| self.half(a)).collect();
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
        match self.of(e) {
            Some((lo, hi)) => (Some(lo), Some(hi)),
            None => (None, None),
        }
    }
}

/// Narrow a column's bounds with WHERE conditions on it (`x BETWEEN a AND b`, `x >= a`,
/// `x < b`, ...): rows outside are filtered out, and whatever bounds we pick the values are
/// clamped into them, so narrower bounds only lower the sensitivity.
pub fn tighten(e: &Expr, (mut lo, mut hi): (f64, f64), conjuncts: &[Expr]) -> (f64, f64) {
    let target = strip_cast(e);
    if !matches!(target, Expr::Column(_)) {
        return (lo, hi);
    }
    let is_target = |x: &Expr| strip_cast(x) == target;
    for c in conjuncts {
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

pub(crate) fn bare_column(e: &Expr) -> Option<&Column> {
    match e {
        Expr::Column(c) => Some(c),
        Expr::Alias(a) => bare_column(&a.expr),
        _ => None,
    }
}

pub(crate) fn strip_cast(e: &Expr) -> &Expr {
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
pub fn literal_number(e: &Expr) -> Option<f64> {
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

pub(crate) fn literal_string(e: &Expr) -> Option<String> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use datafusion::logical_expr::{col, lit};

    #[test]
    fn literals_are_evaluated_as_the_evaluator_would() {
        assert_eq!(literal_number(&lit(0.5)), Some(0.5));
        let cast = Expr::Cast(datafusion::logical_expr::Cast::new(Box::new(lit(0.5)), DataType::Int64));
        assert_eq!(literal_number(&cast), Some(0.0), "CAST(0.5 AS BIGINT) is 0");
        assert_eq!(literal_number(&Expr::Negative(Box::new(lit(3i64)))), Some(-3.0));
        assert_eq!(literal_number(&col("x")), None);
    }

    #[test]
    fn where_conditions_narrow_a_column_but_never_widen_it() {
        let x = col("x");
        let conj = vec![x.clone().gt_eq(lit(10.0)), x.clone().lt(lit(20.0)), col("y").gt(lit(100.0))];
        assert_eq!(tighten(&x, (0.0, 500.0), &conj), (10.0, 20.0));
        assert_eq!(tighten(&x, (0.0, 15.0), &conj), (10.0, 15.0));
        // Contradictory conditions leave a single point, never an inverted interval.
        assert_eq!(tighten(&x, (0.0, 5.0), &conj), (5.0, 5.0));
    }
}
