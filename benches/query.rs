//! Query cost: the DP path (analysis, release plan, ledger debit, bounded rewrite, execution,
//! OpenDP noise, post-processing) against plain DataFusion running the same SQL on the same
//! Parquet files, in the same run. Prints the median of each, their ratio per query and size
//! against its target (`count` within 5x and under 20 ms at 10M rows, `group_avg` within 1.5x,
//! `join_patients` within 2x), the DP path's cost per row beyond its fixed cost (flat from 1M to
//! 10M rows when the bounded plan scales like the plain one), and its fixed cost on a small table
//! (target under 3 ms). The cohort questions are measured without a target.
//!
//! `cargo bench --bench query` (SECRETUM_BENCH_ROWS=1000000,10000000 by default: measurement
//! rows; patients are a tenth of that, each with ten measurements and one person row).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray};
use criterion::{Criterion, criterion_group};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::execution::context::SessionContext;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use secretum_engine::Warehouse;
use secretum_engine::budget::Ledger;
use secretum_engine::catalog::{FileEntry, NewIngest};
use secretum_engine::dp::{self, Noise, QueryRequest};
use secretum_engine::governance::{Governance, PolicyUpdate};

/// The bench queries, with the most the DP path may cost against plain DataFusion (a ratio of
/// medians) where a target is set.
const QUERIES: &[(&str, &str, Option<f64>)] = &[
    ("count", "SELECT COUNT(*) FROM measurement", Some(5.0)),
    (
        "group_avg",
        "SELECT measurement_concept_id, COUNT(*), AVG(value_as_number) FROM measurement WHERE value_as_number BETWEEN 0 AND 20 GROUP BY 1",
        Some(1.5),
    ),
    (
        "join_patients",
        "SELECT gender_concept_id, COUNT(DISTINCT person_id) FROM person JOIN measurement USING (person_id) GROUP BY 1",
        Some(2.0),
    ),
    // Cohort questions: a cohort filter on the unit, and a per-patient relation.
    (
        "cohort_exists",
        "SELECT gender_concept_id, COUNT(*) FROM person p WHERE EXISTS (SELECT 1 FROM measurement m WHERE m.person_id = p.person_id AND m.value_as_number > 12) GROUP BY 1",
        None,
    ),
    ("cohort_per_patient", "SELECT COUNT(*), AVG(t.n) FROM (SELECT person_id, COUNT(*) AS n FROM measurement GROUP BY person_id) t", None),
];

/// The DP path's fixed cost (analysis, planning, debit, noise, audit) on a small table, in-process.
const FIXED_COST_TARGET_MS: f64 = 3.0;
/// `COUNT(*)` at 10M rows.
const COUNT_10M_TARGET_MS: f64 = 20.0;

const CONCEPTS: [i64; 5] = [3004410, 3004501, 3004249, 3016723, 3028437];

/// Write one table's Parquet file with the stored schema, in batches, and commit it.
/// `column` gives the bench's values for a column, or `None` for the CDM columns the bench does
/// not use (written as NULL).
fn write_table(wh: &mut Warehouse, table: &str, rows: usize, column: impl Fn(&str, usize, usize) -> Option<ArrayRef>) {
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
    let id = format!("bench-{table}");
    let unit_rows_max = per_patient.values().copied().max();
    let files = [FileEntry { path: rel, ingest_id: id.clone(), rows: rows as u64, bytes, unit_rows_max }];
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
        })
        .expect("commit");
}

