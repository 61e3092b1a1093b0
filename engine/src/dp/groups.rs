//! Which groups a release has: public keys or DP partition selection.
//!
//! A group key whose columns all have a public domain (declared, or the bounds of an integer
//! or date column) releases every key of that domain, zero-filled before noise, so a group that
//! no patient is in looks like any other: its absence leaks nothing. The keys are computed from
//! the schema alone, by evaluating the key expression (total, see [`super::total`]) over the
//! cross product of the domains, narrowed by WHERE conditions on those columns only.
//!
//! Any other grouping selects its keys privately ([`select_partitions`]): per key the distinct
//! patients are counted, noised, and kept above a threshold chosen for δ (OpenDP's
//! noise-threshold mechanism).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Date32Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::Expr;

use super::analyze::{Analysis, KeySpec};
use super::mechanisms::{self, Noise};
use super::rule::Rule;
use crate::error::{Error, Result};
use crate::schema::{ColumnPolicy, ColumnType, Domain, DomainValue};

/// The most public groups a query may release.
pub use crate::schema::MAX_DOMAIN;

/// Every value of a column's public domain, as an array of the column's stored type.
fn domain_array(p: &ColumnPolicy) -> Option<ArrayRef> {
    let n = p.public_domain_size()?;
    let ty = p.stored_type();
    let array: ArrayRef = match (&p.domain, ty) {
        (Some(Domain::Values(set)), _) => {
            if set.iter().all(|v| matches!(v, DomainValue::Int(_))) {
                Arc::new(Int64Array::from_iter_values(set.iter().map(|v| if let DomainValue::Int(i) = v { *i } else { 0 })))
            } else {
                Arc::new(StringArray::from_iter_values(set.iter().map(|v| v.to_string())))
            }
        }
        (Some(Domain::Range(lo, hi)), _) => Arc::new(Int64Array::from_iter_values(*lo..=*hi)),
        // Resolved into values before analysis when the vocabulary lists few enough.
        (Some(Domain::Concepts(_)), _) => return None,
        (None, ColumnType::Date) => {
            let (lo, _) = p.bounds?;
            Arc::new(Date32Array::from_iter_values((0..n as i32).map(|d| lo.ceil() as i32 + d)))
        }
        (None, _) => {
            let (lo, _) = p.bounds?;
            Arc::new(Int64Array::from_iter_values((0..n as i64).map(|d| lo.ceil() as i64 + d)))
        }
    };
    // A nullable column (or the right side of a left join) may be NULL: the key is evaluated
    // over that too (`COALESCE(x, 0)`, `x IS NULL`).
    let array = if p.nullable {
        datafusion::arrow::compute::concat(&[array.as_ref(), datafusion::arrow::array::new_null_array(array.data_type(), 1).as_ref()])
            .ok()?
    } else {
        array
    };
    cast(&array, &ty.arrow()).ok()
}

/// The public keys of one group key: its expression evaluated over the cross product of the
/// public domains of the columns it reads. Computed from the schema alone.
fn key_values(ctx: &SessionContext, key: &KeySpec, filters: &[Expr], out_type: &DataType) -> Result<Vec<ScalarValue>> {
    if let Some(values) = &key.values {
        return Ok(values.clone());
    }
    let mut columns: Vec<(Column, ColumnPolicy)> = Vec::new();
    for (c, p) in &key.columns {
        if !columns.iter().any(|(x, _)| x == c) {
            columns.push((c.clone(), p.clone()));
        }
    }
    if let Some((lo, hi)) = key.range {
        // Too many combinations of the columns (or a column without a public domain), but
        // the key's own bounds are few integers: all of them are the keys.
        // Booleans come as 0..1, cast.
        let values = Int64Array::from_iter_values(lo as i64..=hi as i64);
        let values = cast(&values, out_type).map_err(|e| internal(e.into()))?;
        return (0..values.len()).map(|r| ScalarValue::try_from_array(&values, r).map_err(internal)).collect();
    }
    let domains: Vec<ArrayRef> = columns
        .iter()
        .map(|(c, p)| domain_array(p).ok_or_else(|| Error::internal(format!("public key column {} without a public domain", c.name))))
        .collect::<Result<_>>()?;
    let rows: usize = domains.iter().map(|d| d.len()).product();
    if rows > 10 * MAX_DOMAIN {
        return Err(Error::refused(
            Rule::TooManyGroups,
            format!("the group key {} spans {rows} public values; the limit is {}", key.name, 10 * MAX_DOMAIN),
        ));
    }
    // Cross product, as take() indices per column.
    let mut arrays = Vec::new();
    let mut stride = 1usize;
    for d in &domains {
        let idx = datafusion::arrow::array::UInt32Array::from_iter_values((0..rows).map(|r| ((r / stride) % d.len()) as u32));
        arrays.push(datafusion::arrow::compute::take(d.as_ref(), &idx, None).map_err(|e| internal(e.into()))?);
        stride *= d.len();
    }
    let fields: Vec<(Option<datafusion::common::TableReference>, Arc<Field>)> = columns
        .iter()
        .zip(&domains)
        .map(|((c, _), d)| (c.relation.clone(), Arc::new(Field::new(&c.name, d.data_type().clone(), true))))
        .collect();
    let schema = Arc::new(Schema::new(fields.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>()));
    let mut batch = RecordBatch::try_new(schema, arrays).map_err(|e| internal(e.into()))?;
    let dfschema = DFSchema::new_with_metadata(fields, HashMap::new()).map_err(internal)?;
    // WHERE conditions on these columns alone narrow the public keys: `year_of_birth >= 1930`
    // leaves out earlier decades. The keys stay a function of the SQL and the schema.
    // A condition with a subquery (EXISTS, IN (SELECT ...)) reads other rows: it narrows nothing.
    for f in filters {
        let refs = f.column_refs();
        if !super::rewrite::reads_other_rows(f) && !refs.is_empty() && refs.iter().all(|c| columns.iter().any(|(k, _)| k == *c)) {
            let keep = ctx.create_physical_expr(f.clone(), &dfschema).map_err(internal)?;
            let keep = keep.evaluate(&batch).map_err(internal)?.into_array(batch.num_rows()).map_err(internal)?;
            let keep = datafusion::arrow::array::as_boolean_array(&keep).clone();
            batch = datafusion::arrow::compute::filter_record_batch(&batch, &keep).map_err(|e| internal(e.into()))?;
        }
    }
    let rows = batch.num_rows();
    let physical = ctx.create_physical_expr(key.expr.clone(), &dfschema).map_err(internal)?;
    let values = physical.evaluate(&batch).map_err(internal)?.into_array(rows).map_err(internal)?;
    let values = cast(&values, out_type).map_err(|e| internal(e.into()))?;
    let mut out = Vec::new();
    for r in 0..values.len() {
        let v = ScalarValue::try_from_array(&values, r).map_err(internal)?;
        if !v.is_null() {
            out.push(v);
        }
    }
    out.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    out.dedup();
    Ok(out)
}

