//! Row validation and conversion: raw fields in, stored Arrow columns out.
//!
//! Each stored column is computed by one [`Op`] from one raw field: parse and check the type,
//! the domain and the bounds; pseudonymize identifiers; generalize quasi-identifiers. Raw
//! identifiers are read only here and never leave this module except as pseudonyms.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::error::{Result, RowProblem};
use crate::pseudonym::{Key, Pseudonymizer, nir_is_valid};
use crate::schema::{Check, ColumnPolicy, ColumnType, Domain, Generalize, OutOfBounds, Role, TablePolicy};

/// Access to the raw fields of one input row, by raw-column index (`None`: absent or null).
pub trait RowFields {
    fn get(&self, raw: usize) -> Option<&[u8]>;
}

/// How many invalid rows are described in full; the rest are counted.
pub const SHOWN_PROBLEMS: usize = 20;

struct Checked {
    nullable: bool,
    /// Identifier values are never echoed in error messages.
    secret: bool,
}

enum Op {
    /// A dropped identifier: validated, never stored.
    Drop {
        src: usize,
        ty: ColumnType,
        check: Option<Check>,
        c: Checked,
    },
    /// The privacy unit (`unit`), or an identifier pseudonymized in place.
    Pseudonym {
        src: usize,
        ty: ColumnType,
        check: Option<Check>,
        p: Pseudonymizer,
        unit: bool,
        c: Checked,
        out: Int64Builder,
        memo: Memo,
    },
    Int {
        src: usize,
        domain: Option<Domain>,
        bounds: Option<(f64, f64)>,
        reject: bool,
        c: Checked,
        out: Int64Builder,
    },
    Float {
        src: usize,
        bounds: Option<(f64, f64)>,
        reject: bool,
        c: Checked,
        out: Float64Builder,
    },
    Str {
        src: usize,
        max_len: Option<usize>,
        domain: Option<Domain>,
        c: Checked,
        out: StringBuilder,
    },
    Date {
        src: usize,
        bounds: Option<(f64, f64)>,
        reject: bool,
        shift: Option<(i64, Pseudonymizer, usize)>,
        c: Checked,
        out: Date32Builder,
    },
    Datetime {
        src: usize,
        c: Checked,
        out: TimestampMicrosecondBuilder,
    },
    Bool {
        src: usize,
        c: Checked,
        out: BooleanBuilder,
    },
    /// A date (or datetime) generalized to its year.
    Year {
        src: usize,
        src_ty: ColumnType,
        bounds: Option<(f64, f64)>,
        domain: Option<Domain>,
        c: Checked,
        out: Int64Builder,
    },
    /// A string generalized to its first `n` characters.
    Prefix {
        src: usize,
        n: usize,
        domain: Option<Domain>,
        c: Checked,
        out: StringBuilder,
    },
}

/// Converts raw rows of one table into stored record batches.
pub struct Converter {
    schema: SchemaRef,
    /// Raw column names, in the order `RowFields::get` indexes them.
    pub raw_names: Vec<String>,
    /// Raw columns that may be absent from an extract (nullable ones).
    pub nullable_raw: Vec<String>,
    ops: Vec<(String, Op)>,
    rows: usize,
    file: String,
    pub shown: Vec<RowProblem>,
    pub more: u64,
    /// Checks of each row's patient against the warehouse (orphans, duplicated persons).
    unit_check: Option<UnitCheck>,
    /// Orphan rows left out (`--orphans drop`).
    pub orphans_dropped: u64,
    /// Rows per patient in this file (patient tables only), for [`Converter::unit_rows_max`].
    unit_rows: Option<UnitCounts>,
}

/// What an ingest checks each row's patient (its privacy-unit pseudonym) against.
pub enum UnitCheck {
    /// The patients of `person`: a row of another table whose patient is not there is an
    /// orphan, invalid (`drop = false`) or left out (`drop = true`).
    Orphans { known: UnitSet, drop: bool },
    /// `person` itself: its privacy unit is its primary key, once per table (`seen` starts
    /// with the patients already stored, at no line; then each patient at its first line).
    Unique { seen: std::collections::HashMap<i64, Option<u64>> },
}