fn build(dir: &Path, rows: usize) -> std::path::PathBuf {
    let data = dir.join(format!("wh-{rows}"));
    Warehouse::init(&data, Some(&dir.join(format!("key-{rows}"))), None).expect("init");
    let mut wh = Warehouse::open(&data).expect("open");
    let patients = (rows / 10).max(1);
    let ints = |f: &dyn Fn(usize) -> i64, start: usize, n: usize| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values((start..start + n).map(f)))
    };
    write_table(&mut wh, "person", patients, |name, start, n| {
        Some(match name {
            "person_id" => ints(&|i| i as i64 * 7919 + 13, start, n),
            "gender_concept_id" => ints(&|i| if i % 2 == 0 { 8507 } else { 8532 }, start, n),
            "year_of_birth" => ints(&|i| 1930 + (i % 80) as i64, start, n),
            "department" => Arc::new(StringArray::from_iter_values((start..start + n).map(|i| format!("{:02}", 1 + i % 95)))),
            "race_concept_id" | "ethnicity_concept_id" => ints(&|_| 0, start, n),
            "gender_source_value" => {
                Arc::new(StringArray::from_iter_values((start..start + n).map(|i| if i % 2 == 0 { "M" } else { "F" })))
            }
            _ => return None,
        })
    });
    write_table(&mut wh, "measurement", rows, |name, start, n| {
        Some(match name {
            "measurement_id" => ints(&|i| i as i64, start, n),
            "person_id" => ints(&|i| (i % patients) as i64 * 7919 + 13, start, n),
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

/// Plain DataFusion over the same Parquet files (its default settings: it may answer a count
/// from the files' footers).
fn plain_context(data: &Path) -> SessionContext {
    let wh = Warehouse::open(data).expect("open");
    let ctx = SessionContext::new();
    for table in ["person", "measurement"] {
        let urls: Vec<ListingTableUrl> = wh
            .catalog
            .files(table)
            .expect("files")
            .iter()
            .map(|f| {
                ListingTableUrl::parse(wh.layout.root.join(&f.path).canonicalize().expect("path").to_string_lossy().as_ref()).expect("url")
            })
            .collect();
        let options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(wh.schemas.get(table).expect("policy").stored_schema());
        ctx.register_table(table, Arc::new(ListingTable::try_new(config).expect("table"))).expect("register");
    }
    ctx
}

async fn plain(ctx: &SessionContext, sql: &str) -> usize {
    ctx.sql(sql).await.expect("sql").collect().await.expect("collect").iter().map(|b| b.num_rows()).sum()
}

/// Every call is a new question (ε differs in the ninth decimal): the same question again would be
/// answered from its stored release (a replay), which is not what this bench measures.
async fn private(wh: &Warehouse, ledger: &mut Ledger, sql: &str) -> usize {
    static ASKED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = ASKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let epsilon = 0.5 + n as f64 * 1e-9;
    let req = QueryRequest { actor: "bench".into(), project: "bench".into(), sql: sql.into(), epsilon, ..Default::default() };
    dp::run(wh, ledger, &req, Noise::OpenDp).await.expect("dp").batch.num_rows()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bench(c: &mut Criterion) {
    let benching = std::env::args().any(|a| a == "--bench");
    let sizes: Vec<usize> = std::env::var("SECRETUM_BENCH_ROWS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| if benching { vec![1_000_000, 10_000_000] } else { vec![10_000] });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut measured: Vec<Measured> = Vec::new();
    // SECRETUM_BENCH_QUERIES=count,group_avg times only those.
    let only: Option<Vec<String>> = std::env::var("SECRETUM_BENCH_QUERIES").ok().map(|v| v.split(',').map(str::to_owned).collect());
    for rows in sizes.iter().copied().filter(|&r| r != 1_000).chain([1_000usize]) {
        let small = rows == 1_000;
        let data = build(dir.path(), rows);
        let wh = Warehouse::open(&data).expect("open");
        let mut ledger = Ledger::open(&data).expect("ledger");
        let ctx = plain_context(&data);
        let mut group = c.benchmark_group(format!("query_{rows}_rows"));
        group.sample_size(10);
        for (name, sql, target) in QUERIES.iter().filter(|(n, ..)| only.as_ref().is_none_or(|o| o.iter().any(|x| x == n))) {
            if !small {
                group.bench_function(format!("{name}/plain"), |b| b.iter(|| rt.block_on(plain(&ctx, sql))));
                group.bench_function(format!("{name}/dp"), |b| b.iter(|| rt.block_on(private(&wh, &mut ledger, sql))));
            }
            // Interleaved runs for the ratio.
            let runs = if benching { if small { 30 } else { 5 } } else { 1 };
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                let t = Instant::now();
                rt.block_on(plain(&ctx, sql));
                theirs.push(t.elapsed());
                let t = Instant::now();
                rt.block_on(private(&wh, &mut ledger, sql));
                ours.push(t.elapsed());
            }
            measured.push(Measured { rows, name, target: *target, plain: ms(median(theirs)), dp: ms(median(ours)) });
        }
        group.finish();
    }
    println!("\nDP path against plain DataFusion, same Parquet, same run (medians):");
    let fixed = |name: &str| measured.iter().find(|m| m.rows == 1_000 && m.name == name).map_or(0.0, |m| m.dp - m.plain);
    for m in &measured {
        if m.rows == 1_000 {
            let over = if m.dp - m.plain <= FIXED_COST_TARGET_MS { "" } else { "  OVER TARGET" };
            println!(
                "{:>10} rows  {:<18} plain {:>9.2} ms  dp {:>9.2} ms  fixed cost {:>6.2} ms (target < {FIXED_COST_TARGET_MS} ms){over}",
                m.rows,
                m.name,
                m.plain,
                m.dp,
                m.dp - m.plain
            );
            continue;
        }
        let ratio = m.dp / m.plain;
        let target = match m.target {
            Some(t) if ratio <= t => format!("(target <= {t})"),
            Some(t) => format!("(target <= {t})  OVER TARGET"),
            None => String::new(),
        };
        // What each row costs the DP path beyond its fixed cost: flat from 1M to 10M rows when the
        // bounded plan scales like the plain one.
        let per_row = (m.dp - fixed(m.name)).max(0.0) * 1e6 / m.rows as f64;
        println!(
            "{:>10} rows  {:<18} plain {:>9.2} ms  dp {:>9.2} ms  ratio {:>5.2} {target:<28} {per_row:>6.1} ns/row",
            m.rows, m.name, m.plain, m.dp, ratio
        );
        if m.name == "count" && m.rows >= 10_000_000 {
            let verdict = if m.dp < COUNT_10M_TARGET_MS { "" } else { "  OVER TARGET" };
            println!("{:>10} rows  count in {:.2} ms (target < {COUNT_10M_TARGET_MS} ms at 10M rows){verdict}", m.rows, m.dp);
        }
    }
}

struct Measured {
    rows: usize,
    name: &'static str,
    target: Option<f64>,
    plain: f64,
    dp: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
