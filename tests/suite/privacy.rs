//! The privacy core under test: noise scale and shape, interval coverage, contribution
//! bounding against adversarial data, and the budget ledger (concurrency, crash, caps).

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Barrier};

use secretum_engine::Warehouse;
use secretum_engine::budget::{Charge, Ledger};
use secretum_engine::dp::{self, Noise, QueryRequest};
use secretum_engine::error::{BudgetRefusal, Error};
use secretum_engine::governance::{Governance, PolicyUpdate};
use secretum_engine::ingest::{self, IngestOptions};

use crate::common::{Fixture, RELEASES, releases, rt, secretum, stdout};

fn ingest_tables(fx: &Fixture, tables: &[&str]) {
    let mut wh = fx.open();
    let key = fx.key();
    for t in tables {
        let path = fx.raw(t);
        ingest::ingest(&mut wh, &key, &IngestOptions::new(t, &path)).unwrap();
    }
}

fn project(data: &Path, name: &str, epsilon: f64, tables: &[&str]) {
    let tables: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    let known: Vec<String> = Warehouse::open(data).unwrap().schemas.tables.keys().cloned().collect();
    Governance::open(data).unwrap().create_project("test", name, epsilon, 1e-4, &tables, &known).unwrap();
}

fn policy(data: &Path, update: PolicyUpdate) {
    Governance::open(data).unwrap().set_policy("test", &update).unwrap();
}

fn spent(data: &Path, name: &str) -> f64 {
    Governance::open(data).unwrap().existing(name).unwrap().epsilon_spent
}

fn charge<'a>(project: &'a str, epsilon: f64, delta: f64) -> Charge<'a> {
    Charge { actor: "test", project, sql: "SELECT COUNT(*) FROM person", epsilon, delta, rho: 0.0 }
}

fn req(project: &str, sql: &str, epsilon: f64) -> QueryRequest {
    QueryRequest { actor: "test".into(), project: project.into(), sql: sql.into(), epsilon, ..Default::default() }
}

/// An empty warehouse with a generous project and no suppression.
fn empty_warehouse() -> (tempfile::TempDir, Warehouse, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    Warehouse::init(&data, Some(&dir.path().join("key")), None).unwrap();
    policy(&data, PolicyUpdate { patient_epsilon_cap: Some(1e9), suppression_threshold: Some(0), ..Default::default() });
    project(&data, "stats", 1e9, &["person", "measurement"]);
    (dir, Warehouse::open(&data).unwrap(), Ledger::open(&data).unwrap())
}

fn laplace_cdf(x: f64) -> f64 {
    if x < 0.0 { 0.5 * x.exp() } else { 1.0 - 0.5 * (-x).exp() }
}

/// Kolmogorov-Smirnov distance between a sample and the standard Laplace distribution.
fn ks_laplace(z: Vec<f64>) -> f64 {
    crate::common::ks_distance(z, laplace_cdf)
}

#[test]
fn count_noise_has_the_promised_scale_and_its_intervals_cover_95_percent() {
    let (_d, wh, _ledger) = empty_warehouse();
    let rt = rt();
    // COUNT(*) over person: one row per patient, Δ = 1; ε = 0.1 gives a discrete Laplace of scale 10.
    let p = rt.block_on(dp::prepare(&wh, &req("stats", "SELECT COUNT(*) FROM person", 0.1))).unwrap();
    let exact = 2000.0;
    let (errors, coverage) = releases(&p, &[exact], exact, 1.0);
    let var = errors.iter().map(|e| e * e).sum::<f64>() / RELEASES as f64;
    let t = (-1.0f64 / 10.0).exp();
    let expected = 2.0 * t / (1.0 - t).powi(2); // variance of the discrete Laplace, ≈ 2b²
    assert!((var / expected - 1.0).abs() < 0.15, "count noise variance {var:.1}, expected {expected:.1}");
    let mean = errors.iter().sum::<f64>() / RELEASES as f64;
    assert!(mean.abs() < 1.5, "count noise is biased: mean error {mean:.2}");
    assert!((0.93..=0.97).contains(&coverage), "95% intervals of the count cover {:.1}%", coverage * 100.0);
}

