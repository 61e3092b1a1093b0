//! Answers as CSV and as Arrow IPC streams (for data tools), shared by the CLI and the server.
//!
//! A noisy column `c` becomes three: `c`, `c_ci95_lo`, `c_ci95_hi`; a suppressed cell is empty
//! (CSV) or null (Arrow). The Arrow schema's metadata carries ε and δ spent, the budget left
//! and the query id.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use serde_json::Value;

use secretum_engine::dp::Answer;

fn noisy(a: &Answer, col: usize) -> bool {
    a.rows.iter().any(|r| r[col].is_object())
}

/// A JSON cell as plain text (strings unquoted, null empty).
pub(crate) fn plain(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

/// The answer's cells as CSV, header first.
pub fn csv(a: &Answer) -> String {
    let mut header = Vec::new();
    for (i, c) in a.columns.iter().enumerate() {
        if noisy(a, i) {
            header.extend([c.clone(), format!("{c}_ci95_lo"), format!("{c}_ci95_hi")]);
        } else {
            header.push(c.clone());
        }
    }
    let mut out = header.iter().map(|h| csv_field(h)).collect::<Vec<_>>().join(",");
    out.push('\n');
    for r in &a.rows {
        let mut fields = Vec::new();
        for (i, cell) in r.iter().enumerate() {
            if noisy(a, i) {
                let v = cell.get("value").map(plain).unwrap_or_default();
                let (lo, hi) = match cell.get("ci95").and_then(|c| c.as_array()) {
                    Some(ci) if ci.len() == 2 => (plain(&ci[0]), plain(&ci[1])),
                    _ => (String::new(), String::new()),
                };
                fields.extend([v, lo, hi]);
            } else {
                fields.push(csv_field(&plain(cell)));
            }
        }
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// The answer as one Arrow record batch.
pub fn record_batch(a: &Answer) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    let f64_of = |v: Option<&Value>| v.and_then(Value::as_f64);
    for (i, name) in a.columns.iter().enumerate() {
        let cells: Vec<&Value> = a.rows.iter().map(|r| &r[i]).collect();
        if noisy(a, i) {
            let ci = |k: usize| -> Float64Array {
                cells.iter().map(|c| c.get("ci95").and_then(|ci| ci.as_array()).and_then(|ci| f64_of(ci.get(k)))).collect()
            };
            let values: Float64Array = cells.iter().map(|c| f64_of(c.get("value"))).collect();
            fields.push(Field::new(name, DataType::Float64, true));
            arrays.push(Arc::new(values));
            fields.push(Field::new(format!("{name}_ci95_lo"), DataType::Float64, true));
            arrays.push(Arc::new(ci(0)));
            fields.push(Field::new(format!("{name}_ci95_hi"), DataType::Float64, true));
            arrays.push(Arc::new(ci(1)));
        } else if cells.iter().all(|c| c.is_null() || c.is_i64()) {
            fields.push(Field::new(name, DataType::Int64, true));
            arrays.push(Arc::new(cells.iter().map(|c| c.as_i64()).collect::<Int64Array>()));
        } else if cells.iter().all(|c| c.is_null() || c.is_number()) {
            fields.push(Field::new(name, DataType::Float64, true));
            arrays.push(Arc::new(cells.iter().map(|c| c.as_f64()).collect::<Float64Array>()));
        } else if cells.iter().all(|c| c.is_null() || c.is_boolean()) {
            fields.push(Field::new(name, DataType::Boolean, true));
            arrays.push(Arc::new(cells.iter().map(|c| c.as_bool()).collect::<BooleanArray>()));
        } else {
            fields.push(Field::new(name, DataType::Utf8, true));
            arrays.push(Arc::new(cells.iter().map(|c| (!c.is_null()).then(|| plain(c))).collect::<StringArray>()));
        }
    }
    let mut meta = HashMap::new();
    meta.insert("epsilon_spent".to_owned(), a.epsilon_spent.to_string());
    meta.insert("delta_spent".to_owned(), a.delta_spent.to_string());
    meta.insert("budget_remaining_epsilon".to_owned(), a.budget_remaining.epsilon.to_string());
    meta.insert("budget_remaining_delta".to_owned(), a.budget_remaining.delta.to_string());
    meta.insert("dry_run".to_owned(), a.dry_run.to_string());
    if let Some(id) = a.query_id {
        meta.insert("query_id".to_owned(), id.to_string());
    }
    let schema = Arc::new(Schema::new_with_metadata(fields, meta));
    if arrays.is_empty() {
        return Ok(RecordBatch::new_empty(schema));
    }
    RecordBatch::try_new(schema, arrays)
}

/// The answer as an Arrow IPC stream.
pub fn arrow_stream(a: &Answer) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let batch = record_batch(a)?;
    let mut out = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &batch.schema())?;
        w.write(&batch)?;
        w.finish()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;
    use secretum_engine::dp::Budget;
    use serde_json::json;

    fn answer() -> Answer {
        Answer {
            columns: vec!["sex".into(), "decade".into(), "n".into()],
            rows: vec![
                vec![json!("F"), json!(1950), json!({"value": 120.0, "ci95": [110.0, 130.0]})],
                vec![json!("M, \"x\""), json!(1960), Value::Null],
            ],
            epsilon_spent: 0.5,
            delta_spent: 0.0,
            budget_remaining: Budget { epsilon: 2.5, delta: 1e-6 },
            dry_run: false,
            aggregates: vec![],
            groups: "public".into(),
            query_id: Some(7),
            epsilon_needed: None,
        }
    }

    #[test]
    fn csv_splits_intervals_and_quotes() {
        assert_eq!(csv(&answer()), "sex,decade,n,n_ci95_lo,n_ci95_hi\nF,1950,120.0,110.0,130.0\n\"M, \"\"x\"\"\",1960,,,\n");
    }

    #[test]
    fn arrow_stream_round_trips() {
        let bytes = arrow_stream(&answer()).unwrap();
        let mut r = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
        let b = r.next().unwrap().unwrap();
        let names: Vec<_> = b.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["sex", "decade", "n", "n_ci95_lo", "n_ci95_hi"]);
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.schema().metadata()["query_id"], "7");
        let n = b.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!((n.value(0), n.is_null(1)), (120.0, true));
    }
}