impl Converter {
    pub fn new(policy: &TablePolicy, key: &Key, file: &str) -> Converter {
        let raw: Vec<&ColumnPolicy> = policy.raw_columns().collect();
        let raw_names: Vec<String> = raw.iter().map(|c| c.name.clone()).collect();
        let nullable_raw: Vec<String> = raw.iter().filter(|c| c.nullable).map(|c| c.name.clone()).collect();
        let idx = |name: &str| raw_names.iter().position(|n| n == name).unwrap_or(0);
        let unit = policy.privacy_unit();
        let unit_src = idx(unit.source.as_deref().unwrap_or(&unit.name));
        let shift_key = key.derive("date shift");
        let mut ops = Vec::new();
        for c in &policy.columns {
            let checked = Checked { nullable: c.nullable, secret: c.role == Role::Identifier || c.role == Role::PrivacyUnit };
            let reject = c.on_out_of_bounds == OutOfBounds::Reject;
            let op = match (c.role, &c.source, &c.generalize) {
                (Role::PrivacyUnit, Some(src), _) => {
                    let s = policy.column(src).map(|s| (s.ty, s.check)).unwrap_or((ColumnType::Varchar(None), None));
                    // Every table's privacy unit shares one pseudonym space, so tables join.
                    Op::Pseudonym {
                        src: idx(src),
                        ty: s.0,
                        check: s.1,
                        p: Pseudonymizer::new(key, "privacy_unit"),
                        unit: true,
                        c: checked,
                        out: Int64Builder::new(),
                        memo: Memo::default(),
                    }
                }
                (Role::Identifier, _, _) if c.pseudonymize => Op::Pseudonym {
                    src: idx(&c.name),
                    ty: c.ty,
                    check: c.check,
                    p: Pseudonymizer::new(key, &c.name),
                    unit: false,
                    c: checked,
                    out: Int64Builder::new(),
                    memo: Memo::default(),
                },
                (Role::Identifier, _, _) => {
                    // A source of a derived column is validated by the op that derives from it.
                    if policy.columns.iter().any(|o| o.source.as_deref() == Some(&c.name)) {
                        continue;
                    }
                    Op::Drop { src: idx(&c.name), ty: c.ty, check: c.check, c: checked }
                }
                (_, Some(src), Some(Generalize::Year)) => {
                    let src_col = policy.column(src);
                    let nullable = src_col.is_some_and(|s| s.nullable) || c.nullable;
                    Op::Year {
                        src: idx(src),
                        src_ty: src_col.map(|s| s.ty).unwrap_or(ColumnType::Date),
                        bounds: c.bounds,
                        domain: c.domain.clone(),
                        c: Checked { nullable, secret: true },
                        out: Int64Builder::new(),
                    }
                }
                (_, Some(src), Some(Generalize::Prefix(n))) => {
                    let nullable = policy.column(src).is_some_and(|s| s.nullable) || c.nullable;
                    Op::Prefix {
                        src: idx(src),
                        n: *n,
                        domain: c.domain.clone(),
                        c: Checked { nullable, secret: true },
                        out: StringBuilder::new(),
                    }
                }
                (_, _, shift) => {
                    let src = idx(&c.name);
                    match c.ty {
                        ColumnType::Integer => {
                            Op::Int { src, domain: c.domain.clone(), bounds: c.bounds, reject, c: checked, out: Int64Builder::new() }
                        }
                        ColumnType::Float => Op::Float { src, bounds: c.bounds, reject, c: checked, out: Float64Builder::new() },
                        ColumnType::Varchar(max_len) => {
                            Op::Str { src, max_len, domain: c.domain.clone(), c: checked, out: StringBuilder::new() }
                        }
                        ColumnType::Date => {
                            let shift = match shift {
                                Some(Generalize::ShiftDays(d)) => Some((*d as i64, Pseudonymizer::new(&shift_key, "date shift"), unit_src)),
                                _ => None,
                            };
                            Op::Date { src, bounds: c.bounds, reject, shift, c: checked, out: Date32Builder::new() }
                        }
                        ColumnType::Datetime => Op::Datetime { src, c: checked, out: TimestampMicrosecondBuilder::new() },
                        ColumnType::Boolean => Op::Bool { src, c: checked, out: BooleanBuilder::new() },
                    }
                }
            };
            // Problems are reported under the column the extract has: the source of a derived one.
            ops.push((c.source.clone().unwrap_or_else(|| c.name.clone()), op));
        }
        Converter {
            schema: policy.stored_schema(),
            raw_names,
            nullable_raw,
            ops,
            rows: 0,
            file: file.to_owned(),
            shown: Vec::new(),
            more: 0,
            unit_check: None,
            orphans_dropped: 0,
            unit_rows: (!policy.public).then(UnitCounts::default),
        }
    }