#[test]
fn sum_noise_is_laplace_with_the_promised_scale_and_intervals_cover_95_percent() {
    let (_d, wh, _ledger) = empty_warehouse();
    let rt = rt();
    // SUM(year_of_birth): one row per patient, values clamped to [1900, 2026]: Δ = 2026; ε = 1.
    let p = rt.block_on(dp::prepare(&wh, &req("stats", "SELECT SUM(year_of_birth) FROM person", 1.0))).unwrap();
    let report = &p.dry_run().unwrap().report.aggregates[0];
    assert_eq!(report.sensitivity, vec![("sum".to_string(), 2026.0)]);
    let scale = 2026.0;
    let exact = 3_950_000.0;
    let (z, coverage) = releases(&p, &[exact], exact, scale);
    let var = z.iter().map(|e| e * e).sum::<f64>() / RELEASES as f64;
    assert!((var / 2.0 - 1.0).abs() < 0.15, "sum noise variance {var:.3} b², expected 2 b²");
    let d = ks_laplace(z);
    // Critical value of the KS statistic at α = 0.001 is 1.95 / √n.
    assert!(d < 1.95 / (RELEASES as f64).sqrt(), "sum noise does not look Laplace: KS distance {d:.4}");
    assert!((0.93..=0.97).contains(&coverage), "95% intervals of the sum cover {:.1}%", coverage * 100.0);
}

#[test]
fn mean_noise_and_interval_coverage() {
    let (_d, wh, _ledger) = empty_warehouse();
    let rt = rt();
    // AVG over measurement values bounded by WHERE to [0, 20], K rows per patient: the centred
    // sum has Δ = K·10 and the count Δ = K, each with ε / 2.
    let k = crate::common::max_rows("measurement");
    let sql = "SELECT AVG(value_as_number) FROM measurement WHERE value_as_number BETWEEN 0 AND 20";
    let p = rt.block_on(dp::prepare(&wh, &req("stats", sql, 1.0))).unwrap();
    let report = &p.dry_run().unwrap().report.aggregates[0];
    assert_eq!(report.sensitivity, vec![("centred_sum".to_string(), k * 10.0), ("values".to_string(), k)]);
    // 20,000 values of mean 6.5: centred sum = 20,000 · (6.5 − 10).
    let (n, mean) = (20_000.0, 6.5);
    let exact = [n * (mean - 10.0), n];
    let (errors, coverage) = releases(&p, &exact, mean, 1.0);
    // To first order the error is δS/n − (mean − 10)·δN/n: the sum's noise (scale 2·10K at
    // ε/2, i.e. 20K / 20,000 in mean units, variance 2·(20K/n)²) plus the count's (scale 2K,
    // weighted by the centred mean −3.5: variance 3.5²·2·(2K / n)²).
    let var = errors.iter().map(|e| e * e).sum::<f64>() / RELEASES as f64;
    let expected = 2.0 * (20.0 * k / n).powi(2) + (mean - 10.0).powi(2) * 2.0 * (2.0 * k / n).powi(2);
    assert!((var / expected - 1.0).abs() < 0.2, "mean noise variance {var:.6}, expected about {expected:.6}");
    assert!((0.93..=0.97).contains(&coverage), "95% intervals of the mean cover {:.1}%", coverage * 100.0);
}

/// Raw extract rows of one synthetic patient, repeated.
fn attacker_files(dir: &Path, copies: usize) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    // A synthetic patient with at least one condition and one measurement.
    let raw = dir.join("attacker-raw");
    let mut seed = 1000;
    loop {
        secretum_engine::synth::generate(1, seed, &raw, None).unwrap();
        let lines = |t: &str| std::fs::read_to_string(raw.join(format!("{t}.csv"))).unwrap().lines().count();
        if lines("condition_occurrence") > 1 && lines("measurement") > 1 {
            break;
        }
        seed += 1;
    }
    let repeat = |table: &str, n: usize, edit: &dyn Fn(&[String], Vec<String>) -> Vec<String>| {
        let text = std::fs::read_to_string(raw.join(format!("{table}.csv"))).unwrap();
        let mut lines = text.lines();
        let header: Vec<String> = lines.next().unwrap().split(',').map(str::to_owned).collect();
        let row: Vec<String> = lines.next().unwrap().split(',').map(str::to_owned).collect();
        let out = dir.join(format!("attacker-{table}.csv"));
        let mut w = std::io::BufWriter::new(std::fs::File::create(&out).unwrap());
        writeln!(w, "{}", header.join(",")).unwrap();
        for i in 0..n {
            let mut r = row.clone();
            if let Some(id) = header.iter().position(|h| h.ends_with("_occurrence_id") || h == "measurement_id") {
                r[id] = format!("{}", 900_000_000 + i);
            }
            writeln!(w, "{}", edit(&header, r).join(",")).unwrap();
        }
        out
    };
    let person = repeat("person", 1, &|_, r| r);
    let conditions = repeat("condition_occurrence", copies, &|_, r| r);
    // Extreme values: far outside the schema's bounds [0, 500].
    let measurements = repeat("measurement", 1000, &|h, mut r| {
        let i = h.iter().position(|c| c == "value_as_number").unwrap();
        r[i] = "1e12".into();
        r
    });
    (person, conditions, measurements)
}

