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
    /// WHERE conjuncts that narrow columns and differences ([`tighten`]).
    conjuncts: &'a [Expr],
}

impl<'a> Intervals<'a> {
    pub fn new(column: &'a dyn Fn(&Column) -> Option<&'a ColumnPolicy>, conjuncts: &'a [Expr]) -> Intervals<'a> {
        Intervals { column, conjuncts }
    }

    /// Public bounds of a numeric expression, if they can be derived: interval arithmetic, each
    /// column and each difference narrowed by the WHERE conjuncts on it.
    pub fn of(&self, e: &Expr) -> Option<(f64, f64)> {
        let b = tighten(e, self.untightened(e)?, self.conjuncts);
        (b.0.is_finite() && b.1.is_finite() && b.0 <= b.1).then_some(b)
    }

    fn untightened(&self, e: &Expr) -> Option<(f64, f64)> {
        let b = match e {
            Expr::Alias(a) => self.of(&a.expr)?,
            // Numbers, and dates as day numbers (so that date differences get bounds in days).
            Expr::Column(c) => {
                let p = (self.column)(c)?;
                if !(p.stored_type().is_numeric() || p.stored_type() == crate::schema::ColumnType::Date) {
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
                // A date plus or minus an interval literal moves by the interval's days.
                let r = literal_number(right).map(|v| (v, v)).or_else(|| interval_days(right)).or_else(|| self.of(right))?;
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
                        // Of a date column or date arithmetic: bounds in days.
                        "year" | "years" => {
                            let (lo, hi) = self.of(args.get(1)?)?;
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
                // One of its arguments (or NULL).
                "coalesce" => {
                    let all: Option<Vec<(f64, f64)>> =
                        args.iter().map(|a| literal_number(a).map(|v| (v, v)).or_else(|| self.of(a))).collect();
                    all?.into_iter().reduce(|x, y| (x.0.min(y.0), x.1.max(y.1)))?
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
        Some(b)
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
    if let Expr::BinaryExpr(BinaryExpr { left, op: Operator::Minus, right }) = target {
        return difference(left, right, (lo, hi), conjuncts);
    }
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

/// Narrow a difference `a - b` with WHERE conditions relating `a` and `b`: `a >= b`,
/// `a < b + INTERVAL '365 days'`, `a - b <= 30`, ... (follow-up windows after an index date).
/// An interval of months counts as its fewest days for a lower bound and its most for an upper.
fn difference(a: &Expr, b: &Expr, (mut lo, mut hi): (f64, f64), conjuncts: &[Expr]) -> (f64, f64) {
    let same = |x: &Expr, y: &Expr| strip_cast(x) == strip_cast(y);
    let offset = |e: &Expr| literal_number(e).map(|v| (v, v)).or_else(|| interval_days(e));
    // `x op y` as `a - b op k` with k in a range, if it is one.
    let relation = |x: &Expr, y: &Expr| -> Option<(f64, f64)> {
        if !same(x, a) {
            return None;
        }
        if same(y, b) {
            return Some((0.0, 0.0));
        }
        match strip_cast(y) {
            Expr::BinaryExpr(BinaryExpr { left, op: Operator::Plus, right }) if same(left, b) => offset(right),
            Expr::BinaryExpr(BinaryExpr { left, op: Operator::Plus, right }) if same(right, b) => offset(left),
            Expr::BinaryExpr(BinaryExpr { left, op: Operator::Minus, right }) if same(left, b) => offset(right).map(|(l, h)| (-h, -l)),
            _ => None,
        }
    };
    for c in conjuncts {
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = c else { continue };
        let found = relation(left, right)
            .map(|k| (*op, k))
            .or_else(|| op.swap().and_then(|o| relation(right, left).map(|k| (o, k))))
            .or_else(|| match strip_cast(left) {
                Expr::BinaryExpr(BinaryExpr { left: x, op: Operator::Minus, right: y }) if same(x, a) && same(y, b) => {
                    literal_number(right).map(|v| (*op, (v, v)))
                }
                _ => None,
            });
        match found {
            Some((Operator::Gt | Operator::GtEq, (k, _))) => lo = lo.max(k),
            Some((Operator::Lt | Operator::LtEq, (_, k))) => hi = hi.min(k),
            Some((Operator::Eq, (kl, kh))) => {
                lo = lo.max(kl);
                hi = hi.min(kh);
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
    let f64_of = |v: &ScalarValue| match v {
        // A date literal is its day number (as date columns' bounds are).
        ScalarValue::Date32(d) => d.map(f64::from),
        other => match other.cast_to(&DataType::Float64).ok()? {
            ScalarValue::Float64(Some(x)) => Some(x),
            _ => None,
        },
    };
    match e {
        Expr::Negative(x) => literal_number(x).map(|v| -v),
        Expr::Alias(a) => literal_number(&a.expr),
        // `CAST(0.5 AS BIGINT)` is 0, not 0.5: cast the literal as the evaluator will.
        Expr::Cast(datafusion::logical_expr::Cast { expr, field }) | Expr::TryCast(datafusion::logical_expr::TryCast { expr, field }) => {
            let inner = literal_scalar(expr)?;
            f64_of(&inner.cast_to(field.data_type()).ok()?)
        }
        Expr::Literal(v, _) if !v.is_null() && (v.data_type().is_numeric() || v.data_type() == DataType::Date32) => f64_of(v),
        _ => None,
    }
}

/// An interval literal as a range of days (a month is 28 to 31 days).
fn interval_days(e: &Expr) -> Option<(f64, f64)> {
    match literal_scalar(e)? {
        ScalarValue::IntervalMonthDayNano(Some(v)) => {
            let fixed = v.days as f64 + v.nanoseconds as f64 / 86_400e9;
            let (a, b) = (v.months as f64 * 28.0, v.months as f64 * 31.0);
            Some((fixed + a.min(b), fixed + a.max(b)))
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            let d = v.days as f64 + v.milliseconds as f64 / 86_400e3;
            Some((d, d))
        }
        ScalarValue::IntervalYearMonth(Some(m)) => {
            let (a, b) = (m as f64 * 28.0, m as f64 * 31.0);
            Some((a.min(b), a.max(b)))
        }
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

    #[test]
    fn follow_up_windows_narrow_a_difference_of_dates() {
        let (d, idx) = (col("d"), col("idx"));
        let diff = d.clone() - idx.clone();
        let year = Expr::Literal(ScalarValue::new_interval_mdn(0, 365, 0), None);
        let conj = vec![d.clone().gt_eq(idx.clone()), d.clone().lt(idx.clone() + year)];
        assert_eq!(tighten(&diff, (-10_000.0, 10_000.0), &conj), (0.0, 365.0));
        // Months count as 28 to 31 days: the upper bound takes the most.
        let months = Expr::Literal(ScalarValue::new_interval_mdn(6, 0, 0), None);
        let conj = vec![idx.clone().lt_eq(d.clone()), d.clone().lt_eq(idx.clone() + months)];
        assert_eq!(tighten(&diff, (-10_000.0, 10_000.0), &conj), (0.0, 186.0));
        // The difference itself compared to a literal; unrelated conditions change nothing.
        let conj = vec![diff.clone().lt(lit(90i64)), col("x").gt(idx.clone())];
        assert_eq!(tighten(&diff, (-10_000.0, 10_000.0), &conj), (-10_000.0, 90.0));
        // The other way round: idx - d is bounded by the same conditions, mirrored.
        let conj = vec![d.clone().gt_eq(idx.clone())];
        assert_eq!(tighten(&(idx - d), (-10_000.0, 10_000.0), &conj), (-10_000.0, 0.0));
    }
}