    /// Check every row's patient (see [`UnitCheck`]).
    pub fn with_unit_check(mut self, check: UnitCheck) -> Converter {
        // The unique check already keeps every patient it saw: a second row fails the ingest, so
        // no patient can have more than one and there is nothing to count.
        if matches!(check, UnitCheck::Unique { .. }) {
            self.unit_rows = None;
        }
        self.unit_check = Some(check);
        self
    }

    /// The privacy unit's pseudonym of a row, when the row has a valid one (memoized: the op
    /// that stores it asks again for the same row).
    fn unit_of(&mut self, row: &dyn RowFields) -> Option<(String, i64)> {
        self.ops.iter_mut().find_map(|(name, op)| match op {
            Op::Pseudonym { src, ty, p, unit: true, memo, .. } => {
                let v = row.get(*src).filter(|v| !v.is_empty())?;
                let bytes = identifier_bytes(v, *ty).ok()?;
                Some((name.clone(), memo.pseudonymize(p, &bytes)))
            }
            _ => None,
        })
    }

    /// The most rows any one patient has in what was pushed (`None` for a public table). It
    /// tells queries whether truncating this ingest's rows to a bound would drop anything: see
    /// `dp::rewrite`, where it is used, and why it is as private as the truncation it replaces.
    pub fn unit_rows_max(&self) -> Option<u64> {
        match (&self.unit_check, &self.unit_rows) {
            // The patients this file added are those seen at a line (stored ones are seen at none).
            (Some(UnitCheck::Unique { seen }), _) => Some(u64::from(seen.values().any(Option::is_some))),
            (_, Some(counts)) => Some(counts.values().copied().max().unwrap_or(0) as u64),
            _ => None,
        }
    }

    /// The patients of what was pushed with the most rows, and the threshold above which all
    /// are listed ([`crate::catalog::listing`]); `None` for a public table. Like
    /// [`Converter::unit_rows_max`], it tells queries which patients a truncation can drop rows of.
    pub fn unit_rows_listing(&self) -> Option<(u64, Vec<(i64, u64)>)> {
        match (&self.unit_check, &self.unit_rows) {
            // One row per patient: none has more than 1.
            (Some(UnitCheck::Unique { .. }), _) => Some((1, Vec::new())),
            (_, Some(counts)) => Some(crate::catalog::listing(counts.iter().map(|(p, n)| (*p, u64::from(*n))))),
            _ => None,
        }
    }

    pub fn failed(&self) -> bool {
        !self.shown.is_empty()
    }

    pub fn rows_buffered(&self) -> usize {
        self.rows
    }

    /// Record a problem with the row at `line` (not tied to a column, e.g. a wrong field count).
    pub fn row_problem(&mut self, line: u64, column: Option<&str>, reason: String) {
        if self.shown.len() < SHOWN_PROBLEMS {
            self.shown.push(RowProblem { file: self.file.clone(), line, column: column.map(str::to_owned), reason });
        } else {
            self.more += 1;
        }
    }