fn exact_answer(wh: &Warehouse, ledger: &mut Ledger, sql: &str) -> Vec<Vec<serde_json::Value>> {
    let a = rt().block_on(dp::run(wh, ledger, &req("bounds", sql, 1.0), Noise::Exact)).unwrap();
    secretum_api::output::json(&a).rows
}

fn cell(v: &serde_json::Value) -> f64 {
    v.get("value").and_then(|x| x.as_f64()).unwrap_or(0.0)
}

#[test]
fn one_patient_with_a_million_rows_or_extreme_values_moves_no_aggregate_beyond_its_sensitivity() {
    let fx = Fixture::new(200, 5);
    ingest_tables(&fx, &["person", "condition_occurrence", "measurement"]);
    // The same data plus one adversarial patient.
    let attacked = Fixture::new(200, 5);
    ingest_tables(&attacked, &["person", "condition_occurrence", "measurement"]);
    let (p, c, m) = attacker_files(attacked.dir.path(), 1_000_000);
    {
        let mut wh = attacked.open();
        let key = attacked.key();
        for (t, f) in [("person", &p), ("condition_occurrence", &c), ("measurement", &m)] {
            ingest::ingest(&mut wh, &key, &IngestOptions::new(t, f)).unwrap();
        }
    }
    let mut results = Vec::new();
    for fx in [&fx, &attacked] {
        policy(&fx.data, PolicyUpdate { patient_epsilon_cap: Some(1e9), suppression_threshold: Some(0), ..Default::default() });
        let mut ledger = Ledger::open(&fx.data).unwrap();
        project(&fx.data, "bounds", 1e9, &["person", "condition_occurrence", "measurement"]);
        let wh = fx.open();
        let q = |sql: &str, ledger: &mut Ledger| exact_answer(&wh, ledger, sql);
        results.push(vec![
            q("SELECT COUNT(*) FROM condition_occurrence", &mut ledger),
            q("SELECT COUNT(DISTINCT person_id) FROM person JOIN condition_occurrence USING (person_id)", &mut ledger),
            q("SELECT COUNT(*) FROM person JOIN condition_occurrence USING (person_id)", &mut ledger),
            q("SELECT SUM(value_as_number) FROM measurement", &mut ledger),
            q("SELECT gender_concept_id, COUNT(*) FROM condition_occurrence JOIN person USING (person_id) GROUP BY 1", &mut ledger),
        ]);
    }
    let (honest, attacked) = (&results[0], &results[1]);
    let l1 = |a: &Vec<Vec<serde_json::Value>>, b: &Vec<Vec<serde_json::Value>>| -> f64 {
        a.iter().zip(b).map(|(x, y)| (cell(x.last().unwrap()) - cell(y.last().unwrap())).abs()).sum()
    };
    // Sensitivities: K condition rows per patient; 1 patient; K joined rows; K' values of at
    // most 500; K rows over all groups.
    let (k, km) = (crate::common::max_rows("condition_occurrence"), crate::common::max_rows("measurement"));
    for (i, (bound, what)) in
        [(k, "row count"), (1.0, "patient count"), (k, "joined row count"), (km * 500.0, "clamped sum"), (k, "grouped counts (L1)")]
            .iter()
            .enumerate()
    {
        let moved = l1(&honest[i], &attacked[i]);
        assert!(moved <= *bound + 1e-6, "{what}: one patient moved the exact release by {moved}, more than its sensitivity {bound}");
        assert!(moved > 0.0, "{what}: the adversarial patient should be visible at all (test data check)");
    }
}

#[test]
fn concurrent_queries_never_overspend_the_budget() {
    let (_d, wh, _ledger) = empty_warehouse();
    let data = wh.layout.root.clone();
    project(&data, "ten", 1.0, &["person"]);
    let barrier = Arc::new(Barrier::new(100));
    let handles: Vec<_> = (0..100)
        .map(|_| {
            let (data, barrier) = (data.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut ledger = Ledger::open(&data).unwrap();
                barrier.wait();
                ledger.debit(&charge("ten", 0.1, 0.0)).is_ok()
            })
        })
        .collect();
    let granted = handles.into_iter().map(|h| h.join().unwrap()).filter(|ok| *ok).count();
    assert_eq!(granted, 10, "budget for 10 queries of ε 0.1 granted {granted}");
    let spent = spent(&data, "ten");
    assert!((spent - 1.0).abs() < 1e-9, "spent {spent}");
}

