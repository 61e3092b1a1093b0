//! What the cluster costs: the bench queries of `benches/query.rs` through the whole DP path on
//! the same data, four ways, in the same run: Parquet on local disk executed here; on the object
//! store (Garage on loopback) executed here; on the object store executed by a cluster of one
//! executor; and of two executors (a scheduler and executors, each its own process). Prints the
//! medians, each way's ratio to local disk, and the cluster's cost per row beyond its fixed cost,
//! whose growth from 1M to 10M rows is what predicts its gain on machines of their own.
//!
//! `cargo bench --bench cluster` (SECRETUM_BENCH_ROWS=1000000,10000000 by default). Garage comes
//! from SECRETUM_GARAGE, the PATH or the user's cache (the test suite builds it there); without
//! it the object-store ways read local disk, and the table says so.

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use secretum_api::local::{Garage, LocalCluster, find_garage};
use secretum_engine::Warehouse;
use secretum_engine::budget::Ledger;

mod common;
use common::{build, private};

const QUERIES: &[(&str, &str)] = &[
    ("count", "SELECT COUNT(*) FROM measurement"),
    (
        "group_avg",
        "SELECT measurement_concept_id, COUNT(*), AVG(value_as_number) FROM measurement WHERE value_as_number BETWEEN 0 AND 20 GROUP BY 1",
    ),
    ("join_patients", "SELECT gender_concept_id, COUNT(DISTINCT person_id) FROM person JOIN measurement USING (person_id) GROUP BY 1"),
    (
        "cohort_exists",
        "SELECT gender_concept_id, COUNT(*) FROM person p WHERE EXISTS (SELECT 1 FROM measurement m WHERE m.person_id = p.person_id AND m.value_as_number > 12) GROUP BY 1",
    ),
];

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

const WAYS: [&str; 4] = ["local disk", "object store", "cluster x1", "cluster x2"];

fn bench(c: &mut Criterion) {
    let benching = std::env::args().any(|a| a == "--bench");
    let sizes = common::sizes(benching);
    let runs = if benching { 5 } else { 1 };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let garage = find_garage().map(|bin| Garage::start(&bin).expect("garage"));
    if garage.is_none() {
        println!("no Garage binary: the object-store ways read local disk");
    }
    // (rows, query, way) -> median ms
    let mut table: Vec<(usize, &str, [f64; 4])> = Vec::new();
    // The cluster's fixed cost: its time on a 1,000-row warehouse.
    for rows in sizes.iter().copied().chain([1_000usize]) {
        let local = build(dir.path(), rows, None);
        let store = garage.as_ref().map(|g| g.config(&format!("bench-{rows}")));
        let remote = if store.is_some() { build(dir.path(), rows, store.as_ref()) } else { local.clone() };
        let mut nodes =
            LocalCluster::start(Path::new(env!("CARGO_BIN_EXE_secretum")), store.as_ref(), 1, &dir.path().join(format!("cluster-{rows}")))
                .expect("cluster");
        let on = |data: &Path, cluster: Option<&LocalCluster>| {
            let mut wh = Warehouse::open(data).expect("open");
            wh.cluster = cluster.map(|c| c.cluster().expect("cluster"));
            wh
        };
        let mut results: Vec<[Vec<Duration>; 4]> = QUERIES.iter().map(|_| Default::default()).collect();
        let mut group = c.benchmark_group(format!("cluster_{rows}_rows"));
        group.sample_size(10);
        for executors in [1usize, 2] {
            if executors == 2 {
                nodes.add_executor().expect("second executor");
            }
            let ways = [on(&local, None), on(&remote, None), on(&remote, Some(&nodes))];
            let mut ledgers =
                [Ledger::open(&local).expect("ledger"), Ledger::open(&remote).expect("ledger"), Ledger::open(&remote).expect("ledger")];
            // Warm: each way once (the first cluster query waits for the executors to register).
            for (wh, ledger) in ways.iter().zip(ledgers.iter_mut()) {
                rt.block_on(private(wh, ledger, QUERIES[0].1));
            }
            for (q, (name, sql)) in QUERIES.iter().enumerate() {
                // Local and object-store ways are measured with the first cluster size only.
                let measured: Vec<(usize, usize)> = if executors == 1 { vec![(0, 0), (1, 1), (2, 2)] } else { vec![(2, 3)] };
                for _ in 0..runs {
                    for &(w, slot) in &measured {
                        let t = Instant::now();
                        rt.block_on(private(&ways[w], &mut ledgers[w], sql));
                        results[q][slot].push(t.elapsed());
                    }
                }
                if benching && rows != 1_000 {
                    let (wh, ledger) = (&ways[2], &mut ledgers[2]);
                    group.bench_function(format!("{name}/cluster_x{executors}"), |b| b.iter(|| rt.block_on(private(wh, ledger, sql))));
                }
            }
        }
        group.finish();
        for (q, (name, _)) in QUERIES.iter().enumerate() {
            let m = [0, 1, 2, 3].map(|w| median(std::mem::take(&mut results[q][w])));
            table.push((rows, name, m));
        }
    }
    println!("\nThe DP path four ways on the same data, same run (medians, ratio to local disk):");
    println!("{:>10}  {:<14} {}", "rows", "query", WAYS.map(|w| format!("{w:>24}")).join(""));
    let fixed = |name: &str| table.iter().find(|(r, n, _)| *r == 1_000 && *n == name).map_or([0.0; 4], |t| t.2);
    for (rows, name, m) in &table {
        let cells: Vec<String> = m.iter().map(|v| format!("{v:>11.2} ms ({:>5.2}x)", v / m[0])).collect();
        let per_row = if *rows == 1_000 {
            "   (fixed cost)".to_owned()
        } else {
            let f = fixed(name);
            format!(
                "   cluster per row beyond fixed: x1 {:.1} ns, x2 {:.1} ns",
                (m[2] - f[2]).max(0.0) * 1e6 / *rows as f64,
                (m[3] - f[3]).max(0.0) * 1e6 / *rows as f64
            )
        };
        println!("{rows:>10}  {name:<14} {}{per_row}", cells.join(""));
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