    /// Validate and convert one row. Every op appends exactly one value (null on error) so the
    /// builders stay aligned; a failed ingest never writes its batches anyway.
    pub fn push_row(&mut self, row: &dyn RowFields, line: u64) {
        if (self.unit_check.is_some() || self.unit_rows.is_some())
            && let Some((column, unit)) = self.unit_of(row)
        {
            let problem = match self.unit_check.as_mut() {
                Some(UnitCheck::Orphans { known, drop }) if !known.contains(&unit) => {
                    if *drop {
                        self.orphans_dropped += 1;
                        return;
                    }
                    Some("this patient is not in `person` (an orphan row): ingest person first, or pass --orphans drop".to_owned())
                }
                Some(UnitCheck::Unique { seen }) => match seen.get(&unit) {
                    None => {
                        seen.insert(unit, Some(line));
                        None
                    }
                    Some(Some(first)) => {
                        Some(format!("this patient is also on line {first}: the privacy unit is the primary key of this table"))
                    }
                    Some(None) => Some("this patient is already in the table: the privacy unit is the primary key of this table".into()),
                },
                _ => None,
            };
            if let Some(reason) = problem {
                self.row_problem(line, Some(&column), reason);
            }
            if let Some(counts) = self.unit_rows.as_mut() {
                *counts.entry(unit).or_insert(0) += 1;
            }
        }
        self.rows += 1;
        let mut problems: Vec<(String, String)> = Vec::new();
        for (name, op) in &mut self.ops {
            if let Err(reason) = apply(op, row) {
                problems.push((name.clone(), reason.0));
            }
        }
        for (column, reason) in problems {
            self.row_problem(line, Some(&column), reason);
        }
    }

    /// The rows pushed since the last call, as one stored batch; `None` once any row was
    /// invalid (nothing will be written, the builders are just emptied).
    pub fn finish_batch(&mut self) -> Result<Option<RecordBatch>> {
        let columns: Vec<ArrayRef> = self
            .ops
            .iter_mut()
            .filter_map(|(_, op)| -> Option<ArrayRef> {
                Some(match op {
                    Op::Drop { .. } => return None,
                    Op::Pseudonym { out, .. } | Op::Int { out, .. } | Op::Year { out, .. } => Arc::new(out.finish()),
                    Op::Float { out, .. } => Arc::new(out.finish()),
                    Op::Str { out, .. } | Op::Prefix { out, .. } => Arc::new(out.finish()),
                    Op::Date { out, .. } => Arc::new(out.finish()),
                    Op::Datetime { out, .. } => Arc::new(out.finish()),
                    Op::Bool { out, .. } => Arc::new(out.finish()),
                })
            })
            .collect();
        self.rows = 0;
        if self.failed() {
            return Ok(None);
        }
        Ok(Some(RecordBatch::try_new(self.schema.clone(), columns)?))
    }
}

/// Shown in an error: the value for ordinary columns, nothing for identifiers.
fn shown(value: &[u8], c: &Checked) -> String {
    if c.secret {
        "value".into()
    } else {
        let s = String::from_utf8_lossy(value);
        let s: String = s.chars().take(40).collect();
        format!("`{s}`")
    }
}

/// Rows per pseudonym.
type UnitCounts = std::collections::HashMap<i64, u32, std::hash::BuildHasherDefault<IdentityHasher>>;

/// Pseudonyms are HMAC outputs, already uniformly spread: a set of them needs no hashing.
pub type UnitSet = std::collections::HashSet<i64, std::hash::BuildHasherDefault<IdentityHasher>>;

#[derive(Default)]
pub struct IdentityHasher(u64);

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_i64(&mut self, v: i64) {
        self.0 = v as u64;
    }
}

/// Why one value of a row is invalid: the reason of its [`crate::error::RowProblem`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid(pub(crate) String);

