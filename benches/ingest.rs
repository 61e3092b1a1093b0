//! Ingest throughput: pseudonymized ingest (validate, HMAC, generalize, zstd Parquet, commit)
//! against a plain CSV-to-Parquet conversion of the same file (arrow's CSV reader, same Parquet
//! settings), in the same run. Prints rows/s for both and their ratio.
//!
//! `cargo bench --bench ingest` (SECRETUM_BENCH_PATIENTS to change the size, default 100,000).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use secretum_engine::Warehouse;
use secretum_engine::ingest::{self, IngestOptions};

const TABLE: &str = "measurement";

struct Setup {
    _dir: tempfile::TempDir,
    raw: std::path::PathBuf,
    root: std::path::PathBuf,
    rows: u64,
}

fn setup(patients: u64) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = secretum_engine::synth::generate(patients, 1, &dir.path().join("raw"), None).expect("generate");
    let (_, raw, rows) = report.files.into_iter().find(|(t, _, _)| t == TABLE).expect("table");
    let root = dir.path().to_owned();
    Setup { _dir: dir, raw, root, rows }
}

/// One pseudonymized ingest into a fresh warehouse.
fn secretum_ingest(s: &Setup, n: usize) -> Duration {
    let data = s.root.join(format!("wh-{n}"));
    let _ = std::fs::remove_dir_all(&data);
    Warehouse::init(&data, Some(&s.root.join(format!("key-{n}"))), None).expect("init");
    let mut wh = Warehouse::open(&data).expect("open");
    let key = wh.key(None).expect("key");
    let started = Instant::now();
    let report = ingest::ingest(&mut wh, &key, &IngestOptions::new(TABLE, &s.raw)).expect("ingest");
    let elapsed = started.elapsed();
    assert_eq!(report.rows, s.rows);
    std::fs::remove_dir_all(&data).ok();
    std::fs::remove_file(s.root.join(format!("key-{n}"))).ok();
    elapsed
}

/// The baseline: arrow's CSV reader (schema inferred from the file) into zstd Parquet.
fn plain_conversion(raw: &Path, out: &Path) -> Duration {
    let started = Instant::now();
    let format = arrow::csv::reader::Format::default().with_header(true);
    let (schema, _) = format.infer_schema(File::open(raw).expect("raw"), Some(1000)).expect("infer");
    let schema = Arc::new(schema);
    let reader = arrow::csv::ReaderBuilder::new(schema.clone())
        .with_format(format)
        .with_batch_size(ingest::BATCH_ROWS)
        .build(File::open(raw).expect("raw"))
        .expect("reader");
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("level")))
        .set_max_row_group_row_count(Some(ingest::ROW_GROUP_ROWS))
        .build();
    let mut writer = ArrowWriter::try_new(File::create(out).expect("out"), schema, Some(props)).expect("writer");
    for batch in reader {
        writer.write(&batch.expect("batch")).expect("write");
    }
    writer.into_inner().expect("close").sync_all().expect("sync");
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bench(c: &mut Criterion) {
    let benching = std::env::args().any(|a| a == "--bench");
    let patients =
        std::env::var("SECRETUM_BENCH_PATIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(if benching { 100_000 } else { 2_000 });
    let s = setup(patients);
    let out = s.root.join("plain.parquet");

    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(s.rows));
    group.sample_size(10);
    let mut n = 0;
    // Only the ingest itself is timed: creating and removing the warehouse around it is not.
    group.bench_function("pseudonymized_ingest", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    n += 1;
                    secretum_ingest(&s, n)
                })
                .sum()
        })
    });
    group.bench_function("plain_csv_to_parquet", |b| b.iter(|| plain_conversion(&s.raw, &out)));
    group.finish();

    // The ratio, from interleaved runs of both in this same process.
    let runs = if benching { 5 } else { 1 };
    let (mut ours, mut plain) = (Vec::new(), Vec::new());
    for i in 0..runs {
        ours.push(secretum_ingest(&s, 1000 + i));
        plain.push(plain_conversion(&s.raw, &out));
    }
    let (ours, plain) = (median(ours), median(plain));
    let rate = |d: Duration| s.rows as f64 / d.as_secs_f64();
    println!(
        "\ningest {TABLE}, {} rows ({patients} patients): pseudonymized {:.0} rows/s, plain CSV->Parquet {:.0} rows/s, ratio {:.2} (target >= 0.70)",
        s.rows,
        rate(ours),
        rate(plain),
        rate(ours) / rate(plain)
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