fn internal(e: datafusion::error::DataFusionError) -> Error {
    // Evaluating public keys reads no data: an error here comes from the SQL and the schema.
    Error::refused(Rule::SqlError, e.strip_backtrace().lines().next().unwrap_or("").to_owned())
}

/// All public group keys (cross product over the group keys), in order. Empty keys for an
/// ungrouped query: one group.
pub fn public_keys(ctx: &SessionContext, analysis: &Analysis) -> Result<Vec<Vec<ScalarValue>>> {
    let agg = analysis.aggregate();
    let mut keys: Vec<Vec<ScalarValue>> = vec![vec![]];
    for (i, k) in analysis.keys.iter().enumerate() {
        let values = key_values(ctx, k, &analysis.filters, agg.schema.field(i).data_type())?;
        if keys.len() * values.len() > MAX_DOMAIN {
            return Err(Error::refused(
                Rule::TooManyGroups,
                format!("the GROUP BY keys span more than {MAX_DOMAIN} public groups: group by fewer or coarser keys"),
            ));
        }
        keys = keys.into_iter().flat_map(|prefix| values.iter().map(move |v| [prefix.clone(), vec![v.clone()]].concat())).collect();
    }
    Ok(keys)
}

/// DP partition selection over the exact distinct-patient count of each key: the keys kept.
///
/// One patient is in at most `groups` keys (ℓ0) and adds at most 1 to each (distinct patients),
/// which is the sensitivity OpenDP's noise-threshold map is given.
pub fn select_partitions(
    counts: &HashMap<Vec<ScalarValue>, i64>,
    groups: u32,
    epsilon: f64,
    delta: f64,
    noise: Noise,
) -> Result<Vec<Vec<ScalarValue>>> {
    // OpenDP's map domain wants hashable keys: a key's debug text is unique per value and type.
    let by_name: HashMap<String, &Vec<ScalarValue>> = counts.keys().map(|k| (format!("{k:?}"), k)).collect();
    let named: HashMap<String, i64> = counts.iter().map(|(k, v)| (format!("{k:?}"), *v)).collect();
    let kept = mechanisms::make_partition_selection(groups, epsilon, delta)?.release(named, noise)?;
    let mut keys: Vec<Vec<ScalarValue>> = kept.into_iter().filter_map(|n| by_name.get(&n).map(|k| (*k).clone())).collect();
    keys.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    Ok(keys)
}

/// The keys of group keys read from one public table: every value the key takes over that
/// table's rows, narrowed by the WHERE conjuncts on that table alone. Reads public data only
/// (the vocabularies), before the debit.
pub async fn resolve_public_table_keys(ctx: &SessionContext, analysis: &mut Analysis) -> Result<()> {
    let agg_schema = analysis.aggregate().schema.clone();
    let filters = analysis.filters.clone();
    for (i, key) in analysis.keys.iter_mut().enumerate() {
        let Some((qualifier, table)) = key.public_source.clone() else { continue };
        let mut df = ctx.table(table.as_str()).await?.alias(&qualifier)?;
        for f in &filters {
            let refs = f.column_refs();
            if !refs.is_empty() && refs.iter().all(|c| c.relation.as_ref().is_some_and(|r| r.table() == qualifier)) {
                df = df.filter(f.clone())?;
            }
        }
        let df = df.select(vec![key.expr.clone().alias("__key")])?.distinct()?;
        let out_type = agg_schema.field(i).data_type().clone();
        let mut values = Vec::new();
        for batch in df.collect().await? {
            let column = cast(batch.column(0), &out_type).map_err(|e| internal(e.into()))?;
            for r in 0..column.len() {
                let v = ScalarValue::try_from_array(&column, r).map_err(internal)?;
                if !v.is_null() {
                    values.push(v);
                }
            }
            if values.len() > MAX_DOMAIN {
                return Err(Error::refused(
                    Rule::TooManyGroups,
                    format!(
                        "the group key {} takes more than {MAX_DOMAIN} values in `{table}`: narrow it with WHERE on that table",
                        key.name
                    ),
                ));
            }
        }
        values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        values.dedup();
        key.values = Some(values);
    }
    Ok(())
}