impl From<&str> for Invalid {
    fn from(s: &str) -> Invalid {
        Invalid(s.to_owned())
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn text(value: &[u8]) -> Result<&str, Invalid> {
    std::str::from_utf8(value).map_err(|_| Invalid::from("invalid UTF-8"))
}

/// Fetch a field; `Ok(None)` for an allowed null.
fn field<'a>(row: &'a dyn RowFields, src: usize, c: &Checked) -> Result<Option<&'a [u8]>, Invalid> {
    match row.get(src).filter(|v| !v.is_empty()) {
        Some(v) => Ok(Some(v)),
        None if c.nullable => Ok(None),
        None => Err(Invalid::from("missing required value")),
    }
}

fn check_bounds(v: f64, bounds: Option<(f64, f64)>, reject: bool, what: impl Fn() -> String) -> Result<(), Invalid> {
    match bounds {
        Some((lo, hi)) if reject && !(lo..=hi).contains(&v) => Err(Invalid(format!("{} is outside the bounds [{lo}, {hi}]", what()))),
        _ => Ok(()),
    }
}

/// An integer as exports write them: `123`, or `123.0` (ids and concept ids written as floats by
/// some ETL tools); any other fraction is not an integer.
fn integer(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(i) = s.parse::<i64>() {
        return Some(i);
    }
    let (whole, frac) = s.split_once('.')?;
    if frac.is_empty() || !frac.bytes().all(|b| b == b'0') {
        return None;
    }
    whole.parse::<i64>().ok()
}

fn parse_int(v: &[u8], c: &Checked) -> Result<i64, Invalid> {
    integer(text(v)?).ok_or_else(|| Invalid(format!("{} is not an integer", shown(v, c))))
}

/// The bytes an identifier is pseudonymized from: an integer identifier in its canonical form
/// (so `10204.0` in one file and `10204` in another are the same patient), anything else as is.
fn identifier_bytes(v: &[u8], ty: ColumnType) -> Result<std::borrow::Cow<'_, [u8]>, Invalid> {
    if ty != ColumnType::Integer {
        return Ok(std::borrow::Cow::Borrowed(v));
    }
    let s = text(v)?;
    // Already canonical: digits without a leading zero.
    if !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit()) && (s.len() == 1 || !s.starts_with('0')) {
        return Ok(std::borrow::Cow::Borrowed(v));
    }
    let i = integer(s).ok_or_else(|| Invalid::from("an integer identifier that is not an integer"))?;
    Ok(std::borrow::Cow::Owned(i.to_string().into_bytes()))
}

/// `YYYY-MM-DD` (optionally followed by a time, which is ignored) or `YYYYMMDD` (the
/// vocabularies' and some exports' form) → days since the epoch.
fn parse_date(v: &[u8], c: &Checked) -> Result<i32, Invalid> {
    let bad = || Invalid(format!("{} is not a date (YYYY-MM-DD or YYYYMMDD)", shown(v, c)));
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        v.get(r)?.iter().try_fold(0u32, |acc, b| b.is_ascii_digit().then(|| acc * 10 + (b - b'0') as u32))
    };
    let (y, m, d) = if v.len() == 8 {
        (num(0..4), num(4..6), num(6..8))
    } else {
        if v.len() < 10 || (v.len() > 10 && v[10] != b' ' && v[10] != b'T') || v[4] != b'-' || v[7] != b'-' {
            return Err(bad());
        }
        (num(0..4), num(5..7), num(8..10))
    };
    let (Some(y), Some(m), Some(d)) = (y, m, d) else { return Err(bad()) };
    let date = chrono::NaiveDate::from_ymd_opt(y as i32, m, d).ok_or_else(bad)?;
    Ok(date.signed_duration_since(chrono::NaiveDate::default()).num_days() as i32)
}

