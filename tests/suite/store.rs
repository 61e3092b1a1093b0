//! A warehouse whose Parquet files live in an S3-compatible object store: Garage, run as its own
//! process on loopback with a one-node layout, a bucket and a key made through its CLI.
//!
//! Garage comes from [`crate::common::garage_binary`].

use crate::common::rt;
use std::path::Path;
use std::process::Command;

use secretum_api::local::Garage;
use secretum_engine::Warehouse;
use secretum_engine::budget::Ledger;
use secretum_engine::dp::{self, Noise, QueryRequest};
use secretum_engine::error::Error;
use secretum_engine::governance::{Governance, PolicyUpdate};
use secretum_engine::ingest::{self, IngestOptions};
use secretum_engine::store::{Store, StoreConfig};

fn set_mode_600(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn exact(wh: &Warehouse, sql: &str) -> arrow::record_batch::RecordBatch {
    let mut ledger = Ledger::open(&wh.layout.root).unwrap();
    let req = QueryRequest { actor: "test".into(), project: "same".into(), sql: sql.into(), epsilon: 0.5, ..Default::default() };
    rt().block_on(dp::run(wh, &mut ledger, &req, Noise::Exact)).unwrap_or_else(|e| panic!("{sql}: {e}")).batch
}

fn prepare(data: &Path) {
    let mut g = Governance::open(data).unwrap();
    g.set_policy("test", &PolicyUpdate { patient_epsilon_cap: Some(1e9), suppression_threshold: Some(0), ..Default::default() }).unwrap();
    let tables = vec!["person".to_string(), "measurement".into(), "condition_occurrence".into()];
    let known: Vec<String> = Warehouse::open(data).unwrap().schemas.tables.keys().cloned().collect();
    g.create_project("test", "same", 1e9, 1e-3, &tables, &known).unwrap();
}

fn objects(s: &Store, prefix: &str) -> Vec<String> {
    match s {
        Store::S3(s) => s.list(prefix).unwrap(),
        Store::Local => panic!("not an object store"),
    }
}

#[test]
fn a_warehouse_on_an_object_store_answers_like_one_on_local_disk_and_commits_all_or_nothing() {
    let mut garage = Garage::start(&crate::common::garage_binary()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw");
    secretum_engine::synth::generate(300, 11, &raw, None).unwrap();
    let local = dir.path().join("local");
    let remote = dir.path().join("remote");
    Warehouse::init(&local, Some(&dir.path().join("k1")), None).unwrap();
    Warehouse::init_on(&remote, Some(&dir.path().join("k2")), None, Some(&garage.config("site-a"))).unwrap();
    // Both hold the rows under the same pseudonyms (the remote warehouse's key), so that the same
    // rows are kept wherever a patient is over a table's bound: the answers must then be equal.
    let key = secretum_engine::pseudonym::Key::load(&dir.path().join("k2")).unwrap();
    let local_catalog = secretum_engine::catalog::Catalog::open(&secretum_engine::db::Layout::new(&local).database()).unwrap();
    local_catalog.set_meta("key_fingerprint", &key.fingerprint()).unwrap();
    let tables = ["person", "measurement", "condition_occurrence"];
    for data in [&local, &remote] {
        let mut wh = Warehouse::open(data).unwrap();
        for t in tables {
            ingest::ingest(&mut wh, &key, &IngestOptions::new(t, &raw.join(format!("{t}.csv")))).unwrap();
        }
        prepare(data);
    }
    let (l, r) = (Warehouse::open(&local).unwrap(), Warehouse::open(&remote).unwrap());
    assert!(!r.store.is_local());
    // The files are in the bucket under the prefix, none left staged, none on the local disk.
    let stored = objects(&r.store, "tables/");
    assert!(tables.iter().all(|t| stored.iter().any(|o| o.starts_with(&format!("tables/{t}/")))), "{stored:?}");
    assert!(objects(&r.store, "staging/").is_empty());
    assert!(crate::common::parquet_files(&remote.join("tables")).is_empty());

    // Same data, same exact answers.
    for sql in [
        "SELECT COUNT(*) FROM measurement",
        "SELECT gender_concept_id, COUNT(*), AVG(year_of_birth) FROM person GROUP BY 1",
        "SELECT measurement_concept_id, COUNT(*), SUM(value_as_number) FROM measurement WHERE value_as_number BETWEEN 0 AND 50 GROUP BY 1",
        "SELECT gender_concept_id, COUNT(DISTINCT person_id) FROM person JOIN condition_occurrence USING (person_id) GROUP BY 1",
        "SELECT COUNT(*) FROM person p WHERE EXISTS (SELECT 1 FROM measurement m WHERE m.person_id = p.person_id AND m.value_as_number > 5)",
    ] {
        assert_eq!(exact(&l, sql), exact(&r, sql), "{sql}");
    }

    // An ingest that fails leaves nothing: no object, no catalog change.
    let before = (objects(&r.store, "tables/"), r.catalog.files("measurement").unwrap().len());
    let mut rw = Warehouse::open(&remote).unwrap();
    let mut bad = dir.path().join("bad.csv");
    let text = std::fs::read_to_string(raw.join("measurement.csv")).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.push("not,a,valid,row");
    std::fs::write(&bad, lines.join("\n")).unwrap();
    assert!(ingest::ingest(&mut rw, &key, &IngestOptions { allow_duplicate: true, ..IngestOptions::new("measurement", &bad) }).is_err());
    assert_eq!((objects(&r.store, "tables/"), r.catalog.files("measurement").unwrap().len()), before);

    // What a killed ingest leaves (a staged object, a copy the catalog does not name) is never
    // read, and the next ingest sweeps it.
    let Store::S3(s3) = &r.store else { unreachable!() };
    let some = crate::common::files_under(&local.join("tables/measurement")).into_iter().next().unwrap();
    s3.upload(&some, "staging/20200101T000000-dead/20200101T000000-dead-00000.parquet").unwrap();
    s3.upload(&some, "tables/measurement/20200101T000000-dead-00000.parquet").unwrap();
    let answer = exact(&r, "SELECT COUNT(*) FROM measurement WHERE value_as_number > 1");
    assert_eq!(answer, exact(&l, "SELECT COUNT(*) FROM measurement WHERE value_as_number > 1"));
    bad = raw.join("death.csv");
    ingest::ingest(&mut rw, &key, &IngestOptions::new("death", &bad)).unwrap();
    assert!(objects(&r.store, "staging/").is_empty());
    assert!(!objects(&r.store, "tables/").iter().any(|o| o.contains("dead")));

    // The store down: a query is refused as unavailable and charges nothing; an ingest fails
    // with a clear message and commits nothing.
    garage.stop();
    let spent = Governance::open(&remote).unwrap().existing("same").unwrap().epsilon_spent;
    let mut ledger = Ledger::open(&remote).unwrap();
    let req = QueryRequest {
        actor: "test".into(),
        project: "same".into(),
        sql: "SELECT COUNT(*) FROM measurement WHERE value_as_number > 3".into(),
        epsilon: 0.5,
        ..Default::default()
    };
    let down = rt().block_on(dp::run(&Warehouse::open(&remote).unwrap(), &mut ledger, &req, Noise::OpenDp));
    assert!(matches!(down, Err(Error::Unavailable(_))), "{down:?}");
    assert_eq!(Governance::open(&remote).unwrap().existing("same").unwrap().epsilon_spent, spent);
    let files = r.catalog.files("observation_period").unwrap().len();
    let failed = ingest::ingest(&mut rw, &key, &IngestOptions::new("observation_period", &raw.join("observation_period.csv")));
    let Err(e) = failed else { panic!("an ingest with the store down succeeded") };
    assert!(e.to_string().contains("object store"), "{e}");
    assert_eq!(r.catalog.files("observation_period").unwrap().len(), files);
}

#[test]
fn init_on_an_unreachable_store_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("s3.toml");
    std::fs::write(&creds, "access_key_id = \"GK0\"\nsecret_access_key = \"0\"\n").unwrap();
    set_mode_600(&creds);
    let config = StoreConfig {
        url: "s3://secretum/x".into(),
        endpoint: Some(format!("http://127.0.0.1:{}", secretum_api::local::free_port().unwrap())),
        region: Some("garage".into()),
        credentials_file: Some(creds),
    };
    let data = dir.path().join("data");
    let e = Warehouse::init_on(&data, Some(&dir.path().join("k")), None, Some(&config)).unwrap_err();
    assert!(matches!(e, Error::Unavailable(_)), "{e}");
    assert!(!data.exists() && !dir.path().join("k").exists());
}

#[test]
fn init_refuses_a_store_that_is_not_s3_and_a_credentials_file_others_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let out = crate::common::secretum(&["init", "--data-dir", d, "--store", "/srv/parquet"]);
    assert!(!out.status.success());
    assert!(crate::common::stderr(&out).contains("s3://bucket/prefix"), "{}", crate::common::stderr(&out));
    let creds = dir.path().join("s3.toml");
    std::fs::write(&creds, "access_key_id = \"GK0\"\nsecret_access_key = \"do-not-print\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(crate::common::BIN)
        .args(["init", "--data-dir", d, "--store", "s3://b/p", "--s3-endpoint", "http://127.0.0.1:9", "--s3-credentials"])
        .arg(&creds)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("SECRETUM_S3_CREDENTIALS")
        .output()
        .unwrap();
    let err = crate::common::stderr(&out);
    assert!(!out.status.success() && err.contains("chmod 600") && !err.contains("do-not-print"), "{err}");
    assert!(!data.exists());
}
