// Each bench uses part of this module.
#![allow(dead_code)]

//! The bench warehouses: one Parquet file per table written directly (much faster than an
//! ingest of millions of rows) and committed to the catalog as an ingest would.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use secretum_engine::Warehouse;
use secretum_engine::catalog::{FileEntry, NewIngest};
use secretum_engine::governance::{Governance, PolicyUpdate};
use secretum_engine::store::{Store, StoreConfig};

pub const CONCEPTS: [i64; 5] = [3004410, 3004501, 3004249, 3016723, 3028437];

/// Write one table's Parquet file with the stored schema, in batches, and commit it.
/// `column` gives the bench's values for a column, or `None` for the CDM columns the bench does
/// not use (written as NULL).
pub fn write_table(wh: &mut Warehouse, table: &str, rows: usize, column: impl Fn(&str, usize, usize) -> Option<ArrayRef>) {
    let schema = wh.schemas.get(table).expect("table").stored_schema();
    let rel = format!("tables/{table}/bench.parquet");
    let path = wh.layout.root.join(&rel);
    std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("level")))
        .set_max_row_group_row_count(Some(1 << 20))
        .build();
    let mut writer = ArrowWriter::try_new(File::create(&path).expect("create"), schema.clone(), Some(props)).expect("writer");
    let batch = 1 << 20;
    let mut start = 0;
    // Rows per patient, counted as an ingest counts them.
    let mut per_patient: std::collections::HashMap<i64, u64> = std::collections::HashMap::new();
    while start < rows {
        let n = batch.min(rows - start);
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| column(f.name(), start, n).unwrap_or_else(|| arrow::array::new_null_array(f.data_type(), n)))
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), columns).expect("batch");
        let pid = batch.column_by_name("person_id").expect("person_id");
        for p in pid.as_any().downcast_ref::<Int64Array>().expect("ints").values() {
            *per_patient.entry(*p).or_insert(0) += 1;
        }
        writer.write(&batch).expect("write");
        start += n;
    }
    writer.close().expect("close");
    let bytes = std::fs::metadata(&path).expect("size").len();
    if let Store::S3(s3) = &wh.store {
        s3.upload(&path, &rel).expect("upload");
        std::fs::remove_file(&path).expect("remove the local copy");
    }
    let id = format!("bench-{table}");
    let unit_rows_max = per_patient.values().copied().max();
    let (above, listed) = secretum_engine::catalog::listing(per_patient);
    let files = [FileEntry {
        path: rel,
        ingest_id: id.clone(),
        rows: rows as u64,
        bytes,
        unit_rows_max,
        unit_rows_listed_above: Some(above),
        unit_disjoint: false,
    }];
    wh.catalog
        .commit_ingest(&NewIngest {
            id: &id,
            table,
            source_path: "bench",
            source_sha256: &id,
            actor: "bench",
            allow_duplicate: true,
            replace: false,
            files: &files,
            listed: &listed,
            unique_over: None,
        })
        .expect("commit");
}

fn ints(f: &dyn Fn(usize) -> i64, start: usize, n: usize) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values((start..start + n).map(f)))
}

/// The bench's `person` rows `start..start + n` of a column (one row per patient, `person_id`
/// distinct), for [`write_table`]; `None` for the columns the benches do not use.
pub fn person_column(name: &str, start: usize, n: usize) -> Option<ArrayRef> {
    Some(match name {
        "person_id" => ints(&|i| i as i64 * 7919 + 13, start, n),
        "gender_concept_id" => ints(&|i| if i % 2 == 0 { 8507 } else { 8532 }, start, n),
        "year_of_birth" => ints(&|i| 1930 + (i % 80) as i64, start, n),
        "department" => Arc::new(StringArray::from_iter_values((start..start + n).map(|i| format!("{:02}", 1 + i % 95)))),
        "race_concept_id" | "ethnicity_concept_id" => ints(&|_| 0, start, n),
        "gender_source_value" => Arc::new(StringArray::from_iter_values((start..start + n).map(|i| if i % 2 == 0 { "M" } else { "F" }))),
        _ => return None,
    })
}