/// A datetime as exports write them: `YYYY-MM-DD HH:MM[:SS[.ffffff]]` (or with `T`), with or
/// without a time zone (`Z`, `+01:00`: converted to UTC), or a date alone (midnight).
fn parse_datetime(v: &[u8], c: &Checked) -> Result<i64, Invalid> {
    let s = text(v)?.trim();
    for fmt in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M%#z", "%Y-%m-%dT%H:%M%#z"] {
        if let Ok(t) = chrono::DateTime::parse_from_str(s, fmt) {
            return Ok(t.to_utc().timestamp_micros());
        }
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.to_utc().timestamp_micros());
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(t.and_utc().timestamp_micros());
        }
    }
    if let Ok(d) = parse_date(v, c) {
        return Ok(d as i64 * 86_400_000_000);
    }
    Err(Invalid(format!("{} is not a datetime (YYYY-MM-DD HH:MM:SS, with or without a time zone)", shown(v, c))))
}

fn check_identifier(v: &[u8], ty: ColumnType, check: Option<Check>) -> Result<(), Invalid> {
    let s = text(v)?;
    if let ColumnType::Varchar(Some(n)) = ty
        && s.chars().count() > n
    {
        return Err(Invalid(format!("identifier longer than {n} characters")));
    }
    match check {
        Some(Check::Nir) if !nir_is_valid(s) => Err(Invalid::from("not a valid NIR (15 characters ending with its control key)")),
        _ => Ok(()),
    }
}

/// The last identifier pseudonymized by an op and its pseudonym: a patient's rows usually come
/// together, and the unit check and the stored column ask for the same row's pseudonym.
#[derive(Debug, Default)]
struct Memo {
    last: Option<(Vec<u8>, i64)>,
}

impl Memo {
    fn pseudonymize(&mut self, p: &Pseudonymizer, bytes: &[u8]) -> i64 {
        if let Some((b, v)) = &self.last
            && b.as_slice() == bytes
        {
            return *v;
        }
        let v = p.pseudonymize(bytes);
        match &mut self.last {
            Some((b, old)) => {
                b.clear();
                b.extend_from_slice(bytes);
                *old = v;
            }
            None => self.last = Some((bytes.to_vec(), v)),
        }
        v
    }
}