#[test]
fn concurrent_full_queries_release_at_most_what_the_budget_allows() {
    let fx = Fixture::new(100, 3);
    ingest_tables(&fx, &["person"]);
    project(&fx.data, "five", 0.5, &["person"]);
    let data = fx.data.clone();
    // Twenty different questions (the same one would replay its first release for free).
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let data = data.clone();
            std::thread::spawn(move || {
                let wh = Warehouse::open(&data).unwrap();
                let mut ledger = Ledger::open(&data).unwrap();
                let sql = format!("SELECT COUNT(*) FROM person WHERE year_of_birth > {}", 1800 + i);
                rt().block_on(dp::run(&wh, &mut ledger, &req("five", &sql, 0.1), Noise::OpenDp))
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let released = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(released, 5);
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|e| matches!(e, Error::Budget(BudgetRefusal::Epsilon { .. }))));
}

#[test]
fn exhausted_budget_is_refused_before_any_data_is_read_and_failures_stay_charged() {
    let fx = Fixture::new(50, 4);
    ingest_tables(&fx, &["person"]);
    project(&fx.data, "small", 0.5, &["person"]);
    // Make every patient data file unreadable: any read would fail.
    for f in crate::common::parquet_files(&fx.data.join("tables/person")) {
        std::fs::write(&f, b"not parquet").unwrap();
    }
    let wh = fx.open();
    let mut ledger = Ledger::open(&fx.data).unwrap();
    let rt = rt();
    // Over budget: refused by the ledger, so the corrupt files were never touched.
    let over = rt.block_on(dp::run(&wh, &mut ledger, &req("small", "SELECT COUNT(*) FROM person", 0.6), Noise::OpenDp));
    assert!(matches!(over, Err(Error::Budget(BudgetRefusal::Epsilon { .. }))), "{over:?}");
    // A dry run reads nothing and spends nothing.
    let dry = QueryRequest { dry_run: true, ..req("small", "SELECT COUNT(*) FROM person", 0.4) };
    rt.block_on(dp::run(&wh, &mut ledger, &dry, Noise::OpenDp)).unwrap();
    assert_eq!(spent(&fx.data, "small"), 0.0);
    // Within budget: debited first, then the read fails, with a generic message; the debit stays.
    let failed =
        rt.block_on(dp::run(&wh, &mut ledger, &req("small", "SELECT COUNT(*) FROM person WHERE year_of_birth > 1900", 0.4), Noise::OpenDp));
    let Err(Error::QueryFailed { entry }) = failed else { panic!("expected a generic failure, got {failed:?}") };
    let msg = Error::QueryFailed { entry }.to_string();
    assert!(!msg.contains("parquet") && !msg.contains("person"), "failure message leaks details: {msg}");
    let p = Governance::open(&fx.data).unwrap().existing("small").unwrap();
    assert!((p.epsilon_spent - 0.4).abs() < 1e-12);
    assert_eq!(ledger.entries("small").unwrap()[0].status, "failed");
    // A count of a whole table is answered from the row counts the catalog recorded at ingest,
    // as plain DataFusion answers it from footers: no file is opened, so it is answered.
    project(&fx.data, "counts", 0.5, &["person"]);
    let counted = rt.block_on(dp::run(&wh, &mut ledger, &req("counts", "SELECT COUNT(*) FROM person", 0.4), Noise::OpenDp));
    assert!(counted.is_ok(), "a whole-table count read a file: {counted:?}");
}

#[test]
fn warehouse_wide_patient_cap_limits_all_projects_together() {
    let (_d, wh, mut ledger) = empty_warehouse();
    policy(&wh.layout.root, PolicyUpdate { patient_epsilon_cap: Some(1.0), ..Default::default() });
    let data = wh.layout.root.clone();
    project(&data, "a", 1.0, &["person"]);
    project(&data, "b", 1.0, &["person"]);
    assert!(ledger.debit(&charge("a", 0.6, 0.0)).is_ok());
    let second = ledger.debit(&charge("b", 0.6, 0.0));
    assert!(matches!(second, Err(Error::Budget(BudgetRefusal::PatientCap { .. }))), "{second:?}");
    assert!(ledger.debit(&charge("b", 0.4, 0.0)).is_ok());
}

#[test]
fn epsilon_and_delta_outside_the_policy_are_refused_with_their_rule() {
    let (_d, wh, _ledger) = empty_warehouse();
    let rt = rt();
    let rule = |r: QueryRequest| match rt.block_on(dp::prepare(&wh, &r)) {
        Err(Error::Refused { rule, .. }) => rule.name(),
        Err(e) => panic!("{e}"),
        Ok(_) => "accepted",
    };
    assert_eq!(rule(req("stats", "SELECT COUNT(*) FROM person", 0.0)), "epsilon");
    assert_eq!(rule(req("stats", "SELECT COUNT(*) FROM person", -1.0)), "epsilon");
    assert_eq!(rule(req("stats", "SELECT COUNT(*) FROM person", f64::NAN)), "epsilon");
    assert_eq!(rule(req("stats", "SELECT COUNT(*) FROM person", 1.5)), "epsilon", "over the default per-query cap of 1");
    let d = |delta| QueryRequest { delta: Some(delta), ..req("stats", "SELECT COUNT(*) FROM person", 0.5) };
    assert_eq!(rule(d(0.0)), "delta");
    assert_eq!(rule(d(2e-3)), "delta");
    assert_eq!(rule(d(1e-3)), "accepted");
}

