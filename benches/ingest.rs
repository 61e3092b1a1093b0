//! Ingest throughput: pseudonymized ingest (validate, HMAC, generalize, zstd Parquet, commit)
//! against a plain CSV-to-Parquet conversion of the same file (arrow's CSV reader, same Parquet
//! settings), in the same run, for both source shapes: the raw extract (NIR in every row) and
//! the OMOP export of the same patients (v5.4, upper-case headers, source `person_id`s re-keyed,
//! every row checked against `person`). Prints rows/s for both and their ratio, per shape.
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
use secretum_engine::omop::CdmVersion;
use secretum_engine::synth::OmopOptions;

const TABLE: &str = "measurement";

struct Setup {
    _dir: tempfile::TempDir,
    /// The shape's name, its `person` file and the benched table's file.
    shapes: Vec<(&'static str, std::path::PathBuf, std::path::PathBuf)>,
    root: std::path::PathBuf,
    rows: u64,
}

fn setup(patients: u64) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let extract = secretum_engine::synth::generate(patients, 1, &dir.path().join("raw"), None).expect("generate");
    let file = |files: &[(String, std::path::PathBuf, u64)], t: &str| {
        files.iter().find(|(name, _, _)| name.eq_ignore_ascii_case(t)).map(|(_, p, n)| (p.clone(), *n)).expect("table")
    };
    let (raw, rows) = file(&extract.files, TABLE);
    let options = OmopOptions { version: CdmVersion::V54, upper_case: true };
    let omop = secretum_engine::synth::generate_omop(patients, 1, &dir.path().join("omop"), options, None).expect("generate omop");
    let (omop_raw, omop_rows) = file(&omop.files, TABLE);
    assert_eq!(rows, omop_rows, "the same patients in both shapes");
    let shapes =
        vec![("a raw extract", file(&extract.files, "person").0, raw), ("an OMOP export", file(&omop.files, "person").0, omop_raw)];
    let root = dir.path().to_owned();
    Setup { _dir: dir, shapes, root, rows }
}

/// One pseudonymized ingest into a fresh warehouse (its `person` ingested first, not timed).
fn secretum_ingest(s: &Setup, shape: usize, n: usize) -> Duration {
    let (_, person, raw) = &s.shapes[shape];
    let data = s.root.join(format!("wh-{n}"));
    let _ = std::fs::remove_dir_all(&data);
    Warehouse::init(&data, Some(&s.root.join(format!("key-{n}"))), None).expect("init");
    let mut wh = Warehouse::open(&data).expect("open");
    let key = wh.key(None).expect("key");
    ingest::ingest(&mut wh, &key, &IngestOptions::new("person", person)).expect("person");
    let started = Instant::now();
    let report = ingest::ingest(&mut wh, &key, &IngestOptions::new(TABLE, raw)).expect("ingest");
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

    for (shape, (name, _, raw)) in s.shapes.iter().enumerate() {
        let mut group = c.benchmark_group(format!("ingest from {name}"));
        group.throughput(Throughput::Elements(s.rows));
        group.sample_size(10);
        let mut n = shape * 100_000;
        // Only the ingest itself is timed: creating and removing the warehouse around it is not.
        group.bench_function("pseudonymized_ingest", |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        n += 1;
                        secretum_ingest(&s, shape, n)
                    })
                    .sum()
            })
        });
        group.bench_function("plain_csv_to_parquet", |b| b.iter(|| plain_conversion(raw, &out)));
        group.finish();
    }

    // The ratios, from interleaved runs of both in this same process.
    let runs = if benching { 5 } else { 1 };
    for (shape, (name, _, raw)) in s.shapes.iter().enumerate() {
        let (mut ours, mut plain) = (Vec::new(), Vec::new());
        for i in 0..runs {
            ours.push(secretum_ingest(&s, shape, 900_000 + shape * 1000 + i));
            plain.push(plain_conversion(raw, &out));
        }
        let (ours, plain) = (median(ours), median(plain));
        let rate = |d: Duration| s.rows as f64 / d.as_secs_f64();
        println!(
            "\ningest {TABLE} from {name}, {} rows ({patients} patients): pseudonymized {:.0} rows/s, plain CSV->Parquet {:.0} rows/s, ratio {:.2} (target >= 0.70)",
            s.rows,
            rate(ours),
            rate(plain),
            rate(ours) / rate(plain)
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
