//! Renderings of an answer, shared by the CLI and the server: JSON, CSV, Arrow IPC and a text
//! table. All of them are read from the engine's typed batch ([`Answer`]): a column is a key,
//! an aggregate (with its `_ci95_lo` / `_ci95_hi` columns) or an expression of aggregates,
//! whatever its values, so every rendering has the same shape for the same query.
//!
//! JSON: `{"columns": [...], "rows": [[...]], <the release report>}`, where a key is a plain
//! value, an aggregate `{"value": v, "ci95": [lo, hi]}`, an expression of aggregates
//! `{"value": v, "ci95": null}` and a suppressed cell `null`. A dry run shows each aggregate
//! as `{"value": null, "ci95_half_width": h}`.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::Schema;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use secretum_engine::dp::answer::{AGGREGATE, KIND};
use secretum_engine::dp::{Answer, Report};
use secretum_engine::{Error, Result};

/// Schema metadata key holding the release report (JSON) in an Arrow IPC answer.
pub const REPORT: &str = "secretum.report";

/// How the CLI prints an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

impl std::str::FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Format> {
        match s {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            other => Err(Error::BadRequest(format!("unknown --format {other:?}: expected table, json or csv"))),
        }
    }
}

/// The JSON answer.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JsonAnswer {
    pub columns: Vec<String>,
    /// One array per row (see the module documentation for what a cell looks like).
    #[schema(value_type = Vec<Vec<Object>>)]
    pub rows: Vec<Vec<Value>>,
    #[serde(flatten)]
    pub report: Report,
}

/// What an answer's column is, from its field metadata.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Key,
    Aggregate(usize),
    Derived,
    Interval,
}

fn kind(f: &arrow::datatypes::Field) -> Kind {
    let meta = f.metadata();
    match meta.get(KIND).map(String::as_str) {
        Some("aggregate") => Kind::Aggregate(meta.get(AGGREGATE).and_then(|j| j.parse().ok()).unwrap_or(0)),
        Some("derived") => Kind::Derived,
        Some("ci95_lo" | "ci95_hi") => Kind::Interval,
        _ => Kind::Key,
    }
}

/// One cell as JSON: numbers, strings, booleans; dates and times as text.
fn cell(a: &dyn Array, row: usize) -> Value {
    if a.is_null(row) {
        return Value::Null;
    }
    let one = a.slice(row, 1);
    scalar(&one).unwrap_or_else(|| Value::String(text(one.as_ref(), 0)))
}

fn scalar(a: &arrow::array::ArrayRef) -> Option<Value> {
    use arrow::array::AsArray;
    use arrow::datatypes::*;
    Some(match a.data_type() {
        DataType::Boolean => a.as_boolean().value(0).into(),
        DataType::Int8 => a.as_primitive::<Int8Type>().value(0).into(),
        DataType::Int16 => a.as_primitive::<Int16Type>().value(0).into(),
        DataType::Int32 => a.as_primitive::<Int32Type>().value(0).into(),
        DataType::Int64 => a.as_primitive::<Int64Type>().value(0).into(),
        DataType::UInt8 => a.as_primitive::<UInt8Type>().value(0).into(),
        DataType::UInt16 => a.as_primitive::<UInt16Type>().value(0).into(),
        DataType::UInt32 => a.as_primitive::<UInt32Type>().value(0).into(),
        DataType::UInt64 => a.as_primitive::<UInt64Type>().value(0).into(),
        DataType::Float32 => serde_json::Number::from_f64(a.as_primitive::<Float32Type>().value(0) as f64).map(Value::Number)?,
        DataType::Float64 => serde_json::Number::from_f64(a.as_primitive::<Float64Type>().value(0)).map(Value::Number)?,
        DataType::Utf8 => a.as_string::<i32>().value(0).into(),
        DataType::LargeUtf8 => a.as_string::<i64>().value(0).into(),
        DataType::Utf8View => a.as_string_view().value(0).into(),
        _ => return None,
    })
}

/// One cell as text.
fn text(a: &dyn Array, row: usize) -> String {
    if a.is_null(row) {
        return String::new();
    }
    ArrayFormatter::try_new(a, &FormatOptions::default()).map(|f| f.value(row).to_string()).unwrap_or_default()
}

/// The output columns (keys, aggregates, expressions; not the interval columns), by index.
fn outputs(schema: &Schema) -> Vec<(usize, Kind)> {
    schema.fields().iter().enumerate().map(|(i, f)| (i, kind(f))).filter(|(_, k)| *k != Kind::Interval).collect()
}