#[test]
fn a_killed_query_never_loses_a_debit_that_preceded_a_release() {
    let fx = Fixture::new(3000, 6);
    ingest_tables(&fx, &["person", "condition_occurrence"]);
    project(&fx.data, "crash", 100.0, &["person", "condition_occurrence"]);
    let data = fx.data.to_str().unwrap().to_owned();
    let sql = |i: usize| {
        // A different question each time (the same one would replay a finished release).
        format!(
            "SELECT gender_concept_id, COUNT(DISTINCT person_id) FROM person JOIN condition_occurrence USING (person_id) \
             WHERE year_of_birth > {} GROUP BY 1",
            1800 + i
        )
    };
    let mut answered = 0;
    for (i, delay_ms) in [0u64, 5, 10, 20, 40, 80, 160, 400].into_iter().enumerate() {
        let sql = sql(i);
        let before = spent(&fx.data, "crash");
        let released = crate::common::query_killed_after(&data, "crash", &sql, delay_ms);
        let after = spent(&fx.data, "crash");
        if released {
            answered += 1;
            assert!((after - before - 0.5).abs() < 1e-9, "a release without its debit: spent {before} -> {after}");
        } else {
            assert!(after - before < 0.5 + 1e-9 && after >= before, "spent {before} -> {after}");
        }
    }
    // The last delays let the query finish: the property was exercised on both sides. A question
    // whose first asking was killed is answered afresh (its interrupted debit does not hold it).
    let out = secretum(&["query", "--data-dir", &data, "--project", "crash", "--epsilon", "0.5", "--format", "json", &sql(0)]);
    assert!(stdout(&out).contains("\"rows\""), "{}", crate::common::stderr(&out));
    let _ = answered;
}

