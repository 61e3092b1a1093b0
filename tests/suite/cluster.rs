//! Queries executed by a cluster: a Garage object store, `secretum scheduler` and two
//! `secretum executor` processes on loopback, the API node's side in process and over HTTP.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{garage_binary, rt};
use crate::service::{Server, accounts, approved_project, generous_policy, post};
use secretum_api::local::{Garage, LocalCluster};
use secretum_engine::Warehouse;
use secretum_engine::budget::Ledger;
use secretum_engine::cluster::Cluster;
use secretum_engine::dp::{self, Answer, Noise, QueryRequest};
use secretum_engine::error::{Error, Result};
use secretum_engine::governance::{Governance, PolicyUpdate};
use secretum_engine::ingest::{self, IngestOptions};
use serde_json::json;

const QUERIES: [&str; 6] = [
    "SELECT COUNT(*) FROM measurement",
    "SELECT gender_concept_id, COUNT(*), AVG(year_of_birth) FROM person GROUP BY 1",
    "SELECT measurement_concept_id, COUNT(*), SUM(value_as_number) FROM measurement WHERE value_as_number BETWEEN 0 AND 50 GROUP BY 1",
    "SELECT gender_concept_id, COUNT(DISTINCT person_id) FROM person JOIN condition_occurrence USING (person_id) GROUP BY 1",
    "SELECT COUNT(*) FROM person p WHERE EXISTS (SELECT 1 FROM measurement m WHERE m.person_id = p.person_id AND m.value_as_number > 5)",
    // Joins over joins: stages whose inputs are resolved while the job runs.
    "SELECT p.gender_concept_id, COUNT(DISTINCT p.person_id) FROM person p JOIN condition_occurrence c ON c.person_id = p.person_id \
     JOIN measurement m ON m.person_id = p.person_id WHERE m.value_as_number > 3 GROUP BY 1",
];

fn ask(wh: &Warehouse, project: &str, sql: &str, noise: Noise) -> Result<Answer> {
    let mut ledger = Ledger::open(&wh.layout.root).unwrap();
    let req = QueryRequest { actor: "test".into(), project: project.into(), sql: sql.into(), epsilon: 0.5, ..Default::default() };
    rt().block_on(dp::run(wh, &mut ledger, &req, noise))
}

fn spent(data: &Path, project: &str) -> f64 {
    Governance::open(data).unwrap().existing(project).unwrap().epsilon_spent
}

/// Two projects on the same tables: the same question in each is answered, not replayed.
fn projects(data: &Path) {
    let mut g = Governance::open(data).unwrap();
    g.set_policy("test", &PolicyUpdate { patient_epsilon_cap: Some(1e9), suppression_threshold: Some(0), ..Default::default() }).unwrap();
    let tables = vec!["person".to_string(), "measurement".into(), "condition_occurrence".into()];
    let known: Vec<String> = Warehouse::open(data).unwrap().schemas.tables.keys().cloned().collect();
    for p in ["here", "there", "kill"] {
        g.create_project("test", p, 1e9, 1e-3, &tables, &known).unwrap();
    }
}

