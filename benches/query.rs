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
//! SECRETUM_BENCH_HEAVY=1000 gives one patient 1,000 of the measurement rows, over the table's
//! bound: the cost of the per-query truncation on data where some patient exceeds it (the
//! catalog lists that patient, and only their rows are truncated). In the small table of the
//! fixed cost, that patient has every row. SECRETUM_BENCH_HEAVY_PATIENTS=N shares those rows
//! among the first N patients, in turn.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};

mod common;
use common::{build, private};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::execution::context::SessionContext;
use secretum_engine::Warehouse;
use secretum_engine::budget::Ledger;

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

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bench(c: &mut Criterion) {
    let benching = std::env::args().any(|a| a == "--bench");
    let sizes = common::sizes(benching);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut measured: Vec<Measured> = Vec::new();
    // SECRETUM_BENCH_QUERIES=count,group_avg times only those.
    let only: Option<Vec<String>> = std::env::var("SECRETUM_BENCH_QUERIES").ok().map(|v| v.split(',').map(str::to_owned).collect());
    for rows in sizes.iter().copied().filter(|&r| r != 1_000).chain([1_000usize]) {
        let small = rows == 1_000;
        let data = build(dir.path(), rows, None);
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
    let heavy = common::heavy_rows();
    if heavy > 0 {
        let sharing = common::heavy_patients();
        println!("({sharing} patient(s) share {heavy} of each size's measurement rows: their rows are truncated per query)");
    }
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