fn apply(op: &mut Op, row: &dyn RowFields) -> Result<(), Invalid> {
    match op {
        Op::Drop { src, ty, check, c } => {
            if let Some(v) = field(row, *src, c)? {
                check_identifier(v, *ty, *check)?;
            }
            Ok(())
        }
        Op::Pseudonym { src, ty, check, p, c, out, memo, .. } => {
            let r = (|| {
                let Some(v) = field(row, *src, c)? else { return Ok(None) };
                check_identifier(v, *ty, *check)?;
                Ok(Some(memo.pseudonymize(p, &identifier_bytes(v, *ty)?)))
            })();
            out.append_option(r.clone().ok().flatten());
            r.map(|_| ())
        }
        Op::Int { src, domain, bounds, reject, c, out } => {
            let r = (|| {
                let Some(v) = field(row, *src, c)? else { return Ok(None) };
                let i = parse_int(v, c)?;
                if let Some(d) = domain
                    && !d.contains_int(i)
                {
                    return Err(Invalid(format!("{} is not in the column's declared domain", shown(v, c))));
                }
                check_bounds(i as f64, *bounds, *reject, || shown(v, c))?;
                Ok(Some(i))
            })();
            out.append_option(r.clone().ok().flatten());
            r.map(|_| ())
        }
        Op::Float { src, bounds, reject, c, out } => {
            let r = (|| {
                let Some(v) = field(row, *src, c)? else { return Ok(None) };
                let f = text(v)?
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| Invalid(format!("{} is not a finite number", shown(v, c))))?;
                check_bounds(f, *bounds, *reject, || shown(v, c))?;
                Ok(Some(f))
            })();
            out.append_option(r.clone().ok().flatten());
            r.map(|_| ())
        }
        Op::Str { src, max_len, domain, c, out } => {
            let r = (|| {
                let Some(v) = field(row, *src, c)? else { return Ok(None) };
                let s = text(v)?;
                if let Some(n) = max_len
                    && s.len() > *n
                    && s.chars().count() > *n
                {
                    return Err(Invalid(format!("longer than {n} characters")));
                }
                if let Some(d) = domain
                    && !d.contains_str(s)
                {
                    return Err(Invalid(format!("{} is not in the column's declared domain", shown(v, c))));
                }
                Ok(Some(s))
            })();
            match &r {
                Ok(Some(s)) => out.append_value(s),
                _ => out.append_null(),
            }
            r.map(|_| ())
        }
        Op::Date { src, bounds, reject, shift, c, out } => {
            let r = (|| {
                let Some(v) = field(row, *src, c)? else { return Ok(None) };
                let mut d = parse_date(v, c)?;
                check_bounds(d as f64, *bounds, *reject, || shown(v, c))?;
                if let Some((days, p, unit_src)) = shift {
                    // Offset in [-days, +days], the same for every date of one patient.
                    let unit = row.get(*unit_src).unwrap_or_default();
                    let span = 2 * *days + 1;
                    d += (p.pseudonymize(unit) % span - *days) as i32;
                }
                Ok(Some(d))
            })();
            out.append_option(r.clone().ok().flatten());
            r.map(|_| ())
        }
        Op::Bool { src, c, out } => {
            let r = (|| {
                let Some(v) = field(row, *src, c)? else { return Ok(None) };
                match text(v)?.trim().to_ascii_lowercase().as_str() {
                    "true" | "t" | "1" | "yes" | "y" => Ok(Some(true)),
                    "false" | "f" | "0" | "no" | "n" => Ok(Some(false)),
                    _ => Err(Invalid(format!("{} is not a boolean (true/false)", shown(v, c)))),
                }
            })();
            out.append_option(r.clone().ok().flatten());
            r.map(|_| ())
        }
        Op::Datetime { src, c, out } => {
            let r = (|| {
                let Some(v) = field(row, *src, c)? else { return Ok(None) };
                Ok(Some(parse_datetime(v, c)?))
            })();
            out.append_option(r.clone().ok().flatten());
            r.map(|_| ())
        }
        Op::Year { src, src_ty, bounds, domain, c, out } => {
            let r = (|| {
                let Some(v) = field(row, *src, c)? else { return Ok(None) };
                let year = match src_ty {
                    ColumnType::Datetime => {
                        let micros = parse_datetime(v, c)?;
                        chrono::DateTime::from_timestamp_micros(micros).map(|t| chrono::Datelike::year(&t) as i64).unwrap_or(0)
                    }
                    _ => {
                        let days = parse_date(v, c)?;
                        let date = chrono::NaiveDate::default() + chrono::Duration::days(days as i64);
                        chrono::Datelike::year(&date) as i64
                    }
                };
                if domain.as_ref().is_some_and(|d| !d.contains_int(year)) {
                    return Err(Invalid::from("year outside the column's declared domain"));
                }
                check_bounds(year as f64, *bounds, true, || "year".into())?;
                Ok(Some(year))
            })();
            out.append_option(r.clone().ok().flatten());
            r.map(|_| ())
        }
        Op::Prefix { src, n, domain, c, out } => {
            let r = (|| {
                let Some(v) = field(row, *src, c)? else { return Ok(None) };
                let s = text(v)?;
                let end = s.char_indices().nth(*n).map(|(i, _)| i).unwrap_or(s.len());
                if s[..end].chars().count() < *n {
                    return Err(Invalid(format!("too short to keep its first {n} characters")));
                }
                let prefix = &s[..end];
                if domain.as_ref().is_some_and(|d| !d.contains_str(prefix)) {
                    return Err(Invalid(format!("first {n} characters are not in the column's declared domain")));
                }
                Ok(Some(prefix.to_owned()))
            })();
            match &r {
                Ok(Some(s)) => out.append_value(s),
                _ => out.append_null(),
            }
            r.map(|_| ())
        }
    }
}