#[test]
fn queries_run_on_a_cluster_equal_local_ones_and_its_faults_spend_nothing_or_are_charged() {
    let garage = Garage::start(&garage_binary()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw");
    secretum_engine::synth::generate(1500, 5, &raw, None).unwrap();
    // Patients over measurement's bound: the catalog lists them, and every query over it
    // truncates their rows (copies of one row, so that any of them give the same answer). One
    // such patient, then two: their rows are ranked together, then per patient.
    let m = raw.join("measurement.csv");
    let text = std::fs::read_to_string(&m).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let (id, nir) = (header.iter().position(|h| *h == "measurement_id").unwrap(), header.iter().position(|h| *h == "nir").unwrap());
    let rows: Vec<Vec<String>> = text.lines().skip(1).map(|l| l.split(',').map(str::to_owned).collect()).collect();
    let other = rows.iter().find(|r| r[nir] != rows[0][nir]).unwrap();
    let heavy = |patients: &[&Vec<String>]| {
        let mut out = text.clone();
        for (p, row) in patients.iter().enumerate() {
            for i in 0..300 {
                let mut r = (*row).clone();
                r[id] = format!("{}", 800_000_000 + p * 1000 + i);
                out.push_str(&r.join(","));
                out.push('\n');
            }
        }
        out
    };
    std::fs::write(&m, heavy(&[&rows[0]])).unwrap();
    let two = dir.path().join("measurement-two.csv");
    std::fs::write(&two, heavy(&[&rows[0], other])).unwrap();
    let data = dir.path().join("data");
    let store = garage.config("cluster");
    Warehouse::init_on(&data, Some(&dir.path().join("k")), None, Some(&store)).unwrap();
    let key = secretum_engine::pseudonym::Key::load(&dir.path().join("k")).unwrap();
    let mut wh = Warehouse::open(&data).unwrap();
    for t in ["person", "measurement", "condition_occurrence"] {
        ingest::ingest(&mut wh, &key, &IngestOptions::new(t, &raw.join(format!("{t}.csv")))).unwrap();
    }
    projects(&data);

    let mut nodes = LocalCluster::start(Path::new(crate::common::BIN), Some(&store), 2, &dir.path().join("cluster")).unwrap();
    let here = Warehouse::open(&data).unwrap();
    let mut there = Warehouse::open(&data).unwrap();
    there.cluster = Some(nodes.cluster().unwrap());

    // Same data, same exact answers, wherever the plans run; the report says where.
    for sql in QUERIES {
        let local = ask(&here, "here", sql, Noise::Exact).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let remote = ask(&there, "there", sql, Noise::Exact).unwrap_or_else(|e| panic!("{sql}: {e}\n{}", nodes.logs()));
        assert_eq!(remote.batch, local.batch, "{sql}");
        assert_eq!(remote.report.replay_of, None);
        assert_eq!(local.report.executed_on, "this node");
        assert_eq!(remote.report.executed_on, format!("cluster {}", nodes.url()));
    }
    // Among them, the heavy patient's rows truncated from the catalog's list: over a single
    // table as all rows minus the rows dropped; before a join, by the list's filter (and again,
    // counted, after the join, whose rows per patient the catalog does not know).
    let plans = |sql: &str| {
        let req = QueryRequest { actor: "test".into(), project: "here".into(), sql: sql.into(), epsilon: 0.5, ..Default::default() };
        rt().block_on(dp::prepare(&here, &req)).unwrap().physical_plans().join("\n")
    };
    let single = plans(QUERIES[2]);
    assert!(single.contains("__sign") && single.contains("__rn"), "{single}");
    let joined = plans(QUERIES[5]);
    assert!(joined.contains("__rn") && joined.contains("person_id@0 != "), "{joined}");
    // Two listed patients: ranked per patient, on the cluster as here.
    let mut wh = Warehouse::open(&data).unwrap();
    let key = secretum_engine::pseudonym::Key::load(&dir.path().join("k")).unwrap();
    ingest::ingest(&mut wh, &key, &IngestOptions { replace: true, ..IngestOptions::new("measurement", &two) }).unwrap();
    let (here, mut there) = (Warehouse::open(&data).unwrap(), Warehouse::open(&data).unwrap());
    there.cluster = Some(nodes.cluster().unwrap());
    for sql in [QUERIES[0], QUERIES[2], QUERIES[5]] {
        let local = ask(&here, "here", sql, Noise::Exact).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let remote = ask(&there, "there", sql, Noise::Exact).unwrap_or_else(|e| panic!("{sql}: {e}\n{}", nodes.logs()));
        assert_eq!(remote.batch, local.batch, "{sql}");
    }
    assert!(plans(QUERIES[2]).contains("__rn"));

    // Through the service started with --cluster.
    let key = nodes.key_file.to_str().unwrap().to_owned();
    let s = Server::start(&data, &["--cluster", &nodes.url(), "--cluster-key-file", &key]);
    generous_policy(&data);
    let t = accounts(&data);
    let id = approved_project(&s, &t, 5.0);
    let q = format!("/v1/projects/{id}/queries");
    let a = post(&s, &q, &t.alice, json!({"sql": QUERIES[1], "epsilon": 0.2}));
    assert_eq!(a.status, 200, "{}\n{}", String::from_utf8_lossy(&a.body), nodes.logs());
    assert_eq!(a.json()["executed_on"], format!("cluster {}", nodes.url()));

    // Without the scheduler's key, a query is refused before its debit: nothing spent.
    let mut keyless = Warehouse::open(&data).unwrap();
    keyless.cluster = Some(Cluster::parse(&nodes.url()).unwrap());
    let before = spent(&data, "there");
    let refused = ask(&keyless, "there", QUERIES[0], Noise::Exact);
    assert!(matches!(&refused, Err(Error::Unavailable(m)) if m.contains("cluster key")), "{refused:?}");
    assert_eq!(spent(&data, "there"), before);

    // An executor killed while a query runs: the query completes (the lost tasks run again on
    // the other executor) or fails charged, within the request's time; never a hang, never an
    // uncharged failure.
    let before = spent(&data, "kill");
    let started = Instant::now();
    let killed = std::thread::scope(|scope| {
        let cluster = nodes.cluster().unwrap();
        let data = &data;
        let q = scope.spawn(move || {
            let mut wh = Warehouse::open(data).unwrap();
            wh.cluster = Some(cluster);
            ask(&wh, "kill", QUERIES[3], Noise::Exact)
        });
        std::thread::sleep(Duration::from_millis(150));
        nodes.kill_executor(0);
        q.join().unwrap()
    });
    assert!(started.elapsed() < Duration::from_secs(180), "the query took {:?}", started.elapsed());
    match killed {
        Ok(a) => assert_eq!(a.batch, ask(&here, "here", QUERIES[3], Noise::Exact).unwrap().batch),
        Err(Error::QueryFailed { .. }) => assert!(spent(&data, "kill") > before, "a failure after the debit is charged"),
        Err(e) => panic!("unexpected: {e}"),
    }
    // The remaining executor answers what follows.
    let after = ask(&there, "kill", QUERIES[0], Noise::Exact).unwrap_or_else(|e| panic!("{e}\n{}", nodes.logs()));
    assert_eq!(after.batch, ask(&here, "here", QUERIES[0], Noise::Exact).unwrap().batch);

    // The scheduler down: a query is answered as unavailable before its debit (nothing spent,
    // audited as failed before any read); a dry run, which reads nothing, is still answered.
    nodes.stop_scheduler();
    let before = spent(&data, "there");
    let down = ask(&there, "there", "SELECT COUNT(*) FROM person WHERE year_of_birth > 1950", Noise::OpenDp);
    assert!(matches!(&down, Err(Error::Unavailable(m)) if m.contains("scheduler")), "{down:?}");
    assert_eq!(spent(&data, "there"), before);
    let mut ledger = Ledger::open(&data).unwrap();
    let dry = QueryRequest {
        actor: "t".into(),
        project: "there".into(),
        sql: QUERIES[0].into(),
        epsilon: 0.5,
        dry_run: true,
        ..Default::default()
    };
    assert!(rt().block_on(dp::run(&there, &mut ledger, &dry, Noise::OpenDp)).is_ok());
    let r = post(&s, &q, &t.alice, json!({"sql": QUERIES[0], "epsilon": 0.2}));
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("scheduler"));
    let r = post(&s, &q, &t.alice, json!({"sql": QUERIES[0], "epsilon": 0.2, "dry_run": true}));
    assert_eq!(r.status, 200);
}