/// Measurement rows given to one patient, or shared by [`heavy_patients`] (`SECRETUM_BENCH_HEAVY=N`;
/// none by default). Over the table's bound (100), the catalog lists those patients, and every
/// query over `measurement` truncates their rows, as on data with heavy patients.
pub fn heavy_rows() -> usize {
    std::env::var("SECRETUM_BENCH_HEAVY").ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// How many patients share the [`heavy_rows`] (`SECRETUM_BENCH_HEAVY_PATIENTS=N`, default 1),
/// in turn: the first N patients.
pub fn heavy_patients() -> usize {
    std::env::var("SECRETUM_BENCH_HEAVY_PATIENTS").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(1)
}

/// A warehouse of `rows` measurement rows and a tenth as many patients, with a project `bench`
/// on it; its files on local disk, or in `store`. With [`heavy_rows`], the first of them all
/// belong to the first patient (or, in turn, to the first [`heavy_patients`]).
pub fn build(dir: &Path, rows: usize, store: Option<&StoreConfig>) -> std::path::PathBuf {
    let (heavy, sharing) = (heavy_rows(), heavy_patients());
    let name = format!("{rows}-{}-{heavy}-{sharing}", if store.is_some() { "store" } else { "local" });
    let data = dir.join(format!("wh-{name}"));
    Warehouse::init_on(&data, Some(&dir.join(format!("key-{name}"))), None, store).expect("init");
    let mut wh = Warehouse::open(&data).expect("open");
    let patients = (rows / 10).max(1);
    write_table(&mut wh, "person", patients, person_column);
    write_table(&mut wh, "measurement", rows, |name, start, n| {
        Some(match name {
            "measurement_id" => ints(&|i| i as i64, start, n),
            "person_id" => {
                let patient = |i: usize| if i < heavy { i % sharing.min(patients) } else { i % patients };
                ints(&|i| patient(i) as i64 * 7919 + 13, start, n)
            }
            "measurement_concept_id" => ints(&|i| CONCEPTS[i % 5], start, n),
            "measurement_date" => Arc::new(Date32Array::from_iter_values((start..start + n).map(|i| 15_000 + (i % 5000) as i32))),
            "measurement_type_concept_id" => ints(&|_| 32817, start, n),
            "value_as_number" | "range_low" | "range_high" => {
                Arc::new(Float64Array::from_iter_values((start..start + n).map(|i| 4.0 + (i * 37 % 1000) as f64 / 100.0)))
            }
            "unit_source_value" => Arc::new(StringArray::from_iter_values((start..start + n).map(|_| "%"))),
            "visit_occurrence_id" => ints(&|i| i as i64 / 3, start, n),
            "measurement_source_value" => Arc::new(StringArray::from_iter_values((start..start + n).map(|_| "4548-4"))),
            _ => return None,
        })
    });
    let mut g = Governance::open(&data).expect("governance");
    g.set_policy("bench", &PolicyUpdate { patient_epsilon_cap: Some(1e12), ..Default::default() }).expect("policy");
    let tables = ["person".to_string(), "measurement".into()];
    g.create_project("bench", "bench", 1e12, 1e-3, &tables, &tables).expect("project");
    data
}

/// The sizes to bench (`SECRETUM_BENCH_ROWS=1000000,10000000`, measurement rows): 1M and 10M
/// under `cargo bench`, 10,000 when `cargo test` runs the bench once to check it works.
pub fn sizes(benching: bool) -> Vec<usize> {
    std::env::var("SECRETUM_BENCH_ROWS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| if benching { vec![1_000_000, 10_000_000] } else { vec![10_000] })
}

/// One question through the whole DP path. Every call is a new question (ε differs in the
/// ninth decimal): the same question again would be answered from its stored release (a
/// replay), which is not what the benches measure.
pub async fn private(wh: &Warehouse, ledger: &mut secretum_engine::budget::Ledger, sql: &str) -> usize {
    static ASKED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = ASKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let epsilon = 0.5 + n as f64 * 1e-9;
    let req = secretum_engine::dp::QueryRequest {
        actor: "bench".into(),
        project: "bench".into(),
        sql: sql.into(),
        epsilon,
        ..Default::default()
    };
    secretum_engine::dp::run(wh, ledger, &req, secretum_engine::dp::Noise::OpenDp).await.expect("dp").batch.num_rows()
}