/// The answer as JSON.
pub fn json(a: &Answer) -> JsonAnswer {
    let schema = a.batch.schema();
    let cols = outputs(&schema);
    let columns = cols.iter().map(|(i, _)| schema.field(*i).name().clone()).collect();
    let mut rows = Vec::with_capacity(a.batch.num_rows());
    for r in 0..a.batch.num_rows() {
        let row = cols
            .iter()
            .map(|(i, k)| {
                let v = cell(a.batch.column(*i).as_ref(), r);
                match k {
                    Kind::Key | Kind::Interval => v,
                    Kind::Aggregate(j) if a.report.dry_run => serde_json::json!({
                        "value": null,
                        "ci95_half_width": a.report.aggregates.get(*j).and_then(|g| g.ci95_half_width),
                    }),
                    _ if v.is_null() => Value::Null,
                    Kind::Aggregate(_) => {
                        let (lo, hi) = (cell(a.batch.column(i + 1).as_ref(), r), cell(a.batch.column(i + 2).as_ref(), r));
                        let ci = if lo.is_null() || hi.is_null() { Value::Null } else { serde_json::json!([lo, hi]) };
                        serde_json::json!({"value": v, "ci95": ci})
                    }
                    Kind::Derived => serde_json::json!({"value": v, "ci95": null}),
                }
            })
            .collect();
        rows.push(row);
    }
    JsonAnswer { columns, rows, report: a.report.clone() }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

/// The answer's batch as CSV, header first: every column, intervals included; a suppressed cell
/// is empty.
pub fn csv(a: &Answer) -> String {
    let schema = a.batch.schema();
    let mut out = schema.fields().iter().map(|f| csv_field(f.name())).collect::<Vec<_>>().join(",");
    out.push('\n');
    for r in 0..a.batch.num_rows() {
        let fields: Vec<String> = a.batch.columns().iter().map(|c| csv_field(&text(c.as_ref(), r))).collect();
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// The answer as an Arrow IPC stream: its batch, with the report in the schema's metadata (and
/// the spend and budget as plain keys, for tools that read metadata only).
pub fn arrow_stream(a: &Answer) -> Result<Vec<u8>> {
    let mut meta = HashMap::new();
    meta.insert(REPORT.to_owned(), serde_json::to_string(&a.report).map_err(|e| Error::internal(format!("report: {e}")))?);
    meta.insert("epsilon_spent".to_owned(), a.report.epsilon_spent.to_string());
    meta.insert("delta_spent".to_owned(), a.report.delta_spent.to_string());
    meta.insert("budget_remaining_epsilon".to_owned(), a.report.budget_remaining.epsilon.to_string());
    meta.insert("budget_remaining_delta".to_owned(), a.report.budget_remaining.delta.to_string());
    meta.insert("dry_run".to_owned(), a.report.dry_run.to_string());
    if let Some(id) = a.report.query_id {
        meta.insert("query_id".to_owned(), id.to_string());
    }
    let schema = Arc::new(Schema::new_with_metadata(a.batch.schema().fields().clone(), meta));
    let batch = RecordBatch::try_new(schema.clone(), a.batch.columns().to_vec())?;
    let mut out = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema)?;
        w.write(&batch)?;
        w.finish()?;
    }
    Ok(out)
}

/// An answer back from an Arrow IPC stream (what the CLI's client receives from a server).
pub fn from_arrow_stream(bytes: &[u8]) -> Result<Answer> {
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    let schema = reader.schema();
    let report: Report = schema
        .metadata()
        .get(REPORT)
        .and_then(|r| serde_json::from_str(r).ok())
        .ok_or_else(|| Error::BadRequest("the server's answer carries no release report".into()))?;
    let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
    let plain = Arc::new(Schema::new(schema.fields().clone()));
    let batches: Vec<RecordBatch> =
        batches.into_iter().map(|b| RecordBatch::try_new(plain.clone(), b.columns().to_vec())).collect::<std::result::Result<_, _>>()?;
    let batch = arrow::compute::concat_batches(&plain, &batches)?;
    Ok(Answer { batch, report })
}

/// The answer as a text table with its footer.
pub fn table(a: &Answer) -> String {
    let j = json(a);
    let cells: Vec<Vec<String>> = j.rows.iter().map(|r| r.iter().map(|c| show_cell(c, a.report.dry_run)).collect()).collect();
    let widths: Vec<usize> = (0..j.columns.len())
        .map(|i| cells.iter().map(|r| r[i].chars().count()).chain([j.columns[i].chars().count()]).max().unwrap_or(0))
        .collect();
    let line = |items: Vec<String>| {
        items.iter().zip(&widths).map(|(s, w)| format!("{s:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_owned()
    };
    let mut out = String::new();
    out.push_str(&line(j.columns.clone()));
    out.push('\n');
    out.push_str(&line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    out.push('\n');
    for r in cells {
        out.push_str(&line(r));
        out.push('\n');
    }
    out.push_str(&footer(&a.report));
    out.push('\n');
    if j.rows.iter().flatten().any(|c| c.is_null()) && !a.report.dry_run {
        out.push_str("(suppressed: noisy counts under the steward's small-cell threshold, or cells without a value)\n");
    }
    out
}

/// Print an answer in a format (CSV's footer goes to stderr, so stdout stays CSV).
pub fn print(a: &Answer, format: Format) {
    match format {
        Format::Json => println!("{}", serde_json::to_string(&json(a)).unwrap_or_default()),
        Format::Csv => {
            print!("{}", csv(a));
            eprintln!("{}", footer(&a.report));
        }
        Format::Table => print!("{}", table(a)),
    }
}

fn footer(r: &Report) -> String {
    let mut s = if r.dry_run {
        format!(
            "dry run: nothing spent, no data read. Groups: {}. Budget left: ε {:.6}, δ {:e}",
            r.groups, r.budget_remaining.epsilon, r.budget_remaining.delta
        )
    } else {
        format!(
            "ε spent {}, δ spent {:e}; budget left: ε {:.6}, δ {:e}; groups: {}; query #{}",
            r.epsilon_spent,
            r.delta_spent,
            r.budget_remaining.epsilon,
            r.budget_remaining.delta,
            r.groups,
            r.query_id.unwrap_or_default()
        )
    };
    if r.executed_on.starts_with("cluster") {
        s.push_str(&format!("; executed on the {}", r.executed_on));
    }
    if let Some(e) = r.epsilon_needed {
        s.push_str(&format!("\nε needed for the asked accuracy: {e:.6}"));
    }
    for n in &r.notes {
        s.push_str(&format!("\nnote: {n}"));
    }
    s
}

/// A JSON cell as plain text (strings unquoted, null empty).
pub fn plain(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn show_cell(v: &Value, dry_run: bool) -> String {
    match v {
        Value::Null if dry_run => "·".into(),
        Value::Null => "(suppressed)".into(),
        Value::Object(o) => {
            let value = o.get("value").map(plain).unwrap_or_default();
            if let Some(h) = o.get("ci95_half_width") {
                return if h.is_null() { "± (depends on n)".into() } else { format!("± {}", plain(h)) };
            }
            match o.get("ci95").and_then(|c| c.as_array()) {
                Some(ci) if ci.len() == 2 => format!("{value} [{}, {}]", plain(&ci[0]), plain(&ci[1])),
                _ => value,
            }
        }
        other => plain(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};
    use secretum_engine::dp::Budget;

    fn field(name: &str, ty: DataType, kind: &str, agg: Option<usize>) -> Field {
        let mut m = HashMap::from([(KIND.to_owned(), kind.to_owned())]);
        if let Some(j) = agg {
            m.insert(AGGREGATE.to_owned(), j.to_string());
        }
        Field::new(name, ty, true).with_metadata(m)
    }

    fn answer() -> Answer {
        let schema = Arc::new(Schema::new(vec![
            field("sex", DataType::Utf8, "key", None),
            field("decade", DataType::Int64, "key", None),
            field("n", DataType::Int64, "aggregate", Some(0)),
            field("n_ci95_lo", DataType::Float64, "ci95_lo", Some(0)),
            field("n_ci95_hi", DataType::Float64, "ci95_hi", Some(0)),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["F", "M, \"x\""])),
                Arc::new(Int64Array::from(vec![1950, 1960])),
                Arc::new(Int64Array::from(vec![Some(120), None])),
                Arc::new(Float64Array::from(vec![Some(110.0), None])),
                Arc::new(Float64Array::from(vec![Some(130.0), None])),
            ],
        )
        .unwrap();
        let report = Report {
            epsilon_spent: 0.5,
            delta_spent: 0.0,
            budget_remaining: Budget { epsilon: 2.5, delta: 1e-6 },
            dry_run: false,
            aggregates: vec![],
            groups: "public".into(),
            derived_bounds: vec![],
            rows_per_patient_by_table: Default::default(),
            suppression_threshold: 0,
            notes: vec![],
            query_id: Some(7),
            executed_on: "this node".into(),
            epsilon_needed: None,
            replay_of: None,
            zcdp: None,
        };
        Answer { batch, report }
    }

    #[test]
    fn csv_has_every_column_and_quotes() {
        assert_eq!(csv(&answer()), "sex,decade,n,n_ci95_lo,n_ci95_hi\nF,1950,120,110.0,130.0\n\"M, \"\"x\"\"\",1960,,,\n");
    }

    #[test]
    fn json_shows_keys_plain_aggregates_with_intervals_and_suppression_as_null() {
        let j = json(&answer());
        assert_eq!(j.columns, ["sex", "decade", "n"]);
        assert_eq!(j.rows[0], vec![Value::from("F"), Value::from(1950), serde_json::json!({"value": 120, "ci95": [110.0, 130.0]})]);
        assert_eq!(j.rows[1][2], Value::Null);
    }

    #[test]
    fn arrow_stream_round_trips_with_its_report() {
        let a = answer();
        let back = from_arrow_stream(&arrow_stream(&a).unwrap()).unwrap();
        assert_eq!(back.batch.schema().fields(), a.batch.schema().fields());
        assert_eq!(back.batch.num_rows(), 2);
        assert_eq!(back.report.query_id, Some(7));
        assert_eq!(serde_json::to_value(json(&back)).unwrap(), serde_json::to_value(json(&a)).unwrap());
    }
}