#[test]
fn cli_query_json_table_csv_dry_run_and_refusals() {
    let fx = Fixture::new(300, 8);
    ingest_tables(&fx, &["person"]);
    let data = fx.data.to_str().unwrap().to_owned();
    let out = secretum(&["project", "create", "--data-dir", &data, "--name", "cli", "--epsilon", "2", "--tables", "person"]);
    assert!(out.status.success(), "{}", crate::common::stderr(&out));
    let q = |args: &[&str]| {
        let mut all = vec!["query", "--data-dir", data.as_str(), "--project", "cli"];
        all.extend_from_slice(args);
        secretum(&all)
    };
    let out = q(&["--epsilon", "0.5", "--format", "json", "SELECT gender_concept_id, COUNT(*) AS n FROM person GROUP BY 1"]);
    assert!(out.status.success(), "{}", crate::common::stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["columns"], serde_json::json!(["gender_concept_id", "n"]));
    assert_eq!(v["rows"].as_array().unwrap().len(), 3, "every public key is released (0, 8507, 8532)");
    assert_eq!(v["epsilon_spent"], 0.5);
    assert!((v["budget_remaining"]["epsilon"].as_f64().unwrap() - 1.5).abs() < 1e-9);
    let cell = &v["rows"][1][1];
    let (value, lo, hi) = (cell["value"].as_f64().unwrap(), cell["ci95"][0].as_f64().unwrap(), cell["ci95"][1].as_f64().unwrap());
    assert!(lo <= value && value <= hi);

    let out = q(&["--epsilon", "0.5", "--format", "csv", "SELECT COUNT(*) AS n FROM person"]);
    assert!(stdout(&out).starts_with("n,n_ci95_lo,n_ci95_hi\n"), "{}", stdout(&out));
    let out = q(&["--epsilon", "0.5", "--dry-run", "SELECT COUNT(*) AS n FROM person"]);
    assert!(stdout(&out).contains("dry run: nothing spent"), "{}", stdout(&out));
    let out = q(&["--target-ci", "10", "--format", "json", "SELECT COUNT(*) AS n FROM person"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let needed = v["epsilon_needed"].as_f64().unwrap();
    assert!(needed > 0.2 && needed < 0.4, "ε for ±10 on a count of Δ 1: {needed}");

    // Budget left is 1.0: a refusal by rule, then one by budget, both non-zero with the reason on stderr.
    let out = q(&["SELECT year_of_birth FROM person"]);
    assert!(!out.status.success());
    assert!(crate::common::stderr(&out).contains("aggregate-required"));
    let out = q(&["--epsilon", "1", "SELECT COUNT(*) FROM person"]);
    assert!(out.status.success(), "{}", crate::common::stderr(&out));
    let out = q(&["--epsilon", "0.5", "SELECT COUNT(*) FROM person WHERE year_of_birth > 1900"]);
    assert!(!out.status.success());
    assert!(crate::common::stderr(&out).contains("budget exhausted"), "{}", crate::common::stderr(&out));
}

#[test]
fn concurrent_debits_never_overspend_the_per_patient_delta_cap() {
    // The same race as the ε cap: 100 threads, each asking δ 1e-7 against a cap of 1e-6 shared
    // by two projects whose own grants would allow far more.
    let (_d, wh, _ledger) = empty_warehouse();
    let data = wh.layout.root.clone();
    policy(&data, PolicyUpdate { patient_delta_cap: Some(1e-6), ..Default::default() });
    for name in ["d1", "d2"] {
        let mut g = Governance::open(&data).unwrap();
        g.create_project("test", name, 1000.0, 1e-3, &["person".to_string()], &["person".to_string()]).unwrap();
    }
    let barrier = Arc::new(Barrier::new(100));
    let handles: Vec<_> = (0..100)
        .map(|i| {
            let (data, barrier) = (data.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut ledger = Ledger::open(&data).unwrap();
                let project = if i % 2 == 0 { "d1" } else { "d2" };
                barrier.wait();
                ledger.debit(&charge(project, 0.01, 1e-7))
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let granted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(granted, 10, "a δ cap of 1e-6 admits 10 debits of 1e-7, granted {granted}");
    assert!(
        results.iter().filter_map(|r| r.as_ref().err()).all(|e| matches!(e, Error::Budget(BudgetRefusal::PatientDeltaCap { .. }))),
        "every other debit is refused by the δ cap: {results:?}"
    );
    let spent = Ledger::open(&data).unwrap().spent().unwrap().delta;
    assert!(spent <= 1e-6 * (1.0 + 1e-9), "δ spent {spent:e} over the cap");
    assert!(Governance::open(&data).unwrap().policy().unwrap().patient_delta_cap == 1e-6);
    // The default is conservative and shown by `policy show`.
    let fresh = tempfile::tempdir().unwrap();
    Warehouse::init(&fresh.path().join("w"), Some(&fresh.path().join("k")), None).unwrap();
    let out = secretum(&["policy", "show", "--data-dir", fresh.path().join("w").to_str().unwrap()]);
    assert!(stdout(&out).contains("patient δ cap (all projects together): 1e-5"), "{}", stdout(&out));
}

#[test]
fn an_adversarial_float_sum_moves_the_release_by_at_most_its_sensitivity() {
    // Values at both bounds of measurement.value_as_number ([0, 500]) in an order that makes a
    // float sum round: one huge patient interleaving 0, 500 and values whose sum is not exact
    // in binary. The sum is computed on exact fixed-point integers, so the exact release moves
    // by at most K·max|bound| = K × 500 whatever the rows and their order.
    let fx = Fixture::new(150, 21);
    ingest_tables(&fx, &["person", "measurement"]);
    let attacked = Fixture::new(150, 21);
    ingest_tables(&attacked, &["person", "measurement"]);
    let (p, _, m) = attacker_files(attacked.dir.path(), 1);
    let text = std::fs::read_to_string(&m).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let value = header.iter().position(|h| *h == "value_as_number").unwrap();
    let row: Vec<String> = lines.next().unwrap().split(',').map(str::to_owned).collect();
    let mut w = std::io::BufWriter::new(std::fs::File::create(&m).unwrap());
    writeln!(w, "{}", header.join(",")).unwrap();
    let id = header.iter().position(|h| *h == "measurement_id").unwrap();
    for i in 0..50_000 {
        let mut r = row.clone();
        r[id] = format!("{}", 700_000_000 + i);
        r[value] = match i % 4 {
            0 => "500".into(),
            1 => "0".into(),
            2 => "0.1".into(),
            _ => "499.99999999999994".into(),
        };
        writeln!(w, "{}", r.join(",")).unwrap();
    }
    drop(w);
    {
        let mut wh = attacked.open();
        let key = attacked.key();
        ingest::ingest(&mut wh, &key, &IngestOptions::new("person", &p)).unwrap();
        ingest::ingest(&mut wh, &key, &IngestOptions::new("measurement", &m)).unwrap();
    }
    let mut sums = Vec::new();
    for fx in [&fx, &attacked] {
        policy(&fx.data, PolicyUpdate { patient_epsilon_cap: Some(1e9), suppression_threshold: Some(0), ..Default::default() });
        let mut ledger = Ledger::open(&fx.data).unwrap();
        project(&fx.data, "bounds", 1e9, &["measurement"]);
        let wh = fx.open();
        let mut answers = Vec::new();
        for sql in ["SELECT SUM(value_as_number) FROM measurement", "SELECT AVG(value_as_number) FROM measurement"] {
            // Ten releases each: the truncation of the heavy patient is random, the bound is not.
            for _ in 0..10 {
                answers.push(cell(&exact_answer(&wh, &mut ledger, sql)[0][0]));
            }
        }
        sums.push(answers);
    }
    for i in 0..10 {
        let moved = (sums[1][i] - sums[0][i]).abs();
        let bound = crate::common::max_rows("measurement") * 500.0;
        assert!(moved <= bound + 1e-6, "one patient moved an exact sum by {moved} > {bound}");
        assert!(moved > 0.0, "the adversarial patient should be visible");
    }
}

#[test]
fn a_patient_whose_rows_arrive_over_several_ingests_is_still_bounded() {
    // Each ingest records the most rows one patient has in it; queries skip the truncation only
    // where the sum over a table's ingests is within the bound. Here every one of the attacker's
    // ingests is within the bound on its own, their sum is not: the truncation must run.
    let k = crate::common::max_rows("condition_occurrence") as usize;
    let fx = Fixture::new(200, 5);
    ingest_tables(&fx, &["person", "condition_occurrence"]);
    let attacked = Fixture::new(200, 5);
    ingest_tables(&attacked, &["person", "condition_occurrence"]);
    {
        let mut wh = attacked.open();
        let key = attacked.key();
        for (i, copies) in [k - 2, k - 1, k].into_iter().enumerate() {
            let dir = attacked.dir.path().join(format!("part-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let (p, c, _) = attacker_files(&dir, copies);
            if i == 0 {
                let report = ingest::ingest(&mut wh, &key, &IngestOptions::new("person", &p)).unwrap();
                assert_eq!(report.files[0].unit_rows_max, Some(1), "person holds one row per patient");
            }
            let report = ingest::ingest(&mut wh, &key, &IngestOptions::new("condition_occurrence", &c)).unwrap();
            assert_eq!(report.files[0].unit_rows_max, Some(copies as u64), "the ingest records its most rows for one patient");
        }
    }
    let mut moved = Vec::new();
    for fx in [&fx, &attacked] {
        policy(&fx.data, PolicyUpdate { patient_epsilon_cap: Some(1e9), suppression_threshold: Some(0), ..Default::default() });
        project(&fx.data, "bounds", 1e9, &["person", "condition_occurrence"]);
        let mut ledger = Ledger::open(&fx.data).unwrap();
        let wh = fx.open();
        moved.push(vec![
            cell(exact_answer(&wh, &mut ledger, "SELECT COUNT(*) FROM condition_occurrence")[0].last().unwrap()),
            cell(
                exact_answer(&wh, &mut ledger, "SELECT COUNT(*) FROM person JOIN condition_occurrence USING (person_id)")[0]
                    .last()
                    .unwrap(),
            ),
        ]);
    }
    for (what, (honest, attacked)) in ["row count", "joined row count"].iter().zip(moved[0].iter().zip(&moved[1])) {
        let d = attacked - honest;
        // The attacker sent 3K - 3 rows; at most K of them count.
        assert!(d > 0.0 && d <= k as f64, "{what}: a patient over three ingests moved the exact release by {d}, its bound is {k}");
    }
}

#[test]
fn heavy_patients_are_truncated_from_the_catalogs_list_as_when_their_rows_are_counted() {
    // One patient with 5K condition rows and 1,000 measurements among 200. Their ingests list
    // them (the catalog knows every other patient has at most K rows), so only their rows are
    // truncated, and over a single table the additive aggregates are computed over all rows,
    // minus the listed patient's rows the truncation drops; without the lists, the truncation counts
    // every patient's rows. Both keep min(rows, K) per patient, and the patient's rows are copies
    // of one row: the exact counts and sums are equal.
    let k = crate::common::max_rows("condition_occurrence") as usize;
    let fx = Fixture::new(200, 5);
    let (p, c, m) = attacker_files(fx.dir.path(), 5 * k);
    ingest_tables(&fx, &["person", "condition_occurrence", "measurement"]);
    // The patient arrives in ingests of their own.
    for (table, file) in [("person", &p), ("condition_occurrence", &c), ("measurement", &m)] {
        ingest::ingest(&mut fx.open(), &fx.key(), &IngestOptions::new(table, file)).unwrap();
    }
    policy(&fx.data, PolicyUpdate { patient_epsilon_cap: Some(1e9), suppression_threshold: Some(0), ..Default::default() });
    // Two projects: the second run must not replay the first one's releases (same data version).
    for name in ["bounds", "counted"] {
        project(&fx.data, name, 1e9, &["person", "condition_occurrence", "measurement"]);
    }
    let queries = [
        "SELECT COUNT(*) FROM condition_occurrence",
        "SELECT COUNT(*) FROM condition_occurrence WHERE condition_start_date >= '1900-01-01'",
        "SELECT COUNT(*), SUM(value_as_number), AVG(value_as_number), COUNT(value_as_number) FROM measurement",
        "SELECT measurement_concept_id, COUNT(*), SUM(value_as_number) FROM measurement GROUP BY 1",
        "SELECT COUNT(*) FROM person JOIN condition_occurrence USING (person_id)",
        "SELECT gender_concept_id, COUNT(*) FROM condition_occurrence JOIN person USING (person_id) GROUP BY 1",
    ];
    let answers = |listed: bool, project: &str| -> Vec<Vec<Vec<serde_json::Value>>> {
        let wh = fx.open();
        let mut ledger = Ledger::open(&fx.data).unwrap();
        queries
            .iter()
            .map(|sql| {
                let plans = rt().block_on(dp::prepare(&wh, &req(project, sql, 1.0))).unwrap().physical_plans();
                // A single table with a listed patient: over all rows, minus the rows dropped.
                let plan = plans.join("\n");
                let single = !sql.contains("JOIN");
                assert_eq!(plan.contains("__sign"), listed && single, "{sql}: listed {listed}, plan:\n{plan}");
                // A random row number truncates the heavy patient either way; only the full
                // truncation counts rows per patient (`__over`).
                assert!(plan.contains("__rn"), "{sql}: no truncation in\n{plan}");
                assert_eq!(!plan.contains("__over"), listed, "{sql}: listed {listed}, plan:\n{plan}");
                let a = rt().block_on(dp::run(&wh, &mut ledger, &req(project, sql, 1.0), Noise::Exact)).unwrap();
                assert!(a.report.replay_of.is_none(), "{sql}: replayed");
                secretum_api::output::json(&a).rows
            })
            .collect()
    };
    // `person` holds one row per patient over its two ingests (each ingest's patients are new
    // to the table, checked as it commits): nothing truncates it.
    let wh = fx.open();
    let plan = rt().block_on(dp::prepare(&wh, &req("bounds", "SELECT COUNT(*) FROM person", 1.0))).unwrap().physical_plans().join("\n");
    assert!(!plan.contains("__rn") && !plan.contains("__over"), "person is truncated:\n{plan}");
    let with_list = answers(true, "bounds");
    // The same warehouse as if its ingests had listed nothing (as before listings were kept).
    rusqlite::Connection::open(fx.data.join("catalog.sqlite"))
        .unwrap()
        .execute("UPDATE files SET unit_rows_listed_above = NULL", [])
        .unwrap();
    let counted = answers(false, "counted");
    assert_eq!(with_list, counted);
    let whole: f64 = cell(&with_list[0][0][0]);
    assert!(whole > 0.0);
}

#[test]
fn a_projects_kept_spend_is_its_ledgers_sum_and_a_charge_cannot_be_changed_or_removed() {
    let (_d, wh, mut ledger) = empty_warehouse();
    let data = wh.layout.root.clone();
    project(&data, "a", 10.0, &["person"]);
    for e in [0.1, 0.2, 0.3, 0.25] {
        ledger.debit(&charge("a", e, 0.0)).unwrap();
        ledger.debit(&charge("stats", e / 2.0, 0.0)).unwrap();
    }
    let conn = ledger.connection();
    let summed: f64 = conn
        .query_row("SELECT SUM(l.epsilon) FROM ledger l JOIN projects p ON p.id = l.project_id WHERE p.name = 'a'", [], |r| r.get(0))
        .unwrap();
    assert!((spent(&data, "a") - summed).abs() < 1e-12, "kept {} against the ledger's {summed}", spent(&data, "a"));
    assert!((ledger.spent().unwrap().epsilon - 1.5 * summed).abs() < 1e-12);
    // A charge is final: neither lowered nor deleted, whatever writes to the database.
    assert!(conn.execute("UPDATE ledger SET epsilon = 0", []).is_err());
    assert!(conn.execute("UPDATE ledger SET project_id = project_id + 1", []).is_err());
    assert!(conn.execute("DELETE FROM ledger", []).is_err());
    assert!((spent(&data, "a") - summed).abs() < 1e-12);
}