#[test]
fn cluster_nodes_refuse_what_they_cannot_serve() {
    let out = crate::common::secretum(&["serve", "--cluster", "http://x:1", "--data-dir", "/nonexistent-secretum"]);
    assert!(!out.status.success() && crate::common::stderr(&out).contains("df://"), "{}", crate::common::stderr(&out));
    let out = crate::common::secretum(&["executor", "--scheduler", "127.0.0.1:notaport"]);
    assert!(!out.status.success() && crate::common::stderr(&out).contains("port"), "{}", crate::common::stderr(&out));
    let out = crate::common::secretum(&["scheduler", "--store", "/srv/parquet"]);
    assert!(!out.status.success() && crate::common::stderr(&out).contains("s3://"), "{}", crate::common::stderr(&out));
}

#[test]
fn the_demo_runs_on_a_cluster_and_stops_it() {
    let out = std::process::Command::new(crate::common::BIN)
        .args(["demo", "--cluster", "--patients", "600"])
        .env("SECRETUM_GARAGE", garage_binary())
        .env_remove("SECRETUM_DATA_DIR")
        .output()
        .unwrap();
    let text = crate::common::stdout(&out);
    assert!(out.status.success(), "{text}\n{}", crate::common::stderr(&out));
    assert!(text.contains("a one-node Garage object store") && text.contains("executors on ports"), "{text}");
    assert_eq!(text.matches("executed on the cluster df://127.0.0.1:").count(), 4, "{text}");
    assert!(text.contains("stopping the cluster's scheduler and executors and Garage"), "{text}");
}
